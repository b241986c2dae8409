//! ringbeat: heartbeat ingestion and device liveness tracking.
//!
//! Three layers, each its own crate so the compiler holds the line between them:
//! * [`core`] (`ringbeat-core`): the sans-IO core (codec, device table, liveness wheel,
//!   ownership, kernel programs as data, stats); `forbid(unsafe_code)`, nothing
//!   OS-facing.
//! * [`sys`] (`ringbeat-sys`): every unsafe call (memory mappings, sockets, buffer
//!   rings, SPSC rings), each behind a safe API; imports nothing from the others.
//! * this crate: the [`engine`]s and the one shard loop that join the two, and
//!   [`config`], [`preflight`], [`events`], [`http`], [`report`] for operating the server.

#![forbid(unsafe_code)]

pub use ringbeat_core as core;
pub use ringbeat_sys as sys;

pub mod config;
pub mod engine;
pub mod events;
pub mod http;
pub mod memory;
pub mod mqtt;
pub mod notify_systemd;
pub mod preflight;
pub mod report;
pub mod snapshot;
