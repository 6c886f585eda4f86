//! Typed views of the headers a proxy reads: Via, From/To, CSeq.
//! Values are slices of the message buffer.

use crate::msg::{Method, Rng};
use bytes::Bytes;

/// The first item of a comma-separated header value (what `split_commas`
/// would give first), without splitting the rest.
pub(crate) fn first_item(v: &[u8]) -> Rng {
    let (mut quoted, mut angle, mut esc) = (false, false, false);
    let mut end = v.len();
    // Without quotes or `<…>` (a Via, most From/To) the first comma ends it.
    let plain = memchr::memchr2(b'"', b'<', v).is_none();
    let scan = if plain {
        end = memchr::memchr(b',', v).unwrap_or(v.len());
        &v[..0]
    } else {
        v
    };
    for (i, &c) in scan.iter().enumerate() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' if quoted => esc = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (mut s, mut e) = (0, end);
    while s < e && v[s].is_ascii_whitespace() {
        s += 1;
    }
    while e > s && v[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    Rng {
        start: s as u32,
        end: e as u32,
    }
}

/// The first item of a comma-separated header value and what follows its
/// comma (trimmed, empty items before it skipped; `None` when nothing does):
/// popping or replacing the first Via value copies the rest as it is.
pub fn first_and_rest(v: &[u8]) -> (Rng, Option<Rng>) {
    let first = first_item(v);
    // first_item stops at the separating comma (or the end): find it after the item.
    let mut i = first.end as usize;
    while i < v.len() && v[i] != b',' {
        i += 1;
    }
    while i < v.len() && (v[i] == b',' || v[i].is_ascii_whitespace()) {
        i += 1;
    }
    let mut e = v.len();
    while e > i && v[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    let rest = (e > i).then_some(Rng {
        start: i as u32,
        end: e as u32,
    });
    (first, rest)
}

/// Splits a header value at commas that are outside quotes and `<…>`.
pub fn split_commas(v: &[u8]) -> Vec<Rng> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut esc) = (false, false, false);
    let mut start = 0;
    for (i, &c) in v.iter().enumerate() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' if quoted => esc = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                push_trimmed(v, start, i, &mut out);
                start = i + 1;
            }
            _ => {}
        }
    }
    push_trimmed(v, start, v.len(), &mut out);
    out
}

fn push_trimmed(v: &[u8], mut s: usize, mut e: usize, out: &mut Vec<Rng>) {
    while s < e && v[s].is_ascii_whitespace() {
        s += 1;
    }
    while e > s && v[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    if e > s {
        out.push(Rng {
            start: s as u32,
            end: e as u32,
        });
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=…;rport;received=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`…
    pub transport: Bytes,
    /// sent-by host (IPv6 without brackets).
    pub host: Bytes,
    /// sent-by port.
    pub port: Option<u16>,
    /// `branch`.
    pub branch: Option<Bytes>,
    /// `received`.
    pub received: Option<Bytes>,
    /// `rport` present; `Some(Some(p))` when it has a value.
    pub rport: Option<Option<u16>>,
    /// `maddr`.
    pub maddr: Option<Bytes>,
}

/// Parses one Via value.
pub fn parse_via(v: &Bytes) -> Option<Via> {
    let s: &[u8] = v;
    let slash2 = {
        let mut n = 0;
        let mut at = None;
        for (i, &c) in s.iter().enumerate() {
            if c == b'/' {
                n += 1;
                if n == 2 {
                    at = Some(i);
                    break;
                }
            }
        }
        at?
    };
    // `SIP / 2.0` may carry whitespace (RFC 3261 §25.1 LWS around `/`).
    let mut proto = s[..slash2].iter().filter(|c| !c.is_ascii_whitespace());
    let mut want = b"SIP/2.0".iter();
    loop {
        match (proto.next(), want.next()) {
            (None, None) => break,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
            _ => return None,
        }
    }
    let mut i = slash2 + 1;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let ts = i;
    while i < s.len() && !s[i].is_ascii_whitespace() {
        i += 1;
    }
    let transport = v.slice(ts..i);
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let hs = i;
    let params_at = s[hs..]
        .iter()
        .position(|&c| c == b';')
        .map_or(s.len(), |p| hs + p);
    let sent_by = s[hs..params_at].trim_ascii();
    let sb_off = hs + (s[hs..params_at].len() - s[hs..params_at].trim_ascii_start().len());
    let (host, port) = split_host_port(v, sb_off, sb_off + sent_by.len())?;
    let mut via = Via {
        transport,
        host,
        port,
        branch: None,
        received: None,
        rport: None,
        maddr: None,
    };
    if params_at < s.len() {
        for p in s[params_at + 1..].split(|&c| c == b';') {
            let off = p.as_ptr() as usize - s.as_ptr() as usize;
            let (name, val) = match p.iter().position(|&c| c == b'=') {
                Some(eq) => (p[..eq].trim_ascii(), Some((off + eq + 1, off + p.len()))),
                None => (p.trim_ascii(), None),
            };
            let val = val.map(|(a, z)| {
                let t = s[a..z].trim_ascii();
                let a2 = a + (s[a..z].len() - s[a..z].trim_ascii_start().len());
                v.slice(a2..a2 + t.len())
            });
            if name.eq_ignore_ascii_case(b"branch") {
                via.branch = val;
            } else if name.eq_ignore_ascii_case(b"received") {
                via.received = val;
            } else if name.eq_ignore_ascii_case(b"maddr") {
                via.maddr = val;
            } else if name.eq_ignore_ascii_case(b"rport") {
                via.rport = Some(val.and_then(|x| port_number(&x)));
            }
        }
    }
    Some(via)
}

/// A port: 1 to 5 digits that fit 16 bits (no sign, no spaces).
fn port_number(p: &[u8]) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok()
}

/// `host[:port]` or `[v6][:port]` inside `v[a..z]`.
pub(crate) fn split_host_port(v: &Bytes, a: usize, z: usize) -> Option<(Bytes, Option<u16>)> {
    let s = &v[a..z];
    if s.is_empty() {
        return None;
    }
    if s[0] == b'[' {
        let close = s.iter().position(|&c| c == b']')?;
        let host = v.slice(a + 1..a + close);
        let rest = &s[close + 1..];
        let port = match rest {
            [] => None,
            [b':', p @ ..] => Some(port_number(p)?),
            _ => return None,
        };
        return Some((host, port));
    }
    match s.iter().rposition(|&c| c == b':') {
        Some(c) => {
            let port = port_number(&s[c + 1..])?;
            Some((v.slice(a..a + c), Some(port)))
        }
        None => Some((v.slice(a..z), None)),
    }
}

/// From/To/Contact: `"Name" <uri>;params` or `uri;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name without quotes (may be empty).
    pub display: Bytes,
    /// The URI.
    pub uri: Bytes,
    /// The `tag` parameter.
    pub tag: Option<Bytes>,
}

/// Parses a From/To value.
pub fn parse_name_addr(v: &Bytes) -> Option<NameAddr> {
    let s: &[u8] = v;
    let (display, uri_a, uri_z, params_at) = if let Some(lt) = position_outside_quotes(s, b'<') {
        let gt = lt + s[lt..].iter().position(|&c| c == b'>')?;
        let d = s[..lt].trim_ascii();
        let d = d
            .strip_prefix(b"\"")
            .and_then(|d| d.strip_suffix(b"\""))
            .unwrap_or(d);
        let doff = d.as_ptr() as usize - s.as_ptr() as usize;
        (v.slice(doff..doff + d.len()), lt + 1, gt, gt + 1)
    } else {
        let a = s.len() - s.trim_ascii_start().len();
        let z = s[a..]
            .iter()
            .position(|&c| c == b';')
            .map_or(s.len(), |p| a + p);
        (Bytes::new(), a, z, z)
    };
    let uri = v.slice(uri_a..uri_z);
    if uri.is_empty() {
        return None;
    }
    let mut tag = None;
    if params_at < s.len() {
        for p in s[params_at..].split(|&c| c == b';') {
            if let Some(eq) = p.iter().position(|&c| c == b'=')
                && p[..eq].trim_ascii().eq_ignore_ascii_case(b"tag")
            {
                let off = p.as_ptr() as usize - s.as_ptr() as usize + eq + 1;
                let t = s[off..off + p.len() - eq - 1].trim_ascii();
                let toff = t.as_ptr() as usize - s.as_ptr() as usize;
                tag = Some(v.slice(toff..toff + t.len()));
            }
        }
    }
    Some(NameAddr { display, uri, tag })
}

fn position_outside_quotes(s: &[u8], want: u8) -> Option<usize> {
    let mut quoted = false;
    for (i, &c) in s.iter().enumerate() {
        if c == b'"' {
            quoted = !quoted;
        } else if c == want && !quoted {
            return Some(i);
        }
    }
    None
}

/// `CSeq: 123 INVITE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number.
    pub num: u32,
    /// The method.
    pub method: Method,
    /// The method as written.
    pub method_name: Bytes,
}

/// Parses a CSeq value.
pub fn parse_cseq(v: &Bytes) -> Option<CSeq> {
    let s = v.trim_ascii();
    let sp = s.iter().position(|c| c.is_ascii_whitespace())?;
    let num = std::str::from_utf8(&s[..sp]).ok()?.parse().ok()?;
    let m = s[sp..].trim_ascii();
    if m.is_empty() {
        return None;
    }
    let moff = m.as_ptr() as usize - v.as_ptr() as usize;
    Some(CSeq {
        num,
        method: Method::from_bytes(m),
        method_name: v.slice(moff..moff + m.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn via_forms() {
        let v = parse_via(&b("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport")).unwrap();
        assert_eq!(
            (&v.transport[..], &v.host[..], v.port),
            (&b"UDP"[..], &b"127.0.0.1"[..], Some(5070))
        );
        assert_eq!(v.branch.as_deref(), Some(&b"z9hG4bK-1"[..]));
        assert_eq!(v.rport, Some(None));
        let v = parse_via(&b(
            "SIP / 2.0 / TCP [::1]:5060 ; received=127.0.0.2 ; rport=9 ;branch=x",
        ))
        .unwrap();
        assert_eq!(
            (&v.host[..], v.port, v.rport),
            (&b"::1"[..], Some(5060), Some(Some(9)))
        );
        assert_eq!(v.received.as_deref(), Some(&b"127.0.0.2"[..]));
        let v = parse_via(&b("SIP/2.0/UDP host.example")).unwrap();
        assert_eq!((&v.host[..], v.port), (&b"host.example"[..], None));
        assert!(parse_via(&b("SIP/3.0/UDP h")).is_none());
        assert!(parse_via(&b("garbage")).is_none());
    }

    #[test]
    fn ports_are_digits_that_fit() {
        assert_eq!(port_number(b"5060"), Some(5060));
        assert_eq!(port_number(b"65535"), Some(65535));
        for bad in [&b""[..], b"65536", b"+5060", b" 5060", b"50a", b"000005060"] {
            assert_eq!(port_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_first_item_and_the_rest() {
        let cut = |v: &[u8]| {
            let (f, r) = first_and_rest(v);
            (v[f.range()].to_vec(), r.map(|r| v[r.range()].to_vec()))
        };
        let one = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            cut(b" SIP/2.0/UDP a;branch=1 "),
            (one("SIP/2.0/UDP a;branch=1"), None)
        );
        assert_eq!(
            cut(b"SIP/2.0/UDP a , SIP/2.0/UDP b,SIP/2.0/UDP c "),
            (
                one("SIP/2.0/UDP a"),
                Some(one("SIP/2.0/UDP b,SIP/2.0/UDP c"))
            )
        );
        // Quotes and <…> hide commas (the slow path); empty items are skipped.
        assert_eq!(
            cut(b"\"x,y\" <sip:a,b>;p=1, , <sip:c>"),
            (one("\"x,y\" <sip:a,b>;p=1"), Some(one("<sip:c>")))
        );
        assert_eq!(cut(b"SIP/2.0/UDP a, "), (one("SIP/2.0/UDP a"), None));
    }

    #[test]
    fn name_addr_forms() {
        let n = parse_name_addr(&b(
            "\"Alice, A\" <sip:alice@127.0.0.1;transport=tcp>;tag=abc",
        ))
        .unwrap();
        assert_eq!(
            (&n.display[..], &n.uri[..], n.tag.as_deref()),
            (
                &b"Alice, A"[..],
                &b"sip:alice@127.0.0.1;transport=tcp"[..],
                Some(&b"abc"[..])
            )
        );
        let n = parse_name_addr(&b("sip:bob@h;tag=9")).unwrap();
        assert_eq!(
            (&n.uri[..], n.tag.as_deref()),
            (&b"sip:bob@h"[..], Some(&b"9"[..]))
        );
        let n = parse_name_addr(&b("<sip:c@h>")).unwrap();
        assert!(n.tag.is_none());
    }

    #[test]
    fn cseq_and_commas() {
        let c = parse_cseq(&b(" 314159 INVITE ")).unwrap();
        assert_eq!((c.num, c.method), (314159, Method::Invite));
        assert!(parse_cseq(&b("x INVITE")).is_none());
        let v = b"SIP/2.0/UDP a;branch=1, \"x,y\" <sip:a,b>, SIP/2.0/UDP b";
        let parts: Vec<&[u8]> = split_commas(v).into_iter().map(|r| &v[r.range()]).collect();
        assert_eq!(
            parts,
            [
                &b"SIP/2.0/UDP a;branch=1"[..],
                &b"\"x,y\" <sip:a,b>"[..],
                &b"SIP/2.0/UDP b"[..]
            ]
        );
    }
}
