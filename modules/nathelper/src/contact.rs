//! Pure text work on Contact URIs and R-URIs: where the first contact of a
//! message is, the rewrites `fix_nated_contact`, `set_contact_alias` and
//! `add_contact_alias` make, and how `handle_ruri_alias` reads an
//! `;alias=ip~port~proto` parameter back. Offsets in, bytes out; applying
//! them to a route's message is `lib.rs`'s.

use siphon_script::net::Transport;
use siphon_sip::{HeaderName, SipMsg};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// Where the first contact of a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactAt {
    /// The index of its header in [`SipMsg::headers`].
    pub header: usize,
    /// The header's value (offsets into the message buffer).
    pub value: Range<usize>,
    /// The contact URI (offsets into the message buffer).
    pub uri: Range<usize>,
    /// Whether the URI is written between `<` and `>`.
    pub bracketed: bool,
}

/// The first contact of the first Contact header (Kamailio's
/// `get_contact_uri`); `None` without one, for `*`, or when its URI has no
/// host.
pub fn first_contact(msg: &SipMsg) -> Option<ContactAt> {
    let header = msg
        .headers
        .iter()
        .position(|h| h.name == HeaderName::Contact)?;
    let value = msg.headers[header].value.range();
    let v = &msg.buf()[value.clone()];
    let start = v.len() - v.trim_ascii_start().len();
    if v[start..].starts_with(b"*") {
        return None;
    }
    // The first contact ends at a comma outside quotes and brackets.
    let (mut quoted, mut angle, mut lt, mut end) = (false, false, None, v.len());
    for (i, &c) in v.iter().enumerate().skip(start) {
        match c {
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => {
                angle = true;
                lt.get_or_insert(i);
            }
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (uri, bracketed) = match lt {
        Some(lt) => {
            let gt = lt + v[lt..end].iter().position(|&c| c == b'>')?;
            (lt + 1..gt, true)
        }
        None => {
            // A bare URI: what follows a `;` is the contact's parameters.
            let z = v[start..end]
                .iter()
                .position(|&c| c == b';')
                .map_or(end, |p| start + p);
            let z = start + v[start..z].trim_ascii_end().len();
            (start..z, false)
        }
    };
    let u = siphon_sip::parse_uri(&v[uri.clone()]).ok()?;
    if u.host.is_empty() {
        return None;
    }
    Some(ContactAt {
        header,
        uri: value.start + uri.start..value.start + uri.end,
        value,
        bracketed,
    })
}

/// One contact of a Contact header, as offsets into the message buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactSpan {
    /// The whole contact: display name, URI and parameters (Kamailio's
    /// `name.s`, `len`), without the white space around it.
    pub whole: Range<usize>,
    /// Its URI (between `<` and `>` when bracketed).
    pub uri: Range<usize>,
}

/// The contacts of a Contact header value `v` (offsets into `v`), split
/// at the commas outside quotes and brackets; `None` when one has no URI.
fn split_contacts(v: &[u8]) -> Option<Vec<ContactSpan>> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let mut ends = Vec::new();
    for (i, &c) in v.iter().enumerate() {
        match c {
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                ends.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    ends.push((start, v.len()));
    for (a, b) in ends {
        let piece = &v[a..b];
        let lead = piece.len() - piece.trim_ascii_start().len();
        let piece = piece.trim_ascii();
        if piece.is_empty() {
            return None;
        }
        let whole = a + lead..a + lead + piece.len();
        let lt = {
            let mut q = false;
            piece.iter().position(|&c| {
                if c == b'"' {
                    q = !q;
                }
                !q && c == b'<'
            })
        };
        let uri = match lt {
            Some(lt) => {
                let gt = lt + piece[lt..].iter().position(|&c| c == b'>')?;
                whole.start + lt + 1..whole.start + gt
            }
            None => {
                let z = piece.iter().position(|&c| c == b';').unwrap_or(piece.len());
                whole.start..whole.start + piece[..z].trim_ascii_end().len()
            }
        };
        if uri.is_empty() {
            return None;
        }
        out.push(ContactSpan { whole, uri });
    }
    Some(out)
}

/// Every contact of every Contact header, in order (Kamailio's
/// `contact_iterator`): none for a `*` header (nor for what follows it);
/// `None` when a contact does not parse.
pub fn all_contacts(msg: &SipMsg) -> Option<Vec<ContactSpan>> {
    let mut out = Vec::new();
    for h in msg.headers.iter().filter(|h| h.name == HeaderName::Contact) {
        let value = h.value.range();
        let v = &msg.buf()[value.clone()];
        if v.trim_ascii() == b"*" {
            break;
        }
        for c in split_contacts(v)? {
            out.push(ContactSpan {
                whole: value.start + c.whole.start..value.start + c.whole.end,
                uri: value.start + c.uri.start..value.start + c.uri.end,
            });
        }
    }
    Some(out)
}

/// The only contact of the first Contact header (`set_alias_to_pv`'s);
/// `None` without one, for `*`, or with several.
pub fn only_contact(msg: &SipMsg) -> Option<ContactSpan> {
    let h = msg.headers.iter().find(|h| h.name == HeaderName::Contact)?;
    let value = h.value.range();
    let v = &msg.buf()[value.clone()];
    if v.trim_ascii() == b"*" {
        return None;
    }
    let mut all = split_contacts(v)?;
    if all.len() != 1 {
        return None;
    }
    let c = all.remove(0);
    Some(ContactSpan {
        whole: value.start + c.whole.start..value.start + c.whole.end,
        uri: value.start + c.uri.start..value.start + c.uri.end,
    })
}

/// `set_alias_to_pv`'s URI from a contact's text: the first
/// `;NAME=host~port~proto` in it (display name, URI and parameters alike,
/// as Kamailio searches) as `sip:host:port;transport=proto` (the protocol
/// by Kamailio's number: 1 udp, 2 tcp, 3 tls, 4 sctp, 5 and 6 ws, others
/// nothing). `Err` says what is missing.
pub fn alias_to_uri(contact: &[u8], name: &str) -> Result<String, &'static str> {
    let key = format!(";{name}=");
    let key = key.as_bytes();
    // Kamailio looks for the start of the parameter before the contact's
    // last `len(;NAME=) + 5` bytes (room for `a~b~c`).
    let last = contact.len().saturating_sub(key.len() + 5);
    let at = (0..last)
        .find(|&i| contact[i..].starts_with(key))
        .ok_or("no alias parameter in the Contact")?;
    let rest = &contact[at + key.len()..];
    let t1 = rest
        .iter()
        .position(|&c| c == b'~')
        .ok_or("the alias has no host~port")?;
    let host = &rest[..t1];
    let after = &rest[t1 + 1..];
    let t2 = after
        .iter()
        .position(|&c| c == b'~')
        .ok_or("the alias has no port~protocol")?;
    let port = &after[..t2];
    let proto = match atoi(&after[t2 + 1..]) {
        1 => "udp",
        2 => "tcp",
        3 => "tls",
        4 => "sctp",
        5 | 6 => "ws",
        _ => "",
    };
    Ok(format!(
        "sip:{}:{};transport={proto}",
        String::from_utf8_lossy(host),
        String::from_utf8_lossy(port)
    ))
}

/// C's `atoi`: leading white space, a sign, the digits that follow.
fn atoi(b: &[u8]) -> i64 {
    let b = b.trim_ascii_start();
    let (neg, b) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(0i64, |n, c| {
            n.saturating_mul(10).saturating_add(i64::from(c - b'0'))
        });
    if neg { -n } else { n }
}

/// The parts of a SIP URI nathelper rewrites, as offsets into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriParts {
    /// `host[:port]` (an IPv6 host with its brackets).
    pub host_port: Range<usize>,
    /// The host as an address, when it is one.
    pub ip: Option<IpAddr>,
    /// The port written.
    pub port: Option<u16>,
    /// Kamailio's protocol number of its `transport` parameter (0: none).
    pub proto: u8,
    /// The `maddr=…` parameter, when there is one.
    pub maddr: Option<Range<usize>>,
}

/// Kamailio's protocol numbers, as `;alias=` writes them.
pub fn proto_number(name: &[u8]) -> Option<u8> {
    let n = name.to_ascii_lowercase();
    Some(match n.as_slice() {
        b"udp" => 1,
        b"tcp" => 2,
        b"tls" => 3,
        b"sctp" => 4,
        b"ws" => 5,
        b"wss" => 6,
        _ => return None,
    })
}

/// The name of a protocol number (1 is UDP, written as no `transport`).
pub fn proto_name(n: u8) -> Option<&'static str> {
    Some(match n {
        1 => "udp",
        2 => "tcp",
        3 => "tls",
        4 => "sctp",
        5 => "ws",
        6 => "wss",
        _ => return None,
    })
}

/// The protocol number of a transport siphon receives over.
pub fn transport_number(t: Transport) -> u8 {
    match t {
        Transport::Udp => 1,
        Transport::Tcp => 2,
        Transport::Tls => 3,
    }
}

/// Offset of `part` (a slice of `whole`) in `whole`.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Reads `uri`'s host, port and parameters; `None` when it is no SIP URI
/// with a host.
pub fn uri_parts(uri: &[u8]) -> Option<UriParts> {
    let u = siphon_sip::parse_uri(uri).ok()?;
    if u.host.is_empty() {
        return None;
    }
    let mut a = offset(uri, u.host);
    let mut z = a + u.host.len();
    if a > 0 && uri[a - 1] == b'[' {
        a -= 1;
        z += 1;
    }
    if uri.get(z) == Some(&b':') {
        z += 1 + uri[z + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
    }
    let proto = match u.param(b"transport") {
        Some(t) => proto_number(t).unwrap_or(0),
        None => 0,
    };
    let maddr = u
        .params
        .split(|&c| c == b';')
        .find(|p| {
            p.split(|&c| c == b'=')
                .next()
                .is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(b"maddr"))
        })
        .map(|p| offset(uri, p)..offset(uri, p) + p.len());
    Some(UriParts {
        host_port: a..z,
        ip: crate::nat::parse_ip(u.host),
        port: u.port,
        proto,
        maddr,
    })
}

/// `ip:port` as a URI writes it (an IPv6 address bracketed).
pub fn host_port(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
    }
}

/// `fix_nated_contact`: `uri` with its host and port replaced by `src`, and
/// without its `maddr` parameter (which makes no sense any more).
pub fn fixed_contact(uri: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let p = uri_parts(uri)?;
    let mut out = uri[..p.host_port.start].to_vec();
    out.extend_from_slice(host_port(src).as_bytes());
    match p.maddr {
        None => out.extend_from_slice(&uri[p.host_port.end..]),
        Some(m) => {
            // Up to the maddr parameter, without the separators before it, then what follows it.
            let before = &uri[p.host_port.end..m.start];
            let keep = before.len()
                - before
                    .iter()
                    .rev()
                    .take_while(|&&c| matches!(c, b' ' | b'\t' | b';'))
                    .count();
            out.extend_from_slice(&before[..keep]);
            out.extend_from_slice(&uri[m.end..]);
        }
    }
    Some(out)
}

/// `;alias=ip~port~proto` for a message received from `src` over protocol
/// number `proto` (`name` is the parameter's name, `alias_name`).
pub fn rcv_alias(name: &str, src: SocketAddr, proto: u8) -> String {
    let ip = match src.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    format!(";{name}={ip}~{}~{proto}", src.port())
}

/// Kamailio's `uri_trim_rcv_alias`: `uri` without its last well-formed
/// `;alias=ip~port~N` parameter, or `None` when it has none.
pub fn trim_rcv_alias(uri: &[u8], name: &str) -> Option<Vec<u8>> {
    let needle = format!(";{name}=");
    let needle = needle.as_bytes();
    let at = uri.windows(needle.len()).rposition(|w| w == needle)?;
    let rest = &uri[at + needle.len()..];
    let t1 = rest.iter().position(|&c| c == b'~')?;
    let t2 = t1 + 1 + rest[t1 + 1..].iter().position(|&c| c == b'~')?;
    // One protocol digit, then the end or the next parameter.
    let end = t2 + 2;
    if rest.len() < end || !matches!(rest.get(end), None | Some(b';')) {
        return None;
    }
    let mut out = uri[..at].to_vec();
    out.extend_from_slice(&rest[end..]);
    Some(out)
}

/// What `handle_ruri_alias` makes of an R-URI with an alias parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// `$du`: `sip:ip:port` (with `;transport=` unless UDP).
    pub dst: String,
    /// The R-URI without that parameter.
    pub ruri: Vec<u8>,
}

/// Kamailio's `handle_ruri_alias([mode])`: the first (`last` false) or the
/// last `alias=` parameter of the R-URI read back into a destination.
/// `Ok(None)`: there is none; `Err`: one that cannot be read.
pub fn handle_alias(ruri: &[u8], name: &str, last: bool) -> Result<Option<Alias>, String> {
    let u = siphon_sip::parse_uri(ruri).map_err(|e| format!("the R-URI does not parse: {e}"))?;
    let prefix = format!("{name}=");
    let params_at = offset(ruri, u.params);
    let mut found = None;
    let mut pos = 0;
    for p in u.params.split(|&c| c == b';') {
        if p.starts_with(prefix.as_bytes()) {
            found = Some(params_at + pos);
            if !last {
                break;
            }
        }
        pos += p.len() + 1;
    }
    let Some(at) = found else { return Ok(None) };
    // The value: ip~port~N, then the end, `;` or `?`.
    let val = &ruri[at + prefix.len()..];
    let t1 = val
        .iter()
        .position(|&c| c == b'~')
        .ok_or("no '~' in the alias parameter")?;
    let t2 = t1
        + 1
        + val[t1 + 1..]
            .iter()
            .position(|&c| c == b'~')
            .ok_or("no second '~' in the alias parameter")?;
    let proto = match val.get(t2 + 1) {
        Some(&d) if d != b';' && d != b'?' => d.wrapping_sub(b'0'),
        _ => return Err("no protocol in the alias parameter".into()),
    };
    if !matches!(val.get(t2 + 2), None | Some(b';') | Some(b'?')) {
        return Err("the alias parameter's value is not ip~port~protocol".into());
    }
    let mut dst = format!(
        "sip:{}:{}",
        String::from_utf8_lossy(&val[..t1]),
        String::from_utf8_lossy(&val[t1 + 1..t2])
    );
    if proto != 1 {
        let name = proto_name(proto).ok_or("unknown protocol in the alias parameter")?;
        dst.push_str(";transport=");
        dst.push_str(name);
    }
    // `;alias=…~N` leaves the R-URI.
    let mut out = ruri[..at - 1].to_vec();
    out.extend_from_slice(&ruri[at + prefix.len() + t2 + 2..]);
    Ok(Some(Alias { dst, ruri: out }))
}

/// `buf` with each range replaced by its bytes (ranges in order, disjoint).
pub fn splice(buf: &[u8], edits: &[(Range<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 64);
    let mut at = 0;
    for (r, with) in edits {
        out.extend_from_slice(&buf[at..r.start]);
        out.extend_from_slice(with);
        at = r.end;
    }
    out.extend_from_slice(&buf[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(contact: &str) -> SipMsg {
        siphon_sip::parse(Bytes::from(format!(
            "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{contact}Content-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    fn uri_of(contact: &str) -> Option<(String, bool)> {
        let m = msg(contact);
        first_contact(&m).map(|c| {
            (
                String::from_utf8_lossy(&m.buf()[c.uri]).into_owned(),
                c.bracketed,
            )
        })
    }

    #[test]
    fn the_first_contact_uri() {
        assert_eq!(
            uri_of(
                "Contact: \"A <b>, c\" <sip:a@192.168.1.10:5062;transport=udp>;expires=60, <sip:x@h>\r\n"
            ),
            Some(("sip:a@192.168.1.10:5062;transport=udp".into(), true))
        );
        assert_eq!(
            uri_of("m: sip:a@192.168.1.10:5062;expires=60\r\n"),
            Some(("sip:a@192.168.1.10:5062".into(), false))
        );
        assert_eq!(
            uri_of("Contact: sip:a@10.0.0.1, sip:b@10.0.0.2\r\n"),
            Some(("sip:a@10.0.0.1".into(), false))
        );
        assert_eq!(uri_of("Contact: *\r\n"), None);
        assert_eq!(uri_of(""), None);
    }

    #[test]
    fn uri_parts_host_port_proto_maddr() {
        let u = b"sip:a@[2001:db8::1]:5070;transport=TCP;maddr=1.2.3.4";
        let p = uri_parts(u).unwrap();
        assert_eq!(&u[p.host_port.clone()], b"[2001:db8::1]:5070");
        assert_eq!(p.ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!((p.port, p.proto), (Some(5070), 2));
        assert_eq!(&u[p.maddr.unwrap()], b"maddr=1.2.3.4");
        let p = uri_parts(b"sip:gw.example").unwrap();
        assert_eq!((p.ip, p.port, p.proto), (None, None, 0));
    }

    #[test]
    fn fix_nated_contact_text() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let f = |u: &str| String::from_utf8(fixed_contact(u.as_bytes(), src).unwrap()).unwrap();
        assert_eq!(f("sip:a@192.168.1.10:5062"), "sip:a@127.0.0.1:40000");
        assert_eq!(f("sip:a@192.168.1.10;ob"), "sip:a@127.0.0.1:40000;ob");
        assert_eq!(
            f("sip:a@192.168.1.10;transport=udp;maddr=10.1.1.1;lr"),
            "sip:a@127.0.0.1:40000;transport=udp;lr"
        );
        assert_eq!(
            f("sip:a@192.168.1.10;maddr=10.1.1.1"),
            "sip:a@127.0.0.1:40000"
        );
        let v6: SocketAddr = "[::1]:5070".parse().unwrap();
        assert_eq!(
            fixed_contact(b"sip:a@[fd00::5]:5060", v6).unwrap(),
            b"sip:a@[::1]:5070"
        );
    }

    #[test]
    fn alias_parameters_written_and_trimmed() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(rcv_alias("alias", src, 1), ";alias=127.0.0.1~40000~1");
        let v6: SocketAddr = "[::1]:5070".parse().unwrap();
        assert_eq!(rcv_alias("saddr", v6, 2), ";saddr=[::1]~5070~2");
        assert_eq!(
            trim_rcv_alias(b"sip:a@10.0.0.1;alias=1.2.3.4~5~1", "alias").unwrap(),
            b"sip:a@10.0.0.1"
        );
        assert_eq!(
            trim_rcv_alias(b"sip:a@10.0.0.1;alias=1.2.3.4~5~1;ob", "alias").unwrap(),
            b"sip:a@10.0.0.1;ob"
        );
        assert_eq!(trim_rcv_alias(b"sip:a@10.0.0.1;alias=x", "alias"), None);
        assert_eq!(trim_rcv_alias(b"sip:a@10.0.0.1", "alias"), None);
    }

    #[test]
    fn handle_alias_reads_and_removes() {
        let a = handle_alias(
            b"sip:a@192.168.1.10:5062;alias=127.0.0.1~40000~1;ob",
            "alias",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.dst, "sip:127.0.0.1:40000");
        assert_eq!(a.ruri, b"sip:a@192.168.1.10:5062;ob");
        let two = b"sip:a@h;alias=127.0.0.1~1~2;alias=127.0.0.2~2~3?x=y";
        let first = handle_alias(two, "alias", false).unwrap().unwrap();
        assert_eq!(first.dst, "sip:127.0.0.1:1;transport=tcp");
        assert_eq!(first.ruri, b"sip:a@h;alias=127.0.0.2~2~3?x=y");
        let last = handle_alias(two, "alias", true).unwrap().unwrap();
        assert_eq!(last.dst, "sip:127.0.0.2:2;transport=tls");
        assert_eq!(last.ruri, b"sip:a@h;alias=127.0.0.1~1~2?x=y");
        let v6 = handle_alias(b"sip:a@h;alias=[::1]~5070~1", "alias", false)
            .unwrap()
            .unwrap();
        assert_eq!(v6.dst, "sip:[::1]:5070");
        assert_eq!(handle_alias(b"sip:a@h;ob", "alias", false), Ok(None));
        assert_eq!(handle_alias(b"sip:a@h", "alias", false), Ok(None));
        assert!(handle_alias(b"sip:a@h;alias=1.2.3.4", "alias", false).is_err());
        assert!(handle_alias(b"sip:a@h;alias=1.2.3.4~5", "alias", false).is_err());
        assert!(handle_alias(b"sip:a@h;alias=1.2.3.4~5~12", "alias", false).is_err());
        assert!(handle_alias(b"sip:a@h;alias=1.2.3.4~5~9", "alias", false).is_err());
    }
}
