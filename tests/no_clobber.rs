//! Issue #2, point 4: `overwrite(false)` is race-free.

mod common;

use std::io::ErrorKind;
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::Barrier;
use tokio_atomic_write::OpenOptions;

const RACERS: usize = 32;

/// 32 tasks race for one new path: exactly one commit succeeds, the others
/// fail with AlreadyExists, and the file holds the winner's bytes.
async fn race(unnamed: bool) {
    let dir = scratch();
    let target = dir.path().join("key");
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for id in 0..RACERS as u32 {
        let (target, barrier) = (target.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut file = OpenOptions::new()
                .overwrite(false)
                .unnamed_temp(unnamed)
                .open(&target)
                .await
                .unwrap();
            file.write_all(&tagged_version(id, 4096)).await.unwrap();
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
    let content = std::fs::read(&target).unwrap();
    assert_eq!(
        check_tagged(&content),
        Some(winners[0]),
        "the winner's bytes"
    );
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

/// Repeated rounds, to give the race many chances to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rounds_of_eight_racers() {
    for round in 0..50u32 {
        let dir = scratch();
        let target = dir.path().join("key");
        let barrier = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for id in 0..8u32 {
            let (target, barrier) = (target.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let mut file = OpenOptions::new()
                    .overwrite(false)
                    .unnamed_temp(id % 2 == 0)
                    .open(&target)
                    .await
                    .unwrap();
                file.write_all(&tagged_version(id, 64)).await.unwrap();
                barrier.wait().await;
                file.commit().await.is_ok().then_some(id)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(
            check_tagged(&std::fs::read(&target).unwrap()),
            Some(winners[0])
        );
        assert_no_leftovers_eventually(dir.path());
    }
}
