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

use super::deflate::negotiate::{negotiate, write_response_header, Agreed};

/// The GUID every accept key is derived with (§1.3).
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Header lines parsed without allocating. A head with more (legal: many
/// short lines still fit the size cap) is parsed again with room for every
/// line it has, so the byte cap is the only limit a client meets.
const INLINE_HEADERS: usize = 64;

/// Why a handshake was refused, with the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request head exceeds {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("method must be GET")]
    MethodNotGet,
    /// `HEAD`: answered like any other method but GET, without a body.
    #[error("method must be GET")]
    MethodHead,
    #[error("more than one {0} header")]
    Duplicate(&'static str),
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
            HandshakeError::MethodNotGet | HandshakeError::MethodHead => {
                (405, "Method Not Allowed")
            }
            HandshakeError::UnsupportedVersion => (426, "Upgrade Required"),
            HandshakeError::NotFound => (404, "Not Found"),
            _ => (400, "Bad Request"),
        }
    }

    /// The complete HTTP response refusing the upgrade.
    pub fn response(&self) -> Vec<u8> {
        let (code, phrase) = self.status();
        let body = self.to_string();
        match self {
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to, and
            // a sender of Upgrade lists it in Connection (§7.8).
            HandshakeError::UnsupportedVersion => http_response(
                code,
                phrase,
                &body,
                "Upgrade, close",
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                true,
            ),
            HandshakeError::MethodNotGet => {
                http_response(code, phrase, &body, "close", &[("Allow", "GET")], true)
            }
            // A response to HEAD has no body (RFC 9110 §9.3.2); its
            // Content-Length still says what a GET would have received.
            HandshakeError::MethodHead => {
                http_response(code, phrase, &body, "close", &[("Allow", "GET")], false)
            }
            _ => error_response(code, phrase, &body, &[]),
        }
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
    /// Accept permessage-deflate offers (RFC 7692).
    pub permessage_deflate: bool,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            path: "/ws".into(),
            max_head_bytes: 8 * 1024,
            subprotocols: Vec::new(),
            permessage_deflate: false,
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
    /// Extension offers (`Sec-WebSocket-Extensions`, the last line),
    /// unparsed, for logs and tests.
    pub extension_offers: Option<&'a str>,
    /// The accepted permessage-deflate offer, when the server enables the
    /// extension and the client offered it acceptably. Other extensions are
    /// declined by leaving them out of the response.
    pub deflate: Option<Agreed>,
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

/// Looks for the end of the request head (the blank line) in `buf`, of
/// which the first `scanned` bytes were looked at before without finding it.
///
/// Only the new bytes are examined, so a head that arrives a byte at a time
/// costs linear time in total; the caller parses once, when this finds the
/// end. Returns the head's length. Refuses, without waiting for the rest, a
/// head over `max_head_bytes` and bytes no request head can contain
/// (control characters other than CR, LF and HTAB: random or TLS bytes).
pub fn scan_head(
    buf: &[u8],
    scanned: usize,
    max_head_bytes: usize,
) -> Result<Option<usize>, HandshakeError> {
    // Nothing at or past the cap is looked at: the verdict on a head is the
    // same however its bytes were split into reads.
    let limit = buf.len().min(max_head_bytes);
    #[cfg(test)]
    tests::count_scanned(limit.saturating_sub(scanned));
    for (i, &b) in buf.iter().enumerate().take(limit).skip(scanned) {
        match b {
            // A line ends; the head ends if the line was empty (CRLF or a
            // bare LF, which RFC 9112 §2.2 lets a recipient accept).
            b'\n' => {
                let before = &buf[..i];
                if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
                    return Ok(Some(i + 1));
                }
            }
            b'\r' | b'\t' => {}
            0..=0x1f | 0x7f => {
                return Err(HandshakeError::Malformed(
                    "control character in request head",
                ))
            }
            _ => {}
        }
    }
    if buf.len() >= max_head_bytes {
        return Err(HandshakeError::HeadTooLarge(max_head_bytes));
    }
    Ok(None)
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (read more); the head cap
/// is enforced here so a client cannot make the caller buffer without bound.
/// Callers reading from a socket find the end with [`scan_head`] first and
/// call this once.
pub fn parse_request<'a>(
    buf: &'a [u8],
    cfg: &HandshakeConfig,
) -> Result<Option<UpgradeRequest<'a>>, HandshakeError> {
    #[cfg(test)]
    tests::count_parse();
    let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    match parse_with(buf, cfg, &mut inline) {
        Err(Retry::TooManyHeaders) => {
            // Rare (a head with over 64 lines): room for every line it has,
            // bounded by the head cap (a line is at least 3 bytes).
            let head = &buf[..buf.len().min(cfg.max_head_bytes)];
            let lines = head.iter().filter(|&&b| b == b'\n').count() + 1;
            let mut many = vec![httparse::EMPTY_HEADER; lines];
            match parse_with(buf, cfg, &mut many) {
                Err(Retry::TooManyHeaders) => {
                    Err(HandshakeError::Malformed("too many header lines"))
                }
                Err(Retry::Failed(e)) => Err(e),
                Ok(r) => Ok(r),
            }
        }
        Err(Retry::Failed(e)) => Err(e),
        Ok(r) => Ok(r),
    }
}

enum Retry {
    TooManyHeaders,
    Failed(HandshakeError),
}

impl From<HandshakeError> for Retry {
    fn from(e: HandshakeError) -> Retry {
        Retry::Failed(e)
    }
}

/// Remembers one header value and refuses a second line of the same name.
fn once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a [u8],
    name: &'static str,
) -> Result<(), HandshakeError> {
    if slot.is_some() {
        return Err(HandshakeError::Duplicate(name));
    }
    *slot = Some(utf8_value(value)?);
    Ok(())
}

/// A header value the server reads: it must be UTF-8 (values it ignores may
/// hold obs-text, RFC 9110 §5.5, and are never decoded).
fn utf8_value(value: &[u8]) -> Result<&str, HandshakeError> {
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| HandshakeError::Malformed("header value is not UTF-8"))
}

/// Splits a request target into path and query. Origin-form (`/ws?q`) is
/// what clients send; absolute-form (`http://host/ws?q`, RFC 9112 §3.2.2)
/// must be accepted too and names the path the same way.
fn split_target(target: &str) -> (&str, Option<&str>, Option<&str>) {
    let mut authority = None;
    let mut rest = target;
    if !target.starts_with('/') {
        if let Some((scheme, after)) = target.split_once("://") {
            if ["http", "https", "ws", "wss"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s))
            {
                let end = after.find(['/', '?']).unwrap_or(after.len());
                authority = Some(&after[..end]);
                rest = &after[end..];
            }
        }
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    // `http://host?q` has an empty path, which means "/" (RFC 9112 §3.2.1).
    let path = if path.is_empty() && authority.is_some() {
        "/"
    } else {
        path
    };
    (path, query, authority)
}

fn parse_with<'a>(
    buf: &'a [u8],
    cfg: &HandshakeConfig,
    headers: &mut [httparse::Header<'a>],
) -> Result<Option<UpgradeRequest<'a>>, Retry> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= cfg.max_head_bytes {
                return Err(HandshakeError::HeadTooLarge(cfg.max_head_bytes).into());
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Retry::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed("cannot parse request head").into()),
    };
    if head_len > cfg.max_head_bytes {
        return Err(HandshakeError::HeadTooLarge(cfg.max_head_bytes).into());
    }
    match req.method {
        Some("GET") => {}
        Some("HEAD") => return Err(HandshakeError::MethodHead.into()),
        _ => return Err(HandshakeError::MethodNotGet.into()),
    }
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersion.into());
    }
    let (path, query, target_authority) = split_target(req.path.unwrap_or(""));

    let mut host = None;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = None;
    let mut key = None;
    let mut origin = None;
    let mut authorization = None;
    let mut protocol_lines = 0usize;
    let mut extensions = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            once(&mut host, h.value, "Host")?;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(utf8_value(h.value)?, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(utf8_value(h.value)?, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            // RFC 6455 §4.1: the client sends exactly one.
            once(&mut version, h.value, "Sec-WebSocket-Version")?;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(HandshakeError::BadKey.into());
            }
            key = Some(utf8_value(h.value).map_err(|_| HandshakeError::BadKey)?);
        } else if name.eq_ignore_ascii_case("origin") {
            once(&mut origin, h.value, "Origin")?;
        } else if name.eq_ignore_ascii_case("authorization") {
            once(&mut authorization, h.value, "Authorization")?;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            utf8_value(h.value)?;
            protocol_lines += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions = Some(utf8_value(h.value)?);
        }
    }
    // In absolute form the target's authority is the host (RFC 9112 §3.2.2).
    let host = target_authority
        .or(host)
        .filter(|h| !h.is_empty())
        .ok_or(HandshakeError::MissingHost)?;
    if !upgrade {
        return Err(HandshakeError::NotUpgrade.into());
    }
    if !connection {
        return Err(HandshakeError::NoConnectionUpgrade.into());
    }
    if version != Some("13") {
        return Err(HandshakeError::UnsupportedVersion.into());
    }
    let key = key.ok_or(HandshakeError::BadKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey.into());
    }
    if path != cfg.path {
        return Err(HandshakeError::NotFound.into());
    }
    let deflate = if cfg.permessage_deflate && extensions.is_some() {
        negotiate(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .filter_map(|h| std::str::from_utf8(h.value).ok()),
        )
    } else {
        None
    };
    // Several Sec-WebSocket-Protocol lines are one comma list (RFC 9110
    // §5.3): the offer is every line's items, in order.
    let subprotocol = if protocol_lines == 0 || cfg.subprotocols.is_empty() {
        None
    } else {
        let offered = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        select_subprotocol(offered, &cfg.subprotocols)
    };
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
        deflate,
    }))
}

/// The subprotocol hook: the first of the server's preferences that the
/// client offered, returned as the client spelled it.
fn select_subprotocol<'a>(
    offered: impl Iterator<Item = &'a str> + Clone,
    supported: &[String],
) -> Option<&'a str> {
    supported
        .iter()
        .find_map(|want| offered.clone().find(|p| p.eq_ignore_ascii_case(want)))
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
    if let Some(agreed) = req.deflate {
        write_response_header(agreed, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete plain-text HTTP error response that closes the connection.
pub fn error_response(code: u16, phrase: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    http_response(code, phrase, body, "close", extra, true)
}

/// An HTTP response with a plain-text `body` (sent only if `with_body`;
/// Content-Length is the same either way) and the given Connection value.
fn http_response(
    code: u16,
    phrase: &str,
    body: &str,
    connection: &str,
    extra: &[(&str, &str)],
    with_body: bool,
) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        body.len() + 1
    );
    for (k, v) in extra {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    if with_body {
        s.push_str(body);
        s.push('\n');
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static SCANNED: Cell<usize> = const { Cell::new(0) };
        static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn count_scanned(n: usize) {
        SCANNED.with(|c| c.set(c.get() + n));
    }

    pub(super) fn count_parse() {
        PARSES.with(|c| c.set(c.get() + 1));
    }

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
            if code == 426 {
                assert!(resp.contains("Connection: Upgrade, close\r\n"));
                assert!(resp.contains("Upgrade: websocket\r\n"));
                assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
            } else {
                assert!(resp.contains("Connection: close\r\n"));
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

    #[test]
    fn permessage_deflate_is_accepted_when_enabled() {
        let c = HandshakeConfig {
            permessage_deflate: true,
            ..cfg()
        };
        let offer = |lines: &str| {
            let r = GOOD.replace("Origin:", &format!("{lines}Origin:"));
            let req = parse_request(r.as_bytes(), &c).unwrap().unwrap();
            (
                req.deflate,
                String::from_utf8(accept_response(&req)).unwrap(),
            )
        };
        let (d, resp) =
            offer("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        assert_eq!(d.unwrap().server_max_window_bits, 15);
        assert!(resp.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ), "{resp}");
        // Offers over two lines form one list.
        let (d, resp) = offer(
            "Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
        );
        assert_eq!(d.unwrap().server_max_window_bits, 10);
        assert!(resp.contains("; server_max_window_bits=10\r\n"), "{resp}");
        // A malformed offer is declined, and the upgrade still succeeds.
        let (d, resp) =
            offer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"1\r\n");
        assert_eq!(d, None);
        assert!(resp.starts_with("HTTP/1.1 101") && !resp.contains("Extensions"));
        // No offer, no extension.
        assert_eq!(offer("").0, None);
    }

    /// Feeds `head` to the scanner `step` bytes at a time the way a
    /// connection does (append, scan the new bytes, parse once at the end).
    fn feed_in_steps(head: &[u8], step: usize) -> (usize, usize, usize) {
        SCANNED.with(|c| c.set(0));
        PARSES.with(|c| c.set(0));
        let cfg = cfg();
        let mut buf = Vec::new();
        let mut done = None;
        for piece in head.chunks(step) {
            let scanned = buf.len();
            buf.extend_from_slice(piece);
            if let Some(end) = scan_head(&buf, scanned, cfg.max_head_bytes).unwrap() {
                let req = parse_request(&buf, &cfg).unwrap().unwrap();
                assert_eq!(req.head_len, end);
                done = Some(end);
                break;
            }
        }
        assert_eq!(done, Some(head.len()));
        (SCANNED.with(Cell::get), PARSES.with(Cell::get), head.len())
    }

    #[test]
    fn a_head_arriving_a_byte_at_a_time_is_scanned_once_and_parsed_once() {
        let pad = "a".repeat(7_600);
        let head = GOOD.replace("Origin:", &format!("X-Pad: {pad}\r\nOrigin:"));
        assert!(head.len() > 7_700 && head.len() < 8 * 1024);
        let (scanned, parses, len) = feed_in_steps(head.as_bytes(), 1);
        // Each byte looked at once (re-parsing from the start on every read
        // cost ~len²/2 = 30 million byte visits for this head).
        assert_eq!(scanned, len);
        assert_eq!(parses, 1);
        let (scanned, parses, len) = feed_in_steps(head.as_bytes(), 7);
        assert_eq!((scanned, parses), (len, 1));
    }

    #[test]
    fn the_end_of_the_head_is_found_across_pieces_in_every_spelling() {
        for end in ["\r\n\r\n", "\n\n", "\r\n\n", "\n\r\n"] {
            let head = format!("GET /ws HTTP/1.1\r\nHost: x{end}");
            for cut in 0..head.len() {
                let (a, b) = head.as_bytes().split_at(cut);
                let first = scan_head(a, 0, 8192).unwrap();
                let mut all = a.to_vec();
                all.extend_from_slice(b);
                let found = first.or(scan_head(&all, a.len(), 8192).unwrap());
                assert_eq!(found, Some(head.len()), "{end:?} cut at {cut}");
            }
        }
        // Frame bytes behind the head are not the head's business.
        let mut with_frame = GOOD.as_bytes().to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 0, 1, 2, 3]);
        assert_eq!(scan_head(&with_frame, 0, 8192), Ok(Some(GOOD.len())));
    }

    #[test]
    fn control_bytes_and_oversized_heads_are_refused_before_the_end() {
        let e = scan_head(b"\x16\x03\x01", 0, 8192).unwrap_err();
        assert_eq!(e.status().0, 400);
        let e = scan_head(b"GET / HTTP/1.1\r\nX: a\x00b", 0, 8192).unwrap_err();
        assert_eq!(e.status().0, 400);
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nX: a\tb", 0, 8192), Ok(None));
        // obs-text is fine.
        assert_eq!(
            scan_head(b"GET / HTTP/1.1\r\nX: caf\xe9", 0, 8192),
            Ok(None)
        );
        let e = scan_head(&[b'a'; 100], 0, 100).unwrap_err();
        assert_eq!(e.status().0, 431);
        let e = scan_head(b"GET / HTTP/1.1\r\n\r\n", 0, 10).unwrap_err();
        assert_eq!(e.status().0, 431);
    }

    #[test]
    fn duplicate_host_or_version_is_400() {
        for (line, name) in [
            ("Host: example.com\r\n", "Host"),
            ("Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Version"),
            ("Origin: http://example.com\r\n", "Origin"),
        ] {
            let r = GOOD.replace(line, &format!("{line}{line}"));
            let e = parse(&r).unwrap_err();
            assert_eq!(e, HandshakeError::Duplicate(name));
            assert_eq!(e.status().0, 400);
        }
    }

    #[test]
    fn absolute_form_targets_name_the_path() {
        let r = GOOD.replace(
            "GET /ws?token=abc ",
            "GET http://Example.com:8080/ws?token=abc ",
        );
        let req = parse(&r).unwrap().unwrap();
        assert_eq!(
            (req.path, req.query, req.host),
            ("/ws", Some("token=abc"), "Example.com:8080")
        );
        let r = GOOD.replace("GET /ws?token=abc ", "GET wss://h/ws ");
        assert_eq!(parse(&r).unwrap().unwrap().path, "/ws");
        let r = GOOD.replace("GET /ws?token=abc ", "GET http://h/other ");
        assert_eq!(parse(&r).unwrap_err().status().0, 404);
        let r = GOOD.replace("GET /ws?token=abc ", "GET http://h?x ");
        assert_eq!(parse(&r).unwrap_err().status().0, 404, "empty path is /");
    }

    #[test]
    fn obs_text_in_an_unused_header_is_accepted() {
        let mut r = GOOD
            .replace("Origin:", "User-Agent: caf\u{0}\r\nOrigin:")
            .into_bytes();
        let at = r.iter().position(|&b| b == 0).unwrap();
        r[at] = 0xe9;
        assert!(parse_request(&r, &cfg()).unwrap().is_some());
        // A header the server reads must still be text.
        let mut r = GOOD
            .replace("Origin: http://example.com", "Origin: http://\u{0}")
            .into_bytes();
        let at = r.iter().position(|&b| b == 0).unwrap();
        r[at] = 0xe9;
        assert_eq!(parse_request(&r, &cfg()).unwrap_err().status().0, 400);
    }

    #[test]
    fn a_subprotocol_offer_over_two_lines_is_read_whole() {
        let c = HandshakeConfig {
            subprotocols: vec!["v1.wsgate".into()],
            ..cfg()
        };
        let r = GOOD.replace(
            "Origin:",
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: superchat, v1.wsgate\r\nOrigin:",
        );
        let req = parse_request(r.as_bytes(), &c).unwrap().unwrap();
        assert_eq!(req.subprotocol, Some("v1.wsgate"));
    }

    #[test]
    fn head_gets_405_without_a_body() {
        let e = parse(&GOOD.replace("GET", "HEAD")).unwrap_err();
        assert_eq!(e.status().0, 405);
        let resp = String::from_utf8(e.response()).unwrap();
        assert!(resp.contains("Allow: GET\r\n"));
        assert!(resp.ends_with("\r\n\r\n"), "no body: {resp:?}");
    }

    #[test]
    fn many_short_header_lines_fit_under_the_size_cap() {
        let lines: String = (0..900).map(|i| format!("X{i}:\r\n")).collect();
        let r = GOOD.replace("Origin:", &format!("{lines}Origin:"));
        assert!(r.len() < 8 * 1024);
        assert!(parse(&r).unwrap().is_some());
    }

    #[test]
    fn the_scan_never_refuses_a_control_byte_the_parser_accepts() {
        // Every byte the scan refuses is one httparse refuses too, wherever
        // it sits in the head (else the scan would turn away valid heads).
        for b in (0u8..=0x1f).chain([0x7f]) {
            if matches!(b, b'\r' | b'\n' | b'\t') {
                continue;
            }
            let c = b as char;
            for head in [
                format!("GET /w{c}s HTTP/1.1\r\nHost: x\r\n\r\n"),
                format!("GET /ws HTTP/1.1\r\nHo{c}st: x\r\n\r\n"),
                format!("GET /ws HTTP/1.1\r\nHost: a{c}b\r\n\r\n"),
                format!("G{c}ET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            ] {
                let mut headers = [httparse::EMPTY_HEADER; 4];
                let parsed = httparse::Request::new(&mut headers).parse(head.as_bytes());
                assert!(parsed.is_err(), "httparse accepts {b:#x} in {head:?}");
                assert!(scan_head(head.as_bytes(), 0, 8192).is_err());
            }
        }
    }
}
