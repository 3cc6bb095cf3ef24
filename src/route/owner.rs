//! The owner side of the router: publishing, sequencing, the history, fan-out to the shards with
//! members, recovery pages, and what the shard's Kafka I/O thread hands over.

use super::history::Lookup;
use super::Router;
use crate::conn::ConnHandle;
use crate::mesh::{ConnAck, Control, Corr, MeshMsg, PageResult};
use crate::message::{Frame, Msg, Publish};
use crate::protocol::{self, ErrorCode, Refusal};
use crate::topology::{self, Stream, BROADCAST, UNRECOVERABLE};
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

impl Router {
    /// A publish from a client of this shard; the reply goes back to it once sequenced (or, with
    /// Kafka, once the broker has acknowledged it).
    pub fn publish(&self, p: Publish, ack: Option<ConnAck>) {
        if self.kafka.is_some() {
            return self.produce(p, ack);
        }
        let owner = self.owner(&p.channel);
        if owner == self.shard {
            let msg = self.sequence(p);
            if let Some(a) = ack {
                self.ack(a, Ok(msg.pos.to_string()));
            }
            return;
        }
        let id = ack.as_ref().map(|a| (a.conn, a.id.clone()));
        let c = Control::Publish { publish: p, ack };
        if self
            .peers
            .data(owner, MeshMsg::Control(Box::new(c)))
            .is_err()
        {
            // The owner is behind: the client is told to retry rather than left waiting.
            if let Some((conn, id)) = id {
                let busy = Refusal::new(ErrorCode::Internal, "gateway busy, retry");
                self.reply(conn, &protocol::reply_err(&id, &busy));
            }
        }
    }

    /// Sequences a message of a channel this shard owns, keeps it for `since`, and fans it out.
    pub fn sequence(&self, p: Publish) -> Arc<Msg> {
        debug_assert_eq!(self.owner(&p.channel), self.shard);
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let channel: Arc<str> = Arc::from(p.channel.as_str());
        let pos = topology::format_pos(self.epoch, seq);
        let msg = Arc::new(Msg::new(p, channel, 0, seq, pos));
        self.keep_and_fan_out(&msg);
        msg
    }

    pub(super) fn keep_and_fan_out(&self, msg: &Arc<Msg>) {
        self.history
            .borrow_mut()
            .push(msg.clone(), msg.seq, Instant::now());
        self.metrics.messages_in.inc();
        self.fan_out(msg);
    }

    /// Delivers to this shard's members and forwards one handle to every shard with members.
    fn fan_out(&self, msg: &Arc<Msg>) {
        self.deliver_local(msg);
        let ch = &*msg.channel;
        let mut targets = if ch == BROADCAST {
            u64::MAX
        } else {
            let mut t = self.interest.borrow().shards(ch);
            if ch.starts_with("user:") {
                t |= self.slots.borrow().user_shards(ch);
            }
            t
        };
        targets &= !(1u64 << self.shard);
        let mut peer = 0;
        while targets != 0 && peer < self.shards {
            if targets & (1 << peer) != 0 {
                targets &= !(1 << peer);
                if self
                    .peers
                    .data(peer, MeshMsg::Deliver(msg.clone()))
                    .is_err()
                {
                    self.lost(peer, &msg.channel);
                }
            }
            peer += 1;
        }
    }

    /// A delivery to `peer` could not be queued: stop forwarding the channel there, and say so in
    /// its place so the members there are closed (1013) before anything later reaches them.
    fn lost(&self, peer: usize, channel: &Arc<str>) {
        self.interest.borrow_mut().leave(channel, peer);
        self.peers.lost(peer, channel);
    }

    /// The owner's side of a recovery page: from memory, else (with Kafka) read from the broker.
    /// None when the answer will come from Kafka (as a `Page` to the member's shard).
    pub(super) fn answer_recover(
        &self,
        corr: Corr,
        channel: &Arc<str>,
        stream: Stream,
        after: u64,
        max_bytes: usize,
        max_scan: usize,
    ) -> Option<PageResult> {
        if stream == UNRECOVERABLE {
            return Some(PageResult::Unreachable);
        }
        let nothing_missed = PageResult::Msgs {
            msgs: Vec::new(),
            next_after: after,
            done: true,
            scanned: 0,
        };
        let lookup = self
            .history
            .borrow()
            .page(stream, channel, after, max_bytes);
        let to = match lookup {
            Lookup::Page { msgs, done } => {
                let next_after = msgs.last().map_or(after, |m| m.seq.max(after));
                return Some(PageResult::Msgs {
                    msgs,
                    next_after,
                    done,
                    scanned: 0,
                });
            }
            Lookup::Gap { .. } | Lookup::Missing if stream == 0 => {
                // In-process: recoverable only if nothing was sequenced here since.
                let ok = matches!(lookup, Lookup::Missing) && after >= self.seq.get();
                return Some(if ok {
                    nothing_missed
                } else {
                    PageResult::Unreachable
                });
            }
            Lookup::Gap { covered_from } => covered_from,
            Lookup::Missing => {
                let Some(next) = self.positions.borrow().get(&stream).copied() else {
                    let e = "the partition is not being consumed yet".to_string();
                    return Some(PageResult::Failed(e));
                };
                // Everything of the channel from `next` on will arrive here and be kept.
                let next = u64::try_from(next).unwrap_or(0);
                self.history
                    .borrow_mut()
                    .ensure(stream, channel, next, Instant::now())
            }
        };
        if after.saturating_add(1) >= to {
            return Some(nothing_missed);
        }
        self.read_page(corr, channel, stream, after, to, max_bytes, max_scan)
    }

    /// Sends a page to the member's shard (or replays it here).
    pub(super) fn send_page(&self, corr: Corr, channel: Arc<str>, page: PageResult) {
        if corr.shard == self.shard {
            self.on_page(corr, &channel, page);
        } else {
            self.peers.control(
                corr.shard,
                Control::Page {
                    corr,
                    channel,
                    page,
                },
            );
        }
    }

    pub(super) fn ack(&self, a: ConnAck, result: Result<String, Refusal>) {
        if a.shard == self.shard {
            self.send_ack(a.conn, &a.id, &result);
        } else {
            let (conn, id) = (a.conn, a.id);
            self.peers
                .control(a.shard, Control::Acked { conn, id, result });
        }
    }

    pub(super) fn send_ack(&self, conn: u64, id: &Value, result: &Result<String, Refusal>) {
        let text = match result {
            Ok(pos) => protocol::reply_ok(id, Some(("pos", Value::String(pos.clone())))),
            Err(r) => protocol::reply_err(id, r),
        };
        self.reply(conn, &text);
    }

    pub(super) fn reply(&self, conn: u64, text: &str) {
        let c: Option<Rc<ConnHandle>> = self.conns.borrow().get(&conn).cloned();
        if let Some(c) = c {
            c.send(&Rc::new(Frame::text(text)));
        }
    }
}
