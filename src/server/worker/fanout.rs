//! The worker's side of [`LocalFanout`]: its connections as
//! [`Connections`], so a turn's fan-out reaches sessions without the
//! pub/sub code knowing sockets or sessions.

use crate::protocol::deflate::Deflater;
use crate::pubsub::fanout::{Connections, Delivered};
use crate::pubsub::outbox::FramesFor;
use crate::session::{AfterWrite, Now, SessionConfig};
use crate::timer_wheel::TimerWheel;
use slab::Slab;

use super::super::conn::Conn;
use super::super::loop_io::Io;
use crate::stats::WorkerStats;

/// The worker's fields fan-out needs, borrowed for one call.
pub(crate) struct Slots<'a, I: Io> {
    pub io: &'a mut I,
    pub conns: &'a mut Slab<Conn<I::Handle>>,
    pub wheel: &'a mut TimerWheel,
    pub out: &'a mut Vec<u8>,
    pub deflater: &'a mut Deflater,
    pub deflate_min_size: usize,
    pub config: &'a SessionConfig,
    pub stats: &'a WorkerStats,
    pub now: Now,
    /// The connection being read, whose replies are in `out`.
    pub reading: Option<usize>,
    /// Connections to close once the call returns.
    pub doomed: &'a mut Vec<usize>,
    pub read_again: &'a mut Vec<usize>,
}

impl<I: Io> Connections for Slots<'_, I> {
    fn is_open(&self, key: usize, serial: Option<u32>) -> bool {
        self.conns.get(key).is_some_and(|c| {
            I::is_live(&c.stream)
                && c.session.is_open()
                && serial.is_none_or(|s| s == c.session.serial)
        })
    }

    fn each_open(&self, mut f: impl FnMut(usize)) {
        for (key, conn) in self.conns.iter() {
            if I::is_live(&conn.stream) && conn.session.is_open() {
                f(key);
            }
        }
    }

    fn deliver(&mut self, key: usize, frames: FramesFor<'_>) -> Delivered {
        let Some(conn) = self.conns.get_mut(key) else {
            return Delivered::NotOpen;
        };
        if !I::is_live(&conn.stream) || !conn.session.is_open() {
            return Delivered::NotOpen;
        }
        let deflate = conn.session.takes_shared_deflate();
        if deflate {
            // Compress once per publish: the first deflate subscriber
            // anywhere builds the shared compressed frame.
            for f in frames.clone() {
                f.prepare_deflated(self.deflater, self.deflate_min_size);
            }
        }
        let frames = frames.map(move |f| f.for_peer(deflate));
        let count = frames.clone().count() as u64;
        self.stats.messages_out.add(count);
        self.stats.deliveries.add(count);
        let delivered = conn.session.deliver(
            frames,
            &mut self.io.sink(&mut conn.stream),
            self.out,
            self.now,
            self.config,
            self.stats,
        );
        match delivered {
            Delivered::Gone => self.doomed.push(key),
            Delivered::Cut => conn.sync_timer(self.wheel, key),
            Delivered::Queued | Delivered::NotOpen => {}
        }
        delivered
    }

    fn flush_replies(&mut self) {
        let Some(key) = self.reading else {
            self.out.clear();
            return;
        };
        let Some(conn) = self.conns.get_mut(key).filter(|c| I::is_live(&c.stream)) else {
            self.out.clear();
            return;
        };
        let written = conn.session.write_to(
            self.out,
            &mut self.io.sink(&mut conn.stream),
            self.config,
            self.stats,
        );
        match written {
            Ok(AfterWrite::Keep) => {}
            Ok(AfterWrite::ResumeReading) => self.read_again.push(key),
            // A TLS connection's last encrypted batch may still wait for
            // the socket: it closes once that is out.
            Ok(AfterWrite::Close) if !self.io.finish(&mut conn.stream) => {}
            Ok(AfterWrite::Close) | Err(_) => self.doomed.push(key),
        }
    }

    fn probed(&mut self) {
        self.stats.watchdog.inc();
    }

    fn inbox_budget(&self) -> Option<std::time::Duration> {
        I::inbox_budget()
    }
}
