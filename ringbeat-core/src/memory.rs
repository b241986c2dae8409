//! What the core needs from the machine: large zero-initialised arrays sized at
//! start-up, a cache-line prefetch hint, and (optionally) its vector unit for the
//! version-2 tags. The core cannot provide these without unsafe code or OS calls, so
//! whoever runs it hands them in as a [`Memory`] type: the server hands in lazily
//! committed anonymous mappings (`ringbeat-sys`'s `ZeroedRegion`, where capacity nobody
//! used costs address space, not memory, `prefetch` is the CPU's hint, and tags use
//! AVX2 where the CPU has it); tests, the simulation and the bench harness's liveness
//! study use [`Heap`] (plain vectors, no hint, portable tags).

use crate::registry::{Entry, ReplayWindow};
use crate::table::Device;
use std::ops::DerefMut;

/// Storage and cache hints for a [`crate::shard::ShardCore`] and its parts.
pub trait Memory: 'static {
    /// `len` words, all zero.
    type Words: DerefMut<Target = [u32]> + Send;
    /// `len` device records, all zero (the "unused" record).
    type Devices: DerefMut<Target = [Device]> + Send;
    /// `len` registry entries, all zero (empty), shared read-only by every shard.
    type Entries: DerefMut<Target = [Entry]> + Send + Sync;
    /// `len` replay windows, all zero (nothing taken), one shard's own.
    type Windows: DerefMut<Target = [ReplayWindow]> + Send;

    /// `huge_pages` asks for transparent huge pages where the memory supports them.
    fn words(len: usize, huge_pages: bool) -> std::io::Result<Self::Words>;
    fn devices(len: usize, huge_pages: bool) -> std::io::Result<Self::Devices>;
    fn entries(len: usize, huge_pages: bool) -> std::io::Result<Self::Entries>;
    fn windows(len: usize, huge_pages: bool) -> std::io::Result<Self::Windows>;

    /// Sets `words[range]` back to zero, giving whole pages back to the machine
    /// where the memory can (the table's retired index regions).
    fn discard(words: &mut Self::Words, range: std::ops::Range<usize>) {
        words[range].fill(0);
    }

    /// Words per page that `discard` gives back whole: 1,024 (4 KiB), or 524,288 for
    /// memory on 2 MiB pages, which must be given back whole (a part of one splits it
    /// into 4 KiB pages, and the region stays on those when it is used again).
    fn words_per_page(_words: &Self::Words) -> usize {
        1024
    }

    /// Makes `words[range]` resident now (they stay zero), so that first touches
    /// later take no page fault. Memory that is resident from the start needs nothing.
    fn populate(_words: &mut Self::Words, _range: std::ops::Range<usize>) {}

    /// As `populate`, for device records.
    fn populate_devices(_devices: &mut Self::Devices, _range: std::ops::Range<usize>) {}

    /// Asks the CPU to start loading the cache line holding `value`. Only a hint: doing
    /// nothing is correct, just slower on batched lookups and wheel walks.
    fn prefetch<T>(value: &T);

    /// The version-2 tags of eight frames: SipHash-2-4-128 of each 48-byte message
    /// under its key, exactly as `siphash::tags48` computes them. Memory that knows the
    /// CPU may use its vector unit instead.
    #[inline]
    fn tags48x8(keys: [&crate::codec::Key; 8], messages: [&[u8; 48]; 8]) -> [[u8; 16]; 8] {
        crate::siphash::tags48::<8>(keys, messages)
    }
}

/// Ordinary heap vectors, touched (zeroed) at allocation; no prefetch.
pub struct Heap;

impl Memory for Heap {
    type Words = Vec<u32>;
    type Devices = Vec<Device>;
    type Entries = Vec<Entry>;
    type Windows = Vec<ReplayWindow>;

    fn words(len: usize, _huge_pages: bool) -> std::io::Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn devices(len: usize, _huge_pages: bool) -> std::io::Result<Vec<Device>> {
        Ok(vec![Device::default(); len])
    }
    fn entries(len: usize, _huge_pages: bool) -> std::io::Result<Vec<Entry>> {
        Ok(vec![Entry::default(); len])
    }
    fn windows(len: usize, _huge_pages: bool) -> std::io::Result<Vec<ReplayWindow>> {
        Ok(vec![ReplayWindow::default(); len])
    }
    #[inline(always)]
    fn prefetch<T>(_value: &T) {}
}
