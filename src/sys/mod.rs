//! The few modules that talk to the kernel directly and hold the crate's unsafe code,
//! each behind a safe API.

pub mod mem;
