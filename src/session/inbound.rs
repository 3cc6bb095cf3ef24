//! Compressed client messages through tungstenite, which refuses RSV1 (it has no extensions): the
//! frame boundaries of the client's byte stream are followed here, and the first frame of a
//! compressed message is shown to tungstenite as a plain binary frame (RSV1 cleared, opcode
//! binary, so it does not check the compressed bytes as UTF-8). tungstenite still does all the
//! rest (masks, fragments, control frames, limits); the message is inflated when it comes out.
//! Only the first byte of a header is ever changed, and only as it is first seen.

use std::collections::VecDeque;

const RSV1: u8 = 0x40;
const OPCODE: u8 = 0x0f;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

/// What a data message was before its first frame was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub compressed: bool,
    pub text: bool,
}

/// The frame parser's position in the client's stream (kept only by connections that negotiated
/// permessage-deflate).
#[derive(Debug, Default)]
pub struct Inbound {
    /// The header of the frame being read, while incomplete.
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame not seen yet.
    payload_left: u64,
    /// The data messages whose first frame was seen, oldest first, until tungstenite returns
    /// them. After a read is parsed at most the one unfinished message is left; within a read,
    /// at most one per two bytes of it.
    pending: VecDeque<Kind>,
}

impl Inbound {
    /// Follows `buf` (the next bytes from the client, before tungstenite sees them), rewriting
    /// the first frame of each compressed message in place.
    pub fn scan(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min((buf.len() - i) as u64);
                self.payload_left -= n;
                i += n as usize;
                continue;
            }
            if self.head_len == 0 {
                self.first_byte(&mut buf[i]);
            }
            self.head[self.head_len] = buf[i];
            self.head_len += 1;
            i += 1;
            if let Some(len) = payload_len(&self.head[..self.head_len]) {
                self.payload_left = len;
                self.head_len = 0;
            }
        }
    }

    /// The kind of the next data message tungstenite returns.
    pub fn next_message(&mut self) -> Kind {
        self.pending.pop_front().unwrap_or(Kind {
            compressed: false,
            text: false,
        })
    }

    fn first_byte(&mut self, b: &mut u8) {
        let op = *b & OPCODE;
        // Continuation, control and reserved frames pass unchanged: RSV1 on them is tungstenite's
        // to refuse (only a message's first frame may carry it, section 6.1).
        if op != TEXT && op != BINARY {
            return;
        }
        let compressed = *b & RSV1 != 0;
        self.pending.push_back(Kind {
            compressed,
            text: op == TEXT,
        });
        if compressed {
            *b = (*b & !(RSV1 | OPCODE)) | BINARY;
        }
    }
}

/// The payload length once `head` holds a whole frame header (RFC 6455 5.2), else None.
fn payload_len(head: &[u8]) -> Option<u64> {
    let second = *head.get(1)?;
    let masked = second & 0x80 != 0;
    let (ext, len7) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    Some(len7.unwrap_or_else(|| {
        head[2..2 + ext]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn compressed_first_frames_become_binary_and_the_rest_pass() {
        let mut stream = Vec::new();
        stream.extend(frame(0x80 | RSV1 | TEXT, b"packed")); // compressed text, one frame
        stream.extend(frame(0x89, b"")); // ping
        stream.extend(frame(TEXT, &[b'a'; 300])); // plain text, fragmented
        stream.extend(frame(0x8a, b"p")); // pong in between
        stream.extend(frame(0x80, &[b'b'; 70_000])); // its last frame
        stream.extend(frame(RSV1 | BINARY, b"xx")); // compressed binary, fragmented
        stream.extend(frame(0x80 | RSV1, b"yy")); // RSV1 on a continuation stays
        let mut inb = Inbound::default();
        // Any split of the stream gives the same result.
        for step in [1, 3, 7, stream.len()] {
            let mut s = stream.clone();
            for chunk in s.chunks_mut(step) {
                inb.scan(chunk);
            }
            assert_eq!(s[0], 0x80 | BINARY);
            assert_eq!(s[12], 0x89);
            let last = s.len() - (6 + 2) - (6 + 2);
            assert_eq!(s[last], BINARY);
            assert_eq!(s[last + 8], 0x80 | RSV1);
            let kinds: Vec<Kind> = (0..3).map(|_| inb.next_message()).collect();
            let k = |compressed, text| Kind { compressed, text };
            assert_eq!(kinds, [k(true, true), k(false, true), k(true, false)]);
            assert!(inb.pending.is_empty() && inb.head_len == 0);
        }
    }

    #[test]
    fn rsv1_on_control_frames_is_left_for_tungstenite() {
        let mut f = frame(0x80 | RSV1 | 0x9, b"");
        let mut inb = Inbound::default();
        inb.scan(&mut f);
        assert_eq!(f[0], 0x80 | RSV1 | 0x9);
        assert!(inb.pending.is_empty());
    }
}
