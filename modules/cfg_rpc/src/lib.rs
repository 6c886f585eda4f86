//! cfg_rpc (Kamailio): `cfg.get group name`, `cfg.set group name value`
//! (also `cfg.set_now_int`, `cfg.set_now_string`, `cfg.seti`, `cfg.sets`),
//! `cfg.help group name`, `cfg.list`, over the settings the loaded modules
//! let change at run time ([`Module::cfg_vars`]: `maxfwd max_limit`, tm's
//! timers …) and the configuration's custom settings (`pstn.gw_ip = ""
//! desc "…"`, read with `$sel(cfg_get.pstn.gw_ip)`). Anything else is an error naming what siphon can change;
//! the delayed forms (`cfg.set_delayed_*`, `cfg.commit`, `cfg.rollback`,
//! `cfg.diff`) and group instances are refused: siphon applies a change at
//! once.

use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcCall, RpcFailure, RpcSpec};
use siphon_script::{ModuleDef, Program};
use std::sync::Arc;

/// The module (no state: it reads the other modules' settings).
pub struct CfgRpc;

/// A setting `cfg.*` reaches: a module's, or one the configuration declared
/// (`pstn.gw_ip = "" desc "…"`, read with `$sel(cfg_get.pstn.gw_ip)`).
enum Setting {
    Module(CfgVar),
    Custom(usize),
}

/// `group.name` of every setting.
fn names(p: &Program) -> Vec<String> {
    let mods = p.modules().iter().flat_map(|(_, m)| m.cfg_vars());
    mods.map(|v| format!("{}.{}", v.group, v.name))
        .chain(
            p.custom_cfg()
                .vars()
                .iter()
                .map(|v| format!("{}.{}", v.group, v.name)),
        )
        .collect()
}

fn fault(message: String) -> RpcFailure {
    RpcFailure { code: 400, message }
}

/// The setting the first two params name.
fn find(c: &RpcCall) -> Result<Setting, RpcFailure> {
    let (Some(g), Some(n)) = (c.str(0), c.str(1)) else {
        return Err(RpcFailure::params("expected a group and a variable name"));
    };
    let p = &c.program;
    if let Some(v) = p
        .modules()
        .iter()
        .flat_map(|(_, m)| m.cfg_vars())
        .find(|v| v.group == g && v.name == n)
    {
        return Ok(Setting::Module(v));
    }
    if let Some(i) = p.custom_cfg().find(&g, &n) {
        return Ok(Setting::Custom(i));
    }
    let all = names(p);
    Err(fault(format!(
        "siphon cannot read or change {g}.{n} at run time (set it in the configuration and restart); it can: {}",
        if all.is_empty() {
            "nothing with this configuration".into()
        } else {
            all.join(", ")
        }
    )))
}

fn to_json(v: ParamValue) -> Value {
    match v {
        ParamValue::Int(n) => json!(n),
        ParamValue::Str(s) => json!(s),
    }
}

fn get(c: &RpcCall) -> Result<Value, RpcFailure> {
    Ok(match find(c)? {
        Setting::Module(v) => to_json((v.get)()),
        Setting::Custom(i) => match c.program.custom_cfg().get(i) {
            siphon_script::Value::Int(n) => json!(n),
            other => json!(other.to_text()),
        },
    })
}

fn help(c: &RpcCall) -> Result<Value, RpcFailure> {
    Ok(match find(c)? {
        Setting::Module(v) => json!(v.help),
        Setting::Custom(i) => json!(c.program.custom_cfg().vars()[i].desc),
    })
}

/// `cfg.set*`: the third param as `kind` wants it (any, int, string).
fn set(c: &RpcCall, kind: Option<bool>) -> Result<Value, RpcFailure> {
    let setting = find(c)?;
    let value = match (c.params.get(2), kind) {
        (None, _) => return Err(RpcFailure::params("expected a value")),
        (Some(_), Some(true)) => ParamValue::Int(
            c.int(2)
                .ok_or_else(|| RpcFailure::params("expected an integer value"))?,
        ),
        (Some(Value::Number(_)), None) => ParamValue::Int(c.int(2).unwrap_or_default()),
        (Some(_), _) => ParamValue::Str(c.str(2).unwrap_or_default()),
    };
    match setting {
        Setting::Module(v) => (v.set)(&value).map_err(fault)?,
        Setting::Custom(i) => {
            let v = match value {
                ParamValue::Int(n) => siphon_script::Value::Int(n),
                ParamValue::Str(s) => siphon_script::Value::from(s),
            };
            c.program.custom_cfg().set(i, v).map_err(fault)?
        }
    }
    Ok(Value::Null)
}

fn commands() -> Vec<RpcSpec> {
    let mut v = vec![
        RpcSpec::new("cfg.get", "A setting's value: cfg.get group name.", get),
        RpcSpec::new(
            "cfg.help",
            "What a setting does: cfg.help group name.",
            help,
        ),
        RpcSpec::new(
            "cfg.list",
            "The settings siphon can change at run time.",
            |c| {
                Ok(json!(
                    names(&c.program)
                        .iter()
                        .map(|n| n.replacen('.', ": ", 1))
                        .collect::<Vec<_>>()
                ))
            },
        ),
        RpcSpec::new(
            "cfg.set",
            "Changes a setting now: cfg.set group name value.",
            |c| set(c, None),
        ),
        RpcSpec::new("cfg.set_now_int", "Changes an integer setting now.", |c| {
            set(c, Some(true))
        }),
        RpcSpec::new("cfg.seti", "Changes an integer setting now.", |c| {
            set(c, Some(true))
        })
        .changes_state(),
        RpcSpec::new("cfg.set_now_string", "Changes a string setting now.", |c| {
            set(c, Some(false))
        }),
        RpcSpec::new("cfg.sets", "Changes a string setting now.", |c| {
            set(c, Some(false))
        })
        .changes_state(),
    ];
    for name in [
        "cfg.set_delayed",
        "cfg.set_delayed_int",
        "cfg.set_delayed_string",
        "cfg.commit",
        "cfg.rollback",
        "cfg.diff",
        "cfg.add_group_inst",
        "cfg.del_group_inst",
    ] {
        v.push(RpcSpec::new(name, "Not in siphon: cfg.set applies a change at once.", move |_| {
            Err(fault(format!(
                "{name} is not supported: siphon applies cfg.set at once and has no group instances"
            )))
        }));
    }
    v
}

impl Module for CfgRpc {
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        commands()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// What `loadmodule "cfg_rpc.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "cfg_rpc",
        params: vec![],
        instantiate: Arc::new(|_| Ok(Arc::new(CfgRpc) as Arc<dyn Module>)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphon_script::rpc::RpcReply;
    use siphon_script::{Registry, load_str};
    use std::sync::Mutex;

    /// A module with one integer setting.
    struct Knob(Arc<Mutex<i64>>);
    impl Module for Knob {
        fn cfg_vars(&self) -> Vec<CfgVar> {
            let (a, b) = (self.0.clone(), self.0.clone());
            vec![CfgVar {
                group: "knob",
                name: "level",
                help: "a level (0..9)",
                get: Arc::new(move || ParamValue::Int(*a.lock().unwrap())),
                set: Arc::new(move |v| match v {
                    ParamValue::Int(n) if (0..10).contains(n) => {
                        *b.lock().unwrap() = *n;
                        Ok(())
                    }
                    other => Err(format!("bad level {other:?}")),
                }),
            }]
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn rpc(p: &Arc<Program>, method: &str, params: Value) -> Result<Value, RpcFailure> {
        let params = params.as_array().cloned().unwrap_or_default();
        match siphon_script::rpc::call(p, method, params).expect("a command") {
            RpcReply::Now(r) => r,
            RpcReply::Later(_) => panic!("later"),
        }
    }

    #[test]
    fn get_set_list_help_and_refusals() {
        let mut reg = Registry::new();
        reg.add(def());
        let knob = Arc::new(Mutex::new(3));
        let k = knob.clone();
        reg.add(ModuleDef {
            name: "knob",
            params: vec![],
            instantiate: Arc::new(move |_| Ok(Arc::new(Knob(k.clone())) as Arc<dyn Module>)),
        });
        let l = load_str(
            "t.cfg",
            "loadmodule \"cfg_rpc\"\nloadmodule \"knob\"\npstn.gw_ip = \"\" desc \"PSTN GW Address\"\nrequest_route { }\n",
            &Default::default(),
            &reg,
        );
        let p = Arc::new(l.program.unwrap());
        assert_eq!(rpc(&p, "cfg.get", json!(["knob", "level"])), Ok(json!(3)));
        assert_eq!(
            rpc(&p, "cfg.set", json!(["knob", "level", 7])),
            Ok(Value::Null)
        );
        assert_eq!(*knob.lock().unwrap(), 7);
        assert_eq!(
            rpc(&p, "cfg.set_now_int", json!(["knob", "level", "5"])),
            Ok(Value::Null)
        );
        assert_eq!(rpc(&p, "cfg.get", json!(["knob", "level"])), Ok(json!(5)));
        let e = rpc(&p, "cfg.set", json!(["knob", "level", 12])).unwrap_err();
        assert!(e.message.contains("bad level"), "{e:?}");
        assert_eq!(
            rpc(&p, "cfg.list", json!([])),
            Ok(json!(["knob: level", "pstn: gw_ip"]))
        );
        assert_eq!(rpc(&p, "cfg.get", json!(["pstn", "gw_ip"])), Ok(json!("")));
        assert_eq!(
            rpc(&p, "cfg.sets", json!(["pstn", "gw_ip", "10.0.0.1"])),
            Ok(Value::Null)
        );
        assert_eq!(
            rpc(&p, "cfg.get", json!(["pstn", "gw_ip"])),
            Ok(json!("10.0.0.1"))
        );
        assert_eq!(
            rpc(&p, "cfg.help", json!(["pstn", "gw_ip"])),
            Ok(json!("PSTN GW Address"))
        );
        assert_eq!(
            rpc(&p, "cfg.help", json!(["knob", "level"])),
            Ok(json!("a level (0..9)"))
        );
        let e = rpc(&p, "cfg.get", json!(["core", "debug"])).unwrap_err();
        assert!(
            e.message.contains("cannot read or change core.debug")
                && e.message.contains("knob.level"),
            "{e:?}"
        );
        let e = rpc(&p, "cfg.commit", json!([])).unwrap_err();
        assert!(e.message.contains("not supported"), "{e:?}");
        assert!(p.rpc("cfg.set").unwrap().changes_state);
    }
}
