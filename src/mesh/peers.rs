//! The outbound side of a shard's mesh: one FIFO per peer carrying both policies (control never
//! dropped, data bounded), drained by one forwarder task per peer into the mesh.

use super::{Control, MeshMsg};
use crate::metrics::ShardMetrics;
use glommio::channels::shared_channel::ConnectedSender;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

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
