//! The epoll engine: the classic design, kept to compare against io_uring on the same
//! core, shards, ownership and counters. Per shard: one epoll set holding the socket
//! and the wake-up eventfd; `recvmmsg` in batches of 64 until the socket is empty (or a
//! budget of 16 batches), acks gathered and sent with one `sendmmsg` per receive round.
//! Event density: `cqes` counts datagrams received, `enters` every syscall of the loop
//! (epoll_wait, recvmmsg, sendmmsg), `wakeups` the waits that may sleep.

use super::shard_loop::{AckStats, Engine, Ingest, Wait};
use super::tcp::{After, Close, Conn, ConnId, Connections, ACK_QUEUE_RESUME};
use super::{ShardContext, ShardInfo};
use crate::core::codec::{FRAME_BYTES, MAX_DATAGRAM_BYTES};
use crate::core::stats::ShardStats;
use crate::sys::mmsg::{RecvBatch, SendBatch};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Datagrams per recvmmsg / sendmmsg: the batch size of the classic recvmmsg servers
/// this engine stands for; larger batches gained nothing measurable at saturation
/// (the socket rarely holds more between two rounds at one shard per core).
const BATCH: usize = 64;
/// recvmmsg calls per receive round before the rest of the loop runs (1,024
/// datagrams: the io_uring engine's reap batch, so both engines apply hand-offs and
/// liveness slices equally often under load).
const RECV_BUDGET: usize = 16;
const TOKEN_SOCKET: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_LISTENER: u64 = 2;
/// Connection tokens: this bit, the generation (24 bits) above bit 32, the slot below.
const TOKEN_CONN: u64 = 1 << 63;
/// Readiness events taken per epoll_wait.
const EVENTS: usize = 256;
/// Connections accepted per receive round before the rest of the loop runs.
const ACCEPT_BUDGET: usize = 256;
/// Bytes read from one connection per read call, and reads per ready connection per
/// round (a busy connection cannot hold the shard).
const READ_BYTES: usize = 64 << 10;
const READS_PER_CONN: usize = 4;

pub(super) struct EpollEngine {
    epoll: Epoll,
    socket: RawFd,
    parkers: Arc<[super::Parker]>,
    index: usize,
    recv: RecvBatch,
    send: SendBatch,
    info: ShardInfo,
    /// The last receive round ended on its budget, not on an empty socket.
    more: bool,
    /// Owners' verdicts on TCP acks being applied (swapped with the shard's queue).
    answers: Vec<crate::core::held::Answer>,
    listener: Option<std::os::fd::OwnedFd>,
    conns: Option<Connections>,
    /// Readiness from the last wait, handled in the next receive.
    ready: Vec<EpollEvent>,
    read_buf: Box<[u8]>,
    closes: Vec<(usize, Close)>,
}

impl EpollEngine {
    pub(super) fn new(ctx: &mut ShardContext) -> anyhow::Result<EpollEngine> {
        use anyhow::Context;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        epoll.add(
            &ctx.socket,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SOCKET),
        )?;
        if let Some(l) = &ctx.listener {
            epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER))?;
        }
        let parker = &ctx.parkers[ctx.index as usize];
        epoll.add(
            &parker.efd,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        Ok(EpollEngine {
            epoll,
            socket: ctx.socket.as_raw_fd(),
            parkers: ctx.parkers.clone(),
            index: ctx.index as usize,
            recv: RecvBatch::new(BATCH, MAX_DATAGRAM_BYTES),
            send: SendBatch::new(BATCH, MAX_DATAGRAM_BYTES),
            info: ShardInfo::without_arena(ctx),
            more: false,
            answers: Vec::new(),
            conns: ctx
                .config
                .network
                .tcp
                .as_ref()
                .map(|t| Connections::new(t, &ctx.config.network.allow)),
            listener: ctx.listener.take(),
            ready: Vec::with_capacity(EVENTS),
            read_buf: vec![0u8; READ_BYTES].into_boxed_slice(),
            closes: Vec::new(),
        })
    }

    fn on_datagram(&mut self, io: &mut Ingest<'_>, i: usize, now_ms: u64) {
        let (payload, addr, addr_len) = self.recv.get(i);
        let addr = *addr;
        let Some(payload) = payload else {
            io.too_long();
            return;
        };
        let name = crate::sys::socket::sockaddr_storage_bytes(&addr, addr_len);
        let ack = io.datagram(
            payload,
            crate::engine::shard_loop::Source::Raw(name),
            now_ms,
        );
        if ack.is_empty() {
            return;
        }
        if self.send.is_full() {
            // Copy out first: flushing counts into the same stats the ack borrows from.
            let mut held = [0u8; MAX_DATAGRAM_BYTES];
            let len = ack.len();
            held[..len].copy_from_slice(ack);
            self.flush_acks(io);
            self.send.push(&held[..len], &addr, addr_len);
        } else {
            self.send.push(ack, &addr, addr_len);
        }
    }

    fn flush_acks(&mut self, io: &mut Ingest<'_>) {
        flush_sends(&mut self.send, self.socket, io.stats());
    }
}

/// Sends the queued ack datagrams (one sendmmsg) and counts them.
fn flush_sends(send: &mut SendBatch, socket: RawFd, s: &mut ShardStats) {
    if send.queued() == 0 {
        return;
    }
    let f = send.flush(socket);
    s.enters += 1;
    s.count_acks_sent(f.sent, f.sent_bytes);
    s.count_acks_dropped(f.dropped, f.dropped_bytes);
}

/// The epoll token of connection `id`.
fn conn_token(id: ConnId) -> u64 {
    TOKEN_CONN | (id.generation as u64) << 32 | id.key as u64
}

/// What the epoll set should watch on connection `c`.
fn interest(c: &Conn) -> EpollFlags {
    let mut f = EpollFlags::empty();
    if !c.paused && !c.closing() {
        f |= EpollFlags::EPOLLIN;
    }
    if c.writing {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

/// Writes what the socket takes of `c`'s queued acks that may go (`Conn::sendable`);
/// `writing` says whether some are left for when the socket has room. Err on a
/// failed write.
fn write_acks(c: &mut Conn, io: &mut Ingest<'_>) -> Result<(), ()> {
    let limit = c.sendable(io.streams);
    let stats = io.stats();
    let mut written = 0;
    let mut result = Ok(());
    while written < limit {
        stats.enters += 1;
        match crate::sys::tcp::write(c.fd.as_fd(), &c.acks[written..limit]) {
            Ok(n) => {
                written += n;
                stats.tcp_ack_writes += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                result = Err(());
                break;
            }
        }
    }
    // The queue holds whole acks but for the first, which a short write may have cut:
    // acks wholly written are those whose last byte went.
    let before = c.acks.len().div_ceil(FRAME_BYTES);
    c.written(written);
    stats.acks_sent += (before - c.acks.len().div_ceil(FRAME_BYTES)) as u64;
    c.writing = written < limit;
    result
}

impl EpollEngine {
    /// Accepts, reads and writes on the connections the last wait found ready, then
    /// runs a slice of the idle sweep.
    fn receive_tcp(&mut self, io: &mut Ingest<'_>, now_ms: u64) {
        let Some(conns) = self.conns.as_mut() else {
            return;
        };
        let ready = std::mem::take(&mut self.ready);
        for e in &ready {
            if e.data() == TOKEN_LISTENER {
                let Some(l) = &self.listener else { continue };
                for _ in 0..ACCEPT_BUDGET {
                    io.stats().enters += 1;
                    match crate::sys::tcp::accept(l.as_fd()) {
                        Ok(Some(fd)) => {
                            let Some(id) = conns.admit(fd, now_ms, io.stats()) else {
                                continue;
                            };
                            let c = conns.get_mut(id).expect("just admitted");
                            c.armed = true;
                            if self
                                .epoll
                                .add(&c.fd, EpollEvent::new(EpollFlags::EPOLLIN, conn_token(id)))
                                .is_err()
                            {
                                conns.close(id.key as usize, Close::Error, io);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // EMFILE and the like: the connection stays in the backlog.
                            io.stats().tcp_refused += 1;
                            tracing::warn!(shard = self.index, "accept failed: {e} (raise the open-files limit, see `ringbeat check`)");
                            break;
                        }
                    }
                }
                continue;
            }
            let id = ConnId {
                key: e.data() as u32,
                generation: ((e.data() >> 32) as u32) & 0xFF_FFFF,
            };
            let flags = e.events();
            if let Some(why) = on_ready(conns, id, flags, io, &mut self.read_buf, now_ms) {
                conns.close(id.key as usize, why, io);
                continue;
            }
            write_and_watch(&self.epoll, conns, id, io);
        }
        self.ready = ready;
        self.ready.clear();
        conns.sweep(now_ms, &mut self.closes);
        for (key, why) in self.closes.drain(..) {
            conns.close(key, why, io);
        }
    }
}

/// Writes connection `id`'s acks as far as they may go, resumes it when they drained,
/// closes it when it was closing and is flushed, and updates what epoll watches on it.
fn write_and_watch(epoll: &Epoll, conns: &mut Connections, id: ConnId, io: &mut Ingest<'_>) {
    let Some(c) = conns.get_mut(id) else { return };
    let before = interest(c);
    if write_acks(c, io).is_err() {
        conns.close(id.key as usize, Close::Error, io);
        return;
    }
    if c.paused && c.acks.len() < ACK_QUEUE_RESUME {
        c.paused = false;
    }
    let c = if c.acks.is_empty() {
        conns.release_if_empty(id);
        conns.get_mut(id).expect("open")
    } else {
        c
    };
    if c.closing() && c.flushed() {
        let why = conns
            .closing_reason(id.key as usize)
            .unwrap_or(Close::OutOfStep);
        conns.close(id.key as usize, why, io);
        return;
    }
    let after = interest(c);
    if after != before {
        let mut ev = EpollEvent::new(after, conn_token(id));
        let _ = epoll.modify(&c.fd, &mut ev);
    }
}

/// Reads what connection `id` holds (a bounded number of reads) into the core;
/// returns why to close it, if it is to be closed now.
fn on_ready(
    conns: &mut Connections,
    id: ConnId,
    flags: EpollFlags,
    io: &mut Ingest<'_>,
    buf: &mut [u8],
    now_ms: u64,
) -> Option<Close> {
    let c = conns.get_mut(id)?;
    if !flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
        || c.paused
        || c.closing()
    {
        return None;
    }
    for _ in 0..READS_PER_CONN {
        let c = conns.get_mut(id)?;
        io.stats().enters += 1;
        let n = match crate::sys::tcp::read(c.fd.as_fd(), buf) {
            Ok(0) => {
                conns.on_end(id, io.stats());
                return Some(Close::Peer);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(_) => return Some(Close::Error),
        };
        match conns.on_bytes(id, &buf[..n], io, now_ms)? {
            After::Read => {}
            After::Pause | After::CloseWhenFlushed => return None,
            After::Close(why) => return Some(why),
        }
        if n < buf.len() {
            return None;
        }
    }
    None
}

impl Engine for EpollEngine {
    fn receive(&mut self, io: &mut Ingest<'_>, now_ms: u64) {
        self.more = false;
        for round in 0..RECV_BUDGET {
            io.stats().enters += 1;
            let n = match self.recv.recv(self.socket) {
                Ok(n) => n,
                Err(_) => {
                    io.stats().recv_errors += 1;
                    break;
                }
            };
            io.stats().cqes += n as u64;
            for i in 0..n {
                if let Some(Some(next)) = (i + 1 < n).then(|| self.recv.get(i + 1).0) {
                    io.prefetch(next);
                }
                self.on_datagram(io, i, now_ms);
            }
            if n < BATCH {
                break;
            }
            self.more = round + 1 == RECV_BUDGET;
        }
        self.flush_acks(io);
        self.receive_tcp(io, now_ms);
    }

    fn send_ready(&mut self, io: &mut Ingest<'_>) {
        let stats = io.core.stats_mut();
        let (send, socket) = (&mut self.send, self.socket);
        io.held.send_ready(|to, acks| {
            let (addr, len) = crate::sys::socket::sockaddr_storage_from_bytes(to.raw());
            if send.is_full() {
                flush_sends(send, socket, stats);
            }
            send.push(acks, &addr, len);
        });
        flush_sends(send, socket, stats);
        if let Some(conns) = self.conns.as_mut() {
            let mut answers = std::mem::take(&mut self.answers);
            io.streams.swap_answered(&mut answers);
            for &a in &answers {
                if let Some(id) = conns.answer(a, io) {
                    write_and_watch(&self.epoll, conns, id, io);
                }
            }
            answers.clear();
            self.answers = answers;
        }
    }

    fn close_streams(&mut self, io: &mut Ingest<'_>, _deadline: std::time::Instant) {
        let Some(conns) = self.conns.as_mut() else {
            return;
        };
        // One write attempt each (the kernel takes what its buffer holds), then close.
        for key in conns.keys() {
            if let Some(c) = conns.slot_mut(key) {
                // A failed write leaves the acks queued: counted as dropped at close.
                let _ = write_acks(c, io);
            }
            conns.close(key, Close::Stop, io);
        }
        self.listener = None;
    }

    fn wait(&mut self, io: &mut Ingest<'_>, wait: Wait) {
        let sleep = !(wait.busy() || wait.stopping || self.more);
        let timeout = if sleep {
            wait.timeout_ms.min(u16::MAX as u64) as u16
        } else {
            0
        };
        let s = io.stats();
        if sleep {
            s.wakeups += 1;
        }
        s.enters += 1;
        let mut events = [EpollEvent::empty(); EVENTS];
        let n = self
            .epoll
            .wait(&mut events, EpollTimeout::from(timeout))
            .unwrap_or(0);
        for e in &events[..n] {
            match e.data() {
                TOKEN_WAKE => self.parkers[self.index].efd.drain(),
                TOKEN_SOCKET => {}
                _ => self.ready.push(*e),
            }
        }
    }

    fn info(&self) -> ShardInfo {
        self.info.clone()
    }
}
