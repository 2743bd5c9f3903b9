//! The synchronous half of [`write_if_changed`](crate::write_if_changed):
//! find the target once, compare what it holds with the new bytes (the
//! size first, then the bytes), and only when they differ write it, as
//! [`write`](super::write) does, through the entry found.
//!
//! "Unchanged" touches nothing: no temp file, no lock file, no rename, no
//! `fsync`, no `chmod`, not a byte written; the target is opened to read,
//! and that is all (its access time may change, as any read's).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::resolve::{self, Found};
use super::Staged;
use crate::sys::{self, Kind};
use crate::{Error, Op, OpenOptions};

/// How much of the target one read compares: the most this allocates,
/// whatever the size of the file or of the contents.
const COMPARE_CHUNK_BYTES: usize = 64 * 1024;

/// `write_if_changed`, whole: `Ok(false)` when the target holds exactly
/// `contents` (and, with [`OpenOptions::mode`], has that mode) and nothing
/// was done; otherwise the write, and `Ok(true)`.
pub(crate) fn write_if_changed(
    opts: &OpenOptions,
    target: PathBuf,
    contents: &[u8],
) -> Result<bool, Error> {
    let found =
        resolve::find_target(&target, opts).inspect_err(crate::trace::failed_before_commit)?;
    if holds(opts, &target, &found, contents).inspect_err(crate::trace::failed_before_commit)? {
        // Nothing to commit: the span records no times and no error.
        return Ok(false);
    }
    Staged::open_found(opts, target, found)
        .inspect_err(crate::trace::failed_before_commit)?
        .commit(contents)?;
    Ok(true)
}

/// Whether the entry `found` is a regular file holding exactly `contents`,
/// with the mode `opts` asks for if it asks for one. An entry a write may
/// not replace fails here as it fails `write` ([`Op::Open`]), unchanged or
/// not. Anything but a regular file is "changed": the write that follows
/// refuses a directory or a special file as `write` does (before it
/// creates anything), and replaces a symlink (one not followed) with a
/// file.
fn holds(opts: &OpenOptions, target: &Path, found: &Found, contents: &[u8]) -> Result<bool, Error> {
    found.check_replace(target)?;
    if found.existing.map(|m| m.kind) != Some(Kind::File) {
        return Ok(false);
    }
    // Opened without following a link, in the directory already held: the
    // very entry found (or, if it was replaced since, its replacement,
    // whose own size and bytes are then compared).
    let read_err = |e| Error::new(Op::Read, target, e);
    let Some((mut file, meta)) = found.dir.open_read(&found.name).map_err(read_err)? else {
        // Gone, or a symlink swapped in, since it was found: write.
        return Ok(false);
    };
    // The size and the mode from the `fstat` of the file to be read, not
    // from the earlier `lstat`: what is compared is one file's.
    if meta.size != contents.len() as u64 {
        return Ok(false);
    }
    if let (true, Some(mode)) = (sys::HAS_MODES, opts.mode) {
        if meta.mode != super::exact_mode(opts, mode) {
            return Ok(false);
        }
    }
    same_bytes(&mut file, contents).map_err(read_err)
}

/// Whether the next `contents.len()` bytes of `file` are `contents`, read
/// in chunks of at most [`COMPARE_CHUNK_BYTES`]; `false` at the first
/// difference, or when the file ends first (it shrank since its `fstat`).
/// Bytes past `contents.len()` are not read: the caller compared the size.
fn same_bytes(file: &mut File, contents: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0; contents.len().min(COMPARE_CHUNK_BYTES)];
    for want in contents.chunks(COMPARE_CHUNK_BYTES) {
        let got = &mut buf[..want.len()];
        match file.read_exact(got) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if got != want {
            return Ok(false);
        }
    }
    Ok(true)
}
