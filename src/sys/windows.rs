//! Windows: `MoveFileExW` with `MOVEFILE_WRITE_THROUGH`. Written to compile
//! in principle; not built or tested by this project's CI (see the README).
//!
//! Windows has no directory handle to rename relative to and no directory
//! fsync: `Dir` is a path, and `sync` is a no-op (NTFS journals the rename;
//! `MOVEFILE_WRITE_THROUGH` makes `MoveFileExW` return only once it is on
//! disk).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Kind, Leftover, Meta, NewTemp, NoReplace, Xattrs};
use windows_sys::Win32::Storage::FileSystem::{
    MoveFileExW, MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH,
};

/// Through a buffer: `CopyFileExW` would write the target itself, not the
/// open temp file.
pub(crate) use super::copy_chunks as copy_file;

pub(crate) const HAS_MODES: bool = false;

/// Kept off here: whether `MoveFileExW` may move an open file depends on how
/// every handle to it shares deletion, so the temp file is closed before
/// its rename.
pub(crate) const RENAME_OPEN_FILES: bool = false;

#[derive(Debug)]
pub(crate) struct Dir {
    path: PathBuf,
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    let t = m.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    Meta {
        kind,
        mode: 0,
        uid: 0,
        gid: 0,
        size: m.len(),
        id: None,
    }
}

impl Dir {
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        if !std::fs::metadata(path)?.is_dir() {
            return Err(io::ErrorKind::NotADirectory.into());
        }
        Ok(Dir {
            path: path.to_path_buf(),
        })
    }

    /// As [`Dir::open`]: Windows needs no separate lookup-only handle.
    pub(crate) fn open_lookup(path: &Path) -> io::Result<Dir> {
        Dir::open(path)
    }

    /// [`Dir::open_lookup`] of `rel` under this directory.
    pub(crate) fn open_lookup_at(&self, rel: &Path) -> io::Result<Dir> {
        Dir::open(&self.path.join(rel))
    }

    /// Itself: [`Dir::open_lookup`] opens nothing less than readable here.
    pub(crate) fn readable(self) -> io::Result<Dir> {
        Ok(self)
    }

    /// A second handle on the same directory: here, its path again.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            path: self.path.clone(),
        })
    }

    /// No unix owner nor mode: never a sticky directory.
    pub(crate) fn owner_and_mode(&self) -> (u32, u32) {
        (0, 0)
    }

    /// No unix groups: 0, as every `Meta` here has.
    pub(crate) fn group_of_new_entries(&self) -> u32 {
        0
    }

    /// What the symlink `name` points to.
    pub(crate) fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        std::fs::read_link(self.path.join(name))
    }

    /// Windows exposes no device id through std; 0 makes every directory
    /// look alike, and a cross-volume rename then fails at commit instead.
    pub(crate) fn device(&self) -> u64 {
        0
    }

    /// No stable identity through std: every directory syncs on its own.
    pub(crate) fn id(&self) -> Option<(u64, u64)> {
        None
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match std::fs::symlink_metadata(self.path.join(name)) {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn create_new(&self, name: &OsStr, _mode: u32) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path.join(name))
    }

    /// `CreateDirectoryW`: a new directory, `AlreadyExists` if anything is
    /// at `name`. No modes here: `mode` is ignored.
    pub(crate) fn create_dir(&self, name: &OsStr, _mode: u32) -> io::Result<()> {
        std::fs::create_dir(self.path.join(name))
    }

    /// The directory at `name`, refused when a symlink (or a junction) is
    /// there: it is not followed.
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let path = self.path.join(name);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() || !meta.is_dir() {
            return Err(io::ErrorKind::NotADirectory.into());
        }
        Ok(Dir { path })
    }

    /// Flushes the regular file `name` (opened for writing: Windows flushes
    /// only through a handle with write access); a directory, a link or
    /// anything else has nothing to flush here. A file that cannot be
    /// opened for writing (read-only, or shared without write) is not
    /// flushed: the move is still made with `MOVEFILE_WRITE_THROUGH`.
    pub(crate) fn sync_entry(&self, name: &OsStr, kind: Kind) -> io::Result<()> {
        if kind != Kind::File {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join(name))
        {
            Ok(file) => file.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The lock file `name`, opened without sharing: while one process
    /// holds it, another's open fails with `ERROR_SHARING_VIOLATION`, which
    /// is `Ok(None)` here (the caller waits and tries again). `mode` has no
    /// meaning here; `allowed` judges the file's metadata.
    pub(crate) fn try_lock_file(
        &self,
        name: &OsStr,
        _mode: u32,
        allowed: impl FnOnce(&Meta) -> io::Result<()>,
    ) -> io::Result<Option<File>> {
        use std::os::windows::fs::OpenOptionsExt;
        const ERROR_SHARING_VIOLATION: i32 = 32;
        let path = self.path.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.file_type().is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .share_mode(0)
            .open(&path)
        {
            Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => Ok(None),
            Err(e) => Err(e),
            Ok(file) => {
                allowed(&meta_of(&file.metadata()?))?;
                Ok(Some(file))
            }
        }
    }

    /// The file at `name` opened to read it, with its metadata; `None` when
    /// nothing is there. A symlink there is not followed: an error.
    pub(crate) fn open_read(&self, name: &OsStr) -> io::Result<Option<(File, Meta)>> {
        let path = self.path.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => return Err(io::ErrorKind::IsADirectory.into()),
            Ok(m) if !m.file_type().is_file() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        match File::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
            Ok(file) => {
                let meta = file_meta(&file)?;
                Ok(Some((file, meta)))
            }
        }
    }

    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    /// Removes the empty directory `name`.
    pub(crate) fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        std::fs::remove_dir(self.path.join(name))
    }

    pub(crate) fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        std::fs::read_dir(&self.path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    /// No locks here: a file some process holds open cannot be opened
    /// without sharing (`ERROR_SHARING_VIOLATION`): that counts as held.
    pub(crate) fn probe_leftover(&self, name: &OsStr) -> io::Result<Option<Leftover>> {
        use std::os::windows::fs::OpenOptionsExt;
        const ERROR_SHARING_VIOLATION: i32 = 32;
        let path = self.path.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let held = match std::fs::OpenOptions::new()
            .read(true)
            .share_mode(0)
            .open(&path)
        {
            // Closed at once: a handle without FILE_SHARE_DELETE would stop
            // the removal.
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => true,
            Err(_) => false,
        };
        Ok(Some(Leftover {
            modified: meta.modified()?,
            tree: false,
            id: None,
            held,
            uid: 0,
            marked: None,
            _lock: None,
        }))
    }
}

/// No advisory lock on Windows: an open handle is the mark (see
/// `Dir::probe_leftover`).
pub(crate) fn lock_temp(_file: &File, _named: bool) -> bool {
    true
}

/// No locks here; the file's metadata is read when needed.
pub(crate) fn lock_new_temp(_file: &File) -> NewTemp {
    NewTemp::Locked(None)
}

/// Windows reports no error on closing a file handle that matters here.
pub(crate) fn close(file: File) -> io::Result<()> {
    drop(file);
    Ok(())
}

pub(crate) fn file_meta(file: &File) -> io::Result<Meta> {
    Ok(meta_of(&file.metadata()?))
}

pub(crate) fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

pub(crate) fn set_owner(_file: &File, _uid: Option<u32>, _gid: Option<u32>) -> io::Result<()> {
    Ok(())
}

pub(crate) fn sync_file(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// No unix ids: 0, which no directory here is owned by.
pub(crate) fn euid() -> u32 {
    0
}

/// No umask on Windows.
pub(crate) fn umask() -> Option<u32> {
    None
}

pub(crate) fn after_link(_file: &File, _dev: u64) -> super::AfterLink {
    super::AfterLink::FullSync
}

pub(crate) fn sync_after_link(file: &File, policy: super::AfterLink) -> io::Result<()> {
    match policy {
        super::AfterLink::Nothing => Ok(()),
        _ => file.sync_data(),
    }
}

pub(crate) fn create_unnamed(_dir: &Dir, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

pub(crate) fn link_unnamed(_file: &File, _dir: &Dir, _name: &OsStr) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

fn move_file(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (from, to) = (wide(from), wide(to));
    // SAFETY: both pointers are to NUL-terminated UTF-16 buffers that live
    // until the call returns; MoveFileExW only reads them.
    let ok = unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), flags) };
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(crate) fn rename(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
    move_file(
        &from_dir.path.join(from),
        &to_dir.path.join(to),
        MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
    )
}

/// Without `MOVEFILE_REPLACE_EXISTING`, `MoveFileExW` fails with
/// `ERROR_ALREADY_EXISTS` when the target exists, in one step.
pub(crate) fn rename_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<NoReplace> {
    move_file(
        &from_dir.path.join(from),
        &to_dir.path.join(to),
        MOVEFILE_WRITE_THROUGH,
    )?;
    // A move, never a second name: nothing left at `from`.
    Ok(NoReplace::Renamed)
}

pub(crate) fn random_bytes(buf: &mut [u8]) {
    super::random_bytes_portable(buf)
}

/// A directory moved only if nothing is at `to`: `MoveFileExW` without
/// `MOVEFILE_REPLACE_EXISTING` moves directories too, in one step.
pub(crate) fn rename_dir_noreplace(
    from_dir: &Dir,
    from: &OsStr,
    to_dir: &Dir,
    to: &OsStr,
) -> io::Result<()> {
    rename_noreplace(from_dir, from, to_dir, to).map(|_| ())
}

// Extended attributes (`OpenOptions::preserve_xattrs`): none copied here.

/// Windows has no extended attributes that the crate copies.
pub(crate) const COPIES_XATTRS: bool = false;

/// Whether a failed attribute copy is one a best effort lets go; never
/// asked here.
pub(crate) fn xattr_refused(_e: &io::Error) -> bool {
    true
}

/// Nothing to copy on Windows.
pub(crate) fn read_xattrs(
    _dir: &Dir,
    _name: &OsStr,
    _id: Option<(u64, u64)>,
) -> io::Result<Xattrs> {
    Ok(Xattrs::default())
}

/// Never reached: [`read_xattrs`] finds nothing to set.
pub(crate) fn set_xattr(_file: &File, _name: &OsStr, _value: &[u8]) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Never reached: [`read_xattrs`] finds no ACL.
pub(crate) fn set_acl(_file: &File, _acl: &[u8], _mode: u32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// No ACL inherited that the crate knows of.
pub(crate) fn remove_acl(_file: &File) -> io::Result<()> {
    Ok(())
}
