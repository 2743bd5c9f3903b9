//! Issue #6, examples/sponge.rs: the file is replaced only if the input
//! ended cleanly. The example's code is compiled into this test binary and
//! run as a child process, with a real pipe on its standard input.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::*;

#[allow(dead_code)]
#[path = "../examples/sponge.rs"]
mod sponge;

const CHILD: &str = "child_sponge";

/// The child half: the example's `sponge` on this process's stdin, for
/// the path in `TAW_TARGET`, reporting as the example's `main` does.
#[test]
fn child_sponge() {
    if !is_child() {
        return;
    }
    let path = std::env::var_os("TAW_TARGET").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(sponge::sponge(Path::new(&path), tokio::io::stdin())) {
        Ok(n) => println!("taw:copied {n}"),
        Err(e) => {
            eprintln!("sponge: {}", sponge::report(&*e));
            std::process::exit(1);
        }
    }
}

fn spawn(target: &Path, stdin: Stdio) -> Child {
    child_command(CHILD, &[])
        .env("TAW_TARGET", target)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Input read to its end replaces the file, permissions kept.
#[test]
fn input_that_ends_cleanly_replaces_the_file() {
    if is_child() {
        return;
    }
    let dir = scratch();
    let target = dir.path().join("config");
    std::fs::write(&target, "old\n").unwrap();
    std::fs::set_permissions(&target, PermissionsExt::from_mode(0o640)).unwrap();
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut child = spawn(&target, Stdio::piped());
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("taw:copied {}", input.len())));
    assert!(std::fs::read(&target).unwrap() == input);
    assert_eq!(mode_of(&target), 0o640);
    assert_no_leftovers(dir.path());
}

/// Killed while reading (the writer still had more to say): the file is
/// as it was, and nothing is left behind once swept.
#[test]
fn killed_while_reading_the_file_is_untouched() {
    if is_child() {
        return;
    }
    let dir = scratch();
    let target = dir.path().join("config");
    std::fs::write(&target, "old\n").unwrap();
    let mut child = spawn(&target, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    // More than a pipe holds: done only once the child has read some.
    stdin.write_all(&vec![b'x'; 256 << 10]).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert_eq!(std::fs::read(&target).unwrap(), b"old\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(tokio_atomic_write::sweep(dir.path(), Duration::ZERO))
        .unwrap();
    assert_no_leftovers(dir.path());
}

/// A read error (standard input is a directory) fails without replacing;
/// a bad target fails before reading. Both name the path.
#[test]
fn a_read_error_or_a_bad_target_leaves_the_file() {
    if is_child() {
        return;
    }
    let dir = scratch();
    let target = dir.path().join("config");
    std::fs::write(&target, "old\n").unwrap();
    let a_dir = std::fs::File::open(dir.path()).unwrap();
    let out = spawn(&target, Stdio::from(a_dir))
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("sponge: "), "{}", text(&out));
    assert_eq!(std::fs::read(&target).unwrap(), b"old\n");
    assert_no_leftovers(dir.path());

    let missing = dir.path().join("no").join("config");
    let mut child = spawn(&missing, Stdio::piped());
    // Its input stays open: it must fail without waiting for it.
    let _stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&*missing.parent().unwrap().to_string_lossy()));
    assert!(!dir.path().join("no").exists());
}
