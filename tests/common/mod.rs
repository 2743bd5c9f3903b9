//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod lazyfs;
pub mod power;
pub mod tree;
pub mod writer;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokio_atomic_write::__private::is_temp_name;

/// Where [`scratch`] makes its directories instead of the system temp dir:
/// set by [`run_suite_on_every_filesystem`] for the runs it starts.
pub const SCRATCH_ENV: &str = "TAW_SCRATCH";

/// A fresh scratch directory: in the system temp dir, or under
/// `$TAW_SCRATCH` when set (a mount of the filesystem under test).
pub fn scratch() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("taw-test-");
    match std::env::var_os(SCRATCH_ENV) {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .expect("scratch dir")
}

/// Both temp file kinds: unnamed (`O_TMPFILE`) and named.
pub const TEMP_KINDS: [bool; 2] = [true, false];

/// Entries of `dir` shaped like the crate's temp names.
pub fn temp_files(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| is_temp_name(n))
        .collect();
    v.sort();
    v
}

/// Whether the filesystem of `dir` has `O_TMPFILE` (FUSE mounts do not:
/// there an unnamed temp file falls back to a named one).
pub fn supports_unnamed(dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::WRONLY,
        Mode::from_raw_mode(0o600),
    )
    .is_ok()
}

/// Opens `target` with the given temp kind and buffer size.
pub async fn open_kind(
    target: &Path,
    unnamed: bool,
    buffer: usize,
) -> tokio_atomic_write::AsyncAtomicFile {
    tokio_atomic_write::OpenOptions::new()
        .unnamed_temp(unnamed)
        .buffer_size(buffer)
        .open(target)
        .await
        .expect("open")
}

#[allow(unused_imports)]
pub use tokio_atomic_write::DEFAULT_BUFFER_SIZE;

/// All entries of `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    v.sort();
    v
}

/// File descriptors of this process open on files inside `dir`: an
/// unnamed temp file shows in /proc as `{dir}/#{inode} (deleted)`.
pub fn fds_into(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).expect("canonicalize");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.starts_with(&dir) && target != dir {
                out.push(target);
            }
        }
    }
    out
}

/// Neither a named temp file in `dir` nor an open (unnamed) one.
pub fn leftovers(dir: &Path) -> (Vec<OsString>, Vec<PathBuf>) {
    (temp_files(dir), fds_into(dir))
}

#[track_caller]
pub fn assert_no_leftovers(dir: &Path) {
    let (names, fds) = leftovers(dir);
    assert!(
        names.is_empty(),
        "temp files left in {}: {names:?}",
        dir.display()
    );
    assert!(
        fds.is_empty(),
        "files still open in {}: {fds:?}",
        dir.display()
    );
}

/// Waits, a bounded number of times, for cleanup scheduled on the blocking
/// pool to finish; then asserts there are no leftovers.
#[track_caller]
pub fn assert_no_leftovers_eventually(dir: &Path) {
    for _ in 0..500 {
        let (names, fds) = leftovers(dir);
        if names.is_empty() && fds.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_no_leftovers(dir);
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether this run must not skip anything (CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips the calling test visibly when `ok` is false, and fails it in CI,
/// where everything it needs is installed.
#[track_caller]
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if in_ci() {
            panic!("CI=true but this test needs {what}");
        }
        eprintln!("SKIPPED: needs {what}");
    }
    ok
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The environment variable that tells a re-executed test binary it is the
/// child half of a test.
pub const CHILD_ENV: &str = "TAW_TEST_CHILD";

pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// The command that re-runs the single test `name` of this test binary
/// as a child (`CHILD_ENV` set), through `wrap` (a program and its
/// arguments, e.g. strace's), if any.
pub fn child_command(name: &str, wrap: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1");
    cmd
}

/// Re-runs the single test `name` of the current test binary in a child
/// process, through `wrap` (e.g. `["strace", "-f", ...]` or `["sh", "-c",
/// "umask 022; exec \"$0\" \"$@\""]`). The child sees `CHILD_ENV` set.
pub fn run_child(name: &str, wrap: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = child_command(name, wrap);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("spawn child");
    assert!(
        out.status.success(),
        "child {name} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes a FIFO at `path`: a special file that an open for reading would
/// block on.
pub fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        0o600.into(),
        0,
    )
    .unwrap();
}

/// The mode bits of a path (not following a final symlink).
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

/// The process umask, read without changing it.
pub fn current_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).expect("octal umask")
}

/// A version of a file whose bytes check themselves: `len` bytes, all
/// derived from `id`, so any prefix, mix or torn write is detectable.
pub fn version(id: u32, len: usize) -> Vec<u8> {
    // Word `i` mixes the id and the position: cheap enough for 4 MiB
    // versions in a debug build, and no two positions or ids alike.
    let mut v = Vec::with_capacity(len + 8);
    for i in 0..len.div_ceil(8) as u64 {
        let w = ((u64::from(id) << 32) | i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        v.extend_from_slice(&(w ^ (w >> 29)).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The header of a [`tagged_version`]: magic, id, body length, checksum.
pub const TAG_HEADER: usize = 24;

/// The body checksum in a tagged version's header: FNV-1a over 64-bit
/// words (the tail zero-padded), then the length.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x0100_0000_01b3);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0x0100_0000_01b3);
    (h ^ bytes.len() as u64).wrapping_mul(0x0100_0000_01b3)
}

/// A self-checking version: a header (`TAWV`, id, body length, checksum of
/// the body) then `body_len` bytes derived from `id`, so that a prefix, a
/// mix of two versions or a torn write is always detected.
pub fn tagged_version(id: u32, body_len: usize) -> Vec<u8> {
    let body = version(id, body_len);
    let mut v = Vec::with_capacity(TAG_HEADER + body_len);
    v.extend_from_slice(b"TAWV");
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&(body_len as u64).to_le_bytes());
    v.extend_from_slice(&checksum(&body).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// The id of a complete tagged version, or `None` for anything torn.
pub fn check_tagged(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < TAG_HEADER || &bytes[..4] != b"TAWV" {
        return None;
    }
    let id = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    let body = &bytes[TAG_HEADER..];
    (body.len() == len && checksum(body) == sum && body == &version(id, len)[..]).then_some(id)
}

/// The body length of version `id` in the crash loops: deterministic, from
/// 0 to 4 MiB; an eighth empty, a quarter under 4 KiB, the rest spread up
/// to 4 MiB.
pub fn crash_body_len(id: u32) -> usize {
    let x = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    match x % 8 {
        0 => 0,
        1 | 2 => (x >> 3) as usize % 4096,
        _ => (x >> 3) as usize % ((4 << 20) + 1),
    }
}

/// A multi-thread runtime for tests that need real parallelism.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A directory on a different filesystem from `scratch()`: /dev/shm when it
/// is one, else a tmpfs mounted for the test (root only).
pub struct OtherFs {
    pub dir: tempfile::TempDir,
    mounted: Option<PathBuf>,
    /// The loop device's backing file, removed after the unmount.
    _image: Option<tempfile::TempDir>,
}

impl Drop for OtherFs {
    fn drop(&mut self) {
        if let Some(m) = &self.mounted {
            unmount_or_detach(m);
        }
    }
}

/// Unmounts `path`, retrying for up to 2 s while it is busy: a process
/// forked by a test running in parallel holds this process's descriptors
/// until its `exec` closes them. Whether it worked.
pub fn unmount(path: &Path) -> bool {
    let mut last = None;
    for _ in 0..200 {
        match Command::new("umount").arg(path).output() {
            Ok(out) if out.status.success() => return true,
            out => last = Some(out),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("umount {}: {last:?}", path.display());
    false
}

/// [`unmount`], or else a lazy unmount, so that a failing test leaves no
/// mount behind.
pub fn unmount_or_detach(path: &Path) {
    if !unmount(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

pub fn device_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").dev()
}

pub fn other_fs(than: &Path) -> Option<OtherFs> {
    if Path::new("/dev/shm").is_dir() && device_of(Path::new("/dev/shm")) != device_of(than) {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("taw-other-")
            .tempdir_in("/dev/shm")
        {
            return Some(OtherFs {
                dir,
                mounted: None,
                _image: None,
            });
        }
    }
    let fs = mount_tmpfs("8m")?;
    Some(fs)
}

/// A small tmpfs mounted on a fresh directory (root only), unmounted on drop.
pub fn mount_tmpfs(size: &str) -> Option<OtherFs> {
    if !is_root() {
        return None;
    }
    let dir = scratch();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| OtherFs {
        mounted: Some(dir.path().to_path_buf()),
        dir,
        _image: None,
    })
}

/// The smallest image each filesystem's mkfs accepts, with some room.
fn image_size(fs: &str) -> &'static str {
    match fs {
        "xfs" => "320M",
        "btrfs" => "160M",
        _ => "64M",
    }
}

/// Runs `cmd`; prints what it said when it fails.
pub fn run_ok(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => true,
        out => {
            eprintln!("{cmd:?}: {out:?}");
            false
        }
    }
}

/// A fresh `fs` (ext4, xfs, btrfs) made with the extra `mkfs` arguments on
/// a sparse image, in a new directory removed on drop. `None` when it
/// cannot be done here: not root or no `mkfs.<fs>`.
pub fn make_image(fs: &str, mkfs_args: &[&str]) -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() || !have(&format!("mkfs.{fs}")) {
        return None;
    }
    let images = scratch();
    let image = images.path().join(format!("{fs}.img"));
    let force = if fs == "ext4" { "-F" } else { "-f" };
    let made = run_ok(
        Command::new("truncate")
            .args(["-s", image_size(fs)])
            .arg(&image),
    ) && run_ok(
        Command::new(format!("mkfs.{fs}"))
            .args(["-q", force])
            .args(mkfs_args)
            .arg(&image),
    );
    made.then_some((images, image))
}

/// Loop-mounts the `fs` image on `at`, with the extra mount options.
pub fn mount_loop(fs: &str, image: &Path, at: &Path, options: &str) -> bool {
    let options = match options {
        "" => "loop".to_string(),
        o => format!("loop,{o}"),
    };
    run_ok(
        Command::new("mount")
            .args(["-t", fs, "-o", &options])
            .arg(image)
            .arg(at),
    )
}

/// A fresh `fs` (ext4, xfs, btrfs) on a sparse image, made with the extra
/// `mkfs` arguments, loop-mounted on a new directory, unmounted on drop.
/// Returns the mount, and in it a directory to work in (a fresh ext4 has
/// `lost+found` at its root). `None` when it cannot be done here: not root,
/// no `mkfs.<fs>`, no loop device or no kernel support.
pub fn mount_image(fs: &str, mkfs_args: &[&str]) -> Option<(OtherFs, PathBuf)> {
    let (images, image) = make_image(fs, mkfs_args)?;
    let dir = scratch();
    if !mount_loop(fs, &image, dir.path(), "") {
        return None;
    }
    let work = dir.path().join("work");
    let mounted = OtherFs {
        mounted: Some(dir.path().to_path_buf()),
        dir,
        _image: Some(images),
    };
    std::fs::create_dir(&work).unwrap();
    Some((mounted, work))
}

/// [`mount_image`], or a visible skip (a failure in CI) when it cannot be
/// done here.
pub fn require_image(fs: &str, mkfs_args: &[&str]) -> Option<(OtherFs, PathBuf)> {
    let mounted = mount_image(fs, mkfs_args);
    require(
        mounted.is_some(),
        &format!("root, mkfs.{fs} and a loop device for a loop mount"),
    )
    .then_some(mounted)
    .flatten()
}

/// The filesystems [`run_suite_on_every_filesystem`] covers: name, `mkfs`
/// arguments.
pub const FILESYSTEMS: [(&str, &[&str]); 5] = [
    ("tmpfs", &[]),
    ("ext4", &[]),
    ("ext4", &["-O", "^has_journal"]),
    ("xfs", &[]),
    ("btrfs", &[]),
];

/// Issue #4, "Filesystems": runs every other test of this test binary
/// again with its scratch directories on each of [`FILESYSTEMS`], freshly
/// mounted, and on a [`lazyfs::LazyFs`] FUSE mount, which has no
/// `O_TMPFILE` nor `renameat2` flags (root only; a visible skip elsewhere,
/// a failure in CI). Returns, per filesystem, how many tests passed there.
pub fn run_suite_on_every_filesystem(this_test: &str) -> Vec<(String, usize)> {
    let mut passed = Vec::new();
    let fuse = lazyfs::LazyFs::mount();
    if require(fuse.is_some(), "root and /dev/fuse for a FUSE mount") {
        let fuse = fuse.unwrap();
        let n = run_suite_in(this_test, fuse.path(), "fuse (lazyfs)");
        assert!(
            fuse.state().file_syncs > 0,
            "the suite ran on the FUSE mount"
        );
        passed.push(("fuse (lazyfs)".to_string(), n));
    }
    for (fs, mkfs_args) in FILESYSTEMS {
        let label = match mkfs_args {
            [] => fs.to_string(),
            args => format!("{fs} {}", args.join(" ")),
        };
        let mounted = if fs == "tmpfs" {
            mount_tmpfs("256m").map(|m| {
                let work = m.dir.path().to_path_buf();
                (m, work)
            })
        } else {
            mount_image(fs, mkfs_args)
        };
        if !require(mounted.is_some(), &format!("root and a {label} mount")) {
            continue;
        }
        let (_mount, work) = mounted.unwrap();
        let n = run_suite_in(this_test, &work, &label);
        passed.push((label, n));
    }
    passed
}

/// Runs this test binary's tests but `this_test` with scratch directories
/// in `work`; returns how many passed.
fn run_suite_in(this_test: &str, work: &Path, label: &str) -> usize {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--skip", this_test, "--test-threads=2"])
        .env(SCRATCH_ENV, work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "on {label}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let n = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no test result on {label}:\n{stdout}"));
    assert!(n > 0, "nothing ran on {label}");
    eprintln!("{this_test}: {n} tests passed on {label}");
    n
}

/// A small xorshift generator: the test's randomness, reproducible by seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded by `TAW_SEED`, or the clock; returns the seed too.
    pub fn from_env() -> (Rng, u64) {
        let seed = std::env::var("TAW_SEED").map_or_else(
            |_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            },
            |v| v.parse().unwrap(),
        );
        (Rng(seed), seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The ids in the state file of the `StateFile` tests (`{"ids": [..]}`,
/// other fields ignored); `None` when there is no file.
pub fn on_disk(path: &Path) -> Option<Vec<u32>> {
    #[derive(serde::Deserialize)]
    struct Ids {
        ids: Vec<u32>,
    }
    match std::fs::read(path) {
        Ok(bytes) => Some(serde_json::from_slice::<Ids>(&bytes).unwrap().ids),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{e}"),
    }
}

/// The calls of an strace log (`-o log`, run with `-y`) that name a path
/// under `dir`, in order, each without its thread id.
pub fn traced_calls_in(log: &Path, dir: &Path) -> Vec<String> {
    let dir = dir.to_str().expect("a UTF-8 test directory").to_string();
    std::fs::read_to_string(log)
        .expect("the strace log")
        .lines()
        .filter(|l| l.contains(&dir))
        .map(|l| {
            l.split_once(' ')
                .map_or(l, |(_, r)| r)
                .trim_start()
                .to_string()
        })
        .collect()
}

/// Runs `task(i)` for `i` in `0..n` as tasks of `rt` released together
/// (a barrier), and returns their results in order of `i`.
pub fn race<T, F, Fut>(rt: &tokio::runtime::Runtime, n: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, run) = (barrier.clone(), task(i));
                tokio::spawn(async move {
                    barrier.wait().await;
                    run.await
                })
            })
            .collect();
        let mut results = Vec::with_capacity(n);
        for t in tasks {
            results.push(t.await.expect("a racing task panicked"));
        }
        results
    })
}
