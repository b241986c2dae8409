//! Exact ack statuses for heartbeats handed to another shard.
//!
//! The shard that receives a datagram answers it with one ack datagram (PROTOCOL-v1),
//! but some of its frames may belong to devices another shard owns, and only the owner
//! knows whether it takes them: a replayed counter and a full table are the owner's to
//! find. So a frame that asks for an ack is handed over with a *ticket*; the owner
//! answers the ticket with a [`Verdict`] (the ack status it decided) on its hand-off
//! ring back, and the receiving shard holds the ack datagram ([`HeldAcks`]) until every
//! ticket of it is answered, writing each status into its place, then sends it.
//!
//! Hand-off messages are 32-byte units on the rings between shards. A handed frame is
//! the frame's first 32 bytes as received, with one change: its flag ACK_REQUESTED
//! says that bytes 28..32 hold a ticket (they held the low half of `sent_ns`, which the
//! owner does not use; a version-2 frame is handed with its boot there and bytes
//! 28..32 zero). A verdict is a unit of its own, told apart by its magic.
//!
//! Bounded: at most [`MAX_TICKETS`] tickets are out at once; a frame that would need
//! one more is handled as a frame its owner's ring refused (lost, answered busy, and
//! the owner told through the ring's drop count). The owner never drops a verdict (it
//! keeps those its ring back cannot take and sends them later), so every held ack
//! datagram is sent once its owners caught up, or counted as dropped at stop.

use crate::codec::{FLAG_ACK_REQUESTED, FRAME_BYTES, MAX_DATAGRAM_BYTES};

/// Most tickets out at once per receiving shard. An ack datagram is held from its
/// receipt until the owners of its handed frames have taken them (one iteration of
/// their loops, microseconds); 4,096 covers a burst of 128 datagrams of 32 handed
/// frames each asking for an ack while an owner is busy elsewhere.
pub const MAX_TICKETS: usize = 4096;

/// Magic of a verdict unit ("RBVD"): never a frame's ("RBHB").
const VERDICT_MAGIC: [u8; 4] = *b"RBVD";

/// The owner's answer to a ticket: the ack status it decided for the handed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ticket: u32,
    pub status: u16,
}

impl Verdict {
    pub fn encode(&self) -> [u8; FRAME_BYTES] {
        let mut out = [0u8; FRAME_BYTES];
        out[..4].copy_from_slice(&VERDICT_MAGIC);
        out[4..8].copy_from_slice(&self.ticket.to_le_bytes());
        out[8..10].copy_from_slice(&self.status.to_le_bytes());
        out
    }

    /// The verdict a hand-off unit holds; None for a handed frame.
    pub fn decode(unit: &[u8; FRAME_BYTES]) -> Option<Verdict> {
        (unit[..4] == VERDICT_MAGIC).then(|| Verdict {
            ticket: u32::from_le_bytes(unit[4..8].try_into().expect("4 bytes")),
            status: u16::from_le_bytes(unit[8..10].try_into().expect("2 bytes")),
        })
    }
}

/// `frame` as handed over: with `ticket` when its sender waits for an answer.
pub fn stamp(frame: &[u8; FRAME_BYTES], ticket: Option<u32>) -> [u8; FRAME_BYTES] {
    let mut out = *frame;
    match ticket {
        Some(t) => {
            out[7] |= FLAG_ACK_REQUESTED;
            out[28..32].copy_from_slice(&t.to_le_bytes());
        }
        None => out[7] &= !FLAG_ACK_REQUESTED,
    }
    out
}

/// The ticket a handed frame carries, if any.
pub fn ticket_of(frame: &[u8; FRAME_BYTES]) -> Option<u32> {
    (frame[7] & FLAG_ACK_REQUESTED != 0)
        .then(|| u32::from_le_bytes(frame[28..32].try_into().expect("4 bytes")))
}

/// Most ack datagrams held at once per receiving shard: their bytes are one array
/// (`MAX_HOLDS` × 2 KiB, resident only as far as it is used).
pub const MAX_HOLDS: usize = 512;

/// The ack (32 or 64 bytes, by its version field) at byte `at` of `acks`.
pub fn ack_slice(acks: &mut [u8], at: usize) -> Option<&mut [u8]> {
    let len = match acks.get(at + 4..at + 6)? {
        [2, 0] => crate::codec::FRAME_V2_BYTES,
        _ => FRAME_BYTES,
    };
    acks.get_mut(at..at + len)
}

/// One held ack datagram: where it goes, its length and the tickets still out (its
/// bytes are its slot of `HeldAcks::bytes`).
struct Hold<D> {
    to: D,
    len: u16,
    pending: u32,
}

/// A receiving shard's ack datagrams waiting for their owners' verdicts, and those
/// ready to send. `D` is the engine's destination (a socket address). Everything is
/// sized at creation: holding and sending allocate nothing.
pub struct HeldAcks<D> {
    /// Ticket → (its hold, the byte offset of its frame's ack in the hold).
    tickets: slab::Slab<(u32, u32)>,
    holds: slab::Slab<Hold<D>>,
    /// Hold `i`'s bytes are `bytes[i * MAX_DATAGRAM_BYTES..][..len]`.
    bytes: Vec<u8>,
    /// Holds whose every ticket is answered, to send.
    ready: Vec<u32>,
}

impl<D> Default for HeldAcks<D> {
    fn default() -> Self {
        HeldAcks {
            tickets: slab::Slab::with_capacity(MAX_TICKETS),
            holds: slab::Slab::with_capacity(MAX_HOLDS),
            // Zeroed, so the allocator maps it lazily: untouched slots cost no memory.
            bytes: vec![0; MAX_HOLDS * MAX_DATAGRAM_BYTES],
            ready: Vec::with_capacity(MAX_HOLDS),
        }
    }
}

impl<D> HeldAcks<D> {
    /// The hold the next [`HeldAcks::hold`] creates (the tickets of a datagram are
    /// issued for it while the datagram is read, before its acks are complete); None
    /// when [`MAX_HOLDS`] are held.
    pub fn next_hold(&self) -> Option<u32> {
        (self.holds.len() < MAX_HOLDS).then(|| self.holds.vacant_key() as u32)
    }

    /// A ticket for the frame whose ack sits at byte `at` of hold `hold`'s acks; None
    /// when [`MAX_TICKETS`] are out, or when no hold is free (`hold` None).
    pub fn issue(&mut self, hold: Option<u32>, at: usize) -> Option<u32> {
        let hold = hold?;
        (self.tickets.len() < MAX_TICKETS).then(|| self.tickets.insert((hold, at as u32)) as u32)
    }

    /// Takes back a ticket whose frame could not be handed over after all.
    pub fn cancel(&mut self, ticket: u32) {
        self.tickets.try_remove(ticket as usize);
    }

    /// Holds the ack datagram `acks` for `to` until its `pending` tickets (issued for
    /// [`HeldAcks::next_hold`], which must have been Some) are answered.
    pub fn hold(&mut self, to: D, acks: &[u8], pending: u32) {
        debug_assert!(pending > 0 && acks.len() <= MAX_DATAGRAM_BYTES);
        let key = self.holds.insert(Hold {
            to,
            len: acks.len() as u16,
            pending,
        });
        self.bytes[key * MAX_DATAGRAM_BYTES..][..acks.len()].copy_from_slice(acks);
    }

    /// Applies an owner's verdict: `restatus` writes a refusal's status into its frame's
    /// ack (and, for version 2, its tag anew); the datagram is ready once its last
    /// ticket is answered. A verdict for no ticket out is ignored and returns false.
    pub fn resolve(&mut self, v: Verdict, restatus: impl FnOnce(&mut [u8], u16)) -> bool {
        let Some((hold, at)) = self.tickets.try_remove(v.ticket as usize) else {
            return false;
        };
        let Some(h) = self.holds.get_mut(hold as usize) else {
            return false;
        };
        if v.status != crate::codec::ACK_ACCEPTED {
            let acks = &mut self.bytes[hold as usize * MAX_DATAGRAM_BYTES..][..h.len as usize];
            if let Some(ack) = ack_slice(acks, at as usize) {
                restatus(ack, v.status);
            }
        }
        h.pending -= 1;
        if h.pending == 0 {
            self.ready.push(hold);
        }
        true
    }

    /// Whether any ack datagram is ready to send.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Hands each ready ack datagram to `send`, and lets its hold go.
    pub fn send_ready(&mut self, mut send: impl FnMut(&D, &[u8])) {
        for hold in self.ready.drain(..) {
            let h = self.holds.remove(hold as usize);
            send(
                &h.to,
                &self.bytes[hold as usize * MAX_DATAGRAM_BYTES..][..h.len as usize],
            );
        }
    }

    /// Ack datagrams still waiting for a verdict, and their bytes.
    pub fn waiting(&self) -> (usize, usize) {
        (
            self.holds.len() - self.ready.len(),
            self.holds
                .iter()
                .filter(|(_, h)| h.pending > 0)
                .map(|(_, h)| h.len as usize)
                .sum(),
        )
    }

    /// Tickets out.
    pub fn tickets_out(&self) -> usize {
        self.tickets.len()
    }
}

/// Tickets of TCP frames carry this bit (UDP tickets never reach it).
pub const STREAM_TICKET: u32 = 1 << 31;

/// No ticket (an empty chain's ends, a chain's last ticket's `next`).
const NONE: u16 = u16::MAX;
const _: () = assert!(MAX_TICKETS < NONE as usize);
/// A ticket whose connection closed: its verdict, when it comes, is let go.
const ORPHAN: u64 = u64::MAX;

/// The tickets of one TCP connection that are not yet settled, oldest first (a list
/// through [`StreamHolds`]' entries: 4 bytes in the connection).
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    head: u16,
    tail: u16,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: NONE,
            tail: NONE,
        }
    }
}

/// An owner's verdict on a TCP ack, for the engine to write into the ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ticket: u32,
    /// The connection (the engine's packed id).
    pub conn: u64,
    /// The ack's position in the connection's ack stream (bytes, modulo 2^32: a
    /// connection's queue is far shorter).
    pub at: u32,
    pub status: u16,
}

struct StreamTicket {
    /// The connection (the engine's packed id), or `ORPHAN`.
    conn: u64,
    /// The ack's position in the connection's ack stream (bytes since it opened,
    /// modulo 2^32).
    at: u32,
    next: u16,
    answered: bool,
}

/// Tickets of TCP frames handed to their owners. Acks leave a connection in order, so
/// a connection's acks are written up to its oldest unanswered ticket's ack and wait
/// behind it (the engine keeps them in the connection's ack queue); answers that come
/// out of order are written into their acks at once and settle when those before
/// them do. At most [`MAX_TICKETS`] out per shard; sized at creation.
pub struct StreamHolds {
    tickets: slab::Slab<StreamTicket>,
    /// Verdicts for the engine to apply.
    answered: Vec<Answer>,
}

impl Default for StreamHolds {
    fn default() -> Self {
        StreamHolds {
            tickets: slab::Slab::with_capacity(MAX_TICKETS),
            answered: Vec::with_capacity(MAX_TICKETS),
        }
    }
}

impl StreamHolds {
    /// Whether a ticket can be issued now.
    pub fn has_room(&self) -> bool {
        self.tickets.len() < MAX_TICKETS
    }

    /// A ticket (with [`STREAM_TICKET`] set) for the ack at position `at` of connection
    /// `conn`'s ack stream, appended to its chain; None when [`MAX_TICKETS`] are out.
    pub fn issue(&mut self, chain: &mut Chain, conn: u64, at: u32) -> Option<u32> {
        if !self.has_room() {
            return None;
        }
        let key = self.tickets.insert(StreamTicket {
            conn,
            at,
            next: NONE,
            answered: false,
        }) as u16;
        match chain.tail {
            NONE => chain.head = key,
            tail => self.tickets[tail as usize].next = key,
        }
        chain.tail = key;
        Some(key as u32 | STREAM_TICKET)
    }

    /// Takes an owner's verdict: queued for the engine (`swap_answered`), which writes
    /// it into its ack and then marks the ticket answered (`mark_answered`), unless its
    /// connection closed meanwhile. False for a verdict of no ticket out.
    pub fn resolve(&mut self, v: Verdict) -> bool {
        let key = (v.ticket & !STREAM_TICKET) as usize;
        let Some(t) = self.tickets.get_mut(key) else {
            return false;
        };
        if t.answered {
            return false;
        }
        if t.conn == ORPHAN {
            self.tickets.remove(key);
            return true;
        }
        self.answered.push(Answer {
            ticket: key as u32,
            conn: t.conn,
            at: t.at,
            status: v.status,
        });
        true
    }

    /// The verdict of `ticket` is written into its ack: acks up to the next unanswered
    /// ticket's may go (`settle`). A ticket whose connection closed is let go.
    pub fn mark_answered(&mut self, ticket: u32) {
        let key = ticket as usize;
        match self.tickets.get_mut(key) {
            Some(t) if t.conn == ORPHAN => {
                self.tickets.remove(key);
            }
            Some(t) => t.answered = true,
            None => {}
        }
    }

    /// Whether answers wait for the engine.
    pub fn has_answers(&self) -> bool {
        !self.answered.is_empty()
    }

    /// Moves the verdicts to apply into `out` (empty: the two swap, each keeping its
    /// capacity, so the engine can apply them while it holds `self` again).
    pub fn swap_answered(&mut self, out: &mut Vec<Answer>) {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut self.answered, out);
    }

    /// Lets the answered tickets at the front of `chain` go; returns the position of
    /// the oldest unanswered ticket's ack (acks from there on wait), None when none is.
    pub fn settle(&mut self, chain: &mut Chain) -> Option<u32> {
        while chain.head != NONE {
            let t = &self.tickets[chain.head as usize];
            if !t.answered {
                return Some(t.at);
            }
            let next = t.next;
            self.tickets.remove(chain.head as usize);
            chain.head = next;
        }
        chain.tail = NONE;
        None
    }

    /// The position of the oldest unanswered ticket's ack in `chain` (as `settle`
    /// last left it).
    pub fn waiting_from(&self, chain: &Chain) -> Option<u32> {
        (chain.head != NONE).then(|| self.tickets[chain.head as usize].at)
    }

    /// The connection closed: its tickets are let go (answered ones now, the others
    /// when their verdicts come, so a late verdict never meets a reused ticket).
    pub fn abandon(&mut self, chain: &mut Chain) {
        let mut key = chain.head;
        while key != NONE {
            let t = &mut self.tickets[key as usize];
            let next = t.next;
            if t.answered {
                self.tickets.remove(key as usize);
            } else {
                t.conn = ORPHAN;
            }
            key = next;
        }
        *chain = Chain::default();
    }

    /// Tickets out (answered or not, until settled).
    pub fn tickets_out(&self) -> usize {
        self.tickets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_never_a_frame_and_round_trips() {
        let v = Verdict {
            ticket: 4095,
            status: crate::codec::ACK_REPLAYED,
        };
        assert_eq!(Verdict::decode(&v.encode()), Some(v));
        let hb = crate::codec::FrameFields::heartbeat(42, 7, 100, 1).to_bytes();
        let hb: [u8; FRAME_BYTES] = hb[..].try_into().unwrap();
        assert_eq!(Verdict::decode(&hb), None);
    }

    #[test]
    fn a_stamp_says_whether_a_ticket_is_there() {
        let mut f = crate::codec::FrameFields::heartbeat(42, 7, 100, u64::MAX);
        f.flags = FLAG_ACK_REQUESTED;
        let b: [u8; FRAME_BYTES] = f.to_bytes()[..].try_into().unwrap();
        assert_eq!(ticket_of(&stamp(&b, Some(17))), Some(17));
        assert_eq!(ticket_of(&stamp(&b, None)), None, "no ticket: flag cleared");
        assert_eq!(
            stamp(&b, Some(17))[..28],
            b[..28],
            "the frame's fields kept"
        );
    }

    #[test]
    fn an_ack_datagram_is_ready_once_its_last_ticket_is_answered() {
        let mut held: HeldAcks<&str> = HeldAcks::default();
        let acks: Vec<u8> = (0..3)
            .flat_map(|i| {
                let hb = crate::codec::FrameFields::heartbeat(i + 1, 1, 100, 0).to_bytes();
                let hb = crate::codec::decode_heartbeat(hb[..].try_into().unwrap()).unwrap();
                let mut a = [0u8; FRAME_BYTES];
                crate::codec::encode_ack(&hb, 100, &mut a);
                a
            })
            .collect();
        let hold = held.next_hold();
        assert_eq!(hold, Some(0));
        let t1 = held.issue(hold, 32).unwrap();
        let t2 = held.issue(hold, 64).unwrap();
        held.hold("gw", &acks, 2);
        let set = |a: &mut [u8], s: u16| a[20..22].copy_from_slice(&s.to_le_bytes());
        assert!(held.resolve(
            Verdict {
                ticket: t2,
                status: crate::codec::ACK_TABLE_FULL
            },
            set
        ));
        assert!(!held.has_ready(), "one ticket still out");
        assert!(held.resolve(
            Verdict {
                ticket: t1,
                status: 0
            },
            set
        ));
        assert!(
            !held.resolve(
                Verdict {
                    ticket: t1,
                    status: 0
                },
                set
            ),
            "answered once"
        );
        let mut sent = Vec::new();
        held.send_ready(|to, a| sent.push((*to, a.to_vec())));
        assert_eq!(sent.len(), 1);
        let statuses: Vec<u16> = sent[0]
            .1
            .chunks(FRAME_BYTES)
            .map(|a| u16::from_le_bytes([a[20], a[21]]))
            .collect();
        assert_eq!(statuses, [0, 0, crate::codec::ACK_TABLE_FULL]);
        assert_eq!((held.waiting(), held.tickets_out()), ((0, 0), 0));
    }

    #[test]
    fn tickets_are_bounded() {
        let mut held: HeldAcks<()> = HeldAcks::default();
        let hold = held.next_hold();
        for i in 0..MAX_TICKETS {
            assert!(held.issue(hold, i).is_some());
        }
        assert_eq!(held.issue(hold, 0), None);
        held.cancel(0);
        assert!(
            held.issue(hold, 0).is_some(),
            "a cancelled ticket frees its place"
        );
    }

    #[test]
    fn a_connections_acks_wait_behind_its_oldest_unanswered_ticket() {
        let mut st = StreamHolds::default();
        let mut chain = Chain::default();
        let t1 = st.issue(&mut chain, 7, 32).unwrap();
        let t2 = st.issue(&mut chain, 7, 64).unwrap();
        assert!(t1 & STREAM_TICKET != 0);
        assert_eq!(st.settle(&mut chain), Some(32));
        // The second is answered first: written, but still waits behind the first.
        let verdict = |ticket, status| Verdict { ticket, status };
        assert!(st.resolve(verdict(t2, 5)));
        let mut got = Vec::new();
        st.swap_answered(&mut got);
        let want = Answer {
            ticket: t2 & !STREAM_TICKET,
            conn: 7,
            at: 64,
            status: 5,
        };
        assert_eq!(got, [want]);
        st.mark_answered(want.ticket);
        assert_eq!(st.settle(&mut chain), Some(32));
        assert!(st.resolve(verdict(t1, 0)));
        assert_eq!(st.settle(&mut chain), Some(32), "queued, not yet written");
        st.mark_answered(t1 & !STREAM_TICKET);
        assert!(!st.resolve(verdict(t1, 0)), "answered once");
        assert_eq!(st.settle(&mut chain), None, "everything may go");
        assert_eq!(st.tickets_out(), 0);
    }

    #[test]
    fn a_closed_connections_late_verdicts_are_let_go() {
        let mut st = StreamHolds::default();
        let mut chain = Chain::default();
        let verdict = |ticket, status| Verdict { ticket, status };
        let t1 = st.issue(&mut chain, 7, 0).unwrap();
        let t2 = st.issue(&mut chain, 7, 32).unwrap();
        let t3 = st.issue(&mut chain, 7, 64).unwrap();
        assert!(st.resolve(verdict(t2, 0)));
        let mut queued = Vec::new();
        st.swap_answered(&mut queued);
        st.mark_answered(queued[0].ticket);
        assert!(st.resolve(verdict(t3, 0)));
        st.abandon(&mut chain);
        assert_eq!(
            st.tickets_out(),
            2,
            "those not written wait for their verdicts"
        );
        let mut other = Chain::default();
        let t4 = st.issue(&mut other, 8, 0).unwrap();
        assert!(
            t4 != t1 && t4 != t3,
            "never reused while a verdict may come"
        );
        assert!(st.resolve(verdict(t1, 0)), "t1's verdict let go at once");
        let mut got = Vec::new();
        st.swap_answered(&mut got);
        assert_eq!(got.len(), 1, "t3's, given before the close: {got:?}");
        st.mark_answered(got[0].ticket);
        assert_eq!(st.tickets_out(), 1, "connection 8's");
    }
}
