//! The steady state allocates nothing: once devices are known, receiving, acking,
//! handing frames between shards and running liveness must not touch the allocator.
//! A counting global allocator watches the whole process while only the server and
//! this test's (allocation-free) sending loop run.

use ringbeat::core::codec::{FrameFields, FLAG_ACK_REQUESTED};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends one 8-frame gateway datagram per call, mixing devices of both shards, every
/// other datagram asking for acks on its frames. Allocation-free: stack buffers only.
fn send_round(sock: &UdpSocket, to: std::net::SocketAddr, round: u32, devices: u64) {
    let mut dgram = [0u8; 8 * 32];
    for first in (1..=devices).step_by(8) {
        for k in 0..8u64 {
            let mut f = FrameFields::heartbeat(first + k, round, 2, 0);
            if first % 16 == 1 {
                f.flags = FLAG_ACK_REQUESTED;
            }
            let out: &mut [u8; 32] = (&mut dgram[k as usize * 32..(k as usize + 1) * 32])
                .try_into()
                .unwrap();
            f.encode(out);
        }
        sock.send_to(&dgram, to).unwrap();
    }
}

#[test]
fn steady_state_allocates_nothing() {
    let mut flags = vec![
        "--listen=127.0.0.1:0".to_string(),
        "--cores=0,1".into(),
        "--max-devices=100000".into(),
        "--tick-ms=5".into(),
    ];
    if let Ok(engine) = std::env::var("RINGBEAT_TEST_ENGINE") {
        flags.push(format!("--engine={engine}"));
    }
    let config = ringbeat::config::ServeArgs::parse_flags(flags)
        .and_then(|a| a.into_config())
        .unwrap();
    let mut server = ringbeat::engine::start(&config)
        .expect("start the server (needs io_uring: `ringbeat check`)");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.listen;
    let devices = 4_000u64;
    // Warm-up: every device known, every code path taken once.
    for round in 1..=3 {
        send_round(&sock, to, round, devices);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for round in 4..=15 {
        send_round(&sock, to, round, devices);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // liveness ticks, acks, hand-offs
    let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
    server.stop();
    let total = ringbeat::core::stats::ShardStats::total(&server.snapshot());
    assert_eq!(total.heartbeats, devices * 15, "every heartbeat applied");
    assert!(
        total.forwarded > 0 && total.acks_sent > 0,
        "hand-offs and acks were exercised"
    );
    assert_eq!(during, 0, "allocations in the steady state");
}
