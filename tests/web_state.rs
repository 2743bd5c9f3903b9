//! Issue #6, examples/web_state.rs: the axum server is started on
//! 127.0.0.1 port 0, driven with concurrent PUTs by a real HTTP client,
//! SIGKILLed mid-load and restarted; its state file must parse and hold a
//! state whose PUT was answered (or, newer than every answer, one that was
//! in flight when the kill came), and the restarted server must serve it.
//! The example's code is compiled into this test binary and run as a
//! child process.
//!
//! Issue #21 moved the example to `StateFile`; the server it had before
//! (a mutex and `write_json` per PUT) is kept below, to count requests per
//! second before and after (printed, not asserted).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../examples/web_state.rs"]
mod web_state;

const CHILD: &str = "child_server";
const CLIENTS: u64 = 8;
const ROUNDS: usize = 3;
/// Answered PUTs to wait for before the kill, in each round.
const ANSWERS_BEFORE_KILL: usize = 60;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    version: u64,
    data: Value,
}

/// The child half: the example's server for `TAW_TARGET` on port 0.
#[test]
fn child_server() {
    if !is_child() {
        return;
    }
    let path = std::env::var_os("TAW_TARGET").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(web_state::serve(Path::new(&path), "127.0.0.1:0")) {
        eprintln!("web_state: {e}");
        std::process::exit(1);
    }
}

/// A running server, killed (SIGKILL) and reaped when dropped, so that a
/// failed assertion never leaves it behind.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts the server for `state`; returns once it listens.
    fn start(state: &Path) -> Server {
        let child = child_command(CHILD, &[])
            .env("TAW_TARGET", state)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            url: String::new(),
        };
        let mut out = BufReader::new(server.child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the server exited");
            if let Some((_, rest)) = line.split_once("listening on ") {
                let addr = rest.split_whitespace().next().unwrap();
                server.url = format!("http://{addr}/state");
                // Keep draining its output so that it never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return server;
            }
        }
    }

    /// Whether it has exited by itself.
    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Log {
    /// Every answered PUT: the state the server answered.
    answered: Vec<State>,
    /// Every PUT sent, by its data: answered or not.
    sent: Vec<Value>,
}

#[test]
fn killed_mid_load_and_restarted_the_server_keeps_an_answered_state() {
    if is_child() {
        return;
    }
    let dir = scratch();
    let state_path = dir.path().join("state.json");
    let rt = runtime();
    let mut versions_seen = 0;
    for round in 0..ROUNDS {
        let mut server = Server::start(&state_path);
        // A client per server: no connection outlives the process it went to.
        let (client, url) = (reqwest::Client::new(), server.url.clone());
        let log = Arc::new(Mutex::new(Log::default()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (client, url, log) = (client.clone(), url.clone(), log.clone());
                rt.spawn(async move {
                    for seq in 0u64.. {
                        let data = json!({ "round": round, "client": c, "seq": seq });
                        log.lock().unwrap().sent.push(data.clone());
                        let answer = match client.put(&url).json(&data).send().await {
                            Ok(r) => r,
                            Err(_) => return, // the server is gone
                        };
                        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
                        let Ok(state) = answer.json::<State>().await else {
                            return; // killed while answering
                        };
                        assert_eq!(state.data, data);
                        log.lock().unwrap().answered.push(state);
                    }
                })
            })
            .collect();
        while log.lock().unwrap().answered.len() < ANSWERS_BEFORE_KILL {
            // A client that stopped (a failed assertion) or a server that
            // died would leave this loop waiting forever.
            if clients.iter().any(|c| c.is_finished()) || server.exited() {
                panic!("round {round}: a client or the server stopped before the kill");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(server); // SIGKILL, with PUTs in flight
        rt.block_on(async {
            for c in clients {
                c.await.unwrap();
            }
        });

        let log = log.lock().unwrap();
        let text = std::fs::read_to_string(&state_path).unwrap();
        let on_disk: State = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("round {round}: the state file does not parse: {e}: {text:?}")
        });
        let newest = log.answered.iter().map(|s| s.version).max().unwrap();
        assert!(
            on_disk.version >= newest,
            "round {round}: an answered PUT was lost: file {on_disk:?}, answered up to {newest}"
        );
        if on_disk.version == newest {
            let answered: HashMap<u64, &State> =
                log.answered.iter().map(|s| (s.version, s)).collect();
            assert_eq!(&on_disk, answered[&newest], "round {round}");
        } else {
            // Persisted, then killed before the answer went out.
            assert!(
                log.sent.contains(&on_disk.data),
                "round {round}: {on_disk:?}"
            );
        }
        assert!(
            on_disk.version > versions_seen,
            "round {round}: no progress"
        );
        eprintln!(
            "round {round}: {} PUTs answered, {} sent, file at version {} (newest answered {newest})",
            log.answered.len(),
            log.sent.len(),
            on_disk.version
        );

        // A leftover of the crate's temp-name shape, as a kill between the
        // link and the rename of a commit leaves one (with O_TMPFILE temp
        // files, as here, the kill above cannot): the restart must sweep it.
        std::fs::write(dir.path().join(".state.json.AbCdEf012345.tmp"), b"{").unwrap();

        // Restarted, it serves what the file holds, and goes on from it.
        let server = Server::start(&state_path);
        let (client, url) = (reqwest::Client::new(), server.url.clone());
        rt.block_on(async {
            let served: State = client.get(&url).send().await.unwrap().json().await.unwrap();
            assert_eq!(served, on_disk, "round {round}");
            let next: State = client
                .put(&url)
                .json(&json!("after restart"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(next.version, on_disk.version + 1);
        });
        drop(server);
        let after: State = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
        assert_eq!(after.data, json!("after restart"));
        versions_seen = after.version;
        // The restart swept the planted leftover and whatever the kill left.
        // (The lock file stays: it is the state's, and empty.)
        assert_eq!(
            listing(dir.path()),
            [".state.json.lock", "state.json"],
            "round {round}"
        );
    }
}

/// The example as it was before #21: a mutex around the state, held
/// across a `write_json` per PUT, answered after the write.
mod before {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use axum::extract::State as Shared;
    use axum::http::StatusCode;
    use axum::routing::put;
    use axum::{Json, Router};
    use tokio::sync::Mutex;

    use super::State;

    #[derive(Clone)]
    struct App {
        path: Arc<PathBuf>,
        state: Arc<Mutex<State>>,
    }

    pub async fn serve_on(listener: tokio::net::TcpListener, path: &Path) {
        let app = App {
            path: Arc::new(path.to_path_buf()),
            state: Arc::new(Mutex::new(State {
                version: 0,
                data: serde_json::Value::Null,
            })),
        };
        let router = Router::new()
            .route("/state", put(write_state))
            .with_state(app);
        axum::serve(listener, router).await.unwrap();
    }

    async fn write_state(
        Shared(app): Shared<App>,
        Json(data): Json<serde_json::Value>,
    ) -> Result<Json<State>, (StatusCode, String)> {
        let mut state = app.state.lock().await;
        let next = State {
            version: state.version + 1,
            data,
        };
        tokio_atomic_write::write_json(&*app.path, &next)
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        *state = next.clone();
        Ok(Json(next))
    }
}

/// PUTs answered per second by the server before #21 and by the example
/// now, 8 clients each sending `TAW_WEB_PUTS` (100) PUTs one after the
/// other, on the scratch directory's filesystem: printed, not asserted
/// (timings belong in benches). What is asserted: every PUT is answered,
/// and the last version counts them all.
#[test]
fn requests_per_second_before_and_after_state_file() {
    if is_child() {
        return;
    }
    let puts: u64 = std::env::var("TAW_WEB_PUTS").map_or(100, |v| v.parse().unwrap());
    let rt = runtime();
    let mut rates = Vec::new();
    for name in ["before: a mutex and write_json per PUT", "after: StateFile"] {
        let dir = scratch();
        let path = dir.path().join("state.json");
        let (server, url) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/state", listener.local_addr().unwrap());
            let server = match name.starts_with("before") {
                true => tokio::spawn(async move { before::serve_on(listener, &path).await }),
                false => {
                    tokio::spawn(async move { web_state::serve_on(listener, &path).await.unwrap() })
                }
            };
            (server, url)
        });
        let start = std::time::Instant::now();
        let versions = rt.block_on(async {
            let client = reqwest::Client::new();
            let clients: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move {
                        let mut last = 0;
                        for seq in 0..puts {
                            let answer = client
                                .put(&url)
                                .json(&json!({ "client": c, "seq": seq }))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(answer.status(), 200);
                            let state: State = answer.json().await.unwrap();
                            last = last.max(state.version);
                        }
                        last
                    })
                })
                .collect();
            let mut most = 0;
            for c in clients {
                most = most.max(c.await.unwrap());
            }
            most
        });
        let took = start.elapsed();
        server.abort();
        assert_eq!(versions, CLIENTS * puts, "{name}: every PUT counted");
        let rate = (CLIENTS * puts) as f64 / took.as_secs_f64();
        eprintln!(
            "{name}: {} PUTs from {CLIENTS} clients in {:.2} s: {rate:.0} requests/s",
            CLIENTS * puts,
            took.as_secs_f64()
        );
        rates.push(rate);
    }
    eprintln!(
        "StateFile answers {:.1}x the requests per second",
        rates[1] / rates[0]
    );
}
