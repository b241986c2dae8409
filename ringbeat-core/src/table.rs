//! The shard's device table: device_id → dense slot → per-device state.
//!
//! * devices: 32-byte [`Device`] records in insertion order, in a lazily committed
//!   array of `--max-devices` capacity (memory is used as records are written, not
//!   reserved). Devices are never removed (an offline device keeps its slot so its
//!   epoch and sequence survive), which keeps slots stable and lets the liveness wheel
//!   link them by slot number.
//! * index: open addressing with linear probing over `u32` buckets, each holding
//!   `slot + 1` in its low bits (0 = empty) and a tag of the id's hash in the bits the
//!   capacity leaves free, so a probe past a bucket of another device almost never
//!   loads that device's record. The index **grows with what it holds**: it grows by
//!   half when it is 70% full (so 47–70% full, 5.7–8.6 bytes per device; a little
//!   fuller while the next one is prepared), and it does so without a pause. The home
//!   bucket is the hash's top 32 bits scaled to the size (multiply and shift), so
//!   sizes need not be powers of two.
//!
//! Growth is incremental with bounded work per operation. Two index regions, each
//! reserved (not committed) at the largest size, take turns. When the current index
//! is 70% full, the idle region is first made resident at 1.5 × the size, 4 pages per
//! batch (`Preparing`): fresh pages cost ~1.3 µs each to zero and map, and the random
//! touches right after a switch would otherwise all fault at once (measured: batches
//! of 32 lookups taking 0.4–0.8 ms after a growth to 2M buckets). Then it becomes
//! current, in O(1), and each insert moves 4 devices, each batch one more per lookup
//! plus 16, and each liveness tick 1,024 (so a growth ends without traffic too) from
//! the old index into the new, by slot order (the records hold their ids, so moving needs
//! no read of the old index; the new buckets are prefetched 32 at a time so their
//! cache misses overlap); a lookup that misses in the new index looks in the old one,
//! and new devices go into the new one only. When all are moved, the old region is
//! zeroed and given back to the kernel an eighth of a page per unit of step, so it is
//! empty and costs nothing when its turn comes again. On huge pages (`--huge-pages`)
//! it goes back a whole 2 MiB page per step instead: giving back part of a huge page
//! splits it into 4 KiB pages, and the next index in that region would be on 4 KiB
//! pages there. A shard owns its table alone, so no reader can see a half-moved state.
//! Moving finishes well before the next growth: it takes 0.7 × old size / 4 inserts,
//! and the next growth comes 0.35 × old size devices later.
//!
//! Records are made resident ahead of the devices that will fill them, a bounded step
//! at a time when the shard has nothing else to do (`prepare_ahead`), so a ramp's new
//! devices rarely take a page fault mid-datagram.
//!
//! Memory per device: 32 (record, + 1 for the records made resident ahead) + 5.7–8.6
//! (index) + 4–6 (liveness wheel entries, `liveness`: 4 bytes each, up to 1.5 per
//! device) = 43–48 bytes at every fill level;
//! while the next index is prepared and the old one emptied, up to 14 more for a
//! moment.
//!
//! Batched lookups ([`DeviceTable::lookup_or_insert_batch`]) issue all bucket loads
//! before any dependent record load, so a batch's cache misses overlap instead of
//! queueing behind one another.

use crate::memory::Memory;

/// Liveness state of a device. `Unknown` only appears as the `from` of the first event.
/// `Forgotten`: a reload of the device registry no longer lists it; it keeps its slot
/// (slots are never reused) but is not tracked, saved or answered for, and comes back
/// as a new session if the registry lists it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Liveness {
    Unknown = 0,
    Online = 1,
    Late = 2,
    Offline = 3,
    Forgotten = 4,
}

impl Liveness {
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Online => "online",
            Liveness::Late => "late",
            Liveness::Offline => "offline",
            Liveness::Forgotten => "forgotten",
        }
    }
    pub fn from_u8(v: u8) -> Liveness {
        match v {
            1 => Liveness::Online,
            2 => Liveness::Late,
            3 => Liveness::Offline,
            4 => Liveness::Forgotten,
            _ => Liveness::Unknown,
        }
    }
}

/// One device's state. 32 bytes, so two share a cache line and none straddles one;
/// all-zero is "unused" (`Zeroable`: every field is an integer, checked by the derive).
#[derive(Clone, Copy, Debug, Default, bytemuck::Zeroable)]
#[repr(C)]
pub struct Device {
    pub device_id: u64,
    /// Shard time (ms, truncated to 32 bits, compared with wrapping arithmetic) of the
    /// last valid heartbeat. Thresholds are < 2^31 ms (checked in `Config`).
    pub last_seen_ms: u32,
    pub last_seq: u32,
    /// Incremented each time the device comes online; the first heartbeat makes it 1.
    pub epoch: u32,
    /// Heartbeats counted missing from forward seq gaps.
    pub lost: u32,
    /// Effective heartbeat period (the frame's, or the server default for 0).
    pub interval_ds: u16,
    pub status: u16,
    /// Liveness wheel bucket + 1 holding this device's live entry, 0 = not scheduled.
    /// Owned by `liveness::Wheel`.
    pub wheel_bucket: u16,
    state: u8,
    _pad: u8,
}

const _: () = assert!(std::mem::size_of::<Device>() == 32);

impl Device {
    pub fn liveness(&self) -> Liveness {
        Liveness::from_u8(self.state)
    }
    pub fn set_liveness(&mut self, state: Liveness) {
        self.state = state as u8;
    }
    /// The last heartbeat in full shard time, for a `now_ms` at or after it: it is kept
    /// in 32 bits and compared with wrapping arithmetic (thresholds < 2^31 ms).
    pub fn last_seen_before(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub((now_ms as u32).wrapping_sub(self.last_seen_ms) as u64)
    }
}

/// Device slot number: index into the dense record array.
pub type Slot = u32;

/// Result of looking up one device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Slot),
    Inserted(Slot),
    /// The table is at capacity and the device is new: rejected.
    Full,
}

/// One index generation: which region and its size.
#[derive(Clone, Copy, Debug)]
struct Level {
    region: usize,
    buckets: usize,
}

impl Level {
    fn new(region: usize, buckets: usize) -> Level {
        Level { region, buckets }
    }
    fn buckets(&self) -> usize {
        self.buckets
    }
    /// The home bucket: the top 32 bits of the hash scaled to the size (a multiply
    /// and a shift, no division), so sizes need not be powers of two and growth can
    /// be by half.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        (((hash >> 32) * self.buckets as u64) >> 32) as usize
    }
    #[inline]
    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets {
            0
        } else {
            bucket + 1
        }
    }
}

/// What a growth left to do, a bounded step at a time.
#[derive(Clone, Copy, Debug)]
enum Growth {
    Idle,
    /// The next index's buckets `next..end` (in the idle region) are still to be made
    /// resident before it takes over.
    Preparing {
        next: usize,
        end: usize,
    },
    /// Devices of slots `next..end` are still only in `old`'s index.
    Moving {
        old: Level,
        next: Slot,
        end: Slot,
    },
    /// Region `region`'s buckets `next..end` are still to be zeroed.
    Clearing {
        region: usize,
        next: usize,
        end: usize,
    },
}

pub struct DeviceTable<M: Memory> {
    /// Two index regions of `max_buckets` each; `current.region` is the live one.
    index: [M::Words; 2],
    current: Level,
    max_buckets: usize,
    growth: Growth,
    /// Growths so far (a counter for the stats).
    growths: u32,
    /// Bits of a bucket holding `slot + 1`; the rest hold the tag.
    slot_bits: u32,
    slot_mask: u32,
    devices: M::Devices,
    len: u32,
    /// Records `..ready` are resident (made so by `prepare_ahead` or by use).
    ready: u32,
}

#[inline]
fn mix(device_id: u64) -> u64 {
    // Fibonacci hashing after folding the high half in, so ids that differ only in
    // high bits still spread. Independent of `owner::owner` (which uses 32-bit halves).
    (device_id ^ (device_id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The tag bits of a bucket, from a second hash: the position uses the top bits of
/// `mix`, which neighbouring buckets share, so the tag must not.
#[inline]
fn tag(device_id: u64, slot_bits: u32) -> u32 {
    if slot_bits >= 32 {
        return 0;
    }
    let h = (device_id ^ (device_id >> 31)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    ((h >> (64 - (32 - slot_bits))) as u32) << slot_bits
}

/// Most ids one batch call may carry (bounded stack arrays).
pub const MAX_BATCH: usize = 256;

/// Smallest index: 1024 buckets, 4 KiB.
const MIN_BUCKETS: usize = 1024;
/// Growth makes the index half as large again when an insert makes it fuller than
/// this (in tenths).
const GROW_AT_TENTHS: usize = 7;
/// Growth work per insert (twice what finishes a growth before the next one), plus
/// a little per batch so that moving goes on while no device is new. A unit is one
/// device moved or a page of buckets zeroed.
const STEP_INSERT: u32 = 4;
const STEP_BATCH: u32 = 16;
/// Growth work per liveness tick (10 ms by default): 1,024 moves take ~30 µs, and a
/// growth to 2M buckets finishes in ~14 s with no traffic at all.
const STEP_TICK: u32 = 1024;
const PREPARE_PAGES_TICK: usize = 16;
/// Devices moved per round of prefetches (their new buckets' cache misses overlap).
const MOVE_CHUNK: usize = 32;
/// Buckets made resident per page of preparation (4 KiB).
const PAGE_BUCKETS: usize = 1024;
/// Pages of the next index made resident per batch and per single insert while
/// preparing: a fresh page costs about 1.3 µs to zero and map here, so this bounds
/// the work a batch takes on (5 µs) while spreading it over ~B/4096 batches.
const PREPARE_PAGES_BATCH: usize = 4;
const PREPARE_PAGES_INSERT: usize = 1;
/// Records made resident ahead per `prepare_ahead` call: four 4 KiB pages.
const READY_STEP: usize = 512;
/// Preparing stops being spread out (it is finished at once) if the current index
/// gets this full meanwhile, in hundredths: only batches of hundreds of new devices
/// each can get there.
const FORCE_AT_HUNDREDTHS: usize = 85;
/// Buckets zeroed per unit of step: an eighth of a 4 KiB page (giving a page back costs
/// ~0.3 µs, about what 8 moves cost; at a page per unit, a tick's step of clearing
/// gave back 4 MiB at once).
const CLEAR_PER_UNIT: usize = 128;

/// Units of step a 2 MiB page of the old index given back costs: ~7 µs here (the
/// page freed and the TLBs flushed), against ~0.3 µs a unit.
const HUGE_DISCARD_UNITS: u32 = 24;

impl<M: Memory> DeviceTable<M> {
    /// A table for up to `capacity` devices (1 ..= 2^31), on 4 KiB pages.
    pub fn new(capacity: u32) -> std::io::Result<Self> {
        Self::with_pages(capacity, false)
    }

    /// As `new`; `huge` asks for transparent huge pages (`Memory::words`). The hashed
    /// index then becomes resident in 2 MiB steps as devices appear.
    pub fn with_pages(capacity: u32, huge: bool) -> std::io::Result<Self> {
        assert!(
            capacity > 0 && capacity <= 1 << 31,
            "capacity checked by Config"
        );
        // Full at capacity, the largest index is at most 70% full.
        let max_buckets = (capacity as usize * 10)
            .div_ceil(GROW_AT_TENTHS)
            .next_multiple_of(PAGE_BUCKETS)
            .max(MIN_BUCKETS);
        let slot_bits = 32 - capacity.leading_zeros();
        Ok(DeviceTable {
            index: [M::words(max_buckets, huge)?, M::words(max_buckets, huge)?],
            current: Level::new(0, MIN_BUCKETS),
            max_buckets,
            growth: Growth::Idle,
            growths: 0,
            slot_bits,
            slot_mask: if slot_bits >= 32 {
                u32::MAX
            } else {
                (1 << slot_bits) - 1
            },
            devices: M::devices(capacity as usize, huge)?,
            len: 0,
            ready: 0,
        })
    }

    /// Makes the next records resident ahead of the devices that will fill them, a
    /// bounded step (`READY_STEP` records, 16 KiB) per call; returns whether it did
    /// any. Meant for the moments a shard has nothing to do (before it sleeps): a new
    /// device's first write into a fresh page otherwise takes the page fault (a few
    /// µs in a virtual machine) in the middle of a datagram, 128 devices apart, for
    /// the whole of a ramp. Keeps `len / 32` records ahead (3% more memory, at most
    /// one step at small sizes).
    pub fn prepare_ahead(&mut self) -> bool {
        let want = (self.len as usize + (self.len as usize / 32).max(1))
            .next_multiple_of(READY_STEP)
            .min(self.devices.len());
        let ready = (self.ready as usize).max(self.len as usize);
        if ready >= want {
            return false;
        }
        let end = (ready + READY_STEP).min(self.devices.len());
        M::populate_devices(&mut self.devices, ready..end);
        self.ready = end as u32;
        true
    }

    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> u32 {
        self.devices.len() as u32
    }
    /// Buckets of the current index.
    pub fn index_buckets(&self) -> usize {
        self.current.buckets()
    }
    /// Growths of the index so far.
    pub fn growths(&self) -> u32 {
        self.growths
    }
    /// Bytes of records and index written so far (whole pages): about what the table
    /// keeps resident.
    pub fn memory_bytes(&self) -> u64 {
        let page = |bytes: usize| bytes.next_multiple_of(4096) as u64;
        let index = |buckets: usize| page(buckets * 4);
        let growing = match self.growth {
            Growth::Idle => 0,
            Growth::Preparing { next, .. } => index(next),
            Growth::Moving { old, .. } => index(old.buckets()),
            Growth::Clearing { next, end, .. } => index(end - next),
        };
        page(self.len as usize * std::mem::size_of::<Device>())
            + index(self.current.buckets())
            + growing
    }

    /// What a growth under way is doing: "idle", "preparing", "moving", "clearing".
    pub fn growth_phase(&self) -> &'static str {
        match self.growth {
            Growth::Idle => "idle",
            Growth::Preparing { .. } => "preparing",
            Growth::Moving { .. } => "moving",
            Growth::Clearing { .. } => "clearing",
        }
    }
    /// A growth's preparing, moving or clearing is still under way.
    pub fn growing(&self) -> bool {
        !matches!(self.growth, Growth::Idle)
    }

    /// Probes `level` for `device_id`: its slot, or the empty bucket that ends the probe.
    #[inline]
    fn probe(&self, level: Level, device_id: u64, hash: u64, tag: u32) -> Result<Slot, usize> {
        let index = &self.index[level.region];
        let mut bucket = level.home(hash);
        loop {
            let entry = index[bucket];
            if entry == 0 {
                return Err(bucket);
            }
            if entry & !self.slot_mask == tag {
                let slot = (entry & self.slot_mask) - 1;
                if self.devices[slot as usize].device_id == device_id {
                    return Ok(slot);
                }
            }
            bucket = level.next(bucket);
        }
    }

    /// Puts `slot` (holding `device_id`) into `level`'s index; it must not be there.
    #[inline]
    fn place(&mut self, level: Level, device_id: u64, slot: Slot) {
        let entry = tag(device_id, self.slot_bits) | (slot + 1);
        let index = &mut self.index[level.region];
        let mut bucket = level.home(mix(device_id));
        while index[bucket] != 0 {
            bucket = level.next(bucket);
        }
        index[bucket] = entry;
    }

    /// Looks up one device, inserting it when new and there is room.
    #[inline]
    pub fn lookup_or_insert(&mut self, device_id: u64) -> Lookup {
        let found = self.lookup_or_insert_unstepped(device_id);
        if matches!(found, Lookup::Inserted(_)) {
            self.step(STEP_INSERT, PREPARE_PAGES_INSERT);
        }
        found
    }

    /// `lookup_or_insert` leaving the insert's growth step to the caller.
    #[inline]
    fn lookup_or_insert_unstepped(&mut self, device_id: u64) -> Lookup {
        debug_assert!(device_id != 0, "the codec rejects device_id 0");
        let hash = mix(device_id);
        let tag = tag(device_id, self.slot_bits);
        let free = match self.probe(self.current, device_id, hash, tag) {
            Ok(slot) => return Lookup::Found(slot),
            Err(bucket) => bucket,
        };
        if let Growth::Moving { old, .. } = self.growth {
            if let Ok(slot) = self.probe(old, device_id, hash, tag) {
                return Lookup::Found(slot);
            }
        }
        if self.len == self.capacity() {
            return Lookup::Full;
        }
        let slot = self.len;
        self.len += 1;
        self.devices[slot as usize].device_id = device_id;
        self.index[self.current.region][free] = tag | (slot + 1);
        self.grow_if_full();
        Lookup::Inserted(slot)
    }

    /// Starts a growth when the current index is more than 70% full, unless one is
    /// under way or the index is at its largest: first the next index is made
    /// resident a few pages per step (`Preparing`), so that the moves and inserts
    /// after the switch take no page faults, which would otherwise come all at once
    /// (every touch of a fresh random bucket faults, at ~1.3 µs each).
    fn grow_if_full(&mut self) {
        let buckets = self.current.buckets();
        let len = self.len as usize;
        if len * 10 <= buckets * GROW_AT_TENTHS || buckets >= self.max_buckets {
            return;
        }
        match self.growth {
            Growth::Idle => {
                // By half (whole pages), so that the fullness after a growth stays
                // near 47%: 8.6 bytes per device at most instead of 11.4 after a
                // doubling.
                self.growth = Growth::Preparing {
                    next: 0,
                    end: (buckets + buckets / 2)
                        .next_multiple_of(PAGE_BUCKETS)
                        .min(self.max_buckets),
                };
            }
            Growth::Preparing { .. } if len * 100 > buckets * FORCE_AT_HUNDREDTHS => {
                self.prepare(usize::MAX);
            }
            // Moving or clearing: finished within the inserts before the next growth
            // (module comment), so this is a guard only.
            Growth::Moving { .. } | Growth::Clearing { .. }
                if len * 100 > buckets * FORCE_AT_HUNDREDTHS =>
            {
                self.step(u32::MAX, 0);
            }
            _ => {}
        }
    }

    /// Makes up to `pages` pages of the next index resident; switches to it when all
    /// are.
    fn prepare(&mut self, pages: usize) {
        let Growth::Preparing { next, end } = self.growth else {
            return;
        };
        let n = pages.saturating_mul(PAGE_BUCKETS).min(end - next);
        let region = 1 - self.current.region;
        M::populate(&mut self.index[region], next..next + n);
        if next + n < end {
            self.growth = Growth::Preparing {
                next: next + n,
                end,
            };
            return;
        }
        let old = self.current;
        self.current = Level::new(region, end);
        self.growth = Growth::Moving {
            old,
            next: 0,
            end: self.len,
        };
        self.growths += 1;
    }

    /// A tick's share of any growth under way (the shard calls it every tick, busy or
    /// not), so that a growth finishes, and the old index stops costing memory and
    /// second probes, even when no device is new and few heartbeats come.
    pub fn tick_step(&mut self) {
        self.step(STEP_TICK, PREPARE_PAGES_TICK);
    }

    /// Does up to `units` of growth work: moving a device to the new index, or
    /// zeroing a page of the old one; or, while preparing, `pages` pages of it.
    fn step(&mut self, mut units: u32, pages: usize) {
        while units > 0 {
            match self.growth {
                Growth::Idle => return,
                Growth::Preparing { .. } => {
                    self.prepare(pages);
                    return;
                }
                Growth::Moving { old, next, end } => {
                    let n = units.min(end - next).min(MOVE_CHUNK as u32);
                    let level = self.current;
                    let mut ids = [0u64; MOVE_CHUNK];
                    for (k, slot) in (next..next + n).enumerate() {
                        ids[k] = self.devices[slot as usize].device_id;
                        M::prefetch(&self.index[level.region][level.home(mix(ids[k]))]);
                    }
                    for (k, slot) in (next..next + n).enumerate() {
                        self.place(level, ids[k], slot);
                    }
                    units -= n;
                    self.growth = if next + n == end {
                        Growth::Clearing {
                            region: old.region,
                            next: 0,
                            end: old.buckets(),
                        }
                    } else {
                        Growth::Moving {
                            old,
                            next: next + n,
                            end,
                        }
                    };
                }
                Growth::Clearing { region, next, end } => {
                    let page = M::words_per_page(&self.index[region]);
                    let n = if page > PAGE_BUCKETS {
                        // Huge pages: one whole page a step (the buckets past `end`
                        // are unused).
                        units = units.saturating_sub(HUGE_DISCARD_UNITS);
                        (next + 1).next_multiple_of(page).min(self.max_buckets) - next
                    } else {
                        let n = (units as usize)
                            .saturating_mul(CLEAR_PER_UNIT)
                            .min(end - next);
                        units -= n.div_ceil(CLEAR_PER_UNIT) as u32;
                        n
                    };
                    M::discard(&mut self.index[region], next..next + n);
                    self.growth = if next + n >= end {
                        Growth::Idle
                    } else {
                        Growth::Clearing {
                            region,
                            next: next + n,
                            end,
                        }
                    };
                }
            }
        }
    }

    /// Looks up a batch of ids. Prefetches every id's index bucket, then (once those
    /// have had time to arrive) every hit's record, then probes: the batch's cache
    /// misses overlap instead of queueing behind one another. Then does a batch's
    /// step of any growth under way.
    ///
    /// `hints` (empty, or one per id): where the caller last saw the id's record
    /// (`Some(slot)`). A hint whose record holds the id is taken without reading the
    /// index; a wrong or stale one only costs the ordinary lookup after it.
    pub fn lookup_or_insert_batch(
        &mut self,
        device_ids: &[u64],
        hints: &[Option<Slot>],
        out: &mut [Lookup],
    ) {
        debug_assert!(device_ids.len() <= MAX_BATCH && out.len() >= device_ids.len());
        debug_assert!(hints.is_empty() || hints.len() == device_ids.len());
        let len = self.len;
        let hinted = |i: usize| hints.get(i).copied().flatten().filter(|&s| s < len);
        let mut homes = [usize::MAX; MAX_BATCH];
        let level = self.current;
        let index = &self.index[level.region];
        for (i, &id) in device_ids.iter().enumerate() {
            if let Some(slot) = hinted(i) {
                M::prefetch(&self.devices[slot as usize]);
                continue;
            }
            homes[i] = self.prefetch_buckets(id);
        }
        for &home in &homes[..device_ids.len()] {
            if home == usize::MAX {
                continue;
            }
            let entry = index[home];
            if entry != 0 {
                M::prefetch(&self.devices[((entry & self.slot_mask) - 1) as usize]);
            }
        }
        let mut inserted = 0;
        for (i, &id) in device_ids.iter().enumerate() {
            out[i] = match hinted(i) {
                Some(slot) if self.devices[slot as usize].device_id == id => Lookup::Found(slot),
                _ => self.lookup_or_insert_unstepped(id),
            };
            inserted += matches!(out[i], Lookup::Inserted(_)) as u32;
        }
        // The inserts' steps and one unit per lookup, together in prefetched rounds.
        let units = inserted * STEP_INSERT + device_ids.len() as u32 + STEP_BATCH;
        self.step(units, PREPARE_PAGES_BATCH);
    }

    /// Starts loading the index bucket where a lookup of `device_id` begins.
    #[inline]
    pub fn prefetch_home(&self, device_id: u64) {
        self.prefetch_buckets(device_id);
    }

    /// Prefetches `device_id`'s home bucket in the current index, and during a move in
    /// the old one too (a device not moved yet, or a new one, is looked for there);
    /// returns the current home.
    #[inline]
    fn prefetch_buckets(&self, device_id: u64) -> usize {
        let hash = mix(device_id);
        let home = self.current.home(hash);
        M::prefetch(&self.index[self.current.region][home]);
        if let Growth::Moving { old, .. } = self.growth {
            M::prefetch(&self.index[old.region][old.home(hash)]);
        }
        home
    }

    /// Finds a device without inserting it.
    pub fn find(&self, device_id: u64) -> Option<Slot> {
        let hash = mix(device_id);
        let tag = tag(device_id, self.slot_bits);
        if let Ok(slot) = self.probe(self.current, device_id, hash, tag) {
            return Some(slot);
        }
        match self.growth {
            Growth::Moving { old, .. } => self.probe(old, device_id, hash, tag).ok(),
            _ => None,
        }
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices[..self.len as usize]
    }
    pub fn devices_mut(&mut self) -> &mut [Device] {
        let len = self.len as usize;
        &mut self.devices[..len]
    }
    pub fn device(&self, slot: Slot) -> &Device {
        &self.devices[slot as usize]
    }
    pub fn device_mut(&mut self, slot: Slot) -> &mut Device {
        &mut self.devices[slot as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Heap;

    #[test]
    fn prepare_ahead_keeps_a_32nd_ahead_in_bounded_steps() {
        let mut t = DeviceTable::<Heap>::new(100_000).unwrap();
        let steps = |t: &mut DeviceTable<Heap>| {
            std::iter::from_fn(|| t.prepare_ahead().then_some(())).count()
        };
        // Empty: one step ahead, then nothing to do.
        assert_eq!(steps(&mut t), 1);
        assert_eq!(t.ready as usize, READY_STEP);
        for id in 1..=64_000u64 {
            t.lookup_or_insert(id);
        }
        // 64,000 devices: 2,000 ahead, rounded up to a step.
        let want = (64_000usize + 2_000).next_multiple_of(READY_STEP);
        assert_eq!(steps(&mut t), (want - 64_000).div_ceil(READY_STEP));
        assert_eq!(
            t.ready as usize,
            64_000 + (want - 64_000).div_ceil(READY_STEP) * READY_STEP
        );
        assert!(!t.prepare_ahead());
        // Near capacity it stops at the last record.
        for id in 64_001..=99_990u64 {
            t.lookup_or_insert(id);
        }
        steps(&mut t);
        assert_eq!(t.ready, 100_000);
        assert!(!t.prepare_ahead());
    }

    #[test]
    fn insert_find_and_reject_when_full() {
        let mut t = DeviceTable::<Heap>::new(1000).unwrap();
        for id in 1..=1000u64 {
            assert_eq!(
                t.lookup_or_insert(id * 7919),
                Lookup::Inserted((id - 1) as u32)
            );
        }
        for id in 1..=1000u64 {
            assert_eq!(
                t.lookup_or_insert(id * 7919),
                Lookup::Found((id - 1) as u32)
            );
            assert_eq!(t.find(id * 7919), Some((id - 1) as u32));
        }
        assert_eq!(t.lookup_or_insert(3), Lookup::Full);
        assert_eq!(t.find(3), None);
        // Known devices keep working when full.
        assert_eq!(t.lookup_or_insert(7919), Lookup::Found(0));
        assert_eq!(t.len(), 1000);
    }

    /// splitmix64: ids spread over all 64 bits.
    fn ids(n: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) | 1
            })
            .collect()
    }

    #[test]
    fn the_index_grows_with_what_it_holds_and_finds_everything_meanwhile() {
        grows_and_finds_everything::<Heap>();
    }

    /// Heap memory with pages of 16,384 words, as huge pages would be (scaled down
    /// so that growths cross many), whose `discard` takes only whole pages or the rest
    /// of the region.
    struct BigPages;
    const BIG_PAGE: usize = 16_384;

    impl Memory for BigPages {
        type Words = Vec<u32>;
        type Devices = Vec<Device>;
        type Entries = Vec<crate::registry::Entry>;
        type Windows = Vec<crate::registry::ReplayWindow>;
        fn words(len: usize, huge: bool) -> std::io::Result<Vec<u32>> {
            Heap::words(len, huge)
        }
        fn devices(len: usize, huge: bool) -> std::io::Result<Vec<Device>> {
            Heap::devices(len, huge)
        }
        fn entries(len: usize, huge: bool) -> std::io::Result<Self::Entries> {
            Heap::entries(len, huge)
        }
        fn windows(len: usize, huge: bool) -> std::io::Result<Self::Windows> {
            Heap::windows(len, huge)
        }
        fn prefetch<T>(_value: &T) {}
        fn discard(words: &mut Vec<u32>, range: std::ops::Range<usize>) {
            assert!(
                range.start.is_multiple_of(BIG_PAGE)
                    && (range.end.is_multiple_of(BIG_PAGE) || range.end == words.len()),
                "{range:?} splits a page"
            );
            words[range].fill(0);
        }
        fn words_per_page(_words: &Vec<u32>) -> usize {
            BIG_PAGE
        }
    }

    #[test]
    fn on_huge_pages_the_old_index_goes_back_in_whole_pages() {
        grows_and_finds_everything::<BigPages>();
    }

    fn grows_and_finds_everything<M: Memory>() {
        let n = 300_000;
        let mut t = DeviceTable::<M>::new(1 << 22).unwrap();
        assert_eq!(t.index_buckets(), MIN_BUCKETS);
        let all = ids(n, 42);
        let mut seen_growing = 0;
        for (i, &id) in all.iter().enumerate() {
            assert_eq!(t.lookup_or_insert(id), Lookup::Inserted(i as u32));
            if t.growing() {
                seen_growing += 1;
                // Mid-growth, old devices (moved or not) and new ones are all found.
                for j in [0, i / 3, i / 2, i] {
                    assert_eq!(t.find(all[j]), Some(j as u32), "device {j} at {i}");
                    // A prefetch reads within both indexes, for any id.
                    t.prefetch_home(all[j]);
                    t.prefetch_home(!all[j]);
                }
            }
            // Between 35% and 70% full (or at the smallest size), a little more
            // while the next index is prepared.
            let b = t.index_buckets();
            assert!((i + 1) * 100 <= b * 72, "{} devices in {b} buckets", i + 1);
            // (Sizes are whole pages: small ones grow by more than half.)
            assert!(
                b < 16 * MIN_BUCKETS || (i + 1) * 100 > b * 46,
                "{} in {b}",
                i + 1
            );
        }
        assert!(
            seen_growing > 0 && t.growths() == 14,
            "{} growths",
            t.growths()
        );
        for (i, &id) in all.iter().enumerate() {
            assert_eq!(t.lookup_or_insert(id), Lookup::Found(i as u32));
        }
        assert!(!t.growing(), "every growth finished within its inserts");
        // The retired region is all zero again, ready for its next turn.
        assert!(t.index[1 - t.current.region].iter().all(|&b| b == 0));
        assert_eq!(t.find(2), None);
    }

    #[test]
    fn a_full_table_rejects_new_devices_at_its_largest_index() {
        let cap = 5000;
        let mut t = DeviceTable::<Heap>::new(cap).unwrap();
        let all = ids(cap as usize + 100, 7);
        for (i, &id) in all.iter().enumerate() {
            let want = if i < cap as usize {
                Lookup::Inserted(i as u32)
            } else {
                Lookup::Full
            };
            assert_eq!(t.lookup_or_insert(id), want);
        }
        assert_eq!(t.index_buckets(), t.max_buckets);
        for (i, &id) in all[..cap as usize].iter().enumerate() {
            assert_eq!(t.find(id), Some(i as u32));
        }
    }

    #[test]
    fn tags_use_the_bits_the_capacity_leaves() {
        // Capacity 1000: 10 slot bits, 22 tag bits; ids equal in their position bits
        // but not their tags still resolve to their own records.
        let mut t = DeviceTable::<Heap>::new(1000).unwrap();
        assert_eq!(t.slot_bits, 10);
        for id in 1..=1000u64 {
            t.lookup_or_insert(id << 40);
        }
        for id in 1..=1000u64 {
            assert_eq!(t.find(id << 40), Some(id as u32 - 1));
        }
        assert_eq!(tag(12345, 32), 0);
    }

    #[test]
    fn batch_agrees_with_single_lookups() {
        // Through several growths (batch and single lookups step differently).
        let mut a = DeviceTable::<Heap>::new(50_000).unwrap();
        let mut b = DeviceTable::<Heap>::new(50_000).unwrap();
        let ids: Vec<u64> = (0..60_000u64)
            .map(|i| (i % 45_000 + 1) * 0x1_0000_0001)
            .collect();
        let mut out = [Lookup::Full; MAX_BATCH];
        for chunk in ids.chunks(MAX_BATCH) {
            a.lookup_or_insert_batch(chunk, &[], &mut out);
            for (i, &id) in chunk.iter().enumerate() {
                assert_eq!(out[i], b.lookup_or_insert(id));
            }
        }
    }

    #[test]
    fn hinted_lookups_take_right_hints_and_ignore_wrong_ones() {
        // Through growths: right hints, another device's slot, slots past the end, and
        // none, mixed in every batch; the answers are those of plain lookups.
        let mut a = DeviceTable::<Heap>::new(20_000).unwrap();
        let mut b = DeviceTable::<Heap>::new(20_000).unwrap();
        let ids: Vec<u64> = (0..40_000u64)
            .map(|i| (i * 7919 % 19_000 + 1) * 0x9E37_79B9)
            .collect();
        let mut out = [Lookup::Full; MAX_BATCH];
        let mut hints = [None; MAX_BATCH];
        for (c, chunk) in ids.chunks(MAX_BATCH).enumerate() {
            for (i, &id) in chunk.iter().enumerate() {
                hints[i] = match (c + i) % 4 {
                    0 => b.find(id),
                    1 => Some((i * 31) as u32 % b.len().max(1)),
                    2 => Some(b.len() + i as u32),
                    _ => None,
                };
            }
            a.lookup_or_insert_batch(chunk, &hints[..chunk.len()], &mut out);
            for (i, &id) in chunk.iter().enumerate() {
                assert_eq!(out[i], b.lookup_or_insert(id), "id {id}");
            }
        }
        assert!(a.growths() > 0);
        assert_eq!(a.len(), b.len());
    }
}
