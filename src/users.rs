//! The per-user connection limit. Each user's count lives on one shard (a hash of the `sub`); other
//! shards ask it over the mesh while a client is in its handshake.

use crate::mesh::{MeshMsg, Peers};
use crate::router::owner_of;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Users {
    shard: usize,
    shards: usize,
    limit: usize,
    counts: RefCell<HashMap<Arc<str>, usize>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<bool>>>,
    next_ticket: Cell<u64>,
}

impl Users {
    pub fn new(shard: usize, shards: usize, limit: usize) -> Users {
        Users {
            shard,
            shards,
            limit,
            counts: RefCell::default(),
            waiters: RefCell::default(),
            next_ticket: Cell::new(0),
        }
    }

    /// Takes a connection slot for `user`; false when the user is at its limit.
    pub async fn acquire(&self, peers: &Peers, user: Arc<str>) -> bool {
        let owner = owner_of(&user, self.shards);
        if owner == self.shard {
            return self.acquire_here(user);
        }
        let ticket = self.next_ticket.get() + 1;
        self.next_ticket.set(ticket);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, tx);
        let from = self.shard;
        if !peers.send(owner, MeshMsg::UserAcquire { user, from, ticket }) {
            self.waiters.borrow_mut().remove(&ticket);
            return false;
        }
        // If the handshake gives up meanwhile, the grant that still comes is handed back.
        let _cleanup = WaiterGuard(self, ticket);
        rx.await.unwrap_or(false)
    }

    pub fn release(&self, peers: &Peers, user: Arc<str>) {
        let owner = owner_of(&user, self.shards);
        if owner == self.shard {
            self.release_here(&user);
        } else {
            peers.send(owner, MeshMsg::UserRelease { user });
        }
    }

    pub fn acquire_here(&self, user: Arc<str>) -> bool {
        let mut counts = self.counts.borrow_mut();
        let n = counts.entry(user).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_here(&self, user: &str) {
        let mut counts = self.counts.borrow_mut();
        if let Some(n) = counts.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(user);
            }
        }
    }

    /// The owner's answer. A grant nobody waits for any more (the handshake timed out) is released.
    pub fn granted(&self, peers: &Peers, user: Arc<str>, ticket: u64, ok: bool) {
        let waiter = self.waiters.borrow_mut().remove(&ticket);
        let delivered = match waiter {
            Some(tx) => tx.send(ok).is_ok(),
            None => false,
        };
        if ok && !delivered {
            self.release(peers, user);
        }
    }

    pub fn tracked(&self) -> usize {
        self.counts.borrow().len()
    }
}

struct WaiterGuard<'a>(&'a Users, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.borrow_mut().remove(&self.1);
    }
}
