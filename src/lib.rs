//! ringbeat: heartbeat ingestion and device liveness tracking.
//!
//! * [`core`]: the sans-IO core (codec, device table, liveness wheel, stats).
//! * [`engine`]: the io_uring engine and the runtime that runs one pinned shard per CPU.
//! * [`sys`]: kernel-facing code (memory mappings, sockets, buffer rings, SPSC rings);
//!   the only place with unsafe code.
//! * [`config`], [`preflight`], [`events`], [`report`]: operating the server.

pub mod config;
pub mod core;
pub mod engine;
pub mod events;
pub mod preflight;
pub mod report;
pub mod sys;
