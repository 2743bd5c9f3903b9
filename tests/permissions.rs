//! Issue #2, point 6: modes and owners, and a temp file never readable
//! wider than the file it replaces.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::OpenOptions;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Modes of the temp file while it is open: the named one by its name, the
/// unnamed one through /proc/self/fd.
fn temp_modes(dir: &Path) -> Vec<u32> {
    let mut modes: Vec<u32> = temp_files(dir)
        .iter()
        .map(|n| mode_of(&dir.join(n)))
        .collect();
    let canon = std::fs::canonicalize(dir).unwrap();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(entry.path()) {
            if link.starts_with(&canon) && link.to_string_lossy().ends_with("(deleted)") {
                if let Ok(m) = std::fs::metadata(entry.path()) {
                    modes.push(m.mode() & 0o7777);
                }
            }
        }
    }
    modes
}

async fn replace(target: &Path, unnamed: bool, opts: &mut OpenOptions) -> Vec<u32> {
    let mut file = opts
        .unnamed_temp(unnamed)
        .buffer_size(4)
        .open(target)
        .await
        .unwrap();
    file.write_all(b"new content").await.unwrap();
    file.flush().await.unwrap();
    let seen = temp_modes(target.parent().unwrap());
    file.commit().await.unwrap();
    assert_eq!(std::fs::read(target).unwrap(), b"new content");
    seen
}

#[tokio::test]
async fn a_new_file_gets_0666_less_the_umask() {
    let expected = 0o666 & !current_umask();
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("new");
        let seen = replace(&target, unnamed, &mut OpenOptions::new()).await;
        assert_eq!(seen, vec![expected], "the temp file, while writing");
        assert_eq!(mode_of(&target), expected);
    }
}

/// Runs `name` again in a child whose umask is `umask`.
fn with_umask(name: &str, umask: &str) {
    let script = format!("umask {umask} && exec \"$0\" \"$@\"");
    run_child(name, &["sh", "-c", &script], &[], None);
}

#[test]
fn umask_022_gives_0644() {
    if !is_child() {
        return with_umask("umask_022_gives_0644", "022");
    }
    assert_eq!(current_umask(), 0o022);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for unnamed in TEMP_KINDS {
            let dir = scratch();
            let target = dir.path().join("new");
            replace(&target, unnamed, &mut OpenOptions::new()).await;
            assert_eq!(mode_of(&target), 0o644);
        }
    });
}

#[test]
fn umask_077_gives_0600() {
    if !is_child() {
        return with_umask("umask_077_gives_0600", "077");
    }
    assert_eq!(current_umask(), 0o077);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let dir = scratch();
        let target = dir.path().join("new");
        replace(&target, false, &mut OpenOptions::new()).await;
        assert_eq!(mode_of(&target), 0o600);
        // An explicit mode is exact: the umask does not apply to it.
        let other = dir.path().join("explicit");
        replace(&other, true, OpenOptions::new().mode(0o640)).await;
        assert_eq!(mode_of(&other), 0o640);
    });
}

#[tokio::test]
async fn an_existing_target_keeps_its_exact_mode() {
    for unnamed in TEMP_KINDS {
        for mode in [0o640, 0o600, 0o444, 0o755, 0o606] {
            let dir = scratch();
            let target = dir.path().join("t");
            std::fs::write(&target, b"old").unwrap();
            set_mode(&target, mode);
            let seen = replace(&target, unnamed, &mut OpenOptions::new()).await;
            assert_eq!(mode_of(&target), mode, "{mode:o}");
            for m in seen {
                assert_eq!(
                    m & !mode,
                    0,
                    "temp {m:o} readable wider than target {mode:o}"
                );
            }
        }
    }
}

/// A 0600 secret is never a 0644 temp, whatever the umask.
#[tokio::test]
async fn a_secret_is_never_readable_wider_while_writing() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("secret");
        std::fs::write(&target, b"old").unwrap();
        set_mode(&target, 0o600);
        let seen = replace(&target, unnamed, &mut OpenOptions::new()).await;
        assert_eq!(seen, vec![0o600]);
        assert_eq!(mode_of(&target), 0o600);
    }
}

#[tokio::test]
async fn setuid_setgid_and_sticky_bits_are_kept() {
    for unnamed in TEMP_KINDS {
        for mode in [0o4755, 0o2750, 0o1644, 0o6711] {
            let dir = scratch();
            let target = dir.path().join("t");
            std::fs::write(&target, b"old").unwrap();
            set_mode(&target, mode);
            let seen = replace(&target, unnamed, &mut OpenOptions::new()).await;
            assert_eq!(mode_of(&target), mode, "{mode:o}");
            for m in seen {
                assert_eq!(m & 0o7000, 0, "special bits only at commit, not {m:o}");
            }
        }
    }
}

#[tokio::test]
async fn mode_overrides_and_preserve_permissions_false_resets() {
    let dir = scratch();
    let target = dir.path().join("t");
    std::fs::write(&target, b"old").unwrap();
    set_mode(&target, 0o644);
    replace(&target, true, OpenOptions::new().mode(0o600)).await;
    assert_eq!(mode_of(&target), 0o600);
    replace(&target, false, OpenOptions::new().mode(0o666)).await;
    assert_eq!(mode_of(&target), 0o666, "exact, not masked by the umask");
    set_mode(&target, 0o600);
    replace(
        &target,
        true,
        OpenOptions::new().preserve_permissions(false),
    )
    .await;
    assert_eq!(mode_of(&target), 0o666 & !current_umask());
}

#[tokio::test]
async fn the_owner_is_kept_when_root() {
    if !require(is_root(), "root (to chown)") {
        return;
    }
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::chown(&target, Some(1234), Some(5678)).unwrap();
        set_mode(&target, 0o640);
        replace(&target, unnamed, &mut OpenOptions::new()).await;
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o640));
        // With preserve_owner(false) the writer's identity is used.
        replace(&target, unnamed, OpenOptions::new().preserve_owner(false)).await;
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }
}

/// Without the right to give a file away, the owner is best effort: the
/// commit succeeds and the file is the writer's.
#[test]
fn an_unprivileged_writer_commits_without_keeping_the_owner() {
    const NOBODY: u32 = 65534;
    if is_child() {
        let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let target = dir.join("t");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            for unnamed in TEMP_KINDS {
                replace(&target, unnamed, &mut OpenOptions::new()).await;
            }
        });
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (NOBODY, NOBODY, 0o644)
        );
        return;
    }
    if !require(is_root(), "root (to run a child as nobody)") {
        return;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o777);
    let target = dir.path().join("t");
    std::fs::write(&target, b"old").unwrap();
    set_mode(&target, 0o644);
    let dir_str = dir.path().to_str().unwrap();
    run_child(
        "an_unprivileged_writer_commits_without_keeping_the_owner",
        &[],
        &[("TAW_DIR", dir_str)],
        Some(NOBODY),
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"new content");
}
