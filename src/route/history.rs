//! The owner's history for `since`: one ring per (stream, channel), bounded per channel by count
//! (`history.size`), per shard by bytes (`history.max_bytes`) and by age (`history.ttl_secs`).
//! One queue in arrival order across all rings makes both the byte bound and expiry cost only the
//! messages they remove: the oldest message of the shard goes first, wherever it is.

use crate::message::Msg;
use crate::topology::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `seq` of the arrival-order entry that stands for a ring created empty (for a recovery): when it
/// reaches the front, the ring goes if it is still empty.
const EMPTY_RING: u64 = u64::MAX;
/// What a ring costs beside its messages: its map slot (key, ring, control byte, and the map's
/// spare capacity), the smallest buffer of its queue, and the channel name's allocation.
const RING_BYTES: usize = 2 * (std::mem::size_of::<Ring>() + 24) + 4 * 8 + 32;
/// What a message's place in the arrival order costs.
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>() + 8;

/// The bounds of a shard's history.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub per_channel: usize,
    pub max_bytes: usize,
    pub ttl: Duration,
}

struct Ring {
    msgs: VecDeque<Arc<Msg>>,
    /// Every message of the channel in the stream with `seq >= covered_from` is in `msgs`.
    covered_from: u64,
}

struct Entry {
    stream: Stream,
    channel: Arc<str>,
    seq: u64,
    at: Instant,
}

/// What the history holds after a position.
#[derive(Debug)]
pub enum Lookup {
    /// The messages after it (at least one when there are any, then up to the byte budget), and
    /// whether they reach the newest kept message.
    Page { msgs: Vec<Arc<Msg>>, done: bool },
    /// The ring no longer reaches back that far; it holds everything from `covered_from` on.
    Gap { covered_from: u64 },
    /// Nothing is kept for the channel in that stream.
    Missing,
}

pub struct History {
    rings: HashMap<Stream, HashMap<Arc<str>, Ring>>,
    order: VecDeque<Entry>,
    bytes: usize,
    messages: usize,
    bounds: Bounds,
}

impl History {
    pub fn new(bounds: Bounds) -> History {
        History {
            rings: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            messages: 0,
            bounds,
        }
    }

    /// Keeps `msg`. A channel seen for the first time in its stream starts a ring that covers
    /// everything from `covered_from` on (the caller knows nothing of the channel was missed).
    pub fn push(&mut self, msg: Arc<Msg>, covered_from: u64, now: Instant) {
        let per_stream = self.rings.entry(msg.stream).or_default();
        let ring = match per_stream.get_mut(&msg.channel) {
            Some(r) => r,
            None => {
                self.bytes += RING_BYTES + msg.channel.len();
                per_stream.entry(msg.channel.clone()).or_insert(Ring {
                    msgs: VecDeque::new(),
                    covered_from: covered_from.min(msg.seq),
                })
            }
        };
        self.bytes += msg.footprint() + ENTRY_BYTES;
        self.messages += 1;
        self.order.push_back(Entry {
            stream: msg.stream,
            channel: msg.channel.clone(),
            seq: msg.seq,
            at: now,
        });
        ring.msgs.push_back(msg);
        if ring.msgs.len() > self.bounds.per_channel {
            if let Some(old) = ring.msgs.pop_front() {
                ring.covered_from = old.seq + 1;
                self.bytes -= old.footprint();
                self.messages -= 1;
            }
        }
        self.evict();
    }

    /// Makes sure a ring exists for the channel, created empty covering from `covered_from` if
    /// not; returns what the ring covers from. A recovery uses it so that everything from there on
    /// is kept while it reads what came before from Kafka.
    pub fn ensure(
        &mut self,
        stream: Stream,
        channel: &Arc<str>,
        covered_from: u64,
        now: Instant,
    ) -> u64 {
        let per_stream = self.rings.entry(stream).or_default();
        if let Some(r) = per_stream.get(channel) {
            return r.covered_from;
        }
        per_stream.insert(
            channel.clone(),
            Ring {
                msgs: VecDeque::new(),
                covered_from,
            },
        );
        self.bytes += RING_BYTES + channel.len() + ENTRY_BYTES;
        self.order.push_back(Entry {
            stream,
            channel: channel.clone(),
            seq: EMPTY_RING,
            at: now,
        });
        self.evict();
        covered_from
    }

    /// The messages after `after`, up to about `max_bytes`.
    pub fn page(&self, stream: Stream, channel: &str, after: u64, max_bytes: usize) -> Lookup {
        let Some(ring) = self.rings.get(&stream).and_then(|m| m.get(channel)) else {
            return Lookup::Missing;
        };
        if after.saturating_add(1) < ring.covered_from {
            return Lookup::Gap {
                covered_from: ring.covered_from,
            };
        }
        let start = ring.msgs.partition_point(|m| m.seq <= after);
        let mut msgs = Vec::new();
        let mut bytes = 0;
        for m in ring.msgs.range(start..) {
            if !msgs.is_empty() && bytes + m.text.len() > max_bytes {
                break;
            }
            bytes += m.text.len();
            msgs.push(m.clone());
        }
        let done = start + msgs.len() == ring.msgs.len();
        Lookup::Page { msgs, done }
    }

    /// Forgets what is older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|e| now.duration_since(e.at) > self.bounds.ttl)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest messages until the shard's history fits its byte bound.
    fn evict(&mut self) {
        while self.bytes > self.bounds.max_bytes && !self.order.is_empty() {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some(e) = self.order.pop_front() else {
            return;
        };
        self.bytes -= ENTRY_BYTES;
        let Some(per_stream) = self.rings.get_mut(&e.stream) else {
            return;
        };
        let Some(ring) = per_stream.get_mut(&e.channel) else {
            return;
        };
        if e.seq != EMPTY_RING && ring.msgs.front().is_some_and(|m| m.seq == e.seq) {
            if let Some(old) = ring.msgs.pop_front() {
                ring.covered_from = old.seq + 1;
                self.bytes -= old.footprint();
                self.messages -= 1;
            }
        }
        if ring.msgs.is_empty() {
            per_stream.remove(&e.channel);
            self.bytes -= RING_BYTES + e.channel.len();
            if per_stream.is_empty() {
                self.rings.remove(&e.stream);
            }
        }
    }

    /// Bytes held, as charged against `history.max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn rings(&self) -> usize {
        self.rings.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Publish;

    fn msg(channel: &str, seq: u64, len: usize) -> Arc<Msg> {
        let p = Publish {
            channel: channel.into(),
            event: None,
            id: None,
            priority: 3,
            data: serde_json::Value::String("x".repeat(len)),
            from: None,
            born: Instant::now(),
            origin_ms: None,
        };
        Arc::new(Msg::new(p, channel.into(), 0, seq, seq.to_string()))
    }

    fn bounds(per_channel: usize, max_bytes: usize) -> Bounds {
        Bounds {
            per_channel,
            max_bytes,
            ttl: Duration::from_secs(60),
        }
    }

    fn seqs(l: &Lookup) -> Vec<u64> {
        match l {
            Lookup::Page { msgs, .. } => msgs.iter().map(|m| m.seq).collect(),
            other => panic!("not a page: {other:?}"),
        }
    }

    #[test]
    fn ring_reaches_back_only_as_far_as_it_keeps() {
        let mut h = History::new(bounds(2, 1 << 20));
        let now = Instant::now();
        for s in [12, 15, 20] {
            h.push(msg("c", s, 1), 12, now);
        }
        // 12 was evicted by the count bound: a client that saw 11 may have missed it.
        assert!(matches!(
            h.page(0, "c", 11, 1000),
            Lookup::Gap { covered_from: 13 }
        ));
        assert_eq!(seqs(&h.page(0, "c", 12, 1000)), vec![15, 20]);
        assert!(
            matches!(h.page(0, "c", 20, 1000), Lookup::Page { ref msgs, done: true } if msgs.is_empty())
        );
        assert!(matches!(h.page(0, "other", 1, 1000), Lookup::Missing));
        h.expire(now + Duration::from_secs(61));
        assert_eq!((h.messages(), h.rings(), h.bytes()), (0, 0, 0));
    }

    #[test]
    fn pages_are_bounded_but_never_empty() {
        let mut h = History::new(bounds(100, 1 << 20));
        let now = Instant::now();
        for s in 1..=10 {
            h.push(msg("c", s, 100), 1, now);
        }
        let one = msg("c", 1, 100).text.len();
        let l = h.page(0, "c", 0, one * 2 + 10);
        assert_eq!(seqs(&l), vec![1, 2]);
        assert!(matches!(l, Lookup::Page { done: false, .. }));
        assert_eq!(seqs(&h.page(0, "c", 9, 1)), vec![10]);
        assert!(matches!(
            h.page(0, "c", 9, 1),
            Lookup::Page { done: true, .. }
        ));
        assert_eq!(seqs(&h.page(0, "c", 3, 0)), vec![4]);
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_of_the_shard() {
        let one = msg("a", 1, 1000).footprint() + ENTRY_BYTES + RING_BYTES + 8;
        let mut h = History::new(bounds(100, one * 5));
        let now = Instant::now();
        for s in 0..1000u64 {
            h.push(msg(&format!("ch{}", s % 7), s, 1000), s, now);
            assert!(h.bytes() <= one * 5, "over the bound after {s}");
        }
        // The newest messages are kept; the oldest went first.
        assert_eq!(seqs(&h.page(0, "ch5", 998, 1 << 20)), vec![999]);
        assert!(matches!(
            h.page(0, "ch0", 0, 1 << 20),
            Lookup::Gap { .. } | Lookup::Missing
        ));
    }

    #[test]
    fn empty_rings_cover_from_where_they_start_and_go_with_age() {
        let mut h = History::new(bounds(10, 1 << 20));
        let now = Instant::now();
        let ch: Arc<str> = Arc::from("k");
        assert_eq!(h.ensure(7, &ch, 500, now), 500);
        assert!(matches!(
            h.page(7, "k", 499, 100),
            Lookup::Page { done: true, .. }
        ));
        assert!(matches!(
            h.page(7, "k", 10, 100),
            Lookup::Gap { covered_from: 500 }
        ));
        assert_eq!(
            h.ensure(7, &ch, 900, now),
            500,
            "an existing ring keeps its start"
        );
        h.expire(now + Duration::from_secs(61));
        assert_eq!((h.rings(), h.bytes()), (0, 0));
    }

    #[test]
    fn a_million_channels_stay_within_the_bound() {
        let max = 4 << 20;
        let mut h = History::new(bounds(256, max));
        let now = Instant::now();
        for i in 0..200_000u64 {
            h.push(msg(&format!("user:{i}"), i, 20), i, now);
        }
        assert!(h.bytes() <= max);
        assert!(h.rings() > 1000);
    }
}
