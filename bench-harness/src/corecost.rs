//! `ringbeat-bench core-cost`: what one heartbeat costs the shard core itself, without
//! the kernel, the load generator or the machine's scheduling in the way: one shard
//! core (the server's, on mapped memory) takes pre-built 32-frame datagrams in a loop
//! on one pinned thread, as its engine hands them over, for three variants:
//!
//! * `v1`: version-1 frames, no registry;
//! * `v1-registry`: version-1 frames, every device listed in a registry without keys;
//! * `v2`: version-2 frames (SipHash-2-4-128 tags, replay counters), every device
//!   listed with a key.
//!
//! Each pass sends every device once, in one fixed random order (as the load
//! generator's gateways, and periodic devices, keep their phase), its seq one higher than in
//! the pass before (so nothing is a duplicate or a replay); the first pass, which
//! inserts the devices, is not timed. Passes alternate between the variants, whose
//! cores all stay alive, so a slow spell of the machine falls on all of them; the
//! fastest and the median pass of each are reported in ns per heartbeat, and each
//! variant's heartbeats per second against v1's. Each datagram is copied into a
//! small buffer before it is taken, as the kernel copies it into the buffer ring
//! (version 2's twice as many bytes cost that copy too). The whole server, kernel
//! receive included, is measured by `load` and `sweep`; this is the core's share.

use crate::net;
use crate::schedule::Rng;
use ringbeat::core::codec::{
    self, FrameFields, FLAG_ACK_REQUESTED, FRAME_V2_BYTES, MAX_DATAGRAM_BYTES,
};
use ringbeat::core::shard::CoreConfig;
use ringbeat::memory::{Core as ShardCore, Registry};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Clone, Debug)]
pub struct CoreCostArgs {
    /// Devices (each sends once per pass).
    #[arg(long, default_value_t = 2_000_000)]
    devices: u64,
    /// Heartbeats per datagram (1 to 32).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed passes per variant (after one untimed pass that inserts the devices).
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// One frame in this many asks for an ack (as the load generator's default).
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    /// The CPU the shard core runs on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Variants to run, comma-separated: v1, v1-registry, v2.
    #[arg(long, default_value = "v1,v1-registry,v2")]
    variants: String,
    /// Datagrams ahead whose lookups are started before a datagram is taken, as the
    /// engines do one ahead (`ShardCore::prefetch_datagram`); 0 turns it off.
    #[arg(long, default_value_t = 1)]
    ahead: usize,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    V1,
    V1Registry,
    V2,
}

impl Variant {
    fn parse(name: &str) -> anyhow::Result<Variant> {
        match name {
            "v1" => Ok(Variant::V1),
            "v1-registry" => Ok(Variant::V1Registry),
            "v2" => Ok(Variant::V2),
            _ => anyhow::bail!("--variants: unknown variant `{name}` (v1, v1-registry, v2)"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Variant::V1 => "v1",
            Variant::V1Registry => "v1-registry",
            Variant::V2 => "v2",
        }
    }
}

/// A device's key: fixed by its id, so every run builds the same registry.
fn key_of(id: u64) -> codec::Key {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    key[8..].copy_from_slice(&(!id).wrapping_mul(0xC2B2_AE3D_27D4_EB4F).to_le_bytes());
    key
}

struct Setup {
    variant: Variant,
    core: ShardCore,
    /// Nanoseconds per heartbeat of each timed pass.
    passes: Vec<f64>,
}

/// One pass's datagrams: every device once, in `order`, with sequence `seq`.
fn build_pass(a: &CoreCostArgs, v: Variant, ids: &[u64], order: &[u32], seq: u32) -> Vec<u8> {
    let unit = if v == Variant::V2 {
        FRAME_V2_BYTES
    } else {
        codec::FRAME_BYTES
    };
    let mut out = vec![0u8; order.len() * unit];
    for (n, (&i, frame)) in order.iter().zip(out.chunks_exact_mut(unit)).enumerate() {
        let id = ids[i as usize];
        let mut f = FrameFields::heartbeat(id, seq, 10, 0);
        if (n as u64).is_multiple_of(a.ack_every) {
            f.flags = FLAG_ACK_REQUESTED;
        }
        match v {
            Variant::V2 => {
                codec::encode_v2(&f, 1, &key_of(id), frame.try_into().expect("64 bytes"))
            }
            _ => f.encode(frame.try_into().expect("32 bytes")),
        }
    }
    out
}

/// Takes one pass's datagrams (`heartbeats` frames in all); returns ns per heartbeat.
/// (Not inlined: a profile tells its time from the building of the datagrams.)
#[inline(never)]
fn take_pass(
    core: &mut ShardCore,
    ahead: usize,
    datagrams: &[u8],
    datagram_bytes: usize,
    heartbeats: usize,
    start: Instant,
) -> f64 {
    let mut acks = [0u8; MAX_DATAGRAM_BYTES];
    let mut copy = [0u8; MAX_DATAGRAM_BYTES];
    let t = Instant::now();
    for (n, d) in datagrams.chunks(datagram_bytes).enumerate() {
        let next_at = (n + ahead) * datagram_bytes;
        if ahead > 0 && next_at < datagrams.len() {
            let end = (next_at + datagram_bytes).min(datagrams.len());
            core.prefetch_datagram(&datagrams[next_at..end]);
        }
        copy[..d.len()].copy_from_slice(d);
        let now_ms = start.elapsed().as_millis() as u64;
        let len = core.ingest_datagram(&copy[..d.len()], now_ms, &mut acks, |_, _, _| {
            unreachable!("one shard owns every device")
        });
        std::hint::black_box(&acks[..len]);
        if n % 16 == 15 {
            core.step(now_ms, ringbeat::core::shard::LIVENESS_SLICE);
        }
    }
    core.flush();
    t.elapsed().as_nanos() as f64 / heartbeats as f64
}

pub fn run(a: CoreCostArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&a.batch),
        "--batch {}: give 1 to 32 heartbeats per datagram",
        a.batch
    );
    anyhow::ensure!(
        a.devices > 0 && a.passes > 0 && a.ack_every > 0,
        "--devices, --passes and --ack-every must be at least 1"
    );
    let variants: Vec<Variant> = a
        .variants
        .split(',')
        .map(|v| Variant::parse(v.trim()))
        .collect::<anyhow::Result<_>>()?;
    net::pin_to_cpu(a.cpu)?;
    let mut rng = Rng(42);
    let ids: Vec<u64> = (0..a.devices).map(|_| rng.next_u64() | 1).collect();
    let start = Instant::now();
    let mut setups = Vec::new();
    for &variant in &variants {
        let mut core = ShardCore::new(
            CoreConfig {
                event_capacity: 1 << 16,
                ..CoreConfig::basic(0, 1, (a.devices + a.devices / 8) as u32)
            },
            0,
        )?;
        if variant != Variant::V1 {
            let text: String = ids
                .iter()
                .map(|&id| match variant {
                    Variant::V2 => {
                        let hex: String = key_of(id).iter().map(|b| format!("{b:02x}")).collect();
                        format!("{id} key={hex}\n")
                    }
                    _ => format!("{id}\n"),
                })
                .collect();
            let r = Registry::parse(&text, 1).map_err(|e| anyhow::anyhow!("registry: {e}"))?;
            core.set_registry(Some(Arc::new(r)), &[], 0)?;
        }
        setups.push(Setup {
            variant,
            core,
            passes: Vec::new(),
        });
    }
    // A fixed random order, the same every pass and for every variant, as the load
    // generator's gateways keep their phase (and periodic devices do).
    let mut order: Vec<u32> = (0..a.devices as u32).collect();
    rng.shuffle(&mut order);
    for pass in 0..=a.passes {
        for s in &mut setups {
            let datagrams = build_pass(&a, s.variant, &ids, &order, pass as u32 + 1);
            let unit = datagrams.len() / order.len();
            let ns_per_hb = take_pass(
                &mut s.core,
                a.ahead,
                &datagrams,
                unit * a.batch,
                order.len(),
                start,
            );
            if pass > 0 {
                s.passes.push(ns_per_hb);
            }
        }
    }
    let mut rows = Vec::new();
    let v1_best = setups
        .iter()
        .find(|s| s.variant == Variant::V1)
        .map(|s| min(&s.passes));
    println!("variant      best_ns_per_hb  median_ns_per_hb  vs_v1_best  heartbeats  refused");
    for s in &setups {
        let st = s.core.stats();
        let best = min(&s.passes);
        let median = median(&s.passes);
        let ratio = v1_best.map(|v1| v1 / best);
        let refused: u64 = st.refusals().iter().map(|(_, n)| n).sum::<u64>();
        println!(
            "{:<12} {:>14.1}  {:>16.1}  {:>10}  {:>10}  {:>7}",
            s.variant.name(),
            best,
            median,
            ratio.map_or("n/a (no v1)".into(), |r| format!("{r:.3}x")),
            st.heartbeats,
            refused
        );
        anyhow::ensure!(
            refused == 0 && st.heartbeats == a.devices * (a.passes as u64 + 1),
            "{}: {} heartbeats taken and {refused} refused of {} sent: the measurement is not of accepted heartbeats",
            s.variant.name(),
            st.heartbeats,
            a.devices * (a.passes as u64 + 1)
        );
        rows.push(json!({
            "variant": s.variant.name(),
            "ns_per_heartbeat_passes": s.passes,
            "best_ns_per_heartbeat": best,
            "median_ns_per_heartbeat": median,
            "heartbeats_per_second_vs_v1_best": ratio,
        }));
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "devices": a.devices, "batch": a.batch, "passes": a.passes,
            "ack_every": a.ack_every, "ahead": a.ahead, "variants": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
