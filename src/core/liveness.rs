//! Liveness detection: a coarse hashed timing wheel with lazy recheck.
//!
//! The heartbeat path does no timer work: it only records `last_seen_ms` (and re-links
//! the device when its interval shrinks, which is rare). Each device sits in exactly one
//! wheel bucket whose time is at or before its next possible transition. When the wheel
//! reaches that bucket the device is rechecked: if its deadline has not passed (it
//! heartbeated since), it is moved to the bucket of its new deadline; otherwise the
//! transition fires and the device moves to the bucket of its next one.
//!
//! Why a wheel and not a sweep of a dense last-seen column: a sweep meets the
//! "threshold + one tick" bound only by visiting every device every tick — 2M devices
//! every 10 ms is 200M checks/s. The wheel visits a live device about once per
//! interval (≈ 200K rechecks/s for 2M devices at 10 s), and an idle tick costs one empty
//! bucket. Detection latency: a deadline `t` sits in bucket `ceil(t / tick)`, processed
//! once `now >= ceil(t / tick) * tick`, i.e. at most one tick after `t`.
//!
//! Invariant (checked by the simulation tests): a scheduled device's bucket time is ≤
//! its next deadline. Heartbeats only push deadlines later; the one exception, a
//! shorter interval, re-links the device.

use super::table::{Device, DeviceTable, Liveness, Slot};

/// Number of wheel buckets. 4096 × 10 ms ticks spans 41 s; longer deadlines wrap and
/// are rechecked once per revolution (one cheap visit per 41 s).
pub const WHEEL_BUCKETS: usize = 4096;
const _: () = assert!(WHEEL_BUCKETS.is_power_of_two() && WHEEL_BUCKETS < u16::MAX as usize);

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
            Liveness::Offline | Liveness::Unknown => return None,
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
    /// When it was detected (shard ms).
    pub now_ms: u64,
}

pub struct Wheel {
    heads: Box<[u32; WHEEL_BUCKETS]>,
    tick_ms: u64,
    /// Last tick whose bucket has been processed.
    done_tick: u64,
    pub rechecks: u64,
}

impl Wheel {
    pub fn new(tick_ms: u32, now_ms: u64) -> Wheel {
        assert!(tick_ms > 0);
        Wheel {
            heads: Box::new([0; WHEEL_BUCKETS]),
            tick_ms: tick_ms as u64,
            done_tick: now_ms / tick_ms as u64,
            rechecks: 0,
        }
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Shard time at which `advance` next has work to do (the next tick boundary).
    pub fn next_tick_ms(&self) -> u64 {
        (self.done_tick + 1) * self.tick_ms
    }

    fn link(&mut self, devices: &mut [Device], slot: Slot, tick: u64) {
        let bucket = (tick as usize) & (WHEEL_BUCKETS - 1);
        let head = self.heads[bucket];
        let d = &mut devices[slot as usize];
        debug_assert_eq!(d.wheel_bucket, 0, "device linked twice");
        d.wheel_bucket = bucket as u16 + 1;
        d.wheel_prev = 0;
        d.wheel_next = head;
        if head != 0 {
            devices[(head - 1) as usize].wheel_prev = slot + 1;
        }
        self.heads[bucket] = slot + 1;
    }

    fn unlink(&mut self, devices: &mut [Device], slot: Slot) {
        let d = devices[slot as usize];
        if d.wheel_bucket == 0 {
            return;
        }
        if d.wheel_prev != 0 {
            devices[(d.wheel_prev - 1) as usize].wheel_next = d.wheel_next;
        } else {
            self.heads[(d.wheel_bucket - 1) as usize] = d.wheel_next;
        }
        if d.wheel_next != 0 {
            devices[(d.wheel_next - 1) as usize].wheel_prev = d.wheel_prev;
        }
        let d = &mut devices[slot as usize];
        d.wheel_bucket = 0;
        d.wheel_next = 0;
        d.wheel_prev = 0;
    }

    /// Absolute shard time of the device's next deadline, if any.
    fn deadline_abs_ms(th: &Thresholds, d: &Device, now_ms: u64) -> Option<u64> {
        let after = th.deadline_after_ms(d.liveness(), d.interval_ds)?;
        let due32 = d.last_seen_ms.wrapping_add(after);
        // Signed distance from now (both < 2^31 apart by construction).
        let delta = due32.wrapping_sub(now_ms as u32) as i32 as i64;
        Some((now_ms as i64 + delta).max(0) as u64)
    }

    /// (Re)schedules `slot` for its next deadline; unscheduled if it has none.
    pub fn schedule(&mut self, th: &Thresholds, devices: &mut [Device], slot: Slot, now_ms: u64) {
        self.unlink(devices, slot);
        if let Some(due) = Self::deadline_abs_ms(th, &devices[slot as usize], now_ms) {
            // ceil(due / tick), and never a bucket already processed.
            let tick = due.div_ceil(self.tick_ms).max(self.done_tick + 1);
            self.link(devices, slot, tick);
        }
    }

    /// Processes every bucket up to `now_ms`, calling `emit` for each transition.
    pub fn advance(
        &mut self,
        th: &Thresholds,
        table: &mut DeviceTable,
        now_ms: u64,
        mut emit: impl FnMut(Transition, &Device),
    ) {
        let target = now_ms / self.tick_ms;
        if target <= self.done_tick {
            return;
        }
        // After a stall longer than a revolution, one pass over every bucket suffices:
        // rechecks compute deadlines from state, not from the bucket.
        let first = self.done_tick + 1;
        let first = first.max(target.saturating_sub(WHEEL_BUCKETS as u64 - 1));
        for tick in first..=target {
            self.done_tick = tick;
            let bucket = (tick as usize) & (WHEEL_BUCKETS - 1);
            let mut next = std::mem::replace(&mut self.heads[bucket], 0);
            while next != 0 {
                let slot = next - 1;
                let devices = table.devices_mut();
                next = devices[slot as usize].wheel_next;
                let d = &mut devices[slot as usize];
                d.wheel_bucket = 0;
                d.wheel_next = 0;
                d.wheel_prev = 0;
                self.rechecks += 1;
                let Some(due) = Self::deadline_abs_ms(th, d, now_ms) else {
                    continue;
                };
                if due <= now_ms {
                    let from = d.liveness();
                    let to = if from == Liveness::Online {
                        Liveness::Late
                    } else {
                        Liveness::Offline
                    };
                    d.set_liveness(to);
                    emit(
                        Transition {
                            slot,
                            from,
                            to,
                            now_ms,
                        },
                        d,
                    );
                }
                self.schedule(th, devices, slot, now_ms);
            }
        }
        self.done_tick = target;
    }
}
