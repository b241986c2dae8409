//! Small kernel helpers for waking and stopping: eventfd (a shard wakes a sleeping
//! peer after handing it frames) and blocking/awaiting SIGINT/SIGTERM on the main thread.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain eventfd(2) call; result checked before wrapping.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that we own from here on.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter, waking a reader. Never blocks (EAGAIN only at 2^64-2).
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to our open eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter (non-blocking; nothing to read is fine).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a local u64 from our open eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A second descriptor of the same eventfd (a notify on either wakes readers of
    /// both).
    pub fn try_clone(&self) -> std::io::Result<EventFd> {
        Ok(EventFd(self.0.try_clone()?))
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An eventfd watched by the current tokio reactor (for an engine on a tokio runtime).
/// Registers a second descriptor of `efd` that the returned `AsyncFd` owns. Panics
/// outside a tokio runtime context.
#[cfg(feature = "tokio")]
pub fn async_eventfd(efd: &EventFd) -> std::io::Result<tokio::io::unix::AsyncFd<EventFd>> {
    let own = efd.try_clone()?;
    // SAFETY: the AsyncFd owns `own`, an open eventfd that only its drop closes, so
    // the descriptor stays open and the same file for as long as it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(own, tokio::io::Interest::READABLE)
    };
    Ok(registered?)
}

fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and modify a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// A signal the server acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM (the number): stop.
    Stop(i32),
    /// SIGHUP: reopen output files (log rotation).
    Reopen,
}

/// Runs the calling thread only when a CPU has nothing else to run (`SCHED_IDLE`), so
/// a background writer never takes CPU time from a pinned shard. Best effort: false
/// when the kernel refused.
pub fn run_when_idle() -> bool {
    // SAFETY: `sched_param` is plain integers (musl adds reserved ones), so all-zero
    // is valid: priority 0, as SCHED_IDLE requires.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // The system call itself: musl's libc wrapper refuses with ENOSYS by design.
    // SAFETY: changes the calling thread's (pid 0) policy; `param` is an initialised
    // local the kernel reads for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
            &param as *const libc::sched_param,
        ) == 0
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it spawns
/// later), so they are only ever taken by `wait_signal` (a SIGHUP no longer kills).
pub fn block_signals() {
    let set = handled_signals();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP; returns it if one came.
pub fn wait_signal(timeout: Duration) -> Option<Signal> {
    let set = handled_signals();
    let ts = libc::timespec {
        // `as _`: time_t is 64-bit on every target built (musl 1.2+ included).
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialised locals; a null siginfo pointer is allowed.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match rc {
        libc::SIGHUP => Some(Signal::Reopen),
        s if s > 0 => Some(Signal::Stop(s)),
        _ => None,
    }
}
