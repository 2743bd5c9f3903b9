//! Memory of a streamed object stays within `max_concurrency` parts (in
//! flight and filling together) plus a constant, counted by a global
//! allocator that keeps the peak of the bytes held. One test in this
//! binary, so that no other test's allocations count.

#[path = "common/counting.rs"]
mod counting;
#[path = "common/stores.rs"]
mod stores;

use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::object::ObjectOptions;

const MIB: usize = 1024 * 1024;
const PART: usize = 5 * MIB;
const PARTS_IN_FLIGHT: usize = 2;
const TOTAL: usize = 64 * MIB;
/// What is not parts: the runtime, the HTTP client's buffers, the 64 KiB
/// chunk the test writes from.
const CONSTANT: usize = 4 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_object_holds_at_most_max_concurrency_parts() {
    for s in stores::all_stores("memory") {
        if matches!(s.kind, stores::Kind::Memory) {
            // `InMemory` keeps every part until the upload completes.
            continue;
        }
        let key = s.key("big");
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut options = ObjectOptions::new();
        options.part_size(PART).max_concurrency(PARTS_IN_FLIGHT);
        let mut object = options.open(s.store.clone(), key.clone()).await.unwrap();
        let before = counting::start();
        for _ in 0..TOTAL / chunk.len() {
            object.write_all(&chunk).await.unwrap();
        }
        object.commit().await.unwrap();
        let peak = counting::peak_since(before);
        let bound = PARTS_IN_FLIGHT * PART + CONSTANT;
        eprintln!(
            "{s:?}: {} MiB streamed, peak {:.1} MiB held, bound {:.1} MiB",
            TOTAL / MIB,
            peak as f64 / MIB as f64,
            bound as f64 / MIB as f64
        );
        assert!(peak <= bound, "{s:?}: peak {peak} > bound {bound}");
        let meta = s.store.head(&key).await.unwrap();
        assert_eq!(meta.size, TOTAL as u64, "{s:?}");
    }
}
