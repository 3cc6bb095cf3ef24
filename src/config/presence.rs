//! `[presence]`: who is in which channel, per channel pattern.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Presence and join/leave frames (docs/protocol.md), opt-in per channel pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Channels with presence, in the form of the token's `channels` claim (`room_*`); empty = off.
    pub channels: Vec<String>,
    /// Members listed at most in a `presence` reply (the reply says `truncated` beyond), and users
    /// at most in one `join` or `leave` frame (the rest follow in the next batches).
    pub max_listed: usize,
    /// Joins and leaves of a channel are sent at most once per this period, batched.
    pub batch_ms: u64,
    /// With Kafka: a node that wrote nothing to the presence topic for this long is taken for
    /// dead and its members leave. It writes its liveness every third of it.
    pub ttl_secs: u64,
    /// Channels with presence tracked at most per owner shard; beyond it a channel is not tracked.
    pub max_channels: usize,
    /// Users tracked at most per channel; beyond it further users are not counted.
    pub max_members: usize,
    /// Other nodes' (channel, user) entries the presence reader keeps at most.
    pub max_remote_entries: usize,
    /// A name for this node in the presence topic; the process adds its start time and pid, so
    /// every process is a node of its own.
    pub node_name: String,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            channels: Vec::new(),
            max_listed: 1000,
            batch_ms: 250,
            ttl_secs: 30,
            max_channels: 100_000,
            max_members: 100_000,
            max_remote_entries: 1_000_000,
            node_name: "node".into(),
        }
    }
}

impl PresenceConfig {
    pub fn enabled(&self) -> bool {
        !self.channels.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_listed == 0 || self.max_channels == 0 || self.max_members == 0 {
            bail!("presence.max_listed, max_channels and max_members must be positive");
        }
        if !(10..=60_000).contains(&self.batch_ms) {
            bail!("presence.batch_ms must be 10 to 60000");
        }
        if self.ttl_secs == 0 {
            bail!("presence.ttl_secs must be positive");
        }
        if self.node_name.is_empty() || self.node_name.len() > 64 {
            bail!("presence.node_name must be 1 to 64 characters");
        }
        Ok(())
    }
}
