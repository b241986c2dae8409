//! `ringbeat-bench handoff`: what it costs that a TCP connection lives on the shard
//! that accepted it rather than on its device's owner. Two real shard cores on two
//! pinned threads, a real hand-off ring between them; a TCP stream of 32-byte frames
//! is fed to shard 0 in 4 KiB reads through `ingest_stream`:
//!
//! * `local`: every frame's device is owned by shard 0 (what a connection moved to
//!   its owner, by passing its descriptor, would cost);
//! * `handed-off`: every frame's device is owned by shard 1: shard 0 validates it and
//!   pushes it into the ring, shard 1 takes it out and applies it (what the server
//!   does for a connection accepted by the wrong shard).
//!
//! Reported: CPU per frame of both shards together (thread CPU time of shard 0, and
//! the busy time of shard 1: only its drains that found frames), so the difference is
//! the hand-off's price per frame.

use crate::net;
use ringbeat::core::codec::{FrameFields, FRAME_BYTES};
use ringbeat::core::owner::owner;
use ringbeat::core::shard::CoreConfig;
use ringbeat::core::stream::StreamDecoder;
use ringbeat::memory::Core as ShardCore;
use ringbeat::sys::spsc;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct HandoffArgs {
    /// Devices in the stream (each owned by the shard the mode says).
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,
    /// Frames fed per mode (the stream of devices repeats).
    #[arg(long, default_value_t = 40_000_000)]
    frames: u64,
    /// The two shards' CPUs.
    #[arg(long, default_value = "0,1")]
    cpus: String,
    /// Runs per mode, alternating; the medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn core(shard: u32, devices: u64) -> std::io::Result<ShardCore> {
    ShardCore::new(
        CoreConfig {
            event_capacity: 1 << 16,
            ..CoreConfig::basic(shard, 2, (devices + devices / 8) as u32)
        },
        0,
    )
}

/// `n` device ids owned by `shard` of 2.
fn devices_of(shard: u32, n: u64) -> Vec<u64> {
    (1..)
        .map(|i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        .filter(|&id| owner(id, 2) == shard)
        .take(n as usize)
        .collect()
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// One mode: ns of CPU per frame (both shards), and frames the owner applied.
fn run_mode(a: &HandoffArgs, cpus: &[usize], handed_off: bool) -> anyhow::Result<(f64, u64)> {
    let owner_shard = if handed_off { 1 } else { 0 };
    let ids = devices_of(owner_shard, a.devices);
    // One pass over the devices as a byte stream, fed repeatedly.
    let stream: Vec<u8> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, &id)| FrameFields::heartbeat(id, i as u32, 10, 0).to_bytes())
        .collect();
    let (mut producer, mut consumer) = spsc::ring(8192);
    let done = Arc::new(AtomicBool::new(false));
    let (cpu0, cpu1) = (cpus[0], cpus[1]);
    let devices = a.devices;
    let owner_thread = {
        let done = done.clone();
        std::thread::spawn(move || -> std::io::Result<(Duration, u64)> {
            net::pin_to_cpu(cpu1)?;
            let mut c = core(1, devices)?;
            let mut busy = Duration::ZERO;
            let mut applied = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                if consumer.has_pending() {
                    let t = Instant::now();
                    let n = consumer.drain(|f| {
                        c.ingest_forwarded(f, 1);
                    });
                    c.flush();
                    busy += t.elapsed();
                    applied += n as u64;
                } else if finished {
                    return Ok((busy, applied));
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    net::pin_to_cpu(cpu0)?;
    let mut c = core(0, a.devices)?;
    let mut decoder = StreamDecoder::default();
    let mut fed = 0u64;
    let mut waited = Duration::ZERO;
    let start_cpu = thread_cpu();
    'outer: loop {
        for chunk in stream.chunks(4096) {
            c.ingest_stream(
                &mut decoder,
                chunk,
                1,
                |_| {},
                |_, frame, _| {
                    // A full ring waits for the owner (time not counted): the
                    // measurement is the hand-off's work, not a drop.
                    while !producer.push(frame) {
                        let t = Instant::now();
                        producer.publish();
                        std::hint::spin_loop();
                        waited += t.elapsed();
                    }
                    true
                },
            );
            c.flush();
            producer.publish();
            fed += (chunk.len() / FRAME_BYTES) as u64;
            if fed >= a.frames {
                break 'outer;
            }
        }
    }
    let shard0 = thread_cpu()
        .saturating_sub(start_cpu)
        .saturating_sub(waited);
    done.store(true, Ordering::Release);
    let (busy1, applied1) = owner_thread.join().expect("owner thread")?;
    let applied = c.stats().heartbeats + applied1;
    anyhow::ensure!(applied == fed, "applied {applied} of {fed} frames");
    Ok(((shard0 + busy1).as_nanos() as f64 / fed as f64, applied))
}

pub fn run(a: HandoffArgs) -> anyhow::Result<()> {
    let cpus = ringbeat::config::parse_cpu_list(&a.cpus).unwrap_or_default();
    anyhow::ensure!(cpus.len() == 2, "--cpus wants two CPUs, e.g. 0,1");
    let (mut local, mut handed) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let (l, _) = run_mode(&a, &cpus, false)?;
        let (h, _) = run_mode(&a, &cpus, true)?;
        eprintln!(
            "run {}: local {l:.1} ns/frame, handed off {h:.1} ns/frame",
            run + 1
        );
        local.push(l);
        handed.push(h);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (l, h) = (median(&mut local), median(&mut handed));
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "devices": a.devices,
            "frames_per_run": a.frames,
            "runs": a.runs,
            "local_ns_per_frame": l,
            "handed_off_ns_per_frame": h,
            "handoff_cost_ns_per_frame": h - l,
            "handed_off_over_local": h / l,
            "local_runs": local,
            "handed_off_runs": handed,
        }))?
    );
    Ok(())
}
