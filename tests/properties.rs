//! Property tests of the entry points the fuzzers drive (fuzz/fuzz_targets), from a
//! seeded generator so they run in `cargo test` without nightly: the datagram path,
//! the snapshot loader and the config file reader take any input without panicking,
//! and what they accept is consistent.

mod common;

use common::rng::Rng;
use ringbeat::core::codec::{FrameFields, FLAG_ACK_REQUESTED, MAX_DATAGRAM_BYTES};
use ringbeat::core::memory::Heap;
use ringbeat::core::shard::{CoreConfig, ShardCore};
use ringbeat::core::snapshot::{self, Record};
use ringbeat::core::table::Liveness;

/// Flips, truncates, extends or splices `input` at random.
fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len() as u64) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.truncate(rng.below(input.len() as u64 + 1) as usize),
            2 => {
                let extra = {
                    let n = rng.below(64) as usize;
                    rng.bytes(n)
                };
                input.extend(extra);
            }
            _ => {
                let at = rng.below(input.len() as u64 + 1) as usize;
                let bytes = {
                    let n = rng.below(16) as usize;
                    rng.bytes(n)
                };
                input.splice(at..at, bytes);
            }
        }
    }
    input
}

fn core(shards: u32) -> ShardCore<Heap> {
    ShardCore::new(CoreConfig::basic(0, shards, 256), 0).unwrap()
}

#[test]
fn any_datagram_is_applied_forwarded_or_counted_never_a_panic() {
    let mut rng = Rng(1);
    let mut c = core(2);
    let mut acks = [0u8; MAX_DATAGRAM_BYTES];
    let mut datagrams = 0u64;
    for i in 0..20_000u64 {
        let frames = 1 + rng.below(8);
        let mut valid = Vec::new();
        for _ in 0..frames {
            let mut f = FrameFields::heartbeat(
                1 + rng.below(300),
                rng.next() as u32,
                rng.below(30) as u16,
                0,
            );
            if rng.below(2) == 0 {
                f.flags = FLAG_ACK_REQUESTED;
            }
            valid.extend_from_slice(&f.to_bytes());
        }
        let dgram = match rng.below(3) {
            0 => valid,
            1 => mutate(&mut rng, valid),
            _ => {
                let n = rng.below(2_200) as usize;
                rng.bytes(n)
            }
        };
        let n = c.ingest_datagram(&dgram, i, &mut acks, |_, _, _| true);
        datagrams += 1;
        assert!(n.is_multiple_of(32) && n <= dgram.len().min(MAX_DATAGRAM_BYTES));
        c.step(i, 1 + rng.below(64) as usize);
        let _ = c.drain_events().count();
    }
    c.advance(1 << 20);
    let s = *c.stats();
    assert_eq!(s.datagrams, datagrams);
    assert_eq!(s.frames_valid, s.heartbeats + s.forwarded + s.table_full);
    assert_eq!(s.online + s.late + s.offline, s.devices);
    assert!(s.malformed_total() > 0 && s.heartbeats > 0 && s.forwarded > 0);
}

fn records(rng: &mut Rng, n: usize) -> Vec<Record> {
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < n {
        ids.insert(1 + rng.below(1 << 40));
    }
    ids.into_iter()
        .map(|id| Record {
            device_id: id,
            last_seen_unix_ms: rng.next() >> 20,
            epoch: rng.next() as u32,
            last_seq: rng.next() as u32,
            lost: rng.next() as u32,
            interval_ds: 1 + rng.below(65_000) as u16,
            status: rng.next() as u16,
            state: [Liveness::Online, Liveness::Late, Liveness::Offline][rng.below(3) as usize],
            replay: None,
        })
        .collect()
}

#[test]
fn any_snapshot_bytes_are_refused_or_round_trip_never_a_panic() {
    let mut rng = Rng(2);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let n = rng.below(40) as usize;
        let rs = records(&mut rng, n);
        let good = snapshot::encode(rng.next() >> 20, &rs);
        assert_eq!(snapshot::decode(&good).unwrap().records, rs);
        let bytes = match rng.below(3) {
            0 => good,
            1 => mutate(&mut rng, good),
            _ => {
                let n = rng.below(400) as usize;
                rng.bytes(n)
            }
        };
        match snapshot::decode(&bytes) {
            Ok(s) => {
                accepted += 1;
                assert_eq!(snapshot::encode(s.created_unix_ms, &s.records), bytes);
                let mut c = core(1);
                let restored = c.restore(&s.records, 5);
                assert_eq!(restored + c.stats().table_full, s.records.len() as u64);
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        accepted > 1_000 && refused > 1_000,
        "{accepted} / {refused}"
    );
}

#[test]
fn any_config_text_is_refused_with_a_reason_or_validated_never_a_panic() {
    let mut rng = Rng(3);
    let keys = [
        "listen",
        "cores",
        "rcvbuf",
        "tick-ms",
        "tick_ms",
        "late-after",
        "offline-after",
        "max-devices",
        "huge-pages",
        "wait-us",
        "engine",
        "snapshot-interval",
        "bogus",
        "config",
    ];
    let values = [
        "\"127.0.0.1:7979\"",
        "\"0\"",
        "\"4M\"",
        "4194304",
        "5",
        "1.5",
        "-1",
        "true",
        "false",
        "\"epoll\"",
        "[1, 2]",
        "{ a = 1 }",
        "\"\"",
        "1e99",
    ];
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3_000 {
        let mut text = String::from("cores = \"0\"\n");
        for _ in 0..rng.below(5) {
            let k = keys[rng.below(keys.len() as u64) as usize];
            let v = values[rng.below(values.len() as u64) as usize];
            text.push_str(&format!("{k} = {v}\n"));
        }
        let text = if rng.below(4) == 0 {
            String::from_utf8_lossy(&mutate(&mut rng, text.into_bytes())).into_owned()
        } else {
            text
        };
        match ringbeat::config::check_toml(&text) {
            Ok(_) => ok += 1,
            Err(reason) => {
                refused += 1;
                assert!(!reason.is_empty());
            }
        }
    }
    assert!(ok > 100 && refused > 100, "{ok} / {refused}");
}

/// A stream of frames (some asking for acks, some malformed but in step, at most one
/// with a bad magic) cut at random points: the stream decoder applies, acks and counts
/// exactly what the same frames sent one per datagram do, up to the bad magic, and
/// nothing after it.
#[test]
fn a_stream_cut_anywhere_is_the_same_as_its_frames_one_by_one() {
    let mut rng = Rng(7);
    for round in 0..300u64 {
        let n = 1 + rng.below(200) as usize;
        let bad_magic_at = rng.chance(300).then(|| rng.below(n as u64) as usize);
        let mut bytes = Vec::with_capacity(n * 32);
        for i in 0..n {
            let mut f = FrameFields::heartbeat(1 + rng.below(300), i as u32, 10, round);
            if rng.below(2) == 0 {
                f.flags = FLAG_ACK_REQUESTED;
            }
            let mut b = f.to_bytes();
            match rng.below(20) {
                0 => b[4] = 9,         // bad version: skipped, in step
                1 => b[8..16].fill(0), // zero device id: skipped
                _ => {}
            }
            if bad_magic_at == Some(i) {
                b[1] ^= 0xFF;
            }
            bytes.extend_from_slice(&b);
        }
        // The reference: frames up to the bad magic (included) as one-frame datagrams.
        let mut reference = core(2);
        let mut expected_acks = Vec::new();
        let mut acks = [0u8; MAX_DATAGRAM_BYTES];
        let upto = bad_magic_at.map_or(n, |k| k + 1);
        for frame in bytes.chunks(32).take(upto) {
            let len = reference.ingest_datagram(frame, 1, &mut acks, |_, _, _| true);
            expected_acks.extend_from_slice(&acks[..len]);
        }
        reference.flush();

        let mut c = core(2);
        let mut decoder = ringbeat::core::stream::StreamDecoder::default();
        let mut got_acks = Vec::new();
        let mut stopped = false;
        let mut at = 0;
        while at < bytes.len() && !stopped {
            let len = (1 + rng.below(100) as usize).min(bytes.len() - at);
            let fed = c.ingest_stream(
                &mut decoder,
                &bytes[at..at + len],
                1,
                |a| got_acks.extend_from_slice(a),
                |_, _, _| true,
            );
            stopped = fed.stopped;
            at += len;
        }
        c.flush();
        assert_eq!(stopped, bad_magic_at.is_some(), "round {round}");
        assert_eq!(got_acks, expected_acks, "round {round}");
        let (s, r) = (c.stats(), reference.stats());
        assert_eq!(
            (
                s.heartbeats,
                s.forwarded,
                s.frames_valid,
                s.malformed_frames,
                s.devices
            ),
            (
                r.heartbeats,
                r.forwarded,
                r.frames_valid,
                r.malformed_frames,
                r.devices
            ),
            "round {round}"
        );
        assert_eq!(s.tcp_frames as usize, upto);
        assert_eq!(s.datagrams, 0);
    }
}
