//! The HTTP endpoint against real clients: curl for every route, and the metrics
//! document through a strict OpenMetrics parser (the Prometheus project's Python
//! client, `prometheus_client.openmetrics.parser`, which refuses anything outside the
//! specification).

mod common;

use common::{heartbeat, Server};
use std::process::Command;

/// A free loopback port for `--http-listen`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET with curl: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl (Debian package curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn start(name: &str, shards: &str) -> (Server, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(name, &["--cores", shards, "--http-listen", &listen]);
    (server, port)
}

#[test]
fn metrics_are_valid_for_prometheus_and_count_per_shard() {
    // With MQTT presence on (its broker away: the publisher's counters are served all
    // the same).
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let broker = format!("mqtt://127.0.0.1:{}", free_port());
    let server = Server::start(
        "http-metrics",
        &[
            "--cores",
            "0,1",
            "--http-listen",
            &listen,
            "--mqtt",
            &broker,
        ],
    );
    let c = common::client();
    for id in 1..=100u64 {
        c.send_to(&heartbeat(id, 1, 10, false), server.addr)
            .unwrap();
    }
    c.send_to(&[0u8; 31], server.addr).unwrap();
    server.wait_stats(5, |v| v["heartbeats"] == 100);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    // Strict: every family, sample and the final `# EOF`, or an exception.
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfamilies = list(parse(sys.stdin.read()))\nprint(len(families), sum(len(f.samples) for f in families))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 with prometheus-client (pip install prometheus-client)");
    assert!(
        check.status.success(),
        "the OpenMetrics parser refused it: {}\n{body}",
        String::from_utf8_lossy(&check.stderr)
    );
    let parsed = String::from_utf8_lossy(&check.stdout);
    let families: usize = parsed.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        families > ringbeat::core::stats::ShardStats::FIELDS.len(),
        "{parsed}"
    );
    // Every shard's heartbeats, summed, are the server's.
    let sum: u64 = body
        .lines()
        .filter(|l| l.starts_with("ringbeat_heartbeats_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, 100, "{body}");
    assert!(body.contains("ringbeat_devices{shard=\"0\"}"));
    assert!(body.contains("ringbeat_devices{shard=\"1\"}"));
    assert!(body.contains("reason=\"bad_datagram_length\"} 1"), "{body}");
    assert!(body.contains("# HELP ringbeat_tcp_open TCP connections open on this shard"));
    assert!(body.contains("ringbeat_mqtt_connected 0"), "{body}");
    assert!(
        body.contains("# TYPE ringbeat_mqtt_taken_back counter"),
        "{body}"
    );
    // Histograms, per shard, with a +Inf bucket equal to their count.
    for name in ["ringbeat_loop_busy_seconds", "ringbeat_receive_batch"] {
        assert!(body.contains(&format!("# TYPE {name} histogram")), "{body}");
        let count: u64 = body
            .lines()
            .find(|l| l.starts_with(&format!("{name}_count{{shard=\"0\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}_count: {body}"));
        assert!(count > 0);
        assert!(
            body.contains(&format!("{name}_bucket{{le=\"+Inf\",shard=\"0\"}} {count}")),
            "{body}"
        );
    }
}

#[test]
fn a_device_is_answered_by_its_owner() {
    let (server, port) = start("http-devices", "0,1");
    let c = common::client();
    for id in [42u64, 43, 1 << 40] {
        c.send_to(&heartbeat(id, 7, 25, false), server.addr)
            .unwrap();
    }
    server.wait_stats(5, |v| v["heartbeats"] == 3);
    for id in [42u64, 43, 1 << 40] {
        let (code, body) = get(port, &format!("/devices/{id}"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["device_id"], id);
        assert_eq!(v["state"], "online");
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["last_seq"], 7);
        assert_eq!(v["last_status"], id % 7);
        assert_eq!(v["interval_s"], 2.5);
        assert_eq!(v["shard"], ringbeat::core::owner::owner(id, 2));
        let age = ringbeat::events::unix_now_ms() as i64 - v["last_heartbeat_ms"].as_i64().unwrap();
        assert!((0..10_000).contains(&age), "{v}");
    }
    assert_eq!(get(port, "/devices/44").0, 404);
    for bad in ["abc", "0", "-1", "18446744073709551616", ""] {
        assert_eq!(get(port, &format!("/devices/{bad}")).0, 400, "{bad}");
    }
    assert_eq!(get(port, "/nowhere").0, 404);
}

#[test]
fn healthz_is_200_while_every_shard_runs() {
    let (server, port) = start("http-healthz", "0,1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, body) = get(port, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (status, _, _) = server.terminate();
    assert!(status.success());
}
