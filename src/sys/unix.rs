//! The primitives every unix shares. `linux.rs` and `macos.rs` supply the
//! few that differ (`os::*`); other unixes get the portable versions in
//! `mod os` below.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

#[cfg(target_os = "linux")]
use super::linux as os;
#[cfg(target_os = "macos")]
use super::macos as os;

pub(crate) use os::{create_unnamed, link_unnamed, random_bytes, sync_file};

/// Whether this platform applies unix modes and owners.
pub(crate) const HAS_MODES: bool = true;

/// A directory, held open so that every step of one atomic write acts on the
/// same directory even if its path is renamed meanwhile, and so that it can
/// be fsynced.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    dev: u64,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The metadata of an entry that the crate acts on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    /// Permission bits, setuid/setgid/sticky included.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
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
        #[allow(clippy::unnecessary_cast)] // st_dev is i32 on macOS
        let dev = rustix::fs::fstat(&fd)?.st_dev as u64;
        Ok(Dir { fd, dev })
    }

    /// The device id of the filesystem holding the directory.
    pub(crate) fn device(&self) -> u64 {
        self.dev
    }

    /// `fsync` of the directory: makes the entries created, renamed or
    /// removed in it durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
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

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

// The stat field widths differ between platforms (st_mode is u16 on macOS).
#[allow(clippy::unnecessary_cast)]
fn meta_of(st: &rustix::fs::Stat) -> Meta {
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
    }
}

/// `fstat` of an open file.
pub(crate) fn file_meta(file: &File) -> io::Result<Meta> {
    Ok(meta_of(&rustix::fs::fstat(file)?))
}

/// `fchmod`: the exact mode, not masked by the umask.
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(file, Mode::from_raw_mode(mode as _))?)
}

/// `fchown`; `None` leaves that id as it is.
pub(crate) fn set_owner(file: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    Ok(rustix::fs::fchown(file, uid, gid)?)
}

/// `fdatasync`.
pub(crate) fn sync_file_data(file: &File) -> io::Result<()> {
    Ok(rustix::fs::fdatasync(file)?)
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
/// where the kernel or the filesystem lacks it, [`link_then_unlink`], which
/// is just as race-free. Never a check followed by a rename.
#[doc(alias = "renameat2")]
pub(crate) fn rename_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    let dev = to_dir.dev;
    let known_unsupported = NO_RENAME_NOREPLACE_SYSCALL.load(Ordering::Relaxed)
        || lock(&NO_RENAME_NOREPLACE_DEVICES).contains(&dev);
    if !known_unsupported {
        match os::renameat_noreplace(&from_dir.fd, from, &to_dir.fd, to) {
            Err(Errno::NOSYS) => NO_RENAME_NOREPLACE_SYSCALL.store(true, Ordering::Relaxed),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                let mut devices = lock(&NO_RENAME_NOREPLACE_DEVICES);
                if !devices.contains(&dev) {
                    devices.push(dev);
                }
            }
            other => return Ok(other?),
        }
    }
    link_then_unlink(from_dir, from, to_dir, to)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The no-clobber fallback: `linkat` publishes the file under the final name
/// only if that name is free (`EEXIST` otherwise), then the temp name is
/// removed. Atomic for readers: the final name appears once, whole.
pub(crate) fn link_then_unlink(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    rustix::fs::linkat(&from_dir.fd, from, &to_dir.fd, to, AtFlags::empty())?;
    // The content is published under `to` now; failing here would report a
    // failure for a write that happened. The stray second name is the
    // crate's own hidden temp name, which `sweep` recognises.
    let _ = rustix::fs::unlinkat(&from_dir.fd, from, AtFlags::empty());
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod os {
    //! Other unixes: no unnamed temp files, no flagged rename.
    use super::*;

    pub(crate) fn create_unnamed(_dir: &Dir, _mode: u32) -> io::Result<Option<File>> {
        Ok(None)
    }

    pub(crate) fn link_unnamed(_file: &File, _dir: &Dir, _name: &OsStr) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn renameat_noreplace(
        _from_dir: &OwnedFd,
        _from: &OsStr,
        _to_dir: &OwnedFd,
        _to: &OsStr,
    ) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }

    pub(crate) fn sync_file(file: &File) -> io::Result<()> {
        Ok(rustix::fs::fsync(file)?)
    }

    pub(crate) fn random_bytes(buf: &mut [u8]) {
        super::super::random_bytes_portable(buf)
    }
}
