use super::*;
use siphon_script::net::{Peer, Transport};
use siphon_script::rpc::RpcReply;
use siphon_script::{Program, Registry, load_str};
use std::sync::Mutex;

const LIST: &str = "\
# set 1: three UAS
1 sip:127.0.0.1:5071
1 sip:127.0.0.1:5072
1 sip:127.0.0.1:5073
# set 2: priorities and weights
2 sip:10.0.0.1:5060 0 1 weight=20;duid=low
2 sip:10.0.0.2:5060 0 5 weight=50;duid=high
2 sip:10.0.0.3:5060 0 3 weight=30
";

fn list_file(text: &str) -> String {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "siphon-ds-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("dispatcher.list");
    std::fs::write(&f, text).unwrap();
    f.to_string_lossy().into_owned()
}

struct T {
    p: Arc<Program>,
    out: Arc<Mutex<Vec<String>>>,
    file: String,
}

fn setup(list: &str, params: &str, body: &str) -> T {
    let file = list_file(list);
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut reg = Registry::new();
    reg.add(def());
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out", &[ArgKind::Any], move |ex, a| {
            let v: Value = a.value(0, ex);
            o.lock().unwrap().push(v.to_string());
            1.into()
        }));
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out_du", &[], move |ex, _| {
            let du = ex.ctx.ext.get::<SipCtx>().unwrap().du.clone();
            let ru = ex.ctx.ext.get::<SipCtx>().unwrap().ruri();
            let v = match du {
                Some(d) => String::from_utf8_lossy(&d).into_owned(),
                None => format!("ru={}", String::from_utf8_lossy(&ru)),
            };
            o.lock().unwrap().push(v);
            1.into()
        }));
    reg.core_functions
        .push(FunctionSpec::new("is_m", &[ArgKind::Str], |ex, a| {
            let want = a.text(0, ex);
            let msg = &ex.ctx.ext.get::<SipCtx>().unwrap().msg;
            if msg.is_request() && msg.method_bytes().eq_ignore_ascii_case(want.as_bytes()) {
                1.into()
            } else {
                (-1).into()
            }
        }));
    let params = if params.contains("\"flags\"") {
        params.to_string()
    } else {
        format!("modparam(\"dispatcher\", \"flags\", 2)\n{params}")
    };
    let cfg = format!(
        "loadmodule \"dispatcher.so\"\nmodparam(\"dispatcher\", \"list_file\", \"{file}\")\n{params}\nrequest_route {{\n{body}\n}}\n"
    );
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
    T {
        p: Arc::new(p),
        out,
        file,
    }
}

fn request(callid: &str, from: &str, src: &str) -> SipCtx {
    let raw = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <{from}>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: {callid}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let msg = siphon_sip::parse(bytes::Bytes::from(raw)).unwrap();
    SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: src.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    )
}

impl T {
    /// Runs the request route for one request; returns `$du` (or the
    /// R-URI when no `$du`) and the context.
    fn run_with(&self, s: SipCtx) -> (String, siphon_script::Ctx) {
        let mut ctx = self.p.new_ctx(RouteType::REQUEST);
        ctx.ext.insert(s);
        self.p.run(self.p.request_route().unwrap(), &mut ctx);
        let s = ctx.ext.get::<SipCtx>().unwrap();
        let v = match &s.du {
            Some(d) => String::from_utf8_lossy(d).into_owned(),
            None => format!("ru={}", String::from_utf8_lossy(&s.ruri())),
        };
        (v, ctx)
    }
    fn run(&self, callid: &str) -> String {
        self.run_with(request(callid, "sip:alice@example.com", "127.0.0.1:5999"))
            .0
    }
    fn out(&self) -> Vec<String> {
        std::mem::take(&mut *self.out.lock().unwrap())
    }
    fn module(&self) -> &Dispatcher {
        self.p.module::<Dispatcher>().unwrap()
    }
    fn rpc(&self, method: &str, params: J) -> Result<J, RpcFailure> {
        let params = match params {
            J::Array(a) => a,
            J::Object(o) => o.values().cloned().collect(),
            _ => vec![],
        };
        match siphon_script::rpc::call(&self.p, method, params).expect("a command") {
            RpcReply::Now(r) => r,
            RpcReply::Later(_) => panic!("later"),
        }
    }
}

#[test]
fn list_file_is_parsed_sorted_by_priority_with_attributes() {
    let l = list::parse(LIST, "d.list").unwrap();
    assert_eq!(l.sets.len(), 2);
    let s2 = l.set(2).unwrap();
    let uris: Vec<&str> = s2.dests.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "sip:10.0.0.2:5060",
            "sip:10.0.0.3:5060",
            "sip:10.0.0.1:5060"
        ]
    );
    assert_eq!(s2.dests[0].weight, 50);
    assert_eq!(s2.dests[0].duid, "high");
    assert_eq!(s2.dests[2].priority, 1);
    let e = list::parse("1 sip:a\nx sip:b\n", "d.list").unwrap_err();
    assert!(e.starts_with("d.list:2:"), "{e}");
    let e = list::parse("1 nouri\n", "d.list").unwrap_err();
    assert!(e.starts_with("d.list:1:"), "{e}");
}

#[test]
fn kamailio_hash_is_reproduced() {
    // Values of Kamailio's ds_get_hash (computed by a port of the C code).
    assert_eq!(list::ds_hash(Some(b"abcdefg"), None), 1_841_897_292);
    assert_eq!(list::ds_hash(Some(b"a84b4c76e66710"), None), 161_557_962);
    assert_eq!(
        list::ds_hash(Some(b"alice"), Some(b"example.com")),
        1_442_294_598
    );
    assert_eq!(list::ds_hash(None, None), 0);
}

#[test]
fn round_robin_cycles_from_the_last_line_as_kamailio() {
    let t = setup(
        LIST,
        "",
        "if (!ds_select_dst(\"1\", \"4\")) { out(\"none\"); }",
    );
    let got: Vec<String> = (0..6).map(|i| t.run(&format!("c{i}"))).collect();
    assert_eq!(
        got,
        [
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5071",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5071"
        ]
    );
    assert!(t.out().is_empty());
}

#[test]
fn hash_algorithms_pick_by_key() {
    // Call-ID: the same Call-ID always the same destination; the index is
    // Kamailio's hash modulo the set's size.
    let t = setup(LIST, "", "ds_select_dst(\"1\", \"0\");");
    let want = |key: &[u8]| {
        format!(
            "sip:127.0.0.1:{}",
            5073 - list::ds_hash(Some(key), None) % 3
        )
    };
    for c in ["abcdefg", "a84b4c76e66710", "x", "call-4711@host"] {
        assert_eq!(t.run(c), want(c.as_bytes()));
        assert_eq!(t.run(c), want(c.as_bytes()));
    }
    // From URI: user and host.
    let t = setup(LIST, "", "ds_select_dst(1, 1);");
    let h = list::ds_hash(Some(b"alice"), Some(b"example.com")) % 3;
    let (du, _) = t.run_with(request("any", "sip:alice@example.com", "127.0.0.1:1"));
    assert_eq!(du, format!("sip:127.0.0.1:{}", 5073 - h));
    let (du2, _) = t.run_with(request("other", "sip:alice@example.com", "127.0.0.1:1"));
    assert_eq!(du, du2, "From hash ignores the Call-ID");
    // To and R-URI: bob@example.com.
    let hb = list::ds_hash(Some(b"bob"), Some(b"example.com")) % 3;
    for alg in [2, 3] {
        let t = setup(LIST, "", &format!("ds_select_dst(1, {alg});"));
        assert_eq!(t.run("q"), format!("sip:127.0.0.1:{}", 5073 - hb));
    }
}

#[test]
fn priority_picks_the_highest_and_fails_over_in_order() {
    let t = setup(
        LIST,
        "",
        "ds_select_dst(2, 8); out_du(); while (ds_next_dst()) { out_du(); } out($rc);",
    );
    t.run("c");
    assert_eq!(
        t.out(),
        [
            "sip:10.0.0.2:5060",
            "sip:10.0.0.3:5060",
            "sip:10.0.0.1:5060",
            "-1"
        ]
    );
}

#[test]
fn weight_splits_1000_picks_by_weight() {
    let t = setup(LIST, "", "ds_select_dst(2, 9);");
    let mut n = std::collections::HashMap::new();
    for i in 0..1000 {
        *n.entry(t.run(&format!("c{i}"))).or_insert(0) += 1;
    }
    assert_eq!(n["sip:10.0.0.2:5060"], 500);
    assert_eq!(n["sip:10.0.0.3:5060"], 300);
    assert_eq!(n["sip:10.0.0.1:5060"], 200);
}

#[test]
fn limit_and_inactive_destinations() {
    let t = setup(
        LIST,
        "",
        "ds_select_dst(1, 4, 2); out_du(); while (ds_next_dst()) { out_du(); }",
    );
    t.run("a");
    assert_eq!(t.out(), ["sip:127.0.0.1:5073", "sip:127.0.0.1:5072"]);
    // An inactive destination is skipped: its turn goes to the next one.
    assert_eq!(
        t.rpc(
            "dispatcher.set_state",
            json!(["ip", 1, "sip:127.0.0.1:5071"])
        ),
        Ok(J::from("Ok. Dispatcher state updated."))
    );
    t.run("b"); // 5072
    t.run("c"); // 5071 is down → 5073
    t.run("d"); // after 5073: 5072 (the turns stay even, as Kamailio 5.6)
    assert_eq!(
        t.out(),
        [
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5073"
        ]
    );
    // All down: -1.
    t.rpc("dispatcher.set_state", json!(["i", 1, "all"]))
        .unwrap();
    let t2 = setup(
        LIST,
        "",
        "if (ds_select_dst(1, 4)) { out(\"yes\"); } else { out(\"no\"); }",
    );
    t2.rpc("dispatcher.set_state", json!(["d", 1, "all"]))
        .unwrap();
    t2.run("x");
    assert_eq!(t2.out(), ["no"]);
}

#[test]
fn unknown_set_and_unsupported_algorithm() {
    let t = setup(
        LIST,
        "",
        "ds_select_dst(7, 4); out($rc); $var(a) = 14; ds_select_dst(1, $var(a)); out($rc); $var(a) = 10; ds_select_dst(1, $var(a)); out($rc);",
    );
    t.run("a");
    // 10 at run time without ds_hash_size: -1 (and an error logged).
    assert_eq!(t.out(), ["-1", "-1", "-1"]);
    let file = list_file(LIST);
    let mut reg = Registry::new();
    reg.add(def());
    let cfg = format!(
        "loadmodule \"dispatcher.so\"\nmodparam(\"dispatcher\", \"list_file\", \"{file}\")\nrequest_route {{\n ds_select_dst(1, 14);\n}}\n"
    );
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    assert!(l.program.is_none());
    let msg = siphon_cfg::diag::render_all(&l.diags, &l.sources);
    assert!(
        msg.contains("algorithm 14 does not exist") && msg.contains("t.cfg:4:"),
        "{msg}"
    );
}

#[test]
fn mark_dst_and_next_domain() {
    let t = setup(
        LIST,
        "",
        "ds_select_domain(1, 4); out_du(); ds_mark_dst(); ds_next_domain(); out_du(); ds_mark_dst(\"a\");",
    );
    t.run("a");
    assert_eq!(
        t.out(),
        ["ru=sip:bob@127.0.0.1:5073", "ru=sip:bob@127.0.0.1:5072"]
    );
    let l = t.rpc("dispatcher.list", json!([])).unwrap();
    let flags: Vec<&str> = l["RECORDS"][1]["SET"]["TARGETS"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["DEST"]["FLAGS"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["IX", "AX", "AX"]);
}

#[test]
fn is_from_list_matches_source_address() {
    let t = setup(
        LIST,
        "",
        "if (ds_is_from_list()) { out(\"any\"); } if (ds_is_from_list(2)) { out(\"2\"); } if (ds_is_from_list(1, 1)) { out(\"1noport\"); } if (ds_is_from_list(1, 3)) { out(\"1any\"); } if (ds_is_from_list(\"1\", \"0\", \"sip:127.0.0.1:5073\")) { out(\"uri\"); }",
    );
    // Set 1's destinations name no transport: with the protocol compared
    // (mode 1), a UDP source is not one of them (Kamailio's PROTO_NONE).
    t.run_with(request("a", "sip:a@b", "127.0.0.1:5072"));
    assert_eq!(t.out(), ["any", "1any", "uri"]);
    t.run_with(request("a", "sip:a@b", "127.0.0.1:6000"));
    assert_eq!(t.out(), ["1any", "uri"]);
    t.run_with(request("a", "sip:a@b", "10.0.0.3:5060"));
    assert_eq!(t.out(), ["any", "2", "uri"]);
}

/// Sets first seen in the order 1..5 form Kamailio's AVL tree 2(1, 4(3,
/// 5)), walked children first; other orders as Kamailio 5.6.3 built them.
#[test]
fn sets_are_searched_in_kamailio_avl_order() {
    assert_eq!(list::avl_postorder(&[1, 2, 3, 4, 5]), [1, 3, 5, 4, 2]);
    assert_eq!(list::avl_postorder(&[1, 2, 3]), [1, 3, 2]);
    assert_eq!(list::avl_postorder(&[3, 2, 1]), [1, 3, 2]);
    // A double rotation: 1, 3, 2 makes 2(1, 3).
    assert_eq!(list::avl_postorder(&[1, 3, 2]), [1, 3, 2]);
    assert_eq!(list::avl_postorder(&[5, 1, 9, 3]), [3, 1, 9, 5]);
    assert_eq!(list::avl_postorder(&[7]), [7]);
    assert!(list::avl_postorder(&[]).is_empty());
    let l = list::parse("2 sip:a\n1 sip:b\n3 sip:c\n2 sip:d\n", "f").unwrap();
    let ids: Vec<i64> = l.searched().map(|s| s.id).collect();
    assert_eq!(ids, [1, 3, 2]);
}

/// `setid_pvname` gets the set of the first match when every set is
/// searched (Kamailio's AVL order), `attrs_pvname` the destination's
/// attributes when it has some; port-less destinations match any port,
/// ones without `transport` only a URI without one (as Kamailio 5.6.3,
/// compared in tests/integration/dispatcher.rs).
#[test]
fn is_from_list_exports_the_set_and_attributes() {
    let list = "1 sip:127.0.0.2:5999\n2 sip:127.0.0.1 0 0 a=two\n3 sip:127.0.0.1:5999;transport=udp 0 0 a=three\n4 sip:127.0.0.1:5999\n5 sip:127.0.0.1:5999;transport=tcp 0 0 a=five\n";
    let t = setup(
        list,
        "modparam(\"dispatcher\", \"setid_pvname\", \"$var(set)\")\nmodparam(\"dispatcher\", \"attrs_pvname\", \"$avp(attrs)\")",
        "$var(set) = \"none\";\n\
         if ($var(u) == \"any\") { ds_is_from_list(); }\n\
         if ($var(u) == \"set2\") { ds_is_from_list(2); }\n\
         if ($var(u) == \"set4\") { ds_is_from_list(4, 0); }\n\
         if ($var(u) == \"nouri\") { ds_is_from_list(-1, 0, \"sip:127.0.0.1\"); }\n\
         if ($var(u) == \"tcp\") { ds_is_from_list(-1, 0, \"sip:127.0.0.1:5999;transport=TCP\"); }\n\
         out($rc); out($var(set)); out($avp(attrs));",
    );
    let ask = |user: &str| {
        let mut ctx = t.p.new_ctx(RouteType::REQUEST);
        ctx.ext.insert(request("x", "sip:a@b", "127.0.0.1:5999"));
        ctx.vars[t.p.var_slot("u").unwrap()] = Value::from(user.to_string());
        t.p.run(t.p.request_route().unwrap(), &mut ctx);
        t.out()
    };
    assert_eq!(ask("any"), ["1", "3", "a=three"]);
    // A given set: no set exported (Kamailio's), the attributes are.
    assert_eq!(ask("set2"), ["1", "none", "a=two"]);
    // No transport on the destination, UDP received: not it with mode 0.
    assert_eq!(ask("set4"), ["-1", "none", "<null>"]);
    assert_eq!(ask("nouri"), ["1", "2", "a=two"]);
    assert_eq!(ask("tcp"), ["1", "5", "a=five"]);
    // Not a PV: refused at its modparam, with where.
    let e = refused(
        LIST,
        "modparam(\"dispatcher\", \"setid_pvname\", \"set\")",
        "",
    );
    assert!(
        e.contains("is not one pseudo-variable") && e.contains("t.cfg:3:"),
        "{e}"
    );
}

/// `$dsg(...)` (Kamailio 5.8's) counts the destinations of the set
/// `ds_dsg_fetch` chose (set 1 before), active or not.
#[test]
fn dsg_counts_the_fetched_set() {
    let t = setup(
        LIST,
        "",
        "out($dsg(count)); ds_dsg_fetch(2); out($dsg(count)); out($dsg(active)); out($dsg(inactive)); out($dsg(pactive)); out($dsg(pinactive)); ds_dsg_fetch(\"9\"); out($dsg(count));",
    );
    t.rpc(
        "dispatcher.set_state",
        json!(["ip", 2, "sip:10.0.0.1:5060"]),
    )
    .unwrap();
    t.rpc("dispatcher.set_state", json!(["t", 2, "sip:10.0.0.2:5060"]))
        .unwrap();
    t.run("a");
    // Trying is still active; an unknown set reads $null.
    assert_eq!(t.out(), ["3", "3", "2", "1", "66", "33", "<null>"]);
    let e = refused(LIST, "", "$var(x) = $dsg(total);");
    assert!(
        e.contains("count, active, inactive, pactive or pinactive"),
        "{e}"
    );
}

/// `use_default`: the set's last destination (by priority, the file's
/// first among equals) is chosen only when every other is down, and ends
/// every failover list whatever its state (Kamailio's order, compared in
/// tests/integration/dispatcher.rs).
#[test]
fn use_default_keeps_the_last_destination_for_last() {
    let t = setup(
        LIST,
        "modparam(\"dispatcher\", \"use_default\", 1)",
        "if (ds_select_dst(1, 4)) { out_du(); while (ds_next_dst()) { out_du(); } } else { out(\"none\"); }",
    );
    // Set 1 is 5073, 5072, 5071: 5071 is the default.
    for c in ["a", "b", "c"] {
        t.run(c);
    }
    assert_eq!(
        t.out(),
        [
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5071",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5071",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5071",
        ]
    );
    // The default down: still last in the list.
    t.rpc(
        "dispatcher.set_state",
        json!(["ip", 1, "sip:127.0.0.1:5071"]),
    )
    .unwrap();
    t.run("d");
    assert_eq!(
        t.out(),
        [
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5071"
        ]
    );
    // The others down: the default alone; then nothing.
    t.rpc(
        "dispatcher.set_state",
        json!(["a", 1, "sip:127.0.0.1:5071"]),
    )
    .unwrap();
    t.rpc(
        "dispatcher.set_state",
        json!(["d", 1, "sip:127.0.0.1:5072"]),
    )
    .unwrap();
    t.rpc(
        "dispatcher.set_state",
        json!(["i", 1, "sip:127.0.0.1:5073"]),
    )
    .unwrap();
    t.run("e");
    assert_eq!(t.out(), ["sip:127.0.0.1:5071"]);
    t.rpc(
        "dispatcher.set_state",
        json!(["i", 1, "sip:127.0.0.1:5071"]),
    )
    .unwrap();
    t.run("f");
    assert_eq!(t.out(), ["none"]);
}

#[test]
fn use_default_with_limit_hash_and_priority() {
    let t = setup(
        LIST,
        "modparam(\"dispatcher\", \"use_default\", 1)",
        "if ($var(alg) == 0) { ds_select_dst(1, 4, 2); } else { ds_select_dst(2, $var(alg), $var(limit)); }\n\
         out_du(); while (ds_next_dst()) { out_du(); }",
    );
    let run = |alg: i64, limit: i64| {
        let mut ctx = t.p.new_ctx(RouteType::REQUEST);
        ctx.ext
            .insert(request("h", "sip:alice@example.com", "127.0.0.1:5999"));
        ctx.vars[t.p.var_slot("alg").unwrap()] = Value::Int(alg);
        ctx.vars[t.p.var_slot("limit").unwrap()] = Value::Int(limit);
        t.p.run(t.p.request_route().unwrap(), &mut ctx);
        t.out()
    };
    // Limit 2: the chosen one and the next; no room for the default.
    assert_eq!(run(0, 0), ["sip:127.0.0.1:5073", "sip:127.0.0.1:5072"]);
    // Set 2 by priority: 10.0.0.2 (5), 10.0.0.3 (3), 10.0.0.1 (1, the default).
    assert_eq!(
        run(8, 0),
        [
            "sip:10.0.0.2:5060",
            "sip:10.0.0.3:5060",
            "sip:10.0.0.1:5060"
        ]
    );
    // Limit 3 with the default: two chosen, then the default.
    assert_eq!(
        run(8, 3),
        [
            "sip:10.0.0.2:5060",
            "sip:10.0.0.3:5060",
            "sip:10.0.0.1:5060"
        ]
    );
    // Weight 9: the default's 20 slots of 100 go to the others by index.
    let mut picks = std::collections::BTreeMap::new();
    for _ in 0..100 {
        *picks.entry(run(9, 1).remove(0)).or_insert(0) += 1;
    }
    assert!(!picks.contains_key("sip:10.0.0.1:5060"), "{picks:?}");
    assert_eq!(picks.values().sum::<i32>(), 100);
}

#[test]
fn rpcs_list_set_state_named_reload_ping() {
    let t = setup(LIST, "", "ds_select_dst(1, 4);");
    let l = t.rpc("dispatcher.list", json!([])).unwrap();
    assert_eq!(l["NRSETS"], 2);
    // Kamailio's order: the set that appears last in the file first.
    assert_eq!(l["RECORDS"][0]["SET"]["ID"], 2);
    let d = &l["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"];
    assert_eq!(d["ATTRS"]["SOCKET"], J::Null);
    assert_eq!(d["URI"], "sip:10.0.0.2:5060");
    assert_eq!(d["FLAGS"], "AX");
    assert_eq!(d["PRIORITY"], 5);
    assert_eq!(d["ATTRS"]["DUID"], "high");
    assert_eq!(d["ATTRS"]["WEIGHT"], 50);
    // The seed's named form (with its typo), in any order.
    t.rpc(
        "dispatcher.set_state",
        json!({"state": "ip", "grpup": 1, "address": "sip:127.0.0.1:5073"}),
    )
    .unwrap();
    assert_eq!(t.module().lists().set(1).unwrap().dests[0].state(), "IP");
    assert_eq!(t.run("a"), "sip:127.0.0.1:5072");
    let e = t
        .rpc("dispatcher.set_state", json!(["a", 1, "sip:9.9.9.9"]))
        .unwrap_err();
    assert_eq!(e.code, 500);
    assert!(
        t.rpc("dispatcher.set_state", json!(["zz", 1, "all"]))
            .is_err()
    );
    // Reload: the file's states again, and its new content.
    std::fs::write(&t.file, "3 sip:127.0.0.1:5090\n").unwrap();
    assert_eq!(
        t.rpc("dispatcher.reload", json!([])),
        Ok(J::from("Ok. Dispatcher successfully reloaded."))
    );
    assert_eq!(t.rpc("dispatcher.list", json!([])).unwrap()["NRSETS"], 1);
    std::fs::write(&t.file, "x y\n").unwrap();
    assert_eq!(t.rpc("dispatcher.reload", json!([])).unwrap_err().code, 500);
    assert_eq!(t.rpc("dispatcher.list", json!([])).unwrap()["NRSETS"], 1);
    assert_eq!(
        t.rpc("dispatcher.ping_active", json!([])),
        Ok(json!({"OldPingState": 1}))
    );
    assert_eq!(
        t.rpc("dispatcher.ping_active", json!([0])),
        Ok(json!({"NewPingState": 0, "OldPingState": 1}))
    );
}

#[test]
fn count_and_failover_keeps_destinations_across_reload() {
    let t = setup(
        LIST,
        "",
        "ds_count(1, \"a\", \"$var(n)\"); out($var(n)); ds_select_dst(1, 4); out_du();",
    );
    let (_, mut ctx) = t.run_with(request("a", "sip:a@b", "127.0.0.1:1"));
    assert_eq!(t.out(), ["3", "sip:127.0.0.1:5073"]);
    std::fs::write(&t.file, "1 sip:127.0.0.1:6000\n").unwrap();
    t.rpc("dispatcher.reload", json!([])).unwrap();
    // The call in progress keeps what it picked.
    let st = ctx.ext.get_mut::<DsCtx>().unwrap();
    let rest: Vec<&str> = st.remaining.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(rest, ["sip:127.0.0.1:5072", "sip:127.0.0.1:5071"]);
}

#[test]
fn with_hostport_rewrites_only_the_host() {
    assert_eq!(
        &with_hostport(
            b"sip:bob@example.com;user=phone",
            b"sip:10.0.0.1:5080;transport=tcp"
        )
        .unwrap()[..],
        b"sip:bob@10.0.0.1:5080;user=phone"
    );
    assert_eq!(
        &with_hostport(b"sip:example.com", b"sip:[::1]:5080").unwrap()[..],
        b"sip:[::1]:5080"
    );
}

#[test]
fn no_failover_without_flag_2() {
    let t = setup(
        LIST,
        "modparam(\"dispatcher\", \"flags\", 0)",
        "ds_select_dst(2, 8); out_du(); ds_next_dst(); out($rc);",
    );
    t.run("c");
    assert_eq!(t.out(), ["sip:10.0.0.2:5060", "-1"]);
}

#[test]
fn relative_weight_splits_among_active_destinations() {
    let list = "3 sip:10.0.1.1 0 0 rweight=50\n3 sip:10.0.1.2 0 0 rweight=25\n3 sip:10.0.1.3 0 0 rweight=25\n";
    let t = setup(list, "", "ds_select_dst(3, 11);");
    let split = |t: &T| {
        let mut n = std::collections::BTreeMap::new();
        for i in 0..1000 {
            *n.entry(t.run(&format!("c{i}"))).or_insert(0) += 1;
        }
        n.into_iter().collect::<Vec<(String, i32)>>()
    };
    assert_eq!(
        split(&t),
        [
            ("sip:10.0.1.1".to_string(), 500),
            ("sip:10.0.1.2".to_string(), 250),
            ("sip:10.0.1.3".to_string(), 250)
        ]
    );
    // One down: the other two share by their relative weights (2:1).
    t.rpc("dispatcher.set_state", json!(["i", 3, "sip:10.0.1.2"]))
        .unwrap();
    let s = split(&t);
    assert_eq!(s[0].0, "sip:10.0.1.1");
    assert_eq!(s[1].0, "sip:10.0.1.3");
    // 50*100/75 = 66 and 25*100/75 = 33 slots (Kamailio truncates), the
    // slot left to the last given slots in the set's order: 10.0.1.1 (the
    // file's first line comes last).
    assert_eq!((s[0].1, s[1].1), (670, 330));
    let e = list::parse("1 sip:a 0 0 rweight=0\n", "d").unwrap_err();
    assert!(e.contains("rweight must be 1..100"), "{e}");
}

#[test]
fn mark_dst_runs_no_event_route_as_kamailio() {
    let t = setup(
        LIST,
        "",
        "ds_select_dst(1, 4); ds_mark_dst(\"ip\"); ds_mark_dst(\"i\"); ds_mark_dst(\"a\"); out(\"end\");\n}\nevent_route[dispatcher:dst-down] {\n out(\"down\"); out_du();\n}\nevent_route[dispatcher:dst-up] {\n out(\"up\"); out_du();",
    );
    t.run("a");
    // Kamailio 5.6.3 runs neither for ds_mark_dst (only on probing).
    assert_eq!(t.out(), ["end"]);
}

/// The diagnostics of a configuration that must not load.
fn refused(list: &str, params: &str, body: &str) -> String {
    let file = list_file(list);
    let mut reg = Registry::new();
    reg.add(def());
    let cfg = format!(
        "loadmodule \"dispatcher.so\"\nmodparam(\"dispatcher\", \"list_file\", \"{file}\")\n{params}\nrequest_route {{\n{body}\n}}\n"
    );
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    assert!(l.program.is_none(), "loaded: {cfg}");
    siphon_cfg::diag::render_all(&l.diags, &l.sources)
}

/// A message received from 127.0.0.1:5999: `start` line, then `headers`.
fn message(start: &str, callid: &str, cseq: &str, headers: &str) -> SipCtx {
    let raw = format!(
        "{start}\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: {callid}\r\nCSeq: {cseq}\r\n{headers}Content-Length: 0\r\n\r\n"
    );
    let msg = siphon_sip::parse(bytes::Bytes::from(raw)).unwrap();
    SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: "127.0.0.1:5999".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    )
}

fn invite(callid: &str, headers: &str) -> SipCtx {
    message(
        "INVITE sip:bob@example.com SIP/2.0",
        callid,
        "1 INVITE",
        headers,
    )
}

#[test]
fn constant_algorithms_and_probing_modes_are_checked_at_load() {
    let e = refused(LIST, "", "ds_select_dst(1, 7);");
    assert!(e.contains("hash_pvar") && e.contains("t.cfg:5:"), "{e}");
    let e = refused(LIST, "", "ds_select_domain(1, 10);");
    assert!(e.contains("ds_hash_size") && e.contains("t.cfg:5:"), "{e}");
    let e = refused(
        LIST,
        "modparam(\"dispatcher\", \"ds_hash_size\", 4)",
        "ds_select_dst(1, 10);",
    );
    assert!(
        e.contains("sip:127.0.0.1:5073 of set 1 has none") && e.contains("duid"),
        "{e}"
    );
    let e = refused(LIST, "modparam(\"dispatcher\", \"ds_probing_mode\", 4)", "");
    assert!(e.contains("ds_probing_mode 4 does not exist"), "{e}");
    let e = refused(
        LIST,
        "modparam(\"dispatcher\", \"ds_latency_estimator_alpha\", 1000)",
        "",
    );
    assert!(e.contains("1..999"), "{e}");
    let e = refused("1 sip:127.0.0.1 0 0 latency=fast\n", "", "");
    assert!(e.contains(":1: latency `fast`"), "{e}");
}

#[test]
fn auth_user_hash_falls_back_to_round_robin() {
    let t = setup(LIST, "", "ds_select_dst(1, 5);");
    let at = |user: &[u8]| {
        format!(
            "sip:127.0.0.1:{}",
            5073 - list::ds_hash(Some(user), None) % 3
        )
    };
    // Proxy-Authorization first; the user part of the user name.
    let pa = "Proxy-Authorization: Digest realm=\"r\", username=\"alice@example.com\", nonce=\"n\", uri=\"sip:x\", response=\"0\"\r\n";
    for c in ["a", "b", "c"] {
        assert_eq!(t.run_with(invite(c, pa)).0, at(b"alice"));
    }
    let both = format!("{pa}Authorization: Digest username=\"carol\", realm=\"r\"\r\n");
    assert_eq!(t.run_with(invite("d", &both)).0, at(b"alice"));
    let au = "Authorization: Digest realm=\"r\",username=bob,nonce=\"n\"\r\n";
    assert_eq!(t.run_with(invite("e", au)).0, at(b"bob"));
    // No credentials (or not digest): round robin from the set's turn.
    let rr: Vec<String> = (0..3)
        .map(|i| {
            t.run_with(invite(&format!("f{i}"), "Authorization: Basic YTpi\r\n"))
                .0
        })
        .collect();
    assert_eq!(
        rr,
        [
            "sip:127.0.0.1:5073",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5071"
        ]
    );
    assert_eq!(digest_username(b"Digest username=\" \""), Some(vec![]));
    assert_eq!(digest_username(b"Basic abc"), None);
}

#[test]
fn hash_pvar_picks_by_its_expansion() {
    let t = setup(
        LIST,
        "modparam(\"dispatcher\", \"hash_pvar\", \"$avp(hash) \")",
        "$avp(hash) = $var(k); if (ds_select_dst(1, 7)) { out_du(); } else { out(\"no\"); }",
    );
    let run = |k: &str| {
        let mut ctx = t.p.new_ctx(RouteType::REQUEST);
        ctx.ext.insert(invite("x", ""));
        ctx.vars[t.p.var_slot("k").unwrap()] = Value::from_str_copy(k);
        t.p.run(t.p.request_route().unwrap(), &mut ctx);
        t.out()
    };
    for k in ["alice", "bob", "carol"] {
        let want = format!(
            "sip:127.0.0.1:{}",
            5073 - list::ds_hash(Some(k.as_bytes()), None) % 3
        );
        assert_eq!(run(k), [want]);
    }
    // Empty once trimmed: -1, as Kamailio.
    assert_eq!(run(""), ["no"]);
}

#[test]
fn random_spreads_over_the_active_destinations() {
    let t = setup(LIST, "", "ds_select_dst(1, 6);");
    let split = |t: &T| {
        let mut n = std::collections::BTreeMap::new();
        for i in 0..300 {
            *n.entry(t.run(&format!("c{i}"))).or_insert(0) += 1;
        }
        n
    };
    let n = split(&t);
    assert_eq!(n.len(), 3, "{n:?}");
    assert!(n.values().all(|c| *c > 50), "{n:?}");
    t.rpc(
        "dispatcher.set_state",
        json!(["i", 1, "sip:127.0.0.1:5072"]),
    )
    .unwrap();
    let n = split(&t);
    assert!(!n.contains_key("sip:127.0.0.1:5072"), "{n:?}");
    // The one after an inactive pick takes its share: 5071 gets the
    // picks of 5072 too.
    assert!(n["sip:127.0.0.1:5071"] > n["sip:127.0.0.1:5073"], "{n:?}");
}

#[test]
fn parallel_forks_to_every_destination() {
    let t = setup(
        LIST,
        "",
        "ds_select_dst(1, 12); out($rc); if (!ds_next_dst()) { out(\"no failover\"); }",
    );
    t.rpc(
        "dispatcher.set_state",
        json!(["i", 1, "sip:127.0.0.1:5073"]),
    )
    .unwrap();
    let (du, ctx) = t.run_with(invite("p", ""));
    assert_eq!(t.out(), ["1", "no failover"]);
    // The first active one is $du; every one after it a branch (Kamailio
    // 5.6 adds those after the chosen one, down or not).
    assert_eq!(du, "sip:127.0.0.1:5072");
    let s = ctx.ext.get::<SipCtx>().unwrap();
    let b: Vec<(String, String)> = s
        .branches
        .iter()
        .map(|b| {
            (
                String::from_utf8_lossy(&b.uri).into_owned(),
                String::from_utf8_lossy(b.du.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        b,
        [(
            "sip:bob@example.com".to_string(),
            "sip:127.0.0.1:5071".to_string()
        )]
    );
    // All active, ds_select_domain: the R-URI's user at each destination.
    let t = setup(LIST, "", "ds_select_domain(1, 12);");
    let (ru, ctx) = t.run_with(invite("p", ""));
    assert_eq!(ru, "ru=sip:bob@127.0.0.1:5073");
    let uris: Vec<String> = ctx
        .ext
        .get::<SipCtx>()
        .unwrap()
        .branches
        .iter()
        .map(|b| {
            assert!(b.du.is_none());
            String::from_utf8_lossy(&b.uri).into_owned()
        })
        .collect();
    assert_eq!(uris, ["sip:bob@127.0.0.1:5072", "sip:bob@127.0.0.1:5071"]);
}

const LOAD_LIST: &str =
    "4 sip:127.0.0.1:5081 0 0 duid=a;maxload=2\n4 sip:127.0.0.1:5082 0 0 duid=b\n";

/// The calls in progress per destination of set 4, as `dispatcher.list`
/// shows them.
fn dlgload(t: &T) -> Vec<(String, i64)> {
    let l = t.rpc("dispatcher.list", json!([])).unwrap();
    l["RECORDS"][0]["SET"]["TARGETS"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["DEST"]["URI"].as_str().unwrap().to_string(),
                d["DEST"]["RUNTIME"]["DLGLOAD"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn call_load_picks_the_least_loaded_under_maxload() {
    let t = setup(
        LOAD_LIST,
        "modparam(\"dispatcher\", \"ds_hash_size\", 8)",
        "if (is_m(\"INVITE\")) { if (ds_select_dst(4, 10)) { out_du(); } else { out(\"none\"); } } else { ds_load_update(); out($rc); }",
    );
    let b = "sip:127.0.0.1:5082";
    let a = "sip:127.0.0.1:5081";
    for i in 0..5 {
        t.run_with(invite(&format!("call{i}"), ""));
    }
    // Ties go to the first in the set's order (the file's last line); `a`
    // takes no third call (maxload=2).
    assert_eq!(t.out(), [b, a, b, a, b]);
    assert_eq!(dlgload(&t), [(b.into(), 3), (a.into(), 2)]);
    // A retransmitted INVITE of a counted call is not counted twice.
    t.run_with(invite("call0", ""));
    assert_eq!(dlgload(&t), [(b.into(), 3), (a.into(), 2)]);
    t.out();
    // BYE of call1 (on a) ends its load; a 2xx to the INVITE confirms.
    t.run_with(message("BYE sip:bob@x SIP/2.0", "call1", "2 BYE", ""));
    t.run_with(message("SIP/2.0 200 OK", "call0", "1 INVITE", ""));
    t.run_with(message("CANCEL sip:bob@x SIP/2.0", "call4", "1 CANCEL", ""));
    assert_eq!(t.out(), ["1", "1", "1"]);
    assert_eq!(dlgload(&t), [(b.into(), 2), (a.into(), 1)]);
    // A non-INVITE is dispatched to the first, not counted.
    let t2 = setup(
        LOAD_LIST,
        "modparam(\"dispatcher\", \"ds_hash_size\", 8)",
        "ds_select_dst(4, 10); out_du();",
    );
    t2.run_with(message("MESSAGE sip:bob@x SIP/2.0", "m1", "1 MESSAGE", ""));
    assert_eq!(t2.out(), [b]);
    assert_eq!(dlgload(&t2), [(b.into(), 0), (a.into(), 0)]);
    // Every destination full or down: none.
    let t3 = setup(
        "4 sip:127.0.0.1:5081 0 0 duid=a;maxload=1\n",
        "modparam(\"dispatcher\", \"ds_hash_size\", 8)",
        "if (ds_select_dst(4, 10)) { out_du(); } else { out(\"none\"); }",
    );
    t3.run_with(invite("x1", ""));
    t3.run_with(invite("x2", ""));
    assert_eq!(t3.out(), [a, "none"]);
}

#[test]
fn call_load_moves_on_failover_and_unset_ends_it() {
    let t = setup(
        LOAD_LIST,
        "modparam(\"dispatcher\", \"ds_hash_size\", 8)",
        "ds_select_dst(4, 10); out_du(); if ($var(fail) == 1) { ds_next_dst(); out_du(); } if ($var(unset) == 1) { ds_load_unset(); out($rc); }",
    );
    let run = |callid: &str, fail: bool, unset: bool| {
        let mut ctx = t.p.new_ctx(RouteType::REQUEST);
        ctx.ext.insert(invite(callid, ""));
        ctx.vars[t.p.var_slot("fail").unwrap()] = Value::Int(i64::from(fail));
        ctx.vars[t.p.var_slot("unset").unwrap()] = Value::Int(i64::from(unset));
        t.p.run(t.p.request_route().unwrap(), &mut ctx);
    };
    run("c1", true, false);
    assert_eq!(t.out(), ["sip:127.0.0.1:5082", "sip:127.0.0.1:5081"]);
    assert_eq!(
        dlgload(&t),
        [
            ("sip:127.0.0.1:5082".into(), 0),
            ("sip:127.0.0.1:5081".into(), 1)
        ]
    );
    run("c2", false, true);
    assert_eq!(t.out(), ["sip:127.0.0.1:5082", "1"]);
    assert_eq!(
        dlgload(&t),
        [
            ("sip:127.0.0.1:5082".into(), 0),
            ("sip:127.0.0.1:5081".into(), 1)
        ]
    );
    // ds_load_unset for an INVITE this module did not count: nothing to do.
    let t2 = setup(LIST, "", "ds_select_dst(1, 4); ds_load_unset(); out($rc);");
    t2.run("u");
    assert_eq!(t2.out(), ["1"]);
}

#[test]
fn latency_orders_by_priority_and_rotates_among_equals() {
    let list = "5 sip:127.0.0.1:5091 0 30 latency=91\n5 sip:127.0.0.1:5092 0 30 latency=21\n5 sip:127.0.0.1:5093 0 30\n";
    let t = setup(
        list,
        "",
        "ds_select_dst(5, 13); out_du(); while (ds_next_dst()) { out_du(); }",
    );
    t.run("a");
    // 91 ms at priority 30 costs 3 points: the other two first.
    assert_eq!(
        t.out(),
        [
            "sip:127.0.0.1:5093",
            "sip:127.0.0.1:5092",
            "sip:127.0.0.1:5091"
        ]
    );
    let t = setup(list, "", "ds_select_dst(5, 13);");
    t.run("a");
    let picks: Vec<String> = (0..4).map(|i| t.run(&format!("c{i}"))).collect();
    assert_eq!(
        picks,
        [
            "sip:127.0.0.1:5092",
            "sip:127.0.0.1:5093",
            "sip:127.0.0.1:5092",
            "sip:127.0.0.1:5093"
        ]
    );
    // Both fast ones down: the slow one.
    t.rpc(
        "dispatcher.set_state",
        json!(["i", 5, "sip:127.0.0.1:5092"]),
    )
    .unwrap();
    t.rpc(
        "dispatcher.set_state",
        json!(["d", 5, "sip:127.0.0.1:5093"]),
    )
    .unwrap();
    assert_eq!(t.run("z"), "sip:127.0.0.1:5091");
    t.rpc("dispatcher.set_state", json!(["i", 5, "all"]))
        .unwrap();
    assert_eq!(t.run("n"), "ru=sip:bob@example.com");
}

#[test]
fn force_dst_0_keeps_a_destination_already_set() {
    let t = setup(
        LIST,
        "modparam(\"dispatcher\", \"force_dst\", 0)",
        "ds_select_dst(1, 4); out($rc); ds_select_dst(1, 4); out($rc); out_du(); ds_select_domain(1, 4); out($rc);",
    );
    t.run("a");
    assert_eq!(t.out(), ["1", "-1", "sip:127.0.0.1:5073", "1"]);
}

#[test]
fn list_shows_latency_with_latency_stats() {
    let t = setup(
        "1 sip:127.0.0.1:5071 0 0 latency=40\n",
        "modparam(\"dispatcher\", \"ds_ping_latency_stats\", 1)",
        "",
    );
    let l = t.rpc("dispatcher.list", json!([])).unwrap();
    let d = &l["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"];
    assert_eq!(d["LATENCY"]["AVG"], json!(40.0), "{d}");
    assert_eq!(d["LATENCY"]["MAX"], json!(40), "{d}");
    assert!(d.get("RUNTIME").is_none(), "{d}");
}

#[test]
fn list_exists_is_active_reload_and_ds_select_refused() {
    let t = setup(
        LIST,
        "",
        "ds_list_exists(2); out($rc); ds_list_exists(\"9\"); out($rc);\n\
         ds_is_active(1); out($rc); ds_is_active(1, \"sip:127.0.0.1:5073\"); out($rc); ds_is_active(2, \"sip:127.0.0.1:5073\"); out($rc);\n\
         ds_reload(); out($rc);",
    );
    t.rpc(
        "dispatcher.set_state",
        json!(["ip", 1, "sip:127.0.0.1:5073"]),
    )
    .unwrap();
    t.run("a");
    assert_eq!(t.out(), ["1", "-1", "1", "-1", "-1", "1"]);
    // The reload read the file again: 5073 is active.
    assert_eq!(t.module().lists().set(1).unwrap().dests[0].state(), "AX");
    std::fs::write(&t.file, "x\n").unwrap();
    t.run("b");
    assert_eq!(t.out(), ["1", "-1", "1", "1", "-1", "-1"]);
    let e = refused(LIST, "", "ds_select(1, 4);");
    assert!(e.contains("ds_select is not available in siphon"), "{e}");
    let e = refused(LIST, "", "ds_select_routes(\"1=4\", \"2\");");
    assert!(e.contains("ds_select_routes is not available"), "{e}");
}
