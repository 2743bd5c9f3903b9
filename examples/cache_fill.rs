//! An async cache filler: many tasks ask for the same keys, and each key is
//! filled once, as a directory holding the data and its metadata.
//!
//! ```text
//! cargo run --example cache_fill [CACHE_DIR]
//! ```
//!
//! Two `Cache` values share one directory, standing in for two processes
//! of a service. Inside one, tasks asking for the same key wait for a single
//! fill. Between them nothing is shared but the disk: both may fill a key
//! at once, and [`Exists::Keep`] publishes exactly one tree, the first;
//! the other filler gets [`Published::Existing`] and uses that tree. No
//! reader ever sees an entry half written, and no `rmtree` races anyone.
//!
//! Without an argument the cache lives in a fresh directory in the system
//! temp directory, removed at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio_atomic_write::{AsyncAtomicDir, Exists, Published};

/// A cache of directories, one per key, under `root`.
struct Cache {
    root: PathBuf,
    /// One fill per key inside this process; other processes are kept out
    /// by `Exists::Keep`.
    fills: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    /// Requests answered from a tree already on disk.
    hits: AtomicUsize,
    /// Fills whose tree was published.
    ours: AtomicUsize,
    /// Fills that lost to another filler: their tree was removed.
    existing: AtomicUsize,
}

impl Cache {
    fn new(root: &Path, stats: Arc<Stats>) -> Cache {
        Cache {
            root: root.to_path_buf(),
            fills: Mutex::default(),
            stats,
        }
    }

    /// The directory of `key`, filled on the first request.
    async fn get(&self, key: &str) -> Result<PathBuf, tokio_atomic_write::Error> {
        let path = self.root.join(key);
        // A published entry is complete: its existence is the whole check.
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(path);
        }
        let cell = {
            let mut fills = self.fills.lock().unwrap();
            Arc::clone(fills.entry(key.to_string()).or_default())
        };
        cell.get_or_try_init(|| self.fill(key)).await.cloned()
    }

    async fn fill(&self, key: &str) -> Result<PathBuf, tokio_atomic_write::Error> {
        let target = self.root.join(key);
        let dir = AsyncAtomicDir::create(&target).await?;
        let data = compute(key).await;
        tokio::fs::write(dir.path().join("data.bin"), &data)
            .await
            .expect("write data.bin");
        let mut meta = dir.file("meta.json").await?;
        let json = format!("{{\"key\":\"{key}\",\"len\":{}}}\n", data.len());
        meta.write_all(json.as_bytes()).await.expect("write meta");
        meta.finish().await?;
        match dir.commit(Exists::Keep).await? {
            Published::Ours => self.stats.ours.fetch_add(1, Ordering::Relaxed),
            Published::Existing => self.stats.existing.fetch_add(1, Ordering::Relaxed),
        };
        Ok(target)
    }
}

/// The expensive part: whatever the cache saves, here a slow,
/// deterministic payload.
async fn compute(key: &str) -> Vec<u8> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    key.bytes().cycle().take(64 * 1024).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (root, temporary) = match std::env::args_os().nth(1) {
        Some(p) => (PathBuf::from(p), false),
        None => (fresh_temp_dir()?, true),
    };
    tokio::fs::create_dir_all(&root).await?;
    let keys: Vec<String> = (0..8).map(|i| format!("{:04x}", i * 0x1111)).collect();
    let stats = Arc::new(Stats::default());
    // Two "processes", each with 32 tasks asking for keys in turn.
    let caches = [
        Arc::new(Cache::new(&root, stats.clone())),
        Arc::new(Cache::new(&root, stats.clone())),
    ];
    let mut tasks = Vec::new();
    for (c, cache) in caches.iter().enumerate() {
        for t in 0..32 {
            let (cache, key) = (cache.clone(), keys[(t + c) % keys.len()].clone());
            tasks.push(tokio::spawn(async move { cache.get(&key).await }));
        }
    }
    for task in tasks {
        let entry = task.await??;
        let meta = tokio::fs::read_to_string(entry.join("meta.json")).await?;
        let data = tokio::fs::read(entry.join("data.bin")).await?;
        assert!(meta.contains(&format!("\"len\":{}", data.len())), "{meta}");
    }
    let (hits, ours, existing) = (
        stats.hits.load(Ordering::Relaxed),
        stats.ours.load(Ordering::Relaxed),
        stats.existing.load(Ordering::Relaxed),
    );
    println!(
        "64 requests for {} keys: {ours} trees published, {existing} fills lost to \
         another filler (their trees removed), {hits} hits",
        keys.len()
    );
    // Each key was published at most once: exactly once into a fresh
    // directory; and no temp tree is left.
    assert!(ours <= keys.len());
    if temporary {
        assert_eq!(ours, keys.len());
    }
    let mut entries = Vec::new();
    let mut listing = tokio::fs::read_dir(&root).await?;
    while let Some(e) = listing.next_entry().await? {
        entries.push(e.file_name().into_string().unwrap());
    }
    entries.sort();
    assert!(
        keys.iter().all(|k| entries.contains(k)) && !entries.iter().any(|e| e.ends_with(".tmp")),
        "{entries:?}"
    );
    if temporary {
        tokio::fs::remove_dir_all(&root).await?;
    }
    Ok(())
}

/// A fresh directory in the system temp directory.
fn fresh_temp_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cache-fill-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
