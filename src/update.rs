//! [`update`]: read, modify, write, with no change lost to a concurrent
//! update of the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::core::update::Attempt;
use crate::{blocking, core, trace, Error, Op, OpenOptions};

/// Replaces the file at `path` with what `f` makes of its current content,
/// so that concurrent updates never lose one another's changes: a
/// read-modify-write, atomic and durable like [`write`](crate::write).
///
/// `f` gets the content (`None` when there is no file yet) and returns the
/// new one, or an error, which leaves the file as it was and is returned
/// as is. The path is resolved once, so the file read is the file replaced.
/// Updates of one file (however its path is spelled) are serialised within
/// the process, and, through an advisory lock on `.{name}.lock` beside the
/// file, across processes (see [`OpenOptions::lock_file`]). Plain writes do
/// not take the lock: a `write` racing an update may be overwritten by it.
///
/// With [`OpenOptions::follow_symlinks`]`(false)`, a symlink at the target
/// is not read through: `f` gets `None`, and the link is replaced like a
/// new file.
///
/// `f` runs on the caller's task, between two trips to the blocking pool
/// (lock and read; write, commit and unlock): it may borrow, and should
/// not block for long, since every other update of the path waits for it.
/// It must not itself update the same path: that update would wait for
/// this one forever.
///
/// # Errors
///
/// `f`'s error, or an [`Error`] converted into `E`: [`Op::Open`] or
/// [`Op::OpenDir`] for a bad target (before anything on disk changes, the
/// lock file included; `PermissionDenied` under the sticky-directory rules
/// of [`OpenOptions::follow_symlinks`]), [`Op::Lock`], [`Op::Read`], then
/// as [`AsyncAtomicFile::commit`](crate::AsyncAtomicFile::commit).
///
/// # Cancel safety
///
/// Dropping the future while it waits for another update of the file, or
/// for the lock, gives up its turn and changes nothing. The lock is tried
/// without blocking, between pauses of at most 64 ms on the blocking pool,
/// so a dropped update stops waiting within one pause, and another process
/// holding the lock keeps no runtime from shutting down. Once `f` has run,
/// the write runs to its end on the pool, and the file stays locked until
/// it has: the next update reads its result or the old content, whole.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("visits");
/// // A counter that no two processes can both increment from 41 to 42.
/// for _ in 0..2 {
///     tokio_atomic_write::update(&path, |old| {
///         let n: u64 = match old {
///             Some(bytes) => String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(0),
///             None => 0,
///         };
///         Ok::<_, tokio_atomic_write::Error>(format!("{}\n", n + 1).into_bytes())
///     })
///     .await?;
/// }
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
/// # Ok(())
/// # }
/// ```
pub async fn update<F, E>(path: impl AsRef<Path>, f: F) -> Result<(), E>
where
    F: FnOnce(Option<Vec<u8>>) -> Result<Vec<u8>, E>,
    E: From<Error>,
{
    OpenOptions::new().update(path, f).await
}

impl OpenOptions {
    /// [`update`](crate::update) with these options: the lock file
    /// ([`lock_file`](Self::lock_file)), durability, mode and the rest
    /// apply to the write. With `overwrite(false)` the update can only
    /// create the file: an existing one fails the write, after `f` has run
    /// ([`AlreadyExists`](std::io::ErrorKind::AlreadyExists)).
    ///
    /// # Errors
    ///
    /// As [`update`](crate::update).
    ///
    /// # Cancel safety
    ///
    /// As [`update`](crate::update).
    pub async fn update<F, E>(&self, path: impl AsRef<Path>, f: F) -> Result<(), E>
    where
        F: FnOnce(Option<Vec<u8>>) -> Result<Vec<u8>, E>,
        E: From<Error>,
    {
        let target = path.as_ref().to_path_buf();
        let start = {
            let (opts, target) = (self.clone(), target.clone());
            blocking::run(move || Attempt::start(&opts, &target))
        };
        let attempt = start
            .await
            .map_err(|e| Error::new(Op::Lock, &target, e))??;
        let (attempt, turn) = self.take_turn(&target, attempt).await?;
        let (found, lock, old) = attempt.into_parts();
        let new = f(old)?;
        let (opts, to_write) = (self.clone(), target.clone());
        let span = trace::commit(&target, self.durability, new.len() as u64);
        blocking::run(move || {
            let written = span.in_scope(|| core::update::write(&opts, &to_write, found, &new));
            // Unlocked once the commit is over, whether or not anyone
            // still waits for this future.
            drop(lock);
            drop(turn);
            written
        })
        .await
        .map_err(|e| blocking::lost_commit(Op::Write, &target, e))??;
        Ok(())
    }

    /// Waits for this file's turn among the updates of this process, then
    /// for its lock file's lock, until `attempt` has read the content under
    /// both. The turn is waited for on the async side; the lock is tried
    /// without blocking, between pauses of at most [`Backoff::MAX`] on the
    /// pool: a dropped update stops waiting within one pause, and another
    /// process holding the lock for ever delays no runtime's shutdown by
    /// more.
    async fn take_turn(
        &self,
        target: &Path,
        mut attempt: Attempt,
    ) -> Result<(Attempt, Turn), Error> {
        let turns = turn_for(attempt.key());
        // Just tried the lock file's lock, and did not get it?
        let mut just_tried = self.lock_file;
        let turn = match turns.clone().try_lock_owned() {
            Ok(turn) => turn,
            Err(_) => {
                // Another update of this file in this process has the turn
                // and will want the lock: let it go, and try again after.
                if let Some(lock) = attempt.let_go() {
                    blocking::drop_in_background(lock);
                }
                just_tried = false;
                turns.lock_owned().await
            }
        };
        let mut backoff = Backoff::default();
        while !attempt.is_ready() {
            // Another process holds the lock (when `just_tried`): a blocking
            // `flock` would hold a pool thread until it lets go, for ever if
            // it hangs, whether or not this future is still awaited. So the
            // lock is tried without waiting, after a pause on the pool
            // (short and bounded: Tokio's timers need a runtime built with
            // them, and a library cannot ask for that).
            let pause = match just_tried {
                true => backoff.next_pause(),
                false => Duration::ZERO,
            };
            let (opts, to_try) = (self.clone(), target.to_path_buf());
            attempt = blocking::run(move || {
                std::thread::sleep(pause);
                attempt.again(&opts, &to_try)
            })
            .await
            .map_err(|e| Error::new(Op::Lock, target, e))??;
            just_tried = self.lock_file;
        }
        Ok((attempt, turn))
    }
}

/// The pauses between tries of a lock another process holds: from 1 ms,
/// doubling up to 64 ms, each cut by a random part of up to a half so that
/// waiting processes do not try in step.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(1),
        }
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(64);

    fn next_pause(&mut self) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(pause.as_nanos() as u64);
        let cut = pause.as_nanos() as u64 / 2 * (h.finish() % 1024) / 1024;
        pause - Duration::from_nanos(cut)
    }
}

/// An update's turn at a file, among the updates of this process.
type Turn = tokio::sync::OwnedMutexGuard<()>;

/// Which file an update is of: see `Found::key`.
type TurnKey = (Option<(u64, u64)>, PathBuf);

/// One async mutex per file (its directory's identity and its name, found
/// with links followed, not the path as spelled) with an update running
/// or waiting, so that updates in one process take turns without polling
/// the lock file against each other. Entries die with their last user and
/// are pruned as the map grows.
struct Turns {
    map: HashMap<TurnKey, Weak<tokio::sync::Mutex<()>>>,
    prune_at: usize,
}

static TURNS: Mutex<Option<Turns>> = Mutex::new(None);

fn turn_for(key: TurnKey) -> Arc<tokio::sync::Mutex<()>> {
    let mut turns = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
    let turns = turns.get_or_insert_with(|| Turns {
        map: HashMap::new(),
        prune_at: 64,
    });
    if let Some(live) = turns.map.get(&key).and_then(Weak::upgrade) {
        return live;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    turns.map.insert(key, Arc::downgrade(&lock));
    if turns.map.len() > turns.prune_at {
        turns.map.retain(|_, w| w.strong_count() > 0);
        turns.prune_at = (turns.map.len() * 2).max(64);
    }
    lock
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: u64, name: &str) -> TurnKey {
        (Some((1, dir)), PathBuf::from(name))
    }

    #[test]
    fn one_file_one_mutex_and_dead_entries_are_pruned() {
        let a = turn_for(key(7, "a"));
        assert!(
            Arc::ptr_eq(&a, &turn_for(key(7, "a"))),
            "same file, same turn"
        );
        assert!(
            !Arc::ptr_eq(&a, &turn_for(key(8, "a"))),
            "another directory"
        );
        for i in 0..1000 {
            drop(turn_for(key(9, &i.to_string())));
        }
        let turns = TURNS.lock().unwrap();
        let len = turns.as_ref().unwrap().map.len();
        assert!(len <= 200, "{len} entries kept for 1000 dead paths");
        drop(turns);
        assert!(Arc::ptr_eq(&a, &turn_for(key(7, "a"))));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..12).map(|_| b.next_pause()).collect();
        assert!(pauses[0] <= Duration::from_millis(1));
        assert!(pauses[0] >= Duration::from_micros(500));
        for p in &pauses[8..] {
            assert!(*p <= Backoff::MAX && *p >= Backoff::MAX / 2, "{p:?}");
        }
    }
}
