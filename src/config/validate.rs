//! What makes a configuration invalid: values out of range, keys that exclude each other, and a
//! public address with the built-in development credentials.

use super::{Config, JwtAlgorithm, DEV_API_KEY, DEV_JWT_SECRET};
use anyhow::{bail, Result};

impl Config {
    pub fn validate(&self) -> Result<()> {
        if !self.ws_path.starts_with('/') {
            bail!("ws_path must start with '/', got {:?}", self.ws_path);
        }
        if self.listen.port() != 0 && self.listen == self.admin_listen {
            bail!("listen and admin_listen must differ");
        }
        if self.shards > crate::topology::MAX_SHARDS {
            bail!(
                "at most {} shards are supported",
                crate::topology::MAX_SHARDS
            );
        }
        if self.limits.queue_bytes < 4096 {
            bail!("limits.queue_bytes must be at least 4096");
        }
        if self.limits.client_frames_per_sec == 0 {
            bail!("limits.client_frames_per_sec must be positive");
        }
        if self.session.heartbeat_ms < 100 {
            bail!("session.heartbeat_ms must be at least 100");
        }
        if !(16..=32768).contains(&self.ring_depth) || !self.ring_depth.is_power_of_two() {
            bail!("ring_depth must be a power of two from 16 to 32768");
        }
        if self.session.write_delay_ms > 1000 {
            bail!("session.write_delay_ms must be at most 1000");
        }
        if self.history.size == 0 {
            bail!("history.size must be positive");
        }
        if self.history.max_bytes < 64 * 1024 {
            bail!("history.max_bytes must be at least 65536");
        }
        if self.limits.max_connections_per_user == 0 {
            bail!("limits.max_connections_per_user must be at least 1");
        }
        if self.limits.peer_queue_messages == 0 {
            bail!("limits.peer_queue_messages must be positive");
        }
        let k = &self.kafka;
        if k.enabled() {
            if k.push_topics.is_empty() && k.upstream_topic.is_empty() {
                bail!("kafka.push_topics must name at least one topic");
            }
            let bad = |t: &str| t.is_empty() || t.contains(':') || t.len() > 249;
            if k.consumed_topics().iter().any(|t| bad(t))
                || bad(&k.presence_topic)
                || k.dead_letter_topic.as_deref().is_some_and(bad)
            {
                bail!("kafka topic names must be 1-249 characters without ':'");
            }
            if k.fetch_max_bytes < 1024 || k.fetch_max_wait_ms < 0 {
                bail!("kafka.fetch_max_bytes must be >= 1024 and kafka.fetch_max_wait_ms >= 0");
            }
        }
        self.presence.validate()?;
        self.check_public_exposure()?;
        if self.auth.jwks_url.is_some() {
            if self.auth.jwt_public_key_file.is_some() {
                bail!("auth.jwks_url and auth.jwt_public_key_file exclude each other");
            }
            return Ok(());
        }
        match self.auth.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                if self.auth.jwt_public_key_file.is_some() {
                    bail!(
                        "auth.jwt_public_key_file is for RS256/ES256; HS256 uses auth.jwt_secret"
                    );
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.auth.jwt_public_key_file.is_none() {
                    bail!(
                        "auth.jwt_public_key_file is required for {:?}",
                        self.auth.jwt_algorithm
                    );
                }
            }
        }
        Ok(())
    }

    /// The gateway never serves a public address with the built-in development secret or key:
    /// anyone could mint tokens or publish.
    fn check_public_exposure(&self) -> Result<()> {
        let empty = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
        if empty(&self.auth.jwt_secret) || empty(&self.auth.api_key) || empty(&self.auth.stats_key)
        {
            bail!("auth.jwt_secret, auth.api_key and auth.stats_key must not be empty when set");
        }
        // The built-in development values count as none, whoever typed them.
        let dev_secret = self.auth.jwt_algorithm == JwtAlgorithm::HS256
            && self
                .auth
                .jwt_secret
                .as_deref()
                .is_none_or(|s| s == DEV_JWT_SECRET)
            && self.auth.jwks_url.is_none();
        let dev_key = self
            .auth
            .api_key
            .as_deref()
            .is_none_or(|k| k == DEV_API_KEY);
        if let Some(p) = self
            .allowed_origins
            .iter()
            .find(|p| p.matches('*').count() > 1)
        {
            bail!("allowed_origins: {p:?}: at most one * per pattern");
        }
        if dev_secret && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} with the public development JWT secret: set auth.jwt_secret \
                 (GATEWAY_AUTH__JWT_SECRET or --jwt-secret), use RS256/ES256 or auth.jwks_url, or listen \
                 on a loopback address",
                self.listen
            );
        }
        if dev_key && !self.admin_listen.ip().is_loopback() {
            bail!(
                "refusing to serve the admin listener on {} with the public development API key: set \
                 auth.api_key (GATEWAY_AUTH__API_KEY or --api-key), or listen on a loopback address",
                self.admin_listen
            );
        }
        Ok(())
    }
}
