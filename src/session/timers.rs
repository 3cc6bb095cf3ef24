//! A connection's clock and limits: the client frame rate, heartbeats, token expiry, and the close
//! deadline, all on one timer re-armed to the next of them.

use super::{Session, CLOSE_GRACE, CLOSE_IDLE, CLOSE_RATE};
use crate::conn::{CloseReason, CLOSE_EXPIRED};
use crate::message::Frame;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Client frames allowed per second, with a burst; refusals in a row beyond the burst close.
pub(super) struct RateLimit {
    pub(super) tokens: f64,
    pub(super) rate: f64,
    pub(super) burst: f64,
    pub(super) last: Instant,
    pub(super) refused_in_a_row: u32,
}

impl RateLimit {
    pub(super) fn take(&mut self, now: Instant) -> bool {
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

impl Session {
    pub(super) fn admit_frame(&mut self) -> bool {
        if self.rate.take(Instant::now()) {
            return true;
        }
        self.shard.metrics.rate_limited.inc();
        if self.rate.refused_in_a_row > self.rate.burst as u32 {
            self.conn.request_close(CLOSE_RATE);
        }
        false
    }

    pub(super) fn on_timer(&mut self) {
        let now = Instant::now();
        let hb = self.shard.node.config.heartbeat();
        if now >= self.expires_at {
            self.conn.request_close(CLOSE_EXPIRED);
        } else if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            self.send_text(&crate::protocol::refresh_due(self.claims.exp));
        } else if now.duration_since(self.last_seen) > hb * 2 {
            self.conn.request_close(CLOSE_IDLE);
        } else if now >= self.next_ping {
            self.conn.send(&Rc::new(Frame::ping()));
            self.next_ping = now + hb;
        }
        self.rearm(now);
    }

    /// Sets the timer to the next of: ping, silence limit, refresh notice, token expiry, close
    /// deadline.
    pub(super) fn rearm(&mut self, now: Instant) {
        let hb = self.shard.node.config.heartbeat();
        let mut next = self
            .next_ping
            .min(self.last_seen + hb * 2 + Duration::from_millis(1));
        next = next.min(self.expires_at);
        if let Some(t) = self.refresh_at {
            next = next.min(t);
        }
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

    pub(super) fn start_close(&mut self, reason: CloseReason) {
        tracing::debug!(conn = self.conn.id, code = reason.code, "closing");
        self.conn
            .send_unbounded(Frame::close(reason.code, reason.reason));
        self.close_sent = true;
        let now = Instant::now();
        self.deadline = Some(now + CLOSE_GRACE);
        self.rearm(now);
    }
}
