//! One worker's frames to deliver in the current loop iteration, grouped per
//! connection, so that each connection gets every frame meant for it in one
//! vectored write.
//!
//! Deliveries are links in a reused arena (no allocation per delivery once
//! warm): each connection with something to send has a linked list of frame
//! indices, in delivery order. The worker drains it once per iteration, and
//! early whenever it becomes [`Outbox::is_heavy`], so one client's burst of
//! broadcasts cannot grow it without bound.
//!
//! Memory comes back: a turn that used a small part of the arena shrinks it
//! (see [`Outbox::end_turn`]), so a burst does not pin its peak for good.

use std::sync::Arc;

use super::frame::OutFrame;

const NONE: u32 = u32::MAX;

/// Deliveries (8 bytes each) after which the batch is written out within
/// the turn: 2 MiB of links, several frames per connection even at 60,000
/// subscribers, so batching still pays.
pub const HEAVY_LINKS: usize = 256 * 1024;
/// Frames after which the batch is written out within the turn.
pub const HEAVY_FRAMES: usize = 16 * 1024;
/// Capacity kept across turns (what a busy steady state needs anyway).
const KEEP_LINKS: usize = 16 * 1024;
const KEEP_FRAMES: usize = 1024;

#[derive(Debug, Default)]
pub struct Outbox {
    frames: Vec<Arc<OutFrame>>,
    /// (frame index, next link)
    links: Vec<(u32, u32)>,
    /// Per connection key: (first link, last link).
    lists: Vec<(u32, u32)>,
    dirty: Vec<u32>,
    /// The most links and frames one batch held since the last `end_turn`.
    peak_links: usize,
    peak_frames: usize,
}

impl Outbox {
    /// Adds a frame to this iteration's batch; returns its index.
    pub fn add_frame(&mut self, frame: Arc<OutFrame>) -> u32 {
        self.frames.push(frame);
        (self.frames.len() - 1) as u32
    }

    /// Queues frame `frame` for connection `conn`, after what it already has.
    pub fn push(&mut self, conn: usize, frame: u32) {
        if conn >= self.lists.len() {
            self.lists
                .resize((conn + 1).next_power_of_two(), (NONE, NONE));
        }
        let link = self.links.len() as u32;
        self.links.push((frame, NONE));
        let (head, tail) = self.lists[conn];
        if head == NONE {
            self.lists[conn] = (link, link);
            self.dirty.push(conn as u32);
        } else {
            self.links[tail as usize].1 = link;
            self.lists[conn].1 = link;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    /// The batch is big enough to write out now rather than at the end of
    /// the turn.
    pub fn is_heavy(&self) -> bool {
        self.links.len() >= HEAVY_LINKS || self.frames.len() >= HEAVY_FRAMES
    }

    /// Bytes the arena holds (capacity, not use).
    pub fn capacity_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.frames.capacity() * std::mem::size_of::<Arc<OutFrame>>()
    }

    /// Called once per loop turn, after the last flush: if the arena is far
    /// larger than this turn needed, give the excess back (hysteresis, so a
    /// steady load does not reallocate every turn).
    pub fn end_turn(&mut self) {
        let (links, frames) = (self.peak_links, self.peak_frames);
        self.peak_links = 0;
        self.peak_frames = 0;
        if self.links.capacity() > KEEP_LINKS && links * 8 < self.links.capacity() {
            self.links.shrink_to((links * 2).max(KEEP_LINKS));
        }
        if self.frames.capacity() > KEEP_FRAMES && frames * 8 < self.frames.capacity() {
            self.frames.shrink_to((frames * 2).max(KEEP_FRAMES));
        }
    }

    /// Connections with frames, in the order they first got one.
    pub fn dirty(&self) -> &[u32] {
        &self.dirty
    }

    /// The frames queued for `conn`, in order.
    pub fn frames_for(&self, conn: usize) -> FramesFor<'_> {
        let head = self.lists.get(conn).map_or(NONE, |l| l.0);
        FramesFor {
            outbox: self,
            link: head,
        }
    }

    /// Forgets this iteration's batch, keeping the arena's capacity (until
    /// [`Outbox::end_turn`] decides otherwise).
    pub fn clear(&mut self) {
        self.peak_links = self.peak_links.max(self.links.len());
        self.peak_frames = self.peak_frames.max(self.frames.len());
        for &c in &self.dirty {
            self.lists[c as usize] = (NONE, NONE);
        }
        self.dirty.clear();
        self.links.clear();
        self.frames.clear();
    }
}

#[derive(Clone)]
pub struct FramesFor<'a> {
    outbox: &'a Outbox,
    link: u32,
}

impl<'a> Iterator for FramesFor<'a> {
    type Item = &'a Arc<OutFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.link == NONE {
            return None;
        }
        let (frame, next) = self.outbox.links[self.link as usize];
        self.link = next;
        Some(&self.outbox.frames[frame as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_frames_per_connection_in_order() {
        let mut o = Outbox::default();
        let a = o.add_frame(OutFrame::text(b"a"));
        let b = o.add_frame(OutFrame::text(b"b"));
        o.push(5, a);
        o.push(2, a);
        o.push(5, b);
        assert_eq!(o.dirty(), &[5, 2]);
        let got: Vec<&[u8]> = o.frames_for(5).map(|f| &f.plain()[2..]).collect();
        assert_eq!(got, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(o.frames_for(2).count(), 1);
        assert_eq!(o.frames_for(7).count(), 0);
        o.clear();
        assert!(o.is_empty());
        assert_eq!(o.frames_for(5).count(), 0);
    }

    #[test]
    fn a_burst_does_not_pin_its_peak() {
        let mut o = Outbox::default();
        let f = o.add_frame(OutFrame::text(b"x"));
        for conn in 0..HEAVY_LINKS {
            o.push(conn % 1000, f);
        }
        assert!(o.is_heavy());
        let peak = o.capacity_bytes();
        o.clear();
        o.end_turn();
        // The turn that held the burst keeps it (it may come again)...
        assert_eq!(o.capacity_bytes(), peak);
        // ...a quiet turn gives it back.
        o.end_turn();
        assert!(o.capacity_bytes() <= (KEEP_LINKS + KEEP_FRAMES) * 16);
    }
}
