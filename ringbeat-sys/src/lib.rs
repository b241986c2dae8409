//! The few modules that talk to the kernel directly (or share memory between threads)
//! and so hold the crate's unsafe code, each behind a safe API.

pub mod bufring;
pub mod mem;
pub mod mmsg;
pub mod notify;
pub mod pmqos;
pub mod socket;
pub mod spsc;
