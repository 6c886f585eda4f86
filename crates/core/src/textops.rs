//! Core functions Kamailio's shipped configurations call beyond sl/tm:
//! header edits with a position (textops), `msg_apply_changes` (textopsx),
//! `force_rport`, `is_myself`, `isdsturiset` (kex) and the tmx route-type
//! checks.

use crate::Core;
use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, Registry, RouteType};
use siphon_sip::{At, Edits, SipMsg};
use std::sync::Arc;

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

fn code(b: bool) -> FnResult {
    if b { 1.into() } else { (-1).into() }
}

/// Indices of the headers a script name (`"Via"`, `"v"`, `"X-Foo"`) names.
fn named(msg: &SipMsg, name: &[u8]) -> Vec<usize> {
    msg.headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.name.matches(msg.get(h.name_rng), name))
        .map(|(i, _)| i)
        .collect()
}

/// Where `append_hf(text, hdr)` (`append`) or `insert_hf(text, hdr)` puts its
/// line: after the last / before the first header called `hdr`; without one
/// (or none of that name), after all headers / before the first.
fn position(msg: &SipMsg, hdr: Option<&[u8]>, append: bool) -> Option<At> {
    let found = hdr.map(|h| named(msg, h)).unwrap_or_default();
    if append {
        found.last().map(|&i| At::After(i))
    } else {
        Some(found.first().map_or(At::Top, |&i| At::Before(i)))
    }
}

/// `append_hf`/`insert_hf`: `text` is whole header lines (with CRLF).
fn add_hf(ex: &mut Exec<'_>, a: &Args, append: bool) -> FnResult {
    let text = a.bytes(0, ex);
    let hdr = (a.len() > 1).then(|| a.bytes(1, ex));
    let Some(s) = sip(ex) else { return (-1).into() };
    if text.is_empty() {
        tracing::info!(target: "script", "nothing to add");
        return (-1).into();
    }
    match position(&s.msg, hdr.as_deref(), append) {
        Some(at) => s.edits.insert.push((at, text)),
        None => s.edits.append.push(text),
    }
    1.into()
}

/// `msg_apply_changes()`: the header edits so far become the message the
/// rest of the script reads (`$hdr`, `is_present_hf` …). The R-URI stays a
/// change (`$ru`), as in Kamailio; relay-time edits (our Via) are untouched.
fn apply_changes(s: &mut SipCtx) -> Result<(), String> {
    let e = &s.edits;
    if e.remove.is_empty() && e.append.is_empty() && e.insert.is_empty() && e.max_forwards.is_none()
    {
        return Ok(());
    }
    let applied = Edits {
        remove: std::mem::take(&mut s.edits.remove),
        append: std::mem::take(&mut s.edits.append),
        insert: std::mem::take(&mut s.edits.insert),
        max_forwards: s.edits.max_forwards.take(),
        ..Default::default()
    };
    let out = siphon_sip::serialize(&s.msg, &applied);
    let msg =
        siphon_sip::parse(out).map_err(|e| format!("the changed message does not parse: {e}"))?;
    s.msg = msg;
    Ok(())
}

/// `force_rport()`: replies go to the port the request came from and the
/// relayed request's copy of the sender's Via gets `rport=<port>`, as if the
/// sender had asked (RFC 3581): siphon adds `rport` to the received message's
/// top Via, so `$hdr(Via)` shows it (Kamailio keeps a flag instead).
fn force_rport(s: &mut SipCtx) -> Result<(), String> {
    let Some(via) = s.msg.top_via() else {
        return Err("no Via".into());
    };
    if via.rport.is_some() {
        return Ok(());
    }
    let v = s.msg.value(siphon_sip::HeaderName::Via).unwrap_or_default();
    let first = siphon_sip::split_commas(&v)
        .into_iter()
        .next()
        .map(|r| v.slice(r.range()))
        .unwrap_or_default();
    let mut top = first.to_vec();
    top.extend_from_slice(b";rport");
    let out = siphon_sip::serialize(
        &s.msg,
        &Edits {
            top_via: Some(Bytes::from(top)),
            ..Default::default()
        },
    );
    s.msg = siphon_sip::parse(out).map_err(|e| e.to_string())?;
    Ok(())
}

/// tm's timers as cfg_rpc settings (`cfg.set tm fr_timer 10000`, ms), for
/// the transactions created afterwards.
pub(crate) fn tm_cfg_vars(core: &Arc<Core>) -> Vec<CfgVar> {
    use crate::TmConfig;
    use std::time::Duration;
    type Field = fn(&mut TmConfig) -> &mut Duration;
    let fields: [(&'static str, &'static str, Field, u64); 7] = [
        (
            "fr_timer",
            "timer for a final reply (ms)",
            |t| &mut t.fr_timer,
            1,
        ),
        (
            "fr_inv_timer",
            "timer for a final reply to an INVITE after a provisional (ms)",
            |t| &mut t.fr_inv_timer,
            1,
        ),
        (
            "max_inv_lifetime",
            "longest life of an INVITE transaction (ms)",
            |t| &mut t.max_inv_lifetime,
            1,
        ),
        (
            "max_noninv_lifetime",
            "longest life of a non-INVITE transaction (ms)",
            |t| &mut t.max_noninv_lifetime,
            1,
        ),
        (
            "wt_timer",
            "how long a completed transaction is kept (ms)",
            |t| &mut t.wait,
            0,
        ),
        (
            "retr_timer1",
            "first retransmission interval, T1 (ms)",
            |t| &mut t.t1,
            1,
        ),
        (
            "retr_timer2",
            "largest retransmission interval, T2 (ms)",
            |t| &mut t.t2,
            1,
        ),
    ];
    fields
        .into_iter()
        .map(|(name, help, field, min)| {
            let (c1, c2) = (core.clone(), core.clone());
            CfgVar {
                group: "tm",
                name,
                help,
                get: Arc::new(move || {
                    ParamValue::Int(field(&mut c1.tm.config()).as_millis() as i64)
                }),
                set: Arc::new(move |v| {
                    let ms = match v {
                        ParamValue::Int(n) => *n,
                        ParamValue::Str(s) => s
                            .trim()
                            .parse()
                            .map_err(|_| format!("`{s}` is no number"))?,
                    };
                    if ms < min as i64 {
                        return Err(format!("{name} must be at least {min} ms, not {ms}"));
                    }
                    let mut t = c2.tm.config();
                    *field(&mut t) = Duration::from_millis(ms as u64);
                    t.t2 = t.t2.max(t.t1);
                    c2.tm.set_config(t);
                    Ok(())
                }),
            }
        })
        .collect()
}

/// A header-name regular expression as Kamailio compiles it (extended,
/// case-insensitive), matched anywhere in the name.
fn header_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("bad regular expression `{re}`: {e}"))
}

/// `remove_hf_re(re)` / `is_present_hf_re(re)`.
struct HeaderRe {
    fixed: Option<regex::Regex>,
    args: Args,
    remove: bool,
}

impl Call for HeaderRe {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        let dynamic;
        let re = match &self.fixed {
            Some(r) => r,
            None => match header_regex(&self.args.text(0, ex)) {
                Ok(r) => {
                    dynamic = r;
                    &dynamic
                }
                Err(e) => {
                    tracing::error!(target: "script", "{e}");
                    return (-1).into();
                }
            },
        };
        let Some(s) = sip(ex) else { return (-1).into() };
        let hits: Vec<usize> = s
            .msg
            .headers
            .iter()
            .enumerate()
            .filter(|(i, h)| {
                !s.edits.remove.contains(i)
                    && re.is_match(&String::from_utf8_lossy(s.msg.get(h.name_rng)))
            })
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            return (-1).into();
        }
        if !self.remove {
            return 1.into();
        }
        let n = hits.len();
        s.edits.remove.extend(hits);
        (n as i32).into()
    }
}

/// Where the R-URI's user may be rewritten.
const URI_ROUTES: RouteType = RouteType::REQUEST
    .or(RouteType::FAILURE)
    .or(RouteType::BRANCH);

/// A change to the R-URI's user part (Kamailio's core `strip`, `strip_tail`,
/// `prefix`).
#[derive(Debug, Clone, Copy)]
enum UserEdit {
    Strip,
    StripTail,
    Prefix,
}

/// The user part after `op`; stripping more than there is leaves it empty
/// (Kamailio warns and does the same).
fn edited_user(user: &[u8], op: UserEdit, n: usize, prefix: &[u8]) -> Vec<u8> {
    let n = n.min(user.len());
    match op {
        UserEdit::Strip => user[n..].to_vec(),
        UserEdit::StripTail => user[..user.len() - n].to_vec(),
        UserEdit::Prefix => [prefix, user].concat(),
    }
}

fn edit_user(ex: &mut Exec<'_>, op: UserEdit, n: usize, prefix: &[u8]) -> i32 {
    let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
        return -1;
    };
    let ruri = s.ruri();
    let Ok(u) = siphon_sip::parse_uri(&ruri) else {
        tracing::error!(target: "script", "{op:?}: the R-URI cannot be parsed");
        return -1;
    };
    let user = edited_user(u.user.unwrap_or_default(), op, n, prefix);
    match crate::script::rebuild_uri(&ruri, Some(&user), None) {
        Some(new) => {
            s.edits.ruri = Some(new);
            s.ruri_consumed = false;
            1
        }
        None => -1,
    }
}

pub(crate) fn register(core: &Arc<Core>, reg: &mut Registry) {
    use ArgKind::*;
    let mut f = |spec: FunctionSpec| reg.core_functions.push(spec);
    f(FunctionSpec::new("append_hf", &[Str, Str], |ex, a| add_hf(ex, a, true)).min_args(1));
    f(FunctionSpec::new("insert_hf", &[Str, Str], |ex, a| add_hf(ex, a, false)).min_args(1));
    for (name, remove) in [("remove_hf_re", true), ("is_present_hf_re", false)] {
        f(FunctionSpec::with_bind(
            name,
            &[Str],
            Arc::new(move |args: Args| {
                let fixed = match args.const_value(0) {
                    Some(v) => Some(header_regex(&v.to_text())?),
                    None => None,
                };
                Ok(Box::new(HeaderRe {
                    fixed,
                    args,
                    remove,
                }) as Box<dyn Call>)
            }),
        ));
    }
    f(FunctionSpec::new("msg_apply_changes", &[], |ex, _| {
        let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
            return (-1).into();
        };
        match apply_changes(s) {
            Ok(()) => 1.into(),
            Err(e) => {
                tracing::error!(target: "script", "msg_apply_changes: {e}");
                (-1).into()
            }
        }
    })
    .routes(RouteType::REQUEST));
    f(FunctionSpec::new("force_rport", &[], |ex, _| {
        let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
            return (-1).into();
        };
        match force_rport(s) {
            Ok(()) => 1.into(),
            Err(e) => {
                tracing::error!(target: "script", "force_rport: {e}");
                (-1).into()
            }
        }
    }));
    for (name, op) in [
        ("strip", UserEdit::Strip),
        ("strip_tail", UserEdit::StripTail),
    ] {
        f(
            FunctionSpec::new(name, &[Int], move |ex, a| match a.int(0, ex) {
                Some(n) if n >= 0 => edit_user(ex, op, n as usize, b"").into(),
                _ => (-1).into(),
            })
            .routes(URI_ROUTES),
        );
    }
    f(FunctionSpec::new("prefix", &[Str], |ex, a| {
        let p = a.bytes(0, ex);
        edit_user(ex, UserEdit::Prefix, 0, &p).into()
    })
    .routes(URI_ROUTES));
    f(FunctionSpec::new("strempty", &[Any], |ex, a| {
        let v = a.value(0, ex);
        code(v.is_null() || v.to_bytes().is_empty())
    }));
    f(FunctionSpec::new("starts_with", &[Str, Str], |ex, a| {
        let (s, p) = (a.bytes(0, ex), a.bytes(1, ex));
        code(s.starts_with(&p))
    }));
    f(FunctionSpec::new("set_reply_close", &[], |ex, _| {
        if let Some(x) = ex.ctx.ext.get_mut::<siphon_script::http::Exchange>() {
            x.close_after_reply();
            return 1.into();
        }
        tracing::warn!(target: "script", "set_reply_close(): siphon closes only HTTP connections (xhttp) after the reply, not SIP ones");
        (-1).into()
    }));
    f(FunctionSpec::new("isdsturiset", &[], |ex, _| {
        code(sip(ex).is_some_and(|s| s.du.is_some()))
    }));
    let c = core.clone();
    f(FunctionSpec::new("is_myself", &[Str], move |ex, a| {
        code(c.is_myself(&a.bytes(0, ex)))
    }));
    for (name, rt) in [
        ("t_is_branch_route", RouteType::BRANCH),
        ("t_is_failure_route", RouteType::FAILURE),
        ("t_is_reply_route", RouteType::ONREPLY),
    ] {
        f(FunctionSpec::new(name, &[], move |ex, _| {
            code(ex.ctx.route_type.intersects(rt))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(raw: &str) -> SipCtx {
        let addr = "127.0.0.1:5062".parse().unwrap();
        SipCtx::new(
            siphon_sip::parse(Bytes::from(raw.to_string())).unwrap(),
            siphon_script::net::Peer {
                transport: siphon_script::net::Transport::Udp,
                src: addr,
                local: addr,
                conn: None,
            },
        )
    }

    const REQ: &str = "OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn header_regexes_ignore_case() {
        let re = header_regex("^x-a$").unwrap();
        assert!(re.is_match("X-A"));
        assert!(!re.is_match("X-AB"));
        assert!(header_regex("(").is_err());
    }

    #[test]
    fn user_edits() {
        assert_eq!(edited_user(b"0049301", UserEdit::Strip, 2, b""), b"49301");
        assert_eq!(edited_user(b"49301", UserEdit::Prefix, 0, b"+"), b"+49301");
        assert_eq!(edited_user(b"49301", UserEdit::StripTail, 2, b""), b"493");
        assert_eq!(edited_user(b"12", UserEdit::Strip, 5, b""), b"");
    }

    #[test]
    fn positions_follow_kamailio() {
        let s = ctx(REQ);
        assert_eq!(
            position(&s.msg, None, true),
            None,
            "append: after the last header"
        );
        assert_eq!(position(&s.msg, None, false), Some(At::Top));
        assert_eq!(
            position(&s.msg, Some(b"x-a"), true),
            Some(At::After(6)),
            "after the last X-A"
        );
        assert_eq!(
            position(&s.msg, Some(b"X-A"), false),
            Some(At::Before(5)),
            "before the first X-A"
        );
        assert_eq!(
            position(&s.msg, Some(b"f"), false),
            Some(At::Before(1)),
            "compact names"
        );
        assert_eq!(position(&s.msg, Some(b"X-None"), false), Some(At::Top));
        assert_eq!(position(&s.msg, Some(b"X-None"), true), None);
    }

    #[test]
    fn apply_changes_makes_the_edits_the_message() {
        let mut s = ctx(REQ);
        s.edits.remove.push(5);
        s.edits
            .insert
            .push((At::Top, Bytes::from_static(b"X-Top: t\r\n")));
        s.edits.append.push(Bytes::from_static(b"X-End: e\r\n"));
        s.edits.ruri = Some(Bytes::from_static(b"sip:c@h"));
        apply_changes(&mut s).unwrap();
        let m = &s.msg;
        let vals: Vec<_> = m.headers_named(b"X-A").map(|h| m.header_value(h)).collect();
        assert_eq!(vals, [&b"2"[..]]);
        assert_eq!(m.headers_named(b"X-Top").count(), 1);
        assert_eq!(m.headers_named(b"X-End").count(), 1);
        assert!(
            s.edits.remove.is_empty() && s.edits.insert.is_empty() && s.edits.append.is_empty()
        );
        assert_eq!(
            s.edits.ruri.as_deref(),
            Some(&b"sip:c@h"[..]),
            "the R-URI stays a change"
        );
        assert_eq!(&m.ruri().unwrap()[..], b"sip:b@h");
    }

    #[test]
    fn force_rport_marks_the_top_via_only() {
        let mut s = ctx(REQ);
        force_rport(&mut s).unwrap();
        let v = s.msg.value(siphon_sip::HeaderName::Via).unwrap();
        assert_eq!(
            &v[..],
            b"SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;rport, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK0"
        );
        assert!(s.msg.top_via().unwrap().rport.is_some());
        // Replies now go to the source port.
        assert_eq!(
            crate::reply_destination(&s.msg, &s.peer),
            Some("127.0.0.1:5062".parse().unwrap())
        );
        // Idempotent.
        force_rport(&mut s).unwrap();
        assert_eq!(s.msg.value(siphon_sip::HeaderName::Via).unwrap(), v);
    }
}
