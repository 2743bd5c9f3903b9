//! [`AsyncAtomicDir`]: a directory tree published all at once, and
//! [`AsyncDirFile`], a file written inside it.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::blocking::{self, TokioPool};
use crate::core::tree::{Tree, TreeFile};
use crate::pipeline::{Pipeline, DEFAULT_SEGMENTS};
use crate::{Durability, Error, Op, DEFAULT_BUFFER_SIZE};

/// What [`commit`](crate::AsyncAtomicDir::commit) does when something is
/// already at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exists {
    /// Fail with [`ErrorKind::AlreadyExists`](io::ErrorKind::AlreadyExists)
    /// ([`Op::Rename`]), and remove the temp tree. The check and the publish
    /// are one step: of fillers racing for one target exactly one succeeds.
    Fail,
    /// First writer wins: publish only if nothing is there, and otherwise
    /// remove the temp tree and return [`Published::Existing`]. For
    /// contents fully determined by the name, such as a content-addressed
    /// cache, where losing the race is success.
    Keep,
    /// Last writer wins: swap the new tree in, in one step, and remove the
    /// old one afterwards, off the caller's path. See
    /// [`AsyncAtomicDir::commit`](crate::AsyncAtomicDir::commit) for the
    /// fallback where the filesystem cannot swap.
    Replace,
}

/// Whose tree is at the target after a successful
/// [`commit`](crate::AsyncAtomicDir::commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Published {
    /// This commit's tree.
    Ours,
    /// With [`Exists::Keep`]: another writer's tree, already there; this
    /// commit's tree was removed.
    Existing,
}

/// A directory tree that appears at its target all at once, or not at all.
///
/// [`create`](Self::create) makes a hidden temp directory beside the target
/// (`.{name}.{random}.tmp`, in the same directory, so the publishing rename
/// never crosses a filesystem). Fill it through [`path`](Self::path) with
/// any tool, or with [`file`](Self::file), an [`AsyncWrite`] with the
/// buffering of [`AsyncAtomicFile`](crate::AsyncAtomicFile). Then
/// [`commit`](Self::commit) syncs the whole tree and publishes it with one
/// rename, deciding by [`Exists`] what happens to a tree already there.
/// Readers of the target see the old tree or the new one, never a tree
/// half built.
///
/// Dropping it without committing removes the temp tree, on the blocking
/// pool.
///
/// # Examples
///
/// A cache entry filled once, however many tasks or processes race for it:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let scratch = tempfile::tempdir().unwrap();
/// # let entry = scratch.path().join("ab12");
/// use tokio::io::AsyncWriteExt;
/// use tokio_atomic_write::{AsyncAtomicDir, Exists, Published};
///
/// let dir = AsyncAtomicDir::create(&entry).await?;
/// tokio::fs::write(dir.path().join("data.bin"), b"payload").await.unwrap();
/// let mut meta = dir.file("meta.json").await?;
/// meta.write_all(br#"{"len":7}"#).await.unwrap();
/// meta.finish().await?;
/// match dir.commit(Exists::Keep).await? {
///     Published::Ours => println!("filled"),
///     Published::Existing => println!("another filler was first"),
/// }
/// assert_eq!(std::fs::read(entry.join("data.bin")).unwrap(), b"payload");
/// # Ok(())
/// # }
/// ```
pub struct AsyncAtomicDir {
    /// `None` once committed or rolled back.
    tree: Option<Tree>,
    path: PathBuf,
    target: PathBuf,
    buffer_size: usize,
    /// What the tree's files tell its `commit`; shared with them.
    files: Arc<Files>,
}

/// The files of a tree, as its `commit` must know them: shared between an
/// [`AsyncAtomicDir`] and its [`AsyncDirFile`]s, borrowed or owned.
#[derive(Debug, Default)]
struct Files(Mutex<FilesState>);

#[derive(Debug, Default)]
struct FilesState {
    /// The first file dropped or failed before its `finish` succeeded:
    /// the tree may be incomplete, and `commit` refuses it.
    unfinished: Option<PathBuf>,
    /// Files created and not yet dropped (an owned one may outlive a
    /// `commit` call), each with how many are open under that path:
    /// `commit` refuses the tree while one is open.
    open: HashMap<PathBuf, usize>,
}

impl Files {
    fn state(&self) -> std::sync::MutexGuard<'_, FilesState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_unfinished(&self, file: &Path) {
        self.state()
            .unfinished
            .get_or_insert_with(|| file.to_path_buf());
    }

    /// A file ends (dropped, finished or not): no longer open.
    fn closed(&self, file: &Path, finished: bool) {
        let mut state = self.state();
        if let Some(n) = state.open.get_mut(file) {
            *n -= 1;
            if *n == 0 {
                state.open.remove(file);
            }
        }
        if !finished {
            state.unfinished.get_or_insert_with(|| file.to_path_buf());
        }
    }
}

impl fmt::Debug for AsyncAtomicDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncAtomicDir")
            .field("target", &self.target)
            .field("path", &self.path)
            .finish()
    }
}

/// Options for creating an [`AsyncAtomicDir`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let scratch = tempfile::tempdir().unwrap();
/// use tokio_atomic_write::{AsyncAtomicDir, Durability, Exists};
///
/// // A build output that can be rebuilt: atomic, not worth the fsyncs.
/// let dir = AsyncAtomicDir::options()
///     .durability(Durability::None)
///     .mode(0o755)
///     .create(scratch.path().join("out"))
///     .await?;
/// dir.commit(Exists::Replace).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DirOptions {
    durability: Durability,
    mode: Option<u32>,
    buffer_size: usize,
    create_parents: bool,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            durability: Durability::Full,
            mode: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            create_parents: false,
        }
    }
}

impl DirOptions {
    /// The defaults: [`Durability::Full`], the root keeps a replaced
    /// directory's mode (a new one gets `0o777` less the umask), files
    /// buffer [`DEFAULT_BUFFER_SIZE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// How hard [`commit`](AsyncAtomicDir::commit) works to make the tree
    /// durable (default [`Durability::Full`]: every file and directory of
    /// the tree is `fsync`ed before the rename, the target's directory
    /// after it).
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    /// The exact mode of the tree's root directory, umask not applied
    /// (unix). While the tree is built, its root is never open to group or
    /// others wider than the directory it will replace, nor than this
    /// mode; its owner has full access until `commit` sets this mode.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = Some(mode);
        self
    }

    /// The buffer of each [`AsyncDirFile`], as
    /// [`OpenOptions::buffer_size`](crate::OpenOptions::buffer_size).
    pub fn buffer_size(&mut self, size: usize) -> &mut Self {
        self.buffer_size = size.max(1);
        self
    }

    /// Whether missing directories above the tree are created (default
    /// `false`), as [`OpenOptions::create_parents`](crate::OpenOptions::create_parents)
    /// creates them: `0o777` less the umask, racing creators no error,
    /// and with [`Durability::Full`] each one synced with the directory
    /// that holds it before the tree is published.
    pub fn create_parents(&mut self, create: bool) -> &mut Self {
        self.create_parents = create;
        self
    }

    /// Creates the temp tree for `path` with these options.
    ///
    /// # Errors
    ///
    /// As [`AsyncAtomicDir::create`].
    ///
    /// # Cancel safety
    ///
    /// As [`AsyncAtomicDir::create`].
    pub async fn create(&self, path: impl AsRef<Path>) -> Result<AsyncAtomicDir, Error> {
        let target = path.as_ref().to_path_buf();
        let (opts, path) = (self.clone(), target.clone());
        let tree = blocking::run(move || {
            Tree::create(path, opts.mode, opts.durability, opts.create_parents)
        })
        .await
        .map_err(|e| Error::new(Op::Open, &target, e))??;
        Ok(AsyncAtomicDir {
            path: tree.path().to_path_buf(),
            tree: Some(tree),
            target,
            buffer_size: self.buffer_size,
            files: Arc::default(),
        })
    }
}

impl AsyncAtomicDir {
    /// Creates an empty temp tree for the directory `path`, with the
    /// default options.
    ///
    /// Nothing is at `path` until [`commit`](Self::commit). The temp tree
    /// is `.{name}.{random}.tmp` beside it, created exclusively, locked so
    /// that [`sweep`](crate::sweep) leaves it alone while this process
    /// lives, and never open to group or others wider than a directory it
    /// will replace (its owner has full access until `commit`).
    ///
    /// # Errors
    ///
    /// [`Op::Open`] when `path` names no directory entry (empty, `..`) or
    /// something other than a directory is there (a symlink included: it is
    /// neither followed nor replaced); [`Op::OpenDir`] when its parent
    /// cannot be opened; [`Op::CreateTemp`] when the temp tree cannot be
    /// created. Nothing on disk changes.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing; after it,
    /// a temp tree created meanwhile is removed on the blocking pool.
    pub async fn create(path: impl AsRef<Path>) -> Result<AsyncAtomicDir, Error> {
        DirOptions::new().create(path).await
    }

    /// New [`DirOptions`], to set before [`create`](DirOptions::create).
    pub fn options() -> DirOptions {
        DirOptions::new()
    }

    /// The temp tree's path, to fill with any tool before
    /// [`commit`](Self::commit). Beside the target, in the directory given
    /// with it (relative if it was).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The target path, as given to `create`.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Creates the file at `name`, a relative path inside
    /// the tree whose directories exist, and returns it for writing.
    ///
    /// No symlink on the way is followed, and a file already at `name` is
    /// unlinked and created anew, never truncated (it may be a hard link to
    /// a file outside), so nothing outside the tree is written. Call [`AsyncDirFile::finish`] when done: a file dropped
    /// before `finish` succeeded makes [`commit`](Self::commit) fail,
    /// since the tree may then be incomplete.
    ///
    /// # Errors
    ///
    /// [`Op::CreateFile`], naming the file: `name` is absolute, has `..`,
    /// or names no file ([`InvalidInput`](io::ErrorKind::InvalidInput)); a
    /// directory on the way is missing or is a symlink; the file cannot be
    /// created.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after its first poll may leave the file created,
    /// empty, inside the temp tree; the tree's `commit` then fails, as
    /// after dropping the file.
    pub async fn file(&self, name: impl AsRef<Path>) -> Result<AsyncDirFile<'_>, Error> {
        self.make_file(name.as_ref()).await
    }

    /// [`file`](Self::file), owning what it needs: an
    /// `AsyncDirFile<'static>`, to move into a spawned task and fill there
    /// while other files of the tree are filled elsewhere.
    ///
    /// [`commit`](Self::commit) then checks at run time what the borrow
    /// of `file` checks at compile time: it fails while such a file is
    /// still open, neither finished nor dropped ([`Op::Write`], naming
    /// it), and, as for any file, when one was dropped before its `finish`
    /// succeeded.
    ///
    /// # Errors
    ///
    /// As [`file`](Self::file).
    ///
    /// # Cancel safety
    ///
    /// As [`file`](Self::file).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tokio_atomic_write::Error> {
    /// # let scratch = tempfile::tempdir().unwrap();
    /// use tokio::io::AsyncWriteExt;
    /// use tokio_atomic_write::{AsyncAtomicDir, Exists};
    ///
    /// let dir = AsyncAtomicDir::create(scratch.path().join("entry")).await?;
    /// let mut tasks = Vec::new();
    /// for i in 0..4 {
    ///     let mut file = dir.file_owned(format!("part-{i}")).await?;
    ///     tasks.push(tokio::spawn(async move {
    ///         file.write_all(format!("part {i}").as_bytes()).await?;
    ///         file.finish().await
    ///     }));
    /// }
    /// for task in tasks {
    ///     task.await.unwrap()?;
    /// }
    /// dir.commit(Exists::Replace).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn file_owned(&self, name: impl AsRef<Path>) -> Result<AsyncDirFile<'static>, Error> {
        self.make_file(name.as_ref()).await
    }

    /// Creates the file `name` of the tree, for a borrowed or an owned
    /// [`AsyncDirFile`].
    async fn make_file<'a>(&self, name: &Path) -> Result<AsyncDirFile<'a>, Error> {
        let path = self.path.join(name);
        let root = self.tree().root();
        let (rel, p) = (name.to_path_buf(), path.clone());
        // Dropped while the file is being created, the future may leave it
        // empty where an older one was: the tree then counts as unfinished.
        let cancelled = Unfinished {
            files: Some(&self.files),
            path: &path,
        };
        let created = blocking::run(move || crate::core::tree::create_file(&root, &rel, &p)).await;
        cancelled.disarm();
        let sink = created.map_err(|e| Error::new(Op::CreateFile, &path, e))??;
        *self.files.state().open.entry(path.clone()).or_default() += 1;
        Ok(AsyncDirFile {
            pipeline: Pipeline::new(sink, self.buffer_size, DEFAULT_SEGMENTS),
            path,
            files: self.files.clone(),
            finished: false,
            ended: false,
            _dir: PhantomData,
        })
    }

    fn tree(&self) -> &Tree {
        self.tree
            .as_ref()
            .expect("present until commit or rollback")
    }

    /// Publishes the tree at the target, atomically and, with
    /// [`Durability::Full`], durably. `exists` says what happens when
    /// something is already there.
    ///
    /// In one blocking-pool hop: `fsync`s every file and directory of the
    /// tree (symlinks are not followed); publishes it with one rename; then
    /// `fsync`s the target's directory. On `Ok(Published::Ours)` the tree
    /// is at the target and survives a power loss. On
    /// `Ok(Published::Existing)` ([`Exists::Keep`] only) the tree already
    /// there is kept, made durable by that same directory `fsync`, and this
    /// one is removed.
    ///
    /// - [`Exists::Fail`] and [`Exists::Keep`] publish with
    ///   `renameat2(RENAME_NOREPLACE)`: the check and the rename are one
    ///   step. Where the filesystem lacks the flag (FUSE, some network
    ///   filesystems) a plain `rename`, which refuses a non-empty
    ///   directory just as atomically, but replaces an **empty** one.
    /// - [`Exists::Replace`] swaps the trees with
    ///   `renameat2(RENAME_EXCHANGE)`: at every moment the target is the
    ///   old tree or the new one. Only a directory is replaced. The old
    ///   tree, now under the temp name, is removed on the blocking pool
    ///   after `commit` returns; a reader still inside it (by an open
    ///   directory handle) may see its files vanish. **Fallback** where the
    ///   filesystem cannot exchange: the old tree is renamed aside to
    ///   `.{name}.{random}.old`, then the new one renamed in. Between the
    ///   two renames the target is **missing**, and a reader gets
    ///   `NotFound`. If the second rename fails, the old tree is renamed
    ///   back; if the process dies between the two, [`sweep`](crate::sweep)
    ///   renames it back ([`SweepReport::restored`](crate::SweepReport)),
    ///   for target names up to 237 bytes (longer ones have no aside name:
    ///   sweep then removes both trees). Once the new tree is in, the old
    ///   one is renamed to a temp name before `commit` returns.
    ///
    /// A reader that must see one whole tree opens the target directory
    /// once and reads relative to that handle (`openat`): a walk by path
    /// across a `Replace` can mix the two trees.
    ///
    /// # Errors
    ///
    /// - [`Op::Write`], naming the file: a file from [`file`](Self::file)
    ///   was dropped, or failed, before its `finish` succeeded, or one from
    ///   [`file_owned`](Self::file_owned) is still open. Nothing is
    ///   published, and the temp tree is removed.
    /// - [`Op::SyncTemp`], naming the file or directory of the tree.
    /// - [`Op::SetPermissions`]: the root's final mode could not be set.
    /// - [`Op::Rename`]: of kind
    ///   [`AlreadyExists`](io::ErrorKind::AlreadyExists) with
    ///   [`Exists::Fail`] when the target exists, or with `Keep` when it is
    ///   not a directory.
    /// - [`Op::RemoveTemp`]: with `Keep`, the losing tree could not be
    ///   removed (the other tree is in place).
    /// - [`Op::Rename`] of kind
    ///   [`NotADirectory`](io::ErrorKind::NotADirectory) with `Replace`
    ///   when something other than a directory is at the target: it is
    ///   neither replaced nor removed.
    /// - [`Op::SyncDir`] comes after the publish: the new tree is visible,
    ///   its durability unknown ([`Error::is_published`]); or, after
    ///   `Existing`, the durability of the tree found there is.
    ///
    /// Until the publish the target is untouched, and an error removes the
    /// temp tree.
    ///
    /// # Cancel safety
    ///
    /// The commit runs in one hop that, once started, runs to its end:
    /// dropping the future does not stop it, and the target ends up with
    /// the old tree or the new one. Dropping it before its first poll is
    /// dropping the `AsyncAtomicDir`.
    pub async fn commit(mut self, exists: Exists) -> Result<Published, Error> {
        let refused = {
            let state = self.files.state();
            match (&state.unfinished, state.open.keys().next()) {
                (Some(file), _) => Some((
                    file.clone(),
                    "dropped or failed before `finish`: the tree may be incomplete",
                )),
                (None, Some(file)) => Some((
                    file.clone(),
                    "still open at the tree's commit: finish it first",
                )),
                (None, None) => None,
            }
        };
        if let Some((file, msg)) = refused {
            return Err(Error::new(Op::Write, file, io::Error::other(msg)));
        }
        let tree = self.tree.take().expect("present until commit");
        let (published, replaced) = blocking::run(move || tree.commit(exists))
            .await
            .map_err(|e| blocking::lost_commit(Op::Rename, &self.target, e))??;
        // The replaced trees are removed off the caller's path.
        if !replaced.is_empty() {
            blocking::drop_in_background(replaced);
        }
        Ok(published)
    }

    /// Discards the tree: removes it, reporting the errors that dropping it
    /// would swallow.
    ///
    /// # Errors
    ///
    /// [`Op::RemoveTemp`] when the temp tree cannot be removed whole.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after its first poll still removes the tree, on
    /// the pool, without a report.
    pub async fn rollback(mut self) -> Result<(), Error> {
        let tree = self.tree.take().expect("present until rollback");
        blocking::run(move || tree.rollback())
            .await
            .map_err(|e| Error::new(Op::RemoveTemp, &self.path, e))?
    }
}

/// Marks the tree unfinished when dropped armed.
struct Unfinished<'a> {
    files: Option<&'a Files>,
    path: &'a Path,
}

impl Unfinished<'_> {
    fn disarm(mut self) {
        self.files = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(files) = self.files {
            files.note_unfinished(self.path);
        }
    }
}

impl Drop for AsyncAtomicDir {
    /// Removes an uncommitted temp tree: on the blocking pool inside a
    /// runtime, at once outside one.
    fn drop(&mut self) {
        if let Some(tree) = self.tree.take() {
            blocking::drop_in_background(tree);
        }
    }
}

/// A file written inside an [`AsyncAtomicDir`]'s temp tree, from
/// [`AsyncAtomicDir::file`] (borrowing the directory), or
/// [`AsyncAtomicDir::file_owned`] (an `AsyncDirFile<'static>`, for a
/// spawned task).
///
/// The same buffering as [`AsyncAtomicFile`](crate::AsyncAtomicFile):
/// small writes gather in memory, full buffers go to the blocking pool while
/// the next fills, and the first write error is sticky. Its
/// [`finish`](Self::finish) writes the rest; the tree's
/// [`commit`](AsyncAtomicDir::commit) makes it durable and public.
pub struct AsyncDirFile<'a> {
    pipeline: Pipeline<TreeFile, TokioPool>,
    path: PathBuf,
    files: Arc<Files>,
    finished: bool,
    /// `finish` was called: a drop is no silent discard.
    ended: bool,
    _dir: PhantomData<&'a AsyncAtomicDir>,
}

impl fmt::Debug for AsyncDirFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncDirFile")
            .field("path", &self.path)
            .field("state", &self.pipeline.describe())
            .field("buffered", &self.pipeline.buffered())
            .finish()
    }
}

impl AsyncDirFile<'_> {
    /// The file's path inside the temp tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is still buffered and closes the file, in one
    /// blocking-pool hop. Its `fsync` is the tree's, at
    /// [`commit`](AsyncAtomicDir::commit).
    ///
    /// # Errors
    ///
    /// The first failed write ([`Op::Write`]), or [`Op::Close`]. The tree's
    /// `commit` then fails too.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may lose the buffered bytes: the tree's
    /// `commit` then fails, as after dropping the file.
    pub async fn finish(mut self) -> Result<(), Error> {
        self.ended = true;
        poll_fn(|cx| self.pipeline.poll_idle(cx)).await;
        let (sink, rest) = self
            .pipeline
            .take_parts()
            .map_err(|e| Error::new(Op::Write, &self.path, e))?;
        blocking::run(move || sink.finish(&rest))
            .await
            .map_err(|e| Error::new(Op::Write, &self.path, e))??;
        self.finished = true;
        Ok(())
    }
}

impl AsyncWrite for AsyncDirFile<'_> {
    /// Accepts bytes into the buffer; errors as
    /// [`AsyncAtomicFile`](crate::AsyncAtomicFile)'s.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.pipeline
            .poll_write(cx, buf)
            .map_err(|e| Error::new(Op::Write, &this.path, e).into())
    }

    /// Waits for the writes in flight; the buffer's rest is written by
    /// [`finish`](AsyncDirFile::finish).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.pipeline
            .poll_flush(cx)
            .map_err(|e| Error::new(Op::Write, &this.path, e).into())
    }

    /// Same as `poll_flush`: only [`finish`](AsyncDirFile::finish) ends
    /// the file.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for AsyncDirFile<'_> {
    /// A file dropped before its `finish` succeeded makes the tree's
    /// `commit` fail. Its descriptor is closed on the blocking pool.
    fn drop(&mut self) {
        if !self.ended {
            crate::trace::discarded(&self.path, self.pipeline.accepted());
        }
        self.files.closed(&self.path, self.finished);
        if let Some(sink) = self.pipeline.take_sink() {
            blocking::drop_in_background(sink);
        }
    }
}
