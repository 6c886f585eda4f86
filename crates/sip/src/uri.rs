//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), borrowed from the input.

/// A parsed URI; every part borrows the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri<'a> {
    /// `sip`, `sips` or `tel` (as written).
    pub scheme: &'a [u8],
    /// The user part (the number for tel URIs).
    pub user: Option<&'a [u8]>,
    /// The password after `user:`.
    pub password: Option<&'a [u8]>,
    /// The host (IPv6 without brackets); empty for tel URIs.
    pub host: &'a [u8],
    /// The port.
    pub port: Option<u16>,
    /// `;name[=value]` parameters, without the leading `;`.
    pub params: &'a [u8],
    /// `?headers`, without the `?`.
    pub headers: &'a [u8],
}

/// Why a URI could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Not `sip:`, `sips:` or `tel:`.
    #[error("unsupported URI scheme")]
    Scheme,
    /// No host after the user part.
    #[error("no host in URI")]
    NoHost,
    /// The port is not a number 0-65535.
    #[error("bad port in URI")]
    Port,
    /// `[` without `]`.
    #[error("bad IPv6 reference in URI")]
    Ipv6,
}

impl<'a> Uri<'a> {
    /// The value of parameter `name` (`Some(b"")` for a flag parameter).
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        for p in self.params.split(|&c| c == b';') {
            let (n, v) = match p.iter().position(|&c| c == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &p[p.len()..]),
            };
            if n.eq_ignore_ascii_case(name) {
                return Some(v);
            }
        }
        None
    }
}

/// Parses a URI.
pub fn parse_uri(s: &[u8]) -> Result<Uri<'_>, UriError> {
    let colon = s.iter().position(|&c| c == b':').ok_or(UriError::Scheme)?;
    let scheme = &s[..colon];
    let rest = &s[colon + 1..];
    let is = |n: &str| scheme.eq_ignore_ascii_case(n.as_bytes());
    if is("tel") {
        let end = rest.iter().position(|&c| c == b';').unwrap_or(rest.len());
        let params = if end < rest.len() {
            &rest[end + 1..]
        } else {
            &rest[rest.len()..]
        };
        return Ok(Uri {
            scheme,
            user: Some(&rest[..end]),
            password: None,
            host: &rest[..0],
            port: None,
            params,
            headers: &rest[rest.len()..],
        });
    }
    if !is("sip") && !is("sips") {
        return Err(UriError::Scheme);
    }
    let (headers, rest) = match rest.iter().position(|&c| c == b'?') {
        Some(q) => (&rest[q + 1..], &rest[..q]),
        None => (&rest[rest.len()..], rest),
    };
    let (user, password, hostpart) = match rest.iter().position(|&c| c == b'@') {
        Some(at) => {
            let ui = &rest[..at];
            match ui.iter().position(|&c| c == b':') {
                Some(c) => (Some(&ui[..c]), Some(&ui[c + 1..]), &rest[at + 1..]),
                None => (Some(ui), None, &rest[at + 1..]),
            }
        }
        None => (None, None, rest),
    };
    let (hp, params) = match hostpart.iter().position(|&c| c == b';') {
        Some(sc) => (&hostpart[..sc], &hostpart[sc + 1..]),
        None => (hostpart, &hostpart[hostpart.len()..]),
    };
    let (host, port_s) = if hp.first() == Some(&b'[') {
        let close = hp.iter().position(|&c| c == b']').ok_or(UriError::Ipv6)?;
        let after = &hp[close + 1..];
        let port = match after {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return Err(UriError::Ipv6),
        };
        (&hp[1..close], port)
    } else {
        match hp.iter().position(|&c| c == b':') {
            Some(c) => (&hp[..c], Some(&hp[c + 1..])),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err(UriError::NoHost);
    }
    let port = match port_s {
        None => None,
        Some(p) => Some(
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or(UriError::Port)?,
        ),
    };
    Ok(Uri {
        scheme,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = parse_uri(b"sip:alice:pw@127.0.0.1:5070;transport=tcp;lr?subject=x").unwrap();
        assert_eq!(
            (u.user, u.password, u.host, u.port),
            (
                Some(&b"alice"[..]),
                Some(&b"pw"[..]),
                &b"127.0.0.1"[..],
                Some(5070)
            )
        );
        assert_eq!(u.param(b"transport"), Some(&b"tcp"[..]));
        assert_eq!(u.param(b"lr"), Some(&b""[..]));
        assert_eq!(u.headers, b"subject=x");
        let u = parse_uri(b"sips:[::1]:5061").unwrap();
        assert_eq!((u.user, u.host, u.port), (None, &b"::1"[..], Some(5061)));
        let u = parse_uri(b"sip:+1555;isub=2@example.org").unwrap();
        assert_eq!(
            (u.user, u.host),
            (Some(&b"+1555;isub=2"[..]), &b"example.org"[..])
        );
        let u = parse_uri(b"tel:+1-555-0100;phone-context=example.com").unwrap();
        assert_eq!(
            (u.user, u.param(b"phone-context")),
            (Some(&b"+1-555-0100"[..]), Some(&b"example.com"[..]))
        );
    }

    #[test]
    fn bad_uris() {
        assert_eq!(parse_uri(b"http://x"), Err(UriError::Scheme));
        assert_eq!(parse_uri(b"sip:alice@"), Err(UriError::NoHost));
        assert_eq!(parse_uri(b"sip:h:99999"), Err(UriError::Port));
        assert_eq!(parse_uri(b"sip:[::1"), Err(UriError::Ipv6));
    }
}
