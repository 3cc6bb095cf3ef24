//! What the owner shard keeps per channel: the bounded history ring for `since`, and which other
//! shards have members.

use crate::message::Msg;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Owned {
    ring: VecDeque<Arc<Msg>>,
    /// Every message of the channel with `seq > floor` is in the ring.
    floor: u64,
    /// Bit `i` set: shard `i` has members (this shard's own members are found locally).
    pub interest: u64,
}

impl Owned {
    /// State for a channel first seen when the shard's sequence is at `seq`.
    pub fn new(seq: u64) -> Owned {
        Owned {
            ring: VecDeque::new(),
            floor: seq,
            interest: 0,
        }
    }

    pub fn push(&mut self, msg: Arc<Msg>, size: usize) {
        self.ring.push_back(msg);
        while self.ring.len() > size {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(old) = self.ring.pop_front() {
            self.floor = old.seq;
        }
    }

    /// Forgets messages older than `ttl`.
    pub fn expire(&mut self, ttl: Duration, now: Instant) {
        while self
            .ring
            .front()
            .is_some_and(|m| now.duration_since(m.accepted) > ttl)
        {
            self.pop();
        }
    }

    /// The messages after `since`, or None when some of them are no longer kept.
    pub fn after(&self, since: u64) -> Option<Vec<Arc<Msg>>> {
        if since < self.floor {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|m| m.seq > since)
                .cloned()
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn is_idle(&self) -> bool {
        self.is_empty() && self.interest == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Publish;

    fn msg(seq: u64) -> Arc<Msg> {
        let p = Publish {
            channel: "c".into(),
            event: None,
            id: None,
            priority: 3,
            data: serde_json::Value::Null,
            from: None,
            born: Instant::now(),
        };
        Arc::new(Msg::new(p, "c".into(), seq, seq.to_string()))
    }

    #[test]
    fn ring_reaches_back_only_as_far_as_it_keeps() {
        let mut o = Owned::new(10);
        for s in [12, 15, 20] {
            o.push(msg(s), 2);
        }
        // 12 was evicted: a client that saw 11 may have missed it.
        assert!(o.after(11).is_none());
        let got: Vec<u64> = o.after(12).unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(got, vec![15, 20]);
        assert!(o.after(20).unwrap().is_empty());
        o.expire(Duration::ZERO, Instant::now() + Duration::from_millis(1));
        assert_eq!(o.len(), 0);
        assert!(o.after(15).is_none());
        assert!(o.after(20).unwrap().is_empty());
    }
}
