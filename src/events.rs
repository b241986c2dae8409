//! The event sink: one writer thread turning liveness transitions into JSON lines.
//!
//! Each shard has its own bounded queue to the writer (no queue shared between shards);
//! a shard never waits on it — when a queue is full the event is counted in
//! `events_dropped`. The writer flushes whenever it runs out of work.

use crate::core::shard::Event;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct EventWriter {
    senders: Vec<SyncSender<(u32, Event)>>,
    thread: JoinHandle<std::io::Result<()>>,
}

/// One event as a JSON object (no trailing newline).
pub fn event_json(shard: u32, e: &Event, base_unix_ms: u64) -> String {
    format!(
        "{{\"device_id\":{},\"from\":\"{}\",\"to\":\"{}\",\"epoch\":{},\"seq\":{},\"status\":{},\"time_ms\":{},\"shard\":{}}}",
        e.device_id,
        e.from.name(),
        e.to.name(),
        e.epoch,
        e.seq,
        e.status,
        base_unix_ms + e.time_ms,
        shard
    )
}

impl EventWriter {
    pub fn start(
        path: &Path,
        base_unix_ms: u64,
        queue: usize,
        shards: usize,
    ) -> anyhow::Result<EventWriter> {
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
                write_loop(
                    receivers,
                    std::io::BufWriter::with_capacity(1 << 16, out),
                    base_unix_ms,
                )
            })?;
        Ok(EventWriter { senders, thread })
    }

    pub fn sender(&self, shard: usize) -> SyncSender<(u32, Event)> {
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

fn write_loop(
    receivers: Vec<Receiver<(u32, Event)>>,
    mut out: impl Write,
    base_unix_ms: u64,
) -> std::io::Result<()> {
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
                    Ok((shard, e)) => {
                        writeln!(out, "{}", event_json(shard, &e, base_unix_ms))?;
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
        };
        let v: serde_json::Value = serde_json::from_str(&event_json(1, &e, 1000)).unwrap();
        assert_eq!(v["device_id"], 9);
        assert_eq!(v["from"], "online");
        assert_eq!(v["to"], "late");
        assert_eq!(v["epoch"], 2);
        assert_eq!(v["seq"], 5);
        assert_eq!(v["status"], 1);
        assert_eq!(v["time_ms"], 1040);
        assert_eq!(v["shard"], 1);
    }
}
