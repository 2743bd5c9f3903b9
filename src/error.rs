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
    /// Creating a missing directory above the target, or syncing one just
    /// created, with [`OpenOptions::create_parents`](crate::OpenOptions::create_parents)
    /// (the path names that directory).
    CreateDir,
    /// Creating the temp file (or an atomic directory's temp tree), or
    /// checking that `temp_dir` shares the target's filesystem.
    CreateTemp,
    /// Copying the replaced file's extended attributes (ACLs, SELinux
    /// labels, `user.*`) to the temp file, with
    /// [`OpenOptions::preserve_xattrs`](crate::OpenOptions::preserve_xattrs):
    /// the message names the attribute.
    CopyXattrs,
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
    /// `read_json`), or the source of a [`copy`](crate::copy) (the path
    /// names it).
    Read,
    /// Turning a value into bytes (`write_json`): the cause is the
    /// serializer's error (in the message; [`Error::io_error`] wraps it),
    /// of kind `InvalidData` or `InvalidInput`.
    Serialize,
    /// Turning the target's bytes into a value (`read_json`): the cause is
    /// the parser's error, with its line and column (in the message;
    /// [`Error::io_error`] wraps it), of kind `InvalidData` (or
    /// `UnexpectedEof` for a truncated document).
    Deserialize,
    /// Applying an update to a [`StateFile`](crate::StateFile): another
    /// update's `f` panicked after this change was applied and before a
    /// commit carried it, and the working copy went back to the last state
    /// taken for a commit; this change was undone, never written.
    #[cfg(feature = "serde")]
    Apply,
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
    /// An [`io::Error`] from outside this crate, made an [`Error`] by `?`
    /// (`From<io::Error>`): a failed read from the source of a
    /// `tokio::io::copy`, say. Its path is empty and its message is the
    /// `io::Error`'s own. (An `io::Error` that this crate made comes back
    /// as the `Error` it was, with its step and path.)
    Other,
}

impl Op {
    /// The message of an error at this step, the path in backticks; the
    /// cause follows it.
    fn describe(self, path: &Path, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = path.display();
        match self {
            Op::Open => write!(f, "failed to open `{p}` for atomic replacement"),
            Op::OpenDir => write!(f, "failed to open directory `{p}`"),
            Op::CreateDir => write!(f, "failed to create directory `{p}`"),
            Op::CreateTemp => write!(f, "failed to create temp file in `{p}`"),
            Op::CopyXattrs => write!(
                f,
                "failed to copy extended attributes to the temp file for `{p}`"
            ),
            Op::CreateFile => write!(f, "failed to create `{p}` in the temp tree"),
            Op::Write => write!(f, "failed to write temp file for `{p}`"),
            Op::Seek => write!(f, "failed to seek in temp file for `{p}`"),
            Op::Lock => write!(f, "failed to lock `{p}`"),
            Op::Read => write!(f, "failed to read `{p}`"),
            Op::Serialize => write!(f, "failed to serialize the new content of `{p}`"),
            Op::Deserialize => write!(f, "failed to deserialize the content of `{p}`"),
            #[cfg(feature = "serde")]
            Op::Apply => write!(f, "failed to apply an update to `{p}`"),
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
            Op::Other => Ok(()),
        }
    }
}

/// An error from an atomic write: which step failed, on which path, and why.
///
/// `Display` prints one line with all three, as `fs-err` does: the step and
/// the path, then the cause (the underlying [`io::Error`]'s message):
///
/// ```text
/// failed to open directory `/srv/app/nope`: No such file or directory (os error 2)
/// ```
///
/// That line is what a server logs or answers, and it stays the same after
/// `?` turns the error into an `io::Error` (`From<Error> for io::Error`).
/// Since the cause is in the message, [`source`](std::error::Error::source)
/// does not return the `io::Error` again but only what its message leaves
/// out (the source of an error it wraps), so that a chain printer, such as
/// anyhow's `{:#}`, prints every message once. The `io::Error` itself is
/// [`io_error`](Error::io_error); [`kind`](Error::kind) is its kind, and
/// converting into an `io::Error` keeps it.
///
/// `?` also works the other way: an `io::Error` becomes an `Error`
/// (`From<io::Error>`), so one function can `?` both the `write_all` of an
/// [`AsyncAtomicFile`](crate::AsyncAtomicFile) and its `commit`. An
/// `io::Error` that this crate made (a failed write) comes back as the
/// `Error` it was, step and path kept; any other is [`Op::Other`].
///
/// Errors before the publishing step ([`Op::Rename`] or [`Op::Link`]) leave the
/// target untouched. An [`Op::SyncDir`] error comes after it: the new content
/// is already visible, so do not retry the write as if it had failed.
#[derive(Debug)]
pub struct Error {
    op: Op,
    path: PathBuf,
    published: bool,
    /// A no-clobber publish lost to an entry already at the target: the
    /// message says so before the errno.
    target_exists: bool,
    /// For a [`rename`](crate::rename): the file moved, which the message
    /// names beside the path (`to`).
    moved_from: Option<Box<PathBuf>>,
    source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Op::Other {
            return fmt::Display::fmt(&self.source, f);
        }
        if let Some(from) = &self.moved_from {
            let (from, to) = (from.display(), self.path.display());
            write!(f, "failed to rename `{from}` to `{to}`")?;
            if self.target_exists {
                return write!(f, ": the target already exists: {}", self.source);
            }
            let step = match self.op {
                Op::Open => "checking the paths",
                Op::OpenDir => "opening a directory",
                Op::CreateDir => "creating a missing directory",
                Op::SyncTemp => "syncing the source",
                Op::Link => "linking",
                Op::RemoveTemp => {
                    "removing the source name after linking it; the new name is published"
                }
                Op::SyncDir => {
                    "syncing the directories after publishing; new name visible, durability unknown"
                }
                _ => "renaming",
            };
            return write!(f, " ({step}): {}", self.source);
        }
        if self.target_exists {
            let p = self.path.display();
            write!(f, "failed to publish `{p}`: the target already exists")?;
        } else {
            self.op.describe(&self.path, f)?;
        }
        write!(f, ": {}", self.source)
    }
}

impl std::error::Error for Error {
    /// What the message leaves out: the source of the error that the
    /// `io::Error` wraps (its own message is in this one's), or `None`.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let wrapped = self.source.get_ref()?;
        // `object_store`'s messages print their source too: skip it.
        #[cfg(feature = "object_store")]
        if let Some(e) = wrapped.downcast_ref::<object_store::Error>() {
            return std::error::Error::source(e)?.source();
        }
        wrapped.source()
    }
}

impl Error {
    pub(crate) fn new(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error {
            op,
            path: path.into(),
            published: false,
            target_exists: false,
            moved_from: None,
            source,
        }
    }

    /// This error as one of a [`rename`](crate::rename) of `from` to `to`:
    /// the message names `from` too, and the path is `to`; a step that
    /// worked on another path (a directory of either) names it in the
    /// cause, whose kind stays.
    pub(crate) fn moving(self, from: &Path, to: &Path) -> Self {
        let Error {
            op,
            path,
            published,
            target_exists,
            source,
            ..
        } = self;
        let source = match path == to {
            true => source,
            false => io::Error::new(source.kind(), format!("`{}`: {source}", path.display())),
        };
        Error {
            op,
            path: to.to_path_buf(),
            published,
            target_exists,
            moved_from: Some(Box::new(from.to_path_buf())),
            source,
        }
    }

    /// The error of a no-clobber publish (`overwrite(false)`, or a tree's
    /// `Exists::Fail`) at step `op`: `source` is the publish's own error,
    /// and when it is `AlreadyExists` the message says the target exists.
    pub(crate) fn of_no_clobber(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error {
            target_exists: source.kind() == io::ErrorKind::AlreadyExists,
            ..Error::new(op, path, source)
        }
    }

    /// An error in a step after the new content was published.
    pub(crate) fn after_publish(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error {
            published: true,
            ..Error::new(op, path, source)
        }
    }

    /// A copy for a second caller (an error kept for later calls): the
    /// same step, path and publish state, the cause as [`copy_io_error`]
    /// copies it.
    #[cfg_attr(
        not(any(feature = "object_store", feature = "serde")),
        allow(dead_code)
    )]
    pub(crate) fn duplicate(&self) -> Error {
        Error {
            source: copy_io_error(&self.source),
            path: self.path.clone(),
            moved_from: self.moved_from.clone(),
            ..*self
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
    /// Wraps the error, keeping its [`kind`](Error::kind) and its message.
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

impl From<io::Error> for Error {
    /// Takes back the [`Error`] inside an `io::Error` made from one (a
    /// failed write of an [`AsyncAtomicFile`](crate::AsyncAtomicFile)),
    /// step and path kept; any other `io::Error` becomes an
    /// [`Op::Other`] error with an empty path.
    fn from(err: io::Error) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = err.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        Error::new(Op::Other, PathBuf::new(), err)
    }
}

/// A copy of `e` for a second caller (an error kept for later calls): the
/// OS error code where there is one, so that `raw_os_error` still answers;
/// else the kind and the message.
pub(crate) fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn the_message_names_op_path_and_cause_and_the_source_is_not_repeated() {
        let err = Error::new(
            Op::Rename,
            "state.json",
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(
            err.to_string(),
            "failed to rename temp file to `state.json`: denied"
        );
        assert!(err.source().is_none(), "the cause is in the message");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            io.to_string(),
            "failed to rename temp file to `state.json`: denied"
        );
        let inner = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.op(), Op::Rename);
    }

    /// An error with a source of its own, not in its message.
    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn what_the_message_leaves_out_is_the_source() {
        let inner = io::Error::other("inner");
        let err = Error::new(Op::Read, "p", io::Error::other(Outer(inner)));
        assert_eq!(err.to_string(), "failed to read `p`: outer");
        assert_eq!(err.source().unwrap().to_string(), "inner");
    }

    #[test]
    fn an_os_error_keeps_its_code_when_copied() {
        let e = io::Error::from_raw_os_error(28);
        let copy = copy_io_error(&e);
        assert_eq!(copy.raw_os_error(), Some(28));
        assert_eq!(copy.to_string(), e.to_string());
        let custom = copy_io_error(&io::Error::new(io::ErrorKind::StorageFull, "full"));
        assert_eq!(
            (custom.kind(), custom.to_string().as_str()),
            (io::ErrorKind::StorageFull, "full")
        );
    }

    #[test]
    fn an_io_error_made_here_comes_back_whole_and_others_are_other() {
        let err = Error::after_publish(Op::SyncDir, "p", io::Error::from_raw_os_error(5));
        let back = Error::from(io::Error::from(err));
        assert_eq!((back.op(), back.path()), (Op::SyncDir, Path::new("p")));
        assert!(back.is_published());
        assert_eq!(back.io_error().raw_os_error(), Some(5));

        let foreign = Error::from(io::Error::new(io::ErrorKind::BrokenPipe, "pipe"));
        assert_eq!(foreign.op(), Op::Other);
        assert_eq!(foreign.path(), Path::new(""));
        assert_eq!(foreign.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(foreign.to_string(), "pipe");
    }

    #[test]
    fn a_no_clobber_publish_that_loses_says_the_target_exists() {
        for op in [Op::Link, Op::Rename] {
            let err = Error::of_no_clobber(op, "t", io::Error::from_raw_os_error(17));
            let msg = err.to_string();
            assert!(
                msg.starts_with("failed to publish `t`: the target already exists: "),
                "{msg}"
            );
            // Another step's `AlreadyExists` (no free temp name) is not
            // the target's.
            let other = Error::new(op, "t", io::ErrorKind::AlreadyExists.into());
            assert!(
                !other.to_string().contains("target already exists"),
                "{other}"
            );
            // Nor another error of a no-clobber publish.
            let denied = Error::of_no_clobber(op, "t", io::Error::from_raw_os_error(13));
            assert!(!denied.to_string().contains("already exists"), "{denied}");
        }
    }

    #[test]
    fn every_message_is_lowercase_without_period() {
        let ops = [
            Op::Open,
            Op::OpenDir,
            Op::CreateDir,
            Op::CreateTemp,
            Op::CopyXattrs,
            Op::CreateFile,
            Op::Write,
            Op::Seek,
            Op::Lock,
            Op::Read,
            Op::Serialize,
            Op::Deserialize,
            #[cfg(feature = "serde")]
            Op::Apply,
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
            assert!(msg.contains("`p`") && msg.ends_with(": x"), "{msg}");
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
