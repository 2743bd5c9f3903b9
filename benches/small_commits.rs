//! Small durable commits (4 KiB, one after another): this crate against the
//! same steps done by hand with std on a plain thread. The full set of
//! workloads and peers is issue #3's; this is the baseline it grows from.
//!
//! `cargo bench --bench small_commits`

use std::fs::File;
use std::io::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::io::AsyncWriteExt;
use tokio_atomic_write::{AsyncAtomicFile, Durability, OpenOptions};

const FILE_SIZE: usize = 4096;

/// The physical limit: write, fsync, rename, fsync the directory.
fn raw_std(dir: &Path, data: &[u8], durable: bool) {
    let tmp = dir.join(".raw.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(data).unwrap();
    if durable {
        f.sync_all().unwrap();
    }
    std::fs::rename(&tmp, dir.join("target")).unwrap();
    if durable {
        File::open(dir).unwrap().sync_all().unwrap();
    }
}

fn small_commits(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = vec![0x5a; FILE_SIZE];
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap().join("target")).unwrap();
    let target = dir.path().join("target");

    for (label, durability) in [("full", Durability::Full), ("none", Durability::None)] {
        let mut group = c.benchmark_group(format!("small_commits_{label}"));
        group.throughput(Throughput::Bytes(FILE_SIZE as u64));
        group.sample_size(20);
        let durable = durability == Durability::Full;
        group.bench_function(BenchmarkId::new("raw_std", FILE_SIZE), |b| {
            b.iter(|| raw_std(dir.path(), &data, durable))
        });
        group.bench_function(BenchmarkId::new("tokio_atomic_write", FILE_SIZE), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut file = OpenOptions::new()
                        .durability(durability)
                        .open(&target)
                        .await
                        .unwrap();
                    file.write_all(&data).await.unwrap();
                    file.commit().await.unwrap();
                })
            })
        });
        group.finish();
    }

    let mut group = c.benchmark_group("write_fn");
    group.throughput(Throughput::Bytes(FILE_SIZE as u64));
    group.sample_size(20);
    group.bench_function(
        BenchmarkId::new("tokio_atomic_write::write", FILE_SIZE),
        |b| {
            b.iter(|| {
                rt.block_on(tokio_atomic_write::write(&target, &data))
                    .unwrap()
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("AsyncAtomicFile::create", FILE_SIZE),
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut file = AsyncAtomicFile::create(&target).await.unwrap();
                    file.write_all(&data).await.unwrap();
                    file.commit().await.unwrap();
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, small_commits);
criterion_main!(benches);
