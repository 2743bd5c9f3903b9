//! Faults against the real S3 server: killed in the middle of a multipart
//! upload and of a small put, connections cut in the middle of a request
//! body, answers lost after a conditional put landed.

#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/stores.rs"]
mod stores;

use std::time::Duration;

use object_store::ObjectStore;
use proxy::{Fault, Proxy};
use std::sync::Arc;
use stores::s3::{require_weed, S3Server};
use stores::{parted, pattern, MIB, PART};
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::object::{self, ObjectOptions};
use tokio_atomic_write::Op;

/// A liveness bound: a call against a dead server must end, not hang.
const BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_fails_the_commit_and_publishes_nothing() {
    if !require_weed() {
        return;
    }
    let mut server = S3Server::start("killed");
    let store = stores::s3_client(&server.endpoint(), server.bucket());
    let key = object_store::path::Path::from("blob");
    let old = pattern(1000, 1);
    object::write(store.clone(), key.clone(), &old)
        .await
        .unwrap();

    let mut object = parted().open(store.clone(), key.clone()).await.unwrap();
    object.write_all(&pattern(2 * PART + 1, 2)).await.unwrap();
    object.flush().await.unwrap();
    assert_eq!(server.list_uploads().len(), 1, "no upload in progress");
    server.kill();
    let err = tokio::time::timeout(BOUND, async {
        // A write may see the failure first; commit returns it whole.
        let _ = object.write_all(&pattern(2 * PART, 3)).await;
        object.commit().await
    })
    .await
    .expect("the commit hung on a dead server")
    .unwrap_err();
    assert!(
        matches!(err.op(), Op::UploadPart | Op::Complete),
        "{:?}: {err}",
        err.op()
    );
    assert_eq!(err.path().to_str(), Some("blob"));
    server.restart();
    assert_eq!(
        server.raw_get("blob"),
        Some(old),
        "a dead server's upload published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_small_puts_leaves_old_or_new_whole() {
    if !require_weed() {
        return;
    }
    let mut server = S3Server::start("killedput");
    let store = stores::s3_client(&server.endpoint(), server.bucket());
    let old = pattern(300_000, 4);
    let new = pattern(300_000, 5);
    for i in 0..8 {
        object::write(store.clone(), format!("k{i}"), &old)
            .await
            .unwrap();
    }
    // Puts in flight, and the server killed under them.
    let mut puts = Vec::new();
    for i in 0..8 {
        let (store, new) = (store.clone(), new.clone());
        puts.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * i)).await;
            tokio::time::timeout(BOUND, object::write(store, format!("k{i}"), new)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(15)).await;
    server.kill();
    let mut failed = 0;
    for put in puts {
        match put.await.unwrap().expect("a put hung on a dead server") {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.op(), Op::Put, "{e}");
                failed += 1;
            }
        }
    }
    server.restart();
    for i in 0..8 {
        let got = server.raw_get(&format!("k{i}")).expect("object gone");
        assert!(got == old || got == new, "k{i}: neither old nor new, whole");
    }
    eprintln!("{failed} of 8 puts failed on the killed server");
    assert!(
        failed > 0,
        "the server died after every put: nothing tested"
    );
}

async fn through(proxy: &Proxy, bucket: &str) -> Arc<dyn ObjectStore> {
    stores::s3_client(&proxy.endpoint(), bucket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_body_leaves_no_partial_object() {
    if !require_weed() {
        return;
    }
    let server = stores::s3::shared();
    let proxy = Proxy::start(([127, 0, 0, 1], server.s3_port()).into());
    let store = through(&proxy, server.bucket()).await;
    let old = pattern(1000, 6);

    // One PUT, cut after its headers and part of its body.
    let key = format!("cut-put-{}", std::process::id());
    object::write(store.clone(), key.as_str(), &old)
        .await
        .unwrap();
    let new = pattern(MIB, 7);
    proxy.set(Fault::CutRequestBody { after: 64 * 1024 });
    let result = tokio::time::timeout(BOUND, object::write(store.clone(), key.as_str(), &new))
        .await
        .expect("hung");
    assert_eq!(proxy.fired(), 1);
    let got = server.raw_get(&key).unwrap();
    match result {
        Ok(_) => assert!(got == new, "a retried put left something else"),
        Err(e) => {
            assert_eq!(e.op(), Op::Put, "{e}");
            assert!(got == old, "a cut put changed the object");
        }
    }

    // A part of a multipart upload, cut.
    let key = format!("cut-part-{}", std::process::id());
    object::write(store.clone(), key.as_str(), &old)
        .await
        .unwrap();
    let new = pattern(3 * PART, 8);
    let mut object = parted().open(store.clone(), key.as_str()).await.unwrap();
    object.write_all(&new[..PART]).await.unwrap();
    proxy.set(Fault::CutRequestBody { after: MIB });
    let result = tokio::time::timeout(BOUND, async {
        object.write_all(&new[PART..]).await?;
        object.commit().await.map_err(std::io::Error::from)
    })
    .await
    .expect("hung");
    assert_eq!(proxy.fired(), 2);
    let got = server.raw_get(&key).unwrap();
    match result {
        Ok(_) => assert!(got == new, "a retried part left something else"),
        Err(_) => assert!(got == old, "a cut upload changed the object"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_not_a_conflict_and_f_runs_once() {
    if !require_weed() {
        return;
    }
    let server = stores::s3::shared();
    let proxy = Proxy::start(([127, 0, 0, 1], server.s3_port()).into());
    let store = through(&proxy, server.bucket()).await;
    let key = format!("lost-answer-{}", std::process::id());

    // update: a Create, then an Update, each landing with its answer lost.
    for expected in 1..=2u64 {
        let mut calls = 0;
        proxy.set(Fault::DropResponse);
        let fired = proxy.fired();
        object::update(store.clone(), key.as_str(), |old| {
            calls += 1;
            let n: u64 = old.map_or(0, |b| String::from_utf8(b).unwrap().parse().unwrap());
            Ok::<_, tokio_atomic_write::Error>((n + 1).to_string().into_bytes())
        })
        .await
        .unwrap();
        assert_eq!(proxy.fired(), fired + 1, "the answer was not dropped");
        assert_eq!(calls, 1, "f ran again after its own write landed");
        assert_eq!(
            server.raw_get(&key),
            Some(expected.to_string().into_bytes()),
            "counter"
        );
    }

    // A no-clobber write whose answer is lost: its own success, not
    // AlreadyExists.
    let key = format!("lost-create-{}", std::process::id());
    proxy.set(Fault::DropResponse);
    let mut options = ObjectOptions::new();
    options.overwrite(false);
    options
        .write(store.clone(), key.as_str(), b"mine")
        .await
        .unwrap();
    assert_eq!(server.raw_get(&key), Some(b"mine".to_vec()));
    // And a real loser still loses.
    let err = options
        .write(store.clone(), key.as_str(), b"theirs")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
}
