//! dispatcher (Kamailio): destination sets read from a list file, one
//! destination picked per request by an algorithm, failover to the next in
//! `failure_route`, and the destinations' states changed by the script or
//! over RPC.
//!
//! - `ds_select_dst(set, alg[, limit])` sets `$du` to the chosen destination;
//!   `ds_select_domain(…)` rewrites the R-URI's host:port instead. 1 when
//!   one was chosen, -1 when the set is unknown, the algorithm is not
//!   supported or every destination is down.
//! - `ds_next_dst()`, `ds_next_domain()`: the next destination of the last
//!   selection (kept with the transaction); -1 when none is left, or when
//!   failover is off (`flags` without bit 2, Kamailio's default: a warning
//!   says so). `flags` bit 1 hashes the URI's user only.
//! - `ds_mark_dst([state])`: the destination in use takes `state` (letters
//!   `a` active, `i` inactive, `d` disabled, `t` trying, `p` probing; no
//!   argument: `i`, plus `p` with `ds_probing_mode=1`).
//!   As in Kamailio 5.6.3 (checked), marking runs no event route:
//!   `event_route[dispatcher:dst-down|dst-up]` run on probing only.
//! - `ds_is_from_list([set[, mode[, uri]]])`: whether the source (or `uri`)
//!   is a destination of `set` (-1: any); mode bits 1 ignore the port,
//!   2 ignore the protocol (the default without mode), 4 only active ones.
//! - `ds_count(set, states, pv)`: how many destinations of `set` are in one
//!   of `states` (`a`, `i`, `d`, `p`).
//! - Algorithms 0 (Call-ID hash), 1 (From URI hash), 2 (To URI hash),
//!   3 (R-URI hash), 4 (round robin), 8 (priority), 9 (weight), 11 (relative
//!   weight among the active destinations); others are
//!   refused at load when constant, -1 at run time.
//! - RPCs `dispatcher.list`, `dispatcher.reload`, `dispatcher.set_state`,
//!   `dispatcher.ping_active`.
//!
//! OPTIONS probing (`ds_ping_interval` …) is in [`probe`].

pub mod list;
pub mod probe;

use list::{Alg, DS_DISABLED, DS_INACTIVE, DS_PROBING, DS_TRYING, Dest, Lists};
use serde_json::{Value as J, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec};
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// What a selection left for failover, kept in the request's context (which
/// follows the transaction into `failure_route`).
#[derive(Debug, Default)]
pub struct DsCtx {
    /// The destination in use.
    pub current: Option<Arc<Dest>>,
    /// The ones still to try, in order.
    pub remaining: Vec<Arc<Dest>>,
}

/// What `$dsv(...)` reads in `event_route[dispatcher:dst-down|dst-up]`: the
/// probe's reply and the destination.
#[derive(Debug, Clone)]
pub struct DsEvent {
    /// `$dsv(code)`.
    pub code: u16,
    /// `$dsv(reason)`.
    pub reason: String,
    /// `$dsv(flags)`.
    pub flags: u32,
    /// The destination's URI (`$dsv(uri)`, siphon's addition).
    pub uri: String,
}

struct DsvPv(&'static str);

impl PvAccess for DsvPv {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        let Some(e) = ex.ctx.ext.get::<DsEvent>() else {
            return Value::Null;
        };
        match self.0 {
            "code" => Value::Int(i64::from(e.code)),
            // A local timeout has no reason: `$null`, as Kamailio.
            "reason" if e.reason.is_empty() => Value::Null,
            "reason" => Value::from_str_copy(&e.reason),
            "flags" => Value::Int(i64::from(e.flags)),
            _ => Value::from_str_copy(&e.uri),
        }
    }
}

/// The module.
pub struct Dispatcher(Arc<Inner>);

impl std::ops::Deref for Dispatcher {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The module's state, shared with its functions and RPCs.
pub struct Inner {
    file: String,
    lists: RwLock<Arc<Lists>>,
    probing_mode: i64,
    hash_user_only: bool,
    failover: bool,
    force_dst: bool,
    ping_active: AtomicI64,
    probing: Arc<probe::Probing>,
}

impl Inner {
    /// The sets now in use.
    pub fn lists(&self) -> Arc<Lists> {
        self.lists.read().expect("lists lock").clone()
    }

    /// Reads the list file again; calls in progress keep what they picked.
    pub fn reload(&self) -> Result<(), String> {
        let l = load(&self.file)?;
        *self.lists.write().expect("lists lock") = Arc::new(l);
        Ok(())
    }

    /// Sets the state of the destination `addr` (or `all`) of `set`.
    pub fn set_state(&self, state: u32, set: i64, addr: &str) -> bool {
        let lists = self.lists();
        let Some(s) = lists.set(set) else {
            return false;
        };
        let mut found = false;
        for d in &s.dests {
            if addr == "all" || d.uri == addr {
                d.flags.store(state, Ordering::Relaxed);
                found = true;
            }
        }
        found
    }
}

fn load(file: &str) -> Result<Lists, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the dispatcher list file `{file}`: {e}"))?;
    list::parse(&text, file)
}

/// Parses a state as `ds_mark_dst`/`dispatcher.set_state` write it.
fn parse_state(s: &str) -> Option<u32> {
    let mut f = 0;
    if s.is_empty() {
        return None;
    }
    for c in s.chars() {
        f |= match c.to_ascii_lowercase() {
            'a' => 0,
            'i' => DS_INACTIVE,
            'd' => DS_DISABLED,
            't' => DS_TRYING,
            'p' => DS_PROBING,
            'x' => 0,
            _ => return None,
        };
    }
    Some(f)
}

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

/// The user and host[:port] of a URI, as Kamailio's hash keys.
fn uri_keys(uri: &[u8], user_only: bool) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let u = siphon_sip::parse_uri(uri).ok()?;
    let user = u.user.unwrap_or_default().to_vec();
    if user_only {
        return Some((user, None));
    }
    let mut host = u.host.to_vec();
    if let Some(p) = u.port.filter(|p| *p != 5060) {
        host.extend_from_slice(format!(":{p}").as_bytes());
    }
    Some((user, Some(host)))
}

/// The hash key of a request for the hash algorithms.
fn hash_of(s: &SipCtx, alg: Alg, user_only: bool) -> Option<u32> {
    let by_uri = |u: Option<bytes::Bytes>| {
        let (a, b) = uri_keys(&u?, user_only)?;
        Some(list::ds_hash(Some(&a), b.as_deref()))
    };
    match alg {
        Alg::CallId => {
            let c = s.msg.call_id()?;
            Some(list::ds_hash(Some(c.trim_ascii()), None))
        }
        Alg::From => by_uri(s.msg.from().map(|n| n.uri)),
        Alg::To => by_uri(s.msg.to().map(|n| n.uri)),
        Alg::Ruri => by_uri(Some(s.ruri())),
        _ => Some(0),
    }
}

/// The host:port part of a URI: byte offsets.
fn hostport_span(uri: &[u8]) -> Option<(usize, usize)> {
    let colon = uri.iter().position(|&c| c == b':')? + 1;
    let rest = &uri[colon..];
    let end_user = rest
        .iter()
        .position(|&c| c == b';' || c == b'?')
        .unwrap_or(rest.len());
    let start = rest[..end_user]
        .iter()
        .rposition(|&c| c == b'@')
        .map_or(0, |p| p + 1);
    let len = rest[start..]
        .iter()
        .position(|&c| c == b';' || c == b'?' || c == b'>')
        .unwrap_or(rest.len() - start);
    Some((colon + start, colon + start + len))
}

/// `ruri` with its host:port replaced by `dest`'s.
pub fn with_hostport(ruri: &[u8], dest: &[u8]) -> Option<bytes::Bytes> {
    let (a, b) = hostport_span(ruri)?;
    let (c, d) = hostport_span(dest)?;
    let mut v = ruri[..a].to_vec();
    v.extend_from_slice(&dest[c..d]);
    v.extend_from_slice(&ruri[b..]);
    Some(v.into())
}

/// Uses `d`: `$du`, or the R-URI's host:port for the `_domain` variants.
fn apply(s: &mut SipCtx, d: &Dest, domain: bool, force: bool) -> bool {
    if domain {
        match with_hostport(&s.ruri(), d.uri.as_bytes()) {
            Some(u) => s.edits.ruri = Some(u),
            None => return false,
        }
    } else {
        if !force && s.du.is_some() {
            return true;
        }
        s.du = Some(bytes::Bytes::copy_from_slice(d.uri.as_bytes()));
    }
    s.ruri_consumed = false;
    true
}

fn select(m: &Inner, ex: &mut Exec<'_>, set: i64, alg: i64, limit: i64, domain: bool) -> i32 {
    let Some(alg) = Alg::from_num(alg) else {
        tracing::error!(target: "script", "ds_select: algorithm {alg} is not supported");
        return -1;
    };
    let lists = m.lists();
    let Some(set) = lists.set(set) else {
        tracing::error!(target: "script", "ds_select: destination set {set} not found");
        return -1;
    };
    let user_only = m.hash_user_only;
    let Some(s) = sip(ex) else { return -1 };
    let Some(hash) = hash_of(s, alg, user_only) else {
        tracing::error!(target: "script", "ds_select: cannot get the hash key of the request");
        return -1;
    };
    let mut picked = list::select(set, alg, hash, usize::try_from(limit).unwrap_or(0));
    if picked.is_empty() {
        return -1;
    }
    let first = picked.remove(0);
    if !apply(s, &first, domain, m.force_dst) {
        return -1;
    }
    if !m.failover {
        // Kamailio keeps no failover list without `flags` bit 2.
        picked.clear();
    }
    ex.ctx.ext.insert(DsCtx {
        current: Some(first),
        remaining: picked,
    });
    1
}

fn next(m: &Inner, ex: &mut Exec<'_>, domain: bool) -> i32 {
    if !m.failover {
        tracing::warn!(target: "script", "ds_next_dst: failover support disabled (modparam(\"dispatcher\", \"flags\", 2) enables it)");
        return -1;
    }
    let Some(st) = ex.ctx.ext.get_mut::<DsCtx>() else {
        return -1;
    };
    // Destinations marked down since the selection are passed over.
    while !st.remaining.is_empty() {
        let d = st.remaining.remove(0);
        if d.skip() {
            continue;
        }
        st.current = Some(d.clone());
        let Some(s) = sip(ex) else { return -1 };
        return if apply(s, &d, domain, true) { 1 } else { -1 };
    }
    -1
}

fn mark(m: &Inner, ex: &mut Exec<'_>, state: u32) -> i32 {
    let cur = ex.ctx.ext.get::<DsCtx>().and_then(|c| c.current.clone());
    let d = match cur {
        Some(d) => Some(d),
        None => {
            let du = sip(ex).and_then(|s| s.du.clone());
            du.and_then(|du| {
                m.lists()
                    .sets
                    .iter()
                    .flat_map(|s| s.dests.iter())
                    .find(|d| d.uri.as_bytes() == &du[..])
                    .cloned()
            })
        }
    };
    match d {
        Some(d) => {
            // The same destination in the current lists (after a reload).
            let lists = m.lists();
            for x in lists.sets.iter().flat_map(|s| s.dests.iter()) {
                if x.uri == d.uri {
                    x.flags.store(state, Ordering::Relaxed);
                }
            }
            d.flags.store(state, Ordering::Relaxed);
            1
        }
        None => -1,
    }
}

fn is_from_list(
    m: &Inner,
    ex: &mut Exec<'_>,
    set: i64,
    mode: i64,
    uri: Option<bytes::Bytes>,
) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    let (ip, port, proto) = match uri {
        Some(u) => {
            let Ok(p) = siphon_sip::parse_uri(&u) else {
                return -1;
            };
            let Ok(ip) = String::from_utf8_lossy(p.host).parse::<std::net::IpAddr>() else {
                return -1;
            };
            (ip, p.port.unwrap_or(5060), None)
        }
        None => (
            s.peer.src.ip(),
            s.peer.src.port(),
            Some(format!("{:?}", s.peer.transport).to_ascii_lowercase()),
        ),
    };
    let lists = m.lists();
    for st in lists.sets.iter().filter(|x| set < 0 || x.id == set) {
        for d in &st.dests {
            if !d.addrs.contains(&ip) {
                continue;
            }
            if mode & 1 == 0 && d.port_or_default() != port {
                continue;
            }
            if mode & 2 == 0
                && let Some(p) = &proto
            {
                let want = d.proto.clone().unwrap_or_else(|| {
                    if d.uri.starts_with("sips:") {
                        "tls"
                    } else {
                        "udp"
                    }
                    .into()
                });
                if &want != p {
                    continue;
                }
            }
            if mode & 4 != 0 && d.skip() {
                continue;
            }
            return 1;
        }
    }
    -1
}

fn count(m: &Inner, set: i64, states: &str) -> i64 {
    let lists = m.lists();
    let Some(s) = lists.set(set) else { return 0 };
    s.dests
        .iter()
        .filter(|d| {
            let f = d.flags.load(Ordering::Relaxed);
            states.chars().any(|c| match c.to_ascii_lowercase() {
                'a' => f & (DS_INACTIVE | DS_DISABLED) == 0,
                'i' => f & DS_INACTIVE != 0,
                'd' => f & DS_DISABLED != 0,
                'p' => f & DS_PROBING != 0,
                't' => f & DS_TRYING != 0,
                _ => false,
            })
        })
        .count() as i64
}

/// A constant algorithm argument must be one siphon implements.
fn check_alg(a: &Args) -> Result<(), String> {
    match a.const_value(1).map(|v| v.to_int()) {
        Some(Some(n)) if Alg::from_num(n).is_none() => Err(format!(
            "dispatcher algorithm {n} is not supported (0, 1, 2, 3, 4, 8, 9 and 11 are)"
        )),
        Some(None) => Err("the algorithm must be a number".into()),
        _ => Ok(()),
    }
}

impl Module for Dispatcher {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::{Any, PvWritable, Str};
        let me = || self.0.clone();
        let sel_routes = RouteType::REQUEST.or(RouteType::FAILURE);
        let mut v = Vec::new();
        for (name, domain) in [("ds_select_dst", false), ("ds_select_domain", true)] {
            let m = me();
            v.push(
                FunctionSpec::checked(name, &[Any, Any, Any], check_alg, move |ex, a| {
                    let (Some(set), Some(alg)) = (a.int(0, ex), a.int(1, ex)) else {
                        return (-1).into();
                    };
                    let limit = if a.len() > 2 {
                        a.int(2, ex).unwrap_or(0)
                    } else {
                        0
                    };
                    select(&m, ex, set, alg, limit, domain).into()
                })
                .min_args(2)
                .routes(sel_routes),
            );
        }
        for (name, domain) in [("ds_next_dst", false), ("ds_next_domain", true)] {
            let m = me();
            v.push(
                FunctionSpec::new(name, &[], move |ex, _| next(&m, ex, domain).into())
                    .routes(sel_routes),
            );
        }
        let m = me();
        v.push(
            FunctionSpec::checked(
                "ds_mark_dst",
                &[Str],
                |a| match a.const_value(0) {
                    Some(c) if parse_state(&c.to_text()).is_none() => Err(format!(
                        "`{}` is no destination state (letters a, i, d, t, p)",
                        c.to_text()
                    )),
                    _ => Ok(()),
                },
                move |ex, a| {
                    let state = if a.is_empty() {
                        DS_INACTIVE | if m.probing_mode == 1 { DS_PROBING } else { 0 }
                    } else {
                        match parse_state(&a.text(0, ex)) {
                            Some(s) => s,
                            None => return (-1).into(),
                        }
                    };
                    mark(&m, ex, state).into()
                },
            )
            .min_args(0)
            .routes(sel_routes.or(RouteType::ONREPLY)),
        );
        let m = me();
        v.push(
            FunctionSpec::new("ds_is_from_list", &[Any, Any, Str], move |ex, a| {
                let set = if a.is_empty() {
                    -1
                } else {
                    a.int(0, ex).unwrap_or(-1)
                };
                let mode = if a.len() > 1 {
                    a.int(1, ex).unwrap_or(0)
                } else {
                    2
                };
                let uri = (a.len() > 2).then(|| a.bytes(2, ex));
                is_from_list(&m, ex, set, mode, uri).into()
            })
            .min_args(0),
        );
        let m = me();
        v.push(FunctionSpec::new(
            "ds_count",
            &[Any, Str, PvWritable],
            move |ex, a| {
                let Some(set) = a.int(0, ex) else {
                    return (-1).into();
                };
                let states = a.text(1, ex);
                let n = count(&m, set, &states);
                match a.pv(2) {
                    Some(pv) => {
                        let pv = pv.clone();
                        match ex.set_pv(&pv, Value::Int(n), true) {
                            Ok(()) => 1.into(),
                            Err(_) => (-1).into(),
                        }
                    }
                    None => (-1).into(),
                }
            },
        ));
        v
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let p = self.probing.clone();
        if p.interval == 0 {
            return Ok(());
        }
        let m = self.0.clone();
        let program = cx.program.clone();
        let stop = cx.host.shutdown();
        let event: probe::OnChange = Arc::new(move |name, d, code, reason| {
            if let Some(route) = program.event_route(name) {
                let mut ctx = program.new_ctx(RouteType::EVENT);
                ctx.ext.insert(DsEvent {
                    code,
                    reason: reason.to_string(),
                    flags: d.flags.load(Ordering::Relaxed),
                    uri: d.uri.clone(),
                });
                program.run(route, &mut ctx);
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(p.interval));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if m.ping_active.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                n += 1;
                let dests: Vec<Arc<Dest>> = m
                    .lists()
                    .sets
                    .iter()
                    .flat_map(|s| s.dests.iter().cloned())
                    .collect();
                probe::round(p.clone(), dests, n, event.clone()).await;
            }
        });
        Ok(())
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        vec![PvClassSpec::new(
            "dsv",
            PvInner::Required,
            Arc::new(|name| {
                let key = match name.unwrap_or_default() {
                    "code" => "code",
                    "reason" => "reason",
                    "flags" => "flags",
                    "uri" => "uri",
                    other => {
                        return Err(format!("$dsv({other}): code, reason, flags or uri"));
                    }
                };
                Ok(Arc::new(DsvPv(key)) as Arc<dyn PvAccess>)
            }),
        )]
    }

    fn event_routes(&self) -> Vec<&'static str> {
        vec!["dispatcher:dst-down", "dispatcher:dst-up"]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let m = self.0.clone();
        let list = {
            let m = m.clone();
            RpcSpec::new("dispatcher.list", "List the destination sets", move |_| {
                Ok(rpc_list(&m.lists()))
            })
        };
        let reload = {
            let m = m.clone();
            RpcSpec::new(
                "dispatcher.reload",
                "Reload the destination list file",
                move |_| {
                    m.reload()
                        .map(|()| J::from("Ok. Dispatcher successfully reloaded."))
                        .map_err(|e| {
                            tracing::error!(target: "dispatcher", "dispatcher.reload: {e}");
                            RpcFailure {
                                code: 500,
                                message: "Reload Failed".into(),
                            }
                        })
                },
            )
        };
        let set_state = {
            let m = m.clone();
            RpcSpec::new(
                "dispatcher.set_state",
                "Set the state of a destination: state group address",
                move |c| rpc_set_state(&m, c),
            )
        };
        let ping = {
            let m = m.clone();
            RpcSpec::new(
                "dispatcher.ping_active",
                "Get or set whether destinations are probed",
                move |c| {
                    let old = m.ping_active.load(Ordering::Relaxed);
                    match c.int(0) {
                        None if c.params.is_empty() => Ok(json!({"OldPingState": old})),
                        None => Err(RpcFailure::params("the state must be 0 or 1")),
                        Some(n) => {
                            m.ping_active.store(n, Ordering::Relaxed);
                            Ok(json!({"NewPingState": n, "OldPingState": old}))
                        }
                    }
                },
            )
        };
        vec![list, reload, set_state, ping]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn null_if_empty(s: &str) -> J {
    if s.is_empty() { J::Null } else { J::from(s) }
}

/// Kamailio's answer: sets newest first (the last set to appear in the
/// file first), destinations by priority.
fn rpc_list(l: &Lists) -> J {
    let records: Vec<J> = l
        .sets
        .iter()
        .map(|s| {
            let targets: Vec<J> = s
                .dests
                .iter()
                .map(|d| {
                    let mut dest = json!({
                        "URI": d.uri,
                        "FLAGS": d.state(),
                        "PRIORITY": d.priority,
                    });
                    if !d.attrs.is_empty() {
                        dest["ATTRS"] = json!({
                            "BODY": d.attrs,
                            "DUID": d.duid,
                            "MAXLOAD": d.maxload,
                            "WEIGHT": d.weight,
                            "RWEIGHT": d.rweight,
                            "SOCKET": null_if_empty(&d.socket),
                            "SOCKNAME": J::Null,
                            "OBPROXY": J::Null,
                        });
                    }
                    json!({ "DEST": dest })
                })
                .collect();
            json!({"SET": {"ID": s.id, "TARGETS": targets}})
        })
        .collect();
    json!({"NRSETS": l.sets.len(), "RECORDS": records})
}

/// `dispatcher.set_state state group address`; named params arrive in any
/// order, so each is recognised by its shape (a number is the group, a URI
/// or `all` the address, the rest the state).
fn rpc_set_state(m: &Inner, c: &RpcCall) -> Result<J, RpcFailure> {
    if c.params.len() < 3 {
        return Err(RpcFailure::params("expected: state group address"));
    }
    let texts: Vec<String> = (0..3).map(|i| c.str(i).unwrap_or_default()).collect();
    let mut order = [0usize, 1, 2];
    let is_group = |t: &str| t.trim().parse::<i64>().is_ok();
    let is_addr = |t: &str| t == "all" || t.contains(':');
    if !(parse_state(&texts[0]).is_some() && is_group(&texts[1]) && is_addr(&texts[2])) {
        let g = (0..3).find(|&i| is_group(&texts[i]));
        let a = (0..3).find(|&i| Some(i) != g && is_addr(&texts[i]));
        let s = (0..3).find(|&i| Some(i) != g && Some(i) != a);
        if let (Some(g), Some(a), Some(s)) = (g, a, s) {
            order = [s, g, a];
        }
    }
    let Some(state) = parse_state(&texts[order[0]]) else {
        return Err(RpcFailure::params(format!(
            "`{}` is no state",
            texts[order[0]]
        )));
    };
    let Ok(group) = texts[order[1]].trim().parse::<i64>() else {
        return Err(RpcFailure::params("the group must be a number"));
    };
    if m.set_state(state, group, &texts[order[2]]) {
        Ok(J::from("Ok. Dispatcher state updated."))
    } else {
        Err(RpcFailure {
            code: 500,
            message: "State Update Failed".into(),
        })
    }
}

/// What `loadmodule "dispatcher.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "dispatcher",
        params: vec![
            ParamSpec::str("list_file"),
            ParamSpec::int("flags"),
            ParamSpec::int("force_dst"),
            ParamSpec::int("ds_probing_mode"),
            ParamSpec::int("ds_ping_interval"),
            ParamSpec::int("ds_probing_threshold"),
            ParamSpec::int("ds_inactive_threshold"),
            ParamSpec::str("ds_ping_reply_codes"),
            ParamSpec::str("ds_ping_from"),
            ParamSpec::str("ds_ping_method"),
            ParamSpec::int("ds_ping_latency_stats").no_effect(),
            // Failover state is kept with the transaction, not in AVPs.
            ParamSpec::str("dst_avp").no_effect(),
            ParamSpec::str("grp_avp").no_effect(),
            ParamSpec::str("cnt_avp").no_effect(),
            ParamSpec::str("dstid_avp").no_effect(),
            ParamSpec::str("attrs_avp").no_effect(),
            ParamSpec::str("sock_avp").no_effect(),
            ParamSpec::str("xavp_dst").no_effect(),
            ParamSpec::str("xavp_ctx").no_effect(),
            ParamSpec::int("ds_hash_size").no_effect(),
        ],
        instantiate: Arc::new(|cfg| {
            let file = cfg
                .str("list_file")
                .unwrap_or_else(|| "/etc/kamailio/dispatcher.list".into());
            let lists = load(&file)?;
            let flags = cfg.int("flags").unwrap_or(0);
            let probing_mode = cfg.int("ds_probing_mode").unwrap_or(0);
            if !(0..=1).contains(&probing_mode) {
                return Err(format!(
                    "ds_probing_mode {probing_mode} is not supported (0: destinations flagged probing, 1: all)"
                ));
            }
            let positive = |name: &str, default: i64| -> Result<u32, String> {
                let n = cfg.int(name).unwrap_or(default);
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0 || name == "ds_ping_interval")
                    .ok_or_else(|| format!("{name} must be a positive number, not {n}"))
            };
            let mut probing = probe::Probing {
                interval: u64::from(positive("ds_ping_interval", 10)?),
                mode: probing_mode,
                threshold: positive("ds_probing_threshold", 1)?,
                inactive_threshold: positive("ds_inactive_threshold", 1)?,
                method: cfg
                    .str("ds_ping_method")
                    .unwrap_or_else(|| "OPTIONS".into()),
                from: cfg
                    .str("ds_ping_from")
                    .unwrap_or_else(|| "sip:dispatcher@localhost".into()),
                classes: Vec::new(),
                codes: Vec::new(),
            };
            if let Some(c) = cfg.str("ds_ping_reply_codes") {
                probing.reply_codes(&c)?;
            }
            Ok(Arc::new(Dispatcher(Arc::new(Inner {
                file,
                lists: RwLock::new(Arc::new(lists)),
                probing_mode,
                hash_user_only: flags & 1 != 0,
                failover: flags & 2 != 0,
                force_dst: cfg.int("force_dst").unwrap_or(1) != 0,
                ping_active: AtomicI64::new(1),
                probing: Arc::new(probing),
            }))) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
