//! The frames a resuming connection reads and writes (`--resume`, see `resume`): the `pos` of a
//! message, the subscribe request with `since`, and the reply to it, read without parsing the
//! whole text (loadgen must not be the bottleneck).

/// The top-level `pos` of a gateway message (`"pos":"…"`), without parsing the whole text.
pub fn pos_of(text: &[u8]) -> Option<&str> {
    let key = br#""pos":""#;
    let at = memchr::memmem::find(text, key)? + key.len();
    let len = memchr::memchr(b'"', &text[at..])?;
    std::str::from_utf8(&text[at..at + len]).ok()
}

/// The subscribe request, with `since` when a `pos` is known (positions never need escaping:
/// topic names, digits and colons).
pub fn subscribe_text(room: &str, id: u64, since: Option<&str>) -> String {
    match since {
        Some(pos) => {
            format!(r#"{{"type":"subscribe","id":"r{id}","channel":"{room}","since":"{pos}"}}"#)
        }
        None => format!(r#"{{"type":"subscribe","id":"r{id}","channel":"{room}"}}"#),
    }
}

/// What a reply to our subscribe said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `ok`, with `recovered` when the request had `since`.
    Ok(Option<bool>),
    /// `ok: false` (for instance `internal`: the replay could not read the broker yet), with the
    /// error's code and message (parsed: refusals are rare).
    Refused(String),
}

/// Reads a `reply` frame; `None` for every other frame.
pub fn reply_of(text: &[u8]) -> Option<Reply> {
    let has = |k: &[u8]| memchr::memmem::find(text, k).is_some();
    if !has(br#""type":"reply""#) {
        return None;
    }
    if !has(br#""ok":true"#) {
        let v: serde_json::Value = serde_json::from_slice(text).unwrap_or_default();
        let e = &v["error"];
        return Some(Reply::Refused(format!(
            "{}: {}",
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("?")
        )));
    }
    let recovered = if has(br#""recovered":true"#) {
        Some(true)
    } else if has(br#""recovered":false"#) {
        Some(false)
    } else {
        None
    };
    Some(Reply::Ok(recovered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pos_and_replies() {
        let msg = br#"{"channel":"room_1","data":{"s":3,"t":1,"p":"x"},"pos":"gateway.push:2:000000000017","type":"message"}"#;
        assert_eq!(pos_of(msg), Some("gateway.push:2:000000000017"));
        assert_eq!(pos_of(br#"{"type":"message"}"#), None);
        assert_eq!(reply_of(msg), None);
        assert_eq!(
            reply_of(br#"{"id":"r2","ok":true,"recovered":true,"type":"reply"}"#),
            Some(Reply::Ok(Some(true)))
        );
        assert_eq!(
            reply_of(br#"{"id":"r2","ok":true,"recovered":false,"type":"reply"}"#),
            Some(Reply::Ok(Some(false)))
        );
        assert_eq!(
            reply_of(br#"{"id":"r1","ok":true,"type":"reply"}"#),
            Some(Reply::Ok(None))
        );
        assert_eq!(
            reply_of(br#"{"error":{"code":"internal","message":"busy"},"id":"r3","ok":false,"type":"reply"}"#),
            Some(Reply::Refused("internal: busy".into()))
        );
    }

    #[test]
    fn subscribe_with_and_without_since() {
        let with: serde_json::Value =
            serde_json::from_str(&subscribe_text("room_4", 7, Some("t:1:000000000009"))).unwrap();
        assert_eq!(with["since"], "t:1:000000000009");
        assert_eq!(with["id"], "r7");
        let without: serde_json::Value =
            serde_json::from_str(&subscribe_text("room_4", 1, None)).unwrap();
        assert!(without.get("since").is_none());
        assert_eq!(without["channel"], "room_4");
    }
}
