//! Stream stdin or a file into an atomic sink with `tokio::io::copy`:
//! the destination is replaced only once all input has arrived.
//!
//! ```text
//! cargo run --example copy -- DEST            # from stdin
//! cargo run --example copy -- SRC DEST        # from a file
//! ```
//!
//! If reading fails half way, the destination keeps its old content.

use std::path::PathBuf;

use tokio::io::AsyncRead;
use tokio_atomic_write::AsyncAtomicFile;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (mut reader, dest): (Box<dyn AsyncRead + Unpin>, PathBuf) = match args.as_slice() {
        [dest] => (Box::new(tokio::io::stdin()), dest.clone()),
        [src, dest] => (Box::new(tokio::fs::File::open(src).await?), dest.clone()),
        _ => {
            eprintln!("usage: copy [SRC] DEST");
            std::process::exit(2);
        }
    };

    let mut file = AsyncAtomicFile::create(&dest).await?;
    // On error `file` is dropped uncommitted: the temp file is removed and
    // the destination is untouched.
    let bytes = tokio::io::copy(&mut reader, &mut file).await?;
    file.commit().await?;
    eprintln!("copied {bytes} bytes to {}", dest.display());
    Ok(())
}
