//! A web server whose state lives in one JSON file, persisted with
//! `write_json` on every update: `GET /state` answers it, `PUT /state`
//! replaces its data and answers the new state once it is durable.
//!
//! ```text
//! cargo run --example web_state -- state.json 127.0.0.1:3000
//! curl -X PUT localhost:3000/state -H 'content-type: application/json' -d '{"greeting":"hi"}'
//! curl localhost:3000/state
//! ```
//!
//! What the crate gives it: a crash or `kill -9` at any moment leaves the
//! file holding the last state whose PUT was answered (or one that was
//! being written), whole, never empty or torn; a restart reads it back.
//! Leftovers of a commit cut short are swept at startup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The state: the data of the last PUT, and how many PUTs made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    version: u64,
    data: serde_json::Value,
}

#[derive(Clone)]
struct App {
    path: Arc<PathBuf>,
    /// Held across the write: the file sees the versions in order, and
    /// memory changes only once the file has.
    state: Arc<Mutex<State>>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, addr) = match &args[..] {
        [path] => (PathBuf::from(path), "127.0.0.1:3000".to_string()),
        [path, addr] => (PathBuf::from(path), addr.clone()),
        _ => {
            eprintln!("usage: web_state STATE_FILE [ADDR]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    match runtime.block_on(serve(&path, &addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("web_state: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the state (none yet: the default), sweeps leftovers, listens on
/// `addr` (port 0: any free one) and serves until killed. Prints
/// `listening on ADDR` once it accepts connections.
pub(crate) async fn serve(path: &Path, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let state = load(path).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    println!("listening on {local} (state version {})", state.version);
    let app = App {
        path: Arc::new(path.to_path_buf()),
        state: Arc::new(Mutex::new(state)),
    };
    let router = Router::new()
        .route("/state", get(read_state).put(write_state))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

/// The state in the file; the default when there is no file yet. A file
/// that does not parse stops the server rather than being overwritten.
async fn load(path: &Path) -> Result<State, tokio_atomic_write::Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A process killed inside a commit can leave a temp file; none of ours
    // is live yet, and other writers' are locked, so any age will do.
    tokio_atomic_write::sweep(dir, Duration::ZERO).await?;
    match tokio_atomic_write::read_json(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        other => other,
    }
}

async fn read_state(Shared(app): Shared<App>) -> Json<State> {
    Json(app.state.lock().await.clone())
}

/// Persists the new state, durably, before it answers it.
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
