//! Issue #5: `AsyncAtomicDir`. What a committed, failed, kept, replaced or
//! dropped tree leaves on disk; bad input; links never followed; racing
//! fillers in tasks and in processes; readers walking the tree during
//! `Replace`. The suite runs again on every filesystem, the lazy FUSE one
//! included, where `RENAME_EXCHANGE` and `RENAME_NOREPLACE` are refused and
//! the fallbacks run.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::tree::{fill, open_dir, read_tree, read_tree_at, supports_exchange, Bad};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{AsyncAtomicDir, Durability, Exists, Op, Published};

const KEY: &str = "ab12";

/// Entries of `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<OsString> {
    listing(dir)
        .into_iter()
        .filter(|n| !keep.iter().any(|k| n == *k))
        .collect()
}

/// Waits (a bounded number of times) until `dir` holds exactly `keep`: a
/// replaced tree is removed on the pool after `commit` returns.
#[track_caller]
fn assert_only_eventually(dir: &Path, keep: &[&str]) {
    for _ in 0..500 {
        if others(dir, keep).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(others(dir, keep), Vec::<OsString>::new(), "left in {dir:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_tree_appears_whole_and_nothing_else_is_left() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    // The temp tree: hidden, temp-named, beside the target.
    let temp = dir.path().to_path_buf();
    assert_eq!(temp.parent(), Some(scratch.path()));
    assert_eq!(temp_files(scratch.path()), vec![temp.file_name().unwrap()]);
    fill(&dir, 7).await;
    assert!(!target.exists(), "nothing at the target before commit");
    assert_eq!(dir.commit(Exists::Fail).await.unwrap(), Published::Ours);
    assert_eq!(read_tree(&target), Ok(7));
    assert_eq!(listing(scratch.path()), vec![OsString::from(KEY)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_refuses_an_existing_target_and_removes_its_tree() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let first = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&first, 1).await;
    let second = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&second, 2).await;
    assert_eq!(first.commit(Exists::Fail).await.unwrap(), Published::Ours);
    let err = second.commit(Exists::Fail).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.op(), Op::Rename);
    assert_eq!(err.path(), target);
    let head = format!(
        "failed to publish `{}`: the target already exists: ",
        target.display()
    );
    assert!(err.to_string().starts_with(&head), "{err}");
    assert!(!err.is_published());
    assert_eq!(read_tree(&target), Ok(1), "the first tree untouched");
    assert_eq!(listing(scratch.path()), vec![OsString::from(KEY)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_keeps_the_existing_tree_and_removes_ours() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let first = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&first, 1).await;
    assert_eq!(first.commit(Exists::Keep).await.unwrap(), Published::Ours);
    let second = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&second, 2).await;
    assert_eq!(
        second.commit(Exists::Keep).await.unwrap(),
        Published::Existing
    );
    assert_eq!(read_tree(&target), Ok(1));
    // Removed before `commit` returned, not eventually.
    assert_eq!(listing(scratch.path()), vec![OsString::from(KEY)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_and_fail_refuse_a_target_that_is_not_a_directory() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    for exists in [Exists::Keep, Exists::Fail] {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, 3).await;
        // A file appears at the target after `create` checked it.
        std::fs::write(&target, b"a file").unwrap();
        let err = dir.commit(exists).await.unwrap_err();
        assert_eq!(err.op(), Op::Rename, "{exists:?}");
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"a file");
        assert_only_eventually(scratch.path(), &[KEY]);
        std::fs::remove_file(&target).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_swaps_the_tree_in_and_removes_the_old_one() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    for id in 1..=3 {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, id).await;
        assert_eq!(dir.commit(Exists::Replace).await.unwrap(), Published::Ours);
        assert_eq!(read_tree(&target), Ok(id));
        assert_only_eventually(scratch.path(), &[KEY]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_rolling_back_removes_the_tree_and_keeps_the_target() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let first = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&first, 1).await;
    first.commit(Exists::Fail).await.unwrap();

    let dropped = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&dropped, 2).await;
    drop(dropped);
    assert_only_eventually(scratch.path(), &[KEY]);

    let rolled_back = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&rolled_back, 3).await;
    rolled_back.rollback().await.unwrap();
    assert_eq!(listing(scratch.path()), vec![OsString::from(KEY)]);
    assert_eq!(read_tree(&target), Ok(1));
}

#[test]
fn dropped_outside_a_runtime_the_tree_is_removed_at_once() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = rt.block_on(async {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, 1).await;
        dir
    });
    drop(rt);
    drop(dir);
    assert_eq!(listing(scratch.path()), Vec::<OsString>::new());
}

/// Issue #20: files owned by spawned tasks, filled side by side, are all
/// in the published tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_files_filled_in_spawned_tasks_are_published() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let mut file = dir.file_owned(format!("part-{i}")).await.unwrap();
        tasks.push(tokio::spawn(async move {
            // `?` on write_all and finish alike, into the crate's Error.
            file.write_all(&version(i, 100_000 + i as usize)).await?;
            file.finish().await?;
            Ok::<_, tokio_atomic_write::Error>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(dir.commit(Exists::Fail).await.unwrap(), Published::Ours);
    for i in 0..8u32 {
        let body = std::fs::read(target.join(format!("part-{i}"))).unwrap();
        assert_eq!(body, version(i, 100_000 + i as usize));
    }
    assert_only_eventually(scratch.path(), &[KEY]);
}

/// An owned file still open (not finished, not dropped) fails the
/// commit, naming it: nothing is published and the temp tree goes. Once
/// it is dropped unfinished, the commit fails as for a borrowed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_while_an_owned_file_is_open_fails() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    let mut open = dir.file_owned("open.bin").await.unwrap();
    open.write_all(b"not finished").await.unwrap();
    let mut done = dir.file_owned("done.bin").await.unwrap();
    done.write_all(b"finished").await.unwrap();
    done.finish().await.unwrap();
    let err = dir.commit(Exists::Replace).await.unwrap_err();
    assert_eq!((err.op(), err.path()), (Op::Write, open.path()), "{err}");
    assert!(err.to_string().contains("still open"), "{err}");
    assert!(!target.exists(), "nothing published");
    // Its writes go on into the removed tree, harmlessly.
    open.write_all(b" more").await.unwrap();
    drop(open);
    assert_only_eventually(scratch.path(), &[]);

    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    let mut dropped = dir.file_owned("dropped.bin").await.unwrap();
    dropped.write_all(b"half").await.unwrap();
    let dropped_path = dropped.path().to_path_buf();
    tokio::spawn(async move { drop(dropped) }).await.unwrap();
    let err = dir.commit(Exists::Replace).await.unwrap_err();
    assert_eq!(
        (err.op(), err.path()),
        (Op::Write, dropped_path.as_path()),
        "{err}"
    );
    assert!(!target.exists(), "nothing published");
    assert_only_eventually(scratch.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_before_finish_fails_the_commit() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    let mut f = dir.file("data.bin").await.unwrap();
    f.write_all(b"half of it").await.unwrap();
    let file_path = f.path().to_path_buf();
    drop(f);
    let err = dir.commit(Exists::Replace).await.unwrap_err();
    assert_eq!(err.op(), Op::Write, "{err}");
    assert_eq!(err.path(), file_path);
    assert!(err.to_string().contains("data.bin"), "{err}");
    assert!(!target.exists(), "nothing published");
    assert_only_eventually(scratch.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_fail_at_create_naming_the_path_and_change_nothing() {
    let scratch = scratch();
    let file = scratch.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let to_dir = scratch.path().join("link-to-dir");
    std::fs::create_dir(scratch.path().join("real")).unwrap();
    std::os::unix::fs::symlink("real", &to_dir).unwrap();
    let missing = scratch.path().join("no-such-dir/key");
    let before = listing(scratch.path());
    let cases: [(&Path, Op, std::io::ErrorKind); 5] = [
        (&file, Op::Open, std::io::ErrorKind::NotADirectory),
        (&to_dir, Op::Open, std::io::ErrorKind::NotADirectory),
        (&missing, Op::OpenDir, std::io::ErrorKind::NotFound),
        (Path::new(""), Op::Open, std::io::ErrorKind::InvalidInput),
        (
            &scratch.path().join(".."),
            Op::Open,
            std::io::ErrorKind::InvalidInput,
        ),
    ];
    for (path, op, kind) in cases {
        let err = AsyncAtomicDir::create(path).await.unwrap_err();
        assert_eq!((err.op(), err.kind()), (op, kind), "{path:?}: {err}");
        let named = if op == Op::OpenDir {
            path.parent().unwrap()
        } else {
            path
        };
        assert_eq!(err.path(), named, "{err}");
        assert!(
            err.to_string().contains(&named.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(listing(scratch.path()), before, "nothing changed");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_writes_only_inside_the_tree() {
    let scratch = scratch();
    let outside = scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    let dir = AsyncAtomicDir::create(scratch.path().join(KEY))
        .await
        .unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("to-outside")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dir.path().join("victim")).unwrap();
    let invalid = std::io::ErrorKind::InvalidInput;
    let abs = outside.join("new");
    let cases: [(&Path, Option<std::io::ErrorKind>); 6] = [
        (Path::new("../outside/new"), Some(invalid)),
        (&abs, Some(invalid)),
        (Path::new(""), Some(invalid)),
        (Path::new("to-outside/victim"), None),
        (Path::new("victim"), None),
        (
            Path::new("missing-dir/x"),
            Some(std::io::ErrorKind::NotFound),
        ),
    ];
    for (name, kind) in cases {
        let err = dir.file(name).await.unwrap_err();
        assert_eq!(err.op(), Op::CreateFile, "{name:?}: {err}");
        if let Some(kind) = kind {
            assert_eq!(err.kind(), kind, "{name:?}: {err}");
        }
        assert_eq!(err.path(), dir.path().join(name), "{err}");
    }
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    assert_eq!(listing(&outside), vec![OsString::from("victim")]);
    // A subdirectory made by the caller is fine, and `./` is harmless.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut f = dir.file("./sub/ok").await.unwrap();
    f.write_all(b"ok").await.unwrap();
    f.finish().await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("sub/ok")).unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tree_never_follows_a_link_out_of_it() {
    let scratch = scratch();
    let outside = scratch.path().join("outside");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::fs::write(outside.join("deep/victim"), b"precious").unwrap();
    let target = scratch.path().join(KEY);
    let plant = |dir: &AsyncAtomicDir| {
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("sub/link")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("link")).unwrap();
    };
    // Dropped; replaced (the old tree, with links, removed in the
    // background); and with `Keep`, the loser.
    let dropped = AsyncAtomicDir::create(&target).await.unwrap();
    plant(&dropped);
    drop(dropped);
    let first = AsyncAtomicDir::create(&target).await.unwrap();
    plant(&first);
    first.commit(Exists::Fail).await.unwrap();
    let second = AsyncAtomicDir::create(&target).await.unwrap();
    plant(&second);
    second.commit(Exists::Replace).await.unwrap();
    let loser = AsyncAtomicDir::create(&target).await.unwrap();
    plant(&loser);
    assert_eq!(
        loser.commit(Exists::Keep).await.unwrap(),
        Published::Existing
    );
    assert_only_eventually(scratch.path(), &[KEY, "outside"]);
    assert_eq!(
        std::fs::read(outside.join("deep/victim")).unwrap(),
        b"precious"
    );
    assert!(std::fs::symlink_metadata(target.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_never_wider_than_the_directory_it_replaces() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Default: the replaced directory's mode, from the start.
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    assert_eq!(mode_of(dir.path()), 0o700);
    fill(&dir, 1).await;
    dir.commit(Exists::Replace).await.unwrap();
    assert_eq!(mode_of(&target), 0o700);
    // An explicit wider mode: narrow while built, exact once published.
    let dir = AsyncAtomicDir::options()
        .mode(0o2750)
        .create(&target)
        .await
        .unwrap();
    assert_eq!(mode_of(dir.path()), 0o700, "not wider than the replaced");
    fill(&dir, 2).await;
    dir.commit(Exists::Replace).await.unwrap();
    assert_eq!(mode_of(&target), 0o2750);
    // A new directory: 0o777 less the umask, as mkdir gives.
    let new = scratch.path().join("new");
    let dir = AsyncAtomicDir::create(&new).await.unwrap();
    dir.commit(Exists::Fail).await.unwrap();
    assert_eq!(mode_of(&new), 0o777 & !current_umask());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_tree_and_durability_none_publish_too() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::options()
        .durability(Durability::None)
        .create(&target)
        .await
        .unwrap();
    fill(&dir, 4).await;
    dir.commit(Exists::Replace).await.unwrap();
    assert_eq!(read_tree(&target), Ok(4));
    let empty = scratch.path().join("empty");
    let dir = AsyncAtomicDir::create(&empty).await.unwrap();
    assert_eq!(dir.commit(Exists::Keep).await.unwrap(), Published::Ours);
    assert_eq!(listing(&empty), Vec::<OsString>::new());
    assert_only_eventually(scratch.path(), &[KEY, "empty"]);
}

/// How many rounds the racing tests run (`TAW_ROUNDS` raises it).
fn rounds(default: usize) -> usize {
    std::env::var("TAW_ROUNDS").map_or(default, |v| v.parse().unwrap())
}

const FILLERS: usize = 16;

/// 16 tasks fill the same key with `Keep` and commit together: all `Ok`,
/// exactly one `Ours`, and every filler, as soon as its commit returns,
/// reads the winner's tree whole (no `NotFound` from a loser's cleanup).
#[test]
fn sixteen_tasks_racing_with_keep_publish_exactly_one_tree() {
    let rt = runtime();
    let scratch = scratch();
    for round in 0..rounds(20) {
        let target = scratch.path().join(format!("key{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(FILLERS));
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..FILLERS as u32)
                .map(|i| {
                    let (target, barrier) = (target.clone(), barrier.clone());
                    tokio::spawn(async move {
                        let dir = AsyncAtomicDir::create(&target).await.unwrap();
                        fill(&dir, i).await;
                        barrier.wait().await;
                        let published = dir.commit(Exists::Keep).await.unwrap();
                        (i, published, read_tree(&target))
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        });
        let winners: Vec<u32> = results
            .iter()
            .filter(|(_, p, _)| *p == Published::Ours)
            .map(|(i, _, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (i, _, read) in &results {
            assert_eq!(*read, Ok(winners[0]), "round {round}, filler {i}");
        }
        assert_eq!(read_tree(&target), Ok(winners[0]));
    }
    let keys: Vec<_> = (0..rounds(20)).map(|r| format!("key{r}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(others(scratch.path(), &keys), Vec::<OsString>::new());
}

/// The child half of the process race: fills tree `TAW_ID` for
/// `TAW_TARGET`, says `ready`, waits for a line on stdin, commits with
/// `Keep`, then reads the target: `ours ID` or `existing ID`, or
/// `read-failed ...`.
fn child_filler() {
    let target = std::env::var("TAW_TARGET").unwrap();
    let id: u32 = std::env::var("TAW_ID").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, id).await;
        // Markers, not whole lines: libtest's `test ... ` may precede them.
        println!("taw:ready");
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let published = dir.commit(Exists::Keep).await.unwrap();
        let word = match published {
            Published::Ours => "ours",
            Published::Existing => "existing",
        };
        match read_tree(Path::new(&target)) {
            Ok(read) => println!("taw:{word} {read}"),
            Err(e) => println!("taw:read-failed {e:?}"),
        }
    });
}

/// 16 processes fill the same key with `Keep`, released together: exactly
/// one says `ours`, all read the winner's tree whole right after their
/// commit, and no temp tree is left.
#[test]
fn sixteen_processes_racing_with_keep_publish_exactly_one_tree() {
    const NAME: &str = "sixteen_processes_racing_with_keep_publish_exactly_one_tree";
    if is_child() {
        return child_filler();
    }
    let scratch = scratch();
    for round in 0..rounds(5) {
        let target = scratch.path().join(format!("key{round}"));
        let mut children: Vec<_> = (0..FILLERS)
            .map(|i| {
                let mut cmd = child_command(NAME, &[]);
                cmd.env("TAW_TARGET", &target)
                    .env("TAW_ID", i.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
                cmd.spawn().unwrap()
            })
            .collect();
        let mut readers: Vec<_> = children
            .iter_mut()
            .map(|c| BufReader::new(c.stdout.take().unwrap()))
            .collect();
        for r in &mut readers {
            wait_for_line(r, "taw:ready");
        }
        // Every child is at its commit: release them all at once.
        for c in &mut children {
            c.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        let mut said = Vec::new();
        for (c, r) in children.iter_mut().zip(&mut readers) {
            let mut rest = String::new();
            std::io::Read::read_to_string(r, &mut rest).unwrap();
            assert!(c.wait().unwrap().success(), "child: {rest}");
            let line = rest
                .lines()
                .find_map(|l| l.split_once("taw:").map(|(_, said)| said.to_string()))
                .unwrap_or_else(|| panic!("no result in {rest}"));
            said.push(line);
        }
        let winners: Vec<&String> = said.iter().filter(|l| l.starts_with("ours ")).collect();
        assert_eq!(winners.len(), 1, "round {round}: {said:?}");
        let id = winners[0].strip_prefix("ours ").unwrap();
        for line in &said {
            assert!(line.ends_with(&format!(" {id}")), "round {round}: {said:?}");
        }
        assert_eq!(read_tree(&target).unwrap().to_string(), id);
    }
    let keys: Vec<_> = (0..rounds(5)).map(|r| format!("key{r}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(others(scratch.path(), &keys), Vec::<OsString>::new());
}

/// Reads lines from `r` until one ends with `want`; panics at the end.
fn wait_for_line(r: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "no `{want}` line");
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// 16 tasks race with `Fail`: exactly one `Ok`, the others `AlreadyExists`,
/// and no temp tree left.
#[test]
fn sixteen_tasks_racing_with_fail_have_exactly_one_winner() {
    let rt = runtime();
    let scratch = scratch();
    for round in 0..rounds(20) {
        let target = scratch.path().join(KEY);
        let barrier = Arc::new(tokio::sync::Barrier::new(FILLERS));
        let outcomes = rt.block_on(async {
            let tasks: Vec<_> = (0..FILLERS as u32)
                .map(|i| {
                    let (target, barrier) = (target.clone(), barrier.clone());
                    tokio::spawn(async move {
                        let dir = AsyncAtomicDir::create(&target).await.unwrap();
                        fill(&dir, i).await;
                        barrier.wait().await;
                        dir.commit(Exists::Fail).await.map(|_| i)
                    })
                })
                .collect();
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.unwrap());
            }
            v
        });
        let winners: Vec<u32> = outcomes
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}");
        for r in &outcomes {
            if let Err(e) = r {
                assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
            }
        }
        assert_eq!(read_tree(&target), Ok(winners[0]));
        assert_only_eventually(scratch.path(), &[KEY]);
        std::fs::remove_dir_all(&target).unwrap();
    }
}

/// Replace while readers walk the tree. Each reader opens the target once
/// and reads everything relative to that handle: every walk that finishes
/// sees one whole tree (manifest, files, listing). A walk may meet
/// `NotFound` only when its tree was replaced meanwhile (its removal
/// started), or, on a filesystem without `RENAME_EXCHANGE`, in the
/// fallback's window, when the target itself is missing.
#[test]
fn readers_walking_the_tree_during_replace_see_whole_trees() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let exchange = supports_exchange(scratch.path());
    let rt = runtime();
    rt.block_on(async {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, 0).await;
        dir.commit(Exists::Fail).await.unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (whole, vanished, missing) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let start = Arc::new(Barrier::new(5));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, target, start) = (stop.clone(), target.clone(), start.clone());
            let (whole, vanished, missing) = (whole.clone(), vanished.clone(), missing.clone());
            std::thread::spawn(move || {
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let root = match open_dir(&target) {
                        Ok(root) => root,
                        Err(Bad::NotFound(_)) => {
                            assert!(!exchange, "the target was missing with RENAME_EXCHANGE");
                            missing.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => panic!("{e:?}"),
                    };
                    match read_tree_at(&root) {
                        Ok(_) => whole.fetch_add(1, Ordering::Relaxed),
                        Err(Bad::NotFound(what)) => {
                            // Only in a tree that is no longer the target.
                            let st = rustix::fs::fstat(&root).unwrap();
                            let ours = (st.st_dev, st.st_ino);
                            let now = std::fs::metadata(&target).map(|m| {
                                use std::os::unix::fs::MetadataExt;
                                (m.dev(), m.ino())
                            });
                            assert_ne!(now.ok(), Some(ours), "{what} missing in the target");
                            vanished.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(Bad::Torn(what)) => panic!("a torn tree: {what}"),
                    };
                }
            })
        })
        .collect();
    start.wait();
    let replaces = rounds(100);
    rt.block_on(async {
        // Two writers, each replacing the tree in turn.
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let target = target.clone();
                tokio::spawn(async move {
                    for n in 0..(replaces as u32 / 2) {
                        let dir = AsyncAtomicDir::create(&target).await.unwrap();
                        fill(&dir, 1 + n * 2 + w).await;
                        dir.commit(Exists::Replace).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let (whole, vanished, missing) = (
        whole.load(Ordering::Relaxed),
        vanished.load(Ordering::Relaxed),
        missing.load(Ordering::Relaxed),
    );
    eprintln!(
        "{replaces} replaces (exchange: {exchange}): {whole} whole walks, \
         {vanished} in a replaced tree that vanished, {missing} with the target missing"
    );
    assert!(whole > 0, "the readers finished walks");
    assert!(read_tree(&target).is_ok());
    assert_only_eventually(scratch.path(), &[KEY]);
}

#[test]
fn every_test_here_passes_on_every_filesystem() {
    let passed = run_suite_on_every_filesystem("every_test_here_passes_on_every_filesystem");
    for (fs, n) in passed {
        assert_eq!(n, 25, "every test but this one, on {fs}");
    }
}

/// The child half of the strace test: replaces tree 1 at `TAW_DIR/ab12`
/// with tree 2.
fn child_replace() {
    let target = Path::new(&std::env::var("TAW_DIR").unwrap()).join(KEY);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, 2).await;
        dir.commit(Exists::Replace).await.unwrap();
    });
}

/// Seen by strace: every file and directory of the tree is `fsync`ed
/// before the publishing call, the target's directory after it; the old
/// tree is removed only after it, and the target is never unlinked.
/// Where `RENAME_EXCHANGE` is refused (the FUSE run), the fallback: the
/// old tree renamed aside, then the new one renamed in.
#[test]
fn strace_shows_the_whole_tree_synced_before_the_publish() {
    const NAME: &str = "strace_shows_the_whole_tree_synced_before_the_publish";
    if is_child() {
        return child_replace();
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let exchange = supports_exchange(scratch.path());
    runtime().block_on(async {
        let dir = AsyncAtomicDir::create(&target).await.unwrap();
        fill(&dir, 1).await;
        dir.commit(Exists::Fail).await.unwrap();
    });
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("strace.out");
    let calls = "fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,rmdir";
    let args = writer::strace_args(calls, &log, &["-y"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = child_command(NAME, &args)
        .env("TAW_DIR", scratch.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read_tree(&target), Ok(2));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = scratch.path().display().to_string();
    let key = format!("\"{KEY}\"");
    let publish = lines
        .iter()
        .position(|l| {
            l.contains("rename")
                && l.contains(&key)
                && l.contains(" = 0")
                && (!exchange || l.contains("RENAME_EXCHANGE"))
                // The publish names the target last (the move aside, first).
                && l.split(&key).nth(1).is_some_and(|rest| !rest.contains('"'))
        })
        .unwrap_or_else(|| panic!("no publish in\n{text}"));
    // Which entries were synced before it, relative to the temp tree.
    let temp_prefix = format!("{dir}/.{KEY}.");
    let mut synced = std::collections::BTreeSet::new();
    for l in &lines[..publish] {
        if !(l.contains("fsync(") && l.ends_with("= 0")) {
            continue;
        }
        let Some(path) = l.split_once('<').and_then(|(_, r)| r.split_once('>')) else {
            continue;
        };
        if let Some(rest) = path.0.strip_prefix(&temp_prefix) {
            let rel = rest.split_once(".tmp").map_or("?", |(_, rel)| rel);
            synced.insert(rel.trim_start_matches('/').to_string());
        }
    }
    let mut expected: std::collections::BTreeSet<String> = ["", "sub", "sub/deeper", "MANIFEST"]
        .map(String::from)
        .into();
    for (path, _) in common::tree::tree_files(2) {
        expected.insert(path);
    }
    assert_eq!(synced, expected, "synced before the publish:\n{text}");
    let parent_synced = lines[publish..]
        .iter()
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{dir}>)")) && l.ends_with("= 0"));
    assert!(
        parent_synced,
        "the parent synced after the publish:\n{text}"
    );
    if exchange {
        assert!(
            lines[publish].contains("RENAME_EXCHANGE"),
            "{}",
            lines[publish]
        );
    } else {
        assert!(
            lines[..publish]
                .iter()
                .any(|l| l.contains("RENAME_EXCHANGE") && l.contains("EINVAL")),
            "exchange tried first:\n{text}"
        );
        // The exchange refused, then the old tree renamed to an aside
        // name, then (the publish) ours in.
        let refused = lines
            .iter()
            .position(|l| l.contains("RENAME_EXCHANGE") && l.contains("EINVAL"))
            .unwrap();
        let aside = lines
            .iter()
            .position(|l| {
                l.contains("rename") && l.contains(&format!("{key}, ")) && l.contains(" = 0")
            })
            .unwrap_or_else(|| panic!("no move aside:\n{text}"));
        assert!(refused < aside && aside < publish, "{text}");
        assert!(
            lines[aside].contains(&format!("\".{KEY}.")) && lines[aside].contains(".old\""),
            "moved aside to an aside name: {}",
            lines[aside]
        );
    }
    // Removing the old tree comes after the publish, and never names the
    // target.
    let first_removal = lines
        .iter()
        .position(|l| (l.contains("unlink") || l.contains("rmdir")) && l.contains(" = 0"))
        .unwrap_or_else(|| panic!("the old tree was removed:\n{text}"));
    assert!(first_removal > publish, "{text}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("unlinkat") && l.contains(&format!("<{dir}>, {key}"))),
        "the target is never unlinked:\n{text}"
    );
}

/// The umask narrows a new directory, never the mode the root is to have:
/// a replaced directory's, or the one asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_umask_never_narrows_the_final_mode() {
    assert_ne!(
        current_umask() & 0o022,
        0,
        "the test needs a umask that narrows"
    );
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&dir, 1).await;
    dir.commit(Exists::Replace).await.unwrap();
    assert_eq!(mode_of(&target), 0o777, "the replaced directory's mode");
    let new = scratch.path().join("new");
    let dir = AsyncAtomicDir::options()
        .mode(0o775)
        .create(&new)
        .await
        .unwrap();
    dir.commit(Exists::Fail).await.unwrap();
    assert_eq!(mode_of(&new), 0o775, "the mode asked for");
}

/// `Replace` replaces directories only: a file put at the target after
/// `create` is neither replaced nor removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_leaves_a_file_at_the_target_alone() {
    let scratch = scratch();
    let target = scratch.path().join(KEY);
    let dir = AsyncAtomicDir::create(&target).await.unwrap();
    fill(&dir, 1).await;
    std::fs::write(&target, b"a file").unwrap();
    let err = dir.commit(Exists::Replace).await.unwrap_err();
    assert_eq!(err.op(), Op::Rename, "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory, "{err}");
    assert_eq!(err.path(), target);
    assert!(!err.is_published());
    assert_eq!(std::fs::read(&target).unwrap(), b"a file");
    assert_only_eventually(scratch.path(), &[KEY]);
}

/// A tree seeded with hard links to the files of another (`cp -al`):
/// `file` makes a new file where a link was, never writing through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_never_writes_through_a_hard_link() {
    let scratch = scratch();
    let published = scratch.path().join("published");
    std::fs::write(&published, b"live content").unwrap();
    let dir = AsyncAtomicDir::create(scratch.path().join(KEY))
        .await
        .unwrap();
    std::fs::hard_link(&published, dir.path().join("data")).unwrap();
    let mut f = dir.file("data").await.unwrap();
    f.write_all(b"new").await.unwrap();
    f.finish().await.unwrap();
    dir.commit(Exists::Fail).await.unwrap();
    assert_eq!(std::fs::read(&published).unwrap(), b"live content");
    assert_eq!(
        std::fs::read(scratch.path().join(KEY).join("data")).unwrap(),
        b"new"
    );
}

/// The child half of the read-only test, run as another user: replaces a
/// tree of read-only directories (as in a module cache).
fn child_read_only() {
    let target = Path::new(&std::env::var("TAW_DIR").unwrap()).join(KEY);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for id in 1..=2 {
            let dir = AsyncAtomicDir::create(&target).await.unwrap();
            fill(&dir, id).await;
            for sub in ["sub/deeper", "sub"] {
                let p = dir.path().join(sub);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555)).unwrap();
            }
            dir.commit(Exists::Replace).await.unwrap();
            assert_eq!(read_tree(&target), Ok(id));
            if id == 2 {
                assert_eq!(mode_of(&target), 0o555, "kept from the replaced tree");
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    });
}

/// A tree of read-only directories, replaced by an ordinary user: the new
/// tree can be filled (its owner has full access while it is built), and
/// the old one is removed whole.
#[test]
fn a_read_only_tree_is_replaced_and_removed_by_its_owner() {
    const NAME: &str = "a_read_only_tree_is_replaced_and_removed_by_its_owner";
    if is_child() {
        return child_read_only();
    }
    if !require(is_root(), "root, to run the child as another user") {
        return;
    }
    let scratch = scratch();
    rustix::fs::chown(
        scratch.path(),
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let dir = scratch.path().to_str().unwrap();
    run_child(NAME, &[], &[("TAW_DIR", dir)], Some(65534));
    assert_only_eventually(scratch.path(), &[KEY]);
    assert_eq!(read_tree(&scratch.path().join(KEY)), Ok(2));
}

/// A new tree's root gets the mode `mkdir` gives beside it: the setgid bit
/// of a setgid parent kept (where the filesystem passes it on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_keeps_what_mkdir_gives_a_setgid_parent() {
    let scratch = scratch();
    let parent = scratch.path().join("shared");
    std::fs::create_dir(&parent).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::create_dir(parent.join("by-mkdir")).unwrap();
    let by_mkdir = mode_of(&parent.join("by-mkdir"));
    let dir = AsyncAtomicDir::create(parent.join(KEY)).await.unwrap();
    dir.commit(Exists::Fail).await.unwrap();
    assert_eq!(mode_of(&parent.join(KEY)), by_mkdir);
}
