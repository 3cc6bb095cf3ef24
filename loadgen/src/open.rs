//! A client connection opened: its upgrade path for the server under test, the upgrade itself
//! (from the connection's source address, within the connect timeout), and its counting.

use crate::counts::{fail, State};
use crate::stats;
use crate::worker::{Server, WorkerCfg};
use crate::ws::{self, Target};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The upgrade path: the token in the query for the gateway, the channel id for Nchan.
fn ws_path(cfg: &WorkerCfg, g: usize, room_name: &str) -> String {
    match cfg.server {
        Server::Gateway => format!("{}?token={}", cfg.path, cfg.tokens[g % cfg.tokens.len()]),
        Server::Nchan => format!("{}?id={room_name}", cfg.path),
    }
}

/// The plain `subscribe` request for `room_name`, as a masked client frame.
pub(crate) fn subscribe_frame(room_name: &str) -> Vec<u8> {
    let sub = format!(r#"{{"type":"subscribe","id":"s","channel":"{room_name}"}}"#);
    ws::client_frame(1, sub.as_bytes())
}

/// Why [`open_counted`] has no connection.
pub(crate) enum NotOpened {
    /// The run is over.
    Stopped,
    /// The connect or the upgrade failed (counted by its cause).
    Failed,
}

/// [`open`] unless the run stops first, counted: the connect latency, and for a client's first
/// attempt (`first`) one more attempted and connected client, or its failure by cause.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open_counted(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    room_name: &str,
    state: &Rc<RefCell<State>>,
    stop: &mut watch::Receiver<bool>,
    first: bool,
) -> Result<(tokio::net::TcpStream, Vec<u8>), NotOpened> {
    let t0 = Instant::now();
    let opened = tokio::select! {
        _ = stop.changed() => return Err(NotOpened::Stopped),
        r = open(cfg, target, g, room_name, None) => r,
    };
    let v = opened.map_err(|label| {
        fail(state, label, first);
        NotOpened::Failed
    })?;
    let mut s = state.borrow_mut();
    if let Some(h) = s.connect.as_mut() {
        stats::record(h, t0.elapsed().as_micros() as u64);
    }
    if first {
        s.connected += 1;
        s.attempted += 1;
    }
    Ok(v)
}

/// Connects connection `g` (from its source address, within the connect timeout) and upgrades.
pub(crate) async fn open(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    room_name: &str,
    recv_buffer: Option<u32>,
) -> Result<(tokio::net::TcpStream, Vec<u8>), String> {
    let path = ws_path(cfg, g, room_name);
    let source = (!cfg.sources.is_empty()).then(|| cfg.sources[g % cfg.sources.len()]);
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let offer = cfg.deflate.then_some(ws::DEFLATE);
    match tokio::time::timeout(
        timeout,
        ws::connect_offering(target, source, &path, recv_buffer, offer),
    )
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.label()),
        Err(_) => Err(ws::ConnectError::Timeout.label()),
    }
}
