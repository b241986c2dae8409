//! TCP connections of one shard, the same for every engine: the slots (a
//! `slab::Slab`, with a generation so that an operation of a closed connection can
//! never be taken for one of the connection that reused its slot), each connection's
//! stream decoder, its ack queue, the idle sweep and the close reasons. Engines move
//! the bytes: io_uring with a multishot receive and queued writes, epoll with reads
//! and writes on readiness.
//!
//! Acks leave in the order their frames arrived: a connection has at most one write
//! in flight, and acks made meanwhile wait in its queue; so do acks behind one that
//! waits for another shard's verdict (`core::held::StreamHolds`). A peer that does not read its
//! acks fills its kernel send buffer and then this queue: at `ACK_QUEUE_PAUSE` bytes
//! the shard stops reading from it (TCP backpressure: its heartbeats wait in its own
//! socket, nothing is lost) and resumes below `ACK_QUEUE_RESUME`. Were it to send no
//! more complete frames, the idle timeout closes it (counted as an ack backlog close).
//! Bytes already received when the reading stopped still make acks (at most the
//! shard's TCP receive buffers' worth); `ACK_QUEUE_MAX` lies above that, a last bound
//! where the connection is closed at once and its acks counted as dropped. Memory per
//! connection is thus bounded, and one slow reader never stalls another connection.

use super::shard_loop::Ingest;
use crate::config::TcpConfig;
use crate::core::codec::FRAME_BYTES;
use crate::core::held::{Answer, Chain, StreamHolds};
use crate::core::stats::ShardStats;
use crate::core::stream::StreamDecoder;
use std::os::fd::{AsFd, OwnedFd};

/// Queued ack bytes at which a connection stops being read (512 acks: what a peer
/// that reads nothing leaves once its kernel buffers are full).
pub(crate) const ACK_QUEUE_PAUSE: usize = 16 << 10;
/// Reading resumes when the queue is back below this.
pub(crate) const ACK_QUEUE_RESUME: usize = 4 << 10;
/// Hard bound of a connection's ack queue: closed at once beyond it. After a pause the
/// queue grows only by what the connection had already received when reading
/// stopped: with io_uring, at most the shard's 2 MiB of TCP receive buffers (a
/// multishot receive fills them all from a full socket in one go, and each frame
/// makes one ack), so the bound lies above that and backpressure, not closing, is
/// what a slow reader meets; all connections together overshoot by at most those
/// 2 MiB per shard.
pub(crate) const ACK_QUEUE_MAX: usize = 4 << 20;
/// A connection closing after a bad magic waits at most this long for its acks to be
/// written before it is closed anyway.
const CLOSE_LINGER_MS: u64 = 1_000;
/// Connections the idle sweep looks at per call (a slice between receive batches,
/// like the liveness walk's; ~10 µs).
const SWEEP_SLICE: usize = 4_096;
/// A full idle sweep starts this often.
const SWEEP_EVERY_MS: u64 = 1_000;

fn deciseconds(ms: u64) -> u32 {
    (ms / 100) as u32
}

/// Connection slots reserved up front (address space only: pages are touched as slots
/// fill), so the slab never reallocates and copies while connections arrive; beyond
/// it the slab grows as usual.
const PRESIZE_MAX: usize = 4 << 20;

/// Why a connection was closed (each has its counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Close {
    Peer,
    OutOfStep,
    Idle,
    AckBacklog,
    Error,
    Stop,
}

/// Generations are 24 bits (so that an io_uring user_data holds a kind, a generation
/// and a slot): an operation of a closed connection could only be mistaken for a new
/// one if 16,777,216 connections were accepted into that very slot while it was
/// queued.
const GENERATION_MASK: u32 = 0xFF_FFFF;

/// A connection's slot and generation: what an engine's operations carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub key: u32,
    pub generation: u32,
}

impl ConnId {
    /// As one integer (a write's tag).
    pub fn pack(self) -> u64 {
        (self.generation as u64) << 32 | self.key as u64
    }
    pub fn unpack(v: u64) -> ConnId {
        ConnId {
            key: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// 120 bytes (its slab entry too): user-space memory per connection.
pub(crate) struct Conn {
    pub fd: OwnedFd,
    generation: u32,
    decoder: StreamDecoder,
    /// Shard time in deciseconds (13 years of u32) of the last completed frame, of
    /// the accept, or (closing) of the bad magic.
    last_ds: u32,
    /// Acks made and not yet handed to a write, in order, bounded by `ACK_QUEUE_MAX`.
    /// A buffer from the shard's pool while acks wait, none otherwise: a quiet
    /// connection holds no ack memory.
    pub acks: Vec<u8>,
    /// A write of this connection's acks is in flight (io_uring) or waits for the
    /// socket to take more (epoll).
    pub writing: bool,
    /// Reading stopped because the ack queue is over `ACK_QUEUE_PAUSE`.
    pub paused: bool,
    /// A receive is queued on it (io_uring) / it is in the epoll set for reading.
    pub armed: bool,
    /// Closes once its acks are written (after a bad magic, at `last_ds`).
    closing: Option<Close>,
    /// Bytes of acks handed to writes since it opened (modulo 2^32): the position of
    /// `acks[0]` in its ack stream.
    base: u32,
    /// Its acks' tickets not yet settled (frames handed to their owners): acks from the
    /// oldest unanswered one on wait in `acks` (`core::held::StreamHolds`).
    chain: Chain,
}

impl Conn {
    pub fn id(&self, key: usize) -> ConnId {
        ConnId {
            key: key as u32,
            generation: self.generation,
        }
    }
    pub fn closing(&self) -> bool {
        self.closing.is_some()
    }
    /// Nothing more to write: a closing connection may go.
    pub fn flushed(&self) -> bool {
        !self.writing && self.acks.is_empty()
    }
    /// Queued ack bytes that may be written now: those before the oldest ack still
    /// waiting for its owner's verdict.
    pub fn sendable(&self, streams: &StreamHolds) -> usize {
        match streams.waiting_from(&self.chain) {
            Some(at) => at.wrapping_sub(self.base) as usize,
            None => self.acks.len(),
        }
    }
    /// `n` ack bytes from the front of the queue were written.
    pub fn written(&mut self, n: usize) {
        self.acks.drain(..n);
        self.base = self.base.wrapping_add(n as u32);
    }
}

/// What an engine does after a connection's bytes were taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Write its acks if any and keep reading.
    Read,
    /// Write its acks; stop reading until the queue drains (backpressure).
    Pause,
    /// Write its acks, read no more, close once they are written.
    CloseWhenFlushed,
    /// Close now.
    Close(Close),
}

pub(crate) struct Connections {
    slab: slab::Slab<Conn>,
    next_generation: u32,
    max: usize,
    idle_ms: u64,
    sweep_at: usize,
    next_sweep_ms: u64,
    /// Emptied ack buffers kept for reuse (io_uring writes), bounded.
    spare: Vec<Vec<u8>>,
    /// `--allow`: peers outside it are closed at accept.
    allow: crate::core::allow::Allowlist,
}

impl Connections {
    pub fn new(cfg: &TcpConfig, allow: &crate::core::allow::Allowlist) -> Connections {
        Connections {
            slab: slab::Slab::with_capacity((cfg.per_shard as usize).min(PRESIZE_MAX)),
            next_generation: 1,
            max: cfg.per_shard as usize,
            idle_ms: cfg.idle_timeout_ms,
            sweep_at: 0,
            next_sweep_ms: 0,
            spare: Vec::new(),
            allow: allow.clone(),
        }
    }

    /// Takes a new connection, or closes and counts it when the shard holds its share
    /// of `--max-connections`.
    pub fn admit(&mut self, fd: OwnedFd, now_ms: u64, stats: &mut ShardStats) -> Option<ConnId> {
        if !self.allow.is_empty() {
            // One getpeername per accepted connection (accepts are few next to frames).
            let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
            )
            .ok()
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| std::net::IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
            });
            if !peer.is_some_and(|ip| self.allow.allows(ip)) {
                stats.tcp_disallowed += 1;
                tracing::debug!(?peer, "TCP connection closed: the peer is outside --allow");
                return None;
            }
        }
        if self.slab.len() >= self.max {
            stats.tcp_refused += 1;
            tracing::debug!(
                max = self.max,
                "TCP connection refused: the shard holds its share of --max-connections"
            );
            return None;
        }
        // Acks are written as soon as they are made; failure changes only latency.
        let _ = crate::sys::tcp::set_nodelay(fd.as_fd());
        let generation = self.next_generation;
        self.next_generation = (self.next_generation.wrapping_add(1) & GENERATION_MASK).max(1);
        let key = self.slab.insert(Conn {
            fd,
            generation,
            decoder: StreamDecoder::default(),
            last_ds: deciseconds(now_ms),
            acks: Vec::new(),
            writing: false,
            paused: false,
            armed: false,
            closing: None,
            base: 0,
            chain: Chain::default(),
        });
        stats.tcp_accepted += 1;
        stats.tcp_open = self.slab.len() as u64;
        tracing::debug!(
            slot = key,
            generation,
            open = self.slab.len(),
            "TCP connection accepted"
        );
        Some(ConnId {
            key: key as u32,
            generation,
        })
    }

    /// The connection in slot `key`, whatever its generation.
    pub fn slot_mut(&mut self, key: usize) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    /// The connection `id` names, if it is still open (same slot, same generation).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slab
            .get_mut(id.key as usize)
            .filter(|c| c.generation == id.generation)
    }

    /// Takes in bytes the connection received: frames applied or forwarded, acks
    /// queued in order. None when `id` is no longer open.
    pub fn on_bytes(
        &mut self,
        id: ConnId,
        bytes: &[u8],
        io: &mut Ingest<'_>,
        now_ms: u64,
    ) -> Option<After> {
        let c = self
            .slab
            .get_mut(id.key as usize)
            .filter(|c| c.generation == id.generation)?;
        if c.closing.is_some() {
            // After a bad magic the rest of the stream means nothing.
            return Some(After::CloseWhenFlushed);
        }
        if c.acks.capacity() == 0 {
            if let Some(buf) = self.spare.pop() {
                c.acks = buf;
            }
        }
        let acks = &mut c.acks;
        let queued_at = c.base.wrapping_add(acks.len() as u32);
        let fed = io.stream(
            (id.pack(), &mut c.chain, queued_at),
            &mut c.decoder,
            bytes,
            now_ms,
            |ack| acks.extend_from_slice(ack),
        );
        if fed.frames > 0 {
            c.last_ds = deciseconds(now_ms);
        }
        if fed.stopped {
            c.closing = Some(Close::OutOfStep);
            c.last_ds = deciseconds(now_ms);
            return Some(After::CloseWhenFlushed);
        }
        if c.acks.len() > ACK_QUEUE_MAX {
            return Some(After::Close(Close::AckBacklog));
        }
        if c.acks.len() >= ACK_QUEUE_PAUSE && !c.paused {
            c.paused = true;
            return Some(After::Pause);
        }
        Some(After::Read)
    }

    /// The end of a connection's stream (the peer closed): counts a frame cut short.
    pub fn on_end(&mut self, id: ConnId, stats: &mut ShardStats) {
        if let Some(c) = self.get_mut(id) {
            if c.decoder.pending_bytes() > 0 {
                stats.tcp_partial_at_close += 1;
            }
        }
    }

    /// Takes the connection's queued acks to write, as far as they may go (all of
    /// them, the usual case, leaves the connection with no buffer; acks waiting behind
    /// an owner's verdict stay); None when nothing may go or a write is in flight.
    pub fn take_acks(&mut self, id: ConnId, streams: &StreamHolds) -> Option<Vec<u8>> {
        let c = self
            .slab
            .get_mut(id.key as usize)
            .filter(|c| c.generation == id.generation && !c.writing)?;
        let n = c.sendable(streams);
        if n == 0 {
            return None;
        }
        c.writing = true;
        if n == c.acks.len() {
            c.base = c.base.wrapping_add(n as u32);
            return Some(std::mem::take(&mut c.acks));
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(&c.acks[..n]);
        c.written(n);
        Some(buf)
    }

    /// Writes an owner's verdict into the ack it answers (a refusal's status, a
    /// version-2 ack tagged anew) and settles the connection's tickets. Returns the
    /// connection when it is still open.
    pub fn answer(&mut self, a: Answer, io: &mut Ingest<'_>) -> Option<ConnId> {
        let id = ConnId::unpack(a.conn);
        let Some(c) = self.get_mut(id) else {
            io.streams.mark_answered(a.ticket);
            return None;
        };
        if a.status != crate::core::codec::ACK_ACCEPTED {
            let from = a.at.wrapping_sub(c.base) as usize;
            if let Some(ack) = crate::core::held::ack_slice(&mut c.acks, from) {
                io.core.restatus_ack(ack, a.status);
            }
        }
        io.streams.mark_answered(a.ticket);
        io.streams.settle(&mut c.chain);
        Some(id)
    }

    /// Gives the connection's ack buffer back to the pool once everything in it is
    /// written (epoll writes in place).
    pub fn release_if_empty(&mut self, id: ConnId) {
        let Some(c) = self.get_mut(id) else { return };
        if c.acks.is_empty() && c.acks.capacity() > 0 {
            let buf = std::mem::take(&mut c.acks);
            self.give_back(buf);
        }
    }

    /// Keeps an emptied ack buffer for reuse (at most a few, each at most 16 KiB).
    pub fn give_back(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 64 && buf.capacity() <= ACK_QUEUE_PAUSE {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Closes connection `key`: shut down (so an operation still queued on it ends),
    /// counted by reason, its unwritten acks counted as dropped, its tickets let go.
    pub fn close(&mut self, key: usize, why: Close, io: &mut Ingest<'_>) {
        let Some(mut c) = self.slab.try_remove(key) else {
            return;
        };
        io.streams.abandon(&mut c.chain);
        let stats = io.stats();
        crate::sys::tcp::shutdown(c.fd.as_fd());
        let unwritten = (c.acks.len() / FRAME_BYTES) as u64;
        stats.tcp_ack_queue_drops += unwritten;
        stats.acks_dropped += unwritten;
        let why = match (why, c.paused) {
            (Close::Idle, true) => Close::AckBacklog,
            (w, _) => w,
        };
        *match why {
            Close::Peer => &mut stats.tcp_closed_peer,
            Close::OutOfStep => &mut stats.tcp_closed_out_of_step,
            Close::Idle => &mut stats.tcp_closed_idle,
            Close::AckBacklog => &mut stats.tcp_closed_ack_backlog,
            Close::Error => &mut stats.tcp_closed_error,
            Close::Stop => &mut stats.tcp_closed_at_stop,
        } += 1;
        stats.tcp_open = self.slab.len() as u64;
        tracing::debug!(slot = key, reason = ?why, unwritten_acks = unwritten, "TCP connection closed");
        self.give_back(c.acks);
    }

    /// The reason a closing connection is closed with.
    pub fn closing_reason(&self, key: usize) -> Option<Close> {
        self.slab.get(key).and_then(|c| c.closing)
    }

    /// One slice of the idle sweep (a sweep starts every second): the connections to
    /// close, with their reasons, go to `out`.
    pub fn sweep(&mut self, now_ms: u64, out: &mut Vec<(usize, Close)>) {
        if self.sweep_at == 0 {
            if now_ms < self.next_sweep_ms {
                return;
            }
            self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
        let end = (self.sweep_at + SWEEP_SLICE).min(self.slab.capacity());
        let now_ds = deciseconds(now_ms);
        for key in self.sweep_at..end {
            let Some(c) = self.slab.get(key) else {
                continue;
            };
            let quiet_ms = now_ds.saturating_sub(c.last_ds) as u64 * 100;
            match c.closing {
                Some(why) if quiet_ms >= CLOSE_LINGER_MS => out.push((key, why)),
                None if quiet_ms >= self.idle_ms => out.push((key, Close::Idle)),
                _ => {}
            }
        }
        self.sweep_at = if end >= self.slab.capacity() { 0 } else { end };
    }

    /// Every open connection's slot (at stop).
    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_slot_is_120_bytes() {
        // 80 bytes of state, and room for the first half of a version-2 frame.
        assert_eq!(std::mem::size_of::<Conn>(), 120);
        assert!(std::mem::size_of::<slab::Slab<Conn>>() < 64);
        // slab::Entry<Conn> is private: a vacant/occupied enum over Conn.
        assert!(std::mem::size_of::<Option<Conn>>() <= 120);
    }
}
