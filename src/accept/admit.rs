//! Admission of an upgrade request, cheapest refusal first: draining, the connect rate, the
//! per-address slot, the JWT, the node-wide slot, the per-user slot. The slots are held by a
//! `ConnSlot` for the connection's whole life and released when it drops, whether the handshake
//! fails half-way or the connection ends.

use super::request::{refuse, HttpRefusal, Upgrade};
use crate::auth::{AuthError, Claims};
use crate::mesh::SlotKind;
use crate::shard::Shard;
use crate::topology::user_channel;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

/// The slots a connection holds (node-wide, per address, per user), taken one by one during the
/// handshake and all released on drop, whether the handshake fails half-way or the connection ends.
pub struct ConnSlot {
    shard: Rc<Shard>,
    node_slot: bool,
    /// At most one of each kind (address, user), held inline: no allocation per connection.
    keyed: [Option<(SlotKind, Arc<str>)>; 2],
}

impl ConnSlot {
    pub fn new(shard: Rc<Shard>) -> ConnSlot {
        ConnSlot {
            shard,
            node_slot: false,
            keyed: [None, None],
        }
    }

    /// One of the node's `max_connections`.
    pub fn take_node(&mut self) -> bool {
        self.node_slot = self.shard.node.try_acquire_connection();
        self.node_slot
    }

    /// One of the key's slots (user or address); true when that kind is not limited.
    pub async fn take(&mut self, kind: SlotKind, key: Arc<str>) -> bool {
        let router = &self.shard.router;
        if !router.slot_limited(kind) {
            return true;
        }
        if !router.acquire_slot(kind, key.clone()).await {
            return false;
        }
        let free = self.keyed.iter_mut().find(|k| k.is_none());
        match free {
            Some(k) => *k = Some((kind, key)),
            // Both kinds are held already: a third slot is a bug, and is not kept.
            None => router.release_slot(kind, key),
        }
        true
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.node_slot {
            self.shard.node.release_connection();
        }
        for (kind, key) in self.keyed.iter_mut().filter_map(Option::take) {
            self.shard.router.release_slot(kind, key);
        }
    }
}

/// Checks the limits, authenticates and takes the connection slots; each refusal is an HTTP status.
/// The cheap refusals come before the JWT is verified.
pub async fn admit(
    shard: &Rc<Shard>,
    up: &Upgrade,
    peer: Option<IpAddr>,
) -> Result<(Claims, ConnSlot), HttpRefusal> {
    let node = &shard.node;
    if node.is_draining() {
        return Err(refuse(503, "gateway is shutting down"));
    }
    if !origin_allowed(&node.config.allowed_origins, up.origin.as_deref()) {
        return Err(refuse(403, "origin not allowed"));
    }
    if !shard.take_connect_token() {
        return Err(refuse(429, "connect rate limit"));
    }
    let mut slots = ConnSlot::new(shard.clone());
    if let Some(ip) = peer {
        if !slots.take(SlotKind::Ip, Arc::from(ip.to_string())).await {
            return Err(refuse(429, "too many connections from this address"));
        }
    }
    let claims = verify(shard, &up.token).await.map_err(|e: AuthError| {
        shard.metrics.auth_failures[e.index()].inc();
        refuse(401, e.reason())
    })?;
    if !slots.take_node() {
        return Err(refuse(503, "gateway full"));
    }
    // The user's slot is kept by the owner of the user's channel, and routes that channel here.
    let user = Arc::from(user_channel(&claims.sub));
    if !slots.take(SlotKind::User, user).await {
        return Err(refuse(429, "too many connections for this user"));
    }
    Ok((claims, slots))
}

/// Whether a browser's `Origin` may upgrade: any when no list is configured; requests without an
/// `Origin` are not from a browser page and are not affected. A `*` in a pattern stands for any
/// characters (`https://*.example.org`, `https://preview-*`); origins compare without case.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    allowed.is_empty()
        || allowed.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            match p.split_once('*') {
                Some((head, tail)) => {
                    origin.len() >= head.len() + tail.len()
                        && origin.starts_with(head)
                        && origin.ends_with(tail)
                }
                None => p == origin,
            }
        })
}

/// How long a handshake with an unknown `kid` waits for the JWKS to be fetched again.
const JWKS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Verifies a token; one whose `kid` is not among the JWKS keys asks for a fetch (the provider may
/// have rotated its keys) and is tried again once that fetch is done.
pub async fn verify(shard: &Shard, token: &str) -> Result<Claims, AuthError> {
    let verifier = &shard.node.verifier;
    match (verifier.verify(token), verifier.jwks()) {
        (Err(AuthError::UnknownKey), Some(jwks)) => {
            let seen = jwks.generation();
            if !jwks.request_refresh() {
                // Fetched moments ago: the key is unknown to the provider too, for now.
                return Err(AuthError::UnknownKey);
            }
            let started = std::time::Instant::now();
            while jwks.generation() == seen && started.elapsed() < JWKS_WAIT {
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            }
            verifier.verify(token)
        }
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let list = vec![
            "https://app.example.com".to_string(),
            "https://*".to_string(),
        ];
        assert!(origin_allowed(&[], Some("https://evil.example")));
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list[..1], Some("https://APP.example.com")));
        assert!(!origin_allowed(
            &list[..1],
            Some("https://app.example.com.evil")
        ));
        assert!(origin_allowed(&list, Some("https://x.example.org")));
        assert!(!origin_allowed(&list, Some("http://x.example.org")));
    }
}
