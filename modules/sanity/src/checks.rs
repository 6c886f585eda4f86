//! The checks of Kamailio's sanity module (`sanity.c`), pure: a message in,
//! passed or the failure with the reply Kamailio sends for it.

use bytes::Bytes;
use siphon_sip::{HeaderName, SipMsg};

/// `msg_checks` bits (Kamailio's `sanity_mod.h`).
pub mod bits {
    /// The R-URI's SIP version is 2.0.
    pub const RURI_SIP_VERSION: u32 = 1 << 0;
    /// The R-URI parses (its scheme is one siphon knows).
    pub const RURI_SCHEME: u32 = 1 << 1;
    /// From, To, Call-ID and CSeq present, none of them twice.
    pub const REQUIRED_HEADERS: u32 = 1 << 2;
    /// Via's SIP version (a no-op in Kamailio too).
    pub const VIA_SIP_VERSION: u32 = 1 << 3;
    /// Via's protocol (a no-op in Kamailio too).
    pub const VIA_PROTOCOL: u32 = 1 << 4;
    /// The CSeq method is the request's.
    pub const CSEQ_METHOD: u32 = 1 << 5;
    /// The CSeq number is a 32-bit number.
    pub const CSEQ_VALUE: u32 = 1 << 6;
    /// Content-Length matches the body.
    pub const CL: u32 = 1 << 7;
    /// Expires is a 32-bit number.
    pub const EXPIRES_VALUE: u32 = 1 << 8;
    /// Every Proxy-Require extension is supported (param `proxy_require`).
    pub const PROXY_REQUIRE: u32 = 1 << 9;
    /// The URIs of `uri_checks` parse.
    pub const PARSE_URIS: u32 = 1 << 10;
    /// Digest credentials are complete (a non-digest one fails, silently).
    pub const DIGEST: u32 = 1 << 11;
    /// At most one tag in From and in To.
    pub const DUPTAGS: u32 = 1 << 12;
    /// As `DIGEST`, but non-digest credentials pass.
    pub const AUTHORIZATION: u32 = 1 << 13;
    /// The first Via parses and has a host.
    pub const VIA1_HEADER: u32 = 1 << 14;
    /// One past the highest bit.
    pub const MAX: u32 = 1 << 15;
    /// Kamailio's `default_checks`: 3047 (not VIA1_HEADER, DUPTAGS,
    /// AUTHORIZATION, PARSE_URIS nor the two Via no-ops).
    pub const DEFAULT: u32 = RURI_SIP_VERSION
        | RURI_SCHEME
        | REQUIRED_HEADERS
        | CSEQ_METHOD
        | CSEQ_VALUE
        | CL
        | EXPIRES_VALUE
        | PROXY_REQUIRE
        | DIGEST;

    /// `uri_checks` bit: the R-URI.
    pub const URI_RURI: u32 = 1 << 0;
    /// The From URI.
    pub const URI_FROM: u32 = 1 << 1;
    /// The To URI.
    pub const URI_TO: u32 = 1 << 2;
    /// The first Contact URI.
    pub const URI_CONTACT: u32 = 1 << 3;
    /// One past the highest URI bit.
    pub const URI_MAX: u32 = 1 << 4;
    /// Kamailio's default `uri_checks`: 7.
    pub const URI_DEFAULT: u32 = URI_RURI | URI_FROM | URI_TO;
}

/// A reply Kamailio sends for a failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// A header line to add (`Unsupported: foo\r\n` with a 420).
    pub extra: Option<Bytes>,
}

/// Why a check failed, and what Kamailio answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answered with this reply.
    Reply(Reply),
    /// Too broken to answer: Kamailio marks the message "no reply"
    /// (`FL_MSG_NOREPLY`), so `sanity_reply()` sends nothing either.
    NoReply,
    /// Failed without a reply (a duplicated header, non-digest credentials
    /// for the digest check); `sanity_reply()` then sends 500.
    Silent,
}

fn reply(code: u16, reason: &'static str) -> Failure {
    Failure::Reply(Reply {
        code,
        reason,
        extra: None,
    })
}

/// Runs the checks of `msg_checks` in Kamailio's order; the R-URI is `ruri`
/// (the script may have changed it). `proxy_require` lists the extensions
/// siphon accepts in Proxy-Require (param `proxy_require`).
pub fn check(
    msg: &SipMsg,
    ruri: &[u8],
    msg_checks: u32,
    uri_checks: u32,
    proxy_require: &[String],
) -> Result<(), Failure> {
    use bits::*;
    let req = msg.is_request();
    let on = |b: u32| msg_checks & b != 0;
    // siphon's parser takes only `SIP/2.0` requests (RURI_SIP_VERSION: the
    // rest never reach a route). A reply has no R-URI nor request method:
    // Kamailio reads its reason phrase and version there (a union) and fails
    // these checks for every reply; siphon skips them.
    if on(RURI_SCHEME) && req && siphon_sip::parse_uri(ruri).is_err() {
        return Err(reply(400, "Bad Request URI"));
    }
    if on(REQUIRED_HEADERS) {
        required_headers(msg)?;
    }
    if on(VIA1_HEADER) && msg.top_via().is_none_or(|v| v.host.is_empty()) {
        return Err(Failure::NoReply);
    }
    if on(CSEQ_METHOD) && req {
        let c = msg.cseq().ok_or(Failure::NoReply)?;
        if c.method_name.is_empty() {
            return Err(reply(400, "Missing method in CSeq header"));
        }
        if c.method_name != msg.method_bytes() {
            return Err(reply(400, "CSeq method does not match request method"));
        }
    }
    if on(CSEQ_VALUE) {
        cseq_value(msg)?;
    }
    if on(CL) {
        content_length(msg)?;
    }
    if on(EXPIRES_VALUE) {
        expires(msg)?;
    }
    if on(PROXY_REQUIRE) {
        proxy_require_check(msg, proxy_require)?;
    }
    if on(PARSE_URIS) {
        parse_uris(msg, ruri, uri_checks)?;
    }
    if on(DIGEST) {
        match credentials(msg) {
            Ok(Credentials::Passed) => {}
            Ok(Credentials::NotDigest) => return Err(Failure::Silent),
            Err(f) => return Err(f),
        }
    }
    if on(AUTHORIZATION) {
        credentials(msg)?;
    }
    if on(DUPTAGS) {
        dup_tags(msg)?;
    }
    Ok(())
}

/// From, To, Call-ID and CSeq each exactly once.
fn required_headers(msg: &SipMsg) -> Result<(), Failure> {
    let count = |n: HeaderName| msg.headers.iter().filter(|h| h.name == n).count();
    let names = [
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ];
    if names.iter().any(|&n| count(n) == 0) {
        return Err(Failure::NoReply);
    }
    if names.iter().any(|&n| count(n) > 1) {
        return Err(Failure::Silent);
    }
    Ok(())
}

/// Kamailio's `str2valid_uint`: at most 10 digits, nothing else, at most 2^32.
fn valid_uint(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 10
        && s.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|n| n <= 1 << 32)
}

fn cseq_value(msg: &SipMsg) -> Result<(), Failure> {
    let v = msg.value(HeaderName::CSeq).ok_or(Failure::NoReply)?;
    let num = v
        .trim_ascii()
        .split(|c| c.is_ascii_whitespace())
        .next()
        .unwrap_or_default();
    if num.is_empty() {
        return Err(reply(400, "Missing number in CSeq header"));
    }
    if !valid_uint(num) {
        return Err(reply(400, "CSeq number is illegal"));
    }
    Ok(())
}

/// The body as received is as long as Content-Length says (a datagram may
/// carry more; a stream is cut by it).
fn content_length(msg: &SipMsg) -> Result<(), Failure> {
    let Some(v) = msg.value(HeaderName::ContentLength) else {
        return Ok(());
    };
    let Some(cl) = std::str::from_utf8(v.trim_ascii())
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
    else {
        return Err(reply(400, "Content-Length Failure"));
    };
    let received = msg.buf().len().saturating_sub(msg.body.start as usize);
    if received != cl {
        return Err(reply(400, "Content-Length mis-match"));
    }
    Ok(())
}

/// The first Expires as Kamailio's `parse_expires` reads it: digits up to
/// the first white space.
fn expires(msg: &SipMsg) -> Result<(), Failure> {
    let Some(h) = msg.headers_named(b"Expires").next() else {
        return Ok(());
    };
    let v = msg.header_value(h);
    let v = v.trim_ascii();
    if v.is_empty() {
        return Err(reply(400, "Bad Expires Header"));
    }
    let text = if v.len() > 10 {
        v
    } else {
        match v.iter().position(|c| !c.is_ascii_digit()) {
            Some(i) if v[i].is_ascii_whitespace() => &v[..i],
            _ => v,
        }
    };
    if !valid_uint(text) {
        return Err(reply(400, "Expires value is illegal"));
    }
    Ok(())
}

/// Every extension of every Proxy-Require line must be in `supported`
/// (Kamailio looks at the first line only).
fn proxy_require_check(msg: &SipMsg, supported: &[String]) -> Result<(), Failure> {
    for h in msg.headers_named(b"Proxy-Require") {
        let v = msg.header_value(h);
        if v.trim_ascii().is_empty() {
            return Err(reply(400, "Bad Proxy Require Header"));
        }
        for ext in v.split(|&c| c == b',').map(<[u8]>::trim_ascii) {
            if !supported.iter().any(|s| s.as_bytes() == ext) {
                let mut line = b"Unsupported: ".to_vec();
                line.extend_from_slice(ext);
                line.extend_from_slice(b"\r\n");
                return Err(Failure::Reply(Reply {
                    code: 420,
                    reason: "Bad Proxy Require Extension",
                    extra: Some(Bytes::from(line)),
                }));
            }
        }
    }
    Ok(())
}

fn parse_uris(msg: &SipMsg, ruri: &[u8], uri_checks: u32) -> Result<(), Failure> {
    use bits::*;
    if uri_checks & URI_RURI != 0 && msg.is_request() && siphon_sip::parse_uri(ruri).is_err() {
        return Err(reply(400, "Bad Request URI"));
    }
    // Kamailio's reason for To reads "Ivalid To Header" (a typo, fixed here).
    for (bit, name, reason) in [
        (URI_FROM, HeaderName::From, "Invalid From Header"),
        (URI_TO, HeaderName::To, "Invalid To Header"),
    ] {
        if uri_checks & bit == 0 {
            continue;
        }
        let v = msg.value(name).filter(|v| !v.trim_ascii().is_empty());
        let Some(v) = v else {
            return Err(Failure::NoReply);
        };
        let ok = siphon_sip::parse_name_addr(&v)
            .is_some_and(|na| siphon_sip::parse_uri(&na.uri).is_ok());
        if !ok {
            return Err(reply(400, reason));
        }
    }
    if uri_checks & URI_CONTACT != 0
        && let Some(v) = msg.value(HeaderName::Contact)
    {
        let t = v.trim_ascii();
        if t == b"*" {
            return Ok(());
        }
        let first = siphon_sip::split_commas(&v)
            .into_iter()
            .next()
            .map(|r| v.slice(r.range()));
        let Some(na) = first.as_ref().and_then(siphon_sip::parse_name_addr) else {
            return Err(reply(400, "Bad Contact Header"));
        };
        if siphon_sip::parse_uri(&na.uri).is_err() {
            return Err(reply(400, "Bad Contact URI"));
        }
    }
    Ok(())
}

/// What the credentials check found.
enum Credentials {
    /// Every credential is a complete digest (or there are none).
    Passed,
    /// A credential that is not a digest one.
    NotDigest,
}

/// Authorization, then Proxy-Authorization credentials (Kamailio's
/// `check_digest_only`).
fn credentials(msg: &SipMsg) -> Result<Credentials, Failure> {
    let auth = msg.headers_named(b"Authorization");
    let proxy = msg.headers_named(b"Proxy-Authorization");
    for h in auth.chain(proxy) {
        let v = msg.header_value(h);
        let v = v.trim_ascii();
        let scheme_end = v
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(v.len());
        if !v[..scheme_end].eq_ignore_ascii_case(b"Digest") {
            return Ok(Credentials::NotDigest);
        }
        let params =
            digest_params(&v[scheme_end..]).ok_or_else(|| reply(400, "Bad Auth Header"))?;
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v)
        };
        let complete = ["username", "realm", "nonce", "uri", "response"]
            .iter()
            .all(|n| get(n).is_some())
            && (get("qop").is_none() || (get("nc").is_some() && get("cnonce").is_some()));
        if !complete {
            return Err(reply(400, "Bad Auth Credentials"));
        }
        for (n, reason) in [
            ("username", "Auth Empty User"),
            ("nonce", "Auth Empty Nonce"),
            ("response", "Auth Empty Response"),
        ] {
            if get(n).is_some_and(|v| v.is_empty()) {
                return Err(reply(400, reason));
            }
        }
    }
    Ok(Credentials::Passed)
}

/// `name=value` pairs separated by commas, values optionally quoted; `None`
/// when the text is not that.
fn digest_params(s: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    let s = s.trim_ascii();
    while i < s.len() {
        while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let eq = i + s[i..].iter().position(|&c| c == b'=')?;
        let name = String::from_utf8(s[i..eq].trim_ascii().to_vec()).ok()?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
            return None;
        }
        i = eq + 1;
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if s.get(i) == Some(&b'"') {
            let mut v = Vec::new();
            i += 1;
            loop {
                match s.get(i)? {
                    b'"' => break,
                    b'\\' => {
                        v.push(*s.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            i += 1;
            v
        } else {
            let end = s[i..]
                .iter()
                .position(|&c| c == b',')
                .map_or(s.len(), |p| i + p);
            let v = s[i..end].trim_ascii().to_vec();
            i = end;
            v
        };
        out.push((name, value));
    }
    Some(out)
}

/// More than one `tag` parameter in From or in To.
fn dup_tags(msg: &SipMsg) -> Result<(), Failure> {
    for (name, reason) in [
        (HeaderName::From, "Many From Tag Params"),
        (HeaderName::To, "Many To Tag Params"),
    ] {
        let v = msg.value(name).ok_or(Failure::NoReply)?;
        let params_at = match v.iter().position(|&c| c == b'<') {
            Some(_) => v
                .iter()
                .rposition(|&c| c == b'>')
                .map_or(v.len(), |p| p + 1),
            None => v.iter().position(|&c| c == b';').unwrap_or(v.len()),
        };
        let tags = v[params_at..]
            .split(|&c| c == b';')
            .filter(|p| {
                let n = p.split(|&c| c == b'=').next().unwrap_or_default();
                n.trim_ascii().eq_ignore_ascii_case(b"tag")
            })
            .count();
        if tags > 1 {
            return Err(reply(400, reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bits::*;
    use super::*;

    fn msg(first: &str, extra: &str, body: &str) -> SipMsg {
        let m = format!(
            "{first}\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        siphon_sip::parse(Bytes::from(m)).unwrap()
    }

    fn run(first: &str, extra: &str, checks: u32, uri: u32) -> Result<(), Failure> {
        let m = msg(first, extra, "");
        let ruri = m.ruri().unwrap_or_default();
        check(&m, &ruri, checks, uri, &[])
    }

    fn inv(extra: &str, checks: u32) -> Result<(), Failure> {
        run(
            "INVITE sip:b@h SIP/2.0",
            &format!("CSeq: 1 INVITE\r\n{extra}"),
            checks,
            URI_DEFAULT,
        )
    }

    fn code(r: Result<(), Failure>) -> Option<(u16, &'static str)> {
        match r {
            Err(Failure::Reply(r)) => Some((r.code, r.reason)),
            _ => None,
        }
    }

    #[test]
    fn a_good_request_passes_every_check() {
        assert_eq!(
            inv("Expires: 60\r\nContact: <sip:a@1.2.3.4>\r\n", MAX - 1),
            Ok(())
        );
        assert_eq!(
            run(
                "INVITE sip:b@h SIP/2.0",
                "CSeq: 1 INVITE\r\nContact: *\r\n",
                MAX - 1,
                URI_MAX - 1
            ),
            Ok(())
        );
    }

    #[test]
    fn default_bits_are_kamailios() {
        assert_eq!(DEFAULT, 3047);
        assert_eq!(URI_DEFAULT, 7);
    }

    #[test]
    fn bad_request_uri() {
        let r = run(
            "INVITE http://x SIP/2.0",
            "CSeq: 1 INVITE\r\n",
            RURI_SCHEME,
            7,
        );
        assert_eq!(code(r), Some((400, "Bad Request URI")));
        let r = run(
            "INVITE http://x SIP/2.0",
            "CSeq: 1 INVITE\r\n",
            PARSE_URIS,
            URI_RURI,
        );
        assert_eq!(code(r), Some((400, "Bad Request URI")));
        // Not asked for: passes.
        assert_eq!(
            run(
                "INVITE http://x SIP/2.0",
                "CSeq: 1 INVITE\r\n",
                PARSE_URIS,
                URI_FROM
            ),
            Ok(())
        );
    }

    #[test]
    fn cseq_method_and_value() {
        let r = run("INVITE sip:b@h SIP/2.0", "CSeq: 1 BYE\r\n", CSEQ_METHOD, 7);
        assert_eq!(
            code(r),
            Some((400, "CSeq method does not match request method"))
        );
        assert_eq!(
            run(
                "INVITE sip:b@h SIP/2.0",
                "CSeq: 99999999999 INVITE\r\n",
                CSEQ_VALUE,
                7
            )
            .map_err(|_| ()),
            Err(())
        );
        assert!(valid_uint(b"4294967296"), "Kamailio's bound, off by one");
        assert!(!valid_uint(b"4294967297"));
        assert!(!valid_uint(b"12a"));
    }

    #[test]
    fn duplicated_required_header_fails_silently() {
        assert_eq!(
            inv("Call-ID: again\r\n", REQUIRED_HEADERS),
            Err(Failure::Silent)
        );
        assert_eq!(inv("", REQUIRED_HEADERS), Ok(()));
    }

    #[test]
    fn content_length_must_match_the_datagram() {
        let raw = "OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 2\r\n\r\nabcd";
        let m = siphon_sip::parse(Bytes::from(raw)).unwrap();
        let r = check(&m, &m.ruri().unwrap(), CL, 7, &[]);
        assert_eq!(code(r), Some((400, "Content-Length mis-match")));
        let m = msg("OPTIONS sip:b@h SIP/2.0", "CSeq: 1 OPTIONS\r\n", "abcd");
        assert_eq!(check(&m, &m.ruri().unwrap(), CL, 7, &[]), Ok(()));
    }

    #[test]
    fn expires_values() {
        assert_eq!(inv("Expires: 3600\r\n", EXPIRES_VALUE), Ok(()));
        assert_eq!(inv("Expires: 3600 x\r\n", EXPIRES_VALUE), Ok(()));
        assert_eq!(
            code(inv("Expires: abc\r\n", EXPIRES_VALUE)),
            Some((400, "Expires value is illegal"))
        );
        assert_eq!(
            code(inv("Expires: 12345678901\r\n", EXPIRES_VALUE)),
            Some((400, "Expires value is illegal"))
        );
        assert_eq!(
            code(inv("Expires:\r\n", EXPIRES_VALUE)),
            Some((400, "Bad Expires Header"))
        );
    }

    #[test]
    fn proxy_require_gets_420_with_unsupported() {
        let m = msg(
            "OPTIONS sip:b@h SIP/2.0",
            "CSeq: 1 OPTIONS\r\nProxy-Require: foo, bar\r\n",
            "",
        );
        let r = check(&m, &m.ruri().unwrap(), PROXY_REQUIRE, 7, &["foo".into()]);
        assert_eq!(
            r,
            Err(Failure::Reply(Reply {
                code: 420,
                reason: "Bad Proxy Require Extension",
                extra: Some(Bytes::from_static(b"Unsupported: bar\r\n")),
            }))
        );
        let r = check(
            &m,
            &m.ruri().unwrap(),
            PROXY_REQUIRE,
            7,
            &["foo".into(), "bar".into()],
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn from_to_and_contact_uris() {
        let r = run(
            "OPTIONS sip:b@h SIP/2.0",
            "CSeq: 1 OPTIONS\r\n",
            PARSE_URIS,
            URI_FROM,
        );
        assert_eq!(r, Ok(()));
        let m = siphon_sip::parse(Bytes::from_static(b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <foo:bar>;tag=1\r\nTo: <mailto:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContact: <http://x>\r\nContent-Length: 0\r\n\r\n")).unwrap();
        let ru = m.ruri().unwrap();
        assert_eq!(
            code(check(&m, &ru, PARSE_URIS, URI_FROM, &[])),
            Some((400, "Invalid From Header"))
        );
        assert_eq!(
            code(check(&m, &ru, PARSE_URIS, URI_TO, &[])),
            Some((400, "Invalid To Header"))
        );
        assert_eq!(
            code(check(&m, &ru, PARSE_URIS, URI_CONTACT, &[])),
            Some((400, "Bad Contact URI"))
        );
        assert_eq!(check(&m, &ru, PARSE_URIS, URI_RURI, &[]), Ok(()));
    }

    #[test]
    fn digest_credentials() {
        let good = "Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:h\", response=\"x\"\r\n";
        assert_eq!(inv(good, DIGEST), Ok(()));
        assert_eq!(inv("", DIGEST), Ok(()));
        let basic = "Authorization: Basic YTpi\r\n";
        assert_eq!(inv(basic, DIGEST), Err(Failure::Silent));
        assert_eq!(inv(basic, AUTHORIZATION), Ok(()));
        let no_nonce = "Proxy-Authorization: Digest username=\"a\", realm=\"r\", uri=\"sip:h\", response=\"x\"\r\n";
        assert_eq!(
            code(inv(no_nonce, DIGEST)),
            Some((400, "Bad Auth Credentials"))
        );
        let empty_user = good.replace("username=\"a\"", "username=\"\"");
        assert_eq!(
            code(inv(&empty_user, DIGEST)),
            Some((400, "Auth Empty User"))
        );
        assert_eq!(
            code(inv("Authorization: Digest junk\r\n", DIGEST)),
            Some((400, "Bad Auth Header"))
        );
    }

    #[test]
    fn duplicate_tags() {
        let m = siphon_sip::parse(Bytes::from_static(b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1;tag=2\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")).unwrap();
        assert_eq!(
            code(check(&m, &m.ruri().unwrap(), DUPTAGS, 7, &[])),
            Some((400, "Many From Tag Params"))
        );
        assert_eq!(inv("", DUPTAGS), Ok(()));
    }

    #[test]
    fn replies_skip_the_request_only_checks() {
        let m = siphon_sip::parse(Bytes::from_static(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")).unwrap();
        assert_eq!(check(&m, b"", 17604, 6, &[]), Ok(()));
        assert_eq!(check(&m, b"", MAX - 1, URI_MAX - 1, &[]), Ok(()));
    }
}
