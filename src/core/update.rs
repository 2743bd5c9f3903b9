//! The synchronous half of [`update`](crate::update): take the lock beside
//! the target, then read what the target holds; and the read alone.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{look, name, resolve_symlinks, split};
use crate::sys::{Dir, Kind};
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
            // Never readable wider than the file it guards, now or as
            // `mode` will make it; empty anyway.
            let mode = existing.map_or(0o666, |m| m.mode) & opts.mode.unwrap_or(0o666) & 0o666;
            let lock = dir
                .lock_file(&lock_name, mode)
                .map_err(|e| Error::new(Op::Lock, parent.join(&lock_name), e))?;
            Some(lock)
        }
        false => None,
    };
    let old = read_in(&dir, file_name).map_err(|e| Error::new(Op::Read, target, e))?;
    Ok((lock, old))
}

/// The content of the regular file at `target`, following symlinks;
/// `None` when there is none. A directory, a FIFO or a device fails
/// (without blocking), with the path and [`Op::Read`].
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
pub(crate) fn read(target: &Path) -> Result<Option<Vec<u8>>, Error> {
    let err = |e| Error::new(Op::Read, target, e);
    let (parent, file_name) = split(target).map_err(err)?;
    let dir = Dir::open(parent).map_err(err)?;
    read_in(&dir, file_name).map_err(err)
}

fn read_in(dir: &Dir, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let Some(mut file) = dir.open_read(name)? else {
        return Ok(None);
    };
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(Some(content))
}
