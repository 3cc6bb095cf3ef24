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
use crate::kafka::{self, Batch, Command, Decoded, FromKafka, KafkaIo, Stream};
use crate::mesh::{ConnAck, MeshMsg, Peers};
use crate::message::{Frame, Msg, Publish};
use crate::metrics::ShardMetrics;
use crate::protocol::{self, Filter, Refusal};
use crate::users::{SlotKind, Users};
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

/// Where a `since` points: a sequence (`stream`, 0 for the in-process bus, else a Kafka partition)
/// and a position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SincePos {
    pub stream: Stream,
    pub seq: u64,
}

/// A `since` this process cannot answer (a position from before a restart, or from a topic it
/// does not consume): answered `recovered: false`.
pub const UNRECOVERABLE: Stream = u64::MAX;

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
    /// This entry replaced one still waiting to go live as an automatic channel (a `since` on
    /// `user:<sub>` before the welcome): going live also counts for the welcome.
    automatic: bool,
}

struct SinceState {
    stream: Stream,
    seq: u64,
    /// The owner's answer: Some(None) = not recoverable. None = not yet answered (remote owner).
    answer: Option<Option<Vec<Arc<Msg>>>>,
    /// Live messages that arrived while waiting. Those sequenced before the owner answered are in
    /// the answer; the rest (a higher `seq` than anything in it) are replayed after it.
    buffered: Vec<Arc<Msg>>,
    overflow: bool,
}

impl SinceState {
    fn new(since: SincePos) -> SinceState {
        let answer = (since.stream == UNRECOVERABLE).then_some(None);
        SinceState {
            stream: since.stream,
            seq: since.seq,
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
    pub ip_limit: usize,
}

/// What the router waits for from its Kafka I/O thread.
enum KafkaWait {
    Produce {
        conn: u64,
        id: Value,
    },
    Read {
        channel: Arc<str>,
        stream: Stream,
        from: usize,
        conn: u64,
    },
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
    kafka: Option<KafkaIo>,
    /// Per consumed partition of this shard: the next offset to read.
    streams: RefCell<HashMap<Stream, i64>>,
    waits: RefCell<HashMap<u64, KafkaWait>>,
    next_token: Cell<u64>,
}

impl Router {
    pub fn new(
        cfg: RouterConfig,
        peers: Peers,
        metrics: ShardMetrics,
        kafka: Option<KafkaIo>,
    ) -> Router {
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
            users: Users::new(cfg.shard, cfg.shards, cfg.user_limit, cfg.ip_limit),
            metrics,
            kafka,
            streams: RefCell::default(),
            waits: RefCell::default(),
            next_token: Cell::new(0),
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

    /// Takes a connection slot per user or per address (kept by the key's owner shard).
    pub async fn acquire_slot(&self, kind: SlotKind, key: Arc<str>) -> bool {
        self.users.acquire(&self.peers, kind, key).await
    }

    pub fn release_slot(&self, kind: SlotKind, key: Arc<str>) {
        self.users.release(&self.peers, kind, key);
    }

    // ---- publishing ----

    /// A publish from a client of this shard; the reply goes back to it once sequenced (or, with
    /// Kafka, once the broker has acknowledged it).
    pub fn publish(&self, p: Publish, ack: Option<ConnAck>) {
        if self.kafka.is_some() {
            return self.produce(p, ack);
        }
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

    fn token(&self) -> u64 {
        let t = self.next_token.get() + 1;
        self.next_token.set(t);
        t
    }

    /// Produces a client publish to the upstream topic: key = channel, headers `user` and `id`.
    fn produce(&self, p: Publish, ack: Option<ConnAck>) {
        let Some(kafka) = &self.kafka else { return };
        let token = self.token();
        let (conn, id) = ack.map(|a| (a.conn, a.id)).unwrap_or((0, Value::Null));
        let mut headers = std::collections::BTreeMap::new();
        let msg_id =
            p.id.unwrap_or_else(|| format!("{:x}-{:x}-{token}", self.epoch, conn));
        headers.insert("id".to_string(), msg_id.into_bytes());
        if let Some(user) = p.from {
            headers.insert("user".to_string(), user.into_bytes());
        }
        if let Some(event) = p.event {
            headers.insert("event".to_string(), event.into_bytes());
        }
        if p.priority != 3 {
            headers.insert("priority".to_string(), p.priority.to_string().into_bytes());
        }
        let record = rskafka::record::Record {
            key: Some(p.channel.into_bytes()),
            value: Some(p.data.to_string().into_bytes()),
            headers,
            timestamp: chrono::Utc::now(),
        };
        let topic = kafka.upstream.clone();
        let cmd = Command::Produce {
            token,
            topic,
            record,
        };
        if kafka.commands.try_send(cmd).is_err() {
            let busy = Refusal::new(protocol::ErrorCode::Internal, "Kafka producer busy, retry");
            self.reply(conn, &protocol::reply_err(&id, &busy));
            return;
        }
        self.waits
            .borrow_mut()
            .insert(token, KafkaWait::Produce { conn, id });
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
                owned.insert(k.clone(), Owned::new(0, seq));
                k
            }
        };
        let pos = format_pos(self.epoch, seq);
        let msg = Arc::new(Msg::new(p, channel.clone(), 0, seq, pos));
        if let Some(state) = owned.get_mut(&channel) {
            state.push(msg.clone(), self.history_size);
        }
        drop(owned);
        self.metrics.messages_in.inc();
        self.fan_out(&msg);
        msg
    }

    /// Records of a partition this shard consumes: keep for `since`, deliver, forward.
    fn deliver_batch(&self, batch: Batch) {
        self.streams.borrow_mut().insert(batch.stream, batch.next);
        for d in batch.msgs {
            let msg = {
                let mut owned = self.owned.borrow_mut();
                let channel = match owned.get_key_value(d.publish.channel.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => {
                        // Older records of the channel, if any, are read back from Kafka.
                        let k: Arc<str> = Arc::from(d.publish.channel.as_str());
                        owned.insert(k.clone(), Owned::new(batch.stream, d.offset as u64));
                        k
                    }
                };
                let pos = kafka::format_pos(&batch.topic, batch.partition, d.offset);
                let seq = d.offset as u64;
                let msg = Arc::new(Msg::new(d.publish, channel.clone(), batch.stream, seq, pos));
                if let Some(state) = owned.get_mut(&channel) {
                    state.push(msg.clone(), self.history_size);
                }
                msg
            };
            self.metrics.kafka_routed.inc();
            self.metrics.messages_in.inc();
            self.fan_out(&msg);
        }
    }

    /// What the shard's Kafka I/O thread hands over.
    pub fn on_kafka(&self, item: FromKafka) {
        match item {
            FromKafka::Records(batch) => self.deliver_batch(batch),
            FromKafka::Produced { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Produce { conn, id }) = wait else {
                    return;
                };
                let result = result.map_err(|e| {
                    tracing::warn!(error = %e, "client publish to Kafka failed");
                    Refusal::new(
                        protocol::ErrorCode::Internal,
                        "publish failed: Kafka unavailable",
                    )
                });
                self.send_ack(conn, &id, &result);
            }
            FromKafka::Read { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Read {
                    channel,
                    stream,
                    from,
                    conn,
                }) = wait
                else {
                    return;
                };
                let msgs = match result {
                    Ok(records) => Some(self.read_back(&channel, stream, records)),
                    Err(e) => {
                        tracing::info!(channel = %channel, error = %e, "since: not recoverable from Kafka");
                        None
                    }
                };
                self.answer_recovery(&channel, from, conn, msgs);
            }
        }
    }

    /// Records read back from Kafka for `since`, as messages of `channel`.
    fn read_back(
        &self,
        channel: &Arc<str>,
        stream: Stream,
        records: Vec<Decoded>,
    ) -> Vec<Arc<Msg>> {
        let topic = self
            .kafka
            .as_ref()
            .and_then(|k| k.topics.get(kafka::stream_topic_index(stream)));
        let Some(topic) = topic else {
            return Vec::new();
        };
        let partition = kafka::stream_partition(stream);
        records
            .into_iter()
            .map(|d| {
                let pos = kafka::format_pos(topic, partition, d.offset);
                let seq = d.offset as u64;
                Arc::new(Msg::new(d.publish, channel.clone(), stream, seq, pos))
            })
            .collect()
    }

    /// Reads a client's `since`: the in-process form, or a Kafka record's position.
    pub fn parse_since(&self, pos: &str) -> Option<SincePos> {
        if let Some(k) = &self.kafka {
            let (topic, partition, offset) = kafka::parse_pos(pos)?;
            let stream = k
                .topic_index(topic)
                .map_or(UNRECOVERABLE, |ti| kafka::stream_id(ti, partition));
            return Some(SincePos {
                stream,
                seq: offset as u64,
            });
        }
        let (epoch, seq) = parse_pos(pos)?;
        let stream = if epoch == self.epoch {
            0
        } else {
            UNRECOVERABLE
        };
        Some(SincePos { stream, seq })
    }

    /// The shard that answers a `since`: the channel's owner, or the partition's consumer.
    fn since_owner(&self, channel: &str, since: SincePos) -> usize {
        if since.stream == 0 {
            self.owner(channel)
        } else {
            kafka::stream_partition(since.stream) as usize % self.shards
        }
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
            let f = frame.get_or_insert_with(|| Rc::new(Frame::message(msg)));
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
        since: Option<SincePos>,
        ack: Ack,
    ) {
        let member = Member {
            conn: conn.clone(),
            filter: filter.map(Rc::new),
        };
        let key = self.local_key(channel);
        let waiting = Waiting {
            member,
            ack,
            since: since.map(SinceState::new),
            automatic: false,
        };
        self.insert(&key, waiting);
        if let Some(sp) = since.filter(|s| s.stream != UNRECOVERABLE) {
            let owner = self.since_owner(channel, sp);
            if owner == self.shard {
                self.handle_recover(&key, sp, self.shard, conn.id);
            } else {
                // After our Join (if any) on the same FIFO pair: the answer follows the owner's ack.
                let msg = MeshMsg::Recover {
                    channel: key.clone(),
                    since: sp,
                    from: self.shard,
                    conn: conn.id,
                };
                if !self.peers.send(owner, msg) {
                    self.recovered(&key, conn.id, None);
                }
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
        let mut w = w;
        let was_member = ch.members.remove(&conn).is_some();
        let old = ch.waiting.remove(&conn);
        if let Some(old) = &old {
            w.automatic |= old.automatic || matches!(old.ack, Ack::Automatic);
        }
        ch.waiting.insert(conn, w);
        let replaced = was_member || old.is_some();
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
                .filter(|(_, w)| w.since.as_ref().is_none_or(|s| s.answer.is_some()))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| ch.waiting.remove(id)).collect()
        };
        for w in ready {
            self.go_live(key, w);
        }
    }

    fn go_live(&self, key: &Arc<str>, w: Waiting) {
        let conn = w.member.conn.clone();
        if w.automatic {
            conn.automatic_channel_live();
        }
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
                let missed = |m: &&Arc<Msg>| m.stream != s.stream || m.seq > last;
                for msg in s.buffered.iter().filter(missed) {
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

    /// The messages after `since` kept in memory, or None if memory does not reach back.
    fn history_after(&self, channel: &str, since: SincePos) -> Option<Vec<Arc<Msg>>> {
        let mut owned = self.owned.borrow_mut();
        match owned.get_mut(channel) {
            Some(o) if o.stream() == since.stream => {
                o.expire(self.history_ttl, Instant::now());
                o.after(since.seq)
            }
            Some(_) => None,
            // In-process, nothing kept: recoverable only if nothing was sequenced since.
            None if since.stream == 0 => (since.seq >= self.seq.get()).then(Vec::new),
            None => None,
        }
    }

    /// The owner's side of a `since`: from memory, else (with Kafka) read back from the broker.
    fn handle_recover(&self, channel: &Arc<str>, since: SincePos, from: usize, conn: u64) {
        if let Some(msgs) = self.history_after(channel, since) {
            return self.answer_recovery(channel, from, conn, Some(msgs));
        }
        let next = self.streams.borrow().get(&since.stream).copied();
        let (Some(k), Some(next)) = (&self.kafka, next) else {
            return self.answer_recovery(channel, from, conn, None);
        };
        let start = since.seq as i64 + 1;
        if start >= next {
            return self.answer_recovery(channel, from, conn, Some(Vec::new()));
        }
        let token = self.token();
        let cmd = Command::Read {
            token,
            stream: since.stream,
            channel: channel.clone(),
            from: start,
            to: next,
        };
        if k.commands.try_send(cmd).is_err() {
            return self.answer_recovery(channel, from, conn, None);
        }
        let wait = KafkaWait::Read {
            channel: channel.clone(),
            stream: since.stream,
            from,
            conn,
        };
        self.waits.borrow_mut().insert(token, wait);
    }

    fn answer_recovery(
        &self,
        channel: &Arc<str>,
        to: usize,
        conn: u64,
        msgs: Option<Vec<Arc<Msg>>>,
    ) {
        if to == self.shard {
            self.recovered(channel, conn, msgs);
        } else {
            let channel = channel.clone();
            self.peers.send(
                to,
                MeshMsg::Recovered {
                    channel,
                    conn,
                    msgs,
                },
            );
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
            } => self.handle_recover(&channel, since, from, conn),
            MeshMsg::Recovered {
                channel,
                conn,
                msgs,
            } => self.recovered(&channel, conn, msgs),
            MeshMsg::Acked { conn, id, result } => self.send_ack(conn, &id, &result),
            MeshMsg::UserAcquire {
                kind,
                user,
                from,
                ticket,
            } => {
                let ok = self.users.acquire_here(kind, user.clone());
                let answer = MeshMsg::UserAcquired {
                    kind,
                    user,
                    ticket,
                    ok,
                };
                self.peers.send(from, answer);
            }
            MeshMsg::UserAcquired {
                kind,
                user,
                ticket,
                ok,
            } => self.users.granted(&self.peers, kind, user, ticket, ok),
            MeshMsg::UserRelease { kind, user } => self.users.release_here(kind, user),
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
    let frame = Frame::replay(msg);
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
