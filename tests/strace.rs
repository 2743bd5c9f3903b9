//! Issue #2, points 2 and 3, seen from the kernel's side: the temp file's
//! flags, and the order of fsync, publish and directory fsync, traced with
//! strace.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::__private::is_temp_name;
use tokio_atomic_write::{Durability, Op, OpenOptions};

const TARGET: &str = "state.json";

/// One traced system call on a path inside the test directory.
#[derive(Debug)]
struct Call {
    name: String,
    line: String,
}

/// The child half: one commit, as `TAW_CASE` says.
fn child_commit() {
    let dir = std::env::var("TAW_DIR").unwrap();
    let case = std::env::var("TAW_CASE").unwrap();
    if case == "group" {
        return child_group_commit(Path::new(&dir));
    }
    let target = Path::new(&dir).join(TARGET);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = OpenOptions::new();
        opts.unnamed_temp(case.contains("unnamed"));
        if case.contains("none") {
            opts.durability(Durability::None);
        }
        if case.contains("noclobber") {
            opts.overwrite(false);
        }
        if case.contains("group") {
            // A root:4242 0640 target, replaced by root (group 0): the
            // group bits stay off until the group is copied.
            std::os::unix::fs::chown(&target, Some(0), Some(4242)).unwrap();
            let mode = std::fs::Permissions::from_mode(0o640);
            std::fs::set_permissions(&target, mode).unwrap();
        }
        if case.contains("secret") {
            // A 0600 target, replaced with `preserve_permissions(false)`.
            let secret = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&target, secret).unwrap();
            opts.preserve_permissions(false);
        }
        if case.contains("temp_dir") {
            let temps = Path::new(&dir).join("temps");
            std::fs::create_dir(&temps).unwrap();
            opts.temp_dir(temps);
        }
        let result = if case.contains("copy") {
            let source = Path::new(&dir).join("source");
            std::fs::write(&source, b"new content").unwrap();
            opts.copy(&source, &target).await.map(|n| assert_eq!(n, 11))
        } else {
            let mut file = opts.open(&target).await.unwrap();
            file.write_all(b"new content").await.unwrap();
            file.commit().await
        };
        if case.contains("fail_sync_temp") {
            let err = result.unwrap_err();
            assert_eq!(err.op(), Op::SyncTemp, "{err}");
            assert_eq!(err.io_error().raw_os_error(), Some(5), "EIO");
            assert!(!err.is_published());
        } else if case.contains("fail_datasync") {
            let err = result.unwrap_err();
            assert_eq!(err.op(), Op::SyncTemp, "{err}");
            assert!(err.is_published(), "linked to the target already");
        } else if case.contains("fail_sync_dir") {
            let err = result.unwrap_err();
            assert_eq!(err.op(), Op::SyncDir, "{err}");
            assert!(err.is_published(), "the rename had happened");
        } else {
            result.unwrap();
        }
        if case.contains("secret") {
            let final_mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
            assert_eq!(final_mode, 0o666 & !current_umask(), "the new-file default");
        }
        if case.contains("group") {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&target).unwrap();
            assert_eq!(
                (m.gid(), m.mode() & 0o777),
                (4242, 0o640),
                "group and mode kept"
            );
        }
    });
}

/// In the child: runs its commit and says `false`. In the parent: whether
/// strace is there (a visible skip, or a failure in CI, when it is not).
fn parent_with_strace() -> bool {
    if is_child() {
        child_commit();
        return false;
    }
    require(have("strace"), "strace")
}

/// Runs `test` again under strace for `case` and returns the calls that
/// touched the test directory, in order.
fn trace(test: &str, case: &str, existing: bool) -> Vec<Call> {
    trace_with(test, case, existing, &[], b"new content")
}

/// `trace` with extra strace arguments (fault injection) and the content
/// the target must hold afterwards.
fn trace_with(test: &str, case: &str, existing: bool, extra: &[&str], expect: &[u8]) -> Vec<Call> {
    let dir = scratch();
    trace_in(dir.path(), test, case, existing, extra, expect)
}

/// `trace_with` in `dir`, an empty directory (on a filesystem of the test's
/// choosing).
fn trace_in(
    dir: &Path,
    test: &str,
    case: &str,
    existing: bool,
    extra: &[&str],
    expect: &[u8],
) -> Vec<Call> {
    if existing {
        std::fs::write(dir.join(TARGET), b"old").unwrap();
    }
    let out = dir.join("strace.out");
    let calls = "trace=openat,read,write,fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,fchmod,fchown,close,flock,ioctl,copy_file_range";
    let out_str = out.to_str().unwrap();
    let dir_str = dir.to_str().unwrap();
    let mut wrap = vec!["strace", "-f", "-y", "-qq", "-e", calls, "-o", out_str];
    wrap.extend_from_slice(extra);
    run_child(
        test,
        &wrap,
        &[("TAW_DIR", dir_str), ("TAW_CASE", case)],
        None,
    );
    assert_eq!(std::fs::read(dir.join(TARGET)).unwrap(), expect);
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_no_leftovers(dir);
    let calls: Vec<Call> = text
        .lines()
        .filter(|l| l.contains(dir_str) && !l.contains("strace.out"))
        .filter_map(|l| {
            let rest = l.split_once(' ').map_or(l, |(_, r)| r).trim_start();
            let name = rest.split('(').next()?.to_string();
            Some(Call {
                name,
                line: rest.to_string(),
            })
        })
        .collect();
    assert!(!calls.is_empty(), "strace saw the commit:\n{text}");
    calls
}

fn position(calls: &[Call], what: &str, pred: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in\n{}", dump(calls)))
}

fn dump(calls: &[Call]) -> String {
    calls
        .iter()
        .map(|c| c.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_sync(c: &Call) -> bool {
    c.name == "fsync" || c.name == "fdatasync"
}

/// The temp file's descriptor argument names the temp file, not the dir.
fn on_temp(c: &Call) -> bool {
    c.line.contains("(deleted)") || c.line.contains(".tmp>")
}

fn check_full_order(calls: &[Call], publish: &str) {
    let sync_temp = position(calls, "fsync of the temp file", |c| {
        c.name == "fsync" && on_temp(c)
    });
    let published = position(calls, "publish", |c| {
        c.name.starts_with(publish) && c.line.contains(&format!("\"{TARGET}\""))
    });
    let sync_dir = position(calls, "fsync of the directory", |c| {
        c.name == "fsync" && !on_temp(c)
    });
    assert!(
        sync_temp < published,
        "temp synced before publish:\n{}",
        dump(calls)
    );
    assert!(
        published < sync_dir,
        "directory synced after publish:\n{}",
        dump(calls)
    );
    let last_write = calls.iter().rposition(|c| c.name == "write").unwrap();
    assert!(
        last_write < sync_temp,
        "all data written before the fsync:\n{}",
        dump(calls)
    );
    let unlinks_target = calls
        .iter()
        .any(|c| c.name.starts_with("unlink") && c.line.contains(&format!("\"{TARGET}\"")));
    assert!(
        !unlinks_target,
        "the target is never unlinked:\n{}",
        dump(calls)
    );
}

#[test]
fn named_temp_is_exclusive_and_synced_before_rename() {
    if !parent_with_strace() {
        return;
    }
    let calls = trace(
        "named_temp_is_exclusive_and_synced_before_rename",
        "named",
        true,
    );
    let create = position(&calls, "temp create", |c| {
        c.name == "openat" && c.line.contains("O_CREAT")
    });
    let line = &calls[create].line;
    for flag in ["O_CREAT", "O_EXCL", "O_NOFOLLOW", "O_CLOEXEC"] {
        assert!(line.contains(flag), "{flag} in {line}");
    }
    let name = line.split('"').nth(1).unwrap();
    assert!(is_temp_name(OsStr::new(name)), "{name}");
    assert!(name.starts_with(".state.json."), "{name}");
    check_full_order(&calls, "rename");
    assert!(
        !calls.iter().any(|c| c.name.starts_with("unlink")),
        "{}",
        dump(&calls)
    );
    // Locked from its creation (for `sweep`), and still locked through the
    // rename: a durable commit (its fsync has reported any write-back
    // error) renames the temp file while open and closes it after, with
    // no second descriptor.
    let lock = position(&calls, "flock", |c| c.name == "flock");
    assert!(
        create < lock && calls[lock].line.contains("LOCK_EX"),
        "{}",
        dump(&calls)
    );
    let rename = position(&calls, "rename", |c| c.name.starts_with("rename"));
    let closed_before = calls[..rename]
        .iter()
        .any(|c| c.name == "close" && on_temp(c));
    let target_fd = format!("/{TARGET}>");
    let closed_after: Vec<&Call> = calls[rename..]
        .iter()
        .filter(|c| c.name == "close" && c.line.contains(&target_fd))
        .collect();
    assert!(
        !closed_before && closed_after.len() == 1,
        "{}",
        dump(&calls)
    );
}

/// The filesystems the sync after an O_TMPFILE link depends on, each with
/// the call expected on the temp file right after the link: none where a
/// journal commits the link with the directory fsync (ext4 with a journal,
/// xfs; tmpfs keeps nothing anyway), `fdatasync` on btrfs, a full `fsync`
/// on ext4 without a journal (and anything unknown), before the rename
/// when replacing (a name must never point at an inode whose link count on
/// disk is 0), and then the only one.
const AFTER_LINK_CASES: [(&str, &[&str], Option<&str>); 5] = [
    ("ext4", &[], None),
    ("ext4", &["-O", "^has_journal"], Some("fsync")),
    ("xfs", &[], None),
    ("btrfs", &[], Some("fdatasync")),
    ("tmpfs", &[], None),
];

/// A work directory on `fs` made with `mkfs_args`, or a visible skip.
fn filesystem(fs: &str, mkfs_args: &[&str]) -> Option<(OtherFs, PathBuf)> {
    if fs == "tmpfs" {
        let mounted = mount_tmpfs("16m");
        if !require(mounted.is_some(), "root for a tmpfs mount") {
            return None;
        }
        let mounted = mounted.unwrap();
        let work = mounted.dir.path().to_path_buf();
        return Some((mounted, work));
    }
    require_image(fs, mkfs_args)
}

/// An O_TMPFILE temp file is linked in (under a temp name then renamed when
/// replacing, straight to the target without clobbering), and synced again
/// right after the link only as its filesystem needs.
#[test]
fn after_an_unnamed_link_each_filesystem_gets_the_sync_it_needs() {
    if !parent_with_strace() {
        return;
    }
    let test = "after_an_unnamed_link_each_filesystem_gets_the_sync_it_needs";
    for (fs, mkfs_args, expected) in AFTER_LINK_CASES {
        let label = format!("{fs} {mkfs_args:?}");
        for (case, existing, publish) in [
            ("unnamed", true, "rename"),
            ("noclobber unnamed", false, "linkat"),
        ] {
            let Some((_mount, dir)) = filesystem(fs, mkfs_args) else {
                continue;
            };
            let calls = trace_in(&dir, test, case, existing, &[], b"new content");
            let create = position(&calls, "O_TMPFILE open", |c| c.line.contains("O_TMPFILE"));
            assert!(
                calls[create].line.contains("O_CLOEXEC"),
                "{}",
                calls[create].line
            );
            let link = position(&calls, "linkat", |c| c.name == "linkat");
            assert!(create < link, "{label}:\n{}", dump(&calls));
            check_full_order(&calls, publish);
            let before = calls[..link].iter().filter(|c| is_sync(c)).count();
            let once_linked = expected == Some("fsync") && publish == "rename";
            assert_eq!(
                before,
                usize::from(!once_linked),
                "{label}, {case}: syncs before the link:\n{}",
                dump(&calls)
            );
            if publish == "rename" {
                // Killed between the link and the rename, a process leaves
                // the temp name: nothing runs in between but the sync the
                // filesystem needs before the rename.
                let rename = position(&calls, "rename", |c| c.name.starts_with("rename"));
                let between: Vec<&str> = calls[link + 1..rename]
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|n| *n != "close")
                    .collect();
                let allowed: Vec<&str> = expected.into_iter().collect();
                assert_eq!(
                    between,
                    allowed,
                    "{label}: between link and rename:\n{}",
                    dump(&calls)
                );
            }
            // What touches the temp file between its link and the
            // directory fsync.
            let end = calls[link..]
                .iter()
                .position(|c| c.name == "fsync" && !on_temp(c))
                .map_or(calls.len(), |i| link + i);
            let after: Vec<&str> = calls[link..end]
                .iter()
                .filter(|c| is_sync(c))
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(
                after,
                expected.into_iter().collect::<Vec<_>>(),
                "{label}, {case}: syncs after the link:\n{}",
                dump(&calls)
            );
        }
    }
}

#[test]
fn no_clobber_links_or_renames_without_replace() {
    if !parent_with_strace() {
        return;
    }
    let test = "no_clobber_links_or_renames_without_replace";
    let calls = trace(test, "noclobber unnamed", false);
    check_full_order(&calls, "linkat");
    assert!(
        !calls.iter().any(|c| c.name.starts_with("rename")),
        "{}",
        dump(&calls)
    );

    let calls = trace(test, "noclobber named", false);
    check_full_order(&calls, "renameat2");
    let rename = position(&calls, "renameat2", |c| c.name == "renameat2");
    assert!(
        calls[rename].line.contains("RENAME_NOREPLACE"),
        "{}",
        calls[rename].line
    );
}

/// `copy` (issue #20): the kernel copies into the temp file (a reflink or
/// `copy_file_range`; no byte read or written by the process), then the
/// commit of any write: fsync, rename, directory fsync; none of the syncs
/// with `Durability::None`.
#[test]
fn a_copy_is_made_by_the_kernel_then_committed_like_a_write() {
    if !parent_with_strace() {
        return;
    }
    for case in ["copy named", "copy none named"] {
        let calls = trace(
            "a_copy_is_made_by_the_kernel_then_committed_like_a_write",
            case,
            true,
        );
        let copied = position(&calls, "the kernel's copy into the temp file", |c| {
            (c.name == "copy_file_range" || (c.name == "ioctl" && c.line.contains("FICLONE")))
                && on_temp(c)
        });
        // After the crate opens the source (the test wrote it before).
        let opened = position(&calls, "the open of the source", |c| {
            c.name == "openat" && c.line.contains("\"source\"") && c.line.contains("O_RDONLY")
        });
        let by_hand = calls[opened..]
            .iter()
            .any(|c| c.name == "read" || c.name == "write");
        assert!(!by_hand, "no read or write of the bytes:\n{}", dump(&calls));
        let renamed = position(&calls, "rename", |c| c.name.starts_with("rename"));
        assert!(copied < renamed, "{}", dump(&calls));
        if case.contains("none") {
            assert!(!calls.iter().any(is_sync), "{}", dump(&calls));
            continue;
        }
        let synced = position(&calls, "fsync of the temp file", |c| {
            c.name == "fsync" && on_temp(c)
        });
        let dir_synced = position(&calls, "fsync of the directory", |c| {
            c.name == "fsync" && !on_temp(c)
        });
        assert!(
            copied < synced && synced < renamed && renamed < dir_synced,
            "{}",
            dump(&calls)
        );
    }
}

/// A kernel whose `copy_file_range` answers 0 for a file it cannot copy
/// (procfs, sysfs, some overlayfs files on 5.3 to 5.18; injected here):
/// the copy reads and writes the file instead of publishing it empty.
#[test]
fn a_copy_the_kernel_answers_0_for_is_read_instead() {
    if !parent_with_strace() {
        return;
    }
    let test = "a_copy_the_kernel_answers_0_for_is_read_instead";
    let inject = ["-e", "inject=copy_file_range:retval=0"];
    let calls = trace_with(test, "copy named", true, &inject, b"new content");
    let zero = position(&calls, "copy_file_range", |c| c.name == "copy_file_range");
    assert!(
        calls[zero].line.contains("(INJECTED)"),
        "{}",
        calls[zero].line
    );
    position(&calls, "the write of the bytes read", |c| {
        c.name == "write" && on_temp(c) && c.line.contains("new content")
    });
}

/// On xfs and btrfs the copy is one `FICLONE`, which shares the source's
/// extents (what `tests/copy.rs` sees in the free space), and no byte
/// copied besides.
#[test]
fn on_xfs_and_btrfs_a_copy_is_one_reflink() {
    if !parent_with_strace() {
        return;
    }
    for fs in ["xfs", "btrfs"] {
        let Some((_mount, dir)) = filesystem(fs, &[]) else {
            continue;
        };
        let test = "on_xfs_and_btrfs_a_copy_is_one_reflink";
        let calls = trace_in(&dir, test, "copy named", true, &[], b"new content");
        let cloned = position(&calls, "FICLONE", |c| {
            c.name == "ioctl" && c.line.contains("FICLONE")
        });
        assert!(
            calls[cloned].line.ends_with("= 0"),
            "{fs}: {}",
            calls[cloned].line
        );
        assert!(
            !calls.iter().any(|c| c.name == "copy_file_range"),
            "{fs}: the reflink did it all:\n{}",
            dump(&calls)
        );
    }
}

#[test]
fn durability_none_never_syncs() {
    if !parent_with_strace() {
        return;
    }
    for case in ["none named", "none unnamed"] {
        let calls = trace("durability_none_never_syncs", case, true);
        assert!(!calls.iter().any(is_sync), "{}", dump(&calls));
        let rename = position(&calls, "rename", |c| c.name.starts_with("rename"));
        // Without an fsync, the close is the only report of a failed
        // write-back (NFS): it comes before the rename.
        assert!(
            calls[..rename]
                .iter()
                .any(|c| c.name == "close" && on_temp(c)),
            "{}",
            dump(&calls)
        );
    }
}

/// A failed fsync of the temp file fails the commit with `SyncTemp`: never
/// retried, the target keeps its old content, the temp file is removed.
#[test]
fn a_failed_temp_fsync_is_not_retried_and_changes_nothing() {
    if !parent_with_strace() {
        return;
    }
    let test = "a_failed_temp_fsync_is_not_retried_and_changes_nothing";
    // strace counts per thread: the commit's first fsync is the temp file's.
    let inject = ["-e", "inject=fsync:error=EIO:when=1"];
    for case in ["named fail_sync_temp", "unnamed fail_sync_temp"] {
        let calls = trace_with(test, case, true, &inject, b"old");
        let syncs: Vec<_> = calls.iter().filter(|c| is_sync(c)).collect();
        assert_eq!(
            syncs.len(),
            1,
            "one fsync, failed, not retried:\n{}",
            dump(&calls)
        );
        assert!(syncs[0].line.contains("EIO"), "{}", syncs[0].line);
        // Nothing reached the target: no rename, no link to its name.
        let target = format!("\"{TARGET}\"");
        assert!(
            !calls.iter().any(|c| c.name.starts_with("rename")
                || (c.name == "linkat" && c.line.contains(&target))),
            "{}",
            dump(&calls)
        );
    }
}

/// A failed directory fsync comes after the rename: its own error, the new
/// content visible, nothing deleted.
#[test]
fn a_failed_directory_fsync_reports_published_and_deletes_nothing() {
    if !parent_with_strace() {
        return;
    }
    let test = "a_failed_directory_fsync_reports_published_and_deletes_nothing";
    for kind in ["named", "unnamed"] {
        // Which fsync is the directory's depends on the filesystem (ext4
        // without a journal syncs an O_TMPFILE file again after its link):
        // count them in a clean run first.
        let clean = trace(test, kind, true);
        let nth = 1 + clean
            .iter()
            .filter(|c| c.name == "fsync")
            .position(|c| !on_temp(c))
            .unwrap_or_else(|| panic!("no directory fsync in\n{}", dump(&clean)));
        let inject = [
            "-e".to_string(),
            format!("inject=fsync:error=EIO:when={nth}"),
        ];
        let inject: Vec<&str> = inject.iter().map(String::as_str).collect();
        let case = format!("{kind} fail_sync_dir");
        let calls = trace_with(test, &case, true, &inject, b"new content");
        let rename = position(&calls, "rename", |c| c.name.starts_with("rename"));
        let unlinks = calls[rename..].iter().any(|c| c.name.starts_with("unlink"));
        assert!(!unlinks, "{}", dump(&calls));
        let failed = position(&calls, "failed dir fsync", |c| {
            c.name == "fsync" && c.line.contains("EIO")
        });
        assert!(
            rename < failed && !on_temp(&calls[failed]),
            "{}",
            dump(&calls)
        );
    }
}

/// On the O_TMPFILE no-clobber path the link is the publish: a failed sync
/// right after it (btrfs) is reported as published, and nothing is removed.
#[test]
fn a_failed_sync_after_an_unnamed_link_reports_published() {
    if !parent_with_strace() {
        return;
    }
    let test = "a_failed_sync_after_an_unnamed_link_reports_published";
    let Some((_mount, dir)) = require_image("btrfs", &[]) else {
        return;
    };
    let inject = ["-e", "inject=fdatasync:error=EIO:when=1"];
    let calls = trace_in(
        &dir,
        test,
        "noclobber unnamed fail_datasync",
        false,
        &inject,
        b"new content",
    );
    let link = position(&calls, "linkat", |c| c.name == "linkat");
    assert!(
        calls[link].line.contains(&format!("\"{TARGET}\"")),
        "{}",
        dump(&calls)
    );
    assert!(
        !calls.iter().any(|c| c.name.starts_with("unlink")),
        "{}",
        dump(&calls)
    );
}

/// With a `temp_dir`, both directories are synced after the rename.
#[test]
fn a_temp_dir_is_synced_after_the_rename_too() {
    if !parent_with_strace() {
        return;
    }
    let test = "a_temp_dir_is_synced_after_the_rename_too";
    let calls = trace(test, "named temp_dir", true);
    let rename = position(&calls, "rename", |c| c.name.starts_with("rename"));
    let dir_syncs: Vec<&Call> = calls[rename..]
        .iter()
        .filter(|c| c.name == "fsync" && !on_temp(c))
        .collect();
    assert_eq!(dir_syncs.len(), 2, "{}", dump(&calls));
    assert!(dir_syncs[1].line.contains("/temps>"), "{}", dump(&calls));
}

const GROUP: usize = 32;

/// The child half of the group-commit test: `GROUP` tasks open their files,
/// wait for each other, then commit at once. After its commit returns, task
/// `i` stats `done-{i}`: a marker in the trace.
fn child_group_commit(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(GROUP));
        let tasks: Vec<_> = (0..GROUP)
            .map(|i| {
                let (dir, barrier) = (dir.to_path_buf(), barrier.clone());
                tokio::spawn(async move {
                    let mut file = OpenOptions::new()
                        .open(dir.join(format!("f{i}")))
                        .await
                        .unwrap();
                    file.write_all(b"new content").await.unwrap();
                    barrier.wait().await;
                    file.commit().await.unwrap();
                    let _ = std::fs::symlink_metadata(dir.join(format!("done-{i}")));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// One system call seen by `strace -f`, possibly split over an
/// `<unfinished ...>` line and a `resumed` line: where it entered and where
/// it returned, as line numbers.
#[derive(Debug)]
struct Span {
    name: String,
    args: String,
    entered: usize,
    returned: usize,
}

fn spans(text: &str) -> Vec<Span> {
    let mut done = Vec::new();
    let mut open: std::collections::HashMap<String, Span> = Default::default();
    for (n, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split(' ').next().unwrap_or_default();
            if let Some(mut span) = open.remove(pid) {
                assert_eq!(span.name, name, "{line}");
                span.returned = n;
                done.push(span);
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        let span = Span {
            name: name.to_string(),
            args: args.to_string(),
            entered: n,
            returned: n,
        };
        if rest.ends_with("<unfinished ...>") {
            open.insert(pid.to_string(), span);
        } else {
            done.push(span);
        }
    }
    done
}

/// Group commit (issue #3): commits into one directory that are in flight
/// together share directory fsyncs, and still every commit returns only
/// after a directory fsync that entered the kernel after its own rename
/// had returned.
#[test]
fn concurrent_commits_share_directory_fsyncs_each_after_its_rename() {
    if !parent_with_strace() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("strace.out");
    let calls = "trace=fsync,rename,renameat,renameat2,statx,newfstatat";
    run_child(
        "concurrent_commits_share_directory_fsyncs_each_after_its_rename",
        &[
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            calls,
            // Slow fsyncs: commits surely arrive while one runs.
            "-e",
            "inject=fsync:delay_exit=10000",
            "-o",
            out.to_str().unwrap(),
        ],
        &[
            ("TAW_DIR", dir.path().to_str().unwrap()),
            ("TAW_CASE", "group"),
        ],
        None,
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let spans = spans(&text);
    let dir_str = dir.path().to_str().unwrap();
    let dir_syncs: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "fsync"
                && s.args
                    .starts_with(&format!("{}<{dir_str}>", s.args.split('<').next().unwrap()))
        })
        .collect();
    for i in 0..GROUP {
        assert_eq!(
            std::fs::read(dir.path().join(format!("f{i}"))).unwrap(),
            b"new content"
        );
        let rename = spans
            .iter()
            .find(|s| s.name.starts_with("rename") && s.args.contains(&format!("\"f{i}\"")))
            .unwrap_or_else(|| panic!("no rename to f{i} in\n{text}"));
        let returned = spans
            .iter()
            .find(|s| s.args.contains(&format!("done-{i}\"")))
            .unwrap_or_else(|| panic!("no marker for f{i} in\n{text}"));
        let covered = dir_syncs
            .iter()
            .any(|f| f.entered > rename.returned && f.returned < returned.entered);
        assert!(
            covered,
            "f{i}: no directory fsync between its rename (line {}) and its return (line {}):\n{text}",
            rename.returned + 1,
            returned.entered + 1
        );
    }
    assert!(
        dir_syncs.len() < GROUP,
        "{} directory fsyncs for {GROUP} commits: not shared",
        dir_syncs.len()
    );
    eprintln!("{GROUP} commits, {} directory fsyncs", dir_syncs.len());
}

/// Issue #17, point 5: with `preserve_permissions(false)`, the temp file
/// for a 0600 target is created 0600 (less the umask), not with the
/// new-file default narrowed a moment later: a descriptor opened in that
/// window would read all that is written after it. The final file gets the
/// new-file default at commit.
#[test]
fn a_temp_file_is_created_no_wider_than_the_file_it_replaces() {
    if !parent_with_strace() {
        return;
    }
    // A temp file whose group is not yet the target's gets no group bits
    // (review of #17): its group's members could open it meanwhile.
    let cases = [
        "named secret",
        "unnamed secret",
        "named group",
        "unnamed group",
    ];
    for case in cases {
        let calls = trace(
            "a_temp_file_is_created_no_wider_than_the_file_it_replaces",
            case,
            true,
        );
        let create = position(&calls, "temp create", |c| {
            c.name == "openat" && (c.line.contains("O_CREAT") || c.line.contains("O_TMPFILE"))
        });
        let line = &calls[create].line;
        let mode = line
            .rsplit_once(") =")
            .and_then(|(args, _)| args.rsplit_once(", "))
            .map(|(_, mode)| u32::from_str_radix(mode.trim_start_matches('0'), 8).unwrap())
            .unwrap_or_else(|| panic!("no mode in {line}"));
        let wider = match case.contains("group") {
            true => mode & 0o070,
            false => mode & 0o077,
        };
        assert_eq!(wider, 0, "{case}: created {mode:o}: {line}");
    }
}
