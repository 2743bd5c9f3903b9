//! Issue #17, point 1: links and files in sticky, world-writable
//! directories. A link there is followed only when its owner is the caller
//! or the directory's owner (the kernel's `protected_symlinks` rule), and an
//! entry there is replaced only on the same terms (`protected_regular`),
//! whether or not the sysctls are on: every path that follows the target
//! (`open`, `write`, `update` and its lock file, the JSON helpers) is held
//! to it, as root and as `nobody`. Elsewhere, links are followed as ever.

mod common;

use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{Error, Op, OpenOptions};

const NOBODY: u32 = 65534;
const STRANGER: u32 = 4242;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A scratch tree for the attack: `shared/` is sticky and world-writable
/// (1777, owned by `shared_owner`), `victim/conf` is root's secret (0600
/// in a 0700 directory), and the scratch root lets everyone in (0755).
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(shared_owner: u32) -> Scene {
        let dir = scratch();
        set_mode(dir.path(), 0o755);
        let scene = Scene { dir };
        std::fs::create_dir(scene.shared()).unwrap();
        std::os::unix::fs::chown(scene.shared(), Some(shared_owner), Some(shared_owner)).unwrap();
        set_mode(&scene.shared(), 0o1777);
        std::fs::create_dir(scene.path("victim")).unwrap();
        set_mode(&scene.path("victim"), 0o700);
        std::fs::write(scene.conf(), b"root's secret").unwrap();
        set_mode(&scene.conf(), 0o600);
        scene
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn shared(&self) -> PathBuf {
        self.path("shared")
    }

    fn conf(&self) -> PathBuf {
        self.path("victim/conf")
    }

    /// A link `shared/name -> to`, owned by `owner`.
    fn plant(&self, name: &str, to: &Path, owner: u32) -> PathBuf {
        let link = self.shared().join(name);
        symlink(to, &link).unwrap();
        lchown(&link, Some(owner), Some(owner)).unwrap();
        link
    }
}

/// The link is still there, pointing where it did, owned as it was.
fn assert_link_untouched(link: &Path, to: &Path, owner: u32) {
    let m = std::fs::symlink_metadata(link).unwrap();
    assert!(m.file_type().is_symlink(), "{link:?} is no longer a link");
    assert_eq!(std::fs::read_link(link).unwrap(), to);
    assert_eq!(m.uid(), owner);
}

fn assert_refused(err: &Error, named: &Path) {
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{err}: {:?}",
        err.io_error()
    );
    assert_eq!(err.op(), Op::Open, "{err}");
    assert_eq!(err.path(), named, "{err}");
    let cause = err.io_error().to_string();
    assert!(cause.contains("sticky"), "{cause}");
}

/// Every way the crate follows a target, each expected to fail the same
/// way; returns the errors.
async fn every_way_to_write(target: &Path) -> Vec<(&'static str, Error)> {
    let mut errors = Vec::new();
    if let Err(e) = tokio_atomic_write::write(target, b"attacker's choice").await {
        errors.push(("write", e));
    }
    match OpenOptions::new().open(target).await {
        Err(e) => errors.push(("open", e)),
        Ok(mut f) => {
            f.write_all(b"attacker's choice").await.unwrap();
            f.commit().await.unwrap();
        }
    }
    let updated = tokio_atomic_write::update(target, |old| {
        panic!(
            "f ran with {:?}",
            old.map(|o| String::from_utf8_lossy(&o).into_owned())
        )
    })
    .await;
    if let Err(e) = updated {
        errors.push(("update", e));
    }
    if let Err(e) = tokio_atomic_write::write_json(target, &"attacker's choice").await {
        errors.push(("write_json", e));
    }
    if let Err(e) = tokio_atomic_write::read_json::<String>(target).await {
        errors.push(("read_json", e));
    }
    errors
}

/// The review's attack: `nobody` plants `shared/app.state -> victim/conf`
/// in a root-owned sticky directory; root's writes, its update and its
/// JSON helpers all refuse the link, naming it, and change nothing (the
/// kernel would have followed it here: this machine's
/// `fs.protected_symlinks` is whatever it is, and the crate does not ask).
#[tokio::test]
async fn a_link_planted_by_another_user_in_a_sticky_directory_is_not_followed() {
    if !require(is_root(), "root (to plant a link as nobody)") {
        return;
    }
    let scene = Scene::new(0);
    let link = scene.plant("app.state", &scene.conf(), NOBODY);
    let errors = every_way_to_write(&link).await;
    let names: Vec<_> = errors.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["write", "open", "update", "write_json", "read_json"],
        "each way must refuse"
    );
    for (_, err) in &errors {
        assert_refused(err, &link);
    }
    assert_eq!(std::fs::read(scene.conf()).unwrap(), b"root's secret");
    assert_eq!(mode_of(&scene.conf()), 0o600);
    assert_link_untouched(&link, &scene.conf(), NOBODY);
    assert_eq!(
        listing(&scene.shared()),
        ["app.state"],
        "no lock, no temp file"
    );
    assert_no_leftovers(&scene.path("victim"));

    // With follow_symlinks(false), the link is an entry that another user
    // owns: not replaced either.
    let err = OpenOptions::new()
        .follow_symlinks(false)
        .write(&link, b"x")
        .await
        .unwrap_err();
    assert_refused(&err, &link);
    assert_link_untouched(&link, &scene.conf(), NOBODY);
}

/// A link further down the chain counts the same: a link the caller owns
/// that leads to one planted by another user in a sticky directory stops
/// at the planted one, which the error names.
#[tokio::test]
async fn a_planted_link_later_in_the_chain_is_not_followed() {
    if !require(is_root(), "root (to plant a link as nobody)") {
        return;
    }
    let scene = Scene::new(0);
    let planted = scene.plant("hop", &scene.conf(), NOBODY);
    let mine = scene.path("mine");
    symlink(&planted, &mine).unwrap();
    let err = tokio_atomic_write::write(&mine, b"x").await.unwrap_err();
    assert_refused(&err, &planted);
    assert_eq!(std::fs::read(scene.conf()).unwrap(), b"root's secret");
}

/// Links owned by the caller or by the sticky directory's owner are
/// followed, as the kernel would; so is any link in a directory that is
/// world-writable without the sticky bit, or sticky without being
/// world-writable.
#[tokio::test]
async fn links_the_rule_allows_are_followed() {
    if !require(is_root(), "root (to give links away)") {
        return;
    }
    // The caller's own link (root's) in root's sticky directory.
    let scene = Scene::new(0);
    let link = scene.plant("mine", &scene.conf(), 0);
    tokio_atomic_write::write(&link, b"v1").await.unwrap();
    assert_eq!(std::fs::read(scene.conf()).unwrap(), b"v1");
    assert_link_untouched(&link, &scene.conf(), 0);

    // The directory owner's link, read and written by root.
    let scene = Scene::new(STRANGER);
    let link = scene.plant("owners", &scene.conf(), STRANGER);
    tokio_atomic_write::update(&link, |old| {
        assert_eq!(old.as_deref(), Some(&b"root's secret"[..]));
        Ok::<_, Error>(b"v2".to_vec())
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(scene.conf()).unwrap(), b"v2");
    assert_link_untouched(&link, &scene.conf(), STRANGER);

    // Not sticky (0777), or sticky but not world-writable (1775): no rule.
    for mode in [0o777, 0o1775] {
        let scene = Scene::new(0);
        set_mode(&scene.shared(), mode);
        let link = scene.plant("any", &scene.conf(), NOBODY);
        tokio_atomic_write::write(&link, b"v3").await.unwrap();
        assert_eq!(std::fs::read(scene.conf()).unwrap(), b"v3", "{mode:o}");
        assert_link_untouched(&link, &scene.conf(), NOBODY);
    }
}

/// `protected_regular`: root does not replace a file that another user
/// owns in a sticky directory (nor hand it back to that user with
/// `preserve_owner`); its own files there it replaces.
#[tokio::test]
async fn another_users_file_in_a_sticky_directory_is_not_replaced() {
    if !require(is_root(), "root (to give a file away)") {
        return;
    }
    let scene = Scene::new(0);
    let theirs = scene.shared().join("theirs");
    std::fs::write(&theirs, b"nobody's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let errors = every_way_to_write(&theirs).await;
    // read_json only reads: reading is not replacing, and the kernel lets
    // root open the file for reading there too.
    let names: Vec<_> = errors.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["write", "open", "update", "write_json", "read_json"]
    );
    for (name, err) in &errors {
        if *name == "read_json" {
            assert_eq!(err.op(), Op::Deserialize, "{err}");
        } else {
            assert_refused(err, &theirs);
        }
    }
    assert_eq!(std::fs::read(&theirs).unwrap(), b"nobody's");
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), NOBODY);
    assert_eq!(listing(&scene.shared()), ["theirs"]);

    let mine = scene.shared().join("mine");
    std::fs::write(&mine, b"root's").unwrap();
    tokio_atomic_write::write(&mine, b"new").await.unwrap();
    assert_eq!(std::fs::read(&mine).unwrap(), b"new");
    // Its lock file is for its owner alone: others may write a sticky
    // directory but may not replace this file, so they get no read bit
    // (which would let them hold the lock for ever).
    tokio_atomic_write::update(&mine, |_| Ok::<_, Error>(b"newer".to_vec()))
        .await
        .unwrap();
    assert_eq!(mode_of(&scene.shared().join(".mine.lock")), 0o600);
}

/// A lock file that another user put beside root's target in a sticky
/// directory is not used (it could be held for ever): the update fails at
/// [`Op::Lock`], naming it, and changes nothing.
#[tokio::test]
async fn a_lock_file_planted_by_another_user_in_a_sticky_directory_is_refused() {
    if !require(is_root(), "root (to give a file away)") {
        return;
    }
    let scene = Scene::new(0);
    let state = scene.shared().join("state");
    std::fs::write(&state, b"1").unwrap();
    let lock = scene.shared().join(".state.lock");
    std::fs::write(&lock, b"").unwrap();
    std::os::unix::fs::chown(&lock, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = tokio_atomic_write::update(&state, |_| -> Result<Vec<u8>, Error> {
        panic!("f must not run")
    })
    .await
    .unwrap_err();
    assert_eq!(err.op(), Op::Lock, "{err}");
    assert_eq!(err.path(), lock);
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(std::fs::read(&state).unwrap(), b"1");
}

/// The child half of the `nobody` tests: writes `TAW_TARGET` and expects
/// `TAW_EXPECT` (`ok`, or `denied` naming `TAW_NAMED`).
fn child_write() {
    let target = PathBuf::from(std::env::var("TAW_TARGET").unwrap());
    let expect = std::env::var("TAW_EXPECT").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = rt.block_on(tokio_atomic_write::write(&target, b"nobody's write"));
    match expect.as_str() {
        "ok" => result.unwrap(),
        _ => {
            let named = PathBuf::from(std::env::var("TAW_NAMED").unwrap());
            assert_refused(&result.unwrap_err(), &named);
        }
    }
}

fn write_as_nobody(test: &str, target: &Path, expect: &str, named: &Path) {
    let env = [
        ("TAW_TARGET", target.to_str().unwrap()),
        ("TAW_EXPECT", expect),
        ("TAW_NAMED", named.to_str().unwrap()),
    ];
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    run_child(test, &setpriv, &env, None);
}

/// As `nobody` in root's sticky directory: a link planted by a third user
/// is refused; `nobody`'s own link and the directory owner's (root's) are
/// followed.
#[test]
fn as_nobody_only_links_of_the_caller_or_the_directory_owner_are_followed() {
    const NAME: &str = "as_nobody_only_links_of_the_caller_or_the_directory_owner_are_followed";
    if is_child() {
        return child_write();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    let scene = Scene::new(0);
    // What nobody may write: a file in a directory of its own.
    let own = scene.path("nobodys");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).unwrap();
    let data = own.join("data");
    std::fs::write(&data, b"old").unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();

    let strangers = scene.plant("strangers", &data, STRANGER);
    write_as_nobody(NAME, &strangers, "denied", &strangers);
    assert_eq!(std::fs::read(&data).unwrap(), b"old");
    assert_link_untouched(&strangers, &data, STRANGER);

    for (name, owner) in [("own", NOBODY), ("dir_owners", 0)] {
        std::fs::write(&data, b"old").unwrap();
        let link = scene.plant(name, &data, owner);
        write_as_nobody(NAME, &link, "ok", &link);
        assert_eq!(std::fs::read(&data).unwrap(), b"nobody's write", "{name}");
        assert_link_untouched(&link, &data, owner);
    }
}

/// As `nobody`: a file of a third user in a sticky directory is not
/// replaced (the kernel's sticky rule would refuse the rename anyway; the
/// crate says so first, before any temp file exists).
#[test]
fn as_nobody_a_strangers_file_in_a_sticky_directory_is_not_replaced() {
    const NAME: &str = "as_nobody_a_strangers_file_in_a_sticky_directory_is_not_replaced";
    if is_child() {
        return child_write();
    }
    if !require(is_root() && have("setpriv"), "root and setpriv") {
        return;
    }
    let scene = Scene::new(0);
    let theirs = scene.shared().join("theirs");
    std::fs::write(&theirs, b"stranger's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(STRANGER), Some(STRANGER)).unwrap();
    set_mode(&theirs, 0o666);
    write_as_nobody(NAME, &theirs, "denied", &theirs);
    assert_eq!(std::fs::read(&theirs).unwrap(), b"stranger's");
    assert_eq!(listing(&scene.shared()), ["theirs"]);
}

/// `AsyncAtomicDir` targets obey the same rule: in root's sticky
/// directory, a directory that another user planted at the target is not
/// replaced, nor its mode (0777) inherited by root's tree; root's own is.
#[tokio::test]
async fn another_users_directory_in_a_sticky_directory_is_not_replaced() {
    use tokio_atomic_write::{AsyncAtomicDir, Exists};
    if !require(is_root(), "root (to give a directory away)") {
        return;
    }
    let scene = Scene::new(0);
    let planted = scene.shared().join("site");
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("index.html"), b"nobody's page").unwrap();
    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    set_mode(&planted, 0o777);
    let err = AsyncAtomicDir::create(&planted).await.unwrap_err();
    assert_refused(&err, &planted);
    assert_eq!(
        std::fs::read(planted.join("index.html")).unwrap(),
        b"nobody's page"
    );
    assert_eq!(listing(&scene.shared()), ["site"], "no temp tree");

    let mine = scene.shared().join("mine");
    std::fs::create_dir(&mine).unwrap();
    let tree = AsyncAtomicDir::create(&mine).await.unwrap();
    std::fs::write(tree.path().join("f"), b"root's").unwrap();
    tree.commit(Exists::Replace).await.unwrap();
    assert_eq!(std::fs::read(mine.join("f")).unwrap(), b"root's");
}

/// Review of #18: another user's directory put at the target between
/// `create` and `commit`, in root's sticky directory, is neither replaced
/// (and removed, with whatever was moved into it) nor taken for the
/// result of a `Keep`.
#[tokio::test]
async fn a_directory_planted_before_commit_is_not_replaced_nor_kept() {
    use tokio_atomic_write::{AsyncAtomicDir, Exists};
    if !require(is_root(), "root (to give a directory away)") {
        return;
    }
    for exists in [Exists::Replace, Exists::Keep] {
        let scene = Scene::new(0);
        let site = scene.shared().join("site");
        let tree = AsyncAtomicDir::create(&site).await.unwrap();
        std::fs::write(tree.path().join("f"), b"root's").unwrap();
        // Planted after `create`'s check.
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("theirs"), b"nobody's").unwrap();
        std::os::unix::fs::chown(&site, Some(NOBODY), Some(NOBODY)).unwrap();
        let err = tree.commit(exists).await.unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{exists:?}: {err}"
        );
        assert!(!err.is_published(), "{exists:?}");
        assert_eq!(std::fs::read(site.join("theirs")).unwrap(), b"nobody's");
        assert_eq!(std::fs::metadata(&site).unwrap().uid(), NOBODY);
        for _ in 0..500 {
            if listing(&scene.shared()) == ["site"] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            listing(&scene.shared()),
            ["site"],
            "{exists:?}: our tree removed"
        );
    }
}
