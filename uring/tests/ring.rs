//! The ring against real loopback TCP peers (std clients on 127.0.0.1):
//! accept, recv through the buffer ring, ENOBUFS, fan-out, short sends,
//! cancel/close, CQ overflow.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsgate_uring::{Completion, EndReason, Fd, Ring, RingConfig};

const LISTENER: u64 = u64::MAX - 1;

/// Every test below runs with plain descriptors and with the registered
/// (fixed) file table.
const FIXED_FILES: [u32; 2] = [0, 4096];

fn listen(ring: &mut Ring) -> (Fd, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let fd = ring.adopt(LISTENER, l.into());
    ring.accept_multi(fd).unwrap();
    ring.submit().unwrap();
    (fd, addr)
}

/// Whether this process still holds a listening socket on `port`. (A
/// connect to the port says less: once the port is free, another process
/// may listen on it, or the connect may pick it as its own port and
/// connect to itself.)
fn this_process_listens_on(port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && cols.get(3) == Some(&"0A") {
                inodes.extend(cols.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| {
                    let l = l.to_str()?.to_string();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|inode| inodes.contains(&inode))
        })
}

/// Waits for completions, running `$c => $body` on each, until `$done`;
/// panics after `$secs` seconds without it. (A macro, not a closure, so the
/// body and the condition can both use the test's locals.)
macro_rules! pump {
    ($ring:expr, $secs:expr, $c:ident => $body:expr, until $done:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        let mut out = Vec::new();
        while !$done {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for completions"
            );
            $ring
                .wait(1, Some(Duration::from_millis(20)), &mut out)
                .unwrap();
            for $c in out.drain(..) {
                $body
            }
        }
    }};
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// A ring with `buffers` receive buffers of `buffer_size` bytes, with or
/// without a fixed-file table (`fixed` slots; 0: plain descriptors).
fn small_ring(buffers: u16, buffer_size: u32, fixed: u32) -> Ring {
    Ring::new(RingConfig {
        buffers,
        buffer_size,
        fixed_files: fixed,
        ..RingConfig::default()
    })
    .unwrap()
}

#[test]
fn config_errors_are_typed() {
    let bad = RingConfig {
        buffers: 3,
        ..RingConfig::default()
    };
    assert!(matches!(
        Ring::new(bad),
        Err(wsgate_uring::Error::Config(_))
    ));
}

#[test]
fn multishot_accept_of_many_clients_then_close_listener() {
    let mut ring = Ring::new(RingConfig::default()).unwrap();
    let (lfd, addr) = listen(&mut ring);
    let clients: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut accepted = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.len() < clients.len() {
        assert!(
            Instant::now() < deadline,
            "accepted only {}",
            accepted.len()
        );
        ring.wait(1, Some(Duration::from_millis(20)), &mut out)
            .unwrap();
        for c in out.drain(..) {
            match c {
                Completion::Accepted { fd, .. } => accepted.push(fd),
                other => panic!("one multishot accept must keep accepting, got {other:?}"),
            }
        }
    }
    // Each accepted fd is a distinct, open descriptor we own.
    let mut peers: Vec<_> = accepted
        .iter()
        .map(|fd| {
            socket2::SockRef::from(fd)
                .peer_addr()
                .unwrap()
                .as_socket()
                .unwrap()
        })
        .collect();
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), clients.len());

    ring.close(lfd).unwrap();
    let (mut ended, mut closed) = (false, false);
    pump!(ring, 5, c => match c {
            Completion::AcceptEnded { reason, .. } => {
                assert_eq!(reason, EndReason::Canceled);
                ended = true;
            }
            Completion::Closed { token, result } => {
                assert_eq!((token, result), (LISTENER, Ok(())));
                closed = true;
            }
            other => panic!("unexpected {other:?}"),
        }, until ended && closed);
    assert_eq!(ring.ops_in_flight(), 0);
    assert_eq!(ring.fds_open(), 0);
    assert!(
        !this_process_listens_on(addr.port()),
        "listener still open after Closed"
    );
}

/// Accepts `n` clients, adopting each with its index as token.
fn accept_clients(ring: &mut Ring, addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Vec<Fd>) {
    let mut clients = Vec::new();
    let mut fds = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).unwrap());
    }
    // Accept order is connect order on loopback, but map by peer address to
    // be sure: token = index of the client.
    let index: HashMap<SocketAddr, usize> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.local_addr().unwrap(), i))
        .collect();
    let mut slots: Vec<Option<Fd>> = vec![None; n];
    while fds.len() < n {
        assert!(Instant::now() < deadline, "accepted only {}", fds.len());
        ring.wait(1, Some(Duration::from_millis(20)), &mut out)
            .unwrap();
        for c in out.drain(..) {
            let Completion::Accepted { fd, .. } = c else {
                panic!("unexpected {c:?}")
            };
            let peer = socket2::SockRef::from(&fd)
                .peer_addr()
                .unwrap()
                .as_socket()
                .unwrap();
            let i = index[&peer];
            let h = ring.adopt(i as u64, fd);
            slots[i] = Some(h);
            fds.push(h);
        }
    }
    (clients, slots.into_iter().map(Option::unwrap).collect())
}

#[test]
fn multishot_recv_through_the_buffer_ring_from_several_clients() {
    for fixed in FIXED_FILES {
        let mut ring = small_ring(64, 1024, fixed);
        let (_l, addr) = listen(&mut ring);
        let (clients, fds) = accept_clients(&mut ring, addr, 16);
        for &fd in &fds {
            ring.recv_multi(fd).unwrap();
        }
        // An armed, idle connection holds no buffer.
        ring.submit().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut out = Vec::new();
        ring.reap(&mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(ring.buffers_lent(), 0);

        const LEN: usize = 50_000;
        let writers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                std::thread::spawn(move || {
                    for chunk in pattern(i, LEN).chunks(3000) {
                        c.write_all(chunk).unwrap();
                    }
                    c
                })
            })
            .collect();
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); fds.len()];
        let mut ends = 0;
        pump!(ring, 30, c => match c {
            Completion::Received { token, buf } => {
                assert!(buf.len() <= 1024);
                got[token as usize].extend_from_slice(&buf);
            }
            // Re-arm when the kernel ends a multishot early.
            Completion::RecvEnded { token, reason: EndReason::NoBuffers | EndReason::Terminated } => {
                ring.recv_multi(fds[token as usize]).unwrap();
            }
            Completion::RecvEnded { reason: EndReason::Eof, .. } => ends += 1,
            other => panic!("unexpected {other:?}"),
        }, until got.iter().all(|g| g.len() >= LEN));
        for (i, g) in got.iter().enumerate() {
            assert!(g == &pattern(i, LEN), "client {i}: bytes differ");
        }
        assert_eq!(ends, 0);
        assert_eq!(ring.buffers_lent(), 0, "every buffer back in the ring");
        drop(
            writers
                .into_iter()
                .map(|w| w.join().unwrap())
                .collect::<Vec<_>>(),
        );
        // Clients closed: every multishot ends with EOF.
        pump!(ring, 10, c => match c {
            Completion::RecvEnded { reason: EndReason::Eof, .. } => ends += 1,
            other => panic!("unexpected {other:?}"),
        }, until ends == fds.len());
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

#[test]
fn empty_buffer_ring_ends_recv_with_enobufs_and_recovers_after_buffers_return() {
    for fixed in FIXED_FILES {
        let mut ring = small_ring(4, 256, fixed);
        let (_l, addr) = listen(&mut ring);
        let (mut clients, fds) = accept_clients(&mut ring, addr, 1);
        ring.recv_multi(fds[0]).unwrap();
        let data = pattern(3, 8192);
        clients[0].write_all(&data).unwrap();

        // Hold every buffer the kernel hands us: the ring runs dry.
        let mut held = Vec::new();
        let mut ended = None;
        pump!(ring, 10, c => match c {
            Completion::Received { buf, .. } => held.push(buf),
            Completion::RecvEnded { reason, .. } => ended = Some(reason),
            other => panic!("unexpected {other:?}"),
        }, until ended.is_some());
        assert_eq!(ended, Some(EndReason::NoBuffers));
        assert_eq!(held.len(), 4);
        assert_eq!(ring.buffers_lent(), 4);
        assert_eq!(ring.stats().enobufs, 1);

        let mut got: Vec<u8> = held.iter().flat_map(|b| b.iter().copied()).collect();
        drop(held);
        assert_eq!(
            ring.buffers_lent(),
            0,
            "dropping a RecvBuf returns it to the ring"
        );
        ring.recv_multi(fds[0]).unwrap();
        pump!(ring, 10, c => match c {
            Completion::Received { buf, .. } => got.extend_from_slice(&buf),
            Completion::RecvEnded { token, reason: EndReason::NoBuffers | EndReason::Terminated } => {
                ring.recv_multi(fds[token as usize]).unwrap()
            }
            other => panic!("unexpected {other:?}"),
        }, until got.len() >= data.len());
        assert!(got == data, "no byte lost or reordered across ENOBUFS");
        assert_eq!(ring.buffers_lent(), 0);
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

/// Backpressure pauses reading with `cancel_recv` and resumes with a new
/// `recv_multi`. A cancel that finds its recv already ended (here by an
/// empty buffer ring, reaped after the cancel was queued) must not end the
/// recv armed after it: each arming has its own `user_data`.
#[test]
fn cancel_recv_pauses_reading_and_never_cancels_a_later_arming() {
    for fixed in FIXED_FILES {
        let mut ring = small_ring(1, 256, fixed);
        let (_l, addr) = listen(&mut ring);
        let (mut clients, fds) = accept_clients(&mut ring, addr, 1);
        let fd = fds[0];

        // Paused: the cancel ends the recv; bytes sent meanwhile wait in
        // the socket and arrive, in order, once reading resumes.
        ring.recv_multi(fd).unwrap();
        ring.cancel_recv(fd).unwrap();
        let mut ended = None;
        pump!(ring, 10, c => match c {
            Completion::RecvEnded { reason, .. } => ended = Some(reason),
            other => panic!("unexpected {other:?}"),
        }, until ended.is_some());
        assert_eq!(ended, Some(EndReason::Canceled));
        let data = pattern(5, 200);
        clients[0].write_all(&data).unwrap();
        let mut out = Vec::new();
        ring.wait(0, Some(Duration::from_millis(100)), &mut out)
            .unwrap();
        assert!(out.is_empty(), "nothing is read while paused: {out:?}");

        // Resumed: the one buffer is held, so the next bytes end the recv
        // with ENOBUFS inside the kernel.
        ring.recv_multi(fd).unwrap();
        let mut held = None;
        pump!(ring, 10, c => match c {
            Completion::Received { buf, .. } => held = Some(buf),
            other => panic!("unexpected {other:?}"),
        }, until held.is_some());
        let mut got = held.as_deref().unwrap().to_vec();
        let more = pattern(6, 200);
        clients[0].write_all(&more).unwrap();
        // Let the kernel post the ENOBUFS end (it does so on this thread's
        // next return from a syscall), then queue a cancel for the recv the
        // ring still counts as armed.
        std::thread::sleep(Duration::from_millis(50));
        ring.cancel_recv(fd).unwrap();
        // Reap without submitting: the end arrives, the cancel is still
        // queued.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reason = None;
        while reason.is_none() {
            assert!(Instant::now() < deadline, "the recv did not end");
            ring.reap(&mut out).unwrap();
            for c in out.drain(..) {
                match c {
                    Completion::RecvEnded { reason: r, .. } => reason = Some(r),
                    other => panic!("unexpected {other:?}"),
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(reason, Some(EndReason::NoBuffers));
        drop(held);
        // Armed after the cancel was queued: the cancel must miss it.
        ring.recv_multi(fd).unwrap();
        pump!(ring, 10, c => match c {
            Completion::Received { buf, .. } => got.extend_from_slice(&buf),
            Completion::RecvEnded { reason, .. } => {
                panic!("the recv armed after the cancel ended: {reason:?}")
            }
            other => panic!("unexpected {other:?}"),
        }, until got.len() >= data.len() + more.len());
        assert_eq!(got, [data, more].concat());
    }
}

#[test]
fn one_shared_frame_to_1000_sockets_in_one_submit() {
    for fixed in FIXED_FILES {
        let mut ring = Ring::new(RingConfig {
            fixed_files: fixed,
            ..RingConfig::default()
        })
        .unwrap();
        let (_l, addr) = listen(&mut ring);
        let (clients, fds) = accept_clients(&mut ring, addr, 1000);
        assert!(fds.iter().all(|&f| ring.is_fixed(f) == (fixed > 0)));
        let frame: Arc<[u8]> = pattern(9, 1500).into();
        let before = ring.stats();
        for &fd in &fds {
            ring.send(fd, Arc::clone(&frame)).unwrap();
        }
        assert_eq!(
            Arc::strong_count(&frame),
            1001,
            "each send holds the frame, none copies it"
        );
        ring.submit().unwrap();
        let after = ring.stats();
        assert_eq!(
            after.enters - before.enters,
            1,
            "1000 sends, one io_uring_enter"
        );
        assert_eq!(after.sqes - before.sqes, 1000);

        let mut sent = 0usize;
        let mut completions = 0;
        pump!(ring, 20, c => match c {
            Completion::Sent { n, short, .. } => {
                assert!(!short);
                sent += n;
                completions += 1;
            }
            other => panic!("unexpected {other:?}"),
        }, until completions == fds.len());
        assert_eq!(sent, 1000 * frame.len());
        assert_eq!(
            Arc::strong_count(&frame),
            1,
            "the ring released the frame at completion"
        );
        for (i, mut c) in clients.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0; frame.len()];
            c.read_exact(&mut buf).unwrap();
            assert!(buf[..] == frame[..], "client {i} got other bytes");
        }
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

#[test]
fn short_send_to_a_peer_that_does_not_read_resumes_in_order_when_it_does() {
    for fixed in FIXED_FILES {
        let mut ring = Ring::new(RingConfig {
            fixed_files: fixed,
            ..RingConfig::default()
        })
        .unwrap();
        let (_l, addr) = listen(&mut ring);
        let client = TcpStream::connect(addr).unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        let mut out = Vec::new();
        let fd = loop {
            ring.wait(1, Some(Duration::from_millis(20)), &mut out)
                .unwrap();
            if let Some(Completion::Accepted { fd, .. }) = out.pop() {
                socket2::SockRef::from(&fd)
                    .set_send_buffer_size(4096)
                    .unwrap();
                break ring.adopt(7, fd);
            }
        };
        let big = pattern(1, 2 << 20);
        let tail = b"--tail--".to_vec();
        ring.send(fd, big.clone()).unwrap();
        ring.send(fd, tail.clone()).unwrap();
        assert_eq!(
            ring.queued_bytes(fd),
            tail.len(),
            "the second send waits behind the first"
        );

        // The peer does not read: the first send goes out only in part.
        let mut sent = 0;
        let mut shorts = 0;
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            ring.wait(1, Some(Duration::from_millis(20)), &mut out)
                .unwrap();
            for c in out.drain(..) {
                match c {
                    Completion::Sent { token: 7, n, short } => {
                        sent += n;
                        shorts += usize::from(short);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(shorts >= 1, "a send into a full socket completes short");
        assert!(
            sent < big.len(),
            "the peer has not read, so the big send cannot be done"
        );
        assert_eq!(ring.queued_bytes(fd), tail.len());
        assert!(ring.stats().short_sends >= 1);

        // Now the peer reads: everything arrives, in order.
        let total = big.len() + tail.len();
        let reader = std::thread::spawn(move || {
            let mut c = client;
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = vec![0; total];
            c.read_exact(&mut got).unwrap();
            got
        });
        pump!(ring, 20, c => match c {
            Completion::Sent { n, .. } => sent += n,
            other => panic!("unexpected {other:?}"),
        }, until sent == total);
        let got = reader.join().unwrap();
        assert!(got[..big.len()] == big[..]);
        assert_eq!(&got[big.len()..], &tail[..]);
        assert_eq!(ring.queued_bytes(fd), 0);
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

#[test]
fn close_with_recv_and_blocked_send_in_flight_frees_everything_and_ring_keeps_working() {
    for fixed in FIXED_FILES {
        let mut ring = small_ring(8, 512, fixed);
        let (_l, addr) = listen(&mut ring);
        let (mut clients, fds) = accept_clients(&mut ring, addr, 2);
        socket2::SockRef::from(&clients[0])
            .set_recv_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&ring.borrow_fd(fds[0]).unwrap())
            .set_send_buffer_size(4096)
            .unwrap();
        ring.recv_multi(fds[0]).unwrap();
        ring.recv_multi(fds[1]).unwrap();
        // A send that blocks (peer does not read) and one queued behind it.
        let frame: Arc<[u8]> = pattern(2, 4 << 20).into();
        ring.send(fds[0], Arc::clone(&frame)).unwrap();
        ring.send(fds[0], Arc::clone(&frame)).unwrap();
        // And data in flight to the server: some of it is received first.
        clients[0].write_all(b"hello").unwrap();
        let mut out = Vec::new();
        let mut received = 0;
        let t = Instant::now();
        while received < 5 && t.elapsed() < Duration::from_secs(5) {
            ring.wait(1, Some(Duration::from_millis(20)), &mut out)
                .unwrap();
            for c in out.drain(..) {
                match c {
                    Completion::Received { buf, .. } => received += buf.len(),
                    Completion::Sent { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(received, 5);
        assert!(
            ring.ops_in_flight() >= 3,
            "recv x2 + blocked send are in the kernel"
        );

        ring.close(fds[0]).unwrap();
        assert!(matches!(
            ring.send(fds[0], vec![1]),
            Err(wsgate_uring::Error::Closing)
        ));
        let (mut recv_ended, mut send_failed, mut closed) = (false, false, false);
        pump!(ring, 10, c => match c {
            Completion::RecvEnded { token: 0, reason } => {
                assert_eq!(reason, EndReason::Canceled);
                recv_ended = true;
            }
            Completion::SendFailed { token: 0, errno, dropped } => {
                assert_eq!(errno, libc::ECANCELED);
                assert!(dropped > frame.len(), "the in-flight rest and the queued frame");
                send_failed = true;
            }
            Completion::Sent { token: 0, short: true, .. } => {}
            Completion::Closed { token: 0, result } => {
                assert_eq!(result, Ok(()));
                closed = true;
            }
            other => panic!("unexpected {other:?}"),
        }, until recv_ended && send_failed && closed);
        assert_eq!(
            Arc::strong_count(&frame),
            1,
            "the canceled sends released the frame"
        );
        assert_eq!(
            ring.buffers_lent(),
            0,
            "the ring owns all its buffers again"
        );
        assert_eq!(
            ring.ops_in_flight(),
            2,
            "only the listener's accept and client 1's recv remain"
        );
        assert_eq!(ring.fds_open(), 2);
        assert!(matches!(
            ring.send(fds[0], vec![1]),
            Err(wsgate_uring::Error::StaleFd)
        ));
        // The peer sees the close (after the bytes that made it out).
        clients[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = Vec::new();
        match clients[0].read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "no close seen: {e}"
            ),
        }
        assert!(sink.len() < 2 * frame.len());

        // The ring still works: the other connection echoes through it.
        clients[1].write_all(b"still alive").unwrap();
        let mut got = Vec::new();
        pump!(ring, 5, c => match c {
            Completion::Received { token: 1, buf } => {
                got.extend_from_slice(&buf);
                ring.send(fds[1], buf.to_vec()).unwrap();
            }
            Completion::Sent { token: 1, .. } => {}
            other => panic!("unexpected {other:?}"),
        }, until got.len() == 11);
        ring.submit().unwrap();
        let mut back = [0; 11];
        clients[1]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        clients[1].read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still alive");
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

#[test]
fn cq_overflow_is_seen_and_no_completion_is_lost() {
    for fixed in FIXED_FILES {
        // A CQ of 16 for 100 connections that all connect and write before the
        // loop reaps anything.
        let mut ring = Ring::new(RingConfig {
            sq_entries: 16,
            cq_entries: 16,
            buffers: 256,
            buffer_size: 4096,
            fixed_files: fixed,
        })
        .unwrap();
        let (lfd, addr) = listen(&mut ring);
        const N: usize = 100;
        let mut clients = Vec::new();
        for i in 0..N {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&pattern(i, 100)).unwrap();
            clients.push(c);
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut fds: HashMap<u64, Fd> = HashMap::new();
        let mut got: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut next = 0u64;
        pump!(ring, 20, c => match c {
            Completion::Accepted { fd, .. } => {
                let h = ring.adopt(next, fd);
                ring.recv_multi(h).unwrap();
                fds.insert(next, h);
                next += 1;
            }
            Completion::AcceptEnded { reason, .. } => {
                assert_ne!(reason, EndReason::Canceled);
                ring.accept_multi(lfd).unwrap();
            }
            Completion::Received { token, buf } => got.entry(token).or_default().extend_from_slice(&buf),
            Completion::RecvEnded { token, reason: EndReason::NoBuffers | EndReason::Terminated } => {
                ring.recv_multi(fds[&token]).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }, until got.len() == N && got.values().all(|g| g.len() == 100));
        let stats = ring.stats();
        assert!(
            stats.cq_overflow_seen > 0,
            "the CQ must have overflowed: {stats:?}"
        );
        assert_eq!(stats.cq_dropped, 0, "no completion dropped");
        // Each client's 100 bytes arrived whole (tokens follow accept order, so
        // match contents, not indexes).
        let mut want: Vec<Vec<u8>> = (0..N).map(|i| pattern(i, 100)).collect();
        let mut have: Vec<Vec<u8>> = got.into_values().collect();
        want.sort();
        have.sort();
        assert_eq!(want, have);
        assert_eq!(ring.buffers_lent(), 0);
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}

#[test]
fn dropping_the_ring_with_ops_in_flight_cancels_them_and_closes_its_fds() {
    for fixed in FIXED_FILES {
        let mut ring = small_ring(8, 512, fixed);
        let (_l, addr) = listen(&mut ring);
        let (mut clients, fds) = accept_clients(&mut ring, addr, 1);
        socket2::SockRef::from(&clients[0])
            .set_recv_buffer_size(4096)
            .unwrap();
        ring.recv_multi(fds[0]).unwrap();
        let frame: Arc<[u8]> = pattern(4, 4 << 20).into();
        ring.send(fds[0], Arc::clone(&frame)).unwrap();
        clients[0].write_all(b"held").unwrap();
        // Keep a received buffer past the ring's end.
        let mut held = None;
        pump!(ring, 5, c => match c {
            Completion::Received { buf, .. } => held = Some(buf),
            Completion::Sent { .. } => {}
            other => panic!("unexpected {other:?}"),
        }, until held.is_some());
        assert!(
            ring.ops_in_flight() >= 3,
            "accept, recv and the blocked send"
        );
        assert!(this_process_listens_on(addr.port()), "listening before");
        let t = Instant::now();
        drop(ring);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "drop waits only for the cancels"
        );
        assert_eq!(
            Arc::strong_count(&frame),
            1,
            "the canceled send released the frame"
        );
        // The buffer stays readable (it keeps the pool alive) and returns
        // harmlessly to the unregistered ring.
        assert_eq!(held.as_deref().unwrap(), b"held");
        drop(held);
        // The connection was closed by the drop: the peer reads to its end.
        clients[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = Vec::new();
        match clients[0].read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "no close seen: {e}"
            ),
        }
        assert!(
            !this_process_listens_on(addr.port()),
            "listener closed by the drop"
        );
    }
}

#[test]
fn readability_watch_fires_per_wakeup_and_ends_on_close() {
    for fixed in FIXED_FILES {
        use std::os::unix::net::UnixStream;
        let mut ring = Ring::new(RingConfig {
            fixed_files: fixed,
            ..RingConfig::default()
        })
        .unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        // The loop keeps a clone to read with; the ring owns the watched fd.
        let mut reader = a.try_clone().unwrap();
        let fd = ring.adopt(5, a.into());
        ring.poll_readable(fd).unwrap();
        assert!(matches!(
            ring.poll_readable(fd),
            Err(wsgate_uring::Error::AlreadyArmed(_))
        ));
        for round in 0..3u8 {
            b.write_all(&[round]).unwrap();
            let mut woke = false;
            pump!(ring, 5, c => match c {
                Completion::Readable { token: 5 } => woke = true,
                other => panic!("unexpected {other:?}"),
            }, until woke);
            let mut byte = [0];
            reader.read_exact(&mut byte).unwrap();
            assert_eq!(
                byte[0], round,
                "one wake-up per write, the watch stays armed"
            );
        }
        ring.close(fd).unwrap();
        let (mut ended, mut closed) = (false, false);
        pump!(ring, 5, c => match c {
            Completion::PollEnded { token: 5, reason } => {
                assert_eq!(reason, EndReason::Canceled);
                ended = true;
            }
            Completion::Closed { token: 5, .. } => closed = true,
            other => panic!("unexpected {other:?}"),
        }, until ended && closed);
        assert_eq!(ring.ops_in_flight(), 0);
        assert_eq!(ring.stats().files_update_errors, 0);
    }
}
