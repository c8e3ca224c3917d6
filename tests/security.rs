//! Security at the door over real sockets: JWT at the handshake, topic
//! permissions, token expiry and refresh, Origin allow-list, handshake rate.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tungstenite::Message;

use common::*;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    wsgate::security::unix_now()
}

fn token_with(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(claims: serde_json::Value) -> String {
    token_with(SECRET, claims)
}

fn start(tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

fn authed(tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    start(|c| {
        c.jwt_secret = Some(SECRET.into());
        tweak(c);
    })
}

/// Sends an upgrade with extra headers and an optional query; returns the
/// status line's code and the socket (upgraded on 101).
fn upgrade(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = String::new();
    if code != 101 {
        let _ = tcp.read_to_string(&mut body);
    }
    (code, format!("{head}{body}"), tcp)
}

/// A tungstenite client presenting `token` in the Authorization header.
fn connect_with(addr: SocketAddr, token: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tungstenite::client::client(req, tungstenite::stream::MaybeTlsStream::Plain(tcp))
        .expect("upgrade with token")
        .0
}

#[test]
fn tokens_are_checked_before_the_upgrade() {
    let server = authed(|_| {});
    let addr = server.local_addr();
    let good = token(json!({"sub": "alice", "exp": now() + 60}));
    let bearer = format!("Bearer {good}");
    assert_eq!(upgrade(addr, "", &[("Authorization", &bearer)]).0, 101);
    assert_eq!(upgrade(addr, &format!("?token={good}"), &[]).0, 101);

    let expired = token(json!({"sub": "alice", "exp": now() - 120}));
    let forged = token_with("not-the-secret", json!({"sub": "alice", "exp": now() + 60}));
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60))
    );
    for (what, query, header) in [
        ("missing", String::new(), None),
        ("expired", String::new(), Some(expired)),
        ("wrong signature", String::new(), Some(forged)),
        ("alg none", String::new(), Some(alg_none)),
        ("garbage", "?token=not.a.jwt".to_string(), None),
    ] {
        let auth = header.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (code, resp, _) = upgrade(addr, &query, &headers);
        assert_eq!(code, 401, "{what}: {resp}");
        assert!(resp.contains("WWW-Authenticate: Bearer"), "{what}: {resp}");
        assert!(
            resp.to_lowercase().contains("token"),
            "{what} has no clear body: {resp}"
        );
    }
    let total = server.total_stats();
    assert_eq!(total.rejected_unauthorized, 5);
    assert_eq!(total.authenticated, 2);
}

#[test]
fn topic_permissions_come_from_the_token() {
    let server = authed(|_| {});
    let t = token(json!({"sub": "bob", "exp": now() + 60, "topics": ["news.*", "lobby"]}));
    let mut c = connect_with(server.local_addr(), &t);
    subscribe(&mut c, "news.sport");
    subscribe(&mut c, "lobby");
    send(&mut c, r#"{"type":"subscribe","topic":"admin"}"#);
    let v = recv(&mut c);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403))
    );
    send(&mut c, r#"{"type":"publish","topic":"secret","payload":1}"#);
    assert_eq!(recv(&mut c)["code"], 403);
    // Allowed publishes go through, and the connection is still fine.
    send(
        &mut c,
        r#"{"type":"publish","topic":"lobby","payload":"hi"}"#,
    );
    assert_eq!(recv(&mut c)["payload"], "hi");
}

fn close_code_within(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn expiry_closes_the_connection_unless_refreshed() {
    // Two refreshes in a row: no minimum interval between them here.
    let server = authed(|c| c.min_refresh_interval = Duration::ZERO);
    let short = json!({"sub": "carol", "exp": now() + 2});
    let mut lapsing = connect_with(server.local_addr(), &token(short.clone()));
    let mut refreshed = connect_with(server.local_addr(), &token(short));
    send(
        &mut refreshed,
        &json!({"type": "refresh", "token": token(json!({"sub": "carol", "exp": now() + 60}))})
            .to_string(),
    );
    assert_eq!(recv(&mut refreshed)["type"], "refreshed");
    // A token for someone else is not a refresh.
    send(
        &mut refreshed,
        &json!({"type": "refresh", "token": token(json!({"sub": "mallory", "exp": now() + 600}))})
            .to_string(),
    );
    assert_eq!(recv(&mut refreshed)["code"], 401);
    assert_eq!(
        close_code_within(&mut lapsing, Duration::from_secs(6)),
        Some(1008)
    );
    // The refreshed one outlives the first token.
    send(&mut refreshed, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut refreshed)["type"], "pong");
    assert_eq!(server.total_stats().token_expiries, 1);
}

#[test]
fn origin_allow_list() {
    let server = start(|c| {
        c.allowed_origins = vec!["https://app.example.com".into(), "*.example.org".into()]
    });
    let addr = server.local_addr();
    assert_eq!(
        upgrade(addr, "", &[("Origin", "https://app.example.com")]).0,
        101
    );
    assert_eq!(
        upgrade(addr, "", &[("Origin", "https://x.example.org")]).0,
        101
    );
    let (code, resp, _) = upgrade(addr, "", &[("Origin", "https://evil.example.net")]);
    assert_eq!(code, 403, "{resp}");
    assert_eq!(
        upgrade(addr, "", &[]).0,
        101,
        "no Origin (non-browser) is allowed by default"
    );
    let strict = start(|c| {
        c.allowed_origins = vec!["https://app.example.com".into()];
        c.require_origin = true;
    });
    assert_eq!(upgrade(strict.local_addr(), "", &[]).0, 403);
    assert_eq!(server.total_stats().rejected_forbidden, 1);
}

#[test]
fn per_ip_handshake_rate_limit() {
    let server = start(|c| c.max_handshakes_per_ip = 5.0);
    let codes: Vec<u16> = (0..15)
        .map(|_| upgrade(server.local_addr(), "", &[]).0)
        .collect();
    let ok = codes.iter().filter(|c| **c == 101).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert!((10..=11).contains(&ok), "burst of 2×5 expected: {codes:?}");
    assert_eq!(ok + limited, 15, "{codes:?}");
}
