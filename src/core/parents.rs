//! Missing directories above a target, created as `mkdir -p` creates them
//! ([`OpenOptions::create_parents`](crate::OpenOptions::create_parents)),
//! and made durable before anything is published inside.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use super::split;
use crate::sys::Dir;
use crate::{Durability, Error, Op};

/// Creates the directory `path` and every missing one above it, each with
/// mode `0o777` less the umask (the kernel applies it, or the parent's
/// default ACL), a directory that another process creates meanwhile
/// taken as it is. With [`Durability::Full`] each directory that was
/// missing is synced, and then the one that holds it: its entry must not
/// vanish in a power cut after a file published inside it is durable.
/// That holds for a directory another process created in the race too,
/// which may not have synced it yet.
///
/// Each missing directory is created and opened through its parent's
/// descriptor, without following a link planted at its name: an entry
/// there that is not a directory fails with [`Op::CreateDir`]. Above the
/// first directory that exists, the kernel walks the path, as for any
/// `open`.
///
/// # Errors
///
/// [`Op::OpenDir`] naming a directory that exists but cannot be opened
/// (or a path without a directory to create, such as one ending in
/// `..`), [`Op::CreateDir`] naming the directory that could not be
/// created, opened or synced. A directory created before the error stays.
pub(crate) fn create(path: &Path, durability: Durability) -> Result<(), Error> {
    let durable = durability == Durability::Full;
    let (mut dir, at, missing) = walk_up(path)?;
    if missing.is_empty() {
        // The caller found `path` missing, and another process has made
        // it since: synced here all the same, as it may not have yet.
        if durable {
            let err = |e| Error::new(Op::CreateDir, path, e);
            dir.sync().map_err(err)?;
            if let Ok((parent, _)) = split(path) {
                Dir::open(parent).and_then(|p| p.sync()).map_err(err)?;
            }
        }
        return Ok(());
    }
    let mut dir_path = at.to_path_buf();
    for name in missing.into_iter().rev() {
        let child_path = dir_path.join(name);
        let err = |e| Error::new(Op::CreateDir, &child_path, e);
        let raced = match dir.create_dir(name, 0o777) {
            Ok(()) => false,
            // Another creator was first: fine, if it made a directory
            // (the open below refuses anything else).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(err(e)),
        };
        let child = dir.open_dir(name).map_err(|e| match raced {
            true => err(io::Error::new(
                e.kind(),
                format!("exists, and is not a directory (a symlink is not followed): {e}"),
            )),
            false => err(e),
        })?;
        if durable {
            // The new directory's own inode, then the entry naming it.
            child.sync().map_err(err)?;
            dir.sync().map_err(err)?;
        }
        (dir, dir_path) = (child, child_path);
    }
    Ok(())
}

/// The nearest directory at or above `path` that exists, opened: where
/// [`create`] would make the first missing one (so its filesystem is the
/// one they would be on). `None` when none can be opened.
pub(crate) fn nearest_existing(path: &Path) -> Option<Dir> {
    walk_up(path).ok().map(|(dir, _, _)| dir)
}

/// Up from `path` to the first directory that can be opened: that
/// directory, its path, and the names missing below it on the way to
/// `path` (the deepest first).
fn walk_up(path: &Path) -> Result<(Dir, &Path, Vec<&OsStr>), Error> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match Dir::open(at) {
            Ok(dir) => return Ok((dir, at, missing)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match split(at) {
                Ok((parent, name)) => {
                    missing.push(name);
                    at = parent;
                }
                Err(_) => return Err(Error::new(Op::OpenDir, at, e)),
            },
            Err(e) => return Err(Error::new(Op::OpenDir, at, e)),
        }
    }
}
