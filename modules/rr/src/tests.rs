//! The script functions over a message in a context, with `myself` being
//! 127.0.0.1:5301 and :5302 (the core's check, faked).

use super::*;
use crate::route::tests::req as request;
use siphon_cfg::PreOptions;
use siphon_script::net::Peer;
use siphon_script::{Program, Registry, load_str};
use std::sync::Mutex;

/// A registry with rr, `myself`, and `out(v)` recording what it is given.
fn registry(out: Arc<Mutex<Vec<String>>>) -> Registry {
    let mut r = Registry::new();
    r.add(def());
    r.hooks.myself = Some(Arc::new(|v: &[u8]| {
        parse_uri(v)
            .is_ok_and(|u| u.host == b"127.0.0.1" && matches!(u.port, Some(5301) | Some(5302)))
    }));
    r.core_functions.push(FunctionSpec::new(
        "out",
        &[ArgKind::Any],
        move |ex, args| {
            let v = args.value(0, ex);
            out.lock().unwrap().push(v.to_string());
            1.into()
        },
    ));
    r
}

/// What `out()` was given.
type Out = Arc<Mutex<Vec<String>>>;

fn load(cfg: &str) -> Result<(Program, Out), Vec<String>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let l = load_str("t.cfg", cfg, &PreOptions::default(), &registry(out.clone()));
    match l.program {
        Some(p) => Ok((p, out)),
        None => Err(l.diags.iter().map(|d| d.message.clone()).collect()),
    }
}

/// Runs the request route of `cfg` for `msg`; returns what `out` got and the SipCtx.
fn run(cfg: &str, msg: siphon_sip::SipMsg) -> (Vec<String>, SipCtx) {
    let (p, out) = load(cfg).unwrap_or_else(|e| panic!("{e:?}"));
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    let peer = Peer {
        transport: Transport::Udp,
        src: "127.0.0.1:7000".parse().unwrap(),
        local: "127.0.0.1:5301".parse().unwrap(),
        conn: None,
    };
    ctx.ext.insert(SipCtx::new(msg, peer));
    p.run(p.request_route().unwrap(), &mut ctx);
    let s = ctx.ext.remove::<SipCtx>().unwrap();
    (out.lock().unwrap().clone(), s)
}

fn rr_text(s: &SipCtx) -> String {
    let udp = siphon_script::sip::RrSocket {
        host_port: "127.0.0.1:5301".into(),
        transport: "udp",
    };
    s.record_route
        .as_ref()
        .expect("record_route set")
        .lines(&udp, &udp)
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

const LOADRR: &str = "loadmodule \"rr.so\"\n";

#[test]
fn record_route_with_params_before_and_after() {
    // Kamailio 5.6.3 wrote `<sip:127.0.0.1:5301;lr;ftag=abc;p=1;before=1;after=2>`.
    let cfg = format!(
        "{LOADRR}request_route {{ add_rr_param(\";before=1\"); out(record_route(\";p=1\")); add_rr_param(\"after=2\"); out(record_route()); }}"
    );
    let (out, s) = run(&cfg, request("sip:b@127.0.0.1:5310", "", ""));
    assert_eq!(out, ["1", "-1"], "a second record_route is refused");
    assert_eq!(
        rr_text(&s),
        "Record-Route: <sip:127.0.0.1:5301;lr;ftag=abc;p=1;before=1;after=2>\r\n"
    );
}

#[test]
fn params_change_the_uri() {
    let cfg = format!(
        "{LOADRR}modparam(\"rr\", \"enable_full_lr\", 1)\nmodparam(\"rr\", \"add_username\", 1)\nmodparam(\"rr\", \"append_fromtag\", 0)\n\
         request_route {{ record_route(); }}"
    );
    let (_, s) = run(&cfg, request("sips:bob@127.0.0.1:5310", "", ""));
    assert_eq!(
        rr_text(&s),
        "Record-Route: <sips:bob@127.0.0.1:5301;lr=on>\r\n"
    );
    let cfg = format!(
        "{LOADRR}modparam(\"rr\", \"ignore_sips\", 1)\nrequest_route {{ record_route(); }}"
    );
    let (_, s) = run(&cfg, request("sips:bob@127.0.0.1:5310", "", ""));
    assert_eq!(
        rr_text(&s),
        "Record-Route: <sip:127.0.0.1:5301;lr;ftag=abc>\r\n"
    );
}

#[test]
fn preset_addresses() {
    // Kamailio 5.6.3: `<sip:1.2.3.4:5555;foo=1;ftag=abc;lr>` then `<sip:5.6.7.8;r2=on;ftag=abc;lr>`.
    let cfg = format!(
        "{LOADRR}request_route {{ record_route_preset(\"1.2.3.4:5555;foo=1\", \"5.6.7.8;r2=on\"); }}"
    );
    let (_, s) = run(&cfg, request("sip:b@127.0.0.1:5310", "", ""));
    assert_eq!(
        rr_text(&s),
        "Record-Route: <sip:1.2.3.4:5555;foo=1;ftag=abc;lr>\r\nRecord-Route: <sip:5.6.7.8;r2=on;ftag=abc;lr>\r\n"
    );
    let e = load(&format!(
        "{LOADRR}modparam(\"rr\", \"enable_double_rr\", 0)\nrequest_route {{ record_route_preset(\"a\", \"b\"); }}"
    ))
    .map(|_| ())
    .expect_err("refused");
    assert!(e.iter().any(|m| m.contains("enable_double_rr")), "{e:?}");
}

#[test]
fn loose_route_sets_du_and_reads_our_params() {
    let cfg = format!(
        "{LOADRR}request_route {{ out($route_uri); out(loose_route()); out(check_route_param(\"ftag=abc\")); \
         out(is_direction(\"downstream\")); out(is_direction(\"upstream\")); out(loose_route()); }}"
    );
    let (out, s) = run(
        &cfg,
        request(
            "sip:b@127.0.0.1:5310",
            "xyz",
            "Route: <sip:127.0.0.1:5301;lr;ftag=abc>, <sip:127.0.0.1:5310;lr>\r\n",
        ),
    );
    // A second loose_route() answers the same and removes nothing more.
    assert_eq!(
        out,
        ["sip:127.0.0.1:5301;lr;ftag=abc", "1", "1", "1", "-1", "1"]
    );
    assert_eq!(s.du.as_deref(), Some(&b"sip:127.0.0.1:5310;lr"[..]));
    let wire = String::from_utf8_lossy(&siphon_sip::serialize(&s.msg, &s.edits)).into_owned();
    assert!(
        wire.contains("\r\nRoute: <sip:127.0.0.1:5310;lr>\r\n"),
        "{wire}"
    );
    assert!(!wire.contains("5301"), "{wire}");
    assert_eq!(wire.matches("Route:").count(), 1, "{wire}");
}

#[test]
fn upstream_requests_carry_the_to_tag() {
    // The callee's request: our route's ftag is the caller's From-tag, not
    // this request's, so it goes upstream, and a record_route() in it
    // carries the To-tag (the caller's tag) as Kamailio's does.
    let cfg = format!(
        "{LOADRR}request_route {{ out(loose_route()); out(is_direction(\"upstream\")); record_route(); }}"
    );
    let (out, s) = run(
        &cfg,
        request(
            "sip:a@127.0.0.1:7000",
            "caller",
            "Route: <sip:127.0.0.1:5301;lr;ftag=caller>\r\n",
        ),
    );
    assert_eq!(out, ["1", "1"]);
    assert_eq!(
        rr_text(&s),
        "Record-Route: <sip:127.0.0.1:5301;lr;ftag=caller>\r\n"
    );
}

#[test]
fn double_pair_forces_the_second_socket() {
    let cfg = format!("{LOADRR}request_route {{ out(loose_route()); }}");
    let (out, s) = run(
        &cfg,
        request(
            "sip:a@127.0.0.1:7000",
            "xyz",
            "Route: <sip:127.0.0.1:5302;transport=tcp;r2=on;lr;ftag=abc>, <sip:127.0.0.1:5301;r2=on;lr;ftag=abc>\r\n",
        ),
    );
    assert_eq!(out, ["1"]);
    assert_eq!(s.du, None);
    assert_eq!(
        s.send_socket,
        Some((Transport::Udp, "127.0.0.1:5301".parse().unwrap()))
    );
    let wire = String::from_utf8_lossy(&siphon_sip::serialize(&s.msg, &s.edits)).into_owned();
    assert!(!wire.contains("Route:"), "{wire}");
}

#[test]
fn preloaded_and_missing_routes() {
    let cfg =
        format!("{LOADRR}request_route {{ out(loose_route()); out(loose_route_preloaded()); }}");
    let (out, _) = run(&cfg, request("sip:b@127.0.0.1:5310", "", ""));
    assert_eq!(out, ["-1", "-1"]);
    let (out, _) = run(
        &cfg,
        request(
            "sip:b@127.0.0.1:5310",
            "",
            "Route: <sip:127.0.0.1:5301;lr>\r\n",
        ),
    );
    assert_eq!(out[0], "-3");
}

#[test]
fn config_errors() {
    let e = load(&format!(
        "{LOADRR}request_route {{ is_direction(\"sideways\"); }}"
    ))
    .err()
    .unwrap();
    assert!(e.iter().any(|m| m.contains("sideways")), "{e:?}");
    let e = load(&format!(
        "{LOADRR}modparam(\"rr\", \"append_fromtag\", 0)\nrequest_route {{ is_direction(\"upstream\"); }}"
    ))
    .err()
    .unwrap();
    assert!(e.iter().any(|m| m.contains("append_fromtag")), "{e:?}");
    let e = load(&format!(
        "{LOADRR}modparam(\"rr\", \"enable_double_rr\", 3)\n"
    ))
    .err()
    .unwrap();
    assert!(e.iter().any(|m| m.contains("enable_double_rr")), "{e:?}");
    let e = load(&format!(
        "{LOADRR}modparam(\"rr\", \"custom_user_avp\", \"$avp(x)\")\n"
    ))
    .err()
    .unwrap();
    assert!(e.iter().any(|m| m.contains("custom_user_avp")), "{e:?}");
    let e = load(&format!("{LOADRR}onreply_route {{ loose_route(); }}"))
        .err()
        .unwrap();
    assert!(!e.is_empty());
}
