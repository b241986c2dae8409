//! The io_uring engine: one shard's event loop.
//!
//! Per shard: one ring (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN), one multishot
//! RecvMsg over a provided buffer ring, ack sends from a fixed pool of send slots, and a
//! read on the shard's eventfd that peers use to wake it after a hand-off. The loop:
//! reap completions in a batch → hand datagrams to the `ShardCore` → recycle buffers in
//! one commit → drain inbound hand-offs → flush the table batch and run liveness →
//! publish outbound hand-offs → wait (see `wait`). It allocates nothing after start-up.

use super::{ShardContext, ShardInfo, PUBLISH_EVERY};
use crate::config::WaitStrategy;
use crate::core::codec::MAX_DATAGRAM_BYTES;
use crate::core::shard::ShardCore;
use crate::engine::token::Token;
use crate::sys::bufring::{BufRing, BufRingShape};
use crate::sys::socket;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Buffer group id of the shard's receive buffers (one group per ring).
/// During a liveness walk, new completions are brought in at most this often.
const LIVENESS_REAP_EVERY: Duration = Duration::from_micros(20);
const BGID: u16 = 0;
/// Reaped completions per batch before running the rest of the loop.
const REAP_BATCH: usize = 1024;
/// `want` when batching by time: larger than any burst, so the wait ends at min-wait.
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
/// Window over which the adaptive strategy measures the completion rate.
const ADAPTIVE_WINDOW_US: u64 = 1_000;
/// A batching wait is not taken when at least this much (skb truesize, about 50
/// small datagrams) already waits in the socket: with DEFER_TASKRUN a sleeping shard
/// receives nothing until its min-wait ends, and each enter brings in only a bounded
/// run of completions, so batch-sleeping over a backlog caps the drain rate and turns
/// a short stall into a lasting overload (results/2026-11-24-kernel-floor).
const BACKLOG_NO_BATCH_BYTES: u32 = 64 << 10;

/// One in-flight ack datagram. Pinned inside a boxed slice that is never resized; the
/// kernel reads `msg`, `iov`, `addr` and `buf` until the send's completion arrives.
#[repr(C)]
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    buf: [u8; MAX_DATAGRAM_BYTES],
}

/// Receive metadata lengths the kernel lays out ahead of each payload.
fn recv_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    // No control data: kernel drops are polled with SO_MEMINFO (see sys::socket).
    m.msg_controllen = 0;
    m
}

/// How the next wait goes: how many completions it wants and how long it may sleep
/// gathering them.
#[derive(Debug, PartialEq, Eq)]
struct WaitPlan {
    want: usize,
    min_wait_us: u32,
    /// Data is known to be queued: run the deferred receive until the socket is empty
    /// or the buffer ring is dry, and return without sleeping.
    drain: bool,
    /// The drain replaces a batching wait because the socket held a backlog.
    backlog: bool,
}

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

/// The wait strategy applied to this moment. `queued_bytes` is asked only when the
/// plan would batch (one getsockopt per batching wait).
fn wait_plan(
    strategy: WaitStrategy,
    load: Load,
    ran_dry: bool,
    queued_bytes: impl FnOnce() -> Option<u32>,
) -> WaitPlan {
    let drain = WaitPlan {
        want: BATCH_WANT,
        min_wait_us: 0,
        drain: true,
        backlog: false,
    };
    let batch_us = match strategy {
        // The receive was re-armed over queued data.
        _ if ran_dry => return drain,
        WaitStrategy::Fixed { us } => us,
        WaitStrategy::Adaptive {
            batch_us,
            heavy_batch_us,
        } => match load {
            Load::Light => 0,
            Load::Busy => batch_us,
            Load::Heavy => heavy_batch_us,
        },
    };
    if batch_us == 0 {
        return WaitPlan {
            want: 1,
            min_wait_us: 0,
            drain: false,
            backlog: false,
        };
    }
    if queued_bytes().is_some_and(|b| b >= BACKLOG_NO_BATCH_BYTES) {
        return WaitPlan {
            backlog: true,
            ..drain
        };
    }
    WaitPlan {
        want: BATCH_WANT,
        min_wait_us: batch_us,
        drain: false,
        backlog: false,
    }
}

pub(super) fn run(ctx: ShardContext) {
    super::run_shard(ctx, Shard::new, |s| s.info.clone(), Shard::run);
}

struct Shard {
    ring: IoUring,
    bufring: BufRing,
    core: ShardCore,
    recv_msg: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free_slots: Vec<u32>,
    wake_buf: Box<u64>,
    ack_buf: Box<[u8; MAX_DATAGRAM_BYTES]>,
    info: ShardInfo,
    rearm_recv: bool,
    rearm_wake: bool,
    /// The ring ran dry since the last wait: data is queued, so the next wait must
    /// not add a batching delay (the re-armed receive completes at once).
    ran_dry: bool,
    /// Last SK_MEMINFO_DROPS value read from the socket.
    socket_drops_seen: u32,
    last_error_log: Option<Instant>,
    /// When a liveness walk last brought completions in (a zero-timeout GETEVENTS).
    last_getevents: Instant,
}

impl Shard {
    fn new(ctx: &mut ShardContext) -> anyhow::Result<Shard> {
        use anyhow::Context;
        let cfg = &ctx.config;
        super::pin_to(ctx.cpu)?;
        // CQ: every buffer can be in one completion at once, plus sends and the wake-up.
        let sq_entries = cfg.ack_slots.next_power_of_two();
        let cq_entries = (cfg.buf_count as u32 * 2 + cfg.ack_slots * 2)
            .next_power_of_two()
            .max(2 * sq_entries);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_cqsize(cq_entries)
            .build(sq_entries)
            .context("creating the io_uring (run `ringbeat check`)")?;
        let bufring = BufRing::new(
            &ring.submitter(),
            BufRingShape {
                count: cfg.buf_count,
                size: cfg.buf_size,
            },
            BGID,
        )?;
        let core = super::new_core(ctx)?;
        // SAFETY: SendSlot is plain data (pointers, integers, bytes); all-zero is valid
        // and every pointer is set before use.
        let mut slots: Box<[SendSlot]> = (0..cfg.ack_slots)
            .map(|_| unsafe { std::mem::zeroed::<SendSlot>() })
            .collect();
        for s in slots.iter_mut() {
            s.iov.iov_base = s.buf.as_mut_ptr().cast();
            s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
            s.msg.msg_iov = &mut s.iov;
            s.msg.msg_iovlen = 1;
        }
        let info = ShardInfo {
            index: ctx.index,
            cpu: ctx.cpu,
            numa_node: bufring.node(),
            arena_addr: bufring.arena_addr(),
            arena_bytes: bufring.arena_bytes(),
            // RINGBEAT_FORCE_NO_MIN_WAIT=1 behaves as on Linux < 6.12 (for testing the
            // fallback on kernels that have min-wait).
            min_wait_supported: ring.params().is_feature_min_timeout()
                && std::env::var_os("RINGBEAT_FORCE_NO_MIN_WAIT").is_none(),
        };
        Ok(Shard {
            ring,
            bufring,
            core,
            recv_msg: Box::new(recv_msghdr()),
            free_slots: (0..cfg.ack_slots).rev().collect(),
            slots,
            wake_buf: Box::new(0),
            ack_buf: Box::new([0; MAX_DATAGRAM_BYTES]),
            info,
            rearm_recv: true,
            rearm_wake: true,
            ran_dry: false,
            socket_drops_seen: 0,
            last_error_log: None,
            last_getevents: Instant::now(),
        })
    }

    /// Pushes an SQE, submitting first if the queue is full. False if it cannot.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry pushed here points only at memory owned by `self`
            // (recv msghdr, send slots, wake buffer) that stays put until its completion
            // is reaped; the ring is dropped before that memory (see `run`).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.ring.submit().is_err() {
                break;
            }
            self.core.stats_mut().enters += 1;
        }
        false
    }

    fn arm(&mut self, sock: i32, wake_fd: i32) {
        if self.rearm_recv {
            let e = opcode::RecvMsgMulti::new(types::Fd(sock), &*self.recv_msg, BGID)
                .build()
                .user_data(Token::Recv.encode());
            self.rearm_recv = !self.push(&e);
        }
        if self.rearm_wake {
            let e = opcode::Read::new(
                types::Fd(wake_fd),
                (&mut *self.wake_buf as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(Token::Wake.encode());
            self.rearm_wake = !self.push(&e);
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

    fn run(&mut self, ctx: &mut ShardContext) {
        let sock = ctx.socket.as_raw_fd();
        let wake_fd = ctx.parkers[ctx.index as usize].efd.raw();
        let mut last_publish = Instant::now();
        let mut load = Load::Light;
        let (mut window_start_us, mut window_cqes) = (0u64, 0u64);
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(REAP_BATCH);
        loop {
            let stopping = ctx.shared.stop.load(Ordering::Relaxed);
            let now_ms = ctx.base.elapsed().as_millis() as u64;
            // 1. Reap a batch of completions.
            let mut reaped = 0;
            loop {
                cqes.clear();
                cqes.extend(
                    self.ring
                        .completion()
                        .take(REAP_BATCH)
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
                if cqes.is_empty() {
                    break;
                }
                reaped += cqes.len();
                for &(ud, res, flags) in cqes.iter() {
                    self.on_completion(ctx, ud, res, flags, now_ms);
                }
                self.bufring.commit();
                if cqes.len() < REAP_BATCH {
                    break;
                }
            }
            self.core.stats_mut().cqes += reaped as u64;
            // 2-4. Frames peers handed to us, table batch, a liveness slice, events,
            //      hand-offs to peers (the whole walk comes in `finish`).
            super::after_receive(ctx, &mut self.core, now_ms, false);
            if stopping {
                self.finish(ctx);
                return;
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish_stats(ctx);
            }
            // 5. Re-arm what ended in this batch (before waiting: a receive that ran
            //    dry must be back in the ring before we sleep), then wait.
            self.arm(sock, wake_fd);
            if let WaitStrategy::Adaptive { .. } = ctx.config.wait {
                window_cqes += reaped as u64;
                let now_us = ctx.base.elapsed().as_micros() as u64;
                let elapsed_us = now_us - window_start_us;
                if elapsed_us >= ADAPTIVE_WINDOW_US {
                    load = Load::of(window_cqes, elapsed_us);
                    (window_start_us, window_cqes) = (now_us, 0);
                }
            }
            self.wait(ctx, load, now_ms);
        }
    }

    fn on_completion(
        &mut self,
        ctx: &mut ShardContext,
        ud: u64,
        res: i32,
        flags: u32,
        now_ms: u64,
    ) {
        match Token::decode(ud) {
            Some(Token::Recv) => {
                if !cqueue::more(flags) {
                    self.rearm_recv = true;
                    self.core.stats_mut().rearms += 1;
                }
                if res < 0 {
                    if -res == libc::ENOBUFS {
                        self.core.stats_mut().ring_dry += 1;
                        self.ran_dry = true;
                    } else if -res != libc::ECANCELED {
                        self.core.stats_mut().recv_errors += 1;
                        self.log_error("receive failed", -res);
                    }
                    return;
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    self.core.stats_mut().recv_errors += 1;
                    return;
                };
                self.on_datagram(ctx, bid, res as usize, now_ms);
                self.bufring.recycle(bid);
            }
            Some(Token::Send(slot)) => {
                let frames = self.slots[slot as usize].iov.iov_len as u64 / 32;
                if res < 0 {
                    let s = self.core.stats_mut();
                    s.ack_datagrams_dropped += 1;
                    s.acks_dropped += frames;
                    self.log_error("ack send failed", -res);
                } else {
                    let s = self.core.stats_mut();
                    s.ack_datagrams += 1;
                    s.acks_sent += frames;
                }
                self.free_slots.push(slot);
            }
            Some(Token::Wake) => {
                self.rearm_wake = true;
            }
            None => {
                self.core.stats_mut().recv_errors += 1;
                tracing::error!(user_data = ud, "completion with unknown user_data");
            }
        }
    }

    fn on_datagram(&mut self, ctx: &mut ShardContext, bid: u16, len: usize, now_ms: u64) {
        let buf = self.bufring.buffer(bid, len);
        let Ok(out) = types::RecvMsgOut::parse(buf, &self.recv_msg) else {
            self.core.stats_mut().recv_errors += 1;
            return;
        };
        if out.is_payload_truncated() {
            let s = self.core.stats_mut();
            s.datagrams += 1;
            s.count_datagram_error(crate::core::codec::DatagramError::TooLong);
            return;
        }
        let outbound = &mut ctx.outbound;
        let ack_len = self.core.ingest_datagram(
            out.payload_data(),
            now_ms,
            &mut self.ack_buf,
            |target, frame| {
                outbound[target as usize]
                    .as_mut()
                    .is_some_and(|p| p.push(frame))
            },
        );
        if ack_len == 0 {
            return;
        }
        let name = out.name_data();
        let name_len = (out.incoming_name_len() as usize).min(name.len());
        let Some(slot) = self.free_slots.pop() else {
            let s = self.core.stats_mut();
            s.ack_datagrams_dropped += 1;
            s.acks_dropped += (ack_len / 32) as u64;
            return;
        };
        let s = &mut self.slots[slot as usize];
        s.buf[..ack_len].copy_from_slice(&self.ack_buf[..ack_len]);
        s.iov.iov_len = ack_len;
        // SAFETY: `addr` is a sockaddr_storage (128 bytes) and `name_len` ≤ 28.
        let addr_bytes = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut s.addr as *mut libc::sockaddr_storage).cast::<u8>(),
                name_len,
            )
        };
        addr_bytes.copy_from_slice(&name[..name_len]);
        s.msg.msg_namelen = name_len as u32;
        let e = opcode::SendMsg::new(types::Fd(ctx.socket.as_raw_fd()), &s.msg)
            .build()
            .user_data(Token::Send(slot).encode());
        if !self.push(&e) {
            self.free_slots.push(slot);
            let s = self.core.stats_mut();
            s.ack_datagrams_dropped += 1;
            s.acks_dropped += (ack_len / 32) as u64;
        }
    }

    fn publish_stats(&mut self, ctx: &ShardContext) {
        super::publish_stats(ctx, &mut self.core, &mut self.socket_drops_seen);
    }

    fn wait(&mut self, ctx: &mut ShardContext, load: Load, now_ms: u64) {
        let parker = &ctx.parkers[ctx.index as usize];
        parker.parked.store(true, Ordering::SeqCst);
        let peer_frames = ctx.inbound.iter().any(|c| c.has_pending());
        let until_tick_ms = self
            .core
            .next_deadline_ms()
            .saturating_sub(now_ms)
            .clamp(1, ctx.config.tick_ms as u64);
        let ts = types::Timespec::from(Duration::from_millis(until_tick_ms));
        let ran_dry = std::mem::take(&mut self.ran_dry);
        let fd = ctx.socket.as_raw_fd();
        let plan = wait_plan(ctx.config.wait, load, ran_dry, || {
            socket::socket_queued_bytes(fd).ok()
        });
        if plan.backlog {
            self.core.stats_mut().backlog_polls += 1;
        }
        let (want, min_wait_us) = (plan.want, plan.min_wait_us);
        let want =
            if peer_frames || self.core.liveness_pending() || !self.ring.completion().is_empty() {
                0
            } else {
                want
            };
        let result = if want == 0
            && self.core.liveness_pending()
            && !peer_frames
            && self.last_getevents.elapsed() >= LIVENESS_REAP_EVERY
        {
            // Between slices of a liveness walk: run the deferred completions (an enter
            // with GETEVENTS, zero timeout) so datagrams that arrived meanwhile are
            // reaped during the walk instead of after it. Rate-limited: reaping after
            // every slice cost 6% of throughput at saturation.
            self.last_getevents = Instant::now();
            self.enter_without_sleeping(1)
        } else if want == 0 {
            self.ring.submit()
        } else if plan.drain {
            // Queued data: the enter runs the deferred receive until `want` completions,
            // an empty socket or a dry ring.
            self.enter_without_sleeping(want)
        } else {
            // Without min-wait (Linux < 6.12) a batch is a plain timeout of the batch
            // length: the wait returns after it whatever arrived, never a whole tick.
            let batch_ts = types::Timespec::from(Duration::from_micros(min_wait_us as u64));
            let fallback = min_wait_us > 0 && !self.info.min_wait_supported;
            let mut args =
                types::SubmitArgs::new().timespec(if fallback { &batch_ts } else { &ts });
            if min_wait_us > 0 && self.info.min_wait_supported {
                args = args.min_wait_usec(min_wait_us);
            }
            self.core.stats_mut().wakeups += 1;
            self.ring.submitter().submit_with_args(want, &args)
        };
        parker.parked.store(false, Ordering::Relaxed);
        self.core.stats_mut().enters += 1;
        if let Err(e) = result {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => self.log_error("io_uring_enter failed", e.raw_os_error().unwrap_or(0)),
            }
        }
    }

    /// Submit, and run deferred completions (GETEVENTS with a zero timeout) until
    /// `want` are ready or none is left to run; never sleeps.
    fn enter_without_sleeping(&mut self, want: usize) -> std::io::Result<usize> {
        let zero = types::Timespec::new();
        self.ring
            .submitter()
            .submit_with_args(want, &types::SubmitArgs::new().timespec(&zero))
    }

    /// Stop: reap what already arrived, apply it, ship events and final counters.
    fn finish(&mut self, ctx: &mut ShardContext) {
        let _ = self.ring.submit_and_wait(0);
        let now_ms = ctx.base.elapsed().as_millis() as u64;
        let pending: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in pending {
            self.on_completion(ctx, ud, res, flags, now_ms);
        }
        super::after_receive(ctx, &mut self.core, now_ms, true);
        self.publish_stats(ctx);
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

    /// (want, min_wait_us, drain, backlog)
    fn plan(s: WaitStrategy, load: Load, ran_dry: bool, queued: u32) -> (usize, u32, bool, bool) {
        let p = wait_plan(s, load, ran_dry, || Some(queued));
        (p.want, p.min_wait_us, p.drain, p.backlog)
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
    fn batches_only_when_busy_and_nothing_is_waiting() {
        assert_eq!(plan(ADAPTIVE, Light, false, 0), (1, 0, false, false));
        assert_eq!(
            plan(ADAPTIVE, Busy, false, 0),
            (BATCH_WANT, 50, false, false)
        );
        assert_eq!(
            plan(ADAPTIVE, Heavy, false, 0),
            (BATCH_WANT, 200, false, false)
        );
        let fixed = WaitStrategy::Fixed { us: 200 };
        assert_eq!(
            plan(fixed, Light, false, 1000),
            (BATCH_WANT, 200, false, false)
        );
        let never = WaitStrategy::Fixed { us: 0 };
        assert_eq!(plan(never, Heavy, false, 1 << 20), (1, 0, false, false));
    }

    #[test]
    fn a_backlog_or_a_dry_ring_turns_a_batch_into_a_drain() {
        let fixed = WaitStrategy::Fixed { us: 200 };
        let big = BACKLOG_NO_BATCH_BYTES;
        assert_eq!(
            plan(ADAPTIVE, Heavy, false, big),
            (BATCH_WANT, 0, true, true)
        );
        assert_eq!(plan(fixed, Light, false, big), (BATCH_WANT, 0, true, true));
        assert_eq!(
            plan(fixed, Light, false, big - 1),
            (BATCH_WANT, 200, false, false)
        );
        assert_eq!(plan(fixed, Light, true, 0), (BATCH_WANT, 0, true, false));
        // An unreadable queue size never blocks batching.
        let p = wait_plan(fixed, Light, false, || None);
        assert_eq!((p.want, p.min_wait_us), (BATCH_WANT, 200));
    }

    #[test]
    fn the_queue_is_asked_only_when_the_plan_would_batch() {
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            Some(0)
        };
        wait_plan(ADAPTIVE, Light, false, ask);
        wait_plan(WaitStrategy::Fixed { us: 100 }, Heavy, true, ask);
        assert_eq!(asked.get(), 0);
        wait_plan(ADAPTIVE, Busy, false, ask);
        assert_eq!(asked.get(), 1);
    }
}
