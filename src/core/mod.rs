//! The sans-IO core: codec, device table, liveness, ownership and stats. Nothing in
//! here performs I/O or reads a clock; time comes in as an argument.

pub mod codec;
pub mod liveness;
pub mod owner;
pub mod shard;
pub mod stats;
pub mod table;
