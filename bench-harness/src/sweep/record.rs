//! One measured point as a typed row. A load run's JSON becomes a [`Row`]
//! (`Row::from_load`), a point's runs become their median (`Row::median`), and
//! points.csv, runs.csv and variants.csv are written and read through serde from this
//! one struct, so the columns cannot drift between the writer, the tables and the plots.
//! Older result folders (without the event-density columns, or with a boolean
//! `generator_kept_schedule`) still read.

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;

/// One point (or one run of it). The leading `run`, `variant` and `flags` columns
/// appear only in runs.csv and variants.csv.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// The scan's x value: offered heartbeats/s (rate scan) or devices (device scan).
    #[serde(serialize_with = "dp0")]
    pub x: f64,
    #[serde(serialize_with = "dp0")]
    pub offered_hb_per_s: f64,
    #[serde(serialize_with = "dp0")]
    pub devices: f64,
    #[serde(serialize_with = "dp0")]
    pub batch: f64,
    /// Heartbeats the server applied per second of the measured window.
    #[serde(serialize_with = "dp0")]
    pub achieved_hb_per_s: f64,
    /// Latency from the intended send time.
    #[serde(serialize_with = "dp1")]
    pub p50_us: f64,
    #[serde(serialize_with = "dp1")]
    pub p90_us: f64,
    #[serde(serialize_with = "dp1")]
    pub p99_us: f64,
    #[serde(serialize_with = "dp1")]
    pub p999_us: f64,
    #[serde(serialize_with = "dp1")]
    pub max_us: f64,
    /// Latency from the real send time.
    #[serde(serialize_with = "dp1")]
    pub service_p99_us: f64,
    #[serde(serialize_with = "dp0")]
    pub server_hb_per_core_second: f64,
    #[serde(serialize_with = "dp3")]
    pub server_cpu_util: f64,
    #[serde(serialize_with = "dp0")]
    pub kernel_drops: f64,
    #[serde(serialize_with = "dp0")]
    pub acks_missing: f64,
    #[serde(serialize_with = "dp0")]
    pub malformed: f64,
    #[serde(serialize_with = "dp0")]
    pub engine_wakeups_per_s: f64,
    #[serde(serialize_with = "dp0")]
    pub kernel_wakeups_per_s: f64,
    #[serde(serialize_with = "dp1")]
    pub hb_per_kernel_wakeup: f64,
    #[serde(serialize_with = "dp0")]
    pub syscalls_per_s: f64,
    #[serde(serialize_with = "dp2")]
    pub hb_per_syscall: f64,
    /// Share of the runs in which the generator kept its schedule (1 for one run that did).
    #[serde(
        serialize_with = "dp3",
        deserialize_with = "share_or_bool",
        alias = "generator_kept_schedule"
    )]
    pub generator_kept_schedule_share: f64,
}

fn fixed<S: Serializer>(v: f64, places: usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:.places$}"))
}
fn dp0<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    fixed(*v, 0, s)
}
fn dp1<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    fixed(*v, 1, s)
}
fn dp2<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    fixed(*v, 2, s)
}
fn dp3<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    fixed(*v, 3, s)
}

/// A share, or the boolean older folders wrote for a single run.
fn share_or_bool<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "true" => Ok(1.0),
        "false" => Ok(0.0),
        t => t.parse().map_err(serde::de::Error::custom),
    }
}

impl Row {
    /// One run's row from the load's JSON document (`run_load`).
    pub fn from_load(x: f64, devices: u64, batch: usize, d: &serde_json::Value) -> Row {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let s = &d["server"];
        let l = &d["latency_intended"];
        let measured_s = f(&d["config"]["duration_s"]) - f(&d["config"]["warmup_s"]);
        Row {
            x,
            offered_hb_per_s: f(&d["config"]["rate_hb_per_s"]),
            devices: devices as f64,
            batch: batch as f64,
            achieved_hb_per_s: f(&s["heartbeats"]) / measured_s,
            p50_us: f(&l["p50_us"]),
            p90_us: f(&l["p90_us"]),
            p99_us: f(&l["p99_us"]),
            p999_us: f(&l["p999_us"]),
            max_us: f(&l["max_us"]),
            service_p99_us: f(&d["latency_service"]["p99_us"]),
            server_hb_per_core_second: f(&s["heartbeats_per_core_second"]),
            server_cpu_util: f(&s["cpu_utilisation"]),
            kernel_drops: f(&s["kernel_drops"]),
            acks_missing: f(&d["acks"]["missing"]),
            malformed: f(&s["malformed_total"]),
            engine_wakeups_per_s: f(&s["wakeups_per_s"]),
            kernel_wakeups_per_s: f(&s["kernel_wakeups_per_s"]),
            hb_per_kernel_wakeup: f(&s["heartbeats_per_kernel_wakeup"]),
            syscalls_per_s: f(&s["syscalls_per_s"]),
            hb_per_syscall: f(&s["heartbeats_per_syscall"]),
            generator_kept_schedule_share: if d["generator"]["kept_schedule"]
                .as_bool()
                .unwrap_or(false)
            {
                1.0
            } else {
                0.0
            },
            ..Row::default()
        }
    }

    fn numbers(&self) -> [f64; 22] {
        self.clone().numbers_mut().map(|v| *v)
    }

    /// Every numeric column, in order, for taking medians.
    fn numbers_mut(&mut self) -> [&mut f64; 22] {
        [
            &mut self.x,
            &mut self.offered_hb_per_s,
            &mut self.devices,
            &mut self.batch,
            &mut self.achieved_hb_per_s,
            &mut self.p50_us,
            &mut self.p90_us,
            &mut self.p99_us,
            &mut self.p999_us,
            &mut self.max_us,
            &mut self.service_p99_us,
            &mut self.server_hb_per_core_second,
            &mut self.server_cpu_util,
            &mut self.kernel_drops,
            &mut self.acks_missing,
            &mut self.malformed,
            &mut self.engine_wakeups_per_s,
            &mut self.kernel_wakeups_per_s,
            &mut self.hb_per_kernel_wakeup,
            &mut self.syscalls_per_s,
            &mut self.hb_per_syscall,
            &mut self.generator_kept_schedule_share,
        ]
    }

    /// Per column, the median over the `runs` that measured it; the schedule column is
    /// the share of runs that kept it (a mean of 0/1).
    pub fn median(runs: &[Row]) -> Row {
        assert!(!runs.is_empty(), "a point has at least one run");
        let mut out = Row::default();
        let columns: Vec<[f64; 22]> = runs.iter().map(Row::numbers).collect();
        let last = 21;
        for (c, slot) in out.numbers_mut().into_iter().enumerate() {
            // Over the runs that measured it (a ratio over nothing is NaN): n/a when
            // none did.
            let mut v: Vec<f64> = columns
                .iter()
                .map(|r| r[c])
                .filter(|x| !x.is_nan())
                .collect();
            *slot = if v.is_empty() {
                f64::NAN
            } else if c == last {
                v.iter().sum::<f64>() / v.len() as f64
            } else {
                v.sort_by(f64::total_cmp);
                let m = v.len() / 2;
                if v.len() % 2 == 1 {
                    v[m]
                } else {
                    (v[m - 1] + v[m]) / 2.0
                }
            };
        }
        out
    }
}

/// The rows as CSV text (header included).
pub fn to_csv(rows: &[Row]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// Writes `rows` to `path` as CSV.
pub fn write(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::write(path, to_csv(rows)?).with_context(|| format!("writing {}", path.display()))
}

/// Reads a CSV written by `write` (or by an older harness).
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .map(|row| row.with_context(|| format!("parsing {}", path.display())))
        .collect()
}

/// A Markdown table of the CSV text's columns named in `keep` (all when empty).
pub fn markdown_table(csv_text: &str, keep: &[&str]) -> String {
    let mut lines = csv_text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let idx: Vec<usize> = if keep.is_empty() {
        (0..header.len()).collect()
    } else {
        keep.iter()
            .filter_map(|k| header.iter().position(|h| h == k))
            .collect()
    };
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
                // A value that was not measured (NaN in the CSV, which tools read
                // back as missing) reads as such.
                .map(|&i| match f.get(i).copied().unwrap_or("") {
                    "NaN" => "n/a",
                    v => v,
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p99: f64, kept: f64) -> Row {
        Row {
            x: 1.0,
            p99_us: p99,
            generator_kept_schedule_share: kept,
            ..Row::default()
        }
    }

    #[test]
    fn medians_per_column_and_schedule_share() {
        let m = Row::median(&[row(10.0, 1.0), row(30.0, 0.0), row(20.0, 1.0)]);
        assert_eq!((m.x, m.p99_us), (1.0, 20.0));
        assert!((m.generator_kept_schedule_share - 2.0 / 3.0).abs() < 1e-12);
        let even = Row::median(&[row(1.0, 1.0), row(4.0, 1.0)]);
        assert_eq!(even.p99_us, 2.5);
        // A run that did not measure a value (a server that never slept has no
        // heartbeats per wake-up) leaves it out; no run measuring it gives n/a.
        let mut slept = [row(1.0, 1.0), row(2.0, 1.0), row(3.0, 1.0)];
        slept[0].hb_per_kernel_wakeup = f64::NAN;
        slept[1].hb_per_kernel_wakeup = 10.0;
        slept[2].hb_per_kernel_wakeup = 30.0;
        assert_eq!(Row::median(&slept).hb_per_kernel_wakeup, 20.0);
        assert!(Row::median(&slept).syscalls_per_s == 0.0);
        slept.iter_mut().for_each(|r| r.syscalls_per_s = f64::NAN);
        assert!(Row::median(&slept).syscalls_per_s.is_nan());
    }

    #[test]
    fn rows_round_trip_through_csv_with_fixed_precision() {
        let mut r = row(123.456, 1.0);
        r.achieved_hb_per_s = 250_097.4;
        r.server_cpu_util = 0.35987;
        r.syscalls_per_s = f64::NAN;
        let text = to_csv(std::slice::from_ref(&r)).unwrap();
        let mut lines = text.lines();
        assert!(
            lines.next().unwrap().starts_with("x,offered_hb_per_s,"),
            "no run/variant columns"
        );
        let line = lines.next().unwrap();
        assert!(
            line.contains(",250097,") && line.contains(",123.5,") && line.contains(",0.360,"),
            "{line}"
        );
        let dir = std::env::temp_dir().join(format!("ringbeat-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("points.csv");
        std::fs::write(&p, &text).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back[0].p99_us, 123.5);
        assert!(back[0].syscalls_per_s.is_nan());
        // runs.csv and variants.csv carry their leading columns.
        let tagged = Row {
            run: Some(2),
            variant: Some("epoll".into()),
            flags: Some("--engine epoll".into()),
            ..r
        };
        let text = to_csv(&[tagged]).unwrap();
        assert!(text.starts_with("run,variant,flags,x,"), "{text}");
    }

    #[test]
    fn older_points_files_still_read() {
        let dir = std::env::temp_dir().join(format!("ringbeat-rows-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("points.csv");
        std::fs::write(
            &p,
            "x,offered_hb_per_s,devices,batch,achieved_hb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,service_p99_us,server_hb_per_core_second,server_cpu_util,kernel_drops,acks_missing,generator_kept_schedule\n\
             1000000,1000000,100000,1,999981,25.6,46.8,428.3,3371.0,4702.2,419.3,1397095,0.716,0,39,true\n",
        )
        .unwrap();
        let rows = read(&p).unwrap();
        assert_eq!(rows[0].p99_us, 428.3);
        assert_eq!(rows[0].generator_kept_schedule_share, 1.0);
        assert_eq!(rows[0].syscalls_per_s, 0.0, "a column the old file lacks");
    }
}
