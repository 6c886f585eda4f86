//! The message index: start line, header spans, body.

use bytes::Bytes;
use memchr::memchr;

/// A byte range in the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rng {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Rng {
    fn new(start: usize, end: usize) -> Self {
        Rng {
            start: start as u32,
            end: end as u32,
        }
    }
    /// As a `usize` range.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    /// Length in bytes.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
    /// Whether empty.
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Nothing but line breaks.
    #[error("empty message")]
    Empty,
    /// No blank line after the headers.
    #[error("no end of headers")]
    NoEndOfHeaders,
    /// The first line is neither a request nor a status line.
    #[error("bad start line")]
    BadStartLine,
    /// A header line without `name:`.
    #[error("bad header line at byte {0}")]
    BadHeader(usize),
    /// Content-Length is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
    /// More than one Content-Length header (`l:` counts): which one frames the
    /// body is ambiguous, a request smuggling vector. Kamailio rejects these too.
    #[error("duplicate Content-Length")]
    DuplicateContentLength,
    /// Content-Length says more than the datagram holds.
    #[error("body shorter than Content-Length ({have} of {want} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes announced.
        want: usize,
    },
    /// A header siphon needs (Via, From, To, Call-ID, CSeq) is missing or unreadable.
    #[error("missing or bad {0} header")]
    MissingHeader(&'static str),
}

/// SIP methods; others are kept by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Prack,
    Update,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl Method {
    /// Recognises a method name (case-sensitive, as RFC 3261 says).
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"INFO" => Method::Info,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

/// Request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `METHOD uri SIP/2.0`.
    Request {
        /// The method.
        method: Method,
        /// Where its name is.
        method_rng: Rng,
        /// Where the request URI is.
        uri: Rng,
    },
    /// `SIP/2.0 code reason`.
    Response {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: Rng,
    },
}

/// Headers siphon looks at, by their full and compact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Route,
    RecordRoute,
    ContentLength,
    ContentType,
    Other,
}

impl HeaderName {
    /// Classifies a header name (case-insensitive; compact forms included).
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        if n.len() == 1 {
            return match n[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                _ => HeaderName::Other,
            };
        }
        let eq = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
        if eq("via") {
            HeaderName::Via
        } else if eq("from") {
            HeaderName::From
        } else if eq("to") {
            HeaderName::To
        } else if eq("call-id") {
            HeaderName::CallId
        } else if eq("cseq") {
            HeaderName::CSeq
        } else if eq("max-forwards") {
            HeaderName::MaxForwards
        } else if eq("contact") {
            HeaderName::Contact
        } else if eq("route") {
            HeaderName::Route
        } else if eq("record-route") {
            HeaderName::RecordRoute
        } else if eq("content-length") {
            HeaderName::ContentLength
        } else if eq("content-type") {
            HeaderName::ContentType
        } else {
            HeaderName::Other
        }
    }

    /// Whether a name written in a script (`"Via"`, `"v"`) names this header.
    pub fn matches(self, name_in_msg: &[u8], wanted: &[u8]) -> bool {
        if self != HeaderName::Other {
            return self == HeaderName::from_bytes(wanted);
        }
        canonical_name(name_in_msg).eq_ignore_ascii_case(canonical_name(wanted))
    }
}

/// One header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub name: HeaderName,
    /// The name as written.
    pub name_rng: Rng,
    /// The value, trimmed, possibly spanning folded lines.
    pub value: Rng,
    /// The whole line(s) including the final line break (for removal).
    pub line: Rng,
    /// The value continues on folded lines (its line breaks are joined
    /// when it is read); most values are one line and read as a slice.
    pub folded: bool,
}

/// A parsed SIP message: the buffer and an index into it.
#[derive(Debug, Clone)]
pub struct SipMsg {
    buf: Bytes,
    /// Request or response, with the start line's parts.
    pub kind: Kind,
    /// Header lines in order, with the headers decoded from them; shared
    /// by the message's clones (a transaction, its branches and the route
    /// each keep one), so a clone costs two reference counts, not a copy.
    pub headers: Headers,
    /// Where the headers end (the blank line starts here).
    pub headers_end: u32,
    /// The body.
    pub body: Rng,
}

/// A message's header lines in order (a slice of [`Header`]s), and the
/// headers every message's handling reads, decoded once.
#[derive(Debug, Clone)]
pub struct Headers(std::sync::Arc<Index>);

#[derive(Debug)]
struct Index {
    list: Vec<Header>,
    decoded: Decoded,
}

impl std::ops::Deref for Headers {
    type Target = [Header];
    fn deref(&self) -> &[Header] {
        &self.0.list
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.list.iter()
    }
}

/// The headers every message's handling reads, decoded once when the
/// message is parsed (each is needed for every SIP message: the checks,
/// matching, reply routing, transaction keys, the To-tag, `$fu`/`$tt`).
#[derive(Debug, Default)]
struct Decoded {
    /// The topmost Via value.
    top_via: Option<crate::Via>,
    from: Option<crate::NameAddr>,
    to: Option<crate::NameAddr>,
    cseq: Option<crate::CSeq>,
}

impl Decoded {
    fn of(msg: &SipMsg) -> Decoded {
        Decoded {
            top_via: msg.value(HeaderName::Via).and_then(|v| {
                let first = crate::views::first_item(&v);
                crate::parse_via(&v.slice(first.range()))
            }),
            from: msg
                .value(HeaderName::From)
                .and_then(|v| crate::parse_name_addr(&v)),
            to: msg
                .value(HeaderName::To)
                .and_then(|v| crate::parse_name_addr(&v)),
            cseq: msg
                .value(HeaderName::CSeq)
                .and_then(|v| crate::parse_cseq(&v)),
        }
    }
}

fn trim(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && (b[s] == b' ' || b[s] == b'\t') {
        s += 1;
    }
    while e > s && matches!(b[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

/// Parses one message (a UDP datagram, or a frame cut by [`tcp_frame_len`]).
pub fn parse(buf: Bytes) -> Result<SipMsg, ParseError> {
    parse_start(buf, false, true)
}

/// Parses as [`parse`] does, except that of several Content-Length headers
/// the first frames the body. Only for answering a message [`parse`] refused
/// with [`ParseError::DuplicateContentLength`] (a 400 needs its headers); never
/// route what this returns.
pub fn parse_for_error_reply(buf: Bytes) -> Result<SipMsg, ParseError> {
    parse_start(buf, false, false)
}

/// Parses an HTTP/1.x request as a SIP request whose version is `HTTP/1.0`
/// or `HTTP/1.1`, as Kamailio's xhttp does, so the script's header and body
/// accessors work on it. Only requests: an HTTP status line is refused.
pub fn parse_http_request(buf: Bytes) -> Result<SipMsg, ParseError> {
    let m = parse_start(buf, true, true)?;
    match m.kind {
        Kind::Request { .. } => Ok(m),
        Kind::Response { .. } => Err(ParseError::BadStartLine),
    }
}

fn parse_start(buf: Bytes, http: bool, one_content_length: bool) -> Result<SipMsg, ParseError> {
    let b: &[u8] = &buf;
    let mut pos = 0;
    while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
        pos += 1;
    }
    if pos == b.len() {
        return Err(ParseError::Empty);
    }
    // Start line.
    let eol = memchr(b'\n', &b[pos..])
        .map(|i| pos + i)
        .ok_or(ParseError::NoEndOfHeaders)?;
    let (ls, le) = trim(b, pos, eol);
    let line = &b[ls..le];
    let kind = if line.starts_with(b"SIP/2.0 ") {
        let rest = &line[8..];
        if rest.len() < 3
            || !rest[..3].iter().all(u8::is_ascii_digit)
            || rest.get(3).is_some_and(|c| *c != b' ')
        {
            return Err(ParseError::BadStartLine);
        }
        let code =
            (rest[0] - b'0') as u16 * 100 + (rest[1] - b'0') as u16 * 10 + (rest[2] - b'0') as u16;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        let rs = (ls + 12).min(le);
        Kind::Response {
            code,
            reason: Rng::new(rs, le),
        }
    } else {
        let sp1 = memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
        let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::BadStartLine)?;
        if sp2 <= sp1 + 1
            || !(&line[sp2 + 1..] == b"SIP/2.0"
                || (http && matches!(&line[sp2 + 1..], b"HTTP/1.1" | b"HTTP/1.0")))
            || sp1 == 0
            || !line[..sp1].iter().all(|c| c.is_ascii_alphabetic())
        {
            return Err(ParseError::BadStartLine);
        }
        let uri = &line[sp1 + 1..sp2];
        if uri.contains(&b' ') || uri.is_empty() {
            return Err(ParseError::BadStartLine);
        }
        Kind::Request {
            method: Method::from_bytes(&line[..sp1]),
            method_rng: Rng::new(ls, ls + sp1),
            uri: Rng::new(ls + sp1 + 1, ls + sp2),
        }
    };
    // Headers.
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    pos = eol + 1;
    let headers_end;
    loop {
        if pos >= b.len() {
            return Err(ParseError::NoEndOfHeaders);
        }
        let eol = memchr(b'\n', &b[pos..])
            .map(|i| pos + i)
            .ok_or(ParseError::NoEndOfHeaders)?;
        let line_end = eol + 1;
        let content_end = if eol > pos && b[eol - 1] == b'\r' {
            eol - 1
        } else {
            eol
        };
        if content_end == pos {
            headers_end = pos as u32;
            pos = line_end;
            break;
        }
        if b[pos] == b' ' || b[pos] == b'\t' {
            // Folded continuation of the previous header.
            let h = headers.last_mut().ok_or(ParseError::BadHeader(pos))?;
            let (_, e) = trim(b, pos, content_end);
            if e > pos {
                h.value.end = e as u32;
                h.folded = true;
            }
            h.line.end = line_end as u32;
            pos = line_end;
            continue;
        }
        let colon = memchr(b':', &b[pos..content_end])
            .map(|i| pos + i)
            .ok_or(ParseError::BadHeader(pos))?;
        let (ns, ne) = trim(b, pos, colon);
        if ns == ne || b[ns..ne].iter().any(|c| !(c.is_ascii_graphic())) {
            return Err(ParseError::BadHeader(pos));
        }
        let (vs, ve) = trim(b, colon + 1, content_end);
        headers.push(Header {
            name: HeaderName::from_bytes(&b[ns..ne]),
            name_rng: Rng::new(ns, ne),
            value: Rng::new(vs, ve.max(vs)),
            line: Rng::new(pos, line_end),
            folded: false,
        });
        pos = line_end;
    }
    // Body, bounded by Content-Length when there is one.
    let available = b.len() - pos;
    let mut lengths = headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength);
    let first_length = lengths.next();
    if one_content_length && lengths.next().is_some() {
        return Err(ParseError::DuplicateContentLength);
    }
    let body_len = match first_length {
        Some(h) => {
            let v = &b[h.value.range()];
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(ParseError::BadContentLength)?;
            if n > available {
                return Err(ParseError::Truncated {
                    have: available,
                    want: n,
                });
            }
            n
        }
        None => available,
    };
    let mut msg = SipMsg {
        kind,
        headers: Headers(std::sync::Arc::new(Index {
            list: headers,
            decoded: Decoded::default(),
        })),
        headers_end,
        body: Rng::new(pos, pos + body_len),
        buf,
    };
    let decoded = Decoded::of(&msg);
    if let Some(index) = std::sync::Arc::get_mut(&mut msg.headers.0) {
        index.decoded = decoded;
    }
    Ok(msg)
}

impl SipMsg {
    /// The whole buffer.
    pub fn buf(&self) -> &Bytes {
        &self.buf
    }
    /// Bytes of a range, sharing the buffer.
    pub fn slice(&self, r: Rng) -> Bytes {
        self.buf.slice(r.range())
    }
    /// Bytes of a range, borrowed.
    pub fn get(&self, r: Rng) -> &[u8] {
        &self.buf[r.range()]
    }
    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request { .. })
    }
    /// The method of a request (of the CSeq for a response).
    pub fn method(&self) -> Method {
        match self.kind {
            Kind::Request { method, .. } => method,
            Kind::Response { .. } => self.cseq().map_or(Method::Other, |c| c.method),
        }
    }
    /// The method name as written (CSeq's for a response).
    pub fn method_bytes(&self) -> Bytes {
        match self.kind {
            Kind::Request { method_rng, .. } => self.slice(method_rng),
            Kind::Response { .. } => self.cseq().map(|c| c.method_name).unwrap_or_default(),
        }
    }
    /// The request URI.
    pub fn ruri(&self) -> Option<Bytes> {
        match self.kind {
            Kind::Request { uri, .. } => Some(self.slice(uri)),
            Kind::Response { .. } => None,
        }
    }
    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            Kind::Response { code, .. } => Some(code),
            Kind::Request { .. } => None,
        }
    }
    /// The first header of a kind.
    pub fn header(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }
    /// The value of the first header of a kind, unfolded.
    pub fn value(&self, name: HeaderName) -> Option<Bytes> {
        self.header(name).map(|h| self.header_value(h))
    }
    /// A header's value; folded lines are joined with one space (a copy only then).
    pub fn header_value(&self, h: &Header) -> Bytes {
        if !h.folded {
            return self.slice(h.value);
        }
        let v = self.get(h.value);
        let mut out = Vec::with_capacity(v.len());
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'\r' || v[i] == b'\n' {
                while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                    i += 1;
                }
                out.push(b' ');
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        Bytes::from(out)
    }
    /// Headers whose name, as a script writes it, is `name` (`"Via"`, `"v"`, `"X-Foo"`).
    pub fn headers_named<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a Header> + 'a {
        let kind = HeaderName::from_bytes(name);
        let want = canonical_name(name);
        self.headers.iter().filter(move |h| {
            if kind == HeaderName::Other {
                canonical_name(self.get(h.name_rng)).eq_ignore_ascii_case(want)
            } else {
                h.name == kind
            }
        })
    }
    /// The Call-ID.
    pub fn call_id(&self) -> Option<Bytes> {
        self.value(HeaderName::CallId)
    }
    /// The CSeq.
    pub fn cseq(&self) -> Option<crate::CSeq> {
        self.headers.0.decoded.cseq.clone()
    }
    /// The topmost Via (the first value of the first Via header).
    pub fn top_via(&self) -> Option<&crate::Via> {
        self.headers.0.decoded.top_via.as_ref()
    }
    /// The From header.
    pub fn from(&self) -> Option<crate::NameAddr> {
        self.headers.0.decoded.from.clone()
    }
    /// The To header.
    pub fn to(&self) -> Option<crate::NameAddr> {
        self.headers.0.decoded.to.clone()
    }
    /// Max-Forwards, if present and numeric.
    pub fn max_forwards(&self) -> Option<u32> {
        std::str::from_utf8(&self.value(HeaderName::MaxForwards)?)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
    /// The body.
    pub fn body_bytes(&self) -> Bytes {
        self.slice(self.body)
    }
    /// Checks that the headers every transaction needs are there and readable.
    pub fn check_required(&self) -> Result<(), ParseError> {
        if self.top_via().is_none() {
            return Err(ParseError::MissingHeader("Via"));
        }
        let decoded = &self.headers.0.decoded;
        if decoded.from.is_none() {
            return Err(ParseError::MissingHeader("From"));
        }
        if decoded.to.is_none() {
            return Err(ParseError::MissingHeader("To"));
        }
        if self
            .header(HeaderName::CallId)
            .is_none_or(|h| h.value.start == h.value.end)
        {
            return Err(ParseError::MissingHeader("Call-ID"));
        }
        if decoded.cseq.is_none() {
            return Err(ParseError::MissingHeader("CSeq"));
        }
        Ok(())
    }
}

/// The full name of a compact form that has no [`HeaderName`] of its own
/// (RFC 3261 §7.3.3, RFC 3265, RFC 3515, RFC 4028…); other names as given.
fn canonical_name(n: &[u8]) -> &[u8] {
    if n.len() != 1 {
        return n;
    }
    match n[0].to_ascii_lowercase() {
        b'k' => b"supported",
        b's' => b"subject",
        b'e' => b"content-encoding",
        b'o' => b"event",
        b'r' => b"refer-to",
        b'b' => b"referred-by",
        b'u' => b"allow-events",
        b'x' => b"session-expires",
        b'a' => b"accept-contact",
        b'j' => b"reject-contact",
        b'd' => b"request-disposition",
        _ => n,
    }
}

/// Why a TCP stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The headers grew past the limit without ending.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// A message over TCP must carry Content-Length.
    #[error("no Content-Length on a stream transport")]
    NoContentLength,
    /// Content-Length is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
    /// More than one Content-Length header: the framing of the stream is lost
    /// (a body could carry a request of its own).
    #[error("duplicate Content-Length")]
    DuplicateContentLength,
}

/// How many bytes at the start of `buf` form one message on a stream:
/// `Ok(Some(n))` a whole message of n bytes (leading CRLF keep-alives
/// included, so the caller can drop them), `Ok(None)` more bytes are needed.
///
/// The headers are read line by line as [`parse`] reads them (the first empty
/// line, LF or CRLF, ends them; folded continuation lines belong to the
/// header before), so the Content-Length that frames a message is the one
/// the parser sees; a second Content-Length is an error.
pub fn tcp_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    if start == buf.len() {
        return Ok(if start > 0 { Some(start) } else { None });
    }
    let mut cl = None;
    let mut pos = start;
    let mut start_line = true;
    let hend = loop {
        let Some(eol) = memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
            if buf.len() - start > max {
                return Err(FrameError::TooLarge(max));
            }
            return Ok(None);
        };
        let line_end = eol + 1;
        if line_end - start > max {
            return Err(FrameError::TooLarge(max));
        }
        let content_end = if eol > pos && buf[eol - 1] == b'\r' {
            eol - 1
        } else {
            eol
        };
        let line = &buf[pos..content_end];
        if !start_line {
            if line.is_empty() {
                break line_end;
            }
            if line[0] != b' '
                && line[0] != b'\t'
                && let Some(colon) = memchr(b':', line)
            {
                let name = line[..colon].trim_ascii();
                if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
                    if cl.is_some() {
                        return Err(FrameError::DuplicateContentLength);
                    }
                    let v = std::str::from_utf8(line[colon + 1..].trim_ascii())
                        .map_err(|_| FrameError::BadContentLength)?;
                    cl = Some(
                        v.parse::<usize>()
                            .map_err(|_| FrameError::BadContentLength)?,
                    );
                }
            }
        }
        start_line = false;
        pos = line_end;
    };
    let cl = cl.ok_or(FrameError::NoContentLength)?;
    // Compare before adding: a peer-chosen Content-Length must not overflow.
    if cl > max || hend - start + cl > max {
        return Err(FrameError::TooLarge(max));
    }
    let total = hend + cl;
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}
