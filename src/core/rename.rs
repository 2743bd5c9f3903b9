//! The synchronous half of [`rename`](crate::rename): python
//! atomicwrites' `replace_atomic` and `move_atomic`, with the syncs that
//! make the new name survive a power cut.

use std::io;
use std::path::Path;
use std::time::Instant;

use super::{describe_rename_error, dir_failures, parents, resolve, split, sync_dir, Clock};
use crate::sys::{self, Dir, Kind, NoReplace};
use crate::{Durability, Error, Op, OpenOptions};

/// Moves `from` to `to` under `opts`: every error names `to` as its path
/// and `from` in its message. The time spent in syncs and in the rename
/// goes to the `commit` span (feature `tracing`), as a commit's does.
pub(crate) fn rename(opts: &OpenOptions, from: &Path, to: &Path) -> Result<(), Error> {
    let mut clock = Clock::default();
    let result = rename_steps(opts, from, to, &mut clock).map_err(|e| e.moving(from, to));
    crate::trace::committed(&clock, result.as_ref().err());
    result
}

fn rename_steps(
    opts: &OpenOptions,
    from: &Path,
    to: &Path,
    clock: &mut Clock,
) -> Result<(), Error> {
    let err = |op| move |e| Error::new(op, to, e);
    // `from` itself, never followed: a link moves as a link.
    let (from_parent, from_name) = split(from).map_err(err(Op::Open))?;
    let from_dir = Dir::open(from_parent).map_err(|e| Error::new(Op::OpenDir, from_parent, e))?;
    let source = from_dir
        .stat(from_name)
        .map_err(|e| Error::new(Op::Open, from, e))?
        .ok_or_else(|| Error::new(Op::Open, from, sys::not_found()))?;

    let cross_devices = || {
        let msg = "`from` and `to` are on different filesystems: a rename cannot move a file \
                   between them (nothing is copied)";
        Error::new(
            Op::Open,
            to,
            io::Error::new(io::ErrorKind::CrossesDevices, msg),
        )
    };
    if opts.create_parents {
        // Before any directory is made for `to`: none is made in vain.
        let to_parent = split(to).map_err(err(Op::Open))?.0;
        if parents::nearest_existing(to_parent).is_some_and(|d| d.device() != from_dir.device()) {
            return Err(cross_devices());
        }
    }
    // `to` as an entry, never followed, as rename(2) replaces it: a link
    // there is replaced by `from` (the atomic swap of a symlink), never
    // the file it points to. The sticky-directory rules apply to it.
    let mut entry_opts = opts.clone();
    entry_opts.follow_symlinks(false);
    let found = resolve::find_target(to, &entry_opts)?;
    found.check_replace(to)?;
    if found.dir.device() != from_dir.device() {
        return Err(cross_devices());
    }
    let is_dir = source.kind == Kind::Dir;
    match found.existing.map(|m| m.kind) {
        Some(_) if !opts.overwrite => {
            let msg = "overwrite(false) forbids replacing it";
            let e = io::Error::new(io::ErrorKind::AlreadyExists, msg);
            return Err(Error::of_no_clobber(Op::Open, to, e));
        }
        Some(Kind::Dir) if !is_dir => {
            return Err(Error::new(Op::Open, to, io::ErrorKind::IsADirectory.into()));
        }
        Some(Kind::File | Kind::Symlink | Kind::Other) if is_dir => {
            let msg = "a directory replaces only a directory";
            let e = io::Error::new(io::ErrorKind::NotADirectory, msg);
            return Err(Error::new(Op::Open, to, e));
        }
        _ => {}
    }

    let durable = opts.durability == Durability::Full;
    if durable {
        // The data and the inode reach the disk before the new name does:
        // the caller may have written `from` without a sync, and a rename
        // of unsynced data can show an empty or torn file after a power
        // cut (xfs, ext4 without auto_da_alloc, btrfs).
        let start = Instant::now();
        from_dir
            .sync_entry(from_name, source.kind)
            .map_err(err(Op::SyncTemp))?;
        clock.sync += start.elapsed();
    }
    let same_dir = from_dir.id().is_some() && from_dir.id() == found.dir.id();
    let (seen, seen_from) = match durable {
        true => (dir_failures(&found.dir), dir_failures(&from_dir)),
        false => (0, 0),
    };

    let (to_dir, to_name) = (&found.dir, &found.name);
    let start = Instant::now();
    let how = match (opts.overwrite, is_dir) {
        (true, _) => {
            sys::rename(&from_dir, from_name, to_dir, to_name).map(|()| NoReplace::Renamed)
        }
        (false, false) => sys::rename_noreplace(&from_dir, from_name, to_dir, to_name),
        (false, true) => sys::rename_dir_noreplace(&from_dir, from_name, to_dir, to_name)
            .map(|()| NoReplace::Renamed),
    }
    .map_err(|e| {
        let e = describe_rename_error(explain_invalid(e));
        match opts.overwrite {
            true => Error::new(Op::Rename, to, e),
            false => Error::of_no_clobber(Op::Rename, to, e),
        }
    })?;
    if how == NoReplace::Linked {
        // Published by a link (no flagged rename here): `from` is a second
        // name of the file now, removed to finish the move, unless it
        // names another file already (put there since): that one is not
        // ours to delete.
        let still_ours = from_dir
            .stat(from_name)
            .map_err(|e| Error::after_publish(Op::RemoveTemp, from, e))?
            .is_some_and(|now| now.id == source.id);
        if still_ours {
            from_dir
                .remove(from_name)
                .map_err(|e| Error::after_publish(Op::RemoveTemp, from, e))?;
        }
    }
    clock.publish += start.elapsed();
    if durable {
        let start = Instant::now();
        let after = |e| Error::after_publish(Op::SyncDir, to, e);
        sync_dir(to_dir, seen).map_err(after)?;
        // The name left `from`'s directory too: synced, so that it does
        // not come back as a second name after a power cut.
        if !same_dir {
            sync_dir(&from_dir, seen_from).map_err(after)?;
        }
        clock.sync += start.elapsed();
    }
    Ok(())
}

/// `EINVAL` from a rename has one cause users hit: a directory moved into
/// itself.
fn explain_invalid(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::InvalidInput => io::Error::new(
            e.kind(),
            format!("{e} (is `to` inside `from`, a directory moved into itself?)"),
        ),
        _ => e,
    }
}
