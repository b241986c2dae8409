//! The runtime around the engines: opens the SO_REUSEPORT sockets in shard order (the
//! group index the steering program returns is the bind order), builds the hand-off
//! rings between every pair of shards, spawns one pinned thread per shard, and stops
//! them. Shards share nothing mutable on the hot path: each publishes a copy of its
//! counters every 100 ms and reads one stop flag per loop iteration.

pub mod epoll;
pub mod shard_loop;
pub mod tcp;
pub mod token;
#[cfg(feature = "tokio-uring")]
pub mod tokio_uring;
pub mod uring;

use crate::config::Config;
use crate::core::stats::ShardStats;
use crate::sys::notify::EventFd;
use crate::sys::socket::{self, UdpOptions};
use crate::sys::spsc::{self, Consumer, Producer};
use anyhow::Context;
use serde::Serialize;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// A shard's "I may be asleep" flag and the eventfd that wakes it.
#[repr(align(128))]
pub struct Parker {
    pub parked: AtomicBool,
    pub efd: EventFd,
}

/// State every shard can see: the stop flag, each shard's published counters, and how
/// many shards have drained their sockets at stop.
pub struct Shared {
    pub stop: AtomicBool,
    pub drained: AtomicUsize,
    /// The newest snapshot generation asked for (bumped by the main thread).
    pub snapshot_gen: std::sync::atomic::AtomicU64,
    pub stats: Vec<Mutex<ShardStats>>,
    /// When each shard last published its counters (ms since the shards' time zero):
    /// a shard that stopped looping is seen here (`/healthz`).
    pub alive_ms: Vec<std::sync::atomic::AtomicU64>,
    /// The shards' time zero (`alive_ms` counts from it).
    pub base: Instant,
    /// The device registry's generation: bumped by the main thread after it put a
    /// reloaded registry in `registry`; each shard takes it at its next publish.
    pub registry_gen: std::sync::atomic::AtomicU64,
    pub registry: Mutex<RegistryUpdate>,
    /// Per shard: it fell behind its socket and has not caught up, so frames it hands
    /// over may have waited (its owners hold their liveness too). Set before the
    /// shard publishes a frame taken in while behind, cleared after the last one.
    pub behind: Box<[BehindFlag]>,
}

/// One shard's "behind" flag, on a cache line of its own: written only when the shard
/// falls behind or catches up, read by its peers when they drain its frames.
#[repr(align(128))]
#[derive(Default)]
pub struct BehindFlag(pub AtomicBool);

/// A reloaded device registry and the ids it no longer lists.
#[derive(Clone, Default)]
pub struct RegistryUpdate {
    pub registry: Option<Arc<crate::memory::Registry>>,
    pub removed: Arc<Vec<u64>>,
}

/// A shard that has not published its counters for this long has stopped looping
/// (it publishes every `PUBLISH_EVERY`, and at least once per tick when idle).
pub const STALE_AFTER_MS: u64 = 1_000;

impl Shared {
    /// Shards that have not published within `STALE_AFTER_MS`: stuck or gone.
    pub fn stale_shards(&self) -> Vec<usize> {
        let alive: Vec<u64> = self
            .alive_ms
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect();
        stale(self.base.elapsed().as_millis() as u64, &alive)
    }
}

/// Indexes of the shards whose last publication in `alive_ms` is older than
/// `STALE_AFTER_MS` at `now_ms`.
pub fn stale(now_ms: u64, alive_ms: &[u64]) -> Vec<usize> {
    alive_ms
        .iter()
        .enumerate()
        .filter(|(_, &t)| now_ms.saturating_sub(t) > STALE_AFTER_MS)
        .map(|(i, _)| i)
        .collect()
}

/// What a shard reports once it is ready.
#[derive(Clone, Debug, Serialize)]
pub struct ShardInfo {
    pub index: u32,
    pub cpu: usize,
    pub numa_node: u32,
    #[serde(serialize_with = "hex")]
    pub arena_addr: usize,
    pub arena_bytes: usize,
    pub min_wait_supported: bool,
}

fn hex<S: serde::Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:x}"))
}

/// Everything one shard thread owns.
pub struct ShardContext {
    pub index: u32,
    pub cpu: usize,
    pub config: Config,
    pub socket: OwnedFd,
    /// The shard's TCP listener (None with `--no-tcp`).
    pub listener: Option<OwnedFd>,
    /// Producer towards each peer (None at our own index).
    pub outbound: Vec<Option<Producer>>,
    /// Consumers of every peer's ring towards us.
    pub inbound: Vec<Consumer>,
    pub parkers: Arc<[Parker]>,
    pub shared: Arc<Shared>,
    pub events_tx: Option<SyncSender<crate::events::Made>>,
    /// Device queries from the HTTP thread, and the replies (with `--http-listen`).
    pub queries: Option<(Consumer, Producer)>,
    /// This shard's end of the snapshot writer (with `--snapshot`).
    pub saver: Option<crate::snapshot::ShardSaver>,
    /// Devices to restore at start (this shard's share of the snapshot).
    pub restore: Vec<crate::core::snapshot::Record>,
    /// Shard time zero; all shards share it so event times compare.
    pub base: Instant,
    pub ready: Option<mpsc::Sender<Result<ShardInfo, String>>>,
}

/// A running server.
pub struct Server {
    pub shared: Arc<Shared>,
    pub infos: Vec<ShardInfo>,
    pub listen: SocketAddr,
    pub rcvbuf: socket::RcvbufOutcome,
    threads: Vec<JoinHandle<()>>,
    /// The HTTP endpoint (with `--http-listen`).
    pub http: Option<crate::http::HttpServer>,
    /// MQTT presence (with `--mqtt`).
    mqtt: Option<crate::mqtt::MqttPublisher>,
    /// Its counters (kept after the stop).
    pub mqtt_stats: Option<Arc<crate::mqtt::MqttStats>>,
    events: Option<crate::events::EventWriter>,
    snapshots: Option<crate::snapshot::SnapshotWriter>,
    /// The snapshot writer's counters (with `--snapshot`).
    pub snapshot_stats: Option<Arc<crate::snapshot::WriterStats>>,
    /// What it was started with (the devices file is read again from it on SIGHUP).
    config: Config,
    /// The event writer's counters (with `--events`).
    pub event_stats: Option<Arc<crate::events::EventStats>>,
}

/// Connections a shard's listener holds before they are accepted: the kernel caps it
/// at net.core.somaxconn (4096 by default), enough for bursts of reconnects.
const LISTEN_BACKLOG: i32 = 65_535;

enum OpenError {
    /// The TCP listener could not bind the port UDP got.
    TcpPortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for OpenError {
    fn from(e: E) -> OpenError {
        OpenError::Other(e.into())
    }
}

type Opened = (
    Vec<OwnedFd>,
    Vec<Option<OwnedFd>>,
    SocketAddr,
    socket::RcvbufOutcome,
);

/// Every shard's UDP socket (SO_REUSEPORT group, bind order = group index), and with
/// `tcp` every shard's TCP listener on the same port (the kernel spreads connections
/// by their addresses; frames of devices owned elsewhere are handed over like
/// datagrams').
fn open_sockets(config: &Config, opts: UdpOptions<'_>, tcp: bool) -> Result<Opened, OpenError> {
    let shards = config.shards() as usize;
    let mut sockets = Vec::with_capacity(shards);
    let (first, rcvbuf) = socket::udp_reuseport(config.network.listen, opts)?;
    // Port 0: every later socket joins the port the first one got.
    let listen = socket::local_addr(&first)?;
    sockets.push(first);
    for _ in 1..shards {
        sockets.push(socket::udp_reuseport(listen, opts)?.0);
    }
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        listeners.push(if tcp {
            Some(
                crate::sys::tcp::listener_reuseport(listen, LISTEN_BACKLOG).map_err(|e| {
                    OpenError::TcpPortTaken(anyhow::Error::new(e).context(
                        "opening the TCP listener on the UDP port (--no-tcp turns TCP off)",
                    ))
                })?,
            )
        } else {
            None
        });
    }
    Ok((sockets, listeners, listen, rcvbuf))
}

/// Raises the soft open-files limit to the hard one (each TCP connection is a
/// descriptor); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Opens the sockets, starts every shard and waits until all are ready.
pub fn start(config: &Config) -> anyhow::Result<Server> {
    let shards = config.shards() as usize;
    let base = Instant::now();
    if let Some(tcp) = config.network.tcp {
        let nofile = raise_nofile();
        if tcp.max_connections + crate::config::RESERVED_FDS > nofile {
            tracing::warn!(
                max_connections = tcp.max_connections,
                nofile,
                "the open-files limit is below --max-connections plus {} descriptors kept for the rest: connections beyond it are refused (counted in tcp_refused). Raise it (LimitNOFILE= in the systemd unit, `ulimit -Hn`, or --ulimit nofile= for a container) or lower --max-connections",
                crate::config::RESERVED_FDS
            );
        }
    }
    let prefilter = config
        .network
        .kernel_prefilter
        .then(|| sock_filters(&crate::core::bpf::prefilter_program()));
    let opts = UdpOptions {
        rcvbuf_bytes: config.network.rcvbuf_bytes,
        prefilter: prefilter.as_deref(),
    };
    let serve_tcp = config.network.tcp.is_some() && config.engine.serves_tcp();
    if config.network.tcp.is_some() && !serve_tcp {
        tracing::warn!("--engine tokio-uring serves UDP only: TCP is off (use --engine uring or epoll for TCP, or --no-tcp to silence this)");
    }
    // With port 0 the UDP port is picked first; TCP must then get the same number,
    // which a TCP socket may hold already: pick again (a few times).
    let mut attempt = 0;
    let (sockets, listeners, listen, rcvbuf) = loop {
        match open_sockets(config, opts, serve_tcp) {
            Err(OpenError::TcpPortTaken(_))
                if config.network.listen.port() == 0 && attempt < 16 =>
            {
                attempt += 1;
            }
            Err(OpenError::TcpPortTaken(e)) | Err(OpenError::Other(e)) => return Err(e),
            Ok(opened) => break opened,
        }
    };
    if shards > 1 {
        let steering = sock_filters(&crate::core::bpf::steering_program(shards as u32));
        socket::attach_reuseport_steering(&sockets[0], &steering)?;
    }
    let parkers: Arc<[Parker]> = (0..shards)
        .map(|_| {
            Ok(Parker {
                parked: AtomicBool::new(false),
                efd: EventFd::new()?,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("creating eventfds")?
        .into();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        drained: AtomicUsize::new(0),
        snapshot_gen: std::sync::atomic::AtomicU64::new(0),
        stats: (0..shards)
            .map(|_| Mutex::new(ShardStats::default()))
            .collect(),
        alive_ms: (0..shards)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        base,
        registry_gen: std::sync::atomic::AtomicU64::new(0),
        behind: (0..shards).map(|_| BehindFlag::default()).collect(),
        registry: Mutex::new(RegistryUpdate {
            registry: config.network.registry.clone(),
            removed: Arc::default(),
        }),
    });
    // The registry lives in `shared` (and in each shard's core) from here: the copies
    // of the configuration the shards and the server keep leave it out, so the one a
    // reload replaces is freed once every shard has taken the new one.
    let config = &Config {
        network: crate::config::NetworkConfig {
            registry: None,
            ..config.network.clone()
        },
        ..config.clone()
    };
    // rings[from][to]
    let mut producers: Vec<Vec<Option<Producer>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut consumers: Vec<Vec<Consumer>> = (0..shards).map(|_| Vec::new()).collect();
    // RINGBEAT_FORWARD_RING_FRAMES=N (a power of two) sizes the hand-off rings instead,
    // so tests can fill one on purpose.
    let ring_frames = match std::env::var("RINGBEAT_FORWARD_RING_FRAMES") {
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n >= 2 && n.is_power_of_two() => n,
            _ => anyhow::bail!(
                "RINGBEAT_FORWARD_RING_FRAMES={v}: give a power of two from 2 up, or unset it"
            ),
        },
        Err(_) => config.forward_ring_frames,
    };
    for (from, row) in producers.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (p, c) = spsc::ring(ring_frames);
                *slot = Some(p);
                consumers[to].push(c);
            }
        }
    }
    let mqtt = match &config.outputs.mqtt {
        Some(m) => Some(crate::mqtt::MqttPublisher::start(m.clone())?),
        None => None,
    };
    let events = if config.outputs.events.is_some() || mqtt.is_some() {
        Some(crate::events::EventWriter::start(
            config.outputs.events.as_deref(),
            mqtt.as_ref().map(|m| m.feed()),
            config.event_queue,
            shards,
        )?)
    } else {
        None
    };
    let mut snapshots = match &config.snapshot.path {
        Some(path) => Some(crate::snapshot::SnapshotWriter::start(path, shards)?),
        None => None,
    };
    let mut restore = match (&config.snapshot.path, config.snapshot.restore) {
        (Some(path), true) => match crate::snapshot::load(path)? {
            Some(snap) => {
                tracing::info!(
                    devices = snap.records.len(),
                    saved_unix_ms = snap.created_unix_ms,
                    "restoring from snapshot {}",
                    path.display()
                );
                crate::snapshot::split(snap.records, shards as u32)
            }
            None => {
                tracing::info!("no snapshot at {} yet: starting empty", path.display());
                vec![Vec::new(); shards]
            }
        },
        _ => vec![Vec::new(); shards],
    };
    // Device queries: HTTP thread → shard requests, shard → HTTP thread replies.
    let mut shard_queries: Vec<Option<(Consumer, Producer)>> = (0..shards).map(|_| None).collect();
    let mut query_port = config.outputs.http_listen.map(|_| crate::http::QueryPort {
        requests: Vec::with_capacity(shards),
        replies: Vec::with_capacity(shards),
    });
    if let Some(port) = query_port.as_mut() {
        for q in shard_queries.iter_mut() {
            let (req_tx, req_rx) = spsc::ring(crate::http::QUERY_RING);
            let (rep_tx, rep_rx) = spsc::ring(crate::http::QUERY_RING);
            port.requests.push(req_tx);
            port.replies.push(rep_rx);
            *q = Some((req_rx, rep_tx));
        }
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(shards);
    for (index, (((socket, listener), outbound), inbound)) in sockets
        .into_iter()
        .zip(listeners)
        .zip(producers)
        .zip(consumers)
        .enumerate()
    {
        let ctx = ShardContext {
            index: index as u32,
            cpu: config.network.cores[index],
            config: config.clone(),
            socket,
            listener,
            outbound,
            inbound,
            parkers: parkers.clone(),
            shared: shared.clone(),
            events_tx: events.as_ref().map(|e| e.sender(index)),
            saver: snapshots.as_mut().map(|w| w.saver(index)),
            queries: shard_queries[index].take(),
            restore: std::mem::take(&mut restore[index]),
            base,
            ready: Some(ready_tx.clone()),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("rb-shard-{index}"))
                .spawn(move || match ctx.config.engine {
                    // `serve` resolves `auto` with the preflight before it starts the
                    // engine; a caller that did not is asking for io_uring.
                    crate::config::Engine::Uring | crate::config::Engine::Auto => {
                        shard_loop::run(ctx, uring::UringEngine::new)
                    }
                    crate::config::Engine::Epoll => shard_loop::run(ctx, epoll::EpollEngine::new),
                    #[cfg(feature = "tokio-uring")]
                    crate::config::Engine::TokioUring => {
                        shard_loop::run(ctx, tokio_uring::TokioEngine::new)
                    }
                })
                .context("spawning a shard thread")?,
        );
    }
    drop(ready_tx);
    let mut infos = Vec::with_capacity(shards);
    let mut failure = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(info)) => infos.push(info),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a shard thread exited during start-up".into()),
        }
    }
    let http = match (config.outputs.http_listen, query_port) {
        (Some(addr), Some(queries)) => Some(crate::http::HttpServer::start(
            addr,
            crate::http::Sources {
                shared: shared.clone(),
                parkers: parkers.clone(),
                queries,
                base,
                events: events.as_ref().map(|e| e.stats.clone()),
                mqtt: mqtt.as_ref().map(|m| m.stats.clone()),
            },
        )),
        _ => None,
    };
    let (http, http_error) = match http {
        Some(Ok(h)) => (Some(h), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let mut server = Server {
        shared,
        infos,
        http,
        mqtt_stats: mqtt.as_ref().map(|m| m.stats.clone()),
        mqtt,
        listen,
        rcvbuf,
        threads,
        event_stats: events.as_ref().map(|e| e.stats.clone()),
        events,
        snapshot_stats: snapshots.as_ref().map(|w| w.stats.clone()),
        snapshots,
        config: config.clone(),
    };
    if let Some(e) = failure {
        server.stop();
        anyhow::bail!(e);
    }
    if let Some(e) = http_error {
        server.stop();
        return Err(e);
    }
    server.infos.sort_by_key(|i| i.index);
    Ok(server)
}

impl Server {
    /// Copies of every shard's last published counters.
    pub fn snapshot(&self) -> Vec<ShardStats> {
        self.shared
            .stats
            .iter()
            .map(|m| *m.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// Reopens the events file (SIGHUP).
    pub fn reopen_outputs(&self) {
        if let Some(e) = &self.events {
            e.reopen();
        }
    }

    /// Reads `--devices-file` again (SIGHUP) and hands it to every shard; on an error the
    /// registry in use stays. Returns (devices, with keys, forgotten).
    pub fn reload_registry(&self) -> Result<(usize, usize, usize), String> {
        let Some(path) = &self.config.network.devices_file else {
            return Err("no --devices-file to reload".into());
        };
        let next = crate::config::load_registry(
            path,
            self.config.shards(),
            self.config.network.require_auth,
            self.config.liveness.max_devices,
            self.config.liveness.devices_per_shard,
        )?;
        let mut slot = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let removed = slot
            .registry
            .as_ref()
            .map_or_else(Vec::new, |old| old.removed_in(&next));
        let counts = (next.len(), next.keyed(), removed.len());
        *slot = RegistryUpdate {
            registry: Some(Arc::new(next)),
            removed: Arc::new(removed),
        };
        drop(slot);
        self.shared.registry_gen.fetch_add(1, Ordering::Release);
        Ok(counts)
    }

    /// Asks every shard for a snapshot (with `--snapshot`); they copy it in slices.
    pub fn request_snapshot(&self) {
        self.shared.snapshot_gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops receiving, lets every shard drain and publish, flushes events, writes the
    /// final snapshot.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.http.take() {
            h.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(e) = self.events.take() {
            let t = ShardStats::total(self.snapshot().iter());
            e.finish(t.events - t.events_dropped);
        }
        if let Some(m) = self.mqtt.take() {
            m.stop();
        }
        if let Some(w) = self.snapshots.take() {
            w.finish();
        }
    }
}

/// The core's BPF instructions in the kernel's layout.
fn sock_filters(program: &[crate::core::bpf::Insn]) -> Vec<libc::sock_filter> {
    program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

impl ShardInfo {
    /// An engine without a receive arena (epoll, tokio-uring): the shard's CPU and node.
    pub(crate) fn without_arena(ctx: &ShardContext) -> ShardInfo {
        ShardInfo {
            index: ctx.index,
            cpu: ctx.cpu,
            numa_node: crate::sys::current_numa_node(),
            arena_addr: 0,
            arena_bytes: 0,
            min_wait_supported: false,
        }
    }
}
