//! Any bytes as a snapshot file: the loader refuses or accepts, never panics; what it
//! accepts encodes back to the same bytes and restores into a core.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::core::liveness::Thresholds;
use ringbeat::core::memory::Heap;
use ringbeat::core::shard::{CoreConfig, ShardCore};
use ringbeat::core::snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = snapshot::decode(data) else {
        return;
    };
    assert_eq!(
        snapshot::encode_as(snap.version, snap.created_unix_ms, &snap.records),
        data
    );
    let mut core = ShardCore::<Heap>::new(
        CoreConfig {
            shard: 0,
            shards: 1,
            max_devices: 1024,
            thresholds: Thresholds {
                late_after_permille: 1500,
                offline_after_permille: 3000,
            },
            default_interval_ds: 10,
            tick_ms: 10,
            event_capacity: 1024,
            huge_pages: false,
            require_auth: false,
        },
        0,
    )
    .unwrap();
    let restored = core.restore(&snap.records, 5);
    assert_eq!(
        restored + core.stats().table_full,
        snap.records.len() as u64
    );
    core.advance(1 << 24);
});
