//! The object contract (issue #19) on each of the three stores: the S3
//! server (SeaweedFS, on loopback), `InMemory` and `LocalFileSystem`.

#[path = "common/stores.rs"]
mod stores;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use object_store::{ObjectStore, UpdateVersion};
use stores::{all_stores, Store, Watched};
use tokio::io::AsyncWriteExt;
use tokio::sync::Barrier;
use tokio_atomic_write::object::{self, AsyncAtomicObject, ObjectOptions};
use tokio_atomic_write::Op;

const MIB: usize = 1024 * 1024;
/// S3's smallest part but the last.
const PART: usize = 5 * MIB;

/// Bytes that say where they are: a part out of place shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 + (i / 4096) as u64) as u8)
        .collect()
}

fn parted() -> ObjectOptions {
    let mut options = ObjectOptions::new();
    options.part_size(PART).max_concurrency(2);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_is_invisible_until_commit() {
    for s in all_stores("small") {
        let key = s.key("state.json");
        // Absent before: NotFound until commit.
        let mut object = AsyncAtomicObject::create(s.store.clone(), key.clone())
            .await
            .unwrap();
        object.write_all(b"first").await.unwrap();
        object.flush().await.unwrap();
        assert_eq!(s.read(&key).await, None, "{s:?}");
        object.commit().await.unwrap();
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"first"[..]), "{s:?}");

        // Present before: the old one until commit.
        let mut object = AsyncAtomicObject::create(s.store.clone(), key.clone())
            .await
            .unwrap();
        object.write_all(b"second, longer").await.unwrap();
        object.shutdown().await.unwrap();
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"first"[..]), "{s:?}");
        let put = object.commit().await.unwrap();
        assert_eq!(
            s.read(&key).await.as_deref(),
            Some(&b"second, longer"[..]),
            "{s:?}"
        );
        assert!(put.e_tag.is_some(), "{s:?}: a put result without an ETag");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_streams_in_parts_and_appears_whole() {
    for s in all_stores("large") {
        let key = s.key("blob");
        let old = pattern(1000, 1);
        object::write(s.store.clone(), key.clone(), &old)
            .await
            .unwrap();
        let new = pattern(3 * PART + 12345, 2);
        let (store, watch) = Watched::wrap(s.store.clone());
        let mut object = parted().open(store, key.clone()).await.unwrap();

        // One full part and one byte more: the first part goes out before
        // the last byte is written.
        object.write_all(&new[..PART + 1]).await.unwrap();
        object.flush().await.unwrap();
        assert_eq!(watch.parts.load(Ordering::SeqCst), 1, "{s:?}");
        if let Some(n) = s.uploads(&key) {
            assert_eq!(n, 1, "{s:?}: the upload is not in progress at the store");
        }
        assert_eq!(s.read(&key).await, Some(old.clone()), "{s:?}");

        object.write_all(&new[PART + 1..]).await.unwrap();
        object.shutdown().await.unwrap();
        assert_eq!(
            s.read(&key).await,
            Some(old.clone()),
            "{s:?}: visible before commit"
        );
        object.commit().await.unwrap();
        assert_eq!(watch.parts.load(Ordering::SeqCst), 4, "{s:?}");
        assert_eq!(watch.puts.load(Ordering::SeqCst), 0, "{s:?}");
        assert!(s.read(&key).await == Some(new.clone()), "{s:?}: not whole");
        assert_eq!(s.uploads(&key).unwrap_or(0), 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_in_flight_stay_within_max_concurrency() {
    for s in all_stores("concurrency") {
        let key = s.key("blob");
        let (store, watch) = Watched::wrap(s.store.clone());
        // Each part waits before it goes, so that parts pile up if they can.
        watch.part_delay_ms.store(200, Ordering::SeqCst);
        let data = pattern(6 * PART, 3);
        let mut object = parted().open(store, key.clone()).await.unwrap();
        object.write_all(&data).await.unwrap();
        object.commit().await.unwrap();
        assert_eq!(watch.parts.load(Ordering::SeqCst), 6, "{s:?}");
        assert_eq!(
            watch.max_in_flight.load(Ordering::SeqCst),
            2,
            "{s:?}: max_concurrency(2) not used, or exceeded"
        );
        assert!(s.read(&key).await == Some(data), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_io_copy_and_shutdown_publish_nothing_until_commit() {
    for s in all_stores("copy") {
        let key = s.key("download");
        let data = pattern(2 * PART + 777, 4);
        let mut object = parted().open(s.store.clone(), key.clone()).await.unwrap();
        let copied = tokio::io::copy(&mut &data[..], &mut object).await.unwrap();
        assert_eq!(copied, data.len() as u64);
        object.shutdown().await.unwrap();
        assert_eq!(s.read(&key).await, None, "{s:?}: shutdown published");
        object.commit().await.unwrap();
        assert!(s.read(&key).await == Some(data), "{s:?}");
    }
}

/// Writes two full parts and flushes them: an upload is in progress.
async fn two_parts_in_progress(
    s: &Store,
    store: Arc<dyn ObjectStore>,
    key: &object_store::path::Path,
) -> AsyncAtomicObject {
    let mut object = parted().open(store, key.clone()).await.unwrap();
    object.write_all(&pattern(2 * PART + 1, 5)).await.unwrap();
    object.flush().await.unwrap();
    if let Some(n) = s.uploads(key) {
        assert_eq!(n, 1, "{s:?}");
    }
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_publishes_nothing_and_aborts_the_upload() {
    for s in all_stores("drop") {
        let key = s.key("blob");
        object::write(s.store.clone(), key.clone(), b"old")
            .await
            .unwrap();
        let object = two_parts_in_progress(&s, s.store.clone(), &key).await;
        drop(object);
        assert!(
            s.uploads_gone(&key),
            "{s:?}: the dropped upload was not aborted"
        );
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"old"[..]), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_aborts_and_reports_a_failed_abort() {
    for s in all_stores("rollback") {
        let key = s.key("blob");
        let object = two_parts_in_progress(&s, s.store.clone(), &key).await;
        object.rollback().await.unwrap();
        assert_eq!(
            s.uploads(&key).unwrap_or(0),
            0,
            "{s:?}: rollback left the upload"
        );
        assert_eq!(s.read(&key).await, None, "{s:?}");

        // An abort that fails (its upload stays at the store).
        let key = s.key("failed-abort");
        let (store, watch) = Watched::wrap(s.store.clone());
        let object = two_parts_in_progress(&s, store, &key).await;
        watch.fail_abort.store(true, Ordering::SeqCst);
        let err = object.rollback().await.unwrap_err();
        assert_eq!(err.op(), Op::Abort, "{s:?}: {err}");
        assert_eq!(err.path().to_str(), Some(key.as_ref()));
        assert_eq!(
            err.to_string(),
            format!("failed to abort the multipart upload of `{key}`")
        );
        assert_eq!(s.read(&key).await, None, "{s:?}");
        // A failed abort in Drop is dropped by the abort task, never a
        // panic (a panic there would abort this test's runtime thread).
        let key = s.key("failed-abort-drop");
        let (store, watch) = Watched::wrap(s.store.clone());
        let object = two_parts_in_progress(&s, store, &key).await;
        watch.fail_abort.store(true, Ordering::SeqCst);
        drop(object);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_commit_publishes_whole_or_nothing() {
    for s in all_stores("cancel") {
        for polls in 0..4 {
            let key = s.key(&format!("blob-{polls}"));
            object::write(s.store.clone(), key.clone(), b"old")
                .await
                .unwrap();
            let new = pattern(2 * PART + 99, 6);
            let mut object = parted().open(s.store.clone(), key.clone()).await.unwrap();
            object.write_all(&new).await.unwrap();
            let mut commit = tokio_test::task::spawn(object.commit());
            let mut done = false;
            for _ in 0..polls {
                if commit.poll().is_ready() {
                    done = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            drop(commit);
            assert!(s.uploads_gone(&key), "{s:?} after {polls} polls");
            let now = s.read(&key).await.unwrap();
            assert!(
                now == b"old" || (now == new),
                "{s:?} after {polls} polls: neither old nor whole new ({} bytes)",
                now.len()
            );
            if !done && polls == 0 {
                assert_eq!(now, b"old", "{s:?}: a commit never polled published");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_publishes_nothing_and_aborts() {
    for s in all_stores("panic") {
        let key = s.key("blob");
        let store = s.store.clone();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let mut object = parted().open(store, k).await.unwrap();
            object.write_all(&pattern(2 * PART + 1, 7)).await.unwrap();
            object.flush().await.unwrap();
            panic!("the handler failed mid-upload");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(s.uploads_gone(&key), "{s:?}");
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_clobber_has_exactly_one_winner_of_16() {
    for s in all_stores("noclobber") {
        let key = s.key("once");
        let (store, watch) = Watched::wrap(s.store.clone());
        let barrier = Arc::new(Barrier::new(16));
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                // Larger than a part: still one conditional PUT.
                let bytes = pattern(PART + 10, i);
                let mut options = parted();
                options.overwrite(false);
                barrier.wait().await;
                (bytes.clone(), options.write(store, key, &bytes).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (bytes, result) = task.await.unwrap();
            match result {
                Ok(_) => winners.push(bytes),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{s:?}: {e}");
                    assert_eq!(e.op(), Op::Put);
                    assert_eq!(e.path().to_str(), Some(key.as_ref()));
                }
            }
        }
        assert_eq!(winners.len(), 1, "{s:?}: winners");
        assert!(s.read(&key).await == Some(winners.pop().unwrap()), "{s:?}");
        // Never unconditional, never multipart.
        assert_eq!(watch.uploads_started.load(Ordering::SeqCst), 0, "{s:?}");
        assert_eq!(
            watch.conditional_puts.load(Ordering::SeqCst),
            watch.puts.load(Ordering::SeqCst),
            "{s:?}: a conditional write went unconditionally"
        );
        assert!(watch.puts.load(Ordering::SeqCst) >= 16, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_past_its_limit_fails_and_sends_nothing() {
    for s in all_stores("limit") {
        let key = s.key("big");
        let (store, watch) = Watched::wrap(s.store.clone());
        let mut options = ObjectOptions::new();
        options.overwrite(false).conditional_limit(MIB);
        let mut object = options.open(store.clone(), key.clone()).await.unwrap();
        object.write_all(&pattern(MIB, 8)).await.unwrap();
        let err = object.write_all(b"one more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge, "{s:?}");
        let err = object.commit().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(err.op(), Op::Put);
        assert_eq!(err.to_string(), format!("failed to put `{key}`"));
        let why = err.io_error().to_string();
        assert!(why.contains("limit of 1048576 bytes"), "{s:?}: {why}");
        let err = options
            .write(store, key.clone(), pattern(MIB + 1, 8))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(watch.puts.load(Ordering::SeqCst), 0, "{s:?}");
        assert_eq!(watch.uploads_started.load(Ordering::SeqCst), 0, "{s:?}");
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

fn increment(old: Option<Vec<u8>>) -> Result<Vec<u8>, tokio_atomic_write::Error> {
    let n: u64 = match old {
        Some(bytes) => String::from_utf8(bytes).unwrap().parse().unwrap(),
        None => 0,
    };
    Ok((n + 1).to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_nothing() {
    for s in all_stores("update") {
        let key = s.key("counter");
        if matches!(s.kind, stores::Kind::Local(_)) {
            // `LocalFileSystem` has `Create` but not `Update`: the first
            // update creates, the second fails clearly and changes nothing.
            object::update(s.store.clone(), key.clone(), increment)
                .await
                .unwrap();
            let err = object::update(s.store.clone(), key.clone(), increment)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
            assert_eq!(err.op(), Op::Put);
            assert_eq!(s.read(&key).await.as_deref(), Some(&b"1"[..]));
            continue;
        }
        let barrier = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, key, barrier) = (s.store.clone(), key.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut options = ObjectOptions::new();
                options.max_tries(1000);
                let mut calls = 0;
                for _ in 0..5 {
                    options
                        .update(store.clone(), key.clone(), |old| {
                            calls += 1;
                            increment(old)
                        })
                        .await
                        .unwrap();
                }
                calls
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await.unwrap();
        }
        eprintln!("{s:?}: 40 updates, {} retries", calls - 40);
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"40"[..]), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_closure_fails_changes_nothing() {
    #[derive(Debug, PartialEq)]
    enum Mine {
        Refused,
        Store(io::ErrorKind),
    }
    impl From<tokio_atomic_write::Error> for Mine {
        fn from(e: tokio_atomic_write::Error) -> Self {
            Mine::Store(e.kind())
        }
    }
    for s in all_stores("update-err") {
        let key = s.key("state");
        object::write(s.store.clone(), key.clone(), b"kept")
            .await
            .unwrap();
        let (store, watch) = Watched::wrap(s.store.clone());
        let result = object::update(store, key.clone(), |old| {
            assert_eq!(old.as_deref(), Some(&b"kept"[..]));
            Err(Mine::Refused)
        })
        .await;
        assert_eq!(result.unwrap_err(), Mine::Refused, "{s:?}");
        assert_eq!(watch.puts.load(Ordering::SeqCst), 0, "{s:?}");
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"kept"[..]), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_keeps_losing_gives_up_naming_the_location() {
    // A closure that changes the object behind its own back each time:
    // every conditional put loses. `InMemory` alone, since the closure is
    // synchronous and only that store answers without a runtime.
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let key = object_store::path::Path::from("contended");
    object::write(store.clone(), key.clone(), b"0")
        .await
        .unwrap();
    let mut calls = 0;
    let rival = store.clone();
    let mut options = ObjectOptions::new();
    options.max_tries(3);
    let err = options
        .update(store.clone(), key.clone(), |old| {
            calls += 1;
            let k = key.clone();
            let rival = rival.clone();
            futures::executor::block_on(object::write(rival, k, format!("rival {calls}"))).unwrap();
            increment(old.map(|_| b"0".to_vec()))
        })
        .await
        .unwrap_err();
    assert_eq!(calls, 3);
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
    assert_eq!(err.op(), Op::Put);
    assert_eq!(err.path().to_str(), Some("contended"));
    assert!(
        err.io_error().to_string().contains("gave up after 3 tries"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_version_replaces_only_that_version() {
    for s in all_stores("version") {
        let key = s.key("doc");
        let first = object::write(s.store.clone(), key.clone(), b"v1")
            .await
            .unwrap();
        let v1 = UpdateVersion::from(first);
        let mut options = ObjectOptions::new();
        options.if_version(v1.clone());
        let result = options.write(s.store.clone(), key.clone(), b"v2").await;
        if matches!(s.kind, stores::Kind::Local(_)) {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
            assert_eq!(s.read(&key).await.as_deref(), Some(&b"v1"[..]));
            continue;
        }
        result.unwrap();
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"v2"[..]), "{s:?}");
        // v1 is gone: a second write against it loses.
        let err = options
            .write(s.store.clone(), key.clone(), b"v3")
            .await
            .unwrap_err();
        assert_eq!(err.op(), Op::Put, "{s:?}: {err}");
        let source = err.io_error().get_ref().unwrap();
        assert!(
            matches!(
                source.downcast_ref::<object_store::Error>(),
                Some(object_store::Error::Precondition { .. })
            ),
            "{s:?}: {source:?}"
        );
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"v2"[..]), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_location_fails_at_open_and_sends_nothing() {
    for s in all_stores("bad") {
        let (store, watch) = Watched::wrap(s.store.clone());
        for location in ["", "/"] {
            let err = AsyncAtomicObject::create(store.clone(), location)
                .await
                .unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{s:?}: {location:?}"
            );
            assert_eq!(err.op(), Op::Open);
            let err = object::write(store.clone(), location, b"x")
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let err = object::update(store.clone(), location, increment)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert_eq!(watch.puts.load(Ordering::SeqCst), 0, "{s:?}");
        assert_eq!(watch.uploads_started.load(Ordering::SeqCst), 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_fails_the_commit_and_aborts() {
    for s in all_stores("partfail") {
        let key = s.key("blob");
        let (store, watch) = Watched::wrap(s.store.clone());
        watch.fail_part.store(true, Ordering::SeqCst);
        let mut object = parted().open(store, key.clone()).await.unwrap();
        // The failure shows at a later write, or at the latest at commit,
        // which returns it whole.
        let _ = object.write_all(&pattern(2 * PART + 5, 9)).await;
        let err = object.commit().await.unwrap_err();
        assert_eq!(err.op(), Op::UploadPart, "{s:?}: {err}");
        assert_eq!(
            err.to_string(),
            format!("failed to upload a part of `{key}`")
        );
        assert!(s.uploads_gone(&key), "{s:?}");
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_round_trips_on_every_store() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct State {
        visits: u64,
    }
    for s in all_stores("json") {
        let key = s.key("state.json");
        object::write_json(s.store.clone(), key.clone(), &State { visits: 41 })
            .await
            .unwrap();
        let back: State = object::read_json(s.store.clone(), key.clone())
            .await
            .unwrap();
        assert_eq!(back, State { visits: 41 });
        let err = object::read_json::<State>(s.store.clone(), s.key("absent"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{s:?}");
        assert_eq!(err.op(), Op::Read);
    }
}
