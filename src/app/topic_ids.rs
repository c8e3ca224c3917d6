//! The local topic ids one connection subscribed to ([`TopicIds`]). Owns
//! only that list; which topics exist and who is in them is
//! `pubsub::topics`' business.

/// A connection's topic ids, exactly sized on the heap: 16 bytes in every
/// connection's session (a `Vec` takes 24) and no allocation while it has
/// none. A connection subscribes rarely next to how often it is touched, so
/// a subscribe or unsubscribe re-sizes the list instead of keeping spare
/// capacity; `--max-subscriptions` bounds its length.
#[derive(Debug, Default)]
pub struct TopicIds(Box<[u32]>);

impl TopicIds {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.contains(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn push(&mut self, id: u32) {
        let mut ids = std::mem::take(&mut self.0).into_vec();
        ids.push(id);
        self.0 = ids.into_boxed_slice();
    }

    /// Removes `id`; false if it was not in the list. Order is not kept.
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(pos) = self.0.iter().position(|t| *t == id) else {
            return false;
        };
        let mut ids = std::mem::take(&mut self.0).into_vec();
        ids.swap_remove(pos);
        self.0 = ids.into_boxed_slice();
        true
    }

    /// Empties the list, handing back its ids.
    pub fn take_all(&mut self) -> impl Iterator<Item = u32> {
        std::mem::take(&mut self.0).into_vec().into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::TopicIds;

    #[test]
    fn push_remove_and_take_all_keep_the_list_exact() {
        let mut ids = TopicIds::default();
        assert!(ids.is_empty());
        for id in [3, 7, 9] {
            ids.push(id);
        }
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(7));
        assert!(ids.remove(7));
        assert!(!ids.remove(7), "already gone");
        assert!(!ids.contains(7));
        let mut rest: Vec<u32> = ids.take_all().collect();
        rest.sort_unstable();
        assert_eq!(rest, [3, 9]);
        assert!(ids.is_empty());
        assert_eq!(std::mem::size_of::<TopicIds>(), 16);
    }
}
