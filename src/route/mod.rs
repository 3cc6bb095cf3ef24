//! The shard router: where every message meets its recipients.
//!
//! Each channel has one owner shard (`topology::owner_of`). Whatever produces a message of the
//! channel (an HTTP publish through the bus, a client's `publish`, the shard consuming a Kafka
//! partition) hands it to the owner, which sequences it, keeps it in its history, delivers it to
//! its own members and forwards one `Arc` of it to each shard that has members; each of those
//! frames it once and queues that frame on its members.
//!
//! The owner alone knows which shards have members: a shard announces its first member of a
//! channel to the owner (`Join`, acknowledged) and its last one's departure (`Leave`). `broadcast`
//! needs no announcement (it goes to every shard), and a user's personal channel none beyond the
//! connection slot the user's owner grants in the handshake. So a connect, a subscribe and a
//! publish each cost a constant number of mesh messages whatever the number of shards.
//!
//! The parts: `members` (this shard's connections per channel), `interest` (the owner's shard sets
//! and slot counts), `history` (the owner's rings) do no I/O and are unit-tested alone. The router's
//! sides use them: `member` (subscribe, deliver), `replay` (a recovery page by page), `owner`
//! (sequence, fan out, answer pages), `kafka` (records in, produce, read-back), `slots`. This module
//! owns the mesh and Kafka handles and dispatches what other shards say.

mod history;
mod interest;
mod kafka;
mod member;
mod members;
mod owner;
mod presence;
mod presence_ops;
mod replay;
mod slots;

pub use history::{Bounds, History, Lookup};
pub use interest::{Interest, Slots};
pub use members::{Cursor, Joined, Member, Members, State};
pub use presence::{Events, PresenceTable, Snapshot};
pub use presence_ops::PresenceSettings;

use crate::conn::ConnHandle;
use crate::kafka::KafkaIo;
use crate::mesh::{Control, Corr, MeshMsg, Peers};
use crate::metrics::ShardMetrics;
use crate::protocol::Filter;
use crate::topology::{owner_of, SincePos, Stream};
use futures_channel::oneshot;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What a router needs to know of its shard and the configuration.
pub struct RouterConfig {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    pub history: Bounds,
    pub user_limit: usize,
    pub ip_limit: usize,
    /// The send-queue bound of a connection: recovery pages fill at most half of it.
    pub queue_bytes: usize,
    /// Kafka records scanned at most for one `since`.
    pub recovery_max_records: usize,
    /// Time allowed for one recovery to finish.
    pub recovery_timeout: Duration,
    pub presence: PresenceSettings,
}

/// A subscribe as the session asks for it.
pub struct Subscribe<'a> {
    pub channel: &'a str,
    pub filter: Option<Filter>,
    pub since: Option<SincePos>,
    /// The request to answer (None: nothing to answer, as for the automatic channels at start).
    pub reply: Option<Value>,
    /// The connection's own `user:<sub>` or `broadcast`.
    pub automatic: bool,
    /// The connection's user, when the channel has presence.
    pub presence: Option<&'a str>,
    /// Send `join` / `leave` frames of the channel to this member.
    pub join_leave: bool,
}

/// A connection's recoveries: at most one page request out at a time, the others in turn, so
/// one connection cannot hold a partition reader or the owner for long.
#[derive(Default)]
struct Sched {
    in_flight: bool,
    queue: VecDeque<Arc<str>>,
}

/// What the router waits for from its Kafka I/O thread.
enum KafkaWait {
    Produce {
        conn: u64,
        id: Value,
    },
    Page {
        corr: Corr,
        channel: Arc<str>,
        stream: Stream,
        after: u64,
    },
}

pub struct Router {
    pub shard: usize,
    pub shards: usize,
    pub epoch: u64,
    cfg: RouterConfig,
    peers: Rc<Peers>,
    members: RefCell<Members>,
    interest: RefCell<Interest>,
    slots: RefCell<Slots>,
    slot_waiters: RefCell<HashMap<u64, oneshot::Sender<bool>>>,
    history: RefCell<History>,
    /// The in-process bus's sequence of the channels this shard owns.
    seq: Cell<u64>,
    next_gen: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    sched: RefCell<HashMap<u64, Sched>>,
    metrics: ShardMetrics,
    kafka: Option<KafkaIo>,
    /// Per Kafka partition: the next offset whose records (of this shard's channels) have not
    /// reached this shard yet. Everything before it that this shard owns has arrived.
    positions: RefCell<HashMap<Stream, i64>>,
    waits: RefCell<HashMap<u64, KafkaWait>>,
    /// Presence of the channels this shard owns.
    presence: RefCell<PresenceTable>,
}

impl Router {
    pub fn new(
        cfg: RouterConfig,
        peers: Rc<Peers>,
        metrics: ShardMetrics,
        kafka: Option<KafkaIo>,
    ) -> Router {
        Router {
            shard: cfg.shard,
            shards: cfg.shards,
            epoch: cfg.epoch,
            peers,
            members: RefCell::default(),
            interest: RefCell::default(),
            slots: RefCell::new(Slots::new(cfg.user_limit, cfg.ip_limit)),
            slot_waiters: RefCell::default(),
            history: RefCell::new(History::new(cfg.history)),
            seq: Cell::new(0),
            next_gen: Cell::new(0),
            conns: RefCell::default(),
            sched: RefCell::default(),
            metrics,
            kafka,
            positions: RefCell::default(),
            waits: RefCell::default(),
            presence: RefCell::new(PresenceTable::new(
                cfg.presence.max_channels,
                cfg.presence.max_members,
                cfg.presence.sink.is_some(),
            )),
            cfg,
        }
    }

    pub fn owner(&self, name: &str) -> usize {
        owner_of(name, self.shards)
    }

    fn gen(&self) -> u64 {
        let g = self.next_gen.get() + 1;
        self.next_gen.set(g);
        g
    }

    pub fn register(&self, conn: Rc<ConnHandle>) {
        self.conns.borrow_mut().insert(conn.id, conn);
        self.metrics.connections.inc();
    }

    pub fn unregister(&self, conn: u64) {
        if self.conns.borrow_mut().remove(&conn).is_some() {
            self.metrics.connections.dec();
        }
        self.sched.borrow_mut().remove(&conn);
    }

    pub fn connections(&self) -> Vec<Rc<ConnHandle>> {
        self.conns.borrow().values().cloned().collect()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// What other shards say.
    pub fn on_mesh(&self, msg: MeshMsg) {
        let c = match msg {
            MeshMsg::Deliver(m) => return self.deliver_local(&m),
            MeshMsg::Control(c) => *c,
        };
        match c {
            Control::Publish { publish, ack } => {
                let msg = self.sequence(publish);
                if let Some(a) = ack {
                    self.ack(a, Ok(msg.pos.to_string()));
                }
            }
            Control::Records {
                stream,
                topic,
                partition,
                msgs,
                next,
            } => self.take_records(stream, &topic, partition, msgs, next),
            Control::Position { stream, next } => self.advance_position(stream, next),
            Control::Join { channel, from, gen } => {
                self.interest.borrow_mut().join(channel.clone(), from);
                self.peers.control(from, Control::JoinAck { channel, gen });
            }
            Control::JoinAck { channel, gen } => self.join_acked(&channel, gen),
            Control::Leave { channel, from } => self.interest.borrow_mut().leave(&channel, from),
            Control::Recover {
                corr,
                channel,
                stream,
                after,
                max_bytes,
                max_scan,
            } => {
                if let Some(page) =
                    self.answer_recover(corr, &channel, stream, after, max_bytes, max_scan)
                {
                    self.peers.control(
                        corr.shard,
                        Control::Page {
                            corr,
                            channel,
                            page,
                        },
                    );
                }
            }
            Control::Page {
                corr,
                channel,
                page,
            } => self.on_page(corr, &channel, page),
            Control::Lost { channel, from } => self.lost_here(&channel, from),
            Control::Acked { conn, id, result } => self.send_ack(conn, &id, &result),
            Control::SlotAcquire {
                kind,
                key,
                from,
                ticket,
            } => {
                let ok = self.slots.borrow_mut().acquire(kind, key.clone(), from);
                let answer = Control::SlotGranted {
                    kind,
                    key,
                    ticket,
                    ok,
                };
                self.peers.control(from, answer);
            }
            Control::SlotGranted {
                kind,
                key,
                ticket,
                ok,
            } => self.slot_granted(kind, key, ticket, ok),
            Control::SlotRelease { kind, key, from } => {
                self.slots.borrow_mut().release(kind, key, from)
            }
            Control::PresenceDelta {
                channel,
                user,
                delta,
            } => self.presence.borrow_mut().local(&channel, &user, delta),
            Control::PresenceAsk {
                channel,
                from,
                conn,
                id,
                list,
            } => {
                let text = self.presence_answer(&channel, &id, list);
                self.peers.control(from, Control::Reply { conn, text });
            }
            Control::Reply { conn, text } => self.reply(conn, &text),
            Control::PresenceEvents { channel, frames } => self.deliver_presence(&channel, &frames),
        }
    }

    /// Drops expired history.
    pub fn sweep(&self) {
        let mut h = self.history.borrow_mut();
        h.expire(std::time::Instant::now());
        self.metrics.history_bytes.set(h.bytes() as i64);
    }

    pub fn stats(&self) -> Value {
        let members = self.members.borrow();
        let history = self.history.borrow();
        let conns = self.conns.borrow();
        let (queued_bytes, queued_frames) = conns.values().fold((0, 0), |(b, f), c| {
            let q = c.queue();
            (b + q.bytes(), f + q.len())
        });
        json!({
            "shard": self.shard,
            "connections": conns.len(),
            "channels": members.channels(),
            "subscriptions": members.subscriptions(),
            "owned_channels_with_members_elsewhere": self.interest.borrow().channels(),
            "history_channels": history.rings(),
            "history_messages": history.messages(),
            "history_bytes": history.bytes(),
            "sequence": self.seq.get(),
            "queued_bytes": queued_bytes,
            "queued_frames": queued_frames,
            "peer_queue": self.peers.queued(),
            "recoveries": self.sched.borrow().len(),
            "users_tracked": self.slots.borrow().tracked(),
            "presence_channels": self.presence.borrow().channels(),
            "presence_refused": self.presence.borrow().refused,
        })
    }
}
