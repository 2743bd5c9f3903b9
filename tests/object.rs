//! The object contract (issue #19) on each of the three stores: the S3
//! server (SeaweedFS, on loopback), `InMemory` and `LocalFileSystem`.

#[path = "common/stores.rs"]
mod stores;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use object_store::{ObjectStore, UpdateVersion};
use stores::{all_stores, increment, parted, pattern, Store, Watched, MIB, PART};
use tokio::io::AsyncWriteExt;
use tokio::sync::Barrier;
use tokio_atomic_write::object::{self, AsyncAtomicObject, ObjectOptions};
use tokio_atomic_write::Op;

#[test]
fn the_types_have_the_traits_the_issue_fixes() {
    fn writer<T: tokio::io::AsyncWrite + Send + Sync + Unpin + std::fmt::Debug>() {}
    fn options<T: Clone + std::fmt::Debug + Default>() {}
    writer::<AsyncAtomicObject>();
    options::<ObjectOptions>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_is_invisible_until_commit() {
    for s in all_stores("small") {
        let key = s.key("state.json");
        // Absent before: NotFound until commit.
        let mut object = AsyncAtomicObject::create(s.store.clone(), key.clone())
            .await
            .unwrap();
        assert_eq!(object.location(), &key);
        object.write_all(b"first").await.unwrap();
        object.flush().await.unwrap();
        assert_eq!(s.read(&key).await, None, "{s:?}");
        object.commit().await.unwrap();
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"first"[..]), "{s:?}");

        // Present before: the old one until commit.
        let mut object = AsyncAtomicObject::options()
            .open(s.store.clone(), key.clone())
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

        // One full part, flushed: it goes out before the last byte is
        // written.
        object.write_all(&new[..PART]).await.unwrap();
        object.flush().await.unwrap();
        assert_eq!(watch.parts.load(Ordering::SeqCst), 1, "{s:?}");
        if let Some(n) = s.uploads(&key) {
            assert_eq!(n, 1, "{s:?}: the upload is not in progress at the store");
        }
        assert_eq!(s.read(&key).await, Some(old.clone()), "{s:?}");

        object.write_all(&new[PART..]).await.unwrap();
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
        // Parts wait at a gate: they pile up as far as the writer lets them.
        watch.gated.store(true, Ordering::SeqCst);
        let data = Arc::new(pattern(6 * PART, 3));
        let mut object = parted().open(store, key.clone()).await.unwrap();
        let writing = {
            let data = data.clone();
            tokio::spawn(async move {
                object.write_all(&data).await.unwrap();
                object
            })
        };
        // Two in flight and the writer held: it may not fill a third part.
        for _ in 0..3000 {
            if watch.in_flight.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(watch.in_flight.load(Ordering::SeqCst), 2, "{s:?}");
        assert!(!writing.is_finished(), "{s:?}: the writer was not held");
        watch.open_gate();
        let object = writing.await.unwrap();
        object.commit().await.unwrap();
        assert_eq!(watch.parts.load(Ordering::SeqCst), 6, "{s:?}");
        assert_eq!(
            watch.max_in_flight.load(Ordering::SeqCst),
            2,
            "{s:?}: max_concurrency(2) exceeded"
        );
        assert!(s.read(&key).await.as_ref() == Some(&*data), "{s:?}");
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

/// Waits (a liveness bound) for the abort task, then checks it ran once.
async fn aborted_once(s: &Store, watch: &stores::Watch) {
    for _ in 0..3000 {
        if watch.aborts.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(watch.aborts.load(Ordering::SeqCst), 1, "{s:?}: aborts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_publishes_nothing_and_aborts_the_upload() {
    for s in all_stores("drop") {
        let key = s.key("blob");
        object::write(s.store.clone(), key.clone(), b"old")
            .await
            .unwrap();
        let (store, watch) = Watched::wrap(s.store.clone());
        let object = two_parts_in_progress(&s, store, &key).await;
        drop(object);
        aborted_once(&s, &watch).await;
        assert!(
            s.uploads_gone(&key).await,
            "{s:?}: the dropped upload was not aborted"
        );
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"old"[..]), "{s:?}");
    }
}

#[test]
fn a_drop_outside_a_runtime_does_not_panic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (store, watch) = Watched::wrap(store);
    let key = object_store::path::Path::from("outside");
    let object = rt.block_on(async {
        let mut object = parted().open(store.clone(), key.clone()).await.unwrap();
        object.write_all(&pattern(PART + 1, 1)).await.unwrap();
        object.flush().await.unwrap();
        object
    });
    drop(rt);
    drop(object); // no runtime: the upload stays, for the lifecycle rule
    assert_eq!(watch.aborts.load(Ordering::SeqCst), 0);
    assert_eq!(watch.parts.load(Ordering::SeqCst), 1);
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
        let msg = err.to_string();
        let head = format!("failed to abort the multipart upload of `{key}`: ");
        assert!(msg.starts_with(&head), "{msg}");
        assert!(msg.ends_with("injected abort failure"), "{msg}");
        assert_eq!(s.read(&key).await, None, "{s:?}");
        // A failed abort after a drop: tried once, nothing published.
        let key = s.key("failed-abort-drop");
        let (store, watch) = Watched::wrap(s.store.clone());
        let object = two_parts_in_progress(&s, store, &key).await;
        watch.fail_abort.store(true, Ordering::SeqCst);
        drop(object);
        aborted_once(&s, &watch).await;
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_commit_publishes_nothing_and_aborts() {
    for s in all_stores("cancel") {
        for polls in [0, 1, 5] {
            let key = s.key(&format!("blob-{polls}"));
            object::write(s.store.clone(), key.clone(), b"old")
                .await
                .unwrap();
            let (store, watch) = Watched::wrap(s.store.clone());
            // The parts wait at the gate: the commit cannot complete.
            watch.gated.store(true, Ordering::SeqCst);
            let mut object = parted().open(store, key.clone()).await.unwrap();
            object.write_all(&pattern(PART + 99, 6)).await.unwrap();
            let mut commit = tokio_test::task::spawn(object.commit());
            for _ in 0..polls {
                assert!(commit.poll().is_pending(), "{s:?}: completed at the gate");
                tokio::task::yield_now().await;
            }
            drop(commit);
            watch.open_gate();
            aborted_once(&s, &watch).await;
            assert!(s.uploads_gone(&key).await, "{s:?} after {polls} polls");
            assert_eq!(s.read(&key).await.as_deref(), Some(&b"old"[..]), "{s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_rollback_still_aborts() {
    for s in all_stores("cancel-rollback") {
        let key = s.key("blob");
        let (store, watch) = Watched::wrap(s.store.clone());
        watch.gated.store(true, Ordering::SeqCst);
        let mut object = parted().open(store, key.clone()).await.unwrap();
        object.write_all(&pattern(PART + 1, 6)).await.unwrap();
        // Rollback waits for the gated part: cancel it there.
        let mut rollback = tokio_test::task::spawn(object.rollback());
        assert!(rollback.poll().is_pending());
        drop(rollback);
        watch.open_gate();
        aborted_once(&s, &watch).await;
        assert!(s.uploads_gone(&key).await, "{s:?}");
        assert_eq!(s.read(&key).await, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_publishes_nothing_and_aborts() {
    for s in all_stores("panic") {
        let key = s.key("blob");
        let (store, watch) = Watched::wrap(s.store.clone());
        let k = key.clone();
        let task = tokio::spawn(async move {
            let mut object = parted().open(store, k).await.unwrap();
            object.write_all(&pattern(2 * PART + 1, 7)).await.unwrap();
            object.flush().await.unwrap();
            panic!("the handler failed mid-upload");
        });
        assert!(task.await.unwrap_err().is_panic());
        aborted_once(&s, &watch).await;
        assert!(s.uploads_gone(&key).await, "{s:?}");
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
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("failed to put `{key}`: ")),
            "{msg}"
        );
        assert!(msg.contains("limit of 1048576 bytes"), "{s:?}: {msg}");
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
        let long = "k".repeat(1025);
        for location in ["", "/", long.as_str()] {
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
        let mut options = ObjectOptions::new();
        options.if_version(UpdateVersion {
            e_tag: None,
            version: None,
        });
        let err = options.write(store.clone(), "k", b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{s:?}: {err}");
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
        let msg = err.to_string();
        let head = format!("failed to upload a part of `{key}`: ");
        assert!(msg.starts_with(&head), "{msg}");
        assert!(msg.ends_with("injected part failure"), "{msg}");
        assert!(s.uploads_gone(&key).await, "{s:?}");
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

/// The stores whose conditional puts carry the stamp: not
/// `LocalFileSystem` (no metadata, no `Update`, and no answer lost).
fn stamping(s: &Store) -> bool {
    !matches!(s.kind, stores::Kind::Local(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_found_landed_and_f_runs_once() {
    for s in all_stores("lost").into_iter().filter(stamping) {
        let key = s.key("counter");
        let (store, watch) = Watched::wrap(s.store.clone());
        // A Create, then an Update: each lands, its answer lost.
        for expected in 1..=2u64 {
            watch.lose_answers.store(1, Ordering::SeqCst);
            let mut calls = 0;
            object::update(store.clone(), key.clone(), |old| {
                calls += 1;
                increment(old)
            })
            .await
            .unwrap();
            assert_eq!(watch.lose_answers.load(Ordering::SeqCst), 0, "{s:?}");
            assert_eq!(calls, 1, "{s:?}: f ran again after its write landed");
            assert_eq!(s.read(&key).await, Some(expected.to_string().into_bytes()));
        }
        // A no-clobber write: its own success, not AlreadyExists.
        let once = s.key("once");
        watch.lose_answers.store(1, Ordering::SeqCst);
        let mut options = ObjectOptions::new();
        options.overwrite(false);
        options
            .write(store.clone(), once.clone(), b"mine")
            .await
            .unwrap();
        assert_eq!(s.read(&once).await.as_deref(), Some(&b"mine"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_meets_its_own_write_is_no_conflict() {
    for s in all_stores("own-retry").into_iter().filter(stamping) {
        let key = s.key("counter");
        let (store, watch) = Watched::wrap(s.store.clone());
        for expected in 1..=2u64 {
            watch.conflict_after_landing.store(1, Ordering::SeqCst);
            let mut calls = 0;
            let put = object::update(store.clone(), key.clone(), |old| {
                calls += 1;
                increment(old)
            })
            .await
            .unwrap();
            assert_eq!(calls, 1, "{s:?}");
            assert_eq!(s.read(&key).await, Some(expected.to_string().into_bytes()));
            // Ours is the last write: its version is returned.
            assert!(put.e_tag.is_some(), "{s:?}");
        }
        let once = s.key("once");
        watch.conflict_after_landing.store(1, Ordering::SeqCst);
        let mut options = ObjectOptions::new();
        options.overwrite(false);
        options
            .write(store.clone(), once.clone(), b"mine")
            .await
            .unwrap();
        // A real rival still loses.
        let err = options.write(store, once, b"theirs").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_buried_by_33_writes_is_reported_not_guessed() {
    for s in all_stores("buried").into_iter().filter(stamping) {
        let key = s.key("counter");
        let (store, watch) = Watched::wrap(s.store.clone());
        watch.lose_answers.store(1, Ordering::SeqCst);
        watch.rivals_after_lost.store(33, Ordering::SeqCst);
        let mut calls = 0;
        let err = object::update(store.clone(), key.clone(), |old| {
            calls += 1;
            increment(old)
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1, "{s:?}: f ran again");
        assert_eq!(err.op(), Op::Put, "{s:?}");
        let why = err.io_error().to_string();
        assert!(why.contains("cannot be told"), "{s:?}: {why}");
        // Ours landed, then the 33 rivals: 34, not 35.
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"34"[..]), "{s:?}");

        // 31 rivals leave our token in sight: found landed.
        let key = s.key("counter-31");
        watch.lose_answers.store(1, Ordering::SeqCst);
        watch.rivals_after_lost.store(31, Ordering::SeqCst);
        let mut calls = 0;
        object::update(store.clone(), key.clone(), |old| {
            calls += 1;
            increment(old)
        })
        .await
        .unwrap();
        assert_eq!(calls, 1, "{s:?}");
        assert_eq!(s.read(&key).await.as_deref(), Some(&b"32"[..]), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_keeps_the_objects_other_attributes() {
    use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions};
    for s in all_stores("attributes").into_iter().filter(stamping) {
        let key = s.key("page");
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "text/plain".into());
        s.store
            .put_opts(
                &key,
                b"1".to_vec().into(),
                PutOptions {
                    attributes,
                    ..PutOptions::default()
                },
            )
            .await
            .unwrap();
        object::update(s.store.clone(), key.clone(), increment)
            .await
            .unwrap();
        let got = s.store.get(&key).await.unwrap();
        assert_eq!(
            got.attributes
                .get(&Attribute::ContentType)
                .map(|v| v.as_ref()),
            Some("text/plain"),
            "{s:?}"
        );
        assert_eq!(&got.bytes().await.unwrap()[..], b"2");
    }
}
