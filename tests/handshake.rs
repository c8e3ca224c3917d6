//! The HTTP upgrade over real sockets: the accept key, requests that arrive
//! in pieces or with frames pipelined behind them, every refusal status with
//! its headers, and the handshake timeout.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use wsgate::protocol::frame::OpCode;

/// Sends `request` on a fresh raw socket and reads the whole response.
fn refused(server: &wsgate::ServerHandle, request: &str) -> HttpResponse {
    let mut c = RawClient::connect(server.local_addr());
    c.send(request.as_bytes());
    c.read_response()
}

/// Asserts a refusal: the status, `Connection: close`, a non-empty plain
/// text body, and no upgrade.
fn assert_refused(r: &HttpResponse, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.head);
    // `close` (a 426 also lists `Upgrade`, RFC 9110 §7.8).
    let connection = r.header("Connection").unwrap_or_default();
    assert!(
        connection.split(',').any(|t| t.trim() == "close"),
        "{:?}",
        r.head
    );
    assert!(r.header("Sec-WebSocket-Accept").is_none(), "{:?}", r.head);
    let len: usize = r
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, r.body.len(), "Content-Length matches the body");
    assert!(!r.body.trim().is_empty(), "refusals say why");
}

#[test]
fn rfc_sample_key_gets_the_rfc_accept_value() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    c.send(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
    let head = c.read_head();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head:?}"
    );
    let r = HttpResponse {
        status: 101,
        head,
        body: String::new(),
    };
    assert_eq!(r.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert!(r
        .header("Upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
    assert!(r
        .header("Connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    // No extension was offered, so none may be accepted.
    assert!(r.header("Sec-WebSocket-Extensions").is_none());
    // The connection is really open: a frame is echoed.
    c.send_frame(true, OpCode::Text, b"after the upgrade");
    assert_eq!(c.frame(), (OpCode::Text, b"after the upgrade".to_vec()));
    let t = server.total_stats();
    assert_eq!(t.upgraded, 1);
    assert_eq!(t.handshake_failures, 0);
}

#[test]
fn tungstenite_client_upgrades_and_real_world_header_spellings_are_accepted() {
    let server = start_echo(|_| {});
    // tungstenite checks the accept key itself.
    assert_still_serves(server.local_addr());
    // Firefox sends "keep-alive, Upgrade"; header names and the Upgrade
    // token are case-insensitive.
    let req = "GET /ws?x=1 HTTP/1.1\r\nhost: a.example\r\nUPGRADE: WebSocket\r\n\
               connection: keep-alive, Upgrade\r\nsec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\
               sec-websocket-version: 13\r\nOrigin: http://a.example\r\n\r\n";
    let mut c = RawClient::connect(server.local_addr());
    c.send(req.as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    // base64(SHA-1("AQIDBAUGBwgJCgsMDQ4PEA==" + GUID)), RFC 6455 §4.2.2.
    assert!(
        head.contains("Sec-WebSocket-Accept: C/0nmHhBztSRGR1CwL6Tf4ZjwpY=\r\n"),
        "{head:?}"
    );
    c.send_frame(true, OpCode::Binary, &[1, 2, 3]);
    assert_eq!(c.frame(), (OpCode::Binary, vec![1, 2, 3]));
}

#[test]
fn request_delivered_one_byte_per_write_still_upgrades() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    let req = upgrade_request("/ws", SAMPLE_KEY);
    for b in req.as_bytes() {
        c.tcp.write_all(std::slice::from_ref(b)).unwrap();
        c.tcp.flush().unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    assert!(head.contains(SAMPLE_ACCEPT));
    // Frames dribbled in byte by byte too (header and payload split).
    let frame = client_frame(true, OpCode::Text, b"dribbled");
    for b in &frame {
        c.tcp.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
    assert_eq!(c.frame(), (OpCode::Text, b"dribbled".to_vec()));
    assert_eq!(server.total_stats().upgraded, 1);
}

#[test]
fn frames_pipelined_behind_the_request_head_are_answered() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    let mut bytes = upgrade_request("/ws", SAMPLE_KEY).into_bytes();
    bytes.extend(client_frame(true, OpCode::Text, b"first"));
    bytes.extend(client_frame(true, OpCode::Ping, b"p"));
    bytes.extend(client_frame(true, OpCode::Binary, b"second"));
    c.send(&bytes); // one write: head and frames together
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    assert_eq!(c.frame(), (OpCode::Text, b"first".to_vec()));
    assert_eq!(c.frame(), (OpCode::Pong, b"p".to_vec()));
    assert_eq!(c.frame(), (OpCode::Binary, b"second".to_vec()));
}

#[test]
fn pipelined_bytes_behind_a_head_that_arrived_in_pieces_are_answered() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    let req = upgrade_request("/ws", SAMPLE_KEY);
    let (a, b) = req.split_at(20);
    c.send(a.as_bytes());
    std::thread::sleep(Duration::from_millis(30));
    let mut rest = b.as_bytes().to_vec();
    rest.extend(client_frame(true, OpCode::Text, b"late half"));
    c.send(&rest);
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    assert_eq!(c.frame(), (OpCode::Text, b"late half".to_vec()));
}

#[test]
fn wrong_version_gets_426_naming_version_13() {
    let server = start_echo(|_| {});
    for version in ["8", "14", ""] {
        let req = upgrade_request("/ws", SAMPLE_KEY).replace(
            "Sec-WebSocket-Version: 13\r\n",
            &format!("Sec-WebSocket-Version: {version}\r\n"),
        );
        let r = refused(&server, &req);
        assert_refused(&r, 426);
        assert_eq!(
            r.header("Sec-WebSocket-Version"),
            Some("13"),
            "{:?}",
            r.head
        );
        // RFC 9110 §15.5.22: a 426 says what to upgrade to.
        assert_eq!(r.header("Upgrade"), Some("websocket"), "{:?}", r.head);
        assert_eq!(
            r.header("Connection"),
            Some("Upgrade, close"),
            "{:?}",
            r.head
        );
    }
    // Missing altogether.
    let req = upgrade_request("/ws", SAMPLE_KEY).replace("Sec-WebSocket-Version: 13\r\n", "");
    let r = refused(&server, &req);
    assert_refused(&r, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    let t = server.total_stats();
    assert_eq!(t.rejected_version, 4);
    assert_eq!(t.upgraded, 0);
}

#[test]
fn bad_requests_get_400_with_connection_close() {
    let server = start_echo(|_| {});
    let good = upgrade_request("/ws", SAMPLE_KEY);
    let key_line = format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n");
    let cases: Vec<(&str, String)> = vec![
        ("missing key", good.replace(&key_line, "")),
        (
            "key not base64",
            good.replace(SAMPLE_KEY, "not base64 at all!!"),
        ),
        // Valid base64, but 15 bytes instead of 16.
        (
            "key of the wrong length",
            good.replace(SAMPLE_KEY, "AQIDBAUGBwgJCgsMDQ4P"),
        ),
        (
            "two keys",
            good.replace(&key_line, &format!("{key_line}{key_line}")),
        ),
        (
            "missing Upgrade",
            good.replace("Upgrade: websocket\r\n", ""),
        ),
        (
            "Upgrade is not websocket",
            good.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"),
        ),
        (
            "Connection without upgrade",
            good.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"),
        ),
        ("missing Host", good.replace("Host: 127.0.0.1\r\n", "")),
        ("HTTP/1.0", good.replace("HTTP/1.1\r\n", "HTTP/1.0\r\n")),
        (
            "not HTTP",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".to_string(),
        ),
    ];
    for (what, req) in &cases {
        let r = refused(&server, req);
        assert_eq!(r.status, 400, "{what}: {:?}", r.head);
        assert_refused(&r, 400);
    }
    let t = server.total_stats();
    assert_eq!(t.rejected_bad_request, cases.len() as u64);
    assert_eq!(t.handshake_failures, cases.len() as u64);
    assert_eq!(t.upgraded, 0);
}

#[test]
fn wrong_path_gets_404_and_post_gets_405() {
    let server = start_echo(|_| {});
    for path in ["/", "/wss", "/ws/", "/other?x=/ws"] {
        let r = refused(&server, &upgrade_request(path, SAMPLE_KEY));
        assert_refused(&r, 404);
    }
    // The query string is not part of the path.
    let mut c = RawClient::connect(server.local_addr());
    c.send(upgrade_request("/ws?token=abc", SAMPLE_KEY).as_bytes());
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));

    let post = upgrade_request("/ws", SAMPLE_KEY).replacen("GET ", "POST ", 1);
    let r = refused(&server, &post);
    assert_refused(&r, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    let t = server.total_stats();
    assert_eq!(t.rejected_not_found, 4);
    assert_eq!(t.rejected_method, 1);
    assert_eq!(t.upgraded, 1);
}

#[test]
fn request_head_over_8_kib_gets_431_and_just_under_upgrades() {
    let server = start_echo(|_| {});
    let pad = |n: usize| {
        upgrade_request("/ws", SAMPLE_KEY).replace(
            "Host: 127.0.0.1\r\n",
            &format!("Host: 127.0.0.1\r\nX-Pad: {}\r\n", "a".repeat(n)),
        )
    };
    // Complete but too long, sent in one write.
    let big = pad(9 * 1024);
    assert!(big.len() > 8 * 1024);
    let r = refused(&server, &big);
    assert_refused(&r, 431);
    // Too long and never finished: refused as soon as the cap is passed,
    // without waiting for the end of the head.
    let mut c = RawClient::connect(server.local_addr());
    let endless = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "b".repeat(8 * 1024 + 10)
    );
    c.send(endless.as_bytes());
    let r = c.read_response();
    assert_refused(&r, 431);
    // Just under the cap is fine.
    let fits = pad(7 * 1024);
    assert!(fits.len() < 8 * 1024);
    let mut c = RawClient::connect(server.local_addr());
    c.send(fits.as_bytes());
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    c.send_frame(true, OpCode::Text, b"ok");
    assert_eq!(c.frame(), (OpCode::Text, b"ok".to_vec()));
    assert_eq!(server.total_stats().rejected_too_large, 2);
}

#[test]
fn silent_and_half_finished_clients_are_closed_after_the_handshake_timeout() {
    let server = start_echo(|c| c.handshake_timeout = Duration::from_millis(300));
    let addr = server.local_addr();
    let t0 = Instant::now();
    let mut silent = RawClient::connect(addr);
    let mut half = RawClient::connect(addr);
    half.send(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n");
    // An upgraded client on the same server must outlive the timeout.
    let mut good = RawClient::upgraded(addr);

    assert_eq!(silent.next_within(Duration::from_secs(2)), Got::Eof);
    assert_eq!(half.next_within(Duration::from_secs(2)), Got::Eof);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "closed late: {took:?}");

    std::thread::sleep(Duration::from_millis(300));
    good.send_frame(true, OpCode::Text, b"still open");
    assert_eq!(good.frame(), (OpCode::Text, b"still open".to_vec()));
    eventually(Duration::from_secs(2), "two handshake timeouts", || {
        server.total_stats().handshake_timeouts == 2
    });
    let t = server.total_stats();
    assert_eq!(t.upgraded, 1);
    assert_eq!(t.open, 1, "only the upgraded client is held");
}

#[test]
fn a_request_followed_at_once_by_the_clients_fin_still_gets_its_response() {
    // HTTP clients may half-close after the request (e.g. `nc -N`); the
    // response must still be sent.
    // Whether the request and the FIN reach the server in one wake-up is up
    // to timing, so try a few times, refused and accepted.
    let server = start_echo(|_| {});
    for i in 0..5 {
        let mut c = RawClient::connect(server.local_addr());
        c.send(upgrade_request("/nope", SAMPLE_KEY).as_bytes());
        c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut head = Vec::new();
        std::io::Read::read_to_end(&mut c.tcp, &mut head).expect("read to EOF");
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 404 "),
            "attempt {i}: no 404 before EOF, got {head:?}"
        );
    }
    for i in 0..5 {
        let mut c = RawClient::connect(server.local_addr());
        c.send(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
        c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut head = Vec::new();
        std::io::Read::read_to_end(&mut c.tcp, &mut head).expect("read to EOF");
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "attempt {i}: no 101 before EOF, got {head:?}"
        );
    }
}

#[test]
fn a_close_or_a_violation_pipelined_behind_the_head_is_handled_after_the_101() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    let mut bytes = upgrade_request("/ws", SAMPLE_KEY).into_bytes();
    bytes.extend(client_frame(true, OpCode::Text, b"hi"));
    bytes.extend(client_frame(true, OpCode::Close, &close_payload(4001, b"")));
    c.send(&bytes);
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    assert_eq!(c.frame(), (OpCode::Text, b"hi".to_vec()));
    c.expect_close(4001);

    let mut c = RawClient::connect(server.local_addr());
    let mut bytes = upgrade_request("/ws", SAMPLE_KEY).into_bytes();
    bytes.extend_from_slice(&[0x81, 0x02, b'n', b'o']); // unmasked
    c.send(&bytes);
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    c.expect_close(1002);
    let t = server.total_stats();
    assert_eq!((t.upgraded, t.peer_closes, t.protocol_errors), (2, 1, 1));
}

#[test]
fn offered_extensions_and_subprotocols_are_declined() {
    let server = start_echo(|_| {});
    let req = upgrade_request("/ws", SAMPLE_KEY).replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Protocol: chat, superchat\r\n\r\n",
    );
    let mut c = RawClient::connect(server.local_addr());
    c.send(req.as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("sec-websocket-extensions"), "{head:?}");
    assert!(!lower.contains("sec-websocket-protocol"), "{head:?}");
    // Declined means no compression: an RSV1 frame is a violation.
    let mut f = client_frame(true, OpCode::Text, b"x");
    f[0] |= 0x40;
    c.send(&f);
    c.expect_close(1002);
}

#[test]
fn the_configured_path_is_the_only_websocket_endpoint() {
    let server = start_echo(|c| c.path = "/chat/v1".into());
    let r = refused(&server, &upgrade_request("/ws", SAMPLE_KEY));
    assert_refused(&r, 404);
    let mut c = RawClient::connect(server.local_addr());
    c.send(upgrade_request("/chat/v1", SAMPLE_KEY).as_bytes());
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    c.send_frame(true, OpCode::Text, b"on the configured path");
    assert_eq!(
        c.frame(),
        (OpCode::Text, b"on the configured path".to_vec())
    );
}

#[test]
fn a_second_host_or_version_line_gets_400() {
    let server = start_echo(|_| {});
    let good = upgrade_request("/ws", SAMPLE_KEY);
    for line in ["Host: 127.0.0.1\r\n", "Sec-WebSocket-Version: 13\r\n"] {
        let twice = good.replace(line, &format!("{line}{line}"));
        let r = refused(&server, &twice);
        assert_refused(&r, 400);
        assert!(r.body.contains("more than one"), "{:?}", r.body);
    }
    let other_host = good.replace("Host: 127.0.0.1\r\n", "Host: a\r\nHost: b\r\n");
    assert_refused(&refused(&server, &other_host), 400);
    assert_eq!(server.total_stats().rejected_bad_request, 3);
    assert_eq!(server.total_stats().upgraded, 0);
}

#[test]
fn an_absolute_form_request_target_upgrades_by_its_path() {
    let server = start_echo(|_| {});
    let mut c = RawClient::connect(server.local_addr());
    let req =
        upgrade_request("/ws", SAMPLE_KEY).replacen("GET /ws ", "GET http://127.0.0.1/ws?x=1 ", 1);
    c.send(req.as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    c.send_frame(true, OpCode::Text, b"absolute");
    assert_eq!(c.frame(), (OpCode::Text, b"absolute".to_vec()));
    // Its path still has to be the endpoint.
    let elsewhere =
        upgrade_request("/ws", SAMPLE_KEY).replacen("GET /ws ", "GET http://127.0.0.1/other ", 1);
    assert_refused(&refused(&server, &elsewhere), 404);
}

#[test]
fn obs_text_in_a_header_the_server_ignores_is_accepted() {
    let server = start_echo(|_| {});
    let mut req = upgrade_request("/ws", SAMPLE_KEY)
        .replace("\r\n\r\n", "\r\nUser-Agent: caf\u{0}\r\n\r\n")
        .into_bytes();
    let at = req.iter().position(|&b| b == 0).unwrap();
    req[at] = 0xe9; // Latin-1 'é': not UTF-8, legal obs-text
    let mut c = RawClient::connect(server.local_addr());
    c.send(&req);
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    c.send_frame(true, OpCode::Text, b"caf\xc3\xa9");
    assert_eq!(c.frame(), (OpCode::Text, "café".as_bytes().to_vec()));
}

#[test]
fn head_gets_405_with_allow_get_and_no_body() {
    let server = start_echo(|_| {});
    let req = upgrade_request("/ws", SAMPLE_KEY).replacen("GET ", "HEAD ", 1);
    let mut c = RawClient::connect(server.local_addr());
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 405, "{:?}", r.head);
    assert_eq!(r.header("Allow"), Some("GET"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.body, "", "a response to HEAD has no body");
    assert_eq!(server.total_stats().rejected_method, 1);
}

#[test]
fn many_short_header_lines_under_the_size_cap_upgrade() {
    let server = start_echo(|_| {});
    // 600 lines (~5 KiB) is far under the 8 KiB cap: only bytes count.
    let lines: String = (0..600).map(|i| format!("X-{i}: v\r\n")).collect();
    let req = upgrade_request("/ws", SAMPLE_KEY).replace("\r\n\r\n", &format!("\r\n{lines}\r\n"));
    assert!(req.len() < 8 * 1024);
    let mut c = RawClient::connect(server.local_addr());
    c.send(req.as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    // Past the cap it is the size that is refused (431), not the count.
    let lines: String = (0..1200).map(|i| format!("X-{i}: v\r\n")).collect();
    let req = upgrade_request("/ws", SAMPLE_KEY).replace("\r\n\r\n", &format!("\r\n{lines}\r\n"));
    assert_refused(&refused(&server, &req), 431);
}
