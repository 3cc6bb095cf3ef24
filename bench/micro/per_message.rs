//! Microbenchmarks of the per-message path: serializing and framing a message, decoding a Kafka
//! record (with simd-json next to serde_json), one fan-out delivery per connection, preparing a
//! vectored write, and JWT verification.
//!
//! Run: `cargo bench --bench per_message -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gateway::auth::{allows, mint_hs256, Claims, Verifier};
use gateway::config::AuthConfig;
use gateway::conn::ConnHandle;
use gateway::kafka::decode::decode;
use gateway::message::{Frame, Msg, Publish};
use gateway::metrics::Metrics;
use gateway::outq::{OutQueue, MAX_IOV};
use rskafka::record::Record;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::IoSlice;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default `limits.queue_bytes`.
const QUEUE_BYTES: usize = 256 * 1024;
/// Connections in one fan-out batch.
const FANOUT: usize = 1000;
/// The channel-length bound passed to `decode`.
const MAX_CHANNEL_LEN: usize = 200;

/// A JSON object whose serialization is about `target` bytes: a few scalar fields, then an array
/// of small objects (a realistic shape for push payloads, rather than one long string).
fn payload(target: usize) -> Value {
    let mut v = json!({"kind": "update", "user": "u-1842", "items": []});
    let mut i = 0u64;
    while v.to_string().len() + 48 <= target {
        v["items"].as_array_mut().unwrap().push(json!({
            "id": i, "name": format!("item-{i}"), "v": i as f64 * 1.5, "ok": i.is_multiple_of(2)
        }));
        i += 1;
    }
    // Pad the rest with a string so the size lands close to the target.
    let left = target.saturating_sub(v.to_string().len() + 10);
    v["note"] = Value::String("x".repeat(left));
    v
}

fn publish(data: Value) -> Publish {
    Publish {
        channel: "room_1842".into(),
        event: Some("chat".into()),
        id: None,
        priority: 3,
        data,
        from: Some("user-7".into()),
        born: Instant::now(),
        origin_ms: Some(1_700_000_000_000),
    }
}

fn msg(data: Value) -> Arc<Msg> {
    let p = publish(data);
    let channel: Arc<str> = Arc::from(p.channel.as_str());
    Arc::new(Msg::new(p, channel, 0, 123_456, "0-123456".into()))
}

fn size_label(n: usize) -> String {
    if n >= 1024 {
        format!("{}KiB", n / 1024)
    } else {
        format!("{n}B")
    }
}

/// 1. `Msg::new` (serialized once per message) and `Frame::message` / `Frame::text` (framed once
///    per shard), for payloads of ~100 B, 1 KiB and 16 KiB.
fn frame_encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for target in [100usize, 1024, 16 * 1024] {
        let data = payload(target);
        let m = msg(data.clone());
        let label = size_label(target);
        eprintln!(
            "frame_encode/{label}: data {} B, message text {} B, frame {} B",
            data.to_string().len(),
            m.text.len(),
            Frame::message(&m).len()
        );
        g.throughput(Throughput::Bytes(m.text.len() as u64));
        g.bench_with_input(BenchmarkId::new("Frame::message", &label), &m, |b, m| {
            b.iter(|| Frame::message(black_box(m)))
        });
        g.bench_with_input(BenchmarkId::new("Frame::text", &label), &m, |b, m| {
            b.iter(|| Frame::text(black_box(&m.text)))
        });
        // The `Publish` is consumed, so each call gets a fresh clone made outside the timing.
        let p = publish(data);
        let channel: Arc<str> = Arc::from(p.channel.as_str());
        g.bench_with_input(BenchmarkId::new("Msg::new", &label), &p, |b, p| {
            b.iter_batched(
                || (p.clone(), channel.clone(), String::from("0-123456")),
                |(p, ch, pos)| Msg::new(p, ch, 0, 123_456, pos),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn record(key: Option<&str>, value: &[u8], headers: &[(&str, &[u8])]) -> Record {
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
    }
}

/// A ~150 B chat-like document.
fn small_doc() -> Value {
    json!({
        "user": "u-1842",
        "text": "hello there, are we still on for the review at three?",
        "ts": 1_700_000_000_123u64,
        "tags": ["chat", "team"],
        "meta": {"lang": "en", "edited": false, "reply_to": 991}
    })
}

/// A ~4 KiB nested document: an order with line items, each with attributes and tags.
fn large_doc() -> Value {
    let mut items = Vec::new();
    let mut doc = json!({});
    for i in 0u64.. {
        let color = ["red", "green", "blue"][i as usize % 3];
        items.push(json!({
            "sku": format!("SKU-{:06}", 1000 + i),
            "qty": i % 5 + 1,
            "price": 9.99 + i as f64,
            "attrs": {"color": color, "size": "M",
                      "dims": {"w": 10 + i, "h": 20, "d": 3.5}},
            "tags": ["sale", "new", format!("batch-{}", i % 7)]
        }));
        doc = json!({
            "order": {"id": "ord-77812", "customer": {"id": 5512, "name": "Ada Lovelace",
                      "address": {"city": "London", "zip": "N1 9GU", "geo": [51.53, -0.10]}}},
            "status": "shipped",
            "items": items,
            "totals": {"net": 1234.5, "tax": 246.9, "currency": "EUR"},
            "flags": {"gift": false, "express": true, "notes": null}
        });
        if doc.to_string().len() >= 4096 {
            break;
        }
    }
    doc
}

/// 2. Kafka record decoding (keyed with a JSON value; keyless envelope), and the JSON parse alone
///    with simd-json (on a copy, as `decode` does) next to serde_json, in one group.
fn kafka_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka_parse");
    for (label, doc) in [("small", small_doc()), ("large", large_doc())] {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let label = format!("{label}_{}", size_label(bytes.len()));
        eprintln!("kafka_parse/{label}: JSON value {} B", bytes.len());
        g.throughput(Throughput::Bytes(bytes.len() as u64));

        g.bench_with_input(BenchmarkId::new("simd_json", &label), &bytes, |b, bytes| {
            b.iter(|| {
                let mut buf = black_box(bytes).to_vec();
                simd_json::serde::from_slice::<Value>(&mut buf).unwrap()
            })
        });
        // simd-json's own owned tree, to tell its parse from building a `serde_json::Value`.
        g.bench_with_input(
            BenchmarkId::new("simd_json_owned_value", &label),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let mut buf = black_box(bytes).to_vec();
                    simd_json::to_owned_value(&mut buf).unwrap()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json", &label),
            &bytes,
            |b, bytes| b.iter(|| serde_json::from_slice::<Value>(black_box(bytes)).unwrap()),
        );

        let keyed = record(
            Some("room_1842"),
            &bytes,
            &[("event", b"chat"), ("id", b"m-991"), ("priority", b"2")],
        );
        assert!(decode(&keyed, MAX_CHANNEL_LEN).is_ok());
        g.bench_with_input(BenchmarkId::new("decode_keyed", &label), &keyed, |b, r| {
            b.iter(|| decode(black_box(r), MAX_CHANNEL_LEN).unwrap())
        });

        let env = serde_json::to_vec(&json!({
            "channel": "room_1842", "event": "chat", "id": "m-991", "priority": 2, "data": doc
        }))
        .unwrap();
        let envelope = record(None, &env, &[]);
        assert!(decode(&envelope, MAX_CHANNEL_LEN).is_ok());
        g.bench_with_input(
            BenchmarkId::new("decode_envelope", &label),
            &envelope,
            |b, r| b.iter(|| decode(black_box(r), MAX_CHANNEL_LEN).unwrap()),
        );
    }
    g.finish();
}

fn drain(handles: &[ConnHandle]) {
    for h in handles {
        let mut q = h.queue();
        let n = q.bytes();
        q.advance(n, |_| {});
    }
}

/// 3. What the router does per recipient: `ConnHandle::send(&Rc<Frame>)` (an `Rc` clone pushed on
///    the bounded `OutQueue`, the gauge updated, the waker checked). Queues are drained outside
///    the timing, so they never overflow.
fn fanout(c: &mut Criterion) {
    let metrics = Metrics::new(1).shards[0].clone();
    let handles: Vec<ConnHandle> = (0..FANOUT as u64)
        .map(|id| ConnHandle::new(id, QUEUE_BYTES, metrics.clone()))
        .collect();
    let frame = Rc::new(Frame::message(&msg(payload(1024))));

    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(FANOUT as u64));
    g.bench_function(BenchmarkId::new("send", FANOUT), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for h in &handles {
                    h.send(black_box(&frame));
                }
                total += start.elapsed();
                drain(&handles);
            }
            total
        })
    });
    // The same with the drain (`advance` after a full write, dropping the `Rc`) inside the timing.
    g.bench_function(BenchmarkId::new("send+drain", FANOUT), |b| {
        b.iter(|| {
            for h in &handles {
                h.send(black_box(&frame));
            }
            drain(&handles);
        })
    });
    g.finish();
    assert!(handles.iter().all(|h| h.close_requested().is_none()));
}

/// `OutQueue::slices` over 64 queued frames (the iovec for one `sendmsg`).
fn outq_slices(c: &mut Criterion) {
    let frame = Rc::new(Frame::message(&msg(payload(1024))));
    let mut q = OutQueue::new(usize::MAX);
    for _ in 0..MAX_IOV {
        q.push(frame.clone());
    }
    // A partly written front frame, as after a short write.
    q.advance(100, |_| {});
    let mut g = c.benchmark_group("outq");
    g.throughput(Throughput::Elements(MAX_IOV as u64));
    g.bench_function(BenchmarkId::new("slices", MAX_IOV), |b| {
        b.iter(|| {
            let q = black_box(&q);
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = q.slices(&mut iov);
            black_box(&iov);
            n
        })
    });
    g.finish();
}

/// 4. JWT verification (HS256) and the channel pattern check.
fn jwt(c: &mut Criterion) {
    const SECRET: &str = "bench-secret-0123456789abcdef";
    let verifier = Verifier::from_config(&AuthConfig {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: "user-7".into(),
        exp: now + 24 * 3600,
        nbf: None,
        channels: Some(vec![
            "lobby".into(),
            "news:*".into(),
            "team:alpha:*".into(),
            "room_*".into(),
        ]),
        publish: Some(vec!["room_*".into()]),
    };
    let token = mint_hs256(SECRET, &claims).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().sub, "user-7");
    let patterns = claims.channels.clone().unwrap();

    let mut g = c.benchmark_group("auth");
    g.bench_function("verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token)).unwrap())
    });
    // A hit on the last pattern and a miss both scan the whole list.
    g.bench_function("allows/hit_last", |b| {
        b.iter(|| allows(black_box(&patterns), black_box("room_1842")))
    });
    g.bench_function("allows/miss", |b| {
        b.iter(|| allows(black_box(&patterns), black_box("private_9")))
    });
    g.finish();
}

criterion_group!(
    benches,
    frame_encoding,
    kafka_decode,
    fanout,
    outq_slices,
    jwt
);
criterion_main!(benches);
