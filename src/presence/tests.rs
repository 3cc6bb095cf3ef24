use super::*;

fn member(channel: &str, node: &str, user: &str, conns: u32, ts: Option<u64>) -> Rec {
    Rec::Member {
        channel: Arc::from(channel),
        node: Arc::from(node),
        user: Arc::from(user),
        conns,
        ts,
    }
}

fn alive(node: &str, ts: u64) -> Rec {
    Rec::Alive {
        node: Arc::from(node),
        ts,
    }
}

fn set(channel: &str, node: &str, user: &str, conns: u32) -> Update {
    Update::Set {
        channel: Arc::from(channel),
        node: Arc::from(node),
        user: Arc::from(user),
        conns,
    }
}

#[test]
fn records_round_trip_and_foreign_records_are_skipped() {
    let (k, v) = member_record("room|1", "n1", "u\"1", 2, 77);
    let rec = decode(Some(&k), v.as_deref(), 200);
    assert_eq!(rec, Some(member("room|1", "n1", "u\"1", 2, Some(77))));
    let (k, v) = member_record("room_1", "n1", "u1", 0, 78);
    assert!(v.is_none(), "a count of 0 is a tombstone");
    assert_eq!(
        decode(Some(&k), None, 200),
        Some(member("room_1", "n1", "u1", 0, None))
    );
    let (k, v) = alive_record("n1", 5);
    assert_eq!(decode(Some(&k), Some(&v), 200), Some(alive("n1", 5)));
    assert_eq!(decode(None, Some(b"{}"), 200), None);
    assert_eq!(decode(Some(b"room_1"), Some(b"{}"), 200), None);
    assert_eq!(decode(Some(br#"["x","a"]"#), Some(b"{}"), 200), None);
    assert_eq!(decode(Some(&k), Some(b"not json"), 200), None);
    let (k, v) = member_record("a-long-channel", "n1", "u1", 1, 1);
    assert_eq!(decode(Some(&k), v.as_deref(), 5), None, "channel too long");
}

#[test]
fn live_nodes_pass_members_on_and_own_records_are_ignored() {
    let mut m = Mirror::new("me", 1000, 100);
    assert!(m.apply(member("c", "me", "u", 1, Some(10)), 10).is_empty());
    assert_eq!(
        m.apply(member("c", "b", "u1", 2, Some(10)), 10),
        vec![set("c", "b", "u1", 2)]
    );
    assert_eq!(
        m.apply(member("c", "b", "u1", 0, None), 20),
        vec![set("c", "b", "u1", 0)]
    );
    assert_eq!(m.sizes(), (1, 0));
}

#[test]
fn stale_members_wait_for_their_nodes_liveness() {
    // At start the reader meets an old member record before the node's fresh liveness record.
    let mut m = Mirror::new("me", 1000, 100);
    assert!(m.apply(member("c", "b", "u1", 1, Some(0)), 5000).is_empty());
    assert!(!m.alive("b", 5000));
    assert_eq!(
        m.apply(alive("b", 4900), 5000),
        vec![set("c", "b", "u1", 1)]
    );
    assert!(m.alive("b", 5000));
    // An old node that never refreshes is never passed on.
    assert!(m
        .apply(member("c", "old", "u2", 1, Some(10)), 5000)
        .is_empty());
    assert!(m.apply(alive("old", 20), 5000).is_empty());
}

#[test]
fn a_node_that_stops_refreshing_expires_and_comes_back() {
    let mut m = Mirror::new("me", 1000, 100);
    m.apply(alive("b", 0), 0);
    m.apply(member("c", "b", "u1", 1, Some(0)), 0);
    assert!(m.tick(999).is_empty());
    assert_eq!(m.tick(1000), vec![Update::Gone { node: "b".into() }]);
    assert!(m.tick(1500).is_empty(), "said once");
    assert_eq!(
        m.apply(alive("b", 1600), 1600),
        vec![set("c", "b", "u1", 1)]
    );
    // Silent for FORGET_TTLS ttls: forgotten with its members.
    m.tick(1600 + 1000);
    m.tick(1600 + 1000 * FORGET_TTLS);
    assert_eq!(m.sizes(), (0, 0));
}

#[test]
fn entries_and_nodes_are_bounded() {
    let mut m = Mirror::new("me", 1000, 2);
    m.apply(alive("b", 0), 0);
    m.apply(member("c", "b", "u1", 1, Some(0)), 0);
    m.apply(member("c", "b", "u2", 1, Some(0)), 0);
    assert!(m.apply(member("c", "b", "u3", 1, Some(0)), 0).is_empty());
    assert_eq!((m.sizes(), m.refused), ((1, 2), 1));
    // A known entry still changes at the bound, and a removal makes room.
    assert_eq!(
        m.apply(member("c", "b", "u1", 3, Some(0)), 0),
        vec![set("c", "b", "u1", 3)]
    );
    m.apply(member("c", "b", "u1", 0, None), 0);
    assert_eq!(m.apply(member("c", "b", "u3", 1, Some(0)), 0).len(), 1);
    for i in 0..MAX_NODES + 5 {
        m.apply(alive(&format!("n{i}"), 0), 0);
    }
    assert_eq!(m.sizes().0, MAX_NODES);
}
