//! Arbitrary bytes as an HTTP upgrade request head.
//!
//! The event loop scans only the newly arrived bytes for the end of the head
//! (`scan_head`) and calls `parse_request` once that end is there. So besides
//! "no panic" this target checks that the scan finds the same end however the
//! bytes are split, that it never misses an end (or refuses a head) the
//! parser accepts, and that the parser's answer is stable under arrival
//! order: a prefix that is already accepted or refused gives the same verdict
//! as the whole input, and an accepted request is "incomplete" at every
//! shorter prefix. Accepted requests are turned into the 101 response, which
//! must be well-formed (no header injection through echoed values).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::protocol::handshake::{
    accept_key, accept_response, parse_request, scan_head, HandshakeConfig, HandshakeError,
    UpgradeRequest,
};

fuzz_target!(|data: &[u8]| {
    // The server's default settings...
    check(data, &HandshakeConfig::default());
    // ...and one with subprotocols to choose from, permessage-deflate on and
    // a tiny head cap, so the 431 path, the subprotocol hook and the
    // extension negotiation are reached too.
    let small = HandshakeConfig {
        path: "/".into(),
        max_head_bytes: 200,
        subprotocols: vec!["v2.wsgate".into(), "chat".into()],
        permessage_deflate: true,
    };
    check(data, &small);
});

fn check(data: &[u8], cfg: &HandshakeConfig) {
    let full = parse_request(data, cfg);
    match &full {
        Ok(Some(req)) => check_accepted(data, req, cfg),
        Ok(None) => assert!(data.len() < cfg.max_head_bytes, "head cap not enforced"),
        Err(e) => check_refusal(e),
    }
    // Arrival in pieces: a few cut points spread over the input, one of them
    // chosen by the content so the fuzzer can steer it.
    let n = data.len();
    let steer = data
        .iter()
        .fold(0usize, |a, &b| a.wrapping_mul(31) ^ b as usize);
    let cuts = [n / 4, n / 2, n - n / 8, if n > 0 { steer % n } else { 0 }];
    let cap = cfg.max_head_bytes;
    let whole = scan_head(data, 0, cap);
    if let Ok(Some(req)) = &full {
        // The loop parses when the scan finds the end: the scan must find one
        // no later than the parser's, and never refuse what it accepts.
        match &whole {
            Ok(Some(end)) => assert!(*end <= req.head_len, "scan end {end}"),
            other => panic!("scan gave {other:?} for an accepted head"),
        }
    }
    for cut in cuts {
        // The same end (or refusal) when the bytes arrive in two pieces.
        let split = match scan_head(&data[..cut], 0, cap) {
            Ok(None) => scan_head(data, cut, cap),
            found => found,
        };
        assert_eq!(split, whole, "scan split at {cut}");
        let part = parse_request(&data[..cut], cfg);
        match (&part, &full) {
            (Ok(None), _) => {}
            // A verdict on a prefix is final: more bytes cannot change it.
            (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "cut {cut}"),
            (Err(_), Err(_)) => {}
            _ => panic!("prefix of {cut} bytes gave {part:?}, the whole input {full:?}"),
        }
    }
}

fn check_accepted(data: &[u8], req: &UpgradeRequest<'_>, cfg: &HandshakeConfig) {
    assert!(req.head_len <= data.len() && req.head_len <= cfg.max_head_bytes);
    assert!(
        data[..req.head_len].ends_with(b"\n"),
        "head ends at a line end"
    );
    assert_eq!(req.path, cfg.path);
    assert!(!req.host.is_empty());
    // The accept key is the hash of some Sec-WebSocket-Key value.
    assert!(req
        .accept_key
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(c)));
    if let Some(p) = req.subprotocol {
        assert!(cfg.subprotocols.iter().any(|s| s.eq_ignore_ascii_case(p)));
    }
    // Every strict prefix of the head is incomplete, never refused.
    for cut in [0, req.head_len / 2, req.head_len - 1] {
        assert_eq!(parse_request(&data[..cut], cfg), Ok(None), "cut {cut}");
    }
    let resp = accept_response(req);
    assert!(resp.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // Exactly one blank line, at the very end, and every line break is CRLF:
    // nothing the client sent can end the head early or add a header line.
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n");
    assert_eq!(
        end,
        Some(resp.len() - 4),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    for (i, &b) in resp.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(resp.get(i + 1), Some(&b'\n')),
            b'\n' => assert_eq!(resp[i - 1], b'\r'),
            0 => panic!("NUL in the response"),
            _ => {}
        }
    }
    // The accept key is the RFC derivation of the key that was sent.
    let key = header_value(&data[..req.head_len], "sec-websocket-key").expect("key header");
    assert_eq!(req.accept_key, accept_key(key.as_bytes()));
    let text = String::from_utf8(resp).expect("101 response is UTF-8");
    let accept = std::str::from_utf8(&req.accept_key).unwrap();
    assert!(text.contains(&format!("\r\nSec-WebSocket-Accept: {accept}\r\n")));
}

/// The trimmed value of header `name` in a request head that was accepted.
fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn check_refusal(e: &HandshakeError) {
    let (code, _) = e.status();
    assert!((400..500).contains(&code), "{e:?} -> {code}");
    let resp = e.response();
    assert!(resp.starts_with(format!("HTTP/1.1 {code} ").as_bytes()));
    // `Connection: close`, or `Connection: Upgrade, close` on a 426.
    let text = String::from_utf8_lossy(&resp);
    let connection = text
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Connection: "))
        .expect("a Connection header");
    assert!(connection.split(',').any(|t| t.trim() == "close"), "{text:?}");
}
