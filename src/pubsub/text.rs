//! The texts a publish becomes on the wire: what every subscriber of a
//! topic, every receiver of a broadcast, receives. Built once per publish
//! and encoded once (see [`super::publish`]).

use std::io::Write as _;

/// Appends `s` as a JSON string.
pub(crate) fn json_string(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"type":"message","topic":T,"payload":P}`
pub fn message_text(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + topic.len() + payload.len());
    out.extend_from_slice(br#"{"type":"message","topic":"#);
    json_string(&mut out, topic);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// `{"type":"message","topic":T,"payload":P,"offset":O,"epoch":"E"}`: a
/// message of a topic with history.
pub fn message_text_at(topic: &str, payload: &[u8], offset: u64, epoch: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + topic.len() + payload.len() + epoch.len());
    out.extend_from_slice(br#"{"type":"message","topic":"#);
    json_string(&mut out, topic);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload);
    let _ = write!(out, r#","offset":{offset},"epoch":"#);
    json_string(&mut out, epoch);
    out.push(b'}');
    out
}

/// `{"type":"broadcast","payload":P}`
pub fn broadcast_text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload.len());
    out.extend_from_slice(br#"{"type":"broadcast","payload":"#);
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// `{"type":"broadcastResult","payload":P,"listenCount":N}`
pub fn broadcast_result_text(payload: &[u8], listen_count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + payload.len());
    out.extend_from_slice(br#"{"type":"broadcastResult","payload":"#);
    out.extend_from_slice(payload);
    let _ = write!(out, r#","listenCount":{listen_count}}}"#);
    out
}
