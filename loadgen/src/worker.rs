//! A worker process: holds its share of the connections (one process stays under RLIMIT_NOFILE),
//! ramps them up at its share of the rate, records what arrives, and reports one JSON line.
//!
//! Protocol with the main process: the config comes as the first line on stdin; the worker prints
//! `{"progress":…}` lines while ramping, `{"ready":…}` once every connection was tried, then waits for
//! `stop <published per room>` on stdin and prints `{"result":…}`.

use crate::stats::{self, SeqTrack, WorkerResult};
use crate::ws::{self, Frame, Target};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Server {
    /// This project's gateway: JWT in the URL, rooms by `subscribe` frames.
    Gateway,
    /// Nchan: `GET /sub?id=ROOM` upgraded to a WebSocket.
    Nchan,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerCfg {
    pub index: usize,
    pub workers: usize,
    pub server: Server,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub conns: usize,
    pub rooms: usize,
    pub room_prefix: String,
    pub ramp_per_sec: f64,
    pub tokens: Vec<String>,
    pub sources: Vec<IpAddr>,
    pub connect_timeout_ms: u64,
}

pub fn room_name(prefix: &str, room: usize) -> String {
    format!("{prefix}{room}")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[derive(Default)]
struct State {
    connect: Option<Histogram<u64>>,
    delivery: Option<Histogram<u64>>,
    connected: u64,
    failed: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    tracks: Vec<(usize, SeqTrack)>,
    last_rx: HashMap<(u32, u64), u64>,
    attempted: usize,
}

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs a worker: reads its config from stdin, reports on stdout.
pub fn main() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let cfg: WorkerCfg = serde_json::from_str(&line).context("worker config")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(cfg))
}

async fn run(cfg: WorkerCfg) -> Result<()> {
    let state = Rc::new(RefCell::new(State {
        connect: Some(stats::histogram()),
        delivery: Some(stats::histogram()),
        ..State::default()
    }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mine: Vec<usize> = (cfg.index..cfg.conns).step_by(cfg.workers).collect();
    let interval = Duration::from_secs_f64(cfg.workers as f64 / cfg.ramp_per_sec.max(0.001));
    let target = Rc::new(Target {
        addr: cfg.addr,
        host: cfg.host.clone(),
    });
    let cfg = Rc::new(cfg);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(mine.len());
    for (k, g) in mine.iter().copied().enumerate() {
        let due = start + interval * k as u32;
        let (cfg, target, state, stop) =
            (cfg.clone(), target.clone(), state.clone(), stop_rx.clone());
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(due).await;
            connection(&cfg, &target, g, &state, stop).await;
        }));
    }
    // Progress until every connection was tried.
    loop {
        let (attempted, connected) = {
            let s = state.borrow();
            (s.attempted, s.connected)
        };
        emit(serde_json::json!({"progress": {"attempted": attempted, "connected": connected}}));
        if attempted >= mine.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    emit(serde_json::json!({"ready": {"connected": state.borrow().connected}}));

    // Wait for `stop <json>` on stdin (read on a thread: stdin is blocking).
    let (line_tx, line_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx.await.unwrap_or_default();
    let published: BTreeMap<usize, u64> = line
        .strip_prefix("stop ")
        .and_then(|j| serde_json::from_str(j.trim()).ok())
        .unwrap_or_default();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let mut s = state.borrow_mut();
    let (mut received, mut lost, mut duplicates) = (0, 0, 0);
    for (room, t) in s.tracks.iter_mut() {
        t.finish(published.get(room).copied().unwrap_or(0));
        received += t.received;
        lost += t.lost;
        duplicates += t.duplicates;
    }
    let cpu = cpu_secs();
    let result = WorkerResult {
        connect_hist: stats::encode(s.connect.as_ref().context("histogram")?)?,
        delivery_hist: stats::encode(s.delivery.as_ref().context("histogram")?)?,
        connected: s.connected,
        failed: std::mem::take(&mut s.failed),
        closes: std::mem::take(&mut s.closes),
        received,
        lost,
        duplicates,
        last_rx: s.last_rx.iter().map(|((r, q), t)| (*r, *q, *t)).collect(),
        cpu_secs: cpu,
    };
    emit(serde_json::json!({ "result": result }));
    Ok(())
}

/// This process's user+system CPU time.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes only into the struct given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }
}

async fn connection(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    state: &Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let room = g % cfg.rooms;
    let room_name = room_name(&cfg.room_prefix, room);
    let path = match cfg.server {
        Server::Gateway => format!("{}?token={}", cfg.path, cfg.tokens[g % cfg.tokens.len()]),
        Server::Nchan => format!("{}?id={room_name}", cfg.path),
    };
    let source = (!cfg.sources.is_empty()).then(|| cfg.sources[g % cfg.sources.len()]);
    let t0 = Instant::now();
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let attempt = tokio::time::timeout(timeout, ws::connect(target, source, &path)).await;
    let (mut stream, rest) = match attempt {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(state, e.label()),
        Err(_) => return fail(state, ws::ConnectError::Timeout.label()),
    };
    {
        let mut s = state.borrow_mut();
        if let Some(h) = s.connect.as_mut() {
            stats::record(h, t0.elapsed().as_micros() as u64);
        }
        s.connected += 1;
        s.attempted += 1;
    }
    if cfg.server == Server::Gateway {
        let sub = format!(r#"{{"type":"subscribe","id":"s","channel":"{room_name}"}}"#);
        if stream
            .write_all(&ws::client_frame(1, sub.as_bytes()))
            .await
            .is_err()
        {
            return close(state, "write_error");
        }
    }
    let mut reader = ws::Reader::new(rest, 4096);
    let mut track = SeqTrack::default();
    let why = 'conn: loop {
        loop {
            let frame = match reader.next() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn "protocol_error".to_string(),
            };
            match frame {
                Frame::Text(p) => {
                    let (Some(seq), Some(t)) = (
                        ws::number_after(p, br#""s":"#),
                        ws::number_after(p, br#""t":"#),
                    ) else {
                        continue;
                    };
                    let now = now_ns();
                    track.on(seq);
                    let mut s = state.borrow_mut();
                    if let Some(h) = s.delivery.as_mut() {
                        stats::record(h, now.saturating_sub(t) / 1000);
                    }
                    let e = s.last_rx.entry((room as u32, seq)).or_default();
                    *e = (*e).max(now);
                }
                Frame::Ping(p) => {
                    let pong = ws::client_frame(0xa, p);
                    if stream.write_all(&pong).await.is_err() {
                        break 'conn "write_error".to_string();
                    }
                }
                Frame::Close(code) => {
                    break 'conn code.map_or("close_no_code".into(), |c| c.to_string());
                }
                Frame::Binary | Frame::Pong => {}
            }
        }
        tokio::select! {
            _ = stop.changed() => break 'conn String::new(),
            r = reader.fill(&mut stream) => match r {
                Ok(true) => {}
                Ok(false) => break 'conn "eof".to_string(),
                Err(_) => break 'conn "reset".to_string(),
            },
        }
    };
    state.borrow_mut().tracks.push((room, track));
    if !why.is_empty() {
        close(state, &why);
    } else {
        let _ = stream
            .write_all(&ws::client_frame(0x8, &1000u16.to_be_bytes()))
            .await;
    }
}

fn fail(state: &Rc<RefCell<State>>, label: String) {
    let mut s = state.borrow_mut();
    *s.failed.entry(label).or_default() += 1;
    s.attempted += 1;
}

fn close(state: &Rc<RefCell<State>>, why: &str) {
    *state
        .borrow_mut()
        .closes
        .entry(why.to_string())
        .or_default() += 1;
}
