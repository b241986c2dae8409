//! TCP conformance: every PROTOCOL-v1 TCP rule against the real server, for each engine
//! that serves TCP (io_uring and epoll), over real loopback connections.

mod common;

use common::{heartbeat, Server};
use ringbeat::core::codec::{self, FRAME_BYTES};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const ENGINES: [&str; 2] = ["uring", "epoll"];

fn start(name: &str, engine: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--engine", engine, "--cores", "0"];
    args.extend_from_slice(extra);
    Server::start(&format!("tcp-{name}-{engine}"), &args)
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr).expect("TCP connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` acks and decodes them.
fn read_acks(s: &mut TcpStream, n: usize) -> Vec<codec::Ack> {
    let mut buf = vec![0u8; n * FRAME_BYTES];
    s.read_exact(&mut buf).expect("acks");
    buf.as_chunks::<FRAME_BYTES>()
        .0
        .iter()
        .map(|f| codec::decode_ack(f).expect("a valid ack"))
        .collect()
}

/// The peer's end of the stream: Ok(()) once EOF (or a reset) is seen with no more
/// bytes.
fn expect_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Frames split at random byte positions (down to single bytes) and many frames per
/// write: every frame applied once, every ack in order with its echoed fields.
#[test]
fn frames_split_anywhere_are_applied_and_acked_in_order() {
    for engine in ENGINES {
        let server = start("split", engine, &[]);
        let mut s = connect(&server);
        let total = 3_000u32;
        let stream: Vec<u8> = (0..total)
            .flat_map(|i| heartbeat(1 + (i as u64 % 500), i, 10, i % 3 != 0))
            .collect();
        let acked: Vec<u32> = (0..total).filter(|i| i % 3 != 0).collect();
        let mut rng = common::rng::Rng(42);
        let mut at = 0;
        while at < stream.len() {
            let len = match rng.below(3) {
                0 => 1 + rng.below(4) as usize,
                1 => 1 + rng.below(64) as usize,
                _ => 1 + rng.below(4096) as usize,
            }
            .min(stream.len() - at);
            s.write_all(&stream[at..at + len]).unwrap();
            at += len;
            if rng.below(8) == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let acks = read_acks(&mut s, acked.len());
        for (a, &seq) in acks.iter().zip(&acked) {
            assert_eq!(a.seq, seq, "{engine}: acks out of order");
            assert_eq!(a.device_id, 1 + (seq as u64 % 500));
            assert_eq!(a.sent_ns, 0xABCD_0000_0000_0000 | seq as u64);
            assert_eq!((a.status, a.interval_ds), (0, 10));
        }
        let v = server.wait_stats(5, |v| n(v, "heartbeats") == total as u64);
        assert_eq!(n(&v, "tcp_frames"), total as u64);
        assert_eq!(n(&v, "acks_sent"), acked.len() as u64);
        assert!(n(&v, "tcp_split_frames") > 0, "{engine}: {v}");
        assert_eq!(n(&v, "devices"), 500);
        assert_eq!(n(&v, "tcp_open"), 1);
    }
}

/// A bad magic: the frames before it are applied and acked, then the connection is
/// closed and counted; nothing after it is applied.
#[test]
fn a_bad_magic_closes_the_connection_after_acking_what_came_before() {
    for engine in ENGINES {
        let server = start("magic", engine, &[]);
        let mut s = connect(&server);
        let mut bad = heartbeat(900, 1, 10, true);
        bad[0] = b'X';
        let mut bytes = Vec::new();
        for i in 0..5 {
            bytes.extend_from_slice(&heartbeat(100 + i, 1, 10, true));
        }
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&heartbeat(200, 1, 10, true));
        s.write_all(&bytes).unwrap();
        let acks = read_acks(&mut s, 5);
        assert_eq!(
            acks.iter().map(|a| a.device_id).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
        expect_closed(&mut s);
        let v = server.wait_stats(5, |v| n(v, "tcp_closed_out_of_step") == 1);
        assert_eq!(
            n(&v, "heartbeats"),
            5,
            "{engine}: the frame after the bad magic was applied"
        );
        assert_eq!(v["malformed"]["bad_magic"], 1);
        assert_eq!(n(&v, "tcp_open"), 0);
    }
}

/// Other malformed frames are counted by reason and skipped; the connection stays
/// open and later frames are acked.
#[test]
fn other_malformed_frames_are_skipped_and_the_connection_stays_open() {
    for engine in ENGINES {
        let server = start("malformed", engine, &[]);
        let mut s = connect(&server);
        let mut bad_version = heartbeat(5, 1, 10, true);
        bad_version[4] = 3; // 2 is the authenticated frame (64 bytes)
        let mut bad_kind = heartbeat(5, 2, 10, true);
        bad_kind[6] = 2;
        let zero_id = heartbeat(0, 3, 10, true);
        for f in [bad_version, bad_kind, zero_id, heartbeat(5, 4, 10, true)] {
            s.write_all(&f).unwrap();
        }
        let acks = read_acks(&mut s, 1);
        assert_eq!((acks[0].device_id, acks[0].seq), (5, 4));
        s.write_all(&heartbeat(6, 1, 10, true)).unwrap();
        assert_eq!(read_acks(&mut s, 1)[0].device_id, 6);
        let v = server.wait_stats(5, |v| n(v, "heartbeats") == 2);
        let m = &v["malformed"];
        assert_eq!(
            (
                m["bad_version"].as_u64(),
                m["bad_kind"].as_u64(),
                m["zero_device_id"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(n(&v, "tcp_open"), 1);
        assert_eq!(n(&v, "tcp_closed_out_of_step"), 0);
    }
}

/// A peer closing mid-frame is counted; the partial frame changes nothing.
#[test]
fn a_peer_closing_mid_frame_is_counted_and_nothing_else_happens() {
    for engine in ENGINES {
        let server = start("midframe", engine, &[]);
        let mut s = connect(&server);
        let f = heartbeat(77, 1, 10, true);
        s.write_all(&f).unwrap();
        read_acks(&mut s, 1);
        s.write_all(&heartbeat(78, 1, 10, true)[..20]).unwrap();
        drop(s);
        let v = server.wait_stats(5, |v| n(v, "tcp_closed_peer") == 1);
        assert_eq!(n(&v, "tcp_partial_at_close"), 1);
        assert_eq!(n(&v, "heartbeats"), 1);
        assert_eq!(n(&v, "devices"), 1);
    }
}

/// A device heard over UDP and over TCP is one device.
#[test]
fn a_device_over_udp_and_tcp_is_one_device() {
    for engine in ENGINES {
        let server = start("both", engine, &[]);
        let udp = common::client();
        udp.send_to(&heartbeat(4242, 1, 10, false), server.addr)
            .unwrap();
        let mut s = connect(&server);
        s.write_all(&heartbeat(4242, 2, 10, true)).unwrap();
        assert_eq!(read_acks(&mut s, 1)[0].seq, 2);
        let v = server.wait_stats(5, |v| n(v, "heartbeats") == 2);
        assert_eq!(n(&v, "devices"), 1);
        assert_eq!(n(&v, "duplicates") + n(&v, "lost_heartbeats"), 0);
    }
}

/// Beyond --max-connections new connections are closed at accept and counted; the
/// connections held are served.
#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    for engine in ENGINES {
        let server = start("limit", engine, &["--max-connections", "2"]);
        let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
        server.wait_stats(5, |v| n(v, "tcp_accepted") == 2);
        let mut third = connect(&server);
        expect_closed(&mut third);
        let v = server.wait_stats(5, |v| n(v, "tcp_refused") == 1);
        assert_eq!(n(&v, "tcp_open"), 2);
        for (i, s) in held.iter_mut().enumerate() {
            s.write_all(&heartbeat(10 + i as u64, 1, 10, true)).unwrap();
            assert_eq!(read_acks(s, 1)[0].device_id, 10 + i as u64);
        }
    }
}

/// A connection that completes no frame (a slow-loris sender) is closed after the
/// idle timeout; one that keeps sending is not.
#[test]
fn connections_that_complete_no_frame_are_closed_after_the_idle_timeout() {
    for engine in ENGINES {
        let server = start("idle", engine, &["--tcp-idle-timeout", "1"]);
        let mut loris = connect(&server);
        let mut busy = connect(&server);
        let f = heartbeat(9, 1, 10, false);
        let started = Instant::now();
        let mut seq = 0;
        // The slow sender trickles a byte at a time, never finishing a frame.
        while started.elapsed() < Duration::from_millis(2_600) {
            if seq < 31 {
                let _ = loris.write_all(&f[seq..seq + 1]);
            }
            seq += 1;
            busy.write_all(&heartbeat(10, seq as u32, 10, false))
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        expect_closed(&mut loris);
        let v = server.wait_stats(5, |v| n(v, "tcp_closed_idle") == 1);
        assert_eq!(
            n(&v, "tcp_open"),
            1,
            "{engine}: the busy connection was closed"
        );
        busy.write_all(&heartbeat(10, 1000, 10, true)).unwrap();
        assert_eq!(read_acks(&mut busy, 1)[0].seq, 1000);
    }
}

/// A peer that never reads its acks is stopped (backpressure) and then closed by the
/// idle timeout, counted as an ack backlog; memory stays bounded and another
/// connection is served all along.
#[test]
fn a_peer_that_never_reads_its_acks_does_not_stall_others() {
    for engine in ENGINES {
        let server = start("noread", engine, &["--tcp-idle-timeout", "2"]);
        let mut hog = connect(&server);
        hog.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk: Vec<u8> = (0..1024u32)
            .flat_map(|i| heartbeat(1 + i as u64, i, 10, true))
            .collect();
        let mut other = connect(&server);
        let started = Instant::now();
        let mut sent = 0u64;
        let mut round = 0u32;
        let mut hog_closed = false;
        let mut hog_blocked = false;
        // Write until the hog's socket takes no more (the server stopped reading it),
        // then until the server closes it.
        while started.elapsed() < Duration::from_secs(4) && !hog_closed {
            match hog.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    hog_blocked = true
                }
                Err(e)
                    if e.kind() == ErrorKind::ConnectionReset
                        || e.kind() == ErrorKind::BrokenPipe =>
                {
                    hog_closed = true
                }
                Err(e) => panic!("{e}"),
            }
            round += 1;
            other
                .write_all(&heartbeat(50_000, round, 10, true))
                .unwrap();
            assert_eq!(
                read_acks(&mut other, 1)[0].seq,
                round,
                "{engine}: the other connection stalled"
            );
        }
        // The server stopped reading it (its writes blocked) or closed it (its acks
        // over the queue's bound): either way well past the 512 unread acks that pause
        // it.
        assert!(
            sent > 512 * 32 && (hog_blocked || hog_closed),
            "{engine}: {sent} bytes written"
        );
        // Nothing the server read goes uncounted: every frame read was applied, and
        // each of its acks was written or counted as dropped (once the write in flight
        // when the connection closed has completed).
        let v = server.wait_stats(6, |v| {
            n(v, "tcp_closed_ack_backlog") == 1
                && n(v, "acks_sent") + n(v, "acks_dropped") == n(v, "tcp_frames")
        });
        assert_eq!(n(&v, "tcp_open"), 1);
        assert_eq!(n(&v, "tcp_frames"), n(&v, "heartbeats"));
    }
}

/// SIGTERM applies what was received, writes pending acks and closes connections,
/// within the second.
#[test]
fn sigterm_applies_what_came_acks_it_and_closes_connections() {
    for engine in ENGINES {
        let server = start("sigterm", engine, &[]);
        let mut conns: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
        server.wait_stats(5, |v| n(v, "tcp_accepted") == 8);
        for (i, s) in conns.iter_mut().enumerate() {
            let bytes: Vec<u8> = (0..500u32)
                .flat_map(|q| heartbeat(1 + i as u64 * 1000 + q as u64, q, 10, true))
                .collect();
            s.write_all(&bytes).unwrap();
        }
        let (status, v, _) = server.terminate();
        assert!(status.success());
        assert_eq!(n(&v, "heartbeats"), 4_000, "{engine}: {v}");
        assert_eq!(n(&v, "tcp_closed_at_stop"), 8);
        assert_eq!(n(&v, "acks_sent") + n(&v, "acks_dropped"), 4_000);
        for s in conns.iter_mut() {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert_eq!(got.len() % FRAME_BYTES, 0);
        }
    }
}

/// With two shards, frames for devices the other shard owns are handed over, and the
/// acks still come back in order on the connection.
#[test]
fn two_shards_hand_frames_over_and_keep_ack_order() {
    for engine in ENGINES {
        let server = Server::start(
            &format!("tcp-shards-{engine}"),
            &["--engine", engine, "--cores", "0,1"],
        );
        let mut s = connect(&server);
        let bytes: Vec<u8> = (0..2_000u32)
            .flat_map(|q| heartbeat(1 + q as u64, q, 10, true))
            .collect();
        s.write_all(&bytes).unwrap();
        let acks = read_acks(&mut s, 2_000);
        assert!(acks.iter().enumerate().all(|(i, a)| a.seq == i as u32));
        let v = server.wait_stats(5, |v| n(v, "heartbeats") == 2_000);
        assert!(n(&v, "forwarded") > 0 && n(&v, "forwarded") == n(&v, "forwarded_in"));
        assert_eq!(n(&v, "devices"), 2_000);
    }
}

/// `--no-tcp`: nothing listens on TCP.
#[test]
fn no_tcp_turns_tcp_off() {
    let server = start("off", "uring", &["--no-tcp"]);
    let err = TcpStream::connect(server.addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

/// `--allow`: a connection from outside the allowlist is closed at accept and counted,
/// before any frame of it is read; one from inside is served.
#[test]
fn connections_from_outside_the_allowlist_are_closed_and_counted() {
    for engine in ENGINES {
        let server = start("allow", engine, &["--allow", "10.0.0.0/8"]);
        let mut outside = connect(&server);
        let _ = outside.write_all(&heartbeat(70, 1, 10, true));
        expect_closed(&mut outside);
        let v = server.wait_stats(5, |v| n(v, "tcp_disallowed") == 1);
        assert_eq!((n(&v, "tcp_accepted"), n(&v, "heartbeats")), (0, 0));
        let server = start("allow-in", engine, &["--allow", "127.0.0.0/8"]);
        let mut inside = connect(&server);
        inside.write_all(&heartbeat(71, 1, 10, true)).unwrap();
        assert_eq!(read_acks(&mut inside, 1)[0].device_id, 71);
    }
}
