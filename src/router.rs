//! The shard router: which connections of this shard are in which channel, which other shards have
//! members of which channel, and, for the channels this shard owns, their sequence and history.
//!
//! Each channel has one owner shard (a hash of its name) that sequences its messages, delivers them
//! to its own members and forwards one `Arc` of each over the mesh to the shards that have members;
//! each of those frames it once and queues that frame on its members.
//!
//! Membership is announced to every shard: a shard that gets its first member of a channel sends
//! `Join` to all peers, and its members go live (get their `ok`) once every peer has acknowledged, so
//! a message published after a client's `ok` always reaches it.

use crate::conn::ConnHandle;
use crate::history::Owned;
use crate::mesh::{ConnAck, MeshMsg, Peers};
use crate::message::{Frame, Msg, Publish};
use crate::metrics::ShardMetrics;
use crate::protocol::{self, Filter, Refusal};
use crate::users::Users;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BROADCAST: &str = "broadcast";
/// Shards are tracked in a 64-bit set per channel.
pub const MAX_SHARDS: usize = 64;
/// Live messages kept for a `since` member while the owner's history is on its way.
const WAITING_BUFFER: usize = 10_000;

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

/// What a member is told when it goes live.
pub enum Ack {
    /// Nothing (the session reports readiness its own way).
    Silent,
    /// A `reply` with this request id.
    Reply(Value),
    /// One of the connection's automatic channels: the welcome goes out when all are live.
    Automatic,
}

struct Member {
    conn: Rc<ConnHandle>,
    filter: Option<Rc<Filter>>,
}

/// A member waiting for the peers' join acknowledgements and, with `since`, for the history.
struct Waiting {
    member: Member,
    ack: Ack,
    since: Option<SinceState>,
}

struct SinceState {
    seq: u64,
    /// The owner's answer: Some(None) = not recoverable. None = not yet answered (remote owner).
    answer: Option<Option<Vec<Arc<Msg>>>>,
    /// Live messages that arrived while waiting. Those sequenced before the owner answered are in
    /// the answer; the rest (a higher `seq` than anything in it) are replayed after it.
    buffered: Vec<Arc<Msg>>,
    overflow: bool,
}

impl SinceState {
    fn new(seq: u64, answer: Option<Option<Vec<Arc<Msg>>>>) -> SinceState {
        SinceState {
            seq,
            answer,
            buffered: Vec::new(),
            overflow: false,
        }
    }
}

#[derive(Default)]
struct LocalChannel {
    members: HashMap<u64, Member>,
    waiting: HashMap<u64, Waiting>,
    gen: u64,
    acks_missing: usize,
}

impl LocalChannel {
    fn count(&self) -> usize {
        self.members.len() + self.waiting.len()
    }
}

pub struct RouterConfig {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub user_limit: usize,
}

pub struct Router {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    peers: Peers,
    local: RefCell<HashMap<Arc<str>, LocalChannel>>,
    /// Channel -> the other shards that have members of it.
    interest: RefCell<HashMap<Arc<str>, u64>>,
    owned: RefCell<HashMap<Arc<str>, Owned>>,
    seq: Cell<u64>,
    next_gen: Cell<u64>,
    history_size: usize,
    history_ttl: Duration,
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    pub users: Users,
    metrics: ShardMetrics,
}

impl Router {
    pub fn new(cfg: RouterConfig, peers: Peers, metrics: ShardMetrics) -> Router {
        Router {
            shard: cfg.shard,
            shards: cfg.shards,
            epoch: cfg.epoch,
            peers,
            local: RefCell::default(),
            interest: RefCell::default(),
            owned: RefCell::default(),
            seq: Cell::new(0),
            next_gen: Cell::new(0),
            history_size: cfg.history_size,
            history_ttl: cfg.history_ttl,
            conns: RefCell::default(),
            users: Users::new(cfg.shard, cfg.shards, cfg.user_limit),
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

    pub async fn acquire_user(&self, user: Arc<str>) -> bool {
        self.users.acquire(&self.peers, user).await
    }

    pub fn release_user(&self, user: Arc<str>) {
        self.users.release(&self.peers, user);
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
            return;
        }
        let id = ack.as_ref().map(|a| (a.conn, a.id.clone()));
        let publish = Box::new(p);
        if !self.peers.send(owner, MeshMsg::Publish { publish, ack }) {
            if let Some((conn, id)) = id {
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
        let channel = match owned.get_key_value(p.channel.as_str()) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(p.channel.as_str());
                owned.insert(k.clone(), Owned::new(seq - 1));
                k
            }
        };
        let msg = Arc::new(Msg::new(
            p,
            channel.clone(),
            seq,
            format_pos(self.epoch, seq),
        ));
        if let Some(state) = owned.get_mut(&channel) {
            state.push(msg.clone(), self.history_size);
        }
        drop(owned);
        self.metrics.messages_in.inc();
        self.fan_out(&msg);
        msg
    }

    /// Delivers to this shard's members and forwards to every shard with members.
    fn fan_out(&self, msg: &Arc<Msg>) {
        self.deliver_local(msg);
        let interest = self
            .interest
            .borrow()
            .get(&msg.channel)
            .copied()
            .unwrap_or(0);
        if interest == 0 {
            return;
        }
        for peer in 0..self.shards {
            if interest & (1 << peer) != 0 {
                self.peers.send(peer, MeshMsg::Deliver(msg.clone()));
            }
        }
    }

    /// Frames `msg` once and queues it on every live member its filter lets through.
    pub fn deliver_local(&self, msg: &Arc<Msg>) {
        let mut local = self.local.borrow_mut();
        let Some(ch) = local.get_mut(&*msg.channel) else {
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
        for w in ch.waiting.values_mut() {
            if let Some(s) = w.since.as_mut() {
                if s.buffered.len() < WAITING_BUFFER {
                    s.buffered.push(msg.clone());
                } else {
                    s.overflow = true;
                }
            }
        }
    }

    fn ack(&self, a: ConnAck, result: Result<String, Refusal>) {
        if a.shard == self.shard {
            self.send_ack(a.conn, &a.id, &result);
        } else {
            let (conn, id) = (a.conn, a.id);
            self.peers
                .send(a.shard, MeshMsg::Acked { conn, id, result });
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
            send_text(c, text);
        }
    }

    // ---- subscriptions ----

    /// Adds `conn` to `channel`. The member goes live, and `ack` is sent, once every shard forwards
    /// the channel to this one; with `since`, after the messages it missed.
    pub fn subscribe(
        &self,
        conn: &Rc<ConnHandle>,
        channel: &str,
        filter: Option<Filter>,
        since: Option<(u64, u64)>,
        ack: Ack,
    ) {
        let member = Member {
            conn: conn.clone(),
            filter: filter.map(Rc::new),
        };
        let since = match since {
            None => None,
            // A position from another epoch (before a restart) cannot be recovered here.
            Some((epoch, _)) if epoch != self.epoch => Some(SinceState::new(0, Some(None))),
            Some((_, seq)) => Some(SinceState::new(seq, None)),
        };
        let key = self.local_key(channel);
        let ask_owner =
            since.as_ref().is_some_and(|s| s.answer.is_none()) && self.owner(channel) != self.shard;
        let seq = since.as_ref().map(|s| s.seq).unwrap_or_default();
        self.insert(&key, Waiting { member, ack, since });
        if ask_owner {
            // After our Join (if any) on the same FIFO pair: the answer follows the owner's ack.
            let msg = MeshMsg::Recover {
                channel: key.clone(),
                since: seq,
                from: self.shard,
                conn: conn.id,
            };
            if !self.peers.send(self.owner(channel), msg) {
                self.recovered(&key, conn.id, None);
            }
        }
        self.activate_ready(&key);
    }

    fn local_key(&self, channel: &str) -> Arc<str> {
        match self.local.borrow().get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(channel),
        }
    }

    /// Adds a waiting member; the first member of a channel on this shard announces it to all.
    fn insert(&self, key: &Arc<str>, w: Waiting) {
        let mut local = self.local.borrow_mut();
        let ch = local.entry(key.clone()).or_default();
        let first = ch.count() == 0;
        let conn = w.member.conn.id;
        let replaced = ch.members.remove(&conn).is_some() | ch.waiting.insert(conn, w).is_some();
        if !replaced {
            self.metrics.subscriptions.inc();
        }
        if !first {
            return;
        }
        self.metrics.channels.inc();
        let gen = self.next_gen.get() + 1;
        self.next_gen.set(gen);
        ch.gen = gen;
        ch.acks_missing = 0;
        for peer in (0..self.shards).filter(|p| *p != self.shard) {
            let channel = key.clone();
            let from = self.shard;
            if self.peers.send(peer, MeshMsg::Join { channel, from, gen }) {
                ch.acks_missing += 1;
            }
        }
    }

    /// Moves every waiting member that has all it needs into live delivery.
    fn activate_ready(&self, key: &Arc<str>) {
        let ready: Vec<Waiting> = {
            let mut local = self.local.borrow_mut();
            let Some(ch) = local.get_mut(key) else {
                return;
            };
            if ch.acks_missing > 0 {
                return;
            }
            let ids: Vec<u64> = ch
                .waiting
                .iter()
                .filter(|(_, w)| self.is_ready(key, w))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| ch.waiting.remove(id)).collect()
        };
        for mut w in ready {
            if let Some(s) = w.since.as_mut() {
                if s.answer.is_none() {
                    // This shard owns the channel: its history is at hand.
                    s.answer = Some(self.history_after(key, s.seq));
                }
            }
            self.go_live(key, w);
        }
    }

    fn is_ready(&self, key: &str, w: &Waiting) -> bool {
        match &w.since {
            None => true,
            Some(s) => s.answer.is_some() || self.owner(key) == self.shard,
        }
    }

    fn go_live(&self, key: &Arc<str>, w: Waiting) {
        let conn = w.member.conn.clone();
        let mut recovered = None;
        if let Some(s) = w.since {
            let answer = if s.overflow { None } else { s.answer.flatten() };
            recovered = Some(answer.is_some());
            send_ack(&conn, &w.ack, recovered);
            if let Some(msgs) = answer {
                let mut last = s.seq;
                for msg in msgs {
                    last = last.max(msg.seq);
                    send_replay(&w.member, &msg);
                }
                for msg in s.buffered.iter().filter(|m| m.seq > last) {
                    send_replay(&w.member, msg);
                }
            }
        } else {
            send_ack(&conn, &w.ack, recovered);
        }
        let mut local = self.local.borrow_mut();
        if let Some(ch) = local.get_mut(key) {
            ch.members.insert(conn.id, w.member);
        }
    }

    /// Removes `conn` from `channel`; false if it was not a member.
    pub fn unsubscribe(&self, conn: u64, channel: &str) -> bool {
        let mut local = self.local.borrow_mut();
        let Some(ch) = local.get_mut(channel) else {
            return false;
        };
        let removed = ch.members.remove(&conn).is_some() || ch.waiting.remove(&conn).is_some();
        if !removed {
            return false;
        }
        self.metrics.subscriptions.dec();
        if ch.count() > 0 {
            return true;
        }
        let Some((key, _)) = local.remove_entry(channel) else {
            return true;
        };
        self.metrics.channels.dec();
        for peer in (0..self.shards).filter(|p| *p != self.shard) {
            let channel = key.clone();
            self.peers.send(
                peer,
                MeshMsg::Leave {
                    channel,
                    from: self.shard,
                },
            );
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

    /// The owner's answer to a pending `since` member arrived.
    fn recovered(&self, channel: &Arc<str>, conn: u64, msgs: Option<Vec<Arc<Msg>>>) {
        {
            let mut local = self.local.borrow_mut();
            let Some(ch) = local.get_mut(channel) else {
                return;
            };
            // Gone meanwhile (unsubscribed, disconnected, subscribed again): nothing to do.
            let Some(s) = ch.waiting.get_mut(&conn).and_then(|w| w.since.as_mut()) else {
                return;
            };
            if s.answer.is_some() {
                return;
            }
            s.answer = Some(msgs);
        }
        self.activate_ready(channel);
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
            MeshMsg::Join { channel, from, gen } => {
                *self
                    .interest
                    .borrow_mut()
                    .entry(channel.clone())
                    .or_insert(0) |= 1 << from;
                let me = self.shard;
                self.peers.send(
                    from,
                    MeshMsg::JoinAck {
                        channel,
                        from: me,
                        gen,
                    },
                );
            }
            MeshMsg::JoinAck { channel, gen, .. } => {
                let done = {
                    let mut local = self.local.borrow_mut();
                    match local.get_mut(&channel) {
                        // An ack for an earlier announcement of the channel is not this one's.
                        Some(ch) if ch.gen == gen && ch.acks_missing > 0 => {
                            ch.acks_missing -= 1;
                            ch.acks_missing == 0
                        }
                        _ => false,
                    }
                };
                if done {
                    self.activate_ready(&channel);
                }
            }
            MeshMsg::Leave { channel, from } => {
                let mut interest = self.interest.borrow_mut();
                if let Some(set) = interest.get_mut(&channel) {
                    *set &= !(1 << from);
                    if *set == 0 {
                        interest.remove(&channel);
                    }
                }
            }
            MeshMsg::Recover {
                channel,
                since,
                from,
                conn,
            } => {
                let msgs = self.history_after(&channel, since);
                let reply = MeshMsg::Recovered {
                    channel,
                    conn,
                    msgs,
                };
                self.peers.send(from, reply);
            }
            MeshMsg::Recovered {
                channel,
                conn,
                msgs,
            } => self.recovered(&channel, conn, msgs),
            MeshMsg::Acked { conn, id, result } => self.send_ack(conn, &id, &result),
            MeshMsg::UserAcquire { user, from, ticket } => {
                let ok = self.users.acquire_here(user.clone());
                self.peers
                    .send(from, MeshMsg::UserAcquired { user, ticket, ok });
            }
            MeshMsg::UserAcquired { user, ticket, ok } => {
                self.users.granted(&self.peers, user, ticket, ok)
            }
            MeshMsg::UserRelease { user } => self.users.release_here(&user),
        }
    }

    // ---- housekeeping ----

    /// Drops expired history and the state of channels nobody needs any more.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.owned.borrow_mut().retain(|_, o| {
            o.expire(self.history_ttl, now);
            !o.is_empty()
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
            "users_tracked": self.users.tracked(),
        })
    }
}

fn send_text(conn: &ConnHandle, text: &str) {
    conn.send(&Rc::new(Frame::text(text)));
}

fn send_ack(conn: &ConnHandle, ack: &Ack, recovered: Option<bool>) {
    match ack {
        Ack::Silent => {}
        Ack::Reply(id) => {
            let extra = recovered.map(|r| ("recovered", Value::Bool(r)));
            send_text(conn, &protocol::reply_ok(id, extra));
        }
        Ack::Automatic => conn.automatic_channel_live(),
    }
}

fn send_replay(member: &Member, msg: &Msg) {
    if member
        .filter
        .as_ref()
        .is_some_and(|f| !f.matches(&msg.data))
    {
        return;
    }
    let frame = Frame::message(&msg.text, msg.priority, None);
    member.conn.send(&Rc::new(frame));
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
