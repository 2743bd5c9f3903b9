//! [`sweep`]: removes the temp files and temp trees that killed processes
//! left behind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::core::name::is_temp_name;
use crate::sys::Dir;
use crate::{Error, Op};

/// What [`sweep`] found and did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// The leftover temp files (and trees) removed. If the directory could not be
    /// synced afterwards (in `failed`), a power cut may bring them back.
    pub removed: Vec<PathBuf>,
    /// Targets put back (older than `older_than` and unlocked, as for a
    /// removal): an atomic directory's commit with
    /// [`Exists::Replace`](crate::Exists::Replace), on a filesystem without
    /// `RENAME_EXCHANGE`, moves the old tree aside to `.{name}.{random}.old`
    /// for a moment; where its process died before the new tree was in, the
    /// target was missing, and `sweep` renamed the old tree back.
    pub restored: Vec<PathBuf>,
    /// Temp files kept because they were modified less than `older_than` ago.
    pub too_recent: Vec<PathBuf>,
    /// Temp files kept because a live writer, in this process or another,
    /// still holds them open: never removed, however old.
    pub in_use: Vec<PathBuf>,
    /// Entries with a leftover's name that this crate did not leave for
    /// the user sweeping: owned by another user, or (a directory) without
    /// the mark the crate puts on its temp trees when it makes them. Left
    /// alone, whatever their age.
    pub not_ours: Vec<PathBuf>,
    /// Temp files that could not be examined or removed (permissions, a
    /// read-only filesystem), each error naming the file; or a failed sync
    /// of the directory after the removals, naming it.
    pub failed: Vec<Error>,
}

/// Removes this crate's leftover temp files from `dir`: the ones a process
/// killed while writing (named temp files) or inside `commit` left behind;
/// and on unix the temp trees of [`AsyncAtomicDir`](crate::AsyncAtomicDir)
/// (a filler killed while building or committing, or a replaced tree not yet
/// removed).
///
/// A file is removed only when all of these hold:
/// - its name has the crate's temp-name shape, `.{name}.{12 random
///   characters}.tmp`, or (a directory only) the aside shape below:
///   nothing else in `dir` is touched;
/// - it belongs to the user sweeping (the effective uid), and a directory
///   carries the mark (an extended attribute, `user.tokio_atomic_write`)
///   that the crate puts on its temp trees when it makes them, and takes
///   off before it publishes them (or is empty: a process killed between
///   its `mkdir` and its mark leaves it so): never the name alone.
///   Anything else is left alone, in [`SweepReport::not_ours`]. A
///   filesystem without user extended attributes (many FUSE and network
///   shares) cannot carry the mark: there a tree is judged by its name and
///   owner alone, as before the mark. A lone file needs no mark: whoever
///   may rename a file into a temp name may delete it anyway;
/// - it is a regular file or a directory, not a symlink (a link is neither
///   followed nor removed) nor anything else;
/// - it was last modified at least `older_than` ago;
/// - no live writer holds it: every temp file is locked (`flock`) while the
///   process writing it lives, so a slow writer's file is never removed
///   under it, whatever its age. On filesystems without locks age alone
///   decides: keep `older_than` above the longest write. On Linux only a
///   lock held by a process of the user sweeping counts (`/proc/locks`
///   names the holders, by the process that took the lock, whose real uid
///   decides; a taker that is gone, or that this process cannot see (in
///   another PID namespace), counts for nothing: run `sweep` where the
///   writers' processes are visible): another user who can open a
///   leftover cannot keep it for ever by locking it.
///
/// When it removed anything, it syncs `dir` before returning (where the
/// platform can sync a directory: not on Windows), so that a power cut does
/// not bring the removed files back.
///
/// A temp tree is removed whole, depth first, without following any
/// symlink inside it and without entering a mount inside it (another
/// filesystem, or on Linux 5.8 and later a bind mount: that is a failure,
/// and nothing under the mount is touched); its
/// age is its root's modification time.
///
/// A directory named `.{name}.{12 random characters}.old` is a tree that an
/// [`Exists::Replace`](crate::Exists::Replace) commit, on a filesystem
/// without `RENAME_EXCHANGE`, moved aside for a moment before renaming the
/// new tree in (it is locked meanwhile, so in use). If its process died in
/// between, `name` is missing: under the same age and lock rules, the tree
/// is renamed back to `name` ([`SweepReport::restored`]); where `name`
/// exists again it is removed. (On those filesystems the rename back cannot
/// refuse an empty directory appearing at `name` at that very moment.) A
/// target name longer than 237 bytes gets no aside name: its old tree is
/// moved aside under a temp name, and then removed like one.
///
/// Only `dir` itself is searched for leftovers, not its subdirectories. Run it when a
/// service starts, for the directories it writes to. With the default
/// `O_TMPFILE` temp files on Linux, a crash leaves a file only if it struck
/// between the link and the rename of a commit.
///
/// # Errors
///
/// [`Op::OpenDir`] when `dir` cannot be opened or read. Problems with single
/// files do not stop the sweep: they are in [`SweepReport::failed`].
///
/// # Cancel safety
///
/// The sweep runs in one trip to the blocking pool; dropping the future
/// does not stop it, and its report is lost.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use std::time::Duration;
///
/// let report = tokio_atomic_write::sweep(dir.path(), Duration::from_secs(3600)).await?;
/// for path in &report.removed {
///     eprintln!("removed leftover {}", path.display());
/// }
/// # assert!(report.removed.is_empty());
/// # Ok(())
/// # }
/// ```
pub async fn sweep(dir: impl AsRef<Path>, older_than: Duration) -> Result<SweepReport, Error> {
    let dir = dir.as_ref().to_path_buf();
    let path = dir.clone();
    crate::blocking::run(move || sweep_now(&path, older_than))
        .await
        .map_err(|e| Error::new(Op::OpenDir, dir, e))?
}

/// The whole sweep, synchronously.
fn sweep_now(path: &Path, older_than: Duration) -> Result<SweepReport, Error> {
    let dir = Dir::open(path).map_err(|e| Error::new(Op::OpenDir, path, e))?;
    sweep_in(&dir, path, older_than, |n| {
        is_temp_name(n) || aside_target(n).is_some()
    })
}

/// The leftover temp files of the one file `name` in `dir` (at `path`),
/// whatever their age, but for those a live writer holds: what a
/// [`StateFile`](crate::StateFile) sweeps when it opens, holding the file's
/// lock.
#[cfg(feature = "serde")]
pub(crate) fn sweep_leftovers_of(
    dir: &Dir,
    path: &Path,
    name: &OsStr,
) -> Result<SweepReport, Error> {
    sweep_in(dir, path, Duration::ZERO, |n| {
        crate::core::name::is_temp_name_of(n, name)
    })
}

/// Sweeps the entries of `dir` (at `path`) whose names `candidate` picks.
fn sweep_in(
    dir: &Dir,
    path: &Path,
    older_than: Duration,
    candidate: impl Fn(&OsStr) -> bool,
) -> Result<SweepReport, Error> {
    let now = SystemTime::now();
    let mut names = dir.names().map_err(|e| Error::new(Op::OpenDir, path, e))?;
    names.retain(|n| candidate(n));
    names.sort();
    let mut report = SweepReport::default();
    for name in names {
        let entry = path.join(&name);
        let found = match dir.probe_leftover(&name) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                report.failed.push(Error::new(Op::Sweep, entry, e));
                continue;
            }
        };
        // A name alone proves nothing: a backup named like a leftover, or
        // a tree another user renamed to a temp name (a rename right must
        // not become a delete right), is left alone.
        if found.uid != crate::sys::euid() {
            report.not_ours.push(entry);
            continue;
        }
        if found.held {
            report.in_use.push(entry);
            continue;
        }
        // A modification time in the future (a clock set back) is age 0.
        let age = now.duration_since(found.modified).unwrap_or_default();
        if age < older_than {
            report.too_recent.push(entry);
            continue;
        }
        let aside = aside_target(&name);
        if aside.is_some() && !found.tree {
            continue; // only ever a directory: not ours
        }
        if found.tree && found.marked == Some(false) {
            // Not marked: another user's tree renamed to this name, or one
            // of ours whose process died between its `mkdir` and its mark,
            // which left it empty. Only an empty one goes: `rmdir` refuses
            // anything else, in one step.
            match dir.remove_dir(&name) {
                Ok(()) => report.removed.push(entry),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => report.not_ours.push(entry),
            }
            continue;
        }
        if let Some(target) = aside.filter(|t| matches!(dir.stat(t), Ok(None))) {
            // A tree moved aside by a replacing commit on a filesystem
            // without `RENAME_EXCHANGE`, whose process died before the new
            // tree was in: put it back where the target is missing.
            match put_back(dir, &name, target) {
                Ok(()) => {
                    #[cfg(unix)]
                    crate::core::tree::unmark_at(dir, target);
                    report.restored.push(path.join(target));
                    continue;
                }
                // The new tree is in (or another): this one is garbage.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.failed.push(Error::new(Op::Sweep, entry, e));
                    continue;
                }
            }
        }
        match remove_leftover(dir, &name, found.tree.then_some(found.id)) {
            Ok(()) => report.removed.push(entry),
            // Removed meanwhile, by another sweep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.failed.push(Error::new(Op::Sweep, entry, e)),
        }
        // `found` drops here: our lock on the removed file goes with it.
    }
    if !report.removed.is_empty() || !report.restored.is_empty() {
        // Otherwise a power cut can bring the removed names back.
        if let Err(e) = dir.sync() {
            report.failed.push(Error::new(Op::Sweep, path, e));
        }
    }
    Ok(report)
}

/// Removes a leftover: a temp file, or (`tree` holding the identity the
/// probe saw, if any) a whole temp tree.
fn remove_leftover(
    dir: &Dir,
    name: &OsStr,
    tree: Option<Option<(u64, u64)>>,
) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(id) = tree {
        return crate::core::tree::remove_tree(dir, name, id);
    }
    debug_assert!(tree.is_none(), "trees only on unix");
    dir.remove(name)
}

#[cfg(unix)]
use crate::core::name::aside_target;

/// Renames the tree moved aside at `name` back to `target`, only if
/// nothing is there.
#[cfg(unix)]
fn put_back(dir: &Dir, name: &OsStr, target: &OsStr) -> std::io::Result<()> {
    crate::sys::rename_dir_noreplace(dir, name, dir, target)
}

#[cfg(not(unix))]
fn put_back(_: &Dir, _: &OsStr, _: &OsStr) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// No aside names outside unix.
#[cfg(not(unix))]
fn aside_target(_: &OsStr) -> Option<&OsStr> {
    None
}
