//! Atomic, durable file replacement for Tokio.
//!
//! [`AsyncAtomicFile`] is an [`AsyncWrite`](tokio::io::AsyncWrite) sink for
//! a file that is replaced all at once: every reader, and every crash, sees
//! either the whole old content or the whole new content, never a prefix, a
//! mix or an empty file. It streams (`tokio::io::copy` works), buffers small
//! writes so that they do not each cost a trip to the blocking pool, and
//! cleans up after itself when dropped.
//!
//! [`write()`] replaces a file in one call and [`copy()`] copies one, each in
//! one trip to the blocking pool; [`write_if_changed()`] writes only when
//! the bytes differ (an unchanged file keeps its mtime); [`rename()`] moves
//! an existing file over another, durably (python atomicwrites'
//! `replace_atomic`, and `move_atomic` with `overwrite(false)`);
//! [`OpenOptions::create_parents`] creates missing directories, durably;
//! [`update`] is a read-modify-write that
//! loses no change to a concurrent update, from a task or another process;
//! with the `serde` feature, `write_json`, `read_json` and `update_json`
//! keep a value in a JSON file, and `StateFile` keeps a web server's state
//! there, concurrent updates sharing commits (group commit). The file also implements
//! [`AsyncSeek`](tokio::io::AsyncSeek), for formats that patch a header
//! after the body.
//!
//! [`AsyncAtomicDir`] does the same for a whole directory tree (a cache
//! entry, a build output): built beside the target, published by one
//! rename, with [`Exists`] deciding between first writer wins, last writer
//! wins and an error when a tree is already there.
//!
//! With the `object_store` feature, `object` keeps the same contract on
//! object storage (S3, GCS, Azure, any `object_store::ObjectStore`): an
//! `AsyncAtomicObject` published whole by `commit` or not at all,
//! `object::write`, no-clobber, and an `object::update` that loses no
//! update across machines.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("state.json");
//! use tokio::io::AsyncWriteExt;
//! use tokio_atomic_write::AsyncAtomicFile;
//!
//! // Stream into the file, then publish it.
//! let mut file = AsyncAtomicFile::create(&path).await?;
//! file.write_all(br#"{"visits":1}"#).await?;
//! file.commit().await?;
//!
//! // Or in one call, like `tokio::fs::write`.
//! tokio_atomic_write::write(&path, br#"{"visits":2}"#).await?;
//! assert_eq!(std::fs::read(&path)?, br#"{"visits":2}"#);
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! ```text
//! open     open(dir, O_DIRECTORY); lstat(name); a symlink: readlinkat,
//!          under the sticky-directory rules, and again for its target
//!          openat(dir, ".", O_TMPFILE|O_WRONLY, mode)            Linux, when supported
//!          or openat(dir, ".{name}.{random}.tmp",
//!                    O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, mode)   elsewhere
//!          fchown, fchmod                                         to the target's
//! write    buffer in memory; a full buffer: write(temp) on the blocking
//!          pool while the next fills, queued behind a running job (no hop)
//! commit   write(rest); fsync(temp) (but see O_TMPFILE replace below)
//!          replace:     [linkat(temp -> .{name}.{random}.tmp); then
//!                        fdatasync on btrfs; on ext4 without a journal
//!                        and filesystems not known, the fsync moves here
//!                        and is the only one]
//!                       close(temp)  renameat(temp name -> name)
//!          no-clobber:  linkat(temp -> name) [fdatasync on btrfs, fsync
//!                       where unknown]  or  renameat2(RENAME_NOREPLACE)
//!          fsync(dir), shared by the commits into it in flight together
//! seek     nothing for a position query; else write(buffer),
//!          lseek(temp, new position), in one hop
//! drop     unlinkat(temp name) on the blocking pool (O_TMPFILE: close)
//! ```
//!
//! An [`update`]:
//!
//! ```text
//! find     as `open` above, once: the file read is the file replaced
//! lock     openat(dir, ".{name}.lock", O_RDONLY|O_CREAT|O_NOFOLLOW|
//!                 O_NONBLOCK); fchown, fchmod when ours (see below)
//!          flock(lock, LOCK_EX|LOCK_NB)       held elsewhere: close, and
//!                                             again after a pause (<= 64 ms)
//! turn     an async mutex per file (not per spelling), in the process
//!          read(target, O_NOFOLLOW)
//! f        on the caller's task
//! write    as `write` above, one hop; then close(lock)
//! ```
//!
//! A [`rename()`], and the missing directories of `create_parents`:
//!
//! ```text
//! find     open(dir of from, O_DIRECTORY); lstat(from)      never followed
//!          to: as `open` above; a missing directory, with create_parents:
//!          mkdirat(parent, name, 0777), openat(name, O_NOFOLLOW), then
//!          fsync(new directory), fsync(parent), for each, top down
//! sync     fsync(from) (a directory: its own entries; a link: nothing)
//! publish  renameat(from -> to)
//!          no-clobber: renameat2(RENAME_NOREPLACE), or where the
//!          filesystem lacks it linkat(from -> to), unlinkat(from)
//!          fsync(dir of to); fsync(dir of from) when another
//! ```
//!
//! An [`AsyncAtomicDir`] (unix):
//!
//! ```text
//! create   open(parent, O_DIRECTORY); mkdirat(parent, ".{name}.{random}.tmp",
//!          0700, plus the sticky bit when the final mode has it);
//!          flock(tree); fsetxattr(tree, "user.tokio_atomic_write")
//!          the mark for `sweep`
//! fill     anything, under path(); file(): openat per component with
//!          O_NOFOLLOW, then the same buffered pipeline as a file
//! commit   fsync every file and directory of the tree, depth first,
//!          without recursion, at most 32 directories open;
//!          fchown(tree, a replaced directory's owner and group);
//!          fchmod(tree, final mode), fsync(tree)
//!          Fail, Keep: renameat2(tree -> name, RENAME_NOREPLACE)
//!                      (lost: the tree removed; Keep answers Existing)
//!          Replace:    renameat2(tree <-> name, RENAME_EXCHANGE), or
//!                      renameat2(RENAME_NOREPLACE) when nothing is there
//!          [no exchange: renameat(name -> .{name}.{random}.old),
//!           renameat(tree -> name), renameat(.old -> temp name)]
//!          fremovexattr(tree, mark); fsync(parent); then, on the pool,
//!          the old tree removed
//! drop     the temp tree removed on the blocking pool
//! ```
//!
//! The temp file lives in the target's directory, so the rename never
//! crosses a filesystem. It gets the target's owner and at most its
//! permission bits before its first byte, so it is never readable wider than
//! the file it replaces (nor than the final file). On Linux it is unnamed
//! (`O_TMPFILE`) where the filesystem allows it: a crash while writing leaves
//! nothing behind. Only a crash inside `commit`, between linking the file
//! under its hidden name and the rename, can leave that hidden file, which
//! [`sweep`] removes: on xfs, tmpfs and ext4 with a journal the two system
//! calls run back to back; btrfs syncs the data between them, and ext4
//! without a journal (like any filesystem not known) the whole file.
//!
//! # Guarantees
//!
//! Promised, for a local filesystem (tested on tmpfs, ext4 with and without
//! a journal, xfs, btrfs, and a FUSE filesystem without `O_TMPFILE`):
//! - Readers of the target see the whole old or the whole new content at
//!   every moment. The target changes only by one rename (or link), so a
//!   process killed at any point leaves one or the other.
//! - With [`Durability::Full`] (the default), once `commit` returns `Ok` the
//!   new content survives a power loss.
//! - A failed or abandoned write leaves the target untouched and removes its
//!   temp file.
//! - With `overwrite(false)`, of writers racing for one path exactly one
//!   wins; no check-then-rename window.
//! - An [`AsyncAtomicDir`] appears whole or not at all; with
//!   [`Exists::Keep`] or [`Exists::Fail`] exactly one of the racing fillers
//!   publishes (where the filesystem lacks `RENAME_NOREPLACE`, an empty
//!   tree can be replaced by another), and with [`Exists::Replace`] (where
//!   the filesystem can exchange) the target is the old tree or the new one
//!   at every moment. No non-empty tree is removed once published, but the
//!   one a `Replace` replaced.
//!
//! Not promised:
//! - Network filesystems (NFS, SMB) and FUSE shares: the rename is as
//!   atomic, and the fsyncs as durable, as the server makes them.
//! - Hard links: the target path gets a new inode, so other links to the old
//!   file keep the old content.
//! - Read-only files: a rename needs write permission on the directory, not
//!   on the file, so a `0444` target is replaced like any other (and keeps
//!   its mode), as with GLib and renameio. A read-only directory stops it.
//! - Extended attributes, ACLs and SELinux labels are copied only with
//!   [`OpenOptions::preserve_xattrs`] (Linux); file flags never.
//! - A symlink swapped while a write is open: the file it pointed to at
//!   `open` is the one replaced.
//!
//! Links and sticky directories: in a sticky, world-writable directory
//! (`/tmp`), a link is followed only when its owner is the caller
//! (effective uid) or the directory's owner, and an existing entry is
//! replaced only on the same terms, whether or not the kernel's
//! `fs.protected_symlinks` and `fs.protected_regular` are on; otherwise
//! `PermissionDenied` ([`Op::Open`]), naming the link or the target, and
//! nothing changes. Directories along a path are walked by the kernel, as
//! by any `open`.
//!
//! # Cancel safety
//!
//! Dropping an [`AsyncAtomicFile`] without committing discards it: the temp
//! file is removed on the blocking pool (synchronously when no runtime is
//! running; never with `block_on`), after any write still in flight. The
//! target is untouched. This holds when the task is aborted, panics, or the
//! runtime shuts down.
//!
//! Dropping the future of [`commit`](AsyncAtomicFile::commit) before the
//! commit hop starts is the same as dropping the file. Once it has started,
//! the commit runs to its end on the pool: the target ends up whole, old or
//! new, and no temp file remains. An [`AsyncAtomicDir`] behaves alike: its
//! temp tree is removed when it is dropped uncommitted. Each async method
//! documents its own case.
//!
//! # Errors
//!
//! Every failure is an [`Error`] naming the step ([`Op`]), the path and the
//! cause in one line (`failed to open directory `/srv/app/nope`: No such
//! file or directory (os error 2)`), which converting into an `io::Error`
//! keeps, with its kind; a chain printer (anyhow's `{:#}`) prints each
//! message once. `?` also turns an `io::Error` into an `Error`: one this
//! crate made (a failed `write_all`) comes back whole. Bad input fails at
//! `open`, before anything on disk changes (with `overwrite(false)`, so
//! does an existing target). Write errors (a full disk) surface at the next
//! write or flush after the buffer that failed, and always at `commit`;
//! bytes still in the buffer are written by `commit` itself, so a file
//! smaller than the buffer reports them there only. An [`Op::SyncDir`]
//! error is the one that comes after publishing: the new content is
//! visible but may not be durable.
//!
//! # Platform support
//!
//! Linux is built and tested here. macOS (`F_FULLFSYNC`, `renameatx_np`)
//! and Windows (`MoveFileExW` with `MOVEFILE_WRITE_THROUGH`, no directory
//! sync) are written to compile but are neither built nor tested by this
//! project's CI. [`AsyncAtomicDir`] exists on unix only.
//!
//! # Feature flags
//!
//! All off by default.
//! - `object_store`: the `object` module, on any `object_store`
//!   `ObjectStore` (`object::write_json` and `object::read_json` with
//!   `serde` too).
//! - `serde`: `write_json`, `write_json_pretty`, `read_json` and
//!   `update_json` (and all but `read_json` on [`OpenOptions`]), and
//!   `StateFile`, through `serde_json`.
//! - `tracing`: a `DEBUG` span named `open` or `commit`, target
//!   `tokio_atomic_write`, around each open and each commit (those of
//!   [`write()`], [`update`] and [`rename()`] included, a rename's
//!   `path` being its `to`), entered on the blocking-pool
//!   thread that does the work. Fields: `path`, `durability`; for a
//!   commit `bytes` (accepted in all), then `fsync_us` and `rename_us`
//!   (microseconds spent in `fsync`s, and in linking and renaming) and
//!   `error` when it failed; and a `WARN` event (`path`, `bytes`) for a
//!   file dropped with bytes written and no `commit` or `rollback`.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
mod core;
#[cfg(unix)]
mod dir;
mod error;
mod file;
#[cfg(feature = "serde")]
mod json;
#[cfg(feature = "object_store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object_store")))]
pub mod object;
mod options;
mod pipeline;
#[cfg(feature = "serde")]
mod state;
mod sweep;
mod sys;
mod trace;
mod update;

use std::path::Path;

#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub use dir::{AsyncAtomicDir, AsyncDirFile, DirOptions, Exists, Published};
pub use error::{Error, Op};
pub use file::AsyncAtomicFile;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use json::{read_json, update_json, write_json, write_json_pretty};
pub use options::{Durability, OpenOptions, DEFAULT_BUFFER_SIZE};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use state::StateFile;
pub use sweep::{sweep, SweepReport};
pub use update::update;

/// Replaces the file at `path` with `contents`, atomically and durably: an
/// atomic [`tokio::fs::write`](https://docs.rs/tokio/1/tokio/fs/fn.write.html).
///
/// The whole job (open, write, `fsync`, rename, directory `fsync`) runs in
/// one trip to the blocking pool. [`OpenOptions::write`] does the same with
/// other options. `contents` is copied once, as
/// `tokio::fs::write` does, so that it can move to that thread.
///
/// # Errors
///
/// As [`OpenOptions::open`] and [`AsyncAtomicFile::commit`].
///
/// # Cancel safety
///
/// Dropping the future before its first poll does nothing. After that the
/// write runs to its end on the pool: the target ends up whole, old or new.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("state.toml");
/// tokio_atomic_write::write(&path, "count = 1\n").await?;
/// assert_eq!(std::fs::read_to_string(&path)?, "count = 1\n");
/// # Ok(())
/// # }
/// ```
pub async fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    OpenOptions::new().write(path, contents).await
}

/// Copies the file `from` to `to`, atomically and durably: an atomic
/// [`std::fs::copy`], in one trip to the blocking pool, with a reflink or
/// the kernel's `copy_file_range` where the filesystem allows. See
/// [`OpenOptions::copy`], which does the same with other options.
///
/// A new `to` gets the mode of `from`; a replaced one keeps its own mode
/// and owner. Returns the bytes copied.
///
/// # Errors
///
/// As [`OpenOptions::copy`].
///
/// # Cancel safety
///
/// Dropping the future before its first poll does nothing. After that the
/// copy runs to its end on the pool: `to` ends up whole, old or new.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let (download, cached) = (dir.path().join("download.tmp"), dir.path().join("cached.bin"));
/// # std::fs::write(&download, vec![7u8; 4096])?;
/// let n = tokio_atomic_write::copy(&download, &cached).await?;
/// assert_eq!(n, 4096);
/// assert_eq!(std::fs::read(&cached)?, vec![7u8; 4096]);
/// # Ok(())
/// # }
/// ```
pub async fn copy(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<u64, Error> {
    OpenOptions::new().copy(from, to).await
}

/// Writes `contents` to `path` unless it holds exactly these bytes
/// already: then nothing is written and its modification time stays, and
/// the answer is `Ok(false)`; else as [`write()`], and `Ok(true)`. See
/// [`OpenOptions::write_if_changed`], which does the same with other
/// options, for what "unchanged" compares.
///
/// # Errors
///
/// As [`OpenOptions::write_if_changed`].
///
/// # Cancel safety
///
/// Dropping the future before its first poll does nothing. After that the
/// comparison and any write run to their end on the pool: the target ends
/// up whole, old or new.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("config.toml");
/// assert!(tokio_atomic_write::write_if_changed(&path, "port = 8080\n").await?);
/// assert!(!tokio_atomic_write::write_if_changed(&path, "port = 8080\n").await?);
/// assert!(tokio_atomic_write::write_if_changed(&path, "port = 8081\n").await?);
/// # Ok(())
/// # }
/// ```
pub async fn write_if_changed(
    path: impl AsRef<Path>,
    contents: impl AsRef<[u8]>,
) -> Result<bool, Error> {
    OpenOptions::new().write_if_changed(path, contents).await
}

/// Renames the file `from` to `to`, replacing `to` atomically and durably:
/// Python atomicwrites' `replace_atomic`. Readers of `to` see the old file
/// or the new one; once `Ok` returns the new name survives a power cut
/// (`from` is synced first, then both directories after the rename). See
/// [`OpenOptions::rename`], which does the same with other options
/// (`overwrite(false)` is `move_atomic`).
///
/// # Errors
///
/// As [`OpenOptions::rename`]: every error names `to` as its path and
/// `from` in its message; `NotFound` when `from` is missing,
/// `CrossesDevices` when the two are on different filesystems (nothing
/// copied, nothing changed).
///
/// # Cancel safety
///
/// Dropping the future before its first poll does nothing. After that the
/// rename runs to its end on the pool.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let (new, current) = (dir.path().join("db.new"), dir.path().join("db"));
/// std::fs::write(&new, b"rebuilt")?; // written without a sync
/// tokio_atomic_write::rename(&new, &current).await?;
/// assert_eq!(std::fs::read(&current)?, b"rebuilt");
/// assert!(!new.exists());
/// # Ok(())
/// # }
/// ```
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), Error> {
    OpenOptions::new().rename(from, to).await
}

/// The README's code, compiled as a doctest so that it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Not API: hooks for the crate's own tests. May change or vanish in any
/// release.
#[doc(hidden)]
pub mod __private {
    /// How many jobs the calling thread has sent to the blocking pool.
    pub fn pool_hops_from_this_thread() -> u64 {
        crate::blocking::hops_from_this_thread()
    }

    /// Cuts the memory of the two write buffers of each file opened with
    /// `opts` into `n` segments (at least 2, at most one per byte),
    /// instead of the default number: for the benches that pick it.
    pub fn set_write_segments(opts: &mut crate::OpenOptions, n: usize) {
        opts.write_segments = n;
    }

    /// How many segments a file's write buffers are cut into by default.
    pub fn default_write_segments() -> usize {
        crate::pipeline::DEFAULT_SEGMENTS
    }

    /// Whether `name` is shaped like one of this crate's temp file names.
    pub fn is_temp_name(name: &std::ffi::OsStr) -> bool {
        crate::core::name::is_temp_name(name)
    }

    /// Puts on the directory at `path` the mark that the crate gives its
    /// temp trees, so that tests can make leftovers by hand. Best effort,
    /// as the crate's own marking.
    #[cfg(unix)]
    pub fn mark_as_leftover(path: &std::path::Path) -> std::io::Result<()> {
        let name = path.file_name().unwrap_or_default();
        crate::sys::Dir::open(path)?.mark_leftover(&[name]);
        Ok(())
    }
}
