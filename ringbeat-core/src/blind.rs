//! Local health: the spans of time in which a shard knows it may have missed
//! heartbeats (its socket dropped datagrams, a peer could not hand it frames). A shard
//! that only fell behind (its loop stalled, its receive ring ran dry while data waited)
//! lost nothing and is not blind: it holds liveness still until it has caught up
//! (`liveness`, "Holding still"). A late or offline transition that blindness could explain
//! is deferred by the blind time since the device was last seen, so the server's own
//! overload never reads as devices going silent. The idea is Lifeguard's local health
//! awareness (HashiCorp memberlist): a member that knows it is slow stretches its
//! timeouts instead of accusing others.
//!
//! The rule: a shard cannot tell whether a heartbeat arrived while it was blind, so it
//! assumes one did, at the last blind instant. A device last seen at `L` with threshold
//! `T` (deadline `D = L + T`) is late (or offline) only once it has been silent for `T`
//! of clear time: its effective deadline is the first `x ≥ D` such that no blind span
//! overlaps `[x − T, x)`, i.e. `x = D`, or the end of the latest blind span overlapping
//! `[L, x)` plus `T`, repeated until it holds. Deferring by the blind time alone is not
//! enough: one lost heartbeat extends a device's silence by a whole interval, however
//! short the span that lost it. Blindness that begins after the deadline has passed
//! does not defer it. A span is recorded once it is over and starts at or after the
//! shard's previous liveness step, so the result does not depend on when it is
//! evaluated: the walk, the catch-up before a heartbeat and the simulation's reference
//! model agree. A device that really went silent is reported once the blind period
//! ends, within its threshold and one tick.

use std::collections::VecDeque;

/// Spans kept. A flood that drops in every tick reads as one long span (spans that
/// touch are merged), but one that drops in some ticks and not others leaves a span per
/// burst: the io_uring engine at twice its capacity left ~230 a second, each a few ms
/// long. When the log is full, its two oldest spans become one (the gap between them
/// counts as blind, counted in `merged`): deadlines reaching that far back are deferred
/// more, never less, so the server's overload never reads as silence however long it
/// lasts. (Forgetting the oldest span instead, as before, undid the deferral of every
/// device silent for longer than the log reached back, ~4 s in that flood.)
pub const MAX_SPANS: usize = 1024;

#[derive(Debug)]
pub struct BlindLog {
    /// Disjoint, sorted `[from, to)` spans in shard ms.
    spans: VecDeque<(u64, u64)>,
    /// The clear gaps between spans that no later gap is as long as: `(end, length)`
    /// with `end` the next span's start, lengths falling from front to back. The first
    /// one ending after `t` is the longest gap ending after `t` (`longest_gap_after`).
    gaps: VecDeque<(u64, u64)>,
    /// Total blind time recorded (ms).
    pub total_ms: u64,
    /// Times the log was full and its two oldest spans became one.
    pub merged: u64,
}

impl Default for BlindLog {
    fn default() -> Self {
        BlindLog {
            spans: VecDeque::with_capacity(MAX_SPANS),
            gaps: VecDeque::new(),
            total_ms: 0,
            merged: 0,
        }
    }
}

impl BlindLog {
    /// Records that the shard was blind over `[from, to)`. Spans arrive in time order
    /// (a span starts at or after the previous one's start); overlapping or touching
    /// spans merge.
    pub fn note(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        if let Some(last) = self.spans.back_mut() {
            if from <= last.1 {
                let added = to.saturating_sub(last.1);
                last.1 = last.1.max(to);
                self.total_ms += added;
                return;
            }
        }
        if self.spans.len() == MAX_SPANS {
            let (oldest_from, _) = self.spans.pop_front().expect("full");
            let second = self.spans.front_mut().expect("full");
            // The gap between them is blind now.
            if self.gaps.front().is_some_and(|&(end, _)| end == second.0) {
                self.gaps.pop_front();
            }
            second.0 = oldest_from;
            self.merged += 1;
        }
        if let Some(&(_, last_to)) = self.spans.back() {
            let length = from - last_to;
            while self.gaps.back().is_some_and(|&(_, l)| l <= length) {
                self.gaps.pop_back();
            }
            self.gaps.push_back((from, length));
        }
        self.spans.push_back((from, to));
        self.total_ms += to - from;
    }

    /// True when nothing was recorded after `since`: the common case, checked first.
    #[inline]
    pub fn clear_after(&self, since: u64) -> bool {
        self.spans.back().is_none_or(|&(_, to)| to <= since)
    }

    /// The longest clear gap between two spans that ends after `t` (0: none). `gaps`
    /// has ends rising and lengths falling from front to back, and every gap it
    /// dropped ends before a later one at least as long: the answer is the first entry
    /// that ends after `t`. A heartbeat's `t` is recent, so a scan back from the newest
    /// gap finds it in a few steps; past `SCAN` steps a binary search does. (A binary
    /// search every time cost the io_uring shard 4% of its time past saturation, its
    /// drop spans being many and short: `VecDeque::partition_point` is not inlined.
    /// Before that, the scan gave up after 8 steps and fell to the slower span-by-span
    /// search below.)
    #[inline]
    fn longest_gap_after(&self, t: u64) -> u64 {
        const SCAN: usize = 8;
        let mut longest = 0;
        for &(end, length) in self.gaps.iter().rev().take(SCAN) {
            if end <= t {
                return longest;
            }
            longest = length;
        }
        if self.gaps.len() <= SCAN {
            return longest;
        }
        let first = self.gaps.partition_point(|&(end, _)| end <= t);
        self.gaps.get(first).map_or(0, |&(_, length)| length)
    }

    /// The effective deadline of a device last seen at `last_seen` whose deadline is
    /// `due` (module doc).
    pub fn defer(&self, last_seen: u64, due: u64) -> u64 {
        if self.clear_after(last_seen) {
            return due;
        }
        let threshold = due - last_seen;
        // Under overload most heartbeats find the shard blind since the device's last
        // one, with only short clear gaps in between (drops in some ticks, not others):
        // then the device's silence can only count from the newest span's end. No
        // clear gap as long as the threshold ends after the last heartbeat (a gap it
        // fell in is counted whole, so this errs towards the exact search below), and
        // the log reaches back past it.
        let newest = *self.spans.back().expect("not clear");
        let oldest = *self.spans.front().expect("not clear");
        if newest.0 >= due && oldest.0 <= last_seen && self.longest_gap_after(last_seen) < threshold
        {
            return newest.1 + threshold;
        }
        let mut x = due;
        loop {
            // The latest span that starts before `x`; spans are sorted and disjoint.
            // Usually the newest one (a deadline still ahead); else a binary search
            // finds it. (A scan back from the newest span cost one step per span after
            // `x`: under overload, with hundreds of recent drop spans and devices whose
            // heartbeat was lost, it took a third of the shard's time, which made more
            // drops.)
            let latest = match self.spans.back() {
                Some(newest) if newest.0 < x => Some(newest),
                _ => {
                    let before = self.spans.partition_point(|&(from, _)| from < x);
                    before.checked_sub(1).map(|i| &self.spans[i])
                }
            };
            match latest {
                Some(&(_, to)) if to > last_seen && to + threshold > x => x = to + threshold,
                _ => return x,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `defer` as the module doc states it, by a scan over every span.
    fn defer_by_scan(spans: &[(u64, u64)], last_seen: u64, due: u64) -> u64 {
        let threshold = due - last_seen;
        let mut x = due;
        loop {
            let latest = spans.iter().rev().find(|&&(from, _)| from < x);
            match latest {
                Some(&(_, to)) if to > last_seen && to + threshold > x => x = to + threshold,
                _ => return x,
            }
        }
    }

    #[test]
    fn defer_agrees_with_a_scan_over_every_span() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut log = BlindLog::default();
            let mut t = 0;
            for _ in 0..next(1_500) {
                // Mostly short gaps, now and then a long one (clear time a device's
                // threshold fits in).
                let gap = if next(16) == 0 { next(400) } else { next(20) };
                let from = t + gap;
                let to = from + 1 + next(15);
                log.note(from, to);
                t = to;
            }
            let spans: Vec<(u64, u64)> = log.spans.iter().copied().collect();
            for _ in 0..200 {
                let last_seen = next(t + 100);
                let due = last_seen + 1 + next(300);
                assert_eq!(
                    log.defer(last_seen, due),
                    defer_by_scan(&spans, last_seen, due),
                    "seen {last_seen}, due {due}"
                );
            }
        }
    }

    #[test]
    fn no_blindness_changes_nothing() {
        let log = BlindLog::default();
        assert_eq!(log.defer(1_000, 2_500), 2_500);
    }

    #[test]
    fn blindness_after_the_last_heartbeat_restarts_the_threshold_at_its_end() {
        // Seen at 1.0 s, threshold 1.5 s: blind 1.5–2.0 s → late at 2.0 + 1.5 s.
        let mut log = BlindLog::default();
        log.note(1_500, 2_000);
        assert_eq!(log.defer(1_000, 2_500), 3_500);
        // Blindness before the device was last seen explains nothing.
        assert_eq!(log.defer(2_000, 3_500), 3_500);
        // Partly before: the span still ends after the last heartbeat.
        assert_eq!(log.defer(1_800, 3_300), 3_500);
        // A short span that may have lost one heartbeat defers by a whole threshold
        // from its end, not by its 10 ms.
        let mut short = BlindLog::default();
        short.note(1_400, 1_410);
        assert_eq!(short.defer(1_200, 1_500), 1_710);
    }

    #[test]
    fn blindness_that_starts_after_the_deadline_does_not_defer_it() {
        let mut log = BlindLog::default();
        log.note(2_600, 4_000);
        assert_eq!(log.defer(1_000, 2_500), 2_500);
        // A deferral that reaches into a later span takes it in too (fixpoint).
        let mut two = BlindLog::default();
        two.note(2_000, 2_400);
        two.note(3_000, 3_100);
        assert_eq!(two.defer(1_000, 2_500), 4_600);
        let mut apart = BlindLog::default();
        apart.note(2_000, 2_400);
        apart.note(4_000, 4_100);
        assert_eq!(apart.defer(1_000, 2_500), 3_900);
    }

    #[test]
    fn touching_spans_merge_and_a_full_log_joins_its_oldest_two() {
        let mut log = BlindLog::default();
        log.note(0, 10);
        log.note(10, 20);
        log.note(15, 30);
        assert_eq!((log.spans.len(), log.total_ms), (1, 30));
        for i in 0..MAX_SPANS as u64 {
            log.note(100 + i * 10, 105 + i * 10);
        }
        assert_eq!(log.spans.len(), MAX_SPANS);
        assert_eq!(log.merged, 1);
        // The first span took in the second and the gap between them.
        assert_eq!(log.spans[0], (0, 105));
        assert_eq!(
            log.total_ms,
            30 + 5 * MAX_SPANS as u64,
            "recorded time only"
        );
    }

    #[test]
    fn a_long_bursty_flood_defers_as_far_back_as_it_goes() {
        // Seen at 1 s, late at 2.5 s; bursts of drops 5 ms long every 8 ms for 20 s:
        // far more spans than the log keeps. The device stays deferred until the
        // flood ends plus the threshold, however far back its last heartbeat lies.
        let mut log = BlindLog::default();
        for t in (1_200..21_200).step_by(8) {
            log.note(t, t + 5);
        }
        assert!(log.merged > 0);
        assert_eq!(log.defer(1_000, 2_500), 21_197 + 1_500);
        // A device seen in the flood's last second: also deferred past its end.
        assert_eq!(log.defer(20_500, 22_000), 21_197 + 1_500);
    }

    #[test]
    fn a_flood_defers_until_it_ends_plus_the_threshold() {
        // Seen at 1 s, late at 2.5 s; blind from 1.2 s to 6.2 s in 10 ms notes, with
        // gaps (ticks without drops) in between.
        let mut log = BlindLog::default();
        for t in (1_200..6_200).step_by(30) {
            log.note(t, t + 10);
        }
        assert_eq!(
            log.defer(1_000, 2_500),
            6_190 + 1_500,
            "the last span's end + T"
        );
    }
}
