use super::*;
use siphon_script::net::{Peer, Transport};
use siphon_script::{Registry, Value, load_str};
use std::sync::Mutex;

/// Runs `body` in request_route for a request carrying `mf` (a whole
/// header line or nothing), with `params` as modparams; returns what
/// `out()` recorded and the message as it would be relayed.
fn run(params: &str, mf: &str, body: &str) -> (Vec<String>, String) {
    let (out, s) = run_ctx(params, mf, body);
    let wire = siphon_sip::serialize(&s.msg, &s.edits);
    (out, String::from_utf8_lossy(&wire).into_owned())
}

/// As [`run`], with the SIP context the route left.
fn run_ctx(params: &str, mf: &str, body: &str) -> (Vec<String>, SipCtx) {
    run_tuned(params, mf, body, |_| {})
}

/// As [`run_ctx`], with `tune` called on the module before the route runs.
fn run_tuned(params: &str, mf: &str, body: &str, tune: impl Fn(&Maxfwd)) -> (Vec<String>, SipCtx) {
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
    let cfg = format!("loadmodule \"maxfwd.so\"\n{params}\nrequest_route {{\n{body}\n}}\n");
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
    tune(p.module::<Maxfwd>().unwrap());
    let raw = format!(
        "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{mf}Content-Length: 0\r\n\r\n"
    );
    let msg = siphon_sip::parse(bytes::Bytes::from(raw)).unwrap();
    let addr = "127.0.0.1:5060".parse().unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    ctx.ext.insert(SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: addr,
            local: addr,
            conn: None,
        },
    ));
    p.run(p.request_route().unwrap(), &mut ctx);
    let v = out.lock().unwrap().clone();
    (v, ctx.ext.remove::<SipCtx>().unwrap())
}

fn errors(cfg: &str) -> Vec<String> {
    let mut reg = Registry::new();
    reg.add(def());
    let l = load_str("t.cfg", cfg, &Default::default(), &reg);
    l.diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.message.clone())
        .collect()
}

#[test]
fn decrements_and_returns_1() {
    let (o, wire) = run(
        "",
        "Max-Forwards: 70\r\n",
        "mf_process_maxfwd_header(\"10\"); out($rc);",
    );
    assert_eq!(o, ["1"]);
    assert!(wire.contains("\r\nMax-Forwards: 69\r\n"), "{wire}");
}

#[test]
fn missing_header_is_added_on_top_and_returns_2() {
    let (o, wire) = run(
        "",
        "",
        "mf_process_maxfwd_header(\"10\"); out($rc); mf_process_maxfwd_header(\"10\"); out($rc);",
    );
    assert_eq!(o, ["2", "2"]);
    assert!(
        wire.starts_with("INVITE sip:b@h SIP/2.0\r\nMax-Forwards: 10\r\nVia:"),
        "{wire}"
    );
    assert_eq!(
        wire.matches("Max-Forwards").count(),
        1,
        "added once: {wire}"
    );
}

#[test]
fn zero_is_false_and_the_script_answers() {
    let (o, wire) = run(
        "",
        "Max-Forwards: 0\r\n",
        "if (!mf_process_maxfwd_header(\"10\")) out(\"483\"); out($rc);",
    );
    assert_eq!(o, ["483", "1"]);
    assert!(wire.contains("Max-Forwards: 0\r\n"));
}

#[test]
fn above_max_limit_counts_as_max_limit_plus_one() {
    let (o, wire) = run(
        "modparam(\"maxfwd\", \"max_limit\", 16)",
        "Max-Forwards: 200\r\n",
        "mf_process_maxfwd_header(\"10\"); out($rc);",
    );
    assert_eq!(o, ["1"]);
    assert!(wire.contains("Max-Forwards: 16\r\n"), "{wire}");
    // The default limit is 70.
    let (_, wire) = run(
        "",
        "Max-Forwards: 255\r\n",
        "mf_process_maxfwd_header(\"10\");",
    );
    assert!(wire.contains("Max-Forwards: 70\r\n"), "{wire}");
}

#[test]
fn a_value_that_is_no_number_is_minus_2() {
    for bad in [
        "Max-Forwards: ten\r\n",
        "Max-Forwards: 123456\r\n",
        "Max-Forwards: -1\r\n",
    ] {
        let (o, _) = run("", bad, "mf_process_maxfwd_header(\"10\"); out($rc);");
        assert_eq!(o, ["-2"], "{bad}");
    }
    // Kamailio's str2s reads an empty value as 0.
    let (o, _) = run(
        "",
        "Max-Forwards: \r\n",
        "mf_process_maxfwd_header(\"10\"); out($rc);",
    );
    assert_eq!(o, ["-1"]);
}

#[test]
fn a_second_call_decrements_again_as_kamailio() {
    let (o, wire) = run(
        "",
        "Max-Forwards: 5\r\n",
        "mf_process_maxfwd_header(\"10\"); mf_process_maxfwd_header(\"10\"); out($rc);",
    );
    assert_eq!(o, ["1"]);
    assert!(wire.contains("Max-Forwards: 3\r\n"), "{wire}");
}

#[test]
fn is_maxfwd_lt_reads_the_decremented_value() {
    let (o, _) = run(
        "",
        "Max-Forwards: 5\r\n",
        "is_maxfwd_lt(\"5\"); out($rc); mf_process_maxfwd_header(\"10\"); is_maxfwd_lt(\"5\"); out($rc); is_maxfwd_lt(\"4\"); out($rc);",
    );
    assert_eq!(o, ["-1", "1", "-1"]);
    let (o, _) = run("", "", "is_maxfwd_lt(\"5\"); out($rc);");
    assert_eq!(o, ["-2"]);
    let (o, _) = run("", "Max-Forwards: x\r\n", "is_maxfwd_lt(\"5\"); out($rc);");
    assert_eq!(o, ["-3"]);
}

#[test]
fn t_relay_is_told_not_to_decrement_again() {
    let (_, s) = run_ctx("", "Max-Forwards: 9\r\n", "mf_process_maxfwd_header(10);");
    assert!(s.max_forwards_done);
    assert_eq!(s.edits.max_forwards, Some(8));
}

#[test]
fn bad_limits_are_config_errors() {
    let e = errors("loadmodule \"maxfwd\"\nrequest_route { mf_process_maxfwd_header(\"300\"); }\n");
    assert!(e.iter().any(|m| m.contains("between 0 and 255")), "{e:?}");
    let e = errors(
        "loadmodule \"maxfwd\"\nmodparam(\"maxfwd\", \"max_limit\", 256)\nrequest_route { }\n",
    );
    assert!(
        e.iter()
            .any(|m| m.contains("max_limit must be between 0 and 255")),
        "{e:?}"
    );
    let e = errors(
        "loadmodule \"maxfwd\"\nfailure_route[F] { mf_process_maxfwd_header(\"10\"); }\nrequest_route { }\n",
    );
    assert!(
        e.iter().any(|m| m.contains("mf_process_maxfwd_header")),
        "request_route only: {e:?}"
    );
}

#[test]
fn cfg_set_changes_max_limit_at_run_time() {
    let (_, s) = run_tuned(
        "",
        "Max-Forwards: 200\r\n",
        "mf_process_maxfwd_header(\"10\");",
        |m| {
            let vars = m.cfg_vars();
            let v = &vars[0];
            assert_eq!((v.group, v.name), ("maxfwd", "max_limit"));
            assert_eq!((v.get)(), ParamValue::Int(70));
            assert!((v.set)(&ParamValue::Int(256)).is_err());
            (v.set)(&ParamValue::Str("16".into())).unwrap();
            assert_eq!((v.get)(), ParamValue::Int(16));
        },
    );
    assert_eq!(s.edits.max_forwards, Some(16));
}
