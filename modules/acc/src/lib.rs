//! acc (Kamailio) with the log backend: one line per accounted transaction
//! in siphon's log, in Kamailio's format:
//!
//! ```text
//! ACC: transaction answered: timestamp=1700000000;method=INVITE;from_tag=a;to_tag=b;call_id=c;code=200;reason=OK;src_user=alice
//! ```
//!
//! - `log_flag`: a transaction whose request carries this flag is logged
//!   when its final reply goes upstream ("transaction answered"); a final
//!   ≥ 300 only when `failed_transaction_flag` is set too (and its code is not
//!   in `failed_filter`).
//! - `log_missed_flag`: an INVITE whose final is ≥ 300 logs "call missed"
//!   (before the answered line, as Kamailio).
//! - `log_extra`: `name=$pv;…` pairs appended to each line, read from the
//!   request (`$rU`/`$rd`/`$ru` from the branch whose final it is).
//! - `log_level` (Kamailio's numbers, default 1 = NOTICE), `time_mode` 0–2.
//! - `acc_log_request("200 OK")`: logs "request accounted" now for the
//!   current request, code and reason from the comment.
//!
//! The database, CDR (dialog) and multi-leg parts of Kamailio's acc are not
//! in siphon: their parameters are refused unless left at their defaults.

use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, Program, RouteType};
use std::sync::Arc;
use std::time::SystemTime;

/// What the lines start with (Kamailio's `ACC_*` texts).
pub const ANSWERED: &str = "ACC: transaction answered: ";
/// An INVITE that failed, with `log_missed_flag`.
pub const MISSED: &str = "ACC: call missed: ";
/// `acc_log_request`.
pub const REQUEST: &str = "ACC: request accounted: ";

/// The module's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    log_flag: Option<u32>,
    log_missed_flag: Option<u32>,
    failed_flag: Option<u32>,
    failed_filter: Vec<u16>,
    log_level: i32,
    report_cancels: bool,
    time_mode: u8,
    time_attr: String,
    time_exten: String,
    /// `log_extra` names, in order (their formats are the module's formats).
    extra_names: Vec<String>,
    extra_formats: Vec<String>,
}

/// The module.
pub struct Acc {
    settings: Arc<Settings>,
}

/// A flag parameter: -1 (Kamailio's default) is none.
fn flag(cfg: &ModuleConfig, name: &str) -> Result<Option<u32>, String> {
    match cfg.int(name) {
        None | Some(-1) => Ok(None),
        Some(n @ 0..=63) => Ok(Some(n as u32)),
        Some(n) => Err(format!(
            "`{name}` {n} is not a flag (0 to 63, or -1 for none)"
        )),
    }
}

/// `failed_filter`: comma-separated 3-digit codes ≥ 300 (Kamailio's rules).
pub fn parse_failed_filter(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.len() != 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "failed_filter \"{s}\": response code `{part}` must have 3 digits"
            ));
        }
        let code: u16 = part.parse().unwrap_or(0);
        if code < 300 {
            return Err(format!(
                "failed_filter \"{s}\": invalid response code {code} (below 300)"
            ));
        }
        out.push(code);
    }
    Ok(out)
}

/// `log_extra`: `name=$pv;name2=text $pv2` (Kamailio's `parse_acc_extra`:
/// spaces around names skipped, each value up to the next `;`).
pub fn parse_extra(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(';') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((name, value)) = item.split_once('=') else {
            return Err(format!("log_extra \"{s}\": `{item}` is not `name=$pv`"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || name.contains(char::is_whitespace) || value.is_empty() {
            return Err(format!("log_extra \"{s}\": `{item}` is not `name=$pv`"));
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

/// A value as written, for a diagnostic.
fn show(v: &ParamValue) -> String {
    match v {
        ParamValue::Int(n) => n.to_string(),
        ParamValue::Str(t) => format!("\"{t}\""),
    }
}

/// Whether `v` is an integer in `ok`, or an empty string.
fn left_default(v: &ParamValue, ok: &[i64]) -> bool {
    match v {
        ParamValue::Int(n) => ok.contains(n),
        ParamValue::Str(t) => {
            t.trim().is_empty() || t.trim().parse().is_ok_and(|n: i64| ok.contains(&n))
        }
    }
}

/// A check refusing any value but Kamailio's default(s), saying why.
macro_rules! refuse {
    ($f:ident, $ok:expr, $why:expr) => {
        fn $f(v: &ParamValue) -> Result<(), String> {
            if left_default(v, $ok) {
                Ok(())
            } else {
                Err(format!("{} is not available in siphon: {}", show(v), $why))
            }
        }
    };
}

refuse!(
    log_only,
    &[-1, 0],
    "only the log backend of acc is (no database accounting)"
);
refuse!(
    no_cdr,
    &[0],
    "CDRs need the dialog module, which siphon does not have"
);
refuse!(no_multi_leg, &[], "multi-leg accounting is not implemented");
refuse!(no_early_media, &[0], "siphon accounts final replies only");
refuse!(no_report_ack, &[0], "ACKs are not accounted");
refuse!(
    no_direction,
    &[0],
    "the direction of in-dialog requests is not detected (From/To are logged as received)"
);
refuse!(
    no_reason_hf,
    &[0],
    "the reason is always the reply's status line"
);
refuse!(
    time_modes,
    &[0, 1, 2],
    "time_mode 3 and 4 (strftime) are not implemented"
);

/// The parameters siphon takes only at Kamailio's defaults, and their checks
/// (run at `modparam`, so the diagnostic points there).
const REFUSED: &[(&str, ParamKind, ParamCheck)] = &[
    ("db_url", ParamKind::Str, log_only),
    ("db_flag", ParamKind::Int, log_only),
    ("db_missed_flag", ParamKind::Int, log_only),
    ("db_extra", ParamKind::Str, log_only),
    ("cdr_enable", ParamKind::Int, no_cdr),
    ("multi_leg_info", ParamKind::Str, no_multi_leg),
    ("early_media", ParamKind::Int, no_early_media),
    ("report_ack", ParamKind::Int, no_report_ack),
    ("detect_direction", ParamKind::Int, no_direction),
    ("reason_from_hf", ParamKind::Int, no_reason_hf),
    ("time_mode", ParamKind::Int, time_modes),
];

fn settings(cfg: &ModuleConfig) -> Result<Settings, String> {
    for (name, _, check) in REFUSED {
        for v in cfg.all(name) {
            check(v).map_err(|e| format!("`{name}` {e}"))?;
        }
    }
    let extras = match cfg.str("log_extra") {
        Some(s) => parse_extra(&s)?,
        None => vec![],
    };
    let failed_filter = match cfg.str("failed_filter") {
        Some(s) if !s.is_empty() => parse_failed_filter(&s)?,
        _ => vec![],
    };
    let log_level = cfg.int("log_level").unwrap_or(1);
    if !(-5..=3).contains(&log_level) {
        return Err(format!(
            "`log_level` {log_level} is not a Kamailio level (-5 to 3)"
        ));
    }
    Ok(Settings {
        log_flag: flag(cfg, "log_flag")?,
        log_missed_flag: flag(cfg, "log_missed_flag")?,
        failed_flag: flag(cfg, "failed_transaction_flag")?,
        failed_filter,
        log_level: log_level as i32,
        report_cancels: cfg.int("report_cancels").unwrap_or(0) != 0,
        time_mode: cfg.int("time_mode").unwrap_or(0) as u8,
        time_attr: cfg.str("time_attr").unwrap_or_else(|| "time_attr".into()),
        time_exten: cfg.str("time_exten").unwrap_or_else(|| "time_exten".into()),
        extra_names: extras.iter().map(|(n, _)| n.clone()).collect(),
        extra_formats: extras.into_iter().map(|(_, v)| v).collect(),
    })
}

/// The core fields of a line, as Kamailio's `core2strar` fills them.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// CSeq's method.
    pub method: Bytes,
    /// The From tag.
    pub from_tag: Bytes,
    /// The To tag (the reply's).
    pub to_tag: Bytes,
    /// The Call-ID.
    pub call_id: Bytes,
    /// The code, as text (empty when a comment has none).
    pub code: Bytes,
    /// The reason.
    pub reason: Bytes,
}

/// One line: `text` then `timestamp=…` (and the time_mode fields), the core
/// fields and the extras, each `;name=value` (Kamailio's `acc_log_request`).
pub fn format_line(
    s: &Settings,
    text: &str,
    time: SystemTime,
    r: &Record,
    extras: &[Bytes],
) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = format!("{text}timestamp={}", d.as_secs());
    match s.time_mode {
        1 => line.push_str(&format!(";{}={}", s.time_exten, d.subsec_micros())),
        2 => line.push_str(&format!(
            ";{}={:.3}",
            s.time_attr,
            d.as_secs() as f64 + d.subsec_micros() as f64 / 1e6
        )),
        _ => {}
    }
    let core = [
        ("method", &r.method),
        ("from_tag", &r.from_tag),
        ("to_tag", &r.to_tag),
        ("call_id", &r.call_id),
        ("code", &r.code),
        ("reason", &r.reason),
    ];
    let pairs = core
        .into_iter()
        .chain(s.extra_names.iter().map(String::as_str).zip(extras.iter()));
    for (name, value) in pairs {
        line.push(';');
        line.push_str(name);
        line.push('=');
        line.push_str(&String::from_utf8_lossy(value));
    }
    line
}

/// Writes a line at a Kamailio level.
fn emit(level: i32, line: &str) {
    match level {
        l if l <= -1 => tracing::error!(target: "acc", "{line}"),
        0 => tracing::warn!(target: "acc", "{line}"),
        1 | 2 => tracing::info!(target: "acc", "{line}"),
        _ => tracing::debug!(target: "acc", "{line}"),
    }
}

/// `acc_log_request`'s comment: `"200 OK"` → code 200, reason `OK`; without
/// a leading 3-digit code, no code and the whole comment as the reason
/// (Kamailio's `acc_parse_code`).
pub fn parse_comment(c: &[u8]) -> (Bytes, Bytes) {
    if c.len() >= 3 && c[..3].iter().all(u8::is_ascii_digit) {
        let rest = &c[3..];
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        (
            Bytes::copy_from_slice(&c[..3]),
            Bytes::copy_from_slice(&rest[skip..]),
        )
    } else {
        (Bytes::new(), Bytes::copy_from_slice(c))
    }
}

fn tag_of(na: Option<siphon_sip::NameAddr>) -> Bytes {
    na.and_then(|n| n.tag).unwrap_or_default()
}

/// The fields of a request, with `code`/`reason`/`to_tag` given.
fn record(req: &siphon_sip::SipMsg, code: Bytes, reason: Bytes, to_tag: Option<Bytes>) -> Record {
    Record {
        method: req
            .cseq()
            .map(|c| c.method_name)
            .unwrap_or_else(|| req.method_bytes()),
        from_tag: tag_of(req.from()),
        to_tag: to_tag
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| tag_of(req.to())),
        call_id: req.call_id().unwrap_or_default(),
        code,
        reason,
    }
}

/// The extras for the run of `ex` (a null value is empty, as Kamailio).
fn extras(ex: &mut Exec<'_>) -> Vec<Bytes> {
    let prog = ex.prog;
    prog.module_formats("acc")
        .iter()
        .map(|f| ex.fmt(f))
        .collect()
}

impl Acc {
    fn has(flags: u64, f: Option<u32>) -> bool {
        f.is_some_and(|f| flags & (1u64 << f) != 0)
    }

    /// What a final sent upstream logs: (text) for each line, in Kamailio's
    /// order (missed, then answered).
    pub fn lines_for(
        s: &Settings,
        method: siphon_sip::Method,
        code: u16,
        flags: u64,
    ) -> Vec<&'static str> {
        let mut v = vec![];
        let acc_on = Self::has(flags, s.log_flag);
        let mc_on = Self::has(flags, s.log_missed_flag);
        if method == siphon_sip::Method::Cancel && !s.report_cancels {
            return v;
        }
        if method == siphon_sip::Method::Invite && code >= 300 && mc_on {
            v.push(MISSED);
        }
        let should = if code >= 300 {
            Self::has(flags, s.failed_flag) && !s.failed_filter.contains(&code)
        } else {
            acc_on
        };
        if should && acc_on {
            v.push(ANSWERED);
        }
        v
    }

    fn on_final(s: &Settings, prog: &Arc<Program>, f: &TxFinal) {
        let texts = Self::lines_for(s, f.request.method(), f.code, f.flags);
        if texts.is_empty() {
            return;
        }
        let rec = record(
            &f.request,
            Bytes::from(f.code.to_string()),
            f.reason.clone(),
            f.to_tag.clone(),
        );
        // The extras read the request, its R-URI the branch's (Kamailio
        // sets new_uri to the winning branch's URI).
        let mut ctx = prog.new_ctx(RouteType::REQUEST);
        let mut sip = SipCtx::new(f.request.clone(), f.peer);
        sip.edits.ruri = f.branch_ruri.clone();
        ctx.ext.insert(sip);
        ctx.flags = f.flags;
        let vals: Vec<Bytes> = {
            let mut ex = Exec::new(prog, &mut ctx);
            prog.module_formats("acc")
                .iter()
                .map(|fm| ex.fmt(fm))
                .collect()
        };
        for text in texts {
            emit(s.log_level, &format_line(s, text, f.time, &rec, &vals));
        }
    }
}

impl Module for Acc {
    fn functions(&self) -> Vec<FunctionSpec> {
        let s = self.settings.clone();
        vec![FunctionSpec::checked(
            "acc_log_request",
            &[ArgKind::Str],
            |a: &Args| match a.const_value(0) {
                Some(v) if v.to_text().is_empty() => {
                    Err("the comment is empty (Kamailio: first parameter is empty)".into())
                }
                _ => Ok(()),
            },
            move |ex, a| {
                let comment = a.bytes(0, ex);
                let (code, reason) = parse_comment(&comment);
                let Some(sip) = ex.ctx.ext.get::<SipCtx>() else {
                    return (-1).into();
                };
                if !sip.msg.is_request() {
                    return (-1).into();
                }
                let rec = record(&sip.msg, code, reason, None);
                let vals = extras(ex);
                emit(
                    s.log_level,
                    &format_line(&s, REQUEST, SystemTime::now(), &rec, &vals),
                );
                1.into()
            },
        )]
    }
    fn formats(&self) -> Vec<String> {
        self.settings.extra_formats.clone()
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        if self.settings.log_flag.is_none() && self.settings.log_missed_flag.is_none() {
            return Ok(());
        }
        let (s, prog) = (self.settings.clone(), cx.program.clone());
        let hook: TxFinalHook = Arc::new(move |f: &TxFinal| Acc::on_final(&s, &prog, f));
        if !cx.host.on_transaction_final(hook) {
            tracing::warn!(target: "acc", "acc: this host has no transactions: log_flag and log_missed_flag have no effect");
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `loadmodule "acc.so"`.
pub fn def() -> ModuleDef {
    let i = ParamSpec::int;
    let s = ParamSpec::str;
    let ne_s = |n: &'static str| ParamSpec::str(n).no_effect();
    let ne_i = |n: &'static str| ParamSpec::int(n).no_effect();
    let refused = REFUSED.iter().map(|&(name, kind, check)| {
        let p = match kind {
            ParamKind::Int => ParamSpec::int(name),
            _ => ParamSpec::str(name),
        };
        p.check(check)
    });
    ModuleDef {
        name: "acc",
        params: vec![
            i("log_flag"),
            i("log_missed_flag"),
            i("failed_transaction_flag"),
            s("failed_filter"),
            i("log_level"),
            ne_s("log_facility"),
            s("log_extra"),
            i("report_cancels"),
            s("time_attr"),
            s("time_exten"),
            ne_s("time_format"),
            ne_i("acc_extra_nullable"),
            ne_i("clone_msg"),
            ne_i("acc_extra_size"),
            ne_i("acc_prepare_flag"),
            ne_i("acc_prepare_always"),
            // CDRs (dialog): `cdr_enable` is refused (REFUSED); the rest only shape them.
            ne_s("cdr_skip"),
            ne_i("cdr_log_enable"),
            ne_i("cdr_start_on_confirmed"),
            ne_s("cdr_facility"),
            ne_s("cdr_extra"),
            ne_i("cdr_extra_nullable"),
            ne_s("cdr_start_id"),
            ne_s("cdr_end_id"),
            ne_s("cdr_duration_id"),
            ne_i("cdr_duration_mode"),
            ne_i("cdr_expired_dlg_enable"),
            ne_i("cdr_on_failed"),
            ne_i("cdr_extra_size"),
            ne_s("cdrs_table"),
            // The database backend: `db_url`, `db_flag`… are refused unless
            // left empty (REFUSED); these only shape it.
            ne_s("db_table_acc"),
            ne_s("db_table_missed_calls"),
            ne_i("db_version_check"),
            ne_s("acc_method_column"),
            ne_s("acc_from_tag_column"),
            ne_s("acc_to_tag_column"),
            ne_s("acc_callid_column"),
            ne_s("acc_sip_code_column"),
            ne_s("acc_sip_reason_column"),
            ne_s("acc_time_column"),
            ne_i("db_insert_mode"),
        ]
        .into_iter()
        .chain(refused)
        .collect(),
        instantiate: Arc::new(|cfg| {
            Ok(Arc::new(Acc {
                settings: Arc::new(settings(cfg)?),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
