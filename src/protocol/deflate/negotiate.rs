//! permessage-deflate negotiation (RFC 7692 §5, §7.1): parsing the client's
//! `Sec-WebSocket-Extensions` offers and writing the server's answer.
//!
//! Owns the header grammar (RFC 6455 §9.1: a comma list of extensions, each
//! with `;`-separated parameters whose values are tokens or quoted strings)
//! and the parameter rules of permessage-deflate. A header that does not
//! parse, or an offer with unknown, repeated or out-of-range parameters,
//! is never an error: the offer is declined and the connection goes on
//! without compression, as RFC 7692 §5 lets a server decline any offer.
//!
//! The server always answers `server_no_context_takeover;
//! client_no_context_takeover`: neither side keeps a compression context
//! between messages, so a connection owns no compressor or decompressor
//! state and the server can use per-worker scratch state, reset per message
//! (§7.1.1.1 and §7.1.1.2 let the server add both parameters on its own).

/// The extension's registered name.
pub const EXTENSION: &str = "permessage-deflate";

/// What an accepted offer means for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The largest LZ77 window (as a power of two, 8..=15) the server's
    /// messages may use: 15 unless the client asked for less with
    /// `server_max_window_bits`.
    pub server_max_window_bits: u8,
    /// Whether the client's offer named `server_max_window_bits` (then the
    /// answer must repeat it).
    pub window_requested: bool,
}

/// The default (and largest) window of RFC 7692 §7.1.2.
pub const MAX_WINDOW_BITS: u8 = 15;

/// Picks the first acceptable permessage-deflate offer from the values of
/// every `Sec-WebSocket-Extensions` line of a request (several lines are
/// one comma list, RFC 9110 §5.3). Returns `None` when nothing acceptable
/// was offered or the header is malformed.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    for value in header_values {
        // A line that does not parse is skipped whole; an offer that does
        // not parse is skipped alone.
        let Some(offers) = split_list(value) else {
            continue;
        };
        for offer in offers {
            let Some((name, params)) = parse_offer(offer) else {
                continue;
            };
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            if let Some(agreed) = accept(&params) {
                return Some(agreed);
            }
        }
    }
    None
}

/// Appends the `Sec-WebSocket-Extensions` response header line for `agreed`.
pub fn write_response_header(agreed: Agreed, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
    out.extend_from_slice(EXTENSION.as_bytes());
    out.extend_from_slice(b"; server_no_context_takeover; client_no_context_takeover");
    if agreed.window_requested {
        out.extend_from_slice(b"; server_max_window_bits=");
        out.extend_from_slice(agreed.server_max_window_bits.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Checks one permessage-deflate offer's parameters (RFC 7692 §7.1).
/// Unknown or repeated parameters, or bad values, decline the offer (§7.1).
fn accept(params: &[(&str, Option<&str>)]) -> Option<Agreed> {
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: MAX_WINDOW_BITS,
        window_requested: false,
    };
    for &(name, value) in params {
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => {
                value.is_none().then_some(())?;
                0
            }
            "client_no_context_takeover" => {
                value.is_none().then_some(())?;
                1
            }
            "server_max_window_bits" => {
                agreed.server_max_window_bits = window_bits(value?)?;
                agreed.window_requested = true;
                2
            }
            "client_max_window_bits" => {
                // A hint that the client can limit its window: the server
                // inflates with the full window, so any value works; only
                // its syntax is checked.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(agreed)
}

/// A window size value: 8..=15 in decimal without leading zeros (§7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Splits a header value at the commas outside quoted strings. `None` when
/// a quoted string is not closed.
fn split_list(value: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let bytes = value.as_bytes();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return None;
    }
    items.push(&value[start..]);
    // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
    Some(
        items
            .into_iter()
            .filter(|s| !s.trim_matches([' ', '\t']).is_empty())
            .collect(),
    )
}

/// A parameter: its name, and its value with any quotes removed.
type Param<'a> = (&'a str, Option<&'a str>);

/// Parses `name *( ";" param [ "=" value ] )`. `None` when malformed.
fn parse_offer(offer: &str) -> Option<(&str, Vec<Param<'_>>)> {
    let ows: &[char] = &[' ', '\t'];
    let mut parts = split_params(offer)?.into_iter();
    let name = parts.next()?.trim_matches(ows);
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim_matches(ows), Some(v.trim_matches(ows))),
            None => (p.trim_matches(ows), None),
        };
        if !is_token(k) {
            return None;
        }
        let v = match v {
            None => None,
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                // RFC 6455 §9.1: a quoted value must still be a token once
                // unquoted, so it holds no escapes worth keeping.
                let inner = &v[1..v.len() - 1];
                if !is_token(inner) {
                    return None;
                }
                Some(inner)
            }
            Some(v) if is_token(v) => Some(v),
            Some(_) => return None,
        };
        params.push((k, v));
    }
    Some((name, params))
}

/// Splits an offer at the semicolons outside quoted strings.
fn split_params(offer: &str) -> Option<Vec<&str>> {
    let bytes = offer.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                out.push(&offer[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return None;
    }
    out.push(&offer[start..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(v: &str) -> Option<Agreed> {
        negotiate([v])
    }

    fn full() -> Option<Agreed> {
        Some(Agreed {
            server_max_window_bits: 15,
            window_requested: false,
        })
    }

    #[test]
    fn accepts_the_offers_real_clients_send() {
        // Browsers, Python websockets, Node ws.
        assert_eq!(neg("permessage-deflate; client_max_window_bits"), full());
        assert_eq!(neg("permessage-deflate"), full());
        assert_eq!(
            neg("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15"),
            full()
        );
        assert_eq!(neg("PerMessage-Deflate ; Client_Max_Window_Bits"), full());
    }

    #[test]
    fn honours_server_max_window_bits() {
        for bits in 8..=15u8 {
            let a = neg(&format!(
                "permessage-deflate; server_max_window_bits={bits}"
            ))
            .unwrap();
            assert_eq!(a.server_max_window_bits, bits);
            assert!(a.window_requested);
            let mut out = Vec::new();
            write_response_header(a, &mut out);
            let line = String::from_utf8(out).unwrap();
            assert!(
                line.ends_with(&format!("; server_max_window_bits={bits}\r\n")),
                "{line}"
            );
        }
        // Quoted values are tokens once unquoted (RFC 6455 §9.1).
        assert_eq!(
            neg("permessage-deflate; server_max_window_bits=\"10\"")
                .unwrap()
                .server_max_window_bits,
            10
        );
    }

    #[test]
    fn the_answer_turns_off_context_takeover_both_ways() {
        let mut out = Vec::new();
        write_response_header(full().unwrap(), &mut out);
        assert_eq!(
            out,
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        );
    }

    #[test]
    fn bad_parameters_decline_that_offer_and_the_next_is_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=1.5",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(neg(&two).unwrap().server_max_window_bits, 12, "{two}");
        }
        // Several lines are one list.
        assert_eq!(
            negotiate([
                "x-webkit-deflate-frame",
                "permessage-deflate; client_max_window_bits"
            ]),
            full()
        );
    }

    #[test]
    fn malformed_headers_mean_no_extension() {
        for bad in [
            "",
            ",,",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate;; x",
            "perm essage-deflate",
            "permessage-deflate; =10",
            "\"permessage-deflate\"",
            "permessage-deflate; server_max_window_bits=1=2",
            "mux, deflate-stream",
            "permessage-deflate; client_max_window_bits=\u{e9}",
        ] {
            assert_eq!(neg(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        // A cheap sweep over short strings of the grammar's special bytes.
        let alphabet = [b'p', b';', b',', b'=', b'"', b'\\', b' ', b'9', b'1'];
        let mut buf = [0u8; 5];
        for mut n in 0..alphabet.len().pow(5) {
            for b in buf.iter_mut() {
                *b = alphabet[n % alphabet.len()];
                n /= alphabet.len();
            }
            let s = std::str::from_utf8(&buf).unwrap();
            let _ = neg(s);
            let _ = neg(&format!("permessage-deflate;{s}"));
        }
    }
}
