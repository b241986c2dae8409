//! `ringbeat-bench liveness`: the CPU cost of liveness detection, measured on the
//! sans-IO core under simulated time. N devices heartbeat every `interval` at evenly
//! spread phases (a share of them falls silent, so transitions happen too); the core's
//! `advance` runs every tick. Reported: seconds of CPU spent in `advance` per simulated
//! second, i.e. the fraction of one core the liveness wheel costs, and the core's own
//! cost per ingested heartbeat.

use ringbeat::core::codec::{FrameFields, MAX_DATAGRAM_BYTES};
use ringbeat::core::shard::CoreConfig;
// The server's own memory (mapped, with prefetch), so the cost is the server's.
use ringbeat::memory::Core as ShardCore;
use std::time::{Duration, Instant};

pub struct LivenessReport {
    pub devices: u64,
    pub simulated_s: f64,
    pub advance_cpu_s: f64,
    pub ingest_cpu_s: f64,
    pub heartbeats: u64,
    pub rechecks: u64,
    pub events: u64,
}

pub fn run(
    devices: u64,
    interval_s: f64,
    simulated_s: f64,
    silent_permille: u64,
    tick_ms: u32,
) -> std::io::Result<LivenessReport> {
    let interval_ms = (interval_s * 1000.0) as u64;
    let mut core = ShardCore::new(
        CoreConfig {
            default_interval_ds: (interval_s * 10.0) as u16,
            tick_ms,
            event_capacity: 1 << 20,
            huge_pages: true,
            require_auth: false,
            ..CoreConfig::basic(0, 1, devices as u32)
        },
        0,
    )?;
    let mut ack = [0u8; MAX_DATAGRAM_BYTES];
    let (mut advance, mut ingest) = (Duration::ZERO, Duration::ZERO);
    let mut seq = vec![0u32; devices as usize];
    let end_ms = (simulated_s * 1000.0) as u64;
    let mut events = 0u64;
    // Device i sends at i * interval / N + k * interval; silent devices stop after the
    // first third of the run (so late and offline transitions are part of the cost).
    let per_ms = devices as f64 / interval_ms as f64;
    let mut next = 0f64;
    for now in 0..end_ms {
        let t = Instant::now();
        let upto = per_ms * (now + 1) as f64;
        while next < upto {
            let i = (next as u64) % devices;
            next += 1.0;
            let silent = (i * 1000 / devices) < silent_permille;
            if silent && now > end_ms / 3 {
                continue;
            }
            seq[i as usize] = seq[i as usize].wrapping_add(1);
            let f = FrameFields::heartbeat(i + 1, seq[i as usize], 0, now).to_bytes();
            core.ingest_datagram(&f, now, &mut ack, |_, _, _| true);
        }
        core.flush();
        ingest += t.elapsed();
        if now >= core.next_deadline_ms() {
            let t = Instant::now();
            core.advance(now);
            advance += t.elapsed();
            events += core.drain_events().count() as u64;
        }
    }
    let s = core.stats();
    Ok(LivenessReport {
        devices,
        simulated_s,
        advance_cpu_s: advance.as_secs_f64(),
        ingest_cpu_s: ingest.as_secs_f64(),
        heartbeats: s.heartbeats,
        rechecks: s.rechecks,
        events,
    })
}
