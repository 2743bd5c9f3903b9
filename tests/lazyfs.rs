//! Issue #8, "A lazy filesystem for what the kernel cannot cut": the FUSE
//! test helper `common::lazyfs`, which keeps a volatile and a durable view,
//! is first checked against a plain in-memory model; then the writer of the
//! power-cut tests runs on it through hundreds of crashes. It has no
//! `O_TMPFILE` and refuses `renameat2` flags, so these crashes exercise the
//! named temp file and the link + unlink no-clobber fallback.
//!
//! Root and `/dev/fuse` are needed: a visible skip elsewhere, a failure in
//! CI. `TAW_LAZY_CRASHES` sets the number of crashes (500 by default, what
//! CI runs), `TAW_SEED` the seed.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::lazyfs::LazyFs;
use common::writer::*;
use common::*;
use proptest::prelude::*;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// What the model check does to the filesystem, on names in its root.
#[derive(Clone, Debug)]
enum FsOp {
    /// `pwrite` at `at`, creating the file if needed.
    Write {
        name: usize,
        at: usize,
        data: Vec<u8>,
    },
    /// An open with `O_TRUNC` of an existing file.
    Truncate {
        name: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Unlink {
        name: usize,
    },
    /// `fsync` of a file.
    SyncFile {
        name: usize,
    },
    /// `fsync` of the root directory.
    SyncDir,
    Crash,
}

fn fs_op() -> impl Strategy<Value = FsOp> {
    let name = 0..NAMES.len();
    prop_oneof![
        3 => (name.clone(), 0..8usize, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(name, at, data)| FsOp::Write { name, at, data }),
        2 => (name.clone(), name.clone()).prop_map(|(from, to)| FsOp::Rename { from, to }),
        1 => (name.clone(), name.clone()).prop_map(|(from, to)| FsOp::Link { from, to }),
        1 => name.clone().prop_map(|name| FsOp::Unlink { name }),
        1 => name.clone().prop_map(|name| FsOp::Truncate { name }),
        2 => name.prop_map(|name| FsOp::SyncFile { name }),
        2 => Just(FsOp::SyncDir),
        1 => Just(FsOp::Crash),
    ]
}

/// The plain model: one directory of names pointing at numbered files. Its
/// durable view is the names as of the directory's last sync and each
/// file's data as of its own last sync; a crash keeps only that.
#[derive(Debug, Default)]
struct Model {
    next: u64,
    names: BTreeMap<&'static str, u64>,
    data: HashMap<u64, Vec<u8>>,
    durable_names: BTreeMap<&'static str, u64>,
    durable_data: HashMap<u64, Vec<u8>>,
}

/// What a reader sees: per name, its bytes and the first name of the same
/// file (hard links share one).
type View = BTreeMap<String, (Vec<u8>, String)>;

impl Model {
    /// Applies `op`, or says how the filesystem must refuse it.
    fn apply(&mut self, op: &FsOp) -> Result<(), ErrorKind> {
        let file = |m: &Model, name: usize| m.names.get(NAMES[name]).copied();
        match *op {
            FsOp::Write { name, at, ref data } => {
                let f = file(self, name).unwrap_or_else(|| {
                    self.next += 1;
                    self.names.insert(NAMES[name], self.next);
                    self.next
                });
                let d = self.data.entry(f).or_default();
                if d.len() < at + data.len() {
                    d.resize(at + data.len(), 0);
                }
                d[at..at + data.len()].copy_from_slice(data);
            }
            FsOp::Truncate { name } => {
                let f = file(self, name).ok_or(ErrorKind::NotFound)?;
                self.data.insert(f, Vec::new());
            }
            FsOp::Rename { from, to } => {
                let f = file(self, from).ok_or(ErrorKind::NotFound)?;
                // Two names of one file: rename does nothing.
                if file(self, to) != Some(f) {
                    self.names.remove(NAMES[from]);
                    self.names.insert(NAMES[to], f);
                }
            }
            FsOp::Link { from, to } => {
                let f = file(self, from).ok_or(ErrorKind::NotFound)?;
                if file(self, to).is_some() {
                    return Err(ErrorKind::AlreadyExists);
                }
                self.names.insert(NAMES[to], f);
            }
            FsOp::Unlink { name } => {
                self.names.remove(NAMES[name]).ok_or(ErrorKind::NotFound)?;
            }
            FsOp::SyncFile { name } => {
                let f = file(self, name).ok_or(ErrorKind::NotFound)?;
                self.durable_data
                    .insert(f, self.data.get(&f).cloned().unwrap_or_default());
            }
            FsOp::SyncDir => self.durable_names = self.names.clone(),
            FsOp::Crash => {
                self.names = self.durable_names.clone();
                self.data = self
                    .names
                    .values()
                    .map(|f| (*f, self.durable_data.get(f).cloned().unwrap_or_default()))
                    .collect();
            }
        }
        Ok(())
    }

    fn view(&self) -> View {
        self.names
            .iter()
            .map(|(name, f)| {
                let first = self.names.iter().find(|(_, g)| *g == f).unwrap().0;
                let data = self.data.get(f).cloned().unwrap_or_default();
                (name.to_string(), (data, first.to_string()))
            })
            .collect()
    }
}

/// Applies `op` to the mounted filesystem, through the kernel.
fn apply(fs: &mut LazyFs, op: &FsOp) -> Result<(), ErrorKind> {
    let path = |name: usize| fs.path().join(NAMES[name]);
    let r = match *op {
        FsOp::Write { name, at, ref data } => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path(name))
            .and_then(|f| f.write_all_at(data, at as u64)),
        FsOp::Truncate { name } => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path(name))
            .map(drop),
        FsOp::Rename { from, to } => std::fs::rename(path(from), path(to)),
        FsOp::Link { from, to } => std::fs::hard_link(path(from), path(to)),
        FsOp::Unlink { name } => std::fs::remove_file(path(name)),
        FsOp::SyncFile { name } => std::fs::File::open(path(name)).and_then(|f| f.sync_all()),
        FsOp::SyncDir => std::fs::File::open(fs.path()).and_then(|f| f.sync_all()),
        FsOp::Crash => {
            fs.crash();
            Ok(())
        }
    };
    r.map_err(|e| e.kind())
}

fn view(root: &Path) -> View {
    let mut inodes: Vec<(String, u64)> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    inodes.sort();
    inodes
        .iter()
        .map(|(name, ino)| {
            let first = &inodes.iter().find(|(_, i)| i == ino).unwrap().0;
            let data = std::fs::read(root.join(name)).unwrap();
            (name.clone(), (data, first.clone()))
        })
        .collect()
}

/// Runs `ops` on a fresh lazy filesystem and on the model: every result,
/// and the tree after every step, must agree.
fn check_ops(ops: &[FsOp]) -> Result<(), TestCaseError> {
    let fs = LazyFs::mount();
    if !require(fs.is_some(), "root and /dev/fuse for a FUSE mount") {
        return Ok(());
    }
    let mut fs = fs.unwrap();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got = apply(&mut fs, op);
        prop_assert_eq!(got, want, "op {} {:?}", i, op);
        prop_assert_eq!(view(fs.path()), model.view(), "after op {} {:?}", i, op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // The one failure found so far has its own test below.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every operation gives the model's result, and after each the tree
    /// is the model's; crashes included.
    #[test]
    fn the_lazy_filesystem_behaves_like_the_model(ops in prop::collection::vec(fs_op(), 1..40)) {
        check_ops(&ops)?;
    }
}

/// The proptest's first find: a file replaced by a rename was freed with
/// its durable copy, so a crash lost the name its synced directory had.
#[test]
fn a_crash_brings_back_a_synced_name_whose_file_was_replaced() {
    let ops = [
        FsOp::Write {
            name: 2,
            at: 0,
            data: vec![0],
        },
        FsOp::Write {
            name: 1,
            at: 0,
            data: vec![0],
        },
        FsOp::SyncDir,
        FsOp::Rename { from: 1, to: 2 },
        FsOp::Crash,
    ];
    check_ops(&ops).unwrap();
}

const CRASHES: &str = "crashes_of_the_lazy_filesystem_lose_no_acknowledged_commit";

/// The writer commits self-checking versions on the lazy filesystem; at a
/// random moment it is killed and the filesystem crashes, dropping all that
/// was not synced. The target must be whole and the last acknowledged
/// version or the one in flight; no temp file survives (see below), and
/// `sweep` finds nothing. A fifth as many crashes (at least 50) hit
/// single commits without overwrite, which here take the link + unlink
/// fallback. Then the loop runs with a commit weakened by strace (one fsync
/// skipped), whose losses the checker must see.
#[test]
fn crashes_of_the_lazy_filesystem_lose_no_acknowledged_commit() {
    if is_child() {
        return writer_main();
    }
    let crashes: u32 = std::env::var("TAW_LAZY_CRASHES").map_or(500, |v| v.parse().unwrap());
    let Some(t) = crash_loop(crashes, Weakened::No) else {
        return;
    };
    assert!(t.acks >= crashes / 4, "too few commits: {t:?}");
    // A temp name becomes durable only with a directory fsync, and none
    // runs between a temp file's creation and its rename: here, unlike on
    // ext4 or xfs (whose journal commits all at once), no crash leaves one.
    assert_eq!(t.leftovers, 0, "{t:?}");
    no_clobber_crashes((crashes / 5).max(50));
    if !require(have("strace"), "strace") {
        return;
    }
    for weak in [Weakened::SkipFileSync, Weakened::SkipDirSync] {
        let t = crash_loop(20, weak).unwrap();
        assert!(t.skipped > 0, "strace skipped no fsync: {t:?}");
        // The loss that the missing fsync causes, not just any.
        assert!(
            t.losses.iter().any(|(_, l)| weak.causes(l)),
            "the checker missed {weak:?}: {t:?}"
        );
    }
}

/// The check of strace's log in the weakened loops, on lines as strace
/// writes them: short ones padded to a column, and calls cut short by the
/// kill with no result (the line that once failed CI for a skipped fsync).
#[test]
fn the_fsync_log_check_reads_padded_and_cut_short_calls() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("fsync.strace");
    let dir = Path::new("/mnt/lazy");
    let file = "fsync(10</mnt/lazy/.versions.bin.rW03eTiriaF1.tmp>)";
    let lines = |l: &[String]| std::fs::write(&log, l.join("\n") + "\n").unwrap();
    let cut = format!("7 {file} = ? <unavailable>");
    let dir_ran = "7 fsync(11</mnt/lazy>)                = 0".to_string();
    let file_skipped = format!("7 {file} = 0 (INJECTED)");
    lines(&[
        file_skipped.clone(),
        dir_ran.clone(),
        cut.clone(),
        format!("7 {file} = ?"),
    ]);
    assert_eq!(Weakened::SkipFileSync.check_log(&log, dir), 1);
    let dir_skipped = "7 fsync(11</mnt/lazy>)                = 0 (INJECTED)".to_string();
    let file_ran = format!("7 {file} = 0");
    lines(&[file_ran.clone(), dir_skipped.clone(), dir_skipped, cut]);
    assert_eq!(Weakened::SkipDirSync.check_log(&log, dir), 2);
    // A file fsync that ran where it should have been skipped is caught.
    lines(&[file_skipped, file_ran]);
    let wrong = std::panic::catch_unwind(|| Weakened::SkipFileSync.check_log(&log, dir));
    assert!(wrong.is_err(), "a file fsync that ran went unnoticed");
    // And a directory fsync that ran under SkipDirSync.
    lines(&[dir_ran]);
    let wrong = std::panic::catch_unwind(|| Weakened::SkipDirSync.check_log(&log, dir));
    assert!(wrong.is_err(), "a directory fsync that ran went unnoticed");
}

/// What a crash loop found.
#[derive(Debug, Default)]
struct Tally {
    acks: u32,
    /// Crashes that left a temp file, all removed by sweep.
    leftovers: u32,
    /// What the checker found, by crash.
    losses: Vec<(u32, Loss)>,
    /// fsyncs strace skipped (weakened runs).
    skipped: usize,
}

fn crash_loop(crashes: u32, weak: Weakened) -> Option<Tally> {
    let (mut rng, seed) = common::Rng::from_env();
    eprintln!("{CRASHES}: {weak:?}: {crashes} crashes, TAW_SEED={seed}");
    let fs = LazyFs::mount();
    if !require(fs.is_some(), "root and /dev/fuse for a FUSE mount") {
        return None;
    }
    let mut fs = fs.unwrap();
    let dir = fs.path().to_path_buf();
    let target = dir.join(TARGET);
    let rt = runtime();
    let durable = |id: u32| {
        rt.block_on(tokio_atomic_write::write(&target, tagged_version(id, 10)))
            .unwrap()
    };
    durable(0);
    let logs = tempfile::tempdir().unwrap();
    let mut on_disk = 0;
    let mut t = Tally::default();
    for crash in 0..crashes {
        let log = logs.path().join(format!("{crash}.strace"));
        let wrap = weak.wrap(&log);
        let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
        // Through FUSE, versions of up to 256 KiB keep a cycle short.
        let plan = Plan {
            max_body: 256 << 10,
            ..Plan::endless(on_disk + 1, crash % 2 == 0)
        };
        let writer = Writer::spawn(CRASHES, &wrap, &dir, plan);
        // Longer under strace, whose writer is slower.
        let most = if weak == Weakened::No {
            40_000
        } else {
            150_000
        };
        std::thread::sleep(Duration::from_micros(1_000 + rng.below(most)));
        let (_, reports) = writer.kill();
        assert!(reports.error.is_none(), "{reports:?}");
        fs.crash();

        t.acks += reports.acks.len() as u32;
        t.skipped += weak.check_log(&log, &dir);
        let left = temp_files(&dir);
        t.leftovers += u32::from(!left.is_empty());
        sweep_exactly(&rt, &dir, &left);
        match judge(found(&target), on_disk, &reports) {
            Ok(id) => on_disk = id,
            Err(loss) if weak != Weakened::No => {
                t.losses.push((crash, loss));
                on_disk = reports.last_ack().unwrap_or(on_disk) + 2;
                durable(on_disk);
            }
            Err(loss) => panic!("crash {crash} (TAW_SEED={seed}): {loss}; {reports:?}"),
        }
    }
    let state = fs.state();
    eprintln!(
        "{CRASHES}: {weak:?}: {} crashes, {} acks, {} crashes leaving a temp file (all swept), \
         {} fsyncs skipped, {} losses ({} of the kind the weakening causes){}; the filesystem \
         saw {} file and {} directory fsyncs",
        state.crashes,
        t.acks,
        t.leftovers,
        t.skipped,
        t.losses.len(),
        t.losses.iter().filter(|(_, l)| weak.causes(l)).count(),
        t.losses
            .first()
            .map_or(String::new(), |(c, l)| format!(", first: crash {c}: {l}")),
        state.file_syncs,
        state.dir_syncs
    );
    assert_eq!(state.crashes, u64::from(crashes));
    drop(state);
    Some(t)
}

/// Crashes during one commit without overwrite each (renameat2 flags get
/// EINVAL here, so it links the temp file to the target, then unlinks
/// it): afterwards the target is absent or the new version, whole, and
/// the new version if the commit returned.
fn no_clobber_crashes(crashes: u32) {
    let (mut rng, seed) = common::Rng::from_env();
    let mut fs = LazyFs::mount().unwrap();
    let dir = fs.path().to_path_buf();
    let target = dir.join(TARGET);
    let rt = runtime();
    let (mut published, mut absent) = (0, 0);
    for crash in 0..crashes {
        // No target, durably.
        if found(&target) != Found::Absent {
            std::fs::remove_file(&target).unwrap();
        }
        std::fs::File::open(&dir).unwrap().sync_all().unwrap();
        let plan = Plan {
            no_clobber: true,
            count: 1,
            max_body: 256 << 10,
            ..Plan::endless(crash + 1, false)
        };
        let writer = Writer::spawn(CRASHES, &[], &dir, plan);
        // The child starts and commits within a few milliseconds: every
        // other crash is aimed there, so that both outcomes are seen. With
        // 0-60 ms alone, 0 to 4 in 100 came before the commit in six runs
        // here, and one of the six failed the check below; aimed, 27 to 33.
        let aim = if crash % 2 == 0 { 3_000 } else { 60_000 };
        std::thread::sleep(Duration::from_micros(rng.below(aim)));
        let (_, reports) = writer.kill();
        assert!(reports.error.is_none(), "{reports:?}");
        fs.crash();
        let left = temp_files(&dir);
        sweep_exactly(&rt, &dir, &left);
        match (found(&target), reports.last_ack()) {
            (Found::Whole(id), _) if id == plan.start => published += 1,
            (Found::Absent, None) => absent += 1,
            other => panic!("crash {crash} (TAW_SEED={seed}): {other:?}, {reports:?}"),
        }
    }
    eprintln!(
        "{CRASHES}: no-clobber: {crashes} crashes, {published} left the new version, {absent} \
         no target"
    );
    assert!(
        published > 0 && absent > 0,
        "the crashes missed the commits"
    );
}
