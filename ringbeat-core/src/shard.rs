//! `ShardCore`: everything one shard knows, as plain data. The engines hand it received
//! datagrams, forwarded frames and the current time; it hands back ack bytes, frames to
//! forward and liveness events. It never touches a socket, a ring or the clock, which
//! is what lets `tests/simulation.rs` drive it under simulated time from a seed.

use super::codec::{
    self, FrameError, FrameV2, Heartbeat, Key, Refusal, Wire, FRAME_BYTES, FRAME_V2_BYTES,
    MAX_DATAGRAM_BYTES, TAGGED_BYTES, VERSION_2,
};
use super::held::{self, Verdict};
use super::liveness::{Thresholds, Wheel};
use super::owner::owner;
use super::registry::{Counter, RegistryIn, ReplayWindow};
use super::stats::ShardStats;
use super::stream::{Fed, Feed, StreamDecoder};
use super::table::{Device, DeviceTable, Liveness, Lookup, Slot, MAX_BATCH};
use crate::memory::Memory;
use crate::snapshot::{Record, SavedWindow};
use std::sync::Arc;

/// Wheel entries an engine visits per `advance_slice` between receive batches. A
/// tick's rechecks come in bursts (every device about once per interval: 1M devices on
/// 1 s intervals put ~6,700 in each 10 ms tick, a few hundred µs of cache misses);
/// slices of 256 (~10 µs) let receive run between them, and a tick's work still ends
/// far inside the tick.
pub const LIVENESS_SLICE: usize = 256;

/// What the core needs to know, derived from the validated server `Config`.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    pub shard: u32,
    pub shards: u32,
    /// Device table capacity of this shard.
    pub max_devices: u32,
    pub thresholds: Thresholds,
    /// Interval used when a heartbeat says 0 (deciseconds, > 0).
    pub default_interval_ds: u16,
    pub tick_ms: u32,
    /// Events held between two drains; more in one drain are counted as dropped.
    pub event_capacity: usize,
    /// Back the device table with transparent huge pages.
    pub huge_pages: bool,
    /// Refuse version-1 (unauthenticated) heartbeats from every device.
    pub require_auth: bool,
}

impl CoreConfig {
    /// Shard `shard` of `shards` with room for `max_devices`, the protocol's default
    /// thresholds (late after 1.5 intervals, offline after 3), 1 s for heartbeats that
    /// say 0, 10 ms ticks, 4,096 events between drains, no huge pages: for tests,
    /// fuzzing and benches, which change what they need with `..CoreConfig::basic(..)`.
    pub fn basic(shard: u32, shards: u32, max_devices: u32) -> CoreConfig {
        CoreConfig {
            shard,
            shards,
            max_devices,
            thresholds: Thresholds {
                late_after_permille: 1500,
                offline_after_permille: 3000,
            },
            default_interval_ds: 10,
            tick_ms: 10,
            event_capacity: 4096,
            huge_pages: false,
            require_auth: false,
        }
    }
}

/// A version-2 frame handed to its owner travels as 32 bytes: its header with `boot`
/// in place of `sent_ns` (the owner needs the counter, not the sender's clock, and the
/// receiving shard has checked the tag). Rings carry 32-byte frames only.
fn forwarded_v2(frame: &FrameV2<'_>) -> [u8; FRAME_BYTES] {
    let mut out = held::stamp(frame.header().bytes(), None);
    out[24..28].copy_from_slice(&frame.boot().to_le_bytes());
    out[28..32].fill(0);
    out
}

/// What `prepare_datagram` learnt of a datagram's (or a stream stage's) version-2
/// frames, by the unit index their frame starts at.
struct Prepared {
    /// Bit i: the frame's tag is right under its device's key.
    verified: u64,
    /// Bit i: the frame's device was looked up in the registry, `found[i]` says where.
    looked_up: u64,
    /// The registry slot of the frame's entry (`RegistryIn::at`), u32::MAX: not listed.
    found: [u32; 64],
}

/// What preparing its datagram learnt of one frame (`Known::default()`: nothing, it is
/// checked alone).
#[derive(Clone, Copy, Default)]
struct Known {
    /// Whether its tag was right (None: version 1, or not prepared).
    tag_ok: Option<bool>,
    /// Its registry lookup, if one was made: the entry's slot, or None when not listed.
    listed: Option<Option<u32>>,
}

impl Prepared {
    /// What `p` knows of the frame at unit `i`.
    #[inline(always)]
    fn of(p: Option<&Prepared>, i: usize, frame: &Wire<'_>) -> Known {
        match (p, frame) {
            (Some(p), Wire::V2(_)) => Known {
                tag_ok: Some(p.verified >> i & 1 == 1),
                listed: (p.looked_up >> i & 1 == 1)
                    .then(|| Some(p.found[i]).filter(|&at| at != u32::MAX)),
            },
            _ => Known::default(),
        }
    }
}

/// A frame the receiving shard let through, as its owner takes it.
#[derive(Clone, Copy)]
struct Admitted {
    device_id: u64,
    seq: u32,
    status: u16,
    interval_ds: u16,
    /// Version 2: the registry's local index and the (boot, seq) counter.
    counter: Option<(u32, u64)>,
    /// Where the registry's entry says the device's record is.
    record: Option<Slot>,
}

/// One liveness transition, as emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub device_id: u64,
    pub from: Liveness,
    pub to: Liveness,
    pub epoch: u32,
    pub seq: u32,
    pub status: u16,
    /// Shard time of the transition (ms): the heartbeat's arrival for → online, the
    /// deadline's tick for → late and → offline.
    pub time_ms: u64,
    /// This shard's event number: 1, 2, 3, ... in the order events are made, dropped
    /// ones included, so a consumer orders and deduplicates by (shard, number) and sees
    /// a gap where an event was lost.
    pub event_seq: u64,
    /// Shard time of the device's last heartbeat (for → online, the heartbeat itself).
    pub last_seen_ms: u64,
}

/// Where transitions go: the bounded buffer the engine drains, the counters, and the
/// event numbering. Split from `ShardCore` so the wheel can walk the table while
/// transitions are recorded.
struct Emitter {
    events: Vec<Event>,
    next_seq: u64,
    /// With presence tracked: the devices whose latest transition was dropped.
    unshipped: Option<Unshipped>,
}

/// The devices whose latest transition never reached the event queue (the core's
/// buffer or the engine's queue was full), one bit per table slot, so that presence
/// (MQTT), which is state and not a log, can be sent their current state instead
/// (`ShardCore::refresh_unshipped`). A bitmap and not a list of the dropped events:
/// bounded by the table (128 KiB per million devices) however many are dropped, and
/// what is sent again is the device's state when it is sent, never an older one.
struct Unshipped {
    words: Vec<u64>,
    count: u32,
    /// Where the next refresh starts looking (a word index).
    cursor: usize,
}

impl Unshipped {
    fn mark(&mut self, slot: Slot) {
        let (w, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if let Some(word) = self.words.get_mut(w) {
            if *word & bit == 0 {
                *word |= bit;
                self.count += 1;
            }
        }
    }

    /// The next marked slot at or after the cursor (wrapping), cleared.
    fn take(&mut self) -> Option<Slot> {
        if self.count == 0 {
            return None;
        }
        let n = self.words.len();
        for i in 0..n {
            let w = (self.cursor + i) % n;
            let word = self.words[w];
            if word != 0 {
                let bit = word.trailing_zeros();
                self.words[w] &= !(1u64 << bit);
                self.count -= 1;
                self.cursor = w;
                return Some((w * 64) as Slot + bit);
            }
        }
        None
    }
}

impl Emitter {
    fn emit(
        &mut self,
        stats: &mut ShardStats,
        slot: Slot,
        d: &Device,
        from: Liveness,
        to: Liveness,
        at_ms: u64,
    ) {
        count_state(stats, from, to);
        stats.events += 1;
        let event_seq = self.next_seq;
        self.next_seq += 1;
        if self.events.len() == self.events.capacity() {
            stats.events_dropped += 1;
            if let Some(u) = self.unshipped.as_mut() {
                u.mark(slot);
            }
            return;
        }
        let last_seen_ms = d.last_seen_before(at_ms);
        self.events.push(Event {
            device_id: d.device_id,
            from,
            to,
            epoch: d.epoch,
            seq: d.last_seq,
            status: d.status,
            time_ms: at_ms,
            event_seq,
            last_seen_ms,
        });
    }
}

/// Moves one device from `from` to `to` in the state gauges.
fn count_state(s: &mut ShardStats, from: Liveness, to: Liveness) {
    match from {
        Liveness::Online => s.online -= 1,
        Liveness::Late => s.late -= 1,
        Liveness::Offline => s.offline -= 1,
        Liveness::Unknown | Liveness::Forgotten => {}
    }
    match to {
        Liveness::Online => s.online += 1,
        Liveness::Late => s.late += 1,
        Liveness::Offline => s.offline += 1,
        Liveness::Unknown | Liveness::Forgotten => {}
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    device_id: u64,
    seq: u32,
    status: u16,
    interval_ds: u16,
    /// The device restarted (a version-2 boot counter advanced): a new session.
    new_session: bool,
    /// Where the registry's entry says the device's record is (a hint, checked by the
    /// table); None without a registry or before the entry knows.
    record: Option<Slot>,
}

/// Generic over where its large arrays live (`Memory`): mapped memory in the server,
/// heap vectors in tests and the simulation.
pub struct ShardCore<M: Memory> {
    cfg: CoreConfig,
    table: DeviceTable<M>,
    wheel: Wheel<M>,
    stats: ShardStats,
    pending: Vec<Pending>,
    pending_now_ms: u64,
    emitter: Emitter,
    /// The last tick (shard ms / tick) the table took its growth step in.
    growth_tick: u64,
    /// The end of the hold time already added to `behind_ms`.
    behind_counted_to: u64,
    /// The device registry (`--devices-file`), shared by every shard; `None`: any id.
    registry: Option<Arc<RegistryIn<M>>>,
    /// Replay windows of the registered devices this shard owns, by `Entry::local`
    /// (16 bytes each, read at random: on huge pages, as the registry's index is).
    windows: M::Windows,
    /// Whether the last applied heartbeat found the table full.
    last_full: bool,
    /// The last refused heartbeat's device and reason, for the rate-limited warning.
    pub last_refused: Option<(u64, Refusal)>,
    /// Version-2 acks of the datagram being taken whose tags are still to be made.
    ack_tags: AckTags,
}

/// 32-byte units of a TCP read staged for one round of registry prefetches and tag
/// checks (`prepare_datagram` takes up to 64: its result is a mask by unit).
const STAGE_UNITS: usize = 64;

/// Version-2 acks written with their tags left zero, to be tagged together once the
/// datagram's frames are all taken: eight at a time (`Memory::tags48x8`) instead of one
/// SipHash after another, which was the largest part of a version-2 heartbeat's cost.
struct AckTags {
    /// Deferring (within `ingest_datagram`); elsewhere each ack is tagged as written.
    on: bool,
    /// Bytes of acks written so far in this datagram (where the next ack starts).
    written: usize,
    /// (where the ack starts among the acks, the key to tag it with).
    todo: [(usize, codec::Key); MAX_DATAGRAM_BYTES / FRAME_V2_BYTES],
    len: usize,
}

impl<M: Memory> ShardCore<M> {
    pub fn new(cfg: CoreConfig, now_ms: u64) -> std::io::Result<ShardCore<M>> {
        assert!(cfg.shard < cfg.shards && cfg.default_interval_ds > 0 && cfg.event_capacity > 0);
        Ok(ShardCore {
            table: DeviceTable::with_pages(cfg.max_devices, cfg.huge_pages)?,
            wheel: Wheel::new(cfg.tick_ms, now_ms, cfg.max_devices)?,
            stats: ShardStats::default(),
            // Capacities fixed here; pushes never exceed them (checked before each push).
            pending: Vec::with_capacity(MAX_BATCH),
            pending_now_ms: now_ms,
            growth_tick: now_ms / cfg.tick_ms as u64,
            behind_counted_to: 0,
            emitter: Emitter {
                events: Vec::with_capacity(cfg.event_capacity),
                next_seq: 1,
                unshipped: None,
            },
            cfg,
            registry: None,
            windows: M::windows(0, false)?,
            last_full: false,
            last_refused: None,
            ack_tags: AckTags {
                on: false,
                written: 0,
                todo: [(0, [0; 16]); MAX_DATAGRAM_BYTES / FRAME_V2_BYTES],
                len: 0,
            },
        })
    }

    /// Takes a (new) device registry: replay windows of devices it still lists are kept,
    /// and devices in `removed` that this shard tracks are forgotten, each with an event
    /// (→ forgotten). `None` lifts the registry: any id is taken again. Fails, changing
    /// nothing, when the memory for the new windows cannot be mapped.
    pub fn set_registry(
        &mut self,
        next: Option<Arc<RegistryIn<M>>>,
        removed: &[u64],
        now_ms: u64,
    ) -> std::io::Result<()> {
        let owned = next
            .as_ref()
            .map_or(0, |r| r.owned_by(self.cfg.shard) as usize);
        let mut windows = M::windows(owned, true)?;
        self.flush();
        if let Some(r) = &next {
            if let Some(old) = &self.registry {
                for (id, e) in r.iter() {
                    if owner(id, self.cfg.shards) != self.cfg.shard {
                        continue;
                    }
                    if let Some(o) = old.get(id) {
                        let w = self.windows[o.local() as usize];
                        // (An empty window is left alone: the new windows are all
                        // empty, and writing one would make its page resident.)
                        if o.key() == e.key() && w != ReplayWindow::default() {
                            windows[e.local() as usize] = w;
                        }
                    }
                }
            }
        }
        self.registry = next;
        self.windows = windows;
        for &id in removed {
            if owner(id, self.cfg.shards) != self.cfg.shard {
                continue;
            }
            let Some(slot) = self.table.find(id) else {
                continue;
            };
            let d = self.table.device_mut(slot);
            let before = d.liveness();
            if before == Liveness::Forgotten {
                continue;
            }
            d.set_liveness(Liveness::Forgotten);
            let d = *d;
            self.stats.forgotten += 1;
            self.emitter.emit(
                &mut self.stats,
                slot,
                &d,
                before,
                Liveness::Forgotten,
                now_ms,
            );
        }
        Ok(())
    }

    pub fn registry(&self) -> Option<&Arc<RegistryIn<M>>> {
        self.registry.as_ref()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }
    pub fn stats_mut(&mut self) -> &mut ShardStats {
        &mut self.stats
    }
    pub fn table(&self) -> &DeviceTable<M> {
        &self.table
    }

    /// The period the server expects of a device: its registry entry's interval when
    /// it has one, else what its heartbeat says (`expected_interval_ds`).
    #[inline]
    fn interval_for(&self, entry: Option<&crate::registry::Entry>, interval_ds: u16) -> u16 {
        match entry {
            Some(e) if e.interval_ds() != 0 => e.interval_ds(),
            _ => self.expected_interval_ds(interval_ds),
        }
    }

    /// The period the server expects from a heartbeat carrying `interval_ds`.
    #[inline]
    pub fn expected_interval_ds(&self, interval_ds: u16) -> u16 {
        if interval_ds == 0 {
            self.cfg.default_interval_ds
        } else {
            interval_ds
        }
    }

    /// Starts loading what taking `datagram` will first read: its devices' registry
    /// lines, or without a registry their index buckets. An engine calls it for the
    /// next datagram before it takes this one, so those misses overlap the work on
    /// this one instead of stalling the next (reading a datagram's ids and then
    /// looking them up at once leaves a prefetch no time to land). It changes nothing.
    #[inline]
    pub fn prefetch_datagram(&self, datagram: &[u8]) {
        let Ok(units) = codec::datagram_frames(datagram) else {
            return;
        };
        for (i, _) in codec::frames(units) {
            let id = codec::unit_device_id(&units[i]);
            match self.registry.as_deref() {
                Some(r) => r.prefetch(id),
                None => self.table.prefetch_home(id),
            }
        }
    }

    /// Takes one received datagram: validates it, writes the ack datagram for its
    /// ACK_REQUESTED frames into `acks` (returns its length, 0 = nothing to send),
    /// queues owned frames for the table and hands the others to
    /// `forward(owner, frame, ack_at)`, which returns false when the owner's ring is full
    /// (counted as a drop). `ack_at` is where the frame's ack sits among the acks (bytes)
    /// when it asked for one: that ack says accepted, and the caller may hold the acks
    /// for the owner's verdict (`held`).
    pub fn ingest_datagram(
        &mut self,
        datagram: &[u8],
        now_ms: u64,
        acks: &mut [u8; MAX_DATAGRAM_BYTES],
        mut forward: impl FnMut(u32, &[u8; FRAME_BYTES], Option<usize>) -> bool,
    ) -> usize {
        self.stats.datagrams += 1;
        let frames = match codec::datagram_frames(datagram) {
            Ok(f) => f,
            Err(e) => {
                self.stats.count_datagram_error(e);
                return 0;
            }
        };
        let prepared = self.prepare_datagram(frames);
        self.ack_tags.on = true;
        self.ack_tags.written = 0;
        self.ack_tags.len = 0;
        let mut ack_len = 0;
        for (i, frame) in codec::frames(frames) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    self.stats.count_frame_error(e);
                    break;
                }
            };
            let known = Prepared::of(prepared.as_ref(), i, &frame);
            // An ack is as long as its heartbeat, so the acks fit as the frames did.
            let at = ack_len;
            let take = |ack: &[u8]| {
                acks[ack_len..ack_len + ack.len()].copy_from_slice(ack);
                ack_len += ack.len();
            };
            let _ = self.ingest_unit(frame, known, now_ms, at, &mut forward, take);
        }
        self.ack_tags.on = false;
        debug_assert_eq!(self.ack_tags.written, ack_len);
        self.tag_acks(&mut acks[..ack_len]);
        ack_len
    }

    /// Makes the tags of the version-2 acks `write_ack` left untagged, eight at a time.
    #[inline]
    fn tag_acks(&mut self, acks: &mut [u8]) {
        const LANES: usize = 8;
        let t = &self.ack_tags;
        for chunk in t.todo[..t.len].chunks(LANES) {
            let zero = [0u8; TAGGED_BYTES];
            let messages: [&[u8; TAGGED_BYTES]; LANES] = std::array::from_fn(|l| {
                chunk.get(l).map_or(&zero, |&(at, _)| {
                    acks[at..at + TAGGED_BYTES].try_into().expect("48 bytes")
                })
            });
            let tags = M::tags48x8(
                std::array::from_fn(|l| chunk.get(l).map_or(&chunk[0].1, |(_, key)| key)),
                messages,
            );
            for (&(at, _), tag) in chunk.iter().zip(tags) {
                acks[at + TAGGED_BYTES..at + FRAME_V2_BYTES].copy_from_slice(&tag);
            }
        }
        self.ack_tags.len = 0;
    }

    /// With a registry, a datagram's frames are looked up there one by one; each lookup
    /// is a likely cache miss (32-byte entries, 128 MiB at 2M devices), so the entries
    /// of every frame are prefetched first and the misses overlap. Version-2 frames then
    /// get their replay windows prefetched and their tags checked here, eight at a time
    /// (`Memory::tags48x8`): the result says, by unit index, whose frame's tag is right
    /// under its device's key, and where each one's registry entry is (so a frame is
    /// looked up once); `None` when there is no registry or no version-2 frame.
    #[inline]
    fn prepare_datagram(&self, frames: &[[u8; FRAME_BYTES]]) -> Option<Prepared> {
        let r = self.registry.as_deref()?;
        let id = codec::unit_device_id;
        let mut v2 = false;
        for (i, frame) in codec::frames(frames) {
            r.prefetch(id(&frames[i]));
            v2 |= matches!(frame, Ok(Wire::V2(_)));
        }
        if !v2 {
            return None;
        }
        // (unit index, key, the 48 tagged bytes, the frame's tag), eight at a time.
        // Eight lanes: what `Memory::tags48x8` takes (two AVX2 registers of u64s).
        const LANES: usize = 8;
        let mut mask = 0u64;
        let (mut looked_up, mut found) = (0u64, [u32::MAX; 64]);
        let mut lanes: [(usize, Key, &[u8; TAGGED_BYTES], &[u8]); LANES] =
            [(0, [0; 16], &[0; TAGGED_BYTES], &[]); LANES];
        let mut filled = 0;
        let mut check = |lanes: &[(usize, Key, &[u8; TAGGED_BYTES], &[u8]); LANES], n: usize| {
            let tags = M::tags48x8(
                std::array::from_fn(|l| &lanes[l].1),
                std::array::from_fn(|l| lanes[l].2),
            );
            for (lane, tag) in lanes.iter().zip(tags).take(n) {
                mask |= (codec::tags_equal(lane.3, &tag) as u64) << lane.0;
            }
        };
        for (i, frame) in codec::frames(frames) {
            let Ok(Wire::V2(pair)) = frame else { continue };
            let at = r.find(id(&frames[i]));
            looked_up |= 1 << i;
            let Some(at) = at else { continue };
            found[i] = at;
            let e = r.at(at);
            let Some(key) = e.key() else { continue };
            // Its window and (where the entry knows it) its record, side by side.
            if let Some(w) = self.windows.get(e.local() as usize) {
                M::prefetch(w);
            }
            if let Some(slot) = e.record_hint().filter(|&s| s < self.table.len()) {
                M::prefetch(self.table.device(slot));
            }
            lanes[filled] = (
                i,
                *key,
                pair[..TAGGED_BYTES].try_into().expect("48 bytes"),
                &pair[TAGGED_BYTES..],
            );
            filled += 1;
            if filled == LANES {
                check(&lanes, LANES);
                filled = 0;
            }
        }
        if filled > 0 {
            check(&lanes, filled);
        }
        Some(Prepared {
            verified: mask,
            looked_up,
            found,
        })
    }

    /// Takes the next bytes of a TCP connection's stream (`decoder` is the connection's
    /// carry): every frame they complete is validated and applied (or forwarded, or
    /// counted) in stream order, and `ack` gets the ack of each ACK_REQUESTED frame in
    /// that order. A bad magic means the stream is out of step (PROTOCOL-v1): the
    /// frames before it are applied and acked, nothing after it is looked at, and the
    /// result says the connection is to be closed. Other malformed frames are counted
    /// by reason and skipped.
    pub fn ingest_stream(
        &mut self,
        decoder: &mut StreamDecoder,
        bytes: &[u8],
        now_ms: u64,
        mut ack: impl FnMut(&[u8]),
        mut forward: impl FnMut(u32, &[u8; FRAME_BYTES], Option<usize>) -> bool,
    ) -> Fed {
        self.stats.tcp_bytes += bytes.len() as u64;
        // Bytes of acks written by this call, for `forward`'s `ack_at`.
        let acked = std::cell::Cell::new(0);
        let mut ack = |a: &[u8]| {
            acked.set(acked.get() + a.len());
            ack(a)
        };
        let fed = if self.registry.is_none() {
            decoder.feed_frames(bytes, |frame| {
                let known = Known::default();
                match self.ingest_unit(frame, known, now_ms, acked.get(), &mut forward, &mut ack) {
                    Err(FrameError::BadMagic) => Feed::Stop,
                    _ => Feed::Continue,
                }
            })
        } else {
            // With a registry, frames are staged as a datagram's are taken: their
            // registry lines prefetched together and their tags checked eight at a
            // time, instead of one cache miss and one SipHash after another.
            // A staged frame always has the right magic (a bad one is taken at once,
            // and ends the stream), so only the last stage can stop it.
            let mut stage = [[0u8; FRAME_BYTES]; STAGE_UNITS];
            let mut staged = 0;
            let fed = decoder.feed_frames(bytes, |frame| {
                let units = frame.bytes().len() / FRAME_BYTES;
                if staged + units > STAGE_UNITS {
                    self.ingest_staged(&stage[..staged], now_ms, &acked, &mut forward, &mut ack);
                    staged = 0;
                }
                for (k, unit) in frame.bytes().chunks_exact(FRAME_BYTES).enumerate() {
                    stage[staged + k].copy_from_slice(unit);
                }
                staged += units;
                if frame.bytes()[..4] != codec::MAGIC {
                    // Out of step: what came before it is taken, nothing after it.
                    self.ingest_staged(&stage[..staged], now_ms, &acked, &mut forward, &mut ack);
                    staged = 0;
                    return Feed::Stop;
                }
                Feed::Continue
            });
            if staged > 0 {
                self.ingest_staged(&stage[..staged], now_ms, &acked, &mut forward, &mut ack);
            }
            fed
        };
        self.stats.tcp_frames += fed.frames as u64;
        self.stats.tcp_split_frames += fed.split as u64;
        fed
    }

    /// Takes frames a stream staged (whole frames, in stream order), as
    /// `ingest_datagram` takes a datagram's. A frame with a bad magic is only ever the
    /// last of them (`ingest_stream` stops staging at it).
    fn ingest_staged(
        &mut self,
        units: &[[u8; FRAME_BYTES]],
        now_ms: u64,
        acked: &std::cell::Cell<usize>,
        forward: &mut impl FnMut(u32, &[u8; FRAME_BYTES], Option<usize>) -> bool,
        ack: &mut impl FnMut(&[u8]),
    ) {
        let prepared = self.prepare_datagram(units);
        for (i, frame) in codec::frames(units) {
            // Staged frames are whole: a version-2 header always has its second half.
            let Ok(frame) = frame else { continue };
            let known = Prepared::of(prepared.as_ref(), i, &frame);
            // A malformed frame is counted there; the stream's stop is decided by
            // `ingest_stream`.
            let at = acked.get();
            let _ = self.ingest_unit(frame, known, now_ms, at, forward, &mut *ack);
        }
    }

    /// One frame from the network, datagram or stream: validated (a malformed frame is
    /// counted by reason and returned, never answered), checked against the registry and
    /// its key (a refusal is counted and answered with its status), then taken here when
    /// this shard owns its device, else forwarded; acked through `ack` when it asks.
    ///
    /// What only the owner can know, it decides before the ack when the owner is this
    /// shard: a replayed counter, and (when the table is nearly full) whether a new
    /// device fits. A frame handed to another shard is acked as accepted once it passed
    /// the checks made here; its owner still refuses (and counts) a replay or a full
    /// table, but that answer does not reach the sender.
    #[inline(always)]
    fn ingest_unit(
        &mut self,
        frame: Wire<'_>,
        known: Known,
        now_ms: u64,
        ack_at: usize,
        forward: &mut impl FnMut(u32, &[u8; FRAME_BYTES], Option<usize>) -> bool,
        mut ack: impl FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        let decoded = match frame {
            Wire::V1(raw) => codec::decode_heartbeat(raw).map(|h| (h, None)),
            Wire::V2(raw) => codec::decode_v2(raw).map(|f| (f.header(), Some(f))),
        };
        let (hb, v2) = match decoded {
            Ok(d) => d,
            Err(e) => {
                self.stats.count_frame_error(e);
                return Err(e);
            }
        };
        self.stats.frames_valid += 1;
        let device_id = hb.device_id();
        // The registry's slot (prefetched for the datagram; looked up already when
        // `known` says where), and for a keyed device its key and replay window index;
        // None without a registry.
        let listed = self.registry.as_deref().map(|r| match known.listed {
            Some(found) => found.map(|at| r.at(at).clone()),
            None => r.get(device_id).cloned(),
        });
        let entry = match listed {
            None => None,
            Some(Some(e)) => Some(e),
            Some(None) => {
                let interval_ds = self.expected_interval_ds(hb.interval_ds());
                let r = Refusal::UnknownDevice;
                self.answer_refusal(&hb, v2.as_ref(), None, r, interval_ds, &mut ack);
                return Ok(());
            }
        };
        let interval_ds = self.interval_for(entry.as_ref(), hb.interval_ds());
        let keyed = entry.as_ref().is_some_and(|e| e.keyed());
        let key = entry.as_ref().and_then(|e| e.key().copied());
        let local = entry.as_ref().map_or(0, |e| e.local());
        let record = entry.as_ref().and_then(|e| e.record_hint());
        let counter = match &v2 {
            None if keyed || self.cfg.require_auth => {
                let r = Refusal::AuthRequired;
                self.answer_refusal(&hb, None, None, r, interval_ds, &mut ack);
                return Ok(());
            }
            None => None,
            Some(f)
                if key
                    .as_ref()
                    .is_some_and(|k| known.tag_ok.unwrap_or_else(|| f.verify(k))) =>
            {
                self.stats.authenticated += 1;
                Some((local, f.counter()))
            }
            Some(f) => {
                let r = Refusal::AuthFailed;
                self.answer_refusal(&hb, Some(f), key.as_ref(), r, interval_ds, &mut ack);
                return Ok(());
            }
        };
        let target = owner(device_id, self.cfg.shards);
        let refused = if target == self.cfg.shard {
            let admitted = Admitted {
                device_id,
                seq: hb.seq(),
                status: hb.status(),
                interval_ds,
                counter,
                record,
            };
            self.take(admitted, now_ms, hb.ack_requested())
        } else {
            let handed = match &v2 {
                None => held::stamp(hb.bytes(), None),
                Some(f) => forwarded_v2(f),
            };
            let sent = forward(target, &handed, hb.ack_requested().then_some(ack_at));
            if sent {
                self.stats.forwarded += 1;
                None
            } else {
                // The owner's ring is full: the heartbeat is lost here, counted in
                // `forward_drops`, told to the sender (status 6) and to the owner (its
                // ring counts the drop, which the owner reads as blindness).
                Some(Refusal::Busy)
            }
        };
        match refused {
            None => self.write_ack(
                &hb,
                v2.as_ref(),
                key.as_ref(),
                codec::ACK_ACCEPTED,
                interval_ds,
                &mut ack,
            ),
            Some(r) => {
                self.answer_refusal(&hb, v2.as_ref(), key.as_ref(), r, interval_ds, &mut ack)
            }
        }
        Ok(())
    }

    /// Counts a refusal and answers it when the frame asked for an ack, with the
    /// period the server expects of the device (`interval_for`, as an accepted frame's
    /// ack would carry).
    #[cold]
    fn answer_refusal(
        &mut self,
        hb: &Heartbeat<'_>,
        v2: Option<&FrameV2<'_>>,
        key: Option<&codec::Key>,
        r: Refusal,
        interval_ds: u16,
        ack: &mut impl FnMut(&[u8]),
    ) {
        if r != Refusal::TableFull {
            // A full table is counted where the lookup failed.
            self.stats.count_refusal(r);
        }
        self.last_refused = Some((hb.device_id(), r));
        self.write_ack(hb, v2, key, r.status(), interval_ds, ack);
    }

    /// Writes the frame's ack (when it asked for one) in its own version.
    #[inline(always)]
    fn write_ack(
        &mut self,
        hb: &Heartbeat<'_>,
        v2: Option<&FrameV2<'_>>,
        key: Option<&codec::Key>,
        status: u16,
        interval_ds: u16,
        ack: &mut impl FnMut(&[u8]),
    ) {
        if !hb.ack_requested() {
            return;
        }
        match v2 {
            None => {
                let mut out = [0u8; FRAME_BYTES];
                codec::encode_ack_status(hb, status, interval_ds, &mut out);
                self.ack_tags.written += FRAME_BYTES;
                ack(&out);
            }
            Some(f) => {
                let mut out = [0u8; FRAME_V2_BYTES];
                let t = &mut self.ack_tags;
                match key {
                    Some(key) if t.on => {
                        codec::encode_ack_v2_untagged(f, status, interval_ds, &mut out);
                        t.todo[t.len] = (t.written, *key);
                        t.len += 1;
                    }
                    _ => codec::encode_ack_v2(f, status, interval_ds, key, &mut out),
                }
                t.written += FRAME_V2_BYTES;
                ack(&out);
            }
        }
    }

    /// Takes an admitted heartbeat for a device this shard owns: its replay counter is
    /// checked now, the table lookup is queued for the next batch, unless `decide` (the
    /// sender waits for an answer) and the table may be full, then the batch is applied
    /// at once so the answer is known. Returns the refusal, if any, for the caller to
    /// count (a full table is counted where the lookup failed).
    #[inline(always)]
    fn take(&mut self, a: Admitted, now_ms: u64, decide: bool) -> Option<Refusal> {
        let mut new_session = false;
        if let Some((local, counter)) = a.counter {
            let Some(w) = self.windows.get_mut(local as usize) else {
                // No registry entry (a reload raced a hand-off): nothing to check against.
                return Some(Refusal::UnknownDevice);
            };
            match w.take(counter) {
                Counter::Replayed => return Some(Refusal::Replayed),
                Counter::Ahead { new_boot } => new_session = new_boot,
                Counter::Reordered => {}
            }
        }
        // The record is read at the flush: start loading it now.
        if let Some(slot) = a.record.filter(|&s| s < self.table.len()) {
            M::prefetch(self.table.device(slot));
        }
        let at_risk =
            self.table.len() as usize + self.pending.len() + 1 >= self.table.capacity() as usize;
        self.push_pending(a, new_session, now_ms);
        if decide && at_risk {
            self.flush();
            if self.last_full {
                return Some(Refusal::TableFull);
            }
        }
        None
    }

    /// Takes a frame another shard received for a device this shard owns.
    /// The receiving shard checked the frame (registry, key); the registry's interval
    /// and the replay counter are the owner's to apply. A frame with a ticket (its
    /// sender waits for an ack the receiving shard holds) is decided at once, as a
    /// frame received here would be, and its verdict returned, to send back.
    pub fn ingest_forwarded(&mut self, frame: &[u8; FRAME_BYTES], now_ms: u64) -> Option<Verdict> {
        let ticket = held::ticket_of(frame);
        let verdict = |status: u16| ticket.map(|ticket| Verdict { ticket, status });
        let v2 = codec::unit_version(frame) == Some(VERSION_2);
        let mut header = *frame;
        if v2 {
            header[4..6].copy_from_slice(&codec::VERSION.to_le_bytes());
        }
        let hb = match codec::decode_heartbeat(&header) {
            Ok(hb) => hb,
            // Only validated frames are forwarded; count rather than trust blindly.
            Err(e) => {
                self.stats.count_frame_error(e);
                return verdict(codec::ACK_BUSY);
            }
        };
        debug_assert_eq!(owner(hb.device_id(), self.cfg.shards), self.cfg.shard);
        self.stats.forwarded_in += 1;
        let entry = self
            .registry
            .as_ref()
            .map(|r| r.get(hb.device_id()).cloned());
        let entry = match entry {
            Some(None) => {
                // Forgotten by a reload since the receiving shard looked.
                self.stats.count_refusal(Refusal::UnknownDevice);
                return verdict(Refusal::UnknownDevice.status());
            }
            Some(Some(e)) => Some(e),
            None => None,
        };
        let interval_ds = self.interval_for(entry.as_ref(), hb.interval_ds());
        let counter = v2.then(|| {
            let boot = u32::from_le_bytes(frame[24..28].try_into().expect("4 bytes"));
            (
                entry.as_ref().map_or(u32::MAX, |e| e.local()),
                (boot as u64) << 32 | hb.seq() as u64,
            )
        });
        let admitted = Admitted {
            device_id: hb.device_id(),
            seq: hb.seq(),
            status: hb.status(),
            interval_ds,
            counter,
            record: entry.as_ref().and_then(|e| e.record_hint()),
        };
        match self.take(admitted, now_ms, ticket.is_some()) {
            None => verdict(codec::ACK_ACCEPTED),
            Some(r) => {
                if r != Refusal::TableFull {
                    // A full table is counted where the lookup failed.
                    self.stats.count_refusal(r);
                }
                self.last_refused = Some((hb.device_id(), r));
                verdict(r.status())
            }
        }
    }

    /// Writes an owner's refusal into the ack (32 or 64 bytes) held for its handed
    /// frame: the status, and for a version-2 ack its tag anew under the device's key
    /// (the tag covers the status).
    pub fn restatus_ack(&self, ack: &mut [u8], status: u16) {
        if ack.len() < FRAME_BYTES {
            return;
        }
        ack[20..22].copy_from_slice(&status.to_le_bytes());
        if ack.len() < FRAME_V2_BYTES {
            return;
        }
        let id = codec::unit_device_id(ack[..FRAME_BYTES].try_into().expect("32 bytes"));
        let key = self
            .registry
            .as_deref()
            .and_then(|r| r.get(id))
            .and_then(|e| e.key().copied());
        match key {
            Some(k) => {
                let tag = codec::tag(&k, &ack[..TAGGED_BYTES]);
                ack[TAGGED_BYTES..FRAME_V2_BYTES].copy_from_slice(&tag);
            }
            None => ack[TAGGED_BYTES..FRAME_V2_BYTES].fill(0),
        }
    }

    fn push_pending(&mut self, a: Admitted, new_session: bool, now_ms: u64) {
        if self.pending.len() == MAX_BATCH {
            self.flush();
        }
        self.pending_now_ms = now_ms;
        self.pending.push(Pending {
            device_id: a.device_id,
            seq: a.seq,
            status: a.status,
            interval_ds: a.interval_ds,
            new_session,
            record: a.record,
        });
    }

    /// Applies queued heartbeats to the table with one batched lookup.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len();
        let mut ids = [0u64; MAX_BATCH];
        let mut records = [None; MAX_BATCH];
        for (i, p) in self.pending.iter().enumerate() {
            ids[i] = p.device_id;
            records[i] = p.record;
        }
        let mut found = [Lookup::Full; MAX_BATCH];
        self.table
            .lookup_or_insert_batch(&ids[..n], &records[..n], &mut found);
        let now_ms = self.pending_now_ms;
        for (i, lookup) in found.iter().enumerate().take(n) {
            let p = self.pending[i];
            self.apply(p, *lookup, now_ms);
        }
        self.pending.clear();
    }

    fn apply(&mut self, p: Pending, lookup: Lookup, now_ms: u64) {
        let slot = match lookup {
            Lookup::Found(s) => s,
            Lookup::Inserted(s) => {
                self.stats.devices += 1;
                s
            }
            Lookup::Full => {
                self.stats.table_full += 1;
                self.last_full = true;
                self.last_refused = Some((p.device_id, Refusal::TableFull));
                return;
            }
        };
        self.last_full = false;
        self.stats.heartbeats += 1;
        if p.record != Some(slot) {
            // Noted for the device's next heartbeats (this shard owns it: the entry's
            // one writer).
            if let Some(e) = self.registry.as_deref().and_then(|r| r.get(p.device_id)) {
                e.note_record(slot);
            }
        }
        let th = self.cfg.thresholds;
        // Transitions already due that the walk has not reached come first.
        let (stats, emitter) = (&mut self.stats, &mut self.emitter);
        self.wheel.catch_up(
            &th,
            self.table.device_mut(slot),
            slot,
            now_ms,
            &mut |t, d| emitter.emit(stats, t.slot, d, t.from, t.to, t.at_ms),
        );
        let d = self.table.device_mut(slot);
        let before = d.liveness();
        let old_interval = d.interval_ds;
        d.last_seen_ms = now_ms as u32;
        d.interval_ds = p.interval_ds;
        match before {
            _ if p.new_session => {
                d.last_seq = p.seq;
                d.status = p.status;
            }
            Liveness::Unknown | Liveness::Offline | Liveness::Forgotten => {
                // A new session: the device may have restarted its sequence.
                d.last_seq = p.seq;
                d.status = p.status;
            }
            Liveness::Online | Liveness::Late => {
                let ahead = p.seq.wrapping_sub(d.last_seq);
                if ahead == 0 || ahead >= 1 << 31 {
                    self.stats.duplicates += 1;
                } else {
                    // Per device, saturating: a device that skips ~2^31 sequence
                    // numbers at a time must not wrap its count.
                    d.lost = d.lost.saturating_add(ahead - 1);
                    self.stats.lost_heartbeats += (ahead - 1) as u64;
                    d.last_seq = p.seq;
                    d.status = p.status;
                }
            }
        }
        // Re-schedule only where the deadline may now be earlier than the device's
        // wheel entry: a new, returning or late device, or a shorter interval. (A late
        // device's entry sits at its offline deadline, which blindness may have
        // deferred past the new late deadline; late devices coming back are rare.)
        // An online device keeps its entry, which is never later than its new
        // deadline: heartbeats only push deadlines later.
        let reschedule = before != Liveness::Online || p.interval_ds < old_interval;
        if before != Liveness::Online {
            d.epoch = d.epoch.wrapping_add(1);
            d.set_liveness(Liveness::Online);
            let d = *d;
            self.emitter
                .emit(&mut self.stats, slot, &d, before, Liveness::Online, now_ms);
        }
        if reschedule {
            self.wheel
                .schedule(&th, self.table.devices_mut(), slot, now_ms);
        }
    }

    /// Records that this shard was blind over `[from_ms, to_ms)`: it may have missed
    /// heartbeats then (its socket dropped datagrams, a peer could not hand it frames),
    /// so late and offline deadlines are deferred by that time (see
    /// `blind`). Spans come in time order, each starting at or after the previous
    /// liveness step.
    pub fn note_blind(&mut self, from_ms: u64, to_ms: u64) {
        self.wheel.blind.note(from_ms, to_ms);
        self.stats.blind_ms = self.wheel.blind.total_ms;
    }

    /// Records that this shard fell behind its socket at `from_ms` (its loop stalled or
    /// its receive ring ran dry: heartbeats wait, none lost): liveness holds still at
    /// `from_ms` until `release_liveness` (`liveness`, "Holding still"). `from_ms` is
    /// the time of the shard's last liveness step or later. A hold already on keeps
    /// its start.
    pub fn hold_liveness(&mut self, from_ms: u64) {
        if self.wheel.hold.is_none() {
            self.wheel.hold = Some(from_ms);
            self.behind_counted_to = from_ms;
            self.stats.holds += 1;
        }
    }

    /// The shard has taken in what waited when it fell behind: liveness goes on.
    pub fn release_liveness(&mut self, now_ms: u64) {
        self.count_behind(now_ms);
        self.wheel.hold = None;
    }

    /// Whether liveness holds still, and since when.
    pub fn liveness_held(&self) -> Option<u64> {
        self.wheel.hold
    }

    /// Adds the hold's time up to `now_ms` to `behind_ms` (a hold that lasts is
    /// counted as it goes, not only once it ends).
    pub fn count_behind(&mut self, now_ms: u64) {
        if self.wheel.hold.is_some() && now_ms > self.behind_counted_to {
            self.stats.behind_ms += now_ms - self.behind_counted_to;
            self.behind_counted_to = now_ms;
        }
    }

    /// The liveness part of one loop iteration, the same for every engine and for the
    /// simulation: applies queued heartbeats, then visits up to `budget` wheel entries
    /// when a tick is due or a walk is unfinished.
    pub fn step(&mut self, now_ms: u64, budget: usize) {
        self.flush();
        if now_ms >= self.next_deadline_ms() {
            self.advance_slice(now_ms, budget);
        }
    }

    /// Runs liveness detection up to `now_ms` (flushes queued heartbeats first so a
    /// heartbeat that arrived before `now` is never mistaken for silence).
    pub fn advance(&mut self, now_ms: u64) {
        while !self.advance_slice(now_ms, usize::MAX) {}
    }

    /// Like `advance`, visiting at most `budget` wheel entries (engines pass
    /// `--liveness-slice`, default `LIVENESS_SLICE`, between receive batches); true
    /// once caught up with `now_ms`.
    pub fn advance_slice(&mut self, now_ms: u64, budget: usize) -> bool {
        self.flush();
        let th = self.cfg.thresholds;
        // Split borrows: the wheel walks the table while transitions go to the buffer.
        let (stats, emitter) = (&mut self.stats, &mut self.emitter);
        let done = self
            .wheel
            .advance_budget(&th, &mut self.table, now_ms, budget, &mut |t, d| {
                emitter.emit(stats, t.slot, d, t.from, t.to, t.at_ms)
            });
        self.stats.rechecks = self.wheel.rechecks;
        self.stats.wheel_overflow = self.wheel.overflow;
        let tick = now_ms / self.cfg.tick_ms as u64;
        if tick != self.growth_tick {
            self.growth_tick = tick;
            self.table.tick_step();
        }
        self.stats.device_memory_bytes = self.table.memory_bytes() + self.wheel.memory_bytes();
        self.stats.deferred = self.wheel.deferred;
        done
    }

    /// Work for a moment with nothing else to do, bounded (tens of µs): makes the
    /// device table's next records resident. Returns whether it did any.
    pub fn idle_step(&mut self) -> bool {
        self.table.prepare_ahead()
    }

    /// Liveness work is left over from a budgeted `advance_slice`: the engine must
    /// not sleep.
    pub fn liveness_pending(&self) -> bool {
        self.wheel.in_progress()
    }

    /// Shard time by which `advance` should next be called (now, while a budgeted
    /// walk is unfinished).
    pub fn next_deadline_ms(&self) -> u64 {
        if self.wheel.in_progress() {
            0
        } else {
            self.wheel.next_tick_ms()
        }
    }

    /// Takes the events emitted since the last drain.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.emitter.events.drain(..)
    }

    /// Remembers which devices' transitions are dropped (`Unshipped`), for presence.
    pub fn track_presence(&mut self) {
        let words = (self.cfg.max_devices as usize).div_ceil(64);
        self.emitter.unshipped = Some(Unshipped {
            words: vec![0; words],
            count: 0,
            cursor: 0,
        });
    }

    /// The engine could not queue this device's transition (drained from
    /// `drain_events`): its current state is to be sent again.
    pub fn mark_unshipped(&mut self, device_id: u64) {
        if let (Some(u), Some(slot)) = (self.emitter.unshipped.as_mut(), self.table.find(device_id))
        {
            u.mark(slot);
        }
    }

    /// Devices whose current state is still to be sent again.
    pub fn unshipped(&self) -> u32 {
        self.emitter.unshipped.as_ref().map_or(0, |u| u.count)
    }

    /// Offers up to `max` devices whose transition was dropped to `send`, each as its
    /// current state (`from` = `to`, `time_ms` = `now_ms`, `event_seq` 0: not an event),
    /// until `send` refuses one (its queue full: it stays marked). Counted in
    /// `presence_refreshes`.
    pub fn refresh_unshipped(
        &mut self,
        max: usize,
        now_ms: u64,
        mut send: impl FnMut(Event) -> bool,
    ) {
        let Some(u) = self.emitter.unshipped.as_mut() else {
            return;
        };
        for _ in 0..max {
            let Some(slot) = u.take() else {
                return;
            };
            let d = self.table.device(slot);
            let state = d.liveness();
            if matches!(state, Liveness::Unknown | Liveness::Forgotten) {
                continue;
            }
            let e = Event {
                device_id: d.device_id,
                from: state,
                to: state,
                epoch: d.epoch,
                seq: d.last_seq,
                status: d.status,
                time_ms: now_ms,
                event_seq: 0,
                last_seen_ms: d.last_seen_before(now_ms),
            };
            if !send(e) {
                u.mark(slot);
                return;
            }
            self.stats.presence_refreshes += 1;
        }
    }

    /// Saves devices in slots `from_slot..` (at most `max`) as snapshot records, their
    /// last heartbeat converted to the real-time clock; returns the next slot (the
    /// table's length once all are done). A shard calls it in slices, so a snapshot
    /// never holds the loop for more than one slice.
    pub fn save_slice(
        &self,
        from_slot: u32,
        max: u32,
        now_ms: u64,
        unix_now_ms: u64,
        mut out: impl FnMut(&Record),
    ) -> u32 {
        let end = self.table.len().min(from_slot.saturating_add(max));
        if let Some(r) = self.registry.as_deref() {
            // The registry entries (for the replay windows) are cache misses in random
            // order: start them all before the slice reads them.
            for slot in from_slot..end {
                M::prefetch(r.home(self.table.device(slot).device_id));
            }
        }
        for slot in from_slot..end {
            let d = self.table.device(slot);
            let state = d.liveness();
            if matches!(state, Liveness::Unknown | Liveness::Forgotten) {
                continue;
            }
            let ago_ms = now_ms - d.last_seen_before(now_ms);
            out(&Record {
                device_id: d.device_id,
                last_seen_unix_ms: unix_now_ms.saturating_sub(ago_ms),
                epoch: d.epoch,
                last_seq: d.last_seq,
                lost: d.lost,
                interval_ds: d.interval_ds,
                status: d.status,
                state,
                replay: self.saved_window(d.device_id),
            });
        }
        end
    }

    /// A device with a key: its replay window's index here and its key's check
    /// (`registry::key_check`), for the snapshot.
    fn keyed_window(&self, device_id: u64) -> Option<(usize, u32)> {
        let r = self.registry.as_deref()?;
        let e = r.get(device_id).filter(|e| e.keyed())?;
        Some((
            e.local() as usize,
            r.key_check_of(self.cfg.shard, e.local()),
        ))
    }

    /// A keyed device's replay window as the snapshot keeps it (None: no key, or
    /// nothing taken yet).
    fn saved_window(&self, device_id: u64) -> Option<SavedWindow> {
        let (local, key_check) = self.keyed_window(device_id)?;
        let (highest, seen) = self.windows.get(local)?.parts()?;
        Some(SavedWindow {
            key_check,
            highest,
            seen,
        })
    }

    /// Takes back devices from a snapshot at start (each to its owner: the caller
    /// sends every record to `owner(id, shards)`). A restored device keeps its state,
    /// epoch, sequence and interval, but its deadlines count from `now_ms`, the
    /// restart: the server heard nothing while it was down, so downtime is not
    /// silence. A device that is back before its restored deadlines gets no event; one
    /// that stays silent goes late, then offline, on its normal schedule from the
    /// restart. Returns how many were restored; the rest did not fit the table
    /// (`table_full`) or are not in the registry (`forgotten`).
    pub fn restore(&mut self, records: &[Record], now_ms: u64) -> u64 {
        let th = self.cfg.thresholds;
        let mut restored = 0;
        for r in records {
            debug_assert_eq!(owner(r.device_id, self.cfg.shards), self.cfg.shard);
            if self
                .registry
                .as_ref()
                .is_some_and(|reg| reg.get(r.device_id).is_none())
            {
                // Saved before the devices file stopped listing it.
                self.stats.forgotten += 1;
                continue;
            }
            let slot = match self.table.lookup_or_insert(r.device_id) {
                Lookup::Inserted(s) => s,
                // A device given twice keeps its first record (the decoder refuses
                // duplicates, so only a caller bug gets here).
                Lookup::Found(_) => continue,
                Lookup::Full => {
                    self.stats.table_full += 1;
                    continue;
                }
            };
            let d = self.table.device_mut(slot);
            d.last_seen_ms = now_ms as u32;
            d.last_seq = r.last_seq;
            d.epoch = r.epoch;
            d.lost = r.lost;
            d.interval_ds = r.interval_ds;
            d.status = r.status;
            d.set_liveness(r.state);
            // Its replay window, when saved under the key it still has: what was taken
            // before the restart is not taken again.
            if let Some(w) = r.replay {
                match self.keyed_window(r.device_id) {
                    Some((local, check)) if check == w.key_check => {
                        if let Some(slot) = self.windows.get_mut(local) {
                            *slot = ReplayWindow::from_parts(w.highest, w.seen);
                        }
                    }
                    _ => {}
                }
            }
            self.stats.devices += 1;
            count_state(&mut self.stats, Liveness::Unknown, r.state);
            self.wheel
                .schedule(&th, self.table.devices_mut(), slot, now_ms);
            restored += 1;
        }
        restored
    }

    /// The state of one device, if known (for tests and introspection).
    pub fn device(&self, device_id: u64) -> Option<&Device> {
        self.table
            .find(device_id)
            .map(|s| self.table.device(s))
            .filter(|d| d.liveness() != Liveness::Forgotten)
    }

    /// Answers a question about one device (see `query`).
    pub fn answer(&self, request: &crate::query::Request, now_ms: u64) -> crate::query::Reply {
        crate::query::Reply {
            id: request.id,
            device: self
                .device(request.device_id)
                .map(|d| crate::query::DeviceView::of(d, now_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FrameFields;
    use crate::memory::Heap;

    fn core(now_ms: u64) -> ShardCore<Heap> {
        ShardCore::new(
            CoreConfig {
                shard: 0,
                shards: 1,
                max_devices: 100,
                thresholds: Thresholds {
                    late_after_permille: 1500,
                    offline_after_permille: 3000,
                },
                default_interval_ds: 10,
                tick_ms: 10,
                event_capacity: 1024,
                huge_pages: false,
                require_auth: false,
            },
            now_ms,
        )
        .unwrap()
    }

    fn beat(c: &mut ShardCore<Heap>, id: u64, seq: u32, now_ms: u64) {
        let f = FrameFields::heartbeat(id, seq, 10, 0).to_bytes();
        let mut acks = [0u8; MAX_DATAGRAM_BYTES];
        c.ingest_datagram(&f, now_ms, &mut acks, |_, _, _| false);
        c.flush();
    }

    fn events(c: &mut ShardCore<Heap>) -> Vec<(u64, Liveness, Liveness, u32, u64)> {
        c.drain_events()
            .map(|e| (e.device_id, e.from, e.to, e.epoch, e.time_ms))
            .collect()
    }

    #[test]
    fn a_heartbeat_its_owner_could_not_be_handed_is_answered_busy() {
        // Shard 0 of 2: a gateway datagram with a device of each shard, asking for
        // acks; the hand-off to shard 1 fails (its ring is full).
        let mut c = ShardCore::<Heap>::new(
            CoreConfig {
                shards: 2,
                ..core(0).cfg
            },
            0,
        )
        .unwrap();
        let mine = (1..).find(|&id| owner(id, 2) == 0).unwrap();
        let theirs = (1..).find(|&id| owner(id, 2) == 1).unwrap();
        let mut datagram = Vec::new();
        for id in [mine, theirs] {
            let mut f = FrameFields::heartbeat(id, 1, 10, 0);
            f.flags = codec::FLAG_ACK_REQUESTED;
            datagram.extend_from_slice(&f.to_bytes());
        }
        let mut acks = [0u8; MAX_DATAGRAM_BYTES];
        let n = c.ingest_datagram(&datagram, 0, &mut acks, |_, _, _| false);
        let status = |acks: &[u8], i: usize| {
            codec::decode_ack(
                acks[i * FRAME_BYTES..(i + 1) * FRAME_BYTES]
                    .try_into()
                    .unwrap(),
            )
            .unwrap()
            .status
        };
        assert_eq!(n, 2 * FRAME_BYTES);
        assert_eq!(
            (status(&acks, 0), status(&acks, 1)),
            (codec::ACK_ACCEPTED, codec::ACK_BUSY)
        );
        assert_eq!((c.stats().forward_drops, c.stats().forwarded), (1, 0));
        // Handed over: accepted.
        let n = c.ingest_datagram(&datagram, 0, &mut acks, |_, _, _| true);
        assert_eq!(n, 2 * FRAME_BYTES);
        assert_eq!(status(&acks, 1), codec::ACK_ACCEPTED);
        assert_eq!((c.stats().forward_drops, c.stats().forwarded), (1, 1));
    }

    #[test]
    fn a_listed_devices_entry_leads_to_its_record_and_a_wrong_lead_is_not_followed() {
        // Device 1 keyed (version 2), device 2 listed without a key (version 1). Each
        // entry learns its record's slot from the first heartbeat applied, and later
        // heartbeats are found through it. An entry made to point at the other
        // device's record still finds its own.
        let key: Key = [7; 16];
        let k: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut c = core(0);
        let r = crate::registry::Registry::parse(&format!("1 key={k}\n2\n"), 1).unwrap();
        c.set_registry(Some(Arc::new(r)), &[], 0).unwrap();
        let beat2 = |c: &mut ShardCore<Heap>, seq: u32, now_ms: u64| {
            let mut f = [0u8; FRAME_V2_BYTES];
            codec::encode_v2(&FrameFields::heartbeat(1, seq, 10, 0), 1, &key, &mut f);
            let mut acks = [0u8; MAX_DATAGRAM_BYTES];
            c.ingest_datagram(&f, now_ms, &mut acks, |_, _, _| false);
            c.flush();
        };
        let hint =
            |c: &ShardCore<Heap>, id: u64| c.registry().unwrap().get(id).unwrap().record_hint();
        beat(&mut c, 2, 1, 0);
        beat2(&mut c, 1, 0);
        for id in 1..=2 {
            assert_eq!(hint(&c, id), c.table().find(id));
        }
        beat2(&mut c, 2, 100);
        beat(&mut c, 2, 2, 100);
        assert_eq!(c.device(1).unwrap().last_seq, 2);
        assert_eq!(c.device(2).unwrap().last_seq, 2);
        // Each entry made to point at the other's record.
        let (r1, r2) = (c.table().find(1).unwrap(), c.table().find(2).unwrap());
        c.registry().unwrap().get(1).unwrap().note_record(r2);
        c.registry().unwrap().get(2).unwrap().note_record(r1);
        beat2(&mut c, 3, 200);
        beat(&mut c, 2, 3, 200);
        assert_eq!(c.device(1).unwrap().last_seq, 3);
        assert_eq!(c.device(2).unwrap().last_seq, 3);
        for id in 1..=2 {
            assert_eq!(hint(&c, id), c.table().find(id));
        }
        assert_eq!((c.table().len(), c.stats().heartbeats), (2, 6));
    }

    #[test]
    fn prefetching_datagrams_ahead_changes_nothing() {
        // Cores with and without a registry (device 1 keyed, 2 listed) are given, one
        // datagram ahead, well-formed datagrams of both versions and malformed ones;
        // each core ends as a twin that was never given them ahead.
        let key: Key = [9; 16];
        let k: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let r = Arc::new(crate::registry::Registry::parse(&format!("1 key={k}\n2\n"), 1).unwrap());
        let mut v2 = [0u8; FRAME_V2_BYTES];
        codec::encode_v2(&FrameFields::heartbeat(1, 1, 10, 0), 1, &key, &mut v2);
        let mut mixed = FrameFields::heartbeat(2, 1, 10, 0).to_bytes().to_vec();
        mixed.extend_from_slice(&v2);
        mixed.extend_from_slice(&FrameFields::heartbeat(3, 1, 10, 0).to_bytes());
        let datagrams: Vec<Vec<u8>> = vec![
            mixed.clone(),
            Vec::new(),
            vec![0xff; 7],
            v2[..FRAME_BYTES].to_vec(),
            vec![0xab; MAX_DATAGRAM_BYTES + 1],
            (0..MAX_DATAGRAM_BYTES).map(|i| (i * 7) as u8).collect(),
            mixed,
        ];
        for registry in [None, Some(r)] {
            let (mut ahead, mut plain) = (core(0), core(0));
            for c in [&mut ahead, &mut plain] {
                c.set_registry(registry.clone(), &[], 0).unwrap();
            }
            let mut acks = [0u8; MAX_DATAGRAM_BYTES];
            for (n, d) in datagrams.iter().enumerate() {
                if let Some(next) = datagrams.get(n + 1) {
                    ahead.prefetch_datagram(next);
                }
                let a = ahead.ingest_datagram(d, 10, &mut acks, |_, _, _| false);
                let b = plain.ingest_datagram(d, 10, &mut acks, |_, _, _| false);
                assert_eq!(a, b);
            }
            for c in [&mut ahead, &mut plain] {
                c.flush();
            }
            assert_eq!(ahead.stats(), plain.stats());
            assert_eq!(ahead.table().len(), plain.table().len());
            // Twice devices 2 and 3 (version 1) without a registry, whose version-2
            // frames have no key to check; with one, device 2 twice, device 1 once
            // (its second frame a replay) and device 3 never (not listed).
            let listed = registry.is_some();
            assert_eq!(ahead.stats().heartbeats, if listed { 3 } else { 4 });
        }
    }

    #[test]
    fn a_datagrams_version_two_acks_are_tagged_together_as_each_alone() {
        // Devices 1..=20 keyed, 21 listed without a key; 99 not listed. One datagram:
        // 20 good version-2 frames (two full lanes of eight and four more), a spoofed
        // one, a version-1 frame of a keyed device (refused, 32-byte ack between the
        // 64-byte ones), and version-2 frames of an unlisted and an unkeyed device.
        let key =
            |id: u64| -> Key { std::array::from_fn(|i| (id as u8).wrapping_mul(31) ^ i as u8) };
        let mut text = String::new();
        for id in 1..=20u64 {
            let k: String = key(id).iter().map(|b| format!("{b:02x}")).collect();
            text += &format!("{id} key={k}\n");
        }
        text += "21\n";
        let mut c = core(0);
        let r = crate::registry::Registry::parse(&text, 1).unwrap();
        c.set_registry(Some(Arc::new(r)), &[], 0).unwrap();
        let frame = |id: u64, k: &Key| {
            let mut f = FrameFields::heartbeat(id, 7, 10, 0x1234_5678 + id);
            f.flags = codec::FLAG_ACK_REQUESTED;
            let mut out = [0u8; FRAME_V2_BYTES];
            codec::encode_v2(&f, 3, k, &mut out);
            out.to_vec()
        };
        let mut units: Vec<(u64, Vec<u8>)> = (1..=20).map(|id| (id, frame(id, &key(id)))).collect();
        units.insert(9, (5, frame(5, &key(6))));
        let mut v1 = FrameFields::heartbeat(3, 8, 10, 0);
        v1.flags = codec::FLAG_ACK_REQUESTED;
        units.insert(13, (3, v1.to_bytes().to_vec()));
        units.push((99, frame(99, &key(99))));
        units.push((21, frame(21, &key(21))));
        let datagram: Vec<u8> = units.iter().flat_map(|(_, u)| u.clone()).collect();
        let mut acks = [0u8; MAX_DATAGRAM_BYTES];
        let n = c.ingest_datagram(&datagram, 0, &mut acks, |_, _, _| false);
        assert_eq!(n, datagram.len());
        let mut at = 0;
        let mut statuses = Vec::new();
        for (id, unit) in &units {
            let ack = &acks[at..at + unit.len()];
            at += unit.len();
            if unit.len() == FRAME_BYTES {
                statuses.push(codec::decode_ack(ack.try_into().unwrap()).unwrap().status);
                continue;
            }
            // Byte for byte what one ack tagged alone is.
            let f = codec::decode_v2(unit.as_slice().try_into().unwrap()).unwrap();
            let status = u16::from_le_bytes(ack[20..22].try_into().unwrap());
            let mut alone = [0u8; FRAME_V2_BYTES];
            let k = (*id <= 20).then(|| key(*id));
            codec::encode_ack_v2(&f, status, 10, k.as_ref(), &mut alone);
            assert_eq!(ack, alone.as_slice(), "device {id}");
            statuses.push(status);
        }
        let mut want = vec![codec::ACK_ACCEPTED; 20];
        want.insert(9, Refusal::AuthFailed.status());
        want.insert(13, Refusal::AuthRequired.status());
        want.push(Refusal::UnknownDevice.status());
        want.push(Refusal::AuthFailed.status());
        assert_eq!(statuses, want);
        assert_eq!(c.stats().authenticated, 20);
    }

    #[test]
    fn a_stream_with_a_registry_is_taken_in_stages_as_frame_by_frame() {
        // 60 keyed devices. A stream of 70 version-2 frames (140 units: stages of 64
        // units cut it, version-2 pairs never split), one spoofed, one of an unlisted
        // device, a version-1 frame of a keyed device, then a bad magic and frames after
        // it, fed in reads of 100 bytes (frames split across reads).
        let key =
            |id: u64| -> Key { std::array::from_fn(|i| (id as u8).wrapping_mul(17) ^ i as u8) };
        let text: String = (1..=60u64)
            .map(|id| {
                let k: String = key(id).iter().map(|b| format!("{b:02x}")).collect();
                format!("{id} key={k}\n")
            })
            .collect();
        let mut c = core(0);
        let r = crate::registry::Registry::parse(&text, 1).unwrap();
        c.set_registry(Some(Arc::new(r)), &[], 0).unwrap();
        let v2 = |id: u64, seq: u32, k: &Key| {
            let mut f = FrameFields::heartbeat(id, seq, 10, 0);
            f.flags = codec::FLAG_ACK_REQUESTED;
            let mut out = [0u8; FRAME_V2_BYTES];
            codec::encode_v2(&f, 1, k, &mut out);
            out.to_vec()
        };
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for n in 0..70u64 {
            let id = n % 60 + 1;
            let seq = 1 + (n / 60) as u32;
            let (frame, status) = match n {
                33 => (v2(id, seq, &key(id + 1)), Refusal::AuthFailed.status()),
                40 => (v2(999, 1, &key(7)), Refusal::UnknownDevice.status()),
                _ => (v2(id, seq, &key(id)), codec::ACK_ACCEPTED),
            };
            stream.extend_from_slice(&frame);
            want.push(status);
        }
        let mut v1 = FrameFields::heartbeat(5, 9, 10, 0);
        v1.flags = codec::FLAG_ACK_REQUESTED;
        stream.extend_from_slice(&v1.to_bytes());
        want.push(Refusal::AuthRequired.status());
        let mut bad = FrameFields::heartbeat(6, 9, 10, 0).to_bytes();
        bad[0] = b'X';
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&v2(7, 3, &key(7)));
        let mut decoder = StreamDecoder::default();
        let mut acks = Vec::new();
        let mut stopped = false;
        for read in stream.chunks(100) {
            if stopped {
                break;
            }
            let fed = c.ingest_stream(
                &mut decoder,
                read,
                0,
                |a| acks.extend_from_slice(a),
                |_, _, _| false,
            );
            stopped = fed.stopped;
        }
        assert!(stopped, "the bad magic stops the stream");
        let mut got = Vec::new();
        let mut at = 0;
        while at < acks.len() {
            let n = if codec::unit_version(acks[at..at + FRAME_BYTES].try_into().unwrap())
                == Some(codec::VERSION_2)
            {
                FRAME_V2_BYTES
            } else {
                FRAME_BYTES
            };
            let ack = &acks[at..at + n];
            let status = u16::from_le_bytes(ack[20..22].try_into().unwrap());
            if n == FRAME_V2_BYTES {
                let id = u64::from_le_bytes(ack[8..16].try_into().unwrap());
                if id <= 60 {
                    codec::decode_ack_v2(ack.try_into().unwrap(), &key(id))
                        .expect("tagged under the device's key");
                }
            }
            got.push(status);
            at += n;
        }
        assert_eq!(got, want);
        let s = c.stats();
        assert_eq!((s.authenticated, s.frames_valid), (68, 71));
        assert_eq!(
            s.malformed_total(),
            1,
            "the bad magic, and nothing after it"
        );
    }

    #[test]
    fn a_shard_that_fell_behind_holds_liveness_until_it_caught_up() {
        // Devices 1 and 2 seen at 1.0 s (1 s interval: late at 2.5 s). The shard falls
        // behind at 2.0 s and catches up at 2.8 s. Device 1's heartbeat, taken in at
        // 2.7 s, may have arrived before 2.5 s: no late. Device 2 sent nothing: late at
        // its own deadline, reported once the backlog is in, not a threshold later.
        let mut c = core(0);
        beat(&mut c, 1, 1, 1_000);
        beat(&mut c, 2, 1, 1_000);
        c.advance(2_000);
        assert_eq!(events(&mut c).len(), 2, "both new");
        c.hold_liveness(2_000);
        c.advance(2_600);
        assert_eq!(events(&mut c), [], "nothing past the hold's start");
        beat(&mut c, 1, 2, 2_700);
        c.advance(2_790);
        assert_eq!(
            events(&mut c),
            [],
            "the catch-up stops at the hold's start too"
        );
        c.release_liveness(2_800);
        c.advance(2_800);
        assert_eq!(
            events(&mut c),
            [(2, Liveness::Online, Liveness::Late, 1, 2_500)]
        );
        assert_eq!((c.stats().holds, c.stats().behind_ms), (1, 800));
        // A transition detected before the hold began is still emitted by a catch-up
        // during it: device 3 seen at 3.0 s, late at 4.5 s; the shard falls behind at
        // 4.6 s before its walk got there, and device 3's next heartbeat comes at 4.7 s.
        beat(&mut c, 3, 1, 3_000);
        assert_eq!(events(&mut c).len(), 1, "new");
        c.hold_liveness(4_600);
        beat(&mut c, 3, 2, 4_700);
        assert_eq!(
            events(&mut c),
            [
                (3, Liveness::Online, Liveness::Late, 1, 4_500),
                (3, Liveness::Late, Liveness::Online, 2, 4_700),
            ]
        );
    }

    #[test]
    fn devices_whose_transition_was_dropped_are_refreshed_as_they_are_now() {
        // A buffer of 2 events: devices 1-4 come online, 3 and 4's transitions are
        // dropped; then 1 goes late too (taken), and 2's late is dropped.
        let mut c = ShardCore::<Heap>::new(
            CoreConfig {
                event_capacity: 2,
                ..CoreConfig::basic(0, 1, 100)
            },
            0,
        )
        .unwrap();
        c.track_presence();
        for id in 1..=4 {
            beat(&mut c, id, 1, 1_000);
        }
        assert_eq!(events(&mut c).len(), 2);
        assert_eq!(c.unshipped(), 2);
        beat(&mut c, 1, 2, 1_200);
        beat(&mut c, 3, 2, 1_200);
        beat(&mut c, 4, 2, 1_200);
        c.advance(2_550);
        assert_eq!(
            events(&mut c),
            [(2, Liveness::Online, Liveness::Late, 1, 2_500)]
        );
        // The engine's queue refuses device 2's late: marked by the engine.
        c.mark_unshipped(2);
        let mut sent = Vec::new();
        c.refresh_unshipped(1, 2_600, |e| {
            sent.push((e.device_id, e.to));
            true
        });
        c.refresh_unshipped(10, 2_600, |_| false);
        assert_eq!(c.unshipped(), 2, "a refused refresh stays marked");
        c.refresh_unshipped(10, 2_600, |e| {
            sent.push((e.device_id, e.to));
            true
        });
        sent.sort_unstable_by_key(|&(id, _)| id);
        assert_eq!(
            sent,
            [
                (2, Liveness::Late),
                (3, Liveness::Online),
                (4, Liveness::Online)
            ]
        );
        assert_eq!((c.unshipped(), c.stats().presence_refreshes), (0, 3));
    }

    #[test]
    fn restored_devices_count_their_deadlines_from_the_restart() {
        // Before: devices 1 and 2 online (1 s interval), 3 offline.
        let mut a = core(0);
        for (id, seq) in [(1, 5), (2, 9), (3, 1)] {
            beat(&mut a, id, seq, 1_000);
        }
        a.advance(5_000); // 1, 2, 3 all go late then offline...
        beat(&mut a, 1, 6, 5_000); // ...1 and 2 come back, 3 stays offline
        beat(&mut a, 2, 10, 5_000);
        let _ = events(&mut a);
        let mut saved = Vec::new();
        let next = a.save_slice(0, 2, 5_100, 1_000_000, |r| saved.push(*r));
        assert_eq!(next, 2, "a slice of 2");
        a.save_slice(next, 100, 5_100, 1_000_000, |r| saved.push(*r));
        assert_eq!(saved.len(), 3);
        assert_eq!(saved[0].last_seen_unix_ms, 1_000_000 - 100);
        // After a downtime far longer than the offline threshold, at shard time 50.
        let mut b = core(50);
        assert_eq!(b.restore(&saved, 50), 3);
        assert_eq!((b.stats().online, b.stats().offline), (2, 1));
        // Device 1 resumes: no event at all. Device 2 stays silent: late at restart +
        // 1.5 s, offline at restart + 3 s. Device 3 comes back: offline → online,
        // its epoch continuing.
        beat(&mut b, 1, 7, 1_000);
        beat(&mut b, 3, 2, 1_000);
        b.advance(4_000);
        let mut got = events(&mut b);
        got.sort_by_key(|e| (e.4, e.0));
        assert_eq!(
            got,
            [
                (3, Liveness::Offline, Liveness::Online, 2, 1_000),
                (2, Liveness::Online, Liveness::Late, 2, 1_550),
                (1, Liveness::Online, Liveness::Late, 2, 2_500),
                (3, Liveness::Online, Liveness::Late, 2, 2_500),
                (2, Liveness::Late, Liveness::Offline, 2, 3_050),
                (1, Liveness::Late, Liveness::Offline, 2, 4_000),
                (3, Liveness::Late, Liveness::Offline, 2, 4_000),
            ]
        );
        assert_eq!(b.stats().duplicates, 0, "sequences continue");
    }
}
