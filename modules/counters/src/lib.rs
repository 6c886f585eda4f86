//! counters (Kamailio): counters the script declares and counts, and the
//! `cnt.*` RPC commands, which read every statistic by group and name.
//!
//! - `modparam("counters", "script_counter", "[grp.]name[ description]")`
//!   (or `name: description`) declares a counter, in group
//!   `script_cnt_grp_name` (default `script`) unless the name says another.
//! - `cnt_inc(name)`, `cnt_add(name, n)`, `cnt_reset(name)` (`name` or
//!   `grp.name`, a constant naming a declared counter: checked at load).
//! - RPC `cnt.get grp [name]` (a value, or the group's as an object),
//!   `cnt.get_raw`, `cnt.reset grp name`, `cnt.grps_list`/`cnt.list_groups`,
//!   `cnt.var_list`/`cnt.list_vars grp`, `cnt.grp_get_all`/`cnt.get_vars grp`,
//!   `cnt.help grp name`: over the script counters and every statistic
//!   (`core`, `tm`, `sl`, `usrloc` … as `stats.get_statistics` names them).
//!   The script counters are statistics too (`script:name`).

use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec, StatSource};
use siphon_script::{ArgKind, FunctionSpec, ModuleDef, ParamSpec, RouteType};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// One declared counter.
struct Counter {
    group: String,
    name: String,
    desc: String,
    value: AtomicI64,
}

/// The module: its declared counters and the script group's name.
pub struct Counters {
    counters: Arc<Vec<Counter>>,
    group: String,
}

/// `[grp.]name[: desc| desc]` as Kamailio's `add_script_counter` reads it.
fn parse_decl(spec: &str, default_group: &str) -> Result<Counter, String> {
    let (name, desc) = match spec.find([':', ' ']) {
        Some(i) => (&spec[..i], spec[i + 1..].trim_start_matches([' ', '\t'])),
        None => (spec, ""),
    };
    let (group, name) = match name.split_once('.') {
        Some((g, n)) => (g, n),
        None => (default_group, name),
    };
    if name.is_empty() || group.is_empty() {
        return Err(format!(
            "script_counter `{spec}`: expected `[group.]name [description]`"
        ));
    }
    Ok(Counter {
        group: group.to_string(),
        name: name.to_string(),
        desc: if desc.is_empty() {
            "custom script counter.".into()
        } else {
            desc.to_string()
        },
        value: AtomicI64::new(0),
    })
}

/// The counter a script names (`name` in the script group or `grp.name`).
fn find(counters: &[Counter], default_group: &str, text: &str) -> Option<usize> {
    let (g, n) = text.split_once('.').unwrap_or((default_group, text));
    counters.iter().position(|c| c.group == g && c.name == n)
}

const ROUTES: RouteType = RouteType::REQUEST
    .or(RouteType::ONREPLY)
    .or(RouteType::FAILURE)
    .or(RouteType::BRANCH);

/// Binds a counter function: the name must be a constant naming a declared counter.
fn counter_fn(
    name: &'static str,
    params: &[ArgKind],
    counters: &Arc<Vec<Counter>>,
    group: &str,
    op: fn(&Counter, i64),
) -> FunctionSpec {
    let (counters, group) = (counters.clone(), group.to_string());
    FunctionSpec::with_bind(
        name,
        params,
        Arc::new(move |args: Args| {
            let Some(text) = args.const_value(0).map(|v| v.to_text().into_owned()) else {
                return Err("the counter name must be a constant (as Kamailio)".into());
            };
            let i = find(&counters, &group, &text).ok_or_else(|| {
                format!(
                    "counter `{text}` does not exist: declare it with modparam(\"counters\", \"script_counter\", \"{text}\")"
                )
            })?;
            struct C {
                counters: Arc<Vec<Counter>>,
                i: usize,
                args: Args,
                op: fn(&Counter, i64),
            }
            impl Call for C {
                fn call(&self, ex: &mut siphon_script::Exec<'_>) -> FnResult {
                    let n = if self.args.len() > 1 { self.args.int(1, ex) } else { Some(1) };
                    match n {
                        Some(n) => {
                            (self.op)(&self.counters[self.i], n);
                            1.into()
                        }
                        None => (-1).into(),
                    }
                }
            }
            Ok(Box::new(C { counters: counters.clone(), i, args, op }) as Box<dyn Call>)
        }),
    )
    .routes(ROUTES)
}

impl Module for Counters {
    fn functions(&self) -> Vec<FunctionSpec> {
        let (c, g) = (&self.counters, self.group.as_str());
        vec![
            counter_fn("cnt_inc", &[ArgKind::Str], c, g, |c, _| {
                c.value.fetch_add(1, Ordering::Relaxed);
            }),
            counter_fn("cnt_add", &[ArgKind::Str, ArgKind::Int], c, g, |c, n| {
                c.value.fetch_add(n, Ordering::Relaxed);
            }),
            counter_fn("cnt_reset", &[ArgKind::Str], c, g, |c, _| {
                c.value.store(0, Ordering::Relaxed);
            }),
        ]
    }
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        rpc_commands(self.counters.clone())
    }
    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.counters.clone())))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The script counters as statistics (`script:name`).
struct Stats(Arc<Vec<Counter>>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        self.0
            .iter()
            .map(|c| {
                (
                    format!("{}:{}", c.group, c.name),
                    c.value.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
    fn reset(&self, name: &str) {
        for c in self.0.iter() {
            if name == format!("{}:{}", c.group, c.name) {
                c.value.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Every statistic as `(group, name, value)`, sorted.
fn all(c: &RpcCall) -> Vec<(String, String, i64)> {
    let mut v: Vec<(String, String, i64)> = c
        .program
        .stat_snapshot()
        .into_iter()
        .filter_map(|(full, value)| {
            let (g, n) = full.split_once(':')?;
            Some((g.to_string(), n.to_string(), value))
        })
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    v
}

fn group_param(c: &RpcCall) -> Result<String, RpcFailure> {
    c.str(0)
        .ok_or_else(|| RpcFailure::params("expected a group name"))
}

fn no_counter(g: &str, n: &str) -> RpcFailure {
    RpcFailure {
        code: 400,
        message: format!("non-existent counter {g}.{n}"),
    }
}

/// The group's counters as an object (Kamailio's `cnt.grp_get_all`).
fn group_object(c: &RpcCall, g: &str) -> Value {
    let m: serde_json::Map<String, Value> = all(c)
        .into_iter()
        .filter(|(grp, ..)| grp == g)
        .map(|(_, n, v)| (n, json!(v)))
        .collect();
    Value::Object(m)
}

fn rpc_commands(counters: Arc<Vec<Counter>>) -> Vec<RpcSpec> {
    let get = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let g = group_param(c)?;
        let Some(n) = c.str(1) else {
            return Ok(group_object(c, &g));
        };
        all(c)
            .into_iter()
            .find(|(grp, name, _)| *grp == g && *name == n)
            .map(|(.., v)| json!(v))
            .ok_or_else(|| no_counter(&g, &n))
    };
    let groups = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let mut g: Vec<String> = all(c).into_iter().map(|(g, ..)| g).collect();
        g.dedup();
        Ok(json!(g))
    };
    let vars = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let g = group_param(c)?;
        Ok(json!(
            all(c)
                .into_iter()
                .filter(|(grp, ..)| *grp == g)
                .map(|(_, n, _)| n)
                .collect::<Vec<_>>()
        ))
    };
    let get_all = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let g = group_param(c)?;
        Ok(group_object(c, &g))
    };
    let help = move |c: &RpcCall| -> Result<Value, RpcFailure> {
        let g = group_param(c)?;
        let n = c
            .str(1)
            .ok_or_else(|| RpcFailure::params("expected a group and a counter name"))?;
        if let Some(k) = counters.iter().find(|k| k.group == g && k.name == n) {
            return Ok(json!(k.desc));
        }
        if all(c).iter().any(|(grp, name, _)| *grp == g && *name == n) {
            return Ok(json!("siphon statistic."));
        }
        Err(no_counter(&g, &n))
    };
    let reset = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let g = group_param(c)?;
        let n = c
            .str(1)
            .ok_or_else(|| RpcFailure::params("expected a group and a counter name"))?;
        if !all(c).iter().any(|(grp, name, _)| *grp == g && *name == n) {
            return Err(no_counter(&g, &n));
        }
        let full = format!("{g}:{n}");
        for s in c.program.stat_sources() {
            s.reset(&full);
        }
        Ok(Value::Null)
    };
    vec![
        RpcSpec::new(
            "cnt.get",
            "Counter value: cnt.get group [name] (without a name: the whole group).",
            get,
        ),
        RpcSpec::new("cnt.get_raw", "Counter value: cnt.get_raw group name.", get),
        RpcSpec::new(
            "cnt.reset",
            "Resets a counter: cnt.reset group name.",
            reset,
        )
        .changes_state(),
        RpcSpec::new("cnt.grps_list", "The counter groups.", groups),
        RpcSpec::new("cnt.list_groups", "The counter groups.", groups),
        RpcSpec::new(
            "cnt.var_list",
            "The counters of a group: cnt.var_list group.",
            vars,
        ),
        RpcSpec::new(
            "cnt.list_vars",
            "The counters of a group: cnt.list_vars group.",
            vars,
        ),
        RpcSpec::new(
            "cnt.grp_get_all",
            "Every counter of a group with its value.",
            get_all,
        ),
        RpcSpec::new(
            "cnt.get_vars",
            "Every counter of a group with its value.",
            get_all,
        ),
        RpcSpec::new(
            "cnt.help",
            "A counter's description: cnt.help group name.",
            help,
        ),
    ]
}

/// What `loadmodule "counters.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "counters",
        params: vec![
            ParamSpec::str("script_cnt_grp_name"),
            ParamSpec::str("script_counter").multi(),
        ],
        instantiate: Arc::new(|cfg| {
            let group = cfg
                .str("script_cnt_grp_name")
                .unwrap_or_else(|| "script".into());
            if group.is_empty() || group.contains([':', '.', ' ']) {
                return Err(format!("script_cnt_grp_name `{group}` is no group name"));
            }
            let mut counters: Vec<Counter> = Vec::new();
            for v in cfg.all("script_counter") {
                let spec = match v {
                    siphon_script::api::ParamValue::Str(s) => s.clone(),
                    siphon_script::api::ParamValue::Int(n) => n.to_string(),
                };
                let c = parse_decl(spec.trim(), &group)?;
                if counters
                    .iter()
                    .any(|k| k.group == c.group && k.name == c.name)
                {
                    // Kamailio logs it and goes on.
                    tracing::warn!("counter {}.{} already declared", c.group, c.name);
                    continue;
                }
                counters.push(c);
            }
            Ok(Arc::new(Counters {
                counters: Arc::new(counters),
                group,
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
