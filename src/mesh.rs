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

use crate::kafka::Decoded;
use crate::message::{Msg, Publish};
use crate::metrics::ShardMetrics;
use crate::protocol::Refusal;
use crate::topology::Stream;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Slots per pair of shards in the mesh. glommio preallocates every slot of every channel
/// (shards² of them), so it is kept small and messages are kept to two words: bursts wait in the
/// per-peer queue in front of it instead.
pub const MESH_CAPACITY: usize = 128;

/// One shard's ends of the full mesh of glommio shared channels (lock-free single-producer
/// single-consumer rings): a sender to and a receiver from every other shard.
pub struct MeshEnds {
    senders: Vec<Option<SharedSender<MeshMsg>>>,
    receivers: Vec<Option<SharedReceiver<MeshMsg>>>,
}

/// The connected ends: senders by peer, receivers with the peer they hear from.
pub type Connected = (
    Vec<Option<ConnectedSender<MeshMsg>>>,
    Vec<(usize, ConnectedReceiver<MeshMsg>)>,
);

/// A channel for every ordered pair of `n` shards; entry `i` goes to shard `i`.
pub fn full_mesh(n: usize, capacity: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..n)
        .map(|_| MeshEnds {
            senders: (0..n).map(|_| None).collect(),
            receivers: (0..n).map(|_| None).collect(),
        })
        .collect();
    for from in 0..n {
        for to in (0..n).filter(|t| *t != from) {
            let (s, r) = shared_channel::new_bounded(capacity);
            ends[from].senders[to] = Some(s);
            ends[to].receivers[from] = Some(r);
        }
    }
    ends
}

impl MeshEnds {
    /// Connects every end at once. A connection completes only when both of its shards have
    /// connected it, and a waiting executor keeps polling: connected one after the other (as
    /// glommio's `MeshBuilder::join` does), dozens of shards on few cores take minutes to start.
    pub async fn connect(self) -> Connected {
        // An executor waiting for peers may park with nothing else to do; glommio then learns of a
        // peer's connection only when something wakes it. A short tick keeps it looking.
        let connected = Rc::new(Cell::new(false));
        let tick = connected.clone();
        glommio::spawn_local(async move {
            while !tick.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .detach();
        let senders: Vec<_> = self
            .senders
            .into_iter()
            .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
            .collect();
        let receivers: Vec<_> = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(peer, r)| r.map(|r| (peer, glommio::spawn_local(r.connect()))))
            .collect();
        let mut out = (Vec::with_capacity(senders.len()), Vec::new());
        for s in senders {
            out.0.push(match s {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        for (peer, task) in receivers {
            out.1.push((peer, task.await));
        }
        connected.set(true);
        out
    }
}

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
}

/// A message between shards: two words, so the mesh's preallocated slots stay small.
pub enum MeshMsg {
    /// From a channel's owner to a shard with members.
    Deliver(Arc<Msg>),
    Control(Box<Control>),
}

impl MeshMsg {
    fn is_data(&self) -> bool {
        match self {
            MeshMsg::Deliver(_) => true,
            MeshMsg::Control(c) => matches!(**c, Control::Publish { .. } | Control::Records { .. }),
        }
    }
}

/// The per-peer queue in front of the mesh.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<MeshMsg>,
    /// Data messages in `queue`.
    data: usize,
    /// Channels with a `Lost` in `queue`: until it is on its way, the channel's deliveries to this
    /// peer are not queued (the notice covers them), so a long stall costs one notice per channel.
    lost: HashSet<Arc<str>>,
    forwarder: Option<Waker>,
}

/// The outbound side of this shard's mesh: one queue and one forwarder task per peer.
pub struct Peers {
    me: usize,
    outboxes: Vec<Rc<RefCell<Outbox>>>,
    data_bound: usize,
    metrics: ShardMetrics,
    /// Wakers of tasks waiting for every peer queue to go below the data bound.
    waiting_room: RefCell<Vec<Waker>>,
    closed: Rc<Cell<bool>>,
}

impl Peers {
    /// Starts one forwarder task per peer, each owning its connected sender.
    pub fn start(
        senders: Vec<Option<ConnectedSender<MeshMsg>>>,
        me: usize,
        data_bound: usize,
        metrics: ShardMetrics,
    ) -> Rc<Peers> {
        let n = senders.len();
        let peers = Rc::new(Peers {
            me,
            outboxes: (0..n).map(|_| Rc::default()).collect(),
            data_bound: data_bound.max(1),
            metrics,
            waiting_room: RefCell::default(),
            closed: Rc::new(Cell::new(false)),
        });
        for (peer, sender) in senders.into_iter().enumerate() {
            let Some(sender) = sender else { continue };
            let weak = Rc::downgrade(&peers);
            glommio::spawn_local(async move {
                loop {
                    let Some(peers) = weak.upgrade() else { break };
                    let Some(msg) = poll_fn(|cx| peers.poll_next(peer, cx)).await else {
                        break;
                    };
                    drop(peers);
                    if sender.send(msg).await.is_err() {
                        // The peer has stopped (shutdown); nothing left to deliver to it.
                        break;
                    }
                }
            })
            .detach();
        }
        peers
    }

    fn poll_next(&self, peer: usize, cx: &mut std::task::Context<'_>) -> Poll<Option<MeshMsg>> {
        if self.closed.get() {
            return Poll::Ready(None);
        }
        let mut o = self.outboxes[peer].borrow_mut();
        match o.queue.pop_front() {
            Some(m) => {
                if let MeshMsg::Control(c) = &m {
                    if let Control::Lost { channel, .. } = &**c {
                        o.lost.remove(channel);
                    }
                }
                if m.is_data() {
                    o.data -= 1;
                    if o.data < self.data_bound {
                        drop(o);
                        for w in self.waiting_room.borrow_mut().drain(..) {
                            w.wake();
                        }
                    }
                }
                Poll::Ready(Some(m))
            }
            None => {
                o.forwarder = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn push(&self, peer: usize, msg: MeshMsg, lane: usize) {
        let mut o = self.outboxes[peer].borrow_mut();
        o.queue.push_back(msg);
        if let Some(w) = o.forwarder.take() {
            w.wake();
        }
        self.metrics.mesh_messages[lane].inc();
    }

    /// Queues a control message for `peer`: never dropped.
    pub fn control(&self, peer: usize, c: Control) {
        debug_assert_ne!(peer, self.me);
        if peer < self.outboxes.len() {
            self.push(peer, MeshMsg::Control(Box::new(c)), 0);
        }
    }

    /// Queues Kafka records for their channel's owner: never dropped, but counted against the
    /// peer's data bound, so that the consumer pauses (`room`) while the owner is behind.
    pub fn records(&self, peer: usize, c: Control) {
        if let Some(o) = self.outboxes.get(peer) {
            o.borrow_mut().data += 1;
            self.push(peer, MeshMsg::Control(Box::new(c)), 1);
        }
    }

    /// Queues a data message for `peer`, or hands it back when that peer's queue is full.
    pub fn data(&self, peer: usize, msg: MeshMsg) -> Result<(), MeshMsg> {
        let Some(o) = self.outboxes.get(peer) else {
            return Err(msg);
        };
        {
            let mut o = o.borrow_mut();
            if o.data >= self.data_bound {
                drop(o);
                self.metrics.mesh_drops.inc();
                return Err(msg);
            }
            o.data += 1;
        }
        self.push(peer, msg, 1);
        Ok(())
    }

    /// Whether a `Lost` notice for `channel` waits in `peer`'s queue: deliveries of the channel
    /// to that peer are then covered by it and not queued.
    pub fn lost_pending(&self, peer: usize, channel: &str) -> bool {
        self.outboxes
            .get(peer)
            .is_some_and(|o| o.borrow().lost.contains(channel))
    }

    /// Queues a `Lost` notice for `channel` to `peer`, unless one is already waiting there.
    pub fn lost(&self, peer: usize, channel: &Arc<str>) {
        let Some(o) = self.outboxes.get(peer) else {
            return;
        };
        if !o.borrow_mut().lost.insert(channel.clone()) {
            return;
        }
        let from = self.me;
        let channel = channel.clone();
        self.control(peer, Control::Lost { channel, from });
    }

    /// Waits until every peer's data queue is below its bound: sources that cannot drop (Kafka)
    /// pause here instead of growing the queues.
    pub async fn room(&self) {
        poll_fn(|cx| {
            let full = self
                .outboxes
                .iter()
                .any(|o| o.borrow().data >= self.data_bound);
            if !full || self.closed.get() {
                return Poll::Ready(());
            }
            self.waiting_room.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Stops the forwarders (shutdown).
    pub fn close(&self) {
        self.closed.set(true);
        for o in &self.outboxes {
            if let Some(w) = o.borrow_mut().forwarder.take() {
                w.wake();
            }
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    pub fn count(&self) -> usize {
        self.outboxes.len()
    }

    /// Messages waiting for peers (for `/stats`).
    pub fn queued(&self) -> usize {
        self.outboxes.iter().map(|o| o.borrow().queue.len()).sum()
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
