//! sanity (Kamailio): `sanity_check([msg_checks[, uri_checks]])` runs the
//! checks of [`checks::bits`] (Kamailio's values; default `default_checks`
//! 3047 and `uri_checks` 7) in Kamailio's order and stops at the first that
//! fails, answering the request statelessly as Kamailio does (400 with its
//! reason, 420 with `Unsupported:` for Proxy-Require …; nothing for an ACK,
//! a reply, or a message too broken to answer).
//!
//! Returns 1 when every check passed. On a failure: 0 with `autodrop` (the
//! default: the script stops, as after `exit`), -1 with `autodrop` 0. With
//! `noreply` 1 nothing is sent at the check; `sanity_reply()` sends it later
//! (500 "Server Sanity Failure" when the failed check had no reply).
//! Params: `default_checks`, `uri_checks`, `proxy_require` (extensions
//! accepted in Proxy-Require, comma separated; default none), `autodrop`,
//! `noreply`.

pub mod checks;

use checks::{Failure, bits};
use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Ctx, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType};
use std::sync::{Arc, OnceLock};

/// The module: its parameters and, once started, the host that sends replies.
pub struct Sanity(Arc<Inner>);

struct Inner {
    default_checks: u32,
    uri_checks: u32,
    proxy_require: Vec<String>,
    autodrop: bool,
    noreply: bool,
    host: OnceLock<Arc<dyn Host>>,
}

/// What a failed check left for `sanity_reply()` (`noreply` 1), in the
/// context of the message it ran for.
#[derive(Debug, Clone)]
struct Pending(Failure);

const ROUTES: RouteType = RouteType::REQUEST.or(RouteType::ONREPLY);

impl Module for Sanity {
    fn functions(&self) -> Vec<FunctionSpec> {
        let (m1, m2) = (self.0.clone(), self.0.clone());
        vec![
            FunctionSpec::checked(
                "sanity_check",
                &[ArgKind::Int, ArgKind::Int],
                check_args,
                move |ex, a| {
                    let m = if a.is_empty() {
                        Some(i64::from(m1.default_checks))
                    } else {
                        a.int(0, ex)
                    };
                    let u = if a.len() < 2 {
                        Some(i64::from(m1.uri_checks))
                    } else {
                        a.int(1, ex)
                    };
                    match (m, u) {
                        (Some(m), Some(u)) => m1.sanity_check(ex, m, u).into(),
                        _ => (-1).into(),
                    }
                },
            )
            .min_args(0)
            .routes(ROUTES),
            FunctionSpec::new("sanity_reply", &[], move |ex, _| {
                m2.sanity_reply(ex.ctx).into()
            })
            .routes(ROUTES),
        ]
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let _ = self.0.host.set(cx.host.clone());
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Constant arguments are checked at load (Kamailio: at run time, -1).
fn check_args(a: &Args) -> Result<(), String> {
    for (i, max, what) in [
        (0, bits::MAX, "msg_checks"),
        (1, bits::URI_MAX, "uri_checks"),
    ] {
        if let Some(v) = a.const_value(i) {
            match v.to_int() {
                Some(n) if n >= 1 && n < i64::from(max) => {}
                _ => {
                    return Err(format!(
                        "{what} must be a number from 1 to {}, not `{}`",
                        max - 1,
                        v.to_text()
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Inner {
    /// `sanity_check(m, u)`.
    fn sanity_check(&self, ex: &mut Exec<'_>, m: i64, u: i64) -> i32 {
        if !(1..i64::from(bits::MAX)).contains(&m) || !(1..i64::from(bits::URI_MAX)).contains(&u) {
            tracing::error!(target: "script", "sanity_check: checks {m}, {u} out of range (1..{}, 1..{})", bits::MAX - 1, bits::URI_MAX - 1);
            return -1;
        }
        let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
            return -1;
        };
        let ruri = if s.msg.is_request() {
            s.ruri()
        } else {
            Default::default()
        };
        let result = checks::check(&s.msg, &ruri, m as u32, u as u32, &self.proxy_require);
        let answerable = s.msg.is_request() && s.msg.method() != siphon_sip::Method::Ack;
        if self.noreply {
            ex.ctx.ext.remove::<Pending>();
        }
        let Err(failure) = result else {
            return 1;
        };
        tracing::debug!(target: "script", "sanity_check failed: {failure:?}");
        if answerable {
            if self.noreply {
                ex.ctx.ext.insert(Pending(failure));
            } else if let Failure::Reply(r) = &failure {
                self.send(ex.ctx, r.code, r.reason, r.extra.as_slice());
            }
        }
        if self.autodrop { 0 } else { -1 }
    }

    /// `sanity_reply()`: the reply a failed check kept back (`noreply` 1).
    fn sanity_reply(&self, ctx: &mut Ctx) -> i32 {
        let Some(s) = ctx.ext.get::<SipCtx>() else {
            return -1;
        };
        if !s.msg.is_request() || s.msg.method() == siphon_sip::Method::Ack || !self.noreply {
            return 1;
        }
        match ctx.ext.remove::<Pending>() {
            Some(Pending(Failure::NoReply)) => 1,
            Some(Pending(Failure::Reply(r))) => {
                self.send(ctx, r.code, r.reason, r.extra.as_slice())
            }
            Some(Pending(Failure::Silent)) | None => {
                tracing::info!(target: "script", "sanity_reply: no sanity reply info set - sending 500");
                self.send(ctx, 500, "Server Sanity Failure", &[])
            }
        }
    }

    fn send(&self, ctx: &mut Ctx, code: u16, reason: &str, extra: &[bytes::Bytes]) -> i32 {
        let Some(host) = self.host.get() else {
            tracing::warn!(target: "script", "sanity: no SIP host to send {code} {reason}");
            return -1;
        };
        match host.reply(ctx, code, reason, extra, ReplyMode::Stateless) {
            Ok(()) => 1,
            Err(e) => {
                tracing::warn!(target: "script", "sanity: failed to send {code} {reason}: {e}");
                -1
            }
        }
    }
}

/// What `loadmodule "sanity.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "sanity",
        params: vec![
            ParamSpec::int("default_checks"),
            ParamSpec::int("uri_checks"),
            ParamSpec::str("proxy_require"),
            ParamSpec::int("autodrop"),
            ParamSpec::int("noreply"),
        ],
        instantiate: Arc::new(|cfg| {
            let default_checks = cfg
                .int("default_checks")
                .unwrap_or(i64::from(bits::DEFAULT));
            if !(1..i64::from(bits::MAX)).contains(&default_checks) {
                return Err(format!(
                    "default_checks must be from 1 to {}, not {default_checks}",
                    bits::MAX - 1
                ));
            }
            let uri_checks = cfg
                .int("uri_checks")
                .unwrap_or(i64::from(bits::URI_DEFAULT));
            if !(1..i64::from(bits::URI_MAX)).contains(&uri_checks) {
                return Err(format!(
                    "uri_checks must be from 1 to {}, not {uri_checks}",
                    bits::URI_MAX - 1
                ));
            }
            let proxy_require = cfg
                .str("proxy_require")
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            Ok(Arc::new(Sanity(Arc::new(Inner {
                default_checks: default_checks as u32,
                uri_checks: uri_checks as u32,
                proxy_require,
                autodrop: cfg.int("autodrop").unwrap_or(1) != 0,
                noreply: cfg.int("noreply").unwrap_or(0) != 0,
                host: OnceLock::new(),
            }))) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
