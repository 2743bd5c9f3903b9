//! Self-checking directory trees for the `AsyncAtomicDir` tests: tree
//! `id` has a few files, some in subdirectories, each derived from `id`,
//! and a manifest written last that names every file with its length and
//! checksum. A tree half built, a mix of two trees, or a torn file never
//! passes [`read_tree_at`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::AsyncAtomicDir;

use super::{checksum, version};

pub const MANIFEST: &str = "MANIFEST";

/// The files of tree `id`, relative paths and contents: 2 to 5 of them,
/// up to 64 KiB each, in the root, `sub/` and `sub/deeper/`.
pub fn tree_files(id: u32) -> Vec<(String, Vec<u8>)> {
    let n = 2 + id % 4;
    (0..n)
        .map(|i| {
            let path = match i % 3 {
                0 => format!("f{i}"),
                1 => format!("sub/f{i}"),
                _ => format!("sub/deeper/f{i}"),
            };
            let seed = id.wrapping_mul(16).wrapping_add(i);
            let len = (seed.wrapping_mul(7919) % 65_536) as usize;
            (path, version(seed, len))
        })
        .collect()
}

/// The manifest of tree `id`: its id, then a line per file.
pub fn manifest(id: u32) -> String {
    let mut m = format!("id {id}\n");
    for (path, bytes) in tree_files(id) {
        m.push_str(&format!("{path} {} {:x}\n", bytes.len(), checksum(&bytes)));
    }
    m
}

/// Fills `dir` with tree `id`: directories and half the files through
/// `dir.path()` with `tokio::fs`, the other half and the manifest (last)
/// through `dir.file`.
pub async fn fill(dir: &AsyncAtomicDir, id: u32) {
    tokio::fs::create_dir_all(dir.path().join("sub/deeper"))
        .await
        .expect("mkdir");
    for (i, (path, bytes)) in tree_files(id).into_iter().enumerate() {
        if i % 2 == 0 {
            tokio::fs::write(dir.path().join(&path), &bytes)
                .await
                .expect("tokio::fs::write");
        } else {
            let mut f = dir.file(&path).await.expect("file");
            f.write_all(&bytes).await.expect("write_all");
            f.finish().await.expect("finish");
        }
    }
    let mut f = dir.file(MANIFEST).await.expect("manifest");
    f.write_all(manifest(id).as_bytes()).await.expect("write");
    f.finish().await.expect("finish");
}

/// Why a tree did not read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// An entry was missing: the target, or a file that the manifest names
    /// (its tree removed under the reader), whether at its open or from the
    /// listing.
    NotFound(String),
    /// Anything else: a file or manifest that does not match, an entry the
    /// manifest does not name.
    Torn(String),
}

fn read_at(dir: impl AsFd, rel: &str) -> Result<Vec<u8>, Bad> {
    let fd = rustix::fs::openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => Bad::NotFound(rel.to_string()),
            e => Bad::Torn(format!("{rel}: {e}")),
        })?;
    let mut bytes = Vec::new();
    File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(|e| Bad::Torn(format!("{rel}: {e}")))?;
    Ok(bytes)
}

/// Every file below `dir` (an open directory), as relative paths.
fn files_below(dir: impl AsFd, prefix: &str, out: &mut BTreeSet<String>) -> Result<(), Bad> {
    let gone = |e: rustix::io::Errno| match e {
        rustix::io::Errno::NOENT => Bad::NotFound(prefix.to_string()),
        e => Bad::Torn(format!("{prefix}: {e}")),
    };
    let iter = rustix::fs::Dir::read_from(&dir).map_err(gone)?;
    for entry in iter {
        let entry = entry.map_err(gone)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let rel = format!("{prefix}{name}");
        if entry.file_type() == rustix::fs::FileType::Directory {
            let sub = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(gone)?;
            files_below(&sub, &format!("{rel}/"), out)?;
        } else {
            out.insert(rel);
        }
    }
    Ok(())
}

/// Reads the tree in the open directory `root`, everything relative to
/// it: the manifest, each file it names, and the listing, which must hold
/// exactly those files. Returns the tree's id.
pub fn read_tree_at(root: &OwnedFd) -> Result<u32, Bad> {
    let manifest_bytes = read_at(root, MANIFEST)?;
    let text = String::from_utf8(manifest_bytes).map_err(|_| Bad::Torn("manifest".into()))?;
    let id: u32 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("id "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Bad::Torn(format!("manifest: {text:?}")))?;
    if text != manifest(id) {
        return Err(Bad::Torn(format!("manifest of {id}: {text:?}")));
    }
    let mut expected: BTreeSet<String> = BTreeSet::from([MANIFEST.to_string()]);
    for (path, bytes) in tree_files(id) {
        if read_at(root, &path)? != bytes {
            return Err(Bad::Torn(format!("{path} of tree {id}")));
        }
        expected.insert(path);
    }
    let mut found = BTreeSet::new();
    files_below(root, "", &mut found)?;
    if !found.is_subset(&expected) {
        return Err(Bad::Torn(format!(
            "tree {id} holds {found:?}, not {expected:?}"
        )));
    }
    if found != expected {
        // Read whole a moment ago: removed under the reader since.
        return Err(Bad::NotFound(format!(
            "tree {id} holds {found:?}, not {expected:?}"
        )));
    }
    Ok(id)
}

/// Opens the directory at `path` once and reads the tree in it.
pub fn read_tree(path: &Path) -> Result<u32, Bad> {
    let root = open_dir(path)?;
    read_tree_at(&root)
}

/// Opens the directory at `path`.
pub fn open_dir(path: &Path) -> Result<OwnedFd, Bad> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => Bad::NotFound(path.display().to_string()),
        e => Bad::Torn(format!("{}: {e}", path.display())),
    })
}

/// Whether the filesystem of `dir` swaps entries with
/// `renameat2(RENAME_EXCHANGE)` (the lazy FUSE filesystem does not).
pub fn supports_exchange(dir: &Path) -> bool {
    let (a, b) = (dir.join(".exchange-a"), dir.join(".exchange-b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let ok = rustix::fs::renameat_with(
        rustix::fs::CWD,
        &a,
        rustix::fs::CWD,
        &b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .is_ok();
    std::fs::remove_dir(&a).unwrap();
    std::fs::remove_dir(&b).unwrap();
    ok
}
