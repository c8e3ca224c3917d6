//! Sessions over the simulated network: close handshakes, timeouts,
//! heartbeat, backpressure, the slow-consumer cut and the peer's FIN.

use std::sync::Arc;

use super::{config, Sim};
use crate::protocol::frame::encode_server_frame;
use crate::protocol::OpCode;
use crate::pubsub::fanout::Delivered;
use crate::session::Phase;

const WIDE: usize = usize::MAX / 2;

#[test]
fn the_client_starts_the_close_and_the_server_closes_tcp_first() {
    let mut sim = Sim::open(config(), WIDE);
    sim.send(OpCode::Text, b"hello");
    sim.send_close(1000);
    sim.read_all();
    // The echo, then the close reply echoing the code (§5.5.1); both close
    // frames exchanged and ours written: the server closes (§7.1.1).
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].payload, b"hello");
    assert_eq!(frames[1].close_code(), Some(1000));
    assert!(sim.closed);
    assert_eq!(sim.stats().peer_closes.get(), 1);
}

#[test]
fn the_server_starts_the_close_then_waits_for_the_clients_reply() {
    let mut sim = Sim::open(config(), WIDE);
    sim.send(OpCode::Text, b"before");
    sim.goodbye("drain");
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1].close_code(), Some(1001));
    assert_eq!(&frames[1].payload[2..], b"drain");
    // Its close frame is out: FIN sent, the connection waits for the reply.
    assert!(sim.client_sees_eof());
    assert!(!sim.closed);
    sim.advance(10);
    assert!(!sim.closed, "the close timeout has not passed");
    // Data the client sent before it saw our close is discarded.
    sim.send(OpCode::Text, b"crossing");
    assert!(!sim.closed);
    sim.send_close(1001);
    assert!(
        sim.closed,
        "the client's close frame completes the handshake"
    );
    sim.read_all();
    assert_eq!(
        sim.frames().len(),
        2,
        "nothing is sent after our close frame"
    );
}

#[test]
fn after_a_protocol_error_the_server_closes_and_the_clients_fin_ends_it() {
    let mut sim = Sim::open(config(), WIDE);
    // A frame without a mask is a protocol error: the server closes (1002).
    sim.send_raw(&encode_server_frame(OpCode::Text, b"unmasked"));
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(1002));
    assert!(sim.client_sees_eof());
    assert!(!sim.closed);
    sim.send_fin();
    assert!(sim.closed);
}

#[test]
fn a_client_that_never_answers_the_close_is_dropped_at_the_close_timeout() {
    let cfg = config();
    let close_ticks = cfg.close_ticks;
    let mut sim = Sim::open(cfg, WIDE);
    sim.send_raw(&encode_server_frame(OpCode::Text, b"unmasked"));
    assert!(matches!(sim.session.phase(), Phase::Closing { .. }));
    sim.advance(close_ticks - 1);
    assert!(!sim.closed);
    sim.advance(1);
    assert!(sim.closed);
}

#[test]
fn data_after_the_clients_close_frame_is_ignored() {
    let mut sim = Sim::open(config(), WIDE);
    let mut bytes = Vec::new();
    for (op, p) in [
        (OpCode::Close, &1001u16.to_be_bytes()[..]),
        (OpCode::Text, b"late"),
    ] {
        crate::protocol::frame::write_client_frame(&mut bytes, true, op, [1, 2, 3, 4], p);
    }
    sim.send_raw(&bytes);
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1001));
    assert!(sim.closed);
}

#[test]
fn a_silent_client_is_pinged_and_dropped_when_it_does_not_answer() {
    let cfg = config();
    let (ping, answer, close) = (cfg.ping_ticks, cfg.answer_ticks, cfg.close_ticks);
    let mut sim = Sim::open(cfg, WIDE);
    // Heartbeats are staggered by up to 1/8 of the interval.
    sim.advance(ping + ping / 8);
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].op, OpCode::Ping);
    assert_eq!(sim.stats().pings_sent.get(), 1);
    // No answer within the rest of the idle timeout: 1001 "idle timeout".
    sim.advance(answer);
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1].close_code(), Some(1001));
    assert_eq!(&frames[1].payload[2..], b"idle timeout");
    assert_eq!(sim.stats().idle_timeouts.get(), 1);
    // A dead client does not answer that either.
    sim.advance(close);
    assert!(sim.closed);
}

#[test]
fn a_client_that_answers_pings_stays() {
    let cfg = config();
    let ping = cfg.ping_ticks;
    let mut sim = Sim::open(cfg, WIDE);
    for round in 1..=5 {
        sim.advance(ping + ping / 8);
        sim.read_all();
        let frames = sim.frames();
        assert_eq!(frames.len(), round, "{frames:?}");
        assert_eq!(frames[round - 1].op, OpCode::Ping);
        sim.send(OpCode::Pong, b"");
    }
    assert!(sim.session.is_open());
    assert_eq!(sim.stats().idle_timeouts.get(), 0);
}

#[test]
fn traffic_postpones_the_ping() {
    let cfg = config();
    let ping = cfg.ping_ticks;
    let mut sim = Sim::open(cfg, WIDE);
    for _ in 0..10 {
        sim.advance(ping / 2);
        sim.send(OpCode::Text, b"x");
    }
    sim.read_all();
    assert!(sim.frames().iter().all(|f| f.op == OpCode::Text));
    assert_eq!(sim.stats().pings_sent.get(), 0);
}

#[test]
fn an_unfinished_handshake_is_dropped_at_the_handshake_timeout() {
    let cfg = config();
    let ticks = cfg.handshake_ticks;
    let mut sim = Sim::accepted(cfg, WIDE);
    sim.send_raw(b"GET /ws HTTP/1.1\r\nHost: sim\r\n");
    sim.advance(ticks - 1);
    assert!(!sim.closed);
    sim.advance(1);
    assert!(sim.closed);
    assert_eq!(sim.stats().handshake_timeouts.get(), 1);
    assert!(sim.received.is_empty());
}

#[test]
fn reading_pauses_while_replies_back_up_and_resumes_when_they_drain() {
    let cfg = config();
    let cap = cfg.max_outbound_bytes;
    let mut sim = Sim::open(cfg, 4096);
    // The client sends 64 echo requests of 4 KiB and reads nothing.
    let msg = |i: usize| vec![b'a' + (i % 26) as u8; 4096];
    for i in 0..64 {
        sim.send(OpCode::Binary, &msg(i));
    }
    assert!(
        sim.pipe.partial_writes > 0,
        "the window forced partial writes"
    );
    assert!(!sim.session.wants_read(), "reading paused");
    assert!(sim.session.queued_bytes() > cap);
    assert!(
        sim.session.queued_bytes() <= cap + 2 * (4096 + 16),
        "the server stopped reading right past the cap, it holds {} bytes",
        sim.session.queued_bytes()
    );
    // The client reads a little at a time: reading resumes, and every echo
    // arrives whole and in order.
    while sim.read(1500) > 0 {}
    assert!(sim.session.wants_read());
    let frames = sim.frames();
    assert_eq!(frames.len(), 64);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.op, &f.payload), (OpCode::Binary, &msg(i)));
    }
    assert_eq!(sim.session.queued_bytes(), 0);
    assert!(!sim.session.wants_write(), "an idle session owns no queue");
}

/// The defect this guards: a partial direct write queued its tail as a
/// fresh chunk, the cut dropped it as "not started", and the 1008 close
/// frame landed inside the half-sent frame's payload.
#[test]
fn a_slow_consumer_cut_completes_the_frame_in_flight_then_closes() {
    let mut sim = Sim::open(config(), 100_000);
    // A 300 KB echo: the client's window takes a third of it.
    let big = vec![b'e'; 300_000];
    sim.send(OpCode::Binary, &big);
    assert!(sim.session.queued_bytes() > 0);
    // Fan-out piles up behind it until the session is cut.
    let fan: Arc<[u8]> = encode_server_frame(OpCode::Text, &[b'f'; 1000]).into();
    let mut cut = false;
    for _ in 0..200 {
        match sim.deliver(std::slice::from_ref(&fan)) {
            Delivered::Queued => {}
            Delivered::Cut => {
                cut = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(cut, "the queue went over the slow-consumer cap");
    assert_eq!(sim.stats().slow_consumers.get(), 1);
    assert!(
        sim.session.queued_bytes() <= big.len() + 16 + 32,
        "what stays is at most the frame in flight and the close frame"
    );
    // The client reads on: the echo arrives whole, then the close frame.
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        (frames[0].op, frames[0].payload.len()),
        (OpCode::Binary, big.len())
    );
    assert_eq!(frames[1].close_code(), Some(1008));
    assert_eq!(&frames[1].payload[2..], b"slow consumer");
}

#[test]
fn a_slow_consumer_cut_completes_a_half_sent_fanout_frame() {
    let mut sim = Sim::open(config(), 10_000);
    let big: Arc<[u8]> = encode_server_frame(OpCode::Text, &[b'b'; 50_000]).into();
    let small: Arc<[u8]> = encode_server_frame(OpCode::Text, &[b's'; 20_000]).into();
    assert_eq!(sim.deliver(std::slice::from_ref(&big)), Delivered::Queued);
    let mut n = 0;
    while sim.deliver(std::slice::from_ref(&small)) == Delivered::Queued {
        n += 1;
        assert!(n < 100);
    }
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].payload.len(), 50_000);
    assert_eq!(frames[1].close_code(), Some(1008));
}

/// The defect this guards: the peer's FIN closed the connection after one
/// flush, throwing away the output still queued for a half-closed peer.
#[test]
fn a_half_closed_client_still_gets_everything_queued() {
    // The client's window is smaller than half the outbound cap, so the
    // server resumes reading (and sees the FIN) with output still queued.
    let cfg = config();
    assert!(8192 < cfg.max_outbound_bytes / 2);
    let mut sim = Sim::open(cfg, 8192);
    let big = vec![b'q'; 3 * 1024 * 1024 + 512 * 1024];
    sim.send(OpCode::Binary, &big);
    sim.send(OpCode::Text, b"last");
    sim.send_fin();
    // The client keeps reading, slowly.
    while sim.read(4096) > 0 {}
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{} frames", frames.len());
    assert_eq!(frames[0].payload.len(), big.len());
    assert_eq!(frames[1].payload, b"last");
    assert!(sim.closed, "done once everything is written");
}

#[test]
fn a_close_and_fin_behind_a_large_reply_get_the_reply_and_the_close() {
    let mut sim = Sim::open(config(), 8192);
    let big = vec![b'q'; 3 * 1024 * 1024 + 512 * 1024];
    sim.send(OpCode::Binary, &big);
    sim.send_close(1000);
    sim.send_fin();
    while sim.read(4096) > 0 {}
    let frames = sim.frames();
    assert_eq!(frames.len(), 2, "{} frames", frames.len());
    assert_eq!(frames[0].payload.len(), big.len());
    assert_eq!(frames[1].close_code(), Some(1000));
    assert!(sim.closed);
}

#[test]
fn a_fin_with_nothing_owed_closes_at_once() {
    let mut sim = Sim::open(config(), WIDE);
    sim.send_fin();
    assert!(sim.closed);
    assert_eq!(sim.stats().abrupt_closes.get(), 0, "counted by the worker");
}

#[test]
fn a_fin_with_output_owed_to_a_client_that_stops_reading_ends_at_the_close_timeout() {
    let cfg = config();
    let close = cfg.close_ticks;
    let mut sim = Sim::open(cfg, 1000);
    sim.send(OpCode::Binary, &[7; 10_000]);
    sim.send_fin();
    assert!(!sim.closed, "output is owed");
    assert!(sim.session.reads_done());
    sim.advance(close);
    assert!(sim.closed, "bounded by the close timeout");
}

#[test]
fn a_reply_to_the_upgrade_request_in_pieces_is_the_same() {
    let mut sim = Sim::accepted(config(), WIDE);
    let req = b"GET /ws HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\n\r\n";
    for b in req {
        sim.send_raw(&[*b]);
    }
    sim.read_all();
    assert!(sim.received.starts_with(b"HTTP/1.1 101"));
    assert!(sim.session.is_open());
}

#[test]
fn a_connection_whose_token_runs_out_is_closed_with_1008() {
    let cfg = config();
    let ping = cfg.ping_ticks;
    let mut sim = Sim::accepted(cfg, WIDE);
    // A token valid for 3 more seconds (60 ticks), well before the first ping.
    sim.session.auth = Some(Box::new(crate::security::Grant {
        user: None,
        exp: sim.now.unix + 3,
        topics: crate::security::TopicPerms::Any,
        broadcast: None,
        users: crate::security::TopicPerms::Any,
    }));
    sim.upgrade();
    assert!(sim.session.poll_timeout().unwrap() < sim.now.tick + ping);
    sim.advance(55);
    sim.read_all();
    assert!(sim.received.is_empty(), "still valid");
    sim.advance(10);
    sim.read_all();
    let frames = sim.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1008));
    assert_eq!(&frames[0].payload[2..], b"token expired");
    assert_eq!(sim.stats().token_expiries.get(), 1);
}

#[test]
fn a_drain_bounds_every_close_by_its_own_end() {
    let cfg = config();
    assert!(cfg.close_ticks > 30);
    let mut sim = Sim::open(cfg, WIDE);
    sim.goodbye("drain");
    sim.begin_drain(30);
    sim.advance(29);
    assert!(!sim.closed);
    sim.advance(1);
    assert!(
        sim.closed,
        "closed at the end of the drain, not the close timeout"
    );
}
