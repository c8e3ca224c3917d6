//! The admin HTTP listener: the publish API for backends and health checks.
//!
//! Runs on its own threads, off the public port. It reaches the workers only
//! through the hub (their inboxes), waiting with a timeout for room and for
//! delivery counts; it never touches a connection.
//!
//! - `POST /publish?topic=T` (body: JSON payload) → `{"delivered":N}`
//! - `POST /broadcast` (body: JSON payload) → `{"delivered":N}`
//! - `GET /metrics` → Prometheus text format
//! - `GET /healthz` → 200 while the process runs, 503 once a worker died
//! - `GET /readyz` → 200 while accepting, 503 while draining or a worker died

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::value::RawValue;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::app::commands;
use crate::config::Config;
use crate::metrics::{self, MetricsSource};
use crate::pubsub::OutFrame;
use crate::pubsub::{Hub, Notify, Ticket};

const HANDLER_THREADS: usize = 2;
/// How long a publish waits for room in a worker's inbox.
const SEND_WAIT: Duration = Duration::from_secs(1);
/// How long a publish waits for the workers' delivery counts.
const COUNT_WAIT: Duration = Duration::from_secs(5);

pub struct AdminServer {
    server: Arc<Server>,
    addr: SocketAddr,
    draining: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    hub: Arc<Hub>,
    metrics: MetricsSource,
    config: Arc<Config>,
    draining: Arc<AtomicBool>,
}

impl AdminServer {
    pub fn start(
        addr: SocketAddr,
        hub: Arc<Hub>,
        config: Arc<Config>,
        metrics: MetricsSource,
    ) -> io::Result<AdminServer> {
        // SO_REUSEPORT like the public port, so a new process can start on
        // the same admin address during a zero-downtime restart; the kernel
        // spreads requests over both until the old one exits.
        let named = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("admin listener {addr}: {e}"),
            )
        };
        let listener = crate::server::listener::bind_reuseport(addr).map_err(|e| named(&e))?;
        // tiny_http accepts with blocking calls on its own thread.
        listener.set_nonblocking(false).map_err(|e| named(&e))?;
        let server = Server::from_listener(listener, None).map_err(|e| named(&e))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("admin listener has no IP address"))?;
        let server = Arc::new(server);
        let draining = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            hub,
            metrics,
            config,
            draining: draining.clone(),
        });
        let mut threads = Vec::new();
        for i in 0..HANDLER_THREADS {
            let server = server.clone();
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wsgate-admin-{i}"))
                    .spawn(move || {
                        for req in server.incoming_requests() {
                            handle(req, &shared);
                        }
                    })?,
            );
        }
        Ok(AdminServer {
            server,
            addr,
            draining,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/readyz` reports 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn json_response(status: u16, body: String) -> Response<io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .unwrap_or_else(|()| unreachable_header());
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header)
}

#[cold]
fn unreachable_header() -> Header {
    // Header::from_bytes only fails on non-ASCII input; ours is a constant.
    Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap_or_else(|()| unreachable!())
}

fn error(status: u16, message: &str) -> Response<io::Cursor<Vec<u8>>> {
    json_response(status, serde_json::json!({ "error": message }).to_string())
}

fn handle(mut req: Request, shared: &Shared) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let response = match (req.method(), path) {
        (Method::Get, "/metrics") => {
            let header = Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            )
            .unwrap_or_else(|()| unreachable_header());
            Response::from_data(metrics::render(&shared.metrics).into_bytes()).with_header(header)
        }
        (Method::Get, "/healthz") => {
            if shared.metrics.workers_alive() {
                json_response(200, r#"{"status":"ok"}"#.into())
            } else {
                json_response(503, r#"{"status":"worker down"}"#.into())
            }
        }
        (Method::Get, "/readyz") => {
            if shared.draining.load(Ordering::Acquire) {
                json_response(503, r#"{"status":"draining"}"#.into())
            } else if !shared.metrics.workers_alive() {
                json_response(503, r#"{"status":"worker down"}"#.into())
            } else {
                json_response(200, r#"{"status":"ready"}"#.into())
            }
        }
        (Method::Post, "/publish") => {
            let topic = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "topic")
                .map(|(_, v)| v.into_owned());
            match (topic, read_payload(&mut req, shared)) {
                (_, Err(resp)) => resp,
                (None, _) => error(400, "missing query parameter 'topic'"),
                (Some(t), _) if t.is_empty() || t.len() > shared.config.max_topic_bytes => error(
                    400,
                    &format!("topic must be 1 to {} bytes", shared.config.max_topic_bytes),
                ),
                (Some(topic), Ok(payload)) => publish(shared, Some(&topic), &payload),
            }
        }
        (Method::Post, "/broadcast") => match read_payload(&mut req, shared) {
            Ok(payload) => publish(shared, None, &payload),
            Err(resp) => resp,
        },
        (_, "/publish" | "/broadcast") => error(405, "use POST"),
        (_, "/healthz" | "/readyz" | "/metrics") => error(405, "use GET"),
        _ => error(
            404,
            "unknown path (try /publish, /broadcast, /healthz, /readyz)",
        ),
    };
    if let Err(e) = req.respond(response) {
        tracing::debug!(error = %e, "admin response not delivered");
    }
}

/// Reads the body and checks that it is one JSON value. Returns its text.
fn read_payload(
    req: &mut Request,
    shared: &Shared,
) -> Result<Vec<u8>, Response<io::Cursor<Vec<u8>>>> {
    let limit = shared.config.max_message_size;
    let mut body = Vec::new();
    req.as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| error(400, &format!("cannot read body: {e}")))?;
    if body.len() as u64 > limit {
        return Err(error(413, &format!("body exceeds {limit} bytes")));
    }
    let raw: &RawValue = serde_json::from_slice(&body)
        .map_err(|e| error(400, &format!("body is not a JSON value: {e}")))?;
    Ok(raw.get().as_bytes().to_vec())
}

/// Encodes the frame once and hands it to every worker that needs it, then
/// waits for their delivery counts.
fn publish(shared: &Shared, topic: Option<&str>, payload: &[u8]) -> Response<io::Cursor<Vec<u8>>> {
    let hub = &shared.hub;
    hub.published(topic, payload);
    let (text, targets) = match topic {
        Some(t) => (
            commands::message_text(t, payload),
            hub.directory.workers_for(t),
        ),
        None => (commands::broadcast_text(payload), hub.all_workers()),
    };
    if targets.is_empty() {
        return json_response(200, r#"{"delivered":0}"#.into());
    }
    let frame = OutFrame::text(&text);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let ticket = Arc::new(Ticket::new(targets.len(), Notify::Channel(tx)));
    let topic: Option<Arc<str>> = topic.map(Arc::from);
    hub.dispatch(
        targets,
        None,
        topic.as_ref(),
        &frame,
        Some(&ticket),
        Some(SEND_WAIT),
    );
    match rx.recv_timeout(COUNT_WAIT) {
        Ok(n) => json_response(200, format!(r#"{{"delivered":{n}}}"#)),
        Err(_) => error(504, "workers did not confirm delivery in time"),
    }
}
