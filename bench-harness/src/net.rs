//! The harness's socket calls (in `ringbeat-sys`, which holds every unsafe call of the
//! workspace) and CPU pinning.

pub use ringbeat::sys::udp::*;

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(std::io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
}
