//! The member side of the router: subscriptions of this shard's connections, live delivery to
//! them, and recoveries replayed page by page as each connection's queue drains.

use super::members::{Cursor, Joined, Member, State};
use super::{Router, Subscribe};
use crate::conn::{ConnHandle, CLOSE_LOST};
use crate::mesh::{Control, Corr, PageResult};
use crate::message::{Frame, Msg};
use crate::protocol::{self, ErrorCode, Filter, Refusal};
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What happens to a recovering member after a page.
enum After {
    Continue,
    Live,
    Close,
}

fn send_text(conn: &ConnHandle, text: &str) {
    conn.send(&Rc::new(Frame::text(text)));
}

fn reply_ok(conn: &ConnHandle, id: &Value, recovered: Option<bool>) {
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
fn passes(filter: Option<&Rc<Filter>>, msg: &Msg, data: &mut Option<Value>) -> bool {
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
                let member = Member {
                    conn: conn.clone(),
                    filter,
                    automatic: s.automatic,
                    state,
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

    /// Frames `msg` once and queues it on every live member its filter lets through.
    pub fn deliver_local(&self, msg: &Arc<Msg>) {
        let members = self.members.borrow();
        let Some(ch) = members.get(&msg.channel) else {
            return;
        };
        let mut frame: Option<Rc<Frame>> = None;
        let mut data = None;
        for m in ch.members.values() {
            if !matches!(m.state, State::Live) || !passes(m.filter.as_ref(), msg, &mut data) {
                continue;
            }
            let f = frame.get_or_insert_with(|| Rc::new(Frame::message(msg)));
            m.conn.send(f);
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
        for m in ch.members.values() {
            m.conn.request_close(CLOSE_LOST);
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

    /// Queues a recovery of `conn` for its next page.
    fn schedule(&self, conn: u64, channel: Arc<str>) {
        self.sched
            .borrow_mut()
            .entry(conn)
            .or_default()
            .queue
            .push_back(channel);
        self.pump(conn);
    }

    /// The connection's queue has room again (its session calls this after writing).
    pub fn room(&self, conn: u64) {
        self.pump(conn);
    }

    /// Asks for the connection's next page, if none is out and its queue has room: pages fill at
    /// most half of the queue, so a client that reads recovers any backlog without overflowing.
    pub(super) fn pump(&self, conn_id: u64) {
        loop {
            let Some(conn) = self.conns.borrow().get(&conn_id).cloned() else {
                return;
            };
            let half = self.cfg.queue_bytes / 2;
            let queued = conn.queued_bytes();
            let next = {
                let mut sched = self.sched.borrow_mut();
                let Some(s) = sched.get_mut(&conn_id) else {
                    return;
                };
                if s.in_flight {
                    return;
                }
                if queued >= half {
                    conn.want_room();
                    return;
                }
                let Some(channel) = s.queue.pop_front() else {
                    sched.remove(&conn_id);
                    return;
                };
                s.in_flight = true;
                channel
            };
            let cursor = {
                let members = self.members.borrow();
                match members.get(&next).and_then(|c| c.members.get(&conn_id)) {
                    Some(Member {
                        state: State::Recovering(c),
                        ..
                    }) => Some((c.gen, c.stream, c.after, c.scanned)),
                    _ => None,
                }
            };
            let Some((gen, stream, after, scanned)) = cursor else {
                self.page_done(conn_id);
                continue;
            };
            let corr = Corr {
                shard: self.shard,
                conn: conn_id,
                gen,
            };
            let max_bytes = half - queued;
            let max_scan = self.cfg.recovery_max_records.saturating_sub(scanned).max(1);
            let owner = self.owner(&next);
            if owner != self.shard {
                self.peers.control(
                    owner,
                    Control::Recover {
                        corr,
                        channel: next,
                        stream,
                        after,
                        max_bytes,
                        max_scan,
                    },
                );
                return;
            }
            match self.answer_recover(corr, &next, stream, after, max_bytes, max_scan) {
                Some(page) => self.apply_page(corr, &next, page),
                // Read from Kafka; the answer comes back through `on_page`.
                None => return,
            }
        }
    }

    fn page_done(&self, conn: u64) {
        if let Some(s) = self.sched.borrow_mut().get_mut(&conn) {
            s.in_flight = false;
        }
    }

    /// A page came back (from the owner, or this shard's Kafka reader).
    pub(super) fn on_page(&self, corr: Corr, channel: &Arc<str>, page: PageResult) {
        self.apply_page(corr, channel, page);
        self.pump(corr.conn);
    }

    /// Replays a page to its member (if it still waits for this one) and decides what follows.
    fn apply_page(&self, corr: Corr, channel: &Arc<str>, page: PageResult) {
        self.page_done(corr.conn);
        let after = {
            let mut members = self.members.borrow_mut();
            let Some(m) = members
                .get_mut(channel)
                .and_then(|c| c.members.get_mut(&corr.conn))
            else {
                return;
            };
            let State::Recovering(c) = &mut m.state else {
                return;
            };
            if c.gen != corr.gen {
                return;
            }
            let over_budget = c.scanned > self.cfg.recovery_max_records
                || c.started.elapsed() > self.cfg.recovery_timeout;
            let after = match page {
                PageResult::Msgs { .. } | PageResult::Unreachable if over_budget => {
                    match c.reply.take() {
                        Some(id) => {
                            reply_ok(&m.conn, &id, Some(false));
                            After::Live
                        }
                        None => After::Close,
                    }
                }
                PageResult::Msgs {
                    msgs,
                    next_after,
                    done,
                    scanned,
                } => {
                    c.scanned += scanned;
                    if let Some(id) = c.reply.take() {
                        reply_ok(&m.conn, &id, Some(true));
                    }
                    for msg in &msgs {
                        if msg.seq <= c.after {
                            continue;
                        }
                        let mut data = None;
                        if passes(m.filter.as_ref(), msg, &mut data) {
                            m.conn.send(&Rc::new(Frame::replay(msg)));
                        }
                        c.after = msg.seq;
                    }
                    c.after = c.after.max(next_after);
                    if done {
                        After::Live
                    } else {
                        After::Continue
                    }
                }
                PageResult::Unreachable => match c.reply.take() {
                    Some(id) => {
                        reply_ok(&m.conn, &id, Some(false));
                        After::Live
                    }
                    None => After::Close,
                },
                PageResult::Failed(e) => {
                    tracing::info!(channel = %channel, error = %e, "recovery failed: closing with 1013");
                    After::Close
                }
            };
            match after {
                After::Live => m.state = State::Live,
                After::Close => m.conn.request_close(CLOSE_LOST),
                After::Continue => {}
            }
            after
        };
        if matches!(after, After::Continue) {
            if let Some(s) = self.sched.borrow_mut().get_mut(&corr.conn) {
                s.queue.push_back(channel.clone());
            }
        }
    }
}
