//! The device registry (`--devices-file`): which devices exist, with an optional key
//! for authenticated (version-2) heartbeats and an optional expected interval. When a
//! registry is given, heartbeats for ids it does not list are refused before they reach
//! the device table, so a flood of random ids takes no slot.
//!
//! The file is text, one device per line; `#` starts a comment:
//!
//! ```text
//! # id                 key (32 hex digits)                    period
//! 4242                 key=000102030405060708090a0b0c0d0e0f   interval=30s
//! 0x00a1b2c3d4e5f601   interval=500ms
//! 77
//! ```
//!
//! The registry is parsed once per load into an immutable value that every shard
//! shares (a reload replaces it whole); each shard keeps the mutable part, the replay
//! windows of the devices it owns, indexed by [`Entry::local`].
//!
//! ```
//! use ringbeat_core::registry::Registry;
//! let r = Registry::parse("4242 interval=30s\n77 key=000102030405060708090a0b0c0d0e0f\n", 1).unwrap();
//! assert_eq!(r.get(4242).unwrap().interval_ds(), 300);
//! assert!(r.get(77).unwrap().key().is_some());
//! assert!(r.get(5).is_none());
//! let e = Registry::parse("4242\n4242\n", 1).unwrap_err();
//! assert_eq!(e.to_string(), "line 2: device 4242 is listed twice (first on line 1)");
//! ```

use crate::codec::Key;
use crate::memory::{Heap, Memory};
use crate::owner::owner;
use std::sync::atomic::{AtomicU64, Ordering};

/// One registered device, as the registry's slot holds it.
///
/// Besides what the devices file says, an entry keeps where the device's record is in
/// its owner shard's table (a hint, checked against the record's id before use): a
/// heartbeat reads its entry anyway, and with the hint it goes straight to its record
/// instead of first reading the table's index, one cache miss fewer. Only the owner
/// writes it, once per device (when it first applies a heartbeat of it), so the shards
/// that read the entry to check a frame they hand on do not fight over its line. The
/// hint shares one atomic word with the fields the file gave, to keep the entry at 32
/// bytes (two to a cache line).
#[derive(bytemuck::Zeroable)]
#[repr(C, align(32))]
pub struct Entry {
    id: u64,
    /// The key its version-2 tags are made with (all zero when it has none).
    key: Key,
    /// `local` (bits 0..24): its position among the registered devices its owner shard
    /// holds (that shard's index into its replay windows); `interval_ds` (24..40): the
    /// period the server expects of it, in deciseconds, 0 = what its heartbeats say;
    /// `keyed` (40); the record hint (41..64): its slot in the owner's table + 1, 0 =
    /// not known (or a slot too large for 23 bits).
    packed: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

/// Registered devices one shard may own: `local` has 24 bits.
pub const MAX_PER_SHARD: u32 = 1 << 24;
const INTERVAL_SHIFT: u32 = 24;
const KEYED_BIT: u64 = 1 << 40;
const RECORD_SHIFT: u32 = 41;
/// The record hint (slot + 1) must stay below this: the bits above `RECORD_SHIFT`.
const RECORD_LIMIT: u32 = 1 << (64 - RECORD_SHIFT);

impl Entry {
    fn new(id: u64, key: Option<Key>, interval_ds: u16) -> Entry {
        Entry {
            id,
            key: key.unwrap_or_default(),
            packed: AtomicU64::new(
                (interval_ds as u64) << INTERVAL_SHIFT | if key.is_some() { KEYED_BIT } else { 0 },
            ),
        }
    }

    #[inline]
    fn packed(&self) -> u64 {
        self.packed.load(Ordering::Relaxed)
    }

    /// The key its version-2 tags are made with; `None`: it may send version 1 (unless
    /// the server requires authentication).
    #[inline]
    pub fn key(&self) -> Option<&Key> {
        self.keyed().then_some(&self.key)
    }
    #[inline]
    pub fn keyed(&self) -> bool {
        self.packed() & KEYED_BIT != 0
    }
    /// Its position among the registered devices its owner shard holds.
    #[inline]
    pub fn local(&self) -> u32 {
        (self.packed() & (MAX_PER_SHARD as u64 - 1)) as u32
    }
    /// The period the server expects of it, in deciseconds; 0 = what its heartbeats say.
    #[inline]
    pub fn interval_ds(&self) -> u16 {
        (self.packed() >> INTERVAL_SHIFT) as u16
    }
    /// Where its owner last found its record (a slot of the owner's table), if noted.
    #[inline]
    pub fn record_hint(&self) -> Option<u32> {
        ((self.packed() >> RECORD_SHIFT) as u32).checked_sub(1)
    }
    /// Notes where its record is. For its owner shard only (the one writer of the
    /// hint); a slot that does not fit the hint's 23 bits leaves none.
    #[inline]
    pub fn note_record(&self, slot: u32) {
        let hint = slot
            .checked_add(1)
            .filter(|&h| h < RECORD_LIMIT)
            .unwrap_or(0);
        let kept = self.packed() & ((1 << RECORD_SHIFT) - 1);
        self.packed
            .store(kept | (hint as u64) << RECORD_SHIFT, Ordering::Relaxed);
    }
    fn set_local(&mut self, local: u32) {
        debug_assert!(local < MAX_PER_SHARD);
        let p = self.packed.get_mut();
        *p = (*p & !(MAX_PER_SHARD as u64 - 1)) | local as u64;
    }
}

impl Default for Entry {
    fn default() -> Entry {
        Entry::new(0, None, 0)
    }
}

impl Clone for Entry {
    fn clone(&self) -> Entry {
        Entry {
            id: self.id,
            key: self.key,
            packed: AtomicU64::new(self.packed()),
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("keyed", &self.keyed())
            .field("local", &self.local())
            .field("interval_ds", &self.interval_ds())
            .field("record_hint", &self.record_hint())
            .finish()
    }
}

/// A malformed registry: the line and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RegistryError {}

/// Spreads device ids over the slots: splitmix64's finalizer. Ids are chosen by the
/// operator, not by the sender, so the slots' layout cannot be steered from the network
/// (a lookup of an unlisted id costs at most the longest run of occupied slots).
#[inline]
fn mix(id: u64) -> u64 {
    let mut z = id;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The parsed registry: immutable, shared by every shard. An open-addressing index
/// (linear probing, 37–75% full) of 32-byte entries holding everything the per-frame
/// check needs (key, interval, replay window index), two to a cache line, a probe
/// starting at a line's first slot, so a lookup is one cache miss (its line, and the
/// next only where some probe spills into it, prefetched for a whole datagram before
/// its frames are looked at).
/// (The standard library's map spends a miss on its control bytes and another on the
/// entry, and cannot be prefetched from outside: at 2M devices its per-frame lookup
/// cost about 5× the rest of a heartbeat's work here.) 43–85 bytes per listed device.
pub struct RegistryIn<M: Memory> {
    slots: M::Entries,
    /// home = mix(id) >> shift.
    shift: u32,
    len: usize,
    /// Devices per owner shard (the length of that shard's replay windows).
    owned: Vec<u32>,
    /// Per owner shard, by local index: `key_check` of the device's key (0 without
    /// one), computed here once so snapshots need no hashing.
    checks: Vec<Vec<u32>>,
    keyed: usize,
    /// The first device (by line) without a key: `--require-auth` refuses the file.
    first_without_key: Option<(u64, u32)>,
    /// Bit per cache line (two slots): some device whose probe starts at this line sits
    /// past it. Clear (at 2M devices, for most lines), a lookup reads its home line
    /// only: an unlisted id is known absent there, and the line after is not
    /// prefetched. Possible because the registry never changes once built. A bit per
    /// 64 bytes: 256 KiB at 2M devices, read with the hash, so it stays cached.
    spills: Vec<u64>,
}

impl<M: Memory> std::fmt::Debug for RegistryIn<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.len)
            .field("keyed", &self.keyed)
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// The registry on heap memory (tests, the bench harness, fuzzing); the server keeps
/// its index on huge pages (`RegistryIn<Mapped>`), where 128 MiB of randomly probed
/// entries at 2M devices take 64 TLB entries instead of 32,768.
pub type Registry = RegistryIn<Heap>;

impl<M: Memory> RegistryIn<M> {
    /// Parses a registry file's text for a server of `shards` shards.
    pub fn parse(text: &str, shards: u32) -> Result<RegistryIn<M>, RegistryError> {
        let shards = shards.max(1);
        let mut listed: Vec<(Entry, u32)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |message: String| RegistryError { line, message };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let id_text = words.next().expect("not empty");
            let id = parse_id(id_text).map_err(err)?;
            let (mut key, mut interval_ds) = (None, 0);
            let mut interval_given = false;
            for word in words {
                let (name, value) = word.split_once('=').ok_or_else(|| {
                    err(format!(
                        "`{word}`: expected key=HEX or interval=DURATION after the device id"
                    ))
                })?;
                match name {
                    "key" if key.is_none() => key = Some(parse_key(value).map_err(err)?),
                    "interval" if !interval_given => {
                        interval_ds = parse_interval(value).map_err(err)?;
                        interval_given = true;
                    }
                    "key" | "interval" => return Err(err(format!("`{name}` given twice"))),
                    _ => {
                        return Err(err(format!(
                            "unknown field `{name}` (the fields are key= and interval=)"
                        )))
                    }
                }
            }
            if listed.len() >= (u32::MAX / 4) as usize {
                return Err(err("more than 2^30 devices".into()));
            }
            listed.push((Entry::new(id, key, interval_ds), line as u32));
        }
        let size = (listed.len() * 4 / 3 + 1).next_power_of_two().max(16);
        let slots = M::entries(size, true).map_err(|e| RegistryError {
            line: 0,
            message: format!("cannot map {size} registry entries: {e}"),
        })?;
        let mut r: RegistryIn<M> = RegistryIn {
            slots,
            shift: 64 - size.trailing_zeros(),
            len: 0,
            owned: vec![0; shards as usize],
            checks: vec![Vec::new(); shards as usize],
            keyed: 0,
            first_without_key: None,
            spills: Vec::new(),
        };
        // The line of each filled slot, for the message about a duplicate.
        let mut lines = vec![0u32; size];
        for (mut entry, line) in listed {
            let at = match r.probe(entry.id) {
                Ok(found) => {
                    return Err(RegistryError {
                        line: line as usize,
                        message: format!(
                            "device {} is listed twice (first on line {})",
                            entry.id, lines[found]
                        ),
                    });
                }
                Err(empty) => empty,
            };
            let shard = owner(entry.id, shards) as usize;
            if r.owned[shard] == MAX_PER_SHARD {
                return Err(RegistryError {
                    line: line as usize,
                    message: format!(
                        "more than {MAX_PER_SHARD} devices for shard {shard}: serve with more shards (--cores) or list fewer devices"
                    ),
                });
            }
            entry.set_local(r.owned[shard]);
            r.owned[shard] += 1;
            r.checks[shard].push(entry.key().map_or(0, key_check));
            r.keyed += entry.keyed() as usize;
            if !entry.keyed() && r.first_without_key.is_none() {
                r.first_without_key = Some((entry.id, line));
            }
            r.slots[at] = entry;
            lines[at] = line;
            r.len += 1;
        }
        r.spills = vec![0u64; (size / 2).div_ceil(64)];
        for at in 0..size {
            let id = r.slots[at].id;
            let home_line = r.home_at(id) / 2;
            if id != 0 && at / 2 != home_line {
                r.spills[home_line / 64] |= 1 << (home_line % 64);
            }
        }
        Ok(r)
    }

    /// Whether some device whose probe starts at the line of slot `at` sits past it.
    #[inline]
    fn spills(&self, at: usize) -> bool {
        let line = at / 2;
        self.spills[line / 64] >> (line % 64) & 1 == 1
    }

    /// Lines that some device's probe starts at and goes past, of all lines.
    #[cfg(test)]
    fn spill_share(&self) -> f64 {
        let set: u32 = self.spills.iter().map(|w| w.count_ones()).sum();
        set as f64 / (self.slots.len() / 2) as f64
    }

    /// The slot holding `id` (Ok) or the empty slot ending its probe (Err), by linear
    /// probing from its home line (while the registry is built).
    #[inline]
    fn probe(&self, id: u64) -> Result<usize, usize> {
        self.probe_from(id, self.home_at(id))
    }

    #[inline]
    fn probe_from(&self, id: u64, mut at: usize) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        loop {
            let s = &self.slots[at];
            if s.id == id {
                return Ok(at);
            }
            if s.id == 0 {
                return Err(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The slot a lookup of `id` starts at, to prefetch before looking it up.
    #[inline]
    pub fn home(&self, id: u64) -> &Entry {
        &self.slots[self.home_at(id)]
    }

    /// Prefetches what a lookup of `id` reads: its home line, and the line after it
    /// (where the probe goes on) when some device's probe spills there.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        let at = self.home_at(id);
        M::prefetch(&self.slots[at]);
        if self.spills(at) {
            M::prefetch(&self.slots[(at + 2) & (self.slots.len() - 1)]);
        }
    }

    /// Probes start at the first slot of a cache line (two entries to a line), so the
    /// one line prefetched holds a colliding neighbour too.
    #[inline]
    fn home_at(&self, id: u64) -> usize {
        (mix(id) >> self.shift) as usize & !1
    }

    /// `id`'s entry if it is listed: in its home line, or past it only when that line
    /// spills (then by linear probing up to an empty slot, as it was placed).
    #[inline]
    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.find(id).map(|at| self.at(at))
    }

    /// Where `id`'s entry is (`at` gives it), if it is listed: for a caller that looks
    /// an id up once and comes back to its entry later.
    #[inline]
    pub fn find(&self, id: u64) -> Option<u32> {
        let at = self.home_at(id);
        for (k, s) in self.slots[at..at + 2].iter().enumerate() {
            if s.id == id {
                return Some((at + k) as u32);
            }
        }
        if !self.spills(at) {
            return None;
        }
        let next = (at + 2) & (self.slots.len() - 1);
        self.probe_from(id, next).ok().map(|at| at as u32)
    }

    /// The entry `find` found.
    #[inline]
    pub fn at(&self, at: u32) -> &Entry {
        &self.slots[at as usize]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Devices with a key.
    pub fn keyed(&self) -> usize {
        self.keyed
    }
    /// Registered devices `shard` owns.
    pub fn owned_by(&self, shard: u32) -> u32 {
        self.owned.get(shard as usize).copied().unwrap_or(0)
    }
    /// `key_check` of the key of the device `shard` holds at `local` (0 without one).
    pub fn key_check_of(&self, shard: u32, local: u32) -> u32 {
        self.checks[shard as usize][local as usize]
    }
    /// Every registered id with its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.slots.iter().filter(|e| e.id != 0).map(|e| (e.id, e))
    }
    /// Ids `self` lists that `next` does not: the devices a reload forgets.
    pub fn removed_in(&self, next: &RegistryIn<M>) -> Vec<u64> {
        let mut gone: Vec<u64> = self
            .iter()
            .map(|(id, _)| id)
            .filter(|id| next.get(*id).is_none())
            .collect();
        gone.sort_unstable();
        gone
    }
    /// The first entry (by line) without a key, if any: `--require-auth` needs a key
    /// for every device.
    pub fn first_without_key(&self) -> Option<(u64, u32)> {
        self.first_without_key
    }
}

fn parse_id(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    match parsed {
        Ok(0) => Err("device id 0 is not valid (the protocol reserves it)".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!(
            "`{text}`: a device id is a number from 1 to 2^64 - 1, decimal or 0x hex"
        )),
    }
}

fn parse_key(text: &str) -> Result<Key, String> {
    let bad = || {
        format!(
            "key `{text}`: a key is 32 hex digits (128 bits), e.g. from `head -c16 /dev/urandom | xxd -p`"
        )
    };
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

/// `30s`, `500ms`, `2m`, `1.5s`: a whole number of tenths of a second, 0.1 s to
/// 6553.5 s (the protocol's interval field).
fn parse_interval(text: &str) -> Result<u16, String> {
    let bad = |why: &str| format!("interval `{text}`: {why} (e.g. interval=30s, interval=500ms)");
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(bad("give a unit: ms, s or m"));
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| bad("not a number"))?;
    let ds = value * unit_ms / 100.0;
    if (ds - ds.round()).abs() > 1e-9 {
        return Err(bad("must be a whole number of tenths of a second"));
    }
    match ds.round() {
        d if d < 1.0 => Err(bad("must be at least 100ms")),
        d if d > u16::MAX as f64 => Err(bad("must be at most 6553.5s")),
        d => Ok(d as u16),
    }
}

/// A short check of a device key that does not give the key away: the first 4 bytes
/// of the SipHash-2-4-128 tag of 48 zero bytes under it. A snapshot keeps it beside a
/// replay window, so the window is restored only for the same key.
pub fn key_check(key: &Key) -> u32 {
    let tag = crate::siphash::tags48::<1>([key], [&[0u8; crate::codec::TAGGED_BYTES]])[0];
    u32::from_le_bytes(tag[..4].try_into().expect("4 bytes"))
}

/// A device's replay window for version-2 counters `(boot << 32) | seq`: the highest
/// counter taken and which of the 63 before it were taken too, so heartbeats reordered
/// by up to 63 places are still taken once, and a copy never (as in IPsec's and
/// WireGuard's anti-replay windows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit i: counter `highest - i` was taken. 0 = nothing taken yet.
    seen: u64,
}

/// What a counter was to its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Ahead of everything taken; `new_boot` when its boot differs from the last one
    /// (the device restarted: a new session, its seq starts again).
    Ahead { new_boot: bool },
    /// Behind the highest but inside the window and not taken before.
    Reordered,
    /// Taken before, or too old to tell: refused.
    Replayed,
}

impl ReplayWindow {
    /// Counters this far behind the highest are still told apart.
    pub const WIDTH: u64 = 64;

    /// The highest counter taken and the taken-bits (bit i: `highest - i`); None
    /// while nothing was taken.
    pub fn parts(&self) -> Option<(u64, u64)> {
        (self.seen != 0).then_some((self.highest, self.seen))
    }

    /// A window from `parts` (a snapshot's). `seen` must not be 0.
    pub fn from_parts(highest: u64, seen: u64) -> Self {
        debug_assert!(seen != 0, "checked by the snapshot decoder");
        ReplayWindow { highest, seen }
    }

    /// Checks `counter` and, unless it is a replay, marks it taken.
    #[inline]
    pub fn take(&mut self, counter: u64) -> Counter {
        if self.seen == 0 {
            *self = ReplayWindow {
                highest: counter,
                seen: 1,
            };
            return Counter::Ahead { new_boot: true };
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            let new_boot = counter >> 32 != self.highest >> 32;
            self.seen = if shift >= Self::WIDTH {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = counter;
            return Counter::Ahead { new_boot };
        }
        let behind = self.highest - counter;
        if behind >= Self::WIDTH || self.seen & (1 << behind) != 0 {
            return Counter::Replayed;
        }
        self.seen |= 1 << behind;
        Counter::Reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_keys_intervals_and_comments() {
        let r = Registry::parse(
            "# fleet\n\n1\n0x10 interval=1.5s  # a comment\n  7 key=00112233445566778899AABBCCDDEEFF interval=2m\n",
            2,
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.get(16).unwrap().interval_ds(), 15);
        let e = r.get(7).unwrap();
        assert_eq!(e.interval_ds(), 1200);
        assert_eq!(e.key().unwrap()[15], 0xFF);
        assert_eq!(r.keyed(), 1);
        assert_eq!(r.owned_by(0) + r.owned_by(1), 3);
        assert_eq!(r.first_without_key(), Some((1, 3)));
    }

    #[test]
    fn an_entrys_record_hint_leaves_what_the_file_said_alone() {
        let r = Registry::parse(
            "5 key=00112233445566778899AABBCCDDEEFF interval=6553.5s\n6\n",
            1,
        )
        .unwrap();
        let (e, f) = (r.get(5).unwrap(), r.get(6).unwrap());
        assert_eq!((e.record_hint(), f.record_hint()), (None, None));
        for slot in [0, 1, 4_000_000, (1 << 23) - 2] {
            e.note_record(slot);
            assert_eq!(e.record_hint(), Some(slot));
            assert_eq!((e.keyed(), e.local(), e.interval_ds()), (true, 0, u16::MAX));
            assert_eq!(e.key().unwrap()[15], 0xFF);
        }
        // A slot past the hint's 23 bits leaves none rather than a wrong one.
        e.note_record((1 << 23) - 1);
        assert_eq!(e.record_hint(), None);
        f.note_record(3);
        assert_eq!(
            (f.record_hint(), f.keyed(), f.local(), f.interval_ds()),
            (Some(3), false, 1, 0)
        );
    }

    #[test]
    fn every_malformed_line_is_refused_with_its_number() {
        let cases = [
            ("1\n0\n", "line 2: device id 0 is not valid"),
            ("x1\n", "line 1: `x1`: a device id is a number"),
            ("18446744073709551616\n", "line 1: `18446744073709551616`"),
            ("1 key=00\n", "line 1: key `00`: a key is 32 hex digits"),
            ("1 key=0011223344556677889900112233445g\n", "32 hex digits"),
            ("1\n\n3 interval=30\n", "line 3: interval `30`: give a unit"),
            ("1 interval=0s\n", "at least 100ms"),
            ("1 interval=150ms\n", "whole number of tenths"),
            ("1 interval=2h\n", "give a unit"),
            ("1 interval=7000s\n", "at most 6553.5s"),
            ("1 interval=-1s\n", "not a number"),
            ("1 name=x\n", "unknown field `name`"),
            ("1 interval=1s interval=2s\n", "`interval` given twice"),
            ("1 30s\n", "expected key=HEX or interval=DURATION"),
            (
                "5\n6\n5\n",
                "line 3: device 5 is listed twice (first on line 1)",
            ),
        ];
        for (text, want) in cases {
            let e = Registry::parse(text, 4).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn local_indexes_are_dense_per_owner() {
        let text: String = (1..=1000).map(|i| format!("{i}\n")).collect();
        let r = Registry::parse(&text, 3).unwrap();
        for shard in 0..3 {
            let mut locals: Vec<u32> = r
                .iter()
                .filter(|(id, _)| owner(*id, 3) == shard)
                .map(|(_, e)| e.local())
                .collect();
            locals.sort_unstable();
            assert_eq!(locals, (0..r.owned_by(shard)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn lookups_stop_at_the_home_line_unless_it_spills_and_still_find_every_device() {
        let mut rng = crate::TestRng(17);
        // Sizes at the lightest and the heaviest load the sizing gives (37%, 75%).
        for n in [12usize, 100, 3_000, 6_144, 49_152, 98_303] {
            let ids: Vec<u64> = (0..n)
                .map(|_| rng.below(u32::MAX as usize) as u64 + 1)
                .collect();
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let text: String = unique.iter().map(|i| format!("{i}\n")).collect();
            let r = Registry::parse(&text, 1).unwrap();
            for &id in &unique {
                assert_eq!(r.get(id).map(|e| e.id), Some(id), "n={n}");
            }
            let listed: std::collections::HashSet<u64> = unique.iter().copied().collect();
            for _ in 0..20_000 {
                let id = rng.below(u32::MAX as usize) as u64 + 1 + ((rng.below(2) as u64) << 33);
                assert_eq!(r.get(id).is_some(), listed.contains(&id), "n={n} id={id}");
            }
            let share = r.spill_share();
            assert!(share < 0.5, "n={n}: {share:.3} of lines spill");
        }
    }

    #[test]
    fn removed_ids_are_the_ones_the_next_load_lacks() {
        let a = Registry::parse("1\n2\n3\n", 1).unwrap();
        let b = Registry::parse("3\n4\n", 1).unwrap();
        assert_eq!(a.removed_in(&b), [1, 2]);
        assert!(b.removed_in(&b).is_empty());
    }

    #[test]
    fn the_window_takes_each_counter_once() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.take(10), Counter::Ahead { new_boot: true });
        assert_eq!(w.take(10), Counter::Replayed);
        assert_eq!(w.take(12), Counter::Ahead { new_boot: false });
        assert_eq!(w.take(11), Counter::Reordered);
        assert_eq!(w.take(11), Counter::Replayed);
        assert_eq!(w.take(12 + 63), Counter::Ahead { new_boot: false });
        // 12 is now 63 behind: still in the window, and taken.
        assert_eq!(w.take(12), Counter::Replayed);
        // 11 is 64 behind: too old to tell, refused.
        assert_eq!(w.take(11), Counter::Replayed);
        assert_eq!(w.take(1 << 32), Counter::Ahead { new_boot: true });
        assert_eq!(w.take(u64::MAX), Counter::Ahead { new_boot: true });
        assert_eq!(w.take(u64::MAX), Counter::Replayed);
    }

    #[test]
    fn property_the_window_matches_a_set_of_taken_counters() {
        let mut rng = crate::TestRng(9);
        for _ in 0..200 {
            let mut w = ReplayWindow::default();
            let mut taken = std::collections::BTreeSet::new();
            let mut top = 1000u64;
            for _ in 0..500 {
                top += rng.below(4) as u64;
                let c = top - rng.below(80) as u64;
                let highest = taken.iter().next_back().copied();
                let want_replay =
                    taken.contains(&c) || highest.is_some_and(|h| c + ReplayWindow::WIDTH <= h);
                let got = w.take(c);
                assert_eq!(got == Counter::Replayed, want_replay, "{c} {highest:?}");
                if !want_replay {
                    taken.insert(c);
                }
            }
        }
    }
}
