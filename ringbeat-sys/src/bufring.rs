//! The provided buffer ring: a page-aligned arena of receive buffers bound to the
//! shard's NUMA node, and the ring of buffer descriptors the kernel picks from for each
//! multishot completion. Buffers go back to the ring in batches: `recycle` writes a
//! descriptor, `commit` publishes them all with one release store of the tail.
//! Private to the crate: only `uring::ShardRing` owns one, which is what keeps the
//! mappings alive for as long as the kernel may use them.

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

#[derive(Debug, thiserror::Error)]
pub enum BufRingError {
    #[error("mmap of {bytes} bytes for the receive arena failed: {source}")]
    Map {
        bytes: usize,
        source: std::io::Error,
    },
    #[error("mbind of the receive arena to NUMA node {node} failed: {source}")]
    Bind { node: u32, source: std::io::Error },
    #[error(
        "registering the provided buffer ring failed: {0} (needs Linux 5.19+; \
         with memlock limits, raise `ulimit -l`)"
    )]
    Register(std::io::Error),
}

/// An anonymous, page-aligned mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    bytes: usize,
}

impl Mapping {
    fn new(bytes: usize) -> Result<Mapping, BufRingError> {
        let bytes = bytes.div_ceil(4096) * 4096;
        // SAFETY: anonymous private mapping without address hint; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BufRingError::Map {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            bytes,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region mmap returned; unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.bytes);
        }
    }
}

/// The NUMA node of the CPU this thread runs on (0 when unknown).
pub fn current_numa_node() -> u32 {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: getcpu writes two u32s through valid pointers; the cache argument is unused.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            std::ptr::null_mut::<u8>(),
        )
    };
    if rc < 0 {
        0
    } else {
        node
    }
}

/// Shape of a buffer ring, from `Config`.
#[derive(Clone, Copy, Debug)]
pub struct BufRingShape {
    /// Number of buffers: a power of two ≤ 32768 (kernel limit).
    pub count: u16,
    /// Bytes per buffer, a multiple of 64.
    pub size: u32,
    /// Incremental consumption (`IOU_PBUF_RING_INC`, Linux 6.12+): a receive takes only
    /// the bytes it needs from the head buffer, the next one continues after them,
    /// and a completion with `IORING_CQE_F_BUF_MORE` leaves the buffer with the kernel.
    /// For streams: large buffers, no space wasted on small reads.
    pub incremental: bool,
    /// Keep the order in which buffers were handed to the kernel: a bundle receive
    /// (`IORING_RECVSEND_BUNDLE`) fills the buffers at the head in that order and names
    /// only the first.
    pub track_order: bool,
    /// Hand the kernel only as many buffers at once as keep the bytes it writes into
    /// them within this many bytes of cache (see `Window`); 0 = every buffer. Only for
    /// datagram rings (neither `incremental` nor `track_order`).
    pub window_bytes: u32,
}

/// How many buffers a datagram ring hands the kernel at once.
///
/// With DEFER_TASKRUN the kernel copies datagrams into the ring only while the shard is
/// in `io_uring_enter`, so the buffers it holds bound what one wake-up takes; datagrams
/// beyond them wait in the socket (SO_RCVBUF absorbs bursts, not the ring). A ring
/// that hands out all of its buffers cycles through all of them: 4,096 × 2,176 bytes
/// is 8.5 MiB, so each buffer is cold when the kernel writes it and evicted again
/// before the shard reads it (results/2026-12-02-profile-batch32: ~6.7 points of the
/// shard's time past saturation at 32 heartbeats per datagram). The window keeps the
/// buffers the kernel holds to what fits a cache budget at the datagram size seen
/// (cache lines written, header and source address included), and the ring hands out
/// the most recently recycled buffers first, so the same few stay hot. One-frame
/// datagrams (two lines each) still get a wide window; large ones a narrow one, never
/// below `min`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    budget: u32,
    min: u32,
    max: u32,
    /// Bytes of cache per datagram, a moving average (starts where the window is `min`:
    /// it widens as small datagrams are seen, so a ring never starts by cycling
    /// buffers that large datagrams would then keep resident).
    avg: u32,
    sum: u64,
    seen: u32,
}

impl Window {
    pub fn new(budget: u32, min: u32, max: u32) -> Window {
        Window {
            budget,
            min: min.min(max),
            max,
            avg: (budget / min.max(1)).max(64),
            sum: 0,
            seen: 0,
        }
    }
    /// A datagram of `len` bytes (as the receive completion gives it) was taken.
    pub fn note(&mut self, len: usize) {
        self.sum += len.div_ceil(64) as u64 * 64;
        self.seen += 1;
    }
    /// Folds what was noted into the average (a quarter of the way per call, so a
    /// single odd datagram does not swing it) and returns the buffers to hand out.
    pub fn target(&mut self) -> u32 {
        if self.seen > 0 {
            let now = (self.sum / self.seen as u64).max(64) as i64;
            let avg = self.avg as i64;
            let step = (now - avg) / 4;
            self.avg = if step == 0 { now } else { avg + step } as u32;
            self.sum = 0;
            self.seen = 0;
        }
        (self.budget / self.avg.max(64)).clamp(self.min, self.max)
    }
}

/// The fewest buffers a window hands out: one wake-up can still take 256 datagrams of
/// any size (the ring size measured best at 32 heartbeats per datagram,
/// results/2026-12-02-uring-buf-count-batch32).
pub const MIN_WINDOW: u32 = 256;

pub struct BufRing {
    arena: Mapping,
    ring: Mapping,
    shape: BufRingShape,
    /// Our copy of the tail: descriptors written but not yet published are `tail - published`.
    tail: u16,
    node: u32,
    /// Incremental mode: bytes of each buffer already handed out since it was last
    /// given to the kernel (the kernel fills a buffer front to back).
    consumed: Vec<u32>,
    /// With `track_order`: buffer ids in the order the kernel will use them.
    order: std::collections::VecDeque<u16>,
    /// With a window: how many buffers to hand out, the buffers we hold (the most
    /// recently recycled on top, handed out first) and how many the kernel holds or has
    /// filled and we have not recycled yet.
    window: Option<Window>,
    free: Vec<u16>,
    given: u32,
}

impl BufRing {
    /// Maps the arena (bound to the calling thread's NUMA node, so every page is
    /// local when it is first written) and the descriptor ring, registers the ring as
    /// buffer group `bgid` and hands every buffer to the kernel.
    pub fn new(
        submitter: &Submitter<'_>,
        shape: BufRingShape,
        bgid: u16,
    ) -> Result<BufRing, BufRingError> {
        assert!(
            shape.count.is_power_of_two() && shape.count <= 32768 && shape.size.is_multiple_of(64)
        );
        assert!(shape.window_bytes == 0 || !(shape.incremental || shape.track_order));
        let arena = Mapping::new(shape.count as usize * shape.size as usize)?;
        let node = current_numa_node();
        let nodemask: u64 = 1u64 << (node % 64);
        // SAFETY: the range is our own fresh mapping; nodemask points at one u64 whose
        // bit count (maxnode = 64) is passed alongside.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                arena.ptr,
                arena.bytes,
                2, /* MPOL_BIND */
                &nodemask as *const u64,
                64u64,
                0u32,
            )
        };
        if rc < 0 {
            return Err(BufRingError::Bind {
                node,
                source: std::io::Error::last_os_error(),
            });
        }
        // Not pre-faulted: the binding places each page on the node when the kernel
        // first writes it, so an idle shard keeps none of the arena resident and a
        // busy one pays one fault per 4 KiB page, once.
        let ring = Mapping::new(shape.count as usize * std::mem::size_of::<BufRingEntry>())?;
        let flags = if shape.incremental {
            io_uring::types::IOU_PBUF_RING_INC as u16
        } else {
            0
        };
        // SAFETY: the ring mapping is page aligned, zeroed and `count` entries long. It
        // and the arena stay mapped as long as the io_uring can use them: a `BufRing`
        // is only ever owned by `uring::ShardRing`, which closes the io_uring (cancelling
        // every operation, so nothing more is written) before dropping the `BufRing`
        // (its field order). The module is private, so no other owner exists.
        unsafe {
            submitter.register_buf_ring_with_flags(ring.ptr as u64, shape.count, bgid, flags)
        }
        .map_err(BufRingError::Register)?;
        let mut br = BufRing {
            arena,
            ring,
            shape,
            tail: 0,
            node,
            consumed: if shape.incremental {
                vec![0; shape.count as usize]
            } else {
                Vec::new()
            },
            order: std::collections::VecDeque::with_capacity(if shape.track_order {
                shape.count as usize
            } else {
                0
            }),
            window: (shape.window_bytes > 0)
                .then(|| Window::new(shape.window_bytes, MIN_WINDOW, shape.count as u32)),
            free: Vec::new(),
            given: 0,
        };
        if br.window.is_some() {
            // Buffer 0 on top: the window's buffers are the first of the arena, and
            // the pages of those never handed out are never touched.
            br.free = (0..shape.count).rev().collect();
        } else {
            for bid in 0..shape.count {
                br.put(bid);
            }
        }
        br.commit();
        Ok(br)
    }

    pub fn incremental(&self) -> bool {
        self.shape.incremental
    }
    pub fn node(&self) -> u32 {
        self.node
    }
    pub fn arena_addr(&self) -> usize {
        self.arena.ptr as usize
    }
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes
    }
    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.shape.count && len <= self.shape.size as usize);
        // SAFETY: `bid` is in range, so the slice lies inside the arena; the kernel
        // filled it before posting the completion that gave us `bid`, and it will not
        // write it again until we `recycle` + `commit` it, which needs `&mut self`.
        unsafe {
            std::slice::from_raw_parts(
                self.arena.ptr.add(bid as usize * self.shape.size as usize),
                len,
            )
        }
    }

    /// Incremental mode: the next `len` bytes the kernel put in buffer `bid` (after
    /// those handed out before). Panics outside incremental mode or past the buffer's
    /// end (a caller bug).
    pub fn take_incremental(&mut self, bid: u16, len: usize) -> &[u8] {
        assert!(self.shape.incremental && bid < self.shape.count);
        let at = self.consumed[bid as usize] as usize;
        assert!(at + len <= self.shape.size as usize);
        self.consumed[bid as usize] = (at + len) as u32;
        // SAFETY: `bid` and `at + len` are in range, so the slice lies inside the
        // arena; the kernel wrote these bytes before posting the completion that named
        // them, and writes only the part after them until the buffer is recycled.
        unsafe {
            std::slice::from_raw_parts(
                self.arena
                    .ptr
                    .add(bid as usize * self.shape.size as usize + at),
                len,
            )
        }
    }

    /// With `track_order`: the buffers a receive of `len` bytes that began in buffer
    /// `bid` filled, as (buffer, bytes) in order, into `out`. False (and `out` empty)
    /// when `bid` is not the next buffer the kernel should have used: the order was
    /// lost, which is a bug; the caller counts it.
    pub fn take_ordered(&mut self, bid: u16, len: usize, out: &mut Vec<(u16, u32)>) -> bool {
        out.clear();
        if self.order.front() != Some(&bid) {
            return false;
        }
        let size = self.shape.size as usize;
        let mut left = len;
        while let Some(b) = self.order.pop_front() {
            let n = left.min(size);
            out.push((b, n as u32));
            left -= n;
            if left == 0 {
                break;
            }
        }
        left == 0
    }

    /// Hands buffer `bid` back after a datagram of `len` bytes (the completion's
    /// result) was read from it: visible to the kernel at `commit` (with a window, once
    /// the window has room for it).
    pub fn recycle_datagram(&mut self, bid: u16, len: usize) {
        match self.window.as_mut() {
            Some(w) => {
                assert!(bid < self.shape.count && self.given > 0);
                w.note(len);
                self.given -= 1;
                self.free.push(bid);
            }
            None => self.put(bid),
        }
    }

    /// Writes a descriptor handing buffer `bid` back; visible to the kernel at `commit`.
    pub fn recycle(&mut self, bid: u16) {
        assert!(self.window.is_none(), "a windowed ring recycles datagrams");
        self.put(bid);
    }

    fn put(&mut self, bid: u16) {
        assert!(bid < self.shape.count);
        if self.shape.track_order {
            self.order.push_back(bid);
        }
        if let Some(c) = self.consumed.get_mut(bid as usize) {
            *c = 0;
        }
        let mask = self.shape.count - 1;
        let index = (self.tail & mask) as usize;
        // SAFETY: `index < count`, so the entry lies in the ring mapping; the kernel
        // only reads entries between its head and the published tail, and this one is
        // past the published tail until `commit`.
        unsafe {
            let entry = &mut *(self.ring.ptr as *mut BufRingEntry).add(index);
            entry.set_addr(self.arena.ptr.add(bid as usize * self.shape.size as usize) as u64);
            entry.set_len(self.shape.size);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes all recycled descriptors with one release store of the ring tail
    /// (with a window: first tops the kernel's buffers up to it, hottest first).
    pub fn commit(&mut self) {
        if let Some(w) = self.window.as_mut() {
            let want = w.target();
            while self.given < want {
                let Some(bid) = self.free.pop() else { break };
                self.given += 1;
                self.put(bid);
            }
        }
        // SAFETY: the ring base is the first entry of a registered buffer ring, so its
        // reserved field is the shared tail; it is a naturally aligned u16 that the
        // kernel reads with acquire semantics, hence the release store here (orders the
        // descriptor writes before the tail).
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr as *const BufRingEntry)
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(w: &mut Window, len: usize) -> u32 {
        let mut t = 0;
        for _ in 0..64 {
            for _ in 0..100 {
                w.note(len);
            }
            t = w.target();
        }
        t
    }

    #[test]
    fn the_window_follows_the_datagram_size_within_its_bounds() {
        let mut w = Window::new(256 << 10, MIN_WINDOW, 4096);
        // Before any datagram: the minimum.
        assert_eq!(w.target(), MIN_WINDOW);
        // Small datagrams (68 bytes, receive header and address included): two lines.
        assert_eq!(settle(&mut w, 68), 2048);
        // 812 bytes: 13 lines.
        assert_eq!(settle(&mut w, 812), (256 << 10) / 832);
        // The largest datagrams: never below the minimum.
        assert_eq!(settle(&mut w, 2092), MIN_WINDOW);
        // Tiny ones: never above the ring.
        assert_eq!(settle(&mut w, 20), 4096);
        // Without datagrams the target stays where it was.
        assert_eq!(w.target(), 4096);
    }

    #[test]
    fn one_odd_datagram_moves_the_window_only_a_quarter_of_the_way() {
        let mut w = Window::new(256 << 10, MIN_WINDOW, 32768);
        assert_eq!(settle(&mut w, 128), 2048);
        w.note(2048);
        // avg 128 → 128 + (2048 − 128) / 4 = 608 bytes.
        assert_eq!(w.target(), (256 << 10) / 608);
    }

    #[test]
    fn a_ring_smaller_than_the_minimum_is_the_bound() {
        let mut w = Window::new(256 << 10, MIN_WINDOW, 64);
        assert_eq!(settle(&mut w, 2000), 64);
    }
}
