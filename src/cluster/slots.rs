//! Redis Cluster's key space as wsgate sees it: which of the 16,384 hash
//! slots a channel lives in, and which master owns each slot.
//!
//! Owns the slot function (CRC16/XMODEM of the key, or of its `{hash tag}`,
//! exactly as Redis computes it), the seed list parser, and the topology
//! table read from `CLUSTER SLOTS`. Asking Redis is done by the caller's
//! connection; parsing its answer is pure.

use std::collections::HashMap;

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// The slot of a key (a sharded channel name), as Redis computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// The part between the first `{` and the next `}`, when not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Why the `--redis-cluster` seed list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("no seed nodes given (expected redis://host:port,redis://host:port,...)")]
    Empty,
    #[error("seed {0:?}: expected redis://host:port (no password, TLS or database)")]
    Bad(String),
}

/// Parses `redis://h1:p1,redis://h2:p2` into `host:port` addresses.
pub fn parse_seeds(list: &str) -> Result<Vec<String>, SeedError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let rest = item.strip_prefix("redis://").unwrap_or(item);
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| SeedError::Bad(item.into()))?;
        if host.is_empty() || host.contains(['@', '/']) || port.parse::<u16>().is_err() {
            return Err(SeedError::Bad(item.into()));
        }
        out.push(format!("{host}:{port}"));
    }
    if out.is_empty() {
        return Err(SeedError::Empty);
    }
    Ok(out)
}

/// Which master owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Index into `masters` per slot; `NONE` where no master serves it.
    owner: Vec<u16>,
    masters: Vec<String>,
}

const NONE: u16 = u16::MAX;

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            owner: vec![NONE; SLOTS],
            masters: Vec::new(),
        }
    }
}

impl Topology {
    /// The master (`host:port`) serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i)).map(String::as_str)
    }

    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// True when every slot has a master.
    pub fn is_complete(&self) -> bool {
        !self.masters.is_empty() && self.owner.iter().all(|o| *o != NONE)
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id..],
    /// replicas..], ..]`. `asked` stands in for an empty host (a node that
    /// announces no address answers for the one it was reached on).
    pub fn from_cluster_slots(reply: &Value, asked: &str) -> Option<Topology> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let mut t = Topology::default();
        let mut index: HashMap<String, u16> = HashMap::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return None;
            };
            let (start, end) = (int(items.first()?)?, int(items.get(1)?)?);
            let Value::Array(master) = items.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_string()
            } else {
                host
            };
            let port = int(master.get(1)?)?;
            let addr = format!("{host}:{port}");
            let next = t.masters.len() as u16;
            let i = *index.entry(addr.clone()).or_insert_with(|| {
                t.masters.push(addr);
                next
            });
            if start > end || end as usize >= SLOTS {
                return None;
            }
            for s in start..=end {
                t.owner[s as usize] = i;
            }
        }
        Some(t)
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), 3443);
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"foo{}bar"), 14292);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn seeds() {
        assert_eq!(
            parse_seeds("redis://127.0.0.1:7000, redis://h:7001/").unwrap(),
            vec!["127.0.0.1:7000", "h:7001"]
        );
        assert!(parse_seeds("").is_err());
        assert!(parse_seeds("redis://pw@h:1").is_err());
        assert!(parse_seeds("redis://h").is_err());
    }

    #[test]
    fn reads_cluster_slots() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        let t = Topology::from_cluster_slots(&reply, "seed:7001").unwrap();
        assert!(t.is_complete());
        assert_eq!(t.owner(0), Some("10.0.0.1:7000"));
        assert_eq!(t.owner(16383), Some("seed:7001"));
        assert_eq!(t.masters().len(), 2);
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            node("a", 1),
        ])]);
        let p = Topology::from_cluster_slots(&partial, "a:1").unwrap();
        assert!(!p.is_complete());
        assert_eq!(p.owner(11), None);
    }
}
