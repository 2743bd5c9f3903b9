//! macOS: `F_FULLFSYNC`. Written to compile; not built or tested by this
//! project's CI.

use std::fs::File;
use std::io;

use rustix::io::Errno;

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
