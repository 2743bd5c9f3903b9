//! Issue #2, point 7: a symlinked target keeps its link; the file it
//! finally points to is replaced, from its own directory.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Op, OpenOptions};

fn is_symlink(p: &std::path::Path) -> bool {
    std::fs::symlink_metadata(p)
        .unwrap()
        .file_type()
        .is_symlink()
}

#[tokio::test]
async fn a_symlink_chain_is_followed_and_kept() {
    for unnamed in TEMP_KINDS {
        let links = scratch();
        let data = scratch();
        let real = data.path().join("real.json");
        std::fs::write(&real, b"old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        // link1 -> (absolute) data/hop -> (relative to data/) real.json
        symlink("real.json", data.path().join("hop")).unwrap();
        let link1 = links.path().join("link1");
        symlink(data.path().join("hop"), &link1).unwrap();

        let mut file = open_kind(&link1, unnamed, 2).await;
        file.write_all(b"new").await.unwrap();
        file.flush().await.unwrap();
        if !unnamed {
            assert_eq!(
                temp_files(data.path()).len(),
                1,
                "temp beside the real file"
            );
        }
        assert!(temp_files(links.path()).is_empty(), "not beside the link");
        file.commit().await.unwrap();

        assert!(
            is_symlink(&link1) && is_symlink(&data.path().join("hop")),
            "links kept"
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert_eq!(
            mode_of(&real),
            0o600,
            "mode of the final file, not of a link"
        );
        assert_no_leftovers_eventually(links.path());
        assert_no_leftovers_eventually(data.path());
    }
}

#[tokio::test]
async fn a_dangling_link_gets_its_target_created() {
    let dir = scratch();
    let link = dir.path().join("link");
    symlink("sub/made.txt", &link).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    tokio_atomic_write::write(&link, b"hello").await.unwrap();
    assert!(is_symlink(&link));
    assert_eq!(
        std::fs::read(dir.path().join("sub/made.txt")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn a_symlink_loop_is_an_error_and_changes_nothing() {
    let dir = scratch();
    symlink("b", dir.path().join("a")).unwrap();
    symlink("a", dir.path().join("b")).unwrap();
    let before = listing(dir.path());
    let err = OpenOptions::new()
        .open(dir.path().join("a"))
        .await
        .unwrap_err();
    assert_eq!(err.op(), Op::Open);
    assert_eq!(err.path(), dir.path().join("a"));
    assert_eq!(
        err.io_error().raw_os_error(),
        Some(rustix::io::Errno::LOOP.raw_os_error())
    );
    assert_eq!(listing(dir.path()), before);
}

#[tokio::test]
async fn follow_symlinks_false_replaces_the_link_itself() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let real = dir.path().join("real");
        std::fs::write(&real, b"untouched").unwrap();
        let link = dir.path().join("link");
        symlink("real", &link).unwrap();
        let mut file = OpenOptions::new()
            .follow_symlinks(false)
            .unnamed_temp(unnamed)
            .open(&link)
            .await
            .unwrap();
        file.write_all(b"regular now").await.unwrap();
        file.commit().await.unwrap();
        assert!(!is_symlink(&link));
        assert_eq!(std::fs::read(&link).unwrap(), b"regular now");
        assert_eq!(std::fs::read(&real).unwrap(), b"untouched");
        assert_eq!(
            mode_of(&link),
            0o666 & !current_umask(),
            "a new file's mode"
        );
    }
}

/// A link in a directory that can be searched but not read (mode 0711,
/// someone else's): followed all the same, since resolving a link by path
/// needs only search permission, even though that directory cannot be
/// opened to look through.
#[test]
fn a_link_in_a_search_only_directory_is_followed() {
    const NOBODY: u32 = 65534;
    if is_child() {
        let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(tokio_atomic_write::write(
                dir.join("locked/current"),
                b"new",
            ))
            .unwrap();
        return;
    }
    if !require(is_root(), "root (to run a child as nobody)") {
        return;
    }
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("locked");
    let data = dir.path().join("data");
    std::fs::create_dir(&locked).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("cfg.json"), b"old").unwrap();
    symlink("../data/cfg.json", locked.join("current")).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(data.join("cfg.json"), Some(NOBODY), Some(NOBODY)).unwrap();
    run_child(
        "a_link_in_a_search_only_directory_is_followed",
        &[],
        &[("TAW_DIR", dir.path().to_str().unwrap())],
        Some(NOBODY),
    );
    assert_eq!(std::fs::read(data.join("cfg.json")).unwrap(), b"new");
    assert!(is_symlink(&locked.join("current")), "the link is kept");
    assert_no_leftovers(&data);
}
