//! Client bytes through tungstenite's frame codec: tungstenite reads from what the socket gave
//! us (no read buffer of ours is kept per connection) and writes its control replies into a buffer
//! that goes to the send queue. With permessage-deflate, `inbound` rewrites compressed frames for
//! tungstenite on the way in and their messages are inflated here as they come out.

use super::{
    request_id, Session, CLOSE_BAD_DEFLATE, CLOSE_BAD_UTF8, CLOSE_GRACE, CLOSE_NORMAL,
    CLOSE_PROTOCOL, CLOSE_TOO_BIG,
};
use crate::conn::CloseReason;
use crate::deflate::{self, InflateError};
use crate::message::Frame;
use crate::protocol::ErrorCode;
use serde_json::Value;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Instant;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

/// tungstenite reads what the socket gave us and writes its control replies into a buffer.
pub struct Io<'a> {
    pub input: &'a [u8],
    pub output: &'a mut Vec<u8>,
}

/// tungstenite's limits for a client connection.
pub fn ws_config(cfg: &crate::config::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(cfg.session.read_buffer_bytes)
        .max_message_size(Some(cfg.limits.max_frame_bytes))
        .max_frame_size(Some(cfg.limits.max_frame_bytes))
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A data message from the client, inflated if it came compressed.
#[derive(Clone, Copy)]
enum Data<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl Session {
    pub(super) fn on_bytes(&mut self, bytes: &mut [u8]) {
        self.last_seen = Instant::now();
        if self.failed {
            return;
        }
        if let Some(inbound) = self.inbound.as_mut() {
            inbound.scan(bytes);
        }
        let bytes = &*bytes;
        let mut out = std::mem::take(&mut self.control_out);
        let mut io = Io {
            input: bytes,
            output: &mut out,
        };
        loop {
            let read = self.ws.read(&mut io);
            // Control replies (pongs) tungstenite wrote go out before anything this read produces.
            if !io.output.is_empty() && !self.close_sent {
                let control = std::mem::take(io.output);
                self.conn.send(&Rc::new(Frame::raw(control)));
            }
            match read {
                Ok(Message::Text(text)) => {
                    self.next_kind();
                    self.on_data(Data::Text(text.as_str()));
                }
                Ok(Message::Binary(data)) => {
                    match self.next_kind() {
                        Some(kind) if kind.compressed => self.on_packed(&data, kind.text),
                        _ => self.on_data(Data::Binary(&data)),
                    }
                    if self.failed {
                        break;
                    }
                }
                Ok(Message::Ping(_)) => {
                    self.admit_frame();
                }
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    self.peer_closed = true;
                    // tungstenite queues the close reply; have it written into `out` now.
                    let _ = self.ws.flush(&mut io);
                    break;
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::Capacity(_)) => {
                    self.fail(CLOSE_TOO_BIG);
                    break;
                }
                Err(WsError::Utf8(_)) => {
                    self.fail(CLOSE_BAD_UTF8);
                    break;
                }
                Err(WsError::Protocol(e)) => {
                    tracing::debug!(error = %e, "client protocol error");
                    self.fail(CLOSE_PROTOCOL);
                    break;
                }
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.peer_closed = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client read error");
                    self.peer_closed = true;
                    break;
                }
            }
        }
        if self.peer_closed && !self.close_sent {
            match self.conn.close_requested() {
                // Our own close was requested and not sent yet: it answers the client's.
                Some(reason) => self.start_close(reason),
                None => {
                    // The reply to the client's close must go out whatever the queue's bound.
                    if !out.is_empty() {
                        self.conn
                            .send_unbounded(Frame::raw(std::mem::take(&mut out)));
                    }
                    self.conn.request_close(CLOSE_NORMAL);
                    self.close_sent = true;
                    let now = Instant::now();
                    self.deadline = Some(now + CLOSE_GRACE);
                    self.rearm(now);
                }
            }
        } else if !out.is_empty() && !self.close_sent {
            // Pongs, bounded like everything else; nothing may follow a close frame already queued.
            self.conn
                .send(&Rc::new(Frame::raw(std::mem::take(&mut out))));
        }
        out.clear();
        self.control_out = out;
    }

    /// The kind of the data message tungstenite just returned, with permessage-deflate.
    fn next_kind(&mut self) -> Option<super::inbound::Kind> {
        self.inbound.as_mut().map(|i| i.next_message())
    }

    /// A compressed message: inflated (bounded by `limits.max_frame_bytes`), then as any other.
    fn on_packed(&mut self, payload: &[u8], text: bool) {
        let max = self.shard.node.config.limits.max_frame_bytes;
        match deflate::inflate(payload, max) {
            Ok(raw) => {
                self.shard.metrics.deflate[2].inc();
                match (text, std::str::from_utf8(&raw)) {
                    (false, _) => self.on_data(Data::Binary(&raw)),
                    (true, Ok(t)) => self.on_data(Data::Text(t)),
                    (true, Err(_)) => self.fail(CLOSE_BAD_UTF8),
                }
            }
            Err(InflateError::TooBig) => self.fail(CLOSE_TOO_BIG),
            Err(InflateError::Corrupt) => self.fail(CLOSE_BAD_DEFLATE),
        }
    }

    fn on_data(&mut self, data: Data<'_>) {
        match data {
            _ if self.echo => {
                if self.admit_frame() {
                    self.echo(data);
                }
            }
            Data::Text(text) => {
                if self.admit_frame() {
                    self.on_request(text);
                } else {
                    let id = request_id(text);
                    self.refuse(&id, ErrorCode::LimitExceeded, "client frame rate limit");
                }
            }
            Data::Binary(_) => {
                if self.admit_frame() {
                    self.refuse(
                        &Value::Null,
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                    );
                }
            }
        }
    }

    /// Conformance echo mode: the message goes back, compressed if the client agreed to it.
    fn echo(&mut self, data: Data<'_>) {
        let (text, bytes) = match data {
            Data::Text(t) => (true, t.as_bytes()),
            Data::Binary(b) => (false, b),
        };
        let packed = match self.conn.deflate() {
            Some(a) if a.takes(bytes.len()) => deflate::compress(bytes),
            _ => None,
        };
        let frame = match (packed, data) {
            (Some(p), _) => Frame::deflated(text, &p),
            (None, Data::Text(t)) => Frame::text(t),
            (None, Data::Binary(b)) => Frame::binary(b),
        };
        self.conn.send(&Rc::new(frame));
    }

    pub(super) fn fail(&mut self, reason: CloseReason) {
        self.failed = true;
        self.conn.request_close(reason);
    }
}
