//! rr (Kamailio's Record-Route and Route module): `record_route([params])`,
//! `record_route_preset(addr[, addr2])`, `loose_route()` (loose and strict
//! routers, RFC 3261 §16.4 and §16.12), `loose_route_preloaded()`,
//! `add_rr_param(param)`, `check_route_param(re)`, `is_direction(dir)`,
//! `remove_record_route()` and `$route_uri`; parameters `enable_double_rr`,
//! `append_fromtag`, `enable_full_lr`, `ignore_sips`, `add_username`,
//! `enable_socket_mismatch_warning`.
//!
//! `record_route()` records what was asked in the message's
//! [`SipCtx::record_route`]; the core writes the Record-Route line(s) on top
//! of each branch it relays, with the address of the socket the request came
//! in on and, with double record-routing, the one it leaves from (known only
//! then). `loose_route()` works on the message as received ([`route`]) and
//! writes its result into the edits, `$du` and the R-URI, so `t_relay()`
//! after it relays along the route set.

pub mod route;

use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::net::Transport;
use siphon_script::sip::{DoubleRr, RecordRoute, RrAddresses, SipCtx};
use siphon_script::{Exec, ModuleDef, ParamSpec, RouteType, Value};
use siphon_sip::parse_uri;
use std::sync::Arc;

/// The module parameters.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// `enable_double_rr` (default 1).
    pub double_rr: DoubleRr,
    /// `append_fromtag` (default 1): `;ftag=` in our Record-Route.
    pub append_fromtag: bool,
    /// `enable_full_lr` (default 0): `;lr=on` instead of `;lr`.
    pub full_lr: bool,
    /// `ignore_sips` (default 0): `sip:` even when the R-URI is `sips:`.
    pub ignore_sips: bool,
    /// `add_username` (default 0): the R-URI's user in our Record-Route URI.
    pub add_username: bool,
    /// `enable_socket_mismatch_warning` (default 1): warn when the second
    /// of a double Route pair names no socket of ours.
    pub mismatch_warning: bool,
}

impl Config {
    fn from_module(cfg: &ModuleConfig) -> Result<Config, String> {
        let flag = |name: &str, default: i64| -> Result<bool, String> {
            match cfg.int(name).unwrap_or(default) {
                0 => Ok(false),
                1 => Ok(true),
                v => Err(format!("{name} must be 0 or 1, found {v}")),
            }
        };
        let double_rr = match cfg.int("enable_double_rr").unwrap_or(1) {
            0 => DoubleRr::Never,
            1 => DoubleRr::WhenSocketsDiffer,
            2 => DoubleRr::Always,
            v => return Err(format!("enable_double_rr must be 0, 1 or 2, found {v}")),
        };
        Ok(Config {
            double_rr,
            append_fromtag: flag("append_fromtag", 1)?,
            full_lr: flag("enable_full_lr", 0)?,
            ignore_sips: flag("ignore_sips", 0)?,
            add_username: flag("add_username", 0)?,
            mismatch_warning: flag("enable_socket_mismatch_warning", 1)?,
        })
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "rr",
        params: vec![
            ParamSpec::int("enable_double_rr"),
            ParamSpec::int("append_fromtag"),
            ParamSpec::int("enable_full_lr"),
            ParamSpec::int("ignore_sips"),
            ParamSpec::int("add_username"),
            ParamSpec::int("enable_socket_mismatch_warning"),
        ],
        instantiate: Arc::new(|cfg| {
            Ok(Arc::new(Rr {
                cfg: Config::from_module(cfg)?,
            }) as Arc<dyn Module>)
        }),
    }
}

/// The loaded module.
pub struct Rr {
    cfg: Config,
}

/// What the module keeps for one message beside its [`SipCtx`].
#[derive(Debug, Default)]
struct RrState {
    /// `add_rr_param()` before `record_route()`: added when it comes.
    pending: Vec<u8>,
    /// Our route parameters as `loose_route()` found them (the top Route's,
    /// or the R-URI's after a strict router).
    routed: Option<Bytes>,
    /// What `loose_route()` returned: a second call returns it again
    /// without removing Route URIs twice.
    loose_routed: Option<i32>,
}

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx
        .ext
        .get_mut::<SipCtx>()
        .filter(|s| s.msg.is_request())
}

fn state<'a>(ex: &'a mut Exec<'_>) -> &'a mut RrState {
    if ex.ctx.ext.get::<RrState>().is_none() {
        ex.ctx.ext.insert(RrState::default());
    }
    ex.ctx.ext.get_mut::<RrState>().expect("inserted")
}

/// `;p` for `p` (the params of `record_route()` and `add_rr_param()` are
/// written with their `;`; a forgotten one is added).
fn with_semicolon(p: &[u8]) -> Vec<u8> {
    let p = p.trim_ascii();
    let mut out = Vec::with_capacity(p.len() + 1);
    if !p.is_empty() && p[0] != b';' {
        out.push(b';');
    }
    out.extend_from_slice(p);
    out
}

/// Our route parameters (`;lr;ftag=…`): what `loose_route()` found, else
/// the top Route's when it is ours (Kamailio's `redo_route_params`).
fn routed_params(ex: &mut Exec<'_>) -> Option<Bytes> {
    if let Some(p) = ex.ctx.ext.get::<RrState>().and_then(|s| s.routed.clone()) {
        return Some(p);
    }
    let prog = ex.prog;
    let s = sip(ex)?;
    let top = route::entries(&s.msg).into_iter().next()?;
    prog.is_myself(&top.uri)
        .then(|| route::uri_params(&top.uri))
}

/// Kamailio's `is_direction`: upstream when our route's `ftag` is not the
/// From-tag; downstream when they match or either is missing.
fn upstream(ex: &mut Exec<'_>) -> bool {
    let Some(params) = routed_params(ex) else {
        return false;
    };
    let Some(ftag) = route::param(&params, b"ftag").filter(|t| !t.is_empty()) else {
        return false;
    };
    let from_tag = sip(ex)
        .and_then(|s| s.msg.from())
        .and_then(|f| f.tag)
        .filter(|t| !t.is_empty());
    from_tag.is_some_and(|t| t[..] != *ftag)
}

/// The URI start (`sip:` / `sips:`, `user@`) of our Record-Route.
fn uri_start(cfg: &Config, s: &SipCtx) -> Vec<u8> {
    let ruri = s.ruri();
    let sips =
        !cfg.ignore_sips && parse_uri(&ruri).is_ok_and(|u| u.scheme.eq_ignore_ascii_case(b"sips"));
    let mut out = if sips {
        b"sips:".to_vec()
    } else {
        b"sip:".to_vec()
    };
    if cfg.add_username {
        // The original R-URI's user, else the new one's (Kamailio's get_username).
        let orig = s.msg.ruri().unwrap_or_default();
        let user = parse_uri(&orig)
            .ok()
            .and_then(|u| u.user.filter(|u| !u.is_empty()).map(<[u8]>::to_vec))
            .or_else(|| {
                parse_uri(&ruri)
                    .ok()
                    .and_then(|u| u.user.filter(|u| !u.is_empty()).map(<[u8]>::to_vec))
            });
        if let Some(u) = user {
            out.extend_from_slice(&u);
            out.push(b'@');
        }
    }
    out
}

fn lr(cfg: &Config) -> &'static [u8] {
    if cfg.full_lr { b";lr=on" } else { b";lr" }
}

const RR_ROUTES: RouteType = RouteType::REQUEST
    .or(RouteType::BRANCH)
    .or(RouteType::FAILURE);

impl Rr {
    fn record_route(&self, ex: &mut Exec<'_>, params: Option<Bytes>) -> i32 {
        let cfg = self.cfg;
        let tag = if cfg.append_fromtag {
            let up = upstream(ex);
            sip(ex).and_then(|s| {
                let hdr = if up { s.msg.to() } else { s.msg.from() };
                hdr.and_then(|h| h.tag).filter(|t| !t.is_empty())
            })
        } else {
            None
        };
        let pending = std::mem::take(&mut state(ex).pending);
        let Some(s) = sip(ex) else { return -1 };
        if s.record_route.is_some() {
            tracing::error!(target: "script", "record_route: double attempt to record-route");
            return -1;
        }
        let mut p = lr(&cfg).to_vec();
        if let Some(t) = tag {
            p.extend_from_slice(b";ftag=");
            p.extend_from_slice(&t);
        }
        if let Some(params) = params {
            p.extend_from_slice(&with_semicolon(&params));
        }
        p.extend_from_slice(&pending);
        s.record_route = Some(RecordRoute {
            uri_start: Bytes::from(uri_start(&cfg, s)),
            params: p,
            addresses: RrAddresses::Ours(cfg.double_rr),
        });
        1
    }

    fn record_route_preset(&self, ex: &mut Exec<'_>, addrs: Vec<Bytes>) -> i32 {
        let cfg = self.cfg;
        let pending = std::mem::take(&mut state(ex).pending);
        let Some(s) = sip(ex) else { return -1 };
        if s.record_route.is_some() {
            tracing::error!(target: "script", "record_route_preset: double attempt to record-route");
            return -1;
        }
        let mut p = Vec::new();
        if cfg.append_fromtag
            && let Some(t) = s.msg.from().and_then(|f| f.tag).filter(|t| !t.is_empty())
        {
            p.extend_from_slice(b";ftag=");
            p.extend_from_slice(&t);
        }
        p.extend_from_slice(lr(&cfg));
        p.extend_from_slice(&pending);
        s.record_route = Some(RecordRoute {
            uri_start: Bytes::from(uri_start(&cfg, s)),
            params: p,
            addresses: RrAddresses::Preset(addrs),
        });
        1
    }

    fn loose_route(&self, ex: &mut Exec<'_>) -> i32 {
        if let Some(code) = ex.ctx.ext.get::<RrState>().and_then(|s| s.loose_routed) {
            return code;
        }
        let (cfg, prog) = (self.cfg, ex.prog);
        let Some(s) = sip(ex) else { return -1 };
        let myself = |u: &[u8]| prog.is_myself(u);
        let r = route::loose_route(&s.msg, &s.ruri(), cfg.double_rr != DoubleRr::Never, &myself);
        route::apply(&s.msg, &mut s.edits, &r);
        if r.du.is_some() {
            s.du = r.du.clone();
        }
        if r.du.is_some() || r.ruri.is_some() {
            // A new next hop: t_relay() may use the R-URI again (Kamailio's ruri_mark_new).
            s.ruri_consumed = false;
        }
        if let Some(u) = &r.force_socket {
            match our_socket(u).filter(|_| prog.is_myself(u)) {
                Some(sock) => s.send_socket = Some(sock),
                None if cfg.mismatch_warning => tracing::warn!(
                    target: "script",
                    "loose_route: no socket of ours matches the second Record-Route `{}`",
                    String::from_utf8_lossy(u)
                ),
                None => {}
            }
        }
        let st = state(ex);
        st.routed = r.routed_params;
        st.loose_routed = Some(r.code);
        r.code
    }
}

/// The socket a Route URI of ours names: its IP, port (5060, 5061 for TLS)
/// and transport.
fn our_socket(uri: &[u8]) -> Option<(Transport, std::net::SocketAddr)> {
    let u = parse_uri(uri).ok()?;
    let transport = match u.param(b"transport") {
        Some(t) if t.eq_ignore_ascii_case(b"tcp") => Transport::Tcp,
        Some(t) if t.eq_ignore_ascii_case(b"tls") => Transport::Tls,
        _ if u.scheme.eq_ignore_ascii_case(b"sips") => Transport::Tls,
        _ => Transport::Udp,
    };
    let ip: std::net::IpAddr = std::str::from_utf8(u.host).ok()?.parse().ok()?;
    let port = u.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    Some((transport, std::net::SocketAddr::new(ip, port)))
}

/// `check_route_param(re)`: the regular expression, fixed at load when constant.
struct CheckRouteParam {
    fixed: Option<regex::bytes::Regex>,
    args: Args,
}

impl Call for CheckRouteParam {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        let re = match &self.fixed {
            Some(r) => r.clone(),
            None => match regex::bytes::Regex::new(&self.args.text(0, ex)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(target: "script", "check_route_param: {e}");
                    return (-1).into();
                }
            },
        };
        let hit = routed_params(ex).is_some_and(|p| !p.is_empty() && re.is_match(&p));
        (if hit { 1 } else { -1 }).into()
    }
}

impl Module for Rr {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::*;
        let me = Arc::new(Rr { cfg: self.cfg });
        let mut v = Vec::new();
        let m = me.clone();
        v.push(
            FunctionSpec::new("record_route", &[Str], move |ex, a| {
                let params = (!a.is_empty())
                    .then(|| a.bytes(0, ex))
                    .filter(|p| !p.is_empty());
                m.record_route(ex, params).into()
            })
            .min_args(0)
            .routes(RR_ROUTES),
        );
        let m = me.clone();
        let double = self.cfg.double_rr;
        v.push(
            FunctionSpec::checked(
                "record_route_preset",
                &[Str, Str],
                move |a| {
                    if a.len() > 1 && double == DoubleRr::Never {
                        return Err("record_route_preset with two addresses needs enable_double_rr (it is 0)".into());
                    }
                    Ok(())
                },
                move |ex, a| {
                    let mut addrs = vec![a.bytes(0, ex)];
                    if a.len() > 1 {
                        let second = a.bytes(1, ex);
                        if !second.is_empty() {
                            addrs.push(second);
                        }
                    }
                    if addrs[0].is_empty() {
                        tracing::error!(target: "script", "record_route_preset: empty address");
                        return (-1).into();
                    }
                    m.record_route_preset(ex, addrs).into()
                },
            )
            .min_args(1)
            .routes(RR_ROUTES),
        );
        let m = me.clone();
        v.push(
            FunctionSpec::new("loose_route", &[], move |ex, _| m.loose_route(ex).into())
                .routes(RouteType::REQUEST),
        );
        let m = me.clone();
        v.push(
            FunctionSpec::new("loose_route_preloaded", &[], move |ex, _| {
                (if m.loose_route(ex) == -3 { 1 } else { -1 }).into()
            })
            .routes(RouteType::REQUEST),
        );
        v.push(
            FunctionSpec::new("add_rr_param", &[Str], |ex, a| {
                let p = with_semicolon(&a.bytes(0, ex));
                if p.is_empty() {
                    return (-1).into();
                }
                let Some(s) = sip(ex) else { return (-1).into() };
                if let Some(rr) = &mut s.record_route {
                    // After record_route(): added to it (to a preset too,
                    // where Kamailio drops it).
                    rr.params.extend_from_slice(&p);
                    return 1.into();
                }
                let st = state(ex);
                if st.pending.len() + p.len() > 512 {
                    tracing::error!(target: "script", "add_rr_param: more than 512 bytes of parameters");
                    return (-1).into();
                }
                st.pending.extend_from_slice(&p);
                1.into()
            })
            .routes(RR_ROUTES),
        );
        v.push(
            FunctionSpec::with_bind(
                "check_route_param",
                &[Str],
                Arc::new(|args: Args| {
                    let fixed = match args.const_value(0) {
                        Some(v) => Some(regex::bytes::Regex::new(&v.to_text()).map_err(|e| {
                            format!("check_route_param: bad regular expression: {e}")
                        })?),
                        None => None,
                    };
                    Ok(Box::new(CheckRouteParam { fixed, args }) as Box<dyn Call>)
                }),
            )
            .routes(RouteType::REQUEST),
        );
        let append_fromtag = self.cfg.append_fromtag;
        v.push(
            FunctionSpec::with_bind(
                "is_direction",
                &[Str],
                Arc::new(move |args: Args| {
                    if !append_fromtag {
                        return Err(
                            "is_direction needs modparam(\"rr\", \"append_fromtag\", 1)".into()
                        );
                    }
                    let dir = args
                        .const_value(0)
                        .map(|v| v.to_text().to_ascii_lowercase())
                        .ok_or("is_direction takes \"downstream\" or \"upstream\" (a constant)")?;
                    let want_up = match dir.as_str() {
                        "upstream" => true,
                        "downstream" => false,
                        other => {
                            return Err(format!(
                                "unknown direction `{other}` (downstream or upstream)"
                            ));
                        }
                    };
                    Ok(Box::new(IsDirection(want_up)) as Box<dyn Call>)
                }),
            )
            .routes(RouteType::REQUEST),
        );
        v.push(
            FunctionSpec::new("remove_record_route", &[], |ex, _| {
                state(ex).pending.clear();
                let Some(s) = sip(ex) else { return (-1).into() };
                s.record_route = None;
                1.into()
            })
            .routes(RouteType::REQUEST.or(RouteType::FAILURE)),
        );
        v
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        vec![PvClassSpec::read_only("route_uri", |ex| {
            ex.ctx
                .ext
                .get::<SipCtx>()
                .and_then(|s| route::entries(&s.msg).into_iter().next())
                .map_or(Value::Null, |e| Value::Str(e.uri))
        })]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct IsDirection(bool);

impl Call for IsDirection {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        (if upstream(ex) == self.0 { 1 } else { -1 }).into()
    }
}

#[cfg(test)]
mod tests;
