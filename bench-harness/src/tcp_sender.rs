//! The open-loop TCP generator: simulated devices on held connections (one per device,
//! or gateways multiplexing many), frames written when due whatever the server does,
//! latency from the intended send time. Connections come from many source addresses
//! in 127.0.0.0/8, so counts beyond one address's ~28,000 ephemeral ports work.
//!
//! Each gateway of the schedule always writes on the same connection
//! (`gateway % connections`), so a device's frames stay in order on one stream. A
//! connection whose socket is full keeps its frames in a bounded queue (they go out
//! late, which the latency shows); beyond the bound they are counted as not sent.

use crate::latency::{self, Recorder};
use crate::net;
use crate::schedule::Schedule;
use crate::sender::{encode_frame, frame_bytes};
use crate::sender::{DueQueue, Interval, Progress, SenderConfig, SenderResult, Totals};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use ringbeat::core::codec::{FrameFields, FLAG_ACK_REQUESTED, FRAME_V2_BYTES};
use ringbeat::core::stream::{Feed, StreamDecoder};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Frames a connection may hold unsent before more are counted as not sent (4 MiB).
const QUEUE_BOUND: usize = 4 << 20;
/// Connections per source address: under a third of its ~28,000 ephemeral ports, since
/// finding a free port slows down sharply as a range fills.
pub const PER_SOURCE: usize = 8_000;

/// Opens `n` connections to `target` (IPv4 loopback: from source addresses
/// 127.B.0.1, 127.B.0.2, ..., a new one every `PER_SOURCE`, where B is drawn from the
/// process id so that a run does not meet the TIME_WAIT sockets of the run before it
/// on the same ports), non-blocking with TCP_NODELAY.
pub fn connect(target: SocketAddr, n: usize, first: usize) -> std::io::Result<Vec<TcpStream>> {
    let block = 1 + std::process::id() % 200;
    let mut out = Vec::with_capacity(n);
    for i in first..first + n {
        let s = match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let k = (i / PER_SOURCE) as u32 + 1;
                let src = Ipv4Addr::from(0x7F00_0000 | block << 16 | (k & 0xFFFF));
                net::tcp_connect_from(SocketAddr::new(IpAddr::V4(src), 0), target)?
            }
            _ => TcpStream::connect(target)?,
        };
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        out.push(s);
    }
    Ok(out)
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    acks: StreamDecoder,
    dirty: bool,
}

pub fn run(
    thread: usize,
    cfg: SenderConfig,
    sched: Schedule,
    streams: Vec<TcpStream>,
    flush: Duration,
    start: Instant,
    progress: Sender<Interval>,
) -> std::io::Result<SenderResult> {
    if let Some(cpu) = cfg.cpu {
        net::pin_to_cpu(cpu)?;
    }
    let frame_len = frame_bytes(cfg.auth.as_ref());
    let keys = match &cfg.auth {
        Some(auth) => auth.keys_for(&sched.order).map_err(std::io::Error::other)?,
        None => Vec::new(),
    };
    let boot = cfg.auth.as_ref().map_or(0, |a| a.boot);
    let auth = cfg.auth.clone();
    let auth = auth.as_ref();
    // Nothing is due before the start (the connections may be held open a while).
    if let Some(wait) = start.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let poller = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
    for (i, s) in streams.iter().enumerate() {
        poller
            .add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .map_err(std::io::Error::from)?;
    }
    let mut conns: Vec<Conn> = streams
        .into_iter()
        .map(|stream| Conn {
            stream,
            out: Vec::new(),
            acks: StreamDecoder::default(),
            dirty: false,
        })
        .collect();
    let mut dirty: Vec<usize> = Vec::new();
    let mut rx = vec![0u8; 64 << 10];
    let mut seq = crate::sender::sequence_numbers(sched.order.len());
    let mut rec = Recorder::new(cfg.warmup.as_nanos() as u64);
    let mut lag_hist = latency::histogram();
    let mut t = Totals::default();
    let end_ns = cfg.duration.as_nanos() as u64;
    let mut queue = DueQueue::new(&sched, end_ns, cfg.jitter);
    let mut frame_counter = thread as u64;
    let mut progress = Progress::new(progress);
    let gateways = sched.gateways() as u64;
    let flush_ns = flush.as_nanos() as u64;
    let mut last_flush_ns = 0u64;
    let now_ns = |start: Instant| start.elapsed().as_nanos() as u64;
    let mut receive = |conns: &mut Vec<Conn>, rec: &mut Recorder, t: &mut Totals| -> u64 {
        let mut got = 0;
        let mut ready = [EpollEvent::empty(); 256];
        let n = poller.wait(&mut ready, EpollTimeout::ZERO).unwrap_or(0);
        for ev in &ready[..n] {
            let c = &mut conns[ev.data() as usize];
            loop {
                match c.stream.read(&mut rx) {
                    Ok(0) => {
                        t.send_errors += 1;
                        let _ = poller.delete(&c.stream);
                        break;
                    }
                    Ok(len) => {
                        let now = start.elapsed().as_nanos() as u64;
                        c.acks.feed_frames(&rx[..len], |f| {
                            got += t.ack_frame(rec, f.bytes(), now, auth) as u64;
                            Feed::Continue
                        });
                        if len < rx.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        t.send_errors += 1;
                        let _ = poller.delete(&c.stream);
                        break;
                    }
                }
            }
        }
        got
    };
    loop {
        let now = now_ns(start);
        if now >= end_ns && queue.done() {
            break;
        }
        let send_now = now_ns(start);
        while let Some((g, intended)) = queue.pop_due(&sched, now) {
            let lag = send_now.saturating_sub(intended);
            let _ = lag_hist.record(lag.max(1));
            if lag > 1_000_000 {
                t.late_datagrams_1ms += 1;
            }
            let ci = ((g % gateways) % conns.len() as u64) as usize;
            let c = &mut conns[ci];
            for pos in sched.devices_of(g) {
                seq[pos] = seq[pos].wrapping_add(1);
                let mut f =
                    FrameFields::heartbeat(sched.order[pos], seq[pos], cfg.interval_ds, intended);
                frame_counter += 1;
                if c.out.len() + frame_len > QUEUE_BOUND {
                    t.send_eagain_frames += 1;
                    continue;
                }
                if cfg.ack_every > 0 && frame_counter.is_multiple_of(cfg.ack_every) {
                    f.flags = FLAG_ACK_REQUESTED;
                    f.sent_ns = rec.take_slot(intended, lag);
                    t.acks_expected += 1;
                    t.acks_expected_measured += rec.measured(intended) as u64;
                }
                let mut frame = [0u8; FRAME_V2_BYTES];
                let n = encode_frame(&f, keys.get(pos).map(|k| (k, boot)), &mut frame);
                c.out.extend_from_slice(&frame[..n]);
            }
            t.datagrams_sent += 1;
            if !c.dirty {
                c.dirty = true;
                dirty.push(ci);
            }
        }
        // Write what each connection holds, every `flush` (fewer, larger writes: on
        // loopback the sender's CPU also runs the receiving side of TCP, per segment);
        // what the socket does not take waits.
        if dirty.is_empty() || now_ns(start) < last_flush_ns + flush_ns {
            // Not yet.
        } else {
            last_flush_ns = now_ns(start);
            dirty.retain(|&ci| {
                let c = &mut conns[ci];
                match c.stream.write(&c.out) {
                    Ok(n) => {
                        let frames = (c.out.len().div_ceil(frame_len)
                            - (c.out.len() - n).div_ceil(frame_len))
                            as u64;
                        t.frames_sent += frames;
                        progress.frames += frames;
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        t.send_errors += 1;
                        t.send_eagain_frames += (c.out.len() / frame_len) as u64;
                        c.out.clear();
                    }
                }
                c.dirty = !c.out.is_empty();
                c.dirty
            });
        }
        if cfg.ack_every > 0 {
            progress.acks += receive(&mut conns, &mut rec, &mut t);
        }
        progress.tick(&mut rec, || {
            now_ns(start).saturating_sub(queue.next_intended_ns(&sched))
        });
        if cfg.ack_every == 0 && dirty.is_empty() {
            // Nothing to write: sleep until the next intended time.
            let next_ns = queue.next_intended_ns(&sched);
            let now = now_ns(start);
            if next_ns > now + 200_000 {
                std::thread::sleep(Duration::from_nanos(
                    (next_ns - now - 100_000).min(1_000_000),
                ));
            }
        }
    }
    // Frames still queued at the end are not sent; then the grace period for acks.
    t.send_eagain_frames += conns
        .iter()
        .map(|c| (c.out.len() / frame_len) as u64)
        .sum::<u64>();
    Ok(progress.finish(&cfg, rec, t, lag_hist, |rec, t| receive(&mut conns, rec, t)))
}
