//! The classic BPF programs the server attaches to its sockets, produced here as plain
//! data (the system layer only attaches them): the SO_REUSEPORT steering program,
//! which computes [`owner`] in the kernel, and the optional prefilter. A small
//! interpreter ([`run`]) executes them in user space, so tests prove the steering
//! program equal to `owner()` for any id and shard count without a kernel.
//!
//! The opcode constants are the kernel's ABI (`linux/filter.h`), written out here
//! because the core depends on nothing OS-facing (not even `libc`).

use crate::codec::{FRAME_BYTES, MAGIC, MAX_DATAGRAM_BYTES};
use crate::owner::OWNER_MIX;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Instruction classes.
pub const LD: u16 = 0x00;
pub const LDX: u16 = 0x01;
pub const ST: u16 = 0x02;
pub const STX: u16 = 0x03;
pub const ALU: u16 = 0x04;
pub const JMP: u16 = 0x05;
pub const RET: u16 = 0x06;
pub const MISC: u16 = 0x07;
// Load sizes.
pub const W: u16 = 0x00;
pub const H: u16 = 0x08;
pub const B: u16 = 0x10;
// Load modes.
pub const IMM: u16 = 0x00;
pub const ABS: u16 = 0x20;
pub const MEM: u16 = 0x60;
pub const LEN: u16 = 0x80;
// ALU operations.
pub const ADD: u16 = 0x00;
pub const SUB: u16 = 0x10;
pub const MUL: u16 = 0x20;
pub const DIV: u16 = 0x30;
pub const OR: u16 = 0x40;
pub const AND: u16 = 0x50;
pub const LSH: u16 = 0x60;
pub const RSH: u16 = 0x70;
pub const MOD: u16 = 0x90;
pub const XOR: u16 = 0xa0;
// Jumps.
pub const JA: u16 = 0x00;
pub const JEQ: u16 = 0x10;
pub const JGT: u16 = 0x20;
pub const JGE: u16 = 0x30;
pub const JSET: u16 = 0x40;
// Operand source (ALU, JMP) and return value (RET).
pub const K: u16 = 0x00;
pub const X: u16 = 0x08;
pub const A: u16 = 0x10;
// MISC operations.
pub const TAX: u16 = 0x00;
pub const TXA: u16 = 0x80;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The reuseport steering program: returns `owner(first frame's device_id, shards)` as
/// the socket index. For UDP the kernel runs it with the data pointer at the payload,
/// so the device id's halves are the words at payload offsets 8 and 12. A datagram too
/// short to load aborts the program with 0 (socket 0), where it is rejected and counted.
pub fn steering_program(shards: u32) -> Vec<Insn> {
    assert!(shards > 0, "at least one shard");
    vec![
        insn(LD | W | ABS, 0, 0, 12),
        insn(ST, 0, 0, 0),
        insn(LD | W | ABS, 0, 0, 8),
        insn(LDX | W | MEM, 0, 0, 0),
        insn(ALU | XOR | X, 0, 0, 0),
        insn(MISC | TAX, 0, 0, 0),
        insn(ALU | RSH | K, 0, 0, 16),
        insn(ALU | XOR | X, 0, 0, 0),
        insn(ALU | MUL | K, 0, 0, OWNER_MIX),
        insn(MISC | TAX, 0, 0, 0),
        insn(ALU | RSH | K, 0, 0, 16),
        insn(ALU | XOR | X, 0, 0, 0),
        insn(ALU | MOD | K, 0, 0, shards),
        insn(RET | A, 0, 0, 0),
    ]
}

/// Bytes of the UDP header ahead of the payload in what a socket filter sees.
pub const UDP_HEADER_BYTES: u32 = 8;

/// The optional prefilter (SO_ATTACH_FILTER): accept a datagram only when its length is
/// a non-zero multiple of 32 and ≤ 2048 and it starts with the magic. A socket filter
/// sees the UDP header ahead of the payload. Rejected datagrams are dropped before
/// queueing and show up in the socket's drop count, not in `malformed`.
pub fn prefilter_program() -> Vec<Insn> {
    let magic_be = u32::from_be_bytes(MAGIC);
    vec![
        insn(LD | W | LEN, 0, 0, 0),
        insn(ALU | SUB | K, 0, 0, UDP_HEADER_BYTES),
        insn(JMP | JEQ | K, 6, 0, 0), // empty → drop
        insn(JMP | JGT | K, 5, 0, MAX_DATAGRAM_BYTES as u32), // too long → drop
        insn(ALU | AND | K, 0, 0, FRAME_BYTES as u32 - 1),
        insn(JMP | JEQ | K, 0, 3, 0), // not a multiple of 32 → drop
        insn(LD | W | ABS, 0, 0, UDP_HEADER_BYTES), // magic (payload offset 0)
        insn(JMP | JEQ | K, 0, 1, magic_be),
        insn(RET | K, 0, 0, u32::MAX),
        insn(RET | K, 0, 0, 0),
    ]
}

/// Runs a classic BPF program over `packet` as the kernel does (loads big-endian, an
/// out-of-bounds load or a division by zero returns 0, scratch memory of 16 words).
/// Covers the instructions these programs use plus the common rest; an opcode it does
/// not know, or a jump off the end, is a bug in the program and panics.
pub fn run(program: &[Insn], packet: &[u8]) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |offset: u32, size: u16| -> Option<u32> {
        let at = offset as usize;
        let n = match size {
            W => 4,
            H => 2,
            B => 1,
            _ => panic!("bad load size {size:#x}"),
        };
        let bytes = packet.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | b as u32))
    };
    loop {
        let i = program[pc];
        pc += 1;
        let src = if i.code & X != 0 { x } else { i.k };
        match i.code & 0x07 {
            LD => {
                a = match i.code & 0xe0 {
                    IMM => i.k,
                    ABS => match load(i.k, i.code & 0x18) {
                        Some(v) => v,
                        None => return 0,
                    },
                    MEM => mem[i.k as usize],
                    LEN => packet.len() as u32,
                    mode => panic!("unsupported load mode {mode:#x}"),
                }
            }
            LDX => {
                x = match i.code & 0xe0 {
                    IMM => i.k,
                    MEM => mem[i.k as usize],
                    LEN => packet.len() as u32,
                    mode => panic!("unsupported ldx mode {mode:#x}"),
                }
            }
            ST => mem[i.k as usize] = a,
            STX => mem[i.k as usize] = x,
            ALU => {
                a = match i.code & 0xf0 {
                    ADD => a.wrapping_add(src),
                    SUB => a.wrapping_sub(src),
                    MUL => a.wrapping_mul(src),
                    DIV | MOD if src == 0 => return 0,
                    DIV => a / src,
                    MOD => a % src,
                    OR => a | src,
                    AND => a & src,
                    LSH => a.checked_shl(src).unwrap_or(0),
                    RSH => a.checked_shr(src).unwrap_or(0),
                    XOR => a ^ src,
                    op => panic!("unsupported alu op {op:#x}"),
                }
            }
            JMP => {
                let taken = match i.code & 0xf0 {
                    JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    JEQ => a == src,
                    JGT => a > src,
                    JGE => a >= src,
                    JSET => a & src != 0,
                    op => panic!("unsupported jump {op:#x}"),
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            RET => return if i.code & 0x18 == A { a } else { i.k },
            MISC => match i.code & 0xf8 {
                TAX => x = a,
                TXA => a = x,
                op => panic!("unsupported misc op {op:#x}"),
            },
            _ => unreachable!("3-bit class"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{datagram_frames, FrameFields};
    use crate::owner::owner;

    fn frame(device_id: u64) -> [u8; FRAME_BYTES] {
        FrameFields::heartbeat(device_id, 1, 10, 0).to_bytes()
    }

    /// A deterministic spread of ids: small, sequential, high-bit and mixed.
    fn ids() -> impl Iterator<Item = u64> {
        let mut x = 0x243F_6A88_85A3_08D3u64;
        (1..=2_000u64)
            .chain((0..64).map(|b| 1u64 << b))
            .chain((0..5_000).map(move |_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x | 1
            }))
    }

    #[test]
    fn steering_program_equals_owner_for_every_shard_count() {
        for shards in 1..=64u32 {
            let prog = steering_program(shards);
            for id in ids() {
                assert_eq!(
                    run(&prog, &frame(id)),
                    owner(id, shards),
                    "id {id:#x}, {shards} shards"
                );
            }
        }
    }

    #[test]
    fn steering_a_datagram_too_short_to_load_goes_to_socket_zero() {
        assert_eq!(run(&steering_program(4), &[0x52; 15]), 0);
        assert_eq!(run(&steering_program(4), &[]), 0);
    }

    #[test]
    fn prefilter_accepts_exactly_what_the_codec_takes_as_a_datagram() {
        let good = frame(7);
        let frames =
            |bytes: usize| -> Vec<u8> { good.iter().copied().cycle().take(bytes).collect() };
        let mut cases: Vec<Vec<u8>> = vec![vec![], frames(31), frames(33), frames(2049)];
        for n in [1, 2, 63, 64, 65] {
            cases.push(frames(n * FRAME_BYTES));
        }
        let mut bad_magic = good;
        bad_magic[0] ^= 0xFF;
        cases.push(bad_magic.to_vec());
        let prog = prefilter_program();
        for payload in cases {
            let mut packet = vec![0u8; UDP_HEADER_BYTES as usize];
            packet.extend_from_slice(&payload);
            let accepted = run(&prog, &packet) != 0;
            // The codec's whole-datagram checks plus the first frame's magic.
            let valid = datagram_frames(&payload).is_ok() && payload[..4] == MAGIC;
            assert_eq!(accepted, valid, "{} bytes", payload.len());
        }
    }

    #[test]
    fn the_interpreter_follows_the_kernel_on_jumps_loads_and_division() {
        let prog = [
            insn(LD | B | ABS, 0, 0, 1),
            insn(JMP | JGE | K, 1, 0, 0x80),
            insn(RET | K, 0, 0, 1),
            insn(LD | H | ABS, 0, 0, 0),
            insn(ALU | DIV | K, 0, 0, 0),
            insn(RET | A, 0, 0, 0),
        ];
        assert_eq!(run(&prog, &[0x12, 0x34]), 1, "0x34 < 0x80");
        assert_eq!(
            run(&prog, &[0x12, 0x80]),
            0,
            "division by zero aborts with 0"
        );
        let ja = [
            insn(JMP | JA, 0, 0, 1),
            insn(RET | K, 0, 0, 5),
            insn(RET | K, 0, 0, 6),
        ];
        assert_eq!(run(&ja, &[]), 6);
    }
}
