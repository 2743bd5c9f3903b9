//! Issue #21's bench: `StateFile::update` against the pattern it replaces,
//! a mutex around the state and `write_json` per update (answer after the
//! write), both `Durability::Full`, with 1, 8 and 64 concurrent updaters
//! of a small state (a counter and a 50-entry list).
//!
//! `cargo bench --bench state` (a filter picks filesystems: `root`,
//! `ext4`)
//!
//! Two passes, as in `peers.rs`. First criterion, one way after the other,
//! for its reports (`target/criterion/state_*`). Then an interleaved pass:
//! round after round (`TAW_STATE_ROUNDS`, 5 by default), every way and
//! updater count runs once in turn, `TAW_STATE_UPDATES` updates each (512;
//! `TAW_STATE_UPDATERS` picks the counts, e.g. `1,64`),
//! and the medians give the ratio table printed at the end and written to
//! `target/criterion/state.md`: on a shared machine only ratios measured
//! side by side compare. `TAW_STATE_CRITERION=0` skips the first pass.
//!
//! Filesystems: the root filesystem (the bench's temp dir under
//! `target/tmp`), and a loop-mounted ext4 with a journal (root only: a
//! visible skip elsewhere). Not tmpfs: there is no flush to share.
//!
//! Also measured, in the interleaved pass: `StateFile` with a clone of
//! the state per update, made in `f` under the state's lock (what the
//! other policy for panics in `f` would cost: see `StateFile`'s docs), and
//! one clone alone against one update with one updater.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::LoopMount;
use criterion::{BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio_atomic_write::StateFile;

const UPDATERS: [usize; 3] = [1, 8, 64];
const LIST_LEN: usize = 50;
const WAYS: [&str; 2] = ["state_file", "write_json"];
/// `StateFile` as it would be with a copy of the state taken before every
/// `f` (the other panic policy of issue #21): the clone is made inside
/// `f`, under the state's lock, where that copy would be. The interleaved
/// pass only.
const WITH_CLONE: &str = "state_file_clone_per_update";

/// The state of the issue: a counter and a 50-entry list.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Small {
    counter: u64,
    list: Vec<String>,
}

impl Small {
    fn new() -> Small {
        Small {
            counter: 0,
            list: (0..LIST_LEN).map(|i| format!("entry {i:04}")).collect(),
        }
    }

    /// One request's change.
    fn bump(&mut self) -> u64 {
        self.counter += 1;
        let i = self.counter as usize % LIST_LEN;
        self.list[i] = format!("entry {:04}", self.counter % 10_000);
        self.counter
    }
}

/// `total` updates of a fresh state in `dir`, from `updaters` tasks, the
/// given way; the time they took (opening not included).
fn run_way(rt: &Runtime, way: &str, dir: &Path, updaters: usize, total: usize) -> Duration {
    let path = dir.join(format!("{way}-{updaters}.json"));
    let _ = std::fs::remove_file(&path);
    let per_task = total.div_ceil(updaters);
    rt.block_on(async {
        match way {
            "state_file" | WITH_CLONE => {
                let clone = way == WITH_CLONE;
                let state = StateFile::open(&path, Small::new).await.unwrap();
                let start = Instant::now();
                let tasks: Vec<_> = (0..updaters)
                    .map(|_| {
                        let state = state.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                state
                                    .update(|s| {
                                        let before = clone.then(|| s.clone());
                                        std::hint::black_box(before);
                                        s.bump()
                                    })
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let took = start.elapsed();
                assert_eq!(state.read(|s| s.counter), (per_task * updaters) as u64);
                took
            }
            "write_json" => {
                // The pattern of examples/web_state.rs before #21: held
                // across the write, so that the file sees the versions in
                // order and memory changes only once the file has.
                let state = Arc::new(tokio::sync::Mutex::new(Small::new()));
                let path = Arc::new(path.clone());
                let start = Instant::now();
                let tasks: Vec<_> = (0..updaters)
                    .map(|_| {
                        let (state, path) = (state.clone(), path.clone());
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                let mut held = state.lock().await;
                                let mut next = held.clone();
                                next.bump();
                                tokio_atomic_write::write_json(&*path, &next).await.unwrap();
                                *held = next;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
            other => panic!("no way {other}"),
        }
    })
    .mul_f64(total as f64 / (per_task * updaters) as f64)
}

/// The updater counts to run: `TAW_STATE_UPDATERS` (e.g. `1,64`), or
/// [`UPDATERS`].
fn updater_counts() -> Vec<usize> {
    match std::env::var("TAW_STATE_UPDATERS") {
        Ok(v) => v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => UPDATERS.to_vec(),
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().unwrap())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Criterion, one way after the other: updates per second.
fn criterion_pass(c: &mut Criterion, rt: &Runtime, fs: &str, dir: &Path) {
    let mut group = c.benchmark_group(format!("state_{fs}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for updaters in updater_counts() {
        for way in WAYS {
            group.bench_with_input(BenchmarkId::new(way, updaters), &updaters, |b, &n| {
                // `iters` updates (at least one per updater), spread over
                // the updaters; the time scaled back to `iters`.
                b.iter_custom(|iters| {
                    let total = (iters as usize).max(n);
                    run_way(rt, way, dir, n, total).mul_f64(iters as f64 / total as f64)
                });
            });
        }
    }
    group.finish();
}

/// The interleaved pass on one filesystem: rows of the ratio table.
fn interleaved(
    rt: &Runtime,
    fs: &str,
    dir: &Path,
    rounds: usize,
    total: usize,
) -> (String, Duration) {
    let mut rows = String::new();
    let mut one_updater = Duration::ZERO;
    let combos: Vec<(usize, &str)> = updater_counts()
        .into_iter()
        .flat_map(|n| WAYS.iter().chain([&WITH_CLONE]).map(move |&w| (n, w)))
        .collect();
    let mut times = vec![Vec::new(); combos.len()];
    for round in 0..rounds {
        for k in 0..combos.len() {
            let i = (round + k) % combos.len();
            let (n, way) = combos[i];
            times[i].push(run_way(rt, way, dir, n, total));
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    for (three, n) in medians.chunks(3).zip(updater_counts()) {
        let [state, write, cloning] = [0, 1, 2].map(|i| three[i].as_secs_f64());
        let per = |t: f64| total as f64 / t;
        let row = format!(
            "| {fs} | {n} | {:.0} | {:.0} | {:.2}x | {:.3}x | {:.0} | {:.3}x |\n",
            per(state),
            per(write),
            per(state) / per(write),
            state / write,
            per(cloning),
            cloning / state,
        );
        print!("{row}");
        rows.push_str(&row);
        if n == 1 {
            one_updater = three[0] / total as u32;
        }
    }
    (rows, one_updater)
}

/// What one clone of the state costs: the median of 5 runs of 100,000.
fn clone_cost() -> Duration {
    let state = Small::new();
    let runs: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..100_000 {
                std::hint::black_box(std::hint::black_box(&state).clone());
            }
            start.elapsed() / 100_000
        })
        .collect();
    median(runs)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter picks filesystems.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        // Not criterion's options, nor their values.
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    let wanted = |what: &str| filter.is_empty() || filter.iter().any(|f| what.contains(f.as_str()));
    let rounds = env_or("TAW_STATE_ROUNDS", 5);
    let total = env_or("TAW_STATE_UPDATES", 512);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let root = tempfile::tempdir_in(&target_dir).unwrap();
    // Made without lazy init: no background thread writing inode tables
    // and committing the journal while the bench runs.
    let ext4 = wanted("ext4")
        .then(|| {
            let lazy = ["-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"];
            LoopMount::make(&target_dir, "state-bench-ext4", "ext4", "512M", &lazy)
        })
        .flatten();
    let mut places: Vec<(&str, &Path)> = Vec::new();
    if wanted("root") {
        places.push(("root", root.path()));
    }
    if let Some(e) = &ext4 {
        places.push(("ext4", &e.mount));
    }

    // `TAW_STATE_CRITERION=0`: the interleaved pass alone.
    if env_or("TAW_STATE_CRITERION", 1) != 0 {
        let mut c = Criterion::default().configure_from_args();
        for (fs, dir) in &places {
            criterion_pass(&mut c, &rt, fs, dir);
        }
    }

    println!(
        "\ninterleaved: {rounds} rounds of {total} updates per way and updater count, medians"
    );
    let head = "| filesystem | updaters | StateFile updates/s | write_json updates/s | speed-up | time ratio | with a clone per update, updates/s | its time ratio |\n|---|---|---|---|---|---|---|---|\n";
    print!("{head}");
    let mut table = String::from(head);
    let mut one = Duration::ZERO;
    for (fs, dir) in &places {
        let (rows, one_updater) = interleaved(&rt, fs, dir, rounds, total);
        table += &rows;
        if one.is_zero() {
            one = one_updater;
        }
    }
    let clone = clone_cost();
    let line = format!(
        "\none clone of the state: {:.2} µs, {:.3}% of one update with one updater ({:.0} µs)\n",
        clone.as_secs_f64() * 1e6,
        100.0 * clone.as_secs_f64() / one.as_secs_f64().max(1e-9),
        one.as_secs_f64() * 1e6,
    );
    print!("{line}");
    table += &line;
    let out = target_dir.join("../criterion/state.md");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    std::fs::write(&out, table).unwrap();
    println!("written to {}", out.display());
}
