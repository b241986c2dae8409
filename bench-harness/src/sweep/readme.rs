//! The README.md of a results folder: the exact command, the environment, the method,
//! the files, the summary table and the plots.

use super::record;
use super::{SweepArgs, Variant};

/// What every README states.
pub struct Context<'a> {
    pub args: &'a SweepArgs,
    pub command: &'a str,
    pub environment: &'a str,
}

/// The README of one variant's folder (the sweep's own folder without variants).
pub fn variant(c: &Context<'_>, title: &str, dir_shown: &str, points_csv: &str) -> String {
    let a = c.args;
    format!(
        "# {title} {} scan\n\nCommand:\n\n```sh\n{}\n```\n\n{}\nEach point: an open-loop load measured for {} s after a warm-up of {} \
         (every device has sent before the measured window; first appearances are in the warm-up and the .hlog), latency sampled on one datagram in {}; \
         server CPU from /proc/PID/task/TID/schedstat and wake-ups from the shard threads' voluntary context switches over the measured window. {} run(s) per point, each with a fresh server.\n\n\
         Files: `points.csv` (one row per point, each value the median over its runs), `runs.csv` (every run), `summary.md`, `latency.svg`, `efficiency.svg`, \
         `raw/` (per run: load JSON, `.hgrm` percentile distribution, `.hlog` interval log, server stats JSON and log). \
         Redraw the plots with `ringbeat-bench plot {dir_shown}`.\n\n## Summary\n\n{}\n![latency](latency.svg)\n\n![efficiency](efficiency.svg)\n",
        a.kind.name(),
        c.command,
        c.environment,
        a.duration - a.warmup.unwrap_or(super::plan::DEFAULT_WARMUP_S),
        match a.warmup {
            Some(w) => format!("{w} s"),
            None => format!(
                "one device interval + 1 s, at least {} s",
                super::plan::DEFAULT_WARMUP_S
            ),
        },
        a.ack_every_datagrams,
        a.runs,
        record::markdown_table(points_csv, &[])
    )
}

/// The columns that tell variants apart.
const COMPARED: &[&str] = &[
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

/// The README of a comparison's top folder.
pub fn comparison(
    c: &Context<'_>,
    variants: &[Variant],
    dir_shown: &str,
    variants_csv: &str,
    plots: &[String],
) -> String {
    let a = c.args;
    format!(
        "# {}: {} variants compared\n\nCommand:\n\n```sh\n{}\n```\n\n{}\n\
         Every point ran every variant, interleaved run by run, each run starting one variant further on ({} run(s) each, a fresh server every time); each value below is the median over runs. \
         Each variant's own folder holds its points, runs, raw files and plots; `variants.csv` holds this table. \
         Redraw the plots with `ringbeat-bench plot {dir_shown}`.\n\n## Summary\n\n{}\n{}",
        a.name,
        variants.len(),
        c.command,
        c.environment,
        a.runs,
        record::markdown_table(variants_csv, COMPARED),
        plots
            .iter()
            .map(|p| format!("![{p}]({p})\n\n"))
            .collect::<String>()
    )
}
