//! Interpreter tests: every statement, operator, PV class and transformation.

use super::*;
use std::sync::{Arc, Mutex};

/// A registry with `out(value)`, which records what it is given, and
/// `ret(n)`, which returns n.
fn registry(out: Arc<Mutex<Vec<String>>>) -> Registry {
    let mut r = Registry::new();
    r.core_functions.push(FunctionSpec::new(
        "out",
        &[ArgKind::Any],
        move |ex, args| {
            let v = args.value(0, ex);
            out.lock().unwrap().push(v.to_string());
            1.into()
        },
    ));
    r.core_functions
        .push(FunctionSpec::new("ret", &[ArgKind::Int], |ex, args| {
            FnResult::Code(args.int(0, ex).unwrap_or(0) as i32)
        }));
    r
}

fn compile_ok(cfg: &str) -> (Program, Arc<Mutex<Vec<String>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let l = load_str("t.cfg", cfg, &PreOptions::default(), &registry(out.clone()));
    let rendered = siphon_cfg::diag::render_all(&l.diags, &l.sources);
    let p = l.program.unwrap_or_else(|| panic!("{rendered}"));
    (p, out)
}

fn run(cfg: &str) -> Vec<String> {
    let (p, out) = compile_ok(cfg);
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().expect("request_route"), &mut ctx);

    out.lock().unwrap().clone()
}

fn errors(cfg: &str) -> Vec<String> {
    let l = load_str(
        "t.cfg",
        cfg,
        &PreOptions::default(),
        &registry(Default::default()),
    );
    assert!(l.program.is_none(), "expected errors");
    l.diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.message.clone())
        .collect()
}

fn rr(body: &str) -> Vec<String> {
    run(&format!("request_route {{\n{body}\n}}\n"))
}

#[test]
fn if_else_chain_and_blocks() {
    assert_eq!(
        rr(r#"if (1 == 2) out("a"); else if (2 == 2) { out("b"); } else out("c"); { out("d"); }"#),
        ["b", "d"]
    );
}

#[test]
fn while_and_break() {
    assert_eq!(
        rr(
            "$var(i) = 0; while ($var(i) < 5) { $var(i) = $var(i) + 1; if ($var(i) == 3) break; } out($var(i));"
        ),
        ["3"]
    );
}

#[test]
fn max_while_loops_stops_a_runaway_loop() {
    let (p, out) = compile_ok(
        "max_while_loops=7\nrequest_route { $var(n) = 0; while (1) { $var(n) = $var(n) + 1; } out($var(n)); }",
    );
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    assert_eq!(*out.lock().unwrap(), ["7"]);
    assert_eq!(
        p.stats
            .while_limit_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn switch_with_fallthrough_default_and_strings() {
    let body = |v: &str| {
        format!(
            r#"switch ({v}) {{ case 1: out("one"); case 2: out("two"); break; case "x": out("ex"); break; default: out("dflt"); }}"#
        )
    };
    assert_eq!(rr(&body("1")), ["one", "two"]);
    assert_eq!(rr(&body("2")), ["two"]);
    assert_eq!(rr(&body("\"x\"")), ["ex"]);
    assert_eq!(rr(&body("9")), ["dflt"]);
}

#[test]
fn return_exit_drop_and_route_codes() {
    let cfg = r#"
route[NEG] { return(-2); }
route[POS] { return 5; }
route[NONE] { $var(x) = 1; }
route[ZERO] { out("in zero"); return(0); }
request_route {
  if (!route(NEG)) $var(r) = $rc;
  out($var(r));
  if (route(POS)) out($retcode);
  route(NONE); out($rc);
  route(ZERO);
  out("not reached");
}"#;
    assert_eq!(run(cfg), ["-2", "5", "1", "in zero"]);
    let (p, _) = compile_ok("request_route { drop; }");
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    assert!(matches!(
        p.run(p.request_route().unwrap(), &mut ctx),
        Outcome::Drop
    ));
    let (p, _) = compile_ok("request_route { exit; }");
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    assert!(matches!(
        p.run(p.request_route().unwrap(), &mut ctx),
        Outcome::Exit
    ));
    let (p, _) = compile_ok("request_route { return(-3); }");
    assert!(matches!(
        p.run(p.request_route().unwrap(), &mut ctx),
        Outcome::Returned(-3)
    ));
}

#[test]
fn function_codes_zero_stops_negative_is_false() {
    assert_eq!(
        rr(r#"if (ret(-1)) out("t"); else $var(r) = $rc; out($var(r)); ret(0); out("no");"#),
        ["-1"]
    );
}

#[test]
fn recursion_is_bounded() {
    let cfg =
        "route[R] { $var(d) = $var(d) + 1; route(R); }\nrequest_route { route(R); out($var(d)); }";
    let (p, out) = compile_ok(cfg);
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(p.request_route().unwrap(), &mut ctx);
    assert!(out.lock().unwrap().is_empty(), "stops the whole script");
    assert_eq!(ctx.vars[p.var_slot("d").unwrap()], Value::Int(100));
}

#[test]
fn operators() {
    let got = rr(r#"
out(1 + 2 * 3); out((1 + 2) * 3); out(7 / 2); out(7 % 4); out(5 - 8); out(-4);
out("a" + "b"); out("n" + 1); out(1 + "2"); out(6 | 1); out(6 & 3);
out(2 < 10); out("2" < "10"); out(3 >= 3); out(2 > 3); out(2 <= 1);
out("abc" == "abc"); out("a" != "b"); out(1 == "1");
out(1 && 0); out(0 || 2); out(!0);
out("sip:alice@x" =~ "^SIP:[a-z]+@"); out("abc" !~ "b");
$var(re) = "^a.c$"; out("abc" =~ $var(re));
out(defined $avp(nope)); $avp(y) = 1; out(defined $avp(y));
"#);
    assert_eq!(
        got,
        [
            "7", "9", "3", "3", "-3", "-4", "ab", "n1", "3", "7", "2", "1", "0", "1", "0", "0",
            "1", "1", "1", "0", "1", "1", "1", "0", "1", "0", "1"
        ]
    );
}

#[test]
fn null_semantics() {
    let got = rr(
        r#"out($null); $var(x) = $null; if ($var(x) == $null) out("null"); out("[" + $avp(none) + "]"); out($var(unset));"#,
    );
    assert_eq!(got, ["<null>", "null", "[]", "0"]);
}

#[test]
fn var_avp_shv_classes() {
    let got = rr(r#"
$var(a) = "x"; $var(a) = $var(a) + "y"; out($var(a));
$avp(v) = 3; $avp(v) = 5; out($avp(v)); out($(avp(v)[1])); out($(avp(v)[-1])); out($avp(s:v));
$var(i) = 1; out($(avp(v)[$var(i)]));
$avp(v)[0] = 6; out($avp(v));
$avp(v) := 9; out($(avp(v)[1])); out($avp(v));
$avp(v) = $null; out($avp(v));
$shv(counter) = 10; $shv(counter) = $shv(counter) + 1; out($shv(counter));
"#);
    assert_eq!(
        got,
        [
            "xy", "5", "3", "3", "5", "3", "6", "<null>", "9", "<null>", "11"
        ]
    );
}

#[test]
fn shv_is_shared_between_runs_and_var_is_not() {
    let (p, out) = compile_ok(
        "request_route { $shv(n) = $shv(n) + 1; $var(n) = $var(n) + 1; out(\"\" + $shv(n) + \"/\" + $var(n)); }",
    );
    for _ in 0..3 {
        let mut ctx = p.new_ctx(RouteType::REQUEST);
        p.run(p.request_route().unwrap(), &mut ctx);
    }
    assert_eq!(*out.lock().unwrap(), ["1/1", "2/1", "3/1"]);
}

#[test]
fn pv_initial_values_from_modparam() {
    let got = run(
        "loadmodule \"pv\"\nmodparam(\"pv\", \"shvset\", \"lim=i:4\")\nmodparam(\"pv\", \"varset\", \"name=s:bob\")\nrequest_route { out($shv(lim) + 1); out($var(name)); }",
    );
    assert_eq!(got, ["5", "bob"]);
}

#[test]
fn transformations() {
    let got = rr(r#"
$var(s) = "Hello,World,Again";
out($(var(s){s.len})); out($(var(s){s.substr,6,5})); out($(var(s){s.substr,-5,0})); out($(var(s){s.substr,1,-1}));
out($(var(s){s.select,1,,})); out($(var(s){s.select,-1,,})); out($(var(s){s.select,9,,}));
out($(var(s){s.tolower})); out($(var(s){s.toupper}));
out($(var(s){s.strip,6})); out($(var(s){s.striptail,6}));
$var(n) = " 42 "; out($(var(n){s.int}) + 1); out($(var(n){s.trim}) + "!");
$var(p) = "a b;c=d"; out($(var(p){s.escape.param})); out($(var(p){s.escape.param}{s.unescape.param}));
out($(var(s){s.md5})); out($(var(s){s.substr,0,5}{s.md5}{s.len}));
$var(t) = "+1 (555) 010-9999"; out($(var(t){s.numeric}));
out($(var(s){s.substr,0,2}{s.encode.hexa})); out($(var(s){s.substr,0,2}{s.encode.hexa}{s.decode.hexa}));
$var(o) = 2; out($(var(s){s.substr,$var(o),3}));
"#);
    assert_eq!(
        got,
        [
            "17",
            "World",
            "Again",
            "ello,World,Agai",
            "World",
            "Again",
            "<null>",
            "hello,world,again",
            "HELLO,WORLD,AGAIN",
            "World,Again",
            "Hello,World",
            "43",
            "42!",
            "a%20b%3Bc%3Dd",
            "a b;c=d",
            "f11c8912a66e6a047189412d1a8455fa",
            "32",
            "15550109999",
            "4865",
            "He",
            "llo"
        ]
    );
}

#[test]
fn format_strings_expand_pvs() {
    let got = rr(
        r#"$var(u) = "alice"; $avp(n) = 2; out("user=$var(u) n=$avp(n) len=$(var(u){s.len}) cost $5 [$var(u)]");"#,
    );
    assert_eq!(got, ["user=alice n=2 len=5 cost $5 [alice]"]);
}

#[test]
fn flags() {
    assert_eq!(
        rr(
            r#"setflag(3); if (isflagset(3)) out("set"); resetflag(3); if (!isflagset(3)) out("reset");"#
        ),
        ["set", "reset"]
    );
}

#[test]
fn xlog_forms_compile_and_run() {
    assert!(rr(r#"xlog("plain $var(x)\n"); xlog("L_INFO", "info\n"); xlog(L_DBG, "dbg"); xinfo("i"); xnotice("n"); xwarn("w"); xerr("e"); xdbg("d"); log(1, "l"); log("l2");"#).is_empty());
    assert!(
        errors(r#"request_route { xlog("L_NOPE", "x"); }"#)[0]
            .contains("unknown log level `L_NOPE`")
    );
}

#[test]
fn protocols_and_ips_are_constants() {
    assert_eq!(rr(r#"out(UDP); out(127.0.0.1);"#), ["udp", "127.0.0.1"]);
}

#[test]
fn startup_and_event_routes_run_by_name() {
    let (p, out) =
        compile_ok("startup_route { out(\"start\"); }\nevent_route[core:x] { out(\"ev\"); }");
    let mut ctx = p.new_ctx(RouteType::STARTUP);
    p.run(p.startup_route().unwrap(), &mut ctx);
    assert!(p.event_route("core:x").is_some());
    p.run(p.event_route("core:x").unwrap(), &mut ctx);
    assert_eq!(*out.lock().unwrap(), ["start", "ev"]);
}

#[test]
fn suspend_stops_the_script_and_hands_over() {
    let mut r = registry(Default::default());
    r.core_functions
        .push(FunctionSpec::new("park", &[], |_, _| {
            FnResult::Suspend(api::Suspend {
                start: Box::new(|_, _| {}),
            })
        }));
    let l = load_str(
        "t.cfg",
        "request_route { $var(a) = 1; park(); $var(a) = 2; }",
        &PreOptions::default(),
        &r,
    );
    let p = l.program.unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    ctx.may_suspend = true;
    assert!(matches!(
        p.run(p.request_route().unwrap(), &mut ctx),
        Outcome::Suspended(_)
    ));
    assert_eq!(ctx.vars[p.var_slot("a").unwrap()], Value::Int(1));
    // Where nothing can be suspended the call is false and the route goes on.
    let mut ctx = p.new_ctx(RouteType::EVENT);
    assert!(matches!(
        p.run(p.request_route().unwrap(), &mut ctx),
        Outcome::Returned(1)
    ));
    assert_eq!(ctx.vars[p.var_slot("a").unwrap()], Value::Int(2));
    assert_eq!(ctx.last_rc, -1);
}

#[test]
fn compile_errors() {
    let e = errors(
        "request_route { $rc = 1; nosuch(); route(MISSING); xlog(); break; $(var(x){s.nope}) = 1; }",
    );
    let joined = e.join("\n");
    for want in [
        "cannot assign to `$rc`",
        "unknown function `nosuch`",
        "route `MISSING` is used but never defined",
        "`xlog` takes 1 to 2 arguments, found 0",
        "`break` outside",
        "unknown transformation `{s.nope}`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert!(
        errors("request_route { xlog(\"$nopv(x)\"); }")[0]
            .contains("unknown pseudo-variable `$nopv(x)`")
    );
    assert!(
        errors("request_route { if (\"a\" =~ \"(\") exit; }")[0].contains("bad regular expression")
    );
    assert!(errors("nochildren=4")[0].contains("unknown core parameter `nochildren`"));
    assert!(errors("loadmodule \"nosuch.so\"")[0].contains("module `nosuch` is not available"));
    assert!(errors("route[A] {}\nroute[A] {}")[0].contains("defined twice"));
}

#[test]
fn custom_settings_read_with_sel_and_changed_at_run_time() {
    let (p, out) = compile_ok(
        "pstn.gw_ip = \"\" desc \"PSTN GW Address\"\napp.level = 3\nrequest_route {\n out(\"[\" + $sel(cfg_get.pstn.gw_ip) + \"]\"); out($sel(cfg_get.app.level) + 1);\n}\n",
    );
    let run = || {
        let mut ctx = p.new_ctx(RouteType::REQUEST);
        p.run(p.request_route().unwrap(), &mut ctx);
    };
    run();
    let c = p.custom_cfg();
    let ip = c.find("pstn", "gw_ip").unwrap();
    assert_eq!(c.vars()[ip].desc, "PSTN GW Address");
    c.set(ip, Value::from("10.0.0.1")).unwrap();
    let level = c.find("app", "level").unwrap();
    assert!(
        c.set(level, Value::from("x")).is_err(),
        "an integer setting"
    );
    c.set(level, Value::from("7")).unwrap();
    run();
    assert_eq!(*out.lock().unwrap(), ["[]", "4", "[10.0.0.1]", "8"]);
    let e = errors("request_route { out($sel(cfg_get.pstn.nope)); }\n");
    assert!(e[0].contains("no custom setting `pstn.nope`"), "{e:?}");
    let e = errors("request_route { out($sel(ruri.user)); }\n");
    assert!(e[0].contains("reads only"), "{e:?}");
    let e = errors("a.b = 1\na.b = 2\nrequest_route { }\n");
    assert!(e[0].contains("declared twice"), "{e:?}");
}
