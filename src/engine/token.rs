//! The one encoding of io_uring `user_data`: an operation kind in the top byte and a
//! typed index in the low 32 bits. 0 is reserved (never submitted) so a zeroed CQE can
//! never be mistaken for an operation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The shard's multishot receive.
    Recv,
    /// An ack send from send slot `n`.
    Send(u32),
    /// The read on the shard's wake-up eventfd.
    Wake,
}

const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;

/// Reserved: never used as user_data.
pub const RESERVED: u64 = 0;

impl Token {
    pub fn encode(self) -> u64 {
        match self {
            Token::Recv => KIND_RECV << KIND_SHIFT,
            Token::Send(slot) => (KIND_SEND << KIND_SHIFT) | slot as u64,
            Token::Wake => KIND_WAKE << KIND_SHIFT,
        }
    }

    pub fn decode(user_data: u64) -> Option<Token> {
        let index = (user_data & 0xFFFF_FFFF) as u32;
        match user_data >> KIND_SHIFT {
            KIND_RECV if index == 0 => Some(Token::Recv),
            KIND_SEND => Some(Token::Send(index)),
            KIND_WAKE if index == 0 => Some(Token::Wake),
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
        ] {
            assert_ne!(t.encode(), RESERVED);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(RESERVED), None);
        assert_eq!(Token::decode(u64::MAX), None);
        assert_eq!(Token::decode((KIND_RECV << KIND_SHIFT) | 5), None);
    }
}
