//! Authenticated (version-2) heartbeats through a shard core with a registry of keyed
//! devices. The input is read as a script of frames, so the fuzzer reaches right tags
//! (which random bytes never would): each step picks a device, a boot counter and a
//! seq close to earlier ones (replays, reordering, restarts), whether to tamper with the
//! frame, and how many steps share a datagram; raw input bytes are mixed in too.
//! Invariants: never a panic; every valid frame is accounted for (taken or refused by
//! reason); no (device, boot, seq) is ever acked as accepted twice; a wrong tag is
//! never accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::core::codec::{self, FrameFields, FLAG_ACK_REQUESTED, MAX_DATAGRAM_BYTES};
use ringbeat::core::memory::Heap;
use ringbeat::core::registry::Registry;
use ringbeat::core::shard::{CoreConfig, ShardCore};
use std::collections::HashSet;
use std::sync::Arc;

fn key(id: u64) -> codec::Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..].copy_from_slice(&(!id).to_le_bytes());
    k
}

fuzz_target!(|data: &[u8]| {
    // Devices 1..=6 keyed, 7 and 8 without a key.
    let text: String = (1..=8u64)
        .map(|id| {
            if id <= 6 {
                let hex: String = key(id).iter().map(|b| format!("{b:02x}")).collect();
                format!("{id} key={hex}\n")
            } else {
                format!("{id}\n")
            }
        })
        .collect();
    let registry = Arc::new(Registry::parse(&text, 1).unwrap());
    let mut core = ShardCore::<Heap>::new(
        CoreConfig {
            event_capacity: 256,
            ..CoreConfig::basic(0, 1, 64)
        },
        0,
    )
    .unwrap();
    core.set_registry(Some(registry), &[], 0)
        .expect("windows of a few devices");
    let mut accepted: HashSet<(u64, u32, u32)> = HashSet::new();
    let mut acks = [0u8; MAX_DATAGRAM_BYTES];
    let mut steps = data.chunks_exact(8);
    let mut now = 0u64;
    let mut datagrams = 0u64;
    loop {
        let mut dgram = Vec::new();
        let mut sent: Vec<(u64, u32, u32, bool)> = Vec::new();
        let Some(head) = steps.next() else { break };
        let count = 1 + head[0] as usize % 16;
        for _ in 0..count {
            let Some(s) = steps.next() else { break };
            if dgram.len() + 64 > MAX_DATAGRAM_BYTES {
                break;
            }
            let id = 1 + s[0] as u64 % 9; // 9: unknown
            let boot = (s[1] % 4) as u32;
            let seq = u16::from_le_bytes([s[2], s[3]]) as u32 % 200;
            let tamper = s[4] % 8 == 0;
            match s[5] % 6 {
                // Raw bytes from the input as one 32-byte unit.
                0 => {
                    let mut unit = [0u8; 32];
                    unit[..8].copy_from_slice(s);
                    dgram.extend_from_slice(&unit);
                }
                // Version 1.
                1 => {
                    let mut f = FrameFields::heartbeat(id, seq, 10, 0);
                    f.flags = FLAG_ACK_REQUESTED;
                    dgram.extend_from_slice(&f.to_bytes());
                }
                _ => {
                    let mut f = FrameFields::heartbeat(id, seq, 10, 0);
                    f.flags = FLAG_ACK_REQUESTED;
                    let mut out = [0u8; 64];
                    codec::encode_v2(&f, boot, &key(id), &mut out);
                    if tamper {
                        out[8 + s[6] as usize % 56] ^= 1 << (s[7] % 8);
                    }
                    // A tampered frame may no longer say version 2 (or be valid at all).
                    let still_v2 = codec::unit_version(out[..32].try_into().unwrap())
                        == Some(codec::VERSION_2);
                    dgram.extend_from_slice(&out);
                    if still_v2 {
                        sent.push((id, boot, seq, tamper));
                    }
                }
            }
        }
        let n = core.ingest_datagram(&dgram, now, &mut acks, |_, _, _| unreachable!("one shard"));
        datagrams += 1;
        assert!(n <= MAX_DATAGRAM_BYTES && n.is_multiple_of(32));
        // Every version-2 ack with status 0 carries a tag under the device's key, for a
        // counter never accepted before, from an untampered frame.
        let mut at = 0;
        while at < n {
            let unit: &[u8; 32] = acks[at..at + 32].try_into().unwrap();
            if codec::unit_version(unit) == Some(codec::VERSION_2) {
                let frame: &[u8; 64] = acks[at..at + 64].try_into().unwrap();
                let id = u64::from_le_bytes(frame[8..16].try_into().unwrap());
                let status = u16::from_le_bytes([frame[20], frame[21]]);
                if status == codec::ACK_ACCEPTED {
                    let (a, boot) = codec::decode_ack_v2(frame, &key(id)).expect("authentic ack");
                    assert!(
                        accepted.insert((id, boot, a.seq)),
                        "device {id} boot {boot} seq {} accepted twice",
                        a.seq
                    );
                    assert!(
                        sent.iter().any(|&(i, b, s, tampered)| {
                            (i, b, s) == (id, boot, a.seq) && !tampered
                        }),
                        "accepted: a tampered frame, or one never sent"
                    );
                }
                at += 64;
            } else {
                at += 32;
            }
        }
        now += 1;
        core.step(now, 16);
    }
    core.flush();
    let s = core.stats();
    assert_eq!(s.datagrams, datagrams);
    assert_eq!(
        s.frames_valid,
        s.heartbeats
            + s.table_full
            + s.unknown_device
            + s.auth_required
            + s.auth_failed
            + s.replayed
    );
    assert!(s.authenticated >= s.replayed);
});
