//! Configuration in two stages: `ServeArgs` (what the user typed, from flags and an
//! optional TOML file with the same keys, all optional) → `Config` (validated, with
//! defaults applied and derived sizes computed). Flags win over the file.

use crate::core::liveness::Thresholds;
use crate::core::shard::CoreConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
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

/// Flags of `ringbeat serve`. Every key may also be given in `--config FILE.toml`
/// (with `-` in names written as `_` or `-`).
#[derive(clap::Args, Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these keys; flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// I/O engine [default: uring]. `epoll` (recvmmsg/sendmmsg) and `tokio-uring`
    /// (one-shot recv_from/send_to) are there to compare; `--wait-us` and the buffer
    /// ring flags apply to `uring` only.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,

    /// UDP address to receive heartbeats on [default: 0.0.0.0:7979]. Port 0 picks a
    /// free port (printed at start).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// CPUs to run one pinned shard each on, e.g. `0,1` or `0-3` [default: every CPU
    /// this process may run on].
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,

    /// Devices the server can track in total [default: 4194304]. Memory is reserved
    /// up front but only used as devices appear (≤ 48 bytes each).
    #[arg(long, value_name = "N")]
    pub max_devices: Option<u64>,

    /// A device is late after this many of its intervals without a heartbeat [default: 1.5].
    #[arg(long, value_name = "MULTIPLE")]
    pub late_after: Option<f64>,

    /// A device is offline after this many of its intervals without a heartbeat [default: 3.0].
    #[arg(long, value_name = "MULTIPLE")]
    pub offline_after: Option<f64>,

    /// Interval assumed for heartbeats that carry interval 0, in seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    pub default_interval: Option<f64>,

    /// Liveness detection granularity in milliseconds [default: 10]. A transition is
    /// reported within its threshold plus one tick.
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u32>,

    /// Liveness wheel entries a shard visits between two receive batches [default:
    /// 256]; a tick's rechecks are spread over the tick in slices this large. 0 = the
    /// whole tick's rechecks at once (receive waits behind them).
    #[arg(long, value_name = "N")]
    pub liveness_slice: Option<u32>,

    /// Wake-up batching: after the first completion, wait up to this many microseconds
    /// for more before processing. 0 = process every completion at once. Unset =
    /// adaptive: immediate below 200K completions/s, 50 µs batches above, 200 µs
    /// from 800K/s (results/2026-11-24-kernel-floor).
    #[arg(long, value_name = "US")]
    pub wait_us: Option<u32>,

    /// Socket receive buffer per shard, e.g. `4M`, `262144` [default: 4M]. When
    /// net.core.rmem_max is lower, SO_RCVBUFFORCE is used if permitted.
    #[arg(long, value_name = "BYTES")]
    pub rcvbuf: Option<String>,

    /// Receive buffers in each shard's provided buffer ring, a power of two ≤ 32768
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    pub buf_count: Option<u32>,

    /// Bytes per receive buffer, a multiple of 64, room for the 2048-byte maximum
    /// datagram plus 68 bytes of receive metadata [default: 2176].
    #[arg(long, value_name = "BYTES")]
    pub buf_size: Option<u32>,

    /// Drop datagrams with a bad length or magic in the kernel (classic BPF socket
    /// filter), before they are queued. Such drops show in the socket's drop count.
    #[arg(long)]
    #[serde(default)]
    pub kernel_prefilter: bool,

    /// Back the device table with transparent huge pages: ~7% more heartbeats per
    /// core-second at 2M devices in steady state, but when many new devices appear at
    /// once, faulting 2 MiB pages (with compaction) stalled a shard for 130–200 ms and
    /// overflowed its socket in 2 of 4 runs, so it is off by default.
    #[arg(long)]
    #[serde(default)]
    pub huge_pages: bool,

    /// Keep every CPU out of idle states slower than this many microseconds to wake
    /// from, while the server runs (PM QoS, /dev/cpu_dma_latency; needs root). 0 cuts
    /// the wake-up part of the latency tail (measured: p99 204 → 33 µs at 1M
    /// heartbeats/s in 32-heartbeat datagrams) at the price of CPUs that poll instead of
    /// sleeping when idle. Unset = the kernel's default.
    #[arg(long, value_name = "US")]
    pub cpu_dma_latency_us: Option<u32>,

    /// Write one JSON object per liveness transition to this file (`-` = stdout).
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Rewrite all counters to this JSON file (atomically) every stats interval and at exit.
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,

    /// Seconds between stats reports [default: 1].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<f64>,

    /// Do not print the per-interval summary line to stderr.
    #[arg(long)]
    #[serde(default)]
    pub quiet: bool,

    /// Stop by itself after this many seconds (as on SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub run_for: Option<f64>,
}

/// The I/O engine under the shards (all feed the same core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// io_uring: multishot receive over a provided buffer ring (the default).
    Uring,
    /// epoll + recvmmsg/sendmmsg in batches: the classic design, for comparison.
    Epoll,
    /// tokio-uring: one-shot recv_from/send_to on a tokio-uring runtime per shard,
    /// for comparison (built with the default `tokio-uring` cargo feature).
    #[cfg(feature = "tokio-uring")]
    TokioUring,
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

/// Validated configuration with derived sizes.
#[derive(Clone, Debug)]
pub struct Config {
    pub engine: Engine,
    pub listen: SocketAddr,
    pub cores: Vec<usize>,
    pub max_devices: u64,
    /// Per-shard table capacity: max_devices / shards plus 1/16 headroom for hash
    /// imbalance between shards, so the total is reached before any shard fills.
    pub devices_per_shard: u32,
    pub thresholds: Thresholds,
    pub default_interval_ds: u16,
    pub tick_ms: u32,
    /// Wheel entries per `advance_slice` (usize::MAX = unbounded).
    pub liveness_slice: usize,
    pub wait: WaitStrategy,
    pub rcvbuf_bytes: usize,
    pub buf_count: u16,
    pub buf_size: u32,
    pub kernel_prefilter: bool,
    pub huge_pages: bool,
    pub cpu_dma_latency_us: Option<u32>,
    pub events: Option<PathBuf>,
    pub stats_json: Option<PathBuf>,
    pub stats_interval: Duration,
    pub quiet: bool,
    pub run_for: Option<Duration>,
    /// Frames per shard-to-shard hand-off ring: 8192 = 4 ms of a 2M frames/s shard
    /// sending everything to one peer.
    pub forward_ring_frames: u32,
    /// Events a shard may hand to the writer before waiting ones are counted dropped.
    pub event_queue: usize,
    /// Ack datagrams in flight per shard (each slot holds a 2048-byte buffer): one per
    /// receive buffer, because one loop iteration reaps at most a full buffer ring of
    /// datagrams and each may need an ack (256 slots dropped acks at 10M hb/s); ≥ 64.
    pub ack_slots: u32,
}

/// Bytes of receive metadata ahead of the payload in a multishot recvmsg buffer:
/// io_uring_recvmsg_out (16) + name (sockaddr_in6, 28) + control (CMSG_SPACE(4), 24).
pub const RECV_META_BYTES: u32 = 16 + 28 + 24;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7979";
pub const DEFAULT_MAX_DEVICES: u64 = 4_194_304;

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

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if a > b {
                return None;
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().ok()?);
        }
    }
    out.dedup();
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

impl ServeArgs {
    /// Fills keys missing from the command line with the file's.
    pub fn merged_with_file(self) -> Result<ServeArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: ServeArgs = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(e),
        })?;
        Ok(ServeArgs {
            config: self.config,
            engine: self.engine.or(file.engine),
            listen: self.listen.or(file.listen),
            cores: self.cores.or(file.cores),
            max_devices: self.max_devices.or(file.max_devices),
            late_after: self.late_after.or(file.late_after),
            offline_after: self.offline_after.or(file.offline_after),
            default_interval: self.default_interval.or(file.default_interval),
            tick_ms: self.tick_ms.or(file.tick_ms),
            liveness_slice: self.liveness_slice.or(file.liveness_slice),
            wait_us: self.wait_us.or(file.wait_us),
            rcvbuf: self.rcvbuf.or(file.rcvbuf),
            buf_count: self.buf_count.or(file.buf_count),
            buf_size: self.buf_size.or(file.buf_size),
            kernel_prefilter: self.kernel_prefilter || file.kernel_prefilter,
            huge_pages: self.huge_pages || file.huge_pages,
            cpu_dma_latency_us: self.cpu_dma_latency_us.or(file.cpu_dma_latency_us),
            events: self.events.or(file.events),
            stats_json: self.stats_json.or(file.stats_json),
            stats_interval: self.stats_interval.or(file.stats_interval),
            quiet: self.quiet || file.quiet,
            run_for: self.run_for.or(file.run_for),
        })
    }

    /// Validates and derives the `Config`.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let a = self.merged_with_file()?;
        let listen = a
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let cores = match &a.cores {
            Some(s) => parse_cpu_list(s)
                .ok_or_else(|| invalid("cores", format!("`{s}` is not a CPU list like 0,2-3")))?,
            None => allowed_cpus(),
        };
        let allowed = allowed_cpus();
        if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
            return Err(invalid(
                "cores",
                format!("CPU {c} is not available to this process (allowed: {allowed:?})"),
            ));
        }
        let shards = cores.len() as u64;
        let max_devices = a.max_devices.unwrap_or(DEFAULT_MAX_DEVICES);
        if max_devices == 0 || max_devices > (1u64 << 31) * shards {
            return Err(invalid(
                "max-devices",
                "must be between 1 and 2^31 per shard",
            ));
        }
        let per_shard =
            (max_devices.div_ceil(shards) + max_devices.div_ceil(shards * 16)).min(1 << 31) as u32;
        let late_after = a.late_after.unwrap_or(1.5);
        let offline_after = a.offline_after.unwrap_or(3.0);
        if !(late_after > 0.0 && offline_after > late_after && offline_after <= 300.0) {
            return Err(invalid(
                "late-after/offline-after",
                "need 0 < late-after < offline-after ≤ 300",
            ));
        }
        let default_interval = a.default_interval.unwrap_or(10.0);
        if !(0.1..=6553.5).contains(&default_interval) {
            return Err(invalid(
                "default-interval",
                "must be 0.1 ..= 6553.5 seconds (a u16 of deciseconds)",
            ));
        }
        let tick_ms = a.tick_ms.unwrap_or(10);
        if !(1..=1000).contains(&tick_ms) {
            return Err(invalid("tick-ms", "must be 1 ..= 1000"));
        }
        let wait = match a.wait_us {
            None => WaitStrategy::Adaptive {
                batch_us: 50,
                heavy_batch_us: 200,
            },
            Some(us) if us <= 100_000 => WaitStrategy::Fixed { us },
            Some(_) => return Err(invalid("wait-us", "must be ≤ 100000")),
        };
        let rcvbuf_text = a.rcvbuf.as_deref().unwrap_or("4M");
        let rcvbuf_bytes = parse_bytes(rcvbuf_text)
            .filter(|&b| (4096..=1 << 30).contains(&b))
            .ok_or_else(|| {
                invalid(
                    "rcvbuf",
                    format!("`{rcvbuf_text}` is not a size between 4K and 1G"),
                )
            })?;
        let buf_count = a.buf_count.unwrap_or(4096);
        if !buf_count.is_power_of_two() || !(2..=32768).contains(&buf_count) {
            return Err(invalid(
                "buf-count",
                "must be a power of two between 2 and 32768",
            ));
        }
        let buf_size = a.buf_size.unwrap_or(2176);
        if buf_size % 64 != 0 || buf_size < RECV_META_BYTES + 2048 {
            return Err(invalid(
                "buf-size",
                format!(
                    "must be a multiple of 64 and ≥ {} (68 bytes metadata + 2048 payload)",
                    RECV_META_BYTES + 2048
                ),
            ));
        }
        let stats_interval = a.stats_interval.unwrap_or(1.0);
        if !(0.05..=3600.0).contains(&stats_interval) {
            return Err(invalid("stats-interval", "must be 0.05 ..= 3600 seconds"));
        }
        let run_for = match a.run_for {
            Some(s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
            Some(_) => return Err(invalid("run-for", "must be a positive number of seconds")),
            None => None,
        };
        Ok(Config {
            engine: a.engine.unwrap_or(Engine::Uring),
            listen,
            cores,
            max_devices,
            devices_per_shard: per_shard,
            thresholds: Thresholds {
                late_after_permille: (late_after * 1000.0).round() as u32,
                offline_after_permille: (offline_after * 1000.0).round() as u32,
            },
            default_interval_ds: (default_interval * 10.0).round() as u16,
            tick_ms,
            liveness_slice: match a.liveness_slice {
                None => crate::core::shard::LIVENESS_SLICE,
                Some(0) => usize::MAX,
                Some(n) => n as usize,
            },
            wait,
            rcvbuf_bytes,
            buf_count: buf_count as u16,
            buf_size,
            kernel_prefilter: a.kernel_prefilter,
            huge_pages: a.huge_pages,
            cpu_dma_latency_us: a.cpu_dma_latency_us,
            events: a.events,
            stats_json: a.stats_json,
            stats_interval: Duration::from_secs_f64(stats_interval),
            quiet: a.quiet,
            run_for,
            forward_ring_frames: 8192,
            event_queue: 65_536,
            ack_slots: buf_count.max(64),
        })
    }
}

impl Config {
    pub fn shards(&self) -> u32 {
        self.cores.len() as u32
    }

    /// The core configuration of shard `shard`.
    pub fn core_config(&self, shard: u32) -> CoreConfig {
        CoreConfig {
            shard,
            shards: self.shards(),
            max_devices: self.devices_per_shard,
            thresholds: self.thresholds,
            default_interval_ds: self.default_interval_ds,
            tick_ms: self.tick_ms,
            event_capacity: self.event_queue,
            huge_pages: self.huge_pages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_thresholds_fit_32_bit_time() {
        let c = ServeArgs {
            cores: Some("0".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7979");
        assert_eq!(c.rcvbuf_bytes, 4 << 20);
        assert_eq!(c.default_interval_ds, 100);
        assert_eq!(c.devices_per_shard, 4_194_304 + 262_144);
        // Worst case deadline: 6553.5 s × 300 must stay below 2^31 ms.
        assert!(6553.5 * 300.0 * 1000.0 < 2f64.powi(31));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = ServeArgs {
            cores: Some("0".into()),
            buf_count: Some(1000),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("buf-count"), "{e}");
        let e = ServeArgs {
            cores: Some("0".into()),
            late_after: Some(4.0),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("late-after"), "{e}");
        let e = ServeArgs {
            cores: Some("x".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("cores"), "{e}");
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_bytes("4M"), Some(4 << 20));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_cpu_list("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn file_keys_fill_in_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("ringbeat-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ntick-ms = 5\nrcvbuf = \"1M\"\ncores = \"0\"\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            tick_ms: Some(7),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.tick_ms, 7);
        assert_eq!(c.rcvbuf_bytes, 1 << 20);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
