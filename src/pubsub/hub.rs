//! How deliveries travel between threads: one bounded crossbeam inbox per
//! worker, woken through its [`Wake`] (the epoll loop's `mio::Waker`, or the
//! io_uring loop's socket), with wake-ups coalesced so a burst of messages
//! costs one wake.
//!
//! Shared by every worker, the admin thread and the cluster bridge threads.
//! Senders never block a worker: a worker-to-worker send into a full inbox is
//! dropped and counted (blocking could deadlock two workers feeding each
//! other). Threads that are not workers may wait, with a timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use crossbeam_utils::CachePadded;
use mio::Waker;

/// How another thread wakes a worker's event loop after queueing into its
/// inbox. Each loop brings its own (epoll: `mio::Waker`; io_uring: a socket
/// the ring watches).
pub trait Wake: Send + Sync {
    fn wake(&self) -> std::io::Result<()>;
}

impl Wake for Waker {
    fn wake(&self) -> std::io::Result<()> {
        Waker::wake(self)
    }
}

use super::budget::TopicBudget;
use super::directory::{TopicDirectory, WorkerSet};
use super::frame::OutFrame;
use super::history::{History, Seq};
use super::offload::Offload;
use super::presence::LocalPresence;
use super::ticket::{Notify, Ticket};
use super::uplink::Uplink;

/// Messages a worker receives from other threads.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Write `frame` to the local subscribers of `topic` (or to every open
    /// connection when `topic` is None) and report the count on `ticket`.
    Deliver(Delivery),
    /// A message of a topic with history, at its position (boxed so the
    /// inbox slots of every worker stay as small as without history).
    DeliverAt(Box<Delivery>, Seq),
    /// A cluster resume's answer (see [`super::history::Resumed`]).
    Resumed(Box<super::history::Resumed>),
    /// A `broadcastResult` this worker is waiting for can be sent.
    TicketDone { pending: usize },
    /// A reply made off the event loop (a client's presence question) for
    /// connection `conn`, if it is still the one with `serial`.
    Reply {
        conn: u32,
        serial: u32,
        frame: Arc<OutFrame>,
    },
    /// Stop accepting, close every connection with 1001, drain, exit.
    Shutdown,
    /// Watchdog probe: the worker counts it, proving its loop still turns.
    Probe,
    /// Debug builds: panic in the event loop, outside any connection's
    /// processing (tests of worker-death reporting).
    #[cfg(debug_assertions)]
    DebugPanic,
}

#[derive(Debug)]
pub struct Delivery {
    pub topic: Option<Arc<str>>,
    pub frame: Arc<OutFrame>,
    pub ticket: Option<Arc<Ticket>>,
}

struct Link {
    inbox: Sender<WorkerMsg>,
    waker: Arc<dyn Wake>,
    /// Set by the first sender of a burst, cleared by the worker before it
    /// drains: one wake (one eventfd write) per burst.
    wake_pending: AtomicBool,
}

/// The shared switchboard between threads and workers.
pub struct Hub {
    links: Vec<CachePadded<Link>>,
    pub directory: TopicDirectory,
    /// Deliveries dropped because a worker's inbox was full.
    pub inbox_full_drops: AtomicU64,
    /// Publishes and broadcasts accepted, from clients and the HTTP API.
    pub publishes: AtomicU64,
    /// The way to the other nodes, when this node is part of a cluster.
    pub uplink: Option<Arc<dyn Uplink>>,
    /// Process-wide caps on subscriptions and topic entries.
    pub topic_budget: TopicBudget,
    /// Subscriptions per topic on this node (`GET /presence`).
    pub presence: LocalPresence,
    /// Presence questions that need Redis, answered off the event loops.
    pub offload: Offload,
    /// Topic history (`--history-size` > 0).
    pub history: Option<History>,
}

impl Hub {
    pub fn new(
        inboxes: Vec<(Sender<WorkerMsg>, Arc<dyn Wake>)>,
        uplink: Option<Arc<dyn Uplink>>,
        topic_budget: TopicBudget,
    ) -> Hub {
        Hub {
            links: inboxes
                .into_iter()
                .map(|(inbox, waker)| {
                    CachePadded::new(Link {
                        inbox,
                        waker,
                        wake_pending: AtomicBool::new(false),
                    })
                })
                .collect(),
            directory: TopicDirectory::default(),
            inbox_full_drops: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            uplink,
            topic_budget,
            presence: LocalPresence::default(),
            offload: Offload::default(),
            history: None,
        }
    }

    /// Turns topic history on.
    pub fn with_history(mut self, history: Option<History>) -> Hub {
        self.history = history;
        self
    }

    /// A publish to a topic with history (see [`super::publish`], its only
    /// caller): takes the next offset, stores the
    /// frame and queues it for *every* worker with subscribers — the
    /// publishing worker too, through its own inbox — while the topic's lock
    /// is held. Every worker's inbox thus receives the topic's messages in
    /// offset order, however many threads publish (delivering the
    /// publisher's own part directly, as topics without history do, could
    /// overtake a smaller offset already waiting in its inbox).
    ///
    /// `ticket` is called with the number of workers the message goes to
    /// (when there is any) and returns what counts their deliveries.
    /// Returns that number. Never waits for room in an inbox (it holds the
    /// topic's lock, which the workers' publishes need): a full inbox drops
    /// the delivery and counts it, as for worker-to-worker sends.
    pub fn publish_with_history(
        &self,
        history: &History,
        topic: &str,
        payload: &[u8],
        ticket: impl FnOnce(usize) -> Option<Arc<Ticket>>,
    ) -> usize {
        let name: Arc<str> = Arc::from(topic);
        history.append(
            topic,
            |offset, epoch| {
                let text = super::text::message_text_at(topic, payload, offset, epoch);
                OutFrame::text(&text)
            },
            |seq, frame| {
                let targets = self.directory.workers_for(topic);
                if targets.is_empty() {
                    return 0;
                }
                let ticket = ticket(targets.len());
                self.dispatch_seq(targets, &name, frame, ticket.as_ref(), seq);
                targets.len()
            },
        )
    }

    pub fn worker_count(&self) -> usize {
        self.links.len()
    }

    pub fn all_workers(&self) -> WorkerSet {
        WorkerSet::all(self.links.len())
    }

    fn wake(&self, worker: usize) {
        let link = &self.links[worker];
        if !link.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = link.waker.wake() {
                tracing::warn!(worker, error = %e, "waking a worker failed");
            }
        }
    }

    /// Messages waiting in worker `w`'s inbox.
    pub fn inbox_depth(&self, w: usize) -> usize {
        self.links.get(w).map_or(0, |l| l.inbox.len())
    }

    /// Counts one accepted publish or broadcast (`topic` None) and hands it
    /// to the uplink for the other nodes (see [`super::publish`], which
    /// delivers it here).
    pub(super) fn published(&self, topic: Option<&str>, payload: &[u8]) {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.uplink {
            c.publish(topic, payload);
        }
    }

    /// Worker `worker` got its first subscriber for `topic`.
    pub fn topic_joined(&self, topic: &str, worker: usize) {
        if self.directory.join(topic, worker) {
            if let Some(c) = &self.uplink {
                c.topic_changed(topic);
            }
        }
    }

    /// Worker `worker` lost its last subscriber for `topic`.
    pub fn topic_left(&self, topic: &str, worker: usize) {
        if self.directory.leave(topic, worker) {
            if let Some(c) = &self.uplink {
                c.topic_changed(topic);
            }
        }
    }

    /// Called by a worker on its wake event, before draining its inbox.
    pub fn clear_wake(&self, worker: usize) {
        self.links[worker]
            .wake_pending
            .store(false, Ordering::Release);
    }

    /// Sends without blocking. On a full inbox the message comes back.
    pub fn try_send(&self, worker: usize, msg: WorkerMsg) -> Result<(), WorkerMsg> {
        match self.links[worker].inbox.try_send(msg) {
            Ok(()) => {
                self.wake(worker);
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Sends, waiting up to `timeout` for room (for non-worker threads).
    pub fn send_timeout(
        &self,
        worker: usize,
        msg: WorkerMsg,
        timeout: Duration,
    ) -> Result<(), WorkerMsg> {
        match self.links[worker].inbox.send_timeout(msg, timeout) {
            Ok(()) => {
                self.wake(worker);
                Ok(())
            }
            Err(SendTimeoutError::Timeout(m)) | Err(SendTimeoutError::Disconnected(m)) => Err(m),
        }
    }

    /// Sends one delivery of `frame` to each worker in `targets` except
    /// `skip`. A delivery that cannot be queued is dropped, counted, and its
    /// ticket part closed with 0 so the ticket still completes.
    /// `wait` is None for workers (never block) and Some for other threads.
    pub fn dispatch(
        &self,
        targets: WorkerSet,
        skip: Option<usize>,
        topic: Option<&Arc<str>>,
        frame: &Arc<OutFrame>,
        ticket: Option<&Arc<Ticket>>,
        wait: Option<Duration>,
    ) {
        for w in targets.iter().filter(|w| Some(*w) != skip) {
            if w >= self.links.len() {
                continue;
            }
            let msg = WorkerMsg::Deliver(Delivery {
                topic: topic.cloned(),
                frame: frame.clone(),
                ticket: ticket.cloned(),
            });
            self.send_delivery(w, msg, ticket, wait);
        }
    }

    /// [`Hub::dispatch`] for a message of a topic with history, to every
    /// worker in `targets`.
    fn dispatch_seq(
        &self,
        targets: WorkerSet,
        topic: &Arc<str>,
        frame: &Arc<OutFrame>,
        ticket: Option<&Arc<Ticket>>,
        seq: Seq,
    ) {
        for w in targets.iter().filter(|w| *w < self.links.len()) {
            let delivery = Delivery {
                topic: Some(topic.clone()),
                frame: frame.clone(),
                ticket: ticket.cloned(),
            };
            let msg = WorkerMsg::DeliverAt(Box::new(delivery), seq);
            self.send_delivery(w, msg, ticket, None);
        }
    }

    fn send_delivery(
        &self,
        w: usize,
        msg: WorkerMsg,
        ticket: Option<&Arc<Ticket>>,
        wait: Option<Duration>,
    ) {
        let sent = match wait {
            None => self.try_send(w, msg),
            Some(t) => self.send_timeout(w, msg, t),
        };
        if sent.is_err() {
            self.inbox_full_drops.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(worker = w, "worker inbox full: delivery dropped");
            if let Some(t) = ticket {
                self.part_done(t, 0, None);
            }
        }
    }

    /// Closes one part of a ticket. If that completes it, notifies the
    /// requester — unless the requester is `by_worker` itself, in which case
    /// this returns true and the caller handles completion inline.
    pub fn part_done(&self, ticket: &Ticket, delivered: u64, by_worker: Option<usize>) -> bool {
        if !ticket.part_done(delivered) {
            return false;
        }
        match &ticket.notify {
            Notify::Channel(tx) => {
                let _ = tx.try_send(ticket.delivered());
                false
            }
            Notify::Worker { worker, .. } if Some(*worker) == by_worker => true,
            Notify::Worker { worker, pending } => {
                // If the owner's inbox is full it finds the finished ticket
                // on its periodic check instead.
                let _ = self.try_send(*worker, WorkerMsg::TicketDone { pending: *pending });
                false
            }
        }
    }
}
