//! Shared helpers for the integration tests: a harness that runs the real `gateway` binary on
//! ephemeral ports, token minting, a blocking WebSocket client with bounded waits, a raw HTTP/1.1
//! client for the admin listener and for hand-made upgrade requests, and a raw frame reader.
//!
//! Every test starts its own gateway (`--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`), so tests
//! run in parallel without sharing state. Set `GATEWAY_TEST_LOG=debug` (any log filter) to see the
//! gateway's logs on stderr.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const API_KEY: &str = "integration-test-api-key";

/// How long something that should happen may take.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait when asserting that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

/// A running `gateway serve`, killed (SIGKILL) on drop.
pub struct Gateway {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shards: usize,
    pub child: Child,
    _stdout: Option<BufReader<ChildStdout>>,
    exited: Option<ExitStatus>,
}

impl Gateway {
    /// One shard, the test secret and API key, plus `args`.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_sharded(1, args)
    }

    /// `shards` shards, the test secret and API key, plus `args`.
    pub fn start_sharded(shards: usize, args: &[&str]) -> Gateway {
        let shards_s = shards.to_string();
        let mut all = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shards",
            &shards_s,
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
        ];
        all.extend_from_slice(args);
        let (child, line, reader) = Gateway::launch(gateway_command(&all, &[]), &all);
        let (ws_addr, admin_addr, n) =
            parse_ready(line.trim()).unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        assert_eq!(n, shards, "ready line reports the shard count: {line:?}");
        Gateway {
            ws_addr,
            admin_addr,
            shards,
            child,
            _stdout: Some(reader),
            exited: None,
        }
    }

    /// Spawns `cmd` (logs to stderr when `GATEWAY_TEST_LOG` names a filter, else silenced) and
    /// waits for its ready line on a thread, so a gateway that never gets ready fails in bounded
    /// time. `args` is for the failure messages.
    fn launch(mut cmd: Command, args: &[&str]) -> (Child, String, BufReader<ChildStdout>) {
        match std::env::var("GATEWAY_TEST_LOG") {
            Ok(filter) => {
                cmd.env("GATEWAY_LOG", filter).stderr(Stdio::inherit());
            }
            Err(_) => {
                cmd.env("GATEWAY_LOG", "error").stderr(Stdio::null());
            }
        }
        let mut child = cmd.spawn().expect("spawning the gateway binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let r = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send((r, reader));
        });
        let (line, reader) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Ok(line), reader)) => (line, reader),
            Ok((Err(e), _)) => {
                let _ = child.kill();
                panic!("reading the gateway's ready line: {e}");
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the gateway did not print its ready line within 30 s (args {args:?})");
            }
        };
        if line.is_empty() {
            let status = child.wait().ok();
            panic!("the gateway exited before it was ready ({status:?}); args {args:?}");
        }
        (child, line, reader)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM to the gateway.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) with our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={}", self.ws_addr, token)
    }

    /// Connects a client with `token` and reads its welcome.
    pub fn connect(&self, token: &str) -> Client {
        Client::connect(self.ws_addr, token)
    }

    /// Connects clients for `sub` until one lands on `shard` (SO_REUSEPORT spreads them).
    pub fn connect_on_shard(&self, token: &str, shard: u64) -> Client {
        for _ in 0..60 {
            let c = self.connect(token);
            if c.shard() == shard {
                return c;
            }
            c.close();
        }
        panic!("no connection landed on shard {shard} in 60 attempts");
    }

    /// Connects clients (each with a token from `token_for(i)`) until at least `per_shard` landed on
    /// every shard; the extra ones are closed. Returns them sorted by shard.
    pub fn clients_on_every_shard(
        &self,
        per_shard: usize,
        mut token_for: impl FnMut(usize) -> String,
    ) -> Vec<Client> {
        let mut kept: Vec<Client> = Vec::new();
        for i in 0..40 * self.shards * per_shard {
            let c = self.connect(&token_for(i));
            let same = kept.iter().filter(|k| k.shard() == c.shard()).count();
            if same < per_shard {
                kept.push(c);
            } else {
                c.close();
            }
            if kept.len() == per_shard * self.shards {
                kept.sort_by_key(Client::shard);
                return kept;
            }
        }
        panic!(
            "could not get {per_shard} connections on each of {} shards (got shards {:?})",
            self.shards,
            kept.iter().map(Client::shard).collect::<Vec<_>>()
        );
    }

    /// `POST /api/publish` with the test API key; asserts 200 and returns the JSON answer.
    pub fn publish(&self, body: &Value) -> Value {
        let r = http_post(
            self.admin_addr,
            "/api/publish",
            Some(API_KEY),
            &body.to_string(),
        );
        assert_eq!(
            r.status, 200,
            "publish {body} answered {} {}",
            r.status, r.body
        );
        let v = r.json();
        assert_eq!(v["ok"], true, "publish answer {v}");
        v
    }

    /// Prepares `POST /api/publish` of `body` up to its last byte; see [`PrimedPublish`].
    pub fn prime_publish(&self, body: &Value) -> PrimedPublish {
        let body = body.to_string();
        let auth = format!("Bearer {API_KEY}");
        let mut bytes = http_request_bytes(
            self.admin_addr,
            "POST",
            "/api/publish",
            &[("Authorization", &auth)],
            Some(&body),
        );
        let last = bytes.pop().expect("a request with a body");
        let mut stream =
            TcpStream::connect(self.admin_addr).expect("connect to the admin listener");
        stream.set_nodelay(true).expect("set_nodelay");
        stream
            .write_all(&bytes)
            .expect("writing the publish request");
        PrimedPublish { stream, last, body }
    }

    pub fn metrics(&self) -> String {
        let r = http_get(self.admin_addr, "/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, usize)> {
    let rest = line.strip_prefix("gateway ready ")?;
    let (mut ws, mut admin, mut shards) = (None, None, None);
    for part in rest.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        match k {
            "ws" => ws = v.parse().ok(),
            "admin" => admin = v.parse().ok(),
            "shards" => shards = v.parse().ok(),
            _ => {}
        }
    }
    Some((ws?, admin?, shards?))
}

/// Sum of every sample of `name` (all label sets) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims valid for an hour.
pub fn claims(sub: &str, channels: &[&str], publish: &[&str]) -> Value {
    let mut c = json!({"sub": sub, "exp": now_secs() + 3600});
    if !channels.is_empty() {
        c["channels"] = json!(channels);
    }
    if !publish.is_empty() {
        c["publish"] = json!(publish);
    }
    c
}

pub fn sign_hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing HS256")
}

pub fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn sign_rs256(claims: &Value, private_key_file: &str) -> String {
    let pem = std::fs::read(key_path(private_key_file)).expect("reading RSA key fixture");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("RSA private key PEM"),
    )
    .expect("signing RS256")
}

pub fn sign_es256(claims: &Value, private_key_file: &str) -> String {
    let pem = std::fs::read(key_path(private_key_file)).expect("reading EC key fixture");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("EC private key PEM (PKCS8)"),
    )
    .expect("signing ES256")
}

/// Base64url without padding, as JWTs use it.
pub fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A channel name `<prefix><i>` whose owner is `shard`.
pub fn channel_owned_by(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| gateway::topology::owner_of(c, shards) == shard)
        .expect("some name hashes to every shard")
}

/// An HS256 token with the test secret, valid for an hour.
pub fn token(sub: &str, channels: &[&str], publish: &[&str]) -> String {
    sign_hs256(&claims(sub, channels, publish), SECRET)
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// What one bounded read produced.
#[derive(Debug)]
pub enum Recv {
    Json(Value),
    /// A close frame: its code (None when the frame had no code) and reason.
    Close(Option<(u16, String)>),
    Timeout,
    /// The connection ended without (further) close frame.
    Closed(String),
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub welcome: Value,
    /// WebSocket pings received so far (tungstenite answers them).
    pub pings: usize,
}

/// An upgrade refused before the WebSocket exists.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// Connects with `?token=` and reads the welcome; panics on refusal.
    pub fn connect(addr: SocketAddr, token: &str) -> Client {
        match Client::try_connect(addr, token) {
            Ok(c) => c,
            Err(r) => panic!("upgrade refused: {} {}", r.status, r.body),
        }
    }

    /// Connects with `?token=` (omitted when empty) and reads the welcome.
    pub fn try_connect(addr: SocketAddr, token: &str) -> Result<Client, Refused> {
        let stream = TcpStream::connect(addr).expect("TCP connect to the gateway");
        Client::try_connect_stream(stream, addr, token, false)
    }

    /// Connects with an `Authorization: Bearer` header.
    pub fn try_connect_bearer(addr: SocketAddr, token: &str) -> Result<Client, Refused> {
        let stream = TcpStream::connect(addr).expect("TCP connect to the gateway");
        Client::try_connect_stream(stream, addr, token, true)
    }

    /// Runs the client handshake over an already connected stream.
    pub fn try_connect_stream(
        stream: TcpStream,
        addr: SocketAddr,
        token: &str,
        bearer: bool,
    ) -> Result<Client, Refused> {
        match Client::try_connect_stream_checked(stream, addr, token, bearer)? {
            Ok(c) => Ok(c),
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Client::try_connect`], but a failure after the upgrade (no welcome) is reported
    /// instead of panicking: Err = refused before the upgrade, Ok(Err) = upgraded, then failed.
    pub fn try_connect_checked(
        addr: SocketAddr,
        token: &str,
    ) -> Result<Result<Client, String>, Refused> {
        let stream = TcpStream::connect(addr).expect("TCP connect to the gateway");
        Client::try_connect_stream_checked(stream, addr, token, false)
    }

    fn try_connect_stream_checked(
        stream: TcpStream,
        addr: SocketAddr,
        token: &str,
        bearer: bool,
    ) -> Result<Result<Client, String>, Refused> {
        use tungstenite::client::IntoClientRequest;
        stream
            .set_read_timeout(Some(WAIT))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(WAIT))
            .expect("set_write_timeout");
        stream.set_nodelay(true).expect("set_nodelay");
        let url = if token.is_empty() || bearer {
            format!("ws://{addr}/ws")
        } else {
            format!("ws://{addr}/ws?token={token}")
        };
        let mut req = url.into_client_request().expect("client request");
        if bearer {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header value"),
            );
        }
        // Large messages are fine on the client side.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        match tungstenite::client::client_with_config(req, stream, Some(config)) {
            Ok((ws, _resp)) => {
                let mut c = Client {
                    ws,
                    welcome: Value::Null,
                    pings: 0,
                };
                match c.recv(WAIT) {
                    Recv::Json(w) if w["type"] == "welcome" => {
                        c.welcome = w;
                        Ok(Ok(c))
                    }
                    other => Ok(Err(format!("no welcome after the upgrade: {other:?}"))),
                }
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(Refused {
                    status: resp.status().as_u16(),
                    body,
                })
            }
            Err(e) => Ok(Err(format!("WebSocket handshake failed: {e}"))),
        }
    }

    /// The shard that serves this connection, from the welcome.
    pub fn shard(&self) -> u64 {
        self.welcome["shard"].as_u64().expect("welcome.shard")
    }

    pub fn user(&self) -> String {
        self.welcome["user"]
            .as_str()
            .expect("welcome.user")
            .to_string()
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .expect("sending a text frame");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Reads the next text frame, a close, or nothing within `timeout`. Pings and pongs are skipped.
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            let _ = self.ws.get_ref().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("gateway sent invalid JSON {t:?}: {e}"));
                    return Recv::Json(v);
                }
                Ok(Message::Close(f)) => {
                    return Recv::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Ok(Message::Ping(_)) => self.pings += 1,
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Binary(b)) => panic!("gateway sent a binary frame ({} bytes)", b.len()),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Recv::Closed(e.to_string()),
            }
        }
    }

    /// The next text frame as JSON; panics on close or timeout.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.recv(timeout) {
            Recv::Json(v) => v,
            other => panic!("expected a JSON frame within {timeout:?}, got {other:?}"),
        }
    }

    /// Asserts that no text frame (and no close) arrives within `timeout`.
    pub fn expect_silence(&mut self, timeout: Duration) {
        match self.recv(timeout) {
            Recv::Timeout => {}
            other => panic!("expected nothing within {timeout:?}, got {other:?}"),
        }
    }

    /// Reads until a close frame, skipping text frames; returns its code. Panics on timeout or on a
    /// connection that ends without a close frame.
    pub fn expect_close_any(&mut self, timeout: Duration) -> (u16, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Json(v) => skipped.push(v),
                Recv::Close(Some((code, _))) => {
                    // Answer the close now, as a well-behaved client does (tungstenite only queued it).
                    let _ = self.ws.flush();
                    return (code, skipped);
                }
                Recv::Close(None) => panic!("close frame without a code"),
                Recv::Timeout => panic!(
                    "no close frame within {timeout:?} (skipped {} frames)",
                    skipped.len()
                ),
                Recv::Closed(e) => panic!(
                    "connection ended without a close frame: {e} (skipped {} frames)",
                    skipped.len()
                ),
            }
        }
    }

    /// Reads until a close frame (text frames before it are allowed) and checks its code.
    pub fn expect_close(&mut self, code: u16, timeout: Duration) -> Vec<Value> {
        let (got, skipped) = self.expect_close_any(timeout);
        assert_eq!(got, code, "close code");
        skipped
    }

    /// Sends a request and returns the next frame, which must be its reply (or pong).
    pub fn request(&mut self, req: &Value) -> Value {
        self.send_json(req);
        let r = self.recv_json(WAIT);
        assert_eq!(r["id"], req["id"], "reply to {req} carries its id: {r}");
        r
    }

    /// Subscribes and asserts an ok reply.
    pub fn subscribe(&mut self, channel: &str) -> Value {
        let id = format!("sub-{channel}");
        let r = self.request(&json!({"type": "subscribe", "id": id, "channel": channel}));
        assert_eq!(r["type"], "reply", "{r}");
        assert_eq!(r["ok"], true, "subscribe {channel}: {r}");
        r
    }

    pub fn unsubscribe(&mut self, channel: &str) -> Value {
        let id = format!("unsub-{channel}");
        let r = self.request(&json!({"type": "unsubscribe", "id": id, "channel": channel}));
        assert_eq!(r["ok"], true, "unsubscribe {channel}: {r}");
        r
    }

    /// The next frame, which must be a `message` of `channel`.
    pub fn recv_message(&mut self, channel: &str) -> Value {
        let m = self.recv_json(WAIT);
        assert_eq!(
            m["type"], "message",
            "expected a message of {channel}, got {m}"
        );
        assert_eq!(m["channel"], channel, "message channel: {m}");
        m
    }

    /// Sends a close frame and waits (bounded) for the close handshake to finish.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let _ = self
                .ws
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(200)));
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a complete HTTP/1.1 response (head and body as read to EOF).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in response {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version.starts_with("HTTP/1."),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Connects, sends `request`, reads to EOF (bounded), and parses the response.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
    s.write_all(request).expect("write request");
    let raw = read_to_eof(&mut s, WAIT);
    parse_response(&raw)
}

/// Reads until EOF or until `limit` passes (then panics).
pub fn read_to_eof(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no EOF within {limit:?}; got {} bytes",
            out.len()
        );
        s.set_read_timeout(Some(left)).expect("set_read_timeout");
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the response still ends it.
            Err(_) => return out,
        }
    }
}

/// The bytes of an HTTP/1.1 request with `Connection: close` (and a JSON body, if any).
pub fn http_request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    req.into_bytes()
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    raw_exchange(addr, &http_request_bytes(addr, method, path, headers, body))
}

/// A `POST /api/publish` already connected and written but for its last byte, so that a test can
/// publish with as little delay as possible after some event: [`PrimedPublish::send`] only writes
/// one byte before the gateway has the whole request.
pub struct PrimedPublish {
    stream: TcpStream,
    last: u8,
    body: String,
}

impl PrimedPublish {
    /// Completes the request; asserts 200 and returns the JSON answer.
    pub fn send(mut self) -> Value {
        self.fire();
        self.answer()
    }

    /// Writes the last byte: the gateway now has the whole request.
    pub fn fire(&mut self) {
        self.stream
            .write_all(&[self.last])
            .expect("writing the last byte of the publish");
    }

    /// Reads the answer to a [`PrimedPublish::fire`]d request; asserts 200 and returns the JSON.
    pub fn answer(mut self) -> Value {
        let r = parse_response(&read_to_eof(&mut self.stream, WAIT));
        assert_eq!(
            r.status, 200,
            "publish {} answered {} {}",
            self.body, r.status, r.body
        );
        let v = r.json();
        assert_eq!(v["ok"], true, "publish answer {v}");
        v
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], None)
}

/// `POST` with an optional `Authorization: Bearer <key>`.
pub fn http_post(addr: SocketAddr, path: &str, key: Option<&str>, body: &str) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request(addr, "POST", path, &headers, Some(body))
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------------------------

pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A hand-made upgrade request for `/ws`.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra_headers: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n{extra_headers}\r\n"
    )
}

/// A WebSocket connection driven by hand: the upgrade is done, then nothing is sent unless the
/// test does it. Server frames are read and parsed here.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One server frame.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    /// Upgrades by hand with `?token=`; asserts 101.
    pub fn connect(addr: SocketAddr, token: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let req = upgrade_request(addr, &format!("/ws?token={token}"), "");
        stream.write_all(req.as_bytes()).expect("write upgrade");
        RawWs::from_upgraded(stream)
    }

    /// Reads the answer to an upgrade request (with [`SAMPLE_KEY`]) already sent on `stream`;
    /// asserts 101 and the accept key.
    pub fn from_upgraded(mut stream: TcpStream) -> RawWs {
        let mut buf = Vec::new();
        let deadline = Instant::now() + WAIT;
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no upgrade response within {WAIT:?}");
            stream.set_read_timeout(Some(left)).expect("timeout");
            match stream.read(&mut chunk) {
                Ok(0) => panic!("EOF during upgrade: {:?}", String::from_utf8_lossy(&buf)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading upgrade response: {e}"),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade answered {head:?}"
        );
        let accept = tungstenite::handshake::derive_accept_key(SAMPLE_KEY.as_bytes());
        assert!(
            head.contains(&accept),
            "Sec-WebSocket-Accept missing or wrong in {head:?}"
        );
        let rest = buf[end..].to_vec();
        RawWs { stream, buf: rest }
    }

    fn parse_one(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
        let (len, hdr) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return None;
                }
                (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
            }
            127 => {
                if b.len() < 10 {
                    return None;
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(a) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if b.len() < hdr + len {
            return None;
        }
        let payload = b[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Some(RawFrame { opcode, payload })
    }

    /// The next frame; Ok(None) on EOF; Err(()) when `timeout` passes.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(f) = self.parse_one() {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// The next frame, which must be a JSON text frame; panics (mentioning `what`) otherwise.
    pub fn next_json(&mut self, what: &str) -> Value {
        match self.next_frame(WAIT) {
            Ok(Some(f)) => {
                assert_eq!(f.opcode, 0x1, "{what}: expected a text frame, got {f:?}");
                serde_json::from_slice(&f.payload)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {f:?}"))
            }
            Ok(None) => panic!("{what}: the connection ended"),
            Err(()) => panic!("{what}: no frame within {WAIT:?}"),
        }
    }

    /// Reads frames until EOF within `limit`; returns them. Panics if the server keeps the socket open.
    pub fn frames_until_eof(&mut self, limit: Duration) -> Vec<RawFrame> {
        let deadline = Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return frames,
                Err(()) => panic!(
                    "the server did not close the connection within {limit:?} (frames: {:?})",
                    frames.iter().map(|f| f.opcode).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// Appends a masked client frame (`opcode`, FIN bit `fin`) to `out`, for hand-made streams.
pub fn client_frame(out: &mut Vec<u8>, opcode: u8, fin: bool, payload: &[u8]) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
}

/// Appends a masked client text frame holding `text`.
pub fn client_text_frame(out: &mut Vec<u8>, text: &str) {
    client_frame(out, 0x1, true, text.as_bytes());
}

/// A JSON object of `n` bytes or so, for large messages.
pub fn payload_of(n: usize) -> Value {
    json!({"text": "x".repeat(n)})
}

// ---------------------------------------------------------------------------------------------
// Pipelined publishing, shard stalls, raw connections with long waits
// ---------------------------------------------------------------------------------------------

/// Flags that lift the per-connection frame rate, for clients that pipeline their requests.
pub const FAST_FRAMES: [&str; 4] = [
    "--client-frames-per-sec",
    "1000000",
    "--client-frames-burst",
    "1000000",
];

/// Publishes one message per entry of `datas` to `channel` through `publisher` (a client with a
/// `publish` grant on a gateway started with [`FAST_FRAMES`], not itself subscribed to `channel`):
/// requests go out 256 at a time, each window's replies are read before the next is sent. Returns
/// the `pos` of each message, in `datas` order.
pub fn publish_pipelined(publisher: &mut Client, channel: &str, datas: &[Value]) -> Vec<String> {
    const WINDOW: usize = 256;
    let mut positions = vec![String::new(); datas.len()];
    for start in (0..datas.len()).step_by(WINDOW) {
        let end = (start + WINDOW).min(datas.len());
        for (i, data) in datas.iter().enumerate().take(end).skip(start) {
            let req = json!({"type": "publish", "id": i, "channel": channel, "data": data});
            publisher
                .ws
                .write(Message::text(req.to_string()))
                .expect("queueing a publish frame");
        }
        publisher.ws.flush().expect("writing publish frames");
        for _ in start..end {
            let r = publisher.recv_json(Duration::from_secs(30));
            assert_eq!(r["type"], "reply", "expected a publish reply, got {r}");
            assert_eq!(r["ok"], true, "expected the publish to be accepted: {r}");
            let i = r["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("expected a numeric id in the publish reply {r}"))
                as usize;
            assert!(
                (start..end).contains(&i) && positions[i].is_empty(),
                "expected one reply per publish of this window ({start}..{end}), got {r}"
            );
            positions[i] = r["pos"]
                .as_str()
                .unwrap_or_else(|| panic!("expected a pos in the publish reply {r}"))
                .to_string();
        }
    }
    positions
}

/// `POST /debug/stall?shard=N&ms=M` (a `--test-hooks` gateway): asserts the immediate 200.
pub fn stall_shard(gw: &Gateway, shard: usize, ms: u64) {
    let r = http_post(
        gw.admin_addr,
        &format!("/debug/stall?shard={shard}&ms={ms}"),
        Some(API_KEY),
        "",
    );
    assert_eq!(
        r.status, 200,
        "expected 200 from /debug/stall (shard {shard}, {ms} ms): {} {}",
        r.status, r.body
    );
}

impl RawWs {
    /// Like [`RawWs::from_upgraded`], waiting up to `limit` for the 101.
    pub fn from_upgraded_within(mut stream: TcpStream, limit: Duration) -> RawWs {
        let mut buf = Vec::new();
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "expected an upgrade response within {limit:?}"
            );
            stream.set_read_timeout(Some(left)).expect("timeout");
            match stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "expected an upgrade response, got EOF after {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("expected an upgrade response, reading failed: {e}"),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 to the upgrade, got {head:?}"
        );
        let rest = buf[end..].to_vec();
        RawWs { stream, buf: rest }
    }

    /// The next text frame as JSON within `limit` (server pings and pongs skipped); panics,
    /// mentioning `what`, on anything else.
    pub fn next_json_within(&mut self, what: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Some(f)) if f.opcode == 0x9 || f.opcode == 0xA => {}
                Ok(Some(f)) if f.opcode == 0x1 => {
                    return serde_json::from_slice(&f.payload)
                        .unwrap_or_else(|e| panic!("{what}: expected JSON ({e}): {f:?}"))
                }
                Ok(Some(f)) => panic!(
                    "{what}: expected a text frame, got opcode {} (close code {:?})",
                    f.opcode,
                    f.close_code()
                ),
                Ok(None) => panic!("{what}: expected a frame, the connection ended"),
                Err(()) => panic!("{what}: expected a frame within {limit:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact command lines, JWKS fixtures and a JWKS server (production auth and safety tests)
// ---------------------------------------------------------------------------------------------

/// The gateway binary run with exactly `args` (nothing added) and `envs`; GATEWAY_* variables of
/// the test's own environment are removed. Stdout and stderr are piped.
pub fn gateway_command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("GATEWAY_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// How a gateway run with [`gateway_command`] ended up.
#[derive(Debug)]
pub enum Outcome {
    /// It exited (status, stdout, stderr).
    Exited(ExitStatus, String, String),
    /// It printed its ready line (it was killed afterwards): the line.
    Ready(String),
}

/// Runs the gateway with exactly `args` until it exits or prints its ready line (then it is
/// killed); panics if neither happens within 30 s.
pub fn run_gateway_once(args: &[&str], envs: &[(&str, &str)]) -> Outcome {
    let mut child = gateway_command(args, envs)
        .spawn()
        .expect("spawning the gateway binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let mut rest = String::new();
        let _ = tx.send(line.clone());
        let _ = reader.read_to_string(&mut rest);
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway neither exited nor got ready within 30 s (args {args:?})");
        }
    };
    if line.starts_with("gateway ready ") {
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Ready(line.trim().to_string());
    }
    // Stdout ended (or printed something else): wait for the exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway printed {line:?} and did not exit within 30 s (args {args:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = err_thread.join().unwrap_or_default();
    Outcome::Exited(status, line, err)
}

impl Gateway {
    /// Runs `gateway` with exactly `args` (which must include `serve` and everything else it
    /// needs) and waits for its ready line. Unspecified listen addresses (0.0.0.0, ::) in the
    /// ready line are turned into loopback ones, so tests only ever talk to loopback.
    pub fn start_exact(args: &[&str], envs: &[(&str, &str)]) -> Gateway {
        let (child, line, reader) = Gateway::launch(gateway_command(args, envs), args);
        let (mut ws_addr, mut admin_addr, shards) =
            parse_ready(line.trim()).unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        for a in [&mut ws_addr, &mut admin_addr] {
            if a.ip().is_unspecified() {
                let lo: std::net::IpAddr = if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                a.set_ip(lo);
            }
        }
        Gateway {
            ws_addr,
            admin_addr,
            shards,
            child,
            _stdout: Some(reader),
            exited: None,
        }
    }
}

/// The public JWK (`kid`, `alg`, `use: sig`) of a private key fixture in tests/keys.
pub fn jwk_of(private_key_file: &str, alg: jsonwebtoken::Algorithm, kid: &str) -> Value {
    use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
    let mut jwk = Jwk::from_encoding_key(&encoding_key(private_key_file, alg), alg)
        .expect("JWK from a key fixture");
    jwk.common.key_id = Some(kid.to_string());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_value(&jwk).expect("JWK as JSON")
}

fn encoding_key(private_key_file: &str, alg: jsonwebtoken::Algorithm) -> jsonwebtoken::EncodingKey {
    let pem = std::fs::read(key_path(private_key_file)).expect("reading a key fixture");
    match alg {
        jsonwebtoken::Algorithm::RS256 => {
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("RSA private key PEM")
        }
        jsonwebtoken::Algorithm::ES256 => {
            jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("EC private key PEM (PKCS8)")
        }
        other => panic!("no key fixture for {other:?}"),
    }
}

/// A token signed with a private key fixture, with `kid` in its header.
pub fn sign_with_kid(
    claims: &Value,
    private_key_file: &str,
    alg: jsonwebtoken::Algorithm,
    kid: &str,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &encoding_key(private_key_file, alg))
        .expect("signing with a kid")
}

/// A tiny HTTP server on loopback answering every GET with a JWKS document the test controls.
/// Stopped (its port closed) by [`JwksServer::stop`] or on drop.
pub struct JwksServer {
    pub addr: SocketAddr,
    keys: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    /// Serves `{"keys": keys}` on a free loopback port.
    pub fn start(keys: Vec<Value>) -> JwksServer {
        JwksServer::start_on("127.0.0.1:0".parse().expect("address"), keys)
    }

    /// Serves `{"keys": keys}` on `addr` (for instance the port of an earlier, stopped server).
    pub fn start_on(addr: SocketAddr, keys: Vec<Value>) -> JwksServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(addr).expect("binding the JWKS server");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local_addr");
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (k, h, s) = (keys.clone(), hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if !req.starts_with(b"GET ") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = json!({"keys": *k.lock().expect("keys lock")}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes());
                let _ = stream.flush();
            }
        });
        JwksServer {
            addr,
            keys,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// From now on the document holds `keys`.
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().expect("keys lock") = keys;
    }

    /// GET requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops answering and closes the port (connections to it are then refused).
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes an upgrade request (or any bytes) on a fresh connection and returns the status of the
/// answer's head, without waiting for the connection to end (a 101 keeps it open). None when the
/// connection ends without a complete head.
pub fn upgrade_status(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(request);
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            let status = head.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
            return (status, head);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "expected an answer to the upgrade request within {WAIT:?}, got {:?}",
            String::from_utf8_lossy(&buf)
        );
        s.set_read_timeout(Some(left)).expect("set_read_timeout");
        match s.read(&mut chunk) {
            Ok(0) => return (None, String::from_utf8_lossy(&buf).into_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (None, String::from_utf8_lossy(&buf).into_owned()),
        }
    }
}
