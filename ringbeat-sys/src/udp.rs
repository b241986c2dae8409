//! Client-side UDP for the load generator and its sink: connected non-blocking UDP
//! sockets, `sendmmsg` with UDP GSO (one call sends up to 16 × 64 datagrams; the kernel
//! splits each buffer into `segment` byte datagrams), `recvmmsg` and `sendto`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Most datagrams one GSO buffer may carry (kernel UDP_MAX_SEGMENTS).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one GSO buffer.
pub const GSO_MAX_BYTES: usize = 65_000;

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    crate::socket::sockaddr_from(addr)
}

/// A non-blocking UDP socket bound to an ephemeral port and connected to `target`.
pub fn connected_udp(target: SocketAddr, sndbuf_bytes: i32) -> std::io::Result<OwnedFd> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); result checked.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: valid socket, pointer to a local c_int and its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&sndbuf_bytes as *const i32).cast(),
                4,
            );
        }
    }
    let (st, len) = sockaddr(target);
    // SAFETY: `st` holds a sockaddr of `len` bytes for the socket's family.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&st as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `buffers` (each a run of `segment`-byte datagrams) in one `sendmmsg`, with
/// UDP GSO when `gso` (else each buffer must be one datagram). Returns buffers sent.
pub fn send_buffers(
    fd: RawFd,
    buffers: &[&[u8]],
    segment: u16,
    gso: bool,
) -> std::io::Result<usize> {
    const MAX: usize = 64;
    assert!(buffers.len() <= MAX);
    // One cmsg per message: UDP_SEGMENT carrying a u16 (CMSG_SPACE(2) = 24 bytes).
    #[repr(C, align(8))]
    struct Cmsg([u8; 24]);
    let mut cmsgs: [Cmsg; MAX] = std::array::from_fn(|_| Cmsg([0; 24]));
    // SAFETY: iovec and mmsghdr are plain data; zeroed is valid, set below before use.
    let mut iovs: [libc::iovec; MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for (i, b) in buffers.iter().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if gso && b.len() > segment as usize {
            let c = &mut cmsgs[i].0;
            c[0..8].copy_from_slice(&(16usize + 2).to_ne_bytes());
            c[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
            c[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
            c[16..18].copy_from_slice(&segment.to_ne_bytes());
            msgs[i].msg_hdr.msg_control = c.as_mut_ptr().cast();
            msgs[i].msg_hdr.msg_controllen = 24;
        }
    }
    // SAFETY: every mmsghdr points at an iovec and cmsg living on this frame and at the
    // caller's buffers, all alive for the duration of the call.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), buffers.len() as u32, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives up to `bufs.len()` datagrams without blocking; fills `lens` and, when
/// given, `from`. Returns how many.
pub fn recv_many(
    fd: RawFd,
    bufs: &mut [[u8; 2048]],
    lens: &mut [usize],
    mut from: Option<&mut [libc::sockaddr_storage]>,
) -> usize {
    const MAX: usize = 64;
    let n = bufs.len().min(MAX);
    // SAFETY: plain data, set before use.
    let mut iovs: [libc::iovec; MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: 2048,
        };
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if let Some(f) = from.as_deref_mut() {
            msgs[i].msg_hdr.msg_name = (&mut f[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
    }
    // SAFETY: the headers point at live buffers of the stated sizes; non-blocking.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if got <= 0 {
        return 0;
    }
    for i in 0..got as usize {
        lens[i] = msgs[i].msg_len as usize;
    }
    got as usize
}

/// Sends `data` to the raw address `to` (the sink's acks).
pub fn send_to(fd: RawFd, data: &[u8], to: &libc::sockaddr_storage) -> bool {
    let len = if to.ss_family as i32 == libc::AF_INET6 {
        28
    } else {
        16
    };
    // SAFETY: `to` is a sockaddr written by recvmmsg; `data` is a live slice.
    unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT as _,
            (to as *const libc::sockaddr_storage).cast(),
            len,
        ) >= 0
    }
}
