//! One WebSocket connection after the upgrade: a single task that reads client frames (tungstenite's
//! codec over bytes we read, `codec`), answers requests (`requests`), drains the send queue with
//! vectored writes (`writer`), pings and expires (`timers`), and closes with the right code.

mod codec;
mod inbound;
mod requests;
mod timers;
mod writer;

pub use codec::{ws_config, Io};
pub use requests::request_id;

use crate::auth::Claims;
use crate::conn::{CloseReason, ConnHandle};
use crate::deflate::Agreed;
use crate::protocol;
use crate::route::Subscribe;
use crate::shard::Shard;
use crate::topology::BROADCAST;
use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use timers::RateLimit;
use tungstenite::protocol::{Role, WebSocketContext};

/// How long a closing connection waits for its close frame to go out and the client to answer.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Tokens valid for longer than this (10 years) are treated as valid for this long.
const MAX_TOKEN_SECS: u64 = 10 * 365 * 24 * 3600;
/// Vectored writes per wake before yielding to other connections.
pub(super) const WRITES_PER_POLL: usize = 16;

pub(super) const CLOSE_TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "message too big",
};
pub(super) const CLOSE_PROTOCOL: CloseReason = CloseReason {
    code: 1002,
    reason: "protocol error",
};
pub(super) const CLOSE_BAD_UTF8: CloseReason = CloseReason {
    code: 1007,
    reason: "invalid UTF-8",
};
pub(super) const CLOSE_BAD_DEFLATE: CloseReason = CloseReason {
    code: 1007,
    reason: "invalid compressed data",
};
pub(super) const CLOSE_RATE: CloseReason = CloseReason {
    code: 1008,
    reason: "client frame rate limit exceeded",
};
pub(super) const CLOSE_NORMAL: CloseReason = CloseReason {
    code: 1000,
    reason: "closed by client",
};
pub(super) const CLOSE_IDLE: CloseReason = CloseReason {
    code: 1000,
    reason: "heartbeat timeout",
};

enum Event {
    Read(usize),
    Eof,
    Failed,
    Timer,
    Wake,
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
    /// When `refresh_due` goes out (None once sent).
    refresh_at: Option<Instant>,
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
    /// Frame boundaries of the client's stream, with permessage-deflate only.
    inbound: Option<Box<inbound::Inbound>>,
}

/// Starts a connection's session (its welcome, its automatic channels, the bytes that came with
/// the upgrade) and returns the task that runs it to its end. `slot` (the connection's limits,
/// released on drop) is held until then. Not an `async fn`: its arguments would stay in the task
/// for the connection's life beside the `Session` they were moved into (~0.4 KiB each).
pub fn run<S>(
    shard: Rc<Shard>,
    stream: TcpStream,
    claims: Claims,
    mut leftover: Vec<u8>,
    deflate: Option<Agreed>,
    slot: S,
) -> impl Future<Output = ()> {
    let cfg = &shard.node.config;
    let conn = Rc::new(
        ConnHandle::new(
            shard.next_conn_id(),
            cfg.limits.queue_bytes,
            shard.metrics.clone(),
        )
        .with_deflate(deflate)
        .with_coalescer(shard.coalescer.clone()),
    );
    let ws_config = ws_config(cfg);
    let now = Instant::now();
    let heartbeat = cfg.heartbeat();
    let (expires_at, refresh_at) = expiry(cfg, claims.exp, now);
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
        refresh_at,
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
        inbound: deflate.map(|_| Box::default()),
        shard,
    };
    s.shard.router.register(conn.clone());
    // A drain that began after the handshake was admitted has not seen this connection.
    if s.shard.node.is_draining() {
        conn.request_close(crate::conn::CLOSE_SHUTDOWN);
    }
    s.rearm(now);
    s.start();
    if !leftover.is_empty() {
        s.on_bytes(&mut leftover);
    }
    async move {
        s.run().await;
        s.finish();
        drop(slot);
    }
}

/// When a token with `exp` stops being valid here, and when to say so beforehand: the lesser of
/// `session.refresh_notice_secs` and half the time left.
fn expiry(cfg: &crate::config::Config, exp: u64, now: Instant) -> (Instant, Option<Instant>) {
    // Capped: an absurd `exp` must not overflow the clock arithmetic.
    let secs_left = exp.saturating_sub(crate::message::now_ms() / 1000);
    let secs_left = secs_left
        .saturating_add(cfg.auth.leeway_secs)
        .min(MAX_TOKEN_SECS);
    let left = Duration::from_secs(secs_left);
    let notice = Duration::from_secs(cfg.session.refresh_notice_secs).min(left / 2);
    let expires_at = now + left;
    (expires_at, Some(expires_at - notice))
}

impl Session {
    /// Takes a new token's expiry (a `refresh`).
    fn set_expiry(&mut self, exp: u64) {
        let now = Instant::now();
        let (expires_at, refresh_at) = expiry(&self.shard.node.config, exp, now);
        self.expires_at = expires_at;
        self.refresh_at = refresh_at;
        self.rearm(now);
    }

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
        // Both automatic channels are live at once (`broadcast` goes to every shard; the user's
        // channel follows the slot taken in the handshake), so the welcome is the first frame and
        // anything published after it reaches the client.
        self.send_text(&welcome);
        let router = &self.shard.router;
        for channel in [self.user_channel.as_str(), BROADCAST] {
            let s = Subscribe {
                channel,
                filter: None,
                since: None,
                reply: None,
                automatic: true,
                presence: None,
                join_leave: false,
            };
            router.subscribe(&self.conn, s);
        }
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
                        let mut buf = shard.scratch.borrow_mut();
                        self.on_bytes(&mut buf[..n]);
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
}
