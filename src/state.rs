//! Feature `serde`: [`StateFile`], a value kept in a JSON file, updated in
//! memory and committed in groups: many concurrent updates share one
//! atomic, durable replacement of the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::core::batch::{Batch, Batches};
use crate::core::resolve::Found;
use crate::{blocking, core, trace, Error, Op, OpenOptions};

/// How an update hears of the commit that carried it.
type Waiter = oneshot::Sender<Result<(), Error>>;

/// A value of type `T` kept in a JSON file, for an async service's state: a
/// web server's settings, a counter, a job queue. Every
/// [`update`](Self::update) returns once a commit that includes its change
/// is durable, and concurrent updates share commits (group commit), so a
/// busy server pays one file `fsync` and one directory `fsync` for many
/// updates instead of one pair each.
///
/// - **Group commit.** Updates are applied in the order they arrive to a
///   working copy in memory. One commit is in flight at a time (the
///   file's usual atomic, durable replacement, as
///   [`write_json`](crate::write_json) does it); every update applied
///   while it runs goes into the next one, which starts as soon as it
///   ends. An update returns `Ok` only after the commit that carries it
///   returned `Ok` (with [`Durability::Full`](crate::Durability::Full):
///   after its `fsync`s). With one caller at a time it costs what a
///   `write_json` per update costs: a commit starts at once, with no timer
///   or added delay.
/// - **Failures.** A failed commit fails every update it carried, with
///   its error (the first update gets the error itself, the others a copy:
///   same step, path and cause), and so does every update applied after
///   them, since each ran
///   on top of the lost changes. The working copy goes back to the last
///   committed state, and later updates start from there. No update is
///   acknowledged that a later crash could lose.
///
///   One failure is neither: an [`Op::SyncDir`] error (or any other with
///   [`Error::is_published`] true), where the new content is in the file
///   but its durability is unknown. Its updates get that error, but the
///   committed state and the working copy keep their changes (they are
///   what the file holds), and the next commit syncs the directory again.
/// - **Reads.** [`read`](Self::read) sees exactly the last committed state,
///   never a change that a failed commit could still undo (but for the
///   published case above); an update returns after its change is visible
///   to `read`. A missing file reads as `init()` until the first commit
///   creates it.
/// - **One owner.** [`open`](Self::open) takes the lock of the lock file
///   `.{name}.lock` beside the state, the one [`update`](crate::update)
///   takes: an `update` of the same file, in this process or another,
///   waits while a `StateFile` holds it, and a second `open` fails at once
///   with an [`Op::Lock`] error of kind
///   [`WouldBlock`](std::io::ErrorKind::WouldBlock), naming the state's
///   path. The lock is released when every handle (clone) is dropped and a
///   commit in flight has finished (as with any `flock`, a child process
///   forked meanwhile holds it too, until its `exec` closes its copy of
///   the descriptor). With [`OpenOptions::lock_file`]`(false)`
///   there is no lock: one owner is then the caller's promise, and a
///   second owner's commits overwrite the first's.
///
/// The value is written as compact JSON (`serde_json`), atomically and
/// durably as [`OpenOptions`] say; the commits run on the blocking pool,
/// the serialising included. Cloning a `StateFile` clones a handle to the
/// same state.
///
/// # Panics in `f`
///
/// A panic in an update's `f` is resumed in the caller of `update`, and
/// never leaves a half-applied change: the working copy goes back to the
/// last state taken for a commit (the committed state, when no commit is
/// in flight). That undoes the updates applied since that commit started
/// and not yet carried by one; they fail with an [`Op::Apply`] error (their
/// changes were never written). A commit in flight goes on. With one
/// caller at a time, nothing but the panicking update is undone.
///
/// The other way, a copy of the working copy taken before every `f`,
/// would fail the panicking update alone, but cost a `T::clone` per update
/// under the state's lock, where every update waits: a clone per commit
/// (of the snapshot it writes) is all this type pays. `benches/state.rs`
/// measures what a clone per update would cost.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("state.json");
/// use serde::{Deserialize, Serialize};
/// use tokio_atomic_write::StateFile;
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Visits {
///     count: u64,
/// }
///
/// let state = StateFile::open(&path, Visits::default).await?;
/// // Returns once the new count is durable in the file.
/// let n = state
///     .update(|v| {
///         v.count += 1;
///         v.count
///     })
///     .await?;
/// assert_eq!(n, 1);
/// assert_eq!(state.read(|v| v.count), 1);
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"count":1}"#);
///
/// // One owner at a time: a second open fails while `state` lives.
/// let busy = StateFile::open(&path, Visits::default).await.unwrap_err();
/// assert_eq!(busy.kind(), std::io::ErrorKind::WouldBlock);
/// # Ok(())
/// # }
/// ```
pub struct StateFile<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    /// The path as given, for `path()` and errors.
    path: PathBuf,
    options: OpenOptions,
    /// The entry found at open: every commit replaces it (looked at again,
    /// never the path resolved anew).
    found: Found,
    batches: Mutex<Batches<T, Waiter>>,
    /// The last committed state, for `read`: its own lock, so that readers
    /// never wait for an update's `f` or a commit.
    committed: RwLock<Arc<T>>,
    /// The lock file, its lock held while this lives: dropped with the last
    /// handle, after a commit in flight (whose job holds one) has ended.
    lock: Option<std::fs::File>,
}

impl<T> Clone for StateFile<T> {
    fn clone(&self) -> Self {
        StateFile {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for StateFile<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.options.durability)
            .field("lock_file", &self.inner.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> StateFile<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Opens the state kept in the JSON file at `path`, with the default
    /// [`OpenOptions`] ([`Durability::Full`](crate::Durability::Full)):
    /// takes the file's lock, sweeps the crate's leftover temp files of
    /// this file (those no live writer holds: a process killed inside a
    /// commit leaves one; other files' are left alone), and loads it, or
    /// calls `init` when there is no file (nothing is written until the
    /// first update).
    ///
    /// The path is resolved once (links followed, under the rules of
    /// [`OpenOptions::follow_symlinks`]): every commit replaces the file
    /// found now, in the directory found now, even if the path comes to
    /// name another.
    ///
    /// # Errors
    ///
    /// Nothing on disk changes but the lock file's creation and the sweep.
    /// [`Op::Open`] or [`Op::OpenDir`] for a bad path (as
    /// [`update`](crate::update)); [`Op::Lock`] of kind
    /// [`WouldBlock`](std::io::ErrorKind::WouldBlock), naming `path`, when
    /// another owner holds the lock (another `StateFile` of the file, in
    /// this process or another, or an `update` of it in progress);
    /// [`Op::Read`]; [`Op::Deserialize`] when the file holds no `T` in
    /// JSON (the file is left as it is).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes gives up the open: a lock
    /// already taken is released once the job on the blocking pool ends
    /// (the sweep it started finishes there).
    pub async fn open(path: impl AsRef<Path>, init: impl FnOnce() -> T) -> Result<Self, Error> {
        Self::open_with(&OpenOptions::new(), path, init).await
    }

    /// [`open`](Self::open) with `options`: durability, mode, permissions
    /// and owner, symlinks, temp files and [`lock_file`](OpenOptions::lock_file)
    /// apply to the state file and its commits as to
    /// [`write`](OpenOptions::write). [`overwrite`](OpenOptions::overwrite)`(false)`
    /// is refused ([`Op::Open`], `InvalidInput`): every commit replaces the
    /// file.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    ///
    /// # Cancel safety
    ///
    /// As [`open`](Self::open).
    pub async fn open_with(
        options: &OpenOptions,
        path: impl AsRef<Path>,
        init: impl FnOnce() -> T,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let (opts, target) = (options.clone(), path.clone());
        let opened = blocking::run(move || {
            let opened = core::state::open(&opts, &target)?;
            // Under the lock, the file's own leftovers: a live writer's are
            // locked, and kept. Problems with single files do not stop the
            // open (as with `sweep`).
            let found = &opened.found;
            let _ = crate::sweep::sweep_leftovers_of(&found.dir, &found.dir_path, &found.name);
            Ok::<_, Error>(opened)
        })
        .await
        .map_err(|e| Error::new(Op::Open, &path, e))??;
        let value = match &opened.content {
            None => init(),
            Some(bytes) => match serde_json::from_slice(bytes) {
                Ok(value) => value,
                Err(e) => {
                    blocking::drop_in_background(opened);
                    return Err(Error::new(Op::Deserialize, &path, e.into()));
                }
            },
        };
        let batches = Batches::new(value);
        let committed = RwLock::new(batches.committed().clone());
        Ok(StateFile {
            inner: Arc::new(Inner {
                path,
                options: options.clone(),
                found: opened.found,
                batches: Mutex::new(batches),
                committed,
                lock: opened.lock,
            }),
        })
    }

    /// Applies `f` to the state, and returns its result once a commit that
    /// includes this change is durable.
    ///
    /// `f` runs at once, on the caller's task, under the state's lock: it
    /// should be quick (every other update waits for it), must not block,
    /// and cannot itself update this state. It sees every change applied
    /// before it, committed or not; [`read`](Self::read) meanwhile still
    /// sees the last committed state.
    ///
    /// # Errors
    ///
    /// The error of the commit that carried this change, or of an earlier
    /// one that failed after `f` ran (see the type's docs): the change is
    /// then lost, and `f`'s result with it. [`Op::Serialize`] when the
    /// state cannot be written as JSON; otherwise as
    /// [`write`](crate::write). With [`Error::is_published`] true (a failed
    /// directory sync) the change is in the file and kept, its durability
    /// unknown: do not apply it again.
    ///
    /// # Cancel safety
    ///
    /// `f` runs in the future's first poll. Dropped before that, nothing
    /// happens. Dropped after, the change is not undone: it is in the
    /// working copy, and the next commit carries it (a failure of that
    /// commit still undoes it); only its result and the news of its commit
    /// are lost.
    ///
    /// # Panics
    ///
    /// When `f` panics, with its panic, after undoing its changes (and
    /// those of the updates applied since the last commit started: see
    /// the type's docs).
    pub async fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let applied = self.inner.batches().apply(f, tx, || self.inner.undone());
        let (out, start) = match applied {
            Ok(applied) => applied,
            Err(panicked) => {
                for (waiter, result) in panicked.answers {
                    let _ = waiter.send(result);
                }
                std::panic::resume_unwind(panicked.payload);
            }
        };
        if start {
            // Not awaited: the commits go on whether or not anyone waits
            // for them. The job carries them all, one after the other,
            // until no update is left; its guard answers everyone should
            // the job never run (dropped unrun at shutdown) or panic.
            let guard = Abandon(Some(self.inner.clone()));
            blocking::spawn_detached(move || commit_all(guard));
        }
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            // The guard answers before it drops a waiter: not reached.
            Err(_) => Err(self.inner.lost()),
        }
    }

    /// Calls `f` with the last committed state, and returns what it
    /// returns. It never waits for an update's `f` or a commit: it sees
    /// the state as of the last commit that returned (never a change that
    /// could still be lost, but for a published commit of unknown
    /// durability: see the type's docs).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let committed = self
            .inner
            .committed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f(&committed)
    }

    /// The path the state was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl<T> Inner<T> {
    fn batches(&self) -> MutexGuard<'_, Batches<T, Waiter>> {
        // `apply` catches `f`'s panics: a poisoned lock can only come from
        // a panic in `T::clone`, after which the working copy is still
        // whole (a clone does not change what it clones).
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error for an update undone by a panic in a later one's `f`.
    fn undone(&self) -> Error {
        let why = "another update's closure panicked, and the changes applied since the last \
                   commit started were undone (this one was never written)";
        Error::new(Op::Apply, &self.path, std::io::Error::other(why))
    }

    /// The error for an update whose commit job was lost: never ran (the
    /// runtime shut down) or panicked.
    fn lost(&self) -> Error {
        let why = "the commit job on the blocking pool was lost (the runtime shut down, or it \
                   panicked)";
        Error::new(Op::Commit, &self.path, std::io::Error::other(why))
    }
}

/// Commits batch after batch until no update is left: one job on the
/// blocking pool for as long as updates keep coming.
fn commit_all<T>(mut guard: Abandon<T>)
where
    T: Serialize + Clone,
{
    let mut next = guard.state().batches().take();
    while let Some(batch) = next {
        let inner = guard.state();
        let outcome = commit_one(inner, &batch);
        let mut batches = inner.batches();
        let finished = batches.finish(batch, outcome);
        if let Some(committed) = finished.committed {
            // Visible to `read` before any update returns, and stored
            // before the next job can start (`take` below), so never
            // over a newer one.
            *inner
                .committed
                .write()
                .unwrap_or_else(PoisonError::into_inner) = committed;
        }
        next = batches.take();
        drop(batches);
        if next.is_none() {
            // Done: the state (and its lock, with the last handle) is let
            // go before anyone hears of this commit, so that an owner who
            // drops every handle once its update returned can open the
            // file again at once.
            guard.0 = None;
        }
        for (waiter, result) in finished.answers {
            // A dropped update's answer is nobody's.
            let _ = waiter.send(result);
        }
    }
    guard.0 = None;
}

/// Serialises one batch and commits it.
fn commit_one<T: Serialize>(inner: &Inner<T>, batch: &Batch<T>) -> Result<(), Error> {
    let bytes = serde_json::to_vec(&*batch.value)
        .map_err(|e| Error::new(Op::Serialize, &inner.path, e.into()))?;
    let span = trace::commit(&inner.path, inner.options.durability, bytes.len() as u64);
    span.in_scope(|| core::state::commit(&inner.options, &inner.path, &inner.found, &bytes))
}

/// The guard of a [`commit_all`] job: dropped still holding the state
/// (the job never ran, or panicked), it fails every update waiting and
/// ends the batch in flight, so that the next update starts a new job.
struct Abandon<T: Clone>(Option<Arc<Inner<T>>>);

impl<T: Clone> Abandon<T> {
    fn state(&self) -> &Inner<T> {
        self.0
            .as_deref()
            .expect("a job still at work holds the state")
    }
}

impl<T: Clone> Drop for Abandon<T> {
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else { return };
        let answers = inner.batches().abandon(inner.lost());
        for (waiter, result) in answers {
            let _ = waiter.send(result);
        }
    }
}
