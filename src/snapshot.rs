//! Snapshots on disk: loading one at start (each record to the shard that owns its
//! device, whatever the shard count was when it was written), the writer thread that
//! joins the shards' slices into a file written atomically (temp file, fsync, rename,
//! fsync of the directory), and the shard's side, which copies its table a slice per
//! loop iteration so a snapshot never holds a shard up. The file format is
//! `ringbeat_core::snapshot`.
//!
//! Generations: the main thread asks for a snapshot by bumping `Shared::snapshot_gen`;
//! each shard, once it has finished the one it was copying, starts the newest. The
//! writer keeps the newest generation it has heard of and drops slices of older ones
//! (their temp file is abandoned). At stop every shard copies its whole table as the
//! final generation.

use crate::core::owner::owner;
use crate::core::snapshot::{self, Record, RECORD_BYTES};
use anyhow::Context;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records per slice: 1,024 × 56 bytes = 56 KiB per buffer, copied in roughly 5–10 µs
/// (sequential reads of the device records), short against a receive batch. 4,096
/// (~30 µs) tripled p99 at 1M hb/s with a snapshot every 2 s
/// (results/2026-12-01-snapshot-batch32).
pub const SLICE_RECORDS: u32 = 1024;
/// Slice buffers per shard: enough to keep copying while the writer writes, bounded so
/// a slow disk makes shards wait a loop iteration, never grow memory.
const BUFFERS_PER_SHARD: usize = 4;
/// The final generation, copied at stop.
pub const FINAL: u64 = u64::MAX;

/// Reads the snapshot at `path`: None when there is none yet (a first start).
pub fn load(path: &Path) -> anyhow::Result<Option<snapshot::Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read snapshot {}: fix its permissions, or start with --no-restore \
                     (the next snapshot then replaces it)",
                    path.display()
                )
            })
        }
    };
    snapshot::decode(&bytes).map(Some).map_err(|e| {
        anyhow::anyhow!(
            "cannot restore from snapshot {}: {e}; move it away, or start with --no-restore \
             (the next snapshot then replaces it)",
            path.display()
        )
    })
}

/// Records by owning shard.
pub fn split(records: Vec<Record>, shards: u32) -> Vec<Vec<Record>> {
    let mut out = vec![Vec::new(); shards as usize];
    for r in records {
        out[owner(r.device_id, shards) as usize].push(r);
    }
    out
}

enum Msg {
    Slice {
        gen: u64,
        shard: usize,
        bytes: Vec<u8>,
    },
    Done {
        gen: u64,
        shard: usize,
    },
}

/// What the writer has done, for the stats.
#[derive(Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub failed: AtomicU64,
    pub last_records: AtomicU64,
    pub last_write_ms: AtomicU64,
}

/// The writer thread and the shards' ends of its queues.
pub struct SnapshotWriter {
    tx: SyncSender<Msg>,
    free: Vec<Option<Receiver<Vec<u8>>>>,
    thread: JoinHandle<()>,
    pub stats: Arc<WriterStats>,
}

/// A shard's end: where its slices go and where its empty buffers come back.
pub struct ShardSaver {
    shard: usize,
    tx: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
    /// Newest generation started.
    started: u64,
    /// The generation being copied and the next slot to copy.
    active: Option<(u64, u32)>,
}

impl SnapshotWriter {
    pub fn start(path: &Path, shards: usize) -> anyhow::Result<SnapshotWriter> {
        let (tx, rx) = mpsc::sync_channel(shards * BUFFERS_PER_SHARD + shards + 1);
        let mut returns = Vec::with_capacity(shards);
        let mut free = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (ret_tx, ret_rx) = mpsc::sync_channel(BUFFERS_PER_SHARD);
            for _ in 0..BUFFERS_PER_SHARD {
                ret_tx
                    .send(Vec::with_capacity(SLICE_RECORDS as usize * RECORD_BYTES))
                    .expect("room for every buffer");
            }
            returns.push(ret_tx);
            free.push(Some(ret_rx));
        }
        let stats = Arc::new(WriterStats::default());
        let path = path.to_path_buf();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("rb-snapshot".into())
            .spawn(move || {
                // Writing 80 MB for 2M devices is seconds of CPU over a run; it must
                // never take a shard's CPU (measured: p99 ×3 when it could).
                if !crate::sys::notify::run_when_idle() {
                    tracing::debug!("the snapshot writer could not switch to SCHED_IDLE");
                }
                write_loop(&path, shards, rx, returns, &st)
            })
            .context("spawning the snapshot writer")?;
        Ok(SnapshotWriter {
            tx,
            free,
            thread,
            stats,
        })
    }

    /// Shard `shard`'s end (each taken once).
    pub fn saver(&mut self, shard: usize) -> ShardSaver {
        ShardSaver {
            shard,
            tx: self.tx.clone(),
            free: self.free[shard].take().expect("one saver per shard"),
            started: 0,
            active: None,
        }
    }

    /// Waits for the final snapshot (after the shards have stopped) and the thread.
    pub fn finish(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("the snapshot writer panicked");
        }
    }
}

impl ShardSaver {
    /// One loop iteration's share of the newest requested snapshot: at most one slice.
    /// Without a free buffer (the writer is behind) it copies nothing this time.
    pub fn step(&mut self, core: &crate::memory::Core, requested: u64, now_ms: u64) {
        if self.active.is_none() && requested > self.started {
            self.started = requested;
            self.active = Some((requested, 0));
        }
        let Some((gen, next)) = self.active else {
            return;
        };
        let Ok(buf) = self.free.try_recv() else {
            return;
        };
        self.copy(core, gen, next, buf, now_ms);
    }

    /// At stop: the whole table as the final generation (waits for buffers, bounded by
    /// `deadline`).
    pub fn save_all(&mut self, core: &crate::memory::Core, now_ms: u64, deadline: Instant) {
        self.active = Some((FINAL, 0));
        while let Some((gen, next)) = self.active {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(buf) = self.free.recv_timeout(left) else {
                tracing::error!(
                    shard = self.shard,
                    "the final snapshot did not finish in time (the disk is too slow): the last complete snapshot stays"
                );
                return;
            };
            self.copy(core, gen, next, buf, now_ms);
        }
    }

    fn copy(
        &mut self,
        core: &crate::memory::Core,
        gen: u64,
        next: u32,
        mut buf: Vec<u8>,
        now_ms: u64,
    ) {
        buf.clear();
        let unix_ms = crate::events::unix_now_ms();
        let mut r = [0u8; RECORD_BYTES];
        let end = core.save_slice(next, SLICE_RECORDS, now_ms, unix_ms, |rec| {
            rec.encode(&mut r);
            buf.extend_from_slice(&r);
        });
        let shard = self.shard;
        // The queue holds every buffer there is plus the done markers: never blocks.
        let _ = self.tx.send(Msg::Slice {
            gen,
            shard,
            bytes: buf,
        });
        if end >= core.table().len() {
            let _ = self.tx.send(Msg::Done { gen, shard });
            self.active = None;
        } else {
            self.active = Some((gen, end));
        }
    }
}

/// One generation being written.
struct InProgress {
    gen: u64,
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    hasher: snapshot::Checksum,
    records: u64,
    done: Vec<bool>,
    started: Instant,
}

fn write_loop(
    path: &Path,
    shards: usize,
    rx: Receiver<Msg>,
    returns: Vec<SyncSender<Vec<u8>>>,
    stats: &WriterStats,
) {
    let mut current: Option<InProgress> = None;
    let mut newest = 0u64;
    let mut last_error: Option<Instant> = None;
    let mut report = |e: anyhow::Error| {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_error = Some(Instant::now());
            tracing::error!("writing snapshot {}: {e:#}", path.display());
        }
    };
    for msg in rx {
        let (gen, shard) = match &msg {
            Msg::Slice { gen, shard, .. } | Msg::Done { gen, shard } => (*gen, *shard),
        };
        if gen > newest {
            newest = gen;
            if let Some(old) = current.take() {
                let _ = std::fs::remove_file(&old.tmp);
            }
            match begin(path, gen, shards) {
                Ok(p) => current = Some(p),
                Err(e) => report(e),
            }
        }
        let live = current.as_mut().filter(|p| p.gen == gen);
        match msg {
            Msg::Slice { bytes, .. } => {
                if let Some(p) = live {
                    p.hasher.update(&bytes);
                    p.records += (bytes.len() / RECORD_BYTES) as u64;
                    if let Err(e) = p.file.write_all(&bytes) {
                        let p = current.take().expect("live");
                        let _ = std::fs::remove_file(&p.tmp);
                        report(e.into());
                    }
                }
                let _ = returns[shard].try_send(bytes);
            }
            Msg::Done { .. } => {
                if let Some(p) = live {
                    p.done[shard] = true;
                    if p.done.iter().all(|&d| d) {
                        let p = current.take().expect("live");
                        let (records, started, tmp) = (p.records, p.started, p.tmp.clone());
                        match complete(path, p) {
                            Ok(()) => {
                                stats.written.fetch_add(1, Ordering::Relaxed);
                                stats.last_records.store(records, Ordering::Relaxed);
                                stats
                                    .last_write_ms
                                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                                tracing::debug!(records, "snapshot written to {}", path.display());
                            }
                            Err(e) => {
                                let _ = std::fs::remove_file(&tmp);
                                report(e);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn begin(path: &Path, gen: u64, shards: usize) -> anyhow::Result<InProgress> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    // The header is rewritten once the number of records is known.
    file.write_all(&[0u8; snapshot::HEADER_BYTES])?;
    Ok(InProgress {
        gen,
        file,
        tmp,
        hasher: snapshot::Checksum::new(),
        records: 0,
        done: vec![false; shards],
        started: Instant::now(),
    })
}

/// Header, trailer, fsync, rename over the old snapshot, fsync of the directory.
fn complete(path: &Path, p: InProgress) -> anyhow::Result<()> {
    let header = snapshot::encode_header(crate::events::unix_now_ms(), p.records);
    let crc = snapshot::checksum(&header, &p.hasher);
    let mut file = p.file;
    file.write_all(&snapshot::encode_trailer(crc))?;
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    file.write_all(&header)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&p.tmp, path)
        .with_context(|| format!("renaming {} to {}", p.tmp.display(), path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of {}", dir.display()))?;
    Ok(())
}
