//! The safe event-loop API: one [`Ring`] per thread, descriptors it owns,
//! operations keyed by the caller's token, completions as [`Completion`]s.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use slab::Slab;

use crate::error::{Error, Feature};
use crate::multishot::{self, Kind};
use crate::send::SendData;
use crate::sys::{self, BufPool, OpKind, Ops, Owner, Sqe, Target, UNTRACKED_UD};

/// Most bytes owned sends queued behind an fd's send in the kernel are
/// merged into (one send, one completion, one loop turn).
const MERGE_MAX: usize = 256 << 10;

/// Sizes of a [`Ring`].
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Submission queue entries (a power of two). A batch larger than this is
    /// submitted in several `io_uring_enter` calls.
    pub sq_entries: u32,
    /// Completion queue entries. Size it for the completions one loop turn
    /// can produce (a fan-out of N sends produces N); beyond it the kernel
    /// buffers completions in its overflow list (counted in
    /// [`Stats::cq_overflow_seen`]) and may end multishot operations early.
    pub cq_entries: u32,
    /// Buffers in the provided-buffer ring (a power of two, ≤ 32768). Shared
    /// by all connections of the ring; an idle connection holds none.
    pub buffers: u16,
    /// Bytes per buffer: the most one recv completion carries.
    pub buffer_size: u32,
    /// Slots of the registered (fixed) file table; 0 turns it off. The
    /// first `fixed_files` adopted descriptors (by slot) are also installed
    /// there, so their operations skip the per-op file lookup and
    /// reference count. Must not exceed `RLIMIT_NOFILE`.
    pub fixed_files: u32,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        // 4096 × 4 KiB = 16 MiB of receive buffers per ring (per worker), for
        // any number of connections; SQ/CQ memory is about 0.5 MiB.
        RingConfig {
            sq_entries: 4096,
            cq_entries: 16384,
            buffers: 4096,
            buffer_size: 4096,
            // Off by default: the table's size counts against
            // RLIMIT_NOFILE, which the server raises before it picks one.
            fixed_files: 0,
        }
    }
}

/// Optional kernel features found by the probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// `IORING_OP_SEND_ZC` (Linux 6.0); not used yet.
    pub send_zc: bool,
}

/// Counters a metrics layer can export.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// `io_uring_enter` calls made (submits and waits).
    pub enters: u64,
    /// SQEs pushed.
    pub sqes: u64,
    /// CQEs reaped.
    pub cqes: u64,
    /// Times the kernel's `IORING_SQ_CQ_OVERFLOW` flag was seen set: the CQ
    /// was full and completions waited in the kernel's overflow list.
    pub cq_overflow_seen: u64,
    /// Completions the kernel dropped (`cq.overflow`); stays 0 with
    /// `IORING_FEAT_NODROP` unless the kernel ran out of memory.
    pub cq_dropped: u32,
    /// Multishot recvs ended by an empty buffer ring (`-ENOBUFS`).
    pub enobufs: u64,
    /// Sends that wrote only part of their bytes (the rest was resubmitted).
    pub short_sends: u64,
    /// Fixed-file installs the kernel refused (the descriptor's operations
    /// then fail with `EBADF` and the caller closes it).
    pub files_update_errors: u64,
}

/// A descriptor owned by a [`Ring`]. Copyable handle; operations on a closed
/// descriptor's handle fail with [`Error::StaleFd`] (the generation differs
/// even when the slot is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fd {
    key: u32,
    gen: u32,
}

/// Why a multishot accept or recv ended. Each armed multishot ends with
/// exactly one `AcceptEnded`/`RecvEnded`; after it, re-arm if wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The peer closed its side (recv returned 0).
    Eof,
    /// The buffer ring was empty (`-ENOBUFS`): return buffers (drop
    /// `RecvBuf`s), then re-arm.
    NoBuffers,
    /// Canceled by [`Ring::cancel_recv`], [`Ring::cancel`] or [`Ring::close`].
    Canceled,
    /// The kernel ended the multishot without an error (for example while
    /// the CQ overflowed): re-arm.
    Terminated,
    /// An error (`errno`), e.g. `ECONNRESET`.
    Error(i32),
}

/// A received chunk, in a buffer lent by the ring. Dropping it returns the
/// buffer to the ring (the kernel may reuse it at once).
pub struct RecvBuf {
    pool: Rc<BufPool>,
    bid: u16,
    len: usize,
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.pool.bytes(self.bid, self.len)
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool.publish(self.bid);
    }
}

/// What the kernel finished. `token` is the one given to [`Ring::adopt`] for
/// the descriptor the operation ran on.
#[derive(Debug)]
#[allow(missing_docs)] // fields: see each variant
pub enum Completion {
    /// A listener accepted a connection: the new descriptor, owned by the
    /// caller until it is [`Ring::adopt`]ed (set socket options first).
    Accepted { token: u64, fd: OwnedFd },
    /// A multishot accept ended.
    AcceptEnded { token: u64, reason: EndReason },
    /// Bytes arrived.
    Received { token: u64, buf: RecvBuf },
    /// A multishot recv ended.
    RecvEnded { token: u64, reason: EndReason },
    /// The descriptor watched by [`Ring::poll_readable`] became readable
    /// (e.g. an eventfd another thread wrote): read it, it stays watched.
    Readable { token: u64 },
    /// A multishot readability watch ended.
    PollEnded { token: u64, reason: EndReason },
    /// `n` bytes of a send went out. `short`: only part of the send was
    /// written; the ring already resubmitted the rest, ahead of any queued
    /// send, so the stream stays in order.
    Sent { token: u64, n: usize, short: bool },
    /// A send failed (`errno`; `ECANCELED` after cancel/close). Queued sends
    /// of the fd were dropped with it: `dropped` bytes in all.
    SendFailed {
        token: u64,
        errno: i32,
        dropped: usize,
    },
    /// The descriptor is closed (result of `close(2)`), its handle is stale,
    /// and no operation on it is left in the kernel.
    Closed { token: u64, result: Result<(), i32> },
}

/// Sends of one fd waiting behind the one in the kernel.
#[derive(Default)]
struct SendQueue {
    sends: VecDeque<SendData>,
    /// Their bytes in all.
    bytes: usize,
}

/// What the ring keeps per descriptor: for an idle connection, this entry
/// is all (its armed recv has no op-table entry, see `multishot`), so it is
/// kept to 32 bytes.
struct FdEntry {
    /// `None` only between handing the fd to a close SQE and its removal.
    fd: Option<OwnedFd>,
    gen: u32,
    token: u64,
    /// Sends waiting behind the one in the kernel; boxed, and only while
    /// there are any, so an idle connection's entry stays small.
    queue: Option<Box<SendQueue>>,
    /// Ops on this fd whose final CQE has not arrived: at most one per
    /// multishot kind and one send.
    inflight: u8,
    /// The multishots armed now ([`Kind::bit`]).
    armed: u8,
    /// Arming count per multishot kind, part of its `user_data`.
    seq: [u8; 3],
    /// [`SENDING`], [`FIXED`], [`STOP_SENDING`].
    flags: u8,
    /// A bool (not a flag bit) so the slab can keep its vacant/occupied tag
    /// in it instead of another word.
    closing: bool,
}

/// A send is in the kernel: later sends wait in `queue`, so bytes of two
/// sends never interleave on the stream.
const SENDING: u8 = 1;
/// Installed in the fixed file table at slot = its key.
const FIXED: u8 = 2;
/// `cancel`/`close` asked to stop sending: the in-flight send's rest and
/// the queue are dropped (and reported) at its completion.
const STOP_SENDING: u8 = 4;

impl FdEntry {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    fn is_armed(&self, kind: Kind) -> bool {
        self.armed & kind.bit() != 0
    }
}

/// Buffer group id of the ring's provided buffers.
const BGID: u16 = 0;

/// One io_uring with its provided-buffer ring, for one event-loop thread
/// (`!Send`: the ring is set up single-issuer).
pub struct Ring {
    uring: IoUring,
    ops: Ops,
    pool: Rc<BufPool>,
    fds: Slab<FdEntry>,
    /// Multishots armed (their final CQE has not arrived).
    multishots: usize,
    next_gen: u32,
    cqes: Vec<(u64, i32, u32)>,
    fixed_slots: u32,
    stats: Stats,
    features: Features,
    _not_send: PhantomData<*const ()>,
}

fn missing(feature: Feature) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::MissingFeature { feature, source }
}

impl Ring {
    /// Sets up the ring and probes every feature it uses, so a kernel that
    /// lacks one fails here with [`Error::MissingFeature`], never mid-run.
    pub fn new(config: RingConfig) -> Result<Ring, Error> {
        if !config.buffers.is_power_of_two() || config.buffers > 32768 {
            return Err(Error::Config("buffers must be a power of two ≤ 32768"));
        }
        if config.buffer_size == 0
            || config.sq_entries == 0
            || config.cq_entries < config.sq_entries
        {
            return Err(Error::Config(
                "buffer_size and sq_entries must be > 0, cq_entries ≥ sq_entries",
            ));
        }
        let uring = IoUring::builder()
            .setup_cqsize(config.cq_entries)
            .setup_submit_all()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(config.sq_entries)
            .map_err(missing(Feature::IoUring))?;
        // NODROP: a full CQ parks completions instead of losing them (5.5);
        // EXT_ARG: `wait` with a timeout (5.11).
        for (present, name) in [
            (
                uring.params().is_feature_nodrop(),
                "IORING_FEAT_NODROP (Linux 5.5)",
            ),
            (
                uring.params().is_feature_ext_arg(),
                "IORING_FEAT_EXT_ARG (Linux 5.11)",
            ),
        ] {
            if !present {
                return Err(Error::MissingFeature {
                    feature: Feature::RingFeature(name),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
        }
        let mut probe = Probe::new();
        uring
            .submitter()
            .register_probe(&mut probe)
            .map_err(missing(Feature::Probe))?;
        for (code, name) in [
            (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
            (opcode::Recv::CODE, "IORING_OP_RECV"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Close::CODE, "IORING_OP_CLOSE"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
        ] {
            if !probe.is_supported(code) {
                return Err(Error::MissingFeature {
                    feature: Feature::Opcode(name),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
        }
        let features = Features {
            send_zc: probe.is_supported(opcode::SendZc::CODE),
        };
        let pool = BufPool::new(config.buffers, config.buffer_size)
            .ok_or(Error::Config("buffers × buffer_size overflows"))?;
        pool.register(&uring, BGID)
            .map_err(missing(Feature::BufRing))?;
        if config.fixed_files > 0 {
            match uring.submitter().register_files_sparse(config.fixed_files) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    return Err(Error::Config("fixed_files exceeds RLIMIT_NOFILE"))
                }
                Err(e) => return Err(missing(Feature::FixedFiles)(e)),
            }
        }
        let mut ring = Ring {
            uring,
            ops: Ops::default(),
            pool: Rc::new(pool),
            fds: Slab::new(),
            multishots: 0,
            next_gen: 0,
            cqes: Vec::with_capacity(config.cq_entries as usize),
            fixed_slots: config.fixed_files,
            stats: Stats::default(),
            features,
            _not_send: PhantomData,
        };
        ring.self_test()?;
        Ok(ring)
    }

    /// Proves multishot accept and multishot recv work, over an abstract
    /// unix socket (no port, no file): flags an old kernel ignores would show
    /// up as a multishot that ends after one completion.
    fn self_test(&mut self) -> Result<(), Error> {
        use std::io::Write;
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        const PROBE: u64 = u64::MAX;
        let setup = |e: io::Error| Error::MissingFeature {
            feature: Feature::IoUring,
            source: e,
        };
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("wsgate-uring-probe-{}-{n}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(setup)?;
        let listener = UnixListener::bind_addr(&addr).map_err(setup)?;
        let lfd = self.adopt(PROBE, listener.into());
        self.accept_multi(lfd)?;
        self.submit()?;
        let mut client = UnixStream::connect_addr(&addr).map_err(setup)?;
        let _second = UnixStream::connect_addr(&addr).map_err(setup)?;
        let mut out = Vec::new();
        let (mut accepted, mut received, mut conn) = (0, false, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let fail = |feature, errno| Error::MissingFeature {
            feature,
            source: io::Error::from_raw_os_error(errno),
        };
        while accepted < 2 || !received {
            if std::time::Instant::now() > deadline {
                return Err(fail(Feature::MultishotRecv, libc::ETIMEDOUT));
            }
            self.wait(1, Some(Duration::from_millis(100)), &mut out)?;
            for c in out.drain(..) {
                match c {
                    Completion::Accepted { fd, .. } => {
                        accepted += 1;
                        if conn.is_none() {
                            let c = self.adopt(PROBE, fd);
                            self.recv_multi(c)?;
                            conn = Some(c);
                            client.write_all(b"p").map_err(setup)?;
                        }
                    }
                    Completion::AcceptEnded { reason, .. } => {
                        let errno = match reason {
                            EndReason::Error(e) => e,
                            _ => libc::EINVAL,
                        };
                        return Err(fail(Feature::MultishotAccept, errno));
                    }
                    Completion::Received { .. } => received = true,
                    Completion::RecvEnded { reason, .. } => {
                        let errno = match reason {
                            EndReason::Error(e) => e,
                            _ => libc::EINVAL,
                        };
                        return Err(fail(Feature::MultishotRecv, errno));
                    }
                    _ => {}
                }
            }
        }
        // Both multishots are still armed: tear them down through the same
        // close path connections use.
        self.close(lfd)?;
        if let Some(c) = conn {
            self.close(c)?;
        }
        let mut closed = 0;
        while closed < 2 {
            if std::time::Instant::now() > deadline {
                return Err(fail(
                    Feature::Opcode("IORING_OP_ASYNC_CANCEL"),
                    libc::ETIMEDOUT,
                ));
            }
            self.wait(1, Some(Duration::from_millis(100)), &mut out)?;
            closed += out
                .drain(..)
                .filter(|c| matches!(c, Completion::Closed { .. }))
                .count();
        }
        self.stats = Stats::default();
        Ok(())
    }

    /// Optional features found by the probe.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Buffers of the provided-buffer ring.
    pub fn buffers_total(&self) -> u16 {
        self.pool.count()
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> u32 {
        self.pool.buf_size()
    }

    /// Buffers lent out as [`RecvBuf`]s right now; the rest are in the
    /// ring, available to the kernel.
    pub fn buffers_lent(&self) -> u32 {
        self.pool.lent()
    }

    /// Operations whose final completion has not been reaped.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len() + self.multishots
    }

    /// Descriptors the ring owns (adopted, not yet `Closed`).
    pub fn fds_open(&self) -> usize {
        self.fds.len()
    }

    /// Hands a descriptor to the ring, which owns it from now on and closes
    /// it only through [`Ring::close`] (or on drop). `token` comes back in
    /// every completion of an operation on it.
    pub fn adopt(&mut self, token: u64, fd: OwnedFd) -> Fd {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let key = self.fds.insert(FdEntry {
            fd: Some(fd),
            gen,
            token,
            queue: None,
            inflight: 0,
            armed: 0,
            seq: [0; 3],
            flags: 0,
            closing: false,
        });
        if (key as u64) < u64::from(self.fixed_slots) {
            let raw = self.fds[key].fd.as_ref().map_or(-1, |f| f.as_raw_fd());
            let op = OpKind::FilesUpdate {
                fds: Box::new([raw]),
            };
            // Queued like any SQE: ops pushed after it (which name the slot)
            // are issued after it. If the queue cannot take it, the fd just
            // stays unfixed.
            if self
                .push(Owner::Op(op), Sqe::FilesUpdate { slot: key as u32 })
                .is_ok()
            {
                self.fds[key].set(FIXED, true);
            }
        }
        Fd {
            key: key as u32,
            gen,
        }
    }

    /// How SQEs name the descriptor of fd-table entry `key`.
    fn target(&self, key: usize) -> Result<Target, Error> {
        let e = &self.fds[key];
        if e.has(FIXED) {
            return Ok(Target::Fixed(key as u32));
        }
        e.fd.as_ref()
            .map(|f| Target::Fd(f.as_raw_fd()))
            .ok_or(Error::StaleFd)
    }

    /// Whether `fd` is installed in the fixed file table (see
    /// [`RingConfig::fixed_files`]).
    pub fn is_fixed(&self, fd: Fd) -> bool {
        self.fds
            .get(fd.key as usize)
            .is_some_and(|e| e.gen == fd.gen && e.has(FIXED))
    }

    /// Borrows an adopted descriptor (for `setsockopt`, `getpeername`).
    pub fn borrow_fd(&self, fd: Fd) -> Option<BorrowedFd<'_>> {
        let e = self.fds.get(fd.key as usize).filter(|e| e.gen == fd.gen)?;
        e.fd.as_ref().map(|f| f.as_fd())
    }

    /// Bytes of sends waiting behind the one in the kernel (for the caller's
    /// output budget).
    pub fn queued_bytes(&self, fd: Fd) -> usize {
        self.fds
            .get(fd.key as usize)
            .filter(|e| e.gen == fd.gen)
            .map_or(0, |e| e.queue.as_ref().map_or(0, |q| q.bytes))
    }

    fn entry(&mut self, fd: Fd) -> Result<&mut FdEntry, Error> {
        let e = self
            .fds
            .get_mut(fd.key as usize)
            .filter(|e| e.gen == fd.gen)
            .ok_or(Error::StaleFd)?;
        if e.closing {
            return Err(Error::Closing);
        }
        Ok(e)
    }

    fn push(&mut self, owner: Owner, sqe: Sqe) -> Result<u64, Error> {
        let (ud, enters) =
            sys::push(&mut self.uring, &mut self.ops, owner, sqe).map_err(Error::Enter)?;
        self.stats.enters += u64::from(enters);
        self.stats.sqes += 1;
        Ok(ud)
    }

    /// Arms a multishot accept on an adopted listening socket: one
    /// [`Completion::Accepted`] per connection until
    /// [`Completion::AcceptEnded`].
    pub fn accept_multi(&mut self, fd: Fd) -> Result<(), Error> {
        self.arm(fd, Kind::Accept, |fd| Sqe::AcceptMulti { fd })
    }

    /// Arms a multishot recv: one [`Completion::Received`] per chunk, each in
    /// a buffer the kernel takes from the shared ring only when data arrives,
    /// until [`Completion::RecvEnded`].
    pub fn recv_multi(&mut self, fd: Fd) -> Result<(), Error> {
        self.arm(fd, Kind::Recv, |fd| Sqe::RecvMulti { fd, bgid: BGID })
    }

    /// Watches `fd` for readability with a multishot poll: one
    /// [`Completion::Readable`] per wake-up until [`Completion::PollEnded`].
    /// For descriptors the ring does not read itself, such as the eventfd
    /// other threads write to wake the loop.
    pub fn poll_readable(&mut self, fd: Fd) -> Result<(), Error> {
        self.arm(fd, Kind::Poll, |fd| Sqe::PollReadableMulti { fd })
    }

    fn arm(&mut self, fd: Fd, kind: Kind, sqe: impl FnOnce(Target) -> Sqe) -> Result<(), Error> {
        let e = self.entry(fd)?;
        if e.is_armed(kind) {
            return Err(Error::AlreadyArmed(match kind {
                Kind::Accept => "accept",
                Kind::Recv => "recv",
                Kind::Poll => "poll",
            }));
        }
        let seq = e.seq[kind as usize].wrapping_add(1);
        let key = fd.key as usize;
        let raw = self.target(key)?;
        self.push(
            Owner::Multishot(multishot::encode(fd.key, kind, seq)),
            sqe(raw),
        )?;
        let e = &mut self.fds[key];
        e.seq[kind as usize] = seq;
        e.armed |= kind.bit();
        e.inflight += 1;
        self.multishots += 1;
        Ok(())
    }

    /// Sends `data` on `fd`. The bytes belong to the ring until their last
    /// [`Completion::Sent`] (or `SendFailed`). Sends on one fd go out in call
    /// order: while one is in the kernel, later ones wait in the ring (see
    /// [`Ring::queued_bytes`]). Nothing reaches the kernel before the next
    /// [`Ring::submit`]/[`Ring::wait`], so many sends cost one syscall.
    pub fn send(&mut self, fd: Fd, data: impl Into<SendData>) -> Result<(), Error> {
        let data = data.into();
        let e = self.entry(fd)?;
        if data.is_empty() {
            return Ok(());
        }
        if e.has(SENDING) {
            let q = e.queue.get_or_insert_with(Box::default);
            q.bytes += data.len();
            // Small copies queued behind the send in the kernel become one
            // send: sends on an fd go in one at a time (one per completion),
            // so a queue of small ones would trickle out.
            if let Some(back) = q.sends.back_mut() {
                if back.try_append(&data, MERGE_MAX) {
                    return Ok(());
                }
            }
            q.sends.push_back(data);
            return Ok(());
        }
        self.push_send(fd.key as usize, data)
    }

    fn push_send(&mut self, key: usize, data: SendData) -> Result<(), Error> {
        let raw = self.target(key)?;
        self.push(
            Owner::Op(OpKind::Send { fd: key, data }),
            Sqe::Send { fd: raw },
        )?;
        let e = &mut self.fds[key];
        e.set(SENDING, true);
        e.inflight += 1;
        Ok(())
    }

    /// Cancels the multishot recv on `fd` (to stop reading, e.g. under
    /// backpressure); it ends with `RecvEnded { reason: Canceled }` unless
    /// it already ended. Re-arm with [`Ring::recv_multi`] after that.
    pub fn cancel_recv(&mut self, fd: Fd) -> Result<(), Error> {
        let e = self.entry(fd)?;
        if e.is_armed(Kind::Recv) {
            let ud = multishot::encode(fd.key, Kind::Recv, e.seq[Kind::Recv as usize]);
            self.push(Owner::Untracked, Sqe::CancelUserData { ud })?;
        }
        Ok(())
    }

    /// Cancels every operation on `fd` in the kernel and drops its queued
    /// sends; each canceled operation completes (`RecvEnded`/`AcceptEnded`
    /// with `Canceled`; the send in flight with `SendFailed { ECANCELED }`,
    /// after a `Sent` for any part that went out, its `dropped` counting its
    /// rest and every send queued behind it until then).
    pub fn cancel(&mut self, fd: Fd) -> Result<(), Error> {
        self.entry(fd)?;
        self.cancel_key(fd.key as usize)
    }

    fn cancel_key(&mut self, key: usize) -> Result<(), Error> {
        let e = &mut self.fds[key];
        // The queue is non-empty only behind an in-flight send, whose
        // completion drops and reports it.
        let sending = e.has(SENDING);
        e.set(STOP_SENDING, sending);
        if e.inflight > 0 {
            let raw = self.target(key)?;
            self.push(Owner::Untracked, Sqe::CancelFd { fd: raw })?;
        }
        Ok(())
    }

    /// Closes `fd`: cancels its operations, waits (inside the ring) for
    /// their last completions, then closes the descriptor and reports
    /// [`Completion::Closed`]. The handle is unusable from now on; the
    /// descriptor number is not reused before every SQE naming it finished.
    pub fn close(&mut self, fd: Fd) -> Result<(), Error> {
        self.entry(fd)?;
        let key = fd.key as usize;
        self.cancel_key(key)?;
        self.fds[key].closing = true;
        self.maybe_close(key)
    }

    fn maybe_close(&mut self, key: usize) -> Result<(), Error> {
        let e = &mut self.fds[key];
        if !e.closing || e.inflight > 0 {
            return Ok(());
        }
        let (token, fixed) = (e.token, e.has(FIXED));
        let Some(owned) = e.fd.take() else {
            return Ok(());
        };
        self.fds.remove(key);
        // Empty the fixed slot first (it holds a reference to the socket);
        // a later adopt that reuses the slot queues its install after this.
        if fixed {
            self.push(
                Owner::Untracked,
                Sqe::Close {
                    fd: Target::Fixed(key as u32),
                },
            )?;
        }
        // From here the kernel owns the descriptor: the close SQE closes it.
        let raw = owned.into_raw_fd();
        self.push(
            Owner::Op(OpKind::Close { token }),
            Sqe::Close {
                fd: Target::Fd(raw),
            },
        )?;
        Ok(())
    }

    /// Submits queued SQEs (one `io_uring_enter`), without waiting.
    pub fn submit(&mut self) -> Result<usize, Error> {
        self.stats.enters += 1;
        self.uring.submit().map_err(Error::Enter)
    }

    /// Submits queued SQEs and waits until at least `min` completions are
    /// ready or `timeout` passes, then reaps all ready completions into
    /// `out` (appended). One `io_uring_enter`.
    pub fn wait(
        &mut self,
        min: usize,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), Error> {
        self.stats.enters += 1;
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(min, &args)
            }
            None => self.uring.submit_and_wait(min),
        };
        match r {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(Error::Enter(e)),
        }
        self.reap(out)
    }

    /// Reaps every ready completion into `out` (appended), without a
    /// syscall unless completions wait in the kernel's overflow list.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), Error> {
        loop {
            let overflow = self.uring.submission().cq_overflow();
            {
                let mut cq = self.uring.completion();
                self.stats.cq_dropped = cq.overflow();
                cq.sync();
                self.cqes
                    .extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
            }
            self.stats.cqes += self.cqes.len() as u64;
            let mut batch = std::mem::take(&mut self.cqes);
            for (ud, res, flags) in batch.drain(..) {
                self.complete(ud, res, flags, out)?;
            }
            self.cqes = batch;
            if !overflow && !self.uring.submission().cq_overflow() {
                return Ok(());
            }
            // Completions wait in the kernel's overflow list: an enter with
            // GETEVENTS (which submit_and_wait(0) makes when the flag is
            // set) moves them into the CQ we just emptied.
            self.stats.cq_overflow_seen += 1;
            self.stats.enters += 1;
            self.uring.submit_and_wait(0).map_err(Error::Enter)?;
        }
    }

    fn complete(
        &mut self,
        ud: u64,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
    ) -> Result<(), Error> {
        if ud == UNTRACKED_UD {
            return Ok(());
        }
        let more = cqueue::more(flags);
        // A CQE may carry a buffer whatever its result; take it first so it
        // always has an owner (and returns to the ring if unused).
        let buf = cqueue::buffer_select(flags).map(|bid| {
            let len = usize::try_from(res).unwrap_or(0);
            let (bid, len) = self.pool.lend(bid, len);
            RecvBuf {
                pool: Rc::clone(&self.pool),
                bid,
                len,
            }
        });
        if let Some((key, kind, seq)) = multishot::decode(ud) {
            return self.complete_multishot(key, kind, seq, res, more, buf, out);
        }
        if more {
            // Only multishots post CQEs with F_MORE.
            return Ok(());
        }
        let Some(op) = self.ops.finish(ud) else {
            return Ok(());
        };
        match op {
            OpKind::Send { fd, mut data } => {
                let e = &mut self.fds[fd];
                let token = e.token;
                e.inflight -= 1;
                e.set(SENDING, false);
                if res > 0 {
                    let n = res as usize;
                    data.advance(n);
                    out.push(Completion::Sent {
                        token,
                        n,
                        short: !data.is_empty(),
                    });
                }
                // 0 bytes for a non-empty send means the stream takes no
                // more: a broken pipe.
                let errno = match res {
                    _ if e.has(STOP_SENDING) || e.closing => libc::ECANCELED,
                    0 => libc::EPIPE,
                    r if r < 0 => -r,
                    _ => 0,
                };
                if errno != 0 {
                    let dropped = data.len() + e.queue.take().map_or(0, |q| q.bytes);
                    e.set(STOP_SENDING, false);
                    if dropped > 0 {
                        out.push(Completion::SendFailed {
                            token,
                            errno,
                            dropped,
                        });
                    }
                } else if !data.is_empty() {
                    self.stats.short_sends += 1;
                    self.push_send(fd, data)?;
                } else if let Some(next) = take_next(&mut e.queue) {
                    self.push_send(fd, next)?;
                }
                self.maybe_close(fd)?;
            }
            OpKind::FilesUpdate { .. } => {
                if res < 0 {
                    self.stats.files_update_errors += 1;
                }
            }
            OpKind::Close { token } => {
                let result = if res < 0 { Err(-res) } else { Ok(()) };
                out.push(Completion::Closed { token, result });
            }
        }
        Ok(())
    }

    /// A CQE of the multishot `kind` armed on fd entry `key`.
    #[allow(clippy::too_many_arguments)]
    fn complete_multishot(
        &mut self,
        key: usize,
        kind: Kind,
        seq: u8,
        res: i32,
        more: bool,
        buf: Option<RecvBuf>,
        out: &mut Vec<Completion>,
    ) -> Result<(), Error> {
        // By construction the entry is there and armed (it stays until the
        // final CQE of its every op); anything else is not ours to act on,
        // beyond closing a descriptor it may carry.
        let Some(e) = self
            .fds
            .get(key)
            .filter(|e| e.is_armed(kind) && e.seq[kind as usize] == seq)
        else {
            if kind == Kind::Accept && res >= 0 {
                drop(sys::accepted_fd(res));
            }
            return Ok(());
        };
        let token = e.token;
        match kind {
            Kind::Accept if res >= 0 => out.push(Completion::Accepted {
                token,
                fd: sys::accepted_fd(res),
            }),
            Kind::Recv => {
                if let Some(buf) = buf.filter(|b| !b.is_empty()) {
                    out.push(Completion::Received { token, buf });
                }
            }
            Kind::Poll if res >= 0 => out.push(Completion::Readable { token }),
            _ => {}
        }
        if more {
            return Ok(());
        }
        let reason = if kind == Kind::Recv && res == 0 {
            EndReason::Eof
        } else {
            end_reason(res, &mut self.stats)
        };
        out.push(match kind {
            Kind::Accept => Completion::AcceptEnded { token, reason },
            Kind::Recv => Completion::RecvEnded { token, reason },
            Kind::Poll => Completion::PollEnded { token, reason },
        });
        let e = &mut self.fds[key];
        e.armed &= !kind.bit();
        e.inflight -= 1;
        self.multishots -= 1;
        self.maybe_close(key)
    }
}

/// The next queued send of an fd; the queue goes once it is empty.
fn take_next(queue: &mut Option<Box<SendQueue>>) -> Option<SendData> {
    let q = queue.as_mut()?;
    let next = q.sends.pop_front();
    if let Some(n) = &next {
        q.bytes -= n.len();
    }
    if q.sends.is_empty() {
        *queue = None;
    }
    next
}

fn end_reason(res: i32, stats: &mut Stats) -> EndReason {
    match -res {
        _ if res >= 0 => EndReason::Terminated,
        libc::ENOBUFS => {
            stats.enobufs += 1;
            EndReason::NoBuffers
        }
        libc::ECANCELED => EndReason::Canceled,
        e => EndReason::Error(e),
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Every op must deliver its final CQE before the buffers it may write
        // (the pool) or read (send data) are freed: cancel everything, then
        // reap until the op table is empty.
        let keys: Vec<usize> = self.fds.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.fds[key].inflight > 0 {
                let _ = self.cancel_key(key);
            }
        }
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.ops_in_flight() > 0 && std::time::Instant::now() < deadline {
            if self
                .wait(1, Some(Duration::from_millis(50)), &mut out)
                .is_err()
            {
                break;
            }
            // Canceled ops hand back their fds and buffers here (drop).
            out.clear();
        }
        if self.ops_in_flight() > 0 {
            // The kernel may still use buffers: leak the pool rather than
            // free memory it might write.
            std::mem::forget(Rc::clone(&self.pool));
            return;
        }
        let _ = self.uring.submitter().unregister_buf_ring(BGID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ring keeps per idle connection: its fd entry, in a slab
    /// slot (the armed multishot recv has no op-table entry). The server's
    /// memory budget per connection counts it.
    #[test]
    fn per_connection_bookkeeping_stays_small() {
        let entry = std::mem::size_of::<FdEntry>();
        // The slab stores `enum { Vacant(usize), Occupied(FdEntry) }`; with
        // its tag in `closing`'s spare values a slot is one entry's size.
        let slot = std::mem::size_of::<SlabSlot>();
        eprintln!("fd entry {entry} B, slab slot {slot} B");
        assert!(slot <= 32, "fd entry {entry} B, slab slot {slot} B");
    }

    /// The shape of `slab::Entry<FdEntry>` (private to slab), for its size.
    #[allow(dead_code)]
    enum SlabSlot {
        Vacant(usize),
        Occupied(FdEntry),
    }
}
