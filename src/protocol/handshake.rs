//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), server side.
//!
//! Owns parsing of the client's request head (via `httparse`), every check the
//! RFC makes on it, the accept key (SHA-1 + base64), and the bytes of the 101
//! response or of an HTTP error response. It sees only the bytes received so
//! far; the event loop decides when to read more, enforces the timeout, and
//! applies policy (connection limits, auth, origin) between [`parse_request`]
//! and [`accept_response`].

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every accept key is derived with (§1.3).
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// More headers than this is not a WebSocket client.
const MAX_HEADERS: usize = 48;

/// Why a handshake was refused, with the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request head exceeds {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("method must be GET")]
    MethodNotGet,
    #[error("HTTP/1.1 is required")]
    HttpVersion,
    #[error("missing Host header")]
    MissingHost,
    #[error("missing or invalid Upgrade: websocket")]
    NotUpgrade,
    #[error("Connection header must contain 'upgrade'")]
    NoConnectionUpgrade,
    #[error("unsupported Sec-WebSocket-Version (13 is supported)")]
    UnsupportedVersion,
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
    #[error("no WebSocket endpoint at this path")]
    NotFound,
}

impl HandshakeError {
    /// HTTP status code and reason phrase for this refusal.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HandshakeError::HeadTooLarge(_) => (431, "Request Header Fields Too Large"),
            HandshakeError::MethodNotGet => (405, "Method Not Allowed"),
            HandshakeError::UnsupportedVersion => (426, "Upgrade Required"),
            HandshakeError::NotFound => (404, "Not Found"),
            _ => (400, "Bad Request"),
        }
    }

    /// The complete HTTP response refusing the upgrade.
    pub fn response(&self) -> Vec<u8> {
        let (code, phrase) = self.status();
        let extra: &[(&str, &str)] = match self {
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            HandshakeError::MethodNotGet => &[("Allow", "GET")],
            _ => &[],
        };
        error_response(code, phrase, &self.to_string(), extra)
    }
}

/// Server-side handshake settings.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// The request path (without query) that upgrades; others get 404.
    pub path: String,
    /// Cap on the request head, in bytes.
    pub max_head_bytes: usize,
    /// Subprotocols this server speaks, in order of preference.
    pub subprotocols: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            path: "/ws".into(),
            max_head_bytes: 8 * 1024,
            subprotocols: Vec::new(),
        }
    }
}

/// A valid upgrade request, borrowing from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// Length of the request head; bytes after it are the first frame bytes.
    pub head_len: usize,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: &'a str,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// The `Sec-WebSocket-Accept` value for this request's key.
    pub accept_key: [u8; 28],
    /// The subprotocol chosen from the client's offer, if any.
    pub subprotocol: Option<&'a str>,
    /// Extension offers (`Sec-WebSocket-Extensions`), unparsed. None is
    /// accepted yet: leaving the header out of the response declines them.
    pub extension_offers: Option<&'a str>,
}

/// Case-insensitive search for `token` in a comma-separated header value.
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Computes `Sec-WebSocket-Accept` for a client key (§4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(digest, &mut out)
        .unwrap_or(0);
    debug_assert_eq!(n, 28, "base64 of 20 bytes is 28 bytes");
    out
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (read more); the head cap
/// is enforced here so a client cannot make the caller buffer without bound.
pub fn parse_request<'a>(
    buf: &'a [u8],
    cfg: &HandshakeConfig,
) -> Result<Option<UpgradeRequest<'a>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= cfg.max_head_bytes {
                return Err(HandshakeError::HeadTooLarge(cfg.max_head_bytes));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::Malformed("too many headers"))
        }
        Err(_) => return Err(HandshakeError::Malformed("cannot parse request head")),
    };
    if head_len > cfg.max_head_bytes {
        return Err(HandshakeError::HeadTooLarge(cfg.max_head_bytes));
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let mut host = None;
    let mut upgrade = false;
    let mut connection = false;
    let mut version_ok = false;
    let mut version_seen = false;
    let mut key = None;
    let mut origin = None;
    let mut authorization = None;
    let mut protocols: Option<&str> = None;
    let mut extensions = None;
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(HandshakeError::Malformed("header value is not UTF-8"));
        };
        let value = value.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version_seen = true;
            version_ok |= value == "13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(HandshakeError::BadKey);
            }
            key = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // Several headers are one comma list; keep the first to choose from.
            protocols = protocols.or(Some(value));
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions = Some(value);
        }
    }
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or(HandshakeError::MissingHost)?;
    if !upgrade {
        return Err(HandshakeError::NotUpgrade);
    }
    if !connection {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if !version_seen || !version_ok {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = key.ok_or(HandshakeError::BadKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    if path != cfg.path {
        return Err(HandshakeError::NotFound);
    }
    let subprotocol = protocols.and_then(|offer| select_subprotocol(offer, &cfg.subprotocols));
    Ok(Some(UpgradeRequest {
        head_len,
        path,
        query,
        host,
        origin,
        authorization,
        accept_key: accept_key(key.as_bytes()),
        subprotocol,
        extension_offers: extensions,
    }))
}

/// The subprotocol hook: the first of the server's preferences that the
/// client offered, returned as the client spelled it.
fn select_subprotocol<'a>(offer: &'a str, supported: &[String]) -> Option<&'a str> {
    supported.iter().find_map(|want| {
        offer
            .split(',')
            .map(str::trim)
            .find(|p| p.eq_ignore_ascii_case(want))
    })
}

/// The `101 Switching Protocols` response for an accepted request.
pub fn accept_response(req: &UpgradeRequest<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    write_accept_response(req, &mut out);
    out
}

/// Appends the `101 Switching Protocols` response to `out`.
pub fn write_accept_response(req: &UpgradeRequest<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&req.accept_key);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = req.subprotocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete plain-text HTTP error response that closes the connection.
pub fn error_response(code: u16, phrase: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    for (k, v) in extra {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.push('\n');
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?token=abc HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nOrigin: http://example.com\r\n\r\n";

    fn cfg() -> HandshakeConfig {
        HandshakeConfig::default()
    }

    fn parse(s: &str) -> Result<Option<UpgradeRequest<'_>>, HandshakeError> {
        parse_request(s.as_bytes(), &cfg())
    }

    #[test]
    fn rfc_sample_accept_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_a_valid_request() {
        let req = parse(GOOD).unwrap().unwrap();
        assert_eq!(req.head_len, GOOD.len());
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query, Some("token=abc"));
        assert_eq!(req.host, "example.com");
        assert_eq!(req.origin, Some("http://example.com"));
        let resp = String::from_utf8(accept_response(&req)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
        assert!(!resp.contains("Sec-WebSocket-Extensions"));
    }

    #[test]
    fn every_prefix_is_incomplete_and_pipelined_bytes_are_kept() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD[..cut]), Ok(None), "cut at {cut}");
        }
        let mut with_frame = GOOD.as_bytes().to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let req = parse_request(&with_frame, &cfg()).unwrap().unwrap();
        assert_eq!(&with_frame[req.head_len..], &[0x81, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let r = GOOD
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("keep-alive, Upgrade", "keep-alive,UPGRADE ");
        assert!(parse(&r).unwrap().is_some());
        let r = GOOD.replace("Upgrade: websocket", "Upgrade: h2c, websocket");
        assert!(parse(&r).unwrap().is_some());
    }

    #[test]
    fn refusals_and_their_status_codes() {
        let cases: Vec<(String, u16)> = vec![
            (GOOD.replace("GET", "POST"), 405),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), 400),
            (GOOD.replace("Host: example.com\r\n", ""), 400),
            (GOOD.replace("Upgrade: websocket\r\n", ""), 400),
            (GOOD.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (GOOD.replace("Version: 13", "Version: 8"), 426),
            (GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!notbase64!!!"),
                400,
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                400,
            ),
            (GOOD.replace("/ws?", "/other?"), 404),
            ("GARBAGE\x00\x01\r\n\r\n".to_string(), 400),
        ];
        for (req, code) in cases {
            let err = parse(&req).unwrap_err();
            assert_eq!(err.status().0, code, "{err:?} for {req:?}");
            let resp = String::from_utf8(err.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {code} ")));
            assert!(resp.contains("Connection: close\r\n"));
            if code == 426 {
                assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
            }
        }
    }

    #[test]
    fn head_cap_gives_431() {
        let huge = format!("GET /ws HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(&huge).unwrap_err().status().0, 431);
        // A complete head over the cap is refused too.
        let full = format!("{huge}\r\n");
        assert_eq!(parse(&full).unwrap_err().status().0, 431);
    }

    #[test]
    fn subprotocol_hook_picks_server_preference() {
        let c = HandshakeConfig {
            subprotocols: vec!["v2.wsgate".into(), "v1.wsgate".into()],
            ..cfg()
        };
        let r = GOOD.replace(
            "Origin:",
            "Sec-WebSocket-Protocol: chat, v1.wsgate, v2.wsgate\r\nOrigin:",
        );
        let req = parse_request(r.as_bytes(), &c).unwrap().unwrap();
        assert_eq!(req.subprotocol, Some("v2.wsgate"));
        assert!(String::from_utf8(accept_response(&req))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: v2.wsgate\r\n"));
        // No overlap: no header in the response.
        let r = GOOD.replace("Origin:", "Sec-WebSocket-Protocol: chat\r\nOrigin:");
        assert_eq!(
            parse_request(r.as_bytes(), &c)
                .unwrap()
                .unwrap()
                .subprotocol,
            None
        );
    }

    #[test]
    fn extension_offers_are_declined_by_omission() {
        let r = GOOD.replace(
            "Origin:",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nOrigin:",
        );
        let req = parse(&r).unwrap().unwrap();
        assert!(req.extension_offers.is_some());
        assert!(!String::from_utf8(accept_response(&req))
            .unwrap()
            .contains("Extensions"));
    }
}
