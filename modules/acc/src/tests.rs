use super::*;
use siphon_script::net::{Peer, Transport};
use siphon_script::{PvClassSpec, Registry, Value, load_str};
use std::time::Duration;

fn cfg_of(params: &[(&str, ParamValue)]) -> ModuleConfig {
    let mut c = ModuleConfig::default();
    for (n, v) in params {
        c.params.insert(n.to_string(), vec![v.clone()]);
    }
    c
}

fn set(params: &[(&str, ParamValue)]) -> Result<Settings, String> {
    settings(&cfg_of(params))
}

fn int(n: i64) -> ParamValue {
    ParamValue::Int(n)
}
fn st(s: &str) -> ParamValue {
    ParamValue::Str(s.into())
}

#[test]
fn the_line_has_kamailios_fields_in_kamailios_order() {
    let s = set(&[("log_extra", st("src_user=$fU;src_domain=$fd; src_ip = $si"))]).unwrap();
    let r = Record {
        method: "INVITE".into(),
        from_tag: "ft".into(),
        to_tag: "tt".into(),
        call_id: "cid@h".into(),
        code: "200".into(),
        reason: "OK".into(),
    };
    let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_250_000);
    let extras = [
        Bytes::from("alice"),
        Bytes::from("example.com"),
        Bytes::new(),
    ];
    assert_eq!(
        format_line(&s, ANSWERED, t, &r, &extras),
        "ACC: transaction answered: timestamp=1700000000;method=INVITE;from_tag=ft;to_tag=tt;call_id=cid@h;code=200;reason=OK;src_user=alice;src_domain=example.com;src_ip="
    );
    let s1 = set(&[("time_mode", int(1))]).unwrap();
    assert_eq!(
        format_line(&s1, MISSED, t, &r, &[]),
        "ACC: call missed: timestamp=1700000000;time_exten=250000;method=INVITE;from_tag=ft;to_tag=tt;call_id=cid@h;code=200;reason=OK"
    );
    let s2 = set(&[("time_mode", int(2)), ("time_attr", st("t"))]).unwrap();
    assert!(
        format_line(&s2, REQUEST, t, &r, &[])
            .starts_with("ACC: request accounted: timestamp=1700000000;t=1700000000.250;method=")
    );
}

#[test]
fn comments_parse_as_kamailios_acc_parse_code() {
    assert_eq!(
        parse_comment(b"200 Ok"),
        (Bytes::from("200"), Bytes::from("Ok"))
    );
    assert_eq!(
        parse_comment(b"486   Busy Here"),
        (Bytes::from("486"), Bytes::from("Busy Here"))
    );
    assert_eq!(parse_comment(b"603"), (Bytes::from("603"), Bytes::new()));
    assert_eq!(
        parse_comment(b"Call done"),
        (Bytes::new(), Bytes::from("Call done"))
    );
}

#[test]
fn which_lines_a_final_logs() {
    use siphon_sip::Method::{Cancel, Invite, Options};
    let s = set(&[
        ("log_flag", int(1)),
        ("log_missed_flag", int(2)),
        ("failed_transaction_flag", int(3)),
        ("failed_filter", st("404,408")),
    ])
    .unwrap();
    let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
    assert_eq!(Acc::lines_for(&s, Invite, 200, f(&[1])), [ANSWERED]);
    assert!(
        Acc::lines_for(&s, Invite, 200, f(&[3])).is_empty(),
        "failed flag alone logs nothing"
    );
    assert!(
        Acc::lines_for(&s, Invite, 486, f(&[1])).is_empty(),
        "a failure needs failed_transaction_flag"
    );
    assert_eq!(Acc::lines_for(&s, Invite, 486, f(&[1, 3])), [ANSWERED]);
    assert!(
        Acc::lines_for(&s, Invite, 404, f(&[1, 3])).is_empty(),
        "404 is filtered"
    );
    assert_eq!(
        Acc::lines_for(&s, Invite, 486, f(&[1, 2, 3])),
        [MISSED, ANSWERED]
    );
    assert_eq!(
        Acc::lines_for(&s, Invite, 404, f(&[2])),
        [MISSED],
        "the filter is for failed only"
    );
    assert!(
        Acc::lines_for(&s, Options, 486, f(&[2])).is_empty(),
        "missed is for INVITEs"
    );
    assert!(
        Acc::lines_for(&s, Cancel, 200, f(&[1])).is_empty(),
        "report_cancels 0"
    );
}

#[test]
fn database_cdr_and_other_backends_are_refused_unless_left_empty() {
    assert!(
        set(&[
            ("db_url", st("")),
            ("db_flag", int(-1)),
            ("cdr_enable", int(0))
        ])
        .is_ok()
    );
    let e = set(&[("db_url", st("mysql://u:p@localhost/kamailio"))]).unwrap_err();
    assert!(
        e.contains("not available in siphon") && e.contains("only the log backend"),
        "{e}"
    );
    assert!(set(&[("db_flag", int(1))]).unwrap_err().contains("db_flag"));
    assert!(
        set(&[("db_missed_flag", int(2))])
            .unwrap_err()
            .contains("db_missed_flag")
    );
    assert!(
        set(&[("cdr_enable", int(1))])
            .unwrap_err()
            .contains("dialog")
    );
    assert!(
        set(&[("early_media", int(1))])
            .unwrap_err()
            .contains("early_media")
    );
    assert!(
        set(&[("report_ack", int(1))])
            .unwrap_err()
            .contains("report_ack")
    );
    assert!(
        set(&[("detect_direction", int(1))])
            .unwrap_err()
            .contains("detect_direction")
    );
    assert!(set(&[("log_flag", int(64))]).is_err());
    assert!(set(&[("log_extra", st("novalue"))]).is_err());
    assert!(
        set(&[("failed_filter", st("200"))])
            .unwrap_err()
            .contains("below 300")
    );
    assert!(
        set(&[("failed_filter", st("48"))])
            .unwrap_err()
            .contains("3 digits")
    );
}

#[test]
fn acc_log_request_and_extras_read_the_request() {
    let mut reg = Registry::new();
    reg.add(def());
    reg.core_pvs.push(PvClassSpec::read_only("fU", |ex| {
        let s = ex.ctx.ext.get::<SipCtx>().unwrap();
        let u = s.msg.from().unwrap().uri;
        Value::from_str_copy(&String::from_utf8_lossy(&u)[4..9])
    }));
    let cfg = "loadmodule \"acc.so\"\nmodparam(\"acc\", \"log_extra\", \"src_user=$fU;v=$var(x)\")\nrequest_route {\n$var(x) = 7;\nacc_log_request(\"200 Ok\");\n}\n";
    let l = load_str("t.cfg", cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)))
        .into_shared();
    assert_eq!(p.module_formats("acc").len(), 2);
    let raw = "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:alice@h>;tag=f1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let msg = siphon_sip::parse(Bytes::from(raw)).unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    ctx.ext.insert(SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: "10.0.0.1:5060".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        },
    ));
    p.run(p.request_route().unwrap(), &mut ctx);
    assert_eq!(ctx.last_rc, 1);
    // The extras of an automatic line: evaluated on a fresh context.
    let mut c2 = p.new_ctx(RouteType::REQUEST);
    c2.ext.insert(ctx.ext.remove::<SipCtx>().unwrap());
    let mut ex = Exec::new(&p, &mut c2);
    let vals = extras(&mut ex);
    assert_eq!(vals, [Bytes::from("alice"), Bytes::from("0")]);
}

#[test]
fn an_empty_comment_is_refused_at_load() {
    let mut reg = Registry::new();
    reg.add(def());
    let l = load_str(
        "t.cfg",
        "loadmodule \"acc.so\"\nrequest_route {\nacc_log_request(\"\");\n}\n",
        &Default::default(),
        &reg,
    );
    assert!(l.program.is_none());
}

#[test]
fn a_refused_parameter_is_reported_at_its_modparam() {
    let mut reg = Registry::new();
    reg.add(def());
    let cfg = "loadmodule \"acc.so\"\nmodparam(\"acc\", \"db_flag\", -1)\nmodparam(\"acc\", \"db_url\", \"mysql://kamailio@localhost/kamailio\")\nrequest_route {\n}\n";
    let l = load_str("t.cfg", cfg, &Default::default(), &reg);
    assert!(l.program.is_none());
    let text = siphon_cfg::diag::render_all(&l.diags, &l.sources);
    assert!(text.contains("t.cfg:3:"), "{text}");
    assert!(
        text.contains("`db_url` of module `acc`: \"mysql://kamailio@localhost/kamailio\" is not available in siphon: only the log backend of acc is"),
        "{text}"
    );
    let ok = "loadmodule \"acc.so\"\nmodparam(\"acc\", \"db_url\", \"\")\nmodparam(\"acc\", \"cdr_enable\", 0)\nrequest_route {\n}\n";
    assert!(
        load_str("t.cfg", ok, &Default::default(), &reg)
            .program
            .is_some()
    );
}
