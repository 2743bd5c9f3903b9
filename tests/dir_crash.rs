//! Issue #5: fillers of `AsyncAtomicDir` trees SIGKILLed at random
//! moments, mid-build or mid-commit. After each kill the replaced target
//! is a whole tree, the last acknowledged or the one in flight; a key
//! filled with `Keep` is whole or absent (whole if acknowledged); and
//! `sweep` removes exactly the temp trees left behind.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::tree::{fill, read_tree, Bad};
use common::*;
use tokio_atomic_write::{sweep, AsyncAtomicDir, Exists};

const NAME: &str = "killed_fillers_leave_whole_trees_and_sweep_removes_the_rest";
const KEY: &str = "key";

/// What a child gets: its directory (`TAW_DIR`), its first tree id
/// (`TAW_START`), and a runtime.
fn child_setup() -> (std::path::PathBuf, u32, tokio::runtime::Runtime) {
    let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let start: u32 = std::env::var("TAW_START").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (dir, start, rt)
}

/// The child: for `id` from `TAW_START` on, replaces `KEY` with tree `id`
/// and says `taw:ack id`, then fills the fresh key `k{id}` with `Keep` and
/// says `taw:kept id`; until killed.
fn child_filler() {
    let (dir, start, rt) = child_setup();
    rt.block_on(async {
        for id in start.. {
            let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
            fill(&tree, id).await;
            tree.commit(Exists::Replace).await.unwrap();
            println!("taw:ack {id}");
            let tree = AsyncAtomicDir::create(dir.join(format!("k{id}")))
                .await
                .unwrap();
            fill(&tree, id).await;
            tree.commit(Exists::Keep).await.unwrap();
            println!("taw:kept {id}");
        }
    });
}

/// The ids after `word` in the child's output.
fn said(out: &str, word: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.split_once(&format!("taw:{word} ")))
        .filter_map(|(_, id)| id.trim().parse().ok())
        .collect()
}

/// Which tree a crash left at `KEY`.
#[derive(Debug, PartialEq)]
enum Found {
    /// The last acknowledged one.
    Acked,
    /// The one in flight: published, not yet acknowledged.
    InFlight,
}

/// Checks what a crash of the child (output `out`, first id `*next`)
/// left in `dir`: `KEY` holds the last acknowledged tree or the one in
/// flight, whole; every `Keep` key it started is whole or absent, and whole
/// if acknowledged. Moves `*acked` and `*next` on.
fn judge(dir: &Path, out: &str, acked: &mut u32, next: &mut u32) -> Result<Found, String> {
    let (ack, kept) = (said(out, "ack"), said(out, "kept"));
    if let Some(&last) = ack.last() {
        *acked = last;
    }
    // The replace in flight when the child died: after its last ack, or
    // its first.
    let in_flight = ack.last().map_or(*next, |a| a + 1);
    let first = std::mem::replace(next, in_flight + 1);
    let found = match read_tree(&dir.join(KEY)) {
        Ok(id) if id == *acked => Found::Acked,
        Ok(id) if id == in_flight => {
            *acked = id;
            Found::InFlight
        }
        other => {
            return Err(format!(
                "{KEY}: {other:?}, acked {acked}, in flight {in_flight}"
            ))
        }
    };
    for id in first..=in_flight {
        match read_tree(&dir.join(format!("k{id}"))) {
            Ok(found) if found == id => {}
            Err(Bad::NotFound(_)) if !kept.contains(&id) => {}
            other => return Err(format!("k{id} (kept: {}): {other:?}", kept.contains(&id))),
        }
    }
    Ok(found)
}

#[test]
fn killed_fillers_leave_whole_trees_and_sweep_removes_the_rest() {
    if is_child() {
        return child_filler();
    }
    let kills: usize = std::env::var("TAW_KILLS").map_or(100, |v| v.parse().unwrap());
    let (mut rng, seed) = Rng::from_env();
    eprintln!("TAW_SEED={seed}");
    let scratch = scratch();
    let dir = scratch.path();
    let rt = runtime();
    // Tree 0 in place, so that every kill has an old tree to keep.
    rt.block_on(async {
        let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
        fill(&tree, 0).await;
        tree.commit(Exists::Fail).await.unwrap();
    });
    let (mut acked, mut next) = (0u32, 1u32);
    let (mut acks, mut after_ack, mut in_flight_won, mut left_trees, mut kills_leaving) =
        (0, 0, 0, 0, 0);
    for kill in 0..kills {
        let mut child = child_command(NAME, &[])
            .env("TAW_DIR", dir)
            .env("TAW_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child ran until killed");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let ack = said(&out, "ack");
        acks += ack.len();
        after_ack += usize::from(!ack.is_empty());
        let found = judge(dir, &out, &mut acked, &mut next)
            .unwrap_or_else(|e| panic!("kill {kill} (seed {seed}): {e}"));
        in_flight_won += usize::from(found == Found::InFlight);
        // What the kill left: temp trees only, and sweep removes exactly
        // those.
        let temps = temp_files(dir);
        left_trees += temps.len();
        kills_leaving += usize::from(!temps.is_empty());
        let report = rt.block_on(sweep(dir, Duration::ZERO)).unwrap();
        let mut removed: Vec<_> = report
            .removed
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, temps, "kill {kill}: {report:?}");
        assert!(
            report.failed.is_empty() && report.in_use.is_empty(),
            "{report:?}"
        );
        assert!(temp_files(dir).is_empty());
        assert_eq!(
            read_tree(&dir.join(KEY)),
            Ok(acked),
            "sweep kept the target"
        );
    }
    eprintln!(
        "{kills} kills: {acks} acks, {after_ack} kills after an ack, {in_flight_won} \
         published but killed before the ack; {kills_leaving} kills left {left_trees} \
         temp trees, all removed by sweep"
    );
    assert!(
        after_ack >= kills / 4,
        "{after_ack} of {kills} kills came after an ack"
    );
    assert!(kills_leaving > 0, "no kill struck mid-build or mid-commit");
}

const POWER: &str = "power_cuts_under_tree_fillers_lose_no_acknowledged_tree";
const WEAK: &str = "power_cuts_under_fillers_without_fsync_are_caught";

/// One power-cut run: `cuts` cuts of `fs` at random moments under the
/// filler (wrapped in `wrap`, e.g. strace), each followed by a remount
/// from the image as it was at the cut and [`judge`]. Returns the acks
/// and the judge's complaints, with the cut each came from.
fn cut_loop(
    test: &str,
    fs: &'static str,
    cuts: usize,
    wrap: &[&str],
) -> Option<(usize, Vec<String>)> {
    let mut power = common::power::PowerFs::new(fs, "")?;
    let (mut rng, seed) = Rng::from_env();
    let dir = power.work();
    let rt = runtime();
    rt.block_on(async {
        let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
        fill(&tree, 0).await;
        tree.commit(Exists::Fail).await.unwrap();
    });
    power.sync();
    let (mut acked, mut next, mut acks, mut losses) = (0u32, 1u32, 0, Vec::new());
    for cut in 0..cuts {
        let mut child = child_command(test, wrap)
            .env("TAW_DIR", &dir)
            .env("TAW_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.below(150)));
        power.cut();
        // Whatever it says after the cut counts too: an `Ok` after the cut
        // is as binding as one before.
        std::thread::sleep(Duration::from_millis(20));
        let _ = child.kill();
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        acks += said(&out, "ack").len();
        power.remount();
        if let Err(e) = judge(&dir, &out, &mut acked, &mut next) {
            losses.push(format!("{fs} cut {cut} (seed {seed}): {e}"));
            // Go on from what is there.
            acked = read_tree(&dir.join(KEY)).unwrap_or(acked);
        }
        let temps = temp_files(&dir);
        let report = rt.block_on(sweep(&dir, Duration::ZERO)).unwrap();
        assert_eq!(
            report.removed.len(),
            temps.len(),
            "{fs} cut {cut}: {report:?}"
        );
        assert!(temp_files(&dir).is_empty(), "{fs} cut {cut}");
        if read_tree(&dir.join(KEY)).is_err() {
            // A lost tree (only in weakened runs): start over from a whole one.
            let _ = std::fs::remove_dir_all(dir.join(KEY));
            rt.block_on(async {
                let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
                fill(&tree, next).await;
                tree.commit(Exists::Fail).await.unwrap();
            });
            acked = next;
            next += 1;
        }
        power.sync();
    }
    Some((acks, losses))
}

/// Power cuts (the shutdown ioctl, then a remount from the image as it
/// was at the cut) at random moments under the filler of the kill loop:
/// the replaced key is the last acknowledged tree or the one in flight,
/// whole; a `Keep` key acknowledged is there, whole; `sweep` removes the
/// temp trees left.
#[test]
fn power_cuts_under_tree_fillers_lose_no_acknowledged_tree() {
    if is_child() {
        return child_filler();
    }
    let cuts: usize = std::env::var("TAW_CUTS").map_or(30, |v| v.parse().unwrap());
    for fs in ["ext4", "xfs"] {
        let Some((acks, losses)) = cut_loop(POWER, fs, cuts, &[]) else {
            continue;
        };
        eprintln!(
            "{POWER}: {fs}: {cuts} cuts, {acks} acks, {} losses",
            losses.len()
        );
        assert!(losses.is_empty(), "{losses:#?}");
        assert!(acks >= cuts / 4, "{fs}: {acks} acks in {cuts} cuts");
    }
}

/// The loop above must be able to fail: with every `fsync` made a no-op
/// by strace, acknowledged trees are lost (or come back with empty files)
/// and the judge says so.
#[test]
fn power_cuts_under_fillers_without_fsync_are_caught() {
    if is_child() {
        return child_filler();
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let wrap = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync",
        "-e",
        "inject=fsync:retval=0",
    ];
    let Some((acks, losses)) = cut_loop(WEAK, "xfs", 20, &wrap) else {
        return;
    };
    eprintln!(
        "without fsync on xfs: 20 cuts, {acks} acks, {} losses; first: {:?}",
        losses.len(),
        losses.first()
    );
    assert!(!losses.is_empty(), "20 cuts without fsync lost nothing");
}

const WINDOW: &str = "the_fallback_window_loses_no_tree";

/// The child of the window test: one `Replace` of `KEY` with tree
/// `TAW_START`; says `taw:ok`, or `taw:err OP KIND`.
fn child_replace_once() {
    let (dir, id, rt) = child_setup();
    rt.block_on(async {
        let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
        fill(&tree, id).await;
        match tree.commit(Exists::Replace).await {
            Ok(_) => println!("taw:ok"),
            Err(e) => println!("taw:err {:?} {:?} {e}", e.op(), e.kind()),
        }
    });
}

/// On a filesystem without `RENAME_EXCHANGE` (the lazy FUSE filesystem), a
/// `Replace` moves the old tree aside, then renames the new one in. Found
/// in a clean strace run, that second rename is then made to fail (`EIO`:
/// the old tree is renamed back) and to kill the process (SIGKILL: the
/// target is missing, the old tree at its aside name, until `sweep` puts
/// it back). Neither loses a tree.
#[test]
fn the_fallback_window_loses_no_tree() {
    if is_child() {
        return child_replace_once();
    }
    let fs = common::lazyfs::LazyFs::mount();
    if !require(fs.is_some() && have("strace"), "root, /dev/fuse and strace") {
        return;
    }
    let fs = fs.unwrap();
    let dir = fs.path().to_path_buf();
    let rt = runtime();
    rt.block_on(async {
        let tree = AsyncAtomicDir::create(dir.join(KEY)).await.unwrap();
        fill(&tree, 1).await;
        tree.commit(Exists::Fail).await.unwrap();
    });
    let logs = tempfile::tempdir().unwrap();
    let run = |id: u32, extra: &[&str]| -> (std::process::ExitStatus, String, String) {
        let log = logs.path().join(format!("strace.{id}"));
        let args = common::writer::strace_args("rename,renameat,renameat2", &log, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = child_command(WINDOW, &args)
            .env("TAW_DIR", &dir)
            .env("TAW_START", id.to_string())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status, said, std::fs::read_to_string(&log).unwrap())
    };

    // A clean run: which call, of which name, publishes.
    let (status, said, log) = run(2, &[]);
    assert!(status.success() && said.contains("taw:ok"), "{said}");
    assert_eq!(read_tree(&dir.join(KEY)), Ok(2));
    let key = format!("\"{KEY}\"");
    let calls: Vec<&str> = log.lines().filter(|l| l.contains(" = ")).collect();
    let publish = calls
        .iter()
        .position(|l| {
            // renameat(dirfd, ".key.XXXX.tmp", dirfd, "key") = 0
            let after_tmp = l.split(".tmp\"").nth(1).unwrap_or("");
            after_tmp.contains(&key) && l.ends_with("= 0")
        })
        .unwrap_or_else(|| panic!("no publish in\n{log}"));
    let aside = calls[..publish]
        .iter()
        .rposition(|l| {
            l.contains(&format!("{key}, ")) && l.contains(".old\"") && l.ends_with("= 0")
        })
        .unwrap_or_else(|| panic!("no move aside before the publish in\n{log}"));
    let pid_of = |l: &str| l.split_whitespace().next().unwrap().to_string();
    let name_of = |l: &str| {
        let rest = l.split_once(' ').unwrap().1.trim_start();
        rest.split('(').next().unwrap().to_string()
    };
    let (thread, syscall) = (pid_of(calls[publish]), name_of(calls[publish]));
    assert_eq!(pid_of(calls[aside]), thread, "one thread commits:\n{log}");
    // strace counts each name per thread.
    let nth = calls[..=publish]
        .iter()
        .filter(|l| pid_of(l) == thread && name_of(l) == syscall)
        .count();
    eprintln!("the publish is {syscall} #{nth} of its thread");

    // Failed: the old tree is renamed back.
    let inject = format!("inject={syscall}:error=EIO:when={nth}");
    let (status, said, log) = run(3, &["-e", &inject]);
    assert!(status.success(), "{said}");
    assert!(said.contains("taw:err Rename"), "{said}\n{log}");
    // Injected into the rename after the move aside, not into that.
    let injected = log.lines().position(|l| l.contains("(INJECTED)"));
    let moved = log.lines().position(|l| {
        l.contains(&format!("{key}, ")) && l.contains(".old\"") && l.ends_with("= 0")
    });
    assert!(
        moved.is_some() && injected > moved,
        "moved aside, then the failed rename:\n{log}"
    );
    assert_eq!(read_tree(&dir.join(KEY)), Ok(2), "the old tree put back");
    for _ in 0..500 {
        if temp_files(&dir).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(listing(&dir), vec![std::ffi::OsString::from(KEY)]);

    // Killed: no target until `sweep` puts the old tree back.
    let inject = format!("inject={syscall}:signal=SIGKILL:when={nth}");
    let (status, said, _) = run(4, &["-e", &inject]);
    assert!(
        !status.success() && !said.contains("taw:"),
        "{status}: {said}"
    );
    assert!(
        matches!(read_tree(&dir.join(KEY)), Err(Bad::NotFound(_))),
        "in the window"
    );
    let names = listing(&dir);
    assert_eq!(
        names.len(),
        2,
        "the temp tree and the aside tree: {names:?}"
    );
    let report = rt.block_on(sweep(&dir, Duration::ZERO)).unwrap();
    assert_eq!(report.restored, vec![dir.join(KEY)], "{report:?}");
    assert_eq!(
        report.removed.len(),
        1,
        "the new tree, never published: {report:?}"
    );
    assert_eq!(read_tree(&dir.join(KEY)), Ok(2), "the old tree back");
    assert_eq!(listing(&dir), vec![std::ffi::OsString::from(KEY)]);

    // Killed just after the publish, at the rename that takes the old tree
    // from its aside name to a temp name: the new tree stays, and sweep
    // removes the old one rather than putting it back.
    let inject = format!("inject={syscall}:signal=SIGKILL:when={}", nth + 1);
    let (status, said, _) = run(5, &["-e", &inject]);
    assert!(
        !status.success() && !said.contains("taw:"),
        "{status}: {said}"
    );
    assert_eq!(read_tree(&dir.join(KEY)), Ok(5), "published");
    let asides: Vec<_> = listing(&dir)
        .into_iter()
        .filter(|n| n.to_string_lossy().ends_with(".old"))
        .collect();
    assert_eq!(asides.len(), 1, "the old tree, still aside");
    let report = rt.block_on(sweep(&dir, Duration::ZERO)).unwrap();
    assert!(report.restored.is_empty(), "{report:?}");
    assert_eq!(report.removed, vec![dir.join(&asides[0])], "{report:?}");
    assert_eq!(read_tree(&dir.join(KEY)), Ok(5));
    assert_eq!(listing(&dir), vec![std::ffi::OsString::from(KEY)]);
}
