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
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{check_tagged, child_command, crash_body_len, listing, tagged_version};

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
    /// The largest body: the body of version `id` is `crash_body_len(id)`
    /// modulo `max_body + 1`.
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
                    let (op, published) = (e.op(), e.is_published());
                    say(format!("err {id} {op:?} {published} {e}: {}", e.io_error()));
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
    /// The commit that failed, if one did.
    pub error: Option<Failed>,
    /// Whether its stdout is closed: it has exited.
    pub closed: bool,
}

impl Reports {
    pub fn last_ack(&self) -> Option<u32> {
        self.acks.last().copied()
    }
}

/// A commit that returned an error.
#[derive(Clone, Debug)]
pub struct Failed {
    pub id: u32,
    /// The step it names (`Op`'s `Debug`).
    pub op: String,
    /// Whether the target may hold the new version already.
    pub published: bool,
    /// The error and its cause.
    pub message: String,
}

/// The parent's side: a running writer.
pub struct Writer {
    child: Child,
    /// A pidfd of the writer itself: a signal sent through it cannot reach
    /// another process that reused the pid once a wrapping strace has
    /// reaped the writer.
    ///
    /// `None` when the writer was gone before it could be opened: a crash
    /// point it reaches at once has strace kill it (and reap it) first.
    pidfd: Option<OwnedFd>,
    reports: Arc<(Mutex<Reports>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer: the single test `test` of this test binary,
    /// through `wrap` (e.g. `strace` and its arguments), committing into
    /// `dir` as `plan` says. Returns once it has reported its pid, so that
    /// the writer itself (not a wrapper) can be killed.
    pub fn spawn(test: &str, wrap: &[&str], dir: &Path, plan: Plan) -> Writer {
        let mut child = child_command(test, wrap)
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
                        let mut f = rest.splitn(4, ' ');
                        r.error = Some(Failed {
                            id: f.next().unwrap().parse().unwrap(),
                            op: f.next().unwrap().to_string(),
                            published: f.next().unwrap().parse().unwrap(),
                            message: f.next().unwrap_or("").to_string(),
                        });
                    }
                    other => panic!("unknown report {other:?}"),
                }
                changed.notify_all();
            }
            lock.lock().unwrap().closed = true;
            changed.notify_all();
        });
        let (lock, changed) = &*reports;
        let started = changed
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(60), |r| {
                r.pid.is_none() && !r.closed
            })
            .unwrap()
            .0
            .clone();
        let pid = started.pid.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the writer did not start: {started:?}")
        });
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        // The pid the writer reported. ESRCH: it has already been killed and
        // reaped, and there is nothing left to kill. (Were the pid reused
        // in the moment between that reap and this open, the pidfd would
        // name the newcomer; as before this fix, that race is not guarded.)
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::SRCH) => None,
            Err(e) => panic!("pidfd_open of the writer {pid:?}: {e}"),
        };
        Writer {
            child,
            pidfd,
            reports,
            reader: Some(reader),
        }
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
        self.signal_kill();
        self.wait()
    }

    fn signal_kill(&self) {
        // ESRCH when it has exited already; no pidfd when it had exited
        // before `spawn` returned.
        if let Some(pidfd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
        }
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
            self.signal_kill();
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

/// The arguments that run a child under strace: threads followed, quiet,
/// tracing `calls`, logging to `log`, with the `extra` options (such as
/// `-e inject=...`).
pub fn strace_args(calls: &str, log: &Path, extra: &[&str]) -> Vec<String> {
    let head = ["strace", "-f", "-qq"]
        .into_iter()
        .chain(extra.iter().copied());
    head.map(String::from)
        .chain([
            "-o".into(),
            log.display().to_string(),
            "-e".into(),
            format!("trace={calls}"),
        ])
        .collect()
}

/// What a crash lost, by the judge's account.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// A whole version older than the last acknowledged one.
    AckLost { found: u32, acked: u32 },
    /// Not a whole version.
    Torn { len: usize, acked: u32 },
    /// No target at all.
    Gone { acked: u32 },
    /// A version that no commit had started.
    TooNew { found: u32 },
    /// The version of a commit that failed before its publishing step.
    FailedButPublished { found: u32, op: String },
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::AckLost { found, acked } => write!(
                f,
                "acknowledged commit lost: version {found} on disk, {acked} acknowledged"
            ),
            Loss::Torn { len, acked } => {
                write!(f, "torn target: {len} bytes, {acked} acknowledged")
            }
            Loss::Gone { acked } => write!(f, "target gone, {acked} acknowledged"),
            Loss::TooNew { found } => {
                write!(f, "version {found} on disk, newer than any in flight")
            }
            Loss::FailedButPublished { found, op } => write!(
                f,
                "version {found} on disk, but its commit failed at {op}, before publishing"
            ),
        }
    }
}

/// Judges what a cut left against what the writer reported: the target
/// must be whole, and the last acknowledged version (`on_disk` when there
/// was none) or the one in flight after it, unless that one failed before
/// its publishing step, which leaves the target alone. Every `Ok` counts,
/// also one reported after the cut: a commit returns `Ok` only once it is
/// durable. Returns the version found, or what was lost.
pub fn judge(found: Found, on_disk: u32, reports: &Reports) -> Result<u32, Loss> {
    let acked = reports.last_ack().unwrap_or(on_disk);
    let unpublished = reports.error.as_ref().filter(|f| !f.published);
    match found {
        Found::Whole(id) if id == acked => Ok(id),
        Found::Whole(id) if id == acked + 1 => match unpublished {
            None => Ok(id),
            Some(f) => Err(Loss::FailedButPublished {
                found: id,
                op: f.op.clone(),
            }),
        },
        Found::Whole(id) if id < acked => Err(Loss::AckLost { found: id, acked }),
        Found::Whole(id) => Err(Loss::TooNew { found: id }),
        Found::Torn(len) => Err(Loss::Torn { len, acked }),
        Found::Absent => Err(Loss::Gone { acked }),
    }
}

/// Sweeps `dir` and checks that it removed exactly `left`, and that only
/// the target (if any) remains.
pub fn sweep_exactly(rt: &tokio::runtime::Runtime, dir: &Path, left: &[std::ffi::OsString]) {
    let report = rt
        .block_on(tokio_atomic_write::sweep(dir, Duration::ZERO))
        .unwrap();
    let mut removed: Vec<_> = report
        .removed
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    removed.sort();
    let mut left = left.to_vec();
    left.sort();
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
        let inject = format!("inject=fsync:retval=0:when={when}");
        strace_args("fsync", log, &["--seccomp-bpf", "-y", "-e", &inject])
    }

    /// Whether `loss` is what skipping this fsync causes: a torn (empty)
    /// target without the temp file's, a lost acknowledged commit without
    /// the directory's.
    pub fn causes(self, loss: &Loss) -> bool {
        match self {
            Weakened::No => false,
            Weakened::SkipFileSync => matches!(loss, Loss::Torn { .. }),
            Weakened::SkipDirSync => matches!(loss, Loss::AckLost { .. }),
        }
    }

    /// Checks in strace's log that the fsyncs meant, and only they, were
    /// skipped: every completed fsync of the directory (SkipDirSync) or of
    /// a file (SkipFileSync). Returns how many were.
    pub fn check_log(self, log: &Path, dir: &Path) -> usize {
        if self == Weakened::No {
            return 0;
        }
        let text = std::fs::read_to_string(log).unwrap();
        let dir = format!("<{}>", dir.display());
        let mut skipped = 0;
        // A call cut short by the kill has no result: strace prints "= ?",
        // sometimes followed by " <unavailable>", and whether it was to be
        // injected cannot be told.
        let completed = |l: &&str| {
            l.contains("fsync(")
                && l.rsplit_once(" = ")
                    .is_some_and(|(_, result)| !result.starts_with('?'))
        };
        for line in text.lines().filter(completed) {
            let meant = line.contains(&dir) == (self == Weakened::SkipDirSync);
            assert_eq!(
                line.ends_with("(INJECTED)"),
                meant,
                "{self:?}: an fsync skipped or run wrongly: {line}"
            );
            skipped += usize::from(meant);
        }
        skipped
    }
}
