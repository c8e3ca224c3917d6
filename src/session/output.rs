//! A session's output: writing replies and fan-out to the peer, queueing
//! what it refuses, backpressure on its input, and the slow-consumer cut.
//!
//! Replies are produced into the worker's shared buffer and written straight
//! from it; only what the peer refuses is copied into the session's
//! [`WriteQueue`], so a connection that keeps up owns no output buffer.
//! Fan-out frames are written by reference (one vectored write carries all
//! of a turn's frames for a connection) and queued by reference.

use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use crate::protocol::CloseCode;
use crate::pubsub::fanout::Delivered;
use crate::stats::WorkerStats;

use super::write_queue::{write_or_queue, Chunk};
use super::{Now, Phase, Session, SessionConfig};

/// Most slices in one vectored write of fan-out frames.
const MAX_IOV: usize = 64;

/// Where a session's bytes go: a non-blocking byte stream whose write side
/// can be shut down (a TCP socket, or a simulated pipe in tests).
/// `WouldBlock` means "full for now"; any other error ends the connection.
pub trait Sink: Write {
    /// Sends FIN: nothing more will be written.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Takes a whole encode-once frame by reference, when this sink can
    /// keep one (an io_uring sink queues the `Arc` itself: no copy, one
    /// frame shared by every subscriber's send). `None`: it takes bytes only
    /// (use `write`); `Some(Ok(false))`: full for now, nothing taken.
    fn write_shared(&mut self, _frame: &Arc<[u8]>) -> Option<io::Result<bool>> {
        None
    }
}

/// What the caller does after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Wait for more input, a writable peer, or the deadline.
    Keep,
    /// Backpressure eased: read the peer again (input may have piled up
    /// while reading was paused, and no new readiness edge will say so).
    ResumeReading,
    /// The connection is over (close handshake done, or the peer gone and
    /// everything owed to it written): drop it now.
    Close,
}

impl Session {
    /// Writes `out` (replies this session produced, whole frames or an HTTP
    /// response) after anything already queued, queues what `sink` refuses,
    /// and clears `out`. Then applies the close rules (FIN once our close
    /// frame is out; done once both sides closed) and backpressure (reading
    /// pauses while more than `--max-outbound-bytes` is queued and resumes
    /// at half of it, so it does not flap on every write). An error means
    /// the peer is gone: drop the connection.
    pub fn write_to<S: Sink>(
        &mut self,
        out: &mut Vec<u8>,
        sink: &mut S,
        config: &SessionConfig,
        stats: &WorkerStats,
    ) -> io::Result<AfterWrite> {
        let queued_before = self.queued_bytes();
        let result = write_or_queue(&mut self.wq, sink, out);
        out.clear();
        track_queued(stats, queued_before, self.queued_bytes());
        stats.bytes_out.add(result? as u64);
        if self.is_done() {
            // Both close frames are exchanged and ours is out: the server
            // closes the TCP connection first (RFC 6455 §7.1.1).
            return Ok(AfterWrite::Close);
        }
        if let Phase::Closing {
            write_shut: false,
            peer_closed,
        } = self.phase
        {
            if self.wq.is_none() {
                // Everything including our close frame is out: send FIN and
                // wait for the peer's close frame or FIN.
                sink.shutdown_write()?;
                self.phase = Phase::Closing {
                    write_shut: true,
                    peer_closed,
                };
            }
        }
        // Backpressure: a client that sends faster than it reads is not read
        // from while its replies exceed the cap; TCP pushes back on it. A
        // FIN seen while replies are still queued drains them (`on_eof`).
        let queued = self.queued_bytes();
        let cap = config.max_outbound_bytes;
        if queued > cap {
            self.read_paused = true;
        } else if self.read_paused && queued <= cap / 2 {
            self.read_paused = false;
            return Ok(AfterWrite::ResumeReading);
        }
        Ok(AfterWrite::Keep)
    }

    /// Writes fan-out frames after anything already queued: straight to the
    /// peer with one vectored write when nothing is queued, queueing (by
    /// reference) whatever it refuses. A subscriber left with more than
    /// [`SessionConfig::slow_consumer_bytes`] queued is cut: see
    /// [`Session::cut_slow_consumer`]. `out` must be empty (it carries the
    /// close frame of a cut).
    pub fn deliver<'a, S: Sink>(
        &mut self,
        frames: impl Iterator<Item = &'a Arc<[u8]>> + Clone,
        sink: &mut S,
        out: &mut Vec<u8>,
        now: Now,
        config: &SessionConfig,
        stats: &WorkerStats,
    ) -> Delivered {
        if self.phase != Phase::Open {
            return Delivered::NotOpen;
        }
        let queued_before = self.queued_bytes();
        self.last_activity = now.tick;
        match self.write_frames(frames, sink) {
            Ok(n) => stats.bytes_out.add(n as u64),
            Err(_) => return Delivered::Gone,
        }
        track_queued(stats, queued_before, self.queued_bytes());
        if self.queued_bytes() <= config.slow_consumer_bytes {
            return Delivered::Queued;
        }
        match self.cut_slow_consumer(sink, out, now, config, stats) {
            Ok(AfterWrite::Close) | Err(_) => Delivered::Gone,
            Ok(_) => Delivered::Cut,
        }
    }

    /// A subscriber that stopped reading: its queue is freed at once and it
    /// is closed with 1008, so it cannot grow the server's memory. The rest
    /// of a frame already half sent (direct reply or fan-out) is kept:
    /// cutting it would put the close frame inside its payload (RFC 6455
    /// §5.2, §5.4). What stays is at most one frame, then the close frame.
    pub fn cut_slow_consumer<S: Sink>(
        &mut self,
        sink: &mut S,
        out: &mut Vec<u8>,
        now: Now,
        config: &SessionConfig,
        stats: &WorkerStats,
    ) -> io::Result<AfterWrite> {
        stats.slow_consumers.inc();
        tracing::debug!(queued = self.queued_bytes(), "slow consumer");
        if let Some(wq) = self.wq.as_mut() {
            let dropped = wq.drop_unstarted();
            stats.queued_bytes.sub(dropped as u64);
            if wq.is_empty() {
                self.wq = None;
            }
        }
        self.start_close(
            CloseCode::POLICY_VIOLATION,
            "slow consumer",
            out,
            now,
            config,
        );
        self.write_to(out, sink, config, stats)
    }

    /// The fan-out write itself. Returns the bytes written.
    fn write_frames<'a, S: Sink>(
        &mut self,
        frames: impl Iterator<Item = &'a Arc<[u8]>> + Clone,
        sink: &mut S,
    ) -> io::Result<usize> {
        let mut written = 0;
        let mut rest = frames.clone();
        if self.wq.is_none() {
            // One frame goes by reference; several go as one vectored
            // write (one send for the lot instead of one per frame).
            let one = frames.clone().nth(1).is_none();
            if let Some(taken) = one.then(|| write_shared(frames.clone(), sink)).flatten() {
                // Whole frames only: the rest starts on a frame boundary.
                let (n, count) = taken?;
                let wq_rest: Vec<_> = frames.clone().skip(count).collect();
                if !wq_rest.is_empty() {
                    let wq = self.wq.get_or_insert_with(Default::default);
                    for f in wq_rest {
                        wq.push(Chunk::Shared(f.clone()));
                    }
                }
                return Ok(n);
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut total = 0;
            for f in frames.clone().take(MAX_IOV) {
                slices[n] = IoSlice::new(f);
                n += 1;
                total += f.len();
            }
            loop {
                // One sendmsg for the socket sink.
                match sink.write_vectored(&slices[..n]) {
                    Ok(w) => {
                        written = w;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if written == total && frames.clone().nth(MAX_IOV).is_none() {
                return Ok(written);
            }
            // Skip what went out; queue the rest.
            let mut skip = written;
            let wq = self.wq.get_or_insert_with(Default::default);
            for f in rest.by_ref() {
                if skip >= f.len() {
                    skip -= f.len();
                    continue;
                }
                if skip > 0 {
                    wq.push_partial(f.clone(), skip);
                    skip = 0;
                } else {
                    wq.push(Chunk::Shared(f.clone()));
                }
            }
        } else if let Some(wq) = self.wq.as_mut() {
            for f in rest {
                wq.push(Chunk::Shared(f.clone()));
            }
        }
        let more = match self.wq.as_mut() {
            Some(q) => q.write_to(sink)?,
            None => 0,
        };
        if self.wq.as_ref().is_some_and(|q| q.is_empty()) {
            self.wq = None;
        }
        Ok(written + more)
    }
}

/// Hands whole frames to a sink that keeps them by reference, until it is
/// full. `None` if the sink takes bytes only. Returns the bytes and the
/// number of frames taken.
fn write_shared<'a, S: Sink>(
    frames: impl Iterator<Item = &'a Arc<[u8]>>,
    sink: &mut S,
) -> Option<io::Result<(usize, usize)>> {
    let (mut n, mut count) = (0, 0);
    for f in frames {
        match sink.write_shared(f) {
            None if count == 0 => return None,
            None | Some(Ok(false)) => break,
            Some(Ok(true)) => {
                n += f.len();
                count += 1;
            }
            Some(Err(e)) => return Some(Err(e)),
        }
    }
    Some(Ok((n, count)))
}

/// Moves the worker's queued-bytes gauge by one connection's change.
fn track_queued(stats: &WorkerStats, before: usize, after: usize) {
    if after >= before {
        stats.queued_bytes.add((after - before) as u64);
    } else {
        stats.queued_bytes.sub((before - after) as u64);
    }
}
