//! Issue #23, items 1 and 2, under power cuts (the harness of
//! `tests/power_loss.rs`: loop-mounted ext4, xfs and ext4 without a
//! journal, cut with the shutdown ioctl, mounted again from the image as
//! it was at the cut):
//!
//! - a `rename` that returned `Ok` shows the new name with the whole
//!   content, the source written without a sync by the caller, and the
//!   source's name gone, in one directory and across two;
//! - a write, a copy, a rename and an `AsyncAtomicDir` into missing
//!   directories created by `create_parents` are there after the cut.
//!
//! Root, xfs_io and the mkfs tools are needed: a visible skip elsewhere,
//! a failure in CI.

mod common;

use std::path::Path;

use common::power::PowerFs;
use common::*;
use tokio_atomic_write::{DirOptions, Exists, OpenOptions};

const FILESYSTEMS: [&str; 3] = ["ext4", "xfs", "ext4-nojournal"];

/// 1 MiB that tells its version apart: a file that is empty, torn or of
/// another version after the cut fails the comparison.
fn body(version: u32) -> Vec<u8> {
    tagged_version(version, 1 << 20)
}

#[test]
fn a_rename_that_returned_ok_survives_a_power_cut() {
    let rt = runtime();
    for fs in FILESYSTEMS {
        for across in [false, true] {
            let Some(mut power) = PowerFs::new(fs, "") else {
                continue;
            };
            let work = power.work();
            let incoming = work.join("incoming");
            std::fs::create_dir(&incoming).unwrap();
            let to = work.join("current");
            rt.block_on(tokio_atomic_write::write(&to, body(1)))
                .unwrap();
            power.sync();
            let from = match across {
                true => incoming.join("next"),
                false => work.join("next"),
            };
            // Written by the caller without any sync: the rename must
            // make the data durable before the name.
            std::fs::write(&from, body(2)).unwrap();
            rt.block_on(tokio_atomic_write::rename(&from, &to)).unwrap();
            power.cut();
            power.remount();
            let what = format!("{fs}, across directories: {across}");
            assert!(
                std::fs::read(&to).unwrap() == body(2),
                "{what}: the new content, whole"
            );
            assert!(!from.exists(), "{what}: the source's name came back");
        }
    }
}

#[test]
fn what_create_parents_made_survives_a_power_cut() {
    let rt = runtime();
    for fs in FILESYSTEMS {
        let Some(mut power) = PowerFs::new(fs, "") else {
            continue;
        };
        let work = power.work();
        let mut opts = OpenOptions::new();
        opts.create_parents(true);
        rt.block_on(async {
            opts.write(work.join("w/a/b/c/file"), body(1))
                .await
                .unwrap();
            std::fs::write(work.join("source"), body(2)).unwrap();
            opts.copy(work.join("source"), work.join("c/a/b/copy"))
                .await
                .unwrap();
            opts.rename(work.join("source"), work.join("r/a/b/moved"))
                .await
                .unwrap();
            let tree = DirOptions::new()
                .create_parents(true)
                .create(work.join("t/a/b/tree"))
                .await
                .unwrap();
            std::fs::write(tree.path().join("inside"), body(3)).unwrap();
            tree.commit(Exists::Fail).await.unwrap();
        });
        power.cut();
        power.remount();
        let check = |path: &str, version: u32| {
            let path = work.join(path);
            assert!(
                std::fs::read(&path).is_ok_and(|b| b == body(version)),
                "{fs}: {} lost or torn",
                path.display()
            );
        };
        check("w/a/b/c/file", 1);
        check("c/a/b/copy", 2);
        check("r/a/b/moved", 2);
        check("t/a/b/tree/inside", 3);
        assert!(!Path::new(&work.join("source")).exists(), "{fs}");
    }
}

/// The lazy FUSE filesystem keeps exactly what was synced: a name whose
/// directory was never synced is gone after its crash, a file whose data
/// was never synced is empty. So each sync of a rename and of
/// `create_parents` shows here, where ext4 and xfs, which commit a
/// directory's creation with any later sync of the same journal, cannot
/// tell. It refuses `renameat2` flags: a no-clobber rename is a link and
/// an unlink here.
#[test]
fn on_a_filesystem_that_keeps_only_what_was_synced_nothing_acknowledged_is_lost() {
    let fs = common::lazyfs::LazyFs::mount();
    if !require(fs.is_some(), "root and /dev/fuse for a FUSE mount") {
        return;
    }
    let mut fs = fs.unwrap();
    let root = fs.path().to_path_buf();
    let rt = runtime();
    let mut opts = OpenOptions::new();
    opts.create_parents(true);
    std::fs::create_dir(root.join("incoming")).unwrap();
    std::fs::File::open(&root).unwrap().sync_all().unwrap();
    rt.block_on(async {
        opts.write(root.join("w/a/b/file"), body(1)).await.unwrap();
        // Written without a sync, their names synced: a rename that does
        // not sync their directory after leaves them there.
        std::fs::write(root.join("incoming/replace"), body(2)).unwrap();
        std::fs::write(root.join("incoming/move"), body(3)).unwrap();
        std::fs::File::open(root.join("incoming"))
            .unwrap()
            .sync_all()
            .unwrap();
        opts.rename(root.join("incoming/replace"), root.join("r/a/replaced"))
            .await
            .unwrap();
        let mut no_clobber = opts.clone();
        no_clobber.overwrite(false);
        no_clobber
            .rename(root.join("incoming/move"), root.join("m/a/moved"))
            .await
            .unwrap();
    });
    fs.crash();
    let check = |path: &str, version: u32| {
        let got = std::fs::read(root.join(path));
        assert!(
            got.as_ref().is_ok_and(|b| *b == body(version)),
            "{path}: {:?}",
            got.map(|b| b.len())
        );
    };
    check("w/a/b/file", 1);
    check("r/a/replaced", 2);
    check("m/a/moved", 3);
    let left: Vec<_> = std::fs::read_dir(root.join("incoming"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the sources' names came back: {left:?}");
}
