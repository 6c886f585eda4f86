use super::*;
use siphon_script::rpc::RpcReply;
use siphon_script::{Program, Registry, load_str};

fn program(params: &str, body: &str) -> Result<Arc<Program>, String> {
    let mut reg = Registry::new();
    reg.add(def());
    let cfg = format!("loadmodule \"htable.so\"\n{params}\nrequest_route {{\n{body}\n}}\n");
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    l.program
        .map(Arc::new)
        .ok_or_else(|| siphon_cfg::diag::render_all(&l.diags, &l.sources))
}

fn rpc(
    p: &Arc<Program>,
    method: &str,
    params: &[serde_json::Value],
) -> Result<serde_json::Value, RpcFailure> {
    match siphon_script::rpc::call(p, method, params.to_vec()).expect("a command") {
        RpcReply::Now(r) => r,
        RpcReply::Later(_) => panic!("answered later"),
    }
}

const T: &str = "modparam(\"htable\", \"htable\", \"a=>size=4;\")\nmodparam(\"htable\", \"htable\", \"c=>initval=0\")";

#[test]
fn script_reads_writes_counts_and_removes() {
    let p = program(
        T,
        "$var(k) = \"x\";\n\
         $sht(a=>$var(k)) = 5; $sht(a=>s) = \"str\"; $sht(a=>gone) = 1; $sht(a=>gone) = $null;\n\
         $var(i) = $shtinc(c=>n); $var(i) = $shtinc(c=>n); $var(d) = $shtdec(c=>m);\n\
         $var(cn) = $shtcn(a=>~~^[xs]$); $var(miss) = $sht(c=>none);\n\
         $sht(a=>u:1) = 1; $sht(a=>u:2) = 2; sht_rm_name_re(\"a=>^u:\");\n\
         $sht(a=>r) = 1; sht_rm(\"a\", \"r\");",
    )
    .unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    let get = |t: &str, k: &str| rpc(&p, "htable.get", &[json!(t), json!(k)]);
    assert_eq!(
        get("a", "x"),
        Ok(json!({"item": {"name": "x", "value": 5}}))
    );
    assert_eq!(get("a", "s").unwrap()["item"]["value"], json!("str"));
    assert!(get("a", "gone").is_err());
    assert!(get("a", "r").is_err());
    assert!(get("a", "u:1").is_err());
    assert_eq!(get("c", "n").unwrap()["item"]["value"], json!(2));
    assert_eq!(get("c", "m").unwrap()["item"]["value"], json!(-1));
    let vars: Vec<_> = ["i", "d", "cn", "miss"]
        .iter()
        .map(|v| ctx.vars[p.var_slot(v).unwrap()].clone())
        .collect();
    assert_eq!(
        vars,
        vec![Value::Int(2), Value::Int(-1), Value::Int(2), Value::Int(0)]
    );
}

#[test]
fn rpcs_set_get_delete_dump_list() {
    let p = program(T, "").unwrap();
    assert_eq!(
        rpc(&p, "htable.seti", &[json!("a"), json!("k"), json!(3)]),
        Ok(json!("Ok. Key set to new value."))
    );
    assert_eq!(
        rpc(&p, "htable.seti", &[json!("a"), json!("k"), json!("x")])
            .unwrap_err()
            .message,
        "Not enough parameters (htable name, key name and value)"
    );
    rpc(&p, "htable.sets", &[json!("a"), json!("s"), json!("v")]).unwrap();
    assert_eq!(
        rpc(&p, "htable.get", &[json!("a"), json!("k")]).unwrap()["item"]["value"],
        json!(3)
    );
    let dump = rpc(&p, "htable.dump", &[json!("a")]).unwrap();
    let n: usize = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["slot"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 2);
    rpc(&p, "htable.delete", &[json!("a"), json!("k")]).unwrap();
    assert!(rpc(&p, "htable.get", &[json!("a"), json!("k")]).is_err());
    assert!(rpc(&p, "htable.get", &[json!("zz"), json!("k")]).is_err());
    // Kamailio lists the tables newest first.
    let list = rpc(&p, "htable.listTables", &[]).unwrap();
    assert_eq!(list[1]["name"], json!("a"));
    assert_eq!(list[1]["size"], json!(16));
    let stats = rpc(&p, "htable.stats", &[]).unwrap();
    assert_eq!(
        stats[1],
        json!({"name": "a", "slots": 16, "all": 1, "min": 0, "max": 1})
    );
}

#[test]
fn config_errors_are_reported() {
    let e = program("modparam(\"htable\", \"htable\", \"a=>dbtable=x\")", "").unwrap_err();
    assert!(e.contains("database"), "{e}");
    let e = program(T, "$sht(nope=>x) = 1;").unwrap_err();
    assert!(e.contains("no htable `nope`"), "{e}");
    let e = program(T, "sht_reset(\"nope\");").unwrap_err();
    assert!(e.contains("no htable"), "{e}");
}

#[test]
fn slots_are_kamailio_core_hash() {
    // Kamailio 5.6.3's htable.dump: "boot" in entry 10, "i" in entry 4 of 16.
    assert_eq!(slot_of(b"boot", 4), 10);
    assert_eq!(slot_of(b"i", 4), 4);
    let p = program(T, "").unwrap();
    rpc(
        &p,
        "htable.sets",
        &[json!("a"), json!("boot"), json!("init")],
    )
    .unwrap();
    assert_eq!(
        rpc(&p, "htable.dump", &[json!("a")]).unwrap(),
        json!([{"entry": 10, "size": 1, "slot": [{"name": "boot", "value": "init", "type": "str"}]}])
    );
}
