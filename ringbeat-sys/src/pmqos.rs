//! CPU wake-up latency requests (PM QoS, `/dev/cpu_dma_latency`). While a process holds
//! the device open with a value written, the kernel keeps every CPU out of idle states
//! whose exit latency exceeds that many microseconds; closing it withdraws the request.
//! On the reference VM (cpuidle driver haltpoll) an idle vCPU halts and its wake-up
//! added hundreds of µs to the latency tail; with 0 µs requested it polls instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};

const DEVICE: &str = "/dev/cpu_dma_latency";

/// Holds a wake-up latency request until dropped.
pub struct CpuLatencyRequest {
    _file: File,
}

impl CpuLatencyRequest {
    /// Requests that no CPU sleep in an idle state slower than `us` to leave.
    pub fn hold(us: u32) -> std::io::Result<CpuLatencyRequest> {
        let mut file = OpenOptions::new().read(true).write(true).open(DEVICE)?;
        let value = i32::try_from(us).unwrap_or(i32::MAX);
        file.write_all(&value.to_ne_bytes())?;
        Ok(CpuLatencyRequest { _file: file })
    }
}

/// The latency limit in force (the lowest request of all processes), in µs.
pub fn current_limit_us() -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    File::open(DEVICE)?.read_exact(&mut b)?;
    Ok(i32::from_ne_bytes(b))
}
