//! `ringbeat-bench sink`: the cheapest possible receiver. It counts datagrams and
//! frames and acks ACK_REQUESTED frames, nothing else, so running `load` against it
//! shows the generator's own ceiling on this machine. With `busy` it polls without
//! ever sleeping, so its latency is the floor the generator and the kernel set.

use crate::net;
use ringbeat::core::codec::{self, FRAME_BYTES};
use ringbeat::sys::socket::{udp_reuseport, UdpOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct SinkCounters {
    pub datagrams: AtomicU64,
    pub frames: AtomicU64,
    pub acks: AtomicU64,
}

/// Runs one receive loop per CPU in `cpus` until `stop`; returns the bound address
/// through `bound` as soon as the sockets exist.
pub fn run(
    listen: SocketAddr,
    cpus: &[usize],
    duration: Duration,
    busy: bool,
    counters: Arc<SinkCounters>,
    bound: std::sync::mpsc::Sender<SocketAddr>,
) -> anyhow::Result<()> {
    let opts = UdpOptions {
        rcvbuf_bytes: 8 << 20,
        prefilter: false,
    };
    let (first, _) = udp_reuseport(listen, opts)?;
    let addr = ringbeat::sys::socket::local_addr(&first)?;
    let mut sockets = vec![first];
    for _ in 1..cpus.len() {
        sockets.push(udp_reuseport(addr, opts)?.0);
    }
    let _ = bound.send(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = sockets
        .into_iter()
        .zip(cpus.iter().copied())
        .map(|(sock, cpu)| {
            let (stop, c) = (stop.clone(), counters.clone());
            std::thread::spawn(move || {
                let _ = net::pin_to_cpu(cpu);
                let mut bufs = vec![[0u8; 2048]; 64];
                let mut lens = vec![0usize; 64];
                // A zeroed sockaddr_storage for each receive slot.
                let mut from =
                    vec![ringbeat::sys::socket::sockaddr_from("0.0.0.0:0".parse().unwrap()).0; 64];
                let mut ack = [0u8; codec::MAX_DATAGRAM_BYTES];
                while !stop.load(Ordering::Relaxed) {
                    let n = net::recv_many(sock.as_raw_fd(), &mut bufs, &mut lens, Some(&mut from));
                    if n == 0 {
                        if !busy {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        continue;
                    }
                    let (mut frames, mut acks) = (0, 0);
                    for i in 0..n {
                        let mut ack_len = 0;
                        if let Ok(fs) = codec::datagram_frames(&bufs[i][..lens[i]]) {
                            for f in fs {
                                frames += 1;
                                if let Ok(hb) = codec::decode_heartbeat(f) {
                                    if hb.ack_requested() {
                                        let out: &mut [u8; FRAME_BYTES] =
                                            (&mut ack[ack_len..ack_len + 32]).try_into().unwrap();
                                        codec::encode_ack(&hb, hb.interval_ds(), out);
                                        ack_len += 32;
                                    }
                                }
                            }
                        }
                        if ack_len > 0 && net::send_to(sock.as_raw_fd(), &ack[..ack_len], &from[i])
                        {
                            acks += (ack_len / 32) as u64;
                        }
                    }
                    c.datagrams.fetch_add(n as u64, Ordering::Relaxed);
                    c.frames.fetch_add(frames, Ordering::Relaxed);
                    c.acks.fetch_add(acks, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut last = (0u64, Instant::now());
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).min(duration.saturating_sub(start.elapsed())));
        let f = counters.frames.load(Ordering::Relaxed);
        eprintln!(
            "sink: {:.0} frames/s, {} datagrams, {} acks",
            (f - last.0) as f64 / last.1.elapsed().as_secs_f64(),
            counters.datagrams.load(Ordering::Relaxed),
            counters.acks.load(Ordering::Relaxed)
        );
        last = (f, Instant::now());
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    eprintln!(
        "sink total: datagrams {} frames {} acks {}",
        counters.datagrams.load(Ordering::Relaxed),
        counters.frames.load(Ordering::Relaxed),
        counters.acks.load(Ordering::Relaxed)
    );
    Ok(())
}
