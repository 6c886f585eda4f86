//! maxfwd and sanity against the real binary, side by side with Kamailio
//! 5.6 on the same configuration: raw UDP requests, the replies compared by
//! code and reason, the relayed request's Max-Forwards read at a raw UAS.
//! Without `kamailio` installed its half says so and passes.

use super::cli::Scratch;
use super::harness::{UdpUac, free_port, wait_bound};
use siphon_sip::{Kind, SipMsg};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One configuration for both servers: Max-Forwards first (483 as the
/// shipped kamailio.cfg answers), then sanity with the shipped checks (or
/// the module's defaults with `X-Check: default`), then 200 or a relay to
/// the `X-Relay` address.
const CFG: &str = r#"#!KAMAILIO
debug=2
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "maxfwd.so"
loadmodule "sanity.so"
modparam("sanity", "autodrop", 0)
modparam("maxfwd", "max_limit", 70)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if ($hdr(X-Check) == "default") {
        if (!sanity_check()) {
            exit;
        }
    } else if (!sanity_check("17895", "7")) {
        exit;
    }
    if (is_present_hf("X-Relay")) {
        $du = "sip:" + $hdr(X-Relay);
        t_relay();
        exit;
    }
    sl_send_reply("200", "Passed");
}
"#;

/// A server (siphon or Kamailio) on a configuration, listening on one free
/// UDP port; stopped with SIGTERM when dropped.
pub(crate) struct Proc {
    pub(crate) addr: SocketAddr,
    child: Child,
    _dir: Scratch,
}

impl Drop for Proc {
    fn drop(&mut self) {
        super::harness::terminate(&mut self.child);
    }
}

/// `bin` on CFG listening on a free UDP port (`-l`).
fn start(bin: &str, extra: &[&str]) -> Proc {
    start_with(CFG, bin, extra)
}

/// Kamailio's arguments for a test run (foreground, log to stderr, small pools).
pub(crate) const KAMAILIO_ARGS: [&str; 6] = ["-DD", "-E", "-m", "64", "-M", "8"];

/// Whether Kamailio is installed (a note when not).
pub(crate) fn have_kamailio() -> bool {
    let ok = Command::new("kamailio").arg("-v").output().is_ok();
    if !ok {
        eprintln!("kamailio is not installed (scripts/install-test-peers.sh): test skipped");
    }
    ok
}

/// `bin` (siphon's path or `kamailio`) on the configuration `text`,
/// listening on a free UDP port (`-l`).
pub(crate) fn start_with(text: &str, bin: &str, extra: &[&str]) -> Proc {
    let name = bin.rsplit('/').next().unwrap_or(bin);
    let dir = Scratch::new(&format!("cfg-{name}-{}", text.len()));
    let cfg = dir.write("t.cfg", text);
    for _ in 0..5 {
        let addr = free_port("u1");
        let mut child = Command::new(bin)
            .env(crate::harness::ONLY_LOOPBACK, "1")
            .args(["-f", &cfg, "-l", &format!("udp:{addr}")])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        if wait_bound(addr, "u1", &mut child) {
            return Proc {
                addr,
                child,
                _dir: dir,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{bin} did not start");
}

fn kamailio() -> Option<Proc> {
    have_kamailio().then(|| start("kamailio", &KAMAILIO_ARGS))
}

fn siphon() -> Option<Proc> {
    Some(start(env!("CARGO_BIN_EXE_siphon"), &[]))
}

fn request(uac: &UdpUac, call_id: &str, first: &str, extra: &str, body: &str) -> String {
    let cl = body.len();
    format!(
        "{first}\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{call_id};rport\r\nFrom: <sip:a@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: {call_id}\r\n{extra}Content-Length: {cl}\r\n\r\n{body}",
        uac.addr()
    )
}

/// The reply to `call_id` (other replies skipped): code, reason, message.
fn reply_to(uac: &UdpUac, call_id: &str) -> (u16, String, SipMsg) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(m) = uac.recv(deadline.saturating_duration_since(Instant::now())) {
        if m.call_id().is_some_and(|c| &c[..] == call_id.as_bytes())
            && let Kind::Response { code, reason } = m.kind
        {
            let reason = String::from_utf8_lossy(m.get(reason)).into_owned();
            return (code, reason, m);
        }
    }
    panic!("no reply to {call_id}");
}

/// The scenario every server must pass: the replies Kamailio 5.6.3 sends.
fn answers_as_kamailio(start: fn() -> Option<Proc>) {
    let Some(srv) = start() else { return };
    let uac = UdpUac::new(srv.addr);
    let opt = "OPTIONS sip:b@127.0.0.1 SIP/2.0";
    let cases: [(&str, String, u16, &str); 7] = [
        (
            "good",
            request(
                &uac,
                "good",
                opt,
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n",
                "",
            ),
            200,
            "Passed",
        ),
        (
            "mf0",
            request(
                &uac,
                "mf0",
                opt,
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\n",
                "",
            ),
            483,
            "Too Many Hops",
        ),
        (
            "preq",
            request(
                &uac,
                "preq",
                opt,
                "CSeq: 1 OPTIONS\r\nX-Check: default\r\nProxy-Require: foo\r\n",
                "",
            ),
            420,
            "Bad Proxy Require Extension",
        ),
        (
            "cseq",
            request(&uac, "cseq", opt, "CSeq: 1 INVITE\r\n", ""),
            400,
            "CSeq method does not match request method",
        ),
        (
            "expires",
            request(
                &uac,
                "expires",
                "REGISTER sip:127.0.0.1 SIP/2.0",
                "CSeq: 1 REGISTER\r\nExpires: soon\r\n",
                "",
            ),
            400,
            "Expires value is illegal",
        ),
        (
            "from",
            request(&uac, "from", opt, "CSeq: 1 OPTIONS\r\n", "")
                .replace("From: <sip:a@127.0.0.1>", "From: <foo:bar>"),
            400,
            "Invalid From Header",
        ),
        (
            "cl",
            request(&uac, "cl", opt, "CSeq: 1 OPTIONS\r\n", "ab").replace(
                "Content-Length: 2\r\n\r\nab",
                "Content-Length: 2\r\n\r\nabcd",
            ),
            400,
            "Content-Length mis-match",
        ),
    ];
    for (id, text, code, reason) in &cases {
        uac.send(text);
        let (c, r, m) = reply_to(&uac, id);
        assert_eq!((c, r.as_str()), (*code, *reason), "{id}");
        if *id == "preq" {
            let un: Vec<_> = m
                .headers_named(b"Unsupported")
                .map(|h| m.header_value(h))
                .collect();
            assert_eq!(un, [&b"foo"[..]], "{id}: Unsupported");
        }
    }
    // With the default checks (digest among them) Basic credentials fail
    // without a reply; the next request is answered.
    uac.send(&request(
        &uac,
        "basic",
        opt,
        "CSeq: 1 OPTIONS\r\nX-Check: default\r\nAuthorization: Basic YTpi\r\n",
        "",
    ));
    uac.send(&request(
        &uac,
        "after",
        opt,
        "CSeq: 1 OPTIONS\r\nX-Check: default\r\n",
        "",
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = uac
            .recv(deadline.saturating_duration_since(Instant::now()))
            .expect("a reply to the second request");
        let cid = m.call_id().unwrap_or_default();
        assert_ne!(&cid[..], b"basic", "Basic credentials were answered");
        if &cid[..] == b"after" {
            assert_eq!(m.status(), Some(200));
            break;
        }
    }

    // Max-Forwards on the relayed request, read at a raw UAS.
    let uas = UdpSocket::bind("127.0.0.1:0").unwrap();
    uas.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let relay = format!(
        "CSeq: 1 OPTIONS\r\nX-Relay: {}\r\n",
        uas.local_addr().unwrap()
    );
    for (id, mf, want) in [
        ("r10", "Max-Forwards: 10\r\n", Some(9)),
        ("r200", "Max-Forwards: 200\r\n", Some(70)),
        ("rnone", "", Some(10)),
    ] {
        uac.send(&request(&uac, id, opt, &format!("{relay}{mf}"), ""));
        let m = relayed(&uas, id);
        let values: Vec<_> = m
            .headers_named(b"Max-Forwards")
            .map(|h| m.header_value(h))
            .collect();
        let parsed: Vec<Option<u32>> = values
            .iter()
            .map(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .collect();
        assert_eq!(parsed, [want], "{id}: {values:?}");
    }
}

/// The request `call_id` as the UAS got it (retransmissions skipped).
fn relayed(uas: &UdpSocket, call_id: &str) -> SipMsg {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, _)) = uas.recv_from(&mut buf) {
            let m = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])).expect("parsable");
            if m.call_id().is_some_and(|c| &c[..] == call_id.as_bytes()) {
                return m;
            }
        }
    }
    panic!("{call_id} was not relayed");
}

#[test]
fn siphon_answers_as_kamailio() {
    answers_as_kamailio(siphon);
}

#[test]
fn kamailio_answers_so() {
    answers_as_kamailio(kamailio);
}

/// The shipped config's checks in the path of real user agents: sipp calls
/// (INVITE, 180, 200, ACK, BYE) through `mf_process_maxfwd_header` and
/// `sanity_check("17895", "7")` pass on siphon as on Kamailio.
const RELAY_CFG: &str = r#"#!KAMAILIO
#!trydef UAS_PORT 5095
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "sanity.so"
modparam("sanity", "autodrop", 0)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (!sanity_check("17895", "7")) {
        exit;
    }
    $du = "sip:127.0.0.1:" + UAS_PORT;
    t_relay();
}
"#;

fn sipp_calls_pass(bin: &str, extra: &[&str]) {
    let uas = super::harness::SippUas::start("uas", "u1");
    let port = format!("UAS_PORT={}", uas.addr.port());
    let mut args = extra.to_vec();
    args.extend(["-A", &port]);
    let p = start_with(RELAY_CFG, bin, &args);
    super::harness::sipp_uac("uac", p.addr, "u1", 5, &[]);
    let run = uas.finish();
    assert!(
        run.successful == 5 && run.failed == 0,
        "{bin}: UAS {} ok, {} failed\n{}",
        run.successful,
        run.failed,
        run.tail()
    );
}

#[test]
fn sipp_calls_pass_the_checks_on_siphon() {
    sipp_calls_pass(env!("CARGO_BIN_EXE_siphon"), &[]);
}

#[test]
fn sipp_calls_pass_the_checks_on_kamailio() {
    if have_kamailio() {
        sipp_calls_pass("kamailio", &KAMAILIO_ARGS);
    }
}
