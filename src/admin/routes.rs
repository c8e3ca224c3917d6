//! What each admin path does: the publish API, metrics, health, and who may
//! call them (the optional bearer token).
//!
//! Owns routing and answers. A publish never waits here: it hands the frame
//! to the workers and returns the receiver its delivery count arrives on, so
//! the admin loop serves other requests meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::http::{Head, Response};
use super::Shared;
use crate::metrics;
use crate::pubsub::presence as pubsub_presence;
use crate::pubsub::publish::{self, Origin, Publish};
use crate::pubsub::{users, Hub, Notify, Ticket};

/// What a request turned into.
pub enum Outcome {
    Now(Response),
    /// A publish on its way: the delivery count arrives on this receiver.
    Counting(Receiver<u64>),
    /// An answer that needs a blocking call (Redis): it is made on a thread
    /// of its own and the answer arrives on this receiver, so the admin loop
    /// keeps serving meanwhile.
    Answering(Receiver<Response>),
}

/// Paths a load balancer probes: open even when a token is required.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Whether the request may see `head.path` (`--admin-token-file`).
pub fn authorized(shared: &Shared, head: &Head) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    if is_probe(&head.path) {
        return true;
    }
    let given = head
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Constant time: the answer must not tell how much of a guess was right.
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// `/healthz`: 200 while the process runs, 503 once a worker died (a
/// liveness probe then restarts the process).
pub fn liveness(shared: &Shared) -> Response {
    if shared.metrics.workers_alive() {
        Response::json(200, r#"{"status":"ok"}"#)
    } else {
        Response::json(503, r#"{"status":"worker down"}"#)
    }
}

/// `/readyz`: 200 while accepting, 503 while draining or once a worker died.
pub fn readiness(shared: &Shared) -> Response {
    if shared.draining.load(Ordering::Acquire) {
        Response::json(503, r#"{"status":"draining"}"#)
    } else if !shared.metrics.workers_alive() {
        Response::json(503, r#"{"status":"worker down"}"#)
    } else {
        Response::json(200, r#"{"status":"ready"}"#)
    }
}

/// Answers a request whose head and body have arrived.
pub fn route(shared: &Shared, head: &Head, body: &[u8]) -> Outcome {
    let response = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra: None,
            body: metrics::render(&shared.metrics).into_bytes(),
        },
        ("GET", "/healthz") => liveness(shared),
        ("GET", "/readyz") => readiness(shared),
        ("POST", "/publish") => {
            // `?topic=T` or `?user=U` (a user's reserved topic).
            let target = users::publish_target(&head.query, shared.config.max_topic_bytes);
            match (target, json_payload(body)) {
                (_, Err(resp)) => resp,
                (Err(msg), _) => Response::error(400, &msg),
                (Ok(topic), Ok(payload)) => return publish(shared, Some(&topic), payload),
            }
        }
        ("GET", "/presence") => return presence(shared, &head.query),
        ("POST", "/drain") => {
            // Readiness first, so the load balancer stops sending clients
            // while the workers start closing.
            shared.draining.store(true, Ordering::Release);
            for w in 0..shared.hub.worker_count() {
                // A full inbox is retried by the shutdown that follows
                // (`ServerHandle::shutdown` waits for room).
                let _ = shared.hub.try_send(w, crate::pubsub::WorkerMsg::Shutdown);
            }
            let _ = shared.drain_requested.try_send(());
            Response::json(202, r#"{"status":"draining"}"#)
        }
        // Re-reads the TLS certificate and key: new handshakes use them,
        // open connections are untouched; a bad file keeps the old pair.
        ("POST", "/reload-tls") => {
            let contexts = [shared.metrics.tls.as_ref(), shared.tls.as_ref()];
            match crate::tls::TlsContext::reload_all(contexts.into_iter().flatten()) {
                None => Response::error(404, "TLS is off (no --tls-cert or --admin-tls-cert)"),
                Some(Ok(())) => Response::json(200, r#"{"status":"reloaded"}"#),
                Some(Err(e)) => Response::error(422, &e.to_string()),
            }
        }
        ("POST", "/broadcast") => match json_payload(body) {
            Ok(payload) => return publish(shared, None, payload),
            Err(resp) => resp,
        },
        (_, "/publish" | "/broadcast" | "/drain" | "/reload-tls") => Response::error(405, "use POST"),
        (_, "/healthz" | "/readyz" | "/metrics" | "/presence") => Response::error(405, "use GET"),
        _ => Response::error(
            404,
            "unknown path (try /publish, /broadcast, /drain, /presence, /metrics, /healthz, /readyz)",
        ),
    };
    Outcome::Now(response)
}

/// Checks that the body is one JSON value; returns its text.
fn json_payload(body: &[u8]) -> Result<&[u8], Response> {
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| Response::error(400, &format!("body is not a JSON value: {e}")))?;
    Ok(raw.get().as_bytes())
}

/// Hands the publish to every worker that needs it and to the other nodes
/// (see [`publish::publish`]; it never waits for room in an inbox). The
/// workers' counts arrive on the returned receiver.
fn publish(shared: &Shared, topic: Option<&str>, payload: &[u8]) -> Outcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let ticket = |parts| Some(Arc::new(Ticket::new(parts, Notify::Channel(tx))));
    let msg = Publish {
        topic,
        payload,
        origin: Origin::Admin,
    };
    let done = publish::publish(&shared.hub, msg, ticket);
    if done.queued {
        // A history topic held by the cluster: delivered when it comes back
        // from Redis, with its position.
        Outcome::Now(Response::json(202, r#"{"queued":true}"#))
    } else if done.parts == 0 {
        Outcome::Now(Response::json(200, r#"{"delivered":0}"#))
    } else {
        Outcome::Counting(rx)
    }
}

/// `GET /presence?topic=T[&users=1]`: cluster-wide subscriptions, read
/// from Redis on the offload thread (bounded queue), so the admin loop
/// keeps serving meanwhile.
fn presence(shared: &Shared, query: &str) -> Outcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let hub = shared.hub.clone();
    let query = query.to_string();
    let max = shared.config.max_topic_bytes;
    let queued = shared.hub.offload.try_run(move || {
        let (status, body) = presence_answer(&hub, &query, max);
        let _ = tx.send(Response::json(status, body));
    });
    match queued {
        Ok(()) => Outcome::Answering(rx),
        Err(e) => Outcome::Now(Response::error(503, &format!("cannot answer now: {e}"))),
    }
}

/// `GET /presence?topic=T[&users=1]` for the admin API: status and JSON body.
fn presence_answer(hub: &Hub, query: &str, max_topic_bytes: usize) -> (u16, String) {
    let mut topic = None;
    let mut users = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "topic" => topic = Some(v.into_owned()),
            "users" => users = v == "1" || v == "true",
            _ => {}
        }
    }
    let err = |status: u16, m: &str| (status, serde_json::json!({ "error": m }).to_string());
    let Some(topic) = topic else {
        return err(400, "missing query parameter 'topic'");
    };
    if topic.is_empty() || topic.len() > max_topic_bytes {
        return err(400, &format!("topic must be 1 to {max_topic_bytes} bytes"));
    }
    match pubsub_presence::answer(hub, &topic, users) {
        Ok(body) => (200, body.to_string()),
        Err(e) => err(503, &e.to_string()),
    }
}

/// The answer once the workers' count arrived.
pub fn delivered(n: u64) -> Response {
    Response::json(200, format!(r#"{{"delivered":{n}}}"#))
}
