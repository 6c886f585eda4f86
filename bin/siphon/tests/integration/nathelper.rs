//! nathelper on Kamailio's shipped kamailio.cfg with `-A WITH_NAT` (issue
//! 15), on siphon and on Kamailio 5.6.3 side by side (the servers and user
//! agents of `kamailio_cfg.rs`).
//!
//! As shipped, the file loads rtpproxy: `siphon -c` refuses that, and only
//! that. The end-to-end tests run a copy without the media relay (its
//! `loadmodule`, its `modparam` and the `rtpproxy_manage` calls removed) and
//! with `natping_interval` 1 instead of 30, so a keepalive comes within a
//! second. A user agent "behind NAT" registers: its Via and Contact say
//! 192.168.1.10:5062 while it sends from a loopback port. That address is
//! only data in the headers: everything the servers send goes to the
//! loopback port the REGISTER came from (the `received` the registrar
//! stored, the `;alias=` of the dialog), which is where this UA listens.
//! NAT detection needs a private Contact, so it cannot be a loopback one;
//! siphon runs with `SIPHON_SEND_ONLY_LOOPBACK`, which refuses it as a
//! destination should a bug pick it.
//!
//! And `add_rcv_param` (the REGISTER a peer gets) and `set_alias_to_pv`
//! on a small proxy configuration, the same on both.

use super::cli::Scratch;
use super::kamailio_cfg::{
    KAMAILIO_CFG, Msg, Seen, Srv, Ua, call_id, digits_after, on_both_with, shape,
};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the NATed user agent believes it is.
const PRIVATE: &str = "192.168.1.10:5062";

/// The shipped file without the media relay and with a 1 s keepalive
/// interval, in `dir`; `None` when the file is not installed.
fn without_rtpproxy(dir: &Scratch) -> Option<String> {
    let text = std::fs::read_to_string(KAMAILIO_CFG).ok()?;
    let mut out = text.clone();
    for (from, to) in [
        ("loadmodule \"rtpproxy.so\"\n", ""),
        (
            "modparam(\"rtpproxy\", \"rtpproxy_sock\", \"udp:127.0.0.1:7722\")\n",
            "",
        ),
        (
            "\tif(nat_uac_test(\"8\")) {\n\t\trtpproxy_manage(\"co\");\n\t} else {\n\t\trtpproxy_manage(\"cor\");\n\t}\n",
            "",
        ),
        (
            "modparam(\"nathelper\", \"natping_interval\", 30)",
            "modparam(\"nathelper\", \"natping_interval\", 1)",
        ),
    ] {
        assert_eq!(
            out.matches(from).count(),
            1,
            "{KAMAILIO_CFG} changed: {from:?}"
        );
        out = out.replace(from, to);
    }
    for used in ["\"rtpproxy.so\"", "modparam(\"rtpproxy\"", "rtpproxy_"] {
        assert!(!out.contains(used), "{used} left in the copy");
    }
    Some(dir.write("kamailio-nat.cfg", &out))
}

/// `siphon -c` on the shipped file with `defines`: (exit code, stderr).
fn check(defines: &[&str]) -> (Option<i32>, String) {
    let mut cmd = crate::harness::siphon_command();
    cmd.args(["-c", "-f", KAMAILIO_CFG]);
    for d in defines {
        cmd.args(["-A", d]);
    }
    let out = cmd.output().expect("run siphon -c");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nathelper_shipped_cfg_with_nat_refuses_only_the_media_relay() {
    if !Path::new(KAMAILIO_CFG).exists() {
        eprintln!("{KAMAILIO_CFG} is not installed (scripts/install-test-peers.sh): test skipped");
        return;
    }
    for (defines, module, line) in [
        (&["WITH_NAT"][..], "rtpproxy", "loadmodule \"rtpproxy.so\""),
        (
            &["WITH_NAT", "WITH_RTPENGINE"][..],
            "rtpengine",
            "loadmodule \"rtpengine.so\"",
        ),
    ] {
        let (code, err) = check(defines);
        assert_eq!(code, Some(1), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(
            errors,
            [format!(
                "error: module `{module}` is not available in siphon: siphon does not relay media (RTP); its NAT traversal is signalling only (nathelper)"
            )],
            "{err}"
        );
        assert!(err.contains(line), "{err}");
        assert!(err.contains("1 error(s)"), "{err}");
    }
    // Without the media relay the file loads.
    let dir = Scratch::new("nat-check");
    let cfg = without_rtpproxy(&dir).expect("installed");
    for defines in [
        &["-A", "WITH_NAT"][..],
        &["-A", "WITH_NAT", "-A", "WITH_NATSIPPING"],
    ] {
        let out = crate::harness::siphon_command()
            .args(["-c", "-f", &cfg])
            .args(defines)
            .output()
            .expect("run siphon -c");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
    }
}

/// The next datagram to `ua` within 5 s, with its source.
fn datagram(ua: &Ua) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, from)) = ua.sock.recv_from(&mut buf) {
            return Some((buf[..n].to_vec(), from));
        }
    }
    None
}

/// The first keepalive among the next datagrams: (its bytes, its source).
fn keepalive(ua: &Ua, sip: bool) -> (Vec<u8>, SocketAddr) {
    for _ in 0..20 {
        let (d, from) = datagram(ua).expect("a keepalive within 5 s");
        let is_ping = if sip {
            d.starts_with(b"OPTIONS ")
        } else {
            d == [0, 0, 0, 0]
        };
        if is_ping {
            return (d, from);
        }
    }
    panic!("no keepalive among 20 datagrams");
}

/// `v` shaped for comparison, the alias port written PORT too.
fn shaped(v: &str, srv: &Srv) -> String {
    digits_after(&shape(v, srv), "127.0.0.1~", "PORT")
}

/// `ul.lookup location alice` through kamcmd: the contact's Address,
/// Received, CFlags and Socket lines.
fn stored(srv: &Srv) -> Vec<String> {
    let out = Command::new("kamcmd")
        .arg("-s")
        .arg(format!("unix:{}", srv.run.join("kamailio_ctl").display()))
        .args(["ul.lookup", "location", "alice"])
        .output()
        .expect("kamcmd (installed with Kamailio)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .filter(|l| {
            ["Address:", "Received:", "CFlags:", "Socket:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// The NATed UA registers; what was stored; its keepalive; a call from a UA
/// that is not behind NAT, answered by the NATed one, and the ACK and BYE
/// along the dialog's alias.
fn nated_ua(srv: &Srv, sip_ping: bool) -> Seen {
    let (alice, bob) = (Ua::new(srv.addr), Ua::new(srv.addr));
    let mut seen = Vec::new();
    let ci = call_id("reg").replace('@', "-");
    alice.send(&format!(
        "REGISTER sip:{s} SIP/2.0\nVia: SIP/2.0/UDP {PRIVATE};branch=z9hG4bK{ci};rport\nFrom: <sip:alice@127.0.0.1>;tag=a1\nTo: <sip:alice@127.0.0.1>\nCall-ID: {ci}\nCSeq: 1 REGISTER\nContact: <sip:alice@{PRIVATE}>\nExpires: 300\nMax-Forwards: 70\nContent-Length: 0\n\n",
        s = srv.addr
    ));
    let ok = alice.final_reply();
    seen.push(format!("REGISTER: {}", ok.status()));
    let contact = ok.one("Contact");
    // The registrar stored the address the REGISTER came from.
    let received = format!("received=\"sip:{}\"", alice.addr());
    assert!(contact.contains(&received), "{:?}: {contact}", srv.bin);
    seen.push(format!("its Contact: {}", shaped(&contact, srv)));
    let st = stored(srv);
    assert!(
        st.contains(&format!("Received: sip:{}", alice.addr())),
        "{:?}: {st:?}",
        srv.bin
    );
    seen.extend(st.iter().map(|l| format!("stored {}", shaped(l, srv))));

    // The keepalive: from the SIP listener to where alice really is.
    let (ping, from) = keepalive(&alice, sip_ping);
    assert_eq!(from, srv.addr, "{:?}: the keepalive's source", srv.bin);
    if sip_ping {
        let p = Msg(String::from_utf8_lossy(&ping).into_owned());
        let from_uri = p.one("From");
        seen.push(format!(
            "keepalive: {} To {} From {} CSeq {} Vias {}",
            p.start(),
            p.one("To"),
            from_uri.split(";tag=").next().unwrap_or_default(),
            p.one("CSeq"),
            p.all("Via", "v").len()
        ));
        // A UA answers; the server takes the answer in (nothing to check on the wire).
        alice.send(&format!(
            "SIP/2.0 200 OK\n{}From: {from_uri}\nTo: {};tag=ka\nCall-ID: {}\nCSeq: {}\nContent-Length: 0\n\n",
            p.lines("Via", "v"),
            p.one("To"),
            p.one("Call-ID"),
            p.one("CSeq")
        ));
    } else {
        seen.push(format!("keepalive: {ping:?} from the SIP listener"));
    }

    // bob calls alice.
    let ci = call_id("call");
    let br = ci.replace('@', "-");
    let (a, b) = (alice.addr(), bob.addr());
    bob.send(&format!(
        "INVITE {} SIP/2.0\nVia: SIP/2.0/UDP {b};branch=z9hG4bKinv{br};rport\nFrom: <sip:bob@127.0.0.1>;tag=bob1\nTo: <sip:alice@127.0.0.1>\nCall-ID: {ci}\nCSeq: 1 INVITE\nContact: <sip:bob@{b}>\nMax-Forwards: 70\nContent-Length: 0\n\n",
        srv.uri("alice")
    ));
    let inv = alice.request("INVITE");
    seen.push(format!("INVITE at alice: {}", shaped(inv.ruri(), srv)));
    let rr = inv.all("Record-Route", "");
    seen.push(format!(
        "Record-Route at alice: {:?}",
        rr.iter().map(|v| shaped(v, srv)).collect::<Vec<_>>()
    ));
    let copy = inv.reply_head("alice1");
    alice.send(&format!(
        "SIP/2.0 200 OK\n{copy}Contact: <sip:alice@{PRIVATE}>\nContent-Length: 0\n\n"
    ));
    let ok = bob.final_reply();
    seen.push(format!("bob: {}", ok.status()));
    let their = ok.one("Contact");
    // set_contact_alias() on the reply: the dialog reaches alice where she is.
    let alias = format!(";alias=127.0.0.1~{}~1>", a.port());
    assert!(their.ends_with(&alias), "{:?}: {their}", srv.bin);
    seen.push(format!("alice's Contact at bob: {}", shaped(&their, srv)));
    let target = their.trim_start_matches('<').trim_end_matches('>');
    let route: String = ok
        .all("Record-Route", "")
        .iter()
        .rev()
        .map(|v| format!("Route: {v}\n"))
        .collect();
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} {target} SIP/2.0\nVia: SIP/2.0/UDP {b};branch=z9hG4bK{method}{br};rport\nFrom: <sip:bob@127.0.0.1>;tag=bob1\nTo: <sip:alice@127.0.0.1>;tag=alice1\nCall-ID: {ci}\nCSeq: {cseq} {method}\n{route}Max-Forwards: 70\nContent-Length: 0\n\n"
        )
    };
    bob.send(&in_dialog("ACK", 1));
    let ack = alice.request("ACK");
    seen.push(format!("ACK at alice: {}", shaped(ack.ruri(), srv)));
    bob.send(&in_dialog("BYE", 2));
    let bye = alice.request("BYE");
    seen.push(format!("BYE at alice: {}", shaped(bye.ruri(), srv)));
    alice.send(&format!(
        "SIP/2.0 200 OK\n{}From: {}\nTo: {}\nCall-ID: {ci}\nCSeq: 2 BYE\nContent-Length: 0\n\n",
        bye.lines("Via", "v"),
        bye.one("From"),
        bye.one("To")
    ));
    let done = bob.final_reply();
    seen.push(format!("bob: {} {}", done.status(), done.one("CSeq")));
    seen
}

fn nated_ua_sip_ping(srv: &Srv) -> Seen {
    nated_ua(srv, true)
}

fn nated_ua_udp_ping(srv: &Srv) -> Seen {
    nated_ua(srv, false)
}

#[test]
fn nathelper_kamailio_cfg_with_natsipping_registers_pings_and_calls_a_nated_ua() {
    let dir = Scratch::new("nat-sipping");
    let Some(cfg) = without_rtpproxy(&dir) else {
        eprintln!("{KAMAILIO_CFG} is not installed: test skipped");
        return;
    };
    on_both_with(
        &cfg,
        &["-A", "WITH_NAT", "-A", "WITH_NATSIPPING"],
        nated_ua_sip_ping,
    );
}

#[test]
fn nathelper_kamailio_cfg_with_nat_pings_with_four_zero_bytes() {
    let dir = Scratch::new("nat-udp");
    let Some(cfg) = without_rtpproxy(&dir) else {
        eprintln!("{KAMAILIO_CFG} is not installed: test skipped");
        return;
    };
    on_both_with(&cfg, &["-A", "WITH_NAT"], nated_ua_udp_ping);
}

/// `add_rcv_param` and `set_alias_to_pv` on a proxy that relays REGISTERs
/// to `PEER`; the same configuration on both servers.
const RCV_CFG: &str = r#"#!KAMAILIO
debug=2
children=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "nathelper.so"
request_route {
    if (is_method("ACK")) { exit; }
    if ($rU == "alias") {
        $avp(dst) = "none";
        set_alias_to_pv("$avp(dst)");
        $var(rc) = $rc;
        sl_send_reply("200", "rc=$var(rc)/dst=$avp(dst)");
        exit;
    }
    if ($rU == "header") { add_rcv_param(); }
    else if ($rU == "uri") { add_rcv_param("1"); }
    $du = "sip:PEER";
    t_relay();
}
"#;

/// What each request came out as: the Contact lines of the REGISTER the
/// peer got (the UA's port written `UA`), or the reason phrase.
fn rcv_and_alias(bin: &str, extra: &[&str]) -> Vec<String> {
    use std::net::UdpSocket;
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cfg = RCV_CFG.replace("PEER", &peer.local_addr().unwrap().to_string());
    let srv = super::sanity_maxfwd::start_with(&cfg, bin, extra);
    let ua = UdpSocket::bind("127.0.0.1:0").unwrap();
    ua.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ua.local_addr().unwrap();
    let contacts = [
        "Contact: \"A, B\" <sip:alice@127.0.0.4:5062;ob>;expires=60, sip:a2@127.0.0.4;q=0.5\r\nContact: <sip:a3@127.0.0.6>\r\n",
        "Contact: <sip:alice@127.0.0.4:5062;alias=127.0.0.7~40312~1>;expires=60\r\n",
        "Contact: <sip:alice@h>;alias=127.0.0.8~5061~3\r\n",
        "Contact: <sip:a@h;alias=127.0.0.9~1~1>, <sip:b@h>\r\n",
        "Contact: <sip:alice@127.0.0.4:5062>\r\n",
    ];
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65535];
    let mut n = 0;
    let mut send = |user: &str, contact: &str| {
        n += 1;
        let text = format!(
            "REGISTER sip:{user}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKrcv{n};rport\r\nFrom: <sip:alice@127.0.0.1>;tag=r{n}\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: rcv-{n}-{me}\r\nCSeq: {n} REGISTER\r\n{contact}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            srv.addr
        );
        ua.send_to(text.as_bytes(), srv.addr).unwrap();
    };
    for (user, contact) in [("header", contacts[0]), ("uri", contacts[0])] {
        send(user, contact);
        let (k, from) = peer.recv_from(&mut buf).expect("the relayed REGISTER");
        let got = String::from_utf8_lossy(&buf[..k]).into_owned();
        let lines: Vec<String> = got
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with("contact:"))
            .map(|l| l.replace(&format!("127.0.0.1:{}", me.port()), "127.0.0.1:UA"))
            .collect();
        seen.push(lines.join(" | "));
        // The peer's 200, which the proxy relays back.
        let keep: String = got
            .split("\r\n")
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                ["via:", "from:", "to:", "call-id:", "cseq:"]
                    .iter()
                    .any(|h| l.starts_with(h))
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        let ok = format!("SIP/2.0 200 OK\r\n{keep}Content-Length: 0\r\n\r\n");
        peer.send_to(ok.as_bytes(), from).unwrap();
        let (k, _) = ua.recv_from(&mut buf).expect("the relayed 200");
        assert!(buf[..k].starts_with(b"SIP/2.0 200"), "{bin}");
    }
    for contact in &contacts[1..] {
        send("alias", contact);
        let (k, _) = ua.recv_from(&mut buf).expect("a reply");
        let text = String::from_utf8_lossy(&buf[..k]).into_owned();
        seen.push(text.lines().next().unwrap_or_default().to_string());
    }
    seen
}

#[test]
fn add_rcv_param_and_set_alias_to_pv_as_kamailio() {
    let ours = rcv_and_alias(env!("CARGO_BIN_EXE_siphon"), &[]);
    assert_eq!(
        ours[0],
        "Contact: \"A, B\" <sip:alice@127.0.0.4:5062;ob>;expires=60;received=\"sip:127.0.0.1:UA\", sip:a2@127.0.0.4;q=0.5;received=\"sip:127.0.0.1:UA\" | Contact: <sip:a3@127.0.0.6>;received=\"sip:127.0.0.1:UA\""
    );
    assert_eq!(
        ours[2],
        "SIP/2.0 200 rc=1/dst=sip:127.0.0.7:40312;transport=udp"
    );
    if super::sanity_maxfwd::have_kamailio() {
        let theirs = rcv_and_alias("kamailio", &super::sanity_maxfwd::KAMAILIO_ARGS);
        assert_eq!(ours, theirs);
    }
}
