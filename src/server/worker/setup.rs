//! Building a worker: its limits, deadlines and budgets derived from the
//! configuration, its listener registered, its buffers allocated once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver as Inbox;
use mio::net::TcpListener;
use mio::{Interest, Poll};
use rustc_hash::FxHashMap;
use slab::Slab;

use crate::app::pubsub::PubSubLimits;
use crate::config::Config;
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::PartialPool;
use crate::protocol::ReceiverLimits;
use crate::pubsub::fanout::LocalFanout;
use crate::pubsub::WorkerMsg;
use crate::session::{RateLimit, SessionConfig};
use crate::timer_wheel::TimerWheel;

use super::super::listener::ListenOptions;
use super::super::loop_io::Io;
use super::accept::{AcceptState, HandshakeBucket};
use super::epoll::Epoll;
use super::shutdown::Drain;
use super::timers::{self, ticks, Clock, TICK};
use super::trouble::Trouble;
use super::{Shared, Worker, FLUSH_AT, LISTENER, SCRATCH_BYTES};
use crate::stats::WorkerStats;

impl Epoll {
    /// The epoll side of a worker: `listener` registered with `poll`.
    pub(crate) fn new(
        poll: Poll,
        listener: std::net::TcpListener,
        shared: &Shared,
    ) -> io::Result<Epoll> {
        let listen_addr: Option<SocketAddr> = listener.local_addr().ok();
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Epoll {
            poll,
            accept: AcceptState::new(
                listener,
                listen_addr,
                ListenOptions::for_clients(shared.config.idle_timeout, shared.config.defer_accept),
            ),
        })
    }
}

impl<I: Io> Worker<I> {
    pub(crate) fn new(
        id: usize,
        io: I,
        inbox: Inbox<WorkerMsg>,
        stats: Arc<WorkerStats>,
        shared: &Shared,
    ) -> Worker<I> {
        let config = shared.config.clone();
        let limits = ReceiverLimits {
            max_frame_bytes: config.message_limit(),
            max_message_bytes: config.message_limit(),
            max_fragments: config.max_fragments,
        };
        let handshake = HandshakeConfig {
            path: config.path.clone(),
            max_head_bytes: config.max_request_head,
            subprotocols: Vec::new(),
            permessage_deflate: config.permessage_deflate,
        };
        let rate = (config.max_messages_per_sec > 0).then(|| {
            let per_sec = config.max_messages_per_sec as f32;
            RateLimit {
                per_tick: per_sec * TICK.as_secs_f32(),
                burst: 2.0 * per_sec,
            }
        });
        let session_config = SessionConfig {
            tick_ms: TICK.as_millis() as u64,
            handshake_ticks: ticks(config.handshake_timeout),
            ping_ticks: ticks(config.ping_interval),
            answer_ticks: ticks(config.idle_timeout.saturating_sub(config.ping_interval)),
            close_ticks: ticks(config.close_timeout),
            jwt_grace_secs: config.jwt_expiry_grace.as_secs(),
            max_outbound_bytes: config.max_outbound_bytes,
            slow_consumer_bytes: config
                .max_outbound_bytes
                .saturating_add(largest_delivery(&config)),
            drain_deadline: None,
        };
        let broadcasts_per_sec = config.max_broadcasts_per_sec as f32;
        let pubsub_limits = PubSubLimits {
            max_topic_bytes: config.max_topic_bytes,
            max_subscriptions: config.max_subscriptions,
            client_broadcast: config.client_broadcast,
            broadcasts_per_tick: broadcasts_per_sec * TICK.as_secs_f32(),
            broadcast_burst: 2.0 * broadcasts_per_sec,
            // 0 turns the limit off (a tick count of at least 1 would still
            // refuse a second refresh within the same 50 ms tick).
            refresh_ticks: if config.min_refresh_interval.is_zero() {
                0
            } else {
                ticks(config.min_refresh_interval)
            },
        };
        let now = Instant::now();
        // A fixed limit shows from the start; `auto` once measured.
        let handshake_bucket = HandshakeBucket::new(config.max_handshakes_per_sec, now);
        if let Some(rate) = handshake_bucket.as_ref().and_then(HandshakeBucket::rate) {
            stats.handshake_rate_limit.set(rate as u64);
        }
        Worker {
            id,
            io,
            conns: Slab::new(),
            next_serial: 0,
            scratch: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
            out: Vec::with_capacity(FLUSH_AT),
            pool: PartialPool::with_budget(shared.reassembly.clone()),
            deflater: Deflater::default(),
            limits,
            handshake,
            session_config,
            stats,
            hub: shared.hub.clone(),
            fanout: LocalFanout::new(id, shared.hub.clone(), inbox),
            pubsub_limits,
            admission: shared.admission.clone(),
            security: shared.security.clone(),
            peer_ips: FxHashMap::default(),
            rate,
            clock: Clock::new(now),
            wheel: TimerWheel::new(timers::WHEEL_SLOTS, 0),
            expired: Vec::new(),
            handshake_bucket,
            drain: Drain::default(),
            read_again: Vec::new(),
            doomed: Vec::new(),
            trouble: Trouble::new(now),
            tls: shared.tls.clone().map(|ctx| {
                let limits = crate::tls::TlsLimits {
                    max_handshake_buffer: config.tls_handshake_buffer,
                };
                super::TlsWorker::new(ctx, limits)
            }),
            debug_panic: cfg!(debug_assertions) && config.debug_panic_trigger,
            config,
        }
    }
}

/// The largest fan-out frame: payload, the JSON envelope with the longest
/// topic (escaped, up to 6 bytes a byte), and the frame header.
fn largest_delivery(config: &Config) -> usize {
    let payload = usize::try_from(config.message_limit()).unwrap_or(usize::MAX);
    payload
        .saturating_add(config.max_topic_bytes.saturating_mul(6))
        .saturating_add(64)
}
