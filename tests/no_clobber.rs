//! Issue #2, point 4: `overwrite(false)` is race-free.

mod common;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::Barrier;
use tokio_atomic_write::OpenOptions;

const RACERS: u32 = 32;

/// `racers` tasks open `target` without overwrite (racer `id` with an
/// unnamed temp file if `unnamed(id)`), write a tagged version of `len`
/// bytes, meet on a barrier and commit. Exactly one must win, every other
/// one fail with AlreadyExists, and the file hold the winner's bytes.
/// Returns the winner.
async fn race_for(target: &Path, racers: u32, len: usize, unnamed: impl Fn(u32) -> bool) -> u32 {
    let barrier = Arc::new(Barrier::new(racers as usize));
    let mut tasks = Vec::new();
    for id in 0..racers {
        let (target, barrier) = (target.to_path_buf(), barrier.clone());
        let opts = OpenOptions::new()
            .overwrite(false)
            .unnamed_temp(unnamed(id))
            .clone();
        tasks.push(tokio::spawn(async move {
            let mut file = opts.open(&target).await.unwrap();
            file.write_all(&tagged_version(id, len)).await.unwrap();
            barrier.wait().await;
            (id, file.commit().await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (id, result) = t.await.unwrap();
        match result {
            Ok(()) => winners.push(id),
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let content = std::fs::read(target).unwrap();
    assert_eq!(
        check_tagged(&content),
        Some(winners[0]),
        "the winner's bytes"
    );
    winners[0]
}

/// 32 tasks race for one new path: exactly one commit succeeds, the others
/// fail with AlreadyExists, and the file holds the winner's bytes.
async fn race(unnamed: bool) {
    let dir = scratch();
    race_for(&dir.path().join("key"), RACERS, 4096, |_| unnamed).await;
    assert_no_leftovers_eventually(dir.path());
    assert_eq!(listing(dir.path()), vec!["key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_racers_one_winner_unnamed_temp() {
    race(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_racers_one_winner_named_temp() {
    race(false).await;
}

/// Issue #4, "Concurrency": 1,000 rounds (`TAW_ROUNDS` raises it) of 8
/// racers, half with O_TMPFILE temp files and half named, for one new path:
/// exactly one winner each round, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rounds_of_eight_racers_one_winner_each() {
    let rounds: u32 = std::env::var("TAW_ROUNDS").map_or(1000, |v| v.parse().unwrap());
    let dir = scratch();
    let mut wins = [0u32; 8];
    for round in 0..rounds {
        let key = dir.path().join(format!("key-{round}"));
        let winner = race_for(&key, 8, 64, |id| id % 2 == 0).await;
        wins[winner as usize] += 1;
    }
    assert_no_leftovers_eventually(dir.path());
    assert_eq!(listing(dir.path()).len(), rounds as usize);
    eprintln!("{rounds} rounds of 8 racers, wins by racer: {wins:?}");
}

/// The child half of the fallback tests: one no-clobber commit to `first`
/// (which meets the injected refusal and remembers it), then 8 tasks race
/// for `key`, with exactly one winner.
fn child_race_after_refusal() {
    let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
    common::runtime().block_on(async {
        let named = OpenOptions::new()
            .overwrite(false)
            .unnamed_temp(false)
            .clone();
        let mut first = named.open(dir.join("first")).await.unwrap();
        first.write_all(b"first").await.unwrap();
        first.commit().await.unwrap();
        race_for(&dir.join("key"), 8, 100, |_| false).await;
    });
}

/// Where the filesystem (EINVAL) or the kernel (ENOSYS) refuses
/// RENAME_NOREPLACE, the link fallback is as race-free, leaves no second
/// name, and the refusal is remembered: renameat2 is tried once.
fn refusal_falls_back_to_link(test: &str, errno: &str) {
    if !require(have("strace"), "strace") {
        return;
    }
    let dir = scratch();
    let log = scratch();
    let out = log.path().join("strace.out");
    let inject = format!("inject=renameat2:error={errno}");
    run_child(
        test,
        &[
            "strace",
            "-f",
            "-qq",
            "-o",
            out.to_str().unwrap(),
            "-e",
            "trace=renameat2,linkat,unlinkat",
            "-e",
            &inject,
        ],
        &[("TAW_DIR", dir.path().to_str().unwrap())],
        None,
    );
    let trace = std::fs::read_to_string(&out).unwrap();
    let call = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .map(|c| c.split('(').next().unwrap_or("").to_string())
    };
    let count = |name: &str| {
        trace
            .lines()
            .filter(|l| call(l).as_deref() == Some(name))
            .count()
    };
    assert_eq!(
        count("renameat2"),
        1,
        "tried once, then remembered:\n{trace}"
    );
    assert_eq!(count("linkat"), 9, "every commit linked:\n{trace}");
    assert_eq!(std::fs::read(dir.path().join("first")).unwrap(), b"first");
    assert_eq!(
        listing(dir.path()),
        vec!["first", "key"],
        "no second names left"
    );
}

#[test]
fn einval_from_renameat2_falls_back_to_link_per_filesystem() {
    if is_child() {
        return child_race_after_refusal();
    }
    refusal_falls_back_to_link(
        "einval_from_renameat2_falls_back_to_link_per_filesystem",
        "EINVAL",
    );
}

#[test]
fn enosys_from_renameat2_falls_back_to_link_for_the_process() {
    if is_child() {
        return child_race_after_refusal();
    }
    refusal_falls_back_to_link(
        "enosys_from_renameat2_falls_back_to_link_for_the_process",
        "ENOSYS",
    );
}

/// Issue #4, "Filesystems": every other test in this file, again on tmpfs,
/// ext4 (with and without a journal), xfs and btrfs.
#[test]
fn every_test_here_passes_on_every_filesystem() {
    run_suite_on_every_filesystem("every_test_here_passes_on_every_filesystem");
}
