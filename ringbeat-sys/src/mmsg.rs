//! Batched datagram I/O with `recvmmsg`/`sendmmsg`, for the epoll engine: a fixed set
//! of receive slots (buffer + source address) and a fixed set of send slots, set up once
//! and reused, so a batch costs one syscall and no allocation.

use std::os::fd::RawFd;

/// `n` zeroed values of a plain C struct.
///
/// # Safety
/// `T` must be valid when all bytes are zero (sockaddr_storage, iovec, mmsghdr are).
unsafe fn zeroed_slice<T>(n: usize) -> Box<[T]> {
    // SAFETY: the caller guarantees all-zero is a valid `T`.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

pub struct RecvBatch {
    /// One buffer of `stride` bytes per slot.
    bufs: Box<[u8]>,
    stride: usize,
    max_datagram_bytes: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    /// `slots` receive slots for datagrams of up to `max_datagram_bytes`. Each buffer
    /// is larger than that (by 64 bytes), so a longer datagram arrives as one longer
    /// than the maximum (or flagged MSG_TRUNC) and is reported as too long, never cut
    /// to a valid-looking size.
    pub fn new(slots: usize, max_datagram_bytes: usize) -> RecvBatch {
        // Zero is valid for sockaddr_storage, iovec and mmsghdr (plain C data); every
        // pointer is set in `recv` before the kernel sees it.
        // SAFETY: sockaddr_storage is plain C data, valid when zeroed.
        let addrs = unsafe { zeroed_slice(slots) };
        // SAFETY: iovec is plain C data, valid when zeroed.
        let iovs = unsafe { zeroed_slice(slots) };
        // SAFETY: mmsghdr is plain C data, valid when zeroed.
        let msgs = unsafe { zeroed_slice(slots) };
        let stride = max_datagram_bytes + 64;
        RecvBatch {
            bufs: vec![0u8; slots * stride].into_boxed_slice(),
            stride,
            max_datagram_bytes,
            addrs,
            iovs,
            msgs,
        }
    }

    /// Receives up to the batch size without blocking; returns how many arrived
    /// (0 when none) or the errno.
    pub fn recv(&mut self, fd: RawFd) -> Result<usize, i32> {
        for i in 0..self.msgs.len() {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.stride..].as_mut_ptr().cast(),
                iov_len: self.stride,
            };
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        // SAFETY: every header points at a buffer, iovec and address owned by `self`,
        // valid for the call; the count matches the array length.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as u32,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return if e == libc::EAGAIN { Ok(0) } else { Err(e) };
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last `recv`: payload (None when truncated) and source address.
    pub fn get(&self, i: usize) -> (Option<&[u8]>, &libc::sockaddr_storage, u32) {
        let m = &self.msgs[i];
        let len = m.msg_len as usize;
        let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > self.max_datagram_bytes;
        let start = i * self.stride;
        let payload = (!truncated).then(|| &self.bufs[start..start + len]);
        (payload, &self.addrs[i], m.msg_hdr.msg_namelen)
    }
}

/// What one `SendBatch::flush` did, in datagrams and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    pub sent_bytes: usize,
    pub dropped: usize,
    pub dropped_bytes: usize,
}

pub struct SendBatch {
    /// One buffer of `stride` bytes per slot.
    bufs: Box<[u8]>,
    stride: usize,
    lens: Box<[usize]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[u32]>,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    used: usize,
}

impl SendBatch {
    /// `slots` send slots for datagrams of up to `max_datagram_bytes`.
    pub fn new(slots: usize, max_datagram_bytes: usize) -> SendBatch {
        // SAFETY: sockaddr_storage is plain C data, valid when zeroed.
        let addrs = unsafe { zeroed_slice(slots) };
        // SAFETY: iovec is plain C data, valid when zeroed; set in `flush` before use.
        let iovs = unsafe { zeroed_slice(slots) };
        // SAFETY: mmsghdr is plain C data, valid when zeroed; set in `flush` before use.
        let msgs = unsafe { zeroed_slice(slots) };
        SendBatch {
            bufs: vec![0u8; slots * max_datagram_bytes].into_boxed_slice(),
            stride: max_datagram_bytes,
            lens: vec![0; slots].into_boxed_slice(),
            addrs,
            addr_lens: vec![0; slots].into_boxed_slice(),
            iovs,
            msgs,
            used: 0,
        }
    }

    /// Datagrams queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.used
    }

    pub fn is_full(&self) -> bool {
        self.used == self.lens.len()
    }

    /// Queues one datagram to `addr`; false when the batch is full. Panics when `data`
    /// is longer than the batch's `max_datagram_bytes` (a caller bug).
    pub fn push(&mut self, data: &[u8], addr: &libc::sockaddr_storage, addr_len: u32) -> bool {
        if self.is_full() {
            return false;
        }
        assert!(
            data.len() <= self.stride,
            "datagram longer than the send slots"
        );
        let i = self.used;
        let start = i * self.stride;
        self.bufs[start..start + data.len()].copy_from_slice(data);
        self.lens[i] = data.len();
        self.addrs[i] = *addr;
        self.addr_lens[i] = addr_len;
        self.used += 1;
        true
    }

    /// Sends every queued datagram (one `sendmmsg`, retried for the rest when the kernel
    /// takes part) and empties the batch.
    pub fn flush(&mut self, fd: RawFd) -> Flushed {
        let n = self.used;
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.stride..].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = self.addr_lens[i];
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: headers `sent..n` point at buffers, iovecs and addresses owned by
            // `self`, valid for the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[sent..].as_mut_ptr(),
                    (n - sent) as u32,
                    libc::MSG_DONTWAIT as _,
                )
            };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
        let out = Flushed {
            sent,
            sent_bytes: self.lens[..sent].iter().sum(),
            dropped: n - sent,
            dropped_bytes: self.lens[sent..n].iter().sum(),
        };
        self.used = 0;
        out
    }
}
