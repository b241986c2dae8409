//! Turning shard counters into the `--stats-json` file (rewritten atomically: temp file
//! + rename, so readers never see half a file) and the one-line stderr summary.

use crate::core::stats::ShardStats;
use crate::engine::ShardInfo;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;

/// Every declared value by name (`ShardStats::FIELDS`), then `malformed` by reason and
/// `malformed_total`.
fn stats_object(s: &ShardStats) -> Map<String, Value> {
    let mut m: Map<String, Value> = ShardStats::FIELDS
        .iter()
        .zip(s.values())
        .map(|(f, v)| (f.name.to_string(), json!(v)))
        .collect();
    let malformed: Map<String, Value> = s
        .malformed_by_reason()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    m.insert("malformed".into(), Value::Object(malformed));
    m.insert("malformed_total".into(), json!(s.malformed_total()));
    m
}

/// The full stats document.
pub fn stats_json(
    per_shard: &[ShardStats],
    infos: &[ShardInfo],
    uptime: Duration,
    listen: &str,
) -> Value {
    let mut top = stats_object(&ShardStats::total(per_shard));
    top.insert("uptime_s".into(), json!(uptime.as_secs_f64()));
    top.insert("listen".into(), json!(listen));
    let shards: Vec<Value> = per_shard
        .iter()
        .zip(infos)
        .map(|(s, info)| {
            let mut m = stats_object(s);
            m.insert("shard".into(), json!(info.index));
            m.insert("cpu".into(), json!(info.cpu));
            m.insert("numa_node".into(), json!(info.numa_node));
            m.insert("arena_addr".into(), json!(format!("{:x}", info.arena_addr)));
            m.insert("arena_bytes".into(), json!(info.arena_bytes));
            Value::Object(m)
        })
        .collect();
    top.insert("per_shard".into(), Value::Array(shards));
    Value::Object(top)
}

/// The snapshot writer's counters: snapshots `written` and `failed` (each failure
/// logged, rate-limited), and the last one's `records` and `write_ms`.
pub fn snapshot_json(s: &crate::snapshot::WriterStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "written": s.written.load(Relaxed),
        "failed": s.failed.load(Relaxed),
        "last_records": s.last_records.load(Relaxed),
        "last_write_ms": s.last_write_ms.load(Relaxed),
    })
}

/// Writes `value` to `path` atomically.
/// Whether `write_atomically` can write `path`: its temporary file is created and
/// removed (the document itself is left alone, so readers never see a placeholder).
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, b"")?;
    std::fs::remove_file(&tmp)
}

pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)
}

/// One human line for the interval between `prev` and `now` (server totals).
pub fn summary_line(prev: &ShardStats, now: &ShardStats, secs: f64) -> String {
    let d = now.since(prev);
    let rate = |v: u64| v as f64 / secs.max(1e-9);
    // Engines that cannot see their own system calls (tokio-uring) report no enters.
    let per_enter = |v: u64| {
        if d.enters > 0 {
            format!("{:.1}", v as f64 / d.enters as f64)
        } else {
            "n/a".into()
        }
    };
    format!(
        "hb/s {:.0} dgram/s {:.0} acks/s {:.0} | tcp: open {} accepted/s {:.0} closed/s {:.0} refused {} frames/s {:.0} ack_queue_drops {} | devices {} (online {} late {} offline {}) | drops: kernel {} fwd {} events {} malformed {} | refused: table_full {} unknown_device {} auth_required {} auth_failed {} replayed {} disallowed {} tcp_disallowed {} | blind {} ms, deferred {} | behind {} ms, ring_dry {} | wakeups/s {:.0} drains/s {:.0} hb/wakeup {:.1} hb/enter {} cqes/enter {}",
        rate(d.heartbeats),
        rate(d.datagrams),
        rate(d.acks_sent),
        now.tcp_open,
        rate(d.tcp_accepted),
        rate(d.tcp_closed()),
        now.tcp_refused,
        rate(d.tcp_frames),
        now.tcp_ack_queue_drops,
        d.devices,
        d.online,
        d.late,
        d.offline,
        now.kernel_drops,
        now.forward_drops,
        now.events_dropped,
        now.malformed_total(),
        now.table_full,
        now.unknown_device,
        now.auth_required,
        now.auth_failed,
        now.replayed,
        now.disallowed,
        now.tcp_disallowed,
        d.blind_ms,
        d.deferred,
        d.behind_ms,
        now.ring_dry,
        rate(d.wakeups),
        rate(d.backlog_polls),
        d.heartbeats as f64 / d.wakeups.max(1) as f64,
        per_enter(d.heartbeats),
        per_enter(d.cqes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_reports_event_density_and_na_without_enters() {
        let prev = ShardStats::default();
        let now = ShardStats {
            heartbeats: 1000,
            wakeups: 10,
            cqes: 500,
            enters: 50,
            backlog_polls: 3,
            ..Default::default()
        };
        let line = summary_line(&prev, &now, 1.0);
        assert!(
            line.contains(
                "tcp: open 0 accepted/s 0 closed/s 0 refused 0 frames/s 0 ack_queue_drops 0"
            ),
            "{line}"
        );
        assert!(
            line.contains("wakeups/s 10 drains/s 3 hb/wakeup 100.0 hb/enter 20.0 cqes/enter 10.0"),
            "{line}"
        );
        let blind = ShardStats { enters: 0, ..now };
        let line = summary_line(&prev, &blind, 1.0);
        assert!(line.contains("hb/enter n/a cqes/enter n/a"), "{line}");
    }

    #[test]
    fn stats_document_has_required_keys() {
        let mut s = ShardStats {
            heartbeats: 3,
            ..Default::default()
        };
        s.malformed_frames[0] = 2;
        let info = ShardInfo {
            index: 0,
            cpu: 0,
            numa_node: 0,
            arena_addr: 4096,
            arena_bytes: 8192,
            min_wait_supported: true,
        };
        let v = stats_json(&[s], &[info], Duration::from_secs(1), "127.0.0.1:1");
        for k in [
            "heartbeats",
            "datagrams",
            "acks_sent",
            "malformed",
            "lost_heartbeats",
            "duplicates",
            "devices",
            "kernel_drops",
            "ring_dry",
            "holds",
            "behind_ms",
            "forwarded",
            "forward_drops",
            "events_dropped",
            "cqes",
            "enters",
            "wakeups",
            "per_shard",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["malformed"]["bad_magic"], 2);
        assert_eq!(v["per_shard"][0]["heartbeats"], 3);
        let dir = std::env::temp_dir().join(format!("ringbeat-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        write_atomically(&p, &v).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}
