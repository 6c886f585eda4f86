//! siputils (Kamailio): message and URI checks.
//!
//! - `is_request()`, `is_reply()`: the message's kind.
//! - `is_first_hop([mode])`: a request with one Via value; a reply whose top
//!   Record-Route is ours (with `mode` 0, the default: an IP address, and the
//!   reply not sent by that address itself, a loop) or that has none.
//! - `is_uri_user_e164(pv)`: the user part of the URI in `pv` is `+` and 2–15
//!   digits; `is_e164(pv)`: the value itself is.
//! - `uri_param(name)`: the R-URI has `;name` without a value;
//!   `uri_param(name, value)`: with exactly that value (case-sensitive, as
//!   Kamailio); `uri_param_any(name)`: with or without a value.
//! - `add_uri_param(param)`: appends `;param` to the R-URI (before its
//!   `?headers`).
//!
//! Params `options_accept`, `options_accept_encoding`,
//! `options_accept_language`, `options_support`, `contact_flds_separator`,
//! `rpid_prefix`, `rpid_suffix`, `rpid_avp` are accepted with a warning:
//! they shape functions siphon does not have (`options_reply`, rpid).

use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType};
use siphon_sip::{HeaderName, SipMsg};
use std::sync::Arc;

/// The module (no state).
pub struct Siputils;

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

fn code(b: bool) -> FnResult {
    if b { 1.into() } else { (-1).into() }
}

const URI_ROUTES: RouteType = RouteType::REQUEST
    .or(RouteType::BRANCH)
    .or(RouteType::FAILURE);

impl Module for Siputils {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::*;
        vec![
            FunctionSpec::new("is_request", &[], |ex, _| {
                code(sip(ex).is_some_and(|s| s.msg.is_request()))
            }),
            FunctionSpec::new("is_reply", &[], |ex, _| {
                code(sip(ex).is_some_and(|s| !s.msg.is_request()))
            }),
            FunctionSpec::new("is_first_hop", &[Int], |ex, a| {
                let mode = if a.is_empty() { Some(0) } else { a.int(0, ex) };
                match mode {
                    Some(mode) => is_first_hop(ex, mode).into(),
                    None => (-1).into(),
                }
            })
            .min_args(0),
            FunctionSpec::new("is_uri_user_e164", &[Pv], |ex, a| {
                let v = a.value(0, ex);
                code(!v.is_null() && is_uri_user_e164(&v.to_bytes()))
            }),
            FunctionSpec::new("is_e164", &[Pv], |ex, a| {
                let v = a.value(0, ex);
                code(!v.is_null() && is_e164(&v.to_bytes()))
            })
            .routes(RouteType::REQUEST.or(RouteType::FAILURE)),
            FunctionSpec::new("uri_param", &[Str, Str], |ex, a| {
                let name = a.bytes(0, ex);
                let value = (a.len() > 1).then(|| a.bytes(1, ex));
                let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
                    return (-1).into();
                };
                code(uri_param(&s.ruri(), &name, value.as_deref()))
            })
            .min_args(1)
            .routes(URI_ROUTES),
            FunctionSpec::new("uri_param_any", &[Str], |ex, a| {
                let name = a.bytes(0, ex);
                let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
                    return (-1).into();
                };
                code(uri_param_any(&s.ruri(), &name))
            })
            .routes(URI_ROUTES),
            FunctionSpec::new("add_uri_param", &[Str], |ex, a| {
                let param = a.bytes(0, ex);
                let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
                    return (-1).into();
                };
                if param.is_empty() {
                    return 1.into();
                }
                match add_uri_param(&s.ruri(), &param) {
                    Some(uri) => {
                        s.edits.ruri = Some(uri);
                        s.ruri_consumed = false;
                        1.into()
                    }
                    None => {
                        tracing::error!(target: "script", "add_uri_param: the R-URI cannot be parsed");
                        (-1).into()
                    }
                }
            })
            .routes(RouteType::REQUEST),
        ]
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Kamailio's `e164_check`: `+` and 2 to 15 digits.
pub fn is_e164(v: &[u8]) -> bool {
    v.len() > 2 && v.len() < 17 && v[0] == b'+' && v[1..].iter().all(u8::is_ascii_digit)
}

/// The user part (between the scheme's `:` and `@`) is E.164.
pub fn is_uri_user_e164(uri: &[u8]) -> bool {
    let Some(colon) = uri.iter().position(|&c| c == b':') else {
        return false;
    };
    let rest = &uri[colon + 1..];
    rest.iter()
        .position(|&c| c == b'@')
        .is_some_and(|at| is_e164(&rest[..at]))
}

/// The URI's `;name[=value]` parameters (not its `?headers`).
fn params(uri: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
    let Ok(u) = siphon_sip::parse_uri(uri) else {
        return Vec::new();
    };
    u.params
        .split(|&c| c == b';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&c| c == b'=') {
            Some(i) => (p[..i].trim_ascii(), Some(p[i + 1..].trim_ascii())),
            None => (p.trim_ascii(), None),
        })
        .collect()
}

/// `uri_param(name[, value])`: the first parameter called `name` (case
/// sensitive) has no value, or exactly `value`.
pub fn uri_param(uri: &[u8], name: &[u8], value: Option<&[u8]>) -> bool {
    match params(uri).into_iter().find(|(n, _)| *n == name) {
        Some((_, v)) => match value {
            Some(want) => v.unwrap_or_default() == want,
            None => v.is_none_or(<[u8]>::is_empty),
        },
        None => false,
    }
}

/// `uri_param_any(name)`: a parameter called `name` (any case).
pub fn uri_param_any(uri: &[u8], name: &[u8]) -> bool {
    params(uri)
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// The URI with `;param` appended to its parameters (before `?headers`).
/// Kamailio rebuilds a URI with headers as `sip:` whatever its scheme and
/// garbles a password; siphon keeps the URI as written.
pub fn add_uri_param(uri: &[u8], param: &[u8]) -> Option<Bytes> {
    let u = siphon_sip::parse_uri(uri).ok()?;
    let at = if u.headers.is_empty() {
        uri.len()
    } else {
        u.headers.as_ptr() as usize - uri.as_ptr() as usize - 1
    };
    let mut out = Vec::with_capacity(uri.len() + param.len() + 1);
    out.extend_from_slice(&uri[..at]);
    out.push(b';');
    out.extend_from_slice(param);
    out.extend_from_slice(&uri[at..]);
    Some(Bytes::from(out))
}

/// How many Via values a message carries.
fn via_values(msg: &SipMsg) -> usize {
    msg.headers
        .iter()
        .filter(|h| h.name == HeaderName::Via)
        .map(|h| siphon_sip::split_commas(&msg.header_value(h)).len())
        .sum()
}

/// `is_first_hop(mode)`.
fn is_first_hop(ex: &mut Exec<'_>, mode: i64) -> i32 {
    let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
        return -1;
    };
    if s.msg.is_request() {
        return if via_values(&s.msg) <= 1 { 1 } else { -1 };
    }
    let Some(rr) = s.msg.value(HeaderName::RecordRoute) else {
        return 1;
    };
    let Some(first) = siphon_sip::split_commas(&rr)
        .into_iter()
        .next()
        .map(|r| rr.slice(r.range()))
        .and_then(|v| siphon_sip::parse_name_addr(&v))
    else {
        return -1;
    };
    let Ok(u) = siphon_sip::parse_uri(&first.uri) else {
        return -1;
    };
    let host = String::from_utf8_lossy(u.host);
    let ip: Option<std::net::IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    if mode == 0 && ip.is_none() {
        return -1;
    }
    let (uri, peer) = (first.uri.clone(), s.peer);
    let transport = u.param(b"transport").map(<[u8]>::to_ascii_lowercase);
    let port = u.port;
    if !ex.prog.is_myself(&uri) {
        return -1;
    }
    if mode == 0
        && let Some(ip) = ip
    {
        let same_port = port.map_or(peer.src.port() == 5060, |p| p == peer.src.port());
        let same_proto = transport.map_or(peer.transport.name() == "udp", |t| {
            t == peer.transport.name().as_bytes()
        });
        if ip == peer.src.ip() && same_port && same_proto {
            return -1;
        }
    }
    1
}

/// What `loadmodule "siputils.so"` finds.
pub fn def() -> ModuleDef {
    let ne = |n: &'static str| ParamSpec::str(n).no_effect();
    ModuleDef {
        name: "siputils",
        params: vec![
            ne("options_accept"),
            ne("options_accept_encoding"),
            ne("options_accept_language"),
            ne("options_support"),
            ne("contact_flds_separator"),
            ne("rpid_prefix"),
            ne("rpid_suffix"),
            ne("rpid_avp"),
        ],
        instantiate: Arc::new(|_| Ok(Arc::new(Siputils) as Arc<dyn Module>)),
    }
}

#[cfg(test)]
mod tests;
