//! Persist a small state file the way an async server would: clear the
//! leftovers of a crashed run, read the state, update it, replace it
//! atomically and durably.
//!
//! ```text
//! cargo run --example quickstart [STATE_FILE]
//! ```
//!
//! Without an argument the state lives in a directory of the system temp
//! directory that is this user's own (`tokio-atomic-write-quickstart-UID`,
//! mode 0700): run it twice and the visit count goes up; another user
//! running it gets a count of their own.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// This user's directory in the shared temp directory, made private, or an
/// error if someone else made it first (their directory, their rules).
#[cfg(unix)]
fn own_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = rustix::process::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("tokio-atomic-write-quickstart-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        let msg = format!("{} is not this user's private directory", dir.display());
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            msg,
        ));
    }
    Ok(dir)
}

#[cfg(not(unix))]
fn own_dir() -> std::io::Result<PathBuf> {
    // The temp directory is per user on Windows.
    let dir = std::env::temp_dir().join("tokio-atomic-write-quickstart");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::main]
async fn main() -> Result<(), tokio_atomic_write::Error> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => own_dir()?.join("state.json"),
    };
    println!(
        "state file: {} (pass a path to choose another)",
        path.display()
    );

    // At startup, before any write of ours: a process killed inside a
    // commit can leave its temp file beside the target (on ext4 without a
    // journal, between the link and the rename that the fsync separates).
    // `sweep` removes them; a live writer's temp files are locked and
    // kept, so any age will do.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let swept = tokio_atomic_write::sweep(dir, Duration::ZERO).await?;
    println!("leftovers of earlier runs removed: {}", swept.removed.len());

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

    let leftovers = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    println!("temp files left beside it: {leftovers}");
    Ok(())
}
