//! The synchronous half of [`update`](crate::update): find the target once,
//! try the lock beside it without waiting, read what the target holds, and
//! later replace the very entry that was read; and the read alone.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::resolve::{self, Found};
use super::{name, Staged};
use crate::sys::{Dir, Kind, Meta};
use crate::{Error, Op, OpenOptions};

/// One try at starting an update: the entry found, the lock if taken, and
/// the content once read under the lock.
#[derive(Debug)]
pub(crate) struct Attempt {
    found: Found,
    /// The lock file, its lock held.
    lock: Option<File>,
    /// The content (`None` inside: no file yet), once read while no other
    /// update could change it: under the lock file's lock, or, without a
    /// lock file, after the caller took its in-process turn.
    old: Option<Option<Vec<u8>>>,
}

impl Attempt {
    /// Finds and checks the target (bad input fails here, before the lock
    /// file is created: nothing on disk changes), then, with a lock file,
    /// tries its lock and reads the target if it got it. Without a lock
    /// file nothing is read yet: the caller's turn is not taken.
    pub(crate) fn start(opts: &OpenOptions, target: &Path) -> Result<Attempt, Error> {
        let found = resolve::find_target(target, opts)?;
        found.check_replace(target)?;
        check_kind(&found, target)?;
        let attempt = Attempt {
            found,
            lock: None,
            old: None,
        };
        match opts.lock_file {
            true => attempt.again(opts, target),
            false => Ok(attempt),
        }
    }

    /// Tries the lock again (with a lock file) and reads the target once
    /// it holds the lock (or, without one, at once: the caller holds its
    /// turn). The same entry as found by [`start`](Self::start).
    pub(crate) fn again(mut self, opts: &OpenOptions, target: &Path) -> Result<Attempt, Error> {
        if opts.lock_file && self.lock.is_none() {
            self.lock = lock_beside(&self.found)?;
            if self.lock.is_none() {
                return Ok(self);
            }
        }
        let Found {
            dir,
            name,
            existing,
            ..
        } = &self.found;
        // A symlink left at the name is one not followed: its content never
        // reaches `f`, and the write replaces the link like a new file.
        let not_followed = existing.is_some_and(|m| m.kind == Kind::Symlink);
        let old = match not_followed {
            true => None,
            false => read_in(dir, name).map_err(|e| Error::new(Op::Read, target, e))?,
        };
        self.old = Some(old);
        Ok(self)
    }

    /// Whether the content is read, so that `f` can run.
    pub(crate) fn is_ready(&self) -> bool {
        self.old.is_some()
    }

    /// Gives up the lock, if held (returned, for the caller to close off
    /// its thread), and what was read under it.
    pub(crate) fn let_go(&mut self) -> Option<File> {
        self.old = None;
        self.lock.take()
    }

    /// Which file the update is of: see [`Found::key`].
    pub(crate) fn key(&self) -> (Option<(u64, u64)>, std::path::PathBuf) {
        self.found.key()
    }

    /// The entry found, the lock, and the content read.
    ///
    /// # Panics
    ///
    /// Unless [`is_ready`](Self::is_ready).
    pub(crate) fn into_parts(self) -> (Found, Option<File>, Option<Vec<u8>>) {
        let old = self.old.expect("read before f runs");
        (self.found, self.lock, old)
    }
}

/// Fails with [`Op::Open`], naming `target`, when the entry found is a
/// directory or anything else that is not a regular file (or a symlink not
/// followed, which is replaced like a new file).
fn check_kind(found: &Found, target: &Path) -> Result<(), Error> {
    let refuse = |e: io::Error| Err(Error::new(Op::Open, target, e));
    match found.existing.map(|m| m.kind) {
        Some(Kind::Dir) => refuse(io::ErrorKind::IsADirectory.into()),
        Some(Kind::Other) => refuse(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )),
        _ => Ok(()),
    }
}

/// Opens (or creates) the lock file `.{name}.lock` beside the entry and
/// tries its lock: `None` while another holder has it.
///
/// Its mode lets whoever may replace the target take the lock: read
/// permission for the owner, and for group and others where they may write
/// the directory (and it is not sticky). It holds no content, so it reveals none. In a sticky,
/// world-writable directory a lock file owned by neither this user nor the
/// directory's owner is refused, as a file to replace would be.
fn lock_beside(found: &Found) -> Result<Option<File>, Error> {
    let lock_name = name::lock_name(&found.name);
    let (_, dir_mode) = found.dir.owner_and_mode();
    // Group and others may replace the target where they may write the
    // directory, unless it is sticky: there only the target's owner (and
    // the directory's) may.
    let mode = match dir_mode & 0o1000 {
        0 => 0o600 | ((dir_mode & 0o022) << 1),
        _ => 0o600,
    };
    let allowed = |meta: &crate::sys::Meta| match resolve::may_use(&found.dir, meta) {
        true => Ok(()),
        false => Err(resolve::refused("lock file", "not used")),
    };
    found
        .dir
        .try_lock_file(&lock_name, mode, allowed)
        .map_err(|e| Error::new(Op::Lock, found.dir_path.join(&lock_name), e))
}

/// The write of an update: replaces the entry found by
/// [`Attempt::start`], looked at again (a symlink swapped in since is
/// replaced, not followed), never the path resolved anew.
pub(crate) fn write(
    opts: &OpenOptions,
    target: &Path,
    mut found: Found,
    contents: &[u8],
) -> Result<(), Error> {
    found
        .refresh(target)
        .and_then(|()| Staged::open_found(opts, target.to_path_buf(), found))
        .inspect_err(crate::trace::failed_before_commit)?
        .commit(contents)
}

/// The content of the regular file at `target`, following symlinks as
/// writes do (the sticky-directory rules included); `None` when there is
/// none. A directory, a FIFO or a device fails (without blocking), with the
/// path and [`Op::Read`].
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
pub(crate) fn read(target: &Path) -> Result<Option<Vec<u8>>, Error> {
    let Some((file, _)) = open_regular(target)? else {
        return Ok(None);
    };
    read_all(file)
        .map(Some)
        .map_err(|e| Error::new(Op::Read, target, e))
}

/// The regular file at `path` opened to read, found as [`read`] finds it:
/// `None` when there is none. Errors are [`Op::Read`] naming `path` (or
/// [`Op::OpenDir`] naming its directory). With the file, its metadata.
fn open_regular(path: &Path) -> Result<Option<(File, Meta)>, Error> {
    let found = resolve::find_to_read(path)?;
    let err = |e| Error::new(Op::Read, path, e);
    // Refused before any open: opening a device can have effects.
    match found.existing.map(|m| m.kind) {
        Some(Kind::Dir) => return Err(err(io::ErrorKind::IsADirectory.into())),
        Some(Kind::Other) => {
            let msg = "not a regular file";
            return Err(err(io::Error::new(io::ErrorKind::InvalidInput, msg)));
        }
        _ => {}
    }
    found.dir.open_read(&found.name).map_err(err)
}

/// The source of a copy, opened to read, with its metadata: as
/// [`open_regular`], and a missing file is the OS error (`ENOENT`).
pub(crate) fn open_source(path: &Path) -> Result<(File, Meta), Error> {
    open_regular(path)?.ok_or_else(|| Error::new(Op::Read, path, crate::sys::not_found()))
}

fn read_in(dir: &Dir, name: &std::ffi::OsStr) -> io::Result<Option<Vec<u8>>> {
    dir.open_read(name)?
        .map(|(file, _)| read_all(file))
        .transpose()
}

fn read_all(mut file: File) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
}
