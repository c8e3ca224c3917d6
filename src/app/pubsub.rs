//! The pub/sub app: runs a client's JSON commands against this worker's
//! topic table and the cross-worker hub.
//!
//! Owns the meaning of each command: replies go into the connection's output
//! buffer, cross-worker deliveries into other workers' inboxes. Deliveries to
//! this worker's own connections (publishes and broadcasts) are handed to the
//! worker's local fan-out ([`crate::pubsub::fanout`]) as a list, in order: it
//! writes out its batch between two of them, which bounds the batch however
//! many messages one read carried. No sockets here.

use std::sync::Arc;

use slab::Slab;

use crate::app::commands::{self, Command, CommandError, Since};
use crate::app::topic_ids::TopicIds;
use crate::config::ClientBroadcast;
use crate::protocol::deflate::Replies;
use crate::protocol::{MessageKind, OpCode};
use crate::pubsub::history::Seq;
use crate::pubsub::offload::OffloadError;
use crate::pubsub::publish::{self as pubsub, Origin, Publish};
use crate::pubsub::topics::LocalTopics;
use crate::pubsub::uplink::HistoryHolder;
use crate::pubsub::{users, Hub, Notify, OutFrame, Ticket, WorkerMsg};
use crate::security::{Grant, Security};
use crate::stats::WorkerStats;

pub use crate::pubsub::fanout::{finish_resume, LocalBroadcast, PendingResult};

/// Limits of the client protocol.
#[derive(Debug, Clone, Copy)]
pub struct PubSubLimits {
    pub max_topic_bytes: usize,
    pub max_subscriptions: usize,
    pub client_broadcast: ClientBroadcast,
    /// Broadcast allowance refilled per timer tick (0: no limit), and its
    /// ceiling.
    pub broadcasts_per_tick: f32,
    pub broadcast_burst: f32,
    /// Timer ticks between two refreshes of one connection.
    pub refresh_ticks: u32,
}

/// What one connection may still spend on the commands that cost the server
/// far more than they cost the client: a broadcast writes to every
/// connection, a refresh checks a signature (hundreds of µs for RS256).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allowances {
    /// Broadcast token bucket and the tick it was last refilled at.
    pub broadcast_tokens: f32,
    pub broadcast_tick: u32,
    /// Tick of the last refresh checked (fits the padding before
    /// `refused_token`: the struct stays 24 bytes).
    pub refresh_tick: Option<u32>,
    /// Hash of the last token refused, so sending it again costs a hash,
    /// not a signature check.
    pub refused_token: u64,
}

impl Allowances {
    /// Takes this connection's one refresh per `every` ticks: false when
    /// the last one checked was less than `every` ticks ago.
    pub fn take_refresh(&mut self, now_tick: u32, every: u32) -> bool {
        // An Option, not 0 for "none yet": tick 0 is a real tick (a
        // refresh in the worker's first tick used to leave no trace, so the
        // next one was never limited).
        if self
            .refresh_tick
            .is_some_and(|last| now_tick.wrapping_sub(last) < every)
        {
            return false;
        }
        self.refresh_tick = Some(now_tick);
        true
    }
}

/// One worker's pub/sub state, borrowed by connections while they run
/// commands.
pub struct PubSubCx<'a> {
    pub worker: usize,
    pub hub: &'a Arc<Hub>,
    pub topics: &'a mut LocalTopics,
    pub pending: &'a mut Slab<PendingResult>,
    pub broadcasts: &'a mut Vec<LocalBroadcast>,
    pub limits: PubSubLimits,
    pub security: &'a Security,
    pub stats: &'a WorkerStats,
    /// The worker's current timer tick.
    pub now_tick: u32,
}

/// The connection running the command.
pub struct Caller<'a> {
    pub key: u32,
    pub serial: u32,
    /// Local topic ids this connection joined.
    pub topics: &'a mut TopicIds,
    /// Its token's grant, with authentication on.
    pub auth: &'a mut Option<Box<Grant>>,
    pub allowances: &'a mut Allowances,
}

impl Caller<'_> {
    /// The authenticated user (JWT `sub`), if any.
    fn user(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|g| g.user.as_deref())
    }

    fn may_use(&self, topic: &str) -> bool {
        self.auth.as_ref().is_none_or(|g| g.topics.allows(topic))
    }

    /// Whether this connection may broadcast (`--client-broadcast`, and the
    /// token's `broadcast` claim). A token limited to some topics must not
    /// reach every connection unless it says so.
    fn may_broadcast(&self, setting: ClientBroadcast) -> bool {
        let grant = self.auth.as_deref();
        match setting {
            ClientBroadcast::Off => false,
            ClientBroadcast::Token => grant.is_some_and(|g| g.broadcast == Some(true)),
            ClientBroadcast::On => grant.is_none_or(|g| match g.broadcast {
                Some(claim) => claim,
                None => g.topics == crate::security::TopicPerms::Any,
            }),
        }
    }

    /// Spends one broadcast from the connection's bucket.
    fn spend_broadcast(&mut self, limits: &PubSubLimits, now_tick: u32) -> bool {
        if limits.broadcasts_per_tick <= 0.0 {
            return true;
        }
        let a = &mut *self.allowances;
        let elapsed = now_tick.wrapping_sub(a.broadcast_tick) as f32;
        a.broadcast_tokens =
            (a.broadcast_tokens + elapsed * limits.broadcasts_per_tick).min(limits.broadcast_burst);
        a.broadcast_tick = now_tick;
        if a.broadcast_tokens < 1.0 {
            return false;
        }
        a.broadcast_tokens -= 1.0;
        true
    }
}

fn reply(out: &mut Replies<'_>, text: &[u8]) {
    out.message(OpCode::Text, text);
}

/// Runs one message from a client; its replies go to `out` (counted in
/// `messages_out`), its deliveries to the hub.
pub fn on_message(
    kind: MessageKind,
    text: &[u8],
    caller: &mut Caller<'_>,
    cx: &mut PubSubCx<'_>,
    out: &mut Replies<'_>,
) {
    let before = out.messages();
    run(kind, text, caller, cx, out);
    cx.stats.messages_out.add(out.messages() - before);
}

fn run(
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
        Command::Presence { topic, .. }
            if !caller.may_use(&topic) || users::is_reserved(&topic) =>
        {
            let e = CommandError::Forbidden("see presence of", topic.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::Presence { topic, users } => presence(&topic, users, caller, cx, out),
        Command::Subscribe { topic, .. } if !caller.may_use(&topic) => {
            let e = CommandError::Forbidden("subscribe to", topic.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::Publish { topic, .. } if !caller.may_use(&topic) => {
            let e = CommandError::Forbidden("publish to", topic.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::Refresh { token } => refresh(&token, caller, cx, out),
        Command::Subscribe { topic, since } => subscribe(&topic, since, caller, cx, out),
        Command::Unsubscribe { topic } => {
            if let Some(id) = cx.topics.id_of(&topic) {
                if caller.topics.remove(id) {
                    cx.hub.presence.leave(&topic, caller.user());
                    leave_topic(cx.topics, cx.hub, cx.worker, id, caller.key);
                }
            }
            // Idempotent: leaving a topic you are not in still confirms.
            reply(out, &commands::subscription_text(false, &topic));
        }
        Command::Publish { topic, payload } => {
            let (hub, worker) = (cx.hub, cx.worker);
            publish(Some(&topic), payload, hub, worker, cx.broadcasts, |_| None);
        }
        Command::PublishUser { user, .. }
            if !caller.auth.as_ref().is_some_and(|g| g.users.allows(&user)) =>
        {
            let e = CommandError::Forbidden("message user", user.into_owned());
            reply(out, &commands::error_text(&e));
        }
        Command::PublishUser { user, payload } => {
            let topic = users::user_topic(&user);
            publish(
                Some(&topic),
                payload,
                cx.hub,
                cx.worker,
                cx.broadcasts,
                |_| None,
            );
        }
        Command::Broadcast { .. } if !caller.may_broadcast(cx.limits.client_broadcast) => {
            cx.stats.broadcasts_refused.inc();
            reply(
                out,
                &commands::error_text(&CommandError::BroadcastForbidden),
            );
        }
        Command::Broadcast { .. } if !caller.spend_broadcast(&cx.limits, cx.now_tick) => {
            cx.stats.broadcasts_refused.inc();
            let e = CommandError::RateLimited("broadcasts");
            reply(out, &commands::error_text(&e));
        }
        Command::Broadcast { payload } => {
            // The `broadcastResult` waits for every worker's count.
            let (worker, pending) = (cx.worker, &mut *cx.pending);
            let ticket = |parts| {
                let entry = pending.vacant_entry();
                let notify = Notify::Worker {
                    worker,
                    pending: entry.key(),
                };
                let ticket = Arc::new(Ticket::new(parts, notify));
                entry.insert(PendingResult {
                    conn: caller.key,
                    serial: caller.serial,
                    payload: payload.into(),
                    ticket: ticket.clone(),
                });
                Some(ticket)
            };
            publish(None, payload, cx.hub, worker, cx.broadcasts, ticket);
        }
    }
}

/// `{"type":"subscribe"}`: joins within the connection's and the process's
/// topic budgets; with history on, answers the topic's position and replays
/// what a resuming client missed.
fn subscribe(
    topic: &str,
    since: Option<Since<'_>>,
    caller: &mut Caller<'_>,
    cx: &mut PubSubCx<'_>,
    out: &mut Replies<'_>,
) {
    let existing = cx.topics.id_of(topic);
    if existing.is_some_and(|id| caller.topics.contains(id)) {
        // Already in (and receiving live): idempotent, costs nothing.
        return reply(out, &commands::subscription_text(true, topic));
    }
    let budget = &cx.hub.topic_budget;
    // A user's reserved topic does not count against the per-connection limit.
    let own = usize::from(caller.auth.as_ref().is_some_and(|g| g.user.is_some()));
    let refusal = if caller.topics.len() >= cx.limits.max_subscriptions + own {
        Some(CommandError::TooManySubscriptions(
            cx.limits.max_subscriptions,
        ))
    } else if !budget.subscriptions.take() {
        Some(CommandError::ServerFull("subscriptions"))
    } else if existing.is_none() && !budget.topics.take() {
        budget.subscriptions.give();
        Some(CommandError::ServerFull("topics"))
    } else {
        None
    };
    if let Some(e) = refusal {
        cx.stats.subscribes_refused.inc();
        return reply(out, &commands::error_text(&e));
    }
    let history = cx.hub.history.as_ref().filter(|h| h.keeps(topic));
    if let Some(c) = history.and_then(|h| h.cluster()) {
        return subscribe_cluster(topic, since, &**c, caller, cx, out);
    }
    let Some(history) = history else {
        let joined = cx.topics.join(topic, caller.key);
        caller.topics.push(joined.topic_id);
        cx.hub.presence.join(topic, caller.user());
        if joined.first_local {
            cx.hub.topic_joined(topic, cx.worker);
        }
        let text = match since {
            // No history to resume from: the client must refetch.
            Some(_) => commands::subscribed_unrecovered_text(topic),
            None => commands::subscription_text(true, topic),
        };
        return reply(out, &text);
    };
    // Joining (the connection and the directory) happens under the topic's
    // history lock, atomically with reading its position: see
    // `History::subscribe` for why replay and live then meet without a gap
    // or a duplicate.
    let (topics, hub, worker, key) = (&mut *cx.topics, cx.hub, cx.worker, caller.key);
    let mut joined_id = 0;
    let snap = history.subscribe(
        topic,
        since.as_ref().map(|s| (s.offset, s.epoch.as_ref())),
        |last: Seq| {
            let joined = topics.join(topic, key);
            joined_id = joined.topic_id;
            topics.fence(joined.topic_id, key, last);
            if joined.first_local {
                hub.topic_joined(topic, worker);
            }
        },
    );
    caller.topics.push(joined_id);
    cx.hub.presence.join(topic, caller.user());
    reply(
        out,
        &commands::subscribed_text_at(topic, snap.recovered, &snap.epoch, snap.last.offset),
    );
    // The replay goes out after the reply and before anything live: the
    // worker queues it in this order before it next reads its inbox.
    for frame in snap.replay {
        cx.broadcasts.push(LocalBroadcast {
            frame,
            topic: None,
            ticket: None,
            only: Some(caller.key),
        });
    }
}

/// A subscribe to a topic whose history the cluster keeps in Redis: the
/// connection joins at once but is held (receives nothing of the topic)
/// until a resume thread has read its position from Redis; the answer, the
/// replay and the release arrive through this worker's inbox (see
/// [`HistoryHolder`]). Past the resume queue the
/// subscribe is refused (error, rate limited).
fn subscribe_cluster(
    topic: &str,
    since: Option<Since<'_>>,
    cluster: &dyn HistoryHolder,
    caller: &mut Caller<'_>,
    cx: &mut PubSubCx<'_>,
    out: &mut Replies<'_>,
) {
    // First interest on this node: the Redis subscription is made anew, and
    // the resume must see it live (a marker) before reading, or what is
    // published between the read and the subscription would be missed.
    if cx.hub.directory.workers_for(topic).is_empty() {
        if let Some(h) = &cx.hub.history {
            h.not_live(topic);
        }
    }
    let since = since.as_ref().map(|s| (s.offset, s.epoch.as_ref()));
    let Ok(token) = cluster.resume(cx.worker, caller.key, caller.serial, topic, since) else {
        // The budgets taken by the caller go back.
        let budget = &cx.hub.topic_budget;
        budget.subscriptions.give();
        if cx.topics.id_of(topic).is_none() {
            budget.topics.give();
        }
        cx.stats.subscribes_refused.inc();
        let e = CommandError::RateLimited("resumes");
        return reply(out, &commands::error_text(&e));
    };
    // The answer cannot overtake this: it comes through the inbox, which
    // the worker reads only after this connection's read is processed.
    let joined = cx.topics.join(topic, caller.key);
    cx.topics
        .fence(joined.topic_id, caller.key, Seq::hold(token));
    caller.topics.push(joined.topic_id);
    cx.hub.presence.join(topic, caller.user());
    if joined.first_local {
        cx.hub.topic_joined(topic, cx.worker);
    }
}

/// `{"type":"presence","topic":T}`: this node's counts are answered at
/// once; with a cluster the question goes to Redis on the offload thread
/// (never on the event loop; its queue is bounded, past it error 429), and
/// the answer comes back through this worker's inbox to the same
/// connection.
fn presence(
    topic: &str,
    users: bool,
    caller: &mut Caller<'_>,
    cx: &mut PubSubCx<'_>,
    out: &mut Replies<'_>,
) {
    use crate::pubsub::presence as answers;
    if !answers::needs_remote(cx.hub) {
        return match answers::answer(cx.hub, topic, users) {
            Ok(body) => reply(out, &commands::presence_text(body)),
            Err(e) => reply(
                out,
                &commands::error_text(&CommandError::Unavailable(e.to_string())),
            ),
        };
    }
    let hub = cx.hub.clone();
    let (worker, conn, serial) = (cx.worker, caller.key, caller.serial);
    let topic = topic.to_string();
    let queued = cx.hub.offload.try_run(move || {
        let text = match answers::answer(&hub, &topic, users) {
            Ok(body) => commands::presence_text(body),
            Err(e) => commands::error_text(&CommandError::Unavailable(e.to_string())),
        };
        let frame = OutFrame::text(&text);
        // A full inbox drops the answer, counted like any delivery.
        let sent = hub.try_send(
            worker,
            WorkerMsg::Reply {
                conn,
                serial,
                frame,
            },
        );
        if sent.is_err() {
            hub.inbox_full_drops
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    match queued {
        Ok(()) => {}
        Err(OffloadError::Full) => {
            let e = CommandError::RateLimited("presence questions");
            reply(out, &commands::error_text(&e));
        }
        Err(e) => {
            let e = CommandError::Unavailable(e.to_string());
            reply(out, &commands::error_text(&e));
        }
    }
}

/// Removes connection `conn` from local topic `id` and gives its share of
/// the topic budgets back (the caller has already dropped `id` from the
/// connection's own list).
pub fn leave_topic(topics: &mut LocalTopics, hub: &Hub, worker: usize, id: u32, conn: u32) {
    hub.topic_budget.subscriptions.give();
    if let Some(name) = topics.leave(id, conn) {
        hub.topic_budget.topics.give();
        hub.topic_left(&name, worker);
    }
}

/// A client's publish (`topic` Some, a user's reserved topic included) or
/// broadcast, through the one publish path ([`pubsub::publish`]). This
/// worker's own part is delivered by the worker after the sender's read is
/// processed, like every local fan-out.
fn publish(
    topic: Option<&str>,
    payload: &[u8],
    hub: &Hub,
    worker: usize,
    broadcasts: &mut Vec<LocalBroadcast>,
    ticket: impl FnOnce(usize) -> Option<Arc<Ticket>>,
) {
    let msg = Publish {
        topic,
        payload,
        origin: Origin::Worker(worker),
    };
    if let Some(local) = pubsub::publish(hub, msg, ticket).local {
        broadcasts.push(LocalBroadcast {
            frame: local.frame,
            topic: local.topic,
            ticket: local.ticket,
            only: None,
        });
    }
}

/// A connection authenticated as `user` joins the user's reserved topic, so
/// messages to the user (`POST /publish?user=U`, from any node) reach it.
/// It leaves with the connection's other topics when it closes. The
/// subscription counts against the process's topic budgets like any other;
/// when they are spent the connection is still served, but messages to its
/// user do not reach it (the refusal is counted).
pub fn join_user(user: &str, conn: u32, conn_topics: &mut TopicIds, cx: &mut PubSubCx<'_>) {
    let topic = users::user_topic(user);
    let existing = cx.topics.id_of(&topic);
    if existing.is_some_and(|id| conn_topics.contains(id)) {
        return;
    }
    let budget = &cx.hub.topic_budget;
    if !budget.subscriptions.take() {
        cx.stats.subscribes_refused.inc();
        return;
    }
    if existing.is_none() && !budget.topics.take() {
        budget.subscriptions.give();
        cx.stats.subscribes_refused.inc();
        return;
    }
    let joined = cx.topics.join(&topic, conn);
    conn_topics.push(joined.topic_id);
    if joined.first_local {
        cx.hub.topic_joined(&topic, cx.worker);
    }
}

/// `{"type":"refresh","token":T}`: a fresh token extends the connection past
/// its current token's expiry (and may change its topic permissions).
///
/// A signature check costs the worker hundreds of µs (RS256/ES256) while the
/// message costs the client nothing, so each connection gets one check per
/// `--min-refresh-interval`, and a token already refused is refused again
/// by its hash alone.
fn refresh(token: &str, caller: &mut Caller<'_>, cx: &mut PubSubCx<'_>, out: &mut Replies<'_>) {
    let Some(auth) = &cx.security.auth else {
        let e = CommandError::Unauthorized("authentication is not enabled".into());
        return reply(out, &commands::error_text(&e));
    };
    let hash = token_hash(token);
    let a = &mut *caller.allowances;
    if a.refused_token == hash {
        cx.stats.refreshes_refused.inc();
        let e = CommandError::Unauthorized("this token was already refused".into());
        return reply(out, &commands::error_text(&e));
    }
    if !a.take_refresh(cx.now_tick, cx.limits.refresh_ticks) {
        cx.stats.refreshes_refused.inc();
        return reply(
            out,
            &commands::error_text(&CommandError::RateLimited("refreshes")),
        );
    }
    cx.stats.refresh_checks.inc();
    let grant = match auth.verify(token, crate::security::unix_now()) {
        Ok(g) => g,
        Err(e) => {
            a.refused_token = hash;
            let e = CommandError::Unauthorized(e.to_string());
            return reply(out, &commands::error_text(&e));
        }
    };
    let same_user = caller.auth.as_ref().is_none_or(|g| g.user == grant.user);
    if !same_user {
        a.refused_token = hash;
        let e = CommandError::Unauthorized("token is for another user".into());
        return reply(out, &commands::error_text(&e));
    }
    reply(out, &commands::refreshed_text(grant.exp));
    // Leave what the new grant no longer allows, and say so: a narrower
    // token must not keep receiving topics it was taken off.
    let held: Vec<u32> = caller.topics.iter().collect();
    for id in held {
        let name = cx.topics.get(id).map(|t| t.name.clone());
        match name {
            // The user's own topic is not a grant of `topics` (and a
            // refresh keeps the same `sub`).
            Some(name) if !users::is_reserved(&name) && !grant.topics.allows(&name) => {
                caller.topics.remove(id);
                cx.hub.presence.leave(&name, caller.user());
                leave_topic(cx.topics, cx.hub, cx.worker, id, caller.key);
                cx.stats.subscriptions_revoked.inc();
                let text =
                    commands::revoked_text(&name, "the refreshed token does not allow this topic");
                reply(out, &text);
            }
            _ => {}
        }
    }
    *caller.auth = Some(Box::new(grant));
}

/// A 64-bit hash of a token (not secret: it only spots exact repeats).
fn token_hash(token: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(token)
}

#[cfg(test)]
mod tests {
    use super::Allowances;

    /// One refresh per `every` ticks from the worker's very first tick on
    /// (the first tick used to leave no trace, so a client connected then
    /// could have its every refresh checked).
    #[test]
    fn one_refresh_per_interval_from_tick_zero() {
        for start in [0, 1, 7, u32::MAX - 1, u32::MAX] {
            let mut a = Allowances::default();
            assert!(a.take_refresh(start, 20), "first at {start}");
            assert!(!a.take_refresh(start, 20), "again at {start}");
            assert!(
                !a.take_refresh(start.wrapping_add(19), 20),
                "19 later, from {start}"
            );
            assert!(
                a.take_refresh(start.wrapping_add(20), 20),
                "20 later, from {start}"
            );
            assert!(
                !a.take_refresh(start.wrapping_add(21), 20),
                "then 1 later, from {start}"
            );
        }
        // 0: no limit (--min-refresh-interval 0).
        let mut a = Allowances::default();
        assert!((0..3).all(|_| a.take_refresh(5, 0)));
        assert_eq!(std::mem::size_of::<Allowances>(), 24);
    }
}
