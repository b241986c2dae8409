//! TCP sockets: the shard's SO_REUSEPORT listener and the non-blocking calls the epoll
//! engine makes on connections (accept, read, write, shutdown). The io_uring engine
//! queues the same operations through [`crate::uring`].

use crate::socket::{bind, check, new_socket, set_int, SocketError};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Opens a non-blocking TCP listener in the SO_REUSEPORT group for `addr` with room
/// for `backlog` connections waiting to be accepted.
pub fn listener_reuseport(addr: SocketAddr, backlog: i32) -> Result<OwnedFd, SocketError> {
    let fd = new_socket(addr, libc::SOCK_STREAM).map_err(|source| SocketError::Sys {
        what: "socket",
        source,
    })?;
    let s = fd.as_raw_fd();
    set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
    bind(s, addr).map_err(|source| SocketError::Bind { addr, source })?;
    // SAFETY: listen(2) on our bound socket.
    check("listen", unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Accepts one waiting connection, non-blocking and close-on-exec; `Ok(None)` when
/// none is waiting.
pub fn accept(listener: BorrowedFd<'_>) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: accept4(2) on a listening socket with no address out-parameters.
    let rc = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a successful accept4 returns a fresh descriptor that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(rc) }))
}

/// Sets TCP_NODELAY: an ack is written as soon as it is made, not held back by
/// Nagle's algorithm behind an unacknowledged segment.
pub fn set_nodelay(fd: BorrowedFd<'_>) -> Result<(), SocketError> {
    set_int(
        fd.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        1,
        "TCP_NODELAY",
    )
}

/// Reads what is queued (non-blocking): `Ok(0)` is the end of the stream, `EAGAIN`
/// comes back as `ErrorKind::WouldBlock`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let rc = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Writes without blocking and without SIGPIPE; returns how many bytes the kernel took
/// (`ErrorKind::WouldBlock` when none).
pub fn write(fd: BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes.
    let rc = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Shuts both directions down: an operation still queued on the socket (a multishot
/// receive in an io_uring) completes and ends, so closing the descriptor afterwards
/// leaves nothing running on the connection.
pub fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown(2) on an open socket; failure (already reset) changes nothing.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}
