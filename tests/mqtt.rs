//! MQTT presence against a real broker (Mosquitto, Debian package `mosquitto`, started
//! here on a free port): every device's state retained, transitions on the events
//! topic, and a broker restart (which loses its retained messages) after which the
//! broker again holds every device's current state.

mod common;

use common::{heartbeat, Server};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Broker {
    child: Child,
    port: u16,
    _conf: PathBuf,
}

impl Broker {
    /// Mosquitto on 127.0.0.1:`port`, anonymous, without persistence (a restart loses
    /// every retained message).
    fn start(port: u16) -> Broker {
        let conf = common::temp_dir("mosquitto").join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            child,
            port,
            _conf: conf,
        }
    }

    /// SIGSTOP: connections stay open, nothing is read or acknowledged.
    fn pause(&self) {
        let ok = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not pause mosquitto");
    }

    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over plain HTTP/1.0: the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Subscribes to `topic` and collects JSON payloads by device id until `want` holds
/// (or panics after `secs`).
fn collect(
    port: u16,
    topic: &str,
    secs: u64,
    want: impl Fn(&HashMap<u64, serde_json::Value>) -> bool,
) -> HashMap<u64, serde_json::Value> {
    let id = format!(
        "test-{}",
        std::process::id() as u64 * 1000 + free_port() as u64
    );
    let (client, mut connection) = Client::new(MqttOptions::new(id, "127.0.0.1", port), 64);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            connection.recv_timeout(Duration::from_millis(50))
        {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            got.insert(v["device_id"].as_u64().unwrap(), v);
        }
        if want(&got) {
            return got;
        }
    }
    panic!(
        "{topic}: never got what was wanted; {} messages, e.g. {:?}",
        got.len(),
        got.values().next()
    );
}

#[test]
fn every_device_state_is_retained_and_survives_a_broker_restart() {
    let broker = Broker::start(free_port());
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let http = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "mqtt",
        &[
            "--cores",
            "0,1",
            "--mqtt",
            &url,
            "--mqtt-events",
            "--server-id",
            "edge-7",
            "--http-listen",
            &http,
        ],
    );
    let c = common::client();
    let n = 300u64;
    // 4 s intervals: late after 6 s, offline after 12 s.
    let sent = Instant::now();
    for id in 1..=n {
        c.send_to(&heartbeat(id, 5, 40, false), server.addr)
            .unwrap();
    }
    let states = collect(broker.port, "ringbeat/devices/+/state", 10, |m| {
        m.len() == n as usize
    });
    for (id, v) in &states {
        assert_eq!(v["state"], "online", "{v}");
        assert_eq!((v["epoch"].as_u64(), v["seq"].as_u64()), (Some(1), Some(5)));
        assert_eq!(v["status"], id % 7);
        assert_eq!(v["server"], "edge-7");
        assert!(v["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // The broker stops answering while more devices appear: their states and
    // transitions go out but are never acknowledged. Then it dies: the server takes
    // them back rather than letting the client drop them at the next (clean) connect.
    let extra = 50u64;
    broker.pause();
    for id in n + 1..=n + extra {
        c.send_to(&heartbeat(id, 5, 40, false), server.addr)
            .unwrap();
    }
    let v = server.wait_stats(5, |v| {
        v["mqtt"]["published_states"].as_u64() >= Some(n + extra)
            && v["mqtt"]["published_events"].as_u64() >= Some(n + extra)
    });
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "no device may go late before here: {}",
        v["mqtt"]
    );
    let port = broker.kill();
    let v = server.wait_stats(5, |v| v["mqtt"]["connected"] == false);
    assert_eq!(
        v["mqtt"]["taken_back"].as_u64(),
        Some(2 * extra),
        "every unacknowledged state and transition: {}",
        v["mqtt"]
    );
    // The same counters for Prometheus.
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains(&format!("ringbeat_mqtt_taken_back_total {}", 2 * extra))
            && metrics.contains("ringbeat_mqtt_connected 0"),
        "{metrics}"
    );
    // The broker comes back empty (no persistence) after every device went late and
    // offline: the server reconnects and publishes every device's current state,
    // offline; the late ones it could not send were replaced (counted). (Waiting for
    // the server to say so rather than for 12 s: a shard that was blind for a while,
    // e.g. starved of its CPU on a busy machine, defers its deadlines by that time.)
    let v = server.wait_stats(30, |v| v["offline"].as_u64() == Some(n + extra));
    assert!(v["late"] == 0 && v["online"] == 0, "{v}");
    let _broker = Broker::start(port);
    let states = collect(port, "ringbeat/devices/+/state", 15, |m| {
        m.len() == (n + extra) as usize && m.values().all(|v| v["state"] == "offline")
    });
    assert!(states.values().all(|v| v["epoch"] == 1));
    let v = server.wait_stats(5, |v| v["mqtt"]["connects"].as_u64() >= Some(2));
    // Each of the first n devices went late unsent; each extra one went late and
    // offline while its taken-back online state was still unsent.
    assert!(
        v["mqtt"]["superseded"].as_u64().unwrap() >= n + 2 * extra,
        "{}",
        v["mqtt"]
    );
    assert_eq!(v["mqtt"]["connected"], true);
    // Transitions are published too (not retained): a device that comes back.
    let waiter = std::thread::spawn(move || {
        collect(port, "ringbeat/events", 10, |m| {
            m.get(&1).is_some_and(|v| v["to"] == "online")
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    c.send_to(&heartbeat(1, 6, 20, false), server.addr).unwrap();
    let events = waiter.join().unwrap();
    assert_eq!(events[&1]["from"], "offline");
    assert_eq!(events[&1]["epoch"], 2);
    let (status, v, _) = server.terminate();
    assert!(status.success());
    assert_eq!(v["mqtt"]["unsent_at_stop"], 0);
}

/// Presence is state, not a log: when the shard's event queue is full, the dropped
/// transitions are counted (`events_dropped`) and the devices they concern get their
/// current state published once the queue has room, so the broker still holds every
/// device's state. 400 devices on 1 s intervals heartbeat once and go late, then
/// offline, each wave in one tick, through a queue of 16 events.
#[test]
fn dropped_transitions_still_reach_presence_as_state() {
    let broker = Broker::start(free_port());
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let server = Server::start_with_env(
        "mqtt-dropped",
        "127.0.0.1:0",
        &["--cores", "0", "--mqtt", &url],
        &[("RINGBEAT_EVENT_QUEUE", "16")],
    );
    let c = common::client();
    let n = 400u64;
    for id in 1..=n {
        c.send_to(&heartbeat(id, 1, 10, false), server.addr)
            .unwrap();
        if id % 8 == 0 {
            // Eight at a time: the queue takes each group's online transitions.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let v = server.wait_stats(15, |v| v["offline"].as_u64() == Some(n));
    assert!(
        v["events_dropped"].as_u64().unwrap() > 0,
        "the waves must overflow the queue for this test to mean anything: {v}"
    );
    let states = collect(broker.port, "ringbeat/devices/+/state", 15, |m| {
        m.len() == n as usize && m.values().all(|v| v["state"] == "offline")
    });
    assert!(states.values().all(|v| v["epoch"] == 1));
    let (status, v, _) = server.terminate();
    assert!(status.success());
    assert!(v["presence_refreshes"].as_u64().unwrap() > 0, "{v}");
}
