//! A depth-first walk of a directory tree without recursion, holding a
//! bounded number of descriptors whatever the depth: the removal and the
//! sync of atomic directories' trees, which another user may have made
//! thousands of levels deep.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use crate::sys::{Dir, Kind};

/// How many directories below its start a walk holds open at once, at
/// most. A level closed to stay within it is reopened through `..` of the
/// level below it when the walk comes back up.
pub(crate) const MAX_OPEN_DIRS: usize = 32;

/// One directory on the way down.
#[derive(Debug)]
struct Level {
    /// Open while among the deepest [`MAX_OPEN_DIRS`] levels.
    dir: Option<Dir>,
    /// Its identity, to check a reopened level against.
    id: Option<(u64, u64)>,
    /// Its name in the level above.
    name: OsString,
    /// Its entries not yet visited.
    pending: Vec<(OsString, Kind)>,
}

/// The directories from a walk's start down to where it is.
#[derive(Debug)]
pub(crate) struct Walk<'a> {
    root: &'a Dir,
    root_pending: Vec<(OsString, Kind)>,
    levels: Vec<Level>,
    /// The path of the current directory, for errors.
    path: PathBuf,
}

impl<'a> Walk<'a> {
    /// A walk of the entries under `root` (whose path is `path`).
    pub(crate) fn new(root: &'a Dir, path: &Path) -> io::Result<Walk<'a>> {
        Ok(Walk {
            root,
            root_pending: root.entries()?,
            levels: Vec::new(),
            path: path.to_path_buf(),
        })
    }

    /// The current directory: always open.
    pub(crate) fn dir(&self) -> &Dir {
        match self.levels.last() {
            Some(level) => level.dir.as_ref().expect("the deepest level is open"),
            None => self.root,
        }
    }

    /// The current directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How many levels below the start the current directory is.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The next entry of the current directory not yet visited.
    pub(crate) fn next_entry(&mut self) -> Option<(OsString, Kind)> {
        match self.levels.last_mut() {
            Some(level) => level.pending.pop(),
            None => self.root_pending.pop(),
        }
    }

    /// Goes down into `dir`, the entry `name` of the current directory,
    /// opened by the caller: lists it, and closes the level that falls out
    /// of the deepest [`MAX_OPEN_DIRS`].
    pub(crate) fn enter(&mut self, name: OsString, dir: Dir) -> io::Result<()> {
        let pending = dir.entries()?;
        self.path.push(&name);
        self.levels.push(Level {
            id: dir.id(),
            dir: Some(dir),
            name,
            pending,
        });
        if let Some(out) = self.levels.len().checked_sub(MAX_OPEN_DIRS + 1) {
            self.levels[out].dir = None;
        }
        Ok(())
    }

    /// Leaves the current directory, done: returns it and its name, the
    /// directory above it current again (reopened through `..` if it was
    /// closed, and checked to be the same directory); `None` at the start.
    ///
    /// # Errors
    ///
    /// `..` cannot be opened, or is another directory: the tree was moved
    /// while being walked. The walk stops there.
    pub(crate) fn leave(&mut self) -> io::Result<Option<(Dir, OsString)>> {
        let Some(done) = self.levels.pop() else {
            return Ok(None);
        };
        self.path.pop();
        let dir = done.dir.expect("the deepest level is open");
        if let Some(above) = self.levels.last_mut() {
            if above.dir.is_none() {
                let reopened = dir.open_dir(OsStr::new(".."))?;
                if reopened.id() != above.id {
                    return Err(io::Error::other(
                        "a directory was moved out of the tree while it was walked",
                    ));
                }
                above.dir = Some(reopened);
            }
        }
        Ok(Some((dir, done.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a chain of `depth` directories `d/d/...` under `root`, a file
    /// `f` in each, without paths (too long for the kernel).
    fn chain(root: &Path, depth: usize) {
        let mut dir = Dir::open(root).unwrap();
        for _ in 0..depth {
            dir.create_dir(OsStr::new("d"), 0o700).unwrap();
            drop(dir.create_file(OsStr::new("f")).unwrap());
            dir = dir.open_dir(OsStr::new("d")).unwrap();
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// A walk down and back up 200 levels sees every level, holds at most
    /// `MAX_OPEN_DIRS` of them open, and comes back to the start.
    #[test]
    fn a_deep_walk_holds_a_bounded_number_of_descriptors() {
        let t = tempfile::tempdir().unwrap();
        chain(t.path(), 200);
        let root = Dir::open(t.path()).unwrap();
        let before = open_fds();
        let mut walk = Walk::new(&root, t.path()).unwrap();
        let (mut dirs, mut files, mut most_fds, mut deepest) = (0, 0, 0, 0);
        loop {
            match walk.next_entry() {
                Some((name, Kind::Dir)) => {
                    let sub = walk.dir().open_dir(&name).unwrap();
                    walk.enter(name, sub).unwrap();
                    dirs += 1;
                    deepest = deepest.max(walk.depth());
                    most_fds = most_fds.max(open_fds() - before);
                }
                Some(_) => files += 1,
                None => {
                    if walk.leave().unwrap().is_none() {
                        break;
                    }
                }
            }
        }
        assert_eq!((dirs, deepest), (200, 200));
        assert_eq!(files, 200, "a file at each level but the last");
        assert!(most_fds <= MAX_OPEN_DIRS + 1, "{most_fds} descriptors open");
        assert_eq!(walk.path(), t.path());
    }
}
