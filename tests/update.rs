//! Issue #6, "Read-modify-write": `update` loses no change to a concurrent
//! update, in tasks or in processes, and changes nothing on bad input.

mod common;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_atomic_write::{update, Error, Op, OpenOptions};

const PROCESSES: u32 = 8;
const TASKS_PER_PROCESS: u32 = 4;
const INCREMENTS_PER_PROCESS: u32 = 200;

/// Adds one to the decimal counter in `old` (none yet: 0).
fn increment(old: Option<Vec<u8>>) -> Result<Vec<u8>, Error> {
    let n: u64 = match old {
        Some(bytes) => String::from_utf8(bytes).unwrap().trim().parse().unwrap(),
        None => 0,
    };
    Ok(format!("{}\n", n + 1).into_bytes())
}

fn counter(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Entries of `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<OsString> {
    listing(dir)
        .into_iter()
        .filter(|n| !keep.iter().any(|k| n == k))
        .collect()
}

/// 8 processes, each with 4 tasks, make 200 increments each: the counter
/// ends at exactly 1,600, and only the counter and its lock file remain.
#[test]
fn eight_processes_times_two_hundred_increments_end_at_1600() {
    const NAME: &str = "eight_processes_times_two_hundred_increments_end_at_1600";
    if is_child() {
        return child_increments();
    }
    let dir = scratch();
    let path = dir.path().join("counter");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            child_command(NAME, &[])
                .env("TAW_TARGET", &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every child is reaped before any assertion, so none outlives a failure.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in outputs {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("taw:done 200"), "{said}");
    }
    assert_eq!(
        counter(&path),
        u64::from(PROCESSES * INCREMENTS_PER_PROCESS)
    );
    assert_eq!(
        others(dir.path(), &["counter", ".counter.lock"]),
        Vec::<OsString>::new()
    );
}

fn child_increments() {
    let path = PathBuf::from(std::env::var_os("TAW_TARGET").unwrap());
    let per_task = INCREMENTS_PER_PROCESS / TASKS_PER_PROCESS;
    let done = runtime().block_on(async move {
        let tasks: Vec<_> = (0..TASKS_PER_PROCESS)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        update(&path, increment).await.unwrap();
                    }
                    per_task
                })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        done
    });
    println!("taw:done {done}");
}

/// Without the lock file, updates in one process still take turns: 16
/// tasks x 50 increments end at 800, and no lock file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_file_tasks_of_one_process_still_take_turns() {
    let dir = scratch();
    let path = dir.path().join("counter");
    let mut opts = OpenOptions::new();
    opts.lock_file(false);
    let opts = Arc::new(opts);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (opts, path) = (opts.clone(), path.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    opts.update(&path, increment).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter(&path), 800);
    assert_eq!(others(dir.path(), &["counter"]), Vec::<OsString>::new());
}

/// Holds the exclusive `flock` of `path` (as another process would) until
/// dropped.
fn hold_lock(path: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    file
}

/// Fails the test after 60 s: an update that never ends is a leaked lock or
/// turn, and must not hang the suite.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done after 60 s"))
}

/// Sees the tries of `lock` that failed. `update` never blocks in `flock`
/// (a blocked pool thread could not be given back when the update is
/// dropped): it opens the lock file, tries the lock without waiting, and
/// closes it at once when another holder has it. inotify reports that
/// close (`IN_CLOSE_NOWRITE`: the file is opened read-only); the holder's
/// own descriptor, opened for writing before the watch, is never closed
/// while it is watched.
struct FailedTries(std::os::fd::OwnedFd);

impl FailedTries {
    fn watch(lock: &Path) -> FailedTries {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(&fd, lock, inotify::WatchFlags::CLOSE_NOWRITE).unwrap();
        FailedTries(fd)
    }

    /// Waits (up to 60 s) for the next failed try.
    async fn next(&self) {
        use std::mem::MaybeUninit;
        within("waiting for a failed try of the lock", async {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
            loop {
                let mut reader = rustix::fs::inotify::Reader::new(&self.0, &mut buf);
                match reader.next() {
                    Ok(_) => return,
                    Err(rustix::io::Errno::AGAIN) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => panic!("inotify: {e}"),
                }
            }
        })
        .await
    }
}

/// While another process holds the lock, an update does not read the
/// file: it sees what that process wrote before letting go. With
/// `lock_file(false)` it does not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_waits_for_the_lock_held_by_another_process() {
    let dir = scratch();
    let path = dir.path().join("counter");
    std::fs::write(&path, "10\n").unwrap();
    let lock = dir.path().join(".counter.lock");
    let held = hold_lock(&lock);

    // Not waiting for the lock: done while it is held. (Before the other
    // update starts: in the process, updates of one path take turns
    // whatever their options, so this one would wait for that one.)
    let mut opts = OpenOptions::new();
    opts.lock_file(false);
    within(
        "an update without the lock file (it must not wait for it)",
        opts.update(&path, increment),
    )
    .await
    .unwrap();
    assert_eq!(counter(&path), 11);

    let tries = FailedTries::watch(&lock);
    let p = path.clone();
    let waiting = tokio::spawn(async move { update(&p, increment).await });
    // It tried the lock, did not get it, and has not read the file.
    tries.next().await;
    assert!(!waiting.is_finished());
    // The holder's own write, made under the lock.
    tokio_atomic_write::write(&path, "100\n").await.unwrap();
    drop(held);
    within("the update after the lock was let go", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counter(&path),
        101,
        "the update read after the lock was let go"
    );
}

#[derive(Debug, PartialEq)]
enum AppError {
    Refused,
    Io(io::ErrorKind, Op),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Io(e.kind(), e.op())
    }
}

/// An error from `f` is returned as is; the file stays as it was and no
/// temp file is left. `f` may borrow the caller's state.
#[tokio::test]
async fn an_error_from_f_changes_nothing_and_is_returned_as_is() {
    let dir = scratch();
    let path = dir.path().join("state");
    std::fs::write(&path, "old").unwrap();
    let mut seen = None;
    let err = update(&path, |old| {
        seen = old;
        Err(AppError::Refused)
    })
    .await
    .unwrap_err();
    assert_eq!(err, AppError::Refused);
    assert_eq!(seen.as_deref(), Some(&b"old"[..]));
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(
        others(dir.path(), &["state", ".state.lock"]),
        Vec::<OsString>::new()
    );
    // A missing file is `None`; the update creates it.
    let fresh = dir.path().join("fresh");
    update(&fresh, |old| {
        assert_eq!(old, None);
        Ok::<_, Error>(b"new".to_vec())
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
}

/// Bad targets fail with the step and the path, before `f` runs, and
/// nothing on disk changes: no lock file, no temp file.
#[tokio::test]
async fn bad_targets_fail_naming_the_path_and_change_nothing() {
    let dir = scratch();
    let sub = dir.path().join("a_dir");
    std::fs::create_dir(&sub).unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let missing = dir.path().join("missing").join("file");
    let cases: [(&Path, Op, &Path); 3] = [
        (&sub, Op::Open, &sub),
        (&fifo, Op::Open, &fifo),
        (&missing, Op::OpenDir, missing.parent().unwrap()),
    ];
    let before = listing(dir.path());
    for (target, op, named) in cases {
        let err = update(target, |_| -> Result<Vec<u8>, Error> {
            panic!("f must not run for {target:?}")
        })
        .await
        .unwrap_err();
        assert_eq!(err.op(), op, "{target:?}: {err}");
        assert_eq!(err.path(), named, "{target:?}: {err}");
        assert!(err.to_string().contains(&*named.to_string_lossy()), "{err}");
        assert_eq!(
            listing(dir.path()),
            before,
            "{target:?} changed the directory"
        );
    }
}

/// A symlink planted at the lock file's name is neither followed nor
/// removed: the update fails with `Op::Lock` naming the lock file, and the
/// file the link points to is not created.
#[tokio::test]
async fn a_link_planted_at_the_lock_name_is_not_followed() {
    let dir = scratch();
    let path = dir.path().join("state");
    std::fs::write(&path, "old").unwrap();
    let planted = dir.path().join(".state.lock");
    let victim = dir.path().join("victim");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let err = update(&path, |_| Ok::<_, Error>(b"new".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.op(), Op::Lock, "{err}");
    assert_eq!(err.path(), planted);
    assert!(!victim.exists(), "the link was followed");
    assert!(std::fs::symlink_metadata(&planted).unwrap().is_symlink());
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
}

/// A FIFO (or a directory) planted at the lock file's name is refused
/// without blocking on it, with `Op::Lock` naming it, and kept.
#[tokio::test]
async fn a_fifo_or_directory_at_the_lock_name_is_refused_without_blocking() {
    let dir = scratch();
    let path = dir.path().join("state");
    std::fs::write(&path, "old").unwrap();
    let planted = dir.path().join(".state.lock");
    for kind in ["fifo", "directory"] {
        match kind {
            "fifo" => make_fifo(&planted),
            _ => std::fs::create_dir(&planted).unwrap(),
        }
        let err = within(
            "an update with a FIFO at the lock name",
            update(&path, |_| -> Result<Vec<u8>, Error> {
                panic!("f must not run with a {kind} at the lock name")
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(err.op(), Op::Lock, "{kind}: {err}");
        assert_eq!(err.path(), planted, "{kind}: {err}");
        let meta = std::fs::symlink_metadata(&planted).unwrap();
        assert!(!meta.is_file(), "{kind} was replaced");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(
            others(dir.path(), &["state", ".state.lock"]),
            Vec::<OsString>::new()
        );
        match kind {
            "fifo" => std::fs::remove_file(&planted).unwrap(),
            _ => std::fs::remove_dir(&planted).unwrap(),
        }
    }
}

/// The lock file sits beside the file a symlink finally names (so every
/// path to one file shares it), is never readable wider than the target,
/// and the link itself is kept.
#[tokio::test]
async fn the_lock_file_sits_beside_the_file_replaced_no_wider_than_it() {
    let dir = scratch();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("secret");
    std::fs::write(&real, "1\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("real/secret", &link).unwrap();
    update(&link, increment).await.unwrap();
    update(&real, increment).await.unwrap();
    assert_eq!(counter(&real), 3);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let lock = real_dir.join(".secret.lock");
    assert_eq!(mode_of(&lock), 0o600);
    assert_eq!(mode_of(&real), 0o600);
    assert!(!dir.path().join(".link.lock").exists());
    // A new file made 0600 by the options: its lock is no wider.
    let mut opts = OpenOptions::new();
    opts.mode(0o600);
    let fresh = dir.path().join("fresh");
    opts.update(&fresh, increment).await.unwrap();
    assert_eq!(mode_of(&fresh), 0o600);
    assert_eq!(mode_of(&dir.path().join(".fresh.lock")), 0o600);
}

/// Dropping an update that waits for its turn changes nothing, and lets
/// the next one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_update_gives_up_its_turn() {
    let dir = scratch();
    let path = dir.path().join("counter");
    std::fs::write(&path, "5\n").unwrap();
    let lock = dir.path().join(".counter.lock");
    let held = hold_lock(&lock);
    let tries = FailedTries::watch(&lock);
    let p = path.clone();
    let first = tokio::spawn(async move { update(&p, increment).await });
    tries.next().await;
    let p = path.clone();
    let second = tokio::spawn(async move { update(&p, increment).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `second` waits for its turn behind `first`, which waits for the lock.
    // (Had it not reached the turn yet, the abort would come even earlier.)
    second.abort();
    assert!(second.await.unwrap_err().is_cancelled());
    drop(held);
    within("the first update", first).await.unwrap().unwrap();
    within("an update after the aborted one", update(&path, increment))
        .await
        .unwrap();
    assert_eq!(counter(&path), 7, "the aborted update wrote nothing");
}

/// Dropping an update after `f` ran, while its commit is on the pool: as
/// documented, the write runs to its end, and neither the lock nor the
/// turn stays held: the next update reads its result. No temp file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_dropped_after_f_ran_still_writes_and_lets_the_next_one_through() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = scratch();
    let path = dir.path().join("counter");
    let mut finished_first = 0;
    for round in 0..20u64 {
        std::fs::write(&path, "5\n").unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let (p, r) = (path.clone(), ran.clone());
        let dropped = tokio::spawn(async move {
            update(&p, |old| {
                r.store(true, Ordering::SeqCst);
                increment(old)
            })
            .await
        });
        within("f to run", async {
            while !ran.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        dropped.abort();
        finished_first += usize::from(matches!(dropped.await, Ok(Ok(()))));
        within("an update after the dropped one", update(&path, increment))
            .await
            .unwrap();
        assert_eq!(
            counter(&path),
            7,
            "round {round}: the dropped write was lost"
        );
        assert_eq!(
            others(dir.path(), &["counter", ".counter.lock"]),
            Vec::<OsString>::new(),
            "round {round}"
        );
    }
    eprintln!("{finished_first} of 20 updates finished before their abort");
}

/// Issue #17, point 2: with `follow_symlinks(false)`, what a link at the
/// target points to never reaches `f` (it gets `None`), and the link is
/// replaced like a new file; the file behind it stays as it was, secret.
#[tokio::test]
async fn a_link_not_followed_is_never_read_through() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = scratch();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let secret = victim.join("secret");
    std::fs::write(&secret, b"the secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("state");
    symlink(&secret, &link).unwrap();
    let mut opts = OpenOptions::new();
    opts.follow_symlinks(false).mode(0o644);
    opts.update(&link, |old| {
        assert_eq!(old, None, "the content behind a link not followed");
        Ok::<_, Error>(b"appended\n".to_vec())
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"the secret");
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert!(m.file_type().is_file(), "the link was replaced by a file");
    assert_eq!(std::fs::read(&link).unwrap(), b"appended\n");
}

/// Issue #17, point 2: the path is resolved once. A link swapped to
/// another file while `f` runs does not make the update write what it read
/// from the first file into the second: the file read is the file
/// replaced, and its lock sits beside it.
#[tokio::test]
async fn the_file_read_is_the_file_replaced_when_the_link_is_swapped_inside_f() {
    use std::os::unix::fs::symlink;
    let dir = scratch();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a_dir).unwrap();
    std::fs::create_dir(&b_dir).unwrap();
    let (a, b) = (a_dir.join("file"), b_dir.join("file"));
    std::fs::write(&a, "1\n").unwrap();
    std::fs::write(&b, "100\n").unwrap();
    let link = dir.path().join("current");
    symlink(&a, &link).unwrap();
    update(&link, |old| {
        // Repoint the link at b, as another process could.
        std::fs::remove_file(&link).unwrap();
        symlink(&b, &link).unwrap();
        increment(old)
    })
    .await
    .unwrap();
    assert_eq!(counter(&a), 2, "a was read, so a is replaced");
    assert_eq!(counter(&b), 100, "b is untouched");
    assert_eq!(std::fs::read_link(&link).unwrap(), b);
    assert!(a_dir.join(".file.lock").exists(), "the lock beside a");
    assert!(!b_dir.join(".file.lock").exists());
    assert_eq!(others(&b_dir, &["file"]), Vec::<OsString>::new());
}

/// Issue #17, point 4: a dropped update stops waiting for a lock that
/// another process holds, and does not keep the runtime from shutting
/// down: before, its pool thread waited in `flock` until the holder let
/// go (for ever, if it hangs).
#[test]
fn a_dropped_update_stops_waiting_and_the_runtime_shuts_down() {
    let dir = scratch();
    let path = dir.path().join("counter");
    std::fs::write(&path, "5\n").unwrap();
    let held = hold_lock(&dir.path().join(".counter.lock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..2 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(200), update(&path, increment))
                    .await
                    .is_err();
            assert!(gave_up, "the lock is held: the update cannot finish");
        }
    });
    // Liveness bound, not a timing: the lock stays held past it.
    let (done, shut_down) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        let _ = done.send(());
    });
    let waited = shut_down.recv_timeout(Duration::from_secs(20));
    assert!(
        waited.is_ok(),
        "the runtime did not shut down while another process held the lock"
    );
    drop(held);
    assert_eq!(counter(&path), 5, "the dropped updates wrote nothing");
}

/// Issue #17, point 4: updates of one file take turns however its path is
/// spelled. On a runtime with one blocking thread, an update of `d/x`
/// waiting behind one of `d/../d/x` deadlocked, each turn keyed by its
/// spelling: the second held the only pool thread in `flock`, and the
/// first could never commit. (`f` sleeps to let the second reach the lock
/// while the first holds it.)
#[test]
fn updates_of_one_file_spelled_two_ways_take_turns() {
    let dir = scratch();
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let x = d.join("x");
    // On a thread of its own: a deadlocked runtime cannot be dropped (its
    // pool thread never returns), so the test fails at the liveness bound
    // instead of hanging with it.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let spellings = [d.join("x"), d.join("..").join("d").join("x")];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let tasks: Vec<_> = spellings
            .iter()
            .cloned()
            .map(|p| {
                rt.spawn(async move {
                    update(&p, |old| {
                        std::thread::sleep(Duration::from_millis(100));
                        increment(old)
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            rt.block_on(t).unwrap().unwrap();
        }
        let _ = done.send(counter(&d.join("x")));

        // Without a lock file only the turns order them: keyed by the
        // file, no increment is lost, whichever spelling each one uses.
        let mut opts = OpenOptions::new();
        opts.lock_file(false);
        let opts = Arc::new(opts);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (opts, p) = (opts.clone(), spellings[i % 2].clone());
                rt.spawn(async move {
                    for _ in 0..10 {
                        opts.update(&p, |old| {
                            std::thread::sleep(Duration::from_millis(1));
                            increment(old)
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        let _ = done.send(counter(&d.join("x")));
    });
    let bound = Duration::from_secs(60);
    let after_two = finished
        .recv_timeout(bound)
        .expect("two updates of one file, spelled two ways, deadlocked");
    assert_eq!(after_two, 2);
    let after_all = finished
        .recv_timeout(bound)
        .expect("increments through two spellings did not finish");
    assert_eq!(after_all, 82);
    assert_eq!(counter(&x), 82);
}

/// The child half of the lock-file tests: one increment of `TAW_TARGET`.
fn child_increment() {
    let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(update(&target, increment))
        .unwrap();
}

fn increment_as_nobody(test: &str, target: &Path, groups: &str) {
    let groups = format!("--groups={groups}");
    let setpriv = ["setpriv", "--reuid=65534", "--regid=65534", &groups, "--"];
    run_child(
        test,
        &setpriv,
        &[("TAW_TARGET", target.to_str().unwrap())],
        None,
    );
}

fn increment_as_root(target: &Path) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(update(target, increment))
        .unwrap();
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Issue #17, point 3: an update by root (an admin tool under sudo) of
/// `nobody`'s 0600 file, in `nobody`'s directory, does not lock `nobody`
/// out: the lock file goes to the directory's owner, readable by its owner
/// only. A target of mode 0o200 makes no lock file that no one can open.
#[test]
fn the_lock_file_never_locks_out_whoever_may_replace_the_target() {
    const NAME: &str = "the_lock_file_never_locks_out_whoever_may_replace_the_target";
    const NOBODY: u32 = 65534;
    if is_child() {
        return child_increment();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    use std::os::unix::fs::{chown, PermissionsExt};
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let dir = scratch();
    mode(dir.path(), 0o755);
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    chown(&app, Some(NOBODY), Some(NOBODY)).unwrap();
    mode(&app, 0o755);
    for (name, target_mode) in [("state", 0o600), ("write_only", 0o200)] {
        let state = app.join(name);
        std::fs::write(&state, "1\n").unwrap();
        chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
        mode(&state, target_mode);
        increment_as_root(&state);
        let lock = app.join(format!(".{name}.lock"));
        assert_eq!(
            owner_and_mode(&lock),
            (NOBODY, NOBODY, 0o600),
            "{name}: the lock file is the directory owner's, for its owner"
        );
        mode(&state, 0o600);
        increment_as_nobody(NAME, &state, "65534");
        assert_eq!(counter(&state), 3, "{name}");
    }

    // A group-writable directory: the lock is readable by the group that
    // may write there, and a member takes it after root.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chown(&shared, Some(0), Some(4242)).unwrap();
    mode(&shared, 0o770);
    let state = shared.join("state");
    std::fs::write(&state, "1\n").unwrap();
    chown(&state, Some(0), Some(4242)).unwrap();
    mode(&state, 0o660);
    increment_as_root(&state);
    assert_eq!(
        owner_and_mode(&shared.join(".state.lock")),
        (0, 4242, 0o640)
    );
    increment_as_nobody(NAME, &state, "4242");
    assert_eq!(counter(&state), 3);
}

/// A lock file that an older version left root's and 0600 is mended by
/// root's next update, so that the owner of the directory can take it.
#[test]
fn a_lock_file_left_by_root_is_mended_at_roots_next_update() {
    const NAME: &str = "a_lock_file_left_by_root_is_mended_at_roots_next_update";
    const NOBODY: u32 = 65534;
    if is_child() {
        return child_increment();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    chown(&app, Some(NOBODY), Some(NOBODY)).unwrap();
    let state = app.join("state");
    std::fs::write(&state, "1\n").unwrap();
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let lock = app.join(".state.lock");
    std::fs::write(&lock, "").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(owner_and_mode(&lock), (0, 0, 0o600));
    increment_as_root(&state);
    assert_eq!(owner_and_mode(&lock), (NOBODY, NOBODY, 0o600));
    increment_as_nobody(NAME, &state, "65534");
    assert_eq!(counter(&state), 3);
}

/// Review of #17: only an empty lock file with no other name is mended. A
/// secret of root's that the directory's owner renamed to the lock name is
/// locked as it is, never given to the directory's owner nor opened wider.
#[test]
fn a_secret_renamed_to_the_lock_name_is_not_given_away() {
    if !require(is_root(), "root (to give a directory away)") {
        return;
    }
    use std::os::unix::fs::{chown, PermissionsExt};
    const NOBODY: u32 = 65534;
    let dir = scratch();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    chown(&app, Some(NOBODY), Some(NOBODY)).unwrap();
    let state = app.join("state");
    std::fs::write(&state, "1\n").unwrap();
    let lock = app.join(".state.lock");
    std::fs::write(&lock, b"root's token").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
    // And a hard link to an empty file of root's, elsewhere.
    let linked = app.join(".other.lock");
    let elsewhere = dir.path().join("empty_flag");
    std::fs::write(&elsewhere, b"").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&elsewhere, &linked).unwrap();
    increment_as_root(&state);
    increment_as_root(&app.join("other"));
    assert_eq!(counter(&state), 2);
    assert_eq!(owner_and_mode(&lock), (0, 0, 0o600));
    assert_eq!(std::fs::read(&lock).unwrap(), b"root's token");
    assert_eq!(owner_and_mode(&elsewhere), (0, 0, 0o600));
}
