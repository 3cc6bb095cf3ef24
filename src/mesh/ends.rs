//! The mesh itself: a glommio shared channel for every ordered pair of shards, and how a shard
//! connects its ends.

use super::MeshMsg;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use std::cell::Cell;
use std::rc::Rc;

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
