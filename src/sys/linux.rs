//! Linux: `O_TMPFILE` (with `linkat` and `fdatasync`) and `getrandom`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::unix::Dir;
use super::{AfterLink, CopyError};

/// Set once the kernel has shown it has no `O_TMPFILE` (before 3.11 the flag
/// reads as `O_DIRECTORY` and the open fails with `EISDIR`): a property of
/// the kernel, so remembered for the process. A filesystem without it
/// (`EOPNOTSUPP`) is not remembered: another directory may be on one with it.
static NO_O_TMPFILE: AtomicBool = AtomicBool::new(false);

/// Set once `linkat(AT_EMPTY_PATH)` has failed with `ENOENT`: this
/// process may not link a file by its descriptor alone (a kernel before
/// 6.10 without CAP_DAC_READ_SEARCH), so it goes through `/proc`.
static NO_EMPTY_PATH_LINK: AtomicBool = AtomicBool::new(false);

/// Whether `/proc/self/fd` is there to name an unnamed file for `linkat`
/// (it is missing in some chroots and sandboxes). Checked once.
fn proc_fd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE
        .get_or_init(|| rustix::fs::access("/proc/self/fd", rustix::fs::Access::EXISTS).is_ok())
}

/// Creates an unnamed file in `dir` with `O_TMPFILE`, `mode` less the umask.
/// `Ok(None)` when the kernel or the filesystem cannot, so the caller falls
/// back to a named temp file; other errors (`EACCES`, `EROFS`, `ENOSPC`) are
/// real and returned.
pub(crate) fn create_unnamed(dir: &Dir, mode: u32) -> io::Result<Option<File>> {
    if NO_O_TMPFILE.load(Ordering::Relaxed) || !proc_fd_available() {
        return Ok(None);
    }
    // No O_EXCL: with it the file could never be linked in.
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    match rustix::fs::openat(dir.fd(), ".", flags, Mode::from_raw_mode(mode as _)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::ISDIR) | Err(Errno::NOSYS) => {
            NO_O_TMPFILE.store(true, Ordering::Relaxed);
            Ok(None)
        }
        Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives an unnamed file the name `name` in `dir`; `EEXIST` if taken, so it
/// doubles as an atomic no-clobber publish.
pub(crate) fn link_unnamed(file: &File, dir: &Dir, name: &OsStr) -> io::Result<()> {
    // `linkat(fd, "", AT_EMPTY_PATH)` names the file itself, with no path
    // to look up. Before Linux 6.10 it needs CAP_DAC_READ_SEARCH (since,
    // also a file opened with the caller's credentials, as this one is);
    // without it the kernel says `ENOENT`. Remembered for the process once
    // the link through /proc works instead (a removed directory says
    // `ENOENT` to both).
    if NO_EMPTY_PATH_LINK.load(Ordering::Relaxed) {
        return link_through_proc(file, dir, name);
    }
    match rustix::fs::linkat(file, "", dir.fd(), name, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT) => {
            link_through_proc(file, dir, name)?;
            NO_EMPTY_PATH_LINK.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => Ok(other?),
    }
}

/// `link_unnamed` through the file's `/proc/self/fd` link, with
/// `AT_SYMLINK_FOLLOW`: what open(2) documents for `O_TMPFILE`.
fn link_through_proc(file: &File, dir: &Dir, name: &OsStr) -> io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(rustix::fs::linkat(
        CWD,
        proc_path.as_str(),
        dir.fd(),
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

const EXT4_SUPER_MAGIC: u32 = 0xEF53;
const XFS_SUPER_MAGIC: u32 = 0x5846_5342;
const TMPFS_MAGIC: u32 = 0x0102_1994;
const BTRFS_SUPER_MAGIC: u32 = 0x9123_683E;

/// The policy for a filesystem of type `magic` (`statfs`'s `f_type`);
/// `journaled` is asked only for ext4.
fn after_link_policy(magic: u32, journaled: impl FnOnce() -> bool) -> AfterLink {
    match magic {
        XFS_SUPER_MAGIC | TMPFS_MAGIC => AfterLink::Nothing,
        EXT4_SUPER_MAGIC if journaled() => AfterLink::Nothing,
        BTRFS_SUPER_MAGIC => AfterLink::DataSync,
        _ => AfterLink::FullSync,
    }
}

/// Whether the ext4 filesystem on device `dev` has a journal: its mount
/// options (`/proc/fs/ext4/<disk>/options`, which lists every option)
/// include a `data=` mode only then. `false` whenever that cannot be read.
fn ext4_journaled(dev: u64) -> bool {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
    else {
        return false;
    };
    let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/fs/ext4/{name}/options"))
        .is_ok_and(|options| options.lines().any(|o| o.starts_with("data=")))
}

/// Policies found so far, per filesystem: device number and filesystem id
/// (`f_fsid`, from the volume's UUID on ext4 and btrfs). The device number
/// alone can come back for another filesystem after an unmount (a loop
/// device attached to another image), and a stale answer could skip a sync
/// that filesystem needs; the pair cannot, short of the same volume coming
/// back changed.
static AFTER_LINK: LazyLock<Mutex<HashMap<(u64, u64), AfterLink>>> = LazyLock::new(Mutex::default);

/// The policy for the filesystem of `file`, on device `dev`: one `fstatvfs`
/// per call, and the rest once per filesystem. Anything that cannot be read
/// counts as unsafe; a failed `fstatvfs` or `fstatfs` is not remembered,
/// unreadable mount options (no journal seen) are.
pub(crate) fn after_link(file: &File, dev: u64) -> AfterLink {
    let Ok(vfs) = rustix::fs::fstatvfs(file) else {
        return AfterLink::FullSync;
    };
    let key = (dev, vfs.f_fsid);
    let cached = AFTER_LINK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .copied();
    if let Some(policy) = cached {
        return policy;
    }
    let Ok(st) = rustix::fs::fstatfs(file) else {
        return AfterLink::FullSync;
    };
    // f_type is a signed or unsigned long or int depending on the target;
    // every magic fits in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    let policy = after_link_policy(magic, || ext4_journaled(dev));
    AFTER_LINK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, policy);
    policy
}

/// After `link_unnamed`: the sync that `policy` (from [`after_link`]) asks
/// for.
pub(crate) fn sync_after_link(file: &File, policy: AfterLink) -> io::Result<()> {
    match policy {
        AfterLink::Nothing => Ok(()),
        AfterLink::DataSync => Ok(rustix::fs::fdatasync(file)?),
        AfterLink::FullSync => Ok(rustix::fs::fsync(file)?),
    }
}

/// Random bytes from the kernel (`getrandom`).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if rustix::rand::getrandom(&mut *buf, rustix::rand::GetRandomFlags::empty())
        .is_ok_and(|n| n == buf.len())
    {
        return;
    }
    super::random_bytes_portable(buf)
}

/// Copies all of `from` into the empty file `to` the fastest way the
/// filesystem offers: a reflink (`FICLONE`: the two share extents until
/// either is written; xfs, btrfs), else `copy_file_range` (the kernel
/// copies, without a round trip through this process; it may reflink
/// too), else [`copy_chunks`](super::copy_chunks). Returns the bytes
/// copied.
pub(crate) fn copy_file(from: &File, to: &File) -> Result<u64, CopyError> {
    let kernel = |e: Errno| CopyError::Write(e.into());
    match rustix::fs::ioctl_ficlone(to, from) {
        Ok(()) => return Ok(rustix::fs::fstat(to).map_err(kernel)?.st_size as u64),
        // Not this filesystem, or not between these two files: copy.
        Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::XDEV | Errno::INVAL | Errno::NOSYS)
        | Err(Errno::BADF | Errno::PERM) => {}
        Err(e) => return Err(kernel(e)),
    }
    let (mut from_at, mut to_at) = (0u64, 0u64);
    loop {
        let copied =
            rustix::fs::copy_file_range(from, Some(&mut from_at), to, Some(&mut to_at), COPY_RANGE);
        match copied {
            // Nothing at the first call: an empty file, or one the kernel
            // cannot copy and says 0 for (procfs, sysfs and some overlayfs
            // files across filesystems on 5.3 to 5.18): read it, as std
            // does.
            Ok(0) if to_at == 0 => return super::copy_chunks(from, to),
            Ok(0) => return Ok(to_at),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            // Nothing copied yet, and the kernel or the filesystem cannot
            // (before 5.3 across filesystems; some FUSE and network ones;
            // a seccomp filter that refuses the call).
            Err(
                Errno::NOSYS
                | Errno::XDEV
                | Errno::OPNOTSUPP
                | Errno::INVAL
                | Errno::BADF
                | Errno::PERM,
            ) if to_at == 0 => return super::copy_chunks(from, to),
            Err(e) => return Err(kernel(e)),
        }
    }
}

/// How much one `copy_file_range` call asks for: the kernel copies at most
/// about 2 GiB per call anyway.
const COPY_RANGE: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_trusts_only_journals_it_knows() {
        let never = || -> bool { panic!("asked about a journal for a non-ext4") };
        assert_eq!(
            after_link_policy(XFS_SUPER_MAGIC, never),
            AfterLink::Nothing
        );
        assert_eq!(after_link_policy(TMPFS_MAGIC, never), AfterLink::Nothing);
        assert_eq!(
            after_link_policy(EXT4_SUPER_MAGIC, || true),
            AfterLink::Nothing
        );
        assert_eq!(
            after_link_policy(EXT4_SUPER_MAGIC, || false),
            AfterLink::FullSync
        );
        assert_eq!(
            after_link_policy(BTRFS_SUPER_MAGIC, never),
            AfterLink::DataSync
        );
        // Unknown: overlayfs, NFS, FUSE.
        for magic in [0x794C_7630, 0x6969, 0x6573_5546] {
            assert_eq!(
                after_link_policy(magic, never),
                AfterLink::FullSync,
                "{magic:#x}"
            );
        }
    }
}
