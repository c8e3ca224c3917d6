//! One worker's local fan-out: deliveries from its inbox (other workers'
//! publishes, admin and cluster messages, replies from the offload thread)
//! and its own connections' publishes and broadcasts, batched per loop turn
//! into the [`Outbox`] and written with one vectored write per connection.
//! It also owns the `broadcastResult`s that wait for other workers' counts.
//!
//! The worker owns the connections; fan-out reaches them only through the
//! [`Connections`] trait (is this key open, deliver these frames), so this
//! module knows nothing of sockets or sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use slab::Slab;

use super::history::{Resumed, Seq};
use super::outbox::{FramesFor, Outbox};
use super::topics::LocalTopics;
use super::{Delivery, Hub, Notify, OutFrame, Ticket, WorkerMsg};

/// Inbox messages handled per call before serving sockets again.
const INBOX_BATCH: usize = 4096;
/// Longest one inbox drain runs before serving sockets again: a batch of
/// broadcasts to a large local crowd is millions of deliveries, and an
/// event loop that sends only between turns (io_uring) must not hold them
/// all back until the batch is done. Checked every [`INBOX_CHECK_EVERY`]
/// messages.
const INBOX_TURN_BUDGET: Duration = Duration::from_millis(20);
const INBOX_CHECK_EVERY: usize = 16;
/// How often unfinished broadcast results are re-checked (covers a
/// completion notice lost to a full inbox).
const PENDING_CHECK: Duration = Duration::from_millis(50);

/// What became of one connection's share of a turn's fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Written, or queued behind what the peer has not read yet.
    Queued,
    /// Too much was queued: the connection was cut as a slow consumer (its
    /// close frame follows the frame in flight, if any).
    Cut,
    /// Not an open connection (closing, or gone): nothing was sent.
    NotOpen,
    /// Writing failed or the connection finished: the implementer closes
    /// it once the fan-out call returns.
    Gone,
}

/// A worker's connections, as fan-out sees them.
pub trait Connections {
    /// Whether `key` is an open connection (and, given `serial`, still the
    /// one that asked: a slot can be reused while an answer is made).
    fn is_open(&self, key: usize, serial: Option<u32>) -> bool;
    /// Calls `f` with the key of every open connection.
    fn each_open(&self, f: impl FnMut(usize));
    /// Writes `frames`, all of this turn's fan-out for `key`, in order.
    fn deliver(&mut self, key: usize, frames: FramesFor<'_>) -> Delivered;
    /// Writes the replies of the connection being read, before a batch is
    /// flushed in the middle of its read (they were produced first).
    fn flush_replies(&mut self);
    /// A watchdog probe arrived through the inbox.
    fn probed(&mut self);
    /// Longest one inbox drain runs, when the loop wants it shorter than
    /// [`INBOX_TURN_BUDGET`]: the io_uring loop hands sends to the kernel
    /// only between turns, so its subscribers' frames wait in user memory
    /// for as long as a drain runs.
    fn inbox_budget(&self) -> Option<Duration> {
        None
    }
}

/// What the inbox asked of the worker itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxControl {
    /// Nothing: carry on.
    None,
    /// Stop accepting and drain (the rest of the inbox is read next turn).
    Shutdown,
}

/// A `broadcastResult` waiting for the other workers' counts.
#[derive(Debug)]
pub struct PendingResult {
    pub conn: u32,
    pub serial: u32,
    pub payload: Box<[u8]>,
    pub ticket: Arc<Ticket>,
}

/// A publish or broadcast whose local part the worker still has to deliver.
#[derive(Debug)]
pub struct LocalBroadcast {
    pub frame: Arc<OutFrame>,
    /// The topic of a publish (looked up again when delivered: the
    /// subscribers are those at delivery time); None for a broadcast.
    pub topic: Option<Arc<str>>,
    pub ticket: Option<Arc<Ticket>>,
    /// Only for this connection (a resume's replay), not a fan-out.
    pub only: Option<u32>,
}

/// One worker's fan-out state.
pub struct LocalFanout {
    worker: usize,
    hub: Arc<Hub>,
    inbox: Receiver<WorkerMsg>,
    /// This worker's topic → subscriber table (the app joins and leaves).
    pub topics: LocalTopics,
    pub outbox: Outbox,
    /// `broadcastResult`s waiting for other workers.
    pub pending: Slab<PendingResult>,
    /// The local part of what the connection being read just published.
    pub broadcasts: Vec<LocalBroadcast>,
    pending_check_at: Option<Instant>,
    /// The inbox had more than one batch: drain again without sleeping.
    inbox_more: bool,
    /// Batches written within a turn because they grew past their bound.
    early_flushes: u64,
}

impl LocalFanout {
    pub fn new(worker: usize, hub: Arc<Hub>, inbox: Receiver<WorkerMsg>) -> LocalFanout {
        LocalFanout {
            worker,
            hub,
            inbox,
            topics: LocalTopics::default(),
            outbox: Outbox::default(),
            pending: Slab::new(),
            broadcasts: Vec::new(),
            pending_check_at: None,
            inbox_more: false,
            early_flushes: 0,
        }
    }

    /// The inbox holds more than was handled: poll without sleeping.
    pub fn inbox_more(&self) -> bool {
        self.inbox_more
    }

    /// When unfinished broadcast results are next re-checked.
    pub fn next_check(&self) -> Option<Instant> {
        self.pending_check_at
    }

    /// Early flushes since the last call (for the worker's counter).
    pub fn take_early_flushes(&mut self) -> u64 {
        std::mem::take(&mut self.early_flushes)
    }

    /// Handles up to one batch of inbox messages.
    pub fn drain_inbox(&mut self, conns: &mut impl Connections) -> InboxControl {
        // Clear the wake flag first: anything sent after this point either
        // is seen below or wakes us again.
        self.hub.clear_wake(self.worker);
        self.inbox_more = false;
        let started = Instant::now();
        let budget = conns.inbox_budget().unwrap_or(INBOX_TURN_BUDGET);
        for i in 0..INBOX_BATCH {
            if i % INBOX_CHECK_EVERY == INBOX_CHECK_EVERY - 1 && started.elapsed() >= budget {
                break;
            }
            let Ok(msg) = self.inbox.try_recv() else {
                return InboxControl::None;
            };
            match msg {
                WorkerMsg::DeliverAt(d, seq) => {
                    self.deliver_from_inbox(conns, *d, Some(seq));
                    self.flush_if_heavy(conns);
                }
                WorkerMsg::Deliver(d) => {
                    self.deliver_from_inbox(conns, d, None);
                    self.flush_if_heavy(conns);
                }
                WorkerMsg::TicketDone { pending } => self.complete_pending(conns, pending),
                WorkerMsg::Resumed(r) => {
                    if conns.is_open(r.conn as usize, Some(r.serial)) {
                        finish_resume(&mut self.topics, &mut self.outbox, *r);
                    }
                }
                WorkerMsg::Reply {
                    conn,
                    serial,
                    frame,
                } => {
                    // The connection may have closed, and its slot been
                    // reused, while the answer was made.
                    if conns.is_open(conn as usize, Some(serial)) {
                        let f = self.outbox.add_frame(frame);
                        self.outbox.push(conn as usize, f);
                    }
                }
                WorkerMsg::Shutdown => {
                    // What follows is read after the worker said goodbye.
                    self.inbox_more = true;
                    return InboxControl::Shutdown;
                }
                WorkerMsg::Probe => conns.probed(),
                #[cfg(debug_assertions)]
                WorkerMsg::DebugPanic => panic!("debug: worker {} dies", self.worker),
            }
        }
        // Batch (or its time) used up: come back after serving sockets.
        self.inbox_more = true;
        InboxControl::None
    }

    /// A publish or broadcast from another thread, for our connections.
    fn deliver_from_inbox(&mut self, conns: &mut impl Connections, d: Delivery, seq: Option<Seq>) {
        let count = match &d.topic {
            Some(topic) => match self.topics.id_of(topic) {
                Some(id) => deliver_to_topic(&mut self.topics, &mut self.outbox, id, d.frame, seq),
                None => 0,
            },
            None => self.deliver_to_all(conns, d.frame),
        };
        if let Some(t) = d.ticket {
            if self.hub.part_done(&t, count, Some(self.worker)) {
                if let Notify::Worker { pending, .. } = t.notify {
                    self.complete_pending(conns, pending);
                }
            }
        }
    }

    /// Queues `frame` for every open connection; returns how many.
    fn deliver_to_all(&mut self, conns: &impl Connections, frame: Arc<OutFrame>) -> u64 {
        let f = self.outbox.add_frame(frame);
        let outbox = &mut self.outbox;
        let mut n = 0;
        conns.each_open(|key| {
            outbox.push(key, f);
            n += 1;
        });
        n
    }

    /// The local part of publishes and broadcasts that the connection being
    /// read just sent. The batch is written out whenever it gets heavy, so
    /// one read full of tiny broadcasts costs a bounded arena, not one link
    /// per message per connection.
    pub fn deliver_local_broadcasts(&mut self, conns: &mut impl Connections, now: Instant) {
        let mut list = std::mem::take(&mut self.broadcasts);
        for b in list.drain(..) {
            if self.outbox.is_heavy() {
                // The reader's replies go before the batch (whose slow
                // consumers get their close frames through the same buffer).
                conns.flush_replies();
                self.flush_early(conns);
            }
            if let Some(conn) = b.only {
                // A resume's replay, for its connection alone.
                if conns.is_open(conn as usize, None) {
                    let f = self.outbox.add_frame(b.frame);
                    self.outbox.push(conn as usize, f);
                }
                continue;
            }
            let count = match &b.topic {
                Some(name) => match self.topics.id_of(name) {
                    Some(id) => {
                        deliver_to_topic(&mut self.topics, &mut self.outbox, id, b.frame, None)
                    }
                    None => 0,
                },
                None => self.deliver_to_all(conns, b.frame),
            };
            if let Some(t) = b.ticket {
                if self.hub.part_done(&t, count, Some(self.worker)) {
                    if let Notify::Worker { pending, .. } = t.notify {
                        self.complete_pending(conns, pending);
                    }
                } else if self.pending_check_at.is_none() {
                    self.pending_check_at = Some(now + PENDING_CHECK);
                }
            }
        }
        self.broadcasts = list;
    }

    /// Queues `broadcastResult` for a finished broadcast to its sender.
    fn complete_pending(&mut self, conns: &impl Connections, id: usize) {
        if !self.pending.get(id).is_some_and(|p| p.ticket.is_done()) {
            return;
        }
        let p = self.pending.remove(id);
        if conns.is_open(p.conn as usize, Some(p.serial)) {
            let f = self.outbox.add_frame(broadcast_result_frame(&p));
            self.outbox.push(p.conn as usize, f);
        }
    }

    /// Re-checks unfinished broadcast results when their time has come.
    pub fn check_pending(&mut self, conns: &impl Connections, now: Instant) {
        let Some(at) = self.pending_check_at else {
            return;
        };
        if now < at {
            return;
        }
        let done: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.ticket.is_done())
            .map(|(k, _)| k)
            .collect();
        for id in done {
            self.complete_pending(conns, id);
        }
        self.pending_check_at = (!self.pending.is_empty()).then(|| now + PENDING_CHECK);
    }

    fn flush_if_heavy(&mut self, conns: &mut impl Connections) {
        if self.outbox.is_heavy() {
            self.flush_early(conns);
        }
    }

    /// Writes the batch within the turn because it grew past its bound.
    fn flush_early(&mut self, conns: &mut impl Connections) {
        self.early_flushes += 1;
        self.flush(conns);
    }

    /// Writes the batch: each connection gets every frame queued for it in
    /// one call to [`Connections::deliver`].
    pub fn flush(&mut self, conns: &mut impl Connections) {
        if self.outbox.is_empty() {
            return;
        }
        for &key in self.outbox.dirty() {
            conns.deliver(key as usize, self.outbox.frames_for(key as usize));
        }
        self.outbox.clear();
    }

    /// End of a loop turn: lets the batch arena shrink after a burst.
    pub fn end_turn(&mut self) {
        self.outbox.end_turn();
    }
}

/// Queues `frame` for every local subscriber of topic `id` (but those whose
/// replay already held the message at `seq`); returns how many.
pub fn deliver_to_topic(
    topics: &mut LocalTopics,
    outbox: &mut Outbox,
    id: u32,
    frame: Arc<OutFrame>,
    seq: Option<Seq>,
) -> u64 {
    let Some(topic) = topics.get_mut(id) else {
        return 0;
    };
    if topic.subscribers.is_empty() {
        return 0;
    }
    let f = outbox.add_frame(frame);
    if topic.fences.is_empty() {
        for &conn in &topic.subscribers {
            outbox.push(conn as usize, f);
        }
        return topic.subscribers.len() as u64;
    }
    let subscribers = &topic.subscribers;
    let mut fences = std::mem::take(&mut topic.fences);
    // A held subscriber (cluster resume under way) gets nothing yet; other
    // fences go away with the first message past them.
    fences.retain(|(_, fence)| {
        fence.is_hold() || seq.is_some_and(|s| fence.gen == s.gen && fence.offset >= s.offset)
    });
    let mut n = 0;
    for &conn in subscribers {
        if !fences.iter().any(|(c, _)| *c == conn) {
            outbox.push(conn as usize, f);
            n += 1;
        }
    }
    topic.fences = fences;
    n
}

/// A cluster resume's answer reached the subscriber's worker: if the
/// connection's hold `r.token` on topic `r.topic` is still there, release it at `r.fence` and send
/// it the reply and the replay (before any live message after the fence,
/// which follows in the inbox).
pub fn finish_resume(topics: &mut LocalTopics, outbox: &mut Outbox, r: Resumed) {
    let Some(topic) = topics.id_of(&r.topic).and_then(|id| topics.get_mut(id)) else {
        return;
    };
    let Some(pos) = topic
        .fences
        .iter()
        .position(|(c, f)| *c == r.conn && *f == Seq::hold(r.token))
    else {
        return;
    };
    match r.fence {
        Some(seq) => topic.fences[pos].1 = seq,
        None => {
            topic.fences.swap_remove(pos);
        }
    }
    for frame in r.frames {
        let f = outbox.add_frame(frame);
        outbox.push(r.conn as usize, f);
    }
}

/// The `broadcastResult` frame for a finished broadcast.
pub fn broadcast_result_frame(pending: &PendingResult) -> Arc<OutFrame> {
    OutFrame::text(&super::text::broadcast_result_text(
        &pending.payload,
        pending.ticket.delivered(),
    ))
}
