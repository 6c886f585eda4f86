//! siputils and the core functions of Kamailio's shipped configs
//! (`force_rport`, `is_first_hop`, `is_uri_user_e164`, `uri_param`,
//! `add_uri_param`, `is_request`, `isdsturiset`, `is_myself`,
//! `insert_hf`/`append_hf` with positions, `t_is_branch_route`) against the
//! real binary and, on the same configuration, Kamailio 5.6: raw UDP, the
//! answers compared, the relayed request read at a raw UAS.

use super::sanity_maxfwd::{KAMAILIO_ARGS, have_kamailio, start_with};
use siphon_sip::SipMsg;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const CFG: &str = r#"#!KAMAILIO
debug=2
children=1
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "kex.so"
loadmodule "textops.so"
loadmodule "textopsx.so"
loadmodule "siputils.so"

request_route {
    force_rport();
    $var(r) = "";
    if (is_request()) { $var(r) = $var(r) + "request "; }
    if (is_reply()) { $var(r) = $var(r) + "reply "; }
    if (is_first_hop()) { $var(r) = $var(r) + "first-hop "; }
    if (is_uri_user_e164("$fu")) { $var(r) = $var(r) + "e164 "; }
    if (uri_param("x", "y")) { $var(r) = $var(r) + "x=y "; }
    if (uri_param_any("lr")) { $var(r) = $var(r) + "lr "; }
    if (isdsturiset()) { $var(r) = $var(r) + "du "; }
    if (is_myself("$ru")) { $var(r) = $var(r) + "myself "; }
    if (t_is_branch_route()) { $var(r) = $var(r) + "branch "; }
    if (is_present_hf_re("^x-ex")) { $var(r) = $var(r) + "x-ex "; }
    if (is_present_hf("X-Relay")) {
        add_uri_param("added=1");
        remove_hf_re("^X-DROP");
        insert_hf("X-Top: 1\r\n");
        insert_hf("X-Before-CSeq: 1\r\n", "CSeq");
        append_hf("X-After-From: 1\r\n", "From");
        append_hf("X-End: 1\r\n");
        $du = "sip:" + $hdr(X-Relay);
        if (isdsturiset()) { append_hf("X-Du: set\r\n"); }
        t_on_branch("B");
        t_relay();
        exit;
    }
    append_to_reply("X-R: $var(r)\r\n");
    sl_send_reply("200", "OK");
}

branch_route[B] {
    if (t_is_branch_route()) { append_hf("X-Branch: yes\r\n"); }
}
"#;

fn recv(sock: &UdpSocket, call_id: &str) -> SipMsg {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let m = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])).expect("parsable");
            if m.call_id().is_some_and(|c| &c[..] == call_id.as_bytes()) {
                return m;
            }
        }
    }
    panic!("nothing for {call_id}");
}

/// What the config's checks say for a request (in `X-R` of the 200), and
/// the relayed request as a raw UAS gets it.
fn run(bin: &str, extra: &[&str]) -> (String, String, SipMsg) {
    let p = start_with(CFG, bin, extra);
    let addr = p.addr;
    let uac = UdpSocket::bind("127.0.0.1:0").unwrap();
    uac.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let uas = UdpSocket::bind("127.0.0.1:0").unwrap();
    uas.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // The Via names port 9 without rport: only force_rport() brings the reply here.
    let req = |cid: &str, ruri: &str, extra: &str| {
        format!(
            "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{cid}\r\nFrom: <sip:+4930123@127.0.0.1>;tag=f{cid}\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    let ruri = format!("sip:+4930123@{addr};x=y;lr");
    uac.send_to(req("checks", &ruri, "").as_bytes(), addr)
        .unwrap();
    let m = recv(&uac, "checks");
    assert_eq!(m.status(), Some(200));
    let r = m
        .headers_named(b"X-R")
        .next()
        .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
        .unwrap_or_default();
    // Two Vias: not a first hop; an R-URI that is not ours.
    let two = req("checks2", "sip:b@127.0.20.1", "X-Extra: 1\r\n").replace(
        "Via: SIP/2.0/UDP 127.0.0.1:9;",
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx, SIP/2.0/UDP 127.0.20.7;",
    );
    uac.send_to(two.as_bytes(), addr).unwrap();
    let m = recv(&uac, "checks2");
    let r2 = m
        .headers_named(b"X-R")
        .next()
        .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
        .unwrap_or_default();
    let relay = format!(
        "X-Drop-1: a\r\nX-Relay: {}\r\nx-drop-2: b\r\n",
        uas.local_addr().unwrap()
    );
    uac.send_to(req("relay", "sip:b@127.0.0.1", &relay).as_bytes(), addr)
        .unwrap();
    let fwd = recv(&uas, "relay");
    (r, r2, fwd)
}

fn names(m: &SipMsg) -> Vec<String> {
    m.headers
        .iter()
        .map(|h| String::from_utf8_lossy(m.get(h.name_rng)).into_owned())
        .collect()
}

fn check(bin: &str, extra: &[&str]) {
    let (r, r2, fwd) = run(bin, extra);
    assert_eq!(r.trim(), "request first-hop e164 x=y lr myself", "{bin}");
    assert_eq!(r2.trim(), "request e164 x-ex", "{bin}");
    assert_eq!(
        names(&fwd),
        [
            "X-Top",
            "Via",
            "Via",
            "From",
            "X-After-From",
            "To",
            "Call-ID",
            "X-Before-CSeq",
            "CSeq",
            "Max-Forwards",
            "X-Relay",
            "Content-Length",
            "X-End",
            "X-Du",
            "X-Branch"
        ],
        "{bin}"
    );
    assert_eq!(
        &fwd.ruri().unwrap()[..],
        b"sip:b@127.0.0.1;added=1",
        "{bin}"
    );
    // force_rport(): the sender's Via carries rport=<its port>.
    let vias: Vec<_> = fwd
        .headers_named(b"Via")
        .map(|h| fwd.header_value(h))
        .collect();
    let sender = String::from_utf8_lossy(&vias[1]).into_owned();
    assert!(sender.contains(";rport="), "{bin}: {sender}");
}

#[test]
fn siphon_runs_the_checks_and_edits() {
    check(env!("CARGO_BIN_EXE_siphon"), &[]);
}

#[test]
fn kamailio_runs_them_alike() {
    if have_kamailio() {
        check("kamailio", &KAMAILIO_ARGS);
    }
}

/// `set_reply_close()` in `event_route[xhttp:request]` (the shipped config's
/// JSON-RPC route): the answer says `Connection: close` and the connection
/// ends; without it the connection stays open.
#[test]
fn set_reply_close_ends_the_http_connection() {
    use std::io::{Read, Write};
    let srv = super::harness::Server::start(
        r#"
loadmodule "xhttp.so"
event_route[xhttp:request] {
    if ($hu =~ "^/close") {
        set_reply_close();
    }
    xhttp_reply("200", "OK", "text/plain", "hi");
}
"#,
    );
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(srv.tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the end of the connection, or the whole answer on one kept open.
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).to_lowercase(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{path}: {e}: {}", String::from_utf8_lossy(&got)),
            }
            if !path.starts_with("/close") && got.ends_with(b"hi") {
                return (String::from_utf8_lossy(&got).to_lowercase(), false);
            }
        }
    };
    let (text, ended) = get("/close");
    assert!(
        ended && text.contains("connection: close") && text.ends_with("hi"),
        "{text}"
    );
    let (text, _) = get("/keep");
    assert!(!text.contains("connection: close"), "{text}");
}
