use super::*;
use siphon_script::net::{Peer, Transport};
use siphon_script::{Registry, Value, load_str};
use std::sync::Mutex;

/// Runs `body` for `raw` received from `src` over UDP; (what out() saw, the R-URI after).
fn run(raw: &str, src: &str, body: &str) -> (Vec<String>, String) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut reg = Registry::new();
    reg.add(def());
    // Ours: 127.0.0.1:5060.
    reg.hooks.myself = Some(Arc::new(|v: &[u8]| {
        siphon_sip::parse_uri(v)
            .is_ok_and(|u| u.host == b"127.0.0.1" && u.port.is_none_or(|p| p == 5060))
    }));
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out", &[ArgKind::Any], move |ex, a| {
            let v: Value = a.value(0, ex);
            o.lock().unwrap().push(v.to_string());
            1.into()
        }));
    let cfg = format!("loadmodule \"siputils.so\"\nrequest_route {{\n{body}\n}}\n");
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
    let msg = siphon_sip::parse(Bytes::from(raw.to_string())).unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    ctx.ext.insert(SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: src.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    ));
    p.run(p.request_route().unwrap(), &mut ctx);
    let s = ctx.ext.get::<SipCtx>().unwrap();
    let ruri = String::from_utf8_lossy(&s.ruri()).into_owned();
    let v = out.lock().unwrap().clone();
    (v, ruri)
}

fn req(ruri: &str, vias: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\n{vias}From: <sip:+4930123@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

const ONE_VIA: &str = "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n";

#[test]
fn request_or_reply() {
    let (o, _) = run(
        &req("sip:b@h", ONE_VIA),
        "10.0.0.1:5060",
        "is_request(); out($rc); is_reply(); out($rc);",
    );
    assert_eq!(o, ["1", "-1"]);
    let reply = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (o, _) = run(
        reply,
        "10.0.0.2:5060",
        "is_request(); out($rc); is_reply(); out($rc); is_first_hop(); out($rc);",
    );
    assert_eq!(
        o,
        ["-1", "1", "1"],
        "a reply without Record-Route is at its first hop"
    );
}

#[test]
fn first_hop_of_a_request_counts_via_values() {
    let (o, _) = run(
        &req("sip:b@h", ONE_VIA),
        "10.0.0.1:5060",
        "is_first_hop(); out($rc);",
    );
    assert_eq!(o, ["1"]);
    let two = "Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n";
    let (o, _) = run(
        &req("sip:b@h", two),
        "10.0.0.2:5060",
        "is_first_hop(); out($rc);",
    );
    assert_eq!(o, ["-1"]);
}

#[test]
fn first_hop_of_a_reply_needs_our_record_route() {
    let reply = |rr: &str| {
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n{rr}From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ours = reply("Record-Route: <sip:127.0.0.1;lr>\r\n");
    assert_eq!(
        run(&ours, "10.0.0.2:5060", "is_first_hop(); out($rc);").0,
        ["1"]
    );
    // Sent by the Record-Route's own address: a loop.
    assert_eq!(
        run(&ours, "127.0.0.1:5060", "is_first_hop(); out($rc);").0,
        ["-1"]
    );
    let theirs = reply("Record-Route: <sip:10.9.9.9;lr>\r\n");
    assert_eq!(
        run(&theirs, "10.0.0.2:5060", "is_first_hop(); out($rc);").0,
        ["-1"]
    );
    // A name: mode 0 wants an address, mode 1 does not.
    let named = reply("Record-Route: <sip:proxy.example;lr>\r\n");
    assert_eq!(
        run(&named, "10.0.0.2:5060", "is_first_hop(); out($rc);").0,
        ["-1"]
    );
}

#[test]
fn e164() {
    assert!(is_e164(b"+4930123"));
    assert!(!is_e164(b"4930123"));
    assert!(!is_e164(b"+1"));
    assert!(!is_e164(b"+1234567890123456"));
    assert!(is_e164(b"+123456789012345"));
    assert!(is_uri_user_e164(b"sip:+4930123@h"));
    assert!(!is_uri_user_e164(b"sip:+49a@h"));
    assert!(!is_uri_user_e164(b"sip:h"));
    let (o, _) = run(
        &req("sip:b@h", ONE_VIA),
        "10.0.0.1:5060",
        "$var(f) = \"sip:+4930123@h\"; $var(t) = \"sip:b@h\"; $var(n) = \"+4930123\"; is_uri_user_e164($var(f)); out($rc); is_uri_user_e164($var(t)); out($rc); is_e164($var(n)); out($rc); is_e164($var(nothing)); out($rc);",
    );
    assert_eq!(o, ["1", "-1", "1", "-1"]);
}

#[test]
fn uri_params() {
    let u = b"sip:b@h;lr;transport=TCP;x=";
    assert!(uri_param(u, b"lr", None));
    assert!(uri_param(u, b"x", None));
    assert!(!uri_param(u, b"transport", None), "has a value");
    assert!(uri_param(u, b"transport", Some(b"TCP")));
    assert!(
        !uri_param(u, b"transport", Some(b"tcp")),
        "case-sensitive, as Kamailio"
    );
    assert!(!uri_param(u, b"LR", None));
    assert!(uri_param_any(u, b"LR"));
    assert!(uri_param_any(u, b"transport"));
    assert!(!uri_param_any(u, b"maddr"));
    let (o, _) = run(
        &req("sip:b@h;user=phone", ONE_VIA),
        "10.0.0.1:5060",
        "uri_param(\"user\", \"phone\"); out($rc); uri_param(\"user\"); out($rc);",
    );
    assert_eq!(o, ["1", "-1"]);
}

#[test]
fn add_uri_param_keeps_the_uri() {
    assert_eq!(
        &add_uri_param(b"sip:b@h", b"x=1").unwrap()[..],
        b"sip:b@h;x=1"
    );
    assert_eq!(
        &add_uri_param(b"sips:b:pw@h:5061;lr?Subject=a", b"x").unwrap()[..],
        b"sips:b:pw@h:5061;lr;x?Subject=a"
    );
    let (o, ruri) = run(
        &req("sip:b@h;lr", ONE_VIA),
        "10.0.0.1:5060",
        "add_uri_param(\"nat=yes\"); out($rc); uri_param(\"nat\", \"yes\"); out($rc);",
    );
    assert_eq!(o, ["1", "1"]);
    assert_eq!(ruri, "sip:b@h;lr;nat=yes");
}
