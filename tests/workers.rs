//! Worker threads over real sockets: SO_REUSEPORT spreads connections over
//! the workers, and every upgrade is counted exactly once.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn two_hundred_clients_spread_over_both_workers_and_all_echo() {
    let server = start_echo(|c| c.workers = Some(2));
    assert_eq!(server.worker_count(), 2);
    let addr = server.local_addr();
    let n = 200;
    let mut clients: Vec<Ws> = (0..n).map(|_| connect(addr)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), Message::text(format!("client {i}")));
    }
    let stats = server.stats();
    assert_eq!(stats.len(), 2);
    let busy = stats.iter().filter(|s| s.accepted > 0).count();
    assert!(busy > 1, "all connections landed on one worker: {stats:?}");
    for s in &stats {
        assert_eq!(s.accepted, s.upgraded, "every accepted connection upgraded");
        assert_eq!(s.open, s.upgraded, "all still open");
        assert_eq!(s.messages_in, s.upgraded, "one message per client");
    }
    let t = server.total_stats();
    assert_eq!(t.upgraded, n as u64);
    assert_eq!(t.open, n as u64);
    assert_eq!(t.handshake_failures + t.protocol_errors, 0);
    assert_eq!(server.admitted(), n);

    // Half leave cleanly, half vanish: both are released everywhere.
    for (i, mut ws) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
    }
    eventually(Duration::from_secs(3), "all connections released", || {
        server.total_stats().open == 0 && server.admitted() == 0
    });
    let t = server.total_stats();
    assert_eq!(t.peer_closes, n as u64 / 2);
    assert_eq!(t.abrupt_closes, n as u64 / 2);
}
