//! Issue #4, "Power-loss ordering", the injected faults: a `write` failing
//! with `ENOSPC`, a `linkat` with `EXDEV` and a `close` with `EIO`, each
//! injected by strace into the one call of a commit that it names. Every
//! fault must give an `Err` naming the step, leave the target's old content
//! and leave no temp file; except a `close` after the rename of a durable
//! commit, which must say the new content is published. (`fsync` with `EIO` is in `strace.rs`,
//! `renameat2` with `EINVAL` and `ENOSYS` in `no_clobber.rs`.)
//!
//! No libtest here (`harness = false`): strace counts calls per thread, so
//! "the first `write`" of the child's main thread would otherwise be
//! libtest's own output. The child does its commit in one trip to the
//! blocking pool, on a fresh thread whose calls it alone makes.

mod common;

use std::path::Path;
use std::process::{Command, ExitCode};

use common::*;
use tokio_atomic_write::{Durability, OpenOptions};

const TARGET: &str = "state.json";
const OLD: &[u8] = b"old content";
const NEW: &[u8] = b"new content";

/// One scenario: how the child commits, what strace injects, what the
/// child must get.
struct Case {
    name: &'static str,
    unnamed: bool,
    overwrite: bool,
    durability: Durability,
    /// `syscall:error=ERRNO`: the fault, injected into the temp file's call.
    fault: &'static str,
    /// The step the error must name (`Op`'s `Debug`).
    op: &'static str,
    /// Whether the error comes after the publish (`is_published()`), the
    /// target then holding the new content.
    published: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "write ENOSPC, named temp",
        unnamed: false,
        overwrite: true,
        durability: Durability::Full,
        fault: "write:error=ENOSPC",
        op: "Write",
        published: false,
    },
    Case {
        name: "write ENOSPC, O_TMPFILE",
        unnamed: true,
        overwrite: true,
        durability: Durability::Full,
        fault: "write:error=ENOSPC",
        op: "Write",
        published: false,
    },
    Case {
        name: "linkat EXDEV, O_TMPFILE replacing",
        unnamed: true,
        overwrite: true,
        durability: Durability::Full,
        fault: "linkat:error=EXDEV",
        op: "Link",
        published: false,
    },
    Case {
        name: "linkat EXDEV, O_TMPFILE without overwrite",
        unnamed: true,
        overwrite: false,
        durability: Durability::Full,
        fault: "linkat:error=EXDEV",
        op: "Link",
        published: false,
    },
    Case {
        name: "close EIO, named temp (Durability::None)",
        unnamed: false,
        overwrite: true,
        durability: Durability::None,
        fault: "close:error=EIO",
        op: "Close",
        published: false,
    },
    // A durable commit renames first and closes after: its fsync has
    // reported any write-back error already.
    Case {
        name: "close EIO after the rename, named temp",
        unnamed: false,
        overwrite: true,
        durability: Durability::Full,
        fault: "close:error=EIO",
        op: "Close",
        published: true,
    },
    Case {
        name: "close EIO, O_TMPFILE (Durability::None)",
        unnamed: true,
        overwrite: true,
        durability: Durability::None,
        fault: "close:error=EIO",
        op: "Close",
        published: false,
    },
];

fn case_by_name(name: &str) -> &'static Case {
    CASES.iter().find(|c| c.name == name).expect("known case")
}

/// The child: one `OpenOptions::write`, checked against the case. Exits 0
/// when the outcome is the expected one (`TAW_CLEAN`: success).
fn child(case: &Case, dir: &Path, clean: bool) -> ExitCode {
    // Absorb the main thread's own first write and close, which strace's
    // per-thread count would pick as well.
    if let Ok(mut null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = std::io::Write::write(&mut null, b"x");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = OpenOptions::new();
    opts.unnamed_temp(case.unnamed)
        .overwrite(case.overwrite)
        .durability(case.durability);
    let result = rt.block_on(opts.write(dir.join(TARGET), NEW));
    drop(rt);
    let outcome = match (clean, result) {
        (true, Ok(())) => Ok(()),
        (true, Err(e)) => Err(format!("clean run failed: {e}")),
        (false, Ok(())) => Err("the fault gave Ok".to_string()),
        (false, Err(e))
            if format!("{:?}", e.op()) != case.op || e.is_published() != case.published =>
        {
            Err(format!(
                "wanted a {} error with published {}, got {:?} (published: {}): {e}",
                case.op,
                case.published,
                e.op(),
                e.is_published()
            ))
        }
        (false, Err(e)) if !e.to_string().contains(TARGET) => {
            Err(format!("the error does not name the target: {e}"))
        }
        (false, Err(_)) => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{}: {msg}", case.name);
            ExitCode::FAILURE
        }
    }
}

/// Runs the child for `case` under strace, `inject` added, in a fresh
/// directory holding the old target (when the case overwrites). Returns the
/// trace, one line per call, and the directory.
fn traced(case: &Case, inject: Option<String>) -> (Vec<String>, tempfile::TempDir) {
    let dir = scratch();
    if case.overwrite {
        std::fs::write(dir.path().join(TARGET), OLD).unwrap();
    }
    let log = scratch();
    let out = log.path().join("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-y", "-qq", "-o"]).arg(&out).args([
        "-e",
        "trace=write,close,linkat,renameat,renameat2,fsync,fdatasync",
    ]);
    if let Some(inject) = &inject {
        cmd.args(["-e", &format!("inject={inject}")]);
    }
    let status = cmd
        .arg(std::env::current_exe().unwrap())
        .env("TAW_FAULT", case.name)
        .env("TAW_DIR", dir.path())
        .env("TAW_CLEAN", if inject.is_none() { "1" } else { "0" })
        .status()
        .unwrap();
    let trace = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "{}: the child failed:\n{trace}",
        case.name
    );
    (trace.lines().map(str::to_string).collect(), dir)
}

/// The thread id that starts `line` (`strace -f -o`).
fn tid(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

/// Whether the call's first argument is the temp file: unnamed (`#ino
/// (deleted)`) or under a temp name.
fn on_temp(line: &str) -> bool {
    let (fd_path, after) = first_arg(line);
    after.starts_with("(deleted)") || fd_path.ends_with(".tmp")
}

/// The path of the call's first argument (`-y`), and what follows it.
fn first_arg(line: &str) -> (&str, &str) {
    let first_arg = line.split_once('(').map_or("", |(_, rest)| rest);
    first_arg.split_once('>').unwrap_or(("", ""))
}

/// Whether the call is the case's: on the temp file, or for a fault after
/// the rename, on the file renamed to the target.
fn on_new_file(case: &Case, line: &str) -> bool {
    on_temp(line) || (case.published && first_arg(line).0.ends_with(&format!("/{TARGET}")))
}

/// Which call of its thread, counting from 1, the first `syscall` on the
/// temp file is; found in a clean run, as strace's `when=` counts.
fn nth_on_temp(case: &Case, trace: &[String], syscall: &str) -> usize {
    let is_call = |l: &&String| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with(&format!("{syscall}(")))
    };
    let first = trace
        .iter()
        .filter(is_call)
        .find(|l| on_new_file(case, l) || syscall == "linkat")
        .unwrap_or_else(|| panic!("no {syscall} on the temp file:\n{}", trace.join("\n")));
    let thread = tid(first);
    1 + trace
        .iter()
        .filter(is_call)
        .filter(|l| tid(l) == thread)
        .position(|l| l == first)
        .unwrap()
}

fn run(case: &Case) {
    let syscall = case.fault.split(':').next().unwrap();
    let (clean, dir) = traced(case, None);
    drop(dir);
    let nth = nth_on_temp(case, &clean, syscall);
    let (trace, dir) = traced(case, Some(format!("{}:when={nth}", case.fault)));
    let injected: Vec<&String> = trace.iter().filter(|l| l.contains("(INJECTED)")).collect();
    let hit = injected
        .iter()
        .find(|l| on_new_file(case, l) || syscall == "linkat")
        .unwrap_or_else(|| {
            panic!(
                "{}: the fault missed the temp file:\n{}",
                case.name,
                trace.join("\n")
            )
        });
    assert!(hit.contains(syscall), "{hit}");
    // Published only where the case says: a rename or link onto the
    // target's name.
    let target = format!("\"{TARGET}\"");
    let published = trace.iter().any(|l| {
        !l.contains("(INJECTED)")
            && (l.contains("rename") || l.contains("linkat("))
            && l.contains(&target)
            && !l.contains("= -1")
    });
    assert_eq!(
        published,
        case.published,
        "{}: published or not:\n{}",
        case.name,
        trace.join("\n")
    );
    let content = std::fs::read(dir.path().join(TARGET)).ok();
    let expected = match case.published {
        true => Some(NEW.to_vec()),
        false => case.overwrite.then(|| OLD.to_vec()),
    };
    assert_eq!(content, expected, "{}: the target changed", case.name);
    assert_eq!(
        temp_files(dir.path()),
        Vec::<std::ffi::OsString>::new(),
        "{}: temp file left",
        case.name
    );
}

fn main() -> ExitCode {
    if let Ok(name) = std::env::var("TAW_FAULT") {
        let dir = std::env::var("TAW_DIR").unwrap();
        let clean = std::env::var("TAW_CLEAN").is_ok_and(|v| v == "1");
        return child(case_by_name(&name), Path::new(&dir), clean);
    }
    if std::env::args().any(|a| a == "--list") {
        println!("injected_faults: test");
        return ExitCode::SUCCESS;
    }
    if !require(have("strace"), "strace") {
        return ExitCode::SUCCESS;
    }
    for case in CASES {
        run(case);
        println!("test injected fault: {} ... ok", case.name);
    }
    println!(
        "{} faults injected, each an error naming its step (after the rename: published, the target new; before: the target old), no temp file left",
        CASES.len()
    );
    ExitCode::SUCCESS
}
