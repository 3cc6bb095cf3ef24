use super::*;

fn a(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn names(v: &[Arc<str>]) -> Vec<&str> {
    v.iter().map(|s| &**s).collect()
}

#[test]
fn counts_users_and_connections_across_nodes() {
    let mut t = PresenceTable::new(10, 10, true);
    let (c, u1, u2, n2) = (a("room"), a("u1"), a("u2"), a("node-b"));
    t.local(&c, &u1, 1);
    t.local(&c, &u1, 1);
    t.remote(&c, &n2, &u1, 3);
    t.remote(&c, &n2, &u2, 1);
    let s = t.snapshot("room", true, 10);
    assert_eq!((s.users, s.conns, s.truncated), (2, 6, false));
    let mut m = s.members.clone();
    m.sort();
    assert_eq!(m, vec![(a("u1"), 5), (a("u2"), 1)]);
    let s = t.snapshot("room", false, 10);
    assert!(s.members.is_empty());
    assert_eq!(t.snapshot("other", true, 10).users, 0);
    // The listing is capped.
    let s = t.snapshot("room", true, 1);
    assert_eq!((s.members.len(), s.truncated, s.users), (1, true, 2));
}

#[test]
fn joins_and_leaves_are_batched_per_channel() {
    let mut t = PresenceTable::new(10, 10, false);
    let (c, u1, u2, u3) = (a("room"), a("u1"), a("u2"), a("u3"));
    t.local(&c, &u1, 1);
    t.local(&c, &u1, 1); // a second connection is no join
    t.local(&c, &u2, 1);
    let (ev, writes) = t.drain(100);
    assert!(writes.is_empty(), "without Kafka nothing is written");
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (names(&ev[0].joins), ev[0].leaves.len()),
        (vec!["u1", "u2"], 0)
    );
    assert!(t.drain(100).0.is_empty(), "each change is told once");
    t.local(&c, &u1, -1); // one connection left: still there
    t.local(&c, &u2, -1);
    t.local(&c, &u3, 1);
    t.local(&c, &u3, -1); // joined and left within the batch: nothing to tell
    let (ev, _) = t.drain(100);
    assert_eq!((ev[0].joins.len(), names(&ev[0].leaves)), (0, vec!["u2"]));
    t.local(&c, &u1, -1);
    t.local(&c, &u1, 1); // left and came back within the batch: nothing to tell
    assert!(t.drain(100).0.is_empty());
    t.local(&c, &u1, -1);
    let (ev, _) = t.drain(100);
    assert_eq!(names(&ev[0].leaves), vec!["u1"]);
    assert_eq!(t.channels(), 0, "an empty channel is forgotten");
}

#[test]
fn a_big_batch_is_split_over_ticks() {
    let mut t = PresenceTable::new(10, 100, false);
    let c = a("room");
    for i in 0..5 {
        t.local(&c, &a(&format!("u{i}")), 1);
    }
    let (ev, _) = t.drain(2);
    assert_eq!(names(&ev[0].joins), vec!["u0", "u1"]);
    let (ev, _) = t.drain(2);
    assert_eq!(names(&ev[0].joins), vec!["u2", "u3"]);
    let (ev, _) = t.drain(2);
    assert_eq!(names(&ev[0].joins), vec!["u4"]);
    assert!(t.drain(2).0.is_empty());
}

#[test]
fn a_gone_node_takes_its_members_along() {
    let mut t = PresenceTable::new(10, 10, false);
    let (c, d, u1, u2, nb) = (a("room"), a("hall"), a("u1"), a("u2"), a("b"));
    t.local(&c, &u1, 1);
    t.remote(&c, &nb, &u1, 1);
    t.remote(&c, &nb, &u2, 2);
    t.remote(&d, &nb, &u2, 1);
    t.drain(100);
    t.node_gone("b");
    let (mut ev, _) = t.drain(100);
    ev.sort_by(|x, y| x.channel.cmp(&y.channel));
    assert_eq!(names(&ev[0].leaves), vec!["u2"], "hall");
    assert_eq!(names(&ev[1].leaves), vec!["u2"], "room: u1 is still here");
    let s = t.snapshot("room", true, 10);
    assert_eq!((s.users, s.conns), (1, 1));
    assert_eq!(t.channels(), 1);
}

#[test]
fn local_changes_are_written_with_their_counts() {
    let mut t = PresenceTable::new(10, 10, true);
    let (c, u1, u2) = (a("room"), a("u1"), a("u2"));
    t.local(&c, &u1, 1);
    t.local(&c, &u1, 1);
    t.local(&c, &u2, 1);
    let (_, mut w) = t.drain(100);
    w.sort();
    assert_eq!(
        w,
        vec![(c.clone(), u1.clone(), 2), (c.clone(), u2.clone(), 1)]
    );
    t.local(&c, &u2, -1);
    let (_, w) = t.drain(100);
    assert_eq!(w, vec![(c.clone(), u2.clone(), 0)], "0: the tombstone");
    t.redo(&c, u2.clone());
    let (_, w) = t.drain(100);
    assert_eq!(w, vec![(c.clone(), u2.clone(), 0)], "retried");
    t.redo_all();
    let (_, w) = t.drain(100);
    assert_eq!(w, vec![(c.clone(), u1.clone(), 2)]);
}

#[test]
fn channels_and_members_are_bounded() {
    let mut t = PresenceTable::new(1, 2, false);
    let (c, d) = (a("room"), a("hall"));
    t.local(&c, &a("u1"), 1);
    t.local(&d, &a("u1"), 1);
    assert_eq!((t.channels(), t.refused), (1, 1), "no second channel");
    t.remote(&c, &a("b"), &a("u2"), 1);
    t.local(&c, &a("u3"), 1);
    t.remote(&c, &a("b"), &a("u4"), 1);
    assert_eq!(t.refused, 3);
    let s = t.snapshot("room", true, 10);
    assert_eq!((s.users, s.conns), (2, 2), "counts stop at the bound");
    // A refused user's departure takes nothing away; an existing user still counts up.
    t.local(&c, &a("u3"), -1);
    t.local(&c, &a("u1"), 1);
    t.remote(&c, &a("b"), &a("u1"), 2);
    let s = t.snapshot("room", false, 10);
    assert_eq!((s.users, s.conns), (2, 5));
    // Room again: the next connection is counted.
    t.remote(&c, &a("b"), &a("u2"), 0);
    t.local(&c, &a("u3"), 1);
    assert_eq!(t.snapshot("room", false, 10).users, 2);
    t.drain(100);
    assert!(t
        .snapshot("room", true, 10)
        .members
        .iter()
        .any(|(u, _)| &**u == "u3"));
}
