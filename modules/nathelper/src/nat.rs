//! Pure NAT heuristics: which addresses are private, and what an SDP body
//! says about media addresses. No message, no I/O: text in, answers out.

use std::net::{IpAddr, Ipv4Addr};

/// Kamailio's private networks: RFC 1918, RFC 6598 (carrier-grade NAT,
/// 100.64/10) and RFC 7335's 192.0.0.0/29, as (network, prefix length).
const PRIVATE: &[(Ipv4Addr, u32)] = &[
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(192, 0, 0, 0), 29),
];

/// What `nat_addr_mode` 1 (the default) adds: 192.0.0.0/24 (RFC 7335's IETF
/// protocol assignments).
const RESERVED: &[(Ipv4Addr, u32)] = &[(Ipv4Addr::new(192, 0, 0, 0), 24)];

fn in_net(a: Ipv4Addr, (net, len): (Ipv4Addr, u32)) -> bool {
    let mask = u32::MAX << (32 - len);
    u32::from(a) & mask == u32::from(net)
}

/// Whether `a` is in one of the private networks (`reserved`:
/// `nat_addr_mode` 1, the reserved ones too).
pub fn is_private(a: Ipv4Addr, reserved: bool) -> bool {
    PRIVATE.iter().any(|&n| in_net(a, n)) || (reserved && RESERVED.iter().any(|&n| in_net(a, n)))
}

/// Whether the address written `text` is private: `None` when the text is
/// no IPv4 address (an IPv6 address, a name), as Kamailio's `is1918addr`
/// reads it with `inet_aton`.
pub fn is_private_text(text: &[u8], reserved: bool) -> Option<bool> {
    let a = inet_aton(std::str::from_utf8(text).ok()?)?;
    Some(is_private(a, reserved))
}

/// `inet_aton(3)`: one to four parts separated by dots, each decimal,
/// octal (leading `0`) or hexadecimal (`0x`); the last part fills the bytes
/// left (`10.1` is 10.0.0.1). Trailing whitespace ends it.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let s = s.split([' ', '\t', '\n', '\r']).next()?;
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        nums.push(number(p)?);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >= 1u64 << room {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((v | last) as u32))
}

/// One part of an `inet_aton` address (`strtoul` with base 0).
fn number(p: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = u64::from_str_radix(digits, radix).ok()?;
    (n <= u64::from(u32::MAX)).then_some(n)
}

/// An IP address written in a URI host or a Via (an IPv6 one with or without
/// brackets).
pub fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(text).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// The address family of an SDP connection or origin line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `IP4`.
    V4,
    /// `IP6`.
    V6,
}

/// One media description (`m=`) of a session: its own `c=` address, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The `c=` of this media description.
    pub conn: Option<(Family, String)>,
    /// The family in force for it (Kamailio's parser carries the last `c=`'s
    /// family on to media descriptions without one).
    pub family: Family,
}

/// One SDP session (from a `v=` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session-level `c=` (before the first `m=`).
    pub conn: Option<(Family, String)>,
    /// Its media descriptions.
    pub streams: Vec<Stream>,
}

/// The sessions of an SDP body, read as Kamailio's SDP parser does for
/// what nathelper asks (each needs `v=`, `o=` and `m=`; a media description
/// needs a `c=` of its own or the session's). `None`: not SDP it can read.
pub fn sdp_sessions(body: &[u8]) -> Option<Vec<Session>> {
    let text = std::str::from_utf8(body).ok()?;
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("v="))
        .map(|(i, _)| i)
        .collect();
    if starts.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    let mut family = Family::V4;
    for (k, &a) in starts.iter().enumerate() {
        let z = starts.get(k + 1).copied().unwrap_or(lines.len());
        let lines = &lines[a..z];
        let o = lines.iter().position(|l| l.starts_with("o="))?;
        let m1 = lines.iter().position(|l| l.starts_with("m="))?;
        if m1 < o {
            return None;
        }
        let conn = match lines[o..m1].iter().find(|l| l.starts_with("c=")) {
            Some(c) => Some(media_address(&c[2..])?),
            None => None,
        };
        if let Some((f, _)) = &conn {
            family = *f;
        }
        let mut streams = Vec::new();
        let mut i = m1;
        while i < lines.len() {
            let end = lines[i + 1..]
                .iter()
                .position(|l| l.starts_with("m="))
                .map_or(lines.len(), |p| i + 1 + p);
            let c = match lines[i..end].iter().find(|l| l.starts_with("c=")) {
                Some(c) => Some(media_address(&c[2..])?),
                None if conn.is_none() => return None,
                None => None,
            };
            if let Some((f, _)) = &c {
                family = *f;
            }
            streams.push(Stream { conn: c, family });
            i = end;
        }
        out.push(Session { conn, streams });
    }
    Some(out)
}

/// `IN IP4 192.168.1.10` → (IPv4, the address).
fn media_address(line: &str) -> Option<(Family, String)> {
    let mut words = line.split_whitespace();
    let mut family = None;
    for w in words.by_ref() {
        match w {
            "IP4" => {
                family = Some(Family::V4);
                break;
            }
            "IP6" => {
                family = Some(Family::V6);
                break;
            }
            _ => {}
        }
    }
    let addr = words.next()?;
    // `c=IN IP4 224.2.1.1/127`: the TTL is not part of the address.
    let addr = addr.split('/').next().unwrap_or(addr);
    Some((family?, addr.to_string()))
}

/// `nat_uac_test` 8: a media address of the body is private. In each
/// session, media descriptions are read in order until one is not IPv4 or is
/// `0.0.0.0` (on hold).
pub fn sdp_has_private(sessions: &[Session], reserved: bool) -> bool {
    for s in sessions {
        for st in &s.streams {
            let (family, addr) = match (&st.conn, &s.conn) {
                (Some((f, a)), _) => (*f, a.as_str()),
                (None, Some((f, a))) => (*f, a.as_str()),
                (None, None) => break,
            };
            if family != Family::V4 || addr == "0.0.0.0" {
                break;
            }
            if is_private_text(addr.as_bytes(), reserved) == Some(true) {
                return true;
            }
        }
    }
    false
}

/// `nat_uac_test` 256: how many sessions' session-level `c=` differ from
/// `src` (sessions are read until one has none); `None` when an address
/// does not parse.
pub fn sdp_cline_mismatches(sessions: &[Session], src: IpAddr) -> Option<usize> {
    let mut n = 0;
    for s in sessions {
        let Some((_, addr)) = &s.conn else { break };
        let ip: IpAddr = addr.parse().ok()?;
        if ip != src {
            n += 1;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_reads_every_form() {
        let a = |s: &str| inet_aton(s).map(|a| a.to_string());
        assert_eq!(a("192.168.1.10").as_deref(), Some("192.168.1.10"));
        assert_eq!(a("10.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(a("10.1.2").as_deref(), Some("10.1.0.2"));
        assert_eq!(a("167772161").as_deref(), Some("10.0.0.1"));
        assert_eq!(a("0x0a.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(a("012.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(a("10.0.0.1 trailing").as_deref(), Some("10.0.0.1"));
        for bad in [
            "",
            "256.1.1.1",
            "1.2.3.4.5",
            "a.b.c.d",
            "1.2.3.256",
            "09.1.1.1",
            "::1",
            "[::1]",
        ] {
            assert_eq!(a(bad), None, "{bad}");
        }
    }

    #[test]
    fn private_networks_and_their_edges() {
        let p = |s: &str, reserved: bool| is_private(s.parse().unwrap(), reserved);
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.168.0.1",
            "100.64.0.0",
            "100.127.255.255",
            "192.0.0.7",
        ] {
            assert!(p(yes, false), "{yes}");
        }
        for no in [
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "127.0.0.1",
            "8.8.8.8",
        ] {
            assert!(!p(no, true), "{no}");
        }
        // nat_addr_mode 1 adds 192.0.0.0/24; mode 0 stops at /29.
        assert!(p("192.0.0.8", true));
        assert!(p("192.0.0.255", true));
        assert!(!p("192.0.0.8", false));
        assert!(!p("192.0.1.0", true));
        assert_eq!(is_private_text(b"192.168.1.10", true), Some(true));
        assert_eq!(is_private_text(b"example.com", true), None);
        assert_eq!(is_private_text(b"2001:db8::1", true), None);
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 31\r\nc=IN IP4 203.0.113.5\r\n";

    #[test]
    fn sdp_sessions_streams_and_connections() {
        let s = sdp_sessions(SDP.as_bytes()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].conn, Some((Family::V4, "192.168.1.10".into())));
        assert_eq!(s[0].streams.len(), 2);
        assert_eq!(s[0].streams[0].conn, None);
        assert_eq!(
            s[0].streams[1].conn,
            Some((Family::V4, "203.0.113.5".into()))
        );
        // A media description without c= and no session c=: unreadable.
        assert_eq!(
            sdp_sessions(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n"),
            None
        );
        assert_eq!(sdp_sessions(b"not sdp"), None);
    }

    #[test]
    fn sdp_private_media_and_cline_mismatch() {
        let s = sdp_sessions(SDP.as_bytes()).unwrap();
        assert!(sdp_has_private(&s, true));
        let public = SDP.replace("192.168.1.10", "203.0.113.9");
        let p = sdp_sessions(public.as_bytes()).unwrap();
        assert!(!sdp_has_private(&p, true));
        // On hold (0.0.0.0) ends the session's scan before a private stream.
        let hold = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\nm=audio 2 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\n";
        assert!(!sdp_has_private(
            &sdp_sessions(hold.as_bytes()).unwrap(),
            true
        ));
        let src: IpAddr = "192.168.1.10".parse().unwrap();
        assert_eq!(sdp_cline_mismatches(&s, src), Some(0));
        assert_eq!(
            sdp_cline_mismatches(&s, "127.0.0.1".parse().unwrap()),
            Some(1)
        );
    }
}
