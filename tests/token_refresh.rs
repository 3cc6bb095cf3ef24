//! Token refresh without reconnecting: `refresh_due` before `exp`, a `refresh` request that
//! replaces the token (same `sub` only), subscriptions the new grant no longer allows ended with
//! `unsubscribed`, and close 1008 at `exp` only for connections that did not refresh.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Sends `req` and reads frames up to its reply or pong (matching `id`); returns it and the frames
/// that came before it.
fn request_collect(c: &mut Client, req: &Value) -> (Value, Vec<Value>) {
    c.send_json(req);
    let mut before = Vec::new();
    loop {
        let f = c.recv_json(WAIT);
        if (f["type"] == "reply" || f["type"] == "pong") && f["id"] == req["id"] {
            return (f, before);
        }
        before.push(f);
    }
}

/// Like [`request_collect`], asserting that nothing but `refresh_due` came before the reply.
fn request(c: &mut Client, req: &Value) -> Value {
    let (r, before) = request_collect(c, req);
    for f in &before {
        assert_eq!(
            f["type"], "refresh_due",
            "expected only the reply to {req} (or refresh_due), got {f}"
        );
    }
    r
}

fn refresh(c: &mut Client, id: &str, token: &str) -> (Value, Vec<Value>) {
    request_collect(c, &json!({"type": "refresh", "id": id, "token": token}))
}

/// The next frame that is not `refresh_due`.
fn next_skipping_due(c: &mut Client) -> Value {
    loop {
        let f = c.recv_json(WAIT);
        if f["type"] != "refresh_due" {
            return f;
        }
    }
}

fn hs(sub: &str, exp: u64, channels: &[&str], publish: &[&str]) -> String {
    sign_hs256(
        &json!({"sub": sub, "exp": exp, "channels": channels, "publish": publish}),
        SECRET,
    )
}

fn assert_forbidden(r: &Value, what: &str) {
    assert_eq!(r["type"], "reply", "expected a reply to {what}: {r}");
    assert_eq!(r["ok"], false, "expected {what} to be refused: {r}");
    assert_eq!(
        r["error"]["code"], "forbidden",
        "expected code forbidden for {what}: {r}"
    );
}

/// A token 4 s from expiry with `--refresh-notice-secs 2`: `refresh_due` (with the old `exp`)
/// arrives; a refresh with a token valid for 60 s is answered ok with the new `expires`; the
/// connection is not closed at the old `exp` and still gets messages. A second connection of the
/// same token that never refreshes gets `refresh_due` and then close 1008.
#[test]
fn refresh_before_exp_keeps_the_connection() {
    let gw = Gateway::start(&["--refresh-notice-secs", "2"]);
    let exp = now_secs() + 4;
    let t = hs("fresh", exp, &["room_*"], &[]);
    let mut c = gw.connect(&t);
    let mut lazy = gw.connect(&t);
    assert_eq!(
        c.welcome["expires"], exp,
        "expected the welcome to carry the token's exp"
    );
    c.subscribe("room_f");
    lazy.subscribe("room_f");

    let due = c.recv_json(Duration::from_secs(10));
    assert_eq!(
        due["type"], "refresh_due",
        "expected refresh_due before exp, got {due}"
    );
    assert_eq!(
        due["expires"], exp,
        "expected refresh_due to carry the current exp: {due}"
    );

    let new_exp = now_secs() + 60;
    let (r, before) = refresh(&mut c, "r1", &hs("fresh", new_exp, &["room_*"], &[]));
    assert!(
        before.is_empty(),
        "expected nothing before the refresh reply, got {before:?}"
    );
    assert_eq!(r["ok"], true, "expected the refresh to be accepted: {r}");
    assert_eq!(
        r["expires"], new_exp,
        "expected the refresh reply to carry the new exp: {r}"
    );

    // Wait past the old exp (plus slack): no close, no other frame.
    let past = (exp + 2).saturating_sub(now_secs()).max(1);
    c.expect_silence(Duration::from_secs(past));
    assert!(now_secs() > exp, "the wait must end after the old exp");
    gw.publish(&json!({"channel": "room_f", "data": "after"}));
    let m = c.recv_message("room_f");
    assert_eq!(
        m["data"], "after",
        "expected messages after the old exp on the refreshed connection: {m}"
    );
    let r = c.request(&json!({"type": "ping", "id": "alive"}));
    assert_eq!(
        r["type"], "pong",
        "expected the refreshed connection to be served: {r}"
    );

    let skipped = lazy.expect_close(1008, Duration::from_secs(10));
    assert!(
        skipped.iter().any(|f| f["type"] == "refresh_due" && f["expires"] == exp),
        "expected refresh_due before the 1008 close on the connection that did not refresh: {skipped:?}"
    );
}

/// A refresh with a token for another `sub`, a malformed one, a wrongly signed one or an expired
/// one is answered `forbidden`; the connection stays open with its old token: its grants still
/// apply, it is told `refresh_due` (the notice is at most half the remaining life, here under the
/// default 60 s) and it is closed with 1008 at the old `exp`.
#[test]
fn refused_refresh_keeps_the_old_token() {
    let gw = Gateway::start(&[]);
    let exp = now_secs() + 6;
    let mut c = gw.connect(&hs("keep", exp, &["room_*"], &["room_*"]));
    c.subscribe("room_k");
    let later = now_secs() + 3600;

    let cases = [
        (
            "a token for another sub",
            hs("someone-else", later, &["*"], &["*"]),
        ),
        ("a malformed token", "garbage".to_string()),
        (
            "a token with a wrong signature",
            sign_hs256(&json!({"sub": "keep", "exp": later}), "wrong-secret"),
        ),
        (
            "an expired token",
            hs("keep", now_secs() - 60, &["room_*"], &[]),
        ),
    ];
    for (i, (what, t)) in cases.iter().enumerate() {
        let r = request(&mut c, &json!({"type": "refresh", "id": i, "token": t}));
        assert_forbidden(&r, &format!("a refresh with {what}"));
    }

    // An empty token is refused too (forbidden or bad_request).
    let r = request(
        &mut c,
        &json!({"type": "refresh", "id": "empty", "token": ""}),
    );
    assert_eq!(
        r["ok"], false,
        "expected a refresh with an empty token to be refused: {r}"
    );

    // Still open, still with the old grants.
    let r = request(&mut c, &json!({"type": "ping", "id": "p"}));
    assert_eq!(
        r["type"], "pong",
        "expected the connection to stay open after refused refreshes: {r}"
    );
    let r = request(
        &mut c,
        &json!({"type": "subscribe", "id": "s", "channel": "room_k2"}),
    );
    assert_eq!(
        r["ok"], true,
        "expected the old channels grant to still apply: {r}"
    );
    let r = request(
        &mut c,
        &json!({"type": "subscribe", "id": "s2", "channel": "other"}),
    );
    assert_forbidden(
        &r,
        "a subscribe the other sub's [*] grant would have allowed",
    );
    gw.publish(&json!({"channel": "room_k", "data": 1}));
    let m = next_skipping_due(&mut c);
    assert_eq!(
        m["channel"], "room_k",
        "expected the message of the kept subscription: {m}"
    );

    let skipped = c.expect_close(1008, Duration::from_secs(12));
    assert!(
        skipped
            .iter()
            .any(|f| f["type"] == "refresh_due" && f["expires"] == exp),
        "expected refresh_due (old exp) before the 1008 close: {skipped:?}"
    );
}

/// A refresh with a narrower grant ends the subscriptions it no longer allows, each announced by
/// `unsubscribed` (channel, reason) before the reply, on connections of either shard and for
/// channels owned by either shard. `channels: ["*"]` no longer covers a `user:` channel of
/// someone else. Messages of the remaining channels (and the own `user:<sub>`) still arrive, the
/// ended ones do not, and the new grant applies to later requests.
#[test]
fn narrower_grant_ends_subscriptions() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut clients = gw.clients_on_every_shard(1, |i| {
        token(&format!("n{i}"), &["room_*", "user:*"], &["room_*"])
    });
    for c in clients.iter_mut() {
        let me = c.user();
        let shard = c.shard();
        // One channel owned by each shard, named per client.
        let keep = channel_owned_by(&format!("room_{me}_keep"), 0, 2);
        let drop = channel_owned_by(&format!("room_{me}_drop"), 1, 2);
        let watched = format!("user:watched-by-{me}");
        c.subscribe(&keep);
        c.subscribe(&drop);
        c.subscribe(&watched);

        // ["*"] still covers both rooms but not someone else's user: channel.
        let t1 = sign_hs256(
            &json!({"sub": me, "exp": now_secs() + 3600, "channels": ["*"], "publish": ["room_*"]}),
            SECRET,
        );
        let (r, before) = refresh(c, "r1", &t1);
        assert_eq!(
            r["ok"], true,
            "expected the refresh to [*] to be accepted (shard {shard}): {r}"
        );
        assert_eq!(
            before.len(),
            1,
            "expected exactly one unsubscribed before the reply: {before:?}"
        );
        assert_eq!(
            before[0]["type"], "unsubscribed",
            "expected an unsubscribed frame: {}",
            before[0]
        );
        assert_eq!(
            before[0]["channel"],
            watched.as_str(),
            "expected {watched} to end: {}",
            before[0]
        );
        assert!(
            !before[0]["reason"].is_null(),
            "expected a reason in {}",
            before[0]
        );

        // Only `keep`, and no publishing at all.
        let t2 = sign_hs256(
            &json!({"sub": me, "exp": now_secs() + 3600, "channels": [keep]}),
            SECRET,
        );
        let (r, before) = refresh(c, "r2", &t2);
        assert_eq!(
            r["ok"], true,
            "expected the refresh to [{keep}] to be accepted: {r}"
        );
        let ended: Vec<&Value> = before
            .iter()
            .filter(|f| f["type"] == "unsubscribed")
            .collect();
        assert_eq!(
            before.len(),
            1,
            "expected exactly one frame (unsubscribed {drop}) before the reply: {before:?}"
        );
        assert_eq!(
            ended.len(),
            1,
            "expected one unsubscribed frame: {before:?}"
        );
        assert_eq!(
            ended[0]["channel"],
            drop.as_str(),
            "expected {drop} to end: {}",
            ended[0]
        );
        assert!(
            !ended[0]["reason"].is_null(),
            "expected a reason in {}",
            ended[0]
        );

        // The ended ones are silent, the kept one and the own channel deliver.
        gw.publish(&json!({"channel": drop, "data": "dropped"}));
        gw.publish(&json!({"channel": watched, "data": "watched"}));
        gw.publish(&json!({"channel": keep, "data": "kept"}));
        gw.publish(&json!({"channel": format!("user:{me}"), "data": "mine"}));
        let mut got: Vec<String> = (0..2)
            .map(|_| {
                let m = c.recv_json(WAIT);
                assert_eq!(m["type"], "message", "expected a message, got {m}");
                m["data"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            ["kept", "mine"],
            "expected only the kept channel and user:{me} to deliver"
        );
        c.expect_silence(QUIET);

        // The new grant applies to requests.
        let r = c.request(&json!({"type": "subscribe", "id": "again", "channel": drop}));
        assert_forbidden(
            &r,
            &format!("subscribing again to {drop} after the narrower refresh"),
        );
        let r = c.request(&json!({"type": "publish", "id": "pub", "channel": keep, "data": 1}));
        assert_forbidden(&r, "publishing after a refresh to a token without publish");
        let r = c.request(&json!({"type": "unsubscribe", "id": "u", "channel": drop}));
        assert_eq!(
            r["ok"], false,
            "expected unsubscribing an ended subscription to fail: {r}"
        );
        assert_eq!(
            r["error"]["code"], "not_found",
            "expected not_found for an ended subscription: {r}"
        );
    }
}

/// A refreshed connection still expires: after a refresh to a token only a few seconds longer,
/// `refresh_due` comes again with the new `exp` and the connection is closed with 1008 after
/// that, not at the old `exp` and not never.
#[test]
fn refreshed_connection_expires_at_the_new_exp() {
    let gw = Gateway::start(&["--refresh-notice-secs", "1"]);
    let exp = now_secs() + 3;
    let mut c = gw.connect(&hs("again", exp, &[], &[]));
    let new_exp = exp + 3;
    let (r, _) = refresh(&mut c, "r", &hs("again", new_exp, &[], &[]));
    assert_eq!(r["ok"], true, "expected the refresh to be accepted: {r}");
    assert_eq!(
        r["expires"], new_exp,
        "expected the new exp in the reply: {r}"
    );
    let skipped = c.expect_close(1008, Duration::from_secs(15));
    assert!(
        now_secs() >= new_exp,
        "expected the close at the new exp {new_exp}, not at the old {exp}"
    );
    assert!(
        skipped
            .iter()
            .any(|f| f["type"] == "refresh_due" && f["expires"] == new_exp),
        "expected refresh_due with the new exp before the close: {skipped:?}"
    );
}

/// A refresh is checked like a connect: on a gateway with `--jwt-audience push`, a new token
/// without that audience is refused (`forbidden`) and the connection keeps its old token.
#[test]
fn refresh_token_is_checked_like_a_connect() {
    let gw = Gateway::start(&["--jwt-audience", "push"]);
    let later = now_secs() + 3600;
    let t = |aud: Value| sign_hs256(&json!({"sub": "aud", "exp": later, "aud": aud}), SECRET);
    let mut c = gw.connect(&t(json!("push")));
    let (r, _) = refresh(&mut c, "bad-aud", &t(json!("elsewhere")));
    assert_forbidden(&r, "a refresh with a token for another audience");
    let no_aud = sign_hs256(&json!({"sub": "aud", "exp": later}), SECRET);
    let (r, _) = refresh(&mut c, "no-aud", &no_aud);
    assert_forbidden(&r, "a refresh with a token without aud");
    let (r, _) = refresh(&mut c, "good", &t(json!(["x", "push"])));
    assert_eq!(
        r["ok"], true,
        "expected a refresh with the configured audience to be accepted: {r}"
    );
}
