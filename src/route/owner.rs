//! The owner side of the router: publishing, sequencing, the history, fan-out to the shards with
//! members, recovery pages, and what the shard's Kafka I/O thread hands over.

use super::history::Lookup;
use super::{KafkaWait, Router};
use crate::conn::ConnHandle;
use crate::kafka::{self, Batch, Command, Decoded, FromKafka, ReadPage};
use crate::mesh::{ConnAck, Control, Corr, MeshMsg, PageResult};
use crate::message::{Frame, Msg, Publish};
use crate::protocol::{self, ErrorCode, Refusal};
use crate::topology::{self, SincePos, Stream, BROADCAST, UNRECOVERABLE};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

impl Router {
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
                self.ack(a, Ok(msg.pos.to_string()));
            }
            return;
        }
        let id = ack.as_ref().map(|a| (a.conn, a.id.clone()));
        let c = Control::Publish { publish: p, ack };
        if self
            .peers
            .data(owner, MeshMsg::Control(Box::new(c)))
            .is_err()
        {
            // The owner is behind: the client is told to retry rather than left waiting.
            if let Some((conn, id)) = id {
                let busy = Refusal::new(ErrorCode::Internal, "gateway busy, retry");
                self.reply(conn, &protocol::reply_err(&id, &busy));
            }
        }
    }

    /// Produces a client publish to the upstream topic: key = channel, headers `user` and `id`.
    fn produce(&self, p: Publish, ack: Option<ConnAck>) {
        let Some(kafka) = &self.kafka else { return };
        let token = self.gen();
        let (conn, id) = ack.map(|a| (a.conn, a.id)).unwrap_or((0, Value::Null));
        let mut headers = BTreeMap::new();
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
        if kafka
            .commands
            .try_send(Command::Produce {
                token,
                topic,
                record,
            })
            .is_err()
        {
            let busy = Refusal::new(ErrorCode::Internal, "Kafka producer busy, retry");
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
        let channel: Arc<str> = Arc::from(p.channel.as_str());
        let pos = topology::format_pos(self.epoch, seq);
        let msg = Arc::new(Msg::new(p, channel, 0, seq, pos));
        self.keep_and_fan_out(&msg);
        msg
    }

    fn keep_and_fan_out(&self, msg: &Arc<Msg>) {
        self.history
            .borrow_mut()
            .push(msg.clone(), msg.seq, Instant::now());
        self.metrics.messages_in.inc();
        self.fan_out(msg);
    }

    /// Delivers to this shard's members and forwards one handle to every shard with members.
    fn fan_out(&self, msg: &Arc<Msg>) {
        self.deliver_local(msg);
        let ch = &*msg.channel;
        let mut targets = if ch == BROADCAST {
            u64::MAX
        } else {
            let mut t = self.interest.borrow().shards(ch);
            if ch.starts_with("user:") {
                t |= self.slots.borrow().user_shards(ch);
            }
            t
        };
        targets &= !(1u64 << self.shard);
        let mut peer = 0;
        while targets != 0 && peer < self.shards {
            if targets & (1 << peer) != 0 {
                targets &= !(1 << peer);
                if self
                    .peers
                    .data(peer, MeshMsg::Deliver(msg.clone()))
                    .is_err()
                {
                    self.lost(peer, &msg.channel);
                }
            }
            peer += 1;
        }
    }

    /// A delivery to `peer` could not be queued: stop forwarding the channel there, and say so in
    /// its place so the members there are closed (1013) before anything later reaches them.
    fn lost(&self, peer: usize, channel: &Arc<str>) {
        self.interest.borrow_mut().leave(channel, peer);
        if !self.peers.last_is_lost(peer, channel) {
            let from = self.shard;
            let channel = channel.clone();
            self.peers.control(peer, Control::Lost { channel, from });
        }
    }

    /// The owner's side of a recovery page: from memory, else (with Kafka) read from the broker.
    /// None when the answer will come from Kafka (as a `Page` to the member's shard).
    pub(super) fn answer_recover(
        &self,
        corr: Corr,
        channel: &Arc<str>,
        stream: Stream,
        after: u64,
        max_bytes: usize,
        max_scan: usize,
    ) -> Option<PageResult> {
        if stream == UNRECOVERABLE {
            return Some(PageResult::Unreachable);
        }
        let nothing_missed = PageResult::Msgs {
            msgs: Vec::new(),
            next_after: after,
            done: true,
            scanned: 0,
        };
        let lookup = self
            .history
            .borrow()
            .page(stream, channel, after, max_bytes);
        let to = match lookup {
            Lookup::Page { msgs, done } => {
                let next_after = msgs.last().map_or(after, |m| m.seq.max(after));
                return Some(PageResult::Msgs {
                    msgs,
                    next_after,
                    done,
                    scanned: 0,
                });
            }
            Lookup::Gap { .. } | Lookup::Missing if stream == 0 => {
                // In-process: recoverable only if nothing was sequenced here since.
                let ok = matches!(lookup, Lookup::Missing) && after >= self.seq.get();
                return Some(if ok {
                    nothing_missed
                } else {
                    PageResult::Unreachable
                });
            }
            Lookup::Gap { covered_from } => covered_from,
            Lookup::Missing => {
                let Some(next) = self.positions.borrow().get(&stream).copied() else {
                    let e = "the partition is not being consumed yet".to_string();
                    return Some(PageResult::Failed(e));
                };
                // Everything of the channel from `next` on will arrive here and be kept.
                let next = u64::try_from(next).unwrap_or(0);
                self.history
                    .borrow_mut()
                    .ensure(stream, channel, next, Instant::now())
            }
        };
        if after.saturating_add(1) >= to {
            return Some(nothing_missed);
        }
        self.read_page(corr, channel, stream, after, to, max_bytes, max_scan)
    }

    /// Asks the Kafka I/O thread for the channel's records after `after`, before `to`.
    #[allow(clippy::too_many_arguments)]
    fn read_page(
        &self,
        corr: Corr,
        channel: &Arc<str>,
        stream: Stream,
        after: u64,
        to: u64,
        max_bytes: usize,
        max_scan: usize,
    ) -> Option<PageResult> {
        let Some(k) = &self.kafka else {
            return Some(PageResult::Unreachable);
        };
        let token = self.gen();
        let cmd = Command::Read {
            token,
            stream,
            channel: channel.clone(),
            from: i64::try_from(after + 1).unwrap_or(i64::MAX),
            to: i64::try_from(to).unwrap_or(i64::MAX),
            max_bytes,
            max_scan,
        };
        if k.commands.try_send(cmd).is_err() {
            return Some(PageResult::Failed("the Kafka reader is busy".into()));
        }
        let wait = KafkaWait::Page {
            corr,
            channel: channel.clone(),
            stream,
            after,
        };
        self.waits.borrow_mut().insert(token, wait);
        None
    }

    /// Sends a page to the member's shard (or replays it here).
    fn send_page(&self, corr: Corr, channel: Arc<str>, page: PageResult) {
        if corr.shard == self.shard {
            self.on_page(corr, &channel, page);
        } else {
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

    /// Records read back from Kafka, as a page of messages of `channel`.
    fn read_back(&self, channel: &Arc<str>, stream: Stream, after: u64, p: ReadPage) -> PageResult {
        if p.truncated {
            return PageResult::Unreachable;
        }
        let topic = self
            .kafka
            .as_ref()
            .and_then(|k| k.topics.get(kafka::stream_topic_index(stream)).cloned())
            .unwrap_or_default();
        let partition = kafka::stream_partition(stream);
        let msgs = p
            .records
            .into_iter()
            .map(|d| {
                let pos = kafka::format_pos(&topic, partition, d.offset);
                let seq = u64::try_from(d.offset).unwrap_or(0);
                Arc::new(Msg::new(d.publish, channel.clone(), stream, seq, pos))
            })
            .collect();
        let next_after = u64::try_from(p.next - 1).unwrap_or(0).max(after);
        PageResult::Msgs {
            msgs,
            next_after,
            done: false,
            scanned: p.scanned,
        }
    }

    /// What the shard's Kafka I/O thread hands over.
    pub fn on_kafka(&self, item: FromKafka) {
        match item {
            FromKafka::Records(batch) => self.consumed(batch),
            FromKafka::Produced { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Produce { conn, id }) = wait else {
                    return;
                };
                let result = result.map_err(|e| {
                    tracing::warn!(error = %e, "client publish to Kafka failed");
                    Refusal::new(ErrorCode::Internal, "publish failed: Kafka unavailable")
                });
                self.send_ack(conn, &id, &result);
            }
            FromKafka::Read { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Page {
                    corr,
                    channel,
                    stream,
                    after,
                }) = wait
                else {
                    return;
                };
                let page = match result {
                    Ok(p) => self.read_back(&channel, stream, after, p),
                    Err(e) => PageResult::Failed(e),
                };
                self.send_page(corr, channel, page);
            }
        }
    }

    /// A batch of a partition this shard consumes: each record goes to its channel's owner.
    fn consumed(&self, batch: Batch) {
        if batch.msgs.is_empty() {
            // A partition starts: every shard learns where, for the recoveries it answers.
            for peer in (0..self.shards).filter(|p| *p != self.shard) {
                let (stream, next) = (batch.stream, batch.next);
                self.peers.control(peer, Control::Position { stream, next });
            }
        }
        let mut mine = Vec::new();
        let mut theirs: HashMap<usize, Vec<Decoded>> = HashMap::new();
        for d in batch.msgs {
            match self.owner(&d.publish.channel) {
                o if o == self.shard => mine.push(d),
                o => theirs.entry(o).or_default().push(d),
            }
        }
        for (owner, msgs) in theirs {
            let c = Control::Records {
                stream: batch.stream,
                topic: batch.topic.clone(),
                partition: batch.partition,
                msgs,
                next: batch.next,
            };
            self.peers.records(owner, c);
        }
        self.take_records(
            batch.stream,
            &batch.topic,
            batch.partition,
            mine,
            batch.next,
        );
    }

    /// Records of channels this shard owns: sequenced by their offsets, kept, fanned out.
    pub(super) fn take_records(
        &self,
        stream: Stream,
        topic: &str,
        partition: i32,
        msgs: Vec<Decoded>,
        next: i64,
    ) {
        for d in msgs {
            let channel: Arc<str> = Arc::from(d.publish.channel.as_str());
            let pos = kafka::format_pos(topic, partition, d.offset);
            let seq = u64::try_from(d.offset).unwrap_or(0);
            let msg = Arc::new(Msg::new(d.publish, channel, stream, seq, pos));
            self.metrics.kafka_routed.inc();
            self.keep_and_fan_out(&msg);
        }
        self.advance_position(stream, next);
    }

    pub(super) fn advance_position(&self, stream: Stream, next: i64) {
        let mut p = self.positions.borrow_mut();
        let e = p.entry(stream).or_insert(next);
        *e = (*e).max(next);
    }

    /// Waits until every peer can take more deliveries: the Kafka consumer pauses here.
    pub async fn room_for_records(&self) {
        self.peers.room().await
    }

    /// Reads a client's `since`: the in-process form, or a Kafka record's position. A Kafka
    /// position must name the partition the channel maps to; one that cannot be answered here
    /// is marked `UNRECOVERABLE` (answered `recovered: false`).
    pub fn parse_since(&self, channel: &str, pos: &str) -> Option<SincePos> {
        let Some(k) = &self.kafka else {
            let (epoch, seq) = topology::parse_pos(pos)?;
            let stream = if epoch == self.epoch {
                0
            } else {
                UNRECOVERABLE
            };
            return Some(SincePos { stream, seq });
        };
        let (topic, partition, offset) = kafka::parse_pos(pos)?;
        let seq = u64::try_from(offset).ok()?;
        let stream = match k.topic_index(topic) {
            Some(ti) => match k.partitions(ti) {
                Some(n)
                    if kafka::client::partition_for(channel.as_bytes(), n as usize)
                        != partition =>
                {
                    UNRECOVERABLE
                }
                _ => kafka::stream_id(ti, partition),
            },
            None => UNRECOVERABLE,
        };
        Some(SincePos { stream, seq })
    }

    pub(super) fn ack(&self, a: ConnAck, result: Result<String, Refusal>) {
        if a.shard == self.shard {
            self.send_ack(a.conn, &a.id, &result);
        } else {
            let (conn, id) = (a.conn, a.id);
            self.peers
                .control(a.shard, Control::Acked { conn, id, result });
        }
    }

    pub(super) fn send_ack(&self, conn: u64, id: &Value, result: &Result<String, Refusal>) {
        let text = match result {
            Ok(pos) => protocol::reply_ok(id, Some(("pos", Value::String(pos.clone())))),
            Err(r) => protocol::reply_err(id, r),
        };
        self.reply(conn, &text);
    }

    fn reply(&self, conn: u64, text: &str) {
        let c: Option<Rc<ConnHandle>> = self.conns.borrow().get(&conn).cloned();
        if let Some(c) = c {
            c.send(&Rc::new(Frame::text(text)));
        }
    }
}
