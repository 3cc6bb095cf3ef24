//! SIGTERM: clients are closed with 1001, /health answers 503 while draining, and the process
//! exits within the drain timeout.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_with_1001_and_exits() {
    let mut gw = Gateway::start_sharded(2, &["--drain-timeout-ms", "3000"]);
    let t = token("d", &[], &[]);
    let mut clients = gw.clients_on_every_shard(1, |_| t.clone());
    // A client that never answers the close keeps the drain going until its timeout.
    let mut stubborn = RawWs::connect(gw.ws_addr, &t);
    let health = http_get(gw.admin_addr, "/health");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(metric_sum(&gw.metrics(), "gateway_draining"), 0.0);

    gw.sigterm();
    let signalled = Instant::now();

    // /health turns 503 while draining.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let h = http_get(gw.admin_addr, "/health");
        if h.status == 503 {
            break;
        }
        assert_eq!(h.status, 200, "{h:?}");
        assert!(
            Instant::now() < deadline,
            "/health never answered 503 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The stubborn client holds the drain open: the metric says so, for the drain alert.
    assert_eq!(
        metric_sum(&gw.metrics(), "gateway_draining"),
        1.0,
        "expected gateway_draining 1 while draining"
    );
    for c in &mut clients {
        c.expect_close(1001, WAIT);
    }
    // The stubborn client gets the same close frame (it just never answers it).
    let mut got_close = None;
    while got_close.is_none() {
        match stubborn.next_frame(WAIT) {
            Ok(Some(f)) if f.opcode == 0x8 => got_close = f.close_code(),
            Ok(Some(_)) => {}
            Ok(None) => panic!("stubborn client: EOF before a close frame"),
            Err(()) => panic!("stubborn client: no close frame within {WAIT:?}"),
        }
    }
    assert_eq!(got_close, Some(1001));

    // Draining ends at the latest at the drain timeout; allow a margin for process exit.
    let status = gw
        .wait_exit(Duration::from_secs(6))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", signalled.elapsed()));
    assert!(status.success(), "exit status after a drain: {status:?}");
}

#[test]
fn sigterm_with_cooperative_clients_exits_promptly() {
    let mut gw = Gateway::start_sharded(2, &["--drain-timeout-ms", "10000"]);
    let t = token("quick", &[], &[]);
    let mut clients = gw.clients_on_every_shard(1, |_| t.clone());
    gw.sigterm();
    for c in &mut clients {
        c.expect_close(1001, WAIT);
    }
    // Every client answered the close: no need to wait for the 10 s drain timeout.
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("exits once every client has gone, before the drain timeout");
    assert!(status.success(), "{status:?}");
}
