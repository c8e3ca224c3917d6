//! The one publish path. A publish to a topic (a user's reserved topic
//! included) or a broadcast, whoever sent it — a client, the admin API,
//! another node through the cluster bridge — goes through [`publish`]: it
//! counts the publish and hands it to the other nodes (unless it came from
//! one), numbers it when the topic keeps history, builds the text and
//! encodes it once, picks the workers that need it, and queues it for them.
//!
//! Only where it comes from changes the path ([`Origin`]): a worker's own
//! subscribers get a client's publish from the worker itself (returned as
//! [`LocalPart`]), the admin API never waits for room in an inbox, the
//! bridge may wait a little.

use std::sync::Arc;
use std::time::Duration;

use super::frame::OutFrame;
use super::ticket::Ticket;
use super::{text, users, Hub};

/// Where a publish comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of worker `w`. The worker delivers its own part itself
    /// (after the read that carried the publish), so it gets no inbox
    /// message; never waits for room (a worker must not block).
    Worker(usize),
    /// The admin API: one thread serves every admin request, so it never
    /// waits for room either.
    Admin,
    /// Another node, through the cluster bridge: not sent back to the
    /// cluster, not counted as a publish accepted here; waits up to `wait`
    /// for room in a full inbox.
    Cluster { wait: Duration },
}

/// One publish (`topic` Some) or broadcast (None).
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub topic: Option<&'a str>,
    /// The JSON payload, as sent.
    pub payload: &'a [u8],
    pub origin: Origin,
}

/// The part a publishing worker delivers to its own connections.
#[derive(Debug)]
pub struct LocalPart {
    pub frame: Arc<OutFrame>,
    /// The topic (its subscribers are looked up at delivery); None for a
    /// broadcast.
    pub topic: Option<Arc<str>>,
    /// The ticket this part reports its count on, if one was made.
    pub ticket: Option<Arc<Ticket>>,
}

/// What a publish did on this node.
#[derive(Debug)]
pub struct Published {
    /// Handed to the cluster's history holder: it is numbered there and
    /// delivered everywhere, here too, when it comes back (`parts` is 0).
    pub queued: bool,
    /// Workers it went to, the publishing worker's own part included (the
    /// number of parts of its ticket); 0: nobody here to deliver to.
    pub parts: usize,
    /// [`Origin::Worker`]: the part that worker delivers itself, when it
    /// has readers of its own. Never set for a topic with history: every
    /// worker, the publisher's too, then gets it through its inbox, in
    /// offset order (see [`Hub::publish_with_history`]).
    pub local: Option<LocalPart>,
}

/// Publishes to every reader on this node and hands the publish to the
/// other nodes. `ticket` is called with the number of workers it goes to
/// (when there is any) and returns what counts their deliveries. A worker
/// whose inbox is full drops its part, counts it
/// (`wsgate_inbox_full_drops_total`) and reports 0 on the ticket.
pub fn publish(
    hub: &Hub,
    msg: Publish<'_>,
    ticket: impl FnOnce(usize) -> Option<Arc<Ticket>>,
) -> Published {
    let Publish {
        topic,
        payload,
        origin,
    } = msg;
    let (own, wait) = match origin {
        Origin::Worker(w) => (Some(w), None),
        Origin::Admin => (None, None),
        Origin::Cluster { wait } => (None, Some(wait)),
    };
    let history = match (&hub.history, topic) {
        // Users' reserved topics (and those a rule exempts) keep none.
        (Some(h), Some(t)) if h.keeps(t) => Some((h, t)),
        _ => None,
    };
    let holder = history.and_then(|(h, t)| Some((h.cluster()?, t)));
    if let Some((holder, t)) = holder {
        if !matches!(origin, Origin::Cluster { .. }) {
            // The holder numbers it and sends it to every node, this one
            // included: nothing is delivered or forwarded from here.
            hub.publishes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            holder.publish(t, payload);
            return Published {
                queued: true,
                parts: 0,
                local: None,
            };
        }
    }
    if !matches!(origin, Origin::Cluster { .. }) {
        hub.published(topic, payload);
    }
    if let Some((h, t)) = history {
        let parts = hub.publish_with_history(h, t, payload, ticket);
        return Published {
            queued: false,
            parts,
            local: None,
        };
    }
    let (targets, text) = match topic {
        Some(t) => (
            hub.directory.workers_for(t),
            users::message_text(t, payload),
        ),
        None => (hub.all_workers(), text::broadcast_text(payload)),
    };
    if targets.is_empty() {
        return Published {
            queued: false,
            parts: 0,
            local: None,
        };
    }
    let parts = targets.len();
    let frame = OutFrame::text(&text);
    let ticket = ticket(parts);
    let name: Option<Arc<str>> = topic.map(Arc::from);
    hub.dispatch(targets, own, name.as_ref(), &frame, ticket.as_ref(), wait);
    let local = own.filter(|w| targets.contains(*w)).map(|_| LocalPart {
        frame,
        topic: name,
        ticket,
    });
    Published {
        queued: false,
        parts,
        local,
    }
}
