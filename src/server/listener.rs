//! Listening sockets: one per worker, all bound to the same address with
//! `SO_REUSEPORT` so the kernel spreads incoming connections over workers.
//!
//! Owns socket options of listeners, and those accepted sockets inherit from
//! them (Linux copies a listener's TCP options to every socket it accepts,
//! so setting them here once saves two `setsockopt` calls per connection),
//! and `TCP_DEFER_ACCEPT` (`--defer-accept`), which only a listener has.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// The accept backlog we ask for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 65_535;

/// Options of the client listeners, inherited by what they accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// `TCP_NODELAY`: replies and fan-out frames go out at once.
    pub nodelay: bool,
    /// `TCP_USER_TIMEOUT`: a peer that stops acknowledging what we send is
    /// given up after this long instead of ~15 min of retransmissions
    /// (covers receive-only clients, which are not pinged).
    pub user_timeout: Option<Duration>,
    /// `TCP_DEFER_ACCEPT`: accept a connection only once its first bytes
    /// are there (or this long has passed); `None` accepts at once.
    pub defer_accept: Option<Duration>,
}

impl ListenOptions {
    /// What `--listen` sockets get.
    /// What client connections get: `TCP_NODELAY`, and `TCP_USER_TIMEOUT`
    /// at the connection idle timeout. (The listener is a leaf module: the
    /// caller passes the setting in.)
    pub fn for_clients(idle_timeout: Duration, defer_accept: Duration) -> ListenOptions {
        ListenOptions {
            nodelay: true,
            user_timeout: Some(idle_timeout),
            defer_accept: (!defer_accept.is_zero()).then_some(defer_accept),
        }
    }
}

/// Binds a non-blocking listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_reuseport_with(addr, &ListenOptions::default())
}

/// [`bind_reuseport`] with `options` set before `listen`, so no connection
/// is accepted without them.
pub fn bind_reuseport_with(
    addr: SocketAddr,
    options: &ListenOptions,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    if options.nodelay {
        socket.set_nodelay(true)?;
    }
    if let Some(timeout) = options.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    if let Some(defer) = options.defer_accept {
        // Whole seconds, rounded up: a sub-second setting must not turn it off.
        let secs = defer.as_secs() + u64::from(defer.subsec_nanos() > 0);
        wsgate_uring::set_tcp_defer_accept(
            socket.as_fd(),
            u32::try_from(secs).unwrap_or(u32::MAX),
        )?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds one listener per worker on the same address, each with `options`.
/// When `addr` has port 0 the first bind picks the port and the rest join
/// it.
pub fn bind_all(
    addr: SocketAddr,
    count: usize,
    options: &ListenOptions,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport_with(addr, options)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_reuseport_with(actual, options)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_listeners_share_one_port() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3, &ListenOptions::default()).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    /// The worker does not set these per connection: it relies on the
    /// kernel copying them from the listener, so a client socket without
    /// them would mean Nagle delays on every reply and ~15 min of
    /// retransmissions to a dead peer.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_the_idle_timeout() {
        let options = ListenOptions::for_clients(Duration::from_secs(77), Duration::ZERO);
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 2, &options).unwrap();
        for l in &ls {
            // SO_REUSEPORT spreads connections; connect until this one
            // accepts.
            let accepted = loop {
                let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                if let Ok((s, _)) = l.accept() {
                    break s;
                }
            };
            let s = socket2::SockRef::from(&accepted);
            assert!(s.nodelay().unwrap());
            assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(77)));
        }
    }
}
