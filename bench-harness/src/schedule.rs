//! The open-loop schedule: which datagram goes out when, carrying which devices.
//!
//! Devices are split across sender threads (device index % threads). Within a thread,
//! devices are put in a fixed random order and grouped into gateways of `batch`
//! consecutive devices; datagram `g` carries gateway `g % gateways`. Datagrams are
//! spaced evenly, so each device sends once per `interval` at a fixed random phase (its
//! position in the order). Intended send times depend only on the schedule, never on
//! what the server does: that is what makes the generator open-loop.

/// What one sender thread sends.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Device ids in send order (fixed random permutation).
    pub order: Vec<u64>,
    pub batch: usize,
    /// Nanoseconds between consecutive datagrams of this thread.
    pub spacing_ns: f64,
    /// This thread's first datagram is offset so threads interleave evenly.
    pub offset_ns: f64,
    /// Seed of the jitter offsets.
    pub seed: u64,
    /// On/off load: each period's datagrams squeezed into its first `duty` part.
    pub burst: Option<Burst>,
}

/// Bursty load with the same average rate: the datagrams that would go out evenly
/// during each `period_ns` all go out, still evenly, in the period's first
/// `duty × period_ns` (a peak of 1/duty times the average), then nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Burst {
    pub period_ns: f64,
    pub duty: f64,
}

impl Burst {
    /// Parses `PERIOD_MS:DUTY`, e.g. `100:0.1`.
    pub fn parse(s: &str) -> Result<Burst, String> {
        let (p, d) = s
            .split_once(':')
            .ok_or_else(|| format!("--burst wants PERIOD_MS:DUTY (e.g. 100:0.1), got {s:?}"))?;
        let period_ms: f64 = p.parse().map_err(|_| format!("bad burst period {p:?}"))?;
        let duty: f64 = d.parse().map_err(|_| format!("bad burst duty {d:?}"))?;
        if !(period_ms > 0.0 && period_ms.is_finite()) {
            return Err("the burst period must be positive".into());
        }
        if !(duty > 0.0 && duty <= 1.0) {
            return Err("the burst duty must be in (0, 1]".into());
        }
        Ok(Burst {
            period_ns: period_ms * 1e6,
            duty,
        })
    }

    /// Even-paced time → bursty time (monotone).
    fn squeeze(&self, t: f64) -> f64 {
        let k = (t / self.period_ns).floor();
        k * self.period_ns + (t - k * self.period_ns) * self.duty
    }

    /// The largest even-paced time whose bursty time is ≤ `now` (the inverse of
    /// `squeeze`, up to the idle part of a period, which maps back to its end).
    fn unsqueeze(&self, now: f64) -> f64 {
        let k = (now / self.period_ns).floor();
        let r = now - k * self.period_ns;
        if r < self.duty * self.period_ns {
            k * self.period_ns + r / self.duty
        } else {
            // Just before the next period: its datagrams are not due yet.
            (k + 1.0) * self.period_ns - 0.5
        }
    }
}

/// splitmix64: a small, fast, well-mixed generator for phases and sampling.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Puts `items` in a random order (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

impl Schedule {
    /// The schedule of thread `thread` of `threads` for `devices` devices (ids
    /// `first_id ..`) at `rate_hb_per_s` heartbeats per second in total.
    pub fn new(
        devices: u64,
        first_id: u64,
        threads: usize,
        thread: usize,
        batch: usize,
        rate_hb_per_s: f64,
        seed: u64,
    ) -> Schedule {
        assert!(threads > 0 && thread < threads && batch > 0 && rate_hb_per_s > 0.0);
        let mut order: Vec<u64> = (0..devices)
            .filter(|i| i % threads as u64 == thread as u64)
            .map(|i| first_id + i)
            .collect();
        Rng(seed ^ (thread as u64).wrapping_mul(0xA24B_AED4_963E_E407)).shuffle(&mut order);
        let dgram_rate = rate_hb_per_s / batch as f64 / threads as f64;
        let spacing_ns = 1e9 / dgram_rate;
        Schedule {
            order,
            batch,
            spacing_ns,
            offset_ns: spacing_ns * thread as f64 / threads as f64,
            seed,
            burst: None,
        }
    }

    /// The same schedule sent in bursts.
    pub fn with_burst(mut self, burst: Option<Burst>) -> Schedule {
        self.burst = burst;
        self
    }

    pub fn gateways(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Intended send time of datagram `g` (ns after the run's start).
    #[inline]
    pub fn intended_ns(&self, g: u64) -> u64 {
        let t = self.offset_ns + g as f64 * self.spacing_ns;
        match &self.burst {
            None => t as u64,
            Some(b) => b.squeeze(t) as u64,
        }
    }

    /// Datagrams whose intended time is ≤ `now_ns`.
    #[inline]
    pub fn due(&self, now_ns: u64) -> u64 {
        let now = match &self.burst {
            None => now_ns as f64,
            Some(b) => b.unsqueeze(now_ns as f64),
        };
        if now < self.offset_ns {
            return 0;
        }
        ((now - self.offset_ns) / self.spacing_ns) as u64 + 1
    }

    /// Positions in `order` of the devices datagram `g` carries.
    #[inline]
    pub fn devices_of(&self, g: u64) -> std::ops::Range<usize> {
        let gw = (g % self.gateways() as u64) as usize;
        let start = gw * self.batch;
        start..(start + self.batch).min(self.order.len())
    }

    /// Intended time of datagram `g` moved by a fixed pseudo-random offset, uniform in
    /// ±`jitter_ns` (never before the run's start).
    pub fn jittered_ns(&self, g: u64, jitter_ns: u64) -> u64 {
        if jitter_ns == 0 {
            return self.intended_ns(g);
        }
        let r = Rng(g ^ self.seed).next_u64();
        let offset = (r % (2 * jitter_ns + 1)) as i64 - jitter_ns as i64;
        (self.intended_ns(g) as i64 + offset).max(0) as u64
    }

    /// Each device's heartbeat period (ns).
    pub fn device_interval_ns(&self) -> f64 {
        self.spacing_ns * self.gateways() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_keep_the_average_rate_and_squeeze_each_period() {
        // 100K hb/s in 10 ms periods at duty 0.2: 1,000 datagrams per period, all in
        // its first 2 ms, none in the other 8 ms, and `due` agrees with `intended_ns`.
        let burst = Burst::parse("10:0.2").unwrap();
        let s = Schedule::new(10_000, 1, 1, 0, 1, 100_000.0, 7).with_burst(Some(burst));
        let mut per_period = std::collections::BTreeMap::<u64, u64>::new();
        let mut prev = 0;
        for g in 0..20_000u64 {
            let t = s.intended_ns(g);
            assert!(t >= prev, "monotone");
            prev = t;
            assert!(
                t % 10_000_000 < 2_000_001,
                "datagram {g} at {t} is outside the burst"
            );
            *per_period.entry(t / 10_000_000).or_default() += 1;
            assert!(s.due(t) > g, "datagram {g} is due at its own time");
            assert!(t == 0 || s.due(t - 1) <= g + 1);
        }
        assert!(
            per_period.values().all(|&n| (999..=1001).contains(&n)),
            "{per_period:?}"
        );
        // Idle part of a period: nothing new becomes due.
        assert_eq!(s.due(2_500_000), s.due(9_999_999));
        assert_eq!(s.due(9_999_999), 1_000);
        assert!(Burst::parse("10").is_err() && Burst::parse("10:0").is_err());
        assert!(Burst::parse("0:0.5").is_err() && Burst::parse("10:1.5").is_err());
    }

    #[test]
    fn rate_and_interval_follow_from_devices_and_batch() {
        // 1M devices at 1M hb/s: each device once per second, whatever the batch.
        for batch in [1, 32] {
            let s = Schedule::new(1_000_000, 1, 1, 0, batch, 1e6, 7);
            assert!(
                (s.device_interval_ns() - 1e9).abs() < 1e9 * 1e-3,
                "{}",
                s.device_interval_ns()
            );
            assert_eq!(s.due(1_000_000_000) as usize * batch, 1_000_000 + batch);
        }
    }

    #[test]
    fn every_device_once_per_cycle_in_a_fixed_random_order() {
        let s = Schedule::new(1000, 1, 2, 1, 7, 1000.0, 3);
        assert_eq!(s.order.len(), 500);
        let mut seen: Vec<u64> = (0..s.gateways() as u64)
            .flat_map(|g| s.devices_of(g).map(|i| s.order[i]))
            .collect();
        assert!(
            s.order
                .iter()
                .take(20)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[1] < w[0]),
            "shuffled"
        );
        seen.sort();
        let want: Vec<u64> = (0..1000).filter(|i| i % 2 == 1).map(|i| i + 1).collect();
        assert_eq!(seen, want);
        // The next cycle repeats the same gateways in the same order (fixed phase).
        let g = s.gateways() as u64;
        assert_eq!(s.devices_of(3), s.devices_of(3 + g));
    }

    #[test]
    fn jitter_is_bounded_deterministic_and_spread() {
        let s = Schedule::new(1000, 1, 1, 0, 1, 1000.0, 5);
        let j = 100_000_000; // ±10% of the 1 s interval
        let offsets: Vec<i64> = (0..10_000u64)
            .map(|g| s.jittered_ns(g + 1000, j) as i64 - s.intended_ns(g + 1000) as i64)
            .collect();
        assert!(offsets.iter().all(|o| o.abs() <= j as i64));
        assert!(
            offsets.iter().any(|&o| o > j as i64 / 2)
                && offsets.iter().any(|&o| o < -(j as i64) / 2)
        );
        let mean = offsets.iter().sum::<i64>() as f64 / offsets.len() as f64;
        assert!(mean.abs() < j as f64 * 0.05, "mean offset {mean}");
        assert_eq!(s.jittered_ns(1234, j), s.jittered_ns(1234, j));
        assert_eq!(s.jittered_ns(7, 0), s.intended_ns(7));
    }

    #[test]
    fn threads_interleave_and_times_are_monotone() {
        let a = Schedule::new(100, 1, 2, 0, 1, 100.0, 1);
        let b = Schedule::new(100, 1, 2, 1, 1, 100.0, 1);
        assert_eq!(a.intended_ns(0), 0);
        assert_eq!(b.intended_ns(0), 10_000_000); // half of the 20 ms per-thread spacing
        assert_eq!(a.intended_ns(1), 20_000_000);
        assert_eq!(a.due(0), 1);
        assert_eq!(a.due(19_999_999), 1);
        assert_eq!(a.due(20_000_000), 2);
        assert_eq!(b.due(9_999_999), 0);
    }
}
