//! The TCP side of PROTOCOL-v1 as plain data: a stream of 32-byte frames with no other
//! framing, split across reads at any byte.
//!
//! A connection's whole receive state is a [`StreamDecoder`]: the at most 31 bytes of a
//! frame that a read cut short (the carry). Whole frames are handed out straight from
//! the read's buffer; only a frame that straddles two reads is assembled in the carry.
//! [`crate::shard::ShardCore::ingest_stream`] applies the frames and writes the acks in
//! the order received; engines own sockets, buffers and ack queues.
//!
//! ```
//! use ringbeat_core::codec::FrameFields;
//! use ringbeat_core::stream::{Feed, StreamDecoder};
//!
//! let bytes: Vec<u8> = (1..=3u64)
//!     .flat_map(|id| FrameFields::heartbeat(id, 1, 10, 0).to_bytes())
//!     .collect();
//! let mut decoder = StreamDecoder::default();
//! let mut ids = Vec::new();
//! // Three frames arriving as reads of 40, 1 and 55 bytes.
//! for read in [&bytes[..40], &bytes[40..41], &bytes[41..]] {
//!     decoder.feed(read, |frame| {
//!         ids.push(frame[8]);
//!         Feed::Continue
//!     });
//! }
//! assert_eq!(ids, [1, 2, 3]);
//! assert_eq!(decoder.carried(), 0);
//! ```

use crate::codec::{unit_version, Wire, FRAME_BYTES, FRAME_V2_BYTES, VERSION_2};

/// What the frame callback tells the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    Continue,
    /// The stream is out of step (a bad magic): stop here; the rest of the stream means
    /// nothing and the connection is to be closed.
    Stop,
}

/// What one `feed` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Whole frames handed to the callback (the one that stopped included).
    pub frames: u32,
    /// Of these, frames assembled from bytes of two reads.
    pub split: u32,
    /// The callback said `Stop`; nothing after that frame was looked at.
    pub stopped: bool,
}

/// A connection's receive state: the bytes of a frame cut by the end of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamDecoder {
    carry: [u8; FRAME_BYTES - 1],
    carried: u8,
    /// Whether `held` holds the first 32 bytes of a version-2 frame (64 bytes) waiting
    /// for the rest (a flag beside it rather than an `Option`, which would pad the
    /// decoder by 8 bytes per connection).
    holding: bool,
    held: [u8; FRAME_BYTES],
}

impl Default for StreamDecoder {
    fn default() -> Self {
        StreamDecoder {
            carry: [0; FRAME_BYTES - 1],
            carried: 0,
            holding: false,
            held: [0; FRAME_BYTES],
        }
    }
}

impl StreamDecoder {
    /// Takes the next `bytes` of the stream and calls `frame` for every whole frame
    /// they complete, version 1 (32 bytes) or 2 (64: a unit whose header says version 2
    /// waits here for the next unit, whatever it holds), in stream order, until it
    /// returns `Stop`. `Fed::frames` counts whole frames.
    #[inline]
    pub fn feed_frames(&mut self, bytes: &[u8], mut frame: impl FnMut(Wire<'_>) -> Feed) -> Fed {
        let mut held = std::mem::take(&mut self.holding).then_some(self.held);
        let mut frames = 0;
        let mut fed = self.feed(bytes, |unit| {
            if let Some(first) = held.take() {
                let mut whole = [0u8; FRAME_V2_BYTES];
                whole[..FRAME_BYTES].copy_from_slice(&first);
                whole[FRAME_BYTES..].copy_from_slice(unit);
                frames += 1;
                frame(Wire::V2(&whole))
            } else if unit_version(unit) == Some(VERSION_2) {
                held = Some(*unit);
                Feed::Continue
            } else {
                frames += 1;
                frame(Wire::V1(unit))
            }
        });
        if let Some(h) = held {
            self.held = h;
            self.holding = true;
        }
        fed.frames = frames;
        fed
    }

    /// Bytes of an unfinished frame held (carry and a held version-2 half).
    pub fn pending_bytes(&self) -> usize {
        self.carried as usize + if self.holding { FRAME_BYTES } else { 0 }
    }

    /// Bytes of an incomplete frame held from earlier reads (0..=31). Non-zero when the
    /// peer closes means it closed mid-frame.
    pub fn carried(&self) -> usize {
        self.carried as usize
    }

    /// Takes the next `bytes` of the stream and calls `frame` for every frame they
    /// complete, in stream order, until it returns `Stop`.
    #[inline]
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut frame: impl FnMut(&[u8; FRAME_BYTES]) -> Feed,
    ) -> Fed {
        let mut fed = Fed::default();
        if self.carried > 0 {
            let have = self.carried as usize;
            let need = FRAME_BYTES - have;
            if bytes.len() < need {
                self.carry[have..have + bytes.len()].copy_from_slice(bytes);
                self.carried += bytes.len() as u8;
                return fed;
            }
            let mut whole = [0u8; FRAME_BYTES];
            whole[..have].copy_from_slice(&self.carry[..have]);
            whole[have..].copy_from_slice(&bytes[..need]);
            bytes = &bytes[need..];
            self.carried = 0;
            fed.frames += 1;
            fed.split += 1;
            if frame(&whole) == Feed::Stop {
                fed.stopped = true;
                return fed;
            }
        }
        let (frames, rest) = bytes.as_chunks::<FRAME_BYTES>();
        for f in frames {
            fed.frames += 1;
            if frame(f) == Feed::Stop {
                fed.stopped = true;
                return fed;
            }
        }
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len() as u8;
        fed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::TestRng as Rng;

    fn stream(frames: usize, rng: &mut Rng) -> Vec<u8> {
        (0..frames * FRAME_BYTES)
            .map(|_| rng.next() as u8)
            .collect()
    }

    #[test]
    fn property_any_split_yields_the_same_frames_in_order() {
        let mut rng = Rng(11);
        for _ in 0..2_000 {
            let n = rng.below(40);
            let tail = rng.below(FRAME_BYTES);
            let mut bytes = stream(n, &mut rng);
            bytes.extend((0..tail).map(|_| 0xAB));
            let mut decoder = StreamDecoder::default();
            let mut got = Vec::new();
            let mut split = 0;
            let mut at = 0;
            while at < bytes.len() {
                let len = match rng.below(4) {
                    0 => 1,
                    1 => rng.below(FRAME_BYTES) + 1,
                    _ => rng.below(3 * FRAME_BYTES) + 1,
                }
                .min(bytes.len() - at);
                let fed = decoder.feed(&bytes[at..at + len], |f| {
                    got.extend_from_slice(f);
                    Feed::Continue
                });
                split += fed.split;
                assert!(!fed.stopped);
                at += len;
                assert!(decoder.carried() < FRAME_BYTES);
            }
            assert_eq!(got, bytes[..n * FRAME_BYTES]);
            assert_eq!(decoder.carried(), tail);
            assert!(split as usize <= n);
        }
    }

    #[test]
    fn stop_ends_the_feed_at_that_frame() {
        let mut rng = Rng(3);
        let bytes = stream(6, &mut rng);
        for stop_at in 0..6 {
            // Cut inside the frame before the stopping one, so the stop may come from
            // an assembled frame too.
            let cut = stop_at * FRAME_BYTES + 5;
            let mut decoder = StreamDecoder::default();
            let mut seen = 0;
            let mut stopped = false;
            for part in [&bytes[..cut], &bytes[cut..]] {
                if stopped {
                    break;
                }
                let fed = decoder.feed(part, |_| {
                    seen += 1;
                    if seen == stop_at + 1 {
                        Feed::Stop
                    } else {
                        Feed::Continue
                    }
                });
                stopped = fed.stopped;
            }
            assert!(stopped);
            assert_eq!(seen, stop_at + 1);
        }
    }

    #[test]
    fn byte_by_byte_every_frame_is_split_once() {
        let mut rng = Rng(5);
        let bytes = stream(4, &mut rng);
        let mut decoder = StreamDecoder::default();
        let mut fed = Fed::default();
        for b in &bytes {
            let f = decoder.feed(std::slice::from_ref(b), |_| Feed::Continue);
            fed.frames += f.frames;
            fed.split += f.split;
        }
        assert_eq!((fed.frames, fed.split), (4, 4));
    }
}
