//! Issue #2, point 8: bad input fails at open with an error naming the path
//! and the step, and nothing on disk changes.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Error, Op, OpenOptions};

/// Opens `path` expecting an error of `kind` at `op`, and checks that the
/// directory `dir` is exactly as before.
async fn open_fails(dir: &Path, path: &Path, kind: ErrorKind, op: Op) -> Error {
    let before = listing(dir);
    let err = OpenOptions::new().open(path).await.unwrap_err();
    assert_eq!((err.kind(), err.op()), (kind, op), "{err}");
    assert_eq!(listing(dir), before, "nothing on disk changed");
    assert_no_leftovers_eventually(dir);
    err
}

#[tokio::test]
async fn a_missing_parent_directory_is_not_found() {
    let dir = scratch();
    let target = dir.path().join("missing/state.json");
    let err = open_fails(dir.path(), &target, ErrorKind::NotFound, Op::OpenDir).await;
    assert_eq!(err.path(), dir.path().join("missing"));
    assert_eq!(
        err.to_string(),
        format!(
            "failed to open directory `{}`: No such file or directory (os error 2)",
            dir.path().join("missing").display()
        )
    );
}

#[tokio::test]
async fn a_directory_target_is_refused() {
    let dir = scratch();
    let target = dir.path().join("d");
    std::fs::create_dir(&target).unwrap();
    let err = open_fails(dir.path(), &target, ErrorKind::IsADirectory, Op::Open).await;
    assert_eq!(err.path(), target);
    assert!(
        err.to_string().contains(&format!("`{}`", target.display())),
        "{err}"
    );
}

#[tokio::test]
async fn paths_without_a_file_name_are_refused() {
    let dir = scratch();
    for bad in ["", "..", "sub/..", "sub/", "sub/."] {
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let path = if bad.is_empty() {
            Path::new("").to_path_buf()
        } else {
            dir.path().join(bad)
        };
        let err = open_fails(dir.path(), &path, ErrorKind::InvalidInput, Op::Open).await;
        assert_eq!(err.path(), path);
    }
}

#[tokio::test]
async fn a_special_file_is_refused() {
    let dir = scratch();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    open_fails(dir.path(), &fifo, ErrorKind::InvalidInput, Op::Open).await;
}

#[tokio::test]
async fn a_temp_dir_on_another_filesystem_fails_at_open() {
    let dir = scratch();
    let Some(other) = other_fs(dir.path()) else {
        require(
            false,
            "a second filesystem (/dev/shm, or root to mount tmpfs)",
        );
        return;
    };
    let target = dir.path().join("t");
    std::fs::write(&target, b"old").unwrap();
    let before_other = listing(other.dir.path());
    let before = listing(dir.path());
    let err = OpenOptions::new()
        .temp_dir(other.dir.path())
        .open(&target)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.op()),
        (ErrorKind::CrossesDevices, Op::CreateTemp),
        "{err}"
    );
    assert_eq!(err.path(), other.dir.path());
    assert_eq!(listing(dir.path()), before);
    assert_eq!(listing(other.dir.path()), before_other);
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
}

#[tokio::test]
async fn a_temp_dir_on_the_same_filesystem_works() {
    let dir = scratch();
    let temps = dir.path().join("temps");
    std::fs::create_dir(&temps).unwrap();
    let target = dir.path().join("t");
    for unnamed in TEMP_KINDS {
        let mut file = OpenOptions::new()
            .temp_dir(&temps)
            .unnamed_temp(unnamed)
            .buffer_size(1)
            .open(&target)
            .await
            .unwrap();
        file.write_all(b"via temp dir").await.unwrap();
        file.flush().await.unwrap();
        assert_eq!(temp_files(&temps).len(), usize::from(!unnamed));
        assert!(temp_files(dir.path()).is_empty());
        file.commit().await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"via temp dir");
        assert_no_leftovers_eventually(&temps);
    }
}

/// Run as nobody when root, since root may write anywhere.
#[test]
fn an_unwritable_directory_is_permission_denied() {
    let dir_env = std::env::var("TAW_DIR");
    if is_child() || !is_root() {
        let scratch_dir;
        let dir = match dir_env {
            Ok(d) => std::path::PathBuf::from(d),
            Err(_) => {
                scratch_dir = scratch();
                std::fs::write(scratch_dir.path().join("t"), b"old").unwrap();
                std::fs::set_permissions(
                    scratch_dir.path(),
                    std::fs::Permissions::from_mode(0o555),
                )
                .unwrap();
                scratch_dir.path().to_path_buf()
            }
        };
        let target = dir.join("t");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let err = open_fails(&dir, &target, ErrorKind::PermissionDenied, Op::CreateTemp).await;
            assert_eq!(err.path(), dir);
            let err = tokio_atomic_write::write(&target, b"x").await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        });
        assert_eq!(std::fs::read(&target).unwrap_or_default(), b"old");
        return;
    }
    let dir = scratch();
    std::fs::write(dir.path().join("t"), b"old").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    run_child(
        "an_unwritable_directory_is_permission_denied",
        &[],
        &[("TAW_DIR", dir.path().to_str().unwrap())],
        Some(65534),
    );
    assert_eq!(listing(dir.path()), vec!["t"]);
}

/// A small tmpfs fills up mid-write: StorageFull, target intact, temp
/// removed; a later commit that fits succeeds.
#[tokio::test]
async fn disk_full_while_writing_is_storage_full() {
    let Some(fs) = mount_tmpfs("1m") else {
        require(false, "root (to mount a 1 MiB tmpfs)");
        return;
    };
    let dir = fs.dir.path();
    let target = dir.join("t");
    std::fs::write(&target, b"old").unwrap();
    for unnamed in TEMP_KINDS {
        let mut file = open_kind(&target, unnamed, 64 * 1024).await;
        let mut first = None;
        for _ in 0..64 {
            if let Err(e) = file.write_all(&[7; 64 * 1024]).await {
                first = Some(e);
                break;
            }
        }
        let err = first.expect("4 MiB cannot fit in 1 MiB");
        assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
        assert!(
            err.to_string().contains("failed to write temp file"),
            "{err}"
        );
        // Sticky: the next write fails the same way, and so does commit,
        // with the original error.
        let again = file.write_all(b"more").await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::StorageFull);
        // The copy a later call gets keeps the OS error, and `?` into an
        // `Error` gives back the step and the path.
        let again = tokio_atomic_write::Error::from(again);
        assert_eq!((again.op(), again.path()), (Op::Write, target.as_path()));
        assert_eq!(
            again.io_error().raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        assert_eq!(
            again.to_string(),
            format!(
                "failed to write temp file for `{}`: No space left on device (os error 28)",
                target.display()
            )
        );
        let err = file.commit().await.unwrap_err();
        assert_eq!((err.kind(), err.op()), (ErrorKind::StorageFull, Op::Write));
        assert_eq!(
            err.io_error().raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_no_leftovers_eventually(dir);
        // Space is back once the temp file is gone: a commit that fits works.
        tokio_atomic_write::write(&target, vec![1u8; 100 * 1024])
            .await
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap().len(), 100 * 1024);
        std::fs::write(&target, b"old").unwrap();
    }
}

/// A target bind-mounted over (a common way to hand a config file to a
/// container) cannot be renamed onto: EBUSY, with a hint, and nothing lost.
#[tokio::test]
async fn a_bind_mounted_target_is_busy_with_a_hint() {
    if !require(is_root() && have("mount"), "root (to bind-mount a file)") {
        return;
    }
    let dir = scratch();
    let target = dir.path().join("config");
    let source = dir.path().join("source");
    std::fs::write(&target, b"under").unwrap();
    std::fs::write(&source, b"mounted").unwrap();
    let ok = std::process::Command::new("mount")
        .arg("--bind")
        .args([&source, &target])
        .status()
        .unwrap()
        .success();
    assert!(ok, "bind mount");
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Umount(&target);
    for unnamed in TEMP_KINDS {
        let mut file = open_kind(&target, unnamed, DEFAULT_BUFFER_SIZE).await;
        file.write_all(b"new").await.unwrap();
        let err = file.commit().await.unwrap_err();
        assert_eq!(
            (err.kind(), err.op()),
            (ErrorKind::ResourceBusy, Op::Rename),
            "{err}"
        );
        assert!(
            err.io_error().to_string().contains("mount point"),
            "{}",
            err.io_error()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"mounted");
        assert_no_leftovers_eventually(dir.path());
    }
}
