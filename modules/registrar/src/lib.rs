//! registrar and usrloc (in memory): `save`, `lookup`, `registered`,
//! `unregister`, `$ulc(exp=>…)`; the location tables, their expiry timer,
//! `event_route[usrloc:contact-expired]`, the `ul.*` RPC commands and the
//! `usrloc:`/`registrar:` statistics.
//!
//! **One crate, two modules.** Kamailio's registrar only works with usrloc
//! loaded and reaches its tables through usrloc's API. Here both modules live
//! in this crate: [`usrloc::def`] answers `loadmodule "usrloc.so"` (its
//! params, its RPCs, its statistics, the timer), [`def`] answers
//! `loadmodule "registrar.so"`; registrar's functions find the usrloc
//! instance in the program ([`Program::module`](siphon_script::Program::module))
//! and share its tables, so no module crate depends on another and no shared
//! state is late-bound. The store itself ([`store`]) is pure: no clock, no
//! I/O, no tokio, tested on a simulated clock.
//!
//! Replies (`save`'s 200 with every binding, its 400/420/423/503) go through
//! the host ([`Host::reply`] with [`ReplyMode::Stateful`]): through the
//! request's transaction when it has one, else statelessly, as Kamailio's
//! `slb.freply`.

pub mod store;
pub mod usrloc;

use bytes::Bytes;
use siphon_script::api::{
    Args, Call, FnResult, Host, Module, ModuleConfig, PvAccess, PvClassSpec, PvIdx, PvInner,
    ReplyMode, StartCx,
};
use siphon_script::rpc::StatSource;
use siphon_script::sip::{BranchEntry, SipCtx};
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType, Value};
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use store::{ALL_METHODS, Contact, FL_MEM, Found, Key, Q_UNSPECIFIED};
use usrloc::{ExpiredContact, Usrloc, UsrlocModule, now};

pub use usrloc::def as def_usrloc;

/// registrar's parameters.
#[derive(Debug, Clone)]
pub struct RegConfig {
    /// `default_expires` (s), when neither the contact nor the request says.
    pub default_expires: u64,
    /// `min_expires` (s): shorter ones are raised (or refused with 423, see `min_expires_mode`).
    pub min_expires: u64,
    /// `min_expires_mode`: 1 answers 423 Interval Too Brief instead of raising.
    pub min_expires_mode: bool,
    /// `max_expires` (s, 0: none).
    pub max_expires: u64,
    /// `max_contacts` per address of record (0: none).
    pub max_contacts: usize,
    /// `retry_after` (s): Retry-After of the 503 for too many contacts (0: none).
    pub retry_after: u64,
    /// `default_q` (× 1000), for contacts without q.
    pub default_q: i32,
    /// `append_branches`: lookup() adds the further contacts as branches.
    pub append_branches: bool,
    /// `method_filtering`: lookup() skips contacts that do not accept the method.
    pub method_filtering: bool,
    /// `use_path`: the REGISTER's Path is saved and lookup() routes through it.
    pub use_path: bool,
    /// `path_mode`: 0 save Path always, 1 also return it when the UA supports path, 2 refuse (420) when it does not.
    pub path_mode: i64,
    /// `received_avp`: the AVP holding the address a contact is reached at (NAT).
    pub received_avp: Option<String>,
    /// `received_param`: its name in the reply's Contact.
    pub received_param: String,
}

/// The loaded registrar module.
pub struct RegistrarModule {
    cfg: Arc<RegConfig>,
    stats: Arc<RegStats>,
    /// The host, given at start: save() answers through it.
    host: Arc<OnceLock<Arc<dyn Host>>>,
    /// The tables the script names (`save("location")`), made in usrloc at
    /// start as Kamailio's fixups register them, so `ul.dump` lists them.
    tables: Arc<Mutex<Vec<String>>>,
}

/// A bound call of one of registrar's functions.
struct TableCall<F> {
    args: Args,
    f: Arc<F>,
}

impl<F: Fn(&mut Exec<'_>, &Args) -> FnResult + Send + Sync> Call for TableCall<F> {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        (self.f)(ex, &self.args)
    }
}

/// A function whose first argument is a table: a constant name is noted in `tables`.
fn table_fn<F>(
    name: &'static str,
    params: &[ArgKind],
    tables: &Arc<Mutex<Vec<String>>>,
    f: F,
) -> FunctionSpec
where
    F: Fn(&mut Exec<'_>, &Args) -> FnResult + Send + Sync + 'static,
{
    let (f, tables) = (Arc::new(f), tables.clone());
    FunctionSpec::with_bind(
        name,
        params,
        Arc::new(move |args: Args| {
            if let Some(v) = args.const_value(0) {
                let mut t = tables.lock().unwrap_or_else(|e| e.into_inner());
                t.push(v.to_text().into_owned());
            }
            Ok(Box::new(TableCall { args, f: f.clone() }) as Box<dyn Call>)
        }),
    )
}

#[derive(Default)]
struct RegStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("default_expires"),
    ParamSpec::int("min_expires"),
    ParamSpec::int("min_expires_mode"),
    ParamSpec::int("max_expires"),
    ParamSpec::int("max_contacts"),
    ParamSpec::int("retry_after"),
    ParamSpec::int("default_q"),
    ParamSpec::int("append_branches"),
    ParamSpec::int("method_filtering"),
    ParamSpec::int("use_path"),
    ParamSpec::int("path_mode"),
    ParamSpec::str("received_avp"),
    ParamSpec::str("received_param"),
    ParamSpec::int("gruu_enabled"),
    ParamSpec::int("outbound_mode"),
    ParamSpec::int("default_expires_range"),
    ParamSpec::int("expires_range"),
];

/// `loadmodule "registrar.so"` (usrloc must be loaded too: [`usrloc::def`]).
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "registrar",
        params: PARAMS.to_vec(),
        instantiate: Arc::new(|cfg: &ModuleConfig| {
            Ok(Arc::new(RegistrarModule {
                cfg: Arc::new(config(cfg)?),
                stats: Arc::default(),
                host: Arc::default(),
                tables: Arc::default(),
            }) as Arc<dyn Module>)
        }),
    }
}

fn config(cfg: &ModuleConfig) -> Result<RegConfig, String> {
    let secs = |name: &str, default: i64| -> Result<u64, String> {
        match cfg.int(name).unwrap_or(default) {
            v if v >= 0 => Ok(v as u64),
            v => Err(format!("{name} must not be negative, not {v}")),
        }
    };
    for (name, what) in [
        ("gruu_enabled", "GRUU (RFC 5627)"),
        ("outbound_mode", "SIP outbound (RFC 5626)"),
        ("default_expires_range", "randomised expires"),
        ("expires_range", "randomised expires"),
    ] {
        if cfg.int(name).unwrap_or(0) != 0 {
            return Err(format!(
                "{name}: siphon's registrar has no {what}; set it to 0 or leave it out"
            ));
        }
    }
    let path_mode = cfg.int("path_mode").unwrap_or(2);
    if !(0..=2).contains(&path_mode) {
        return Err(format!("path_mode must be 0, 1 or 2, not {path_mode}"));
    }
    let default_q = match cfg.int("default_q").unwrap_or(-1) {
        q @ -1..=1000 => q as i32,
        q => return Err(format!("default_q must be -1 (none) or 0..1000, not {q}")),
    };
    let received_avp = match cfg.str("received_avp") {
        None => None,
        Some(s) => Some(
            avp_name(&s)
                .ok_or_else(|| format!("received_avp must name an AVP ($avp(name)), not `{s}`"))?,
        ),
    };
    Ok(RegConfig {
        default_expires: secs("default_expires", 3600)?,
        min_expires: secs("min_expires", 60)?,
        min_expires_mode: cfg.int("min_expires_mode").unwrap_or(0) != 0,
        max_expires: secs("max_expires", 0)?,
        max_contacts: secs("max_contacts", 0)? as usize,
        retry_after: secs("retry_after", 0)?,
        default_q,
        append_branches: cfg.int("append_branches").unwrap_or(1) != 0,
        method_filtering: cfg.int("method_filtering").unwrap_or(0) != 0,
        use_path: cfg.int("use_path").unwrap_or(0) != 0,
        path_mode,
        received_avp,
        received_param: cfg
            .str("received_param")
            .unwrap_or_else(|| "received".into()),
    })
}

/// `$avp(name)` / `$avp(s:name)` → `name`.
fn avp_name(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix("$avp(")?.strip_suffix(')')?;
    let inner = inner.strip_prefix("s:").unwrap_or(inner);
    (!inner.is_empty()).then(|| inner.to_string())
}

impl Module for RegistrarModule {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::*;
        let routes = RouteType::REQUEST.or(RouteType::FAILURE);
        let c = self.cfg.clone();
        let st = self.stats.clone();
        let host = self.host.clone();
        let save = table_fn("save", &[Str, Any, Str], &self.tables, move |ex, a| {
            let rc = save(ex, a, &c, host.get());
            if rc > 0 {
                st.accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                st.rejected.fetch_add(1, Ordering::Relaxed);
            }
            rc.into()
        })
        .min_args(1)
        .routes(routes);
        let c = self.cfg.clone();
        let lookup = table_fn("lookup", &[Str, Str], &self.tables, move |ex, a| {
            lookup(ex, a, &c).into()
        })
        .min_args(1)
        .routes(routes.or(RouteType::BRANCH));
        let c = self.cfg.clone();
        let registered = table_fn("registered", &[Str, Str], &self.tables, move |ex, a| {
            registered(ex, a, &c).into()
        })
        .min_args(1);
        let c = self.cfg.clone();
        let unregister = table_fn(
            "unregister",
            &[Str, Str, Str],
            &self.tables,
            move |ex, a| unregister(ex, a, &c).into(),
        )
        .min_args(2);
        vec![save, lookup, registered, unregister]
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        vec![PvClassSpec::new(
            "ulc",
            PvInner::Required,
            Arc::new(|inner| {
                let inner = inner.unwrap_or_default();
                let (profile, key) = inner
                    .split_once("=>")
                    .ok_or_else(|| format!("`$ulc({inner})`: write $ulc(exp=>key)"))?;
                if profile.trim() != "exp" {
                    return Err(format!(
                        "`$ulc({inner})`: siphon has only the exp profile (the contact \
                         event_route[usrloc:contact-expired] runs for), not reg_fetch_contacts"
                    ));
                }
                let key = UlcKey::parse(key.trim())?;
                Ok(Arc::new(Ulc(key)) as Arc<dyn PvAccess>)
            }),
        )]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.stats.clone(), self.cfg.clone())))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let Some(ul) = cx.program.module::<UsrlocModule>() else {
            return Err("registrar needs usrloc: add loadmodule \"usrloc.so\"".into());
        };
        for t in self.tables.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            ul.ul.with(t, |_| ());
        }
        let _ = self.host.set(cx.host.clone());
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Stats(Arc<RegStats>, Arc<RegConfig>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        vec![
            (
                "registrar:accepted_regs".into(),
                self.0.accepted.load(Ordering::Relaxed) as i64,
            ),
            (
                "registrar:rejected_regs".into(),
                self.0.rejected.load(Ordering::Relaxed) as i64,
            ),
            ("registrar:max_expires".into(), self.1.max_expires as i64),
            ("registrar:max_contacts".into(), self.1.max_contacts as i64),
            (
                "registrar:default_expire".into(),
                self.1.default_expires as i64,
            ),
        ]
    }
    fn reset(&self, name: &str) {
        match name {
            "registrar:accepted_regs" => self.0.accepted.store(0, Ordering::Relaxed),
            "registrar:rejected_regs" => self.0.rejected.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

// ---------- $ulc(exp=>key) ----------

#[derive(Clone, Copy)]
enum UlcKey {
    Aor,
    Addr,
    Path,
    Received,
    Expires,
    CallId,
    Q,
    CSeq,
    Flags,
    CFlags,
    UserAgent,
    Socket,
    Methods,
    Ruid,
    Instance,
    RegId,
    Count,
}

impl UlcKey {
    fn parse(k: &str) -> Result<UlcKey, String> {
        Ok(match k {
            "aor" => UlcKey::Aor,
            "addr" => UlcKey::Addr,
            "path" => UlcKey::Path,
            "received" => UlcKey::Received,
            "expires" => UlcKey::Expires,
            "callid" => UlcKey::CallId,
            "q" => UlcKey::Q,
            "cseq" => UlcKey::CSeq,
            "flags" => UlcKey::Flags,
            "cflags" => UlcKey::CFlags,
            "user_agent" => UlcKey::UserAgent,
            "socket" => UlcKey::Socket,
            "methods" => UlcKey::Methods,
            "ruid" => UlcKey::Ruid,
            "instance" => UlcKey::Instance,
            "reg_id" => UlcKey::RegId,
            "count" => UlcKey::Count,
            _ => return Err(format!("`$ulc(exp=>{k})`: unknown key")),
        })
    }
}

struct Ulc(UlcKey);

impl PvAccess for Ulc {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        let Some(e) = ex.ctx.ext.get::<ExpiredContact>() else {
            return Value::Null;
        };
        let c = &e.contact;
        let s = |v: &str| Value::from_str_copy(v);
        let o = |v: &Option<String>| v.as_deref().map_or(Value::Null, s);
        match self.0 {
            UlcKey::Aor => s(&e.aor),
            UlcKey::Addr => s(&c.uri),
            UlcKey::Path => o(&c.path),
            UlcKey::Received => o(&c.received),
            UlcKey::Expires => Value::Int(c.expires.min(i64::MAX as u64) as i64),
            UlcKey::CallId => s(&c.callid),
            UlcKey::Q => Value::Int(i64::from(c.q)),
            UlcKey::CSeq => Value::Int(i64::from(c.cseq)),
            UlcKey::Flags => Value::Int(i64::from(c.flags)),
            UlcKey::CFlags => Value::Int(c.cflags as i64),
            UlcKey::UserAgent => s(&c.user_agent),
            UlcKey::Socket => s(&c.socket),
            UlcKey::Methods => Value::Int(i64::from(c.methods)),
            UlcKey::Ruid => s(&c.ruid),
            UlcKey::Instance => o(&c.instance),
            UlcKey::RegId => Value::Int(i64::from(c.reg_id)),
            UlcKey::Count => Value::Int(1),
        }
    }
}

// ---------- helpers ----------

fn usrloc(ex: &Exec<'_>) -> Option<Arc<Usrloc>> {
    ex.prog.module::<UsrlocModule>().map(|m| m.ul.clone())
}

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

/// `%41lice` → `Alice` (RFC 3261 escapes in the user part).
fn unescape(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The address of record of a URI (Kamailio's `extract_aor`): the unescaped
/// user, `@host` (lower case) with `use_domain`.
pub fn aor_of_uri(uri: &[u8], use_domain: bool) -> Option<String> {
    let u = siphon_sip::parse_uri(uri.trim_ascii()).ok()?;
    let mut aor = unescape(u.user.unwrap_or_default())?;
    if use_domain {
        aor.push('@');
        aor.push_str(&String::from_utf8_lossy(u.host).to_ascii_lowercase());
    }
    Some(aor)
}

/// An address of record as an RPC names it: a URI, `user@host` or `user`.
pub fn aor_of_text(s: &str, use_domain: bool) -> Option<String> {
    let s = s.trim();
    if s.contains(':') {
        return aor_of_uri(s.as_bytes(), use_domain);
    }
    match (use_domain, s.split_once('@')) {
        (true, Some((u, h))) => Some(format!("{u}@{}", h.to_ascii_lowercase())),
        (false, Some((u, _))) => Some(u.to_string()),
        (_, None) => Some(s.to_string()),
    }
}

/// `q` text → × 1000 (`1`, `0.5`, `0.125`, `1.0`).
pub fn parse_q(q: &[u8]) -> Option<i32> {
    let s = std::str::from_utf8(q).ok()?.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 3
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let i: i32 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut f = 0;
    for (n, d) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        f += i32::from(d - b'0') * [100, 10, 1][n];
    }
    let v = i * 1000 + f;
    (0..=1000).contains(&v).then_some(v)
}

/// × 1000 → text as Kamailio prints q (`1`, `0.5`, `0.25`).
pub fn q_text(q: i32) -> String {
    match q {
        1000 => "1".into(),
        0 => "0".into(),
        q => format!("0.{:03}", q).trim_end_matches('0').to_string(),
    }
}

/// One Contact value of a REGISTER.
#[derive(Debug, Clone)]
struct ContactSpec {
    uri: String,
    expires: Option<String>,
    q: Option<String>,
    instance: Option<String>,
    reg_id: Option<String>,
    methods: Option<String>,
}

/// Splits `;a=b;c="d;e"` into (name, value) pairs, quotes kept.
fn split_params(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    let b = s.as_bytes();
    let mut push = |part: &str| {
        let part = part.trim();
        if part.is_empty() {
            return;
        }
        match part.split_once('=') {
            Some((n, v)) => out.push((n.trim().to_ascii_lowercase(), Some(v.trim().to_string()))),
            None => out.push((part.to_ascii_lowercase(), None)),
        }
    };
    for i in 0..b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&s[start..]);
    out
}

fn parse_contact(v: &str) -> Option<ContactSpec> {
    let v = v.trim();
    let (uri, params) = if let Some(lt) = position_outside_quotes(v, '<') {
        let gt = lt + v[lt..].find('>')?;
        (&v[lt + 1..gt], &v[gt + 1..])
    } else {
        match v.find(';') {
            Some(p) => (&v[..p], &v[p..]),
            None => (v, ""),
        }
    };
    let uri = uri.trim();
    siphon_sip::parse_uri(uri.as_bytes()).ok()?;
    let mut c = ContactSpec {
        uri: uri.to_string(),
        expires: None,
        q: None,
        instance: None,
        reg_id: None,
        methods: None,
    };
    for (n, val) in split_params(params) {
        let val = val.unwrap_or_default();
        match n.as_str() {
            "expires" => c.expires = Some(val),
            "q" => c.q = Some(val),
            "+sip.instance" => c.instance = Some(val),
            "reg-id" => c.reg_id = Some(val),
            "methods" => c.methods = Some(val),
            _ => {}
        }
    }
    Some(c)
}

fn position_outside_quotes(s: &str, want: char) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == want && !quoted {
            return Some(i);
        }
    }
    None
}

/// Kamailio's method bits (`METHOD_INVITE` = 1 …).
fn method_bit(m: &str) -> u32 {
    match m.trim().to_ascii_uppercase().as_str() {
        "INVITE" => 1,
        "CANCEL" => 2,
        "ACK" => 4,
        "BYE" => 8,
        "INFO" => 16,
        "REGISTER" => 32,
        "SUBSCRIBE" => 64,
        "NOTIFY" => 128,
        "MESSAGE" => 256,
        "OPTIONS" => 512,
        "PRACK" => 1024,
        "UPDATE" => 2048,
        "REFER" => 4096,
        "PUBLISH" => 8192,
        _ => 1 << 19,
    }
}

fn methods_of(list: &str) -> u32 {
    list.trim_matches('"')
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .fold(0, |acc, m| acc | method_bit(m))
}

// ---------- save ----------

/// Why a REGISTER is refused (Kamailio's `rerrno`).
#[derive(Debug, Clone, PartialEq)]
enum RegError {
    StarExpires,
    StarContacts,
    InvalidCseq,
    TooMany,
    LowExpires,
    AorParse,
    ContactParse,
    InvalidQ,
    PathUnsupported,
    Parse,
}

impl RegError {
    /// Code, reason and the P-Registrar-Error text.
    fn reply(&self) -> (u16, &'static str, &'static str) {
        match self {
            RegError::StarExpires => (
                400,
                "Bad Request",
                "* used in contact and expires is not zero",
            ),
            RegError::StarContacts => (
                400,
                "Bad Request",
                "* used in contact and more than 1 contact",
            ),
            RegError::InvalidCseq => (400, "Bad Request", "Invalid CSeq number"),
            RegError::TooMany => (503, "Service Unavailable", "Too many registered contacts"),
            RegError::LowExpires => (423, "Interval Too Brief", "Interval too brief"),
            RegError::AorParse => (
                400,
                "Bad Request",
                "Error while extracting Address Of Record",
            ),
            RegError::ContactParse => (400, "Bad Request", "Error while parsing Contact"),
            RegError::InvalidQ => (400, "Bad Request", "Invalid q parameter"),
            RegError::PathUnsupported => (420, "Bad Extension", "Path not supported by UA"),
            RegError::Parse => (400, "Bad Request", "Error while parsing message"),
        }
    }
}

/// What save() read from the REGISTER.
struct Register {
    aor: String,
    star: bool,
    contacts: Vec<ContactSpec>,
    expires_hdr: Option<u64>,
    callid: String,
    cseq: u32,
    user_agent: String,
    path: Option<String>,
    path_supported: bool,
    allow: Option<u32>,
    socket: String,
    cflags: u64,
}

fn header_values(s: &SipCtx, name: &[u8]) -> Vec<Bytes> {
    s.msg
        .headers_named(name)
        .map(|h| s.msg.header_value(h))
        .collect()
}

fn socket_text(s: &SipCtx) -> String {
    let l = s.peer.local;
    let ip = match l.ip() {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    format!("{}:{ip}:{}", s.peer.transport.name(), l.port())
}

fn read_register(s: &SipCtx, uri: Option<&str>, use_domain: bool) -> Result<Register, RegError> {
    let aor_uri = match uri {
        Some(u) => Bytes::from(u.to_string()),
        None => s.msg.to().ok_or(RegError::Parse)?.uri,
    };
    let aor = aor_of_uri(&aor_uri, use_domain).ok_or(RegError::AorParse)?;
    let mut contacts = Vec::new();
    let mut star = false;
    let mut n_values = 0;
    for v in header_values(s, b"Contact") {
        for r in siphon_sip::split_commas(&v) {
            n_values += 1;
            let item = String::from_utf8_lossy(&v[r.range()]).into_owned();
            if item.trim() == "*" {
                star = true;
            } else {
                contacts.push(parse_contact(&item).ok_or(RegError::ContactParse)?);
            }
        }
    }
    if star && n_values > 1 {
        return Err(RegError::StarContacts);
    }
    let expires_hdr = header_values(s, b"Expires")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
    let cseq = s.msg.cseq().ok_or(RegError::Parse)?.num;
    let callid = s.msg.call_id().ok_or(RegError::Parse)?;
    let text = |b: &Bytes| String::from_utf8_lossy(b).trim().to_string();
    let path: Vec<String> = header_values(s, b"Path").iter().map(text).collect();
    let supported = header_values(s, b"Supported").iter().any(|v| {
        v.split(|&c| c == b',')
            .any(|o| o.trim_ascii().eq_ignore_ascii_case(b"path"))
    });
    let allow = {
        let a = header_values(s, b"Allow");
        (!a.is_empty()).then(|| a.iter().fold(0, |acc, v| acc | methods_of(&text(v))))
    };
    Ok(Register {
        aor,
        star,
        contacts,
        expires_hdr,
        callid: text(&callid),
        cseq,
        user_agent: header_values(s, b"User-Agent")
            .first()
            .map(text)
            .unwrap_or_default(),
        path: (!path.is_empty()).then(|| path.join(",")),
        path_supported: supported,
        allow,
        socket: socket_text(s),
        cflags: s.bflags,
    })
}

/// Kamailio's `calc_contact_expires`; `None` when too brief in `min_expires_mode`.
fn contact_expires(c: &ContactSpec, reg: &Register, cfg: &RegConfig) -> Result<u64, RegError> {
    let e = match &c.expires {
        Some(v) => v.trim().parse().unwrap_or(cfg.default_expires),
        None => reg.expires_hdr.unwrap_or(cfg.default_expires),
    };
    if e == 0 {
        return Ok(0);
    }
    let mut e = e;
    if e < cfg.min_expires {
        if cfg.min_expires_mode {
            return Err(RegError::LowExpires);
        }
        e = cfg.min_expires;
    }
    if cfg.max_expires > 0 && e > cfg.max_expires {
        e = cfg.max_expires;
    }
    Ok(e)
}

/// What save() did, for its return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saved {
    Inserted = 1,
    Updated = 2,
    Deleted = 3,
    Queried = 4,
}

#[derive(Clone, Copy)]
struct SaveOpts {
    memory_only: bool,
    single: bool,
}

/// Applies a REGISTER to `table` at `now`: all or nothing.
fn apply(
    t: &mut store::Table,
    reg: &Register,
    received: Option<&str>,
    cfg: &RegConfig,
    ul: &Usrloc,
    opts: SaveOpts,
    now: u64,
) -> Result<Saved, RegError> {
    if reg.star {
        if reg.expires_hdr != Some(0) {
            return Err(RegError::StarExpires);
        }
        t.remove(&reg.aor);
        return Ok(Saved::Deleted);
    }
    if reg.contacts.is_empty() {
        return Ok(Saved::Queried);
    }
    let existed = t.get(&reg.aor).is_some();
    let mut rec = t.get(&reg.aor).cloned().unwrap_or_else(|| store::Record {
        aor: reg.aor.clone(),
        contacts: Vec::new(),
    });
    let desc = ul.cfg.desc_time_order;
    let mut done = Saved::Inserted;
    let mut saved_uris = Vec::new();
    for c in &reg.contacts {
        let expires = contact_expires(c, reg, cfg)?;
        let q = match &c.q {
            Some(q) => parse_q(q.as_bytes()).ok_or(RegError::InvalidQ)?,
            None => cfg.default_q,
        };
        let instance = c.instance.clone().filter(|i| !i.is_empty());
        let reg_id = c
            .reg_id
            .as_deref()
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0);
        let path = if cfg.use_path { reg.path.clone() } else { None };
        let key = Key {
            uri: &c.uri,
            callid: &reg.callid,
            path: path.as_deref(),
            instance: instance.as_deref(),
            reg_id,
        };
        let found = rec.find(&key, reg.cseq, now, ul.cfg.matching, ul.cfg.cseq_delay);
        let old = match found {
            Found::OldCseq => return Err(RegError::InvalidCseq),
            Found::Retransmission => {
                saved_uris.push(c.uri.clone());
                continue;
            }
            Found::At(i) => Some(i),
            Found::No => None,
        };
        if expires == 0 {
            if let Some(i) = old {
                rec.contacts.remove(i);
                done = Saved::Deleted;
            }
            continue;
        }
        let contact = Contact {
            uri: c.uri.clone(),
            expires: now + expires,
            q,
            callid: reg.callid.clone(),
            cseq: reg.cseq,
            received: received.map(str::to_string),
            path,
            user_agent: reg.user_agent.clone(),
            flags: if opts.memory_only { FL_MEM } else { 0 },
            cflags: reg.cflags,
            socket: reg.socket.clone(),
            methods: match &c.methods {
                Some(m) => methods_of(m),
                None => reg.allow.unwrap_or(ALL_METHODS),
            },
            ruid: match old {
                Some(i) => rec.contacts[i].ruid.clone(),
                None => ul.new_ruid(),
            },
            instance,
            reg_id,
            last_modified: now,
        };
        saved_uris.push(c.uri.clone());
        match old {
            Some(i) => {
                rec.update(i, contact, desc);
                done = Saved::Updated;
            }
            None => {
                rec.insert(contact, desc);
                done = Saved::Inserted;
            }
        }
    }
    if opts.single {
        // 0x04: this REGISTER's contact replaces every other binding.
        rec.contacts.retain(|c| saved_uris.contains(&c.uri));
        rec.contacts.truncate(1);
    }
    if cfg.max_contacts > 0 && rec.valid(now).count() > cfg.max_contacts {
        return Err(RegError::TooMany);
    }
    if !existed {
        done = Saved::Inserted;
    }
    if rec.contacts.is_empty() {
        t.remove(&reg.aor);
    } else {
        *t.get_or_create(&reg.aor) = rec;
    }
    Ok(done)
}

/// The 200's Contact header: every valid binding with its remaining seconds.
fn contact_header(rec: Option<&store::Record>, cfg: &RegConfig, now: u64) -> Option<Bytes> {
    let rec = rec?;
    let mut out = String::new();
    for c in rec.valid(now) {
        out.push_str(if out.is_empty() { "Contact: " } else { ", " });
        out.push('<');
        out.push_str(&c.uri);
        out.push('>');
        if c.q != Q_UNSPECIFIED {
            out.push_str(";q=");
            out.push_str(&q_text(c.q));
        }
        out.push_str(&format!(";expires={}", c.remaining(now)));
        if let Some(r) = &c.received {
            out.push_str(&format!(";{}=\"{r}\"", cfg.received_param));
        }
        if let Some(i) = &c.instance {
            out.push_str(&format!(";+sip.instance={i}"));
            if c.reg_id > 0 {
                out.push_str(&format!(";reg-id={}", c.reg_id));
            }
        }
    }
    (!out.is_empty()).then(|| Bytes::from(out + "\r\n"))
}

fn save_flags(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        other => {
            let t = other.to_text();
            let t = t.trim();
            match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => i64::from_str_radix(h, 16).unwrap_or(0),
                None => other.to_int().unwrap_or(0),
            }
        }
    }
}

/// Answers save()'s request; false (logged) when nothing was sent.
fn reply(
    host: Option<&Arc<dyn Host>>,
    ex: &mut Exec<'_>,
    code: u16,
    reason: &str,
    extra: &[Bytes],
) -> bool {
    let Some(host) = host else {
        tracing::error!(target: "script", "save(): no host to send the {code} reply through");
        return false;
    };
    match host.reply(ex.ctx, code, reason, extra, ReplyMode::Stateful) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(target: "script", "save(): {e}");
            false
        }
    }
}

fn save(ex: &mut Exec<'_>, a: &Args, cfg: &RegConfig, host: Option<&Arc<dyn Host>>) -> i32 {
    let Some(ul) = usrloc(ex) else { return -1 };
    let table = a.text(0, ex);
    let flags = if a.len() > 1 {
        save_flags(&a.value(1, ex))
    } else {
        0
    };
    let uri = (a.len() > 2).then(|| a.text(2, ex));
    let opts = SaveOpts {
        memory_only: flags & 1 != 0,
        single: flags & 4 != 0,
    };
    let no_reply = flags & 2 != 0;
    let received = cfg
        .received_avp
        .as_deref()
        .and_then(|n| ex.ctx.avps.get(n, 0))
        .map(|v| v.to_text().into_owned())
        .filter(|v| !v.is_empty());
    let Some(s) = sip(ex) else { return -1 };
    if !s.msg.is_request() {
        return -1;
    }
    let now = now();
    let result = read_register(s, uri.as_deref(), ul.cfg.use_domain).and_then(|reg| {
        if cfg.use_path && reg.path.is_some() && cfg.path_mode == 2 && !reg.path_supported {
            return Err(RegError::PathUnsupported);
        }
        // One lock: the reply lists the bindings as this REGISTER left them.
        let (done, hdr) = ul.with(&table, |t| {
            let done = apply(t, &reg, received.as_deref(), cfg, &ul, opts, now)?;
            Ok::<_, RegError>((done, contact_header(t.get(&reg.aor), cfg, now)))
        })?;
        let path = (cfg.use_path && cfg.path_mode != 0 && reg.path_supported)
            .then(|| reg.path.clone())
            .flatten();
        Ok((done, hdr, path))
    });
    match result {
        Ok((done, hdr, path)) => {
            if !no_reply {
                let mut extra: Vec<Bytes> = hdr.into_iter().collect();
                if let Some(p) = path {
                    extra.push(Bytes::from(format!("Path: {p}\r\n")));
                }
                if !reply(host, ex, 200, "OK", &extra) {
                    return -1;
                }
            }
            done as i32
        }
        Err(e) => {
            let (code, reason, text) = e.reply();
            tracing::debug!(target: "script", "save(\"{table}\"): {code} {text}");
            if !no_reply {
                // Kamailio's order: Min-Expires / Retry-After, then the error text.
                let mut extra = Vec::new();
                if e == RegError::LowExpires {
                    extra.push(Bytes::from(format!("Min-Expires: {}\r\n", cfg.min_expires)));
                }
                if e == RegError::PathUnsupported {
                    extra.push(Bytes::from_static(b"Unsupported: path\r\n"));
                }
                if e == RegError::TooMany && cfg.retry_after > 0 {
                    extra.push(Bytes::from(format!("Retry-After: {}\r\n", cfg.retry_after)));
                }
                extra.push(Bytes::from(format!("P-Registrar-Error: {text}\r\n")));
                reply(host, ex, code, reason, &extra);
            }
            if e == RegError::TooMany { -2 } else { -1 }
        }
    }
}

// ---------- lookup ----------

/// The first URI of a Path value (`<sip:p1;lr>,<sip:p2;lr>` → `sip:p1;lr`).
fn first_path_uri(path: &str) -> Option<String> {
    let first = path.split(',').next()?.trim();
    let first = first
        .strip_prefix('<')
        .map_or(first, |f| f.split('>').next().unwrap_or(f));
    (!first.is_empty()).then(|| first.to_string())
}

fn target_aor(ex: &mut Exec<'_>, a: &Args, i: usize, use_domain: bool) -> Option<String> {
    let uri = if a.len() > i {
        Bytes::from(a.text(i, ex))
    } else {
        sip(ex)?.ruri()
    };
    aor_of_uri(&uri, use_domain)
}

fn lookup(ex: &mut Exec<'_>, a: &Args, cfg: &RegConfig) -> i32 {
    let Some(ul) = usrloc(ex) else { return -3 };
    let table = a.text(0, ex);
    let Some(aor) = target_aor(ex, a, 1, ul.cfg.use_domain) else {
        return -3;
    };
    let now = now();
    let contacts: Vec<Contact> = ul.with(&table, |t| {
        t.get(&aor)
            .map(|r| r.valid(now).cloned().collect())
            .unwrap_or_default()
    });
    if contacts.is_empty() {
        return -1;
    }
    let Some(s) = sip(ex) else { return -3 };
    let method = method_bit(&String::from_utf8_lossy(&s.msg.method_bytes()));
    let allowed: Vec<&Contact> = contacts
        .iter()
        .filter(|c| !cfg.method_filtering || c.methods & method != 0)
        .collect();
    let Some((first, rest)) = allowed.split_first() else {
        return -2;
    };
    let dst = |c: &Contact| -> Option<Bytes> {
        c.path
            .as_deref()
            .and_then(first_path_uri)
            .or_else(|| c.received.clone())
            .map(Bytes::from)
    };
    s.edits.ruri = Some(Bytes::from(first.uri.clone()));
    s.du = dst(first);
    s.bflags = first.cflags;
    s.ruri_consumed = false;
    if let Some(p) = &first.path {
        s.edits.append.push(Bytes::from(format!("Route: {p}\r\n")));
    }
    if cfg.append_branches {
        for c in rest {
            s.branches.push(BranchEntry {
                uri: Bytes::from(c.uri.clone()),
                du: dst(c),
                q: (c.q != Q_UNSPECIFIED).then_some(c.q),
                flags: c.cflags,
            });
        }
    }
    1
}

fn registered(ex: &mut Exec<'_>, a: &Args, cfg: &RegConfig) -> i32 {
    let _ = cfg;
    let Some(ul) = usrloc(ex) else { return -1 };
    let table = a.text(0, ex);
    let Some(aor) = target_aor(ex, a, 1, ul.cfg.use_domain) else {
        return -1;
    };
    let now = now();
    if ul.with(&table, |t| {
        t.get(&aor).is_some_and(|r| r.valid(now).next().is_some())
    }) {
        1
    } else {
        -1
    }
}

fn unregister(ex: &mut Exec<'_>, a: &Args, cfg: &RegConfig) -> i32 {
    let _ = cfg;
    let Some(ul) = usrloc(ex) else { return -1 };
    let table = a.text(0, ex);
    let Some(aor) = target_aor(ex, a, 1, ul.cfg.use_domain) else {
        return -1;
    };
    let ruid = (a.len() > 2)
        .then(|| a.text(2, ex))
        .filter(|r| !r.is_empty());
    let removed = ul.with(&table, |t| match &ruid {
        Some(r) => t.remove_ruid(&aor, r),
        None => t.remove(&aor),
    });
    if removed { 1 } else { -1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_values_read_and_print_as_kamailio() {
        for (t, v) in [
            ("1", 1000),
            ("1.0", 1000),
            ("0.5", 500),
            ("0.125", 125),
            ("0", 0),
            (".7", 700),
        ] {
            assert_eq!(parse_q(t.as_bytes()), Some(v), "{t}");
        }
        for bad in ["1.5", "2", "x", "0.1234", ""] {
            assert_eq!(parse_q(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            [
                q_text(1000),
                q_text(500),
                q_text(250),
                q_text(0),
                q_text(125)
            ],
            ["1", "0.5", "0.25", "0", "0.125"]
        );
    }

    #[test]
    fn the_address_of_record_is_the_unescaped_user_with_the_domain_if_asked() {
        assert_eq!(
            aor_of_uri(b"sip:%61lice@Example.COM;transport=tcp", false).as_deref(),
            Some("alice")
        );
        assert_eq!(
            aor_of_uri(b"sip:alice@Example.COM:5060", true).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(aor_of_text("bob@x", false).as_deref(), Some("bob"));
        assert_eq!(aor_of_text("sip:bob@X", true).as_deref(), Some("bob@x"));
    }

    #[test]
    fn contact_values_give_their_uri_and_params() {
        let c = parse_contact("\"A;b\" <sip:a@h:5080;transport=tcp>;expires=30;q=0.5;+sip.instance=\"<urn:uuid:1;x>\";reg-id=2").unwrap();
        assert_eq!(c.uri, "sip:a@h:5080;transport=tcp");
        assert_eq!(
            (c.expires.as_deref(), c.q.as_deref()),
            (Some("30"), Some("0.5"))
        );
        assert_eq!(c.instance.as_deref(), Some("\"<urn:uuid:1;x>\""));
        assert_eq!(c.reg_id.as_deref(), Some("2"));
        let bare = parse_contact("sip:b@h;expires=0").unwrap();
        assert_eq!(
            (bare.uri.as_str(), bare.expires.as_deref()),
            ("sip:b@h", Some("0"))
        );
        assert!(parse_contact("<nonsense>").is_none());
        assert_eq!(methods_of("\"INVITE, BYE,MESSAGE\""), 1 | 8 | 256);
        assert_eq!(
            first_path_uri("<sip:p1@h;lr>, <sip:p2@h;lr>").as_deref(),
            Some("sip:p1@h;lr")
        );
    }
}
