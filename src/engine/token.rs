//! The one encoding of io_uring `user_data`: an operation kind in the top byte and a
//! typed index in the low 32 bits. 0 is reserved (never submitted) so a zeroed CQE can
//! never be mistaken for an operation.

use super::tcp::ConnId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The shard's multishot receive.
    Recv,
    /// An ack send from send slot `n`.
    Send(u32),
    /// The read on the shard's wake-up eventfd.
    Wake,
    /// The multishot accept on the shard's TCP listener.
    Accept,
    /// The multishot receive of a TCP connection (slot and 24-bit generation).
    TcpRecv(ConnId),
    /// A cancel request (its own completion says nothing the engine needs).
    Cancel,
}

// TCP writes carry the system layer's own user_data (`sys::uring::STREAM_SEND_MARK`
// in the top byte), recognised before these.
const _: () = assert!(KIND_CANCEL < crate::sys::uring::STREAM_SEND_MARK);

const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_ACCEPT: u64 = 4;
const KIND_TCP_RECV: u64 = 5;
const KIND_CANCEL: u64 = 6;
const GENERATION_SHIFT: u32 = 32;

/// Reserved: never used as user_data.
pub const RESERVED: u64 = 0;

impl Token {
    pub fn encode(self) -> u64 {
        match self {
            Token::Recv => KIND_RECV << KIND_SHIFT,
            Token::Send(slot) => (KIND_SEND << KIND_SHIFT) | slot as u64,
            Token::Wake => KIND_WAKE << KIND_SHIFT,
            Token::Accept => KIND_ACCEPT << KIND_SHIFT,
            Token::TcpRecv(id) => {
                debug_assert!(id.generation < 1 << 24);
                (KIND_TCP_RECV << KIND_SHIFT)
                    | (id.generation as u64) << GENERATION_SHIFT
                    | id.key as u64
            }
            Token::Cancel => KIND_CANCEL << KIND_SHIFT,
        }
    }

    pub fn decode(user_data: u64) -> Option<Token> {
        let index = (user_data & 0xFFFF_FFFF) as u32;
        match user_data >> KIND_SHIFT {
            KIND_RECV if index == 0 => Some(Token::Recv),
            KIND_SEND => Some(Token::Send(index)),
            KIND_WAKE if index == 0 => Some(Token::Wake),
            KIND_ACCEPT if user_data << 8 == 0 => Some(Token::Accept),
            KIND_TCP_RECV => Some(Token::TcpRecv(ConnId {
                key: index,
                generation: ((user_data >> GENERATION_SHIFT) & 0xFF_FFFF) as u32,
            })),
            KIND_CANCEL if user_data << 8 == 0 => Some(Token::Cancel),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reserved() {
        for t in [
            Token::Recv,
            Token::Wake,
            Token::Send(0),
            Token::Send(7),
            Token::Send(u32::MAX),
            Token::Accept,
            Token::Cancel,
            Token::TcpRecv(ConnId {
                key: 0,
                generation: 1,
            }),
            Token::TcpRecv(ConnId {
                key: u32::MAX,
                generation: 0xFF_FFFF,
            }),
        ] {
            assert_ne!(t.encode(), RESERVED);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(RESERVED), None);
        assert_eq!(Token::decode(u64::MAX), None);
        assert_eq!(Token::decode((KIND_RECV << KIND_SHIFT) | 5), None);
    }
}
