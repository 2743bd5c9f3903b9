//! Issue #23, item 1: `rename`, python atomicwrites' `replace_atomic` and
//! `move_atomic`: what moves, what is refused (and that nothing changes
//! then), the no-clobber race, the link fallback, and the order of the
//! syncs around the rename, seen with strace. Power cuts are in
//! `tests/power_rename.rs`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use tokio_atomic_write::{Durability, Error, Op, OpenOptions};

fn listing_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The error's path is `to`, its message names `from` and `to`.
fn assert_names_both(err: &Error, from: &Path, to: &Path) {
    assert_eq!(err.path(), to, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("`{}`", from.display())), "{msg}");
    assert!(msg.contains(&format!("`{}`", to.display())), "{msg}");
}

#[tokio::test]
async fn rename_replaces_the_target_with_the_source() {
    let dir = scratch();
    let (from, to) = (dir.path().join("new"), dir.path().join("current"));
    std::fs::write(&from, b"new content").unwrap();
    std::fs::write(&to, b"old").unwrap();
    let ino = std::fs::metadata(&from).unwrap().ino();
    tokio_atomic_write::rename(&from, &to).await.unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), b"new content");
    assert_eq!(std::fs::metadata(&to).unwrap().ino(), ino, "the same file");
    assert!(!from.exists());
    assert_eq!(listing_of(dir.path()), ["current"]);
}

#[tokio::test]
async fn rename_onto_a_new_name_and_across_directories() {
    let dir = scratch();
    let incoming = dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let (from, to) = (incoming.join("upload.part"), dir.path().join("upload"));
    std::fs::write(&from, b"payload").unwrap();
    tokio_atomic_write::rename(&from, &to).await.unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), b"payload");
    assert!(listing_of(&incoming).is_empty());
}

#[tokio::test]
async fn the_file_moves_as_it_is_mode_and_all() {
    let dir = scratch();
    let (from, to) = (dir.path().join("new"), dir.path().join("current"));
    std::fs::write(&from, b"x").unwrap();
    std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&to, b"old").unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    tokio_atomic_write::rename(&from, &to).await.unwrap();
    assert_eq!(mode_of(&to), 0o600, "the moved file's own mode");
}

#[tokio::test]
async fn no_clobber_refuses_an_existing_target_and_changes_nothing() {
    let dir = scratch();
    let (from, to) = (dir.path().join("new"), dir.path().join("current"));
    std::fs::write(&from, b"new").unwrap();
    std::fs::write(&to, b"old").unwrap();
    let err = OpenOptions::new()
        .overwrite(false)
        .rename(&from, &to)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.op(), Op::Open);
    assert_names_both(&err, &from, &to);
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&from).unwrap(), b"new");
    assert_eq!(std::fs::read(&to).unwrap(), b"old");

    // Onto a free name it moves.
    let free = dir.path().join("free");
    OpenOptions::new()
        .overwrite(false)
        .rename(&from, &free)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&free).unwrap(), b"new");
    assert!(!from.exists());
}

/// `move_atomic`: of many moves racing onto one name, exactly one wins;
/// every loser gets `AlreadyExists` and keeps its source.
#[test]
fn of_racing_no_clobber_moves_exactly_one_wins() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    for round in 0..20 {
        let dir = scratch();
        let to = Arc::new(dir.path().join("published"));
        const N: usize = 16;
        let sources: Vec<PathBuf> = (0..N)
            .map(|i| {
                let from = dir.path().join(format!("candidate{i}"));
                std::fs::write(&from, format!("candidate {i}")).unwrap();
                from
            })
            .collect();
        let results = rt.block_on(async {
            let barrier = Arc::new(tokio::sync::Barrier::new(N));
            let tasks: Vec<_> = sources
                .iter()
                .cloned()
                .map(|from| {
                    let (to, barrier) = (to.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let mut opts = OpenOptions::new();
                        opts.overwrite(false).durability(Durability::None);
                        opts.rename(&from, &*to).await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        });
        let winners: Vec<usize> = (0..N).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (i, r) in results.iter().enumerate() {
            if let Err(e) = r {
                assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
                assert!(sources[i].exists(), "a loser keeps its source");
            }
        }
        let won = winners[0];
        assert_eq!(
            std::fs::read_to_string(&*to).unwrap(),
            format!("candidate {won}")
        );
        assert!(!sources[won].exists());
        assert_eq!(
            listing_of(dir.path()).len(),
            N,
            "N-1 sources and the target"
        );
    }
}

#[tokio::test]
async fn a_missing_source_is_not_found_and_names_both_paths() {
    let dir = scratch();
    let (from, to) = (dir.path().join("missing"), dir.path().join("current"));
    std::fs::write(&to, b"old").unwrap();
    let err = tokio_atomic_write::rename(&from, &to).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert_eq!(err.op(), Op::Open);
    assert_names_both(&err, &from, &to);
    assert_eq!(std::fs::read(&to).unwrap(), b"old");
    // Its directory missing: the same kind, the directory named.
    let from = dir.path().join("nowhere/missing");
    let err = tokio_atomic_write::rename(&from, &to).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.op()),
        (std::io::ErrorKind::NotFound, Op::OpenDir)
    );
    assert_names_both(&err, &from, &to);
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[tokio::test]
async fn paths_that_name_no_file_are_refused() {
    let dir = scratch();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for bad in ["", ".", "..", "a/.."] {
        let err = tokio_atomic_write::rename(&file, dir.path().join(bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {err}");
        let err = tokio_atomic_write::rename(Path::new(bad), &file)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(listing_of(dir.path()), ["file"]);
}

#[tokio::test]
async fn a_directory_moves_onto_a_free_name_or_an_empty_directory() {
    let dir = scratch();
    let from = dir.path().join("build");
    std::fs::create_dir(&from).unwrap();
    std::fs::write(from.join("out.bin"), b"artifact").unwrap();
    let to = dir.path().join("release");
    tokio_atomic_write::rename(&from, &to).await.unwrap();
    assert_eq!(std::fs::read(to.join("out.bin")).unwrap(), b"artifact");
    assert!(!from.exists());

    // Onto an empty directory: replaced, as rename(2) does.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    tokio_atomic_write::rename(&to, &empty).await.unwrap();
    assert_eq!(std::fs::read(empty.join("out.bin")).unwrap(), b"artifact");

    // Onto a directory with something in it: refused, nothing changed.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"keep").unwrap();
    let err = tokio_atomic_write::rename(&empty, &full).await.unwrap_err();
    assert_eq!(err.op(), Op::Rename, "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::DirectoryNotEmpty, "{err}");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"keep");
    assert_eq!(std::fs::read(empty.join("out.bin")).unwrap(), b"artifact");

    // No-clobber: a directory onto a free name only.
    let free = dir.path().join("free");
    OpenOptions::new()
        .overwrite(false)
        .rename(&empty, &free)
        .await
        .unwrap();
    let err = OpenOptions::new()
        .overwrite(false)
        .rename(&free, &full)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert!(free.join("out.bin").exists() && full.join("keep").exists());
}

#[tokio::test]
async fn a_file_and_a_directory_never_replace_each_other() {
    let dir = scratch();
    let (file, sub) = (dir.path().join("file"), dir.path().join("sub"));
    std::fs::write(&file, b"x").unwrap();
    std::fs::create_dir(&sub).unwrap();
    let err = tokio_atomic_write::rename(&file, &sub).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Open, std::io::ErrorKind::IsADirectory),
        "{err}"
    );
    let err = tokio_atomic_write::rename(&sub, &file).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Open, std::io::ErrorKind::NotADirectory),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert!(sub.is_dir());
}

#[tokio::test]
async fn a_symlink_as_source_moves_as_a_link() {
    let dir = scratch();
    let real = dir.path().join("real");
    std::fs::write(&real, b"real").unwrap();
    let (link, to) = (dir.path().join("link"), dir.path().join("moved"));
    std::os::unix::fs::symlink("real", &link).unwrap();
    tokio_atomic_write::rename(&link, &to).await.unwrap();
    assert_eq!(std::fs::read_link(&to).unwrap(), Path::new("real"));
    assert!(!link.exists() && real.exists());
    // A dangling one too: nothing to sync, the link moves.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink("nowhere", &dangling).unwrap();
    tokio_atomic_write::rename(&dangling, dir.path().join("d2"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_link(dir.path().join("d2")).unwrap(),
        Path::new("nowhere")
    );
}

#[tokio::test]
async fn a_symlink_at_the_target_is_followed_unless_told_not_to() {
    let dir = scratch();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let real = data.join("config");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("config");
    std::os::unix::fs::symlink("data/config", &link).unwrap();

    let from = dir.path().join("config.new");
    std::fs::write(&from, b"followed").unwrap();
    tokio_atomic_write::rename(&from, &link).await.unwrap();
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("data/config"),
        "the link stays"
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"followed");

    std::fs::write(&from, b"replaces the link").unwrap();
    OpenOptions::new()
        .follow_symlinks(false)
        .rename(&from, &link)
        .await
        .unwrap();
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&link).unwrap(), b"replaces the link");
    assert_eq!(std::fs::read(&real).unwrap(), b"followed");
}

#[tokio::test]
async fn hard_links_of_one_file_stay_as_with_rename_2() {
    let dir = scratch();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"one file").unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    tokio_atomic_write::rename(&a, &b).await.unwrap();
    assert!(a.exists() && b.exists(), "rename(2) leaves both names");
    assert_eq!(std::fs::read(&b).unwrap(), b"one file");
}

/// Across filesystems: refused before anything moves, nothing copied.
#[tokio::test]
async fn across_filesystems_nothing_is_copied_nor_changed() {
    let dir = scratch();
    let Some(other) = other_fs(dir.path()) else {
        return;
    };
    let from = dir.path().join("here");
    std::fs::write(&from, b"here").unwrap();
    let to = other.dir.path().join("there");
    std::fs::write(&to, b"there").unwrap();
    for overwrite in [true, false] {
        let err = OpenOptions::new()
            .overwrite(overwrite)
            .rename(&from, &to)
            .await
            .unwrap_err();
        // Checked before the no-clobber rule: which of the two paths
        // would be the problem is what the caller needs to know first.
        assert_eq!(err.kind(), std::io::ErrorKind::CrossesDevices, "{err}");
        assert_eq!(err.op(), Op::Open);
        assert_names_both(&err, &from, &to);
    }
    let new = other.dir.path().join("new");
    let err = tokio_atomic_write::rename(&from, &new).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::CrossesDevices, "{err}");
    assert_eq!(std::fs::read(&from).unwrap(), b"here");
    assert_eq!(std::fs::read(&to).unwrap(), b"there");
    assert!(!new.exists());
}

/// In a sticky, world-writable directory, another user's file is not
/// replaced (the kernel's protected_regular rule, which a rename does not
/// get from the kernel).
#[test]
fn another_users_file_in_a_sticky_directory_is_not_replaced() {
    if !require(is_root(), "root (chown)") {
        return;
    }
    let dir = scratch();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = shared.join("victim");
    std::fs::write(&victim, b"nobody's").unwrap();
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).unwrap();
    let from = dir.path().join("mine");
    std::fs::write(&from, b"mine").unwrap();
    let err = runtime()
        .block_on(tokio_atomic_write::rename(&from, &victim))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"nobody's");
    assert!(from.exists());
}

// ---- strace: the order of the syncs ----

/// The child half of the strace tests: one rename as `TAW_CASE` says.
fn child_rename() {
    let dir = PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let case = std::env::var("TAW_CASE").unwrap();
    let from = match case.contains("other_dir") {
        true => dir.join("incoming/source"),
        false => dir.join("source"),
    };
    let mut opts = OpenOptions::new();
    if case.contains("none") {
        opts.durability(Durability::None);
    }
    if case.contains("noclobber") {
        opts.overwrite(false);
    }
    runtime()
        .block_on(opts.rename(&from, dir.join("target")))
        .unwrap();
}

/// Runs `test` again under strace for `case`, and returns the calls on
/// paths in the directory, in order (strace -y names each descriptor).
fn trace_rename(test: &str, case: &str) -> Vec<String> {
    let dir = scratch();
    let incoming = dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let from = match case.contains("other_dir") {
        true => incoming.join("source"),
        false => dir.path().join("source"),
    };
    std::fs::write(&from, b"new").unwrap();
    if !case.contains("noclobber") {
        std::fs::write(dir.path().join("target"), b"old").unwrap();
    }
    let out = scratch();
    let out_file = out.path().join("strace.out");
    let calls =
        "trace=openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat";
    let mut wrap = vec![
        "strace",
        "-f",
        "-y",
        "-qq",
        "-e",
        calls,
        "-o",
        out_file.to_str().unwrap(),
    ];
    if case.contains("fallback") {
        // A filesystem without RENAME_NOREPLACE (FUSE, older NFS) answers
        // EINVAL: the move is a link and an unlink then.
        wrap.extend(["-e", "inject=renameat2:error=EINVAL"]);
    }
    run_child(
        test,
        &wrap,
        &[
            ("TAW_DIR", dir.path().to_str().unwrap()),
            ("TAW_CASE", case),
        ],
        None,
    );
    assert_eq!(std::fs::read(dir.path().join("target")).unwrap(), b"new");
    assert!(!from.exists());
    let dir_str = dir.path().to_str().unwrap().to_string();
    std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir_str))
        .map(|l| {
            l.split_once(' ')
                .map_or(l, |(_, r)| r)
                .trim_start()
                .to_string()
        })
        .collect()
}

fn index_of(calls: &[String], what: &str, pred: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .position(|c| pred(c))
        .unwrap_or_else(|| panic!("no {what} in\n{}", calls.join("\n")))
}

fn parent_with_strace() -> bool {
    if is_child() {
        child_rename();
        return false;
    }
    require(have("strace"), "strace")
}

/// With full durability: the source synced, then the rename, then the
/// directory of `to`, and the source's directory when it is another.
#[test]
fn the_source_is_synced_before_the_rename_and_both_directories_after() {
    const TEST: &str = "the_source_is_synced_before_the_rename_and_both_directories_after";
    if !parent_with_strace() {
        return;
    }
    for case in [
        "same_dir",
        "other_dir",
        "noclobber_other_dir",
        "noclobber_fallback_other_dir",
    ] {
        let calls = trace_rename(TEST, case);
        let is_fsync = |c: &str| c.starts_with("fsync(") || c.starts_with("fdatasync(");
        let synced_source = index_of(&calls, "fsync of the source", |c| {
            is_fsync(c) && c.contains("/source>")
        });
        let publish = match case.contains("fallback") {
            true => "link",
            false => "rename",
        };
        let published = index_of(&calls, publish, |c| {
            c.starts_with(publish) && !c.contains("= -1") && c.contains("\"target\"")
        });
        let renamed = match case.contains("fallback") {
            // The move ends when the source's name is gone.
            true => {
                let unlinked = index_of(&calls, "unlink of the source", |c| {
                    c.starts_with("unlink") && c.contains("\"source\"")
                });
                assert!(published < unlinked, "{case}:\n{}", calls.join("\n"));
                unlinked
            }
            false => published,
        };
        let dir_syncs: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| is_fsync(c) && !c.contains("/source>"))
            .map(|(i, _)| i)
            .collect();
        assert!(synced_source < renamed, "{case}:\n{}", calls.join("\n"));
        let want = if case.contains("other_dir") { 2 } else { 1 };
        assert_eq!(dir_syncs.len(), want, "{case}:\n{}", calls.join("\n"));
        assert!(
            dir_syncs.iter().all(|i| *i > renamed),
            "{case}: directories synced after the rename:\n{}",
            calls.join("\n")
        );
        if case.contains("other_dir") {
            assert!(
                calls
                    .iter()
                    .any(|c| is_fsync(c) && c.contains("/incoming>")),
                "{case}: the source's directory synced:\n{}",
                calls.join("\n")
            );
        }
    }
}

/// With `Durability::None`: the rename alone.
#[test]
fn without_durability_a_rename_syncs_nothing() {
    const TEST: &str = "without_durability_a_rename_syncs_nothing";
    if !parent_with_strace() {
        return;
    }
    let calls = trace_rename(TEST, "none_other_dir");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("fsync(") || c.starts_with("fdatasync(")),
        "{}",
        calls.join("\n")
    );
    index_of(&calls, "rename", |c| c.starts_with("rename"));
}
