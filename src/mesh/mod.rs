//! What shards say to each other over glommio's channel mesh, and the outbound side of it.
//!
//! Two policies share one FIFO per peer. **Control** messages (membership, recovery pages, slot
//! grants, acknowledgements, Kafka records handed to a channel's owner) are never dropped: how many
//! can wait is bounded by what causes them (connections, subscriptions, and Kafka batches, whose
//! consumer waits while a peer is behind). **Data** messages (`Deliver`, forwarded publishes) wait
//! at most `limits.peer_queue_messages` per peer; a send beyond that hands the message back to the
//! caller, which decides its fate (a publish is refused, a lost delivery is reported with `Lost`
//! in its place so the peer's members are closed with 1013 and recover with `since`).
//!
//! A shard never awaits a mesh send on the path that handles mesh input (two shards blocked sending
//! to each other would deadlock): messages wait in the per-peer queue, drained by one forwarder task
//! per peer, which keeps each pair of shards FIFO.

mod ends;
mod peers;

pub use ends::{full_mesh, Connected, MeshEnds};
pub use peers::Peers;

use crate::kafka::Decoded;
use crate::message::{Msg, Publish};
use crate::protocol::Refusal;
use crate::topology::Stream;
use serde_json::Value;
use std::sync::Arc;

/// Slots per pair of shards in the mesh. glommio preallocates every slot of every channel
/// (shards² of them), so it is kept small and messages are kept to two words: bursts wait in the
/// per-peer queue in front of it instead.
pub const MESH_CAPACITY: usize = 128;

/// Where the acknowledgement of a client publish goes.
#[derive(Debug)]
pub struct ConnAck {
    pub shard: usize,
    pub conn: u64,
    pub id: Value,
}

/// Identifies one recovery of one member: the member's shard, its connection and a number unique
/// on that shard, so an answer to an earlier recovery is never taken for a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corr {
    pub shard: usize,
    pub conn: u64,
    pub gen: u64,
}

/// What a connection slot is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// A user; the key is the user's channel `user:<sub>`, whose owner keeps the count and, from
    /// it, which shards the user's personal messages go to.
    User,
    /// A client address.
    Ip,
}

/// One page of a recovery, as the owner answers it.
pub enum PageResult {
    /// Messages after the cursor, in order; the cursor moves to `next_after`. `done`: the page
    /// reaches the owner's head of the channel, so everything later arrives live.
    Msgs {
        msgs: Vec<Arc<Msg>>,
        next_after: u64,
        done: bool,
        scanned: usize,
    },
    /// The history (memory or Kafka's retention) no longer reaches back to the cursor.
    Unreachable,
    /// The page could not be read (Kafka unavailable, timed out).
    Failed(String),
}

/// Everything but a delivery, boxed so a mesh slot stays two words.
pub enum Control {
    /// To the channel's owner: sequence, keep in history, fan out (data lane: may be refused).
    Publish {
        publish: Publish,
        ack: Option<ConnAck>,
    },
    /// Kafka records of channels the receiver owns, from the shard consuming their partition;
    /// `next` is that partition's next offset after them.
    Records {
        stream: Stream,
        topic: Arc<str>,
        partition: i32,
        msgs: Vec<Decoded>,
        next: i64,
    },
    /// The sender consumes `stream` from `next` on (sent to every shard when a partition starts).
    Position {
        stream: Stream,
        next: i64,
    },
    /// To the owner: the sender has members of `channel`; answered `JoinAck` with `gen`.
    Join {
        channel: Arc<str>,
        from: usize,
        gen: u64,
    },
    JoinAck {
        channel: Arc<str>,
        gen: u64,
    },
    /// To the owner: the sender's last member of `channel` left.
    Leave {
        channel: Arc<str>,
        from: usize,
    },
    /// To the owner: the next page of a recovery, after `after`, of at most `max_bytes`.
    Recover {
        corr: Corr,
        channel: Arc<str>,
        stream: Stream,
        after: u64,
        max_bytes: usize,
        max_scan: usize,
    },
    Page {
        corr: Corr,
        channel: Arc<str>,
        page: PageResult,
    },
    /// A delivery of `channel` to the receiver was dropped (its queue was full): members there
    /// must be closed with 1013 before anything later of the channel reaches them.
    Lost {
        channel: Arc<str>,
        from: usize,
    },
    /// The owner's answer to a client publish.
    Acked {
        conn: u64,
        id: Value,
        result: Result<String, Refusal>,
    },
    /// Connection limits per user and per address, kept by the shard that owns the key.
    SlotAcquire {
        kind: SlotKind,
        key: Arc<str>,
        from: usize,
        ticket: u64,
    },
    SlotGranted {
        kind: SlotKind,
        key: Arc<str>,
        ticket: u64,
        ok: bool,
    },
    SlotRelease {
        kind: SlotKind,
        key: Arc<str>,
        from: usize,
    },
    /// To the owner of a channel with presence: a connection of `user` on the sender subscribed
    /// (`delta` 1) or left (-1).
    PresenceDelta {
        channel: Arc<str>,
        user: Arc<str>,
        delta: i32,
    },
    /// To the owner: a `presence` (`list`) or `presence_stats` request, answered with `Reply`.
    PresenceAsk {
        channel: Arc<str>,
        from: usize,
        conn: u64,
        id: Value,
        list: bool,
    },
    /// A finished reply frame for a connection of the receiver.
    Reply {
        conn: u64,
        text: String,
    },
    /// From the owner to a shard with members: a batch's `join` / `leave` frames.
    PresenceEvents {
        channel: Arc<str>,
        frames: Vec<Arc<str>>,
    },
}

/// A message between shards: two words, so the mesh's preallocated slots stay small.
pub enum MeshMsg {
    /// From a channel's owner to a shard with members.
    Deliver(Arc<Msg>),
    Control(Box<Control>),
}

impl MeshMsg {
    pub(crate) fn is_data(&self) -> bool {
        match self {
            MeshMsg::Deliver(_) => true,
            MeshMsg::Control(c) => matches!(**c, Control::Publish { .. } | Control::Records { .. }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_messages_stay_two_words() {
        assert_eq!(std::mem::size_of::<MeshMsg>(), 16);
    }
}
