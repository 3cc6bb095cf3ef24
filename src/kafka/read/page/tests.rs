//! The key filter and the page-stop rules, without a broker.

use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn rec(key: Option<&str>, value: Option<&[u8]>) -> Record {
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: value.map(<[u8]>::to_vec),
        headers: BTreeMap::new(),
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
    }
}

fn keyed(offset: i64, channel: &str, value: &str) -> RecordAndOffset {
    RecordAndOffset {
        record: rec(Some(channel), Some(value.as_bytes())),
        offset,
    }
}

fn keyless(offset: i64, value: &str) -> RecordAndOffset {
    RecordAndOffset {
        record: rec(None, Some(value.as_bytes())),
        offset,
    }
}

/// Offsets `range`, even ones on channel `c` (value `{"i":N}`, 7 bytes for N < 10), odd ones on
/// another channel.
fn mixed(range: std::ops::Range<i64>) -> Vec<RecordAndOffset> {
    range
        .map(|o| {
            let channel = if o % 2 == 0 { "c" } else { "noise" };
            keyed(o, channel, &format!(r#"{{"i":{o}}}"#))
        })
        .collect()
}

fn req(from: i64, to: i64, max_bytes: usize, max_scan: usize) -> ReadReq {
    ReadReq {
        token: 1,
        channel: Arc::from("c"),
        from,
        to,
        max_bytes,
        max_scan,
    }
}

fn offsets(p: &ReadPage) -> Vec<i64> {
    p.records.iter().map(|d| d.offset).collect()
}

#[test]
fn keyed_records_match_on_the_key_alone() {
    let f = ChannelFilter::new("room_1");
    assert!(f.may_match(&rec(Some("room_1"), Some(b"{nope"))));
    assert!(!f.may_match(&rec(Some("room_10"), Some(b"room_1"))));
    assert!(!f.may_match(&rec(Some("room"), None)));
    assert!(!f.may_match(&rec(Some(""), Some(br#"{"channel":"room_1"}"#))));
}

#[test]
fn keyless_records_must_mention_the_channel() {
    let f = ChannelFilter::new("room_1");
    assert!(f.may_match(&rec(None, Some(br#"{"channel":"room_1","data":1}"#))));
    // A mention anywhere passes; decoding decides.
    assert!(f.may_match(&rec(None, Some(br#"{"channel":"x","data":"room_1"}"#))));
    assert!(!f.may_match(&rec(None, Some(br#"{"channel":"room_2","data":1}"#))));
    assert!(!f.may_match(&rec(None, None)));
    // Not UTF-8: simd-json would refuse it.
    assert!(!f.may_match(&rec(None, Some(b"{\"channel\":\"room_1\"\xff}"))));
    // A plain name is not looked for behind escapes.
    assert!(!f.may_match(&rec(None, Some(br#"{"channel":"room\u005f1"}"#))));
}

#[test]
fn escapable_names_are_looked_for_behind_escapes() {
    for (channel, value) in [
        ("a/b", r#"{"channel":"a\/b"}"#),
        ("a\"b", r#"{"channel":"a\"b"}"#),
        ("café", r#"{"channel":"caf\u00e9"}"#),
        ("a&b", r#"{"channel":"a\u0026b"}"#),
    ] {
        let f = ChannelFilter::new(channel);
        let r = rec(None, Some(value.as_bytes()));
        assert!(f.may_match(&r), "{channel} in {value}");
        assert_eq!(decode(&r, 100).unwrap().channel, channel);
        assert!(!f.may_match(&rec(None, Some(br#"{"channel":"x"}"#))));
    }
}

#[test]
fn a_page_keeps_the_channel_s_records_to_the_end_of_the_range() {
    let r = req(0, 10, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..6)), Fed::Progressed);
    // Repeated records and the head of a batch are passed over.
    assert_eq!(page.feed(mixed(3..8)), Fed::Progressed);
    // Records past `to` end the page.
    assert_eq!(page.feed(mixed(8..12)), Fed::Done);
    let p = page.finish();
    assert_eq!(offsets(&p), [0, 2, 4, 6, 8]);
    assert_eq!(p.records[2].publish.data["i"], 4);
    assert_eq!((p.next, p.scanned, p.truncated), (10, 10, false));
}

#[test]
fn a_page_ends_when_the_range_does_even_without_records_past_it() {
    let r = req(4, 6, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..6)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![4], 6, 2));
    // An empty range is complete at once.
    let r = req(6, 6, 1, 1);
    let page = Page::new(&r, 100);
    assert!(page.done);
    assert_eq!(page.finish().next, 6);
}

#[test]
fn the_scan_budget_stops_a_page() {
    let r = req(0, 100, 1 << 20, 3);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..10)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![0, 2], 3, 3));
    // A zero budget still moves on by one record.
    let r = req(5, 100, 1 << 20, 0);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..10)), Fed::Done);
    let p = page.finish();
    assert_eq!((p.next, p.scanned), (6, 1));
}

#[test]
fn the_byte_budget_stops_a_page_before_the_record_that_would_pass_it() {
    // A record of channel "c" with value {"i":N} (one digit) becomes a frame of ONE bytes, about.
    const ONE: usize = 7 + 1 + super::FRAME_OVERHEAD;
    let r = req(0, 100, ONE + 3, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..10)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![0], 2, 2));
    // Exactly full: stops after it.
    let r = req(0, 100, 2 * ONE, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..10)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![0, 2], 3, 3));
    // A record larger than the budget is a page of its own.
    let r = req(1, 100, 1, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..10)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![2], 3, 2));
}

#[test]
fn the_byte_budget_stop_skips_offsets_that_do_not_exist() {
    // Offsets 1..5 were compacted away: the next page starts at the record that did not fit.
    let r = req(0, 100, 7 + 1 + super::FRAME_OVERHEAD + 3, 1000);
    let mut page = Page::new(&r, 100);
    let records = vec![keyed(0, "c", r#"{"i":0}"#), keyed(5, "c", r#"{"i":5}"#)];
    assert_eq!(page.feed(records), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![0], 5, 1));
}

#[test]
fn answers_before_the_position_are_reported() {
    let r = req(5, 100, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..3)), Fed::Behind(Some(2)));
    assert_eq!(page.feed(Vec::new()), Fed::Behind(None));
    assert_eq!(page.feed(mixed(0..7)), Fed::Progressed);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![6], 7, 2));
}

#[test]
fn undecodable_and_foreign_records_are_scanned_not_kept() {
    let r = req(0, 6, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    let records = vec![
        keyed(0, "c", "{nope"),
        keyless(1, r#"{"channel":"c","data":1}"#),
        keyless(2, r#"{"channel":"cc","data":2}"#),
        keyless(3, r#"{"channel":"x","data":"c"}"#),
        keyless(4, r#"{"channel":"c""#),
        keyed(5, "c", "5"),
    ];
    assert_eq!(page.feed(records), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.scanned), (vec![1, 5], 6, 6));
    assert_eq!(p.records[0].publish.data, 1);
}

#[test]
fn records_lost_to_retention_mark_the_page_truncated() {
    let r = req(2, 10, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    page.skip_to(6);
    assert_eq!(page.feed(mixed(6..12)), Fed::Done);
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.truncated), (vec![6, 8], 10, true));
    // Everything gone: the page is complete, and truncated.
    let r = req(2, 10, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    page.skip_to(20);
    assert!(page.done);
    let p = page.finish();
    assert_eq!((p.next, p.scanned, p.truncated), (10, 0, true));
    // The log lost its tail.
    let r = req(2, 10, 1 << 20, 1000);
    let mut page = Page::new(&r, 100);
    assert_eq!(page.feed(mixed(0..4)), Fed::Progressed);
    page.lost_tail();
    let p = page.finish();
    assert_eq!((offsets(&p), p.next, p.truncated), (vec![2], 10, true));
}
