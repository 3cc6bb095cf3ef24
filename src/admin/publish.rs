//! `POST /api/publish` (one message, a JSON array, or NDJSON) and `POST /api/broadcast` (one message
//! to many channels). In-process, a batch goes to each owner shard in one control message; with
//! Kafka, to each upstream partition in one produce request. Answers come after sequencing (or the
//! broker's acknowledgement), element by element in the request's order.

use super::parse::{self, Body, Element, Refused, Target};
use super::{bearer, error, json_response, same_key, Resp};
use crate::message::Publish;
use crate::node::Node;
use crate::protocol::{ErrorCode, Refusal};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Largest body of either endpoint; a bigger one is refused whole (413) and nothing is published.
pub const MAX_BODY: usize = 1 << 20;
/// Time allowed for a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const NDJSON: &str = "application/x-ndjson";

/// `POST /api/publish`.
pub async fn publish(node: &Node, req: Request<Incoming>) -> Resp {
    let ndjson = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(NDJSON));
    let body = match read_body(node, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let max_len = node.config.limits.max_channel_len;
    match parse::parse_body(&body, ndjson, max_len) {
        Err(r) => refused(&r),
        Ok(Body::One(p)) => publish_one(node, p).await,
        Ok(Body::Many(elements)) => {
            let channels: Vec<Value> = elements
                .iter()
                .map(|e| e.as_ref().map_or(Value::Null, |p| json!(p.channel)))
                .collect();
            let answers = publish_elements(node, elements).await;
            many_response(channels.into_iter().zip(answers), ndjson)
        }
    }
}

/// `POST /api/broadcast`: `{"channels":[..],"event":..,"data":..}`, answered per channel as a JSON
/// array in the order of `channels`.
pub async fn broadcast(node: &Node, req: Request<Incoming>) -> Resp {
    let body = match read_body(node, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse::parse_broadcast(&body, node.config.limits.max_channel_len) {
        Err(r) => refused(&r),
        Ok(targets) => {
            let (channels, elements): (Vec<Value>, Vec<Element>) =
                targets.into_iter().map(|t: Target| (t.0, t.1)).unzip();
            let answers = publish_elements(node, elements).await;
            many_response(channels.into_iter().zip(answers), false)
        }
    }
}

/// Checks the key and the drain, and reads the body within its bound and time.
async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Bytes, Resp> {
    if !same_key(bearer(&req).as_bytes(), node.api_key().as_bytes()) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden,
            "missing or wrong API key",
        ));
    }
    if node.is_draining() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "gateway is shutting down",
        ));
    }
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded,
            &format!("body larger than {MAX_BODY} bytes (split it)"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before a byte of it is read.
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadRequest,
            "body not received in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_big()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("body: {e}"),
        )),
    }
}

fn refused(r: &Refused) -> Resp {
    match r {
        Refused::Malformed(m) => error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m),
        Refused::TooMany(_) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded,
            &r.message(),
        ),
    }
}

/// The single-message form, answered as it always was.
async fn publish_one(node: &Node, p: Publish) -> Resp {
    let channel = p.channel.clone();
    let result = if node.kafka.is_some() {
        publish_kafka(node, vec![p])
            .await
            .pop()
            .unwrap_or_else(|| Err(Refusal::new(ErrorCode::Internal, "Kafka unavailable")))
    } else {
        node.bus.publish(p).await
    };
    match result {
        Ok(pos) => json_response(
            StatusCode::OK,
            &json!({"ok": true, "channel": channel, "pos": pos}),
        ),
        Err(r) => error(StatusCode::SERVICE_UNAVAILABLE, r.code, &r.message),
    }
}

/// Publishes the good elements (in one go) and answers every element, in order.
async fn publish_elements(node: &Node, elements: Vec<Element>) -> Vec<Result<String, Refusal>> {
    let mut answers: Vec<Option<Result<String, Refusal>>> = Vec::with_capacity(elements.len());
    let mut good = Vec::new();
    let mut good_at = Vec::new();
    for (i, e) in elements.into_iter().enumerate() {
        match e {
            Ok(p) => {
                good.push(p);
                good_at.push(i);
                answers.push(None);
            }
            Err(m) => answers.push(Some(Err(Refusal::new(ErrorCode::BadRequest, m)))),
        }
    }
    let results = if good.is_empty() {
        Vec::new()
    } else if node.kafka.is_some() {
        publish_kafka(node, good).await
    } else {
        node.bus.publish_many(good).await
    };
    for (i, r) in good_at.into_iter().zip(results) {
        answers[i] = Some(r);
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Refusal::new(ErrorCode::Internal, "not published"))))
        .collect()
}

/// One answer per element: `{"ok":true,"channel":..,"pos":..}` or `{"ok":false,"channel":..,
/// "error":{..}}`, as a JSON array, or as NDJSON (one line each) for an NDJSON request.
fn many_response(
    answers: impl Iterator<Item = (Value, Result<String, Refusal>)>,
    ndjson: bool,
) -> Resp {
    let items = answers.map(|(channel, r)| match r {
        Ok(pos) => json!({"ok": true, "channel": channel, "pos": pos}),
        Err(e) => json!({"ok": false, "channel": channel,
                         "error": {"code": e.code.as_str(), "message": e.message}}),
    });
    let (text, kind) = if ndjson {
        let mut out = String::new();
        for v in items {
            out.push_str(&v.to_string());
            out.push('\n');
        }
        (out, NDJSON)
    } else {
        (
            Value::Array(items.collect()).to_string(),
            "application/json",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

/// With Kafka, an HTTP publish goes to the upstream topic like a client's and reaches clients on
/// every node when consumed back; the answer comes after the broker's acknowledgement.
async fn publish_kafka(node: &Node, batch: Vec<Publish>) -> Vec<Result<String, Refusal>> {
    let unavailable = || Refusal::new(ErrorCode::Internal, "Kafka unavailable");
    let Some(producer) = node.admin_producer.get() else {
        return batch.iter().map(|_| Err(unavailable())).collect();
    };
    let mut records = batch.into_iter().map(record).collect::<Vec<_>>();
    let topic = &node.config.kafka.upstream_topic;
    let started = Instant::now();
    let results = match (records.len(), records.pop()) {
        (1, Some(r)) => vec![producer
            .produce(topic, r)
            .await
            .map_err(|e| format!("{e:#}"))],
        (_, last) => {
            records.extend(last);
            producer.produce_many(topic, records).await
        }
    };
    if let Some(k) = &node.kafka {
        k.produce_latency(started.elapsed());
    }
    let mut logged = false;
    results
        .into_iter()
        .map(|r| match r {
            Ok((partition, offset)) => Ok(crate::kafka::format_pos(topic, partition, offset)),
            Err(e) => {
                if !std::mem::replace(&mut logged, true) {
                    tracing::warn!(error = %e, "HTTP publish to Kafka failed");
                }
                Err(unavailable())
            }
        })
        .collect()
}

/// The upstream record of an HTTP publish: key = channel, value = data, headers for the rest.
fn record(p: Publish) -> rskafka::record::Record {
    let mut headers = std::collections::BTreeMap::new();
    for (k, v) in [("event", p.event), ("id", p.id)] {
        if let Some(v) = v {
            headers.insert(k.to_string(), v.into_bytes());
        }
    }
    if p.priority != 3 {
        headers.insert("priority".into(), p.priority.to_string().into_bytes());
    }
    rskafka::record::Record {
        key: Some(p.channel.into_bytes()),
        value: Some(p.data.to_string().into_bytes()),
        headers,
        timestamp: chrono::Utc::now(),
    }
}
