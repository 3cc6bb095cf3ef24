//! What shards say to each other over glommio's channel mesh, and the outbound side of it.
//!
//! A shard never awaits a mesh send on the path that handles mesh input (two shards blocked sending
//! to each other would deadlock); it queues into a bounded local channel per peer, drained by one
//! forwarder task per peer, which keeps each pair of shards FIFO.

use crate::message::{Msg, Publish};
use crate::metrics::ShardMetrics;
use crate::protocol::Refusal;
use crate::users::SlotKind;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;

pub type Mesh = MeshBuilder<MeshMsg, Full>;

/// Where the acknowledgement of a client publish goes.
#[derive(Debug)]
pub struct ConnAck {
    pub shard: usize,
    pub conn: u64,
    pub id: Value,
}

#[derive(Debug)]
pub enum MeshMsg {
    /// To the channel's owner: sequence, keep in history, fan out.
    Publish {
        publish: Box<Publish>,
        ack: Option<ConnAck>,
    },
    /// From the owner to a shard with members of the channel.
    Deliver(Arc<Msg>),
    /// The sender has its first member of `channel`: forward it the channel's messages. Sent to
    /// every other shard, each of which answers `JoinAck` with the same generation.
    Join {
        channel: Arc<str>,
        from: usize,
        gen: u64,
    },
    JoinAck {
        channel: Arc<str>,
        from: usize,
        gen: u64,
    },
    /// The sender's last member of `channel` left.
    Leave {
        channel: Arc<str>,
        from: usize,
    },
    /// A `since` subscription: the owner answers with `Recovered` and the history after `since`.
    Recover {
        channel: Arc<str>,
        since: crate::router::SincePos,
        from: usize,
        conn: u64,
    },
    /// `msgs` is None when the history does not reach back to `since`.
    Recovered {
        channel: Arc<str>,
        conn: u64,
        msgs: Option<Vec<Arc<Msg>>>,
    },
    /// The owner's answer to a client publish.
    Acked {
        conn: u64,
        id: Value,
        result: Result<String, Refusal>,
    },
    /// Per-user and per-address connection limits, kept by the shard that owns the key.
    UserAcquire {
        kind: SlotKind,
        user: Arc<str>,
        from: usize,
        ticket: u64,
    },
    UserAcquired {
        kind: SlotKind,
        user: Arc<str>,
        ticket: u64,
        ok: bool,
    },
    UserRelease {
        kind: SlotKind,
        user: Arc<str>,
    },
}

/// Bounded queue per peer before the mesh.
const PEER_QUEUE: usize = 64 * 1024;

pub struct Peers {
    outbound: Vec<Option<LocalSender<MeshMsg>>>,
    metrics: ShardMetrics,
}

impl Peers {
    /// Starts one forwarder task per peer. `senders` comes from joining the mesh.
    pub fn start(senders: Senders<MeshMsg>, me: usize, metrics: ShardMetrics) -> Peers {
        let senders = Rc::new(senders);
        let outbound = (0..senders.nr_consumers())
            .map(|peer| {
                if peer == me {
                    return None;
                }
                let (tx, rx) = local_channel::new_bounded::<MeshMsg>(PEER_QUEUE);
                let senders = senders.clone();
                glommio::spawn_local(async move {
                    while let Some(msg) = rx.recv().await {
                        if senders.send_to(peer, msg).await.is_err() {
                            // The peer has stopped (shutdown); nothing left to deliver to it.
                            break;
                        }
                    }
                })
                .detach();
                Some(tx)
            })
            .collect();
        Peers { outbound, metrics }
    }

    /// Queues `msg` for `peer`; false (and counted) if that peer's queue is full or gone.
    pub fn send(&self, peer: usize, msg: MeshMsg) -> bool {
        let ok = match self.outbound.get(peer) {
            Some(Some(tx)) => tx.try_send(msg).is_ok(),
            _ => false,
        };
        if !ok {
            self.metrics.mesh_drops.inc();
        }
        ok
    }
}
