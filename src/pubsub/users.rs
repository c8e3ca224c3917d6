//! Messages to a user: every connection authenticated with a token whose
//! `sub` is U joins U's reserved topic, so user messages travel like topic
//! messages — locally through the topic directory, between nodes only to
//! nodes that hold a connection of U (routing by interest).
//!
//! Owns the reserved topic names (they start with a NUL byte, which no
//! client may use in a topic) and the frame a user message becomes:
//! `{"type":"message","user":U,"payload":…}`.

use super::text;

/// Reserved topics start with this; clients cannot name such a topic.
pub const RESERVED: char = '\0';
const USER_PREFIX: &str = "\0u:";

/// The reserved topic of user `user`.
pub fn user_topic(user: &str) -> String {
    format!("{USER_PREFIX}{user}")
}

/// The user whose reserved topic this is.
pub fn user_of(topic: &str) -> Option<&str> {
    topic.strip_prefix(USER_PREFIX)
}

/// True for names only the server may use.
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with(RESERVED)
}

/// The text of a message on `topic`: a user message for a user's topic, a
/// topic message otherwise.
pub fn message_text(topic: &str, payload: &[u8]) -> Vec<u8> {
    let Some(user) = user_of(topic) else {
        return text::message_text(topic, payload);
    };
    let mut out = Vec::with_capacity(40 + user.len() + payload.len());
    out.extend_from_slice(br#"{"type":"message","user":"#);
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, user);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// Where `POST /publish` sends, from its query: `topic=T`, or `user=U`
/// (U's reserved topic). The error is the reply's message (HTTP 400).
pub fn publish_target(query: &str, max_topic_bytes: usize) -> Result<String, String> {
    let mut topic = None;
    let mut user = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "topic" => topic = Some(v.into_owned()),
            "user" => user = Some(v.into_owned()),
            _ => {}
        }
    }
    let check = |name: &str, v: &str| {
        if v.is_empty() || v.len() > max_topic_bytes {
            Err(format!("{name} must be 1 to {max_topic_bytes} bytes"))
        } else {
            Ok(())
        }
    };
    match (topic, user) {
        (Some(_), Some(_)) => Err("give 'topic' or 'user', not both".into()),
        (None, None) => Err("missing query parameter 'topic' (or 'user')".into()),
        (Some(t), None) => {
            check("topic", &t)?;
            if is_reserved(&t) {
                return Err("topic names starting with NUL are reserved".into());
            }
            Ok(t)
        }
        (None, Some(u)) => {
            check("user", &u)?;
            Ok(user_topic(&u))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_targets() {
        assert_eq!(publish_target("topic=a%2Fb", 8), Ok("a/b".into()));
        assert_eq!(publish_target("user=al%20ice", 8), Ok(user_topic("al ice")));
        assert!(publish_target("topic=a&user=b", 8).is_err());
        assert!(publish_target("", 8).is_err());
        assert!(publish_target("topic=", 8).is_err());
        assert!(publish_target("user=123456789", 8).is_err());
        assert!(publish_target("topic=%00u:alice", 16).is_err());
    }

    #[test]
    fn user_topics() {
        let t = user_topic("alice\"");
        assert!(is_reserved(&t));
        assert_eq!(user_of(&t), Some("alice\""));
        assert_eq!(user_of("alice"), None);
        assert_eq!(
            message_text(&t, b"1"),
            br#"{"type":"message","user":"alice\"","payload":1}"#
        );
        assert_eq!(
            message_text("news", b"1"),
            br#"{"type":"message","topic":"news","payload":1}"#
        );
    }
}
