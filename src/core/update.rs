//! The synchronous half of [`update`](crate::update): take the lock beside
//! the target, then read what the target holds.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{look, name, resolve_symlinks, split};
use crate::sys::Kind;
use crate::{Error, Op, OpenOptions};

/// The lock held for one update (`None` without a lock file), and the
/// target's content (`None` when there is no target yet).
pub(crate) type Locked = (Option<File>, Option<Vec<u8>>);

/// Checks the target, takes the exclusive lock on its lock file (unless
/// `opts` opt out), and reads it. The lock file sits beside the file
/// finally replaced, symlinks followed as the write will follow them, so
/// that every path to one file shares one lock. Bad input fails before the
/// lock file is created: nothing on disk changes.
pub(crate) fn lock_and_read(opts: &OpenOptions, target: &Path) -> Result<Locked, Error> {
    let resolved = match opts.follow_symlinks {
        true => resolve_symlinks(target)?,
        false => target.to_path_buf(),
    };
    let (dir, existing) = look(&resolved, target)?;
    let (parent, file_name) = split(&resolved).map_err(|e| Error::new(Op::Open, target, e))?;
    let refuse = |e: io::Error| Err(Error::new(Op::Open, target, e));
    match existing.map(|m| m.kind) {
        Some(Kind::Dir) => return refuse(io::ErrorKind::IsADirectory.into()),
        Some(Kind::Other) => {
            return refuse(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ))
        }
        _ => {}
    }
    let lock = match opts.lock_file {
        true => {
            let lock_name = name::lock_name(file_name);
            // Never readable wider than the file it guards; empty anyway.
            let mode = existing.map_or(0o666, |m| m.mode & 0o666);
            let lock = dir
                .lock_file(&lock_name, mode)
                .map_err(|e| Error::new(Op::Lock, parent.join(&lock_name), e))?;
            Some(lock)
        }
        false => None,
    };
    let read_err = |e| Error::new(Op::Read, target, e);
    let old = match dir.open_read(file_name).map_err(read_err)? {
        Some(mut file) => {
            let mut old = Vec::new();
            file.read_to_end(&mut old).map_err(read_err)?;
            Some(old)
        }
        None => None,
    };
    Ok((lock, old))
}
