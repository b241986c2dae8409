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

    /// A frame intended at `intended_ns` falls in the measured window (after the
    /// warm-up).
    pub fn measured(&self, intended_ns: u64) -> bool {
        intended_ns >= self.warmup_end_ns
    }

    /// Records the ack of the frame `sent_ns` names: None when it matches no frame in
    /// flight (or was counted already), else whether that frame is in the measured
    /// window.
    pub fn on_ack(&mut self, sent_ns: u64, now_ns: u64) -> Option<bool> {
        let (slot, intended) = unpack(sent_ns);
        let (want, lag) = self.slots[slot as usize];
        if want != intended || now_ns < intended {
            return None;
        }
        self.slots[slot as usize].0 = u64::MAX; // each ack counts once
        let from_intended = (now_ns - intended).max(1);
        let from_actual = now_ns.saturating_sub(intended + lag).max(1);
        let _ = self.interval.record(from_intended);
        let measured = self.measured(intended);
        if measured {
            let _ = self.intended.record(from_intended);
            let _ = self.service.record(from_actual);
        }
        Some(measured)
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
    // TotalCount is cumulative (samples at or below the value), as HdrHistogram's own
    // percentile output writes it, so distributions of several runs can be merged.
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / scale;
        if q < 1.0 {
            writeln!(
                out,
                "{:12.3} {:2.12} {:10} {:14.2}",
                value,
                q,
                total,
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{:12.3} {:2.12} {:10}", value, q, total)?;
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

/// Writes one histogram per interval as an HdrHistogram interval log (`.hlog`, V2 +
/// DEFLATE), values in ns shown in µs (max-value divisor 1000). `intervals` holds
/// (start offset from `start`, histogram); each covers `interval`.
pub fn write_hlog(
    intervals: &[(std::time::Duration, Histogram<u64>)],
    start: std::time::SystemTime,
    interval: std::time::Duration,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    let mut ser = hdrhistogram::serialization::V2DeflateSerializer::new();
    let mut w = IntervalLogWriterBuilder::new()
        .add_comment("ringbeat-bench load: latency from intended send time, ns")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut ser)?;
    for (at, h) in intervals {
        w.write_histogram(h, *at, interval, None)
            .map_err(|e| std::io::Error::other(format!("writing hlog: {e:?}")))?;
    }
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
        assert_eq!(r.on_ack(sent, 11_050_000), Some(true));
        assert_eq!(r.intended.max(), r.intended.highest_equivalent(10_050_000));
        assert!(
            (r.service.max() as i64 - 50_000).abs() < 100,
            "service time {}",
            r.service.max()
        );
        // The same ack twice, or an unknown slot, does not count.
        assert_eq!(r.on_ack(sent, 12_000_000), None);
        assert_eq!(r.on_ack(pack(9, 5), 12_000_000), None);
        assert_eq!(r.intended.len(), 1);
    }

    #[test]
    fn warmup_frames_are_kept_out_of_the_summary() {
        let mut r = Recorder::new(1_000_000_000);
        let early = r.take_slot(500_000_000, 0);
        let late = r.take_slot(1_500_000_000, 0);
        // Both count as acks; only the one after the warm-up is in the window.
        assert_eq!(r.on_ack(early, 500_010_000), Some(false));
        assert_eq!(r.on_ack(late, 1_500_010_000), Some(true));
        assert_eq!(r.intended.len(), 1);
        assert_eq!(r.interval.len(), 2);
    }

    #[test]
    fn hlog_reads_back_with_the_hdrhistogram_crate() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        use hdrhistogram::serialization::Deserializer;
        let mut intervals = Vec::new();
        for i in 0..3u64 {
            let mut h = histogram();
            for v in 1..=100 {
                h.record(v * 1000 * (i + 1)).unwrap();
            }
            intervals.push((std::time::Duration::from_secs(i), h));
        }
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut out = Vec::new();
        write_hlog(
            &intervals,
            start,
            std::time::Duration::from_secs(1),
            &mut out,
        )
        .unwrap();
        let mut read = Vec::new();
        for entry in IntervalLogIterator::new(&out) {
            if let LogEntry::Interval(iv) = entry.unwrap() {
                let bytes = base64_decode(iv.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                read.push((iv.start_timestamp(), h));
            }
        }
        assert_eq!(read.len(), 3);
        for ((at, want), (got_at, got)) in intervals.iter().zip(&read) {
            assert_eq!(at, got_at);
            assert_eq!(want.len(), got.len());
            assert_eq!(want.max(), got.max());
            assert_eq!(want.value_at_quantile(0.5), got.value_at_quantile(0.5));
        }
    }

    /// Minimal standard base64 decoding for the test (the log's histogram field).
    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= (val(c) as u32) << (18 - 6 * i);
            }
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
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
        // TotalCount is cumulative: it never falls and ends at the total.
        let counts: Vec<u64> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && !l.starts_with('#')).then(|| f[2].parse().ok())?
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(counts.last(), Some(&1000));
    }
}
