//! The memory the server hands its shard cores: lazily committed anonymous mappings
//! (`sys::mem::ZeroedRegion`), so `--max-devices` capacity nobody used costs address
//! space, not memory, and the CPU's prefetch hint for batched lookups and wheel walks.

use crate::core::memory::Memory;
use crate::core::registry::{Entry, ReplayWindow};
use crate::core::table::Device;
use crate::sys::mem::{self, ZeroedRegion};

/// [`Memory`] backed by `mmap` (optionally on transparent huge pages).
pub struct Mapped;

impl Memory for Mapped {
    type Words = ZeroedRegion<u32>;
    type Devices = ZeroedRegion<Device>;
    type Entries = ZeroedRegion<Entry>;
    type Windows = ZeroedRegion<ReplayWindow>;

    fn words(len: usize, huge_pages: bool) -> std::io::Result<ZeroedRegion<u32>> {
        ZeroedRegion::with_pages(len, huge_pages)
    }
    fn devices(len: usize, huge_pages: bool) -> std::io::Result<ZeroedRegion<Device>> {
        ZeroedRegion::with_pages(len, huge_pages)
    }
    fn entries(len: usize, huge_pages: bool) -> std::io::Result<ZeroedRegion<Entry>> {
        ZeroedRegion::with_pages(len, huge_pages)
    }
    fn windows(len: usize, huge_pages: bool) -> std::io::Result<ZeroedRegion<ReplayWindow>> {
        ZeroedRegion::with_pages(len, huge_pages)
    }
    fn discard(words: &mut ZeroedRegion<u32>, range: std::ops::Range<usize>) {
        words.discard(range)
    }
    fn words_per_page(words: &ZeroedRegion<u32>) -> usize {
        words.page_bytes() / 4
    }
    fn populate(words: &mut ZeroedRegion<u32>, range: std::ops::Range<usize>) {
        words.populate(range)
    }
    fn populate_devices(devices: &mut ZeroedRegion<Device>, range: std::ops::Range<usize>) {
        devices.populate(range)
    }
    #[inline(always)]
    fn prefetch<T>(value: &T) {
        mem::prefetch(value)
    }
    /// AVX2 where the CPU has it (`sys::simd`), else the core's portable code.
    #[inline]
    fn tags48x8(keys: [&[u8; 16]; 8], messages: [&[u8; 48]; 8]) -> [[u8; 16]; 8] {
        crate::sys::simd::tags48x8(keys, messages)
            .unwrap_or_else(|| crate::core::siphash::tags48::<8>(keys, messages))
    }
}

/// The shard core as the engines run it.
pub type Core = crate::core::shard::ShardCore<Mapped>;
/// The device registry as the server holds it (its index on huge pages).
pub type Registry = crate::core::registry::RegistryIn<Mapped>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::DeviceTable;

    #[test]
    fn untouched_capacity_costs_no_resident_memory() {
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/statm").unwrap();
            let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
            pages * 4
        }
        let before = rss_kib();
        let t = DeviceTable::<Mapped>::new(4 * 1024 * 1024).unwrap();
        let after = rss_kib();
        // 4M devices would be 192 MiB if touched; allow a little noise.
        assert!(
            after.saturating_sub(before) < 8 * 1024,
            "rss grew {} KiB",
            after - before
        );
        assert_eq!(t.capacity(), 4 * 1024 * 1024);
    }
}
