//! The in-process bus: how sources outside the shards (HTTP publish today, Kafka later) hand work to
//! a shard. Each shard has one bounded control queue; a publish goes straight to the channel's owner.

use crate::message::Publish;
use crate::presence::Update;
use crate::protocol::{ErrorCode, Refusal};
use crate::topology::owner_of;
use futures_channel::oneshot;
use serde_json::Value;

/// Bounded queue per shard: a burst of HTTP publishes waits here rather than growing memory.
const CONTROL_QUEUE: usize = 4096;

pub enum Control {
    /// Sequence and fan out; answers with the message's `pos`.
    Publish(Publish, oneshot::Sender<Result<String, Refusal>>),
    /// The shard's `/stats` section.
    Stats(oneshot::Sender<Value>),
    /// Stop accepting and close every connection with 1001.
    Drain,
    /// Presence of other nodes, from the presence topic's reader.
    Presence(Update),
    /// Test hook (`test_hooks`): block the shard's thread this long.
    Stall(std::time::Duration),
}

#[derive(Clone)]
pub struct Bus {
    shards: Vec<async_channel::Sender<Control>>,
}

impl Bus {
    pub fn new(shards: usize) -> (Bus, Vec<async_channel::Receiver<Control>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| async_channel::bounded(CONTROL_QUEUE))
            .unzip();
        (Bus { shards: tx }, rx)
    }

    pub async fn publish(&self, p: Publish) -> Result<String, Refusal> {
        let owner = owner_of(&p.channel, self.shards.len());
        let (tx, rx) = oneshot::channel();
        let gone = || Refusal::new(ErrorCode::Internal, "gateway is shutting down");
        self.shards[owner]
            .send(Control::Publish(p, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn stats(&self) -> Vec<Value> {
        let mut out = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let v = match s.send(Control::Stats(tx)).await {
                Ok(()) => rx.await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            out.push(if v.is_null() {
                serde_json::json!({"shard": i, "state": "stopped"})
            } else {
                v
            });
        }
        out
    }

    /// Hands a presence update to the channel's owner (to every shard for the node-wide ones);
    /// waits while a shard's queue is full. False once the shards are gone.
    pub async fn presence(&self, u: Update) -> bool {
        let to = match &u {
            Update::Set { channel, .. } => owner_of(channel, self.shards.len()),
            Update::Gone { .. } | Update::Rewrite => {
                for s in &self.shards {
                    if s.send(Control::Presence(u.clone())).await.is_err() {
                        return false;
                    }
                }
                return true;
            }
        };
        self.shards[to].send(Control::Presence(u)).await.is_ok()
    }

    /// Test hook: makes `shard` block its thread for `d` (false if there is no such shard).
    pub fn stall(&self, shard: usize, d: std::time::Duration) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|s| s.try_send(Control::Stall(d)).is_ok())
    }

    pub fn drain(&self) {
        for s in &self.shards {
            // A full queue still gets the message: this is a blocking call off the shards.
            let _ = s.send_blocking(Control::Drain);
        }
    }
}
