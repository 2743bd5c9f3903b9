//! The writer of the crash and power-loss tests: the test binary, re-run
//! as a child, commits numbered self-checking versions of one file and
//! reports each acknowledged commit on its stdout; the parent reads those
//! reports while it kills the writer or cuts the power under it.
//!
//! The child's protocol, one line each (the first may share its line with
//! libtest's `test ... `): `taw:pid {pid}` once started, `taw:ack {id}` once
//! the commit of version `id` has returned `Ok`, and `taw:err {id} {op:?}
//! {error}` when it returned an error, after which the writer stops.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{check_tagged, crash_body_len, listing, tagged_version, CHILD_ENV};

/// The file the writer commits, in its directory.
pub const TARGET: &str = "versions.bin";

/// What a writer commits, and how.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The first version's id.
    pub start: u32,
    /// An `O_TMPFILE` temp file where the filesystem has one.
    pub unnamed: bool,
    /// `overwrite(false)`: publish only where the target does not exist.
    pub no_clobber: bool,
    /// How many versions to commit before exiting; `u32::MAX`, until killed.
    pub count: u32,
    /// The largest body: `crash_body_len(id)` is cut down to it.
    pub max_body: usize,
}

impl Plan {
    /// Versions from `start` on, until killed, of up to 4 MiB.
    pub fn endless(start: u32, unnamed: bool) -> Plan {
        Plan {
            start,
            unnamed,
            no_clobber: false,
            count: u32::MAX,
            max_body: 4 << 20,
        }
    }

    fn to_env(self) -> String {
        let Plan {
            start,
            unnamed,
            no_clobber,
            count,
            max_body,
        } = self;
        format!("{start} {unnamed} {no_clobber} {count} {max_body}")
    }

    fn from_env(s: &str) -> Plan {
        let f: Vec<&str> = s.split(' ').collect();
        Plan {
            start: f[0].parse().unwrap(),
            unnamed: f[1].parse().unwrap(),
            no_clobber: f[2].parse().unwrap(),
            count: f[3].parse().unwrap(),
            max_body: f[4].parse().unwrap(),
        }
    }

    /// The content of version `id` under this plan.
    pub fn version(&self, id: u32) -> Vec<u8> {
        tagged_version(id, crash_body_len(id) % (self.max_body + 1))
    }
}

const DIR_ENV: &str = "TAW_WRITER_DIR";
const PLAN_ENV: &str = "TAW_WRITER_PLAN";

/// The child's side: commits the versions of the plan in the environment.
///
/// One blocking-pool thread: a commit is one hop on it, so that strace's
/// per-thread call counts (`inject=...:when=N`) count the calls of the
/// writer's commits and nothing else.
pub fn writer_main() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect(DIR_ENV));
    let plan = Plan::from_env(&std::env::var(PLAN_ENV).expect(PLAN_ENV));
    let target = dir.join(TARGET);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "taw:{line}").unwrap();
        out.flush().unwrap();
    };
    say(format!("pid {}", std::process::id()));
    rt.block_on(async {
        for id in plan.start..plan.start.saturating_add(plan.count) {
            match commit(&target, id, &plan).await {
                Ok(()) => say(format!("ack {id}")),
                Err(e) => {
                    say(format!("err {id} {:?} {e}: {}", e.op(), e.io_error()));
                    return;
                }
            }
        }
    });
}

async fn commit(target: &Path, id: u32, plan: &Plan) -> Result<(), tokio_atomic_write::Error> {
    let mut file = tokio_atomic_write::OpenOptions::new()
        .unnamed_temp(plan.unnamed)
        .overwrite(!plan.no_clobber)
        .open(target)
        .await?;
    // Made while the file is open, like a real producer's data.
    let content = plan.version(id);
    // Streamed in 64 KiB writes, as `tokio::io::copy` would.
    for chunk in content.chunks(64 << 10) {
        if let Err(e) = file.write_all(chunk).await {
            // The pipeline's sticky error, with its step, comes from commit.
            drop(e);
            break;
        }
    }
    file.commit().await
}

/// What a writer reported so far.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    pub pid: Option<u32>,
    /// Acknowledged versions, in order.
    pub acks: Vec<u32>,
    /// `(id, op, message)` of the commit that failed, if one did.
    pub error: Option<(u32, String, String)>,
    /// Whether its stdout is closed: it has exited.
    pub closed: bool,
}

impl Reports {
    pub fn last_ack(&self) -> Option<u32> {
        self.acks.last().copied()
    }
}

/// The parent's side: a running writer.
pub struct Writer {
    child: Child,
    reports: Arc<(Mutex<Reports>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer: the single test `test` of this test binary,
    /// through `wrap` (e.g. `strace` and its arguments), committing into
    /// `dir` as `plan` says. Returns once it has reported its pid, so that
    /// the writer itself (not a wrapper) can be killed.
    pub fn spawn(test: &str, wrap: &[&str], dir: &Path, plan: Plan) -> Writer {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env(DIR_ENV, dir)
            .env(PLAN_ENV, plan.to_env())
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
                let (what, rest) = report.split_once(' ').unwrap();
                match what {
                    "pid" => r.pid = Some(rest.parse().unwrap()),
                    "ack" => {
                        let id: u32 = rest.parse().unwrap();
                        let next = r.last_ack().map_or(plan.start, |l| l + 1);
                        assert_eq!(id, next, "acks in order");
                        r.acks.push(id);
                    }
                    "err" => {
                        let mut f = rest.splitn(3, ' ');
                        let id = f.next().unwrap().parse().unwrap();
                        let op = f.next().unwrap().to_string();
                        r.error = Some((id, op, f.next().unwrap_or("").to_string()));
                    }
                    other => panic!("unknown report {other:?}"),
                }
                changed.notify_all();
            }
            lock.lock().unwrap().closed = true;
            changed.notify_all();
        });
        let writer = Writer {
            child,
            reports,
            reader: Some(reader),
        };
        let started = writer.wait_for(Duration::from_secs(60), |r| r.pid.is_some() || r.closed);
        assert!(
            started.pid.is_some(),
            "the writer did not start: {started:?}"
        );
        writer
    }

    /// The reports so far.
    pub fn reports(&self) -> Reports {
        self.reports.0.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the reports, or `limit` has passed;
    /// returns the reports.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&Reports) -> bool) -> Reports {
        let (lock, changed) = &*self.reports;
        let guard = lock.lock().unwrap();
        let (guard, _) = changed
            .wait_timeout_while(guard, limit, |r| !done(r))
            .unwrap();
        guard.clone()
    }

    /// The writer's pid (not its wrapper's).
    pub fn pid(&self) -> u32 {
        self.reports().pid.unwrap()
    }

    /// SIGKILLs the writer if it still runs, waits for it (and its
    /// wrapper), and returns its exit status and everything it reported.
    pub fn kill(mut self) -> (ExitStatus, Reports) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        // ESRCH when it has exited already.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        self.wait()
    }

    /// Waits for the writer to exit on its own.
    pub fn wait(&mut self) -> (ExitStatus, Reports) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.reports())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.reader.is_some() {
            // A test failed with the writer running: do not leave it behind
            // holding a mount busy.
            if let Some(pid) = self.reports().pid {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the target holds after a cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Found {
    Absent,
    Whole(u32),
    Torn(usize),
}

pub fn found(target: &Path) -> Found {
    match std::fs::read(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Absent,
        Err(e) => panic!("read {}: {e}", target.display()),
        Ok(bytes) => check_tagged(&bytes).map_or(Found::Torn(bytes.len()), Found::Whole),
    }
}

/// Judges what a cut left against what the writer reported: the target
/// must be whole, and the last acknowledged version (`on_disk` when there
/// was none) or the one in flight after it. Every `Ok` counts, also one
/// reported after the cut: a commit returns `Ok` only once it is durable.
/// Returns the version found, or what was lost.
pub fn judge(found: Found, on_disk: u32, reports: &Reports) -> Result<u32, String> {
    let acked = reports.last_ack().unwrap_or(on_disk);
    match found {
        Found::Whole(id) if id == acked || id == acked + 1 => Ok(id),
        Found::Whole(id) if id < acked => Err(format!(
            "acknowledged commit lost: version {id} on disk, {acked} acknowledged"
        )),
        Found::Whole(id) => Err(format!("version {id} on disk, newer than any in flight")),
        Found::Torn(len) => Err(format!("torn target: {len} bytes, {acked} acknowledged")),
        Found::Absent => Err(format!("target gone, {acked} acknowledged")),
    }
}

/// Sweeps `dir` and checks that it removed exactly `left`, and that only
/// the target (if any) remains.
pub fn sweep_exactly(rt: &tokio::runtime::Runtime, dir: &Path, left: &[std::ffi::OsString]) {
    let report = rt
        .block_on(tokio_atomic_write::sweep(dir, Duration::ZERO))
        .unwrap();
    let removed: Vec<_> = report
        .removed
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(removed, left, "sweep removes exactly the leftovers");
    assert!(
        report.in_use.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let rest = listing(dir);
    assert!(
        rest.is_empty() || rest == [std::ffi::OsString::from(TARGET)],
        "after sweep: {rest:?}"
    );
}

/// A commit weakened on purpose, by strace turning one of its fsyncs into
/// a no-op that returns 0: the checker must see what that loses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weakened {
    No,
    /// The temp file's fsync before the rename (a commit's first).
    SkipFileSync,
    /// The directory's fsync after it (a commit's second).
    SkipDirSync,
}

impl Weakened {
    /// The wrapper that weakens the writer, logging to `log`. The writer
    /// runs its commits on one blocking-pool thread, and strace counts per
    /// thread: every commit there makes two fsyncs (ext4 with a journal,
    /// xfs), the temp file's then the directory's.
    pub fn wrap(self, log: &Path) -> Vec<String> {
        let when = match self {
            Weakened::No => return Vec::new(),
            Weakened::SkipFileSync => "1+2",
            Weakened::SkipDirSync => "2+2",
        };
        [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-y",
            "-e",
            "trace=fsync",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "-e".into(),
            format!("inject=fsync:retval=0:when={when}"),
            "-o".into(),
            log.display().to_string(),
        ])
        .collect()
    }

    /// Checks in strace's log that only the intended fsyncs were skipped;
    /// returns how many were.
    pub fn check_log(self, log: &Path, dir: &Path) -> usize {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let dir = format!("<{}>", dir.display());
        let mut skipped = 0;
        for line in text.lines().filter(|l| l.contains("INJECTED")) {
            let on_dir = line.contains(&dir);
            assert_eq!(
                on_dir,
                self == Weakened::SkipDirSync,
                "{self:?} skipped the wrong fsync: {line}"
            );
            skipped += 1;
        }
        skipped
    }
}
