//! Issue #23, item 4: `OpenOptions::preserve_xattrs`. A replaced file's
//! `user.*` and `security.*` attributes and its POSIX ACL reach the new
//! file (none of them by default, and never `trusted.*`); the temp file is
//! at no moment readable by anyone who may not read the file it replaces,
//! a default ACL on the directory included; an attribute that cannot be
//! copied fails the open naming it, but for `security.*`, which is best
//! effort; `security.capability` survives the writes. On ext4, xfs and
//! tmpfs (root, loop mounts, `setfacl`/`setfattr`), and on a FUSE mount
//! without extended attributes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Op, OpenOptions};

const ACL: &str = "system.posix_acl_access";
const NOBODY: u32 = 65534;

/// The filesystems of these tests, each freshly mounted: a directory to
/// work in and the guard that unmounts it. A visible skip (a failure in
/// CI) for one that cannot be mounted here.
fn filesystems() -> Vec<(&'static str, OtherFs, PathBuf)> {
    let mut out = Vec::new();
    for fs in ["ext4", "xfs"] {
        if let Some((mount, work)) = require_image(fs, &[]) {
            out.push((fs, mount, work));
        }
    }
    let tmpfs = mount_tmpfs("16m");
    if require(tmpfs.is_some(), "root for a tmpfs mount") {
        let mount = tmpfs.unwrap();
        let work = mount.dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        out.push(("tmpfs", mount, work));
    }
    for (fs, _, work) in &out {
        eprintln!("on {fs}, in {}", work.display());
    }
    out
}

/// Whether the tools these tests set up with are here (a visible skip, a
/// failure in CI, when not).
fn tools() -> bool {
    require(
        is_root() && have("setfacl") && have("setfattr") && have("setpriv"),
        "root, setfacl, setfattr (acl, attr) and setpriv",
    )
}

#[track_caller]
fn run(cmd: &str, args: &[&str], path: &Path) {
    assert!(
        run_ok(Command::new(cmd).args(args).arg(path)),
        "{cmd} {args:?} {}",
        path.display()
    );
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The value of the attribute `name` of `path` (not following a final
/// link); `None` when it has none.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0; 1 << 16];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(len) => {
            buf.truncate(len);
            Some(buf)
        }
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", path.display()),
    }
}

/// The names of the attributes of `path`.
fn xattr_names(path: &Path) -> Vec<String> {
    let mut buf = vec![0; 1 << 16];
    let len = rustix::fs::llistxattr(path, &mut buf[..]).unwrap();
    buf[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// `getfacl`'s entries for `path` (no header, no comments).
fn acl_text(path: &Path) -> Vec<String> {
    let out = Command::new("getfacl")
        .args(["-c", "-p", "-E"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "getfacl {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// What `nobody` gets from opening `path` for reading, as the kernel
/// decides it (a child run with `setpriv`): `Ok` or the error it printed.
fn read_as_nobody(path: &Path) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "dd",
            "count=0",
            "status=none",
        ])
        .arg(format!("if={}", path.display()))
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[track_caller]
fn assert_nobody_may_not_read(path: &Path, what: &str) {
    match read_as_nobody(path) {
        Err(e) => assert!(e.contains("Permission denied"), "{what}: {e}"),
        Ok(()) => panic!("{what}: nobody may read {}", path.display()),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A 0640 file holding `user.*`, `security.*`, `trusted.*` attributes and
/// an ACL that lets nobody read it.
fn decorated_target(dir: &Path, name: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::write(&target, b"old").unwrap();
    // Not the ACL a default ACL on `dir` gave it: exactly this one.
    run("setfacl", &["-b"], &target);
    set_mode(&target, 0o640);
    run("setfattr", &["-n", "user.color", "-v", "blue"], &target);
    run("setfattr", &["-n", "security.test", "-v", "label"], &target);
    run(
        "setfattr",
        &["-n", "trusted.secret", "-v", "root's"],
        &target,
    );
    run("setfacl", &["-m", "u:nobody:r--"], &target);
    assert_eq!(mode_of(&target), 0o640, "the mask is the group's r--");
    target
}

/// Item 1: with `preserve_xattrs(true)` the new file has the replaced
/// file's `user.*` and `security.*` attributes and its ACL, byte for byte
/// (nobody may read it, as before), through either kind of temp file;
/// never its `trusted.*` ones. By default it has none of them.
#[test]
fn attributes_and_the_acl_are_copied_only_when_asked() {
    if !tools() {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        for unnamed in TEMP_KINDS {
            let what = format!("{fs}, unnamed {unnamed}");
            let target = decorated_target(&work, &format!("conf-{unnamed}"));
            let acl = xattr(&target, ACL).expect("an ACL");
            assert_eq!(read_as_nobody(&target), Ok(()), "{what}: the ACL works");
            rt().block_on(
                OpenOptions::new()
                    .preserve_xattrs(true)
                    .unnamed_temp(unnamed)
                    .write(&target, "new"),
            )
            .unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"new");
            assert_eq!(mode_of(&target), 0o640, "{what}");
            assert_eq!(xattr(&target, "user.color").as_deref(), Some(&b"blue"[..]));
            assert_eq!(
                xattr(&target, "security.test").as_deref(),
                Some(&b"label"[..]),
                "{what}"
            );
            assert_eq!(xattr(&target, ACL), Some(acl), "{what}: the same ACL");
            assert_eq!(xattr(&target, "trusted.secret"), None, "{what}");
            assert_eq!(read_as_nobody(&target), Ok(()), "{what}: still readable");

            // The default copies nothing.
            rt().block_on(
                OpenOptions::new()
                    .unnamed_temp(unnamed)
                    .write(&target, "newer"),
            )
            .unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"newer");
            let names = xattr_names(&target);
            let copied = ["user.color", "security.test", "trusted.secret", ACL];
            for name in copied {
                assert!(!names.iter().any(|n| n == name), "{what}: {names:?}");
            }
            assert_nobody_may_not_read(&target, &what);
            assert_no_leftovers(&work);
        }
    }
}

/// The temp file of an open `AsyncAtomicFile` in `dir`: its name, or for
/// an unnamed one a second name linked to it here (`peek`, to remove after
/// the commit), so that another user's open can be tried on it.
fn temp_of(dir: &Path) -> (PathBuf, bool) {
    if let [name] = &temp_files(dir)[..] {
        return (dir.join(name), false);
    }
    let canon = std::fs::canonicalize(dir).unwrap();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if link.starts_with(&canon) && link.to_string_lossy().ends_with("(deleted)") {
            let peek = dir.join("peek");
            rustix::fs::linkat(
                rustix::fs::CWD,
                entry.path().as_path(),
                rustix::fs::CWD,
                peek.as_path(),
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
            .unwrap();
            return (peek, true);
        }
    }
    panic!("no temp file open in {}", dir.display())
}

/// Item 2, and the default's part of item 3: in a directory whose default
/// ACL lets nobody read, a 0640 target without that entry. While a write
/// is open (bytes written, not committed), nobody may not open its temp
/// file (named, or unnamed through a second name), and nobody may not
/// read the new file after the commit; with `preserve_xattrs` and by
/// default alike. A target that has the entry keeps it with the option
/// (so the check above is no accident of the setup).
#[test]
fn a_default_acl_never_lets_in_whom_the_replaced_file_kept_out() {
    if !tools() {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        set_mode(&work, 0o755);
        run("setfacl", &["-d", "-m", "u:nobody:r--"], &work);
        for preserve in [true, false] {
            for unnamed in TEMP_KINDS {
                let what = format!("{fs}, preserve {preserve}, unnamed {unnamed}");
                let target = work.join("secret");
                std::fs::write(&target, b"old").unwrap();
                run("setfacl", &["-b"], &target);
                set_mode(&target, 0o640);
                assert_nobody_may_not_read(&target, &what);
                rt().block_on(async {
                    let mut file = OpenOptions::new()
                        .preserve_xattrs(preserve)
                        .unnamed_temp(unnamed)
                        .open(&target)
                        .await
                        .unwrap();
                    file.write_all(b"new secret").await.unwrap();
                    file.flush().await.unwrap();
                    let (temp, peek) = temp_of(&work);
                    assert_nobody_may_not_read(&temp, &format!("{what}: the temp file"));
                    assert_eq!(xattr(&temp, ACL), None, "{what}: no ACL while writing");
                    file.commit().await.unwrap();
                    // After the commit: an O_TMPFILE file that had a name
                    // and lost it can never be linked again.
                    if peek {
                        std::fs::remove_file(&temp).unwrap();
                    }
                });
                assert_eq!(std::fs::read(&target).unwrap(), b"new secret");
                assert_eq!(mode_of(&target), 0o640, "{what}");
                assert_nobody_may_not_read(&target, &format!("{what}: after commit"));
                assert_eq!(xattr(&target, ACL), None, "{what}");
                assert_no_leftovers(&work);
            }
        }
        // A target whose ACL lets nobody read: so does the new file, with
        // the option (the same ACL as the directory's default gives).
        let target = work.join("shared");
        std::fs::write(&target, b"old").unwrap();
        set_mode(&target, 0o640);
        assert_eq!(read_as_nobody(&target), Ok(()), "{fs}: inherited");
        rt().block_on(
            OpenOptions::new()
                .preserve_xattrs(true)
                .write(&target, "new"),
        )
        .unwrap();
        assert_eq!(read_as_nobody(&target), Ok(()), "{fs}: kept");
    }
}

/// The default on modes whose group bits do not exceed the others': an
/// ACL inherited from the directory's default stays (its named entries
/// get no more than others have), and costs no call.
#[test]
fn by_default_an_inherited_acl_stays_where_others_may_read_as_much() {
    if !tools() {
        return;
    }
    let Some(tmpfs) = mount_tmpfs("8m") else {
        require(false, "root for a tmpfs mount");
        return;
    };
    let work = tmpfs.dir.path();
    run("setfacl", &["-d", "-m", "u:nobody:r--"], work);
    let target = work.join("public");
    std::fs::write(&target, b"old").unwrap();
    set_mode(&target, 0o644);
    rt().block_on(tokio_atomic_write::write(&target, "new"))
        .unwrap();
    assert!(xattr(&target, ACL).is_some(), "inherited, as before");
    assert_eq!(mode_of(&target), 0o644);
}

/// The system calls of an open with `preserve_xattrs` over a 0640 file
/// with an ACL, in a directory with a default ACL, traced by strace: the
/// temp file is created open to its owner alone (no group or other bits),
/// and gets the ACL before anything is written to it.
#[test]
fn the_temp_file_is_created_open_to_its_owner_alone() {
    const NAME: &str = "the_temp_file_is_created_open_to_its_owner_alone";
    if is_child() {
        let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
        let unnamed = std::env::var("TAW_UNNAMED").unwrap() == "1";
        rt().block_on(
            OpenOptions::new()
                .preserve_xattrs(true)
                .unnamed_temp(unnamed)
                .write(&target, "new"),
        )
        .unwrap();
        return;
    }
    if !tools() || !require(have("strace"), "strace") {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        run("setfacl", &["-d", "-m", "u:nobody:r--"], &work);
        for unnamed in TEMP_KINDS {
            let what = format!("{fs}, unnamed {unnamed}");
            let target = decorated_target(&work, "conf");
            let log = work.join("strace.log");
            let wrap = [
                "strace",
                "-f",
                "-qq",
                "-e",
                "trace=openat,fsetxattr,fremovexattr,fchmod,write,pwrite64",
                "-o",
                log.to_str().unwrap(),
            ];
            let flag = if unnamed { "1" } else { "0" };
            let env = [
                ("TAW_TARGET", target.to_str().unwrap()),
                ("TAW_UNNAMED", flag),
            ];
            run_child(NAME, &wrap, &env, None);
            let trace = std::fs::read_to_string(&log).unwrap();
            std::fs::remove_file(&log).unwrap();
            let lines: Vec<&str> = trace.lines().collect();
            let create = lines
                .iter()
                .position(|l| l.contains("O_TMPFILE") || l.contains("O_EXCL"))
                .unwrap_or_else(|| panic!("{what}: no create in\n{trace}"));
            let mode = lines[create]
                .rsplit(", ")
                .next()
                .and_then(|m| m.split(')').next())
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or_else(|| panic!("{what}: no mode in {}", lines[create]));
            assert_eq!(mode & 0o077, 0, "{what}: {}", lines[create]);
            let acl = lines
                .iter()
                .position(|l| l.contains("fsetxattr(") && l.contains(ACL))
                .unwrap_or_else(|| panic!("{what}: no ACL set in\n{trace}"));
            assert!(create < acl, "{what}");
            // The temp file's descriptor, from the create's result.
            let fd = lines[create].rsplit("= ").next().unwrap().trim();
            let first_write = lines.iter().position(|l| {
                (l.contains(&format!("write({fd},")) || l.contains(&format!("pwrite64({fd},")))
                    && !l.contains("unfinished")
            });
            assert!(
                first_write.is_some_and(|w| w > acl),
                "{what}: the ACL before the first byte\n{trace}"
            );
            assert_eq!(std::fs::read(&target).unwrap(), b"new");
            assert_eq!(read_as_nobody(&target), Ok(()), "{what}: the ACL copied");
        }
    }
}

/// The child half of the refusal tests: a write of `TAW_TARGET` with
/// `preserve_xattrs`, expecting `TAW_EXPECT`: `ok`, or an error of
/// `Op::CopyXattrs` naming the attribute `TAW_NAMED` and the target, the
/// target untouched and no temp file left.
fn child_write() {
    let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
    let expect = std::env::var("TAW_EXPECT").unwrap();
    let result = rt().block_on(
        OpenOptions::new()
            .preserve_xattrs(true)
            .unnamed_temp(std::env::var("TAW_UNNAMED").is_ok_and(|v| v == "1"))
            .write(&target, "new"),
    );
    match expect.as_str() {
        // The parent reads the new file: it may be write-only.
        "ok" => result.unwrap(),
        kind => {
            let err = result.unwrap_err();
            assert_eq!(err.op(), Op::CopyXattrs, "{err:?}");
            assert_eq!(err.path(), target);
            assert_eq!(format!("{:?}", err.kind()), kind, "{err:?}");
            let named = std::env::var("TAW_NAMED").unwrap();
            let chain = format!("{:#}", anyhow::Error::from(err));
            assert!(chain.contains(&format!("`{named}`")), "{chain}");
            assert_eq!(std::fs::read(&target).unwrap(), b"old", "untouched");
        }
    }
    assert_no_leftovers(target.parent().unwrap());
}

/// Item 3: an attribute the filesystem will not take (`ENOSPC` injected by
/// strace into the `fsetxattr` of the one `user.*` attribute, or of the
/// ACL) fails the write with `Op::CopyXattrs` naming it, the io kind
/// kept; the target keeps its content and no temp file is left.
#[test]
fn an_attribute_that_cannot_be_set_fails_the_write_naming_it() {
    const NAME: &str = "an_attribute_that_cannot_be_set_fails_the_write_naming_it";
    if is_child() {
        return child_write();
    }
    if !tools() || !require(have("strace"), "strace") {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        for (attr, errno, kind) in [
            ("user.color", "ENOSPC", "StorageFull"),
            (ACL, "EDQUOT", "QuotaExceeded"),
        ] {
            for unnamed in TEMP_KINDS {
                let target = work.join("conf");
                let _ = std::fs::remove_file(&target);
                std::fs::write(&target, b"old").unwrap();
                set_mode(&target, 0o640);
                match attr {
                    ACL => run("setfacl", &["-m", "u:nobody:r--"], &target),
                    _ => run("setfattr", &["-n", attr, "-v", "blue"], &target),
                }
                let inject = format!("inject=fsetxattr:error={errno}");
                let wrap = [
                    "strace",
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    "trace=fsetxattr",
                    "-e",
                    &inject,
                ];
                let env = [
                    ("TAW_TARGET", target.to_str().unwrap()),
                    ("TAW_EXPECT", kind),
                    ("TAW_NAMED", attr),
                    ("TAW_UNNAMED", if unnamed { "1" } else { "0" }),
                ];
                run_child(NAME, &wrap, &env, None);
                assert_eq!(std::fs::read(&target).unwrap(), b"old", "{fs} {attr}");
                assert_no_leftovers(&work);
            }
        }
    }
}

/// Item 3, as `nobody`, who may not set `security.*` attributes (EPERM
/// without CAP_SYS_ADMIN): replacing its own read-only (0444) file that
/// carries `security.test`, `user.color` and an ACL, the write succeeds
/// with all but `security.test`; replacing root's write-only (0200) file,
/// which it may not read (its attributes read through an `O_PATH`
/// descriptor), the ACL is copied too.
#[test]
fn security_attributes_are_best_effort() {
    const NAME: &str = "security_attributes_are_best_effort";
    if is_child() {
        return child_write();
    }
    if !tools() {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        set_mode(&work, 0o777);
        for unnamed in TEMP_KINDS {
            let what = format!("{fs}, unnamed {unnamed}");
            let own = work.join("own");
            std::fs::write(&own, b"old").unwrap();
            std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).unwrap();
            run("setfattr", &["-n", "user.color", "-v", "blue"], &own);
            run("setfattr", &["-n", "security.test", "-v", "label"], &own);
            run("setfacl", &["-m", "u:daemon:r--"], &own);
            set_mode(&own, 0o444);
            let acl = xattr(&own, ACL).unwrap();

            let theirs = work.join("theirs");
            std::fs::write(&theirs, b"old").unwrap();
            run("setfattr", &["-n", "security.test", "-v", "label"], &theirs);
            run("setfacl", &["-m", "u:daemon:-w-"], &theirs);
            set_mode(&theirs, 0o200);

            let flag = if unnamed { "1" } else { "0" };
            let setpriv = [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ];
            for target in [&own, &theirs] {
                let env = [
                    ("TAW_TARGET", target.to_str().unwrap()),
                    ("TAW_EXPECT", "ok"),
                    ("TAW_UNNAMED", flag),
                ];
                run_child(NAME, &setpriv, &env, None);
                assert_eq!(std::fs::read(target).unwrap(), b"new", "{what}");
                assert_eq!(xattr(target, "security.test"), None, "{what}: refused");
            }
            assert_eq!(xattr(&own, "user.color").as_deref(), Some(&b"blue"[..]));
            assert_eq!(xattr(&own, ACL), Some(acl), "{what}: the same ACL");
            assert_eq!(mode_of(&own), 0o444, "{what}");
            let entries = acl_text(&theirs);
            assert!(
                entries.iter().any(|e| e.starts_with("user:daemon:-w-")),
                "{what}: {entries:?}"
            );
            // Another group now (nobody's): the group class gets no more
            // than others have.
            assert_eq!(mode_of(&theirs), 0o200, "{what}");
            std::fs::remove_file(&own).unwrap();
            std::fs::remove_file(&theirs).unwrap();
        }
    }
}

/// The never-wider rule where the group cannot be copied: `nobody`
/// replaces root's 0640 file, whose ACL lets `daemon` read it, in a
/// directory where it may write. The new file's group is nobody's, so
/// while it is written its ACL's mask is 0 (its mode 0600: neither the
/// named entries nor that group may read it), and after the commit the
/// group class gets no more than others have; the named entry is kept.
#[test]
fn another_group_gets_no_more_than_others() {
    const NAME: &str = "another_group_gets_no_more_than_others";
    if is_child() {
        let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
        let dir = target.parent().unwrap();
        rt().block_on(async {
            let mut file = OpenOptions::new()
                .preserve_xattrs(true)
                .unnamed_temp(false)
                .open(&target)
                .await
                .unwrap();
            file.write_all(b"nobody's").await.unwrap();
            file.flush().await.unwrap();
            let [temp] = &temp_files(dir)[..] else {
                panic!("one temp file")
            };
            let temp = dir.join(temp);
            assert_eq!(mode_of(&temp), 0o600, "the mask is 0 while writing");
            assert!(xattr(&temp, ACL).is_some(), "the ACL, while writing");
            file.commit().await.unwrap();
        });
        return;
    }
    if !tools() {
        return;
    }
    for (fs, _mount, work) in filesystems() {
        set_mode(&work, 0o777);
        let target = work.join("conf");
        std::fs::write(&target, b"old").unwrap();
        run("setfacl", &["-m", "u:daemon:r--"], &target);
        set_mode(&target, 0o640);
        let setpriv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ];
        run_child(
            NAME,
            &setpriv,
            &[("TAW_TARGET", target.to_str().unwrap())],
            None,
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"nobody's", "{fs}");
        assert_eq!(mode_of(&target), 0o600, "{fs}");
        let entries = acl_text(&target);
        for entry in ["user:daemon:r--", "mask::---"] {
            assert!(entries.iter().any(|e| e == entry), "{fs}: {entries:?}");
        }
    }
}

/// Item 3: a filesystem without extended attributes (the tests' lazy FUSE
/// filesystem, which answers none of the xattr calls): nothing to copy,
/// and no error.
#[test]
fn a_filesystem_without_xattrs_copies_nothing() {
    let fs = lazyfs::LazyFs::mount();
    if !require(fs.is_some(), "root and /dev/fuse for a FUSE mount") {
        return;
    }
    let fs = fs.unwrap();
    let target = fs.path().join("conf");
    std::fs::write(&target, b"old").unwrap();
    assert!(
        rustix::fs::lsetxattr(
            &target,
            "user.color",
            b"blue",
            rustix::fs::XattrFlags::empty()
        )
        .is_err(),
        "no extended attributes here"
    );
    for unnamed in TEMP_KINDS {
        rt().block_on(
            OpenOptions::new()
                .preserve_xattrs(true)
                .unnamed_temp(unnamed)
                .write(&target, "new"),
        )
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(temp_files(fs.path()), Vec::<std::ffi::OsString>::new());
    }
}

/// Item 4: a program's file capabilities (`security.capability`, which
/// the kernel drops on a write, as setuid bits) survive a replace with
/// `preserve_xattrs` written in several pieces, and do not by default.
#[test]
fn file_capabilities_survive_the_writes() {
    if !tools() {
        return;
    }
    // cap_net_bind_service=ep, as `setcap` writes it (VFS_CAP_REVISION_2).
    const CAP: &str = "0x0100000200040000000000000000000000000000";
    for (fs, _mount, work) in filesystems() {
        for unnamed in TEMP_KINDS {
            let what = format!("{fs}, unnamed {unnamed}");
            let target = work.join("prog");
            std::fs::write(&target, b"old").unwrap();
            set_mode(&target, 0o755);
            run(
                "setfattr",
                &["-n", "security.capability", "-v", CAP],
                &target,
            );
            let cap = xattr(&target, "security.capability").unwrap();
            rt().block_on(async {
                let mut file = OpenOptions::new()
                    .preserve_xattrs(true)
                    .unnamed_temp(unnamed)
                    .buffer_size(4)
                    .open(&target)
                    .await
                    .unwrap();
                for piece in [&b"#!/bin/"[..], b"sh\n", b"exit 0\n"] {
                    file.write_all(piece).await.unwrap();
                }
                file.commit().await.unwrap();
            });
            assert_eq!(std::fs::read(&target).unwrap(), b"#!/bin/sh\nexit 0\n");
            assert_eq!(xattr(&target, "security.capability"), Some(cap), "{what}");
            assert_eq!(mode_of(&target), 0o755, "{what}");
            rt().block_on(tokio_atomic_write::write(&target, "plain"))
                .unwrap();
            assert_eq!(xattr(&target, "security.capability"), None, "{what}");
        }
    }
}
