//! `ringbeat-bench sweep` and `ringbeat-bench plot`: whole experiments in one command.
//!
//! A sweep starts the server itself (pinned to its own CPUs), runs one open-loop load
//! per point (a rate scan: latency vs offered load up to and past saturation, like
//! mutilate's `--scan`; or a device-count scan at a fixed per-device interval), and
//! writes `results/<date>-<name>/`: README.md (exact command, git revision, kernel, CPU,
//! pinning, sysctls, server flags), points.csv, summary.md, raw/ (each point's load
//! JSON, `.hgrm`, `.hlog`, server stats and logs) and SVG plots. `plot DIR` redraws the
//! plots from points.csv alone.

use crate::{run_load, LoadArgs};
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// `rate`: latency vs offered heartbeats/s at a fixed device count; `devices`:
    /// latency vs device count at a fixed per-device interval.
    #[arg(long, value_parser = ["rate", "devices"])]
    kind: String,
    /// Folder name: the results go to `<results>/<UTC date>-<name>/`.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Rate scan: offered heartbeats per second, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Device scan: device counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    device_counts: Vec<u64>,
    /// Rate scan: number of devices.
    #[arg(long, default_value_t = 2_000_000)]
    devices: u64,
    /// Device scan: each device's heartbeat period, seconds.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Frames per datagram.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bursty load at the same average rate (see `load --burst`), e.g. `100:0.1`.
    #[arg(long, value_name = "PERIOD_MS:DUTY", value_parser = crate::schedule::Burst::parse)]
    burst: Option<crate::schedule::Burst>,
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Latency sample: one ack per this many datagrams (--ack-every = this × batch).
    #[arg(long, default_value_t = 100)]
    ack_every_datagrams: u64,
    /// CPUs of the load generator.
    #[arg(long, default_value = "1")]
    cpus: String,
    #[arg(long, default_value_t = 64)]
    source_ports: usize,
    /// Server binary [default: `ringbeat` beside this binary].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// CPUs of the server's shards.
    #[arg(long, default_value = "0")]
    server_cores: String,
    /// Extra server flag (repeatable), e.g. `--server-arg=--wait-us=0`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[arg(long, default_value_t = 7979)]
    port: u16,
    /// Runs per point (each with a fresh server); points.csv holds their medians and
    /// runs.csv every run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A server variant to compare, `LABEL=FLAGS` (repeatable), e.g.
    /// `--variant 'epoll=--engine epoll'`. Every point runs every variant, interleaved
    /// run by run so that the machine's noise falls on all of them alike; each variant
    /// gets its own folder and the comparison goes to variants.csv and compare-*.svg.
    #[arg(long = "variant", value_name = "LABEL=FLAGS", value_parser = parse_variant)]
    variants: Vec<Variant>,
    /// Also run the bare receiver (`ringbeat-bench sink` on the server's CPUs, the
    /// server's SO_RCVBUF) as the variant `sink`, interleaved with the others: its CPU
    /// time per datagram is the kernel's receive cost with nothing above it, so the
    /// server's cost over the kernel's is a ratio measured in one run. Without
    /// `--variant` the server runs with its defaults as the variant `server`.
    #[arg(long)]
    sink_baseline: bool,
    /// Garbage datagrams per second beside the load (`load --garbage-rate`).
    #[arg(long, default_value_t = 0.0)]
    garbage_rate: f64,
    /// Count the server's system calls in each measured window (`load --count-syscalls`;
    /// needs perf).
    #[arg(long)]
    count_syscalls: bool,
}

/// A labelled set of extra server flags.
#[derive(Clone, Debug)]
pub struct Variant {
    label: String,
    flags: Vec<String>,
    /// The bare receiver instead of the server (`--sink-baseline`).
    sink: bool,
}

impl Variant {
    fn describe(&self) -> String {
        if self.sink {
            "ringbeat-bench sink".into()
        } else {
            self.flags.join(" ")
        }
    }
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    let (label, flags) = s
        .split_once('=')
        .ok_or_else(|| format!("--variant wants LABEL=FLAGS, got {s:?}"))?;
    if label.is_empty()
        || !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "variant label {label:?}: use letters, digits, '-', '_' or '.' (it names a folder)"
        ));
    }
    if label == "sink" {
        return Err("variant label \"sink\" is kept for --sink-baseline".into());
    }
    Ok(Variant {
        label: label.into(),
        flags: flags.split_whitespace().map(String::from).collect(),
        sink: false,
    })
}

/// points.csv: one row per point, each value the median over the point's runs.
const CSV_HEADER: &str = "x,offered_hb_per_s,devices,batch,achieved_hb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,service_p99_us,server_hb_per_core_second,server_cpu_util,kernel_drops,acks_missing,malformed,engine_wakeups_per_s,kernel_wakeups_per_s,hb_per_kernel_wakeup,syscalls_per_s,hb_per_syscall,generator_kept_schedule_share";

fn today() -> String {
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

fn environment(a: &SweepArgs, server_bin: &Path) -> String {
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
        if shell("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (uncommitted changes)"
        }
    );
    s += &format!("- kernel: {}\n", read("/proc/sys/kernel/osrelease"));
    s += &format!(
        "- CPU: {cpu} ({} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    s += &format!(
        "- pinning: server shards on CPUs {}, load generator on CPUs {}\n",
        a.server_cores, a.cpus
    );
    s += &format!(
        "- server: `{} serve --cores {} {}`\n",
        server_bin.display(),
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

struct ServerProcess {
    child: std::process::Child,
}

impl ServerProcess {
    fn start(
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
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?
        };
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = log.to_path_buf();
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
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            bail!("the server did not start (see its log)");
        }
        Ok(ServerProcess { child })
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let points: Vec<(f64, u64, f64)> = match a.kind.as_str() {
        "rate" if !a.rates.is_empty() => a.rates.iter().map(|&r| (r, a.devices, r)).collect(),
        "devices" if !a.device_counts.is_empty() => a
            .device_counts
            .iter()
            .map(|&n| (n as f64, n, n as f64 / a.interval))
            .collect(),
        _ => bail!("a rate scan needs --rates, a device scan --device-counts"),
    };
    let server_bin = match &a.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ringbeat"),
    };
    let dir = a.results.join(format!("{}-{}", today(), a.name));
    let compare = !a.variants.is_empty() || a.sink_baseline;
    let mut variants = a.variants.clone();
    if variants.is_empty() {
        variants.push(Variant {
            label: if compare {
                "server".into()
            } else {
                String::new()
            },
            flags: Vec::new(),
            sink: false,
        });
    }
    if a.sink_baseline {
        variants.insert(
            0,
            Variant {
                label: "sink".into(),
                flags: Vec::new(),
                sink: true,
            },
        );
    }
    // Each variant's folder: the sweep folder itself when there is only one.
    let vdirs: Vec<PathBuf> = variants
        .iter()
        .map(|v| {
            if compare {
                dir.join(&v.label)
            } else {
                dir.clone()
            }
        })
        .collect();
    for d in &vdirs {
        let raw = d.join("raw");
        std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    }
    let command: Vec<String> = std::env::args().collect();
    let mut csvs = vec![format!("{CSV_HEADER}\n"); variants.len()];
    let mut runs_csvs = vec![format!("run,{CSV_HEADER}\n"); variants.len()];
    for (i, &(x, devices, rate)) in points.iter().enumerate() {
        eprintln!(
            "== point {}/{}: {} devices, {:.0} hb/s, batch {}",
            i + 1,
            points.len(),
            devices,
            rate,
            a.batch
        );
        // Steady state: every device has sent before the measured window starts, so
        // the warm-up covers at least one device interval (+1 s). First appearances
        // (table pages faulted in) are in the warm-up, visible in the .hlog.
        let warmup = a.warmup.max(devices as f64 / rate + 1.0);
        let duration = a.duration - a.warmup + warmup;
        let mut rows = vec![Vec::with_capacity(a.runs); variants.len()];
        for run in 1..=a.runs {
            for (vi, v) in variants.iter().enumerate() {
                if compare {
                    eprintln!("-- run {run}/{}: {}", a.runs, v.label);
                }
                let tag = if a.runs == 1 {
                    format!("p{i:02}")
                } else {
                    format!("p{i:02}-r{run}")
                };
                let raw = vdirs[vi].join("raw");
                let stats = raw.join(format!("{tag}.server.json"));
                let log = raw.join(format!("{tag}.server.log"));
                let server =
                    ServerProcess::start(&server_bin, &a, v, &stats, &log, duration + 5.0)?;
                let load = LoadArgs {
                    target: format!("127.0.0.1:{}", a.port).parse()?,
                    devices,
                    interval: 1.0,
                    rate: Some(rate),
                    batch: a.batch,
                    duration,
                    warmup,
                    ack_every: a.ack_every_datagrams * a.batch as u64,
                    cpus: a.cpus.clone(),
                    source_ports: a.source_ports,
                    no_gso: false,
                    proto: "udp".into(),
                    grace: 0.5,
                    jitter: 0.0,
                    burst: a.burst,
                    seed: 1,
                    server_pid: Some(server.child.id()),
                    count_syscalls: a.count_syscalls,
                    garbage_rate: a.garbage_rate,
                    server_stats: Some(stats.clone()),
                    json: Some(raw.join(format!("{tag}.load.json"))),
                    hgrm: Some(raw.join(format!("{tag}.hgrm"))),
                    hlog: Some(raw.join(format!("{tag}.hlog"))),
                };
                let result = run_load(&load);
                server.stop();
                let row = csv_fields(x, devices, a.batch, &result?);
                runs_csvs[vi] += &format!("{run},{}\n", format_row(&row));
                rows[vi].push(row);
            }
        }
        for (vi, d) in vdirs.iter().enumerate() {
            std::fs::write(d.join("runs.csv"), &runs_csvs[vi])?;
            csvs[vi] += &format_row(&median_row(&rows[vi]));
            csvs[vi].push('\n');
            std::fs::write(d.join("points.csv"), &csvs[vi])?;
        }
    }
    let meta = serde_json::json!({ "kind": a.kind, "batch": a.batch, "devices": a.devices, "interval_s": a.interval });
    for (vi, d) in vdirs.iter().enumerate() {
        std::fs::write(d.join("sweep.json"), serde_json::to_vec_pretty(&meta)?)?;
        std::fs::write(d.join("summary.md"), summary_table(&csvs[vi]))?;
        plot_dir(d)?;
        let title = if compare {
            format!(
                "{}: variant {} (`{}`)",
                a.name,
                variants[vi].label,
                variants[vi].describe()
            )
        } else {
            a.name.clone()
        };
        let readme = format!(
            "# {title} {} scan\n\nCommand:\n\n```sh\n{}\n```\n\n{}\nEach point: an open-loop load measured for {} s after a warm-up of at least {} s and at least one device interval + 1 s \
             (every device has sent before the measured window; first appearances are in the warm-up and the .hlog), latency sampled on one datagram in {}; \
             server CPU from /proc/PID/task/TID/schedstat and wake-ups from the shard threads' voluntary context switches over the measured window. {} run(s) per point, each with a fresh server.\n\n\
             Files: `points.csv` (one row per point, each value the median over its runs), `runs.csv` (every run), `summary.md`, `latency.svg`, `efficiency.svg`, \
             `raw/` (per run: load JSON, `.hgrm` percentile distribution, `.hlog` interval log, server stats JSON and log). \
             Redraw the plots with `ringbeat-bench plot {}`.\n\n## Summary\n\n{}\n![latency](latency.svg)\n\n![efficiency](efficiency.svg)\n",
            a.kind,
            command.join(" "),
            environment(&a, &server_bin),
            a.duration - a.warmup,
            a.warmup,
            a.ack_every_datagrams,
            a.runs,
            d.display(),
            summary_table(&csvs[vi])
        );
        std::fs::write(d.join("README.md"), readme)?;
    }
    if compare {
        let mut all = format!("variant,flags,{CSV_HEADER}\n");
        for (vi, v) in variants.iter().enumerate() {
            for line in csvs[vi].lines().skip(1) {
                all += &format!("{},{},{line}\n", v.label, v.describe());
            }
        }
        std::fs::write(dir.join("variants.csv"), &all)?;
        let meta = serde_json::json!({
            "kind": a.kind,
            "variants": variants.iter().map(|v| serde_json::json!({"label": v.label, "flags": v.describe()})).collect::<Vec<_>>(),
        });
        std::fs::write(dir.join("sweep.json"), serde_json::to_vec_pretty(&meta)?)?;
        let plots = plot_variants(&dir)?;
        let readme = format!(
            "# {}: {} variants compared\n\nCommand:\n\n```sh\n{}\n```\n\n{}\n\
             Every point ran every variant, interleaved run by run ({} run(s) each, a fresh server every time); each value below is the median over runs. \
             Each variant's own folder holds its points, runs, raw files and plots; `variants.csv` holds this table. \
             Redraw the plots with `ringbeat-bench plot {}`.\n\n## Summary\n\n{}\n{}",
            a.name,
            variants.len(),
            command.join(" "),
            environment(&a, &server_bin),
            a.runs,
            dir.display(),
            variants_table(&all),
            plots
                .iter()
                .map(|p| format!("![{p}]({p})\n\n"))
                .collect::<String>()
        );
        std::fs::write(dir.join("README.md"), readme)?;
    }
    eprintln!("wrote {}", dir.display());
    Ok(())
}

/// The comparison table: the columns that tell variants apart.
fn variants_table(csv: &str) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let keep = [
        "variant",
        "flags",
        "offered_hb_per_s",
        "achieved_hb_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "server_hb_per_core_second",
        "server_cpu_util",
        "kernel_drops",
        "acks_missing",
        "malformed",
        "engine_wakeups_per_s",
        "kernel_wakeups_per_s",
        "hb_per_kernel_wakeup",
        "syscalls_per_s",
        "hb_per_syscall",
        "generator_kept_schedule_share",
    ];
    let idx: Vec<usize> = keep
        .iter()
        .filter_map(|k| header.iter().position(|h| h == k))
        .collect();
    let mut s = format!(
        "| {} |\n|{}\n",
        idx.iter()
            .map(|&i| header[i])
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(idx.len())
    );
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        s += &format!(
            "| {} |\n",
            idx.iter()
                .map(|&i| f.get(i).copied().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    s
}

/// One run's values in `CSV_HEADER` order (the last is 1.0 when the generator kept
/// its schedule).
fn csv_fields(x: f64, devices: u64, batch: usize, d: &serde_json::Value) -> Vec<f64> {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let s = &d["server"];
    let l = &d["latency_intended"];
    let measured_s = f(&d["config"]["duration_s"]) - f(&d["config"]["warmup_s"]);
    vec![
        x,
        f(&d["config"]["rate_hb_per_s"]),
        devices as f64,
        batch as f64,
        f(&s["heartbeats"]) / measured_s,
        f(&l["p50_us"]),
        f(&l["p90_us"]),
        f(&l["p99_us"]),
        f(&l["p999_us"]),
        f(&l["max_us"]),
        f(&d["latency_service"]["p99_us"]),
        f(&s["heartbeats_per_core_second"]),
        f(&s["cpu_utilisation"]),
        f(&s["kernel_drops"]),
        f(&d["acks"]["missing"]),
        f(&s["malformed_total"]),
        f(&s["wakeups_per_s"]),
        f(&s["kernel_wakeups_per_s"]),
        f(&s["heartbeats_per_kernel_wakeup"]),
        f(&s["syscalls_per_s"]),
        f(&s["heartbeats_per_syscall"]),
        if d["generator"]["kept_schedule"].as_bool().unwrap_or(false) {
            1.0
        } else {
            0.0
        },
    ]
}

/// Per column: the median over runs (the schedule column: the share of runs that
/// kept it).
fn median_row(rows: &[Vec<f64>]) -> Vec<f64> {
    let columns = rows[0].len();
    (0..columns)
        .map(|c| {
            let mut v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
            if c == columns - 1 {
                return v.iter().sum::<f64>() / v.len() as f64;
            }
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            }
        })
        .collect()
}

fn format_row(row: &[f64]) -> String {
    row.iter()
        .enumerate()
        .map(|(i, v)| match i {
            5..=10 | 18 => format!("{v:.1}"),
            20 => format!("{v:.2}"),
            12 | 21 => format!("{v:.3}"),
            _ => format!("{v:.0}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn summary_table(csv: &str) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for l in lines {
        s += &format!("| {} |\n", l.split(',').collect::<Vec<_>>().join(" | "));
    }
    s
}

/// Parsed points.csv.
struct Points {
    rows: Vec<Vec<f64>>,
    header: Vec<String>,
}

impl Points {
    fn read(dir: &Path) -> anyhow::Result<Points> {
        let text = std::fs::read_to_string(dir.join("points.csv"))
            .with_context(|| format!("reading {}/points.csv", dir.display()))?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split(',')
            .map(String::from)
            .collect();
        let rows = lines
            .map(|l| {
                l.split(',')
                    .map(|v| {
                        v.parse::<f64>()
                            .unwrap_or(if v == "true" { 1.0 } else { 0.0 })
                    })
                    .collect()
            })
            .collect();
        Ok(Points { rows, header })
    }
    fn col(&self, name: &str) -> Vec<f64> {
        let i = self
            .header
            .iter()
            .position(|h| h == name)
            .expect("known column");
        self.rows.iter().map(|r| r[i]).collect()
    }
}

/// `plot DIR`: redraws a sweep's plots, or a comparison's and each variant's.
pub fn plot(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("variants.csv").exists() {
        return plot_dir(dir);
    }
    for label in variant_labels(dir)? {
        plot_dir(&dir.join(label))?;
    }
    plot_variants(dir).map(|_| ())
}

fn variant_labels(dir: &Path) -> anyhow::Result<Vec<String>> {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("sweep.json"))
            .with_context(|| format!("reading {}/sweep.json", dir.display()))?,
    )?;
    Ok(meta["variants"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x["label"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

const PALETTE: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(23, 190, 207),
    plotters::style::RGBColor(0, 0, 0),
];

/// Draws the comparison of a variants sweep; returns the files written. With several
/// points per variant: one curve per variant (p99 latency, and heartbeats per server
/// core-second, vs x). With one point per variant: the variants side by side on the x
/// axis (latency percentiles; server CPU per heartbeat; wake-ups and system calls).
pub fn plot_variants(dir: &Path) -> anyhow::Result<Vec<String>> {
    use plotters::prelude::*;
    let labels = variant_labels(dir)?;
    let sets: Vec<Points> = labels
        .iter()
        .map(|l| Points::read(&dir.join(l)))
        .collect::<anyhow::Result<_>>()?;
    if sets.is_empty() || sets.iter().any(|p| p.rows.is_empty()) {
        bail!("{}: a variant has no points", dir.display());
    }
    let finite_max =
        |v: &mut dyn Iterator<Item = f64>| v.filter(|x| x.is_finite()).fold(f64::NAN, f64::max);
    let finite_min_pos = |v: &mut dyn Iterator<Item = f64>| {
        v.filter(|x| x.is_finite() && *x > 0.0)
            .fold(f64::NAN, f64::min)
    };
    let mut written = Vec::new();
    if sets[0].rows.len() > 1 {
        let (x_desc, x_col) = x_axis(&dir.join(&labels[0]));
        let xs: Vec<f64> = sets.iter().flat_map(|p| p.col(x_col)).collect();
        let x_range = xs.iter().cloned().fold(f64::INFINITY, f64::min) * 0.8
            ..xs.iter().cloned().fold(0.0, f64::max) * 1.25;
        for (file, col, y_desc, log_y) in [
            (
                "compare-latency.svg",
                "p99_us",
                "p99 latency from intended send time (µs)",
                true,
            ),
            (
                "compare-efficiency.svg",
                "server_hb_per_core_second",
                "heartbeats per server core-second",
                false,
            ),
        ] {
            let ys = || sets.iter().flat_map(|p| p.col(col));
            let hi = finite_max(&mut ys()).max(1.0);
            let lo = finite_min_pos(&mut ys()).min(hi);
            let lines: Vec<Line> = sets
                .iter()
                .zip(&labels)
                .enumerate()
                .map(|(i, (p, l))| {
                    let pts = p
                        .col(x_col)
                        .into_iter()
                        .zip(p.col(col))
                        .filter(|(_, y)| y.is_finite() && *y > 0.0)
                        .collect();
                    (l.clone(), pts, PALETTE[i % PALETTE.len()])
                })
                .collect();
            let path = dir.join(file);
            let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .caption(format!("{y_desc} vs {x_desc}"), ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(75);
            if log_y {
                let mut chart = builder.build_cartesian_2d(
                    x_range.clone().log_scale(),
                    (lo * 0.7..hi * 1.5).log_scale(),
                )?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_label_formatter(&|v| human(*v))
                    .draw()?;
                draw_lines(&mut chart, lines)?;
            } else {
                let mut chart =
                    builder.build_cartesian_2d(x_range.clone().log_scale(), 0.0..hi * 1.15)?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_label_formatter(&|v| human(*v))
                    .y_label_formatter(&|v| human(*v))
                    .draw()?;
                draw_lines(&mut chart, lines)?;
            }
            root.present()?;
            written.push(file.to_string());
        }
        return Ok(written);
    }
    // One point per variant: variants on the x axis, in the order given.
    let n = labels.len();
    let at = |col: &str| -> Vec<(f64, f64)> {
        sets.iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.col(col)[0]))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect()
    };
    let cpu_ns: Vec<(f64, f64)> = at("server_hb_per_core_second")
        .into_iter()
        .map(|(x, y)| (x, 1e9 / y))
        .collect();
    let charts: [(&str, &str, Vec<Line>); 3] = [
        (
            "compare-latency.svg",
            "latency from intended send time (µs)",
            vec![
                ("p50".into(), at("p50_us"), PALETTE[0]),
                ("p99".into(), at("p99_us"), PALETTE[1]),
                ("p99.9".into(), at("p999_us"), PALETTE[3]),
            ],
        ),
        (
            "compare-cpu.svg",
            "server CPU per heartbeat (ns)",
            vec![("server CPU ns per heartbeat".into(), cpu_ns, PALETTE[0])],
        ),
        (
            "compare-wakeups.svg",
            "per second",
            vec![
                (
                    "wake-ups/s (kernel count)".into(),
                    at("kernel_wakeups_per_s"),
                    PALETTE[0],
                ),
                ("system calls/s".into(), at("syscalls_per_s"), PALETTE[1]),
                (
                    "kernel drops in the measured window".into(),
                    at("kernel_drops"),
                    PALETTE[2],
                ),
            ],
        ),
    ];
    for (file, y_desc, lines) in charts {
        let ys = || lines.iter().flat_map(|l| l.1.iter().map(|p| p.1));
        if ys().next().is_none() {
            continue;
        }
        let hi = finite_max(&mut ys()).max(1.0);
        let lo = finite_min_pos(&mut ys()).min(hi);
        let path = dir.join(file);
        let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{y_desc} by variant"), ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, (lo * 0.7..hi * 1.5).log_scale())?;
        let names = labels.clone();
        chart
            .configure_mesh()
            .x_labels(n + 1)
            .x_desc("variant")
            .y_desc(y_desc)
            .x_label_formatter(&move |v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| human(*v))
            .draw()?;
        draw_lines(&mut chart, lines)?;
        root.present()?;
        written.push(file.to_string());
    }
    Ok(written)
}

/// The x axis of a sweep folder's plots, (description, points.csv column), from the
/// kind its sweep.json records (a rate scan when unknown).
fn x_axis(dir: &Path) -> (&'static str, &'static str) {
    let kind = std::fs::read(dir.join("sweep.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["kind"].as_str().map(String::from));
    if kind.as_deref() == Some("devices") {
        ("devices", "devices")
    } else {
        ("offered heartbeats/s", "offered_hb_per_s")
    }
}

/// Draws latency.svg (p50/p99/p999/max vs x) and efficiency.svg (server heartbeats per
/// core-second vs x) from `dir/points.csv`.
pub fn plot_dir(dir: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let p = Points::read(dir)?;
    if p.rows.is_empty() {
        bail!("{}/points.csv has no points", dir.display());
    }
    let (x_desc, x_col) = x_axis(dir);
    let xs = p.col(x_col);
    let x_range = xs.iter().cloned().fold(f64::INFINITY, f64::min) * 0.8
        ..xs.iter().cloned().fold(0.0, f64::max) * 1.25;
    let series = [
        ("p50", "p50_us", BLUE),
        ("p99", "p99_us", RED),
        ("p99.9", "p999_us", MAGENTA),
        ("max", "max_us", BLACK),
    ];
    let lat_max = series
        .iter()
        .flat_map(|s| p.col(s.1))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let lat_min = p
        .col("p50_us")
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(lat_max);
    {
        let path = dir.join("latency.svg");
        let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("latency from intended send time vs {x_desc}"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(
                x_range.clone().log_scale(),
                (lat_min * 0.7..lat_max * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_desc(x_desc)
            .y_desc("latency (µs)")
            .x_label_formatter(&|v| human(*v))
            .draw()?;
        let lines = series
            .iter()
            .map(|&(name, col, color)| {
                let pts = xs
                    .iter()
                    .cloned()
                    .zip(p.col(col))
                    .filter(|(_, y)| y.is_finite() && *y > 0.0)
                    .collect();
                (name.to_string(), pts, color)
            })
            .collect();
        draw_lines(&mut chart, lines)?;
        root.present()?;
    }
    {
        let path = dir.join("efficiency.svg");
        let eff = p.col("server_hb_per_core_second");
        let ach = p.col("achieved_hb_per_s");
        let y_max = eff
            .iter()
            .chain(&ach)
            .cloned()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.15;
        let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("server throughput and efficiency vs {x_desc}"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(x_range.log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_desc(x_desc)
            .y_desc("heartbeats/s")
            .x_label_formatter(&|v| human(*v))
            .y_label_formatter(&|v| human(*v))
            .draw()?;
        let finite = |ys: Vec<f64>| {
            xs.iter()
                .cloned()
                .zip(ys)
                .filter(|(_, y)| y.is_finite())
                .collect()
        };
        draw_lines(
            &mut chart,
            vec![
                (
                    "heartbeats per server core-second".into(),
                    finite(eff),
                    BLUE,
                ),
                (
                    "heartbeats/s applied by the server".into(),
                    finite(ach),
                    RED,
                ),
            ],
        )?;
        root.present()?;
    }
    Ok(())
}

/// A chart on an SVG file, whatever its axes' scales.
type SvgChart<'a, X, Y> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::SVGBackend<'a>,
    plotters::coord::cartesian::Cartesian2d<X, Y>,
>;

/// A named series of (x, y) points and its colour.
type Line = (String, Vec<(f64, f64)>, plotters::style::RGBColor);

/// Draws each named line with point markers, and the legend, on either chart.
fn draw_lines<'a, X, Y>(chart: &mut SvgChart<'a, X, Y>, lines: Vec<Line>) -> anyhow::Result<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    for (name, pts, color) in lines {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|pt| Circle::new(pt, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_column_and_schedule_share() {
        let rows = vec![
            vec![1.0, 10.0, 1.0],
            vec![1.0, 30.0, 0.0],
            vec![1.0, 20.0, 1.0],
        ];
        assert_eq!(median_row(&rows), vec![1.0, 20.0, 2.0 / 3.0]);
        let even = vec![vec![2.0, 1.0], vec![4.0, 1.0]];
        assert_eq!(median_row(&even), vec![3.0, 1.0]);
    }

    #[test]
    fn variants_parse_and_the_sink_label_is_kept() {
        let v = parse_variant("epoll=--engine epoll --rcvbuf 1M").unwrap();
        assert_eq!(v.label, "epoll");
        assert_eq!(v.flags, ["--engine", "epoll", "--rcvbuf", "1M"]);
        assert!(!v.sink);
        assert_eq!(v.describe(), "--engine epoll --rcvbuf 1M");
        assert!(parse_variant("default=").unwrap().flags.is_empty());
        assert!(parse_variant("no-equals").is_err());
        assert!(parse_variant("a/b=--wait-us 0").is_err());
        assert!(parse_variant("sink=--wait-us 0").is_err());
    }
}
