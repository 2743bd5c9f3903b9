//! Synchronous, platform-specific primitives: create a temp file, sync it,
//! publish it with or without replacing, sync a directory.
//!
//! Everything here returns `io::Result` and knows nothing of tasks or of the
//! crate's `Error`: `core` attaches the step and the path. Each platform file
//! exports the same names; the platform is chosen at compile time, kernel and
//! filesystem features at run time by errno.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub(crate) use unix::*;

/// What a file linked in by `link_unnamed`, already `fsync`ed before the
/// link, still needs for the link to survive a power cut along with its
/// data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum AfterLink {
    /// Nothing: a journal commits the link (and the inode's new link count)
    /// with the directory `fsync` that follows, after the data the first
    /// `fsync` wrote. ext4 with a journal, xfs; and tmpfs, which keeps
    /// nothing anyway.
    Nothing,
    /// `fdatasync`: btrfs, whose log can drop the data of an `O_TMPFILE`
    /// file fsynced before its link (atomic-write-file #6).
    DataSync,
    /// `fsync`: everything else, unknown meaning unsafe. ext4 without a
    /// journal (and ext2, which shares its magic) writes the inode's new
    /// link count only with the inode itself.
    FullSync,
}

/// How [`rename_noreplace`] published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoReplace {
    /// Renamed: the source name is gone.
    Renamed,
    /// Linked (the filesystem has no flagged rename): the source name is
    /// still there, for the caller to remove.
    #[cfg_attr(windows, allow(dead_code))]
    Linked,
}

/// How locking a named temp file just created went (`lock_new_temp`).
#[derive(Debug)]
pub(crate) enum NewTemp {
    /// Locked and still named; its metadata when the check read it.
    Locked(Option<Meta>),
    /// A sweep got to it between its creation and the lock: it holds the
    /// lock, or has removed the file. (Windows has no such lock.)
    #[cfg_attr(windows, allow(dead_code))]
    Swept,
}

/// A file that `sweep` may remove, from `Dir::probe_leftover`.
#[derive(Debug)]
pub(crate) struct Leftover {
    /// Its last modification.
    pub(crate) modified: std::time::SystemTime,
    /// A directory: a temp tree of `AsyncAtomicDir`, or a tree it replaced.
    pub(crate) tree: bool,
    /// Its device and inode numbers, where known: removal stops if the
    /// name comes to hold something else.
    pub(crate) id: Option<(u64, u64)>,
    /// A live writer holds its lock: a process of this user (on Linux,
    /// where `/proc/locks` tells; another user's lock on a leftover
    /// it could open does not count).
    pub(crate) held: bool,
    /// Its owner.
    pub(crate) uid: u32,
    /// For a directory: whether it carries the crate's mark
    /// ([`LEFTOVER_MARK`]); `None` where the filesystem has no user
    /// extended attributes to tell.
    pub(crate) marked: Option<bool>,
    /// The lock taken by the probe, held until this is dropped, after the
    /// removal.
    pub(crate) _lock: Option<std::fs::File>,
}

/// The extended attribute that marks a directory as one of this crate's
/// temp trees (or a tree it moved aside or replaced), so that `sweep`
/// never goes by the name alone: another user who may rename a directory
/// cannot add it to one they may not write. Its value lists the names
/// (`/`-separated) under which the tree is a leftover: the mark holds only
/// there, so a tree that keeps one after a publish (a crash between the
/// rename and the unmark) is not swept under any other temp name.
pub(crate) const LEFTOVER_MARK: &str = "user.tokio_atomic_write";

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
    /// Permission bits, setuid/setgid/sticky included (0 where the platform
    /// has no modes).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Length in bytes (of a symlink: of the path it holds).
    pub(crate) size: u64,
    /// Device and inode numbers, where the platform gives them.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) id: Option<(u64, u64)>,
}
// Extended attributes, for `OpenOptions::preserve_xattrs`: read and set
// on Linux (`linux.rs`); elsewhere nothing is copied.

/// An extended attribute to copy: `user.*`, or `security.*` (best effort).
#[derive(Debug)]
pub(crate) struct Xattr {
    pub(crate) name: std::ffi::OsString,
    pub(crate) value: Vec<u8>,
}

impl Xattr {
    /// Whether copying it is best effort: a `security.*` attribute (an
    /// SELinux label, say), which takes a privilege to set.
    pub(crate) fn best_effort(&self) -> bool {
        self.name.as_encoded_bytes().starts_with(b"security.")
    }
}

/// The extended attributes of a replaced file that are copied.
#[derive(Debug, Default)]
pub(crate) struct Xattrs {
    /// Its POSIX access ACL (`system.posix_acl_access`), if it has one.
    pub(crate) acl: Option<Vec<u8>>,
    /// `user.*` and `security.*`, but `security.capability`: set while
    /// the new file is empty.
    pub(crate) attrs: Vec<Xattr>,
    /// `security.capability`, which the kernel drops on a write: set after
    /// the last one.
    pub(crate) capability: Option<Vec<u8>>,
}

/// The attribute that [`Xattrs::capability`] holds.
pub(crate) const CAPABILITY_XATTR: &str = "security.capability";

/// The attribute that [`Xattrs::acl`] holds: a file's POSIX access ACL.
pub(crate) const ACL_XATTR: &str = "system.posix_acl_access";

/// `e`, its message naming the attribute `name`; the kind kept.
pub(crate) fn naming_xattr(name: &std::ffi::OsStr, e: impl Into<std::io::Error>) -> std::io::Error {
    let e = e.into();
    std::io::Error::new(e.kind(), format!("`{}`: {e}", name.to_string_lossy()))
}

#[cfg(windows)]
pub(crate) use windows::*;

/// A failed copy: reading the source, or writing the copy (or a copy by
/// the kernel, which does not say which side failed).
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `from`, from its current offset to its end, into `to` at its
/// current offset, through one buffer of `COPY_CHUNK` bytes: the fallback
/// where the kernel offers no copy of its own. Returns the bytes copied.
pub(crate) fn copy_chunks(
    mut from: &std::fs::File,
    mut to: &std::fs::File,
) -> Result<u64, CopyError> {
    use std::io::{Read, Write};
    let mut buf = vec![0; COPY_CHUNK];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// The buffer of [`copy_chunks`]: big enough that a copy costs few system
/// calls, as the buffer of a file written through the pipeline.
pub(crate) const COPY_CHUNK: usize = 1 << 20;

/// The OS error for a file that is not there, for a caller that learnt it
/// from a lookup answering "none": `ENOENT` on unix, `ERROR_FILE_NOT_FOUND`
/// on Windows, both 2, so `raw_os_error` answers as for a failed open.
pub(crate) fn not_found() -> std::io::Error {
    std::io::Error::from_raw_os_error(2)
}

/// Random bytes from std's randomly keyed SipHash over a counter and the
/// clock: the source where the platform has no `getrandom` in rustix.
#[allow(dead_code)]
pub(crate) fn random_bytes_portable(buf: &mut [u8]) {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for chunk in buf.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    /// The fallback copy, whole across several chunks, from the current
    /// offsets.
    #[test]
    fn copy_chunks_copies_everything_from_the_offsets() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..2 * super::COPY_CHUNK + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut from = std::fs::File::create_new(dir.path().join("from")).unwrap();
        from.write_all(&body).unwrap();
        from.seek(SeekFrom::Start(0)).unwrap();
        let mut to = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("to"))
            .unwrap();
        assert_eq!(super::copy_chunks(&from, &to).unwrap(), body.len() as u64);
        let mut copied = Vec::new();
        to.seek(SeekFrom::Start(0)).unwrap();
        to.read_to_end(&mut copied).unwrap();
        assert!(copied == body, "the same bytes");
    }
}
