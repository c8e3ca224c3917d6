//! systemd integration (`Type=notify`): READY=1 once every listener is bound,
//! STOPPING=1 when draining starts, and WATCHDOG=1 while every worker's event
//! loop still turns (only when systemd set `WATCHDOG_USEC`).
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::server::ServerHandle;

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

/// Runs the watchdog on a thread: every half interval it probes every worker
/// and sends WATCHDOG=1 only if all answered the previous probe. A stuck
/// worker therefore lets systemd's watchdog fire and restart the service.
pub fn spawn_watchdog(server: Weak<ServerHandle>, interval: Duration, stop: Arc<AtomicBool>) {
    let period = interval / 2;
    let watch = |s: &ServerHandle| -> Vec<u64> {
        let counts = s.stats().iter().map(|s| s.watchdog).collect();
        s.probe_workers();
        counts
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
                if now.iter().zip(&last).all(|(n, l)| n > l) {
                    send(&[NotifyState::Watchdog]);
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
