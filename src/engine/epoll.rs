//! The epoll engine: the classic design, kept to compare against io_uring on the same
//! core, shards, ownership and counters. Per shard: one epoll set holding the socket
//! and the wake-up eventfd; `recvmmsg` in batches of 64 until the socket is empty (or a
//! budget of 16 batches), acks gathered and sent with one `sendmmsg` per loop.
//! Event density: `cqes` counts datagrams received, `enters` every syscall of the loop
//! (epoll_wait, recvmmsg, sendmmsg), `wakeups` the waits that may sleep.

use super::{publish_stats, ShardContext, ShardInfo, PUBLISH_EVERY};
use crate::core::codec::{DatagramError, MAX_DATAGRAM_BYTES};
use crate::core::shard::ShardCore;
use crate::sys::mmsg::{RecvBatch, SendBatch};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Datagrams per recvmmsg / sendmmsg.
const BATCH: usize = 64;
/// recvmmsg calls per loop iteration before the rest of the loop runs.
const RECV_BUDGET: usize = 16;
const TOKEN_SOCKET: u64 = 0;
const TOKEN_WAKE: u64 = 1;

pub(super) fn run(ctx: ShardContext) {
    super::run_shard(
        ctx,
        |ctx| EpollShard::new(ctx),
        |s| s.info.clone(),
        EpollShard::run,
    );
}

struct EpollShard {
    epoll: Epoll,
    core: ShardCore,
    recv: RecvBatch,
    send: SendBatch,
    ack_buf: Box<[u8; MAX_DATAGRAM_BYTES]>,
    info: ShardInfo,
    socket_drops_seen: u32,
}

impl EpollShard {
    fn new(ctx: &ShardContext) -> anyhow::Result<EpollShard> {
        use anyhow::Context;
        super::pin_to(ctx.cpu)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        epoll.add(
            &ctx.socket,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SOCKET),
        )?;
        // SAFETY: the eventfd is owned by the shared parkers, which outlive this shard.
        let wake = unsafe { BorrowedFd::borrow_raw(ctx.parkers[ctx.index as usize].efd.raw()) };
        epoll.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE))?;
        let core = super::new_core(ctx)?;
        Ok(EpollShard {
            epoll,
            core,
            recv: RecvBatch::new(BATCH),
            send: SendBatch::new(BATCH),
            ack_buf: Box::new([0; MAX_DATAGRAM_BYTES]),
            info: ShardInfo::without_arena(ctx),
            socket_drops_seen: 0,
        })
    }

    fn run(&mut self, ctx: &mut ShardContext) {
        let fd = ctx.socket.as_raw_fd();
        let mut last_publish = Instant::now();
        let mut events = [EpollEvent::empty(); 4];
        loop {
            let stopping = ctx.shared.stop.load(Ordering::Relaxed);
            let now_ms = ctx.base.elapsed().as_millis() as u64;
            // 1. Receive until the socket is empty or the budget is spent.
            let mut more = false;
            for round in 0..RECV_BUDGET {
                self.core.stats_mut().enters += 1;
                let n = match self.recv.recv(fd) {
                    Ok(n) => n,
                    Err(_) => {
                        self.core.stats_mut().recv_errors += 1;
                        break;
                    }
                };
                self.core.stats_mut().cqes += n as u64;
                for i in 0..n {
                    self.on_datagram(ctx, i, now_ms);
                }
                if n < BATCH {
                    break;
                }
                more = round + 1 == RECV_BUDGET;
            }
            self.flush_acks(fd);
            // 2. Hand-offs in, table batch, liveness, events, hand-offs out.
            super::after_receive(ctx, &mut self.core, now_ms, stopping);
            if stopping {
                publish_stats(ctx, &mut self.core, &mut self.socket_drops_seen);
                return;
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                publish_stats(ctx, &mut self.core, &mut self.socket_drops_seen);
            }
            // 3. Wait for the socket, a peer's wake-up, or the next tick.
            let parker = &ctx.parkers[ctx.index as usize];
            parker.parked.store(true, Ordering::SeqCst);
            let busy =
                more || self.core.liveness_pending() || ctx.inbound.iter().any(|c| c.has_pending());
            let until_tick_ms = self
                .core
                .next_deadline_ms()
                .saturating_sub(now_ms)
                .min(ctx.config.tick_ms as u64);
            let timeout = if busy { 0 } else { until_tick_ms.max(1) as u16 };
            if timeout > 0 {
                self.core.stats_mut().wakeups += 1;
            }
            self.core.stats_mut().enters += 1;
            let n = self
                .epoll
                .wait(&mut events, EpollTimeout::from(timeout))
                .unwrap_or(0);
            parker.parked.store(false, Ordering::Relaxed);
            if events[..n].iter().any(|e| e.data() == TOKEN_WAKE) {
                parker.efd.drain();
            }
        }
    }

    fn on_datagram(&mut self, ctx: &mut ShardContext, i: usize, now_ms: u64) {
        let (payload, addr, addr_len) = self.recv.get(i);
        let addr = *addr;
        let Some(payload) = payload else {
            let s = self.core.stats_mut();
            s.datagrams += 1;
            s.count_datagram_error(DatagramError::TooLong);
            return;
        };
        let outbound = &mut ctx.outbound;
        let ack_len =
            self.core
                .ingest_datagram(payload, now_ms, &mut self.ack_buf, |target, frame| {
                    outbound[target as usize]
                        .as_mut()
                        .is_some_and(|p| p.push(frame))
                });
        if ack_len == 0 {
            return;
        }
        if self.send.is_full() {
            self.flush_acks(ctx.socket.as_raw_fd());
        }
        self.send.push(&self.ack_buf[..ack_len], &addr, addr_len);
    }

    fn flush_acks(&mut self, fd: i32) {
        if self.send.queued() == 0 {
            return;
        }
        self.core.stats_mut().enters += 1;
        let f = self.send.flush(fd);
        let s = self.core.stats_mut();
        s.ack_datagrams += f.sent as u64;
        s.acks_sent += (f.sent_bytes / 32) as u64;
        s.ack_datagrams_dropped += f.dropped as u64;
        s.acks_dropped += (f.dropped_bytes / 32) as u64;
    }
}
