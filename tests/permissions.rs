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
    let test = "an_unprivileged_writer_commits_without_keeping_the_owner";
    let Some((_dir, target)) = child_as_nobody_replaces_roots_file(test, 0o644) else {
        return;
    };
    assert_eq!(std::fs::read(&target).unwrap(), b"new content");
}

/// Runs the child half of `test` as nobody, `TAW_DIR` a fresh 0777
/// directory holding root's file `t` (`old`, `mode`); returns the
/// directory and `t`. `None` (a visible skip) without root.
fn child_as_nobody_replaces_roots_file(
    test: &str,
    mode: u32,
) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !require(is_root(), "root (to run a child as nobody)") {
        return None;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o777);
    let target = dir.path().join("t");
    std::fs::write(&target, b"old").unwrap();
    set_mode(&target, mode);
    let env = [("TAW_DIR", dir.path().to_str().unwrap())];
    run_child(test, &[], &env, Some(65534));
    Some((dir, target))
}

/// Issue #20: a read-only (0444) file, root's, is replaced by another user
/// who may write the directory: a rename needs write permission on the
/// directory alone, as the guarantees say. It keeps its mode.
#[test]
fn a_read_only_file_is_replaced_by_whoever_may_write_the_directory() {
    const NOBODY: u32 = 65534;
    let name = "a_read_only_file_is_replaced_by_whoever_may_write_the_directory";
    if is_child() {
        let target = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap()).join("t");
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .is_err(),
            "read-only to us"
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            tokio_atomic_write::write(&target, b"replaced")
                .await
                .unwrap();
        });
        return;
    }
    let Some((_dir, target)) = child_as_nobody_replaces_roots_file(name, 0o444) else {
        return;
    };
    assert_eq!(std::fs::read(&target).unwrap(), b"replaced");
    let m = std::fs::metadata(&target).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (NOBODY, 0o444));
}

/// Asking for a wider mode than the replaced file has: the temp file stays
/// within the replaced file's bits while it is written, and the final file
/// gets the mode asked for.
#[tokio::test]
async fn a_wider_final_mode_is_applied_only_at_commit() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let target = dir.path().join("secret");
        std::fs::write(&target, b"old").unwrap();
        set_mode(&target, 0o600);
        let seen = replace(&target, unnamed, OpenOptions::new().mode(0o644)).await;
        assert_eq!(seen, vec![0o600], "while writing");
        assert_eq!(mode_of(&target), 0o644);

        set_mode(&target, 0o600);
        let seen = replace(
            &target,
            unnamed,
            OpenOptions::new().preserve_permissions(false),
        )
        .await;
        assert_eq!(seen, vec![0o600 & !current_umask()], "while writing");
        assert_eq!(mode_of(&target), 0o666 & !current_umask());
    }
}

/// The owner is read from the file a symlink points to, not the link.
#[tokio::test]
async fn the_owner_is_read_through_a_symlink() {
    if !require(is_root(), "root (to chown)") {
        return;
    }
    let dir = scratch();
    let real = dir.path().join("real");
    std::fs::write(&real, b"old").unwrap();
    std::os::unix::fs::chown(&real, Some(1234), Some(5678)).unwrap();
    set_mode(&real, 0o604);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("real", &link).unwrap();
    replace(&link, true, &mut OpenOptions::new()).await;
    let m = std::fs::metadata(&real).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o604));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// The child half of the group tests: replaces `TAW_DIR/t` and checks the
/// temp file's mode while writing and the owner after.
fn child_replace_and_report() {
    let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let want_writing: u32 = u32::from_str_radix(&std::env::var("TAW_WRITING").unwrap(), 8).unwrap();
    let want_gid: u32 = std::env::var("TAW_GID").unwrap().parse().unwrap();
    let want_final: u32 = u32::from_str_radix(&std::env::var("TAW_FINAL").unwrap(), 8).unwrap();
    let unnamed = std::env::var_os("TAW_UNNAMED").is_some();
    let target = dir.join("t");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let seen = replace(&target, unnamed, &mut OpenOptions::new()).await;
        assert_eq!(seen, vec![want_writing], "mode while writing");
        let m = std::fs::metadata(&target).unwrap();
        let got = (m.uid(), m.gid(), m.mode() & 0o7777);
        assert_eq!(got, (65534, want_gid, want_final));
    });
}

/// Replaces a 0640 file owned by 1234:4242 as nobody, with or without
/// membership in group 4242, with each temp kind.
fn replace_as_nobody(test: &str, groups: &str, writing: &str, gid: &str, final_mode: &str) {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        set_mode(dir.path(), 0o777);
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::chown(&target, Some(1234), Some(4242)).unwrap();
        set_mode(&target, 0o640);
        let groups = format!("--groups={groups}");
        let dir_s = dir.path().to_str().unwrap();
        let mut env = vec![
            ("TAW_DIR", dir_s),
            ("TAW_WRITING", writing),
            ("TAW_GID", gid),
            ("TAW_FINAL", final_mode),
        ];
        if unnamed {
            env.push(("TAW_UNNAMED", "1"));
        }
        let setpriv = ["setpriv", "--reuid=65534", "--regid=65534", &groups, "--"];
        run_child(test, &setpriv, &env, None);
        assert_eq!(std::fs::read(&target).unwrap(), b"new content");
    }
}

/// Not root but in the file's group: the owner cannot be given away, the
/// group is kept.
#[test]
fn a_member_of_the_group_keeps_the_group() {
    if is_child() {
        return child_replace_and_report();
    }
    if require(is_root() && have("setpriv"), "root and setpriv") {
        replace_as_nobody(
            "a_member_of_the_group_keeps_the_group",
            "4242",
            "640",
            "4242",
            "640",
        );
    }
}

/// Neither owner nor group can be copied: while writing, the group bits
/// stay off (they would apply to the writer's group), and the final file
/// gives its group no more than others have (0640 becomes 0600): a group
/// that could never read the file does not get to (issue #17, point 5).
#[test]
fn an_outsider_writes_without_group_bits_until_commit() {
    if is_child() {
        return child_replace_and_report();
    }
    if require(is_root() && have("setpriv"), "root and setpriv") {
        replace_as_nobody(
            "an_outsider_writes_without_group_bits_until_commit",
            "65534",
            "600",
            "65534",
            "600",
        );
    }
}
