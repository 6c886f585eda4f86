//! dispatcher (Kamailio): destination sets read from a list file, one
//! destination picked per request by an algorithm, failover to the next in
//! `failure_route`, and the destinations' states changed by the script or
//! over RPC.
//!
//! - `ds_select_dst(set, alg[, limit])` sets `$du` to the chosen destination;
//!   `ds_select_domain(…)` rewrites the R-URI's host:port instead. 1 when
//!   one was chosen, -1 when the set is unknown, every destination is down,
//!   or `$du` is set already and `force_dst` is 0 (as Kamailio).
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
//!   is a destination of `set` (-1: any, searched in Kamailio's AVL order);
//!   mode bits 1 ignore the port, 2 ignore the protocol (the default
//!   without mode), 4 only active ones. As Kamailio: a destination written
//!   without a port matches any port, one without `transport` only a `uri`
//!   without one. `setid_pvname` gets the set (any-set searches only),
//!   `attrs_pvname` the destination's attributes.
//! - `ds_count(set, states, pv)` (OpenSIPS's; Kamailio has none): how many
//!   destinations of `set` are in one of `states` (`a`, `i`, `d`, `p`).
//! - `ds_list_exists(set)`, `ds_is_active(set[, uri])`, `ds_reload()`;
//!   `ds_dsg_fetch(set)` and `$dsg(count|active|inactive|pactive|pinactive)`
//!   (Kamailio 5.8's). `ds_select`/`ds_select_routes` are refused at load
//!   (they leave the selection in XAVPs only).
//! - `use_default`: a set's last destination is kept for when every other
//!   is down, and ends every failover list.
//! - Algorithms, Kamailio's: 0 Call-ID hash, 1 From URI, 2 To URI, 3 R-URI,
//!   4 round robin, 5 the credentials' user name (round robin without
//!   credentials), 6 random, 7 `hash_pvar` expanded, 8 priority, 9 weight,
//!   10 call load ([`load`]: `ds_load_update()`, `ds_load_unset()`, needs
//!   `ds_hash_size`), 11 relative weight among the active destinations,
//!   12 all at once (every other destination becomes a branch), 13 highest
//!   priority lowered by the probes' latency, round robin among equals.
//!   A constant algorithm that does not exist, 7 without `hash_pvar` or 10
//!   without `ds_hash_size` is refused at load.
//! - RPCs `dispatcher.list`, `dispatcher.reload`, `dispatcher.set_state`,
//!   `dispatcher.ping_active`.
//!
//! Probing (`ds_ping_interval` …, modes 0-3, UDP and TCP) is in [`probe`],
//! the probes' latency statistics in [`latency`].

pub mod latency;
pub mod list;
pub mod load;
pub mod probe;

use list::{Alg, DS_DISABLED, DS_INACTIVE, DS_PROBING, DS_TRYING, Dest, Lists, Start};
use load::CallLoad;
use serde_json::{Value as J, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec};
use siphon_script::sip::{BranchEntry, SipCtx};
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType, Value};
use siphon_sip::{Method, SipMsg};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// What a selection left for failover, kept in the request's context (which
/// follows the transaction into `failure_route`).
#[derive(Debug, Default)]
pub struct DsCtx {
    /// The destination in use.
    pub current: Option<Arc<Dest>>,
    /// The ones still to try, in order.
    pub remaining: Vec<Arc<Dest>>,
    /// The last of `remaining` is the set's default destination
    /// (`use_default`): tried whatever its state, as Kamailio.
    pub default_last: bool,
    /// Algorithm 10 counts this call in the set (Kamailio's `dstid` in the
    /// destination records): a failover moves the call's load.
    pub load_set: Option<i64>,
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
    hash_user_only: bool,
    failover: bool,
    force_dst: bool,
    ping_active: AtomicI64,
    probing: Arc<probe::Probing>,
    /// `hash_pvar` is set.
    hash_pvar: bool,
    /// The module's format strings as written, compiled by the program
    /// ([`Module::formats`]): `hash_pvar`, `setid_pvname`, `attrs_pvname`,
    /// those set, in this order.
    formats: Vec<String>,
    /// Where `setid_pvname`'s PV is in [`Inner::formats`].
    setid_pv: Option<usize>,
    /// Where `attrs_pvname`'s PV is in [`Inner::formats`].
    attrs_pv: Option<usize>,
    /// `use_default`: the last destination of a set is its default.
    use_default: bool,
    /// Calls in progress for algorithm 10 (`ds_hash_size` > 0).
    load: Option<Mutex<CallLoad>>,
    /// `ds_hash_check_interval` (s): how often expired calls are swept.
    load_sweep: u64,
    /// Where [`Inner::now`] counts from.
    epoch: Instant,
    /// Algorithm 6's generator state (splitmix64).
    rng: AtomicU64,
}

impl Inner {
    /// Seconds on a monotonic clock (the call-load table's time).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs() + 1
    }

    /// The call-load table, when `ds_hash_size` enables it.
    fn load_table(&self) -> Option<MutexGuard<'_, CallLoad>> {
        self.load
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Calls in progress on `d` of `set` (0 without a `duid` or a table).
    pub fn call_load(&self, set: i64, d: &Dest) -> u32 {
        match self.load_table() {
            Some(t) if !d.duid.is_empty() => t.load(set, &d.duid),
            _ => 0,
        }
    }

    /// A random number for algorithm 6 (splitmix64).
    fn random(&self) -> u32 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 33) as u32
    }

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
fn apply(s: &mut SipCtx, d: &Dest, domain: bool) -> bool {
    if domain {
        match with_hostport(&s.ruri(), d.uri.as_bytes()) {
            Some(u) => s.edits.ruri = Some(u),
            None => return false,
        }
    } else {
        s.du = Some(bytes::Bytes::copy_from_slice(d.uri.as_bytes()));
    }
    s.ruri_consumed = false;
    true
}

/// The `username` of digest credentials (`Digest username="alice", …`),
/// its user part (before an `@`), trimmed; `None` when `v` is no digest.
fn digest_username(v: &[u8]) -> Option<Vec<u8>> {
    let v = v.trim_ascii();
    let sp = v.iter().position(|c| c.is_ascii_whitespace())?;
    if !v[..sp].eq_ignore_ascii_case(b"digest") {
        return None;
    }
    let mut rest = &v[sp..];
    let mut user = Vec::new();
    while !rest.is_empty() {
        rest = rest.trim_ascii_start();
        let eq = rest.iter().position(|&c| c == b'=' || c == b',');
        let Some(eq) = eq.filter(|&i| rest[i] == b'=') else {
            // A parameter without a value: skip to the next.
            rest = &rest[eq.map_or(rest.len(), |i| i + 1)..];
            continue;
        };
        let name = rest[..eq].trim_ascii();
        rest = rest[eq + 1..].trim_ascii_start();
        let value: Vec<u8> = if rest.first() == Some(&b'"') {
            let mut out = Vec::new();
            let mut i = 1;
            while i < rest.len() && rest[i] != b'"' {
                if rest[i] == b'\\' && i + 1 < rest.len() {
                    i += 1;
                }
                out.push(rest[i]);
                i += 1;
            }
            rest = rest.get(i + 1..).unwrap_or_default();
            out
        } else {
            let end = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
            let out = rest[..end].trim_ascii().to_vec();
            rest = &rest[end..];
            out
        };
        rest = rest.trim_ascii_start();
        rest = rest.strip_prefix(b",").unwrap_or(rest);
        if name.eq_ignore_ascii_case(b"username") {
            user = value;
        }
    }
    let at = user.iter().position(|&c| c == b'@').unwrap_or(user.len());
    Some(user[..at].trim_ascii().to_vec())
}

/// Algorithm 5's key: the user of the first Proxy-Authorization that is
/// digest credentials, else of the first Authorization; `None` (round
/// robin) when there is none or its user name is empty.
fn auth_user(msg: &SipMsg) -> Option<Vec<u8>> {
    for name in [&b"Proxy-Authorization"[..], b"Authorization"] {
        let Some(h) = msg.headers_named(name).next() else {
            continue;
        };
        if let Some(user) = digest_username(&msg.header_value(h)) {
            return (!user.is_empty()).then_some(user);
        }
    }
    None
}

/// Algorithm 7's key: `hash_pvar` expanded and trimmed; `None` (an error
/// logged) when it is not set or comes out empty.
fn hash_pvar_key(m: &Inner, ex: &mut Exec<'_>) -> Option<Vec<u8>> {
    let prog = ex.prog;
    let Some(f) = prog
        .module_formats("dispatcher")
        .first()
        .filter(|_| m.hash_pvar)
    else {
        tracing::error!(target: "script", "ds_select: algorithm 7 needs modparam(\"dispatcher\", \"hash_pvar\", ...)");
        return None;
    };
    let key = ex.fmt(f).trim_ascii().to_vec();
    if key.is_empty() {
        tracing::error!(target: "script", "ds_select: hash_pvar is empty for this request");
        return None;
    }
    Some(key)
}

/// The branch algorithm 12 adds for `d`: the R-URI to `d` (`$du`), or for
/// `ds_select_domain` `d`'s URI with the R-URI's user (as Kamailio).
fn parallel_branch(ruri: &bytes::Bytes, d: &Dest, domain: bool) -> BranchEntry {
    let uri = if domain {
        let user = siphon_sip::parse_uri(ruri)
            .ok()
            .and_then(|u| u.user.map(<[u8]>::to_vec))
            .filter(|u| !u.is_empty());
        match (user, d.uri.split_once(':')) {
            (Some(user), Some((scheme, rest))) => {
                let mut v = format!("{scheme}:").into_bytes();
                v.extend_from_slice(&user);
                v.push(b'@');
                v.extend_from_slice(rest.as_bytes());
                bytes::Bytes::from(v)
            }
            _ => bytes::Bytes::copy_from_slice(d.uri.as_bytes()),
        }
    } else {
        ruri.clone()
    };
    BranchEntry {
        uri,
        du: (!domain).then(|| bytes::Bytes::copy_from_slice(d.uri.as_bytes())),
        q: None,
        flags: 0,
    }
}

fn select(m: &Inner, ex: &mut Exec<'_>, set_id: i64, alg: i64, limit: i64, domain: bool) -> i32 {
    let Some(alg) = Alg::from_num(alg) else {
        tracing::error!(target: "script", "ds_select: algorithm {alg} does not exist (0 to 13)");
        return -1;
    };
    if !domain && !m.force_dst && sip(ex).is_some_and(|s| s.du.is_some()) {
        tracing::error!(target: "script", "ds_select_dst: the destination is set already ($du) and force_dst is 0");
        return -1;
    }
    let lists = m.lists();
    let Some(set) = lists.set(set_id) else {
        tracing::error!(target: "script", "ds_select: destination set {set_id} not found");
        return -1;
    };
    let pv_key = match alg {
        Alg::HashPv => match hash_pvar_key(m, ex) {
            Some(k) => Some(k),
            None => return -1,
        },
        _ => None,
    };
    let user_only = m.hash_user_only;
    let Some(s) = sip(ex) else { return -1 };
    let call_id = s.msg.call_id().map(|c| c.trim_ascii().to_vec());
    // Algorithm 10 counts INVITEs only (other requests take the first).
    let counting = alg == Alg::CallLoad && s.msg.method() == Method::Invite;
    let mut table = None;
    if counting {
        if let Some(d) = set.dests.iter().find(|d| d.duid.is_empty()) {
            tracing::error!(target: "script", "ds_select: algorithm 10 counts calls per duid=, and {} of set {set_id} has none", d.uri);
            return -1;
        }
        table = m.load_table();
        if table.is_none() {
            tracing::error!(target: "script", "ds_select: algorithm 10 needs modparam(\"dispatcher\", \"ds_hash_size\", N) with N > 0");
            return -1;
        }
    }
    let loads = |d: &Dest| table.as_ref().map_or(0, |t| t.load(set_id, &d.duid));
    let start = match alg {
        Alg::CallId | Alg::From | Alg::To | Alg::Ruri => {
            let Some(hash) = hash_of(s, alg, user_only) else {
                tracing::error!(target: "script", "ds_select: cannot get the hash key of the request");
                return -1;
            };
            Start::Key(hash)
        }
        Alg::RoundRobin => Start::RoundRobin,
        Alg::AuthUser => auth_user(&s.msg).map_or(Start::RoundRobin, |u| {
            Start::Key(list::ds_hash(Some(&u), None))
        }),
        Alg::Random => Start::Key(m.random()),
        Alg::HashPv => Start::Key(list::ds_hash(pv_key.as_deref(), None)),
        Alg::Priority | Alg::Parallel => Start::Key(0),
        Alg::CallLoad if counting => Start::LeastLoaded(&loads),
        Alg::CallLoad => Start::Key(0),
        Alg::Weight => Start::Weight,
        Alg::RelWeight => Start::RelWeight,
        Alg::Latency => Start::Latency,
    };
    let limit = usize::try_from(limit).unwrap_or(0);
    let Some(sel) = list::select(set, start, limit, m.use_default) else {
        return -1;
    };
    let mut picked = sel.dests;
    let first = picked.remove(0);
    let mut load_set = None;
    if let (Some(t), Some(cid)) = (table.as_mut(), &call_id) {
        match t.add(cid, set_id, &first.duid, m.now()) {
            Ok(()) => load_set = Some(set_id),
            Err(load::AddError::Known) => {
                tracing::warn!(target: "script", "ds_select: call {} is counted already: this selection is not", String::from_utf8_lossy(cid));
            }
        }
    }
    drop(table);
    if !apply(s, &first, domain) {
        return -1;
    }
    if alg == Alg::Parallel {
        // Every destination after the chosen one, down or not (Kamailio
        // 5.6); no failover list: the branches are it.
        let ruri = s.ruri();
        for d in &set.dests[sel.index + 1..] {
            s.branches.push(parallel_branch(&ruri, d, domain));
        }
        ex.ctx.ext.remove::<DsCtx>();
        return 1;
    }
    if !m.failover {
        // Kamailio keeps no failover list without `flags` bit 2.
        picked.clear();
    }
    ex.ctx.ext.insert(DsCtx {
        current: Some(first),
        default_last: sel.default_last && !picked.is_empty(),
        remaining: picked,
        load_set,
    });
    1
}

fn next(m: &Inner, ex: &mut Exec<'_>, domain: bool) -> i32 {
    if !m.failover {
        tracing::warn!(target: "script", "ds_next_dst: failover support disabled (modparam(\"dispatcher\", \"flags\", 2) enables it)");
        return -1;
    }
    let call_id = sip(ex).and_then(|s| s.msg.call_id().map(|c| c.trim_ascii().to_vec()));
    let Some(st) = ex.ctx.ext.get_mut::<DsCtx>() else {
        return -1;
    };
    // Destinations marked down since the selection are passed over (not
    // the default: it is tried whatever its state).
    while !st.remaining.is_empty() {
        let d = st.remaining.remove(0);
        let default = st.default_last && st.remaining.is_empty();
        if d.skip() && !default {
            continue;
        }
        if let Some(set) = st.load_set {
            // The call's load moves; a destination no longer in the set
            // (a reload since) is passed over, as Kamailio.
            let lists = m.lists();
            let known = lists
                .set(set)
                .is_some_and(|s| s.dests.iter().any(|x| x.duid.eq_ignore_ascii_case(&d.duid)));
            if !known {
                tracing::error!(target: "script", "ds_next_dst: {} (duid {}) is no longer in set {set}: skipped", d.uri, d.duid);
                continue;
            }
        }
        st.current = Some(d.clone());
        let load_set = st.load_set;
        let Some(s) = sip(ex) else { return -1 };
        if !apply(s, &d, domain) {
            return -1;
        }
        if load_set.is_some() {
            let moved = match (m.load_table(), &call_id) {
                (Some(mut t), Some(cid)) => t.replace(cid, &d.duid),
                _ => false,
            };
            if !moved {
                tracing::error!(target: "script", "ds_next_dst: the call's load is not counted (ended meanwhile?)");
                return -1;
            }
        }
        return 1;
    }
    -1
}

/// `ds_load_update()`: a BYE or CANCEL ends the call's load, a 2xx to the
/// INVITE confirms it (it then lives `ds_hash_expire`).
fn load_update(m: &Inner, ex: &mut Exec<'_>) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    let (Some(cid), Some(cseq)) = (s.msg.call_id(), s.msg.cseq()) else {
        tracing::error!(target: "script", "ds_load_update: no Call-ID or CSeq");
        return -1;
    };
    let cid = cid.trim_ascii();
    let Some(mut t) = m.load_table() else {
        return 1;
    };
    if s.msg.is_request() {
        if matches!(s.msg.method(), Method::Bye | Method::Cancel) {
            t.remove(cid);
        }
    } else if cseq.method == Method::Invite && s.msg.status().is_some_and(|c| c / 100 == 2) {
        t.confirm(cid);
    }
    1
}

/// `ds_load_unset()`: ends the call's load (a failed call). For an INVITE
/// only when algorithm 10 counted it; -1 when the call is not counted.
fn load_unset(m: &Inner, ex: &mut Exec<'_>) -> i32 {
    let counted = ex
        .ctx
        .ext
        .get::<DsCtx>()
        .is_some_and(|c| c.load_set.is_some());
    let Some(s) = sip(ex) else { return -1 };
    if s.msg.is_request() && s.msg.method() == Method::Invite && !counted {
        return 1;
    }
    let Some(cid) = s.msg.call_id() else {
        return -1;
    };
    if m.load_table()
        .is_some_and(|mut t| t.remove(cid.trim_ascii()))
    {
        1
    } else {
        tracing::error!(target: "script", "ds_load_unset: no load for call {}", String::from_utf8_lossy(&cid));
        -1
    }
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

/// What `ds_is_from_list` looks for: an address, a port (0: none, any
/// port matches) and a protocol (`None`: none written, as Kamailio's
/// PROTO_NONE: it equals only a destination without `transport`).
struct Wanted {
    ip: std::net::IpAddr,
    port: u16,
    proto: Option<String>,
}

/// The destination of `set` that `w` matches under `mode` (bits 1: any
/// port, 2: any protocol, 4: active ones only), as Kamailio compares: a
/// destination written without a port matches every port, one without
/// `transport` only a `w` without one.
fn matching<'a>(set: &'a list::Set, w: &Wanted, mode: i64) -> Option<&'a Arc<Dest>> {
    set.dests.iter().find(|d| {
        d.addrs.contains(&w.ip)
            && (mode & 1 != 0 || d.port.unwrap_or(0) == 0 || d.port == Some(w.port))
            && (mode & 2 != 0 || d.proto == w.proto)
            && (mode & 4 == 0 || !d.skip())
    })
}

/// The PV a `*_pvname` parameter names (`index` in the module's formats).
fn named_pv(ex: &Exec<'_>, index: Option<usize>) -> Option<siphon_script::pv::Pv> {
    ex.prog
        .module_formats("dispatcher")
        .get(index?)
        .and_then(|f| f.as_pv())
        .cloned()
}

/// `ds_is_from_list`: 1 when the source (or `uri`) is a destination of
/// `set` (-1: any set, searched in Kamailio's order); then `setid_pvname`
/// gets the set (only when searching every set, as Kamailio) and
/// `attrs_pvname` the destination's attributes (when it has some). -2 or
/// -3 when one of them cannot be written.
fn is_from_list(
    m: &Inner,
    ex: &mut Exec<'_>,
    set: i64,
    mode: i64,
    uri: Option<bytes::Bytes>,
) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    let w = match uri {
        Some(u) => {
            let Ok(p) = siphon_sip::parse_uri(&u) else {
                tracing::error!(target: "script", "ds_is_from_list: bad uri `{}`", String::from_utf8_lossy(&u));
                return -1;
            };
            let host = String::from_utf8_lossy(p.host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let Ok(ip) = host.parse::<std::net::IpAddr>() else {
                tracing::error!(target: "script", "ds_is_from_list: `{host}` is not an IP address (siphon resolves no names here)");
                return -1;
            };
            let proto = p
                .param(b"transport")
                .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase());
            Wanted {
                ip,
                port: p.port.unwrap_or(0),
                proto,
            }
        }
        None => Wanted {
            ip: s.peer.src.ip(),
            port: s.peer.src.port(),
            proto: Some(s.peer.transport.name().to_ascii_lowercase()),
        },
    };
    let lists = m.lists();
    let found = if set < 0 {
        lists
            .searched()
            .find_map(|st| matching(st, &w, mode).map(|d| (Some(st.id), d)))
    } else {
        lists
            .set(set)
            .and_then(|st| matching(st, &w, mode).map(|d| (None, d)))
    };
    let Some((id, d)) = found else {
        return -1;
    };
    let attrs = (!d.attrs.is_empty()).then(|| d.attrs.clone());
    drop(lists);
    if let (Some(id), Some(pv)) = (id, named_pv(ex, m.setid_pv))
        && let Err(e) = ex.set_pv(&pv, Value::Int(id), false)
    {
        tracing::error!(target: "script", "ds_is_from_list: setid_pvname {}: {e}", pv.text());
        return -2;
    }
    if let (Some(attrs), Some(pv)) = (attrs, named_pv(ex, m.attrs_pv))
        && let Err(e) = ex.set_pv(&pv, Value::from(attrs), false)
    {
        tracing::error!(target: "script", "ds_is_from_list: attrs_pvname {}: {e}", pv.text());
        return -3;
    }
    1
}

/// `setid_pvname`/`attrs_pvname` name one pseudo-variable to write.
fn one_pv(v: &ParamValue) -> Result<(), String> {
    let ParamValue::Str(s) = v else {
        return Err("expected a pseudo-variable name ($avp(x), $var(x))".into());
    };
    let t = s.trim();
    let simple = t.strip_prefix('$').is_some_and(|r| {
        let name_end = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        name_end > 0
            && (name_end == r.len() || (r[name_end..].starts_with('(') && r.ends_with(')')))
    });
    if simple || (t.starts_with("$(") && t.ends_with(')')) {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not one pseudo-variable: give the PV to write, e.g. \"$avp(dsid)\""
        ))
    }
}

/// The set `$dsg(...)` reads (`ds_dsg_fetch`; set 1 until then).
#[derive(Debug, Clone, Copy)]
struct DsgSet(i64);

/// `$dsg(count|active|inactive|pactive|pinactive)` (Kamailio 5.8's):
/// the destinations of the set `ds_dsg_fetch` chose, and how many are
/// active or not (in percent for the `p` forms); `$null` for a set that
/// does not exist.
struct DsgPv {
    m: Arc<Inner>,
    key: &'static str,
}

impl PvAccess for DsgPv {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        let id = ex.ctx.ext.get::<DsgSet>().map_or(1, |s| s.0);
        let lists = self.m.lists();
        let Some(set) = lists.set(id) else {
            return Value::Null;
        };
        let count = set.dests.len() as i64;
        let inactive = set.dests.iter().filter(|d| d.skip()).count() as i64;
        let active = count - inactive;
        let percent = |n: i64| if count == 0 { 0 } else { n * 100 / count };
        Value::Int(match self.key {
            "count" => count,
            "active" => active,
            "inactive" => inactive,
            "pactive" => percent(active),
            _ => percent(inactive),
        })
    }
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

/// A constant algorithm must exist and have what it needs: `hash_pvar`
/// for 7; `ds_hash_size` for 10, and a `duid` on every destination of a
/// constant set.
fn check_alg(m: &Inner, a: &Args) -> Result<(), String> {
    let alg = match a.const_value(1).map(|v| v.to_int()) {
        None => return Ok(()),
        Some(None) => return Err("the algorithm must be a number".into()),
        Some(Some(n)) => Alg::from_num(n).ok_or_else(|| {
            format!("dispatcher algorithm {n} does not exist (Kamailio's are 0 to 13)")
        })?,
    };
    match alg {
        Alg::HashPv if !m.hash_pvar => Err(
            "algorithm 7 hashes over modparam(\"dispatcher\", \"hash_pvar\", \"...\"), which is not set"
                .into(),
        ),
        Alg::CallLoad if m.load.is_none() => Err(
            "algorithm 10 (call load) needs modparam(\"dispatcher\", \"ds_hash_size\", N) with N > 0"
                .into(),
        ),
        Alg::CallLoad => {
            let set = a.const_value(0).and_then(Value::to_int);
            let lists = m.lists();
            match set.and_then(|id| lists.set(id)) {
                Some(s) => match s.dests.iter().find(|d| d.duid.is_empty()) {
                    Some(d) => Err(format!(
                        "algorithm 10 counts calls per duid=, and {} of set {} has none",
                        d.uri, s.id
                    )),
                    None => Ok(()),
                },
                None => Ok(()),
            }
        }
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
            let chk = me();
            v.push(
                FunctionSpec::checked(
                    name,
                    &[Any, Any, Any],
                    move |a| check_alg(&chk, a),
                    move |ex, a| {
                        let (Some(set), Some(alg)) = (a.int(0, ex), a.int(1, ex)) else {
                            return (-1).into();
                        };
                        let limit = if a.len() > 2 {
                            a.int(2, ex).unwrap_or(0)
                        } else {
                            0
                        };
                        select(&m, ex, set, alg, limit, domain).into()
                    },
                )
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
                        DS_INACTIVE
                            | if m.probing.mode == probe::Mode::All {
                                DS_PROBING
                            } else {
                                0
                            }
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
        v.push(
            FunctionSpec::new("ds_load_update", &[], move |ex, _| {
                load_update(&m, ex).into()
            })
            .routes(RouteType::ANY),
        );
        let m = me();
        v.push(
            FunctionSpec::new("ds_load_unset", &[], move |ex, _| load_unset(&m, ex).into())
                .routes(RouteType::ANY),
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
        let m = me();
        v.push(FunctionSpec::new("ds_list_exists", &[Any], move |ex, a| {
            let Some(set) = a.int(0, ex) else {
                tracing::error!(target: "script", "ds_list_exists: the set id is not a number");
                return (-2).into();
            };
            if m.lists().set(set).is_some() { 1 } else { -1 }.into()
        }));
        let m = me();
        v.push(
            FunctionSpec::new("ds_is_active", &[Any, Str], move |ex, a| {
                let Some(set) = a.int(0, ex) else {
                    tracing::error!(target: "script", "ds_is_active: the set id is not a number");
                    return (-1).into();
                };
                let uri = (a.len() > 1)
                    .then(|| a.text(1, ex))
                    .filter(|u| !u.is_empty());
                let lists = m.lists();
                let active = lists.set(set).is_some_and(|s| {
                    s.dests
                        .iter()
                        .any(|d| !d.skip() && uri.as_ref().is_none_or(|u| *u == d.uri))
                });
                if active { 1 } else { -1 }.into()
            })
            .min_args(1),
        );
        let m = me();
        v.push(FunctionSpec::new("ds_reload", &[], move |_, _| {
            match m.reload() {
                Ok(()) => 1,
                Err(e) => {
                    tracing::error!(target: "script", "ds_reload: {e}");
                    -1
                }
            }
            .into()
        }));
        for name in ["ds_select", "ds_select_routes"] {
            v.push(
                FunctionSpec::with_bind(
                    name,
                    &[Any, Any, Any],
                    Arc::new(move |_| {
                        Err(format!(
                            "{name} is not available in siphon: it leaves the selection in XAVPs only, and siphon keeps it with the transaction; use ds_select_dst or ds_select_domain (ds_next_dst/ds_next_domain fail over)"
                        ))
                    }),
                )
                .min_args(2),
            );
        }
        v.push(FunctionSpec::new("ds_dsg_fetch", &[Any], |ex, a| {
            let Some(set) = a.int(0, ex) else {
                tracing::error!(target: "script", "ds_dsg_fetch: the set id is not a number");
                return (-1).into();
            };
            ex.ctx.ext.insert(DsgSet(set));
            1.into()
        }));
        v
    }

    fn formats(&self) -> Vec<String> {
        self.formats.clone()
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let formats = cx.program.module_formats("dispatcher");
        for (name, index) in [
            ("setid_pvname", self.setid_pv),
            ("attrs_pvname", self.attrs_pv),
        ] {
            let Some(i) = index else { continue };
            if !formats
                .get(i)
                .and_then(|f| f.as_pv())
                .is_some_and(|p| p.writable())
            {
                return Err(format!(
                    "{name} `{}` is not a pseudo-variable that can be written",
                    self.formats[i]
                ));
            }
        }
        let stop = cx.host.shutdown();
        if self.load.is_some() {
            // Calls whose BYE never came end after ds_hash_expire.
            let m = self.0.clone();
            let stop = stop.clone();
            let every = std::time::Duration::from_secs(self.load_sweep);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let now = m.now();
                    if let Some(mut t) = m.load_table() {
                        let n = t.sweep(now);
                        if n > 0 {
                            tracing::info!(target: "dispatcher", "{n} call(s) expired from the call load");
                        }
                    }
                }
            });
        }
        let p = self.probing.clone();
        if p.interval == 0 {
            return Ok(());
        }
        let m = self.0.clone();
        let host = cx.host.clone();
        // The routes the configuration has, looked up once.
        let routes: Vec<_> = self
            .event_routes()
            .into_iter()
            .filter_map(|n| Some((n, host.find_route(&format!("event_route[{n}]"))?)))
            .collect();
        let event: probe::OnChange = Arc::new(move |name, d, code, reason| {
            let Some(&(_, route)) = routes.iter().find(|(n, _)| *n == name) else {
                return;
            };
            let ev = DsEvent {
                code,
                reason: reason.to_string(),
                flags: d.flags.load(Ordering::Relaxed),
                uri: d.uri.clone(),
            };
            // As Kamailio: an async call in it cannot suspend (no transaction).
            let run = host.run_event_route(
                route.into(),
                EventSuspend::Refuse,
                Box::new(move |ctx| {
                    ctx.ext.insert(ev);
                    Ok(())
                }),
            );
            if let Err(e) = run {
                tracing::error!(target: "dispatcher", "event_route[{name}] does not run: {e}");
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
                probe::round(p.clone(), m.lists(), n, event.clone()).await;
            }
        });
        Ok(())
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        let m = self.0.clone();
        let dsg = PvClassSpec::new(
            "dsg",
            PvInner::Required,
            Arc::new(move |name| {
                let key = match name.unwrap_or_default() {
                    "count" => "count",
                    "active" => "active",
                    "inactive" => "inactive",
                    "pactive" => "pactive",
                    "pinactive" => "pinactive",
                    other => {
                        return Err(format!(
                            "$dsg({other}): count, active, inactive, pactive or pinactive"
                        ));
                    }
                };
                Ok(Arc::new(DsgPv { m: m.clone(), key }) as Arc<dyn PvAccess>)
            }),
        );
        vec![
            dsg,
            PvClassSpec::new(
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
            ),
        ]
    }

    fn event_routes(&self) -> Vec<&'static str> {
        vec!["dispatcher:dst-down", "dispatcher:dst-up"]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let m = self.0.clone();
        let list = {
            let m = m.clone();
            RpcSpec::new("dispatcher.list", "List the destination sets", move |_| {
                Ok(rpc_list(&m, &m.lists()))
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
/// file first), destinations by priority; `LATENCY` with
/// `ds_ping_latency_stats`, `RUNTIME` (the calls in progress) with
/// `ds_hash_size`.
fn rpc_list(m: &Inner, l: &Lists) -> J {
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
                            "RWEIGHT": d.rweight(),
                            "SOCKET": null_if_empty(&d.socket),
                            "SOCKNAME": J::Null,
                            "OBPROXY": J::Null,
                        });
                    }
                    if m.probing.latency_stats {
                        let l = d.latency();
                        dest["LATENCY"] = json!({
                            "AVG": l.average,
                            "STD": l.stdev,
                            "EST": l.estimate,
                            "MAX": l.max,
                            "TIMEOUT": l.timeout,
                        });
                    }
                    if m.load.is_some() {
                        dest["RUNTIME"] = json!({"DLGLOAD": m.call_load(s.id, d)});
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
            ParamSpec::int("ds_ping_latency_stats"),
            ParamSpec::int("ds_latency_estimator_alpha"),
            ParamSpec::str("hash_pvar"),
            ParamSpec::str("setid_pvname").check(one_pv),
            ParamSpec::str("attrs_pvname").check(one_pv),
            ParamSpec::int("use_default"),
            ParamSpec::int("ds_hash_size"),
            ParamSpec::int("ds_hash_expire"),
            ParamSpec::int("ds_hash_initexpire"),
            ParamSpec::int("ds_hash_check_interval"),
            // Failover state is kept with the transaction, not in AVPs.
            ParamSpec::str("dst_avp").no_effect(),
            ParamSpec::str("grp_avp").no_effect(),
            ParamSpec::str("cnt_avp").no_effect(),
            ParamSpec::str("dstid_avp").no_effect(),
            ParamSpec::str("attrs_avp").no_effect(),
            ParamSpec::str("sock_avp").no_effect(),
            ParamSpec::str("xavp_dst").no_effect(),
            ParamSpec::str("xavp_ctx").no_effect(),
        ],
        instantiate: Arc::new(|cfg| {
            let file = cfg
                .str("list_file")
                .unwrap_or_else(|| "/etc/kamailio/dispatcher.list".into());
            let lists = load(&file)?;
            let flags = cfg.int("flags").unwrap_or(0);
            let probing_mode = cfg.int("ds_probing_mode").unwrap_or(0);
            let mode = probe::Mode::from_num(probing_mode).ok_or_else(|| {
                format!(
                    "ds_probing_mode {probing_mode} does not exist (0: flagged probing, once; 1: all; 2: inactive and flagged probing; 3: flagged probing, continually)"
                )
            })?;
            let number = |name: &str, default: i64, min: i64| -> Result<u64, String> {
                let n = cfg.int(name).unwrap_or(default);
                u64::try_from(n)
                    .ok()
                    .filter(|v| n >= min && *v <= u64::from(u32::MAX))
                    .ok_or_else(|| format!("{name} must be a number from {min}, not {n}"))
            };
            let alpha = number("ds_latency_estimator_alpha", 900, 1)?;
            if alpha >= 1000 {
                return Err(format!(
                    "ds_latency_estimator_alpha must be 1..999 (thousandths), not {alpha}"
                ));
            }
            let mut probing = probe::Probing {
                interval: number("ds_ping_interval", 0, 0)?,
                mode,
                threshold: number("ds_probing_threshold", 1, 1)? as u32,
                inactive_threshold: number("ds_inactive_threshold", 1, 1)? as u32,
                method: cfg
                    .str("ds_ping_method")
                    .unwrap_or_else(|| "OPTIONS".into()),
                from: cfg
                    .str("ds_ping_from")
                    .unwrap_or_else(|| "sip:dispatcher@localhost".into()),
                classes: Vec::new(),
                codes: Vec::new(),
                latency_stats: cfg.int("ds_ping_latency_stats").unwrap_or(0) != 0,
                alpha: alpha as f64 / 1000.0,
                timeout: std::time::Duration::from_secs(4),
            };
            if let Some(c) = cfg.str("ds_ping_reply_codes") {
                probing.reply_codes(&c)?;
            }
            if probing.interval > 0 {
                for d in lists.sets.iter().flat_map(|s| s.dests.iter()) {
                    if !probe::probeable(d) {
                        tracing::warn!(target: "dispatcher", "{}: TLS destinations are not probed (the module has no TLS client); its state changes only by ds_mark_dst and RPC", d.uri);
                    }
                }
            }
            let hash_size = number("ds_hash_size", 0, 0)?;
            let load = (hash_size > 0).then(|| {
                Ok::<_, String>(Mutex::new(CallLoad::new(
                    number("ds_hash_expire", 7200, 1)?,
                    number("ds_hash_initexpire", 7200, 1)?,
                )))
            });
            let load = load.transpose()?;
            let mut formats = Vec::new();
            let mut format = |name: &str| {
                let v = cfg.str(name).filter(|s| !s.is_empty())?;
                formats.push(v);
                Some(formats.len() - 1)
            };
            let hash_pvar = format("hash_pvar").is_some();
            let setid_pv = format("setid_pvname");
            let attrs_pv = format("attrs_pvname");
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(32);
            Ok(Arc::new(Dispatcher(Arc::new(Inner {
                file,
                lists: RwLock::new(Arc::new(lists)),
                hash_user_only: flags & 1 != 0,
                failover: flags & 2 != 0,
                force_dst: cfg.int("force_dst").unwrap_or(1) != 0,
                ping_active: AtomicI64::new(1),
                probing: Arc::new(probing),
                hash_pvar,
                formats,
                setid_pv,
                attrs_pv,
                use_default: cfg.int("use_default").unwrap_or(0) != 0,
                load,
                load_sweep: number("ds_hash_check_interval", 30, 1)?,
                epoch: Instant::now(),
                rng: AtomicU64::new(seed),
            }))) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
