//! Echo cost: server CPU per round trip, io_uring loop against a mio (epoll)
//! loop, each a single thread in this process, same clients, interleaved
//! windows, medians. The clients are blocking std sockets on another thread:
//! each window sends one small message on every connection, then reads every
//! echo back, `turns` times.
//!
//! `cargo run -p wsgate-uring --release --example echo_bench -- 200 20 50 64`
//! (connections per server, windows per server, turns per window, bytes).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use wsgate_uring::{Completion, EndReason, Ring, RingConfig};

fn tid_schedstat_path() -> String {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    format!("/proc/{}/schedstat", link.display())
}

fn cpu_ns(path: &str) -> u64 {
    let s = std::fs::read_to_string(path).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn uring_server(tx: std::sync::mpsc::Sender<(&'static str, SocketAddr, String)>) {
    let mut ring = Ring::new(RingConfig::default()).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tx.send(("io_uring", l.local_addr().unwrap(), tid_schedstat_path()))
        .unwrap();
    let lfd = ring.adopt(u64::MAX, l.into());
    ring.accept_multi(lfd).unwrap();
    let mut conns = slab::Slab::new();
    let mut out = Vec::new();
    loop {
        ring.wait(1, None, &mut out).unwrap();
        for c in out.drain(..) {
            match c {
                Completion::Accepted { fd, .. } => {
                    socket2::SockRef::from(&fd).set_nodelay(true).unwrap();
                    let key = conns.vacant_key() as u64;
                    let h = ring.adopt(key, fd);
                    conns.insert(h);
                    ring.recv_multi(h).unwrap();
                }
                Completion::Received { token, buf } => {
                    ring.send(conns[token as usize], buf.to_vec()).unwrap()
                }
                Completion::RecvEnded {
                    token,
                    reason: EndReason::NoBuffers | EndReason::Terminated,
                } => ring.recv_multi(conns[token as usize]).unwrap(),
                Completion::RecvEnded { token, .. } => {
                    let _ = ring.close(conns[token as usize]);
                }
                Completion::Closed { token, .. } => {
                    conns.remove(token as usize);
                }
                _ => {}
            }
        }
    }
}

fn mio_server(tx: std::sync::mpsc::Sender<(&'static str, SocketAddr, String)>) {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut l = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    tx.send(("epoll (mio)", l.local_addr().unwrap(), tid_schedstat_path()))
        .unwrap();
    poll.registry()
        .register(&mut l, Token(usize::MAX), Interest::READABLE)
        .unwrap();
    let mut conns: slab::Slab<mio::net::TcpStream> = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 4096];
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = l.accept() {
                    s.set_nodelay(true).unwrap();
                    let e = conns.vacant_entry();
                    poll.registry()
                        .register(&mut s, Token(e.key()), Interest::READABLE)
                        .unwrap();
                    e.insert(s);
                }
                continue;
            }
            let key = ev.token().0;
            let mut closed = false;
            loop {
                match conns[key].read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    // Echoes are small and the peer reads them: the write
                    // completes (a real server would queue the rest).
                    Ok(n) => conns[key].write_all(&buf[..n]).unwrap(),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                let mut s = conns.remove(key);
                poll.registry().deregister(&mut s).unwrap();
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n, windows, turns, size) = (arg(0, 200), arg(1, 20), arg(2, 50), arg(3, 64));
    let (tx, rx) = std::sync::mpsc::channel();
    let t1 = tx.clone();
    std::thread::spawn(move || uring_server(t1));
    std::thread::spawn(move || mio_server(tx));
    let mut servers = [rx.recv().unwrap(), rx.recv().unwrap()];
    servers.sort_by_key(|(name, _, _)| *name);
    let mut clients: Vec<Vec<TcpStream>> = Vec::new();
    for (_, addr, _) in &servers {
        let cs: Vec<TcpStream> = (0..n)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                c.set_nodelay(true).unwrap();
                c
            })
            .collect();
        clients.push(cs);
    }
    let msg = vec![0x61u8; size];
    let mut back = vec![0u8; size];
    let mut per: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for _ in 0..windows {
        for (i, (_, _, path)) in servers.iter().enumerate() {
            // Read the server's CPU time only while it sleeps in its wait:
            // a thread's schedstat is exact when it is off the CPU.
            std::thread::sleep(std::time::Duration::from_millis(5));
            let before = cpu_ns(path);
            for _ in 0..turns {
                for c in &mut clients[i] {
                    c.write_all(&msg).unwrap();
                }
                for c in &mut clients[i] {
                    c.read_exact(&mut back).unwrap();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            per[i].push((cpu_ns(path) - before) as f64 / (n * turns) as f64);
        }
    }
    println!("echo of {size} B on {n} connections, {windows} interleaved windows of {turns} turns (medians):");
    for (i, v) in per.iter_mut().enumerate() {
        println!(
            "  {}: {:.2} µs server CPU per round trip",
            servers[i].0,
            median(v) / 1000.0
        );
    }
}
