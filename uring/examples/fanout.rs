//! Fan-out cost: one frame to N loopback sockets, through the ring (N send
//! SQEs, one `io_uring_enter`) and through one `write(2)` per socket (what
//! an epoll loop does), interleaved rounds, medians of the sending thread's
//! CPU time per delivery.
//!
//! `cargo run -p wsgate-uring --release --example fanout -- 1000 200 1500`
//! (sockets, rounds per mode, frame bytes[, fixed-file slots]). Cross-check the syscall count:
//! `strace -f -c -e trace=io_uring_enter,write,sendto,sendmsg <that binary> 1000 20 1500`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use wsgate_uring::{Completion, Ring, RingConfig};

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, exact; the
/// schedstat file of the running thread itself is only updated per tick).
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
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
    let (n, rounds, size) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(200),
        args.get(2).copied().unwrap_or(1500),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).unwrap());
        servers.push(listener.accept().unwrap().0);
    }
    for s in &servers {
        s.set_nodelay(true).unwrap();
    }
    // Readers drain every client socket, round by round.
    let total = 2 * rounds;
    let reader = std::thread::spawn(move || {
        let mut clients = clients;
        let mut buf = vec![0; size];
        for _ in 0..total {
            for c in &mut clients {
                c.read_exact(&mut buf).unwrap();
            }
        }
    });
    // A 4th argument > 0: use a fixed file table of that many slots.
    let fixed_files = args.get(3).copied().unwrap_or(0) as u32;
    let mut ring = Ring::new(RingConfig {
        fixed_files,
        ..RingConfig::default()
    })
    .unwrap();
    let fds: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| ring.adopt(i as u64, s.try_clone().unwrap().into()))
        .collect();
    let frame: Arc<[u8]> = vec![0x5a; size].into();
    let mut servers = servers;
    let (mut uring_ns, mut write_ns, mut enters) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::new();
    for _ in 0..rounds {
        // io_uring: N SQEs, one enter to submit, then reap N completions.
        let before = ring.stats().enters;
        let t = thread_cpu_ns();
        for &fd in &fds {
            ring.send(fd, Arc::clone(&frame)).unwrap();
        }
        let mut done = 0;
        while done < n {
            ring.wait(1, None, &mut out).unwrap();
            for c in out.drain(..) {
                match c {
                    Completion::Sent { short: false, .. } => done += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        uring_ns.push((thread_cpu_ns() - t) as f64 / n as f64);
        enters.push((ring.stats().enters - before) as f64);
        // write(2) per socket.
        let t = thread_cpu_ns();
        for s in &mut servers {
            s.write_all(&frame).unwrap();
        }
        write_ns.push((thread_cpu_ns() - t) as f64 / n as f64);
    }
    reader.join().unwrap();
    println!(
        "fan-out of {size} B to {n} sockets, {rounds} interleaved rounds per mode (medians):\n  \
         io_uring: {:.2} µs CPU per delivery, {:.0} io_uring_enter per round\n  \
         write(2): {:.2} µs CPU per delivery, {n} write per round",
        median(&mut uring_ns) / 1000.0,
        median(&mut enters),
        median(&mut write_ns) / 1000.0,
    );
}
