//! macOS: `F_FULLFSYNC` and `renameatx_np(RENAME_EXCL)`. Compiles in
//! principle; not built or tested by this project's CI.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::RenameFlags;
use rustix::io::Errno;

use super::unix::Dir;

/// No `O_TMPFILE` on macOS: always a named temp file.
pub(crate) fn create_unnamed(_dir: &Dir, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

/// Never called: `create_unnamed` never returns a file here.
pub(crate) fn link_unnamed(_file: &File, _dir: &Dir, _name: &OsStr) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// `renameatx_np(RENAME_EXCL)` through rustix.
#[doc(alias = "renameatx_np")]
pub(crate) fn renameat_noreplace(
    from_dir: &OwnedFd,
    from: &OsStr,
    to_dir: &OwnedFd,
    to: &OsStr,
) -> Result<(), Errno> {
    rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE)
}

/// `fcntl(F_FULLFSYNC)`: plain `fsync` on macOS does not flush the drive's
/// cache. Falls back to `fsync` where the filesystem refuses it (network and
/// FUSE shares).
pub(crate) fn sync_file(file: &File) -> io::Result<()> {
    match rustix::fs::fcntl_fullfsync(file) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) | Err(Errno::NOTSUP) => Ok(rustix::fs::fsync(file)?),
        Err(e) => Err(e.into()),
    }
}

/// macOS has no `getrandom` in rustix: the portable source.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    super::random_bytes_portable(buf)
}
