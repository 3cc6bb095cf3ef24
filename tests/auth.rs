//! Authentication before the upgrade: every refusal is an HTTP 401 with the reason in the body,
//! for HS256, RS256 and ES256; valid tokens connect through the query parameter or the header.

mod common;

use common::*;
use serde_json::json;

fn refused(gw: &Gateway, token: &str) -> Refused {
    match Client::try_connect(gw.ws_addr, token) {
        Ok(c) => panic!("token was accepted: welcome {}", c.welcome),
        Err(r) => r,
    }
}

fn assert_401(gw: &Gateway, token: &str, reason: &str) {
    let r = refused(gw, token);
    assert_eq!(r.status, 401, "status for {reason}: body {:?}", r.body);
    assert!(
        r.body.contains(reason),
        "401 body names the reason {reason}: {:?}",
        r.body
    );
}

fn b64(v: &serde_json::Value) -> String {
    base64url(v.to_string().as_bytes())
}

#[test]
fn hs256_refusals_are_401_with_reason() {
    let gw = Gateway::start(&[]);
    let now = now_secs();

    assert_401(&gw, "", "missing_token");
    assert_401(&gw, "garbage", "malformed_token");
    assert_401(&gw, "a.b.c", "malformed_token");

    let wrong_secret = sign_hs256(&claims("42", &[], &[]), "some-other-secret");
    assert_401(&gw, &wrong_secret, "bad_signature");

    let expired = sign_hs256(&json!({"sub": "42", "exp": now - 120}), SECRET);
    assert_401(&gw, &expired, "token_expired");

    let not_yet = sign_hs256(
        &json!({"sub": "42", "exp": now + 3600, "nbf": now + 1800}),
        SECRET,
    );
    assert_401(&gw, &not_yet, "token_not_yet_valid");

    let no_sub = sign_hs256(&json!({"exp": now + 3600}), SECRET);
    assert_401(&gw, &no_sub, "missing_sub");

    let no_exp = sign_hs256(&json!({"sub": "42"}), SECRET);
    assert_401(&gw, &no_exp, "missing_exp");

    // The failures are counted by reason.
    let m = gw.metrics();
    assert_eq!(metric_sum(&m, "gateway_auth_failures_total"), 8.0, "{m}");
    for reason in [
        "missing_token",
        "bad_signature",
        "token_expired",
        "token_not_yet_valid",
        "missing_sub",
        "missing_exp",
    ] {
        let label = format!("reason=\"{reason}\"");
        let line = m
            .lines()
            .find(|l| l.starts_with("gateway_auth_failures_total") && l.contains(&label))
            .unwrap_or_else(|| panic!("no auth failure sample for {reason}: {m}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
}

#[test]
fn alg_none_is_refused() {
    let gw = Gateway::start(&[]);
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let payload = b64(&claims("42", &["*"], &["*"]));
    // Unsigned: empty signature, with and without the trailing dot.
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let r = refused(&gw, &token);
        assert_eq!(r.status, 401, "alg none: {:?}", r.body);
    }
    // Signed with the secret but claiming alg none does not help either.
    let sig = sign_hs256(&claims("42", &[], &[]), SECRET);
    let sig = sig.rsplit('.').next().unwrap();
    let r = refused(&gw, &format!("{header}.{payload}.{sig}"));
    assert_eq!(r.status, 401, "alg none with a signature: {:?}", r.body);
}

#[test]
fn valid_token_in_query_or_bearer_header() {
    let gw = Gateway::start(&[]);
    let t = token("42", &[], &[]);
    let c = Client::try_connect(gw.ws_addr, &t).expect("query token accepted");
    assert_eq!(c.user(), "42");
    let c2 = Client::try_connect_bearer(gw.ws_addr, &t).expect("bearer token accepted");
    assert_eq!(c2.user(), "42");
    // A bad token in the header is refused like one in the query.
    match Client::try_connect_bearer(gw.ws_addr, "garbage") {
        Ok(c) => panic!("garbage bearer token accepted: {}", c.welcome),
        Err(r) => assert_eq!(r.status, 401, "{:?}", r.body),
    }
}

#[test]
fn rs256_public_key() {
    let key = key_path("rsa_public.pem");
    let gw = Gateway::start(&["--jwt-algorithm", "RS256", "--jwt-public-key-file", &key]);
    let c = claims("42", &[], &[]);

    let good = sign_rs256(&c, "rsa_private.pem");
    let client = Client::try_connect(gw.ws_addr, &good).expect("RS256 token accepted");
    assert_eq!(client.user(), "42");

    let other = sign_rs256(&c, "rsa_other_private.pem");
    assert_401(&gw, &other, "bad_signature");

    let hs = sign_hs256(&c, SECRET);
    let r = refused(&gw, &hs);
    assert_eq!(
        r.status, 401,
        "HS256 token on an RS256 gateway: {:?}",
        r.body
    );

    // Algorithm confusion: HS256 keyed with the public key PEM must not pass.
    let pem = std::fs::read_to_string(&key).unwrap();
    let confused = sign_hs256(&c, &pem);
    let r = refused(&gw, &confused);
    assert_eq!(r.status, 401, "HS256-with-public-key token: {:?}", r.body);

    let es = sign_es256(&c, "ec_private.pem");
    let r = refused(&gw, &es);
    assert_eq!(
        r.status, 401,
        "ES256 token on an RS256 gateway: {:?}",
        r.body
    );

    let expired = sign_rs256(
        &json!({"sub": "42", "exp": now_secs() - 120}),
        "rsa_private.pem",
    );
    assert_401(&gw, &expired, "token_expired");
}

#[test]
fn es256_public_key() {
    let key = key_path("ec_public.pem");
    let gw = Gateway::start(&["--jwt-algorithm", "ES256", "--jwt-public-key-file", &key]);
    let c = claims("7", &[], &[]);

    let good = sign_es256(&c, "ec_private.pem");
    let client = Client::try_connect(gw.ws_addr, &good).expect("ES256 token accepted");
    assert_eq!(client.user(), "7");

    let rs = sign_rs256(&c, "rsa_private.pem");
    let r = refused(&gw, &rs);
    assert_eq!(
        r.status, 401,
        "RS256 token on an ES256 gateway: {:?}",
        r.body
    );

    let hs = sign_hs256(&c, SECRET);
    let r = refused(&gw, &hs);
    assert_eq!(
        r.status, 401,
        "HS256 token on an ES256 gateway: {:?}",
        r.body
    );
}
