//! The event sink: one writer thread turning liveness transitions into JSON lines.
//!
//! Each shard has its own bounded queue to the writer (no queue shared between shards);
//! a shard never waits on it — when a queue is full the event is counted in
//! `events_dropped`. The writer flushes whenever it runs out of work.
//!
//! `time_ms` is the real-time clock (Unix ms) read by the shard when it made the event,
//! so a clock step after start (NTP on a box without an RTC) does not skew later
//! events; `shard` and `event_seq` (1, 2, 3, ... per shard, dropped events included)
//! let a consumer order, deduplicate and see gaps.

use crate::core::shard::Event;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

/// An event on its way to the writer.
#[derive(Clone, Copy, Debug)]
pub struct Made {
    pub shard: u32,
    /// Real-time clock when the shard made it (Unix ms).
    pub unix_ms: u64,
    /// The device's last heartbeat on the real-time clock (Unix ms).
    pub last_seen_unix_ms: u64,
    pub event: Event,
}

pub struct EventWriter {
    senders: Vec<SyncSender<Made>>,
    thread: JoinHandle<std::io::Result<()>>,
}

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
    pub fn start(path: &Path, queue: usize, shards: usize) -> anyhow::Result<EventWriter> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(path).map_err(|e| {
                anyhow::anyhow!("cannot create events file {}: {e}", path.display())
            })?)
        };
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::sync_channel(queue)).unzip();
        let thread = std::thread::Builder::new()
            .name("ringbeat-events".into())
            .spawn(move || {
                write_loop(receivers, std::io::BufWriter::with_capacity(1 << 16, out))
            })?;
        Ok(EventWriter { senders, thread })
    }

    pub fn sender(&self, shard: usize) -> SyncSender<Made> {
        self.senders[shard].clone()
    }

    /// Closes the queues (after the shards have stopped), writes what is left, flushes.
    pub fn finish(self) {
        drop(self.senders);
        match self.thread.join() {
            Ok(Err(e)) => tracing::error!("writing events failed: {e}"),
            Err(_) => tracing::error!("event writer panicked"),
            Ok(Ok(())) => {}
        }
    }
}

fn write_loop(receivers: Vec<Receiver<Made>>, mut out: impl Write) -> std::io::Result<()> {
    let mut open = receivers.len();
    let mut closed = vec![false; receivers.len()];
    while open > 0 {
        let mut wrote = false;
        for (i, rx) in receivers.iter().enumerate() {
            if closed[i] {
                continue;
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => {
                        writeln!(out, "{}", event_json(&m))?;
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed[i] = true;
                        open -= 1;
                        break;
                    }
                }
            }
        }
        if !wrote {
            out.flush()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out.flush()
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
