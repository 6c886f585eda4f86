//! Parser tests over whole small configurations.

use super::*;
use crate::ast::*;

fn ok(text: &str) -> Config {
    let p = parse_str("t.cfg", text, &PreOptions::default());
    assert!(
        p.diags.is_empty(),
        "{}",
        diag::render_all(&p.diags, &p.sources)
    );
    p.config
}

fn errs(text: &str) -> Vec<String> {
    let p = parse_str("t.cfg", text, &PreOptions::default());
    p.diags
        .iter()
        .map(|d| {
            format!(
                "{}: {}",
                p.sources.location(d.span.unwrap_or_default()),
                d.message
            )
        })
        .collect()
}

#[test]
fn globals_modules_and_routes() {
    let c = ok(r#"#!KAMAILIO
debug=3
log_stderror=yes
listen=udp:127.0.0.1:5060
listen=tcp:[::1]:5060
log_prefix="{$mt $ci} "
debug2 = -1
loadmodule "sl.so"
modparam("jsonrpcc", "servers", "127.0.0.1:9999,2 127.0.0.2:9999,1")
modparam("event_jsonrpc", "sync_mode", yes)
modparam("x", "y", -5);
request_route { exit; }
route[RESPONSE] { xlog("L_INFO", "r\n"); }
event_route[evapi:connection-new] { return; }
onreply_route { } failure_route[F] {} branch_route[B] {} startup_route {} reply_route {}
"#);
    let globals: Vec<(String, GlobalValue)> = c
        .items
        .iter()
        .filter_map(|i| {
            if let Item::Global(g) = i {
                Some((g.name.node.clone(), g.value.node.clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(globals[0], ("debug".into(), GlobalValue::Int(3)));
    assert_eq!(globals[1].1, GlobalValue::Word("yes".into()));
    assert_eq!(globals[2].1, GlobalValue::Word("udp:127.0.0.1:5060".into()));
    assert_eq!(globals[3].1, GlobalValue::Word("tcp:[::1]:5060".into()));
    assert_eq!(globals[4].1, GlobalValue::Str("{$mt $ci} ".into()));
    assert_eq!(globals[5].1, GlobalValue::Int(-1));
    let routes: Vec<(RouteKind, Option<String>)> = c
        .items
        .iter()
        .filter_map(|i| {
            if let Item::Route(r) = i {
                Some((r.kind, r.name.as_ref().map(|n| n.node.clone())))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        routes[2],
        (RouteKind::Event, Some("evapi:connection-new".into()))
    );
    assert_eq!(routes.len(), 8);
    let mp: Vec<&ModParam> = c
        .items
        .iter()
        .filter_map(|i| {
            if let Item::ModParam(m) = i {
                Some(m)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(mp[1].value.node, ParamValue::Int(1));
    assert_eq!(mp[2].value.node, ParamValue::Int(-5));
}

#[test]
fn flattened_config_on_one_line() {
    let c = ok(
        r#"#!KAMAILIO memdbg=5 memlog=5 debug=3 log_stderror=yes fork=yes children=2 tcp_accept_no_cl=yes loadmodule "sl.so" modparam("jsonrpcs", "transport", 1) request_route { send_reply("404", "not found"); exit; }"#,
    );
    assert_eq!(c.items.len(), 10);
}

#[test]
fn statements_and_precedence() {
    let c = ok(r#"route[X] {
  if ($var(a) == 1 || $var(b) + 2 * 3 > 4 && !is_method("INVITE")) { $var(x) = "a" "b"; } else if (src_ip!=127.0.0.1) drop; else { exit; }
  while ($var(i) < 10) { $var(i) = $var(i) + 1; }
  switch ($rm) { case "INVITE": xlog("i"); break; case 2: default: return(-1); }
  $avp(x) := $null;
  return;
}"#);
    let Item::Route(r) = &c.items[0] else {
        panic!()
    };
    assert_eq!(r.body.stmts.len(), 5);
    let StmtKind::If { cond, .. } = &r.body.stmts[0].kind else {
        panic!()
    };
    let ExprKind::Binary(BinOp::Or, _, rhs) = &cond.kind else {
        panic!("{cond:?}")
    };
    assert!(matches!(rhs.kind, ExprKind::Binary(BinOp::And, _, _)));
    let StmtKind::Switch { cases, .. } = &r.body.stmts[2].kind else {
        panic!()
    };
    assert_eq!(cases.len(), 3);
    assert_eq!(cases[0].body.len(), 2);
    assert!(cases[1].body.is_empty());
}

#[test]
fn several_errors_in_one_run() {
    let e = errs("request_route {\n  xlog(\"a\" ;\n  $var(x) = ;\n  foo()\n  bar();\n}\nbogus\n");
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("t.cfg:2:12: expected `,` or `)` after the arguments of `xlog`"),
        "{e:#?}"
    );
    assert!(e[1].contains("t.cfg:3:13: expected a value"), "{e:#?}");
    assert!(
        e[2].contains("expected `;` after the call to `foo`"),
        "{e:#?}"
    );
    assert!(e[3].contains("t.cfg:7:1"), "{e:#?}");
}

#[test]
fn unclosed_block_and_deep_nesting_do_not_hang() {
    assert!(!errs("request_route {\n if (1) {\n").is_empty());
    let deep = format!(
        "request_route {{ $var(x) = {}1{}; }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(errs(&deep).iter().any(|e| e.contains("nested deeper")));
}

#[test]
fn custom_settings_with_a_description() {
    let c = ok(r#"pstn.gw_ip = "" desc "PSTN GW Address"
pstn.gw_port = "5060"
app.level = -3 desc "a level"
children=2
request_route { }
"#);
    let got: Vec<(String, String, ParamValue, Option<String>)> = c
        .items
        .iter()
        .filter_map(|i| match i {
            Item::CustomCfg(x) => Some((
                x.group.node.clone(),
                x.name.node.clone(),
                x.value.node.clone(),
                x.desc.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "pstn".into(),
                "gw_ip".into(),
                ParamValue::Str(String::new()),
                Some("PSTN GW Address".into())
            ),
            (
                "pstn".into(),
                "gw_port".into(),
                ParamValue::Str("5060".into()),
                None
            ),
            (
                "app".into(),
                "level".into(),
                ParamValue::Int(-3),
                Some("a level".into())
            ),
        ]
    );
    assert!(
        c.items
            .iter()
            .any(|i| matches!(i, Item::Global(g) if g.name.node == "children"))
    );
    let e = errs("pstn.gw_ip = yes\n");
    assert!(
        e[0].contains("t.cfg:1:14") && e[0].contains("a string or an integer"),
        "{e:?}"
    );
}

#[test]
fn subst_rules_that_grow_a_string_without_bound_stop_with_an_error() {
    // Each rule inserts 8 bytes at every position: 9× per rule, 12 rules.
    let rules = "#!subst \"/x*/yyyyyyyy/g\"\n".repeat(12);
    let e = errs(&format!("{rules}request_route {{ xlog(\"a\"); }}\n"));
    assert!(
        e.iter().any(|m| m.contains("longer than 1048576 bytes")),
        "{e:?}"
    );
    // A rule that only rewrites still works.
    ok("#!subst \"/a/b/g\"\nrequest_route { xlog(\"aaa\"); }\n");
}

#[test]
fn subst_rules_have_a_budget_for_the_whole_configuration() {
    // Each string grows 64x to 640 KiB, under the per-string limit; 20 of
    // them would be 12.5 MiB of rewriting (a fuzzer's config took minutes).
    let rules = "#!subst \"/./yyyyyyyy/g\"\n".repeat(2);
    let strings = format!("xlog(\"{}\");\n", "a".repeat(10 << 10)).repeat(20);
    let e = errs(&format!("{rules}request_route {{\n{strings}}}\n"));
    assert!(
        e.iter()
            .any(|m| m.contains("produce more than 4194304 bytes in this configuration")),
        "{e:?}"
    );
    assert!(!e.iter().any(|m| m.contains("longer than")), "{e:?}");
}
