//! The primitives every unix shares. `linux.rs` and `macos.rs` supply the
//! few that differ, under the same names; the portable versions here are
//! compiled only where no platform file replaces them.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::{Kind, Leftover, Meta, NewTemp, NoReplace};

/// Elsewhere: through a buffer. (macOS could clone with `fclonefileat`,
/// which rustix does not offer.)
#[cfg(not(target_os = "linux"))]
pub(crate) use super::copy_chunks as copy_file;
#[cfg(target_os = "linux")]
pub(crate) use super::linux::{
    after_link, copy_file, create_unnamed, link_unnamed, random_bytes, sync_after_link,
};
#[cfg(target_os = "macos")]
pub(crate) use super::macos::sync_fd;

/// Whether this platform applies unix modes and owners.
pub(crate) const HAS_MODES: bool = true;

/// Whether an open file can be renamed. Here it can, so a durable commit
/// renames its temp file while the descriptor still holds the lock that
/// keeps `sweep` away, and closes it after.
pub(crate) const RENAME_OPEN_FILES: bool = true;

/// A directory, held open so that every step of one atomic write acts on the
/// same directory even if its path is renamed meanwhile, and so that it can
/// be fsynced.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    /// Owner, group and mode (setuid/setgid/sticky included), from the
    /// `fstat` that gave the identity: the sticky-directory rules and the
    /// lock file need them.
    uid: u32,
    gid: u32,
    mode: u32,
    /// Opened with `O_PATH` ([`Dir::open_lookup`]): good for looking up
    /// names, not for reading, creating entries through a syscall that
    /// needs a readable descriptor, or `fsync`.
    lookup_only: bool,
}

impl Dir {
    /// Opens `path` as a directory (`O_DIRECTORY`), following symlinks.
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        // O_RDONLY, not O_PATH: fsync needs a readable descriptor.
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Dir::from_fd(fd, false)
    }

    /// Opens `path` as [`Dir::open`] does or, on Linux, where the directory
    /// can be searched but not read (mode 0711), with `O_PATH`, which needs
    /// search permission only: enough to look at a symlink inside and read
    /// it. [`Dir::readable`] then reopens it for the rest.
    pub(crate) fn open_lookup(path: &Path) -> io::Result<Dir> {
        open_lookup_in(CWD, path)
    }

    /// [`Dir::open_lookup`] of `rel`, relative to this directory (which
    /// may be lookup-only).
    pub(crate) fn open_lookup_at(&self, rel: &Path) -> io::Result<Dir> {
        open_lookup_in(&self.fd, rel)
    }

    /// This directory, readable: itself, or when opened by
    /// [`Dir::open_lookup`] with `O_PATH`, reopened through `.` (the same
    /// directory, whatever its path holds now), which fails with `EACCES`
    /// where it cannot be read.
    pub(crate) fn readable(self) -> io::Result<Dir> {
        if !self.lookup_only {
            return Ok(self);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Dir::from_fd(
            rustix::fs::openat(&self.fd, ".", flags, Mode::empty())?,
            false,
        )
    }

    /// A directory opened as `fd`, with its identity.
    fn from_fd(fd: OwnedFd, lookup_only: bool) -> io::Result<Dir> {
        let st = rustix::fs::fstat(&fd)?;
        #[allow(clippy::unnecessary_cast)] // st_dev is i32 on macOS
        let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
        #[allow(clippy::unnecessary_cast)] // st_mode is u16 on macOS
        let mode = st.st_mode as u32 & 0o7777;
        Ok(Dir {
            fd,
            dev,
            ino,
            uid: st.st_uid,
            gid: st.st_gid,
            mode,
            lookup_only,
        })
    }

    /// A second handle on the same directory (`dup`, close-on-exec): for
    /// each commit of a file that is committed again and again.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            ..*self
        })
    }

    /// The directory's owner and mode (sticky bit included), as they were
    /// when it was opened.
    pub(crate) fn owner_and_mode(&self) -> (u32, u32) {
        (self.uid, self.mode)
    }

    /// The directory's owner and group, as they were when it was opened.
    pub(crate) fn owner_ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// The group a file created in this directory gets: the directory's
    /// own where it is setgid, else this process's effective group.
    pub(crate) fn group_of_new_entries(&self) -> u32 {
        match self.mode & 0o2000 {
            0 => rustix::process::getegid().as_raw(),
            _ => self.gid,
        }
    }

    /// `readlinkat`: what the symlink `name` holds.
    pub(crate) fn read_link(&self, name: &OsStr) -> io::Result<std::path::PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(OsString::from_vec(target.into_bytes()).into())
    }

    /// Device and inode numbers: which directory this is, however it was
    /// reached.
    pub(crate) fn id(&self) -> Option<(u64, u64)> {
        Some((self.dev, self.ino))
    }

    /// The device id of the filesystem holding the directory.
    pub(crate) fn device(&self) -> u64 {
        self.dev
    }

    /// `fsync` of the directory: makes the entries created, renamed or
    /// removed in it durable.
    ///
    /// On Linux, then an `fstat`, whose `EIO` fails the sync: once xfs has
    /// shut down (after a metadata I/O error, or a power cut simulated with
    /// its shutdown ioctl) it answers a directory's `fsync` with success
    /// without writing anything, so a rename lost with its log would pass
    /// for durable, while its `fstat` fails with `EIO`. (Its fsync of a
    /// regular file checks, as ext4's fsyncs do.) Other `fstat` errors say
    /// nothing about the sync and are ignored.
    ///
    /// On macOS, `F_FULLFSYNC` as for files ([`sync_file`]): a plain
    /// `fsync` there leaves the entries in the drive's cache.
    pub(crate) fn sync(&self) -> io::Result<()> {
        sync_fd(&self.fd)?;
        #[cfg(target_os = "linux")]
        if let Err(rustix::io::Errno::IO) = rustix::fs::fstat(&self.fd) {
            return Err(rustix::io::Errno::IO.into());
        }
        Ok(())
    }

    /// `lstat` of an entry; `None` when nothing is there.
    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a new file exclusively: `O_CREAT | O_EXCL | O_NOFOLLOW |
    /// O_CLOEXEC`, so an entry already there (a symlink planted at the name
    /// included) fails with `EEXIST` and is never followed or truncated.
    pub(crate) fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode as _),
        )?;
        Ok(File::from(fd))
    }

    /// `unlinkat` of a file entry.
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// The names in the directory, `.` and `..` left out.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        use std::os::unix::ffi::OsStringExt;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(names)
    }

    /// Looks at `name` for `sweep`: `None` unless it is a regular file or
    /// a directory (a temp tree; a symlink is neither followed nor a
    /// leftover). Opens it without
    /// following links or blocking (a FIFO swapped in meanwhile) and tries
    /// the lock that [`lock_temp`] takes: held means a live writer has it.
    /// A file that cannot be opened or locked (no read or write permission,
    /// a filesystem without locks) counts as not held: age alone decides.
    pub(crate) fn probe_leftover(&self, name: &OsStr) -> io::Result<Option<Leftover>> {
        let st = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let tree = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => false,
            FileType::Directory => true,
            _ => return Ok(None),
        };
        let fd = self.open_existing(name, !tree);
        #[allow(clippy::unnecessary_cast)] // the field widths differ by platform
        let id = (st.st_dev as u64, st.st_ino as u64);
        let (held, lock, marked) = match fd {
            Ok(fd) => {
                let now = rustix::fs::fstat(&fd)?;
                if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                    return Ok(None); // replaced since the stat: not ours to judge
                }
                let marked = if tree { has_mark(&fd, name) } else { None };
                match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => (false, Some(File::from(fd)), marked),
                    Err(Errno::WOULDBLOCK) => (held_by_this_user(id), None, marked),
                    Err(_) => (false, None, marked),
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::ACCESS) | Err(Errno::PERM) => (false, None, tree.then_some(false)),
            Err(e) => return Err(e.into()),
        };
        #[allow(clippy::unnecessary_cast)] // the field widths differ by platform
        let modified = SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(
                st.st_mtime.max(0) as u64,
                st.st_mtime_nsec as u32,
            ))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Some(Leftover {
            modified,
            tree,
            id: Some(id),
            held,
            uid: st.st_uid,
            marked,
            _lock: lock,
        }))
    }

    /// Opens the entry `name` as it is: read-only, or (`or_write_only`)
    /// write-only when it cannot be read; never following a link nor
    /// blocking on a FIFO.
    fn open_existing(&self, name: &OsStr, or_write_only: bool) -> Result<OwnedFd, Errno> {
        let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let open = |access| rustix::fs::openat(&self.fd, name, flags | access, Mode::empty());
        match open(OFlags::RDONLY) {
            Err(Errno::ACCESS) | Err(Errno::PERM) if or_write_only => open(OFlags::WRONLY),
            other => other,
        }
    }

    /// Opens the lock file `name`, creating it if missing, and tries its
    /// exclusive `flock` without waiting: `Ok(None)` while another holder
    /// (another process, or another descriptor in this one) has it. The
    /// lock is held until the file is closed or the process dies.
    ///
    /// Opened read-only, so that anyone who may read it can take it; never
    /// following a link nor blocking on a FIFO planted at the name, and
    /// refusing anything but a regular file. `allowed` judges the file
    /// found there (its metadata), before any lock is tried on it.
    ///
    /// A lock file this process owns, empty and with no other name, gets
    /// the directory's owner and group (best effort: only root can give a
    /// file away) and `mode`: so that whoever may replace the target can
    /// take its lock, whoever created the lock file (an administrator's tool
    /// run as root included).
    pub(crate) fn try_lock_file(
        &self,
        name: &OsStr,
        mode: u32,
        allowed: impl FnOnce(&Meta) -> io::Result<()>,
    ) -> io::Result<Option<File>> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode as _),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let meta = meta_of(&st);
        match meta.kind {
            Kind::File => {}
            Kind::Dir => return Err(Errno::ISDIR.into()),
            _ => return Err(not_regular()),
        }
        allowed(&meta)?;
        // Only an empty file with no other name is a lock file to mend:
        // anything else at the name (a secret renamed there by whoever may
        // rename in this directory, a hard link to one) is locked as it is,
        // never given away nor opened wider.
        #[allow(clippy::unnecessary_cast)] // the field widths differ by platform
        let bare = st.st_size == 0 && st.st_nlink as u64 == 1;
        if bare && meta.uid == euid() {
            // Best effort, and quiet: the lock works without it. Root can
            // give the file to the directory's owner; anyone else can at
            // most give it the directory's group, if a member.
            let (uid, gid) = (
                rustix::fs::Uid::from_raw(self.uid),
                rustix::fs::Gid::from_raw(self.gid),
            );
            if meta.uid != self.uid || meta.gid != self.gid {
                let _ = rustix::fs::fchown(&fd, Some(uid), Some(gid))
                    .or_else(|_| rustix::fs::fchown(&fd, None, Some(gid)));
            }
            if meta.mode != mode {
                let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as _));
            }
        }
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(File::from(fd))),
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens the file at `name` to read it, never following a link there
    /// (the caller has resolved the links it follows already); `None` when
    /// nothing, or a symlink, is there. A directory fails with `EISDIR`,
    /// anything else but a regular file with `InvalidInput`, without
    /// blocking on a FIFO. With the file, its metadata, from the `fstat`
    /// that checked it.
    pub(crate) fn open_read(&self, name: &OsStr) -> io::Result<Option<(File, Meta)>> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            // A symlink (`ELOOP`) is not followed: nothing to read.
            Err(Errno::NOENT) | Err(Errno::LOOP) => return Ok(None),
            other => other?,
        };
        let meta = regular(&fd)?;
        Ok(Some((File::from(fd), meta)))
    }

    /// `fsync` of the entry `name`, of kind `kind` (from an `lstat`): a
    /// regular file (opened read-only, or write-only when it cannot be
    /// read) or a directory, never following a link nor blocking on a
    /// FIFO; a symlink or a special file has nothing to sync and is left
    /// alone. `ENOENT` when the entry is gone; `EISDIR`, `ENOTDIR`,
    /// `ELOOP` or `InvalidInput` when it is no longer of that kind.
    ///
    /// An entry this process may not open at all (another user's `0600`
    /// file, which a rename needs no permission on): on Linux the whole
    /// filesystem is synced instead (`syncfs`), which covers it; elsewhere
    /// the error.
    pub(crate) fn sync_entry(&self, name: &OsStr, kind: Kind) -> io::Result<()> {
        let not_opened: io::Error = match kind {
            Kind::File => match self.open_existing(name, true) {
                Ok(fd) => return regular(&fd).and_then(|_| sync_fd(&fd)),
                Err(e) => e.into(),
            },
            Kind::Dir => match self.open_dir(name) {
                Ok(dir) => return dir.sync(),
                Err(e) => e,
            },
            Kind::Symlink | Kind::Other => return Ok(()),
        };
        #[cfg(target_os = "linux")]
        if matches!(
            Errno::from_io_error(&not_opened),
            Some(Errno::ACCESS | Errno::PERM)
        ) {
            return Ok(rustix::fs::syncfs(&self.fd)?);
        }
        Err(not_opened)
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// [`Dir::open_lookup`] of `path`, relative to `base`: read-only, or on
/// Linux, where that is refused (`EACCES`: a search-only directory),
/// `O_PATH`.
fn open_lookup_in(base: impl AsFd, path: &Path) -> io::Result<Dir> {
    let flags = OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat(&base, path, flags | OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => Dir::from_fd(fd, false),
        #[cfg(target_os = "linux")]
        Err(Errno::ACCESS) => {
            let fd = rustix::fs::openat(&base, path, flags | OFlags::PATH, Mode::empty())?;
            Dir::from_fd(fd, true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the directory open as `fd` carries the crate's mark for the
/// name `name`; `None`
/// where its filesystem has no user extended attributes (`EOPNOTSUPP`).
fn has_mark(fd: &OwnedFd, name: &OsStr) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let mut value = [0u8; 1024];
    match rustix::fs::fgetxattr(fd, super::LEFTOVER_MARK, &mut value) {
        Ok(len) => Some(
            value[..len.min(value.len())]
                .split(|b| *b == b'/')
                .any(|n| n == name.as_bytes()),
        ),
        Err(e) if no_xattrs(e) => None,
        Err(_) => Some(false),
    }
}

/// Whether `e` says the filesystem has no extended attributes at all.
pub(super) fn no_xattrs(e: Errno) -> bool {
    // ENOTSUP and EOPNOTSUPP are one number on Linux, two on macOS.
    e == Errno::OPNOTSUPP || e == Errno::NOTSUP || e == Errno::NOSYS
}

/// Whether `e` says the attribute is not there: `ENODATA` on Linux,
/// `ENOATTR` on macOS and the BSDs.
fn no_such_xattr(e: Errno) -> bool {
    #[cfg(any(
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    if e == Errno::NOATTR {
        return true;
    }
    #[cfg(not(any(target_os = "freebsd", target_os = "dragonfly", target_os = "openbsd")))]
    if e == Errno::NODATA {
        return true;
    }
    false
}

/// Whether a process of this user holds a `flock` on the file `id` (device
/// and inode): on Linux, the holders `/proc/locks` lists, each process's
/// real user read from its `/proc/PID/status`. Another user who can open
/// a leftover (one left readable) could otherwise keep it from `sweep` for
/// as long as it likes. A taker that is gone (the lock kept by a child
/// that inherited the descriptor), or out of this PID namespace's view
/// (which the kernel cannot tell apart from gone), is no live writer of
/// this user's. Where the lock cannot be found at all (no `/proc`, a
/// filesystem whose `st_dev` is not its superblock's, such as a btrfs
/// subvolume), held.
fn held_by_this_user(id: (u64, u64)) -> bool {
    #[cfg(target_os = "linux")]
    {
        let (dev, ino) = id;
        let key = format!(
            "{:02x}:{:02x}:{ino} ",
            rustix::fs::major(dev as _),
            rustix::fs::minor(dev as _)
        );
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return true;
        };
        let me = euid();
        let mut holders = 0;
        for line in locks
            .lines()
            .filter(|l| !l.contains("->") && l.contains(&key))
        {
            let mut fields = line.split_whitespace().skip(1);
            if fields.next() != Some("FLOCK") {
                continue;
            }
            holders += 1;
            // The process that took the lock. 0 where it cannot be named
            // here: outside this PID namespace's view, or gone (outside the
            // initial namespace, the kernel can name a dead taker only
            // until its pid is freed).
            let pid = fields.nth(2).and_then(|p| p.parse::<u32>().ok());
            if pid
                .filter(|pid| *pid != 0)
                .is_some_and(|pid| real_uid_of(pid) == Some(me))
            {
                return true;
            }
            // Another user's, or a process gone or out of sight (its lock
            // then kept by a child that inherited the descriptor, whoever
            // it is now): no live writer of this user's that sweep could
            // see.
        }
        // Every holder is another user's (or none is left: let go since).
        holders == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = id;
        true
    }
}

/// The real user id of process `pid`, from `/proc/PID/status` (not the
/// owner of `/proc/PID`, which a setuid program makes root's); `None` when
/// the process is gone.
#[cfg(target_os = "linux")]
fn real_uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().next()?.parse().ok()
}

/// Fails unless `fd` is a regular file: `EISDIR` for a directory,
/// `InvalidInput` for anything else. Its metadata when it is one.
fn regular(fd: &OwnedFd) -> io::Result<Meta> {
    let st = rustix::fs::fstat(fd)?;
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Ok(meta_of(&st)),
        FileType::Directory => Err(Errno::ISDIR.into()),
        _ => Err(not_regular()),
    }
}

fn not_regular() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")
}

/// The effective user id: whom the kernel's permission checks, and the
/// sticky-directory rules, are about.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The process's umask, read without changing it (calling `umask` to read
/// it would race with every thread creating a file): from
/// `/proc/self/status` on Linux (4.7 and later); `None` where it cannot be
/// read.
pub(crate) fn umask() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

// The stat field widths differ between platforms (st_mode is u16 on macOS).
#[allow(clippy::unnecessary_cast)]
pub(super) fn meta_of(st: &rustix::fs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        mode: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        id: Some((st.st_dev as u64, st.st_ino as u64)),
    }
}

/// `fstat` of an open file.
pub(crate) fn file_meta(file: &File) -> io::Result<Meta> {
    Ok(meta_of(&rustix::fs::fstat(file)?))
}

/// Marks a new temp file as a live writer's: an exclusive `flock`, held
/// until the file is closed or the process dies, which `sweep` tests. Best
/// effort: where the filesystem has no locks, `sweep` goes by age alone.
/// For a `named` file, `false` when a sweep got to it first, between its
/// creation and the lock: the sweep holds its lock, or has removed it.
pub(crate) fn lock_temp(file: impl AsFd, named: bool) -> bool {
    let file = file.as_fd();
    match named {
        true => !matches!(lock_new_temp(file), NewTemp::Swept),
        false => !matches!(
            rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive),
            Err(Errno::WOULDBLOCK)
        ),
    }
}

/// [`lock_temp`] of a named file just created. Its check (that the file
/// still has a name once locked) is an `fstat`, whose answer is handed
/// back: the caller, which needs the file's owner and mode, makes no
/// second one.
pub(crate) fn lock_new_temp(file: impl AsFd) -> NewTemp {
    let file = file.as_fd();
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Err(Errno::WOULDBLOCK) => NewTemp::Swept,
        Err(_) => NewTemp::Locked(None),
        Ok(()) => match rustix::fs::fstat(file) {
            Ok(st) if st.st_nlink == 0 => NewTemp::Swept,
            Ok(st) => NewTemp::Locked(Some(meta_of(&st))),
            Err(_) => NewTemp::Locked(None),
        },
    }
}

/// `close`, reporting its error, which some filesystems (NFS) use to report
/// a failed write-back.
#[allow(unsafe_code)]
pub(crate) fn close(file: File) -> io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` comes from `into_raw_fd` on a `File` owned here, so it is
    // open and owned by nothing else, and nothing uses it after this call,
    // whatever its result.
    Ok(unsafe { rustix::io::try_close(fd) }?)
}

/// `fchmod`: the exact mode, not masked by the umask, where the filesystem
/// has modes. Some (vfat, many FUSE and network shares) refuse it with
/// `EPERM` or `EOPNOTSUPP` even for the file's owner: that is not an error,
/// and the file keeps the mode it was created with, which the caller chose
/// never wider than `mode`.
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    match rustix::fs::fchmod(file, Mode::from_raw_mode(mode as _)) {
        Err(Errno::PERM) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => Ok(()),
        other => Ok(other?),
    }
}

/// `fchown`; `None` leaves that id as it is.
pub(crate) fn set_owner(file: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    Ok(rustix::fs::fchown(file, uid, gid)?)
}

/// `renameat`: atomically replaces whatever is at `to`.
pub(crate) fn rename(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat(&from_dir.fd, from, &to_dir.fd, to)?)
}

/// Set when the kernel has no `renameat2` at all (`ENOSYS`): true for the
/// whole process.
static NO_RENAME_NOREPLACE_SYSCALL: AtomicBool = AtomicBool::new(false);
/// Devices whose filesystem refused `RENAME_NOREPLACE` (`EINVAL`,
/// `EOPNOTSUPP`): a property of the filesystem, so remembered per device,
/// never for the whole process.
static NO_RENAME_NOREPLACE_DEVICES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Moves `from` to `to` only if nothing is at `to`, atomically: `EEXIST`
/// (`ErrorKind::AlreadyExists`) otherwise.
///
/// Uses `renameat2(RENAME_NOREPLACE)` (`renameatx_np(RENAME_EXCL)` on macOS);
/// where the kernel or the filesystem lacks it, `linkat`, which is just as
/// race-free, and then [`NoReplace::Linked`] tells the caller that `from`
/// is still there to remove. Never a check followed by a rename.
#[doc(alias = "renameat2")]
pub(crate) fn rename_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<NoReplace> {
    if try_rename_flagged(from_dir, from, to_dir, to, RenameFlag::NoReplace)? {
        return Ok(NoReplace::Renamed);
    }
    link_noreplace(from_dir, from, to_dir, to)?;
    Ok(NoReplace::Linked)
}

/// A rename with `flag`, unless the kernel or the filesystem of `to_dir`
/// is known to lack it: `Ok(false)` when it does (now or before), for the
/// caller's fallback.
fn try_rename_flagged(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
    flag: RenameFlag,
) -> io::Result<bool> {
    let (no_syscall, devices) = match flag {
        RenameFlag::NoReplace => (&NO_RENAME_NOREPLACE_SYSCALL, &NO_RENAME_NOREPLACE_DEVICES),
        RenameFlag::Exchange => (&NO_RENAME_EXCHANGE_SYSCALL, &NO_RENAME_EXCHANGE_DEVICES),
    };
    let dev = to_dir.dev;
    if no_syscall.load(Ordering::Relaxed) || lock(devices).contains(&dev) {
        return Ok(false);
    }
    match renameat_flagged(&from_dir.fd, from, &to_dir.fd, to, flag) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(e, no_syscall, devices, dev) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `e`, from a flagged rename into a directory on device `dev`,
/// says the flag is unsupported; if so, remembers it: `ENOSYS` for the
/// process (`no_syscall`), the rest for the device (`devices`).
fn unsupported(e: Errno, no_syscall: &AtomicBool, devices: &Mutex<Vec<u64>>, dev: u64) -> bool {
    if e == Errno::NOSYS {
        no_syscall.store(true, Ordering::Relaxed);
        return true;
    }
    // EINVAL: the filesystem does not take the flag (FUSE, older NFS);
    // EOPNOTSUPP/ENOTSUP (distinct on macOS): likewise.
    if e == Errno::INVAL || e == Errno::OPNOTSUPP || e == Errno::NOTSUP {
        let mut devices = lock(devices);
        if !devices.contains(&dev) {
            devices.push(dev);
        }
        return true;
    }
    false
}

/// The flag of a flagged rename.
#[derive(Clone, Copy)]
enum RenameFlag {
    /// `RENAME_NOREPLACE` (`RENAME_EXCL` on macOS).
    NoReplace,
    /// `RENAME_EXCHANGE` (`RENAME_SWAP` on macOS).
    Exchange,
}

/// `renameat2` with `flag` on Linux, `renameatx_np` on macOS; errors stay
/// `Errno` so the caller picks its fallback by number.
#[cfg(any(target_os = "linux", target_os = "macos"))]
#[doc(alias = "renameat2", alias = "renameatx_np")]
fn renameat_flagged(
    from_dir: &OwnedFd,
    from: &OsStr,
    to_dir: &OwnedFd,
    to: &OsStr,
    flag: RenameFlag,
) -> Result<(), Errno> {
    let flags = match flag {
        RenameFlag::NoReplace => rustix::fs::RenameFlags::NOREPLACE,
        RenameFlag::Exchange => rustix::fs::RenameFlags::EXCHANGE,
    };
    rustix::fs::renameat_with(from_dir, from, to_dir, to, flags)
}

/// No flagged rename on other unixes: always the fallback.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn renameat_flagged(
    _: &OwnedFd,
    _: &OsStr,
    _: &OwnedFd,
    _: &OsStr,
    _: RenameFlag,
) -> Result<(), Errno> {
    Err(Errno::NOSYS)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The no-clobber fallback: `linkat` publishes the file under `to` only if
/// that name is free (`EEXIST` otherwise). Atomic for readers: `to`
/// appears once, whole. The caller removes `from` afterwards.
pub(crate) fn link_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        &from_dir.fd,
        from,
        &to_dir.fd,
        to,
        AtFlags::empty(),
    )?)
}

/// No unnamed temp files outside Linux: always a named one.
#[cfg(not(target_os = "linux"))]
pub(crate) fn create_unnamed(_dir: &Dir, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

/// Never reached outside Linux: `create_unnamed` returns no file there.
#[cfg(not(target_os = "linux"))]
pub(crate) fn link_unnamed(_file: &File, _dir: &Dir, _name: &OsStr) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Without `getrandom` in rustix: the portable source.
#[cfg(not(target_os = "linux"))]
pub(crate) fn random_bytes(buf: &mut [u8]) {
    super::random_bytes_portable(buf)
}

/// What a file linked by `link_unnamed` needs; never asked outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn after_link(_file: &File, _dev: u64) -> super::AfterLink {
    super::AfterLink::FullSync
}

/// The sync after `link_unnamed`, which exists only on Linux: never reached
/// elsewhere, and a full sync if it were.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sync_after_link(file: &File, policy: super::AfterLink) -> io::Result<()> {
    match policy {
        super::AfterLink::Nothing => Ok(()),
        _ => sync_file(file),
    }
}

/// `fsync`: data and metadata on the disk.
#[cfg(not(target_os = "macos"))]
pub(crate) fn sync_fd(fd: impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::fsync(fd)?)
}

/// [`sync_fd`] of a file: data and metadata on the disk.
pub(crate) fn sync_file(file: &File) -> io::Result<()> {
    sync_fd(file)
}

/// The primitives of [`AsyncAtomicDir`](crate::AsyncAtomicDir): a temp
/// tree built beside the target, walked without following links, and
/// published by one rename or exchange.
impl Dir {
    /// `mkdirat`: a new directory, `EEXIST` if anything is at `name` (a
    /// planted symlink included, which is never followed).
    pub(crate) fn create_dir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            name,
            Mode::from_raw_mode(mode as _),
        )?)
    }

    /// Opens the directory at `name` without following a symlink there
    /// (`O_NOFOLLOW`: `ELOOP` or `ENOTDIR` for a link).
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Dir::from_fd(fd, false)
    }

    /// Creates the regular file `name` for writing, mode `0o666` less the
    /// umask: a new inode, exclusively. A regular file already there is
    /// unlinked first, never truncated: it may be a hard link to a file
    /// outside (`cp -al`). Anything else there (a symlink, a directory)
    /// fails with `EEXIST`, and is neither followed nor removed.
    pub(crate) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        let create = || {
            rustix::fs::openat(
                &self.fd,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            )
        };
        let fd = match create() {
            Err(Errno::EXIST) if self.stat(name)?.is_some_and(|m| m.kind == Kind::File) => {
                match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => create()?,
                    Err(e) => return Err(e.into()),
                }
            }
            other => other?,
        };
        Ok(File::from(fd))
    }

    /// `fstat` of the directory.
    pub(crate) fn meta(&self) -> io::Result<Meta> {
        Ok(meta_of(&rustix::fs::fstat(&self.fd)?))
    }

    /// Gives the directory's owner read, write and search permission, best
    /// effort, so that a read-only directory of a tree being removed can be
    /// emptied.
    pub(crate) fn allow_owner_all(&self) {
        if let Ok(meta) = self.meta() {
            if meta.mode & 0o700 != 0o700 {
                let _ = self.set_mode(meta.mode | 0o700);
            }
        }
    }

    /// Opens the regular file `name` to `fsync` it: read-only, or
    /// write-only when it cannot be read; never following a link nor
    /// blocking on a FIFO.
    pub(crate) fn open_to_sync(&self, name: &OsStr) -> io::Result<File> {
        Ok(File::from(self.open_existing(name, true)?))
    }

    /// `unlinkat(AT_REMOVEDIR)` of an empty directory.
    pub(crate) fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    /// The entries, `.` and `..` left out, each with its kind (from the
    /// directory entry, or an `lstat` where the filesystem leaves it out).
    /// An entry removed meanwhile is left out.
    pub(crate) fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        use std::os::unix::ffi::OsStringExt;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let kind = match entry.file_type() {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink => Kind::Symlink,
                FileType::Unknown => match self.stat(&name)? {
                    Some(meta) => meta.kind,
                    None => continue,
                },
                _ => Kind::Other,
            };
            entries.push((name, kind));
        }
        Ok(entries)
    }

    /// Whether the directory is the root of a mount: another filesystem,
    /// or a bind mount of the same one (same device). Linux's `statx`
    /// tells (`STATX_ATTR_MOUNT_ROOT`, since 5.8); elsewhere, or on older
    /// kernels, `false`, and only a change of device shows a mount.
    pub(crate) fn is_mount_root(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{StatxAttributes, StatxFlags};
            let flags = AtFlags::EMPTY_PATH | AtFlags::NO_AUTOMOUNT;
            if let Ok(st) = rustix::fs::statx(&self.fd, "", flags, StatxFlags::empty()) {
                return st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                    && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
            }
        }
        false
    }

    /// Whether the entry `name` is the root of a mount (Linux 5.8 and
    /// later tell, for bind mounts too), looked up without opening it,
    /// without following a symlink or triggering an automount, and from
    /// cached attributes (`AT_STATX_DONT_SYNC`): a hung filesystem mounted
    /// there (FUSE) is not asked. `false` elsewhere; `false` for a missing
    /// entry.
    pub(crate) fn is_mount_point_at(&self, name: &OsStr) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{StatxAttributes, StatxFlags};
            let flags =
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT | AtFlags::STATX_DONT_SYNC;
            match rustix::fs::statx(&self.fd, name, flags, StatxFlags::empty()) {
                Ok(st) => {
                    #[allow(clippy::unnecessary_cast)]
                    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor) as u64;
                    let root = StatxAttributes::MOUNT_ROOT;
                    Ok(dev != self.dev
                        || (st.stx_attributes_mask.contains(root)
                            && st.stx_attributes.contains(root)))
                }
                Err(Errno::NOENT) => Ok(false),
                // No statx (old kernels, seccomp filters): the check after
                // the open still stands.
                Err(Errno::NOSYS) | Err(Errno::PERM) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            Ok(false)
        }
    }

    /// `fchmod` of the directory: the exact mode, umask not applied.
    /// As [`set_mode`] for a file, `EPERM` and `EOPNOTSUPP` are no error.
    pub(crate) fn set_mode(&self, mode: u32) -> io::Result<()> {
        match rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode as _)) {
            Err(Errno::PERM) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => Ok(()),
            other => Ok(other?),
        }
    }

    /// `fchown` of the directory; `None` leaves that id as it is.
    pub(crate) fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let uid = uid.map(rustix::fs::Uid::from_raw);
        let gid = gid.map(rustix::fs::Gid::from_raw);
        Ok(rustix::fs::fchown(&self.fd, uid, gid)?)
    }

    /// Puts the crate's mark ([`LEFTOVER_MARK`](super::LEFTOVER_MARK)) on
    /// the directory, for the `names` under which it is a leftover; best
    /// effort: where the filesystem has no user
    /// extended attributes, or this user may not write the directory, it
    /// stays unmarked, and `sweep` leaves it alone.
    pub(crate) fn mark_leftover(&self, names: &[&OsStr]) {
        use std::os::unix::ffi::OsStrExt;
        let value = names
            .iter()
            .map(|n| n.as_bytes())
            .collect::<Vec<_>>()
            .join(&b'/');
        let _ = rustix::fs::fsetxattr(
            &self.fd,
            super::LEFTOVER_MARK,
            &value,
            rustix::fs::XattrFlags::empty(),
        );
    }

    /// Takes the crate's mark off the directory, before it is published.
    /// An error only where the mark is there and stays.
    pub(crate) fn unmark_leftover(&self) -> io::Result<()> {
        match rustix::fs::fremovexattr(&self.fd, super::LEFTOVER_MARK) {
            Err(e) if !no_xattrs(e) && !no_such_xattr(e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Marks a new temp tree as a live writer's, as [`lock_temp`] does a
    /// temp file: `false` when a sweep got to it first (it holds the lock,
    /// or removed the directory).
    pub(crate) fn lock_temp(&self) -> bool {
        lock_temp(&self.fd, true)
    }
}

/// Set when the kernel has no `renameat2` at all (`ENOSYS`).
static NO_RENAME_EXCHANGE_SYSCALL: AtomicBool = AtomicBool::new(false);
/// Devices whose filesystem refused `RENAME_EXCHANGE`.
static NO_RENAME_EXCHANGE_DEVICES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Swaps the entries `from` and `to` atomically:
/// `renameat2(RENAME_EXCHANGE)` (`renameatx_np(RENAME_SWAP)` on macOS).
/// `ENOENT` when either is missing. `ErrorKind::Unsupported` where the
/// kernel or the filesystem cannot (remembered per device, or for the
/// process on `ENOSYS`), for the caller's fallback.
#[doc(alias = "renameat2")]
pub(crate) fn rename_exchange(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    match try_rename_flagged(from_dir, from, to_dir, to, RenameFlag::Exchange)? {
        true => Ok(()),
        false => Err(io::ErrorKind::Unsupported.into()),
    }
}

/// Moves the directory `from` to `to` only if nothing is at `to`:
/// `EEXIST` (`ErrorKind::AlreadyExists`) otherwise.
///
/// `renameat2(RENAME_NOREPLACE)` where the filesystem takes it. Elsewhere
/// directories cannot be hard-linked, so the fallback is a plain
/// `renameat`, which refuses, atomically, any target but an **empty**
/// directory (`ENOTEMPTY`, `EEXIST`, `ENOTDIR`, all reported as
/// `EEXIST`), and replaces an empty one.
#[doc(alias = "renameat2")]
pub(crate) fn rename_dir_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    if try_rename_flagged(from_dir, from, to_dir, to, RenameFlag::NoReplace)? {
        return Ok(());
    }
    match rustix::fs::renameat(&from_dir.fd, from, &to_dir.fd, to) {
        Ok(()) => Ok(()),
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) | Err(Errno::NOTDIR) => Err(Errno::EXIST.into()),
        Err(e) => Err(e.into()),
    }
}

// Extended attributes, for `OpenOptions::preserve_xattrs`: read and set
// on Linux (`linux.rs`); elsewhere nothing is copied.

/// Whether this platform copies a replaced file's extended attributes
/// ([`read_xattrs`] and the rest do something).
pub(crate) const COPIES_XATTRS: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
pub(crate) use super::linux::{read_xattrs, remove_acl, set_acl, set_xattr, xattr_refused};

/// Whether a failed attribute copy is one a best effort lets go; never
/// asked outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn xattr_refused(_e: &io::Error) -> bool {
    true
}

/// Nothing to copy outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_xattrs(
    _dir: &Dir,
    _name: &OsStr,
    _id: Option<(u64, u64)>,
) -> io::Result<super::Xattrs> {
    Ok(super::Xattrs::default())
}

/// Never reached outside Linux: [`read_xattrs`] finds nothing to set.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_xattr(_file: &File, _name: &OsStr, _value: &[u8]) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Never reached outside Linux: [`read_xattrs`] finds no ACL.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_acl(_file: &File, _acl: &[u8], _mode: u32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// No ACL inherited that the crate knows of outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn remove_acl(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Barrier};

    fn scratch() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        (t, d)
    }

    /// A sweep may look at a new named temp file between its creation and
    /// its lock: `lock_temp` then says so, and the caller takes another name.
    #[test]
    fn lock_temp_says_when_a_sweep_got_there_first() {
        let (_t, dir) = scratch();
        let name = |n: &str| OsStr::new(n).to_owned();

        let held_by_sweep = name(".a.AAAAAAAAAAAA.tmp");
        let file = dir.create_new(&held_by_sweep, 0o600).unwrap();
        let probe = dir.probe_leftover(&held_by_sweep).unwrap().unwrap();
        assert!(!probe.held, "not locked yet: the probe takes the lock");
        assert!(!lock_temp(&file, true), "the probe holds the lock");
        drop(probe);

        let removed_by_sweep = name(".b.BBBBBBBBBBBB.tmp");
        let file = dir.create_new(&removed_by_sweep, 0o600).unwrap();
        dir.remove(&removed_by_sweep).unwrap();
        assert!(!lock_temp(&file, true), "no name left");

        let ours = name(".c.CCCCCCCCCCCC.tmp");
        let file = dir.create_new(&ours, 0o600).unwrap();
        assert!(lock_temp(&file, true));
        assert!(dir.probe_leftover(&ours).unwrap().unwrap().held);
        drop(file);
        assert!(
            !dir.probe_leftover(&ours).unwrap().unwrap().held,
            "closed: free"
        );
    }

    #[test]
    fn create_new_never_follows_a_planted_symlink() {
        let (t, dir) = scratch();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("planted")).unwrap();
        let err = dir.create_new(OsStr::new("planted"), 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A dangling planted link is not followed either (no file created).
        std::os::unix::fs::symlink(t.path().join("nowhere"), t.path().join("dangling")).unwrap();
        let err = dir.create_new(OsStr::new("dangling"), 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(!t.path().join("nowhere").exists());
    }

    /// The fallback used where `RENAME_NOREPLACE` is unsupported is as
    /// race-free: of many threads linking to one name, exactly one wins,
    /// and every temp name is still there for its owner to remove.
    #[test]
    fn link_noreplace_has_exactly_one_winner() {
        let (t, dir) = scratch();
        let dir = Arc::new(dir);
        const N: usize = 16;
        for i in 0..N {
            let mut f = dir
                .create_new(OsStr::new(&format!("tmp{i}")), 0o644)
                .unwrap();
            f.write_all(format!("writer {i}").as_bytes()).unwrap();
        }
        let barrier = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let (dir, barrier) = (dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let from = format!("tmp{i}");
                    link_noreplace(&dir, OsStr::new(&from), &dir, OsStr::new("final")).map(|()| i)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for th in threads {
            match th.join().unwrap() {
                Ok(i) => winners.push(i),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let content = std::fs::read_to_string(t.path().join("final")).unwrap();
        assert_eq!(content, format!("writer {}", winners[0]));
        let left = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(left, N + 1, "final and every temp name");
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_target() {
        let (t, dir) = scratch();
        std::fs::write(t.path().join("a"), b"a").unwrap();
        std::fs::write(t.path().join("b"), b"b").unwrap();
        let err = rename_noreplace(&dir, OsStr::new("a"), &dir, OsStr::new("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"b");
        let how = rename_noreplace(&dir, OsStr::new("a"), &dir, OsStr::new("c")).unwrap();
        assert_eq!(
            how,
            NoReplace::Renamed,
            "ext4 and tmpfs take RENAME_NOREPLACE"
        );
        assert_eq!(std::fs::read(t.path().join("c")).unwrap(), b"a");
        assert!(!t.path().join("a").exists());
    }

    #[test]
    fn stat_tells_kinds_apart() {
        let (t, dir) = scratch();
        std::fs::write(t.path().join("f"), b"").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        assert_eq!(dir.stat(OsStr::new("f")).unwrap().unwrap().kind, Kind::File);
        assert_eq!(dir.stat(OsStr::new("d")).unwrap().unwrap().kind, Kind::Dir);
        assert_eq!(
            dir.stat(OsStr::new("l")).unwrap().unwrap().kind,
            Kind::Symlink
        );
        assert!(dir.stat(OsStr::new("missing")).unwrap().is_none());
    }
}
