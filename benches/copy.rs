//! Issue #20's copy bench: `tokio_atomic_write::copy` against
//! `std::fs::copy` + `sync_all`, on the root filesystem and, as root, on a
//! loop-mounted xfs (where a copy can be a reflink).
//!
//! `cargo bench --bench copy` (`TAW_COPY_MIB`, default 500, sets the file
//! size; `TAW_COPY_ROUNDS`, default 5, the rounds)
//!
//! Interleaved: round after round, every way of copying runs once in
//! turn (the first one rotating), each into a target removed beforehand
//! (untimed), from the same source, in the page cache. The table gives
//! the median of each, and its ratio to `std::fs::copy` + `sync_all`
//! measured in the same rounds (and, in the last column, to
//! `std_copy_atomic`, the same guarantees by hand):
//! - `std_copy_sync`: `std::fs::copy` (Linux: `copy_file_range`) then
//!   `File::sync_all` of the copy; no rename, no directory sync.
//! - `std_copy_atomic`: the same guarantees as `copy`, by hand on the
//!   bench's thread: `std::fs::copy` to a temp name, `sync_all`, rename,
//!   directory fsync. No pool trip: the limit of the work.
//! - `copy`: `tokio_atomic_write::copy`: the kernel's copy into a temp
//!   file, fsync, rename, directory fsync, in one pool trip.
//! - `io_copy`: `tokio::io::copy` from a `tokio::fs::File` into an
//!   `AsyncAtomicFile`, then `commit`: what users wrote before `copy`
//!   (a pool trip per 8 KiB read).
//! - `copy_buf_1m`: the same through a 1 MiB `BufReader` and `copy_buf`,
//!   the fast way to feed the file when the bytes must pass through.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::LoopMount;
use tokio::io::BufReader;
use tokio::runtime::Runtime;
use tokio_atomic_write::AsyncAtomicFile;

const WAYS: [&str; 5] = [
    "std_copy_sync",
    "std_copy_atomic",
    "copy",
    "io_copy",
    "copy_buf_1m",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_way(rt: &Runtime, way: &str, from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    match way {
        "std_copy_sync" => {
            std::fs::copy(from, to).unwrap();
            std::fs::File::open(to).unwrap().sync_all().unwrap();
        }
        "std_copy_atomic" => {
            let dir = to.parent().unwrap();
            let temp = dir.join(".copy-bench.tmp");
            std::fs::copy(from, &temp).unwrap();
            std::fs::File::open(&temp).unwrap().sync_all().unwrap();
            std::fs::rename(&temp, to).unwrap();
            std::fs::File::open(dir).unwrap().sync_all().unwrap();
        }
        "copy" => {
            rt.block_on(tokio_atomic_write::copy(from, to)).unwrap();
        }
        "io_copy" => rt.block_on(async {
            let mut source = tokio::fs::File::open(from).await.unwrap();
            let mut file = AsyncAtomicFile::create(to).await.unwrap();
            tokio::io::copy(&mut source, &mut file).await.unwrap();
            file.commit().await.unwrap();
        }),
        "copy_buf_1m" => rt.block_on(async {
            let source = tokio::fs::File::open(from).await.unwrap();
            let mut reader = BufReader::with_capacity(1 << 20, source);
            let mut file = AsyncAtomicFile::create(to).await.unwrap();
            tokio::io::copy_buf(&mut reader, &mut file).await.unwrap();
            file.commit().await.unwrap();
        }),
        _ => unreachable!(),
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_in(rt: &Runtime, name: &str, dir: &Path, mib: u64, rounds: usize) -> String {
    let from = dir.join("source.bin");
    let body: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&from, &body).unwrap();
    drop(body);
    std::fs::File::open(&from).unwrap().sync_all().unwrap();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); WAYS.len()];
    for round in 0..rounds {
        for k in 0..WAYS.len() {
            let i = (round + k) % WAYS.len();
            let to = dir.join(format!("copy-{}.bin", WAYS[i]));
            let _ = std::fs::remove_file(&to);
            rustix::fs::sync();
            let t = run_way(rt, WAYS[i], &from, &to);
            assert_eq!(std::fs::metadata(&to).unwrap().len(), mib << 20);
            times[i].push(t);
        }
    }
    for way in WAYS {
        let _ = std::fs::remove_file(dir.join(format!("copy-{way}.bin")));
    }
    let _ = std::fs::remove_file(&from);
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let (base, atomic) = (medians[0].as_secs_f64(), medians[1].as_secs_f64());
    let mut table = String::new();
    for (way, m) in WAYS.iter().zip(&medians) {
        let line = format!(
            "| {name} | {way} | {:.4} s | {:.3}x | {:.3}x |\n",
            m.as_secs_f64(),
            m.as_secs_f64() / base,
            m.as_secs_f64() / atomic
        );
        print!("{line}");
        table.push_str(&line);
    }
    table
}

fn main() {
    // `cargo bench` passes `--bench`; a filter picks filesystems.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |fs: &str| filter.is_empty() || filter.iter().any(|f| fs.contains(f.as_str()));
    let mib = env_or("TAW_COPY_MIB", 500);
    let rounds = env_or("TAW_COPY_ROUNDS", 5) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    println!(
        "copy of {mib} MiB, {rounds} rounds: medians, ratios to std_copy_sync and std_copy_atomic"
    );
    let head = "| filesystem | way | median | / std_copy_sync | / std_copy_atomic |\n|---|---|---|---|---|\n";
    print!("{head}");
    let mut table = String::from(head);
    if wanted("root") {
        let dir = tempfile::tempdir_in(&target_dir).unwrap();
        table += &bench_in(&rt, "root", dir.path(), mib, rounds);
    }
    if wanted("xfs") {
        // Reflink on, as mkfs.xfs makes it by default; big enough for the
        // source and two copies.
        let size = format!("{}M", 4 * mib + 512);
        if let Some(xfs) = LoopMount::make(&target_dir, "copy-bench-xfs", "xfs", &size, &["-f"]) {
            table += &bench_in(&rt, "xfs", &xfs.mount, mib, rounds);
        }
    }
    std::fs::write(target_dir.join("copy-bench.md"), table).unwrap();
}
