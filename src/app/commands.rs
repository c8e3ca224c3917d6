//! The client protocol of the pub/sub app (JSON text frames), as pure code:
//! parsing a client's command and building the server's reply texts.
//!
//! Owns the wire shapes of `../shared/design.md`. Payloads are never
//! re-serialised: `payload` is kept as the raw JSON text the client sent and
//! spliced into outgoing messages byte for byte. This module must not know
//! about connections, topics tables or workers.

use std::borrow::Cow;
use std::io::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed client command, borrowing from the message text.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Send the whole message text back.
    Echo,
    Broadcast {
        payload: &'a [u8],
    },
    Subscribe {
        topic: Cow<'a, str>,
        /// Resume: the position of the last message the client saw.
        since: Option<Since<'a>>,
    },
    Unsubscribe {
        topic: Cow<'a, str>,
    },
    Publish {
        topic: Cow<'a, str>,
        payload: &'a [u8],
    },
    /// A message to every connection of a user (needs the token's `users`).
    PublishUser {
        user: Cow<'a, str>,
        payload: &'a [u8],
    },
    /// Application-level heartbeat.
    Ping,
    /// A fresh token for a connection whose token is about to expire.
    Refresh {
        token: Cow<'a, str>,
    },
    /// Cluster-wide subscriptions of a topic (and, with `users`, who).
    Presence {
        topic: Cow<'a, str>,
        users: bool,
    },
}

/// `"since":{"offset":O,"epoch":"E"}` of a resuming subscribe.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct Since<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// Why a command was refused. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("message is not a JSON object: {0}")]
    Malformed(String),
    /// A known field holds the wrong JSON type, e.g. `"topic":5`.
    #[error("field '{field}' must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("missing field '{0}'")]
    MissingField(&'static str),
    #[error("unknown type '{0}'")]
    UnknownType(String),
    #[error("topic must be 1 to {0} bytes")]
    BadTopic(usize),
    #[error("topic names starting with NUL are reserved")]
    ReservedTopic,
    #[error("too many subscriptions (limit {0})")]
    TooManySubscriptions(usize),
    #[error("binary messages are not part of this protocol; send JSON text")]
    Binary,
    #[error("not allowed to {0} topic '{1}'")]
    Forbidden(&'static str, String),
    #[error("refresh refused: {0}")]
    Unauthorized(String),
    #[error("not allowed to broadcast")]
    BroadcastForbidden,
    #[error("too many {0}; slow down")]
    RateLimited(&'static str),
    #[error("the server holds as many {0} as it may; try again later")]
    ServerFull(&'static str),
    #[error("cannot answer now: {0}")]
    Unavailable(String),
}

impl CommandError {
    /// The numeric `code` of the error reply (HTTP-like, documented in README).
    pub fn code(&self) -> u16 {
        match self {
            CommandError::Malformed(_)
            | CommandError::WrongType { .. }
            | CommandError::MissingField(_) => 400,
            CommandError::UnknownType(_) => 404,
            CommandError::BadTopic(_) => 413,
            CommandError::ReservedTopic => 403,
            CommandError::Binary => 415,
            CommandError::TooManySubscriptions(_)
            | CommandError::RateLimited(_)
            | CommandError::ServerFull(_) => 429,
            CommandError::Forbidden(..) | CommandError::BroadcastForbidden => 403,
            CommandError::Unauthorized(_) => 401,
            CommandError::Unavailable(_) => 503,
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    since: Option<Since<'a>>,
    users: Option<bool>,
}

/// Parses one text message. `max_topic` caps topic names in bytes.
pub fn parse(text: &[u8], max_topic: usize) -> Result<Command<'_>, CommandError> {
    let wire: Wire<'_> = serde_json::from_slice(text).map_err(|e| explain(text, e))?;
    let kind = wire.kind.ok_or(CommandError::MissingField("type"))?;
    let check_topic = |t| checked_topic(t, max_topic);
    Ok(match kind.as_ref() {
        "echo" => Command::Echo,
        "ping" => Command::Ping,
        "refresh" => Command::Refresh {
            token: wire.token.ok_or(CommandError::MissingField("token"))?,
        },
        "broadcast" => Command::Broadcast {
            payload: payload(wire.payload)?,
        },
        "subscribe" => Command::Subscribe {
            topic: check_topic(wire.topic)?,
            since: wire.since,
        },
        "unsubscribe" => Command::Unsubscribe {
            topic: check_topic(wire.topic)?,
        },
        "presence" => Command::Presence {
            topic: check_topic(wire.topic)?,
            users: wire.users.unwrap_or(false),
        },
        "publish" => match (wire.topic, wire.user) {
            (None, Some(user)) => {
                if user.is_empty() || user.len() > max_topic {
                    return Err(CommandError::BadTopic(max_topic));
                }
                Command::PublishUser {
                    user,
                    payload: payload(wire.payload)?,
                }
            }
            (Some(_), Some(_)) => {
                return Err(CommandError::Malformed(
                    "give 'topic' or 'user', not both".into(),
                ))
            }
            (topic, None) => Command::Publish {
                topic: check_topic(topic)?,
                payload: payload(wire.payload)?,
            },
        },
        other => return Err(CommandError::UnknownType(other.chars().take(64).collect())),
    })
}

/// Turns a parse failure into what the client got wrong. serde's message
/// ("invalid type: integer `5`, expected a string") names neither the field
/// nor the object, so on this (cold) path the text is parsed again as a
/// generic value to find the field with the wrong type.
fn explain(text: &[u8], err: serde_json::Error) -> CommandError {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(text) else {
        return CommandError::Malformed(err.to_string());
    };
    // Every field of `Wire` that must be a string (payload may be any JSON).
    for field in ["type", "topic", "token"] {
        match fields.get(field) {
            None | Some(serde_json::Value::String(_)) => {}
            Some(other) => {
                return CommandError::WrongType {
                    field,
                    expected: "a string",
                    got: json_kind(other),
                }
            }
        }
    }
    if let Some(since) = fields.get("since") {
        let ok = since.get("offset").is_some_and(serde_json::Value::is_u64)
            && since.get("epoch").is_some_and(serde_json::Value::is_string);
        if !ok {
            return CommandError::WrongType {
                field: "since",
                expected: r#"{"offset":<unsigned integer>,"epoch":<string>}"#,
                got: json_kind(since),
            };
        }
    }
    CommandError::Malformed(err.to_string())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn checked_topic(t: Option<Cow<'_, str>>, max_topic: usize) -> Result<Cow<'_, str>, CommandError> {
    let t = t.ok_or(CommandError::MissingField("topic"))?;
    if t.is_empty() || t.len() > max_topic {
        return Err(CommandError::BadTopic(max_topic));
    }
    // Names starting with NUL are the server's own (users' topics).
    if crate::pubsub::users::is_reserved(&t) {
        return Err(CommandError::ReservedTopic);
    }
    Ok(t)
}

fn payload(p: Option<&RawValue>) -> Result<&[u8], CommandError> {
    p.map(|r| r.get().as_bytes())
        .ok_or(CommandError::MissingField("payload"))
}

use crate::pubsub::text::json_string;
// The texts deliveries carry are pub/sub's; replies quote them.
pub use crate::pubsub::text::{
    broadcast_result_text, broadcast_text, message_text, message_text_at,
};

/// `{"type":"subscribed","topic":T,"recovered":R,"epoch":"E","offset":L}`
/// for a topic with history (`recovered` only when the client resumed).
pub fn subscribed_text_at(topic: &str, recovered: Option<bool>, epoch: &str, last: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + topic.len() + epoch.len());
    out.extend_from_slice(br#"{"type":"subscribed","topic":"#);
    json_string(&mut out, topic);
    if let Some(r) = recovered {
        let _ = write!(out, r#","recovered":{r}"#);
    }
    out.extend_from_slice(br#","epoch":"#);
    json_string(&mut out, epoch);
    let _ = write!(out, r#","offset":{last}}}"#);
    out
}

/// `{"type":"subscribed","topic":T,"recovered":false}`: a resume asked of a
/// topic that keeps no history.
pub fn subscribed_unrecovered_text(topic: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + topic.len());
    out.extend_from_slice(br#"{"type":"subscribed","topic":"#);
    json_string(&mut out, topic);
    out.extend_from_slice(br#","recovered":false}"#);
    out
}

/// `{"type":"subscribed","topic":T}` or `unsubscribed`.
pub fn subscription_text(subscribed: bool, topic: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + topic.len());
    out.extend_from_slice(if subscribed {
        br#"{"type":"subscribed","topic":"#
    } else {
        br#"{"type":"unsubscribed","topic":"#
    });
    json_string(&mut out, topic);
    out.push(b'}');
    out
}

/// `{"type":"presence","topic":T,"subscriptions":N,...}`: a presence answer
/// (`answer` is the same object `GET /presence` returns) as a client reply.
pub fn presence_text(mut answer: serde_json::Value) -> Vec<u8> {
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("type".into(), "presence".into());
    }
    answer.to_string().into_bytes()
}

/// `{"type":"unsubscribed","topic":T,"reason":R}`: the server removed the
/// subscription (e.g. a refreshed token no longer allows the topic).
pub fn revoked_text(topic: &str, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + topic.len() + reason.len());
    out.extend_from_slice(br#"{"type":"unsubscribed","topic":"#);
    json_string(&mut out, topic);
    out.extend_from_slice(br#","reason":"#);
    json_string(&mut out, reason);
    out.push(b'}');
    out
}

/// `{"type":"refreshed","exp":N}`
pub fn refreshed_text(exp: u64) -> Vec<u8> {
    format!(r#"{{"type":"refreshed","exp":{exp}}}"#).into_bytes()
}

/// `{"type":"pong"}`
pub const PONG_TEXT: &[u8] = br#"{"type":"pong"}"#;

/// `{"type":"error","code":C,"message":M}`
pub fn error_text(err: &CommandError) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    let _ = write!(out, r#"{{"type":"error","code":{},"message":"#, err.code());
    json_string(&mut out, &err.to_string());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command<'_>, CommandError> {
        parse(s.as_bytes(), 256)
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(p(r#"{"type":"echo","payload":1}"#), Ok(Command::Echo));
        assert_eq!(p(r#"{"type":"ping"}"#), Ok(Command::Ping));
        assert_eq!(
            p(r#"{"type":"presence","topic":"lobby","users":true}"#),
            Ok(Command::Presence {
                topic: "lobby".into(),
                users: true,
            })
        );
        assert_eq!(
            p(r#"{"type":"subscribe","topic":"news"}"#),
            Ok(Command::Subscribe {
                topic: "news".into(),
                since: None,
            })
        );
        assert_eq!(
            p(r#"{"type":"subscribe","topic":"n","since":{"offset":7,"epoch":"e1"}}"#),
            Ok(Command::Subscribe {
                topic: "n".into(),
                since: Some(Since {
                    offset: 7,
                    epoch: "e1".into()
                }),
            })
        );
        let e =
            p(r#"{"type":"subscribe","topic":"n","since":{"offset":-1,"epoch":"e"}}"#).unwrap_err();
        assert_eq!(e.code(), 400);
        assert!(e.to_string().starts_with("field 'since' must be"), "{e}");
        assert_eq!(
            p(r#"{"type":"unsubscribe","topic":"a\"b"}"#),
            Ok(Command::Unsubscribe {
                topic: "a\"b".into()
            })
        );
        assert_eq!(
            p(r#"{"type":"broadcast","payload":{"x":[1, 2]}}"#),
            Ok(Command::Broadcast {
                payload: br#"{"x":[1, 2]}"#
            })
        );
    }

    #[test]
    fn payload_is_passed_through_byte_for_byte() {
        // Whitespace, key order, number spelling and escapes survive.
        let raw = r#"{ "b" :1.50e3, "a":"\u00e9" }"#;
        let text = format!(r#"{{"topic":"t","payload":{raw},"type":"publish"}}"#);
        let cmd = parse(text.as_bytes(), 256).unwrap();
        let Command::Publish { topic, payload } = cmd else {
            panic!("not a publish: {cmd:?}")
        };
        assert_eq!(payload, raw.as_bytes());
        let msg = message_text(&topic, payload);
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            format!(r#"{{"type":"message","topic":"t","payload":{raw}}}"#)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p("not json").unwrap_err().code(), 400);
        assert_eq!(p("[1,2]").unwrap_err().code(), 400);
        assert_eq!(
            p(r#"{"topic":"x"}"#),
            Err(CommandError::MissingField("type"))
        );
        assert_eq!(p(r#"{"type":7}"#).unwrap_err().code(), 400);
        // A field of the wrong type is named, with what it should be.
        let e = p(r#"{"type":"subscribe","topic":5}"#).unwrap_err();
        assert_eq!(e.code(), 400);
        assert_eq!(
            e.to_string(),
            "field 'topic' must be a string, got a number"
        );
        assert_eq!(
            p(r#"{"type":["publish"],"topic":"t","payload":1}"#)
                .unwrap_err()
                .to_string(),
            "field 'type' must be a string, got an array"
        );
        assert_eq!(
            p(r#"{"type":"refresh","token":{}}"#)
                .unwrap_err()
                .to_string(),
            "field 'token' must be a string, got an object"
        );
        assert!(p("[1,2]")
            .unwrap_err()
            .to_string()
            .starts_with("message is not a JSON object"));
        assert_eq!(p(r#"{"type":"dance"}"#).unwrap_err().code(), 404);
        assert_eq!(
            p(r#"{"type":"subscribe"}"#),
            Err(CommandError::MissingField("topic"))
        );
        assert_eq!(
            p(r#"{"type":"subscribe","topic":""}"#).unwrap_err().code(),
            413
        );
        let long = format!(r#"{{"type":"subscribe","topic":"{}"}}"#, "x".repeat(257));
        assert_eq!(p(&long).unwrap_err().code(), 413);
        assert_eq!(
            p(r#"{"type":"publish","topic":"t"}"#),
            Err(CommandError::MissingField("payload"))
        );
        assert_eq!(
            p(r#"{"type":"broadcast"}"#),
            Err(CommandError::MissingField("payload"))
        );
    }

    #[test]
    fn reply_shapes_are_valid_json() {
        let texts = [
            message_text("a\"b", b"[1]"),
            broadcast_text(b"\"hi\""),
            broadcast_result_text(b"\"hi\"", 42),
            subscription_text(true, "t\n"),
            subscription_text(false, "t"),
            message_text_at("t", b"{}", 3, "ep\"1"),
            subscribed_text_at("t", Some(true), "e", 9),
            subscribed_text_at("t", None, "e", 0),
            subscribed_unrecovered_text("t"),
            PONG_TEXT.to_vec(),
            error_text(&CommandError::UnknownType("x\"y".into())),
        ];
        for t in texts {
            let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
            assert!(v["type"].is_string(), "{}", String::from_utf8_lossy(&t));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&broadcast_result_text(b"{\"k\":1}", 7)).unwrap();
        assert_eq!(v["listenCount"], 7);
        assert_eq!(v["payload"]["k"], 1);
        let v: serde_json::Value =
            serde_json::from_slice(&error_text(&CommandError::Binary)).unwrap();
        assert_eq!(v["code"], 415);
    }
}
