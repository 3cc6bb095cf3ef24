//! Kafka: the production source of pushes and how nodes scale out.
//!
//! Every shard owns the partitions `p % shards == shard` of every consumed topic. A shard's Kafka I/O
//! runs on a thread of its own with a small tokio runtime (rskafka needs one): it fetches, decodes
//! records (dead-lettering what cannot be routed), produces client publishes, and reads old records
//! back for `since`, one bounded page at a time (`read`). What it has for the shard crosses over a
//! lock-free bounded ring (`handoff`); what the shard asks of it goes through a bounded tokio
//! channel that the shard only `try_send`s into.

pub mod client;
pub mod decode;
pub mod handoff;
mod io;
pub mod presence;
mod read;
pub mod stats;

pub use io::spawn;

use crate::message::Publish;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// Identifies a partition of a consumed topic inside the process: (topic index + 1) << 32 |
/// partition. Never 0, which is the in-process bus's sequence.
pub type Stream = u64;

/// The `Stream` of a partition of consumed topic `topic_index`.
pub fn stream_id(topic_index: usize, partition: i32) -> Stream {
    ((topic_index as u64 + 1) << 32) | (partition as u32 as u64)
}

/// The partition of a `Stream`.
pub fn stream_partition(stream: Stream) -> i32 {
    (stream & 0xffff_ffff) as i32
}

/// The consumed topic's index of a `Stream`.
pub fn stream_topic_index(stream: Stream) -> usize {
    ((stream >> 32) as usize).saturating_sub(1)
}

/// `pos` of a record: `<topic>:<partition>:<offset, zero-padded>`.
pub fn format_pos(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}:{partition}:{offset:012}")
}

/// (topic, partition, offset) of a Kafka `pos`.
pub fn parse_pos(pos: &str) -> Option<(&str, i32, i64)> {
    let mut it = pos.rsplitn(3, ':');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    (offset >= 0 && partition >= 0 && !topic.is_empty()).then_some((topic, partition, offset))
}

/// A decoded record.
pub struct Decoded {
    /// The record's offset in its partition.
    pub offset: i64,
    /// The message it carries.
    pub publish: Publish,
}

/// Records of one partition, in offset order.
pub struct Batch {
    /// The partition, as the shard knows it.
    pub stream: Stream,
    /// The partition's topic and number, for `pos`.
    pub topic: Arc<str>,
    pub partition: i32,
    /// Empty in the first batch of a partition, which tells the shard where reading starts.
    pub msgs: Vec<Decoded>,
    /// The next offset to read after this batch.
    pub next: i64,
}

/// What the Kafka I/O thread hands to its shard.
pub enum FromKafka {
    /// Records consumed from a partition.
    Records(Batch),
    /// A client publish was acknowledged (or failed): `pos` of the produced record.
    Produced {
        token: u64,
        result: Result<String, String>,
    },
    /// The answer to one `Command::Read`: a page, or why it could not be read.
    Read {
        token: u64,
        result: Result<ReadPage, String>,
    },
}

/// The answer to one `Command::Read`.
pub struct ReadPage {
    /// The channel's records in `from..next`, decoded, in offset order (records that fail to
    /// decode are skipped: they were dead-lettered when consumed).
    pub records: Vec<Decoded>,
    /// Where the scan stopped: every record of the channel with offset in `from..next` is in
    /// `records`. `next == to` when the range was scanned to its end.
    pub next: i64,
    /// Records scanned (matching or not), for the caller's per-`since` budget.
    pub scanned: usize,
    /// Retention removed records at or after `from` before they could be read: the read does not
    /// reach back to `from` (the client missed records for good). Also set when the log ends
    /// before `to`: records that were consumed are gone.
    pub truncated: bool,
}

/// What a shard asks of its Kafka I/O thread.
pub enum Command {
    /// Produce a client publish; answered with `FromKafka::Produced`.
    Produce {
        token: u64,
        topic: String,
        record: rskafka::record::Record,
    },
    /// One page of a `since` read-back: records of `channel` in `stream` with offsets in
    /// `from..to`, in order. The scan stops at `to`, after `max_bytes` of matched record values,
    /// or after `max_scan` records scanned, whichever first (the first matching record is kept
    /// however large, and one record is scanned even if `max_scan` is 0). Answered with
    /// `FromKafka::Read`, an error after 10 s at most. Pages of one partition are served one at a
    /// time, in the order asked for.
    Read {
        token: u64,
        stream: Stream,
        channel: Arc<str>,
        from: i64,
        to: i64,
        max_bytes: usize,
        max_scan: usize,
    },
}

/// The shard's side of its Kafka I/O thread.
pub struct KafkaIo {
    pub commands: tokio::sync::mpsc::Sender<Command>,
    /// Consumed topics; a topic's index is part of a `Stream`.
    pub topics: Arc<Vec<String>>,
    /// Where client publishes are produced.
    pub upstream: String,
    /// Partitions of each consumed topic (by index) as last discovered; 0 = unknown. Written by
    /// the I/O thread, read by the shard without a lock.
    partitions: Arc<[AtomicI32]>,
}

impl KafkaIo {
    /// The index of a consumed topic, as in a `Stream`.
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// The number of partitions of consumed topic `topic_index`, once discovered.
    pub fn partitions(&self, topic_index: usize) -> Option<i32> {
        let n = self.partitions.get(topic_index)?.load(Ordering::Relaxed);
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let p = format_pos("push.a:b", 3, 42);
        assert_eq!(parse_pos(&p), Some(("push.a:b", 3, 42)));
        assert!(format_pos("t", 0, 9) < format_pos("t", 0, 10));
        assert_eq!(parse_pos("t:x:1"), None);
        assert_eq!(parse_pos("1a-000001"), None);
        assert_eq!(stream_partition(stream_id(3, 7)), 7);
        assert_eq!(stream_topic_index(stream_id(3, 7)), 3);
        assert_ne!(stream_id(0, 0), 0, "0 is the in-process bus");
    }

    #[test]
    fn partition_counts_are_read_without_locks() {
        let (commands, _rx) = tokio::sync::mpsc::channel(1);
        let partitions: Arc<[AtomicI32]> = [0, 3].into_iter().map(AtomicI32::new).collect();
        let io = KafkaIo {
            commands,
            topics: Arc::new(vec!["a".into(), "b".into()]),
            upstream: "b".into(),
            partitions: partitions.clone(),
        };
        assert_eq!(io.partitions(0), None, "0 = not discovered");
        assert_eq!(io.partitions(1), Some(3));
        assert_eq!(io.partitions(2), None);
        partitions[0].store(5, Ordering::Relaxed);
        assert_eq!(io.partitions(0), Some(5));
    }
}
