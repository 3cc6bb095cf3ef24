//! Production token checks: `aud`/`iss` against `--jwt-audience`/`--jwt-issuer`, and keys from a
//! JWKS document chosen by `kid`, with rotation, rate-limited refreshes on unknown kids, and an
//! outage that keeps the cached keys and shows as stale.
//!
//! The JWKS is served by a small HTTP server on loopback inside the test ([`JwksServer`]).

mod common;

use common::*;
use jsonwebtoken::Algorithm::{ES256, RS256};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn accepted(gw: &Gateway, token: &str, what: &str) -> Client {
    match Client::try_connect(gw.ws_addr, token) {
        Ok(c) => c,
        Err(r) => panic!(
            "expected {what} to be accepted, got {} {:?}",
            r.status, r.body
        ),
    }
}

fn assert_401(gw: &Gateway, token: &str, what: &str) {
    match Client::try_connect(gw.ws_addr, token) {
        Ok(c) => panic!(
            "expected {what} to be refused with 401, it connected: {}",
            c.welcome
        ),
        Err(r) => assert_eq!(r.status, 401, "expected 401 for {what}, body {:?}", r.body),
    }
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("claims object") {
        base[k] = v.clone();
    }
    base
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `result="ok"`).
fn metric_with_label(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// aud / iss
// ---------------------------------------------------------------------------------------------

/// Without audience or issuer configured, tokens carrying `aud` (string or array) and `iss` are
/// accepted like any other (they used to be refused as malformed).
#[test]
fn aud_and_iss_are_accepted_when_not_configured() {
    let gw = Gateway::start(&[]);
    let base = claims("42", &[], &[]);
    let t = sign_hs256(
        &with(
            base.clone(),
            json!({"aud": "svc", "iss": "https://idp.example"}),
        ),
        SECRET,
    );
    assert_eq!(accepted(&gw, &t, "a token with aud and iss").user(), "42");
    let t = sign_hs256(
        &with(base, json!({"aud": ["svc", "other"], "iss": "idp"})),
        SECRET,
    );
    assert_eq!(accepted(&gw, &t, "a token with an aud array").user(), "42");
}

/// With `--jwt-audience a,b --jwt-issuer x,y`, a token needs one of the audiences (as a string or
/// within an array) and one of the issuers; anything else, or a missing claim, is a 401.
#[test]
fn audience_and_issuer_must_match_when_configured() {
    let gw = Gateway::start(&["--jwt-audience", "a,b", "--jwt-issuer", "x,y"]);
    let base = claims("7", &[], &[]);
    let t = |extra: Value| sign_hs256(&with(base.clone(), extra), SECRET);

    for ok in [
        json!({"aud": "a", "iss": "x"}),
        json!({"aud": "b", "iss": "y"}),
        json!({"aud": ["zz", "b"], "iss": "y"}),
    ] {
        accepted(&gw, &t(ok.clone()), &format!("a token with {ok}"));
    }
    for (bad, what) in [
        (
            json!({"aud": "c", "iss": "x"}),
            "an audience not configured",
        ),
        (
            json!({"aud": ["c", "d"], "iss": "x"}),
            "an aud array without a configured audience",
        ),
        (json!({"aud": [], "iss": "x"}), "an empty aud array"),
        (
            json!({"aud": "a,b", "iss": "x"}),
            "the unsplit flag value as aud",
        ),
        (json!({"iss": "x"}), "a token without aud"),
        (json!({"aud": "a", "iss": "z"}), "an issuer not configured"),
        (json!({"aud": "a"}), "a token without iss"),
    ] {
        assert_401(&gw, &t(bad), what);
    }
}

/// Only the configured check applies: with an audience but no issuer, `iss` is not required.
#[test]
fn audience_alone_does_not_require_issuer() {
    let gw = Gateway::start(&["--jwt-audience", "push"]);
    let base = claims("9", &[], &[]);
    let t = |extra: Value| sign_hs256(&with(base.clone(), extra), SECRET);
    accepted(&gw, &t(json!({"aud": "push"})), "aud push without iss");
    accepted(
        &gw,
        &t(json!({"aud": "push", "iss": "anyone"})),
        "aud push with any iss",
    );
    assert_401(&gw, &t(json!({})), "a token without aud");
}

// ---------------------------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------------------------

/// A gateway verifying with the JWKS at `url` (no HS256 secret configured), one shard.
fn jwks_gateway(url: &str, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--api-key",
        API_KEY,
        "--jwks-url",
        url,
    ];
    args.extend_from_slice(extra);
    Gateway::start_exact(&args, &[])
}

fn k1() -> Value {
    jwk_of("rsa_private.pem", RS256, "k1")
}

fn k2() -> Value {
    jwk_of("rsa_other_private.pem", RS256, "k2")
}

fn e1() -> Value {
    jwk_of("ec_private.pem", ES256, "e1")
}

fn health(gw: &Gateway) -> (u16, Value) {
    let r = http_get(gw.admin_addr, "/health");
    let v = r.json();
    (r.status, v)
}

/// Polls `/health` until `pred` holds (at most `limit`); returns the last answer.
fn health_until(gw: &Gateway, limit: Duration, pred: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + limit;
    loop {
        let (s, v) = health(gw);
        if pred(s, &v) || Instant::now() >= deadline {
            return (s, v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keys come from the JWKS by the token's `kid`: RS256 and ES256 tokens with a served kid connect;
/// a wrong signature, a kid of the other key type, HS256 tokens (signed with the public key or
/// the development secret) are refused. The key count shows in the metrics.
#[test]
fn jwks_keys_are_chosen_by_kid() {
    let jwks = JwksServer::start(vec![k1(), e1()]);
    let gw = jwks_gateway(&jwks.url(), &[]);
    let c = claims("jw", &[], &[]);

    let kid = |file: &str, alg, kid: &str| sign_with_kid(&c, file, alg, kid);
    for (t, what) in [
        (kid("rsa_private.pem", RS256, "k1"), "RS256 kid k1"),
        (kid("ec_private.pem", ES256, "e1"), "ES256 kid e1"),
    ] {
        assert_eq!(
            accepted(&gw, &t, what).user(),
            "jw",
            "expected the user of {what}"
        );
    }
    for (t, what) in [
        (
            kid("rsa_other_private.pem", RS256, "k1"),
            "kid k1 signed by another key",
        ),
        (
            kid("rsa_private.pem", RS256, "e1"),
            "an RS256 token naming the EC kid",
        ),
        (
            kid("ec_private.pem", ES256, "k1"),
            "an ES256 token naming the RSA kid",
        ),
    ] {
        assert_401(&gw, &t, what);
    }

    // Algorithm confusion: HS256 keyed with the RSA public key, naming a served kid.
    let pem = std::fs::read_to_string(key_path("rsa_public.pem")).expect("public key fixture");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &h,
        &c,
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .expect("signing HS256");
    assert_401(&gw, &confused, "HS256 signed with the public key, kid k1");
    // No secret is configured, so the development secret must not be a way in.
    assert_401(
        &gw,
        &sign_hs256(&c, "dev-secret-change-me"),
        "HS256 with the development secret",
    );
    assert_401(&gw, &sign_hs256(&c, SECRET), "HS256 with some secret");

    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "gateway_jwks_keys"),
        2.0,
        "expected gateway_jwks_keys 2:\n{m}"
    );
    assert!(
        metric_with_label(&m, "gateway_jwks_refreshes_total", "result=\"ok\"") >= 1.0,
        "expected at least one ok JWKS refresh:\n{m}"
    );
    let (status, v) = health(&gw);
    assert_eq!(
        (status, &v["status"]),
        (200, &json!("ok")),
        "expected a healthy gateway: {v}"
    );
}

/// Rotation: when the JWKS starts serving k2 instead of k1, a token with kid k2 is accepted on its
/// first try (the unknown kid triggers a refresh the handshake waits for), and k1, no longer
/// served, stops working.
#[test]
fn rotated_key_is_fetched_on_unknown_kid() {
    let jwks = JwksServer::start(vec![k1()]);
    let gw = jwks_gateway(
        &jwks.url(),
        &[
            "--jwks-refresh-secs",
            "3600",
            "--jwks-min-refresh-ms",
            "200",
        ],
    );
    let c = claims("rot", &[], &[]);
    let old = sign_with_kid(&c, "rsa_private.pem", RS256, "k1");
    let mut first = accepted(&gw, &old, "kid k1 before the rotation");

    jwks.set_keys(vec![k2()]);
    let before = jwks.hits();
    // Past the minimum refresh interval since the fetch at start.
    std::thread::sleep(Duration::from_millis(600));
    let new = sign_with_kid(&c, "rsa_other_private.pem", RS256, "k2");
    accepted(
        &gw,
        &new,
        "kid k2 right after the rotation (unknown kid, refresh)",
    );
    assert!(
        jwks.hits() > before,
        "expected the unknown kid to fetch the JWKS again ({} hits)",
        jwks.hits()
    );

    // The connection made with k1 is not affected by the rotation.
    let r = first.request(&json!({"type": "ping", "id": "still"}));
    assert_eq!(
        r["type"], "pong",
        "expected the k1 connection to stay served: {r}"
    );

    std::thread::sleep(Duration::from_millis(400));
    assert_401(&gw, &old, "kid k1 after the JWKS stopped serving it");
    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "gateway_jwks_keys"),
        1.0,
        "expected gateway_jwks_keys 1 after rotation:\n{m}"
    );
    assert!(
        metric_with_label(&m, "gateway_jwks_refreshes_total", "result=\"ok\"") >= 2.0,
        "expected two ok refreshes (start, rotation):\n{m}"
    );
}

/// A kid the JWKS never serves is a 401; many such handshakes at once do not each fetch the
/// JWKS (refreshes on unknown kids are rate-limited, by default to one per 5 s).
#[test]
fn unknown_kid_is_refused_and_refreshes_are_rate_limited() {
    let jwks = JwksServer::start(vec![k1()]);
    let gw = jwks_gateway(&jwks.url(), &[]);
    let c = claims("unk", &[], &[]);
    assert_401(
        &gw,
        &sign_with_kid(&c, "rsa_other_private.pem", RS256, "never"),
        "an unknown kid",
    );

    let addr = gw.ws_addr;
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let t = sign_with_kid(&c, "rsa_other_private.pem", RS256, &format!("nope-{i}"));
            std::thread::spawn(move || match Client::try_connect(addr, &t) {
                Ok(c) => Err(format!("unknown kid nope-{i} connected: {}", c.welcome)),
                Err(r) if r.status == 401 => Ok(()),
                Err(r) => Err(format!("unknown kid nope-{i}: {} {:?}", r.status, r.body)),
            })
        })
        .collect();
    for h in handles {
        if let Err(e) = h.join().expect("handshake thread") {
            panic!("expected 401 for every unknown kid: {e}");
        }
    }
    let hits = jwks.hits();
    assert!(
        hits <= 4,
        "expected 13 unknown-kid handshakes in a few seconds to fetch the JWKS only a few times \
         (start + rate-limited refreshes), it was fetched {hits} times"
    );
    // A served kid still works.
    accepted(
        &gw,
        &sign_with_kid(&c, "rsa_private.pem", RS256, "k1"),
        "kid k1 after the unknown kids",
    );
}

/// The JWKS server goes away: cached keys keep working, `/health` stays 200 but says
/// `degraded` with `"jwks":"stale"`, `/stats` and the metrics show the failure; when it is back,
/// health recovers.
#[test]
fn jwks_outage_keeps_cached_keys_and_reports_stale() {
    let mut jwks = JwksServer::start(vec![k1()]);
    let addr = jwks.addr;
    let gw = jwks_gateway(
        &jwks.url(),
        &["--jwks-refresh-secs", "1", "--jwks-min-refresh-ms", "200"],
    );
    let c = claims("out", &[], &[]);
    let t1 = sign_with_kid(&c, "rsa_private.pem", RS256, "k1");
    accepted(&gw, &t1, "kid k1 with the JWKS up");
    let (status, v) = health(&gw);
    assert_eq!(
        (status, &v["status"]),
        (200, &json!("ok")),
        "expected ok health with the JWKS up: {v}"
    );

    jwks.stop();
    let (status, v) = health_until(&gw, Duration::from_secs(20), |_, v| v["jwks"] == "stale");
    assert_eq!(
        v["jwks"], "stale",
        "expected /health to report the JWKS stale within 20 s: {v}"
    );
    assert_eq!(
        status, 200,
        "expected /health to stay 200 while the JWKS is stale: {v}"
    );
    assert_eq!(
        v["status"], "degraded",
        "expected status degraded while the JWKS is stale: {v}"
    );

    accepted(&gw, &t1, "kid k1 from the cache during the outage");
    assert_401(
        &gw,
        &sign_with_kid(&c, "rsa_other_private.pem", RS256, "k2"),
        "an unknown kid during the outage",
    );

    let r = http_get(gw.admin_addr, "/stats");
    assert_eq!(r.status, 200, "expected /stats 200: {}", r.body);
    let s = r.json();
    assert_eq!(
        s["jwks"]["keys"], 1,
        "expected /stats jwks.keys 1 (cached): {}",
        s["jwks"]
    );
    assert!(
        s["jwks"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "expected /stats jwks.last_error to describe the failure: {}",
        s["jwks"]
    );
    let m = gw.metrics();
    assert!(
        metric_with_label(&m, "gateway_jwks_refreshes_total", "result=\"error\"") >= 1.0,
        "expected failed JWKS refreshes counted:\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "gateway_jwks_keys"),
        1.0,
        "expected the cached key still counted:\n{m}"
    );

    // Back on the same port: health recovers.
    let _back = JwksServer::start_on(addr, vec![k1()]);
    let (status, v) = health_until(&gw, Duration::from_secs(20), |s, v| {
        s == 200 && v["status"] == "ok"
    });
    assert_eq!(
        (status, &v["status"]),
        (200, &json!("ok")),
        "expected /health ok again within 20 s of the JWKS coming back: {v}"
    );
    assert_ne!(v["jwks"], "stale", "expected the JWKS no longer stale: {v}");
    accepted(&gw, &t1, "kid k1 after the outage");
}
