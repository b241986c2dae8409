//! The tokio-uring engine: one tokio-uring runtime per pinned shard, kept to compare
//! against the foundation engine on the same core, shards, ownership and counters.
//! tokio-uring offers one-shot `recv_from` / `send_to` with owned buffers and neither
//! multishot receive nor provided buffer rings, so every datagram costs one submitted
//! receive with its own buffer, and (inside tokio-uring) a few heap allocations per
//! operation. That is exactly what the comparison measures.
//!
//! Per shard: `RECV_DEPTH` receives in flight, each owning a buffer; a completed
//! receive is ingested and resubmitted with the same buffer. The runtime only runs
//! inside `block_on`, so the engine's `wait` is one `block_on` of a future that handles
//! every ready completion and returns once something happened (datagrams are ingested
//! there; `receive` has nothing left to do). The operations outlive each `block_on`,
//! so they are boxed futures owned by the engine (one more allocation per operation,
//! beside tokio-uring's own). Acks go out with
//! `send_to` from a fixed pool of buffers; when the pool is empty the ack is a counted
//! drop, so receiving never waits on sending. The peers' wake-up eventfd is watched
//! through tokio's reactor; ticks come from a tokio timer.
//!
//! Event density: `cqes` counts receive and send completions, `wakeups` the times the
//! shard task was woken after it had nothing to do. tokio-uring submits inside its
//! runtime (when the thread parks), out of the engine's sight, so `enters` stays 0;
//! the experiment scripts count every engine's system calls with `perf stat` instead.

use super::shard_loop::{AckStats, Dest, Engine, Ingest, Wait};
use super::{ShardContext, ShardInfo};
use crate::core::codec::MAX_DATAGRAM_BYTES;
use crate::sys::notify::EventFd;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Receives kept in flight. Measured on the reference machine (one shard, 100K devices,
/// batch 1): at 1M heartbeats/s depth 1, 4 and 16 saturate the core (0.29M, 0.62M,
/// 0.89M heartbeats per core-second, p99 10–35 ms) while 64 keeps up (1.01M, p99
/// 1.6 ms); at 10K/s each wake-up costs ~15 µs of core at depth 1 and ~32 µs at 64,
/// because every armed receive on the socket is woken and retried per datagram. The
/// comparison runs near saturation, so capacity decides.
const RECV_DEPTH: usize = 64;
/// Ack buffers (and so ack sends in flight): as many as receives in flight, so one
/// round of completed receives can always be acked.
const ACK_BUFFERS: usize = 64;
/// Submission queue entries of each shard's ring: room for every receive and send in
/// flight (128) twice over.
const RING_ENTRIES: u32 = 256;
/// Longest a wait lasts while draining at stop.
const STOP_WAIT: Duration = Duration::from_millis(1);

type Op<T> = Pin<Box<dyn Future<Output = T>>>;
type Received = (std::io::Result<(usize, SocketAddr)>, Vec<u8>);
type Sent = (std::io::Result<usize>, Vec<u8>);

/// One shard's tokio-uring engine. Fields drop in declaration order: the operations
/// and the reactor registration go before the runtime (`rt`, last) that they need.
pub(super) struct TokioEngine {
    recvs: FuturesUnordered<Op<Received>>,
    sends: FuturesUnordered<Op<Sent>>,
    ack_pool: Vec<Vec<u8>>,
    /// Bytes of the ack sends in flight (for the count of those a stop leaves).
    in_flight: usize,
    /// The shard's wake-up eventfd (a second descriptor of it), watched by tokio's
    /// reactor.
    wake: AsyncFd<EventFd>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    socket: Rc<tokio_uring::net::UdpSocket>,
    index: usize,
    tick: Duration,
    /// Shard time zero (the loop's clock).
    base: Instant,
    info: ShardInfo,
    last_error_log: Option<Instant>,
    rt: tokio_uring::Runtime,
}

impl TokioEngine {
    pub(super) fn new(ctx: &mut ShardContext) -> anyhow::Result<TokioEngine> {
        use anyhow::Context;
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))
            .context("starting the tokio-uring runtime")?;
        // A second descriptor of the same socket (same SO_REUSEPORT member): the
        // runtime owns this one, the shard keeps its own for SO_MEMINFO.
        let std_socket = std::net::UdpSocket::from(ctx.socket.try_clone()?);
        let efd = &ctx.parkers[ctx.index as usize].efd;
        let tick = Duration::from_millis(ctx.config.liveness.tick_ms as u64);
        // The reactor registration and the timer need the runtime's context.
        let (socket, wake, sleep) = rt.block_on(async {
            let socket = Rc::new(tokio_uring::net::UdpSocket::from_std(std_socket));
            let wake = crate::sys::notify::async_eventfd(efd);
            (socket, wake, Box::pin(tokio::time::sleep(tick)))
        });
        let mut engine = TokioEngine {
            recvs: FuturesUnordered::new(),
            sends: FuturesUnordered::new(),
            in_flight: 0,
            ack_pool: (0..ACK_BUFFERS)
                .map(|_| Vec::with_capacity(MAX_DATAGRAM_BYTES))
                .collect(),
            wake: wake.context("registering the wake-up eventfd")?,
            sleep,
            socket,
            index: ctx.index as usize,
            tick,
            base: ctx.base,
            info: ShardInfo::without_arena(ctx),
            last_error_log: None,
            rt,
        };
        for _ in 0..RECV_DEPTH {
            // One byte more than the largest valid datagram: a longer one shows as
            // too long instead of being cut to a valid size.
            engine.recv(Vec::with_capacity(MAX_DATAGRAM_BYTES + 1));
        }
        Ok(engine)
    }

    fn recv(&mut self, buf: Vec<u8>) {
        let socket = self.socket.clone();
        self.recvs
            .push(Box::pin(async move { socket.recv_from(buf).await }));
    }
}

impl Engine for TokioEngine {
    /// Nothing: completions are only handled inside the runtime, in `wait`.
    fn receive(&mut self, _io: &mut Ingest<'_>, _now_ms: u64) {}

    fn wait(&mut self, io: &mut Ingest<'_>, wait: Wait) {
        let TokioEngine {
            recvs,
            sends,
            ack_pool,
            in_flight,
            wake,
            sleep,
            socket,
            index,
            tick,
            base,
            last_error_log,
            rt,
            ..
        } = self;
        if wait.stopping {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + STOP_WAIT);
        }
        // Busy: handle what is ready and return without letting the runtime park.
        let mut progressed = wait.busy();
        let mut polled_idle = false;
        rt.block_on(poll_fn(|cx| {
            if polled_idle {
                io.stats().wakeups += 1;
            }
            let now_ms = base.elapsed().as_millis() as u64;
            while let Poll::Ready(Some((res, buf))) = sends.poll_next_unpin(cx) {
                finish_send(io, ack_pool, in_flight, res, buf);
            }
            while let Poll::Ready(Some((res, mut buf))) = recvs.poll_next_unpin(cx) {
                progressed = true;
                io.stats().cqes += 1;
                match res {
                    Ok((n, _)) if n > MAX_DATAGRAM_BYTES => io.too_long(),
                    Ok((n, peer)) => {
                        let ack = io.datagram(
                            &buf[..n],
                            crate::engine::shard_loop::Source::Addr(peer),
                            now_ms,
                        );
                        let len = ack.len();
                        if len > 0 && !queue_ack(sends, ack_pool, in_flight, socket, peer, ack) {
                            io.stats().count_acks_dropped(1, len);
                        }
                    }
                    Err(e) => {
                        io.stats().recv_errors += 1;
                        if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            *last_error_log = Some(Instant::now());
                            tracing::warn!(shard = *index, "recv_from failed: {e}");
                        }
                    }
                }
                buf.clear();
                let socket = socket.clone();
                recvs.push(Box::pin(async move { socket.recv_from(buf).await }));
            }
            // Sends queued above are submitted when first polled: poll them now.
            while let Poll::Ready(Some((res, buf))) = sends.poll_next_unpin(cx) {
                finish_send(io, ack_pool, in_flight, res, buf);
            }
            if let Poll::Ready(Ok(mut guard)) = wake.poll_read_ready(cx) {
                wake.get_ref().drain();
                guard.clear_ready();
                progressed = true;
            }
            if sleep.as_mut().poll(cx).is_ready() {
                sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(1).max(*tick));
                progressed = true;
            }
            if progressed {
                Poll::Ready(())
            } else {
                polled_idle = true;
                Poll::Pending
            }
        }));
    }

    fn send_ready(&mut self, io: &mut Ingest<'_>) {
        let stats = io.core.stats_mut();
        io.held.send_ready(|to, acks| {
            let queued = match to {
                Dest::Addr(peer) => queue_ack(
                    &mut self.sends,
                    &mut self.ack_pool,
                    &mut self.in_flight,
                    &self.socket,
                    *peer,
                    acks,
                ),
                Dest::Raw { .. } => false,
            };
            if !queued {
                stats.count_acks_dropped(1, acks.len());
            }
        });
    }

    fn finish_sends(&mut self, io: &mut Ingest<'_>, deadline: Instant) {
        let TokioEngine {
            recvs,
            sends,
            ack_pool,
            in_flight,
            rt,
            ..
        } = self;
        let wait = deadline.saturating_duration_since(Instant::now());
        rt.block_on(async {
            // Receives that completed after the drain: read, not applied. (Yielding
            // lets the runtime reap its completion queue first.)
            for _ in 0..2 {
                tokio::task::yield_now().await;
                while let Some(Some((res, _))) = recvs.next().now_or_never() {
                    if res.is_ok_and(|(n, _)| n > 0) {
                        io.stats().unread_at_stop += 1;
                    }
                }
            }
            let all = async {
                while let Some((res, buf)) = sends.next().await {
                    finish_send(io, ack_pool, in_flight, res, buf);
                }
            };
            // Sends still in flight at the deadline are counted as dropped below.
            let _ = tokio::time::timeout(wait, all).await;
        });
        io.stats().count_acks_dropped(sends.len(), *in_flight);
    }

    fn info(&self) -> ShardInfo {
        self.info.clone()
    }
}

/// Queues the send of one ack datagram to `peer` in a buffer from the pool (submitted
/// when the runtime next polls it); false when the pool is empty (the caller counts the
/// ack as dropped).
fn queue_ack(
    sends: &mut FuturesUnordered<Op<Sent>>,
    pool: &mut Vec<Vec<u8>>,
    in_flight: &mut usize,
    socket: &Rc<tokio_uring::net::UdpSocket>,
    peer: SocketAddr,
    ack: &[u8],
) -> bool {
    let Some(mut out) = pool.pop() else {
        return false;
    };
    out.clear();
    out.extend_from_slice(ack);
    *in_flight += out.len();
    let socket = socket.clone();
    sends.push(Box::pin(async move { socket.send_to(out, peer).await }));
    true
}

/// Counts a finished ack send and returns its buffer to the pool.
fn finish_send(
    io: &mut Ingest<'_>,
    pool: &mut Vec<Vec<u8>>,
    in_flight: &mut usize,
    res: std::io::Result<usize>,
    buf: Vec<u8>,
) {
    *in_flight -= buf.len();
    let s = io.stats();
    s.cqes += 1;
    match res {
        Ok(n) => s.count_acks_sent(1, n),
        Err(_) => s.count_acks_dropped(1, buf.len()),
    }
    pool.push(buf);
}
