//! One pinned sender thread: sends its schedule's datagrams at their intended times
//! (open loop), samples frames for acks, receives acks between sends, and reports an
//! interval histogram to the main thread every second.

use crate::latency::{self, Recorder};
use crate::net;
use crate::schedule::Schedule;
use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use ringbeat::core::codec::{
    self, decode_ack, FrameFields, Key, FLAG_ACK_REQUESTED, FRAME_BYTES, FRAME_V2_BYTES,
};
use ringbeat::core::registry::Registry;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub target: SocketAddr,
    pub cpu: Option<usize>,
    pub source_ports: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Ask for an ack on one frame in `ack_every` (0 = never).
    pub ack_every: u64,
    pub interval_ds: u16,
    pub gso: bool,
    /// How long to keep listening for acks after the last send.
    pub grace: Duration,
    /// Each heartbeat leaves up to ± this fraction of its interval from its phase.
    pub jitter: f64,
    /// `--auth-keys`: send authenticated version-2 frames with these keys.
    pub auth: Option<Auth>,
}

/// What version-2 sending needs: every device's key (from a devices file, the server's
/// format) and the boot counter this run sends with.
#[derive(Clone, Debug)]
pub struct Auth {
    pub keys: Arc<Registry>,
    /// The run's start in Unix seconds: a later run against the same server counts as a
    /// restart of every device, so its counters are ahead of the last run's.
    pub boot: u32,
}

impl Auth {
    /// Each schedule position's key, looked up once before the clock starts; an id the
    /// file lacks or gives no key is an error naming it.
    pub fn keys_for(&self, ids: &[u64]) -> Result<Vec<Key>, String> {
        ids.iter()
            .map(|&id| {
                self.keys
                    .get(id)
                    .and_then(|e| e.key().copied())
                    .ok_or_else(|| {
                        format!(
                            "--auth-keys has no key for device {id}: every device sent needs one"
                        )
                    })
            })
            .collect()
    }
}

/// Bytes one frame takes: 64 authenticated (version 2), else 32.
pub fn frame_bytes(auth: Option<&Auth>) -> usize {
    if auth.is_some() {
        FRAME_V2_BYTES
    } else {
        FRAME_BYTES
    }
}

/// Encodes `f` into the start of `out` in the version the run sends; returns its length.
#[inline]
pub fn encode_frame(f: &FrameFields, key: Option<(&Key, u32)>, out: &mut [u8]) -> usize {
    match key {
        None => {
            f.encode((&mut out[..FRAME_BYTES]).try_into().expect("32 bytes"));
            FRAME_BYTES
        }
        Some((key, boot)) => {
            let out: &mut [u8; FRAME_V2_BYTES] =
                (&mut out[..FRAME_V2_BYTES]).try_into().expect("64 bytes");
            codec::encode_v2(f, boot, key, out);
            FRAME_V2_BYTES
        }
    }
}

/// What a thread reports each second.
pub struct Interval {
    pub latency: Histogram<u64>,
    pub frames_sent: u64,
    pub acks_received: u64,
    /// How far behind schedule the thread is right now (ns).
    pub lag_ns: u64,
}

/// Every device's next sequence number, all zero and resident: touched now, before
/// the clock starts, because left to the first heartbeats a page fault per 1,024
/// devices would land in the measured sends (8 MiB at 2M devices).
pub fn sequence_numbers(devices: usize) -> Vec<u32> {
    let mut seq = vec![0u32; devices];
    for v in seq.iter_mut().step_by(1024) {
        *v = std::hint::black_box(0);
    }
    seq
}

#[derive(Default)]
pub struct Totals {
    pub frames_sent: u64,
    pub datagrams_sent: u64,
    pub send_errors: u64,
    /// Frames that could not be sent because the socket buffer was full (EAGAIN):
    /// the generator's own drops, reported so they are not mistaken for server loss.
    pub send_eagain_frames: u64,
    pub acks_expected: u64,
    pub acks_received: u64,
    /// The same, for frames intended after the warm-up: the window every other
    /// measured figure covers (the server's counters included).
    pub acks_expected_measured: u64,
    pub acks_received_measured: u64,
    pub acks_unmatched: u64,
    /// Acks with a non-zero status: the server refused the heartbeat (PROTOCOL.md).
    pub acks_refused: u64,
    /// Version-2 acks whose tag was not the device key's.
    pub acks_bad_tag: u64,
    pub late_datagrams_1ms: u64,
}

impl Totals {
    /// One ack frame read back at `now_ns`: matched to its heartbeat in `rec` and
    /// counted (in the measured window too when it falls there), or counted unmatched.
    /// True when it matched.
    pub fn ack_frame(
        &mut self,
        rec: &mut Recorder,
        frame: &[u8],
        now_ns: u64,
        auth: Option<&Auth>,
    ) -> bool {
        let ack = match (frame.len(), auth) {
            (FRAME_BYTES, _) => decode_ack(frame.try_into().expect("32 bytes")).ok(),
            (FRAME_V2_BYTES, Some(auth)) => {
                let id = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
                let key = auth
                    .keys
                    .get(id)
                    .and_then(|e| e.key().copied())
                    .unwrap_or([0; 16]);
                match codec::decode_ack_v2(frame.try_into().expect("64 bytes"), &key) {
                    Ok((a, _)) => Some(a),
                    // An all-zero tag: a refusal from a server without the
                    // device's key (unknown device). Counted as a refusal, not a
                    // forgery, as long as it does not claim acceptance.
                    Err(codec::AckV2Error::BadTag)
                        if frame[codec::TAGGED_BYTES..].iter().all(|&b| b == 0)
                            && frame[20..22] != [0, 0] =>
                    {
                        // Its header read with the version-1 decoder.
                        let mut head: [u8; FRAME_BYTES] =
                            frame[..FRAME_BYTES].try_into().expect("32 bytes");
                        head[4..6].copy_from_slice(&codec::VERSION.to_le_bytes());
                        decode_ack(&head).ok()
                    }
                    Err(codec::AckV2Error::BadTag) => {
                        self.acks_bad_tag += 1;
                        None
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        if ack.is_some_and(|a| a.status != codec::ACK_ACCEPTED) {
            self.acks_refused += 1;
        }
        match ack.and_then(|a| rec.on_ack(a.sent_ns, now_ns)) {
            Some(measured) => {
                self.acks_received += 1;
                self.acks_received_measured += measured as u64;
                true
            }
            None => {
                self.acks_unmatched += 1;
                false
            }
        }
    }
}

pub struct SenderResult {
    pub totals: Totals,
    pub intended: Histogram<u64>,
    pub service: Histogram<u64>,
    /// Send lag (actual − intended) of every datagram, ns.
    pub lag: Histogram<u64>,
}

/// Writes the tags of the version-2 frames at `frames` (offset in `buf`, key): four at
/// once with the core's lane-parallel SipHash (the generator tags every frame it sends,
/// so one at a time it could not offer version 2 at the rates version 1 reaches), else
/// one by one.
fn tag_frames(buf: &mut [u8], frames: &[(usize, &Key)]) {
    let tagged = |at: usize| -> [u8; codec::TAGGED_BYTES] {
        buf[at..at + codec::TAGGED_BYTES]
            .try_into()
            .expect("48 bytes")
    };
    let tags: Vec<[u8; 16]> = if let [a, b, c, d] = frames {
        let m = [tagged(a.0), tagged(b.0), tagged(c.0), tagged(d.0)];
        ringbeat::core::siphash::tags48::<4>([a.1, b.1, c.1, d.1], [&m[0], &m[1], &m[2], &m[3]])
            .to_vec()
    } else {
        frames
            .iter()
            .map(|(at, key)| codec::tag(key, &tagged(*at)))
            .collect()
    };
    for ((at, _), t) in frames.iter().zip(tags) {
        buf[at + codec::TAGGED_BYTES..at + FRAME_V2_BYTES].copy_from_slice(&t);
    }
}

/// Splits an ack datagram into ack frames by their version (`codec::frames`): a
/// version-2 header makes the frame 64 bytes. A trailing half is dropped.
pub fn ack_frames(bytes: &[u8], mut each: impl FnMut(&[u8])) {
    for (_, frame) in codec::frames(bytes.as_chunks::<FRAME_BYTES>().0) {
        if let Ok(f) = frame {
            each(f.bytes());
        }
    }
}

/// The datagrams of a schedule in intended-time order. Without jitter that is index
/// order; with jitter each datagram moves by a fixed pseudo-random offset within ±J, so
/// datagrams enter a min-heap once their earliest possible time (nominal − J) has come
/// and leave it at their jittered time. The heap holds at most the datagrams of a 2J
/// window.
pub(crate) struct DueQueue {
    next_g: u64,
    /// Datagrams in the schedule (those intended before the end).
    scheduled: u64,
    jitter_ns: u64,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
}

impl DueQueue {
    pub(crate) fn new(sched: &Schedule, end_ns: u64, jitter: f64) -> DueQueue {
        DueQueue {
            next_g: 0,
            scheduled: sched.due(end_ns.saturating_sub(1)),
            jitter_ns: (jitter * sched.device_interval_ns()) as u64,
            heap: std::collections::BinaryHeap::new(),
        }
    }

    /// The next datagram due by `now`, as (index, intended ns), without taking it.
    pub(crate) fn peek_due(&mut self, sched: &Schedule, now: u64) -> Option<(u64, u64)> {
        if self.jitter_ns == 0 {
            let t = sched.intended_ns(self.next_g);
            return (self.next_g < self.scheduled && t <= now).then_some((self.next_g, t));
        }
        while self.next_g < self.scheduled
            && sched
                .intended_ns(self.next_g)
                .saturating_sub(self.jitter_ns)
                <= now
        {
            let t = sched.jittered_ns(self.next_g, self.jitter_ns);
            self.heap.push(std::cmp::Reverse((t, self.next_g)));
            self.next_g += 1;
        }
        match self.heap.peek() {
            Some(&std::cmp::Reverse((t, g))) if t <= now => Some((g, t)),
            _ => None,
        }
    }

    /// Takes the next datagram due by `now`.
    pub(crate) fn pop_due(&mut self, sched: &Schedule, now: u64) -> Option<(u64, u64)> {
        let due = self.peek_due(sched, now)?;
        if self.jitter_ns == 0 {
            self.next_g += 1;
        } else {
            self.heap.pop();
        }
        Some(due)
    }

    /// Intended time of the next datagram (the earliest one not sent yet).
    pub(crate) fn next_intended_ns(&self, sched: &Schedule) -> u64 {
        let queued = self.heap.peek().map(|r| r.0 .0);
        let next = (self.next_g < self.scheduled).then(|| {
            sched
                .intended_ns(self.next_g)
                .saturating_sub(self.jitter_ns)
        });
        match (queued, next) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => u64::MAX,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.next_g >= self.scheduled && self.heap.is_empty()
    }
}

/// Datagrams prepared per `sendmmsg` at most.
/// A sender thread's reports: one `Interval` a second to the main thread, and at the
/// end the grace period for outstanding acks, the last interval and the result (the
/// same for the UDP and the TCP sender).
pub(crate) struct Progress {
    tx: Sender<Interval>,
    last: Instant,
    /// Frames sent and acks matched since the last report.
    pub frames: u64,
    pub acks: u64,
}

impl Progress {
    pub(crate) fn new(tx: Sender<Interval>) -> Progress {
        Progress {
            tx,
            last: Instant::now(),
            frames: 0,
            acks: 0,
        }
    }

    /// Reports the last second when one has passed; `lag_ns` says how far behind
    /// schedule the sender is.
    pub(crate) fn tick(&mut self, rec: &mut Recorder, lag_ns: impl FnOnce() -> u64) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let lag_ns = lag_ns();
        self.send(rec, lag_ns);
    }

    fn send(&mut self, rec: &mut Recorder, lag_ns: u64) {
        let _ = self.tx.send(Interval {
            latency: std::mem::replace(&mut rec.interval, latency::histogram()),
            frames_sent: std::mem::take(&mut self.frames),
            acks_received: std::mem::take(&mut self.acks),
            lag_ns,
        });
    }

    /// The grace period (acks still expected are read with `receive` until they are
    /// in or `cfg.grace` has passed), the last interval, and the thread's result.
    pub(crate) fn finish(
        mut self,
        cfg: &SenderConfig,
        mut rec: Recorder,
        mut t: Totals,
        lag: Histogram<u64>,
        mut receive: impl FnMut(&mut Recorder, &mut Totals) -> u64,
    ) -> SenderResult {
        let grace_end = Instant::now() + cfg.grace;
        while cfg.ack_every > 0
            && t.acks_received + t.acks_unmatched < t.acks_expected
            && Instant::now() < grace_end
        {
            if receive(&mut rec, &mut t) == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.send(&mut rec, 0);
        SenderResult {
            totals: t,
            intended: rec.intended,
            service: rec.service,
            lag,
        }
    }
}

const MAX_BUFFERS: usize = 16;

pub fn run(
    thread: usize,
    cfg: SenderConfig,
    sched: Schedule,
    start: Instant,
    progress: Sender<Interval>,
) -> std::io::Result<SenderResult> {
    if let Some(cpu) = cfg.cpu {
        net::pin_to_cpu(cpu)?;
    }
    let sockets: Vec<OwnedFd> = (0..cfg.source_ports.max(1))
        .map(|_| net::connected_udp(cfg.target, 4 << 20))
        .collect::<std::io::Result<_>>()?;
    let mut acks = AckReceiver::new(&sockets)?;
    let frame_len = frame_bytes(cfg.auth.as_ref());
    let keys = match &cfg.auth {
        Some(auth) => auth.keys_for(&sched.order).map_err(std::io::Error::other)?,
        None => Vec::new(),
    };
    let boot = cfg.auth.as_ref().map_or(0, |a| a.boot);
    // Version-2 frames of the buffer being filled whose tags are not computed yet.
    let mut untagged: Vec<(usize, &Key)> = Vec::with_capacity(4);
    let segment = sched.batch * frame_len;
    let per_buffer = if cfg.gso {
        (net::GSO_MAX_BYTES / segment).clamp(1, net::GSO_MAX_SEGMENTS)
    } else {
        1
    };
    let mut buffers: Vec<Vec<u8>> = (0..MAX_BUFFERS)
        .map(|_| vec![0u8; per_buffer * segment])
        .collect();
    let mut seq = sequence_numbers(sched.order.len());
    let mut rec = Recorder::new(cfg.warmup.as_nanos() as u64);
    let mut lag_hist = latency::histogram();
    let mut t = Totals::default();
    let end_ns = cfg.duration.as_nanos() as u64;
    let mut queue = DueQueue::new(&sched, end_ns, cfg.jitter);
    let mut frame_counter = thread as u64;
    let mut socket_turn = 0usize;
    let mut progress = Progress::new(progress);
    let now_ns = |start: Instant| start.elapsed().as_nanos() as u64;
    // The whole schedule goes out: frames still due at the end are sent late (their
    // lag is recorded) rather than dropped unseen.
    loop {
        let now = now_ns(start);
        if now >= end_ns && queue.done() {
            break;
        }
        // Send everything due, up to MAX_BUFFERS × per_buffer datagrams per call.
        while queue.peek_due(&sched, now).is_some() {
            let mut used = 0;
            let mut lens = [0usize; MAX_BUFFERS];
            let send_now = now_ns(start);
            while used < MAX_BUFFERS && queue.peek_due(&sched, now).is_some() {
                let buf = &mut buffers[used];
                let mut len = 0;
                // Whole datagrams of `segment` bytes; a shorter one (the last gateway
                // when devices % batch != 0) may only end a GSO buffer.
                while len + segment <= buf.len() {
                    let Some((g, intended)) = queue.pop_due(&sched, now) else {
                        break;
                    };
                    let lag = send_now.saturating_sub(intended);
                    let _ = lag_hist.record(lag.max(1));
                    if lag > 1_000_000 {
                        t.late_datagrams_1ms += 1;
                    }
                    let first = len;
                    for pos in sched.devices_of(g) {
                        seq[pos] = seq[pos].wrapping_add(1);
                        let mut f = FrameFields::heartbeat(
                            sched.order[pos],
                            seq[pos],
                            cfg.interval_ds,
                            intended,
                        );
                        frame_counter += 1;
                        if cfg.ack_every > 0 && frame_counter.is_multiple_of(cfg.ack_every) {
                            f.flags = FLAG_ACK_REQUESTED;
                            f.sent_ns = rec.take_slot(intended, lag);
                            t.acks_expected += 1;
                            t.acks_expected_measured += rec.measured(intended) as u64;
                        }
                        match keys.get(pos) {
                            None => len += encode_frame(&f, None, &mut buf[len..]),
                            // Version 2: the tag is filled in below, four frames at once.
                            Some(key) => {
                                let out: &mut [u8; FRAME_V2_BYTES] = (&mut buf
                                    [len..len + FRAME_V2_BYTES])
                                    .try_into()
                                    .expect("64 bytes");
                                codec::encode_v2_untagged(&f, boot, out);
                                untagged.push((len, key));
                                if untagged.len() == 4 {
                                    tag_frames(buf, &untagged);
                                    untagged.clear();
                                }
                                len += FRAME_V2_BYTES;
                            }
                        }
                    }
                    if len - first < segment {
                        break;
                    }
                }
                for one in untagged.chunks(1) {
                    tag_frames(buf, one);
                }
                untagged.clear();
                lens[used] = len;
                used += 1;
            }
            let views: Vec<&[u8]> = buffers[..used]
                .iter()
                .zip(&lens)
                .map(|(b, &l)| &b[..l])
                .collect();
            let fd = sockets[socket_turn % sockets.len()].as_raw_fd();
            socket_turn += 1;
            match net::send_buffers(fd, &views, segment as u16, cfg.gso) {
                Ok(n) => {
                    for (i, l) in lens[..used].iter().enumerate() {
                        let frames = (*l / frame_len) as u64;
                        if i < n {
                            t.frames_sent += frames;
                            t.datagrams_sent += l.div_ceil(segment) as u64;
                            progress.frames += frames;
                        } else {
                            t.send_eagain_frames += frames;
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    t.send_eagain_frames += lens[..used]
                        .iter()
                        .map(|l| (*l / frame_len) as u64)
                        .sum::<u64>();
                }
                Err(_) => t.send_errors += 1,
            }
        }
        if cfg.ack_every > 0 {
            progress.acks += acks.receive(&sockets, &mut rec, start, &mut t, cfg.auth.as_ref());
        }
        // How far behind: the oldest datagram still waiting that was due already.
        progress.tick(&mut rec, || {
            now_ns(start).saturating_sub(queue.next_intended_ns(&sched))
        });
        // Idle until the next intended time. With ack sampling on, keep polling for
        // acks (busy-poll, the sender's core is its own): sleeping here would delay
        // reading an ack and inflate measured latency at light load. Without acks,
        // sleep when the next send is far and spin when it is near.
        let next_ns = queue.next_intended_ns(&sched);
        let now = now_ns(start);
        if cfg.ack_every > 0 {
            continue;
        }
        if next_ns > now + 200_000 {
            std::thread::sleep(Duration::from_nanos(
                (next_ns - now - 100_000).min(1_000_000),
            ));
        } else if next_ns > now {
            std::hint::spin_loop();
        }
    }
    let auth = cfg.auth.clone();
    Ok(progress.finish(&cfg, rec, t, lag_hist, |rec, t| {
        acks.receive(&sockets, rec, start, t, auth.as_ref())
    }))
}

/// Receives acks on every source socket: one epoll set over all of them, so a single
/// syscall tells which have something to read.
struct AckReceiver {
    poller: Epoll,
    rx: Vec<[u8; 2048]>,
    rx_len: Vec<usize>,
}

impl AckReceiver {
    fn new(sockets: &[OwnedFd]) -> std::io::Result<AckReceiver> {
        let poller = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        for (i, s) in sockets.iter().enumerate() {
            poller
                .add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                .map_err(std::io::Error::from)?;
        }
        Ok(AckReceiver {
            poller,
            rx: vec![[0u8; 2048]; 64],
            rx_len: vec![0usize; 64],
        })
    }

    /// Reads every ack waiting now (never blocks); returns how many matched a sample.
    fn receive(
        &mut self,
        sockets: &[OwnedFd],
        rec: &mut Recorder,
        start: Instant,
        t: &mut Totals,
        auth: Option<&Auth>,
    ) -> u64 {
        let mut got = 0;
        let mut ready = [EpollEvent::empty(); 64];
        let n_ready = self
            .poller
            .wait(&mut ready, EpollTimeout::ZERO)
            .unwrap_or(0);
        for ev in &ready[..n_ready] {
            let s = &sockets[ev.data() as usize];
            loop {
                let n = net::recv_many(s.as_raw_fd(), &mut self.rx, &mut self.rx_len, None);
                if n == 0 {
                    break;
                }
                let now = start.elapsed().as_nanos() as u64;
                for i in 0..n {
                    ack_frames(&self.rx[i][..self.rx_len[i]], |frame| {
                        got += t.ack_frame(rec, frame, now, auth) as u64;
                    });
                }
            }
        }
        got
    }
}
