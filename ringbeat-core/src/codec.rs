//! The PROTOCOL-v1 wire codec: the only place that knows the byte layout.
//!
//! Server, bench harness and tests all decode and encode through this module, so the
//! wire format exists exactly once. Decoding borrows the input (no copy); every
//! rejection names its reason so that it can be counted by reason.
//!
//! ```
//! use ringbeat_core::codec::{self, FrameFields, FLAG_ACK_REQUESTED};
//!
//! // A device builds a heartbeat asking for an ack...
//! let mut hb = FrameFields::heartbeat(42, 7, 100, 123_456);
//! hb.flags = FLAG_ACK_REQUESTED;
//! let datagram = hb.to_bytes();
//!
//! // ...the server validates it and writes the ack...
//! let frames = codec::datagram_frames(&datagram).unwrap();
//! let heartbeat = codec::decode_heartbeat(&frames[0]).unwrap();
//! assert!(heartbeat.ack_requested());
//! let mut ack = [0u8; codec::FRAME_BYTES];
//! codec::encode_ack(&heartbeat, 100, &mut ack);
//!
//! // ...and the device reads it back: echoed fields, status 0 = accepted.
//! let a = codec::decode_ack(&ack).unwrap();
//! assert_eq!((a.device_id, a.seq, a.status, a.sent_ns), (42, 7, 0, 123_456));
//!
//! // Bad input is rejected with a reason, never silently.
//! assert_eq!(codec::datagram_frames(&datagram[..31]).unwrap_err(), codec::DatagramError::BadLength);
//! ```

/// Size of one frame on the wire.
pub const FRAME_BYTES: usize = 32;
/// The frame magic, bytes `52 42 48 42` ("RBHB").
pub const MAGIC: [u8; 4] = *b"RBHB";
/// Version 1: the 32-byte frame.
pub const VERSION: u16 = 1;
/// Version 2: the authenticated 64-byte frame (see [`FrameV2`]).
pub const VERSION_2: u16 = 2;
/// Size of a version-2 frame on the wire: two 32-byte units.
pub const FRAME_V2_BYTES: usize = 64;
/// Bytes a version-2 tag covers: everything before the tag.
pub const TAGGED_BYTES: usize = 48;
/// Frame kind of a heartbeat (device → server).
pub const KIND_HEARTBEAT: u8 = 1;
/// Frame kind of an ack (server → device).
pub const KIND_ACK: u8 = 2;
/// Flags bit 0: the sender wants an ack for this frame.
pub const FLAG_ACK_REQUESTED: u8 = 0x01;
/// Most frames a datagram may carry.
pub const MAX_FRAMES_PER_DATAGRAM: usize = 64;
/// Largest valid datagram: 64 frames of 32 bytes.
pub const MAX_DATAGRAM_BYTES: usize = MAX_FRAMES_PER_DATAGRAM * FRAME_BYTES;

const _: () = assert!(MAX_DATAGRAM_BYTES == 2048);

/// Why a single frame was rejected. The discriminant indexes the per-reason counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameError {
    BadMagic = 0,
    BadVersion = 1,
    BadKind = 2,
    ZeroDeviceId = 3,
    /// A version-2 frame whose second 32 bytes are missing (the datagram ended).
    TruncatedV2 = 4,
}

impl FrameError {
    pub const ALL: [FrameError; 5] = [
        FrameError::BadMagic,
        FrameError::BadVersion,
        FrameError::BadKind,
        FrameError::ZeroDeviceId,
        FrameError::TruncatedV2,
    ];

    /// The stable name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            FrameError::BadMagic => "bad_magic",
            FrameError::BadVersion => "bad_version",
            FrameError::BadKind => "bad_kind",
            FrameError::ZeroDeviceId => "zero_device_id",
            FrameError::TruncatedV2 => "truncated_v2",
        }
    }
}

/// Why a whole datagram was rejected before looking at its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DatagramError {
    /// Zero bytes.
    Empty = 0,
    /// Length not a multiple of 32.
    BadLength = 1,
    /// More than 2048 bytes (or cut short by the receive buffer).
    TooLong = 2,
}

impl DatagramError {
    pub const ALL: [DatagramError; 3] = [
        DatagramError::Empty,
        DatagramError::BadLength,
        DatagramError::TooLong,
    ];

    /// The stable name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            DatagramError::Empty => "empty_datagram",
            DatagramError::BadLength => "bad_datagram_length",
            DatagramError::TooLong => "datagram_too_long",
        }
    }
}

/// A borrowed, validated heartbeat frame. Accessors read the wire bytes directly.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat<'a> {
    bytes: &'a [u8; FRAME_BYTES],
}

fn u16_at(b: &[u8; FRAME_BYTES], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8; FRAME_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8; FRAME_BYTES], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl<'a> Heartbeat<'a> {
    pub fn device_id(&self) -> u64 {
        u64_at(self.bytes, 8)
    }
    pub fn seq(&self) -> u32 {
        u32_at(self.bytes, 16)
    }
    pub fn status(&self) -> u16 {
        u16_at(self.bytes, 20)
    }
    pub fn interval_ds(&self) -> u16 {
        u16_at(self.bytes, 22)
    }
    pub fn sent_ns(&self) -> u64 {
        u64_at(self.bytes, 24)
    }
    pub fn flags(&self) -> u8 {
        self.bytes[7]
    }
    pub fn ack_requested(&self) -> bool {
        self.flags() & FLAG_ACK_REQUESTED != 0
    }
    /// The raw 32 bytes, for hand-off between shards.
    pub fn bytes(&self) -> &'a [u8; FRAME_BYTES] {
        self.bytes
    }
}

/// Validates one 32-byte frame as a version-1 heartbeat (server side: only kind 1 is
/// valid).
#[inline]
pub fn decode_heartbeat(bytes: &[u8; FRAME_BYTES]) -> Result<Heartbeat<'_>, FrameError> {
    decode_kind(bytes, VERSION, KIND_HEARTBEAT).map(|bytes| Heartbeat { bytes })
}

/// The version a 32-byte unit announces when its magic is right: 2 means it is the
/// first half of a 64-byte version-2 frame. `None` for a bad magic.
#[inline]
pub fn unit_version(bytes: &[u8; FRAME_BYTES]) -> Option<u16> {
    (bytes[0..4] == MAGIC).then(|| u16_at(bytes, 4))
}

/// The device id a 32-byte unit carries where a frame's header has it (any version,
/// unchecked): for prefetching and looking up before the frame is decoded.
#[inline]
pub fn unit_device_id(bytes: &[u8; FRAME_BYTES]) -> u64 {
    u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"))
}

fn decode_kind(
    bytes: &[u8; FRAME_BYTES],
    version: u16,
    kind: u8,
) -> Result<&[u8; FRAME_BYTES], FrameError> {
    if bytes[0..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if u16_at(bytes, 4) != version {
        return Err(FrameError::BadVersion);
    }
    if bytes[6] != kind {
        return Err(FrameError::BadKind);
    }
    if u64_at(bytes, 8) == 0 {
        return Err(FrameError::ZeroDeviceId);
    }
    Ok(bytes)
}

/// Checks a datagram's length and returns its frames as 32-byte arrays.
#[inline]
pub fn datagram_frames(datagram: &[u8]) -> Result<&[[u8; FRAME_BYTES]], DatagramError> {
    if datagram.is_empty() {
        return Err(DatagramError::Empty);
    }
    if datagram.len() > MAX_DATAGRAM_BYTES {
        return Err(DatagramError::TooLong);
    }
    if !datagram.len().is_multiple_of(FRAME_BYTES) {
        return Err(DatagramError::BadLength);
    }
    let (frames, rest) = datagram.as_chunks::<FRAME_BYTES>();
    debug_assert!(rest.is_empty());
    Ok(frames)
}

/// One frame as it came off the wire: its version says how long it is.
#[derive(Clone, Copy, Debug)]
pub enum Wire<'a> {
    V1(&'a [u8; FRAME_BYTES]),
    V2(&'a [u8; FRAME_V2_BYTES]),
}

impl<'a> Wire<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            Wire::V1(b) => b,
            Wire::V2(b) => b,
        }
    }
}

/// The frames in a run of 32-byte units (a datagram's, or an ack datagram's), each with
/// the index of its first unit: a unit whose header says version 2 (right magic) takes
/// the next unit as its second half; a version-2 header in the last unit is
/// `TruncatedV2` and ends the run. Any other unit is a version-1 frame, valid or not.
#[inline]
pub fn frames(
    units: &[[u8; FRAME_BYTES]],
) -> impl Iterator<Item = (usize, Result<Wire<'_>, FrameError>)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let at = i;
        let unit = units.get(at)?;
        if unit_version(unit) != Some(VERSION_2) {
            i += 1;
            return Some((at, Ok(Wire::V1(unit))));
        }
        match units.get(at..at + 2) {
            Some(pair) => {
                i += 2;
                let whole = pair.as_flattened().try_into().expect("two 32-byte units");
                Some((at, Ok(Wire::V2(whole))))
            }
            None => {
                i = units.len();
                Some((at, Err(FrameError::TruncatedV2)))
            }
        }
    })
}

/// The fields of a frame to encode; used for heartbeats (harness, tests) and acks (server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameFields {
    pub kind: u8,
    pub flags: u8,
    pub device_id: u64,
    pub seq: u32,
    pub status: u16,
    pub interval_ds: u16,
    pub sent_ns: u64,
}

impl FrameFields {
    /// A heartbeat with the given fields.
    pub fn heartbeat(device_id: u64, seq: u32, interval_ds: u16, sent_ns: u64) -> Self {
        FrameFields {
            kind: KIND_HEARTBEAT,
            flags: 0,
            device_id,
            seq,
            status: 0,
            interval_ds,
            sent_ns,
        }
    }

    /// Encodes into exactly 32 bytes.
    pub fn encode(&self, out: &mut [u8; FRAME_BYTES]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6] = self.kind;
        out[7] = self.flags;
        out[8..16].copy_from_slice(&self.device_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.seq.to_le_bytes());
        out[20..22].copy_from_slice(&self.status.to_le_bytes());
        out[22..24].copy_from_slice(&self.interval_ds.to_le_bytes());
        out[24..32].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Encodes into a fresh array.
    pub fn to_bytes(&self) -> [u8; FRAME_BYTES] {
        let mut out = [0u8; FRAME_BYTES];
        self.encode(&mut out);
        out
    }
}

/// Writes the ack for `heartbeat` into `out`: device_id, seq and sent_ns echoed,
/// status 0 (accepted), interval_ds the period the server now expects.
#[inline]
pub fn encode_ack(
    heartbeat: &Heartbeat<'_>,
    expected_interval_ds: u16,
    out: &mut [u8; FRAME_BYTES],
) {
    encode_ack_status(heartbeat, ACK_ACCEPTED, expected_interval_ds, out);
}

/// Writes the version-1 ack for `heartbeat` with an ack status (`ACK_*`).
#[inline]
pub fn encode_ack_status(
    heartbeat: &Heartbeat<'_>,
    status: u16,
    expected_interval_ds: u16,
    out: &mut [u8; FRAME_BYTES],
) {
    FrameFields {
        kind: KIND_ACK,
        flags: 0,
        device_id: heartbeat.device_id(),
        seq: heartbeat.seq(),
        status,
        interval_ds: expected_interval_ds,
        sent_ns: heartbeat.sent_ns(),
    }
    .encode(out);
}

/// Ack status: the heartbeat was taken (the only status version 1 defined).
pub const ACK_ACCEPTED: u16 = 0;
/// Ack status: not tracked, the server holds as many devices as it may (`--max-devices`).
pub const ACK_TABLE_FULL: u16 = 1;
/// Ack status: the device is not in the server's device registry (`--devices-file`).
pub const ACK_UNKNOWN_DEVICE: u16 = 2;
/// Ack status: a version-1 (unauthenticated) heartbeat from a device that must send
/// version 2: it has a key in the registry, or the server runs with `--require-auth`.
pub const ACK_AUTH_REQUIRED: u16 = 3;
/// Ack status: a version-2 heartbeat whose tag is wrong, or whose device has no key.
pub const ACK_AUTH_FAILED: u16 = 4;
/// Ack status: a version-2 heartbeat whose (boot, seq) was already seen or is older than
/// the replay window.
pub const ACK_REPLAYED: u16 = 5;
/// Ack status: the heartbeat was valid but lost inside the server: the shard that owns
/// its device had fallen too far behind to be handed it (the server is overloaded).
/// Sending again later may succeed.
pub const ACK_BUSY: u16 = 6;

/// Why a valid frame was not taken. Each is counted, logged (rate-limited) and, when the
/// frame asked for an ack, answered with its non-zero ack status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Refusal {
    TableFull = 0,
    UnknownDevice = 1,
    AuthRequired = 2,
    AuthFailed = 3,
    Replayed = 4,
    Busy = 5,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::TableFull,
        Refusal::UnknownDevice,
        Refusal::AuthRequired,
        Refusal::AuthFailed,
        Refusal::Replayed,
        Refusal::Busy,
    ];

    /// The ack status this refusal is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::TableFull => ACK_TABLE_FULL,
            Refusal::UnknownDevice => ACK_UNKNOWN_DEVICE,
            Refusal::AuthRequired => ACK_AUTH_REQUIRED,
            Refusal::AuthFailed => ACK_AUTH_FAILED,
            Refusal::Replayed => ACK_REPLAYED,
            Refusal::Busy => ACK_BUSY,
        }
    }

    /// The stable name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::TableFull => "table_full",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::AuthRequired => "auth_required",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Replayed => "replayed",
            Refusal::Busy => "forward_drops",
        }
    }

    /// What an operator can do about it, for the log.
    pub fn hint(self) -> &'static str {
        match self {
            Refusal::TableFull => "raise --max-devices",
            Refusal::UnknownDevice => "add the device to --devices-file and send SIGHUP",
            Refusal::AuthRequired => {
                "the device has a key (or --require-auth is set): it must send version-2 frames"
            }
            Refusal::AuthFailed => "check the device's key against --devices-file",
            Refusal::Replayed => {
                "a copy of an earlier heartbeat, or a device that restarted without advancing its boot counter"
            }
            Refusal::Busy => {
                "the shard that owns the device fell behind (the server is overloaded): spread the load over more cores (--cores) or lower it"
            }
        }
    }
}

/// A device key for version-2 tags: 128 bits.
pub type Key = [u8; 16];

/// The version-2 tag: SipHash-2-4 with 128-bit output, keyed with the device's key,
/// over the frame's first 48 bytes. SipHash is a PRF built for short inputs (a frame is
/// 6 words), so it costs a fraction of what HMAC-SHA256 or a BLAKE3 block does on 48
/// bytes, with 128-bit keys and tags.
#[inline]
pub fn tag(key: &Key, tagged: &[u8]) -> [u8; 16] {
    debug_assert_eq!(tagged.len(), TAGGED_BYTES);
    siphasher::sip128::SipHasher24::new_with_key(key)
        .hash(tagged)
        .as_bytes()
}

/// Compares tags without stopping at the first difference, so the time taken says
/// nothing about how much of a forged tag was right.
#[inline]
pub fn tags_equal(a: &[u8], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A version-2 frame (64 bytes): the version-1 layout in its first 32 bytes (version
/// 2), then `boot` (u32, the device's restart counter), 12 reserved bytes (sender sets
/// 0) and a 16-byte tag over bytes 0..48. `(boot, seq)` must advance: it is the
/// replay counter.
#[derive(Clone, Copy, Debug)]
pub struct FrameV2<'a> {
    bytes: &'a [u8; FRAME_V2_BYTES],
}

impl<'a> FrameV2<'a> {
    /// The header's fields, read through the version-1 accessors.
    pub fn header(&self) -> Heartbeat<'a> {
        Heartbeat {
            bytes: self.bytes[..FRAME_BYTES].try_into().expect("64 > 32"),
        }
    }
    pub fn boot(&self) -> u32 {
        u32::from_le_bytes(self.bytes[32..36].try_into().expect("4 bytes"))
    }
    /// `boot` and `seq` as one counter that must advance.
    pub fn counter(&self) -> u64 {
        (self.boot() as u64) << 32 | self.header().seq() as u64
    }
    /// Whether the tag is right for `key`.
    #[inline]
    pub fn verify(&self, key: &Key) -> bool {
        tags_equal(
            &self.bytes[TAGGED_BYTES..],
            &tag(key, &self.bytes[..TAGGED_BYTES]),
        )
    }
    pub fn bytes(&self) -> &'a [u8; FRAME_V2_BYTES] {
        self.bytes
    }
}

/// Validates a 64-byte version-2 heartbeat's header (magic, version 2, kind 1, device
/// id); the tag is checked with [`FrameV2::verify`] once the device's key is known.
#[inline]
pub fn decode_v2(bytes: &[u8; FRAME_V2_BYTES]) -> Result<FrameV2<'_>, FrameError> {
    let head: &[u8; FRAME_BYTES] = bytes[..FRAME_BYTES].try_into().expect("64 > 32");
    decode_kind(head, VERSION_2, KIND_HEARTBEAT)?;
    Ok(FrameV2 { bytes })
}

/// Encodes a version-2 frame (heartbeat or ack) with `boot` and its tag under `key`.
pub fn encode_v2(fields: &FrameFields, boot: u32, key: &Key, out: &mut [u8; FRAME_V2_BYTES]) {
    encode_v2_untagged(fields, boot, out);
    let t = tag(key, &out[..TAGGED_BYTES]);
    out[TAGGED_BYTES..].copy_from_slice(&t);
}

/// Encodes a version-2 frame's first 48 bytes and leaves its tag zero, for a sender
/// that computes the tags of several frames at once (`siphash::tags48`).
pub fn encode_v2_untagged(fields: &FrameFields, boot: u32, out: &mut [u8; FRAME_V2_BYTES]) {
    let head: &mut [u8; FRAME_BYTES] = (&mut out[..FRAME_BYTES]).try_into().expect("64 > 32");
    fields.encode(head);
    out[4..6].copy_from_slice(&VERSION_2.to_le_bytes());
    out[32..36].copy_from_slice(&boot.to_le_bytes());
    out[36..].fill(0);
}

/// Writes the version-2 ack for `frame`: the version-1 ack's fields, `boot` echoed, and
/// a tag under the device's key, so the device can tell a real answer from a forged one.
/// Without a key (an unknown device) the tag is all zero: such an ack proves nothing.
#[inline]
pub fn encode_ack_v2(
    frame: &FrameV2<'_>,
    status: u16,
    expected_interval_ds: u16,
    key: Option<&Key>,
    out: &mut [u8; FRAME_V2_BYTES],
) {
    encode_ack_v2_untagged(frame, status, expected_interval_ds, out);
    if let Some(k) = key {
        let t = tag(k, &out[..TAGGED_BYTES]);
        out[TAGGED_BYTES..].copy_from_slice(&t);
    }
}

/// `encode_ack_v2` with the tag left zero, for a server that tags several acks at once
/// (`siphash::tags48`).
#[inline]
pub fn encode_ack_v2_untagged(
    frame: &FrameV2<'_>,
    status: u16,
    expected_interval_ds: u16,
    out: &mut [u8; FRAME_V2_BYTES],
) {
    let h = frame.header();
    let fields = FrameFields {
        kind: KIND_ACK,
        flags: 0,
        device_id: h.device_id(),
        seq: h.seq(),
        status,
        interval_ds: expected_interval_ds,
        sent_ns: h.sent_ns(),
    };
    encode_v2_untagged(&fields, frame.boot(), out);
}

/// Why a version-2 ack was not believed (client side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckV2Error {
    Malformed(FrameError),
    /// The tag is not the device key's: not from a server holding the key.
    BadTag,
}

/// A decoded version-2 ack (client side), its tag checked against `key`; with the boot
/// counter it echoes.
pub fn decode_ack_v2(bytes: &[u8; FRAME_V2_BYTES], key: &Key) -> Result<(Ack, u32), AckV2Error> {
    let head: &[u8; FRAME_BYTES] = bytes[..FRAME_BYTES].try_into().expect("64 > 32");
    let b = decode_kind(head, VERSION_2, KIND_ACK).map_err(AckV2Error::Malformed)?;
    let frame = FrameV2 { bytes };
    if !frame.verify(key) {
        return Err(AckV2Error::BadTag);
    }
    Ok((
        Ack {
            device_id: u64_at(b, 8),
            seq: u32_at(b, 16),
            status: u16_at(b, 20),
            interval_ds: u16_at(b, 22),
            sent_ns: u64_at(b, 24),
        },
        frame.boot(),
    ))
}

/// A decoded ack (client side: the harness and tests read acks with this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub device_id: u64,
    pub seq: u32,
    pub status: u16,
    pub interval_ds: u16,
    pub sent_ns: u64,
}

/// Validates one frame as an ack (client side).
pub fn decode_ack(bytes: &[u8; FRAME_BYTES]) -> Result<Ack, FrameError> {
    let b = decode_kind(bytes, VERSION, KIND_ACK)?;
    Ok(Ack {
        device_id: u64_at(b, 8),
        seq: u32_at(b, 16),
        status: u16_at(b, 20),
        interval_ds: u16_at(b, 22),
        sent_ns: u64_at(b, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(device_id: u64, seq: u32) -> [u8; FRAME_BYTES] {
        FrameFields::heartbeat(device_id, seq, 100, 0x1122_3344_5566_7788).to_bytes()
    }

    #[test]
    fn heartbeat_layout_is_byte_exact() {
        let mut f = FrameFields::heartbeat(0x0102_0304_0506_0708, 0x0A0B_0C0D, 0x1234, 0xAABB);
        f.flags = FLAG_ACK_REQUESTED;
        f.status = 0x5566;
        let b = f.to_bytes();
        let expected: [u8; 32] = [
            0x52, 0x42, 0x48, 0x42, // magic
            0x01, 0x00, // version
            0x01, // kind
            0x01, // flags
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // device_id
            0x0D, 0x0C, 0x0B, 0x0A, // seq
            0x66, 0x55, // status
            0x34, 0x12, // interval_ds
            0xBB, 0xAA, 0, 0, 0, 0, 0, 0, // sent_ns
        ];
        assert_eq!(b, expected);
        let h = decode_heartbeat(&b).unwrap();
        assert_eq!(h.device_id(), 0x0102_0304_0506_0708);
        assert_eq!(h.seq(), 0x0A0B_0C0D);
        assert_eq!(h.status(), 0x5566);
        assert_eq!(h.interval_ds(), 0x1234);
        assert_eq!(h.sent_ns(), 0xAABB);
        assert!(h.ack_requested());
    }

    #[test]
    fn ack_echoes_and_sets_kind_two_status_zero() {
        let mut f = FrameFields::heartbeat(42, 7, 0, 99);
        f.flags = FLAG_ACK_REQUESTED | 0x80;
        f.status = 3;
        let b = f.to_bytes();
        let h = decode_heartbeat(&b).unwrap();
        let mut out = [0u8; 32];
        encode_ack(&h, 100, &mut out);
        assert_eq!(&out[0..4], b"RBHB");
        assert_eq!(out[6], KIND_ACK);
        assert_eq!(out[7], 0, "ack flags are 0");
        let a = decode_ack(&out).unwrap();
        assert_eq!(
            a,
            Ack {
                device_id: 42,
                seq: 7,
                status: 0,
                interval_ds: 100,
                sent_ns: 99
            }
        );
        assert_eq!(decode_heartbeat(&out).unwrap_err(), FrameError::BadKind);
    }

    #[test]
    fn every_malformed_reason_is_named() {
        let good = hb(5, 1);
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(decode_heartbeat(&bad).unwrap_err(), FrameError::BadMagic);
        let mut bad = good;
        bad[4] = 3;
        assert_eq!(decode_heartbeat(&bad).unwrap_err(), FrameError::BadVersion);
        let mut bad = good;
        bad[5] = 1; // version 257
        assert_eq!(decode_heartbeat(&bad).unwrap_err(), FrameError::BadVersion);
        let mut bad = good;
        bad[6] = 2;
        assert_eq!(decode_heartbeat(&bad).unwrap_err(), FrameError::BadKind);
        let mut bad = good;
        bad[6] = 0;
        assert_eq!(decode_heartbeat(&bad).unwrap_err(), FrameError::BadKind);
        let bad = hb(0, 1);
        assert_eq!(
            decode_heartbeat(&bad).unwrap_err(),
            FrameError::ZeroDeviceId
        );
    }

    const KEY: Key = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn the_tag_is_the_reference_siphash_2_4_128() {
        // The SipHash reference implementation's 128-bit vectors (key 00..0f, message
        // 00 01 .. n-1): the first, for the empty message, and the 48-byte one.
        let msg: Vec<u8> = (0..48).collect();
        assert_eq!(
            siphasher::sip128::SipHasher24::new_with_key(&KEY)
                .hash(&[])
                .as_bytes(),
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93
            ]
        );
        assert_eq!(tag(&KEY, &msg), tag(&KEY, &msg));
        assert_ne!(tag(&KEY, &msg), tag(&[1; 16], &msg));
    }

    #[test]
    fn v2_layout_is_byte_exact() {
        let mut f = FrameFields::heartbeat(42, 7, 100, 0);
        f.flags = FLAG_ACK_REQUESTED;
        let mut out = [0u8; FRAME_V2_BYTES];
        encode_v2(&f, 3, &KEY, &mut out);
        let hex: Vec<String> = out
            .chunks(16)
            .map(|row| {
                row.chunks(8)
                    .map(|h| {
                        h.iter()
                            .map(|b| format!("{b:02X}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            })
            .collect();
        // PROTOCOL.md's example, byte for byte.
        let documented = include_str!("../../PROTOCOL.md")
            .split("key `000102030405060708090a0b0c0d0e0f`):\n\n```\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("the example in PROTOCOL.md");
        assert_eq!(hex.join("\n"), documented);
        assert_eq!(&out[..4], b"RBHB");
        assert_eq!(&out[4..6], &[2, 0]);
        assert_eq!(&out[32..36], &[3, 0, 0, 0]);
        assert_eq!(&out[36..48], &[0; 12]);
        assert_eq!(&out[48..], &tag(&KEY, &out[..48]));
        let v = decode_v2(&out).unwrap();
        assert!(v.verify(&KEY));
        assert_eq!((v.boot(), v.counter()), (3, 3 << 32 | 7));
        // Any changed bit breaks the tag.
        for bit in 0..FRAME_V2_BYTES * 8 {
            let mut bad = out;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_v2(&bad).map_or(true, |v| !v.verify(&KEY)),
                "bit {bit}"
            );
        }
        // The ack echoes, is tagged, and is read back.
        let mut ack = [0u8; FRAME_V2_BYTES];
        encode_ack_v2(&v, ACK_REPLAYED, 100, Some(&KEY), &mut ack);
        let (a, boot) = decode_ack_v2(&ack, &KEY).unwrap();
        assert_eq!(
            (a.device_id, a.seq, a.status, boot),
            (42, 7, ACK_REPLAYED, 3)
        );
        assert_eq!(
            decode_ack_v2(&ack, &[9; 16]).unwrap_err(),
            AckV2Error::BadTag
        );
    }

    #[test]
    fn frames_pair_version_two_units_and_stop_at_a_cut_one() {
        let mut v2 = [0u8; FRAME_V2_BYTES];
        encode_v2(&FrameFields::heartbeat(1, 1, 10, 0), 0, &KEY, &mut v2);
        let v1 = hb(2, 1);
        let mut bad = v1;
        bad[0] = b'X';
        let units: Vec<u8> = [&v1[..], &v2, &bad, &v2[..32]].concat();
        let (units, _) = units.as_chunks::<FRAME_BYTES>();
        let got: Vec<(usize, Result<usize, FrameError>)> = frames(units)
            .map(|(i, f)| (i, f.map(|w| w.bytes().len())))
            .collect();
        assert_eq!(
            got,
            [
                (0, Ok(32)),
                (1, Ok(64)),
                (3, Ok(32)),
                (4, Err(FrameError::TruncatedV2))
            ]
        );
    }

    #[test]
    fn unknown_flag_bits_are_ignored() {
        let mut b = hb(9, 1);
        b[7] = 0xFE;
        let h = decode_heartbeat(&b).unwrap();
        assert!(!h.ack_requested());
    }

    #[test]
    fn datagram_length_rules() {
        assert_eq!(datagram_frames(&[]).unwrap_err(), DatagramError::Empty);
        assert_eq!(
            datagram_frames(&[0u8; 31]).unwrap_err(),
            DatagramError::BadLength
        );
        assert_eq!(
            datagram_frames(&[0u8; 33]).unwrap_err(),
            DatagramError::BadLength
        );
        assert_eq!(
            datagram_frames(&[0u8; 2049]).unwrap_err(),
            DatagramError::TooLong
        );
        assert_eq!(
            datagram_frames(&[0u8; 2080]).unwrap_err(),
            DatagramError::TooLong
        );
        assert_eq!(datagram_frames(&[0u8; 32]).unwrap().len(), 1);
        assert_eq!(datagram_frames(&[0u8; 2048]).unwrap().len(), 64);
    }

    use crate::TestRng as Rng;

    #[test]
    fn property_encode_decode_round_trip() {
        let mut rng = Rng(1);
        for _ in 0..100_000 {
            let f = FrameFields {
                kind: KIND_HEARTBEAT,
                flags: rng.next() as u8,
                device_id: rng.next().max(1),
                seq: rng.next() as u32,
                status: rng.next() as u16,
                interval_ds: rng.next() as u16,
                sent_ns: rng.next(),
            };
            let b = f.to_bytes();
            let h = decode_heartbeat(&b).unwrap();
            assert_eq!(
                (
                    h.flags(),
                    h.device_id(),
                    h.seq(),
                    h.status(),
                    h.interval_ds(),
                    h.sent_ns()
                ),
                (
                    f.flags,
                    f.device_id,
                    f.seq,
                    f.status,
                    f.interval_ds,
                    f.sent_ns
                )
            );
        }
    }

    #[test]
    fn property_random_bytes_never_panic_and_validity_matches_rules() {
        let mut rng = Rng(2);
        for _ in 0..200_000 {
            let mut b = [0u8; 32];
            for chunk in b.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            // Make a share of them close to valid so every branch is exercised.
            match rng.next() % 4 {
                0 => b[0..4].copy_from_slice(&MAGIC),
                1 => {
                    b[0..4].copy_from_slice(&MAGIC);
                    b[4..6].copy_from_slice(&1u16.to_le_bytes());
                }
                2 => {
                    b[0..4].copy_from_slice(&MAGIC);
                    b[4..6].copy_from_slice(&1u16.to_le_bytes());
                    b[6] = 1;
                }
                _ => {}
            }
            let valid = b[0..4] == MAGIC
                && u16::from_le_bytes([b[4], b[5]]) == 1
                && b[6] == 1
                && b[8..16] != [0u8; 8];
            assert_eq!(decode_heartbeat(&b).is_ok(), valid);
        }
    }
}
