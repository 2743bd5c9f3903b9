//! `copy` (issue #20, point 2): an atomic, durable `std::fs::copy` in one
//! pool trip, every option applied, a reflink where the filesystem shares
//! extents.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use tokio_atomic_write::__private::pool_hops_from_this_thread;
use tokio_atomic_write::{Durability, Op, OpenOptions};

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A new file: the bytes, the count, the source's exact mode (the umask
/// not applied, as `std::fs::copy`), in one pool trip; nothing left over.
#[tokio::test(flavor = "current_thread")]
async fn a_copy_is_whole_has_the_source_mode_and_takes_one_trip() {
    let dir = scratch();
    for (len, mode) in [
        (0, 0o600),
        (11, 0o640),
        (3 * 1024 * 1024 + 7, 0o755),
        (5, 0o4755),
    ] {
        let from = dir.path().join(format!("from-{len}"));
        let to = dir.path().join(format!("to-{len}"));
        let body = version(len as u32, len);
        std::fs::write(&from, &body).unwrap();
        set_mode(&from, mode);
        let hops = pool_hops_from_this_thread();
        let n = tokio_atomic_write::copy(&from, &to).await.unwrap();
        assert_eq!(pool_hops_from_this_thread() - hops, 1, "one trip");
        assert_eq!(n, len as u64);
        assert_eq!(std::fs::read(&to).unwrap(), body);
        assert_eq!(mode_of(&to), mode, "the source's mode, exactly");
        assert_eq!(std::fs::read(&from).unwrap(), body, "the source unchanged");
    }
    assert_no_leftovers_eventually(dir.path());
}

/// Setuid and setgid come along only from the caller's own file: root's
/// copy of nobody's `06755` program is `0755`, not a setuid-root program.
#[tokio::test]
async fn another_users_setuid_bits_are_not_copied() {
    if !require(is_root(), "root (to give the source to nobody)") {
        return;
    }
    let dir = scratch();
    let (from, to) = (dir.path().join("upload"), dir.path().join("installed"));
    std::fs::write(&from, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&from, Some(65534), Some(65534)).unwrap();
    set_mode(&from, 0o6755);
    tokio_atomic_write::copy(&from, &to).await.unwrap();
    assert_eq!(mode_of(&to), 0o755);
    // Nor does a replaced setuid program keep its bit for another user's
    // bytes.
    let helper = dir.path().join("helper");
    std::fs::write(&helper, b"root's").unwrap();
    set_mode(&helper, 0o4755);
    tokio_atomic_write::copy(&from, &helper).await.unwrap();
    assert_eq!(std::fs::read(&helper).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode_of(&helper), 0o755);
    // `mode()` still sets any mode.
    let exact = dir.path().join("exact");
    OpenOptions::new()
        .mode(0o4711)
        .copy(&from, &exact)
        .await
        .unwrap();
    assert_eq!(mode_of(&exact), 0o4711);
}

/// A replaced file keeps its mode, unless `mode()` says otherwise, or
/// `preserve_permissions(false)` lets the source's apply.
#[tokio::test]
async fn a_replaced_file_keeps_its_mode_and_mode_overrides() {
    let dir = scratch();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::write(&from, b"new").unwrap();
    set_mode(&from, 0o644);
    for (options, expected) in [
        (OpenOptions::new(), 0o600),
        (OpenOptions::new().mode(0o444).clone(), 0o444),
        (
            OpenOptions::new().preserve_permissions(false).clone(),
            0o644,
        ),
    ] {
        std::fs::write(&to, b"old").unwrap();
        set_mode(&to, 0o600);
        options.copy(&from, &to).await.unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert_eq!(mode_of(&to), expected, "{options:?}");
        std::fs::remove_file(&to).unwrap();
    }
    assert_no_leftovers_eventually(dir.path());
}

/// `overwrite(false)`: an existing target fails before a byte is copied,
/// nothing created; an absent one is created. `Durability::None` works
/// alike.
#[tokio::test]
async fn no_clobber_and_durability_apply() {
    let dir = scratch();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::write(&from, b"new").unwrap();
    let mut options = OpenOptions::new();
    options.overwrite(false).durability(Durability::None);
    assert_eq!(options.copy(&from, &to).await.unwrap(), 3);
    assert_eq!(std::fs::read(&to).unwrap(), b"new");
    std::fs::write(&from, b"newer").unwrap();
    let before = listing(dir.path());
    let err = options.copy(&from, &to).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Open, ErrorKind::AlreadyExists),
        "{err}"
    );
    assert_eq!(err.path(), to);
    assert_eq!(std::fs::read(&to).unwrap(), b"new");
    assert_eq!(listing(dir.path()), before);
}

/// Bad sources fail naming the source, with the OS error, and change
/// nothing: missing, a directory, a FIFO (without blocking).
#[tokio::test]
async fn a_bad_source_fails_naming_it_and_changes_nothing() {
    let dir = scratch();
    let to = dir.path().join("to");
    std::fs::write(&to, b"old").unwrap();
    let missing = dir.path().join("missing");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let before = listing(dir.path());
    for (from, kind) in [
        (&missing, ErrorKind::NotFound),
        (&sub, ErrorKind::IsADirectory),
        (&fifo, ErrorKind::InvalidInput),
    ] {
        let err = tokio_atomic_write::copy(from, &to).await.unwrap_err();
        assert_eq!((err.op(), err.kind()), (Op::Read, kind), "{err}");
        assert_eq!(err.path(), from.as_path());
        assert!(
            err.to_string()
                .starts_with(&format!("failed to read `{}`: ", from.display())),
            "{err}"
        );
    }
    let err = tokio_atomic_write::copy(&missing, &to).await.unwrap_err();
    assert_eq!(err.io_error().raw_os_error(), Some(2), "ENOENT");
    // A target in a missing directory: the source is fine, the target not.
    let err = tokio_atomic_write::copy(&to, dir.path().join("nope/to"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::OpenDir, ErrorKind::NotFound),
        "{err}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), b"old");
    assert_eq!(listing(dir.path()), before);
}

/// A file copied onto itself stays as it was.
#[tokio::test]
async fn a_copy_onto_itself_keeps_the_file() {
    let dir = scratch();
    let path = dir.path().join("same");
    std::fs::write(&path, b"content").unwrap();
    set_mode(&path, 0o640);
    assert_eq!(tokio_atomic_write::copy(&path, &path).await.unwrap(), 7);
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    assert_eq!(mode_of(&path), 0o640);
    assert_no_leftovers_eventually(dir.path());
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

/// On xfs and btrfs the copy is a reflink: 64 MiB copied take almost no
/// space, and writing the copy leaves the source as it was.
#[tokio::test]
async fn on_xfs_and_btrfs_a_copy_shares_extents() {
    for fs in ["xfs", "btrfs"] {
        let Some((_mount, dir)) = require_image(fs, &[]) else {
            return;
        };
        let (from, to) = (dir.join("from"), dir.join("to"));
        let body = version(7, 64 << 20);
        std::fs::write(&from, &body).unwrap();
        rustix::fs::sync();
        let before = free_bytes(&dir);
        assert_eq!(
            tokio_atomic_write::copy(&from, &to).await.unwrap(),
            64 << 20
        );
        rustix::fs::sync();
        let used = before.saturating_sub(free_bytes(&dir));
        assert!(used < 8 << 20, "{fs}: the copy took {used} bytes");
        assert_eq!(std::fs::read(&to).unwrap(), body, "{fs}");
        tokio_atomic_write::write(&to, b"changed").await.unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), body, "{fs}: the source kept");
    }
}

/// A file the kernel cannot copy and sizes 0 (procfs) is read: its bytes,
/// not an empty file.
#[tokio::test]
async fn a_procfs_file_is_copied_whole() {
    let dir = scratch();
    let to = dir.path().join("version");
    let n = tokio_atomic_write::copy("/proc/version", &to)
        .await
        .unwrap();
    let expected = std::fs::read("/proc/version").unwrap();
    assert!(!expected.is_empty());
    assert_eq!(n, expected.len() as u64);
    assert_eq!(std::fs::read(&to).unwrap(), expected);
}

/// A source in a search-only directory (`0711`, as a home directory) is
/// copied by a user who may not list it, as `std::fs::copy` would.
#[test]
fn a_source_in_a_search_only_directory_is_copied() {
    let name = "a_source_in_a_search_only_directory_is_copied";
    if is_child() {
        let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let (from, to) = (dir.join("home/file"), dir.join("out/file"));
        assert!(std::fs::read_dir(dir.join("home")).is_err(), "not listable");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            assert_eq!(tokio_atomic_write::copy(&from, &to).await.unwrap(), 5);
            let read: Result<serde_json::Value, _> = tokio_atomic_write::read_json(&from).await;
            assert_eq!(read.unwrap(), serde_json::json!([1, 2]));
        });
        return;
    }
    if !require(is_root(), "root (to run a child as nobody)") {
        return;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o755);
    std::fs::create_dir(dir.path().join("home")).unwrap();
    std::fs::write(dir.path().join("home/file"), b"[1,2]").unwrap();
    set_mode(&dir.path().join("home/file"), 0o644);
    set_mode(&dir.path().join("home"), 0o711);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::os::unix::fs::chown(dir.path().join("out"), Some(65534), Some(65534)).unwrap();
    let env = [("TAW_DIR", dir.path().to_str().unwrap())];
    run_child(name, &[], &env, Some(65534));
    assert_eq!(
        std::fs::read(dir.path().join("out/file")).unwrap(),
        b"[1,2]"
    );
}
