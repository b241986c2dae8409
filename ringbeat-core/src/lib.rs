//! The sans-IO core of ringbeat: codec, device table, liveness, ownership, the kernel
//! programs (as plain data) and stats. Nothing in here performs I/O, reads a clock or
//! uses unsafe code (the compiler holds that line: `forbid(unsafe_code)`, and no
//! OS-facing dependency); time comes in as an argument and large arrays through
//! [`memory::Memory`].

#![forbid(unsafe_code)]

pub mod allow;
pub mod blind;
pub mod bpf;
pub mod codec;
pub mod held;
pub mod liveness;
pub mod memory;
pub mod owner;
pub mod query;
pub mod registry;
pub mod shard;
pub mod siphash;
pub mod snapshot;
pub mod stats;
pub mod stream;
pub mod table;

/// splitmix64, for the crate's property tests (no extra crate needed).
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
