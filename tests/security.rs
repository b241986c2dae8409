//! Only a device can keep itself alive: the device registry, honest ack statuses and
//! authenticated (version-2) heartbeats, against the real server binary on loopback.

mod common;

use common::{client, heartbeat, recv_retry, run_ringbeat, Server};
use ringbeat::core::codec::{
    self, decode_ack, decode_ack_v2, Ack, AckV2Error, FrameFields, Key, FLAG_ACK_REQUESTED,
    FRAME_BYTES, FRAME_V2_BYTES,
};
use ringbeat::core::owner::owner;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const KEY_A: Key = *b"0123456789abcdef";
const KEY_B: Key = *b"fedcba9876543210";

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn devices_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = common::temp_dir(name).join("devices.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-shard server with a devices file of `text` (named `name`, as its temp dir).
fn serve_listed(name: &str, text: &str) -> (Server, std::path::PathBuf) {
    serve_listed_with(name, text, &[])
}

/// As `serve_listed`, with more flags.
fn serve_listed_with(name: &str, text: &str, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let file = devices_file(name, text);
    let mut args = vec!["--cores", "0", "--devices-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(name, &args);
    (server, file)
}

/// A version-2 heartbeat asking for an ack, tagged with `key`.
fn v2(device_id: u64, boot: u32, seq: u32, key: &Key) -> [u8; FRAME_V2_BYTES] {
    let mut f = FrameFields::heartbeat(device_id, seq, 10, 0x5EED_0000 + seq as u64);
    f.flags = FLAG_ACK_REQUESTED;
    let mut out = [0u8; FRAME_V2_BYTES];
    codec::encode_v2(&f, boot, key, &mut out);
    out
}

/// Sends one datagram and returns the ack datagram.
fn exchange(c: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Vec<u8> {
    c.send_to(datagram, to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = recv_retry(c, &mut buf).expect("an ack");
    buf[..n].to_vec()
}

fn v1_acks(datagram: &[u8]) -> Vec<Ack> {
    datagram
        .chunks(FRAME_BYTES)
        .map(|c| decode_ack(c.try_into().unwrap()).expect("a version-1 ack"))
        .collect()
}

/// The status of a version-2 ack, its tag checked with `key`.
fn v2_status(ack: &[u8], key: &Key) -> u16 {
    let (a, _) = decode_ack_v2(ack.try_into().unwrap(), key).expect("an authentic ack");
    a.status
}

/// A flood of random ids changes nothing when a registry is given: each is refused
/// with status 2 before it takes a slot, and a registered device is still taken.
#[test]
fn unknown_ids_under_a_flood_take_no_slot_and_are_told_so() {
    let file = devices_file(
        "registry-flood",
        "# three devices\n4242\n4243 interval=2s\n4244\n",
    );
    let server = Server::start(
        "registry-flood",
        &[
            "--cores",
            "0",
            "--max-devices",
            "100",
            "--devices-file",
            file.to_str().unwrap(),
        ],
    );
    let c = client();
    let mut rng = common::rng::Rng(7);
    let mut refused = 0;
    for _ in 0..300 {
        let frames: Vec<u8> = (0..32)
            .flat_map(|_| heartbeat(rng.next() | 1 << 40, 1, 10, true))
            .collect();
        let acks = v1_acks(&exchange(&c, server.addr, &frames));
        assert_eq!(acks.len(), 32);
        for a in acks {
            assert_eq!(
                a.status,
                codec::ACK_UNKNOWN_DEVICE,
                "device {}",
                a.device_id
            );
            refused += 1;
        }
    }
    let acks = v1_acks(&exchange(
        &c,
        server.addr,
        &[heartbeat(4242, 1, 10, true), heartbeat(4243, 1, 0, true)].concat(),
    ));
    assert_eq!(acks[0].status, codec::ACK_ACCEPTED);
    assert_eq!(acks[1].status, codec::ACK_ACCEPTED);
    assert_eq!(
        acks[1].interval_ds, 20,
        "the registry's interval is the expected one"
    );
    let v = server.wait_stats(5, |v| v["heartbeats"] == 2);
    assert_eq!(v["unknown_device"], refused);
    assert_eq!(v["devices"], 2, "refused ids took no slot");
    assert_eq!(v["table_full"], 0);
    wait_log(&server, |l| {
        l.contains("refused heartbeats")
            && l.contains("unknown_device")
            && l.contains("--devices-file")
    });
}

/// Waits (up to 5 s) for a server log line that `pred` accepts.
fn wait_log(server: &Server, pred: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        seen.extend(server.stderr_so_far());
        if seen.iter().any(|l| pred(l)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no such log line in {seen:#?}");
}

/// Without a registry, a full table refuses new devices with status 1, and exactly the
/// devices acked with status 0 are tracked.
#[test]
fn a_full_table_says_so_in_the_ack() {
    let server = Server::start("table-full-ack", &["--cores", "0", "--max-devices", "10"]);
    let c = client();
    let mut accepted = Vec::new();
    let mut full = 0;
    for id in 1..=40u64 {
        let a = v1_acks(&exchange(&c, server.addr, &heartbeat(id, 1, 10, true)))[0];
        match a.status {
            codec::ACK_ACCEPTED => accepted.push(id),
            codec::ACK_TABLE_FULL => full += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(accepted.len() >= 10 && full > 0, "{accepted:?}");
    // A device already tracked is still accepted on a full table.
    let a = v1_acks(&exchange(
        &c,
        server.addr,
        &heartbeat(accepted[0], 2, 10, true),
    ))[0];
    assert_eq!(a.status, codec::ACK_ACCEPTED);
    let v = server.wait_stats(5, |v| v["heartbeats"] == accepted.len() as u64 + 1);
    assert_eq!(v["devices"], accepted.len() as u64);
    assert_eq!(v["table_full"], full);
}

/// Version 2: a right tag is taken and answered with an authentic ack; a spoofed tag, a
/// replayed counter, a version-1 frame from a keyed device and a version-2 frame from an
/// unknown one are each refused with their status and counted; a device that restarts
/// with a higher boot counter starts a new session.
#[test]
fn authenticated_heartbeats_refuse_spoofs_and_replays() {
    let (server, _) = serve_listed(
        "auth",
        &format!(
            "10 key={}\n11 key={} interval=5s\n12\n",
            hex(&KEY_A),
            hex(&KEY_B)
        ),
    );
    let c = client();
    let at = server.addr;

    let ack = exchange(&c, at, &v2(10, 1, 1, &KEY_A));
    assert_eq!(ack.len(), FRAME_V2_BYTES, "a version-2 ack");
    assert_eq!(v2_status(&ack, &KEY_A), codec::ACK_ACCEPTED);
    assert_eq!(
        decode_ack_v2(ack.as_slice().try_into().unwrap(), &KEY_B).unwrap_err(),
        AckV2Error::BadTag,
        "the ack is tagged with the device's key"
    );

    // Spoofed: device 10's frame tagged with device 11's key.
    let ack = exchange(&c, at, &v2(10, 1, 2, &KEY_B));
    assert_eq!(v2_status(&ack, &KEY_A), codec::ACK_AUTH_FAILED);
    // One changed byte after tagging.
    let mut tampered = v2(10, 1, 3, &KEY_A);
    tampered[20] ^= 1;
    let ack = exchange(&c, at, &tampered);
    assert_eq!(v2_status(&ack, &KEY_A), codec::ACK_AUTH_FAILED);

    // Replayed: the very first frame again.
    let ack = exchange(&c, at, &v2(10, 1, 1, &KEY_A));
    assert_eq!(v2_status(&ack, &KEY_A), codec::ACK_REPLAYED);
    // Ahead, then one reordered inside the window, then that one again.
    assert_eq!(
        v2_status(&exchange(&c, at, &v2(10, 1, 9, &KEY_A)), &KEY_A),
        0
    );
    assert_eq!(
        v2_status(&exchange(&c, at, &v2(10, 1, 5, &KEY_A)), &KEY_A),
        0
    );
    assert_eq!(
        v2_status(&exchange(&c, at, &v2(10, 1, 5, &KEY_A)), &KEY_A),
        codec::ACK_REPLAYED
    );
    // A restart: boot 2 with seq 1 is ahead of boot 1's seq 9.
    assert_eq!(
        v2_status(&exchange(&c, at, &v2(10, 2, 1, &KEY_A)), &KEY_A),
        0
    );

    // Version 1 from a device with a key: refused, it must authenticate. The ack
    // carries the period the devices file gives it (5 s), not the frame's (1 s).
    let a = v1_acks(&exchange(&c, at, &heartbeat(11, 1, 10, true)))[0];
    assert_eq!(a.status, codec::ACK_AUTH_REQUIRED);
    assert_eq!(a.interval_ds, 50);
    // Version 1 from a registered device without a key: taken.
    let a = v1_acks(&exchange(&c, at, &heartbeat(12, 1, 10, true)))[0];
    assert_eq!(a.status, codec::ACK_ACCEPTED);
    // Version 2 from an unknown device: status 2, with no tag (no key to make one).
    let ack = exchange(&c, at, &v2(99, 1, 1, &KEY_A));
    assert_eq!(&ack[48..], &[0u8; 16]);
    assert_eq!(
        u16::from_le_bytes([ack[20], ack[21]]),
        codec::ACK_UNKNOWN_DEVICE
    );

    // Versions mixed in one datagram, each acked in its own version, in order.
    let mixed = [
        heartbeat(12, 2, 10, true).as_slice(),
        &v2(11, 1, 1, &KEY_B),
        &heartbeat(12, 3, 10, true),
    ]
    .concat();
    let ack = exchange(&c, at, &mixed);
    assert_eq!(ack.len(), 32 + 64 + 32);
    assert_eq!(v1_acks(&ack[..32])[0].seq, 2);
    assert_eq!(v2_status(&ack[32..96], &KEY_B), 0);
    assert_eq!(v1_acks(&ack[96..])[0].seq, 3);

    let v = server.wait_stats(5, |v| v["heartbeats"] == 8);
    assert_eq!(
        v["authenticated"], 7,
        "tags that were right, replays included"
    );
    assert_eq!(v["auth_failed"], 2, "a spoofed and a tampered tag");
    assert_eq!(v["replayed"], 2);
    assert_eq!(v["auth_required"], 1);
    assert_eq!(v["unknown_device"], 1);
    assert_eq!(v["devices"], 3);
}

/// With two shards, a gateway's datagram holds frames of devices the other shard owns:
/// their acks carry the owner's answer, not the receiving shard's guess. A full table
/// on the owner answers 1 for its new devices (status 0 for those it still took).
#[test]
fn a_handed_heartbeat_is_answered_with_its_owners_full_table() {
    let server = Server::start(
        "handed-table-full",
        &["--cores", "0,1", "--max-devices", "20"],
    );
    // The first frame steers the datagram to its owner; the other 30 belong to the
    // other shard, which holds about 10 devices.
    let steer = owner(1, 2);
    let other = 1 - steer as usize;
    let foreign: Vec<u64> = (2..).filter(|&d| owner(d, 2) != steer).take(30).collect();
    let batch: Vec<u8> = std::iter::once(1)
        .chain(foreign)
        .flat_map(|d| heartbeat(d, 1, 100, true))
        .collect();
    let c = client();
    let statuses: Vec<u16> = v1_acks(&exchange(&c, server.addr, &batch))
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses.len(), 31);
    assert_eq!(
        statuses[0],
        codec::ACK_ACCEPTED,
        "taken by the receiving shard"
    );
    let taken = statuses[1..].iter().take_while(|&&s| s == 0).count();
    assert!(taken > 0 && taken < 30, "{statuses:?}");
    assert!(
        statuses[1 + taken..]
            .iter()
            .all(|&s| s == codec::ACK_TABLE_FULL),
        "{statuses:?}"
    );
    let v = server.wait_stats(5, |v| v["heartbeats"] == 1 + taken as u64);
    assert_eq!(v["per_shard"][other]["devices"], taken as u64);
    assert_eq!(v["table_full"], 30 - taken as u64);
    assert_eq!(
        (v["forwarded"].as_u64(), v["forward_drops"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(
        v["held_acks"], 30,
        "each handed frame's ack waited for its owner"
    );
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

/// With two shards, a replayed version-2 frame handed to its owner is answered 5 in a
/// version-2 ack tagged anew under the device's key.
#[test]
fn a_handed_replay_is_answered_replayed() {
    let steer = owner(1, 2);
    let keyed = (2..).find(|&d| owner(d, 2) != steer).unwrap();
    let file = devices_file(
        "handed-replay",
        &format!(
            "1
{keyed} key={}
",
            hex(&KEY_A)
        ),
    );
    let server = Server::start(
        "handed-replay",
        &["--cores", "0,1", "--devices-file", file.to_str().unwrap()],
    );
    let c = client();
    let batch = |seq: u32| {
        [
            heartbeat(1, seq, 10, true).as_slice(),
            &v2(keyed, 1, seq, &KEY_A),
        ]
        .concat()
    };
    let statuses = |ack: &[u8]| (v1_acks(&ack[..32])[0].status, v2_status(&ack[32..], &KEY_A));
    assert_eq!(statuses(&exchange(&c, server.addr, &batch(1))), (0, 0));
    assert_eq!(
        statuses(&exchange(&c, server.addr, &batch(1))),
        (0, codec::ACK_REPLAYED),
        "the owner's window refused the copy"
    );
    assert_eq!(statuses(&exchange(&c, server.addr, &batch(2))), (0, 0));
    let v = server.wait_stats(5, |v| v["heartbeats"] == 5);
    assert_eq!(v["replayed"], 1);
    assert_eq!(v["forwarded"], 3);
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

/// Over TCP with two shards, the frames of devices the accepting shard does not own
/// are answered with their owner's decision, in order: each owner takes new devices
/// until its table is full and refuses the rest (1), and a replayed version-2 frame is
/// answered 5 whichever shard owns its device.
#[test]
fn tcp_handed_heartbeats_are_answered_with_their_owners_verdicts() {
    let read_acks = |s: &mut TcpStream, bytes: usize| {
        let mut buf = vec![0u8; bytes];
        s.read_exact(&mut buf).unwrap();
        buf
    };
    let server = Server::start(
        "tcp-handed-table-full",
        &["--cores", "0,1", "--max-devices", "20"],
    );
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // 40 new devices, 20 of each shard, interleaved; about 10 fit in each table.
    let ids: Vec<u64> = (1..=40).collect();
    let stream: Vec<u8> = ids
        .iter()
        .flat_map(|&d| heartbeat(d, 1, 100, true))
        .collect();
    s.write_all(&stream).unwrap();
    let acks = v1_acks(&read_acks(&mut s, 40 * FRAME_BYTES));
    assert_eq!(
        acks.iter().map(|a| a.device_id).collect::<Vec<_>>(),
        ids,
        "in order"
    );
    for shard in 0..2 {
        let statuses: Vec<u16> = acks
            .iter()
            .filter(|a| owner(a.device_id, 2) == shard)
            .map(|a| a.status)
            .collect();
        let taken = statuses.iter().take_while(|&&st| st == 0).count();
        assert!(
            taken > 0
                && taken < statuses.len()
                && statuses[taken..]
                    .iter()
                    .all(|&st| st == codec::ACK_TABLE_FULL),
            "shard {shard}: {statuses:?}"
        );
    }
    let refused = acks.iter().filter(|a| a.status != 0).count() as u64;
    let v = server.wait_stats(5, |v| v["heartbeats"] == 40 - refused);
    assert_eq!(v["table_full"], refused);
    assert!(v["forwarded"].as_u64().unwrap() > 0);
    assert_eq!(
        v["held_acks"], v["forwarded"],
        "every handed frame asked for an ack"
    );
    drop(s);
    let (status, _, _) = server.terminate();
    assert!(status.success());

    let (a, b) = (
        (1..).find(|&d| owner(d, 2) == 0).unwrap(),
        (1..).find(|&d| owner(d, 2) == 1).unwrap(),
    );
    let file = devices_file(
        "tcp-handed-replay",
        &format!("{a} key={}\n{b} key={}\n", hex(&KEY_A), hex(&KEY_B)),
    );
    let server = Server::start(
        "tcp-handed-replay",
        &["--cores", "0,1", "--devices-file", file.to_str().unwrap()],
    );
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let round = |s: &mut TcpStream, seq: u32| {
        s.write_all(&[v2(a, 1, seq, &KEY_A), v2(b, 1, seq, &KEY_B)].concat())
            .unwrap();
        let acks = read_acks(s, 2 * FRAME_V2_BYTES);
        (
            v2_status(&acks[..FRAME_V2_BYTES], &KEY_A),
            v2_status(&acks[FRAME_V2_BYTES..], &KEY_B),
        )
    };
    assert_eq!(round(&mut s, 1), (0, 0));
    assert_eq!(
        round(&mut s, 1),
        (codec::ACK_REPLAYED, codec::ACK_REPLAYED),
        "each owner's window refused its copy"
    );
    assert_eq!(round(&mut s, 2), (0, 0));
    let v = server.wait_stats(5, |v| v["heartbeats"] == 4);
    assert_eq!(v["replayed"], 2);
    drop(s);
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

/// `--require-auth` refuses version 1 from every device, and the devices file must give
/// every device a key.
#[test]
fn require_auth_refuses_version_one() {
    let (server, _file) = serve_listed_with(
        "require-auth",
        &format!("10 key={}\n", hex(&KEY_A)),
        &["--require-auth"],
    );
    let c = client();
    let a = v1_acks(&exchange(&c, server.addr, &heartbeat(10, 1, 10, true)))[0];
    assert_eq!(a.status, codec::ACK_AUTH_REQUIRED);
    assert_eq!(
        v2_status(&exchange(&c, server.addr, &v2(10, 0, 1, &KEY_A)), &KEY_A),
        0
    );

    let file = devices_file(
        "require-auth-nokey",
        &format!("10 key={}\n\n11\n", hex(&KEY_A)),
    );
    let (ok, _, err) = run_ringbeat(
        &[
            "check",
            "--devices-file",
            file.to_str().unwrap(),
            "--require-auth",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("line 3: device 11 has no key"), "{err}");
    let (ok, _, err) = run_ringbeat(&["check", "--require-auth"], &[]);
    assert!(!ok);
    assert!(err.contains("needs --devices-file"), "{err}");
}

/// A malformed devices file is refused at start with its line; one that lists more
/// devices than the table holds is refused too.
#[test]
fn a_malformed_devices_file_is_refused_with_its_line() {
    let file = devices_file("registry-bad", "1\n2 key=xyz\n");
    let (ok, _, err) = run_ringbeat(&["serve", "--devices-file", file.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("devices.txt line 2: key `xyz`"), "{err}");
    let file = devices_file("registry-big", "1\n2\n3\n");
    let (ok, _, err) = run_ringbeat(
        &[
            "check",
            "--devices-file",
            file.to_str().unwrap(),
            "--max-devices",
            "2",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("raise --max-devices"), "{err}");
}

/// SIGHUP reloads the devices file: a device it no longer lists is forgotten with an
/// event and refused afterwards, a new one is taken; a malformed file is refused and the
/// one in use stays.
#[test]
fn sighup_reloads_the_registry_and_forgets_removed_devices() {
    let (server, file) = serve_listed("registry-reload", "1\n2\n");
    let c = client();
    for id in [1, 2, 3] {
        exchange(&c, server.addr, &heartbeat(id, 1, 10, true));
    }
    server.wait_stats(5, |v| v["heartbeats"] == 2 && v["unknown_device"] == 1);

    std::fs::write(&file, "2\n3\n").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_stats(5, |v| v["forgotten"] == 1);
    let statuses: Vec<u16> = [1, 2, 3]
        .iter()
        .map(|&id| v1_acks(&exchange(&c, server.addr, &heartbeat(id, 2, 10, true)))[0].status)
        .collect();
    assert_eq!(statuses, [codec::ACK_UNKNOWN_DEVICE, 0, 0]);

    std::fs::write(&file, "2\n3\n0\n").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&server, |l| {
        l.contains("not reloaded") && l.contains("line 3")
    });
    let a = v1_acks(&exchange(&c, server.addr, &heartbeat(3, 3, 10, true)))[0];
    assert_eq!(a.status, 0, "the registry in use stays after a bad reload");

    let (_, stats, events) = server.terminate();
    assert_eq!(stats["forgotten"], 1);
    let events = events.join("\n");
    let forgotten: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("\"to\":\"forgotten\""))
        .collect();
    assert_eq!(forgotten.len(), 1, "{events}");
    assert!(
        forgotten[0].contains("\"device_id\":1,"),
        "{}",
        forgotten[0]
    );
}

/// The server's resident memory, in MiB.
fn rss_mib(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// A devices file costs its registry's memory once: after a load the file's text and
/// the parse's scratch are given back, and a reload frees the registry it replaces (a
/// half a million devices with keys: a 32 MiB registry, from a 22 MB file).
#[test]
fn a_devices_file_costs_its_registry_once_across_loads_and_reloads() {
    let text: String = (1..=500_000u64)
        .map(|i| format!("{i} key={}\n", hex(&KEY_A)))
        .collect();
    let (server, _file) = serve_listed_with("registry-memory", &text, &["--max-devices", "600000"]);
    let registry_mib = 32.0;
    // Besides the registry: the server's own few MiB, its stats and buffers, the
    // registry's per-device key checks (2 MiB). The text and the scratch were ~46 MiB.
    let bound = registry_mib + 24.0;
    let started = rss_mib(&server);
    assert!(
        started < bound,
        "{started:.0} MiB resident after the load (bound {bound})"
    );
    let c = client();
    let ack = exchange(&c, server.addr, &v2(7, 1, 1, &KEY_A));
    assert_eq!(v2_status(&ack, &KEY_A), 0);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&server, |l| l.contains("reloaded the devices file"));
    // The shard takes the new registry at its next publish; the old one goes then.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut now = rss_mib(&server);
    while now >= bound && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = rss_mib(&server);
    }
    assert!(
        now < bound,
        "{now:.0} MiB resident after a reload (bound {bound}, {started:.0} before)"
    );
    // The device's replay window came along: its first counter is a replay still.
    let ack = exchange(&c, server.addr, &v2(7, 1, 1, &KEY_A));
    assert_eq!(v2_status(&ack, &KEY_A), codec::ACK_REPLAYED);
    server.terminate();
}

/// Over TCP, version-2 frames cut at any byte are put together again; acks come back in
/// order and in each frame's version; a spoofed one is refused without closing.
#[test]
fn tcp_carries_version_two_frames_split_anywhere() {
    let (server, _) = serve_listed("auth-tcp", &format!("10 key={}\n12\n", hex(&KEY_A)));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let stream = [
        v2(10, 1, 1, &KEY_A).as_slice(),
        &heartbeat(12, 1, 10, true),
        &v2(10, 1, 2, &KEY_B),
        &v2(10, 1, 3, &KEY_A),
    ]
    .concat();
    for piece in stream.chunks(7) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut acks = vec![0u8; 64 + 32 + 64 + 64];
    s.read_exact(&mut acks).unwrap();
    assert_eq!(v2_status(&acks[..64], &KEY_A), 0);
    assert_eq!(v1_acks(&acks[64..96])[0].status, 0);
    assert_eq!(v2_status(&acks[96..160], &KEY_A), codec::ACK_AUTH_FAILED);
    assert_eq!(v2_status(&acks[160..], &KEY_A), 0);
    let v = server.wait_stats(5, |v| v["heartbeats"] == 3);
    assert_eq!(v["auth_failed"], 1);
    assert_eq!(
        v["tcp_open"], 1,
        "a refused frame does not close the connection"
    );
}

/// Runs scripts/rbclient.py (an independent client written from PROTOCOL.md in Python,
/// with its own SipHash) for device 42 with `KEY_A`; its output.
fn python_client(server: &Server, extra: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rbclient.py"))
        .arg(server.addr.to_string())
        .args(["--device", "42", "--key", &hex(&KEY_A)])
        .args(extra)
        .output()
        .expect("python3 runs scripts/rbclient.py");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// An independent client is answered byte for byte over UDP: its version-2 heartbeat is
/// taken and the ack's tag checks out; a replay is refused.
#[test]
fn an_independent_client_speaks_version_two() {
    let (server, _) = serve_listed("auth-python", &format!("42 key={}\n", hex(&KEY_A)));
    let out = python_client(&server, &["--boot", "1", "--seq", "1"]);
    assert!(out.contains("status 0 (accepted)"), "{out}");
    let out = python_client(&server, &["--boot", "1", "--seq", "1"]);
    assert!(out.contains("status 5 (replayed)"), "{out}");
    server.wait_stats(5, |v| v["heartbeats"] == 1 && v["replayed"] == 1);
}

/// The same client over TCP.
#[test]
fn tcp_an_independent_client_speaks_version_two() {
    let (server, _) = serve_listed("auth-python-tcp", &format!("42 key={}\n", hex(&KEY_A)));
    let out = python_client(&server, &["--boot", "1", "--seq", "2", "--tcp"]);
    assert!(out.contains("status 0 (accepted)"), "{out}");
    let out = python_client(&server, &["--boot", "1", "--seq", "2", "--tcp"]);
    assert!(out.contains("status 5 (replayed)"), "{out}");
    server.wait_stats(5, |v| v["heartbeats"] == 1 && v["replayed"] == 1);
}

/// The replay windows survive a restart through the snapshot: a heartbeat taken before
/// it is refused after it; a device whose key changed meanwhile starts a new window.
#[test]
fn a_restart_keeps_the_replay_windows() {
    let snap = common::temp_dir("auth-restart-snap").join("devices.snap");
    let before = devices_file(
        "auth-restart-1",
        &format!("10 key={}\n11 key={}\n", hex(&KEY_A), hex(&KEY_B)),
    );
    let serve = |name: &str, file: &std::path::Path| {
        Server::start(
            name,
            &[
                "--cores",
                "0",
                "--devices-file",
                file.to_str().unwrap(),
                "--snapshot",
                snap.to_str().unwrap(),
            ],
        )
    };
    let c = client();
    let s = serve("auth-restart-run1", &before);
    for seq in [1, 2, 3, 5] {
        let ack = exchange(&c, s.addr, &v2(10, 1, seq, &KEY_A));
        assert_eq!(v2_status(&ack, &KEY_A), 0);
    }
    assert_eq!(
        v2_status(&exchange(&c, s.addr, &v2(11, 1, 7, &KEY_B)), &KEY_B),
        0
    );
    let (status, _, _) = s.terminate();
    assert!(status.success());

    // Device 11 is given a new key while the server is down.
    let after = devices_file(
        "auth-restart-2",
        &format!("10 key={}\n11 key={}\n", hex(&KEY_A), hex(&KEY_A)),
    );
    let s = serve("auth-restart-run2", &after);
    let status_of = |device: u64, seq: u32| {
        v2_status(&exchange(&c, s.addr, &v2(device, 1, seq, &KEY_A)), &KEY_A)
    };
    // Taken before the restart: refused after it, the highest and one inside the
    // window alike; the one never taken (4) and the next (6) are taken.
    assert_eq!(status_of(10, 5), codec::ACK_REPLAYED);
    assert_eq!(status_of(10, 2), codec::ACK_REPLAYED);
    assert_eq!(status_of(10, 4), 0);
    assert_eq!(status_of(10, 6), 0);
    // The new key's device starts afresh: a counter below the old key's is taken.
    assert_eq!(status_of(11, 1), 0);
    let v = s.wait_stats(5, |v| v["replayed"] == 2);
    assert_eq!(v["devices"], 2);
    assert_eq!(v["authenticated"], 5);
}
