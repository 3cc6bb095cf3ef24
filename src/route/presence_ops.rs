//! The router's presence: members' shards tell a channel's owner of every connection that
//! subscribes or leaves (`PresenceDelta`, control lane: never lost); the owner keeps the node's
//! counts and other nodes' (from the presence topic) in its `PresenceTable`, answers `presence`
//! from it without asking other shards, and every `presence.batch_ms` sends each channel's joins
//! and leaves as at most one `join` and one `leave` frame to the shards with members, and writes
//! the node's changed counts to the presence topic (with Kafka).

use super::Router;
use crate::conn::ConnHandle;
use crate::kafka::presence::{Sink, Write};
use crate::mesh::Control;
use crate::message::Frame;
use crate::presence::Update;
use crate::protocol;
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;

/// What the router needs of `[presence]`.
pub struct PresenceSettings {
    pub max_listed: usize,
    pub max_channels: usize,
    pub max_members: usize,
    /// Where the node's counts go to the presence topic (None: without Kafka, the node alone).
    pub sink: Option<Sink>,
}

impl Router {
    /// A connection of `user` subscribed to (`delta` 1) or left (-1) a channel with presence.
    pub(super) fn presence_delta(&self, channel: &Arc<str>, user: &Arc<str>, delta: i32) {
        let owner = self.owner(channel);
        if owner == self.shard {
            self.presence.borrow_mut().local(channel, user, delta);
        } else {
            let (channel, user) = (channel.clone(), user.clone());
            let c = Control::PresenceDelta {
                channel,
                user,
                delta,
            };
            self.peers.control(owner, c);
        }
    }

    /// Answers `presence` (`list`) or `presence_stats` for `conn`, from the channel's owner.
    pub fn presence(&self, conn: &Rc<ConnHandle>, channel: &str, id: Value, list: bool) {
        let owner = self.owner(channel);
        if owner == self.shard {
            let text = self.presence_answer(channel, &id, list);
            conn.send(&Rc::new(Frame::text(&text)));
            return;
        }
        let c = Control::PresenceAsk {
            channel: Arc::from(channel),
            from: self.shard,
            conn: conn.id,
            id,
            list,
        };
        self.peers.control(owner, c);
    }

    /// The owner's reply to a presence request.
    pub(super) fn presence_answer(&self, channel: &str, id: &Value, list: bool) -> String {
        let max = self.cfg.presence.max_listed;
        let s = self.presence.borrow().snapshot(channel, list, max);
        let members = list.then_some(s.members.as_slice());
        protocol::presence_reply(id, channel, s.users, s.conns, members, s.truncated)
    }

    /// What the presence topic's reader says about other nodes.
    pub fn on_presence_update(&self, u: Update) {
        let mut t = self.presence.borrow_mut();
        match u {
            Update::Set {
                channel,
                node,
                user,
                conns,
            } => t.remote(&channel, &node, &user, conns),
            Update::Gone { node } => t.node_gone(&node),
            Update::Rewrite => t.redo_all(),
        }
    }

    /// The batch: joins and leaves to the members who asked for them, and the node's changed
    /// counts to the presence topic.
    pub fn presence_tick(&self) {
        let max = self.cfg.presence.max_listed;
        let (events, writes) = self.presence.borrow_mut().drain(max);
        for e in events {
            let mut frames = Vec::with_capacity(2);
            for (kind, users) in [("join", &e.joins), ("leave", &e.leaves)] {
                if !users.is_empty() {
                    frames.push(Arc::from(protocol::presence_event(kind, &e.channel, users)));
                }
            }
            self.deliver_presence(&e.channel, &frames);
            let mut targets = self.interest.borrow().shards(&e.channel) & !(1u64 << self.shard);
            let mut peer = 0;
            while targets != 0 && peer < self.shards {
                if targets & (1 << peer) != 0 {
                    targets &= !(1 << peer);
                    let (channel, frames) = (e.channel.clone(), frames.clone());
                    self.peers
                        .control(peer, Control::PresenceEvents { channel, frames });
                }
                peer += 1;
            }
        }
        let Some(sink) = &self.cfg.presence.sink else {
            return;
        };
        if writes.is_empty() {
            return;
        }
        let batch: Vec<Write> = writes
            .into_iter()
            .map(|(channel, user, conns)| Write {
                channel,
                user,
                conns,
            })
            .collect();
        if let Err(e) = sink.try_send(batch) {
            // The writer is behind or not connected yet: the counts go with the next batch.
            let mut t = self.presence.borrow_mut();
            for w in e.into_inner() {
                t.redo(&w.channel, w.user);
            }
        }
    }

    /// Queues a batch's frames on this shard's members who asked for join/leave frames.
    pub(super) fn deliver_presence(&self, channel: &str, frames: &[Arc<str>]) {
        let members = self.members.borrow();
        let Some(ch) = members.get(channel) else {
            return;
        };
        let frames: Vec<Rc<Frame>> = frames.iter().map(|t| Rc::new(Frame::text(t))).collect();
        for m in ch.members.values() {
            if m.join_leave && !matches!(m.state, super::State::Pending { .. }) {
                for f in &frames {
                    m.conn.send(f);
                }
            }
        }
    }
}
