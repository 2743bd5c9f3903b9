//! Issue #5: fillers of `AsyncAtomicDir` trees SIGKILLed at random
//! moments, mid-build or mid-commit. After each kill the replaced target
//! is a whole tree, the last acknowledged or the one in flight; a key
//! filled with `Keep` is whole or absent (whole if acknowledged); and
//! `sweep` removes exactly the temp trees left behind.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::tree::{fill, read_tree, Bad};
use common::*;
use tokio_atomic_write::{sweep, AsyncAtomicDir, Exists};

const NAME: &str = "killed_fillers_leave_whole_trees_and_sweep_removes_the_rest";
const KEY: &str = "key";

/// The child: for `id` from `TAW_START` on, replaces `KEY` with tree `id`
/// and says `taw:ack id`, then fills the fresh key `k{id}` with `Keep` and
/// says `taw:kept id`; until killed.
fn child_filler() {
    let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let start: u32 = std::env::var("TAW_START").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
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
        let (ack, kept) = (said(&out, "ack"), said(&out, "kept"));
        acks += ack.len();
        if let Some(&last) = ack.last() {
            acked = last;
            after_ack += 1;
        }
        // The replace in flight when killed: after the last ack, or the
        // child's first.
        let in_flight = ack.last().map_or(next, |a| a + 1);
        match read_tree(&dir.join(KEY)) {
            Ok(id) if id == acked => {}
            Ok(id) if id == in_flight => {
                in_flight_won += 1;
                acked = id;
            }
            other => {
                panic!("kill {kill} (seed {seed}): {other:?}, acked {acked}, in flight {in_flight}")
            }
        }
        for id in next..=in_flight {
            let key = dir.join(format!("k{id}"));
            match read_tree(&key) {
                Ok(found) => assert_eq!(found, id, "kill {kill}: k{id}"),
                Err(Bad::NotFound(_)) => {
                    assert!(!kept.contains(&id), "kill {kill}: k{id} kept, then lost")
                }
                Err(e) => panic!("kill {kill}: k{id}: {e:?}"),
            }
        }
        next = in_flight + 1;
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
