//! Latency accounting. Every sampled frame carries its *intended* send time in
//! `sent_ns` (48 bits, ns since the run's start) and a 16-bit slot number; the slot
//! remembers how late the frame actually left. When its ack returns, two latencies are
//! recorded: from the intended time (what a device experiences, coordinated omission
//! included, as wrk2 does) and from the actual send (plain service time).

use hdrhistogram::Histogram;

pub const SLOT_BITS: u32 = 16;
pub const SLOTS: usize = 1 << SLOT_BITS;
const TIME_MASK: u64 = (1 << 48) - 1;

/// Packs a slot and an intended time into `sent_ns`.
pub fn pack(slot: u16, intended_ns: u64) -> u64 {
    ((slot as u64) << 48) | (intended_ns & TIME_MASK)
}

pub fn unpack(sent_ns: u64) -> (u16, u64) {
    ((sent_ns >> 48) as u16, sent_ns & TIME_MASK)
}

/// Latency histograms in nanoseconds, 3 significant digits, up to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Records one ack's latencies; returns false when the ack does not match a frame in
/// flight (stale slot: counted by the caller as unmatched).
pub struct Recorder {
    /// Per slot: (intended ns, send lag ns) of the frame currently using it.
    slots: Vec<(u64, u64)>,
    next_slot: u16,
    pub intended: Histogram<u64>,
    pub service: Histogram<u64>,
    /// Latencies of this reporting interval (for progress and the interval log).
    pub interval: Histogram<u64>,
    /// Record into the summary only for frames intended at or after this time.
    pub warmup_end_ns: u64,
}

impl Recorder {
    pub fn new(warmup_end_ns: u64) -> Recorder {
        Recorder {
            slots: vec![(u64::MAX, 0); SLOTS],
            next_slot: 0,
            intended: histogram(),
            service: histogram(),
            interval: histogram(),
            warmup_end_ns,
        }
    }

    /// Takes a slot for a frame intended at `intended_ns` that leaves `lag_ns` late.
    pub fn take_slot(&mut self, intended_ns: u64, lag_ns: u64) -> u64 {
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.slots[slot as usize] = (intended_ns, lag_ns);
        pack(slot, intended_ns)
    }

    pub fn on_ack(&mut self, sent_ns: u64, now_ns: u64) -> bool {
        let (slot, intended) = unpack(sent_ns);
        let (want, lag) = self.slots[slot as usize];
        if want != intended || now_ns < intended {
            return false;
        }
        self.slots[slot as usize].0 = u64::MAX; // each ack counts once
        let from_intended = (now_ns - intended).max(1);
        let from_actual = now_ns.saturating_sub(intended + lag).max(1);
        let _ = self.interval.record(from_intended);
        if intended >= self.warmup_end_ns {
            let _ = self.intended.record(from_intended);
            let _ = self.service.record(from_actual);
        }
        true
    }
}

/// Writes a percentile distribution in HdrHistogram's `.hgrm` text format (values in
/// microseconds), loadable by HdrHistogram's plotFiles.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let scale = 1000.0;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / scale;
        if q < 1.0 {
            writeln!(
                out,
                "{:12.3} {:2.12} {:10} {:14.2}",
                value,
                q,
                v.count_since_last_iteration(),
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(
                out,
                "{:12.3} {:2.12} {:10}",
                value,
                q,
                v.count_since_last_iteration()
            )?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        assert_eq!(unpack(pack(513, 123_456_789)), (513, 123_456_789));
        assert_eq!(
            unpack(pack(u16::MAX, (1 << 48) - 1)),
            (u16::MAX, (1 << 48) - 1)
        );
    }

    #[test]
    fn coordinated_omission_is_measured_from_the_intended_time() {
        let mut r = Recorder::new(0);
        // Intended at 1 ms, the generator stalled and sent it at 11 ms; acked at 11.05 ms.
        let sent = r.take_slot(1_000_000, 10_000_000);
        assert!(r.on_ack(sent, 11_050_000));
        assert_eq!(r.intended.max(), r.intended.highest_equivalent(10_050_000));
        assert!(
            (r.service.max() as i64 - 50_000).abs() < 100,
            "service time {}",
            r.service.max()
        );
        // The same ack twice, or an unknown slot, does not count.
        assert!(!r.on_ack(sent, 12_000_000));
        assert!(!r.on_ack(pack(9, 5), 12_000_000));
        assert_eq!(r.intended.len(), 1);
    }

    #[test]
    fn warmup_frames_are_kept_out_of_the_summary() {
        let mut r = Recorder::new(1_000_000_000);
        let early = r.take_slot(500_000_000, 0);
        let late = r.take_slot(1_500_000_000, 0);
        assert!(r.on_ack(early, 500_010_000));
        assert!(r.on_ack(late, 1_500_010_000));
        assert_eq!(r.intended.len(), 1);
        assert_eq!(r.interval.len(), 2);
    }

    #[test]
    fn hgrm_is_readable_text_with_the_footer() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value     Percentile"));
        assert!(
            text.contains("#[Max     =     1000.447, Total count    =         1000]"),
            "{text}"
        );
        // The 50th percentile line reads back as ~500 µs.
        let p50: f64 = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[1].parse::<f64>().ok()? >= 0.5).then(|| f[0].parse().unwrap())
            })
            .next()
            .unwrap();
        assert!((p50 - 500.0).abs() < 1.0, "{p50}");
    }
}
