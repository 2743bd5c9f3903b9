//! [`OpenOptions`] and [`Durability`].

use std::path::{Path, PathBuf};

use crate::{AsyncAtomicFile, Error};

/// The buffer size used when none is set: writes smaller than this are
/// gathered in memory and handed to the blocking pool one buffer at a time.
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;

/// How hard [`commit`](AsyncAtomicFile::commit) works to make the new content
/// survive a power loss or a kernel crash.
///
/// Atomicity does not depend on it: readers, and a killed process, see the
/// whole old or the whole new content either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync` the temp file before publishing it and the directory after:
    /// once `commit` returns `Ok`, the new content survives a power loss
    /// (`F_FULLFSYNC` on macOS).
    #[default]
    Full,
    /// No `fsync` at all. Readers and a killed process still see old or new,
    /// never a mix; after a power loss the target may hold the old content,
    /// or, on filesystems that do not order data before renames, be empty
    /// or torn.
    None,
}

/// Options for opening an [`AsyncAtomicFile`], in the style of
/// [`std::fs::OpenOptions`].
///
/// Every setter takes `&mut self` and returns it, so calls chain; the same
/// options can open many files.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("item.bin");
/// use tokio::io::AsyncWriteExt;
/// use tokio_atomic_write::{AsyncAtomicFile, Durability};
///
/// let mut file = AsyncAtomicFile::options()
///     .overwrite(false)
///     .durability(Durability::None)
///     .open(&path)
///     .await?;
/// file.write_all(b"cached").await?;
/// file.commit().await?;
/// assert_eq!(std::fs::read(&path)?, b"cached");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub(crate) overwrite: bool,
    pub(crate) durability: Durability,
    pub(crate) mode: Option<u32>,
    pub(crate) preserve_permissions: bool,
    pub(crate) preserve_owner: bool,
    pub(crate) follow_symlinks: bool,
    pub(crate) temp_dir: Option<PathBuf>,
    pub(crate) buffer_size: usize,
    pub(crate) unnamed_temp: bool,
    pub(crate) lock_file: bool,
    pub(crate) create_parents: bool,
    pub(crate) preserve_xattrs: bool,
    /// The mode of a new file when [`mode`](Self::mode) is unset, umask not
    /// applied: [`copy`](Self::copy) gives the source's. Not an option.
    pub(crate) new_file_mode: Option<u32>,
    /// No setuid or setgid bits, from `new_file_mode` or a replaced file:
    /// `copy` of another user's file, `mode` unset. Not an option.
    pub(crate) no_setid: bool,
    /// How many segments the memory of a file's two buffers is cut into
    /// (`pipeline::DEFAULT_SEGMENTS`): set only by the hidden
    /// `__private::set_write_segments`, for the benches that pick the
    /// default. Not an option.
    pub(crate) write_segments: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            overwrite: true,
            durability: Durability::Full,
            mode: None,
            preserve_permissions: true,
            preserve_owner: true,
            follow_symlinks: true,
            temp_dir: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            unnamed_temp: true,
            lock_file: true,
            create_parents: false,
            preserve_xattrs: false,
            new_file_mode: None,
            no_setid: false,
            write_segments: crate::pipeline::DEFAULT_SEGMENTS,
        }
    }
}

impl OpenOptions {
    /// Options with the defaults: overwrite, [`Durability::Full`], keep the
    /// permissions and owner of an existing target, follow symlinks, temp
    /// file beside the target, [`DEFAULT_BUFFER_SIZE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `commit` may replace an existing target (default `true`).
    ///
    /// With `false`, `commit` publishes only if nothing exists at the target
    /// path, and fails with [`ErrorKind::AlreadyExists`] otherwise. The check
    /// and the publish are one atomic step (`renameat2(RENAME_NOREPLACE)`, or
    /// `linkat` to the final name), so of many racing writers exactly one wins.
    /// A file that exists already at [`open`](Self::open) (or a symlink
    /// there that is not followed, dangling or not) fails the `open`
    /// itself, with the same kind ([`Op::Open`](crate::Op::Open)), before
    /// anything is created or written. A directory or a special file there
    /// fails as it does with overwrite (`IsADirectory`, `InvalidInput`); a
    /// dangling symlink that is followed names no file yet: the file it
    /// points to is created.
    ///
    /// [`ErrorKind::AlreadyExists`]: std::io::ErrorKind::AlreadyExists
    pub fn overwrite(&mut self, overwrite: bool) -> &mut Self {
        self.overwrite = overwrite;
        self
    }

    /// How hard `commit` works to make the new content durable (default
    /// [`Durability::Full`]).
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    /// The exact mode of the published file, umask not applied (unix only;
    /// ignored elsewhere). Overrides [`preserve_permissions`](Self::preserve_permissions).
    ///
    /// While it is written, the temp file has at most this mode and at most
    /// the replaced file's; the exact mode is set at `commit`.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = Some(mode);
        self
    }

    /// Whether a replaced target keeps its exact mode, setuid, setgid and
    /// sticky bits included (default `true`). A new file, or any file with
    /// `false`, gets `0o666` less the umask, as [`std::fs::File::create`] gives.
    /// Either way the temp file is never readable wider than the file it
    /// replaces while it is written, from its creation on.
    ///
    /// When the group cannot be kept (see
    /// [`preserve_owner`](Self::preserve_owner)), a kept mode gives the
    /// group no more than others have: `0640` becomes `0600`, since those
    /// bits were meant for another group. Bits set by [`mode`](Self::mode)
    /// stay as set.
    ///
    /// # Platform-specific behavior
    ///
    /// With `false`, the umask is read from `/proc/self/status` (Linux);
    /// where it cannot be read, the file keeps the mode it was created
    /// with, which is no wider than the replaced file's.
    pub fn preserve_permissions(&mut self, preserve: bool) -> &mut Self {
        self.preserve_permissions = preserve;
        self
    }

    /// Whether a replaced target keeps its owner and group (default `true`,
    /// unix only). Best effort: without the privilege to give the file away,
    /// the group alone is tried, and then the file keeps the writer's
    /// identity; the commit does not fail for it. When the group could not
    /// be copied, the temp file has no group permissions until `commit`,
    /// since they would apply to another group.
    pub fn preserve_owner(&mut self, preserve: bool) -> &mut Self {
        self.preserve_owner = preserve;
        self
    }

    /// Whether a target that is a symlink is followed (default `true`).
    ///
    /// With `true` the link is kept and the file it finally points to is
    /// replaced, its own directory holding the temp file; a dangling link
    /// gets its target created. With `false` the link itself is replaced by a
    /// regular file.
    ///
    /// In a sticky, world-writable directory (`/tmp`), a link is followed
    /// only when its owner is the caller or the directory's owner, as the
    /// kernel's `fs.protected_symlinks` would have it, and an entry there
    /// (a file, or a link not followed) is replaced only on the same terms;
    /// otherwise `open` fails with `PermissionDenied`, naming the link or
    /// the target.
    pub fn follow_symlinks(&mut self, follow: bool) -> &mut Self {
        self.follow_symlinks = follow;
        self
    }

    /// The directory for the temp file (default: the target's own).
    ///
    /// It must be on the target's filesystem, since a rename cannot cross
    /// filesystems: `open` checks the device and fails with
    /// [`ErrorKind::CrossesDevices`](std::io::ErrorKind::CrossesDevices)
    /// rather than letting `commit` fail late. There is never a copy
    /// fallback. With full durability, `commit` syncs this directory too.
    ///
    /// # Platform-specific behavior
    ///
    /// On Windows the filesystem is not compared at `open`; a `temp_dir` on
    /// another volume fails at `commit`, with the target untouched.
    pub fn temp_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.temp_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// How many bytes are gathered in memory before a write goes to the
    /// blocking pool (default [`DEFAULT_BUFFER_SIZE`]; 0 counts as 1).
    /// Memory use is at most about two buffers per file.
    pub fn buffer_size(&mut self, size: usize) -> &mut Self {
        self.buffer_size = size.max(1);
        self
    }

    /// Whether an unnamed temp file may be used (default `true`).
    ///
    /// On Linux, where the filesystem supports it, the temp file is created
    /// with `O_TMPFILE`: it has no name until `commit`, so a crash or a kill
    /// while writing leaves nothing behind. With `false`, or where
    /// `O_TMPFILE` is unsupported, the temp file is a hidden named file
    /// `.{name}.{random}.tmp` beside the target from the start.
    pub fn unnamed_temp(&mut self, allow: bool) -> &mut Self {
        self.unnamed_temp = allow;
        self
    }

    /// Whether [`update`](Self::update) serialises with other processes
    /// through a lock file (default `true`).
    ///
    /// With `true`, an update holds an exclusive advisory lock (`flock`) on
    /// `.{name}.lock` beside the target from before it reads the target
    /// until its commit has ended, so that updates of one file from
    /// several processes never lose one another's changes. The lock file
    /// is created on first use and left in place: removing it while updates
    /// run would let two of them hold "the" lock at once. It holds nothing,
    /// and whoever may replace the target may take it, whoever created it:
    /// it is given the directory's owner and group (as far as the creator
    /// may give them) and mode `0600`, plus read for group and others where
    /// they may write the directory (unless it is sticky: there they may
    /// not replace the target). With `false`, updates are serialised
    /// only within the process. Other writes (`open`, `write`) never take
    /// the lock.
    ///
    /// # Platform-specific behavior
    ///
    /// On Windows the lock is the lock file opened without sharing: while
    /// another process holds it, the update tries again after a pause.
    pub fn lock_file(&mut self, lock: bool) -> &mut Self {
        self.lock_file = lock;
        self
    }

    /// Whether missing directories above the target are created (default
    /// `false`, when a missing directory fails with
    /// [`Op::OpenDir`](crate::Op::OpenDir), `NotFound`), as
    /// [`std::fs::create_dir_all`] would create them, by [`open`](Self::open),
    /// [`write`](Self::write), [`write_if_changed`](Self::write_if_changed),
    /// [`update`](Self::update), [`copy`](Self::copy) (for `to`),
    /// [`rename`](Self::rename) (for `to`), the JSON helpers and
    /// `StateFile::open_with`.
    ///
    /// Each missing directory is created with mode `0o777` less the umask
    /// (or as the parent's default ACL says), owned by the caller, as
    /// `mkdir -p` creates it; another process creating the same directory
    /// at the same time is no error. With [`Durability::Full`] each
    /// directory that this call found missing is synced, and so is the
    /// directory that holds it, before anything is published inside,
    /// whoever made it (a racing process may not have synced it yet): a
    /// power cut never takes away a directory under a file whose commit
    /// returned `Ok`. (A directory above those, made by another process
    /// between this call's looks, is that process's to sync.) A directory
    /// created this way stays when the write fails later.
    ///
    /// Only the directories of the path as given are created, never those
    /// a symlink points into; a symlink on the way is followed, as by
    /// `mkdir -p`. Each missing directory is made and opened through its
    /// parent's descriptor, a link planted at its name meanwhile not
    /// followed (that fails with [`Op::CreateDir`](crate::Op::CreateDir));
    /// the target is then found by its path again, as any open finds it.
    pub fn create_parents(&mut self, create: bool) -> &mut Self {
        self.create_parents = create;
        self
    }

    /// Whether a replaced file's extended attributes are copied to the new
    /// file (default `false`): its POSIX ACL (`system.posix_acl_access`),
    /// its `security.*` attributes (an SELinux label, say) and its
    /// `user.*` attributes, so that a replaced config file keeps who may
    /// read it and its label. Linux only; ignored elsewhere.
    ///
    /// They are copied to the temp file before its first byte; until then
    /// it is open to its owner alone, so that at no moment can anyone read
    /// it who may not read the file it replaces (a default ACL on the
    /// directory included). `security.*` attributes are best effort, like
    /// the owner: without the privilege to set one (an SELinux relabel),
    /// the file goes without it. Any other attribute that cannot be copied
    /// fails [`open`](Self::open) with [`Op::CopyXattrs`](crate::Op::CopyXattrs)
    /// naming it, before anything is published (a `user.*` attribute of a
    /// file this process may not read, say: reading one takes read
    /// permission; or a target replaced by another process while this
    /// one opened it, whose attributes would be another file's).
    /// `trusted.*` attributes (root's own) and any other namespace are
    /// not copied. `security.capability` would be dropped by the kernel
    /// on the first write, as it drops setuid bits: it is set at commit,
    /// after the last write, best effort too.
    ///
    /// The ACL's owner, mask and other entries are those of the mode used
    /// while writing, so its named entries never get more than that
    /// mode's group bits; the final mode sets them at commit, as a
    /// `chmod` does. A replaced file without an ACL gives a new file
    /// without one, whatever the directory's default ACL.
    ///
    /// With `false`, the new file gets none of these: it has the
    /// directory's default ACL, if any, as any new file there, except
    /// where that ACL could let in users the replaced file kept out (a
    /// mode whose group bits exceed the others', such as `0o640`: the
    /// mask would give its named entries the group's bits), where it gets
    /// no ACL at all.
    pub fn preserve_xattrs(&mut self, preserve: bool) -> &mut Self {
        self.preserve_xattrs = preserve;
        self
    }

    /// Opens an atomic file for `path` with these options.
    ///
    /// Resolves the target, checks it, and creates the temp file, all in one
    /// trip to the blocking pool. The target itself is not touched until
    /// [`commit`](AsyncAtomicFile::commit).
    ///
    /// # Errors
    ///
    /// [`Op::Open`](crate::Op::Open) for an empty path, one without a file
    /// name (ending in `..`), a directory or a special file at the target, or
    /// a symlink loop, or, with [`overwrite(false)`](Self::overwrite), a
    /// target that exists ([`AlreadyExists`](std::io::ErrorKind::AlreadyExists));
    /// [`Op::OpenDir`](crate::Op::OpenDir) when the parent
    /// directory is missing; [`Op::CreateTemp`](crate::Op::CreateTemp) when the
    /// directory is not writable or `temp_dir` is on another filesystem.
    /// Nothing on disk changes on error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing. Dropping it
    /// later lets the open finish on the blocking pool and then removes the
    /// temp file it created.
    pub async fn open(&self, path: impl AsRef<Path>) -> Result<AsyncAtomicFile, Error> {
        AsyncAtomicFile::open_with(self.clone(), path.as_ref().to_path_buf()).await
    }

    /// Replaces the file at `path` with `contents` under these options: the
    /// whole open, write and commit in **one** trip to the blocking pool,
    /// where [`open`](Self::open) + [`commit`](AsyncAtomicFile::commit)
    /// take two. For small files written whole (a state file), where a trip
    /// costs as much as the writing; [`write`](crate::write) is this with
    /// the default options. `contents` is copied once, to move to the pool;
    /// `buffer_size` plays no part.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open) and [`AsyncAtomicFile::commit`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing. After that
    /// the write runs to its end on the pool: the target ends up whole, old
    /// or new.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("cache.bin");
    /// use tokio_atomic_write::{Durability, OpenOptions};
    ///
    /// // A cache entry that can be rebuilt: atomic, not worth an fsync.
    /// OpenOptions::new()
    ///     .durability(Durability::None)
    ///     .write(&path, b"rebuilt at startup")
    ///     .await?;
    /// assert_eq!(std::fs::read(&path)?, b"rebuilt at startup");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write(
        &self,
        path: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        self.write_vec(path.as_ref(), contents.as_ref().to_vec())
            .await
    }

    /// Copies the file `from` to `to` under these options: an atomic,
    /// durable [`std::fs::copy`]. [`copy`](crate::copy) is this with the
    /// default options.
    ///
    /// The whole copy runs in **one** trip to the blocking pool, the
    /// kernel moving the bytes: a reflink (`FICLONE`) where the filesystem
    /// shares extents (xfs, btrfs: the copy takes no time and no space
    /// until either file changes), else `copy_file_range`, else reads and
    /// writes of 1 MiB (as on macOS and Windows). Then the usual commit:
    /// readers of `to` see the old file or the whole copy, and with
    /// [`Durability::Full`] the copy survives a power loss once `Ok`
    /// returns. A `tokio::io::copy` from a `tokio::fs::File` into an
    /// [`AsyncAtomicFile`] costs a pool trip per 8 KiB read instead.
    ///
    /// Every option applies, to `to` (`from`'s links are always followed,
    /// under the sticky-directory rules). The mode: [`mode`](Self::mode) if set, else a
    /// replaced file's (with [`preserve_permissions`](Self::preserve_permissions)),
    /// else `from`'s exact mode, as `std::fs::copy` gives, but for its
    /// setuid and setgid bits when `from` is another user's: the copy is
    /// the caller's, and those bits would make it run as the caller (a root
    /// service copying an upload marked `04755` would make a setuid-root
    /// program), where `std::fs::copy` keeps them. The owner is the caller,
    /// or a replaced file's; a replaced file's setuid and setgid bits are
    /// dropped too when `from` is another user's. A replaced file keeps its
    /// mode as `cp` keeps it (`std::fs::copy` gives the source's): copying
    /// a `0600` secret over a `0644` file publishes it `0644`; set
    /// [`mode`](Self::mode) where that matters. Copying a file onto itself
    /// keeps its content and mode (as a new inode, like any replacement).
    /// Returns the bytes copied.
    ///
    /// # Errors
    ///
    /// [`Op::Read`](crate::Op::Read) naming `from` when it cannot be
    /// opened (missing: `NotFound`, the OS error; a directory; not a
    /// regular file) or read; [`Op::OpenDir`](crate::Op::OpenDir) naming
    /// its directory when that cannot be opened. Then as
    /// [`open`](Self::open) for `to` (with `overwrite(false)`,
    /// `AlreadyExists` before a byte is copied);
    /// [`Op::Write`](crate::Op::Write) when writing the copy fails (a full
    /// disk; also a failed reflink or `copy_file_range`, where the kernel
    /// does not say which side failed); then as
    /// [`commit`](AsyncAtomicFile::commit). Until the publish,
    /// `to` is untouched and no temp file stays.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing. After that
    /// the copy runs to its end on the pool: `to` ends up whole, old or
    /// new.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tokio_atomic_write::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (from, to) = (dir.path().join("upload.part"), dir.path().join("current.bin"));
    /// # std::fs::write(&from, b"payload").unwrap();
    /// use tokio_atomic_write::OpenOptions;
    ///
    /// // Publish a copy once: a second copy onto the same name fails.
    /// let n = OpenOptions::new().overwrite(false).copy(&from, &to).await?;
    /// assert_eq!(n, 7);
    /// let again = OpenOptions::new().overwrite(false).copy(&from, &to).await;
    /// assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn copy(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<u64, Error> {
        let (opts, from) = (self.clone(), from.as_ref().to_path_buf());
        let to = to.as_ref().to_path_buf();
        let target = to.clone();
        let span = crate::trace::commit(&to, self.durability, 0);
        crate::blocking::run(move || span.in_scope(|| crate::core::copy(&opts, &from, to)))
            .await
            .map_err(|e| crate::blocking::lost_commit(crate::Op::Open, &target, e))?
    }

    /// Writes `contents` to `path` only if it does not hold them already,
    /// under these options; [`write_if_changed`](crate::write_if_changed)
    /// is this with the default options.
    ///
    /// `Ok(false)`: the target already held exactly these bytes, and
    /// nothing was created, renamed or synced; its modification time is
    /// unchanged (the read may move its access time, as any read does), so
    /// file watchers and build tools stay quiet. The size is
    /// compared first, then the bytes, in the same trip to the blocking
    /// pool as the write. Otherwise this is [`write`](Self::write), and
    /// `Ok(true)`.
    ///
    /// "Unchanged" is about the bytes: the owner, the group, the extended
    /// attributes and the times are not compared, and neither is the mode,
    /// unless [`mode`](Self::mode) is set: then a file with another mode
    /// (any of its `0o7777` bits: setuid, setgid and sticky too) is
    /// written again, with that mode. A symlink at `path` is followed
    /// as [`follow_symlinks`](Self::follow_symlinks) says: with `false`,
    /// a link is never "unchanged" (it would be replaced by a file). A
    /// write racing with this one ends with one of the two contents,
    /// whole: `Ok(false)` means the target held these bytes when they were
    /// compared. With [`overwrite(false)`](Self::overwrite), an existing
    /// target holding these bytes is `Ok(false)`, one holding others
    /// `AlreadyExists`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write); [`Op::Read`](crate::Op::Read) when the
    /// target exists and cannot be read.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing. After that
    /// the comparison and any write run to their end on the pool: the
    /// target ends up whole, old or new.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("generated.rs");
    /// use tokio_atomic_write::OpenOptions;
    ///
    /// let opts = OpenOptions::new();
    /// assert!(opts.write_if_changed(&path, "pub const N: u32 = 1;\n").await?);
    /// // The same bytes again: nothing written, the mtime kept.
    /// assert!(!opts.write_if_changed(&path, "pub const N: u32 = 1;\n").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_if_changed(
        &self,
        path: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
    ) -> Result<bool, Error> {
        let (opts, target) = (self.clone(), path.as_ref().to_path_buf());
        let contents = contents.as_ref().to_vec();
        let span = crate::trace::commit(&target, self.durability, contents.len() as u64);
        let path = target.clone();
        crate::blocking::run(move || {
            span.in_scope(|| crate::core::changed::write_if_changed(&opts, path, &contents))
        })
        .await
        .map_err(|e| crate::blocking::lost_commit(crate::Op::Open, &target, e))?
    }

    /// Renames the file `from` to `to` under these options: `to` is
    /// replaced by `from` in one step, and with [`Durability::Full`] the
    /// new name survives a power cut once `Ok` returns. Python
    /// atomicwrites' `replace_atomic`, or with
    /// [`overwrite(false)`](Self::overwrite) its `move_atomic`;
    /// [`rename`](crate::rename) is this with the default options.
    ///
    /// Readers of `to` see the old file or the new one, whole, at every
    /// moment. With [`Durability::Full`], `from` is synced first (it may
    /// have been written without a sync: a rename of unsynced data can
    /// publish an empty file after a power cut), then the rename, then the
    /// directory of `to`, and the directory of `from` when it is another.
    ///
    /// With `overwrite(false)` the rename happens only if nothing is at
    /// `to`, atomically (`renameat2(RENAME_NOREPLACE)`, or where the
    /// filesystem lacks it a `link` and an `unlink` of `from`): of moves
    /// racing onto one name exactly one wins, the others fail with
    /// `AlreadyExists` and keep their `from`. After such a link, `from` is
    /// unlinked only while it still names the file moved (a new file put
    /// there meanwhile stays). A directory cannot be linked: where the
    /// filesystem lacks the flag (FUSE, older NFS, unixes other than Linux
    /// and macOS) a directory is moved by a plain rename, which the kernel
    /// refuses onto anything but an **empty** directory, and that one it
    /// replaces, as for [`AsyncAtomicDir`](crate::AsyncAtomicDir)'s
    /// `Exists::Fail` there.
    ///
    /// Neither path is followed if it is a symlink, as with `rename(2)`,
    /// `mv -T` and `os.replace`: a link at `from` moves as a link, and a
    /// link at `to` is replaced, never the file it points to (so a symlink
    /// is swapped atomically by renaming a new link over it), whatever
    /// [`follow_symlinks`](Self::follow_symlinks) says. The sticky-directory
    /// rules apply to an entry at `to`, and
    /// [`create_parents`](Self::create_parents) creates its missing
    /// directories (which stay if the rename then fails). A directory as
    /// `from` is renamed the same way, onto a missing name or an empty
    /// directory (its own entries synced, not the files inside: an
    /// [`AsyncAtomicDir`](crate::AsyncAtomicDir) builds a tree durably).
    /// `mode`, `preserve_*`, `temp_dir`, `unnamed_temp` and `lock_file` do
    /// not apply: the file moves as it is, with its owner, mode and
    /// attributes. When `from` and `to` are already one file (hard links
    /// of it, or the same path), nothing happens and both names stay, as
    /// with `rename(2)`. A `from` this process may not open (another
    /// user's `0600` file: a rename needs no permission on it) cannot be
    /// synced alone: on Linux its whole filesystem is synced (`syncfs`).
    ///
    /// # Errors
    ///
    /// Every error's [`path`](Error::path) is `to`, and its message names
    /// `from` too, and the step (and the directory, when a step on one of
    /// them failed). [`Op::Open`](crate::Op::Open): `from` missing
    /// (`NotFound`), either path naming no file, `to` a directory where
    /// `from` is not (or the reverse), or `to` existing with
    /// `overwrite(false)` (`AlreadyExists`); `CrossesDevices` when the two
    /// are on different filesystems (checked before any directory is made
    /// for `to`): nothing is copied, nothing changes.
    /// [`Op::OpenDir`](crate::Op::OpenDir) when a directory of either
    /// cannot be opened, [`Op::CreateDir`](crate::Op::CreateDir) when one
    /// cannot be made; [`Op::SyncTemp`](crate::Op::SyncTemp) when syncing
    /// `from` fails, [`Op::Rename`](crate::Op::Rename) when the rename does
    /// (a directory onto one that is not empty: `DirectoryNotEmpty`; into
    /// itself: `InvalidInput`), each with nothing changed;
    /// [`Op::SyncDir`](crate::Op::SyncDir) after it, with the new name
    /// published ([`Error::is_published`]).
    ///
    /// # Platform-specific behavior
    ///
    /// On Windows (not built here): `MoveFileExW` with
    /// `MOVEFILE_WRITE_THROUGH`; a directory never replaces another, even
    /// an empty one; filesystems are not compared first, so a move across
    /// volumes fails at [`Op::Rename`](crate::Op::Rename); a `from` that
    /// cannot be opened for writing is not flushed before the move.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before its first poll does nothing. After that
    /// the rename runs to its end on the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tokio_atomic_write::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (part, done) = (dir.path().join("upload.part"), dir.path().join("upload.bin"));
    /// # std::fs::write(&part, b"payload").unwrap();
    /// use tokio_atomic_write::OpenOptions;
    ///
    /// // Publish a finished upload once, durably: a second move onto the
    /// // same name fails and leaves its source where it was.
    /// OpenOptions::new().overwrite(false).rename(&part, &done).await?;
    /// assert_eq!(std::fs::read(&done).unwrap(), b"payload");
    /// # std::fs::write(&part, b"again").unwrap();
    /// let again = OpenOptions::new().overwrite(false).rename(&part, &done).await;
    /// assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), Error> {
        let (opts, from) = (self.clone(), from.as_ref().to_path_buf());
        let to = to.as_ref().to_path_buf();
        let (target, source) = (to.clone(), from.clone());
        let span = crate::trace::commit(&to, self.durability, 0);
        crate::blocking::run(move || {
            span.in_scope(|| crate::core::rename::rename(&opts, &from, &to))
        })
        .await
        .map_err(|e| {
            crate::blocking::lost_commit(crate::Op::Open, &target, e).moving(&source, &target)
        })?
    }

    /// [`write`](Self::write) of bytes already owned: no copy.
    pub(crate) async fn write_vec(&self, target: &Path, contents: Vec<u8>) -> Result<(), Error> {
        let (opts, path) = (self.clone(), target.to_path_buf());
        let span = crate::trace::commit(target, self.durability, contents.len() as u64);
        crate::blocking::run(move || span.in_scope(|| crate::core::write(&opts, path, &contents)))
            .await
            .map_err(|e| crate::blocking::lost_commit(crate::Op::Open, target, e))?
    }
}
