//! The measured process of a sweep: the server (or the bare receiver for the `sink`
//! variant) started pinned with the sweep's flags, its log kept, stopped with SIGTERM;
//! and the environment a results README records (git revision, kernel, CPU, pinning,
//! sysctls, receive steering).

use super::{SweepArgs, Variant};
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "undated".into())
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A path as results show it: relative to the working directory (the checkout) when
/// it lies inside it, not this machine's absolute path.
pub fn shown_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

pub fn environment(a: &SweepArgs, server_bin: &Path) -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "n/a".into())
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut s = String::new();
    s += &format!(
        "- git revision: {}{}\n",
        shell("git", &["rev-parse", "HEAD"]),
        if uncommitted_diff().is_empty() {
            ""
        } else {
            " with uncommitted changes (`uncommitted.diff`)"
        }
    );
    s += &format!("- kernel: {}\n", read("/proc/sys/kernel/osrelease"));
    s += &format!(
        "- CPU: {cpu} ({} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    s += &format!(
        "- pinning: server shards on CPUs {}, load generator on CPUs {}\n",
        a.server_cores, a.generator.cpus
    );
    let shown = shown_path(server_bin);
    s += &format!(
        "- server: `{} serve --cores {} {}`\n",
        shown.display(),
        a.server_cores,
        a.server_args.join(" ")
    );
    for k in [
        "net/core/rmem_max",
        "net/core/rmem_default",
        "net/core/wmem_max",
        "net/core/netdev_max_backlog",
        "net/core/skb_defer_max",
    ] {
        s += &format!(
            "- sysctl {}: {}\n",
            k.replace('/', "."),
            read(&format!("/proc/sys/{k}"))
        );
    }
    s += &format!(
        "- transparent huge pages: {}\n",
        read("/sys/kernel/mm/transparent_hugepage/enabled")
    );
    s += &format!(
        "- loopback receive steering (lo rx-0 rps_cpus): {} (0 = the kernel's receive path runs on the sending CPU)\n",
        read("/sys/class/net/lo/queues/rx-0/rps_cpus")
    );
    s
}

pub struct ServerProcess {
    pub child: std::process::Child,
}

impl ServerProcess {
    pub fn start(
        bin: &Path,
        a: &SweepArgs,
        variant: &Variant,
        stats: &Path,
        log: &Path,
        run_for: f64,
    ) -> anyhow::Result<ServerProcess> {
        let mut child = if variant.sink {
            Command::new(std::env::current_exe()?)
                .args(["sink", "--listen", &format!("127.0.0.1:{}", a.port)])
                .args([
                    "--cpus",
                    &a.server_cores,
                    "--duration",
                    &format!("{run_for}"),
                ])
                .arg("--stats-json")
                .arg(stats)
                .stderr(Stdio::piped())
                .spawn()
                .context("starting the sink")?
        } else {
            Command::new(bin)
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{}", a.port),
                    "--cores",
                    &a.server_cores,
                    "--quiet",
                ])
                .args([
                    "--stats-interval",
                    "0.5",
                    "--run-for",
                    &format!("{run_for}"),
                ])
                .arg("--stats-json")
                .arg(stats)
                .args(&a.server_args)
                .args(&variant.flags)
                .envs(variant.env.iter().map(|(k, v)| (k, v)))
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?
        };
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.to_path_buf();
        let log = log_path.clone();
        std::thread::spawn(move || {
            let mut out = std::fs::File::create(log).ok();
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = out.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                // "… listening on …": the server's log line and the sink's.
                if !told && line.contains("listening on") {
                    told = tx.send(()).is_ok();
                }
            }
        });
        // Up to 10 s for "listening on", unless the server exits first.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut started = false;
        while std::time::Instant::now() < deadline {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                started = true;
                break;
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        if !started {
            let _ = child.kill();
            let _ = child.wait();
            // The log thread ends with the server's stderr; give it a moment to flush.
            std::thread::sleep(Duration::from_millis(100));
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            bail!(
                "the server did not start ({} serve, log {}); it said:\n  {}",
                bin.display(),
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
        Ok(ServerProcess { child })
    }

    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// `git diff HEAD` of the tracked files: empty when the tree is clean (or not a git
/// checkout).
pub fn uncommitted_diff() -> String {
    shell("git", &["diff", "HEAD"])
}
