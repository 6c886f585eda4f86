//! The route set of a request (RFC 3261 §16.4, §16.12) as Kamailio's
//! `loose_route()` processes it (`rr/loose.c`): pure, over the message, the
//! current R-URI and a "is this URI mine" check; the result says what to
//! change, [`apply`] writes it into the message's edits.

use bytes::Bytes;
use siphon_sip::{At, Edits, HeaderName, SipMsg, parse_uri, split_commas};

/// One URI of the Route headers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of its header in `SipMsg::headers`.
    pub header: usize,
    /// Its position among the header's comma-separated values.
    pub pos: usize,
    /// The URI (inside `<…>`).
    pub uri: Bytes,
}

/// Every Route URI of `msg`, in order (a header with several values gives
/// several entries).
pub fn entries(msg: &SipMsg) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, h) in msg.headers.iter().enumerate() {
        if h.name != HeaderName::Route {
            continue;
        }
        let v = msg.header_value(h);
        for (pos, r) in split_commas(&v).into_iter().enumerate() {
            let item = v.slice(r.range());
            out.push(Entry {
                header: i,
                pos,
                uri: uri_of(&item),
            });
        }
    }
    out
}

/// The URI of a name-addr (`"x" <sip:a;lr>;p=1` → `sip:a;lr`), or of a bare URI.
pub fn uri_of(item: &Bytes) -> Bytes {
    match (
        item.iter().position(|&c| c == b'<'),
        item.iter().position(|&c| c == b'>'),
    ) {
        (Some(a), Some(z)) if z > a => item.slice(a + 1..z),
        _ => item.clone(),
    }
}

/// The parameters of a URI, with the leading `;` (`;lr;ftag=x`), empty when none.
pub fn uri_params(uri: &[u8]) -> Bytes {
    match parse_uri(uri) {
        Ok(u) if !u.params.is_empty() => {
            let mut p = Vec::with_capacity(u.params.len() + 1);
            p.push(b';');
            p.extend_from_slice(u.params);
            Bytes::from(p)
        }
        _ => Bytes::new(),
    }
}

/// The value of `;name=value` (or `Some("")` for a flag) among `params`.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    params
        .split(|&c| c == b';')
        .filter(|p| !p.is_empty())
        .find_map(|p| {
            let (n, v) = match p.iter().position(|&c| c == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &p[p.len()..]),
            };
            n.trim_ascii()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim_ascii())
        })
}

/// A strict router's URI: no `lr` parameter.
fn is_strict(uri: &[u8]) -> bool {
    param(&uri_params(uri), b"lr").is_none()
}

/// One of a double Record-Route pair (`;r2=…`).
fn is_r2(uri: &[u8]) -> bool {
    param(&uri_params(uri), b"r2").is_some()
}

/// `maddr` replaces the host (Kamailio's `get_maddr_uri`: `sip:MADDR[:PORT]`).
fn with_maddr(uri: &Bytes) -> Bytes {
    let Ok(u) = parse_uri(uri) else {
        return uri.clone();
    };
    match u.param(b"maddr") {
        Some(m) if !m.is_empty() => {
            let mut out = b"sip:".to_vec();
            out.extend_from_slice(m);
            if let Some(p) = u.port {
                out.extend_from_slice(format!(":{p}").as_bytes());
            }
            Bytes::from(out)
        }
        _ => uri.clone(),
    }
}

/// What `loose_route()` decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// The return code: 1 routed by the route set, -1 no Route / not routed /
    /// error, -3 a preloaded Route of ours and nothing after it.
    pub code: i32,
    /// Route URIs removed from the front.
    pub remove_front: usize,
    /// The last Route URI is removed too (it became the R-URI: recovery
    /// after a strict router).
    pub remove_last: bool,
    /// A new R-URI.
    pub ruri: Option<Bytes>,
    /// A new `$du`.
    pub du: Option<Bytes>,
    /// The R-URI saved as the last Route (the next hop is a strict router).
    pub append_route: Option<Bytes>,
    /// The URI of ours whose socket requests leave from (the second of a
    /// double Record-Route pair).
    pub force_socket: Option<Bytes>,
    /// Our own route parameters (`;lr;ftag=…`), for `check_route_param()`
    /// and `is_direction()`.
    pub routed_params: Option<Bytes>,
}

impl Routed {
    fn code(code: i32) -> Routed {
        Routed {
            code,
            ..Routed::default()
        }
    }
}

/// Kamailio's `loose_route()` (mode 0: loose and strict routers) for a
/// request whose current R-URI is `ruri`. `double_rr`: `enable_double_rr` is
/// on (the second of our `;r2=on` pair is removed too).
pub fn loose_route(
    msg: &SipMsg,
    ruri: &Bytes,
    double_rr: bool,
    myself: &dyn Fn(&[u8]) -> bool,
) -> Routed {
    let routes = entries(msg);
    if routes.is_empty() || parse_uri(ruri).is_err() {
        return Routed::code(-1);
    }
    let Some(to) = msg.to() else {
        return Routed::code(-1);
    };
    let preloaded = to.tag.as_ref().is_none_or(|t| t.is_empty());
    if !preloaded && myself(ruri) {
        after_strict(&routes, ruri, double_rr, myself)
    } else {
        after_loose(&routes, ruri, preloaded, double_rr, myself)
    }
}

/// The previous hop was a loose router (or the Route set is preloaded).
fn after_loose(
    routes: &[Entry],
    ruri: &Bytes,
    preloaded: bool,
    double_rr: bool,
    myself: &dyn Fn(&[u8]) -> bool,
) -> Routed {
    let mut out = Routed::code(1);
    let mut i = 0;
    let top = &routes[0].uri;
    if parse_uri(top).is_err() {
        return Routed::code(-1);
    }
    if myself(top) {
        out.routed_params = Some(uri_params(top));
        i = 1;
        if double_rr && is_r2(top) && i < routes.len() {
            out.force_socket = Some(routes[1].uri.clone());
            i = 2;
        }
        if i == routes.len() {
            out.remove_front = i;
            out.code = if preloaded { -3 } else { 1 };
            return out;
        }
    }
    let next = &routes[i].uri;
    if parse_uri(next).is_err() {
        return Routed::code(-1);
    }
    if is_strict(next) {
        // The next hop is a strict router: it gets the request with its URI
        // as the R-URI, and ours moves to the end of the Route set.
        out.append_route = Some(route_line(ruri));
        out.ruri = Some(with_maddr(next));
        out.remove_front = i + 1;
    } else {
        out.du = Some(with_maddr(next));
        out.remove_front = i;
    }
    out
}

/// The R-URI is ours and the request is in a dialog: the previous hop was
/// a strict router that put our Record-Route URI in the R-URI.
fn after_strict(
    routes: &[Entry],
    ruri: &Bytes,
    double_rr: bool,
    myself: &dyn Fn(&[u8]) -> bool,
) -> Routed {
    let mut out = Routed::code(1);
    out.routed_params = Some(uri_params(ruri));
    let mut i = 0;
    let top = &routes[0].uri;
    if parse_uri(top).is_err() {
        return Routed::code(-1);
    }
    if double_rr && is_r2(top) && myself(top) {
        out.force_socket = Some(top.clone());
        i = 1;
        if i == routes.len() {
            out.remove_front = 1;
            out.code = -1;
            return out;
        }
    }
    let next = &routes[i].uri;
    if parse_uri(next).is_err() {
        return Routed::code(-1);
    }
    if is_strict(next) {
        out.ruri = Some(with_maddr(next));
        out.remove_front = i + 1;
    } else {
        // The next hop is a loose router; the remote target the strict
        // router moved to the end of the Route set becomes the R-URI again.
        out.du = Some(with_maddr(next));
        out.remove_front = i;
        let last = routes.last().expect("not empty");
        if parse_uri(&last.uri).is_err() {
            return Routed::code(-1);
        }
        out.ruri = Some(with_maddr(&last.uri));
        out.remove_last = true;
    }
    out
}

fn route_line(uri: &[u8]) -> Bytes {
    let mut l = b"Route: <".to_vec();
    l.extend_from_slice(uri);
    l.extend_from_slice(b">\r\n");
    Bytes::from(l)
}

/// Writes what [`loose_route`] removed and added into `edits`: a Route
/// header losing some of its values is rewritten in place with the rest.
pub fn apply(msg: &SipMsg, edits: &mut Edits, r: &Routed) {
    let routes = entries(msg);
    let n = routes.len();
    let gone = |k: usize| k < r.remove_front || (r.remove_last && k + 1 == n);
    let mut k = 0;
    while k < n {
        let header = routes[k].header;
        let start = k;
        while k < n && routes[k].header == header {
            k += 1;
        }
        let kept: Vec<usize> = (start..k).filter(|&j| !gone(j)).collect();
        if kept.len() == k - start {
            continue;
        }
        if !edits.remove.contains(&header) {
            edits.remove.push(header);
        }
        let (Some(&first), Some(&last)) = (kept.first(), kept.last()) else {
            continue;
        };
        // Kept values are contiguous (a prefix and the very last one go).
        let h = &msg.headers[header];
        let v = msg.header_value(h);
        let items = split_commas(&v);
        let (a, z) = (
            items[routes[first].pos].start as usize,
            items[routes[last].pos].end as usize,
        );
        let mut line = msg.get(h.name_rng).to_vec();
        line.extend_from_slice(b": ");
        line.extend_from_slice(&v[a..z]);
        line.extend_from_slice(b"\r\n");
        edits.insert.push((At::Before(header), Bytes::from(line)));
    }
    if let Some(l) = &r.append_route {
        edits.append.push(l.clone());
    }
    if let Some(u) = &r.ruri {
        edits.ruri = Some(u.clone());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ME: [&str; 2] = ["127.0.0.1:5301", "127.0.0.1:5302"];

    fn myself(u: &[u8]) -> bool {
        parse_uri(u).is_ok_and(|u| {
            let hp = format!(
                "{}:{}",
                String::from_utf8_lossy(u.host),
                u.port.unwrap_or(5060)
            );
            ME.contains(&hp.as_str())
        })
    }

    /// An INVITE to `ruri` from tag `abc`, with a To-tag unless empty, and `routes` (header lines).
    pub(crate) fn req(ruri: &str, to_tag: &str, routes: &str) -> SipMsg {
        let tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        siphon_sip::parse(Bytes::from(format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bK1\r\n\
             From: <sip:a@127.0.0.1>;tag=abc\r\nTo: <sip:b@127.0.0.1>{tag}\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\n{routes}Content-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    /// Runs loose_route and returns (code, $du, the request as relayed).
    fn run(ruri: &str, to_tag: &str, routes: &str) -> (i32, Option<String>, String) {
        let m = req(ruri, to_tag, routes);
        let r = loose_route(&m, &Bytes::from(ruri.to_string()), true, &myself);
        let mut e = Edits::default();
        apply(&m, &mut e, &r);
        let out = siphon_sip::serialize(&m, &e);
        (
            r.code,
            r.du.map(|d| String::from_utf8_lossy(&d).into_owned()),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    fn routes_of(wire: &str) -> Vec<&str> {
        wire.lines()
            .filter(|l| l.starts_with("Route:") || l.starts_with("INVITE"))
            .collect()
    }

    // The expectations below are what Kamailio 5.6.3 did with the same
    // requests (its R-URI, Route lines and $du after loose_route()).

    #[test]
    fn ours_then_a_loose_next_hop() {
        let (code, du, wire) = run(
            "sip:b@127.0.0.1:5310",
            "xyz",
            "Route: <sip:127.0.0.1:5301;lr;ftag=abc>, <sip:127.0.0.1:5310;lr>\r\n",
        );
        assert_eq!((code, du.as_deref()), (1, Some("sip:127.0.0.1:5310;lr")));
        assert_eq!(
            routes_of(&wire),
            [
                "INVITE sip:b@127.0.0.1:5310 SIP/2.0",
                "Route: <sip:127.0.0.1:5310;lr>"
            ]
        );
    }

    #[test]
    fn ours_only_in_dialog_and_preloaded() {
        let routes = "Route: <sip:127.0.0.1:5301;lr;ftag=abc>\r\n";
        let (code, du, wire) = run("sip:b@127.0.0.1:5310", "xyz", routes);
        assert_eq!((code, du), (1, None));
        assert_eq!(routes_of(&wire), ["INVITE sip:b@127.0.0.1:5310 SIP/2.0"]);
        let (code, du, wire) = run("sip:b@127.0.0.1:5310", "", routes);
        assert_eq!((code, du), (-3, None));
        assert_eq!(routes_of(&wire), ["INVITE sip:b@127.0.0.1:5310 SIP/2.0"]);
        // Preloaded with a hop after ours: routed (1), as Kamailio.
        let (code, du, _) = run(
            "sip:b@127.0.0.1:5310",
            "",
            "Route: <sip:127.0.0.1:5301;lr>\r\nRoute: <sip:127.0.0.1:5310;lr>\r\n",
        );
        assert_eq!((code, du.as_deref()), (1, Some("sip:127.0.0.1:5310;lr")));
    }

    #[test]
    fn both_of_a_double_pair_go() {
        let m = req(
            "sip:b@127.0.0.1:5310",
            "xyz",
            "Route: <sip:127.0.0.1:5301;transport=tcp;r2=on;lr;ftag=zzz>\r\n\
             Route: <sip:127.0.0.1:5302;r2=on;lr;ftag=zzz>,<sip:127.0.0.1:5310;lr>\r\n",
        );
        let r = loose_route(
            &m,
            &Bytes::from_static(b"sip:b@127.0.0.1:5310"),
            true,
            &myself,
        );
        assert_eq!(r.code, 1);
        assert_eq!(r.du.as_deref(), Some(&b"sip:127.0.0.1:5310;lr"[..]));
        assert_eq!(
            r.force_socket.as_deref(),
            Some(&b"sip:127.0.0.1:5302;r2=on;lr;ftag=zzz"[..])
        );
        assert_eq!(
            r.routed_params.as_deref(),
            Some(&b";transport=tcp;r2=on;lr;ftag=zzz"[..])
        );
        let mut e = Edits::default();
        apply(&m, &mut e, &r);
        let wire = String::from_utf8_lossy(&siphon_sip::serialize(&m, &e)).into_owned();
        assert_eq!(
            routes_of(&wire),
            [
                "INVITE sip:b@127.0.0.1:5310 SIP/2.0",
                "Route: <sip:127.0.0.1:5310;lr>"
            ]
        );
        // Without enable_double_rr the twin stays and is the next hop.
        let r = loose_route(
            &m,
            &Bytes::from_static(b"sip:b@127.0.0.1:5310"),
            false,
            &myself,
        );
        assert_eq!(
            r.du.as_deref(),
            Some(&b"sip:127.0.0.1:5302;r2=on;lr;ftag=zzz"[..])
        );
    }

    #[test]
    fn a_strict_next_hop_gets_the_request_uri() {
        let (code, du, wire) = run(
            "sip:b@127.0.0.1:5399",
            "xyz",
            "Route: <sip:127.0.0.1:5301;lr>,<sip:127.0.0.1:5310>,<sip:c@127.0.0.1:5320;lr>\r\n",
        );
        assert_eq!((code, du), (1, None));
        assert_eq!(
            routes_of(&wire),
            [
                "INVITE sip:127.0.0.1:5310 SIP/2.0",
                "Route: <sip:c@127.0.0.1:5320;lr>",
                "Route: <sip:b@127.0.0.1:5399>"
            ]
        );
        // The saved R-URI is the last header line, as Kamailio writes it.
        assert!(wire.ends_with("Content-Length: 0\r\nRoute: <sip:b@127.0.0.1:5399>\r\n\r\n"));
    }

    #[test]
    fn a_top_route_not_ours_is_the_next_hop() {
        let (code, du, wire) = run(
            "sip:b@127.0.0.1:5399",
            "xyz",
            "Route: <sip:127.0.0.1:5310;lr>\r\n",
        );
        assert_eq!((code, du.as_deref()), (1, Some("sip:127.0.0.1:5310;lr")));
        assert_eq!(
            routes_of(&wire),
            [
                "INVITE sip:b@127.0.0.1:5399 SIP/2.0",
                "Route: <sip:127.0.0.1:5310;lr>"
            ]
        );
    }

    #[test]
    fn recovery_after_a_strict_router() {
        // Our URI in the R-URI, the remote target last in the Route set.
        let (code, du, wire) = run(
            "sip:127.0.0.1:5301;lr;ftag=abc",
            "xyz",
            "Route: <sip:127.0.0.1:5310;lr>\r\nRoute: <sip:b@127.0.0.1:5399>\r\n",
        );
        assert_eq!((code, du.as_deref()), (1, Some("sip:127.0.0.1:5310;lr")));
        assert_eq!(
            routes_of(&wire),
            [
                "INVITE sip:b@127.0.0.1:5399 SIP/2.0",
                "Route: <sip:127.0.0.1:5310;lr>"
            ]
        );
        // The next hop is strict too: it becomes the R-URI.
        let (code, du, wire) = run(
            "sip:127.0.0.1:5301;ftag=abc",
            "xyz",
            "Route: <sip:b@127.0.0.1:5310>\r\n",
        );
        assert_eq!((code, du), (1, None));
        assert_eq!(routes_of(&wire), ["INVITE sip:b@127.0.0.1:5310 SIP/2.0"]);
    }

    #[test]
    fn maddr_names_the_next_hop() {
        let (code, du, _) = run(
            "sip:b@127.0.0.1:5399",
            "xyz",
            "Route: <sip:127.0.0.1:5301;lr>,<sip:foo.invalid:5310;maddr=127.0.0.1;lr>\r\n",
        );
        assert_eq!((code, du.as_deref()), (1, Some("sip:127.0.0.1:5310")));
    }

    #[test]
    fn no_route_is_minus_one() {
        let (code, du, _) = run("sip:b@127.0.0.1:5399", "xyz", "");
        assert_eq!((code, du), (-1, None));
    }

    #[test]
    fn params_and_uris() {
        let p = uri_params(b"sip:127.0.0.1:5301;lr;ftag=abc;x=\"y\"");
        assert_eq!(&p[..], b";lr;ftag=abc;x=\"y\"");
        assert_eq!(param(&p, b"ftag"), Some(&b"abc"[..]));
        assert_eq!(param(&p, b"LR"), Some(&b""[..]));
        assert_eq!(param(&p, b"r2"), None);
        assert_eq!(
            &uri_of(&Bytes::from_static(b"\"p\" <sip:h;lr>;x=1"))[..],
            b"sip:h;lr"
        );
        assert!(is_strict(b"sip:h;lrx"));
        assert!(!is_strict(b"sip:h;lr=on"));
    }
}
