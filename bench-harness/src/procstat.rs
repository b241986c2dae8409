//! Server-side measurements: CPU time of the server's shard threads from
//! /proc/PID/task/*/stat, and its `--stats-json` counters.

use std::path::Path;

/// Sum of user + system CPU seconds of the threads of `pid` whose name starts with
/// `prefix` (the server names its shards `ringbeat-shard-N`), and how many there were.
pub fn thread_cpu_seconds(pid: u32, prefix: &str) -> std::io::Result<(f64, usize)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut total = 0u64;
    let mut threads = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = match std::fs::read_to_string(entry?.path().join("stat")) {
            Ok(s) => s,
            Err(_) => continue, // thread exited meanwhile
        };
        if let Some((name, rest)) = parse_stat(&stat) {
            if name.starts_with(prefix) {
                total += rest.0 + rest.1;
                threads += 1;
            }
        }
    }
    Ok((total as f64 / ticks, threads))
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
