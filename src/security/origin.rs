//! The Origin allow-list (`--allowed-origin`, exact or `*.example.com`).
//!
//! Browsers send `Origin` on every WebSocket handshake, so a page on another
//! site cannot open a connection with the user's cookies unless its origin is
//! listed. Non-browser clients usually send none; whether that is allowed is
//! a setting (allowed by default).

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Empty: every origin is allowed.
    allowed: Vec<String>,
    pub allow_missing: bool,
}

impl OriginPolicy {
    pub fn new(allowed: &[String], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            allowed: allowed
                .iter()
                .map(|o| o.trim().to_ascii_lowercase())
                .collect(),
            allow_missing,
        }
    }

    /// Whether a handshake with this `Origin` header may proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return self.allow_missing || self.allowed.is_empty();
        };
        if self.allowed.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.allowed.iter().any(|pat| matches(pat, &origin))
    }
}

/// `pat` is `scheme://host[:port]`, `host`, or with `*.` before the host for
/// any subdomain (not the bare domain itself).
fn matches(pat: &str, origin: &str) -> bool {
    let (pat_scheme, pat_host) = split_scheme(pat);
    let (scheme, host) = split_scheme(origin);
    if let Some(ps) = pat_scheme {
        if Some(ps) != scheme {
            return false;
        }
    }
    match pat_host.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => host == pat_host,
    }
}

fn split_scheme(s: &str) -> (Option<&str>, &str) {
    match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str], missing: bool) -> OriginPolicy {
        let v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(&v, missing)
    }

    #[test]
    fn exact_and_wildcard() {
        let p = policy(&["https://app.example.com", "*.example.org"], true);
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(
            !p.allows(Some("http://app.example.com")),
            "scheme matters when given"
        );
        assert!(!p.allows(Some("https://evil.com")));
        assert!(p.allows(Some("https://a.example.org")));
        assert!(p.allows(Some("http://deep.a.example.org")));
        assert!(
            !p.allows(Some("https://example.org")),
            "wildcard needs a subdomain"
        );
        assert!(!p.allows(Some("https://badexample.org")));
        assert!(!p.allows(Some("null")));
    }

    #[test]
    fn missing_origin() {
        assert!(policy(&["https://a.com"], true).allows(None));
        assert!(!policy(&["https://a.com"], false).allows(None));
        assert!(policy(&[], true).allows(Some("https://anything")));
    }
}
