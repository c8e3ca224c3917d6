//! One worker's frames to deliver in the current loop iteration, grouped per
//! connection, so that each connection gets every frame meant for it in one
//! vectored write.
//!
//! Deliveries are links in a reused arena (no allocation per delivery once
//! warm): each connection with something to send has a linked list of frame
//! indices, in delivery order. The worker drains it once per iteration.

use std::sync::Arc;

use super::frame::OutFrame;

const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct Outbox {
    frames: Vec<Arc<OutFrame>>,
    /// (frame index, next link)
    links: Vec<(u32, u32)>,
    /// Per connection key: (first link, last link).
    lists: Vec<(u32, u32)>,
    dirty: Vec<u32>,
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

    /// Forgets this iteration's batch, keeping the arena's capacity.
    pub fn clear(&mut self) {
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
}
