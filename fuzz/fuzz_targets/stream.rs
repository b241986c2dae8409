//! Any bytes as a TCP connection's stream, cut into reads at points the input chooses,
//! through the whole ingest path of a shard core: never a panic, every whole frame
//! before the first bad magic taken (applied, forwarded or counted malformed), nothing
//! after it (a version-2 header takes the next 32 bytes as its second half), one ack per
//! valid ACK_REQUESTED frame, and at most 31 bytes carried.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::core::codec::FRAME_BYTES;
use ringbeat::core::memory::Heap;
use ringbeat::core::shard::{CoreConfig, ShardCore};
use ringbeat::core::stream::StreamDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else {
        return;
    };
    let mut core = ShardCore::<Heap>::new(
        CoreConfig {
            event_capacity: 256,
            ..CoreConfig::basic(0, 2, 64)
        },
        0,
    )
    .unwrap();
    let mut decoder = StreamDecoder::default();
    let mut acks = 0usize;
    let (mut at, mut read) = (0usize, 0u64);
    let mut stopped = false;
    // Reads of 1..=64 bytes, their lengths drawn from the first input byte onwards.
    while at < stream.len() && !stopped {
        read += 1;
        let len = (1 + (cuts as u64 * 31 + read * 17) % 64) as usize;
        let end = (at + len).min(stream.len());
        let fed = core.ingest_stream(
            &mut decoder,
            &stream[at..end],
            read,
            |_| acks += 1,
            |_, _, _| true,
        );
        assert!(decoder.carried() < FRAME_BYTES);
        stopped = fed.stopped;
        at = end;
        core.step(read * 100, 16);
    }
    core.advance(1 << 20);
    let s = core.stats();
    // The frames the stream holds up to and including the first bad magic: a 32-byte
    // unit whose header says version 2 makes a 64-byte frame with the unit after it
    // (whatever that unit holds).
    let units: Vec<&[u8]> = stream.chunks_exact(FRAME_BYTES).collect();
    let (mut i, mut frames, mut bad_magic) = (0, 0u64, false);
    while i < units.len() {
        let u = units[i];
        if u[0..4] != *b"RBHB" {
            frames += 1;
            bad_magic = true;
            break;
        }
        let len = if u16::from_le_bytes([u[4], u[5]]) == 2 {
            2
        } else {
            1
        };
        if i + len > units.len() {
            break;
        }
        frames += 1;
        i += len;
    }
    assert_eq!(stopped, bad_magic);
    assert_eq!(s.tcp_frames, frames);
    // No registry: version-2 frames are refused (no key), version 1 is taken.
    assert_eq!(
        s.frames_valid,
        s.heartbeats + s.forwarded + s.table_full + s.auth_failed
    );
    assert_eq!(s.frames_valid + s.malformed_total(), s.tcp_frames);
    assert!(acks as u64 <= s.frames_valid);
    assert_eq!(s.online + s.late + s.offline, s.devices);
});
