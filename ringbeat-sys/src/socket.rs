//! UDP socket setup: SO_REUSEPORT group, receive buffer sizing (with SO_RCVBUFFORCE
//! when `rmem_max` clamps), kernel drop counts, and attaching classic-BPF programs to
//! the group (ownership steering) and to sockets (optional prefilter). The programs
//! themselves are plain data made by the caller (in ringbeat, by the core).
//!
//! Kernel drops are read with SO_MEMINFO (`SK_MEMINFO_DROPS`, the socket's `sk_drops`,
//! the same counter SO_RXQ_OVFL reports) when a shard publishes its stats, rather than
//! as an SO_RXQ_OVFL control message on every datagram: the per-datagram cmsg cost
//! ~4% of a core at one heartbeat per datagram (results/2026-11-24-foundation).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{what} failed: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {addr}: {source} ({})", bind_hint(source))]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn check(what: &'static str, rc: libc::c_int) -> Result<libc::c_int, SocketError> {
    if rc < 0 {
        Err(SocketError::Sys {
            what,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

pub(crate) fn set_int(
    fd: RawFd,
    level: i32,
    name: i32,
    value: i32,
    what: &'static str,
) -> Result<(), SocketError> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a local
    // `c_int` whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    check(what, rc).map(drop)
}

fn get_int(fd: RawFd, level: i32, name: i32, what: &'static str) -> Result<i32, SocketError> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; `value`/`len` are valid for writes of a c_int.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    check(what, rc).map(|_| value)
}

/// The result of sizing the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct RcvbufOutcome {
    pub requested_bytes: usize,
    /// What the kernel reports (it doubles the asked value for bookkeeping).
    pub effective_bytes: usize,
    pub forced: bool,
    /// True when `rmem_max` clamped the request and SO_RCVBUFFORCE was not permitted.
    pub clamped: bool,
}

/// Options for one socket of the group.
#[derive(Clone, Copy, Debug)]
pub struct UdpOptions<'a> {
    pub rcvbuf_bytes: usize,
    /// A socket filter (SO_ATTACH_FILTER) attached before the bind, so no datagram is
    /// queued unfiltered.
    pub prefilter: Option<&'a [libc::sock_filter]>,
}

/// A new non-blocking, close-on-exec socket of `kind` (SOCK_DGRAM, SOCK_STREAM) in
/// `addr`'s family.
pub(crate) fn new_socket(addr: SocketAddr, kind: libc::c_int) -> std::io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(domain, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own; OwnedFd closes it on every error path.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds socket `fd` to `addr`.
pub(crate) fn bind(fd: RawFd, addr: SocketAddr) -> std::io::Result<()> {
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: `storage` holds a sockaddr of length `len` for this socket's family.
    let rc = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens a non-blocking UDP socket in the SO_REUSEPORT group for `addr`.
pub fn udp_reuseport(
    addr: SocketAddr,
    opts: UdpOptions<'_>,
) -> Result<(OwnedFd, RcvbufOutcome), SocketError> {
    let fd = new_socket(addr, libc::SOCK_DGRAM).map_err(|source| SocketError::Sys {
        what: "socket",
        source,
    })?;
    let s = fd.as_raw_fd();
    set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    let rcv = size_rcvbuf(s, opts.rcvbuf_bytes)?;
    if let Some(program) = opts.prefilter {
        attach_filter(s, program)?;
    }
    bind(s, addr).map_err(|source| SocketError::Bind { addr, source })?;
    Ok((fd, rcv))
}

fn size_rcvbuf(s: RawFd, want: usize) -> Result<RcvbufOutcome, SocketError> {
    let want_i = want.min(i32::MAX as usize / 2) as i32;
    set_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, want_i, "SO_RCVBUF")?;
    let mut effective = get_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")? as usize;
    let mut forced = false;
    // The kernel doubles the value; anything below 2×want means rmem_max clamped it.
    if effective < want * 2
        && set_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            want_i,
            "SO_RCVBUFFORCE",
        )
        .is_ok()
    {
        forced = true;
        effective = get_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")? as usize;
    }
    Ok(RcvbufOutcome {
        requested_bytes: want,
        effective_bytes: effective,
        forced,
        clamped: effective < want * 2,
    })
}

/// A socket address as `sockaddr_storage` and its length.
pub fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Datagrams the kernel dropped on this socket so far (receive buffer full, or
/// rejected by a socket filter). Wraps at 2^32.
pub fn socket_drops(fd: RawFd) -> Result<u32, SocketError> {
    Ok(meminfo(fd)?[libc::SK_MEMINFO_DROPS as usize])
}

/// Bytes (skb truesize) queued on this socket for the reader right now.
pub fn socket_queued_bytes(fd: RawFd) -> Result<u32, SocketError> {
    Ok(meminfo(fd)?[libc::SK_MEMINFO_RMEM_ALLOC as usize])
}

/// The socket's SK_MEMINFO counters (one getsockopt).
fn meminfo(fd: RawFd) -> Result<[u32; 9], SocketError> {
    // SK_MEMINFO_VARS is 9 on every kernel that has SK_MEMINFO_DROPS.
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is valid for writes of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check("SO_MEMINFO", rc)?;
    Ok(info)
}

/// The address a socket is bound to (to learn the port after binding port 0).
pub fn local_addr(fd: &OwnedFd) -> Result<SocketAddr, SocketError> {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above; `fd` is open.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    check("getsockname", rc)?;
    socketaddr_from_raw(&storage_bytes(&storage)[..len as usize]).ok_or(SocketError::Sys {
        what: "getsockname",
        source: std::io::Error::other("unknown family"),
    })
}

fn storage_bytes(s: &libc::sockaddr_storage) -> &[u8] {
    // SAFETY: any initialised plain-data value may be viewed as bytes for its size.
    unsafe {
        std::slice::from_raw_parts(
            (s as *const libc::sockaddr_storage).cast::<u8>(),
            std::mem::size_of_val(s),
        )
    }
}

/// Decodes a raw sockaddr (as the kernel writes into a receive's name field).
pub fn socketaddr_from_raw(raw: &[u8]) -> Option<SocketAddr> {
    if raw.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([raw[0], raw[1]]) as i32;
    if family == libc::AF_INET && raw.len() >= 8 {
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        let ip = std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
        Some(SocketAddr::from((ip, port)))
    } else if family == libc::AF_INET6 && raw.len() >= 24 {
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        let mut o = [0u8; 16];
        o.copy_from_slice(&raw[8..24]);
        Some(SocketAddr::from((std::net::Ipv6Addr::from(o), port)))
    } else {
        None
    }
}

fn attach(
    fd: RawFd,
    option: i32,
    prog: &[libc::sock_filter],
    what: &'static str,
) -> Result<(), SocketError> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(what, rc).map(drop)
}

fn attach_filter(fd: RawFd, prog: &[libc::sock_filter]) -> Result<(), SocketError> {
    attach(
        fd,
        libc::SO_ATTACH_FILTER,
        prog,
        "SO_ATTACH_FILTER (prefilter)",
    )
}

/// Attaches a steering program to the group (through any one of its sockets): its
/// return value is the index, in bind order, of the socket that gets the datagram.
pub fn attach_reuseport_steering(
    fd: &OwnedFd,
    program: &[libc::sock_filter],
) -> Result<(), SocketError> {
    attach(
        fd.as_raw_fd(),
        libc::SO_ATTACH_REUSEPORT_CBPF,
        program,
        "SO_ATTACH_REUSEPORT_CBPF",
    )
}

/// Whether a socket of another owner holds `addr` (UDP, or TCP with `tcp`): a bind
/// without SO_REUSEPORT fails with EADDRINUSE exactly then (TCP's probe allows
/// TIME_WAIT leftovers with SO_REUSEADDR, as the real listener does). Another error
/// (an address not on this host, a privileged port) comes back as it is.
pub fn port_in_use(addr: SocketAddr, tcp: bool) -> Result<bool, std::io::Error> {
    let fd = new_socket(
        addr,
        if tcp {
            libc::SOCK_STREAM
        } else {
            libc::SOCK_DGRAM
        },
    )?;
    if tcp {
        set_int(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            1,
            "SO_REUSEADDR",
        )
        .map_err(std::io::Error::other)?;
    }
    match bind(fd.as_raw_fd(), addr) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// What to do about a failed bind.
pub fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => "another program holds the port: stop it or choose another port",
        Some(libc::EADDRNOTAVAIL) => "the address is not one of this host's: use one it has, or 0.0.0.0 / [::]",
        Some(libc::EACCES) => "ports below 1024 need root or CAP_NET_BIND_SERVICE: grant it (AmbientCapabilities= in a systemd unit) or use a port ≥ 1024",
        _ => "check the address",
    }
}

/// A `sockaddr_storage` holding the raw socket address `name` (as
/// `sockaddr_storage_bytes` gives it; cut to the storage's size), and its length.
pub fn sockaddr_storage_from_bytes(name: &[u8]) -> (libc::sockaddr_storage, u32) {
    // SAFETY: sockaddr_storage is plain C data: all zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = name
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `len` bytes, at most the storage's size, into the storage (plain C
    // data, every byte pattern valid) from a distinct slice of at least `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    (storage, len as u32)
}

/// The first `len` bytes of a socket address the kernel wrote (a receive's source):
/// what `ringbeat_core::allow` reads.
pub fn sockaddr_storage_bytes(addr: &libc::sockaddr_storage, len: u32) -> &[u8] {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: sockaddr_storage is plain C data of `size_of` bytes (every byte pattern
    // is valid), borrowed for the slice's lifetime; `len` is clamped to its size.
    unsafe { std::slice::from_raw_parts((addr as *const libc::sockaddr_storage).cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.1:7979", "[::1]:80", "10.1.2.3:65535"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (st, len) = sockaddr_from(addr);
            assert_eq!(
                socketaddr_from_raw(&storage_bytes(&st)[..len as usize]),
                Some(addr)
            );
        }
    }
}
