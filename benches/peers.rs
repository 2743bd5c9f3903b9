//! Issue #3's benches: this crate against its peers, every workload in one
//! run, ratios printed (and written to `target/criterion/peers.md`) at the
//! end.
//!
//! `cargo bench --bench peers`
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
//!
//! Workloads: W1 streams 256 MiB in 8 KiB chunks (W1a durable, W1b
//! `Durability::None`); W2 and W4 commit 4 KiB files one after another
//! (durable, not durable); W3 commits 256 files of 4 KiB from 256 tasks at
//! once; W5 measures peak RSS while streaming 1 GiB, in a child process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use criterion::{measurement::WallTime, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::runtime::Runtime;
use tokio_atomic_write::{Durability, OpenOptions, DEFAULT_BUFFER_SIZE};

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
    let mut f = OpenOptions::new()
        .durability(durability)
        .buffer_size(buffer)
        .open(&target)
        .await?;
    tokio::io::copy(&mut Chunks(len), &mut f).await?;
    f.commit().await?;
    Ok(())
}

/// This crate's one-shot `write()`.
async fn ours_write_fn(target: PathBuf) -> io::Result<()> {
    Ok(tokio_atomic_write::write(&target, &PATTERN[..SMALL as usize]).await?)
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

struct Bench {
    rt: Runtime,
    _scratch: tempfile::TempDir,
    dir: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        // The bench's own scratch space, on the same filesystem as the
        // build: a disk, not a tmpfs.
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        Bench {
            rt: Runtime::new().unwrap(),
            dir: scratch.path().to_path_buf(),
            _scratch: scratch,
        }
    }

    fn target(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// One file, one peer, one criterion benchmark. `fresh`: before each
    /// timed run, untimed, remove the last run's file and write back every
    /// dirty page of the filesystem, so that no run pays for the writeback
    /// or the freeing of the one before (for W1's 256 MiB files).
    fn one<F, Fut>(&self, g: &mut Group<'_>, id: &str, fresh: bool, f: F)
    where
        F: Fn(PathBuf) -> Fut,
        Fut: std::future::Future<Output = io::Result<()>>,
    {
        let target = self.target(&format!("{id}.out"));
        self.measure(g, id, fresh, &target, || {
            self.rt.block_on(f(target.clone())).unwrap()
        });
    }

    fn measure(
        &self,
        g: &mut Group<'_>,
        id: &str,
        fresh: bool,
        target: &Path,
        mut run: impl FnMut(),
    ) {
        if !fresh {
            g.bench_function(id, |b| b.iter(&mut run));
            return;
        }
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let _ = std::fs::remove_file(target);
                    rustix::fs::syncfs(File::open(&self.dir).unwrap()).unwrap();
                    let start = Instant::now();
                    run();
                    total += start.elapsed();
                }
                total
            })
        });
    }
}

/// W1: 256 MiB through `tokio::io::copy`, 8 KiB per read; each run starts
/// with a clean page cache and no old file to free.
fn streaming(c: &mut Criterion, durable: bool) {
    // A runtime and a directory of its own: no blocking threads or files
    // left over from another workload.
    let bench = &Bench::new();
    let name = if durable {
        "w1a_stream_full"
    } else {
        "w1b_stream_none"
    };
    let durability = if durable {
        Durability::Full
    } else {
        Durability::None
    };
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(STREAM))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let raw = bench.target("raw.out");
    bench.measure(&mut g, "a_raw_std", true, &raw, || {
        raw_std(&raw, STREAM, durable).unwrap()
    });
    bench.one(&mut g, "b_tokio_fs", true, |t| tokio_fs(t, STREAM, durable));
    if durable {
        bench.one(&mut g, "c_atomic_write_file", true, |t| {
            atomic_write_file(t, STREAM)
        });
    }
    bench.one(&mut g, "d_tempfile", true, |t| {
        tempfile_persist(t, STREAM, durable)
    });
    bench.one(&mut g, "ours", true, |t| {
        ours(t, STREAM, durability, DEFAULT_BUFFER_SIZE)
    });
    if !durable {
        // How the buffer size shapes the page-cache-speed case, where the
        // per-hop overhead shows: the default is picked from these.
        for kib in BUFFER_SIZES_KIB {
            bench.one(&mut g, &format!("ours_buffer_{kib}k"), true, |t| {
                ours(t, STREAM, durability, kib << 10)
            });
        }
    }
    g.finish();
}

/// Buffer sizes tried besides the default, in W1b.
const BUFFER_SIZES_KIB: [usize; 5] = [64, 256, 512, 2048, 8192];

/// W2 and W4: 4 KiB files, one after another, each replacing the last.
fn small(c: &mut Criterion, durable: bool) {
    // A runtime and a directory of its own: no blocking threads or files
    // left over from another workload.
    let bench = &Bench::new();
    let name = if durable {
        "w2_small_full"
    } else {
        "w4_small_none"
    };
    let durability = if durable {
        Durability::Full
    } else {
        Durability::None
    };
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(SMALL))
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let raw = bench.target("raw.out");
    bench.measure(&mut g, "a_raw_std", false, &raw, || {
        raw_std(&raw, SMALL, durable).unwrap()
    });
    bench.one(&mut g, "b_tokio_fs", false, |t| tokio_fs(t, SMALL, durable));
    if durable {
        bench.one(&mut g, "c_atomic_write_file", false, |t| {
            atomic_write_file(t, SMALL)
        });
    }
    bench.one(&mut g, "d_tempfile", false, |t| {
        tempfile_persist(t, SMALL, durable)
    });
    bench.one(&mut g, "ours", false, |t| {
        ours(t, SMALL, durability, DEFAULT_BUFFER_SIZE)
    });
    if durable {
        bench.one(&mut g, "ours_write_fn", false, ours_write_fn);
    }
    g.finish();
}

/// W3: 256 tasks (threads for raw std) each commit a 4 KiB file into one
/// directory, all at once. One iteration is all 256 commits.
fn concurrent(c: &mut Criterion) {
    // A runtime and a directory of its own: no blocking threads or files
    // left over from another workload.
    let bench = &Bench::new();
    let mut g = c.benchmark_group("w3_concurrent_full");
    g.throughput(Throughput::Elements(TASKS as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let targets: Vec<PathBuf> = (0..TASKS)
        .map(|i| bench.target(&format!("w3-{i}.out")))
        .collect();
    g.bench_function("a_raw_std", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in &targets {
                    s.spawn(|| raw_std(t, SMALL, true).unwrap());
                }
            })
        })
    });
    fn all<F, Fut>(bench: &Bench, targets: &[PathBuf], f: F)
    where
        F: Fn(PathBuf) -> Fut,
        Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
    {
        bench.rt.block_on(async {
            let tasks: Vec<_> = targets.iter().map(|t| tokio::spawn(f(t.clone()))).collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        })
    }
    g.bench_function("b_tokio_fs", |b| {
        b.iter(|| all(bench, &targets, |t| tokio_fs(t, SMALL, true)))
    });
    g.bench_function("c_atomic_write_file", |b| {
        b.iter(|| all(bench, &targets, |t| atomic_write_file(t, SMALL)))
    });
    g.bench_function("d_tempfile", |b| {
        b.iter(|| all(bench, &targets, |t| tempfile_persist(t, SMALL, true)))
    });
    g.bench_function("ours", |b| {
        b.iter(|| {
            all(bench, &targets, |t| {
                ours(t, SMALL, Durability::Full, DEFAULT_BUFFER_SIZE)
            })
        })
    });
    g.finish();
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

/// The median of one benchmark of this run, from criterion's files; `None`
/// when it did not run in this process (filtered out, or stale).
fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent()?;
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("criterion"));
    let file = home.join(group).join(id).join("new/estimates.json");
    if std::fs::metadata(&file).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

const PEERS: [&str; 5] = [
    "a_raw_std",
    "b_tokio_fs",
    "c_atomic_write_file",
    "d_tempfile",
    "ours",
];

/// The ratio table: per workload, each peer's median time for one
/// iteration, then ours against (a) and against the best of (b)-(d), as
/// throughput ratios for the streaming and concurrent workloads (higher is
/// better) and time ratios for the one-after-another ones (lower is better).
fn table(since: SystemTime, rss: Option<u64>) -> String {
    let mut out = String::from(
        "| workload | (a) raw std | (b) tokio::fs | (c) atomic-write-file | (d) tempfile | ours | ours vs (a) | ours vs best of (b)-(d) | target |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (group, label, throughput, target) in [
        (
            "w1a_stream_full",
            "W1a 256 MiB stream, durable",
            true,
            ">= 0.90x (a)",
        ),
        (
            "w1b_stream_none",
            "W1b 256 MiB stream, none",
            true,
            ">= 0.85x (a), >= 3x (b)",
        ),
        (
            "w2_small_full",
            "W2 4 KiB commits, durable",
            false,
            "<= 1.15x (a), <= best",
        ),
        (
            "w3_concurrent_full",
            "W3 256 tasks x 4 KiB, durable",
            true,
            ">= 1x best, aim 1.5x",
        ),
        (
            "w4_small_none",
            "W4 4 KiB commits, none",
            false,
            "<= 1.2x (a)",
        ),
    ] {
        let m: Vec<Option<f64>> = PEERS.iter().map(|p| median_ns(group, p, since)).collect();
        if m.iter().all(Option::is_none) {
            continue;
        }
        let cell = |v: Option<f64>| v.map_or("n/a".to_string(), fmt_ns);
        let best_peer = m[1..4]
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let ratio = |ours: Option<f64>, other: f64| match ours {
            Some(ours) if other.is_finite() && throughput => {
                format!("{:.2}x throughput", other / ours)
            }
            Some(ours) if other.is_finite() => format!("{:.2}x time", ours / other),
            _ => "n/a".into(),
        };
        out += &format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {target} |\n",
            cell(m[0]),
            cell(m[1]),
            cell(m[2]),
            cell(m[3]),
            cell(m[4]),
            ratio(m[4], m[0].unwrap_or(f64::NAN)),
            ratio(m[4], best_peer),
        );
    }
    if let Some(ns) = median_ns("w2_small_full", "ours_write_fn", since) {
        out += &format!(
            "\nW2 with `write()` instead of `AsyncAtomicFile`: {}\n",
            fmt_ns(ns)
        );
    }
    if let Some(rss) = rss {
        out += &format!(
            "\nW5: peak RSS streaming 1 GiB: {:.1} MiB above the runtime's baseline \
             (budget: 2 buffers of {} KiB + 16 MiB = {:.1} MiB)\n",
            rss as f64 / (1 << 20) as f64,
            DEFAULT_BUFFER_SIZE >> 10,
            (2 * DEFAULT_BUFFER_SIZE + (16 << 20)) as f64 / (1 << 20) as f64,
        );
    }
    let mut sizes: Vec<(usize, String)> = BUFFER_SIZES_KIB
        .iter()
        .map(|kib| (*kib, format!("ours_buffer_{kib}k")))
        .chain([(DEFAULT_BUFFER_SIZE >> 10, "ours".to_string())])
        .collect();
    sizes.sort();
    let sizes: Vec<String> = sizes
        .iter()
        .filter_map(|(kib, id)| {
            let ns = median_ns("w1b_stream_none", id, since)?;
            let default = if id == "ours" { " (default)" } else { "" };
            Some(format!(
                "{kib} KiB{default}: {:.2} GB/s",
                STREAM as f64 / ns
            ))
        })
        .collect();
    if !sizes.is_empty() {
        out += &format!("\nW1b by buffer size: {}\n", sizes.join(", "));
    }
    out
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

fn main() {
    if let Some(dir) = std::env::var_os(RSS_CHILD) {
        rss_child(Path::new(&dir));
        return;
    }
    let since = SystemTime::now() - Duration::from_secs(1);
    let started = Instant::now();
    let bench = Bench::new();
    let mut c = Criterion::default().configure_from_args();
    streaming(&mut c, true);
    streaming(&mut c, false);
    small(&mut c, true);
    concurrent(&mut c);
    small(&mut c, false);
    // `cargo bench -- <filter>` runs only some groups; W5 runs with "w5" or
    // no filter. `cargo test --benches` passes `--bench`-less args: skip.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let measuring = std::env::args().any(|a| a == "--bench");
    let rss = (measuring
        && (args.is_empty() || args.iter().any(|a| "w5_rss".contains(a.as_str()))))
    .then(|| rss_above_baseline(&bench));
    c.final_summary();
    if !measuring {
        return;
    }
    let table = table(since, rss);
    println!(
        "\n{table}\n(whole run: {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("criterion/peers.md");
    if std::fs::create_dir_all(out.parent().unwrap()).is_ok() {
        let _ = std::fs::write(&out, &table);
    }
}
