//! [`update`]: read, modify, write, with no change lost to a concurrent
//! update of the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::{blocking, core, trace, Error, Op, OpenOptions};

/// Replaces the file at `path` with what `f` makes of its current content,
/// so that concurrent updates never lose one another's changes: a
/// read-modify-write, atomic and durable like [`write`](crate::write).
///
/// `f` gets the content (`None` when there is no file yet) and returns the
/// new one, or an error, which leaves the file as it was and is returned
/// as is. Updates of one path are serialised within the process, and,
/// through an advisory lock on `.{name}.lock` beside the target, across
/// processes (see [`OpenOptions::lock_file`]). Plain writes do not take
/// the lock: a `write` racing an update may be overwritten by it.
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
/// lock file included), [`Op::Lock`], [`Op::Read`], then as
/// [`AsyncAtomicFile::commit`](crate::AsyncAtomicFile::commit).
///
/// # Cancel safety
///
/// Dropping the future while it waits for another update of the path, or
/// for the lock, gives up its turn and changes nothing. Once `f` has run,
/// the write runs to its end on the pool, and the path stays locked until
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
    /// create the file: an existing one fails the commit.
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
        // In-process turn first, so that waiting updates of one path hold
        // no pool thread; the lock file then orders the processes.
        let turn = path_lock(&target).lock_owned().await;
        let (opts, to_read) = (self.clone(), target.clone());
        let (turn, locked) = blocking::run(move || {
            let locked = core::update::lock_and_read(&opts, &to_read);
            (turn, locked)
        })
        .await
        .map_err(|e| Error::new(Op::Read, &target, e))?;
        let (lock, old) = locked?;
        let new = f(old)?;
        let (opts, to_write) = (self.clone(), target.clone());
        let span = trace::commit(&target, self.durability, new.len() as u64);
        blocking::run(move || {
            let written = span.in_scope(|| core::write(&opts, to_write, &new));
            // Unlocked once the commit is over, whether or not anyone
            // still waits for this future.
            drop(lock);
            drop(turn);
            written
        })
        .await
        .map_err(|e| Error::new(Op::Write, &target, e))??;
        Ok(())
    }
}

/// One async mutex per path (made absolute, not resolved) with an update
/// running or waiting, so that updates in one process take turns without
/// blocking pool threads on the lock file. Entries die with their last
/// user and are pruned as the map grows.
struct Turns {
    map: HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>,
    prune_at: usize,
}

static TURNS: Mutex<Option<Turns>> = Mutex::new(None);

fn path_lock(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
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

    #[test]
    fn one_path_one_mutex_and_dead_entries_are_pruned() {
        let a = path_lock(Path::new("/some/where/a"));
        let again = path_lock(Path::new("/some/where/./a"));
        assert!(Arc::ptr_eq(&a, &again), "same absolute path, same turn");
        for i in 0..1000 {
            drop(path_lock(Path::new(&format!("/pruned/{i}"))));
        }
        let turns = TURNS.lock().unwrap();
        let len = turns.as_ref().unwrap().map.len();
        assert!(len <= 200, "{len} entries kept for 1000 dead paths");
        drop(turns);
        assert!(Arc::ptr_eq(&a, &path_lock(Path::new("/some/where/a"))));
    }
}
