//! MQTT presence (`--mqtt mqtt://HOST:PORT`): every device's current state retained at
//! `{prefix}/devices/{id}/state` (QoS 1), so a subscriber sees the whole fleet at once;
//! with `--mqtt-events`, every transition on `{prefix}/events` (QoS 1, not retained).
//!
//! Fed by the event thread (never by a shard) through a coalescing outbox: the latest
//! state of each device waits there until it is handed to the client, so when the
//! broker is slow or down a device that changes again replaces its unsent state (the
//! replaced one is counted in `superseded`, not silently lost), memory stays one entry
//! per device, and after any outage the broker gets every device's current state.
//! After every (re)connection (a restarted broker may have lost its retained messages)
//! the current state of every device is published again, at most
//! `RESYNC_PER_SECOND` per second. Transitions for `{prefix}/events` wait in a bounded
//! queue; beyond it they are counted in `events_dropped`. What the client had sent
//! but the broker never acknowledged when a connection is lost is taken back into the
//! outbox (`taken_back`) and sent again from the next connection.
//!
//! The client is `rumqttc` (pure Rust, maintained); its event loop runs on a thread of
//! its own (`rb-mqtt-io`), the publishing on `rb-mqtt`.

use crate::events::Made;
use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// States handed to the client per second at most while resyncing after a connect
/// (the broker's retained store is rebuilt in 1M / 50K = 20 s for a million devices);
/// transitions outside a resync go as fast as the broker takes them.
const RESYNC_PER_SECOND: u64 = 50_000;
/// Transitions waiting for `{prefix}/events` before more are counted as dropped.
const EVENTS_QUEUE: usize = 65_536;
/// Requests the client's channel holds: the outbox keeps the rest, coalesced.
const CLIENT_QUEUE: usize = 1_024;
/// At stop: how long the thread keeps publishing what the outbox holds.
const FLUSH_AT_STOP: Duration = Duration::from_millis(300);

/// The validated `--mqtt*` settings.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub prefix: String,
    pub credentials: Option<(String, String)>,
    pub events: bool,
    /// Names this server in every payload (`--server-id`).
    pub server_id: String,
}

/// Counters for the stats document.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub published_states: AtomicU64,
    pub published_events: AtomicU64,
    /// Unsent states replaced by a newer one of the same device (coalesced).
    pub superseded: AtomicU64,
    pub events_dropped: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
    /// States still waiting in the outbox when the stop's flush ended.
    pub unsent_at_stop: AtomicU64,
    /// Publishes handed to the client but not acknowledged by the broker when the
    /// connection was lost: taken back (states marked unsent again, transitions to the
    /// front of their queue) and sent again after the next connect.
    pub taken_back: AtomicU64,
}

impl MqttStats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "connects": g(&self.connects),
            "published_states": g(&self.published_states),
            "published_events": g(&self.published_events),
            "superseded": g(&self.superseded),
            "events_dropped": g(&self.events_dropped),
            "unsent_at_stop": g(&self.unsent_at_stop),
            "taken_back": g(&self.taken_back),
        })
    }
}

struct Latest {
    made: Made,
    /// Not yet handed to the client since it changed (or since a resync began).
    dirty: bool,
}

/// The coalescing outbox between the event thread and the MQTT thread.
#[derive(Default)]
pub struct Outbox {
    states: HashMap<u64, Latest>,
    dirty: VecDeque<u64>,
    events: VecDeque<Made>,
    /// Transitions the client had taken but the broker never acknowledged (a lost
    /// connection): sent before `events`, in their order.
    events_again: VecDeque<Vec<u8>>,
    /// A resync (every state again) is under way: rate-limited until `dirty` empties.
    resyncing: bool,
}

impl Outbox {
    /// A new transition: the device's state to publish (replacing an unsent one), and
    /// the transition itself for `{prefix}/events`. A refresh (a device's state sent
    /// again because its transition was dropped) is a state only, and nothing to do
    /// when that state is the one already published.
    fn offer(&mut self, m: &Made, with_events: bool, stats: &MqttStats) {
        let id = m.event.device_id;
        match self.states.get_mut(&id) {
            Some(l)
                if m.refresh
                    && !l.dirty
                    && (l.made.event.to, l.made.event.epoch) == (m.event.to, m.event.epoch) => {}
            Some(l) => {
                if l.dirty {
                    stats.superseded.fetch_add(1, Ordering::Relaxed);
                } else {
                    l.dirty = true;
                    self.dirty.push_back(id);
                }
                l.made = *m;
            }
            None => {
                self.states.insert(
                    id,
                    Latest {
                        made: *m,
                        dirty: true,
                    },
                );
                self.dirty.push_back(id);
            }
        }
        if with_events && !m.refresh {
            if self.events.len() < EVENTS_QUEUE {
                self.events.push_back(*m);
            } else {
                stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every device's state is to be published again (after a connect).
    fn mark_all(&mut self) {
        self.resyncing = true;
        for (id, l) in self.states.iter_mut() {
            if !l.dirty {
                l.dirty = true;
                self.dirty.push_back(*id);
            }
        }
    }

    fn take(&mut self) -> Option<Made> {
        while let Some(id) = self.dirty.pop_front() {
            if let Some(l) = self.states.get_mut(&id) {
                if l.dirty {
                    l.dirty = false;
                    return Some(l.made);
                }
            }
        }
        None
    }

    /// A state the client could not take goes back to the front.
    fn put_back(&mut self, id: u64) {
        if let Some(l) = self.states.get_mut(&id) {
            l.dirty = true;
            self.dirty.push_front(id);
        }
    }

    /// A state the client took but the broker never acknowledged: unsent again (a
    /// newer state of the device, if one came meanwhile, is already waiting).
    fn unsent(&mut self, id: u64) {
        if let Some(l) = self.states.get_mut(&id) {
            if !l.dirty {
                l.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    fn waiting(&self) -> bool {
        !(self.dirty.is_empty() && self.events.is_empty() && self.events_again.is_empty())
    }
}

/// The event thread's handle on the outbox.
#[derive(Clone)]
pub struct Feed {
    outbox: Arc<Mutex<Outbox>>,
    events: bool,
    stats: Arc<MqttStats>,
}

impl Feed {
    pub fn offer_all(&self, made: &[Made]) {
        if made.is_empty() {
            return;
        }
        let mut o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for m in made {
            o.offer(m, self.events, &self.stats);
        }
    }
}

pub struct MqttPublisher {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<MqttStats>,
    feed: Feed,
}

/// `{"device_id":..,"state":..,"epoch":..,"seq":..,"status":..,"time_ms":..,"server":..}`
pub fn state_json(m: &Made, server_id: &str) -> String {
    let e = &m.event;
    serde_json::json!({
        "device_id": e.device_id,
        "state": e.to.name(),
        "epoch": e.epoch,
        "seq": e.seq,
        "status": e.status,
        "time_ms": m.unix_ms,
        "last_seen_ms": m.last_seen_unix_ms,
        "server": server_id,
    })
    .to_string()
}

impl MqttPublisher {
    pub fn start(cfg: MqttConfig) -> anyhow::Result<MqttPublisher> {
        let stats = Arc::new(MqttStats::default());
        let feed = Feed {
            outbox: Arc::new(Mutex::new(Outbox::default())),
            events: cfg.events,
            stats: stats.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (feed, stop) = (feed.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rb-mqtt".into())
                .spawn(move || run(cfg, feed, &stop))?
        };
        Ok(MqttPublisher {
            thread: Some(thread),
            stop,
            stats,
            feed,
        })
    }

    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// After the event thread has handed over its last events: publishes what the
    /// outbox holds for up to `FLUSH_AT_STOP`, then disconnects.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// QoS 1 publishes awaiting the broker's PUBACK at once (rumqttc's default is 100,
/// which bounds throughput by round trips).
const INFLIGHT: u16 = 1_024;

fn run(cfg: MqttConfig, feed: Feed, stop: &AtomicBool) {
    let mut options = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(true);
    options.set_inflight(INFLIGHT);
    if let Some((user, password)) = &cfg.credentials {
        options.set_credentials(user, password);
    }
    let (client, connection) = Client::new(options, CLIENT_QUEUE);
    let stats = feed.stats.clone();
    // The client's event loop runs on a thread of its own: it says when a connection
    // is made (every state is then published again) or lost.
    let resync = Arc::new(AtomicBool::new(false));
    let io_stop = Arc::new(AtomicBool::new(false));
    let io = {
        let (resync, io_stop) = (resync.clone(), io_stop.clone());
        let link = Link {
            endpoint: format!("{}:{}", cfg.host, cfg.port),
            states_prefix: format!("{}/devices/", cfg.prefix),
            feed: feed.clone(),
        };
        std::thread::Builder::new()
            .name("rb-mqtt-io".into())
            .spawn(move || drive(connection, &link, &resync, &io_stop))
    };
    let state_topic = |id: u64| format!("{}/devices/{id}/state", cfg.prefix);
    let events_topic = format!("{}/events", cfg.prefix);
    let mut window = (Instant::now(), 0u64);
    let mut stop_deadline: Option<Instant> = None;
    let mut batch: Vec<Made> = Vec::with_capacity(256);
    loop {
        if stop.load(Ordering::Relaxed) && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + FLUSH_AT_STOP);
        }
        let connected = stats.connected.load(Ordering::Relaxed);
        if let Some(d) = stop_deadline {
            let o = feed.outbox.lock().unwrap_or_else(|p| p.into_inner());
            if !o.waiting() || Instant::now() >= d || !connected {
                stats.unsent_at_stop.store(
                    o.states.values().filter(|l| l.dirty).count() as u64,
                    Ordering::Relaxed,
                );
                break;
            }
        }
        if resync.swap(false, Ordering::Relaxed) {
            feed.outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .mark_all();
        }
        if !connected {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if window.0.elapsed() >= Duration::from_secs(1) {
            window = (Instant::now(), 0);
        }
        // States (at most RESYNC_PER_SECOND a second) and transitions, taken from the
        // outbox in batches and handed to the client while its queue has room.
        {
            let mut o = feed.outbox.lock().unwrap_or_else(|p| p.into_inner());
            while batch.len() < batch.capacity()
                && window.1 + (batch.len() as u64) < RESYNC_PER_SECOND
            {
                match o.take() {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
        }
        let mut handed = 0;
        for m in &batch {
            let payload = state_json(m, &cfg.server_id);
            if client
                .try_publish(
                    state_topic(m.event.device_id),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .is_err()
            {
                break;
            }
            handed += 1;
        }
        if handed < batch.len() {
            // The client's queue is full: the rest go back, in order, still coalescing.
            let mut o = feed.outbox.lock().unwrap_or_else(|p| p.into_inner());
            for m in batch[handed..].iter().rev() {
                o.put_back(m.event.device_id);
            }
        }
        window.1 += handed as u64;
        stats
            .published_states
            .fetch_add(handed as u64, Ordering::Relaxed);
        let full = handed < batch.len();
        batch.clear();
        let mut events_handed = 0u64;
        if !full {
            let mut o = feed.outbox.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(payload) = o.events_again.front() {
                if client
                    .try_publish(
                        events_topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .is_err()
                {
                    break;
                }
                o.events_again.pop_front();
                events_handed += 1;
            }
            while let Some(m) = o.events.front().copied() {
                let payload = crate::events::event_json(&m);
                if client
                    .try_publish(events_topic.clone(), QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    break;
                }
                o.events.pop_front();
                events_handed += 1;
            }
        }
        stats
            .published_events
            .fetch_add(events_handed, Ordering::Relaxed);
        if handed == 0 && events_handed == 0 {
            std::thread::sleep(Duration::from_millis(if full { 1 } else { 5 }));
        }
    }
    io_stop.store(true, Ordering::Relaxed);
    let _ = client.disconnect();
    if let Ok(io) = io {
        // The event loop ends once the disconnect went out (or at its next error).
        let deadline = Instant::now() + Duration::from_millis(200);
        while !io.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What the client's event loop needs besides the connection.
struct Link {
    endpoint: String,
    /// `{prefix}/devices/`: a publish whose topic starts so is a device's state.
    states_prefix: String,
    feed: Feed,
}

/// Runs the client's event loop until the stop: records connects (asking for a
/// resync) and losses (retrying every second).
fn drive(mut connection: rumqttc::Connection, link: &Link, resync: &AtomicBool, stop: &AtomicBool) {
    let stats = &link.feed.stats;
    let mut last_error_log: Option<Instant> = None;
    while let Ok(notification) = connection.recv() {
        match notification {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                resync.store(true, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    "MQTT: connected to {}; publishing every device's state",
                    link.endpoint
                );
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if stop.load(Ordering::Relaxed) => {
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let was = stats.connected.swap(false, Ordering::Relaxed);
                take_back(&mut connection.eventloop.pending, link);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if was || last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    last_error_log = Some(Instant::now());
                    tracing::warn!(
                        "MQTT: {}: {} (retrying every second; states wait in the outbox, coalesced)",
                        link.endpoint,
                        describe(&e)
                    );
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// After a lost connection the client holds what the broker never acknowledged, and
/// would drop it at the next connect (a clean session): the states become unsent
/// again in the outbox and the transitions go to the front of their queue, so the
/// broker gets them from the next connection and nothing is lost uncounted.
fn take_back(pending: &mut VecDeque<rumqttc::Request>, link: &Link) {
    if pending.is_empty() {
        return;
    }
    let mut o = link.feed.outbox.lock().unwrap_or_else(|p| p.into_inner());
    let mut events = Vec::new();
    for request in pending.drain(..) {
        let rumqttc::Request::Publish(p) = request else {
            continue;
        };
        link.feed.stats.taken_back.fetch_add(1, Ordering::Relaxed);
        let device = p
            .topic
            .strip_prefix(&link.states_prefix)
            .and_then(|rest| rest.split('/').next())
            .and_then(|id| id.parse::<u64>().ok());
        match device {
            Some(id) => o.unsent(id),
            None => events.push(p.payload.to_vec()),
        }
    }
    for payload in events.into_iter().rev() {
        o.events_again.push_front(payload);
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// `mqtt://HOST:PORT` (port 1883 when left out).
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        format!(
            "`{url}` is not mqtt://HOST:PORT (TLS is not served: use a local broker or a tunnel)"
        )
    })?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
        ),
        _ => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::shard::Event;
    use crate::core::table::Liveness;

    fn made(id: u64, to: Liveness) -> Made {
        Made {
            shard: 0,
            unix_ms: 1,
            last_seen_unix_ms: 1,
            refresh: false,
            event: Event {
                device_id: id,
                from: Liveness::Online,
                to,
                epoch: 1,
                seq: 1,
                status: 0,
                time_ms: 0,
                event_seq: 1,
                last_seen_ms: 0,
            },
        }
    }

    #[test]
    fn the_outbox_keeps_the_latest_state_and_counts_what_it_replaced() {
        let stats = MqttStats::default();
        let mut o = Outbox::default();
        o.offer(&made(1, Liveness::Online), false, &stats);
        o.offer(&made(1, Liveness::Late), false, &stats);
        o.offer(&made(1, Liveness::Offline), false, &stats);
        o.offer(&made(2, Liveness::Online), false, &stats);
        assert_eq!(stats.superseded.load(Ordering::Relaxed), 2);
        assert_eq!(o.take().map(|m| m.event.to), Some(Liveness::Offline));
        assert_eq!(o.take().map(|m| m.event.device_id), Some(2));
        assert!(o.take().is_none());
        // After a connect, everything again, once each.
        o.mark_all();
        let mut ids: Vec<u64> =
            std::iter::from_fn(|| o.take().map(|m| m.event.device_id)).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        o.put_back(2);
        assert_eq!(o.take().map(|m| m.event.device_id), Some(2));
    }

    #[test]
    fn a_refresh_publishes_a_state_only_when_it_differs() {
        let stats = MqttStats::default();
        let mut o = Outbox::default();
        let refresh = |id, to| Made {
            refresh: true,
            ..made(id, to)
        };
        o.offer(&made(1, Liveness::Late), true, &stats);
        assert_eq!(o.take().map(|m| m.event.to), Some(Liveness::Late));
        assert_eq!(o.events.len(), 1, "the transition");
        // Device 1's transition to offline was dropped: its refresh is published.
        // Then the same state again: nothing to do. Device 2 was never published.
        o.offer(&refresh(1, Liveness::Offline), true, &stats);
        assert_eq!(o.take().map(|m| m.event.to), Some(Liveness::Offline));
        o.offer(&refresh(1, Liveness::Offline), true, &stats);
        o.offer(&refresh(2, Liveness::Online), true, &stats);
        assert_eq!(o.take().map(|m| m.event.device_id), Some(2));
        assert!(o.take().is_none());
        assert_eq!(o.events.len(), 1, "a refresh is no transition");
    }

    #[test]
    fn what_the_broker_never_acknowledged_is_taken_back() {
        let feed = Feed {
            outbox: Arc::new(Mutex::new(Outbox::default())),
            events: true,
            stats: Arc::new(MqttStats::default()),
        };
        feed.offer_all(&[made(1, Liveness::Online), made(2, Liveness::Online)]);
        {
            let mut o = feed.outbox.lock().unwrap();
            assert!(o.take().is_some() && o.take().is_some());
            o.events.clear();
        }
        let link = Link {
            endpoint: "broker:1883".into(),
            states_prefix: "rb/devices/".into(),
            feed: feed.clone(),
        };
        let publish = |topic: &str, payload: &str| {
            rumqttc::Request::Publish(rumqttc::Publish::new(
                topic,
                QoS::AtLeastOnce,
                payload.as_bytes().to_vec(),
            ))
        };
        let mut pending = VecDeque::from([
            publish("rb/devices/2/state", "{}"),
            publish("rb/events", "first"),
            rumqttc::Request::PingReq(rumqttc::PingReq),
            publish("rb/events", "second"),
        ]);
        take_back(&mut pending, &link);
        assert!(pending.is_empty());
        assert_eq!(feed.stats.taken_back.load(Ordering::Relaxed), 3);
        let mut o = feed.outbox.lock().unwrap();
        o.events_again.push_back(b"newer".to_vec());
        assert_eq!(
            Vec::from(o.events_again.clone()),
            [b"first".to_vec(), b"second".to_vec(), b"newer".to_vec()]
        );
        // Device 2's state is unsent again; device 1's (acknowledged) is not.
        assert_eq!(o.take().map(|m| m.event.device_id), Some(2));
        assert!(o.take().is_none());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884"),
            Ok(("127.0.0.1".into(), 1884))
        );
        assert_eq!(parse_url("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert_eq!(parse_url("mqtt://[::1]:1883"), Ok(("::1".into(), 1883)));
        assert!(parse_url("mqtts://x:1").is_err());
        assert!(parse_url("mqtt://x:port").is_err());
    }
}
