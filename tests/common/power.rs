//! Power cuts on a loop-mounted filesystem, with the shutdown ioctl the
//! kernel's own filesystem tests use (`XFS_IOC_GOINGDOWN`, which ext4 also
//! answers as `EXT4_IOC_SHUTDOWN`), through `xfs_io -x -c shutdown`
//! (without `-f`, so the log is not flushed).
//!
//! The moment the filesystem has shut down, the image file is copied: the
//! copy holds what had reached the (loop) device then, which is what a
//! machine would find after a power failure. The filesystem is then
//! mounted from the copy, which replays its journal. Mounting the original
//! again would not do: unmounting writes out the block device's dirty
//! buffers, and an ext4 without a journal keeps its unsynced metadata
//! there, so none of it would be lost.
//!
//! Not simulated: a disk's volatile write cache and a missing flush of it
//! (what reached the loop device is in the image file's page cache), and a
//! torn write of one block.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{have, is_root, make_image, mount_loop, require, scratch, unmount, unmount_or_detach};

/// A loop-mounted filesystem that can lose power.
pub struct PowerFs {
    /// What `new` was asked for: "ext4", "xfs", or "ext4-nojournal".
    pub fs: &'static str,
    /// The type to mount.
    mount_fs: &'static str,
    /// Whether `e2fsck -fy` runs before every mount again (no journal to
    /// replay), and how many times it had to repair something.
    fsck: bool,
    pub fsck_repairs: u32,
    /// Files e2fsck found with no name and put in `lost+found` (the temp
    /// files of killed commits, which a journal's orphan list would have
    /// freed), removed after each mount so that they do not fill the disk.
    pub fsck_salvaged: u32,
    image: PathBuf,
    /// Holds the image, and the copy taken at a cut.
    images: tempfile::TempDir,
    /// The copy of the image taken at the last cut, mounted by the next
    /// [`PowerFs::remount`].
    at_cut: Option<PathBuf>,
    mnt: tempfile::TempDir,
    options: &'static str,
    mounted: bool,
}

impl PowerFs {
    /// A fresh `fs` (ext4, xfs, or "ext4-nojournal": an ext4 made without
    /// a journal, which `e2fsck -fy` repairs before every mount), mounted
    /// with the extra `options`, with an empty directory `work` in it. A
    /// visible skip (a failure in CI) where that cannot be done: not root,
    /// no mkfs or `xfs_io`.
    pub fn new(fs: &'static str, options: &'static str) -> Option<PowerFs> {
        let ready = is_root() && have("xfs_io") && (fs != "ext4-nojournal" || have("e2fsck"));
        // ext4 made without lazy init: no background thread writing
        // inode tables and committing the journal at random moments.
        let (mount_fs, mkfs_args): (&str, &[&str]) = match fs {
            "ext4" => ("ext4", &["-E", "lazy_itable_init=0,lazy_journal_init=0"]),
            "ext4-nojournal" => ("ext4", &["-O", "^has_journal", "-E", "lazy_itable_init=0"]),
            other => (other, &[]),
        };
        let made = ready.then(|| make_image(mount_fs, mkfs_args)).flatten();
        let mnt = scratch();
        let mounted = made.filter(|(_, image)| mount_loop(mount_fs, image, mnt.path(), options));
        if !require(
            mounted.is_some(),
            &format!("root, mkfs and e2fsck for {fs}, xfs_io and a loop device"),
        ) {
            return None;
        }
        let (images, image) = mounted.unwrap();
        let power = PowerFs {
            fs,
            mount_fs,
            fsck: fs == "ext4-nojournal",
            fsck_repairs: 0,
            fsck_salvaged: 0,
            image,
            images,
            at_cut: None,
            mnt,
            options,
            mounted: true,
        };
        std::fs::create_dir(power.work()).unwrap();
        power.sync();
        Some(power)
    }

    /// The directory to work in.
    pub fn work(&self) -> PathBuf {
        self.mnt.path().join("work")
    }

    /// Makes everything so far durable (`syncfs`).
    pub fn sync(&self) {
        let fd = std::fs::File::open(self.mnt.path()).unwrap();
        rustix::fs::syncfs(&fd).unwrap();
    }

    /// Cuts the power: what was not on the disk yet never will be (the
    /// next [`PowerFs::remount`] mounts a copy of the image taken now), and
    /// from now on calls into the filesystem fail, mostly with `EIO` (ext4
    /// may say `EROFS` once its aborted journal made it read-only; xfs
    /// answers a directory's fsync with success, see `Dir::sync`).
    pub fn cut(&mut self) {
        if let Err(e) = try_shutdown(self.mnt.path()) {
            panic!("shutdown of {}: {e}", self.mnt.path().display());
        }
        let copy = self.images.path().join("at-cut.img");
        let copied = Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.image)
            .arg(&copy)
            .status();
        assert!(copied.is_ok_and(|s| s.success()), "copy of the image");
        self.at_cut = Some(copy);
    }

    /// Unmounts and mounts again, after a cut from the image as it was at
    /// the cut: the journal is replayed (or e2fsck repairs a filesystem
    /// without one), and the tree is what survived the cut. No process may
    /// have a file open in it.
    pub fn remount(&mut self) {
        assert!(unmount(self.mnt.path()), "umount");
        self.mounted = false;
        if let Some(copy) = self.at_cut.take() {
            std::fs::rename(copy, &self.image).unwrap();
        }
        if self.fsck {
            let out = Command::new("e2fsck")
                .args(["-f", "-y"])
                .arg(&self.image)
                .output()
                .expect("e2fsck");
            // 0: clean; 1: errors corrected; anything else: not repaired.
            match out.status.code() {
                Some(0) => {}
                Some(1) => self.fsck_repairs += 1,
                _ => panic!("e2fsck: {out:?}"),
            }
        }
        assert!(
            mount_loop(self.mount_fs, &self.image, self.mnt.path(), self.options),
            "mount again"
        );
        self.mounted = true;
        if self.fsck {
            let lost = self.mnt.path().join("lost+found");
            for entry in std::fs::read_dir(&lost).unwrap() {
                let path = entry.unwrap().path();
                std::fs::remove_file(&path).unwrap();
                self.fsck_salvaged += 1;
            }
        }
    }
}

/// `xfs_io -x -c shutdown` on the mount at `mnt` (no `-f`: the log is not
/// flushed), or what it said when the filesystem refused (btrfs: `ENOTTY`).
pub fn try_shutdown(mnt: &Path) -> Result<(), String> {
    let out = Command::new("xfs_io")
        .args(["-x", "-c", "shutdown"])
        .arg(mnt)
        .output()
        .expect("xfs_io");
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.success() && said.is_empty() {
        true => Ok(()),
        false => Err(format!("{}: {said}", out.status)),
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if self.mounted {
            unmount_or_detach(self.mnt.path());
        }
    }
}
