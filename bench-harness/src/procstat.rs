//! Server-side measurements: CPU time of the server's shard threads from
//! /proc/PID/task/*/stat, and its `--stats-json` counters.

use std::path::Path;

/// CPU seconds used so far by the threads of `pid` whose name starts with `prefix`
/// (the server names its shards `ringbeat-shard-N`), and how many there were.
///
/// Read from `/proc/PID/task/TID/schedstat` (exact on-CPU nanoseconds). utime + stime
/// from `stat` are only the fallback: with tick-based CPU accounting they are sampled at
/// each scheduler tick, which over-charges a thread whose timer wake-ups line up with
/// the tick — several times its real cost at light load on the reference machine.
pub fn thread_cpu_seconds(pid: u32, prefix: &str) -> std::io::Result<(f64, usize)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut total_s = 0f64;
    let mut threads = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        }; // exited meanwhile
        let Some((name, (utime, stime))) = parse_stat(&stat) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let exact = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        total_s += match exact {
            Some(ns) => ns as f64 / 1e9,
            None => (utime + stime) as f64 / ticks,
        };
    }
    Ok((total_s, threads))
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
    fn reads_own_threads() {
        let (cpu, n) = thread_cpu_seconds(std::process::id(), "").unwrap();
        assert!(n >= 1 && cpu >= 0.0);
    }
}
