//! Panic containment for one connection's processing, and the record of
//! whether each worker thread still runs.
//!
//! A worker runs the protocol and the app for tens of thousands of
//! connections; a bug reachable from one client's bytes must cost that
//! client its connection, not everyone on the worker theirs. The worker
//! runs each connection's input and timer handling through [`guarded`],
//! which catches an unwinding panic and returns its message. The process
//! panic hook is wrapped once so that a caught panic is not also printed by
//! the default hook on every occurrence (a client could repeat it to flood
//! stderr): the worker logs it, escaped and rate-limited, instead.
//!
//! A panic outside a guarded region still ends the worker thread;
//! [`AliveGuard`] records that, so `/readyz` and the systemd watchdog report
//! the process unhealthy instead of answering 200 with a dead worker.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Once};

use crate::stats::WorkerStats;

thread_local! {
    /// Set while this thread runs a guarded region.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// The hook's rendering (message and location) of the panic caught last.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Wraps the process's panic hook (once): panics inside [`guarded`] are
/// recorded for the worker to log instead of printed; any other panic goes
/// to the previous hook as before.
pub(crate) fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let text = format!("{}{at}", payload_text(info.payload()));
                CAUGHT.with(|c| *c.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic payload)".to_string()
    }
}

/// Runs `f`; a panic in it is caught and returned as its message (which may
/// quote client bytes: log it through [`crate::escape::Esc`]).
///
/// `AssertUnwindSafe`: after a panic the caller discards the connection the
/// closure was working on. Worker-wide state it touched (the output buffer,
/// the fan-out batch) is either reset by the caller or holds only complete
/// entries, because every mutation of it is a single push.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// Marks a worker alive from creation until its thread ends for any reason
/// other than a finished drain, including a panic unwinding past the event
/// loop (the guard is dropped with the thread's closure).
pub(crate) struct AliveGuard {
    stats: Arc<WorkerStats>,
    drained: bool,
}

impl AliveGuard {
    pub(crate) fn new(stats: Arc<WorkerStats>) -> AliveGuard {
        stats.alive.set(1);
        AliveGuard {
            stats,
            drained: false,
        }
    }

    /// The worker stopped because shutdown asked it to: that is not a death
    /// (health stays good while the other workers drain).
    pub(crate) fn drained(mut self) {
        self.drained = true;
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        if !self.drained {
            self.stats.alive.set(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_panic_is_returned_with_its_message_and_location() {
        install_hook();
        let r: Result<(), String> = guarded(|| panic!("boom {}", 7));
        let msg = r.unwrap_err();
        assert!(msg.starts_with("boom 7 at "), "{msg}");
        assert!(msg.contains("panic_guard.rs"), "{msg}");
        assert_eq!(guarded(|| 5), Ok(5));
        // Nested regions restore the outer flag.
        let r = guarded(|| {
            let inner: Result<(), String> = guarded(|| panic!("inner"));
            assert!(GUARDED.with(Cell::get));
            inner.is_err()
        });
        assert_eq!(r, Ok(true));
        assert!(!GUARDED.with(Cell::get));
    }

    #[test]
    fn the_alive_flag_drops_when_a_thread_dies() {
        let stats = Arc::new(WorkerStats::default());
        let s = stats.clone();
        let t = std::thread::spawn(move || {
            let _alive = AliveGuard::new(s);
            panic!("worker dies");
        });
        assert!(t.join().is_err());
        assert_eq!(stats.alive.get(), 0);
    }
}
