//! Issue #23, item 3, "Write only if changed": `write_if_changed` answers
//! `Ok(false)` when the target holds exactly the bytes already, and then
//! leaves it alone (its inode, mtime and ctime, its directory's listing
//! and mtime); otherwise it writes as `write` does and answers `Ok(true)`.
//! The calls an unchanged answer makes are in tests/syscalls.rs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tokio_atomic_write::__private::pool_hops_from_this_thread;
use tokio_atomic_write::{Durability, Op, OpenOptions};

/// A time no write of this test makes: 2001-09-09.
fn old_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

/// Sets the mtime of `path` (a file or a directory) to [`old_time`].
fn make_old(path: &Path) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(old_time())
        .unwrap();
}

/// What an unchanged answer must leave as it was: the inode, the mtime,
/// the ctime (a chmod, chown or link would move it), the mode, the owner
/// and the bytes.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    owner: (u32, u32),
    bytes: Vec<u8>,
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::symlink_metadata(path).unwrap();
    Stamp {
        ino: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        mode: m.mode() & 0o7777,
        owner: (m.uid(), m.gid()),
        bytes: std::fs::read(path).unwrap(),
    }
}

/// The answer of `write_if_changed(path, contents)` with `opts`, checked
/// to leave `contents` at `path` either way.
async fn answer(opts: &OpenOptions, path: &Path, contents: &[u8]) -> bool {
    let changed = opts.write_if_changed(path, contents).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), contents, "after {changed}");
    changed
}

/// Point 1: the answer is about the bytes, whatever their sizes; a
/// difference in the last byte of a file of several compared chunks
/// counts as much as one in the first.
#[tokio::test]
async fn the_answer_says_whether_the_bytes_differed() {
    let dir = scratch();
    let path = dir.path().join("t");
    let opts = OpenOptions::new();
    assert!(answer(&opts, &path, b"hello").await, "a new file");
    assert!(!answer(&opts, &path, b"hello").await, "the same bytes");
    assert!(answer(&opts, &path, b"jello").await, "same size, one byte");
    assert!(answer(&opts, &path, b"hell").await, "shorter");
    assert!(answer(&opts, &path, b"hello world").await, "longer");
    assert!(answer(&opts, &path, b"").await, "empty over non-empty");
    assert!(!answer(&opts, &path, b"").await, "empty over empty");
    assert!(answer(&opts, &path, b"x").await, "non-empty over empty");

    // Several 64 KiB chunks and a tail: each chunk is compared.
    let big = version(1, 3 * 64 * 1024 + 17);
    assert!(answer(&opts, &path, &big).await);
    assert!(!answer(&opts, &path, &big).await, "the same big bytes");
    for at in [
        0,
        64 * 1024 - 1,
        64 * 1024,
        2 * 64 * 1024 + 5,
        big.len() - 1,
    ] {
        let mut other = big.clone();
        other[at] ^= 0x55;
        assert!(answer(&opts, &path, &other).await, "differs at {at}");
        assert!(answer(&opts, &path, &big).await, "back, from {at}");
    }
    // A prefix of the file, and the file with one byte more.
    assert!(answer(&opts, &path, &big[..big.len() - 1]).await);
    assert!(answer(&opts, &path, &big).await);
    let mut longer = big.clone();
    longer.push(0);
    assert!(answer(&opts, &path, &longer).await);
    assert_eq!(listing(dir.path()), ["t"]);
    assert_no_leftovers(dir.path());
}

/// Point 2: `Ok(false)` leaves the very file (inode), its mtime and ctime
/// to the nanosecond, and its directory (listing, mtime); `Ok(true)`
/// publishes a new inode, with a new mtime.
#[tokio::test]
async fn unchanged_keeps_the_inode_and_the_times() {
    for durability in [Durability::Full, Durability::None] {
        for unnamed in TEMP_KINDS {
            let dir = scratch();
            let path = dir.path().join("t");
            std::fs::write(&path, b"same").unwrap();
            make_old(&path);
            make_old(dir.path());
            let before = stamp(&path);
            assert_eq!(before.mtime, (1_000_000_000, 0));
            let dir_mtime = std::fs::metadata(dir.path()).unwrap().modified().unwrap();

            let mut opts = OpenOptions::new();
            opts.durability(durability).unnamed_temp(unnamed);
            let case = format!("{durability:?}, unnamed {unnamed}");
            assert!(!answer(&opts, &path, b"same").await, "{case}");
            assert_eq!(stamp(&path), before, "{case}: the target untouched");
            let dir_after = std::fs::metadata(dir.path()).unwrap().modified().unwrap();
            assert_eq!(dir_after, dir_mtime, "{case}: nothing made in the dir");
            assert_eq!(listing(dir.path()), ["t"], "{case}");

            assert!(answer(&opts, &path, b"diff").await, "{case}");
            let after = stamp(&path);
            assert_ne!(after.ino, before.ino, "{case}: a new file published");
            assert_ne!(after.mtime, before.mtime, "{case}");
            assert_eq!(listing(dir.path()), ["t"], "{case}");
            assert_no_leftovers(dir.path());
        }
    }
}

/// Point 8: either answer, and an error, is one trip to the blocking pool.
#[tokio::test(flavor = "current_thread")]
async fn each_answer_is_one_pool_hop() {
    let dir = scratch();
    let path = dir.path().join("t");
    let hop = pool_hops_from_this_thread;
    for (contents, want) in [(&b"a"[..], true), (b"a", false), (b"bb", true)] {
        let h0 = hop();
        let got = tokio_atomic_write::write_if_changed(&path, contents)
            .await
            .unwrap();
        assert_eq!((got, hop() - h0), (want, 1), "{contents:?}");
    }
    let h0 = hop();
    let err = tokio_atomic_write::write_if_changed(dir.path(), b"a")
        .await
        .unwrap_err();
    assert_eq!((err.op(), hop() - h0), (Op::Open, 1), "{err}");
}

/// The rounds of the race, scaled by `TAW_RACE_ROUNDS`.
fn race_rounds() -> u32 {
    std::env::var("TAW_RACE_ROUNDS").map_or(300, |v| v.parse().unwrap())
}

/// Point 4: `write_if_changed(A)` racing `write(B)` on one file, the two
/// started together on a barrier, from each starting state (nothing, A,
/// B), with A and B of one size (compared byte by byte) or of two.
///
/// No timing is assumed; only A's own call ever writes A, so:
/// - the file ends as A or as B, whole, and no temp file is left;
/// - starting from nothing or from B, A was never there to compare equal
///   to: the answer is `Ok(true)`;
/// - starting from A, `Ok(false)` means A was compared before B's write
///   published, so the file ends as B; `Ok(true)` means B was there when
///   compared, so A's write published after B's: the file ends as A.
#[test]
fn a_racing_write_ends_whole_and_the_answer_agrees_with_it() {
    let rt = runtime();
    let dir = scratch();
    let path = dir.path().join("t");
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..race_rounds() {
        let b_len = match round % 2 {
            0 => 1000,
            _ => 1500,
        };
        let (a, b) = (tagged_version(1, 1000), tagged_version(2, b_len));
        let start = ["nothing", "A", "B"][(round / 2 % 3) as usize];
        match start {
            "A" => std::fs::write(&path, &a).unwrap(),
            "B" => std::fs::write(&path, &b).unwrap(),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let (changed, ()) = rt.block_on(async {
            let (p, bar, a) = (path.clone(), barrier.clone(), a.clone());
            let if_changed = tokio::spawn(async move {
                bar.wait().await;
                tokio_atomic_write::write_if_changed(&p, a).await.unwrap()
            });
            let (p, bar, b) = (path.clone(), barrier.clone(), b.clone());
            let write = tokio::spawn(async move {
                bar.wait().await;
                tokio_atomic_write::write(&p, b).await.unwrap()
            });
            (if_changed.await.unwrap(), write.await.unwrap())
        });
        let end = std::fs::read(&path).unwrap();
        let end = match check_tagged(&end) {
            Some(1) if end == a => "A",
            Some(2) if end == b => "B",
            other => panic!("round {round}: torn or foreign content ({other:?})"),
        };
        assert_no_leftovers(dir.path());
        assert_eq!(listing(dir.path()), ["t"], "round {round}");
        match (start, changed) {
            ("A", false) => assert_eq!(end, "B", "round {round}: unchanged, then B"),
            ("A", true) => assert_eq!(end, "A", "round {round}: B, then A again"),
            (_, changed) => assert!(changed, "round {round}: A was never there"),
        }
        *outcomes.entry((start, changed, end)).or_insert(0u32) += 1;
    }
    // Which interleavings happened is the scheduler's affair: printed, not
    // asserted.
    eprintln!("(start, answer, end): rounds = {outcomes:?}");
}

/// Point 5: without `mode()` the mode is not compared, nor touched; with
/// it, another mode (setuid and sticky bits included) is a change, and
/// the write gives the file that mode.
#[tokio::test]
async fn the_mode_counts_only_when_set() {
    let dir = scratch();
    let path = dir.path().join("t");
    std::fs::write(&path, b"same").unwrap();
    set_mode(&path, 0o640);
    make_old(&path);
    let before = stamp(&path);

    assert!(!answer(&OpenOptions::new(), &path, b"same").await);
    assert_eq!(stamp(&path), before, "mode 0o640 kept, nothing done");

    let mut same_mode = OpenOptions::new();
    same_mode.mode(0o640);
    assert!(!answer(&same_mode, &path, b"same").await);
    assert_eq!(stamp(&path), before, "mode() equal: unchanged");

    let mut other = OpenOptions::new();
    other.mode(0o600);
    assert!(answer(&other, &path, b"same").await, "0o640 -> 0o600");
    assert_eq!(mode_of(&path), 0o600);
    assert!(!answer(&other, &path, b"same").await, "now it has it");

    // The bits above 0o777 are compared too.
    for (mode, from) in [(0o4700, 0o700), (0o1600, 0o600), (0o2750, 0o750)] {
        set_mode(&path, from);
        let mut special = OpenOptions::new();
        special.mode(mode);
        assert!(
            answer(&special, &path, b"same").await,
            "{from:o} -> {mode:o}"
        );
        assert_eq!(mode_of(&path), mode);
        assert!(!answer(&special, &path, b"same").await, "{mode:o} kept");
    }
    assert_no_leftovers(dir.path());
}

/// Point 5, the owner: never compared, with or without `mode()`, and left
/// as it is by `Ok(false)` (root, to give the file away).
#[tokio::test]
async fn the_owner_is_never_compared() {
    if !require(is_root(), "root (to chown the target)") {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("t");
    std::fs::write(&path, b"same").unwrap();
    set_mode(&path, 0o644);
    std::os::unix::fs::chown(&path, Some(1234), Some(4242)).unwrap();
    let before = stamp(&path);
    assert_eq!(before.owner, (1234, 4242));
    let mut with_mode = OpenOptions::new();
    with_mode.mode(0o644);
    for opts in [&OpenOptions::new(), &with_mode] {
        assert!(!answer(opts, &path, b"same").await);
        assert_eq!(stamp(&path), before, "not root's, and left so");
    }
}

/// Point 6: a symlink is followed as a write follows it (the file it names
/// compared, the link kept); with `follow_symlinks(false)` a link is never
/// unchanged: it is replaced by a file, and the file it named is left.
#[tokio::test]
async fn a_symlink_is_compared_as_write_would_follow_it() {
    let dir = scratch();
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    std::fs::write(&real, b"same").unwrap();
    make_old(&real);
    std::os::unix::fs::symlink("real", &link).unwrap();
    let real_before = stamp(&real);

    assert!(!answer(&OpenOptions::new(), &link, b"same").await);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(stamp(&real), real_before, "the linked file untouched");

    assert!(answer(&OpenOptions::new(), &link, b"new").await);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"new", "written through");

    std::fs::write(&real, b"same").unwrap();
    let real_before = stamp(&real);
    let mut no_follow = OpenOptions::new();
    no_follow.follow_symlinks(false);
    assert!(answer(&no_follow, &link, b"same").await, "a link differs");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(stamp(&real), real_before, "the file it named untouched");
    assert!(!answer(&no_follow, &link, b"same").await, "a file now");
    assert_no_leftovers(dir.path());
}

/// The error, checked to name `path` and `op` with `kind`.
#[track_caller]
fn assert_error(err: &tokio_atomic_write::Error, op: Op, kind: std::io::ErrorKind, path: &Path) {
    assert_eq!(
        (err.op(), err.kind(), err.path()),
        (op, kind, path),
        "{err}"
    );
}

/// A bound on a call that must not block on a FIFO: a watchdog that turns
/// a hang into a failure, never a timing assertion (the call makes a few
/// system calls).
const FIFO_WATCHDOG: Duration = Duration::from_secs(60);

/// Point 7: what `write` refuses, this refuses the same way, never with
/// `Ok(false)`, and nothing changes: a directory, a FIFO (without
/// blocking on it), a missing directory, a path naming no file.
#[tokio::test]
async fn bad_input_fails_as_write_fails_and_changes_nothing() {
    use std::io::ErrorKind;
    let dir = scratch();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let missing = dir.path().join("missing").join("t");
    let before = listing(dir.path());
    let opts = OpenOptions::new();

    let err = opts.write_if_changed(&sub, b"").await.unwrap_err();
    assert_error(&err, Op::Open, ErrorKind::IsADirectory, &sub);
    let err = match tokio::time::timeout(FIFO_WATCHDOG, opts.write_if_changed(&fifo, b"")).await {
        Ok(result) => result.unwrap_err(),
        Err(_) => {
            // Lets the open blocked on the pool end, so that the runtime
            // can shut down and the test fail instead of hang.
            use std::os::unix::fs::OpenOptionsExt;
            let writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&fifo);
            panic!("blocked opening the FIFO (unblocked: {writer:?})");
        }
    };
    assert_error(&err, Op::Open, ErrorKind::InvalidInput, &fifo);
    let err = opts.write_if_changed(&missing, b"x").await.unwrap_err();
    assert_error(
        &err,
        Op::OpenDir,
        ErrorKind::NotFound,
        missing.parent().unwrap(),
    );
    let err = opts.write_if_changed("", b"x").await.unwrap_err();
    assert_error(&err, Op::Open, ErrorKind::InvalidInput, Path::new(""));
    let err = opts
        .write_if_changed(dir.path().join("a/.."), b"x")
        .await
        .unwrap_err();
    assert_eq!((err.op(), err.kind()), (Op::Open, ErrorKind::InvalidInput));

    assert_eq!(listing(dir.path()), before);
    assert!(
        std::fs::read_dir(&sub).unwrap().next().is_none(),
        "sub empty"
    );
    assert_no_leftovers(dir.path());
}

/// Point 7: with `overwrite(false)` an existing target holding these bytes
/// is `Ok(false)`, one holding others `AlreadyExists` at [`Op::Open`] (as
/// `write` fails), untouched; a missing one is created.
#[tokio::test]
async fn no_clobber_answers_unchanged_or_refuses() {
    let dir = scratch();
    let path = dir.path().join("t");
    let mut opts = OpenOptions::new();
    opts.overwrite(false);
    assert!(answer(&opts, &path, b"first").await, "created");
    make_old(&path);
    let before = stamp(&path);
    assert!(!answer(&opts, &path, b"first").await);
    assert_eq!(stamp(&path), before);
    for other in [&b"other"[..], b"longer bytes", b""] {
        let err = opts.write_if_changed(&path, other).await.unwrap_err();
        assert_error(&err, Op::Open, std::io::ErrorKind::AlreadyExists, &path);
        assert_eq!(stamp(&path), before, "{other:?}: untouched");
    }
    // A symlink not followed is an entry too: never unchanged, so refused.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("t", &link).unwrap();
    opts.follow_symlinks(false);
    let err = opts.write_if_changed(&link, b"first").await.unwrap_err();
    assert_error(&err, Op::Open, std::io::ErrorKind::AlreadyExists, &link);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_no_leftovers(dir.path());
}

/// Point 7: an entry the sticky-directory rule forbids replacing is
/// refused as `write` refuses it, even when it holds these bytes: the
/// check comes before any read (root, to own the file as another user).
#[tokio::test]
async fn a_protected_entry_is_refused_even_when_unchanged() {
    if !require(is_root(), "root (to make another user's file)") {
        return;
    }
    let dir = scratch();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(4321), Some(4321)).unwrap();
    set_mode(&shared, 0o1777);
    let path = shared.join("t");
    std::fs::write(&path, b"same").unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(1234)).unwrap();
    let before = stamp(&path);
    for contents in [&b"same"[..], b"other"] {
        let err = tokio_atomic_write::write_if_changed(&path, contents)
            .await
            .unwrap_err();
        assert_error(&err, Op::Open, std::io::ErrorKind::PermissionDenied, &path);
        let err = tokio_atomic_write::write(&path, contents)
            .await
            .unwrap_err();
        assert_error(&err, Op::Open, std::io::ErrorKind::PermissionDenied, &path);
    }
    assert_eq!(stamp(&path), before);
    assert_eq!(listing(&shared), ["t"]);
}

const NOBODY: u32 = 65534;

/// Point 7: a target the caller may replace (the directory is writable)
/// but not read is [`Op::Read`], `PermissionDenied`: it cannot be
/// compared, and is not written blind. Run as nobody on root's 0600 file
/// in a 0777 directory; the child checks the error, the parent that
/// nothing changed.
#[test]
fn an_unreadable_target_fails_to_read_and_stays() {
    let name = "an_unreadable_target_fails_to_read_and_stays";
    if is_child() {
        let dir = PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let path = dir.join("t");
        assert_eq!(rustix::process::geteuid().as_raw(), NOBODY);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for contents in [&b"secret"[..], b"other"] {
            let err = rt
                .block_on(tokio_atomic_write::write_if_changed(&path, contents))
                .unwrap_err();
            assert_error(&err, Op::Read, std::io::ErrorKind::PermissionDenied, &path);
        }
        return;
    }
    if !require(is_root(), "root (to run a child as nobody)") {
        return;
    }
    let dir = scratch();
    set_mode(dir.path(), 0o777);
    let path = dir.path().join("t");
    std::fs::write(&path, b"secret").unwrap();
    set_mode(&path, 0o600);
    make_old(&path);
    make_old(dir.path());
    let before = stamp(&path);
    let dir_mtime = std::fs::metadata(dir.path()).unwrap().modified().unwrap();
    let env = [("TAW_DIR", dir.path().to_str().unwrap())];
    run_child(name, &[], &env, Some(NOBODY));
    assert_eq!(stamp(&path), before);
    assert_eq!(listing(dir.path()), ["t"]);
    let dir_after = std::fs::metadata(dir.path()).unwrap().modified().unwrap();
    assert_eq!(dir_after, dir_mtime, "nothing made in the directory");
}

/// Sets the mode of `path`.
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
