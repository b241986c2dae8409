//! The shard's device table: device_id → dense slot → per-device state.
//!
//! Fixed capacity chosen at start-up (`--max-devices`), never resized, so there is no
//! rehash and no incremental evacuation on the hot path. Both arrays come from the
//! [`Memory`] handed in (in the server, lazily committed mappings: capacity nobody has
//! used costs address space, not memory).
//!
//! * index: open addressing with linear probing over `u32` buckets holding `slot + 1`
//!   (0 = empty). Bucket count is the power of two ≥ 2 × capacity, so the load factor
//!   stays ≤ 0.5 when full and most lookups touch one bucket.
//! * devices: 32-byte [`Device`] records in insertion order. Devices are never removed
//!   (an offline device keeps its slot so its epoch and sequence survive), which keeps
//!   slots stable and lets the liveness wheel link them by slot number.
//!
//! Memory per device at full capacity: 32 (record) + 2 × 4 (index) = 40 bytes, plus
//! about 4 bytes of liveness wheel entry (`liveness`), 44 in all.
//! Batched lookups ([`DeviceTable::lookup_or_insert_batch`]) issue all bucket loads
//! before any dependent record load, so a batch's cache misses overlap instead of
//! queueing behind one another.

use crate::memory::Memory;

/// Liveness state of a device. `Unknown` only appears as the `from` of the first event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Liveness {
    Unknown = 0,
    Online = 1,
    Late = 2,
    Offline = 3,
}

impl Liveness {
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Online => "online",
            Liveness::Late => "late",
            Liveness::Offline => "offline",
        }
    }
    pub fn from_u8(v: u8) -> Liveness {
        match v {
            1 => Liveness::Online,
            2 => Liveness::Late,
            3 => Liveness::Offline,
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

pub struct DeviceTable<M: Memory> {
    index: M::Words,
    index_shift: u32,
    index_mask: usize,
    devices: M::Devices,
    len: u32,
}

#[inline]
fn mix(device_id: u64) -> u64 {
    // Fibonacci hashing after folding the high half in, so ids that differ only in
    // high bits still spread. Independent of `owner::owner` (which uses 32-bit halves).
    (device_id ^ (device_id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Most ids one batch call may carry (bounded stack arrays).
pub const MAX_BATCH: usize = 256;

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
        let buckets = (capacity as usize * 2).next_power_of_two();
        Ok(DeviceTable {
            index: M::words(buckets, huge)?,
            index_shift: 64 - buckets.trailing_zeros(),
            index_mask: buckets - 1,
            devices: M::devices(capacity as usize, huge)?,
            len: 0,
        })
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

    #[inline]
    fn home(&self, device_id: u64) -> usize {
        (mix(device_id) >> self.index_shift) as usize
    }

    /// Looks up one device, inserting it when new and there is room.
    #[inline]
    pub fn lookup_or_insert(&mut self, device_id: u64) -> Lookup {
        debug_assert!(device_id != 0, "the codec rejects device_id 0");
        let mut bucket = self.home(device_id);
        loop {
            let entry = self.index[bucket];
            if entry == 0 {
                if self.len == self.capacity() {
                    return Lookup::Full;
                }
                let slot = self.len;
                self.len += 1;
                self.index[bucket] = slot + 1;
                let d = &mut self.devices[slot as usize];
                d.device_id = device_id;
                return Lookup::Inserted(slot);
            }
            if self.devices[(entry - 1) as usize].device_id == device_id {
                return Lookup::Found(entry - 1);
            }
            bucket = (bucket + 1) & self.index_mask;
        }
    }

    /// Looks up a batch of ids. Prefetches every id's index bucket, then (once those
    /// have had time to arrive) every hit's record, then probes: the batch's cache
    /// misses overlap instead of queueing behind one another.
    pub fn lookup_or_insert_batch(&mut self, device_ids: &[u64], out: &mut [Lookup]) {
        debug_assert!(device_ids.len() <= MAX_BATCH && out.len() >= device_ids.len());
        let mut homes = [0usize; MAX_BATCH];
        for (i, &id) in device_ids.iter().enumerate() {
            homes[i] = self.home(id);
            M::prefetch(&self.index[homes[i]]);
        }
        for &home in &homes[..device_ids.len()] {
            let entry = self.index[home];
            if entry != 0 {
                M::prefetch(&self.devices[(entry - 1) as usize]);
            }
        }
        for (i, &id) in device_ids.iter().enumerate() {
            out[i] = self.lookup_or_insert(id);
        }
    }

    /// Finds a device without inserting it.
    pub fn find(&self, device_id: u64) -> Option<Slot> {
        let mut bucket = self.home(device_id);
        loop {
            let entry = self.index[bucket];
            if entry == 0 {
                return None;
            }
            if self.devices[(entry - 1) as usize].device_id == device_id {
                return Some(entry - 1);
            }
            bucket = (bucket + 1) & self.index_mask;
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

    #[test]
    fn batch_agrees_with_single_lookups() {
        let mut a = DeviceTable::<Heap>::new(5000).unwrap();
        let mut b = DeviceTable::<Heap>::new(5000).unwrap();
        let ids: Vec<u64> = (0..6000u64)
            .map(|i| (i % 4500 + 1) * 0x1_0000_0001)
            .collect();
        let mut out = [Lookup::Full; MAX_BATCH];
        for chunk in ids.chunks(MAX_BATCH) {
            a.lookup_or_insert_batch(chunk, &mut out);
            for (i, &id) in chunk.iter().enumerate() {
                assert_eq!(out[i], b.lookup_or_insert(id));
            }
        }
    }
}
