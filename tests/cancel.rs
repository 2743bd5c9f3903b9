//! Issue #2, point 5: dropping the file, or a future, at any point leaves
//! the target whole and no temp file once the pool is idle.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::OpenOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_inside_a_runtime_removes_the_temp_file() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        let mut file = open_kind(&target, unnamed, 1024).await;
        file.write_all(&[1; 5000]).await.unwrap();
        file.flush().await.unwrap();
        let (names, fds) = leftovers(dir.path());
        assert_eq!(
            names.len() + fds.len(),
            if unnamed && supports_unnamed(dir.path()) {
                1
            } else {
                2
            },
            "the temp file exists"
        );
        drop(file);
        assert_no_leftovers_eventually(dir.path());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_with_a_write_in_flight_removes_the_temp_file_when_it_ends() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        let mut file = open_kind(&target, unnamed, 1 << 20).await;
        // Filling the buffer exactly hands it to the pool at once.
        let n = file.write(&vec![3; 1 << 20]).await.unwrap();
        assert_eq!(n, 1 << 20);
        assert!(format!("{file:?}").contains("busy"), "{file:?}");
        drop(file);
        assert_no_leftovers_eventually(dir.path());
        assert!(!target.exists());
    }
}

/// Outside any runtime the drop cleans up synchronously: no waiting.
#[test]
fn drop_outside_a_runtime_removes_the_temp_file_at_once() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        let rt = runtime();
        let file = rt.block_on(async {
            let mut file = open_kind(&target, unnamed, 16).await;
            file.write_all(b"some bytes, flushed").await.unwrap();
            file.flush().await.unwrap();
            file
        });
        drop(rt);
        assert!(!leftovers(dir.path()).0.is_empty() || !leftovers(dir.path()).1.is_empty());
        drop(file);
        assert_no_leftovers(dir.path());
        assert!(!target.exists());
    }
}

/// Shutting the runtime down with tasks holding files mid-write: once the
/// runtime is gone, so are the temp files.
#[test]
fn runtime_shutdown_with_writes_in_flight_leaves_nothing() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        let rt = runtime();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        for _ in 0..4 {
            let (target, tx) = (target.clone(), tx.clone());
            rt.spawn(async move {
                let mut file = open_kind(&target, unnamed, 4096).await;
                file.write_all(&[9; 3 * 4096 + 1]).await.unwrap();
                tx.send(()).await.unwrap();
                // Keep writing until the runtime goes away.
                loop {
                    file.write_all(&[9; 4096]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
        }
        rt.block_on(async {
            for _ in 0..4 {
                rx.recv().await.unwrap();
            }
        });
        drop(rt);
        assert_no_leftovers(dir.path());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }
}

/// The commit future dropped after 0, 1, 2, ... polls, with and without a
/// write in flight: the target ends old or new and whole, and no temp file
/// remains once the pool is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_future_dropped_after_every_poll_count() {
    let old = tagged_version(1, 100_000);
    let new = tagged_version(2, 100_000);
    let mut outcomes = [0usize; 3];
    for unnamed in TEMP_KINDS {
        for in_flight in [false, true] {
            for polls in 0..6 {
                let dir = scratch();
                let target = dir.path().join("t");
                std::fs::write(&target, &old).unwrap();
                let buffer = if in_flight {
                    new.len() / 2
                } else {
                    new.len() * 2
                };
                let mut file = open_kind(&target, unnamed, buffer).await;
                file.write_all(&new).await.unwrap();
                let mut commit = tokio_test::task::spawn(file.commit());
                let mut finished = false;
                for _ in 0..polls {
                    if let Poll::Ready(r) = commit.poll() {
                        r.unwrap();
                        finished = true;
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                drop(commit);
                assert_no_leftovers_eventually(dir.path());
                let content = std::fs::read(&target).unwrap();
                let id = check_tagged(&content).expect("whole");
                if finished {
                    assert_eq!(id, 2);
                }
                if polls == 0 {
                    assert_eq!(id, 1, "never polled: never committed");
                } else if !in_flight {
                    // The first poll starts the commit hop; dropping the
                    // future after that does not stop it.
                    assert_eq!(id, 2, "a started commit finishes ({polls} polls)");
                }
                outcomes[id as usize] += 1;
            }
        }
    }
    assert!(outcomes[1] >= 4 && outcomes[2] >= 10, "{outcomes:?}");
}

/// The open future dropped after its first poll, while its job waits for
/// the pool's one thread (held busy by the test): the open runs once the
/// thread is free, and its temp file is removed. Then again with a free
/// pool, where the job may be running or done at the drop.
#[test]
fn open_future_dropped_after_first_poll_leaves_nothing() {
    let rt = one_blocking_thread();
    rt.block_on(async {
        for unnamed in TEMP_KINDS {
            for busy in [true, false] {
                let dir = scratch();
                let target = dir.path().join("t");
                let (release, held) = std::sync::mpsc::channel::<()>();
                let blocker = busy.then(|| tokio::task::spawn_blocking(move || held.recv()));
                let opts = OpenOptions::new().unnamed_temp(unnamed).clone();
                let mut fut = Box::pin(opts.open(&target));
                let pending = std::future::poll_fn(|cx| {
                    Poll::Ready(Pin::new(&mut fut).poll(cx).is_pending())
                })
                .await;
                if busy {
                    assert!(pending, "the open waits for the pool's only thread");
                }
                drop(fut);
                drop(release);
                if let Some(b) = blocker {
                    b.await.unwrap().unwrap_err();
                }
                assert_no_leftovers_eventually(dir.path());
                assert!(!target.exists());
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_and_panicking_tasks_leave_nothing() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();

        let t = target.clone();
        let writer = tokio::spawn(async move {
            let mut file = open_kind(&t, unnamed, 4096).await;
            loop {
                file.write_all(&[5; 1000]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());

        let t = target.clone();
        let panicker = tokio::spawn(async move {
            let mut file = open_kind(&t, unnamed, 4096).await;
            file.write_all(&[6; 10_000]).await.unwrap();
            panic!("the writing task panics");
        });
        assert!(panicker.await.unwrap_err().is_panic());

        let t = target.clone();
        let committer = tokio::spawn(async move {
            let mut file = open_kind(&t, unnamed, 4096).await;
            file.write_all(&tagged_version(3, 50_000)).await.unwrap();
            file.commit().await
        });
        tokio::task::yield_now().await;
        committer.abort();
        let _ = committer.await;

        assert_no_leftovers_eventually(dir.path());
        let content = std::fs::read(&target).unwrap();
        assert!(
            content == b"old" || check_tagged(&content) == Some(3),
            "whole, old or new"
        );
    }
}

/// Issue #4: a write future dropped after 0, 1, 2, ... polls. A poll that
/// returned `Ready(n)` accepted exactly `n` bytes; a future dropped while
/// pending accepted none. Committed afterwards, the target holds exactly
/// the bytes accepted, in order; dropped instead, the target keeps its old
/// content and no temp file remains. Each case runs with the pool's one
/// thread free, and held busy by the test while the write is polled (so
/// the write must be pending on full buffers).
#[test]
fn write_future_dropped_after_every_poll_count() {
    let rt = one_blocking_thread();
    let buffer = 4096;
    let data = version(7, 64 * 1024);
    let (mut tried, mut pending_drops) = (0, 0);
    rt.block_on(async {
        for unnamed in TEMP_KINDS {
            for then_commit in [true, false] {
                for held in [false, true] {
                    for polls in 0..8 {
                        let dir = scratch();
                        let target = dir.path().join("t");
                        std::fs::write(&target, b"old").unwrap();
                        let mut file = open_kind(&target, unnamed, buffer).await;
                        let (release, hold) = std::sync::mpsc::channel::<()>();
                        let blocker =
                            held.then(|| tokio::task::spawn_blocking(move || hold.recv()));
                        // Fill both buffers: with the pool held, the
                        // next write has nowhere to go.
                        let mut accepted = Vec::new();
                        while accepted.len() < 2 * buffer {
                            let n = file.write(&data[accepted.len()..]).await.unwrap();
                            accepted.extend_from_slice(&data[accepted.len()..accepted.len() + n]);
                        }
                        let mut write =
                            tokio_test::task::spawn(file.write(&data[accepted.len()..]));
                        let mut got = None;
                        for _ in 0..polls {
                            if let Poll::Ready(r) = write.poll() {
                                got = Some(r.unwrap());
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                        if held && polls > 0 {
                            assert!(got.is_none(), "no room while the pool is held");
                        }
                        pending_drops += usize::from(polls > 0 && got.is_none());
                        drop(write);
                        drop(release);
                        if let Some(b) = blocker {
                            b.await.unwrap().unwrap_err();
                        }
                        tried += 1;
                        if let Some(n) = got {
                            accepted.extend_from_slice(&data[accepted.len()..accepted.len() + n]);
                        }
                        if then_commit {
                            file.commit().await.unwrap();
                            assert_eq!(std::fs::read(&target).unwrap(), accepted, "{polls} polls");
                        } else {
                            drop(file);
                            assert_no_leftovers_eventually(dir.path());
                            assert_eq!(std::fs::read(&target).unwrap(), b"old");
                        }
                        assert_no_leftovers_eventually(dir.path());
                    }
                }
            }
        }
    });
    eprintln!("write future dropped at {tried} poll counts, {pending_drops} of them while pending");
    assert!(
        pending_drops >= 28,
        "{pending_drops}: every held drop after a poll is pending"
    );
}

/// Aborted once its commit hop is on the pool (queued behind the pool's
/// one thread, which the test holds busy, so the first poll of the commit
/// must be pending): the commit still runs when the thread is free, and the
/// target is the new version, whole, with nothing left. Aborted mid-write:
/// the old version, nothing left.
#[test]
fn a_task_aborted_mid_commit_or_mid_write_leaves_old_or_new() {
    let rt = one_blocking_thread();
    rt.block_on(async {
        let new = tagged_version(2, 8 << 20);
        for unnamed in TEMP_KINDS {
            let dir = scratch();
            let target = dir.path().join("t");
            std::fs::write(&target, tagged_version(1, 100)).unwrap();

            let (tx, rx) = tokio::sync::oneshot::channel();
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (t, content) = (target.clone(), new.clone());
            let committer = tokio::spawn(async move {
                // One buffer holds it all: the commit hop writes and syncs it.
                let mut file = open_kind(&t, unnamed, 16 << 20).await;
                file.write_all(&content).await.unwrap();
                let blocker = tokio::task::spawn_blocking(move || held.recv());
                let mut commit = Box::pin(file.commit());
                let first = futures_poll(&mut commit).await;
                tx.send((first.is_pending(), blocker)).unwrap();
                commit.await
            });
            let (pending, blocker) = rx.await.unwrap();
            assert!(pending, "the commit waits for the pool's only thread");
            committer.abort();
            assert!(committer.await.unwrap_err().is_cancelled());
            drop(release);
            blocker.await.unwrap().unwrap_err();
            assert_no_leftovers_eventually(dir.path());
            let content = std::fs::read(&target).unwrap();
            assert_eq!(check_tagged(&content), Some(2), "a started commit finishes");

            let (tx, rx) = tokio::sync::oneshot::channel();
            let t = target.clone();
            let writer = tokio::spawn(async move {
                let mut file = open_kind(&t, unnamed, 4096).await;
                file.write_all(&[5; 20_000]).await.unwrap();
                tx.send(()).unwrap();
                loop {
                    file.write_all(&[5; 1000]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            rx.await.unwrap();
            writer.abort();
            assert!(writer.await.unwrap_err().is_cancelled());
            assert_no_leftovers_eventually(dir.path());
            assert_eq!(check_tagged(&std::fs::read(&target).unwrap()), Some(2));
        }
    });
}

/// A runtime whose blocking pool has a single thread: a test that holds it
/// busy knows the next job waits, so the poll that sends it is pending.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `fut` once.
async fn futures_poll<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Issue #4, "Filesystems": every other test in this file, again on tmpfs,
/// ext4 (with and without a journal), xfs and btrfs.
#[test]
fn every_test_here_passes_on_every_filesystem() {
    run_suite_on_every_filesystem("every_test_here_passes_on_every_filesystem");
}
