//! maxfwd (Kamailio): the script checks and decrements Max-Forwards itself
//! (RFC 3261 §16.3 step 2, §16.6 step 3); siphon's `t_relay` then leaves the
//! header alone, as Kamailio's tm does.
//!
//! - `mf_process_maxfwd_header(max)` (also `maxfwd_process`, `process_maxfwd`;
//!   request_route): no Max-Forwards → one `Max-Forwards: max` is added on
//!   top of the headers, 2; the value 0 → -1 (the script answers 483); a value
//!   over `max_limit` counts as `max_limit + 1`; the value is decremented, 1;
//!   a value that is no number → -2.
//! - `is_maxfwd_lt(n)` (also `maxfwd_at_least`, `mf_lowlimit`): 1 when the
//!   (already decremented) value is below `n`, -1 when not, -2 without the
//!   header, -3 when it is no number.
//! - param `max_limit` (0..255, default 70; `cfg.set maxfwd max_limit N`
//!   changes it at run time, as Kamailio's cfg group does).
//!
//! Kamailio rewrites the digits in place padded with spaces
//! (`Max-Forwards:  9`, a quirk); siphon writes the plain number.

use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType};
use siphon_sip::{At, HeaderName};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The module: its `max_limit` (`cfg.set maxfwd max_limit N` changes it).
pub struct Maxfwd {
    max_limit: Arc<AtomicU32>,
}

impl Module for Maxfwd {
    fn functions(&self) -> Vec<FunctionSpec> {
        let mut v = Vec::new();
        for name in [
            "mf_process_maxfwd_header",
            "maxfwd_process",
            "process_maxfwd",
        ] {
            let limit = self.max_limit.clone();
            v.push(
                FunctionSpec::checked(name, &[ArgKind::Int], check_limit, move |ex, a| {
                    match a.int(0, ex) {
                        Some(max) => process(ex, max, limit.load(Ordering::Relaxed)).into(),
                        None => (-1).into(),
                    }
                })
                .routes(RouteType::REQUEST),
            );
        }
        for name in ["is_maxfwd_lt", "maxfwd_at_least", "mf_lowlimit"] {
            v.push(
                FunctionSpec::checked(name, &[ArgKind::Int], check_limit, |ex, a| {
                    match a.int(0, ex) {
                        Some(n) => is_lt(ex, n).into(),
                        None => (-1).into(),
                    }
                })
                .routes(
                    RouteType::REQUEST
                        .or(RouteType::FAILURE)
                        .or(RouteType::BRANCH),
                ),
            );
        }
        v
    }
    fn cfg_vars(&self) -> Vec<CfgVar> {
        let (get, set) = (self.max_limit.clone(), self.max_limit.clone());
        vec![CfgVar {
            group: "maxfwd",
            name: "max_limit",
            help: "Max. maxfwd limit (0..255)",
            get: Arc::new(move || ParamValue::Int(i64::from(get.load(Ordering::Relaxed)))),
            set: Arc::new(move |v| {
                let n = match v {
                    ParamValue::Int(n) => *n,
                    ParamValue::Str(s) => s
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{s}` is no number"))?,
                };
                if !(0..=255).contains(&n) {
                    return Err(format!("max_limit must be between 0 and 255, not {n}"));
                }
                set.store(n as u32, Ordering::Relaxed);
                Ok(())
            }),
        }]
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A constant argument must be 0..255 (Kamailio finds out at run time).
fn check_limit(a: &Args) -> Result<(), String> {
    match a.const_value(0).map(|v| v.to_int()) {
        Some(Some(n)) if !(0..=255).contains(&n) => {
            Err(format!("the limit must be between 0 and 255, not {n}"))
        }
        Some(None) => Err("the limit must be a number".into()),
        _ => Ok(()),
    }
}

/// The Max-Forwards value as the script left it: `None` without the header,
/// `Err` when it is no number (Kamailio's `str2s`: up to 5 digits; empty is 0).
fn current(s: &SipCtx) -> Option<Result<u32, ()>> {
    if let Some(v) = s.edits.max_forwards {
        return Some(Ok(v));
    }
    let v = s.msg.value(HeaderName::MaxForwards)?;
    let v = v.trim_ascii();
    if v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return Some(Err(()));
    }
    Some(Ok(v.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))))
}

/// `mf_process_maxfwd_header(max)`.
fn process(ex: &mut Exec<'_>, max: i64, max_limit: u32) -> i32 {
    if !(0..=255).contains(&max) {
        tracing::error!(target: "script", "mf_process_maxfwd_header: invalid limit {max} (0..255)");
        return -1;
    }
    let Some(s) = ex.ctx.ext.get_mut::<SipCtx>() else {
        return -2;
    };
    if !s.msg.is_request() {
        return -2;
    }
    match current(s) {
        None => {
            if !s.max_forwards_done {
                s.edits.insert.push((
                    At::Top,
                    bytes::Bytes::from(format!("Max-Forwards: {max}\r\n")),
                ));
                s.max_forwards_done = true;
            }
            2
        }
        Some(Err(())) => {
            tracing::error!(target: "script", "mf_process_maxfwd_header: Max-Forwards is no number");
            -2
        }
        Some(Ok(0)) => -1,
        Some(Ok(mut v)) => {
            if v > max_limit {
                v = max_limit + 1;
            }
            s.edits.max_forwards = Some(v - 1);
            s.max_forwards_done = true;
            1
        }
    }
}

/// `is_maxfwd_lt(n)`.
fn is_lt(ex: &mut Exec<'_>, n: i64) -> i32 {
    if !(0..=255).contains(&n) {
        tracing::error!(target: "script", "is_maxfwd_lt: invalid limit {n} (0..255)");
        return -1;
    }
    let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
        return -3;
    };
    match current(s) {
        None => -2,
        Some(Err(())) => -3,
        Some(Ok(v)) if i64::from(v) >= n => -1,
        Some(Ok(_)) => 1,
    }
}

/// What `loadmodule "maxfwd.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "maxfwd",
        params: vec![ParamSpec::int("max_limit")],
        instantiate: Arc::new(|cfg| {
            let max_limit = cfg.int("max_limit").unwrap_or(70);
            if !(0..=255).contains(&max_limit) {
                return Err(format!(
                    "max_limit must be between 0 and 255, not {max_limit}"
                ));
            }
            Ok(Arc::new(Maxfwd {
                max_limit: Arc::new(AtomicU32::new(max_limit as u32)),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
