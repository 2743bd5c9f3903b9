//! Issue #21, point 6: a `StateFile` under crashes. A child process serves
//! 16 concurrent updaters, each adding fresh ids to the state and
//! reporting each id before its update (`sent`) and once the update
//! returned `Ok` (`ack`). The parent SIGKILLs it at random moments, or cuts
//! the power of its filesystem, and after every crash checks that the file
//! parses, holds every id ever acknowledged, and no id never sent; then it
//! starts the child again on the same file (which sweeps and reloads it).
//!
//! Root and loop mounts are needed (ext4 with a journal for the kills,
//! ext4 and xfs for the cuts): a visible skip elsewhere, a failure in CI.
//! `TAW_STATE_KILLS` sets the kills (100 by default, what CI runs),
//! `TAW_STATE_CUTS` the cuts per filesystem (30), `TAW_SEED` the seed.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::power::PowerFs;
use common::*;
use serde::{Deserialize, Serialize};
use tokio_atomic_write::StateFile;

const STATE: &str = "ids.json";
const UPDATERS: u64 = 16;
const CHILD: &str = "child_state_server";

#[derive(Clone, Default, Serialize, Deserialize)]
struct Ids {
    ids: Vec<u64>,
}

/// The child: 16 updaters adding ids from `TAW_BASE` on, to the state in
/// `TAW_TARGET`, until killed (or until every updater has failed).
#[test]
fn child_state_server() {
    if !is_child() {
        return;
    }
    let path = PathBuf::from(std::env::var_os("TAW_TARGET").unwrap());
    let base: u64 = std::env::var("TAW_BASE").unwrap().parse().unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |line: String| {
        let mut out = out.lock().unwrap();
        // One `write` per line: lines from the updaters never mix.
        out.write_all(format!("taw:{line}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    };
    let rt = runtime();
    rt.block_on(async {
        let state = match StateFile::open(&path, Ids::default).await {
            Ok(state) => state,
            Err(e) => return say(format!("err open {e}")),
        };
        say("ready".to_string());
        let updaters: Vec<_> = (0..UPDATERS)
            .map(|k| {
                let (state, say) = (state.clone(), say.clone());
                tokio::spawn(async move {
                    for j in 0.. {
                        let id = base + k * 1_000_000 + j;
                        say(format!("sent {id}"));
                        match state.update(|s| s.ids.push(id)).await {
                            Ok(()) => say(format!("ack {id}")),
                            Err(e) => return say(format!("err {id} {e}")),
                        }
                    }
                })
            })
            .collect();
        for u in updaters {
            u.await.unwrap();
        }
    });
}

/// What a child reported.
#[derive(Default, Debug)]
struct Reports {
    ready: bool,
    sent: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    errors: Vec<String>,
    closed: bool,
}

/// A running child, reporting; killed when dropped.
struct Server {
    child: Child,
    reports: Arc<(Mutex<Reports>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(dir: &Path, base: u64) -> Server {
        let mut child = child_command(CHILD, &[])
            .env("TAW_TARGET", dir.join(STATE))
            .env("TAW_BASE", base.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reports = Arc::new((Mutex::new(Reports::default()), Condvar::new()));
        let shared = reports.clone();
        let reader = std::thread::spawn(move || {
            let (lock, changed) = &*shared;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some((_, report)) = line.split_once("taw:") else {
                    continue;
                };
                let mut r = lock.lock().unwrap();
                let (what, rest) = report.split_once(' ').unwrap_or((report, ""));
                match what {
                    "ready" => r.ready = true,
                    "sent" => assert!(r.sent.insert(rest.parse().unwrap())),
                    "ack" => {
                        let id = rest.parse().unwrap();
                        assert!(r.sent.contains(&id), "acked {id}, never sent");
                        assert!(r.acked.insert(id));
                    }
                    "err" => r.errors.push(rest.to_string()),
                    other => panic!("unknown report {other:?}"),
                }
                changed.notify_all();
            }
            lock.lock().unwrap().closed = true;
            changed.notify_all();
        });
        Server {
            child,
            reports,
            reader: Some(reader),
        }
    }

    /// Waits until `done` holds, or `limit` has passed.
    fn wait_for(&self, limit: Duration, done: impl Fn(&Reports) -> bool) {
        let (lock, changed) = &*self.reports;
        let guard = lock.lock().unwrap();
        drop(
            changed
                .wait_timeout_while(guard, limit, |r| !done(r))
                .unwrap(),
        );
    }

    /// SIGKILLs it, and returns everything it reported.
    fn kill(mut self) -> Reports {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.reports.0.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every id ever acknowledged, and every id ever sent, across restarts.
#[derive(Default)]
struct Ledger {
    sent: BTreeSet<u64>,
    acked: BTreeSet<u64>,
}

impl Ledger {
    fn add(&mut self, r: &Reports) {
        self.sent.extend(&r.sent);
        self.acked.extend(&r.acked);
    }

    /// Checks the file after a crash: it parses, holds every id
    /// acknowledged and none never sent. Returns how many ids it holds.
    fn judge(&self, path: &Path, what: &str) -> usize {
        let ids = match std::fs::read(path) {
            Ok(bytes) => {
                let ids: Ids = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: the file does not parse: {e}"));
                ids.ids
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => panic!("{what}: {e}"),
        };
        let held: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(held.len(), ids.len(), "{what}: an id twice");
        let lost: Vec<_> = self.acked.difference(&held).take(5).collect();
        assert!(lost.is_empty(), "{what}: acknowledged ids lost: {lost:?}");
        let invented: Vec<_> = held.difference(&self.sent).take(5).collect();
        assert!(invented.is_empty(), "{what}: ids never sent: {invented:?}");
        held.len()
    }
}

fn from_env(name: &str, default: u32) -> u32 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap())
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_update() {
    if is_child() {
        return;
    }
    let kills = from_env("TAW_STATE_KILLS", 100);
    let (mut rng, seed) = Rng::from_env();
    let Some((_mount, dir)) = require_image("ext4", &[]) else {
        return;
    };
    eprintln!("state kills: {kills}, TAW_SEED={seed}");
    let path = dir.join(STATE);
    let mut ledger = Ledger::default();
    let (mut kills_after_an_ack, mut held) = (0, 0);
    for kill in 0..kills {
        let server = Server::start(&dir, u64::from(kill) * 100_000_000);
        // From its start on, so that some kills land in `open` too.
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        let reports = server.kill();
        assert!(
            reports.errors.is_empty(),
            "kill {kill}: {:?}",
            reports.errors
        );
        kills_after_an_ack += u32::from(!reports.acked.is_empty());
        ledger.add(&reports);
        held = ledger.judge(&path, &format!("kill {kill} (TAW_SEED={seed})"));
    }
    eprintln!(
        "state kills: {kills} kills, {} updates acknowledged, {kills_after_an_ack} kills after \
         an ack, {held} ids in the file at the end, {} sent",
        ledger.acked.len(),
        ledger.sent.len()
    );
    // The kills must land across the server's life, not only at its start.
    assert!(
        kills_after_an_ack * 2 >= kills,
        "{kills_after_an_ack} of {kills}"
    );
    assert!(
        temp_files(&dir).len() <= 1,
        "the last kill leaves at most one"
    );
}

#[test]
fn power_cuts_at_random_moments_lose_no_acknowledged_update() {
    if is_child() {
        return;
    }
    let cuts = from_env("TAW_STATE_CUTS", 30);
    for fs in ["ext4", "xfs"] {
        let (mut rng, seed) = Rng::from_env();
        let Some(mut power) = PowerFs::new(fs, "") else {
            return;
        };
        eprintln!("state cuts: {fs}: {cuts} cuts, TAW_SEED={seed}");
        let dir = power.work();
        let path = dir.join(STATE);
        let mut ledger = Ledger::default();
        let (mut cuts_after_an_ack, mut failed_after_cut) = (0, 0);
        for cut in 0..cuts {
            let server = Server::start(&dir, u64::from(cut) * 100_000_000);
            server.wait_for(Duration::from_secs(60), |r| r.ready || r.closed);
            std::thread::sleep(Duration::from_micros(rng.below(150_000)));
            power.cut();
            // Every updater's commit fails on the dead filesystem: none
            // may return Ok from now on (but those already returning).
            server.wait_for(Duration::from_secs(10), |r| {
                r.errors.len() == UPDATERS as usize || r.closed
            });
            let reports = server.kill();
            power.remount();
            failed_after_cut += u32::from(reports.errors.len() == UPDATERS as usize);
            cuts_after_an_ack += u32::from(!reports.acked.is_empty());
            ledger.add(&reports);
            ledger.judge(&path, &format!("{fs}, cut {cut} (TAW_SEED={seed})"));
            // Leftovers go with the next open's sweep.
        }
        eprintln!(
            "state cuts: {fs}: {cuts} cuts, {} updates acknowledged, {cuts_after_an_ack} cuts \
             after an ack, {failed_after_cut} with every updater failed by the cut",
            ledger.acked.len()
        );
        assert!(
            cuts_after_an_ack * 2 >= cuts,
            "{fs}: {cuts_after_an_ack} of {cuts}"
        );
        assert_eq!(
            failed_after_cut, cuts,
            "{fs}: every updater fails after a cut"
        );
    }
}
