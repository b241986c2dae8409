//! The generator against the real server (started in-process through the library) and
//! against its own sink, on loopback: every frame sent is counted by the receiver and
//! every ack requested comes back.

use std::process::Command;
use std::time::Duration;

fn load(target: &str, dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let json = dir.join("load.json");
    let hgrm = dir.join("load.hgrm");
    let hlog = dir.join("load.hlog");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .args([
            "load",
            "--target",
            target,
            "--devices",
            "20000",
            "--rate",
            "40000",
            "--batch",
            "4",
        ])
        .args([
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--ack-every",
            "10",
            "--source-ports",
            "8",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--hlog")
        .arg(&hlog)
        .args(if extra.contains(&"--cpus") {
            &[][..]
        } else {
            &["--cpus", "1"][..]
        })
        .args(extra)
        .output()
        .expect("run ringbeat-bench");
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&hgrm).unwrap().len() > 0);
    assert!(std::fs::metadata(&hlog).unwrap().len() > 0);
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

/// One shard on CPU 0, in-process, on a free loopback port.
fn start_server() -> ringbeat::engine::Server {
    let config = ringbeat::config::ServeArgs::parse_flags([
        "--listen=127.0.0.1:0",
        "--cores=0",
        "--max-devices=100000",
    ])
    .and_then(|a| a.into_config())
    .unwrap();
    ringbeat::engine::start(&config).expect("start the server (needs io_uring: `ringbeat check`)")
}

/// Lets the last datagrams land, stops the server and sums its shards' counters.
fn stop_and_total(mut server: ringbeat::engine::Server) -> ringbeat::core::stats::ShardStats {
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    ringbeat::core::stats::ShardStats::total(&server.snapshot())
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ringbeat-bench-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn load_against_the_server_loses_nothing() {
    let server = start_server();
    let dir = temp("server");
    let d = load(&server.listen.to_string(), &dir, &[]);
    let total = stop_and_total(server);
    let sent = d["sent"]["frames"].as_u64().unwrap();
    assert_eq!(
        sent,
        40_000 * 2,
        "open loop: the schedule's frames all went out"
    );
    assert_eq!(total.heartbeats, sent, "every frame counted by the server");
    assert_eq!(total.kernel_drops, 0);
    assert_eq!(d["acks"]["expected_whole_run"].as_u64().unwrap(), sent / 10);
    assert_eq!(
        d["acks"]["received_whole_run"], d["acks"]["expected_whole_run"],
        "zero loss: {d:#}"
    );
    // The measured window (after the 0.5 s warm-up of 2 s) is its part of the run.
    let measured = d["acks"]["expected"].as_u64().unwrap();
    assert!(
        (measured as f64 - (sent / 10) as f64 * 0.75).abs() < (sent / 10) as f64 * 0.02,
        "{measured} of {} acks in the measured window",
        sent / 10
    );
    assert_eq!(d["acks"]["received"], d["acks"]["expected"]);
    assert_eq!(total.acks_sent, sent / 10);
    assert!(d["latency_intended"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn two_sender_threads_bursts_and_a_garbage_flood_lose_nothing_valid() {
    let server = start_server();
    let dir = temp("threads");
    let cpus = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        "0,1"
    } else {
        "0"
    };
    let d = load(
        &server.listen.to_string(),
        &dir,
        &[
            "--cpus",
            cpus,
            "--burst",
            "100:0.5",
            "--garbage-rate",
            "5000",
        ],
    );
    let total = stop_and_total(server);
    let sent = d["sent"]["frames"].as_u64().unwrap();
    assert_eq!(sent, 40_000 * 2, "every thread sent its whole schedule");
    assert_eq!(total.heartbeats, sent, "every valid frame counted: {d:#}");
    assert_eq!(total.devices, 20_000, "the threads split the devices");
    assert_eq!((total.duplicates, total.lost_heartbeats), (0, 0));
    assert_eq!(d["acks"]["received"], d["acks"]["expected"], "{d:#}");
    // Garbage: 3 kinds in turn, 1 + 1 + 2 bad frames per 3 datagrams.
    let garbage = d["garbage"]["sent"].as_u64().unwrap();
    assert!(garbage >= 9_000, "the flood ran: {garbage}");
    let rejected = total.malformed_total();
    assert!(
        rejected >= garbage && rejected <= garbage * 2,
        "every garbage datagram rejected and counted: {rejected} for {garbage}"
    );
}

#[test]
fn load_against_the_sink_loses_nothing() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let dir = temp("sink");
    let stats = dir.join("sink.json");
    let sink = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .args([
            "sink",
            "--listen",
            &target,
            "--cpus",
            "0",
            "--duration",
            "4",
        ])
        .arg("--stats-json")
        .arg(&stats)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Measured like a server: its receive thread's CPU time and its counters.
    let pid = sink.id().to_string();
    let stats_arg = stats.to_str().unwrap();
    let d = load(
        &target,
        &dir,
        &["--server-pid", &pid, "--server-stats", stats_arg],
    );
    let out = sink.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let total = text
        .lines()
        .find(|l| l.starts_with("sink total:"))
        .unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> = total
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let sent = d["sent"]["frames"].as_u64().unwrap();
    assert_eq!(nums[1], sent, "sink frames = frames sent: {total}");
    assert_eq!(nums[0], d["sent"]["datagrams"].as_u64().unwrap());
    assert_eq!(d["acks"]["received"], d["acks"]["expected"]);
    let server = &d["server"];
    assert_eq!(server["shard_threads"], 1, "{server}");
    assert!(server["cpu_seconds"].as_f64().unwrap() > 0.0, "{server}");
    assert!(server["heartbeats"].as_u64().unwrap() > 0, "{server}");
    let last: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(last["heartbeats"].as_u64(), Some(sent), "{last}");
    assert_eq!(last["datagrams"], d["sent"]["datagrams"], "{last}");
    assert_eq!(last["kernel_drops"], 0, "{last}");
}

/// Against no server: the summary says what is missing (no NaN, on stdout) and the
/// load exits 1 naming what to check.
#[test]
fn a_load_that_gets_no_ack_fails_and_says_why() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .args([
            "load",
            "--target",
            &target,
            "--devices",
            "100",
            "--rate",
            "1000",
        ])
        .args(["--duration", "0.5", "--warmup", "0", "--grace", "0.1"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("no ack came back from {target}")),
        "{stderr}"
    );
    assert!(
        stdout.contains("no samples (no acks came back)"),
        "{stdout}"
    );
    assert!(stdout.contains("server: not measured"), "{stdout}");
    assert!(
        !stdout.contains("NaN") && !stderr.contains("NaN"),
        "{stdout}{stderr}"
    );
}

/// Runs a `sweep` into `dir` (with `--allow-dirty`) that must fail; its stderr.
fn failing_sweep(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .arg("sweep")
        .args(args)
        .arg("--results")
        .arg(dir)
        .arg("--allow-dirty")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// Nothing was written into `dir`.
fn assert_no_results(dir: &std::path::Path) {
    assert!(!dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none());
}

/// `sweep` never overwrites a results folder.
#[test]
fn sweep_refuses_an_existing_results_folder() {
    let dir = temp("sweep-exists");
    let today = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%F"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let existing = dir.join(format!("{}-taken", today.trim()));
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "earlier results").unwrap();
    let stderr = failing_sweep(
        &dir,
        &["--kind", "rate", "--name", "taken", "--rates", "1000"],
    );
    assert!(stderr.contains("results are never overwritten"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "earlier results"
    );
}

/// A given warm-up is honoured or refused, never lengthened behind the user's back.
#[test]
fn sweep_refuses_a_warmup_shorter_than_one_device_interval() {
    let dir = temp("sweep-warmup");
    let stderr = failing_sweep(
        &dir,
        &[
            "--kind",
            "rate",
            "--name",
            "short",
            "--devices",
            "100000",
            "--rates",
            "10000",
            "--warmup",
            "2",
        ],
    );
    assert!(
        stderr.contains("--warmup 2 is too short") && stderr.contains("--warmup 11 or more"),
        "{stderr}"
    );
    assert_no_results(&dir);
}

/// A run that fails after others succeeded leaves no half-written results folder (it
/// would be read as results and block a rerun under the same name), and says which
/// run failed and where the failing server's log is.
#[test]
fn a_sweep_that_fails_midway_leaves_no_folder() {
    let dir = temp("sweep-midway");
    let stderr = failing_sweep(
        &dir,
        &[
            "--kind",
            "rate",
            "--name",
            "midway",
            "--devices",
            "100",
            "--rates",
            "1000",
            "--duration",
            "2",
            "--warmup",
            "1.2",
            "--port",
            "17995",
            "--runs",
            "1",
            "--sink-baseline",
            "--variant",
            "broken=@/nonexistent/ringbeat",
        ],
    );
    assert!(
        stderr.contains("run 1/1 (broken) failed") && stderr.contains("was removed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("-- run 1/1: sink"),
        "the sink ran first: {stderr}"
    );
    assert_no_results(&dir);
}

#[test]
fn core_cost_takes_every_heartbeat_of_every_variant_and_reports_each() {
    let dir = temp("core-cost");
    let json = dir.join("cost.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .args(["core-cost", "--devices", "20000", "--passes", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every heartbeat of every pass (the untimed first one too) was taken, none refused.
    for v in ["v1 ", "v1-registry", "v2 "] {
        let row = stdout.lines().find(|l| l.starts_with(v)).expect(v);
        assert!(row.contains(" 60000 ") && row.ends_with(" 0"), "{row}");
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["variants"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let passes = r["ns_per_heartbeat_passes"].as_array().unwrap();
        assert_eq!(passes.len(), 2);
        assert!(passes.iter().all(|p| p.as_f64().unwrap() > 0.0), "{r}");
    }
    // An unknown variant is refused by name.
    let bad = Command::new(env!("CARGO_BIN_EXE_ringbeat-bench"))
        .args(["core-cost", "--devices", "100", "--variants", "v3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown variant `v3`"));
}
