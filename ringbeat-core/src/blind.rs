//! Local health: the spans of time in which a shard knows it may have missed
//! heartbeats (its socket dropped datagrams, its loop stalled, its receive ring ran dry
//! while data waited). A late or offline transition that this blindness could explain
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

/// Spans kept. A flood reads as one long span (spans that touch are merged); 1,024
/// separate spans cover far more than any deadline can reach back at the default tick
/// (a span needs at least one loop iteration, and most are merged). When full, the
/// oldest span is forgotten (counted in `forgotten`): deadlines reaching that far back
/// are deferred less, never more.
pub const MAX_SPANS: usize = 1024;

#[derive(Debug)]
pub struct BlindLog {
    /// Disjoint, sorted `[from, to)` spans in shard ms.
    spans: VecDeque<(u64, u64)>,
    /// Total blind time recorded (ms).
    pub total_ms: u64,
    /// Spans forgotten because the log was full.
    pub forgotten: u64,
}

impl Default for BlindLog {
    fn default() -> Self {
        BlindLog {
            spans: VecDeque::with_capacity(MAX_SPANS),
            total_ms: 0,
            forgotten: 0,
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
            self.spans.pop_front();
            self.forgotten += 1;
        }
        self.spans.push_back((from, to));
        self.total_ms += to - from;
    }

    /// True when nothing was recorded after `since`: the common case, checked first.
    #[inline]
    pub fn clear_after(&self, since: u64) -> bool {
        self.spans.back().is_none_or(|&(_, to)| to <= since)
    }

    /// The effective deadline of a device last seen at `last_seen` whose deadline is
    /// `due` (module doc).
    pub fn defer(&self, last_seen: u64, due: u64) -> u64 {
        if self.clear_after(last_seen) {
            return due;
        }
        let threshold = due - last_seen;
        let mut x = due;
        loop {
            // The latest span that starts before `x`; spans are sorted and disjoint.
            let latest = self.spans.iter().rev().find(|&&(from, _)| from < x);
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
    fn touching_spans_merge_and_a_full_log_forgets_the_oldest() {
        let mut log = BlindLog::default();
        log.note(0, 10);
        log.note(10, 20);
        log.note(15, 30);
        assert_eq!((log.spans.len(), log.total_ms), (1, 30));
        for i in 0..MAX_SPANS as u64 {
            log.note(100 + i * 10, 105 + i * 10);
        }
        assert_eq!(log.spans.len(), MAX_SPANS);
        assert_eq!(log.forgotten, 1);
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
