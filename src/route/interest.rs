//! What a channel's owner knows about other shards: which have members of its channels (from
//! `Join`/`Leave`), and the connection counts of the users and addresses it owns. A user's count
//! per shard doubles as the membership of the user's personal channel: a shard that holds a
//! connection of the user gets the user's messages, with no announcement beyond the slot itself.

use crate::mesh::SlotKind;
use std::collections::HashMap;
use std::sync::Arc;

/// A set of shards (at most `topology::MAX_SHARDS`).
pub type ShardSet = u64;

/// Shards with members of each owned channel, as announced by `Join`.
#[derive(Default)]
pub struct Interest {
    joined: HashMap<Arc<str>, ShardSet>,
}

impl Interest {
    pub fn join(&mut self, channel: Arc<str>, shard: usize) {
        *self.joined.entry(channel).or_insert(0) |= 1 << shard;
    }

    pub fn leave(&mut self, channel: &str, shard: usize) {
        if let Some(set) = self.joined.get_mut(channel) {
            *set &= !(1 << shard);
            if *set == 0 {
                self.joined.remove(channel);
            }
        }
    }

    pub fn shards(&self, channel: &str) -> ShardSet {
        self.joined.get(channel).copied().unwrap_or(0)
    }

    pub fn channels(&self) -> usize {
        self.joined.len()
    }
}

/// Connections of one key (a user or an address), by shard.
#[derive(Default)]
struct Count {
    total: usize,
    by_shard: Vec<(u16, u32)>,
}

/// The connection counts of the keys this shard owns.
pub struct Slots {
    user_limit: usize,
    /// 0: no limit per address.
    ip_limit: usize,
    users: HashMap<Arc<str>, Count>,
    ips: HashMap<Arc<str>, Count>,
}

impl Slots {
    pub fn new(user_limit: usize, ip_limit: usize) -> Slots {
        Slots {
            user_limit,
            ip_limit,
            users: HashMap::new(),
            ips: HashMap::new(),
        }
    }

    fn counts(&mut self, kind: SlotKind) -> &mut HashMap<Arc<str>, Count> {
        match kind {
            SlotKind::User => &mut self.users,
            SlotKind::Ip => &mut self.ips,
        }
    }

    /// Whether connections of `kind` are counted at all. Users always are: the count routes
    /// their personal messages.
    pub fn limited(&self, kind: SlotKind) -> bool {
        kind == SlotKind::User || self.ip_limit > 0
    }

    fn limit(&self, kind: SlotKind) -> usize {
        match kind {
            SlotKind::User => self.user_limit,
            SlotKind::Ip => self.ip_limit,
        }
    }

    /// Counts a connection of `key` on `shard`; false when the key is at its limit.
    pub fn acquire(&mut self, kind: SlotKind, key: Arc<str>, shard: usize) -> bool {
        let limit = self.limit(kind);
        let counts = self.counts(kind);
        // A refusal leaves nothing behind: the map holds only keys with connections.
        if counts.get(&key).map_or(0, |c| c.total) >= limit {
            return false;
        }
        let c = counts.entry(key).or_default();
        c.total += 1;
        match c
            .by_shard
            .iter_mut()
            .find(|(s, _)| usize::from(*s) == shard)
        {
            Some((_, n)) => *n += 1,
            None => c.by_shard.push((shard as u16, 1)),
        }
        true
    }

    /// Forgets one connection of `key` on `shard`.
    pub fn release(&mut self, kind: SlotKind, key: Arc<str>, shard: usize) {
        let counts = self.counts(kind);
        let Some(c) = counts.get_mut(&key) else {
            return;
        };
        c.total = c.total.saturating_sub(1);
        if let Some(i) = c
            .by_shard
            .iter()
            .position(|(s, _)| usize::from(*s) == shard)
        {
            c.by_shard[i].1 -= 1;
            if c.by_shard[i].1 == 0 {
                c.by_shard.swap_remove(i);
            }
        }
        if c.total == 0 {
            counts.remove(&key);
        }
    }

    /// The shards holding a connection of the user whose channel is `user_channel`.
    pub fn user_shards(&self, user_channel: &str) -> ShardSet {
        let Some(c) = self.users.get(user_channel) else {
            return 0;
        };
        c.by_shard.iter().fold(0, |set, (s, _)| set | (1 << s))
    }

    pub fn tracked(&self) -> usize {
        self.users.len() + self.ips.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_follows_joins_and_leaves() {
        let mut i = Interest::default();
        i.join("c".into(), 3);
        i.join("c".into(), 5);
        assert_eq!(i.shards("c"), (1 << 3) | (1 << 5));
        i.leave("c", 3);
        i.leave("c", 3);
        assert_eq!(i.shards("c"), 1 << 5);
        i.leave("c", 5);
        assert_eq!((i.shards("c"), i.channels()), (0, 0));
    }

    #[test]
    fn slots_count_per_key_and_route_personal_channels() {
        let mut s = Slots::new(2, 0);
        let u: Arc<str> = Arc::from("user:7");
        assert!(s.acquire(SlotKind::User, u.clone(), 1));
        assert!(s.acquire(SlotKind::User, u.clone(), 4));
        assert!(!s.acquire(SlotKind::User, u.clone(), 4), "at the limit");
        assert_eq!(s.user_shards("user:7"), (1 << 1) | (1 << 4));
        s.release(SlotKind::User, u.clone(), 1);
        assert_eq!(s.user_shards("user:7"), 1 << 4);
        assert!(s.acquire(SlotKind::User, u.clone(), 4));
        s.release(SlotKind::User, u.clone(), 4);
        s.release(SlotKind::User, u.clone(), 4);
        assert_eq!((s.user_shards("user:7"), s.tracked()), (0, 0));
        assert!(!s.limited(SlotKind::Ip));
        // A refusal leaves no entry behind.
        let mut none = Slots::new(0, 0);
        assert!(!none.acquire(SlotKind::User, u, 1));
        assert_eq!(none.tracked(), 0);
    }
}
