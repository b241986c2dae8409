//! The sans-IO core of ringbeat: codec, device table, liveness, ownership, the kernel
//! programs (as plain data) and stats. Nothing in here performs I/O, reads a clock or
//! uses unsafe code (the compiler holds that line: `forbid(unsafe_code)`, and no
//! OS-facing dependency); time comes in as an argument and large arrays through
//! [`memory::Memory`].

#![forbid(unsafe_code)]

pub mod blind;
pub mod bpf;
pub mod codec;
pub mod liveness;
pub mod memory;
pub mod owner;
pub mod query;
pub mod shard;
pub mod snapshot;
pub mod stats;
pub mod stream;
pub mod table;
