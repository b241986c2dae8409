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
}

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
        };
        for bid in 0..shape.count {
            br.recycle(bid);
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

    /// Writes a descriptor handing buffer `bid` back; visible to the kernel at `commit`.
    pub fn recycle(&mut self, bid: u16) {
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

    /// Publishes all recycled descriptors with one release store of the ring tail.
    pub fn commit(&mut self) {
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
