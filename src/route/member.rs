//! The member side of the router: subscriptions of this shard's connections, live delivery to
//! them, and recoveries replayed page by page as each connection's queue drains.

use super::members::{Cursor, Joined, Member, State};
use super::{Router, Subscribe};
use crate::conn::{ConnHandle, CLOSE_LOST};
use crate::deflate::Frames;
use crate::mesh::Control;
use crate::message::{Frame, Msg};
use crate::protocol::{self, ErrorCode, Filter, Refusal};
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

fn send_text(conn: &ConnHandle, text: &str) {
    conn.send(&Rc::new(Frame::text(text)));
}

pub(super) fn reply_ok(conn: &ConnHandle, id: &Value, recovered: Option<bool>) {
    let extra = recovered.map(|r| ("recovered", Value::Bool(r)));
    send_text(conn, &protocol::reply_ok(id, extra));
}

fn reply_canceled(conn: &ConnHandle, id: &Value) {
    let r = Refusal::new(
        ErrorCode::Canceled,
        "superseded by a later request on the same channel",
    );
    send_text(conn, &protocol::reply_err(id, &r));
}

/// Whether `filter` lets `msg` through; `data` is the message's parsed `data`, parsed at most
/// once per message and shard, and only when some member has a filter.
pub(super) fn passes(filter: Option<&Rc<Filter>>, msg: &Msg, data: &mut Option<Value>) -> bool {
    let Some(f) = filter else { return true };
    let d = data.get_or_insert_with(|| serde_json::from_str(msg.data_json()).unwrap_or_default());
    f.matches(d)
}

impl Router {
    /// Adds `conn` to a channel, or changes its membership in place (a new filter, a new `since`):
    /// the member never leaves, so nothing that passes both filters is missed across the change.
    /// It goes live, and the request is answered, once the owner forwards the channel here; with
    /// `since`, once the replay reaches the owner's head.
    pub fn subscribe(&self, conn: &Rc<ConnHandle>, s: Subscribe<'_>) {
        let owner_here = self.owner(s.channel) == self.shard;
        let filter = s.filter.map(Rc::new);
        let mut canceled = None;
        let mut answer = None;
        let mut join = None;
        let mut counted = None;
        let recovering = s.since.is_some();
        {
            let mut members = self.members.borrow_mut();
            let key = members.key(s.channel);
            let ch = members.entry(key.clone());
            let ready = s.automatic || ch.live_now(owner_here);
            let state = match s.since {
                Some(since) => State::Recovering(Cursor {
                    gen: self.gen(),
                    stream: since.stream,
                    after: since.seq,
                    reply: s.reply.clone(),
                    started: Instant::now(),
                    scanned: 0,
                }),
                None if ready => {
                    answer = s.reply.clone();
                    State::Live
                }
                None => State::Pending {
                    reply: s.reply.clone(),
                },
            };
            if let Some(m) = ch.members.get_mut(&conn.id) {
                canceled = m.state.take_reply();
                if !m.automatic {
                    m.filter = filter;
                    m.join_leave = s.join_leave;
                }
                m.state = match (state, &m.state) {
                    // Still waiting for the owner: the new request waits too.
                    (State::Live, State::Pending { .. }) => {
                        let reply = answer.take();
                        State::Pending { reply }
                    }
                    (state, _) => state,
                };
            } else {
                if !s.automatic && !owner_here && ch.joined == Joined::No {
                    let gen = self.gen();
                    ch.joined = Joined::Asked(gen);
                    join = Some(gen);
                }
                let presence = s.presence.filter(|_| !s.automatic).map(Arc::from);
                counted = presence.clone().map(|u| (key.clone(), u));
                let member = Member {
                    conn: conn.clone(),
                    filter,
                    automatic: s.automatic,
                    state,
                    presence,
                    join_leave: s.join_leave && !s.automatic,
                };
                members.insert(key.clone(), member);
                self.metrics.subscriptions.inc();
                self.metrics.channels.set(members.channels() as i64);
            }
            if let Some(gen) = join {
                let from = self.shard;
                let owner = self.owner(s.channel);
                self.peers.control(
                    owner,
                    Control::Join {
                        channel: key,
                        from,
                        gen,
                    },
                );
            }
        }
        if let Some((channel, user)) = counted {
            self.presence_delta(&channel, &user, 1);
        }
        if let Some(id) = canceled {
            reply_canceled(conn, &id);
        }
        if let Some(id) = answer {
            reply_ok(conn, &id, None);
        }
        if recovering {
            let key = self.members.borrow().key(s.channel);
            self.schedule(conn.id, key);
        }
    }

    /// Removes `conn` from `channel`; false if it was not a member. A reply still owed to an
    /// earlier request on the channel is answered `canceled`.
    pub fn unsubscribe(&self, conn: u64, channel: &str) -> bool {
        let removed = self.members.borrow_mut().remove(channel, conn);
        let Some((mut m, left)) = removed else {
            return false;
        };
        self.metrics.subscriptions.dec();
        self.metrics
            .channels
            .set(self.members.borrow().channels() as i64);
        if let Some(id) = m.state.take_reply() {
            reply_canceled(&m.conn, &id);
        }
        if let Some(user) = &m.presence {
            self.presence_delta(&self.members.borrow().key(channel), user, -1);
        }
        if matches!(left, Some(Joined::Asked(_) | Joined::Yes(_))) {
            let from = self.shard;
            let channel = Arc::from(channel);
            self.peers
                .control(self.owner(&channel), Control::Leave { channel, from });
        }
        true
    }

    /// The owner forwards `channel` here from now on: waiting members go live.
    pub(super) fn join_acked(&self, channel: &str, gen: u64) {
        let mut ready = Vec::new();
        {
            let mut members = self.members.borrow_mut();
            let Some(ch) = members.get_mut(channel) else {
                return;
            };
            // An answer to an earlier announcement of the channel is not this one's.
            if ch.joined != Joined::Asked(gen) {
                return;
            }
            ch.joined = Joined::Yes(gen);
            for m in ch.members.values_mut() {
                if let State::Pending { reply } = &mut m.state {
                    ready.push((m.conn.clone(), reply.take()));
                    m.state = State::Live;
                }
            }
        }
        for (conn, reply) in ready {
            if let Some(id) = reply {
                reply_ok(&conn, &id, None);
            }
        }
    }

    /// Frames `msg` once (and compresses it once for members with permessage-deflate) and queues
    /// it on every live member its filter lets through.
    pub fn deliver_local(&self, msg: &Arc<Msg>) {
        let members = self.members.borrow();
        let Some(ch) = members.get(&msg.channel) else {
            return;
        };
        let mut frames = Frames::new(msg);
        let mut data = None;
        for m in ch.members.values() {
            if !m.state.takes(msg.stream, msg.seq) || !passes(m.filter.as_ref(), msg, &mut data) {
                continue;
            }
            m.conn.send(frames.get(m.conn.deflate()));
        }
        if let Some(saved) = frames.saved() {
            let [compressed, saved_bytes, _] = &self.metrics.deflate;
            compressed.inc();
            saved_bytes.inc_by(saved);
        }
    }

    /// A delivery of `channel` to this shard was dropped on the way: its members here are closed
    /// with 1013 before anything later reaches them, and recover with `since`.
    pub(super) fn lost_here(&self, channel: &str, from: usize) {
        let taken = self.members.borrow_mut().take(channel);
        let Some(ch) = taken else { return };
        tracing::warn!(
            channel,
            owner = from,
            members = ch.members.len(),
            "deliveries lost between shards: closing members with 1013"
        );
        self.metrics.subscriptions.dec_by(ch.members.len() as i64);
        self.metrics
            .channels
            .set(self.members.borrow().channels() as i64);
        let key: Arc<str> = Arc::from(channel);
        for m in ch.members.values() {
            m.conn.request_close(CLOSE_LOST);
            if let Some(user) = &m.presence {
                self.presence_delta(&key, user, -1);
            }
        }
        if matches!(ch.joined, Joined::Asked(_) | Joined::Yes(_)) {
            let me = self.shard;
            self.peers.control(
                from,
                Control::Leave {
                    channel: Arc::from(channel),
                    from: me,
                },
            );
        }
    }
}
