//! The object-store test harness itself: a real S3 server (`weed mini`,
//! tests/common/s3.rs) and the fault proxy in front of it
//! (tests/common/proxy.rs), driven with plain HTTP requests.

#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/s3.rs"]
mod s3;

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proxy::{Fault, Proxy};
use s3::S3Server;

/// Set in the child half of [`process_exit_stops_weed`]: where it writes
/// its server's pid, port and directory.
const CHILD_ENV: &str = "TAW_S3_HARNESS_CHILD";

/// A body big enough to need several reads and writes on each side.
const BODY_BYTES: usize = 256 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

fn url(endpoint: &str, server: &S3Server, key: &str) -> String {
    format!("{endpoint}/{}/{key}", server.bucket())
}

fn body(seed: u8) -> Vec<u8> {
    (0..BODY_BYTES)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn put(
    client: &reqwest::Client,
    endpoint: &str,
    server: &S3Server,
    key: &str,
    bytes: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    client
        .put(url(endpoint, server, key))
        .body(bytes)
        .send()
        .await
}

/// Whether the process `pid` is gone (or a zombie, which holds nothing).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn port_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[tokio::test]
async fn server_puts_gets_and_lists_uploads() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let http = client();
    let key = "harness/plain object";
    let bytes = body(1);

    assert_eq!(server.raw_get(key), None);
    let resp = put(
        &http,
        &server.endpoint(),
        server,
        "harness/plain%20object",
        bytes.clone(),
    )
    .await
    .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(server.raw_get(key).as_deref(), Some(&bytes[..]));

    // A multipart upload in progress, with a key that needs escaping in
    // the XML listing.
    let upload_key = "harness/upload&<one>";
    let created = http
        .post(format!(
            "{}/{}/harness/upload%26%3Cone%3E?uploads",
            server.endpoint(),
            server.bucket()
        ))
        .send()
        .await
        .expect("create multipart upload");
    assert_eq!(created.status(), 200);
    let created = created.text().await.expect("body");
    let mine: Vec<(String, String)> = server
        .list_uploads()
        .into_iter()
        .filter(|(k, _)| k == upload_key)
        .collect();
    assert_eq!(mine.len(), 1, "uploads of {upload_key:?}: {mine:?}");
    let upload_id = &mine[0].1;
    assert!(
        created.contains(&format!("<UploadId>{upload_id}</UploadId>")),
        "{created}"
    );

    let aborted = http
        .delete(format!(
            "{}/{}/harness/upload%26%3Cone%3E?uploadId={upload_id}",
            server.endpoint(),
            server.bucket()
        ))
        .send()
        .await
        .expect("abort multipart upload");
    assert_eq!(aborted.status(), 204);
    assert!(
        !server.list_uploads().iter().any(|(k, _)| k == upload_key),
        "the aborted upload is still listed"
    );
}

/// What the object-store backend builds on: of racing `If-None-Match: *`
/// puts exactly one wins, and `If-Match` accepts only the current ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_have_one_winner() {
    if !s3::require_weed() {
        return;
    }
    const RACERS: usize = 8;
    let server = s3::shared();
    let key = "harness/race";
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let barrier = Arc::clone(&barrier);
        let target = url(&server.endpoint(), server, key);
        tasks.push(tokio::spawn(async move {
            // A client each: one connection each.
            let http = client();
            barrier.wait().await;
            let resp = http
                .put(target)
                .header("If-None-Match", "*")
                .body(format!("writer {i}"))
                .send()
                .await
                .expect("put");
            (
                i,
                resp.status().as_u16(),
                resp.headers().get("etag").cloned(),
            )
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (i, status, etag) = task.await.expect("task");
        match status {
            200 => winners.push((i, etag.expect("etag of the winner"))),
            412 => {}
            other => panic!("writer {i}: status {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (winner, etag) = winners.pop().expect("one winner");
    assert_eq!(
        server.raw_get(key),
        Some(format!("writer {winner}").into_bytes())
    );

    let http = client();
    let target = url(&server.endpoint(), server, key);
    let stale = http
        .put(&target)
        .header("If-Match", "\"00000000000000000000000000000000\"")
        .body("stale")
        .send()
        .await
        .expect("put");
    assert_eq!(stale.status(), 412);
    let current = http
        .put(&target)
        .header("If-Match", etag)
        .body("next")
        .send()
        .await
        .expect("put");
    assert_eq!(current.status(), 200);
    assert_eq!(server.raw_get(key).as_deref(), Some(&b"next"[..]));
}

#[tokio::test]
async fn kill_and_restart_keep_data_and_ports() {
    if !s3::require_weed() {
        return;
    }
    let mut server = S3Server::start("taw-restart");
    let http = client();
    let port = server.s3_port();
    let bytes = body(2);
    let resp = put(&http, &server.endpoint(), &server, "kept", bytes.clone())
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);

    let pid = server.pid().expect("running");
    server.kill();
    assert_eq!(server.pid(), None);
    assert!(process_gone(pid), "weed {pid} survived kill()");
    assert!(port_closed(port), "port {port} still open after kill()");
    let err = put(&http, &server.endpoint(), &server, "lost", bytes.clone())
        .await
        .expect_err("a put to a killed server");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    server.restart();
    assert_eq!(server.s3_port(), port);
    assert_eq!(server.raw_get("kept"), Some(bytes.clone()));
    assert_eq!(server.raw_get("lost"), None);

    // Twice in a row, with the ports just released.
    server.restart();
    let resp = put(&http, &server.endpoint(), &server, "after", bytes.clone())
        .await
        .expect("put after restart");
    assert_eq!(resp.status(), 200);
    assert_eq!(server.raw_get("after"), Some(bytes));

    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "{} outlived the server", dir.display());
    assert!(port_closed(port));
}

#[tokio::test]
async fn two_servers_run_side_by_side() {
    if !s3::require_weed() {
        return;
    }
    let a = S3Server::start("taw-side-a");
    let b = S3Server::start("taw-side-b");
    assert_ne!(a.s3_port(), b.s3_port());
    assert_ne!(a.dir(), b.dir());
    let http = client();
    let resp = put(&http, &a.endpoint(), &a, "only-in-a", body(3))
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(a.raw_get("only-in-a"), Some(body(3)));
    assert_eq!(b.raw_get("only-in-a"), None);
    // Each serves its own bucket only (anonymous puts create none: 403).
    let resp = put(&http, &b.endpoint(), &a, "wrong-bucket", body(3))
        .await
        .expect("put");
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

#[tokio::test]
async fn proxy_passes_requests_on_one_kept_alive_connection() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    for i in 0..3u8 {
        let key = format!("harness/pass-{i}");
        let resp = put(&http, &proxy.endpoint(), server, &key, body(i))
            .await
            .expect("put through the proxy");
        assert_eq!(resp.status(), 200);
        let got = http
            .get(url(&proxy.endpoint(), server, &key))
            .send()
            .await
            .expect("get through the proxy");
        assert_eq!(got.status(), 200);
        assert_eq!(got.bytes().await.expect("body"), body(i));
    }
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.fired(), 0);
}

#[tokio::test]
async fn cut_request_body_leaves_no_object() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    let key = "harness/cut";

    proxy.set(Fault::CutRequestBody { after: 1000 });
    let err = put(&http, &proxy.endpoint(), server, key, body(4))
        .await
        .expect_err("a put whose body was cut");
    assert!(err.is_request(), "{err:?}");
    assert_eq!(proxy.fired_cuts(), 1);
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(server.raw_get(key), None);
    assert!(!server.list_uploads().iter().any(|(k, _)| k == key));

    // It fired once: the next put goes through.
    let resp = put(&http, &proxy.endpoint(), server, key, body(5))
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(server.raw_get(key), Some(body(5)));
    assert_eq!(proxy.fired(), 1);
}

#[tokio::test]
async fn cut_longer_than_the_request_still_truncates_it() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    let key = "harness/cut-long";
    proxy.set(Fault::CutRequestBody { after: usize::MAX });
    put(&http, &proxy.endpoint(), server, key, b"short".to_vec())
        .await
        .expect_err("a put whose last byte was held back");
    assert_eq!(proxy.fired_cuts(), 1);
    assert_eq!(server.raw_get(key), None);
}

#[tokio::test]
async fn cut_fires_on_a_kept_alive_connection() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    let key = "harness/cut-kept-alive";
    let got = http
        .get(url(&proxy.endpoint(), server, key))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 404);
    got.bytes().await.expect("body");
    assert_eq!(proxy.connections(), 1);

    proxy.set(Fault::CutRequestBody { after: 10 });
    put(&http, &proxy.endpoint(), server, key, body(6))
        .await
        .expect_err("a put whose body was cut");
    assert_eq!(proxy.fired_cuts(), 1);
    // The PUT went out on the connection of the GET.
    assert_eq!(proxy.connections(), 1);
    assert_eq!(server.raw_get(key), None);
}

#[tokio::test]
async fn drop_response_lands_the_write_and_fails_the_client() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    let key = "harness/dropped";

    proxy.set(Fault::DropResponse);
    let err = put(&http, &proxy.endpoint(), server, key, body(7))
        .await
        .expect_err("a put whose response was dropped");
    assert!(err.is_request(), "{err:?}");
    assert_eq!(proxy.fired_drops(), 1);
    assert_eq!(proxy.fault(), Fault::Pass);
    // The client saw its error only after the server had answered.
    assert_eq!(server.raw_get(key), Some(body(7)));

    let resp = put(&http, &proxy.endpoint(), server, key, body(8))
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(server.raw_get(key), Some(body(8)));
}

#[tokio::test]
async fn faults_wait_for_a_put() {
    if !s3::require_weed() {
        return;
    }
    let server = s3::shared();
    let proxy = Proxy::start(server.addr());
    let http = client();
    let key = "harness/waits";
    proxy.set(Fault::DropResponse);
    for _ in 0..2 {
        let got = http
            .get(url(&proxy.endpoint(), server, key))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 404);
    }
    assert_eq!(proxy.fired(), 0);
    assert_eq!(proxy.fault(), Fault::DropResponse);
    put(&http, &proxy.endpoint(), server, key, body(9))
        .await
        .expect_err("the put takes the fault");
    assert_eq!(proxy.fired_drops(), 1);
    assert_eq!(server.raw_get(key), Some(body(9)));
}

/// A server in a `static` is never dropped: it must stop when the test
/// process exits. The test runs itself as a child that starts one and
/// returns, then checks that the server and its directory are gone.
#[test]
fn process_exit_stops_weed() {
    if !s3::require_weed() {
        return;
    }
    if let Some(info) = std::env::var_os(CHILD_ENV) {
        static SERVER: OnceLock<S3Server> = OnceLock::new();
        let server = SERVER.get_or_init(|| S3Server::start("taw-exit"));
        let text = format!(
            "{}\n{}\n{}\n",
            server.pid().expect("running"),
            server.s3_port(),
            server.dir().display()
        );
        std::fs::write(info, text).expect("write child info");
        return;
    }

    let scratch = tempfile::tempdir().expect("scratch");
    let info = scratch.path().join("info");
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "process_exit_stops_weed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &info)
        .output()
        .expect("run the child");
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&info).expect("child info");
    let mut lines = text.lines();
    let pid: u32 = lines.next().and_then(|l| l.parse().ok()).expect("pid");
    let port: u16 = lines.next().and_then(|l| l.parse().ok()).expect("port");
    let dir = PathBuf::from(lines.next().expect("dir"));

    // The watchdog acts once the child's pipe closes: give it a moment.
    let mut stopped = false;
    for _ in 0..100 {
        if process_gone(pid) && port_closed(port) && !dir.exists() {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stopped,
        "after the child exited: weed {pid} gone: {}, port {port} closed: {}, {} removed: {}",
        process_gone(pid),
        port_closed(port),
        dir.display(),
        !dir.exists()
    );
}
