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
        let results = race(&rt, N, |i| {
            let (from, to) = (sources[i].clone(), to.clone());
            async move {
                let mut opts = OpenOptions::new();
                opts.overwrite(false).durability(Durability::None);
                opts.rename(&from, &*to).await
            }
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

/// A link at `to` is replaced, never followed, as rename(2) replaces it:
/// the atomic swap of a symlink (`ln -s v2 current.new; mv -T current.new
/// current`), whatever `follow_symlinks` says; the file the old link
/// pointed to is untouched.
#[tokio::test]
async fn a_symlink_at_the_target_is_replaced_never_followed() {
    let dir = scratch();
    let releases = dir.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    std::fs::write(releases.join("v1"), b"version 1").unwrap();
    std::fs::write(releases.join("v2"), b"version 2").unwrap();
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("releases/v1", &current).unwrap();
    for follow in [true, false] {
        let next = dir.path().join("current.new");
        std::os::unix::fs::symlink("releases/v2", &next).unwrap();
        OpenOptions::new()
            .follow_symlinks(follow)
            .rename(&next, &current)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_link(&current).unwrap(),
            Path::new("releases/v2")
        );
        assert_eq!(std::fs::read(&current).unwrap(), b"version 2");
        assert_eq!(std::fs::read(releases.join("v1")).unwrap(), b"version 1");
        assert!(!next.exists());
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("releases/v1", &current).unwrap();
    }

    // A file over a link: the link is replaced, its target kept.
    let from = dir.path().join("plain");
    std::fs::write(&from, b"plain").unwrap();
    tokio_atomic_write::rename(&from, &current).await.unwrap();
    assert!(!std::fs::symlink_metadata(&current)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&current).unwrap(), b"plain");
    assert_eq!(std::fs::read(releases.join("v1")).unwrap(), b"version 1");
}

/// A link renamed onto itself: nothing happens, the file it points to
/// keeps its data (following `to` would have made that file a link to
/// itself).
#[tokio::test]
async fn a_symlink_renamed_onto_itself_changes_nothing() {
    let dir = scratch();
    let real = dir.path().join("real");
    std::fs::write(&real, b"precious").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("real", &link).unwrap();
    tokio_atomic_write::rename(&link, &link).await.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real"));
    assert_eq!(std::fs::read(&real).unwrap(), b"precious");
}

/// An error on `to`'s side names `to` as its path, and the directory that
/// failed in its message.
#[tokio::test]
async fn errors_on_the_side_of_to_name_to_and_the_directory() {
    let dir = scratch();
    let from = dir.path().join("from");
    std::fs::write(&from, b"x").unwrap();
    let to = dir.path().join("missing/to");
    let err = tokio_atomic_write::rename(&from, &to).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::OpenDir, std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert_names_both(&err, &from, &to);
    assert!(
        err.to_string()
            .contains(&format!("`{}`", dir.path().join("missing").display())),
        "{err}"
    );
    // A link planted where create_parents would make a directory.
    std::os::unix::fs::symlink("nowhere", dir.path().join("planted")).unwrap();
    let to = dir.path().join("planted/x/to");
    let err = OpenOptions::new()
        .create_parents(true)
        .rename(&from, &to)
        .await
        .unwrap_err();
    assert_eq!(err.op(), Op::CreateDir, "{err}");
    assert_names_both(&err, &from, &to);
    assert!(err.to_string().contains("planted`"), "{err}");
    assert!(from.exists());
}

/// A directory moved into itself: the kernel's `EINVAL`, explained.
#[tokio::test]
async fn a_directory_moved_into_itself_is_explained() {
    let dir = scratch();
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let err = tokio_atomic_write::rename(&d, d.join("inside"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Rename, std::io::ErrorKind::InvalidInput),
        "{err}"
    );
    assert!(err.to_string().contains("inside `from`"), "{err}");
    assert!(d.is_dir() && !d.join("inside").exists());
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
    let other = other_fs(dir.path());
    if !require(other.is_some(), "root (a tmpfs mount) or /dev/shm") {
        return;
    }
    let other = other.unwrap();
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
    // With create_parents, refused before a directory is made there.
    let deep = other.dir.path().join("a/b/to");
    let err = OpenOptions::new()
        .create_parents(true)
        .rename(&from, &deep)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::CrossesDevices, "{err}");
    assert!(!other.dir.path().join("a").exists(), "no directory made");
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
    if case.starts_with("own:") {
        return child_own_case(&dir, &case);
    }
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
    traced_calls_in(&out_file, dir.path())
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

/// The child half of the tests that make their own checks.
fn child_own_case(dir: &Path, case: &str) {
    let rt = runtime();
    let mut no_clobber = OpenOptions::new();
    no_clobber.overwrite(false);
    match case {
        "own:unreadable" => {
            // Root's 0600 file and 0700 directory, in a directory of ours.
            rt.block_on(tokio_atomic_write::rename(
                dir.join("secret"),
                dir.join("moved"),
            ))
            .unwrap();
            rt.block_on(tokio_atomic_write::rename(
                dir.join("private"),
                dir.join("moved_dir"),
            ))
            .unwrap();
        }
        "own:dirs" => {
            // RENAME_NOREPLACE refused (strace): a directory cannot be
            // linked, so a plain rename moves it onto a free name. An
            // existing directory is refused before (Op::Open); one made
            // in the race after that check would be replaced if empty,
            // refused if not (the kernel's rule, documented).
            let err = rt
                .block_on(no_clobber.rename(dir.join("moving"), dir.join("empty")))
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
            rt.block_on(no_clobber.rename(dir.join("moving"), dir.join("free")))
                .unwrap();
        }
        "own:swapped" => {
            // The link fallback, delayed after the link (strace) while the
            // parent puts a new file at `from`.
            rt.block_on(no_clobber.rename(dir.join("upload.part"), dir.join("done")))
                .unwrap();
        }
        other => panic!("no case {other}"),
    }
}

/// A source this process may not open (another user's 0600 file, 0700
/// directory) moves as `mv` moves it: the rename needs no permission on
/// it, and its filesystem is synced instead.
#[test]
fn a_source_this_user_may_not_open_still_moves() {
    const TEST: &str = "a_source_this_user_may_not_open_still_moves";
    if is_child() {
        return child_rename();
    }
    if !require(is_root(), "root (a child as nobody)") {
        return;
    }
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let own = dir.path().join("nobody's");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
    std::fs::write(own.join("secret"), b"root's").unwrap();
    std::fs::set_permissions(own.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(own.join("private")).unwrap();
    std::fs::set_permissions(own.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    run_child(
        TEST,
        &[],
        &[
            ("TAW_DIR", own.to_str().unwrap()),
            ("TAW_CASE", "own:unreadable"),
        ],
        Some(65534),
    );
    assert_eq!(std::fs::read(own.join("moved")).unwrap(), b"root's");
    assert!(own.join("moved_dir").is_dir() && !own.join("secret").exists());
}

/// Without `RENAME_NOREPLACE`, a directory's no-clobber move is a plain
/// rename onto a free name; an existing directory, even an empty one, is
/// refused by the check before it.
#[test]
fn a_directory_moves_without_rename_noreplace() {
    const TEST: &str = "a_directory_moves_without_rename_noreplace";
    if is_child() {
        return child_rename();
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let dir = scratch();
    let at = |p: &str| dir.path().join(p);
    for d in ["moving", "empty"] {
        std::fs::create_dir(at(d)).unwrap();
    }
    std::fs::write(at("moving/file"), b"moved").unwrap();
    let out = scratch();
    let log = out.path().join("strace.out");
    run_child(
        TEST,
        &[
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=renameat,renameat2",
            "-e",
            "inject=renameat2:error=EINVAL",
            "-o",
            log.to_str().unwrap(),
        ],
        &[
            ("TAW_DIR", dir.path().to_str().unwrap()),
            ("TAW_CASE", "own:dirs"),
        ],
        None,
    );
    assert!(at("empty").is_dir() && !at("empty/file").exists());
    assert_eq!(std::fs::read(at("free/file")).unwrap(), b"moved");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls
            .lines()
            .any(|l| l.contains("renameat(") && l.contains("\"free\"")),
        "the fallback's plain rename:\n{calls}"
    );
}

/// After a no-clobber link (no `RENAME_NOREPLACE`), `from` is unlinked only
/// while it names the file moved: a new file put there between the link
/// and the unlink stays. strace holds the child for 3 s after the link;
/// the parent puts the new file at `from` as soon as the link shows.
#[test]
fn a_new_file_at_from_after_the_link_is_not_deleted() {
    const TEST: &str = "a_new_file_at_from_after_the_link_is_not_deleted";
    if is_child() {
        return child_rename();
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let dir = scratch();
    let at = |p: &str| dir.path().join(p);
    std::fs::write(at("upload.part"), b"first").unwrap();
    let mut child = child_command(
        TEST,
        &[
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "inject=renameat2:error=EINVAL",
            "-e",
            "inject=linkat:delay_exit=3000000",
        ],
    );
    child
        .env("TAW_DIR", dir.path())
        .env("TAW_CASE", "own:swapped");
    let mut child = child.spawn().unwrap();
    // The link shows while the child is held in it; a liveness bound
    // only, against a child that never gets there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !at("done").exists() {
        assert!(std::time::Instant::now() < deadline, "the link never came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::fs::write(at("next.tmp"), b"second").unwrap();
    std::fs::rename(at("next.tmp"), at("upload.part")).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read(at("done")).unwrap(), b"first");
    assert_eq!(
        std::fs::read(at("upload.part")).unwrap(),
        b"second",
        "the new file at `from` was deleted"
    );
}
