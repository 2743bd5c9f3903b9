//! Issue #2, point 2: the unnamed temp file is preferred, and the named one
//! is chosen at run time where it is not available: a filesystem without
//! O_TMPFILE (EOPNOTSUPP), a kernel without it (EISDIR), no /proc. Faults
//! are injected with strace, restricted with -P to the test directory so
//! that its per-thread call counter sees only the crate's calls.

mod common;

use std::path::Path;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::OpenOptions;

/// The child half: `TAW_OPENS` commits with default options. With
/// `TAW_LIST`, it prints how many named temp files exist while each is open
/// (not under strace: listing would add calls to the counted ones). One
/// blocking thread, so that strace's per-thread counter sees every open.
fn child_commits() {
    let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
    let opens: usize = std::env::var("TAW_OPENS").map_or(1, |n| n.parse().unwrap());
    let list = std::env::var_os("TAW_LIST").is_some();
    let target = dir.join("t");
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..opens {
            let mut file = OpenOptions::new()
                .buffer_size(1)
                .open(&target)
                .await
                .unwrap();
            file.write_all(format!("commit {i}").as_bytes())
                .await
                .unwrap();
            file.flush().await.unwrap();
            if list {
                println!("\nNAMED_TEMPS={}", temp_files(&dir).len());
            }
            file.commit().await.unwrap();
        }
    });
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        format!("commit {}", opens - 1)
    );
}

/// In the child: runs its commits and says `false`. In the parent: whether
/// strace is there.
fn parent_with_strace() -> bool {
    if is_child() {
        child_commits();
        return false;
    }
    require(have("strace"), "strace")
}

fn named_counts(stdout: &[u8]) -> Vec<usize> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once("NAMED_TEMPS=").map(|(_, n)| n))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Runs `test` in a child under strace, injecting `errno` into the second
/// `openat` on the test directory of the child's one blocking thread: the
/// first O_TMPFILE open, right after the directory's own open. Returns the
/// traced `openat` calls on the directory.
fn with_injected_openat_error(test: &str, errno: &str, dir: &Path, opens: &str) -> Vec<String> {
    let log = scratch();
    let out = log.path().join("strace.out");
    let inject = format!("inject=openat:error={errno}:when=2");
    let out_s = out.to_str().unwrap();
    let dir_s = dir.to_str().unwrap();
    let output = run_child(
        test,
        &[
            "strace",
            "-f",
            "-qq",
            "-P",
            dir_s,
            "-e",
            "trace=openat",
            "-e",
            &inject,
            "-o",
            out_s,
        ],
        &[("TAW_DIR", dir_s), ("TAW_OPENS", opens)],
        None,
    );
    drop(output);
    let trace = std::fs::read_to_string(&out).unwrap();
    trace
        .lines()
        .filter(|l| l.contains("openat("))
        .map(str::to_string)
        .collect()
}

/// The `O_TMPFILE` and named (`O_EXCL`) creates, in order.
fn creates(trace: &[String]) -> Vec<&str> {
    trace
        .iter()
        .filter(|l| l.contains("O_TMPFILE") || l.contains("O_EXCL"))
        .map(String::as_str)
        .collect()
}

#[test]
fn by_default_the_temp_file_is_unnamed() {
    if is_child() {
        return child_commits();
    }
    let dir = scratch();
    let dir_s = dir.path().to_str().unwrap();
    let env = [("TAW_DIR", dir_s), ("TAW_LIST", "1")];
    let out = run_child("by_default_the_temp_file_is_unnamed", &[], &env, None);
    assert_eq!(named_counts(&out.stdout), vec![0]);
    assert_no_leftovers(dir.path());
}

/// A filesystem without O_TMPFILE: this open falls back to a named temp
/// file; the next open tries O_TMPFILE again (another directory may be on
/// a filesystem that has it).
#[test]
fn eopnotsupp_falls_back_to_a_named_temp_per_open() {
    let test = "eopnotsupp_falls_back_to_a_named_temp_per_open";
    if !parent_with_strace() {
        return;
    }
    let dir = scratch();
    let trace = with_injected_openat_error(test, "EOPNOTSUPP", dir.path(), "2");
    let c = creates(&trace);
    assert_eq!(c.len(), 3, "{c:#?}");
    assert!(
        c[0].contains("O_TMPFILE") && c[0].contains("EOPNOTSUPP"),
        "{c:#?}"
    );
    assert!(
        c[1].contains("O_EXCL") && !c[1].contains("= -1"),
        "fell back:\n{c:#?}"
    );
    assert!(
        c[2].contains("O_TMPFILE") && !c[2].contains("= -1"),
        "tried again:\n{c:#?}"
    );
    assert_no_leftovers(dir.path());
}

/// A kernel without O_TMPFILE (EISDIR): remembered for the process, so
/// later opens go straight to a named temp file.
#[test]
fn eisdir_is_remembered_for_the_process() {
    let test = "eisdir_is_remembered_for_the_process";
    if !parent_with_strace() {
        return;
    }
    let dir = scratch();
    let trace = with_injected_openat_error(test, "EISDIR", dir.path(), "3");
    let c = creates(&trace);
    assert_eq!(c.len(), 4, "{c:#?}");
    assert!(
        c[0].contains("O_TMPFILE") && c[0].contains("EISDIR"),
        "{c:#?}"
    );
    for named in &c[1..] {
        assert!(
            named.contains("O_EXCL") && !named.contains("= -1"),
            "{c:#?}"
        );
    }
    assert_no_leftovers(dir.path());
}

/// A real error from the O_TMPFILE open (here EACCES) is not a reason to
/// fall back: it is reported.
#[test]
fn other_errors_are_reported_not_fallen_back_from() {
    let test = "other_errors_are_reported_not_fallen_back_from";
    if is_child() {
        let dir = std::path::PathBuf::from(std::env::var("TAW_DIR").unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(OpenOptions::new().open(dir.join("t")))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        assert_eq!(err.op(), tokio_atomic_write::Op::CreateTemp);
        return;
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let dir = scratch();
    let trace = with_injected_openat_error(test, "EACCES", dir.path(), "1");
    let c = creates(&trace);
    assert_eq!(c.len(), 1, "no named fallback: {c:#?}");
    assert!(
        c[0].contains("O_TMPFILE") && c[0].contains("EACCES"),
        "{c:#?}"
    );
    assert_eq!(listing(dir.path()), Vec::<std::ffi::OsString>::new());
}

/// Without /proc an unnamed file cannot be linked in: the named temp file
/// is used from the start. Run in a mount namespace without /proc.
#[test]
fn without_proc_the_temp_file_is_named() {
    let test = "without_proc_the_temp_file_is_named";
    if is_child() {
        assert!(!Path::new("/proc/self/fd").exists(), "/proc is gone here");
        return child_commits();
    }
    if !require(
        is_root() && have("unshare"),
        "root and unshare (a mount namespace)",
    ) {
        return;
    }
    let dir = scratch();
    let dir_s = dir.path().to_str().unwrap();
    let script = "umount -l /proc && exec \"$0\" \"$@\"";
    let env = [("TAW_DIR", dir_s), ("TAW_LIST", "1")];
    let out = run_child(
        test,
        &["unshare", "--mount", "sh", "-c", script],
        &env,
        None,
    );
    assert_eq!(named_counts(&out.stdout), vec![1]);
    assert_no_leftovers(dir.path());
}

/// A filesystem that refuses chmod (vfat, FUSE shares; EPERM injected
/// here): the commit goes on, and the file keeps the mode it was created
/// with, never wider than the target's.
#[test]
fn a_filesystem_refusing_chmod_still_commits() {
    let test = "a_filesystem_refusing_chmod_still_commits";
    if !parent_with_strace() {
        return;
    }
    let dir = scratch();
    let target = dir.path().join("t");
    std::fs::write(&target, b"old").unwrap();
    std::fs::set_permissions(
        &target,
        std::os::unix::fs::PermissionsExt::from_mode(0o4640),
    )
    .unwrap();
    let dir_s = dir.path().to_str().unwrap();
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fchmod",
        "-e",
        "inject=fchmod:error=EPERM",
    ];
    let out = run_child(test, &strace, &[("TAW_DIR", dir_s)], None);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"commit 0");
    let mode = mode_of(&target);
    assert_eq!(mode & !0o640, 0, "never wider than 0640: {mode:o}");
    assert_no_leftovers(dir.path());
}
