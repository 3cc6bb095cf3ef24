//! JWT verification before the upgrade (and on `refresh`), and the channel permissions carried by
//! the claims. Keys come from the configuration (an HS256 secret, a PEM public key) or from a JWKS
//! document fetched and refreshed by `jwks`.

pub mod jwks;

use crate::config::{AuthConfig, JwtAlgorithm, DEV_JWT_SECRET};
use anyhow::{Context, Result};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use jwks::Jwks;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;

/// Why a token was refused; the label is the 401 body and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    Algorithm,
    Expired,
    NotYetValid,
    MissingExp,
    MissingSub,
    Audience,
    Issuer,
    UnknownKey,
}

impl AuthError {
    pub const ALL: [AuthError; 11] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::Algorithm,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::MissingExp,
        AuthError::MissingSub,
        AuthError::Audience,
        AuthError::Issuer,
        AuthError::UnknownKey,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Algorithm => "algorithm_not_allowed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::MissingExp => "missing_exp",
            AuthError::MissingSub => "missing_sub",
            AuthError::Audience => "bad_audience",
            AuthError::Issuer => "bad_issuer",
            AuthError::UnknownKey => "unknown_key",
        }
    }

    pub fn index(self) -> usize {
        AuthError::ALL
            .iter()
            .position(|e| *e == self)
            .unwrap_or_default()
    }
}

/// Claims the gateway reads. `sub` must be a non-empty string (RFC 7519 StringOrURI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "non_empty")]
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom("sub must be a non-empty string"));
    }
    Ok(s)
}

/// Where verification keys come from.
enum Keys {
    /// One configured key and algorithm.
    Fixed(Box<(DecodingKey, Validation)>),
    /// Keys chosen by the token's `kid`, from a JWKS document kept fresh by `jwks`.
    Jwks(Arc<Jwks>),
}

/// Verifies tokens: signature, algorithm, `exp`/`nbf`, `sub`, and `aud`/`iss` when configured.
pub struct Verifier {
    keys: Keys,
}

/// The claim checks every key shares.
fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway_secs;
    v.validate_nbf = true;
    v.validate_exp = true;
    let mut required = vec!["exp", "sub"];
    if cfg.audience.is_empty() {
        // Tokens from identity providers carry an `aud`; without a configured audience it is
        // not checked (rather than refused).
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audience);
        required.push("aud");
    }
    if !cfg.issuer.is_empty() {
        v.set_issuer(&cfg.issuer);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier> {
        if let Some(url) = &cfg.jwks_url {
            let jwks = Jwks::new(url, cfg)?;
            return Ok(Verifier {
                keys: Keys::Jwks(Arc::new(jwks)),
            });
        }
        let (alg, key) = match cfg.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                let secret = cfg.jwt_secret.as_deref().unwrap_or(DEV_JWT_SECRET);
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let path = cfg
                    .jwt_public_key_file
                    .as_ref()
                    .context("auth.jwt_public_key_file is required for RS256/ES256")?;
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading JWT public key {}", path.display()))?;
                if cfg.jwt_algorithm == JwtAlgorithm::RS256 {
                    let key = DecodingKey::from_rsa_pem(&pem).with_context(|| {
                        format!("{} is not an RSA public key PEM", path.display())
                    })?;
                    (Algorithm::RS256, key)
                } else {
                    let key = DecodingKey::from_ec_pem(&pem).with_context(|| {
                        format!("{} is not an EC public key PEM", path.display())
                    })?;
                    (Algorithm::ES256, key)
                }
            }
        };
        Ok(Verifier {
            keys: Keys::Fixed(Box::new((key, validation(cfg, alg)))),
        })
    }

    /// The JWKS cache, when keys come from one (the admin thread keeps it fresh).
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.keys {
            Keys::Jwks(j) => Some(j),
            Keys::Fixed(..) => None,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let decoded = match &self.keys {
            Keys::Fixed(k) => jsonwebtoken::decode::<Claims>(token, &k.0, &k.1),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| classify(e.kind()))?;
                // Without a `kid` no key can be chosen: refused at once, no fetch.
                let kid = header.kid.ok_or(AuthError::Malformed)?;
                let keys = jwks.keys();
                let (key, validation) = keys.get(&kid).ok_or(AuthError::UnknownKey)?;
                jsonwebtoken::decode::<Claims>(token, key, validation)
            }
        };
        decoded.map(|d| d.claims).map_err(|e| classify(e.kind()))
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
        ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthError::MissingSub,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        // The claims failed to deserialize: a missing or empty `sub` is the common case.
        ErrorKind::Json(e) => {
            let m = e.to_string();
            if m.contains("missing field `sub`") || m.contains("sub must be") {
                AuthError::MissingSub
            } else if m.contains("missing field `exp`") {
                AuthError::MissingExp
            } else {
                AuthError::Malformed
            }
        }
        _ => AuthError::Malformed,
    }
}

/// Does a claim's pattern list allow `channel`? A trailing `*` matches any suffix. Personal channels
/// are private: a pattern reaches a `user:` channel only if it starts with `user:` itself, so `*`
/// or `u*` never do; another user's channel needs an explicit grant.
pub fn allows(patterns: &[String], channel: &str) -> bool {
    let personal = channel.starts_with("user:");
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix) && (!personal || prefix.starts_with("user:")),
        None => p == channel,
    })
}

impl Claims {
    /// Gives back the spare capacity decoding left in the claim lists: a session holds its claims
    /// for its whole life.
    pub fn shrink(&mut self) {
        for list in [&mut self.channels, &mut self.publish]
            .into_iter()
            .flatten()
        {
            list.shrink_to_fit();
        }
    }

    pub fn user_channel(&self) -> String {
        format!("user:{}", self.sub)
    }

    /// May this user subscribe to `channel`? Without a `channels` claim only its own channels.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        // The user's own channel, compared without building its name (once per subscribe).
        let own = channel.strip_prefix("user:") == Some(self.sub.as_str());
        if channel == crate::topology::BROADCAST || own {
            return true;
        }
        self.channels.as_deref().is_some_and(|p| allows(p, channel))
    }

    /// May this user publish to `channel`? Only what the `publish` claim names.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.as_deref().is_some_and(|p| allows(p, channel))
    }
}

/// Mints an HS256 token, for `gateway token` and for tests.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn verifier() -> Verifier {
        Verifier::from_config(&AuthConfig {
            jwt_secret: Some("s3cret".into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "42".into(),
            exp,
            nbf: None,
            channels: Some(vec!["room_*".into(), "lobby".into()]),
            publish: None,
        }
    }

    #[test]
    fn patterns() {
        let p = vec!["room_*".to_string(), "lobby".to_string()];
        assert!(allows(&p, "room_1"));
        assert!(allows(&p, "room_"));
        assert!(allows(&p, "lobby"));
        assert!(!allows(&p, "lobby2"));
        assert!(!allows(&p, "roo"));
        assert!(allows(&["*".to_string()], "anything"));
    }

    #[test]
    fn wildcards_never_reach_personal_channels() {
        let any = vec!["*".to_string()];
        assert!(!allows(&any, "user:7"));
        assert!(!allows(&["u*".to_string()], "user:7"));
        assert!(!allows(&["user*".to_string()], "user:7"));
        assert!(allows(&["user:*".to_string()], "user:7"));
        assert!(allows(&["user:7".to_string()], "user:7"));
        assert!(allows(&["user:1*".to_string()], "user:17"));
        let mut c = claims(now() + 60);
        c.channels = Some(any.clone());
        c.publish = Some(any);
        assert!(c.may_subscribe("user:42"), "its own channel");
        assert!(!c.may_subscribe("user:43"));
        assert!(!c.may_publish("user:43"));
        assert!(
            !c.may_publish("user:42"),
            "publishing to its own needs a grant too"
        );
    }

    #[test]
    fn own_channels_without_claim() {
        let mut c = claims(now() + 60);
        c.channels = None;
        assert!(c.may_subscribe("user:42"));
        assert!(c.may_subscribe("broadcast"));
        assert!(!c.may_subscribe("user:43"));
        assert!(!c.may_subscribe("room_1"));
        assert!(!c.may_publish("user:42"));
    }

    #[test]
    fn verify_classifies_refusals() {
        let v = verifier();
        let ok = mint_hs256("s3cret", &claims(now() + 60)).unwrap();
        assert_eq!(v.verify(&ok).unwrap().sub, "42");
        let expired = mint_hs256("s3cret", &claims(now() - 60)).unwrap();
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let wrong = mint_hs256("other", &claims(now() + 60)).unwrap();
        assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::BadSignature);
        assert_eq!(v.verify("").unwrap_err(), AuthError::Missing);
        assert_eq!(v.verify("a.b.c").unwrap_err(), AuthError::Malformed);
        // `alg: none` with no signature.
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"42","exp":{}}}"#, now() + 60))
        );
        let err = v.verify(&none).unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed | AuthError::Algorithm),
            "{err:?}"
        );
        let no_sub = format!(
            "{}.{}.",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(&format!(r#"{{"exp":{}}}"#, now() + 60))
        );
        assert_ne!(v.verify(&no_sub).unwrap_err(), AuthError::MissingExp);
    }
}
