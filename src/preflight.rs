//! `ringbeat check`: everything the server needs from the kernel and the process
//! limits, each with a verdict and the fix. `serve` runs the same checks and refuses to
//! start on a failure, with the same message.

use crate::config::{Config, Engine};
use crate::sys::uring::{ShardRing, ShardRingError};
use io_uring::{opcode, IoUring, Probe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub verdict: Verdict,
    /// What to do about it (empty when fine).
    pub fix: String,
}

fn line(
    name: &'static str,
    value: impl Into<String>,
    verdict: Verdict,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        value: value.into(),
        verdict,
        fix: fix.into(),
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The checks' verdicts and the engine a server started now would use.
pub struct Preflight {
    pub checks: Vec<Check>,
    /// `--engine auto` resolved: `Uring` when io_uring passed every check, else `Epoll`.
    pub engine: Engine,
}

/// Runs every check for `config`. With `--engine auto`, failed io_uring checks are
/// warnings and the engine falls back to epoll, with a line naming why and the fix.
pub fn run_checks(config: &Config) -> Preflight {
    let mut out = Vec::new();
    let engine = match config.engine {
        Engine::Auto => {
            let uring = uring_checks(config);
            match unavailable_reason(&uring) {
                None => {
                    out.extend(uring);
                    out.push(line("engine", "uring (--engine auto)", Verdict::Ok, ""));
                    Engine::Uring
                }
                Some((reason, fix)) => {
                    out.extend(uring.into_iter().map(|mut c| {
                        if c.verdict == Verdict::Fail {
                            c.verdict = Verdict::Warn;
                        }
                        c
                    }));
                    out.push(line(
                        "engine",
                        format!("epoll (--engine auto): io_uring unavailable ({reason})"),
                        Verdict::Warn,
                        format!(
                            "serving with epoll (the same protocol and outputs, less \
                             throughput per core); for io_uring: {fix}"
                        ),
                    ));
                    Engine::Epoll
                }
            }
        }
        Engine::Uring => {
            out.extend(uring_checks(config));
            Engine::Uring
        }
        other => {
            // The epoll and tokio-uring engines need no io_uring feature beyond what
            // tokio-uring checks itself: a kernel, a container (Docker's default
            // seccomp profile) or an emulator without io_uring is fine for epoll.
            out.push(line(
                "io_uring",
                format!("not used by the shards (--engine {})", other.name()),
                Verdict::Ok,
                "",
            ));
            other
        }
    };
    out.extend(port_checks(config));
    out.push(allow_check(config));
    out.extend(output_checks(config));
    out.extend(limit_checks(config));
    Preflight {
        checks: out,
        engine,
    }
}

/// Why io_uring cannot be used and the fix, from the failed io_uring checks (None:
/// it can).
fn unavailable_reason(checks: &[Check]) -> Option<(String, String)> {
    let failed: Vec<&Check> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .collect();
    let join = |f: fn(&Check) -> String| failed.iter().map(|c| f(c)).collect::<Vec<_>>().join("; ");
    (!failed.is_empty()).then(|| {
        (
            join(|c| format!("{}: {}", c.name, c.value)),
            join(|c| c.fix.clone()),
        )
    })
}

/// Whether a seccomp filter is on the process (/proc/self/status `Seccomp: 2`).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Seccomp:") && l.split_whitespace().nth(1) == Some("2"))
    })
}

/// What the io_uring engine needs: the kernel version, the sysctl, and a shard's ring.
fn uring_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    match kernel_version() {
        Some(v) if v >= (6, 1) => out.push(line("kernel", format!("{}.{}", v.0, v.1), Verdict::Ok, "")),
        Some(v) => out.push(line(
            "kernel",
            format!("{}.{}", v.0, v.1),
            Verdict::Fail,
            "io_uring needs Linux 6.1+ (multishot recvmsg 6.0, DEFER_TASKRUN 6.1); 6.12+ for min-wait batching",
        )),
        None => out.push(line("kernel", "unknown", Verdict::Warn, "could not parse uname")),
    }
    match read_trim("/proc/sys/kernel/io_uring_disabled").as_deref() {
        Some("0") | None => out.push(line("kernel.io_uring_disabled", "0", Verdict::Ok, "")),
        Some("1") => out.push(line(
            "kernel.io_uring_disabled",
            "1",
            if nix::unistd::geteuid().is_root() { Verdict::Ok } else { Verdict::Warn },
            "only root or kernel.io_uring_group may use io_uring: run as root, join the group, or `sysctl -w kernel.io_uring_disabled=0`",
        )),
        Some(v) => out.push(line(
            "kernel.io_uring_disabled",
            v,
            Verdict::Fail,
            "io_uring is disabled: `sysctl -w kernel.io_uring_disabled=0`",
        )),
    }
    if out.iter().any(|c| c.verdict == Verdict::Fail) {
        return out;
    }
    out.extend(ring_checks(config));
    out
}

/// Who may send: a server on every address with no `--allow` believes anyone who can
/// reach the port.
fn allow_check(config: &Config) -> Check {
    let n = &config.network;
    if !n.allow.is_empty() {
        let list: Vec<String> = n.allow.cidrs().iter().map(|c| c.network()).collect();
        return line("source allowlist", list.join(" "), Verdict::Ok, "");
    }
    if n.listen.ip().is_unspecified() {
        line(
            "source allowlist",
            format!("none, listening on all addresses ({})", n.listen),
            Verdict::Warn,
            "anyone who can reach the port can keep any device online or fill the table: \
             add --allow CIDR for your device networks (repeatable), or listen on one address",
        )
    } else {
        line(
            "source allowlist",
            format!("none (listening on {} only)", n.listen.ip()),
            Verdict::Ok,
            "",
        )
    }
}

/// What `serve` would write to and listen on besides the heartbeat port: the events
/// file (appended to), the stats file and the snapshot (each written through a
/// `.tmp` beside it), and the HTTP port. So `check` tests every flag it is given.
fn output_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    // An existing file must open for appending; a new one is not created by a check,
    // only a `.tmp` beside it (then removed).
    let appendable = |p: &std::path::Path| {
        if p.exists() {
            std::fs::OpenOptions::new().append(true).open(p).map(drop)
        } else {
            crate::report::check_writable(p)
        }
    };
    let files = [
        ("events file", config.outputs.events.as_deref(), true),
        ("stats file", config.outputs.stats_json.as_deref(), false),
        ("snapshot file", config.snapshot.path.as_deref(), false),
    ];
    for (name, path, append) in files {
        let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
            continue;
        };
        let tried = if append {
            appendable(path)
        } else {
            crate::report::check_writable(path)
        };
        out.push(match tried {
            Ok(()) => line(name, path.display().to_string(), Verdict::Ok, ""),
            Err(e) => line(
                name,
                format!("{}: {e}", path.display()),
                Verdict::Fail,
                "choose a path in a directory the server may write (under systemd: its StateDirectory or LogsDirectory)",
            ),
        });
    }
    if let Some(addr) = config.outputs.http_listen {
        out.push(match std::net::TcpListener::bind(addr) {
            Ok(_) => line("HTTP port", format!("{addr} free"), Verdict::Ok, ""),
            Err(e) => line(
                "HTTP port",
                format!("{addr}: {e}"),
                Verdict::Fail,
                crate::sys::socket::bind_hint(&e),
            ),
        });
    }
    out
}

/// Whether the port stays in use for `PORT_GRACE`: a server that just exited can hold
/// its port for a moment after its process is gone (the kernel tears an io_uring, and
/// the sockets its requests hold, down asynchronously), so a restart right after a stop
/// is not refused for it.
fn port_in_use_for_a_while(addr: std::net::SocketAddr, tcp: bool) -> std::io::Result<bool> {
    const PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
    let until = std::time::Instant::now() + PORT_GRACE;
    loop {
        match crate::sys::socket::port_in_use(addr, tcp) {
            Ok(true) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// The listen port must not be held by another socket: a second instance would join
/// the SO_REUSEPORT group and silently take part of the traffic.
fn port_checks(config: &Config) -> Vec<Check> {
    let addr = config.network.listen;
    if addr.port() == 0 {
        return Vec::new();
    }
    let mut protos = vec![("UDP", false)];
    if config.network.tcp.is_some() {
        protos.push(("TCP", true));
    }
    protos
        .into_iter()
        .map(|(proto, tcp)| match port_in_use_for_a_while(addr, tcp) {
            Ok(false) => line("listen port", format!("{proto} {addr} free"), Verdict::Ok, ""),
            Ok(true) => line(
                "listen port",
                format!("{proto} {addr} in use"),
                Verdict::Fail,
                "another program (another ringbeat?) holds the port; a second server would silently share its traffic: stop it, or choose another --listen port",
            ),
            Err(e) => line(
                "listen port",
                format!("{proto} {addr}: {e}"),
                Verdict::Fail,
                crate::sys::socket::bind_hint(&e),
            ),
        })
        .collect()
}

fn ring_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let ring: IoUring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(8)
    {
        Ok(r) => {
            out.push(line(
                "io_uring setup (SINGLE_ISSUER, DEFER_TASKRUN)",
                "ok",
                Verdict::Ok,
                "",
            ));
            r
        }
        Err(e) => {
            let errno = e.raw_os_error();
            let fix = if matches!(errno, Some(libc::EPERM | libc::ENOSYS)) && seccomp_filtered() {
                "a seccomp filter refuses io_uring_setup (Docker's default profile does): \
                 run the container with a profile that allows io_uring_setup, io_uring_enter \
                 and io_uring_register"
            } else {
                match errno {
                    Some(libc::EPERM) => {
                        "io_uring refused: check kernel.io_uring_disabled and kernel.io_uring_group"
                    }
                    Some(libc::EINVAL) => {
                        "kernel too old for SINGLE_ISSUER/DEFER_TASKRUN: needs Linux 6.1+"
                    }
                    Some(libc::ENOSYS) => {
                        "io_uring_setup is not implemented here: an emulator \
                        (qemu-user) or a kernel built without CONFIG_IO_URING; run natively on \
                        a kernel with io_uring"
                    }
                    _ => "io_uring_setup failed",
                }
            };
            out.push(line(
                "io_uring setup (SINGLE_ISSUER, DEFER_TASKRUN)",
                e.to_string(),
                Verdict::Fail,
                fix,
            ));
            return out;
        }
    };
    let mut probe = Probe::new();
    match ring.submitter().register_probe(&mut probe) {
        Ok(()) => {
            let missing: Vec<&str> = [
                (opcode::RecvMsg::CODE, "RECVMSG"),
                (opcode::SendMsg::CODE, "SENDMSG"),
                (opcode::Read::CODE, "READ"),
                (opcode::Accept::CODE, "ACCEPT"),
                (opcode::Recv::CODE, "RECV"),
                (opcode::Send::CODE, "SEND"),
                (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
            ]
            .into_iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, n)| n)
            .collect();
            if missing.is_empty() {
                out.push(line(
                    "opcodes RECVMSG SENDMSG READ ACCEPT RECV SEND ASYNC_CANCEL",
                    "present",
                    Verdict::Ok,
                    "",
                ));
            } else {
                out.push(line(
                    "opcodes",
                    format!("missing {missing:?}"),
                    Verdict::Fail,
                    "kernel too old: needs Linux 6.1+",
                ));
            }
        }
        Err(e) => out.push(line(
            "opcode probe",
            e.to_string(),
            Verdict::Warn,
            "IORING_REGISTER_PROBE needs 5.6+",
        )),
    }
    if ring.params().is_feature_min_timeout() {
        out.push(line(
            "min-wait batching (IORING_FEAT_MIN_TIMEOUT)",
            "present",
            Verdict::Ok,
            "",
        ));
    } else {
        out.push(line(
            "min-wait batching (IORING_FEAT_MIN_TIMEOUT)",
            "absent",
            Verdict::Warn,
            "Linux 6.12+ needed for --wait-us batching; waits fall back to plain timeouts",
        ));
    }
    // A shard's whole ring as the engine builds it (its own io_uring, buffer ring and
    // arena), so this check fails exactly when a shard would.
    drop(ring);
    let shape = crate::engine::uring::ring_shape(config);
    match ShardRing::new(shape) {
        Ok(r) => {
            out.push(line(
                "provided buffer ring",
                format!(
                    "{} × {} B = {} KiB per shard; {}",
                    config.uring.buf_count,
                    config.uring.buf_size,
                    r.arena().2 / 1024,
                    match config.uring.buf_window_bytes {
                        0 => "every buffer handed to the kernel (no receive window)".to_string(),
                        w => format!("a {} KiB receive window", w >> 10),
                    }
                ),
                Verdict::Ok,
                "",
            ));
            if config.network.tcp.is_some() {
                out.push(if r.stream_incremental() {
                    line(
                        "TCP receive buffers",
                        "incremental consumption",
                        Verdict::Ok,
                        "",
                    )
                } else {
                    line(
                        "TCP receive buffers",
                        "plain (no incremental consumption)",
                        Verdict::Ok,
                        "Linux 6.12+ lets a read take only what it needs of a large buffer",
                    )
                });
            }
        }
        Err(e) => out.push(line(
            "provided buffer ring",
            e.to_string(),
            Verdict::Fail,
            match e {
                ShardRingError::Setup(_) => "io_uring_setup failed with the shard's queue sizes",
                ShardRingError::SendBytes(_) => "lower --buf-count or raise the memory limit",
                ShardRingError::BufRing(_) => {
                    "needs Linux 5.19+; raise `ulimit -l` if memlock-limited"
                }
            },
        )),
    }
    out
}

/// Linux capability number of CAP_NET_ADMIN (SO_RCVBUFFORCE needs it; being root
/// without it, as in many containers, is not enough).
const CAP_NET_ADMIN: u32 = 12;

/// Whether the process holds capability `cap` in its effective set (/proc/self/status
/// `CapEff`).
fn has_capability(cap: u32) -> bool {
    read_trim("/proc/self/status").is_some_and(|s| capability_in_status(&s, cap))
}

/// Whether the `CapEff` line of a /proc/PID/status text has bit `cap`.
fn capability_in_status(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

fn limit_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let want = config.network.rcvbuf_bytes;
    match read_trim("/proc/sys/net/core/rmem_max").and_then(|s| s.parse::<usize>().ok()) {
        Some(max) if max >= want => out.push(line("net.core.rmem_max", format!("{max} ≥ rcvbuf {want}"), Verdict::Ok, "")),
        Some(max) if has_capability(CAP_NET_ADMIN) => out.push(line(
            "net.core.rmem_max",
            format!("{max} < rcvbuf {want}"),
            Verdict::Ok,
            format!("CAP_NET_ADMIN: SO_RCVBUFFORCE will be used (or `sysctl -w net.core.rmem_max={want}`)"),
        )),
        Some(max) => out.push(line(
            "net.core.rmem_max",
            format!("{max} < rcvbuf {want}"),
            Verdict::Warn,
            format!("the kernel clamps SO_RCVBUF to {max}: `sysctl -w net.core.rmem_max={want}` (or run with CAP_NET_ADMIN)"),
        )),
        None => out.push(line("net.core.rmem_max", "unreadable", Verdict::Warn, "")),
    }
    use nix::sys::resource::{getrlimit, Resource};
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_MEMLOCK) {
        let shown = if soft == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", soft / 1024)
        };
        out.push(line(
            "memlock",
            shown,
            Verdict::Ok,
            "io_uring memory is charged to the memory cgroup on 5.12+; older kernels need `ulimit -l` ≥ the ring sizes",
        ));
    }
    let need_fds = (config.shards() as u64) * 4 + 32;
    if let (Some(tcp), Ok((_, hard))) = (config.network.tcp, getrlimit(Resource::RLIMIT_NOFILE)) {
        // The server raises its soft limit to the hard one at start.
        let need = tcp.max_connections + crate::config::RESERVED_FDS;
        let derived = if tcp.max_connections_derived {
            " (derived from the hard limit)"
        } else {
            ""
        };
        out.push(line(
            "nofile for TCP",
            format!(
                "hard limit {hard}, --max-connections {}{derived} + {} kept",
                tcp.max_connections,
                crate::config::RESERVED_FDS
            ),
            if hard >= need {
                Verdict::Ok
            } else {
                Verdict::Warn
            },
            if hard >= need {
                String::new()
            } else {
                format!(
                    "connections beyond {} would be refused: raise the hard limit to {need} \
                     (LimitNOFILE={need} in the systemd unit, `ulimit -Hn {need}` as root, \
                     `--ulimit nofile={need}` for a container) or lower --max-connections",
                    hard.saturating_sub(crate::config::RESERVED_FDS)
                )
            },
        ));
    }
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let v = if soft >= need_fds {
            Verdict::Ok
        } else {
            Verdict::Fail
        };
        out.push(line(
            "nofile",
            format!("{soft} (need ≥ {need_fds}, hard {hard})"),
            v,
            if v == Verdict::Ok {
                String::new()
            } else {
                format!("`ulimit -n {need_fds}`")
            },
        ));
    }
    let allowed = crate::config::allowed_cpus();
    out.push(line(
        "cpus",
        format!(
            "shards on {:?} of allowed {:?}",
            config.network.cores, allowed
        ),
        Verdict::Ok,
        "",
    ));
    let nodes = read_trim("/sys/devices/system/node/online").unwrap_or_else(|| "0".into());
    out.push(line("numa nodes", nodes, Verdict::Ok, ""));
    out.push(cpu_idle_check(config));
    out
}

/// The CPU idle states a wake-up may have to leave, and whether `--cpu-dma-latency-us`
/// can be honoured.
fn cpu_idle_check(config: &Config) -> Check {
    let driver = read_trim("/sys/devices/system/cpu/cpuidle/current_driver");
    let mut exit_us: Vec<u32> = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cpuidle")
        .map(|dir| {
            dir.filter_map(|e| {
                read_trim(e.ok()?.path().join("latency").to_str()?)?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    exit_us.sort_unstable();
    if let Some(us) = config.process.cpu_dma_latency_us {
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .is_ok();
        if !writable {
            return line(
                "cpu idle",
                format!("--cpu-dma-latency-us {us}: /dev/cpu_dma_latency not writable"),
                Verdict::Fail,
                "run as root, or leave --cpu-dma-latency-us unset",
            );
        }
    }
    let (value, fix) = idle_summary(
        driver.as_deref(),
        &exit_us,
        config.process.cpu_dma_latency_us,
    );
    line("cpu idle", value, Verdict::Ok, fix)
}

/// (value, hint) for the idle-state line: the slowest exit latency bounds what a
/// wake-up from idle adds; on VMs a halted vCPU costs more than its state claims.
fn idle_summary(driver: Option<&str>, exit_us: &[u32], requested: Option<u32>) -> (String, String) {
    let driver = driver.unwrap_or("none");
    let slowest = exit_us.iter().max().copied();
    let value = match slowest {
        Some(us) => format!(
            "driver {driver}, {} states, slowest exit {us} µs",
            exit_us.len()
        ),
        None => format!("driver {driver}, no idle states listed"),
    };
    let hint = match requested {
        Some(us) => format!("holding a {us} µs wake-up latency request while serving"),
        None if driver == "haltpoll" || slowest.is_some_and(|us| us > 10) => {
            "idle wake-ups add to the latency tail; `--cpu-dma-latency-us 0` keeps CPUs polling"
                .into()
        }
        None => String::new(),
    };
    (value, hint)
}

/// Renders the table.
pub fn render(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let v = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        s.push_str(&format!("{v}  {:w$}  {}", c.name, c.value));
        if !c.fix.is_empty() {
            let label = if c.verdict == Verdict::Ok {
                "note"
            } else {
                "fix"
            };
            s.push_str(&format!("\n      {label}: {}", c.fix));
        }
        s.push('\n');
    }
    s
}

/// Fails with every failing line (and its fix) when any check fails.
pub fn require(config: &Config) -> anyhow::Result<Preflight> {
    let preflight = run_checks(config);
    let failed: Vec<&Check> = preflight
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .collect();
    if !failed.is_empty() {
        let msg: Vec<String> = failed
            .iter()
            .map(|c| format!("{}: {} — {}", c.name, c.value, c.fix))
            .collect();
        anyhow::bail!("preflight failed:\n  {}", msg.join("\n  "));
    }
    Ok(preflight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_come_from_the_effective_set() {
        // Root in a container without CAP_NET_ADMIN (bit 12 clear), and with it.
        let without = "Name:\tringbeat\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffefff\n";
        let with = "CapEff:\t0000000000001000\n";
        assert!(!capability_in_status(without, CAP_NET_ADMIN));
        assert!(capability_in_status(with, CAP_NET_ADMIN));
        assert!(!capability_in_status("no such line", CAP_NET_ADMIN));
    }

    #[test]
    fn the_epoll_engine_needs_no_io_uring() {
        let config = crate::config::ServeArgs::parse_flags([
            "--engine",
            "epoll",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let Preflight { checks, engine } = run_checks(&config);
        assert_eq!(engine, Engine::Epoll);
        assert!(checks
            .iter()
            .any(|c| c.name == "io_uring" && c.verdict == Verdict::Ok));
        assert!(
            !checks
                .iter()
                .any(|c| c.name.contains("io_uring_disabled") || c.name.contains("buffer ring")),
            "{checks:?}"
        );
    }

    #[test]
    fn idle_line_names_the_slowest_state_and_the_lever() {
        let (v, hint) = idle_summary(Some("intel_idle"), &[0, 2, 85], None);
        assert_eq!(v, "driver intel_idle, 3 states, slowest exit 85 µs");
        assert!(hint.contains("--cpu-dma-latency-us 0"), "{hint}");
        let (_, hint) = idle_summary(Some("haltpoll"), &[0, 1], None);
        assert!(
            hint.contains("--cpu-dma-latency-us 0"),
            "a VM's halt is slow: {hint}"
        );
        let (_, hint) = idle_summary(Some("acpi_idle"), &[0, 1], None);
        assert!(hint.is_empty());
        let (v, hint) = idle_summary(None, &[], Some(0));
        assert_eq!(v, "driver none, no idle states listed");
        assert!(hint.contains("holding a 0 µs"));
    }
}
