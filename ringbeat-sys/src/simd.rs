//! SipHash-2-4 with 128-bit output over 48-byte messages, eight at a time in the CPU's
//! 256-bit vector unit (AVX2), for the core's version-2 tag checks.
//!
//! Why here and by hand: the core checks a datagram's tags four at a time
//! (`ringbeat_core::siphash::tags48`), portable code the compiler keeps in scalar
//! registers (about 300 operations per tag, ~30 ns on the reference machine). With AVX2
//! one instruction does a step of all four lanes, but only behind a runtime check of the
//! CPU (the binaries run on any x86_64), which needs unsafe code, so it lives in this
//! crate; no crate offers a multi-message SipHash. The algorithm is the reference one
//! (the core's tests and this module's hold it equal to the `siphasher` crate's output).
//! Elsewhere (ARM64, x86_64 without AVX2) `tags48x4` returns None and the caller uses
//! the portable code.

/// The tags of eight 48-byte messages under their 16-byte keys, or None when this CPU
/// has no AVX2. Eight: two registers of four lanes, computed side by side, since one
/// alone leaves the vector unit waiting on each round's chain of dependent steps.
#[inline]
pub fn tags48x8(keys: [&[u8; 16]; 8], messages: [&[u8; 48]; 8]) -> Option<[[u8; 16]; 8]> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), all `avx2::tags48x8`
            // requires; it reads only through the references it is given.
            return Some(unsafe { avx2::tags48x8(keys, messages) });
        }
    }
    let _ = (keys, messages);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Four u64 lanes, lane `l` = `f(l)`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(f: impl Fn(usize) -> u64) -> __m256i {
        _mm256_set_epi64x(f(3) as i64, f(2) as i64, f(1) as i64, f(0) as i64)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(v: u64) -> __m256i {
        _mm256_set1_epi64x(v as i64)
    }

    /// Rotates each 64-bit lane left by `R` (`L` = 64 − `R`).
    macro_rules! rotl {
        ($x:expr, $r:literal, $l:literal) => {
            _mm256_or_si256(_mm256_slli_epi64::<$r>($x), _mm256_srli_epi64::<$l>($x))
        };
    }

    struct State {
        v0: __m256i,
        v1: __m256i,
        v2: __m256i,
        v3: __m256i,
        /// Byte shuffle that rotates each 64-bit lane left by 16 bits.
        rot16: __m256i,
    }

    impl State {
        #[inline]
        #[target_feature(enable = "avx2")]
        fn round(&mut self) {
            self.v0 = _mm256_add_epi64(self.v0, self.v1);
            self.v1 = _mm256_xor_si256(rotl!(self.v1, 13, 51), self.v0);
            // Rotating by 32 swaps each lane's halves.
            self.v0 = _mm256_shuffle_epi32::<0b10_11_00_01>(self.v0);
            self.v2 = _mm256_add_epi64(self.v2, self.v3);
            self.v3 = _mm256_xor_si256(_mm256_shuffle_epi8(self.v3, self.rot16), self.v2);
            self.v0 = _mm256_add_epi64(self.v0, self.v3);
            self.v3 = _mm256_xor_si256(rotl!(self.v3, 21, 43), self.v0);
            self.v2 = _mm256_add_epi64(self.v2, self.v1);
            self.v1 = _mm256_xor_si256(rotl!(self.v1, 17, 47), self.v2);
            self.v2 = _mm256_shuffle_epi32::<0b10_11_00_01>(self.v2);
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn absorb(&mut self, m: __m256i) {
            self.v3 = _mm256_xor_si256(self.v3, m);
            self.round();
            self.round();
            self.v0 = _mm256_xor_si256(self.v0, m);
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn squeeze(&mut self) -> [u64; 4] {
            for _ in 0..4 {
                self.round();
            }
            let x = _mm256_xor_si256(
                _mm256_xor_si256(self.v0, self.v1),
                _mm256_xor_si256(self.v2, self.v3),
            );
            [
                _mm256_extract_epi64::<0>(x) as u64,
                _mm256_extract_epi64::<1>(x) as u64,
                _mm256_extract_epi64::<2>(x) as u64,
                _mm256_extract_epi64::<3>(x) as u64,
            ]
        }
    }

    /// Callers outside AVX2 code must check that the CPU has it (hence `unsafe` at
    /// their call).
    #[target_feature(enable = "avx2")]
    pub(super) fn tags48x8(keys: [&[u8; 16]; 8], messages: [&[u8; 48]; 8]) -> [[u8; 16]; 8] {
        let word =
            |b: &[u8], i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8"));
        let rot16 = _mm256_setr_epi8(
            6, 7, 0, 1, 2, 3, 4, 5, 14, 15, 8, 9, 10, 11, 12, 13, //
            6, 7, 0, 1, 2, 3, 4, 5, 14, 15, 8, 9, 10, 11, 12, 13,
        );
        // Lanes 0-3 in `a`, 4-7 in `b`.
        let start = |half: usize| {
            let k0 = lanes(|l| word(keys[4 * half + l], 0));
            let k1 = lanes(|l| word(keys[4 * half + l], 1));
            State {
                v0: _mm256_xor_si256(k0, splat(0x736f_6d65_7073_6575)),
                // 128-bit output: v1 starts xored with 0xee.
                v1: _mm256_xor_si256(k1, splat(0x646f_7261_6e64_6f6d ^ 0xee)),
                v2: _mm256_xor_si256(k0, splat(0x6c79_6765_6e65_7261)),
                v3: _mm256_xor_si256(k1, splat(0x7465_6462_7974_6573)),
                rot16,
            }
        };
        let (mut a, mut b) = (start(0), start(1));
        for w in 0..6 {
            a.absorb(lanes(|l| word(messages[l], w)));
            b.absorb(lanes(|l| word(messages[4 + l], w)));
        }
        // The last block: the length (48) in the top byte, no bytes left over.
        let last = splat(48u64 << 56);
        a.absorb(last);
        b.absorb(last);
        let (mut low, mut high) = ([0u64; 8], [0u64; 8]);
        a.v2 = _mm256_xor_si256(a.v2, splat(0xee));
        b.v2 = _mm256_xor_si256(b.v2, splat(0xee));
        let (la, lb) = (a.squeeze(), b.squeeze());
        low[..4].copy_from_slice(&la);
        low[4..].copy_from_slice(&lb);
        a.v1 = _mm256_xor_si256(a.v1, splat(0xdd));
        b.v1 = _mm256_xor_si256(b.v1, splat(0xdd));
        let (ha, hb) = (a.squeeze(), b.squeeze());
        high[..4].copy_from_slice(&ha);
        high[4..].copy_from_slice(&hb);
        std::array::from_fn(|l| {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&low[l].to_le_bytes());
            t[8..].copy_from_slice(&high[l].to_le_bytes());
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `siphasher` crate's SipHash-2-4-128, the reference.
    fn reference(key: &[u8; 16], m: &[u8; 48]) -> [u8; 16] {
        siphasher::sip128::SipHasher24::new_with_key(key)
            .hash(m)
            .as_bytes()
    }

    #[test]
    fn eight_lanes_equal_the_reference() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 24) as u8
        };
        let (key, msg) = ([0u8; 16], [0u8; 48]);
        let Some(_) = tags48x8([&key; 8], [&msg; 8]) else {
            // No AVX2 here: the caller's portable code runs; nothing to compare.
            assert!(!cfg!(target_arch = "x86_64") || !std::arch::is_x86_feature_detected!("avx2"));
            return;
        };
        for _ in 0..2_000 {
            let keys: [[u8; 16]; 8] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
            let msgs: [[u8; 48]; 8] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
            let got = tags48x8(
                std::array::from_fn(|l| &keys[l]),
                std::array::from_fn(|l| &msgs[l]),
            )
            .unwrap();
            for l in 0..8 {
                assert_eq!(got[l], reference(&keys[l], &msgs[l]), "lane {l}");
            }
        }
    }
}
