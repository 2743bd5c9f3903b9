//! Issue #4, "Concurrency": 64 writers commit 100 versions each to one
//! target while 4 readers read it throughout; every read must be one
//! writer's complete version. `TAW_COMMITS` raises the commits per writer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;

const WRITERS: u32 = 64;
const READERS: usize = 4;

/// Version `i` of writer `w`: its id says both.
fn id(w: u32, i: u32) -> u32 {
    w * 100_000 + i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_writers_and_four_readers_see_only_whole_versions() {
    let commits: u32 = std::env::var("TAW_COMMITS").map_or(100, |v| v.parse().unwrap());
    let dir = scratch();
    let target = dir.path().join("shared.bin");
    std::fs::write(&target, tagged_version(id(WRITERS, 0), 100)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (target, done) = (target.clone(), done.clone());
        readers.push(std::thread::spawn(move || {
            let (mut reads, mut writers_seen) = (0u64, std::collections::BTreeSet::new());
            while !done.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&target).expect("the target always exists");
                let Some(v) = check_tagged(&bytes) else {
                    panic!("torn read: {} bytes", bytes.len());
                };
                let (w, i) = (v / 100_000, v % 100_000);
                assert!(w <= WRITERS && i < commits.max(1), "no such version: {v}");
                writers_seen.insert(w);
                reads += 1;
            }
            (reads, writers_seen.len())
        }));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let target = target.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..commits {
                // 1 KiB to 64 KiB; every other writer streams through an
                // O_TMPFILE file, the rest through a named one.
                let len = 1024 + (id(w, i) as usize * 7919) % (63 * 1024);
                let mut file = open_kind(&target, w % 2 == 0, 16 * 1024).await;
                file.write_all(&tagged_version(id(w, i), len))
                    .await
                    .unwrap();
                file.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (mut reads, mut most_writers_seen) = (0, 0);
    for r in readers {
        let (n, seen) = r.join().unwrap();
        reads += n;
        most_writers_seen = most_writers_seen.max(seen);
    }
    let last = check_tagged(&std::fs::read(&target).unwrap()).unwrap();
    assert_eq!(
        last % 100_000,
        commits - 1,
        "the target ends as some writer's last"
    );
    assert_no_leftovers_eventually(dir.path());
    eprintln!(
        "{} commits by {WRITERS} writers; {reads} reads by {READERS} readers, all whole; \
         a reader saw versions of up to {most_writers_seen} writers",
        WRITERS * commits
    );
    assert!(reads >= 100, "the readers read throughout: {reads}");
    assert!(
        most_writers_seen >= 8,
        "reads met many writers: {most_writers_seen}"
    );
}
