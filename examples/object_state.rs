//! The `web_state` example scaled out: several server instances share one
//! state object in an S3 bucket through `object::update`. `POST /visit`
//! with a JSON body adds a visit (its body kept under a new id) and
//! answers the new state once the store has it; `GET /state` reads it.
//!
//! ```text
//! weed mini -dir=/tmp/s3 -bucket=state      # any S3: SeaweedFS, MinIO, AWS
//! cargo run --example object_state -- http://127.0.0.1:8333 state 127.0.0.1:3001 &
//! cargo run --example object_state -- http://127.0.0.1:8333 state 127.0.0.1:3002 &
//! curl -X POST localhost:3001/visit -H 'content-type: application/json' -d '"hi"'
//! curl localhost:3002/state
//! ```
//!
//! What the crate gives it: no instance loses another's update (a lost
//! race runs the update again on the fresh state), a `kill -9` of one
//! instance loses no answered visit, and nothing is ever half written.
//! No lock, no coordinator: the store's conditional puts do it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio_atomic_write::object;

/// The shared state: every visit's id and body, in the order they landed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// `(id, body)` of every visit.
    pub visits: Vec<(String, serde_json::Value)>,
}

const LOCATION: &str = "object_state/state.json";

#[derive(Clone)]
struct App {
    store: Arc<dyn ObjectStore>,
    /// This instance's name, in the ids it gives visits.
    name: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, bucket, addr) = match &args[..] {
        [e, b] => (e.clone(), b.clone(), "127.0.0.1:3000".to_string()),
        [e, b, a] => (e.clone(), b.clone(), a.clone()),
        _ => {
            eprintln!("usage: object_state S3_ENDPOINT BUCKET [ADDR]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    match runtime.block_on(serve(&endpoint, &bucket, &addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("object_state: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The S3 client: any credentials do for a local server (with AWS, build
/// it with `AmazonS3Builder::from_env` instead).
pub fn store(endpoint: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("any")
            .with_secret_access_key("any")
            .with_allow_http(endpoint.starts_with("http://"))
            .build()?,
    ))
}

/// Listens on `addr` (port 0: any free one) and serves until killed.
/// Prints `listening on ADDR` once it accepts connections.
pub async fn serve(
    endpoint: &str,
    bucket: &str,
    addr: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    let app = App {
        store: store(endpoint, bucket)?,
        name: format!("{local}-{}", std::process::id()).into(),
        next: Default::default(),
    };
    println!("listening on {local}");
    let router = Router::new()
        .route("/state", get(read_state))
        .route("/visit", post(visit))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn read_state(Shared(app): Shared<App>) -> Result<Json<State>, Failed> {
    match object::read_json(app.store.clone(), LOCATION).await {
        Ok(state) => Ok(Json(state)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Json(State::default())),
        Err(e) => Err(e.into()),
    }
}

/// Adds the visit, then answers its id and the number of visits the
/// store holds with it.
async fn visit(
    Shared(app): Shared<App>,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<(String, usize)>, Failed> {
    let n = app.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{}/{n}", app.name);
    let mut options = object::ObjectOptions::new();
    // Many instances on one object: give a busy moment time to pass.
    options.max_tries(1000);
    let mut count = 0;
    options
        .update(app.store.clone(), LOCATION, |old| {
            let mut state: State = match old {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Failed(e.to_string()))?,
                None => State::default(),
            };
            state.visits.push((id.clone(), body.clone()));
            count = state.visits.len();
            serde_json::to_vec(&state).map_err(|e| Failed(e.to_string()))
        })
        .await?;
    Ok(Json((id, count)))
}

/// A failed update, answered as a 500 with its message.
struct Failed(String);

impl From<tokio_atomic_write::Error> for Failed {
    fn from(e: tokio_atomic_write::Error) -> Self {
        Failed(e.to_string())
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}
