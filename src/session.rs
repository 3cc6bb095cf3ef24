//! One WebSocket connection after the upgrade: a single task that reads client frames (tungstenite's
//! codec over bytes we read), answers requests, drains the send queue with vectored writes, pings,
//! and closes with the right code.

use crate::auth::Claims;
use crate::conn::{CloseReason, ConnHandle, CLOSE_EXPIRED};
use crate::mesh::ConnAck;
use crate::message::{Frame, Publish};
use crate::outq::MAX_IOV;
use crate::protocol::{self, check_channel, ErrorCode, Filter, Refusal, Request};
use crate::router::{Ack, BROADCAST};
use crate::server::ConnSlot;
use crate::shard::Shard;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use serde_json::Value;
use socket2::SockRef;
use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tungstenite::error::Error as WsError;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// How long a closing connection waits for its close frame to go out and the client to answer.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Tokens valid for longer than this (10 years) are treated as valid for this long.
const MAX_TOKEN_SECS: u64 = 10 * 365 * 24 * 3600;
/// Vectored writes per wake before yielding to other connections.
const WRITES_PER_POLL: usize = 16;

const CLOSE_TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "message too big",
};
const CLOSE_PROTOCOL: CloseReason = CloseReason {
    code: 1002,
    reason: "protocol error",
};
const CLOSE_BAD_UTF8: CloseReason = CloseReason {
    code: 1007,
    reason: "invalid UTF-8",
};
const CLOSE_RATE: CloseReason = CloseReason {
    code: 1008,
    reason: "client frame rate limit exceeded",
};
const CLOSE_NORMAL: CloseReason = CloseReason {
    code: 1000,
    reason: "closed by client",
};
const CLOSE_IDLE: CloseReason = CloseReason {
    code: 1000,
    reason: "heartbeat timeout",
};

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

enum Event {
    Read(usize),
    Eof,
    Failed,
    Timer,
    Wake,
}

/// Client frames allowed per second, with a burst; refusals in a row beyond the burst close.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    refused_in_a_row: u32,
}

impl RateLimit {
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

struct Session {
    shard: Rc<Shard>,
    conn: Rc<ConnHandle>,
    stream: TcpStream,
    ws: WebSocketContext,
    claims: Claims,
    user_channel: String,
    subs: HashSet<String>,
    rate: RateLimit,
    last_seen: Instant,
    next_ping: Instant,
    expires_at: Instant,
    timer: Timer,
    /// When `timer` fires. The timer is polled once per re-arm: glommio re-inserts a timer into
    /// its reactor on every poll, which is too costly to do on every wake of a busy connection.
    timer_at: Instant,
    timer_registered: bool,
    /// Set once the connection is closing: the time by which it ends regardless.
    deadline: Option<Instant>,
    /// A close frame (ours, or the reply to the client's) is queued; nothing may follow it.
    close_sent: bool,
    peer_closed: bool,
    /// The client broke the protocol: tungstenite's parser state can no longer be trusted, so input
    /// is discarded and, once our close frame is out, we send FIN rather than wait for a close
    /// frame that may never parse (RFC 6455 7.1.7, "fail the WebSocket connection").
    failed: bool,
    half_closed: bool,
    control_out: Vec<u8>,
    /// Conformance test mode (`session.echo`): data messages are echoed, nothing else.
    echo: bool,
}

pub async fn run(
    shard: Rc<Shard>,
    stream: TcpStream,
    claims: Claims,
    leftover: Vec<u8>,
    slot: ConnSlot,
) {
    let cfg = &shard.node.config;
    let conn = Rc::new(ConnHandle::new(
        shard.next_conn_id(),
        cfg.limits.queue_bytes,
        shard.metrics.clone(),
    ));
    let ws_config = ws_config(cfg);
    let now = Instant::now();
    let heartbeat = cfg.heartbeat();
    // Capped: an absurd `exp` must not overflow the clock arithmetic.
    let secs_left = claims.exp.saturating_sub(crate::message::now_ms() / 1000);
    let secs_left = secs_left
        .saturating_add(cfg.auth.leeway_secs)
        .min(MAX_TOKEN_SECS);
    let expires_at = now + Duration::from_secs(secs_left);
    let limits = &cfg.limits;
    let mut s = Session {
        conn: conn.clone(),
        stream,
        ws: WebSocketContext::new(Role::Server, Some(ws_config)),
        user_channel: claims.user_channel(),
        claims,
        subs: HashSet::new(),
        rate: RateLimit {
            tokens: f64::from(limits.client_frames_burst),
            rate: f64::from(limits.client_frames_per_sec),
            burst: f64::from(limits.client_frames_burst.max(1)),
            last: now,
            refused_in_a_row: 0,
        },
        last_seen: now,
        next_ping: now + heartbeat,
        expires_at,
        timer: Timer::new(heartbeat),
        timer_at: now + heartbeat,
        timer_registered: false,
        deadline: None,
        close_sent: false,
        peer_closed: false,
        failed: false,
        half_closed: false,
        control_out: Vec::new(),
        echo: cfg.session.echo,
        shard,
    };
    s.shard.router.register(conn.clone());
    s.rearm(now);
    s.start();
    if !leftover.is_empty() {
        s.on_bytes(&leftover);
    }
    s.run().await;
    s.finish();
    drop(slot);
}

impl Session {
    fn start(&mut self) {
        if self.echo {
            return;
        }
        let cfg = &self.shard.node.config;
        let conn_id = format!("{:x}-{:x}", self.shard.node.epoch, self.conn.id);
        let welcome = protocol::welcome(
            &conn_id,
            &self.claims.sub,
            self.shard.id,
            cfg.session.heartbeat_ms,
            self.claims.exp,
        );
        // The welcome goes out first, once both automatic channels are live.
        self.conn.hold_for_welcome(welcome, 2);
        let router = &self.shard.router;
        router.subscribe(&self.conn, &self.user_channel, None, None, Ack::Automatic);
        router.subscribe(&self.conn, BROADCAST, None, None, Ack::Automatic);
    }

    fn finish(&mut self) {
        let router = &self.shard.router;
        for ch in self.subs.drain() {
            router.unsubscribe(self.conn.id, &ch);
        }
        router.unsubscribe(self.conn.id, &self.user_channel);
        router.unsubscribe(self.conn.id, BROADCAST);
        router.unregister(self.conn.id);
    }

    async fn run(&mut self) {
        loop {
            let now = Instant::now();
            if !self.close_sent {
                if let Some(reason) = self.conn.close_requested() {
                    self.start_close(reason);
                }
            }
            if self.peer_closed && self.conn.queue().is_empty() {
                break;
            }
            if self.deadline.is_some_and(|d| now >= d) {
                break;
            }
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Read(n) => {
                    {
                        let shard = self.shard.clone();
                        let buf = shard.scratch.borrow();
                        self.on_bytes(&buf[..n]);
                    }
                    // A client that keeps its socket full must not hold the shard.
                    glommio::yield_if_needed().await;
                }
                Event::Eof | Event::Failed => break,
                Event::Timer => self.on_timer(),
                Event::Wake => {}
            }
        }
        // A server closes the TCP connection first once the close handshake is done.
        let _ = self.stream.shutdown(std::net::Shutdown::Both).await;
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if !self.close_sent && self.conn.close_requested().is_some() {
            return Poll::Ready(Event::Wake);
        }
        match self.flush(cx) {
            Err(_) => return Poll::Ready(Event::Failed),
            // Everything written after the client's close: the connection is done.
            Ok(true) if self.peer_closed => return Poll::Ready(Event::Wake),
            Ok(true) if self.failed && self.close_sent && !self.half_closed => {
                self.half_closed = true;
                let _ = self.sock(|s| s.shutdown(std::net::Shutdown::Write));
            }
            Ok(_) => {}
        }
        if !self.peer_closed {
            let mut scratch = self.shard.scratch.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::Eof),
                Poll::Ready(Ok(n)) => return Poll::Ready(Event::Read(n)),
                Poll::Ready(Err(_)) => return Poll::Ready(Event::Failed),
                Poll::Pending => {}
            }
        }
        if Instant::now() >= self.timer_at {
            return Poll::Ready(Event::Timer);
        }
        if !self.timer_registered {
            self.timer_registered = true;
            if Pin::new(&mut self.timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
        }
        Poll::Pending
    }

    /// A socket2 view of the stream's descriptor, for calls glommio does not offer.
    fn sock<T>(&self, f: impl FnOnce(SockRef<'_>) -> T) -> T {
        // SAFETY: the descriptor belongs to `self.stream`, alive for this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        f(SockRef::from(&fd))
    }

    /// Writes what is queued, many frames per syscall. Ok(true) when the queue is empty.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        for _ in 0..WRITES_PER_POLL {
            let written = {
                let q = self.conn.queue();
                if q.is_empty() || (self.conn.is_held() && !self.close_sent) {
                    drop(q);
                    self.conn.set_waker(cx.waker());
                    return Ok(true);
                }
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = q.slices(&mut iov);
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                match self.sock(|s| s.send_vectored_with_flags(&iov[..n], flags)) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Let glommio wait for writability (it retries the send itself first).
                        let front = q.front().unwrap_or(&[]);
                        match Pin::new(&mut self.stream).poll_write(cx, front) {
                            Poll::Ready(Ok(w)) => w,
                            Poll::Ready(Err(e)) => return Err(e),
                            Poll::Pending => {
                                drop(q);
                                self.conn.set_waker(cx.waker());
                                return Ok(false);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(e) => return Err(e),
                }
            };
            self.advance(written);
        }
        // More to write: let other connections run first.
        cx.waker().wake_by_ref();
        Ok(false)
    }

    fn advance(&mut self, n: usize) {
        let now = Instant::now();
        let shard = &self.shard;
        let mut q = self.conn.queue();
        let before = q.bytes();
        let mut now_ms = None;
        q.advance(n, |f| {
            if f.message {
                shard.metrics.delivered.inc();
                if let Some(born) = f.born {
                    shard.record_latency(now.duration_since(born));
                }
                if let Some(origin) = f.origin_ms {
                    let now_ms = *now_ms.get_or_insert_with(crate::message::now_ms);
                    let d = Duration::from_millis(now_ms.saturating_sub(origin));
                    shard.metrics.record_to_socket.observe(d);
                }
            }
        });
        let after = q.bytes();
        drop(q);
        self.conn.track_bytes(before, after);
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        self.last_seen = Instant::now();
        if self.failed {
            return;
        }
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
                Ok(Message::Text(text)) if self.echo => {
                    if self.admit_frame() {
                        self.send_text(text.as_str());
                    }
                }
                Ok(Message::Binary(data)) if self.echo => {
                    if self.admit_frame() {
                        self.conn.send(&Rc::new(Frame::binary(&data)));
                    }
                }
                Ok(Message::Text(text)) => {
                    if self.admit_frame() {
                        self.on_request(text.as_str());
                    } else {
                        let id = request_id(text.as_str());
                        self.refuse(&id, ErrorCode::LimitExceeded, "client frame rate limit");
                    }
                }
                Ok(Message::Binary(_)) => {
                    if self.admit_frame() {
                        self.refuse(
                            &Value::Null,
                            ErrorCode::BadRequest,
                            "binary frames are not supported; send JSON text",
                        );
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

    fn fail(&mut self, reason: CloseReason) {
        self.failed = true;
        self.conn.request_close(reason);
    }

    fn admit_frame(&mut self) -> bool {
        if self.rate.take(Instant::now()) {
            return true;
        }
        self.shard.metrics.rate_limited.inc();
        if self.rate.refused_in_a_row > self.rate.burst as u32 {
            self.conn.request_close(CLOSE_RATE);
        }
        false
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let hb = self.shard.node.config.heartbeat();
        if now >= self.expires_at {
            self.conn.request_close(CLOSE_EXPIRED);
        } else if now.duration_since(self.last_seen) > hb * 2 {
            self.conn.request_close(CLOSE_IDLE);
        } else if now >= self.next_ping {
            self.conn.send(&Rc::new(Frame::ping()));
            self.next_ping = now + hb;
        }
        self.rearm(now);
    }

    /// Sets the timer to the next of: ping, silence limit, token expiry, close deadline.
    fn rearm(&mut self, now: Instant) {
        let hb = self.shard.node.config.heartbeat();
        let mut next = self
            .next_ping
            .min(self.last_seen + hb * 2 + Duration::from_millis(1));
        next = next.min(self.expires_at);
        if let Some(d) = self.deadline {
            next = next.min(d);
        }
        let wait = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        self.timer.reset(wait);
        self.timer_at = now + wait;
        self.timer_registered = false;
    }

    fn start_close(&mut self, reason: CloseReason) {
        tracing::debug!(conn = self.conn.id, code = reason.code, "closing");
        self.conn
            .send_unbounded(Frame::close(reason.code, reason.reason));
        self.close_sent = true;
        let now = Instant::now();
        self.deadline = Some(now + CLOSE_GRACE);
        self.rearm(now);
    }

    // ---- requests ----

    fn send_text(&self, text: &str) {
        self.conn.send(&Rc::new(Frame::text(text)));
    }

    fn refuse(&self, id: &Value, code: ErrorCode, message: &str) {
        self.send_text(&protocol::reply_err(id, &Refusal::new(code, message)));
    }

    fn on_request(&mut self, text: &str) {
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let id = request_id(text);
                return self.refuse(
                    &id,
                    ErrorCode::BadRequest,
                    &format!("malformed request: {e}"),
                );
            }
        };
        let result = match req.kind.as_deref() {
            Some("subscribe") => self.subscribe(&req),
            Some("unsubscribe") => self.unsubscribe(&req),
            Some("publish") => self.publish(&req),
            Some("ping") => {
                self.send_text(&protocol::pong(&req.id));
                Ok(())
            }
            Some(other) => Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("unknown type {other:?}"),
            )),
            None => Err(Refusal::new(ErrorCode::BadRequest, "missing type")),
        };
        if let Err(r) = result {
            self.send_text(&protocol::reply_err(&req.id, &r));
        }
    }

    fn channel<'r>(&self, req: &'r Request) -> Result<&'r str, Refusal> {
        let ch = req
            .channel
            .as_deref()
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "missing channel"))?;
        check_channel(ch, self.shard.node.config.limits.max_channel_len)
            .map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
        Ok(ch)
    }

    fn is_automatic(&self, ch: &str) -> bool {
        ch == BROADCAST || ch == self.user_channel
    }

    fn subscribe(&mut self, req: &Request) -> Result<(), Refusal> {
        let ch = self.channel(req)?;
        if !self.claims.may_subscribe(ch) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("token does not allow subscribing to {ch}"),
            ));
        }
        let filter = match &req.filter {
            None | Some(Value::Null) => None,
            Some(f) => Some(Filter::parse(f).map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?),
        };
        let since = match &req.since {
            None => None,
            Some(p) => Some(self.shard.router.parse_since(p).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::BadRequest,
                    "since is not a pos given by this gateway",
                )
            })?),
        };
        let router = &self.shard.router;
        if self.is_automatic(ch) {
            // Always subscribed: with `since` the membership is renewed to replay what was missed.
            match since {
                None => self.send_text(&protocol::reply_ok(&req.id, None)),
                Some(_) => {
                    router.subscribe(&self.conn, ch, None, since, Ack::Reply(req.id.clone()))
                }
            }
            return Ok(());
        }
        if self.subs.contains(ch) {
            // Subscribing again replaces the filter and runs the recovery again.
            router.unsubscribe(self.conn.id, ch);
        } else if self.subs.len() >= self.shard.node.config.limits.max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.shard.node.config.limits.max_subscriptions
                ),
            ));
        }
        self.subs.insert(ch.to_string());
        router.subscribe(&self.conn, ch, filter, since, Ack::Reply(req.id.clone()));
        Ok(())
    }

    fn unsubscribe(&mut self, req: &Request) -> Result<(), Refusal> {
        let ch = self.channel(req)?;
        if self.is_automatic(ch) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("{ch} is automatic and cannot be unsubscribed"),
            ));
        }
        if !self.subs.remove(ch) {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("not subscribed to {ch}"),
            ));
        }
        self.shard.router.unsubscribe(self.conn.id, ch);
        self.send_text(&protocol::reply_ok(&req.id, None));
        Ok(())
    }

    fn publish(&mut self, req: &Request) -> Result<(), Refusal> {
        let ch = self.channel(req)?;
        if !self.claims.may_publish(ch) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("token does not allow publishing to {ch}"),
            ));
        }
        let priority = protocol::parse_priority(req.priority.as_ref())
            .map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
        let publish = Publish {
            channel: ch.to_string(),
            event: req.event.clone(),
            id: None,
            priority,
            data: req.data.clone().unwrap_or(Value::Null),
            from: Some(self.claims.sub.clone()),
            born: Instant::now(),
            origin_ms: None,
        };
        let ack = ConnAck {
            shard: self.shard.id,
            conn: self.conn.id,
            id: req.id.clone(),
        };
        self.shard.router.publish(publish, Some(ack));
        Ok(())
    }
}

/// The `id` of a request that could not be handled in full, so the error reply can repeat it.
pub fn request_id(text: &str) -> Value {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null)
}
