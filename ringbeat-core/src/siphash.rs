//! SipHash-2-4 with 128-bit output over exactly 48 bytes (a version-2 frame's tagged
//! part), for several frames at once.
//!
//! The `siphasher` crate computes the tag of one message at a time, as a streaming
//! hasher: its rounds form one dependency chain, so a 4-wide core sits mostly idle, and
//! the general length handling costs on every call. A datagram brings up to 32 frames
//! to check at once, and no crate offers a multi-message SipHash, so this module runs
//! `LANES` independent messages through the same rounds side by side (the compiler
//! keeps the lanes in vector registers where it can). It is the reference algorithm,
//! specialised to a 48-byte message; tests hold its output equal to the crate's.

use crate::codec::Key;

const INIT: [u64; 4] = [
    0x736f_6d65_7073_6575,
    0x646f_7261_6e64_6f6d,
    0x6c79_6765_6e65_7261,
    0x7465_6462_7974_6573,
];

/// The state of `L` SipHash computations, one lane each. (Lanes are indexed in step
/// across the four words on purpose: the loops are what the compiler vectorises.)
#[allow(clippy::needless_range_loop)]
struct State<const L: usize> {
    v0: [u64; L],
    v1: [u64; L],
    v2: [u64; L],
    v3: [u64; L],
}

#[allow(clippy::needless_range_loop)]
impl<const L: usize> State<L> {
    #[inline(always)]
    fn round(&mut self) {
        for l in 0..L {
            self.v0[l] = self.v0[l].wrapping_add(self.v1[l]);
            self.v1[l] = self.v1[l].rotate_left(13) ^ self.v0[l];
            self.v0[l] = self.v0[l].rotate_left(32);
            self.v2[l] = self.v2[l].wrapping_add(self.v3[l]);
            self.v3[l] = self.v3[l].rotate_left(16) ^ self.v2[l];
            self.v0[l] = self.v0[l].wrapping_add(self.v3[l]);
            self.v3[l] = self.v3[l].rotate_left(21) ^ self.v0[l];
            self.v2[l] = self.v2[l].wrapping_add(self.v1[l]);
            self.v1[l] = self.v1[l].rotate_left(17) ^ self.v2[l];
            self.v2[l] = self.v2[l].rotate_left(32);
        }
    }

    #[inline(always)]
    fn absorb(&mut self, m: [u64; L]) {
        for l in 0..L {
            self.v3[l] ^= m[l];
        }
        self.round();
        self.round();
        for l in 0..L {
            self.v0[l] ^= m[l];
        }
    }

    #[inline(always)]
    fn squeeze(&mut self) -> [u64; L] {
        for _ in 0..4 {
            self.round();
        }
        std::array::from_fn(|l| self.v0[l] ^ self.v1[l] ^ self.v2[l] ^ self.v3[l])
    }
}

/// The 16-byte SipHash-2-4-128 tag of each 48-byte message under its key, `L` at a time.
#[inline]
#[allow(clippy::needless_range_loop)]
pub fn tags48<const L: usize>(keys: [&Key; L], messages: [&[u8; 48]; L]) -> [[u8; 16]; L] {
    let k0: [u64; L] =
        std::array::from_fn(|l| u64::from_le_bytes(keys[l][..8].try_into().expect("8")));
    let k1: [u64; L] =
        std::array::from_fn(|l| u64::from_le_bytes(keys[l][8..].try_into().expect("8")));
    let mut s = State {
        v0: std::array::from_fn(|l| k0[l] ^ INIT[0]),
        // 128-bit output: v1 starts xored with 0xee.
        v1: std::array::from_fn(|l| k1[l] ^ INIT[1] ^ 0xee),
        v2: std::array::from_fn(|l| k0[l] ^ INIT[2]),
        v3: std::array::from_fn(|l| k1[l] ^ INIT[3]),
    };
    for w in 0..6 {
        s.absorb(std::array::from_fn(|l| {
            u64::from_le_bytes(messages[l][8 * w..8 * w + 8].try_into().expect("8"))
        }));
    }
    // The last block: the length (48) in the top byte, no bytes left over.
    s.absorb([48u64 << 56; L]);
    for l in 0..L {
        s.v2[l] ^= 0xee;
    }
    let low = s.squeeze();
    for l in 0..L {
        s.v1[l] ^= 0xdd;
    }
    let high = s.squeeze();
    std::array::from_fn(|l| {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&low[l].to_le_bytes());
        t[8..].copy_from_slice(&high[l].to_le_bytes());
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_to_the_crate_for_any_key_and_message() {
        let mut rng = crate::TestRng(21);
        for _ in 0..5_000 {
            let keys: [Key; 4] = std::array::from_fn(|_| {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&rng.next().to_le_bytes());
                k[8..].copy_from_slice(&rng.next().to_le_bytes());
                k
            });
            let msgs: [[u8; 48]; 4] = std::array::from_fn(|_| {
                let mut m = [0u8; 48];
                for c in m.chunks_mut(8) {
                    c.copy_from_slice(&rng.next().to_le_bytes());
                }
                m
            });
            let got = tags48::<4>(
                std::array::from_fn(|l| &keys[l]),
                std::array::from_fn(|l| &msgs[l]),
            );
            for l in 0..4 {
                let want = siphasher::sip128::SipHasher24::new_with_key(&keys[l])
                    .hash(&msgs[l])
                    .as_bytes();
                assert_eq!(got[l], want);
            }
            let one = tags48([&keys[0]], [&msgs[0]]);
            assert_eq!(one[0], got[0]);
        }
    }
}
