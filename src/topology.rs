//! Small items every layer agrees on: which shard owns a name, the automatic channels, and the
//! in-process bus's positions. They live low so that nothing above needs to import sideways.

/// The channel every connection is in.
pub const BROADCAST: &str = "broadcast";
/// Shards are tracked in a 64-bit set per channel.
pub const MAX_SHARDS: usize = 64;

/// Which sequence a position belongs to: 0 for the in-process bus, else a Kafka partition
/// (see `kafka::stream_id`).
pub type Stream = u64;

/// A `since` this process cannot answer (a position from before a restart, from a topic it does
/// not consume, or from a partition the channel does not map to): answered `recovered: false`.
pub const UNRECOVERABLE: Stream = u64::MAX;

/// The shard that owns a channel or a key: FNV-1a of the name, the same on every shard.
pub fn owner_of(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The personal channel of user `sub`.
pub fn user_channel(sub: &str) -> String {
    format!("user:{sub}")
}

/// `pos` on the in-process bus: `<epoch hex>-<seq, zero-padded>`: opaque to clients, increasing
/// within a channel, and tied to this process's epoch so a position from before a restart is
/// recognised as such.
pub fn format_pos(epoch: u64, seq: u64) -> String {
    format!("{epoch:x}-{seq:012}")
}

/// (epoch, seq) of an in-process position.
pub fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (e, s) = pos.split_once('-')?;
    Some((u64::from_str_radix(e, 16).ok()?, s.parse().ok()?))
}

/// Where a `since` points: a sequence and a position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SincePos {
    pub stream: Stream,
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_sort() {
        let a = format_pos(0x19a, 9);
        let b = format_pos(0x19a, 10);
        assert!(a < b);
        assert_eq!(parse_pos(&b), Some((0x19a, 10)));
        assert_eq!(parse_pos("nope"), None);
        assert_eq!(parse_pos("zz-1"), None);
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_of("room_1", 4), owner_of("room_1", 4));
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| owner_of(&format!("room_{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
