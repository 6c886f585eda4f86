use super::*;
use keepalive::Round;
use siphon_script::net::{Peer, Transport};
use siphon_script::{Ctx, Registry, load_str};
use std::sync::Mutex;

/// What a run left: the codes `out()` saw and the route's context.
struct Ran {
    out: Vec<String>,
    ctx: Ctx,
}

impl Ran {
    fn sip(&self) -> &SipCtx {
        self.ctx.ext.get::<SipCtx>().unwrap()
    }
    /// The first Contact header's value of the message as the route left it.
    fn contact(&self) -> String {
        let s = self.sip();
        String::from_utf8_lossy(&s.msg.value(HeaderName::Contact).unwrap_or_default()).into_owned()
    }
}

fn registry() -> (Registry, Arc<Mutex<Vec<String>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut reg = Registry::new();
    reg.add(def());
    for r in media_relays() {
        reg.refuse(r);
    }
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out", &[ArgKind::Any], move |ex, a| {
            let v: Value = a.value(0, ex);
            o.lock().unwrap().push(v.to_string());
            1.into()
        }));
    (reg, out)
}

/// Runs `body` as `kind` for `raw` received from `src` over `transport`.
fn run_as(
    raw: &str,
    src: &str,
    transport: Transport,
    params: &str,
    kind: RouteType,
    body: &str,
) -> Ran {
    let (reg, out) = registry();
    let cfg = format!("loadmodule \"nathelper.so\"\n{params}\nrequest_route {{\n{body}\n}}\n");
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
    let msg = siphon_sip::parse(Bytes::from(raw.to_string())).unwrap();
    let mut ctx = p.new_ctx(kind);
    ctx.ext.insert(SipCtx::new(
        msg,
        Peer {
            transport,
            src: src.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    ));
    p.run(p.request_route().unwrap(), &mut ctx);
    let out = out.lock().unwrap().clone();
    Ran { out, ctx }
}

fn run(raw: &str, src: &str, body: &str) -> Ran {
    run_as(raw, src, Transport::Udp, "", RouteType::REQUEST, body)
}

/// The errors of loading `cfg` (with nathelper and the refused relays known).
fn load_errors(cfg: &str) -> Vec<String> {
    let (mut reg, _) = registry();
    // A second module with `received_avp`, as the registrar has.
    reg.add(ModuleDef {
        name: "registrar",
        params: vec![ParamSpec::str("received_avp")],
        instantiate: Arc::new(|_| {
            Ok(Arc::new(Nathelper {
                cfg: Arc::new(NhConfig {
                    received_avp: None,
                    alias: "alias".into(),
                    reserved: true,
                }),
                pinger: None,
            }) as Arc<dyn Module>)
        }),
    });
    let l = load_str("t.cfg", cfg, &Default::default(), &reg);
    l.diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            let mut s = d.message.clone();
            for n in &d.notes {
                s.push_str(" | ");
                s.push_str(n);
            }
            s
        })
        .collect()
}

/// A request from the UA with this Via, Contact and body.
fn req(via: &str, contact: &str, body: &str) -> String {
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    format!(
        "INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK1;rport\r\nFrom: <sip:alice@h>;tag=1\r\nTo: <sip:bob@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{contact}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const NATED: &str = "Contact: <sip:alice@192.168.1.10:5062>\r\n";
const SRC: &str = "127.0.0.1:40000";

fn tests_of(raw: &str, src: &str, flags: &[i64]) -> Vec<String> {
    let body: String = flags
        .iter()
        .map(|f| format!("nat_uac_test(\"{f}\"); out($rc);"))
        .collect();
    run(raw, src, &body).out
}

#[test]
fn nat_uac_test_each_flag() {
    let flags = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
    // A UA that knows where it is: nothing says NAT.
    let public = req(
        "127.0.0.1:40000",
        "Contact: <sip:alice@127.0.0.1:40000>\r\n",
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
    );
    assert_eq!(tests_of(&public, SRC, &flags), ["-1"; 10]);
    // Behind NAT: private Contact, Via, SDP; Via address and port not the source.
    let nated = req(
        "192.168.1.10:5062",
        NATED,
        "v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
    );
    assert_eq!(
        tests_of(&nated, SRC, &flags),
        ["1", "1", "1", "1", "1", "-1", "-1", "1", "1", "-1"]
    );
    // 32: the source itself is private; 19 is the shipped config's test.
    assert_eq!(tests_of(&public, "10.1.2.3:40000", &[32, 2]), ["1", "1"]);
    assert_eq!(tests_of(&nated, SRC, &[19]), ["1"]);
    assert_eq!(tests_of(&public, SRC, &[19]), ["-1"]);
    // 16 without a Via port means 5060.
    let portless = req("127.0.0.1", "", "");
    assert_eq!(tests_of(&portless, "127.0.0.1:5060", &[16]), ["-1"]);
    assert_eq!(tests_of(&portless, "127.0.0.1:5070", &[16]), ["1"]);
    // A name in the Via never matches the source (no DNS, as Kamailio's default).
    let named = req("ua.example:40000", "", "");
    assert_eq!(tests_of(&named, SRC, &[2]), ["1"]);
}

/// The context of `raw` received from `src` over UDP.
fn sip_ctx(raw: &str, src: &str) -> SipCtx {
    SipCtx::new(
        siphon_sip::parse(Bytes::from(raw.to_string())).unwrap(),
        Peer {
            transport: Transport::Udp,
            src: src.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    )
}

#[test]
fn nat_uac_test_512_compares_the_destination() {
    let mut s = sip_ctx(&req("127.0.0.1:40000", "", ""), SRC);
    let mut with_du = |du: Option<&str>| {
        s.du = du.map(|d| Bytes::from(d.to_string()));
        nat_uac_test(&s, 512, true)
    };
    // The R-URI is sip:bob@127.0.0.1:5060.
    assert!(!with_du(None));
    assert!(!with_du(Some("sip:127.0.0.1")));
    assert!(with_du(Some("sip:127.0.0.1:5070")));
    assert!(with_du(Some("sip:127.0.0.2:5060")));
    assert!(with_du(Some("sip:proxy.example:5060")));
    assert!(with_du(Some("sip:127.0.0.1:5060;transport=ws")));
    // A reply: the second Via's received/rport against its host and port.
    let reply = |via2: &str| {
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nVia: {via2}\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let t = |via2: &str| nat_uac_test(&sip_ctx(&reply(via2), "127.0.0.1:5070"), 512, true);
    assert!(!t("SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK0"));
    assert!(!t(
        "SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK0;rport=40000;received=127.0.0.1"
    ));
    assert!(t(
        "SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bK0;rport=40000;received=127.0.0.1"
    ));
    assert!(t(
        "SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bK0;received=127.0.0.1"
    ));
    assert!(t("SIP/2.0/WS abc.invalid;branch=z9hG4bK0"));
    let one_via = reply("X-Nothing: x").replace("Via: X-Nothing: x\r\n", "");
    assert!(!nat_uac_test(&sip_ctx(&one_via, SRC), 512, true));
}

#[test]
fn is_rfc1918_reads_addresses() {
    let r = run(
        &req("127.0.0.1:40000", "", ""),
        SRC,
        "is_rfc1918(\"10.0.0.1\"); out($rc); is_rfc1918(\"127.0.0.1\"); out($rc); is_rfc1918(\"fd00::1\"); out($rc); $var(x) = \"\"; is_rfc1918(\"$var(x)\"); out($rc); $var(y) = \"100.64.1.1\"; is_rfc1918(\"$var(y)\"); out($rc);",
    );
    assert_eq!(r.out, ["1", "-1", "-1", "-2", "1"]);
}

#[test]
fn fix_nated_contact_rewrites_the_message_once() {
    let r = run(
        &req(
            "192.168.1.10:5062",
            "Contact: \"Alice\" <sip:alice@192.168.1.10:5062;ob>;expires=60\r\n",
            "",
        ),
        SRC,
        "fix_nated_contact(); out($rc); fix_nated_contact(); out($rc); set_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1", "-1", "-1"]);
    assert_eq!(
        r.contact(),
        "\"Alice\" <sip:alice@127.0.0.1:40000;ob>;expires=60"
    );
    // The rest of the message is as it came.
    assert_eq!(r.sip().msg.headers.len(), 7);
    assert!(r.sip().edits.remove.is_empty());
}

#[test]
fn set_contact_alias_appends_the_source() {
    let r = run(
        &req("192.168.1.10:5062", NATED, ""),
        SRC,
        "set_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~1>"
    );
    // A bare URI gets brackets (its parameters stay the contact's).
    let r = run_as(
        &req(
            "192.168.1.10:5062",
            "m: sip:alice@192.168.1.10:5062;expires=60\r\n",
            "",
        ),
        SRC,
        Transport::Tcp,
        "",
        RouteType::REQUEST,
        "set_contact_alias();",
    );
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~2>;expires=60"
    );
    // trim: an alias already there is replaced.
    let r = run(
        &req(
            "192.168.1.10:5062",
            "Contact: <sip:alice@192.168.1.10:5062;alias=10.9.9.9~1~1>\r\n",
            "",
        ),
        SRC,
        "set_contact_alias(\"1\"); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~1>"
    );
    let r = run(
        &req("127.0.0.1:40000", "", ""),
        SRC,
        "set_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["-1"], "no Contact");
}

#[test]
fn set_contact_alias_in_a_branch_route_is_the_branch_s_edit() {
    let r = run_as(
        &req("192.168.1.10:5062", NATED, ""),
        SRC,
        Transport::Udp,
        "",
        RouteType::BRANCH,
        "set_contact_alias(); out($rc); set_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1", "-1"]);
    let s = r.sip();
    // The shared request is untouched; the branch's edits replace the header.
    assert_eq!(r.contact(), "<sip:alice@192.168.1.10:5062>");
    let i = s
        .msg
        .headers
        .iter()
        .position(|h| h.name == HeaderName::Contact)
        .unwrap();
    assert_eq!(s.edits.remove, [i]);
    let sent = siphon_sip::serialize(&s.msg, &s.edits);
    let sent = siphon_sip::parse(sent).unwrap();
    assert_eq!(
        &sent.value(HeaderName::Contact).unwrap()[..],
        b"<sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~1>"
    );
}

#[test]
fn add_contact_alias_forms() {
    let r = run(
        &req("192.168.1.10:5062", NATED, ""),
        SRC,
        "add_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~1>"
    );
    // Inserted after host and port, before the URI's parameters; brackets
    // added around a bare URI.
    let r = run(
        &req(
            "192.168.1.10:5062",
            "Contact: sip:alice@192.168.1.10;transport=udp\r\n",
            "",
        ),
        SRC,
        "add_contact_alias();",
    );
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10;alias=127.0.0.1~40000~1>;transport=udp"
    );
    // Already the source (address, port and transport): nothing to add.
    let same = req(
        "127.0.0.1:40000",
        "Contact: <sip:alice@127.0.0.1:40000;transport=udp>\r\n",
        "",
    );
    let r = run(&same, SRC, "add_contact_alias(); out($rc);");
    assert_eq!(r.out, ["2"]);
    // Kamailio compares the URI's transport parameter: none is not UDP.
    let r = run(
        &req(
            "127.0.0.1:40000",
            "Contact: <sip:alice@127.0.0.1:40000>\r\n",
            "",
        ),
        SRC,
        "add_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    let r = run(
        &req("127.0.0.1:40000", "", ""),
        SRC,
        "add_contact_alias(); out($rc);",
    );
    assert_eq!(r.out, ["2"], "no Contact");
    // Given values.
    let r = run(
        &req("192.168.1.10:5062", NATED, ""),
        SRC,
        "add_contact_alias(\"127.0.0.9\", \"5090\", \"tcp\"); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062;alias=127.0.0.9~5090~2>"
    );
    for bad in [
        "\"x\", \"5090\", \"tcp\"",
        "\"127.0.0.9\", \"0\", \"tcp\"",
        "\"127.0.0.9\", \"5090\", \"quic\"",
    ] {
        let r = run(
            &req("192.168.1.10:5062", NATED, ""),
            SRC,
            &format!("add_contact_alias({bad}); out($rc);"),
        );
        assert_eq!(r.out, ["-1"], "{bad}");
        assert_eq!(r.contact(), "<sip:alice@192.168.1.10:5062>");
    }
    assert!(
        load_errors(
            "loadmodule \"nathelper.so\"\nrequest_route { add_contact_alias(\"1.2.3.4\"); }\n"
        )[0]
        .contains("takes no argument or three")
    );
}

#[test]
fn handle_ruri_alias_sets_the_destination() {
    let raw = "BYE sip:alice@192.168.1.10:5062;alias=127.0.0.1~40000~1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2\r\nFrom: <sip:bob@h>;tag=2\r\nTo: <sip:alice@h>;tag=1\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let r = run(
        raw,
        "127.0.0.1:5070",
        "handle_ruri_alias(); out($rc); handle_ruri_alias(); out($rc);",
    );
    assert_eq!(r.out, ["1", "2"]);
    let s = r.sip();
    assert_eq!(s.du.as_deref(), Some(&b"sip:127.0.0.1:40000"[..]));
    assert_eq!(&s.ruri()[..], b"sip:alice@192.168.1.10:5062");
    let bad = raw.replace("~40000~1", "~40000");
    let r = run(&bad, "127.0.0.1:5070", "handle_ruri_alias(); out($rc);");
    assert_eq!(r.out, ["-1"]);
    assert_eq!(r.sip().du, None);
}

/// Every Contact header's values, as the route left the message.
fn contacts(r: &Ran) -> Vec<String> {
    let m = &r.sip().msg;
    m.headers
        .iter()
        .filter(|h| h.name == HeaderName::Contact)
        .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
        .collect()
}

#[test]
fn add_rcv_param_marks_every_contact() {
    let two = "Contact: \"A, B\" <sip:alice@192.168.1.10:5062;ob>;expires=60, sip:a2@192.168.1.10;q=0.5\r\nContact: <sip:a3@10.0.0.1>\r\n";
    // As a header parameter (quoted), after each contact's parameters.
    let r = run(
        &req("192.168.1.10:5062", two, ""),
        SRC,
        "add_rcv_param(); out($rc);",
    );
    assert_eq!(r.out, ["1"]);
    assert_eq!(
        contacts(&r),
        [
            "\"A, B\" <sip:alice@192.168.1.10:5062;ob>;expires=60;received=\"sip:127.0.0.1:40000\", sip:a2@192.168.1.10;q=0.5;received=\"sip:127.0.0.1:40000\"",
            "<sip:a3@10.0.0.1>;received=\"sip:127.0.0.1:40000\"",
        ]
    );
    // As a URI parameter, at the end of each URI (a bare one's too).
    let r = run(
        &req("192.168.1.10:5062", two, ""),
        SRC,
        "add_rcv_param(1); out($rc);",
    );
    assert_eq!(
        contacts(&r),
        [
            "\"A, B\" <sip:alice@192.168.1.10:5062;ob;received=sip:127.0.0.1:40000>;expires=60, sip:a2@192.168.1.10;received=sip:127.0.0.1:40000;q=0.5",
            "<sip:a3@10.0.0.1;received=sip:127.0.0.1:40000>",
        ]
    );
    // Over TCP: a transport in the URI; as a URI parameter: UDP only.
    let one = "Contact: <sip:alice@192.168.1.10:5062>\r\n";
    let body = "add_rcv_param(); out($rc); add_rcv_param(1); out($rc);";
    let r = run_as(
        &req("192.168.1.10:5062", one, ""),
        SRC,
        Transport::Tcp,
        "",
        RouteType::REQUEST,
        body,
    );
    assert_eq!(r.out, ["1", "-1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@192.168.1.10:5062>;received=\"sip:127.0.0.1:40000;transport=tcp\""
    );
    // No Contact, or `*`: nothing to do, 1.
    for c in ["", "Contact: *\r\n"] {
        let r = run(
            &req("192.168.1.10:5062", c, ""),
            SRC,
            "add_rcv_param(); out($rc);",
        );
        assert_eq!(r.out, ["1"], "{c:?}");
        assert_eq!(
            r.sip().msg.buf().len(),
            req("192.168.1.10:5062", c, "").len()
        );
    }
    // After fix_nated_contact the Contact still counts as rewritten.
    let r = run(
        &req("192.168.1.10:5062", one, ""),
        SRC,
        "fix_nated_contact(); add_rcv_param(); out($rc); fix_nated_contact(); out($rc);",
    );
    assert_eq!(r.out, ["1", "-1"]);
    assert_eq!(
        r.contact(),
        "<sip:alice@127.0.0.1:40000>;received=\"sip:127.0.0.1:40000\""
    );
    // Request routes only.
    let e = load_errors("loadmodule \"nathelper.so\"\nonreply_route[R] { add_rcv_param(); }\n");
    assert!(!e.is_empty(), "{e:?}");
}

#[test]
fn set_alias_to_pv_reads_the_contact_alias() {
    let run_one = |contact: &str, params: &str| {
        run_as(
            &req("192.168.1.10:5062", contact, ""),
            SRC,
            Transport::Udp,
            params,
            RouteType::REQUEST,
            "set_alias_to_pv(\"$avp(dst)\"); out($rc); out($avp(dst));",
        )
        .out
    };
    assert_eq!(
        run_one(
            "Contact: <sip:alice@192.168.1.10:5062;alias=198.51.100.7~40312~1>\r\n",
            ""
        ),
        ["1", "sip:198.51.100.7:40312;transport=udp"]
    );
    // Anywhere in the contact (a header parameter too); TLS; WSS is `ws`.
    assert_eq!(
        run_one(
            "Contact: <sip:alice@h>;expires=60;alias=10.1.1.1~5061~3\r\n",
            ""
        ),
        ["1", "sip:10.1.1.1:5061;transport=tls"]
    );
    assert_eq!(
        run_one("Contact: <sip:a@h;alias=10.1.1.1~443~6;ob>\r\n", ""),
        ["1", "sip:10.1.1.1:443;transport=ws"]
    );
    // Another name with alias_name.
    assert_eq!(
        run_one(
            "Contact: <sip:a@h;nat=10.1.1.1~7~2>\r\n",
            "modparam(\"nathelper\", \"alias_name\", \"nat\")"
        ),
        ["1", "sip:10.1.1.1:7;transport=tcp"]
    );
    // No alias, no second `~`, two contacts, no Contact: -1.
    for c in [
        "Contact: <sip:alice@192.168.1.10:5062>\r\n",
        "Contact: <sip:a@h;alias=10.1.1.1~5060>;expires=3600\r\n",
        "Contact: <sip:a@h;alias=1.1.1.1~1~1>, <sip:b@h>\r\n",
        "",
    ] {
        assert_eq!(run_one(c, ""), ["-1", "<null>"], "{c:?}");
    }
    // The PV must be writable.
    let e =
        load_errors("loadmodule \"nathelper.so\"\nrequest_route { set_alias_to_pv(\"$rc\"); }\n");
    assert!(!e.is_empty(), "{e:?}");
}

#[test]
fn alias_to_uri_as_kamailio_reads_it() {
    use contact::alias_to_uri;
    assert_eq!(
        alias_to_uri(b"<sip:a@h;alias=1.2.3.4~5~1>", "alias"),
        Ok("sip:1.2.3.4:5;transport=udp".into())
    );
    // An unknown protocol number: an empty transport, as Kamailio.
    assert_eq!(
        alias_to_uri(b"<sip:a@h;alias=1.2.3.4~5~9>", "alias"),
        Ok("sip:1.2.3.4:5;transport=".into())
    );
    // Too near the end to hold `a~b~c`: not looked at.
    assert!(alias_to_uri(b"<sip:a@h;alias=1~", "alias").is_err());
    assert!(alias_to_uri(b"<sip:a@h>", "alias").is_err());
}

#[test]
fn fix_nated_register_fills_the_received_avp() {
    let reg = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bK1;rport\r\nFrom: <sip:alice@h>;tag=1\r\nTo: <sip:alice@h>\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@192.168.1.10:5062>\r\nContent-Length: 0\r\n\r\n";
    let params = "modparam(\"nathelper\", \"received_avp\", \"$avp(RECEIVED)\")";
    let r = run_as(
        reg,
        SRC,
        Transport::Udp,
        params,
        RouteType::REQUEST,
        "fix_nated_register(); out($rc); out($avp(RECEIVED));",
    );
    assert_eq!(r.out, ["1", "sip:127.0.0.1:40000"]);
    let r = run_as(
        reg,
        "[::1]:5070",
        Transport::Tcp,
        params,
        RouteType::REQUEST,
        "fix_nated_register(); out($avp(RECEIVED));",
    );
    assert_eq!(r.out, ["sip:[::1]:5070;transport=tcp"]);
    // Without received_avp it does nothing, successfully.
    let r = run(
        reg,
        SRC,
        "fix_nated_register(); out($rc); out($avp(RECEIVED));",
    );
    assert_eq!(r.out, ["1", "<null>"]);
    assert!(r.ctx.avps.is_empty());
}

#[test]
fn media_relays_are_refused_once_with_the_reason() {
    let cfg = "loadmodule \"nathelper.so\"\n#!ifdef WITH_NAT\n#!endif\nloadmodule \"rtpproxy.so\"\nmodparam(\"rtpproxy\", \"rtpproxy_sock\", \"udp:127.0.0.1:7722\")\nrequest_route {\n if (nat_uac_test(\"8\")) { rtpproxy_manage(\"co\"); } else { rtpproxy_manage(\"cor\"); }\n}\n";
    let errs = load_errors(cfg);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "module `rtpproxy` is not available in siphon: siphon does not relay media"
        ),
        "{}",
        errs[0]
    );
    // Without its loadmodule, the call says whose it is and why.
    let errs = load_errors("request_route { rtpengine_manage(); }\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("belongs to module `rtpengine`, which is not available in siphon: siphon does not relay media"), "{}", errs[0]);
    // fix_nated_sdp is refused at its call.
    let errs =
        load_errors("loadmodule \"nathelper.so\"\nrequest_route { fix_nated_sdp(\"3\"); }\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("does not rewrite SDP"), "{}", errs[0]);
}

#[test]
fn modparam_module_names_are_patterns() {
    let ok = load_errors(
        "loadmodule \"nathelper.so\"\nloadmodule \"registrar.so\"\nmodparam(\"nathelper|registrar\", \"received_avp\", \"$avp(RECEIVED)\")\nmodparam(\"NAT.*\", \"natping_interval\", 10)\nrequest_route { exit; }\n",
    );
    assert!(ok.is_empty(), "{ok:#?}");
    let errs = load_errors(
        "loadmodule \"nathelper.so\"\nloadmodule \"registrar.so\"\nmodparam(\"nathelper|registrar\", \"natping_interval\", 10)\nmodparam(\"tm|sl\", \"x\", 1)\nmodparam(\"nat(\", \"x\", 1)\nrequest_route { exit; }\n",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].contains("module `registrar` has no parameter `natping_interval`"),
        "{}",
        errs[0]
    );
    assert!(errs[1].contains("no loaded module matches"), "{}", errs[1]);
    assert!(errs[2].contains("not a regular expression"), "{}", errs[2]);
}

#[test]
fn parameters_siphon_cannot_honour_are_refused() {
    let load = |p: &str| {
        load_errors(&format!(
            "loadmodule \"nathelper.so\"\nmodparam(\"nathelper\", {p})\nrequest_route {{ exit; }}\n"
        ))
    };
    for (p, says) in [
        ("\"keepalive_timeout\", 120", "keepalive_timeout"),
        ("\"natping_socket\", \"127.0.0.1:5060\"", "natping_socket"),
        ("\"udpping_from_path\", 1", "udpping_from_path"),
        ("\"nat_addr_mode\", 2", "nat_addr_mode"),
        ("\"received_avp\", \"$var(x)\"", "received_avp"),
        ("\"force_socket\", \"nowhere\"", "force_socket"),
    ] {
        let e = load(p);
        assert!(e.len() == 1 && e[0].contains(says), "{p}: {e:#?}");
    }
    let e = load_errors(
        "loadmodule \"nathelper.so\"\nmodparam(\"nathelper\", \"natping_interval\", 10)\nmodparam(\"nathelper\", \"sipping_bflag\", 7)\nrequest_route { exit; }\n",
    );
    assert!(e.len() == 1 && e[0].contains("sipping_from"), "{e:#?}");
}

// ---------- keepalives ----------

/// usrloc's tables, as the module API shows them.
struct Loc {
    contacts: Vec<LocationContact>,
    nat_bflag: Option<u32>,
    asked: Mutex<Vec<u64>>,
}

impl Location for Loc {
    fn contacts(&self, flags: u64) -> Vec<LocationContact> {
        self.asked.lock().unwrap().push(flags);
        self.contacts
            .iter()
            .filter(|c| c.cflags & flags == flags)
            .cloned()
            .collect()
    }
    fn nat_bflag(&self) -> Option<u32> {
        self.nat_bflag
    }
}

/// A host that records what it is asked to send and never sends.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<(SocketAddr, SocketAddr, Bytes)>>,
}

impl Host for Recorder {
    fn shutdown(&self) -> tokio_util::sync::CancellationToken {
        Default::default()
    }
    fn set_http_service(&self, _: Arc<dyn siphon_script::http::HttpService>) -> bool {
        false
    }
    fn set_http_message(&self, _: &mut Ctx, _: Bytes, _: Peer) -> Result<(), String> {
        Err("no".into())
    }
    fn udp_listener(&self, to: SocketAddr, from: Option<SocketAddr>) -> Option<UdpListener> {
        let addr = from.unwrap_or_else(|| "127.0.0.1:5060".parse().unwrap());
        to.is_ipv4().then(|| UdpListener {
            addr,
            sent_by: addr.to_string(),
        })
    }
    fn send_udp(&self, from: SocketAddr, to: SocketAddr, data: Bytes) -> Result<(), String> {
        self.sent.lock().unwrap().push((from, to, data));
        Ok(())
    }
}

const NAT: u64 = 1 << 6;
const SIPPING: u64 = 1 << 7;

fn contact(aor: &str, uri: &str, received: Option<&str>, cflags: u64) -> LocationContact {
    LocationContact {
        aor: aor.into(),
        uri: uri.into(),
        received: received.map(str::to_string),
        path: None,
        socket: "udp:127.0.0.1:5080".into(),
        cflags,
        ruid: format!("uloc-{aor}"),
    }
}

fn pinger(interval: u64, nated_only: bool, sipping: u64) -> Pinger {
    Pinger::new(
        PingConfig {
            interval,
            nated_only,
            sipping,
            disable: 1 << 9,
            from: Some("sip:pinger@kamailio.org".into()),
            method: "OPTIONS".into(),
            force_socket: None,
        },
        7,
    )
}

/// Every slice of one interval.
fn all_rounds(p: &Pinger, loc: &Loc, host: &Recorder) -> Round {
    let mut total = Round::default();
    for part in 0..p.cfg.interval {
        let r = p.round(loc, host, part);
        total.sent += r.sent;
        total.failed += r.failed;
        total.skipped += r.skipped;
    }
    total
}

#[test]
fn keepalives_go_to_the_received_address_never_the_private_contact() {
    let loc = Loc {
        contacts: vec![
            contact(
                "alice",
                "sip:alice@192.168.1.10:5062",
                Some("sip:127.0.0.1:40000"),
                NAT | SIPPING,
            ),
            contact("bob", "sip:bob@10.0.0.7", Some("sip:127.0.0.1:40001"), NAT),
            // Not behind NAT: not pinged with ping_nated_only.
            contact("carol", "sip:carol@127.0.0.1:40002", None, 0),
        ],
        nat_bflag: Some(6),
        asked: Mutex::default(),
    };
    let host = Recorder::default();
    let p = pinger(3, true, SIPPING);
    let r = all_rounds(&p, &loc, &host);
    assert_eq!(
        r,
        Round {
            sent: 2,
            failed: 0,
            skipped: 0
        }
    );
    assert_eq!(*loc.asked.lock().unwrap(), [NAT; 3]);
    let sent = host.sent.lock().unwrap();
    let to: Vec<String> = sent.iter().map(|(_, to, _)| to.to_string()).collect();
    let mut sorted = to.clone();
    sorted.sort();
    assert_eq!(sorted, ["127.0.0.1:40000", "127.0.0.1:40001"]);
    assert!(
        sent.iter().all(|(_, to, _)| to.ip().is_loopback()),
        "a keepalive was asked to go to {to:?}"
    );
    // From the socket each contact registered through.
    assert!(
        sent.iter()
            .all(|(from, ..)| from.to_string() == "127.0.0.1:5080")
    );
    for (_, to, data) in sent.iter() {
        if to.port() == 40001 {
            assert_eq!(
                &data[..],
                &[0, 0, 0, 0],
                "bob has no sipping flag: 4 zero bytes"
            );
            continue;
        }
        let m = siphon_sip::parse(data.clone()).expect("a SIP request");
        assert_eq!(&m.method_bytes()[..], b"OPTIONS");
        assert_eq!(&m.ruri().unwrap()[..], b"sip:alice@192.168.1.10:5062");
        assert_eq!(
            &m.value(HeaderName::To).unwrap()[..],
            b"sip:alice@192.168.1.10:5062"
        );
        let from = m.from().unwrap();
        assert_eq!(&from.uri[..], b"sip:pinger@kamailio.org");
        assert!(from.tag.unwrap().starts_with(b"uloc-alice-"));
        assert_eq!(&m.value(HeaderName::CSeq).unwrap()[..], b"1 OPTIONS");
        let via = m.top_via().unwrap();
        assert_eq!(&via.host[..], b"127.0.0.1");
        assert_eq!(via.port, Some(5080));
        assert!(via.branch.as_ref().unwrap().starts_with(b"z9hG4bK"));
        assert!(m.call_id().unwrap().ends_with(b"@127.0.0.1"));
    }
}

#[test]
fn each_contact_once_per_interval_in_its_slice() {
    let loc = Loc {
        contacts: (0..20)
            .map(|i| {
                contact(
                    &format!("u{i}"),
                    &format!("sip:u{i}@127.0.0.1:{}", 41000 + i),
                    None,
                    0,
                )
            })
            .collect(),
        nat_bflag: None,
        asked: Mutex::default(),
    };
    let host = Recorder::default();
    let p = pinger(4, false, 0);
    assert_eq!(all_rounds(&p, &loc, &host).sent, 20);
    let mut ports: Vec<u16> = host
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(_, to, _)| to.port())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (41000..41020).collect::<Vec<_>>());
    // A slice holds only its own contacts.
    host.sent.lock().unwrap().clear();
    let one = p.round(&loc, &host, 1).sent;
    assert!(one < 20);
    assert!(host.sent.lock().unwrap().iter().all(|(_, to, _)| {
        let aor = format!("u{}", to.port() - 41000);
        u64::from(keepalive::aor_hash(&aor)) % 4 == 1
    }));
    // ping_nated_only 0 with a sipping flag: everyone gets a SIP ping.
    host.sent.lock().unwrap().clear();
    let p = pinger(1, false, SIPPING);
    p.round(&loc, &host, 0);
    assert!(
        host.sent
            .lock()
            .unwrap()
            .iter()
            .all(|(.., d)| d.starts_with(b"OPTIONS "))
    );
}

#[test]
fn contacts_that_cannot_or_must_not_be_pinged() {
    let loc = Loc {
        contacts: vec![
            contact(
                "tcp",
                "sip:a@192.168.1.10",
                Some("sip:127.0.0.1:40000;transport=tcp"),
                NAT,
            ),
            contact("name", "sip:b@ua.example:5060", None, NAT),
            contact("v6", "sip:c@[::1]:5070", None, NAT),
            contact("off", "sip:d@127.0.0.1:40003", None, NAT | 1 << 9),
        ],
        nat_bflag: Some(6),
        asked: Mutex::default(),
    };
    let host = Recorder::default();
    let p = pinger(1, true, 0);
    // TCP and a name are skipped; IPv6 has no listener here (failed);
    // natping_disable_bflag is not pinged at all.
    assert_eq!(
        p.round(&loc, &host, 0),
        Round {
            sent: 0,
            failed: 1,
            skipped: 2
        }
    );
    assert!(host.sent.lock().unwrap().is_empty());
    // nathelper.enable_ping 0 stops every ping.
    let loc = Loc {
        contacts: vec![contact("a", "sip:a@127.0.0.1:40000", None, NAT)],
        nat_bflag: Some(6),
        asked: Mutex::default(),
    };
    p.enabled.store(false, Ordering::Relaxed);
    assert_eq!(p.round(&loc, &host, 0), Round::default());
    p.enabled.store(true, Ordering::Relaxed);
    assert_eq!(p.round(&loc, &host, 0).sent, 1);
}

#[test]
fn a_sip_ping_to_a_contact_with_a_path_goes_to_its_first_hop() {
    let mut c = contact(
        "alice",
        "sip:alice@192.168.1.10:5062",
        Some("sip:127.0.0.1:40000"),
        NAT | SIPPING,
    );
    c.path = Some("<sip:127.0.0.1:5090;lr>, <sip:127.0.0.1:5091;lr>".into());
    let loc = Loc {
        contacts: vec![c],
        nat_bflag: Some(6),
        asked: Mutex::default(),
    };
    let host = Recorder::default();
    assert_eq!(pinger(1, true, SIPPING).round(&loc, &host, 0).sent, 1);
    let sent = host.sent.lock().unwrap();
    assert_eq!(sent[0].1.to_string(), "127.0.0.1:5090");
    let m = siphon_sip::parse(sent[0].2.clone()).unwrap();
    assert_eq!(
        &m.value(HeaderName::Route).unwrap()[..],
        b"<sip:127.0.0.1:5090;lr>, <sip:127.0.0.1:5091;lr>"
    );
}
