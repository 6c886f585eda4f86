//! Serialisation: a message with its edits applied, and replies built from a request.

use crate::msg::{HeaderName, Kind, SipMsg};
use bytes::{BufMut, Bytes, BytesMut};

/// Changes to a message, applied when it is serialised (Kamailio's lumps).
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// A new request URI.
    pub ruri: Option<Bytes>,
    /// Indices (into `SipMsg::headers`) of headers to leave out.
    pub remove: Vec<usize>,
    /// Whole header lines (with CRLF) to add after the last header.
    pub append: Vec<Bytes>,
    /// Whole header lines (with CRLF) to add elsewhere, in the order given
    /// (Kamailio's lumps anchored at a header: `insert_hf`, a missing
    /// Max-Forwards, `append_hf(txt, hdr)`).
    pub insert: Vec<(At, Bytes)>,
    /// A Via value to put on top (`SIP/2.0/UDP host:port;branch=…`).
    pub push_via: Option<Bytes>,
    /// Remove the topmost Via value (relaying a reply).
    pub pop_via: bool,
    /// A new Max-Forwards value.
    pub max_forwards: Option<u32>,
    /// A new value for the topmost Via value of the message (the sender's, with
    /// `received`/`rport` filled in as RFC 3261 §18.2.1 and RFC 3581 say).
    pub top_via: Option<Bytes>,
}

/// Where [`Edits::insert`] puts a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Before the first header (and before a Via the relay adds).
    Top,
    /// Before header `i` (an index into `SipMsg::headers`).
    Before(usize),
    /// After header `i`.
    After(usize),
}

impl Edits {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.ruri.is_none()
            && self.remove.is_empty()
            && self.append.is_empty()
            && self.insert.is_empty()
            && self.push_via.is_none()
            && !self.pop_via
            && self.max_forwards.is_none()
            && self.top_via.is_none()
    }
}

/// The message with `edits` applied. Unchanged messages are returned as they came.
pub fn serialize(msg: &SipMsg, edits: &Edits) -> Bytes {
    let b = msg.buf();
    if edits.is_empty() {
        return b.slice(..msg.body.end as usize);
    }
    let mut out = BytesMut::with_capacity(b.len() + 256);
    // Start line.
    let first_header = msg
        .headers
        .first()
        .map_or(msg.headers_end as usize, |h| h.line.start as usize);
    match (msg.kind, &edits.ruri) {
        (Kind::Request { uri, .. }, Some(new)) => {
            out.put_slice(&b[..uri.start as usize]);
            out.put_slice(new);
            out.put_slice(&b[uri.end as usize..first_header]);
        }
        _ => out.put_slice(&b[..first_header]),
    }
    let put_at = |out: &mut BytesMut, at: At| {
        for (_, line) in edits.insert.iter().filter(|(a, _)| *a == at) {
            out.put_slice(line);
        }
    };
    put_at(&mut out, At::Top);
    if let Some(v) = &edits.push_via {
        out.put_slice(b"Via: ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    let mut first_via_done = false;
    for (i, h) in msg.headers.iter().enumerate() {
        put_at(&mut out, At::Before(i));
        write_header(&mut out, msg, i, h, edits, &mut first_via_done);
        put_at(&mut out, At::After(i));
    }
    for a in &edits.append {
        out.put_slice(a);
    }
    out.put_slice(&b[msg.headers_end as usize..msg.body.end as usize]);
    out.freeze()
}

/// Header `i` as the edits leave it (nothing when removed).
fn write_header(
    out: &mut BytesMut,
    msg: &SipMsg,
    i: usize,
    h: &crate::Header,
    edits: &Edits,
    first_via_done: &mut bool,
) {
    let b = msg.buf();
    if edits.remove.contains(&i) {
        return;
    }
    if h.name == HeaderName::Via && !*first_via_done {
        *first_via_done = true;
        if edits.pop_via || edits.top_via.is_some() {
            write_top_via(out, msg, h, edits);
            return;
        }
    }
    if h.name == HeaderName::MaxForwards
        && let Some(mf) = edits.max_forwards
    {
        out.put_slice(&b[h.name_rng.range()]);
        out.put_slice(b": ");
        put_decimal(out, mf);
        out.put_slice(b"\r\n");
        return;
    }
    out.put_slice(&b[h.line.range()]);
}

/// The first Via header with its first value popped or replaced; the other
/// values are copied as they are.
fn write_top_via(out: &mut BytesMut, msg: &SipMsg, h: &crate::Header, edits: &Edits) {
    let v = msg.header_value(h);
    let (first, rest) = crate::views::first_and_rest(&v);
    let new_first: Option<&[u8]> = match (&edits.top_via, edits.pop_via) {
        (_, true) => None,
        (Some(top), false) => Some(top),
        (None, false) => Some(&v[first.range()]),
    };
    if new_first.is_none() && rest.is_none() {
        return;
    }
    out.put_slice(msg.get(h.name_rng));
    out.put_slice(b": ");
    if let Some(f) = new_first {
        out.put_slice(f);
        if rest.is_some() {
            out.put_slice(b", ");
        }
    }
    if let Some(r) = rest {
        out.put_slice(&v[r.range()]);
    }
    out.put_slice(b"\r\n");
}

/// A number in decimal, without going through `fmt`.
fn put_decimal(out: &mut BytesMut, n: impl itoa::Integer) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// What a reply carries beyond the copied headers.
#[derive(Debug, Clone, Default)]
pub struct ReplyOptions<'a> {
    /// To-tag to add when the request's To has none (not for 100).
    pub to_tag: Option<&'a [u8]>,
    /// A replacement for the top Via value (with `received`/`rport` filled in, see
    /// [`via_with_received`]).
    pub top_via: Option<&'a [u8]>,
    /// Extra header lines, each with its CRLF (`append_to_reply`, Contact…).
    pub extra: &'a [Bytes],
    /// Server header value.
    pub server: Option<&'a [u8]>,
    /// Content-Type and body.
    pub body: Option<(&'a [u8], &'a [u8])>,
}

/// Builds a reply to `req` (RFC 3261 §8.2.6): Via (all), From, To (with a tag),
/// Call-ID and CSeq copied, then the extra headers, then Content-Length.
pub fn build_reply(req: &SipMsg, code: u16, reason: &[u8], opts: &ReplyOptions<'_>) -> Bytes {
    let b = req.buf();
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"SIP/2.0 ");
    put_decimal(&mut out, code);
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
    let mut first_via = true;
    for h in &req.headers {
        match h.name {
            HeaderName::Via => {
                if let (true, Some(top)) = (first_via, opts.top_via) {
                    let v = req.header_value(h);
                    let (_, rest) = crate::views::first_and_rest(&v);
                    out.put_slice(b"Via: ");
                    out.put_slice(top);
                    if let Some(r) = rest {
                        out.put_slice(b", ");
                        out.put_slice(&v[r.range()]);
                    }
                    out.put_slice(b"\r\n");
                } else {
                    out.put_slice(&b[h.line.range()]);
                }
                first_via = false;
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.put_slice(&b[h.line.range()])
            }
            HeaderName::To => {
                let has_tag = req.to().is_some_and(|t| t.tag.is_some());
                match opts.to_tag {
                    Some(tag) if !has_tag && code > 100 => {
                        out.put_slice(b"To: ");
                        out.put_slice(&req.header_value(h));
                        out.put_slice(b";tag=");
                        out.put_slice(tag);
                        out.put_slice(b"\r\n");
                    }
                    _ => out.put_slice(&b[h.line.range()]),
                }
            }
            _ => {}
        }
    }
    for e in opts.extra {
        out.put_slice(e);
    }
    if let Some(s) = opts.server {
        out.put_slice(b"Server: ");
        out.put_slice(s);
        out.put_slice(b"\r\n");
    }
    match opts.body {
        Some((ctype, body)) => {
            out.put_slice(b"Content-Type: ");
            out.put_slice(ctype);
            out.put_slice(b"\r\nContent-Length: ");
            put_decimal(&mut out, body.len());
            out.put_slice(b"\r\n\r\n");
            out.put_slice(body);
        }
        None => out.put_slice(b"Content-Length: 0\r\n\r\n"),
    }
    out.freeze()
}

/// A Via value with `received` set (when given) and a bare `rport` filled with
/// `rport` (RFC 3261 §18.2.1, RFC 3581). Other parameters keep their order.
pub fn via_with_received(via: &[u8], received: Option<&[u8]>, rport: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(via.len() + 40);
    let mut parts = via.split(|&c| c == b';');
    out.extend_from_slice(parts.next().unwrap_or_default());
    for p in parts {
        let name = p
            .split(|&c| c == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if name.eq_ignore_ascii_case(b"received") && received.is_some() {
            continue;
        }
        if name.eq_ignore_ascii_case(b"rport")
            && let Some(port) = rport
        {
            out.extend_from_slice(b";rport=");
            out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p);
    }
    if let Some(r) = received {
        out.extend_from_slice(b";received=");
        out.extend_from_slice(r);
    }
    out
}

#[cfg(test)]
mod insert_tests {
    use super::*;

    #[test]
    fn the_top_via_value_is_popped_or_replaced_and_the_others_kept() {
        let m = crate::parse(Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP us;branch=z9hG4bK1, SIP/2.0/UDP them;branch=z9hG4bK2\r\nv: SIP/2.0/TCP far;branch=z9hG4bK3\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let popped = serialize(
            &m,
            &Edits {
                pop_via: true,
                max_forwards: Some(69),
                ..Default::default()
            },
        );
        let text = std::str::from_utf8(&popped).unwrap();
        assert!(text.contains("\r\nVia: SIP/2.0/UDP them;branch=z9hG4bK2\r\nv: SIP/2.0/TCP far"));
        assert!(text.contains("\r\nMax-Forwards: 69\r\n"));
        let replaced = serialize(
            &m,
            &Edits {
                top_via: Some(Bytes::from_static(
                    b"SIP/2.0/UDP us;branch=z9hG4bK1;rport=9",
                )),
                ..Default::default()
            },
        );
        assert!(std::str::from_utf8(&replaced).unwrap().contains(
            "\r\nVia: SIP/2.0/UDP us;branch=z9hG4bK1;rport=9, SIP/2.0/UDP them;branch=z9hG4bK2\r\n"
        ));
        // The only value of the header popped: the header goes, the next one stays.
        let m = crate::parse(Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP us;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP them;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let popped = serialize(
            &m,
            &Edits {
                pop_via: true,
                ..Default::default()
            },
        );
        assert!(
            std::str::from_utf8(&popped)
                .unwrap()
                .starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP them;branch=z9hG4bK2\r\nFrom:")
        );
    }

    #[test]
    fn inserted_lines_land_where_asked() {
        let m = crate::parse(Bytes::from_static(
            b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let e = Edits {
            insert: vec![
                (At::After(3), Bytes::from_static(b"X-After-Call-ID: 1\r\n")),
                (At::Top, Bytes::from_static(b"Max-Forwards: 10\r\n")),
                (At::Before(1), Bytes::from_static(b"X-Before-From: 1\r\n")),
                (At::Top, Bytes::from_static(b"X-Top: 2\r\n")),
            ],
            push_via: Some(Bytes::from_static(b"SIP/2.0/UDP us;branch=z9hG4bK2")),
            ..Default::default()
        };
        let out = serialize(&m, &e);
        assert_eq!(
            &out[..],
            &b"OPTIONS sip:b@h SIP/2.0\r\nMax-Forwards: 10\r\nX-Top: 2\r\nVia: SIP/2.0/UDP us;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nX-Before-From: 1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nX-After-Call-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"[..]
        );
    }
}
