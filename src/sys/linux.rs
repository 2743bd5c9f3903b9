//! Linux: `O_TMPFILE` (with `linkat` and `fdatasync`) and `getrandom`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::unix::Dir;

/// Set once the kernel has shown it has no `O_TMPFILE` (before 3.11 the flag
/// reads as `O_DIRECTORY` and the open fails with `EISDIR`): a property of
/// the kernel, so remembered for the process. A filesystem without it
/// (`EOPNOTSUPP`) is not remembered: another directory may be on one with it.
static NO_O_TMPFILE: AtomicBool = AtomicBool::new(false);

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
    // linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH; the /proc link
    // with AT_SYMLINK_FOLLOW is what open(2) documents for O_TMPFILE.
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(rustix::fs::linkat(
        CWD,
        proc_path.as_str(),
        dir.fd(),
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// Filesystems whose journal makes a file linked by `link_unnamed` durable
/// with the directory `fsync` that follows, given that the file's data and
/// inode were `fsync`ed before the link: ext4 (its journalled modes; the
/// magic is shared with ext2 and ext3), xfs, and tmpfs, which keeps nothing
/// anyway. btrfs is the reason for the sync (its log can drop the data of
/// an `O_TMPFILE` file fsynced before its link: atomic-write-file #6), and
/// every other filesystem gets it too, unknown meaning unsafe.
const LINK_SAFE_FILESYSTEMS: [i64; 3] = [0xEF53, 0x5846_5342, 0x0102_1994];

/// After `link_unnamed` of a file already `fsync`ed: `fdatasync` it again
/// where the filesystem may otherwise lose its data (btrfs, and any not in
/// [`LINK_SAFE_FILESYSTEMS`]). Elsewhere nothing: on ext4 the extra call
/// costs a disk cache flush per commit for nothing.
pub(crate) fn sync_after_link(file: &File) -> io::Result<()> {
    let fs_type = rustix::fs::fstatfs(file)?.f_type;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // c_long or c_uint
    let fs_type = fs_type as i64;
    if LINK_SAFE_FILESYSTEMS.contains(&fs_type) {
        return Ok(());
    }
    Ok(rustix::fs::fdatasync(file)?)
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
