//! What the owner shard keeps per channel: the bounded history ring for `since`, and which other
//! shards have members.

use crate::message::Msg;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Owned {
    ring: VecDeque<Arc<Msg>>,
    /// The sequence (the shard's, or a Kafka partition) the ring follows.
    stream: u64,
    /// Every message of the channel in `stream` with `seq >= covered_from` is in the ring.
    covered_from: u64,
}

impl Owned {
    /// State for a channel whose messages from `covered_from` on will all be kept.
    pub fn new(stream: u64, covered_from: u64) -> Owned {
        Owned {
            ring: VecDeque::new(),
            stream,
            covered_from,
        }
    }

    pub fn stream(&self) -> u64 {
        self.stream
    }

    pub fn push(&mut self, msg: Arc<Msg>, size: usize) {
        if msg.stream != self.stream {
            // The channel moved to another partition: history follows the new one.
            self.ring.clear();
            self.stream = msg.stream;
            self.covered_from = msg.seq;
        }
        self.ring.push_back(msg);
        while self.ring.len() > size {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(old) = self.ring.pop_front() {
            self.covered_from = old.seq + 1;
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
        if since.saturating_add(1) < self.covered_from {
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
            origin_ms: None,
        };
        Arc::new(Msg::new(p, "c".into(), 0, seq, seq.to_string()))
    }

    #[test]
    fn ring_reaches_back_only_as_far_as_it_keeps() {
        let mut o = Owned::new(0, 11);
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
