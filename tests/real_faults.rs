//! Issue #4, "Real faults": a read-only filesystem, a directory deleted
//! under an open file, a target replaced by a directory before commit.
//! Each gives an error naming the step and the path, and loses nothing.
//! (A full disk, an unwritable directory and a `temp_dir` on another
//! filesystem are in `bad_input.rs`.)

mod common;

use std::io::ErrorKind;
use std::process::Command;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Op, OpenOptions};

/// A filesystem remounted read-only: `open` fails with `EROFS` at creating
/// the temp file, naming the directory; the target is untouched.
#[tokio::test]
async fn a_read_only_filesystem_fails_at_open_and_changes_nothing() {
    let Some(fs) = mount_tmpfs("1m") else {
        require(false, "root (to mount a tmpfs and remount it read-only)");
        return;
    };
    let dir = fs.dir.path();
    let target = dir.join("state.json");
    std::fs::write(&target, b"old").unwrap();
    let remount = |opt: &str| {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {opt}");
    };
    remount("ro");
    for unnamed in TEMP_KINDS {
        let err = OpenOptions::new()
            .unnamed_temp(unnamed)
            .open(&target)
            .await
            .unwrap_err();
        assert_eq!(err.op(), Op::CreateTemp, "{err}");
        assert_eq!(err.kind(), ErrorKind::ReadOnlyFilesystem, "{err}");
        assert_eq!(err.path(), dir, "{err}");
        let err = tokio_atomic_write::write(&target, b"new")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ReadOnlyFilesystem, "{err}");
    }
    remount("rw");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(listing(dir), vec!["state.json"]);
}

/// The target's directory is deleted (with everything in it) while a file
/// is open for it: the commit fails naming the target, and publishes
/// nothing anywhere; the parent holds no temp file either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_deleted_under_an_open_file_fails_the_commit() {
    for unnamed in TEMP_KINDS {
        let root = scratch();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("state.json");
        std::fs::write(&target, b"old").unwrap();
        let mut file = open_kind(&target, unnamed, 1024).await;
        file.write_all(&[1; 5000]).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let err = file.commit().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let want = if unnamed { Op::Link } else { Op::Rename };
        assert_eq!(err.op(), want, "{err}");
        assert_eq!(err.path(), target, "{err}");
        assert!(!err.is_published());
        assert!(!dir.exists(), "nothing recreated the directory");
        assert_no_leftovers_eventually(root.path());
        assert_eq!(listing(root.path()), Vec::<std::ffi::OsString>::new());
    }
}

/// The target is replaced by a non-empty directory between open and
/// commit: the rename fails with `EISDIR`, the directory and its content
/// stay, and the temp file (for O_TMPFILE, its temp name) is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_replaced_by_a_directory_before_commit_is_kept() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("state.json");
        std::fs::write(&target, b"old").unwrap();
        let mut file = open_kind(&target, unnamed, 1024).await;
        file.write_all(b"new").await.unwrap();
        std::fs::remove_file(&target).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"precious").unwrap();
        let err = file.commit().await.unwrap_err();
        assert_eq!(
            (err.op(), err.kind()),
            (Op::Rename, ErrorKind::IsADirectory),
            "{err}"
        );
        assert_eq!(err.path(), target);
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"precious");
        assert_no_leftovers_eventually(dir.path());
        assert_eq!(listing(dir.path()), vec!["state.json"]);
    }
}
