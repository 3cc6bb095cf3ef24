//! Stalled clients (`--stalled N`): connections that subscribe and then never read, to see how the
//! server treats them (closes, with which code).

use crate::counts::{fail, State};
use crate::open::{open, subscribe_frame};
use crate::worker::{room_name, Server, WorkerCfg};
use crate::ws::{self, Frame, Target};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// A connection that subscribes and then never reads until the run ends. Then it reads what the
/// kernel kept for it, to see whether the server closed it and with which code.
pub(crate) async fn stalled(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    state: &Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let room_name = room_name(&cfg.room_prefix, g % cfg.rooms);
    let (mut stream, rest) = match open(cfg, target, g, &room_name, cfg.stalled_recv_buffer).await {
        Ok(v) => v,
        Err(label) => return fail(state, format!("stalled {label}"), true),
    };
    state.borrow_mut().attempted += 1;
    if cfg.server == Server::Gateway
        && stream
            .write_all(&subscribe_frame(&room_name))
            .await
            .is_err()
    {
        *state
            .borrow_mut()
            .stalled
            .entry("write_error".into())
            .or_default() += 1;
        return;
    }
    let _ = stop.changed().await;
    let mut reader = ws::Reader::new(rest, 64 * 1024);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            loop {
                match reader.next() {
                    Ok(Some(Frame::Close(code))) => {
                        return code.map_or("close_no_code".into(), |c| format!("close_{c}"))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return "protocol_error".to_string(),
                }
            }
            match reader.fill(&mut stream).await {
                Ok(true) => {}
                Ok(false) => return "eof_without_close".to_string(),
                Err(_) => return "reset".to_string(),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "still_open".to_string());
    *state.borrow_mut().stalled.entry(outcome).or_default() += 1;
}
