//! The admin listener's HTTP/1.1, as pure code: reading one request out of
//! the bytes received so far, and writing one response.
//!
//! Owns the wire rules of the admin port: one request per connection
//! (`Connection: close`), a bounded head, a body only with `Content-Length`,
//! `Expect: 100-continue`. No sockets, no routing.

/// Largest request head accepted (the admin API needs a request line and a
/// few headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines in one request.
const MAX_HEADERS: usize = 32;

/// A request whose head has arrived (the body may still be on its way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// The bytes the head took in the buffer.
    pub len: usize,
    /// `Content-Length`, 0 without one.
    pub body_len: u64,
    /// The client waits for `100 Continue` before sending its body.
    pub expects_continue: bool,
    /// The value of `Authorization`, if any.
    pub authorization: Option<String>,
}

/// Why a request head is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("send the body with Content-Length (chunked bodies are not accepted)")]
    LengthRequired,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
            HeadError::LengthRequired => 411,
        }
    }
}

/// Parses the head at the start of `buf`: None while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        len,
        body_len: 0,
        expects_continue: false,
        authorization: None,
    };
    let mut seen_length = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?;
            if seen_length && n != head.body_len {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            seen_length = true;
            head.body_len = n;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expects_continue = value.eq_ignore_ascii_case("100-continue");
        } else if h.name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        }
    }
    Ok(Some(head))
}

/// A complete response, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub extra: Option<(&'static str, &'static str)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: "application/json",
            extra: None,
            body: body.into(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": message }).to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Response {
        self.extra = Some((name, value));
        self
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len()
            )
            .as_bytes(),
        );
        if let Some((name, value)) = self.extra {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// What a client that sent `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_publish_head() {
        let raw = b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                    Expect: 100-continue\r\nAuthorization: Bearer t\r\n\r\n123";
        let h = parse_head(raw).unwrap().unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/publish"));
        assert_eq!((h.query.as_str(), h.body_len), ("topic=a", 3));
        assert!(h.expects_continue);
        assert_eq!(h.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(&raw[h.len..], b"123");
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let long = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        let chunked = b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked), Err(HeadError::LengthRequired));
        let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(parse_head(two), Err(HeadError::Malformed(_))));
    }
}
