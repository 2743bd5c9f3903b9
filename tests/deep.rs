//! Issue #18, point 1: a tree thousands of levels deep (which another user
//! can make, in any directory it may write) is synced, committed, rolled
//! back, replaced and swept without recursion and with a bounded number of
//! descriptors: each case runs in a child process whose descriptor limit
//! is 64, far below the tree's depth, on a blocking pool whose threads
//! have Tokio's default 2 MiB stack. Before, each level cost a stack frame
//! and a descriptor: the process aborted on a stack overflow, or failed
//! with "Too many open files".

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rustix::fs::{Mode, OFlags, CWD};
use tokio_atomic_write::{sweep, AsyncAtomicDir, Exists};

/// Levels of the deep trees: the figure.
const DEPTH: usize = 20_000;
/// The child's descriptor limit (soft and hard).
const FD_LIMIT: u64 = 64;

/// Makes `depth` nested directories `d/d/.../d` under `root`, with a file
/// `f` at the bottom, by `*at` calls (the path is far too long for the
/// kernel), holding two descriptors at a time.
fn deep_tree(root: &Path, depth: usize) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(CWD, root, flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, "d", flags, Mode::empty()).unwrap();
    }
    let file = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC;
    rustix::fs::openat(&dir, "f", file, Mode::from_raw_mode(0o644)).unwrap();
}

/// How deep the chain of `d` directories under `root` goes.
fn depth_of(root: &Path) -> usize {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(CWD, root, flags, Mode::empty()).unwrap();
    let mut depth = 0;
    while let Ok(next) = rustix::fs::openat(&dir, "d", flags, Mode::empty()) {
        dir = next;
        depth += 1;
    }
    depth
}

/// The child: lowers its descriptor limit, then runs `TAW_CASE` in `TAW_DIR`.
fn child() {
    let dir = PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let case = std::env::var("TAW_CASE").unwrap();
    let limit = rustix::process::Rlimit {
        current: Some(FD_LIMIT),
        maximum: Some(FD_LIMIT),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        match case.as_str() {
            "commit" => {
                let tree = AsyncAtomicDir::create(dir.join("site")).await.unwrap();
                deep_tree(tree.path(), DEPTH);
                tree.commit(Exists::Fail).await.unwrap();
            }
            "rollback" => {
                let tree = AsyncAtomicDir::create(dir.join("site")).await.unwrap();
                deep_tree(tree.path(), DEPTH);
                tree.rollback().await.unwrap();
            }
            "drop" => {
                let tree = AsyncAtomicDir::create(dir.join("site")).await.unwrap();
                deep_tree(tree.path(), DEPTH);
                drop(tree);
            }
            "replace" => {
                let tree = AsyncAtomicDir::create(dir.join("site")).await.unwrap();
                std::fs::write(tree.path().join("new"), b"new").unwrap();
                tree.commit(Exists::Replace).await.unwrap();
            }
            "sweep" => {
                let report = sweep(&dir, Duration::ZERO).await.unwrap();
                assert_eq!(report.removed.len(), 1, "{report:?}");
                assert!(report.failed.is_empty(), "{report:?}");
            }
            other => panic!("no case {other}"),
        }
    });
    // The runtime is dropped here: its pool has run every cleanup.
    drop(rt);
    println!("taw:ok");
}

fn run(case: &str, dir: &Path) {
    let out = run_child(
        "deep_trees_are_handled_with_few_descriptors",
        &[],
        &[("TAW_DIR", dir.to_str().unwrap()), ("TAW_CASE", case)],
        None,
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("taw:ok"), "{case}: {said}");
}

/// A scratch directory that `rm -rf` empties when dropped: a failed test
/// may leave a deep tree in it, which `std::fs::remove_dir_all` (behind
/// `TempDir`'s drop) removes by recursion, overflowing the test's stack.
struct DeepScratch(tempfile::TempDir);

impl Drop for DeepScratch {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn deep_trees_are_handled_with_few_descriptors() {
    if is_child() {
        return child();
    }
    let scratch = DeepScratch(scratch());
    let dir = scratch.0.path();

    // Committed (synced whole, durably) and published.
    run("commit", dir);
    assert_eq!(depth_of(&dir.join("site")), DEPTH);
    assert_eq!(listing(dir), ["site"]);

    // Rolled back, or dropped: the temp tree removed.
    for case in ["rollback", "drop"] {
        run(case, dir);
        assert_eq!(listing(dir), ["site"], "{case}");
    }

    // Replaced: the deep tree is the one removed.
    run("replace", dir);
    assert_eq!(std::fs::read(dir.join("site/new")).unwrap(), b"new");
    assert_eq!(listing(dir), ["site"]);

    // Swept: a deep leftover of the crate's shape and mark.
    let left = dir.join(".site.AAAAAAAAAAAA.tmp");
    std::fs::create_dir(&left).unwrap();
    deep_tree(&left, DEPTH);
    tokio_atomic_write::__private::mark_as_leftover(&left).unwrap();
    run("sweep", dir);
    assert_eq!(listing(dir), ["site"]);
    eprintln!(
        "a tree {DEPTH} levels deep: committed, rolled back, dropped, replaced \
         and swept with at most {FD_LIMIT} descriptors"
    );
}

/// The same bound, closer: with 48 descriptors over those the process had
/// (the runtime's few, the directory swept, the leftover's lock, its root
/// and the walk's 32 directories fit), a 2,000-level leftover is swept.
#[test]
fn the_walk_holds_at_most_32_directories_open() {
    const NAME: &str = "the_walk_holds_at_most_32_directories_open";
    if is_child() {
        let dir = PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let limit = rustix::process::Rlimit {
            current: Some(before + 48),
            maximum: Some(before + 48),
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let report = rt.block_on(sweep(&dir, Duration::ZERO)).unwrap();
        assert_eq!(report.removed.len(), 1, "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        return;
    }
    let scratch = DeepScratch(scratch());
    let dir = scratch.0.path();
    let left = dir.join(".x.BBBBBBBBBBBB.tmp");
    std::fs::create_dir(&left).unwrap();
    deep_tree(&left, 2_000);
    tokio_atomic_write::__private::mark_as_leftover(&left).unwrap();
    run_child(NAME, &[], &[("TAW_DIR", dir.to_str().unwrap())], None);
    assert_eq!(listing(dir), Vec::<std::ffi::OsString>::new());
}
