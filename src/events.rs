//! The event sink: one writer thread turning liveness transitions into JSON lines.
//!
//! Each shard has its own bounded queue to the writer (no queue shared between shards);
//! a shard never waits on it — when a queue is full the event is counted in
//! `events_dropped`. The writer flushes whenever it runs out of work. A file is
//! appended to (never truncated) and reopened on SIGHUP (log rotation); a sink that
//! fails (a reader gone: EPIPE) is reported once and its events counted as lost; a
//! consumer that stops reading cannot hold the stop (the writer gets 200 ms, then
//! what it did not write is counted).
//!
//! `time_ms` is the real-time clock (Unix ms) read by the shard when it made the event,
//! so a clock step after start (NTP on a box without an RTC) does not skew later
//! events; `shard` and `event_seq` (1, 2, 3, ... per shard, dropped events included)
//! let a consumer order, deduplicate and see gaps.

use crate::core::shard::Event;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An event on its way to the writer.
#[derive(Clone, Copy, Debug)]
pub struct Made {
    pub shard: u32,
    /// Real-time clock when the shard made it (Unix ms).
    pub unix_ms: u64,
    /// The device's last heartbeat on the real-time clock (Unix ms).
    pub last_seen_unix_ms: u64,
    pub event: Event,
    /// Not a transition: a device's current state, sent again for presence because
    /// its transition was dropped (`ShardCore::refresh_unshipped`). Not written to
    /// the events file.
    pub refresh: bool,
}

pub struct EventWriter {
    senders: Vec<SyncSender<Made>>,
    thread: JoinHandle<()>,
    pub stats: Arc<EventStats>,
}

/// What became of the events the shards handed over, for the stats document.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Taken from the shards' queues by the writer.
    pub taken: AtomicU64,
    /// Written to the sink (flushed).
    pub written: AtomicU64,
    /// Discarded because the sink failed (a closed pipe, a full disk): counted from
    /// the failure until the sink is reopened.
    pub lost: AtomicU64,
    /// Times the events file was reopened (SIGHUP).
    pub reopened: AtomicU64,
    /// Events the shards had handed over that were not written when the stop's
    /// deadline came (a stalled consumer), set at stop.
    pub unwritten_at_stop: AtomicU64,
    reopen: AtomicBool,
}

impl EventStats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "written": g(&self.written),
            "lost": g(&self.lost),
            "reopened": g(&self.reopened),
            "unwritten_at_stop": g(&self.unwritten_at_stop),
        })
    }
}

/// Where events go.
#[derive(Clone, Debug)]
enum Sink {
    /// No file (the events only go to MQTT).
    None,
    Stdout,
    /// Opened for appending (never truncated), reopened on SIGHUP.
    File(PathBuf),
}

impl Sink {
    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::None => Box::new(std::io::sink()),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)?,
            ),
        })
    }
    fn name(&self) -> String {
        match self {
            Sink::None => "nowhere".into(),
            Sink::Stdout => "standard output".into(),
            Sink::File(p) => p.display().to_string(),
        }
    }
}

/// How long the stop waits for the writer to write what is queued: a stalled
/// consumer must not hold the exit past its second.
const FINISH_WITHIN: Duration = Duration::from_millis(200);

/// One event as a JSON object (no trailing newline).
pub fn event_json(m: &Made) -> String {
    let e = &m.event;
    format!(
        "{{\"device_id\":{},\"from\":\"{}\",\"to\":\"{}\",\"epoch\":{},\"seq\":{},\"status\":{},\"time_ms\":{},\"last_seen_ms\":{},\"shard\":{},\"event_seq\":{}}}",
        e.device_id,
        e.from.name(),
        e.to.name(),
        e.epoch,
        e.seq,
        e.status,
        m.unix_ms,
        m.last_seen_unix_ms,
        m.shard,
        e.event_seq
    )
}

/// The real-time clock in Unix milliseconds (0 before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventWriter {
    /// Opens the sink (`-` = standard output; a file is appended to, never truncated;
    /// None: no file) and starts the writer thread, which also hands every event to
    /// `mqtt` when given.
    pub fn start(
        path: Option<&Path>,
        mqtt: Option<crate::mqtt::Feed>,
        queue: usize,
        shards: usize,
    ) -> anyhow::Result<EventWriter> {
        let sink = match path {
            Some(p) if p == Path::new("-") => Sink::Stdout,
            Some(p) => Sink::File(p.to_owned()),
            None => Sink::None,
        };
        let out = sink.open().map_err(|e| {
            anyhow::anyhow!("cannot open events file {} for appending: {e}", sink.name())
        })?;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::sync_channel(queue)).unzip();
        let stats = Arc::new(EventStats::default());
        let writer = Writer {
            receivers,
            out: std::io::BufWriter::with_capacity(1 << 16, out),
            buffered: 0,
            broken: false,
            sink,
            stats: stats.clone(),
            mqtt,
            batch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("rb-events".into())
            .spawn(move || writer.run())?;
        Ok(EventWriter {
            senders,
            thread,
            stats,
        })
    }

    pub fn sender(&self, shard: usize) -> SyncSender<Made> {
        self.senders[shard].clone()
    }

    /// Asks the writer to reopen the events file (SIGHUP, after a log rotation).
    pub fn reopen(&self) {
        self.stats.reopen.store(true, Ordering::Relaxed);
    }

    /// Closes the queues (after the shards have stopped) and gives the writer
    /// `FINISH_WITHIN` to write what is left. A writer still stuck then (a consumer
    /// that stopped reading) is left behind; the events the shards handed over
    /// (`handed_over`) that it did not write or count as lost are counted in
    /// `unwritten_at_stop`.
    pub fn finish(self, handed_over: u64) {
        drop(self.senders);
        let deadline = Instant::now() + FINISH_WITHIN;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let s = &self.stats;
        let done = s.written.load(Ordering::Relaxed) + s.lost.load(Ordering::Relaxed);
        let unwritten = handed_over.saturating_sub(done);
        s.unwritten_at_stop.store(unwritten, Ordering::Relaxed);
        if !self.thread.is_finished() {
            tracing::warn!(
                unwritten,
                "the events sink took nothing for {} ms at stop (a consumer that stopped reading?): {unwritten} events not written, counted in unwritten_at_stop",
                FINISH_WITHIN.as_millis()
            );
        } else if self.thread.join().is_err() {
            tracing::error!("the event writer panicked");
        }
    }
}

struct Writer {
    receivers: Vec<Receiver<Made>>,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    /// Events in `out` not yet flushed.
    buffered: u64,
    /// The sink failed: events are counted as lost until it is reopened.
    broken: bool,
    sink: Sink,
    stats: Arc<EventStats>,
    /// MQTT presence, fed the round's events in one go.
    mqtt: Option<crate::mqtt::Feed>,
    batch: Vec<Made>,
}

impl Writer {
    fn run(mut self) {
        let mut open = self.receivers.len();
        let mut closed = vec![false; self.receivers.len()];
        while open > 0 {
            if self.stats.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            let mut took = 0;
            let receivers = std::mem::take(&mut self.receivers);
            for (rx, closed) in receivers.iter().zip(closed.iter_mut()) {
                if *closed {
                    continue;
                }
                loop {
                    match rx.try_recv() {
                        Ok(m) if m.refresh => {
                            if self.mqtt.is_some() {
                                self.batch.push(m);
                            }
                        }
                        Ok(m) => {
                            took += 1;
                            self.write(&m);
                            if self.mqtt.is_some() {
                                self.batch.push(m);
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            *closed = true;
                            open -= 1;
                            break;
                        }
                    }
                }
            }
            self.receivers = receivers;
            if let Some(feed) = &self.mqtt {
                feed.offer_all(&self.batch);
                self.batch.clear();
            }
            self.stats.taken.fetch_add(took, Ordering::Relaxed);
            if took == 0 {
                self.flush();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.flush();
    }

    fn write(&mut self, m: &Made) {
        if matches!(self.sink, Sink::None) {
            // Handed to MQTT only: nothing to write, nothing pending.
            self.stats.written.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.broken {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match writeln!(self.out, "{}", event_json(m)) {
            Ok(()) => self.buffered += 1,
            Err(e) => {
                self.buffered += 1;
                self.fail(e);
            }
        }
    }

    fn flush(&mut self) {
        if self.broken || self.buffered == 0 {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                self.stats
                    .written
                    .fetch_add(std::mem::take(&mut self.buffered), Ordering::Relaxed);
            }
            Err(e) => self.fail(e),
        }
    }

    /// The sink failed: said once, clearly; what was buffered and everything after is
    /// counted as lost until a reopen.
    fn fail(&mut self, e: std::io::Error) {
        self.broken = true;
        self.stats
            .lost
            .fetch_add(std::mem::take(&mut self.buffered), Ordering::Relaxed);
        let hint = if e.kind() == std::io::ErrorKind::BrokenPipe {
            "the reader went away"
        } else {
            "check the disk and the path"
        };
        tracing::error!(
            "writing events to {} failed: {e} ({hint}); events are counted as lost (stats: events_output.lost) until it is reopened with SIGHUP",
            self.sink.name()
        );
        // Drop what the buffer holds so the next write starts clean.
        let fresh: Box<dyn Write + Send> = Box::new(std::io::sink());
        let old = std::mem::replace(&mut self.out, std::io::BufWriter::new(fresh));
        let _ = old.into_parts();
    }

    /// Reopens the sink (a rotated file is created anew at its path).
    fn reopen(&mut self) {
        self.flush();
        match self.sink.open() {
            Ok(out) => {
                let old = std::mem::replace(
                    &mut self.out,
                    std::io::BufWriter::with_capacity(1 << 16, out),
                );
                let _ = old.into_parts();
                self.broken = false;
                self.stats.reopened.fetch_add(1, Ordering::Relaxed);
                tracing::info!("events: reopened {}", self.sink.name());
            }
            Err(e) => tracing::error!(
                "events: cannot reopen {}: {e}; still writing to the old one",
                self.sink.name()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::Liveness;

    #[test]
    fn event_json_has_the_documented_keys() {
        let e = Event {
            device_id: 9,
            from: Liveness::Online,
            to: Liveness::Late,
            epoch: 2,
            seq: 5,
            status: 1,
            time_ms: 40,
            event_seq: 7,
            last_seen_ms: 25,
        };
        let m = Made {
            shard: 1,
            unix_ms: 1_795_502_734_556,
            last_seen_unix_ms: 1_795_502_733_000,
            event: e,
            refresh: false,
        };
        let v: serde_json::Value = serde_json::from_str(&event_json(&m)).unwrap();
        assert_eq!(v["device_id"], 9);
        assert_eq!(v["from"], "online");
        assert_eq!(v["to"], "late");
        assert_eq!(v["epoch"], 2);
        assert_eq!(v["seq"], 5);
        assert_eq!(v["status"], 1);
        assert_eq!(v["time_ms"], 1_795_502_734_556u64);
        assert_eq!(v["shard"], 1);
        assert_eq!(v["event_seq"], 7);
        assert_eq!(v["last_seen_ms"], 1_795_502_733_000u64);
    }
}
