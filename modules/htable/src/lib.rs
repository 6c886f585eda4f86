//! htable (Kamailio): named hash tables shared by every worker.
//!
//! - `modparam("htable", "htable", "name=>size=8;autoexpire=300;initval=0;updateexpire=1")`
//!   (several); `dmqreplicate` is accepted with a warning (no effect yet),
//!   `dbtable`/`dbmode` are refused (no database backend); `timer_interval`
//!   (seconds, default 20) is how often expired items are swept (reads never
//!   see an expired item, swept or not).
//! - `$sht(t=>key)` read/write (`= $null` deletes), `$shtex(t=>key)` (seconds
//!   left; write sets them), `$shtcn(t=>exp)` (items whose name matches:
//!   `~~re`, `~%prefix`, `%~suffix`, `==name`, `**`, else a regex),
//!   `$shtcv(t=>exp)` (same over values), `$shtinc(t=>key)`/`$shtdec(t=>key)`
//!   (atomic; the new value). The key may hold PVs (`$sht(ipban=>$si)`).
//! - `sht_rm(t, key)`, `sht_rm_name_re("t=>re")`, `sht_rm_value_re("t=>re")`,
//!   `sht_rm_name(t, op, val)`/`sht_rm_value(t, op, val)` (op `re`, `sw`),
//!   `sht_reset(t)`.
//! - `event_route[htable:mod-init]` runs once at start;
//!   `event_route[htable:expired:NAME]` runs for each swept item with
//!   `$shtrecord(key)`/`$shtrecord(value)`.
//! - RPC `htable.get`, `htable.sets`, `htable.seti`, `htable.delete`,
//!   `htable.dump`, `htable.listTables`, `htable.stats`, `htable.flush`,
//!   with Kamailio's answers (the texts, the slots `core_hash` puts items in,
//!   tables newest first); `htable.reload` answers Kamailio's "No htable
//!   db_url" (no database backend).

pub mod store;

use bytes::Bytes;
use serde_json::json;
use siphon_script::api::*;
use siphon_script::pv::Fmt;
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec};
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use store::{Matcher, Store, TableDef};

/// The tables, by name.
pub struct Tables {
    tables: HashMap<String, Arc<Mutex<Store>>>,
    order: Vec<String>,
    epoch: Instant,
}

impl Tables {
    /// Seconds since start (a monotonic clock; 1 so that 0 never means "now").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs() + 1
    }
    fn get(&self, name: &str) -> Option<&Arc<Mutex<Store>>> {
        self.tables.get(name)
    }
}

fn lock(t: &Mutex<Store>) -> MutexGuard<'_, Store> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The module.
pub struct Htable {
    tables: Arc<Tables>,
    timer_interval: u64,
}

fn check_def(v: &ParamValue) -> Result<(), String> {
    match v {
        ParamValue::Str(s) => store::parse_def(s).map(|_| ()),
        ParamValue::Int(_) => Err("expected `name=>attr=value;...`".into()),
    }
}

/// `loadmodule "htable.so"`.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "htable",
        params: vec![
            ParamSpec::str("htable").multi().check(check_def),
            ParamSpec::int("timer_interval"),
        ],
        instantiate: Arc::new(|cfg| {
            let mut tables = HashMap::new();
            let mut order = Vec::new();
            for v in cfg.all("htable") {
                let ParamValue::Str(s) = v else { continue };
                let d: TableDef = store::parse_def(s)?;
                if d.dmqreplicate != 0 {
                    tracing::warn!(
                        "htable {}: dmqreplicate accepted but has no effect (no DMQ in siphon yet)",
                        d.name
                    );
                }
                if tables.contains_key(&d.name) {
                    return Err(format!("htable `{}` defined twice", d.name));
                }
                order.push(d.name.clone());
                tables.insert(d.name.clone(), Arc::new(Mutex::new(Store::new(d))));
            }
            let timer_interval = cfg.int("timer_interval").unwrap_or(20);
            if timer_interval <= 0 {
                return Err("timer_interval must be positive".into());
            }
            Ok(Arc::new(Htable {
                tables: Arc::new(Tables {
                    tables,
                    order,
                    epoch: Instant::now(),
                }),
                timer_interval: timer_interval as u64,
            }) as Arc<dyn Module>)
        }),
    }
}

// ---------- pseudo-variables ----------

#[derive(Clone, Copy, PartialEq)]
enum PvKind {
    Val,
    Ex,
    CountNames,
    CountValues,
    Inc,
    Dec,
}

struct HtPv {
    tables: Arc<Tables>,
    table: Arc<Mutex<Store>>,
    key: Fmt,
    kind: PvKind,
}

impl HtPv {
    fn key(&self, ex: &mut Exec<'_>) -> Bytes {
        match self.key.as_const() {
            Some(b) => b,
            None => ex.fmt(&self.key),
        }
    }
}

impl PvAccess for HtPv {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        let key = self.key(ex);
        let now = self.tables.now();
        let mut t = lock(&self.table);
        match self.kind {
            PvKind::Val => t.get(&key, now),
            PvKind::Ex => t
                .expire_left(&key, now)
                .map_or(Value::Null, |n| Value::Int(n as i64)),
            PvKind::CountNames | PvKind::CountValues => match Matcher::parse_exp(&key) {
                Ok(m) if self.kind == PvKind::CountNames => {
                    Value::Int(t.count_names(&m, now) as i64)
                }
                Ok(m) => Value::Int(t.count_values(&m, now) as i64),
                Err(e) => {
                    tracing::error!("$shtcn/$shtcv: {e}");
                    Value::Null
                }
            },
            PvKind::Inc | PvKind::Dec => {
                let d = if self.kind == PvKind::Inc { 1 } else { -1 };
                t.add(key, d, now).map_or(Value::Null, Value::Int)
            }
        }
    }
    fn set(&self, ex: &mut Exec<'_>, _idx: PvIdx, v: Value) -> Result<(), String> {
        let key = self.key(ex);
        let now = self.tables.now();
        let mut t = lock(&self.table);
        match self.kind {
            PvKind::Val => {
                t.set(key, v, now);
                Ok(())
            }
            PvKind::Ex => {
                let secs = v.to_int().unwrap_or(0).max(0) as u64;
                t.set_expire(&key, secs, now);
                Ok(())
            }
            _ => Err("is read-only".into()),
        }
    }
    fn writable(&self) -> bool {
        matches!(self.kind, PvKind::Val | PvKind::Ex)
    }
}

fn pv_class(name: &'static str, kind: PvKind, tables: &Arc<Tables>) -> PvClassSpec {
    let tables = tables.clone();
    PvClassSpec::with_fmt(
        name,
        PvInner::Required,
        Arc::new(move |inner, compile| {
            let inner = inner.unwrap_or("");
            let (t, k) = inner
                .split_once("=>")
                .ok_or_else(|| format!("expected `{name}(table=>key)`"))?;
            let table = tables
                .get(t.trim())
                .ok_or_else(|| {
                    format!(
                        "no htable `{}` (define it with modparam(\"htable\", \"htable\", ...))",
                        t.trim()
                    )
                })?
                .clone();
            let key = compile(k)?;
            if let (PvKind::CountNames | PvKind::CountValues, Some(c)) = (kind, key.as_const()) {
                Matcher::parse_exp(&c)?;
            }
            Ok(Arc::new(HtPv {
                tables: tables.clone(),
                table,
                key,
                kind,
            }) as Arc<dyn PvAccess>)
        }),
    )
}

/// `$shtrecord(key|value)` in `event_route[htable:expired:NAME]`.
#[derive(Clone)]
struct Expired(Bytes, Value);

struct RecordPv(bool);
impl PvAccess for RecordPv {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        match ex.ctx.ext.get::<Expired>() {
            Some(e) if self.0 => Value::Str(e.0.clone()),
            Some(e) => e.1.clone(),
            None => Value::Null,
        }
    }
}

// ---------- functions ----------

const ROUTES: RouteType = RouteType::ANY;

impl Htable {
    fn table_of(&self, ex: &mut Exec<'_>, args: &Args, i: usize) -> Option<Arc<Mutex<Store>>> {
        let name = args.text(i, ex);
        let t = self.tables.get(&name).cloned();
        if t.is_none() {
            tracing::error!("htable: no table `{name}`");
        }
        t
    }

    fn check_table(&self, args: &Args, i: usize) -> Result<(), String> {
        if let Some(v) = args.const_value(i) {
            let n = v.to_text();
            if self.tables.get(&n).is_none() {
                return Err(format!("no htable `{n}`"));
            }
        }
        Ok(())
    }

    fn functions(&self) -> Vec<FunctionSpec> {
        let mut out = Vec::new();
        let me = self.clone_handle();
        let chk = me.clone();
        out.push(FunctionSpec::checked(
            "sht_rm",
            &[ArgKind::Str, ArgKind::Str],
            move |a| chk.check_table(a, 0),
            move |ex, a| {
                let Some(t) = me.table_of(ex, a, 0) else {
                    return FnResult::Code(-1);
                };
                let key = a.bytes(1, ex);
                lock(&t).del(&key);
                FnResult::Code(1)
            },
        ));
        let me = self.clone_handle();
        let chk = me.clone();
        out.push(FunctionSpec::checked(
            "sht_reset",
            &[ArgKind::Str],
            move |a| chk.check_table(a, 0),
            move |ex, a| {
                let Some(t) = me.table_of(ex, a, 0) else {
                    return FnResult::Code(-1);
                };
                lock(&t).reset();
                FnResult::Code(1)
            },
        ));
        for (name, by_value) in [("sht_rm_name_re", false), ("sht_rm_value_re", true)] {
            let me = self.clone_handle();
            out.push(FunctionSpec::new(name, &[ArgKind::Str], move |ex, a| {
                let spec = a.text(0, ex);
                let Some((t, re)) = spec.split_once("=>") else {
                    tracing::error!("{name}: expected `table=>regexp`, got `{spec}`");
                    return FnResult::Code(-1);
                };
                let Some(t) = me.tables.get(t.trim()).cloned() else {
                    tracing::error!("{name}: no htable `{t}`");
                    return FnResult::Code(-1);
                };
                let m = match Matcher::re(re.as_bytes()) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!("{name}: {e}");
                        return FnResult::Code(-1);
                    }
                };
                let mut t = lock(&t);
                if by_value {
                    t.rm_values(&m)
                } else {
                    t.rm_names(&m)
                };
                FnResult::Code(1)
            }));
        }
        for (name, by_value) in [("sht_rm_name", false), ("sht_rm_value", true)] {
            let me = self.clone_handle();
            let chk = me.clone();
            out.push(FunctionSpec::checked(
                name,
                &[ArgKind::Str, ArgKind::Str, ArgKind::Str],
                move |a| {
                    chk.check_table(a, 0)?;
                    if let Some(op) = a.const_value(1) {
                        let op = op.to_text();
                        if op != "re" && op != "sw" {
                            return Err(format!("op `{op}`: expected `re` or `sw`"));
                        }
                    }
                    Ok(())
                },
                move |ex, a| {
                    let Some(t) = me.table_of(ex, a, 0) else {
                        return FnResult::Code(-1);
                    };
                    let op = a.text(1, ex);
                    let val = a.bytes(2, ex);
                    let m = match op.as_str() {
                        "re" => match Matcher::re(&val) {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::error!("{name}: {e}");
                                return FnResult::Code(-1);
                            }
                        },
                        "sw" => Matcher::Prefix(val),
                        _ => return FnResult::Code(-1),
                    };
                    let mut t = lock(&t);
                    if by_value {
                        t.rm_values(&m)
                    } else {
                        t.rm_names(&m)
                    };
                    FnResult::Code(1)
                },
            ));
        }
        out.into_iter().map(|f| f.routes(ROUTES)).collect()
    }

    fn clone_handle(&self) -> Arc<Htable> {
        Arc::new(Htable {
            tables: self.tables.clone(),
            timer_interval: self.timer_interval,
        })
    }
}

// ---------- RPC ----------

/// Kamailio's `core_hash(name, 0, 1 << size)`: the slot an item is in (`htable.dump`, `htable.stats`).
pub fn slot_of(name: &[u8], size: u32) -> u32 {
    let mix = |h: u32, v: u32| h.wrapping_add(v ^ (v >> 3));
    let mut h: u32 = 0;
    let mut chunks = name.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let v = chunks
        .remainder()
        .iter()
        .fold(0u32, |v, b| (v << 8) + *b as u32);
    h = mix(h, v);
    let h = h
        .wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23));
    h & ((1u32 << size) - 1)
}

fn ok_text(s: &str) -> Result<serde_json::Value, RpcFailure> {
    Ok(json!(s))
}

fn fail500(m: &str) -> RpcFailure {
    RpcFailure {
        code: 500,
        message: m.into(),
    }
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(n) => json!(n),
        other => json!(other.to_text()),
    }
}

fn rpc_table(tables: &Tables, c: &RpcCall) -> Result<Arc<Mutex<Store>>, RpcFailure> {
    let name = c
        .str(0)
        .ok_or_else(|| fail500("Not enough parameters (htable name)"))?;
    tables.get(&name).cloned().ok_or_else(|| RpcFailure {
        code: 500,
        message: "No such htable".into(),
    })
}

fn rpc_key(c: &RpcCall) -> Result<Bytes, RpcFailure> {
    c.str(1)
        .map(Bytes::from)
        .ok_or_else(|| fail500("Not enough parameters (htable name and key name)"))
}

fn rpcs(tables: &Arc<Tables>) -> Vec<RpcSpec> {
    let mut v = Vec::new();
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.get",
        "Get one key from a hash table.",
        move |c| {
            let tb = rpc_table(&t, c)?;
            let key = rpc_key(c)?;
            let val = lock(&tb).lookup(&key, t.now()).ok_or(RpcFailure {
                code: 500,
                message: "Key name doesn't exist in htable.".into(),
            })?;
            Ok(json!({"item": {"name": String::from_utf8_lossy(&key), "value": json_value(&val)}}))
        },
    ));
    for (name, int) in [("htable.sets", false), ("htable.seti", true)] {
        let t = tables.clone();
        v.push(RpcSpec::new(
            name,
            "Set one key in a hash table.",
            move |c| {
                let missing = || fail500("Not enough parameters (htable name, key name and value)");
                let key = c.str(1).map(Bytes::from).ok_or_else(missing)?;
                let val = if int {
                    Value::Int(c.int(2).ok_or_else(missing)?)
                } else {
                    Value::Str(Bytes::from(c.str(2).ok_or_else(missing)?))
                };
                let tb = rpc_table(&t, c)?;
                lock(&tb).set(key, val, t.now());
                ok_text("Ok. Key set to new value.")
            },
        ));
    }
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.delete",
        "Delete one key from a hash table.",
        move |c| {
            let tb = rpc_table(&t, c)?;
            let key = rpc_key(c)?;
            if !lock(&tb).del(&key) {
                return Err(RpcFailure {
                    code: 404,
                    message: "Key not found in htable.".into(),
                });
            }
            ok_text("Ok. Key deleted.")
        },
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.flush",
        "Empty a hash table.",
        move |c| {
            let tb = rpc_table(&t, c)?;
            lock(&tb).reset();
            ok_text("Ok. Htable flushed.")
        },
    ));
    v.push(RpcSpec::new(
        "htable.reload",
        "Reload a hash table from its database table (siphon has no database backend).",
        |_c| Err(fail500("No htable db_url")),
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.dump",
        "Dump the items of a hash table.",
        move |c| {
            let tb = rpc_table(&t, c)?;
            let tb = lock(&tb);
            let mut by_slot: std::collections::BTreeMap<u32, Vec<serde_json::Value>> =
                Default::default();
            for (k, val) in tb.items(t.now()) {
                by_slot
                    .entry(slot_of(&k, tb.def.size))
                    .or_default()
                    .push(json!({
                        "name": String::from_utf8_lossy(&k),
                        "value": json_value(&val),
                        "type": if matches!(val, Value::Int(_)) { "int" } else { "str" },
                    }));
            }
            Ok(serde_json::Value::Array(
                by_slot
                    .into_iter()
                    .map(|(e, s)| json!({"entry": e, "size": s.len(), "slot": s}))
                    .collect(),
            ))
        },
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.listTables",
        "List the hash tables.",
        move |_c| {
            Ok(serde_json::Value::Array(
                t.order
                    .iter()
                    .rev()
                    .map(|n| {
                        let tb = lock(&t.tables[n]);
                        json!({
                            "name": n,
                            "dbtable": "",
                            "dbmode": 0,
                            "expire": tb.def.autoexpire,
                            "updateexpire": tb.def.updateexpire as i64,
                            "size": 1u64 << tb.def.size,
                            "dmqreplicate": tb.def.dmqreplicate,
                        })
                    })
                    .collect(),
            ))
        },
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.stats",
        "Statistics of the hash tables.",
        move |_c| {
            Ok(serde_json::Value::Array(
                t.order
                    .iter()
                    .rev()
                    .map(|n| {
                        let tb = lock(&t.tables[n]);
                        let slots = 1usize << tb.def.size;
                        let mut per = vec![0u64; slots];
                        for (k, _) in tb.items(t.now()) {
                            per[slot_of(&k, tb.def.size) as usize] += 1;
                        }
                        json!({
                            "name": n,
                            "slots": slots,
                            "all": per.iter().sum::<u64>(),
                            "min": per.iter().min(),
                            "max": per.iter().max(),
                        })
                    })
                    .collect(),
            ))
        },
    ));
    v
}

impl Module for Htable {
    fn functions(&self) -> Vec<FunctionSpec> {
        Htable::functions(self)
    }
    fn pv_classes(&self) -> Vec<PvClassSpec> {
        let t = &self.tables;
        let rec = |name: &'static str| {
            PvClassSpec::new(
                "shtrecord",
                PvInner::Required,
                Arc::new(move |inner| match inner {
                    Some("key") => Ok(Arc::new(RecordPv(true)) as Arc<dyn PvAccess>),
                    Some("value") => Ok(Arc::new(RecordPv(false)) as Arc<dyn PvAccess>),
                    _ => Err(format!("`${name}(key)` or `${name}(value)`")),
                }),
            )
        };
        vec![
            pv_class("sht", PvKind::Val, t),
            pv_class("shtex", PvKind::Ex, t),
            pv_class("shtcn", PvKind::CountNames, t),
            pv_class("shtcv", PvKind::CountValues, t),
            pv_class("shtinc", PvKind::Inc, t),
            pv_class("shtdec", PvKind::Dec, t),
            rec("shtrecord"),
        ]
    }
    fn event_routes(&self) -> Vec<&'static str> {
        let mut v = vec!["htable:mod-init"];
        for n in &self.tables.order {
            v.push(Box::leak(format!("htable:expired:{n}").into_boxed_str()));
        }
        v
    }
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        rpcs(&self.tables)
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let program = cx.program.clone();
        if let Some(route) = program.event_route("htable:mod-init") {
            let mut ctx = program.new_ctx(RouteType::EVENT);
            program.run(route, &mut ctx);
        }
        let tables = self.tables.clone();
        let every = std::time::Duration::from_secs(self.timer_interval);
        let stop = cx.host.shutdown();
        let expired_routes: HashMap<String, _> = tables
            .order
            .iter()
            .filter_map(|n| {
                program
                    .event_route(&format!("htable:expired:{n}"))
                    .map(|r| (n.clone(), r))
            })
            .collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = tables.now();
                for n in &tables.order {
                    let gone = lock(&tables.tables[n]).sweep(now);
                    if let Some(route) = expired_routes.get(n) {
                        for (k, v) in gone {
                            let mut ctx = program.new_ctx(RouteType::EVENT);
                            ctx.ext.insert(Expired(k, v));
                            program.run(*route, &mut ctx);
                        }
                    }
                }
            }
        });
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
