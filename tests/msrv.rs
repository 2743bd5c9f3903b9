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
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();

    // Every package reached from the library by normal or build edges.
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let used = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap();
            if used && dep_id != root && seen.insert(dep_id) {
                todo.push(dep_id);
            }
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
