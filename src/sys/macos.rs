//! macOS: `F_FULLFSYNC`. Written to compile; not built or tested by this
//! project's CI.

use std::io;
use std::os::fd::AsFd;

use rustix::io::Errno;

/// `fcntl(F_FULLFSYNC)` of a file or a directory: plain `fsync` on macOS
/// does not flush the drive's cache. Falls back to `fsync` where the
/// filesystem refuses it (network and FUSE shares).
pub(crate) fn sync_fd(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    match rustix::fs::fcntl_fullfsync(fd) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) | Err(Errno::NOTSUP) => Ok(rustix::fs::fsync(fd)?),
        Err(e) => Err(e.into()),
    }
}
