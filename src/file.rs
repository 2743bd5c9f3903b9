//! [`AsyncAtomicFile`]: the async shell over the pipeline and the engine.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncSeek, AsyncWrite};

use crate::blocking::{self, TokioPool};
use crate::core::Staged;
use crate::pipeline::Pipeline;
use crate::trace;
use crate::{Durability, Error, Op, OpenOptions};

/// A file that replaces its target atomically when committed.
///
/// Bytes written go to a temp file in the target's directory, through a
/// buffer, on Tokio's blocking pool. [`commit`](Self::commit) publishes them
/// at the target in one step, so readers and crashes see the whole old
/// content or the whole new one. Dropping the file without committing
/// discards the temp file and leaves the target as it was.
///
/// # Feeding it from a file
///
/// A `tokio::io::copy` from a `tokio::fs::File` reads 8 KiB per trip to the
/// blocking pool: a 500 MiB file costs 64,000 trips. To copy a whole file,
/// use [`copy`](crate::copy) (one trip; the kernel moves the bytes, by a
/// reflink where it can). To transform or check the bytes on the way, read
/// through a `tokio::io::BufReader` of 1 MiB and use `copy_buf`, so each
/// trip reads a buffer's worth:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let (from, to) = (dir.path().join("input.bin"), dir.path().join("output.bin"));
/// # std::fs::write(&from, vec![1u8; 3 << 20])?;
/// use tokio::io::BufReader;
/// use tokio_atomic_write::AsyncAtomicFile;
///
/// let mut reader = BufReader::with_capacity(1 << 20, tokio::fs::File::open(&from).await?);
/// let mut file = AsyncAtomicFile::create(&to).await?;
/// tokio::io::copy_buf(&mut reader, &mut file).await?;
/// file.commit().await?;
/// # assert_eq!(std::fs::read(&to)?.len(), 3 << 20);
/// # Ok(())
/// # }
/// ```
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("state.json");
/// use tokio::io::AsyncWriteExt;
/// use tokio_atomic_write::AsyncAtomicFile;
///
/// let mut file = AsyncAtomicFile::create(&path).await?;
/// file.write_all(br#"{"n":1}"#).await?;
/// file.commit().await?;
/// assert_eq!(std::fs::read(&path)?, br#"{"n":1}"#);
/// # Ok(())
/// # }
/// ```
pub struct AsyncAtomicFile {
    pipeline: Pipeline<Staged, TokioPool>,
    target: PathBuf,
    /// For the commit's span.
    durability: Durability,
    /// `commit` or `rollback` was called: a drop is no silent discard.
    ended: bool,
}

impl fmt::Debug for AsyncAtomicFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncAtomicFile")
            .field("target", &self.target)
            .field("state", &self.pipeline.describe())
            .field("buffered", &self.pipeline.buffered())
            .finish()
    }
}

impl AsyncAtomicFile {
    /// Opens an atomic file for `path` with the default options: replace on
    /// commit, [`Durability::Full`](crate::Durability::Full), keep the
    /// target's permissions and owner, follow symlinks.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::open`].
    ///
    /// # Cancel safety
    ///
    /// As [`OpenOptions::open`]: a dropped open leaves nothing behind.
    pub async fn create(path: impl AsRef<Path>) -> Result<AsyncAtomicFile, Error> {
        OpenOptions::new().open(path).await
    }

    /// New [`OpenOptions`], to set before [`open`](OpenOptions::open).
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    pub(crate) async fn open_with(
        opts: OpenOptions,
        target: PathBuf,
    ) -> Result<AsyncAtomicFile, Error> {
        let (buffer_size, segments) = (opts.buffer_size, opts.write_segments);
        let durability = opts.durability;
        let path = target.clone();
        let span = trace::open(&target, opts.durability);
        let staged = blocking::run(move || span.in_scope(|| Staged::open(&opts, path)))
            .await
            .map_err(|e| Error::new(Op::Open, &target, e))??;
        Ok(AsyncAtomicFile {
            pipeline: Pipeline::new(staged, buffer_size, segments),
            target,
            durability,
            ended: false,
        })
    }

    /// The target path, as given to `open`.
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn write_error(&self, e: io::Error) -> Error {
        Error::new(Op::Write, &self.target, e)
    }

    /// Publishes everything written at the target, atomically and, with
    /// [`Durability::Full`](crate::Durability::Full), durably.
    ///
    /// Waits for the writes in flight, then in one blocking-pool hop: writes
    /// the rest of the buffer, applies the final mode, `fsync`s the temp
    /// file, renames it over the target (or links it in), and `fsync`s the
    /// directory. On `Ok` the target holds exactly the bytes written, and
    /// survives a power loss.
    ///
    /// # Errors
    ///
    /// The first failed write ([`Op::Write`], the original `io::Error` with
    /// it), or the failed step: [`Op::SetPermissions`], [`Op::SyncTemp`],
    /// [`Op::Link`], [`Op::Rename`] (with `overwrite(false)`, either one, of
    /// kind [`AlreadyExists`](io::ErrorKind::AlreadyExists), when another
    /// writer created the target since `open`: the message says the target
    /// already exists). Until then the target is untouched and the temp file is
    /// removed. [`Op::SyncDir`] comes after the rename: the new content is
    /// visible, its durability unknown ([`Error::is_published`]); the file
    /// is not removed, and `fsync` is not retried.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for writes in flight is dropping
    /// the file: the target is untouched and the temp file is removed. Once
    /// the commit hop has started, dropping the future does not stop it: the
    /// commit completes on the pool, or fails and removes its temp file.
    /// Either way the target is whole, old or new, and no temp file is left.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.ended = true;
        poll_fn(|cx| self.pipeline.poll_settle(cx)).await;
        let (staged, rest) = self
            .pipeline
            .take_parts()
            .map_err(|e| self.write_error(e))?;
        // A job that never ran failed at its first step, the write of the
        // rest, and its guard removed the temp file; one that panicked may
        // have published or not: `Op::Commit`.
        let span = trace::commit(&self.target, self.durability, self.pipeline.accepted());
        blocking::run(move || span.in_scope(|| staged.commit(&rest)))
            .await
            .map_err(|e| blocking::lost_commit(Op::Write, &self.target, e))?
    }

    /// Discards everything written and removes the temp file, reporting the
    /// errors that dropping the file would swallow.
    ///
    /// # Errors
    ///
    /// [`Op::RemoveTemp`] when the temp file cannot be removed. Errors of
    /// earlier writes are not reported: they are discarded with the data.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the file, which removes the temp file all
    /// the same, only without a report.
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.ended = true;
        poll_fn(|cx| self.pipeline.poll_idle(cx)).await;
        match self.pipeline.take_sink() {
            Some(staged) => blocking::run(move || staged.rollback())
                .await
                .map_err(|e| Error::new(Op::RemoveTemp, &self.target, e))?,
            // Lost with a failed job, whose drop on the pool removed it.
            None => Ok(()),
        }
    }
}

impl AsyncWrite for AsyncAtomicFile {
    /// Accepts bytes into the buffer. Errors of earlier writes surface here
    /// (and at `commit`); after one, every write fails with the same kind.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.pipeline
            .poll_write(cx, buf)
            .map_err(|e| this.write_error(e).into())
    }

    /// Waits for the writes in flight and reports their errors. Publishes
    /// nothing and makes nothing durable: only
    /// [`commit`](AsyncAtomicFile::commit) does. A partly filled buffer
    /// stays in memory, to be written by the next full buffer or by the
    /// commit in its one hop, so a flush (such as the one that ends every
    /// `tokio::io::copy`) costs no blocking-pool hop of its own. Errors
    /// writing those bytes (a full disk) therefore come from `commit`, not
    /// from the flush: for a file smaller than the buffer, from `commit`
    /// alone.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.pipeline
            .poll_flush(cx)
            .map_err(|e| this.write_error(e).into())
    }

    /// Same as `poll_flush`. Shutting down does **not** commit: only
    /// [`commit`](AsyncAtomicFile::commit) publishes.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl AsyncSeek for AsyncAtomicFile {
    /// Accepts a seek, to be carried out by `poll_complete`: the buffered
    /// bytes are written where they belong, then the temp file is
    /// repositioned, in one blocking-pool hop (none when the position does
    /// not change, as for `stream_position`). The position and the length
    /// are known without asking the file, which no one else writes: a seek
    /// past the end leaves a hole of zeros once written past, as in any
    /// file.
    ///
    /// A position before 0 or past `i64::MAX` fails here with
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) ([`Op::Seek`]) and
    /// changes nothing; the file stays usable. Like Tokio's `File`, a seek
    /// started while another is pending fails.
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = &mut *self;
        this.pipeline
            .start_seek(position)
            .map_err(|e| Error::new(Op::Seek, &this.target, e).into())
    }

    /// Carries out the pending seek and answers the position. Errors of
    /// earlier writes surface here too, and after one every call fails.
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = &mut *self;
        this.pipeline
            .poll_complete(cx)
            .map_err(|e| this.write_error(e).into())
    }
}

impl Drop for AsyncAtomicFile {
    /// Discards an uncommitted file: the temp file is removed on the
    /// blocking pool inside a runtime, at once outside one. A write still in
    /// flight keeps the temp file until it ends, then removes it. With the
    /// `tracing` feature, a file that accepted bytes and saw neither
    /// `commit` nor `rollback` says so in a `WARN` event (`DEBUG` while a
    /// panic unwinds), with its target and the bytes discarded.
    fn drop(&mut self) {
        if !self.ended {
            trace::discarded(&self.target, self.pipeline.accepted());
        }
        if let Some(staged) = self.pipeline.take_sink() {
            blocking::drop_in_background(staged);
        }
    }
}
