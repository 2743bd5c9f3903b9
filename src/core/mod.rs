//! The synchronous engine: resolve the target, create the temp file, and run
//! the commit sequence or the rollback. Uses `std` and `sys` only, knows
//! nothing of Tokio, and is where every error gets its [`Op`] and path.
//!
//! A [`Staged`] is the cleanup guard: until it has published its temp file,
//! dropping it removes the temp file, whichever thread drops it.

#[cfg(feature = "serde")]
pub(crate) mod batch;
pub(crate) mod changed;
mod group;
pub(crate) mod name;
pub(crate) mod parents;
pub(crate) mod rename;
pub(crate) mod resolve;
#[cfg(feature = "serde")]
pub(crate) mod state;
#[cfg(unix)]
pub(crate) mod tree;
pub(crate) mod update;
#[cfg(unix)]
mod walk;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::{self, AfterLink, Dir, Kind, NoReplace};
use crate::{Durability, Error, Op, OpenOptions};
use resolve::Found;
/// How many random names to try before giving up on `EEXIST`.
const TEMP_NAME_ATTEMPTS: usize = 64;

/// The temp file's name, which is also what its cleanup must undo.
#[derive(Debug)]
enum TempName {
    /// `O_TMPFILE`: no name; closing the file frees it.
    Unnamed,
    /// A hidden name in `temp_dir`, to remove unless published.
    Named(OsString),
    /// Published: the name is the target's now; nothing to remove, ever.
    Published,
}

/// Where the commit publishes, and how.
#[derive(Debug)]
struct Plan {
    /// The path as the caller gave it: what errors name.
    target: PathBuf,
    /// The directory of the file finally replaced (symlinks followed).
    dir: Dir,
    /// The final file name in `dir`.
    name: OsString,
    /// Mode to apply at commit: the setuid/setgid/sticky bits, which a
    /// write by an unprivileged process would clear if set earlier.
    mode_at_commit: Option<u32>,
    /// The replaced file's `security.capability`, with `preserve_xattrs`:
    /// set at commit, after the last write, which would drop it.
    capability_at_commit: Option<Vec<u8>>,
    durability: Durability,
    overwrite: bool,
}

/// An open temp file and everything its commit needs: the cleanup guard.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The temp file; `None` once closed by `commit`.
    file: Option<File>,
    temp: TempName,
    /// Where the temp file lives, when not in `plan.dir`.
    temp_dir: Option<Dir>,
    /// `temp_dir`'s path, or the target's directory path: for error messages.
    temp_dir_path: PathBuf,
    plan: Plan,
    /// Time spent in the commit's steps, for the `tracing` feature.
    clock: Clock,
}

/// Where a commit spent its time: in `fsync`s (file, directory, and after
/// a link) and in publishing (link, close, rename).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) sync: Duration,
    pub(crate) publish: Duration,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Splits a target path into its directory and file name, rejecting paths
/// that name no file: empty, ending in `..`, `.`, a root or a separator.
fn split(path: &Path) -> Result<(&Path, &OsStr), io::Error> {
    if path.as_os_str().is_empty() {
        return Err(invalid("empty path"));
    }
    let ends_with_separator = path
        .as_os_str()
        .as_encoded_bytes()
        .last()
        .is_some_and(|b| *b == b'/')
        || (cfg!(windows) && path.as_os_str().as_encoded_bytes().last() == Some(&b'\\'));
    let last_is_name = matches!(path.components().next_back(), Some(Component::Normal(_)));
    let raw_last_is_dot = path.as_os_str().as_encoded_bytes().ends_with(b"/.");
    match path.file_name() {
        Some(name) if last_is_name && !ends_with_separator && !raw_last_is_dot => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Ok((parent, name))
        }
        _ => Err(invalid("path does not name a file")),
    }
}

impl Staged {
    /// Resolves and checks the target, then creates the temp file: the whole
    /// of `open`, run on the blocking pool. Nothing on disk changes on error.
    pub(crate) fn open(opts: &OpenOptions, target: PathBuf) -> Result<Staged, Error> {
        let found = resolve::find_target(&target, opts)?;
        Staged::open_found(opts, target, found)
    }

    /// Checks the entry `found` for `target` and creates the temp file
    /// beside it.
    pub(crate) fn open_found(
        opts: &OpenOptions,
        target: PathBuf,
        found: Found,
    ) -> Result<Staged, Error> {
        found.check_replace(&target)?;
        let Found {
            dir,
            dir_path: parent,
            name,
            existing,
        } = found;
        // Any entry at the name, a symlink not followed included, is one a
        // no-clobber publish would lose to.
        let found_entry = existing.is_some();
        let existing = match existing {
            Some(m) if m.kind == Kind::Dir => {
                return Err(Error::new(
                    Op::Open,
                    &target,
                    io::ErrorKind::IsADirectory.into(),
                ));
            }
            Some(m) if m.kind == Kind::Other => {
                return Err(Error::new(Op::Open, &target, invalid("not a regular file")));
            }
            // A symlink here is one not followed: it is replaced like a new file.
            Some(m) if m.kind == Kind::File => Some(m),
            _ => None,
        };
        if !opts.overwrite && found_entry {
            // Fails now, not after the caller has written it all; the
            // commit's no-clobber publish still decides a race with a
            // writer that creates the target meanwhile.
            let msg = "the target already exists, and overwrite(false) forbids replacing it";
            let err = io::Error::new(io::ErrorKind::AlreadyExists, msg);
            return Err(Error::new(Op::Open, &target, err));
        }

        let temp_dir = match &opts.temp_dir {
            Some(path) => {
                let td = Dir::open(path).map_err(|e| Error::new(Op::OpenDir, path, e))?;
                if td.device() != dir.device() {
                    let msg = format!("not on the filesystem of `{}`", parent.display());
                    let err = io::Error::new(io::ErrorKind::CrossesDevices, msg);
                    return Err(Error::new(Op::CreateTemp, path, err));
                }
                Some(td)
            }
            None => None,
        };
        let temp_dir_path = opts.temp_dir.clone().unwrap_or_else(|| parent.clone());

        // The published file's mode: exact (`Some`), or the new-file default
        // that the kernel derives from 0o666 and the umask (`None`).
        let final_mode = match (opts.mode, existing) {
            (Some(mode), _) => Some(mode),
            (None, Some(meta)) if opts.preserve_permissions => Some(meta.mode),
            _ => opts.new_file_mode,
        }
        .map(|mode| exact_mode(opts, mode));
        // Created with at most the final bits and at most the replaced
        // file's (the kernel also applies the umask), so the temp file is
        // never readable wider than either from its first byte, whatever
        // the options: a descriptor opened in a window before a `chmod`
        // would read all that is written after it.
        // The group bits too: they apply to the group the new file gets
        // (the writer's, or a setgid directory's), which is the replaced
        // file's only where the two agree; elsewhere they stay off until
        // the group is copied (or for good: see `match_replaced_file`).
        let make_in = temp_dir.as_ref().unwrap_or(&dir);
        let existing_perm = match existing {
            None => 0o777,
            Some(m) if make_in.group_of_new_entries() == m.gid => m.mode & 0o777,
            Some(m) => m.mode & 0o707,
        };
        let create_mode = final_mode.map_or(0o666, |m| m & 0o777) & existing_perm;

        // With `preserve_xattrs`, the replaced file's attributes, read
        // before anything is created. The temp file is then created open
        // to its owner alone: under a default ACL on the directory, a mode
        // without group bits gives a mask of 0, so the ACL's named entries
        // get nothing until the replaced file's ACL (or none) takes its
        // place. Its owner may write it (`u+w`), which setting `user.*`
        // attributes takes; the owner may `chmod` its own file anyway.
        let xattrs = match existing {
            Some(meta) if opts.preserve_xattrs && sys::COPIES_XATTRS => Some(
                sys::read_xattrs(&dir, &name, meta.id)
                    .map_err(|e| Error::new(Op::CopyXattrs, &target, e))?,
            ),
            _ => None,
        };
        let create_mode = match xattrs {
            Some(_) => create_mode & 0o700 | 0o200,
            None => create_mode,
        };

        let (file, temp, created) = create_temp(make_in, &name, create_mode, opts.unnamed_temp)
            .map_err(|e| Error::new(Op::CreateTemp, &temp_dir_path, e))?;
        let mut staged = Staged {
            file: Some(file),
            temp,
            temp_dir,
            temp_dir_path,
            plan: Plan {
                target: target.clone(),
                dir,
                name,
                mode_at_commit: None,
                capability_at_commit: None,
                durability: opts.durability,
                overwrite: opts.overwrite,
            },
            clock: Clock::default(),
        };

        if let (true, Some(meta)) = (sys::HAS_MODES, existing) {
            let made = TempFile {
                created,
                create_mode,
                xattrs,
            };
            staged.match_replaced_file(opts, meta, final_mode, made)?;
        } else if let (true, Some(mode)) = (sys::HAS_MODES, final_mode) {
            // A new file: its mode depends on the umask, unknown here.
            staged.set_modes(mode, mode & 0o777, None)?;
        }
        Ok(staged)
    }

    /// For a temp file replacing an existing one: copies the owner (best
    /// effort), the extended attributes (with `preserve_xattrs`) and sets
    /// the mode to use while writing, never readable wider than the
    /// replaced file nor than the final one. If the group could not be
    /// copied, the group bits stay off until commit: they would apply to
    /// another group.
    fn match_replaced_file(
        &mut self,
        opts: &OpenOptions,
        replaced: sys::Meta,
        final_mode: Option<u32>,
        temp: TempFile,
    ) -> Result<(), Error> {
        let now = match temp.created {
            Some(meta) => meta,
            None => sys::file_meta(self.file())
                .map_err(|e| Error::new(Op::SetPermissions, &self.plan.target, e))?,
        };
        if temp.xattrs.is_none() && inherited_acl_may_widen(temp.create_mode) {
            // Without `preserve_xattrs`: an access ACL the temp file got
            // from a default ACL on the directory has its named entries
            // capped by a mask of the group bits, which here exceed the
            // others' bits. Those users could read the new file when they
            // could not read the replaced one (std's in-place write keeps
            // the replaced inode's ACL): removed before the first byte. One
            // call, for such modes only (not for 0644, 0600).
            sys::remove_acl(self.file())
                .map_err(|e| Error::new(Op::SetPermissions, &self.plan.target, e))?;
        }
        let gid = if opts.preserve_owner {
            self.copy_owner(now, replaced.uid, replaced.gid)
        } else {
            now.gid
        };
        // Without an exact final mode, the new-file default: 0o666 less the
        // umask. The file was created narrower than that (no wider than the
        // replaced one), so the umask is read where the platform tells it;
        // elsewhere the created mode is final (no wider than the replaced
        // file's).
        let mut final_mode = match final_mode {
            Some(mode) => mode,
            None => sys::umask().map_or(now.mode, |umask| 0o666 & !umask),
        };
        let mut writing = final_mode & 0o777 & replaced.mode;
        if gid != replaced.gid {
            writing &= !0o070;
            // The group bits of a kept mode were meant for the replaced
            // file's group, which this file does not have: they would let
            // another group read it. So the group gets no more than others
            // have. Bits that `mode()` set stay, and so do the new-file
            // default's (`preserve_permissions(false)`).
            if opts.mode.is_none() && opts.preserve_permissions {
                final_mode = narrow_group(final_mode);
            }
        }
        // A chown clears only setuid/setgid, which are never in `writing`,
        // so `now.mode` still tells whether the chmod is needed.
        let current = match temp.xattrs {
            Some(xattrs) => self.copy_xattrs(xattrs, writing, now.mode)?,
            None => now.mode,
        };
        self.set_modes(final_mode, writing, Some(current))
    }

    /// Gives the temp file, still empty and open to its owner alone, the
    /// replaced file's extended attributes: `user.*` and `security.*`
    /// first, while the owner may still write it; then its ACL, with the
    /// base entries of `writing` (so the file's mode is `writing` from
    /// that call on, its named entries capped by that mask), or, where the
    /// replaced file has none, no ACL at all (none inherited from the
    /// directory's default ACL). `security.capability` waits for the
    /// commit. Returns the file's mode now (`mode`: before).
    fn copy_xattrs(&mut self, xattrs: sys::Xattrs, writing: u32, mode: u32) -> Result<u32, Error> {
        let target = &self.plan.target;
        let err = |name: &OsStr, e| Error::new(Op::CopyXattrs, target, sys::naming_xattr(name, e));
        let file = self.file();
        for attr in &xattrs.attrs {
            match sys::set_xattr(file, &attr.name, &attr.value) {
                Err(e) if !(attr.best_effort() && sys::xattr_refused(&e)) => {
                    return Err(err(&attr.name, e));
                }
                _ => {}
            }
        }
        let acl = OsStr::new(sys::ACL_XATTR);
        let mode = match &xattrs.acl {
            Some(value) => {
                sys::set_acl(file, value, writing).map_err(|e| err(acl, e))?;
                writing
            }
            None => {
                sys::remove_acl(file).map_err(|e| err(acl, e))?;
                mode
            }
        };
        self.plan.capability_at_commit = xattrs.capability;
        Ok(mode)
    }

    /// Sets `writing` now, while the file is empty (undoing the umask's
    /// narrowing exposes nothing yet), and leaves `final_mode` for commit
    /// when it differs: the special bits, which writes and chown clear, and
    /// bits held back while writing.
    /// `current` is the file's mode when known (skips the chmod when equal).
    fn set_modes(
        &mut self,
        final_mode: u32,
        writing: u32,
        current: Option<u32>,
    ) -> Result<(), Error> {
        if current != Some(writing) {
            sys::set_mode(self.file(), writing)
                .map_err(|e| Error::new(Op::SetPermissions, &self.plan.target, e))?;
        }
        if final_mode != writing {
            self.plan.mode_at_commit = Some(final_mode);
        }
        Ok(())
    }

    /// Gives the temp file the target's owner and group, best effort: the
    /// group alone when the owner cannot be given away (not root), nothing
    /// when neither works (filesystems without owners). Never an error.
    /// Returns the group the file has now.
    fn copy_owner(&self, now: sys::Meta, uid: u32, gid: u32) -> u32 {
        if (now.uid, now.gid) == (uid, gid) {
            return gid;
        }
        if sys::set_owner(self.file(), Some(uid), Some(gid)).is_ok() {
            return gid;
        }
        if now.gid != gid && sys::set_owner(self.file(), None, Some(gid)).is_ok() {
            return gid;
        }
        now.gid
    }

    fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("the temp file is open until commit closes it")
    }

    fn file_mut(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("the temp file is open until commit closes it")
    }

    /// Closes the temp file, reporting the error that dropping it would
    /// swallow; after `published`, the error says the target is new.
    fn close(&mut self, published: bool) -> Result<(), Error> {
        let file = self.file.take().expect("closed once");
        sys::close(file).map_err(|e| match published {
            true => Error::after_publish(Op::Close, &self.plan.target, e),
            false => Error::new(Op::Close, &self.plan.target, e),
        })
    }

    /// Runs `sync`, adding its time to `clock.sync`.
    fn timed_sync<T>(&mut self, sync: impl FnOnce(&Self) -> T) -> T {
        let start = Instant::now();
        let out = sync(self);
        self.clock.sync += start.elapsed();
        out
    }

    fn temp_dir(&self) -> &Dir {
        self.temp_dir.as_ref().unwrap_or(&self.plan.dir)
    }

    /// Writes the last buffered bytes and publishes the temp file at the
    /// target, durably unless [`Durability::None`]. The whole commit, run in
    /// one blocking-pool hop.
    ///
    /// Until the publishing step the target is untouched and an error
    /// removes the temp file (by dropping `self`). After it, nothing is
    /// removed and errors say the content is published.
    pub(crate) fn commit(mut self, rest: &[u8]) -> Result<(), Error> {
        let result = self.commit_steps(rest);
        crate::trace::committed(&self.clock, result.as_ref().err());
        result
    }

    /// `commit`, step by step; the caller drops `self`, which removes the
    /// temp file unless published.
    fn commit_steps(&mut self, rest: &[u8]) -> Result<(), Error> {
        let target = self.plan.target.clone();
        let target = &target;
        let err = |op| move |e| Error::new(op, target, e);
        if !rest.is_empty() {
            self.file_mut().write_all(rest).map_err(err(Op::Write))?;
        }
        if let Some(mode) = self.plan.mode_at_commit {
            sys::set_mode(self.file(), mode).map_err(err(Op::SetPermissions))?;
        }
        if let Some(value) = self.plan.capability_at_commit.take() {
            // After the last write, which drops file capabilities (as it
            // drops setuid bits), and after the chmod (which keeps them);
            // no chown comes after it, which would drop them too. Best
            // effort, as at open: it takes CAP_SETFCAP.
            let name = OsStr::new(sys::CAPABILITY_XATTR);
            match sys::set_xattr(self.file(), name, &value) {
                Err(e) if !sys::xattr_refused(&e) => {
                    return Err(err(Op::CopyXattrs)(sys::naming_xattr(name, e)))
                }
                _ => {}
            }
        }
        let durable = self.plan.durability == Durability::Full;
        // What the filesystem needs after linking an O_TMPFILE file, asked
        // once per commit.
        let after_link = (durable && matches!(self.temp, TempName::Unnamed))
            .then(|| sys::after_link(self.file(), self.temp_dir().device()));
        // A replacing O_TMPFILE file whose link needs a full fsync anyway
        // (ext4 without a journal, unknown filesystems) is synced once,
        // between its link and its rename, not also before the link: one
        // fsync fewer per commit there, for a longer window in which a
        // killed process leaves the temp name (for `sweep`).
        let sync_once_linked = self.plan.overwrite && after_link == Some(AfterLink::FullSync);
        if durable && !sync_once_linked {
            // Data and inode reach the disk before any name points at them:
            // otherwise a power cut after the rename can leave the target
            // empty or torn (ext4 without auto_da_alloc, xfs, btrfs).
            self.timed_sync(|s| sys::sync_file(s.file()))
                .map_err(err(Op::SyncTemp))?;
        }
        // Failed directory fsyncs so far, noted before the rename: a failure
        // after this point may cover the rename (see `group`).
        let (seen, seen_temp_dir) = match durable {
            true => (
                dir_failures(&self.plan.dir),
                self.temp_dir.as_ref().map_or(0, dir_failures),
            ),
            false => (0, 0),
        };
        let (start, synced) = (Instant::now(), self.clock.sync);
        let published = self.publish(after_link);
        // The syncs between link and rename are counted as syncs.
        self.clock.publish += start.elapsed().saturating_sub(self.clock.sync - synced);
        published?;
        if durable {
            // The rename lives in the directory: until it is synced a power
            // cut can bring the old content back.
            let after = |e| Error::after_publish(Op::SyncDir, target, e);
            self.timed_sync(|s| sync_dir(&s.plan.dir, seen))
                .map_err(after)?;
            // A rename out of another directory changed that one too: sync it
            // so that the temp name cannot come back as a second link.
            if self.temp_dir.is_some() {
                self.timed_sync(|s| sync_dir(s.temp_dir(), seen_temp_dir))
                    .map_err(after)?;
            }
        }
        Ok(())
    }

    /// The publishing step. Sets `temp` to `Published` the moment the target
    /// name refers to the new file, so the guard never removes it.
    /// `after_link`: for a durable O_TMPFILE file, what its filesystem needs
    /// after the link.
    fn publish(&mut self, after_link: Option<AfterLink>) -> Result<(), Error> {
        let target = &self.plan.target.clone();
        match (&self.temp, self.plan.overwrite) {
            (TempName::Unnamed, false) => {
                // linkat to the final name: atomic no-clobber, and at no
                // moment a second name.
                sys::link_unnamed(self.file(), &self.plan.dir, &self.plan.name)
                    .map_err(|e| Error::of_no_clobber(Op::Link, target, e))?;
                self.temp = TempName::Published;
                if let Some(policy) = after_link {
                    // btrfs can lose the data of an O_TMPFILE file fsynced
                    // before its linkat (atomic-write-file #6).
                    self.timed_sync(|s| sys::sync_after_link(s.file(), policy))
                        .map_err(|e| Error::after_publish(Op::SyncTemp, target, e))?;
                }
                self.close(true)?;
            }
            (TempName::Unnamed, true) => {
                // linkat cannot replace: link under a temp name, then rename.
                // A process killed between the two leaves that name behind
                // (for `sweep`). Locked before it has that name, so that a
                // sweep never finds it unlocked while this process lives.
                // Nothing else can hold the lock of a file no one else can
                // open.
                sys::lock_temp(self.file(), false);
                let name = link_temp_name(self.file(), self.temp_dir(), &self.plan.name)
                    .map_err(|e| Error::new(Op::Link, target, e))?;
                self.temp = TempName::Named(name);
                if let Some(policy) = after_link {
                    // Before the rename: btrfs wants the data synced after
                    // linkat; without a journal (ext4, unknown filesystems)
                    // the data and the inode's new link count must reach the
                    // disk before any rename can, or fsck clears a name
                    // pointing at an inode with no links, and the target is
                    // neither old nor new.
                    self.timed_sync(|s| sys::sync_after_link(s.file(), policy))
                        .map_err(|e| Error::new(Op::SyncTemp, target, e))?;
                }
                self.close_and_rename()?;
            }
            (TempName::Named(_), _) => self.close_and_rename()?,
            (TempName::Published, _) => unreachable!("a Staged is committed once"),
        }
        Ok(())
    }

    /// Renames the temp file into place and closes it, reporting the
    /// close's error, which some filesystems (NFS) use to report a failed
    /// write-back. Its lock (`sys::lock_temp`) is held until the rename is
    /// done, so that `sweep` never finds it unlocked.
    ///
    /// A durable commit has had any write-back error from its `fsync`: it
    /// renames first, the descriptor holding the lock, and closes after
    /// (two calls fewer than the other order). Without `fsync` the close
    /// is the only report: it comes before the rename, and a duplicate
    /// descriptor holds the lock through the rename. So does every commit
    /// where an open file cannot be renamed.
    fn close_and_rename(&mut self) -> Result<(), Error> {
        if sys::RENAME_OPEN_FILES && self.plan.durability == Durability::Full {
            self.rename()?;
            return self.close(true);
        }
        let keep_lock = self.file().try_clone().ok();
        self.close(false)?;
        let renamed = self.rename();
        drop(keep_lock);
        renamed
    }

    fn rename(&mut self) -> Result<(), Error> {
        let TempName::Named(from) = &self.temp else {
            unreachable!("rename needs a named temp file")
        };
        let (from_dir, to_dir, to) = (self.temp_dir(), &self.plan.dir, &self.plan.name);
        let result = if self.plan.overwrite {
            sys::rename(from_dir, from, to_dir, to).map(|()| NoReplace::Renamed)
        } else {
            sys::rename_noreplace(from_dir, from, to_dir, to)
        };
        let how = result.map_err(|e| {
            let e = describe_rename_error(e);
            match self.plan.overwrite {
                true => Error::new(Op::Rename, &self.plan.target, e),
                false => Error::of_no_clobber(Op::Rename, &self.plan.target, e),
            }
        })?;
        let TempName::Named(from) = std::mem::replace(&mut self.temp, TempName::Published) else {
            unreachable!()
        };
        if how == NoReplace::Linked {
            // Published by linkat: the temp name is a second name of the
            // new file. Removing it deletes no data; a failure is reported
            // as after the publish, since the target is new already.
            self.temp_dir().remove(&from).map_err(|e| {
                Error::after_publish(Op::RemoveTemp, self.temp_dir_path.join(&from), e)
            })?;
        }
        Ok(())
    }

    /// Removes the temp file, reporting what dropping would swallow.
    pub(crate) fn rollback(mut self) -> Result<(), Error> {
        if let TempName::Named(name) = std::mem::replace(&mut self.temp, TempName::Unnamed) {
            self.temp_dir()
                .remove(&name)
                .map_err(|e| Error::new(Op::RemoveTemp, self.temp_dir_path.join(&name), e))?;
        }
        Ok(())
    }
}

/// The temp file as created, for [`Staged::match_replaced_file`].
struct TempFile {
    /// Its metadata, when its creation read it already.
    created: Option<sys::Meta>,
    /// The mode it was created with (before the umask).
    create_mode: u32,
    /// With `preserve_xattrs`, the replaced file's attributes to copy.
    xattrs: Option<sys::Xattrs>,
}

/// Whether an access ACL inherited from a directory's default ACL by a
/// file created with `create_mode` may let someone read it who may not
/// read a file of that mode without an ACL: when the group may read (or
/// write, or run) more than others, the mask lets the named entries do
/// as much.
fn inherited_acl_may_widen(create_mode: u32) -> bool {
    sys::COPIES_XATTRS && (create_mode >> 3) & 7 & !(create_mode & 7) != 0
}

/// The mode a file written under `opts` is given for `mode`: its
/// permission and special bits, less setuid and setgid where `opts` says
/// (a `copy` of another user's file).
fn exact_mode(opts: &OpenOptions, mode: u32) -> u32 {
    match opts.no_setid {
        true => mode & 0o7777 & !0o6000,
        false => mode & 0o7777,
    }
}

/// `mode` with the group's permission bits cut to those others have.
fn narrow_group(mode: u32) -> u32 {
    let others = mode & 0o007;
    (mode & !0o070) | ((mode >> 3) & others) << 3
}

/// `fsync`s `dir`, sharing the `fsync` with the commits into the same
/// directory in flight at the same time (see [`group`]).
/// `seen`: [`dir_failures`] before the rename.
fn sync_dir(dir: &Dir, seen: u64) -> io::Result<()> {
    match dir.id() {
        Some(id) => group::sync_shared(id, seen, || dir.sync()),
        None => dir.sync(),
    }
}

/// How many shared fsyncs of `dir` have failed in this process.
fn dir_failures(dir: &Dir) -> u64 {
    dir.id().map_or(0, group::failures)
}

/// Adds what the bare errno leaves out where users keep tripping over it.
fn describe_rename_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::ResourceBusy {
        let msg = format!("{e} (is the target a mount point, such as a bind-mounted file?)");
        return io::Error::new(e.kind(), msg);
    }
    e
}

impl Write for Staged {
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

impl io::Seek for Staged {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file_mut().seek(pos)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let TempName::Named(name) = &self.temp {
            // Cleanup must not fail a drop; `rollback` reports this error.
            let _ = self.temp_dir().remove(name);
        }
    }
}

/// Creates the temp file in `dir`: unnamed where the platform and the
/// filesystem allow it and the caller does, otherwise under a fresh
/// [`name::temp_name`], exclusively and without following links. A named
/// file is locked at once, an unnamed one before it gets a temp name
/// (`sys::lock_temp`): `sweep` never removes it while this process holds it
/// open.
/// Also returns the file's metadata when the lock's check read it.
fn create_temp(
    dir: &Dir,
    target_name: &OsStr,
    mode: u32,
    unnamed: bool,
) -> io::Result<(File, TempName, Option<sys::Meta>)> {
    if unnamed {
        if let Some(file) = sys::create_unnamed(dir, mode)? {
            // Not locked yet: no one else can open it, nor `sweep` see it,
            // until a replacing commit links it under a temp name, which
            // locks it first.
            return Ok((file, TempName::Unnamed, None));
        }
    }
    let mut file = None;
    let name = with_fresh_name(target_name, |name| {
        let created = dir.create_new(name, mode)?;
        match sys::lock_new_temp(&created) {
            sys::NewTemp::Locked(meta) => {
                file = Some((created, meta));
                Ok(())
            }
            sys::NewTemp::Swept => {
                // A sweep found it before the lock: it holds it, or removed
                // it already. Let it go and take another name.
                let _ = dir.remove(name);
                Err(io::ErrorKind::AlreadyExists.into())
            }
        }
    })?;
    let (file, meta) = file.expect("created");
    Ok((file, TempName::Named(name), meta))
}

/// Links an unnamed file into `dir` under a fresh temp name.
fn link_temp_name(file: &File, dir: &Dir, target_name: &OsStr) -> io::Result<OsString> {
    with_fresh_name(target_name, |name| sys::link_unnamed(file, dir, name))
}

/// Calls `create` with fresh [`name::temp_name`]s until one is not taken
/// (`EEXIST`), and returns it.
fn with_fresh_name(
    target_name: &OsStr,
    create: impl FnMut(&OsStr) -> io::Result<()>,
) -> io::Result<OsString> {
    with_fresh(|| name::temp_name(target_name), create)
}

/// Calls `create` with names from `fresh` until one is not taken
/// (`EEXIST`), and returns it.
fn with_fresh(
    fresh: impl Fn() -> OsString,
    mut create: impl FnMut(&OsStr) -> io::Result<()>,
) -> io::Result<OsString> {
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let name = fresh();
        match create(&name) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temp file name",
    ))
}

/// `tokio_atomic_write::copy`, whole: the source opened (links followed
/// as for a target, under the sticky-directory rules), the target opened
/// with the source's mode for a new file, the bytes copied by the kernel
/// where it can, and the commit. Returns the bytes copied.
pub(crate) fn copy(opts: &OpenOptions, from: &Path, to: PathBuf) -> Result<u64, Error> {
    // The metadata from the open's own check: no second `fstat`.
    let (source, meta) = update::open_source(from)?;
    let mut opts = opts.clone();
    if opts.mode.is_none() && sys::HAS_MODES {
        opts.new_file_mode = Some(meta.mode);
        // No setuid or setgid from another user's file, nor kept on a
        // replaced one for its bytes: the copy is the caller's, and would
        // run as the caller, or as the replaced program's owner (a root
        // service copying an upload marked 04755 would make a setuid-root
        // program, as `std::fs::copy` does).
        opts.no_setid = meta.uid != sys::euid();
    }
    let staged = Staged::open(&opts, to).inspect_err(crate::trace::failed_before_commit)?;
    let copied = sys::copy_file(&source, staged.file()).map_err(|e| {
        let err = match e {
            sys::CopyError::Read(e) => Error::new(Op::Read, from, e),
            sys::CopyError::Write(e) => Error::new(Op::Write, &staged.plan.target, e),
        };
        crate::trace::failed_before_commit(&err);
        err
    })?;
    crate::trace::copied(copied);
    staged.commit(&[])?;
    Ok(copied)
}

/// `tokio_atomic_write::write`, whole: open, write, commit.
pub(crate) fn write(opts: &OpenOptions, target: PathBuf, contents: &[u8]) -> Result<(), Error> {
    Staged::open(opts, target)
        .inspect_err(crate::trace::failed_before_commit)?
        .commit(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rejects_paths_without_a_file_name() {
        for bad in ["", "..", "a/..", "/", "a/", "a/.", "."] {
            let err = split(Path::new(bad)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn narrow_group_gives_the_group_what_others_have_at_most() {
        assert_eq!(narrow_group(0o640), 0o600);
        assert_eq!(narrow_group(0o644), 0o644);
        assert_eq!(narrow_group(0o2775), 0o2755);
        assert_eq!(narrow_group(0o4754), 0o4744);
        assert_eq!(narrow_group(0o604), 0o604);
    }

    #[test]
    fn split_gives_dot_for_a_bare_name() {
        assert_eq!(
            split(Path::new("x")).unwrap(),
            (Path::new("."), OsStr::new("x"))
        );
        assert_eq!(
            split(Path::new("a/b")).unwrap(),
            (Path::new("a"), OsStr::new("b"))
        );
        assert_eq!(
            split(Path::new("/b")).unwrap(),
            (Path::new("/"), OsStr::new("b"))
        );
    }
}
