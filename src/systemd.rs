//! systemd integration (`Type=notify`): READY=1 once every listener is bound,
//! STOPPING=1 when draining starts, and WATCHDOG=1 while every worker's event
//! loop still turns (only when systemd set `WATCHDOG_USEC`).
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::node::ServerHandle;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// Tells systemd the service is ready.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is shutting down.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// The watchdog interval systemd asked for, if any: `WATCHDOG_USEC`, unless
/// `WATCHDOG_PID` names another process (sd_watchdog_enabled(3) semantics;
/// the sd-notify crate's version insists on WATCHDOG_PID being present).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One worker as the watchdog sees it in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPulse {
    /// Probes the worker has answered so far.
    pub answered: u64,
    /// Its thread still runs.
    pub alive: bool,
}

/// Whether systemd may be told all is well: every worker's thread runs and
/// each answered a probe since the previous round. A worker that died (its
/// counter can never move again) or is stuck fails it, so systemd's
/// watchdog fires and restarts the service.
pub fn all_workers_healthy(previous: &[WorkerPulse], now: &[WorkerPulse]) -> bool {
    previous.len() == now.len()
        && now
            .iter()
            .zip(previous)
            .all(|(n, p)| n.alive && n.answered > p.answered)
}

/// Runs the watchdog on a thread: every half interval it probes every worker
/// and sends WATCHDOG=1 only if [`all_workers_healthy`].
pub fn spawn_watchdog(server: Weak<ServerHandle>, interval: Duration, stop: Arc<AtomicBool>) {
    let period = interval / 2;
    let watch = |s: &ServerHandle| -> Vec<WorkerPulse> {
        let pulses = s
            .stats()
            .iter()
            .map(|s| WorkerPulse {
                answered: s.watchdog,
                alive: s.alive == 1,
            })
            .collect();
        s.probe_workers();
        pulses
    };
    let spawned = std::thread::Builder::new()
        .name("wsgate-watchdog".into())
        .spawn(move || {
            let Some(mut last) = server.upgrade().map(|s| watch(&s)) else {
                return;
            };
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(period);
                // Only a weak reference is held between rounds, so shutdown
                // never waits for this thread.
                let Some(now) = server.upgrade().map(|s| watch(&s)) else {
                    return;
                };
                if all_workers_healthy(&last, &now) {
                    send(&[NotifyState::Watchdog]);
                } else if now.iter().any(|p| !p.alive) {
                    tracing::error!("a worker thread died: not pinging the systemd watchdog");
                } else {
                    tracing::warn!("a worker did not answer the watchdog probe");
                }
                last = now;
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the watchdog thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(answered: u64, alive: bool) -> WorkerPulse {
        WorkerPulse { answered, alive }
    }

    #[test]
    fn the_watchdog_pings_only_while_every_worker_lives_and_answers() {
        let before = [p(3, true), p(7, true)];
        assert!(all_workers_healthy(&before, &[p(4, true), p(8, true)]));
        // Stuck: one did not answer.
        assert!(!all_workers_healthy(&before, &[p(4, true), p(7, true)]));
        // Dead: even a counter that moved (the probe of the round it died
        // in) does not count once its thread is gone.
        assert!(!all_workers_healthy(&before, &[p(4, true), p(8, false)]));
        assert!(!all_workers_healthy(&before, &[p(4, true)]));
    }
}
