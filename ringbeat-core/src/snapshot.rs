//! The snapshot file: every device's liveness state, so a restart (or a crash) does
//! not forget who was online, and every keyed device's replay window, so a heartbeat
//! taken before the restart is not taken again after it. Version 2, little-endian,
//! fixed-size records:
//!
//! ```text
//! header   32 bytes: magic "RBSNAP\r\n", version u32 = 2, record_bytes u32 = 56,
//!                    created_unix_ms u64, records u64
//! record   56 bytes: device_id u64, last_seen_unix_ms u64, epoch u32, last_seq u32,
//!                    lost u32, interval_ds u16, status u16, state u8 (1 online,
//!                    2 late, 3 offline), flags u8 (bit 0: a replay window follows;
//!                    other bits zero), 2 reserved bytes (zero),
//!                    key_check u32, replay_highest u64, replay_seen u64 (the
//!                    window: the highest version-2 counter taken and a bit for each
//!                    of the 63 before it, `seen` never 0; key_check: the first 4
//!                    bytes of the SipHash-2-4-128 tag of 48 zero bytes under the key
//!                    the window belongs to, so a window is only restored for the same
//!                    key; all zero without a window)
//! trailer   8 bytes: CRC-32 (IEEE) of header and records, u32; magic "RBND"
//! ```
//!
//! Version 1 (records of 40 bytes: the above up to `state`, then 7 reserved zero
//! bytes; no windows) is still read.
//!
//! The magic's `\r\n` catches a file mangled by a text-mode transfer. Decoding is a
//! pure function of the bytes that refuses anything it cannot vouch for (wrong magic,
//! version, size or checksum, a zero id, an unknown state, a zero interval, reserved
//! bits set, a device twice) with a reason; it is fuzzed. Records are written in
//! slices by each shard and joined by a writer thread, so the checksum is computed
//! over the records as they stream and combined with the header's at the end.

use crate::table::Liveness;

/// The running checksum of records as they stream (CRC-32, IEEE).
pub use crc32fast::Hasher as Checksum;

pub const MAGIC: [u8; 8] = *b"RBSNAP\r\n";
pub const END_MAGIC: [u8; 4] = *b"RBND";
pub const VERSION: u32 = 2;
pub const HEADER_BYTES: usize = 32;
pub const RECORD_BYTES: usize = 56;
/// Records of version 1 files (no replay windows).
pub const RECORD_BYTES_V1: usize = 40;

/// Record size of each version read.
fn record_bytes(version: u32) -> Option<usize> {
    match version {
        1 => Some(RECORD_BYTES_V1),
        2 => Some(RECORD_BYTES),
        _ => None,
    }
}

/// A keyed device's replay window as saved (`registry::ReplayWindow`'s parts), with
/// the check of the key it belongs to (`key_check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedWindow {
    pub key_check: u32,
    pub highest: u64,
    /// Never 0 (0 is "nothing taken", which is not saved).
    pub seen: u64,
}

pub use crate::registry::key_check;
pub const TRAILER_BYTES: usize = 8;

/// One device as saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub device_id: u64,
    /// Real-time clock of its last heartbeat (Unix ms).
    pub last_seen_unix_ms: u64,
    pub epoch: u32,
    pub last_seq: u32,
    pub lost: u32,
    pub interval_ds: u16,
    pub status: u16,
    /// Online, Late or Offline (never Unknown).
    pub state: Liveness,
    /// The replay window of a device with a key (version 2 files).
    pub replay: Option<SavedWindow>,
}

impl Record {
    pub fn encode(&self, out: &mut [u8; RECORD_BYTES]) {
        self.encode_common(&mut out[..RECORD_BYTES_V1]);
        if let Some(w) = self.replay {
            out[33] = 1;
            out[36..40].copy_from_slice(&w.key_check.to_le_bytes());
            out[40..48].copy_from_slice(&w.highest.to_le_bytes());
            out[48..56].copy_from_slice(&w.seen.to_le_bytes());
        } else {
            out[33..56].fill(0);
        }
    }

    /// The version-1 layout (the window, if any, is left out).
    pub fn encode_v1(&self, out: &mut [u8; RECORD_BYTES_V1]) {
        self.encode_common(out);
    }

    fn encode_common(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.device_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.last_seen_unix_ms.to_le_bytes());
        out[16..20].copy_from_slice(&self.epoch.to_le_bytes());
        out[20..24].copy_from_slice(&self.last_seq.to_le_bytes());
        out[24..28].copy_from_slice(&self.lost.to_le_bytes());
        out[28..30].copy_from_slice(&self.interval_ds.to_le_bytes());
        out[30..32].copy_from_slice(&self.status.to_le_bytes());
        out[32] = self.state as u8;
        out[33..40].fill(0);
    }

    /// A record of `b.len()` bytes: version 1 (40) or 2 (56).
    fn decode(b: &[u8], index: u64) -> Result<Record, SnapshotError> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        let bad = |what: &'static str| SnapshotError::BadRecord { index, what };
        let state = match b[32] {
            1 => Liveness::Online,
            2 => Liveness::Late,
            3 => Liveness::Offline,
            _ => return Err(bad("unknown state")),
        };
        let replay = if b.len() == RECORD_BYTES_V1 {
            if b[33..40].iter().any(|&x| x != 0) {
                return Err(bad("reserved bytes set"));
            }
            None
        } else {
            match b[33] {
                0 if b[34..56].iter().all(|&x| x == 0) => None,
                0 => return Err(bad("replay window bytes without the flag")),
                1 if b[34..36] == [0, 0] && u64_at(48) != 0 => Some(SavedWindow {
                    key_check: u32_at(36),
                    highest: u64_at(40),
                    seen: u64_at(48),
                }),
                1 => return Err(bad("reserved bytes set or an empty replay window")),
                _ => return Err(bad("unknown flags")),
            }
        };
        let r = Record {
            device_id: u64_at(0),
            last_seen_unix_ms: u64_at(8),
            epoch: u32_at(16),
            last_seq: u32_at(20),
            lost: u32_at(24),
            interval_ds: u16_at(28),
            status: u16_at(30),
            state,
            replay,
        };
        if r.device_id == 0 {
            return Err(bad("device id 0"));
        }
        if r.interval_ds == 0 {
            return Err(bad("interval 0"));
        }
        Ok(r)
    }
}

/// The header, once the number of records is known.
pub fn encode_header(created_unix_ms: u64, records: u64) -> [u8; HEADER_BYTES] {
    encode_header_as(VERSION, created_unix_ms, records)
}

fn encode_header_as(version: u32, created_unix_ms: u64, records: u64) -> [u8; HEADER_BYTES] {
    let record_bytes = record_bytes(version).expect("a version this build writes");
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&(record_bytes as u32).to_le_bytes());
    h[16..24].copy_from_slice(&created_unix_ms.to_le_bytes());
    h[24..32].copy_from_slice(&records.to_le_bytes());
    h
}

/// The trailer: the CRC of header and records.
pub fn encode_trailer(crc: u32) -> [u8; TRAILER_BYTES] {
    let mut t = [0u8; TRAILER_BYTES];
    t[0..4].copy_from_slice(&crc.to_le_bytes());
    t[4..8].copy_from_slice(&END_MAGIC);
    t
}

/// The checksum of a header and the records' checksum state (records hashed as they
/// were written): CRC-32 of header ++ records.
pub fn checksum(header: &[u8; HEADER_BYTES], records: &crc32fast::Hasher) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.combine(records);
    h.finalize()
}

/// Why a snapshot was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a ringbeat snapshot at all.
    Foreign,
    /// Shorter than its header and trailer, or than its records say.
    Truncated {
        expected_bytes: u64,
        got_bytes: u64,
    },
    /// Longer than its records say.
    TrailingBytes {
        expected_bytes: u64,
        got_bytes: u64,
    },
    UnsupportedVersion(u32),
    BadRecordSize(u32),
    Checksum {
        stored: u32,
        computed: u32,
    },
    BadRecord {
        index: u64,
        what: &'static str,
    },
    Duplicate {
        device_id: u64,
    },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Foreign => write!(f, "not a ringbeat snapshot (wrong magic)"),
            SnapshotError::Truncated {
                expected_bytes,
                got_bytes,
            } => write!(f, "truncated: {got_bytes} bytes where {expected_bytes} were expected"),
            SnapshotError::TrailingBytes {
                expected_bytes,
                got_bytes,
            } => write!(f, "{got_bytes} bytes where {expected_bytes} were expected"),
            SnapshotError::UnsupportedVersion(v) => {
                write!(f, "version {v}, this ringbeat reads versions 1 and {VERSION}")
            }
            SnapshotError::BadRecordSize(n) => write!(f, "records of {n} bytes, which its version does not have"),
            SnapshotError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged"
            ),
            SnapshotError::BadRecord { index, what } => write!(f, "record {index}: {what}"),
            SnapshotError::Duplicate { device_id } => {
                write!(f, "device {device_id} appears twice")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// A decoded snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The file's format version (1 or 2).
    pub version: u32,
    pub created_unix_ms: u64,
    pub records: Vec<Record>,
}

/// Decodes and checks a whole snapshot file.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let got = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Foreign);
    }
    let minimum = (HEADER_BYTES + TRAILER_BYTES) as u64;
    if got < minimum {
        return Err(SnapshotError::Truncated {
            expected_bytes: minimum,
            got_bytes: got,
        });
    }
    let header: &[u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().expect("32 bytes");
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let Some(size) = record_bytes(version) else {
        return Err(SnapshotError::UnsupportedVersion(version));
    };
    let stated = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if stated as usize != size {
        return Err(SnapshotError::BadRecordSize(stated));
    }
    let created_unix_ms = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let records = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let expected = records
        .checked_mul(size as u64)
        .and_then(|b| b.checked_add(minimum))
        .unwrap_or(u64::MAX);
    if got < expected {
        return Err(SnapshotError::Truncated {
            expected_bytes: expected,
            got_bytes: got,
        });
    }
    if got > expected {
        return Err(SnapshotError::TrailingBytes {
            expected_bytes: expected,
            got_bytes: got,
        });
    }
    let body_end = bytes.len() - TRAILER_BYTES;
    let trailer = &bytes[body_end..];
    let stored = u32::from_le_bytes(trailer[0..4].try_into().expect("4 bytes"));
    if trailer[4..8] != END_MAGIC {
        return Err(SnapshotError::BadRecord {
            index: records,
            what: "trailer magic missing",
        });
    }
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let mut out = Vec::with_capacity(records as usize);
    let mut seen = std::collections::HashSet::with_capacity(records as usize);
    for (i, chunk) in bytes[HEADER_BYTES..body_end].chunks_exact(size).enumerate() {
        let r = Record::decode(chunk, i as u64)?;
        if !seen.insert(r.device_id) {
            return Err(SnapshotError::Duplicate {
                device_id: r.device_id,
            });
        }
        out.push(r);
    }
    Ok(Snapshot {
        version,
        created_unix_ms,
        records: out,
    })
}

/// Encodes a whole snapshot in memory (tests, fuzzing seeds and tools; the server
/// streams the same bytes from its shards).
pub fn encode(created_unix_ms: u64, records: &[Record]) -> Vec<u8> {
    encode_as(VERSION, created_unix_ms, records)
}

/// As `encode`, in the format of `version` (1 leaves the replay windows out).
pub fn encode_as(version: u32, created_unix_ms: u64, records: &[Record]) -> Vec<u8> {
    let size = record_bytes(version).expect("a version this build writes");
    let mut body = crc32fast::Hasher::new();
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len() * size + TRAILER_BYTES);
    let header = encode_header_as(version, created_unix_ms, records.len() as u64);
    out.extend_from_slice(&header);
    let mut r = [0u8; RECORD_BYTES];
    let mut v1 = [0u8; RECORD_BYTES_V1];
    for rec in records {
        let bytes: &[u8] = if version == 1 {
            rec.encode_v1(&mut v1);
            &v1
        } else {
            rec.encode(&mut r);
            &r
        };
        body.update(bytes);
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&encode_trailer(checksum(&header, &body)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> Vec<Record> {
        (1..=n)
            .map(|i| Record {
                device_id: i * 7919,
                last_seen_unix_ms: 1_795_000_000_000 + i,
                epoch: i as u32,
                last_seq: (i * 3) as u32,
                lost: 0,
                interval_ds: 10 + (i % 5) as u16,
                status: (i % 7) as u16,
                state: [Liveness::Online, Liveness::Late, Liveness::Offline][(i % 3) as usize],
                replay: (i % 2 == 0).then_some(SavedWindow {
                    key_check: i as u32 ^ 0xA5A5_A5A5,
                    highest: (i << 32) | 9,
                    seen: 0b1011,
                }),
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let rs = records(1000);
        let bytes = encode(42, &rs);
        assert_eq!(
            bytes.len(),
            HEADER_BYTES + 1000 * RECORD_BYTES + TRAILER_BYTES
        );
        let s = decode(&bytes).unwrap();
        assert_eq!((s.version, s.created_unix_ms), (2, 42));
        assert_eq!(s.records, rs);
        assert_eq!(decode(&encode(1, &[])).unwrap().records, []);
    }

    #[test]
    fn version_one_files_are_still_read_without_windows() {
        let rs = records(100);
        let bytes = encode_as(1, 42, &rs);
        assert_eq!(
            bytes.len(),
            HEADER_BYTES + 100 * RECORD_BYTES_V1 + TRAILER_BYTES
        );
        let s = decode(&bytes).unwrap();
        assert_eq!(s.version, 1);
        let without: Vec<Record> = rs.iter().map(|r| Record { replay: None, ..*r }).collect();
        assert_eq!(s.records, without);
        assert_eq!(encode_as(1, 42, &s.records), bytes);
    }

    #[test]
    fn a_window_flag_without_a_window_or_stray_bytes_are_refused() {
        for (at, value, what) in [
            (33, 0u8, "without the flag"),
            (33, 2, "unknown flags"),
            (34, 1, "reserved bytes set"),
        ] {
            let mut rs = records(2);
            rs[0].replay = Some(SavedWindow {
                key_check: 1,
                highest: 5,
                seen: 1,
            });
            let mut r = [0u8; RECORD_BYTES];
            rs[0].encode(&mut r);
            r[at] = value;
            let e = Record::decode(&r, 0).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut r = [0u8; RECORD_BYTES];
        records(1)[0].encode(&mut r);
        r[33] = 1;
        assert!(Record::decode(&r, 0)
            .unwrap_err()
            .to_string()
            .contains("empty replay window"));
    }

    #[test]
    fn key_checks_tell_keys_apart() {
        let a = key_check(&[1; 16]);
        assert_ne!(a, key_check(&[2; 16]));
        assert_eq!(a, key_check(&[1; 16]));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(42, &records(20));
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "byte {i} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            decode(b"{\"json\": true}").unwrap_err(),
            SnapshotError::Foreign
        );
        let mut b = encode(1, &records(2));
        b[8] = 3;
        assert_eq!(
            decode(&b).unwrap_err(),
            SnapshotError::UnsupportedVersion(3)
        );
        // A well-formed file with a bad record (checksum recomputed).
        let mut rs = records(2);
        rs.push(rs[0]);
        assert_eq!(
            decode(&encode(1, &rs)).unwrap_err(),
            SnapshotError::Duplicate { device_id: 7919 }
        );
        let mut zero = records(1);
        zero[0].interval_ds = 0;
        assert!(decode(&encode(1, &zero))
            .unwrap_err()
            .to_string()
            .contains("interval 0"));
    }

    #[test]
    fn streamed_checksum_equals_the_whole_files() {
        let rs = records(10);
        let mut body = crc32fast::Hasher::new();
        let mut r = [0u8; RECORD_BYTES];
        for rec in &rs {
            rec.encode(&mut r);
            body.update(&r);
        }
        let header = encode_header(5, 10);
        let whole = encode(5, &rs);
        let stored =
            u32::from_le_bytes(whole[whole.len() - 8..whole.len() - 4].try_into().unwrap());
        assert_eq!(checksum(&header, &body), stored);
    }
}
