//! "What is device N's state?" asked of the shard that owns it, as plain data: a
//! request and its reply each fit one 32-byte slot of the hand-off rings, so a
//! question travels to a shard and back without a lock (the shard answers between two
//! receive batches, from its own table).

use crate::table::{Device, Liveness};

/// A question: which device, and a number to match the reply with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub device_id: u64,
}

/// What the owner knows of a device, as of its last liveness step (at most one tick
/// old).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub device_id: u64,
    pub state: Liveness,
    pub epoch: u32,
    pub last_seq: u32,
    pub status: u16,
    /// The period the server expects, deciseconds.
    pub interval_ds: u16,
    /// Shard time of the last heartbeat (ms).
    pub last_seen_ms: u64,
}

impl DeviceView {
    pub fn of(d: &Device, now_ms: u64) -> DeviceView {
        DeviceView {
            device_id: d.device_id,
            state: d.liveness(),
            epoch: d.epoch,
            last_seq: d.last_seq,
            status: d.status,
            interval_ds: d.interval_ds,
            last_seen_ms: d.last_seen_before(now_ms),
        }
    }
}

/// A reply: the request's number and the device, or None when the owner does not know
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: u64,
    pub device: Option<DeviceView>,
}

impl Request {
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.device_id.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; 32]) -> Request {
        Request {
            id: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            device_id: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        }
    }
}

impl Reply {
    /// Layout: id 0..8, found 8, state 9, status 10..12, interval_ds 12..14, epoch
    /// 16..20, last_seq 20..24, last_seen_ms 24..32 (the asker knows the device id).
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        if let Some(d) = &self.device {
            b[8] = 1;
            b[9] = d.state as u8;
            b[10..12].copy_from_slice(&d.status.to_le_bytes());
            b[12..14].copy_from_slice(&d.interval_ds.to_le_bytes());
            b[16..20].copy_from_slice(&d.epoch.to_le_bytes());
            b[20..24].copy_from_slice(&d.last_seq.to_le_bytes());
            b[24..32].copy_from_slice(&d.last_seen_ms.to_le_bytes());
        }
        b
    }

    /// The reply in `b` to a question about `device_id`.
    pub fn decode(b: &[u8; 32], device_id: u64) -> Reply {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Reply {
            id: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            device: (b[8] == 1).then(|| DeviceView {
                device_id,
                state: Liveness::from_u8(b[9]),
                status: u16_at(10),
                interval_ds: u16_at(12),
                epoch: u32_at(16),
                last_seq: u32_at(20),
                last_seen_ms: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip_through_a_slot() {
        let r = Request {
            id: 7,
            device_id: u64::MAX - 3,
        };
        assert_eq!(Request::decode(&r.encode()), r);
        for state in [
            Liveness::Unknown,
            Liveness::Online,
            Liveness::Late,
            Liveness::Offline,
        ] {
            let reply = Reply {
                id: 9,
                device: Some(DeviceView {
                    device_id: 42,
                    state,
                    epoch: 3,
                    last_seq: u32::MAX,
                    status: 0xBEEF,
                    interval_ds: 600,
                    last_seen_ms: 1 << 40,
                }),
            };
            assert_eq!(Reply::decode(&reply.encode(), 42), reply);
        }
        let none = Reply {
            id: 1,
            device: None,
        };
        assert_eq!(Reply::decode(&none.encode(), 5), none);
    }
}
