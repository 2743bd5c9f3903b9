//! The synchronous half of a [`StateFile`](crate::StateFile): find the
//! file once and take its lock, read it, and commit it again and again to
//! the entry found.

use std::fs::File;
use std::io;
use std::path::Path;

use super::resolve::Found;
use super::update::Attempt;
use crate::{Error, Op, OpenOptions};

/// A state file found, locked (unless `lock_file(false)`), and read.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) found: Found,
    /// The lock file, its lock held for as long as this is kept.
    pub(crate) lock: Option<File>,
    /// The content; `None` when there is no file yet.
    pub(crate) content: Option<Vec<u8>>,
}

/// Finds the file `target` names (bad input fails here, before anything on
/// disk changes), takes its lock file's lock without waiting, and reads it.
/// A lock held by anyone else fails with [`Op::Lock`], of kind
/// `WouldBlock`, naming `target`.
pub(crate) fn open(opts: &OpenOptions, target: &Path) -> Result<Opened, Error> {
    if !opts.overwrite {
        let msg = "a state file is replaced by every commit: overwrite(false) cannot apply";
        let err = io::Error::new(io::ErrorKind::InvalidInput, msg);
        return Err(Error::new(Op::Open, target, err));
    }
    // As an `update` starts, but without waiting for the lock; without a
    // lock file, the read needs no turn (one owner is the caller's word).
    let mut attempt = Attempt::start(opts, target)?;
    if !opts.lock_file {
        attempt = attempt.again(opts, target)?;
    }
    if !attempt.is_ready() {
        let msg = "its lock file is held by another owner (a StateFile, or an update, in this \
                   process or another)";
        let err = io::Error::new(io::ErrorKind::WouldBlock, msg);
        return Err(Error::new(Op::Lock, target, err));
    }
    let (found, lock, content) = attempt.into_parts();
    Ok(Opened {
        found,
        lock,
        content,
    })
}

/// Replaces the entry `found` with `contents`, atomically and durably (as
/// `opts` say), the entry looked at again first (see
/// [`update::write`](super::update::write)).
pub(crate) fn commit(
    opts: &OpenOptions,
    target: &Path,
    found: &Found,
    contents: &[u8],
) -> Result<(), Error> {
    let found = found.try_clone()?;
    super::update::write(opts, target, found, contents)
}
