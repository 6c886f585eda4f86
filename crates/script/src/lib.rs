//! siphon's route engine.
//!
//! A configuration parsed by `siphon-cfg` is compiled once, against the
//! modules it loads, into an immutable [`Program`]; the core and the modules
//! then run its routes over a [`Ctx`] as SIP messages and events arrive.
//! Running a route is synchronous and never blocks: a function that needs an
//! external application suspends the transaction ([`api::FnResult::Suspend`])
//! and the host resumes it later in a named route.
//!
//! Modules run no route themselves: their event routes
//! (`event_route[xhttp:request]`, `event_route[evapi:message-received]`, an
//! async call's `route[NAME]` when nothing could be suspended) run through
//! the host ([`api::Host::run_event_route`]), which keeps one
//! [`event_run::EventRunner`] over the program. A run may be allowed to
//! suspend without a transaction ([`api::EventSuspend::Park`]): the runner
//! parks its context, the async call's resumer (or [`api::Host::resume`]
//! with its [`api::SuspensionId`]) continues it exactly once, and the
//! module gets the route's end when it comes ([`api::PendingRun`]).
//!
//! The module API ([`api`], with [`http`] and [`net`]) lives here so that
//! each module crate depends on this crate only, never on the core or on
//! another module: what two modules share (the HTTP exchange, the peer a
//! message came from) is defined here, and what a module needs of the core
//! at run time comes through the host handle it gets at start
//! ([`api::StartCx`], [`api::Host`]).

#![warn(missing_docs)]

pub mod api;
mod compile;
pub mod core;
pub mod ctx;
pub mod event_run;
pub mod evi;
pub mod http;
pub mod interp;
pub mod jansson;
pub mod net;
pub mod pv;
pub mod rpc;
pub mod sip;
pub mod value;

pub use api::{
    ArgKind, Args, FnResult, FunctionSpec, Module, ModuleConfig, ModuleDef, ParamSpec, PvClassSpec,
    RouteTable,
};
pub use ctx::{Ctx, RouteType, RunEnd};
pub use interp::{Exec, Outcome};
pub use value::Value;

use siphon_cfg::ast::RouteKind;
use siphon_cfg::{Diagnostic, Loader, PreOptions, SourceMap};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

/// Index of a route in a [`Program`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub u32);

/// Callbacks the core gives the compiler.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Whether a URI or address is one of ours (`uri == myself`).
    pub myself: Option<MyselfCheck>,
}

/// Tells whether an address or URI is one of this server's.
pub type MyselfCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The modules, functions and PV classes a configuration can use.
#[derive(Clone)]
pub struct Registry {
    defs: Vec<ModuleDef>,
    /// Functions available without `loadmodule` (core, sl, tm, textops…).
    pub core_functions: Vec<FunctionSpec>,
    /// PV classes available without `loadmodule`.
    pub core_pvs: Vec<PvClassSpec>,
    /// Event routes the core raises (`core:worker-one-init`…).
    pub core_events: Vec<String>,
    /// RPC commands of the core (each module adds its own through [`Module::rpc_commands`]).
    pub core_rpcs: Vec<rpc::RpcSpec>,
    /// Statistics of the core (each module adds its own through [`Module::stats`]).
    pub stat_sources: Vec<Arc<dyn rpc::StatSource>>,
    /// Core callbacks.
    pub hooks: Hooks,
    /// The event interface the program will raise events through.
    pub evi: Arc<evi::Evi>,
    /// Modules refused with a reason ([`Registry::refuse`]).
    refused: Vec<api::RefusedModule>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The core alone: core functions and the modules kept in the core.
    pub fn new() -> Self {
        let evi = Arc::new(evi::Evi::new());
        let mut core_functions = core::core_functions();
        core_functions.extend(evi::script_functions(&evi));
        core_functions.extend(jansson::functions());
        let mut core_rpcs = rpc::builtin_commands();
        core_rpcs.extend(evi::rpc_commands());
        let stat_sources: Vec<Arc<dyn rpc::StatSource>> =
            vec![Arc::new(evi::EviStats(evi.clone()))];
        Registry {
            defs: core::core_modules(),
            core_functions,
            core_pvs: vec![],
            core_events: vec![],
            core_rpcs,
            stat_sources,
            hooks: Hooks::default(),
            evi,
            refused: Vec::new(),
        }
    }
    /// Adds (or replaces) a module definition.
    pub fn add(&mut self, def: ModuleDef) {
        self.defs.retain(|d| d.name != def.name);
        self.defs.push(def);
    }
    /// Refuses a module siphon does not have with its reason
    /// (`loadmodule "rtpproxy.so"`: siphon relays no media).
    pub fn refuse(&mut self, module: api::RefusedModule) {
        self.refused.retain(|r| r.name != module.name);
        self.refused.push(module);
    }
    /// Every refused module.
    pub fn refused_modules(&self) -> &[api::RefusedModule] {
        &self.refused
    }
    /// A refused module by name.
    pub fn refused(&self, name: &str) -> Option<&api::RefusedModule> {
        self.refused.iter().find(|r| r.name == name)
    }
    /// The definition of a module.
    pub fn def(&self, name: &str) -> Option<&ModuleDef> {
        self.defs.iter().find(|d| d.name == name)
    }
    /// All module definitions.
    pub fn defs(&self) -> &[ModuleDef] {
        &self.defs
    }
    /// Module names, sorted.
    pub fn module_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.defs.iter().map(|d| d.name).collect();
        v.sort_unstable();
        v
    }
}

/// Process-wide `$shv` values, shared by all workers.
#[derive(Debug)]
pub struct SharedVars {
    names: Vec<String>,
    slots: Vec<Mutex<Value>>,
}

impl SharedVars {
    fn new(names: Vec<String>) -> Self {
        let slots = names.iter().map(|_| Mutex::new(Value::Null)).collect();
        SharedVars { names, slots }
    }
    fn get(&self, slot: usize) -> Value {
        self.slots[slot]
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
    fn set(&self, slot: usize, v: Value) {
        if let Ok(mut g) = self.slots[slot].lock() {
            *g = v;
        }
    }
    /// Reads a `$shv` by name (`None` if the script never names it).
    pub fn get_by_name(&self, name: &str) -> Option<Value> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.get(i))
    }
    /// Writes a `$shv` by name; false if the script never names it.
    pub fn set_by_name(&self, name: &str, v: Value) -> bool {
        match self.names.iter().position(|n| n == name) {
            Some(i) => {
                self.set(i, v);
                true
            }
            None => false,
        }
    }
}

/// The configuration's custom settings (`pstn.gw_ip = "" desc "…"`): read
/// with `$sel(cfg_get.pstn.gw_ip)`, changed at run time by cfg_rpc.
#[derive(Debug, Default)]
pub struct CustomCfg {
    vars: Vec<CustomVar>,
}

/// One custom setting.
#[derive(Debug)]
pub struct CustomVar {
    /// Its group (`pstn`).
    pub group: String,
    /// Its name (`gw_ip`).
    pub name: String,
    /// The `desc` text.
    pub desc: String,
    value: Mutex<Value>,
}

impl CustomCfg {
    pub(crate) fn new(vars: Vec<(String, String, String, Value)>) -> Self {
        CustomCfg {
            vars: vars
                .into_iter()
                .map(|(group, name, desc, v)| CustomVar {
                    group,
                    name,
                    desc,
                    value: Mutex::new(v),
                })
                .collect(),
        }
    }
    /// The settings, in the order declared.
    pub fn vars(&self) -> &[CustomVar] {
        &self.vars
    }
    /// The index of `group.name`.
    pub fn find(&self, group: &str, name: &str) -> Option<usize> {
        self.vars
            .iter()
            .position(|v| v.group == group && v.name == name)
    }
    /// The value of setting `i`.
    pub fn get(&self, i: usize) -> Value {
        self.vars
            .get(i)
            .and_then(|v| v.value.lock().ok().map(|g| g.clone()))
            .unwrap_or_default()
    }
    /// Sets setting `i`: an integer setting takes integers only, a string
    /// one any value as text (Kamailio's types).
    pub fn set(&self, i: usize, v: Value) -> Result<(), String> {
        let var = self.vars.get(i).ok_or("no such setting")?;
        let mut g = var.value.lock().map_err(|_| "poisoned")?;
        *g = match (&*g, v) {
            (Value::Int(_), v) => Value::Int(
                v.to_int()
                    .ok_or_else(|| format!("{}.{} takes an integer", var.group, var.name))?,
            ),
            (_, v) => Value::Str(v.to_bytes()),
        };
        Ok(())
    }
}

/// Counters of the route engine.
#[derive(Debug, Default)]
pub struct ScriptStats {
    /// `while` loops stopped by `max_while_loops`.
    pub while_limit_hits: AtomicU64,
}

pub(crate) struct RouteCode {
    name: String,
    display: String,
    kind: RouteKind,
    body: Vec<interp::Stmt>,
}

/// A compiled configuration: immutable, shared by all workers.
pub struct Program {
    routes: Vec<RouteCode>,
    tables: HashMap<RouteTable, HashMap<String, RouteId>>,
    events: HashMap<String, RouteId>,
    request: Option<RouteId>,
    reply: Option<RouteId>,
    startup: Option<RouteId>,
    var_names: Vec<Arc<str>>,
    var_init: Vec<Value>,
    shared: SharedVars,
    custom: CustomCfg,
    /// The core parameters.
    pub core: core::CoreParams,
    hooks: Hooks,
    modules: Vec<(String, Arc<dyn Module>)>,
    log_prefix: Option<pv::Fmt>,
    /// Each module's [`Module::formats`], compiled.
    module_formats: HashMap<String, Vec<pv::Fmt>>,
    regex_cache: Mutex<HashMap<String, Arc<regex::bytes::Regex>>>,
    /// Engine counters.
    pub stats: ScriptStats,
    rpcs: HashMap<&'static str, rpc::RpcSpec>,
    started: std::time::SystemTime,
    stat_sources: Vec<Arc<dyn rpc::StatSource>>,
    evi: Arc<evi::Evi>,
    /// This program once shared ([`Program::into_shared`]): what a script
    /// function hands the I/O it starts ([`Program::to_shared`]), so no
    /// module keeps a copy filled in late.
    me: Weak<Program>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("routes", &self.routes.len())
            .field("modules", &self.module_names())
            .finish()
    }
}

const REGEX_CACHE_MAX: usize = 256;

impl Program {
    /// The program, shared by the host, the modules and the I/O they start.
    pub fn into_shared(self) -> Arc<Program> {
        Arc::new_cyclic(|me| Program {
            me: me.clone(),
            ..self
        })
    }

    /// The shared handle on this program, for a script function to give the
    /// work it starts (a suspension's resume, an asynchronous RPC answer);
    /// `None` when it was not made with [`Program::into_shared`].
    pub fn to_shared(&self) -> Option<Arc<Program>> {
        self.me.upgrade()
    }

    /// The format strings `module` asked for ([`Module::formats`]),
    /// compiled, in its order; to expand with [`Exec::fmt`].
    pub fn module_formats(&self, module: &str) -> &[pv::Fmt] {
        self.module_formats.get(module).map_or(&[], Vec::as_slice)
    }

    /// A fresh context for a run of the given kind.
    pub fn new_ctx(&self, route_type: RouteType) -> Ctx {
        let mut c = Ctx::new(route_type, 0);
        c.vars = self.var_init.clone();
        c
    }

    /// Runs a route over `ctx` as the top of a script run.
    pub fn run(&self, route: RouteId, ctx: &mut Ctx) -> Outcome {
        if ctx.vars.len() < self.var_init.len() {
            ctx.vars.resize(self.var_init.len(), Value::Int(0));
        }
        Exec::new(self, ctx).run_top(route)
    }

    /// `request_route` (or OpenSIPS' `route { }`).
    pub fn request_route(&self) -> Option<RouteId> {
        self.request
    }
    /// `reply_route` / unnamed `onreply_route`.
    pub fn reply_route(&self) -> Option<RouteId> {
        self.reply
    }
    /// `startup_route`.
    pub fn startup_route(&self) -> Option<RouteId> {
        self.startup
    }
    /// `event_route[name]`.
    pub fn event_route(&self, name: &str) -> Option<RouteId> {
        self.events.get(name).copied()
    }
    /// A route of a table by name.
    pub fn route_by_name(&self, table: RouteTable, name: &str) -> Option<RouteId> {
        self.tables.get(&table)?.get(name).copied()
    }
    /// A route by the name it has in the configuration:
    /// `event_route[xhttp:request]`, `route[NAME]`, `failure_route[NAME]`,
    /// `onreply_route[NAME]`, `branch_route[NAME]` (the name in brackets may
    /// be quoted).
    pub fn find_route(&self, name: &str) -> Option<RouteId> {
        let (kind, inner) = name.trim().strip_suffix(']')?.split_once('[')?;
        let inner = inner.trim().trim_matches('"');
        match kind.trim() {
            "event_route" => self.event_route(inner),
            "route" => self.route_by_name(RouteTable::Named, inner),
            "failure_route" => self.route_by_name(RouteTable::Failure, inner),
            "onreply_route" => self.route_by_name(RouteTable::OnReply, inner),
            "branch_route" => self.route_by_name(RouteTable::Branch, inner),
            _ => None,
        }
    }
    /// Whether `id` is a route of this program.
    pub fn has_route(&self, id: RouteId) -> bool {
        (id.0 as usize) < self.routes.len()
    }
    /// A route's name (`RESPONSE`, `request_route`, `evapi:message-received`).
    pub fn route_name(&self, id: RouteId) -> &str {
        &self.routes[id.0 as usize].name
    }
    /// The `$var` names, by slot.
    pub fn var_names(&self) -> &[Arc<str>] {
        &self.var_names
    }
    /// The slot of `$var(name)`, if the script names it.
    pub fn var_slot(&self, name: &str) -> Option<usize> {
        self.var_names.iter().position(|n| &**n == name)
    }
    /// The custom settings (`$sel(cfg_get.group.name)`).
    pub fn custom_cfg(&self) -> &CustomCfg {
        &self.custom
    }
    /// `$shv` storage.
    pub fn shared(&self) -> &SharedVars {
        &self.shared
    }
    /// Names of the loaded modules, in load order.
    pub fn module_names(&self) -> Vec<&str> {
        self.modules.iter().map(|(n, _)| n.as_str()).collect()
    }
    /// The loaded modules.
    pub fn modules(&self) -> &[(String, Arc<dyn Module>)] {
        &self.modules
    }
    /// The event interface.
    pub fn evi(&self) -> &Arc<evi::Evi> {
        &self.evi
    }
    /// An RPC command by name.
    pub fn rpc(&self, name: &str) -> Option<&rpc::RpcSpec> {
        self.rpcs.get(name)
    }
    /// Every RPC command name, sorted.
    pub fn rpc_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.rpcs.keys().copied().collect();
        v.sort_unstable();
        v
    }
    /// Every statistic of the core and the modules, `(group:name, value)`.
    pub fn stat_snapshot(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .stat_sources
            .iter()
            .flat_map(|s| s.snapshot())
            .collect();
        v.push((
            "script:while_limit_hits".into(),
            self.stats
                .while_limit_hits
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        ));
        v
    }
    /// The statistics sources.
    pub fn stat_sources(&self) -> &[Arc<dyn rpc::StatSource>] {
        &self.stat_sources
    }
    /// When the program was built (`core.uptime`).
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }
    /// Whether a URI or address is one of this server's (`uri == myself`;
    /// false when the host gave no check).
    pub fn is_myself(&self, v: &[u8]) -> bool {
        self.hooks.myself.as_ref().is_some_and(|f| f(v))
    }
    /// A loaded module by its concrete type.
    pub fn module<T: Module>(&self) -> Option<&T> {
        self.modules
            .iter()
            .find_map(|(_, m)| m.as_any().downcast_ref::<T>())
    }

    fn dynamic_regex(&self, pat: &str) -> Option<Arc<regex::bytes::Regex>> {
        let mut cache = self.regex_cache.lock().ok()?;
        if let Some(re) = cache.get(pat) {
            return Some(re.clone());
        }
        let re = Arc::new(compile::build_regex(pat).ok()?);
        if cache.len() >= REGEX_CACHE_MAX {
            cache.clear();
        }
        cache.insert(pat.to_string(), re.clone());
        Some(re)
    }
}

/// What [`load`] produced.
pub struct Loaded {
    /// The program, when there was no error.
    pub program: Option<Program>,
    /// The files read (to render diagnostics).
    pub sources: SourceMap,
    /// Errors and warnings, in the order found.
    pub diags: Vec<Diagnostic>,
}

/// Reads, parses and compiles a configuration.
pub fn load(
    root: impl Into<PathBuf>,
    loader: &dyn Loader,
    opts: &PreOptions,
    registry: &Registry,
) -> Loaded {
    let parsed = siphon_cfg::parse_config(root, loader, opts);
    finish_load(parsed, registry)
}

/// Parses and compiles a configuration held in a string.
pub fn load_str(name: &str, text: &str, opts: &PreOptions, registry: &Registry) -> Loaded {
    finish_load(siphon_cfg::parse_str(name, text, opts), registry)
}

fn finish_load(parsed: siphon_cfg::Parsed, registry: &Registry) -> Loaded {
    let mut diags = parsed.diags;
    if diags.iter().any(Diagnostic::is_error) {
        return Loaded {
            program: None,
            sources: parsed.sources,
            diags,
        };
    }
    match compile::compile(&parsed.config, registry) {
        Ok((p, mut warnings)) => {
            diags.append(&mut warnings);
            Loaded {
                program: Some(p),
                sources: parsed.sources,
                diags,
            }
        }
        Err(mut d) => {
            diags.append(&mut d);
            Loaded {
                program: None,
                sources: parsed.sources,
                diags,
            }
        }
    }
}

#[cfg(test)]
mod tests;
