//! Server-side measurements: CPU time of the server's shard threads from
//! /proc/PID/task/*/stat, and its `--stats-json` counters.

use std::path::Path;

/// What the kernel says about a process's shard threads at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThreadSample {
    /// CPU seconds used so far, summed over the threads.
    pub cpu_s: f64,
    /// Threads matched.
    pub threads: usize,
    /// Voluntary context switches so far (`/proc/.../status`): each is a sleep the
    /// thread chose, so the kernel's count of its wake-ups, the same for every engine.
    pub voluntary_switches: u64,
}

/// CPU time and wake-ups of the threads of `pid` whose name starts with `prefix`
/// (the server names its shards `rb-shard-N`).
///
/// Read from `/proc/PID/task/TID/schedstat` (exact on-CPU nanoseconds). utime + stime
/// from `stat` are only the fallback: with tick-based CPU accounting they are sampled at
/// each scheduler tick, which over-charges a thread whose timer wake-ups line up with
/// the tick — several times its real cost at light load on the reference machine.
pub fn sample_threads(pid: u32, prefix: &str) -> std::io::Result<ThreadSample> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut out = ThreadSample::default();
    for task in tasks(pid, prefix)? {
        out.threads += 1;
        let exact = std::fs::read_to_string(task.dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        out.cpu_s += match exact {
            Some(ns) => ns as f64 / 1e9,
            None => (task.utime + task.stime) as f64 / ticks,
        };
        out.voluntary_switches += std::fs::read_to_string(task.dir.join("status"))
            .ok()
            .and_then(|s| parse_voluntary_switches(&s))
            .unwrap_or(0);
    }
    Ok(out)
}

/// One thread of a process, as its `stat` line showed it.
struct Task {
    dir: std::path::PathBuf,
    utime: u64,
    stime: u64,
}

/// The threads of `pid` whose name starts with `prefix` (threads that exit meanwhile
/// are skipped).
fn tasks(pid: u32, prefix: &str) -> std::io::Result<Vec<Task>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        if let Some((name, (utime, stime))) = parse_stat(&stat) {
            if name.starts_with(prefix) {
                out.push(Task { dir, utime, stime });
            }
        }
    }
    Ok(out)
}

/// Thread ids of `pid`'s threads whose name starts with `prefix`.
pub fn thread_ids(pid: u32, prefix: &str) -> std::io::Result<Vec<u32>> {
    Ok(tasks(pid, prefix)?
        .iter()
        .filter_map(|t| t.dir.file_name()?.to_str()?.parse().ok())
        .collect())
}

/// Counts the system calls the threads `tids` make for `secs` seconds with
/// `perf stat -e raw_syscalls:sys_enter` (the same count for every engine, whatever it
/// reports itself). Started now; `finish` waits and parses.
pub struct SyscallCount {
    child: std::process::Child,
}

impl SyscallCount {
    pub fn start(tids: &[u32], secs: f64) -> std::io::Result<SyscallCount> {
        let list = tids
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let child = std::process::Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter",
                "-t",
                &list,
            ])
            .args(["--", "sleep", &format!("{secs:.3}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        Ok(SyscallCount { child })
    }

    /// The count, or None if perf could not count (no perf, no permission).
    pub fn finish(self) -> Option<u64> {
        let out = self.child.wait_with_output().ok()?;
        parse_perf_count(&String::from_utf8_lossy(&out.stderr))
    }
}

/// The value of the `raw_syscalls:sys_enter` line of `perf stat -x ,` output.
fn parse_perf_count(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `voluntary_ctxt_switches` from a `/proc/.../status` document.
fn parse_voluntary_switches(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// (comm, (utime, stime)) from one `stat` line.
fn parse_stat(stat: &str) -> Option<(&str, (u64, u64))> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15.
    Some((
        name,
        (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?),
    ))
}

/// The server's stats document, if readable.
pub fn read_stats(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_spaces_in_names() {
        let line =
            "1234 (ringbeat-shard-0) S 1 1234 1 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("ringbeat-shard-0", (250, 40))));
        let odd = "7 (a b) c) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(parse_stat(odd), Some(("a b) c", (5, 6))));
    }

    #[test]
    fn parses_perf_counts() {
        let out = "12345,,raw_syscalls:sys_enter,1000412,100.00,,\n";
        assert_eq!(parse_perf_count(out), Some(12345));
        let unsupported = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n";
        assert_eq!(parse_perf_count(unsupported), None);
    }

    #[test]
    fn parses_voluntary_switches() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t4711\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_voluntary_switches(status), Some(4711));
        assert_eq!(parse_voluntary_switches("Name:\tx\n"), None);
    }

    #[test]
    fn reads_own_threads() {
        // A thread of its own name (others may come and go meanwhile): sleeping is a
        // voluntary switch, so its count must grow across a sleep.
        std::thread::Builder::new()
            .name("rb-probe-sleep".into())
            .spawn(|| {
                let pid = std::process::id();
                let before = sample_threads(pid, "rb-probe-sleep").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
                let after = sample_threads(pid, "rb-probe-sleep").unwrap();
                assert_eq!(after.threads, 1);
                assert!(after.cpu_s >= before.cpu_s);
                assert!(after.voluntary_switches > before.voluntary_switches);
                assert_eq!(thread_ids(pid, "rb-probe-sleep").unwrap().len(), 1);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
