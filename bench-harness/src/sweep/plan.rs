//! What a sweep will run: its points, each with the device count, rate and the
//! warm-up and duration that make its measured window steady (every device has sent
//! before the window starts).

use super::Kind;

/// One point of a scan.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The x value the plots use: offered heartbeats/s or devices.
    pub x: f64,
    pub devices: u64,
    pub rate_hb_per_s: f64,
    /// Seconds of warm-up: as asked, or one device interval + 1 s (at least
    /// `DEFAULT_WARMUP_S`) when not asked; either way first appearances fall in it.
    pub warmup_s: f64,
    /// Seconds of load in all: the measured window the user asked for plus the warm-up.
    pub duration_s: f64,
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Scan<'a> {
    pub kind: Kind,
    pub rates: &'a [f64],
    pub device_counts: &'a [u64],
    /// Rate scan: devices at every point.
    pub devices: u64,
    /// Device scan: each device's heartbeat period, seconds.
    pub interval_s: f64,
    pub duration_s: f64,
    /// `None`: one device interval + 1 s per point, at least `DEFAULT_WARMUP_S`.
    pub warmup_s: Option<f64>,
}

/// The shortest warm-up, and what the measured window is counted from when no
/// warm-up is given (`--duration` − this).
pub const DEFAULT_WARMUP_S: f64 = 3.0;

pub fn points(s: &Scan<'_>) -> anyhow::Result<Vec<Point>> {
    let asked = s.warmup_s.unwrap_or(DEFAULT_WARMUP_S);
    if s.duration_s <= asked {
        anyhow::bail!(
            "--duration {} must be longer than the warm-up ({} s): it includes it",
            s.duration_s,
            asked
        );
    }
    let raw: Vec<(f64, u64, f64)> = match s.kind {
        Kind::Rate if !s.rates.is_empty() => s.rates.iter().map(|&r| (r, s.devices, r)).collect(),
        Kind::Devices if !s.device_counts.is_empty() => s
            .device_counts
            .iter()
            .map(|&n| (n as f64, n, n as f64 / s.interval_s))
            .collect(),
        Kind::Rate => anyhow::bail!("a rate scan needs --rates"),
        Kind::Devices => anyhow::bail!("a device scan needs --device-counts"),
    };
    let measured_s = s.duration_s - asked;
    raw.into_iter()
        .map(|(x, devices, rate)| {
            // Every device has sent once one interval after the start; a second more
            // for the server's first growths and the generator's start.
            let needed = devices as f64 / rate + 1.0;
            let warmup_s = match s.warmup_s {
                None => needed.max(DEFAULT_WARMUP_S),
                Some(w) if w + 1e-9 >= needed => w,
                Some(w) => anyhow::bail!(
                    "--warmup {w} is too short for {devices} devices at {rate} hb/s: they \
                     have not all sent once until {needed} s, so first appearances would \
                     fall in the measured window; give --warmup {needed} or more, or leave \
                     --warmup out (one device interval + 1 s per point)"
                ),
            };
            Ok(Point {
                x,
                devices,
                rate_hb_per_s: rate,
                warmup_s,
                duration_s: warmup_s + measured_s,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(kind: Kind) -> Scan<'static> {
        Scan {
            kind,
            rates: &[250_000.0, 4_000_000.0],
            device_counts: &[100_000, 1_000_000],
            devices: 2_000_000,
            interval_s: 10.0,
            duration_s: 8.0,
            warmup_s: None,
        }
    }

    #[test]
    fn a_given_warmup_is_honoured_or_refused_never_changed() {
        let mut s = scan(Kind::Rate);
        s.rates = &[4_000_000.0];
        s.warmup_s = Some(2.0);
        let p = points(&s).unwrap();
        // 2M devices at 4M/s: every device has sent by 1.5 s; 2 s is honoured.
        assert_eq!((p[0].warmup_s, p[0].duration_s), (2.0, 8.0));
        // At 250K/s they need 9 s: refused, naming what would do.
        s.rates = &[250_000.0, 4_000_000.0];
        let e = points(&s).unwrap_err().to_string();
        assert!(
            e.contains("--warmup 2 is too short") && e.contains("--warmup 9 or more"),
            "{e}"
        );
        (s.warmup_s, s.duration_s) = (Some(9.0), 14.0);
        let p = points(&s).unwrap();
        assert_eq!((p[0].warmup_s, p[1].warmup_s), (9.0, 9.0));
        assert_eq!(p[1].duration_s, 14.0);
    }

    #[test]
    fn default_warmups_cover_one_device_interval_and_the_window_stays_as_asked() {
        let p = points(&scan(Kind::Rate)).unwrap();
        // 2M devices at 250K/s: an 8 s interval, so 9 s of warm-up, 5 s measured.
        assert_eq!((p[0].warmup_s, p[0].duration_s), (9.0, 14.0));
        assert_eq!((p[1].warmup_s, p[1].duration_s), (3.0, 8.0));
        let d = points(&scan(Kind::Devices)).unwrap();
        assert_eq!(
            (d[1].x, d[1].devices, d[1].rate_hb_per_s),
            (1e6, 1_000_000, 100_000.0)
        );
        assert_eq!(d[1].warmup_s, 11.0);
    }

    #[test]
    fn a_scan_without_its_values_is_refused() {
        let mut s = scan(Kind::Rate);
        s.rates = &[];
        assert!(points(&s).unwrap_err().to_string().contains("--rates"));
        s.rates = &[4_000_000.0];
        s.duration_s = 3.0;
        assert!(points(&s)
            .unwrap_err()
            .to_string()
            .contains("longer than the warm-up"));
    }
}
