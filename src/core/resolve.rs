//! Finding the file a target path names: its directory, held open, and its
//! name there, with the symlink chain followed (or not) and the kernel's
//! rules for sticky, world-writable directories applied to every link
//! followed and to the entry finally replaced.
//!
//! The crate follows a target's links itself (to put the temp file beside
//! the file finally replaced), so the kernel's `fs.protected_symlinks` check,
//! which runs only inside its own path walk, never sees them; and a rename
//! is not an `O_CREAT` open, so `fs.protected_regular` never sees the
//! replaced file. The same rules are applied here, whether or not those
//! sysctls are on. Directories along a path are still walked by the kernel,
//! as by any `open`, under its own settings.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::split;
use crate::sys::{self, Dir, Kind, Meta};
use crate::{Error, Op, OpenOptions};

/// How many links a symlink chain may have, as Linux's own limit.
const MAX_SYMLINKS: usize = 40;

/// Whether to follow a symlink at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowSymlinks {
    Yes,
    No,
}

impl From<bool> for FollowSymlinks {
    fn from(follow: bool) -> Self {
        match follow {
            true => FollowSymlinks::Yes,
            false => FollowSymlinks::No,
        }
    }
}

/// The entry a target names, found once: every later step works on `dir`
/// and `name`, never on the path again.
#[derive(Debug)]
pub(crate) struct Found {
    /// The directory of the entry finally named (links followed), open
    /// and readable.
    pub(crate) dir: Dir,
    /// That directory's path, for messages.
    pub(crate) dir_path: PathBuf,
    /// The entry's name in `dir`.
    pub(crate) name: OsString,
    /// The entry as it was (`lstat`): `None` for a new file. With
    /// [`FollowSymlinks::Yes`] never a symlink, but for one swapped in
    /// since. Not checked against [`may_use`]: see
    /// [`check_replace`](Self::check_replace).
    pub(crate) existing: Option<Meta>,
}

impl Found {
    /// Looks at the entry again (`lstat` in the directory already held),
    /// for a step that comes after other processes may have changed it,
    /// and checks it as [`find`] did. A symlink found now is not followed:
    /// the chain is resolved once.
    pub(crate) fn refresh(&mut self, target: &Path) -> Result<(), Error> {
        self.existing = self
            .dir
            .stat(&self.name)
            .map_err(|e| Error::new(Op::Open, target, e))?;
        Ok(())
    }

    /// The same entry, with a second handle on its directory: what each
    /// commit of a state file consumes.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn try_clone(&self) -> Result<Found, Error> {
        Ok(Found {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| Error::new(Op::OpenDir, &self.dir_path, e))?,
            dir_path: self.dir_path.clone(),
            name: self.name.clone(),
            existing: self.existing,
        })
    }

    /// Fails with `PermissionDenied`, naming `target`, when the entry is
    /// one that [`may_use`] forbids replacing. Reading it is another matter:
    /// the kernel's rule is about creating and replacing.
    pub(crate) fn check_replace(&self, target: &Path) -> Result<(), Error> {
        match self.existing {
            Some(meta) if !may_use(&self.dir, &meta) => Err(Error::new(
                Op::Open,
                target,
                refused("entry", "not replaced"),
            )),
            _ => Ok(()),
        }
    }

    /// Which file this is, however it was reached: the directory's
    /// identity and the name (the absolute path where the platform gives
    /// no identity).
    pub(crate) fn key(&self) -> (Option<(u64, u64)>, PathBuf) {
        match self.dir.id() {
            Some(id) => (Some(id), PathBuf::from(&self.name)),
            None => {
                let path = self.dir_path.join(&self.name);
                (None, std::path::absolute(&path).unwrap_or(path))
            }
        }
    }
}

/// Finds the entry `target` names, following its symlink chain when
/// `follow` says so, each relative link against its own directory, each
/// link looked at and read through its directory's descriptor.
///
/// # Errors
///
/// [`Op::OpenDir`] naming a directory that cannot be opened; [`Op::Open`]
/// naming the target for a path that names no file or a chain that loops
/// (`ELOOP`); `PermissionDenied` ([`Op::Open`]) naming the link, for a link
/// in a sticky, world-writable directory owned by neither the caller nor
/// the directory's owner. Nothing on disk changes.
pub(crate) fn find(target: &Path, follow: FollowSymlinks) -> Result<Found, Error> {
    find_entry(target, follow, true)
}

/// [`find`] for a target written under `opts`: its links followed as
/// [`OpenOptions::follow_symlinks`] says, and, with
/// [`OpenOptions::create_parents`], the missing directories of the path
/// as given created first (see [`super::parents`]).
pub(crate) fn find_target(target: &Path, opts: &OpenOptions) -> Result<Found, Error> {
    let follow = opts.follow_symlinks.into();
    match find(target, follow) {
        Err(e) if opts.create_parents && is_missing_parent(&e, target) => {
            let (parent, _) = split(target).map_err(|e| Error::new(Op::Open, target, e))?;
            super::parents::create(parent, opts.durability)?;
            find(target, follow)
        }
        other => other,
    }
}

/// Whether `e`, from [`find`] of `target`, is the directory of the path
/// as given missing (not one that a symlink points into).
fn is_missing_parent(e: &Error, target: &Path) -> bool {
    e.op() == Op::OpenDir
        && e.kind() == io::ErrorKind::NotFound
        && split(target).is_ok_and(|(parent, _)| e.path() == parent)
}

/// [`find`], for an entry only to be read: its directory is held for
/// lookups alone (on Linux an `O_PATH` descriptor where it cannot be
/// read), so that a file in a search-only directory (`0711`) can be read,
/// as `open` would read it. Not for a target: its directory must be
/// readable to sync it.
pub(crate) fn find_to_read(target: &Path) -> Result<Found, Error> {
    find_entry(target, FollowSymlinks::Yes, false)
}

fn find_entry(target: &Path, follow: FollowSymlinks, readable: bool) -> Result<Found, Error> {
    let mut path = target.to_path_buf();
    // After a relative link: the directory that held it, and what it holds,
    // looked up from that directory's descriptor, not by path again (an
    // ancestor renamed meanwhile must not change where the link leads).
    let mut relative: Option<(Dir, PathBuf)> = None;
    let mut links = 0;
    loop {
        let (parent, name) = split(&path).map_err(|e| Error::new(Op::Open, target, e))?;
        let opened = match &relative {
            Some((base, to)) => {
                let (to_parent, _) = split(to).map_err(|e| Error::new(Op::Open, target, e))?;
                base.open_lookup_at(to_parent)
            }
            None => Dir::open_lookup(parent),
        };
        let dir = opened.map_err(|e| Error::new(Op::OpenDir, parent, e))?;
        let existing = dir
            .stat(name)
            .map_err(|e| Error::new(Op::Open, target, e))?;
        match existing {
            Some(link) if link.kind == Kind::Symlink && follow == FollowSymlinks::Yes => {
                if links == MAX_SYMLINKS {
                    return Err(Error::new(Op::Open, target, too_many_links()));
                }
                links += 1;
                if !may_use(&dir, &link) {
                    return Err(Error::new(
                        Op::Open,
                        &path,
                        refused("symlink", "not followed"),
                    ));
                }
                let to = dir
                    .read_link(name)
                    .map_err(|e| Error::new(Op::Open, &path, e))?;
                // An absolute `to` replaces the base in `join`.
                let next = parent.join(&to);
                relative = match to.is_absolute() {
                    true => None,
                    false => Some((dir, to)),
                };
                path = next;
            }
            _ => {
                let dir = match readable {
                    true => dir
                        .readable()
                        .map_err(|e| Error::new(Op::OpenDir, parent, e))?,
                    false => dir,
                };
                return Ok(Found {
                    dir,
                    dir_path: parent.to_path_buf(),
                    name: name.to_owned(),
                    existing,
                });
            }
        }
    }
}

/// The kernel's rule for a sticky, world-writable directory (`/tmp`), as
/// `fs.protected_symlinks` applies it to links and `fs.protected_regular`
/// to files: an entry there is used (a link followed, a file replaced)
/// only when the caller (effective uid) or the directory's owner owns it.
/// Elsewhere, always.
pub(crate) fn may_use(dir: &Dir, entry: &Meta) -> bool {
    let (dir_uid, dir_mode) = dir.owner_and_mode();
    let sticky_and_shared = dir_mode & 0o1002 == 0o1002;
    !sticky_and_shared || entry.uid == sys::euid() || entry.uid == dir_uid
}

/// The error for an entry that [`may_use`] forbids.
pub(crate) fn refused(what: &str, outcome: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{what} in a sticky, world-writable directory, owned by neither this user \
             nor the directory's owner: {outcome} (the kernel's protected_symlinks \
             and protected_regular rule)"
        ),
    )
}

#[cfg(unix)]
fn too_many_links() -> io::Error {
    rustix::io::Errno::LOOP.into()
}

#[cfg(not(unix))]
fn too_many_links() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    )
}
