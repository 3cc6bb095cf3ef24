//! A minimal WebSocket client, enough to measure a push server without being its bottleneck: the
//! upgrade over a plain TCP socket (optionally from a chosen source address), masked client frames,
//! and a frame reader that hands out text payloads without copying them.

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection attempt failed, as counted in the report.
#[derive(Debug)]
pub enum ConnectError {
    Refused,
    Timeout,
    Http(u16),
    Io(String),
}

impl ConnectError {
    pub fn label(&self) -> String {
        match self {
            ConnectError::Refused => "connection_refused".into(),
            ConnectError::Timeout => "timeout".into(),
            ConnectError::Http(s) => format!("http_{s}"),
            ConnectError::Io(e) => format!("io: {e}"),
        }
    }
}

pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

/// Connects and upgrades; returns the stream and any bytes read past the 101 response.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    path: &str,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    connect_with(target, source, path, None).await
}

/// As `connect`, optionally with a small receive buffer (a client that stops reading then fills
/// the server's queue sooner, as a slow mobile link would).
pub async fn connect_with(
    target: &Target,
    source: Option<IpAddr>,
    path: &str,
    recv_buffer: Option<u32>,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    connect_offering(target, source, path, recv_buffer, None).await
}

/// The permessage-deflate offer `--deflate` makes (what browsers send).
pub const DEFLATE: &str = "permessage-deflate; client_max_window_bits";

/// As `connect_with`, offering `extensions` (`Sec-WebSocket-Extensions`).
pub async fn connect_offering(
    target: &Target,
    source: Option<IpAddr>,
    path: &str,
    recv_buffer: Option<u32>,
    extensions: Option<&str>,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let sock = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ConnectError::Io(e.to_string()))?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)
            .map_err(|e| ConnectError::Io(format!("SO_RCVBUF: {e}")))?;
    }
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::Io(format!("bind {ip}: {e}")))?;
    }
    let mut stream = sock
        .connect(target.addr)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            _ => ConnectError::Io(e.to_string()),
        })?;
    let _ = stream.set_nodelay(true);
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        target.host
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ConnectError::Io(e.to_string()))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ConnectError::Io("closed during the upgrade".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let status = buf
                .split(|b| *b == b' ')
                .nth(1)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            if status != 101 {
                return Err(ConnectError::Http(status));
            }
            return Ok((stream, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err(ConnectError::Io("oversized upgrade response".into()));
        }
    }
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub enum Frame<'a> {
    Text(&'a [u8]),
    /// A text message compressed with permessage-deflate (RSV1), as received.
    Packed(&'a [u8]),
    Binary,
    Ping(&'a [u8]),
    Pong,
    Close(Option<u16>),
}

/// Reads server frames (unmasked) from a buffer refilled from the socket.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    pub fn new(initial: Vec<u8>, capacity: usize) -> Reader {
        let mut buf = initial;
        let end = buf.len();
        buf.resize(end.max(capacity), 0);
        Reader { buf, start: 0, end }
    }

    /// Reads more bytes from the socket; Ok(false) at end of stream.
    pub async fn fill(&mut self, stream: &mut TcpStream) -> Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            if n > 64 << 20 {
                bail!("server frame over 32 MiB");
            }
            self.buf.resize(n, 0);
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next(&mut self) -> Result<Option<Frame<'_>>> {
        let (opcode, len, head) = {
            let b = &self.buf[self.start..self.end];
            if b.len() < 2 {
                return Ok(None);
            }
            if b[1] & 0x80 != 0 {
                return Err(anyhow!("server sent a masked frame"));
            }
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                126 | 127 => return Ok(None),
                n => (n as usize, 2),
            };
            (b[0] & 0x4f, len, head)
        };
        if self.end - self.start < head + len {
            // Make room for the whole frame once the buffer is compacted.
            if head + len > self.buf.len() {
                self.buf.resize((head + len).next_power_of_two(), 0);
            }
            return Ok(None);
        }
        let from = self.start + head;
        self.start = from + len;
        let payload = &self.buf[from..from + len];
        Ok(Some(match opcode {
            0x1 | 0x0 => Frame::Text(payload),
            0x41 => Frame::Packed(payload),
            0x2 => Frame::Binary,
            0x9 => Frame::Ping(payload),
            0xa => Frame::Pong,
            0x8 => Frame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            _ => return Err(anyhow!("unknown opcode {opcode}")),
        }))
    }
}

/// Bytes a server frame with a payload of `len` takes on the wire (unmasked header and payload).
pub fn wire_len(len: usize) -> u64 {
    let head = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    (head + len) as u64
}

/// Inflates compressed messages (permessage-deflate, no context takeover) into one reused buffer.
pub struct Inflater {
    d: flate2::Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: flate2::Decompress::new(false),
            out: Vec::with_capacity(4096),
        }
    }
}

/// Inflated messages are cut here (the gateway's messages are far smaller).
const MAX_INFLATED: usize = 1 << 20;

impl Inflater {
    /// The text of a text frame: its payload, inflated if it came compressed.
    pub fn text<'a>(&'a mut self, frame: &Frame<'a>) -> &'a [u8] {
        match frame {
            Frame::Packed(p) => self.message(p),
            Frame::Text(p) => p,
            _ => &[],
        }
    }

    /// What the message `payload` inflates to (as far as it is valid deflate data).
    pub fn message(&mut self, payload: &[u8]) -> &[u8] {
        self.out.clear();
        self.d.reset(false);
        loop {
            if self.out.capacity() - self.out.len() < 256 {
                if self.out.capacity() >= MAX_INFLATED {
                    break;
                }
                self.out.reserve(self.out.capacity().max(4096));
            }
            let (at, len) = (self.d.total_in() as usize, self.out.len());
            let status =
                self.d
                    .decompress_vec(&payload[at..], &mut self.out, flate2::FlushDecompress::Sync);
            let done =
                self.d.total_in() as usize == payload.len() && self.out.len() < self.out.capacity();
            let stuck = self.d.total_in() as usize == at && self.out.len() == len;
            if !matches!(status, Ok(flate2::Status::Ok)) || done || stuck {
                break;
            }
        }
        &self.out
    }
}

/// Finds the unsigned integer after `key` (like `"s":`) in a JSON text, without parsing it all.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let digits = text[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_sequence_and_timestamp() {
        let gw = br#"{"channel":"room_1","data":{"s":17,"t":1700000000123456789,"p":"xx"},"pos":"1-000000000001","ts":1,"type":"message"}"#;
        assert_eq!(number_after(gw, br#""s":"#), Some(17));
        assert_eq!(
            number_after(gw, br#""t":"#),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(number_after(b"{}", br#""s":"#), None);
    }

    #[test]
    fn inflates_compressed_messages() {
        let text = format!(r#"{{"data":{{"p":"{}","s":5,"t":7}}}}"#, "ab".repeat(5000));
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut packed = Vec::with_capacity(text.len());
        c.compress_vec(text.as_bytes(), &mut packed, flate2::FlushCompress::Sync)
            .unwrap();
        packed.truncate(packed.len() - 4);
        let mut frame = vec![0xc1, 126];
        frame.extend_from_slice(&(packed.len() as u16).to_be_bytes());
        frame.extend_from_slice(&packed);
        let mut r = Reader::new(frame, 16);
        let Some(Frame::Packed(p)) = r.next().unwrap() else {
            panic!("a compressed frame")
        };
        let mut inf = Inflater::default();
        assert_eq!(inf.message(p), text.as_bytes());
        assert_eq!(number_after(inf.message(p), br#""s":"#), Some(5));
        assert_eq!(
            [wire_len(125), wire_len(126), wire_len(70_000)],
            [127, 130, 70_010]
        );
    }

    #[test]
    fn parses_frames_of_every_length() {
        let mut bytes = Vec::new();
        for n in [0usize, 125, 126, 70_000] {
            let mut h = vec![0x81u8];
            if n < 126 {
                h.push(n as u8);
            } else if n <= 0xffff {
                h.push(126);
                h.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                h.push(127);
                h.extend_from_slice(&(n as u64).to_be_bytes());
            }
            bytes.extend(h);
            bytes.extend(std::iter::repeat_n(b'x', n));
        }
        bytes.extend([0x88, 2, 0x03, 0xf5]);
        let mut r = Reader::new(bytes, 16);
        let mut lens = Vec::new();
        while let Some(f) = r.next().unwrap() {
            match f {
                Frame::Text(p) => lens.push(p.len()),
                Frame::Close(code) => lens.push(code.unwrap_or(0) as usize),
                _ => unreachable!(),
            }
        }
        assert_eq!(lens, vec![0, 125, 126, 70_000, 1013]);
        let f = client_frame(1, b"hello");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 5);
    }
}
