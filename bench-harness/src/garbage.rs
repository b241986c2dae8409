//! A garbage flood beside the valid load: datagrams the server must reject, at a fixed
//! open-loop rate, to measure what invalid traffic costs and that it never costs a
//! valid heartbeat. Three kinds in turn: 33 bytes (not a multiple of the frame size),
//! one 32-byte frame with a wrong magic, and 64 zero bytes (wrong magic twice).

use crate::net;
use ringbeat::core::codec::{FRAME_BYTES, MAGIC};
use ringbeat::sys::mmsg::SendBatch;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

/// The `i`-th garbage datagram.
pub fn datagram(i: u64) -> Vec<u8> {
    match i % 3 {
        0 => {
            let mut d = vec![0u8; FRAME_BYTES + 1];
            d[..4].copy_from_slice(&MAGIC);
            d
        }
        1 => {
            let mut d = vec![0u8; FRAME_BYTES];
            d[..4].copy_from_slice(b"JUNK");
            d
        }
        _ => vec![0u8; 2 * FRAME_BYTES],
    }
}

/// Sends garbage to `target` at `rate` datagrams/s from `start` until `start +
/// duration`, pinned to `cpu`. Returns the datagrams the kernel accepted.
pub fn flood(
    target: SocketAddr,
    rate: f64,
    start: Instant,
    duration: Duration,
    cpu: Option<usize>,
) -> std::io::Result<u64> {
    if let Some(c) = cpu {
        net::pin_to_cpu(c)?;
    }
    let sock = net::connected_udp(target, 4 << 20)?;
    let (addr, addr_len) = ringbeat::sys::socket::sockaddr_from(target);
    let kinds: Vec<Vec<u8>> = (0..3).map(datagram).collect();
    let mut batch = SendBatch::new(BATCH, ringbeat::core::codec::MAX_DATAGRAM_BYTES);
    let (mut due_sent, mut accepted) = (0u64, 0u64);
    while Instant::now() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return Ok(accepted);
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while due_sent < due {
            batch.push(&kinds[(due_sent % 3) as usize], &addr, addr_len);
            due_sent += 1;
            if batch.is_full() || due_sent == due {
                accepted += batch.flush(sock.as_raw_fd()).sent as u64;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbeat::core::codec;

    #[test]
    fn every_kind_is_rejected_by_the_codec() {
        for i in 0..3 {
            let d = datagram(i);
            let ok = match codec::datagram_frames(&d) {
                Err(_) => false,
                Ok(frames) => frames.iter().any(|f| codec::decode_heartbeat(f).is_ok()),
            };
            assert!(!ok, "garbage kind {i} decodes as a valid frame");
        }
    }
}
