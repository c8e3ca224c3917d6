//! Blocking work (a Redis round trip for a presence question) done off the
//! event loops: one thread fed by a bounded queue.
//!
//! Owns that thread and its queue. Whoever asks gets an immediate "no" when
//! the queue is full, so no event loop ever blocks or spawns a thread for a
//! client's request, and however fast one client asks, the work waiting is
//! bounded by [`QUEUE`] jobs. It must not touch connections: a job hands its
//! answer back through a worker's inbox or a channel of its own.

use std::sync::OnceLock;

use crossbeam_channel::{Sender, TrySendError};

/// Jobs waiting at most; past it [`Offload::try_run`] refuses.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// The thread is started on first use: a process that never answers a
/// presence question never has it.
#[derive(Default)]
pub struct Offload {
    tx: OnceLock<Option<Sender<Job>>>,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("too many questions waiting")]
    Full,
    #[error("the helper thread could not be started")]
    NoThread,
}

impl Offload {
    /// Queues `job` for the helper thread, or says why not at once.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), OffloadError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
            std::thread::Builder::new()
                .name("wsgate-offload".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        });
        let Some(tx) = tx else {
            return Err(OffloadError::NoThread);
        };
        match tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(OffloadError::Full),
            Err(TrySendError::Disconnected(_)) => Err(OffloadError::NoThread),
        }
    }
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_jobs_in_order_and_refuses_past_the_queue() {
        let off = Offload::default();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        // The first job holds the thread until released.
        off.try_run(move || {
            let _ = gate_rx.recv();
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..QUEUE {
            let done = done_tx.clone();
            off.try_run(move || done.send(i).unwrap()).unwrap();
        }
        assert!(matches!(off.try_run(|| {}), Err(OffloadError::Full)));
        gate_tx.send(()).unwrap();
        let got: Vec<usize> = (0..QUEUE)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, (0..QUEUE).collect::<Vec<_>>());
    }
}
