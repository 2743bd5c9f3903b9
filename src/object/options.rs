//! [`ObjectOptions`]: how an object is written.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutResult, UpdateVersion};

use super::{put, AsyncAtomicObject};
use crate::Error;

/// The default size of a multipart upload's part: 8 MiB. S3 takes parts
/// of 5 MiB to 5 GiB (the last may be smaller).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// The default number of parts uploaded at once: 4.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;

/// The default size past which a conditional write fails: 64 MiB. A
/// conditional write (no-clobber, [`ObjectOptions::if_version`], `update`)
/// is one conditional PUT, held in memory until `commit`, since
/// `object_store` cannot make a multipart upload conditional.
pub const DEFAULT_CONDITIONAL_LIMIT: usize = 64 * 1024 * 1024;

/// The default number of tries of [`update`](super::update): 32.
pub const DEFAULT_MAX_TRIES: u32 = 32;

/// Options for writing an object: whether to overwrite, which version to
/// replace, how large the parts are and how many go at once.
///
/// | option | default |
/// |---|---|
/// | [`overwrite`](Self::overwrite) | `true` |
/// | [`if_version`](Self::if_version) | none |
/// | [`part_size`](Self::part_size) | [`DEFAULT_PART_SIZE`] (8 MiB) |
/// | [`max_concurrency`](Self::max_concurrency) | [`DEFAULT_MAX_CONCURRENCY`] (4) |
/// | [`conditional_limit`](Self::conditional_limit) | [`DEFAULT_CONDITIONAL_LIMIT`] (64 MiB) |
/// | [`max_tries`](Self::max_tries) | [`DEFAULT_MAX_TRIES`] (32) |
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// use std::sync::Arc;
/// use object_store::memory::InMemory;
/// use tokio_atomic_write::object::ObjectOptions;
///
/// let store = Arc::new(InMemory::new());
/// // First writer wins: a second no-clobber write fails, kind AlreadyExists.
/// ObjectOptions::new().overwrite(false).write(store.clone(), "cache/key", b"one").await?;
/// let lost = ObjectOptions::new().overwrite(false).write(store, "cache/key", b"two").await;
/// assert_eq!(lost.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ObjectOptions {
    pub(super) overwrite: bool,
    pub(super) if_version: Option<UpdateVersion>,
    pub(super) part_size: usize,
    pub(super) max_concurrency: usize,
    pub(super) conditional_limit: usize,
    pub(super) max_tries: u32,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            overwrite: true,
            if_version: None,
            part_size: DEFAULT_PART_SIZE,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            conditional_limit: DEFAULT_CONDITIONAL_LIMIT,
            max_tries: DEFAULT_MAX_TRIES,
        }
    }
}

impl ObjectOptions {
    /// The defaults: overwrite, unconditionally, in parts of 8 MiB, 4 at
    /// once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `commit` may replace an object already at the location.
    /// With `false`, the write is one `PutMode::Create` put (`If-None-Match:
    /// *` on S3): of writers racing for an absent location exactly one
    /// commits, the others fail with kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists) and the
    /// winner's bytes stay. It holds the whole object in memory, up to
    /// [`conditional_limit`](Self::conditional_limit).
    pub fn overwrite(&mut self, overwrite: bool) -> &mut Self {
        self.overwrite = overwrite;
        self
    }

    /// Replace only this version of the object (`PutMode::Update`,
    /// `If-Match` on S3): if another writer has replaced it since, or it is
    /// gone, `commit` fails with an [`Op::Put`](crate::Op::Put) error that
    /// wraps an `object_store::Error::Precondition` (its
    /// [`io_error`](crate::Error::io_error)) and publishes nothing.
    /// One conditional put, held in memory like
    /// [`overwrite(false)`](Self::overwrite), which it takes precedence
    /// over.
    pub fn if_version(&mut self, version: UpdateVersion) -> &mut Self {
        self.if_version = Some(version);
        self
    }

    /// The size of a multipart upload's part, in bytes (0: the default).
    /// An object that fits in one part is sent by one PUT at `commit`.
    /// S3 rejects parts under 5 MiB but the last when the upload completes,
    /// and takes at most 10,000 parts: 78 GiB at the default size.
    pub fn part_size(&mut self, bytes: usize) -> &mut Self {
        self.part_size = if bytes == 0 { DEFAULT_PART_SIZE } else { bytes };
        self
    }

    /// How many parts are uploaded at once (0 counts as 1). A new part is
    /// filled only while fewer are in flight, so memory stays under
    /// `parts * part_size` plus a constant: the parts in flight and the one
    /// being filled together, as with `object_store`'s `BufWriter`.
    pub fn max_concurrency(&mut self, parts: usize) -> &mut Self {
        self.max_concurrency = parts.max(1);
        self
    }

    /// The largest object a conditional write (no-clobber,
    /// [`if_version`](Self::if_version), [`update`](Self::update)) takes,
    /// in bytes. A write past it fails with kind
    /// [`FileTooLarge`](std::io::ErrorKind::FileTooLarge), naming the limit,
    /// and publishes nothing.
    pub fn conditional_limit(&mut self, bytes: usize) -> &mut Self {
        self.conditional_limit = bytes;
        self
    }

    /// How many times [`update`](Self::update) runs its closure and tries
    /// its conditional put before it gives up (0 counts as 1).
    pub fn max_tries(&mut self, tries: u32) -> &mut Self {
        self.max_tries = tries.max(1);
        self
    }

    /// Opens an [`AsyncAtomicObject`] for `location` with these options.
    /// Nothing is sent yet: the first request goes out when a full part has
    /// been written, or at `commit`.
    ///
    /// # Errors
    ///
    /// [`Op::Open`](crate::Op::Open), kind
    /// [`InvalidInput`](std::io::ErrorKind::InvalidInput), for an empty
    /// location (on S3 it would address the bucket itself) or one that
    /// `object_store` does not accept.
    ///
    /// # Cancel safety
    ///
    /// Sends nothing: dropping the future changes nothing.
    pub async fn open(
        &self,
        store: Arc<dyn ObjectStore>,
        location: impl Into<ObjectPath>,
    ) -> Result<AsyncAtomicObject, Error> {
        let location = location.into();
        put::check(self, &location)?;
        Ok(AsyncAtomicObject::new(store, location, self.clone()))
    }

    /// Replaces the object at `location` with `bytes`, whole, in one call:
    /// one PUT when they fit in a part or the write is conditional,
    /// otherwise a multipart upload.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), then as
    /// [`AsyncAtomicObject::commit`].
    ///
    /// # Cancel safety
    ///
    /// As [`AsyncAtomicObject::commit`]: dropping the future publishes the
    /// whole object or nothing, and aborts a multipart upload that did not
    /// complete.
    pub async fn write(
        &self,
        store: Arc<dyn ObjectStore>,
        location: impl Into<ObjectPath>,
        bytes: impl AsRef<[u8]>,
    ) -> Result<PutResult, Error> {
        let location = location.into();
        put::check(self, &location)?;
        let bytes = bytes.as_ref();
        let mut object = AsyncAtomicObject::new(store, location, self.clone());
        if object.is_conditional() || bytes.len() <= self.part_size {
            object.extend(bytes)?;
        } else {
            // Through the parts, as if streamed: memory stays bounded by
            // the parts in flight, not by a second copy of `bytes`.
            object.write_all_inner(bytes).await?;
        }
        object.commit().await
    }

    /// [`update`](super::update) with these options: the part size and
    /// concurrency do not matter (the put is one conditional PUT), the
    /// [`max_tries`](Self::max_tries) and
    /// [`conditional_limit`](Self::conditional_limit) do.
    ///
    /// # Errors
    ///
    /// As [`update`](super::update).
    ///
    /// # Cancel safety
    ///
    /// As [`update`](super::update).
    pub async fn update<F, E>(
        &self,
        store: Arc<dyn ObjectStore>,
        location: impl Into<ObjectPath>,
        f: F,
    ) -> Result<PutResult, E>
    where
        F: FnMut(Option<Vec<u8>>) -> Result<Vec<u8>, E>,
        E: From<Error>,
    {
        let location = location.into();
        put::check_location(&location)?;
        put::update(self, store.as_ref(), &location, f).await
    }
}
