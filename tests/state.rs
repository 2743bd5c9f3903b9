//! Issue #21: `StateFile`, a JSON state with group commit.
//!
//! Every point of the issue's semantics, driven deterministically: a commit
//! is held in flight by a gate in the state's own `Serialize` impl (which
//! the commit job calls on the blocking pool), or by holding the only
//! thread of the blocking pool; updates are polled by hand, so that "`f`
//! ran, the update waits" is a fact, not a timing. Commits are counted by
//! their `commit` spans (feature `tracing`). The injected I/O failures
//! (a failed `fsync` of the temp file, of the directory) run the state in
//! a child process under strace.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use serde::{Deserialize, Serialize};
use tokio_atomic_write::{Durability, Op, OpenOptions, StateFile};
use tokio_test::{assert_pending, task};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const STATE: &str = "state.json";

/// The state of most tests: ids pushed by updates, and a gate that can
/// hold (and fail) the next commit's serialisation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Log {
    ids: Vec<u32>,
    #[serde(skip_deserializing)]
    gate: Gate,
}

fn log_of(ids: &[u32], gate: &Gate) -> Log {
    Log {
        ids: ids.to_vec(),
        gate: gate.clone(),
    }
}

fn push(id: u32) -> impl FnOnce(&mut Log) -> usize {
    move |log| {
        log.ids.push(id);
        log.ids.len()
    }
}

/// The answer of an update that the test let wait, with a liveness bound
/// against a hang (an update no commit will ever answer), not a timing.
fn answer<F: std::future::Future>(rt: &tokio::runtime::Runtime, update: F) -> F::Output {
    let bounded = tokio::time::timeout(std::time::Duration::from_secs(60), update);
    rt.block_on(bounded)
        .expect("the update was never answered: stranded in a batch")
}

/// A state holding `[0]`, not yet written, in a fresh directory, with the
/// gate its `Serialize` consults.
struct Gated {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    gate: Gate,
    state: StateFile<Log>,
}

fn gated() -> Gated {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let gate = Gate::default();
    let state = rt
        .block_on(StateFile::open(&path, || log_of(&[0], &gate)))
        .unwrap();
    Gated {
        _dir: dir,
        path,
        rt,
        gate,
        state,
    }
}

/// Starts an update pushing `id` (inside a runtime's context), and holds
/// the commit that carries it at `gate`, in flight: the update waits,
/// polled once, so its `f` has run.
fn hold_commit<'a>(
    state: &'a StateFile<Log>,
    gate: &Gate,
    id: u32,
) -> (
    task::Spawn<impl std::future::Future<Output = Result<usize, tokio_atomic_write::Error>> + 'a>,
    Held,
) {
    let held = gate.arm();
    let mut update = task::spawn(state.update(push(id)));
    assert_pending!(update.poll());
    held.wait_reached();
    (update, held)
}

/// A state opened with the defaults on a fresh directory (no file yet),
/// and a runtime.
fn opened() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    tokio::runtime::Runtime,
    StateFile<Log>,
) {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let state = rt.block_on(StateFile::open(&path, Log::default)).unwrap();
    (dir, path, rt, state)
}

fn ids(state: &StateFile<Log>) -> Vec<u32> {
    state.read(|log| log.ids.clone())
}

/// Shared by every clone of a state: when armed, the next serialisation
/// says it has started, waits for the word, and then succeeds or fails.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<Option<Armed>>>);

struct Armed {
    reached: mpsc::Sender<()>,
    go: mpsc::Receiver<bool>,
}

/// The test's side of an armed gate.
struct Held {
    reached: mpsc::Receiver<()>,
    go: mpsc::Sender<bool>,
}

impl Held {
    /// Waits until a commit is in its serialisation, held.
    fn wait_reached(&self) {
        self.reached.recv().expect("a commit reached the gate");
    }

    /// Lets it go on, to succeed (`true`) or fail.
    fn release(self, succeed: bool) {
        self.go.send(succeed).unwrap();
    }
}

impl Gate {
    fn arm(&self) -> Held {
        let (reached_tx, reached) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        *self.0.lock().unwrap() = Some(Armed {
            reached: reached_tx,
            go: go_rx,
        });
        Held { reached, go }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Serialize for Gate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let armed = self.0.lock().unwrap().take();
        if let Some(armed) = armed {
            armed.reached.send(()).unwrap();
            if !armed.go.recv().unwrap() {
                return Err(serde::ser::Error::custom("the gate failed it"));
            }
        }
        s.serialize_unit()
    }
}

// ---------------------------------------------------------------------
// Commit spans, counted per path, with the most in flight at once.

#[derive(Default, Clone, Copy, Debug)]
struct Commits {
    started: usize,
    in_flight: usize,
    most_in_flight: usize,
}

/// Commit spans by id (to their path), and commits by path.
type Table = (HashMap<u64, String>, HashMap<String, Commits>);

static COMMITS: OnceLock<Mutex<Table>> = OnceLock::new();

fn commits_table() -> &'static Mutex<Table> {
    COMMITS.get_or_init(Mutex::default)
}

struct CommitCounter;

struct PathField(Option<String>);

impl tracing::field::Visit for PathField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "path" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CommitCounter {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() != "commit" {
            return;
        }
        let mut path = PathField(None);
        attrs.record(&mut path);
        let path = path.0.unwrap_or_default();
        let mut t = commits_table().lock().unwrap();
        t.1.entry(path.clone()).or_default().started += 1;
        t.0.insert(id.into_u64(), path);
    }

    fn on_enter(&self, id: &Id, _: Context<'_, S>) {
        let mut t = commits_table().lock().unwrap();
        if let Some(path) = t.0.get(&id.into_u64()).cloned() {
            let c = t.1.get_mut(&path).unwrap();
            c.in_flight += 1;
            c.most_in_flight = c.most_in_flight.max(c.in_flight);
        }
    }

    fn on_exit(&self, id: &Id, _: Context<'_, S>) {
        let mut t = commits_table().lock().unwrap();
        if let Some(path) = t.0.get(&id.into_u64()).cloned() {
            t.1.get_mut(&path).unwrap().in_flight -= 1;
        }
    }
}

fn count_commits() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(CommitCounter);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The commits of `path` so far.
fn commits(path: &Path) -> Commits {
    let t = commits_table().lock().unwrap();
    t.1.get(&path.display().to_string())
        .copied()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------
// 1. Group commit.

/// One caller: each update is one trip to the blocking pool and one
/// commit, the file written at once. The runtime has no timer: a batching
/// delay would panic.
#[test]
fn one_caller_pays_one_hop_and_one_commit_per_update_and_no_delay() {
    count_commits();
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let state = StateFile::open(&path, || log_of(&[], &gate)).await.unwrap();
        assert_eq!(on_disk(&path), None, "nothing written before an update");
        for id in 1..=5u32 {
            let hops = tokio_atomic_write::__private::pool_hops_from_this_thread();
            let len = state.update(push(id)).await.unwrap();
            let after = tokio_atomic_write::__private::pool_hops_from_this_thread();
            assert_eq!((len, after - hops), (id as usize, 1), "update {id}");
            let expect: Vec<u32> = (1..=id).collect();
            assert_eq!(on_disk(&path).unwrap(), expect);
            assert_eq!(ids(&state), expect);
        }
        assert_eq!(commits(&path).started, 5);
        // Compact JSON, as write_json writes it.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, r#"{"ids":[1,2,3,4,5],"gate":null}"#);
    });
}

/// While a commit is held in flight, updates apply in order, none starts
/// a commit of its own, `read` and the file keep the committed state; once
/// it ends, the next commit carries them all, and each update returns only
/// after its change is committed and visible to `read`.
#[test]
fn updates_during_a_commit_share_the_next_one_and_read_sees_only_commits() {
    count_commits();
    let Gated {
        _dir,
        path,
        rt,
        gate,
        state,
    } = gated();
    let _in_rt = rt.enter();
    let (mut first, held) = hold_commit(&state, &gate, 1); // the first commit
    let later_gate = gate.arm(); // holds the second commit too
    let mut later: Vec<_> = (2..=9)
        .map(|id| {
            // `f` sees every change applied before it, committed or not.
            let state2 = state.clone();
            task::spawn(state.update(move |log: &mut Log| {
                assert_eq!(state2.read(|l| l.ids.clone()), [0], "read in f: committed");
                push(id)(log)
            }))
        })
        .collect();
    for u in &mut later {
        assert_pending!(u.poll());
    }
    assert_eq!(ids(&state), [0], "nothing committed yet");
    assert_eq!(on_disk(&path), None);
    assert_eq!(
        commits(&path).started,
        0,
        "the first commit is still serialising"
    );

    held.release(true);
    assert_eq!(answer(&rt, &mut first).unwrap(), 2);
    assert_eq!(ids(&state), [0, 1], "visible once update returned");
    assert_eq!(on_disk(&path).unwrap(), [0, 1]);
    later_gate.wait_reached(); // the second commit: all of 2..=9
    for u in &mut later {
        assert_pending!(u.poll(), "not committed yet");
    }
    assert_eq!(ids(&state), [0, 1]);
    later_gate.release(true);
    for (i, u) in later.iter_mut().enumerate() {
        assert_eq!(answer(&rt, u).unwrap(), i + 3);
    }
    let all: Vec<u32> = (0..=9).collect();
    assert_eq!((ids(&state), on_disk(&path).unwrap()), (all.clone(), all));
    let c = commits(&path);
    assert_eq!((c.started, c.most_in_flight), (2, 1), "{c:?}");
}

/// Many tasks at once on a real filesystem: every update returns its own
/// result, the file ends with every id, in fewer commits than updates, and
/// never two commits at once.
#[test]
fn concurrent_updaters_lose_nothing_and_commit_one_at_a_time() {
    count_commits();
    let (_dir, path, rt, state) = opened();
    let tasks: Vec<_> = (0..16u32)
        .map(|t| {
            let state = state.clone();
            rt.spawn(async move {
                for i in 0..20u32 {
                    let id = t * 100 + i;
                    state.update(push(id)).await.unwrap();
                    // Visible once returned, in memory and in the file.
                    assert!(state.read(|l| l.ids.contains(&id)));
                }
            })
        })
        .collect();
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let mut found = on_disk(&path).unwrap();
    assert_eq!(found.len(), 320);
    found.sort();
    let mut all: Vec<u32> = (0..16)
        .flat_map(|t| (0..20).map(move |i| t * 100 + i))
        .collect();
    all.sort();
    assert_eq!(found, all);
    let c = commits(&path);
    assert_eq!(c.most_in_flight, 1, "{c:?}");
    assert!(c.started < 320, "16 updaters shared no commit: {c:?}");
    eprintln!("320 updates from 16 tasks: {} commits", c.started);
}

// ---------------------------------------------------------------------
// 2. Failed commits.

/// A commit that fails (here its serialisation) fails the updates it
/// carried and those applied after it, with its error; the state goes
/// back to the last commit, on disk and in memory, and later updates start
/// from there.
#[test]
fn a_failed_commit_fails_its_updates_and_later_ones_and_resets_the_state() {
    let Gated {
        _dir,
        path,
        rt,
        gate,
        state,
    } = gated();
    rt.block_on(state.update(push(1))).unwrap();
    let _in_rt = rt.enter();
    let (mut carried, held) = hold_commit(&state, &gate, 2);
    let mut after = task::spawn(state.update(push(3)));
    assert_pending!(after.poll());
    held.release(false);
    let errors = [
        ("carried", answer(&rt, &mut carried).unwrap_err()),
        ("after", answer(&rt, &mut after).unwrap_err()),
    ];
    for (name, e) in errors {
        assert_eq!(
            (e.op(), e.path()),
            (Op::Serialize, path.as_path()),
            "{name}"
        );
        assert!(!e.is_published());
        assert!(e.to_string().contains("the gate failed it"), "{e}");
    }
    assert_eq!(ids(&state), [0, 1]);
    assert_eq!(on_disk(&path).unwrap(), [0, 1]);
    // From the committed state: 2 and 3 are gone.
    assert_eq!(rt.block_on(state.update(push(4))).unwrap(), 3);
    assert_eq!(on_disk(&path).unwrap(), [0, 1, 4]);
    assert!(temp_files(path.parent().unwrap()).is_empty());
}

// ---------------------------------------------------------------------
// 4. One owner, the sweep, panics, Debug.

#[test]
fn a_second_open_fails_at_once_naming_the_state_until_every_handle_is_gone() {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    rt.block_on(async {
        let state = StateFile::open(&path, Log::default).await.unwrap();
        let again = state.clone();
        let e = StateFile::<Log>::open(&path, Log::default)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!((e.op(), e.path()), (Op::Lock, path.as_path()));
        assert!(e.to_string().contains(STATE), "{e}");
        drop(state);
        let e = StateFile::<Log>::open(&path, Log::default)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "a clone still holds it"
        );
        drop(again);
        StateFile::<Log>::open(&path, Log::default).await.unwrap();
    });
}

/// `update` of the same path, which takes the same lock file, waits while
/// a `StateFile` holds it: it reads the state's last commit, made after it
/// started waiting.
#[test]
fn an_update_of_the_path_waits_for_the_state_to_be_dropped() {
    let (_dir, path, rt, state) = opened();
    rt.block_on(state.update(push(1))).unwrap();
    let seen = Arc::new(Mutex::new(None));
    let waiting = {
        let (path, seen) = (path.clone(), seen.clone());
        rt.spawn(tokio_atomic_write::update(path, move |old| {
            *seen.lock().unwrap() = old.clone();
            Ok::<_, tokio_atomic_write::Error>(br#"{"ids":[7]}"#.to_vec())
        }))
    };
    for id in 2..=4 {
        rt.block_on(state.update(push(id))).unwrap();
    }
    assert!(
        seen.lock().unwrap().is_none(),
        "the update ran under the state"
    );
    drop(state);
    rt.block_on(waiting).unwrap().unwrap();
    let read: serde_json::Value =
        serde_json::from_slice(seen.lock().unwrap().as_ref().unwrap()).unwrap();
    assert_eq!(read["ids"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(on_disk(&path).unwrap(), [7]);
}

/// `lock_file(false)`: no lock, so a second owner is not refused (one
/// owner is then the caller's promise), and no lock file is made.
#[test]
fn without_a_lock_file_nothing_refuses_a_second_owner() {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let mut opts = OpenOptions::new();
    opts.lock_file(false);
    rt.block_on(async {
        let a = StateFile::<Log>::open_with(&opts, &path, Log::default)
            .await
            .unwrap();
        let b = StateFile::<Log>::open_with(&opts, &path, Log::default)
            .await
            .unwrap();
        a.update(push(1)).await.unwrap();
        b.update(push(2)).await.unwrap();
    });
    assert_eq!(on_disk(&path).unwrap(), [2], "the second owner overwrote");
    assert_eq!(listing(dir.path()), [STATE]);
}

/// Dropping every handle while a commit is in flight keeps the lock until
/// that commit has ended; an update whose future was dropped after `f`
/// ran is committed all the same (5).
#[test]
fn the_lock_outlives_the_handles_until_the_commit_in_flight_ends() {
    let Gated {
        _dir,
        path,
        rt,
        gate,
        state,
    } = gated();
    let _in_rt = rt.enter();
    let (update, held) = hold_commit(&state, &gate, 1);
    drop(update); // after f ran: not undone
    drop(state);
    let e = rt
        .block_on(StateFile::<Log>::open(&path, Log::default))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "still committing");
    held.release(true);
    // The job ends on its own now; wait for its lock to go (a liveness
    // bound against a hang, not a timing).
    let reopened = (0..1000)
        .find_map(
            |_| match rt.block_on(StateFile::<Log>::open(&path, Log::default)) {
                Ok(s) => Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                Err(e) => panic!("{e}"),
            },
        )
        .expect("the lock was released within 10 s");
    assert_eq!(ids(&reopened), [0, 1], "the dropped update was committed");
}

/// 5. An update dropped before its first poll does nothing: `f` never runs.
#[test]
fn an_update_dropped_before_its_first_poll_does_nothing() {
    let (_dir, path, rt, state) = opened();
    let ran = Arc::new(Mutex::new(false));
    let flag = ran.clone();
    let never = state.update(move |log: &mut Log| {
        *flag.lock().unwrap() = true;
        log.ids.push(1)
    });
    drop(never);
    assert!(!*ran.lock().unwrap());
    rt.block_on(state.update(push(2))).unwrap();
    assert_eq!(on_disk(&path).unwrap(), [2]);
}

/// A runtime shutting down drops a blocking job it has not started: a
/// commit job lost so fails its updates (`Op::Commit`, nothing written)
/// instead of leaving them waiting for ever, and the state takes updates
/// again on another runtime.
#[test]
fn a_commit_job_dropped_unrun_at_shutdown_fails_its_updates() {
    let (_dir, path, rt, state) = opened();
    let handle = rt.handle().clone();
    rt.shutdown_background();
    // The update's job is handed to a pool that has shut down.
    let in_rt = handle.enter();
    let mut update = task::spawn(state.update(push(1)));
    let first = update.poll();
    drop(in_rt);
    let rt = runtime();
    let e = match first {
        std::task::Poll::Ready(r) => r.unwrap_err(),
        std::task::Poll::Pending => answer(&rt, &mut update).unwrap_err(),
    };
    assert_eq!((e.op(), e.path()), (Op::Commit, path.as_path()));
    assert!(e.to_string().contains("lost"), "{e}");
    assert_eq!(on_disk(&path), None, "nothing written");
    assert_eq!(ids(&state), Vec::<u32>::new());
    rt.block_on(state.update(push(2))).unwrap();
    assert_eq!((ids(&state), on_disk(&path).unwrap()), (vec![2], vec![2]));
}

/// `open` sweeps the state's own leftovers that no live writer holds:
/// not a live writer's, nor another file's.
#[test]
fn open_sweeps_the_states_own_dead_leftovers_only() {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let dead = dir.path().join(".state.json.AAAAAAAAAAAA.tmp");
    let live = dir.path().join(".state.json.BBBBBBBBBBBB.tmp");
    let other = dir.path().join(".other.json.CCCCCCCCCCCC.tmp");
    for p in [&dead, &live, &other] {
        std::fs::write(p, b"partial").unwrap();
    }
    let held = std::fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let _state = rt.block_on(StateFile::open(&path, Log::default)).unwrap();
    assert!(!dead.exists(), "the dead leftover is removed");
    assert!(live.exists() && other.exists());
}

/// Runs an update whose `f` pushes 99 and panics, in a task of its own,
/// and checks that the task ended with that very panic.
fn update_that_panics(rt: &tokio::runtime::Runtime, state: &StateFile<Log>) {
    let s = state.clone();
    let panicked = rt
        .block_on(rt.spawn(async move {
            s.update(|log: &mut Log| {
                log.ids.push(99);
                panic!("a bug in f");
            })
            .await
        }))
        .unwrap_err();
    let payload = panicked.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"a bug in f"));
}

/// A panic in `f` is resumed in the caller, and undoes `f`'s changes: with
/// no other update waiting, the state, and the next commit, are as if it
/// had never run.
#[test]
fn a_panic_in_f_is_resumed_and_changes_nothing() {
    let (_dir, path, rt, state) = opened();
    rt.block_on(state.update(push(1))).unwrap();
    update_that_panics(&rt, &state);
    rt.block_on(state.update(push(2))).unwrap();
    assert_eq!(
        (ids(&state), on_disk(&path).unwrap()),
        (vec![1, 2], vec![1, 2])
    );
}

/// A panic in `f` while another update waits for the next commit undoes
/// that one too (the working copy goes back to the snapshot in flight),
/// which fails with `Op::Apply`; the commit in flight goes on.
#[test]
fn a_panic_in_f_undoes_the_updates_queued_behind_the_commit_in_flight() {
    let Gated {
        _dir,
        path,
        rt,
        gate,
        state,
    } = gated();
    let _in_rt = rt.enter();
    let (mut in_flight, held) = hold_commit(&state, &gate, 1);
    let mut queued = task::spawn(state.update(push(2)));
    assert_pending!(queued.poll());
    update_that_panics(&rt, &state);
    let e = answer(&rt, &mut queued).unwrap_err();
    assert_eq!((e.op(), e.path()), (Op::Apply, path.as_path()));
    assert!(e.to_string().contains("panicked"), "{e}");
    held.release(true);
    answer(&rt, &mut in_flight).unwrap();
    assert_eq!(
        (ids(&state), on_disk(&path).unwrap()),
        (vec![0, 1], vec![0, 1])
    );
    rt.block_on(state.update(push(3))).unwrap();
    assert_eq!(on_disk(&path).unwrap(), [0, 1, 3]);
}

/// A handle goes to other tasks and threads, and so does an update.
#[test]
fn a_state_file_and_its_updates_are_send_and_sync() {
    fn send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn send<F: std::future::Future + Send>(f: F) -> F {
        f
    }
    let dir = scratch();
    let rt = runtime();
    let state = rt
        .block_on(StateFile::open(dir.path().join(STATE), Log::default))
        .unwrap();
    send_sync(&state);
    rt.block_on(send(state.update(push(1)))).unwrap();
    assert_eq!(ids(&state), [1]);
}

/// `Debug` needs no `T: Debug`, and names the path.
#[test]
fn debug_needs_no_debug_of_the_state() {
    #[derive(Clone, Default, Serialize, Deserialize)]
    struct Opaque {
        n: u32,
    }
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    let state = rt
        .block_on(StateFile::open(&path, Opaque::default))
        .unwrap();
    let text = format!("{state:?}");
    assert!(
        text.starts_with("StateFile {") && text.contains(STATE),
        "{text}"
    );
    assert_eq!(state.path(), path);
}

// ---------------------------------------------------------------------
// Loading, and bad input.

#[test]
fn open_loads_the_file_and_a_missing_one_is_init_until_the_first_commit() {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    rt.block_on(async {
        let state = StateFile::open(&path, || Log {
            ids: vec![42],
            ..Log::default()
        })
        .await
        .unwrap();
        assert_eq!(ids(&state), [42]);
        state.update(push(1)).await.unwrap();
        drop(state);
        // Loaded: `init` is not called.
        let state = StateFile::<Log>::open(&path, || unreachable!("the file exists"))
            .await
            .unwrap();
        assert_eq!(ids(&state), [42, 1]);
    });
}

#[test]
fn bad_input_fails_open_naming_path_and_step_and_changes_nothing() {
    let dir = scratch();
    let path = dir.path().join(STATE);
    let rt = runtime();
    rt.block_on(async {
        std::fs::write(&path, b"{\"ids\": [1,").unwrap();
        let e = StateFile::<Log>::open(&path, Log::default)
            .await
            .unwrap_err();
        assert_eq!((e.op(), e.path()), (Op::Deserialize, path.as_path()));
        assert!(e.to_string().contains("line 1"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"ids\": [1,");
        // The lock went with the failed open.
        let e = StateFile::<Log>::open(&path, Log::default)
            .await
            .unwrap_err();
        assert_eq!(e.op(), Op::Deserialize);

        let e = StateFile::<Log>::open(dir.path(), Log::default)
            .await
            .unwrap_err();
        assert_eq!(
            (e.op(), e.kind()),
            (Op::Open, std::io::ErrorKind::IsADirectory)
        );

        let missing = dir.path().join("nope").join(STATE);
        let e = StateFile::<Log>::open(&missing, Log::default)
            .await
            .unwrap_err();
        assert_eq!(
            (e.op(), e.kind()),
            (Op::OpenDir, std::io::ErrorKind::NotFound)
        );

        let mut no_clobber = OpenOptions::new();
        no_clobber.overwrite(false).durability(Durability::None);
        let other = dir.path().join("other.json");
        let e = StateFile::<Log>::open_with(&no_clobber, &other, Log::default)
            .await
            .unwrap_err();
        assert_eq!(
            (e.op(), e.kind()),
            (Op::Open, std::io::ErrorKind::InvalidInput)
        );
        assert!(!other.exists());
    });
    assert_eq!(listing(dir.path()), [".state.json.lock", STATE]);
}
