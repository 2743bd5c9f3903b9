//! Issue #18, points 3 and 4: an atomic directory's temp tree is owner-only
//! while it is built, whatever the final mode and the umask, and a
//! `Replace` keeps the replaced directory's group, or gives the group no
//! more than others have when it cannot; as root and as `nobody`.

mod common;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use tokio_atomic_write::{AsyncAtomicDir, Exists};

const NOBODY: u32 = 65534;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The child half: builds a tree for `TAW_TARGET` (with `TAW_MODE` if set)
/// and checks it is `TAW_WHILE` (octal) while built; then, when
/// `TAW_PEEK` is set, has `nobody` (a child of the child) try to list it;
/// then commits it with `Replace`.
fn child_build() {
    let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
    let want: u32 = u32::from_str_radix(&std::env::var("TAW_WHILE").unwrap(), 8).unwrap();
    let mode = std::env::var("TAW_MODE")
        .ok()
        .map(|m| u32::from_str_radix(&m, 8).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = AsyncAtomicDir::options();
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let tree = options.create(&target).await.unwrap();
        std::fs::write(tree.path().join("data"), b"root's").unwrap();
        assert_eq!(mode_of(tree.path()), want, "while built");
        if std::env::var_os("TAW_PEEK").is_some() {
            let peek = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["ls", "-a"])
                .arg(tree.path())
                .output()
                .unwrap();
            assert!(!peek.status.success(), "nobody listed the temp tree");
            let said = String::from_utf8_lossy(&peek.stderr);
            assert!(said.contains("Permission denied"), "{said}");
        }
        tree.commit(Exists::Replace).await.unwrap();
    });
}

fn build(test: &str, umask: &str, target: &Path, mode: Option<&str>, while_built: &str) {
    let script = format!("umask {umask}; exec \"$0\" \"$@\"");
    let mut env = vec![
        ("TAW_TARGET", target.to_str().unwrap()),
        ("TAW_WHILE", while_built),
        ("TAW_PEEK", "1"),
    ];
    if let Some(mode) = mode {
        env.push(("TAW_MODE", mode));
    }
    run_child(test, &["sh", "-c", &script], &env, None);
}

/// The temp tree is 0700 while it is built (plus the sticky bit when the
/// final mode has it), with a permissive umask and a world-writable final
/// mode: before, it was `drwxrwxrwx` while filled, and another user could
/// replace root's files inside. The final mode comes at commit.
#[test]
fn the_temp_tree_is_owner_only_until_commit() {
    const NAME: &str = "the_temp_tree_is_owner_only_until_commit";
    if is_child() {
        return child_build();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o755);
    let sticky = dir.path().join("sticky");
    build(NAME, "000", &sticky, Some("1777"), "1700");
    assert_eq!(mode_of(&sticky), 0o1777);
    // A replaced 1777 directory, mode not given: the same.
    build(NAME, "000", &sticky, None, "1700");
    assert_eq!(mode_of(&sticky), 0o1777);
    // The default, under umask 002 and 022.
    for (umask, fin) in [("002", 0o775), ("022", 0o755)] {
        let plain = dir.path().join(format!("plain{umask}"));
        build(NAME, umask, &plain, None, "700");
        assert_eq!(mode_of(&plain), fin, "umask {umask}");
        assert_eq!(std::fs::read(plain.join("data")).unwrap(), b"root's");
    }
}

/// The child half of the group tests: replaces `TAW_TARGET`.
fn child_replace() {
    let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let tree = AsyncAtomicDir::create(&target).await.unwrap();
        std::fs::write(tree.path().join("new"), b"new").unwrap();
        // While built, the tree is the writer's alone: given the replaced
        // directory's owner only at commit.
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(owner_and_mode(tree.path()).0, me, "owner while built");
        assert_eq!(owner_and_mode(tree.path()).2, 0o700, "mode while built");
        tree.commit(Exists::Replace).await.unwrap();
    });
}

/// A `nobody:4242 0750` directory, replaced by root, by `nobody` in group
/// 4242, and by `nobody` outside it: the group is kept where it can be;
/// otherwise the group bits are cut to what others have (none), so that
/// `nobody`'s own group does not get to read a tree meant for 4242.
#[test]
fn replace_keeps_the_group_or_its_bits_go() {
    const NAME: &str = "replace_keeps_the_group_or_its_bits_go";
    if is_child() {
        return child_replace();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o777);
    // Who replaces it (`None`: root; else nobody with these groups), and
    // the owner, group and mode it then has.
    type Case<'a> = (Option<&'a str>, (u32, u32, u32));
    let cases: [Case; 3] = [
        (None, (NOBODY, 4242, 0o750)),
        (Some("4242"), (NOBODY, 4242, 0o750)),
        (Some("65534"), (NOBODY, NOBODY, 0o700)),
    ];
    for (i, (groups, want)) in cases.into_iter().enumerate() {
        let target = dir.path().join(format!("t{i}"));
        std::fs::create_dir(&target).unwrap();
        chown(&target, Some(NOBODY), Some(4242)).unwrap();
        set_mode(&target, 0o750);
        let env = [("TAW_TARGET", target.to_str().unwrap())];
        match groups {
            None => run_child(NAME, &[], &env, None),
            Some(groups) => {
                let groups = format!("--groups={groups}");
                let setpriv = ["setpriv", "--reuid=65534", "--regid=65534", &groups, "--"];
                run_child(NAME, &setpriv, &env, None)
            }
        };
        assert_eq!(owner_and_mode(&target), want, "replaced by {groups:?}");
        assert_eq!(std::fs::read(target.join("new")).unwrap(), b"new");
    }
}
