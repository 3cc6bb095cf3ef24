//! The HTTP upgrade of one accepted connection: read the request within the handshake timeout,
//! admit it (limits, JWT, slots), and answer 101 (with permessage-deflate if offered and on), or
//! refuse with a status and a short reason.

use super::admit::admit;
use super::request::{parse, refuse, response, HttpRefusal, Upgrade};
use crate::deflate::negotiate;
use crate::session;
use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

async fn read_request(
    stream: &mut TcpStream,
    max: usize,
    ws_path: &str,
) -> Result<Upgrade, HttpRefusal> {
    let mut buf = vec![0u8; 1024.min(max)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= max {
                return Err(refuse(431, "upgrade request too large"));
            }
            buf.resize((buf.len() * 2).min(max), 0);
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| refuse(400, format!("read error: {e}")))?;
        if n == 0 {
            return Err(refuse(400, "connection closed during the handshake"));
        }
        filled += n;
        if let Some((up, _)) = parse(&buf[..filled], ws_path)? {
            return Ok(up);
        }
    }
}

async fn send_refusal(stream: &mut TcpStream, r: &HttpRefusal) {
    let _ = stream.write_all(response(r).as_bytes()).await;
    let _ = stream.close().await;
}

/// Serves one accepted TCP connection from the first byte to the close.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = &shard.node.config.limits;
    // Work before authentication is bounded: beyond the cap a client is told at once.
    let Some(_in_progress) = shard.start_handshake() else {
        shard.metrics.handshake_failures.inc();
        send_refusal(&mut stream, &refuse(503, "too many handshakes in progress")).await;
        return;
    };
    let timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let ws_path = shard.node.config.ws_path.clone();
    let max = limits.max_handshake_bytes;
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let started = async {
        let up = read_request(&mut stream, max, &ws_path).await?;
        let (claims, slot) = admit(&shard, &up, peer).await?;
        Ok((up, claims, slot))
    }
    .or(async {
        glommio::timer::sleep(timeout).await;
        Err(refuse(408, "handshake timeout"))
    })
    .await;
    drop(_in_progress);
    let (up, claims, slot) = match started {
        Ok(v) => v,
        Err(r) => {
            if r.status != 401 {
                shard.metrics.handshake_failures.inc();
            }
            tracing::debug!(status = r.status, detail = %r.detail, "upgrade refused");
            // A client that never finished its request gets no answer, just the close.
            if r.status == 408 {
                let _ = stream.close().await;
            } else {
                send_refusal(&mut stream, &r).await;
            }
            return;
        }
    };
    let accept = tungstenite::handshake::derive_accept_key(up.key.as_bytes());
    let session_cfg = &shard.node.config.session;
    let deflate = match session_cfg.deflate {
        true => negotiate(&up.extensions, session_cfg.deflate_min_bytes),
        false => None,
    };
    let extension = match &deflate {
        Some((_, response)) => format!("Sec-WebSocket-Extensions: {response}\r\n"),
        None => String::new(),
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extension}\r\n"
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let deflate = deflate.map(|(agreed, _)| agreed);
    session::run(shard, stream, claims, up.leftover, deflate, slot).await;
}
