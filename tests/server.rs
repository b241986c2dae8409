//! Conformance tests: the real server binary on loopback, checked byte by byte and
//! counter by counter against PROTOCOL-v1.

mod common;

use common::{client, heartbeat, only_true_transitions, parse_events, recv_retry, unix_ms, Server};
use ringbeat::core::codec::{decode_ack, Ack, FRAME_BYTES};
use ringbeat::core::owner::owner;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn acks_of(datagram: &[u8]) -> Vec<Ack> {
    assert_eq!(datagram.len() % FRAME_BYTES, 0, "ack datagram length");
    datagram
        .chunks(32)
        .map(|c| decode_ack(c.try_into().unwrap()).expect("valid ack frame"))
        .collect()
}

#[test]
fn acks_are_byte_exact_for_single_frames_and_64_frame_batches() {
    let server = Server::start("acks", &["--cores", "0"]);
    let c = client();
    let mut buf = [0u8; 4096];

    let hb = heartbeat(42, 7, 0, true);
    c.send_to(&hb, server.addr).unwrap();
    let (n, from) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(from, server.addr);
    let mut expected = [0u8; 32];
    expected[0..4].copy_from_slice(b"RBHB");
    expected[4..6].copy_from_slice(&1u16.to_le_bytes());
    expected[6] = 2; // kind ack
    expected[7] = 0; // flags
    expected[8..16].copy_from_slice(&42u64.to_le_bytes());
    expected[16..20].copy_from_slice(&7u32.to_le_bytes());
    expected[20..22].copy_from_slice(&0u16.to_le_bytes()); // accepted
    expected[22..24].copy_from_slice(&100u16.to_le_bytes()); // default 10 s
    expected[24..32].copy_from_slice(&hb[24..32]); // sent_ns echoed verbatim
    assert_eq!(&buf[..n], &expected);

    // 64 frames, every other one asking for an ack: one ack datagram, 32 frames, in order.
    let batch: Vec<u8> = (1..=64u64)
        .flat_map(|d| heartbeat(1000 + d, d as u32, 5, d % 2 == 0))
        .collect();
    c.send_to(&batch, server.addr).unwrap();
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    let acks = acks_of(&buf[..n]);
    assert_eq!(acks.len(), 32);
    for (i, a) in acks.iter().enumerate() {
        let d = 1000 + 2 * (i as u64 + 1);
        assert_eq!(
            a,
            &Ack {
                device_id: d,
                seq: (d - 1000) as u32,
                status: 0,
                interval_ds: 5,
                sent_ns: 0xABCD_0000_0000_0000 | (d - 1000)
            }
        );
    }
    // A full 64-ack datagram.
    let batch: Vec<u8> = (1..=64u64)
        .flat_map(|d| heartbeat(5000 + d, 1, 5, true))
        .collect();
    c.send_to(&batch, server.addr).unwrap();
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(n, 2048);
    // Exactly one ack datagram per datagram: nothing else is waiting.
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        recv_retry(&c, &mut buf).is_err(),
        "only one ack datagram per datagram"
    );

    let s = server.wait_stats(5, |s| s["acks_sent"] == 97);
    assert_eq!(s["heartbeats"], 129);
    assert_eq!(s["ack_datagrams"], 3);
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn every_malformed_case_is_counted_by_reason_and_never_acked() {
    let server = Server::start("malformed", &["--cores", "0"]);
    let c = client();
    let mut buf = [0u8; 4096];
    let good = |d: u64| heartbeat(d, 1, 10, true);
    let mut bad_magic = good(900);
    bad_magic[1] = b'X';
    let mut bad_version = good(901);
    bad_version[4] = 3; // 2 is the authenticated frame (64 bytes)
    let mut bad_kind = good(902);
    bad_kind[6] = 2; // an ack sent to the server
    let zero_id = heartbeat(0, 1, 10, true);
    // Valid neighbours around every bad frame, in one datagram.
    let mixed: Vec<u8> = [
        good(1),
        bad_magic,
        good(2),
        bad_version,
        good(3),
        bad_kind,
        good(4),
        zero_id,
        good(5),
    ]
    .concat();
    c.send_to(&mixed, server.addr).unwrap();
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    let ids: Vec<u64> = acks_of(&buf[..n]).iter().map(|a| a.device_id).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 4, 5],
        "only the valid frames are acked, in order"
    );

    // Whole-datagram rejections: never acked.
    let long: Vec<u8> = (0..65u64).flat_map(|d| good(100 + d)).collect(); // 2080 bytes
    for d in [
        &[][..],
        &good(6)[..31],
        &[good(7).as_slice(), &[0u8]].concat()[..],
        &long[..],
    ] {
        c.send_to(d, server.addr).unwrap();
    }
    // An all-bad datagram gets no ack either.
    c.send_to(&[bad_magic, zero_id].concat(), server.addr)
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        recv_retry(&c, &mut buf).is_err(),
        "no ack for rejected datagrams"
    );

    let s = server.wait_stats(5, |s| s["datagrams"] == 6);
    let m = &s["malformed"];
    assert_eq!(m["bad_magic"], 2);
    assert_eq!(m["bad_version"], 1);
    assert_eq!(m["bad_kind"], 1);
    assert_eq!(m["zero_device_id"], 2);
    assert_eq!(m["empty_datagram"], 1);
    assert_eq!(m["bad_datagram_length"], 2);
    assert_eq!(m["datagram_too_long"], 1);
    assert_eq!(s["heartbeats"], 5);
    assert_eq!(s["devices"], 5, "malformed frames never create devices");
    let _ = server.terminate();
}

#[test]
fn liveness_transitions_with_a_100ms_interval() {
    let server = Server::start("liveness", &["--cores", "0"]);
    let c = client();
    // Device 77: three heartbeats 50 ms apart, then silence: online → late (150 ms)
    // → offline (300 ms); then back online with epoch 2.
    for seq in 1..=3 {
        c.send_to(&heartbeat(77, seq, 1, false), server.addr)
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_stats(5, |s| s["offline"] == 1);
    c.send_to(&heartbeat(77, 4, 1, false), server.addr).unwrap();
    // Back online is the fourth event. (Not the `online` gauge: the device is online
    // for only 150 ms before it goes late again, which a stats snapshot can miss.)
    server.wait_stats(5, |s| {
        s["heartbeats"] == 4 && s["events"].as_u64().is_some_and(|e| e >= 4)
    });
    let (status, stats, events) = server.terminate();
    assert!(status.success());
    let ev = parse_events(&events);
    let path: Vec<(String, String, u64)> = ev
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
                e["epoch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        &path[..4],
        &[
            ("unknown".into(), "online".into(), 1),
            ("online".into(), "late".into(), 1),
            ("late".into(), "offline".into(), 1),
            ("offline".into(), "online".into(), 2),
        ]
    );
    for e in &ev {
        assert_eq!(e["device_id"], 77);
        assert!(
            e["time_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "wall-clock ms"
        );
    }
    // Detection bound: late no earlier than 150 ms after the last heartbeat (the event
    // says when that was) and within one tick (10 ms) plus scheduling slack; offline
    // 300 ms after it. A shard that was blind meanwhile (its socket dropped datagrams)
    // assumes a heartbeat came at the blind span's end, by design (no false offline):
    // each deadline a span pushed back (counted in `deferred`) may then come up to one
    // threshold plus the span later. One that fell behind (its loop stalled on a busy
    // machine) reports it once it has caught up: up to the time it was behind later.
    let blind = stats["blind_ms"].as_i64().unwrap() + stats["behind_ms"].as_i64().unwrap();
    let deferred = stats["deferred"].as_i64().unwrap();
    let t = |i: usize| ev[i]["time_ms"].as_i64().unwrap();
    let silent_for = |i: usize| t(i) - ev[i]["last_seen_ms"].as_i64().unwrap();
    assert!(
        (150..=150 * (1 + deferred) + 50 + blind).contains(&silent_for(1)),
        "late {} ms after the last heartbeat ({blind} ms blind, {deferred} deferred)",
        silent_for(1)
    );
    assert!(
        (300..=300 * (1 + deferred) + 50 + blind).contains(&silent_for(2)),
        "offline {} ms after the last heartbeat ({blind} ms blind, {deferred} deferred)",
        silent_for(2)
    );
    // The same heartbeat, as two events saw it (shard time mapped to Unix time when each
    // event was shipped: within a millisecond).
    let seen = |i: usize| ev[i]["last_seen_ms"].as_i64().unwrap();
    assert!((seen(1) - seen(2)).abs() <= 1);
    assert_eq!(ev[1]["seq"], 3);
    assert_eq!(
        stats["events"],
        ev.len() as u64,
        "every transition written once"
    );
    assert_eq!(stats["events_dropped"], 0);
}

#[test]
fn two_shards_each_device_on_exactly_one_shard_and_steering_agrees_with_owner() {
    let server = Server::start("shards", &["--cores", "0,1"]);
    // 64 source ports; single-device datagrams must all be steered by the kernel program
    // to their owner (no forwarding); mixed batches are forwarded.
    let clients: Vec<_> = (0..64).map(|_| client()).collect();
    let devices = 2_000u64;
    for d in 1..=devices {
        clients[(d % 64) as usize]
            .send_to(&heartbeat(d, 1, 100, false), server.addr)
            .unwrap();
    }
    let s = server.wait_stats(10, |s| s["heartbeats"] == devices);
    assert_eq!(
        s["forwarded"], 0,
        "the BPF program computes the same owner as userspace"
    );
    let per = s["per_shard"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    let on: Vec<u64> = per.iter().map(|p| p["devices"].as_u64().unwrap()).collect();
    let expected0 = (1..=devices).filter(|&d| owner(d, 2) == 0).count() as u64;
    assert_eq!(on, vec![expected0, devices - expected0]);
    assert_eq!(
        per[0]["datagrams"].as_u64().unwrap(),
        expected0,
        "datagrams land on the owner's socket"
    );

    // Gateway batches mixing devices: frames not owned by the receiving shard are handed over.
    let batch: Vec<u8> = (1..=32u64)
        .flat_map(|d| heartbeat(d, 2, 100, false))
        .collect();
    for _ in 0..10 {
        clients[0].send_to(&batch, server.addr).unwrap();
    }
    let s = server.wait_stats(10, |s| s["heartbeats"] == devices + 320);
    let forwarded = s["forwarded"].as_u64().unwrap();
    let first_owner = owner(1, 2);
    let foreign = (1..=32u64).filter(|&d| owner(d, 2) != first_owner).count() as u64;
    assert_eq!(forwarded, foreign * 10);
    assert_eq!(s["forwarded_in"], forwarded);
    assert_eq!(s["forward_drops"], 0);
    assert_eq!(s["devices"], devices, "no device counted twice");
    assert_eq!(
        s["duplicates"].as_u64().unwrap(),
        32 * 9,
        "repeated seq 2 counted as duplicates"
    );
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

/// A frame its owner shard could not be handed (the hand-off ring full) is answered 6
/// (busy), never accepted, is counted, and the owner counts itself blind for it (a
/// heartbeat lost to the server's own overload must not read as silence).
#[test]
fn a_full_hand_off_ring_answers_busy_and_blinds_the_owner() {
    let server = Server::start_with_env(
        "handoff-full",
        "127.0.0.1:0",
        &["--cores", "0,1"],
        &[("RINGBEAT_FORWARD_RING_FRAMES", "2")],
    );
    // The first frame steers the datagram to its owner; the other 31 belong to the
    // other shard, whose ring takes 2 before this shard publishes it.
    let steer = owner(1, 2);
    let other = 1 - steer as usize;
    let foreign: Vec<u64> = (2..).filter(|&d| owner(d, 2) != steer).take(31).collect();
    let batch: Vec<u8> = std::iter::once(1)
        .chain(foreign)
        .flat_map(|d| heartbeat(d, 1, 100, true))
        .collect();
    let c = client();
    c.send_to(&batch, server.addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = recv_retry(&c, &mut buf).expect("an ack datagram");
    let statuses: Vec<u16> = buf[..n]
        .chunks(FRAME_BYTES)
        .map(|f| decode_ack(f.try_into().unwrap()).unwrap().status)
        .collect();
    assert_eq!(statuses.len(), 32);
    assert_eq!(
        statuses[..3],
        [0, 0, 0],
        "taken here, and the two handed over"
    );
    assert!(
        statuses[3..]
            .iter()
            .all(|&s| s == ringbeat::core::codec::ACK_BUSY),
        "{statuses:?}"
    );
    let s = server.wait_stats(5, |s| {
        s["heartbeats"] == 3 && s["per_shard"][other]["blind_ms"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(
        (s["forwarded"].as_u64(), s["forward_drops"].as_u64()),
        (Some(2), Some(29))
    );
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn udp_rearm_after_enobufs_keeps_serving_and_counts_ring_dry() {
    // Regression: the receive that ran dry was re-armed only after the next wait, so
    // a 2-buffer ring drained one pair per tick. 2 buffers + a burst empties the ring.
    let server = Server::start(
        "ringdry",
        &[
            "--engine",
            "uring",
            "--cores",
            "0",
            "--buf-count",
            "2",
            "--wait-us",
            "200",
        ],
    );
    let c = client();
    let burst = 2_000u64;
    for d in 1..=burst {
        c.send_to(&heartbeat(d, 1, 100, false), server.addr)
            .unwrap();
    }
    let s = server.wait_stats(10, |s| s["ring_dry"].as_u64().unwrap() > 0);
    assert!(
        s["rearms"].as_u64().unwrap() > 0,
        "multishot re-armed after running dry"
    );
    // Still serving afterwards: a fresh heartbeat is acked.
    std::thread::sleep(Duration::from_millis(100));
    c.send_to(&heartbeat(999_999, 1, 100, true), server.addr)
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(acks_of(&buf[..n])[0].device_id, 999_999);
    let s = server.wait_stats(5, |s| s["acks_sent"] == 1);
    // Every datagram is accounted: processed, or dropped by the kernel and counted.
    let accounted = s["datagrams"].as_u64().unwrap() + s["kernel_drops"].as_u64().unwrap();
    assert_eq!(accounted, burst + 1, "{s:#}");
    let _ = server.terminate();
}

/// Stop semantics, the same for every engine: a burst sent with `sendmmsg` from the
/// shards' own CPU (so the socket holds a queue when the stop comes) right before
/// SIGTERM, with no pause, is applied, dropped by the kernel (counted) or counted as
/// unread at stop; nothing vanishes. Run with one shard and with two (hand-offs at
/// stop).
#[test]
fn stop_right_after_a_20000_burst_applies_or_counts_every_datagram() {
    use std::os::fd::AsRawFd;
    const BURST: u64 = 20_000;
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).unwrap();
    let pid = nix::unistd::Pid::from_raw(0);
    let allowed = nix::sched::sched_getaffinity(pid).unwrap();
    for (round, cores) in ["0", "0,1", "0", "0,1"].into_iter().enumerate() {
        let server = Server::start("stop-burst", &["--cores", cores]);
        let c = client();
        let (to, to_len) = ringbeat::sys::socket::sockaddr_from(server.addr);
        let mut batch =
            ringbeat::sys::mmsg::SendBatch::new(64, ringbeat::core::codec::MAX_DATAGRAM_BYTES);
        let mut sent = 0u64;
        let base = 1 + round as u64 * BURST;
        nix::sched::sched_setaffinity(pid, &cpu0).unwrap();
        for d in base..base + BURST {
            batch.push(&heartbeat(d, 1, 100, false), &to, to_len);
            if batch.is_full() || d + 1 == base + BURST {
                sent += batch.flush(c.as_raw_fd()).sent as u64;
            }
        }
        let (status, s, events) = server.terminate();
        nix::sched::sched_setaffinity(pid, &allowed).unwrap();
        assert!(status.success(), "exit status {status:?}");
        let n = |k: &str| s[k].as_u64().unwrap();
        assert_eq!(
            n("heartbeats") + n("kernel_drops") + n("unread_at_stop"),
            sent,
            "round {round} (--cores {cores}): every datagram applied or counted: {s:#}"
        );
        assert_eq!(n("datagrams"), n("heartbeats"), "{s:#}");
        assert_eq!(
            n("forward_drops") + n("table_full") + n("malformed_total"),
            0
        );
        assert_eq!(
            events.len() as u64,
            n("heartbeats"),
            "one event per new device"
        );
        eprintln!(
            "round {round} (--cores {cores}): sent {sent}, applied {}, kernel drops {}, unread {}",
            n("heartbeats"),
            n("kernel_drops"),
            n("unread_at_stop")
        );
    }
}

/// The same with gateways: 8-frame datagrams mixing both shards' devices, every frame
/// asking for an ack, so at stop acks wait for the other shard's verdicts. Every frame
/// is applied or counted, and every frame read is acked or counted as an ack dropped.
#[test]
fn stop_right_after_a_gateway_burst_accounts_for_every_frame_and_ack() {
    use std::os::fd::AsRawFd;
    const DATAGRAMS: u64 = 4_000;
    let server = Server::start("stop-gateways", &["--cores", "0,1"]);
    let c = client();
    let (to, to_len) = ringbeat::sys::socket::sockaddr_from(server.addr);
    let mut batch =
        ringbeat::sys::mmsg::SendBatch::new(64, ringbeat::core::codec::MAX_DATAGRAM_BYTES);
    let mut sent = 0u64;
    for g in 0..DATAGRAMS {
        let dgram: Vec<u8> = (0..8)
            .flat_map(|k| heartbeat(1 + g * 8 + k, 1, 100, true))
            .collect();
        batch.push(&dgram, &to, to_len);
        if batch.is_full() || g + 1 == DATAGRAMS {
            sent += batch.flush(c.as_raw_fd()).sent as u64;
        }
    }
    let (status, s, _) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(
        n("heartbeats") + n("forward_drops") + 8 * (n("kernel_drops") + n("unread_at_stop")),
        8 * sent,
        "every frame applied or counted: {s:#}"
    );
    assert_eq!(
        n("acks_sent") + n("acks_dropped"),
        n("frames_valid"),
        "every frame read acked or its ack counted as dropped: {s:#}"
    );
    assert!(n("held_acks") > 0, "acks waited for the other shard: {s:#}");
    eprintln!(
        "sent {sent} datagrams; frames applied {}, held acks {}, acks sent {}, dropped {}",
        n("heartbeats"),
        n("held_acks"),
        n("acks_sent"),
        n("acks_dropped")
    );
}

/// No false transitions from the server's own blindness: 100 devices heartbeat every
/// 200 ms while a flood of other device ids overflows the socket buffer for 1.5 s
/// (kernel drops, so some of their heartbeats are lost). None of them may go late or
/// offline while it heartbeats; a device that really went silent is still reported
/// late and offline.
#[test]
fn a_flood_that_overflows_the_socket_causes_no_false_late_or_offline() {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    // 64 KiB holds the steady devices' heartbeats (sent in groups of 10) with room to
    // spare; the flood, 64-frame datagrams sent as fast as a thread can from the
    // shard's own CPU (so the shard also loses the CPU to it), overflows it.
    let server = Server::start("blind", &["--cores", "0", "--rcvbuf", "64K"]);
    let addr = server.addr;
    let silent = 999_999u64;
    client()
        .send_to(&heartbeat(silent, 1, 2, false), addr)
        .unwrap();
    let flooding = std::sync::Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut cpu0 = nix::sched::CpuSet::new();
            cpu0.set(0).unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).unwrap();
            let c = client();
            let (to, to_len) = ringbeat::sys::socket::sockaddr_from(addr);
            let mut batch =
                ringbeat::sys::mmsg::SendBatch::new(64, ringbeat::core::codec::MAX_DATAGRAM_BYTES);
            let mut id = 0u64;
            while flooding.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    id += 1;
                    batch.push(
                        &heartbeat(1_000_000 + id % 50_000, 1, 100, false),
                        &to,
                        to_len,
                    );
                }
                batch.flush(c.as_raw_fd());
            }
        })
    };
    let c = client();
    let started = std::time::Instant::now();
    let mut round = 0u32;
    let mut last_round = std::time::Instant::now();
    let mut worst_gap = Duration::ZERO;
    // Unix ms just before each steady device's latest send.
    let mut last_sent_ms = [0i64; 101];
    // The steady devices send until the end, well past the silent device's offline.
    while started.elapsed() < Duration::from_millis(3_500) {
        worst_gap = worst_gap.max(last_round.elapsed());
        last_round = std::time::Instant::now();
        if started.elapsed() >= Duration::from_millis(1_500) {
            flooding.store(false, Ordering::Relaxed);
        }
        round += 1;
        for group in 0..10u64 {
            for d in group * 10 + 1..=group * 10 + 10 {
                last_sent_ms[d as usize] = unix_ms();
                c.send_to(&heartbeat(d, round, 2, false), addr).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    flood.join().unwrap();
    let (status, s, events) = server.terminate();
    assert!(status.success());
    assert!(
        s["kernel_drops"].as_u64().unwrap() > 0,
        "the flood must overflow the socket for this test to mean anything: {s:#}"
    );
    assert!(s["blind_ms"].as_u64().unwrap() > 0, "{s:#}");
    let ev = parse_events(&events);
    let of = |id: u64| -> Vec<&str> {
        ev.iter()
            .filter(|e| e["device_id"] == id)
            .map(|e| e["to"].as_str().unwrap())
            .collect()
    };
    assert!(
        worst_gap < Duration::from_millis(290),
        "the test's own sender fell behind ({worst_gap:?} between rounds): its devices \
         really were late, so this run proves nothing"
    );
    stayed_online_while_sending(&ev, 1..=100, |d| last_sent_ms[d as usize], 300);
    assert_eq!(
        of(silent),
        ["online", "late", "offline"],
        "the silent device is reported"
    );
}

/// The `steady` devices, which heartbeat until the test stops sending, each came
/// online first and had no false late or offline (`only_true_transitions`).
fn stayed_online_while_sending(
    ev: &[serde_json::Value],
    steady: impl IntoIterator<Item = u64>,
    last_sent_ms: impl Fn(u64) -> i64,
    late_ms: i64,
) {
    for d in steady {
        assert!(
            ev.iter()
                .find(|e| e["device_id"] == d)
                .is_some_and(|e| e["to"] == "online"),
            "device {d} came online first"
        );
        only_true_transitions(ev, d, last_sent_ms(d), late_ms);
    }
}

/// A receive ring that runs dry loses nothing (the datagrams wait in the socket), so
/// it defers no deadline: the shard holds liveness still until it has taken in what
/// waited, then reports a device that really went silent at its own deadline. Bursts
/// of 200 datagrams every 5 ms into 16 receive buffers run the ring dry over and
/// over for 1.2 s while a device goes silent; steady devices keep heartbeating.
#[test]
fn a_dry_receive_ring_holds_liveness_without_deferring_it() {
    let server = Server::start(
        "dry-ring",
        &[
            "--cores",
            "0",
            "--engine",
            "uring",
            "--buf-count",
            "16",
            "--rcvbuf",
            "8M",
        ],
    );
    let addr = server.addr;
    let silent = 999_999u64;
    let c = client();
    c.send_to(&heartbeat(silent, 1, 1, false), addr).unwrap();
    let started = std::time::Instant::now();
    let burst = bursts(addr, (1_000_000..1_000_200).collect(), started);
    // Devices 1-10 on 200 ms intervals (late after 300 ms), every 50 ms.
    let mut round = 0u32;
    let mut last_sent_ms = 0;
    while started.elapsed() < Duration::from_millis(1_200) {
        round += 1;
        last_sent_ms = unix_ms();
        for d in 1..=10u64 {
            c.send_to(&heartbeat(d, round, 2, false), addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    burst.join().unwrap();
    let (status, s, events) = server.terminate();
    assert!(status.success());
    assert!(
        s["ring_dry"].as_u64().unwrap() > 0 && s["holds"].as_u64().unwrap() > 0,
        "the bursts must run the ring dry for this test to mean anything: {s:#}"
    );
    assert_eq!(
        s["kernel_drops"], 0,
        "an 8 MiB socket buffer takes the bursts: {s:#}"
    );
    let steady: Vec<u64> = (1..=10).collect();
    held_not_deferred(
        &events,
        &steady,
        last_sent_ms,
        silent,
        s["behind_ms"].as_i64().unwrap(),
    );
}

/// Bursts of one heartbeat from each of `ids` (200 datagrams in one sendmmsg) every
/// 5 ms for 1.2 s from `started`: enough to run 16 receive buffers dry each time.
fn bursts(
    addr: std::net::SocketAddr,
    ids: Vec<u64>,
    started: std::time::Instant,
) -> std::thread::JoinHandle<()> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let c = client();
        let (to, to_len) = ringbeat::sys::socket::sockaddr_from(addr);
        let mut batch = ringbeat::sys::mmsg::SendBatch::new(
            ids.len(),
            ringbeat::core::codec::MAX_DATAGRAM_BYTES,
        );
        let mut seq = 0u32;
        while started.elapsed() < Duration::from_millis(1_200) {
            seq += 1;
            for &id in &ids {
                batch.push(&heartbeat(id, seq, 100, false), &to, to_len);
            }
            batch.flush(c.as_raw_fd());
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// From the events file: the `steady` devices (200 ms intervals, last sent at Unix ms
/// `last_sent_ms`) had no false late or offline, and the `silent` one (100 ms interval)
/// went late 150 ms after its heartbeat, within a tick and scheduling slack, plus at
/// most `behind_ms`, the time its shard held liveness still. (A dry ring counted as
/// blindness pushed it past the bursts' end, 1.2 s.)
fn held_not_deferred(
    events: &[String],
    steady: &[u64],
    last_sent_ms: i64,
    silent: u64,
    behind_ms: i64,
) {
    let ev = parse_events(events);
    let of = |id: u64| -> Vec<&serde_json::Value> {
        ev.iter().filter(|e| e["device_id"] == id).collect()
    };
    stayed_online_while_sending(&ev, steady.iter().copied(), |_| last_sent_ms, 300);
    let late = of(silent)
        .into_iter()
        .find(|e| e["to"] == "late")
        .expect("the silent device is reported late");
    let silent_for = late["time_ms"].as_i64().unwrap() - late["last_seen_ms"].as_i64().unwrap();
    assert!(
        (150..=150 + 60 + behind_ms).contains(&silent_for),
        "late {silent_for} ms after its heartbeat ({behind_ms} ms behind in all)"
    );
}

/// Heartbeats a peer shard took in after falling behind may have waited in its
/// socket: their owner holds its liveness too, and gives no false late. Two shards;
/// every datagram is steered to one (the receiver: its first frame's device is that
/// shard's), whose 16 receive buffers bursts run dry over and over for 1.2 s. The
/// steady devices and a silent one belong to the other shard (the owner), which
/// receives nothing itself and gets their frames handed over.
#[test]
fn a_peer_that_fell_behind_holds_its_owners_liveness_too() {
    let server = Server::start(
        "dry-peer",
        &[
            "--cores",
            "0,1",
            "--engine",
            "uring",
            "--buf-count",
            "16",
            "--rcvbuf",
            "8M",
        ],
    );
    let addr = server.addr;
    let receiver = owner(1, 2);
    let owner_shard = 1 - receiver as usize;
    let mine: Vec<u64> = (2..)
        .filter(|&d| owner(d, 2) == receiver)
        .take(200)
        .collect();
    let theirs: Vec<u64> = (1_000..)
        .filter(|&d| owner(d, 2) != receiver)
        .take(11)
        .collect();
    let (steady, silent) = (&theirs[..10], theirs[10]);
    // A datagram with the receiver's device 1 first, then `id` (handed to the owner).
    let via = |id: u64, seq: u32, interval_ds: u16| -> Vec<u8> {
        [
            heartbeat(1, seq, 100, false),
            heartbeat(id, seq, interval_ds, false),
        ]
        .concat()
    };
    let c = client();
    c.send_to(&via(silent, 1, 1), addr).unwrap();
    let started = std::time::Instant::now();
    let burst = bursts(addr, mine, started);
    let mut round = 1u32;
    let mut last_sent_ms = 0;
    while started.elapsed() < Duration::from_millis(1_200) {
        round += 1;
        last_sent_ms = unix_ms();
        for &d in steady {
            c.send_to(&via(d, round, 2), addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    burst.join().unwrap();
    let (status, s, events) = server.terminate();
    assert!(status.success());
    let (r, o) = (
        &s["per_shard"][receiver as usize],
        &s["per_shard"][owner_shard],
    );
    assert!(
        r["ring_dry"].as_u64().unwrap() > 0 && r["holds"].as_u64().unwrap() > 0,
        "the bursts must run the receiver's ring dry for this test to mean anything: {s:#}"
    );
    assert_eq!(
        s["kernel_drops"], 0,
        "an 8 MiB socket buffer takes the bursts: {s:#}"
    );
    assert_eq!(
        o["datagrams"], 0,
        "the owner receives nothing itself: {s:#}"
    );
    assert!(
        o["holds"].as_u64().unwrap() > 0,
        "the owner held too: {s:#}"
    );
    held_not_deferred(
        &events,
        steady,
        last_sent_ms,
        silent,
        o["behind_ms"].as_i64().unwrap(),
    );
}

#[test]
fn sigterm_exits_zero_within_a_second_and_writes_stats() {
    let server = Server::start("sigterm", &["--cores", "0,1", "--stats-interval", "30"]);
    let c = client();
    for d in 1..=100u64 {
        c.send_to(&heartbeat(d, 1, 100, false), server.addr)
            .unwrap();
    }
    let (status, stats, events) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        stats["heartbeats"], 100,
        "final stats written at exit: {stats:#}"
    );
    assert_eq!(events.len(), 100, "events flushed at exit");
}

#[test]
fn cpu_wake_latency_request_is_held_while_serving_and_withdrawn_at_exit() {
    use ringbeat::sys::pmqos::current_limit_us;
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .is_ok();
    assert!(
        writable,
        "this test needs write access to /dev/cpu_dma_latency (run the tests as root, \
         as CI does, or leave it out with `--skip cpu_wake_latency`)"
    );
    let before = current_limit_us().unwrap();
    let server = Server::start("pmqos", &["--cores", "0", "--cpu-dma-latency-us", "7"]);
    let during = current_limit_us().unwrap();
    assert!(
        during <= 7,
        "the request is in force while serving: {during} µs"
    );
    let (status, _, _) = server.terminate();
    assert!(status.success());
    // Other processes may hold their own requests; ours must be gone.
    assert_eq!(current_limit_us().unwrap(), before, "withdrawn at exit");
}

#[test]
fn ipv6_loopback_is_served() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        panic!("IPv6 loopback (::1) is not available on this machine");
    }
    let server = Server::start_on("ipv6", "[::1]:0", &["--cores", "0"]);
    let c = std::net::UdpSocket::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.send_to(&heartbeat(5, 1, 0, true), server.addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(from, server.addr);
    assert_eq!(acks_of(&buf[..n])[0].device_id, 5);
}

/// Pages of the shard's receive arena resident (on which node), and all of its pages.
fn arena_pages(server: &Server) -> (u64, u64, String) {
    let s = server.stats();
    let shard = &s["per_shard"][0];
    let addr = shard["arena_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"))
        .to_string();
    let maps = std::fs::read_to_string(format!("/proc/{}/numa_maps", server.child.id()))
        .expect("/proc/PID/numa_maps (needs a NUMA-enabled kernel)");
    let line = maps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(addr.as_str()))
        .unwrap_or_else(|| panic!("arena {addr} not in numa_maps:\n{maps}"))
        .to_string();
    let pages = line
        .split_whitespace()
        .filter_map(|f| f.strip_prefix('N')?.split_once('=')?.1.parse::<u64>().ok())
        .sum();
    (pages, shard["arena_bytes"].as_u64().unwrap() / 4096, line)
}

#[test]
fn the_receive_window_keeps_the_same_few_buffers_in_use() {
    // 5,000 datagrams of 32 heartbeats (~1.1 KiB each with the receive header): a
    // 256 KiB window hands the kernel the fewest buffers, 256, and the ring reuses
    // them, so only their pages are ever written; without a window the kernel cycles
    // through all 4,096 buffers and every page of the arena becomes resident.
    let datagram: Vec<u8> = (0..32u64)
        .flat_map(|i| heartbeat(1 + i, 1, 0, false))
        .collect();
    let run = |window: &str| {
        let server = Server::start(
            "window",
            &[
                "--engine",
                "uring",
                "--cores",
                "0",
                "--buf-window-kib",
                window,
            ],
        );
        let c = client();
        for round in 0..50 {
            for _ in 0..100 {
                c.send_to(&datagram, server.addr).unwrap();
            }
            // Paced, so the socket never overflows: every datagram is received.
            std::thread::sleep(Duration::from_millis(if round % 10 == 9 { 20 } else { 2 }));
        }
        let received = server.wait_stats(10, |s| s["datagrams"].as_u64() >= Some(5_000));
        assert_eq!(received["kernel_drops"], 0, "{received}");
        arena_pages(&server)
    };
    let (hot, all, line) = run("256");
    let window_pages = (256 * 2176u64).div_ceil(4096);
    assert!(
        hot <= window_pages + 1,
        "{hot} of {all} arena pages resident with the window, at most {window_pages} expected: {line}"
    );
    let (cycled, all, line) = run("0");
    assert!(
        cycled >= all - 1,
        "{cycled} of {all} arena pages resident without the window: {line}"
    );
}

#[test]
fn receive_arena_is_bound_to_the_shards_numa_node() {
    let server = Server::start("numa", &["--engine", "uring", "--cores", "0"]);
    // Pages are placed when the kernel first writes them: receive some heartbeats.
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    for id in 1..=64u64 {
        c.send_to(&heartbeat(id, 1, 0, true), server.addr).unwrap();
        recv_retry(&c, &mut buf).unwrap();
    }
    let node = server.stats()["per_shard"][0]["numa_node"]
        .as_u64()
        .unwrap();
    let (pages, all, line) = arena_pages(&server);
    assert!(
        line.contains(&format!("bind:{node}")),
        "arena policy: {line}"
    );
    // The pages written so far are resident on that node and no other; the untouched
    // rest costs nothing (an idle shard keeps none of its arena resident).
    let nodes: Vec<&str> = line
        .split_whitespace()
        .filter(|f| f.starts_with('N') && f.contains('='))
        .collect();
    assert!(
        nodes.len() == 1 && nodes[0].starts_with(&format!("N{node}=")),
        "arena pages by node: {line}"
    );
    assert!(
        pages >= 1 && pages < all,
        "{pages} of {all} pages resident: {line}"
    );
}

#[test]
fn kernel_drops_are_counted_so_every_datagram_is_accounted_for() {
    // A 4 KiB receive buffer (and with io_uring a 100 ms batching wait over an
    // 8-buffer ring; those flags are refused by the other engines): a fast burst
    // overflows the socket; the drops must show up in `kernel_drops` (SO_MEMINFO).
    let mut args = vec!["--cores", "0", "--rcvbuf", "4K"];
    if matches!(
        std::env::var("RINGBEAT_TEST_ENGINE").as_deref(),
        Err(_) | Ok("uring")
    ) {
        args.extend(["--wait-us", "100000", "--buf-count", "8"]);
    }
    let server = Server::start("kdrops", &args);
    let c = client();
    let burst = 5_000u64;
    for d in 1..=burst {
        c.send_to(&heartbeat(d, 1, 100, false), server.addr)
            .unwrap();
    }
    let s = server.wait_stats(10, |s| {
        s["datagrams"].as_u64().unwrap() + s["kernel_drops"].as_u64().unwrap() == burst
    });
    assert!(
        s["kernel_drops"].as_u64().unwrap() > 0,
        "the burst should overflow a 4 KiB buffer: {s:#}"
    );
    assert_eq!(s["heartbeats"], s["datagrams"]);
    let _ = server.terminate();
}

#[test]
fn kernel_prefilter_drops_garbage_before_queueing_and_keeps_valid_heartbeats() {
    let server = Server::start("prefilter", &["--cores", "0", "--kernel-prefilter"]);
    let c = client();
    let mut bad_magic = heartbeat(5, 1, 10, true);
    bad_magic[0] = b'X';
    let garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 33],
        bad_magic.to_vec(),
        vec![0u8; 2080],
        b"hello".to_vec(),
    ];
    let mut valid = 0u64;
    for round in 0..50u64 {
        for g in &garbage {
            c.send_to(g, server.addr).unwrap();
        }
        c.send_to(&heartbeat(100 + round, 1, 10, false), server.addr)
            .unwrap();
        valid += 1;
    }
    let s = server.wait_stats(5, |s| s["heartbeats"] == valid);
    assert_eq!(
        s["malformed_total"], 0,
        "garbage never reaches userspace: {s:#}"
    );
    let drops = server.wait_stats(5, |s| s["kernel_drops"].as_u64().unwrap() == 200)
        ["kernel_drops"]
        .clone();
    assert_eq!(
        drops, 200,
        "filtered datagrams appear in the socket's drop count"
    );
    // A frame with a bad magic *after* a valid first frame is not the filter's business:
    // it reaches the server and is counted as malformed, its neighbour processed.
    let mixed = [heartbeat(999, 1, 10, false), bad_magic].concat();
    c.send_to(&mixed, server.addr).unwrap();
    let s = server.wait_stats(5, |s| s["heartbeats"] == valid + 1);
    assert_eq!(s["malformed"]["bad_magic"], 1);
    let _ = server.terminate();
}

#[test]
fn batching_without_min_wait_falls_back_to_short_timeouts() {
    // As on Linux < 6.12: a batching wait must end after --wait-us, not after a tick.
    // Regression: it kept a huge wait count with only the tick timeout, so each batch
    // slept up to a whole tick.
    let server = Server::start_with_env(
        "nominwait",
        "127.0.0.1:0",
        &[
            "--engine",
            "uring",
            "--cores",
            "0",
            "--wait-us",
            "200",
            "--tick-ms",
            "1000",
        ],
        &[("RINGBEAT_FORCE_NO_MIN_WAIT", "1")],
    );
    let c = client();
    let started = std::time::Instant::now();
    for d in 1..=2_000u64 {
        c.send_to(&heartbeat(d, 1, 100, false), server.addr)
            .unwrap();
    }
    c.send_to(&heartbeat(5_000, 1, 100, true), server.addr)
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(acks_of(&buf[..n])[0].device_id, 5_000);
    let s = server.wait_stats(5, |s| s["heartbeats"] == 2_001);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "took {:?}: {s:#}",
        started.elapsed()
    );
    // 1-second ticks: with the old behaviour, waits of a full tick would make this take
    // seconds; with 200 µs batches the shard wakes often.
    assert!(s["wakeups"].as_u64().unwrap() > 10);
    let _ = server.terminate();
}

/// A second server on a port another one holds is refused with the reason, instead of
/// joining the SO_REUSEPORT group and silently taking part of the traffic; the first
/// one keeps receiving everything.
#[test]
fn a_second_instance_on_the_same_port_is_refused_and_the_first_keeps_everything() {
    let first = Server::start("port-first", &["--cores", "0"]);
    let listen = first.addr.to_string();
    let (ok, _, err) = common::run_ringbeat(
        &[
            "serve",
            "--cores",
            "1",
            "--listen",
            &listen,
            "--run-for",
            "2",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains(&format!("UDP {listen} in use")), "{err}");
    assert!(
        err.contains("stop it, or choose another --listen port"),
        "{err}"
    );
    let c = client();
    for id in 1..=100u64 {
        c.send_to(&heartbeat(id, 1, 10, false), first.addr).unwrap();
    }
    first.wait_stats(5, |v| v["heartbeats"] == 100);
}

/// Errors say their cause once, and an unwritable stats path is refused at start
/// rather than logged every interval.
#[test]
fn errors_name_their_cause_once_and_bad_output_paths_are_refused_at_start() {
    let run = |args: &[&str]| {
        let (ok, _, err) = common::run_ringbeat(args, &[]);
        (ok, err)
    };
    let (ok, err) = run(&["serve", "--config", "/nonexistent/ringbeat.toml"]);
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let (ok, err) = run(&[
        "serve",
        "--cores",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--stats-json",
        "/proc/ringbeat-stats.json",
        "--run-for",
        "5",
    ]);
    assert!(!ok);
    assert!(
        err.contains("stats file: /proc/ringbeat-stats.json:") && err.contains("choose a path"),
        "{err}"
    );
    // `check` tests every output flag it is given, without creating the files.
    let dir = common::temp_dir("check-outputs");
    let events = dir.join("events.jsonl");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let (ok, text, _) = common::run_ringbeat(
        &[
            "check",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--events",
            events.to_str().unwrap(),
            "--snapshot",
            "/nonexistent/dir/ringbeat.snap",
            "--http-listen",
            &http,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("ok    events file"), "{text}");
    assert!(!events.exists(), "check created {}", events.display());
    assert!(text.contains("FAIL  snapshot file"), "{text}");
    assert!(text.contains("FAIL  HTTP port"), "{text}");
}

/// `ringbeat --version` names the revision the binary was built from.
#[test]
fn version_names_the_revision() {
    let (_, text, _) = common::run_ringbeat(&["--version"], &[]);
    let revision = text
        .split("(revision ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        revision == "unknown"
            || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}

/// The summary line keeps its own interval, whatever the stats interval.
#[test]
fn summary_lines_follow_their_own_interval() {
    let (ok, _, err) = common::run_ringbeat(
        &[
            "serve",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--stats-interval",
            "0.1",
            "--summary-interval",
            "1",
            "--run-for",
            "2.5",
        ],
        &[],
    );
    assert!(ok);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("hb/s ")).count(),
        2,
        "{err}"
    );
}

/// RUST_LOG=debug says more: the validated configuration, each shard, TCP connections.
#[test]
fn debug_logging_adds_what_the_server_decided() {
    let (ok, _, err) = common::run_ringbeat(
        &[
            "serve",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--run-for",
            "0.5",
            "--quiet",
        ],
        &[("RUST_LOG", "debug")],
    );
    assert!(ok);
    assert!(
        err.contains("configuration (file keys and flags, validated)"),
        "{err}"
    );
    assert!(err.contains("shard ready"), "{err}");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once serving, WATCHDOG=1
/// at half the watchdog period while the shards loop, STOPPING=1 at the stop.
#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    let dir = common::temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringbeat"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .args([
            "serve",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--run-for",
            "1",
            "--quiet",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    let mut pings = 0;
    loop {
        let n = sock.recv(&mut buf).expect("WATCHDOG=1 or STOPPING=1");
        match &buf[..n] {
            b"WATCHDOG=1" => pings += 1,
            b"STOPPING=1" => break,
            other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
        }
    }
    // Every 100 ms over a 1 s run.
    assert!((5..=12).contains(&pings), "{pings} watchdog pings");
    assert!(child.wait().unwrap().success());
}

#[test]
fn engine_auto_falls_back_to_epoll_where_io_uring_is_refused_and_says_why() {
    // `check` under a seccomp filter like Docker's: a warning, not a failure, naming
    // the filter and the engine that will be used.
    let out = common::refuse_io_uring(Command::new(env!("CARGO_BIN_EXE_ringbeat")).args([
        "check",
        "--cores",
        "0",
        "--listen",
        "127.0.0.1:0",
    ]))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("epoll (--engine auto)") && text.contains("seccomp"),
        "{text}"
    );
    // `--engine uring` insists, and fails with the same reason.
    let out = common::refuse_io_uring(Command::new(env!("CARGO_BIN_EXE_ringbeat")).args([
        "check",
        "--engine",
        "uring",
        "--cores",
        "0",
        "--listen",
        "127.0.0.1:0",
    ]))
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("seccomp"));

    // `serve` starts on epoll, warns once with the reason, and answers heartbeats.
    let mut child = common::refuse_io_uring(Command::new(env!("CARGO_BIN_EXE_ringbeat")).args([
        "serve",
        "--cores",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--run-for",
        "5",
    ]))
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        said.push(line);
    };
    let said = said.join("\n");
    assert!(
        said.contains("io_uring unavailable") && said.contains("seccomp"),
        "{said}"
    );
    let c = client();
    c.send_to(&heartbeat(77, 1, 0, true), addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(acks_of(&buf[..n])[0].device_id, 77);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `--allow`: datagrams from outside the allowlist are dropped unanswered and counted
/// (never applied, never acked); from inside they are served. A list in the config
/// file works the same.
#[test]
fn datagrams_from_outside_the_allowlist_are_dropped_and_counted() {
    let server = Server::start(
        "allow-out",
        &[
            "--cores",
            "0",
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "fd00::/8",
        ],
    );
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for seq in 1..=5 {
        c.send_to(&heartbeat(80, seq, 0, true), server.addr)
            .unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        c.recv_from(&mut buf).is_err(),
        "no ack to a disallowed source"
    );
    let v = server.wait_stats(5, |v| v["disallowed"].as_u64() == Some(5));
    assert_eq!(v["heartbeats"].as_u64(), Some(0));
    assert_eq!(v["devices"].as_u64(), Some(0));

    let dir = common::temp_dir("allow-file");
    let file = dir.join("ringbeat.toml");
    std::fs::write(&file, "allow = [\"127.0.0.0/8\", \"fd00::/8\"]\n").unwrap();
    let server = Server::start(
        "allow-in",
        &["--cores", "0", "--config", file.to_str().unwrap()],
    );
    let c = client();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.send_to(&heartbeat(81, 1, 0, true), server.addr).unwrap();
    let (n, _) = recv_retry(&c, &mut buf).unwrap();
    assert_eq!(acks_of(&buf[..n])[0].device_id, 81);
    let v = server.wait_stats(5, |v| v["heartbeats"].as_u64() == Some(1));
    assert_eq!(v["disallowed"].as_u64(), Some(0));
}
