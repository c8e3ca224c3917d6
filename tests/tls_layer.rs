//! The TLS layer (`wsgate::tls`) against the rustls client, in memory:
//! handshakes and data both ways for TLS 1.2 and 1.3 with records delivered
//! whole, in small pieces and byte by byte; resumption; certificate reload
//! (good and bad files); hostile input (garbage, truncated and oversized
//! ClientHellos, random bytes) failing with typed errors within the
//! handshake budget. The event loop's socket side is covered separately.

#[path = "support/tls.rs"]
mod tls;

use proptest::prelude::*;
use rustls::version::{TLS12, TLS13};
use rustls::{HandshakeKind, ProtocolVersion};
use tls::{Pair, Pki};
use wsgate::tls::{
    CertError, TlsCloseReason, TlsConn, TlsError, TlsLimits, TlsScratch,
    DEFAULT_MAX_HANDSHAKE_BUFFER,
};

fn exchange(version: &'static rustls::SupportedProtocolVersion, chunk: usize) {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[version]), &ctx, chunk);
    pair.handshake().unwrap();

    let expected = if std::ptr::eq(version, &TLS13) {
        ProtocolVersion::TLSv1_3
    } else {
        ProtocolVersion::TLSv1_2
    };
    assert_eq!(pair.server.protocol_version(), Some(expected));
    assert_eq!(pair.client.protocol_version(), Some(expected));
    assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pair.client.alpn_protocol(), Some(&b"http/1.1"[..]));

    // A WebSocket upgrade request up, its answer down, then bulk both ways
    // (more than one 16 KiB record).
    let request = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(pair.client_sends(request), request);
    let response = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
    assert_eq!(pair.server_sends(response), response);
    let bulk: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(pair.client_sends(&bulk), bulk);
    assert_eq!(pair.server_sends(&bulk), bulk);
    // Between records the connection holds no ciphertext buffer.
    assert_eq!(pair.server.buffered_capacity(), 0);
    if chunk < 16 {
        assert!(pair.max_server_buffered > 0, "partial records were carried");
    }
}

#[test]
fn tls13_handshake_and_data_whole_records() {
    exchange(&TLS13, usize::MAX);
}

#[test]
fn tls13_handshake_and_data_byte_by_byte() {
    exchange(&TLS13, 1);
}

#[test]
fn tls13_handshake_and_data_in_7_byte_pieces() {
    exchange(&TLS13, 7);
}

#[test]
fn tls12_handshake_and_data_whole_records() {
    exchange(&TLS12, usize::MAX);
}

#[test]
fn tls12_handshake_and_data_byte_by_byte() {
    exchange(&TLS12, 1);
}

#[test]
fn tls13_resumption_on_second_connection() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let client = pki.client_config(&[&TLS13]);

    let mut first = Pair::new(client.clone(), &ctx, usize::MAX);
    first.handshake().unwrap();
    assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
    // The tickets come after the handshake; the client stores them when it
    // reads them, e.g. with the first data.
    assert_eq!(first.server_sends(b"hello"), b"hello");

    let mut second = Pair::new(client, &ctx, usize::MAX);
    second.handshake().unwrap();
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(second.server.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(second.client_sends(b"again"), b"again");
}

#[test]
fn tls12_resumption_on_second_connection() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let client = pki.client_config(&[&TLS12]);
    let mut first = Pair::new(client.clone(), &ctx, usize::MAX);
    first.handshake().unwrap();
    assert_eq!(first.server_sends(b"hello"), b"hello");
    let mut second = Pair::new(client, &ctx, usize::MAX);
    second.handshake().unwrap();
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn reload_new_client_sees_new_cert_while_old_session_keeps_talking() {
    let pki = Pki::new();
    let (ctx, old_leaf) = pki.server();
    let client = pki.client_config(&[&TLS13]);

    let mut old = Pair::new(client.clone(), &ctx, usize::MAX);
    old.handshake().unwrap();
    assert_eq!(old.client.peer_certificates().unwrap()[0], old_leaf.der);

    let new_leaf = pki.leaf();
    pki.install(&new_leaf);
    ctx.reload().unwrap();

    // A new client (fresh config: no ticket to resume with) gets the new
    // certificate.
    let mut fresh = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    fresh.handshake().unwrap();
    assert_eq!(fresh.client.peer_certificates().unwrap()[0], new_leaf.der);
    assert_ne!(new_leaf.der, old_leaf.der);

    // The established session continues in both directions.
    for i in 0..3 {
        let msg = format!("still here {i}");
        assert_eq!(old.client_sends(msg.as_bytes()), msg.as_bytes());
        assert_eq!(old.server_sends(msg.as_bytes()), msg.as_bytes());
    }
}

#[test]
fn reload_with_bad_files_is_refused_and_old_cert_stays() {
    let pki = Pki::new();
    let (ctx, leaf) = pki.server();

    let check_old_cert_served = || {
        let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
        pair.handshake().unwrap();
        assert_eq!(pair.client.peer_certificates().unwrap()[0], leaf.der);
    };

    // Not PEM at all.
    std::fs::write(pki.cert_path(), b"this is not a certificate").unwrap();
    let err = ctx.reload().unwrap_err();
    assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
    check_old_cert_served();

    // A certificate with someone else's key.
    let other = pki.leaf();
    std::fs::write(pki.cert_path(), &leaf.chain_pem).unwrap();
    std::fs::write(pki.key_path(), &other.key_pem).unwrap();
    let err = ctx.reload().unwrap_err();
    assert!(matches!(err, CertError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains("key.pem"), "{err}");
    check_old_cert_served();

    // No key in the key file.
    std::fs::write(pki.key_path(), &leaf.chain_pem).unwrap();
    let err = ctx.reload().unwrap_err();
    assert!(matches!(err, CertError::NoKey { .. }), "{err}");
    check_old_cert_served();

    // Missing file.
    std::fs::remove_file(pki.key_path()).unwrap();
    let err = ctx.reload().unwrap_err();
    assert!(matches!(err, CertError::Read { .. }), "{err}");
    check_old_cert_served();
}

#[test]
fn garbage_instead_of_client_hello_is_a_typed_error() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut conn = TlsConn::new(ctx.server_config().clone()).unwrap();
    let mut scratch = TlsScratch::default();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    // A plain-text HTTP request on the TLS port.
    let err = conn
        .read_tls(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut scratch,
            &mut plain,
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, TlsError::Protocol(_)), "{err}");
    assert_eq!(
        err.close_reason(conn.is_handshaking()),
        TlsCloseReason::HandshakeFailed
    );
    assert!(plain.is_empty());
}

/// Takes the client's first flight (the ClientHello record).
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut client = rustls::ClientConnection::new(
        pki.client_config(&[&TLS13, &TLS12]),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 22, "a handshake record");
    hello
}

#[test]
fn client_hello_cut_short_inside_its_record_is_a_typed_error() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut hello = client_hello(&pki);
    // Shorten the record (and the handshake message in it) to 40 bytes of
    // body, so the ClientHello ends in the middle of its fields.
    let body = 40usize;
    hello.truncate(5 + body);
    hello[3..5].copy_from_slice(&(body as u16).to_be_bytes());
    hello[6..9].copy_from_slice(&((body - 4) as u32).to_be_bytes()[1..]);
    let mut conn = TlsConn::new(ctx.server_config().clone()).unwrap();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let err = conn
        .read_tls(&hello, &mut TlsScratch::default(), &mut plain, &mut out)
        .unwrap_err();
    assert!(matches!(err, TlsError::Protocol(_)), "{err}");
    // rustls answers a malformed message with a fatal alert record.
    assert_eq!(out.first(), Some(&21), "an alert record was queued");
}

#[test]
fn client_hello_that_stops_arriving_waits_within_its_budget() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let hello = client_hello(&pki);
    let mut conn = TlsConn::new(ctx.server_config().clone()).unwrap();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let outcome = conn
        .read_tls(
            &hello[..hello.len() - 1],
            &mut TlsScratch::default(),
            &mut plain,
            &mut out,
        )
        .unwrap();
    // Nothing to do but wait: the loop's handshake timeout closes it.
    assert!(!outcome.handshake_completed);
    assert!(conn.is_handshaking());
    assert!(out.is_empty());
    assert_eq!(conn.buffered(), hello.len() - 1);
}

#[test]
fn a_handshake_may_not_buffer_past_its_budget() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    // A handshake message announcing 60 000 bytes (under rustls' own 64 KiB
    // limit), sent as a stream of full handshake records: rustls must keep
    // them all to join the message, so the budget is what stops it.
    let mut stream = Vec::new();
    let mut body = vec![1u8, 0x00, 0xea, 0x60]; // ClientHello, length 60000
    body.resize(60_004, 0x41);
    for record in body.chunks(16 * 1024) {
        stream.extend_from_slice(&[22, 3, 1]);
        stream.extend_from_slice(&(record.len() as u16).to_be_bytes());
        stream.extend_from_slice(record);
    }
    for limit in [DEFAULT_MAX_HANDSHAKE_BUFFER, 4096] {
        let mut scratch = TlsScratch::new(TlsLimits {
            max_handshake_buffer: limit,
        });
        let mut conn = TlsConn::new(ctx.server_config().clone()).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let mut failed = None;
        for piece in stream.chunks(1000) {
            match conn.read_tls(piece, &mut scratch, &mut plain, &mut out) {
                Ok(_) => assert!(conn.buffered() <= limit),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let err = failed.expect("the oversized handshake failed");
        assert!(
            matches!(err, TlsError::HandshakeTooLarge { limit: l, .. } if l == limit),
            "{err}"
        );
        assert_eq!(err.close_reason(true), TlsCloseReason::HandshakeTooLarge);
    }
}

#[test]
fn close_notify_both_ways() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    // Client closes: the layer reports it.
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, 3);
    pair.handshake().unwrap();
    pair.client.send_close_notify();
    pair.pump().unwrap();
    assert!(pair.server_peer_closed);
    assert!(pair.server.peer_closed());

    // Server closes: the client sees a clean end of stream, and nothing
    // more can be written.
    let mut pair = Pair::new(pki.client_config(&[&TLS12]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    let mut out = Vec::new();
    pair.server.close_notify(&mut out).unwrap();
    pair.deliver_to_client(&out);
    assert!(pair.client_eof);
    let err = pair
        .server
        .write_plaintext(b"late", &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, TlsError::NotWritable));
}

#[test]
fn writing_before_the_handshake_is_refused() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut conn = TlsConn::new(ctx.server_config().clone()).unwrap();
    let mut out = Vec::new();
    let err = conn.write_plaintext(b"early", &mut out).unwrap_err();
    assert!(matches!(err, TlsError::NotWritable));
    assert!(out.is_empty());
}

#[test]
fn a_batch_of_frames_becomes_one_record_per_16k() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    // Ten small frames gathered in one loop turn: one record, whose
    // overhead (5-byte header, content type, 16-byte tag) is paid once.
    let frames: Vec<u8> = (0..10)
        .flat_map(|i| [0x81, 3, b'a', b'b', b'0' + i])
        .collect();
    let mut out = Vec::new();
    pair.server.write_plaintext(&frames, &mut out).unwrap();
    assert_eq!(out.len(), frames.len() + 5 + 1 + 16);
    pair.deliver_to_client(&out);
    assert_eq!(std::mem::take(&mut pair.client_plain), frames);

    // 40 000 bytes: three records (16 KiB, 16 KiB, the rest).
    let big = vec![7u8; 40_000];
    let mut out = Vec::new();
    pair.server.write_plaintext(&big, &mut out).unwrap();
    assert_eq!(out.len(), big.len() + 3 * (5 + 1 + 16));
    pair.deliver_to_client(&out);
    assert_eq!(pair.client_plain, big);
}

#[test]
fn close_reasons_are_distinct_labels() {
    let labels = [
        TlsCloseReason::HandshakeFailed,
        TlsCloseReason::HandshakeTooLarge,
        TlsCloseReason::BadRecord,
        TlsCloseReason::ServerClose,
    ]
    .map(TlsCloseReason::label);
    let unique: std::collections::HashSet<_> = labels.iter().collect();
    assert_eq!(unique.len(), labels.len());
}

#[test]
fn a_tampered_record_after_the_handshake_is_a_bad_record() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    pair.client.writer().write_all_vec(b"payload");
    let mut bytes = Vec::new();
    pair.client.write_tls(&mut bytes).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // break the AEAD tag
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let err = pair
        .server
        .read_tls(&bytes, &mut pair.scratch, &mut plain, &mut out)
        .unwrap_err();
    // TLS 1.3 records after the handshake are the server's own record
    // layer's: it refuses the record and queues the bad_record_mac alert.
    assert!(
        matches!(
            err,
            TlsError::Record(wsgate::tls::record::RecordError::BadRecordMac)
        ),
        "{err}"
    );
    assert_eq!(
        err.close_reason(pair.server.is_handshaking()),
        TlsCloseReason::BadRecord
    );
    assert!(plain.is_empty());
    pair.client.read_tls(&mut &out[..]).unwrap();
    assert_eq!(
        pair.client.process_new_packets().unwrap_err(),
        rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
}

trait WriteAllVec {
    fn write_all_vec(&mut self, data: &[u8]);
}

impl WriteAllVec for rustls::Writer<'_> {
    fn write_all_vec(&mut self, data: &[u8]) {
        std::io::Write::write_all(self, data).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes in random pieces, before or after a real ClientHello
    /// prefix: the layer returns errors, never panics, never buffers past
    /// the handshake budget and never produces plaintext.
    #[test]
    fn random_input_never_panics_or_overbuffers(
        prefix_len in 0usize..64,
        noise in proptest::collection::vec(any::<u8>(), 0..4096),
        piece in 1usize..512,
    ) {
        let pki = PKI.with(|p| p.clone());
        let hello = &pki.1;
        let mut input = hello[..prefix_len.min(hello.len())].to_vec();
        input.extend_from_slice(&noise);
        let mut conn = TlsConn::new(pki.0.server_config().clone()).unwrap();
        let mut scratch = TlsScratch::default();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        for chunk in input.chunks(piece) {
            match conn.read_tls(chunk, &mut scratch, &mut plain, &mut out) {
                Ok(outcome) => {
                    prop_assert!(!outcome.handshake_completed);
                    prop_assert!(conn.buffered() <= DEFAULT_MAX_HANDSHAKE_BUFFER);
                }
                Err(_) => break,
            }
        }
        prop_assert!(plain.is_empty());
    }
}

thread_local! {
    static PKI: (wsgate::tls::TlsContext, std::sync::Arc<Vec<u8>>) = {
        let pki = Pki::new();
        let (ctx, _) = pki.server();
        let hello = client_hello(&pki);
        // The context keeps its certificate in memory; the files may go.
        (ctx, std::sync::Arc::new(hello))
    };
}

#[test]
fn data_sent_with_the_clients_finished_arrives_in_the_same_call() {
    // A browser writes its upgrade request right behind its Finished
    // message; the layer must hand it over even though the same call also
    // completes the handshake.
    for version in [&TLS13, &TLS12] {
        let pki = Pki::new();
        let (ctx, _) = pki.server();
        let mut pair = Pair::new(pki.client_config(&[version]), &ctx, usize::MAX);
        let request = b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n";
        std::io::Write::write_all(&mut pair.client.writer(), request).unwrap();
        pair.handshake().unwrap();
        assert_eq!(pair.server_plain, request);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A whole session with random delivery sizes and random messages: what
    /// one side sends, the other gets, in order, whatever the boundaries.
    #[test]
    fn random_boundaries_keep_the_stream_intact(
        chunk in 1usize..300,
        tls12 in any::<bool>(),
        messages in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..3000)),
            1..8,
        ),
    ) {
        let (ctx, pki) = SHARED.with(|s| s.clone());
        let version = if tls12 { &TLS12 } else { &TLS13 };
        let mut pair = Pair::new(pki.client_config(&[version]), &ctx, chunk);
        pair.handshake().unwrap();
        for (upstream, data) in messages {
            if upstream {
                prop_assert_eq!(pair.client_sends(&data), data);
            } else {
                prop_assert_eq!(pair.server_sends(&data), data);
            }
            prop_assert_eq!(pair.server.buffered_capacity(), 0);
        }
    }
}

thread_local! {
    static SHARED: (wsgate::tls::TlsContext, std::rc::Rc<Pki>) = {
        let pki = Pki::new();
        let (ctx, _) = pki.server();
        (ctx, std::rc::Rc::new(pki))
    };
}

#[test]
fn bytes_after_close_notify_are_dropped_not_buffered() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    pair.client.send_close_notify();
    pair.pump().unwrap();
    assert!(pair.server.peer_closed());
    // A peer that keeps sending after its close_notify: nothing is kept,
    // nothing comes out, no error is invented.
    for _ in 0..10 {
        let mut out = Vec::new();
        let outcome = pair
            .server
            .read_tls(
                &[0x17; 10_000],
                &mut pair.scratch,
                &mut pair.server_plain,
                &mut out,
            )
            .unwrap();
        assert_eq!(outcome.plaintext, 0);
        assert_eq!(pair.server.buffered(), 0);
    }
    assert!(pair.server_plain.is_empty());
}

#[test]
fn clients_resume_across_a_certificate_reload() {
    // The ticket keys live in the configuration, which a reload keeps: a
    // reload is not a handshake storm.
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let client = pki.client_config(&[&TLS13]);
    let mut first = Pair::new(client.clone(), &ctx, usize::MAX);
    first.handshake().unwrap();
    assert_eq!(first.server_sends(b"tickets"), b"tickets");

    pki.install(&pki.leaf());
    ctx.reload().unwrap();

    let mut second = Pair::new(client, &ctx, usize::MAX);
    second.handshake().unwrap();
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn reading_straight_into_the_scratch_and_abandoned_reads() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    std::io::Write::write_all(&mut pair.client.writer(), b"zero copy").unwrap();
    let mut record = Vec::new();
    pair.client.write_tls(&mut record).unwrap();

    // First half of the record, read "from the socket" into the scratch.
    let half = record.len() / 2;
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let mut read = pair.server.begin_read(&mut pair.scratch, 4096);
    read.buf()[..half].copy_from_slice(&record[..half]);
    let outcome = read.finish(half, &mut plain, &mut out).unwrap();
    assert_eq!(outcome.plaintext, 0);
    assert_eq!(pair.server.buffered(), half);

    // A read that would block: the guard is dropped unfinished, after
    // scribbling in the buffer; the carried half must survive intact.
    let mut read = pair.server.begin_read(&mut pair.scratch, 4096);
    read.buf().fill(0xee);
    drop(read);
    assert_eq!(pair.server.buffered(), half);

    // The rest arrives.
    let rest = record.len() - half;
    let mut read = pair.server.begin_read(&mut pair.scratch, 4096);
    read.buf()[..rest].copy_from_slice(&record[half..]);
    let outcome = read.finish(rest, &mut plain, &mut out).unwrap();
    assert_eq!(outcome.plaintext, b"zero copy".len());
    assert_eq!(plain, b"zero copy");
    assert_eq!(pair.server.buffered_capacity(), 0);
}
