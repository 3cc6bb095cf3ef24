//! Client requests: subscribe, unsubscribe, publish, ping, answered as the contract says.

use super::Session;
use crate::auth::AuthError;
use crate::mesh::ConnAck;
use crate::message::{Frame, Publish};
use crate::protocol::{self, check_channel, ErrorCode, Filter, Refusal, Request};
use crate::route::Subscribe;
use crate::topology::BROADCAST;
use serde_json::Value;
use std::rc::Rc;
use std::time::Instant;

impl Session {
    pub(super) fn send_text(&self, text: &str) {
        self.conn.send(&Rc::new(Frame::text(text)));
    }

    pub(super) fn refuse(&self, id: &Value, code: ErrorCode, message: &str) {
        self.send_text(&protocol::reply_err(id, &Refusal::new(code, message)));
    }

    pub(super) fn on_request(&mut self, text: &str) {
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
            Some("refresh") => self.refresh(&req),
            Some("presence") => self.presence(&req, true),
            Some("presence_stats") => self.presence(&req, false),
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
            Some(p) => Some(self.shard.router.parse_since(ch, p).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::BadRequest,
                    "since is not a pos given by this gateway",
                )
            })?),
        };
        let join_leave = req.join_leave == Some(true);
        let presence = self.has_presence(ch);
        if join_leave && !presence {
            return Err(no_presence());
        }
        let router = &self.shard.router;
        let automatic = self.is_automatic(ch);
        if automatic && since.is_none() {
            // Always subscribed; without `since` there is nothing to do.
            self.send_text(&protocol::reply_ok(&req.id, None));
            return Ok(());
        }
        // Subscribing again changes the membership in place (filter, recovery): no leave, no gap.
        let new = !automatic && !self.subs.contains(ch);
        if new && self.subs.len() >= self.shard.node.config.limits.max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.shard.node.config.limits.max_subscriptions
                ),
            ));
        }
        if new {
            self.subs.insert(ch.to_string());
        }
        let s = Subscribe {
            channel: ch,
            filter: filter.filter(|_| !automatic),
            since,
            reply: Some(req.id.clone()),
            automatic,
            presence: presence.then_some(self.claims.sub.as_str()),
            join_leave,
        };
        router.subscribe(&self.conn, s);
        Ok(())
    }

    /// Whether `ch` has presence (`presence.channels`); a user's own channels never do.
    fn has_presence(&self, ch: &str) -> bool {
        let patterns = &self.shard.node.config.presence.channels;
        !self.is_automatic(ch) && crate::auth::allows(patterns, ch)
    }

    /// `presence` (`list`) and `presence_stats`: answered by the channel's owner shard.
    fn presence(&mut self, req: &Request, list: bool) -> Result<(), Refusal> {
        let ch = self.channel(req)?;
        if !self.claims.may_subscribe(ch) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("token does not allow subscribing to {ch}"),
            ));
        }
        if !self.has_presence(ch) {
            return Err(no_presence());
        }
        self.shard
            .router
            .presence(&self.conn, ch, req.id.clone(), list);
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

    /// A new token for the same user: the connection's expiry moves, and the new grants apply at
    /// once (subscriptions they no longer allow end, each with an `unsubscribed` frame).
    fn refresh(&mut self, req: &Request) -> Result<(), Refusal> {
        let token = req
            .token
            .as_deref()
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "missing token"))?;
        let verifier = &self.shard.node.verifier;
        let claims = verifier.verify(token).map_err(|e| {
            if let (AuthError::UnknownKey, Some(jwks)) = (e, verifier.jwks()) {
                // The provider may have rotated its keys: the client's retry can succeed.
                jwks.request_refresh();
            }
            Refusal::new(
                ErrorCode::Forbidden,
                format!("token refused: {}", e.reason()),
            )
        })?;
        if claims.sub != self.claims.sub {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "the new token is for another user",
            ));
        }
        let ended: Vec<String> = self
            .subs
            .iter()
            .filter(|ch| !claims.may_subscribe(ch))
            .cloned()
            .collect();
        for ch in ended {
            self.subs.remove(&ch);
            self.shard.router.unsubscribe(self.conn.id, &ch);
            self.send_text(&protocol::unsubscribed(
                &ch,
                "the new token does not allow it",
            ));
        }
        let exp = claims.exp;
        self.claims = claims;
        self.set_expiry(exp);
        let extra = Some(("expires", Value::from(exp)));
        self.send_text(&protocol::reply_ok(&req.id, extra));
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

fn no_presence() -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        "presence is not enabled for this channel",
    )
}

/// The `id` of a request that could not be handled in full, so the error reply can repeat it.
pub fn request_id(text: &str) -> Value {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null)
}
