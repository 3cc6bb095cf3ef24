//! Verification keys from a JWKS document (`auth.jwks_url`), as identity providers publish and
//! rotate them: RS256 and ES256 keys chosen by the token's `kid`. The admin thread fetches the
//! document at start, every `auth.jwks_refresh_secs`, and again when a shard meets an unknown `kid`
//! (at most once per `auth.jwks_min_refresh_ms`). Shards read the current keys without a lock; a
//! failed fetch keeps the keys already known and is reported (`/health`, `/stats`, metrics).

use crate::config::AuthConfig;
use anyhow::{anyhow, bail, Context, Result};
use arc_swap::{ArcSwap, Guard};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1 << 20;
/// One fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys by `kid`, each with the checks its algorithm needs.
pub type KeySet = HashMap<String, (DecodingKey, Validation)>;

/// How the last fetches went.
#[derive(Default, Clone)]
pub struct Status {
    pub last_attempt: Option<Instant>,
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
}

pub struct Jwks {
    url: String,
    cfg: AuthConfig,
    keys: ArcSwap<KeySet>,
    status: ArcSwap<Status>,
    /// Bumped after every fetch, so a handshake waiting for one can tell it happened.
    generation: AtomicU64,
    /// A shard met a `kid` it does not know.
    wanted: AtomicBool,
    /// A fetch is under way.
    fetching: AtomicBool,
}

impl Jwks {
    pub fn new(url: &str, cfg: &AuthConfig) -> Result<Jwks> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("auth.jwks_url {url:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("auth.jwks_url must be http:// or https://, got {url:?}");
        }
        Ok(Jwks {
            url: url.to_string(),
            cfg: cfg.clone(),
            keys: ArcSwap::from_pointee(KeySet::new()),
            status: ArcSwap::from_pointee(Status::default()),
            generation: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
        })
    }

    /// The keys known now.
    pub fn keys(&self) -> Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Asks for a fetch soon (an unknown `kid`: the provider may have rotated its keys). True if
    /// one will start within moments; false if the last one is too recent (`jwks_min_refresh_ms`),
    /// so waiting for it would only hold the handshake.
    pub fn request_refresh(&self) -> bool {
        self.wanted.store(true, Ordering::Relaxed);
        let min_gap = Duration::from_millis(self.cfg.jwks_min_refresh_ms);
        self.fetching.load(Ordering::Acquire)
            || self
                .status
                .load()
                .last_attempt
                .is_none_or(|t| t.elapsed() >= min_gap)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last fetch failed (the keys in use are what an earlier one brought).
    pub fn stale(&self) -> bool {
        self.status.load().last_error.is_some()
    }

    pub fn to_json(&self) -> Value {
        let s = self.status.load();
        json!({
            "url": self.url,
            "keys": self.keys.load().len(),
            "last_ok_secs_ago": s.last_ok.map(|t| t.elapsed().as_secs()),
            "last_error": s.last_error,
        })
    }

    /// Parses a JWKS document into keys; keys without a `kid` or of other algorithms are skipped.
    pub fn parse(body: &[u8], cfg: &AuthConfig) -> Result<KeySet> {
        let set: JwkSet = serde_json::from_slice(body).context("not a JWKS document")?;
        let mut out = KeySet::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(_)) => {
                    Algorithm::ES256
                }
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            out.insert(kid.clone(), (key, super::validation(cfg, alg)));
        }
        // An empty answer is more likely a broken provider than a real rotation to no keys: the
        // keys known stay in use.
        if out.is_empty() {
            bail!("no RS256 or ES256 key with a kid in the JWKS");
        }
        Ok(out)
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<KeySet> {
        let resp = client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| anyhow!("fetching {}: {e}", self.url))?;
        if !resp.status().is_success() {
            bail!("fetching {}: HTTP {}", self.url, resp.status());
        }
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            bail!(
                "fetching {}: document larger than {MAX_BODY} bytes",
                self.url
            );
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading {}: {e}", self.url))?;
        if body.len() > MAX_BODY {
            bail!(
                "fetching {}: document larger than {MAX_BODY} bytes",
                self.url
            );
        }
        Jwks::parse(&body, &self.cfg)
    }

    /// Keeps the keys fresh; runs on the admin thread's runtime for the life of the process.
    /// `refreshes` counts fetches that worked and failed; `known` is set to the number of keys.
    pub async fn run(self: Arc<Self>, refreshes: [Counter; 2], known: Gauge) {
        let client = match reqwest::Client::builder().timeout(FETCH_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "JWKS: no HTTP client");
                return;
            }
        };
        let period = Duration::from_secs(self.cfg.jwks_refresh_secs.max(1));
        let min_gap = Duration::from_millis(self.cfg.jwks_min_refresh_ms);
        let mut last: Option<Instant> = None;
        loop {
            let due = match last {
                None => true,
                Some(t) => {
                    t.elapsed() >= period
                        || (self.wanted.load(Ordering::Relaxed) && t.elapsed() >= min_gap)
                }
            };
            if !due {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.wanted.store(false, Ordering::Relaxed);
            last = Some(Instant::now());
            let mut status = Status::clone(&self.status.load());
            status.last_attempt = last;
            self.status.store(Arc::new(status.clone()));
            self.fetching.store(true, Ordering::Release);
            let fetched = self.fetch(&client).await;
            self.fetching.store(false, Ordering::Release);
            match fetched {
                Ok(keys) => {
                    refreshes[0].inc();
                    known.set(keys.len() as i64);
                    self.keys.store(Arc::new(keys));
                    status.last_ok = Some(Instant::now());
                    status.last_error = None;
                }
                Err(e) => {
                    refreshes[1].inc();
                    tracing::warn!(error = %format!("{e:#}"), "JWKS fetch failed; keeping the keys known");
                    status.last_error = Some(format!("{e:#}"));
                }
            }
            self.status.store(Arc::new(status));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rsa_and_ec_keys_and_skips_the_rest() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "e": "AQAB",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"},
            {"kty": "EC", "kid": "e1", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "RSA", "alg": "RS256", "e": "AQAB", "n": "sXch"}
        ]});
        let keys = Jwks::parse(doc.to_string().as_bytes(), &AuthConfig::default()).unwrap();
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, ["e1", "r1"]);
        assert_eq!(keys["e1"].1.algorithms, vec![Algorithm::ES256]);
        assert!(Jwks::parse(b"{nope", &AuthConfig::default()).is_err());
        let only_oct = json!({"keys": [{"kty": "oct", "kid": "h1", "k": "c2VjcmV0"}]});
        assert!(Jwks::parse(only_oct.to_string().as_bytes(), &AuthConfig::default()).is_err());
        assert!(Jwks::parse(br#"{"keys":[]}"#, &AuthConfig::default()).is_err());
    }

    #[test]
    fn only_http_urls() {
        assert!(Jwks::new("file:///etc/passwd", &AuthConfig::default()).is_err());
        assert!(Jwks::new("https://idp.example/jwks.json", &AuthConfig::default()).is_ok());
    }
}
