//! ringbeat: heartbeat ingestion and device liveness tracking.
//!
//! * [`core`]: the sans-IO core (codec, device table, liveness wheel, stats).
//! * [`sys`]: kernel-facing code (memory mappings, sockets, io_uring buffer rings).

pub mod core;
pub mod sys;
