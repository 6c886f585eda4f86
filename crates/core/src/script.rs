//! What the core adds to the script: the SIP context of a route run, the
//! sl/tm/textops functions, the SIP pseudo-variables and the tm/sl modules.

use crate::Core;
use crate::tm::TxId;
use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::core::core_module;
use siphon_script::{
    ArgKind, Exec, FunctionSpec, ModuleDef, PvClassSpec, Registry, RouteTable, RouteType, Value,
};
use siphon_sip::Kind;
use std::sync::Arc;
use std::time::Duration;

/// Where a request can still be answered: its own route, a failure route
/// (also a resumed one), a branch route, an event route holding a request.
const REPLY_ROUTES: RouteType = RouteType::REQUEST
    .or(RouteType::FAILURE)
    .or(RouteType::BRANCH)
    .or(RouteType::EVENT);

/// Branch prefix of the Vias siphon adds when it relays.
pub(crate) const BRANCH_PREFIX: &[u8] = b"z9hG4bKsph";

pub use siphon_script::sip::SipCtx;

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

fn code_reason(args: &Args, ex: &mut Exec<'_>) -> Option<(u16, Bytes)> {
    let code = args.int(0, ex)?;
    if !(100..=699).contains(&code) {
        tracing::error!(target: "script", "reply code {code} is not between 100 and 699");
        return None;
    }
    Some((code as u16, args.bytes(1, ex)))
}

fn sl_send(core: &Core, ex: &mut Exec<'_>, code: u16, reason: &[u8]) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    if !s.msg.is_request() {
        return -1;
    }
    let extra = std::mem::take(&mut s.reply_hdrs);
    if core.sl_reply(&s.msg, &s.peer, code, reason, &extra) {
        1
    } else {
        -1
    }
}

/// `send_reply`: through the transaction when the request has one, else stateless.
pub(crate) fn send_reply(core: &Arc<Core>, ex: &mut Exec<'_>, code: u16, reason: &[u8]) -> i32 {
    if sip(ex).is_some_and(|s| s.tx.is_some()) {
        t_send(core, ex, code, reason)
    } else {
        sl_send(core, ex, code, reason)
    }
}

fn t_send(core: &Arc<Core>, ex: &mut Exec<'_>, code: u16, reason: &[u8]) -> i32 {
    let flags = ex.ctx.flags;
    let Some(s) = sip(ex) else { return -1 };
    let extra = std::mem::take(&mut s.reply_hdrs);
    if tx_reply(core, s, flags, code, reason, &extra) {
        1
    } else {
        -1
    }
}

/// A reply through the request's transaction (`t_reply`).
fn tx_reply(
    core: &Arc<Core>,
    s: &SipCtx,
    flags: u64,
    code: u16,
    reason: &[u8],
    extra: &[Bytes],
) -> bool {
    let Some(id) = s.tx else {
        tracing::error!(target: "script", "t_reply: no transaction for this request (call t_newtran() first)");
        return false;
    };
    let tag = core.to_tag(&s.msg);
    // Built here (not in the table) to replace a reply too large for UDP.
    let (code, bytes) = core.sendable_reply(&s.msg, &s.peer, code, reason, &tag, extra);
    core.tm.with(core, id.index, |t, now| {
        // The flags as the reply leaves: what acc reads of the transaction.
        t.set_flags(id, flags);
        t.reply_bytes(id, code, bytes, now)
    })
}

/// [`siphon_script::api::Host::reply`]: a module answers the route's request
/// (sanity's stateless replies, registrar's `send_reply`-like ones).
pub(crate) fn module_reply(
    core: &Arc<Core>,
    ctx: &mut siphon_script::Ctx,
    code: u16,
    reason: &str,
    extra: &[Bytes],
    mode: ReplyMode,
) -> Result<(), String> {
    if !(100..=699).contains(&code) {
        return Err(format!("reply code {code} is not between 100 and 699"));
    }
    let flags = ctx.flags;
    let s = ctx
        .ext
        .get_mut::<SipCtx>()
        .ok_or("no SIP message to answer")?;
    if !s.msg.is_request() {
        return Err("a reply is not answered".into());
    }
    if s.msg.method() == siphon_sip::Method::Ack {
        return Err("an ACK is not answered".into());
    }
    let mut lines = std::mem::take(&mut s.reply_hdrs);
    lines.extend_from_slice(extra);
    let sent = match (mode, s.tx) {
        (ReplyMode::Stateful, Some(_)) => tx_reply(core, s, flags, code, reason.as_bytes(), &lines),
        _ => core.sl_reply(&s.msg, &s.peer, code, reason.as_bytes(), &lines),
    };
    if sent {
        Ok(())
    } else {
        Err(format!("the {code} reply could not be sent"))
    }
}

/// `sip:user@host:port;params` with the user or host replaced.
pub(crate) fn rebuild_uri(uri: &[u8], user: Option<&[u8]>, host: Option<&[u8]>) -> Option<Bytes> {
    let u = siphon_sip::parse_uri(uri).ok()?;
    let mut out = Vec::with_capacity(uri.len() + 16);
    out.extend_from_slice(u.scheme);
    out.push(b':');
    let user = user.or(u.user).filter(|x| !x.is_empty());
    if let Some(us) = user {
        out.extend_from_slice(us);
        if let Some(p) = u.password {
            out.push(b':');
            out.extend_from_slice(p);
        }
        out.push(b'@');
    }
    let h = host.unwrap_or(u.host);
    if h.contains(&b':') && !h.starts_with(b"[") {
        out.push(b'[');
        out.extend_from_slice(h);
        out.push(b']');
    } else {
        out.extend_from_slice(h);
    }
    if let Some(p) = u.port {
        out.extend_from_slice(format!(":{p}").as_bytes());
    }
    if !u.params.is_empty() {
        out.push(b';');
        out.extend_from_slice(u.params);
    }
    if !u.headers.is_empty() {
        out.push(b'?');
        out.extend_from_slice(u.headers);
    }
    Some(Bytes::from(out))
}

/// `forward()`: a stateless relay (also what `t_relay` does with the ACK of a 2xx).
pub(crate) fn forward(core: &Arc<Core>, ex: &mut Exec<'_>, to: Option<Bytes>) -> i32 {
    crate::proxy::forward_stateless(core, ex, to, None)
}

/// One SIP pseudo-variable.
#[derive(Clone)]
enum SipPv {
    Method,
    Ruri,
    RUser,
    RDomain,
    RPort,
    RUriProto,
    FromUri,
    FromUser,
    FromDomain,
    FromName,
    FromTag,
    ToUri,
    ToUser,
    ToDomain,
    ToTag,
    CallId,
    CSeq,
    ContentLength,
    UserAgent,
    SrcIp,
    SrcPort,
    DstIp,
    DstPort,
    Proto,
    Body,
    MsgLen,
    MsgBuf,
    Du,
    Hdr(Bytes),
    Status,
    Reason,
    TReplyCode,
    TIndex,
    TLabel,
    /// `$mt`: 1 for a request, 2 for a reply (Kamailio's `log_prefix` examples use it).
    MsgType,
    /// `$pp`: the process id (one process in siphon).
    Pid,
}

struct SipPvAccess {
    pv: SipPv,
    core: Arc<Core>,
}

fn uri_part(uri: &[u8], part: &SipPv) -> Value {
    let Ok(u) = siphon_sip::parse_uri(uri) else {
        return Value::Null;
    };
    match part {
        SipPv::RUser | SipPv::FromUser | SipPv::ToUser => u
            .user
            .map_or(Value::Null, |x| Value::Str(Bytes::copy_from_slice(x))),
        SipPv::RDomain | SipPv::FromDomain | SipPv::ToDomain => {
            Value::Str(Bytes::copy_from_slice(u.host))
        }
        SipPv::RPort => Value::Int(u.port.unwrap_or(5060) as i64),
        SipPv::RUriProto => u.param(b"transport").map_or(Value::from("udp"), |t| {
            Value::Str(Bytes::copy_from_slice(t).to_ascii_lowercase().into())
        }),
        _ => Value::Null,
    }
}

fn bytes_or_null(b: Option<Bytes>) -> Value {
    b.map_or(Value::Null, Value::Str)
}

impl PvAccess for SipPvAccess {
    fn get(&self, ex: &mut Exec<'_>, idx: PvIdx) -> Value {
        let pid = || Value::Int(std::process::id() as i64);
        let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
            return if let SipPv::Pid = self.pv {
                pid()
            } else {
                Value::Null
            };
        };
        let m = &s.msg;
        match &self.pv {
            SipPv::Pid => pid(),
            SipPv::MsgType => Value::Int(if m.is_request() { 1 } else { 2 }),
            SipPv::Method => Value::Str(m.method_bytes()),
            SipPv::Ruri => {
                if m.is_request() {
                    Value::Str(s.ruri())
                } else {
                    Value::Null
                }
            }
            p @ (SipPv::RUser | SipPv::RDomain | SipPv::RPort | SipPv::RUriProto) => {
                if m.is_request() {
                    uri_part(&s.ruri(), p)
                } else {
                    Value::Null
                }
            }
            SipPv::FromUri => bytes_or_null(m.from().map(|f| f.uri)),
            SipPv::ToUri => bytes_or_null(m.to().map(|f| f.uri)),
            p @ (SipPv::FromUser | SipPv::FromDomain) => {
                m.from().map_or(Value::Null, |f| uri_part(&f.uri, p))
            }
            p @ (SipPv::ToUser | SipPv::ToDomain) => {
                m.to().map_or(Value::Null, |f| uri_part(&f.uri, p))
            }
            SipPv::FromName => bytes_or_null(m.from().map(|f| f.display)),
            SipPv::FromTag => bytes_or_null(m.from().and_then(|f| f.tag)),
            SipPv::ToTag => bytes_or_null(m.to().and_then(|f| f.tag)),
            SipPv::CallId => bytes_or_null(m.call_id()),
            // Kamailio's `$cs` is the CSeq number (`$csb` would be the body).
            SipPv::CSeq => m.cseq().map_or(Value::Null, |c| Value::Int(c.num as i64)),
            SipPv::ContentLength => Value::Int(m.body.len() as i64),
            SipPv::UserAgent => bytes_or_null(
                m.headers_named(b"User-Agent")
                    .next()
                    .map(|h| m.header_value(h)),
            ),
            SipPv::SrcIp => Value::from(s.peer.src.ip().to_string()),
            SipPv::SrcPort => Value::Int(s.peer.src.port() as i64),
            SipPv::DstIp => Value::from(s.peer.local.ip().to_string()),
            SipPv::DstPort => Value::Int(s.peer.local.port() as i64),
            SipPv::Proto => Value::from(s.peer.transport.name()),
            SipPv::Body => Value::Str(m.body_bytes()),
            SipPv::MsgLen => Value::Int(m.body.end as i64),
            SipPv::MsgBuf => Value::Str(m.buf().slice(..m.body.end as usize)),
            SipPv::Du => bytes_or_null(s.du.clone()),
            SipPv::Hdr(name) => {
                let values: Vec<Bytes> = m.headers_named(name).map(|h| m.header_value(h)).collect();
                match idx {
                    PvIdx::Default => bytes_or_null(values.into_iter().next()),
                    PvIdx::At(i) => {
                        let i = if i < 0 { values.len() as i64 + i } else { i };
                        bytes_or_null(usize::try_from(i).ok().and_then(|i| values.get(i).cloned()))
                    }
                    PvIdx::All => {
                        if values.is_empty() {
                            Value::Null
                        } else {
                            Value::Str(Bytes::from(
                                values
                                    .iter()
                                    .map(|v| &v[..])
                                    .collect::<Vec<_>>()
                                    .join(&b", "[..]),
                            ))
                        }
                    }
                }
            }
            SipPv::Status => m.status().map_or(Value::Null, |c| Value::Int(c as i64)),
            SipPv::Reason => match m.kind {
                Kind::Response { reason, .. } => Value::Str(m.slice(reason)),
                Kind::Request { .. } => Value::Null,
            },
            SipPv::TReplyCode => match s.tx {
                Some(id) => {
                    let core = &self.core;
                    let info = core.tm.with(core, id.index, |t, now| t.info(id, now));
                    Value::Int(info.map_or(0, |i| i.reply_code as i64))
                }
                None => Value::Int(0),
            },
            SipPv::TIndex => s.tx.map_or(Value::Null, |id| Value::Int(id.index as i64)),
            SipPv::TLabel => s.tx.map_or(Value::Null, |id| Value::Int(id.label as i64)),
        }
    }

    fn set(&self, ex: &mut Exec<'_>, _idx: PvIdx, v: Value) -> Result<(), String> {
        let Some(s) = sip(ex) else {
            return Err("needs a SIP message".into());
        };
        if !s.msg.is_request() {
            return Err("can only be set on a request".into());
        }
        let b = v.to_bytes();
        // A new destination makes the R-URI usable again in a failure route.
        s.ruri_consumed = false;
        match self.pv {
            SipPv::Ruri => {
                siphon_sip::parse_uri(&b).map_err(|e| {
                    format!("cannot be set to `{}`: {e}", String::from_utf8_lossy(&b))
                })?;
                s.edits.ruri = Some(b);
            }
            SipPv::RUser => {
                s.edits.ruri = Some(
                    rebuild_uri(&s.ruri(), Some(&b), None).ok_or("the R-URI cannot be parsed")?,
                )
            }
            SipPv::RDomain => {
                s.edits.ruri = Some(
                    rebuild_uri(&s.ruri(), None, Some(&b)).ok_or("the R-URI cannot be parsed")?,
                )
            }
            SipPv::Du => s.du = if v.is_null() { None } else { Some(b) },
            _ => return Err("is read-only".into()),
        }
        Ok(())
    }

    fn writable(&self) -> bool {
        matches!(
            self.pv,
            SipPv::Ruri | SipPv::RUser | SipPv::RDomain | SipPv::Du
        )
    }
}

fn pv_spec(core: &Arc<Core>, name: &'static str, pv: SipPv) -> PvClassSpec {
    let acc: Arc<dyn PvAccess> = Arc::new(SipPvAccess {
        pv,
        core: core.clone(),
    });
    PvClassSpec::new(name, PvInner::None, Arc::new(move |_| Ok(acc.clone())))
}

struct TmModule(Arc<Core>);
impl Module for TmModule {
    fn cfg_vars(&self) -> Vec<CfgVar> {
        crate::textops::tm_cfg_vars(&self.0)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The SIP PVs read by name (`$rm`, `$fu`, …).
const SIMPLE: [(&str, SipPv); 34] = [
    ("rm", SipPv::Method),
    ("ru", SipPv::Ruri),
    ("rU", SipPv::RUser),
    ("rd", SipPv::RDomain),
    ("rp", SipPv::RPort),
    ("rz", SipPv::RUriProto),
    ("fu", SipPv::FromUri),
    ("fU", SipPv::FromUser),
    ("fd", SipPv::FromDomain),
    ("fn", SipPv::FromName),
    ("ft", SipPv::FromTag),
    ("tu", SipPv::ToUri),
    ("tU", SipPv::ToUser),
    ("td", SipPv::ToDomain),
    ("tt", SipPv::ToTag),
    ("ci", SipPv::CallId),
    ("cs", SipPv::CSeq),
    ("cl", SipPv::ContentLength),
    ("ua", SipPv::UserAgent),
    ("si", SipPv::SrcIp),
    ("sp", SipPv::SrcPort),
    ("Ri", SipPv::DstIp),
    ("Rp", SipPv::DstPort),
    ("pr", SipPv::Proto),
    ("proto", SipPv::Proto),
    ("rb", SipPv::Body),
    ("ml", SipPv::MsgLen),
    ("mb", SipPv::MsgBuf),
    ("du", SipPv::Du),
    ("rs", SipPv::Status),
    ("rr", SipPv::Reason),
    ("T_reply_code", SipPv::TReplyCode),
    ("mt", SipPv::MsgType),
    ("pp", SipPv::Pid),
];

/// The SIP PV a `$T_req(...)`/`$T_rpl(...)` names: `$name` of the simple
/// ones, or `$hdr(Name)`.
fn sip_pv_named(text: &str) -> Result<SipPv, String> {
    let t = text.trim();
    let name = t
        .strip_prefix('$')
        .ok_or_else(|| format!("expects a pseudo-variable like $hdr(Contact), not `{t}`"))?;
    if let Some(h) = name.strip_prefix("hdr(").and_then(|r| r.strip_suffix(')')) {
        let h = h.trim();
        if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err("$hdr(...) expects a header name".into());
        }
        return Ok(SipPv::Hdr(Bytes::copy_from_slice(h.as_bytes())));
    }
    SIMPLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, pv)| pv.clone())
        .ok_or_else(|| {
            format!("`{t}` is not a SIP pseudo-variable siphon reads on a transaction's message")
        })
}

/// `$T_req(pv)` / `$T_rpl(pv)`: a SIP PV read on the transaction's request,
/// or on the reply the failure route runs for (the picked branch's).
struct OnTxMessage {
    reply: bool,
    inner: SipPvAccess,
}

impl PvAccess for OnTxMessage {
    fn get(&self, ex: &mut Exec<'_>, idx: PvIdx) -> Value {
        let Some(s) = sip(ex) else { return Value::Null };
        let (Some(id), peer) = (s.tx, s.peer) else {
            return Value::Null;
        };
        let core = &self.inner.core;
        let msg = core.tm.with(core, id.index, |t, _| {
            if self.reply {
                t.picked_reply(id).cloned()
            } else {
                t.request(id).cloned()
            }
        });
        let Some(msg) = msg else { return Value::Null };
        let saved = ex.ctx.ext.remove::<SipCtx>();
        ex.ctx.ext.insert(SipCtx::new(msg, peer));
        let v = self.inner.get(ex, idx);
        match saved {
            Some(s) => ex.ctx.ext.insert(s),
            None => {
                ex.ctx.ext.remove::<SipCtx>();
            }
        }
        v
    }
}

pub(crate) fn register(core: &Arc<Core>, reg: &mut Registry) {
    use ArgKind::*;
    crate::proxy::register(core, reg);
    crate::textops::register(core, reg);
    for (name, pv) in SIMPLE {
        reg.core_pvs.push(pv_spec(core, name, pv));
    }
    for (name, reply) in [("T_req", false), ("T_rpl", true)] {
        let c = core.clone();
        reg.core_pvs.push(PvClassSpec::new(
            name,
            PvInner::Required,
            Arc::new(move |inner| {
                let pv = sip_pv_named(inner.unwrap_or_default())?;
                Ok(Arc::new(OnTxMessage {
                    reply,
                    inner: SipPvAccess {
                        pv,
                        core: c.clone(),
                    },
                }) as Arc<dyn PvAccess>)
            }),
        ));
    }
    let c = core.clone();
    reg.core_pvs.push(PvClassSpec::new(
        "hdr",
        PvInner::Required,
        Arc::new(move |inner| {
            let name = inner.unwrap_or_default().trim();
            if name.is_empty() || name.contains(|ch: char| ch.is_whitespace() || ch == ':') {
                return Err("expects a header name".into());
            }
            Ok(Arc::new(SipPvAccess {
                pv: SipPv::Hdr(Bytes::copy_from_slice(name.as_bytes())),
                core: c.clone(),
            }) as Arc<dyn PvAccess>)
        }),
    ));
    let c = core.clone();
    reg.core_pvs.push(PvClassSpec::new(
        "T",
        PvInner::Required,
        Arc::new(move |inner| {
            let pv = match inner.unwrap_or_default() {
                "id_index" => SipPv::TIndex,
                "id_label" => SipPv::TLabel,
                "reply_code" => SipPv::TReplyCode,
                other => {
                    return Err(format!(
                        "unknown key `{other}` (siphon has id_index, id_label, reply_code)"
                    ));
                }
            };
            Ok(Arc::new(SipPvAccess {
                pv,
                core: c.clone(),
            }) as Arc<dyn PvAccess>)
        }),
    ));

    let mut f = |spec: FunctionSpec| reg.core_functions.push(spec);
    let c = core.clone();
    f(FunctionSpec::new(
        "sl_send_reply",
        &[Int, Str],
        move |ex, a| match code_reason(a, ex) {
            Some((code, reason)) => sl_send(&c, ex, code, &reason).into(),
            None => (-1).into(),
        },
    )
    .routes(
        RouteType::REQUEST
            .or(RouteType::FAILURE)
            .or(RouteType::BRANCH),
    ));
    let c = core.clone();
    f(FunctionSpec::new("send_reply", &[Int, Str], move |ex, a| {
        match code_reason(a, ex) {
            Some((code, reason)) => send_reply(&c, ex, code, &reason).into(),
            None => (-1).into(),
        }
    })
    .routes(REPLY_ROUTES));
    let c = core.clone();
    f(FunctionSpec::new("t_reply", &[Int, Str], move |ex, a| {
        match code_reason(a, ex) {
            Some((code, reason)) => t_send(&c, ex, code, &reason).into(),
            None => (-1).into(),
        }
    })
    .routes(REPLY_ROUTES));
    let c = core.clone();
    f(FunctionSpec::new("t_newtran", &[], move |ex, _| {
        let Some(s) = sip(ex) else { return (-1).into() };
        if !s.msg.is_request() || s.msg.method() == siphon_sip::Method::Ack {
            return (-1).into();
        }
        match c.newtran(s) {
            Some(_) => 1.into(),
            None => (-1).into(),
        }
    })
    .routes(RouteType::REQUEST));
    f(FunctionSpec::new("t_check_trans", &[], |ex, _| {
        if sip(ex).is_some_and(|s| s.tx.is_some()) {
            1.into()
        } else {
            (-1).into()
        }
    }));
    f(FunctionSpec::new("t_suspend", &[], |ex, _| match sip(ex) {
        Some(s) if s.msg.is_request() => {
            s.suspend_requested = true;
            1.into()
        }
        _ => (-1).into(),
    })
    .routes(RouteType::REQUEST.or(RouteType::FAILURE)));
    let c = core.clone();
    f(FunctionSpec::new(
        "t_continue",
        &[Int, Int, Route(RouteTable::Named)],
        move |ex, a| {
            let (Some(index), Some(label), Some(route)) =
                (a.int(0, ex), a.int(1, ex), a.route(2, ex))
            else {
                return (-1).into();
            };
            let id = TxId {
                index: index as u32,
                label: label as u32,
            };
            // The target route runs now, with the caller's $vars (what configs rely on).
            let vars = ex.ctx.vars.clone();
            if c.resume(id, route, Box::new(move |ctx| ctx.vars = vars)) {
                1.into()
            } else {
                (-1).into()
            }
        },
    ));
    let c = core.clone();
    f(FunctionSpec::new("t_release", &[], move |ex, _| {
        let Some(id) = sip(ex).and_then(|s| s.tx.take()) else {
            return (-1).into();
        };
        c.tm.with(&c, id.index, |t, _| t.release(id));
        1.into()
    }));
    let c = core.clone();
    f(FunctionSpec::new(
        "t_on_failure",
        &[Route(RouteTable::Failure)],
        move |ex, a| {
            let r = a.route(0, ex);
            match sip(ex) {
                Some(s) => {
                    s.failure_route = r;
                    if let Some(id) = s.tx {
                        c.tm.with(&c, id.index, |t, _| t.set_on_failure(id, r));
                    }
                    1.into()
                }
                None => (-1).into(),
            }
        },
    ));
    let c = core.clone();
    f(FunctionSpec::new("forward", &[Str], move |ex, a| {
        let to = if a.is_empty() {
            None
        } else {
            Some(a.bytes(0, ex))
        };
        forward(&c, ex, to).into()
    })
    .min_args(0)
    .routes(
        RouteType::REQUEST
            .or(RouteType::FAILURE)
            .or(RouteType::BRANCH),
    ));
    f(FunctionSpec::with_bind(
        "is_method",
        &[Str],
        Arc::new(|args: Args| {
            let fixed: Option<Vec<Vec<u8>>> = args.const_value(0).map(|v| {
                v.to_bytes()
                    .split(|&c| c == b'|')
                    .map(|m| m.trim_ascii().to_ascii_uppercase())
                    .collect()
            });
            struct IsMethod {
                fixed: Option<Vec<Vec<u8>>>,
                args: Args,
            }
            impl Call for IsMethod {
                fn call(&self, ex: &mut Exec<'_>) -> FnResult {
                    // A constant list (the usual case) is compared as it is;
                    // a variable one is split at every call.
                    let dynamic;
                    let list: &[Vec<u8>] = match &self.fixed {
                        Some(l) => l,
                        None => {
                            dynamic = self
                                .args
                                .bytes(0, ex)
                                .split(|&c| c == b'|')
                                .map(|m| m.trim_ascii().to_ascii_uppercase())
                                .collect::<Vec<_>>();
                            &dynamic
                        }
                    };
                    let Some(s) = sip(ex) else { return (-1).into() };
                    let m = s.msg.method_bytes();
                    if list.iter().any(|l| l.eq_ignore_ascii_case(&m)) {
                        1.into()
                    } else {
                        (-1).into()
                    }
                }
            }
            Ok(Box::new(IsMethod { fixed, args }) as Box<dyn Call>)
        }),
    ));
    f(FunctionSpec::new("has_totag", &[], |ex, _| {
        if sip(ex)
            .and_then(|s| s.msg.to())
            .is_some_and(|t| t.tag.is_some())
        {
            1.into()
        } else {
            (-1).into()
        }
    }));
    f(FunctionSpec::new("remove_hf", &[Str], |ex, a| {
        let name = a.bytes(0, ex);
        let Some(s) = sip(ex) else { return (-1).into() };
        let idx: Vec<usize> = s
            .msg
            .headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name.matches(s.msg.get(h.name_rng), &name))
            .map(|(i, _)| i)
            .collect();
        let n = idx.len();
        s.edits.remove.extend(idx);
        if n > 0 {
            (n as i32).into()
        } else {
            (-1).into()
        }
    }));
    f(FunctionSpec::new("is_present_hf", &[Str], |ex, a| {
        let name = a.bytes(0, ex);
        let Some(s) = sip(ex) else { return (-1).into() };
        let present = s.msg.headers.iter().enumerate().any(|(i, h)| {
            !s.edits.remove.contains(&i) && h.name.matches(s.msg.get(h.name_rng), &name)
        });
        if present { 1.into() } else { (-1).into() }
    }));
    f(FunctionSpec::new("append_to_reply", &[Str], |ex, a| {
        let text = a.bytes(0, ex);
        match sip(ex) {
            Some(s) => {
                s.reply_hdrs.push(text);
                1.into()
            }
            None => (-1).into(),
        }
    }));

    // The tm module carries its parameters into the core.
    let c = core.clone();
    let base = core_module("tm", vec![]);
    let tm_params = siphon_script::core::core_modules()
        .into_iter()
        .find(|d| d.name == "tm")
        .map(|d| d.params)
        .unwrap_or_default();
    reg.add(ModuleDef {
        params: tm_params,
        instantiate: Arc::new(move |cfg: &ModuleConfig| {
            let mut t = crate::TmConfig::default();
            let ms = |name: &str, min: i64| -> Result<Option<Duration>, String> {
                match cfg.int(name) {
                    None => Ok(None),
                    Some(v) if v >= min => Ok(Some(Duration::from_millis(v as u64))),
                    Some(v) => Err(format!("{name} must be at least {min} ms, not {v}")),
                }
            };
            if let Some(d) = ms("fr_timer", 1)? {
                t.fr_timer = d;
            }
            if let Some(d) = ms("fr_inv_timer", 1)? {
                t.fr_inv_timer = d;
            }
            if let Some(d) = ms("max_inv_lifetime", 1)? {
                t.max_inv_lifetime = d;
            }
            if let Some(d) = ms("max_noninv_lifetime", 1)? {
                t.max_noninv_lifetime = d;
            }
            if let Some(d) = ms("wt_timer", 0)? {
                t.wait = d;
            }
            if let Some(d) = ms("retr_timer1", 1)? {
                t.t1 = d;
            }
            if let Some(d) = ms("retr_timer2", 1)? {
                t.t2 = d.max(t.t1);
            }
            if let Some(v) = cfg.int("auto_inv_100") {
                t.auto_inv_100 = v != 0;
            }
            if let Some(v) = cfg.int("aggregate_challenges") {
                t.aggregate_challenges = v != 0;
            }
            c.tm.set_config(t);
            Ok(Arc::new(TmModule(c.clone())) as Arc<dyn Module>)
        }),
        ..base
    });
    let c = core.clone();
    reg.hooks.myself = Some(Arc::new(move |v: &[u8]| c.is_myself(v)));
    reg.stat_sources.push(Arc::new(CoreStats(core.clone())));
    let c = core.clone();
    reg.core_rpcs.push(siphon_script::rpc::RpcSpec::new(
        "tm.stats",
        "Transaction statistics.",
        move |_| Ok(c.tm.rpc_stats()),
    ));
}

/// The core's counters as a statistics source.
struct CoreStats(Arc<Core>);

impl siphon_script::rpc::StatSource for CoreStats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        self.0.statistics()
    }
    fn reset(&self, name: &str) {
        self.0.stats.reset(name);
    }
}
