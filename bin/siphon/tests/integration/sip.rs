//! The SIP core end to end: the real binary, our UAC over UDP and TCP, sipp.

use super::harness::{Server, TcpUac, UdpUac, request};
use std::time::Duration;

const W: Duration = Duration::from_secs(3);

#[test]
fn default_config_answers_options_and_rejects_the_rest() {
    let dir = super::cli::Scratch::new("default-cfg");
    let cfg = siphon::DEFAULT_CONFIG
        .replace("listen=udp:127.0.0.1:5060\n", "")
        .replace("listen=tcp:127.0.0.1:5060\n", "")
        .replace("udp:127.0.0.1:5090", "udp:127.0.0.1:0")
        .replace(
            "/tmp/siphon_rpc.fifo",
            &format!("{}/rpc.fifo", dir.0.display()),
        );
    let srv = Server::start(&cfg);
    // `siphon ctl` against it, over UDP and the FIFO.
    let rpc = srv
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("jsonrpcs listening on udp:")
                .map(str::to_string)
        })
        .unwrap();
    let ctl = |args: &[&str]| {
        crate::harness::siphon_command()
            .arg("ctl")
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["--udp", &rpc, "core.echo", "1", "s:2", "x", "1.5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([1, "2", "x", 1.5]));
    let out = ctl(&["--udp", &rpc, "no.such"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Method not found"));
    let fifo = format!("{}/rpc.fifo", dir.0.display());
    let out = ctl(&["--fifo", &fifo, "core.version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("siphon"));
    // And over HTTP at /RPC on the SIP TCP listener.
    let url = format!("http://{}/RPC", srv.tcp);
    let out = ctl(&["--http", &url, "core.echo", "s:7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!(["7"]));
    let out = ctl(&[
        "--http",
        &format!("http://{}/elsewhere", srv.tcp),
        "core.version",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // Prometheus metrics at /metrics.
    let mut http = super::xhttp::HttpConn::new(srv.tcp);
    http.send("GET", "/metrics", "", b"");
    let m = http.recv().expect("a /metrics answer");
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("kamailio_core_rcv_requests ")),
        "{text}"
    );
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("OPTIONS", uac.addr(), "o1", "c-opt", ""));
    let r = uac.recv(W).expect("reply");
    assert_eq!(r.status(), Some(200));
    let to = r.to().unwrap();
    assert!(to.tag.is_some(), "stateless replies carry a To-tag");
    let via = r.top_via().unwrap();
    assert_eq!(via.rport, Some(Some(uac.addr().port())), "rport filled in");
    uac.send(&request("MESSAGE", uac.addr(), "m1", "c-msg", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(501));
    // Over TCP, two requests in one write.
    let mut t = TcpUac::new(srv.tcp);
    let a = t.addr();
    t.send(&(request("OPTIONS", a, "t1", "c-t1", "") + &request("OPTIONS", a, "t2", "c-t2", "")));
    assert_eq!(t.recv(W).unwrap().status(), Some(200));
    assert_eq!(&t.recv(W).unwrap().call_id().unwrap()[..], b"c-t2");
}

const REDIRECT: &str = r#"
loadmodule "tm.so"
request_route {
    if (is_method("INVITE")) {
        $shv(n) = $shv(n) + 1;
        t_newtran();
        append_to_reply("Contact: <sip:moved@127.0.0.1:5099>\r\nX-Count: $shv(n)\r\n");
        t_reply("302", "Moved Temporarily");
        exit;
    }
    if (is_method("ACK")) { $shv(acks) = $shv(acks) + 1; exit; }
    if (is_method("OPTIONS")) {
        append_to_reply("X-Acks: $shv(acks)\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
}
"#;

#[test]
fn stateful_reply_retransmission_absorbed_and_ack_absorbed() {
    let srv = Server::start(REDIRECT);
    let uac = UdpUac::new(srv.udp);
    let inv = request("INVITE", uac.addr(), "i1", "c-inv", "");
    uac.send(&inv);
    let trying = uac.recv(W).expect("100");
    assert_eq!(trying.status(), Some(100));
    assert!(trying.to().unwrap().tag.is_none());
    let r = uac.recv(W).expect("302");
    assert_eq!(r.status(), Some(302));
    assert_eq!(r.headers_named(b"contact").count(), 1);
    let count = |m: &siphon_sip::SipMsg| {
        m.headers_named(b"x-count")
            .next()
            .map(|h| m.header_value(h))
            .unwrap()
    };
    assert_eq!(&count(&r)[..], b"1");
    // A retransmitted INVITE gets the same 302 again; the script does not run again.
    uac.send(&inv);
    let again = uac.recv(W).expect("302 again");
    assert_eq!(again.status(), Some(302));
    assert_eq!(&count(&again)[..], b"1");
    assert_eq!(again.to().unwrap().tag, r.to().unwrap().tag);
    // The ACK to the 302 is absorbed by the transaction: the script never sees it.
    let tag = String::from_utf8(r.to().unwrap().tag.unwrap().to_vec()).unwrap();
    let ack = request("ACK", uac.addr(), "i1", "c-inv", "").replace(
        "To: <sip:service@127.0.0.1>",
        &format!("To: <sip:service@127.0.0.1>;tag={tag}"),
    );
    uac.send(&ack);
    uac.send(&request("OPTIONS", uac.addr(), "o2", "c-o2", ""));
    let ok = uac.recv(W).expect("200");
    assert_eq!(
        &ok.headers_named(b"x-acks")
            .next()
            .map(|h| ok.header_value(h))
            .unwrap()[..],
        b"<null>",
        "the ACK route never ran"
    );
}

#[test]
fn non_2xx_final_is_retransmitted_over_udp_until_ack() {
    let srv = Server::start(REDIRECT);
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "g1", "c-g", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(100));
    assert_eq!(uac.recv(W).unwrap().status(), Some(302));
    // Timer G: the 302 comes again after T1 (500 ms) when no ACK arrives.
    let again = uac
        .recv(Duration::from_millis(1500))
        .expect("retransmitted 302");
    assert_eq!(again.status(), Some(302));
}

#[test]
fn cancel_of_a_pending_invite() {
    let srv = Server::start(
        "loadmodule \"tm.so\"\nrequest_route { if (is_method(\"INVITE\")) { t_newtran(); t_suspend(); exit; } }\n",
    );
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "x1", "c-cancel", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(100));
    uac.send(&request("CANCEL", uac.addr(), "x1", "c-cancel", ""));
    let mut codes = [uac.recv(W).unwrap(), uac.recv(W).unwrap()];
    codes.sort_by_key(|m| m.status());
    assert_eq!(
        (codes[0].status(), codes[0].cseq().unwrap().method),
        (Some(200), siphon_sip::Method::Cancel)
    );
    assert_eq!(
        (codes[1].status(), codes[1].cseq().unwrap().method),
        (Some(487), siphon_sip::Method::Invite)
    );
    // A CANCEL for nothing: 481.
    uac.send(&request("CANCEL", uac.addr(), "nothing", "c-none", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(481));
}

#[test]
fn suspended_transaction_times_out_with_408_after_failure_route() {
    let cfg = r#"
loadmodule "tm.so"
modparam("tm", "fr_timer", 300)
request_route {
    if (is_method("INVITE")) {
        t_newtran();
        t_on_failure("TIMEOUT");
        t_suspend();
        exit;
    }
}
failure_route[TIMEOUT] {
    xinfo("failure route ran, T_reply_code=$T_reply_code\n");
}
"#;
    let srv = Server::start(cfg);
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "to1", "c-timeout", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(100));
    assert_eq!(uac.final_code(W), Some(408));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        srv.log_soon("failure route ran, T_reply_code=408"),
        "{:#?}",
        srv.log.lock().unwrap()
    );
}

#[test]
fn suspend_then_continue_from_another_request_then_late_continue() {
    // The INVITE is parked; a MESSAGE carries its index and label and continues it,
    // with its own $var visible in the resumed route. A second continue is late.
    let cfg = r#"
loadmodule "tm.so"
request_route {
    if (is_method("INVITE")) {
        t_newtran();
        $shv(idx) = $T(id_index);
        $shv(lbl) = $T(id_label);
        $var(from_invite) = "kept";
        t_suspend();
        exit;
    }
    if (is_method("MESSAGE")) {
        $var(target) = "sip:target@127.0.0.1:5099";
        if (t_continue($shv(idx), $shv(lbl), "RESUME")) {
            sl_send_reply("200", "Continued");
        } else {
            sl_send_reply("404", "Late");
        }
        exit;
    }
}
route[RESUME] {
    append_to_reply("Contact: <$var(target)>\r\nX-From-Invite: $var(from_invite)\r\n");
    t_reply("302", "Moved Temporarily");
}
"#;
    let srv = Server::start(cfg);
    let inv = UdpUac::new(srv.udp);
    inv.send(&request("INVITE", inv.addr(), "s1", "c-susp", ""));
    assert_eq!(inv.recv(W).unwrap().status(), Some(100));
    // Retransmissions of the suspended INVITE are absorbed (the 100 is resent).
    inv.send(&request("INVITE", inv.addr(), "s1", "c-susp", ""));
    assert_eq!(inv.recv(W).unwrap().status(), Some(100));
    let ctl = UdpUac::new(srv.udp);
    ctl.send(&request("MESSAGE", ctl.addr(), "m1", "c-m1", ""));
    assert_eq!(ctl.recv(W).unwrap().status(), Some(200));
    let r = inv.recv(W).expect("302 after continue");
    assert_eq!(r.status(), Some(302));
    let contact = r
        .headers_named(b"contact")
        .next()
        .map(|h| r.header_value(h))
        .unwrap();
    assert_eq!(
        &contact[..],
        b"<sip:target@127.0.0.1:5099>",
        "the caller's $var is visible"
    );
    let kept = r
        .headers_named(b"x-from-invite")
        .next()
        .map(|h| r.header_value(h))
        .unwrap();
    assert_eq!(
        &kept[..],
        b"0",
        "t_continue from a script runs with the caller's $vars"
    );
    ctl.send(&request("MESSAGE", ctl.addr(), "m2", "c-m2", ""));
    assert_eq!(ctl.recv(W).unwrap().status(), Some(404));
}

#[test]
fn resumed_route_without_reply_gives_500() {
    let cfg = r#"
loadmodule "tm.so"
request_route {
    if (is_method("INVITE")) { t_newtran(); $shv(i) = $T(id_index); $shv(l) = $T(id_label); t_suspend(); exit; }
    if (is_method("MESSAGE")) { t_continue($shv(i), $shv(l), "NOTHING"); sl_send_reply("200", "OK"); exit; }
}
route[NOTHING] { xinfo("resumed, no reply\n"); }
"#;
    let srv = Server::start(cfg);
    let inv = UdpUac::new(srv.udp);
    inv.send(&request("INVITE", inv.addr(), "n1", "c-n1", ""));
    assert_eq!(inv.recv(W).unwrap().status(), Some(100));
    // The 100 comes when the transaction is made, before t_suspend() parks
    // it: a t_continue() that arrives in between is too late for nothing
    // (counted) — so ask again until the INVITE is answered.
    let ctl = UdpUac::new(srv.udp);
    let mut code = None;
    for n in 0..20 {
        ctl.send(&request(
            "MESSAGE",
            ctl.addr(),
            &format!("n2{n}"),
            &format!("c-n2{n}"),
            "",
        ));
        code = inv.final_code(Duration::from_millis(250));
        if code.is_some() {
            break;
        }
    }
    assert_eq!(code, Some(500));
}

#[test]
fn malformed_requests_get_400_or_are_dropped() {
    let srv = Server::start("request_route { sl_send_reply(\"200\", \"OK\"); }\n");
    let uac = UdpUac::new(srv.udp);
    // Via present, From missing: a reply can be built.
    let bad = format!(
        "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbad;rport\r\nCall-ID: b\r\nCSeq: 1 OPTIONS\r\nTo: <sip:a@127.0.0.1>\r\nContent-Length: 0\r\n\r\n",
        uac.addr()
    );
    uac.send(&bad);
    let r = uac.recv(W).expect("400");
    assert_eq!(r.status(), Some(400));
    // Garbage is dropped; the server keeps serving.
    uac.send("this is not SIP\r\n\r\n");
    uac.send(&request("OPTIONS", uac.addr(), "ok", "c-ok", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(200));
    // A TCP peer sending an oversized message is closed; others are unaffected.
    let mut t = TcpUac::new(srv.tcp);
    t.send("OPTIONS sip:a SIP/2.0\r\nContent-Length: 999999\r\n\r\n");
    assert!(t.recv(Duration::from_millis(500)).is_none());
    uac.send(&request("OPTIONS", uac.addr(), "ok2", "c-ok2", ""));
    assert_eq!(uac.recv(W).unwrap().status(), Some(200));
}

#[test]
fn pseudo_variables_and_textops() {
    let cfg = r#"
request_route {
    if (is_method("OPTIONS|INFO") && !has_totag() && is_present_hf("X-In") && $hdr(X-In) == "v1" && uri == myself && src_ip == 127.0.0.1 && method == "OPTIONS") {
        $rU = "changed";
        append_to_reply("X-Pv: $rm|$ru|$rU|$rd|$fU|$ft|$ci|$cs|$pr|$si|$(hdr(X-In)[1])|$(hdr(X-In)[*])|$ml\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("403", "No");
}
"#;
    let srv = Server::start(cfg);
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "OPTIONS",
        uac.addr(),
        "p1",
        "c-pv",
        "X-In: v1\r\nX-In: v2\r\n",
    ));
    let r = uac.recv(W).unwrap();
    assert_eq!(r.status(), Some(200));
    let pv = String::from_utf8(
        r.headers_named(b"x-pv")
            .next()
            .map(|h| r.header_value(h))
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let parts: Vec<&str> = pv.split('|').collect();
    assert_eq!(
        &parts[..11],
        &[
            "OPTIONS",
            "sip:changed@127.0.0.1",
            "changed",
            "127.0.0.1",
            "uac",
            "fc-pv",
            "c-pv",
            "1",
            "udp",
            "127.0.0.1",
            "v2"
        ]
    );
    assert_eq!(parts[11], "v1, v2");
    assert!(parts[12].parse::<usize>().unwrap() > 200);
}

#[test]
fn sipp_options_and_invite_302_with_zero_failed_calls() {
    let cfg = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/siphon-redirect.cfg"
    ))
    .expect("bench config");
    let srv = Server::start(&cfg);
    for (scenario, transport) in [
        ("options.xml", "u1"),
        ("invite302.xml", "u1"),
        ("invite302.xml", "t1"),
    ] {
        let target = if transport == "t1" { srv.tcp } else { srv.udp };
        super::harness::sipp(scenario, target, transport, 300, 500, 30);
    }
}

#[test]
fn stateless_forward_and_reply_relay() {
    // siphon relays the request to a UAS (our socket) and the UAS's reply back by the Via.
    let uas = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    uas.set_read_timeout(Some(W)).unwrap();
    let cfg = format!(
        "request_route {{\n remove_hf(\"X-Secret\");\n append_hf(\"X-Relayed: yes\\r\\n\");\n $du = \"sip:{}\";\n forward();\n }}\n",
        uas.local_addr().unwrap()
    );
    let srv = Server::start(&cfg);
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "MESSAGE",
        uac.addr(),
        "f1",
        "c-fwd",
        "X-Secret: 1\r\n",
    ));
    let mut buf = vec![0u8; 65535];
    let (n, from) = uas.recv_from(&mut buf).expect("the UAS gets the request");
    let m = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(m.max_forwards(), Some(69));
    assert_eq!(m.headers_named(b"via").count(), 2);
    assert!(m.headers_named(b"x-secret").next().is_none());
    assert_eq!(m.headers_named(b"x-relayed").count(), 1);
    // The UAS answers to the top Via (siphon's).
    let reply = siphon_sip::build_reply(
        &m,
        200,
        b"OK",
        &siphon_sip::ReplyOptions {
            to_tag: Some(b"uas"),
            ..Default::default()
        },
    );
    let via = m.top_via().unwrap();
    let dest: std::net::SocketAddr = format!(
        "{}:{}",
        String::from_utf8_lossy(&via.host),
        via.port.unwrap()
    )
    .parse()
    .unwrap();
    assert_eq!(dest, from);
    uas.send_to(&reply, dest).unwrap();
    let r = uac.recv(W).expect("relayed reply");
    assert_eq!(r.status(), Some(200));
    assert_eq!(
        r.headers_named(b"via").count(),
        1,
        "siphon's Via is removed"
    );
}

#[test]
fn ipv6_listener() {
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        return;
    };
    drop(probe);
    let srv = Server::start(
        "listen=udp:[::1]:0\nrequest_route { sl_send_reply(\"200\", \"OK v6 $si\"); }\n",
    );
    let v6 = srv
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("listening on udp:")
                .nth(1)
                .map(str::trim)
                .filter(|a| a.starts_with('['))
                .map(String::from)
        })
        .expect("v6 listener");
    let sock = std::net::UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(W)).unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(
        request("OPTIONS", me, "v6", "c-v6", "").as_bytes(),
        v6.parse::<std::net::SocketAddr>().unwrap(),
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("reply over IPv6");
    let r = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(r.status(), Some(200));
    assert!(
        String::from_utf8_lossy(r.get(match r.kind {
            siphon_sip::Kind::Response { reason, .. } => reason,
            _ => unreachable!(),
        }))
        .contains("::1")
    );
}

#[test]
fn tcp_connections_over_the_limit_are_closed_and_others_go_on() {
    let srv =
        Server::start("tcp_max_connections=2\nrequest_route { sl_send_reply(\"200\", \"OK\"); }\n");
    let mut a = TcpUac::new(srv.tcp);
    let mut b = TcpUac::new(srv.tcp);
    let (aa, ba) = (a.addr(), b.addr());
    a.send(&request("OPTIONS", aa, "l1", "c-l1", ""));
    b.send(&request("OPTIONS", ba, "l2", "c-l2", ""));
    assert_eq!(a.recv(W).unwrap().status(), Some(200));
    assert_eq!(b.recv(W).unwrap().status(), Some(200));
    let mut c = TcpUac::new(srv.tcp);
    let ca = c.addr();
    c.send(&request("OPTIONS", ca, "l3", "c-l3", ""));
    assert!(
        c.recv(Duration::from_millis(500)).is_none(),
        "the third connection is closed"
    );
    a.send(&request("OPTIONS", aa, "l4", "c-l4", ""));
    assert_eq!(a.recv(W).unwrap().status(), Some(200));
}

#[test]
fn log_prefix_with_kamailio_message_type_and_headers() {
    // Kamailio's documented log_prefix example: `$mt` is 1 for a request.
    let srv = Server::start(
        "log_prefix=\"{$mt $hdr(CSeq) $ci} \"\nrequest_route { xlog(\"L_INFO\", \"routing $rm\\n\"); sl_send_reply(\"200\", \"OK\"); }\n",
    );
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("OPTIONS", uac.addr(), "lp1", "lp-call", ""));
    assert_eq!(uac.final_code(W), Some(200));
    assert!(srv.log_soon("{1 1 OPTIONS lp-call} routing OPTIONS"));
}

#[test]
fn the_ack_of_a_stateless_error_reply_ends_before_the_script() {
    // As Kamailio's sl: the ACK of a 486 sent by sl_send_reply is filtered.
    let srv = Server::start(
        "loadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:127.0.0.1:0\")\nrequest_route {\n    if (is_method(\"ACK\")) { xlog(\"L_INFO\", \"ACK reached the script\\n\"); exit; }\n    sl_send_reply(\"486\", \"Busy Here\");\n}\n",
    );
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "sla", "c-sla", ""));
    let r = uac.recv(W).expect("the 486");
    assert_eq!(r.status(), Some(486));
    let to = r
        .headers_named(b"To")
        .next()
        .map(|h| String::from_utf8_lossy(&r.header_value(h)).into_owned())
        .unwrap();
    let ack = request("ACK", uac.addr(), "sla", "c-sla", "")
        .replace("To: <sip:service@127.0.0.1>", &format!("To: {to}"));
    uac.send(&ack);
    let mut n = 0;
    for _ in 0..100 {
        n = super::jsonrpcs::stat(&srv, "sl:filtered_acks");
        if n == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(n, 1);
    assert!(!srv.log_contains("ACK reached the script"));
}
