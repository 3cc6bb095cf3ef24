//! The `Sec-WebSocket-Extensions` negotiation of permessage-deflate (RFC 7692 section 7.1): the
//! client's offers are tried in order; the first one the gateway can honour is accepted, an invalid
//! or unsupported one is declined (section 7.1: the next offer is tried, then no extension at all).

/// The largest LZ77 window (2^15 bytes): what the gateway compresses and inflates with.
pub const MAX_WINDOW_BITS: u8 = 15;

/// What a connection agreed to: kept by its `ConnHandle` (a few bytes, no compressor state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window the client inflates our messages with (`server_max_window_bits`, 15 unless it
    /// asked for less).
    pub window_bits: u8,
    /// Messages shorter than this go uncompressed (`session.deflate_min_bytes`).
    pub min_bytes: u32,
}

impl Agreed {
    /// Whether a message of `len` bytes goes to this client compressed. Messages are compressed
    /// with a 2^15 window and no context, so their back-references never reach further than
    /// their own length: one of at most 2^window_bits bytes is valid for a smaller window too; a
    /// longer one goes plain to such a client (uncompressed messages are always allowed).
    pub fn takes(&self, len: usize) -> bool {
        len >= self.min_bytes as usize
            && (self.window_bits >= MAX_WINDOW_BITS || len <= 1usize << self.window_bits)
    }
}

/// Why one offer was declined (logged at debug level; the next offer is tried).
#[derive(Debug, PartialEq, Eq)]
pub enum Decline {
    NotDeflate,
    Unknown(String),
    Duplicate(String),
    BadValue(String),
}

/// The offers in `header` (every `Sec-WebSocket-Extensions` value of the request, joined with
/// commas), answered: the agreement and the response header's value, or None (no extension).
pub fn negotiate(header: &str, min_bytes: usize) -> Option<(Agreed, String)> {
    for offer in split_outside_quotes(header, ',') {
        match accept(offer) {
            Ok(server_bits) => {
                let agreed = Agreed {
                    window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
                    min_bytes: u32::try_from(min_bytes).unwrap_or(u32::MAX),
                };
                // No context on either side: one compressed frame serves every client, and
                // one inflater per shard serves every connection (section 7.1.1).
                let mut response = String::from(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                );
                if let Some(bits) = server_bits {
                    response.push_str(&format!("; server_max_window_bits={bits}"));
                }
                return Some((agreed, response));
            }
            Err(why) => tracing::debug!(offer, ?why, "extension offer declined"),
        }
    }
    None
}

/// One offer checked (section 7.1): Ok with the `server_max_window_bits` it asked for, if any.
fn accept(offer: &str) -> Result<Option<u8>, Decline> {
    let mut parts = split_outside_quotes(offer, ';');
    let name = parts.next().unwrap_or("");
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return Err(Decline::NotDeflate);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = None;
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
            None => (param, None),
        };
        let key = key.to_ascii_lowercase();
        if seen.contains(&key) {
            return Err(Decline::Duplicate(key));
        }
        match (key.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // The client may say it can limit its window; we inflate with the largest anyway.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v).ok_or_else(|| Decline::BadValue(param.to_string()))?;
            }
            ("server_max_window_bits", Some(v)) => {
                let bits = window_bits(v).ok_or_else(|| Decline::BadValue(param.to_string()))?;
                server_bits = Some(bits);
            }
            (
                "server_no_context_takeover"
                | "client_no_context_takeover"
                | "server_max_window_bits",
                _,
            ) => return Err(Decline::BadValue(param.to_string())),
            _ => return Err(Decline::Unknown(key)),
        }
        seen.push(key);
    }
    Ok(server_bits)
}

/// A window size: 8 to 15, decimal digits without a leading zero (section 7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value with its quotes removed (a quoted-string is allowed for a token).
fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// `s` split at `sep` where it is not inside double quotes, each piece trimmed, empty ones
/// skipped (HTTP lists allow empty elements).
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    s.split(move |c: char| {
        if c == '"' {
            quoted = !quoted;
        }
        c == sep && !quoted
    })
    .map(str::trim)
    .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    fn resp(h: &str) -> Option<String> {
        negotiate(h, 0).map(|(_, r)| r)
    }

    #[test]
    fn plain_offers_are_accepted_without_context_on_either_side() {
        assert_eq!(resp("permessage-deflate").as_deref(), Some(BASE));
        // What browsers send.
        assert_eq!(
            resp("permessage-deflate; client_max_window_bits").as_deref(),
            Some(BASE)
        );
        assert_eq!(
            resp("Permessage-Deflate; client_no_context_takeover; client_max_window_bits=10")
                .as_deref(),
            Some(BASE)
        );
    }

    #[test]
    fn a_smaller_server_window_is_echoed_and_limits_what_goes_compressed() {
        let (a, r) = negotiate("permessage-deflate; server_max_window_bits=\"9\"", 64).unwrap();
        assert_eq!(r, format!("{BASE}; server_max_window_bits=9"));
        assert_eq!(a.window_bits, 9);
        assert!(!a.takes(63) && a.takes(64) && a.takes(512) && !a.takes(513));
        let (a, _) = negotiate("permessage-deflate", 0).unwrap();
        assert!(a.takes(0) && a.takes(10 << 20));
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
            ";;,,",
        ] {
            assert_eq!(resp(bad), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(
                resp(&two),
                Some(format!("{BASE}; server_max_window_bits=12")),
                "{two}"
            );
        }
    }

    #[test]
    fn quoted_commas_do_not_split_offers() {
        assert_eq!(resp("foo; a=\"x,permessage-deflate\""), None);
    }
}
