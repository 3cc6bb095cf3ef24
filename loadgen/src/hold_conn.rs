//! One `loadgen hold` connection: opened at its slot in the ramp (TCP connect to the welcome frame
//! is its connect latency), then held idle through the phases: it answers pings, subscribes when
//! the subscribe phase reaches its slot and records the reply, and closes cleanly on stop.

use crate::common;
use crate::hold_worker::{HoldCfg, Phase, State};
use crate::stats;
use crate::ws::{self, Frame, Reader, Target};
use anyhow::Result;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// One connection: open it, then hold it through the phases.
pub async fn connection(
    cfg: &HoldCfg,
    target: &Target,
    g: usize,
    k: usize,
    state: &Rc<RefCell<State>>,
    mut phase: watch::Receiver<Phase>,
) {
    let t0 = Instant::now();
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let opened = match tokio::time::timeout(timeout, open(cfg, target, g)).await {
        Ok(r) => r,
        Err(_) => Err(ws::ConnectError::Timeout.label()),
    };
    let (mut stream, mut reader) = {
        let mut s = state.borrow_mut();
        s.attempted += 1;
        match opened {
            Ok(v) => {
                stats::record(&mut s.connect, t0.elapsed().as_micros() as u64);
                s.connected += 1;
                s.alive += 1;
                v
            }
            Err(label) => {
                *s.connect_failed.entry(label).or_default() += 1;
                return;
            }
        }
    };
    let room = format!("{}{}", cfg.room_prefix, g % cfg.rooms);
    let sub_interval =
        Duration::from_secs_f64(cfg.workers as f64 / cfg.subscribe_per_sec.max(0.001));
    let ended = hold(
        &mut stream,
        &mut reader,
        &room,
        sub_interval * k as u32,
        state,
        &mut phase,
    )
    .await;
    {
        let mut s = state.borrow_mut();
        s.alive -= 1;
        if let Some(why) = ended {
            *s.closes.entry(why).or_default() += 1;
            return;
        }
    }
    // Stopped: a clean close, then briefly wait for the server's reply and its FIN.
    let _ = stream
        .write_all(&ws::client_frame(0x8, &1000u16.to_be_bytes()))
        .await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Connects from this connection's source address, upgrades, and waits for the welcome frame;
/// `Err` is the failure's label.
async fn open(cfg: &HoldCfg, target: &Target, g: usize) -> Result<(TcpStream, Reader), String> {
    let token = common::mint(
        &cfg.secret,
        &format!("{}{g}", cfg.sub_prefix),
        vec![format!("{}*", cfg.room_prefix)],
        None,
    )
    .map_err(|e| format!("token: {e}"))?;
    let path = format!("{}?token={token}", cfg.path);
    let source = (!cfg.sources.is_empty()).then(|| cfg.sources[g % cfg.sources.len()]);
    let (mut stream, rest) = ws::connect_with(target, source, &path, None)
        .await
        .map_err(|e| e.label())?;
    let mut reader = Reader::new(rest, 2048);
    loop {
        loop {
            let welcome = match reader.next() {
                Ok(Some(Frame::Text(p))) => {
                    memchr::memmem::find(p, br#""type":"welcome""#).is_some()
                }
                Ok(Some(Frame::Ping(p))) => {
                    let pong = ws::client_frame(0xa, p);
                    stream.write_all(&pong).await.map_err(|_| "write_error")?;
                    continue;
                }
                Ok(Some(Frame::Close(code))) => return Err(close_label(code)),
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return Err("protocol_error".into()),
            };
            return match welcome {
                true => Ok((stream, reader)),
                false => Err("first_frame_not_welcome".into()),
            };
        }
        match reader.fill(&mut stream).await {
            Ok(true) => {}
            Ok(false) => return Err("eof_before_welcome".into()),
            Err(_) => return Err("reset_before_welcome".into()),
        }
    }
}

fn close_label(code: Option<u16>) -> String {
    code.map_or("close_no_code".into(), |c| format!("close_{c}"))
}

/// A reply frame's outcome: `Ok` or the error code; `None` for other frames.
fn reply_outcome(text: &[u8]) -> Option<Result<(), String>> {
    memchr::memmem::find(text, br#""type":"reply""#)?;
    if memchr::memmem::find(text, br#""ok":true"#).is_some() {
        return Some(Ok(()));
    }
    let code = memchr::memmem::find(text, br#""code":""#)
        .map(|at| &text[at + 8..])
        .and_then(|rest| rest.split(|b| *b == b'"').next())
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_else(|| "error".into());
    Some(Err(code))
}

/// What woke the hold loop.
enum Wake {
    Phase(Phase),
    SubscribeDue,
    Read(Result<bool>),
}

/// Holds an open connection: answers pings, subscribes when the phase comes, records the reply.
/// Returns `None` when stopped, or why the connection ended.
async fn hold(
    stream: &mut TcpStream,
    reader: &mut Reader,
    room: &str,
    sub_offset: Duration,
    state: &Rc<RefCell<State>>,
    phase: &mut watch::Receiver<Phase>,
) -> Option<String> {
    let mut sub_due: Option<Instant> = None;
    let mut sent_at: Option<Instant> = None;
    // Whether this connection still owes the worker a subscribe outcome.
    let mut owes = false;
    let ended = 'conn: loop {
        loop {
            let frame = match reader.next() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn "protocol_error".to_string(),
            };
            match frame {
                Frame::Text(p) => {
                    let (Some(t), Some(outcome)) = (sent_at, reply_outcome(p)) else {
                        continue;
                    };
                    let mut s = state.borrow_mut();
                    stats::record(&mut s.subscribe, t.elapsed().as_micros() as u64);
                    s.answered += 1;
                    match outcome {
                        Ok(()) => s.subscribed += 1,
                        Err(code) => *s.subscribe_failed.entry(code).or_default() += 1,
                    }
                    sent_at = None;
                    owes = false;
                }
                Frame::Ping(p) => {
                    let pong = ws::client_frame(0xa, p);
                    if stream.write_all(&pong).await.is_err() {
                        break 'conn "write_error".to_string();
                    }
                }
                Frame::Close(code) => break 'conn close_label(code),
                Frame::Binary | Frame::Packed(_) | Frame::Pong => {}
            }
        }
        let due = async {
            match sub_due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            r = phase.changed() => Wake::Phase(if r.is_ok() { *phase.borrow_and_update() } else { Phase::Stop }),
            _ = due => Wake::SubscribeDue,
            r = reader.fill(stream) => Wake::Read(r),
        };
        match wake {
            Wake::Phase(Phase::Stop) => return None,
            Wake::Phase(Phase::Subscribe(since)) => {
                sub_due = Some(since + sub_offset);
                owes = true;
            }
            Wake::Phase(Phase::Connect) => {}
            Wake::SubscribeDue => {
                sub_due = None;
                let frame = format!(r#"{{"type":"subscribe","id":"h","channel":"{room}"}}"#);
                if stream
                    .write_all(&ws::client_frame(1, frame.as_bytes()))
                    .await
                    .is_err()
                {
                    break 'conn "write_error".to_string();
                }
                sent_at = Some(Instant::now());
            }
            Wake::Read(Ok(true)) => {}
            Wake::Read(Ok(false)) => break 'conn "eof".to_string(),
            Wake::Read(Err(_)) => break 'conn "reset".to_string(),
        }
    };
    if owes {
        let mut s = state.borrow_mut();
        s.answered += 1;
        *s.subscribe_failed
            .entry(format!("ended_before_reply: {ended}"))
            .or_default() += 1;
    }
    Some(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reply_outcomes() {
        assert_eq!(
            reply_outcome(br#"{"type":"reply","id":"h","ok":true}"#),
            Some(Ok(()))
        );
        let refused =
            br#"{"type":"reply","id":"h","ok":false,"error":{"code":"forbidden","message":"no"}}"#;
        assert_eq!(reply_outcome(refused), Some(Err("forbidden".into())));
        assert_eq!(
            reply_outcome(br#"{"type":"reply","ok":false}"#),
            Some(Err("error".into()))
        );
        assert_eq!(reply_outcome(br#"{"type":"message","ok":true}"#), None);
    }
}
