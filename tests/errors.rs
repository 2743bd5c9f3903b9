//! Error messages as users print them (issue #20, point 1): one line that
//! names the step, the path and the cause, the same after `?` into an
//! `io::Error`, and no message twice in a chain printer (anyhow's `{:#}`);
//! and `?` from `io::Error` back into the crate's `Error`.

mod common;

use std::error::Error as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use common::scratch;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio_atomic_write::object::{self, ObjectOptions};
use tokio_atomic_write::{AsyncAtomicFile, Error, Op};

/// No message of the chain is already part of the one before it: a
/// chain printer prints each once.
fn printed_once(err: &(dyn std::error::Error + 'static)) {
    let mut before = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let message = e.to_string();
        assert!(
            !before.contains(&message),
            "{message:?} is printed twice: it is already in {before:?}"
        );
        before = message;
        next = e.source();
    }
}

async fn open_in_missing_dir(dir: &std::path::Path) -> Error {
    AsyncAtomicFile::create(dir.join("missing/state.json"))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn the_cause_is_in_the_one_line_in_every_printer() {
    let dir = scratch();
    let expected = format!(
        "failed to open directory `{}`: No such file or directory (os error 2)",
        dir.path().join("missing").display()
    );
    let err = open_in_missing_dir(dir.path()).await;
    assert_eq!(err.to_string(), expected);
    assert!(err.source().is_none(), "the cause is in the line already");
    printed_once(&err);
    assert_eq!(format!("{:#}", anyhow::Error::new(err)), expected);

    // After `?` into an io::Error (`From`), as a server would log it.
    let io_err = io::Error::from(open_in_missing_dir(dir.path()).await);
    assert_eq!(io_err.kind(), io::ErrorKind::NotFound);
    assert_eq!(io_err.to_string(), expected);
    printed_once(&io_err);
    assert_eq!(format!("{:#}", anyhow::Error::new(io_err)), expected);
}

#[tokio::test]
async fn a_parser_error_is_printed_once() {
    let dir = scratch();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{\"n\": nope}").unwrap();
    let err = tokio_atomic_write::read_json::<serde_json::Value>(&path)
        .await
        .unwrap_err();
    let expected = format!(
        "failed to deserialize the content of `{}`: expected ident at line 1 column 8",
        path.display()
    );
    assert_eq!(err.to_string(), expected);
    printed_once(&err);
    assert_eq!(format!("{:#}", anyhow::Error::new(err)), expected);
}

/// `object_store`'s own messages print their source: it is not printed a
/// second time.
#[tokio::test]
async fn a_store_error_is_printed_once() {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let first = object::write(store.clone(), "doc", b"v1").await.unwrap();
    object::write(store.clone(), "doc", b"v2").await.unwrap();
    let err = ObjectOptions::new()
        .if_version(object_store::UpdateVersion::from(first))
        .write(store, "doc", b"v3")
        .await
        .unwrap_err();
    assert_eq!(err.op(), Op::Put);
    let line = err.to_string();
    assert!(line.starts_with("failed to put `doc`: "), "{line}");
    let store_error = err.io_error().get_ref().unwrap();
    assert!(
        store_error.is::<object_store::Error>(),
        "the store's error stays reachable"
    );
    let inner = store_error
        .source()
        .expect("the store's own source")
        .to_string();
    assert!(line.ends_with(&inner), "{line}");
    printed_once(&err);
    let chain = format!("{:#}", anyhow::Error::new(err));
    assert_eq!(chain.matches(&inner).count(), 1, "{chain}");
}

/// An object's write error, too, comes back through `?` with its step and
/// location.
#[tokio::test]
async fn an_object_write_error_comes_back_whole() {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let mut object = ObjectOptions::new()
        .overwrite(false)
        .conditional_limit(4)
        .open(store, "small")
        .await
        .unwrap();
    let err = Error::from(object.write_all(b"too long").await.unwrap_err());
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Put, io::ErrorKind::FileTooLarge),
        "{err}"
    );
    assert_eq!(err.path(), std::path::Path::new("small"));
    assert!(
        err.to_string().starts_with("failed to put `small`: "),
        "{err}"
    );
    let again = Error::from(object.write_all(b"x").await.unwrap_err());
    assert_eq!((again.op(), again.to_string()), (Op::Put, err.to_string()));
}

/// `?` works on `write_all` and on `commit` in one function returning the
/// crate's `Error`.
async fn save(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = AsyncAtomicFile::create(path).await?;
    file.write_all(bytes).await?;
    file.flush().await?;
    file.commit().await?;
    Ok(())
}

/// A reader that fails after some bytes.
struct Failing(usize);

impl AsyncRead for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.0 == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the upload was cut",
            )));
        }
        let n = self.0.min(buf.remaining());
        buf.put_slice(&vec![b'x'; n]);
        self.0 -= n;
        Poll::Ready(Ok(()))
    }
}

async fn copy_in(path: &std::path::Path) -> Result<(), Error> {
    let mut file = AsyncAtomicFile::create(path).await?;
    tokio::io::copy(&mut Failing(10_000), &mut file).await?;
    file.commit().await
}

#[tokio::test]
async fn question_mark_turns_io_errors_into_errors() {
    let dir = scratch();
    let path = dir.path().join("saved");
    save(&path, b"saved").await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"saved");

    // An io::Error the crate made comes back whole: step, path, published.
    let err = open_in_missing_dir(dir.path()).await;
    let back = Error::from(io::Error::from(err));
    assert_eq!(back.op(), Op::OpenDir);
    assert_eq!(back.path(), dir.path().join("missing"));
    assert_eq!(back.io_error().raw_os_error(), Some(2));

    // Another's io::Error is `Op::Other`, its message unchanged; nothing
    // is published and the temp file is gone.
    let err = copy_in(&path).await.unwrap_err();
    assert_eq!(err.op(), Op::Other);
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(err.path(), std::path::Path::new(""));
    assert_eq!(err.to_string(), "the upload was cut");
    assert_eq!(
        format!("{:#}", anyhow::Error::new(err)),
        "the upload was cut"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"saved");
    common::assert_no_leftovers_eventually(dir.path());
}
