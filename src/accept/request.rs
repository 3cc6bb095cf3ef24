//! The HTTP upgrade request: parsed and checked (httparse), and the refusals answered before any
//! WebSocket exists.

/// A refusal before the upgrade.
#[derive(Debug)]
pub struct HttpRefusal {
    pub status: u16,
    pub reason: &'static str,
    pub detail: String,
}

pub fn refuse(status: u16, detail: impl Into<String>) -> HttpRefusal {
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    HttpRefusal {
        status,
        reason,
        detail: detail.into(),
    }
}

/// What the gateway needs from a valid upgrade request.
#[derive(Debug)]
pub struct Upgrade {
    pub key: String,
    pub token: String,
    /// The `Origin` header (sent by browsers).
    pub origin: Option<String>,
    /// Every `Sec-WebSocket-Extensions` value, joined with commas (the offers, in order).
    pub extensions: String,
    /// Bytes the client sent after the request (an eager first frame).
    pub leftover: Vec<u8>,
}

/// Parses and checks an upgrade request. `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8], ws_path: &str) -> Result<Option<(Upgrade, usize)>, HttpRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many headers")),
        Err(e) => return Err(refuse(400, format!("malformed HTTP request: {e}"))),
    };
    if req.method != Some("GET") {
        return Err(refuse(405, "WebSocket upgrade requires GET"));
    }
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != ws_path {
        return Err(refuse(404, format!("no WebSocket endpoint at {path}")));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(refuse(
            426,
            "expected Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(refuse(
            426,
            "unsupported Sec-WebSocket-Version (13 required)",
        ));
    }
    let key = header("sec-websocket-key").unwrap_or("");
    if key.len() != 24 || !key.ends_with("==") {
        return Err(refuse(400, "missing or invalid Sec-WebSocket-Key"));
    }
    let from_query = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let from_header = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    });
    let token = from_query.or(from_header).unwrap_or_default();
    Ok(Some((
        Upgrade {
            key: key.to_string(),
            token,
            origin: header("origin").map(str::to_string),
            extensions: all_values(req.headers, "sec-websocket-extensions"),
            leftover: buf[len..].to_vec(),
        },
        len,
    )))
}

/// The values of every header called `name` (a list may be split over several), joined with
/// commas; values that are not UTF-8 are left out.
fn all_values(headers: &[httparse::Header<'_>], name: &str) -> String {
    let values: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();
    values.join(", ")
}

/// The HTTP response for a refused upgrade.
pub fn response(r: &HttpRefusal) -> String {
    let mut extra = String::new();
    if r.status == 426 {
        extra.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    if r.status == 503 || r.status == 429 {
        extra.push_str("Retry-After: 1\r\n");
    }
    let body = format!("{}\n", r.detail);
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{}",
        r.status,
        r.reason,
        body.len(),
        extra,
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn token_from_query_or_header() {
        let (u, _) = parse(&req("/ws?token=abc.def", ""), "/ws")
            .unwrap()
            .unwrap();
        assert_eq!(u.token, "abc.def");
        let (u, _) = parse(&req("/ws", "Authorization: Bearer xyz\r\n"), "/ws")
            .unwrap()
            .unwrap();
        assert_eq!(u.token, "xyz");
        assert!(parse(&req("/ws", "")[..20], "/ws").unwrap().is_none());
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(&req("/other", ""), "/ws").unwrap_err().status, 404);
        let post = String::from_utf8(req("/ws", ""))
            .unwrap()
            .replacen("GET", "POST", 1);
        assert_eq!(parse(post.as_bytes(), "/ws").unwrap_err().status, 405);
        let v12 = String::from_utf8(req("/ws", ""))
            .unwrap()
            .replace("Version: 13", "Version: 12");
        assert_eq!(parse(v12.as_bytes(), "/ws").unwrap_err().status, 426);
        assert_eq!(
            parse(b"\x16\x03\x01garbage\r\n\r\n", "/ws")
                .unwrap_err()
                .status,
            400
        );
    }
}
