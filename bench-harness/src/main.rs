//! `ringbeat-bench`: open-loop heartbeat load generator and latency recorder.
//!
//! * `load`: simulate N devices against a server, measure latency from the intended
//!   send time, report throughput, loss, generator lag and (given the server's pid and
//!   stats file) heartbeats per server core-second.
//! * `sink`: a minimal receiver that only counts and acks, to calibrate the generator.

#![forbid(unsafe_code)]

mod corecost;
mod garbage;
mod handoff;
mod latency;
mod liveness;
mod net;
mod procstat;
mod schedule;
mod sender;
mod sink;
mod sweep;
mod tcp_sender;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Parser)]
#[command(
    version,
    about = "Open-loop load generator and latency recorder for ringbeat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send heartbeats from simulated devices on an open-loop schedule.
    Load(Box<LoadArgs>),
    /// Receive, count and ack only: the generator's own ceiling.
    Sink(SinkArgs),
    /// Measure the CPU cost of liveness detection on the core under simulated time.
    Liveness(LivenessArgs),
    /// What handing a frame to its owner shard costs against applying it where it
    /// arrived (two shard cores, a real hand-off ring, a TCP stream).
    Handoff(handoff::HandoffArgs),
    /// What one heartbeat costs the shard core alone (no kernel, no load generator):
    /// version 1, version 1 with a registry, version 2, alternated pass by pass.
    CoreCost(corecost::CoreCostArgs),
    /// Run a rate scan or a device-count scan against a server it starts itself, and
    /// write a dated results folder with raw data, summary and plots.
    Sweep(Box<sweep::SweepArgs>),
    /// Redraw the plots of a sweep's results folder from its points.csv.
    Plot(PlotArgs),
}

#[derive(clap::Args, Clone, Debug)]
struct PlotArgs {
    /// A results folder written by `sweep`.
    dir: PathBuf,
}

#[derive(clap::Args, Clone, Debug)]
struct LivenessArgs {
    /// Simulated devices in the table.
    #[arg(long, default_value_t = 2_000_000)]
    devices: u64,
    /// Each device's heartbeat period, seconds.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Simulated seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Devices (per mille) that fall silent after the first third of the run.
    #[arg(long, default_value_t = 10)]
    silent_permille: u64,
    /// Liveness tick (the server's --tick-ms).
    #[arg(long, default_value_t = 10)]
    tick_ms: u32,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7979")]
    target: SocketAddr,
    /// Number of simulated devices (ids FIRST..FIRST+N, see --first-id).
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
    /// Id of the first simulated device, so several generators can load disjoint sets
    /// of devices (a steady population beside a flood, say).
    #[arg(long, default_value_t = 1)]
    first_id: u64,
    /// Each device's heartbeat period in seconds; the aggregate rate is devices/interval.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Aggregate heartbeats per second (overrides --interval: interval = devices/rate).
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Seconds of load, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start recorded but left out of the summary.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Ask for an ack on one frame in M (the latency sample); 0 = no acks.
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    #[command(flatten)]
    generator: GeneratorArgs,
    /// Transport: `udp` (datagrams of --batch frames) or `tcp` (held connections;
    /// each due gateway writes its --batch frames on its connection).
    #[arg(long, default_value = "udp")]
    proto: String,
    /// TCP connections to hold (over all sender threads); gateways are spread over
    /// them. As many as devices / --batch makes one connection per gateway (per device
    /// at --batch 1).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// TCP: write each connection's due frames every this many microseconds (a
    /// gateway's batching; 0 = as soon as they are due). Larger writes cost the
    /// generator's CPU less (on loopback it also runs the receiving side of TCP); the
    /// wait shows in the latency, which counts from the intended send time.
    #[arg(long, default_value_t = 200)]
    tcp_flush_us: u64,
    /// TCP: seconds to hold the open connections before the first heartbeat (to
    /// measure what connections alone cost the server).
    #[arg(long, default_value_t = 0.0)]
    tcp_hold: f64,
    /// Seconds to wait for outstanding acks after the last send.
    #[arg(long, default_value_t = 0.5)]
    grace: f64,
    /// Send authenticated version-2 frames (PROTOCOL.md), each tagged with its device's
    /// key from this file (the server's --devices-file format: `ID key=32HEX`); every
    /// device sent needs a key. Acks are checked against the same keys.
    #[arg(long, value_name = "FILE")]
    auth_keys: Option<PathBuf>,
    /// Server pid: sample its shard threads' CPU time (else looked up via --server-stats' owner is not possible; give it).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server's --stats-json file: its counters are reported beside ours.
    #[arg(long)]
    server_stats: Option<PathBuf>,
    /// Write everything as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency (from intended send time) percentile distribution here (.hgrm).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write one latency histogram per second here (.hlog, V2 + DEFLATE).
    #[arg(long)]
    hlog: Option<PathBuf>,
}

/// How the load looks: shared by `load` and `sweep`.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Load shape")]
pub struct ShapeArgs {
    /// Frames per datagram (a gateway packing K devices).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Each heartbeat leaves up to ± this fraction of its interval away from the
    /// device's phase (0 ..= 0.5; 0 = exactly periodic).
    #[arg(long, default_value_t = 0.0)]
    jitter: f64,
    /// Bursty load at the same average rate, `PERIOD_MS:DUTY`: each period's
    /// heartbeats go out in its first DUTY part (peak = average / DUTY), e.g. `100:0.1`.
    #[arg(long, value_name = "PERIOD_MS:DUTY", value_parser = schedule::Burst::parse)]
    burst: Option<schedule::Burst>,
    /// Seed of the device phases.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The generator's own resources and extras: shared by `load` and `sweep`.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Generator")]
pub struct GeneratorArgs {
    /// CPUs to run one pinned sender thread each on, e.g. `1` or `1-3`.
    #[arg(long, default_value = "1")]
    cpus: String,
    /// Source sockets (ports) per sender thread.
    #[arg(long, default_value_t = 64)]
    source_ports: usize,
    /// Send one datagram per buffer instead of UDP GSO (slower; for comparison).
    #[arg(long)]
    no_gso: bool,
    /// Also send this many garbage datagrams per second (rejected by the server: bad
    /// length or magic), from one more thread on the first --cpus CPU.
    #[arg(long, default_value_t = 0.0)]
    garbage_rate: f64,
    /// Count the server shard threads' system calls over the measured window with
    /// `perf stat -e raw_syscalls:sys_enter` (needs the server's pid and perf).
    #[arg(long)]
    count_syscalls: bool,
}

#[derive(clap::Args, Clone, Debug)]
struct SinkArgs {
    /// Address to receive heartbeats on (one SO_REUSEPORT socket per CPU).
    #[arg(long, default_value = "127.0.0.1:7979")]
    listen: SocketAddr,
    /// CPUs to run one pinned receiving thread each on, e.g. `0` or `0-1`.
    #[arg(long, default_value = "0")]
    cpus: String,
    /// Seconds to receive before exiting (and printing the counts).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Poll without ever sleeping (a full core per CPU): the latency floor that the
    /// generator and the kernel set, rather than the generator's throughput ceiling.
    #[arg(long)]
    busy: bool,
    /// SO_RCVBUF per socket, bytes (the server's default).
    #[arg(long, default_value_t = 4 << 20)]
    rcvbuf: usize,
    /// Rewrite the counters here every 500 ms (server key names: `heartbeats`,
    /// `datagrams`, `acks_sent`, `kernel_drops`), for `load --server-stats`.
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

fn main() {
    let result = match Cli::parse().command {
        Command::Load(a) => load(*a),
        Command::Sweep(a) => sweep::run(*a),
        Command::Plot(a) => sweep::plot(&a.dir),
        Command::Liveness(a) => liveness_cmd(a),
        Command::Handoff(a) => handoff::run(a),
        Command::CoreCost(a) => corecost::run(a),
        Command::Sink(a) => {
            let cpus = ringbeat::config::parse_cpu_list(&a.cpus)
                .context("--cpus")
                .unwrap_or_else(|e| exit_err(e));
            let (tx, rx) = mpsc::channel();
            let o = sink::SinkOptions {
                listen: a.listen,
                cpus,
                duration: Duration::from_secs_f64(a.duration),
                busy: a.busy,
                rcvbuf_bytes: a.rcvbuf,
                stats_json: a.stats_json,
            };
            let t = std::thread::spawn(move || sink::run(&o, Default::default(), tx));
            if let Ok(addr) = rx.recv() {
                eprintln!("sink listening on {addr}");
            }
            t.join().expect("sink thread")
        }
    };
    if let Err(e) = result {
        exit_err(e);
    }
}

fn liveness_cmd(a: LivenessArgs) -> anyhow::Result<()> {
    if let Some(cpu) = a.cpu {
        net::pin_to_cpu(cpu)?;
    }
    let r = liveness::run(
        a.devices,
        a.interval,
        a.seconds,
        a.silent_permille,
        a.tick_ms,
    )?;
    let share = r.advance_cpu_s / r.simulated_s;
    let doc = json!({
        "devices": r.devices, "interval_s": a.interval, "simulated_s": r.simulated_s, "tick_ms": a.tick_ms,
        "advance_cpu_s": r.advance_cpu_s, "liveness_core_share": share,
        "rechecks_per_s": r.rechecks as f64 / r.simulated_s, "events": r.events,
        "heartbeats": r.heartbeats, "core_ns_per_heartbeat": r.ingest_cpu_s * 1e9 / r.heartbeats.max(1) as f64,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    eprintln!(
        "liveness at {} devices / {} s interval: {:.2}% of a core ({:.0} rechecks/s, {} events); core ingest {:.0} ns/heartbeat",
        r.devices, a.interval, share * 100.0, r.rechecks as f64 / r.simulated_s, r.events,
        r.ingest_cpu_s * 1e9 / r.heartbeats.max(1) as f64
    );
    Ok(())
}

fn exit_err(e: anyhow::Error) -> ! {
    eprintln!("error: {e:#}");
    std::process::exit(1);
}

/// Quantile `q` in µs; None (null in the JSON) when nothing was recorded.
fn pct(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// Server measurements at one instant.
#[derive(Default)]
struct ServerSample {
    cpu_s: f64,
    threads: usize,
    voluntary_switches: u64,
    stats: Option<serde_json::Value>,
}

/// Name prefix of the receiving threads of `pid`: the server's shards (`rb-shard-N`,
/// or `ringbeat-shard-N` in builds before the threads' names were shortened to fit the
/// kernel's 15 characters, which regression runs still measure), or the bare
/// receiver's threads when the target is `ringbeat-bench sink`.
fn receiver_threads(pid: u32) -> &'static str {
    ["rb-shard-", sink::THREAD_PREFIX]
        .into_iter()
        .find(|p| procstat::thread_ids(pid, p).is_ok_and(|t| !t.is_empty()))
        .unwrap_or("ringbeat-shard")
}

fn sample_server(a: &LoadArgs) -> Option<ServerSample> {
    let t = a
        .server_pid
        .and_then(|pid| procstat::sample_threads(pid, receiver_threads(pid)).ok())
        .unwrap_or_default();
    let stats = a.server_stats.as_deref().and_then(procstat::read_stats);
    (a.server_pid.is_some() || stats.is_some()).then_some(ServerSample {
        cpu_s: t.cpu_s,
        threads: t.threads,
        voluntary_switches: t.voluntary_switches,
        stats,
    })
}

fn counter(s: &ServerSample, key: &str) -> u64 {
    s.stats.as_ref().and_then(|v| v[key].as_u64()).unwrap_or(0)
}

fn load(a: LoadArgs) -> anyhow::Result<()> {
    let doc = run_load(&a)?;
    let (expected, received) = (
        doc["acks"]["expected_whole_run"].as_u64().unwrap_or(0),
        doc["acks"]["received_whole_run"].as_u64().unwrap_or(0),
    );
    if expected > 0 && received == 0 {
        bail!(
            "no ack came back from {} ({expected} asked for): is a server listening there? \
             (start one with `ringbeat serve --listen {}`, or give --target)",
            a.target,
            a.target
        );
    }
    Ok(())
}

/// Runs one load and returns its summary document (also printed and written to the
/// files `a` names).
fn run_load(a: &LoadArgs) -> anyhow::Result<serde_json::Value> {
    let tcp = match a.proto.as_str() {
        "udp" => false,
        "tcp" => true,
        other => bail!("--proto {other}: udp or tcp"),
    };
    if tcp && a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let most = if a.auth_keys.is_some() {
        ringbeat::core::codec::MAX_DATAGRAM_BYTES / ringbeat::core::codec::FRAME_V2_BYTES
    } else {
        ringbeat::core::codec::MAX_FRAMES_PER_DATAGRAM
    };
    if a.shape.batch == 0 || a.shape.batch > most {
        bail!("--batch must be 1..={most} (a datagram holds at most 2,048 bytes)");
    }
    let auth = match &a.auth_keys {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --auth-keys {}", path.display()))?;
            let keys = ringbeat::core::registry::Registry::parse(&text, 1)
                .map_err(|e| anyhow::anyhow!("--auth-keys {} {e}", path.display()))?;
            let boot = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as u32);
            Some(sender::Auth {
                keys: std::sync::Arc::new(keys),
                boot,
            })
        }
    };
    if !(0.0..=0.5).contains(&a.shape.jitter) {
        bail!("--jitter must be between 0 and 0.5 (a fraction of the interval)");
    }
    if a.first_id == 0 {
        bail!("--first-id must be at least 1 (device id 0 is invalid on the wire)");
    }
    if a.devices == 0 || a.duration <= a.warmup {
        bail!("need --devices > 0 and --duration > --warmup");
    }
    let cpus =
        ringbeat::config::parse_cpu_list(&a.generator.cpus).context("--cpus is not a CPU list")?;
    let rate = a.rate.unwrap_or(a.devices as f64 / a.interval);
    let interval_s = a.devices as f64 / rate;
    let interval_ds = (interval_s * 10.0).round().clamp(1.0, u16::MAX as f64) as u16;
    // TCP: every connection is open before the clock starts.
    let mut streams: Vec<Vec<std::net::TcpStream>> = Vec::new();
    if tcp {
        let nofile = ringbeat::engine::raise_nofile();
        if a.connections as u64 + 64 > nofile {
            bail!(
                "--connections {} needs as many descriptors, the open-files limit is {nofile}: raise it (`ulimit -Hn`, as root) or ask for fewer",
                a.connections
            );
        }
        let opened = Instant::now();
        let per = a.connections.div_ceil(cpus.len());
        for i in 0..cpus.len() {
            let n = per.min(a.connections - (i * per).min(a.connections)).max(1);
            streams.push(
                tcp_sender::connect(a.target, n, i * per)
                    .with_context(|| format!("connecting to {} over TCP", a.target))?,
            );
        }
        eprintln!(
            "load: {} TCP connections open in {:.2} s",
            streams.iter().map(Vec::len).sum::<usize>(),
            opened.elapsed().as_secs_f64()
        );
    }
    let mut streams = streams.into_iter();
    let hold = Duration::from_millis(50)
        + Duration::from_secs_f64(if tcp { a.tcp_hold.max(0.0) } else { 0.0 });
    let start = Instant::now() + hold;
    let start_wall = SystemTime::now() + hold;
    let (tx, rx) = mpsc::channel();
    let cfg = sender::SenderConfig {
        target: a.target,
        cpu: None,
        source_ports: a.generator.source_ports,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        ack_every: a.ack_every,
        interval_ds,
        gso: !a.generator.no_gso,
        grace: Duration::from_secs_f64(a.grace),
        jitter: a.shape.jitter,
        auth,
    };
    let threads: Vec<_> = cpus
        .iter()
        .enumerate()
        .map(|(i, &cpu)| {
            let sched = schedule::Schedule::new(
                a.devices,
                a.first_id,
                cpus.len(),
                i,
                a.shape.batch,
                rate,
                a.shape.seed,
            )
            .with_burst(a.shape.burst);
            if i == 0 {
                eprintln!(
                    "load: each device sends every {:.3} s",
                    sched.device_interval_ns() / 1e9
                );
            }
            let cfg = sender::SenderConfig {
                cpu: Some(cpu),
                ..cfg.clone()
            };
            let tx = tx.clone();
            match streams.next() {
                Some(conns) => {
                    let flush = Duration::from_micros(a.tcp_flush_us);
                    std::thread::spawn(move || {
                        tcp_sender::run(i, cfg, sched, conns, flush, start, tx)
                    })
                }
                None => std::thread::spawn(move || sender::run(i, cfg, sched, start, tx)),
            }
        })
        .collect();
    drop(tx);
    let flood = (a.generator.garbage_rate > 0.0).then(|| {
        let (target, rate, cpu) = (a.target, a.generator.garbage_rate, cpus.first().copied());
        let duration = Duration::from_secs_f64(a.duration);
        std::thread::spawn(move || garbage::flood(target, rate, start, duration, cpu))
    });
    eprintln!(
        "load: {} devices, {:.0} hb/s ({:.0} datagrams/s, {} per datagram), interval {:.3} s, {} s (warm-up {} s), acks 1/{}",
        a.devices, rate, rate / a.shape.batch as f64, a.shape.batch, interval_s, seconds(a.duration), seconds(a.warmup), a.ack_every
    );
    // Progress and interval log; server samples at the end of warm-up and of the load.
    let mut intervals: Vec<(Duration, Histogram<u64>)> = Vec::new();
    let mut second = latency::histogram();
    let mut so_far = latency::histogram();
    let (mut frames, mut acks, mut lag_ns, mut reports) = (0u64, 0u64, 0u64, 0usize);
    let mut before: Option<ServerSample> = None;
    let mut after: Option<ServerSample> = None;
    let mut syscalls: Option<procstat::SyscallCount> = None;
    let warmup_at = start + Duration::from_secs_f64(a.warmup);
    let end_at = start + Duration::from_secs_f64(a.duration);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(iv) => {
                second.add(&iv.latency).ok();
                so_far.add(&iv.latency).ok();
                frames += iv.frames_sent;
                acks += iv.acks_received;
                lag_ns = lag_ns.max(iv.lag_ns);
                reports += 1;
                if reports.is_multiple_of(cpus.len()) {
                    let t = start.elapsed();
                    eprintln!(
                        "[{:5.1}s] offered {:.0} hb/s, sent {:.0} hb/s, acks {}/s, p99 {} µs (so far {}), lag {:.1} ms{}",
                        t.as_secs_f64(),
                        rate,
                        frames as f64,
                        acks,
                        pct(&second, 0.99).map_or("-".into(), |v| format!("{v:.1}")),
                        pct(&so_far, 0.99).map_or("-".into(), |v| format!("{v:.1}")),
                        lag_ns as f64 / 1e6,
                        if lag_ns > 10_000_000 { "  GENERATOR BEHIND SCHEDULE" } else { "" }
                    );
                    intervals.push((
                        t.saturating_sub(Duration::from_secs(1)),
                        std::mem::replace(&mut second, latency::histogram()),
                    ));
                    frames = 0;
                    acks = 0;
                    lag_ns = 0;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if before.is_none() && now >= warmup_at {
            before = sample_server(a).or(Some(ServerSample::default()));
            if let (true, Some(pid)) = (a.generator.count_syscalls, a.server_pid) {
                let tids = procstat::thread_ids(pid, receiver_threads(pid)).unwrap_or_default();
                let secs = end_at.saturating_duration_since(now).as_secs_f64();
                syscalls = match procstat::SyscallCount::start(&tids, secs) {
                    Ok(c) if !tids.is_empty() => Some(c),
                    Ok(_) => None,
                    Err(e) => {
                        eprintln!("cannot count system calls (perf): {e}");
                        None
                    }
                };
            }
        }
        if after.is_none() && now >= end_at {
            after = sample_server(a).or(Some(ServerSample::default()));
        }
    }
    let mut totals = sender::Totals::default();
    let (mut intended, mut service, mut lag) = (
        latency::histogram(),
        latency::histogram(),
        latency::histogram(),
    );
    for t in threads {
        let r = t.join().expect("sender thread").context("sender")?;
        intended.add(&r.intended).ok();
        service.add(&r.service).ok();
        lag.add(&r.lag).ok();
        let x = r.totals;
        totals.frames_sent += x.frames_sent;
        totals.datagrams_sent += x.datagrams_sent;
        totals.send_errors += x.send_errors;
        totals.send_eagain_frames += x.send_eagain_frames;
        totals.acks_expected += x.acks_expected;
        totals.acks_received += x.acks_received;
        totals.acks_expected_measured += x.acks_expected_measured;
        totals.acks_received_measured += x.acks_received_measured;
        totals.acks_unmatched += x.acks_unmatched;
        totals.acks_refused += x.acks_refused;
        totals.acks_bad_tag += x.acks_bad_tag;
        totals.late_datagrams_1ms += x.late_datagrams_1ms;
    }
    let measured_s = a.duration - a.warmup;
    let behind = lag.value_at_quantile(0.99) > 1_000_000;
    let syscalls = syscalls.and_then(procstat::SyscallCount::finish);
    let garbage_sent = match flood {
        Some(t) => t.join().expect("flood thread").context("garbage flood")?,
        None => 0,
    };
    let mut doc = summary_json(
        a,
        rate,
        measured_s,
        &totals,
        &intended,
        &service,
        &lag,
        before.as_ref(),
        after.as_ref(),
    );
    doc["garbage"] = json!({ "rate": a.generator.garbage_rate, "sent": garbage_sent });
    if let (Some(n), Some(server)) = (syscalls, doc["server"].as_object_mut()) {
        let hb = server["heartbeats"].as_u64();
        server.insert("syscalls".into(), n.into());
        server.insert("syscalls_per_s".into(), (n as f64 / measured_s).into());
        server.insert("heartbeats_per_syscall".into(), ratio(hb, Some(n)).into());
    }
    print_summary(&doc, behind);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.hgrm {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        latency::write_hgrm(&intended, &mut f)?;
    }
    if let Some(p) = &a.hlog {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        latency::write_hlog(&intervals, start_wall, Duration::from_secs(1), &mut f)?;
    }
    Ok(doc)
}

#[allow(clippy::too_many_arguments)]
fn summary_json(
    a: &LoadArgs,
    rate: f64,
    measured_s: f64,
    t: &sender::Totals,
    intended: &Histogram<u64>,
    service: &Histogram<u64>,
    lag: &Histogram<u64>,
    before: Option<&ServerSample>,
    after: Option<&ServerSample>,
) -> serde_json::Value {
    let lat = |h: &Histogram<u64>| {
        json!({
            "count": h.len(), "p50_us": pct(h, 0.5), "p90_us": pct(h, 0.9), "p99_us": pct(h, 0.99),
            "p999_us": pct(h, 0.999), "max_us": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
        })
    };
    let server = match (before, after) {
        (Some(b), Some(e)) if e.stats.is_some() || e.threads > 0 => {
            // What was not read is null, never 0: the counters need --server-stats,
            // the CPU time and the kernel's wake-ups --server-pid, and a ratio over
            // nothing (a server that never slept has no heartbeats per wake-up) is null.
            let d = |k: &str| {
                e.stats
                    .is_some()
                    .then(|| counter(e, k).saturating_sub(counter(b, k)))
            };
            let timed = e.threads > 0;
            let cpu = timed.then_some(e.cpu_s - b.cpu_s);
            let hb = d("heartbeats");
            let switches = timed.then(|| e.voluntary_switches.saturating_sub(b.voluntary_switches));
            json!({
                "cpu_seconds": cpu, "shard_threads": e.threads, "heartbeats": hb, "datagrams": d("datagrams"),
                "heartbeats_per_core_second": match (hb, cpu) {
                    (Some(hb), Some(cpu)) if cpu > 0.0 => Some(hb as f64 / cpu),
                    _ => None,
                },
                "cpu_utilisation": cpu.map(|c| c / measured_s),
                "kernel_drops": d("kernel_drops"), "ring_dry": d("ring_dry"), "forward_drops": d("forward_drops"),
                "cqes": d("cqes"), "enters": d("enters"), "wakeups": d("wakeups"),
                "wakeups_per_s": d("wakeups").map(|w| w as f64 / measured_s),
                "heartbeats_per_wakeup": ratio(hb, d("wakeups")),
                "cqes_per_enter": ratio(d("cqes"), d("enters")),
                "kernel_wakeups_per_s": switches.map(|w| w as f64 / measured_s),
                "heartbeats_per_kernel_wakeup": ratio(hb, switches),
                "malformed_total": d("malformed_total"), "table_full": d("table_full"),
                "frames_valid": d("frames_valid"), "forwarded": d("forwarded"),
            })
        }
        _ => serde_json::Value::Null,
    };
    json!({
        "config": {
            "target": a.target.to_string(), "devices": a.devices, "first_id": a.first_id, "rate_hb_per_s": rate, "batch": a.shape.batch,
            "duration_s": a.duration, "warmup_s": a.warmup, "ack_every": a.ack_every, "cpus": a.generator.cpus,
            "source_ports": a.generator.source_ports, "gso": !a.generator.no_gso, "jitter": a.shape.jitter,
            "burst": a.shape.burst.map(|b| format!("{}:{}", b.period_ns / 1e6, b.duty)),
        },
        "sent": {
            "frames": t.frames_sent, "datagrams": t.datagrams_sent, "send_errors": t.send_errors,
            "generator_drops_eagain_frames": t.send_eagain_frames,
            "achieved_hb_per_s": t.frames_sent as f64 / a.duration,
        },
        "acks": {
            // The measured window, like every other figure; the whole run beside it.
            "expected": t.acks_expected_measured, "received": t.acks_received_measured,
            "missing": t.acks_expected_measured.saturating_sub(t.acks_received_measured),
            "expected_whole_run": t.acks_expected, "received_whole_run": t.acks_received,
            "missing_whole_run": t.acks_expected.saturating_sub(t.acks_received),
            "unmatched": t.acks_unmatched,
            // Whole run: acks saying the heartbeat was refused (non-zero status), and
            // version-2 acks whose tag was wrong.
            "refused_whole_run": t.acks_refused,
            "bad_tag_whole_run": t.acks_bad_tag,
        },
        "latency_intended": lat(intended),
        "latency_service": lat(service),
        "generator": {
            "lag": lat(lag), "late_datagrams_over_1ms": t.late_datagrams_1ms,
            "kept_schedule": lag.value_at_quantile(0.99) <= 1_000_000,
        },
        "server": server,
    })
}

/// `n / m` when both were read and `m` is not zero (a ratio over nothing is null in
/// the summary, never `n / 1`).
fn ratio(n: Option<u64>, m: Option<u64>) -> Option<f64> {
    match (n, m) {
        (Some(n), Some(m)) if m > 0 => Some(n as f64 / m as f64),
        _ => None,
    }
}

/// A measured value, or what is missing instead of NaN.
fn shown(v: &serde_json::Value, decimals: usize, missing: &str) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => missing.to_string(),
    }
}

/// The results summary goes to standard output (what a script captures); progress and
/// warnings go to standard error.
fn print_summary(d: &serde_json::Value, behind: bool) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let l = &d["latency_intended"];
    let s = &d["latency_service"];
    println!("\n                      p50       p90       p99      p999       max   (µs)");
    for (name, h) in [
        ("from intended send", l),
        ("service time", s),
        ("generator lag", &d["generator"]["lag"]),
    ] {
        if h["count"].as_u64() == Some(0) {
            println!("{name:<18} no samples (no acks came back)");
            continue;
        }
        println!(
            "{name:<18} {:>9} {:>9} {:>9} {:>9} {:>9}",
            shown(&h["p50_us"], 1, "-"),
            shown(&h["p90_us"], 1, "-"),
            shown(&h["p99_us"], 1, "-"),
            shown(&h["p999_us"], 1, "-"),
            shown(&h["max_us"], 1, "-")
        );
    }
    println!(
        "sent {} frames in {} datagrams ({:.0} hb/s); acks in the measured window {}/{} ({} missing); generator drops {}",
        d["sent"]["frames"],
        d["sent"]["datagrams"],
        f(&d["sent"]["achieved_hb_per_s"]),
        d["acks"]["received"],
        d["acks"]["expected"],
        d["acks"]["missing"],
        d["sent"]["generator_drops_eagain_frames"]
    );
    let (refused, bad_tag) = (
        d["acks"]["refused_whole_run"].as_u64().unwrap_or(0),
        d["acks"]["bad_tag_whole_run"].as_u64().unwrap_or(0),
    );
    if refused + bad_tag > 0 {
        println!(
            "the server refused {refused} of the acked heartbeats (non-zero ack status: see its log and PROTOCOL.md); {bad_tag} version-2 acks had a wrong tag"
        );
    }
    if d["garbage"]["sent"].as_u64().unwrap_or(0) > 0 {
        println!(
            "garbage: {} datagrams sent beside the load; server rejected {} as malformed",
            d["garbage"]["sent"],
            shown(
                &d["server"]["malformed_total"],
                0,
                "n/a (give --server-stats)"
            )
        );
    }
    if !d["server"].is_null() {
        let sv = &d["server"];
        if let Some(n) = sv["syscalls"].as_u64() {
            println!(
                "server system calls: {n} ({:.0}/s, {} heartbeats per call)",
                f(&sv["syscalls_per_s"]),
                shown(&sv["heartbeats_per_syscall"], 1, "n/a")
            );
        }
        if sv["heartbeats"].is_null() {
            println!(
                "server: {} cores busy, {} wake-ups/s by the kernel's count; its counters (heartbeats, drops, wake-ups) need --server-stats",
                shown(&sv["cpu_utilisation"], 2, "n/a"),
                shown(&sv["kernel_wakeups_per_s"], 0, "n/a")
            );
        } else {
            let no_cpu = "n/a (give --server-pid for the server's CPU time)";
            println!(
                "server: {} hb per core-second ({} cores busy), kernel drops {}, ring dry {}, {} wakeups/s ({} by the kernel's count), {} hb/wakeup, {} cqes/enter",
                shown(&sv["heartbeats_per_core_second"], 0, no_cpu),
                shown(&sv["cpu_utilisation"], 2, "n/a"),
                sv["kernel_drops"],
                sv["ring_dry"],
                shown(&sv["wakeups_per_s"], 0, "n/a"),
                shown(&sv["kernel_wakeups_per_s"], 0, "n/a"),
                shown(&sv["heartbeats_per_wakeup"], 1, "n/a (it never slept)"),
                shown(&sv["cqes_per_enter"], 1, "n/a (no enters)")
            );
        }
    } else {
        println!("server: not measured (give --server-pid and --server-stats for its CPU time and counters)");
    }
    if behind {
        eprintln!("WARNING: the generator did not keep its schedule (p99 send lag > 1 ms): results measure the generator, not the server");
    }
}

/// Seconds as a person reads them: at most three decimals, trailing zeros dropped
/// (`4.333`, `3`), where `{}` would print a default warm-up as `4.333333333333334`.
pub(crate) fn seconds(s: f64) -> String {
    let t = format!("{s:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod seconds_tests {
    #[test]
    fn seconds_read_as_written() {
        assert_eq!(super::seconds(10.0 / 3.0 + 1.0), "4.333");
        assert_eq!(super::seconds(3.0), "3");
        assert_eq!(super::seconds(0.25), "0.25");
        assert_eq!(super::seconds(12.5), "12.5");
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    fn load_args() -> LoadArgs {
        match Cli::try_parse_from(["ringbeat-bench", "load"])
            .unwrap()
            .command
        {
            Command::Load(a) => *a,
            _ => unreachable!(),
        }
    }

    fn server(before: &ServerSample, after: &ServerSample) -> serde_json::Value {
        let h = Histogram::<u64>::new(3).unwrap();
        let t = sender::Totals::default();
        let a = load_args();
        summary_json(&a, 1e6, 8.0, &t, &h, &h, &h, Some(before), Some(after))["server"].clone()
    }

    fn stats(heartbeats: u64, wakeups: u64) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "heartbeats": heartbeats, "wakeups": wakeups, "kernel_drops": 7,
            "cqes": 0, "enters": 0,
        }))
    }

    #[test]
    fn counters_not_read_are_null_not_zero() {
        // CPU time only (--server-pid without --server-stats).
        let cpu = |s: f64| ServerSample {
            cpu_s: s,
            threads: 1,
            voluntary_switches: 10,
            stats: None,
        };
        let s = server(&cpu(1.0), &cpu(9.0));
        assert_eq!(s["cpu_utilisation"].as_f64(), Some(1.0));
        for k in [
            "heartbeats",
            "heartbeats_per_core_second",
            "kernel_drops",
            "ring_dry",
            "wakeups_per_s",
            "heartbeats_per_wakeup",
        ] {
            assert!(s[k].is_null(), "{k} without --server-stats: {}", s[k]);
        }
        // Counters only (--server-stats without --server-pid).
        let counted = |hb: u64| ServerSample {
            stats: stats(hb, 0),
            ..ServerSample::default()
        };
        let s = server(&counted(0), &counted(800));
        assert_eq!(s["heartbeats"].as_u64(), Some(800));
        assert_eq!(s["kernel_drops"].as_u64(), Some(0));
        for k in [
            "cpu_utilisation",
            "heartbeats_per_core_second",
            "kernel_wakeups_per_s",
        ] {
            assert!(s[k].is_null(), "{k} without --server-pid: {}", s[k]);
        }
    }

    #[test]
    fn a_ratio_over_nothing_is_null() {
        // A server that never slept over the window: no wake-ups, no enters.
        let b = ServerSample {
            cpu_s: 1.0,
            threads: 1,
            voluntary_switches: 5,
            stats: stats(0, 3),
        };
        let e = ServerSample {
            cpu_s: 9.0,
            threads: 1,
            voluntary_switches: 5,
            stats: stats(8_000_000, 3),
        };
        let s = server(&b, &e);
        assert_eq!(s["heartbeats_per_core_second"].as_f64(), Some(1e6));
        assert_eq!(s["kernel_wakeups_per_s"].as_f64(), Some(0.0));
        for k in [
            "heartbeats_per_wakeup",
            "heartbeats_per_kernel_wakeup",
            "cqes_per_enter",
        ] {
            assert!(s[k].is_null(), "{k} over zero: {}", s[k]);
        }
    }
}
