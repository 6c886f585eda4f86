//! usrloc, in memory: the location tables behind `loadmodule "usrloc.so"`,
//! their expiry timer and `event_route[usrloc:contact-expired]`, the `ul.*`
//! RPC commands and the `usrloc:` statistics. The registrar functions reach
//! the tables through [`UsrlocModule`] (a module of this same crate).

use crate::store::{ALL_METHODS, Contact, Matching, Q_UNSPECIFIED, Table};
use serde_json::{Value as Json, json};
use siphon_script::api::{EventSuspend, Location, LocationContact, Module, ModuleConfig, StartCx};
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec, StatSource};
use siphon_script::{ModuleDef, ParamSpec};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The event route run for each contact the timer removes.
pub const EXPIRED_ROUTE: &str = "usrloc:contact-expired";

/// usrloc's parameters.
#[derive(Debug, Clone)]
pub struct UsrlocConfig {
    /// `timer_interval` (s): how often expired contacts are removed.
    pub timer_interval: u64,
    /// `nat_bflag`: the branch flag marking a contact behind NAT (kept in its CFlags).
    pub nat_bflag: Option<u32>,
    /// `desc_time_order`: newest contact first, whatever its q.
    pub desc_time_order: bool,
    /// `matching_mode`.
    pub matching: Matching,
    /// `use_domain`: the address of record is `user@host`, not `user`.
    pub use_domain: bool,
    /// `cseq_delay` (s): an equal CSeq within it is a retransmission.
    pub cseq_delay: u64,
}

/// The shared state of usrloc: its tables.
#[derive(Debug)]
pub struct Usrloc {
    /// The parameters.
    pub cfg: UsrlocConfig,
    tables: Mutex<BTreeMap<String, Table>>,
    ruid_seq: AtomicU64,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Usrloc {
    /// Empty tables.
    pub fn new(cfg: UsrlocConfig) -> Self {
        Usrloc {
            cfg,
            tables: Mutex::new(BTreeMap::new()),
            ruid_seq: AtomicU64::new(0),
        }
    }

    /// Runs `f` on table `name`, created when missing (as Kamailio's
    /// `register_udomain` does for each table a script names).
    pub fn with<R>(&self, name: &str, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let table = t
            .entry(name.to_string())
            .or_insert_with(|| Table::new(name));
        f(table)
    }

    /// Runs `f` on table `name` if it exists.
    fn with_existing<R>(&self, name: &str, f: impl FnOnce(&mut Table) -> R) -> Option<R> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.get_mut(name).map(f)
    }

    /// A new unique contact id (`uloc-<start>-<pid>-<n>`, Kamailio's shape).
    pub fn new_ruid(&self) -> String {
        let n = self.ruid_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("uloc-{:x}-{:x}-{n}", start_time(), std::process::id())
    }

    /// Removes every expired contact of every table.
    pub fn expire_all(&self, now: u64) -> Vec<(String, Contact)> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.values_mut().flat_map(|t| t.expire(now)).collect()
    }

    /// Every contact valid at `now` whose branch flags include all of `flags`.
    pub fn contacts_flagged(&self, flags: u64, now: u64) -> Vec<LocationContact> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.values()
            .flat_map(|table| table.records())
            .flat_map(|r| r.valid(now).map(move |c| (r, c)))
            .filter(|(_, c)| c.cflags & flags == flags)
            .map(|(r, c)| LocationContact {
                aor: r.aor.clone(),
                uri: c.uri.clone(),
                received: c.received.clone(),
                path: c.path.clone(),
                socket: c.socket.clone(),
                cflags: c.cflags,
                ruid: c.ruid.clone(),
            })
            .collect()
    }

    fn table_names(&self) -> Vec<String> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.keys().cloned().collect()
    }
}

fn start_time() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(now)
}

/// The loaded usrloc module.
pub struct UsrlocModule {
    /// Its tables, shared with the registrar functions and the timer.
    pub ul: Arc<Usrloc>,
}

/// The contact the timer removed, for `$ulc(exp=>…)` in `event_route[usrloc:contact-expired]`.
#[derive(Debug, Clone)]
pub struct ExpiredContact {
    /// Its address of record.
    pub aor: String,
    /// The contact.
    pub contact: Contact,
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("db_mode"),
    ParamSpec::int("timer_interval"),
    ParamSpec::int("nat_bflag"),
    ParamSpec::int("desc_time_order"),
    ParamSpec::int("matching_mode"),
    ParamSpec::int("use_domain"),
    ParamSpec::int("cseq_delay"),
    ParamSpec::str("db_url").no_effect(),
    ParamSpec::int("timer_procs").no_effect(),
    ParamSpec::int("hash_size").no_effect(),
];

/// `loadmodule "usrloc.so"`.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "usrloc",
        params: PARAMS.to_vec(),
        instantiate: Arc::new(|cfg: &ModuleConfig| {
            let ul = Usrloc::new(config(cfg)?);
            Ok(Arc::new(UsrlocModule { ul: Arc::new(ul) }) as Arc<dyn Module>)
        }),
    }
}

fn config(cfg: &ModuleConfig) -> Result<UsrlocConfig, String> {
    match cfg.int("db_mode").unwrap_or(0) {
        0 => {}
        m => {
            return Err(format!(
                "usrloc db_mode {m} is not available: siphon keeps locations in memory only \
                 (db_mode 0; they do not survive a restart)"
            ));
        }
    }
    let timer_interval = cfg.int("timer_interval").unwrap_or(60);
    if timer_interval < 1 {
        return Err(format!(
            "timer_interval must be at least 1 s, not {timer_interval}"
        ));
    }
    let nat_bflag = match cfg.int("nat_bflag") {
        None | Some(-1) => None,
        Some(f) if (0..64).contains(&f) => Some(f as u32),
        Some(f) => return Err(format!("nat_bflag must be a branch flag 0..63, not {f}")),
    };
    let mode = cfg.int("matching_mode").unwrap_or(0);
    let matching = Matching::from_mode(mode)
        .ok_or_else(|| format!("matching_mode must be 0, 1, 2 or 3, not {mode}"))?;
    let cseq_delay = cfg.int("cseq_delay").unwrap_or(20);
    if cseq_delay < 0 {
        return Err(format!("cseq_delay must not be negative, not {cseq_delay}"));
    }
    Ok(UsrlocConfig {
        timer_interval: timer_interval as u64,
        nat_bflag,
        desc_time_order: cfg.int("desc_time_order").unwrap_or(0) != 0,
        matching,
        use_domain: cfg.int("use_domain").unwrap_or(0) != 0,
        cseq_delay: cseq_delay as u64,
    })
}

impl Location for Usrloc {
    fn contacts(&self, flags: u64) -> Vec<LocationContact> {
        self.contacts_flagged(flags, now())
    }
    fn nat_bflag(&self) -> Option<u32> {
        self.cfg.nat_bflag
    }
}

impl Module for UsrlocModule {
    fn event_routes(&self) -> Vec<&'static str> {
        vec![EXPIRED_ROUTE]
    }
    fn location(&self) -> Option<Arc<dyn Location>> {
        Some(self.ul.clone())
    }
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        rpc_commands(&self.ul)
    }
    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.ul.clone())))
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let ul = self.ul.clone();
        let host = cx.host.clone();
        let shutdown = cx.host.shutdown();
        let every = Duration::from_secs(ul.cfg.timer_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let gone = ul.expire_all(now());
                let route = host.find_route(&format!("event_route[{EXPIRED_ROUTE}]"));
                for (aor, contact) in gone {
                    tracing::debug!("usrloc: contact {} of {aor} expired", contact.uri);
                    if let Some(route) = route {
                        // As Kamailio: an async call in it cannot suspend (no transaction).
                        let run = host.run_event_route(
                            route.into(),
                            EventSuspend::Refuse,
                            Box::new(move |ctx| {
                                ctx.ext.insert(ExpiredContact { aor, contact });
                                Ok(())
                            }),
                        );
                        if let Err(e) = run {
                            tracing::error!("event_route[{EXPIRED_ROUTE}] does not run: {e}");
                        }
                    }
                }
            }
        });
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

// ---------- statistics ----------

struct Stats(Arc<Usrloc>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let now = now();
        let t = self.0.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut users = std::collections::HashSet::new();
        let mut out = Vec::new();
        for table in t.values() {
            for r in table.records().filter(|r| r.valid(now).next().is_some()) {
                users.insert(r.aor.to_ascii_lowercase());
            }
            let n = &table.name;
            out.push((format!("usrloc:{n}-users"), table.users(now) as i64));
            out.push((format!("usrloc:{n}-contacts"), table.contacts(now) as i64));
            out.push((format!("usrloc:{n}-expires"), table.expired_total as i64));
        }
        out.insert(0, ("usrloc:registered_users".into(), users.len() as i64));
        out
    }
    fn reset(&self, name: &str) {
        let mut t = self.0.tables.lock().unwrap_or_else(|e| e.into_inner());
        for table in t.values_mut() {
            if name == format!("usrloc:{}-expires", table.name) {
                table.expired_total = 0;
            }
        }
    }
}

// ---------- RPC commands ----------

/// One contact as Kamailio's `ul.dump` and `ul.lookup` show it.
pub fn contact_json(c: &Contact, now: u64) -> Json {
    let or_unset = |v: &Option<String>| json!(v.clone().unwrap_or_else(|| "[not set]".into()));
    json!({"Contact": {
        "Address": c.uri,
        "Expires": if c.expires == u64::MAX { json!("permanent") } else { json!(c.remaining(now)) },
        // Kamailio: a number with the q given, -1 without
        "Q": if c.q == Q_UNSPECIFIED { json!(-1) } else { json!(f64::from(c.q) / 1000.0) },
        "Call-ID": c.callid,
        "CSeq": c.cseq,
        "User-Agent": c.user_agent,
        "Received": or_unset(&c.received),
        "Path": or_unset(&c.path),
        "State": "CS_NEW",
        "Flags": c.flags,
        "CFlags": c.cflags,
        "Socket": if c.socket.is_empty() { "[not set]" } else { c.socket.as_str() },
        "Methods": c.methods,
        "Ruid": c.ruid,
        "Instance": or_unset(&c.instance),
        "Reg-Id": c.reg_id,
        "Server-Id": 0,
        "Tcpconn-Id": -1,
        "Keepalive": 0,
        "Last-Keepalive": c.last_modified,
        "KA-Roundtrip": 0,
        "Last-Modified": c.last_modified,
    }})
}

/// Kamailio's `core_hash` of an address of record (what `ul.dump` shows as HashID).
fn hash_id(aor: &str) -> u32 {
    let mut h: u32 = 0;
    for chunk in aor.as_bytes().chunks(4) {
        let mut v: u32 = 0;
        for &b in chunk {
            v = (v << 8) + u32::from(b);
        }
        h = h.wrapping_add(v ^ (v >> 3));
    }
    h.wrapping_add(h >> 11)
        .wrapping_add(h >> 13)
        .wrapping_add(h >> 23)
}

fn fault(code: i64, message: &str) -> RpcFailure {
    RpcFailure {
        code,
        message: message.into(),
    }
}

fn table_param(c: &RpcCall, ul: &Usrloc) -> Result<String, RpcFailure> {
    let t = c
        .str(0)
        .ok_or_else(|| RpcFailure::params("expected the table name"))?;
    if ul.with_existing(&t, |_| ()).is_none() {
        return Err(fault(500, "Domain table not found"));
    }
    Ok(t)
}

fn aor_param(c: &RpcCall, i: usize, ul: &Usrloc) -> Result<String, RpcFailure> {
    let a = c
        .str(i)
        .ok_or_else(|| RpcFailure::params("expected the address of record"))?;
    crate::aor_of_text(&a, ul.cfg.use_domain).ok_or_else(|| fault(500, "bad AoR"))
}

fn rpc_commands(ul: &Arc<Usrloc>) -> Vec<RpcSpec> {
    let u = ul.clone();
    let dump = RpcSpec::new(
        "ul.dump",
        "Dumps the location tables: ul.dump [brief].",
        move |c| {
            let brief = c.str(0).is_some_and(|s| s == "brief");
            let now = now();
            let mut domains = Vec::new();
            for name in u.table_names() {
                let d = u.with(&name, |t| {
                let mut recs: Vec<_> = t.records().collect();
                recs.sort_by(|a, b| a.aor.cmp(&b.aor));
                let aors: Vec<Json> = recs
                    .iter()
                    .map(|r| {
                        if brief {
                            return json!({"AoR": r.aor});
                        }
                        let contacts: Vec<Json> = r
                            .valid(now)
                            .map(|c| contact_json(c, now))
                            .collect();
                        json!({"Info": {"AoR": r.aor, "HashID": hash_id(&r.aor), "Contacts": contacts}})
                    })
                    .collect();
                let n = aors.len();
                json!({"Domain": {
                    "Domain": name,
                    "Size": 1024,
                    "AoRs": aors,
                    "Stats": {"Records": n, "Max-Slots": n.min(1)},
                }})
            });
                domains.push(d);
            }
            Ok(json!({"Domains": domains}))
        },
    );
    let u = ul.clone();
    let lookup = RpcSpec::new(
        "ul.lookup",
        "Contacts of an AoR: ul.lookup table AOR.",
        move |c| {
            let t = table_param(c, &u)?;
            let aor = aor_param(c, 1, &u)?;
            let now = now();
            u.with(&t, |t| {
                let r = t.get(&aor).filter(|r| r.valid(now).next().is_some());
                let r = r.ok_or_else(|| fault(500, "AOR not found in location table"))?;
                let contacts: Vec<Json> = r.valid(now).map(|c| contact_json(c, now)).collect();
                Ok(json!({"AoR": r.aor, "Contacts": contacts}))
            })
        },
    );
    let u = ul.clone();
    let rm = RpcSpec::new("ul.rm", "Removes an AoR: ul.rm table AOR.", move |c| {
        let t = table_param(c, &u)?;
        let aor = aor_param(c, 1, &u)?;
        if u.with(&t, |t| t.remove(&aor)) {
            tracing::info!("ul.rm: {aor} removed from {t}");
            Ok(json!({}))
        } else {
            Err(fault(500, "AOR not found in location table"))
        }
    })
    .changes_state();
    let u = ul.clone();
    let rm_contact = RpcSpec::new(
        "ul.rm_contact",
        "Removes a contact of an AoR: ul.rm_contact table AOR contact.",
        move |c| {
            let t = table_param(c, &u)?;
            let aor = aor_param(c, 1, &u)?;
            let uri = c
                .str(2)
                .ok_or_else(|| RpcFailure::params("expected the contact"))?;
            match u.with(&t, |t| t.remove_contact(&aor, &uri)) {
                None => Err(fault(404, "AOR not found")),
                Some(false) => Err(fault(404, "Contact not found")),
                Some(true) => Ok(json!({})),
            }
        },
    )
    .changes_state();
    let u = ul.clone();
    let add = RpcSpec::new(
        "ul.add",
        "Adds a contact: ul.add table AOR contact expires q path flags cflags methods [received [socket]].",
        move |c| {
            let t = c.str(0).ok_or_else(|| RpcFailure::params("expected the table name"))?;
            let aor = aor_param(c, 1, &u)?;
            let uri = c.str(2).ok_or_else(|| RpcFailure::params("expected the contact"))?;
            let expires = c.int(3).ok_or_else(|| RpcFailure::params("expected expires"))?;
            let q = c
                .str(4)
                // Kamailio's q is a number here; below 0: none given
                .filter(|q| !q.trim_start().starts_with('-'))
                .map(|q| crate::parse_q(q.as_bytes()).ok_or_else(|| RpcFailure::params("bad q")))
                .transpose()?
                .unwrap_or(Q_UNSPECIFIED);
            let path = c.str(5).filter(|p| !p.is_empty() && p != "0");
            let flags = c.int(6).unwrap_or(0) as u32;
            let cflags = c.int(7).unwrap_or(0) as u64;
            let methods = c.int(8).map_or(ALL_METHODS, |m| m as u32);
            let received = c.str(9).filter(|p| !p.is_empty() && p != "0");
            let socket = c.str(10).unwrap_or_default();
            let now = now();
            let contact = Contact {
                uri,
                expires: if expires <= 0 { u64::MAX } else { now + expires as u64 },
                q,
                callid: "dfjrewr12386fd6-343@kamailio.rpc".into(),
                cseq: 1,
                received,
                path,
                user_agent: "siphon SIP Router - RPC Server".into(),
                flags,
                cflags,
                socket,
                methods,
                ruid: u.new_ruid(),
                instance: None,
                reg_id: 0,
                last_modified: now,
            };
            let desc = u.cfg.desc_time_order;
            u.with(&t, |t| {
                let r = t.get_or_create(&aor);
                match r.contacts.iter().position(|x| x.uri == contact.uri) {
                    Some(i) => r.update(i, contact, desc),
                    None => r.insert(contact, desc),
                }
            });
            Ok(json!({}))
        },
    )
    .changes_state();
    let u = ul.clone();
    let flush = RpcSpec::new("ul.flush", "Removes the expired contacts now.", move |_| {
        let n = u.expire_all(now()).len();
        tracing::info!("ul.flush: {n} expired contacts removed");
        Ok(json!({}))
    })
    .changes_state();
    vec![dump, lookup, rm, rm_contact, add, flush]
}
