//! One UDP shard's io_uring with the memory its operations point into: the ring, the
//! provided buffer ring and its arena, the multishot receive's `msghdr`, a pool of send
//! slots (header, address and bytes of one ack datagram each) and the wake-up read's
//! buffer. Owning them together is what makes the operations safe to offer: an SQE only
//! ever points into this struct, whose memory does not move (boxed) and outlives the
//! ring (field order, see [`ShardRing`]).
//!
//! The ring is `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`: create it on the thread
//! that will use it (the struct is deliberately not `Send`).

use crate::bufring::{BufRing, BufRingError, BufRingShape};
use crate::mem::ZeroedRegion;
use io_uring::{opcode, squeue, types, IoUring};
use std::os::fd::RawFd;
use std::time::Duration;

/// Most bytes of a received buffer `prefetch_received` asks for: the receive header,
/// the source address and a datagram of 64 frames.
const PREFETCH_BYTES: usize = 2304;

/// Buffer group id of the datagram receive buffers: each shard has its own ring, and a
/// ring's group ids are its own, so every shard uses group 0.
const BGID: u16 = 0;
/// Buffer group id of the TCP receive buffers: a group of their own, so a flood of
/// datagrams cannot take the buffers connections need and the other way round.
const STREAM_BGID: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ShardRingError {
    #[error(
        "creating the io_uring failed: {0} (needs Linux 6.1+ with io_uring allowed: \
         kernel.io_uring_disabled=0 and no seccomp filter on io_uring_setup; run `ringbeat check`)"
    )]
    Setup(std::io::Error),
    #[error(
        "mapping the ack send slots failed: {0} (lower --buf-count or raise the memory limit)"
    )]
    SendBytes(std::io::Error),
    #[error(transparent)]
    BufRing(#[from] BufRingError),
}

/// Sizes of a shard's ring, from the validated configuration.
#[derive(Clone, Copy, Debug)]
pub struct ShardRingShape {
    /// Receive buffers (a power of two ≤ 32768) and their size (a multiple of 64).
    pub buf_count: u16,
    pub buf_size: u32,
    /// Bytes of datagrams the kernel may hold in receive buffers at once (0 = every
    /// buffer; see `bufring::Window`).
    pub buf_window_bytes: u32,
    /// Ack datagrams that can be in flight at once.
    pub send_slots: u32,
    /// Largest datagram a send slot holds.
    pub max_datagram_bytes: usize,
    /// TCP receive buffers; None when TCP is off.
    pub stream_bufs: Option<StreamBufs>,
}

/// The TCP buffer group's shapes, (count, size): count a power of two, size a multiple
/// of 64.
#[derive(Clone, Copy, Debug)]
pub struct StreamBufs {
    /// With incremental consumption, where the kernel has it (None: never try).
    pub incremental: Option<(u16, u32)>,
    /// Without it.
    pub plain: (u16, u32),
    /// Without it, receive bundles (`IORING_RECVSEND_BUNDLE`, Linux 6.10+) where the
    /// kernel has them: one completion fills several buffers.
    pub bundles: bool,
}

/// One in-flight write on a TCP connection: the ring owns the bytes until the write's
/// last completion, whatever happens to the connection meanwhile.
struct StreamSend {
    buf: Vec<u8>,
    /// Bytes already written (a short write is continued from here).
    done: usize,
    fd: RawFd,
    /// The kernel's result for the last queued part, once its completion was reaped.
    completed: Option<i32>,
    /// The caller's note (which connection), handed back at the end.
    tag: u64,
}

/// Top byte of the user_data of TCP writes: the ring recognises their completions
/// itself (it must know a write ended before it frees the write's bytes). Callers'
/// own user_data must not use it.
pub const STREAM_SEND_MARK: u64 = 0xFE;
const MARK_SHIFT: u32 = 56;

/// How a TCP write ended (see [`ShardRing::stream_send_completed`]).
#[derive(Debug)]
pub enum StreamSendEnd {
    /// A short write: the rest was queued again under the same user_data.
    Continuing,
    /// Every byte was written, or the write failed (`error`, errno) after `written`
    /// bytes; the buffer comes back for reuse.
    Done {
        buf: Vec<u8>,
        tag: u64,
        written: usize,
        error: Option<i32>,
    },
}

/// One in-flight send. Boxed slices of these never move or resize; the kernel reads
/// `addr` (and the slot's bytes in `send_bytes`) until the send's completion arrives.
struct SendSlot {
    /// Bytes queued, for counting the ack when its completion arrives.
    len: usize,
    addr: libc::sockaddr_storage,
}

/// A received datagram in a provided buffer, as `RecvMsgMulti` laid it out.
pub struct Received<'a> {
    pub payload: &'a [u8],
    /// The source address, raw (`sockaddr_in` or `sockaddr_in6` bytes).
    pub name: &'a [u8],
    /// The datagram was longer than the buffer: `payload` is cut.
    pub truncated: bool,
}

/// The ring and everything its operations point into.
///
/// Field order is part of soundness: fields drop in declaration order, and `ring` goes
/// first, so the ring's file is closed (the kernel cancels every operation, and a
/// cancelled operation writes nothing) before the buffer arena, the headers, the send
/// slots and the wake-up buffer are freed.
pub struct ShardRing {
    ring: IoUring,
    bufring: BufRing,
    stream_bufring: Option<BufRing>,
    /// TCP receives take bundles of plain buffers.
    stream_bundles: bool,
    stream_sends: slab::Slab<StreamSend>,
    /// user_data of the multishot accept: its completions carry new descriptors, which
    /// `reap` takes ownership of (into `accepted`) so none can leak or be closed twice.
    accept_user_data: Option<u64>,
    accepted: Vec<std::os::fd::OwnedFd>,
    recv_msg: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    /// The send slots' datagram bytes, `send_bytes_per_slot` each, in one lazily
    /// committed mapping: an idle shard keeps none of it resident, a busy one only the
    /// slots it has used.
    send_bytes: ZeroedRegion<u8>,
    send_bytes_per_slot: usize,
    wake_buf: Box<u64>,
    /// Makes the type `!Send`: a SINGLE_ISSUER ring is used by its creating thread only.
    _single_thread: std::marker::PhantomData<*const ()>,
}

/// `n` is an `io_uring_enter` count; `pushed` whether the SQE went in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub pushed: bool,
    /// `io_uring_enter` calls made to free room in a full submission queue.
    pub enters: u32,
}

impl ShardRing {
    /// Creates the ring on the calling thread (CQ sized so every buffer and every send
    /// slot can be in one completion at once, twice over) and registers the buffer ring
    /// with its arena bound to the calling thread's NUMA node.
    pub fn new(shape: ShardRingShape) -> Result<ShardRing, ShardRingError> {
        let sq_entries = shape.send_slots.next_power_of_two();
        let cq_entries = (shape.buf_count as u32 * 2 + shape.send_slots * 2)
            .next_power_of_two()
            .max(2 * sq_entries);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_cqsize(cq_entries)
            .build(sq_entries)
            .map_err(ShardRingError::Setup)?;
        let bufring = BufRing::new(
            &ring.submitter(),
            BufRingShape {
                count: shape.buf_count,
                size: shape.buf_size,
                incremental: false,
                track_order: false,
                window_bytes: shape.buf_window_bytes,
            },
            BGID,
        )?;
        let stream_bufring = match shape.stream_bufs {
            Some(s) => Some(
                s.incremental
                    .and_then(|(count, size)| {
                        // Refused before Linux 6.12: the plain shape instead.
                        let inc = BufRingShape {
                            count,
                            size,
                            incremental: true,
                            track_order: false,
                            window_bytes: 0,
                        };
                        BufRing::new(&ring.submitter(), inc, STREAM_BGID).ok()
                    })
                    .map_or_else(
                        || {
                            let (count, size) = s.plain;
                            let plain = BufRingShape {
                                count,
                                size,
                                incremental: false,
                                track_order: true,
                                window_bytes: 0,
                            };
                            BufRing::new(&ring.submitter(), plain, STREAM_BGID)
                        },
                        Ok,
                    )?,
            ),
            None => None,
        };
        let stream_bundles = shape.stream_bufs.is_some_and(|s| s.bundles)
            && ring.params().is_feature_recvsend_bundle()
            && stream_bufring.as_ref().is_some_and(|b| !b.incremental());
        let slots = (0..shape.send_slots)
            .map(|_| SendSlot {
                len: 0,
                addr: zeroed_sockaddr(),
            })
            .collect();
        let send_bytes = ZeroedRegion::new(shape.send_slots as usize * shape.max_datagram_bytes)
            .map_err(ShardRingError::SendBytes)?;
        let mut recv_msg = Box::new(zeroed_msghdr());
        // The kernel lays out `io_uring_recvmsg_out`, then up to this much source
        // address, then the payload; no control data (drops are read with SO_MEMINFO).
        recv_msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        Ok(ShardRing {
            ring,
            bufring,
            stream_bufring,
            stream_bundles,
            stream_sends: slab::Slab::new(),
            accept_user_data: None,
            accepted: Vec::new(),
            recv_msg,
            slots,
            send_bytes,
            send_bytes_per_slot: shape.max_datagram_bytes,
            wake_buf: Box::new(0),
            _single_thread: std::marker::PhantomData,
        })
    }

    /// The kernel supports min-wait batching (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12+).
    pub fn min_wait_supported(&self) -> bool {
        self.ring.params().is_feature_min_timeout()
    }
    /// NUMA node, start address and size of the receive arena.
    pub fn arena(&self) -> (u32, usize, usize) {
        (
            self.bufring.node(),
            self.bufring.arena_addr(),
            self.bufring.arena_bytes(),
        )
    }

    /// Pushes an SQE that points only into `self`, submitting first when the queue is
    /// full.
    fn push(&mut self, entry: &squeue::Entry) -> Pushed {
        let mut enters = 0;
        for _ in 0..2 {
            // SAFETY: every entry built in this module points only at memory owned by
            // `self` (receive msghdr, send slots, wake-up buffer, buffer ring), boxed or
            // mapped so it never moves, and freed only after the ring is closed (field order).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Pushed {
                    pushed: true,
                    enters,
                };
            }
            if self.ring.submit().is_err() {
                break;
            }
            enters += 1;
        }
        Pushed {
            pushed: false,
            enters,
        }
    }

    /// Queues the multishot receive on socket `fd` over the provided buffers.
    pub fn push_recv(&mut self, fd: RawFd, user_data: u64) -> Pushed {
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_msg, BGID)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Queues an 8-byte read of eventfd `fd` into the ring's wake-up buffer.
    pub fn push_wake_read(&mut self, fd: RawFd, user_data: u64) -> Pushed {
        let e = opcode::Read::new(types::Fd(fd), (&mut *self.wake_buf as *mut u64).cast(), 8)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Number of send slots.
    pub fn send_slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Copies `bytes` and the raw source address `to` (as a receive gave it) into send
    /// slot `slot` and queues a send of it on socket `fd`. The slot must not be in
    /// flight (the caller tracks free slots). Panics when `bytes` is longer than a
    /// slot or `to` longer than a socket address (caller bugs).
    pub fn push_send(
        &mut self,
        fd: RawFd,
        slot: u32,
        bytes: &[u8],
        to: &[u8],
        user_data: u64,
    ) -> Pushed {
        let per_slot = self.send_bytes_per_slot;
        assert!(bytes.len() <= per_slot, "ack longer than a send slot");
        let buf = &mut self.send_bytes[slot as usize * per_slot..][..per_slot];
        buf[..bytes.len()].copy_from_slice(bytes);
        let s = &mut self.slots[slot as usize];
        let addr = sockaddr_bytes(&mut s.addr);
        assert!(
            to.len() <= addr.len(),
            "address longer than sockaddr_storage"
        );
        addr[..to.len()].copy_from_slice(to);
        s.len = bytes.len();
        // A plain send with a destination (sendto, Linux 6.0+) rather than a SendMsg:
        // the kernel then copies no msghdr in per ack.
        let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), bytes.len() as u32)
            .dest_addr((&s.addr as *const libc::sockaddr_storage).cast())
            .dest_addr_len(to.len() as libc::socklen_t)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Bytes of the datagram last queued from send slot `slot`.
    pub fn send_len(&self, slot: u32) -> usize {
        self.slots[slot as usize].len
    }

    /// Moves up to `max` completions into `out` as (user_data, result, flags); returns
    /// how many. Descriptors the multishot accept completed with are kept for
    /// [`ShardRing::take_accepted`].
    pub fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>, max: usize) -> usize {
        let before = out.len();
        for c in self.ring.completion().take(max) {
            if let Some(id) = stream_send_id(c.user_data()) {
                if let Some(s) = self.stream_sends.get_mut(id as usize) {
                    s.completed = Some(c.result());
                }
            } else if Some(c.user_data()) == self.accept_user_data && c.result() >= 0 {
                // SAFETY: a successful accept completion's result is a new descriptor
                // the kernel opened for this process, owned by nothing else yet.
                self.accepted
                    .push(unsafe { std::os::fd::FromRawFd::from_raw_fd(c.result()) });
            }
            out.push((c.user_data(), c.result(), c.flags()));
        }
        out.len() - before
    }

    /// Connections accepted since the last call, in order.
    pub fn take_accepted(&mut self) -> std::vec::Drain<'_, std::os::fd::OwnedFd> {
        self.accepted.drain(..)
    }

    /// Queues a multishot accept on listener `fd` (new descriptors non-blocking and
    /// close-on-exec). Its completions' descriptors are owned by the ring until taken.
    pub fn push_accept(&mut self, fd: RawFd, user_data: u64) -> Pushed {
        self.accept_user_data = Some(user_data);
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Queues a multishot receive on connection `fd` over the TCP buffer group. Panics
    /// when the ring was made without TCP buffers (a caller bug).
    pub fn push_stream_recv(&mut self, fd: RawFd, user_data: u64) -> Pushed {
        assert!(
            self.stream_bufring.is_some(),
            "ring made without TCP buffers"
        );
        let e = opcode::RecvMulti::new(types::Fd(fd), STREAM_BGID)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Asks the kernel to cancel the operation queued under `target` (a connection's
    /// receive when its acks back up); the cancel's own completion comes under
    /// `user_data`.
    pub fn push_cancel(&mut self, target: u64, user_data: u64) -> Pushed {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Queues a write of `buf` on connection `fd`. The ring keeps `buf` until the
    /// write ends: its completions carry user_data `STREAM_SEND_MARK << 56 | id` (see
    /// [`stream_send_id`]) and go to `stream_send_completed`. Not pushed (a full
    /// queue that would not drain): the bytes are dropped.
    pub fn push_stream_send(&mut self, fd: RawFd, buf: Vec<u8>, tag: u64) -> Pushed {
        let key = self.stream_sends.insert(StreamSend {
            buf,
            done: 0,
            fd,
            completed: None,
            tag,
        });
        let p = self.push_stream_rest(key);
        if !p.pushed {
            self.stream_sends.remove(key);
        }
        p
    }

    fn push_stream_rest(&mut self, key: usize) -> Pushed {
        let s = &self.stream_sends[key];
        let rest = &s.buf[s.done..];
        let e = opcode::Send::new(types::Fd(s.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data((STREAM_SEND_MARK << MARK_SHIFT) | key as u64);
        self.push(&e)
    }

    /// The caller's tag of write `id`.
    pub fn stream_send_tag(&self, id: u32) -> Option<u64> {
        self.stream_sends.get(id as usize).map(|s| s.tag)
    }

    /// Takes the reaped completion of write `id`: continues a short write (only when
    /// `may_continue`: the descriptor is still the connection's, not closed and
    /// reused), or ends the write and hands its buffer back. None when no completion
    /// of that write was reaped (a caller bug): the bytes stay with the ring, which
    /// the kernel may still be reading.
    pub fn stream_send_completed(&mut self, id: u32, may_continue: bool) -> Option<StreamSendEnd> {
        let key = id as usize;
        let s = self.stream_sends.get_mut(key)?;
        let result = s.completed.take()?;
        if result > 0 {
            s.done += result as usize;
            if s.done < s.buf.len() && may_continue && self.push_stream_rest(key).pushed {
                return Some(StreamSendEnd::Continuing);
            }
        }
        let s = self.stream_sends.remove(key);
        let error = if result < 0 {
            Some(-result)
        } else if s.done < s.buf.len() {
            Some(if result == 0 {
                libc::EPIPE
            } else {
                libc::EBUSY
            })
        } else {
            None
        };
        Some(StreamSendEnd::Done {
            written: s.done,
            buf: s.buf,
            tag: s.tag,
            error,
        })
    }

    /// The TCP buffer group consumes buffers incrementally (Linux 6.12+ and asked for).
    pub fn stream_incremental(&self) -> bool {
        self.stream_bufring
            .as_ref()
            .is_some_and(|b| b.incremental())
    }

    /// TCP receives take bundles of buffers (plain buffers, Linux 6.10+, asked for).
    pub fn stream_bundles(&self) -> bool {
        self.stream_bundles
    }

    /// Plain TCP buffers: the buffers a receive of `len` bytes starting in buffer `bid`
    /// filled (one, or several for a bundle), as (buffer, bytes), into `out`; read each
    /// with `stream_part` and recycle each. False when the kernel did not use the
    /// buffer expected next (a lost order: counted by the caller, `out` empty).
    pub fn stream_parts(&mut self, bid: u16, len: usize, out: &mut Vec<(u16, u32)>) -> bool {
        self.stream_bufring
            .as_mut()
            .expect("ring made without TCP buffers")
            .take_ordered(bid, len, out)
    }

    /// The `len` bytes a receive put in plain TCP buffer `bid`.
    pub fn stream_part(&self, bid: u16, len: usize) -> &[u8] {
        self.stream_bufring
            .as_ref()
            .expect("ring made without TCP buffers")
            .buffer(bid, len)
    }

    /// The bytes a TCP receive completion (`len`, `flags`) put in buffer `bid`, and
    /// whether the buffer is done with (to be recycled once the bytes are used): with
    /// incremental consumption, not while the kernel still fills it
    /// (`IORING_CQE_F_BUF_MORE`).
    pub fn stream_data(&mut self, bid: u16, len: usize, flags: u32) -> (&[u8], bool) {
        let b = self
            .stream_bufring
            .as_mut()
            .expect("ring made without TCP buffers");
        if b.incremental() {
            let more = io_uring::cqueue::buffer_more(flags);
            (b.take_incremental(bid, len), !more)
        } else {
            (b.buffer(bid, len), true)
        }
    }

    /// Hands TCP buffer `bid` back; visible to the kernel at `commit`.
    pub fn recycle_stream(&mut self, bid: u16) {
        if let Some(b) = self.stream_bufring.as_mut() {
            b.recycle(bid);
        }
    }

    /// Completions are waiting in the CQ.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Starts loading the first `len` bytes (at most `PREFETCH_BYTES`) of buffer `bid`,
    /// which a receive completion still to be handled filled: the kernel wrote them
    /// when it took the datagram, often many datagrams before, so by now they are
    /// usually out of the nearest caches. Reading nothing, it cannot stall.
    #[inline]
    pub fn prefetch_received(&self, bid: u16, len: usize) {
        let buf = self.bufring.buffer(bid, len.min(PREFETCH_BYTES));
        for line in buf.chunks(64) {
            crate::mem::prefetch(&line[0]);
        }
    }

    /// The datagram a receive completion put in buffer `bid` (`len` bytes in all).
    /// None when the buffer does not hold a well-formed `io_uring_recvmsg_out`.
    pub fn received(&self, bid: u16, len: usize) -> Option<Received<'_>> {
        let buf = self.bufring.buffer(bid, len);
        let out = types::RecvMsgOut::parse(buf, &self.recv_msg).ok()?;
        // `RecvMsgOut`'s accessors borrow the parser, not the buffer: locate the parts
        // in the buffer by their offsets to hand out slices of the buffer itself.
        let range_in_buf = |part: &[u8]| {
            let start = part.as_ptr() as usize - buf.as_ptr() as usize;
            start..start + part.len()
        };
        let name = out.name_data();
        let name_len = (out.incoming_name_len() as usize).min(name.len());
        let name = range_in_buf(&name[..name_len]);
        let payload = range_in_buf(out.payload_data());
        Some(Received {
            payload: &buf[payload],
            name: &buf[name],
            truncated: out.is_payload_truncated(),
        })
    }

    /// Hands buffer `bid` back after a receive of `len` bytes was read from it;
    /// visible to the kernel at `commit`.
    pub fn recycle(&mut self, bid: u16, len: usize) {
        self.bufring.recycle_datagram(bid, len);
    }
    /// Publishes every recycled buffer (one release store per buffer ring).
    pub fn commit(&mut self) {
        self.bufring.commit();
        if let Some(b) = self.stream_bufring.as_mut() {
            b.commit();
        }
    }

    /// Submits what is queued; never waits and runs no deferred completions.
    pub fn submit(&mut self) -> std::io::Result<usize> {
        self.ring.submit()
    }

    /// Submits, then runs deferred completions (GETEVENTS with a zero timeout) until
    /// `want` are ready or none is left to run; never sleeps.
    pub fn reap_without_sleeping(&mut self, want: usize) -> std::io::Result<usize> {
        let zero = types::Timespec::new();
        self.ring
            .submitter()
            .submit_with_args(want, &types::SubmitArgs::new().timespec(&zero))
    }

    /// Submits and sleeps until `want` completions or `timeout`; with `min_wait`
    /// (needs `min_wait_supported`), once one completion is in, the wait keeps
    /// gathering for up to `min_wait` before returning short of `want`.
    pub fn wait(
        &mut self,
        want: usize,
        timeout: Duration,
        min_wait: Option<Duration>,
    ) -> std::io::Result<usize> {
        let ts = types::Timespec::from(timeout);
        let mut args = types::SubmitArgs::new().timespec(&ts);
        if let Some(m) = min_wait {
            args = args.min_wait_usec(m.as_micros().min(u32::MAX as u128) as u32);
        }
        self.ring.submitter().submit_with_args(want, &args)
    }
}

/// The write id in a TCP write's user_data, None for any other operation's.
pub fn stream_send_id(user_data: u64) -> Option<u32> {
    (user_data >> MARK_SHIFT == STREAM_SEND_MARK).then_some(user_data as u32)
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain C data (pointers and integers); all-zero is a valid
    // empty header.
    unsafe { std::mem::zeroed() }
}

fn zeroed_sockaddr() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain C data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

/// The bytes of a `sockaddr_storage`, to copy a raw address into.
fn sockaddr_bytes(addr: &mut libc::sockaddr_storage) -> &mut [u8] {
    // SAFETY: sockaddr_storage is plain C data of `size_of` bytes with no padding
    // invariants (every byte pattern is a valid value), borrowed mutably for the
    // slice's lifetime.
    unsafe {
        std::slice::from_raw_parts_mut(
            (addr as *mut libc::sockaddr_storage).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_storage>(),
        )
    }
}
