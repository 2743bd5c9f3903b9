//! `object::update` from 8 processes at once against the S3 server: 100
//! increments each of one counter object end at exactly 800.

mod common;
#[path = "common/stores.rs"]
mod stores;

use std::process::Stdio;

use tokio_atomic_write::object::ObjectOptions;

const PROCESSES: usize = 8;
const ENDPOINT_ENV: &str = "TAW_S3_ENDPOINT";
const BUCKET_ENV: &str = "TAW_S3_BUCKET";
const KEY_ENV: &str = "TAW_S3_KEY";
const START_ENV: &str = "TAW_START_AT_MS";

/// Increments per process; `TAW_OBJECT_INCREMENTS` scales it.
fn increments() -> u64 {
    std::env::var("TAW_OBJECT_INCREMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn eight_processes_increment_one_counter_exactly() {
    if common::is_child() {
        return;
    }
    if !stores::s3::require_weed() {
        return;
    }
    let server = stores::s3::shared();
    let key = format!("counter-{}", std::process::id());
    // All start at once, not as each process comes up.
    let start_at = std::time::SystemTime::now() + std::time::Duration::from_millis(1500);
    let start_at = start_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            common::child_command("child_increments", &[])
                .env(ENDPOINT_ENV, server.endpoint())
                .env(BUCKET_ENV, server.bucket())
                .env(KEY_ENV, &key)
                .env(START_ENV, &start_at)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let mut retries = 0u64;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("retries ").map(|(_, n)| n))
            .unwrap_or_else(|| panic!("no retries line in {stdout}"));
        retries += line.trim().parse::<u64>().unwrap();
    }
    let expected = PROCESSES as u64 * increments();
    let got = server.raw_get(&key).expect("the counter object");
    eprintln!(
        "{PROCESSES} processes x {} increments: counter {}, {retries} retries",
        increments(),
        String::from_utf8_lossy(&got)
    );
    assert_eq!(String::from_utf8(got).unwrap(), expected.to_string());
}

/// The child half: `increments()` updates, printing how many times the
/// closure ran again after a lost race.
#[test]
fn child_increments() {
    if common::is_child() {
        child();
    }
}

fn child() {
    let endpoint = std::env::var(ENDPOINT_ENV).unwrap();
    let bucket = std::env::var(BUCKET_ENV).unwrap();
    let key = std::env::var(KEY_ENV).unwrap();
    let runtime = common::runtime();
    let start_at: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(std::time::Duration::from_millis(
        start_at.saturating_sub(now),
    ));
    let calls = runtime.block_on(async {
        let store = stores::s3_client(&endpoint, &bucket);
        let mut options = ObjectOptions::new();
        options.max_tries(10_000);
        let mut calls = 0u64;
        for _ in 0..increments() {
            options
                .update(store.clone(), key.as_str(), |old| {
                    calls += 1;
                    let n: u64 = match old {
                        Some(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                        None => 0,
                    };
                    Ok::<_, tokio_atomic_write::Error>((n + 1).to_string().into_bytes())
                })
                .await
                .unwrap();
        }
        calls
    });
    // On a line of its own: libtest prints the test name before it.
    println!("\nretries {}", calls - increments());
}
