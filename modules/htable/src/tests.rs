use super::*;
use siphon_script::rpc::RpcReply;
use siphon_script::{Program, Registry, load_str};

fn program(params: &str, body: &str) -> Result<Arc<Program>, String> {
    program_with(params, body, |_| {})
}

/// A program with test functions `add` puts in the registry.
fn program_with(
    params: &str,
    body: &str,
    add: impl FnOnce(&mut Registry),
) -> Result<Arc<Program>, String> {
    let mut reg = Registry::new();
    reg.add(def());
    add(&mut reg);
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
        Ok(json!({"item": {"name": "x", "value": 5, "flags": 0, "expire": "NEVER"}}))
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
fn expiry_dates_are_civil_utc() {
    assert_eq!(date_of(0), "1970-01-01 00:00:00");
    assert_eq!(date_of(951_782_400), "2000-02-29 00:00:00");
    assert_eq!(date_of(1_798_749_323), "2026-12-31 20:35:23");
    assert_eq!(date_of(4_102_444_799), "2099-12-31 23:59:59");
}

/// `htable.get` as Kamailio 5.6.3 answers it: the cell flags (2: a
/// string) and the expiry (`NEVER`, or the date).
#[test]
fn rpc_get_shows_flags_and_expiry() {
    let p = program(
        "modparam(\"htable\", \"htable\", \"a=>size=4\")\nmodparam(\"htable\", \"htable\", \"e=>autoexpire=300\")",
        "",
    )
    .unwrap();
    rpc(&p, "htable.sets", &[json!("a"), json!("s"), json!("v")]).unwrap();
    rpc(&p, "htable.seti", &[json!("e"), json!("n"), json!(1)]).unwrap();
    assert_eq!(
        rpc(&p, "htable.get", &[json!("a"), json!("s")]),
        Ok(json!({"item": {"name": "s", "value": "v", "flags": 2, "expire": "NEVER"}}))
    );
    let e = rpc(&p, "htable.get", &[json!("e"), json!("n")]).unwrap();
    assert_eq!(e["item"]["flags"], json!(0));
    let date = e["item"]["expire"].as_str().unwrap().to_string();
    // 300 s from now (the second may turn meanwhile).
    assert!(
        [299, 300, 301].iter().any(|s| expire_date(*s) == date),
        "{date}"
    );
}

#[test]
fn config_errors_are_reported() {
    let e = program("modparam(\"htable\", \"htable\", \"a=>dbtable=x\")", "").unwrap_err();
    assert!(e.contains("db_url"), "{e}");
    let e = program(T, "$sht(nope=>x) = 1;").unwrap_err();
    assert!(e.contains("no htable `nope`"), "{e}");
    let e = program(T, "sht_reset(\"nope\");").unwrap_err();
    assert!(e.contains("no htable"), "{e}");
    // The database and KEMI parameters are refused where they are written.
    let e = program(
        &format!("{T}\nmodparam(\"htable\", \"db_url\", \"mysql://k@localhost/k\")"),
        "",
    )
    .unwrap_err();
    assert!(
        e.contains("no SQL database backend") && e.contains("t.cfg:4:"),
        "{e}"
    );
    let e = program(
        &format!("{T}\nmodparam(\"htable\", \"event_callback\", \"ksr_htable_event\")"),
        "",
    )
    .unwrap_err();
    assert!(e.contains("no KEMI"), "{e}");
    // DMQ and the timer processes: accepted, no effect.
    program(
        &format!(
            "{T}\nmodparam(\"htable\", \"enable_dmq\", 1)\nmodparam(\"htable\", \"timer_procs\", 2)"
        ),
        "",
    )
    .unwrap();
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

/// The values the route pushed to `$avp(name)`, oldest first, as text.
fn avps(ctx: &siphon_script::Ctx, name: &str) -> Vec<String> {
    ctx.avps
        .all(name)
        .iter()
        .map(|v| v.to_text().into_owned())
        .collect()
}

fn run(p: &Arc<Program>) -> siphon_script::Ctx {
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    ctx
}

#[test]
fn iterators_walk_in_kamailio_order_and_edit_items() {
    let p = program(
        T,
        "$sht(a=>boot) = \"init\"; $sht(a=>i) = 1; $sht(a=>x1) = 2; $sht(a=>x2) = \"s\";\n\
         sht_iterator_start(\"i1\", \"a\");\n\
         while (sht_iterator_next(\"i1\")) { $avp(k) = $shtitkey(i1); $avp(v) = $shtitval(i1); }\n\
         if ($shtitkey(i1) == $null) { $avp(after) = \"none\"; }\n\
         sht_iterator_start(\"i1\", \"a\");\n\
         while (sht_iterator_next(\"i1\")) {\n\
           while ($shtitkey(i1) =~ \"^x\" && sht_iterator_rm(\"i1\")) { $avp(rm) = $shtitkey(i1); }\n\
           if ($shtitkey(i1) == \"i\") { sht_iterator_seti(\"i1\", 41); }\n\
           if ($shtitkey(i1) == \"boot\") { sht_iterator_sets(\"i1\", \"done\"); sht_iterator_setex(\"i1\", 90); }\n\
         }\n\
         $avp(rc) = $rc;\n\
         sht_iterator_end(\"i1\"); $avp(end) = $rc; sht_iterator_end(\"i1\"); $avp(end) = $rc;\n\
         sht_iterator_next(\"i1\"); $avp(next) = $rc;\n\
         $avp(ex) = $shtex(a=>boot);",
    )
    .unwrap();
    let ctx = run(&p);
    // Slot by slot (Kamailio's dump puts "i" in slot 4, "boot" in 10).
    let keys = avps(&ctx, "k");
    assert_eq!(keys.len(), 4, "{keys:?}");
    let pos = |k: &str| keys.iter().position(|x| x == k).unwrap();
    assert!(pos("i") < pos("boot"), "{keys:?}");
    let mut want: Vec<(u32, u32, &str)> = ["boot", "i", "x1", "x2"]
        .iter()
        .map(|k| (slot_of(k.as_bytes(), 4), core_hash(k.as_bytes()), *k))
        .collect();
    want.sort();
    assert_eq!(keys, want.iter().map(|w| w.2).collect::<Vec<_>>());
    let vals = avps(&ctx, "v");
    assert_eq!(vals[pos("boot")], "init");
    assert_eq!(vals[pos("x1")], "2");
    assert_eq!(avps(&ctx, "after"), ["none"]);
    assert_eq!(avps(&ctx, "end"), ["1", "-1"]);
    assert_eq!(avps(&ctx, "next"), ["-1"]);
    let get = |k: &str| rpc(&p, "htable.get", &[json!("a"), json!(k)]);
    assert!(get("x1").is_err() && get("x2").is_err());
    assert_eq!(get("i").unwrap()["item"]["value"], json!(41));
    assert_eq!(get("boot").unwrap()["item"]["value"], json!("done"));
    let ex: i64 = avps(&ctx, "ex")[0].parse().unwrap();
    assert!((89..=90).contains(&ex), "{ex}");
}

#[test]
fn iterator_errors() {
    let e = program(T, "sht_iterator_start(\"i\", \"nope\");").unwrap_err();
    assert!(e.contains("no htable `nope`"), "{e}");
    let e = program(T, "$var(x) = $shtitkey();").unwrap_err();
    assert!(e.contains("iterator name"), "{e}");
    let e = program(T, "sht_lock(\"nope=>k\");").unwrap_err();
    assert!(e.contains("no htable `nope`"), "{e}");
    let e = program(T, "sht_unlock(\"k\");").unwrap_err();
    assert!(e.contains("table=>key"), "{e}");
    let p = program(
        T,
        "sht_iterator_start(\"a\", \"a\"); sht_iterator_start(\"b\", \"a\"); sht_iterator_start(\"c\", \"a\"); sht_iterator_start(\"d\", \"a\");\n\
         sht_iterator_start(\"e\", \"a\"); $avp(rc) = $rc;\n\
         sht_iterator_next(\"zz\"); $avp(rc) = $rc;\n\
         sht_iterator_sets(\"a\", \"v\"); $avp(rc) = $rc;\n\
         sht_iterator_rm(\"a\"); $avp(rc) = $rc;\n\
         $sht(a=>only) = 1; sht_iterator_start(\"a\", \"a\"); sht_iterator_next(\"a\"); sht_iterator_rm(\"a\"); $avp(rc) = $rc;",
    )
    .unwrap();
    let ctx = run(&p);
    // Five at once: -1; unknown: -1; not on an item: -1; the last item
    // removed: -2.
    assert_eq!(avps(&ctx, "rc"), ["-1", "-1", "-1", "-1", "-2"]);
    // The iterators ended with the run: a new run starts with none.
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    assert_eq!(avps(&ctx, "rc")[0], "-1", "still four at most per run");
}

/// A test function that suspends the transaction.
fn park(reg: &mut Registry) {
    reg.core_functions
        .push(FunctionSpec::new("park", &[], |_, _| {
            FnResult::Suspend(siphon_script::api::Suspend {
                start: Box::new(|_, _| {}),
            })
        }));
}

#[test]
fn locks_are_released_when_the_route_ends_or_suspends() {
    let p = program_with(
        T,
        "sht_lock(\"a=>k\"); $sht(a=>k) = $sht(a=>k) + 10; sht_lock(\"a=>k\"); sht_unlock(\"a=>k\"); $avp(rc) = $rc;\n\
         if ($var(park) == 1) { park(); }\n\
         if ($var(keep) == 0) { sht_unlock(\"a=>k\"); }\n\
         sht_unlock(\"a=>k\"); $avp(rc) = $rc;",
        park,
    )
    .unwrap();
    let h = p.module::<Htable>().unwrap();
    let id = h.tables.id("a").unwrap();
    let go = |park: i64, keep: i64| {
        let mut ctx = p.new_ctx(RouteType::REQUEST);
        ctx.may_suspend = true;
        ctx.vars[p.var_slot("park").unwrap()] = Value::Int(park);
        ctx.vars[p.var_slot("keep").unwrap()] = Value::Int(keep);
        let out = p.run(p.request_route().unwrap(), &mut ctx);
        (out, ctx)
    };
    // Locked, re-locked, unlocked in full; an unlock too many answers 1.
    let (_, ctx) = go(0, 0);
    assert_eq!(avps(&ctx, "rc"), ["1", "1"]);
    assert!(!h.tables.locks.any_held(id));
    // Left locked: released at the route's end.
    let (_, _ctx) = go(0, 1);
    assert!(!h.tables.locks.any_held(id));
    // Suspended while locked: released at the suspension.
    let (out, ctx) = go(1, 1);
    assert!(matches!(out, siphon_script::Outcome::Suspended(_)));
    assert!(!h.tables.locks.any_held(id));
    assert!(ctx.ext.get::<RunLocks>().is_none());
    assert_eq!(
        rpc(&p, "htable.get", &[json!("a"), json!("k")]).unwrap()["item"]["value"],
        json!(30)
    );
}

/// Runs the request route with `$var(w)` 1 on a thread until it reaches
/// `gate()` (holding a lock there), then `second` on the multi-threaded
/// runtime (its waits are `block_in_place`); checks that `second` waits
/// (seen as a waiter, not slept on), runs `meanwhile`, opens the gate and
/// returns what `meanwhile` and `second` gave.
fn while_gated<M, R: Send + 'static>(
    params: &str,
    body: &str,
    meanwhile: impl FnOnce(&Arc<Program>) -> M,
    second: impl FnOnce(Arc<Program>) -> R + Send + 'static,
) -> (Arc<Program>, M, R) {
    let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
    let open_rx = Arc::new(std::sync::Mutex::new(open_rx));
    let (in_tx, in_rx) = std::sync::mpsc::channel::<()>();
    let p = program_with(params, body, move |reg| {
        reg.core_functions
            .push(FunctionSpec::new("gate", &[], move |_, _| {
                in_tx.send(()).unwrap();
                open_rx.lock().unwrap().recv().unwrap();
                FnResult::Code(1)
            }));
    })
    .unwrap();
    let locks = p.module::<Htable>().unwrap().tables.locks.clone();
    let p1 = Arc::clone(&p);
    let a = std::thread::spawn(move || run_as(&p1, 1));
    // Until worker 1 is at the gate (or failed before it).
    while in_rx
        .recv_timeout(std::time::Duration::from_millis(50))
        .is_err()
    {
        assert!(!a.is_finished(), "worker 1 ended before gate()");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let p2 = Arc::clone(&p);
    let b = rt.spawn(async move { second(p2) });
    while locks.waiters() != 1 && !b.is_finished() {
        std::thread::yield_now();
    }
    assert!(!b.is_finished(), "it did not wait for the lock");
    let m = meanwhile(&p);
    open_tx.send(()).unwrap();
    a.join().unwrap();
    let r = rt.block_on(b).unwrap();
    assert!(!locks.any_held(0));
    (p, m, r)
}

/// Runs the request route with `$var(w)` set; `$var(r)` after it.
fn run_as(p: &Arc<Program>, w: i64) -> Value {
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    if let Some(i) = p.var_slot("w") {
        ctx.vars[i] = Value::Int(w);
    }
    p.run(p.request_route().unwrap(), &mut ctx);
    p.var_slot("r").map_or(Value::Null, |i| ctx.vars[i].clone())
}

/// One worker holds `a=>k` across a read-modify-write while it waits in
/// `gate()`; another worker's `$shtinc(a=>k)` waits for the unlock and
/// lands after the write: 2, not 1.
#[test]
fn sht_lock_serialises_a_read_modify_write_across_workers() {
    let (p, (), _) = while_gated(
        "modparam(\"htable\", \"htable\", \"a=>size=4;initval=0\")",
        "if ($var(w) == 1) {\n\
           sht_lock(\"a=>k\"); $var(x) = $sht(a=>k); gate(); $sht(a=>k) = $var(x) + 1; sht_unlock(\"a=>k\");\n\
         } else {\n\
           $var(y) = $shtinc(a=>k);\n\
         }",
        |_| (),
        |p| run_as(&p, 2),
    );
    assert_eq!(
        rpc(&p, "htable.get", &[json!("a"), json!("k")]).unwrap()["item"]["value"],
        json!(2)
    );
}

/// Worker 1 holds `a=>boot`'s slot (10 of 16) between writing `one` and
/// `two` there, parked in `gate()`. Worker 2 runs `op` (a whole-table
/// operation): it waits for the slot — meanwhile item `i` (slot 4) is done
/// already — and sees `two` once worker 1 unlocks. Returns worker 2's
/// `$var(r)` and what the table holds then.
fn whole_table_op_waits(op: &str) -> (Value, serde_json::Value) {
    assert_eq!(slot_of(b"boot", 4), 10);
    assert_eq!(slot_of(b"i", 4), 4);
    let (p, i_now, r) = while_gated(
        "modparam(\"htable\", \"htable\", \"a=>size=4\")",
        &format!(
            "if ($var(w) == 1) {{\n\
               $sht(a=>i) = \"two\"; sht_lock(\"a=>boot\"); $sht(a=>boot) = \"one\"; gate(); $sht(a=>boot) = \"two\"; sht_unlock(\"a=>boot\");\n\
             }} else {{\n\
               {op}\n\
             }}"
        ),
        // The other slot was done without waiting.
        |p| rpc(p, "htable.get", &[json!("a"), json!("i")]),
        |p| run_as(&p, 2),
    );
    let dump = rpc(&p, "htable.dump", &[json!("a")]).unwrap();
    let items: serde_json::Value = dump
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["slot"].as_array().unwrap().clone())
        .map(|i| json!([i["name"], i["value"]]))
        .collect();
    (r, json!({"i_meanwhile": i_now.is_ok(), "after": items}))
}

#[test]
fn whole_table_operations_wait_for_sht_lock_slot_by_slot() {
    // Removals: `two` (written after the wait) is removed; `i` is gone
    // before worker 1 unlocks.
    for op in [
        "sht_rm_value_re(\"a=>^two$\"); $var(r) = $rc;",
        "sht_rm_value(\"a\", \"re\", \"^two$\"); $var(r) = $rc;",
    ] {
        assert_eq!(
            whole_table_op_waits(op),
            (Value::Int(1), json!({"i_meanwhile": false, "after": []})),
            "{op}"
        );
    }
    assert_eq!(
        whole_table_op_waits("sht_rm_name_re(\"a=>^(boot|i)$\"); $var(r) = $rc;"),
        (Value::Int(1), json!({"i_meanwhile": false, "after": []}))
    );
    assert_eq!(
        whole_table_op_waits("sht_reset(\"a\"); $var(r) = $rc;"),
        (Value::Int(1), json!({"i_meanwhile": false, "after": []}))
    );
    // Counting: both items hold `two` once the lock is given back.
    assert_eq!(
        whole_table_op_waits("$var(r) = $shtcv(a=>==two);"),
        (
            Value::Int(2),
            json!({"i_meanwhile": true, "after": [["i", "two"], ["boot", "two"]]})
        )
    );
}

/// The RPCs wait for a held slot too (Kamailio's take the slot locks).
#[test]
fn rpcs_wait_for_sht_lock() {
    for (method, params, want) in [
        (
            "htable.get",
            vec![json!("a"), json!("boot")],
            json!({"item": {"name": "boot", "value": "two", "flags": 2, "expire": "NEVER"}}),
        ),
        (
            "htable.dump",
            vec![json!("a")],
            json!([{"entry": 10, "size": 1, "slot": [{"name": "boot", "value": "two", "type": "str"}]}]),
        ),
        (
            "htable.stats",
            vec![],
            json!([{"name": "a", "slots": 16, "all": 1, "min": 0, "max": 1}]),
        ),
    ] {
        let (_, (), got) = while_gated(
            "modparam(\"htable\", \"htable\", \"a=>size=4\")",
            "sht_lock(\"a=>boot\"); $sht(a=>boot) = \"one\"; gate(); $sht(a=>boot) = \"two\"; sht_unlock(\"a=>boot\");",
            |_| (),
            move |p| rpc(&p, method, &params),
        );
        assert_eq!(got, Ok(want), "{method}");
    }
}
