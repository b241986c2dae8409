//! The events output under the operator's conditions: restarts append, SIGHUP reopens
//! (log rotation), a consumer that stops reading or goes away never holds the stop or
//! loses events silently.

mod common;

use common::{heartbeat, Server};
use nix::sys::signal::Signal;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Sends one heartbeat each for `ids` (one device per datagram, no acks).
fn send(server: &Server, ids: impl IntoIterator<Item = u64>) {
    let c = common::client();
    for id in ids {
        c.send_to(&heartbeat(id, 1, 10, false), server.addr)
            .unwrap();
    }
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_restart_appends_to_the_events_file() {
    let server = Server::start("events-append", &["--cores", "0"]);
    let path = server.events_path();
    send(&server, 1..=3);
    server.wait_stats(5, |v| n(v, "events") == 3);
    let (status, _, first) = server.terminate();
    assert!(status.success());
    assert_eq!(first.len(), 3);
    let events = path.to_str().unwrap().to_string();
    let server = Server::start("events-append-2", &["--cores", "0", "--events", &events]);
    send(&server, [4]);
    server.wait_stats(5, |v| n(v, "events") == 1);
    let (status, _, _) = server.terminate();
    assert!(status.success());
    let all = lines(&path);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(
        all[..3],
        first[..],
        "the first run's events are kept, in place"
    );
    assert!(all[3].contains("\"device_id\":4"));
}

#[test]
fn sighup_reopens_the_events_file_after_a_rotation() {
    let server = Server::start("events-rotate", &["--cores", "0"]);
    let path = server.events_path();
    send(&server, [1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&path).is_empty() {
        assert!(Instant::now() < deadline, "first event never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    // logrotate: move the file away, then signal.
    let rotated = path.with_extension("jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_stats(5, |v| v["events_output"]["reopened"] == 1);
    send(&server, [2]);
    server.wait_stats(5, |v| n(v, "events") == 2);
    let (status, v, after) = server.terminate();
    assert!(status.success(), "SIGHUP must not kill the server");
    let before = lines(&rotated);
    assert_eq!(before.len(), 1);
    assert!(before[0].contains("\"device_id\":1"));
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("\"device_id\":2"));
    assert_eq!(v["events_output"]["written"], 2);
}

/// `--events -` into a pipe nobody reads: the writer blocks, the shards drop (and
/// count) what the queues cannot hold, and SIGTERM still exits within the second with
/// every event accounted for.
#[test]
fn a_consumer_that_stops_reading_neither_holds_the_stop_nor_loses_events_silently() {
    let mut server = Server::start_with_stdout(
        "events-stalled",
        &["--cores", "0", "--events", "-", "--max-devices", "100000"],
        Stdio::piped(),
    );
    let _unread = server.take_stdout();
    send(&server, 1..=20_000);
    let v = server.wait_stats(10, |v| n(v, "heartbeats") == 20_000);
    assert_eq!(n(&v, "events"), 20_000);
    std::thread::sleep(Duration::from_millis(300));
    let (status, v, _) = server.terminate();
    assert!(status.success());
    let out = &v["events_output"];
    let accounted = out["written"].as_u64().unwrap()
        + out["lost"].as_u64().unwrap()
        + out["unwritten_at_stop"].as_u64().unwrap()
        + n(&v, "events_dropped");
    assert_eq!(accounted, 20_000, "{v}");
    assert!(out["unwritten_at_stop"].as_u64().unwrap() + n(&v, "events_dropped") > 0);
}

/// A reader that goes away (EPIPE): said once, clearly; later events are counted as
/// lost; the server keeps running and exits cleanly.
#[test]
fn a_reader_that_goes_away_is_reported_once_and_counted() {
    let mut server = Server::start_with_stdout(
        "events-epipe",
        &["--cores", "0", "--events", "-"],
        Stdio::piped(),
    );
    drop(server.take_stdout());
    send(&server, 1..=50);
    server.wait_stats(5, |v| n(v, "events") == 50);
    send(&server, 51..=100);
    let v = server.wait_stats(5, |v| {
        n(v, "events") == 100 && v["events_output"]["lost"].as_u64() == Some(100)
    });
    assert_eq!(v["events_output"]["written"], 0);
    let errors: Vec<String> = server
        .stderr_so_far()
        .into_iter()
        .filter(|l| l.contains("writing events to standard output failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("the reader went away"));
    let (status, v, _) = server.terminate();
    assert!(status.success());
    assert_eq!(v["events_output"]["lost"], 100);
}
