//! The shard router: which connections of this shard are in which channel, and, for the channels
//! this shard owns, their sequence, history and which other shards have members.
//!
//! Each channel has one owner shard (a hash of its name). Every message of a channel is sequenced
//! by its owner, which delivers it to its own members and forwards one `Arc` of it over the mesh to
//! the shards that have members; each of those frames it once and queues that frame on its members.

use crate::conn::ConnHandle;
use crate::history::Owned;
use crate::mesh::{ConnAck, MeshMsg, Peers};
use crate::message::{Frame, Msg, Publish};
use crate::metrics::ShardMetrics;
use crate::protocol::{self, Filter, Refusal};
use futures_channel::oneshot;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BROADCAST: &str = "broadcast";
/// Shards are tracked in a 64-bit set per channel.
pub const MAX_SHARDS: usize = 64;

/// The shard that owns a channel or a user: FNV-1a of the name, the same on every shard.
pub fn owner_of(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// `pos` is `<epoch hex>-<seq, zero-padded>`: opaque to clients, increasing within a channel, and
/// tied to this process's epoch so a position from before a restart is recognised as such.
pub fn format_pos(epoch: u64, seq: u64) -> String {
    format!("{epoch:x}-{seq:012}")
}

pub fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (e, s) = pos.split_once('-')?;
    Some((u64::from_str_radix(e, 16).ok()?, s.parse().ok()?))
}

struct Member {
    conn: Rc<ConnHandle>,
    filter: Option<Rc<Filter>>,
}

struct Pending {
    member: Member,
    id: Value,
}

#[derive(Default)]
struct LocalChannel {
    members: HashMap<u64, Member>,
    /// `since` subscriptions waiting for the owner's history; they join `members` when it comes.
    pending: HashMap<u64, Pending>,
}

impl LocalChannel {
    fn count(&self) -> usize {
        self.members.len() + self.pending.len()
    }
}

pub struct Router {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    peers: Peers,
    local: RefCell<HashMap<Arc<str>, LocalChannel>>,
    owned: RefCell<HashMap<Arc<str>, Owned>>,
    seq: Cell<u64>,
    history_size: usize,
    history_ttl: Duration,
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    users: RefCell<HashMap<Arc<str>, usize>>,
    user_limit: usize,
    user_waiters: RefCell<HashMap<u64, oneshot::Sender<bool>>>,
    next_ticket: Cell<u64>,
    metrics: ShardMetrics,
}

pub struct RouterConfig {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub user_limit: usize,
}

impl Router {
    pub fn new(cfg: RouterConfig, peers: Peers, metrics: ShardMetrics) -> Router {
        Router {
            shard: cfg.shard,
            shards: cfg.shards,
            epoch: cfg.epoch,
            peers,
            local: RefCell::default(),
            owned: RefCell::default(),
            seq: Cell::new(0),
            history_size: cfg.history_size,
            history_ttl: cfg.history_ttl,
            conns: RefCell::default(),
            users: RefCell::default(),
            user_limit: cfg.user_limit,
            user_waiters: RefCell::default(),
            next_ticket: Cell::new(0),
            metrics,
        }
    }

    pub fn owner(&self, name: &str) -> usize {
        owner_of(name, self.shards)
    }

    pub fn register(&self, conn: Rc<ConnHandle>) {
        self.conns.borrow_mut().insert(conn.id, conn);
        self.metrics.connections.inc();
    }

    pub fn unregister(&self, conn: u64) {
        if self.conns.borrow_mut().remove(&conn).is_some() {
            self.metrics.connections.dec();
        }
    }

    pub fn connections(&self) -> Vec<Rc<ConnHandle>> {
        self.conns.borrow().values().cloned().collect()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    // ---- publishing ----

    /// A publish from a client of this shard; the reply goes back to it once sequenced.
    pub fn publish(&self, p: Publish, ack: Option<ConnAck>) {
        let owner = self.owner(&p.channel);
        if owner == self.shard {
            let msg = self.sequence(p);
            if let Some(a) = ack {
                self.ack(a, Ok(msg.pos.clone()));
            }
        } else {
            let id = ack.as_ref().map(|a| (a.conn, a.id.clone()));
            let sent = self.peers.send(
                owner,
                MeshMsg::Publish {
                    publish: Box::new(p),
                    ack,
                },
            );
            if let (false, Some((conn, id))) = (sent, id) {
                let busy = Refusal::new(protocol::ErrorCode::Internal, "gateway busy, retry");
                self.reply(conn, &protocol::reply_err(&id, &busy));
            }
        }
    }

    /// Sequences a message of a channel this shard owns, keeps it for `since`, and fans it out.
    pub fn sequence(&self, p: Publish) -> Arc<Msg> {
        debug_assert_eq!(self.owner(&p.channel), self.shard);
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut owned = self.owned.borrow_mut();
        let (channel, state) = match owned.get_key_value(p.channel.as_str()) {
            Some((k, _)) => {
                let k = k.clone();
                let st = owned.get_mut(&k).expect("key just found");
                (k, st)
            }
            None => {
                let k: Arc<str> = Arc::from(p.channel.as_str());
                (k.clone(), owned.entry(k).or_insert(Owned::new(seq - 1)))
            }
        };
        let msg = Arc::new(Msg::new(p, channel, seq, format_pos(self.epoch, seq)));
        state.push(msg.clone(), self.history_size);
        let interest = state.interest;
        drop(owned);
        self.metrics.messages_in.inc();
        self.deliver_local(&msg);
        for peer in 0..self.shards {
            if peer != self.shard && interest & (1 << peer) != 0 {
                self.peers.send(peer, MeshMsg::Deliver(msg.clone()));
            }
        }
        msg
    }

    /// Frames `msg` once and queues it on every member of this shard that its filter lets through.
    pub fn deliver_local(&self, msg: &Msg) {
        let local = self.local.borrow();
        let Some(ch) = local.get(&*msg.channel) else {
            return;
        };
        let mut frame: Option<Rc<Frame>> = None;
        for m in ch.members.values() {
            if m.filter.as_ref().is_some_and(|f| !f.matches(&msg.data)) {
                continue;
            }
            let f = frame.get_or_insert_with(|| {
                Rc::new(Frame::message(&msg.text, msg.priority, Some(msg.born)))
            });
            m.conn.send(f);
        }
    }

    fn ack(&self, a: ConnAck, result: Result<String, Refusal>) {
        if a.shard == self.shard {
            self.send_ack(a.conn, &a.id, &result);
        } else {
            self.peers.send(
                a.shard,
                MeshMsg::Acked {
                    conn: a.conn,
                    id: a.id,
                    result,
                },
            );
        }
    }

    fn send_ack(&self, conn: u64, id: &Value, result: &Result<String, Refusal>) {
        let text = match result {
            Ok(pos) => protocol::reply_ok(id, Some(("pos", Value::String(pos.clone())))),
            Err(r) => protocol::reply_err(id, r),
        };
        self.reply(conn, &text);
    }

    fn reply(&self, conn: u64, text: &str) {
        if let Some(c) = self.conns.borrow().get(&conn) {
            c.send(&Rc::new(Frame::text(text)));
        }
    }

    // ---- subscriptions ----

    /// Adds `conn` to `channel` and sends the reply. With `since`, the reply says whether the
    /// history reached back that far and is followed by the messages after `since`.
    pub fn subscribe(
        &self,
        conn: &Rc<ConnHandle>,
        channel: &str,
        filter: Option<Filter>,
        since: Option<(u64, u64)>,
        id: Option<Value>,
    ) {
        let member = Member {
            conn: conn.clone(),
            filter: filter.map(Rc::new),
        };
        let key = self.local_key(channel);
        let seq = match since {
            None => {
                self.insert(&key, member, None);
                if let Some(id) = id {
                    send_text(conn, &protocol::reply_ok(&id, None));
                }
                return;
            }
            // A position from another epoch (before a restart) cannot be recovered here.
            Some((epoch, _)) if epoch != self.epoch => {
                self.insert(&key, member, None);
                let id = id.unwrap_or_default();
                send_text(
                    conn,
                    &protocol::reply_ok(&id, Some(("recovered", false.into()))),
                );
                return;
            }
            Some((_, seq)) => seq,
        };
        let id = id.unwrap_or_default();
        let owner = self.owner(channel);
        if owner == self.shard {
            let found = self.history_after(channel, seq);
            send_recovery(&member, &id, found);
            self.insert(&key, member, None);
            return;
        }
        // Live messages reaching this shard before the owner's answer are covered by that answer.
        self.insert(&key, member, Some(id));
        self.peers.send(
            owner,
            MeshMsg::Recover {
                channel: key,
                since: seq,
                from: self.shard,
                conn: conn.id,
            },
        );
    }

    fn local_key(&self, channel: &str) -> Arc<str> {
        match self.local.borrow().get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(channel),
        }
    }

    /// Adds a member (or a pending `since` member when `pending_id` is set); the first member of
    /// a channel on this shard tells the owner to forward it.
    fn insert(&self, key: &Arc<str>, member: Member, pending_id: Option<Value>) {
        let first = {
            let mut local = self.local.borrow_mut();
            let ch = local.entry(key.clone()).or_default();
            let first = ch.count() == 0;
            let conn = member.conn.id;
            let replaced = match pending_id {
                Some(id) => ch.pending.insert(conn, Pending { member, id }).is_some(),
                None => ch.members.insert(conn, member).is_some(),
            };
            if !replaced {
                self.metrics.subscriptions.inc();
            }
            first
        };
        if first {
            self.metrics.channels.inc();
            let owner = self.owner(key);
            if owner != self.shard {
                let channel = key.clone();
                self.peers.send(
                    owner,
                    MeshMsg::Join {
                        channel,
                        from: self.shard,
                    },
                );
            }
        }
    }

    /// Removes `conn` from `channel`; false if it was not a member.
    pub fn unsubscribe(&self, conn: u64, channel: &str) -> bool {
        let mut local = self.local.borrow_mut();
        let Some(ch) = local.get_mut(channel) else {
            return false;
        };
        let removed = ch.members.remove(&conn).is_some() || ch.pending.remove(&conn).is_some();
        if !removed {
            return false;
        }
        self.metrics.subscriptions.dec();
        if ch.count() == 0 {
            let Some((key, _)) = local.remove_entry(channel) else {
                return true;
            };
            self.metrics.channels.dec();
            let owner = self.owner(&key);
            if owner != self.shard {
                self.peers.send(
                    owner,
                    MeshMsg::Leave {
                        channel: key,
                        from: self.shard,
                    },
                );
            }
        }
        true
    }

    /// The owner's answer to a `since`: Some(messages after it), or None if not all are kept.
    fn history_after(&self, channel: &str, since: u64) -> Option<Vec<Arc<Msg>>> {
        let mut owned = self.owned.borrow_mut();
        match owned.get_mut(channel) {
            Some(o) => {
                o.expire(self.history_ttl, Instant::now());
                o.after(since)
            }
            // Nothing kept: recoverable only if nothing at all was sequenced since.
            None => (since >= self.seq.get()).then(Vec::new),
        }
    }

    /// The owner's history arrived for a pending `since` member: reply, replay, go live.
    fn recovered(&self, channel: &str, conn: u64, found: Option<Vec<Arc<Msg>>>) {
        let mut local = self.local.borrow_mut();
        let Some(ch) = local.get_mut(channel) else {
            return;
        };
        // Gone meanwhile (unsubscribed or disconnected): nothing to do.
        let Some(p) = ch.pending.remove(&conn) else {
            return;
        };
        send_recovery(&p.member, &p.id, found);
        ch.members.insert(conn, p.member);
    }

    // ---- mesh ----

    pub fn on_mesh(&self, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish { publish, ack } => {
                let msg = self.sequence(*publish);
                if let Some(a) = ack {
                    self.ack(a, Ok(msg.pos.clone()));
                }
            }
            MeshMsg::Deliver(msg) => self.deliver_local(&msg),
            MeshMsg::Join { channel, from } => {
                let seq = self.seq.get();
                let mut owned = self.owned.borrow_mut();
                owned
                    .entry(channel)
                    .or_insert_with(|| Owned::new(seq))
                    .interest |= 1 << from;
            }
            MeshMsg::Leave { channel, from } => {
                if let Some(o) = self.owned.borrow_mut().get_mut(&channel) {
                    o.interest &= !(1 << from);
                }
            }
            MeshMsg::Recover {
                channel,
                since,
                from,
                conn,
            } => {
                let found = self.history_after(&channel, since);
                let recovered = found.is_some();
                let msgs = found.unwrap_or_default();
                self.peers.send(
                    from,
                    MeshMsg::Recovered {
                        channel,
                        conn,
                        recovered,
                        msgs,
                    },
                );
            }
            MeshMsg::Recovered {
                channel,
                conn,
                recovered,
                msgs,
            } => self.recovered(&channel, conn, recovered.then_some(msgs)),
            MeshMsg::Acked { conn, id, result } => self.send_ack(conn, &id, &result),
            MeshMsg::UserAcquire { user, from, ticket } => {
                let ok = self.user_acquire_here(user);
                self.peers.send(from, MeshMsg::UserAcquired { ticket, ok });
            }
            MeshMsg::UserAcquired { ticket, ok } => {
                if let Some(tx) = self.user_waiters.borrow_mut().remove(&ticket) {
                    let _ = tx.send(ok);
                }
            }
            MeshMsg::UserRelease { user } => self.user_release_here(&user),
        }
    }

    // ---- per-user connection limit, kept by the user's owner shard ----

    /// Takes a connection slot for `user`; false when the user is at its limit.
    pub async fn acquire_user(&self, user: Arc<str>) -> bool {
        let owner = self.owner(&user);
        if owner == self.shard {
            return self.user_acquire_here(user);
        }
        let ticket = self.next_ticket.get() + 1;
        self.next_ticket.set(ticket);
        let (tx, rx) = oneshot::channel();
        self.user_waiters.borrow_mut().insert(ticket, tx);
        let from = self.shard;
        if !self
            .peers
            .send(owner, MeshMsg::UserAcquire { user, from, ticket })
        {
            self.user_waiters.borrow_mut().remove(&ticket);
            return false;
        }
        let _cleanup = WaiterGuard(self, ticket);
        rx.await.unwrap_or(false)
    }

    pub fn release_user(&self, user: Arc<str>) {
        let owner = self.owner(&user);
        if owner == self.shard {
            self.user_release_here(&user);
        } else {
            self.peers.send(owner, MeshMsg::UserRelease { user });
        }
    }

    fn user_acquire_here(&self, user: Arc<str>) -> bool {
        let mut users = self.users.borrow_mut();
        let n = users.entry(user).or_insert(0);
        if *n >= self.user_limit {
            return false;
        }
        *n += 1;
        true
    }

    fn user_release_here(&self, user: &str) {
        let mut users = self.users.borrow_mut();
        if let Some(n) = users.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(user);
            }
        }
    }

    // ---- housekeeping ----

    /// Drops expired history and the state of channels nobody needs any more.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.owned.borrow_mut().retain(|_, o| {
            o.expire(self.history_ttl, now);
            !o.is_idle()
        });
    }

    pub fn stats(&self) -> Value {
        let local = self.local.borrow();
        let owned = self.owned.borrow();
        let conns = self.conns.borrow();
        let (queued_bytes, queued_frames) = conns.values().fold((0, 0), |(b, f), c| {
            let q = c.queue();
            (b + q.bytes(), f + q.len())
        });
        json!({
            "shard": self.shard,
            "connections": conns.len(),
            "channels": local.len(),
            "subscriptions": local.values().map(LocalChannel::count).sum::<usize>(),
            "owned_channels": owned.len(),
            "history_messages": owned.values().map(Owned::len).sum::<usize>(),
            "sequence": self.seq.get(),
            "queued_bytes": queued_bytes,
            "queued_frames": queued_frames,
            "users_tracked": self.users.borrow().len(),
        })
    }
}

struct WaiterGuard<'a>(&'a Router, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.user_waiters.borrow_mut().remove(&self.1);
    }
}

fn send_text(conn: &ConnHandle, text: &str) {
    conn.send(&Rc::new(Frame::text(text)));
}

/// The reply to a `since` subscription, then the replayed messages its filter lets through.
fn send_recovery(member: &Member, id: &Value, found: Option<Vec<Arc<Msg>>>) {
    let recovered = found.is_some();
    send_text(
        &member.conn,
        &protocol::reply_ok(id, Some(("recovered", recovered.into()))),
    );
    for msg in found.unwrap_or_default() {
        if member
            .filter
            .as_ref()
            .is_some_and(|f| !f.matches(&msg.data))
        {
            continue;
        }
        member
            .conn
            .send(&Rc::new(Frame::message(&msg.text, msg.priority, None)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_sort() {
        let a = format_pos(0x19a, 9);
        let b = format_pos(0x19a, 10);
        assert!(a < b);
        assert_eq!(parse_pos(&b), Some((0x19a, 10)));
        assert_eq!(parse_pos("nope"), None);
        assert_eq!(parse_pos("zz-1"), None);
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_of("room_1", 4), owner_of("room_1", 4));
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| owner_of(&format!("room_{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
