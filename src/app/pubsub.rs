//! The pub/sub app: runs a client's JSON commands against this worker's
//! topic table and the cross-worker hub.
//!
//! Owns the meaning of each command: replies go into the connection's output
//! buffer, topic deliveries into the worker's outbox (resolved to subscriber
//! keys right away), cross-worker deliveries into other workers' inboxes.
//! Broadcasts to this worker's own connections are deferred to the worker,
//! which alone can walk all connections. No sockets here.

use std::sync::Arc;

use slab::Slab;

use crate::app::commands::{self, Command, CommandError};
use crate::protocol::deflate::Replies;
use crate::protocol::{MessageKind, OpCode};
use crate::pubsub::outbox::Outbox;
use crate::pubsub::topics::LocalTopics;
use crate::pubsub::{Hub, Notify, OutFrame, Ticket};
use crate::security::{Grant, Security};

/// Limits of the client protocol.
#[derive(Debug, Clone, Copy)]
pub struct PubSubLimits {
    pub max_topic_bytes: usize,
    pub max_subscriptions: usize,
}

/// A `broadcastResult` waiting for the other workers' counts.
#[derive(Debug)]
pub struct PendingResult {
    pub conn: u32,
    pub serial: u32,
    pub payload: Box<[u8]>,
    pub ticket: Arc<Ticket>,
}

/// A broadcast whose local part the worker still has to deliver.
#[derive(Debug)]
pub struct LocalBroadcast {
    pub frame: u32,
    pub ticket: Option<Arc<Ticket>>,
}

/// One worker's pub/sub state, borrowed by connections while they run
/// commands.
pub struct PubSubCx<'a> {
    pub worker: usize,
    pub hub: &'a Hub,
    pub topics: &'a mut LocalTopics,
    pub outbox: &'a mut Outbox,
    pub pending: &'a mut Slab<PendingResult>,
    pub broadcasts: &'a mut Vec<LocalBroadcast>,
    pub limits: PubSubLimits,
    pub security: &'a Security,
}

/// The connection running the command.
pub struct Caller<'a> {
    pub key: u32,
    pub serial: u32,
    /// Local topic ids this connection joined.
    pub topics: &'a mut Vec<u32>,
    /// Its token's grant, with authentication on.
    pub auth: &'a mut Option<Box<Grant>>,
}

impl Caller<'_> {
    fn may_use(&self, topic: &str) -> bool {
        self.auth.as_ref().is_none_or(|g| g.topics.allows(topic))
    }
}

fn reply(out: &mut Replies<'_>, text: &[u8]) {
    out.message(OpCode::Text, text);
}

/// Runs one message from a client. Returns the number of messages written
/// directly to `out`.
pub fn on_message(
    kind: MessageKind,
    text: &[u8],
    caller: &mut Caller<'_>,
    cx: &mut PubSubCx<'_>,
    out: &mut Replies<'_>,
) {
    if kind == MessageKind::Binary {
        reply(out, &commands::error_text(&CommandError::Binary));
        return;
    }
    let cmd = match commands::parse(text, cx.limits.max_topic_bytes) {
        Ok(c) => c,
        Err(e) => {
            reply(out, &commands::error_text(&e));
            return;
        }
    };
    match cmd {
        Command::Echo => reply(out, text),
        Command::Ping => reply(out, commands::PONG_TEXT),
        Command::Subscribe { topic } if !caller.may_use(&topic) => {
            let e = CommandError::Forbidden("subscribe to", topic.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::Publish { topic, .. } if !caller.may_use(&topic) => {
            let e = CommandError::Forbidden("publish to", topic.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::Refresh { token } => refresh(&token, caller, cx, out),
        Command::Subscribe { topic } => {
            let already = cx
                .topics
                .id_of(&topic)
                .is_some_and(|id| caller.topics.contains(&id));
            if !already && caller.topics.len() >= cx.limits.max_subscriptions {
                let e = CommandError::TooManySubscriptions(cx.limits.max_subscriptions);
                reply(out, &commands::error_text(&e));
                return;
            }
            let joined = cx.topics.join(&topic, caller.key);
            if joined.new_member {
                caller.topics.push(joined.topic_id);
            }
            if joined.first_local {
                cx.hub.topic_joined(&topic, cx.worker);
            }
            reply(out, &commands::subscription_text(true, &topic));
        }
        Command::Unsubscribe { topic } => {
            if let Some(id) = cx.topics.id_of(&topic) {
                if let Some(pos) = caller.topics.iter().position(|t| *t == id) {
                    caller.topics.swap_remove(pos);
                    if let Some(name) = cx.topics.leave(id, caller.key) {
                        cx.hub.topic_left(&name, cx.worker);
                    }
                }
            }
            // Idempotent: leaving a topic you are not in still confirms.
            reply(out, &commands::subscription_text(false, &topic));
        }
        Command::Publish { topic, payload } => {
            cx.hub.published(Some(&topic), payload);
            let frame = OutFrame::text(&commands::message_text(&topic, payload));
            let targets = cx.hub.directory.workers_for(&topic);
            if targets.len() > usize::from(targets.contains(cx.worker)) {
                let name: Arc<str> = Arc::from(topic.as_ref());
                cx.hub
                    .dispatch(targets, Some(cx.worker), Some(&name), &frame, None, None);
            }
            if let Some(id) = cx.topics.id_of(&topic) {
                deliver_to_topic(cx.topics, cx.outbox, id, frame);
            }
        }
        Command::Broadcast { payload } => {
            cx.hub.published(None, payload);
            let frame = OutFrame::text(&commands::broadcast_text(payload));
            let all = cx.hub.all_workers();
            let entry = cx.pending.vacant_entry();
            let ticket = Arc::new(Ticket::new(
                all.len(),
                Notify::Worker {
                    worker: cx.worker,
                    pending: entry.key(),
                },
            ));
            entry.insert(PendingResult {
                conn: caller.key,
                serial: caller.serial,
                payload: payload.into(),
                ticket: ticket.clone(),
            });
            cx.hub
                .dispatch(all, Some(cx.worker), None, &frame, Some(&ticket), None);
            let frame = cx.outbox.add_frame(frame);
            cx.broadcasts.push(LocalBroadcast {
                frame,
                ticket: Some(ticket),
            });
        }
    }
}

/// Queues `frame` for every local subscriber of topic `id`; returns how many.
pub fn deliver_to_topic(
    topics: &LocalTopics,
    outbox: &mut Outbox,
    id: u32,
    frame: Arc<OutFrame>,
) -> u64 {
    let Some(topic) = topics.get(id) else {
        return 0;
    };
    if topic.subscribers.is_empty() {
        return 0;
    }
    let f = outbox.add_frame(frame);
    for &conn in &topic.subscribers {
        outbox.push(conn as usize, f);
    }
    topic.subscribers.len() as u64
}

/// The `broadcastResult` frame for a finished broadcast.
pub fn broadcast_result_frame(pending: &PendingResult) -> Arc<OutFrame> {
    OutFrame::text(&commands::broadcast_result_text(
        &pending.payload,
        pending.ticket.delivered(),
    ))
}

/// `{"type":"refresh","token":T}`: a fresh token extends the connection past
/// its current token's expiry (and may change its topic permissions).
fn refresh(token: &str, caller: &mut Caller<'_>, cx: &PubSubCx<'_>, out: &mut Replies<'_>) {
    let Some(auth) = &cx.security.auth else {
        let e = CommandError::Unauthorized("authentication is not enabled".into());
        return reply(out, &commands::error_text(&e));
    };
    match auth.verify(token, crate::security::unix_now()) {
        Ok(grant) => {
            let same_user = caller.auth.as_ref().is_none_or(|g| g.user == grant.user);
            if !same_user {
                let e = CommandError::Unauthorized("token is for another user".into());
                return reply(out, &commands::error_text(&e));
            }
            reply(out, &commands::refreshed_text(grant.exp));
            *caller.auth = Some(Box::new(grant));
        }
        Err(e) => reply(
            out,
            &commands::error_text(&CommandError::Unauthorized(e.to_string())),
        ),
    }
}
