//! Any bytes as a received datagram, through the whole ingest path of a shard core
//! (validation, acks, hand-off, table, liveness): never a panic, and every datagram is
//! accounted for (applied, forwarded or counted malformed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::core::codec::MAX_DATAGRAM_BYTES;
use ringbeat::core::memory::Heap;
use ringbeat::core::shard::{CoreConfig, ShardCore};

fuzz_target!(|data: &[u8]| {
    let mut core = ShardCore::<Heap>::new(
        CoreConfig {
            event_capacity: 256,
            ..CoreConfig::basic(0, 2, 64)
        },
        0,
    )
    .unwrap();
    let mut acks = [0u8; MAX_DATAGRAM_BYTES];
    // The input split into datagrams of up to 2,100 bytes, a millisecond apart.
    for (i, dgram) in data.chunks(2_100).enumerate() {
        let n = core.ingest_datagram(dgram, i as u64, &mut acks, |_, _, _| true);
        assert!(n <= MAX_DATAGRAM_BYTES && n.is_multiple_of(32));
        core.step(i as u64 * 500, 16);
    }
    core.advance(1 << 20);
    let s = core.stats();
    assert_eq!(s.datagrams, data.chunks(2_100).count() as u64);
    // No registry: version-2 frames are refused (no key), version 1 is taken.
    assert_eq!(
        s.frames_valid,
        s.heartbeats + s.forwarded + s.table_full + s.auth_failed
    );
    assert_eq!(s.online + s.late + s.offline, s.devices);
});
