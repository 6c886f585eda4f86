//! The stateful proxy end to end (issue 13, "Tests and measurements"): siphon
//! on its own small configurations between real peers — sipp as caller and
//! callee (`bench/sipp`), our own UDP sockets where what must or must not
//! arrive is the point, a lossy UDP relay, a dnslib DNS server on loopback,
//! and the statistics read back over jsonrpcs. Everything on 127.0.0.1 and
//! [::1], ports chosen by the system.

use super::harness::{Server, SippUas, free_port_on, sipp_uac, sipp_uac_on};
use super::jsonrpcs::{rpc_doc, stat};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for any one message before it gives up.
const WAIT: Duration = Duration::from_secs(10);

/// The routing every test shares, as `bench/siphon-proxy.cfg` has it: a
/// CANCEL follows its transaction, an ACK for a non-2xx is absorbed and one
/// for a 2xx is relayed statelessly, everything else is relayed statefully
/// after `route[TARGET]` (which each test writes) and `invite` (script run
/// for an INVITE only, before `t_relay`). `globals` go before the routes.
fn proxy_cfg(globals: &str, invite: &str, routes: &str) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "xlog.so"
{globals}
request_route {{
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("ACK")) {{
        t_check_trans();
        route(TARGET);
        t_relay();
        exit;
    }}
    route(TARGET);
    if (is_method("INVITE")) {{
{invite}
    }}
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}
{routes}
"#
    )
}

/// `route[TARGET]`: a request for the proxy itself goes to `uas`.
fn target(uas: SocketAddr) -> String {
    format!(
        "route[TARGET] {{\n    if (uri == myself) {{\n        $du = \"sip:{uas}\";\n    }}\n}}\n"
    )
}

/// Asserts the UAS ended with `calls` successful calls and none failed (it
/// saw every request its scenario expects: ACK, CANCEL, BYE).
fn assert_uas_done(uas: SippUas, calls: u64) {
    let run = uas.finish();
    assert!(
        run.successful == calls && run.failed == 0,
        "UAS: {} ok, {} failed of {calls}\n{}",
        run.successful,
        run.failed,
        run.tail()
    );
}

// --- A raw SIP endpoint over UDP -------------------------------------------

/// Our own caller or callee on a UDP socket, for what sipp cannot check:
/// that a message never arrives, or what a header says.
struct Raw {
    sock: UdpSocket,
}

impl Raw {
    fn new() -> Raw {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Raw { sock }
    }
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }
    fn send(&self, to: SocketAddr, text: &str) {
        self.sock.send_to(text.as_bytes(), to).expect("send");
    }
    /// The next datagram and where it came from, within `wait`.
    fn recv(&self, wait: Duration) -> Option<(String, SocketAddr)> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65535];
        while Instant::now() < deadline {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        None
    }
    /// Every message up to the first one `last` accepts (included), within
    /// [`WAIT`] in all; panics naming `what` otherwise.
    fn recv_until(&self, what: &str, last: impl Fn(&str) -> bool) -> (Vec<String>, SocketAddr) {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((m, from)) = self.recv(left) else {
                panic!("no {what} came; before it: {seen:#?}");
            };
            let done = last(&m);
            seen.push(m);
            if done {
                return (seen, from);
            }
        }
    }
    /// What has arrived already (nothing is waited for).
    fn pending(&self) -> Vec<String> {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 65535];
        let mut out = Vec::new();
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).expect("blocking");
        out
    }
}

/// A reply's status code.
fn status(m: &str) -> Option<u16> {
    m.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A request's method.
fn method(m: &str) -> Option<&str> {
    (!m.starts_with("SIP/2.0 ")).then(|| m.split(' ').next())?
}

/// The header lines named `name` (or its compact form), whole.
fn headers<'a>(m: &'a str, name: &str) -> Vec<&'a str> {
    let compact = match name {
        "Via" => "v",
        "From" => "f",
        "To" => "t",
        "Call-ID" => "i",
        _ => "",
    };
    m.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let n = l.split(':').next().unwrap_or_default().trim();
            n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(compact)
        })
        .collect()
}

/// The first header line named `name`.
fn header<'a>(m: &'a str, name: &str) -> &'a str {
    headers(m, name)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

/// The method of a message's CSeq.
fn cseq_method(m: &str) -> &str {
    header(m, "CSeq")
        .split_whitespace()
        .last()
        .unwrap_or_default()
}

/// Whether `m` is a final reply to the INVITE.
fn invite_final(m: &str) -> bool {
    status(m).is_some_and(|c| c >= 200) && cseq_method(m) == "INVITE"
}

/// A reply to `req` from a callee at `me`: its Vias, From, To (tagged),
/// Call-ID and CSeq.
fn reply_to(req: &str, code: u16, reason: &str, me: SocketAddr) -> String {
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for v in headers(req, "Via") {
        r += &format!("{v}\r\n");
    }
    let to = header(req, "To");
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag=callee")
    };
    r += &format!(
        "{}\r\n{to}\r\n{}\r\n{}\r\nContact: <sip:callee@{me}>\r\nContent-Length: 0\r\n\r\n",
        header(req, "From"),
        header(req, "Call-ID"),
        header(req, "CSeq")
    );
    r
}

/// A call from a raw caller at `caller` through `proxy` to `sip:user@proxy`.
struct Dialog<'a> {
    caller: SocketAddr,
    proxy: SocketAddr,
    user: &'a str,
    call: &'a str,
}

impl Dialog<'_> {
    /// One of its requests: `branch` tells its Via branch from the others',
    /// `to` is the To line (tagged once in the dialog).
    fn request(&self, m: &str, cseq: u32, branch: &str, to: Option<&str>) -> String {
        let Dialog {
            caller,
            proxy,
            user,
            call,
        } = self;
        let to = to.map_or_else(|| format!("To: <sip:{user}@{proxy}>"), str::to_string);
        format!(
            "{m} sip:{user}@{proxy} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {caller};branch=z9hG4bK-{call}-{branch};rport\r\n\
             From: <sip:caller@{caller}>;tag=f-{call}\r\n\
             {to}\r\n\
             Call-ID: {call}\r\n\
             CSeq: {cseq} {m}\r\n\
             Contact: <sip:caller@{caller}>\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }
}

/// A whole call from a raw caller through `proxy` to `sip:user@proxy`:
/// INVITE until its final reply (which must be a 200), ACK, then `between`
/// runs, then BYE until its 200. Returns every message the caller received
/// for the INVITE (the 100s, the 1xx relayed, the final replies).
fn raw_call(
    caller: &Raw,
    proxy: SocketAddr,
    user: &str,
    call: &str,
    between: impl FnOnce(),
) -> Vec<String> {
    let dialog = Dialog {
        caller: caller.addr(),
        proxy,
        user,
        call,
    };
    caller.send(proxy, &dialog.request("INVITE", 1, "i", None));
    let (mut seen, _) = caller.recv_until("final reply to the INVITE", invite_final);
    let ok = seen.last().expect("a final reply").clone();
    assert_eq!(status(&ok), Some(200), "the caller's final reply: {ok}");
    let to = header(&ok, "To").to_string();
    caller.send(proxy, &dialog.request("ACK", 1, "a", Some(&to)));
    between();
    caller.send(proxy, &dialog.request("BYE", 2, "b", Some(&to)));
    let (rest, _) = caller.recv_until("200 for the BYE", |m| {
        status(m) == Some(200) && cseq_method(m) == "BYE"
    });
    seen.extend(rest.into_iter().filter(|m| cseq_method(m) == "INVITE"));
    seen.extend(
        caller
            .pending()
            .into_iter()
            .filter(|m| cseq_method(m) == "INVITE"),
    );
    seen
}

/// The INVITE reply codes in `seen`, in order.
fn codes(seen: &[String]) -> Vec<u16> {
    seen.iter().filter_map(|m| status(m)).collect()
}

// --- 1. Parallel fork --------------------------------------------------------

/// `append_branch` + `t_relay`: two callees ring at once; the one that
/// answers wins, the other is CANCELled (and its 487 ACKed by the proxy),
/// and the caller sees the 200 and no other final reply.
#[test]
fn parallel_fork_cancels_the_ringing_branch_when_one_answers() {
    let answers = SippUas::start("uas_ack_bye.xml", "u1");
    let ringing = SippUas::start("uas_ring_cancel.xml", "u1");
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)",
        &format!(
            "        append_branch(\"sip:ring@{}\");\n        t_on_reply(\"R\");",
            ringing.addr
        ),
        &format!(
            "{}\nonreply_route[R] {{\n    xlog(\"L_INFO\", \"fork: $rs from branch $T_branch_idx\\n\");\n}}\n",
            target(answers.addr)
        ),
    ));
    let caller = Raw::new();
    let seen = raw_call(&caller, srv.udp, "service", "fork-1", || {
        // Branch 1 rang: the ringing callee has the call (it ends it only
        // after the CANCEL, its 200 and 487, and the proxy's ACK for the 487).
        assert!(srv.log_soon("fork: 180 from branch 1"));
        assert!(srv.log_soon("fork: 487 from branch 1"));
        assert_uas_done(ringing, 1);
    });
    let finals: Vec<u16> = codes(&seen).into_iter().filter(|c| *c >= 200).collect();
    assert!(
        !finals.is_empty() && finals.iter().all(|c| *c == 200),
        "the caller got {finals:?}: {seen:#?}"
    );
    assert_uas_done(answers, 1);
}

/// The 200 of one branch arrives before the other branch answered at all:
/// no CANCEL can go to a branch that sent nothing (RFC 3261 §9.1), so the
/// proxy CANCELs it when its 180 arrives late; its 487 is ACKed and the
/// caller still sees only the 200.
#[test]
fn parallel_fork_cancels_a_branch_whose_180_comes_after_the_200() {
    let answers = SippUas::start("uas_ack_bye.xml", "u1");
    let late = Raw::new();
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)",
        &format!("        append_branch(\"sip:late@{}\");", late.addr()),
        &target(answers.addr),
    ));
    let caller = Raw::new();
    let seen = raw_call(&caller, srv.udp, "service", "late-1", || {
        // The answered call is up; only now does the late branch ring.
        let (got, proxy) =
            late.recv_until("INVITE at the late branch", |m| method(m) == Some("INVITE"));
        let invite = got.last().unwrap().clone();
        late.send(proxy, &reply_to(&invite, 180, "Ringing", late.addr()));
        let (got, _) =
            late.recv_until("CANCEL at the late branch", |m| method(m) == Some("CANCEL"));
        let cancel = got.last().unwrap();
        // The CANCEL names the INVITE's branch (RFC 3261 §9.1).
        assert_eq!(
            headers(cancel, "Via"),
            headers(&invite, "Via")[..1],
            "{cancel}"
        );
        late.send(proxy, &reply_to(cancel, 200, "OK", late.addr()));
        late.send(
            proxy,
            &reply_to(&invite, 487, "Request Terminated", late.addr()),
        );
        let (got, _) = late.recv_until("ACK for the 487", |m| method(m) == Some("ACK"));
        let ack = got.last().unwrap();
        assert_eq!(headers(ack, "Via"), headers(&invite, "Via")[..1], "{ack}");
    });
    let finals: Vec<u16> = codes(&seen).into_iter().filter(|c| *c >= 200).collect();
    assert!(
        !finals.is_empty() && finals.iter().all(|c| *c == 200),
        "the caller got {finals:?}: {seen:#?}"
    );
    assert_uas_done(answers, 1);
}

/// The caller gives up while both branches of a parallel fork ring: its
/// CANCEL is answered 200, forwarded to each ringing branch (each answers
/// 200 and 487, which the proxy ACKs), and the caller gets one 487.
#[test]
fn caller_cancel_reaches_every_ringing_branch() {
    let ring1 = SippUas::start("uas_ring_cancel.xml", "u1");
    let ring2 = SippUas::start("uas_ring_cancel.xml", "u1");
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)",
        &format!("        append_branch(\"sip:ring@{}\");", ring2.addr),
        &target(ring1.addr),
    ));
    sipp_uac("uac_cancel.xml", srv.udp, "u1", 2, &[]);
    assert_uas_done(ring1, 2);
    assert_uas_done(ring2, 2);
}

/// A caller's INVITE through the proxy until its final reply, ACKed (a
/// non-2xx ACK: the INVITE's branch, the reply's To); the final's code.
fn call_until_final(caller: &Raw, dialog: &Dialog<'_>) -> u16 {
    caller.send(dialog.proxy, &dialog.request("INVITE", 1, "i", None));
    let (seen, _) = caller.recv_until("final reply to the INVITE", invite_final);
    let last = seen.last().unwrap();
    let to = header(last, "To").to_string();
    caller.send(dialog.proxy, &dialog.request("ACK", 1, "i", Some(&to)));
    status(last).unwrap()
}

/// A raw callee's INVITE of this call (skipping what earlier calls left).
fn invite_of(callee: &Raw, call: &str) -> (String, SocketAddr) {
    let (got, proxy) = callee.recv_until("INVITE", |m| {
        method(m) == Some("INVITE") && header(m, "Call-ID") == format!("Call-ID: {call}")
    });
    (got.last().unwrap().clone(), proxy)
}

/// Answers `invite` with a final `code` and waits for the proxy's ACK.
fn refuse(callee: &Raw, proxy: SocketAddr, invite: &str, code: u16, reason: &str) {
    callee.send(proxy, &reply_to(invite, code, reason, callee.addr()));
    callee.recv_until("ACK for a final", |m| method(m) == Some("ACK"));
}

/// RFC 3261 §16.7 with Kamailio's rules across two parallel branches: the
/// lowest class wins (404 over 503), a lone 503 becomes 500 for the caller,
/// and a 6xx ends the search: the ringing branch is CANCELled and the
/// caller gets the 603.
#[test]
fn final_reply_selection_across_branches() {
    let (a, b) = (Raw::new(), Raw::new());
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)",
        &format!(
            "        if ($rU == \"two\") {{\n            append_branch(\"sip:b@{}\");\n        }}",
            b.addr()
        ),
        &target(a.addr()),
    ));
    let caller = Raw::new();
    let dialog = |user, call| Dialog {
        caller: caller.addr(),
        proxy: srv.udp,
        user,
        call,
    };
    // 503 and 404: the 404.
    let code = std::thread::scope(|t| {
        let call = t.spawn(|| call_until_final(&caller, &dialog("two", "sel-1")));
        let (inv_a, proxy) = invite_of(&a, "sel-1");
        let (inv_b, _) = invite_of(&b, "sel-1");
        refuse(&a, proxy, &inv_a, 503, "Service Unavailable");
        refuse(&b, proxy, &inv_b, 404, "Not Found");
        call.join().unwrap()
    });
    assert_eq!(code, 404);
    // A lone 503: 500 toward the caller.
    let code = std::thread::scope(|t| {
        let call = t.spawn(|| call_until_final(&caller, &dialog("one", "sel-2")));
        let (inv_a, proxy) = invite_of(&a, "sel-2");
        refuse(&a, proxy, &inv_a, 503, "Service Unavailable");
        call.join().unwrap()
    });
    assert_eq!(code, 500);
    // 603 while the other rings: CANCEL to it, its 487 ACKed, the caller gets 603.
    let code = std::thread::scope(|t| {
        let call = t.spawn(|| call_until_final(&caller, &dialog("two", "sel-3")));
        let (inv_a, proxy) = invite_of(&a, "sel-3");
        let (inv_b, _) = invite_of(&b, "sel-3");
        a.send(proxy, &reply_to(&inv_a, 180, "Ringing", a.addr()));
        refuse(&b, proxy, &inv_b, 603, "Decline");
        let (got, _) = a.recv_until("CANCEL after the 603", |m| method(m) == Some("CANCEL"));
        a.send(proxy, &reply_to(got.last().unwrap(), 200, "OK", a.addr()));
        refuse(&a, proxy, &inv_a, 487, "Request Terminated");
        call.join().unwrap()
    });
    assert_eq!(code, 603);
}

// --- 2. Serial fork -----------------------------------------------------------

/// `failure_route` after a 486: `t_check_status("486|603")` picks it,
/// `$T_reply_code` is the busy callee's code, and the call goes on to the
/// second callee (the ACK and BYE follow its Contact).
#[test]
fn serial_fork_after_486_checks_the_status_in_failure_route() {
    let busy = SippUas::start("uas_busy.xml", "u1");
    let second = SippUas::start("uas_ack_bye.xml", "u1");
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)",
        "        t_on_failure(\"F\");",
        &format!(
            r#"{}
failure_route[F] {{
    xlog("L_INFO", "failure_route F: T_reply_code $T_reply_code\n");
    xlog("L_INFO", "failure_route F: T_rpl $T_rpl($rs) $T_reply_reason, T_req from $T_req($fU)\n");
    if (t_is_canceled()) {{
        exit;
    }}
    if (t_check_status("486|603")) {{
        xlog("L_INFO", "failure_route F: busy, next\n");
        $du = "sip:{}";
        t_relay();
    }}
}}
"#,
            target(busy.addr),
            second.addr
        ),
    ));
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 2, &[]);
    assert!(
        srv.log_soon("failure_route F: T_reply_code 486"),
        "{:#?}",
        srv.log.lock().unwrap()
    );
    assert!(srv.log_contains("failure_route F: busy, next"));
    // $T_rpl reads the picked reply, $T_req the transaction's request.
    assert!(
        srv.log_contains("failure_route F: T_rpl 486 Busy Here, T_req from sipp"),
        "{:#?}",
        srv.log.lock().unwrap()
    );
    // The busy callee got the proxy's ACK for each 486.
    assert_uas_done(busy, 2);
    assert_uas_done(second, 2);
}

// --- 3. Timeouts --------------------------------------------------------------

/// Nobody answers: the INVITE is retransmitted (timer A) until `fr_timer`,
/// then the caller gets 408.
#[test]
fn no_answer_gives_408_after_fr_timer() {
    let silent = Raw::new();
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 1500)",
        "        t_on_failure(\"T\");",
        &format!("{}{TIMEOUT_ROUTE}", target(silent.addr())),
    ));
    sipp_uac(
        "uac_expect.xml",
        srv.udp,
        "u1",
        1,
        &["-key", "expect", "408"],
    );
    let got: Vec<String> = silent.pending();
    let invites = got.iter().filter(|m| method(m) == Some("INVITE")).count();
    assert!(
        invites >= 2,
        "the silent callee got {invites} INVITEs: {got:#?}"
    );
    // It never answered: no CANCEL for it (RFC 3261 §9.1).
    assert!(got.iter().all(|m| method(m) == Some("INVITE")), "{got:#?}");
    // The failure route saw the timeout and no reply.
    assert!(srv.log_soon("T: end"), "{:#?}", srv.log.lock().unwrap());
    for line in ["T: code 408", "T: branch timeout", "T: any timeout"] {
        assert!(srv.log_contains(line), "no `{line}`");
    }
    for line in ["T: branch replied", "T: any replied"] {
        assert!(!srv.log_contains(line), "`{line}` without a reply");
    }
}

/// A failure route that logs what the transaction's tests say.
const TIMEOUT_ROUTE: &str = r#"
failure_route[T] {
    xlog("L_INFO", "T: code $T_reply_code\n");
    if (t_branch_timeout()) {
        xlog("L_INFO", "T: branch timeout\n");
    }
    if (t_branch_replied()) {
        xlog("L_INFO", "T: branch replied\n");
    }
    if (t_any_timeout()) {
        xlog("L_INFO", "T: any timeout\n");
    }
    if (t_any_replied()) {
        xlog("L_INFO", "T: any replied\n");
    }
    xlog("L_INFO", "T: end\n");
}
"#;

/// A callee that rings and never answers: at `fr_inv_timer` the proxy
/// CANCELs it (it answers 200 and 487, which the proxy ACKs) and the caller
/// gets 408.
#[test]
fn ringing_callee_is_cancelled_at_fr_inv_timer_and_the_caller_gets_408() {
    let ringing = SippUas::start("uas_ring_cancel.xml", "u1");
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 5000)\nmodparam(\"tm\", \"fr_inv_timer\", 1000)",
        "        t_on_failure(\"T\");",
        &format!("{}{TIMEOUT_ROUTE}", target(ringing.addr)),
    ));
    sipp_uac(
        "uac_expect.xml",
        srv.udp,
        "u1",
        2,
        &["-key", "expect", "408"],
    );
    assert_uas_done(ringing, 2);
    // The branch rang, then timed out.
    assert!(srv.log_soon("T: end"), "{:#?}", srv.log.lock().unwrap());
    for line in [
        "T: code 408",
        "T: branch timeout",
        "T: branch replied",
        "T: any timeout",
        "T: any replied",
    ] {
        assert!(srv.log_contains(line), "no `{line}`");
    }
}

// --- 4. onreply_route ---------------------------------------------------------

/// `t_on_reply`: the reply route sees every reply of the branch with
/// `$T_branch_idx` and `$rs`; `drop` of the 180 keeps it from the caller,
/// the 200 goes through.
#[test]
fn onreply_route_drops_the_180_and_relays_the_200() {
    let uas = SippUas::start("uas_ack_bye.xml", "u1");
    let srv = Server::start(&proxy_cfg(
        "",
        "        t_on_reply(\"R\");",
        &format!(
            r#"{}
onreply_route[R] {{
    xlog("L_INFO", "onreply_route R: branch $T_branch_idx status $rs\n");
    if (status == "180") {{
        drop;
    }}
}}
"#,
            target(uas.addr)
        ),
    ));
    let caller = Raw::new();
    let seen = raw_call(&caller, srv.udp, "service", "onreply-1", || {});
    assert!(srv.log_soon("onreply_route R: branch 0 status 180"));
    assert!(srv.log_soon("onreply_route R: branch 0 status 200"));
    let got = codes(&seen);
    assert!(
        got.contains(&200) && !got.contains(&180),
        "the caller got {got:?}"
    );
    assert_uas_done(uas, 1);
}

// --- 5. branch_route ----------------------------------------------------------

/// `t_on_branch`: the route runs for both branches with their
/// `$T_branch_idx`; branch 1 is dropped, branch 0 goes out with the header
/// the route added (and only that branch carries it).
#[test]
fn branch_route_drops_a_branch_and_edits_the_other() {
    let (one, two) = (Raw::new(), Raw::new());
    let srv = Server::start(&proxy_cfg(
        "",
        &format!(
            "        setbflag(3);\n        append_branch(\"sip:two@{}\");\n        xlog(\"L_INFO\", \"set: $branch(count) $branch(uri)\\n\");\n        t_on_branch(\"B\");",
            two.addr()
        ),
        &format!(
            r#"{}
branch_route[B] {{
    xlog("L_INFO", "branch_route B: branch $T_branch_idx to $ru\n");
    if ($T_branch_idx == 1) {{
        drop;
    }}
    append_hf("X-Branch: $T_branch_idx\r\nX-Bf: $bf\r\n");
}}
"#,
            target(one.addr())
        ),
    ));
    let caller = Raw::new();
    let dialog = Dialog {
        caller: caller.addr(),
        proxy: srv.udp,
        user: "service",
        call: "branch-1",
    };
    caller.send(srv.udp, &dialog.request("INVITE", 1, "i", None));
    let (got, proxy) = one.recv_until("INVITE at branch 0's callee", |m| {
        method(m) == Some("INVITE")
    });
    let invite = got.last().unwrap();
    assert_eq!(headers(invite, "X-Branch"), ["X-Branch: 0"], "{invite}");
    // setbflag(3) marked the R-URI's branch.
    assert_eq!(headers(invite, "X-Bf"), ["X-Bf: 8"], "{invite}");
    // The destination set before t_relay: one appended branch.
    assert!(srv.log_soon(&format!("set: 1 sip:two@{}", two.addr())));
    assert!(srv.log_soon("branch_route B: branch 1 to sip:two@"));
    assert!(srv.log_contains("branch_route B: branch 0 to sip:service@"));
    one.send(proxy, &reply_to(invite, 200, "OK", one.addr()));
    let (seen, _) = caller.recv_until("200 for the INVITE", invite_final);
    let ok = seen.last().unwrap();
    assert_eq!(status(ok), Some(200), "{ok}");
    let to = header(ok, "To").to_string();
    caller.send(srv.udp, &dialog.request("ACK", 1, "a", Some(&to)));
    let (acks, _) = one.recv_until("ACK at branch 0's callee", |m| method(m) == Some("ACK"));
    assert!(headers(acks.last().unwrap(), "X-Branch").is_empty());
    // Every branch was built before the first went out: a branch 1 would
    // have reached its callee by now.
    let other = two.pending();
    assert!(other.is_empty(), "the dropped branch went out: {other:#?}");
}

// --- 6. UDP and TCP -----------------------------------------------------------

/// A caller over UDP, the callee over TCP (`;transport=tcp` in `$du`): the
/// INVITE, the ACK (following the Contact, relayed statelessly) and the BYE
/// reach it on a connection the proxy opened.
#[test]
fn udp_caller_to_tcp_callee() {
    let uas = SippUas::start("uas_ack_bye.xml", "t1");
    let srv = Server::start(&proxy_cfg(
        "",
        "",
        &format!(
            "route[TARGET] {{\n    if (uri == myself) {{\n        $du = \"sip:{};transport=tcp\";\n    }}\n}}\n",
            uas.addr
        ),
    ));
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 2, &[]);
    assert_uas_done(uas, 2);
}

/// A UDP caller to a callee over TLS (Python's ssl module, the test CA's
/// certificate for 127.0.0.1): siphon's TLS client verifies it against
/// `ca_list`; the INVITE, the ACK of the 200 and the BYE go over TLS with a
/// `SIP/2.0/TLS` Via.
#[test]
fn udp_caller_to_tls_callee() {
    let dir = super::cli::Scratch::new("proxy-tls");
    let (ca, cert, key) = super::harness::test_certs(&dir);
    let uas = super::harness::PyPeer::start(
        "tls_uas.py",
        &[cert.to_str().unwrap(), key.to_str().unwrap()],
        "got ",
        "(python3 ssl)",
    );
    let srv = Server::start(&proxy_cfg(
        &format!(
            "loadmodule \"tls.so\"\nmodparam(\"tls\", \"certificate\", \"{}\")\nmodparam(\"tls\", \"private_key\", \"{}\")\nmodparam(\"tls\", \"ca_list\", \"{}\")\nlisten=tls:127.0.0.1:0",
            cert.display(),
            key.display(),
            ca.display()
        ),
        "",
        &format!(
            "route[TARGET] {{\n    if (uri == myself) {{\n        $du = \"sip:127.0.0.1:{};transport=tls\";\n    }}\n}}\n",
            uas.port
        ),
    ));
    let caller = Raw::new();
    let seen = raw_call(&caller, srv.udp, "tls", "tls-1", || {});
    assert!(seen.iter().any(|m| status(m) == Some(180)), "{seen:#?}");
    let mut methods = Vec::new();
    while let Some(doc) = uas.next() {
        let via = doc["via"][0].as_str().unwrap_or_default().to_string();
        assert!(via.contains("SIP/2.0/TLS"), "our Via over TLS: {via}");
        methods.push(doc["method"].as_str().unwrap_or_default().to_string());
        if methods.last().map(String::as_str) == Some("BYE") {
            break;
        }
    }
    assert_eq!(methods, ["INVITE", "ACK", "BYE"]);
}

/// `t_relay_to_tcp()` names the protocol instead of the URI.
#[test]
fn t_relay_to_tcp_reaches_a_tcp_callee() {
    let uas = SippUas::start("uas_ack_bye.xml", "t1");
    let cfg = proxy_cfg("", "", &target(uas.addr)).replace(
        "    if (!t_relay()) {",
        "    if (is_method(\"INVITE|BYE\")) {\n        t_relay_to_tcp();\n        exit;\n    }\n    if (!t_relay()) {",
    );
    let srv = Server::start(&cfg);
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 2, &[]);
    assert_uas_done(uas, 2);
}

/// `t_relay(host, port)` and `t_relay_to_udp(host, port)` name the callee
/// themselves (`$du` and the R-URI untouched): the INVITE, the ACK of the
/// 200 and the BYE all reach it.
#[test]
fn t_relay_with_host_and_port() {
    for function in ["t_relay", "t_relay_to_udp"] {
        let uas = SippUas::start("uas_ack_bye.xml", "u1");
        let (ip, port) = (uas.addr.ip(), uas.addr.port());
        let srv = Server::start(&format!(
            r#"
loadmodule "tm.so"
loadmodule "sl.so"
request_route {{
    if (is_method("CANCEL")) {{
        exit;
    }}
    if (is_method("ACK") && t_check_trans()) {{
        exit;
    }}
    if (!{function}("{ip}", "{port}")) {{
        sl_reply_error();
    }}
}}
"#
        ));
        sipp_uac("uac", srv.udp, "u1", 2, &[]);
        assert_uas_done(uas, 2);
    }
}

/// The reverse: a caller over TCP (its replies go back on its connection),
/// the callee over UDP.
#[test]
fn tcp_caller_to_udp_callee() {
    let uas = SippUas::start("uas_ack_bye.xml", "u1");
    let srv = Server::start(&proxy_cfg("", "", &target(uas.addr)));
    sipp_uac("uac", srv.tcp, "t1", 2, &[]);
    assert_uas_done(uas, 2);
}

// --- 7. IPv6 ------------------------------------------------------------------

/// siphon listening on [::1] relays a caller on [::1] to a callee on [::1]
/// (our Via then names [::1]); a caller over IPv4 reaches the same callee.
#[test]
fn ipv6_caller_and_callee() {
    let uas = SippUas::start_on("::1", "uas_ack_bye.xml", "u1", &[]);
    let srv = Server::start(&format!(
        "listen=udp:[::1]:0\n{}",
        proxy_cfg("", "", &target(uas.addr))
    ));
    let v6: SocketAddr = {
        let log = srv.log.lock().unwrap();
        log.iter()
            .find_map(|l| {
                l.strip_prefix("listening on udp:[::1]")?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<u16>()
                    .ok()
            })
            .map(|p| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p)))
            .unwrap_or_else(|| panic!("no [::1] listener in {log:#?}"))
    };
    sipp_uac_on("::1", "uac", v6, "u1", 2, &[]);
    sipp_uac("uac", srv.udp, "u1", 1, &[]);
    assert_uas_done(uas, 3);
}

// --- 8. Lost datagrams -----------------------------------------------------------

/// What went through the lossy relay.
#[derive(Default, Debug)]
struct Losses {
    invites: u32,
    invite_oks: u32,
    dropped: Vec<String>,
}

/// A UDP relay between siphon (`front`) and a callee that loses the first
/// INVITE and the first 200 for an INVITE going through it.
struct LossyRelay {
    front: SocketAddr,
    seen: Arc<Mutex<Losses>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(callee: SocketAddr) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let (front, back) = (Arc::new(front), Arc::new(back));
        let seen = Arc::new(Mutex::new(Losses::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let proxy = Arc::new(Mutex::new(None::<SocketAddr>));
        let mut threads = Vec::new();
        // siphon -> callee
        {
            let (front, back, seen, stop, proxy) = (
                front.clone(),
                back.clone(),
                seen.clone(),
                stop.clone(),
                proxy.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *proxy.lock().unwrap() = Some(from);
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if method(&m) == Some("INVITE") {
                        let mut s = seen.lock().unwrap();
                        s.invites += 1;
                        if s.invites == 1 {
                            s.dropped.push(m);
                            continue;
                        }
                    }
                    let _ = back.send_to(&buf[..n], callee);
                }
            }));
        }
        // callee -> siphon
        {
            let (front, back, seen, stop, proxy) =
                (front.clone(), back, seen.clone(), stop.clone(), proxy);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if status(&m) == Some(200) && cseq_method(&m) == "INVITE" {
                        let mut s = seen.lock().unwrap();
                        s.invite_oks += 1;
                        if s.invite_oks == 1 {
                            s.dropped.push(m);
                            continue;
                        }
                    }
                    if let Some(p) = *proxy.lock().unwrap() {
                        let _ = front.send_to(&buf[..n], p);
                    }
                }
            }));
        }
        LossyRelay {
            front: front.local_addr().unwrap(),
            seen,
            stop,
            threads,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The first INVITE to the callee and its first 200 are lost: siphon
/// retransmits the INVITE (timer A), the callee retransmits its 200, and the
/// call completes.
#[test]
fn lost_invite_and_lost_200_are_retransmitted() {
    let uas = SippUas::start("uas_ack_bye.xml", "u1");
    let relay = LossyRelay::start(uas.addr);
    let srv = Server::start(&proxy_cfg(
        "modparam(\"tm\", \"fr_timer\", 10000)",
        "",
        &target(relay.front),
    ));
    sipp_uac("uac", srv.udp, "u1", 1, &[]);
    assert_uas_done(uas, 1);
    let seen = relay.seen.lock().unwrap();
    assert_eq!(seen.dropped.len(), 2, "{seen:#?}");
    assert!(seen.invites >= 2 && seen.invite_oks >= 2, "{seen:#?}");
}

// --- 9. DNS -------------------------------------------------------------------

/// A dnslib server on loopback answering from a zone (NXDOMAIN for a name
/// it does not hold); killed when dropped.
struct DnsServer {
    child: Child,
    addr: SocketAddr,
}

const DNS_SERVER: &str = r#"
import sys
from dnslib import RR, RCODE
from dnslib.server import DNSServer, BaseResolver, DNSLogger

class Zone(BaseResolver):
    def __init__(self, text):
        self.rrs = RR.fromZone(text)
    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        known = False
        for rr in self.rrs:
            if rr.rname == q.qname:
                known = True
                if rr.rtype == q.qtype:
                    reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

server = DNSServer(Zone(sys.argv[1]), address="127.0.0.1", port=0,
                   logger=DNSLogger(logf=lambda s: None))
server.start_thread()
print(server.server.server_address[1], flush=True)
sys.stdin.read()
"#;

impl DnsServer {
    fn start(zone: &str) -> DnsServer {
        let mut child = Command::new("python3")
            .args(["-c", DNS_SERVER, zone])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the dnslib server did not start (pip install dnslib; scripts/install-test-peers.sh)")
        });
        DnsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$du = "sip:uas.test"`: SRV `_sip._udp.uas.test` names `a.uas.test` and
/// the callee's port, its A record 127.0.0.1 (RFC 3263); the call completes.
/// A name nobody knows gives the caller Kamailio's 478.
#[test]
fn dns_srv_names_the_callee_and_an_unknown_name_gives_478() {
    let uas = SippUas::start("uas_ack_bye.xml", "u1");
    let dns = DnsServer::start(&format!(
        "_sip._udp.uas.test. 60 IN SRV 10 10 {} a.uas.test.\na.uas.test. 60 IN A 127.0.0.1\n",
        uas.addr.port()
    ));
    let srv = Server::start(&proxy_cfg(
        &format!("dns_server = \"{}\"", dns.addr),
        "",
        r#"route[TARGET] {
    if ($rU == "nope") {
        $du = "sip:nope.test";
    } else if (uri == myself) {
        $du = "sip:uas.test";
    }
}
"#,
    ));
    // The ACK and the BYE follow the callee's Contact (an address).
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 2, &[]);
    assert_uas_done(uas, 2);
    let caller = Raw::new();
    let dialog = Dialog {
        caller: caller.addr(),
        proxy: srv.udp,
        user: "nope",
        call: "dns-1",
    };
    caller.send(srv.udp, &dialog.request("INVITE", 1, "i", None));
    let (seen, _) = caller.recv_until("final reply for nope.test", invite_final);
    let last = seen.last().unwrap();
    assert_eq!(status(last), Some(478), "{last}");
    let to = header(last, "To").to_string();
    caller.send(srv.udp, &dialog.request("ACK", 1, "i", Some(&to)));
}

/// `use_dns_failover`: SRV names a first address where nobody listens (TCP:
/// the connect is refused) and a second where the callee does; the branch
/// fails over at once and the call completes; `tm:dns_failovers` counts it.
#[test]
fn dns_failover_moves_to_the_next_srv_target() {
    let uas = SippUas::start("uas_ack_bye.xml", "t1");
    let dead = free_port_on("127.0.0.1", "t1");
    let dns = DnsServer::start(&format!(
        "_sip._tcp.fo.test. 60 IN SRV 10 10 {} dead.fo.test.\n_sip._tcp.fo.test. 60 IN SRV 20 10 {} live.fo.test.\ndead.fo.test. 60 IN A 127.0.0.1\nlive.fo.test. 60 IN A 127.0.0.1\n",
        dead.port(),
        uas.addr.port()
    ));
    let srv = Server::start(&proxy_cfg(
        &format!(
            "dns_server = \"{}\"\nuse_dns_failover = on\nloadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:127.0.0.1:0\")",
            dns.addr
        ),
        "",
        r#"route[TARGET] {
    if (uri == myself) {
        $du = "sip:fo.test;transport=tcp";
    }
}
"#,
    ));
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 1, &[]);
    assert_uas_done(uas, 1);
    assert!(stat(&srv, "tm:dns_failovers") >= 1);
}

// --- 10. Statistics -----------------------------------------------------------

/// After three answered calls (INVITE and BYE transactions, 180/200/200
/// relayed, a 100 generated each) and one busy call (486 relayed), the
/// `tm:`/`tmx:` statistics and `tm.stats` say exactly that. Retransmissions
/// are off on both sipp sides so the counts are the same on every run.
#[test]
fn tm_statistics_count_the_calls() {
    let uas = SippUas::start_on("127.0.0.1", "uas_ack_bye.xml", "u1", &["-nr"]);
    let busy = SippUas::start_on("127.0.0.1", "uas_busy.xml", "u1", &["-nr"]);
    let srv = Server::start(&proxy_cfg(
        r#"loadmodule "tmx.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")"#,
        "",
        &format!(
            "route[TARGET] {{\n    if ($rU == \"busy\") {{\n        $du = \"sip:{}\";\n    }} else if (uri == myself) {{\n        $du = \"sip:{}\";\n    }}\n}}\n",
            busy.addr, uas.addr
        ),
    ));
    sipp_uac("uac", srv.udp, "u1", 3, &["-nr"]);
    sipp_uac(
        "uac_expect.xml",
        srv.udp,
        "u1",
        1,
        &["-nr", "-s", "busy", "-key", "expect", "486"],
    );
    assert_uas_done(uas, 3);
    assert_uas_done(busy, 1);
    let expect = [
        // 3 × (INVITE + BYE) + 1 INVITE.
        ("tm:created", 7),
        ("tmx:UAS_transactions", 7),
        // Final replies sent upstream: 3 × 2 200s, one 486.
        ("tmx:2xx_transactions", 6),
        ("tmx:4xx_transactions", 1),
        ("tmx:3xx_transactions", 0),
        ("tmx:5xx_transactions", 0),
        ("tmx:6xx_transactions", 0),
        // 3 × (180, 200, 200 for the BYE) + the 486.
        ("tmx:rpl_received", 10),
        ("tmx:rpl_relayed", 10),
        ("tmx:rpl_absorbed", 0),
        // The 100 Trying for each INVITE.
        ("tmx:rpl_generated", 4),
        ("tmx:rpl_sent", 14),
    ];
    // The groups, as `kamcmd stats.get_statistics tm: tmx:` asks for them.
    let r = rpc_doc(&srv, "stats.get_statistics", json!(["tm:", "tmx:"]));
    let all: std::collections::HashMap<String, i64> = r["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .filter_map(|l| {
            let (name, value) = l.as_str()?.split_once(" = ")?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect();
    let got: Vec<(&str, i64)> = expect
        .iter()
        .map(|(n, _)| (*n, *all.get(*n).unwrap_or_else(|| panic!("no {n} in {r}"))))
        .collect();
    assert_eq!(got, expect, "tm statistics");
    // One by name gives the same.
    assert_eq!(stat(&srv, "tmx:2xx_transactions"), 6);
    let r = rpc_doc(&srv, "tm.stats", json!([]));
    let s = &r["result"];
    // Transactions end on their own timers (a completed BYE lives 64·T1 over
    // UDP): whatever ended is counted freed, the rest is current.
    assert_eq!(
        s["current"].as_i64().unwrap() + s["freed"].as_i64().unwrap(),
        7,
        "{r}"
    );
    for (field, want) in [
        ("total", 7),
        ("created", 7),
        ("2xx", 6),
        ("4xx", 1),
        ("rpl_received", 10),
        ("rpl_generated", 4),
        ("rpl_sent", 14),
    ] {
        assert_eq!(s[field], json!(want), "tm.stats {field}: {r}");
    }
}
