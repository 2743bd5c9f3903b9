//! Issue #19, examples/object_state.rs: three instances of the server on
//! 127.0.0.1 share one state object on the S3 server; POSTs go to all
//! three at once, one instance is SIGKILLed under load, and the state
//! must hold every answered visit exactly once (and no visit twice).

mod common;
#[path = "common/stores.rs"]
mod stores;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{child_command, is_child, runtime};
use serde_json::json;

#[allow(dead_code)]
#[path = "../examples/object_state.rs"]
mod object_state;

const CHILD: &str = "child_instance";
const INSTANCES: usize = 3;
const CLIENTS_PER_INSTANCE: usize = 2;
/// Answered visits to wait for before the kill.
const ANSWERS_BEFORE_KILL: usize = 20;
/// Visits each client of a surviving instance sends after the kill.
const AFTER_KILL: usize = 5;

#[test]
fn child_instance() {
    if !is_child() {
        return;
    }
    let endpoint = std::env::var("TAW_S3_ENDPOINT").unwrap();
    let bucket = std::env::var("TAW_S3_BUCKET").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(object_state::serve(&endpoint, &bucket, "127.0.0.1:0")) {
        eprintln!("object_state: {e}");
        std::process::exit(1);
    }
}

/// An instance, killed (SIGKILL) and reaped when dropped.
struct Instance {
    child: Child,
    url: String,
}

impl Instance {
    fn start(endpoint: &str, bucket: &str) -> Instance {
        let child = child_command(CHILD, &[])
            .env("TAW_S3_ENDPOINT", endpoint)
            .env("TAW_S3_BUCKET", bucket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut instance = Instance {
            child,
            url: String::new(),
        };
        let mut out = BufReader::new(instance.child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the instance exited");
            if let Some((_, rest)) = line.split_once("listening on ") {
                instance.url = format!("http://{}", rest.trim());
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return instance;
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_instances_share_one_state_and_a_kill_loses_no_answered_visit() {
    if is_child() || !stores::s3::require_weed() {
        return;
    }
    // A server of its own: the example's state object has a fixed name.
    let server = stores::s3::S3Server::start("objectstate");
    let mut instances: Vec<Option<Instance>> = (0..INSTANCES)
        .map(|_| Some(Instance::start(&server.endpoint(), server.bucket())))
        .collect();
    let urls: Vec<String> = instances
        .iter()
        .map(|i| i.as_ref().unwrap().url.clone())
        .collect();
    let rt = runtime();
    let answered = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for c in 0..CLIENTS_PER_INSTANCE {
            let (url, answered, stop) = (url.clone(), answered.clone(), stop.clone());
            clients.push(rt.spawn(async move {
                let client = reqwest::Client::new();
                let mut after_stop = 0;
                for seq in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        after_stop += 1;
                        if after_stop > AFTER_KILL {
                            return;
                        }
                    }
                    let body = json!({ "instance": i, "client": c, "seq": seq });
                    let Ok(answer) = client.post(format!("{url}/visit")).json(&body).send().await
                    else {
                        return; // this instance was killed
                    };
                    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
                    let Ok((id, _count)) = answer.json::<(String, usize)>().await else {
                        return; // killed while answering
                    };
                    answered.lock().unwrap().push((i, id));
                }
            }));
        }
    }
    // Enough answers, from every instance, before the kill (a liveness
    // bound, not a timing).
    let enough = |answered: &[(usize, String)]| {
        answered.len() >= ANSWERS_BEFORE_KILL
            && (0..INSTANCES).all(|i| answered.iter().any(|(j, _)| *j == i))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !enough(&answered.lock().unwrap()) {
        assert!(
            !clients.iter().any(|c| c.is_finished()),
            "a client stopped before the kill"
        );
        assert!(std::time::Instant::now() < deadline, "no progress in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(instances[0].take()); // SIGKILL, with updates in flight
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });

    let answered: Vec<String> = answered
        .lock()
        .unwrap()
        .iter()
        .map(|(_, id)| id.clone())
        .collect();
    let state: object_state::State = rt.block_on(async {
        reqwest::get(format!("{}/state", urls[1]))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let ids: Vec<&String> = state.visits.iter().map(|(id, _)| id).collect();
    let unique: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a visit was applied twice");
    for id in &answered {
        assert!(unique.contains(id), "the answered visit {id} was lost");
    }
    eprintln!(
        "{} visits answered by {INSTANCES} instances (one killed), {} in the state",
        answered.len(),
        ids.len()
    );
    assert!(ids.len() >= answered.len());
    // Every instance's visits made it, the killed one's included.
    for url in &urls {
        let host = url.trim_start_matches("http://");
        assert!(
            ids.iter().any(|id| id.starts_with(host)),
            "no visit of {host}"
        );
    }
    drop(instances);
}
