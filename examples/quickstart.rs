//! Persist a small state file the way an async server would: read it,
//! update it, replace it atomically and durably.
//!
//! ```text
//! cargo run --example quickstart [STATE_FILE]
//! ```
//!
//! Without an argument the state lives in the system temp directory. Run it
//! twice and the visit count goes up.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio_atomic_write::AsyncAtomicFile;

/// Reads `{"visits":N}` back; anything else counts as a fresh start.
fn parse_visits(text: &str) -> u64 {
    text.trim()
        .strip_prefix("{\"visits\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = std::env::temp_dir().join("tokio-atomic-write-quickstart");
            tokio::fs::create_dir_all(&dir).await?;
            dir.join("state.json")
        }
    };

    let before = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let visits = parse_visits(&before) + 1;
    let state = format!("{{\"visits\":{visits}}}\n");

    // Stream the new state into a temp file beside the target...
    let mut file = AsyncAtomicFile::create(&path).await?;
    file.write_all(state.as_bytes()).await?;
    // ...and publish it: fsync, rename over the target, fsync the directory.
    file.commit().await?;

    let after = tokio::fs::read_to_string(&path).await?;
    assert_eq!(after, state, "the target holds exactly what was committed");
    println!("committed {} bytes to {}", after.len(), path.display());
    println!("visits: {} -> {visits}", visits - 1);

    // The one-call form, like tokio::fs::write but atomic and durable.
    tokio_atomic_write::write(&path, format!("{{\"visits\":{}}}\n", visits)).await?;

    let leftovers = std::fs::read_dir(path.parent().unwrap_or(".".as_ref()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    println!("temp files left beside it: {leftovers}");
    Ok(())
}
