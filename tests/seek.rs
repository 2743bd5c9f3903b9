//! Issue #6, "AsyncSeek": `AsyncAtomicFile` behaves like a plain file
//! under random writes and seeks, checked against an in-memory model, and
//! a header patched after the body lands in the published file.

mod common;

use std::io::{ErrorKind, SeekFrom};

use common::*;
use proptest::prelude::*;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_atomic_write::{AsyncAtomicFile, Durability, Op};

/// A file in memory: what a write or a seek must do.
#[derive(Default)]
struct Model {
    data: Vec<u8>,
    pos: u64,
}

impl Model {
    fn write(&mut self, bytes: &[u8]) {
        let at = self.pos as usize;
        if self.data.len() < at + bytes.len() {
            self.data.resize(at + bytes.len(), 0);
        }
        self.data[at..at + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }

    /// The new position, or `None` for a seek that must fail.
    fn seek(&mut self, to: SeekFrom) -> Option<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => (self.data.len() as u64).checked_add_signed(d),
        }?;
        self.pos = target;
        Some(target)
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<u8>),
    Seek(SeekFrom),
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 1..300).prop_map(Step::Write),
        1 => (0u64..600).prop_map(|n| Step::Seek(SeekFrom::Start(n))),
        1 => (-400i64..200).prop_map(|d| Step::Seek(SeekFrom::Current(d))),
        1 => (-400i64..100).prop_map(|d| Step::Seek(SeekFrom::End(d))),
        1 => Just(Step::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random writes, seeks (before the start included) and flushes, with
    /// a buffer from 1 byte to larger than everything written: every seek
    /// answers the model's position (or fails where the model's would, and
    /// changes nothing), and the published file is the model's bytes.
    #[test]
    fn writes_and_seeks_match_a_file_in_memory(
        steps in proptest::collection::vec(step(), 0..40),
        buffer_size in prop_oneof![1usize..8, 8usize..200, Just(1 << 20)],
    ) {
        let dir = scratch();
        let path = dir.path().join("model.bin");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let want = rt.block_on(async {
            let mut file = AsyncAtomicFile::options()
                .buffer_size(buffer_size)
                .durability(Durability::None)
                .open(&path)
                .await
                .unwrap();
            let mut model = Model::default();
            for step in &steps {
                match step {
                    Step::Write(bytes) => {
                        file.write_all(bytes).await.unwrap();
                        model.write(bytes);
                    }
                    Step::Seek(to) => {
                        let before = model.pos;
                        match (model.seek(*to), file.seek(*to).await) {
                            (Some(want), Ok(got)) => assert_eq!(got, want, "{to:?}"),
                            (None, Err(e)) => {
                                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{to:?}");
                                let inner = e.get_ref().unwrap()
                                    .downcast_ref::<tokio_atomic_write::Error>().unwrap();
                                assert_eq!(inner.op(), Op::Seek);
                                assert_eq!(inner.path(), path);
                                // Nothing moved.
                                assert_eq!(file.stream_position().await.unwrap(), before);
                            }
                            (want, got) => panic!("{to:?}: model {want:?}, file {got:?}"),
                        }
                    }
                    Step::Flush => file.flush().await.unwrap(),
                }
            }
            assert_eq!(file.stream_position().await.unwrap(), model.pos);
            file.commit().await.unwrap();
            model.data
        });
        let got = std::fs::read(&path).unwrap();
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want, "content differs from the model");
        assert_no_leftovers(dir.path());
    }
}

/// The archive case: stream the body with `tokio::io::copy`, seek back and
/// patch a header whose length field depends on the body, commit. Readers
/// meanwhile see the old file; the published one has the header.
#[tokio::test]
async fn a_header_patched_after_the_body_is_published_with_it() {
    let dir = scratch();
    let path = dir.path().join("archive.bin");
    std::fs::write(&path, b"old archive").unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut file = AsyncAtomicFile::options()
        .buffer_size(64 << 10)
        .open(&path)
        .await
        .unwrap();
    file.write_all(&[0u8; 12]).await.unwrap(); // the header, to fill in
    let copied = tokio::io::copy(&mut &body[..], &mut file).await.unwrap();
    let end = file.stream_position().await.unwrap();
    assert_eq!(end, 12 + copied);
    file.seek(SeekFrom::Start(0)).await.unwrap();
    file.write_all(b"TAW1").await.unwrap();
    file.write_all(&copied.to_le_bytes()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old archive");
    file.seek(SeekFrom::End(0)).await.unwrap();
    file.write_all(b"END").await.unwrap();
    file.commit().await.unwrap();

    let got = std::fs::read(&path).unwrap();
    assert_eq!(&got[..4], b"TAW1");
    assert_eq!(u64::from_le_bytes(got[4..12].try_into().unwrap()), copied);
    assert_eq!(&got[12..12 + body.len()], &body[..]);
    assert_eq!(&got[12 + body.len()..], b"END");
    assert_no_leftovers(dir.path());
}

/// Asking for the position, or seeking to where the file is, costs no
/// trip to the blocking pool; a real seek costs one.
#[tokio::test]
async fn a_position_query_costs_no_hop() {
    use tokio_atomic_write::__private::pool_hops_from_this_thread as hops;
    let dir = scratch();
    let mut file = AsyncAtomicFile::create(dir.path().join("f")).await.unwrap();
    file.write_all(b"hello").await.unwrap();
    let before = hops();
    assert_eq!(file.stream_position().await.unwrap(), 5);
    assert_eq!(file.seek(SeekFrom::End(0)).await.unwrap(), 5);
    assert_eq!(file.seek(SeekFrom::Start(5)).await.unwrap(), 5);
    assert_eq!(hops() - before, 0);
    assert_eq!(file.seek(SeekFrom::Start(1)).await.unwrap(), 1);
    assert_eq!(hops() - before, 1);
    file.write_all(b"E").await.unwrap();
    file.commit().await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hEllo");
}
