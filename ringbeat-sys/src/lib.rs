//! ringbeat's system layer: every call into the kernel that needs unsafe code (memory
//! mappings, sockets and their BPF programs, the io_uring and its buffer ring, SPSC
//! rings between threads, eventfds, signals, PM QoS, the load generator's batched
//! sends), each behind a safe API with its invariants written next to it. It knows
//! nothing of ringbeat's protocol: sizes, constants and BPF programs are passed in.

mod bufring;
pub mod mem;
pub mod mmsg;
pub mod notify;
pub mod pmqos;
pub mod simd;
pub mod socket;
pub mod spsc;
pub mod tcp;
pub mod udp;
pub mod uring;

pub use bufring::current_numa_node;
