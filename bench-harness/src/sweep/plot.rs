//! The plots of a sweep, drawn from its CSV files alone (so `ringbeat-bench plot DIR`
//! redraws them): latency.svg and efficiency.svg per folder, compare-*.svg across
//! variants.

use super::record::{self, Row};
use anyhow::{bail, Context};
use std::path::Path;

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
    let sets: Vec<Vec<Row>> = labels
        .iter()
        .map(|l| record::read(&dir.join(l).join("points.csv")))
        .collect::<anyhow::Result<_>>()?;
    if sets.is_empty() || sets.iter().any(|p| p.is_empty()) {
        bail!("{}: a variant has no points", dir.display());
    }
    let finite_max =
        |v: &mut dyn Iterator<Item = f64>| v.filter(|x| x.is_finite()).fold(f64::NAN, f64::max);
    let finite_min_pos = |v: &mut dyn Iterator<Item = f64>| {
        v.filter(|x| x.is_finite() && *x > 0.0)
            .fold(f64::NAN, f64::min)
    };
    let mut written = Vec::new();
    if sets[0].len() > 1 {
        let (x_desc, x_col) = x_axis(&dir.join(&labels[0]));
        let xs: Vec<f64> = sets.iter().flat_map(|p| col(p, x_col)).collect();
        let x_range = xs.iter().cloned().fold(f64::INFINITY, f64::min) * 0.8
            ..xs.iter().cloned().fold(0.0, f64::max) * 1.25;
        let charts: [(&str, Column, &str, bool); 2] = [
            (
                "compare-latency.svg",
                |r| r.p99_us,
                "p99 latency from intended send time",
                true,
            ),
            (
                "compare-efficiency.svg",
                |r| r.server_hb_per_core_second,
                "heartbeats per server core-second",
                false,
            ),
        ];
        for (file, y_col, y_desc, log_y) in charts {
            let ys = || sets.iter().flat_map(|p| col(p, y_col));
            let hi = finite_max(&mut ys()).max(1.0);
            let lo = finite_min_pos(&mut ys()).min(hi);
            let lines: Vec<Line> = sets
                .iter()
                .zip(&labels)
                .enumerate()
                .map(|(i, (p, l))| {
                    let pts = col(p, x_col)
                        .into_iter()
                        .zip(col(p, y_col))
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
                    x_range.clone().log_scale().with_key_points(x_ticks(&xs)),
                    (lo * 0.7..hi * 1.5)
                        .log_scale()
                        .with_key_points(nice_ticks(lo * 0.7, hi * 1.5)),
                )?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_label_formatter(&|v| human(*v))
                    .y_label_formatter(&|v| micros(*v))
                    .draw()?;
                draw_lines(&mut chart, lines)?;
            } else {
                let mut chart = builder.build_cartesian_2d(
                    x_range.clone().log_scale().with_key_points(x_ticks(&xs)),
                    0.0..hi * 1.15,
                )?;
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
    let at = |y: Column| -> Vec<(f64, f64)> {
        sets.iter()
            .enumerate()
            .map(|(i, p)| (i as f64, y(&p[0])))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect()
    };
    let cpu_ns: Vec<(f64, f64)> = at(|r| r.server_hb_per_core_second)
        .into_iter()
        .map(|(x, y)| (x, 1e9 / y))
        .collect();
    let charts: [(&str, &str, Vec<Line>); 3] = [
        (
            "compare-latency.svg",
            "latency from intended send time (µs)",
            vec![
                ("p50".into(), at(|r| r.p50_us), PALETTE[0]),
                ("p99".into(), at(|r| r.p99_us), PALETTE[1]),
                ("p99.9".into(), at(|r| r.p999_us), PALETTE[3]),
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
                    at(|r| r.kernel_wakeups_per_s),
                    PALETTE[0],
                ),
                (
                    "system calls/s".into(),
                    at(|r| r.syscalls_per_s),
                    PALETTE[1],
                ),
                (
                    "kernel drops in the measured window".into(),
                    at(|r| r.kernel_drops),
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
            .build_cartesian_2d(
                -0.5..n as f64 - 0.5,
                (lo * 0.7..hi * 1.5)
                    .log_scale()
                    .with_key_points(nice_ticks(lo * 0.7, hi * 1.5)),
            )?;
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

/// The x axis of a sweep folder's plots, (description, column), from the kind its
/// sweep.json records (a rate scan when unknown).
fn x_axis(dir: &Path) -> (&'static str, Column) {
    let kind = std::fs::read(dir.join("sweep.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["kind"].as_str().map(String::from));
    if kind.as_deref() == Some("devices") {
        ("devices", |r| r.devices)
    } else {
        ("offered heartbeats/s", |r| r.offered_hb_per_s)
    }
}

/// A column of the rows.
type Column = fn(&Row) -> f64;

fn col(rows: &[Row], c: Column) -> Vec<f64> {
    rows.iter().map(c).collect()
}

/// Draws latency.svg (p50/p99/p999/max vs x) and efficiency.svg (server heartbeats per
/// core-second vs x) from `dir/points.csv`.
pub fn plot_dir(dir: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let p = record::read(&dir.join("points.csv"))?;
    if p.is_empty() {
        bail!("{}/points.csv has no points", dir.display());
    }
    let (x_desc, x_col) = x_axis(dir);
    let xs = col(&p, x_col);
    let x_range = xs.iter().cloned().fold(f64::INFINITY, f64::min) * 0.8
        ..xs.iter().cloned().fold(0.0, f64::max) * 1.25;
    let series: [(&str, Column, RGBColor); 4] = [
        ("p50", |r| r.p50_us, BLUE),
        ("p99", |r| r.p99_us, RED),
        ("p99.9", |r| r.p999_us, MAGENTA),
        ("max", |r| r.max_us, BLACK),
    ];
    let lat_max = series
        .iter()
        .flat_map(|s| col(&p, s.1))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let lat_min = col(&p, |r| r.p50_us)
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
                x_range.clone().log_scale().with_key_points(x_ticks(&xs)),
                (lat_min * 0.7..lat_max * 1.5)
                    .log_scale()
                    .with_key_points(nice_ticks(lat_min * 0.7, lat_max * 1.5)),
            )?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_desc(x_desc)
            .y_desc("latency")
            .x_label_formatter(&|v| human(*v))
            .y_label_formatter(&|v| micros(*v))
            .draw()?;
        let lines = series
            .iter()
            .map(|&(name, y, color)| {
                let pts = xs
                    .iter()
                    .cloned()
                    .zip(col(&p, y))
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
        let eff = col(&p, |r| r.server_hb_per_core_second);
        let ach = col(&p, |r| r.achieved_hb_per_s);
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
            .build_cartesian_2d(
                x_range.log_scale().with_key_points(x_ticks(&xs)),
                0.0..y_max,
            )?;
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

/// `v` scaled by the first of `units` (divisor, suffix) it reaches, with one decimal
/// and no trailing ".0": 2500000 → "2.5M", 1000000 → "1M".
fn scaled(v: f64, units: &[(f64, &str)]) -> String {
    let (div, unit) = units
        .iter()
        .copied()
        .find(|&(d, _)| v >= d)
        .unwrap_or((1.0, units.last().map_or("", |u| u.1)));
    let t = format!("{:.1}", v / div);
    format!("{}{unit}", t.strip_suffix(".0").unwrap_or(&t))
}

/// 2500000 → "2.5M", 1000000 → "1M", 250000 → "250K".
fn human(v: f64) -> String {
    scaled(v, &[(1e6, "M"), (1e3, "K"), (1.0, "")])
}

/// A latency in µs with its unit: "50 µs", "1.5 ms", "2 s".
fn micros(v: f64) -> String {
    scaled(v, &[(1e6, " s"), (1e3, " ms"), (1.0, " µs")])
}

/// Ticks at the measured x values (a scan has a handful), so each point is labelled.
fn x_ticks(xs: &[f64]) -> Vec<f64> {
    let mut t: Vec<f64> = xs
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    t.sort_by(f64::total_cmp);
    t.dedup();
    if t.len() > 12 {
        let step = t.len().div_ceil(12);
        t = t.into_iter().step_by(step).collect();
    }
    t
}

/// Round ticks (1, 2, 5 × 10^k) between `lo` and `hi`, for log axes that span less
/// than a decade or many.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    if !(lo > 0.0 && hi > lo) {
        return t;
    }
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo && v <= hi {
                t.push(v);
            }
        }
        decade *= 10.0;
    }
    if t.len() > 12 {
        t.retain(|v| (v / 10f64.powf(v.log10().floor()) - 1.0).abs() < 1e-9);
    }
    t
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn axis_labels_carry_units_and_no_trailing_zero() {
        assert_eq!(human(2_500_000.0), "2.5M");
        assert_eq!(human(1_000_000.0), "1M");
        assert_eq!(human(250_000.0), "250K");
        assert_eq!(human(20.0), "20");
        assert_eq!(micros(50.0), "50 µs");
        assert_eq!(micros(1_500.0), "1.5 ms");
        assert_eq!(micros(2_000_000.0), "2 s");
        assert_eq!(micros(0.5), "0.5 µs");
    }
}
