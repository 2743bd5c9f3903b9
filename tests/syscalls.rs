//! Issue #22, "System calls": the calls one commit makes, counted with
//! strace for each path (named and `O_TMPFILE` temp file, replace and
//! no-clobber, `Durability::Full` and `None`) next to raw std's, and held
//! to the counts in the README's table. Each call the crate makes beyond
//! std's serves a guarantee; `src/core/mod.rs` says which.

mod common;

use std::path::Path;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Durability, OpenOptions};

const TARGET: &str = "state.json";
const NEW: &[u8] = &[7; 4096];

/// A path and its calls for one commit of 4 KiB over an existing file (a
/// new one for no-clobber), after a first commit in the same process (so
/// that what is checked once per process, such as `O_TMPFILE` support,
/// does not count).
struct Case {
    name: &'static str,
    calls: usize,
}

/// The README's table, row by row.
const CASES: [Case; 10] = [
    Case {
        name: "std full",
        calls: 8,
    },
    Case {
        name: "std none",
        calls: 4,
    },
    Case {
        name: "named replace full",
        calls: 15,
    },
    Case {
        name: "named replace none",
        calls: 14,
    },
    Case {
        name: "named noclobber full",
        calls: 14,
    },
    Case {
        name: "named noclobber none",
        calls: 13,
    },
    Case {
        name: "unnamed replace full",
        calls: 17,
    },
    Case {
        name: "unnamed replace none",
        calls: 15,
    },
    Case {
        name: "unnamed noclobber full",
        calls: 13,
    },
    Case {
        name: "unnamed noclobber none",
        calls: 8,
    },
];

/// The calls without a path of the test directory that a commit makes:
/// the temp name's randomness, the group a new file gets.
const PATHLESS: [&str; 4] = ["getrandom", "getegid", "geteuid", "umask"];

/// The child: two commits as the case says, the second between markers.
fn child(case: &str, dir: &Path) {
    let target = dir.join(TARGET);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut opts = OpenOptions::new();
    opts.unnamed_temp(case.starts_with("unnamed"))
        .overwrite(!case.contains("noclobber"))
        .durability(match case.ends_with("full") {
            true => Durability::Full,
            false => Durability::None,
        });
    for round in 0..2 {
        if case.contains("noclobber") {
            let _ = std::fs::remove_file(&target);
        } else {
            std::fs::write(&target, b"old").unwrap();
        }
        let _ = std::fs::metadata(dir.join(format!("MARK-start-{round}")));
        if case.starts_with("std") {
            raw_std(&target, case.ends_with("full")).unwrap();
        } else {
            rt.block_on(async {
                let mut file = opts.open(&target).await.unwrap();
                file.write_all(NEW).await.unwrap();
                file.commit().await.unwrap();
            });
        }
        let _ = std::fs::metadata(dir.join(format!("MARK-end-{round}")));
        assert_eq!(std::fs::read(&target).unwrap(), NEW);
    }
}

/// What `std::fs` users write: the same commit, with std's calls.
fn raw_std(target: &Path, durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = target.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(NEW)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, target)?;
    if durable {
        std::fs::File::open(target.parent().unwrap())?.sync_all()?;
    }
    Ok(())
}

/// The second commit's calls, one per line (name and arguments).
fn calls_of(case: &str) -> Vec<String> {
    let dir = scratch();
    let out = scratch();
    let log = out.path().join("strace.out");
    let log_s = log.to_str().unwrap();
    let dir_s = dir.path().to_str().unwrap();
    run_child(
        "a_commit_makes_the_calls_of_the_table",
        &["strace", "-f", "-y", "-qq", "-o", log_s],
        &[("TAW_DIR", dir_s), ("TAW_CASE", case)],
        None,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let mut inside = false;
    let mut calls = Vec::new();
    for line in text.lines() {
        let call = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        if call.contains("MARK-start-1") {
            inside = true;
            continue;
        }
        if call.contains("MARK-end-1") {
            break;
        }
        // A call split by another thread's is counted once, at its start.
        if !inside || call.starts_with("<...") {
            continue;
        }
        let name = call.split('(').next().unwrap_or("");
        // A debug build of std checks each descriptor it closes with
        // `fcntl(F_GETFD)`; a release build does not.
        let debug_check = name == "fcntl" && call.contains("F_GETFD");
        if (call.contains(dir_s) || PATHLESS.contains(&name)) && !debug_check {
            calls.push(call.to_string());
        }
    }
    calls
}

#[test]
fn a_commit_makes_the_calls_of_the_table() {
    if is_child() {
        let case = std::env::var("TAW_CASE").unwrap();
        return child(&case, Path::new(&std::env::var("TAW_DIR").unwrap()));
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let mut table = String::from("| path | calls |\n|---|---|\n");
    let mut wrong = Vec::new();
    for case in &CASES {
        let calls = calls_of(case.name);
        table += &format!("| {} | {} |\n", case.name, calls.len());
        // An unnamed file is linked by its descriptor, with no path to
        // look up (root may; since Linux 6.10 its opener may too).
        let links: Vec<&String> = calls.iter().filter(|c| c.starts_with("linkat(")).collect();
        let by_fd = |c: &&String| c.contains("AT_EMPTY_PATH") && !c.contains("/proc/self/fd");
        if case.name.starts_with("unnamed") && !(links.len() == 1 && links.iter().all(by_fd)) {
            wrong.push(format!(
                "{}: not one link by descriptor: {links:?}",
                case.name
            ));
        }
        if calls.len() != case.calls {
            wrong.push(format!(
                "{}: {} calls, the table says {}:\n  {}",
                case.name,
                calls.len(),
                case.calls,
                calls.join("\n  ")
            ));
        }
    }
    println!("{table}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The child of [`write_if_changed_unchanged_makes_no_change_calls`]: an
/// unchanged answer, then a changed one, each between its markers, after
/// a first unchanged answer that starts the blocking pool's thread.
fn if_changed_child(dir: &Path) {
    let target = dir.join(TARGET);
    std::fs::write(&target, NEW).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let call = |contents: &[u8], window: &str| {
        let _ = std::fs::metadata(dir.join(format!("MARK-{window}-start")));
        let changed = rt.block_on(tokio_atomic_write::write_if_changed(&target, contents));
        let _ = std::fs::metadata(dir.join(format!("MARK-{window}-end")));
        changed.unwrap()
    };
    assert!(!call(NEW, "warm"));
    assert!(!call(NEW, "unchanged"));
    assert!(call(&[8; 4096], "changed"));
    assert_eq!(std::fs::read(&target).unwrap(), [8; 4096]);
}

/// The calls between `MARK-{window}-start` and `MARK-{window}-end` in an
/// strace log, every one (whatever its path, whichever thread), once each.
fn window(log: &str, window: &str) -> Vec<String> {
    let (start, end) = (format!("MARK-{window}-start"), format!("MARK-{window}-end"));
    let mut calls = Vec::new();
    let mut inside = false;
    for line in log.lines() {
        let call = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        if call.contains(&start) {
            inside = true;
        } else if call.contains(&end) {
            return calls;
        } else if inside && !call.starts_with("<...") {
            calls.push(call.to_string());
        }
    }
    panic!("no complete window {window} in the log:\n{log}");
}

/// Whether `call` changes anything on disk, or would: a name created,
/// renamed, linked or removed; a sync; a mode, owner, time or attribute
/// set; a lock taken; an open that could write or create; a write to a
/// file in `dir` (writes elsewhere, to a pipe or the terminal, are not
/// the target's).
fn changes_something(call: &str, dir: &str) -> bool {
    const CHANGING: [&str; 37] = [
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "unlink",
        "unlinkat",
        "rmdir",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "fsync",
        "fdatasync",
        "syncfs",
        "sync",
        "sync_file_range",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "chmod",
        "fchown",
        "fchownat",
        "chown",
        "lchown",
        "ftruncate",
        "truncate",
        "utimensat",
        "futimesat",
        "fsetxattr",
        "setxattr",
        "lsetxattr",
        "flock",
        "fallocate",
        "copy_file_range",
    ];
    const WRITES: [&str; 5] = ["write", "pwrite64", "writev", "pwritev", "pwritev2"];
    const OPENS: [&str; 4] = ["open", "openat", "openat2", "creat"];
    let name = call.split('(').next().unwrap_or("");
    let writes_in_dir = WRITES.contains(&name) && call.contains(dir);
    let opens_to_write = OPENS.contains(&name)
        && ["O_CREAT", "O_TMPFILE", "O_WRONLY", "O_RDWR", "O_TRUNC"]
            .iter()
            .any(|flag| call.contains(flag));
    CHANGING.contains(&name) || writes_in_dir || opens_to_write || name == "creat"
}

/// Issue #23, item 3, seen from the kernel's side: an unchanged
/// `write_if_changed` opens the target read-only, reads it, and changes
/// nothing: not one call of [`changes_something`], in any thread; a
/// changed one creates a temp file, syncs it, renames it.
#[test]
fn write_if_changed_unchanged_makes_no_change_calls() {
    if is_child() {
        return if_changed_child(Path::new(&std::env::var("TAW_DIR").unwrap()));
    }
    if !require(have("strace"), "strace") {
        return;
    }
    let (dir, out) = (scratch(), scratch());
    let log = out.path().join("strace.out");
    let (log_s, dir_s) = (log.to_str().unwrap(), dir.path().to_str().unwrap());
    run_child(
        "write_if_changed_unchanged_makes_no_change_calls",
        &["strace", "-f", "-y", "-qq", "-o", log_s],
        &[("TAW_DIR", dir_s)],
        None,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let target = dir.path().join(TARGET);
    let target_s = target.to_str().unwrap();

    let unchanged = window(&text, "unchanged");
    println!("unchanged:\n  {}", unchanged.join("\n  "));
    let changing: Vec<&String> = unchanged
        .iter()
        .filter(|c| changes_something(c, dir_s))
        .collect();
    assert!(changing.is_empty(), "unchanged, yet: {changing:#?}");
    // The window holds the comparison: the target opened read-only, not
    // following a link, and read.
    let opened = |c: &&String| {
        c.starts_with("openat(")
            && c.contains(&format!("\"{TARGET}\""))
            && c.contains("O_RDONLY")
            && c.contains("O_NOFOLLOW")
    };
    assert_eq!(unchanged.iter().filter(opened).count(), 1, "{unchanged:#?}");
    let read = |c: &String| c.starts_with("read(") && c.contains(&format!("{target_s}>"));
    assert!(unchanged.iter().any(read), "{unchanged:#?}");

    let changed = window(&text, "changed");
    let named = |prefixes: &[&str]| {
        changed
            .iter()
            .filter(|c| prefixes.iter().any(|p| c.starts_with(p)))
            .count()
    };
    assert_eq!(named(&["rename"]), 1, "{changed:#?}");
    assert!(
        named(&["fsync(", "fdatasync("]) >= 2,
        "file and dir: {changed:#?}"
    );
}
