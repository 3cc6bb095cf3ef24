//! permessage-deflate (RFC 7692) without context takeover on either side, so no connection holds
//! compressor or inflater state: a message is compressed once per shard and the frame shared by
//! every member that negotiated it (`Frames`), and client messages are inflated by one inflater
//! per shard thread, reset after each message, into a bounded output (`inflate`).

mod offer;

pub use offer::{negotiate, Agreed, Decline, MAX_WINDOW_BITS};

use crate::message::{Frame, Msg};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::rc::Rc;

/// zlib's default level: JSON shrinks 2-3x at it and a shard compresses each message only once.
const LEVEL: u32 = 6;
/// What a sync flush ends with, removed from a compressed message and put back to inflate one
/// (section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// One compressor and one inflater per shard thread, reset after every message (about 256 KiB
    /// and 40 KiB of zlib state that connections do not hold).
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A whole message compressed as a permessage-deflate payload: raw deflate, sync flush, the tail
/// removed. None when it is not smaller than the message (it then goes plain).
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    DEFLATER.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let flushed = c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync);
            if flushed.is_err() {
                return None;
            }
            // Done once all input is in and the flush fitted (output space was left over).
            if c.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            // Not getting smaller: it goes plain.
            if out.len() > data.len() + 64 {
                return None;
            }
            out.reserve(out.capacity());
        }
        c.reset();
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < data.len()).then_some(out)
    })
}

/// Why a client message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (the connection closes with 1009).
    TooBig,
    /// Not valid deflate data.
    Corrupt,
}

/// Inflates one client message (the payload of its frames, tail removed) into at most `max`
/// bytes: a message that would inflate further stops there, so a zip bomb never allocates more.
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let result = inflate_with(&mut d, payload, max);
        d.reset(false);
        result
    })
}

fn inflate_with(d: &mut Decompress, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity(max.min(payload.len().saturating_mul(4).max(256)) + 1);
    for input in [payload, &TAIL[..]] {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                // Grows geometrically, to one byte past the limit at most (to see it passed).
                out.reserve_exact(out.len().min(max + 1 - out.len()).max(1));
            }
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            at += (d.total_in() - in_before) as usize;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            // A final block ends the message: anything after it (our tail) is not needed.
            if status == Status::StreamEnd {
                return Ok(out);
            }
            let stalled =
                at == input.len() || (d.total_in() == in_before && out.len() == out_before);
            if stalled && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(out)
}

/// The frames of one message on one shard: framed plain at most once and compressed at most
/// once, each shared (`Rc`) by every member it goes to.
pub struct Frames<'m> {
    msg: &'m Msg,
    plain: Option<Rc<Frame>>,
    /// None: not tried yet; Some(None): compression did not pay (everyone gets the plain frame).
    packed: Option<Option<Rc<Frame>>>,
    /// Members that were given the compressed frame.
    pub packed_sent: u64,
}

impl<'m> Frames<'m> {
    /// For the live delivery of `msg`. (Replays for `since` go plain: their frames are made per
    /// member, and compressing each would cost what sharing saves.)
    pub fn new(msg: &'m Msg) -> Frames<'m> {
        Frames {
            msg,
            plain: None,
            packed: None,
            packed_sent: 0,
        }
    }

    /// The frame for a member that agreed to `deflate` (or not).
    pub fn get(&mut self, deflate: Option<Agreed>) -> &Rc<Frame> {
        let msg = self.msg;
        if deflate.is_some_and(|a| a.takes(msg.text.len())) {
            let packed = self.packed.get_or_insert_with(|| {
                let bytes = compress(msg.text.as_bytes())?;
                Some(Rc::new(Frame::message_deflated(msg, &bytes)))
            });
            if let Some(f) = packed {
                self.packed_sent += 1;
                return f;
            }
        }
        self.plain
            .get_or_insert_with(|| Rc::new(Frame::message(msg)))
    }

    /// Whether a compressed frame was made, and the wire bytes it saved over all its deliveries.
    pub fn saved(&self) -> Option<u64> {
        let packed = self.packed.as_ref()?.as_ref()?;
        let len = self.msg.text.len();
        let plain_len = len
            + if len < 126 {
                2
            } else if len < 65536 {
                4
            } else {
                10
            };
        let per = plain_len.saturating_sub(packed.len()) as u64;
        Some(per * self.packed_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> String {
        let items: Vec<String> = (0..n)
            .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}.5}}", i * 7))
            .collect();
        format!("[{}]", items.join(","))
    }

    #[test]
    fn compressed_messages_inflate_back_and_are_smaller() {
        for text in [json(5), json(30), json(3000), "a".repeat(100_000)] {
            let packed = compress(text.as_bytes()).expect("JSON compresses");
            assert!(packed.len() < text.len() / 2 || text.len() < 300);
            let back = inflate(&packed, text.len()).unwrap();
            assert_eq!(back, text.as_bytes());
            // One byte short of the message: too big.
            assert_eq!(inflate(&packed, text.len() - 1), Err(InflateError::TooBig));
        }
    }

    #[test]
    fn incompressible_data_is_left_plain() {
        let mut x = 0x1234_5678_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let packed = compress(&vec![0u8; 8 << 20]).unwrap();
        assert!(packed.len() < 10_000);
        assert_eq!(inflate(&packed, 64 << 10), Err(InflateError::TooBig));
        // The shard's inflater is reset: the next message inflates.
        let ok = compress(json(40).as_bytes()).unwrap();
        assert_eq!(inflate(&ok, 1 << 20).unwrap(), json(40).as_bytes());
    }

    #[test]
    fn garbage_is_corrupt_and_a_final_block_ends_the_message() {
        assert_eq!(inflate(&[0xff; 32], 1024), Err(InflateError::Corrupt));
        // A client may end a message with a final block (BFINAL): "hi" in one fixed block.
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(64);
        c.compress_vec(b"hi", &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&out, 10).unwrap(), b"hi");
        assert_eq!(inflate(&[], 10).unwrap(), b"");
    }
}
