//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The step of an atomic write that failed.
///
/// Every [`Error`] names one. The variants follow the order in which the steps
/// run; the list may grow, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Checking the target path: empty, without a file name, a directory,
    /// something other than a regular file, or a symlink chain that loops.
    Open,
    /// Opening the directory that holds the target (or the `temp_dir`).
    OpenDir,
    /// Creating the temp file (or an atomic directory's temp tree), or
    /// checking that `temp_dir` shares the target's filesystem.
    CreateTemp,
    /// Creating a file inside an atomic directory's temp tree
    /// ([`AsyncAtomicDir::file`](crate::AsyncAtomicDir::file)).
    CreateFile,
    /// Writing buffered bytes to the temp file (including disk full).
    Write,
    /// Moving the write position of an [`AsyncAtomicFile`](crate::AsyncAtomicFile)
    /// (`AsyncSeek`) to a position before 0 or past `i64::MAX`.
    Seek,
    /// Taking the lock of [`update`](crate::update): creating or opening
    /// the lock file beside the target (the path names it) or waiting for
    /// its lock.
    Lock,
    /// Reading the target's current content ([`update`](crate::update),
    /// `read_json`).
    Read,
    /// Turning a value into bytes (`write_json`): the source is the
    /// serializer's error, of kind `InvalidData` or `InvalidInput`.
    Serialize,
    /// Turning the target's bytes into a value (`read_json`): the source is
    /// the parser's error, of kind `InvalidData` (or `UnexpectedEof` for a
    /// truncated document).
    Deserialize,
    /// Applying the final mode to the temp file (or a temp tree's root).
    SetPermissions,
    /// Flushing the temp file's data to the disk (`fsync`, `F_FULLFSYNC`);
    /// for an atomic directory, a file or directory of its temp tree (the
    /// path names it).
    SyncTemp,
    /// Closing the temp file, which reports a failed write-back on some
    /// filesystems (NFS). Before the publishing rename when replacing; after
    /// the link that publishes an `O_TMPFILE` file without overwrite (then
    /// [`Error::is_published`] is true).
    Close,
    /// Linking an unnamed (`O_TMPFILE`) temp file into the directory.
    Link,
    /// Renaming the temp file over (or, without overwrite, onto) the target;
    /// for an atomic directory, publishing its tree (rename or exchange).
    Rename,
    /// Flushing the directory after the rename. When this fails the new
    /// content **is visible** at the target; only its durability is unknown.
    /// On Linux an `EIO` from an `fstat` of the directory right after its
    /// `fsync` counts too: xfs reports a directory `fsync` as done once it
    /// has shut down (after an I/O error), without writing anything.
    SyncDir,
    /// Removing the temp file on rollback (or an atomic directory's temp
    /// tree).
    RemoveTemp,
    /// A commit (of a file, of an [`update`](crate::update), of an atomic
    /// directory) whose job on the blocking pool panicked: it may have
    /// stopped before or after publishing, so the target holds the old or
    /// the new content, whole, and which is unknown ([`Error::is_published`]
    /// is false: read the target to tell). A job that never ran (the
    /// runtime shut down first) published nothing and is reported at its
    /// first step instead.
    Commit,
    /// Starting the multipart upload of an object
    /// ([`AsyncAtomicObject`](crate::object::AsyncAtomicObject)).
    #[cfg(feature = "object_store")]
    StartUpload,
    /// Uploading a part of an object's multipart upload.
    #[cfg(feature = "object_store")]
    UploadPart,
    /// Completing an object's multipart upload: the step that publishes it.
    #[cfg(feature = "object_store")]
    Complete,
    /// Aborting an object's multipart upload
    /// ([`rollback`](crate::object::AsyncAtomicObject::rollback)).
    #[cfg(feature = "object_store")]
    Abort,
    /// Putting an object in one request (conditional or not): the step
    /// that publishes it; for [`object::update`](crate::object::update),
    /// also running out of tries.
    #[cfg(feature = "object_store")]
    Put,
    /// Looking at or removing a leftover temp file or temp tree in
    /// [`sweep`](crate::sweep) (the path is that entry), or syncing the
    /// directory after removing some (the path is the directory).
    Sweep,
}

impl Op {
    /// The message of an error at this step, the path in backticks.
    fn describe(self, path: &Path, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = path.display();
        match self {
            Op::Open => write!(f, "failed to open `{p}` for atomic replacement"),
            Op::OpenDir => write!(f, "failed to open directory `{p}`"),
            Op::CreateTemp => write!(f, "failed to create temp file in `{p}`"),
            Op::CreateFile => write!(f, "failed to create `{p}` in the temp tree"),
            Op::Write => write!(f, "failed to write temp file for `{p}`"),
            Op::Seek => write!(f, "failed to seek in temp file for `{p}`"),
            Op::Lock => write!(f, "failed to lock `{p}`"),
            Op::Read => write!(f, "failed to read `{p}`"),
            Op::Serialize => write!(f, "failed to serialize the new content of `{p}`"),
            Op::Deserialize => write!(f, "failed to deserialize the content of `{p}`"),
            Op::SetPermissions => write!(f, "failed to set permissions of temp file for `{p}`"),
            Op::SyncTemp => write!(f, "failed to sync temp file for `{p}`"),
            Op::Close => write!(f, "failed to close temp file for `{p}`"),
            Op::Link => write!(f, "failed to link temp file to `{p}`"),
            Op::Rename => write!(f, "failed to rename temp file to `{p}`"),
            Op::SyncDir => write!(
                f,
                "failed to sync directory after publishing `{p}` (new content visible, durability unknown)"
            ),
            Op::RemoveTemp => write!(f, "failed to remove temp file `{p}`"),
            Op::Sweep => write!(f, "failed to sweep leftover temp files at `{p}`"),
            #[cfg(feature = "object_store")]
            Op::StartUpload => write!(f, "failed to start the multipart upload of `{p}`"),
            #[cfg(feature = "object_store")]
            Op::UploadPart => write!(f, "failed to upload a part of `{p}`"),
            #[cfg(feature = "object_store")]
            Op::Complete => write!(f, "failed to complete the multipart upload of `{p}`"),
            #[cfg(feature = "object_store")]
            Op::Abort => write!(f, "failed to abort the multipart upload of `{p}`"),
            #[cfg(feature = "object_store")]
            Op::Put => write!(f, "failed to put `{p}`"),
            Op::Commit => write!(
                f,
                "failed to commit `{p}` (the job panicked: old or new content, unknown which)"
            ),
        }
    }
}

/// An error from an atomic write: which step failed, on which path, and why.
///
/// `Display` prints the step and the path (`failed to rename temp file to
/// `state.json``); the underlying [`io::Error`] is the
/// [`source`](std::error::Error::source), so a report chain prints it exactly
/// once. [`kind`](Error::kind) is the source's kind, and converting into an
/// [`io::Error`] keeps it.
///
/// Errors before the publishing step ([`Op::Rename`] or [`Op::Link`]) leave the
/// target untouched. An [`Op::SyncDir`] error comes after it: the new content
/// is already visible, so do not retry the write as if it had failed.
#[derive(Debug, thiserror::Error)]
#[error("{}", Display(self))]
pub struct Error {
    op: Op,
    path: PathBuf,
    published: bool,
    #[source]
    source: io::Error,
}

struct Display<'a>(&'a Error);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.op.describe(&self.0.path, f)
    }
}

impl Error {
    pub(crate) fn new(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error {
            op,
            path: path.into(),
            published: false,
            source,
        }
    }

    /// An error in a step after the new content was published.
    pub(crate) fn after_publish(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error {
            published: true,
            ..Error::new(op, path, source)
        }
    }

    /// The step that failed.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The path the step worked on: the target for most steps, the directory
    /// for [`Op::OpenDir`] and [`Op::CreateTemp`], the temp file (or tree)
    /// for [`Op::RemoveTemp`], the entry or its directory for [`Op::Sweep`];
    /// for an atomic directory, the file or directory inside the temp tree
    /// for [`Op::CreateFile`], [`Op::Write`], [`Op::Close`] and
    /// [`Op::SyncTemp`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    /// Whether the new content was already published at the target when
    /// the error happened: the content is visible, its durability unknown.
    /// True for [`Op::SyncDir`] errors (and a sync right after an
    /// `O_TMPFILE` link); retrying would write the content a second time.
    /// False for [`Op::Commit`], where it is unknown.
    pub fn is_published(&self) -> bool {
        self.published
    }
}

impl From<Error> for io::Error {
    /// Wraps the error, keeping its [`kind`](Error::kind).
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn message_names_op_and_path_and_source_prints_once() {
        let err = Error::new(
            Op::Rename,
            "state.json",
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(
            err.to_string(),
            "failed to rename temp file to `state.json`"
        );
        assert_eq!(err.source().unwrap().to_string(), "denied");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        let inner = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.op(), Op::Rename);
    }

    #[test]
    fn every_message_is_lowercase_without_period() {
        let ops = [
            Op::Open,
            Op::OpenDir,
            Op::CreateTemp,
            Op::CreateFile,
            Op::Write,
            Op::Seek,
            Op::Lock,
            Op::Read,
            Op::Serialize,
            Op::Deserialize,
            Op::SetPermissions,
            Op::SyncTemp,
            Op::Close,
            Op::Link,
            Op::Rename,
            Op::SyncDir,
            Op::RemoveTemp,
            Op::Sweep,
            Op::Commit,
            #[cfg(feature = "object_store")]
            Op::StartUpload,
            #[cfg(feature = "object_store")]
            Op::UploadPart,
            #[cfg(feature = "object_store")]
            Op::Complete,
            #[cfg(feature = "object_store")]
            Op::Abort,
            #[cfg(feature = "object_store")]
            Op::Put,
        ];
        for op in ops {
            let msg = Error::new(op, "p", io::Error::other("x")).to_string();
            assert!(msg.starts_with("failed to "), "{msg}");
            assert!(msg.contains("`p`"), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(!Error::new(op, "p", io::Error::other("x")).is_published());
        }
    }

    #[test]
    fn after_publish_is_published() {
        let err = Error::after_publish(Op::SyncDir, "p", io::Error::other("x"));
        assert!(err.is_published());
        assert_eq!(err.op(), Op::SyncDir);
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
