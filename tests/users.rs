//! Messages to a user: `POST /publish?user=U` reaches every connection
//! whose token's `sub` is U, on every worker, and nobody else.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tungstenite::stream::MaybeTlsStream;

const SECRET: &str = "user-test-secret-0123456789";

pub fn token(user: &str) -> String {
    token_with(serde_json::json!({"sub": user, "exp": wsgate::security::unix_now() + 600}))
}

fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn connect_as(addr: SocketAddr, user: &str) -> Ws {
    connect_token(addr, &token(user))
}

fn connect_token(addr: SocketAddr, token: &str) -> Ws {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("ws://{addr}/ws?token={token}");
    let (ws, _) = tungstenite::client::client(url, MaybeTlsStream::Plain(tcp)).expect("upgrade");
    ws
}

fn silent(ws: &mut Ws) {
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        unreachable!()
    };
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if let Ok(m) = ws.read() {
        panic!("unexpected message: {m:?}");
    }
}

#[test]
fn a_user_message_reaches_every_connection_of_that_user_only() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg.jwt_secret = Some(SECRET.into());
    cfg.max_subscriptions = 1;
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    // Several connections, so the kernel spreads them over both workers.
    let mut alice: Vec<Ws> = (0..4).map(|_| connect_as(addr, "alice")).collect();
    let mut bob = connect_as(addr, "bob");
    let admin = server.admin_addr().unwrap();
    let (status, body) = http(admin, "POST", "/publish?user=alice", r#"{"n":1}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":4}"#));
    for a in alice.iter_mut() {
        assert_eq!(
            recv_text(a),
            r#"{"type":"message","user":"alice","payload":{"n":1}}"#
        );
    }
    silent(&mut bob);

    // Presence without a cluster: this node's subscriptions, and who.
    for a in alice.iter_mut().take(2) {
        subscribe(a, "stage");
    }
    let (status, body) = http(admin, "GET", "/presence?topic=stage&users=1", "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["subscriptions"], 2);
    assert_eq!(v["users"], serde_json::json!(["alice"]));
    // A client may ask too, about a topic its token allows (any, here).
    send(
        &mut bob,
        r#"{"type":"presence","topic":"stage","users":true}"#,
    );
    let v = recv(&mut bob);
    assert_eq!(v["type"], "presence", "{v}");
    assert_eq!(
        (v["subscriptions"].as_u64(), &v["users"]),
        (Some(2), &serde_json::json!(["alice"]))
    );
    // Not about a user's reserved topic.
    send(&mut bob, r#"{"type":"presence","topic":"\u0000u:alice"}"#);
    assert_eq!(recv(&mut bob)["code"], 403);

    // The reserved topic behind it is not a client's to take...
    send(&mut bob, r#"{"type":"subscribe","topic":"\u0000u:alice"}"#);
    let v = recv(&mut bob);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403))
    );
    // ...nor a backend's to name directly.
    let (status, _) = http(admin, "POST", "/publish?topic=%00u:alice", "1");
    assert_eq!(status, 400);
    // And it does not use up the connection's subscription limit (1 here).
    send(&mut bob, r#"{"type":"subscribe","topic":"news"}"#);
    assert_eq!(recv(&mut bob)["type"], "subscribed");

    // Alice's connections gone: nobody gets her messages.
    drop(alice);
    eventually(Duration::from_secs(5), "alice's connections closed", || {
        http(admin, "POST", "/publish?user=alice", "2").1 == r#"{"delivered":0}"#
    });
    let (status, _) = http(admin, "POST", "/publish?user=", "1");
    assert_eq!(status, 400);
}

#[test]
fn a_user_message_crosses_nodes_over_a_single_redis_too() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let node = || {
        let mut cfg = wsgate::Config::for_tests();
        cfg.workers = Some(2);
        cfg.drain_timeout = Duration::from_secs(1);
        cfg.jwt_secret = Some(SECRET.into());
        cfg.redis = Some(format!("redis://127.0.0.1:{rport}/"));
        cfg.cluster_prefix = "u1".into();
        wsgate::start(cfg).unwrap()
    };
    let (a, b) = (node(), node());
    let mut alice = connect_as(b.local_addr(), "alice");
    let mut bob = connect_as(b.local_addr(), "bob");
    // Only node B listens for alice, on her user topic's channel.
    eventually(Duration::from_secs(5), "B subscribed for alice", || {
        redis_cmd(rport, &["PUBSUB", "NUMSUB", "u1:t:\0u:alice"]).ends_with(":1\r\n")
    });
    let (status, _) = http(a.admin_addr().unwrap(), "POST", "/publish?user=alice", "7");
    assert_eq!(status, 200);
    assert_eq!(
        recv_text(&mut alice),
        r#"{"type":"message","user":"alice","payload":7}"#
    );
    silent(&mut bob);
}

#[test]
fn a_client_may_message_a_user_only_if_its_token_says_so() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg.jwt_secret = Some(SECRET.into());
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    let mut alice: Vec<Ws> = (0..3).map(|_| connect_as(addr, "alice")).collect();
    let exp = wsgate::security::unix_now() + 600;
    let mut support = connect_token(
        addr,
        &token_with(serde_json::json!({"sub": "support", "exp": exp, "users": ["alice", "vip.*"]})),
    );
    let mut bob = connect_as(addr, "bob");
    // No `users` claim: not allowed.
    send(
        &mut bob,
        r#"{"type":"publish","user":"alice","payload":"spam"}"#,
    );
    let v = recv(&mut bob);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403))
    );
    // Allowed by the claim: every connection of alice, on every worker.
    send(
        &mut support,
        r#"{"type":"publish","user":"alice","payload":{"ticket":9}}"#,
    );
    for a in alice.iter_mut() {
        assert_eq!(
            recv_text(a),
            r#"{"type":"message","user":"alice","payload":{"ticket":9}}"#
        );
        silent(a);
    }
    // Not a user the claim names.
    send(
        &mut support,
        r#"{"type":"publish","user":"bob","payload":1}"#,
    );
    assert_eq!(recv(&mut support)["code"], 403);
    silent(&mut bob);
    // Topic and user together is a malformed command.
    send(
        &mut support,
        r#"{"type":"publish","topic":"t","user":"alice","payload":1}"#,
    );
    assert_eq!(recv(&mut support)["code"], 400);
}

/// With topic history on, messages to a user keep their own shape and are
/// not numbered (a user's reserved topic keeps no history), whether a
/// backend or a client sends them; topics still are.
#[test]
fn user_messages_are_not_numbered_when_topics_keep_history() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.jwt_secret = Some(SECRET.into());
    cfg.history_size = 10;
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    let admin = server.admin_addr().unwrap();
    let mut alice = connect_as(addr, "alice");
    let (status, body) = http(admin, "POST", "/publish?user=alice", r#"{"n":1}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    assert_eq!(
        recv_text(&mut alice),
        r#"{"type":"message","user":"alice","payload":{"n":1}}"#
    );
    let mut sender = connect_token(
        addr,
        &token_with(serde_json::json!({
            "sub": "bot", "users": ["alice"], "exp": wsgate::security::unix_now() + 600
        })),
    );
    send(
        &mut sender,
        r#"{"type":"publish","user":"alice","payload":{"n":2}}"#,
    );
    assert_eq!(
        recv_text(&mut alice),
        r#"{"type":"message","user":"alice","payload":{"n":2}}"#
    );
    // A topic, for contrast, carries its position.
    subscribe_with_position(&mut alice, "news");
    let (status, _) = http(admin, "POST", "/publish?topic=news", "3");
    assert_eq!(status, 200);
    let v = recv(&mut alice);
    assert_eq!(
        (v["type"].as_str(), v["offset"].as_u64()),
        (Some("message"), Some(1)),
        "{v}"
    );
}

fn subscribe_with_position(ws: &mut Ws, topic: &str) {
    send(
        ws,
        &serde_json::json!({"type": "subscribe", "topic": topic}).to_string(),
    );
    let v = recv(ws);
    assert_eq!(v["type"], "subscribed", "{v}");
}
