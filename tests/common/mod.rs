//! Helpers for tests that run the real server binary on loopback.
#![allow(dead_code)]

pub mod rng;

use ringbeat::core::codec::{FrameFields, FLAG_ACK_REQUESTED, FRAME_BYTES};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails with a clear message when this machine cannot run the io_uring engine.
pub fn require_io_uring() {
    // Once per test process: a ring torn down while other test threads block in a
    // socket call can interrupt them (EINTR).
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    if let Err(e) = r {
        panic!(
            "these tests need io_uring with SINGLE_ISSUER and DEFER_TASKRUN (Linux 6.1+, \
             kernel.io_uring_disabled=0, no seccomp filter blocking io_uring_setup): {e}; \
             `ringbeat check` says what is missing"
        );
    }
}

/// `recv_from`, retried when a signal interrupts it (a socket with a receive timeout
/// is never restarted by the kernel).
pub fn recv_retry(c: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, std::net::SocketAddr)> {
    loop {
        match c.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub stderr_lines: std::sync::mpsc::Receiver<String>,
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringbeat-it-{}-{}-{}",
        name,
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// `--engine E` from RINGBEAT_TEST_ENGINE (the conformance suite runs once per engine),
/// unless the test names its engine itself.
fn engine_args(extra: &[&str]) -> Vec<String> {
    match std::env::var("RINGBEAT_TEST_ENGINE") {
        Ok(e) if !extra.contains(&"--engine") => vec!["--engine".into(), e],
        _ => Vec::new(),
    }
}

impl Server {
    /// Starts `ringbeat serve` on 127.0.0.1 (port 0) with stats and events files in a
    /// fresh directory, and waits for it to say where it listens.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        Self::start_on(name, "127.0.0.1:0", extra)
    }

    pub fn start_on(name: &str, listen: &str, extra: &[&str]) -> Server {
        Self::start_with_env(name, listen, extra, &[])
    }

    pub fn start_with_env(
        name: &str,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_full(name, listen, extra, env, Stdio::null())
    }

    /// As `start`, with the server's standard output going to `stdout` (a pipe, for
    /// `--events -`).
    pub fn start_with_stdout(name: &str, extra: &[&str], stdout: Stdio) -> Server {
        Self::start_full(name, "127.0.0.1:0", extra, &[], stdout)
    }

    fn start_full(
        name: &str,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
    ) -> Server {
        require_io_uring();
        let dir = temp_dir(name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringbeat"))
            .envs(env.iter().copied())
            .arg("serve")
            .args(["--listen", listen, "--quiet"])
            .args(if extra.contains(&"--stats-interval") {
                &[][..]
            } else {
                &["--stats-interval", "0.1"][..]
            })
            .arg("--stats-json")
            .arg(dir.join("stats.json"))
            .arg("--events")
            .arg(dir.join("events.jsonl"))
            .args(if extra.contains(&"--max-devices") {
                &[][..]
            } else {
                &["--max-devices", "100000"][..]
            })
            .args(extra)
            .args(engine_args(extra))
            .stderr(Stdio::piped())
            .stdout(stdout)
            .spawn()
            .expect("spawn ringbeat");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start (exit: {:?})", child.try_wait()));
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return Server {
                    child,
                    addr,
                    dir,
                    stderr_lines: rx,
                };
            }
        }
    }

    /// The server's standard output, when it was piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Stderr lines the server wrote so far (those not taken yet).
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr_lines.try_iter().collect()
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    pub fn stats_path(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    /// The latest stats document (written every 100 ms).
    pub fn stats(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(b) = std::fs::read(self.stats_path()) {
                if let Ok(v) = serde_json::from_slice(&b) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "no stats file");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the stats until `pred` holds (or panics after `secs`).
    pub fn wait_stats(
        &self,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.stats();
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "stats never satisfied the condition: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for exit; returns the exit status and final stats.
    pub fn terminate(mut self) -> (std::process::ExitStatus, serde_json::Value, Vec<String>) {
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let exit_time = started.elapsed();
        assert!(
            exit_time < Duration::from_secs(1),
            "SIGTERM exit took {exit_time:?}"
        );
        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.stats_path()).unwrap()).unwrap();
        let events = std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        (status, stats, events.lines().map(String::from).collect())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `cmd`'s process refuse `io_uring_setup` with EPERM, as Docker's default
/// seccomp profile does: a seccomp filter installed between fork and exec.
pub fn refuse_io_uring(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // seccomp_data: `nr` at offset 0. io_uring_setup is 425 on x86_64 and aarch64.
    let filter = [
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // prctl calls on data it owns (moved in), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs the ringbeat binary to completion with `args` and `env`: whether it
/// succeeded, its stdout and its stderr.
pub fn run_ringbeat(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ringbeat");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn heartbeat(device_id: u64, seq: u32, interval_ds: u16, ack: bool) -> [u8; FRAME_BYTES] {
    let mut f = FrameFields::heartbeat(
        device_id,
        seq,
        interval_ds,
        0xABCD_0000_0000_0000 | seq as u64,
    );
    f.status = (device_id % 7) as u16;
    if ack {
        f.flags = FLAG_ACK_REQUESTED;
    }
    f.to_bytes()
}

pub fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// The lines of an events file, each parsed as its JSON object.
pub fn parse_events(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Unix time in ms, the clock of the events' `time_ms`.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Device `d` had no false transition: every event of it but its first coming online
/// came only after it had really been silent for `late_ms` since `last_sent_ms` (Unix
/// ms just before the test's last heartbeat of it). Between that send and the server's
/// exit the device is silent for real, so a stop that outlasts the rest of its
/// threshold reports it late, truly. (5 ms spare for reading two clocks.)
pub fn only_true_transitions(ev: &[serde_json::Value], d: u64, last_sent_ms: i64, late_ms: i64) {
    for t in ev
        .iter()
        .filter(|e| e["device_id"] == d && e["from"] != "unknown")
    {
        let at = t["time_ms"].as_i64().unwrap();
        assert!(
            at + 5 >= last_sent_ms + late_ms,
            "device {d}: a false {} at {at}, its last heartbeat sent at {last_sent_ms}: {t}",
            t["to"]
        );
    }
}
