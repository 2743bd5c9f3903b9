//! A web server whose state lives in one JSON file, kept by a
//! [`StateFile`]: `GET /state` answers it, `PUT /state` replaces its data
//! and answers the new state once it is durable.
//!
//! ```text
//! cargo run --example web_state -- state.json 127.0.0.1:3000
//! curl -X PUT localhost:3000/state -H 'content-type: application/json' -d '{"greeting":"hi"}'
//! curl localhost:3000/state
//! ```
//!
//! What the crate gives it: a crash or `kill -9` at any moment leaves the
//! file holding the last state whose PUT was answered (or a newer one
//! that was being written), whole, never empty or torn; a restart reads it
//! back, and sweeps what a commit cut short left. Concurrent PUTs share
//! commits (group commit): each is answered once a commit that carries it
//! is durable, and a busy server pays one pair of `fsync`s for many PUTs.
//! A second server started on the same file fails at once: it is locked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_atomic_write::StateFile;

/// The state: the data of the last PUT, and how many PUTs made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    version: u64,
    data: serde_json::Value,
}

/// The server's shared state: a handle on the state file.
type App = StateFile<State>;

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

/// Opens the state (none yet: the default; leftovers swept), listens on
/// `addr` (port 0: any free one) and serves until killed. Prints
/// `listening on ADDR` once it accepts connections.
pub(crate) async fn serve(path: &Path, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, path).await
}

/// [`serve`] on a listener already bound.
pub(crate) async fn serve_on(
    listener: tokio::net::TcpListener,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    // A file that does not parse stops the server rather than being
    // overwritten; so does another server holding the file.
    let state = StateFile::open(path, State::default).await?;
    let local: SocketAddr = listener.local_addr()?;
    let version = state.read(|s| s.version);
    println!("listening on {local} (state version {version})");
    let router = Router::new()
        .route("/state", get(read_state).put(write_state))
        .with_state(state);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn read_state(Shared(app): Shared<App>) -> Json<State> {
    Json(app.read(State::clone))
}

/// Applies the PUT, and answers once it is durable.
async fn write_state(
    Shared(app): Shared<App>,
    Json(data): Json<serde_json::Value>,
) -> Result<Json<State>, (StatusCode, String)> {
    let next = app
        .update(|state| {
            state.version += 1;
            state.data = data;
            state.clone()
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(next))
}
