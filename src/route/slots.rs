//! Connection slots per user and per address, asked of the key's owner during the handshake. A
//! user's slot also routes the user's personal channel to this shard (see `interest`).

use super::Router;
use crate::mesh::{Control, SlotKind};
use futures_channel::oneshot;
use std::sync::Arc;

impl Router {
    /// Whether connections are counted per `kind`.
    pub fn slot_limited(&self, kind: SlotKind) -> bool {
        self.slots.borrow().limited(kind)
    }

    /// Takes a slot for `key` (a user's channel `user:<sub>`, or an address); false at its limit.
    pub async fn acquire_slot(&self, kind: SlotKind, key: Arc<str>) -> bool {
        let owner = self.owner(&key);
        if owner == self.shard {
            return self.slots.borrow_mut().acquire(kind, key, self.shard);
        }
        let ticket = self.gen();
        let (tx, rx) = oneshot::channel();
        self.slot_waiters.borrow_mut().insert(ticket, tx);
        let from = self.shard;
        self.peers.control(
            owner,
            Control::SlotAcquire {
                kind,
                key,
                from,
                ticket,
            },
        );
        // If the handshake gives up meanwhile, the grant that still comes is handed back.
        let _cleanup = WaiterGuard(self, ticket);
        rx.await.unwrap_or(false)
    }

    pub fn release_slot(&self, kind: SlotKind, key: Arc<str>) {
        let owner = self.owner(&key);
        if owner == self.shard {
            self.slots.borrow_mut().release(kind, key, self.shard);
        } else {
            let from = self.shard;
            self.peers
                .control(owner, Control::SlotRelease { kind, key, from });
        }
    }

    /// The owner's answer. A grant nobody waits for any more (the handshake timed out) goes back.
    pub(super) fn slot_granted(&self, kind: SlotKind, key: Arc<str>, ticket: u64, ok: bool) {
        let waiter = self.slot_waiters.borrow_mut().remove(&ticket);
        let delivered = match waiter {
            Some(tx) => tx.send(ok).is_ok(),
            None => false,
        };
        if ok && !delivered {
            self.release_slot(kind, key);
        }
    }
}

struct WaiterGuard<'a>(&'a Router, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.slot_waiters.borrow_mut().remove(&self.1);
    }
}
