//! The synchronous engine of [`AsyncAtomicDir`](crate::AsyncAtomicDir): a
//! temp tree built beside the target, synced whole, and published by one
//! rename (or exchange); the removal of temp and replaced trees.
//!
//! A [`Tree`] is the cleanup guard: until it has published, dropping it
//! removes the temp tree, whichever thread drops it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::walk::Walk;
use super::{dir_failures, name, resolve, split, sync_dir, with_fresh, with_fresh_name};
use crate::sys::{self, Dir, Kind};
use crate::{Durability, Error, Exists, Op, Published};

/// How many times a `Replace` retries when other writers keep changing the
/// target between its attempts.
const REPLACE_ATTEMPTS: usize = 64;

/// A temp tree being built, and where it will be published: the cleanup
/// guard.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The target's directory.
    parent: Arc<Dir>,
    /// The target's name in `parent`.
    name: OsString,
    /// The temp tree's name in `parent`.
    temp_name: OsString,
    /// The temp tree, open; its descriptor holds the lock that tells
    /// `sweep` a live writer has it.
    root: Arc<Dir>,
    /// The target as given: what errors name.
    target: PathBuf,
    /// The temp tree's path: `parent` as given, joined with `temp_name`.
    temp_path: PathBuf,
    durability: Durability,
    /// The root's final mode, set at commit.
    final_mode: u32,
    /// Whether `final_mode` was given (`mode()`): then kept as it is.
    mode_given: bool,
    /// The root's mode as made (owner-only).
    made_mode: u32,
    /// The owner and group of the directory this tree replaces, given to
    /// the root at commit (not before: while it is built it is this
    /// user's alone).
    replaced_owner: Option<(u32, u32)>,
    /// Set once the target name refers to the temp tree: nothing to remove.
    published: bool,
}

/// A replaced tree, moved to a temp (or aside) name: dropping it removes
/// it, if that name still holds the tree it was.
#[derive(Debug)]
pub(crate) struct Replaced {
    parent: Arc<Dir>,
    name: OsString,
    id: Option<(u64, u64)>,
    /// While under an aside name: the tree, open and locked, so that a
    /// sweep leaves it alone.
    lock: Option<Dir>,
    /// Kept, not removed: a tree put back, or failing that left aside.
    keep: bool,
}

impl Drop for Replaced {
    fn drop(&mut self) {
        // Off the caller's path; what cannot be removed stays for `sweep`.
        if !self.keep {
            self.lock = None;
            let _ = remove_tree(&self.parent, &self.name, self.id);
        }
    }
}

fn not_a_directory(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::NotADirectory, msg)
}

impl Tree {
    /// Checks the target and creates the temp tree beside it: the whole of
    /// `create`, run on the blocking pool. Nothing on disk changes on error.
    /// `mode`: the root's exact mode; `None` keeps a replaced directory's,
    /// or gives a new one `0o777` less the umask.
    pub(crate) fn create(
        target: PathBuf,
        mode: Option<u32>,
        durability: Durability,
        create_parents: bool,
    ) -> Result<Tree, Error> {
        let (parent_path, name) = split(&target).map_err(|e| Error::new(Op::Open, &target, e))?;
        let parent = match Dir::open(parent_path) {
            Err(e) if create_parents && e.kind() == io::ErrorKind::NotFound => {
                super::parents::create(parent_path, durability)?;
                Dir::open(parent_path)
            }
            other => other,
        }
        .map_err(|e| Error::new(Op::OpenDir, parent_path, e))?;
        let existing = parent
            .stat(name)
            .map_err(|e| Error::new(Op::Open, &target, e))?;
        // In a sticky, world-writable directory, another user's entry is
        // neither replaced nor taken as this tree's (its mode inherited).
        if existing.is_some_and(|meta| !resolve::may_use(&parent, &meta)) {
            let err = resolve::refused("entry", "not replaced");
            return Err(Error::new(Op::Open, &target, err));
        }
        let replaced = match existing {
            None => None,
            Some(meta) if meta.kind == Kind::Dir => Some(meta),
            Some(_) => {
                let msg = "exists and is not a directory (symlinks are not followed)";
                return Err(Error::new(Op::Open, &target, not_a_directory(msg)));
            }
        };
        let final_mode = mode.map(|m| m & 0o7777).or(replaced.map(|m| m.mode));
        // Owner-only while it is built, whatever its final mode (the sticky
        // bit included from the start, where it has it): no other user can
        // open it, read a partial tree, lock it, or put anything in it.
        // `commit` applies the final mode.
        let create_mode = 0o700 | final_mode.map_or(0, |m| m & 0o1000);
        let parent_path = parent_path.to_path_buf();
        let create_err = |e| Error::new(Op::CreateTemp, &parent_path, e);
        let mut root = None;
        let temp_name = with_fresh_name(name, |temp| {
            parent.create_dir(temp, create_mode)?;
            let opened = match parent.open_dir(temp) {
                Ok(dir) if dir.lock_temp() => {
                    // So that `sweep` knows it for the crate's, should this
                    // process die: not by its name alone.
                    dir.mark_leftover(&[temp]);
                    dir
                }
                // A sweep found it before the lock, or removed it before
                // the open: let it go, take another name.
                Ok(_) => {
                    let _ = parent.remove_dir(temp);
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                Err(e) => {
                    let _ = parent.remove_dir(temp);
                    return Err(e);
                }
            };
            root = Some(opened);
            Ok(())
        })
        .map_err(create_err)?;
        let root: Dir = root.expect("created");
        let temp_path = parent_path.join(&temp_name);
        let made = root.meta();
        let mut tree = Tree {
            parent: Arc::new(parent),
            name: name.to_owned(),
            temp_name,
            root: Arc::new(root),
            target: target.clone(),
            temp_path,
            durability,
            final_mode: 0,
            mode_given: mode.is_some(),
            made_mode: 0,
            replaced_owner: replaced.map(|old| (old.uid, old.gid)),
            published: false,
        };
        // On error, dropping `tree` removes it.
        let made = made.map_err(|e| Error::new(Op::SetPermissions, &tree.temp_path, e))?;
        // A new directory, mode not given: what mkdir gives, the setgid bit
        // inherited from the parent included, and `0o777` less the umask
        // (read where the platform tells it; elsewhere it stays owner-only).
        tree.final_mode = final_mode.unwrap_or_else(|| {
            let perm = sys::umask().map_or(made.mode & 0o777, |umask| 0o777 & !umask);
            (made.mode & 0o7000) | perm
        });
        tree.made_mode = made.mode;
        Ok(tree)
    }

    /// The root's mode to set at commit, if it differs from the one it has:
    /// first the replaced directory's owner and group, as for files, best
    /// effort; group bits meant for a group this tree cannot have are cut
    /// to what others have, unless `mode()` set them.
    fn mode_at_commit(&self) -> Result<Option<u32>, Error> {
        let Some((uid, gid)) = self.replaced_owner else {
            return Ok((self.final_mode != self.made_mode).then_some(self.final_mode));
        };
        let err = |e| Error::new(Op::SetPermissions, &self.temp_path, e);
        let (group_kept, chowned) = self.copy_owner(uid, gid);
        let mut final_mode = self.final_mode;
        if !group_kept && !self.mode_given {
            final_mode = super::narrow_group(final_mode);
        }
        // A chown may have cleared the setgid bit: then compare with what
        // is there.
        let now = match chowned {
            true => self.root.meta().map_err(err)?.mode,
            false => self.made_mode,
        };
        Ok((final_mode != now).then_some(final_mode))
    }

    /// Gives the tree's root the owner `uid` and group `gid`, as far as
    /// this process may: both as root, the group alone where it is a
    /// member. Whether the group is `gid` now, and whether a chown was made.
    /// The root has this process's ids until then (it made the root).
    fn copy_owner(&self, uid: u32, gid: u32) -> (bool, bool) {
        let (now_uid, now_gid) = self.root.owner_ids();
        if (now_uid, now_gid) == (uid, gid) {
            return (true, false);
        }
        if self.root.set_owner(Some(uid), Some(gid)).is_ok() {
            return (true, true);
        }
        if now_gid == gid {
            return (true, false);
        }
        let kept = self.root.set_owner(None, Some(gid)).is_ok();
        (kept, kept)
    }

    /// Takes the crate's mark off the tree's root.
    fn unmark(&self) -> Result<(), Error> {
        self.root
            .unmark_leftover()
            .map_err(|e| Error::new(Op::SetPermissions, &self.temp_path, e))
    }

    /// The temp tree's path.
    pub(crate) fn path(&self) -> &Path {
        &self.temp_path
    }

    /// The temp tree's root, for [`create_file`] on the pool.
    pub(crate) fn root(&self) -> Arc<Dir> {
        Arc::clone(&self.root)
    }

    /// Syncs the tree (with [`Durability::Full`]) and publishes it at the
    /// target as `exists` says, syncing the target's directory after. The
    /// whole commit, run in one blocking-pool hop. Until the publishing
    /// step the target is untouched and an error removes the temp tree (by
    /// dropping `self`). A replaced tree comes back with the result, to be
    /// removed by dropping it.
    pub(crate) fn commit(mut self, exists: Exists) -> Result<(Published, Vec<Replaced>), Error> {
        let durable = self.durability == Durability::Full;
        if durable {
            // Every file and directory of the tree on the disk before a
            // name points at it: otherwise a power cut after the rename can
            // leave the target with empty files or missing entries.
            sync_entries(&self.root, &self.temp_path)?;
        }
        // The mark is for `sweep`, not for the published tree (renamed to a
        // temp name by another user, it would be swept): it comes off right
        // after the publish, so that no kill before it leaves an unmarked
        // temp tree that `sweep` would never remove. Unless the final mode
        // takes this user's right to remove it: then now, before.
        let mode_at_commit = self.mode_at_commit()?;
        let unmark_now = mode_at_commit.is_some_and(|mode| mode & 0o200 == 0 && sys::euid() != 0);
        if unmark_now {
            self.unmark()?;
        }
        if let Some(mode) = mode_at_commit {
            // After reading the root, which a final mode without the
            // owner's read permission would stop; before its sync.
            self.root
                .set_mode(mode)
                .map_err(|e| Error::new(Op::SetPermissions, &self.temp_path, e))?;
        }
        if durable {
            self.root
                .sync()
                .map_err(|e| Error::new(Op::SyncTemp, &self.temp_path, e))?;
        }
        let seen = match durable {
            true => dir_failures(&self.parent),
            false => 0,
        };
        let (published, replaced) = match exists {
            Exists::Fail | Exists::Keep => (self.publish_new(exists)?, Vec::new()),
            Exists::Replace => (Published::Ours, self.replace()?),
        };
        if published == Published::Ours && !unmark_now {
            // Synced with the directory below, by the journal that commits
            // the rename (ext4, xfs).
            self.root
                .unmark_leftover()
                .map_err(|e| Error::after_publish(Op::SetPermissions, &self.target, e))?;
        }
        if durable {
            // The rename lives in the directory: until it is synced a power
            // cut can bring the old tree back. After `Existing`, this makes
            // the winner's rename durable before the caller relies on it.
            let after = |e| match published {
                Published::Ours => Error::after_publish(Op::SyncDir, &self.target, e),
                Published::Existing => Error::new(Op::SyncDir, &self.target, e),
            };
            sync_dir(&self.parent, seen).map_err(after)?;
        }
        Ok((published, replaced))
    }

    /// `Fail` and `Keep`: publishes only where nothing is, in one step.
    /// Beaten by another directory: `Fail` errs (dropping `self` removes
    /// the tree), `Keep` removes the tree and answers `Existing`. Something
    /// other than a directory there is an error either way; a target gone
    /// again before it could be looked at is tried again.
    fn publish_new(&mut self, exists: Exists) -> Result<Published, Error> {
        let target = self.target.clone();
        let err = |e| Error::new(Op::Rename, &target, e);
        for _ in 0..REPLACE_ATTEMPTS {
            let beaten = match self.rename_noreplace() {
                Ok(()) => return Ok(Published::Ours),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => e,
                Err(e) => return Err(err(e)),
            };
            match self.parent.stat(&self.name).map_err(err)? {
                None => continue,
                Some(meta) if meta.kind != Kind::Dir => {
                    let msg = "exists and is not a directory";
                    return Err(err(io::Error::new(io::ErrorKind::AlreadyExists, msg)));
                }
                // Another user's directory in a sticky, world-writable one
                // (put there since `create`) is not this tree's result.
                Some(meta) if !resolve::may_use(&self.parent, &meta) => {
                    return Err(err(resolve::refused("entry", "not taken as the result")));
                }
                Some(_) if exists == Exists::Fail => {
                    return Err(Error::of_no_clobber(Op::Rename, &target, beaten))
                }
                Some(_) => {
                    // Losing is success: the caller learns of a temp tree
                    // that could not be removed, not of the loss.
                    self.remove()?;
                    return Ok(Published::Existing);
                }
            }
        }
        Err(err(io::Error::other("the target kept changing")))
    }

    fn rename_noreplace(&mut self) -> io::Result<()> {
        sys::rename_dir_noreplace(&self.parent, &self.temp_name, &self.parent, &self.name)?;
        self.published = true;
        Ok(())
    }

    /// Swaps the tree in with `RENAME_EXCHANGE`; a rename without replace
    /// when nothing is there. Only a directory is replaced. Where the
    /// filesystem cannot swap: moves the old tree aside, then renames ours
    /// in (the window in which the target is missing); if that rename
    /// fails, the old tree is put back. Returns what was replaced.
    fn replace(&mut self) -> Result<Vec<Replaced>, Error> {
        let mut replaced = Vec::new();
        let result = self.replace_into(&mut replaced);
        // What was moved aside is out of the target's way now: under a
        // temp name, it is garbage to `sweep`, never a tree to put back.
        for old in &mut replaced {
            self.retire(old);
        }
        result.map(|()| replaced)
    }

    /// [`replace`](Self::replace), the trees replaced pushed to `replaced`.
    fn replace_into(&mut self, replaced: &mut Vec<Replaced>) -> Result<(), Error> {
        let target = self.target.clone();
        let err = |e| Error::new(Op::Rename, &target, e);
        for _ in 0..REPLACE_ATTEMPTS {
            if let Some(meta) = self.parent.stat(&self.name).map_err(err)? {
                if meta.kind != Kind::Dir {
                    let msg = "exists and is not a directory: not replaced";
                    return Err(err(not_a_directory(msg)));
                }
                // Checked at `create`, and again: another user may have put
                // a directory there since, in a sticky directory.
                if !resolve::may_use(&self.parent, &meta) {
                    return Err(err(resolve::refused("entry", "not replaced")));
                }
            }
            // The tree about to be replaced is marked for `sweep`, for the
            // temp name it is about to get, before it leaves the target's
            // name: so that no kill leaves it there without the mark (a
            // leftover never removed). A kill before the exchange leaves the
            // target marked, but only for that name. Unmarked if not
            // exchanged.
            let marked = mark_at(&self.parent, &self.name, &[&self.temp_name]);
            match sys::rename_exchange(&self.parent, &self.temp_name, &self.parent, &self.name) {
                Ok(()) => return self.exchanged(replaced, marked),
                // Nothing at the target (yet, or any more).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    let aside = match self.move_aside() {
                        Ok(aside) => aside,
                        Err(e) => {
                            unmark_at(&self.parent, &self.name);
                            return Err(err(e));
                        }
                    };
                    let renamed = self.rename_noreplace();
                    match (renamed, aside) {
                        (Ok(()), aside) => {
                            replaced.extend(aside);
                            return Ok(());
                        }
                        // Another writer's tree came in between: it
                        // replaced the one moved aside. Again.
                        (Err(e), aside) if e.kind() == io::ErrorKind::AlreadyExists => {
                            replaced.extend(aside);
                            continue;
                        }
                        (Err(e), Some(aside)) => return Err(self.put_back(aside, err(e))),
                        (Err(e), None) => return Err(err(e)),
                    }
                }
                Err(e) => {
                    unmark_at(&self.parent, &self.name);
                    return Err(err(e));
                }
            }
            match self.rename_noreplace() {
                Ok(()) => return Ok(()),
                // Another writer published meanwhile: swap again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(err(io::Error::other(
            "the target kept changing under the replace",
        )))
    }

    /// After the exchange: the old entry has our temp name. A directory is
    /// ours to remove; anything else (put there since the check) is
    /// swapped back, and kept.
    fn exchanged(
        &mut self,
        replaced: &mut Vec<Replaced>,
        marked: Option<(u64, u64)>,
    ) -> Result<(), Error> {
        let name = std::mem::take(&mut self.temp_name);
        self.published = true;
        let meta = self.parent.stat(&name).ok().flatten();
        // What came out: ours to remove only if a directory this user may
        // replace (another user's, in a sticky directory, put there since
        // the check, goes back).
        let refused = match meta {
            Some(m) if m.kind != Kind::Dir => Some("exists and is not a directory: not replaced"),
            Some(m) if !resolve::may_use(&self.parent, &m) => {
                Some("another user's directory in a sticky directory: not replaced")
            }
            _ => None,
        };
        match refused {
            None => {
                // Its identity: removal stops if the name changes hands.
                let id = meta.and_then(|m| m.id);
                // Garbage now, under a temp name: marked for `sweep` before
                // the exchange, should this process die before removing
                // it; marked here if another writer's tree came in between.
                if id.is_none() || id != marked {
                    mark_at(&self.parent, &name, &[&name]);
                }
                replaced.push(Replaced {
                    parent: Arc::clone(&self.parent),
                    name,
                    id,
                    lock: None,
                    keep: false,
                });
                Ok(())
            }
            Some(msg) => {
                let back = sys::rename_exchange(&self.parent, &name, &self.parent, &self.name);
                if let Err(e) = back {
                    // Ours is published; what it replaced keeps our temp
                    // name, which nothing removes but `sweep`.
                    return Err(Error::after_publish(Op::Rename, &self.target, e));
                }
                self.published = false;
                self.temp_name = name;
                unmark_at(&self.parent, &self.name);
                let kind = match meta.is_some_and(|m| m.kind == Kind::Dir) {
                    true => io::ErrorKind::PermissionDenied,
                    false => io::ErrorKind::NotADirectory,
                };
                Err(Error::new(
                    Op::Rename,
                    &self.target,
                    io::Error::new(kind, msg),
                ))
            }
        }
    }

    /// The fallback's first step: renames the tree at the target to an
    /// aside name (which `sweep` puts back should the process die before
    /// the next step). `None` when nothing was there.
    fn move_aside(&self) -> io::Result<Option<Replaced>> {
        let target = &self.name;
        let mut moved = false;
        let fresh = || name::aside_name(&self.name).unwrap_or_else(|| name::temp_name(&self.name));
        let aside = with_fresh(fresh, |aside| {
            // Marked for the aside name before it gets it, so that `sweep`
            // may put it back should this process die at any point.
            mark_at(&self.parent, &self.name, &[aside]);
            match sys::rename_dir_noreplace(&self.parent, &self.name, &self.parent, aside) {
                Ok(()) => {
                    moved = true;
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })?;
        if !moved {
            return Ok(None);
        }
        if self
            .parent
            .stat(&aside)?
            .is_some_and(|m| m.kind != Kind::Dir)
        {
            // Not a tree: put there since the check. Back it goes.
            sys::rename_dir_noreplace(&self.parent, &aside, &self.parent, target)?;
            return Err(not_a_directory(
                "exists and is not a directory: not replaced",
            ));
        }
        let lock = self.parent.open_dir(&aside).ok().filter(|d| d.lock_temp());
        Ok(Some(Replaced {
            parent: Arc::clone(&self.parent),
            id: lock.as_ref().and_then(|d| d.id()),
            name: aside,
            lock,
            keep: false,
        }))
    }

    /// Renames a tree moved aside to a temp name, once the target holds a
    /// tree again, and unlocks it: a process dying now leaves garbage for
    /// `sweep`, never a tree it would put back. Best effort: a tree left
    /// under its aside name is removed by `sweep` all the same while the
    /// target exists.
    fn retire(&self, old: &mut Replaced) {
        if old.lock.is_none() && name::aside_target(&old.name).is_none() {
            return;
        }
        let renamed = with_fresh_name(&self.name, |temp| {
            // A leftover under either name, whenever this process dies.
            mark_at(&self.parent, &old.name, &[&old.name, temp]);
            sys::rename_dir_noreplace(&self.parent, &old.name, &self.parent, temp)
        });
        if let Ok(temp) = renamed {
            old.name = temp;
        }
        old.lock = None;
    }

    /// The rename after a move aside failed: renames the old tree back and
    /// returns `failed`; if that fails too, keeps it where it is and says
    /// where.
    fn put_back(&self, mut aside: Replaced, failed: Error) -> Error {
        aside.keep = true;
        aside.lock = None;
        match sys::rename_dir_noreplace(&self.parent, &aside.name, &self.parent, &self.name) {
            Ok(()) => {
                unmark_at(&self.parent, &self.name);
                failed
            }
            Err(e) => {
                let path = self.temp_path.with_file_name(&aside.name);
                let msg = format!(
                    "{failed}; the old tree is kept at `{}` ({e}), and `sweep` puts it back",
                    path.display()
                );
                Error::new(Op::Rename, &self.target, io::Error::new(e.kind(), msg))
            }
        }
    }

    /// Removes the unpublished temp tree, reporting what dropping would
    /// swallow.
    fn remove(&mut self) -> Result<(), Error> {
        let id = self.root.id();
        let name = std::mem::take(&mut self.temp_name);
        remove_tree(&self.parent, &name, id)
            .map_err(|e| Error::new(Op::RemoveTemp, &self.temp_path, e))
    }

    /// Removes the temp tree: `rollback`.
    pub(crate) fn rollback(mut self) -> Result<(), Error> {
        self.remove()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.published && !self.temp_name.is_empty() {
            // Cleanup must not fail a drop; `rollback` reports this error.
            let _ = remove_tree(&self.parent, &self.temp_name, self.root.id());
        }
    }
}

/// `fsync`s every regular file and directory under `dir` (at `path`,
/// for errors), each directory after its entries, but not `dir` itself.
/// Symlinks are not followed; other entries need only their directory's
/// sync. Without recursion, and holding a bounded number of descriptors,
/// however deep the tree (see [`Walk`]).
fn sync_entries(dir: &Dir, path: &Path) -> Result<(), Error> {
    // Error paths are built only on error: joined for every entry, they
    // would cost a copy of a path as long as the tree is deep.
    let err = |path: PathBuf, e| Error::new(Op::SyncTemp, path, e);
    let mut walk = Walk::new(dir, path).map_err(|e| err(path.to_path_buf(), e))?;
    loop {
        match walk.next_entry() {
            Some((name, Kind::File)) => {
                let synced = walk
                    .dir()
                    .open_to_sync(&name)
                    .and_then(|file| sys::sync_file(&file));
                synced.map_err(|e| err(walk.path().join(&name), e))?;
            }
            Some((name, Kind::Dir)) => {
                let opened = walk.dir().open_dir(&name);
                let sub = opened.map_err(|e| err(walk.path().join(&name), e))?;
                if let Err(e) = walk.enter(name.clone(), sub) {
                    return Err(err(walk.path().join(&name), e));
                }
            }
            Some((_, Kind::Symlink | Kind::Other)) => {}
            None => match walk.leave() {
                Ok(Some((done, name))) => {
                    let synced = done.sync();
                    synced.map_err(|e| err(walk.path().join(&name), e))?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(err(walk.path().to_path_buf(), e)),
            },
        }
    }
}

/// Removes the tree at `name` in `parent`: files, links and directories,
/// depth first, never following a symlink, never entering a mount (another
/// filesystem, or a bind mount where the kernel tells: a mount inside is an
/// error, and nothing under it is touched; it is looked for by name, before
/// the open that a hung filesystem mounted there could block). A tree
/// already gone, or removed meanwhile by another remover (a sweep), is no
/// error. `expected`: the tree's identity, when only that tree may be
/// removed. Without recursion, and holding a bounded number of descriptors,
/// however deep the tree (see [`Walk`]).
pub(crate) fn remove_tree(
    parent: &Dir,
    name: &OsStr,
    expected: Option<(u64, u64)>,
) -> io::Result<()> {
    if parent.is_mount_point_at(name)? {
        return Err(mount_inside());
    }
    let root = match parent.open_dir(name) {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            // Not a directory (a file swapped in by an exchange, or a
            // link): one entry to remove.
            return match parent.stat(name)? {
                Some(meta) if meta.kind != Kind::Dir && expected.is_none() => {
                    ignore_not_found(parent.remove(name))
                }
                _ => Err(e),
            };
        }
    };
    if expected.is_some_and(|id| root.id() != Some(id)) {
        return Ok(()); // something else has the name now: not ours
    }
    if root.device() != parent.device() || root.is_mount_root() {
        return Err(mount_inside());
    }
    empty_dir(&root)?;
    ignore_not_found(parent.remove_dir(name))
}

/// Removes everything under `root`, depth first.
fn empty_dir(root: &Dir) -> io::Result<()> {
    // A read-only directory (a tree of read-only directories, such as a
    // module cache) cannot be emptied otherwise.
    root.allow_owner_all();
    let mut walk = Walk::new(root, Path::new(""))?;
    loop {
        match walk.next_entry() {
            Some((name, Kind::Dir)) => {
                let dir = walk.dir();
                if dir.is_mount_point_at(&name)? {
                    return Err(mount_inside());
                }
                let sub = match dir.open_dir(&name) {
                    Ok(sub) => sub,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if sub.device() != dir.device() || sub.is_mount_root() {
                    return Err(mount_inside());
                }
                sub.allow_owner_all();
                walk.enter(name, sub)?;
            }
            Some((name, _)) => ignore_not_found(walk.dir().remove(&name))?,
            None => match walk.leave()? {
                Some((done, name)) => {
                    drop(done);
                    ignore_not_found(walk.dir().remove_dir(&name))?;
                }
                None => return Ok(()),
            },
        }
    }
}

/// Puts the crate's mark, for `names`, on the directory `name` in
/// `parent`, best effort; returns the identity of the directory marked.
fn mark_at(parent: &Dir, name: &OsStr, names: &[&OsStr]) -> Option<(u64, u64)> {
    let dir = parent.open_dir(name).ok()?;
    dir.mark_leftover(names);
    dir.id()
}

/// Takes the crate's mark off the directory `name` in `parent`, put back
/// at a target: best effort (it only makes the tree sweepable, should it
/// ever be renamed to a temp name).
pub(crate) fn unmark_at(parent: &Dir, name: &OsStr) {
    if let Ok(dir) = parent.open_dir(name) {
        let _ = dir.unmark_leftover();
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn mount_inside() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "another filesystem is mounted inside the tree: not removed",
    )
}

/// Creates the file at `rel` (unlinking a file there first), a relative
/// path inside the tree `root` whose directories exist, without following
/// any symlink on the way. `path`: `rel` under the tree's path, for errors.
pub(crate) fn create_file(root: &Dir, rel: &Path, path: &Path) -> Result<TreeFile, Error> {
    let err = |e| Error::new(Op::CreateFile, path, e);
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => {
                let msg = "not a relative path inside the tree (no `..`, no root)";
                return Err(err(io::Error::new(io::ErrorKind::InvalidInput, msg)));
            }
        }
    }
    let Some(file_name) = names.pop() else {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "names no file",
        )));
    };
    let mut opened = Vec::new();
    for name in names {
        let next = opened.last().unwrap_or(root).open_dir(name).map_err(err)?;
        opened.push(next);
    }
    let file = opened
        .last()
        .unwrap_or(root)
        .create_file(file_name)
        .map_err(err)?;
    Ok(TreeFile {
        file: Some(file),
        path: path.to_path_buf(),
    })
}

/// A file being written inside a temp tree: the sink of
/// [`AsyncDirFile`](crate::AsyncDirFile)'s pipeline.
#[derive(Debug)]
pub(crate) struct TreeFile {
    file: Option<File>,
    path: PathBuf,
}

impl TreeFile {
    fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("open until finished")
    }

    /// Writes the last buffered bytes and closes the file, reporting the
    /// close error. Its `fsync` comes with the tree's, at commit.
    pub(crate) fn finish(mut self, rest: &[u8]) -> Result<(), Error> {
        let mut file = self.file.take().expect("open until finished");
        file.write_all(rest)
            .map_err(|e| Error::new(Op::Write, &self.path, e))?;
        sys::close(file).map_err(|e| Error::new(Op::Close, &self.path, e))
    }
}

impl Write for TreeFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file_mut().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file_mut().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
