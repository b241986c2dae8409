//! `ringbeat-bench sweep` and `ringbeat-bench plot`: whole experiments in one command.
//!
//! A sweep starts the server itself (pinned to its own CPUs), runs one open-loop load
//! per point (a rate scan: latency vs offered load up to and past saturation, like
//! mutilate's `--scan`; or a device-count scan at a fixed per-device interval), and
//! writes `results/<date>-<name>/`: README.md (exact command, git revision, kernel, CPU,
//! pinning, sysctls, server flags), points.csv, summary.md, raw/ (each point's load
//! JSON, `.hgrm`, `.hlog`, server stats and logs) and SVG plots. `plot DIR` redraws the
//! plots from points.csv alone.
//!
//! One module per job: `plan` (the points), `server` (the measured process and the
//! environment), `record` (the typed row every CSV is written and read through),
//! `readme` and `plot`; this module runs them in order.

mod plan;
mod plot;
mod readme;
mod record;
mod server;

pub use plot::plot;

use crate::{run_load, GeneratorArgs, LoadArgs, ShapeArgs};
use anyhow::{bail, Context};
use record::Row;
use server::ServerProcess;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// The scan.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Folder name: the results go to `<results>/<UTC date>-<name>/`.
    #[arg(long)]
    pub name: String,
    /// Folder the dated results folder goes in.
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
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Seconds of load per run, warm-up included: the measured window is this minus
    /// `--warmup` (minus 3 s when `--warmup` is left to its default), and stays that
    /// long at every point.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Seconds at the start of each run left out of the measurement, honoured as given.
    /// Refused when a point's devices would not all have sent once by then (one device
    /// interval + 1 s), since first appearances would then fall in the measured window.
    /// Left out: one device interval + 1 s at each point, at least 3 s.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Latency sample: one ack per this many datagrams (--ack-every = this × batch).
    #[arg(long, default_value_t = 100)]
    pub ack_every_datagrams: u64,
    /// Transport of the load: udp or tcp (a variant may set its own with
    /// `--proto=tcp` among its flags).
    #[arg(long, default_value = "udp")]
    pub proto: String,
    /// TCP connections the load holds (a variant may set `--connections=N`).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// TCP: the load writes each connection's due frames every this many µs.
    #[arg(long, default_value_t = 200)]
    pub tcp_flush_us: u64,
    /// Server binary [default: `ringbeat` beside this binary].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// CPUs of the server's shards.
    #[arg(long, default_value = "0")]
    pub server_cores: String,
    /// Extra server flag (repeatable), e.g. `--server-arg=--wait-us=0`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Measure with uncommitted changes in the git tree, writing them to
    /// `uncommitted.diff` beside the results (without it, a dirty tree is refused:
    /// results must say exactly what code they measured).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Port the started server listens on (on 127.0.0.1).
    #[arg(long, default_value_t = 7979)]
    pub port: u16,
    /// Runs per point (each with a fresh server); points.csv holds their medians and
    /// runs.csv every run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A server variant to compare, `LABEL=FLAGS` (repeatable), e.g.
    /// `--variant 'epoll=--engine epoll'`; `LABEL=@PATH FLAGS` runs another server
    /// binary (an earlier revision's build, say); `NAME=VALUE` among the flags sets the
    /// server's environment, `--proto=tcp` / `--connections=N` the load's transport, `--auth-keys=FILE` its version-2 keys. Every point runs every variant, interleaved
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
}

/// The kind of scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Latency vs offered heartbeats/s at a fixed device count.
    Rate,
    /// Latency vs device count at a fixed per-device interval.
    Devices,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rate => "rate",
            Kind::Devices => "devices",
        }
    }
}

/// A labelled set of extra server flags.
#[derive(Clone, Debug)]
pub struct Variant {
    pub label: String,
    /// Another server binary for this variant (`@PATH` first in its flags), e.g. a
    /// build of an earlier revision to measure a change against in the same runs.
    pub bin: Option<PathBuf>,
    pub flags: Vec<String>,
    /// The bare receiver instead of the server (`--sink-baseline`).
    pub sink: bool,
    /// The load's transport and connections for this variant (`--proto=tcp` and
    /// `--connections=N` among its flags set the load, not the server).
    pub proto: Option<String>,
    pub connections: Option<usize>,
    /// `--auth-keys=FILE` among its flags: the load sends authenticated version-2
    /// frames with these keys.
    pub auth_keys: Option<PathBuf>,
    /// The server's environment for this variant (`NAME=VALUE` among its flags).
    pub env: Vec<(String, String)>,
}

impl Variant {
    pub fn describe(&self) -> String {
        if self.sink {
            return "ringbeat-bench sink".into();
        }
        let bin = self
            .bin
            .iter()
            .map(|b| format!("@{}", server::shown_path(b).display()));
        let load = self
            .proto
            .iter()
            .map(|p| format!("--proto={p}"))
            .chain(
                self.connections
                    .iter()
                    .map(|c| format!("--connections={c}")),
            )
            .chain(
                self.auth_keys
                    .iter()
                    .map(|k| format!("--auth-keys={}", k.display())),
            );
        bin.chain(load)
            .chain(self.flags.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
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
    let mut flags: Vec<String> = flags.split_whitespace().map(String::from).collect();
    let bin = match flags.first().and_then(|f| f.strip_prefix('@')) {
        Some("") => return Err(format!("variant {label}: `@` wants a server binary path")),
        Some(path) => {
            let path = PathBuf::from(path);
            flags.remove(0);
            Some(path)
        }
        None => None,
    };
    let mut proto = None;
    let mut connections = None;
    let mut auth_keys = None;
    let mut server_flags = Vec::new();
    let mut env = Vec::new();
    for f in flags {
        let is_env = |f: &str| {
            f.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        };
        if is_env(&f) {
            let (k, v) = f.split_once('=').expect("checked");
            env.push((k.to_string(), v.to_string()));
        } else if let Some(p) = f.strip_prefix("--proto=") {
            if p != "udp" && p != "tcp" {
                return Err(format!("variant {label}: --proto={p}: udp or tcp"));
            }
            proto = Some(p.to_string());
        } else if let Some(k) = f.strip_prefix("--auth-keys=") {
            auth_keys = Some(PathBuf::from(k));
        } else if let Some(n) = f.strip_prefix("--connections=") {
            connections = Some(
                n.parse()
                    .map_err(|_| format!("variant {label}: --connections={n} is not a number"))?,
            );
        } else {
            server_flags.push(f);
        }
    }
    Ok(Variant {
        label: label.into(),
        bin,
        flags: server_flags,
        sink: false,
        proto,
        connections,
        auth_keys,
        env,
    })
}

/// The variants a sweep runs, in run order: the sink first (with `--sink-baseline`),
/// then the asked ones, or the server with its defaults.
fn variants(a: &SweepArgs) -> Vec<Variant> {
    let compare = !a.variants.is_empty() || a.sink_baseline;
    let mut variants = a.variants.clone();
    if variants.is_empty() {
        variants.push(Variant {
            label: if compare {
                "server".into()
            } else {
                String::new()
            },
            bin: None,
            flags: Vec::new(),
            sink: false,
            proto: None,
            connections: None,
            auth_keys: None,
            env: Vec::new(),
        });
    }
    if a.sink_baseline {
        variants.insert(
            0,
            Variant {
                label: "sink".into(),
                bin: None,
                flags: Vec::new(),
                sink: true,
                proto: None,
                connections: None,
                auth_keys: None,
                env: Vec::new(),
            },
        );
    }
    variants
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let points = plan::points(&plan::Scan {
        kind: a.kind,
        rates: &a.rates,
        device_counts: &a.device_counts,
        devices: a.devices,
        interval_s: a.interval,
        duration_s: a.duration,
        warmup_s: a.warmup,
    })?;
    let server_bin = match &a.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ringbeat"),
    };
    // Read before the first run: the revision and tree state that ran, not whatever
    // the checkout holds when the last run ends.
    let environment = server::environment(&a, &server_bin);
    let dir = a.results.join(format!("{}-{}", server::today(), a.name));
    if dir.exists() {
        bail!(
            "{} exists: results are never overwritten; choose another --name, or move it away",
            dir.display()
        );
    }
    let diff = server::uncommitted_diff();
    if !diff.is_empty() && !a.allow_dirty {
        bail!(
            "the git tree has uncommitted changes: commit them first, or pass --allow-dirty \
             to measure anyway with the diff written beside the results"
        );
    }
    let compare = !a.variants.is_empty() || a.sink_baseline;
    let variants = variants(&a);
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
    if !diff.is_empty() {
        let p = dir.join("uncommitted.diff");
        std::fs::write(&p, format!("{diff}\n"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut medians: Vec<Vec<Row>> = vec![Vec::new(); variants.len()];
    let mut all_runs: Vec<Vec<Row>> = vec![Vec::new(); variants.len()];
    for (i, p) in points.iter().enumerate() {
        eprintln!(
            "== point {}/{}: {} devices, {} hb/s, batch {}, warm-up {} s{}",
            i + 1,
            points.len(),
            p.devices,
            p.rate_hb_per_s,
            a.shape.batch,
            crate::seconds(p.warmup_s),
            if a.warmup.is_none() {
                " (one device interval + 1 s, at least 3 s)"
            } else {
                ""
            }
        );
        let mut runs = vec![Vec::with_capacity(a.runs); variants.len()];
        for run in 1..=a.runs {
            // Each run starts one variant further on, so no variant always runs first,
            // last or after the same one, and no comparison rests on its place. (The
            // same server run first and last in a fixed order took the same, 0.99×,
            // results/2026-12-03-variant-order; the rotation makes sure of it.)
            for vi in run_order(variants.len(), run) {
                let v = &variants[vi];
                if compare {
                    eprintln!("-- run {run}/{}: {}", a.runs, v.label);
                }
                let tag = if a.runs == 1 {
                    format!("p{i:02}")
                } else {
                    format!("p{i:02}-r{run}")
                };
                let raw = vdirs[vi].join("raw");
                let row = match measure(&a, &server_bin, v, p, &raw, &tag) {
                    Ok(row) => row,
                    // A results folder is whole or absent: a half-written one would be
                    // read as results, and would block a rerun under the same name.
                    Err(e) => {
                        let kept = std::env::temp_dir().join("ringbeat-sweep-failed-server.log");
                        let log = match std::fs::copy(raw.join(format!("{tag}.server.log")), &kept)
                        {
                            Ok(_) => format!("the server's log is kept as {}", kept.display()),
                            Err(_) => "the server left no log".to_string(),
                        };
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e.context(format!(
                            "point {}/{}, run {run}/{}{} failed, so {} was removed ({log})",
                            i + 1,
                            points.len(),
                            a.runs,
                            if compare {
                                format!(" ({})", v.label)
                            } else {
                                String::new()
                            },
                            dir.display(),
                        )));
                    }
                };
                all_runs[vi].push(Row {
                    run: Some(run),
                    ..row.clone()
                });
                runs[vi].push(row);
            }
        }
        for (vi, d) in vdirs.iter().enumerate() {
            medians[vi].push(Row::median(&runs[vi]));
            record::write(&d.join("runs.csv"), &all_runs[vi])?;
            record::write(&d.join("points.csv"), &medians[vi])?;
        }
    }
    write_results(&a, &environment, &dir, &variants, &vdirs, &medians)?;
    eprintln!("wrote {}", dir.display());
    Ok(())
}

/// One run of one variant at one point: a fresh server, the load, the row.
fn measure(
    a: &SweepArgs,
    server_bin: &Path,
    v: &Variant,
    p: &plan::Point,
    raw: &Path,
    tag: &str,
) -> anyhow::Result<Row> {
    let stats = raw.join(format!("{tag}.server.json"));
    let log = raw.join(format!("{tag}.server.log"));
    let bin = v.bin.as_deref().unwrap_or(server_bin);
    let server = ServerProcess::start(bin, a, v, &stats, &log, p.duration_s + 5.0)?;
    let load = LoadArgs {
        target: format!("127.0.0.1:{}", a.port).parse()?,
        devices: p.devices,
        first_id: 1,
        interval: 1.0,
        rate: Some(p.rate_hb_per_s),
        shape: a.shape.clone(),
        generator: a.generator.clone(),
        duration: p.duration_s,
        warmup: p.warmup_s,
        ack_every: a.ack_every_datagrams * a.shape.batch as u64,
        proto: v.proto.clone().unwrap_or_else(|| a.proto.clone()),
        connections: v.connections.unwrap_or(a.connections),
        tcp_flush_us: a.tcp_flush_us,
        tcp_hold: 0.0,
        auth_keys: v.auth_keys.clone(),
        grace: 0.5,
        server_pid: Some(server.child.id()),
        server_stats: Some(stats),
        json: Some(raw.join(format!("{tag}.load.json"))),
        hgrm: Some(raw.join(format!("{tag}.hgrm"))),
        hlog: Some(raw.join(format!("{tag}.hlog"))),
    };
    let result = run_load(&load);
    server.stop();
    Ok(Row::from_load(p.x, p.devices, a.shape.batch, &result?))
}

/// The command as a shell takes it back: an argument with spaces or quotes (a variant's
/// `LABEL=flags`) single-quoted, so the line in a results README runs as written.
fn command_line(args: impl IntoIterator<Item = String>) -> String {
    let args: Vec<String> = args.into_iter().collect();
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// sweep.json, summary.md, plots and README per variant folder, and the comparison.
fn write_results(
    a: &SweepArgs,
    environment: &str,
    dir: &Path,
    variants: &[Variant],
    vdirs: &[PathBuf],
    medians: &[Vec<Row>],
) -> anyhow::Result<()> {
    let compare = vdirs.first().is_some_and(|d| d != dir);
    let command = command_line(std::env::args());
    let ctx = readme::Context {
        args: a,
        command: &command,
        environment,
    };
    let meta = serde_json::json!({
        "kind": a.kind.name(), "batch": a.shape.batch, "devices": a.devices, "interval_s": a.interval,
    });
    for (vi, d) in vdirs.iter().enumerate() {
        let csv = record::to_csv(&medians[vi])?;
        std::fs::write(d.join("sweep.json"), serde_json::to_vec_pretty(&meta)?)?;
        std::fs::write(d.join("summary.md"), record::markdown_table(&csv, &[]))?;
        plot::plot_dir(d)?;
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
        let text = readme::variant(&ctx, &title, &d.display().to_string(), &csv);
        std::fs::write(d.join("README.md"), text)?;
    }
    if compare {
        let rows: Vec<Row> = variants
            .iter()
            .zip(medians)
            .flat_map(|(v, rows)| {
                rows.iter().map(|r| Row {
                    variant: Some(v.label.clone()),
                    flags: Some(v.describe()),
                    ..r.clone()
                })
            })
            .collect();
        record::write(&dir.join("variants.csv"), &rows)?;
        let meta = serde_json::json!({
            "kind": a.kind.name(),
            "variants": variants.iter().map(|v| serde_json::json!({"label": v.label, "flags": v.describe()})).collect::<Vec<_>>(),
        });
        std::fs::write(dir.join("sweep.json"), serde_json::to_vec_pretty(&meta)?)?;
        let plots = plot::plot_variants(dir)?;
        let text = readme::comparison(
            &ctx,
            variants,
            &dir.display().to_string(),
            &record::to_csv(&rows)?,
            &plots,
        );
        std::fs::write(dir.join("README.md"), text)?;
    }
    Ok(())
}

/// The order in which run `run` (from 1) takes `n` variants: rotated by one each run.
fn run_order(n: usize, run: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + run - 1) % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_command_quotes_what_a_shell_would_split() {
        let args = [
            "target/release/ringbeat-bench",
            "sweep",
            "--variant",
            "uring=--engine uring",
            "--rates",
            "20000000",
        ];
        let line = command_line(args.iter().map(|a| a.to_string()));
        assert_eq!(
            line,
            "target/release/ringbeat-bench sweep --variant 'uring=--engine uring' --rates 20000000"
        );
        assert_eq!(shlex::split(&line).unwrap(), args);
    }

    #[test]
    fn every_run_takes_every_variant_once_and_each_leads_in_turn() {
        let orders: Vec<Vec<usize>> = (1..=4).map(|run| run_order(3, run).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
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
        let v = parse_variant("before=@/tmp/old/ringbeat --wait-us 0").unwrap();
        assert_eq!(v.bin.as_deref(), Some(Path::new("/tmp/old/ringbeat")));
        assert_eq!(v.flags, ["--wait-us", "0"]);
        assert_eq!(v.describe(), "@/tmp/old/ringbeat --wait-us 0");
        assert!(parse_variant("before=@ --wait-us 0").is_err());
        // A binary inside the checkout is shown relative to it.
        let inside = std::env::current_dir()
            .unwrap()
            .join("target/before-x/ringbeat");
        let v = parse_variant(&format!("before=@{}", inside.display())).unwrap();
        assert_eq!(v.describe(), "@target/before-x/ringbeat");
    }
}
