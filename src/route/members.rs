//! Which connections of this shard are in which channel, and in what state: waiting for the
//! owner's acknowledgement, replaying from a cursor, or live. Only this shard's connections are
//! here; the owner of a channel knows no more than which shards have members.

use crate::conn::ConnHandle;
use crate::protocol::Filter;
use crate::topology::Stream;
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// A recovery in progress: what the member was given last, and what it is owed.
#[derive(Debug)]
pub struct Cursor {
    /// Tells this recovery's pages from an earlier one's.
    pub gen: u64,
    pub stream: Stream,
    /// Everything up to here was replayed (or was before `since`).
    pub after: u64,
    /// The request the first page answers (None once answered).
    pub reply: Option<Value>,
    pub started: Instant,
    /// Kafka records scanned for this recovery so far (its budget).
    pub scanned: usize,
}

/// Where a member stands.
#[derive(Debug)]
pub enum State {
    /// Waiting for the owner to acknowledge this shard's `Join`; `reply` answers once live.
    Pending {
        reply: Option<Value>,
    },
    /// Replaying from a cursor. Live messages are not given to it: they were sequenced before
    /// the page that ends the replay, so the pages hold them.
    Recovering(Cursor),
    Live,
    /// Live after a replay that ended at `after` in `stream`: a delivery of that stream at or
    /// before it was replayed already (or preceded the client's `since`, when the `since` was ahead
    /// of what the owner had seen) and is not given again.
    LiveAfter(Stream, u64),
}

impl State {
    /// Whether live deliveries reach the member, given the message's stream and position.
    pub fn takes(&self, stream: Stream, seq: u64) -> bool {
        match self {
            State::Live => true,
            State::LiveAfter(st, after) => stream != *st || seq > *after,
            State::Pending { .. } | State::Recovering(_) => false,
        }
    }

    /// The request still owed a reply, if any (a later request on the channel cancels it).
    pub fn take_reply(&mut self) -> Option<Value> {
        match self {
            State::Pending { reply } => reply.take(),
            State::Recovering(c) => c.reply.take(),
            State::Live | State::LiveAfter(..) => None,
        }
    }
}

pub struct Member {
    pub conn: Rc<ConnHandle>,
    pub filter: Option<Rc<Filter>>,
    /// One of the connection's own channels (`user:<sub>`, `broadcast`): routed to this shard
    /// without a `Join` (the user's slot, or every shard), and never unsubscribed by the client.
    pub automatic: bool,
    pub state: State,
    /// The connection's user, when the channel has presence (its owner counts the user).
    pub presence: Option<Arc<str>>,
    /// The member asked for `join` / `leave` frames.
    pub join_leave: bool,
}

/// How this shard's membership of a channel is known to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// No `Join` was sent: the owner is this shard, or only automatic members are here.
    No,
    /// `Join` sent with this generation, not yet acknowledged.
    Asked(u64),
    /// Acknowledged: the owner forwards the channel here.
    Yes(u64),
}

pub struct LocalChannel {
    pub members: HashMap<u64, Member>,
    /// Members that need the owner to know of this shard (all but automatic ones).
    pub announced: usize,
    pub joined: Joined,
}

impl LocalChannel {
    fn new() -> LocalChannel {
        LocalChannel {
            members: HashMap::new(),
            announced: 0,
            joined: Joined::No,
        }
    }

    /// Whether a new explicit member can go live at once.
    pub fn live_now(&self, owner_here: bool) -> bool {
        owner_here || matches!(self.joined, Joined::Yes(_))
    }
}

/// The channels this shard has members of.
#[derive(Default)]
pub struct Members {
    channels: HashMap<Arc<str>, LocalChannel>,
    subscriptions: usize,
}

impl Members {
    /// The shared name of `channel` if this shard has it, else a new one.
    pub fn key(&self, channel: &str) -> Arc<str> {
        match self.channels.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(channel),
        }
    }

    pub fn get(&self, channel: &str) -> Option<&LocalChannel> {
        self.channels.get(channel)
    }

    pub fn get_mut(&mut self, channel: &str) -> Option<&mut LocalChannel> {
        self.channels.get_mut(channel)
    }

    pub fn entry(&mut self, key: Arc<str>) -> &mut LocalChannel {
        self.channels.entry(key).or_insert_with(LocalChannel::new)
    }

    /// Adds or replaces `conn`'s membership; returns the replaced member, if any.
    pub fn insert(&mut self, key: Arc<str>, m: Member) -> Option<Member> {
        let ch = self.entry(key);
        let automatic = m.automatic;
        let old = ch.members.insert(m.conn.id, m);
        if old.is_none() {
            if !automatic {
                ch.announced += 1;
            }
            self.subscriptions += 1;
        }
        old
    }

    /// Removes `conn` from `channel`. Returns the member and whether this shard's last announced
    /// member went (so the owner must hear `Leave`, if it was told of a `Join`).
    pub fn remove(&mut self, channel: &str, conn: u64) -> Option<(Member, Option<Joined>)> {
        let ch = self.channels.get_mut(channel)?;
        let m = ch.members.remove(&conn)?;
        self.subscriptions -= 1;
        let mut left = None;
        if !m.automatic {
            ch.announced -= 1;
            if ch.announced == 0 {
                left = Some(ch.joined);
                ch.joined = Joined::No;
            }
        }
        if ch.members.is_empty() {
            self.channels.remove(channel);
        }
        Some((m, left))
    }

    /// Removes the whole channel (its members are being closed).
    pub fn take(&mut self, channel: &str) -> Option<LocalChannel> {
        let ch = self.channels.remove(channel)?;
        self.subscriptions -= ch.members.len();
        Some(ch)
    }

    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn member(id: u64, automatic: bool) -> Member {
        let metrics = Metrics::new(1).shards[0].clone();
        Member {
            conn: Rc::new(ConnHandle::new(id, 4096, metrics)),
            filter: None,
            automatic,
            state: State::Live,
            presence: None,
            join_leave: false,
        }
    }

    #[test]
    fn only_explicit_members_are_announced() {
        let mut m = Members::default();
        let k = m.key("user:1");
        assert!(m.insert(k.clone(), member(1, true)).is_none());
        assert_eq!(m.get("user:1").map(|c| c.announced), Some(0));
        m.insert(k.clone(), member(2, false));
        m.get_mut("user:1").unwrap().joined = Joined::Yes(4);
        // Re-subscribing replaces in place: no second announcement.
        assert!(m.insert(k.clone(), member(2, false)).is_some());
        assert_eq!(m.get("user:1").map(|c| c.announced), Some(1));
        let (_, left) = m.remove("user:1", 2).unwrap();
        assert_eq!(left, Some(Joined::Yes(4)), "the last announced member went");
        let (_, left) = m.remove("user:1", 1).unwrap();
        assert_eq!(left, None);
        assert_eq!((m.channels(), m.subscriptions()), (0, 0));
    }

    #[test]
    fn after_a_replay_what_it_covered_is_not_given_again() {
        let s = State::LiveAfter(7, 100);
        assert!(!s.takes(7, 100), "replayed (or before the since)");
        assert!(s.takes(7, 101));
        assert!(s.takes(8, 5), "another stream of the channel");
        assert!(State::Live.takes(7, 1));
        assert!(!State::Pending { reply: None }.takes(7, 1000));
    }

    #[test]
    fn a_pending_reply_is_owed_once() {
        let mut s = State::Pending {
            reply: Some(Value::from("a")),
        };
        assert_eq!(s.take_reply(), Some(Value::from("a")));
        assert_eq!(s.take_reply(), None);
        let mut s = State::Live;
        assert_eq!(s.take_reply(), None);
    }
}
