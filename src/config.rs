//! Configuration in two stages, one group per concern: `ServeArgs` (what the user
//! typed: flags, and `--config FILE.toml` whose keys are the same flags) → `Config`
//! (validated, derived sizes computed). Each group (`NetworkArgs`, `LivenessArgs`,
//! `UringArgs`, `OutputArgs`, `ProcessArgs`) is a flattened clap struct whose doc
//! comments are the `--help` text and whose defaults are written once, in its `#[arg]`
//! attributes; each validates into its part of `Config`. A new concern (TCP, snapshots,
//! HTTP, MQTT) is one more group.
//!
//! The config file cannot drift from the flags because it *is* flags: each key
//! `name = value` becomes `--name=value` ahead of the command line, and clap parses the
//! whole list with later occurrences winning, so the command line overrides the file
//! (booleans too: `--huge-pages=false` turns off `huge-pages = true`).

use crate::core::liveness::Thresholds;
use crate::core::shard::CoreConfig;
use crate::memory::Registry;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Flags(Box<clap::Error>),
    #[error("in config file {path} or on the command line: {source}")]
    FileOrFlags {
        path: PathBuf,
        source: Box<clap::Error>,
    },
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Flags of `ringbeat serve` (and `check`). Every flag but `--config` may also be a key
/// of the config file.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML file whose keys are these flags' names (`tick-ms = 5`, `huge-pages = true`);
    /// flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub liveness: LivenessArgs,
    #[command(flatten)]
    pub uring: UringArgs,
    #[command(flatten)]
    pub outputs: OutputArgs,
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Ids of the flags given explicitly (on the command line or in the file).
    #[arg(skip)]
    pub given: BTreeSet<String>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Network")]
pub struct NetworkArgs {
    /// UDP address to receive heartbeats on. Port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7979")]
    pub listen: String,

    /// CPUs to run one pinned shard each on, e.g. `0,1` or `0-3` [default: every CPU
    /// this process may run on].
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,

    /// Socket receive buffer per shard, e.g. `4M`, `262144`. When net.core.rmem_max is
    /// lower, SO_RCVBUFFORCE is used if permitted.
    #[arg(long, value_name = "BYTES", default_value = "4M")]
    pub rcvbuf: String,

    /// Drop datagrams with a bad length or magic in the kernel (classic BPF socket
    /// filter), before they are queued. Such drops show in the socket's drop count.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub kernel_prefilter: bool,

    /// Do not serve TCP. By default heartbeats are also served over TCP on the same
    /// address and port (PROTOCOL.md, TCP).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub no_tcp: bool,

    /// TCP connections held at once, over all shards (each shard holds its share);
    /// beyond it new connections are closed at accept and counted [default: the
    /// open-files hard limit, which the server raises its soft limit to, less 1,024
    /// descriptors kept for everything else].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,

    /// Close a TCP connection that completes no frame for this long (slow or stuck
    /// senders included). Keep it well above the longest heartbeat interval.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub tcp_idle_timeout: f64,

    /// Accept heartbeats only from this network (CIDR such as `10.0.0.0/8`, `fd00::/8`,
    /// or one address); repeatable, a list in the config file (`allow = ["10.0.0.0/8"]`).
    /// Datagrams from elsewhere are dropped unanswered and counted (`disallowed`), TCP
    /// connections closed at accept and counted (`tcp_disallowed`). Unset: anyone.
    #[arg(long, value_name = "CIDR", action = ArgAction::Append)]
    pub allow: Vec<String>,

    /// The devices that exist, one per line: `ID [key=32HEX] [interval=30s]` (README,
    /// Security). Heartbeats for other ids are refused (acked with status 2, counted in
    /// `unknown_device`) before they take a table slot. Reloaded on SIGHUP; devices it
    /// no longer lists are forgotten, each with an event.
    #[arg(long, value_name = "PATH")]
    pub devices_file: Option<PathBuf>,

    /// Refuse version-1 (unauthenticated) heartbeats from every device (acked with
    /// status 3, counted in `auth_required`). Needs --devices-file with a key for every
    /// device. Without it, a device with a key must still send version 2; others may
    /// send either.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub require_auth: bool,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Devices and liveness")]
pub struct LivenessArgs {
    /// Devices the server can track in total. Address space is reserved up front;
    /// memory is used as devices appear: about 43 bytes per device at any count.
    #[arg(long, value_name = "N", default_value_t = 4_194_304)]
    pub max_devices: u64,

    /// A device is late after this many of its intervals without a heartbeat.
    #[arg(long, value_name = "MULTIPLE", default_value_t = 1.5)]
    pub late_after: f64,

    /// A device is offline after this many of its intervals without a heartbeat.
    #[arg(long, value_name = "MULTIPLE", default_value_t = 3.0)]
    pub offline_after: f64,

    /// Interval assumed for heartbeats that carry interval 0, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub default_interval: f64,

    /// Liveness detection granularity in milliseconds. A transition is reported within
    /// its threshold plus one tick.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub tick_ms: u32,

    /// Liveness wheel entries a shard visits between two receive batches; a tick's
    /// rechecks are spread over the tick in slices this large. 0 = the whole tick's
    /// rechecks at once (receive waits behind them).
    #[arg(long, value_name = "N", default_value_t = crate::core::shard::LIVENESS_SLICE as u32)]
    pub liveness_slice: u32,

    /// Back the device table with transparent huge pages: ~7% more heartbeats per
    /// core-second at 2M devices in steady state, but when many new devices appear at
    /// once, faulting 2 MiB pages (with compaction) stalled a shard for 130–200 ms and
    /// overflowed its socket in 2 of 4 runs, so it is off by default.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub huge_pages: bool,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "io_uring engine (--engine uring only)")]
pub struct UringArgs {
    /// Wake-up batching: after the first completion, wait up to this many microseconds
    /// for more before processing. 0 = process every completion at once. Unset =
    /// adaptive: immediate below 200K completions/s, 50 µs batches above, 200 µs
    /// from 800K/s (results/2026-11-24-kernel-floor).
    #[arg(long, value_name = "US")]
    pub wait_us: Option<u32>,

    /// Receive buffers in each shard's provided buffer ring, a power of two ≤ 32768:
    /// the most the kernel may hold at once (--buf-window-kib decides how many it does).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub buf_count: u32,

    /// Hand the kernel only as many receive buffers at once as keep the datagrams it
    /// writes into them within this many KiB (cache lines written, at the datagram size
    /// seen; at least 256 buffers), most recently used first, so the same buffers stay
    /// in cache. 0 = hand it every buffer. Datagrams beyond the window wait in the
    /// socket (SO_RCVBUF absorbs bursts).
    #[arg(long, value_name = "KIB", default_value_t = 256)]
    pub buf_window_kib: u32,

    /// Bytes per receive buffer, a multiple of 64, room for the 2048-byte maximum
    /// datagram plus 44 bytes of receive metadata.
    #[arg(long, value_name = "BYTES", default_value_t = 2176)]
    pub buf_size: u32,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Outputs")]
pub struct OutputArgs {
    /// Write one JSON object per liveness transition to this file (`-` = stdout).
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Rewrite all counters to this JSON file (atomically) every stats interval and at exit.
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,

    /// Seconds between stats reports.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub stats_interval: f64,

    /// Seconds between two summary lines on stderr (independent of --stats-interval).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub summary_interval: f64,

    /// Do not print the per-interval summary line to stderr.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub quiet: bool,

    /// Serve GET /metrics (Prometheus), /devices/{id} and /healthz over HTTP on this
    /// address, from a thread of its own. Off when unset.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<String>,

    /// Publish every device's state, retained, to this MQTT broker
    /// (`mqtt://HOST:PORT`) at `{prefix}/devices/{id}/state`. Off when unset.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,

    /// MQTT topic prefix.
    #[arg(long, value_name = "PREFIX", default_value = "ringbeat")]
    pub mqtt_prefix: String,

    /// MQTT client id [default: ringbeat-HOSTNAME].
    #[arg(long, value_name = "ID")]
    pub mqtt_client_id: Option<String>,

    /// File whose first line is `user:password` for the broker (or set
    /// RINGBEAT_MQTT_CREDENTIALS to `user:password`).
    #[arg(long, value_name = "FILE")]
    pub mqtt_credentials: Option<PathBuf>,

    /// Also publish every transition (not retained) at `{prefix}/events`.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub mqtt_events: bool,

    /// This server's name in MQTT payloads (which server saw the device)
    /// [default: the host name].
    #[arg(long, value_name = "ID")]
    pub server_id: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Snapshots")]
pub struct SnapshotArgs {
    /// Save every device's liveness state to this file, periodically and at SIGTERM or
    /// SIGINT, and restore it at start (deadlines then count from the restart). Off
    /// when unset.
    #[arg(long, value_name = "PATH")]
    pub snapshot: Option<PathBuf>,

    /// Seconds between snapshots: a kill -9 loses at most this much.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub snapshot_interval: f64,

    /// Start without restoring the snapshot (a damaged one, say); the next snapshot
    /// replaces it.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub no_restore: bool,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Process")]
pub struct ProcessArgs {
    /// I/O engine. `auto` uses io_uring when this machine allows it and otherwise
    /// epoll, with a warning that names why (kernel, sysctl, seccomp, emulation) and
    /// the fix; `uring` refuses to start without io_uring. `epoll` (recvmmsg/sendmmsg)
    /// and `tokio-uring` (one-shot recv_from/send_to) are there to compare. The
    /// io_uring flags apply to `auto` and `uring` only (an error with the others).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,

    /// Keep every CPU out of idle states slower than this many microseconds to wake
    /// from, while the server runs (PM QoS, /dev/cpu_dma_latency; needs root). 0 cuts
    /// the wake-up part of the latency tail (measured: p99 204 → 33 µs at 1M
    /// heartbeats/s in 32-heartbeat datagrams) at the price of CPUs that poll instead of
    /// sleeping when idle. Unset = the kernel's default.
    #[arg(long, value_name = "US")]
    pub cpu_dma_latency_us: Option<u32>,

    /// Stop by itself after this many seconds (as on SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub run_for: Option<f64>,
}

/// The I/O engine under the shards (all run the same shard loop and core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// io_uring where the preflight passes, else epoll with a warning (the default).
    #[default]
    Auto,
    /// io_uring: multishot receive over a provided buffer ring.
    Uring,
    /// epoll + recvmmsg/sendmmsg in batches: the classic design, for comparison.
    Epoll,
    /// tokio-uring: one-shot recv_from/send_to on a tokio-uring runtime per shard,
    /// for comparison (built with the default `tokio-uring` cargo feature).
    #[cfg(feature = "tokio-uring")]
    TokioUring,
}

impl Engine {
    /// The flag value naming it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
            #[cfg(feature = "tokio-uring")]
            Engine::TokioUring => "tokio-uring",
        }
    }
}

impl Engine {
    /// tokio-uring serves UDP only (one task per connection is what the io_uring
    /// engine exists to avoid).
    pub fn serves_tcp(self) -> bool {
        match self {
            #[cfg(feature = "tokio-uring")]
            Engine::TokioUring => false,
            _ => true,
        }
    }
}

/// How a shard waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Immediate wake-ups at light load, `batch_us` batching once busy and
    /// `heavy_batch_us` under heavy load (io_uring engine).
    Adaptive { batch_us: u32, heavy_batch_us: u32 },
    /// Always wait up to `us` for more completions (0 = never batch).
    Fixed { us: u32 },
}

/// Validated configuration with derived sizes, in the same groups as the flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub engine: Engine,
    pub network: NetworkConfig,
    pub liveness: LivenessConfig,
    pub uring: UringConfig,
    pub outputs: OutputConfig,
    pub snapshot: SnapshotConfig,
    pub process: ProcessConfig,
    /// Frames per shard-to-shard hand-off ring: 8192 = 4 ms of a 2M frames/s shard
    /// sending everything to one peer.
    pub forward_ring_frames: u32,
    /// Events a shard may hand to the writer before waiting ones are counted dropped:
    /// 65536 = a second of one shard's transitions when 1M devices on 15 s intervals
    /// all go late at once, with room to spare.
    pub event_queue: usize,
}

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub listen: SocketAddr,
    pub cores: Vec<usize>,
    pub rcvbuf_bytes: usize,
    pub kernel_prefilter: bool,
    /// None with `--no-tcp`.
    pub tcp: Option<TcpConfig>,
    /// Empty: every source may send.
    pub allow: crate::core::allow::Allowlist,
    /// `--devices-file`: where the registry was read from (reloaded on SIGHUP) and what
    /// it held at start.
    pub devices_file: Option<PathBuf>,
    pub registry: Option<Arc<Registry>>,
    pub require_auth: bool,
}

/// Reads and checks a devices file for `shards` shards: every problem names the file
/// and line. With `require_auth` every device needs a key; the table (`capacity` per
/// shard, `max_devices` in all) must hold every listed device.
pub fn load_registry(
    path: &std::path::Path,
    shards: u32,
    require_auth: bool,
    max_devices: u64,
    per_shard: u32,
) -> Result<Registry, String> {
    let r = {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the devices file {}: {e}", path.display()))?;
        Registry::parse(&text, shards).map_err(|e| format!("{} {e}", path.display()))
    };
    // The file's text and the parse's scratch are freed: their pages go back now.
    crate::sys::mem::release_freed_heap();
    let r = r?;
    if require_auth {
        if let Some((id, line)) = r.first_without_key() {
            return Err(format!(
                "{} line {line}: device {id} has no key, but --require-auth refuses heartbeats without one: give it key=<32 hex digits>",
                path.display()
            ));
        }
    }
    let most = (0..shards).map(|s| r.owned_by(s)).max().unwrap_or(0);
    if r.len() as u64 > max_devices || most > per_shard {
        return Err(format!(
            "{} lists {} devices, more than the table holds (--max-devices {max_devices}): raise --max-devices",
            path.display(),
            r.len()
        ));
    }
    Ok(r)
}

#[derive(Clone, Copy, Debug)]
pub struct TcpConfig {
    pub max_connections: u64,
    /// Whether `max_connections` was derived from the open-files limit.
    pub max_connections_derived: bool,
    /// Each shard's share of `max_connections` (rounded up).
    pub per_shard: u32,
    pub idle_timeout_ms: u64,
}

/// Descriptors kept for everything but connections when `--max-connections` is
/// derived from the open-files limit: sockets, eventfds, rings, files, with room.
pub const RESERVED_FDS: u64 = 1024;

/// The open-files limits (soft, hard).
pub fn nofile_limits() -> (u64, u64) {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024))
}

#[derive(Clone, Debug)]
pub struct LivenessConfig {
    pub max_devices: u64,
    /// Per-shard table capacity: max_devices / shards plus 1/16 headroom for hash
    /// imbalance between shards, so the total is reached before any shard fills.
    pub devices_per_shard: u32,
    pub thresholds: Thresholds,
    pub default_interval_ds: u16,
    pub tick_ms: u32,
    /// Wheel entries per `advance_slice` (usize::MAX = unbounded).
    pub liveness_slice: usize,
    pub huge_pages: bool,
}

#[derive(Clone, Debug)]
pub struct UringConfig {
    pub wait: WaitStrategy,
    pub buf_count: u16,
    pub buf_size: u32,
    /// Bytes of datagrams the kernel may hold in receive buffers at once (0 = no bound).
    pub buf_window_bytes: u32,
    /// Ack datagrams in flight per shard (each slot holds a 2048-byte buffer): one per
    /// receive buffer, because one loop iteration reaps at most a full buffer ring of
    /// datagrams and each may need an ack (256 slots dropped acks at 10M hb/s); ≥ 64.
    pub ack_slots: u32,
}

#[derive(Clone, Debug)]
pub struct OutputConfig {
    pub http_listen: Option<SocketAddr>,
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    pub events: Option<PathBuf>,
    pub stats_json: Option<PathBuf>,
    pub stats_interval: Duration,
    pub summary_interval: Duration,
    pub quiet: bool,
}

#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    pub path: Option<PathBuf>,
    pub interval: Duration,
    pub restore: bool,
}

#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub cpu_dma_latency_us: Option<u32>,
    pub run_for: Option<Duration>,
}

/// Bytes of receive metadata ahead of the payload in a multishot recvmsg buffer:
/// `io_uring_recvmsg_out` (16) + the source address (room for a sockaddr_in6, 28); no
/// control data is asked for (kernel drops are read with SO_MEMINFO).
pub const RECV_META_BYTES: u32 = 16 + 28;

/// Parses `4M`, `256K`, `1G`, `65536` (binary multiples).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1usize << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// CPU ids a list may name: the kernel's CPU mask size (`CpuSet::count()`, 1,024
/// with glibc). A range is checked against it before it is expanded, so a typo such as
/// `0-222222222` is refused instead of allocating gigabytes (found by fuzzing).
pub fn max_cpus() -> usize {
    nix::sched::CpuSet::count()
}

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if a > b || b >= max_cpus() {
                return None;
            }
            out.extend(a..=b);
        } else {
            let c: usize = part.parse().ok()?;
            if c >= max_cpus() {
                return None;
            }
            out.push(c);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// `ServeArgs` as a command of its own, to parse a flag list (file keys + command line)
/// with later occurrences winning.
#[derive(clap::Parser, Debug)]
#[command(
    name = "ringbeat serve",
    no_binary_name = true,
    args_override_self = true
)]
struct ServeFlags {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// Parses the flags after `serve` (or `check`): when they name a `--config` file,
    /// its keys go first as flags, so the command line wins.
    pub fn parse_flags<I, T>(flags: I) -> Result<ServeArgs, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let flags: Vec<OsString> = flags.into_iter().map(Into::into).collect();
        let cli = parse_flag_list(&flags).map_err(ConfigError::Flags)?;
        let Some(path) = cli.config.clone() else {
            return Ok(cli);
        };
        let mut all = file_flags(&path)?;
        all.extend(flags);
        parse_flag_list(&all).map_err(|source| ConfigError::FileOrFlags { path, source })
    }

    /// Validates and derives the `Config`.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let engine = self.process.engine;
        if !matches!(engine, Engine::Uring | Engine::Auto) {
            for (id, flag) in [
                ("wait_us", "--wait-us"),
                ("buf_count", "--buf-count"),
                ("buf_window_kib", "--buf-window-kib"),
                ("buf_size", "--buf-size"),
            ] {
                if self.given.contains(id) {
                    return Err(invalid(
                        "engine",
                        format!(
                            "{flag} applies to --engine uring only and would be ignored by \
                             --engine {}: drop it, or use --engine uring",
                            clap::ValueEnum::to_possible_value(&engine)
                                .map_or_else(String::new, |v| v.get_name().to_string())
                        ),
                    ));
                }
            }
        }
        let mut network = self.network.validate()?;
        let shards = network.cores.len() as u64;
        let liveness = self.liveness.validate(shards)?;
        match &network.devices_file {
            Some(path) => {
                let r = load_registry(
                    path,
                    shards as u32,
                    network.require_auth,
                    liveness.max_devices,
                    liveness.devices_per_shard,
                )
                .map_err(|reason| invalid("devices-file", reason))?;
                network.registry = Some(Arc::new(r));
            }
            None if network.require_auth => {
                return Err(invalid(
                    "require-auth",
                    "needs --devices-file, which holds the devices' keys",
                ))
            }
            None => {}
        }
        Ok(Config {
            engine,
            liveness,
            uring: self.uring.validate()?,
            outputs: self.outputs.validate()?,
            snapshot: self.snapshot.validate()?,
            process: self.process.validate()?,
            network,
            forward_ring_frames: 8192,
            // RINGBEAT_EVENT_QUEUE=N sizes it instead, so tests can fill it on purpose.
            event_queue: match std::env::var("RINGBEAT_EVENT_QUEUE") {
                Ok(v) => match v.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(invalid(
                            "RINGBEAT_EVENT_QUEUE",
                            format!("{v}: give a number from 1 up, or unset it"),
                        ))
                    }
                },
                Err(_) => 65_536,
            },
        })
    }
}

fn parse_flag_list(flags: &[OsString]) -> Result<ServeArgs, Box<clap::Error>> {
    let matches = ServeFlags::command()
        .try_get_matches_from(flags)
        .map_err(Box::new)?;
    let mut args = ServeFlags::from_arg_matches(&matches)
        .map_err(Box::new)?
        .args;
    args.given = matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect();
    Ok(args)
}

/// The config file's keys as `--key=value` flags. Keys are the long flag names (`_` and
/// `-` alike); values may be strings, numbers or booleans, or arrays of them (a
/// repeated flag).
fn file_flags(path: &Path) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    flags_from_toml(&text).map_err(|reason| ConfigError::File {
        path: path.to_owned(),
        reason,
    })
}

/// A config file's text as `--key=value` flags (the file's reading, without the file:
/// what `--config` does, and what the fuzzer drives).
pub fn flags_from_toml(text: &str) -> Result<Vec<OsString>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let command = ServeFlags::command();
    let known: BTreeSet<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|&l| l != "config")
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if !known.contains(flag.as_str()) {
            return Err(format!(
                "unknown key `{key}` (the keys are the flags of `ringbeat serve --help`, \
                 without the dashes; `config` cannot be nested)"
            ));
        }
        let scalars = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in scalars {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(format!("`{key}` must be a string, a number or a boolean")),
            };
            out.push(OsString::from(format!("--{flag}={text}")));
        }
    }
    Ok(out)
}

/// A whole config file's text checked as the server would check it (flags parsed,
/// groups validated). For the fuzzer and tests.
pub fn check_toml(text: &str) -> Result<Config, String> {
    let flags = flags_from_toml(text)?;
    let args = parse_flag_list(&flags).map_err(|e| e.to_string())?;
    args.into_config().map_err(|e| e.to_string())
}

impl NetworkArgs {
    fn validate(self) -> Result<NetworkConfig, ConfigError> {
        // An address, or a host name resolved once at start (`localhost:7979`).
        let listen: SocketAddr = match self.listen.parse() {
            Ok(a) => a,
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&self.listen)
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| {
                    invalid(
                        "listen",
                        format!(
                            "`{}` is not an ADDR:PORT like 0.0.0.0:7979, [::1]:7979 or localhost:7979 (a name that resolves)",
                            self.listen
                        ),
                    )
                })?,
        };
        let cores = match &self.cores {
            Some(s) => parse_cpu_list(s).ok_or_else(|| {
                invalid(
                    "cores",
                    format!(
                        "`{s}` is not a CPU list like 0,2-3 (CPU ids below {})",
                        max_cpus()
                    ),
                )
            })?,
            None => allowed_cpus(),
        };
        if let Some(c) = cores
            .iter()
            .enumerate()
            .find_map(|(i, c)| cores[..i].contains(c).then_some(c))
        {
            return Err(invalid(
                "cores",
                format!("CPU {c} is listed twice: one shard per CPU, each CPU once"),
            ));
        }
        let allowed = allowed_cpus();
        if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
            return Err(invalid(
                "cores",
                format!("CPU {c} is not available to this process (allowed: {allowed:?})"),
            ));
        }
        let rcvbuf_bytes = parse_bytes(&self.rcvbuf)
            .filter(|&b| (4096..=1 << 30).contains(&b))
            .ok_or_else(|| {
                invalid(
                    "rcvbuf",
                    format!("`{}` is not a size between 4K and 1G", self.rcvbuf),
                )
            })?;
        if !(self.tcp_idle_timeout.is_finite() && (1.0..=86_400.0).contains(&self.tcp_idle_timeout))
        {
            return Err(invalid(
                "tcp-idle-timeout",
                format!(
                    "`{}` is not a number of seconds between 1 and 86400",
                    self.tcp_idle_timeout
                ),
            ));
        }
        let tcp = (!self.no_tcp)
            .then(|| {
                let (max_connections, derived) = match self.max_connections {
                    Some(0) => {
                        return Err(invalid(
                            "max-connections",
                            "0 would refuse every connection: use --no-tcp to turn TCP off",
                        ))
                    }
                    Some(n) => (n, false),
                    None => (
                        nofile_limits()
                            .1
                            .saturating_sub(RESERVED_FDS)
                            .max(cores.len() as u64),
                        true,
                    ),
                };
                if max_connections > u32::MAX as u64 {
                    return Err(invalid(
                        "max-connections",
                        format!("{max_connections} is above 2^32"),
                    ));
                }
                Ok(TcpConfig {
                    max_connections,
                    max_connections_derived: derived,
                    per_shard: max_connections.div_ceil(cores.len() as u64) as u32,
                    idle_timeout_ms: (self.tcp_idle_timeout * 1000.0) as u64,
                })
            })
            .transpose()?;
        Ok(NetworkConfig {
            listen,
            cores,
            rcvbuf_bytes,
            kernel_prefilter: self.kernel_prefilter,
            tcp,
            allow: crate::core::allow::Allowlist::new(
                self.allow
                    .iter()
                    .map(|c| crate::core::allow::Cidr::parse(c))
                    .collect::<Result<_, _>>()
                    .map_err(|reason| invalid("allow", reason))?,
            ),
            devices_file: self.devices_file,
            registry: None,
            require_auth: self.require_auth,
        })
    }
}

impl LivenessArgs {
    fn validate(self, shards: u64) -> Result<LivenessConfig, ConfigError> {
        let max_devices = self.max_devices;
        if max_devices == 0 || max_devices > (1u64 << 31) * shards {
            return Err(invalid(
                "max-devices",
                "must be between 1 and 2^31 per shard",
            ));
        }
        let per_shard =
            (max_devices.div_ceil(shards) + max_devices.div_ceil(shards * 16)).min(1 << 31) as u32;
        let (late_after, offline_after) = (self.late_after, self.offline_after);
        if !(late_after > 0.0 && offline_after > late_after && offline_after <= 300.0) {
            return Err(invalid(
                "late-after/offline-after",
                format!(
                    "need 0 < late-after < offline-after ≤ 300 \
                     (late-after is {late_after}, offline-after {offline_after})"
                ),
            ));
        }
        let default_interval = self.default_interval;
        if !(0.1..=6553.5).contains(&default_interval) {
            return Err(invalid(
                "default-interval",
                "must be 0.1 ..= 6553.5 seconds (a u16 of deciseconds)",
            ));
        }
        if !(1..=1000).contains(&self.tick_ms) {
            return Err(invalid("tick-ms", "must be 1 ..= 1000"));
        }
        Ok(LivenessConfig {
            max_devices,
            devices_per_shard: per_shard,
            thresholds: Thresholds {
                late_after_permille: (late_after * 1000.0).round() as u32,
                offline_after_permille: (offline_after * 1000.0).round() as u32,
            },
            default_interval_ds: (default_interval * 10.0).round() as u16,
            tick_ms: self.tick_ms,
            liveness_slice: match self.liveness_slice {
                0 => usize::MAX,
                n => n as usize,
            },
            huge_pages: self.huge_pages,
        })
    }
}

impl UringArgs {
    fn validate(self) -> Result<UringConfig, ConfigError> {
        let wait = match self.wait_us {
            None => WaitStrategy::Adaptive {
                batch_us: 50,
                heavy_batch_us: 200,
            },
            Some(us) if us <= 100_000 => WaitStrategy::Fixed { us },
            Some(_) => return Err(invalid("wait-us", "must be ≤ 100000")),
        };
        let buf_count = self.buf_count;
        if !buf_count.is_power_of_two() || !(2..=32768).contains(&buf_count) {
            return Err(invalid(
                "buf-count",
                "must be a power of two between 2 and 32768",
            ));
        }
        if self.buf_window_kib > 1 << 20 {
            return Err(invalid(
                "buf-window-kib",
                "must be ≤ 1048576 (1 GiB); 0 = no window",
            ));
        }
        let buf_size = self.buf_size;
        let least = RECV_META_BYTES + crate::core::codec::MAX_DATAGRAM_BYTES as u32;
        if !buf_size.is_multiple_of(64) || buf_size < least {
            return Err(invalid(
                "buf-size",
                format!(
                    "must be a multiple of 64 and ≥ {least} ({RECV_META_BYTES} bytes of \
                     receive metadata + the 2048-byte maximum datagram)"
                ),
            ));
        }
        Ok(UringConfig {
            wait,
            buf_count: buf_count as u16,
            buf_size,
            buf_window_bytes: self.buf_window_kib << 10,
            ack_slots: buf_count.max(64),
        })
    }
}

impl OutputArgs {
    fn validate(self) -> Result<OutputConfig, ConfigError> {
        if !(0.05..=3600.0).contains(&self.stats_interval) {
            return Err(invalid("stats-interval", "must be 0.05 ..= 3600 seconds"));
        }
        if !(0.1..=86_400.0).contains(&self.summary_interval) {
            return Err(invalid("summary-interval", "must be 0.1 ..= 86400 seconds"));
        }
        let http_listen = self
            .http_listen
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    invalid(
                        "http-listen",
                        format!("`{a}` is not an ADDR:PORT like 127.0.0.1:9797 or [::]:9797"),
                    )
                })
            })
            .transpose()?;
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let mqtt = match &self.mqtt {
            None => None,
            Some(url) => {
                let (host, port) = crate::mqtt::parse_url(url).map_err(|e| invalid("mqtt", e))?;
                let credentials = match (
                    &self.mqtt_credentials,
                    std::env::var("RINGBEAT_MQTT_CREDENTIALS"),
                ) {
                    (Some(path), _) => {
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            invalid(
                                "mqtt-credentials",
                                format!("cannot read {}: {e}", path.display()),
                            )
                        })?;
                        Some(text.lines().next().unwrap_or("").to_string())
                    }
                    (None, Ok(v)) => Some(v),
                    (None, Err(_)) => None,
                };
                let credentials = credentials
                    .map(|c| {
                        c.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                            .ok_or_else(|| {
                                invalid(
                                    "mqtt-credentials",
                                    "expected `user:password` (the file's first line, or RINGBEAT_MQTT_CREDENTIALS)",
                                )
                            })
                    })
                    .transpose()?;
                if self.mqtt_prefix.is_empty() || self.mqtt_prefix.contains(['+', '#']) {
                    return Err(invalid(
                        "mqtt-prefix",
                        format!("`{}`: a non-empty topic without + or #", self.mqtt_prefix),
                    ));
                }
                Some(crate::mqtt::MqttConfig {
                    host,
                    port,
                    client_id: self
                        .mqtt_client_id
                        .clone()
                        .unwrap_or_else(|| format!("ringbeat-{host_name}")),
                    prefix: self.mqtt_prefix.clone(),
                    credentials,
                    events: self.mqtt_events,
                    server_id: self.server_id.clone().unwrap_or_else(|| host_name.clone()),
                })
            }
        };
        Ok(OutputConfig {
            http_listen,
            mqtt,
            events: self.events,
            stats_json: self.stats_json,
            stats_interval: Duration::from_secs_f64(self.stats_interval),
            summary_interval: Duration::from_secs_f64(self.summary_interval),
            quiet: self.quiet,
        })
    }
}

impl SnapshotArgs {
    fn validate(self) -> Result<SnapshotConfig, ConfigError> {
        if !(1.0..=86_400.0).contains(&self.snapshot_interval) {
            return Err(invalid("snapshot-interval", "must be 1 ..= 86400 seconds"));
        }
        Ok(SnapshotConfig {
            path: self.snapshot,
            interval: Duration::from_secs_f64(self.snapshot_interval),
            restore: !self.no_restore,
        })
    }
}

impl ProcessArgs {
    fn validate(self) -> Result<ProcessConfig, ConfigError> {
        // Checked conversion: a huge value must be an error, not a panic (found by
        // fuzzing: `run-for = 8888...`).
        let run_for = match self.run_for {
            Some(s) if s > 0.0 => Some(Duration::try_from_secs_f64(s).map_err(|_| {
                invalid(
                    "run-for",
                    "must be a positive number of seconds (at most ~5.8e11)",
                )
            })?),
            Some(_) => return Err(invalid("run-for", "must be a positive number of seconds")),
            None => None,
        };
        Ok(ProcessConfig {
            cpu_dma_latency_us: self.cpu_dma_latency_us,
            run_for,
        })
    }
}

impl Config {
    pub fn shards(&self) -> u32 {
        self.network.cores.len() as u32
    }

    /// The core configuration of shard `shard`.
    pub fn core_config(&self, shard: u32) -> CoreConfig {
        CoreConfig {
            shard,
            shards: self.shards(),
            max_devices: self.liveness.devices_per_shard,
            thresholds: self.liveness.thresholds,
            default_interval_ds: self.liveness.default_interval_ds,
            tick_ms: self.liveness.tick_ms,
            event_capacity: self.event_queue,
            huge_pages: self.liveness.huge_pages,
            require_auth: self.network.require_auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str]) -> Result<Config, ConfigError> {
        ServeArgs::parse_flags(flags.iter().copied())?.into_config()
    }

    #[test]
    fn the_systemd_example_config_is_valid() {
        check_toml(include_str!("../deploy/systemd/ringbeat.toml")).unwrap();
    }

    #[test]
    fn a_cpu_listed_twice_is_refused() {
        let e = config(&["--cores", "0,1,0"]).unwrap_err();
        assert!(e.to_string().contains("CPU 0 is listed twice"), "{e}");
        assert!(config(&["--cores", "0-1,1"]).is_err());
    }

    #[test]
    fn listen_takes_an_address_or_a_name_that_resolves() {
        let c = config(&["--cores", "0", "--listen", "localhost:7979"]).unwrap();
        assert!(c.network.listen.ip().is_loopback());
        assert_eq!(c.network.listen.port(), 7979);
        let e = config(&["--cores", "0", "--listen", "no-such-host.invalid:7979"]).unwrap_err();
        assert!(e.to_string().contains("a name that resolves"), "{e}");
        assert!(config(&["--cores", "0", "--listen", "7979"]).is_err());
    }

    #[test]
    fn defaults_are_valid_and_thresholds_fit_32_bit_time() {
        let c = config(&["--cores", "0"]).unwrap();
        assert_eq!(c.network.listen.to_string(), "0.0.0.0:7979");
        assert_eq!(c.network.rcvbuf_bytes, 4 << 20);
        assert_eq!(c.liveness.default_interval_ds, 100);
        assert_eq!(c.liveness.devices_per_shard, 4_194_304 + 262_144);
        assert_eq!(
            c.liveness.liveness_slice,
            crate::core::shard::LIVENESS_SLICE
        );
        assert_eq!(c.engine, Engine::Auto);
        assert!(matches!(c.uring.wait, WaitStrategy::Adaptive { .. }));
        // Worst case deadline: 6553.5 s × 300 must stay below 2^31 ms.
        assert!(6553.5 * 300.0 * 1000.0 < 2f64.powi(31));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = config(&["--cores", "0", "--buf-count", "1000"]).unwrap_err();
        assert!(e.to_string().contains("buf-count"), "{e}");
        let e = config(&["--cores", "0", "--buf-window-kib", "2000000"]).unwrap_err();
        assert!(e.to_string().contains("buf-window-kib"), "{e}");
        let c = config(&["--cores", "0", "--buf-window-kib", "0"]).unwrap();
        assert_eq!(c.uring.buf_window_bytes, 0);
        let e = config(&["--cores", "0", "--late-after", "4"]).unwrap_err();
        assert!(
            e.to_string().contains("late-after is 4, offline-after 3"),
            "{e}"
        );
        let e = config(&["--cores", "x"]).unwrap_err();
        assert!(e.to_string().contains("cores"), "{e}");
        let e = config(&["--tick-ms", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--tick-ms"), "{e}");
        for huge in ["8.8e88", "inf", "NaN"] {
            let e = config(&["--cores", "0", "--run-for", huge]).unwrap_err();
            assert!(e.to_string().contains("run-for"), "{huge}: {e}");
        }
    }

    #[test]
    fn io_uring_flags_with_another_engine_are_an_error() {
        for flag in [
            "--wait-us=50",
            "--buf-count=1024",
            "--buf-window-kib=512",
            "--buf-size=4096",
        ] {
            let e = config(&["--cores", "0", "--engine", "epoll", flag]).unwrap_err();
            let name = flag.split('=').next().unwrap();
            assert!(
                e.to_string()
                    .contains(&format!("{name} applies to --engine uring only")),
                "{e}"
            );
        }
        assert!(config(&["--cores", "0", "--engine", "uring", "--wait-us=50"]).is_ok());
        assert!(config(&["--cores", "0", "--engine", "epoll"]).is_ok());
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_bytes("4M"), Some(4 << 20));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_cpu_list("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_cpu_list("3-1"), None);
        // Beyond any CPU mask: refused before the range is expanded.
        assert_eq!(parse_cpu_list("112212-222222222"), None);
        assert_eq!(parse_cpu_list("99999"), None);
    }

    fn file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("ringbeat-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn file_keys_fill_in_and_flags_win() {
        let path = file(
            "c.toml",
            "listen = \"127.0.0.1:9000\"\ntick-ms = 5\nrcvbuf = 1048576\ncores = \"0\"\n\
             huge_pages = true\nkernel-prefilter = true\n",
        );
        let c = config(&["--config", &path, "--tick-ms", "7", "--huge-pages=false"]).unwrap();
        assert_eq!(c.network.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.liveness.tick_ms, 7, "the command line wins");
        assert_eq!(
            c.network.rcvbuf_bytes,
            1 << 20,
            "a number where the flag takes text"
        );
        assert!(
            !c.liveness.huge_pages,
            "a flag turns off the file's boolean"
        );
        assert!(c.network.kernel_prefilter);
        // Keys given in the file count as given.
        let path = file(
            "e.toml",
            "engine = \"epoll\"\nwait-us = 10\ncores = \"0\"\n",
        );
        let e = config(&["--config", &path]).unwrap_err();
        assert!(e.to_string().contains("--wait-us applies"), "{e}");
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_key() {
        let path = file("bogus.toml", "bogus = 1\n");
        let e = config(&["--config", &path]).unwrap_err().to_string();
        assert!(
            e.contains("bogus.toml") && e.contains("unknown key `bogus`"),
            "{e}"
        );
        let path = file("nested.toml", "config = \"x.toml\"\n");
        let e = config(&["--config", &path]).unwrap_err().to_string();
        assert!(e.contains("unknown key `config`"), "{e}");
        let path = file("table.toml", "[listen]\nport = 1\n");
        let e = config(&["--config", &path]).unwrap_err().to_string();
        assert!(e.contains("`listen` must be"), "{e}");
        let path = file("broken.toml", "tick-ms = \n");
        let e = config(&["--config", &path]).unwrap_err().to_string();
        assert!(e.contains("broken.toml"), "{e}");
        let e = config(&["--config", "/nonexistent/ringbeat.toml"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read config file /nonexistent/ringbeat.toml"),
            "{e}"
        );
    }

    #[test]
    fn every_flag_is_a_file_key() {
        // The file is turned into flags, so any flag works as a key: try them all with
        // their defaults spelled out where they have one.
        let cmd = ServeFlags::command();
        let mut text = String::new();
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if long == "config" {
                continue;
            }
            if let Some(v) = a.get_default_values().first() {
                text.push_str(&format!("{long} = \"{}\"\n", v.to_string_lossy()));
            }
        }
        text.push_str("cores = \"0\"\n");
        let path = file("all.toml", &text);
        config(&["--config", &path]).unwrap();
    }
}
