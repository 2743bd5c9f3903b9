//! Issue #6, "tracing" (feature `tracing`, on for the crate's own tests):
//! one span per open and per commit, with the path, the bytes, the
//! durability, and the time spent in fsync and rename.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{AsyncAtomicFile, Durability, OpenOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A span seen: its name, target and fields as text.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    target: String,
    fields: HashMap<String, String>,
}

impl Seen {
    /// A span or event with this metadata, its fields as `record` gives
    /// them.
    fn of(meta: &tracing::Metadata<'static>, record: impl FnOnce(&mut dyn Visit)) -> Seen {
        let mut fields = HashMap::new();
        record(&mut Fields(&mut fields));
        Seen {
            name: meta.name(),
            target: meta.target().into(),
            fields,
        }
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
}

/// Every span of the process, by id. Global: the spans are entered and
/// recorded on blocking-pool threads.
static SPANS: Mutex<Vec<(u64, Seen)>> = Mutex::new(Vec::new());

/// Every event of the process: its level and fields (`name` is unused).
static EVENTS: Mutex<Vec<(tracing::Level, Seen)>> = Mutex::new(Vec::new());

struct Recorder;

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let seen = Seen::of(attrs.metadata(), |v| attrs.record(v));
        SPANS.lock().unwrap().push((id.into_u64(), seen));
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let seen = Seen::of(event.metadata(), |v| event.record(v));
        EVENTS
            .lock()
            .unwrap()
            .push((*event.metadata().level(), seen));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = SPANS.lock().unwrap();
        // Ids are reused once a span closes: the latest is this one.
        if let Some((_, seen)) = spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The spans named `name` whose `path` is `path`.
fn spans(name: &str, path: &Path) -> Vec<Seen> {
    let path = path.display().to_string();
    SPANS
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .filter(|s| s.name == name && s.fields.get("path") == Some(&path))
        .collect()
}

fn on_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == TMPFS_MAGIC)
}

fn micros(span: &Seen, field: &str) -> u64 {
    span.fields
        .get(field)
        .unwrap_or_else(|| panic!("no {field} in {span:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn open_and_commit_each_have_a_span_with_their_figures() {
    install();
    let dir = scratch();
    let path = dir.path().join("traced.bin");
    let mut file = AsyncAtomicFile::create(&path).await.unwrap();
    file.write_all(&[7u8; 3000]).await.unwrap();
    file.write_all(b"tail").await.unwrap();
    file.commit().await.unwrap();

    let opens = spans("open", &path);
    assert_eq!(opens.len(), 1, "{opens:?}");
    assert_eq!(opens[0].target, "tokio_atomic_write");
    assert_eq!(opens[0].fields["durability"], "Full");
    let commits = spans("commit", &path);
    assert_eq!(commits.len(), 1, "{commits:?}");
    let commit = &commits[0];
    assert_eq!(commit.target, "tokio_atomic_write");
    assert_eq!(commit.fields["bytes"], "3004");
    assert_eq!(commit.fields["durability"], "Full");
    // Recorded from the pool thread, once the commit is done. An fsync of
    // dirty data on a disk takes far more than a microsecond (tmpfs has no
    // disk: there it may round to 0).
    let fsync = micros(commit, "fsync_us");
    assert!(fsync > 0 || on_tmpfs(dir.path()), "{commit:?}");
    micros(commit, "rename_us");
    assert!(!commit.fields.contains_key("error"), "{commit:?}");
}

/// Without durability no time goes to fsync; `write` and `update` commit
/// in a span too, and a failed commit records its error.
#[tokio::test]
async fn one_shot_writes_and_failures_are_traced() {
    install();
    let dir = scratch();
    let path = dir.path().join("quick");
    OpenOptions::new()
        .durability(Durability::None)
        .write(&path, b"12345")
        .await
        .unwrap();
    let commits = spans("commit", &path);
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].fields["bytes"], "5");
    assert_eq!(commits[0].fields["durability"], "None");
    assert_eq!(micros(&commits[0], "fsync_us"), 0);
    micros(&commits[0], "rename_us");

    tokio_atomic_write::update(&path, |_| Ok::<_, tokio_atomic_write::Error>(b"1".to_vec()))
        .await
        .unwrap();
    assert_eq!(spans("commit", &path).len(), 2);

    let taken = dir.path().join("taken");
    std::fs::write(&taken, "x").unwrap();
    let err = OpenOptions::new()
        .overwrite(false)
        .write(&taken, b"y")
        .await
        .unwrap_err();
    let commits = spans("commit", &taken);
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].fields["error"], err.to_string());
}

/// `bytes` counts the bytes written, in all: after a seek back, an
/// overwrite counts though the file does not grow.
#[tokio::test]
async fn bytes_counts_every_byte_written_across_seeks() {
    use tokio::io::AsyncSeekExt;
    install();
    let dir = scratch();
    let path = dir.path().join("patched");
    let mut file = AsyncAtomicFile::create(&path).await.unwrap();
    file.write_all(&[0u8; 1000]).await.unwrap();
    file.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    file.write_all(b"head").await.unwrap();
    file.commit().await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
    let commits = spans("commit", &path);
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].fields["bytes"], "1004");
}

/// The events whose `path` is `path`.
fn events(path: &Path) -> Vec<(tracing::Level, Seen)> {
    let path = path.display().to_string();
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.fields.get("path") == Some(&path))
        .cloned()
        .collect()
}

/// Issue #20: a file dropped with bytes written and no `commit` or
/// `rollback` says so (`WARN`, with the target and the bytes discarded);
/// not a file that wrote nothing, was committed or rolled back, and only
/// at `DEBUG` while a panic unwinds. Files of an atomic directory alike,
/// until `finish`.
#[tokio::test]
async fn a_file_dropped_with_bytes_and_no_commit_warns() {
    install();
    let dir = scratch();
    let path = |name: &str| dir.path().join(name);

    let mut file = AsyncAtomicFile::create(path("dropped")).await.unwrap();
    file.write_all(&[1; 3000]).await.unwrap();
    drop(file);
    let seen = events(&path("dropped"));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (level, event) = &seen[0];
    assert_eq!(*level, tracing::Level::WARN);
    assert_eq!(event.target, "tokio_atomic_write");
    assert_eq!(event.fields["bytes"], "3000");
    assert!(event.fields["message"].contains("discarded"), "{event:?}");

    // Quiet: nothing written; committed; rolled back; a failed commit.
    drop(AsyncAtomicFile::create(path("empty")).await.unwrap());
    let mut file = AsyncAtomicFile::create(path("committed")).await.unwrap();
    file.write_all(b"x").await.unwrap();
    file.commit().await.unwrap();
    let mut file = AsyncAtomicFile::create(path("rolled")).await.unwrap();
    file.write_all(b"x").await.unwrap();
    file.rollback().await.unwrap();
    let mut file = OpenOptions::new()
        .overwrite(false)
        .open(path("taken"))
        .await
        .unwrap();
    std::fs::write(path("taken"), b"first").unwrap();
    file.write_all(b"x").await.unwrap();
    file.commit().await.unwrap_err();
    for quiet in ["empty", "committed", "rolled", "taken"] {
        assert!(
            events(&path(quiet)).is_empty(),
            "{quiet}: {:?}",
            events(&path(quiet))
        );
    }

    // A panic while the file is held: DEBUG.
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut file = futures::executor::block_on(async {
            let mut f = AsyncAtomicFile::create(path("panicked")).await.unwrap();
            f.write_all(b"abc").await.unwrap();
            f
        });
        let _keep = &mut file;
        panic!("a bug while writing");
    }));
    assert!(unwound.is_err());
    let seen = events(&path("panicked"));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, tracing::Level::DEBUG);
    assert_eq!(seen[0].1.fields["bytes"], "3");

    // A file of an atomic directory, dropped before `finish`.
    let tree = tokio_atomic_write::AsyncAtomicDir::create(path("tree"))
        .await
        .unwrap();
    let mut file = tree.file("a").await.unwrap();
    file.write_all(b"12345").await.unwrap();
    let file_path = file.path().to_path_buf();
    drop(file);
    let seen = events(&file_path);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].0, seen[0].1.fields["bytes"].as_str()),
        (tracing::Level::WARN, "5")
    );
    let mut file = tree.file("b").await.unwrap();
    file.write_all(b"12345").await.unwrap();
    let finished = file.path().to_path_buf();
    file.finish().await.unwrap();
    assert!(events(&finished).is_empty());
}

/// A `rename` is traced as a commit of `to`: its syncs and its rename
/// timed, and its error recorded when it fails.
#[tokio::test]
async fn a_rename_is_traced_as_a_commit_of_its_target() {
    install();
    let dir = scratch();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::write(&from, b"moved").unwrap();
    tokio_atomic_write::rename(&from, &to).await.unwrap();
    let commits = spans("commit", &to);
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].fields["durability"], "Full");
    assert!(!commits[0].fields.contains_key("error"), "{commits:?}");
    if !on_tmpfs(&to) {
        assert!(micros(&commits[0], "fsync_us") > 0, "{commits:?}");
    }
    micros(&commits[0], "rename_us");

    let err = tokio_atomic_write::rename(&from, &to).await.unwrap_err();
    let commits = spans("commit", &to);
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!(commits[1].fields["error"], err.to_string());
}
