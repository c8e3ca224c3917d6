//! The only module of this crate that may use `unsafe`: everything the kernel
//! reads or writes behind Rust's back lives here.
//!
//! It owns three things, and each unsafe block argues from their invariants:
//!
//! * [`BufPool`]: the provided-buffer ring (`struct io_uring_buf_ring`, shared
//!   with the kernel) and the buffer memory it points into. Invariant **P1**:
//!   a buffer id is either *published* (in the ring, the kernel may write into
//!   it at any time) or *lent* (the kernel handed it to us in a CQE and will
//!   not touch it until we publish it again). Only [`BufPool::lend`] turns a
//!   published id into a lent one (on the CQE that names it) and only
//!   [`BufPool::publish`] (from `RecvBuf::drop`) turns it back, so a `&[u8]`
//!   over a buffer exists only while that buffer is lent.
//! * [`Ops`]: the table of in-flight operations. The SQE's `user_data` is the
//!   table key plus a generation. Invariant **O1**: an entry, and the memory
//!   its SQE points into (a send's bytes, a files update's fd array; owned by
//!   the entry), are removed only by [`Ops::finish`], which the ring calls
//!   only for a CQE without `IORING_CQE_F_MORE`, i.e. the kernel's last word
//!   on that SQE. Until then the kernel may read that memory. Multishot
//!   accepts, recvs and polls point into no memory but the pool's and have
//!   no entry: their `user_data` names their descriptor (`multishot`).
//! * The SQE pushes themselves ([`push`]): the only way an SQE reaches the
//!   submission queue.
//!
//! Besides the ring it holds one plain syscall no safe crate in use wraps
//! ([`set_tcp_defer_accept`]), so the workspace's audited `unsafe` stays in
//! this one file.
//!
//! `Ring`'s `Drop` upholds the end of both lifetimes: it cancels everything
//! and waits for the final CQE of every op and every armed multishot (a
//! recv may write into the pool until its last CQE) before the pool's
//! memory can be freed;
//! if that wait fails it leaks the pool (safe) rather than free memory the
//! kernel may still write.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};
use slab::Slab;

use crate::send::SendData;

/// One entry of the kernel's `struct io_uring_buf` (uapi `io_uring.h`):
/// `{ __u64 addr; __u32 len; __u16 bid; __u16 resv; }`. In entry 0 `resv`
/// is the ring's tail, which only [`BufPool::publish`] writes.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);
const _: () = assert!(std::mem::size_of::<RawBuf>() == std::mem::size_of::<types::BufRingEntry>());

/// The kernel wants the ring page-aligned; buffers are page-aligned too so a
/// buffer never straddles more pages than it must.
const PAGE: usize = 4096;

/// A provided-buffer ring and its buffers. Not `Send`/`Sync` (raw pointers,
/// `Cell`): one event-loop thread.
pub(crate) struct BufPool {
    ring: NonNull<RawBuf>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    count: u16,
    buf_size: u32,
    /// Our copy of the ring tail (the kernel owns the head).
    tail: Cell<u16>,
    /// Buffers currently lent to `RecvBuf`s (P1).
    lent: Cell<u32>,
    /// Per id: lent right now? Catches a double lend/publish (a kernel or
    /// logic bug) with a panic instead of aliasing a buffer.
    is_lent: Box<[Cell<bool>]>,
}

impl BufPool {
    /// Allocates `count` (a power of two, ≤ 32768) buffers of `buf_size`
    /// bytes and publishes them all. `None` if the sizes overflow.
    pub(crate) fn new(count: u16, buf_size: u32) -> Option<BufPool> {
        if !count.is_power_of_two() || count > 32768 || buf_size == 0 {
            return None;
        }
        let ring_layout =
            Layout::from_size_align(usize::from(count) * std::mem::size_of::<RawBuf>(), PAGE)
                .ok()?;
        let bufs_layout =
            Layout::from_size_align(usize::from(count).checked_mul(buf_size as usize)?, PAGE)
                .ok()?;
        // SAFETY: both layouts have non-zero size (count ≥ 1, buf_size ≥ 1).
        // Zeroed ring memory means tail = 0, the state the kernel expects at
        // registration.
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<RawBuf>();
        let ring = NonNull::new(ring).unwrap_or_else(|| alloc::handle_alloc_error(ring_layout));
        // SAFETY: non-zero size, as above. Contents need no initialisation
        // for the kernel; we never read a buffer before the kernel wrote
        // `len` bytes of it (lend takes the CQE's length).
        let bufs = unsafe { alloc::alloc_zeroed(bufs_layout) };
        let bufs = NonNull::new(bufs).unwrap_or_else(|| alloc::handle_alloc_error(bufs_layout));
        let pool = BufPool {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            count,
            buf_size,
            tail: Cell::new(0),
            lent: Cell::new(u32::from(count)),
            is_lent: (0..count).map(|_| Cell::new(true)).collect(),
        };
        for bid in 0..count {
            pool.publish(bid);
        }
        Some(pool)
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    pub(crate) fn buf_size(&self) -> u32 {
        self.buf_size
    }

    pub(crate) fn lent(&self) -> u32 {
        self.lent.get()
    }

    /// Registers the ring with `uring` as buffer group `bgid`.
    pub(crate) fn register(&self, uring: &IoUring, bgid: u16) -> std::io::Result<()> {
        // SAFETY: `ring` points to `count` entries, page-aligned, allocated in
        // `new` and freed only in `Drop`. The registration lives no longer
        // than the memory: `Ring` unregisters (or, when it cannot prove the
        // kernel is done, leaks this pool) before the pool is dropped.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.count,
                bgid,
                0,
            )
        }
    }

    /// Puts buffer `bid` back into the ring: the kernel may use it from now
    /// on. Called for every id once in `new` and then only from
    /// `RecvBuf::drop` (P1).
    pub(crate) fn publish(&self, bid: u16) {
        assert!(bid < self.count, "buffer id out of range");
        assert!(
            self.is_lent[usize::from(bid)].replace(false),
            "buffer {bid} published twice"
        );
        self.lent.set(self.lent.get() - 1);
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.count - 1));
        // SAFETY: `slot < count`, so the pointer is inside the ring allocation.
        // The ring has `count` slots and at most `count` ids exist, each
        // published at most once (checked above), so this slot is not one the
        // kernel may still read: it lies beyond the kernel's head by at most
        // count-1 entries. We write the fields one by one through raw pointers
        // so entry 0's `resv` (the tail, read by the kernel) is never
        // overwritten. `bid < count` keeps `addr` inside the buffer allocation.
        unsafe {
            let e = self.ring.as_ptr().add(slot);
            std::ptr::addr_of_mut!((*e).addr).write(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size as usize) as u64,
            );
            std::ptr::addr_of_mut!((*e).len).write(self.buf_size);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail is the u16 at byte offset 14 of the (page-aligned,
        // so 2-aligned) ring; it lives as long as `self`. The kernel reads it
        // with smp_load_acquire; the Release store orders the entry writes
        // above before the new tail becomes visible, as liburing's
        // io_uring_buf_ring_advance does.
        unsafe {
            let t = std::ptr::addr_of_mut!((*self.ring.as_ptr()).resv);
            AtomicU16::from_ptr(t).store(tail, Ordering::Release);
        }
    }

    /// The kernel put `len` bytes into buffer `bid` and told us so in a CQE:
    /// the buffer is ours until `publish(bid)` (P1).
    pub(crate) fn lend(&self, bid: u16, len: usize) -> (u16, usize) {
        assert!(
            bid < self.count,
            "kernel named buffer {bid} outside the ring"
        );
        assert!(
            len <= self.buf_size as usize,
            "kernel reported {len} bytes in one buffer"
        );
        assert!(
            !self.is_lent[usize::from(bid)].replace(true),
            "buffer {bid} lent twice"
        );
        self.lent.set(self.lent.get() + 1);
        (bid, len)
    }

    /// The bytes of a lent buffer.
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            self.is_lent[usize::from(bid)].get(),
            "reading a published buffer"
        );
        assert!(len <= self.buf_size as usize);
        // SAFETY: bid < count (the assert indexes is_lent), len ≤ buf_size, so
        // the range lies inside the buffer allocation. The buffer is lent
        // (asserted), so per P1 the kernel does not write it until it is
        // published, which needs the `RecvBuf` that borrows this slice to be
        // dropped first. The kernel wrote these `len` bytes before posting
        // the CQE we took `len` from, and the allocation is zeroed anyway.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size as usize),
                len,
            )
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: the pointers came from `alloc_zeroed` with exactly these
        // layouts. A pool is only dropped after its ring is unregistered and
        // no op is in flight (`Ring::drop`; it leaks the pool otherwise), and
        // lent buffers hold an `Rc` to the pool, so nothing refers to it.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

/// What an in-flight operation is, and what it owns until its last CQE.
/// Multishot accepts, recvs and polls own nothing and have no entry (see
/// `multishot`).
pub(crate) enum OpKind {
    /// The one-fd array an `IORING_OP_FILES_UPDATE` SQE points into (O1).
    FilesUpdate {
        fds: Box<[RawFd; 1]>,
    },
    /// The bytes the SQE points into (O1).
    Send {
        fd: usize,
        data: SendData,
    },
    Close {
        token: u64,
    },
}

/// In-flight operations (O1). The SQE's `user_data` is the slab key in the
/// low 32 bits and a generation in the high 32, so a cancel aimed at an op
/// that finished before the cancel was submitted cannot hit a later op that
/// reused the slot. Generations stay below 2^31: bit 63 of an op's
/// `user_data` is clear, which tells it from a multishot's.
#[derive(Default)]
pub(crate) struct Ops {
    slab: Slab<(u32, OpKind)>,
    gen: u32,
}

/// `user_data` of cancel requests and fixed-slot closes: their CQEs carry
/// nothing we own. No op has it (bit 63 is clear in theirs) and no
/// multishot either (its kind bits are never `11`).
pub(crate) const UNTRACKED_UD: u64 = u64::MAX;

impl Ops {
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    fn insert(&mut self, op: OpKind) -> u64 {
        self.gen = if self.gen >= (1 << 31) - 1 {
            0
        } else {
            self.gen + 1
        };
        let key = self.slab.insert((self.gen, op));
        assert!(key < u32::MAX as usize, "op table exceeds 2^32 entries");
        (u64::from(self.gen) << 32) | key as u64
    }

    fn split(ud: u64) -> (usize, u32) {
        ((ud & 0xffff_ffff) as usize, (ud >> 32) as u32)
    }

    pub(crate) fn get(&self, ud: u64) -> Option<&OpKind> {
        let (key, gen) = Ops::split(ud);
        self.slab
            .get(key)
            .filter(|(g, _)| *g == gen)
            .map(|(_, op)| op)
    }

    /// The op's last CQE arrived: hand back what it owned (O1). Called only
    /// for a CQE without `IORING_CQE_F_MORE`, or when its SQE never reached
    /// the queue.
    pub(crate) fn finish(&mut self, ud: u64) -> Option<OpKind> {
        let (key, gen) = Ops::split(ud);
        if self.slab.get(key).is_some_and(|(g, _)| *g == gen) {
            Some(self.slab.remove(key).1)
        } else {
            None
        }
    }
}

/// How an SQE names its descriptor: a plain fd, or a slot of the ring's
/// registered (fixed) file table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Builds `$body` with `$f` bound to the io-uring crate's descriptor type
/// for `$t` (the two are different types, hence a macro).
macro_rules! with_target {
    ($t:expr, |$f:ident| $body:expr) => {
        match $t {
            Target::Fd(fd) => {
                let $f = types::Fd(fd);
                $body
            }
            Target::Fixed(slot) => {
                let $f = types::Fixed(slot);
                $body
            }
        }
    };
}

/// The kinds of SQE this crate submits. Each carries only what is needed to
/// build the SQE; pointers come from the op table (O1), never from callers.
pub(crate) enum Sqe {
    AcceptMulti {
        fd: Target,
    },
    RecvMulti {
        fd: Target,
        bgid: u16,
    },
    PollReadableMulti {
        fd: Target,
    },
    Send {
        fd: Target,
    },
    /// Installs the op's fd into fixed slot `slot`.
    FilesUpdate {
        slot: u32,
    },
    CancelUserData {
        ud: u64,
    },
    CancelFd {
        fd: Target,
    },
    Close {
        fd: Target,
    },
}

/// Who hears about an SQE's completions.
pub(crate) enum Owner {
    /// An op-table entry, which owns what the SQE points into (O1).
    Op(OpKind),
    /// A multishot, named by its `user_data` (see `multishot`); it points
    /// into nothing but the buffer pool.
    Multishot(u64),
    /// Nobody: cancels and fixed-slot closes.
    Untracked,
}

/// Records the op (if any) in the table and pushes its SQE, submitting
/// first if the queue is full. Returns the SQE's `user_data` and how many
/// `io_uring_enter` calls that took (0 or 1).
/// On error the op is removed again and returned to the caller's drop.
pub(crate) fn push(
    uring: &mut IoUring,
    ops: &mut Ops,
    owner: Owner,
    sqe: Sqe,
) -> std::io::Result<(u64, u32)> {
    let (ud, tracked) = match owner {
        Owner::Op(op) => (ops.insert(op), true),
        Owner::Multishot(ud) => (ud, false),
        Owner::Untracked => (UNTRACKED_UD, false),
    };
    let entry = match sqe {
        Sqe::AcceptMulti { fd } => with_target!(fd, |f| io_uring::opcode::AcceptMulti::new(f)
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()),
        Sqe::RecvMulti { fd, bgid } => {
            with_target!(fd, |f| io_uring::opcode::RecvMulti::new(f, bgid).build())
        }
        Sqe::PollReadableMulti { fd } => with_target!(fd, |f| io_uring::opcode::PollAdd::new(
            f,
            libc::POLLIN as u32
        )
        .multi(true)
        .build()),
        Sqe::Send { fd } => {
            let Some(OpKind::Send { data, .. }) = ops.get(ud) else {
                unreachable!("a send SQE is pushed with its send op");
            };
            let bytes = data.remaining();
            with_target!(fd, |f| io_uring::opcode::Send::new(
                f,
                bytes.as_ptr(),
                bytes.len() as u32
            )
            .flags(libc::MSG_NOSIGNAL)
            .build())
        }
        Sqe::FilesUpdate { slot } => {
            let Some(OpKind::FilesUpdate { fds }) = ops.get(ud) else {
                unreachable!("a files-update SQE is pushed with its op");
            };
            io_uring::opcode::FilesUpdate::new(fds.as_ptr(), 1)
                .offset(slot as i32)
                .build()
        }
        Sqe::CancelUserData { ud } => {
            io_uring::opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ud).all()).build()
        }
        Sqe::CancelFd { fd } => with_target!(fd, |f| io_uring::opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(f).all()
        )
        .build()),
        Sqe::Close { fd } => with_target!(fd, |f| io_uring::opcode::Close::new(f).build()),
    }
    .user_data(ud);
    let mut enters = 0;
    loop {
        // SAFETY: the entry's only pointers are a send's, into `SendData`
        // held by the op table under key `ud` (O1), and a files update's,
        // into its boxed one-fd array held the same way (the kernel copies
        // it at issue; the box lives until the CQE anyway). The send's heap
        // bytes (`Arc<[u8]>` or `Box<[u8]>`, never mutated or reallocated
        // while held) stay put until `Ops::finish(ud)` on the final CQE, and
        // `Ring::drop` waits for all final CQEs. `SendData::remaining` is
        // ≤ u32::MAX bytes (clamped in `SendData`'s constructors), so the
        // length cast is exact. Fds and fixed slots in the SQE belong to the
        // ring's fd table, which keeps each open (and its slot filled) until
        // every op on it has finished (`Ring::close`), so the SQE never names
        // a closed or reused descriptor. Accept/recv/poll/cancel/close carry
        // no user pointers; the recv's buffer comes from the registered pool
        // (P1).
        let pushed = unsafe { uring.submission().push(&entry) };
        if pushed.is_ok() {
            return Ok((ud, enters));
        }
        if let Err(e) = uring.submit() {
            if tracked {
                ops.finish(ud);
            }
            return Err(e);
        }
        enters += 1;
    }
}

/// Takes ownership of the fd a multishot accept CQE reports.
pub(crate) fn accepted_fd(res: i32) -> OwnedFd {
    assert!(res >= 0, "accept CQE result is an fd");
    // SAFETY: a non-negative accept CQE result is a new descriptor the kernel
    // just installed in our fd table for this CQE alone (we do not use direct
    // descriptors), so nothing else owns or will close it.
    unsafe { OwnedFd::from_raw_fd(res) }
}

/// Sets `TCP_DEFER_ACCEPT` on a TCP socket before it listens: the kernel
/// then completes an accept only once the client's first bytes have
/// arrived, or once about `secs` seconds are over (rounded up to its SYN-ACK
/// retransmission schedule; 0 turns it off). socket2, rustix and nix (the
/// crates in use) expose no setter for this option.
pub fn set_tcp_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("the size of a c_int fits a socklen_t");
    // SAFETY: `fd` is borrowed for the whole call, so it names an open
    // descriptor; `optval` points to `value`, a live `c_int` on this frame,
    // and `optlen` is exactly its size: the kernel reads those bytes during
    // the call and keeps no pointer to them.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
