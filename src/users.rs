//! Connection limits per user and per client address. Each key's count lives on one shard (a hash of
//! the key); other shards ask it over the mesh while a client is in its handshake.

use crate::mesh::{MeshMsg, Peers};
use crate::router::owner_of;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

/// What a slot is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    User,
    Ip,
}

pub struct Users {
    shard: usize,
    shards: usize,
    user_limit: usize,
    /// 0: no limit per address.
    ip_limit: usize,
    counts: RefCell<HashMap<(SlotKind, Arc<str>), usize>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<bool>>>,
    next_ticket: Cell<u64>,
}

impl Users {
    pub fn new(shard: usize, shards: usize, user_limit: usize, ip_limit: usize) -> Users {
        Users {
            shard,
            shards,
            user_limit,
            ip_limit,
            counts: RefCell::default(),
            waiters: RefCell::default(),
            next_ticket: Cell::new(0),
        }
    }

    /// Whether `kind` is limited at all.
    pub fn limited(&self, kind: SlotKind) -> bool {
        kind == SlotKind::User || self.ip_limit > 0
    }

    fn limit(&self, kind: SlotKind) -> usize {
        match kind {
            SlotKind::User => self.user_limit,
            SlotKind::Ip => self.ip_limit,
        }
    }

    /// Takes a connection slot for `user` (a `sub` or an address); false when it is at its limit.
    pub async fn acquire(&self, peers: &Peers, kind: SlotKind, user: Arc<str>) -> bool {
        let owner = owner_of(&user, self.shards);
        if owner == self.shard {
            return self.acquire_here(kind, user);
        }
        let ticket = self.next_ticket.get() + 1;
        self.next_ticket.set(ticket);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, tx);
        let from = self.shard;
        let msg = MeshMsg::UserAcquire {
            kind,
            user,
            from,
            ticket,
        };
        if !peers.send(owner, msg) {
            self.waiters.borrow_mut().remove(&ticket);
            return false;
        }
        // If the handshake gives up meanwhile, the grant that still comes is handed back.
        let _cleanup = WaiterGuard(self, ticket);
        rx.await.unwrap_or(false)
    }

    pub fn release(&self, peers: &Peers, kind: SlotKind, user: Arc<str>) {
        let owner = owner_of(&user, self.shards);
        if owner == self.shard {
            self.release_here(kind, user);
        } else {
            peers.send(owner, MeshMsg::UserRelease { kind, user });
        }
    }

    pub fn acquire_here(&self, kind: SlotKind, user: Arc<str>) -> bool {
        let mut counts = self.counts.borrow_mut();
        let n = counts.entry((kind, user)).or_insert(0);
        if *n >= self.limit(kind) {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_here(&self, kind: SlotKind, user: Arc<str>) {
        let mut counts = self.counts.borrow_mut();
        let key = (kind, user);
        if let Some(n) = counts.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// The owner's answer. A grant nobody waits for any more (the handshake timed out) is released.
    pub fn granted(&self, peers: &Peers, kind: SlotKind, user: Arc<str>, ticket: u64, ok: bool) {
        let waiter = self.waiters.borrow_mut().remove(&ticket);
        let delivered = match waiter {
            Some(tx) => tx.send(ok).is_ok(),
            None => false,
        };
        if ok && !delivered {
            self.release(peers, kind, user);
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
