//! The owner's presence tables: per channel with presence, the users and their connection counts
//! on this node (from every shard's subscribes) and on other nodes (from the presence topic), the
//! totals that answer `presence`, and the joins and leaves waiting for the next batch. No I/O.
//!
//! Bounds: at most `max_channels` channels per owner shard and `max_members` users per channel.
//! A channel or user beyond them is not tracked (counted in `refused`): counts stop growing at the
//! bound, and a user refused there is counted from its next connection on once room is made.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// One channel's presence.
#[derive(Default)]
struct Room {
    /// This node's connections per user.
    local: HashMap<Arc<str>, u32>,
    /// Other nodes' connections per user, by node.
    remote: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// All nodes' connections per user: what `presence` answers.
    totals: HashMap<Arc<str>, u32>,
    conns: u64,
    /// Users whose first connection anywhere arrived, or last one went, since the last batch.
    joins: BTreeSet<Arc<str>>,
    leaves: BTreeSet<Arc<str>>,
    /// Users whose count on this node changed since it was last written to the presence topic.
    dirty: HashSet<Arc<str>>,
}

impl Room {
    fn idle(&self) -> bool {
        self.totals.is_empty()
            && self.joins.is_empty()
            && self.leaves.is_empty()
            && self.dirty.is_empty()
    }

    /// Moves `user`'s total from `old` to `new` and notes a join or leave (a leave and a join
    /// within one batch cancel out).
    fn retotal(&mut self, user: &Arc<str>, old: u32, new: u32) {
        self.conns = self.conns + u64::from(new) - u64::from(old);
        if new == 0 {
            self.totals.remove(user);
        } else {
            self.totals.insert(user.clone(), new);
        }
        if old == 0 && new > 0 && !self.leaves.remove(user) {
            self.joins.insert(user.clone());
        }
        if old > 0 && new == 0 && !self.joins.remove(user) {
            self.leaves.insert(user.clone());
        }
    }
}

/// What `presence` answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub users: usize,
    pub conns: u64,
    /// Up to the listing cap, when asked for.
    pub members: Vec<(Arc<str>, u32)>,
    pub truncated: bool,
}

/// One channel's batch of joins and leaves.
#[derive(Debug, PartialEq, Eq)]
pub struct Events {
    pub channel: Arc<str>,
    pub joins: Vec<Arc<str>>,
    pub leaves: Vec<Arc<str>>,
}

/// A user's connection count on this node in a channel, to be written to the presence topic.
pub type Count = (Arc<str>, Arc<str>, u32);

/// The presence of the channels this shard owns.
pub struct PresenceTable {
    max_channels: usize,
    max_members: usize,
    /// Whether changes are written to the presence topic (with Kafka).
    track_dirty: bool,
    rooms: HashMap<Arc<str>, Room>,
    /// Channels with events or dirty users: what the next tick looks at.
    busy: HashSet<Arc<str>>,
    pub refused: u64,
}

impl PresenceTable {
    pub fn new(max_channels: usize, max_members: usize, track_dirty: bool) -> PresenceTable {
        PresenceTable {
            max_channels,
            max_members,
            track_dirty,
            rooms: HashMap::new(),
            busy: HashSet::new(),
            refused: 0,
        }
    }

    /// The channel's room, made if there is room for it (None at `max_channels`).
    fn room(&mut self, channel: &Arc<str>) -> Option<&mut Room> {
        if !self.rooms.contains_key(channel) {
            if self.rooms.len() >= self.max_channels {
                self.refused += 1;
                return None;
            }
            self.rooms.insert(channel.clone(), Room::default());
        }
        self.rooms.get_mut(channel)
    }

    /// Whether a user not yet in `room` may be added.
    fn admits(room: &Room, user: &str, max: usize) -> bool {
        room.totals.contains_key(user) || room.totals.len() < max
    }

    /// A connection of `user` on this node subscribed (`delta` 1) or left (-1).
    pub fn local(&mut self, channel: &Arc<str>, user: &Arc<str>, delta: i32) {
        let (max, dirty) = (self.max_members, self.track_dirty);
        let known = self
            .rooms
            .get(channel)
            .is_some_and(|r| r.local.contains_key(user));
        if delta < 0 && !known {
            // Its arrival was refused at a bound: nothing to take back.
            return;
        }
        let Some(room) = self.room(channel) else {
            return;
        };
        if delta > 0 && !Self::admits(room, user, max) {
            self.refused += 1;
            return self.settle(channel);
        }
        let old_local = room.local.get(user).copied().unwrap_or(0);
        let new_local = old_local.saturating_add_signed(delta);
        if new_local == 0 {
            room.local.remove(user);
        } else {
            room.local.insert(user.clone(), new_local);
        }
        let old = room.totals.get(user).copied().unwrap_or(0);
        let new = (old - old_local) + new_local;
        room.retotal(user, old, new);
        if dirty {
            room.dirty.insert(user.clone());
        }
        self.busy.insert(channel.clone());
    }

    /// Another node holds `conns` connections of `user` (0: none).
    pub fn remote(&mut self, channel: &Arc<str>, node: &Arc<str>, user: &Arc<str>, conns: u32) {
        let max = self.max_members;
        if conns == 0 && !self.rooms.contains_key(channel) {
            return;
        }
        let Some(room) = self.room(channel) else {
            return;
        };
        let prev = room
            .remote
            .get(node)
            .and_then(|m| m.get(user))
            .copied()
            .unwrap_or(0);
        if prev == 0 && conns > 0 && !Self::admits(room, user, max) {
            self.refused += 1;
            return self.settle(channel);
        }
        let of_node = room.remote.entry(node.clone()).or_default();
        if conns == 0 {
            of_node.remove(user);
            if of_node.is_empty() {
                room.remote.remove(node);
            }
        } else {
            of_node.insert(user.clone(), conns);
        }
        let old = room.totals.get(user).copied().unwrap_or(0);
        room.retotal(user, old, old - prev + conns);
        self.busy.insert(channel.clone());
    }

    /// Another node expired: its members are gone from every channel.
    pub fn node_gone(&mut self, node: &str) {
        let mut touched = Vec::new();
        for (channel, room) in self.rooms.iter_mut() {
            let Some(users) = room.remote.remove(node) else {
                continue;
            };
            for (user, n) in users {
                let old = room.totals.get(&user).copied().unwrap_or(0);
                room.retotal(&user, old, old - n);
            }
            touched.push(channel.clone());
        }
        for c in touched {
            self.busy.insert(c);
        }
    }

    /// Forgets a room with nothing left in it.
    fn settle(&mut self, channel: &str) {
        if self.rooms.get(channel).is_some_and(Room::idle) && !self.busy.contains(channel) {
            self.rooms.remove(channel);
        }
    }

    /// The channel's counts, and its members up to `max_listed` when `list`.
    pub fn snapshot(&self, channel: &str, list: bool, max_listed: usize) -> Snapshot {
        let Some(room) = self.rooms.get(channel) else {
            return Snapshot {
                users: 0,
                conns: 0,
                members: Vec::new(),
                truncated: false,
            };
        };
        let members = if list {
            let it = room.totals.iter().take(max_listed);
            it.map(|(u, n)| (u.clone(), *n)).collect()
        } else {
            Vec::new()
        };
        Snapshot {
            users: room.totals.len(),
            conns: room.conns,
            truncated: list && room.totals.len() > max_listed,
            members,
        }
    }

    /// The batch of joins and leaves of every channel that has one (at most `max` users of
    /// each kind per channel: the rest wait for the next batch), and the users whose counts on
    /// this node must be written to the presence topic, with their counts.
    pub fn drain(&mut self, max: usize) -> (Vec<Events>, Vec<Count>) {
        let mut events = Vec::new();
        let mut writes = Vec::new();
        let busy: Vec<Arc<str>> = self.busy.drain().collect();
        for channel in busy {
            let Some(room) = self.rooms.get_mut(&channel) else {
                continue;
            };
            let take = |set: &mut BTreeSet<Arc<str>>| -> Vec<Arc<str>> {
                let n = set.len().min(max);
                (0..n).filter_map(|_| set.pop_first()).collect()
            };
            let (joins, leaves) = (take(&mut room.joins), take(&mut room.leaves));
            for user in room.dirty.drain() {
                let n = room.local.get(&user).copied().unwrap_or(0);
                writes.push((channel.clone(), user, n));
            }
            let more = !room.joins.is_empty() || !room.leaves.is_empty();
            if !joins.is_empty() || !leaves.is_empty() {
                let channel = channel.clone();
                events.push(Events {
                    channel,
                    joins,
                    leaves,
                });
            }
            if more {
                self.busy.insert(channel);
            } else if room.idle() {
                self.rooms.remove(&channel);
            }
        }
        (events, writes)
    }

    /// A write to the presence topic could not be queued: it is retried with the next batch.
    pub fn redo(&mut self, channel: &Arc<str>, user: Arc<str>) {
        if let Some(room) = self.room(channel) {
            room.dirty.insert(user);
            self.busy.insert(channel.clone());
        }
    }

    /// Every user counted on this node is written again (the presence topic may have lost track
    /// of this node while it could not write its liveness).
    pub fn redo_all(&mut self) {
        for (channel, room) in self.rooms.iter_mut() {
            if !room.local.is_empty() {
                room.dirty.extend(room.local.keys().cloned());
                self.busy.insert(channel.clone());
            }
        }
    }

    /// Channels tracked.
    pub fn channels(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
#[path = "presence_tests.rs"]
mod tests;
