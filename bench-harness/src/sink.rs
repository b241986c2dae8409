//! `ringbeat-bench sink`: the cheapest possible receiver. It counts datagrams and
//! frames and acks ACK_REQUESTED frames, nothing else, so running `load` against it
//! shows the generator's own ceiling on this machine, and its CPU time per datagram is
//! the kernel's receive cost with nothing above it (the floor `sweep --sink-baseline`
//! compares the server with). It receives with non-blocking `recvmmsg` in batches of
//! 64 and naps 50 µs when the socket is empty; with `busy` it never naps, so its
//! latency is the floor the generator and the kernel set.

use crate::net;
use anyhow::Context;
use ringbeat::core::codec::{self, FRAME_BYTES};
use ringbeat::sys::socket::{udp_reuseport, UdpOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct SinkCounters {
    pub datagrams: AtomicU64,
    pub frames: AtomicU64,
    pub acks: AtomicU64,
}

/// What the sink listens on and how it runs.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub cpus: Vec<usize>,
    pub duration: Duration,
    pub busy: bool,
    /// SO_RCVBUF per socket (the server's default: 4 MiB).
    pub rcvbuf_bytes: usize,
    /// Counters rewritten here (temp + rename) every 500 ms and at the end, with the
    /// server's key names (`heartbeats`, `datagrams`, `acks_sent`, `kernel_drops`), so
    /// `load --server-stats` reads them alike.
    pub stats_json: Option<PathBuf>,
}

/// The sink's receive threads are named `ringbeat-sink-N` (the harness measures
/// their CPU time as it measures the server's `rb-shard-N`).
pub const THREAD_PREFIX: &str = "ringbeat-sink";

/// Runs one receive loop per CPU in `o.cpus` for `o.duration`; returns the bound
/// address through `bound` as soon as the sockets exist.
pub fn run(
    o: &SinkOptions,
    counters: Arc<SinkCounters>,
    bound: std::sync::mpsc::Sender<SocketAddr>,
) -> anyhow::Result<()> {
    let (listen, cpus, duration, busy) = (o.listen, &o.cpus[..], o.duration, o.busy);
    let opts = UdpOptions {
        rcvbuf_bytes: o.rcvbuf_bytes,
        prefilter: None,
    };
    let (first, _) = udp_reuseport(listen, opts)?;
    let addr = ringbeat::sys::socket::local_addr(&first)?;
    let mut sockets = vec![first];
    for _ in 1..cpus.len() {
        sockets.push(udp_reuseport(addr, opts)?.0);
    }
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let _ = bound.send(addr);
    let stop = Arc::new(AtomicBool::new(false));
    // The sockets stay here (open until the end, for the final drop count); the
    // threads borrow their descriptors.
    let handles = fds
        .iter()
        .copied()
        .zip(cpus.iter().copied())
        .enumerate()
        .map(|(i, (fd, cpu))| {
            let (stop, c) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}-{i}"))
                .spawn(move || {
                    let _ = net::pin_to_cpu(cpu);
                    let mut bufs = vec![[0u8; 2048]; 64];
                    let mut lens = vec![0usize; 64];
                    // A zeroed sockaddr_storage for each receive slot.
                    let mut from =
                        vec![
                            ringbeat::sys::socket::sockaddr_from("0.0.0.0:0".parse().unwrap()).0;
                            64
                        ];
                    let mut ack = [0u8; codec::MAX_DATAGRAM_BYTES];
                    while !stop.load(Ordering::Relaxed) {
                        let n = net::recv_many(fd, &mut bufs, &mut lens, Some(&mut from));
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
                                            let out: &mut [u8; FRAME_BYTES] = (&mut ack
                                                [ack_len..ack_len + 32])
                                                .try_into()
                                                .unwrap();
                                            codec::encode_ack(&hb, hb.interval_ds(), out);
                                            ack_len += 32;
                                        }
                                    }
                                }
                            }
                            if ack_len > 0 && net::send_to(fd, &ack[..ack_len], &from[i]) {
                                acks += (ack_len / 32) as u64;
                            }
                        }
                        c.datagrams.fetch_add(n as u64, Ordering::Relaxed);
                        c.frames.fetch_add(frames, Ordering::Relaxed);
                        c.acks.fetch_add(acks, Ordering::Relaxed);
                    }
                })
        })
        .collect::<Vec<_>>();
    let handles: Vec<_> = handles.into_iter().filter_map(Result::ok).collect();
    if handles.len() < fds.len() {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        anyhow::bail!("could not start a receive thread per CPU");
    }
    let start = Instant::now();
    let mut last = (0u64, Instant::now());
    let mut last_line = Instant::now();
    let write_stats = || -> anyhow::Result<()> {
        if let Some(p) = &o.stats_json {
            ringbeat::report::write_atomically(p, &stats_json(&counters, &fds))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    };
    while start.elapsed() < duration {
        std::thread::sleep(
            Duration::from_millis(500).min(duration.saturating_sub(start.elapsed())),
        );
        write_stats()?;
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let f = counters.frames.load(Ordering::Relaxed);
            eprintln!(
                "sink: {:.0} frames/s, {} datagrams, {} acks",
                (f - last.0) as f64 / last.1.elapsed().as_secs_f64(),
                counters.datagrams.load(Ordering::Relaxed),
                counters.acks.load(Ordering::Relaxed)
            );
            last = (f, Instant::now());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    write_stats()?;
    eprintln!(
        "sink total: datagrams {} frames {} acks {}",
        counters.datagrams.load(Ordering::Relaxed),
        counters.frames.load(Ordering::Relaxed),
        counters.acks.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The sink's counters under the server's key names. The sockets stay open until
/// `run` returns, so their drop counters can be read here.
fn stats_json(c: &SinkCounters, fds: &[i32]) -> serde_json::Value {
    let drops: u64 = fds
        .iter()
        .map(|&fd| ringbeat::sys::socket::socket_drops(fd).unwrap_or(0) as u64)
        .sum();
    serde_json::json!({
        "heartbeats": c.frames.load(Ordering::Relaxed),
        "datagrams": c.datagrams.load(Ordering::Relaxed),
        "acks_sent": c.acks.load(Ordering::Relaxed),
        "kernel_drops": drops,
    })
}
