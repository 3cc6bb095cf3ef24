//! Connection limits per client address and on the connect rate, driven over real sockets.

mod common;

use common::{token, Client, Gateway, Refused};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connects from a chosen loopback source address.
fn connect_from(source: &str, addr: SocketAddr, tok: &str) -> Result<Client, Refused> {
    let ip: IpAddr = source.parse().expect("source address");
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(ip, 0).into())
        .expect("bind source");
    sock.connect(&addr.into()).expect("connect");
    Client::try_connect_stream(TcpStream::from(sock), addr, tok, false)
}

#[test]
fn connections_per_address_are_limited_across_shards() {
    let gw = Gateway::start_sharded(2, &["--max-connections-per-ip", "2"]);
    let t = |i: usize| token(&format!("ip-user-{i}"), &[], &[]);
    let a = connect_from("127.0.0.1", gw.ws_addr, &t(1)).expect("first");
    let _b = connect_from("127.0.0.1", gw.ws_addr, &t(2)).expect("second");
    let refused = connect_from("127.0.0.1", gw.ws_addr, &t(3))
        .err()
        .expect("third is refused");
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("address"), "{}", refused.body);
    // The limit is checked before the token: a bad token from a full address gets the same 429.
    let refused = connect_from("127.0.0.1", gw.ws_addr, "not-a-token")
        .err()
        .expect("refused");
    assert_eq!(refused.status, 429);
    // Another address is not affected.
    let _c = connect_from("127.0.0.2", gw.ws_addr, &t(4)).expect("other address");
    // A closed connection gives its slot back (released over the mesh, so allow a moment).
    a.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect_from("127.0.0.1", gw.ws_addr, &t(5)) {
            Ok(_) => break,
            Err(r) if r.status == 429 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(r) => panic!("slot never came back: {} {}", r.status, r.body),
        }
    }
}

#[test]
fn the_connect_rate_is_limited_and_recovers() {
    let gw = Gateway::start(&["--connect-rate-per-sec", "4"]);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..12 {
        match Client::try_connect(gw.ws_addr, &token(&format!("rate-{i}"), &[], &[])) {
            Ok(c) => accepted.push(c),
            Err(r) => {
                assert_eq!(r.status, 429, "{}", r.body);
                assert!(r.body.contains("connect rate"), "{}", r.body);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "12 upgrades at once passed a limit of 4/s");
    assert!(!accepted.is_empty(), "the burst allowance let nothing in");
    // After a second the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    Client::try_connect(gw.ws_addr, &token("rate-late", &[], &[]))
        .map_err(|r| format!("{} {}", r.status, r.body))
        .expect("accepted again after the refill");
}
