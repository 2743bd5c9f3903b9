//! Issue #21: the `StateFile` tests that run a child process, apart from
//! `state.rs` (see there why): an open from another process, and the
//! failed `fsync`s that strace injects into a child's commits.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;

use common::*;
use serde::{Deserialize, Serialize};
use tokio_atomic_write::{Op, StateFile};
use tokio_test::{assert_pending, task};

const STATE: &str = "state.json";

/// The state: ids pushed by updates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Log {
    ids: Vec<u32>,
}

fn push(id: u32) -> impl FnOnce(&mut Log) -> usize {
    move |log| {
        log.ids.push(id);
        log.ids.len()
    }
}

fn ids(state: &StateFile<Log>) -> Vec<u32> {
    state.read(|log| log.ids.clone())
}

/// Another process's open fails too (the child below), while this one
/// holds the state.
#[test]
fn an_open_in_another_process_fails_while_one_holds_it() {
    if is_child() {
        let path = PathBuf::from(std::env::var_os("TAW_TARGET").unwrap());
        let rt = runtime();
        let e = rt
            .block_on(StateFile::<Log>::open(&path, Log::default))
            .unwrap_err();
        assert_eq!(
            (e.op(), e.kind()),
            (Op::Lock, std::io::ErrorKind::WouldBlock)
        );
        assert_eq!(e.path(), path);
        println!("taw:refused {e}");
        return;
    }
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let state = rt.block_on(StateFile::open(&path, Log::default)).unwrap();
    let test = "an_open_in_another_process_fails_while_one_holds_it";
    let out = run_child(test, &[], &[("TAW_TARGET", path.to_str().unwrap())], None);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("taw:refused failed to lock"), "{out}");
    drop(state);
}

// ---------------------------------------------------------------------
// 2. I/O failures, injected by strace into a child's commits.

/// The child: a state in `TAW_TARGET` (holding `[0]`), on a runtime with
/// one blocking thread (strace counts calls per thread, so `when=N` counts
/// that thread's, which are the commits'), running `TAW_CASE`.
#[test]
fn child_injected() {
    if !is_child() {
        return;
    }
    let path = PathBuf::from(std::env::var_os("TAW_TARGET").unwrap());
    let case = std::env::var("TAW_CASE").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .build()
        .unwrap();
    let state = rt
        .block_on(StateFile::<Log>::open(&path, Log::default))
        .unwrap();
    let _in_rt = rt.enter();
    match case.as_str() {
        // The first commit's temp fsync fails: both updates it carries
        // fail with it; the state stays [0], and the next starts there.
        "fail_sync_temp" => {
            // Hold the only blocking thread, so that both are applied
            // before the commit job starts.
            let (go, wait) = mpsc::channel::<()>();
            let (started, running) = mpsc::channel();
            drop(tokio::task::spawn_blocking(move || {
                started.send(()).unwrap();
                let _ = wait.recv();
            }));
            running.recv().unwrap();
            let mut a = task::spawn(state.update(push(1)));
            let mut b = task::spawn(state.update(push(2)));
            assert_pending!(a.poll());
            assert_pending!(b.poll());
            drop(go);
            for u in [&mut a, &mut b] {
                let e = rt.block_on(u).unwrap_err();
                assert_eq!((e.op(), e.path()), (Op::SyncTemp, path.as_path()));
                assert_eq!(e.io_error().raw_os_error(), Some(5));
                assert!(!e.is_published());
            }
            assert_eq!(ids(&state), [0]);
            assert_eq!(on_disk(&path).unwrap(), [0]);
            rt.block_on(state.update(push(3))).unwrap();
            assert_eq!(on_disk(&path).unwrap(), [0, 3]);
        }
        // The first commit's directory fsync fails: published, of unknown
        // durability. Its update gets the error; the state keeps the
        // change, and the next commit carries it and syncs again.
        "fail_sync_dir" => {
            let e = rt.block_on(state.update(push(1))).unwrap_err();
            assert_eq!((e.op(), e.path()), (Op::SyncDir, path.as_path()));
            assert!(e.is_published());
            assert_eq!(ids(&state), [0, 1]);
            assert_eq!(on_disk(&path).unwrap(), [0, 1]);
            rt.block_on(state.update(push(2))).unwrap();
            assert_eq!(ids(&state), [0, 1, 2]);
            assert_eq!(on_disk(&path).unwrap(), [0, 1, 2]);
        }
        "clean" => {
            rt.block_on(state.update(push(1))).unwrap();
            rt.block_on(state.update(push(2))).unwrap();
        }
        other => panic!("unknown case {other}"),
    }
    println!("taw:done {case}");
}

/// Runs the child for `case` under strace, with `inject` (`-e inject=...`)
/// if any; returns its `fsync` lines, each with the descriptor's path.
fn traced(case: &str, inject: Option<String>) -> Vec<String> {
    let dir = scratch();
    let path = dir.path().join(STATE);
    std::fs::write(&path, br#"{"ids":[0]}"#).unwrap();
    let log = dir.path().join("strace.out");
    let mut wrap = vec![
        "strace".to_string(),
        "-f".into(),
        "-y".into(),
        "-qq".into(),
        "-e".into(),
        "trace=fsync".into(),
        "-o".into(),
        log.to_str().unwrap().into(),
    ];
    if let Some(inject) = inject {
        wrap.extend(["-e".into(), format!("inject={inject}")]);
    }
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let env = [("TAW_TARGET", path.to_str().unwrap()), ("TAW_CASE", case)];
    let out = run_child("child_injected", &wrap, &env, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("taw:done {case}")), "{stdout}");
    let text = std::fs::read_to_string(&log).unwrap();
    let dir_name = dir.path().to_str().unwrap();
    assert!(temp_files(dir.path()).is_empty(), "no temp file left");
    text.lines()
        .filter(|l| l.contains(dir_name) && l.contains("fsync("))
        .map(str::to_string)
        .collect()
}

/// The directory's `fsync`s: those on a descriptor of the directory itself.
fn on_dir(line: &str) -> bool {
    !line.contains("(deleted)") && !line.contains(".tmp>") && !line.contains(STATE)
}

#[test]
fn a_failed_temp_sync_fails_every_update_of_its_commit() {
    if is_child() || !require(have("strace"), "strace") {
        return;
    }
    let clean = traced("clean", None);
    assert!(clean.len() >= 4, "two commits, two fsyncs each: {clean:#?}");
    assert!(
        !on_dir(&clean[0]),
        "the first fsync is the temp file's: {clean:#?}"
    );
    let syncs = traced("fail_sync_temp", Some("fsync:error=EIO:when=1".into()));
    assert!(
        syncs[0].contains("EIO (Input/output error) (INJECTED)"),
        "{syncs:#?}"
    );
}

#[test]
fn a_failed_directory_sync_keeps_the_change_and_the_next_commit_syncs_again() {
    if is_child() || !require(have("strace"), "strace") {
        return;
    }
    // Which fsync of the first commit is the directory's depends on the
    // filesystem: find it in a clean run.
    let clean = traced("clean", None);
    let nth = 1 + clean
        .iter()
        .position(|l| on_dir(l))
        .unwrap_or_else(|| panic!("no directory fsync: {clean:#?}"));
    let syncs = traced("fail_sync_dir", Some(format!("fsync:error=EIO:when={nth}")));
    let dir_syncs: Vec<_> = syncs.iter().filter(|l| on_dir(l)).collect();
    assert_eq!(dir_syncs.len(), 2, "{syncs:#?}");
    assert!(dir_syncs[0].contains("(INJECTED)"), "{syncs:#?}");
    assert!(dir_syncs[1].ends_with("= 0"), "synced again: {syncs:#?}");
}
