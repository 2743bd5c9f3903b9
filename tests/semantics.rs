//! What a reader and a caller observe: whole versions, exact bytes, sticky
//! errors, one pool hop per operation.

mod common;

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::__private::pool_hops_from_this_thread;
use tokio_atomic_write::{AsyncAtomicFile, Durability, Op, OpenOptions};

const MIB: usize = 1 << 20;

/// Issue #2, point 1: while versions of 1 MiB are committed one after
/// another, readers of the target only ever see a whole version.
async fn readers_see_only_whole_versions(versions: u32, unnamed: bool) {
    let dir = scratch();
    let target = dir.path().join("state.bin");
    let a = tagged_version(1, MIB - 16);
    let b = tagged_version(2, MIB - 16);
    std::fs::write(&target, &a).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (target, done, reads) = (target.clone(), done.clone(), reads.clone());
        readers.push(tokio::task::spawn_blocking(move || {
            let mut seen = [0u64; 3];
            while !done.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&target).expect("the target always exists");
                match check_tagged(&bytes) {
                    Some(id @ (1 | 2)) => seen[id as usize] += 1,
                    other => panic!("torn read: {} bytes, id {other:?}", bytes.len()),
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    for i in 0..versions {
        let content = if i % 2 == 0 { &b } else { &a };
        let mut file = open_kind(&target, unnamed, DEFAULT_BUFFER_SIZE).await;
        file.write_all(content).await.unwrap();
        file.commit().await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let mut seen = [0u64; 3];
    for r in readers {
        let s = r.await.unwrap();
        seen[1] += s[1];
        seen[2] += s[2];
    }
    assert!(reads.load(Ordering::Relaxed) > 0, "readers ran");
    assert!(
        seen[1] > 0 && seen[2] > 0,
        "both versions were read: {seen:?}"
    );
    let last = if versions % 2 == 1 { &b } else { &a };
    assert_eq!(&std::fs::read(&target).unwrap(), last);
    assert_no_leftovers_eventually(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_only_whole_versions_500_commits_unnamed_temp() {
    readers_see_only_whole_versions(500, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_only_whole_versions_500_commits_named_temp() {
    readers_see_only_whole_versions(500, false).await;
}

/// Exact bytes for sizes around the buffer's edges, both temp kinds, both
/// durabilities, writes of odd sizes.
#[tokio::test]
async fn commit_publishes_exactly_the_bytes_written() {
    let dir = scratch();
    let buffer = 4096;
    for unnamed in TEMP_KINDS {
        for durability in [Durability::Full, Durability::None] {
            for len in [0, 1, buffer - 1, buffer, buffer + 1, 3 * buffer + 17] {
                let target = dir.path().join(format!("f-{unnamed}-{durability:?}-{len}"));
                let data = version(len as u32, len);
                let mut file = OpenOptions::new()
                    .unnamed_temp(unnamed)
                    .durability(durability)
                    .buffer_size(buffer)
                    .open(&target)
                    .await
                    .unwrap();
                for chunk in data.chunks(1000) {
                    file.write_all(chunk).await.unwrap();
                }
                assert!(!target.exists(), "nothing is published before commit");
                file.commit().await.unwrap();
                assert_eq!(std::fs::read(&target).unwrap(), data, "{target:?}");
            }
        }
    }
    assert_no_leftovers_eventually(dir.path());
}

#[tokio::test]
async fn write_replaces_and_creates() {
    let dir = scratch();
    let target = dir.path().join("state.json");
    tokio_atomic_write::write(&target, b"{\"n\":1}")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"{\"n\":1}");
    tokio_atomic_write::write(&target, "{\"n\":2}")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"{\"n\":2}");
    assert_eq!(listing(dir.path()), vec!["state.json"]);
    assert_no_leftovers(dir.path());
}

/// Issue #2, point 3: a commit that fails at the rename leaves the target
/// and no temp file. (A failed write, sticky and kept whole, is shown by
/// `bad_input::disk_full_while_writing_is_storage_full` and the pipeline's
/// unit tests.)
#[tokio::test]
async fn a_failed_commit_leaves_the_target_and_no_temp_file() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        // Replace the target by a non-empty directory between open and commit:
        // the rename fails.
        let mut file = open_kind(&target, unnamed, DEFAULT_BUFFER_SIZE).await;
        file.write_all(b"new").await.unwrap();
        std::fs::remove_file(&target).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"keep").unwrap();
        let err = file.commit().await.unwrap_err();
        assert_eq!(err.op(), Op::Rename, "{err}");
        assert_eq!(err.path(), target);
        assert!(!err.is_published());
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"keep");
        assert_no_leftovers_eventually(dir.path());
    }
}

#[tokio::test]
async fn rollback_removes_the_temp_file_and_keeps_the_target() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        let mut file = open_kind(&target, unnamed, 4).await;
        file.write_all(b"new content").await.unwrap();
        file.flush().await.unwrap();
        if !unnamed || !supports_unnamed(dir.path()) {
            assert_eq!(
                temp_files(dir.path()).len(),
                1,
                "a named temp file while writing"
            );
        } else {
            assert!(
                temp_files(dir.path()).is_empty(),
                "an unnamed temp file has no name"
            );
            assert_eq!(fds_into(dir.path()).len(), 1, "but it is open");
        }
        file.rollback().await.unwrap();
        assert_no_leftovers(dir.path());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }
}

#[tokio::test]
async fn shutdown_and_flush_do_not_publish() {
    let dir = scratch();
    let target = dir.path().join("t");
    let mut file = AsyncAtomicFile::create(&target).await.unwrap();
    file.write_all(b"data").await.unwrap();
    file.flush().await.unwrap();
    file.shutdown().await.unwrap();
    assert!(!target.exists());
    file.commit().await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"data");
}

/// Issue #2, points 3 and 9: open, commit and `write` are one pool hop
/// each; small writes cost none; a stream costs one hop per full buffer.
#[tokio::test(flavor = "current_thread")]
async fn each_operation_is_one_pool_hop() {
    let dir = scratch();
    let target = dir.path().join("t");

    let h0 = pool_hops_from_this_thread();
    tokio_atomic_write::write(&target, vec![7u8; 3 * MIB])
        .await
        .unwrap();
    assert_eq!(pool_hops_from_this_thread() - h0, 1, "write() is one hop");

    let h0 = pool_hops_from_this_thread();
    OpenOptions::new()
        .durability(Durability::None)
        .mode(0o640)
        .write(&target, b"with options")
        .await
        .unwrap();
    assert_eq!(
        pool_hops_from_this_thread() - h0,
        1,
        "so is OpenOptions::write"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"with options");
    assert_eq!(mode_of(&target), 0o640, "the options apply");

    let h0 = pool_hops_from_this_thread();
    let mut file = AsyncAtomicFile::create(&target).await.unwrap();
    assert_eq!(pool_hops_from_this_thread() - h0, 1, "open is one hop");
    for _ in 0..100 {
        file.write_all(&[1u8; 100]).await.unwrap();
    }
    assert_eq!(
        pool_hops_from_this_thread() - h0,
        1,
        "small writes are buffered"
    );
    file.commit().await.unwrap();
    assert_eq!(
        pool_hops_from_this_thread() - h0,
        2,
        "commit is one hop, carrying the rest"
    );

    let h0 = pool_hops_from_this_thread();
    let buffer = 64 * 1024;
    let mut file = OpenOptions::new()
        .buffer_size(buffer)
        .open(&target)
        .await
        .unwrap();
    let data = version(9, 10 * buffer + 5);
    let mut reader = &data[..];
    tokio::io::copy(&mut reader, &mut file).await.unwrap();
    file.commit().await.unwrap();
    // open + at most one per full buffer (a buffer filled while a job runs
    // is queued behind it, no hop) + commit, which writes the last 5 bytes:
    // the 80 chunks of 8 KiB cost no hop each, nor does the flush that
    // `copy` ends with.
    let hops = pool_hops_from_this_thread() - h0;
    assert!((3..=12).contains(&hops), "{hops} hops");
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

/// A target created between `open` and `commit` wins: the commit fails,
/// saying why, and both files stay as they were.
#[tokio::test]
async fn no_clobber_commit_fails_with_already_exists_and_keeps_both() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        let mut file = OpenOptions::new()
            .overwrite(false)
            .unnamed_temp(unnamed)
            .open(&target)
            .await
            .unwrap();
        std::fs::write(&target, b"first").unwrap();
        file.write_all(b"second").await.unwrap();
        let err = file.commit().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        assert!(matches!(err.op(), Op::Link | Op::Rename), "{err}");
        assert_eq!(err.path(), target);
        let msg = err.to_string();
        let head = format!(
            "failed to publish `{}`: the target already exists: ",
            target.display()
        );
        assert!(msg.starts_with(&head), "{msg}");
        assert!(msg.ends_with("File exists (os error 17)"), "{msg}");
        assert_eq!(std::fs::read(&target).unwrap(), b"first");
        assert_no_leftovers_eventually(dir.path());
    }
}

/// With `overwrite(false)`, an existing target (a file, or a symlink not
/// followed, even a dangling one) fails `open` itself: nothing is created,
/// and no byte is accepted in vain. `write` fails the same way.
#[tokio::test]
async fn no_clobber_open_fails_at_once_on_an_existing_target() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"first").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("nowhere", &link).unwrap();
        let before = listing(dir.path());
        for (path, follow) in [(&target, true), (&target, false), (&link, false)] {
            let mut options = OpenOptions::new();
            options
                .overwrite(false)
                .unnamed_temp(unnamed)
                .follow_symlinks(follow);
            let err = options.open(path).await.unwrap_err();
            assert_eq!(
                (err.op(), err.kind()),
                (Op::Open, ErrorKind::AlreadyExists),
                "{err}"
            );
            assert_eq!(err.path(), path);
            assert_eq!(
                err.to_string(),
                format!(
                    "failed to open `{}` for atomic replacement: the target already exists, \
                     and overwrite(false) forbids replacing it",
                    path.display()
                )
            );
            let err = options.write(path, b"second").await.unwrap_err();
            assert_eq!(
                (err.op(), err.kind()),
                (Op::Open, ErrorKind::AlreadyExists),
                "{err}"
            );
            assert_eq!(listing(dir.path()), before, "nothing created");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"first");
        // A dangling link that is followed names no file yet: its target
        // is created, as with overwrite.
        let mut file = OpenOptions::new()
            .overwrite(false)
            .unnamed_temp(unnamed)
            .open(&link)
            .await
            .unwrap();
        file.write_all(b"made").await.unwrap();
        file.commit().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("nowhere")).unwrap(), b"made");
        assert_no_leftovers_eventually(dir.path());
    }
}

#[tokio::test]
async fn debug_and_target_describe_the_file() {
    let dir = scratch();
    let target = dir.path().join("t");
    let file = AsyncAtomicFile::create(&target).await.unwrap();
    assert_eq!(file.target(), target);
    let dbg = format!("{file:?}");
    assert!(
        dbg.contains("AsyncAtomicFile") && dbg.contains("idle"),
        "{dbg}"
    );
    fn traits<T: tokio::io::AsyncWrite + Send + Sync + Unpin + std::fmt::Debug>() {}
    traits::<AsyncAtomicFile>();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// End to end, on real files and Tokio's pool: random content, chunk
    /// sizes, buffer sizes and temp kinds; the target equals the input.
    #[test]
    fn random_writes_commit_exactly_the_input(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200_000),
        chunk in 1usize..20_000,
        buffer in 1usize..70_000,
        unnamed in proptest::prelude::any::<bool>(),
        flush_every in 0usize..8,
    ) {
        let dir = scratch();
        let target = dir.path().join("t");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut file = OpenOptions::new()
                .unnamed_temp(unnamed)
                .buffer_size(buffer)
                .durability(Durability::None)
                .open(&target)
                .await
                .unwrap();
            for (i, piece) in data.chunks(chunk).enumerate() {
                file.write_all(piece).await.unwrap();
                if flush_every != 0 && i % flush_every == 0 {
                    file.flush().await.unwrap();
                }
            }
            file.commit().await.unwrap();
        });
        drop(rt);
        proptest::prop_assert_eq!(std::fs::read(&target).unwrap(), data);
        assert_no_leftovers(dir.path());
    }
}

/// `OpenOptions::write` is open + commit under the options, in one hop:
/// no-clobber refuses an existing target and leaves nothing behind.
#[tokio::test]
async fn open_options_write_honours_no_clobber() {
    let dir = scratch();
    let target = dir.path().join("t");
    std::fs::write(&target, b"first").unwrap();
    let err = OpenOptions::new()
        .overwrite(false)
        .write(&target, b"second")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(!err.is_published());
    assert_eq!(std::fs::read(&target).unwrap(), b"first");
    assert_no_leftovers(dir.path());
}

/// Issue #4, "Filesystems": every other test in this file, again on tmpfs,
/// ext4 (with and without a journal), xfs and btrfs.
#[test]
fn every_test_here_passes_on_every_filesystem() {
    run_suite_on_every_filesystem("every_test_here_passes_on_every_filesystem");
}
