//! Which shard owns a device. One function, used by the shards, by the generator of
//! the kernel steering program (`bpf::steering_program`) and by the
//! bench harness; a test checks the BPF program agrees by sending real datagrams.
//!
//! It is written in the 32-bit operations classic BPF offers: BPF loads words
//! big-endian, so the device id's two little-endian 32-bit halves are read byte-swapped.

/// Multiplier of the 32-bit mix (2^32 / golden ratio, odd).
pub const OWNER_MIX: u32 = 0x9E37_79B1;

/// The shard (0 .. shards) that owns `device_id`.
#[inline]
pub fn owner(device_id: u64, shards: u32) -> u32 {
    debug_assert!(shards > 0);
    if shards == 1 {
        return 0;
    }
    let bytes = device_id.to_le_bytes();
    // What BPF_LD|BPF_W|BPF_ABS reads at payload offsets 8 and 12.
    let w0 = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let w1 = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    // Fold high bits down first: the byte-swapped load puts a small id's bits at the
    // top, and the multiply only carries bits upward.
    let mut x = w0 ^ w1;
    x ^= x >> 16;
    x = x.wrapping_mul(OWNER_MIX);
    x ^= x >> 16;
    x % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_spreads_sequential_ids_evenly() {
        for shards in [2u32, 3, 4, 7, 16] {
            let mut counts = vec![0u32; shards as usize];
            for id in 1..=100_000u64 {
                counts[owner(id, shards) as usize] += 1;
            }
            let ideal = 100_000 / shards;
            for c in counts {
                assert!(
                    c > ideal * 9 / 10 && c < ideal * 11 / 10,
                    "{shards}: {c} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn owner_is_stable() {
        // Pinned values (computed once from the published definition): changing the
        // function silently re-homes every device, so this must fail when it changes.
        assert_eq!(owner(1, 1), 0);
        let got: Vec<u32> = (1..=8u64).map(|id| owner(id, 4)).collect();
        assert_eq!(got, [1, 3, 1, 2, 0, 2, 3, 1]);
        let got: Vec<u32> = [1, 2, 3, 1 << 40, 0xDEAD_BEEF_CAFE]
            .into_iter()
            .map(|id| owner(id, 7))
            .collect();
        assert_eq!(got, [6, 4, 2, 1, 0]);
    }
}
