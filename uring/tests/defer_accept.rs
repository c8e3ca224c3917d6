//! `set_tcp_defer_accept` against the kernel: with it, a listener's accept
//! completes only for a client whose first bytes arrived; without it, a
//! client that only connected is accepted too.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Peers accepted within `wait` (the listener is non-blocking).
fn accepted_within(listener: &TcpListener, wait: Duration) -> Vec<SocketAddr> {
    let mut peers = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, peer)) => peers.push(peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    peers
}

/// A listener (deferring `defer` seconds), a client that only connects and
/// one that connects and sends a byte; returns who was accepted, and the
/// two clients' addresses.
fn run(defer: u32) -> (Vec<SocketAddr>, SocketAddr, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    wsgate_uring::set_tcp_defer_accept(socket.as_fd(), defer).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = TcpStream::connect(addr).unwrap();
    let mut talking = TcpStream::connect(addr).unwrap();
    talking.write_all(b"G").unwrap();
    let peers = accepted_within(&listener, Duration::from_millis(500));
    (
        peers,
        silent.local_addr().unwrap(),
        talking.local_addr().unwrap(),
    )
}

#[test]
fn only_a_client_that_sent_bytes_is_accepted_while_deferring() {
    let (peers, _silent, talking) = run(5);
    assert_eq!(
        peers,
        vec![talking],
        "only the client that sent is accepted"
    );
}

#[test]
fn without_deferring_a_client_that_only_connected_is_accepted_too() {
    let (mut peers, silent, talking) = run(0);
    peers.sort();
    let mut both = vec![silent, talking];
    both.sort();
    assert_eq!(peers, both);
}
