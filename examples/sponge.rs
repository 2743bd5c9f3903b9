//! `sponge`, as in moreutils, but atomic and durable: soaks up standard
//! input, then replaces the file with it in one step.
//!
//! ```text
//! grep -v secret config.toml | cargo run --example sponge -- config.toml
//! ```
//!
//! The file is replaced only if the input ended cleanly, at its end of
//! file: a read error, a signal or a crash while reading leaves the file as
//! it was. Readers of the file never see a part of the new content. The
//! file keeps its permissions and owner. A read error removes the temp
//! file; after a kill, a named temp file (where the filesystem has no
//! `O_TMPFILE`) stays until `tokio_atomic_write::sweep` removes it.
//!
//! A pipe's end of file says only that the writer closed it, not that it
//! succeeded: `false | sponge out` empties `out`. Guard against that in the
//! shell (`set -o pipefail` and a temp name, or `cmd > tmp && sponge out <
//! tmp`).

use std::path::Path;
use std::process::ExitCode;

use tokio_atomic_write::AsyncAtomicFile;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let [path] = &args[..] else {
        eprintln!("usage: sponge FILE < input");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    match runtime.block_on(sponge(Path::new(path), tokio::io::stdin())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sponge: {}", report(&*e));
            ExitCode::FAILURE
        }
    }
}

/// Copies `input` to its end into an atomic file for `path`, then commits:
/// the bytes copied. An error returns before the commit, and dropping the
/// file removes its temp file: the target stays as it was.
pub(crate) async fn sponge(
    path: &Path,
    mut input: impl tokio::io::AsyncRead + Unpin,
) -> Result<u64, Box<dyn std::error::Error>> {
    // Opened first, so that a bad path fails before the input is read.
    let mut file = AsyncAtomicFile::create(path).await?;
    let copied = tokio::io::copy(&mut input, &mut file).await?;
    file.commit().await?;
    Ok(copied)
}

/// An error and its sources, `: `-separated.
pub(crate) fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}
