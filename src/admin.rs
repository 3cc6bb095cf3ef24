//! The admin listener (its own thread, a small tokio runtime, hyper): `/health`, `/metrics`,
//! `/stats` and `POST /api/publish`. Nothing here runs on a shard.

use crate::message::Publish;
use crate::node::Node;
use crate::protocol::{check_channel, parse_priority, ErrorCode};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest `POST /api/publish` body.
const MAX_PUBLISH_BODY: usize = 1 << 20;
/// Time allowed for a request's headers, and for its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin listener and serves it on a thread of its own; returns the bound address.
pub fn spawn(node: Arc<Node>) -> Result<SocketAddr> {
    let addr = node.config.admin_listen;
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding admin listener {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the admin runtime")?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                if node.kafka.is_some() {
                    tokio::spawn(connect_producer(node.clone()));
                }
                if let Some(jwks) = node.verifier.jwks() {
                    let m = &node.metrics;
                    tokio::spawn(
                        jwks.clone()
                            .run(m.jwks_refreshes.clone(), m.jwks_keys.clone()),
                    );
                }
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let node = node.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(node.clone(), req));
                        // A client must send its headers in time; one that trickles them holds
                        // nothing for long.
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })
        .context("starting the admin thread")?;
    Ok(local)
}

/// Connects the admin's Kafka producer, retrying until the broker is there.
async fn connect_producer(node: Arc<Node>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match crate::kafka::client::connect(&node.config.kafka).await {
            Ok(c) => {
                let producer = crate::kafka::client::Producer::new(Arc::new(c));
                let _ = node.admin_producer.set(Arc::new(producer));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin: Kafka unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Resp {
    json_response(
        status,
        &json!({"ok": false, "error": {"code": code.as_str(), "message": message}}),
    )
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Result<Resp, std::convert::Infallible> {
    let path = req.uri().path();
    if matches!(path, "/stats" | "/metrics") && !stats_allowed(&node, &req) {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden,
            "missing or wrong stats key",
        ));
    }
    let resp = match (req.method(), path) {
        (&Method::GET, "/health") => health(&node),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(node.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/stats") => stats(&node).await,
        (&Method::POST, "/api/publish") => publish(&node, req).await,
        (&Method::POST, "/debug/stall") if node.config.test_hooks => {
            if same_key(bearer(&req).as_bytes(), node.api_key().as_bytes()) {
                stall(&node, &req)
            } else {
                error(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Forbidden,
                    "missing or wrong API key",
                )
            }
        }
        (_, "/health" | "/metrics" | "/stats" | "/api/publish") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest,
            "method not allowed",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such endpoint",
        ),
    };
    Ok(resp)
}

/// Test hook: `POST /debug/stall?shard=N&ms=M` blocks shard N's thread for M ms.
fn stall(node: &Node, req: &Request<Incoming>) -> Resp {
    let q = req.uri().query().unwrap_or("");
    let arg = |k: &str| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let (Some(shard), Some(ms)) = (arg("shard"), arg("ms")) else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "shard and ms are required",
        );
    };
    let d = Duration::from_millis(ms.min(60_000));
    if !node.bus.stall(shard as usize, d) {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "no such shard",
        );
    }
    json_response(StatusCode::OK, &json!({"ok": true}))
}

/// 503 until every shard listens and, with a reachable broker, every partition has its start
/// offset (`starting`: a `since` could not be answered before), and while draining: a node whose
/// Kafka is down still serves its clients, so it stays in the load balancer and says `degraded`.
fn health(node: &Node) -> Resp {
    if !node.is_ready() || node.kafka.as_ref().is_some_and(|k| k.starting()) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "starting"}),
        );
    }
    if node.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    let mut v = json!({"status": "ok"});
    if let Some(k) = &node.kafka {
        let up = k.all_up();
        v["kafka"] = json!(if up { "ok" } else { "unavailable" });
        if !up {
            v["status"] = json!("degraded");
        }
    }
    if let Some(j) = node.verifier.jwks() {
        // Stale keys still verify the tokens they know; a rotation would not be seen.
        let stale = j.stale();
        v["jwks"] = json!(if stale { "stale" } else { "ok" });
        if stale {
            v["status"] = json!("degraded");
        }
    }
    json_response(StatusCode::OK, &v)
}

async fn stats(node: &Node) -> Resp {
    let shards = node.bus.stats().await;
    json_response(
        StatusCode::OK,
        &json!({
            "uptime_secs": node.started.elapsed().as_secs(),
            "draining": node.is_draining(),
            "connections": node.connections(),
            "max_connections": node.max_connections,
            "bus": if node.kafka.is_some() { "kafka" } else { "in-process" },
            "kafka": node.kafka.as_ref().map(|k| k.to_json()),
            "jwks": node.verifier.jwks().map(|j| j.to_json()),
            "shards": shards,
        }),
    )
}

/// The bearer key of a request, if any.
fn bearer(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("")
        .trim()
}

/// `/stats` and `/metrics` are open unless `auth.stats_key` is set.
fn stats_allowed(node: &Node, req: &Request<Incoming>) -> bool {
    match &node.config.auth.stats_key {
        None => true,
        Some(key) => same_key(bearer(req).as_bytes(), key.as_bytes()),
    }
}

/// Compares without an early exit, so response timing does not reveal the key.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
}

async fn publish(node: &Node, req: Request<Incoming>) -> Resp {
    if !same_key(bearer(&req).as_bytes(), node.api_key().as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden,
            "missing or wrong API key",
        );
    }
    if node.is_draining() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "gateway is shutting down",
        );
    }
    let body = Limited::new(req.into_body(), MAX_PUBLISH_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "body not received in time",
            );
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("body: {e}"),
            );
        }
    };
    let p = match parse_publish(&body, node.config.limits.max_channel_len) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &m),
    };
    if node.kafka.is_some() {
        return publish_kafka(node, p).await;
    }
    let channel = p.channel.clone();
    match node.bus.publish(p).await {
        Ok(pos) => json_response(
            StatusCode::OK,
            &json!({"ok": true, "channel": channel, "pos": pos}),
        ),
        Err(r) => error(StatusCode::SERVICE_UNAVAILABLE, r.code, &r.message),
    }
}

/// With Kafka, an HTTP publish goes to the upstream topic like a client's and reaches clients on
/// every node when consumed back; the answer comes after the broker's acknowledgement.
async fn publish_kafka(node: &Node, p: Publish) -> Resp {
    let Some(producer) = node.admin_producer.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "Kafka unavailable",
        );
    };
    let mut headers = std::collections::BTreeMap::new();
    for (k, v) in [("event", p.event), ("id", p.id)] {
        if let Some(v) = v {
            headers.insert(k.to_string(), v.into_bytes());
        }
    }
    if p.priority != 3 {
        headers.insert("priority".into(), p.priority.to_string().into_bytes());
    }
    let record = rskafka::record::Record {
        key: Some(p.channel.clone().into_bytes()),
        value: Some(p.data.to_string().into_bytes()),
        headers,
        timestamp: chrono::Utc::now(),
    };
    let topic = &node.config.kafka.upstream_topic;
    let started = Instant::now();
    let result = producer.produce(topic, record).await;
    if let Some(k) = &node.kafka {
        k.produce_latency(started.elapsed());
    }
    match result {
        Ok((partition, offset)) => {
            let pos = crate::kafka::format_pos(topic, partition, offset);
            json_response(
                StatusCode::OK,
                &json!({"ok": true, "channel": p.channel, "pos": pos}),
            )
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "HTTP publish to Kafka failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                "Kafka unavailable",
            )
        }
    }
}

/// `{"channel":..,"event":..,"id":..,"priority":..,"data":..}`
pub fn parse_publish(body: &[u8], max_channel_len: usize) -> Result<Publish, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = v.as_object().ok_or("body must be a JSON object")?;
    let channel = obj
        .get("channel")
        .and_then(Value::as_str)
        .ok_or("channel (string) is required")?;
    check_channel(channel, max_channel_len)?;
    let opt_str = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{k} must be a string")),
        }
    };
    Ok(Publish {
        channel: channel.to_string(),
        event: opt_str("event")?,
        id: opt_str("id")?,
        priority: parse_priority(obj.get("priority"))?,
        data: obj.get("data").cloned().unwrap_or(Value::Null),
        from: None,
        born: Instant::now(),
        origin_ms: None,
    })
}
