//! The `ringbeat` binary: argument parsing, logging and the main thread's life
//! (start shards, report stats each interval, stop on SIGINT/SIGTERM or `--run-for`).

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ringbeat::config::ServeArgs;
use ringbeat::core::stats::ShardStats;
use ringbeat::sys::notify::Signal;
use ringbeat::{engine, preflight, report};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Least time between two "events dropped" warnings.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `ringbeat --version`: the crate version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("RINGBEAT_REVISION"),
    ")"
);

/// Heartbeat ingestion and device liveness server.
#[derive(Parser, Debug)]
#[command(version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive heartbeats and track device liveness (one pinned io_uring shard per CPU).
    /// A flag given twice takes its last value.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Check the kernel and limits the server needs; prints a verdict and a fix per line.
    #[command(args_override_self = true)]
    Check(ServeArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // clap answers --help, --version and syntax errors; the subcommand's flags are then
    // parsed again together with the --config file's keys (see `config`).
    let command = Cli::parse().command;
    let flags = std::env::args_os()
        .skip(1)
        .skip_while(|a| a != "serve" && a != "check")
        .skip(1);
    let result = ServeArgs::parse_flags(flags)
        .map_err(anyhow::Error::from)
        .and_then(|args| match command {
            Command::Serve(_) => serve(args),
            Command::Check(_) => check(args),
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a message that already quotes its cause
/// (`cannot read X: No such file...`) does not repeat it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn check(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.into_config()?;
    let checks = preflight::run_checks(&config).checks;
    print!("{}", preflight::render(&checks));
    let failed = checks.iter().any(|c| c.verdict == preflight::Verdict::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.into_config()?;
    let preflight = preflight::require(&config)?;
    config.engine = preflight.engine;
    for c in preflight.checks {
        if c.verdict == preflight::Verdict::Warn {
            tracing::warn!("{}: {} — {}", c.name, c.value, c.fix);
        }
    }
    // Before any thread exists, so every thread inherits the mask and only the main
    // thread's sigtimedwait takes SIGINT/SIGTERM.
    ringbeat::sys::notify::block_signals();
    let started = Instant::now();
    // Held until serve returns: the request ends when the device is closed.
    let _cpu_latency = config
        .process
        .cpu_dma_latency_us
        .map(|us| {
            ringbeat::sys::pmqos::CpuLatencyRequest::hold(us).with_context(|| {
                format!(
                    "--cpu-dma-latency-us {us}: cannot write /dev/cpu_dma_latency (run as root)"
                )
            })
        })
        .transpose()?;
    tracing::debug!(?config, "configuration (file keys and flags, validated)");
    let mut server = engine::start(&config)?;
    // The server holds the registry now (and drops it on a reload); kept here too, the
    // first one would stay resident for the process's life.
    config.network.registry = None;
    for info in &server.infos {
        tracing::debug!(
            shard = info.index,
            cpu = info.cpu,
            numa_node = info.numa_node,
            arena_bytes = info.arena_bytes,
            min_wait = info.min_wait_supported,
            "shard ready"
        );
    }
    let rcv = server.rcvbuf;
    if rcv.clamped {
        tracing::warn!(
            "SO_RCVBUF clamped to {} bytes (asked {}): run `sysctl -w net.core.rmem_max={}` or grant CAP_NET_ADMIN",
            rcv.effective_bytes / 2,
            rcv.requested_bytes,
            rcv.requested_bytes
        );
    }
    tracing::info!(
        listen = %server.listen,
        shards = config.shards(),
        engine = ?config.engine,
        rcvbuf_effective_bytes = rcv.effective_bytes,
        rcvbuf_forced = rcv.forced,
        version = VERSION,
        "ringbeat listening on {}",
        server.listen
    );
    ringbeat::notify_systemd::notify("READY=1");
    let listen = server.listen.to_string();
    let stats_error_logged = std::sync::Mutex::new(None::<Instant>);
    let write_stats = |server: &engine::Server| {
        if let Some(path) = &config.outputs.stats_json {
            let mut doc = report::stats_json(
                &server.snapshot(),
                &server.infos,
                started.elapsed(),
                &listen,
            );
            if let Some(s) = &server.snapshot_stats {
                doc["snapshot"] = report::snapshot_json(s);
            }
            if let Some(s) = &server.event_stats {
                doc["events_output"] = s.json();
            }
            if let Some(m) = &server.mqtt_stats {
                doc["mqtt"] = m.json();
            }
            if let Err(e) = report::write_atomically(path, &doc) {
                let mut last = stats_error_logged.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::error!(
                        "writing {} failed: {e} (said at most once a minute)",
                        path.display()
                    );
                }
            }
        }
    };
    let total = |s: &[ShardStats]| ShardStats::total(s);
    let mut prev = total(&server.snapshot());
    let mut last = Instant::now();
    let mut summary_prev = prev;
    let mut last_summary = Instant::now();
    let summary_every = config.outputs.summary_interval;
    let mut last_snapshot = Instant::now();
    let deadline = config.process.run_for.map(|d| started + d);
    let mut last_drop_warning: Option<Instant> = None;
    let watchdog = ringbeat::notify_systemd::watchdog_interval();
    let mut last_watchdog = Instant::now();
    let mut stuck_said = false;
    loop {
        let mut wait = config.outputs.stats_interval.saturating_sub(last.elapsed());
        if let Some(every) = watchdog {
            wait = wait.min(every.saturating_sub(last_watchdog.elapsed()));
        }
        if !config.outputs.quiet {
            wait = wait.min(summary_every.saturating_sub(last_summary.elapsed()));
        }
        if config.snapshot.path.is_some() {
            wait = wait.min(
                config
                    .snapshot
                    .interval
                    .saturating_sub(last_snapshot.elapsed()),
            );
        }
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        match ringbeat::sys::notify::wait_signal(wait.max(Duration::from_millis(1))) {
            Some(Signal::Stop(sig)) => {
                tracing::info!("signal {sig}: stopping");
                break;
            }
            Some(Signal::Reopen) => {
                tracing::info!("SIGHUP: reopening the events file");
                server.reopen_outputs();
                if let Some(path) = &config.network.devices_file {
                    match server.reload_registry() {
                        Ok((devices, keyed, forgotten)) => tracing::info!(
                            devices,
                            keyed,
                            forgotten,
                            "SIGHUP: reloaded the devices file {}",
                            path.display()
                        ),
                        Err(e) => tracing::error!(
                            "SIGHUP: the devices file was not reloaded, the one loaded before stays in use: {e}"
                        ),
                    }
                }
                continue;
            }
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::info!("--run-for elapsed: stopping");
            break;
        }
        if let Some(every) = watchdog.filter(|&e| last_watchdog.elapsed() >= e) {
            // Pinged only while every shard loops: a stuck one lets systemd restart us.
            let stale = server.shared.stale_shards();
            if stale.is_empty() {
                ringbeat::notify_systemd::notify("WATCHDOG=1");
                stuck_said = false;
            } else if !stuck_said {
                stuck_said = true;
                tracing::error!(
                    ?stale,
                    "shards stopped looping: not pinging the systemd watchdog (it restarts the server after WatchdogSec={:?})",
                    every * 2
                );
            }
            last_watchdog = Instant::now();
        }
        if config.snapshot.path.is_some() && last_snapshot.elapsed() >= config.snapshot.interval {
            server.request_snapshot();
            last_snapshot = Instant::now();
        }
        if !config.outputs.quiet && last_summary.elapsed() >= summary_every {
            let now = total(&server.snapshot());
            eprintln!(
                "{}",
                report::summary_line(&summary_prev, &now, last_summary.elapsed().as_secs_f64())
            );
            summary_prev = now;
            last_summary = Instant::now();
        }
        if last.elapsed() >= config.outputs.stats_interval {
            let now = total(&server.snapshot());
            write_stats(&server);
            if now.events_dropped > prev.events_dropped
                && last_drop_warning.is_none_or(|t: Instant| t.elapsed() >= DROP_WARN_EVERY)
            {
                last_drop_warning = Some(Instant::now());
                tracing::warn!(
                    dropped = now.events_dropped - prev.events_dropped,
                    dropped_total = now.events_dropped,
                    "events dropped: the event writer fell behind (a slow consumer of --events, or a slow disk); their count is in events_dropped, and each shard's event_seq shows the gaps"
                );
            }
            prev = now;
            last = Instant::now();
        }
    }
    ringbeat::notify_systemd::notify("STOPPING=1");
    server.stop();
    write_stats(&server);
    let t = total(&server.snapshot());
    tracing::info!(
        heartbeats = t.heartbeats,
        datagrams = t.datagrams,
        devices = t.devices,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}
