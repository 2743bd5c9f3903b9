//! Issue #6, "serde and JSON" (feature `serde`, on for the crate's own
//! tests): a state file written with `write_json` reads back equal, and
//! bad values or bad files fail naming the step and the path.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;

use common::*;
use serde::{Deserialize, Serialize};
use tokio_atomic_write::{
    read_json, update_json, write_json, write_json_pretty, Durability, Op, OpenOptions,
};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct State {
    version: u64,
    users: BTreeMap<String, Vec<u32>>,
    motd: Option<String>,
}

fn state() -> State {
    let mut users = BTreeMap::new();
    users.insert("ada".to_string(), vec![1, 2, 3]);
    users.insert("zoë".to_string(), vec![]);
    State {
        version: 7,
        users,
        motd: Some("line one\n\"quoted\"".into()),
    }
}

#[tokio::test]
async fn a_state_file_round_trips_compact_and_pretty() {
    let dir = scratch();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{}").unwrap();
    write_json(&path, &state()).await.unwrap();
    let compact = std::fs::read(&path).unwrap();
    assert_eq!(compact, serde_json::to_vec(&state()).unwrap());
    assert_eq!(read_json::<State>(&path).await.unwrap(), state());

    write_json_pretty(&path, &state()).await.unwrap();
    let pretty = std::fs::read_to_string(&path).unwrap();
    assert!(pretty.starts_with("{\n  \"version\": 7,\n"), "{pretty}");
    assert!(pretty.ends_with("}\n"), "a final newline: {pretty:?}");
    assert_eq!(read_json::<State>(&path).await.unwrap(), state());

    // The options form, for the durability and the rest.
    OpenOptions::new()
        .durability(Durability::None)
        .write_json(&path, &[1, 2, 3])
        .await
        .unwrap();
    assert_eq!(read_json::<Vec<u8>>(&path).await.unwrap(), [1, 2, 3]);
    assert_no_leftovers(dir.path());
}

/// A value serde_json cannot write fails before anything on disk changes.
#[tokio::test]
async fn a_value_that_cannot_be_serialized_changes_nothing() {
    let dir = scratch();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "old").unwrap();
    let mut bad = HashMap::new();
    bad.insert((1, 2), "keys must be strings");
    for pretty in [false, true] {
        let err = match pretty {
            false => write_json(&path, &bad).await,
            true => write_json_pretty(&path, &bad).await,
        }
        .unwrap_err();
        assert_eq!(err.op(), Op::Serialize, "{err}");
        assert_eq!(err.path(), path);
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to serialize the new content of `"),
            "{msg}"
        );
        assert!(msg.contains("state.json`: key must be a string"), "{msg}");
        // The serializer's message is in the one line, so not repeated as
        // a source.
        assert!(std::error::Error::source(&err).is_none());
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(listing(dir.path()), ["state.json"]);
}

#[tokio::test]
async fn bad_files_fail_with_the_step_the_path_and_the_parser_position() {
    let dir = scratch();
    let path = dir.path().join("state.json");

    let err = read_json::<State>(&path).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Read, ErrorKind::NotFound),
        "{err}"
    );
    assert_eq!(err.path(), path);
    // The OS error, as a failed open gives it: ENOENT.
    assert_eq!(err.io_error().raw_os_error(), Some(2), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to read `{}`: No such file or directory (os error 2)",
            path.display()
        )
    );

    std::fs::write(&path, "{\"version\": 1,\n \"users\": nope}").unwrap();
    let err = read_json::<State>(&path).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Deserialize, ErrorKind::InvalidData),
        "{err}"
    );
    assert_eq!(err.path(), path);
    let msg = err.to_string();
    assert!(
        msg.contains("state.json`: expected ident at line 2 column 12"),
        "{msg}"
    );

    std::fs::write(&path, "{\"version\": 1, \"us").unwrap();
    let err = read_json::<State>(&path).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Deserialize, ErrorKind::UnexpectedEof),
        "{err}"
    );

    // A directory, and a FIFO, which must not block the read.
    let err = read_json::<State>(dir.path()).await.unwrap_err();
    assert_eq!(err.op(), Op::Read, "{err}");
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let err = read_json::<State>(&fifo).await.unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Read, ErrorKind::InvalidInput),
        "{err}"
    );
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
    by: Vec<u32>,
}

/// Issue #20: `update_json`. A missing file starts from the default; 32
/// concurrent updates from tasks lose none; `f`'s result comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_json_starts_from_default_and_loses_no_update() {
    let dir = scratch();
    let path = dir.path().join("state.json");
    let first = update_json(&path, |c: &mut Counter| {
        assert_eq!(*c, Counter::default(), "no file: the default");
        c.n += 1;
        c.n
    })
    .await
    .unwrap();
    assert_eq!(first, 1);
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let path = path.clone();
            tokio::spawn(async move {
                update_json(&path, move |c: &mut Counter| {
                    c.n += 1;
                    c.by.push(i);
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let back: Counter = read_json(&path).await.unwrap();
    assert_eq!(back.n, 33);
    let mut by = back.by.clone();
    by.sort();
    assert_eq!(by, (0..32).collect::<Vec<_>>());
    // Compact, as write_json writes it; with options, as they say.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains('\n'), "{text}");
    OpenOptions::new()
        .durability(Durability::None)
        .update_json(&path, |c: &mut Counter| c.n = 0)
        .await
        .unwrap();
    assert_eq!(read_json::<Counter>(&path).await.unwrap().n, 0);
}

/// A file that does not parse: `Op::Deserialize`, `f` never runs, and the
/// file is left as it is. A value that cannot be written: `Op::Serialize`,
/// nothing changes.
#[tokio::test]
async fn update_json_leaves_a_bad_file_as_it_is() {
    let dir = scratch();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{\"n\": oops").unwrap();
    let err = update_json(&path, |_: &mut Counter| panic!("f must not run"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.op(), err.kind()),
        (Op::Deserialize, ErrorKind::InvalidData),
        "{err}"
    );
    assert_eq!(err.path(), path);
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\": oops");

    let other = dir.path().join("map.json");
    std::fs::write(&other, "{}").unwrap();
    let err = update_json(&other, |m: &mut HashMap<(u8, u8), u8>| {
        m.insert((1, 2), 3);
    })
    .await
    .unwrap_err();
    assert_eq!(err.op(), Op::Serialize, "{err}");
    assert_eq!(std::fs::read(&other).unwrap(), b"{}");
}
