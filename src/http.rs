//! The HTTP endpoint (`--http-listen`): metrics for Prometheus, one device's state, and
//! health, served from a thread of its own (`rb-http`), never from a shard.
//!
//! * `GET /metrics`: every counter and gauge of `ShardStats::FIELDS` (the single
//!   declaration), per shard as the `shard` label, malformed frames and datagrams by
//!   `reason`, histograms of loop busy time and receive batch sizes, and the event
//!   writer's counters; OpenMetrics text through the
//!   `prometheus-client` crate, built from the counters the shards publish every
//!   100 ms.
//! * `GET /devices/{id}`: asked of the device's owner through a bounded request ring
//!   (one per shard, this thread the only producer) that the shard drains between two
//!   receive batches and answers through a reply ring: no lock on the hot path. 404 for
//!   a device the owner does not know, 400 for an id that is not a decimal u64 > 0.
//! * `GET /healthz`: 200 when every shard published its counters within the last
//!   second, 503 naming the shards that did not.
//!
//! The HTTP server is `tiny_http`: synchronous, a handful of small dependencies, and a
//! scrape or a query every few seconds needs nothing more (no async runtime in a
//! process whose shards are its own event loops).

use crate::core::owner::owner;
use crate::core::query::{Reply, Request};
use crate::core::stats::{Histogram, Kind, ShardStats, BATCH_BOUNDS, LOOP_BUSY_BOUNDS_US};
use crate::engine::{Parker, Shared};
use crate::sys::spsc::{Consumer, Producer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a device query waits for its owner's answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);
/// Requests (and replies) a shard's query rings hold.
pub const QUERY_RING: u32 = 64;

/// This thread's ends of every shard's query rings.
pub struct QueryPort {
    pub requests: Vec<Producer>,
    pub replies: Vec<Consumer>,
}

pub struct HttpServer {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

/// What the HTTP thread reads.
pub struct Sources {
    pub shared: Arc<Shared>,
    pub parkers: Arc<[Parker]>,
    pub queries: QueryPort,
    /// Shard time zero (shard times in replies count from it).
    pub base: Instant,
    pub events: Option<Arc<crate::events::EventStats>>,
    /// The MQTT publisher's counters (with `--mqtt`).
    pub mqtt: Option<Arc<crate::mqtt::MqttStats>>,
}

impl HttpServer {
    pub fn start(addr: SocketAddr, sources: Sources) -> anyhow::Result<HttpServer> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            anyhow::anyhow!("cannot listen for HTTP on {addr}: {e} (is another program using the port? change --http-listen)")
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("--http-listen {addr}: not an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("rb-http".into())
                .spawn(move || serve(server, sources, &stop))?
        };
        Ok(HttpServer {
            thread: Some(thread),
            stop,
            addr,
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: tiny_http::Server, mut src: Sources, stop: &AtomicBool) {
    let mut next_id = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("HTTP: {e}");
                continue;
            }
        };
        let (status, content_type, body) = if request.method() != &tiny_http::Method::Get {
            (405, "text/plain", "only GET\n".to_string())
        } else {
            route(request.url(), &mut src, &mut next_id)
        };
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header"),
            );
        if let Err(e) = request.respond(response) {
            tracing::debug!("HTTP: answering failed: {e}");
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn route(url: &str, src: &mut Sources, next_id: &mut u64) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (200, OPENMETRICS, metrics(src)),
        "/healthz" => healthz(src),
        _ => match path.strip_prefix("/devices/") {
            Some(id) => device(id, src, next_id),
            None => (
                404,
                "text/plain",
                "not found: GET /metrics, /healthz or /devices/{id}\n".into(),
            ),
        },
    }
}

fn stats(shared: &Shared) -> Vec<ShardStats> {
    shared
        .stats
        .iter()
        .map(|m| *m.lock().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// The metrics document: one family per declared value, a sample per shard.
pub fn metrics_text(
    per_shard: &[ShardStats],
    events: Option<&crate::events::EventStats>,
    mqtt: Option<&crate::mqtt::MqttStats>,
) -> String {
    let mut registry = Registry::with_prefix("ringbeat");
    let shard_label = |i: usize| vec![("shard".to_string(), i.to_string())];
    let values: Vec<_> = per_shard.iter().map(ShardStats::values).collect();
    for (f, field) in ShardStats::FIELDS.iter().enumerate() {
        match field.kind {
            Kind::Counter => {
                let family = Family::<Vec<(String, String)>, Counter>::default();
                for (i, v) in values.iter().enumerate() {
                    family.get_or_create(&shard_label(i)).inc_by(v[f]);
                }
                registry.register(field.name, field.help.trim().trim_end_matches('.'), family);
            }
            Kind::Gauge => {
                let family = Family::<Vec<(String, String)>, Gauge>::default();
                for (i, v) in values.iter().enumerate() {
                    family
                        .get_or_create(&shard_label(i))
                        .set(v[f].min(i64::MAX as u64) as i64);
                }
                registry.register(field.name, field.help.trim().trim_end_matches('.'), family);
            }
        }
    }
    let malformed = Family::<Vec<(String, String)>, Counter>::default();
    for (i, s) in per_shard.iter().enumerate() {
        for (reason, count) in s.malformed_by_reason() {
            let mut labels = shard_label(i);
            labels.push(("reason".into(), reason.into()));
            malformed.get_or_create(&labels).inc_by(count);
        }
    }
    registry.register(
        "malformed",
        "Rejected frames and datagrams, by reason (PROTOCOL.md)",
        malformed,
    );
    // Counters kept by the events and MQTT threads (atomics), when those run.
    let mut counters: Vec<(&str, &str, &std::sync::atomic::AtomicU64)> = Vec::new();
    if let Some(e) = events {
        counters.extend([
            (
                "events_written",
                "Events written to the events sink",
                &e.written,
            ),
            (
                "events_lost",
                "Events discarded because the events sink failed (until reopened)",
                &e.lost,
            ),
        ]);
    }
    if let Some(m) = mqtt {
        counters.extend([
            (
                "mqtt_published_states",
                "Device states handed to the MQTT client (QoS 1, retained)",
                &m.published_states,
            ),
            (
                "mqtt_published_events",
                "Transitions handed to the MQTT client for the events topic",
                &m.published_events,
            ),
            (
                "mqtt_superseded",
                "Unsent device states replaced by a newer state of the same device",
                &m.superseded,
            ),
            (
                "mqtt_events_dropped",
                "Transitions dropped because the events topic's queue was full",
                &m.events_dropped,
            ),
            (
                "mqtt_taken_back",
                "Publishes the broker had not acknowledged when a connection was lost, taken back to be sent again",
                &m.taken_back,
            ),
            ("mqtt_connects", "Connections made to the MQTT broker", &m.connects),
        ]);
    }
    for (name, help, v) in counters {
        let c = Counter::<u64>::default();
        c.inc_by(v.load(Ordering::Relaxed));
        registry.register(name, help, c);
    }
    if let Some(m) = mqtt {
        let connected = Gauge::<i64>::default();
        connected.set(m.connected.load(Ordering::Relaxed) as i64);
        registry.register(
            "mqtt_connected",
            "1 while connected to the MQTT broker",
            connected,
        );
    }
    for (name, help, scale, bounds, get) in [
        (
            "loop_busy_seconds",
            "Time a shard's loop iteration spends working, receive to the next wait: how long something arriving meanwhile waits",
            1e-6,
            &LOOP_BUSY_BOUNDS_US,
            (|s: &ShardStats| s.loop_busy_us) as fn(&ShardStats) -> Histogram,
        ),
        (
            "receive_batch",
            "Completions (io_uring) or datagrams (epoll) a shard takes per receive round",
            1.0,
            &BATCH_BOUNDS,
            |s: &ShardStats| s.receive_batch,
        ),
    ] {
        let family = Family::<Vec<(String, String)>, FixedHistogram>::default();
        for (i, s) in per_shard.iter().enumerate() {
            let h = get(s);
            let buckets = bounds
                .iter()
                .map(|&b| b as f64 * scale)
                .chain([f64::MAX])
                .zip(h.counts)
                .collect();
            *family
                .get_or_create(&shard_label(i))
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = (h.sum as f64 * scale, h.count(), buckets);
        }
        registry.register(name, help, family);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding into a String cannot fail");
    out
}

/// A histogram whose buckets are counted elsewhere (by the shards, published with
/// their counters): (sum, count, per-bucket counts with upper bounds, +Inf as MAX).
#[derive(Debug, Default)]
struct FixedHistogram(std::sync::Mutex<HistogramPoint>);

/// Sum, count, and (upper bound, observations) per bucket.
type HistogramPoint = (f64, u64, Vec<(f64, u64)>);

impl prometheus_client::metrics::TypedMetric for FixedHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for FixedHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.0, h.1, &h.2, None)
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn metrics(src: &Sources) -> String {
    metrics_text(
        &stats(&src.shared),
        src.events.as_deref(),
        src.mqtt.as_deref(),
    )
}

fn healthz(src: &Sources) -> (u16, &'static str, String) {
    let alive: Vec<u64> = src
        .shared
        .alive_ms
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .collect();
    let now_ms = src.base.elapsed().as_millis() as u64;
    let (code, body) = health(now_ms, &alive, src.shared.stop.load(Ordering::Relaxed));
    (code, "text/plain", body)
}

/// 200 when every shard published within `engine::STALE_AFTER_MS` of `now_ms` (and the server
/// is not stopping), else 503 saying why.
fn health(now_ms: u64, alive_ms: &[u64], stopping: bool) -> (u16, String) {
    let stale = crate::engine::stale(now_ms, alive_ms);
    if stopping {
        (503, "stopping\n".into())
    } else if stale.is_empty() {
        (200, "ok\n".into())
    } else {
        (
            503,
            format!(
                "shards not running (no counters for over {} ms): {stale:?}\n",
                crate::engine::STALE_AFTER_MS
            ),
        )
    }
}

fn device(id: &str, src: &mut Sources, next_id: &mut u64) -> (u16, &'static str, String) {
    let device_id = match id.parse::<u64>() {
        Ok(v) if v > 0 && !id.starts_with('+') => v,
        _ => {
            return (
                400,
                "text/plain",
                format!("`{id}` is not a device id (a decimal integer from 1 to 2^64-1)\n"),
            )
        }
    };
    let shards = src.queries.requests.len() as u32;
    let shard = owner(device_id, shards) as usize;
    *next_id += 1;
    let request = Request {
        id: *next_id,
        device_id,
    };
    let reply = match ask(src, shard, &request) {
        Some(r) => r,
        None => {
            return (
                503,
                "text/plain",
                format!(
                    "shard {shard} did not answer within {} ms\n",
                    QUERY_TIMEOUT.as_millis()
                ),
            )
        }
    };
    let Some(d) = reply.device else {
        return (
            404,
            "text/plain",
            format!("device {device_id} is not known\n"),
        );
    };
    let now_ms = src.base.elapsed().as_millis() as u64;
    let last_unix_ms =
        crate::events::unix_now_ms().saturating_sub(now_ms.saturating_sub(d.last_seen_ms));
    let body = serde_json::json!({
        "device_id": device_id,
        "state": d.state.name(),
        "epoch": d.epoch,
        "last_seq": d.last_seq,
        "last_status": d.status,
        "interval_s": d.interval_ds as f64 / 10.0,
        "last_heartbeat_ms": last_unix_ms,
        "shard": shard,
    });
    (200, "application/json", format!("{body}\n"))
}

/// Puts `request` in the shard's ring, wakes the shard if it sleeps (the park
/// protocol of the hand-off rings), and waits for the answer.
fn ask(src: &mut Sources, shard: usize, request: &Request) -> Option<Reply> {
    let tx = &mut src.queries.requests[shard];
    if !tx.push(&request.encode()) {
        return None;
    }
    tx.publish();
    fence(Ordering::SeqCst);
    let parker = &src.parkers[shard];
    if parker.parked.load(Ordering::Relaxed) && parker.parked.swap(false, Ordering::AcqRel) {
        parker.efd.notify();
    }
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let rx = &mut src.queries.replies[shard];
    while Instant::now() < deadline {
        let mut found = None;
        rx.drain(|b| {
            let r = Reply::decode(b, request.device_id);
            if r.id == request.id {
                found = Some(r);
            }
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_the_shards_that_stopped_publishing() {
        assert_eq!(health(5_000, &[4_900, 4_950], false).0, 200);
        let (code, body) = health(5_000, &[4_900, 3_000], false);
        assert_eq!(code, 503);
        assert!(body.contains("[1]"), "{body}");
        assert_eq!(health(5_000, &[4_900, 4_950], true).0, 503);
    }
}

#[cfg(test)]
mod dashboard {
    /// deploy/grafana/ringbeat.json stays true: every metric its queries name is one
    /// /metrics serves.
    #[test]
    fn the_grafana_dashboard_queries_only_served_metrics() {
        let served = super::metrics_text(
            &[crate::core::stats::ShardStats::default()],
            None,
            Some(&crate::mqtt::MqttStats::default()),
        );
        let names: std::collections::BTreeSet<&str> = served
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/ringbeat.json")).unwrap();
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("ringbeat_") {
                        assert!(names.contains(word), "{word} (in {expr}) is not served");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10);
    }
}
