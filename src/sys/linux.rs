//! Linux: `O_TMPFILE` (with `linkat` and `fdatasync`) and `getrandom`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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

// Extended attributes, for `OpenOptions::preserve_xattrs`.

use super::unix::{meta_of, no_xattrs};
use super::{naming_xattr, Kind, ACL_XATTR as ACL_ACCESS};

/// The file capabilities of a program: [`Xattrs::capability`](super::Xattrs::capability).
use super::CAPABILITY_XATTR as CAPABILITY;

/// The largest value, and the longest list of names, the kernel hands out
/// (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
const XATTR_MAX_BYTES: usize = 1 << 16;

/// The first buffer for a value or a list of names: most fit.
const XATTR_FIRST_BYTES: usize = 256;

/// The replaced file, held open to read its attributes.
enum XattrSource {
    /// Opened for reading: the `f*xattr` calls.
    Fd(OwnedFd),
    /// Opened with `O_PATH` (it cannot be read), which the `f*xattr` calls
    /// refuse: the path-based calls on its `/proc/self/fd` link, which
    /// they follow to the very inode.
    Path(OwnedFd, String),
}

impl XattrSource {
    fn fd(&self) -> &OwnedFd {
        match self {
            XattrSource::Fd(fd) | XattrSource::Path(fd, _) => fd,
        }
    }

    fn list(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrSource::Path(_, path) => rustix::fs::listxattr(path.as_str(), buf),
        }
    }

    fn get(&self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            XattrSource::Path(_, path) => rustix::fs::getxattr(path.as_str(), name, buf),
        }
    }
}

/// What `read` (a list or get call given a buffer) answers, in a buffer
/// grown until it fits: `ERANGE` means the buffer was too small (the
/// value may have grown since it was measured), up to the kernel's limit.
fn read_sized(read: impl Fn(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0; XATTR_FIRST_BYTES];
    loop {
        match read(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < XATTR_MAX_BYTES => {
                // An empty buffer asks for the size.
                let needed = read(&mut [])?;
                buf.resize(needed.max(2 * buf.len()).min(XATTR_MAX_BYTES), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e`, from setting an attribute, says this process may not set
/// it (`EPERM`, `EACCES`: an SELinux relabel without the permission, a
/// file capability without CAP_SETFCAP, any `security.*` attribute without
/// CAP_SYS_ADMIN and without an LSM that allows it) or the filesystem
/// cannot (`EOPNOTSUPP`): what a best-effort copy lets go.
pub(crate) fn xattr_refused(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::PERM | Errno::ACCESS | Errno::OPNOTSUPP | Errno::NOSYS)
    )
}

/// Reads the attributes of the entry `name` of `dir` that
/// `preserve_xattrs` copies: the access ACL, `user.*` and `security.*`
/// (never `trusted.*` nor any other namespace). The entry is opened
/// read-only without following a link or blocking; where it cannot be
/// read (`EACCES`: a write-only file can still be replaced; `EWOULDBLOCK`:
/// another process's lease), with `O_PATH`, which needs no permission on
/// it. It must still be the file `id` (device and inode) and a regular
/// file, else the error says the target changed.
///
/// A filesystem without extended attributes has none to copy. A value
/// gone since the list is left out; so is a `security.*` value that cannot
/// be read, since setting it is best effort too. Any other failure is an
/// error naming the attribute.
pub(crate) fn read_xattrs(
    dir: &Dir,
    name: &OsStr,
    id: Option<(u64, u64)>,
) -> io::Result<super::Xattrs> {
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let source = match rustix::fs::openat(dir.fd(), name, flags | OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => XattrSource::Fd(fd),
        Err(Errno::ACCESS) | Err(Errno::WOULDBLOCK) => {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(dir.fd(), name, flags, Mode::empty())?;
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            XattrSource::Path(fd, path)
        }
        Err(e) => return Err(e.into()),
    };
    let found = meta_of(&rustix::fs::fstat(source.fd())?);
    if found.kind != Kind::File || found.id != id {
        let msg = "the target was replaced while it was opened";
        return Err(io::Error::other(msg));
    }
    let mut xattrs = super::Xattrs::default();
    let names = match read_sized(|buf| source.list(buf)) {
        Ok(names) => names,
        Err(e) if no_xattrs(e) => return Ok(xattrs),
        Err(e) => return Err(e.into()),
    };
    for attr in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let attr = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(attr);
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(attr);
        let best_effort = bytes.starts_with(b"security.");
        if attr != ACL_ACCESS && !best_effort && !bytes.starts_with(b"user.") {
            continue;
        }
        let value = match read_sized(|buf| source.get(attr, buf)) {
            Ok(value) => value,
            Err(Errno::NODATA) => continue,
            Err(_) if best_effort => continue,
            Err(e) => return Err(naming_xattr(attr, e)),
        };
        if attr == ACL_ACCESS {
            xattrs.acl = Some(value);
        } else if attr == CAPABILITY {
            xattrs.capability = Some(value);
        } else {
            xattrs.attrs.push(super::Xattr {
                name: attr.to_owned(),
                value,
            });
        }
    }
    Ok(xattrs)
}

/// `fsetxattr`: sets the attribute `name` of `file` to `value`, creating
/// or replacing it.
pub(crate) fn set_xattr(file: &File, name: &OsStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(
        file,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// Gives `file` the access ACL `acl` (`system.posix_acl_access`, as read
/// from another file), its owner, group (or mask) and other entries
/// replaced by those of `mode`, as a `chmod` to `mode` would leave them:
/// the file's mode is `mode` from that moment, so that at no moment is it
/// open to more than `mode` allows (the named entries are capped by the
/// mask). `InvalidData` when `acl` is not an ACL in the kernel's format.
pub(crate) fn set_acl(file: &File, acl: &[u8], mode: u32) -> io::Result<()> {
    let Some(acl) = acl_with_mode(acl, mode) else {
        let msg = "not a POSIX ACL of version 2";
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    };
    set_xattr(file, OsStr::new(ACL_ACCESS), &acl)
}

/// Removes the access ACL of `file` (one inherited from the directory's
/// default ACL), leaving its mode as it is; none there, or a filesystem
/// without ACLs, is no error.
pub(crate) fn remove_acl(file: &File) -> io::Result<()> {
    match rustix::fs::fremovexattr(file, ACL_ACCESS) {
        Err(Errno::NODATA) => Ok(()),
        Err(e) if no_xattrs(e) => Ok(()),
        other => Ok(other?),
    }
}

/// The tags of a POSIX ACL's entries (`linux/posix_acl.h`).
const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The ACL `acl`, in the kernel's xattr format (a little-endian version 2
/// header, then 8-byte entries: tag, permissions, id), its owner, mask
/// (or owning group, without a mask) and other entries given the bits of
/// `mode`, as `posix_acl_chmod` does; `None` when it is not one.
fn acl_with_mode(acl: &[u8], mode: u32) -> Option<Vec<u8>> {
    let (header, entries) = (acl.get(..4)?, &acl[4..]);
    if u32::from_le_bytes(header.try_into().ok()?) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    let tags = || {
        entries
            .chunks_exact(8)
            .map(|e| u16::from_le_bytes([e[0], e[1]]))
    };
    let group_class = match tags().any(|tag| tag == ACL_MASK) {
        true => ACL_MASK,
        false => ACL_GROUP_OBJ,
    };
    let mut out = acl.to_vec();
    for entry in out[4..].chunks_exact_mut(8) {
        let perm = match u16::from_le_bytes([entry[0], entry[1]]) {
            ACL_USER_OBJ => (mode >> 6) & 7,
            tag if tag == group_class => (mode >> 3) & 7,
            ACL_OTHER => mode & 7,
            _ => continue,
        };
        entry[2..4].copy_from_slice(&(perm as u16).to_le_bytes());
    }
    Some(out)
}

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

    /// A `chmod`'s effect on an ACL: the owner, mask and other entries
    /// take the mode's bits; the named entries and the owning group (under
    /// a mask) keep theirs.
    #[test]
    fn acl_with_mode_sets_what_chmod_sets() {
        let entry = |tag: u16, perm: u16, id: u32| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend(perm.to_le_bytes());
            e.extend(id.to_le_bytes());
            e
        };
        let acl = |entries: &[(u16, u16, u32)]| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for &(tag, perm, id) in entries {
                v.extend(entry(tag, perm, id));
            }
            v
        };
        const NAMED: u16 = 0x02;
        let any = u32::MAX;
        let full = acl(&[
            (ACL_USER_OBJ, 6, any),
            (NAMED, 4, 65534),
            (ACL_GROUP_OBJ, 4, any),
            (ACL_MASK, 4, any),
            (ACL_OTHER, 4, any),
        ]);
        let want = acl(&[
            (ACL_USER_OBJ, 7, any),
            (NAMED, 4, 65534),
            (ACL_GROUP_OBJ, 4, any),
            (ACL_MASK, 0, any),
            (ACL_OTHER, 1, any),
        ]);
        assert_eq!(acl_with_mode(&full, 0o701), Some(want));
        // Without a mask, the owning group's entry is the group class.
        let bare = acl(&[
            (ACL_USER_OBJ, 6, any),
            (ACL_GROUP_OBJ, 4, any),
            (ACL_OTHER, 4, any),
        ]);
        let want = acl(&[
            (ACL_USER_OBJ, 6, any),
            (ACL_GROUP_OBJ, 0, any),
            (ACL_OTHER, 0, any),
        ]);
        assert_eq!(acl_with_mode(&bare, 0o600), Some(want));
        // Not an ACL: another version, a torn entry, too short.
        let mut v1 = full.clone();
        v1[0] = 1;
        assert_eq!(acl_with_mode(&v1, 0o600), None);
        assert_eq!(acl_with_mode(&full[..full.len() - 1], 0o600), None);
        assert_eq!(acl_with_mode(&[2, 0], 0o600), None);
    }
}
