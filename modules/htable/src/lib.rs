//! htable (Kamailio): named hash tables shared by every worker.
//!
//! - `modparam("htable", "htable", "name=>size=8;autoexpire=300;initval=0;updateexpire=1")`
//!   (several); `dmqreplicate` is accepted with a warning (no effect yet),
//!   `dbtable=T` loads the table at start from the db_text file `T` in
//!   `db_url`'s directory ([`dbtext`]; `dbmode=1`, saving it back, and
//!   `cols` are refused); `timer_interval`
//!   (seconds, default 20) is how often expired items are swept (reads never
//!   see an expired item, swept or not).
//! - `$sht(t=>key)` read/write (`= $null` deletes), `$shtex(t=>key)` (seconds
//!   left; write sets them), `$shtcn(t=>exp)` (items whose name matches:
//!   `~~re`, `~%suffix`, `%~prefix`, `==name`, `**`, else a regex; regexes
//!   case-insensitive), `$shtcv(t=>exp)` (same over string values; `eqN`
//!   integer values equal to N), `$shtinc(t=>key)`/`$shtdec(t=>key)`
//!   (atomic; the new value). The key may hold PVs (`$sht(ipban=>$si)`).
//! - `sht_rm(t, key)`, `sht_rm_name_re("t=>re")`, `sht_rm_value_re("t=>re")`,
//!   `sht_rm_name(t, op, val)`/`sht_rm_value(t, op, val)` (op `re`, `sw`),
//!   `sht_reset(t)`.
//! - `event_route[htable:mod-init]` runs once at start;
//!   `event_route[htable:expired:NAME]` runs for each swept item with
//!   `$shtrecord(key)`/`$shtrecord(value)`.
//! - `sht_lock("t=>key")`/`sht_unlock("t=>key")`: the script's lock on the
//!   key's slot ([`lock`]: re-entrant per worker, `$sht…` accesses of other
//!   workers wait for it, released when the route ends or suspends, a
//!   lock-order cycle refused instead of waited on). Whole-table work —
//!   `sht_reset`, the `sht_rm_*` removals, `$shtcn`/`$shtcv`, the RPCs —
//!   goes slot by slot as Kamailio's: the slots others hold are done once
//!   each is given back, the rest at once.
//! - `sht_iterator_start(i, t)`, `sht_iterator_next(i)`,
//!   `sht_iterator_end(i)`, `sht_iterator_rm(i)`, `sht_iterator_sets(i, s)`,
//!   `sht_iterator_seti(i, n)`, `sht_iterator_setex(i, secs)`,
//!   `$shtitkey(i)`, `$shtitval(i)` ([`iter`]).
//! - RPC `htable.get`, `htable.sets`, `htable.seti`, `htable.delete`,
//!   `htable.dump`, `htable.listTables`, `htable.stats`, `htable.flush`,
//!   with Kamailio's answers (the texts, the slots `core_hash` puts items in,
//!   tables newest first); `htable.reload` reloads a table from its db_text
//!   file (replacing its items). `db_url` takes `text:///dir` only (no SQL
//!   backend); `key_name_column`, `key_type_column`, `value_type_column`,
//!   `key_value_column`, `expires_column` (read with `db_expires=1` for
//!   tables with `autoexpire`), `array_size_suffix` as Kamailio's.

pub mod dbtext;
pub mod iter;
pub mod lock;
pub mod store;

use bytes::Bytes;
use iter::Iterators;
use lock::{RunLocks, SlotId, SlotLocks};
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
    /// Names in definition order; a table's index here is its id for the
    /// slot locks.
    order: Vec<String>,
    epoch: Instant,
    /// `sht_lock`'s slot locks.
    locks: Arc<SlotLocks>,
    /// Where tables with `dbtable` are loaded from (`db_url`).
    db: Option<Db>,
}

/// `db_url` (`text:///dir`, db_text files) and the column parameters.
struct Db {
    dir: std::path::PathBuf,
    cols: dbtext::Columns,
    /// `db_expires`: the expires column is read (tables with `autoexpire`).
    expires: bool,
}

impl Tables {
    /// Seconds since start (a monotonic clock; 1 so that 0 never means "now").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs() + 1
    }
    fn get(&self, name: &str) -> Option<&Arc<Mutex<Store>>> {
        self.tables.get(name)
    }
    /// The table's index (its id for the slot locks).
    fn id(&self, name: &str) -> Option<usize> {
        self.order.iter().position(|n| n == name)
    }
    /// The slot `key` is in, in table `name`.
    fn slot(&self, name: &str, key: &[u8]) -> Option<SlotId> {
        let id = self.id(name)?;
        let size = lock(self.tables.get(name)?).def.size;
        Some((id, slot_of(key, size)))
    }
    /// Table `id` (`table`) for an access to `key`: once no other worker
    /// holds `key`'s slot with `sht_lock` (a refused wait, a deadlock, is
    /// logged and the access goes ahead). Whether a slot is held is read
    /// with the table's mutex held ([`lock`]'s order).
    fn access<'a>(&self, id: usize, table: &'a Mutex<Store>, key: &[u8]) -> MutexGuard<'a, Store> {
        let g = lock(table);
        if !self.locks.any_held(id) {
            return g;
        }
        let slot = (id, slot_of(key, g.def.size));
        drop(g);
        loop {
            if self.locks.pass(slot).is_err() {
                tracing::error!(target: "script", "htable {}: waiting for the slot of `{}` would deadlock (two routes locking slots in opposite orders): accessed without waiting", self.order[id], String::from_utf8_lossy(key));
                return lock(table);
            }
            let g = lock(table);
            if !self.locks.held_by_other(slot) {
                return g;
            }
        }
    }

    /// Runs `op` over table `id` as Kamailio's whole-table operations go
    /// (`sht_reset`, the `*_re` removals, `$shtcn`, the RPCs), slot by slot
    /// under each slot's lock: the slots other workers hold with `sht_lock`
    /// are done each once it is given back (in slot order), all the others
    /// at once. `op` gets the store and which items (by name) are its to
    /// touch this time.
    fn walk(&self, id: usize, mut op: impl FnMut(&mut Store, &dyn Fn(&[u8]) -> bool)) {
        let table = &self.tables[&self.order[id]];
        let mut g = lock(table);
        if !self.locks.any_held(id) {
            op(&mut g, &|_| true);
            return;
        }
        let size = g.def.size;
        let held = self.locks.held_by_others(id);
        op(&mut g, &|k| held.binary_search(&slot_of(k, size)).is_err());
        drop(g);
        let me = std::thread::current().id();
        for s in held {
            let took = self.locks.lock((id, s)).is_ok();
            if !took {
                tracing::error!(target: "script", "htable {}: waiting for slot {s} would deadlock (a route holding a lock waits for this one): done without waiting", self.order[id]);
            }
            op(&mut lock(table), &|k| slot_of(k, size) == s);
            if took {
                self.locks.unlock_for(me, (id, s));
            }
        }
    }

    /// (Re)loads table `id` from its db_text file, replacing its items
    /// (slot by slot, as the other whole-table operations); on an error
    /// the table is left as it was.
    fn load(&self, id: usize) -> Result<usize, String> {
        let name = &self.order[id];
        let (dbtable, autoexpire) = {
            let t = lock(&self.tables[name]);
            (t.def.dbtable.clone(), t.def.autoexpire)
        };
        let (Some(db), Some(dbtable)) = (&self.db, dbtable) else {
            return Ok(0);
        };
        let path = db.dir.join(&dbtable);
        let data = std::fs::read(&path)
            .map_err(|e| format!("htable {name}: reading {}: {e}", path.display()))?;
        let table =
            dbtext::parse(&data).map_err(|e| format!("htable {name}: {}: {e}", path.display()))?;
        let unix = (autoexpire > 0 && db.expires).then(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        let items = dbtext::items(&table, &db.cols, unix)
            .map_err(|e| format!("htable {name}: {}: {e}", path.display()))?;
        let now = self.now();
        self.walk(id, |st, keep| st.load_in(&items, keep, now));
        Ok(items.len())
    }

    /// Table `name` and its index.
    fn named(&self, name: &str) -> Option<(usize, &Arc<Mutex<Store>>)> {
        Some((self.id(name)?, self.tables.get(name)?))
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

/// `db_url`: db_text files only (`text:///dir`).
fn check_db_url(v: &ParamValue) -> Result<(), String> {
    match v {
        ParamValue::Str(s) if s.strip_prefix("text://").is_some_and(|d| !d.is_empty()) => Ok(()),
        _ => Err(
            "siphon's htable loads tables only from db_text files (`text:///dir`): \
             it has no SQL database backend (mysql://, postgres://, ...)"
                .into(),
        ),
    }
}

/// `event_callback`: refused, siphon runs no KEMI script functions.
fn no_kemi(_: &ParamValue) -> Result<(), String> {
    Err(
        "siphon runs no KEMI scripts: use event_route[htable:mod-init] and \
         event_route[htable:expired:NAME] instead"
            .into(),
    )
}

/// `loadmodule "htable.so"`.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "htable",
        params: vec![
            ParamSpec::str("htable").multi().check(check_def),
            ParamSpec::int("timer_interval"),
            // DMQ replication is the next issue's, as `dmqreplicate`.
            ParamSpec::int("enable_dmq").no_effect(),
            ParamSpec::int("dmq_init_sync").no_effect(),
            // One task sweeps every table.
            ParamSpec::int("timer_procs").no_effect(),
            ParamSpec::str("db_url").check(check_db_url),
            ParamSpec::str("key_name_column"),
            ParamSpec::str("key_type_column"),
            ParamSpec::str("value_type_column"),
            ParamSpec::str("key_value_column"),
            ParamSpec::str("expires_column"),
            ParamSpec::str("array_size_suffix"),
            // A db_text file is read whole.
            ParamSpec::int("fetch_rows").no_effect(),
            ParamSpec::int("db_expires"),
            ParamSpec::str("event_callback").check(no_kemi),
            ParamSpec::int("event_callback_mode").check(no_kemi),
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
            let db = cfg.str("db_url").map(|url| {
                let mut cols = dbtext::Columns::default();
                for (p, c) in [
                    ("key_name_column", &mut cols.name),
                    ("key_type_column", &mut cols.key_type),
                    ("value_type_column", &mut cols.value_type),
                    ("key_value_column", &mut cols.value),
                    ("expires_column", &mut cols.expires),
                    ("array_size_suffix", &mut cols.size_suffix),
                ] {
                    if let Some(v) = cfg.str(p).filter(|v| !v.is_empty()) {
                        *c = v;
                    }
                }
                Db {
                    dir: url.trim_start_matches("text://").into(),
                    cols,
                    expires: cfg.int("db_expires").unwrap_or(0) != 0,
                }
            });
            if db.is_none()
                && let Some(t) = tables.values().find(|t| lock(t).def.dbtable.is_some())
            {
                return Err(format!(
                    "htable {}: dbtable without modparam(\"htable\", \"db_url\", \"text:///dir\")",
                    lock(t).def.name
                ));
            }
            let tables = Arc::new(Tables {
                tables,
                locks: Arc::new(SlotLocks::new(order.len())),
                order,
                epoch: Instant::now(),
                db,
            });
            // As Kamailio: a table that cannot be loaded stops the start.
            for id in 0..tables.order.len() {
                tables.load(id)?;
            }
            Ok(Arc::new(Htable {
                tables,
                timer_interval: timer_interval as u64,
            }) as Arc<dyn Module>)
        }),
    }
}

/// `loadmodule "db_text.so"`: the database htable's `db_url` `text://`
/// reads ([`dbtext`]); it has no functions of its own. Its parameters that
/// change how a file reads are refused unless left as they are.
pub fn db_text_def() -> ModuleDef {
    siphon_script::core::core_module(
        "db_text",
        vec![
            // siphon only reads the files (htable), never writes them.
            ParamSpec::int("db_mode").no_effect(),
            ParamSpec::int("file_buffer_size").no_effect(),
            ParamSpec::int("max_result_rows").no_effect(),
            ParamSpec::int("emptystring").check(|v| match v {
                ParamValue::Int(0) => Ok(()),
                _ => Err(
                    "siphon reads db_text files with an empty field as NULL only (emptystring=0)"
                        .into(),
                ),
            }),
            ParamSpec::str("db_delim").check(|v| match v {
                ParamValue::Str(s) if s == ":" => Ok(()),
                _ => Err("siphon reads db_text files with the `:` delimiter only".into()),
            }),
        ],
    )
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
    /// The table's index, for the slot locks.
    id: usize,
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
        if let PvKind::CountNames | PvKind::CountValues = self.kind {
            let m = match Matcher::parse_exp(&key) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("$shtcn/$shtcv: {e}");
                    return Value::Null;
                }
            };
            let mut n = 0;
            self.tables.walk(self.id, |t, keep| {
                n += if self.kind == PvKind::CountNames {
                    t.count_names_in(&m, now, keep)
                } else {
                    t.count_values_in(&m, now, keep)
                };
            });
            return Value::Int(n as i64);
        }
        let mut t = self.tables.access(self.id, &self.table, &key);
        match self.kind {
            PvKind::Val => t.get(&key, now),
            PvKind::Ex => t
                .expire_left(&key, now)
                .map_or(Value::Null, |n| Value::Int(n as i64)),
            PvKind::CountNames | PvKind::CountValues => Value::Null,
            PvKind::Inc | PvKind::Dec => {
                let d = if self.kind == PvKind::Inc { 1 } else { -1 };
                t.add(key, d, now).map_or(Value::Null, Value::Int)
            }
        }
    }
    fn set(&self, ex: &mut Exec<'_>, _idx: PvIdx, v: Value) -> Result<(), String> {
        let key = self.key(ex);
        let now = self.tables.now();
        let mut t = self.tables.access(self.id, &self.table, &key);
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
            let id = tables.id(t.trim()).unwrap_or_default();
            Ok(Arc::new(HtPv {
                tables: tables.clone(),
                table,
                id,
                key,
                kind,
            }) as Arc<dyn PvAccess>)
        }),
    )
}

/// `$shtitkey(i)` / `$shtitval(i)`.
fn item_class(name: &'static str, key: bool, tables: &Arc<Tables>) -> PvClassSpec {
    let tables = tables.clone();
    PvClassSpec::new(
        name,
        PvInner::Required,
        Arc::new(move |inner| {
            let it = inner.unwrap_or_default().trim();
            if it.is_empty() || it.len() > iter::MAX_NAME {
                return Err(format!(
                    "`${name}(iterator)`: an iterator name of 1 to {} characters",
                    iter::MAX_NAME
                ));
            }
            Ok(Arc::new(ItemPv {
                tables: tables.clone(),
                name: it.to_string(),
                key,
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

/// What a `sht_iterator_set*` writes.
#[derive(Clone, Copy)]
enum ItSet {
    Str,
    Int,
    Expire,
}

/// A route run's iterators end with it.
fn end_iterators(ctx: &mut siphon_script::Ctx, _how: siphon_script::RunEnd) {
    ctx.ext.remove::<Iterators>();
}

/// `$shtitkey(i)` (`key`) / `$shtitval(i)`: the item iterator `i` is on.
struct ItemPv {
    tables: Arc<Tables>,
    name: String,
    key: bool,
}

impl PvAccess for ItemPv {
    fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
        let Some(it) = ex
            .ctx
            .ext
            .get::<Iterators>()
            .and_then(|its| its.get(&self.name))
        else {
            return Value::Null;
        };
        let Some(k) = it.current() else {
            return Value::Null;
        };
        if self.key {
            return Value::Str(k.clone());
        }
        let Some(t) = self.tables.get(&self.tables.order[it.table]) else {
            return Value::Null;
        };
        lock(t).lookup(k, self.tables.now()).unwrap_or(Value::Null)
    }
}

const ROUTES: RouteType = RouteType::ANY;

impl Htable {
    /// The table argument `i` names, and its index.
    fn table_of(
        &self,
        ex: &mut Exec<'_>,
        args: &Args,
        i: usize,
    ) -> Option<(usize, Arc<Mutex<Store>>)> {
        let name = args.text(i, ex);
        let t = self.tables.named(&name).map(|(id, t)| (id, t.clone()));
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
                let Some((id, t)) = me.table_of(ex, a, 0) else {
                    return FnResult::Code(-1);
                };
                let key = a.bytes(1, ex);
                me.tables.access(id, &t, &key).del(&key);
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
                let Some((id, _)) = me.table_of(ex, a, 0) else {
                    return FnResult::Code(-1);
                };
                me.tables.walk(id, |t, keep| t.reset_in(keep));
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
                let Some(id) = me.tables.id(t.trim()) else {
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
                me.tables.walk(id, |t, keep| {
                    if by_value {
                        t.rm_values_in(&m, keep);
                    } else {
                        t.rm_names_in(&m, keep);
                    }
                });
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
                    let Some((id, _)) = me.table_of(ex, a, 0) else {
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
                    me.tables.walk(id, |t, keep| {
                        if by_value {
                            t.rm_values_in(&m, keep);
                        } else {
                            t.rm_names_in(&m, keep);
                        }
                    });
                    FnResult::Code(1)
                },
            ));
        }
        out.extend(self.lock_functions());
        out.extend(self.iterator_functions());
        out.into_iter().map(|f| f.routes(ROUTES)).collect()
    }

    /// `t=>key` of `sht_lock`/`sht_unlock`: the table's name and slot.
    fn locked_slot(&self, spec: &str) -> Option<(SlotId, String)> {
        let Some((t, key)) = spec.split_once("=>") else {
            tracing::error!(target: "script", "sht_lock: expected `table=>key`, got `{spec}`");
            return None;
        };
        let Some(slot) = self.tables.slot(t.trim(), key.as_bytes()) else {
            tracing::error!(target: "script", "sht_lock: no htable `{}`", t.trim());
            return None;
        };
        Some((slot, spec.to_string()))
    }

    /// A constant `t=>key` must name a table.
    fn check_lock_arg(&self, a: &Args) -> Result<(), String> {
        let Some(v) = a.const_value(0) else {
            return Ok(());
        };
        let spec = v.to_text();
        let (t, _) = spec
            .split_once("=>")
            .ok_or_else(|| format!("`{spec}`: expected `table=>key`"))?;
        match self.tables.get(t.trim()) {
            Some(_) => Ok(()),
            None => Err(format!("no htable `{}`", t.trim())),
        }
    }

    fn lock_functions(&self) -> Vec<FunctionSpec> {
        let me = self.clone_handle();
        let chk = me.clone();
        let lock_fn = FunctionSpec::checked(
            "sht_lock",
            &[ArgKind::Str],
            move |a| chk.check_lock_arg(a),
            move |ex, a| {
                let Some((slot, what)) = me.locked_slot(&a.text(0, ex)) else {
                    return FnResult::Code(-1);
                };
                if me.tables.locks.lock(slot).is_err() {
                    tracing::error!(target: "script", "sht_lock(\"{what}\"): its holder waits for a slot this route holds: refused (it would deadlock); lock slots in one order");
                    return FnResult::Code(-1);
                }
                // An access that saw the slot free, under the table's
                // mutex, ends before this route goes on ([`lock`]'s order).
                drop(lock(&me.tables.tables[&me.tables.order[slot.0]]));
                if ex.ctx.ext.get::<RunLocks>().is_none() {
                    ex.ctx.ext.insert(RunLocks::new(me.tables.locks.clone()));
                    ex.ctx.at_run_end(lock::release_at_run_end);
                }
                if let Some(run) = ex.ctx.ext.get_mut::<RunLocks>() {
                    run.push(slot, what);
                }
                FnResult::Code(1)
            },
        );
        let me = self.clone_handle();
        let chk = me.clone();
        let unlock_fn = FunctionSpec::checked(
            "sht_unlock",
            &[ArgKind::Str],
            move |a| chk.check_lock_arg(a),
            move |ex, a| {
                let Some((slot, what)) = me.locked_slot(&a.text(0, ex)) else {
                    return FnResult::Code(-1);
                };
                let held = ex
                    .ctx
                    .ext
                    .get_mut::<RunLocks>()
                    .is_some_and(|run| run.unlock(slot));
                if !held {
                    tracing::warn!(target: "script", "sht_unlock(\"{what}\"): this route run holds no lock on its slot");
                }
                // Kamailio's answer either way.
                FnResult::Code(1)
            },
        );
        vec![lock_fn, unlock_fn]
    }

    fn iterator_functions(&self) -> Vec<FunctionSpec> {
        let mut out = Vec::new();
        let me = self.clone_handle();
        let chk = me.clone();
        out.push(FunctionSpec::checked(
            "sht_iterator_start",
            &[ArgKind::Str, ArgKind::Str],
            move |a| chk.check_table(a, 1),
            move |ex, a| {
                let name = a.text(0, ex);
                let table = a.text(1, ex);
                let (Some(t), Some(id)) = (me.tables.get(&table), me.tables.id(&table)) else {
                    tracing::error!(target: "script", "sht_iterator_start: no htable `{table}`");
                    return FnResult::Code(-1);
                };
                let (mut keys, size) = {
                    let st = lock(t);
                    let keys: Vec<Bytes> = st
                        .items(me.tables.now())
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    (keys, st.def.size)
                };
                iter::kamailio_order(&mut keys, size);
                if ex.ctx.ext.get::<Iterators>().is_none() {
                    ex.ctx.ext.insert(Iterators::default());
                    ex.ctx.at_run_end(end_iterators);
                }
                let its = ex.ctx.ext.get_mut::<Iterators>().expect("inserted");
                match its.start(&name, id, keys) {
                    Ok(()) => FnResult::Code(1),
                    Err(e) => {
                        tracing::error!(target: "script", "sht_iterator_start: {e}");
                        FnResult::Code(-1)
                    }
                }
            },
        ));
        let me = self.clone_handle();
        out.push(FunctionSpec::new(
            "sht_iterator_next",
            &[ArgKind::Str],
            move |ex, a| {
                let name = a.text(0, ex);
                match me.iterator_step(ex, &name, false) {
                    Some(true) => FnResult::Code(1),
                    _ => FnResult::Code(-1),
                }
            },
        ));
        out.push(FunctionSpec::new(
            "sht_iterator_end",
            &[ArgKind::Str],
            |ex, a| {
                let name = a.text(0, ex);
                let ended = ex
                    .ctx
                    .ext
                    .get_mut::<Iterators>()
                    .is_some_and(|its| its.end(&name));
                if ended {
                    FnResult::Code(1)
                } else {
                    tracing::error!(target: "script", "sht_iterator_end: no iterator `{name}`");
                    FnResult::Code(-1)
                }
            },
        ));
        let me = self.clone_handle();
        out.push(FunctionSpec::new(
            "sht_iterator_rm",
            &[ArgKind::Str],
            move |ex, a| {
                let name = a.text(0, ex);
                match me.iterator_step(ex, &name, true) {
                    Some(true) => FnResult::Code(1),
                    // Removed, and no item left.
                    Some(false) => FnResult::Code(-2),
                    None => FnResult::Code(-1),
                }
            },
        ));
        for (fname, kind) in [
            ("sht_iterator_sets", ItSet::Str),
            ("sht_iterator_seti", ItSet::Int),
            ("sht_iterator_setex", ItSet::Expire),
        ] {
            let me = self.clone_handle();
            out.push(FunctionSpec::new(
                fname,
                &[ArgKind::Str, ArgKind::Any],
                move |ex, a| {
                    let name = a.text(0, ex);
                    let v = a.value(1, ex);
                    me.iterator_set(ex, fname, &name, kind, v).into()
                },
            ));
        }
        out
    }

    /// The iterator `name`'s table and current item, `None` (an error
    /// logged) without one.
    fn iterator_item(
        &self,
        ex: &mut Exec<'_>,
        fname: &str,
        name: &str,
    ) -> Option<(Arc<Mutex<Store>>, usize, Bytes)> {
        let Some(it) = ex.ctx.ext.get::<Iterators>().and_then(|its| its.get(name)) else {
            tracing::error!(target: "script", "{fname}: no iterator `{name}`");
            return None;
        };
        let Some(key) = it.current().cloned() else {
            tracing::error!(target: "script", "{fname}: iterator `{name}` is on no item (sht_iterator_next first)");
            return None;
        };
        let t = self.tables.get(&self.tables.order[it.table])?.clone();
        Some((t, it.table, key))
    }

    /// `sht_iterator_next` (`remove` false) or `sht_iterator_rm` (removes
    /// the current item first): whether the iterator is on an item now;
    /// `None` for no iterator (or, to remove, no current item).
    fn iterator_step(&self, ex: &mut Exec<'_>, name: &str, remove: bool) -> Option<bool> {
        if remove {
            let (t, id, key) = self.iterator_item(ex, "sht_iterator_rm", name)?;
            self.tables.access(id, &t, &key).del(&key);
        }
        let now = self.tables.now();
        let Some(it) = ex
            .ctx
            .ext
            .get_mut::<Iterators>()
            .and_then(|its| its.get_mut(name))
        else {
            tracing::error!(target: "script", "sht_iterator_next: no iterator `{name}`");
            return None;
        };
        let t = self.tables.get(&self.tables.order[it.table])?;
        let st = lock(t);
        Some(it.advance(|k| st.lookup(k, now).is_some()))
    }

    fn iterator_set(
        &self,
        ex: &mut Exec<'_>,
        fname: &str,
        name: &str,
        kind: ItSet,
        v: Value,
    ) -> i32 {
        let Some((t, id, key)) = self.iterator_item(ex, fname, name) else {
            return -1;
        };
        let now = self.tables.now();
        let mut st = self.tables.access(id, &t, &key);
        let done = match kind {
            ItSet::Str => st.replace(&key, Value::Str(v.to_bytes()), now),
            ItSet::Int => match v.to_int() {
                Some(n) => st.replace(&key, Value::Int(n), now),
                None => {
                    tracing::error!(target: "script", "{fname}: `{}` is no integer", v.to_text());
                    return -1;
                }
            },
            ItSet::Expire => match v.to_int() {
                Some(n) => st.expire_in(&key, n.max(0) as u64, now),
                None => {
                    tracing::error!(target: "script", "{fname}: `{}` is no number of seconds", v.to_text());
                    return -1;
                }
            },
        };
        if done {
            1
        } else {
            tracing::error!(target: "script", "{fname}: `{}` is no longer in the table", String::from_utf8_lossy(&key));
            -1
        }
    }

    fn clone_handle(&self) -> Arc<Htable> {
        Arc::new(Htable {
            tables: self.tables.clone(),
            timer_interval: self.timer_interval,
        })
    }
}

// ---------- RPC ----------

/// Kamailio's `core_hash(name, 0, 1 << size)`: the slot an item is in
/// (`htable.dump`, `htable.stats`, `sht_lock`).
pub fn slot_of(name: &[u8], size: u32) -> u32 {
    core_hash(name) & ((1u32 << size) - 1)
}

/// Kamailio's `core_hash(name, 0, 0)`: an item's hash (its order in a slot).
pub fn core_hash(name: &[u8]) -> u32 {
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
    h.wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23))
}

/// When an item `secs` from now expires, as `htable.get` writes it:
/// `YYYY-MM-DD HH:MM:SS`, in UTC (Kamailio writes local time: the same on
/// a machine that keeps UTC).
pub fn expire_date(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    date_of(now + secs)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn date_of(at: u64) -> String {
    let (year, month, day, rem) = siphon_script::rpc::civil_utc(at);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

/// The table the first parameter names, and its index. The RPCs wait
/// for the slots `sht_lock` holds, as Kamailio's take the slot locks.
fn rpc_table(tables: &Tables, c: &RpcCall) -> Result<(usize, Arc<Mutex<Store>>), RpcFailure> {
    let name = c
        .str(0)
        .ok_or_else(|| fail500("Not enough parameters (htable name)"))?;
    tables
        .named(&name)
        .map(|(id, t)| (id, t.clone()))
        .ok_or_else(|| RpcFailure {
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
            let (id, tb) = rpc_table(&t, c)?;
            let key = rpc_key(c)?;
            let now = t.now();
            let (val, left) = {
                let st = t.access(id, &tb, &key);
                (st.lookup(&key, now), st.expire_left(&key, now))
            };
            let val = val.ok_or(RpcFailure {
                code: 500,
                message: "Key name doesn't exist in htable.".into(),
            })?;
            // Kamailio's cell flags: 2 (AVP_VAL_STR) for a string.
            let flags = if matches!(val, Value::Int(_)) { 0 } else { 2 };
            let expire = match left {
                Some(secs) if secs > 0 => expire_date(secs),
                _ => "NEVER".to_string(),
            };
            Ok(json!({"item": {
                "name": String::from_utf8_lossy(&key),
                "value": json_value(&val),
                "flags": flags,
                "expire": expire,
            }}))
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
                let (id, tb) = rpc_table(&t, c)?;
                let now = t.now();
                t.access(id, &tb, &key).set(key.clone(), val, now);
                ok_text("Ok. Key set to new value.")
            },
        ));
    }
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.delete",
        "Delete one key from a hash table.",
        move |c| {
            let (id, tb) = rpc_table(&t, c)?;
            let key = rpc_key(c)?;
            if !t.access(id, &tb, &key).del(&key) {
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
            let (id, _) = rpc_table(&t, c)?;
            t.walk(id, |st, keep| st.reset_in(keep));
            ok_text("Ok. Htable flushed.")
        },
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.reload",
        "Reload a hash table from its database table (a db_text file).",
        move |c| {
            // Kamailio 5.6's checks, in its order.
            if t.db.is_none() {
                return Err(fail500("No htable db_url"));
            }
            let name = c.str(0).ok_or_else(|| fail500("No htable name given"))?;
            let (id, tb) = t.named(&name).ok_or_else(|| fail500("No such htable"))?;
            if lock(tb).def.dbtable.is_none() {
                return Err(fail500("No database htable"));
            }
            t.load(id).map_err(|e| {
                tracing::error!("htable.reload: {e}");
                fail500("Htable reload failed")
            })?;
            ok_text("Ok. Htable reloaded.")
        },
    ));
    let t = tables.clone();
    v.push(RpcSpec::new(
        "htable.dump",
        "Dump the items of a hash table.",
        move |c| {
            let (id, tb) = rpc_table(&t, c)?;
            let size = lock(&tb).def.size;
            let now = t.now();
            let mut items = Vec::new();
            t.walk(id, |st, keep| items.extend(st.items_in(now, keep)));
            let mut by_slot: std::collections::BTreeMap<u32, Vec<serde_json::Value>> =
                Default::default();
            for (k, val) in items {
                by_slot.entry(slot_of(&k, size)).or_default().push(json!({
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
                            "dbtable": tb.def.dbtable.as_deref().unwrap_or_default(),
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
                    .enumerate()
                    .map(|(i, n)| {
                        let size = lock(&t.tables[n]).def.size;
                        let slots = 1u64 << size;
                        // Items per slot that holds any (a table may have
                        // 2^31 slots).
                        let mut per: HashMap<u32, u64> = HashMap::new();
                        let now = t.now();
                        // The table's index: `order` is walked newest first.
                        let id = t.order.len() - 1 - i;
                        t.walk(id, |st, keep| {
                            for (k, _) in st.items_in(now, keep) {
                                *per.entry(slot_of(&k, size)).or_default() += 1;
                            }
                        });
                        let min = if (per.len() as u64) < slots {
                            0
                        } else {
                            per.values().copied().min().unwrap_or(0)
                        };
                        json!({
                            "name": n,
                            "slots": slots,
                            "all": per.values().sum::<u64>(),
                            "min": min,
                            "max": per.values().copied().max().unwrap_or(0),
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
            item_class("shtitkey", true, t),
            item_class("shtitval", false, t),
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
        let host = cx.host.clone();
        // As Kamailio: an async call in these routes cannot suspend (no
        // transaction), so mod-init has ended when the run returns, before
        // the server takes traffic.
        match host.run_event_route(
            "event_route[htable:mod-init]".into(),
            EventSuspend::Refuse,
            Box::new(|_| Ok(())),
        ) {
            Ok(_) | Err(RunError::NoRoute(_)) => {}
            Err(e) => tracing::error!("event_route[htable:mod-init] does not run: {e}"),
        }
        let tables = self.tables.clone();
        let every = std::time::Duration::from_secs(self.timer_interval);
        let stop = cx.host.shutdown();
        let expired_routes: HashMap<String, _> = tables
            .order
            .iter()
            .filter_map(|n| {
                host.find_route(&format!("event_route[htable:expired:{n}]"))
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
                            let run = host.run_event_route(
                                (*route).into(),
                                EventSuspend::Refuse,
                                Box::new(move |ctx| {
                                    ctx.ext.insert(Expired(k, v));
                                    Ok(())
                                }),
                            );
                            if let Err(e) = run {
                                tracing::error!(
                                    "event_route[htable:expired:{n}] does not run: {e}"
                                );
                            }
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
