//! The `user_data` of multishot operations (accept, recv, readability poll).
//!
//! A multishot owns no memory of its own (a recv writes into the shared
//! buffer pool, whose ids the CQE names), so it needs no op-table entry:
//! its `user_data` names the descriptor's fd-table key, which kind of
//! multishot it is and an arming count, and its state is a few bits of the
//! descriptor's entry. That keeps an idle connection's bookkeeping to the fd
//! entry alone.
//!
//! Layout: bit 63 set (op-table `user_data` keeps it clear), bits 61–62 the
//! kind, bits 32–39 the arming count, bits 0–31 the fd key. The arming
//! count makes a cancel aimed at one arming miss a later one on the same
//! descriptor. `u64::MAX` (kind bits `11`) stays the untracked value.

/// Which multishot an fd entry has armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Accept = 0,
    Recv = 1,
    Poll = 2,
}

impl Kind {
    /// This kind's bit in an fd entry's `armed` set.
    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }
}

const TAG: u64 = 1 << 63;

/// The `user_data` of arming number `seq` of `kind` on fd-table key `key`.
pub(crate) fn encode(key: u32, kind: Kind, seq: u8) -> u64 {
    TAG | (kind as u64) << 61 | u64::from(seq) << 32 | u64::from(key)
}

/// The fd key, kind and arming count of a multishot's `user_data`; `None`
/// for any other `user_data` (op-table entries, untracked SQEs).
pub(crate) fn decode(ud: u64) -> Option<(usize, Kind, u8)> {
    if ud & TAG == 0 {
        return None;
    }
    let kind = match (ud >> 61) & 0b11 {
        0 => Kind::Accept,
        1 => Kind::Recv,
        2 => Kind::Poll,
        _ => return None,
    };
    Some(((ud & 0xffff_ffff) as usize, kind, (ud >> 32) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_other_user_data_alone() {
        for kind in [Kind::Accept, Kind::Recv, Kind::Poll] {
            for (key, seq) in [(0, 0), (7, 1), (u32::MAX, 255)] {
                let ud = encode(key, kind, seq);
                assert_eq!(decode(ud), Some((key as usize, kind, seq)));
                assert_ne!(ud, u64::MAX);
            }
        }
        // The untracked value and op-table values (bit 63 clear).
        assert_eq!(decode(u64::MAX), None);
        assert_eq!(decode((u64::from(u32::MAX >> 1) << 32) | 5), None);
        assert_eq!(decode(0), None);
    }
}
