//! The tokio-uring engine: one tokio-uring runtime per pinned shard, kept to compare
//! against the foundation engine on the same core, shards, ownership and counters.
//! tokio-uring offers one-shot `recv_from` / `send_to` with owned buffers and neither
//! multishot receive nor provided buffer rings, so every datagram costs one submitted
//! receive with its own buffer, and (inside tokio-uring) a few heap allocations per
//! operation. That is exactly what the comparison measures.
//!
//! Per shard: `RECV_DEPTH` receives in flight, each owning a buffer; a completed
//! receive is ingested and resubmitted with the same buffer. Acks go out with
//! `send_to` from a fixed pool of buffers; when the pool is empty the ack is a counted
//! drop, so receiving never waits on sending. The peers' wake-up eventfd is watched
//! through tokio's reactor; ticks come from a tokio timer.
//!
//! Event density: `cqes` counts receive and send completions, `wakeups` the times the
//! shard task was woken after it had nothing to do. tokio-uring submits inside its
//! runtime (when the thread parks), out of the engine's sight, so `enters` stays 0;
//! the experiment scripts count every engine's system calls with `perf stat` instead.

use super::{publish_stats, ShardContext, ShardInfo, PUBLISH_EVERY};
use crate::core::codec::{DatagramError, FRAME_BYTES, MAX_DATAGRAM_BYTES};
use crate::core::shard::ShardCore;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Receives kept in flight. Measured on the reference machine (one shard, 100K devices,
/// batch 1): at 1M heartbeats/s depth 1, 4 and 16 saturate the core (0.29M, 0.62M,
/// 0.89M heartbeats per core-second, p99 10–35 ms) while 64 keeps up (1.01M, p99
/// 1.6 ms); at 10K/s each wake-up costs ~15 µs of core at depth 1 and ~32 µs at 64,
/// because every armed receive on the socket is woken and retried per datagram. The
/// comparison runs near saturation, so capacity decides.
const RECV_DEPTH: usize = 64;
/// Ack buffers (and so ack sends in flight).
const ACK_BUFFERS: usize = 64;
/// Submission queue entries of each shard's ring.
const RING_ENTRIES: u32 = 256;

pub(super) fn run(ctx: ShardContext) {
    super::run_shard(ctx, TokioShard::new, |s| s.info.clone(), TokioShard::run);
}

struct TokioShard {
    rt: tokio_uring::Runtime,
    core: ShardCore,
    info: ShardInfo,
    socket_drops_seen: u32,
}

/// The shard's wake-up eventfd, watched by tokio's reactor (owned by the parkers).
struct WakeFd(RawFd);

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl TokioShard {
    fn new(ctx: &mut ShardContext) -> anyhow::Result<TokioShard> {
        use anyhow::Context;
        super::pin_to(ctx.cpu)?;
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))
            .context("starting the tokio-uring runtime")?;
        let core = super::new_core(ctx)?;
        Ok(TokioShard {
            rt,
            core,
            info: ShardInfo::without_arena(ctx),
            socket_drops_seen: 0,
        })
    }

    fn run(&mut self, ctx: &mut ShardContext) {
        let TokioShard {
            rt,
            core,
            socket_drops_seen,
            ..
        } = self;
        rt.block_on(async {
            if let Err(e) = shard_loop(ctx, core, socket_drops_seen).await {
                tracing::error!(shard = ctx.index, "tokio-uring shard stopped: {e:#}");
                ctx.shared.stop.store(true, Ordering::Relaxed);
            }
        });
    }
}

async fn shard_loop(
    ctx: &mut ShardContext,
    core: &mut ShardCore,
    socket_drops_seen: &mut u32,
) -> anyhow::Result<()> {
    // A second descriptor of the same socket (same SO_REUSEPORT member): the runtime
    // owns this one, the shard keeps its own for SO_MEMINFO.
    let socket =
        tokio_uring::net::UdpSocket::from_std(std::net::UdpSocket::from(ctx.socket.try_clone()?));
    let wake_fd = WakeFd(ctx.parkers[ctx.index as usize].efd.raw());
    // SAFETY: the eventfd belongs to the parkers, which `ctx` holds (an Arc) for longer
    // than this function runs, so it stays open and the same file while `wake` lives.
    let wake = unsafe { AsyncFd::register_with_interest(wake_fd, Interest::READABLE) }?;
    let tick = Duration::from_millis(ctx.config.tick_ms as u64);
    let mut sleep = pin!(tokio::time::sleep(tick));

    let mut recvs = FuturesUnordered::new();
    for _ in 0..RECV_DEPTH {
        // One byte more than the largest valid datagram: a longer one shows as too long.
        recvs.push(socket.recv_from(Vec::with_capacity(MAX_DATAGRAM_BYTES + 1)));
    }
    let mut sends = FuturesUnordered::new();
    let mut ack_pool: Vec<Vec<u8>> = (0..ACK_BUFFERS)
        .map(|_| Vec::with_capacity(MAX_DATAGRAM_BYTES))
        .collect();
    let mut ack_buf = Box::new([0u8; MAX_DATAGRAM_BYTES]);
    let mut last_publish = Instant::now();
    let mut last_error_log: Option<Instant> = None;

    loop {
        let stopping = ctx.shared.stop.load(Ordering::Relaxed);
        let parker = &ctx.parkers[ctx.index as usize];
        // Announce that we may sleep before the last look at the hand-off rings: a
        // peer either sees the flag and signals the eventfd, or we see its frames.
        parker.parked.store(true, Ordering::SeqCst);
        let work_pending = core.liveness_pending() || ctx.inbound.iter().any(|c| c.has_pending());
        let mut polled_idle = false;
        // Wait until a receive completes, a peer wakes us or the tick fires; handle
        // every completion that is ready.
        poll_fn(|cx| {
            if polled_idle {
                core.stats_mut().wakeups += 1;
            }
            let now_ms = ctx.base.elapsed().as_millis() as u64;
            let mut progressed = work_pending || stopping;
            while let Poll::Ready(Some((res, buf))) = sends.poll_next_unpin(cx) {
                finish_send(core, &mut ack_pool, res, buf);
            }
            while let Poll::Ready(Some((res, mut buf))) = recvs.poll_next_unpin(cx) {
                progressed = true;
                core.stats_mut().cqes += 1;
                match res {
                    Ok((n, _)) if n > MAX_DATAGRAM_BYTES => {
                        let s = core.stats_mut();
                        s.datagrams += 1;
                        s.count_datagram_error(DatagramError::TooLong);
                    }
                    Ok((n, peer)) => {
                        let outbound = &mut ctx.outbound;
                        let ack_len =
                            core.ingest_datagram(&buf[..n], now_ms, &mut ack_buf, |t, f| {
                                outbound[t as usize].as_mut().is_some_and(|p| p.push(f))
                            });
                        if ack_len > 0 {
                            if let Some(mut out) = ack_pool.pop() {
                                out.clear();
                                out.extend_from_slice(&ack_buf[..ack_len]);
                                sends.push(socket.send_to(out, peer));
                            } else {
                                let s = core.stats_mut();
                                s.ack_datagrams_dropped += 1;
                                s.acks_dropped += (ack_len / FRAME_BYTES) as u64;
                            }
                        }
                    }
                    Err(e) => {
                        core.stats_mut().recv_errors += 1;
                        if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            last_error_log = Some(Instant::now());
                            tracing::warn!(shard = ctx.index, "recv_from failed: {e}");
                        }
                    }
                }
                buf.clear();
                recvs.push(socket.recv_from(buf));
            }
            // Sends queued above are submitted when first polled: poll them now.
            while let Poll::Ready(Some((res, buf))) = sends.poll_next_unpin(cx) {
                finish_send(core, &mut ack_pool, res, buf);
            }
            if let Poll::Ready(Ok(mut guard)) = wake.poll_read_ready(cx) {
                parker.efd.drain();
                guard.clear_ready();
                progressed = true;
            }
            if sleep.as_mut().poll(cx).is_ready() {
                sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(1).max(tick));
                progressed = true;
            }
            if progressed {
                Poll::Ready(())
            } else {
                polled_idle = true;
                Poll::Pending
            }
        })
        .await;
        parker.parked.store(false, Ordering::Relaxed);

        // Hand-offs in, table batch, liveness, events, hand-offs out.
        let now_ms = ctx.base.elapsed().as_millis() as u64;
        super::after_receive(ctx, core, now_ms, stopping);
        if stopping {
            publish_stats(ctx, core, socket_drops_seen);
            return Ok(());
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            last_publish = Instant::now();
            publish_stats(ctx, core, socket_drops_seen);
        }
    }
}

/// Counts a finished ack send and returns its buffer to the pool.
fn finish_send(
    core: &mut ShardCore,
    pool: &mut Vec<Vec<u8>>,
    res: std::io::Result<usize>,
    buf: Vec<u8>,
) {
    let s = core.stats_mut();
    s.cqes += 1;
    match res {
        Ok(n) => {
            s.ack_datagrams += 1;
            s.acks_sent += (n / FRAME_BYTES) as u64;
        }
        Err(_) => {
            s.ack_datagrams_dropped += 1;
            s.acks_dropped += (buf.len() / FRAME_BYTES) as u64;
        }
    }
    pool.push(buf);
}
