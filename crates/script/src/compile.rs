//! Compiles a configuration's syntax tree against the loaded modules into an
//! immutable [`Program`]: functions bound to their implementations with fixed
//! arguments, PVs resolved, regexes compiled, route names turned into indices.
//! Every problem becomes a [`Diagnostic`] at the place it was written.

use crate::api::*;
use crate::core::CoreParams;
use crate::ctx::RouteType;
use crate::interp::{CExpr, CallSite, Stmt, fold};
use crate::pv::{Fmt, FmtPart, Pv, PvIndexC, PvKind, TRANSFORMS, TrArg, Trans};
use crate::value::Value;
use crate::{Hooks, Program, Registry, RouteCode, RouteId, SharedVars};
use bytes::Bytes;
use siphon_cfg::ast::{self, BinOp, Config, ExprKind, Item, RouteKind, StmtKind, UnOp};
use siphon_cfg::diag::did_you_mean;
use siphon_cfg::pv::{PvIndex, PvSyntax, TrParam, parse_format, parse_pv};
use siphon_cfg::{Diagnostic, Span, Spanned};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Keywords usable as operands in conditions, and the PV each one reads.
const KEYWORD_PVS: &[(&str, &str)] = &[
    ("method", "rm"),
    ("uri", "ru"),
    ("src_ip", "si"),
    ("src_port", "sp"),
    ("dst_ip", "Ri"),
    ("dst_port", "Rp"),
    ("proto", "pr"),
    ("status", "rs"),
    ("from_uri", "fu"),
    ("to_uri", "tu"),
];

const PROTOCOLS: &[&str] = &[
    "UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "tcp", "tls", "sctp", "ws", "wss",
];

/// What to do about a refused module's `loadmodule`.
fn refused_help(r: &RefusedModule) -> String {
    let mut calls: Vec<&str> = r.functions.iter().take(3).copied().collect();
    if r.functions.len() > 3 {
        calls.push("…");
    }
    format!(
        "remove this loadmodule, the module's modparams and the calls to its functions ({})",
        calls.join(", ")
    )
}

/// Whether a `modparam` module name is a pattern (`nathelper|registrar`)
/// rather than a name.
fn is_module_regex(name: &str) -> bool {
    !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

struct RouteCall {
    route: RouteId,
    mask: RouteType,
    name: &'static str,
    span: Span,
}

pub(crate) struct Compiler<'r> {
    reg: &'r Registry,
    diags: Vec<Diagnostic>,
    core: CoreParams,
    loaded: Vec<(String, Span)>,
    /// Refused modules the configuration loads (already reported at `loadmodule`).
    refused_loaded: Vec<String>,
    modcfg: HashMap<String, ModuleConfig>,
    instances: Vec<(String, Arc<dyn Module>)>,
    functions: HashMap<&'static str, FunctionSpec>,
    pv_classes: HashMap<&'static str, PvClassSpec>,
    var_slots: HashMap<String, usize>,
    shv_slots: HashMap<String, usize>,
    routes: Vec<RouteCode>,
    tables: HashMap<RouteTable, HashMap<String, RouteId>>,
    events: HashMap<String, RouteId>,
    request: Option<RouteId>,
    reply: Option<RouteId>,
    startup: Option<RouteId>,
    current: RouteId,
    calls: Vec<RouteCall>,
    edges: Vec<(RouteId, RouteId)>,
    resume_targets: HashSet<RouteId>,
    loop_depth: usize,
    pv_params: ModuleConfig,
    /// Custom settings: group, name, description, value.
    custom: Vec<(String, String, String, Value)>,
}

/// Compiles `cfg`; returns the program and warnings, or every diagnostic when
/// there are errors.
pub(crate) fn compile(
    cfg: &Config,
    reg: &Registry,
) -> Result<(Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut c = Compiler {
        reg,
        diags: vec![],
        core: CoreParams::default(),
        loaded: vec![],
        refused_loaded: vec![],
        modcfg: HashMap::new(),
        instances: vec![],
        functions: HashMap::new(),
        pv_classes: HashMap::new(),
        var_slots: HashMap::new(),
        shv_slots: HashMap::new(),
        routes: vec![],
        tables: HashMap::new(),
        events: HashMap::new(),
        request: None,
        reply: None,
        startup: None,
        current: RouteId(0),
        calls: vec![],
        edges: vec![],
        resume_targets: HashSet::new(),
        loop_depth: 0,
        pv_params: ModuleConfig::default(),
        custom: vec![],
    };
    c.globals(cfg);
    c.modules(cfg);
    c.declare_routes(cfg);
    c.bodies(cfg);
    c.check_route_types();
    if c.diags.iter().any(Diagnostic::is_error) {
        return Err(c.diags);
    }
    // Building the program checks what only it sees (the `log_prefix`
    // format, `shvset`/`varset` values): an error there fails the load too.
    let (prog, diags) = c.finish();
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok((prog, diags))
}

impl Compiler<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(span, msg));
    }

    // ---------- globals and modules ----------

    fn globals(&mut self, cfg: &Config) {
        for item in &cfg.items {
            if let Item::CustomCfg(c) = item {
                let (g, n) = (&c.group.node, &c.name.node);
                if self.custom.iter().any(|(cg, cn, ..)| cg == g && cn == n) {
                    self.err(
                        c.name.span,
                        format!("custom setting `{g}.{n}` is declared twice"),
                    );
                    continue;
                }
                let v = match &c.value.node {
                    ast::ParamValue::Int(i) => Value::Int(*i),
                    ast::ParamValue::Str(s) => Value::from(s.clone()),
                };
                let desc = c.desc.clone().unwrap_or_default();
                self.custom.push((g.clone(), n.clone(), desc, v));
            }
        }
        for item in &cfg.items {
            if let Item::Global(g) = item
                && let Err(d) = self.core.apply(&g.name, &g.value)
            {
                self.diags.push(d);
            }
        }
        for (name, span) in std::mem::take(&mut self.core.ignored) {
            self.diags.push(Diagnostic::warning(
                span,
                format!(
                    "core parameter `{name}` has no effect in siphon (accepted for compatibility)"
                ),
            ));
        }
    }

    fn modules(&mut self, cfg: &Config) {
        for item in &cfg.items {
            match item {
                Item::LoadModule(path) => {
                    let name = module_name(&path.node);
                    if self.reg.def(&name).is_none()
                        && let Some(r) = self.reg.refused(&name)
                    {
                        let mut d = Diagnostic::error(
                            path.span,
                            format!("module `{name}` is not available in siphon: {}", r.reason),
                        )
                        .help(refused_help(r));
                        if let Some(g) = cfg.guards.of(path.span) {
                            d = d.note(format!("loaded because {}", g.reason()));
                        }
                        self.diags.push(d);
                        self.refused_loaded.push(name);
                        continue;
                    }
                    match self.reg.def(&name) {
                        Some(_) if self.loaded.iter().any(|(n, _)| *n == name) => {
                            self.diags.push(Diagnostic::warning(
                                path.span,
                                format!("module `{name}` is loaded twice"),
                            ));
                        }
                        Some(_) => {
                            self.loaded.push((name.clone(), path.span));
                            self.modcfg.insert(
                                name,
                                ModuleConfig {
                                    core: self.core.clone(),
                                    ..Default::default()
                                },
                            );
                        }
                        None => {
                            let names = self.reg.module_names();
                            let mut d = Diagnostic::error(
                                path.span,
                                format!("module `{name}` is not available in siphon"),
                            );
                            if let Some(s) = did_you_mean(&name, names.iter().copied()) {
                                d = d.help(format!("did you mean `{s}`?"));
                            }
                            if let Some(g) = cfg.guards.of(path.span) {
                                d = d.note(format!("loaded because {}", g.reason()));
                            }
                            d = d.note(format!("siphon has: {}", names.join(", ")));
                            self.diags.push(d);
                        }
                    }
                }
                Item::ModParam(mp) => self.modparam(mp),
                _ => {}
            }
        }
        // Core functions and PVs (always there), then each loaded module's.
        for f in &self.reg.core_functions {
            self.functions.insert(f.name, f.clone());
        }
        for p in &self.reg.core_pvs {
            self.pv_classes.insert(p.name, p.clone());
        }
        for (name, span) in self.loaded.clone() {
            let def = self.reg.def(&name).expect("checked at loadmodule");
            let mcfg = self.modcfg.remove(&name).unwrap_or_default();
            if name == "pv" {
                self.pv_params = mcfg.clone();
            }
            match (def.instantiate)(&mcfg) {
                Ok(m) => {
                    for f in m.functions() {
                        self.functions.insert(f.name, f);
                    }
                    for p in m.pv_classes() {
                        self.pv_classes.insert(p.name, p);
                    }
                    self.instances.push((name, m));
                }
                Err(e) => self.err(
                    span,
                    format!("module `{name}` cannot start with this configuration: {e}"),
                ),
            }
        }
    }

    fn modparam(&mut self, mp: &ast::ModParam) {
        let name = mp.module.node.as_str();
        if let Some(r) = self.reg.refused(name) {
            // Its loadmodule already said why; a modparam without one says it here.
            if !self.refused_loaded.iter().any(|n| n == name) {
                self.err(
                    mp.module.span,
                    format!(
                        "`modparam` for module `{name}`, which is not available in siphon: {}",
                        r.reason
                    ),
                );
            }
            return;
        }
        if self.reg.def(name).is_none() && is_module_regex(name) {
            self.modparam_regex(mp);
            return;
        }
        self.modparam_of(name, mp);
    }

    /// Kamailio's `modparam("nathelper|registrar", …)`: the module name is a
    /// regular expression (`^(…)$`, case-insensitive) over the modules loaded
    /// so far; the parameter goes to each that matches, which must have it.
    fn modparam_regex(&mut self, mp: &ast::ModParam) {
        let pat = mp.module.node.as_str();
        let re = match regex::RegexBuilder::new(&format!("^({pat})$"))
            .case_insensitive(true)
            .build()
        {
            Ok(re) => re,
            Err(e) => {
                self.err(
                    mp.module.span,
                    format!("`modparam` module pattern `{pat}` is not a regular expression: {e}"),
                );
                return;
            }
        };
        let matching: Vec<String> = self
            .loaded
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| re.is_match(n))
            .collect();
        // A refused module it matches was reported at its loadmodule.
        let refused = self.refused_loaded.iter().any(|n| re.is_match(n));
        if matching.is_empty() && !refused {
            self.err(
                mp.module.span,
                format!("`modparam` for `{pat}`: no loaded module matches it"),
            );
        }
        for name in matching {
            self.modparam_of(&name, mp);
        }
    }

    fn modparam_of(&mut self, name: &str, mp: &ast::ModParam) {
        let Some(def) = self.reg.def(name) else {
            let mut d = Diagnostic::error(
                mp.module.span,
                format!("`modparam` for unknown module `{name}`"),
            );
            if let Some(s) = did_you_mean(name, self.reg.module_names()) {
                d = d.help(format!("did you mean `{s}`?"));
            }
            self.diags.push(d);
            return;
        };
        if !self.loaded.iter().any(|(n, _)| n == name) {
            self.diags.push(
                Diagnostic::error(
                    mp.module.span,
                    format!("`modparam` for module `{name}`, which is not loaded"),
                )
                .help(format!("add `loadmodule \"{name}.so\"` before this line")),
            );
            return;
        }
        let pname = mp.param.node.as_str();
        let Some(spec) = def.params.iter().find(|p| p.name == pname) else {
            let mut d = Diagnostic::error(
                mp.param.span,
                format!("module `{name}` has no parameter `{pname}`"),
            );
            if let Some(s) = did_you_mean(pname, def.params.iter().map(|p| p.name)) {
                d = d.help(format!("did you mean `{s}`?"));
            } else if !def.params.is_empty() {
                d = d.note(format!(
                    "its parameters: {}",
                    def.params
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            self.diags.push(d);
            return;
        };
        let value = match (&mp.value.node, spec.kind) {
            (ast::ParamValue::Int(n), _) => ParamValue::Int(*n),
            (ast::ParamValue::Str(s), ParamKind::Int) => match s.trim().parse::<i64>() {
                Ok(n) => ParamValue::Int(n),
                Err(_) => {
                    self.err(mp.value.span, format!("`{pname}` of module `{name}` takes an integer, found the string \"{s}\""));
                    return;
                }
            },
            (ast::ParamValue::Str(s), _) => ParamValue::Str(s.clone()),
        };
        if let Some(check) = spec.check
            && let Err(e) = check(&value)
        {
            self.err(mp.value.span, format!("`{pname}` of module `{name}`: {e}"));
            return;
        }
        if spec.no_effect {
            self.diags.push(Diagnostic::warning(mp.param.span, format!("`{pname}` of module `{name}` has no effect in siphon (accepted for compatibility)")));
        }
        let values = self
            .modcfg
            .entry(name.to_string())
            .or_default()
            .params
            .entry(pname.to_string())
            .or_default();
        if !spec.multi {
            values.clear();
        }
        values.push(value);
    }

    // ---------- routes ----------

    fn declare_routes(&mut self, cfg: &Config) {
        let event_names: HashMap<String, Vec<&'static str>> = self
            .instances
            .iter()
            .map(|(n, m)| (n.clone(), m.event_routes()))
            .collect();
        for item in &cfg.items {
            let Item::Route(r) = item else { continue };
            let id = RouteId(self.routes.len() as u32);
            let name = r.name.as_ref().map(|n| n.node.clone());
            let display = match &name {
                Some(n) => format!("{}[{n}]", r.kind.keyword()),
                None => r.kind.keyword().to_string(),
            };
            self.routes.push(RouteCode {
                name: name.clone().unwrap_or_else(|| r.kind.keyword().into()),
                display,
                kind: r.kind,
                body: vec![],
            });
            let span = r.name.as_ref().map_or(r.span, |n| n.span);
            let single = |slot: &mut Option<RouteId>, diags: &mut Vec<Diagnostic>| {
                if slot.is_some() {
                    diags.push(Diagnostic::error(
                        span,
                        format!("`{}` is defined twice", r.kind.keyword()),
                    ));
                }
                *slot = Some(id);
            };
            match r.kind {
                RouteKind::Request => single(&mut self.request, &mut self.diags),
                RouteKind::Reply => single(&mut self.reply, &mut self.diags),
                RouteKind::Startup => single(&mut self.startup, &mut self.diags),
                RouteKind::OnReply if name.is_none() => single(&mut self.reply, &mut self.diags),
                RouteKind::Event => {
                    let n = name.unwrap_or_default();
                    if self.events.insert(n.clone(), id).is_some() {
                        self.err(span, format!("`event_route[{n}]` is defined twice"));
                    }
                    self.check_event_name(&n, span, &event_names);
                }
                kind => {
                    let table = match kind {
                        RouteKind::Failure => RouteTable::Failure,
                        RouteKind::OnReply => RouteTable::OnReply,
                        RouteKind::Branch => RouteTable::Branch,
                        _ => RouteTable::Named,
                    };
                    let n = name.unwrap_or_default();
                    if self
                        .tables
                        .entry(table)
                        .or_default()
                        .insert(n.clone(), id)
                        .is_some()
                    {
                        self.err(span, format!("`{}[{n}]` is defined twice", kind.keyword()));
                    }
                }
            }
        }
    }

    fn check_event_name(
        &mut self,
        name: &str,
        span: Span,
        known: &HashMap<String, Vec<&'static str>>,
    ) {
        let module = name.split(':').next().unwrap_or("");
        if let Some(events) = known.get(module) {
            if !events.contains(&name) && !events.is_empty() {
                let mut d = Diagnostic::error(
                    span,
                    format!("module `{module}` has no event route `{name}`"),
                );
                if let Some(s) = did_you_mean(name, events.iter().copied()) {
                    d = d.help(format!("did you mean `{s}`?"));
                }
                self.diags.push(d);
            }
        } else if !self.reg.core_events.iter().any(|e| e == name) {
            self.diags.push(Diagnostic::warning(
                span,
                format!("`event_route[{name}]` will never run: no loaded module raises it"),
            ));
        }
    }

    fn bodies(&mut self, cfg: &Config) {
        let mut idx = 0;
        for item in &cfg.items {
            let Item::Route(r) = item else { continue };
            self.current = RouteId(idx);
            self.loop_depth = 0;
            let body = self.block(&r.body);
            self.routes[idx as usize].body = body;
            idx += 1;
        }
    }

    fn route_type_of(kind: RouteKind) -> RouteType {
        match kind {
            RouteKind::Request => RouteType::REQUEST,
            RouteKind::Failure => RouteType::FAILURE,
            RouteKind::OnReply | RouteKind::Reply => RouteType::ONREPLY,
            RouteKind::Branch => RouteType::BRANCH,
            RouteKind::Event => RouteType::EVENT,
            RouteKind::Startup => RouteType::STARTUP,
            RouteKind::Named => RouteType(0),
        }
    }

    /// Each named route gets the route types of its callers; a function used
    /// where it is not allowed is an error.
    fn check_route_types(&mut self) {
        let mut types: Vec<RouteType> = self
            .routes
            .iter()
            .map(|r| Self::route_type_of(r.kind))
            .collect();
        loop {
            let mut changed = false;
            for &(from, to) in &self.edges {
                let t = types[to.0 as usize].or(types[from.0 as usize]);
                if t != types[to.0 as usize] && self.routes[to.0 as usize].kind == RouteKind::Named
                {
                    types[to.0 as usize] = t;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for c in &self.calls {
            if self.resume_targets.contains(&c.route) {
                continue;
            }
            let t = types[c.route.0 as usize];
            if t.0 != 0 && !c.mask.intersects(t) {
                let used = RouteType(t.0 & !c.mask.0).names().join(", ");
                self.diags.push(
                    Diagnostic::error(
                        c.span,
                        format!(
                            "`{}` cannot be used in {used} (it runs in `{}`)",
                            c.name, self.routes[c.route.0 as usize].display
                        ),
                    )
                    .note(format!(
                        "`{}` is allowed in: {}",
                        c.name,
                        c.mask.names().join(", ")
                    )),
                );
            }
        }
    }

    fn finish(mut self) -> (Program, Vec<Diagnostic>) {
        let mut var_names = vec![Arc::<str>::from(""); self.var_slots.len()];
        for (n, &i) in &self.var_slots {
            var_names[i] = n.as_str().into();
        }
        // modparam("pv", "shvset"/"varset", "name=i:1" | "name=s:text"): initial values.
        let mut shv_init = Vec::new();
        let mut var_init_named = Vec::new();
        for (param, is_shv) in [("shvset", true), ("varset", false)] {
            for v in self.pv_params.all(param) {
                let ParamValue::Str(text) = v else { continue };
                match parse_initial(text) {
                    Some((name, value)) if is_shv => shv_init.push((name, value)),
                    Some((name, value)) => var_init_named.push((name, value)),
                    None => self.diags.push(Diagnostic::global(format!(
                        "bad `{param}` value \"{text}\": expected \"name=i:123\" or \"name=s:text\""
                    ))),
                }
            }
        }
        for (name, _) in &shv_init {
            let next = self.shv_slots.len();
            self.shv_slots.entry(name.clone()).or_insert(next);
        }
        // Format strings modules take from their parameters (acc's
        // `log_extra`), compiled now that every PV class is known.
        let mut module_formats = HashMap::new();
        for (name, m) in self.instances.clone() {
            let span = self
                .loaded
                .iter()
                .find(|(n, _)| *n == name)
                .map_or_else(Span::default, |(_, s)| *s);
            let fmts: Vec<Fmt> = m
                .formats()
                .iter()
                .filter_map(|f| self.format(f, span))
                .collect();
            if !fmts.is_empty() {
                module_formats.insert(name, fmts);
            }
        }
        let mut var_names = vec![Arc::<str>::from(""); self.var_slots.len()];
        for (n, &i) in &self.var_slots {
            var_names[i] = n.as_str().into();
        }
        let mut shv_names = vec![String::new(); self.shv_slots.len()];
        for (n, &i) in &self.shv_slots {
            shv_names[i] = n.clone();
        }
        let log_prefix = self.core.log_prefix.clone().and_then(|p| {
            let span = self.core.log_prefix_span;
            self.format(&p, span)
        });
        let shared = SharedVars::new(shv_names);
        for (name, value) in shv_init {
            shared.set_by_name(&name, value);
        }
        let mut var_init = vec![Value::Int(0); var_names.len()];
        for (name, value) in var_init_named {
            if let Some(&i) = self.var_slots.get(&name) {
                var_init[i] = value;
            }
        }
        let mut rpcs = std::collections::HashMap::new();
        for r in self
            .reg
            .core_rpcs
            .iter()
            .cloned()
            .chain(self.instances.iter().flat_map(|(_, m)| m.rpc_commands()))
        {
            rpcs.insert(r.name, r);
        }
        let stat_sources = self
            .reg
            .stat_sources
            .iter()
            .cloned()
            .chain(self.instances.iter().filter_map(|(_, m)| m.stats()))
            .collect();
        let evi = self.reg.evi.clone();
        for (_, m) in &self.instances {
            for e in m.events() {
                let _ = evi.declare(e);
            }
            for t in m.event_transports() {
                evi.add_transport(t);
            }
        }
        let prog = Program {
            evi,
            stat_sources,
            rpcs,
            started: std::time::SystemTime::now(),
            routes: self.routes,
            tables: self.tables,
            events: self.events,
            request: self.request,
            reply: self.reply,
            startup: self.startup,
            var_names,
            var_init,
            shared,
            custom: crate::CustomCfg::new(self.custom),
            core: self.core,
            hooks: Hooks {
                myself: self.reg.hooks.myself.clone(),
            },
            modules: self.instances,
            log_prefix,
            module_formats,
            regex_cache: Default::default(),
            stats: Default::default(),
            me: std::sync::Weak::new(),
        };
        (prog, self.diags)
    }

    // ---------- statements ----------

    fn block(&mut self, b: &ast::Block) -> Vec<Stmt> {
        b.stmts.iter().filter_map(|s| self.stmt(s)).collect()
    }

    fn stmt(&mut self, s: &ast::Stmt) -> Option<Stmt> {
        Some(match &s.kind {
            StmtKind::Expr(e) => {
                if let ExprKind::Word(w) = &e.kind {
                    // A bare word statement is a call with no arguments (`t_relay;`).
                    let call = ast::Expr {
                        kind: ExprKind::Call {
                            name: Spanned::new(w.clone(), e.span),
                            args: vec![],
                        },
                        span: e.span,
                    };
                    return Some(Stmt::Expr(self.expr(&call)?));
                }
                Stmt::Expr(self.expr(e)?)
            }
            StmtKind::Assign { target, op, value } => {
                let pv = self.pv(&target.node, target.span)?;
                if !pv.writable() {
                    self.err(
                        target.span,
                        format!("cannot assign to `{}`: it is read-only", target.node.text),
                    );
                    return None;
                }
                let value = self.expr(value)?;
                Stmt::Assign {
                    pv,
                    replace: *op == ast::AssignOp::Replace,
                    value,
                }
            }
            StmtKind::If { cond, then, els } => {
                let cond = self.expr(cond);
                let then = self.block(then);
                let els = els.as_ref().map(|b| self.block(b)).unwrap_or_default();
                Stmt::If {
                    cond: cond?,
                    then,
                    els,
                }
            }
            StmtKind::While { cond, body } => {
                let cond = self.expr(cond);
                self.loop_depth += 1;
                let body = self.block(body);
                self.loop_depth -= 1;
                Stmt::While { cond: cond?, body }
            }
            StmtKind::Switch { subject, cases } => {
                let subject = self.expr(subject);
                let mut labels = Vec::new();
                let mut default = None;
                let mut body = Vec::new();
                self.loop_depth += 1;
                for case in cases {
                    match &case.label {
                        None => {
                            if default.is_some() {
                                self.err(case.span, "`switch` has two `default` arms");
                            }
                            default = Some(body.len());
                        }
                        Some(l) => match self.expr(l) {
                            Some(CExpr::Const(v)) => labels.push((v, body.len())),
                            Some(_) => self
                                .err(l.span, "expected a constant number or string after `case`"),
                            None => {}
                        },
                    }
                    for st in &case.body {
                        if let Some(st) = self.stmt(st) {
                            body.push(st);
                        }
                    }
                }
                self.loop_depth -= 1;
                Stmt::Switch {
                    subject: subject?,
                    labels,
                    default,
                    body,
                }
            }
            StmtKind::Return(e) => Stmt::Return(match e {
                Some(e) => Some(self.expr(e)?),
                None => None,
            }),
            StmtKind::Exit => Stmt::Exit,
            StmtKind::Drop => Stmt::Drop,
            StmtKind::Break => {
                if self.loop_depth == 0 {
                    self.err(s.span, "`break` outside of `switch` or `while`");
                }
                Stmt::Break
            }
            StmtKind::Block(b) => Stmt::Block(self.block(b)),
        })
    }

    // ---------- expressions ----------

    fn expr(&mut self, e: &ast::Expr) -> Option<CExpr> {
        Some(match &e.kind {
            ExprKind::Int(n) => CExpr::Const(Value::Int(*n)),
            ExprKind::Str(s) => {
                let f = self.format(s, e.span)?;
                match f.as_const() {
                    Some(b) => CExpr::Const(Value::Str(b)),
                    None => CExpr::Fmt(f),
                }
            }
            ExprKind::Pv(p) => {
                let pv = self.pv(p, e.span)?;
                if matches!(pv.kind, PvKind::Null) {
                    CExpr::Const(Value::Null)
                } else {
                    CExpr::Pv(pv)
                }
            }
            ExprKind::Ip(ip) => CExpr::Const(Value::from_str_copy(ip)),
            ExprKind::Word(w) => return self.word(w, e.span),
            ExprKind::Call { name, args } => return self.call(name, args, e.span),
            ExprKind::Unary(op, x) => {
                let x = self.expr(x)?;
                match (op, x) {
                    (UnOp::Not, CExpr::Const(v)) => {
                        CExpr::Const(Value::Int(i64::from(!v.is_true())))
                    }
                    (UnOp::Neg, CExpr::Const(v)) => {
                        CExpr::Const(Value::Int(v.to_int().unwrap_or(0).wrapping_neg()))
                    }
                    (UnOp::Not, x) => CExpr::Not(Box::new(x)),
                    (UnOp::Neg, x) => CExpr::Neg(Box::new(x)),
                    (UnOp::Defined, x) => CExpr::Defined(Box::new(x)),
                }
            }
            ExprKind::Binary(op, a, b) => return self.binary(*op, a, b),
        })
    }

    fn word(&mut self, w: &str, span: Span) -> Option<CExpr> {
        if let Some((_, pv)) = KEYWORD_PVS.iter().find(|(k, _)| *k == w) {
            let syn = PvSyntax {
                class: pv.to_string(),
                inner: None,
                index: None,
                trans: vec![],
                text: format!("${pv}"),
            };
            if !self.pv_classes.contains_key(pv) {
                self.err(
                    span,
                    format!("`{w}` reads `${pv}`, which no loaded module provides"),
                );
                return None;
            }
            return Some(CExpr::Pv(self.pv(&syn, span)?));
        }
        if PROTOCOLS.contains(&w) {
            return Some(CExpr::Const(Value::Str(Bytes::from(
                w.to_ascii_lowercase(),
            ))));
        }
        if w == "myself" {
            self.err(
                span,
                "`myself` can only be compared: write `uri == myself` or `src_ip != myself`",
            );
            return None;
        }
        let mut d = Diagnostic::error(
            span,
            format!("unknown word `{w}`: expected a value, a pseudo-variable or a function call"),
        );
        if let Some(s) = did_you_mean(
            w,
            KEYWORD_PVS
                .iter()
                .map(|(k, _)| *k)
                .chain(self.functions.keys().copied()),
        ) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        self.diags.push(d);
        None
    }

    fn binary(&mut self, op: BinOp, a: &ast::Expr, b: &ast::Expr) -> Option<CExpr> {
        let is_myself = |e: &ast::Expr| matches!(&e.kind, ExprKind::Word(w) if w == "myself");
        if matches!(op, BinOp::Eq | BinOp::Ne) && (is_myself(a) || is_myself(b)) {
            let other = if is_myself(b) { a } else { b };
            let x = self.expr(other)?;
            return Some(CExpr::Myself(Box::new(x), op == BinOp::Ne));
        }
        let x = self.expr(a);
        if matches!(op, BinOp::Match | BinOp::NoMatch) {
            let neg = op == BinOp::NoMatch;
            let y = self.expr(b)?;
            return Some(match y {
                CExpr::Const(v) => {
                    let pat = v.to_text().into_owned();
                    match build_regex(&pat) {
                        Ok(re) => CExpr::Match(Box::new(x?), Arc::new(re), neg),
                        Err(e) => {
                            let why = e
                                .to_string()
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .trim_start_matches("error: ")
                                .to_string();
                            self.err(b.span, format!("bad regular expression `{pat}`: {why}"));
                            return None;
                        }
                    }
                }
                y => CExpr::DynMatch(Box::new(x?), Box::new(y), neg),
            });
        }
        let y = self.expr(b)?;
        let x = x?;
        if let (CExpr::Const(va), CExpr::Const(vb)) = (&x, &y)
            && let Some(v) = fold(op, va, vb)
        {
            return Some(CExpr::Const(v));
        }
        Some(CExpr::Bin(op, Box::new(x), Box::new(y)))
    }

    fn call(&mut self, name: &Spanned<String>, args: &[ast::Expr], span: Span) -> Option<CExpr> {
        let fname = name.node.as_str();
        if fname == "route" {
            return self.route_call(args, span);
        }
        let Some(spec) = self.functions.get(fname).cloned() else {
            self.unknown_function(name);
            return None;
        };
        let max = spec.params.len();
        if args.len() < spec.min_args || args.len() > max {
            let takes = match (spec.min_args, max) {
                (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
                (a, b) => format!("{a} to {b} arguments"),
            };
            self.err(
                span,
                format!("`{fname}` takes {takes}, found {}", args.len()),
            );
            return None;
        }
        let mut items = Vec::with_capacity(args.len());
        let mut ok = true;
        for (a, kind) in args.iter().zip(&spec.params) {
            match self.arg(a, *kind, fname) {
                Some(x) => items.push(x),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        self.calls.push(RouteCall {
            route: self.current,
            mask: spec.routes,
            name: spec.name,
            span: name.span,
        });
        match (spec.bind)(Args { items }) {
            Ok(call) => Some(CExpr::Call(CallSite {
                name: spec.name,
                call,
            })),
            Err(e) => {
                self.err(span, format!("`{fname}`: {e}"));
                None
            }
        }
    }

    fn unknown_function(&mut self, name: &Spanned<String>) {
        let fname = name.node.as_str();
        // A function of a refused module: said at its loadmodule, or here.
        if self
            .refused_loaded
            .iter()
            .filter_map(|n| self.reg.refused(n))
            .any(|r| r.functions.contains(&fname))
        {
            return;
        }
        if let Some(r) = self
            .reg
            .refused_modules()
            .iter()
            .find(|r| r.functions.contains(&fname))
        {
            self.err(
                name.span,
                format!(
                    "function `{fname}` belongs to module `{}`, which is not available in siphon: {}",
                    r.name, r.reason
                ),
            );
            return;
        }
        // A function of a module that exists but is not loaded?
        for def in self.reg.defs() {
            if self.loaded.iter().any(|(n, _)| n == def.name) {
                continue;
            }
            if let Ok(m) = (def.instantiate)(&ModuleConfig::default())
                && m.functions().iter().any(|f| f.name == fname)
            {
                self.diags.push(
                    Diagnostic::error(
                        name.span,
                        format!(
                            "function `{fname}` belongs to module `{}`, which is not loaded",
                            def.name
                        ),
                    )
                    .help(format!("add `loadmodule \"{}.so\"`", def.name)),
                );
                return;
            }
        }
        let mut d = Diagnostic::error(name.span, format!("unknown function `{fname}`"));
        if let Some(s) = did_you_mean(fname, self.functions.keys().copied().chain(["route"])) {
            d.message = format!("unknown function `{fname}` — did you mean `{s}`?");
        }
        self.diags.push(d);
    }

    fn route_call(&mut self, args: &[ast::Expr], span: Span) -> Option<CExpr> {
        let [arg] = args else {
            self.err(
                span,
                format!(
                    "`route` takes 1 argument (the route name), found {}",
                    args.len()
                ),
            );
            return None;
        };
        let name = match &arg.kind {
            ExprKind::Word(w) => w.clone(),
            ExprKind::Str(s) if !s.contains('$') => s.clone(),
            ExprKind::Int(n) => n.to_string(),
            _ => {
                self.err(arg.span, "expected a route name in `route(…)`");
                return None;
            }
        };
        let id = self.lookup_route(RouteTable::Named, &name, arg.span)?;
        self.edges.push((self.current, id));
        Some(CExpr::Route(id))
    }

    fn lookup_route(&mut self, table: RouteTable, name: &str, span: Span) -> Option<RouteId> {
        if let Some(id) = self.tables.get(&table).and_then(|t| t.get(name)) {
            return Some(*id);
        }
        let kw = match table {
            RouteTable::Named => "route",
            RouteTable::Failure => "failure_route",
            RouteTable::OnReply => "onreply_route",
            RouteTable::Branch => "branch_route",
        };
        let mut d = Diagnostic::error(span, format!("{kw} `{name}` is used but never defined"));
        let known: Vec<&str> = self
            .tables
            .get(&table)
            .map(|t| t.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if let Some(s) = did_you_mean(name, known) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        self.diags.push(d);
        None
    }

    fn arg(&mut self, a: &ast::Expr, kind: ArgKind, fname: &str) -> Option<Arg> {
        match kind {
            ArgKind::Str | ArgKind::Any => match &a.kind {
                ExprKind::Word(w)
                    if !KEYWORD_PVS.iter().any(|(k, _)| k == w)
                        && !PROTOCOLS.contains(&w.as_str()) =>
                {
                    Some(Arg::Expr(CExpr::Const(Value::from_str_copy(w))))
                }
                _ => self.expr(a).map(Arg::Expr),
            },
            ArgKind::Int => {
                let e = self.expr(a)?;
                if let CExpr::Const(v) = &e {
                    match v.to_int() {
                        Some(n) => return Some(Arg::Expr(CExpr::Const(Value::Int(n)))),
                        None => {
                            self.err(
                                a.span,
                                format!("`{fname}` expects a number here, found {v:?}"),
                            );
                            return None;
                        }
                    }
                }
                Some(Arg::Expr(e))
            }
            ArgKind::Pv | ArgKind::PvWritable => {
                let pv = match &a.kind {
                    ExprKind::Pv(p) => self.pv(p, a.span)?,
                    ExprKind::Str(s) => match parse_pv(s, true) {
                        Ok((p, n)) if n == s.len() => self.pv(&p, a.span)?,
                        _ => {
                            self.err(a.span, format!("`{fname}` expects a pseudo-variable such as \"$var(result)\" here"));
                            return None;
                        }
                    },
                    _ => {
                        self.err(a.span, format!("`{fname}` expects a pseudo-variable here"));
                        return None;
                    }
                };
                if kind == ArgKind::PvWritable && !pv.writable() {
                    self.err(
                        a.span,
                        format!(
                            "`{fname}` writes its result into `{}`, which is read-only",
                            pv.text()
                        ),
                    );
                    return None;
                }
                Some(Arg::Pv(pv))
            }
            ArgKind::Route(table) => {
                let name = match &a.kind {
                    ExprKind::Word(w) => w.clone(),
                    ExprKind::Str(s) => {
                        let f = self.format(s, a.span)?;
                        if f.as_const().is_none() {
                            return Some(Arg::DynRoute(table, f));
                        }
                        s.clone()
                    }
                    _ => {
                        self.err(a.span, format!("`{fname}` expects a route name here"));
                        return None;
                    }
                };
                let id = self.lookup_route(table, &name, a.span)?;
                self.resume_targets.insert(id);
                Some(Arg::Route(id))
            }
        }
    }

    // ---------- pseudo-variables ----------

    fn format(&mut self, s: &str, span: Span) -> Option<Fmt> {
        let parts = match parse_format(s) {
            Ok(p) => p,
            Err(e) => {
                let at = Span {
                    lo: span.lo + 1 + e.offset as u32,
                    hi: span.lo + 2 + e.offset as u32,
                    ..span
                };
                self.err(at, format!("in this string: {}", e.message));
                return None;
            }
        };
        let mut out = Vec::with_capacity(parts.len());
        let mut ok = true;
        for p in parts {
            match p {
                siphon_cfg::pv::FmtPart::Lit(l) => out.push(FmtPart::Lit(Bytes::from(l))),
                siphon_cfg::pv::FmtPart::Pv(pv, off) => {
                    let at = Span {
                        lo: span.lo + 1 + off as u32,
                        hi: span.lo + 1 + (off + pv.text.len()) as u32,
                        ..span
                    };
                    let at = if at.hi <= span.hi { at } else { span };
                    match self.pv(&pv, at) {
                        Some(p) => out.push(FmtPart::Pv(p)),
                        None => ok = false,
                    }
                }
            }
        }
        ok.then_some(Fmt { parts: out })
    }

    pub(crate) fn pv(&mut self, syn: &PvSyntax, span: Span) -> Option<Pv> {
        let inner = syn.inner.as_deref();
        let need_inner = |c: &mut Self, what: &str| -> Option<String> {
            match inner {
                Some(n) if !n.is_empty() => Some(n.to_string()),
                _ => {
                    c.err(
                        span,
                        format!("`${}` needs a name: `${}({what})`", syn.class, syn.class),
                    );
                    None
                }
            }
        };
        let kind = match syn.class.as_str() {
            "null" => PvKind::Null,
            "var" => {
                let n = need_inner(self, "name")?;
                let next = self.var_slots.len();
                PvKind::Var(*self.var_slots.entry(n).or_insert(next))
            }
            "avp" => {
                let n = need_inner(self, "name")?;
                let n = n
                    .strip_prefix("s:")
                    .or_else(|| n.strip_prefix("i:"))
                    .unwrap_or(&n)
                    .to_string();
                PvKind::Avp(n.into())
            }
            "shv" => {
                let n = need_inner(self, "name")?;
                let next = self.shv_slots.len();
                PvKind::Shv(*self.shv_slots.entry(n).or_insert(next))
            }
            "rc" | "retcode" => PvKind::Rc,
            "sel" => {
                let n = need_inner(self, "cfg_get.group.name")?;
                let found = n
                    .strip_prefix("cfg_get.")
                    .and_then(|gn| gn.split_once('.'))
                    .map(|(g, name)| {
                        self.custom
                            .iter()
                            .position(|(cg, cn, ..)| cg == g && cn == name)
                    });
                match found {
                    Some(Some(i)) => PvKind::Dyn(Arc::new(CustomSetting(i))),
                    Some(None) => {
                        self.err(span, format!("`{}`: no custom setting `{}` (declare it: `{} = value desc \"…\"`)", syn.text, &n[8..], &n[8..]));
                        return None;
                    }
                    None => {
                        self.err(span, format!("`{}`: siphon reads only `$sel(cfg_get.group.name)` (a custom setting)", syn.text));
                        return None;
                    }
                }
            }
            class => {
                let Some(spec) = self.pv_classes.get(class).cloned() else {
                    let mut d =
                        Diagnostic::error(span, format!("unknown pseudo-variable `{}`", syn.text));
                    let builtin = ["var", "avp", "shv", "null", "rc", "retcode"];
                    if let Some(s) = did_you_mean(
                        class,
                        builtin.into_iter().chain(self.pv_classes.keys().copied()),
                    ) {
                        d = d.help(format!("did you mean `${s}`?"));
                    }
                    self.diags.push(d);
                    return None;
                };
                match (spec.inner, inner) {
                    (PvInner::Required, None) => {
                        self.err(span, format!("`${class}` needs a name in parentheses"));
                        return None;
                    }
                    (PvInner::None, Some(_)) => {
                        self.err(span, format!("`${class}` takes no name in parentheses"));
                        return None;
                    }
                    _ => {}
                }
                let bound = match &spec.bind_fmt {
                    Some(bf) => {
                        let mut failed = false;
                        let mut compile = |s: &str| match self.format(s, span) {
                            Some(f) => Ok(f),
                            None => {
                                failed = true;
                                Err(format!("bad name `{s}`"))
                            }
                        };
                        let r = bf(inner, &mut compile);
                        if failed {
                            return None;
                        }
                        r
                    }
                    None => (spec.bind)(inner),
                };
                match bound {
                    Ok(acc) => PvKind::Dyn(acc),
                    Err(e) => {
                        self.err(span, format!("`{}`: {e}", syn.text));
                        return None;
                    }
                }
            }
        };
        let index = match &syn.index {
            None => PvIndexC::Default,
            Some(PvIndex::Int(n)) => PvIndexC::At(*n),
            Some(PvIndex::All) => PvIndexC::All,
            Some(PvIndex::Pv(p)) => PvIndexC::Pv(Box::new(self.pv(p, span)?)),
        };
        let mut trans = Vec::with_capacity(syn.trans.len());
        for t in &syn.trans {
            let Some((_, op, n)) = TRANSFORMS.iter().find(|(name, _, _)| *name == t.name) else {
                let mut d =
                    Diagnostic::error(span, format!("unknown transformation `{{{}}}`", t.name));
                if let Some(s) = did_you_mean(&t.name, TRANSFORMS.iter().map(|(n, _, _)| *n)) {
                    d = d.help(format!("did you mean `{{{s}}}`?"));
                }
                self.diags.push(d);
                return None;
            };
            // A separator that is itself a comma (`{s.select,1,,}`) splits into empty pieces: join them back.
            let mut tparams = t.params.clone();
            if *n > 0
                && tparams.len() > *n
                && tparams[*n - 1..]
                    .iter()
                    .all(|p| matches!(p, TrParam::Str(_)))
            {
                let joined = tparams[*n - 1..]
                    .iter()
                    .map(|p| {
                        if let TrParam::Str(s) = p {
                            s.as_str()
                        } else {
                            ""
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                tparams.truncate(*n - 1);
                tparams.push(TrParam::Str(joined));
            }
            let t = &siphon_cfg::pv::Transform {
                name: t.name.clone(),
                params: tparams,
            };
            if t.params.len() != *n {
                self.err(
                    span,
                    format!(
                        "transformation `{{{}}}` takes {n} parameter(s), found {}",
                        t.name,
                        t.params.len()
                    ),
                );
                return None;
            }
            let mut params = Vec::with_capacity(*n);
            for p in &t.params {
                params.push(match p {
                    TrParam::Int(i) => TrArg::Int(*i),
                    TrParam::Str(s) => TrArg::Str(Bytes::from(s.clone())),
                    TrParam::Pv(p) => TrArg::Pv(self.pv(p, span)?),
                });
            }
            trans.push(Trans { op: *op, params });
        }
        Some(Pv {
            kind,
            index,
            trans,
            text: syn.text.as_str().into(),
        })
    }
}

/// `=~` patterns are POSIX extended regular expressions matched case-insensitively
/// (as Kamailio compiles them with REG_ICASE).
pub(crate) fn build_regex(pat: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pat)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

/// `"/usr/lib/kamailio/modules/sl.so"` → `sl`.
pub(crate) fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_suffix(".so").unwrap_or(base).to_string()
}

/// `name=i:123` or `name=s:text`.
fn parse_initial(text: &str) -> Option<(String, Value)> {
    let (name, v) = text.split_once('=')?;
    let value = if let Some(i) = v.strip_prefix("i:") {
        Value::Int(i.trim().parse().ok()?)
    } else if let Some(s) = v.strip_prefix("s:") {
        Value::from_str_copy(s)
    } else {
        return None;
    };
    Some((name.trim().to_string(), value))
}

/// `$sel(cfg_get.group.name)`: a custom setting's current value.
struct CustomSetting(usize);

impl crate::api::PvAccess for CustomSetting {
    fn get(&self, ex: &mut crate::Exec<'_>, _idx: crate::api::PvIdx) -> Value {
        ex.prog.custom_cfg().get(self.0)
    }
}
