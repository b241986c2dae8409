//! The one shard loop every engine runs in. The loop owns the shard's sans-IO core, the
//! stop flag, time, ingest and forwarding (through [`Ingest`]), liveness slices, the
//! park protocol, publishing counters and the drain at stop; an engine only moves bytes
//! (receive, send acks) and sleeps the way its I/O interface sleeps (see [`Engine`]).
//!
//! One iteration: `receive` (datagrams into the core, acks out) → frames peers handed
//! over → table batch → a liveness slice when due → events → hand-offs to peers →
//! publish counters every `PUBLISH_EVERY` → park → `wait`.
//!
//! Stop: whatever reached the socket before the stop is applied: the loop keeps
//! receiving without sleeping until the socket is empty and a round brings nothing,
//! for at most `STOP_DRAIN`; what is still queued then is read, discarded and counted
//! in `unread_at_stop`. Then it waits (bounded) for every peer to finish the same
//! drain, so that frames they hand over are applied too (and for the verdicts its held
//! acks wait for), runs the whole liveness walk, sends the acks completed meanwhile,
//! lets the ack sends in flight complete (`Engine::finish_sends`), ships events and
//! publishes the final counters.

use super::{ShardContext, ShardInfo};
use crate::core::codec::{DatagramError, FRAME_BYTES, MAX_DATAGRAM_BYTES};
use crate::core::held::{Chain, HeldAcks, StreamHolds, Verdict, STREAM_TICKET};
use crate::core::stats::ShardStats;
use crate::memory::Core as ShardCore;
use crate::sys::spsc::Producer;
use anyhow::Context;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

/// How often a shard copies its counters to its slot for the reporter.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Longest a shard spends applying what its socket holds at stop. A full 4 MiB receive
/// queue of one-frame datagrams (~10,000 of them at ~770 bytes of truesize each, doubled
/// by the kernel's accounting) drains in well under 20 ms at the measured ~1.5M
/// datagrams per core-second; 500 ms leaves room for a much deeper queue and a sender
/// still flooding, and keeps the exit within the promised second.
const STOP_DRAIN: Duration = Duration::from_millis(500);
/// Longest a shard then spends reading and counting (not applying) what is left, and
/// waiting for its peers' hand-offs: the rest of the one-second exit, with room for the
/// events flush and the final stats.
const STOP_COUNT: Duration = Duration::from_millis(150);

/// Longest a shard spends writing TCP acks still queued at stop before it closes the
/// connections.
const STOP_TCP_FLUSH: Duration = Duration::from_millis(100);

/// Longest a shard waits for snapshot buffers at stop (the writer writing earlier
/// slices): the copy itself takes ~10 ms per million devices.
const STOP_SAVE: Duration = Duration::from_millis(200);

/// What an engine sees of the shard while it moves bytes: the core (ingest and
/// counters) and the rings towards peers (frames owned elsewhere).
pub(crate) struct Ingest<'a> {
    pub core: &'a mut ShardCore,
    outbound: &'a mut [Option<Producer>],
    ack: &'a mut [u8; MAX_DATAGRAM_BYTES],
    allow: &'a crate::core::allow::Allowlist,
    /// Ack datagrams waiting for owners' verdicts, and those ready to send.
    pub held: &'a mut HeldAcks<Dest>,
    /// TCP acks' tickets and the verdicts that came back for them.
    pub streams: &'a mut StreamHolds,
}

/// Where a held ack datagram goes: its datagram's source.
pub(crate) enum Dest {
    /// A raw `sockaddr_in` / `sockaddr_in6` (≤ 28 bytes).
    Raw {
        name: [u8; std::mem::size_of::<libc::sockaddr_in6>()],
        len: u8,
    },
    #[cfg(feature = "tokio-uring")]
    Addr(std::net::SocketAddr),
}

impl Dest {
    fn of(source: &Source<'_>) -> Dest {
        match source {
            Source::Raw(raw) => {
                let mut name = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
                let len = raw.len().min(name.len());
                name[..len].copy_from_slice(&raw[..len]);
                Dest::Raw {
                    name,
                    len: len as u8,
                }
            }
            #[cfg(feature = "tokio-uring")]
            Source::Addr(a) => Dest::Addr(*a),
        }
    }

    /// The raw socket address (empty for a tokio-uring one).
    pub fn raw(&self) -> &[u8] {
        match self {
            Dest::Raw { name, len } => &name[..*len as usize],
            #[cfg(feature = "tokio-uring")]
            Dest::Addr(_) => &[],
        }
    }
}

/// Where a datagram came from, as the engine's receive gave it.
pub(crate) enum Source<'a> {
    /// A raw `sockaddr_in` / `sockaddr_in6`.
    Raw(&'a [u8]),
    /// The tokio-uring engine's.
    #[cfg(feature = "tokio-uring")]
    Addr(std::net::SocketAddr),
}

impl Ingest<'_> {
    /// Starts loading what `payload`, a datagram received after the one being taken,
    /// will read first (`ShardCore::prefetch_datagram`): engines that hold a batch of
    /// datagrams call it one datagram ahead.
    #[inline]
    pub fn prefetch(&self, payload: &[u8]) {
        self.core.prefetch_datagram(payload);
    }

    /// One received datagram: validated and applied (or forwarded, or counted). Returns
    /// the ack datagram to send back to its source; empty when nothing asked for one,
    /// when the source is not allowed (`--allow`: counted, never answered), or when
    /// the acks wait for the verdicts of the shards its frames were handed to (held:
    /// sent through `Engine::send_ready` once answered).
    pub fn datagram(&mut self, payload: &[u8], source: Source<'_>, now_ms: u64) -> &[u8] {
        if !self.allow.is_empty() {
            let allowed = match &source {
                Source::Raw(name) => self.allow.allows_sockaddr(name),
                #[cfg(feature = "tokio-uring")]
                Source::Addr(a) => self.allow.allows(a.ip()),
            };
            if !allowed {
                let s = self.core.stats_mut();
                s.datagrams += 1;
                s.disallowed += 1;
                return &[];
            }
        }
        let outbound = &mut *self.outbound;
        let held = &mut *self.held;
        let hold = held.next_hold();
        let mut tickets = 0;
        let len = self
            .core
            .ingest_datagram(payload, now_ms, self.ack, |target, frame, ack_at| {
                let Some(p) = outbound[target as usize].as_mut() else {
                    return false;
                };
                let Some(at) = ack_at else {
                    return p.push(frame);
                };
                let Some(ticket) = held.issue(hold, at) else {
                    // Out of tickets: lost as if the owner's ring were full (answered
                    // busy, the owner told through the ring's drop count).
                    p.count_drop();
                    return false;
                };
                let pushed = p.push(&crate::core::held::stamp(frame, Some(ticket)));
                if pushed {
                    tickets += 1;
                } else {
                    held.cancel(ticket);
                }
                pushed
            });
        if tickets > 0 {
            held.hold(Dest::of(&source), &self.ack[..len], tickets);
            self.core.stats_mut().held_acks += tickets as u64;
            return &[];
        }
        &self.ack[..len]
    }

    /// The next bytes of a TCP connection (see `ShardCore::ingest_stream`); acks go to
    /// `ack` in order. `conn` is the connection (its packed id, its tickets' chain, and
    /// the position in its ack stream where this call's first ack goes): a handed frame
    /// that asks for an ack gets a ticket there, and the connection's acks from that one
    /// on wait for the owner's verdict (`tcp::Connections::answer`).
    pub fn stream(
        &mut self,
        conn: (u64, &mut Chain, u32),
        decoder: &mut crate::core::stream::StreamDecoder,
        bytes: &[u8],
        now_ms: u64,
        ack: impl FnMut(&[u8]),
    ) -> crate::core::stream::Fed {
        let (id, chain, queued_at) = conn;
        let outbound = &mut *self.outbound;
        let streams = &mut *self.streams;
        let mut tickets = 0;
        let fed = self
            .core
            .ingest_stream(decoder, bytes, now_ms, ack, |target, frame, ack_at| {
                let Some(p) = outbound[target as usize].as_mut() else {
                    return false;
                };
                let Some(at) = ack_at else {
                    return p.push(frame);
                };
                if !p.has_room() || !streams.has_room() {
                    // Lost as if the owner's ring were full: answered busy, the owner
                    // told through the ring's drop count.
                    p.count_drop();
                    return false;
                }
                let ticket = streams.issue(chain, id, queued_at.wrapping_add(at as u32));
                tickets += 1;
                p.push(&crate::core::held::stamp(frame, ticket))
            });
        self.core.stats_mut().held_acks += tickets;
        fed
    }

    /// A datagram longer than any valid one (truncated by the receive).
    pub fn too_long(&mut self) {
        let s = self.core.stats_mut();
        s.datagrams += 1;
        s.count_datagram_error(DatagramError::TooLong);
    }

    pub fn stats(&mut self) -> &mut ShardStats {
        self.core.stats_mut()
    }
}

/// Why the shard fell behind its socket.
#[derive(Clone, Copy, Debug)]
enum Behind {
    Stall,
    DryRing,
}

/// Ack accounting, one place for every engine.
pub(crate) trait AckStats {
    /// `datagrams` ack datagrams of `bytes` in total that went out.
    fn count_acks_sent(&mut self, datagrams: usize, bytes: usize);
    /// `datagrams` ack datagrams of `bytes` in total that could not be queued or
    /// failed to send.
    fn count_acks_dropped(&mut self, datagrams: usize, bytes: usize);
}

impl AckStats for ShardStats {
    fn count_acks_sent(&mut self, datagrams: usize, bytes: usize) {
        self.ack_datagrams += datagrams as u64;
        self.acks_sent += (bytes / FRAME_BYTES) as u64;
    }
    fn count_acks_dropped(&mut self, datagrams: usize, bytes: usize) {
        self.ack_datagrams_dropped += datagrams as u64;
        self.acks_dropped += (bytes / FRAME_BYTES) as u64;
    }
}

/// What the loop knows when an engine is about to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    /// Until the next liveness tick (≥ 1): the longest the engine may sleep.
    pub timeout_ms: u64,
    /// Peers handed over frames that are not applied yet: do not sleep.
    pub peer_frames: bool,
    /// A liveness walk is unfinished: do not sleep.
    pub liveness_pending: bool,
    /// The loop is draining at stop: take in what is queued, never sleep long.
    pub stopping: bool,
}

impl Wait {
    /// The engine must return without sleeping.
    pub fn busy(&self) -> bool {
        self.peer_frames || self.liveness_pending
    }
}

/// An I/O engine: how bytes move between the shard's socket and the loop.
pub(crate) trait Engine {
    /// Takes in what has already arrived without sleeping: each datagram goes to
    /// `io.datagram` and its ack is sent (or counted as dropped).
    fn receive(&mut self, io: &mut Ingest<'_>, now_ms: u64);
    /// Waits for a datagram, a peer's wake-up or `wait.timeout_ms`, as the engine's
    /// interface waits; returns at once when `wait.busy()`. An engine whose waits
    /// deliver data (tokio-uring) may ingest it here.
    fn wait(&mut self, io: &mut Ingest<'_>, wait: Wait);
    /// At stop, after the drain: writes the acks still queued on TCP connections as
    /// far as their sockets take them by `deadline`, then closes every connection
    /// and the listener.
    fn close_streams(&mut self, _io: &mut Ingest<'_>, _deadline: Instant) {}
    /// Sends the held ack datagrams whose every verdict came back
    /// (`io.held.send_ready`), or counts them as dropped when nothing can carry them;
    /// writes the owners' verdicts into TCP connections' acks (`io.streams`) and
    /// writes what they let go.
    fn send_ready(&mut self, io: &mut Ingest<'_>);
    /// At stop, last: waits until `deadline` for the ack sends still in flight to
    /// complete, counting each as sent or dropped (those not done by then as dropped),
    /// so every ack made is accounted for. Engines whose sends complete at once need
    /// nothing.
    fn finish_sends(&mut self, _io: &mut Ingest<'_>, _deadline: Instant) {}
    /// The engine's receive ran dry and is not armed again yet, so what waits in the
    /// socket cannot come in (`ShardLoop::catch_up` keeps liveness held meanwhile).
    fn behind(&self) -> bool {
        false
    }
    fn info(&self) -> ShardInfo;
}

/// Runs one shard thread: builds the engine and the core on the thread (after pinning,
/// so their memory is local), reports ready or the error to `start`, then loops.
pub(crate) fn run<E: Engine>(
    mut ctx: ShardContext,
    new: impl FnOnce(&mut ShardContext) -> anyhow::Result<E>,
) {
    let ready = ctx.ready.take().expect("ready channel");
    let (registry_gen, update) = take_registry(&ctx.shared);
    let built = super::pin_to(ctx.cpu)
        .and_then(|()| new(&mut ctx))
        .and_then(|engine| Ok((engine, new_core(&ctx)?)))
        .and_then(|(engine, mut core)| {
            let now_ms = ctx.base.elapsed().as_millis() as u64;
            core.set_registry(update.registry, &update.removed, now_ms)
                .context("cannot map the devices file's replay windows")?;
            Ok((engine, core))
        });
    match built {
        Ok((mut engine, mut core)) => {
            let restore = std::mem::take(&mut ctx.restore);
            if !restore.is_empty() {
                let now_ms = ctx.base.elapsed().as_millis() as u64;
                let n = core.restore(&restore, now_ms);
                if core.stats().forgotten > 0 {
                    tracing::warn!(
                        shard = ctx.index,
                        forgotten = core.stats().forgotten,
                        "the snapshot holds devices the devices file does not list: they are not restored"
                    );
                }
                if n + core.stats().forgotten < restore.len() as u64 {
                    tracing::warn!(
                        shard = ctx.index,
                        restored = n,
                        refused = restore.len() as u64 - n - core.stats().forgotten,
                        "the snapshot holds more devices than this shard's table: raise --max-devices"
                    );
                }
            }
            drop(restore);
            let _ = ready.send(Ok(engine.info()));
            drop(ready);
            let peers = ctx.outbound.len();
            let presence = ctx.config.outputs.mqtt.is_some();
            if presence {
                core.track_presence();
            }
            let unshipped_capacity = if presence { ctx.config.event_queue } else { 0 };
            ShardLoop {
                ctx: &mut ctx,
                core: &mut core,
                ack: Box::new([0; MAX_DATAGRAM_BYTES]),
                socket_drops_seen: 0,
                handoff_drops_seen: 0,
                blind: Blindness::default(),
                registry_gen,
                refusals: Refusals::default(),
                held: HeldAcks::default(),
                streams: StreamHolds::default(),
                // A peer has at most MAX_TICKETS datagram and MAX_TICKETS stream
                // tickets out with this shard, so its backlog never outgrows this
                // (address space only until a full ring makes it used).
                verdicts: (0..peers)
                    .map(|_| Vec::with_capacity(2 * crate::core::held::MAX_TICKETS))
                    .collect(),
                // At most one drain's events (the core's buffer): never grows.
                unshipped: Vec::with_capacity(unshipped_capacity),
                presence,
            }
            .run(&mut engine);
        }
        Err(e) => {
            let _ = ready.send(Err(format!("shard {} (CPU {}): {e:#}", ctx.index, ctx.cpu)));
        }
    }
}

/// The registry update in `Shared` and its generation.
fn take_registry(shared: &super::Shared) -> (u64, super::RegistryUpdate) {
    let generation = shared.registry_gen.load(Ordering::Acquire);
    let update = shared
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    (generation, update)
}

/// Refused heartbeats since the last warning (logged at most every `REFUSAL_LOG_EVERY`).
#[derive(Default)]
struct Refusals {
    logged: [u64; crate::core::codec::Refusal::ALL.len()],
    last_log: Option<Instant>,
}

/// Least time between two "refused heartbeats" log lines of one shard.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The shard's sans-IO core, built on the shard's thread (after pinning, so the
/// table's pages are local).
fn new_core(ctx: &ShardContext) -> anyhow::Result<ShardCore> {
    let now_ms = ctx.base.elapsed().as_millis() as u64;
    ShardCore::new(ctx.config.core_config(ctx.index), now_ms).context("mapping the device table")
}

struct ShardLoop<'a> {
    ctx: &'a mut ShardContext,
    core: &'a mut ShardCore,
    ack: Box<[u8; MAX_DATAGRAM_BYTES]>,
    /// Last SK_MEMINFO_DROPS value read from the socket.
    socket_drops_seen: u32,
    /// Sum of the inbound rings' drop counts when last read (wrapping).
    handoff_drops_seen: u32,
    blind: Blindness,
    /// The registry generation this shard holds.
    registry_gen: u64,
    refusals: Refusals,
    held: HeldAcks<Dest>,
    streams: StreamHolds,
    /// Verdicts for each peer (by shard index) its ring back could not take yet: kept
    /// and sent first next time, never dropped (the peer holds an ack for each).
    verdicts: Vec<Vec<[u8; FRAME_BYTES]>>,
    /// MQTT presence is on: devices whose transition is dropped get their state sent
    /// again (`ship_events`).
    presence: bool,
    /// Ids whose transition the queue refused in this `ship_events` (reused).
    unshipped: Vec<u64>,
}

/// What the loop watches to know when the shard may have missed heartbeats (see
/// `ringbeat_core::blind`): kernel drops (read at most once per tick, and before
/// every liveness walk) and frames peers could not hand over; and when it fell behind
/// its socket (`ringbeat_core::liveness`, "Holding still"): a loop iteration that
/// starts more than two ticks after the previous one (a wait never sleeps longer than
/// one tick), or a receive ring that ran dry while data waited.
#[derive(Default)]
struct Blindness {
    /// Start of the previous loop iteration (shard ms).
    last_iteration_ms: u64,
    /// When the socket's drop count was last read.
    last_drop_check_ms: u64,
    /// Blindness seen within the millisecond it started in (drops read twice in one
    /// ms): an empty span records
    /// nothing, so it is noted from this instant at the next iteration of a later
    /// millisecond, which comes before the next liveness step (so the span starts at or
    /// after it).
    pending: Option<u64>,
    /// The shard itself fell behind its socket and has not caught up (its flag in
    /// `Shared::behind` is set).
    own_behind: bool,
    /// It caught up in this iteration: its flag is cleared once the iteration's
    /// hand-offs are published.
    caught_up: bool,
    /// Blind time and causes since the last log line (stalls and dry rings: times the
    /// shard fell behind).
    unlogged_ms: u64,
    drops: u64,
    stalls: u64,
    dry: u64,
    last_log: Option<Instant>,
}

/// Device states sent again to presence per loop iteration at most (their transitions
/// were dropped): a few µs, so a backlog of them never holds up receive.
const REFRESH_SLICE: usize = 256;

/// Least time between two "blind" log lines of one shard.
const BLIND_LOG_EVERY: Duration = Duration::from_secs(10);

/// A shard that fell behind has caught up once its socket holds less than this (skb
/// truesize, a few dozen datagrams): what one batching wait leaves queued in normal
/// running, taken in by the next receive. Waiting for an empty queue instead would
/// never end under a steady high rate, where datagrams keep arriving between reads.
const CAUGHT_UP_BYTES: u32 = 64 << 10;

impl ShardLoop<'_> {
    fn now_ms(&self) -> u64 {
        self.ctx.base.elapsed().as_millis() as u64
    }

    fn ingest(&mut self) -> Ingest<'_> {
        Ingest {
            core: self.core,
            outbound: &mut self.ctx.outbound,
            ack: &mut self.ack,
            allow: &self.ctx.config.network.allow,
            held: &mut self.held,
            streams: &mut self.streams,
        }
    }

    fn run<E: Engine>(mut self, engine: &mut E) {
        let mut last_publish = Instant::now();
        let start_ms = self.now_ms();
        (self.blind.last_iteration_ms, self.blind.last_drop_check_ms) = (start_ms, start_ms);
        loop {
            if self.ctx.shared.stop.load(Ordering::Relaxed) {
                return self.stop(engine);
            }
            let now_ms = self.now_ms();
            if let Some(from) = self.blind.pending.filter(|&from| now_ms > from) {
                self.blind.pending = None;
                self.note_blind(from, now_ms);
            }
            let stalled = now_ms > self.blind.last_iteration_ms + 2 * self.tick_ms();
            if stalled {
                self.fell_behind(Behind::Stall);
            }
            let iteration = Instant::now();
            let (dry_before, cqes_before) = (self.core.stats().ring_dry, self.core.stats().cqes);
            engine.receive(&mut self.ingest(), now_ms);
            let batch = self.core.stats().cqes - cqes_before;
            if batch > 0 {
                self.core
                    .stats_mut()
                    .receive_batch
                    .record(&crate::core::stats::BATCH_BOUNDS, batch);
            }
            let dry = self.core.stats().ring_dry > dry_before;
            if dry {
                self.fell_behind(Behind::DryRing);
            }
            let walk_due = now_ms >= self.core.next_deadline_ms();
            if walk_due || now_ms >= self.blind.last_drop_check_ms + self.tick_ms() {
                self.check_drops(now_ms);
            }
            if self.blind.own_behind {
                self.catch_up(engine, dry);
            }
            self.after_receive(now_ms, false);
            if self.blind.caught_up {
                // After the frames taken in while behind were published (above).
                self.blind.caught_up = false;
                self.ctx.shared.behind[self.ctx.index as usize]
                    .0
                    .store(false, Ordering::Release);
            }
            self.send_ready(engine);
            if let Some(saver) = self.ctx.saver.as_mut() {
                let requested = self.ctx.shared.snapshot_gen.load(Ordering::Relaxed);
                saver.step(self.core, requested, now_ms);
            }
            self.blind.last_iteration_ms = now_ms;
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish_stats();
            }
            let busy_us = iteration.elapsed().as_micros() as u64;
            self.core
                .stats_mut()
                .loop_busy_us
                .record(&crate::core::stats::LOOP_BUSY_BOUNDS_US, busy_us);
            self.park_and_wait(engine, now_ms, false);
        }
    }

    /// Announces that the shard may sleep, looks at the hand-off rings one last time,
    /// and waits. The park protocol is a store-fence-load on both sides (here: parked,
    /// fence, tails; in `publish_outbound`: tail, fence, parked), so on every memory
    /// model either the consumer sees the new frames or the producer sees it parked and
    /// signals its eventfd.
    fn park_and_wait<E: Engine>(&mut self, engine: &mut E, now_ms: u64, stopping: bool) {
        let index = self.ctx.index as usize;
        self.ctx.parkers[index]
            .parked
            .store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let wait = Wait {
            timeout_ms: self
                .core
                .next_deadline_ms()
                .saturating_sub(now_ms)
                .clamp(1, self.tick_ms()),
            peer_frames: self.ctx.inbound.iter().any(|c| c.has_pending())
                || self
                    .ctx
                    .queries
                    .as_ref()
                    .is_some_and(|(requests, _)| requests.has_pending()),
            liveness_pending: self.core.liveness_pending(),
            stopping,
        };
        if !wait.busy() && !stopping {
            self.core.idle_step();
        }
        engine.wait(&mut self.ingest(), wait);
        self.ctx.parkers[index]
            .parked
            .store(false, Ordering::Relaxed);
    }

    /// Applies the frames peers handed over and the table batch, runs liveness (the
    /// whole walk when `whole_walk`, else a slice once a tick is due or a walk is
    /// unfinished), ships events and publishes hand-offs.
    fn after_receive(&mut self, now_ms: u64, whole_walk: bool) {
        let core = &mut *self.core;
        let held = &mut self.held;
        let streams = &mut self.streams;
        let index = self.ctx.index as usize;
        // A peer that fell behind hands over frames that may have waited: this shard
        // holds its liveness too (`ringbeat_core::liveness`, "Holding still"), from its
        // own last step. Read before the drain, so that a peer's flag seen clear here
        // covers every frame it published before clearing it (drained below); a peer
        // that fell behind since is seen while its frames are drained (their ring's
        // acquire makes the flag, set before them, visible).
        let flags = &self.ctx.shared.behind;
        let since = self.blind.last_iteration_ms;
        let mut peers_behind = flags
            .iter()
            .enumerate()
            .any(|(peer, flag)| peer != index && flag.0.load(Ordering::Acquire));
        if peers_behind {
            core.hold_liveness(since);
        }
        for (i, c) in self.ctx.inbound.iter_mut().enumerate() {
            // Inbound rings are the peers' in shard order, without this shard's own.
            let peer = if i < index { i } else { i + 1 };
            let verdicts = &mut self.verdicts[peer];
            let mut looked = peers_behind;
            c.drain(|f| match Verdict::decode(f) {
                Some(v) if v.ticket & STREAM_TICKET != 0 => {
                    streams.resolve(v);
                }
                Some(v) => {
                    held.resolve(v, |ack, status| core.restatus_ack(ack, status));
                }
                None => {
                    if !looked {
                        looked = true;
                        if flags[peer].0.load(Ordering::Relaxed) {
                            peers_behind = true;
                            core.hold_liveness(since);
                        }
                    }
                    if let Some(v) = core.ingest_forwarded(f, now_ms) {
                        // Straight onto the ring back, unless earlier ones still wait
                        // (order kept) or it is full.
                        let v = v.encode();
                        let back = self.ctx.outbound[peer].as_mut();
                        if !(verdicts.is_empty() && back.is_some_and(|p| p.try_push(&v))) {
                            verdicts.push(v);
                        }
                    }
                }
            });
        }
        for (peer, verdicts) in self.verdicts.iter_mut().enumerate() {
            if let Some(p) = self.ctx.outbound[peer].as_mut() {
                let sent = verdicts.iter().take_while(|v| p.try_push(v)).count();
                verdicts.drain(..sent);
            }
        }
        if let Some((requests, replies)) = self.ctx.queries.as_mut() {
            // A device query (HTTP): answered from the table between two batches. A
            // full reply ring (the asker gone) drops the answer; the asker times out.
            core.flush();
            let mut answered = 0;
            requests.drain(|f| {
                let request = crate::core::query::Request::decode(f);
                answered += replies.push(&core.answer(&request, now_ms).encode()) as u32;
            });
            if answered > 0 {
                replies.publish();
            }
        }
        if core.liveness_held().is_some() {
            if self.blind.own_behind || peers_behind {
                core.count_behind(now_ms);
            } else {
                core.release_liveness(now_ms);
            }
        }
        if whole_walk {
            core.advance(now_ms);
        } else {
            core.step(now_ms, self.ctx.config.liveness.liveness_slice);
        }
        self.ship_events(now_ms);
        publish_outbound(&mut self.ctx.outbound, &self.ctx.parkers);
    }

    /// Sends the held ack datagrams that are complete and writes the TCP acks owners'
    /// verdicts let go (`Engine::send_ready`).
    fn send_ready<E: Engine>(&mut self, engine: &mut E) {
        if self.held.has_ready() || self.streams.has_answers() {
            engine.send_ready(&mut self.ingest());
        }
    }

    /// Hands the core's new events to the writer's queue, stamped with the real-time
    /// clock (read once per batch); a full queue is a counted drop. With MQTT presence,
    /// the devices whose transition was dropped are marked, and their current state
    /// follows once the queue has room (`ShardCore::refresh_unshipped`).
    fn ship_events(&mut self, now_ms: u64) {
        let mut dropped = 0;
        let mut unix_ms = None;
        let index = self.ctx.index;
        let made =
            |event: crate::core::shard::Event, unix_ms: u64, refresh: bool| crate::events::Made {
                shard: index,
                unix_ms,
                last_seen_unix_ms: unix_ms
                    .saturating_sub(now_ms.saturating_sub(event.last_seen_ms)),
                event,
                refresh,
            };
        for event in self.core.drain_events() {
            if let Some(tx) = &self.ctx.events_tx {
                let unix_ms = *unix_ms.get_or_insert_with(crate::events::unix_now_ms);
                if tx.try_send(made(event, unix_ms, false)).is_err() {
                    dropped += 1;
                    if self.presence {
                        self.unshipped.push(event.device_id);
                    }
                }
            }
        }
        self.core.stats_mut().events_dropped += dropped;
        for id in self.unshipped.drain(..) {
            self.core.mark_unshipped(id);
        }
        if dropped == 0 && self.core.unshipped() > 0 {
            if let Some(tx) = &self.ctx.events_tx {
                let unix_ms = *unix_ms.get_or_insert_with(crate::events::unix_now_ms);
                self.core.refresh_unshipped(REFRESH_SLICE, now_ms, |e| {
                    tx.try_send(made(e, unix_ms, true)).is_ok()
                });
            }
        }
    }

    fn tick_ms(&self) -> u64 {
        self.ctx.config.liveness.tick_ms as u64
    }

    /// Reads the socket's drop count; new drops mean heartbeats may have been lost
    /// since the last check.
    fn check_drops(&mut self, now_ms: u64) {
        let mut missed = false;
        if let Ok(drops) = crate::sys::socket::socket_drops(self.ctx.socket.as_raw_fd()) {
            // Cumulative per socket, wraps at 2^32: add the difference.
            let delta = drops.wrapping_sub(self.socket_drops_seen);
            self.socket_drops_seen = drops;
            self.core.stats_mut().kernel_drops += delta as u64;
            missed |= delta > 0;
        }
        // Frames for devices this shard owns that a peer could not hand over (its ring
        // to us was full): heartbeats missed as surely as the socket's.
        let handoff = self
            .ctx
            .inbound
            .iter()
            .fold(0u32, |sum, c| sum.wrapping_add(c.dropped()));
        missed |= handoff != self.handoff_drops_seen;
        self.handoff_drops_seen = handoff;
        if missed {
            self.note_blind(self.blind.last_drop_check_ms, now_ms);
        }
        self.blind.last_drop_check_ms = now_ms;
    }

    /// The shard fell behind its socket since its previous iteration (which stepped
    /// liveness): liveness holds still from then until `catch_up` finds the backlog
    /// taken in.
    fn fell_behind(&mut self, cause: Behind) {
        self.core.hold_liveness(self.blind.last_iteration_ms);
        if !self.blind.own_behind {
            self.blind.own_behind = true;
            self.blind.caught_up = false;
            // Before any frame taken in from now on is published (the ring's release
            // store orders it): an owner that drains one sees the flag.
            self.ctx.shared.behind[self.ctx.index as usize]
                .0
                .store(true, Ordering::Relaxed);
        }
        match cause {
            Behind::Stall => self.blind.stalls += 1,
            Behind::DryRing => self.blind.dry += 1,
        }
        self.log_blind();
    }

    /// The shard has caught up once what waited has been taken in: the engine's
    /// receive is armed (`Engine::behind`), this iteration's receive did
    /// not run dry, and the socket holds no more than one batching wait would leave in
    /// it (`CAUGHT_UP_BYTES`). Read after the receive; the hold itself is released in
    /// `after_receive`, once no peer that hands this shard frames is behind either.
    fn catch_up<E: Engine>(&mut self, engine: &E, dry: bool) {
        let fd = self.ctx.socket.as_raw_fd();
        let queued = crate::sys::socket::socket_queued_bytes(fd);
        if !dry && !engine.behind() && queued.is_ok_and(|b| b < CAUGHT_UP_BYTES) {
            self.blind.own_behind = false;
            self.blind.caught_up = true;
        }
    }

    /// Tells the core the shard was blind over `[from_ms, to_ms)`, and logs it at a
    /// limited rate.
    fn note_blind(&mut self, from_ms: u64, to_ms: u64) {
        if to_ms <= from_ms {
            let b = &mut self.blind;
            // The earliest such instant.
            if b.pending.is_none_or(|from| from_ms < from) {
                b.pending = Some(from_ms);
            }
            return;
        }
        let before = self.core.stats().blind_ms;
        self.core.note_blind(from_ms, to_ms);
        let b = &mut self.blind;
        b.unlogged_ms += self.core.stats().blind_ms - before;
        b.drops += 1;
        self.log_blind();
    }

    /// Says, at most every `BLIND_LOG_EVERY`, what blindness and falling behind the
    /// shard saw since the last time.
    fn log_blind(&mut self) {
        let b = &mut self.blind;
        if b.last_log.is_none_or(|t| t.elapsed() >= BLIND_LOG_EVERY) {
            b.last_log = Some(Instant::now());
            let stats = self.core.stats();
            if b.drops > 0 {
                tracing::warn!(
                    shard = self.ctx.index,
                    blind_ms = b.unlogged_ms,
                    drop_spans = b.drops,
                    deferred_total = stats.deferred,
                    "the shard may have missed heartbeats (its socket or a peer's hand-off dropped some): a device goes late or offline only after a whole threshold of silence outside the blind time (counted in blind_ms and deferred)"
                );
            }
            if b.stalls + b.dry > 0 {
                tracing::warn!(
                    shard = self.ctx.index,
                    stalls = b.stalls,
                    dry_ring = b.dry,
                    behind_ms_total = stats.behind_ms,
                    "the shard fell behind its socket (its loop stalled, or its receive ring ran dry while datagrams waited): liveness held still until it caught up (counted in holds and behind_ms); a dry ring that recurs wants more --buf-count or more cores"
                );
            }
            (b.unlogged_ms, b.drops, b.stalls, b.dry) = (0, 0, 0, 0);
        }
    }

    /// Copies the counters to the shard's slot for the reporter (kernel drops are read
    /// by `check_drops`, at least once per tick).
    fn publish_stats(&mut self) {
        if self.ctx.shared.registry_gen.load(Ordering::Acquire) != self.registry_gen {
            let (generation, update) = take_registry(&self.ctx.shared);
            self.registry_gen = generation;
            let now_ms = self.now_ms();
            if let Err(e) = self
                .core
                .set_registry(update.registry, &update.removed, now_ms)
            {
                tracing::error!(
                    shard = self.ctx.index,
                    "the reloaded devices file is not taken: its replay windows cannot be mapped ({e}); this shard keeps the previous one"
                );
            }
        }
        self.warn_refusals();
        self.ctx.shared.alive_ms[self.ctx.index as usize].store(self.now_ms(), Ordering::Relaxed);
        let mut slot = self.ctx.shared.stats[self.ctx.index as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = *self.core.stats();
    }

    /// Logs refused heartbeats (table full, unknown device, authentication) at most
    /// every `REFUSAL_LOG_EVERY`, with counts by reason and the last one's device.
    fn warn_refusals(&mut self) {
        let now = self.core.stats().refusals().map(|(_, n)| n);
        if now == self.refusals.logged
            || self
                .refusals
                .last_log
                .is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY)
        {
            return;
        }
        let counts: Vec<String> = crate::core::codec::Refusal::ALL
            .iter()
            .zip(now.iter().zip(self.refusals.logged))
            .filter(|(_, (n, was))| **n > *was)
            .map(|(r, (n, was))| format!("{} {}", r.name(), n - was))
            .collect();
        let (device, reason, hint) = match self.core.last_refused {
            Some((id, r)) => (id, r.name(), r.hint()),
            None => (0, "", ""),
        };
        tracing::warn!(
            shard = self.ctx.index,
            last_device = device,
            last_reason = reason,
            "refused heartbeats (not tracked, answered with a non-zero ack status): {}; for the last one: {hint}",
            counts.join(", ")
        );
        self.refusals.logged = now;
        self.refusals.last_log = Some(Instant::now());
    }

    /// The stop sequence (module doc).
    fn stop<E: Engine>(mut self, engine: &mut E) {
        let started = Instant::now();
        // Counting what is left and waiting for peers end here; the final snapshot
        // may take `STOP_SAVE` more.
        let deadline = started + STOP_DRAIN + STOP_COUNT;
        let fd = self.ctx.socket.as_raw_fd();
        // 1. Apply what the socket holds. Each round lets the engine pull what is
        //    queued (a stopping wait never sleeps long), then takes in what that
        //    brought, and only then looks at the socket: data an engine has pulled out
        //    of the socket but not yet handed over (completions in an io_uring CQ) no
        //    longer shows in the socket's queue.
        let now_ms = self.now_ms();
        engine.receive(&mut self.ingest(), now_ms);
        loop {
            let before = self.received();
            let now_ms = self.now_ms();
            self.park_and_wait(engine, now_ms, true);
            engine.receive(&mut self.ingest(), now_ms);
            self.after_receive(now_ms, false);
            let progressed = self.received() != before;
            let empty = crate::sys::socket::socket_queued_bytes(fd).is_ok_and(|b| b == 0);
            if !progressed && empty {
                break;
            }
            if started.elapsed() >= STOP_DRAIN {
                self.count_unread(deadline);
                break;
            }
        }
        // TCP: pending acks written (best effort), connections closed.
        let flush_by = (Instant::now() + STOP_TCP_FLUSH).min(deadline);
        engine.close_streams(&mut self.ingest(), flush_by);
        // 2. Frames peers hand over while they drain their own sockets.
        self.ctx.shared.drained.fetch_add(1, Ordering::Release);
        let shards = self.ctx.shared.stats.len();
        // Acks held for peers' verdicts wait for them as long (the peers answer as they
        // drain their rings).
        while (self.ctx.shared.drained.load(Ordering::Acquire) < shards
            || self.held.tickets_out() > 0)
            && Instant::now() < deadline
        {
            let now_ms = self.now_ms();
            self.after_receive(now_ms, false);
            self.send_ready(engine);
            std::thread::sleep(Duration::from_micros(100));
        }
        // 3. The whole liveness walk, events, the final snapshot, final counters. (Acks
        //    went out in the drain rounds: a round that brought nothing sent nothing;
        //    acks still waiting for a verdict are counted as dropped.)
        let now_ms = self.now_ms();
        self.after_receive(now_ms, true);
        self.send_ready(engine);
        let (waiting, bytes) = self.held.waiting();
        self.core.stats_mut().count_acks_dropped(waiting, bytes);
        engine.finish_sends(&mut self.ingest(), deadline);
        if let Some(saver) = self.ctx.saver.as_mut() {
            saver.save_all(self.core, now_ms, deadline + STOP_SAVE);
        }
        self.ctx.saver = None;
        self.check_drops(now_ms);
        self.publish_stats();
    }

    /// Datagrams the core has seen plus receive errors: progress of a drain round.
    fn received(&self) -> u64 {
        let s = self.core.stats();
        s.datagrams + s.recv_errors + s.tcp_bytes
    }

    /// Reads what is still queued after the drain budget, counting it without applying
    /// it, until the socket is empty or `deadline`.
    fn count_unread(&mut self, deadline: Instant) {
        let fd = self.ctx.socket.as_raw_fd();
        let mut batch = crate::sys::mmsg::RecvBatch::new(64, MAX_DATAGRAM_BYTES);
        let mut unread = 0u64;
        while Instant::now() < deadline {
            match batch.recv(fd) {
                Ok(0) | Err(_) => break,
                Ok(n) => unread += n as u64,
            }
        }
        self.core.stats_mut().unread_at_stop += unread;
        tracing::warn!(
            shard = self.ctx.index,
            unread,
            "the socket still held datagrams after {} ms of draining at stop: counted in unread_at_stop, not applied",
            STOP_DRAIN.as_millis()
        );
    }
}

/// Publishes the frames pushed to each peer and wakes peers that are parked.
fn publish_outbound(outbound: &mut [Option<Producer>], parkers: &[super::Parker]) {
    for (target, p) in outbound.iter_mut().enumerate() {
        let Some(p) = p else { continue };
        if p.unpublished() == 0 {
            continue;
        }
        p.publish();
        // The producer half of the park protocol (see `park_and_wait`).
        fence(Ordering::SeqCst);
        let parker = &parkers[target];
        if parker.parked.load(Ordering::Relaxed) && parker.parked.swap(false, Ordering::AcqRel) {
            parker.efd.notify();
        }
    }
}
