//! Shared by the benches that need a filesystem other than the root one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem made on a sparse image file and loop-mounted; unmounted,
/// and its image removed, on drop.
pub struct LoopMount {
    pub mount: PathBuf,
    image: PathBuf,
}

impl LoopMount {
    /// `mkfs.{fs}` with `mkfs_args` on a sparse image of `size` (as
    /// `truncate -s` takes it) named `{name}.img` in `base`, mounted on
    /// `base/{name}`. `None`, with a visible `SKIPPED` line, where that
    /// cannot be done: not root, no mkfs, no loop device.
    pub fn make(base: &Path, name: &str, fs: &str, size: &str, mkfs_args: &[&str]) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            println!("{fs}: SKIPPED: needs root (a loop mount); the root filesystem only");
            return None;
        }
        let image = base.join(format!("{name}.img"));
        let mount = base.join(name);
        std::fs::create_dir_all(&mount).unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        let made = ok(Command::new("truncate").args(["-s", size]).arg(&image))
            && ok(Command::new(format!("mkfs.{fs}"))
                .arg("-q")
                .args(mkfs_args)
                .arg(&image))
            && ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount));
        if !made {
            println!("{fs}: SKIPPED: mkfs.{fs} or the loop mount failed");
            let _ = std::fs::remove_file(&image);
            return None;
        }
        Some(LoopMount { mount, image })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
