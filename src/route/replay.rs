//! Recovery on the member's side: each connection's recoveries take turns, one page request out at
//! a time, asked for only when the connection's queue has drained below half its bound; each page
//! is replayed to its member, which then asks for the next, goes live, or is closed.

use super::member::{passes, reply_ok};
use super::members::{Member, State};
use super::Router;
use crate::conn::CLOSE_LOST;
use crate::mesh::{Control, Corr, PageResult};
use crate::message::Frame;
use crate::protocol::{self, ErrorCode, Refusal};
use std::rc::Rc;
use std::sync::Arc;

/// What happens to a recovering member after a page.
enum After {
    Continue,
    Live,
    Close,
    /// The recovery failed before its reply: the request is refused and the member goes.
    Refuse,
}

impl Router {
    /// Queues a recovery of `conn` for its next page.
    pub(super) fn schedule(&self, conn: u64, channel: Arc<str>) {
        {
            let mut sched = self.sched.borrow_mut();
            let q = &mut sched.entry(conn).or_default().queue;
            // A channel waits at most once: repeated requests must not grow the queue.
            if !q.contains(&channel) {
                q.push_back(channel);
            }
        }
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
                PageResult::Failed(e) => match c.reply.take() {
                    Some(id) => {
                        let r = Refusal::new(
                            ErrorCode::Internal,
                            format!("recovery failed ({e}): subscribe again with since"),
                        );
                        m.conn
                            .send(&Rc::new(Frame::text(&protocol::reply_err(&id, &r))));
                        After::Refuse
                    }
                    None => {
                        tracing::info!(channel = %channel, error = %e, "recovery failed: closing with 1013");
                        After::Close
                    }
                },
            };
            let floor = (c.stream, c.after);
            match after {
                After::Live => m.state = State::LiveAfter(floor.0, floor.1),
                After::Refuse => {}
                After::Close => m.conn.request_close(CLOSE_LOST),
                After::Continue => {}
            }
            after
        };
        if matches!(after, After::Refuse) {
            self.unsubscribe(corr.conn, channel);
        }
        if matches!(after, After::Continue) {
            if let Some(s) = self.sched.borrow_mut().get_mut(&corr.conn) {
                s.queue.push_back(channel.clone());
            }
        }
    }
}
