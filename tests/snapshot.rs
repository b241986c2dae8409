//! Snapshots and restarts with the real binary: SIGTERM and kill -9, a downtime longer
//! than the offline threshold, a changed shard count, damaged files.

mod common;

use common::{client, heartbeat, only_true_transitions, parse_events, temp_dir, unix_ms, Server};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Events of a run as (device_id, from, to, epoch).
fn transitions(events: &[serde_json::Value]) -> Vec<(u64, String, String, u64)> {
    events
        .iter()
        .map(|v| {
            (
                v["device_id"].as_u64().unwrap(),
                v["from"].as_str().unwrap().to_string(),
                v["to"].as_str().unwrap().to_string(),
                v["epoch"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn send_round(ids: impl Iterator<Item = u64>, seq: u32, to: std::net::SocketAddr) {
    let c = client();
    for d in ids {
        c.send_to(&heartbeat(d, seq, 2, false), to).unwrap();
    }
}

#[test]
fn a_restart_continues_every_device_and_downtime_is_not_silence() {
    let dir = temp_dir("snap-restart");
    let snap = dir.join("devices.snap");
    let snap_s = snap.to_str().unwrap();
    let args = ["--cores", "0", "--snapshot", snap_s];
    // Run 1: 50 devices on 200 ms intervals, each online (epoch 1).
    let s = Server::start("snap-run1", &args);
    for seq in 1..=3 {
        send_round(1..=50, seq, s.addr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, stats, _) = s.terminate();
    assert!(status.success());
    assert_eq!(stats["devices"], 50);
    assert!(snap.exists(), "the final snapshot is written at SIGTERM");
    assert_eq!(stats["snapshot"]["written"], 1, "{stats:#}");
    // Down for 1 s, longer than the 600 ms offline threshold.
    std::thread::sleep(Duration::from_secs(1));
    // Run 2: devices 1–25 resume at once and keep sending; 26–50 stay silent.
    let s = Server::start("snap-run2", &args);
    let started = std::time::Instant::now();
    let mut seq = 4;
    let mut last_sent_ms = 0;
    while started.elapsed() < Duration::from_millis(1_200) {
        last_sent_ms = unix_ms();
        send_round(1..=25, seq, s.addr);
        seq += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, stats, events) = s.terminate();
    assert!(status.success());
    assert_eq!(stats["devices"], 50, "restored, not new");
    assert_eq!(stats["duplicates"], 0, "sequences continue");
    let ev = parse_events(&events);
    let t = transitions(&ev);
    // Resumed devices: no event at all, but a true late if the stop outlasted the
    // rest of their 300 ms after the last round.
    for d in 1..=25 {
        only_true_transitions(&ev, d, last_sent_ms, 300);
    }
    for d in 26..=50u64 {
        let mine: Vec<_> = t.iter().filter(|e| e.0 == d).collect();
        assert_eq!(
            mine.iter()
                .map(|e| (e.1.as_str(), e.2.as_str(), e.3))
                .collect::<Vec<_>>(),
            [("online", "late", 1), ("late", "offline", 1)],
            "device {d}: late then offline from the restart, epoch continuing"
        );
    }
}

#[test]
fn kill_9_loses_at_most_one_snapshot_interval() {
    let dir = temp_dir("snap-kill");
    let snap = dir.join("devices.snap");
    let snap_s = snap.to_str().unwrap();
    let args = [
        "--cores",
        "0",
        "--snapshot",
        snap_s,
        "--snapshot-interval",
        "1",
    ];
    let mut s = Server::start("snap-kill1", &args);
    send_round(1..=30, 1, s.addr);
    // A periodic snapshot after them.
    s.wait_stats(5, |v| {
        v["snapshot"]["written"].as_u64().unwrap_or(0) >= 1 && v["devices"] == 30
    });
    std::thread::sleep(Duration::from_millis(1_200));
    s.child.kill().unwrap(); // SIGKILL: no final snapshot
    s.child.wait().unwrap();
    let s = Server::start("snap-kill2", &args);
    let v = s.wait_stats(5, |v| v["devices"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        v["devices"], 30,
        "everything the last periodic snapshot held"
    );
    let _ = s.terminate();
}

#[test]
fn a_changed_shard_count_gives_each_device_to_its_new_owner() {
    let dir = temp_dir("snap-shards");
    let snap = dir.join("devices.snap");
    let snap_s = snap.to_str().unwrap();
    let s = Server::start("snap-1shard", &["--cores", "0", "--snapshot", snap_s]);
    send_round(1..=200, 1, s.addr);
    std::thread::sleep(Duration::from_millis(200));
    let (_, stats, _) = s.terminate();
    assert_eq!(stats["devices"], 200);
    let s = Server::start("snap-2shards", &["--cores", "0,1", "--snapshot", snap_s]);
    // Every device heartbeats again: each must be known where it lands (its owner),
    // so none is new (no unknown → online).
    send_round(1..=200, 2, s.addr);
    std::thread::sleep(Duration::from_millis(200));
    let (_, stats, events) = s.terminate();
    assert_eq!(stats["devices"], 200);
    let per: Vec<u64> = (0..2)
        .map(|i| stats["per_shard"][i]["devices"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (0..2)
        .map(|i| {
            (1..=200u64)
                .filter(|&d| ringbeat::core::owner::owner(d, 2) == i)
                .count() as u64
        })
        .collect();
    assert_eq!(per, want, "each device restored on its owner");
    assert!(
        transitions(&parse_events(&events))
            .iter()
            .all(|e| e.1 != "unknown"),
        "no device is new"
    );
}

fn serve_with_snapshot(path: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringbeat"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "0",
            "--quiet",
        ])
        .arg("--snapshot")
        .arg(path)
        .args(["--run-for", "0.3"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_damaged_truncated_or_foreign_snapshot_is_refused_with_the_way_out() {
    common::require_io_uring();
    let dir = temp_dir("snap-damaged");
    let good = ringbeat::core::snapshot::encode(
        1,
        &[ringbeat::core::snapshot::Record {
            device_id: 7,
            last_seen_unix_ms: 1,
            epoch: 1,
            last_seq: 1,
            lost: 0,
            interval_ds: 10,
            status: 0,
            state: ringbeat::core::table::Liveness::Online,
            replay: None,
        }],
    );
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", good[..good.len() - 3].to_vec(), "truncated"),
        ("flipped", flipped, "checksum mismatch"),
        (
            "foreign",
            b"{\"devices\": []}\n".to_vec(),
            "not a ringbeat snapshot",
        ),
    ];
    for (name, bytes, why) in cases {
        let path = dir.join(format!("{name}.snap"));
        std::fs::write(&path, &bytes).unwrap();
        let out = serve_with_snapshot(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: refused");
        assert!(
            err.contains(path.to_str().unwrap())
                && err.contains(why)
                && err.contains("--no-restore"),
            "{name}: names the file, the reason and the way out: {err}"
        );
        // --no-restore starts without it, and the next snapshot replaces it.
        let out = serve_with_snapshot(&path, &["--no-restore"]);
        assert!(
            out.status.success(),
            "{name} with --no-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ringbeat::core::snapshot::decode(&std::fs::read(&path).unwrap()).is_ok());
    }
}
