//! Digest computations (RFC 2617, RFC 7616) and the credentials' parser.

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// A digest hash algorithm, optionally in its `-sess` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// MD5 (RFC 2617; the default when a challenge names none).
    Md5,
    /// SHA-256 (RFC 7616).
    Sha256,
}

impl Alg {
    /// Parses `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess` (case-insensitive):
    /// the algorithm and whether it is a `-sess` variant.
    pub fn parse(s: &str) -> Option<(Alg, bool)> {
        let l = s.to_ascii_lowercase();
        let (base, sess) = match l.strip_suffix("-sess") {
            Some(b) => (b, true),
            None => (l.as_str(), false),
        };
        match base {
            "md5" => Some((Alg::Md5, sess)),
            "sha-256" => Some((Alg::Sha256, sess)),
            _ => None,
        }
    }
    /// The name in a challenge.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Md5 => "MD5",
            Alg::Sha256 => "SHA-256",
        }
    }
    /// The lowercase hex digest of the parts, concatenated.
    pub fn hex(self, parts: &[&[u8]]) -> String {
        fn run<D: md5::Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            to_hex(&d.finalize())
        }
        match self {
            Alg::Md5 => run::<Md5>(parts),
            Alg::Sha256 => run::<Sha256>(parts),
        }
    }
    /// Length of the hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            Alg::Md5 => 32,
            Alg::Sha256 => 64,
        }
    }
}

/// Lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[usize::from(x >> 4)] as char);
        s.push(H[usize::from(x & 15)] as char);
    }
    s
}

/// MD5 of the parts, raw.
pub fn md5_raw(parts: &[&[u8]]) -> [u8; 16] {
    let mut d = Md5::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

/// Digest credentials from an `Authorization`/`Proxy-Authorization` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response`.
    pub response: String,
    /// `algorithm`, as written (empty: MD5).
    pub algorithm: String,
    /// `cnonce`.
    pub cnonce: String,
    /// `qop`.
    pub qop: String,
    /// `nc`, as written.
    pub nc: String,
    /// `opaque`.
    pub opaque: String,
}

/// Parses `Digest k=v, k="v", …`; `None` when it is not a Digest value.
pub fn parse_credentials(v: &[u8]) -> Option<Credentials> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (scheme, rest) = s.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = Credentials::default();
    let b = rest.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut out = String::new();
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[i..i + ch_len]);
                i += ch_len;
            }
            if i >= b.len() {
                return None; // unterminated quote
            }
            i += 1;
            out
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            rest[vs..i].trim().to_string()
        };
        let slot = match key.as_str() {
            "username" => &mut c.username,
            "realm" => &mut c.realm,
            "nonce" => &mut c.nonce,
            "uri" => &mut c.uri,
            "response" => &mut c.response,
            "algorithm" => &mut c.algorithm,
            "cnonce" => &mut c.cnonce,
            "qop" => &mut c.qop,
            "nc" => &mut c.nc,
            "opaque" => &mut c.opaque,
            _ => continue,
        };
        *slot = val;
    }
    Some(c)
}

/// HA1 = H(username:realm:password).
pub fn ha1(alg: Alg, user: &str, realm: &str, password: &str) -> String {
    alg.hex(&[
        user.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ])
}

/// The expected `response` for credentials `c`, given HA1 (already the
/// `-sess` base when `sess`), the request method and, for `qop=auth-int`,
/// the body.
pub fn response(
    alg: Alg,
    sess: bool,
    ha1: &str,
    c: &Credentials,
    method: &str,
    body: &[u8],
) -> String {
    let ha1 = if sess {
        alg.hex(&[
            ha1.as_bytes(),
            b":",
            c.nonce.as_bytes(),
            b":",
            c.cnonce.as_bytes(),
        ])
    } else {
        ha1.to_string()
    };
    let ha2 = if c.qop.eq_ignore_ascii_case("auth-int") {
        let hb = alg.hex(&[body]);
        alg.hex(&[
            method.as_bytes(),
            b":",
            c.uri.as_bytes(),
            b":",
            hb.as_bytes(),
        ])
    } else {
        alg.hex(&[method.as_bytes(), b":", c.uri.as_bytes()])
    };
    if c.qop.is_empty() {
        alg.hex(&[
            ha1.as_bytes(),
            b":",
            c.nonce.as_bytes(),
            b":",
            ha2.as_bytes(),
        ])
    } else {
        alg.hex(&[
            ha1.as_bytes(),
            b":",
            c.nonce.as_bytes(),
            b":",
            c.nc.as_bytes(),
            b":",
            c.cnonce.as_bytes(),
            b":",
            c.qop.as_bytes(),
            b":",
            ha2.as_bytes(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        let v = br#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = parse_credentials(v).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.nc, "00000001");
        assert_eq!(c.opaque, "5ccc069c403ebaf9f0171e9517f40e41");
        let h = ha1(Alg::Md5, &c.username, &c.realm, "Circle Of Life");
        assert_eq!(response(Alg::Md5, false, &h, &c, "GET", b""), c.response);
    }

    #[test]
    fn rfc7616_sha256_and_md5() {
        let mut c = Credentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            qop: "auth".into(),
            nc: "00000001".into(),
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
            ..Default::default()
        };
        let h = ha1(Alg::Sha256, &c.username, &c.realm, "Circle of Life");
        assert_eq!(
            response(Alg::Sha256, false, &h, &c, "GET", b""),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let h = ha1(Alg::Md5, &c.username, &c.realm, "Circle of Life");
        assert_eq!(
            response(Alg::Md5, false, &h, &c, "GET", b""),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        c.qop.clear();
        assert_ne!(
            response(Alg::Md5, false, &h, &c, "GET", b""),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn parse_algorithms_and_non_digest() {
        assert_eq!(Alg::parse("sha-256-sess"), Some((Alg::Sha256, true)));
        assert_eq!(Alg::parse("MD5"), Some((Alg::Md5, false)));
        assert_eq!(Alg::parse("SHA-512-256"), None);
        assert!(parse_credentials(b"Basic QWxhZGRpbjpvcGVu").is_none());
        assert!(parse_credentials(br#"Digest username="a"#).is_none());
        let c = parse_credentials(br#"Digest  username = "a\"b" ,realm=r,nonce="x,y""#).unwrap();
        assert_eq!(
            (c.username.as_str(), c.realm.as_str(), c.nonce.as_str()),
            ("a\"b", "r", "x,y")
        );
    }
}
