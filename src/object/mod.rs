//! Feature `object_store`: the same contract on object storage (S3, GCS,
//! Azure, or any [`ObjectStore`]): an object is published whole by
//! [`AsyncAtomicObject::commit`], or not at all.
//!
//! | on a file | on an object |
//! |---|---|
//! | [`AsyncAtomicFile`](crate::AsyncAtomicFile) | [`AsyncAtomicObject`] |
//! | `commit`: fsync, rename, fsync the directory | `commit`: one PUT, or the last part and the completion of a multipart upload |
//! | drop: the temp file is removed | drop: the multipart upload is aborted |
//! | [`write()`](crate::write()) | [`write()`] |
//! | `overwrite(false)`: `renameat2(NOREPLACE)` or `link` | [`ObjectOptions::overwrite`]`(false)`: `PutMode::Create` (`If-None-Match: *`) |
//! | [`update`](crate::update): a lock file | [`update`]: get, then `PutMode::Update` (`If-Match`), again on a lost race |
//!
//! What object storage promises, and so what this module can: a PUT or a
//! multipart completion publishes the whole object at once; a read after a
//! successful write sees it; conditional puts are atomic (on S3, GCS,
//! Azure and `InMemory`). What it does not have: a rename of a directory,
//! and `fsync` (the store's answer is the durability point). Stores
//! without conditional puts (`LocalFileSystem` has `Create` but not
//! `Update`) fail a conditional write with kind
//! [`Unsupported`](std::io::ErrorKind::Unsupported).
//!
//! A conditional write is one PUT: `object_store` cannot make a multipart
//! upload conditional, so its bytes are held in memory until `commit`, up
//! to [`ObjectOptions::conditional_limit`] (64 MiB by default); past it the
//! write fails with kind [`FileTooLarge`](std::io::ErrorKind::FileTooLarge)
//! and publishes nothing.
//!
//! Every conditional put stamps the object's metadata (key
//! `tokioatomicwrite`, `x-amz-meta-tokioatomicwrite` on S3) with a count
//! of stamped writes and random tokens of the last 32, its own last, and
//! carries the object's other attributes on. So a put whose answer was
//! lost, or that the client retried after it landed, is never taken for a
//! lost race: the object is read back first, and its token there means it
//! landed. When that cannot be told (more than 32 stamped writes landed
//! meanwhile, or the object carries no stamp: written without this crate,
//! or a store that drops metadata), the write fails with an error that
//! says so, kind `Other`, rather than guess. On a store that keeps no
//! metadata at all (`LocalFileSystem` rejects it) the put goes without;
//! there no answer is lost. Unconditional writes (overwrite, multipart)
//! carry no stamp.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tokio_atomic_write::Error> {
//! use std::sync::Arc;
//! use object_store::{memory::InMemory, ObjectStore};
//! use tokio_atomic_write::object;
//!
//! let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
//! object::write(store.clone(), "state/visits", b"0").await?;
//! // Read, modify, write: no increment is lost to a concurrent one,
//! // from this process or another machine.
//! object::update(store.clone(), "state/visits", |old| {
//!     let n: u64 = String::from_utf8_lossy(&old.unwrap_or_default()).parse().unwrap_or(0);
//!     Ok::<_, tokio_atomic_write::Error>((n + 1).to_string().into_bytes())
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutResult};

use crate::Error;

mod options;
mod put;
mod writer;

#[cfg(feature = "serde")]
mod json;

pub use options::{
    ObjectOptions, DEFAULT_CONDITIONAL_LIMIT, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_TRIES,
    DEFAULT_PART_SIZE,
};
pub use writer::AsyncAtomicObject;

#[cfg(feature = "serde")]
pub use json::{read_json, write_json};

/// Replaces the object at `location` with `bytes`, whole, with the default
/// [`ObjectOptions`] (overwrite): [`ObjectOptions::write`].
///
/// # Errors
///
/// As [`ObjectOptions::write`].
///
/// # Cancel safety
///
/// As [`AsyncAtomicObject::commit`]: dropping the future publishes the
/// whole object or nothing, and aborts a multipart upload that did not
/// complete.
pub async fn write(
    store: Arc<dyn ObjectStore>,
    location: impl Into<ObjectPath>,
    bytes: impl AsRef<[u8]>,
) -> Result<PutResult, Error> {
    ObjectOptions::new().write(store, location, bytes).await
}

/// Replaces the object at `location` with what `f` makes of its current
/// content, so that concurrent updates, from any process or machine, never
/// lose one another's changes.
///
/// It gets the object and its version (ETag), runs `f` on the bytes
/// (`None` when there is no object), and puts the result conditionally:
/// `PutMode::Create` when there was none, `PutMode::Update` of the version
/// read otherwise. When another writer got there first, `f` runs again on
/// the fresh content, after a jittered pause (10 ms doubling to 500 ms),
/// at most [`ObjectOptions::max_tries`] times (32 by default). A put whose
/// answer was lost is checked against the object's write stamp before
/// `f` runs again: `f` is never applied twice to the stored object (when
/// that cannot be told, `update` fails instead, see the module docs). No
/// lock file, no lock: `f` may run more than once, on different contents,
/// and must not have side effects that matter.
///
/// # Errors
///
/// `f`'s error, returned as is; nothing changes. Or an [`Error`] converted
/// into `E`: [`Op::Open`](crate::Op::Open) for a bad location (nothing
/// sent); [`Op::Read`](crate::Op::Read) when the get fails;
/// [`Op::Put`](crate::Op::Put) when the put fails for good (kind
/// [`Unsupported`](std::io::ErrorKind::Unsupported) on a store without
/// conditional puts; kind `Other` when its answer was lost and whether it
/// landed cannot be told: read the object before trying again), or, kind
/// [`ResourceBusy`](std::io::ErrorKind::ResourceBusy), when the tries ran
/// out (the last failure in its message); kind
/// [`FileTooLarge`](std::io::ErrorKind::FileTooLarge) when `f`'s result, or
/// ([`Op::Read`](crate::Op::Read)) the object read, is past
/// [`ObjectOptions::conditional_limit`].
///
/// # Panics
///
/// Outside a Tokio runtime with its timer enabled: the pause between tries
/// is a `tokio::time::sleep`.
///
/// # Cancel safety
///
/// Dropping the future before a put was sent changes nothing; while a put
/// is in flight, the object is then the old one or `f`'s result, whole.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, ObjectStore, ObjectStoreExt};
/// use tokio_atomic_write::object;
///
/// let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
/// for _ in 0..3 {
///     object::update(store.clone(), "visits", |old| {
///         let n: u64 = match old {
///             Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
///             None => 0,
///         };
///         Ok::<_, tokio_atomic_write::Error>((n + 1).to_string().into_bytes())
///     })
///     .await?;
/// }
/// let got = store.get(&"visits".into()).await.unwrap().bytes().await.unwrap();
/// assert_eq!(&got[..], b"3");
/// # Ok(())
/// # }
/// ```
pub async fn update<F, E>(
    store: Arc<dyn ObjectStore>,
    location: impl Into<ObjectPath>,
    f: F,
) -> Result<PutResult, E>
where
    F: FnMut(Option<Vec<u8>>) -> Result<Vec<u8>, E>,
    E: From<Error>,
{
    ObjectOptions::new().update(store, location, f).await
}
