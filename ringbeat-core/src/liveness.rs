//! Liveness detection: a coarse hashed timing wheel with lazy recheck.
//!
//! The heartbeat path does no timer work: it only records `last_seen_ms` (and
//! re-schedules the device when its interval shrinks, which is rare). Each scheduled
//! device has one live entry in a wheel bucket whose time is at or before its next
//! possible transition. When the wheel reaches that bucket the device is rechecked: if
//! its deadline has not passed (it heartbeated since), it moves to the bucket of its
//! new deadline; otherwise the transition fires and it moves to the bucket of the next.
//!
//! Why a wheel and not a sweep of a dense last-seen column: a sweep meets the
//! "threshold + one tick" bound only by visiting every device every tick — 2M devices
//! every 10 ms is 200M checks/s. The wheel visits a live device about once per interval
//! (≈ 200K rechecks/s for 2M devices at 10 s), and an idle tick costs one empty bucket.
//! Detection latency: a deadline `t` sits in bucket `ceil(t / tick)`, processed once
//! `now >= ceil(t / tick) * tick`, i.e. at most one tick after `t`.
//!
//! Buckets are arrays of device slots in pooled 256-byte chunks (62 slots: the
//! partly filled chunk of each bucket in use then costs little; 1 KiB chunks made
//! the wheel 10 bytes per device at 100K devices, these 4), not intrusive lists: a
//! bucket walk reads slots sequentially and prefetches the devices a few entries ahead
//! (a linked walk would chain one cache miss per device), and re-inserting a device
//! appends to a chunk instead of touching the bucket's previous head device. A device
//! records which bucket holds its live entry (`Device::wheel_bucket`); entries left in
//! other buckets by a re-schedule are stale and skipped when their bucket comes up.
//!
//! Holding still: a shard that falls behind its socket (its loop stalled, or its receive
//! ring ran dry while datagrams waited) has heartbeats waiting that arrived at any
//! instant since. It loses none of them (an overflowing socket's drops are blindness,
//! `blind`), so instead of deferring deadlines it stops liveness at the instant `h` it
//! fell behind (`hold`) until the engine has taken in what waited: the walk looks no
//! further than `h`, and a heartbeat applied meanwhile emits only the transitions
//! detected at or before `h` (it may have arrived at any instant after). Released, the
//! walk goes on to now and reports at their own deadlines the devices whose heartbeat
//! did not come: a device that stopped is reported once the backlog is drained, not a
//! threshold later. A transition a heartbeat taken in during the hold may have
//! preceded is not reported (the shard cannot know), never one it did not.
//!
//! Invariant (checked exactly by the simulation tests): a scheduled device's bucket time
//! is ≤ its next deadline. Heartbeats only push deadlines later; the exceptions (a new
//! or returning device, a shorter interval) re-schedule the device.

use super::table::{Device, DeviceTable, Liveness, Slot};
use crate::blind::BlindLog;
use crate::memory::Memory;

/// Number of wheel buckets. 4096 × 10 ms ticks spans 41 s; longer deadlines wrap and
/// are rechecked once per revolution (one cheap visit per 41 s).
pub const WHEEL_BUCKETS: usize = 4096;
const _: () = assert!(WHEEL_BUCKETS.is_power_of_two() && WHEEL_BUCKETS < u16::MAX as usize);

/// Words per pool chunk: [0] = next chunk + 1 (0 = end), [1] = entries used, then slots.
const CHUNK_WORDS: usize = 64;
const CHUNK_ENTRIES: usize = CHUNK_WORDS - 2;
/// How far ahead a bucket walk prefetches device records. 16 gave 3.6% more
/// heartbeats per core-second than 8 at 2M devices and 32 per datagram; 32 no more
/// (results/2026-11-24-wheel-prefetch).
const PREFETCH_AHEAD: usize = 16;

/// Liveness thresholds, as multiples of the device interval in thousandths.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub late_after_permille: u32,
    pub offline_after_permille: u32,
}

impl Thresholds {
    /// Milliseconds from the last heartbeat to the transition out of `state`, or None
    /// when no further transition follows (offline).
    #[inline]
    pub fn deadline_after_ms(&self, state: Liveness, interval_ds: u16) -> Option<u32> {
        let permille = match state {
            Liveness::Online => self.late_after_permille,
            Liveness::Late => self.offline_after_permille,
            Liveness::Offline | Liveness::Unknown | Liveness::Forgotten => return None,
        };
        // interval_ds * 100 ms * permille / 1000; Config keeps this below 2^31.
        Some((interval_ds as u64 * permille as u64 / 10) as u32)
    }
}

/// A transition found by the wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub slot: Slot,
    pub from: Liveness,
    pub to: Liveness,
    /// When it took effect (shard ms): the first tick boundary at or after the deadline,
    /// whenever the walk got to it, so a transition's time does not depend on how far
    /// a sliced walk had come.
    pub at_ms: u64,
}

pub struct Wheel<M: Memory> {
    /// Per bucket: newest chunk + 1 (0 = empty); chunks chain to older ones.
    heads: Box<[u32; WHEEL_BUCKETS]>,
    /// Chunk storage, sized at start for every device plus half as many stale entries
    /// plus one partly filled chunk per bucket; pages are touched only as used.
    pool: M::Words,
    /// Chunks returned after their bucket was processed (capacity = all chunks).
    free: Vec<u32>,
    /// Chunks never used yet (taken in order, so untouched ones cost no memory).
    fresh_next: u32,
    chunks: u32,
    tick_ms: u64,
    /// Last tick whose bucket has been processed.
    done_tick: u64,
    pub rechecks: u64,
    /// Stale entries skipped (left behind by re-schedules).
    pub stale: u64,
    /// Re-schedules refused because the pool was full (the device keeps its later
    /// entry, so its detection is late). Needs > capacity/2 interval shrinks within one
    /// revolution; counted, never silent.
    pub overflow: u64,
    /// A bucket walk that ran out of budget, resumed by the next `advance_budget`.
    cursor: Option<Cursor>,
    /// When this shard may have missed heartbeats; deadlines are deferred by it.
    pub blind: BlindLog,
    /// Set while the shard is behind its socket: the instant it fell behind (module
    /// doc, "Holding still").
    pub hold: Option<u64>,
    /// Rechecks at which a transition was due but deferred by blindness.
    pub deferred: u64,
}

/// Where an interrupted bucket walk stands: the detached chain of bucket `tick`, at
/// entry `k` of chunk `chunk - 1`.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    tick: u64,
    chunk: u32,
    k: usize,
}

impl<M: Memory> Wheel<M> {
    /// Bytes of the entry pool written so far (chunks ever taken) and the bucket heads.
    pub fn memory_bytes(&self) -> u64 {
        (self.fresh_next as usize * CHUNK_WORDS * 4 + WHEEL_BUCKETS * 4) as u64
    }

    /// A wheel for up to `capacity` devices.
    pub fn new(tick_ms: u32, now_ms: u64, capacity: u32) -> std::io::Result<Wheel<M>> {
        assert!(tick_ms > 0);
        let entries = capacity as usize + capacity as usize / 2;
        let chunks = entries.div_ceil(CHUNK_ENTRIES) + WHEEL_BUCKETS + 1;
        Ok(Wheel {
            heads: Box::new([0; WHEEL_BUCKETS]),
            pool: M::words(chunks * CHUNK_WORDS, false)?,
            free: Vec::with_capacity(chunks),
            fresh_next: 0,
            chunks: chunks as u32,
            tick_ms: tick_ms as u64,
            done_tick: now_ms / tick_ms as u64,
            rechecks: 0,
            stale: 0,
            overflow: 0,
            cursor: None,
            blind: BlindLog::default(),
            hold: None,
            deferred: 0,
        })
    }

    /// Shard time at which `advance` next has work to do (the next tick boundary).
    pub fn next_tick_ms(&self) -> u64 {
        (self.done_tick + 1) * self.tick_ms
    }

    /// A bucket walk was interrupted by its budget and has entries left.
    pub fn in_progress(&self) -> bool {
        self.cursor.is_some()
    }

    fn take_chunk(&mut self) -> Option<u32> {
        if let Some(c) = self.free.pop() {
            return Some(c);
        }
        if self.fresh_next < self.chunks {
            self.fresh_next += 1;
            return Some(self.fresh_next - 1);
        }
        None
    }

    /// Appends `slot` to `bucket`; false when the pool is exhausted.
    fn append(&mut self, bucket: usize, slot: Slot) -> bool {
        let head = self.heads[bucket];
        let open = head != 0
            && (self.pool[(head as usize - 1) * CHUNK_WORDS + 1] as usize) < CHUNK_ENTRIES;
        let chunk = if open {
            head as usize - 1
        } else {
            let Some(c) = self.take_chunk() else {
                return false;
            };
            let base = c as usize * CHUNK_WORDS;
            self.pool[base] = head;
            self.pool[base + 1] = 0;
            self.heads[bucket] = c + 1;
            c as usize
        };
        let base = chunk * CHUNK_WORDS;
        let used = self.pool[base + 1] as usize;
        self.pool[base + 2 + used] = slot;
        self.pool[base + 1] = used as u32 + 1;
        true
    }

    /// Absolute shard time of the device's next deadline, if any, and of its last
    /// heartbeat.
    fn deadline_abs_ms(th: &Thresholds, d: &Device, now_ms: u64) -> Option<(u64, u64)> {
        let after = th.deadline_after_ms(d.liveness(), d.interval_ds)?;
        let due32 = d.last_seen_ms.wrapping_add(after);
        // Signed distance from now (both < 2^31 apart by construction).
        let delta = due32.wrapping_sub(now_ms as u32) as i32 as i64;
        let due = (now_ms as i64 + delta).max(0) as u64;
        Some((due.saturating_sub(after as u64), due))
    }

    /// The device's next deadline, deferred by the blindness since its last heartbeat.
    fn effective_due(&self, th: &Thresholds, d: &Device, now_ms: u64) -> Option<(u64, u64)> {
        let (seen, due) = Self::deadline_abs_ms(th, d, now_ms)?;
        Some((due, self.blind.defer(seen, due)))
    }

    /// The tick boundary at which a deadline `due` takes effect: `ceil(due / tick)`
    /// ticks. A heartbeat at that same instant still counts (it is applied first).
    pub fn detection_ms(&self, due: u64) -> u64 {
        due.div_ceil(self.tick_ms) * self.tick_ms
    }

    /// The instant liveness may look up to: `now_ms`, or the start of a hold.
    #[inline]
    fn held(&self, now_ms: u64) -> u64 {
        self.hold.map_or(now_ms, |h| now_ms.min(h))
    }

    /// Before a heartbeat at `now_ms` is applied to device `slot`: emits every
    /// transition whose detection time is already past (strictly before `now_ms`) that
    /// the walk has not reached yet, so the device goes Online → Late → Offline before
    /// it comes back, exactly as if the walk had kept up. Its wheel entry stays; when
    /// the walk reaches it, the recheck finds nothing due or a stale entry. During a
    /// hold from `h` only transitions detected at or before `h` are emitted: this
    /// heartbeat may have waited in the socket since any instant after `h`.
    pub fn catch_up(
        &self,
        th: &Thresholds,
        device: &mut Device,
        slot: Slot,
        now_ms: u64,
        emit: &mut impl FnMut(Transition, &Device),
    ) {
        let limit = self.hold.map_or(now_ms, |h| now_ms.min(h + 1));
        while let Some((_, due)) = self.effective_due(th, device, now_ms) {
            let at_ms = self.detection_ms(due);
            if at_ms >= limit {
                return;
            }
            emit(advance_state(device, slot, at_ms), device);
        }
    }

    /// (Re)schedules `slot` for its next deadline; unscheduled if it has none.
    pub fn schedule(&mut self, th: &Thresholds, devices: &mut [Device], slot: Slot, now_ms: u64) {
        let Some((_, due)) = self.effective_due(th, &devices[slot as usize], now_ms) else {
            devices[slot as usize].wheel_bucket = 0;
            return;
        };
        // ceil(due / tick), and never a bucket already processed.
        let tick = due.div_ceil(self.tick_ms).max(self.done_tick + 1);
        let bucket = (tick as usize) & (WHEEL_BUCKETS - 1);
        if devices[slot as usize].wheel_bucket == bucket as u16 + 1 {
            return; // its entry in that bucket serves (rechecked when reached)
        }
        if self.append(bucket, slot) {
            devices[slot as usize].wheel_bucket = bucket as u16 + 1;
        } else {
            self.overflow += 1;
        }
    }

    /// Processes every bucket up to `now_ms`, calling `emit` for each transition.
    pub fn advance(
        &mut self,
        th: &Thresholds,
        table: &mut DeviceTable<M>,
        now_ms: u64,
        mut emit: impl FnMut(Transition, &Device),
    ) {
        while !self.advance_budget(th, table, now_ms, usize::MAX, &mut emit) {}
    }

    /// Like `advance`, but visits at most `budget` bucket entries and then returns
    /// false, keeping its place; true once every bucket up to `now_ms` is done. An
    /// engine calls it between receive batches, so that a tick's rechecks are spread
    /// over the tick instead of stalling receive for all of them at once.
    pub fn advance_budget(
        &mut self,
        th: &Thresholds,
        table: &mut DeviceTable<M>,
        now_ms: u64,
        budget: usize,
        emit: &mut impl FnMut(Transition, &Device),
    ) -> bool {
        let now_ms = self.held(now_ms);
        let mut left = budget;
        loop {
            let mut c = match self.cursor.take() {
                Some(c) => c,
                None => {
                    let target = now_ms / self.tick_ms;
                    if target <= self.done_tick {
                        return true;
                    }
                    // After a stall longer than a revolution, one pass over every bucket
                    // suffices: rechecks compute deadlines from state, not the bucket.
                    let tick =
                        (self.done_tick + 1).max(target.saturating_sub(WHEEL_BUCKETS as u64 - 1));
                    // From here on, re-schedules go to later ticks (never this chain).
                    self.done_tick = tick;
                    let bucket = (tick as usize) & (WHEEL_BUCKETS - 1);
                    let chunk = std::mem::replace(&mut self.heads[bucket], 0);
                    Cursor { tick, chunk, k: 0 }
                }
            };
            let bucket = (c.tick as usize) & (WHEEL_BUCKETS - 1);
            while c.chunk != 0 {
                let base = (c.chunk as usize - 1) * CHUNK_WORDS;
                let older = self.pool[base];
                let used = self.pool[base + 1] as usize;
                while c.k < used {
                    if left == 0 {
                        self.cursor = Some(c);
                        return false;
                    }
                    left -= 1;
                    let devices = table.devices_mut();
                    if c.k + PREFETCH_AHEAD < used {
                        M::prefetch(&devices[self.pool[base + 2 + c.k + PREFETCH_AHEAD] as usize]);
                    }
                    let slot = self.pool[base + 2 + c.k];
                    c.k += 1;
                    self.recheck(th, devices, slot, bucket, now_ms, emit);
                }
                self.free.push(c.chunk - 1);
                c.chunk = older;
                c.k = 0;
            }
        }
    }

    fn recheck(
        &mut self,
        th: &Thresholds,
        devices: &mut [Device],
        slot: Slot,
        bucket: usize,
        now_ms: u64,
        emit: &mut impl FnMut(Transition, &Device),
    ) {
        let d = &mut devices[slot as usize];
        if d.wheel_bucket != bucket as u16 + 1 {
            self.stale += 1;
            return;
        }
        d.wheel_bucket = 0;
        self.rechecks += 1;
        let Some((plain, due)) = self.effective_due(th, d, now_ms) else {
            return;
        };
        let at_ms = self.detection_ms(due);
        if at_ms > now_ms && self.detection_ms(plain) <= now_ms {
            self.deferred += 1;
        }
        if at_ms <= now_ms {
            emit(advance_state(d, slot, at_ms), d);
        }
        self.schedule(th, devices, slot, now_ms);
    }
}

/// Moves a device whose deadline passed to its next state (online → late, late →
/// offline) and says so.
fn advance_state(d: &mut Device, slot: Slot, at_ms: u64) -> Transition {
    let from = d.liveness();
    let to = if from == Liveness::Online {
        Liveness::Late
    } else {
        Liveness::Offline
    };
    d.set_liveness(to);
    Transition {
        slot,
        from,
        to,
        at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Heap;

    /// `n` online devices with interval `interval_ds`, seen at time 0.
    fn scheduled(n: u64, interval_ds: u16, th: &Thresholds) -> (DeviceTable<Heap>, Wheel<Heap>) {
        let mut table = DeviceTable::<Heap>::new(n as u32).unwrap();
        let mut wheel = Wheel::<Heap>::new(10, 0, n as u32).unwrap();
        for id in 1..=n {
            let super::super::table::Lookup::Inserted(slot) = table.lookup_or_insert(id) else {
                panic!()
            };
            let d = table.device_mut(slot);
            d.interval_ds = interval_ds + (id % 7) as u16;
            d.last_seen_ms = (id * 37 % 1000) as u32;
            d.set_liveness(Liveness::Online);
            wheel.schedule(th, table.devices_mut(), slot, 0);
        }
        (table, wheel)
    }

    #[test]
    fn budgeted_advance_finds_the_same_transitions_as_a_full_one() {
        let th = Thresholds {
            late_after_permille: 1500,
            offline_after_permille: 3000,
        };
        let (mut ta, mut wa) = scheduled(5_000, 10, &th);
        let (mut tb, mut wb) = scheduled(5_000, 10, &th);
        let (mut full, mut sliced) = (Vec::new(), Vec::new());
        let mut calls = 0;
        for now in (0..=6_000).step_by(10) {
            wa.advance(&th, &mut ta, now, |t, d| {
                full.push((d.device_id, t.to, now))
            });
            // Small budgets, as an engine would between receive batches: every slice
            // at the same `now` here, so detection times match exactly.
            while !wb.advance_budget(&th, &mut tb, now, 7, &mut |t, d| {
                sliced.push((d.device_id, t.to, now))
            }) {
                calls += 1;
            }
            assert!(!wb.in_progress());
        }
        assert!(calls > 1_000, "the budget really split the walks ({calls})");
        assert_eq!(full.len(), 10_000, "every device went late, then offline");
        assert_eq!(full, sliced);
        assert_eq!((wa.rechecks, wa.stale), (wb.rechecks, wb.stale));
        assert!(ta
            .devices()
            .iter()
            .zip(tb.devices())
            .all(|(a, b)| a.liveness() == b.liveness() && a.wheel_bucket == b.wheel_bucket));
    }

    #[test]
    fn chunks_are_reused_and_stale_entries_skipped() {
        let th = Thresholds {
            late_after_permille: 1500,
            offline_after_permille: 3000,
        };
        let mut table = DeviceTable::<Heap>::new(2_000).unwrap();
        let mut wheel = Wheel::<Heap>::new(10, 0, 2_000).unwrap();
        for id in 1..=2_000u64 {
            let super::super::table::Lookup::Inserted(slot) = table.lookup_or_insert(id) else {
                panic!()
            };
            let d = table.device_mut(slot);
            d.interval_ds = 10;
            d.set_liveness(Liveness::Online);
            wheel.schedule(&th, table.devices_mut(), slot, 0);
        }
        // A shorter interval re-schedules earlier and leaves a stale entry behind.
        table.device_mut(0).interval_ds = 1;
        wheel.schedule(&th, table.devices_mut(), 0, 0);
        let mut late = 0;
        wheel.advance(&th, &mut table, 1_600, |t, _| {
            late += (t.to == Liveness::Late) as u32
        });
        assert_eq!(late, 2_000);
        assert_eq!(wheel.stale, 1);
        let used = wheel.fresh_next;
        // Many more revolutions of late → offline reuse the same chunks.
        wheel.advance(&th, &mut table, 100_000, |_, _| {});
        assert!(
            wheel.fresh_next <= used + 2,
            "{} > {}",
            wheel.fresh_next,
            used
        );
        assert_eq!(wheel.overflow, 0);
        assert!(table
            .devices()
            .iter()
            .all(|d| d.liveness() == Liveness::Offline && d.wheel_bucket == 0));
    }
}
