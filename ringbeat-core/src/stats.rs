//! Per-shard counters, declared once. Each shard owns its `ShardStats` outright (plain
//! `u64`s, no atomics); a copy is published off the hot path once per publish period
//! and combined by the reporter. Every drop in the server has a counter here.
//!
//! The one declaration below (`stats!`) gives each value its name, kind (a counter only
//! grows; a gauge is a current level), unit and help text; the stats JSON, the summary
//! line and any exporter read them through [`ShardStats::FIELDS`] and
//! [`ShardStats::values`], so a new counter is one line here and appears everywhere.

use super::codec::{DatagramError, FrameError};

/// Buckets of a [`Histogram`]: 11 upper bounds and +Inf.
pub const HISTOGRAM_BUCKETS: usize = 12;
/// Upper bounds (µs) of `ShardStats::loop_busy_us`.
pub const LOOP_BUSY_BOUNDS_US: [u64; HISTOGRAM_BUCKETS - 1] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000,
];
/// Upper bounds of `ShardStats::receive_batch`.
pub const BATCH_BOUNDS: [u64; HISTOGRAM_BUCKETS - 1] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024];

/// A fixed-bucket histogram: observations per bucket (not cumulative; the last is
/// +Inf) and their sum. Plain data, so it is published with the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; HISTOGRAM_BUCKETS],
    pub sum: u64,
}

impl Histogram {
    #[inline]
    pub fn record(&mut self, bounds: &[u64; HISTOGRAM_BUCKETS - 1], v: u64) {
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let mut d = *self;
        for (a, b) in d.counts.iter_mut().zip(earlier.counts) {
            *a = a.saturating_sub(b);
        }
        d.sum = d.sum.saturating_sub(earlier.sum);
        d
    }
}

/// What a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows; per-interval deltas and rates make sense.
    Counter,
    /// A current level. Per-shard gauges here count disjoint sets (each device has one
    /// owner), so the server's total is their sum; a delta of a gauge means nothing.
    Gauge,
}

/// One declared value.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// What is counted, plural (`heartbeats`, `datagrams`, ...).
    pub unit: &'static str,
    pub help: &'static str,
}

macro_rules! stats {
    ($($(#[doc = $doc:literal])+ $kind:ident $name:ident ($unit:literal),)+) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct ShardStats {
            $($(#[doc = $doc])+ pub $name: u64,)+
            /// Rejected frames by reason (`FrameError` order).
            pub malformed_frames: [u64; FrameError::ALL.len()],
            /// Rejected whole datagrams by reason (`DatagramError` order).
            pub rejected_datagrams: [u64; DatagramError::ALL.len()],
            /// Time a loop iteration spends working (receive to the next wait), µs
            /// (`LOOP_BUSY_BOUNDS_US`): how long something arriving meanwhile waits.
            pub loop_busy_us: Histogram,
            /// Completions (io_uring) or datagrams (epoll) taken per receive round
            /// (`BATCH_BOUNDS`).
            pub receive_batch: Histogram,
        }

        impl ShardStats {
            /// Every declared value, in declaration order.
            pub const FIELDS: &'static [Field] = &[$(Field {
                name: stringify!($name),
                kind: Kind::$kind,
                unit: $unit,
                help: concat!($($doc),+),
            },)+];

            /// The values of `FIELDS`, in the same order.
            pub fn values(&self) -> [u64; Self::FIELDS.len()] {
                [$(self.$name,)+]
            }

            fn values_mut(&mut self) -> [&mut u64; Self::FIELDS.len()] {
                [$(&mut self.$name,)+]
            }
        }
    };
}

stats! {
    /// Valid heartbeats applied to the device table (by the owning shard).
    Counter heartbeats ("heartbeats"),
    /// Datagrams received (valid or not).
    Counter datagrams ("datagrams"),
    /// Valid heartbeat frames received from the network by this shard (owned or not).
    Counter frames_valid ("frames"),
    /// Ack frames sent (UDP and TCP), in 32-byte units: a version-2 ack (64 bytes)
    /// counts as two.
    Counter acks_sent ("frames"),
    /// Ack datagrams sent.
    Counter ack_datagrams ("datagrams"),
    /// Ack datagrams that could not be queued or failed to send.
    Counter ack_datagrams_dropped ("datagrams"),
    /// Ack frames dropped: in dropped ack datagrams (UDP), or tcp_ack_queue_drops; in
    /// 32-byte units like acks_sent.
    Counter acks_dropped ("frames"),
    /// Heartbeats missing from forward seq gaps.
    Counter lost_heartbeats ("heartbeats"),
    /// Heartbeats whose seq was equal to or behind the last one.
    Counter duplicates ("heartbeats"),
    /// Devices known to this shard.
    Gauge devices ("devices"),
    /// Memory the device state holds: records, hashed index (both while it grows) and
    /// liveness wheel entries, counted by what has been written (about the resident
    /// size; divide by `devices` for bytes per device).
    Gauge device_memory_bytes ("bytes"),
    /// Datagrams from sources outside `--allow`: dropped unanswered.
    Counter disallowed ("datagrams"),
    /// Heartbeats of new devices rejected because the table was full (acked with
    /// status 1 when asked).
    Counter table_full ("heartbeats"),
    /// Heartbeats refused because their device is not in --devices-file (status 2):
    /// they take no table slot.
    Counter unknown_device ("heartbeats"),
    /// Version-1 heartbeats refused because their device must authenticate: it has a
    /// key, or --require-auth is set (status 3).
    Counter auth_required ("heartbeats"),
    /// Version-2 heartbeats refused because their tag was wrong or their device has no
    /// key (status 4).
    Counter auth_failed ("heartbeats"),
    /// Version-2 heartbeats refused because their (boot, seq) was taken before or is
    /// older than the replay window (status 5).
    Counter replayed ("heartbeats"),
    /// Version-2 (authenticated) heartbeats whose tag was right.
    Counter authenticated ("heartbeats"),
    /// Devices forgotten because a reload of --devices-file no longer lists them.
    Counter forgotten ("devices"),
    /// Datagrams the kernel dropped on this shard's socket (its receive queue was full,
    /// or the prefilter refused them): SK_MEMINFO_DROPS.
    Counter kernel_drops ("datagrams"),
    /// Times the provided buffer ring ran dry (-ENOBUFS).
    Counter ring_dry ("times"),
    /// Frames handed to their owner shard.
    Counter forwarded ("frames"),
    /// Frames dropped because the hand-off ring to their owner was full.
    Counter forward_drops ("frames"),
    /// Frames received from other shards.
    Counter forwarded_in ("frames"),
    /// Acks that waited for the verdict of the shard their frame was handed to (UDP
    /// and TCP); each left with that owner's status.
    Counter held_acks ("acks"),
    /// Liveness transitions detected.
    Counter events ("events"),
    /// Liveness transitions not delivered to the event sink (its queue was full).
    Counter events_dropped ("events"),
    /// With MQTT presence: device states sent again, as they are now, because their
    /// transition was among `events_dropped` (presence is state: it must not keep a
    /// state that changed).
    Counter presence_refreshes ("states"),
    /// Devices currently online.
    Gauge online ("devices"),
    /// Devices currently late.
    Gauge late ("devices"),
    /// Devices currently offline.
    Gauge offline ("devices"),
    /// Liveness wheel rechecks (the cost of liveness detection).
    Counter rechecks ("rechecks"),
    /// Liveness re-schedules refused because the wheel's entry pool was full.
    Counter wheel_overflow ("rechecks"),
    /// Time the shard knew it may have missed heartbeats (kernel drops, or frames a
    /// peer could not hand over), by which late and offline deadlines were deferred.
    Counter blind_ms ("milliseconds"),
    /// Late or offline transitions that were due but deferred by that blindness.
    Counter deferred ("transitions"),
    /// Times the shard fell behind its socket (its loop stalled, or its receive ring
    /// ran dry while datagrams waited) and held liveness still until it caught up.
    Counter holds ("times"),
    /// Time liveness held still while the shard caught up with its socket.
    Counter behind_ms ("milliseconds"),
    /// Event density: completions (io_uring) or datagrams (epoll) handled.
    Counter cqes ("completions"),
    /// Event density: io_uring_enter calls (io_uring) or loop syscalls (epoll).
    Counter enters ("calls"),
    /// Event density: waits that may sleep.
    Counter wakeups ("waits"),
    /// Batching waits not taken because the socket already held a backlog: the shard
    /// drained it instead of sleeping for more (io_uring engine).
    Counter backlog_polls ("waits"),
    /// Receive re-arms (the multishot receive ended without F_MORE).
    Counter rearms ("receives"),
    /// Receive completions with an error other than -ENOBUFS, and malformed receive
    /// buffers (counted, logged at a limited rate).
    Counter recv_errors ("errors"),
    /// Datagrams still queued on the socket when the stop's drain budget ran out:
    /// read and counted, not applied.
    Counter unread_at_stop ("datagrams"),
    /// TCP connections open on this shard.
    Gauge tcp_open ("connections"),
    /// TCP connections accepted (and kept).
    Counter tcp_accepted ("connections"),
    /// TCP connections closed at accept because the peer is outside `--allow`.
    Counter tcp_disallowed ("connections"),
    /// TCP connections closed at accept because the shard held its share of
    /// --max-connections.
    Counter tcp_refused ("connections"),
    /// TCP connections the peer closed (end of stream).
    Counter tcp_closed_peer ("connections"),
    /// TCP connections closed because a frame had a bad magic (the stream was out of
    /// step; the frames before it were applied and acked).
    Counter tcp_closed_out_of_step ("connections"),
    /// TCP connections closed because they completed no frame for --tcp-idle-timeout.
    Counter tcp_closed_idle ("connections"),
    /// TCP connections closed because their peer did not read its acks: the
    /// connection's ack queue reached its bound.
    Counter tcp_closed_ack_backlog ("connections"),
    /// TCP connections closed on a receive or send error (reset by the peer, ...).
    Counter tcp_closed_error ("connections"),
    /// TCP connections closed by the server's stop.
    Counter tcp_closed_at_stop ("connections"),
    /// TCP connections whose peer closed in the middle of a frame (the partial frame is
    /// discarded).
    Counter tcp_partial_at_close ("connections"),
    /// Bytes received over TCP.
    Counter tcp_bytes ("bytes"),
    /// Frames received over TCP (valid or not).
    Counter tcp_frames ("frames"),
    /// Of these, frames split across two reads (assembled from the connection's carry).
    Counter tcp_split_frames ("frames"),
    /// Ack writes on TCP connections (each carries the acks queued until then).
    Counter tcp_ack_writes ("writes"),
    /// TCP acks dropped: queued for a connection closed before they could be written
    /// (its ack queue over its bound, an error, or the stop's flush budget). Also
    /// counted in acks_dropped.
    Counter tcp_ack_queue_drops ("frames"),
}

impl ShardStats {
    /// The counter of one refusal reason (the one place that maps reasons to fields).
    fn refusal_counter(&mut self, r: crate::codec::Refusal) -> &mut u64 {
        use crate::codec::Refusal;
        match r {
            Refusal::TableFull => &mut self.table_full,
            Refusal::UnknownDevice => &mut self.unknown_device,
            Refusal::AuthRequired => &mut self.auth_required,
            Refusal::AuthFailed => &mut self.auth_failed,
            Refusal::Replayed => &mut self.replayed,
            Refusal::Busy => &mut self.forward_drops,
        }
    }

    /// Counts a refused heartbeat under its reason.
    pub fn count_refusal(&mut self, r: crate::codec::Refusal) {
        *self.refusal_counter(r) += 1;
    }

    /// Refused heartbeats by reason, in `Refusal::ALL` order.
    pub fn refusals(&self) -> [(crate::codec::Refusal, u64); crate::codec::Refusal::ALL.len()] {
        let mut copy = *self;
        crate::codec::Refusal::ALL.map(|r| (r, *copy.refusal_counter(r)))
    }

    /// TCP connections closed for any reason.
    pub fn tcp_closed(&self) -> u64 {
        self.tcp_closed_peer
            + self.tcp_closed_out_of_step
            + self.tcp_closed_idle
            + self.tcp_closed_ack_backlog
            + self.tcp_closed_error
            + self.tcp_closed_at_stop
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed_frames.iter().sum::<u64>() + self.rejected_datagrams.iter().sum::<u64>()
    }

    pub fn count_frame_error(&mut self, e: FrameError) {
        self.malformed_frames[e as usize] += 1;
    }

    pub fn count_datagram_error(&mut self, e: DatagramError) {
        self.rejected_datagrams[e as usize] += 1;
    }

    /// `malformed` as reason → count (every reason present, zeros included).
    pub fn malformed_by_reason(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for e in FrameError::ALL {
            out.push((e.name(), self.malformed_frames[e as usize]));
        }
        for e in DatagramError::ALL {
            out.push((e.name(), self.rejected_datagrams[e as usize]));
        }
        out
    }

    /// The server's total over its shards: counters add up, and so do the gauges,
    /// whose per-shard sets are disjoint (see [`Kind::Gauge`]).
    pub fn total<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> ShardStats {
        let mut t = ShardStats::default();
        for s in shards {
            for (sum, v) in t.values_mut().into_iter().zip(s.values()) {
                *sum += v;
            }
            for (sum, v) in t.malformed_frames.iter_mut().zip(s.malformed_frames) {
                *sum += v;
            }
            for (sum, v) in t.rejected_datagrams.iter_mut().zip(s.rejected_datagrams) {
                *sum += v;
            }
            t.loop_busy_us.add(&s.loop_busy_us);
            t.receive_batch.add(&s.receive_batch);
        }
        t
    }

    /// What happened since `earlier`: counters as differences, gauges as they are now.
    pub fn since(&self, earlier: &ShardStats) -> ShardStats {
        let mut d = *self;
        for ((field, v), before) in Self::FIELDS
            .iter()
            .zip(d.values_mut())
            .zip(earlier.values())
        {
            if field.kind == Kind::Counter {
                *v = v.saturating_sub(before);
            }
        }
        for (v, before) in d.malformed_frames.iter_mut().zip(earlier.malformed_frames) {
            *v = v.saturating_sub(before);
        }
        for (v, before) in d
            .rejected_datagrams
            .iter_mut()
            .zip(earlier.rejected_datagrams)
        {
            *v = v.saturating_sub(before);
        }
        d.loop_busy_us = self.loop_busy_us.minus(&earlier.loop_busy_us);
        d.receive_batch = self.receive_batch.minus(&earlier.receive_batch);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_by_upper_bound_and_add_up() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 1_024, 1_025, 1 << 40] {
            h.record(&BATCH_BOUNDS, v);
        }
        assert_eq!(h.counts[0], 2); // 0 and 1
        assert_eq!(h.counts[1], 1); // 2
        assert_eq!(h.counts[2], 1); // 3
        assert_eq!(h.counts[10], 1); // 1024
        assert_eq!(h.counts[11], 2); // +Inf
        assert_eq!(h.count(), 7);
        let a = ShardStats {
            receive_batch: h,
            ..Default::default()
        };
        let t = ShardStats::total([&a, &a]);
        assert_eq!(t.receive_batch.count(), 14);
        assert_eq!(t.since(&a).receive_batch, h);
    }

    #[test]
    fn every_field_is_declared_once_with_help_and_a_unit() {
        let mut names: Vec<&str> = ShardStats::FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ShardStats::FIELDS.len());
        for f in ShardStats::FIELDS {
            assert!(!f.help.trim().is_empty() && !f.unit.is_empty(), "{f:?}");
        }
        let gauges: Vec<&str> = ShardStats::FIELDS
            .iter()
            .filter(|f| f.kind == Kind::Gauge)
            .map(|f| f.name)
            .collect();
        assert_eq!(
            gauges,
            [
                "devices",
                "device_memory_bytes",
                "online",
                "late",
                "offline",
                "tcp_open"
            ]
        );
    }

    #[test]
    fn totals_add_shards_and_deltas_leave_gauges_alone() {
        let a = ShardStats {
            heartbeats: 10,
            devices: 3,
            online: 2,
            late: 1,
            ..Default::default()
        };
        let mut b = ShardStats {
            heartbeats: 5,
            devices: 4,
            online: 4,
            ..Default::default()
        };
        b.malformed_frames[1] = 2;
        let t = ShardStats::total([&a, &b]);
        assert_eq!((t.heartbeats, t.devices, t.online, t.late), (15, 7, 6, 1));
        assert_eq!(t.malformed_total(), 2);
        let later = ShardStats {
            heartbeats: 40,
            devices: 9,
            online: 5,
            ..t
        };
        let d = later.since(&t);
        assert_eq!(d.heartbeats, 25, "a counter's delta");
        assert_eq!((d.devices, d.online), (9, 5), "gauges as they are now");
        assert_eq!(d.malformed_total(), 0);
    }
}
