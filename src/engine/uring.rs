//! The io_uring engine: how one shard moves bytes.
//!
//! Per shard: one ring (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN), one multishot
//! RecvMsg over a provided buffer ring, ack sends from a fixed pool of send slots, and a
//! read on the shard's eventfd that peers use to wake it after a hand-off. `receive`
//! reaps completions in batches (datagrams to the core, buffers recycled in one commit);
//! `wait` re-arms what ended and enters the ring as [`decide`] says. It allocates
//! nothing after start-up.

use super::shard_loop::{AckStats, Engine, Ingest, Wait};
use super::{ShardContext, ShardInfo};
use crate::config::WaitStrategy;
use crate::core::codec::FRAME_BYTES;
use crate::core::codec::MAX_DATAGRAM_BYTES;
use crate::core::stats::ShardStats;
use crate::engine::tcp::{After, Close, ConnId, Connections, ACK_QUEUE_RESUME};
use crate::engine::token::Token;
use crate::sys::socket;
use crate::sys::uring::{Pushed, ShardRing, ShardRingShape};
use crate::sys::uring::{StreamBufs, StreamSendEnd};
use io_uring::cqueue;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
/// During a liveness walk, new completions are brought in at most this often. Reaping
/// after every slice (~10 µs) cost 6% of throughput at saturation, and letting every
/// submit run deferred completions (IORING_SETUP_TASKRUN_FLAG) 7% (32 heartbeats per
/// datagram, 2M devices; runs that chose this design, not kept as a results folder);
/// every 20 µs took p99 at 1M hb/s from 118 to 33 µs (results/2026-11-24-liveness-slice).
const LIVENESS_REAP_EVERY: Duration = Duration::from_micros(20);
/// Completions copied out of the CQ at a time; the buffer ring's tail is published
/// after each such batch, so during a long reap the kernel gets buffers back every
/// 1,024 datagrams (a quarter of the default 4,096-buffer ring) instead of at the end.
const REAP_BATCH: usize = 1024;
/// `want` when batching by time or draining: more than the default ring can complete
/// at once (its CQ holds 2 × 4,096 buffers + 2 × 4,096 send slots = 16,384 entries), so
/// a batching wait ends at its min-wait and a drain at an empty socket or a dry ring.
/// With the largest rings (`--buf-count 32768`, a 131,072-entry CQ) a drain may stop at
/// 65,536 completions; the loop then reaps them and decides again, so nothing waits.
const BATCH_WANT: usize = 1 << 16;
/// Completion rate at or above which the adaptive strategy batches wake-ups. Below it,
/// waking per completion costs little CPU and keeps latency at its floor; above it, a
/// 50 µs batch gathers ≥ 10 completions per wake-up (results/2026-11-24-foundation).
const ADAPTIVE_BATCH_RATE_PER_S: u64 = 200_000;
/// Completion rate from which the adaptive strategy uses its heavy-load batch: a core
/// is then about half busy at one heartbeat per datagram, and 200 µs batches cost
/// 10–13% less CPU per heartbeat than 50 µs ones and keep 1.5M/s without drops, for
/// a p99 about twice as long (results/2026-11-24-kernel-floor).
const ADAPTIVE_HEAVY_RATE_PER_S: u64 = 800_000;
/// Window over which the adaptive strategy measures the completion rate: 1 ms holds
/// 200 completions at the batching threshold (a stable rate estimate) and reacts
/// within 5 batches of 200 µs when the load changes.
const ADAPTIVE_WINDOW_US: u64 = 1_000;
/// A batching wait is not taken when at least this much (skb truesize, about 50
/// small datagrams) already waits in the socket: with DEFER_TASKRUN a sleeping shard
/// receives nothing until its min-wait ends, and each enter brings in only a bounded
/// run of completions, so batch-sleeping over a backlog caps the drain rate and turns
/// a short stall into a lasting overload (results/2026-11-24-kernel-floor).
const BACKLOG_NO_BATCH_BYTES: u32 = 64 << 10;
/// TCP receive buffers per shard, in their own buffer group. A multishot receive on a
/// connection takes one per completion whatever it holds, so with many quiet
/// connections most completions are small: 512 × 4 KiB (2 MiB per shard) keep 64
/// busy connections streaming (each completion carries up to 128 frames) and a
/// million quiet ones sending a frame each.
const TCP_BUF_COUNT: u16 = 512;
const TCP_BUF_SIZE: u32 = 4096;
/// With incremental consumption (Linux 6.12+) a receive takes only what it needs of
/// the head buffer, so buffers can be large without waste: 32 × 64 KiB, the same 2 MiB.
const TCP_INC_BUF_COUNT: u16 = 32;
const TCP_INC_BUF_SIZE: u32 = 64 << 10;

/// Completion rate over the last adaptive window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Light,
    Busy,
    Heavy,
}

impl Load {
    fn of(cqes: u64, elapsed_us: u64) -> Load {
        let per_s = cqes * 1_000_000 / elapsed_us.max(1);
        if per_s >= ADAPTIVE_HEAVY_RATE_PER_S {
            Load::Heavy
        } else if per_s >= ADAPTIVE_BATCH_RATE_PER_S {
            Load::Busy
        } else {
            Load::Light
        }
    }
}

/// The completion rate, measured over windows of `ADAPTIVE_WINDOW_US`.
#[derive(Debug)]
struct LoadWindow {
    start_us: u64,
    cqes: u64,
    load: Load,
}

impl LoadWindow {
    fn new() -> LoadWindow {
        LoadWindow {
            start_us: 0,
            cqes: 0,
            load: Load::Light,
        }
    }

    /// Adds `cqes` reaped by `now_us`; the load changes only when a window closes.
    fn record(&mut self, cqes: u64, now_us: u64) -> Load {
        self.cqes += cqes;
        let elapsed_us = now_us.saturating_sub(self.start_us);
        if elapsed_us >= ADAPTIVE_WINDOW_US {
            self.load = Load::of(self.cqes, elapsed_us);
            (self.start_us, self.cqes) = (now_us, 0);
        }
        self.load
    }
}

/// How the next `io_uring_enter` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Enter {
    /// Submit what is queued and return: work already waits in user space.
    Submit,
    /// Run the deferred completions (GETEVENTS, zero timeout) until `want` are ready
    /// or none is left to run; never sleeps. With `BATCH_WANT`, a drain: the deferred
    /// receive runs until the socket is empty or the buffer ring is dry.
    Reap { want: usize },
    /// Sleep until `want` completions or the next tick; with `min_wait_us` > 0 a
    /// batch: once one completion is in, keep gathering for up to `min_wait_us`.
    Sleep { want: usize, min_wait_us: u32 },
}

/// What the wait decision sees.
#[derive(Clone, Copy, Debug)]
struct WaitInputs {
    strategy: WaitStrategy,
    load: Load,
    /// The buffer ring ran dry since the last drain: data is queued.
    ran_dry: bool,
    /// Completions are in the CQ already.
    completions_ready: bool,
    wait: Wait,
    /// A liveness-walk reap is due (`LIVENESS_REAP_EVERY` since the last one).
    reap_due: bool,
}

/// The decision and what it did that counters report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decision {
    enter: Enter,
    /// A batching wait was replaced by a drain because the socket held a backlog.
    backlog: bool,
}

/// The one wait decision, every override included; a pure function of its inputs
/// (`queued_bytes` reads the socket's queue and is called only when the decision would
/// otherwise batch: one getsockopt per batching wait, never per datagram).
fn decide(i: WaitInputs, queued_bytes: impl FnOnce() -> Option<u32>) -> Decision {
    let enter = |enter| Decision {
        enter,
        backlog: false,
    };
    const DRAIN: Enter = Enter::Reap { want: BATCH_WANT };
    if i.wait.stopping {
        return enter(DRAIN);
    }
    if i.completions_ready || i.wait.peer_frames {
        return enter(Enter::Submit);
    }
    if i.wait.liveness_pending {
        // Between slices of a walk: bring in what arrived meanwhile, rate-limited.
        return enter(if i.reap_due {
            Enter::Reap { want: 1 }
        } else {
            Enter::Submit
        });
    }
    if i.ran_dry {
        // The receive was re-armed over queued data.
        return enter(DRAIN);
    }
    let batch_us = match i.strategy {
        WaitStrategy::Fixed { us } => us,
        WaitStrategy::Adaptive {
            batch_us,
            heavy_batch_us,
        } => match i.load {
            Load::Light => 0,
            Load::Busy => batch_us,
            Load::Heavy => heavy_batch_us,
        },
    };
    if batch_us == 0 {
        return enter(Enter::Sleep {
            want: 1,
            min_wait_us: 0,
        });
    }
    if queued_bytes().is_some_and(|b| b >= BACKLOG_NO_BATCH_BYTES) {
        return Decision {
            enter: DRAIN,
            backlog: true,
        };
    }
    enter(Enter::Sleep {
        want: BATCH_WANT,
        min_wait_us: batch_us,
    })
}

/// The shape of a shard's ring from the configuration (the engine and `check` build
/// the same).
pub(crate) fn ring_shape(cfg: &crate::config::Config) -> ShardRingShape {
    ShardRingShape {
        buf_count: cfg.uring.buf_count,
        buf_size: cfg.uring.buf_size,
        buf_window_bytes: cfg.uring.buf_window_bytes,
        send_slots: cfg.uring.ack_slots,
        max_datagram_bytes: MAX_DATAGRAM_BYTES,
        stream_bufs: cfg.network.tcp.map(|_| StreamBufs {
            // RINGBEAT_TCP_PLAIN_BUFFERS=1 behaves as on Linux < 6.12 (for testing the
            // fallback on kernels that have incremental consumption).
            incremental: std::env::var_os("RINGBEAT_TCP_PLAIN_BUFFERS")
                .is_none()
                .then_some((TCP_INC_BUF_COUNT, TCP_INC_BUF_SIZE)),
            plain: (TCP_BUF_COUNT, TCP_BUF_SIZE),
            // RINGBEAT_TCP_NO_BUNDLES=1 behaves as on Linux < 6.10 with plain buffers.
            bundles: std::env::var_os("RINGBEAT_TCP_NO_BUNDLES").is_none(),
        }),
    }
}

/// One shard's io_uring engine: the ring and its memory (`sys::uring::ShardRing`, which
/// holds every unsafe operation), the tokens, the wait decision and the counters.
pub(super) struct UringEngine {
    ring: ShardRing,
    free_slots: Vec<u32>,
    /// Completions copied out of the CQ (capacity `REAP_BATCH`, never grows).
    cqes: Vec<(u64, i32, u32)>,
    /// Owners' verdicts on TCP acks being applied (swapped with the shard's queue).
    answers: Vec<crate::core::held::Answer>,
    socket: RawFd,
    wake_fd: RawFd,
    info: ShardInfo,
    strategy: WaitStrategy,
    rearm_recv: bool,
    rearm_wake: bool,
    /// The ring ran dry since the last drain: data is queued, so the next wait must
    /// not add a batching delay (the re-armed receive completes at once).
    ran_dry: bool,
    load: LoadWindow,
    /// Completions reaped since the last wait (for the load window).
    reaped: u64,
    /// The engine's clock for the load window.
    epoch: Instant,
    last_error_log: Option<Instant>,
    /// When a liveness walk last brought completions in.
    last_reap: Instant,
    tcp: Option<Tcp>,
}

/// The engine's TCP side: the listener, the connections, and what is to be re-armed.
struct Tcp {
    listener: std::os::fd::OwnedFd,
    conns: Connections,
    rearm_accept: bool,
    /// Connections whose receive ended (a dry buffer group, the kernel's choice) and
    /// is to be queued again.
    rearm: Vec<ConnId>,
    closes: Vec<(usize, Close)>,
    /// The buffers of one plain-buffer receive (several for a bundle).
    parts: Vec<(u16, u32)>,
}

impl UringEngine {
    pub(super) fn new(ctx: &mut ShardContext) -> anyhow::Result<UringEngine> {
        let cfg = &ctx.config;
        let ring = ShardRing::new(ring_shape(cfg))?;
        let (numa_node, arena_addr, arena_bytes) = ring.arena();
        let info = ShardInfo {
            index: ctx.index,
            cpu: ctx.cpu,
            numa_node,
            arena_addr,
            arena_bytes,
            // RINGBEAT_FORCE_NO_MIN_WAIT=1 behaves as on Linux < 6.12 (for testing the
            // fallback on kernels that have min-wait).
            min_wait_supported: ring.min_wait_supported()
                && std::env::var_os("RINGBEAT_FORCE_NO_MIN_WAIT").is_none(),
        };
        Ok(UringEngine {
            free_slots: (0..ring.send_slots()).rev().collect(),
            ring,
            cqes: Vec::with_capacity(REAP_BATCH),
            answers: Vec::new(),
            socket: ctx.socket.as_raw_fd(),
            wake_fd: ctx.parkers[ctx.index as usize].efd.raw(),
            info,
            strategy: cfg.uring.wait,
            rearm_recv: true,
            rearm_wake: true,
            ran_dry: false,
            load: LoadWindow::new(),
            reaped: 0,
            epoch: ctx.base,
            last_error_log: None,
            last_reap: Instant::now(),
            tcp: match (ctx.listener.take(), cfg.network.tcp.as_ref()) {
                (Some(listener), Some(t)) => Some(Tcp {
                    listener,
                    conns: Connections::new(t, &ctx.config.network.allow),
                    rearm_accept: true,
                    rearm: Vec::new(),
                    closes: Vec::new(),
                    parts: Vec::with_capacity(TCP_BUF_COUNT as usize),
                }),
                _ => None,
            },
        })
    }

    /// Re-arms the receive and the wake-up read if they ended.
    fn arm(&mut self, stats: &mut ShardStats) {
        if self.rearm_recv {
            let p = self.ring.push_recv(self.socket, Token::Recv.encode());
            self.rearm_recv = !pushed(stats, p);
        }
        if self.rearm_wake {
            let p = self.ring.push_wake_read(self.wake_fd, Token::Wake.encode());
            self.rearm_wake = !pushed(stats, p);
        }
        if let Some(tcp) = self.tcp.as_mut() {
            if tcp.rearm_accept {
                let p = self
                    .ring
                    .push_accept(tcp.listener.as_raw_fd(), Token::Accept.encode());
                tcp.rearm_accept = !pushed(stats, p);
            }
            let mut i = 0;
            while i < tcp.rearm.len() {
                let id = tcp.rearm[i];
                match tcp.conns.get_mut(id) {
                    Some(c) if !c.armed && !c.paused && !c.closing() => {
                        let p = self
                            .ring
                            .push_stream_recv(c.fd.as_raw_fd(), Token::TcpRecv(id).encode());
                        if !pushed(stats, p) {
                            break;
                        }
                        c.armed = true;
                    }
                    _ => {}
                }
                i += 1;
            }
            tcp.rearm.drain(..i);
        }
    }

    /// New connections the accept brought: kept (and their receive queued) or
    /// refused.
    fn on_accepted(&mut self, io: &mut Ingest<'_>, now_ms: u64) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        for fd in self.ring.take_accepted() {
            if let Some(id) = tcp.conns.admit(fd, now_ms, io.stats()) {
                tcp.rearm.push(id);
            }
        }
    }

    /// A TCP receive completion: bytes into the core, acks written, the connection
    /// paused, closed or kept. The buffer is recycled whoever it belonged to.
    fn on_tcp_recv(&mut self, io: &mut Ingest<'_>, id: ConnId, res: i32, flags: u32, now_ms: u64) {
        let bid = cqueue::buffer_select(flags);
        let ended = !cqueue::more(flags);
        let alive = match self.tcp.as_mut().and_then(|t| t.conns.get_mut(id)) {
            Some(c) => {
                if ended {
                    c.armed = false;
                }
                true
            }
            None => false,
        };
        let mut outcome = None;
        if let (true, Some(bid)) = (res > 0, bid) {
            outcome = self.on_tcp_bytes(io, id, alive, bid, res as usize, flags, now_ms);
        } else if res > 0 {
            io.stats().recv_errors += 1;
        }
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        if alive && res == 0 {
            tcp.conns.on_end(id, io.stats());
            outcome = Some(After::Close(Close::Peer));
        } else if alive && -res == libc::ENOBUFS {
            io.stats().ring_dry += 1;
            self.ran_dry = true;
        } else if alive && res < 0 && -res != libc::ECANCELED {
            outcome = Some(After::Close(Close::Error));
        }
        if !alive {
            return;
        }
        match outcome {
            Some(After::Close(why)) => {
                tcp.conns.close(id.key as usize, why, io);
                return;
            }
            Some(After::Pause) => {
                // Stop reading until the acks drain: cancel the queued receive.
                let p = self
                    .ring
                    .push_cancel(Token::TcpRecv(id).encode(), Token::Cancel.encode());
                pushed(io.stats(), p);
            }
            _ => {}
        }
        if ended {
            tcp.rearm.push(id);
        }
        self.write_acks(io, id);
    }

    /// The bytes of a TCP receive completion, taken whoever they belonged to (buffers
    /// must be recycled, and incremental ones track what was handed out), fed to
    /// connection `id` when it is `alive`: one buffer (incremental: recycled once the
    /// kernel is done with it) or, with plain buffers, one or a bundle of several, in
    /// order.
    #[allow(clippy::too_many_arguments)]
    fn on_tcp_bytes(
        &mut self,
        io: &mut Ingest<'_>,
        id: ConnId,
        alive: bool,
        bid: u16,
        len: usize,
        flags: u32,
        now_ms: u64,
    ) -> Option<After> {
        let tcp = self.tcp.as_mut()?;
        if self.ring.stream_incremental() {
            let (bytes, done) = self.ring.stream_data(bid, len, flags);
            let outcome = if alive {
                tcp.conns.on_bytes(id, bytes, io, now_ms)
            } else {
                None
            };
            if done {
                self.ring.recycle_stream(bid);
            }
            return outcome;
        }
        let mut parts = std::mem::take(&mut tcp.parts);
        let mut outcome = None;
        if self.ring.stream_parts(bid, len, &mut parts) {
            for &(b, n) in &parts {
                if alive && !matches!(outcome, Some(After::Close(_) | After::CloseWhenFlushed)) {
                    let bytes = self.ring.stream_part(b, n as usize);
                    outcome = tcp.conns.on_bytes(id, bytes, io, now_ms).or(outcome);
                }
                self.ring.recycle_stream(b);
            }
        } else {
            // The buffers used are not the ones expected next: the bytes cannot be
            // placed. Counted and logged; the connection is closed.
            io.stats().recv_errors += 1;
            self.ring.recycle_stream(bid);
            tracing::error!(
                shard = self.info.index,
                bid,
                len,
                "TCP receive in an unexpected buffer"
            );
            outcome = alive.then_some(After::Close(Close::Error));
        }
        tcp.parts = parts;
        outcome
    }

    /// Queues a write of connection `id`'s acks when none is in flight; closes a
    /// closing connection once everything is written.
    fn write_acks(&mut self, io: &mut Ingest<'_>, id: ConnId) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        if let Some(buf) = tcp.conns.take_acks(id, io.streams) {
            let fd = tcp
                .conns
                .get_mut(id)
                .map(|c| c.fd.as_raw_fd())
                .expect("open");
            let len = buf.len();
            let p = self.ring.push_stream_send(fd, buf, id.pack());
            if !pushed(io.stats(), p) {
                io.stats().acks_dropped += (len / FRAME_BYTES) as u64;
                io.stats().tcp_ack_queue_drops += (len / FRAME_BYTES) as u64;
                tcp.conns.close(id.key as usize, Close::Error, io);
            }
            return;
        }
        if let Some(c) = tcp.conns.get_mut(id) {
            if c.closing() && c.flushed() {
                let why = tcp
                    .conns
                    .closing_reason(id.key as usize)
                    .unwrap_or(Close::OutOfStep);
                tcp.conns.close(id.key as usize, why, io);
            }
        }
    }

    /// A TCP write's completion: counted, its buffer reused, the connection's next
    /// acks written, a paused connection resumed.
    fn on_tcp_sent(&mut self, io: &mut Ingest<'_>, send_id: u32) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        let conn = self.ring.stream_send_tag(send_id).map(ConnId::unpack);
        let alive = conn.is_some_and(|id| tcp.conns.get_mut(id).is_some());
        let Some(StreamSendEnd::Done {
            buf,
            written,
            error,
            ..
        }) = self.ring.stream_send_completed(send_id, alive)
        else {
            return;
        };
        let s = io.stats();
        s.tcp_ack_writes += 1;
        s.acks_sent += (written / FRAME_BYTES) as u64;
        let unwritten = (buf.len() - written).div_ceil(FRAME_BYTES) as u64;
        s.acks_dropped += unwritten;
        s.tcp_ack_queue_drops += unwritten;
        tcp.conns.give_back(buf);
        let Some(id) = conn.filter(|_| alive) else {
            return;
        };
        if error.is_some() {
            tcp.conns.close(id.key as usize, Close::Error, io);
            return;
        }
        let c = tcp.conns.get_mut(id).expect("alive");
        c.writing = false;
        if c.paused && c.acks.len() < ACK_QUEUE_RESUME {
            c.paused = false;
            if !c.armed {
                tcp.rearm.push(id);
            }
        }
        self.write_acks(io, id);
    }

    /// A slice of the idle sweep.
    fn sweep(&mut self, io: &mut Ingest<'_>, now_ms: u64) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        tcp.conns.sweep(now_ms, &mut tcp.closes);
        for (key, why) in tcp.closes.drain(..) {
            tcp.conns.close(key, why, io);
        }
    }

    fn log_error(&mut self, what: &str, errno: i32) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_error_log = Some(now);
            tracing::warn!(
                shard = self.info.index,
                "{what}: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }

    fn on_completion(&mut self, io: &mut Ingest<'_>, ud: u64, res: i32, flags: u32, now_ms: u64) {
        if let Some(send_id) = crate::sys::uring::stream_send_id(ud) {
            return self.on_tcp_sent(io, send_id);
        }
        match Token::decode(ud) {
            Some(Token::Recv) => {
                if !cqueue::more(flags) {
                    self.rearm_recv = true;
                    io.stats().rearms += 1;
                }
                if res < 0 {
                    if -res == libc::ENOBUFS {
                        io.stats().ring_dry += 1;
                        self.ran_dry = true;
                    } else if -res != libc::ECANCELED {
                        io.stats().recv_errors += 1;
                        self.log_error("receive failed", -res);
                    }
                    return;
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    io.stats().recv_errors += 1;
                    return;
                };
                self.on_datagram(io, bid, res as usize, now_ms);
                self.ring.recycle(bid, res as usize);
            }
            Some(Token::Send(slot)) => self.on_ack_sent(io, slot, res),
            Some(Token::Wake) => {
                self.rearm_wake = true;
            }
            Some(Token::Accept) => {
                if let Some(tcp) = self.tcp.as_mut() {
                    if !cqueue::more(flags) {
                        tcp.rearm_accept = true;
                    }
                }
                if res < 0 {
                    if -res != libc::ECANCELED {
                        // EMFILE and the like: the connection stays in the backlog.
                        io.stats().tcp_refused += 1;
                        self.log_error(
                            "accept failed (raise the open-files limit, see `ringbeat check`)",
                            -res,
                        );
                    }
                } else {
                    self.on_accepted(io, now_ms);
                }
            }
            Some(Token::TcpRecv(id)) => self.on_tcp_recv(io, id, res, flags, now_ms),
            Some(Token::Cancel) => {}
            None => {
                io.stats().recv_errors += 1;
                tracing::error!(user_data = ud, "completion with unknown user_data");
            }
        }
    }

    /// Handles reaped completions in order, each datagram's successor handed to the
    /// core ahead (see `prefetch`).
    fn on_completions(&mut self, io: &mut Ingest<'_>, cqes: &[(u64, i32, u32)], now_ms: u64) {
        // Two stages ahead: the buffer of the completion after next starts loading,
        // then the next one's header and frames are read (landed by now) and what
        // they look up starts loading, then this one is taken.
        for (k, &(ud, res, flags)) in cqes.iter().enumerate() {
            if let Some(&(ud, res, flags)) = cqes.get(k + 2) {
                if let Some(bid) = received_buffer(ud, res, flags) {
                    self.ring.prefetch_received(bid, res as usize);
                }
            }
            if let Some(&next) = cqes.get(k + 1) {
                self.prefetch(io, next);
            }
            self.on_completion(io, ud, res, flags, now_ms);
        }
    }

    /// Starts loading what the datagram of a completion still to be handled will read.
    #[inline]
    fn prefetch(&self, io: &Ingest<'_>, (ud, res, flags): (u64, i32, u32)) {
        let Some(bid) = received_buffer(ud, res, flags) else {
            return;
        };
        if let Some(d) = self.ring.received(bid, res as usize) {
            io.prefetch(d.payload);
        }
    }

    fn on_datagram(&mut self, io: &mut Ingest<'_>, bid: u16, len: usize, now_ms: u64) {
        let Some(d) = self.ring.received(bid, len) else {
            io.stats().recv_errors += 1;
            return;
        };
        if d.truncated {
            io.too_long();
            return;
        }
        let ack = io.datagram(
            d.payload,
            crate::engine::shard_loop::Source::Raw(d.name),
            now_ms,
        );
        let ack_len = ack.len();
        if ack_len == 0 {
            return;
        }
        // The source address out of the receive buffer (≤ 28 bytes: sockaddr_in6)
        // before the ring is borrowed to queue the send.
        let mut to = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
        let to_len = d.name.len().min(to.len());
        to[..to_len].copy_from_slice(&d.name[..to_len]);
        let queued = self.queue_ack(ack, &to[..to_len]);
        if !queued.is_some_and(|p| pushed(io.stats(), p)) {
            io.stats().count_acks_dropped(1, ack_len);
        }
    }

    /// Queues one ack datagram to the raw address `to` from a free send slot. None
    /// when no slot is free; a push the ring did not take gives its slot back. Either
    /// way the caller counts the ack as dropped.
    fn queue_ack(&mut self, ack: &[u8], to: &[u8]) -> Option<Pushed> {
        let slot = self.free_slots.pop()?;
        let p = self
            .ring
            .push_send(self.socket, slot, ack, to, Token::Send(slot).encode());
        if !p.pushed {
            self.free_slots.push(slot);
        }
        Some(p)
    }

    /// An ack send's completion: counted as sent or dropped, its slot free again.
    fn on_ack_sent(&mut self, io: &mut Ingest<'_>, slot: u32, res: i32) {
        let bytes = self.ring.send_len(slot);
        if res < 0 {
            io.stats().count_acks_dropped(1, bytes);
            self.log_error("ack send failed", -res);
        } else {
            io.stats().count_acks_sent(1, bytes);
        }
        self.free_slots.push(slot);
    }
}

/// The buffer a completion received a datagram into, if it is such a completion.
#[inline]
fn received_buffer(ud: u64, res: i32, flags: u32) -> Option<u16> {
    if res <= 0 || Token::decode(ud) != Some(Token::Recv) {
        return None;
    }
    cqueue::buffer_select(flags)
}

/// Counts the enters a push made and says whether it went in.
fn pushed(stats: &mut ShardStats, p: Pushed) -> bool {
    stats.enters += p.enters as u64;
    p.pushed
}

impl Engine for UringEngine {
    fn receive(&mut self, io: &mut Ingest<'_>, now_ms: u64) {
        // Copied out of the CQ first: handling a completion pushes sends, which needs
        // the ring the completion queue borrows.
        let mut cqes = std::mem::take(&mut self.cqes);
        let mut reaped = 0;
        loop {
            cqes.clear();
            let n = self.ring.reap(&mut cqes, REAP_BATCH);
            if n == 0 {
                break;
            }
            reaped += n;
            self.on_completions(io, &cqes, now_ms);
            self.ring.commit();
            if n < REAP_BATCH {
                break;
            }
        }
        self.cqes = cqes;
        io.stats().cqes += reaped as u64;
        self.reaped += reaped as u64;
        self.sweep(io, now_ms);
    }

    fn send_ready(&mut self, io: &mut Ingest<'_>) {
        let stats = io.core.stats_mut();
        let mut queued = false;
        io.held.send_ready(|to, acks| {
            if self
                .queue_ack(acks, to.raw())
                .is_some_and(|p| pushed(stats, p))
            {
                queued = true;
            } else {
                stats.count_acks_dropped(1, acks.len());
            }
        });
        let mut answers = std::mem::take(&mut self.answers);
        io.streams.swap_answered(&mut answers);
        for &a in &answers {
            let Some(tcp) = self.tcp.as_mut() else { break };
            if let Some(id) = tcp.conns.answer(a, io) {
                self.write_acks(io, id);
                queued = true;
            }
        }
        answers.clear();
        self.answers = answers;
        // Out now: this may run where no wait follows (the stop sequence).
        if queued {
            io.stats().enters += 1;
            if let Err(e) = self.ring.submit() {
                self.log_error("submitting held acks failed", e.raw_os_error().unwrap_or(0));
            }
        }
    }

    fn finish_sends(&mut self, io: &mut Ingest<'_>, deadline: Instant) {
        let slots = self.ring.send_slots() as usize;
        let mut cqes = std::mem::take(&mut self.cqes);
        while self.free_slots.len() < slots && Instant::now() < deadline {
            if let Err(e) = self.ring.reap_without_sleeping(1) {
                self.log_error(
                    "reaping ack sends at stop failed",
                    e.raw_os_error().unwrap_or(0),
                );
                break;
            }
            cqes.clear();
            if self.ring.reap(&mut cqes, REAP_BATCH) == 0 {
                std::thread::sleep(std::time::Duration::from_micros(100));
                continue;
            }
            for &(ud, res, flags) in cqes.iter() {
                match Token::decode(ud) {
                    Some(Token::Send(slot)) => self.on_ack_sent(io, slot, res),
                    // A datagram that came after the drain: read, not applied.
                    Some(Token::Recv) if res > 0 => {
                        io.stats().unread_at_stop += 1;
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            self.ring.recycle(bid, res as usize);
                        }
                    }
                    _ => {}
                }
            }
            self.ring.commit();
        }
        self.cqes = cqes;
        // Sends the kernel has not completed by the deadline: counted as dropped.
        let mut free = vec![false; slots];
        for &slot in &self.free_slots {
            free[slot as usize] = true;
        }
        for slot in (0..slots as u32).filter(|&s| !free[s as usize]) {
            io.stats().count_acks_dropped(1, self.ring.send_len(slot));
            self.free_slots.push(slot);
        }
    }

    fn close_streams(&mut self, io: &mut Ingest<'_>, deadline: Instant) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        // Acks still queued go out; the writes in flight are given until `deadline`.
        let keys = tcp.conns.keys();
        for &key in &keys {
            if let Some(id) = self
                .tcp
                .as_mut()
                .and_then(|t| t.conns.slot_mut(key).map(|c| c.id(key)))
            {
                self.write_acks(io, id);
            }
        }
        while Instant::now() < deadline {
            let writing = self.tcp.as_mut().is_some_and(|t| {
                keys.iter()
                    .any(|&k| t.conns.slot_mut(k).is_some_and(|c| c.writing))
            });
            if !writing {
                break;
            }
            let _ = self.ring.wait(1, Duration::from_millis(1), None);
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            self.ring.reap(&mut cqes, REAP_BATCH);
            // Whatever else completes meanwhile is taken in as usual (applied, acked).
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            self.on_completions(io, &cqes, now_ms);
            self.ring.commit();
            self.cqes = cqes;
        }
        if let Some(tcp) = self.tcp.as_mut() {
            for key in tcp.conns.keys() {
                tcp.conns.close(key, Close::Stop, io);
            }
        }
    }

    fn wait(&mut self, io: &mut Ingest<'_>, wait: Wait) {
        // Re-arm what ended (before waiting: a receive that ran dry must be back in
        // the ring before the shard sleeps).
        self.arm(io.stats());
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let load = match self.strategy {
            WaitStrategy::Adaptive { .. } => {
                self.load.record(std::mem::take(&mut self.reaped), now_us)
            }
            WaitStrategy::Fixed { .. } => Load::Light,
        };
        let inputs = WaitInputs {
            strategy: self.strategy,
            load,
            ran_dry: self.ran_dry,
            completions_ready: self.ring.has_completions(),
            wait,
            reap_due: self.last_reap.elapsed() >= LIVENESS_REAP_EVERY,
        };
        let fd = self.socket;
        let d = decide(inputs, || socket::socket_queued_bytes(fd).ok());
        if d.backlog {
            io.stats().backlog_polls += 1;
        }
        let result = match d.enter {
            Enter::Submit => self.ring.submit(),
            Enter::Reap { want } => {
                if want == BATCH_WANT {
                    self.ran_dry = false;
                } else {
                    self.last_reap = Instant::now();
                }
                self.ring.reap_without_sleeping(want)
            }
            Enter::Sleep { want, min_wait_us } => {
                io.stats().wakeups += 1;
                let tick = Duration::from_millis(wait.timeout_ms);
                let batch = Duration::from_micros(min_wait_us as u64);
                if min_wait_us == 0 {
                    self.ring.wait(want, tick, None)
                } else if self.info.min_wait_supported {
                    self.ring.wait(want, tick, Some(batch))
                } else {
                    // Without min-wait (Linux < 6.12) a batch is a plain timeout of the
                    // batch length: the wait returns after it whatever arrived, never a
                    // whole tick.
                    self.ring.wait(want, batch, None)
                }
            }
        };
        io.stats().enters += 1;
        if let Err(e) = result {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => self.log_error("io_uring_enter failed", e.raw_os_error().unwrap_or(0)),
            }
        }
    }

    fn behind(&self) -> bool {
        // The receive ended (a dry ring) and is not armed again yet. Once it is, every
        // enter takes in what the socket holds, and the shard loop looks at the
        // socket's queue. (Not `ran_dry`: that waits for a draining reap, which a
        // steady stream of peers' frames can put off indefinitely.)
        self.rearm_recv
    }

    fn info(&self) -> ShardInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Load::{Busy, Heavy, Light};

    const ADAPTIVE: WaitStrategy = WaitStrategy::Adaptive {
        batch_us: 50,
        heavy_batch_us: 200,
    };
    const FIXED: WaitStrategy = WaitStrategy::Fixed { us: 200 };
    const NEVER: WaitStrategy = WaitStrategy::Fixed { us: 0 };
    const DRAIN: Enter = Enter::Reap { want: BATCH_WANT };
    const BIG: u32 = BACKLOG_NO_BATCH_BYTES;

    /// Inputs with nothing pending: only the named conditions set.
    fn inputs(strategy: WaitStrategy, load: Load, set: &[&str]) -> WaitInputs {
        let has = |k: &str| set.contains(&k);
        WaitInputs {
            strategy,
            load,
            ran_dry: has("ran_dry"),
            completions_ready: has("ready"),
            wait: Wait {
                timeout_ms: 10,
                peer_frames: has("peer"),
                liveness_pending: has("walk"),
                stopping: has("stop"),
            },
            reap_due: has("reap_due"),
        }
    }

    #[test]
    fn load_levels_follow_the_completion_rate() {
        assert_eq!(Load::of(0, 0), Light);
        assert_eq!(Load::of(199, 1_000), Light);
        assert_eq!(Load::of(200, 1_000), Busy);
        assert_eq!(Load::of(799, 1_000), Busy);
        assert_eq!(Load::of(1_600, 2_000), Heavy);
    }

    #[test]
    fn the_load_window_changes_only_when_a_window_closes() {
        let mut w = LoadWindow::new();
        assert_eq!(w.record(500, 999), Light, "window still open");
        assert_eq!(w.record(500, 1_000), Heavy, "1,000 in 1 ms");
        assert_eq!(w.record(100, 1_500), Heavy, "next window open: load kept");
        assert_eq!(w.record(200, 2_000), Busy, "300 in 1 ms");
        assert_eq!(w.record(0, 5_000), Light);
    }

    /// strategy, load, conditions set, queued bytes → enter, backlog counted.
    type Row = (
        WaitStrategy,
        Load,
        &'static [&'static str],
        u32,
        Enter,
        bool,
    );

    #[test]
    fn every_wait_decision_as_a_table() {
        let sleep = |want, min_wait_us| Enter::Sleep { want, min_wait_us };
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // Nothing pending: the strategy decides.
            (ADAPTIVE, Light, &[], 0, sleep(1, 0), false),
            (ADAPTIVE, Busy, &[], 0, sleep(BATCH_WANT, 50), false),
            (ADAPTIVE, Heavy, &[], 0, sleep(BATCH_WANT, 200), false),
            (FIXED, Light, &[], 1000, sleep(BATCH_WANT, 200), false),
            (NEVER, Heavy, &[], 1 << 20, sleep(1, 0), false),
            // A backlog turns a batch into a drain (counted); not a per-completion wait.
            (ADAPTIVE, Heavy, &[], BIG, DRAIN, true),
            (FIXED, Light, &[], BIG, DRAIN, true),
            (FIXED, Light, &[], BIG - 1, sleep(BATCH_WANT, 200), false),
            (ADAPTIVE, Light, &[], BIG, sleep(1, 0), false),
            // A dry ring re-armed over queued data: drain, not counted as a backlog.
            (FIXED, Light, &["ran_dry"], 0, DRAIN, false),
            (ADAPTIVE, Light, &["ran_dry"], 0, DRAIN, false),
            // Work already waits in user space: submit only, whatever the rest says.
            (FIXED, Heavy, &["ready"], BIG, Enter::Submit, false),
            (FIXED, Heavy, &["peer"], BIG, Enter::Submit, false),
            (FIXED, Heavy, &["peer", "walk", "reap_due"], BIG, Enter::Submit, false),
            (ADAPTIVE, Light, &["ready", "ran_dry"], 0, Enter::Submit, false),
            // An unfinished walk: reap at most every LIVENESS_REAP_EVERY, else submit.
            (FIXED, Heavy, &["walk"], BIG, Enter::Submit, false),
            (FIXED, Heavy, &["walk", "reap_due"], BIG, Enter::Reap { want: 1 }, false),
            (ADAPTIVE, Light, &["walk", "ran_dry"], 0, Enter::Submit, false),
            // Stopping: drain, whatever else holds.
            (FIXED, Heavy, &["stop", "peer", "ready"], BIG, DRAIN, false),
            (NEVER, Light, &["stop"], 0, DRAIN, false),
        ];
        for (n, &(strategy, load, set, queued, enter, backlog)) in rows.iter().enumerate() {
            let d = decide(inputs(strategy, load, set), || Some(queued));
            assert_eq!(
                d,
                Decision { enter, backlog },
                "row {n}: {strategy:?} {load:?} {set:?} {queued}"
            );
        }
        // An unreadable queue size never blocks batching.
        let d = decide(inputs(FIXED, Light, &[]), || None);
        assert_eq!(d.enter, sleep(BATCH_WANT, 200));
    }

    #[test]
    fn the_queue_is_asked_only_when_the_decision_would_batch() {
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            Some(BIG)
        };
        for set in [
            &["ready"][..],
            &["peer"],
            &["walk"],
            &["ran_dry"],
            &["stop"],
        ] {
            decide(inputs(FIXED, Heavy, set), ask);
        }
        decide(inputs(ADAPTIVE, Light, &[]), ask);
        assert_eq!(asked.get(), 0);
        decide(inputs(ADAPTIVE, Busy, &[]), ask);
        assert_eq!(asked.get(), 1);
    }
}
