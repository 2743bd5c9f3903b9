//! [`AsyncAtomicObject`]: the async shell over a multipart upload.
//!
//! Not the file pipeline: that one hands buffers to blocking jobs, one at
//! a time, while a part is an async request of its own, several in flight
//! at once. Here a full part becomes a task of the runtime (so it goes on
//! while the caller is busy elsewhere), at most `max_concurrency` of them;
//! the caller waits for a slot before it fills another part.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use object_store::path::Path as ObjectPath;
use object_store::{
    MultipartUpload, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::io::AsyncWrite;
use tokio::task::JoinSet;

use super::put::{self, store_error, Conditional, Outcome};
use super::ObjectOptions;
use crate::{Error, Op};

type Starting =
    Pin<Box<dyn Future<Output = object_store::Result<Box<dyn MultipartUpload>>> + Send>>;

/// Where the multipart upload is. `Mutex` only to make the writer `Sync`:
/// it is reached through `&mut self` (`get_mut`), never locked.
enum Upload {
    /// None yet: the object still fits in one part.
    None,
    /// `put_multipart_opts` in flight.
    Starting(Mutex<Starting>),
    /// Created: parts go to it.
    Started(Mutex<Box<dyn MultipartUpload>>),
}

/// How `commit` publishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Overwrite: one PUT, or a multipart upload once past a part.
    Streaming,
    /// No-clobber or `if_version`: one conditional PUT of everything.
    Conditional,
}

/// An object written in parts and published whole by
/// [`commit`](Self::commit), or not at all.
///
/// Bytes written gather in a part buffer of
/// [`part_size`](ObjectOptions::part_size); each full part is uploaded
/// while the caller goes on writing (a multipart upload, started with the
/// first full part), at most
/// [`max_concurrency`](ObjectOptions::max_concurrency) at a time: memory
/// stays under `max_concurrency` parts plus a constant (a new part is
/// filled only while a slot is free for it). An object that
/// fits in one part is sent by one PUT at `commit`. Nothing is visible at
/// the location before `commit`: readers see the old object (or none)
/// until the upload completes, then the whole new one. `flush` and
/// `shutdown` upload the full parts and wait for them, and publish
/// nothing; `commit` still works after them.
///
/// A conditional write ([`ObjectOptions::overwrite`]`(false)`,
/// [`ObjectOptions::if_version`]) is one conditional PUT, since a multipart
/// upload cannot be conditional: its bytes stay in memory until `commit`,
/// up to [`ObjectOptions::conditional_limit`].
///
/// Dropping the object uncommitted, [`rollback`](Self::rollback), a
/// cancelled `commit` that did not complete, a panic that unwinds through
/// the writer: nothing is published, and the multipart upload is aborted
/// by a task of the runtime once its parts in flight have ended. With no
/// runtime left to run it (dropped outside one, or while it shuts down),
/// the upload stays behind: a bucket's lifecycle rule
/// (`AbortIncompleteMultipartUpload`) removes such uploads.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, ObjectStore, ObjectStoreExt};
/// use tokio::io::AsyncWriteExt;
/// use tokio_atomic_write::object::AsyncAtomicObject;
///
/// let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
/// let mut object = AsyncAtomicObject::create(store.clone(), "state.json").await?;
/// object.write_all(br#"{"n":1}"#).await?;
/// object.commit().await?;
/// let got = store.get(&"state.json".into()).await?.bytes().await?;
/// assert_eq!(&got[..], br#"{"n":1}"#);
/// # Ok(())
/// # }
/// ```
pub struct AsyncAtomicObject {
    inner: Option<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    options: ObjectOptions,
    kind: Kind,
    /// The part being filled (everything, when conditional).
    buf: Vec<u8>,
    upload: Upload,
    parts: JoinSet<object_store::Result<()>>,
    /// The first error, kept whole for `commit`; later calls fail with its
    /// kind.
    error: Option<Error>,
    /// Bytes accepted in all.
    accepted: u64,
    /// Parts handed to the upload.
    sent_parts: u64,
    /// Set once the upload has completed: nothing to abort.
    completed: bool,
}

impl fmt::Debug for AsyncAtomicObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("AsyncAtomicObject");
        if let Some(inner) = &self.inner {
            let upload = match inner.upload {
                Upload::None => "none",
                Upload::Starting(_) => "starting",
                Upload::Started(_) => "started",
            };
            s.field("location", &inner.location)
                .field("kind", &inner.kind)
                .field("upload", &upload)
                .field("accepted", &inner.accepted)
                .field("buffered", &inner.buf.len())
                .field("parts_sent", &inner.sent_parts)
                .field("parts_in_flight", &inner.parts.len());
        }
        s.finish()
    }
}

impl AsyncAtomicObject {
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        location: ObjectPath,
        options: ObjectOptions,
    ) -> Self {
        let kind = if options.overwrite && options.if_version.is_none() {
            Kind::Streaming
        } else {
            Kind::Conditional
        };
        AsyncAtomicObject {
            inner: Some(Inner {
                store,
                location,
                options,
                kind,
                buf: Vec::new(),
                upload: Upload::None,
                parts: JoinSet::new(),
                error: None,
                accepted: 0,
                sent_parts: 0,
                completed: false,
            }),
        }
    }

    /// Opens an object for `location` with the default
    /// [`ObjectOptions`]: overwrite, parts of 8 MiB, 4 at once.
    ///
    /// # Errors
    ///
    /// As [`ObjectOptions::open`].
    ///
    /// # Cancel safety
    ///
    /// Sends nothing: dropping the future changes nothing.
    pub async fn create(
        store: Arc<dyn ObjectStore>,
        location: impl Into<ObjectPath>,
    ) -> Result<AsyncAtomicObject, Error> {
        ObjectOptions::new().open(store, location).await
    }

    /// New [`ObjectOptions`], to set before [`open`](ObjectOptions::open).
    pub fn options() -> ObjectOptions {
        ObjectOptions::new()
    }

    /// The location the object is published at.
    pub fn location(&self) -> &ObjectPath {
        &self.inner().location
    }

    fn inner(&self) -> &Inner {
        self.inner.as_ref().expect("used after commit or rollback")
    }

    fn inner_mut(&mut self) -> &mut Inner {
        self.inner.as_mut().expect("used after commit or rollback")
    }

    pub(super) fn is_conditional(&self) -> bool {
        self.inner().kind == Kind::Conditional
    }

    /// Writes all of `bytes` through the parts, as `write_all` would; the
    /// first error, whole.
    pub(super) async fn write_all_inner(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        let inner = self.inner_mut();
        while !bytes.is_empty() {
            match poll_fn(|cx| inner.poll_write(cx, bytes)).await {
                Ok(n) => bytes = &bytes[n..],
                Err(e) => {
                    let path = inner.path();
                    return Err(inner
                        .error
                        .take()
                        .unwrap_or_else(|| Error::new(Op::Write, path, e)));
                }
            }
        }
        Ok(())
    }

    /// Takes all of `bytes` at once (`write` of the options): no part is
    /// sent before `commit`, which sends them.
    pub(super) fn extend(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let inner = self.inner_mut();
        inner.accept_check(bytes.len())?;
        inner.buf.extend_from_slice(bytes);
        inner.accepted += bytes.len() as u64;
        Ok(())
    }

    /// Publishes the object, whole: its one PUT, or its last part and the
    /// completion of its multipart upload. Readers see the old object (or
    /// none) until it returns, and the whole new one once it has. There is
    /// no `fsync` on object storage: the store's answer to the PUT or the
    /// completion is the durability point.
    ///
    /// # Errors
    ///
    /// The first error of a `write` or `flush` (sticky), else
    /// [`Op::StartUpload`], [`Op::UploadPart`], [`Op::Complete`] for a
    /// multipart upload, which is then aborted; [`Op::Put`] for one PUT. A
    /// no-clobber write that finds an object fails with kind
    /// [`AlreadyExists`](io::ErrorKind::AlreadyExists); an
    /// [`if_version`](ObjectOptions::if_version) write that finds another
    /// version fails with kind `Other`, wrapping an
    /// `object_store::Error::Precondition` (its
    /// [`io_error`](crate::Error::io_error)); neither publishes anything. A
    /// conditional put whose answer was lost and which the client retried
    /// is checked against the object's write stamp, so that its own
    /// success is never reported as a conflict. The error's
    /// [`path`](Error::path) is the location. A transport failure of the
    /// PUT or the completion ([`Op::Put`], [`Op::Complete`], kind `Other`)
    /// leaves it unknown whether the request took effect: the client may
    /// have retried a completion that had landed, and been told the upload
    /// is gone. Read the object before writing it again.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes publishes the whole object
    /// or nothing: if its last request (the PUT, or the completion) had
    /// reached the store it may still take effect; otherwise the multipart
    /// upload is aborted, as on drop.
    pub async fn commit(mut self) -> Result<PutResult, Error> {
        let mut inner = self.inner.take().expect("used after commit or rollback");
        if let Some(e) = inner.error.take() {
            return Err(e);
        }
        match (inner.kind, &inner.upload) {
            (Kind::Conditional, _) => inner.put_conditional().await,
            (Kind::Streaming, Upload::None) => inner.put_whole().await,
            (Kind::Streaming, _) => inner.complete().await,
        }
    }

    /// Discards the object: publishes nothing, aborts the multipart upload
    /// (after its parts in flight end, each bounded by the client's request
    /// timeout) and reports an abort that fails, which dropping the object
    /// cannot.
    ///
    /// # Errors
    ///
    /// [`Op::Abort`] when the store refuses the abort, or
    /// [`Op::StartUpload`] when the upload it was starting could not be
    /// created (nothing to abort then).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes leaves the abort to a task
    /// of the runtime, as on drop.
    pub async fn rollback(mut self) -> Result<(), Error> {
        let mut inner = self.inner.take().expect("used after commit or rollback");
        let Some(abort) = inner.take_abort() else {
            return Ok(());
        };
        // A task of its own, so that dropping this future (a `timeout`, a
        // `select!`) does not drop the abort with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return abort.await;
        };
        match runtime.spawn(abort).await {
            Ok(done) => done,
            Err(e) => Err(Error::new(Op::Abort, inner.path(), io::Error::other(e))),
        }
    }
}

impl Inner {
    fn path(&self) -> std::path::PathBuf {
        put::location_path(&self.location)
    }

    /// The first error again, for a later call: an `io::Error` that `?`
    /// turns back into that `Error` (step and location kept).
    fn sticky(&self) -> Option<io::Error> {
        self.error.as_ref().map(|e| e.duplicate().into())
    }

    fn fail(&mut self, e: Error) -> io::Error {
        let copy = e.duplicate().into();
        self.error.get_or_insert(e);
        copy
    }

    /// Refuses `n` more bytes past a conditional write's limit.
    fn accept_check(&mut self, n: usize) -> Result<(), Error> {
        if self.kind == Kind::Conditional {
            let limit = self.options.conditional_limit;
            let len = self.buf.len().saturating_add(n);
            if len > limit {
                return Err(put::too_large(Op::Put, &self.location, len as u64, limit));
            }
        }
        Ok(())
    }

    /// Takes what the part tasks that ended left; an error sticks.
    fn reap(&mut self, joined: Result<object_store::Result<()>, tokio::task::JoinError>) {
        let e = match joined {
            Ok(Ok(())) => return,
            Ok(Err(e)) => store_error(Op::UploadPart, &self.location, e),
            Err(e) => Error::new(Op::UploadPart, self.path(), io::Error::other(e)),
        };
        self.fail(e);
    }

    /// Polls the upload until it is created.
    fn poll_started(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            match &mut self.upload {
                Upload::Started(_) => return Poll::Ready(Ok(())),
                Upload::None => {
                    let store = self.store.clone();
                    let location = self.location.clone();
                    let start: Starting = Box::pin(async move {
                        store
                            .put_multipart_opts(&location, PutMultipartOptions::default())
                            .await
                    });
                    self.upload = Upload::Starting(Mutex::new(start));
                }
                Upload::Starting(start) => {
                    let start = start.get_mut().unwrap_or_else(PoisonError::into_inner);
                    let started = ready!(start.as_mut().poll(cx));
                    match started {
                        Ok(upload) => self.upload = Upload::Started(Mutex::new(upload)),
                        Err(e) => {
                            self.upload = Upload::None;
                            return Poll::Ready(Err(store_error(
                                Op::StartUpload,
                                &self.location,
                                e,
                            )));
                        }
                    }
                }
            }
        }
    }

    /// Sends the part buffer as a part, once the upload exists and a slot
    /// is free. Ready(Ok) once it is sent.
    fn poll_send_part(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if tokio::runtime::Handle::try_current().is_err() {
            // Parts are tasks of the runtime: without one, refuse before
            // the part is taken.
            return Poll::Ready(Err(Error::new(
                Op::UploadPart,
                self.path(),
                io::Error::other("no Tokio runtime to upload parts on"),
            )));
        }
        ready!(self.poll_started(cx))?;
        while let Some(joined) = self.parts.try_join_next() {
            self.reap(joined);
        }
        ready!(self.poll_slot(cx));
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        let Upload::Started(upload) = &mut self.upload else {
            unreachable!("the upload was started above");
        };
        let upload = upload.get_mut().unwrap_or_else(PoisonError::into_inner);
        let part = PutPayload::from(std::mem::take(&mut self.buf));
        self.parts.spawn(upload.put_part(part));
        self.sent_parts += 1;
        Poll::Ready(Ok(()))
    }

    /// Waits until fewer than `max_concurrency` parts are in flight.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.parts.len() >= self.options.max_concurrency {
            if let Some(joined) = ready!(self.parts.poll_join_next(cx)) {
                self.reap(joined);
            }
        }
        Poll::Ready(())
    }

    /// Waits for every part in flight.
    fn poll_parts_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(joined) = ready!(self.parts.poll_join_next(cx)) {
            self.reap(joined);
        }
        Poll::Ready(())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.sticky() {
            return Poll::Ready(Err(e));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.kind == Kind::Conditional {
            if let Err(e) = self.accept_check(data.len()) {
                return Poll::Ready(Err(self.fail(e)));
            }
            self.buf.extend_from_slice(data);
            self.accepted += data.len() as u64;
            return Poll::Ready(Ok(data.len()));
        }
        let part_size = self.options.part_size;
        if self.buf.len() >= part_size {
            if let Err(e) = ready!(self.poll_send_part(cx)) {
                return Poll::Ready(Err(self.fail(e)));
            }
        }
        if self.buf.is_empty() {
            // A new part is filled only once a slot is free for it: the
            // parts in flight and the one filling stay within
            // `max_concurrency`, as with `object_store`'s `BufWriter`.
            ready!(self.poll_slot(cx));
            if let Some(e) = self.sticky() {
                return Poll::Ready(Err(e));
            }
        }
        let n = data.len().min(part_size - self.buf.len());
        if self.buf.capacity() - self.buf.len() < n {
            // A part after the first is known to fill: take it whole at
            // once, so growing it never holds two copies. The first grows
            // geometrically, so a small object costs what it holds.
            let want = if self.sent_parts > 0 {
                part_size
            } else {
                (self.buf.len() + n)
                    .max(self.buf.capacity() * 2)
                    .min(part_size)
            };
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.accepted += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.sticky() {
            return Poll::Ready(Err(e));
        }
        if self.kind == Kind::Streaming && self.buf.len() >= self.options.part_size {
            if let Err(e) = ready!(self.poll_send_part(cx)) {
                return Poll::Ready(Err(self.fail(e)));
            }
        }
        ready!(self.poll_parts_done(cx));
        match self.sticky() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    /// The object in one PUT (it fits in a part).
    async fn put_whole(&mut self) -> Result<PutResult, Error> {
        let payload = PutPayload::from(std::mem::take(&mut self.buf));
        self.store
            .put_opts(&self.location, payload, PutOptions::default())
            .await
            .map_err(|e| store_error(Op::Put, &self.location, e))
    }

    /// The object in one conditional PUT.
    async fn put_conditional(&mut self) -> Result<PutResult, Error> {
        let (mode, replaced) = match &self.options.if_version {
            // Carry on the stamp and attributes of the object replaced, so
            // that an update racing this write can still tell its own.
            Some(version) => (
                PutMode::Update(version.clone()),
                put::current(self.store.as_ref(), &self.location, true, None).await?,
            ),
            None => (PutMode::Create, put::Current::absent()),
        };
        let payload = PutPayload::from(std::mem::take(&mut self.buf));
        let mut write = Conditional::new();
        match write
            .put(
                self.store.as_ref(),
                &self.location,
                &payload,
                mode,
                &replaced,
            )
            .await?
        {
            Outcome::Put(put) => Ok(put),
            Outcome::Lost(e) => Err(store_error(Op::Put, &self.location, e)),
        }
    }

    /// Sends the last part, waits for all, completes the upload. On any
    /// error the upload is aborted (by `Drop`, since `self` goes).
    async fn complete(&mut self) -> Result<PutResult, Error> {
        if !self.buf.is_empty() || self.sent_parts == 0 {
            poll_fn(|cx| self.poll_send_part(cx)).await?;
        } else {
            poll_fn(|cx| self.poll_started(cx)).await?;
        }
        poll_fn(|cx| self.poll_parts_done(cx)).await;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Upload::Started(upload) = &mut self.upload else {
            unreachable!("the upload was started above");
        };
        let upload = upload.get_mut().unwrap_or_else(PoisonError::into_inner);
        let put = upload
            .complete()
            .await
            .map_err(|e| store_error(Op::Complete, &self.location, e))?;
        self.completed = true;
        Ok(put)
    }
}

/// Lets the parts in flight end (an abort racing a part's upload may leave
/// that part behind on some stores), then aborts.
async fn abort_upload(
    upload: Upload,
    mut parts: JoinSet<object_store::Result<()>>,
    location: ObjectPath,
) -> Result<(), Error> {
    while parts.join_next().await.is_some() {}
    let mut upload = match upload {
        Upload::None => return Ok(()),
        Upload::Started(upload) => upload.into_inner().unwrap_or_else(PoisonError::into_inner),
        Upload::Starting(start) => {
            let start = start.into_inner().unwrap_or_else(PoisonError::into_inner);
            start
                .await
                .map_err(|e| store_error(Op::StartUpload, &location, e))?
        }
    };
    upload
        .abort()
        .await
        .map_err(|e| store_error(Op::Abort, &location, e))
}

impl Inner {
    /// The abort of the upload, taken out of `self`: waits for the parts
    /// in flight, then aborts. `None` when there is nothing to abort (no
    /// upload, or it completed).
    fn take_abort(&mut self) -> Option<impl Future<Output = Result<(), Error>> + Send + 'static> {
        if self.completed || matches!(self.upload, Upload::None) {
            return None;
        }
        let upload = std::mem::replace(&mut self.upload, Upload::None);
        let parts = std::mem::take(&mut self.parts);
        Some(abort_upload(upload, parts, self.location.clone()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never panics: without a runtime the upload stays behind, for the
        // bucket's lifecycle rule; a failed abort is dropped (`rollback`
        // reports it).
        if let (Some(abort), Ok(runtime)) =
            (self.take_abort(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = abort.await;
            });
        }
    }
}

impl AsyncWrite for AsyncAtomicObject {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner_mut().poll_write(cx, buf)
    }

    /// Uploads the full parts and waits for every part in flight; the
    /// bytes of a part not yet full stay buffered (S3 takes no part under
    /// 5 MiB but the last). Publishes nothing.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner_mut().poll_flush(cx)
    }

    /// As `flush`: publishes nothing (`tokio::io::copy` callers often shut
    /// their sink down); [`commit`](AsyncAtomicObject::commit) publishes,
    /// and still works after it.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner_mut().poll_flush(cx)
    }
}
