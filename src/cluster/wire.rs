//! What goes over Redis: channel names and the message format.
//!
//! Channel `{prefix}:t:{topic}` carries publishes to a topic, `{prefix}:b`
//! broadcasts. A message is the sending node's id (8 bytes, big-endian)
//! followed by the raw JSON payload, so each node can skip its own messages
//! (it already delivered them locally) and every subscriber gets a publish
//! exactly once. Pure code; no Redis here.

/// Where a cluster message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Topic(&'a str),
    Broadcast,
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
    rest.strip_prefix("t:").map(Target::Topic)
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
