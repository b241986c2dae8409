//! Large zero-initialised arrays backed by anonymous `mmap`, so that capacity sized at
//! start-up (4M devices by default) costs address space but no resident memory until a
//! page is first written. A `Vec` would have to zero (and so touch) every page.

use std::marker::PhantomData;
use std::ptr::NonNull;

/// Types for which the all-zero byte pattern is a valid value: `bytemuck::Zeroable`,
/// which its derive checks field by field (so callers need no unsafe code of their own).
pub use bytemuck::Zeroable as ZeroValid;

/// An owned, fixed-length, zero-initialised array in its own anonymous mapping.
/// Its elements are never dropped (the mapping is unmapped as a whole), so `T` must
/// have no drop glue (checked when a region is made).
pub struct ZeroedRegion<T: ZeroValid> {
    ptr: NonNull<T>,
    len: usize,
    map_bytes: usize,
    /// The unit `discard` gives back: 4 KiB, or 2 MiB for a region on huge pages.
    page: usize,
    _owns: PhantomData<T>,
}

/// A transparent huge page (x86_64 and arm64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the region is uniquely owned memory, like a `Box<[T]>`; moving it to another
// thread moves ownership of the mapping with it.
unsafe impl<T: ZeroValid + Send> Send for ZeroedRegion<T> {}
// SAFETY: a shared `&ZeroedRegion` only hands out `&[T]` (Deref); writing needs `&mut`
// (DerefMut, discard, populate). So sharing one between threads is as safe as sharing a
// `Vec<T>`: it needs `T: Sync`.
unsafe impl<T: ZeroValid + Sync> Sync for ZeroedRegion<T> {}

impl<T: ZeroValid + Clone> ZeroedRegion<T> {
    /// Maps `len` zeroed elements. `MAP_NORESERVE`: pages are committed on first touch.
    pub fn new(len: usize) -> std::io::Result<Self> {
        Self::with_pages(len, false)
    }

    /// As `new`, optionally asking for transparent huge pages (`MADV_HUGEPAGE`): for
    /// large randomly accessed arrays, 2 MiB pages turn most TLB misses (each a page
    /// walk before the cache miss it precedes) into hits. The cost is granularity: the
    /// first touch of a 2 MiB range commits all of it.
    pub fn with_pages(len: usize, huge: bool) -> std::io::Result<Self> {
        const {
            assert!(
                !std::mem::needs_drop::<T>(),
                "a ZeroedRegion never drops its elements"
            )
        };
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| std::io::Error::other("region size overflows"))?;
        // With huge pages asked for and room for at least one, the mapping is whole
        // 2 MiB pages on a 2 MiB boundary: only such ranges can be huge pages, and
        // `discard` then gives back whole huge pages (a part of one would split it).
        let page = if huge && bytes >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            4096
        };
        let map_bytes = bytes.max(1).div_ceil(page) * page;
        // Room to move the start to a boundary of `page` (mmap aligns to 4 KiB only).
        let slack = page - 4096;
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked against MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes + slack,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (raw as usize).next_multiple_of(page);
        let (head, tail) = (start - raw as usize, slack - (start - raw as usize));
        // SAFETY: the slack before `start` and after `start + map_bytes` is ours (just
        // mapped above), whole 4 KiB pages, and nothing refers to it.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + map_bytes) as *mut libc::c_void, tail);
            }
        }
        let raw = start as *mut libc::c_void;
        debug_assert!(
            (raw as usize).is_multiple_of(std::mem::align_of::<T>()),
            "mmap is page aligned"
        );
        if huge {
            // SAFETY: advice on our own fresh mapping; failure (THP disabled) is harmless.
            unsafe { libc::madvise(raw, map_bytes, libc::MADV_HUGEPAGE) };
        }
        Ok(ZeroedRegion {
            ptr: NonNull::new(raw.cast::<T>()).expect("mmap never returns null on success"),
            len,
            map_bytes,
            page,
            _owns: PhantomData,
        })
    }

    /// Start address of the mapping (for NUMA binding and `numa_maps` checks).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Length of the mapping in bytes (a whole number of pages).
    pub fn map_bytes(&self) -> usize {
        self.map_bytes
    }

    /// The page `discard` gives back whole: 2 MiB in a region on huge pages (at least
    /// one long, on a 2 MiB boundary), else 4 KiB.
    pub fn page_bytes(&self) -> usize {
        self.page
    }

    /// Makes the pages holding elements `range` resident now (MADV_POPULATE_WRITE,
    /// Linux 5.14+; before that, a write of the zero already there to each page), so
    /// that first touches later take no page fault. Contents are unchanged.
    pub fn populate(&mut self, range: std::ops::Range<usize>) {
        assert!(range.start <= range.end && range.end <= self.len);
        if range.is_empty() {
            return;
        }
        let size = std::mem::size_of::<T>();
        let page = 4096;
        let first = (self.addr() + range.start * size) / page * page;
        let last = (self.addr() + range.end * size).next_multiple_of(page);
        // SAFETY: whole pages of our own mapping; populating changes no contents.
        let rc = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            for p in (first..last).step_by(page) {
                // SAFETY: inside our mapping, and `&mut self` means no reference
                // into it exists; re-writing a byte's own value changes nothing.
                unsafe {
                    let b = p as *mut u8;
                    std::ptr::write_volatile(b, std::ptr::read_volatile(b));
                }
            }
        }
    }

    /// Sets elements `range` back to zero and gives the whole pages among them back to
    /// the kernel (`MADV_DONTNEED`: the next touch maps a fresh zero page), so a range
    /// no longer used stops costing resident memory. Edges that share a page with
    /// elements outside `range` are zeroed by writing. Pages are 2 MiB in a region on
    /// huge pages (`page_bytes`); a range reaching the end takes the last page whole.
    pub fn discard(&mut self, range: std::ops::Range<usize>) {
        assert!(range.start <= range.end && range.end <= self.len);
        let size = std::mem::size_of::<T>();
        let base = self.addr();
        let page = self.page;
        let first = (base + range.start * size).next_multiple_of(page);
        let last = if range.end == self.len {
            base + self.map_bytes
        } else {
            (base + range.end * size) / page * page
        };
        if first < last {
            // SAFETY: [first, last) is whole pages inside our own private anonymous
            // mapping; after DONTNEED they read back as zero, a valid `T` (`ZeroValid`),
            // and `&mut self` means no reference into them exists.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                )
            };
            let (a, b) = ((first - base).div_ceil(size), (last - base) / size);
            self[range.start..a.max(range.start)].fill(T::zeroed());
            self[b.min(range.end)..range.end].fill(T::zeroed());
        } else {
            self[range].fill(T::zeroed());
        }
    }
}

impl<T: ZeroValid> std::ops::Deref for ZeroedRegion<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `map_bytes >= len * size_of::<T>()` bytes, mapped
        // readable and writable, zero-initialised by the kernel, and zero is a valid `T`
        // (`ZeroValid`). The mapping lives until `drop`; `&self` allows only what a
        // shared slice does (no mutation but through atomics' interior mutability).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> std::ops::DerefMut for ZeroedRegion<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` gives exclusive access to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> Drop for ZeroedRegion<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_bytes` are exactly what mmap returned, unmapped once here;
        // no borrow of the slice can outlive `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.map_bytes);
        }
    }
}

/// Hints the CPU to start loading the cache line holding `value` (x86_64; elsewhere
/// nothing, which is correct, only slower).
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: prefetch is a hint that never faults, and SSE is part of the x86_64
        // baseline; `value` is a valid reference regardless.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                (value as *const T).cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Gives the pages of freed heap memory back to the kernel now. The server's allocator
/// (mimalloc) returns freed pages lazily, as part of later allocator calls; a devices
/// file's text and its parse's scratch (hundreds of MiB at millions of devices) would
/// otherwise stay resident after a load for as long as the loading thread, which then
/// waits for signals, allocates nothing.
pub fn release_freed_heap() {
    // SAFETY: `mi_collect` has no preconditions: it frees what no allocation uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populate_makes_pages_resident_and_keeps_contents() {
        let mut r = ZeroedRegion::<u32>::new(64 * 1024).unwrap();
        r[5] = 9;
        r.populate(3..40_000);
        assert_eq!(r[5], 9);
        assert_eq!((r[4], r[6], r[39_999]), (0, 0, 0));
        let mut resident = vec![0u8; r.map_bytes() / 4096];
        // SAFETY: our own mapping; `resident` has one byte per page.
        let rc = unsafe { libc::mincore(r.addr() as *mut _, r.map_bytes(), resident.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let pages = resident.iter().filter(|&&b| b & 1 == 1).count();
        // 40,000 words = 40 pages (one more for the edge); the last 24 untouched.
        assert!((39..=41).contains(&pages), "{pages} pages resident");
    }

    /// Pages of `r` resident now, by mincore (4 KiB each).
    fn resident_pages(r: &ZeroedRegion<u32>) -> Vec<bool> {
        let mut resident = vec![0u8; r.map_bytes() / 4096];
        // SAFETY: our own mapping; `resident` has one byte per 4 KiB page.
        let rc = unsafe { libc::mincore(r.addr() as *mut _, r.map_bytes(), resident.as_mut_ptr()) };
        assert_eq!(rc, 0);
        resident.iter().map(|&b| b & 1 == 1).collect()
    }

    #[test]
    fn a_region_on_huge_pages_is_whole_2mib_pages_and_gives_them_back_whole() {
        const WORDS: usize = HUGE_PAGE / 4;
        // 1.5 huge pages of words: two pages, the region starting on a boundary.
        let mut r = ZeroedRegion::<u32>::with_pages(WORDS + WORDS / 2, true).unwrap();
        assert_eq!(r.addr() % HUGE_PAGE, 0);
        assert_eq!((r.page_bytes(), r.map_bytes()), (HUGE_PAGE, 2 * HUGE_PAGE));
        r.fill(7);
        // Within the first page and into the second: written back to zero, both
        // pages kept (each holds elements outside the range).
        r.discard(100..WORDS + 10);
        assert!(r[..100].iter().all(|&v| v == 7));
        assert!(r[100..WORDS + 10].iter().all(|&v| v == 0));
        assert!(r[WORDS + 10..].iter().all(|&v| v == 7));
        assert!(resident_pages(&r).iter().all(|&p| p));
        // Up to the end: the last page goes back whole, the first stays.
        r.discard(WORDS..r.len());
        let resident = resident_pages(&r);
        assert!(resident[..512].iter().all(|&p| p) && resident[512..].iter().all(|&p| !p));
        assert!(r[WORDS..].iter().all(|&v| v == 0) && r[99] == 7);
        // Too small for one huge page: 4 KiB pages, as without.
        let small = ZeroedRegion::<u32>::with_pages(1000, true).unwrap();
        assert_eq!(small.page_bytes(), 4096);
    }

    #[test]
    fn discard_zeroes_the_range_and_frees_its_pages() {
        let mut r = ZeroedRegion::<u32>::new(5 * 1024 + 7).unwrap();
        r.fill(7);
        r.discard(1000..4200);
        assert!(r[..1000].iter().all(|&v| v == 7));
        assert!(r[1000..4200].iter().all(|&v| v == 0));
        assert!(r[4200..].iter().all(|&v| v == 7));
        r.discard(0..3);
        assert_eq!(&r[..4], &[0, 0, 0, 7]);
    }

    #[test]
    fn region_is_zeroed_and_writable() {
        let mut r: ZeroedRegion<u64> = ZeroedRegion::new(1 << 20).unwrap();
        assert!(r.iter().step_by(4096).all(|&v| v == 0));
        r[12345] = 7;
        assert_eq!(r[12345], 7);
        assert_eq!(r.len(), 1 << 20);
        assert_eq!(r.map_bytes(), 8 << 20);
    }
}
