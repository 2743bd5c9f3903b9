//! Issue #6, "rust-version set and the minimum checked where the toolchain
//! allows": no 1.85 toolchain is installed here, so this checks what can be
//! checked with the one that is: every package the library depends on
//! (normal and build dependencies, all features, all platforms) declares a
//! `rust-version` no newer than the crate's own. (clippy's default
//! `incompatible_msrv` lint checks the crate's own use of `std`.)

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// `1.85` or `1.85.0` as comparable numbers.
fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap());
    let major = parts.next().unwrap();
    (major, parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn no_dependency_of_the_library_needs_a_newer_rust() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let root = meta["resolve"]["root"].as_str().unwrap();
    let ours = version(packages[root]["rust_version"].as_str().unwrap());
    assert_eq!(ours, (1, 85, 0), "Cargo.toml's rust-version");
    // Every package the library builds with: `cargo tree` of normal and
    // build edges, on every platform. Not `cargo metadata`'s resolve graph:
    // that one unifies features with the dev-dependencies' (object_store's
    // `aws` in the tests brings reqwest), which a user's build never does
    // (resolver 2).
    let tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--locked",
            "--all-features",
            "-e",
            "normal,build",
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8(tree.stdout).unwrap();
    let by_name_version: HashMap<(&str, &str), &str> = packages
        .iter()
        .map(|(id, p)| {
            (
                (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()),
                *id,
            )
        })
        .collect();
    let mut seen = HashSet::new();
    for line in tree.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(v)) = (words.next(), words.next()) else {
            continue;
        };
        let id = by_name_version[&(name, v.trim_start_matches('v'))];
        if id != root {
            seen.insert(id);
        }
    }
    let names: HashSet<&str> = seen
        .iter()
        .map(|id| packages[id]["name"].as_str().unwrap())
        .collect();
    for must in ["tokio", "rustix", "thiserror", "serde_json", "tracing"] {
        assert!(names.contains(must), "{must} not among {names:?}");
    }
    for absent in ["axum", "reqwest", "criterion", "proptest"] {
        assert!(!names.contains(absent), "dev-dependency {absent} counted");
    }
    let too_new: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let rv = p["rust_version"].as_str()?;
            (version(rv) > ours).then(|| format!("{} {} needs {rv}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "newer than rust-version 1.85: {too_new:?}"
    );
    eprintln!("{} packages checked against rust-version 1.85", seen.len());
}
