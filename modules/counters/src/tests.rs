use super::*;
use siphon_script::rpc::RpcReply;
use siphon_script::{Program, Registry, load_str};

fn program(params: &str, body: &str) -> Result<Arc<Program>, String> {
    let mut reg = Registry::new();
    reg.add(def());
    let cfg = format!("loadmodule \"counters.so\"\n{params}\nrequest_route {{\n{body}\n}}\n");
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    l.program
        .map(Arc::new)
        .ok_or_else(|| siphon_cfg::diag::render_all(&l.diags, &l.sources))
}

fn rpc(p: &Arc<Program>, method: &str, params: &[&str]) -> Result<Value, RpcFailure> {
    let params = params.iter().map(|s| json!(s)).collect();
    match siphon_script::rpc::call(p, method, params).expect("a command") {
        RpcReply::Now(r) => r,
        RpcReply::Later(_) => panic!("answered later"),
    }
}

#[test]
fn declarations_read_as_kamailio() {
    let c = parse_decl("calls", "script").unwrap();
    assert_eq!(
        (c.group.as_str(), c.name.as_str(), c.desc.as_str()),
        ("script", "calls", "custom script counter.")
    );
    let c = parse_decl("app.fails: failed calls", "script").unwrap();
    assert_eq!(
        (c.group.as_str(), c.name.as_str(), c.desc.as_str()),
        ("app", "fails", "failed calls")
    );
    let c = parse_decl("x the x counter", "g").unwrap();
    assert_eq!(
        (c.group.as_str(), c.name.as_str(), c.desc.as_str()),
        ("g", "x", "the x counter")
    );
    assert!(parse_decl(".x", "g").is_err());
}

#[test]
fn script_counts_and_rpcs_read_and_reset() {
    let p = program(
        "modparam(\"counters\", \"script_counter\", \"calls counted calls\")\nmodparam(\"counters\", \"script_counter\", \"app.fails\")",
        "cnt_inc(\"calls\"); cnt_add(\"calls\", 5); cnt_add(\"app.fails\", \"2\"); cnt_inc(\"app.fails\"); cnt_reset(\"app.fails\"); cnt_inc(\"app.fails\");",
    )
    .unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    assert_eq!(rpc(&p, "cnt.get", &["script", "calls"]), Ok(json!(6)));
    assert_eq!(rpc(&p, "cnt.get", &["app", "fails"]), Ok(json!(1)));
    // The engine's own `script:while_limit_hits` shares the group.
    assert_eq!(rpc(&p, "cnt.get", &["script"]).unwrap()["calls"], json!(6));
    assert_eq!(rpc(&p, "cnt.get_vars", &["app"]), Ok(json!({"fails": 1})));
    assert!(
        rpc(&p, "cnt.var_list", &["script"])
            .unwrap()
            .as_array()
            .unwrap()
            .contains(&json!("calls"))
    );
    let groups = rpc(&p, "cnt.grps_list", &[]).unwrap();
    assert!(
        groups.as_array().unwrap().contains(&json!("app")),
        "{groups}"
    );
    assert_eq!(
        rpc(&p, "cnt.help", &["script", "calls"]),
        Ok(json!("counted calls"))
    );
    assert_eq!(
        rpc(&p, "cnt.get", &["script", "nope"]).unwrap_err().code,
        400
    );
    assert_eq!(rpc(&p, "cnt.reset", &["script", "calls"]), Ok(Value::Null));
    assert_eq!(rpc(&p, "cnt.get", &["script", "calls"]), Ok(json!(0)));
    // They are statistics too.
    assert!(p.stat_snapshot().contains(&("app:fails".to_string(), 1)));
}

#[test]
fn a_group_name_param_moves_the_script_counters() {
    let p = program(
        "modparam(\"counters\", \"script_cnt_grp_name\", \"mine\")\nmodparam(\"counters\", \"script_counter\", \"x\")",
        "cnt_inc(\"x\");",
    )
    .unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    assert_eq!(rpc(&p, "cnt.get", &["mine", "x"]), Ok(json!(1)));
}

#[test]
fn undeclared_or_dynamic_names_are_config_errors() {
    let e = program("", "cnt_inc(\"nope\");").unwrap_err();
    assert!(e.contains("counter `nope` does not exist"), "{e}");
    let e = program(
        "modparam(\"counters\", \"script_counter\", \"x\")",
        "$var(n) = \"x\"; cnt_inc(\"$var(n)\");",
    )
    .unwrap_err();
    assert!(
        e.contains("constant") || e.contains("does not exist"),
        "{e}"
    );
}
