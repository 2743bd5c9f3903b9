//! Issue #4, "Sweep": `sweep` removes this crate's leftover temp files and
//! nothing else: never another name, a symlink or what it points to, a
//! directory, a file younger than asked, or one a live writer holds.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{sweep, Op};

const HOUR: Duration = Duration::from_secs(3600);

/// A file at `path` last modified `age` ago.
fn aged_file(path: &Path, age: Duration) {
    let f = std::fs::File::create(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

/// Marks a hand-made tree as the crate marks its temp trees.
fn mark(tree: &Path) {
    tokio_atomic_write::__private::mark_as_leftover(tree).unwrap();
}

/// A name the crate could have given a temp file for `target`.
fn leftover_name(target: &str, random: &str) -> String {
    let name = format!(".{target}.{random}.tmp");
    assert!(tokio_atomic_write::__private::is_temp_name(name.as_ref()));
    name
}

#[tokio::test]
async fn only_old_entries_with_the_temp_shape_are_removed() {
    let dir = scratch();
    let d = dir.path();
    let old = leftover_name("state.json", "AAAAAAAAAAAA");
    let young = leftover_name("state.json", "BBBBBBBBBBBB");
    aged_file(&d.join(&old), 2 * HOUR);
    aged_file(&d.join(&young), Duration::from_secs(60));
    // Old, but not ours: other names.
    let others = [
        "state.json",
        ".state.json.tmp",
        ".state.json.CCCCCCCCCCCC.tmp.bak",
        "state.json.DDDDDDDDDDDD.tmp",
        ".x.short.tmp",
    ];
    for n in others {
        aged_file(&d.join(n), 2 * HOUR);
    }
    // A directory with our shape is a temp tree (#5): this one is young.
    let dir_like = leftover_name("d", "EEEEEEEEEEEE");
    std::fs::create_dir(d.join(&dir_like)).unwrap();

    let report = sweep(d, HOUR).await.unwrap();
    assert_eq!(report.removed, vec![d.join(&old)]);
    assert_eq!(report.too_recent, vec![d.join(&dir_like), d.join(&young)]);
    assert!(
        report.in_use.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let mut expected: Vec<String> = others.iter().map(|s| s.to_string()).collect();
    expected.push(dir_like.clone());
    expected.push(young.clone());
    expected.sort();
    let left: Vec<String> = listing(d)
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    assert_eq!(left, expected);

    // With no age limit the young ones go too.
    let report = sweep(d, Duration::ZERO).await.unwrap();
    assert_eq!(report.removed, vec![d.join(&dir_like), d.join(&young)]);
}

/// Issue #5: leftover temp trees (a filler killed mid-build, or a replaced
/// tree not yet removed) are removed whole; a live `AsyncAtomicDir`'s tree
/// is in use whatever its age; links inside a tree, and a temp-shaped link
/// to a directory, are never followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_trees_are_removed_whole_and_live_ones_kept() {
    use tokio_atomic_write::AsyncAtomicDir;
    let dir = scratch();
    let d = dir.path();
    let outside = d.join("outside");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::fs::write(outside.join("deep/victim"), b"precious").unwrap();

    let left = leftover_name("key", "AAAAAAAAAAAA");
    std::fs::create_dir_all(d.join(&left).join("a/b")).unwrap();
    std::fs::write(d.join(&left).join("a/b/file"), b"x").unwrap();
    std::fs::write(d.join(&left).join("top"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, d.join(&left).join("a/link")).unwrap();
    mark(&d.join(&left));
    let link = leftover_name("key", "BBBBBBBBBBBB");
    std::os::unix::fs::symlink(&outside, d.join(&link)).unwrap();
    let live = AsyncAtomicDir::create(d.join("key")).await.unwrap();
    std::fs::write(live.path().join("data"), b"live").unwrap();

    let report = sweep(d, Duration::ZERO).await.unwrap();
    assert_eq!(report.removed, vec![d.join(&left)], "{report:?}");
    assert_eq!(report.in_use, vec![live.path().to_path_buf()]);
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(std::fs::read(live.path().join("data")).unwrap(), b"live");
    assert_eq!(
        std::fs::read(outside.join("deep/victim")).unwrap(),
        b"precious"
    );
    assert!(std::fs::symlink_metadata(d.join(&link))
        .unwrap()
        .file_type()
        .is_symlink());
    live.rollback().await.unwrap();
    let mut expected = vec![link, "outside".to_string()];
    expected.sort();
    let left: Vec<String> = listing(d)
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    assert_eq!(left, expected);
}

/// A symlink planted at a temp-shaped name is neither followed nor removed,
/// and its target is untouched, however old both are.
#[tokio::test]
async fn a_symlink_with_the_temp_shape_and_its_target_are_left_alone() {
    let dir = scratch();
    let d = dir.path();
    let victim = d.join("precious");
    std::fs::write(&victim, b"keep me").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(SystemTime::now() - 2 * HOUR)
        .unwrap();
    let link = d.join(leftover_name("precious", "FFFFFFFFFFFF"));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dangling = d.join(leftover_name("gone", "GGGGGGGGGGGG"));
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();

    let report = sweep(d, Duration::ZERO).await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

/// A temp file that a live writer holds open is never removed, even with no
/// age limit; once the writer is gone (its file dropped without commit
/// leaves nothing, so a stale copy stands in for a killed one), it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_writers_temp_file_is_in_use_whatever_its_age() {
    for unnamed in TEMP_KINDS {
        let dir = scratch();
        let d = dir.path();
        let target = d.join("t");
        std::fs::write(&target, b"old").unwrap();
        let mut file = open_kind(&target, unnamed, 16).await;
        file.write_all(b"more than sixteen bytes").await.unwrap();
        file.flush().await.unwrap();
        let names = temp_files(d);
        if unnamed {
            assert!(names.is_empty(), "O_TMPFILE: no name to sweep");
        } else {
            assert_eq!(names.len(), 1);
            let temp = d.join(&names[0]);
            std::fs::File::options()
                .write(true)
                .open(&temp)
                .unwrap()
                .set_modified(SystemTime::now() - 2 * HOUR)
                .unwrap();
            let report = sweep(d, Duration::ZERO).await.unwrap();
            assert_eq!(report.in_use, vec![temp.clone()], "{report:?}");
            assert!(report.removed.is_empty());
            assert!(temp.exists());
        }
        file.write_all(b" and the rest").await.unwrap();
        file.commit().await.unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"more than sixteen bytes and the rest"
        );
        assert_no_leftovers(d);
    }
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it() {
    let dir = scratch();
    let missing = dir.path().join("missing");
    let err = sweep(&missing, HOUR).await.unwrap_err();
    assert_eq!(err.op(), Op::OpenDir);
    assert_eq!(err.path(), missing);
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("missing"), "{err}");
}

/// An unremovable leftover (its directory not writable by the sweeper) is
/// reported with its path and the step; the sweep goes on.
#[test]
fn an_unremovable_leftover_is_reported_not_fatal() {
    if is_child() {
        let d = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let report = runtime().block_on(sweep(&d, Duration::ZERO)).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        let err = &report.failed[0];
        assert_eq!(err.op(), Op::Sweep);
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.path().ends_with(leftover_name("t", "HHHHHHHHHHHH")));
        return;
    }
    if !require(is_root(), "root (to sweep as another user)") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let left = d.join(leftover_name("t", "HHHHHHHHHHHH"));
    aged_file(&left, 2 * HOUR);
    // The sweeper's own leftover, in a directory it may not write.
    std::os::unix::fs::chown(&left, Some(65534), Some(65534)).unwrap();
    run_child(
        "an_unremovable_leftover_is_reported_not_fatal",
        &[],
        &[("TAW_DIR", d.to_str().unwrap())],
        Some(65534),
    );
    assert_eq!(temp_files(d).len(), 1);
}

/// A mount inside a leftover tree (here a bind mount of another directory
/// of the same filesystem, which the device number does not show) is never
/// entered: the sweep reports the tree as failed and what the mount shows
/// is untouched. Once it is unmounted, the tree goes.
#[tokio::test]
async fn a_mount_inside_a_leftover_tree_is_never_entered() {
    if !require(is_root(), "root for a bind mount") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let outside = d.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    let left = leftover_name("key", "AAAAAAAAAAAA");
    let mnt = d.join(&left).join("sub/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mark(&d.join(&left));
    assert!(run_ok(
        std::process::Command::new("mount")
            .arg("--bind")
            .arg(&outside)
            .arg(&mnt)
    ));
    let report = sweep(d, Duration::ZERO).await;
    let still_there = std::fs::read(outside.join("victim"));
    assert!(unmount(&mnt), "umount");
    let report = report.unwrap();
    assert_eq!(still_there.unwrap(), b"precious");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].op(), Op::Sweep);
    assert_eq!(report.failed[0].path(), d.join(&left));
    assert_eq!(report.failed[0].kind(), std::io::ErrorKind::ResourceBusy);
    let report = sweep(d, Duration::ZERO).await.unwrap();
    assert_eq!(report.removed, vec![d.join(&left)]);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
}

/// Trees moved aside by a fallback `Replace` (`.{name}.{random}.old`,
/// directories only): put back where the target is missing, removed where
/// it exists; a regular file of that shape is not the crate's, and stays.
#[tokio::test]
async fn aside_trees_are_put_back_or_removed_and_nothing_else() {
    let dir = scratch();
    let d = dir.path();
    let orphan = ".lost.AAAAAAAAAAAA.old";
    std::fs::create_dir_all(d.join(orphan).join("sub")).unwrap();
    std::fs::write(d.join(orphan).join("sub/data"), b"old tree").unwrap();
    mark(&d.join(orphan));
    let stale = ".kept.BBBBBBBBBBBB.old";
    std::fs::create_dir(d.join(stale)).unwrap();
    std::fs::write(d.join(stale).join("data"), b"older tree").unwrap();
    mark(&d.join(stale));
    std::fs::create_dir(d.join("kept")).unwrap();
    let backup = ".config.202401011200.old";
    std::fs::write(d.join(backup), b"a user's backup").unwrap();

    let report = sweep(d, Duration::ZERO).await.unwrap();
    assert_eq!(report.restored, vec![d.join("lost")], "{report:?}");
    assert_eq!(report.removed, vec![d.join(stale)], "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(std::fs::read(d.join("lost/sub/data")).unwrap(), b"old tree");
    assert_eq!(std::fs::read(d.join(backup)).unwrap(), b"a user's backup");
    let left: Vec<String> = listing(d)
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    assert_eq!(left, vec![backup.to_string(), "kept".into(), "lost".into()]);
}

/// Issue #18, point 2: a name alone decides nothing. A backup directory
/// named like an aside tree is neither removed (`site` exists) nor renamed
/// to its target (`db` missing); a tree without the crate's mark, renamed
/// to a temp name, is not removed (but an empty one: what a process killed
/// between its `mkdir` and its mark leaves); a file another user owns is
/// not removed. Each is in `not_ours`.
#[tokio::test]
async fn a_name_alone_is_not_enough() {
    if !require(is_root(), "root (to give a file away)") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    std::fs::create_dir(d.join("site")).unwrap();
    for backup in [".site.202401011200.old", ".db.202401011200.old"] {
        std::fs::create_dir(d.join(backup)).unwrap();
        std::fs::write(d.join(backup).join("data"), b"a user's backup").unwrap();
    }
    let renamed = leftover_name("data", "AAAAAAAAAAAA");
    std::fs::create_dir(d.join(&renamed)).unwrap();
    std::fs::write(d.join(&renamed).join("precious"), b"root's data").unwrap();
    let empty = leftover_name("killed", "BBBBBBBBBBBB");
    std::fs::create_dir(d.join(&empty)).unwrap();
    let empty_aside = ".gone.DDDDDDDDDDDD.old";
    std::fs::create_dir(d.join(empty_aside)).unwrap();
    std::fs::create_dir(d.join("gone")).unwrap();
    let theirs = leftover_name("theirs", "CCCCCCCCCCCC");
    aged_file(&d.join(&theirs), 2 * HOUR);
    std::os::unix::fs::chown(d.join(&theirs), Some(65534), Some(65534)).unwrap();

    let report = sweep(d, Duration::ZERO).await.unwrap();
    let mut removed = vec![d.join(&empty), d.join(empty_aside)];
    removed.sort();
    assert_eq!(report.removed, removed, "{report:?}");
    assert!(report.restored.is_empty(), "{report:?}");
    let mut not_ours = vec![
        d.join(".db.202401011200.old"),
        d.join(".site.202401011200.old"),
        d.join(&renamed),
        d.join(&theirs),
    ];
    not_ours.sort();
    assert_eq!(report.not_ours, not_ours, "{report:?}");
    assert!(!d.join("db").exists(), "not renamed to db");
    for backup in [".site.202401011200.old", ".db.202401011200.old"] {
        assert_eq!(
            std::fs::read(d.join(backup).join("data")).unwrap(),
            b"a user's backup"
        );
    }
    assert_eq!(
        std::fs::read(d.join(&renamed).join("precious")).unwrap(),
        b"root's data"
    );
}

/// Issue #18, point 2, the review's attack: in a group-writable directory
/// without the sticky bit, `nobody` (in the group) cannot remove root's
/// read-only tree `data`, but may rename it to a temp name. Root's sweep
/// then used to remove it all: a rename right became a delete right. Now
/// it is left alone (no mark), and says so.
#[test]
fn a_rename_right_does_not_become_a_delete_right() {
    const NAME: &str = "a_rename_right_does_not_become_a_delete_right";
    let disguise = leftover_name("data", "AAAAAAAAAAAA");
    if is_child() {
        let d = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        std::fs::remove_dir_all(d.join("data")).unwrap_err();
        std::fs::rename(d.join("data"), d.join(&disguise)).unwrap();
        return;
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = scratch();
    let d = dir.path();
    chown(d, Some(0), Some(4242)).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o770)).unwrap();
    let data = d.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("records"), b"root's records").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--groups=4242",
        "--",
    ];
    run_child(NAME, &setpriv, &[("TAW_DIR", d.to_str().unwrap())], None);

    let report = runtime().block_on(sweep(d, Duration::ZERO)).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.not_ours, vec![d.join(&disguise)], "{report:?}");
    assert_eq!(
        std::fs::read(d.join(&disguise).join("records")).unwrap(),
        b"root's records"
    );
}

/// A scratch directory others may enter (0755) holding an old leftover temp
/// file of root's that others may read (0644).
fn readable_leftover() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let left = dir.path().join(leftover_name("state", "AAAAAAAAAAAA"));
    aged_file(&left, 2 * HOUR);
    std::fs::set_permissions(&left, PermissionsExt::from_mode(0o644)).unwrap();
    (dir, left)
}

/// `nobody` running `flock --shared {flags} left sleep 60`, with no output.
fn lock_as_nobody(left: &Path, flags: &[&str]) -> std::process::Child {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["flock", "--shared"])
        .args(flags)
        .arg(left)
        .args(["sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Issue #18, point 5: another user who can open a leftover (a temp file
/// left readable) and holds a lock on it cannot keep it from `sweep`: only
/// a lock held by a process of the sweeping user counts.
#[test]
fn another_users_lock_does_not_keep_a_leftover() {
    if !require(
        is_root() && have("setpriv") && have("flock"),
        "root, setpriv and flock",
    ) {
        return;
    }
    let (dir, left) = readable_leftover();
    let d = dir.path();
    // `--no-fork`: the process killed below is the one holding the lock,
    // with no child left behind holding it (or this test's output).
    let mut holder = lock_as_nobody(&left, &["--no-fork"]);
    // Wait (bounded) until its lock is in /proc/locks.
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{} ", std::fs::metadata(&left).unwrap().ino());
    let locked = (0..2000).any(|_| {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let seen = locks
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains(&ino));
        if !seen {
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    });
    let report = runtime().block_on(sweep(d, Duration::ZERO));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(locked, "nobody's flock never took the lock");
    let report = report.unwrap();
    assert_eq!(report.removed, vec![left.clone()], "{report:?}");
    assert!(report.in_use.is_empty(), "{report:?}");
    assert!(!left.exists());
}

/// Issue #18, point 6: a mount inside a leftover tree is found by name,
/// with `statx` from cached attributes, before any `open` of it: a hung
/// filesystem mounted there (FUSE) could block that open for ever. strace
/// shows the sweep's `statx` of the mount point and no `openat` of it.
#[test]
fn a_mount_point_is_never_opened() {
    const NAME: &str = "a_mount_point_is_never_opened";
    if is_child() {
        let d = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let report = runtime().block_on(sweep(&d, Duration::ZERO)).unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].kind(), std::io::ErrorKind::ResourceBusy);
        return;
    }
    if !require(
        is_root() && have("strace"),
        "root (a bind mount) and strace",
    ) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let outside = d.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let left = leftover_name("key", "AAAAAAAAAAAA");
    let mnt = d.join(&left).join("sub/hung");
    std::fs::create_dir_all(&mnt).unwrap();
    mark(&d.join(&left));
    assert!(run_ok(
        std::process::Command::new("mount")
            .arg("--bind")
            .arg(&outside)
            .arg(&mnt)
    ));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("strace.log");
    let wrap = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=openat,statx",
        "-o",
        log.to_str().unwrap(),
    ];
    let ran = std::panic::catch_unwind(|| {
        run_child(NAME, &wrap, &[("TAW_DIR", d.to_str().unwrap())], None)
    });
    assert!(unmount(&mnt), "umount");
    ran.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let on_mount: Vec<&str> = text.lines().filter(|l| l.contains("\"hung\"")).collect();
    assert!(
        on_mount.iter().any(|l| l.contains("statx(")),
        "looked at by statx:\n{}",
        on_mount.join("\n")
    );
    assert!(
        !on_mount.iter().any(|l| l.contains("openat(")),
        "never opened:\n{}",
        on_mount.join("\n")
    );
}

/// Review of #18: a lock whose taker is gone (the descriptor kept by a
/// child it forked, here the command `flock` runs) is no live writer of
/// the sweeping user's, whoever holds it now.
#[test]
fn a_lock_whose_taker_is_gone_does_not_keep_a_leftover() {
    if !require(
        is_root() && have("setpriv") && have("flock"),
        "root, setpriv and flock",
    ) {
        return;
    }
    let (dir, left) = readable_leftover();
    let d = dir.path();
    let mut taker = lock_as_nobody(&left, &[]);
    let pid = taker.id();
    // Its child, `sleep`, holds the descriptor: found, then the taker killed.
    let children = format!("/proc/{pid}/task/{pid}/children");
    let mut keeper = None;
    for _ in 0..2000 {
        let found = std::fs::read_to_string(&children).unwrap_or_default();
        keeper = found
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok());
        if keeper.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let keeper = keeper.expect("flock ran its command");
    let _ = taker.kill();
    let _ = taker.wait();
    let ino = {
        use std::os::unix::fs::MetadataExt;
        format!(":{} ", std::fs::metadata(&left).unwrap().ino())
    };
    let locks: Vec<String> = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&ino))
        .map(str::to_string)
        .collect();
    let still_locked = locks.iter().any(|l| l.contains("FLOCK"));
    let report = runtime().block_on(sweep(d, Duration::ZERO));
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert!(still_locked, "the lock outlives its taker: {locks:?}");
    let report = report.unwrap();
    let seen = format!("{report:?}; taker {pid}, keeper {keeper}; locks {locks:?}");
    assert_eq!(report.removed, vec![left], "{seen}");
    assert!(report.in_use.is_empty(), "{seen}");
}
