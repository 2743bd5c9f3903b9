//! Issue #3's benches: this crate against its peers, every workload in one
//! run.
//!
//! `cargo bench --bench peers` (or `-- 'w2|w4'` for some workloads)
//!
//! Two passes over the same peers. First criterion, one peer after the
//! other, for its reports. Then an interleaved pass: round after round,
//! every peer runs once in turn (the first one rotating), and the medians
//! per peer give the ratio table printed at the end and written to
//! `target/criterion/peers.md`. On a shared machine whose speed drifts by
//! 2x over minutes, only the interleaved ratios compare peers under the
//! same conditions; criterion's sequential medians do not.
//!
//! Peers, each doing the same work with the same guarantees:
//! - `a_raw_std`: std syscalls on the bench's own thread: write in 1 MiB
//!   chunks, fsync, rename, fsync the directory. The physical limit.
//! - `b_tokio_fs`: the naive async way: a `tokio::fs::File` temp file fed
//!   by `tokio::io::copy`, flush, `sync_all`, `tokio::fs::rename`, then a
//!   directory fsync.
//! - `c_atomic_write_file`: `atomic-write-file` inside `spawn_blocking`
//!   (it always fsyncs, so it sits out the `Durability::None` workloads).
//! - `d_tempfile`: `tempfile::NamedTempFile` + `sync_all` + `persist`
//!   inside `spawn_blocking`, plus the directory fsync that `persist` does
//!   not do, so that it gives the same guarantee as the others.
//! - `ours`: `AsyncAtomicFile` fed by `tokio::io::copy`; `ours_write_fn`:
//!   `tokio_atomic_write::write`.
//! - `trip`: one empty round trip to the blocking pool (`spawn_blocking`
//!   of a no-op, awaited), measured in the same rounds as the peers. The
//!   design's limit for a sequential workload is `(a) + trips x trip`:
//!   `AsyncAtomicFile` takes two trips (open, commit), `write()` one.
//!
//! Workloads: W1 streams 256 MiB in 8 KiB chunks (W1a durable, W1b
//! `Durability::None`); W2 and W4 commit 4 KiB files one after another
//! (durable, not durable); W3 and W6 commit 256 files of 4 KiB from 256
//! tasks at once (durable, not durable: a cache filler); W5 measures peak
//! RSS while streaming 1 GiB, in a child process.
//!
//! Filesystems (issue #22): W2, W3, W4 and W6 run on the root filesystem
//! and, as root, on loop mounts of an ext4 with a journal and an xfs made
//! for the run (without root the bench says so and runs the root
//! filesystem only); W1 and W5 on the root filesystem. The criterion pass
//! runs on the root filesystem only; `TAW_PEERS_CRITERION=0` skips it.

mod common;

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::runtime::Runtime;
use tokio_atomic_write::{Durability, OpenOptions, DEFAULT_BUFFER_SIZE};

use common::LoopMount;

const CHUNK: usize = 8 << 10;
const STREAM: u64 = 256 << 20;
const SMALL: u64 = 4 << 10;
const TASKS: usize = 256;
const RSS_STREAM: u64 = 1 << 30;
const RAW_CHUNK: usize = 1 << 20;
static PATTERN: [u8; CHUNK] = [0x5a; CHUNK];

/// `len` bytes handed out at most 8 KiB per read, sync or async.
struct Chunks(u64);

impl Chunks {
    fn next(&mut self, room: usize) -> &'static [u8] {
        let n = (self.0.min(CHUNK as u64) as usize).min(room);
        self.0 -= n as u64;
        &PATTERN[..n]
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.next(buf.len());
        buf[..chunk.len()].copy_from_slice(chunk);
        Ok(chunk.len())
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = self.get_mut().next(buf.remaining());
        buf.put_slice(chunk);
        Poll::Ready(Ok(()))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// (a) The physical limit: std syscalls, 1 MiB writes, no runtime.
fn raw_std(target: &Path, len: u64, durable: bool) -> io::Result<()> {
    // Allocated once: a fresh 1 MiB per 4 KiB file would cost (a) more
    // than the file.
    static BIG: LazyLock<Vec<u8>> = LazyLock::new(|| vec![0x5a; RAW_CHUNK]);
    let big = &BIG[..];
    let tmp = target.with_extension("raw-tmp");
    let mut f = File::create(&tmp)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(RAW_CHUNK as u64) as usize;
        f.write_all(&big[..n])?;
        left -= n as u64;
    }
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, target)?;
    if durable {
        sync_dir(target.parent().unwrap())?;
    }
    Ok(())
}

/// (b) The naive async way: `tokio::fs` all along.
async fn tokio_fs(target: PathBuf, len: u64, durable: bool) -> io::Result<()> {
    let tmp = target.with_extension("tokio-tmp");
    let mut f = tokio::fs::File::create(&tmp).await?;
    tokio::io::copy(&mut Chunks(len), &mut f).await?;
    f.flush().await?;
    if durable {
        f.sync_all().await?;
    }
    drop(f);
    tokio::fs::rename(&tmp, &target).await?;
    if durable {
        tokio::fs::File::open(target.parent().unwrap())
            .await?
            .sync_all()
            .await?;
    }
    Ok(())
}

/// (c) `atomic-write-file` on the blocking pool (always durable).
async fn atomic_write_file(target: PathBuf, len: u64) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut f = atomic_write_file::AtomicWriteFile::open(&target)?;
        io::copy(&mut Chunks(len), &mut f)?;
        f.commit()
    })
    .await?
}

/// (d) `tempfile` on the blocking pool, with the directory fsync.
async fn tempfile_persist(target: PathBuf, len: u64, durable: bool) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let dir = target.parent().unwrap();
        let mut f = tempfile::NamedTempFile::new_in(dir)?;
        io::copy(&mut Chunks(len), &mut f)?;
        if durable {
            f.as_file().sync_all()?;
        }
        f.persist(&target)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })
    .await?
}

/// This crate: an `AsyncAtomicFile` fed by `tokio::io::copy`.
async fn ours(target: PathBuf, len: u64, durability: Durability, buffer: usize) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.durability(durability).buffer_size(buffer);
    ours_with(target, len, &opts).await
}

/// `ours` with the memory of its two buffers cut into `segments` (the
/// hidden knob that picks the default: issue #22, W1b).
async fn ours_segments(
    target: PathBuf,
    len: u64,
    durability: Durability,
    segments: usize,
) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.durability(durability);
    tokio_atomic_write::__private::set_write_segments(&mut opts, segments);
    ours_with(target, len, &opts).await
}

/// `len` bytes through an `AsyncAtomicFile` opened with `opts`, then its
/// commit.
async fn ours_with(target: PathBuf, len: u64, opts: &OpenOptions) -> io::Result<()> {
    let mut f = opts.open(&target).await?;
    tokio::io::copy(&mut Chunks(len), &mut f).await?;
    f.commit().await?;
    Ok(())
}

/// This crate's one-hop `OpenOptions::write` (what `write()` does with the
/// default options).
async fn ours_write_fn(target: PathBuf, durability: Durability) -> io::Result<()> {
    ours_write_fn_with(target, durability, true).await
}

/// `ours_write_fn` with or without an `O_TMPFILE` temp file: the probe
/// `ours_write_fn_named` shows what the unnamed file costs.
async fn ours_write_fn_with(
    target: PathBuf,
    durability: Durability,
    unnamed: bool,
) -> io::Result<()> {
    let data = &PATTERN[..SMALL as usize];
    let mut opts = OpenOptions::new();
    opts.durability(durability).unnamed_temp(unnamed);
    Ok(opts.write(&target, data).await?)
}

/// One empty round trip to the blocking pool, awaited: the least any
/// operation that goes through the pool costs, beyond its own work.
async fn trip() -> io::Result<()> {
    tokio::task::spawn_blocking(|| ()).await?;
    Ok(())
}

struct Bench {
    rt: Runtime,
    _scratch: tempfile::TempDir,
    dir: PathBuf,
}

impl Bench {
    /// A runtime and a directory of its own in `base`: no blocking threads
    /// or files left over from another workload.
    fn new(base: &Path) -> Bench {
        let scratch = tempfile::tempdir_in(base).unwrap();
        Bench {
            rt: Runtime::new().unwrap(),
            dir: scratch.path().to_path_buf(),
            _scratch: scratch,
        }
    }

    fn target(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `f` once and times it. `fresh`: first, untimed, remove the last
    /// run's file and write back every dirty page of the filesystem, so that
    /// no run pays for the writeback or the freeing of the one before (W1's
    /// 256 MiB files).
    fn timed(&self, fresh: bool, target: &Path, f: impl FnOnce()) -> Duration {
        if fresh {
            let _ = std::fs::remove_file(target);
            rustix::fs::syncfs(File::open(&self.dir).unwrap()).unwrap();
        }
        let start = Instant::now();
        f();
        start.elapsed()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    W1a,
    W1b,
    W2,
    W3,
    W4,
    W6,
}

use Workload::*;

const WORKLOADS: [Workload; 6] = [W1a, W1b, W2, W3, W4, W6];

impl Workload {
    fn group(self) -> &'static str {
        match self {
            W1a => "w1a_stream_full",
            W1b => "w1b_stream_none",
            W2 => "w2_small_full",
            W3 => "w3_concurrent_full",
            W4 => "w4_small_none",
            W6 => "w6_concurrent_none",
        }
    }

    fn label(self) -> &'static str {
        match self {
            W1a => "W1a 256 MiB stream, durable",
            W1b => "W1b 256 MiB stream, none",
            W2 => "W2 4 KiB commits, durable",
            W3 => "W3 256 tasks x 4 KiB, durable",
            W4 => "W4 4 KiB commits, none",
            W6 => "W6 256 tasks x 4 KiB, none",
        }
    }

    /// Issue #22's targets.
    fn target(self) -> &'static str {
        match self {
            W1a => ">= 0.95x (a)",
            W1b => ">= 0.90x (a)",
            W2 => "ours, write() <= 1.10x limit; write() <= 1.0x best",
            W3 => ">= 1.0x best; aim 1.3x on ext4, xfs",
            W4 => "ours <= 1.15x limit; write() <= 1.0x (d)",
            W6 => ">= 1.0x best",
        }
    }

    /// Whether the workload runs on the loop-mounted filesystems too.
    fn on_every_filesystem(self) -> bool {
        matches!(self, W2 | W3 | W4 | W6)
    }

    /// Whether it runs one commit at a time, so that its limit is `(a)`
    /// plus its trips.
    fn sequential(self) -> bool {
        !matches!(self, W3 | W6)
    }

    fn durability(self) -> Durability {
        match self {
            W1b | W4 | W6 => Durability::None,
            _ => Durability::Full,
        }
    }

    fn durable(self) -> bool {
        self.durability() == Durability::Full
    }

    fn len(self) -> u64 {
        match self {
            W1a | W1b => STREAM,
            _ => SMALL,
        }
    }

    /// Streams start from a clean page cache; see [`Bench::timed`].
    fn fresh(self) -> bool {
        matches!(self, W1a | W1b)
    }

    /// Rounds of the interleaved pass.
    fn rounds(self) -> usize {
        match self {
            W1a | W1b => 9,
            W3 | W6 => 15,
            W2 | W4 => 301,
        }
    }

    /// Whether the ratios are of throughput (one big unit of work) or of
    /// time per commit.
    fn by_throughput(self) -> bool {
        matches!(self, W1a | W1b | W3 | W6)
    }

    fn throughput(self) -> Throughput {
        match self {
            W3 | W6 => Throughput::Elements(TASKS as u64),
            _ => Throughput::Bytes(self.len()),
        }
    }
}

/// One way of doing a workload's unit of work; each call does it once and
/// returns the time of the timed part.
struct Peer<'a> {
    id: String,
    run: Box<dyn FnMut() -> Duration + 'a>,
}

/// Buffer sizes tried besides the default, in W1b.
const BUFFER_SIZES_KIB: [usize; 5] = [64, 256, 512, 2048, 8192];

/// Segment counts tried in W1b, at the default buffer size: the default
/// count is `ours`, the others `ours_segments_{k}`.
const SEGMENTS: [usize; 4] = [2, 4, 8, 16];

fn peers(bench: &Bench, w: Workload) -> Vec<Peer<'_>> {
    let (len, durable, durability, fresh) = (w.len(), w.durable(), w.durability(), w.fresh());
    let mut peers = Vec::new();
    let raw = bench.target("raw.out");
    peers.push(Peer {
        id: "a_raw_std".into(),
        run: Box::new(move || bench.timed(fresh, &raw, || raw_std(&raw, len, durable).unwrap())),
    });
    fn add<'a, F, Fut>(peers: &mut Vec<Peer<'a>>, bench: &'a Bench, w: Workload, id: &str, f: F)
    where
        F: Fn(PathBuf) -> Fut + 'a,
        Fut: Future<Output = io::Result<()>>,
    {
        let target = bench.target(&format!("{id}.out"));
        peers.push(Peer {
            id: id.into(),
            run: Box::new(move || {
                bench.timed(w.fresh(), &target, || {
                    bench.rt.block_on(f(target.clone())).unwrap()
                })
            }),
        });
    }
    add(&mut peers, bench, w, "b_tokio_fs", move |t| {
        tokio_fs(t, len, durable)
    });
    if durable {
        add(&mut peers, bench, w, "c_atomic_write_file", move |t| {
            atomic_write_file(t, len)
        });
    }
    add(&mut peers, bench, w, "d_tempfile", move |t| {
        tempfile_persist(t, len, durable)
    });
    add(&mut peers, bench, w, "ours", move |t| {
        ours(t, len, durability, DEFAULT_BUFFER_SIZE)
    });
    if w == W1b {
        // How the buffer size shapes the page-cache-speed case, where the
        // overhead per buffer shows: the default is picked from these.
        for kib in BUFFER_SIZES_KIB {
            add(
                &mut peers,
                bench,
                w,
                &format!("ours_buffer_{kib}k"),
                move |t| ours(t, len, durability, kib << 10),
            );
        }
        // The two buffers' memory cut into more, smaller segments: more of
        // it is still queued for the job while the caller wakes up.
        let default = tokio_atomic_write::__private::default_write_segments();
        for k in SEGMENTS.into_iter().filter(|k| *k != default) {
            add(
                &mut peers,
                bench,
                w,
                &format!("ours_segments_{k}"),
                move |t| ours_segments(t, len, durability, k),
            );
        }
    }
    if matches!(w, W2 | W3 | W4 | W6) {
        add(&mut peers, bench, w, "ours_write_fn", move |t| {
            ours_write_fn(t, durability)
        });
        add(&mut peers, bench, w, "ours_write_fn_named", move |t| {
            ours_write_fn_with(t, durability, false)
        });
    }
    if !w.sequential() {
        // The unit of work is 256 commits at once: tasks for the async
        // peers, threads for raw std.
        for peer in &mut peers {
            peer.run = concurrently(bench, &peer.id, durability);
        }
    }
    // Measured in the same rounds as the peers, for the limit.
    peers.push(Peer {
        id: "trip".into(),
        run: Box::new(move || {
            let start = Instant::now();
            bench.rt.block_on(trip()).unwrap();
            start.elapsed()
        }),
    });
    peers
}

/// W3's unit of work for peer `id`: `TASKS` files of 4 KiB committed at
/// once into one directory.
fn concurrently<'a>(
    bench: &'a Bench,
    id: &str,
    durability: Durability,
) -> Box<dyn FnMut() -> Duration + 'a> {
    let durable = durability == Durability::Full;
    let targets: Vec<PathBuf> = (0..TASKS)
        .map(|i| bench.target(&format!("w3-{id}-{i}.out")))
        .collect();
    fn all<F, Fut>(bench: &Bench, targets: &[PathBuf], f: F) -> Duration
    where
        F: Fn(PathBuf) -> Fut,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let start = Instant::now();
        bench.rt.block_on(async {
            let tasks: Vec<_> = targets.iter().map(|t| tokio::spawn(f(t.clone()))).collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        start.elapsed()
    }
    match id {
        "a_raw_std" => Box::new(move || {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in &targets {
                    s.spawn(|| raw_std(t, SMALL, durable).unwrap());
                }
            });
            start.elapsed()
        }),
        "b_tokio_fs" => Box::new(move || all(bench, &targets, |t| tokio_fs(t, SMALL, durable))),
        "c_atomic_write_file" => {
            Box::new(move || all(bench, &targets, |t| atomic_write_file(t, SMALL)))
        }
        "d_tempfile" => {
            Box::new(move || all(bench, &targets, |t| tempfile_persist(t, SMALL, durable)))
        }
        "ours_write_fn" => Box::new(move || all(bench, &targets, |t| ours_write_fn(t, durability))),
        "ours_write_fn_named" => Box::new(move || {
            all(bench, &targets, |t| {
                ours_write_fn_with(t, durability, false)
            })
        }),
        _ => Box::new(move || {
            all(bench, &targets, |t| {
                ours(t, SMALL, durability, DEFAULT_BUFFER_SIZE)
            })
        }),
    }
}

/// The criterion pass: one group per workload, one peer after the other.
fn criterion_pass(c: &mut Criterion, w: Workload, base: &Path) {
    let bench = Bench::new(base);
    let mut g = c.benchmark_group(w.group());
    g.throughput(w.throughput())
        .warm_up_time(Duration::from_millis(500));
    if w.sequential() && !w.fresh() {
        g.sample_size(30).measurement_time(Duration::from_secs(3));
    } else {
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(5));
    }
    for mut peer in peers(&bench, w).into_iter().filter(|p| p.id != "trip") {
        g.bench_function(&peer.id, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| (peer.run)()).sum())
        });
    }
    g.finish();
}

/// The interleaved pass: `rounds` rounds, each running every peer once, the
/// first one rotating; the median time per peer, in nanoseconds.
fn interleaved(w: Workload, base: &Path) -> Vec<(String, f64)> {
    let bench = Bench::new(base);
    let mut peers = peers(&bench, w);
    let n = peers.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); n];
    // One unmeasured round: warm caches, pool threads, files to replace.
    for peer in &mut peers {
        (peer.run)();
    }
    for round in 0..w.rounds() {
        for k in 0..n {
            let i = (round + k) % n;
            times[i].push((peers[i].run)().as_nanos() as f64);
        }
    }
    peers
        .iter()
        .zip(times)
        .map(|(peer, mut t)| {
            t.sort_by(f64::total_cmp);
            (peer.id.clone(), t[t.len() / 2])
        })
        .collect()
}

const PEERS: [&str; 6] = [
    "a_raw_std",
    "b_tokio_fs",
    "c_atomic_write_file",
    "d_tempfile",
    "ours",
    "ours_write_fn",
];

/// The ratio table of one filesystem, from the interleaved medians: per
/// workload each peer's median for one unit of work and one empty trip to
/// the pool; then ours (`AsyncAtomicFile`) and `write()` against their
/// limit, `(a) + trips x trip` (sequential workloads only), against the
/// best of (b)-(d), and `write()` against (d). Throughput ratios for the
/// streams, W3 and W6 (higher is better), time ratios for the small
/// commits (lower is better).
fn table(results: &[(Workload, Vec<(String, f64)>)], rss: Option<u64>) -> String {
    let mut out = String::from(
        "| workload | (a) raw std | (b) tokio::fs | (c) atomic-write-file | (d) tempfile | ours | write() | trip | ours vs limit (a + 2 trips) | write() vs limit (a + 1 trip) | ours vs best of (b)-(d) | write() vs best | write() vs (d) | target |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let get = |m: &[(String, f64)], id: &str| m.iter().find(|(p, _)| p == id).map(|(_, ns)| *ns);
    let mut notes = Vec::new();
    for (w, m) in results {
        let cells: Vec<Option<f64>> = PEERS.iter().map(|p| get(m, p)).collect();
        let trip = get(m, "trip");
        let best = cells[1..4]
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let ratio = |ours: Option<f64>, other: Option<f64>| match (ours, other) {
            (Some(ours), Some(other)) if other.is_finite() && w.by_throughput() => {
                format!("{:.2}x throughput", other / ours)
            }
            (Some(ours), Some(other)) if other.is_finite() => {
                format!("{:.2}x time", ours / other)
            }
            _ => "n/a".into(),
        };
        let limit = |trips: f64| match (w.sequential(), cells[0], trip) {
            (true, Some(raw), Some(trip)) => Some(raw + trips * trip),
            _ => None,
        };
        let cell = |v: &Option<f64>| v.map_or("n/a".to_string(), fmt_ns);
        let (ours, write_fn) = (cells[4], cells[5]);
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            w.label(),
            cell(&cells[0]),
            cell(&cells[1]),
            cell(&cells[2]),
            cell(&cells[3]),
            cell(&ours),
            cell(&write_fn),
            cell(&trip),
            ratio(ours, limit(2.0)),
            ratio(write_fn, limit(1.0)),
            ratio(ours, Some(best)),
            ratio(write_fn, Some(best)),
            ratio(write_fn, cells[3]),
            w.target(),
        );
        if let (Some(named), Some(unnamed)) = (get(m, "ours_write_fn_named"), write_fn) {
            notes.push(format!(
                "{}: `write()` with a named temp file instead of `O_TMPFILE` (the default): {}, {} of the default, {} vs (d).",
                &w.label()[..2],
                fmt_ns(named),
                ratio(Some(named), Some(unnamed)),
                ratio(Some(named), cells[3]),
            ));
        }
        if *w == W1b {
            if let (Some(b), Some(ours)) = (cells[1], ours) {
                notes.push(format!("W1b: ours is {:.1}x (b)'s throughput.", b / ours));
            }
            let mut sizes: Vec<(usize, f64)> = BUFFER_SIZES_KIB
                .iter()
                .filter_map(|kib| Some((*kib, get(m, &format!("ours_buffer_{kib}k"))?)))
                .chain(ours.map(|ours| (DEFAULT_BUFFER_SIZE >> 10, ours)))
                .collect();
            sizes.sort_by_key(|(kib, _)| *kib);
            let sizes: Vec<String> = sizes
                .iter()
                .map(|(kib, ns)| {
                    let default = if *kib == DEFAULT_BUFFER_SIZE >> 10 {
                        " (default)"
                    } else {
                        ""
                    };
                    format!("{kib} KiB{default} {:.2} GB/s", STREAM as f64 / ns)
                })
                .collect();
            notes.push(format!("W1b by buffer size: {}.", sizes.join(", ")));
            let default = tokio_atomic_write::__private::default_write_segments();
            let segments: Vec<String> = SEGMENTS
                .iter()
                .filter_map(|k| {
                    let ns = if *k == default {
                        ours?
                    } else {
                        get(m, &format!("ours_segments_{k}"))?
                    };
                    let default = if *k == default { " (default)" } else { "" };
                    Some(format!(
                        "{k}{default} {:.2} GB/s ({})",
                        STREAM as f64 / ns,
                        ratio(Some(ns), cells[0]),
                    ))
                })
                .collect();
            notes.push(format!(
                "W1b by segment count, {} KiB buffers (GB/s, vs (a)): {}.",
                DEFAULT_BUFFER_SIZE >> 10,
                segments.join(", ")
            ));
        }
    }
    if let Some(rss) = rss {
        notes.push(format!(
            "W5: peak RSS streaming 1 GiB: {:.1} MiB above the runtime's baseline \
             (budget: 2 buffers of {} KiB + 16 MiB = {:.1} MiB).",
            rss as f64 / (1 << 20) as f64,
            DEFAULT_BUFFER_SIZE >> 10,
            (2 * DEFAULT_BUFFER_SIZE + (16 << 20)) as f64 / (1 << 20) as f64,
        ));
    }
    for note in notes {
        out += &format!("\n- {note}");
    }
    out + "\n"
}

/// One line of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

const RSS_CHILD: &str = "TAW_BENCH_RSS_CHILD";

/// W5, in a fresh process: peak RSS while streaming 1 GiB, above the RSS
/// of a runtime that has already committed one small file (so its blocking
/// pool and allocator are warm). Prints `baseline peak`.
fn rss_child(dir: &Path) {
    let rt = Runtime::new().unwrap();
    let target = dir.join("rss.out");
    rt.block_on(ours(
        target.clone(),
        SMALL,
        Durability::Full,
        DEFAULT_BUFFER_SIZE,
    ))
    .unwrap();
    let baseline = status_bytes("VmRSS:");
    rt.block_on(ours(
        target,
        RSS_STREAM,
        Durability::Full,
        DEFAULT_BUFFER_SIZE,
    ))
    .unwrap();
    println!("{baseline} {}", status_bytes("VmHWM:"));
}

/// W5: runs [`rss_child`] and returns the peak above the baseline.
fn rss_above_baseline(bench: &Bench) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(RSS_CHILD, &bench.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    nums[1].saturating_sub(nums[0])
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// A filesystem the workloads run on: its name in the table, the
/// directory to run in, and the mount to undo after.
struct Place {
    name: &'static str,
    base: PathBuf,
    _mount: Option<LoopMount>,
}

/// The root filesystem (where the build is: a disk, not a tmpfs) and, as
/// root, a loop-mounted ext4 with a journal and an xfs.
fn places(wanted: impl Fn(&str) -> bool) -> Vec<Place> {
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut places = Vec::new();
    if wanted("root") {
        places.push(Place {
            name: "root",
            base: target_dir.clone(),
            _mount: None,
        });
    }
    // Made without lazy init: no background thread writing inode tables
    // and committing the journal while the bench runs.
    let lazy = ["-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"];
    let loops: [(&str, &str, &[&str]); 2] = [("ext4", "ext4", &lazy), ("xfs", "xfs", &["-f"])];
    for (name, fs, args) in loops {
        if !wanted(name) {
            continue;
        }
        let image = format!("peers-bench-{name}");
        if let Some(mount) = LoopMount::make(&target_dir, &image, fs, "1G", args) {
            places.push(Place {
                name,
                base: mount.mount.clone(),
                _mount: Some(mount),
            });
        }
    }
    places
}

fn main() {
    if let Some(dir) = std::env::var_os(RSS_CHILD) {
        rss_child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then criterion runs each benchmark once as a test: skip the rest.
    let measuring = std::env::args().any(|a| a == "--bench");
    // `cargo bench -- 'w2|w4'` runs only those workloads, and
    // `-- 'w2|xfs'` only on xfs: criterion takes one filter, a regex; this
    // reads its alternatives (the values of criterion's own options, which
    // name no workload, do not count).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| a.split('|').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| {
            ["w", "root", "ext4", "xfs"]
                .iter()
                .any(|p| f.starts_with(p))
        })
        .collect();
    let workload_filters: Vec<&String> = filters.iter().filter(|f| f.starts_with('w')).collect();
    let place_filters: Vec<&String> = filters.iter().filter(|f| !f.starts_with('w')).collect();
    let wanted = |name: &str| {
        workload_filters.is_empty() || workload_filters.iter().any(|f| name.contains(f.as_str()))
    };
    let wanted_place =
        |name: &str| place_filters.is_empty() || place_filters.iter().any(|f| f.as_str() == name);
    let workloads: Vec<Workload> = WORKLOADS
        .into_iter()
        .filter(|w| wanted(w.group()))
        .collect();
    let places = if measuring {
        places(wanted_place)
    } else {
        places(|name| name == "root")
    };

    let root = places.iter().find(|p| p.name == "root");
    if let (Some(root), true) = (
        root,
        std::env::var("TAW_PEERS_CRITERION").as_deref() != Ok("0"),
    ) {
        let mut c = Criterion::default().configure_from_args();
        for w in &workloads {
            criterion_pass(&mut c, *w, &root.base);
        }
        c.final_summary();
    }
    if !measuring {
        return;
    }
    let mut report = String::new();
    for place in &places {
        let results: Vec<(Workload, Vec<(String, f64)>)> = workloads
            .iter()
            .filter(|w| place.name == "root" || w.on_every_filesystem())
            .map(|w| {
                eprintln!("interleaved: {} on {}", w.group(), place.name);
                (*w, interleaved(*w, &place.base))
            })
            .collect();
        let rss = (place.name == "root" && wanted("w5_rss"))
            .then(|| rss_above_baseline(&Bench::new(&place.base)));
        report += &format!("### {}\n\n{}\n", place.name, table(&results, rss));
    }
    println!(
        "\nInterleaved medians:\n\n{report}\n(whole run: {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("criterion/peers.md");
    if std::fs::create_dir_all(out.parent().unwrap()).is_ok() {
        let _ = std::fs::write(&out, &report);
    }
}
