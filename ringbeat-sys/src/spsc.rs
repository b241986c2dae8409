//! Bounded single-producer/single-consumer rings of 32-byte frames between two shards.
//!
//! Head and tail live on separate cache lines; each side keeps a local copy of the
//! other's index and re-reads the shared one only when it looks full (producer) or
//! empty (consumer), so a batch costs one shared load and one shared store per side.
//! A full ring is reported to the caller (a counted drop), never waited on.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub type Frame = [u8; 32];

#[repr(align(128))]
struct Padded(AtomicU32);

struct Shared {
    slots: Box<[UnsafeCell<Frame>]>,
    mask: u32,
    /// Next slot the consumer reads; written by the consumer only.
    head: Padded,
    /// Next slot the producer writes; written by the producer only.
    tail: Padded,
    /// Frames the producer could not push (the ring was full), wrapping; written by the
    /// producer only, so the consumer can tell it missed frames.
    dropped: Padded,
}

// SAFETY: slots are only written by the single producer in [tail, head + cap) and only
// read by the single consumer in [head, tail); the acquire/release pairs on head/tail
// order those accesses, so sharing `Shared` between the two threads is sound.
unsafe impl Sync for Shared {}
// SAFETY: as above; the frames are plain bytes.
unsafe impl Send for Shared {}

pub struct Producer {
    shared: Arc<Shared>,
    tail: u32,
    head_cache: u32,
}

pub struct Consumer {
    shared: Arc<Shared>,
    head: u32,
    tail_cache: u32,
}

/// A ring of `capacity` frames (a power of two).
pub fn ring(capacity: u32) -> (Producer, Consumer) {
    assert!(capacity.is_power_of_two() && capacity >= 2);
    let shared = Arc::new(Shared {
        slots: (0..capacity).map(|_| UnsafeCell::new([0u8; 32])).collect(),
        mask: capacity - 1,
        head: Padded(AtomicU32::new(0)),
        tail: Padded(AtomicU32::new(0)),
        dropped: Padded(AtomicU32::new(0)),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            head_cache: 0,
        },
        Consumer {
            shared,
            head: 0,
            tail_cache: 0,
        },
    )
}

impl Producer {
    /// Writes a frame; not visible to the consumer until `publish`. False when full:
    /// the frame is lost, counted where the consumer reads it (`Consumer::dropped`).
    #[inline]
    pub fn push(&mut self, frame: &Frame) -> bool {
        self.try_push(frame) || {
            self.count_drop();
            false
        }
    }

    /// Whether a `push` would take a frame now (it stays so until this producer
    /// pushes: the consumer only frees slots).
    pub fn has_room(&mut self) -> bool {
        let cap = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.head_cache) == cap {
            self.head_cache = self.shared.head.0.load(Ordering::Acquire);
        }
        self.tail.wrapping_sub(self.head_cache) != cap
    }

    /// Counts a frame lost on its way into this ring (as a refused `push` does).
    pub fn count_drop(&mut self) {
        let dropped = &self.shared.dropped.0;
        dropped.store(
            dropped.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// As `push`, but a full ring loses and counts nothing: the caller keeps the
    /// message and tries again later.
    #[inline]
    pub fn try_push(&mut self, frame: &Frame) -> bool {
        let cap = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.head_cache) == cap {
            self.head_cache = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_cache) == cap {
                return false;
            }
        }
        let slot = &self.shared.slots[(self.tail & self.shared.mask) as usize];
        // SAFETY: the slot is outside [head, tail) (the ring is not full per the
        // acquire load above), so the consumer does not read it until we publish.
        unsafe { *slot.get() = *frame };
        self.tail = self.tail.wrapping_add(1);
        true
    }

    /// Frames pushed but not yet published.
    pub fn unpublished(&self) -> u32 {
        self.tail
            .wrapping_sub(self.shared.tail.0.load(Ordering::Relaxed))
    }

    /// Makes every pushed frame visible to the consumer (one release store).
    #[inline]
    pub fn publish(&mut self) {
        self.shared.tail.0.store(self.tail, Ordering::Release);
    }
}

impl Consumer {
    /// Calls `f` on every published frame, then releases their slots (one store).
    /// Returns the number of frames consumed.
    #[inline]
    pub fn drain(&mut self, mut f: impl FnMut(&Frame)) -> u32 {
        self.tail_cache = self.shared.tail.0.load(Ordering::Acquire);
        let n = self.tail_cache.wrapping_sub(self.head);
        while self.head != self.tail_cache {
            let slot = &self.shared.slots[(self.head & self.shared.mask) as usize];
            // SAFETY: the slot is in [head, tail): published by the producer (acquire
            // above) and not reused until we store the new head below.
            f(unsafe { &*slot.get() });
            self.head = self.head.wrapping_add(1);
        }
        if n > 0 {
            self.shared.head.0.store(self.head, Ordering::Release);
        }
        n
    }

    /// Frames the producer could not push because the ring was full, since it was
    /// made (wrapping at 2^32: compare with `wrapping_sub`).
    pub fn dropped(&self) -> u32 {
        self.shared.dropped.0.load(Ordering::Relaxed)
    }

    /// True when published frames are waiting.
    pub fn has_pending(&self) -> bool {
        self.shared.tail.0.load(Ordering::Acquire) != self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_refuses_and_order_is_kept() {
        let (mut p, mut c) = ring(4);
        for i in 0..4u8 {
            assert!(p.push(&[i; 32]));
        }
        assert!(!p.push(&[9; 32]), "full ring refuses, never blocks");
        assert_eq!(c.dropped(), 1, "and the consumer can tell");
        assert_eq!(c.drain(|_| {}), 0, "nothing visible before publish");
        p.publish();
        let mut seen = vec![];
        assert_eq!(c.drain(|f| seen.push(f[0])), 4);
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert!(p.push(&[7; 32]));
    }

    #[test]
    fn two_threads_transfer_everything_in_order() {
        let (mut p, mut c) = ring(64);
        const N: u32 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                let mut f = [0u8; 32];
                f[..4].copy_from_slice(&i.to_le_bytes());
                if p.push(&f) {
                    i += 1;
                    if i.is_multiple_of(16) {
                        p.publish();
                    }
                } else {
                    p.publish();
                    std::hint::spin_loop();
                }
            }
            p.publish();
        });
        let mut next = 0u32;
        while next < N {
            c.drain(|f| {
                assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()), next);
                next += 1;
            });
        }
        t.join().unwrap();
    }
}
