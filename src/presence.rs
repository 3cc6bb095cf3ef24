//! Presence across nodes: the records of the presence topic and the mirror of other nodes' members.
//!
//! Each node writes, for every presence channel and user, its own connection count
//! (key `["m",channel,node,user]`, value `{"conns":N,"ts":ms}`, a tombstone when the count reaches 0)
//! and a liveness record every third of `presence.ttl_secs` (key `["n",node]`, value `{"ts":ms}`).
//! Every node reads the whole topic from its start and keeps the latest state per key ([`Mirror`]);
//! a node whose newest record (of either kind) is older than the ttl is expired: its members are
//! dropped. Correctness does not depend on compaction: later records win, whatever is kept.
//! This module is pure (no I/O): the Kafka side is `kafka::presence`, the owner's tables
//! `route::presence`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Node ids in the mirror at most; records of further nodes are ignored (and counted).
pub const MAX_NODES: usize = 4096;
/// An expired node is forgotten (members and all) after this many ttls of silence.
pub const FORGET_TTLS: u64 = 10;
/// Longest user id carried in a presence record.
pub const MAX_USER_LEN: usize = 1024;

/// What the presence reader tells a channel's owner shard about other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `node` holds `conns` connections of `user` in `channel` (0: none any more).
    Set {
        channel: Arc<str>,
        node: Arc<str>,
        user: Arc<str>,
        conns: u32,
    },
    /// `node` stopped refreshing its liveness: all its members are gone (sent to every shard).
    Gone { node: Arc<str> },
    /// This node's writes may have been lost (the topic could not be written for a while): every
    /// owner writes its counts again (sent to every shard).
    Rewrite,
}

/// A decoded record of the presence topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Member {
        channel: Arc<str>,
        node: Arc<str>,
        user: Arc<str>,
        conns: u32,
        /// When the writer wrote it (absent in tombstones).
        ts: Option<u64>,
    },
    Alive {
        node: Arc<str>,
        ts: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct MemberValue {
    conns: u32,
    ts: u64,
}

#[derive(Serialize, Deserialize)]
struct AliveValue {
    ts: u64,
}

/// Key and value (None: a tombstone) of a member record.
pub fn member_record(
    channel: &str,
    node: &str,
    user: &str,
    conns: u32,
    ts: u64,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = serde_json::to_vec(&("m", channel, node, user)).unwrap_or_default();
    let value =
        (conns > 0).then(|| serde_json::to_vec(&MemberValue { conns, ts }).unwrap_or_default());
    (key, value)
}

/// Key and value of a node's liveness record.
pub fn alive_record(node: &str, ts: u64) -> (Vec<u8>, Vec<u8>) {
    let key = serde_json::to_vec(&("n", node)).unwrap_or_default();
    (
        key,
        serde_json::to_vec(&AliveValue { ts }).unwrap_or_default(),
    )
}

/// Decodes a record; None (the reader skips it) for anything not written by a gateway.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>, max_channel_len: usize) -> Option<Rec> {
    let parts: Vec<String> = serde_json::from_slice(key?).ok()?;
    match (parts.first().map(String::as_str), parts.len()) {
        (Some("m"), 4) => {
            let (channel, node, user) = (&parts[1], &parts[2], &parts[3]);
            let ok = !channel.is_empty() && channel.len() <= max_channel_len;
            if !ok || node.is_empty() || user.is_empty() || user.len() > MAX_USER_LEN {
                return None;
            }
            let (conns, ts) = match value {
                None => (0, None),
                Some(v) => {
                    let v: MemberValue = serde_json::from_slice(v).ok()?;
                    (v.conns, Some(v.ts))
                }
            };
            Some(Rec::Member {
                channel: Arc::from(channel.as_str()),
                node: Arc::from(node.as_str()),
                user: Arc::from(user.as_str()),
                conns,
                ts,
            })
        }
        (Some("n"), 2) if !parts[1].is_empty() => {
            let v: AliveValue = serde_json::from_slice(value?).ok()?;
            Some(Rec::Alive {
                node: Arc::from(parts[1].as_str()),
                ts: v.ts,
            })
        }
        _ => None,
    }
}

struct NodeState {
    /// The newest `ts` seen from the node.
    seen: u64,
    alive: bool,
    members: HashMap<(Arc<str>, Arc<str>), u32>,
}

/// The latest member records of every other node, and which nodes are alive. Owners hear only
/// about live nodes: a node's members are passed on when it is (or becomes) alive, and dropped
/// with [`Update::Gone`] when it expires. Bounded: at most [`MAX_NODES`] nodes and `max_entries`
/// (channel, node, user) entries; records beyond are ignored and counted in `refused`.
pub struct Mirror {
    me: Arc<str>,
    ttl_ms: u64,
    max_entries: usize,
    entries: usize,
    nodes: HashMap<Arc<str>, NodeState>,
    pub refused: u64,
}

impl Mirror {
    pub fn new(me: &str, ttl_ms: u64, max_entries: usize) -> Mirror {
        Mirror {
            me: Arc::from(me),
            ttl_ms,
            max_entries,
            entries: 0,
            nodes: HashMap::new(),
            refused: 0,
        }
    }

    fn fresh(&self, seen: u64, now: u64) -> bool {
        now.saturating_sub(seen) < self.ttl_ms
    }

    /// Takes one record; returns what the owners must hear.
    pub fn apply(&mut self, rec: Rec, now: u64) -> Vec<Update> {
        let node = match &rec {
            Rec::Member { node, .. } | Rec::Alive { node, .. } => node.clone(),
        };
        // This node's own state is its shards'; records read back are old news.
        if node == self.me {
            return Vec::new();
        }
        if !self.nodes.contains_key(&node) {
            if self.nodes.len() >= MAX_NODES {
                self.refused += 1;
                return Vec::new();
            }
            let st = NodeState {
                seen: 0,
                alive: false,
                members: HashMap::new(),
            };
            self.nodes.insert(node.clone(), st);
        }
        let (ttl, at_bound) = (self.ttl_ms, self.entries >= self.max_entries);
        let Some(st) = self.nodes.get_mut(&node) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let ts = match rec {
            Rec::Alive { ts, .. } => Some(ts),
            Rec::Member {
                channel,
                user,
                conns,
                ts,
                ..
            } => {
                let key = (channel.clone(), user.clone());
                let known = st.members.contains_key(&key);
                if conns == 0 {
                    if st.members.remove(&key).is_some() {
                        self.entries -= 1;
                    }
                } else if known || !at_bound {
                    if st.members.insert(key, conns).is_none() {
                        self.entries += 1;
                    }
                } else {
                    self.refused += 1;
                    return Vec::new();
                }
                if st.alive {
                    let node = node.clone();
                    out.push(Update::Set {
                        channel,
                        node,
                        user,
                        conns,
                    });
                }
                ts
            }
        };
        st.seen = st.seen.max(ts.unwrap_or(0));
        if !st.alive && now.saturating_sub(st.seen) < ttl {
            st.alive = true;
            out.extend(st.members.iter().map(|((c, u), n)| Update::Set {
                channel: c.clone(),
                node: node.clone(),
                user: u.clone(),
                conns: *n,
            }));
        }
        out
    }

    /// Expires the nodes that stopped refreshing, and forgets nodes silent for [`FORGET_TTLS`]
    /// ttls (with their members: a node id is per process, so such a node is gone for good).
    pub fn tick(&mut self, now: u64) -> Vec<Update> {
        let mut out = Vec::new();
        let ttl = self.ttl_ms;
        for (node, st) in self.nodes.iter_mut() {
            if st.alive && now.saturating_sub(st.seen) >= ttl {
                st.alive = false;
                out.push(Update::Gone { node: node.clone() });
            }
        }
        let forget = ttl.saturating_mul(FORGET_TTLS);
        let mut dropped = 0;
        self.nodes.retain(|_, st| {
            let keep = st.alive || now.saturating_sub(st.seen) < forget;
            if !keep {
                dropped += st.members.len();
            }
            keep
        });
        self.entries -= dropped;
        out
    }

    /// Whether `node` counts as alive now (for tests and stats).
    pub fn alive(&self, node: &str, now: u64) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|st| st.alive && self.fresh(st.seen, now))
    }

    /// (nodes known, member entries held).
    pub fn sizes(&self) -> (usize, usize) {
        (self.nodes.len(), self.entries)
    }
}

#[cfg(test)]
mod tests;
