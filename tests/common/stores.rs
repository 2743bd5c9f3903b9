//! The three stores every object test runs against (the S3 server, when
//! `weed` is there; `InMemory`; `LocalFileSystem`), and `Watched`, a store
//! wrapper that counts parts in flight and can make requests fail.
#![allow(dead_code)]

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RetryConfig, UploadPart,
};

#[path = "s3.rs"]
pub mod s3;

/// An S3 client for `server`, with short retries and timeouts so that a
/// dead server fails a call within seconds, not minutes.
pub fn s3_client(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    };
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("any")
            .with_secret_access_key("any")
            .with_retry(retry)
            // Replaces every client option: `with_allow_http` goes here.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(20))
                    .with_connect_timeout(Duration::from_secs(2)),
            )
            .build()
            .expect("S3 client"),
    )
}

pub enum Kind {
    S3(&'static s3::S3Server),
    Memory,
    Local(tempfile::TempDir),
}

/// One store of the three, with a key prefix of the test's own.
pub struct Store {
    pub name: &'static str,
    pub store: Arc<dyn ObjectStore>,
    pub kind: Kind,
    prefix: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Store {
    /// A location no other test uses.
    pub fn key(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{name}", self.prefix))
    }

    /// The multipart uploads in progress for `key`, where the store lets
    /// them be seen: listed by the S3 server, staging files
    /// (`{file}#{n}`) of `LocalFileSystem`. `InMemory` keeps its parts in
    /// the upload itself: `None`.
    pub fn uploads(&self, key: &ObjectPath) -> Option<usize> {
        match &self.kind {
            Kind::S3(server) => Some(
                server
                    .list_uploads()
                    .into_iter()
                    .filter(|(k, _)| k == key.as_ref())
                    .count(),
            ),
            Kind::Memory => None,
            Kind::Local(dir) => {
                let file = dir.path().join(key.as_ref());
                let parent = file.parent().unwrap();
                let name = format!("{}#", file.file_name().unwrap().to_string_lossy());
                let Ok(entries) = std::fs::read_dir(parent) else {
                    return Some(0);
                };
                Some(
                    entries
                        .filter(|e| {
                            e.as_ref()
                                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&name))
                        })
                        .count(),
                )
            }
        }
    }

    /// Waits (a liveness bound, not a timing) until `key` has no upload in
    /// progress; false if it still has after 30 s.
    pub async fn uploads_gone(&self, key: &ObjectPath) -> bool {
        for _ in 0..300 {
            if self.uploads(key).unwrap_or(0) == 0 {
                return true;
            }
            // The abort is a task of this runtime: yield to it, not block.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The object's bytes, or None.
    pub async fn read(&self, key: &ObjectPath) -> Option<Vec<u8>> {
        match self.store.get(key).await {
            Ok(got) => Some(got.bytes().await.expect("read body").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{}: get {key}: {e}", self.name),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.kind, Kind::S3(_))
    }
}

/// The three stores, each with a prefix of its own for `test`. Without
/// `weed`, the S3 server is left out with a visible skip (a failure in CI).
pub fn all_stores(test: &str) -> Vec<Store> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("{test}-{}-{n}", std::process::id());
    let mut stores = Vec::new();
    if s3::require_weed() {
        let server = s3::shared();
        stores.push(Store {
            name: "s3",
            store: s3_client(&server.endpoint(), server.bucket()),
            kind: Kind::S3(server),
            prefix: prefix.clone(),
        });
    }
    stores.push(Store {
        name: "memory",
        store: Arc::new(InMemory::new()),
        kind: Kind::Memory,
        prefix: prefix.clone(),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    stores.push(Store {
        name: "local",
        store: Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store")),
        kind: Kind::Local(dir),
        prefix,
    });
    stores
}

/// What `Watched` saw and what it is told to break.
#[derive(Debug)]
pub struct Watch {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub parts: AtomicUsize,
    pub uploads_started: AtomicUsize,
    pub puts: AtomicUsize,
    pub conditional_puts: AtomicUsize,
    pub aborts: AtomicUsize,
    pub fail_abort: AtomicBool,
    pub fail_part: AtomicBool,
    /// Parts wait here before they go, while `gated`: they pile up.
    pub gate: tokio::sync::Semaphore,
    pub gated: AtomicBool,
    /// The next this many conditional puts land, then answer a transport
    /// error: the answer was lost.
    pub lose_answers: AtomicUsize,
    /// The next this many conditional puts land, then answer a conflict:
    /// the client retried a try that had landed.
    pub conflict_after_landing: AtomicUsize,
    /// After a put whose answer is lost, this many rival increments land
    /// (`object::update` on the store behind) before the error is answered.
    pub rivals_after_lost: AtomicUsize,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            uploads_started: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            conditional_puts: AtomicUsize::new(0),
            aborts: AtomicUsize::new(0),
            fail_abort: AtomicBool::new(false),
            fail_part: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            gated: AtomicBool::new(false),
            lose_answers: AtomicUsize::new(0),
            conflict_after_landing: AtomicUsize::new(0),
            rivals_after_lost: AtomicUsize::new(0),
        }
    }
}

impl Watch {
    /// Lets every part waiting at the gate, and all later ones, go.
    pub fn open_gate(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(1 << 20);
    }
}

/// A store that passes everything to `inner`, counting.
#[derive(Debug)]
pub struct Watched {
    pub inner: Arc<dyn ObjectStore>,
    pub watch: Arc<Watch>,
}

impl Watched {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> (Arc<dyn ObjectStore>, Arc<Watch>) {
        let watch = Arc::new(Watch::default());
        (
            Arc::new(Watched {
                inner,
                watch: watch.clone(),
            }),
            watch,
        )
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watched({})", self.inner)
    }
}

#[derive(Debug)]
struct WatchedUpload {
    inner: Box<dyn MultipartUpload>,
    watch: Arc<Watch>,
}

#[async_trait]
impl MultipartUpload for WatchedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let watch = self.watch.clone();
        watch.parts.fetch_add(1, Ordering::SeqCst);
        let part = self.inner.put_part(data);
        Box::pin(async move {
            let now = watch.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            watch.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if watch.gated.load(Ordering::SeqCst) {
                drop(watch.gate.acquire().await);
            }
            let result = if watch.fail_part.load(Ordering::SeqCst) {
                Err(object_store::Error::Generic {
                    store: "Watched",
                    source: "injected part failure".into(),
                })
            } else {
                part.await
            };
            watch.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.watch.aborts.fetch_add(1, Ordering::SeqCst);
        if self.watch.fail_abort.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "Watched",
                source: "injected abort failure".into(),
            });
        }
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Watched {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.watch.puts.fetch_add(1, Ordering::SeqCst);
        if matches!(opts.mode, object_store::PutMode::Overwrite) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        self.watch.conditional_puts.fetch_add(1, Ordering::SeqCst);
        let conflict = opts.mode.clone();
        let put = self.inner.put_opts(location, payload, opts).await?;
        if take_one(&self.watch.lose_answers) {
            let rivals = self.watch.rivals_after_lost.swap(0, Ordering::SeqCst);
            for _ in 0..rivals {
                tokio_atomic_write::object::update(self.inner.clone(), location.clone(), increment)
                    .await
                    .expect("a rival increment");
            }
            return Err(object_store::Error::Generic {
                store: "Watched",
                source: "injected: the answer was lost".into(),
            });
        }
        if take_one(&self.watch.conflict_after_landing) {
            let source = "injected: a retry saw its own write".into();
            return Err(match conflict {
                object_store::PutMode::Create => object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source,
                },
                _ => object_store::Error::Precondition {
                    path: location.to_string(),
                    source,
                },
            });
        }
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.watch.uploads_started.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(WatchedUpload {
            inner,
            watch: self.watch.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

pub const MIB: usize = 1024 * 1024;
/// S3's smallest part but the last.
pub const PART: usize = 5 * MIB;

/// Bytes that say where they are: a part out of place shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 + (i / 4096) as u64) as u8)
        .collect()
}

/// Parts of S3's smallest size, two in flight.
pub fn parted() -> tokio_atomic_write::object::ObjectOptions {
    let mut options = tokio_atomic_write::object::ObjectOptions::new();
    options.part_size(PART).max_concurrency(2);
    options
}

/// A counter's next value: `None` or the decimal bytes of n, to n + 1.
pub fn increment(old: Option<Vec<u8>>) -> Result<Vec<u8>, tokio_atomic_write::Error> {
    let n: u64 = match old {
        Some(bytes) => String::from_utf8(bytes).unwrap().parse().unwrap(),
        None => 0,
    };
    Ok((n + 1).to_string().into_bytes())
}

/// Where a local store keeps `key`.
pub fn local_file(dir: &tempfile::TempDir, key: &ObjectPath) -> PathBuf {
    dir.path().join(key.as_ref())
}
