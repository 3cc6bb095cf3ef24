//! Kafka: the production source of pushes and how nodes scale out.
//!
//! Every shard owns the partitions `p % shards == shard` of every consumed topic. A shard's Kafka I/O
//! runs on a thread of its own with a small tokio runtime (rskafka needs one): it fetches, decodes
//! records (dead-lettering what cannot be routed), produces client publishes, and reads old records
//! for `since`. What it has for the shard crosses over a lock-free bounded ring (`handoff`); what the
//! shard asks of it goes through a bounded tokio channel that the shard only `try_send`s into.

pub mod client;
pub mod decode;
pub mod handoff;
mod io;
pub mod stats;

pub use io::spawn;

use crate::message::Publish;
use std::sync::Arc;

/// Identifies a partition of a consumed topic inside the process: (topic index + 1) << 32 |
/// partition. Never 0, which is the in-process bus's sequence.
pub type Stream = u64;

pub fn stream_id(topic_index: usize, partition: i32) -> Stream {
    ((topic_index as u64 + 1) << 32) | (partition as u32 as u64)
}

pub fn stream_partition(stream: Stream) -> i32 {
    (stream & 0xffff_ffff) as i32
}

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
    pub offset: i64,
    pub publish: Publish,
}

/// Records of one partition, in offset order.
pub struct Batch {
    pub stream: Stream,
    pub topic: Arc<str>,
    pub partition: i32,
    /// Empty in the first batch of a partition, which tells the shard where reading starts.
    pub msgs: Vec<Decoded>,
    /// The next offset to read after this batch.
    pub next: i64,
}

/// What the Kafka I/O thread hands to its shard.
pub enum FromKafka {
    Records(Batch),
    /// A client publish was acknowledged (or failed): `pos` of the produced record.
    Produced {
        token: u64,
        result: Result<String, String>,
    },
    /// Records of a channel read back for `since`, or why they could not be.
    Read {
        token: u64,
        result: Result<Vec<Decoded>, String>,
    },
}

/// What a shard asks of its Kafka I/O thread.
pub enum Command {
    Produce {
        token: u64,
        topic: String,
        record: rskafka::record::Record,
    },
    Read {
        token: u64,
        stream: Stream,
        channel: Arc<str>,
        /// Offsets `from..to`.
        from: i64,
        to: i64,
    },
}

/// The shard's side of its Kafka I/O thread.
pub struct KafkaIo {
    pub commands: tokio::sync::mpsc::Sender<Command>,
    /// Consumed topics; a topic's index is part of a `Stream`.
    pub topics: Arc<Vec<String>>,
    pub upstream: String,
}

impl KafkaIo {
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
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
}
