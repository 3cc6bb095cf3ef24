//! A worker process: holds its share of the connections (one process stays under RLIMIT_NOFILE),
//! ramps them up at its share of the rate, records what arrives, and reports one JSON line.
//!
//! Protocol with the main process: the config comes as the first line on stdin; the worker prints
//! `{"progress":…}` lines while ramping, `{"ready":…}` once every connection was tried, then waits for
//! `stop <published per room>` on stdin and prints `{"result":…}`.

use crate::common::emit;
use crate::counts::{close, State};
use crate::open::{open_counted, subscribe_frame, NotOpened};
use crate::stats::{self, SeqTrack, WorkerResult};
use crate::ws::{self, Frame, Target};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Connections `conns..conns + stalled` subscribe and then never read.
    #[serde(default)]
    pub stalled: usize,
    #[serde(default)]
    pub stalled_recv_buffer: Option<u32>,
    /// Fraction of the `conns` connections that disconnect and reconnect, after lifetimes drawn
    /// uniformly from 0.5 to 1.5 times `churn_lifetime_ms`.
    #[serde(default)]
    pub churn_fraction: f64,
    #[serde(default)]
    pub churn_lifetime_ms: u64,
    /// Offer permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// Stable connections reconnect and resubscribe with `since` when they lose their connection.
    #[serde(default)]
    pub resume: bool,
}

/// Whether connection `g` churns: a fixed, evenly spread choice, so the main process knows which
/// connections stay and what they must all receive.
pub fn churns(g: usize, fraction: f64) -> bool {
    let h = (g as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> 11;
    (h as f64 / (1u64 << 53) as f64) < fraction
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

/// Runs a worker: reads its config from stdin, reports on stdout.
pub fn main() -> Result<()> {
    let cfg: WorkerCfg = crate::common::read_config("worker config")?;
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
    let mine: Vec<usize> = (cfg.index..cfg.conns + cfg.stalled)
        .step_by(cfg.workers)
        .collect();
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
    // One deadline for all, beyond the stalled connections' 5 s read, so none is cut short.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    for t in tasks {
        let _ = tokio::time::timeout_at(deadline, t).await;
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
        churn_cycles: s.churn_cycles,
        churn_received: s.churn_received,
        stalled: std::mem::take(&mut s.stalled),
        frame_bytes: s.frame_bytes,
        resume: s.resume.result()?,
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

/// How one WebSocket session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The run is over (stop on stdin).
    Stopped,
    /// A churning connection's lifetime ran out; it closed with 1000.
    Lifetime,
    /// The connection could not be made (counted in `failed`).
    ConnectFailed,
    /// The server or the network ended it (counted in `closes`).
    Closed,
}

async fn connection(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    state: &Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    if g >= cfg.conns {
        return crate::stalled::stalled(cfg, target, g, state, stop).await;
    }
    let room = g % cfg.rooms;
    if cfg.resume && !churns(g, cfg.churn_fraction) {
        return crate::resume::connection(cfg, target, g, state, stop).await;
    }
    if !churns(g, cfg.churn_fraction) {
        let mut track = SeqTrack::default();
        if session(
            cfg,
            target,
            g,
            state,
            &mut stop,
            None,
            Some(&mut track),
            true,
        )
        .await
            != Ended::ConnectFailed
        {
            state.borrow_mut().tracks.push((room, track));
        }
        return;
    }
    let mut first = true;
    loop {
        let mean = cfg.churn_lifetime_ms.max(1) as f64;
        let life = Duration::from_millis((mean * rand::random_range(0.5..1.5)) as u64);
        let ended = session(cfg, target, g, state, &mut stop, Some(life), None, first).await;
        first = false;
        if ended == Ended::Stopped || *stop.borrow() {
            return;
        }
        if ended != Ended::Lifetime {
            // Refused or dropped: back off briefly instead of hammering the server.
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        state.borrow_mut().churn_cycles += 1;
    }
}

/// One connection from connect to close. Stable connections account for every message in
/// `track`; churning ones (`lifetime`) only record latency.
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    state: &Rc<RefCell<State>>,
    stop: &mut watch::Receiver<bool>,
    lifetime: Option<Duration>,
    mut track: Option<&mut SeqTrack>,
    first: bool,
) -> Ended {
    let room = g % cfg.rooms;
    let room_name = room_name(&cfg.room_prefix, room);
    let (mut stream, rest) =
        match open_counted(cfg, target, g, &room_name, state, stop, first).await {
            Ok(v) => v,
            Err(NotOpened::Stopped) => return Ended::Stopped,
            Err(NotOpened::Failed) => return Ended::ConnectFailed,
        };
    if cfg.server == Server::Gateway
        && stream
            .write_all(&subscribe_frame(&room_name))
            .await
            .is_err()
    {
        close(state, "write_error");
        return Ended::Closed;
    }
    let end_of_life = lifetime.map(|l| tokio::time::Instant::now() + l);
    let mut reader = ws::Reader::new(rest, 4096);
    let mut inflater = ws::Inflater::default();
    let why = 'conn: loop {
        loop {
            let frame = match reader.next() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn "protocol_error".to_string(),
            };
            match frame {
                Frame::Text(p) | Frame::Packed(p) => {
                    let wire = ws::wire_len(p.len());
                    let p = inflater.text(&frame);
                    let (Some(seq), Some(t)) = (
                        ws::number_after(p, br#""s":"#),
                        ws::number_after(p, br#""t":"#),
                    ) else {
                        continue;
                    };
                    let now = now_ns();
                    let mut s = state.borrow_mut();
                    s.frame_bytes += wire;
                    match track.as_deref_mut() {
                        Some(track) => track.on(seq),
                        None => s.churn_received += 1,
                    }
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
        let life = async {
            match end_of_life {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break 'conn String::new(),
            _ = life => break 'conn "lifetime".to_string(),
            r = reader.fill(&mut stream) => match r {
                Ok(true) => {}
                Ok(false) => break 'conn "eof".to_string(),
                Err(_) => break 'conn "reset".to_string(),
            },
        }
    };
    match why.as_str() {
        "" | "lifetime" => {
            // A clean close: our close frame, then the server's reply and its FIN.
            let _ = stream
                .write_all(&ws::client_frame(0x8, &1000u16.to_be_bytes()))
                .await;
            if why == "lifetime" {
                let mut sink = [0u8; 4096];
                let drain = tokio::time::timeout(Duration::from_secs(2), async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                tokio::select! {
                    _ = stop.changed() => return Ended::Stopped,
                    _ = drain => {}
                }
                return Ended::Lifetime;
            }
            Ended::Stopped
        }
        _ => {
            // Closes of churning connections are counted apart from the stable ones'.
            let label = match track {
                Some(_) => why,
                None => format!("churn {why}"),
            };
            close(state, &label);
            Ended::Closed
        }
    }
}
