//! Issue #23, item 2: `create_parents`, missing directories created as
//! `mkdir -p` creates them, by every way of writing, and synced before
//! anything is published inside (seen with strace here; power cuts in
//! `tests/power_rename.rs`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{AsyncAtomicDir, DirOptions, Durability, Exists, Op, OpenOptions};

fn parents() -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.create_parents(true);
    opts
}

/// Without the option a missing directory is an error, as before, and
/// nothing is created.
#[tokio::test]
async fn without_the_option_a_missing_directory_fails_and_nothing_is_made() {
    let dir = scratch();
    let target = dir.path().join("a/b/file");
    let err = tokio_atomic_write::write(&target, b"x").await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::OpenDir, std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(!dir.path().join("a").exists());
}

#[tokio::test]
async fn each_missing_directory_is_made_with_0777_less_the_umask() {
    let dir = scratch();
    let target = dir.path().join("a/b/c/file");
    parents().write(&target, b"deep").await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"deep");
    let want = 0o777 & !current_umask();
    for sub in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode_of(&dir.path().join(sub)), want, "{sub}");
    }
    // Once they exist, nothing more is made and the write is plain.
    parents().write(&target, b"again").await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"again");
}

/// open, write, write_if_changed, update, copy (to), rename (to), the
/// JSON helpers, a `StateFile`, and an `AsyncAtomicDir`.
#[tokio::test]
async fn every_way_of_writing_honours_it() {
    let dir = scratch();
    let at = |p: &str| dir.path().join(p);

    let mut file = parents().open(at("open/x/f")).await.unwrap();
    file.write_all(b"open").await.unwrap();
    file.commit().await.unwrap();
    assert_eq!(std::fs::read(at("open/x/f")).unwrap(), b"open");

    parents().write(at("write/x/f"), b"write").await.unwrap();
    assert!(parents()
        .write_if_changed(at("changed/x/f"), b"changed")
        .await
        .unwrap());
    assert_eq!(std::fs::read(at("changed/x/f")).unwrap(), b"changed");
    parents()
        .update(at("update/x/f"), |old| {
            assert!(old.is_none());
            Ok::<_, tokio_atomic_write::Error>(b"update".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(at("update/x/f")).unwrap(), b"update");

    std::fs::write(at("source"), b"copy").unwrap();
    parents().copy(at("source"), at("copy/x/f")).await.unwrap();
    assert_eq!(std::fs::read(at("copy/x/f")).unwrap(), b"copy");
    parents()
        .rename(at("source"), at("rename/x/f"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(at("rename/x/f")).unwrap(), b"copy");

    parents()
        .write_json(at("json/x/f"), &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    parents()
        .update_json(at("update_json/x/f"), |v: &mut serde_json::Value| {
            *v = serde_json::json!({"n": 2})
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(at("update_json/x/f")).unwrap(),
        r#"{"n":2}"#
    );

    let state = tokio_atomic_write::StateFile::open_with(&parents(), at("state/x/f"), || 7u32)
        .await
        .unwrap();
    state.update(|n| *n += 1).await.unwrap();
    assert_eq!(std::fs::read_to_string(at("state/x/f")).unwrap(), "8");

    let tree = DirOptions::new()
        .create_parents(true)
        .create(at("trees/x/entry"))
        .await
        .unwrap();
    std::fs::write(tree.path().join("inside"), b"tree").unwrap();
    tree.commit(Exists::Fail).await.unwrap();
    assert_eq!(std::fs::read(at("trees/x/entry/inside")).unwrap(), b"tree");
    // And without it, the tree's parent must exist.
    let err = AsyncAtomicDir::create(at("nope/x/entry"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

/// Creators racing for the same missing directories all succeed.
#[test]
fn racing_creators_of_the_same_directories_all_succeed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    for round in 0..20 {
        let dir = scratch();
        let base = dir.path().join("x/y/z");
        const N: usize = 8;
        let results = race(&rt, N, |i| {
            let path = base.join(format!("f{i}"));
            async move { parents().write(path, format!("{i}")).await }
        });
        for (i, r) in results.iter().enumerate() {
            assert!(r.is_ok(), "round {round}, writer {i}: {r:?}");
            let got = std::fs::read_to_string(base.join(format!("f{i}"))).unwrap();
            assert_eq!(got, format!("{i}"));
        }
    }
}

/// A symlink at a name to create is not followed: `mkdir -p` fails there
/// too, and nothing is made where it points.
#[tokio::test]
async fn a_dangling_symlink_where_a_directory_is_missing_is_not_followed() {
    let dir = scratch();
    let elsewhere = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, dir.path().join("a")).unwrap();
    let target = dir.path().join("a/b/file");
    let err = parents().write(&target, b"x").await.unwrap_err();
    assert_eq!(err.op(), Op::CreateDir, "{err}");
    assert_eq!(err.path(), dir.path().join("a"), "{err}");
    assert!(err.to_string().contains("not followed"), "{err}");
    assert!(!elsewhere.exists(), "nothing made where the link points");
}

/// A file where a directory should be: the error of any open, not an
/// attempt to create.
#[tokio::test]
async fn a_file_in_the_way_is_not_a_directory() {
    let dir = scratch();
    std::fs::write(dir.path().join("a"), b"file").unwrap();
    let err = parents()
        .write(dir.path().join("a/b/file"), b"x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory, "{err}");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"file");
}

/// The child half of the tests below: a write with `create_parents`.
fn child_write() {
    let dir = PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let case = std::env::var("TAW_CASE").unwrap();
    let mut opts = parents();
    if case == "none" {
        opts.durability(Durability::None);
    }
    let result = runtime().block_on(opts.write(dir.join("a/b/c/file"), b"deep"));
    match case.as_str() {
        "denied" => {
            let err = result.unwrap_err();
            assert_eq!(err.op(), Op::CreateDir, "{err}");
            assert_eq!(err.path(), dir.join("a"), "{err}");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            assert!(err.to_string().starts_with("failed to create directory `"));
        }
        _ => result.unwrap(),
    }
}

fn parent_or_child() -> bool {
    if is_child() {
        child_write();
        return false;
    }
    true
}

/// Runs the child under strace: the calls on paths in `dir`, in order.
fn trace(test: &str, case: &str, dir: &Path) -> Vec<String> {
    let out = scratch();
    let out_file = out.path().join("strace.out");
    let calls = "trace=mkdirat,mkdir,openat,fsync,fdatasync,rename,renameat,renameat2,linkat";
    let wrap = [
        "strace",
        "-f",
        "-y",
        "-qq",
        "-e",
        calls,
        "-o",
        out_file.to_str().unwrap(),
    ];
    run_child(
        test,
        &wrap,
        &[("TAW_DIR", dir.to_str().unwrap()), ("TAW_CASE", case)],
        None,
    );
    traced_calls_in(&out_file, dir)
}

/// With full durability, each new directory is synced and then the one
/// holding it, all before the file is published; without, none is.
#[test]
fn each_new_directory_and_its_parent_are_synced_before_the_publish() {
    const TEST: &str = "each_new_directory_and_its_parent_are_synced_before_the_publish";
    if !parent_or_child() || !require(have("strace"), "strace") {
        return;
    }
    let dir = scratch();
    let calls = trace(TEST, "full", dir.path());
    let dump = calls.join("\n");
    let published = calls
        .iter()
        .position(|c| {
            (c.starts_with("rename") || c.starts_with("link"))
                && c.contains("\"file\"")
                && !c.contains("= -1")
        })
        .unwrap_or_else(|| panic!("no publish in\n{dump}"));
    let d = dir.path().to_str().unwrap();
    let synced = |path: &str| {
        calls
            .iter()
            .position(|c| c.starts_with("fsync(") && c.contains(&format!("<{path}>")))
            .unwrap_or_else(|| panic!("no fsync of {path} in\n{dump}"))
    };
    let made = |path: &str| {
        calls
            .iter()
            .position(|c| c.starts_with("mkdir") && c.contains(&format!("\"{path}\"")))
            .unwrap_or_else(|| panic!("no mkdir of {path} in\n{dump}"))
    };
    let (a, b, c) = (format!("{d}/a"), format!("{d}/a/b"), format!("{d}/a/b/c"));
    // Each new directory synced after it was made, then its parent, and
    // all of it before the file is published.
    for (name, path, parent) in [("a", &a, d), ("b", &b, a.as_str()), ("c", &c, b.as_str())] {
        let (made, synced_self) = (made(name), synced(path));
        assert!(made < synced_self, "{path}:\n{dump}");
        let parent_synced = calls.iter().enumerate().any(|(i, c)| {
            i > synced_self
                && i < published
                && c.starts_with("fsync(")
                && c.contains(&format!("<{parent}>"))
        });
        assert!(parent_synced, "{parent} synced after {path} made:\n{dump}");
        assert!(synced_self < published, "{path}:\n{dump}");
    }

    let dir = scratch();
    let calls = trace(TEST, "none", dir.path());
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("fsync") || c.starts_with("fdatasync")),
        "{}",
        calls.join("\n")
    );
    assert_eq!(
        std::fs::read(dir.path().join("a/b/c/file")).unwrap(),
        b"deep"
    );
}

/// A directory that cannot be created: `Op::CreateDir` naming it.
#[test]
fn a_directory_that_cannot_be_made_is_named() {
    const TEST: &str = "a_directory_that_cannot_be_made_is_named";
    if !parent_or_child() || !require(is_root(), "root (a child as nobody)") {
        return;
    }
    let dir = scratch();
    // Searchable, not writable, by nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    run_child(
        TEST,
        &[],
        &[
            ("TAW_DIR", dir.path().to_str().unwrap()),
            ("TAW_CASE", "denied"),
        ],
        Some(65534),
    );
    assert!(!dir.path().join("a").exists());
}
