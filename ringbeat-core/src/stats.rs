//! Per-shard counters. Each shard owns its `ShardStats` outright (plain `u64`s, no
//! atomics); a copy is published off the hot path once per publish period and summed by
//! the reporter. Every drop in the server has a counter here.

use super::codec::{DatagramError, FrameError};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardStats {
    /// Valid heartbeats applied to the device table (by the owning shard).
    pub heartbeats: u64,
    /// Datagrams received (valid or not).
    pub datagrams: u64,
    /// Valid heartbeat frames received from the network by this shard (owned or not).
    pub frames_valid: u64,
    /// Rejected frames by reason (`FrameError` order).
    pub malformed_frames: [u64; 4],
    /// Rejected whole datagrams by reason (`DatagramError` order).
    pub rejected_datagrams: [u64; 3],
    /// Ack frames sent / ack datagrams sent.
    pub acks_sent: u64,
    pub ack_datagrams: u64,
    /// Ack datagrams that could not be queued or failed to send, and their frames.
    pub ack_datagrams_dropped: u64,
    pub acks_dropped: u64,
    /// Heartbeats missing from forward seq gaps.
    pub lost_heartbeats: u64,
    /// Heartbeats whose seq was equal to or behind the last one.
    pub duplicates: u64,
    /// Devices known to this shard.
    pub devices: u64,
    /// Heartbeats of new devices rejected because the table was full.
    pub table_full: u64,
    /// Datagrams the kernel dropped on this shard's socket (SO_RXQ_OVFL).
    pub kernel_drops: u64,
    /// Times the provided buffer ring ran dry (-ENOBUFS).
    pub ring_dry: u64,
    /// Frames handed to their owner shard / dropped because the hand-off ring was full.
    pub forwarded: u64,
    pub forward_drops: u64,
    /// Frames received from other shards.
    pub forwarded_in: u64,
    /// Liveness transitions detected / not delivered to the event sink (queue full).
    pub events: u64,
    pub events_dropped: u64,
    /// Devices currently in each state.
    pub online: u64,
    pub late: u64,
    pub offline: u64,
    /// Wheel rechecks (liveness cost).
    pub rechecks: u64,
    /// Liveness re-schedules refused because the wheel's entry pool was full.
    pub wheel_overflow: u64,
    /// Event density: completions reaped, io_uring_enter calls, waits that slept.
    pub cqes: u64,
    pub enters: u64,
    pub wakeups: u64,
    /// Batching waits not taken because the socket already held a backlog: the shard
    /// drained it instead of sleeping for more (io_uring engine).
    pub backlog_polls: u64,
    /// Receive re-arms (multishot ended without F_MORE).
    pub rearms: u64,
    /// Receive completions with an error other than -ENOBUFS, and malformed
    /// receive buffers (counted, logged at a limited rate).
    pub recv_errors: u64,
    /// Datagrams still queued on the socket when the stop's drain budget ran out:
    /// read and counted, not applied.
    pub unread_at_stop: u64,
}

impl ShardStats {
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

    /// Field-wise sum (gauges such as `devices` sum too: each device has one owner).
    pub fn add(&mut self, o: &ShardStats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            heartbeats,
            datagrams,
            frames_valid,
            acks_sent,
            ack_datagrams,
            ack_datagrams_dropped,
            acks_dropped,
            lost_heartbeats,
            duplicates,
            devices,
            table_full,
            kernel_drops,
            ring_dry,
            forwarded,
            forward_drops,
            forwarded_in,
            events,
            events_dropped,
            online,
            late,
            offline,
            rechecks,
            wheel_overflow,
            cqes,
            enters,
            wakeups,
            backlog_polls,
            rearms,
            recv_errors,
            unread_at_stop
        );
        for i in 0..self.malformed_frames.len() {
            self.malformed_frames[i] += o.malformed_frames[i];
        }
        for i in 0..self.rejected_datagrams.len() {
            self.rejected_datagrams[i] += o.rejected_datagrams[i];
        }
    }
}
