//! What goes over Redis: channel names and the message format.
//!
//! Channel `{prefix}:t:{topic}` carries publishes to a topic, `{prefix}:b`
//! broadcasts. A message is the sending node's id (8 bytes, big-endian)
//! followed by the raw JSON payload, so each node can skip its own messages
//! (it already delivered them locally) and every subscriber gets a publish
//! exactly once.
//!
//! On a Redis Cluster (sharded pub/sub) the names add `{prefix}:u:{user}`
//! (messages to a user) and spread broadcasts over several channels
//! `{prefix}:b:{n}` placed in evenly spaced slot ranges, so no one shard
//! carries every broadcast. A sharded message also carries its publisher's
//! epoch and per-channel sequence number (see [`super::dedup`]).
//! Pure code; no Redis here.

/// Where a cluster message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Topic(&'a str),
    Broadcast,
    User(&'a str),
}

pub fn topic_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:t:{topic}")
}

pub fn broadcast_channel(prefix: &str) -> String {
    format!("{prefix}:b")
}

/// Recovers the target from a channel name, if it is one of ours.
pub fn parse_channel<'a>(prefix: &str, channel: &'a str) -> Option<Target<'a>> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix(':')?;
    if rest == "b" {
        return Some(Target::Broadcast);
    }
    if let Some(n) = rest.strip_prefix("b:") {
        return n.parse::<u32>().is_ok().then_some(Target::Broadcast);
    }
    if let Some(user) = rest.strip_prefix("u:") {
        return Some(Target::User(user));
    }
    rest.strip_prefix("t:").map(Target::Topic)
}

pub fn user_channel(prefix: &str, user: &str) -> String {
    format!("{prefix}:u:{user}")
}

/// `n` broadcast channels for a sharded cluster, the k-th one in the k-th
/// n-th of the slot space, so that with masters holding balanced slot
/// ranges the broadcasts spread evenly over them. Every node computes the
/// same names.
pub fn broadcast_channels(prefix: &str, n: usize) -> Vec<String> {
    use super::slots::{key_slot, SLOTS};
    let n = n.clamp(1, SLOTS);
    (0..n)
        .map(|k| {
            let (lo, hi) = (k * SLOTS / n, (k + 1) * SLOTS / n);
            (0u32..)
                .map(|j| format!("{prefix}:b:{j}"))
                .find(|c| (lo..hi).contains(&usize::from(key_slot(c.as_bytes()))))
                .unwrap_or_else(|| format!("{prefix}:b:{k}"))
        })
        .collect()
}

/// The header of a sharded message: who sent it and its place in the
/// channel's stream from that sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    pub node: u64,
    pub epoch: u32,
    pub seq: u64,
}

const ID_LEN: usize = 8 + 4 + 8;

/// Id + payload, for sharded pub/sub.
pub fn encode_sharded(id: MessageId, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ID_LEN + payload.len());
    out.extend_from_slice(&id.node.to_be_bytes());
    out.extend_from_slice(&id.epoch.to_be_bytes());
    out.extend_from_slice(&id.seq.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a sharded message; None if too short.
pub fn decode_sharded(bytes: &[u8]) -> Option<(MessageId, &[u8])> {
    if bytes.len() < ID_LEN {
        return None;
    }
    let (head, payload) = bytes.split_at(ID_LEN);
    let node = u64::from_be_bytes(head[0..8].try_into().ok()?);
    let epoch = u32::from_be_bytes(head[8..12].try_into().ok()?);
    let seq = u64::from_be_bytes(head[12..20].try_into().ok()?);
    Some((MessageId { node, epoch, seq }, payload))
}

/// Node id + payload.
pub fn encode_message(node: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a message into (node id, payload); None if too short.
pub fn decode_message(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (id, payload) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*id), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip() {
        let c = topic_channel("wsgate", "room:1/a");
        assert_eq!(parse_channel("wsgate", &c), Some(Target::Topic("room:1/a")));
        assert_eq!(
            parse_channel("wsgate", &broadcast_channel("wsgate")),
            Some(Target::Broadcast)
        );
        assert_eq!(parse_channel("other", &c), None);
        assert_eq!(parse_channel("wsgate", "wsgatex:b"), None);
        assert_eq!(parse_channel("wsgate", "wsgate:x"), None);
        assert_eq!(
            parse_channel("wsgate", &user_channel("wsgate", "u:1")),
            Some(Target::User("u:1"))
        );
        assert_eq!(
            parse_channel("wsgate", "wsgate:b:12"),
            Some(Target::Broadcast)
        );
        assert_eq!(parse_channel("wsgate", "wsgate:b:x"), None);
    }

    #[test]
    fn broadcast_channels_spread_over_the_slot_space() {
        use crate::cluster::slots::key_slot;
        let chans = broadcast_channels("wsgate", 16);
        assert_eq!(chans.len(), 16);
        for (k, c) in chans.iter().enumerate() {
            let slot = usize::from(key_slot(c.as_bytes()));
            assert_eq!(slot * 16 / 16_384, k, "{c} in slot {slot}");
            assert_eq!(parse_channel("wsgate", c), Some(Target::Broadcast));
        }
    }

    #[test]
    fn sharded_messages_round_trip() {
        let id = MessageId {
            node: 9,
            epoch: 3,
            seq: u64::MAX,
        };
        let m = encode_sharded(id, b"{}");
        assert_eq!(decode_sharded(&m), Some((id, &b"{}"[..])));
        assert_eq!(decode_sharded(&m[..19]), None);
    }

    #[test]
    fn messages_round_trip() {
        let m = encode_message(0xDEAD_BEEF_0000_0001, br#"{"a":1}"#);
        assert_eq!(
            decode_message(&m),
            Some((0xDEAD_BEEF_0000_0001, &br#"{"a":1}"#[..]))
        );
        assert_eq!(decode_message(b"short"), None);
    }
}
