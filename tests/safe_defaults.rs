//! Safe defaults: the gateway refuses to serve a public address with the development JWT secret or
//! API key, and personal channels (`user:<sub>`) are never reached through a wildcard grant.
//!
//! The refusal tests run the binary themselves with unspecified addresses (`0.0.0.0:0`, `[::]:0`)
//! but never send traffic anywhere but loopback.

mod common;

use common::*;
use serde_json::json;

/// Runs `gateway serve` with exactly `args` and asserts it refuses to start: a non-zero exit
/// status and a stderr naming one of `names`. Returns stderr.
fn assert_refuses(args: &[&str], envs: &[(&str, &str)], names: &[&str]) -> String {
    match run_gateway_once(args, envs) {
        Outcome::Ready(line) => panic!(
            "expected `gateway {}` to refuse to start, it got ready: {line}",
            args.join(" ")
        ),
        Outcome::Exited(status, _out, err) => {
            assert!(
                !status.success(),
                "expected a non-zero exit status from `gateway {}`, got {status}; stderr {err:?}",
                args.join(" ")
            );
            let lower = err.to_lowercase();
            assert!(
                names.iter().any(|n| lower.contains(n)),
                "expected stderr of `gateway {}` to name the setting (one of {names:?}), got {err:?}",
                args.join(" ")
            );
            err
        }
    }
}

/// Runs `gateway serve` with exactly `args` and asserts it gets ready.
fn assert_starts(args: &[&str], envs: &[(&str, &str)]) {
    match run_gateway_once(args, envs) {
        Outcome::Ready(_) => {}
        Outcome::Exited(status, out, err) => panic!(
            "expected `gateway {}` (env {envs:?}) to start, it exited with {status}; stdout {out:?}, stderr {err:?}",
            args.join(" ")
        ),
    }
}

const SECRET_NAMES: &[&str] = &["jwt_secret", "jwt-secret"];
const API_KEY_NAMES: &[&str] = &["api_key", "api-key"];
const LO: &str = "127.0.0.1:0";
const ANY: &str = "0.0.0.0:0";

/// `serve --listen <listen> --admin-listen <admin> --shards 1` and `extra`.
fn args<'a>(listen: &'a str, admin: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "serve",
        "--listen",
        listen,
        "--admin-listen",
        admin,
        "--shards",
        "1",
    ];
    v.extend_from_slice(extra);
    v
}

fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A public WebSocket listener without a configured HS256 secret is refused at start, with the
/// setting named on stderr; for IPv4 and (when the host has it) IPv6 unspecified addresses.
#[test]
fn public_listen_without_jwt_secret_is_refused() {
    assert_refuses(&args(ANY, LO, &["--api-key", API_KEY]), &[], SECRET_NAMES);
    // Saying HS256 explicitly changes nothing.
    let hs256 = ["--api-key", API_KEY, "--jwt-algorithm", "HS256"];
    assert_refuses(&args(ANY, LO, &hs256), &[], SECRET_NAMES);
    if ipv6_loopback_available() {
        assert_refuses(
            &args("[::]:0", LO, &["--api-key", API_KEY]),
            &[],
            SECRET_NAMES,
        );
    }
}

/// An empty secret or API key is no protection (anyone can sign with an empty HMAC key, and an
/// empty key matches a request without credentials): on a public address it counts as not
/// configured and the gateway refuses to start.
#[test]
fn empty_secret_or_api_key_counts_as_not_configured() {
    let empty_secret = ["--api-key", API_KEY, "--jwt-secret", ""];
    assert_refuses(&args(ANY, LO, &empty_secret), &[], SECRET_NAMES);
    let empty_key = ["--jwt-secret", SECRET, "--api-key", ""];
    assert_refuses(&args(LO, ANY, &empty_key), &[], API_KEY_NAMES);
}

/// A public admin listener without a configured API key is refused at start, with the setting
/// named on stderr, even when the JWT secret is set.
#[test]
fn public_admin_listen_without_api_key_is_refused() {
    assert_refuses(
        &args(LO, ANY, &["--jwt-secret", SECRET]),
        &[],
        API_KEY_NAMES,
    );
}

/// With the secret (flag or GATEWAY_AUTH__JWT_SECRET) and the API key configured, public
/// addresses are fine; a client reaches the gateway through loopback.
#[test]
fn public_listen_with_secret_starts_and_serves() {
    let both = ["--jwt-secret", SECRET, "--api-key", API_KEY];
    let gw = Gateway::start_exact(&args(ANY, ANY, &both), &[]);
    let mut c = gw.connect(&token("pub", &["room_*"], &[]));
    c.subscribe("room_pub");
    gw.publish(&json!({"channel": "room_pub", "data": 1}));
    let m = c.recv_message("room_pub");
    assert_eq!(
        m["data"], 1,
        "expected the published message on a public listener: {m}"
    );
    drop(gw);

    // The secret and key from the environment count as configured.
    let env = [
        ("GATEWAY_AUTH__JWT_SECRET", SECRET),
        ("GATEWAY_AUTH__API_KEY", API_KEY),
    ];
    assert_starts(&args(ANY, ANY, &[]), &env);
}

/// RS256 with a public key file needs no HS256 secret on a public address, and the development
/// secret is no way in there.
#[test]
fn public_listen_with_rs256_starts() {
    let key = key_path("rsa_public.pem");
    let rs = [
        "--api-key",
        API_KEY,
        "--jwt-algorithm",
        "RS256",
        "--jwt-public-key-file",
        &key,
    ];
    let gw = Gateway::start_exact(&args(ANY, LO, &rs), &[]);
    let t = sign_rs256(&claims("rs", &[], &[]), "rsa_private.pem");
    let c = Client::try_connect(gw.ws_addr, &t).unwrap_or_else(|r| {
        panic!(
            "expected an RS256 token to connect, got {} {:?}",
            r.status, r.body
        )
    });
    assert_eq!(c.user(), "rs", "expected the RS256 user in the welcome");
    let dev = sign_hs256(&claims("dev", &[], &[]), "dev-secret-change-me");
    match Client::try_connect(gw.ws_addr, &dev) {
        Ok(c) => panic!(
            "expected a dev-secret token to be refused on RS256: {}",
            c.welcome
        ),
        Err(r) => assert_eq!(
            r.status, 401,
            "expected 401 for a dev-secret token: {:?}",
            r.body
        ),
    }
}

/// A JWKS URL needs no HS256 secret on a public address either.
#[test]
fn public_listen_with_jwks_starts() {
    let jwks = JwksServer::start(vec![jwk_of(
        "rsa_private.pem",
        jsonwebtoken::Algorithm::RS256,
        "k1",
    )]);
    let url = jwks.url();
    assert_starts(
        &args(ANY, LO, &["--api-key", API_KEY, "--jwks-url", &url]),
        &[],
    );
}

/// Loopback addresses (127.0.0.1, the rest of 127/8, ::1) need no secret and no key: the
/// development set-up still works out of the box.
#[test]
fn loopback_without_secret_starts() {
    assert_starts(&args(LO, LO, &[]), &[]);
    assert_starts(&args("127.0.0.2:0", LO, &[]), &[]);
    if ipv6_loopback_available() {
        assert_starts(&args("[::1]:0", "[::1]:0", &[]), &[]);
    }
}

/// Without `--listen` the WebSocket listener is on 127.0.0.1:8080 (skipped when that port is
/// taken on this machine), and so the gateway starts without any secret.
#[test]
fn default_listen_is_loopback_8080() {
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("127.0.0.1:8080 is in use here; skipping the default-listen check");
        return;
    }
    match run_gateway_once(
        &["serve", "--admin-listen", "127.0.0.1:0", "--shards", "1"],
        &[],
    ) {
        Outcome::Ready(line) => assert!(
            line.contains("ws=127.0.0.1:8080"),
            "expected the default WebSocket listener on 127.0.0.1:8080, ready line {line:?}"
        ),
        Outcome::Exited(status, out, err) => {
            panic!(
                "expected the defaults to start, exited {status}; stdout {out:?}, stderr {err:?}"
            )
        }
    }
}

/// `gateway token` keeps working without any configuration: it prints a JWT.
#[test]
fn token_command_still_works() {
    let out = gateway_command(&["token", "--sub", "42", "--channels", "room_*"], &[])
        .output()
        .expect("running gateway token");
    assert!(
        out.status.success(),
        "expected `gateway token` to succeed, got {}; stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        t.split('.').count(),
        3,
        "expected a JWT on stdout, got {t:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Personal channels
// ---------------------------------------------------------------------------------------------

fn reply(c: &mut Client, req: serde_json::Value) -> serde_json::Value {
    let r = c.request(&req);
    assert_eq!(r["type"], "reply", "expected a reply to {req}, got {r}");
    r
}

/// Sends a publish and reads frames up to its reply; returns the reply and the frames before it.
fn publish_collect(
    c: &mut Client,
    req: serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    c.send_json(&req);
    let mut before = Vec::new();
    loop {
        let f = c.recv_json(WAIT);
        if f["type"] == "reply" && f["id"] == req["id"] {
            return (f, before);
        }
        before.push(f);
    }
}

fn assert_forbidden(r: &serde_json::Value, what: &str) {
    assert_eq!(r["ok"], false, "expected {what} to be refused: {r}");
    assert_eq!(
        r["error"]["code"], "forbidden",
        "expected code forbidden for {what}: {r}"
    );
}

/// With `channels: ["*"]` and `publish: ["*"]`, a client on either shard can neither subscribe nor
/// publish to another user's `user:` channel (forbidden), and nothing reaches that user; the same
/// grant still works for ordinary channels and for the client's own `user:<sub>`.
#[test]
fn star_grant_does_not_reach_other_users_channels() {
    let gw = Gateway::start_sharded(2, &[]);
    // Bob, the victim, on each shard (his channel's owner is whichever shard hashes it).
    let mut bobs = gw.clients_on_every_shard(1, |_| token("bob", &[], &[]));
    let mut eves = gw.clients_on_every_shard(1, |i| token(&format!("eve{i}"), &["*"], &["*"]));
    for eve in eves.iter_mut() {
        let shard = eve.shard();
        let r = reply(
            eve,
            json!({"type": "subscribe", "id": "s", "channel": "user:bob"}),
        );
        assert_forbidden(
            &r,
            &format!("subscribe to user:bob with channels [*] (shard {shard})"),
        );
        let r = reply(
            eve,
            json!({"type": "publish", "id": "p", "channel": "user:bob", "data": "spoof"}),
        );
        assert_forbidden(
            &r,
            &format!("publish to user:bob with publish [*] (shard {shard})"),
        );

        // The same grant for ordinary channels.
        let room = format!("room_{shard}");
        eve.subscribe(&room);
        let (rep, others) = publish_collect(
            eve,
            json!({"type": "publish", "id": "p2", "channel": room, "data": "hi"}),
        );
        assert_eq!(
            rep["ok"], true,
            "expected publish to {room} with [*] to be accepted: {rep}"
        );
        let m = match others.first() {
            Some(m) => m.clone(),
            None => eve.recv_json(WAIT),
        };
        assert_eq!(
            m["channel"],
            room.as_str(),
            "expected the publisher's own copy of its message: {m}"
        );

        // Its own personal channel stays allowed.
        let me = eve.user();
        let r = reply(
            eve,
            json!({"type": "subscribe", "id": "own", "channel": format!("user:{me}")}),
        );
        assert_eq!(
            r["ok"], true,
            "expected subscribing to the own user:{me} to be ok: {r}"
        );
    }
    for bob in bobs.iter_mut() {
        bob.expect_silence(QUIET);
    }
    // A service still reaches Bob.
    gw.publish(&json!({"channel": "user:bob", "data": "from service"}));
    for bob in bobs.iter_mut() {
        let m = bob.recv_message("user:bob");
        assert_eq!(
            m["data"], "from service",
            "expected the service's message for bob: {m}"
        );
    }
}

/// Patterns that merely look like a prefix of `user:` (`u*`, `user*`) do not match personal
/// channels either; only a pattern starting with `user:` does.
#[test]
fn only_user_colon_patterns_match_personal_channels() {
    let gw = Gateway::start_sharded(2, &[]);
    for pattern in ["u*", "user*", "us*"] {
        let mut cs =
            gw.clients_on_every_shard(1, |i| token(&format!("p{i}"), &[pattern], &[pattern]));
        for c in cs.iter_mut() {
            let r = reply(
                c,
                json!({"type": "subscribe", "id": "s", "channel": "user:bob"}),
            );
            assert_forbidden(
                &r,
                &format!("subscribe to user:bob with channels [{pattern}]"),
            );
            let r = reply(
                c,
                json!({"type": "publish", "id": "p", "channel": "user:bob", "data": 1}),
            );
            assert_forbidden(&r, &format!("publish to user:bob with publish [{pattern}]"));
        }
    }
}

/// `channels: ["user:*"]` and `publish: ["user:*"]` do reach other users' channels, across shards:
/// a subscriber of `user:bob` on one shard and a publisher on the other both work, and Bob gets it.
#[test]
fn user_colon_grant_reaches_personal_channels_across_shards() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut bobs = gw.clients_on_every_shard(1, |_| token("bob", &[], &[]));
    let mut admins =
        gw.clients_on_every_shard(1, |i| token(&format!("ops{i}"), &["user:*"], &["user:*"]));
    for a in admins.iter_mut() {
        a.subscribe("user:bob");
    }
    // The publisher on shard 0; the watcher on shard 1 and Bob on both receive it.
    let (rep, others) = publish_collect(
        &mut admins[0],
        json!({"type": "publish", "id": "p", "channel": "user:bob", "data": "note"}),
    );
    assert_eq!(
        rep["ok"], true,
        "expected publish to user:bob with [user:*] to be accepted: {rep}"
    );
    // The publisher is subscribed too: its copy comes before or after the reply.
    let own = match others.first() {
        Some(m) => m.clone(),
        None => admins[0].recv_json(WAIT),
    };
    assert_eq!(
        own["channel"], "user:bob",
        "expected the publisher's own copy: {own}"
    );
    let m = admins[1].recv_message("user:bob");
    assert_eq!(
        m["data"], "note",
        "expected the watcher on the other shard to get it: {m}"
    );
    for bob in bobs.iter_mut() {
        let m = bob.recv_message("user:bob");
        assert_eq!(m["data"], "note", "expected bob to get the message: {m}");
    }
}
