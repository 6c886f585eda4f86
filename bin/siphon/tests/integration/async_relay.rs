//! Async meets relay (issue 13): while the INVITE waits, an application says
//! where the call goes; the resumed route `t_relay()`s it to a sipp UAS there
//! and INVITE/100/180/200/ACK/BYE complete end to end. After a 486 the failure
//! route asks the application again (suspending once more) and relays to the
//! second callee. Once per async API: `evapi_async_relay` (a Python evapi
//! client), `jsonrpc_request` and `janssonrpc_request` (a jsonrpcserver
//! app over netstrings), `http_async_get` and `http_async_query` (an aiohttp
//! app). The caller is `bench/sipp/uac_invite_bye.xml` (sipp's `uac` that
//! sends the ACK and the BYE to the callee's Contact, which the script relays
//! by R-URI); the callees are sipp's built-in `uas`, `bench/sipp/uas_busy.xml`
//! and `uas_ring_cancel.xml`. Then, with an application the test answers
//! for itself (`held::*`, same configurations): the relayed requests on the
//! wire, and a CANCEL that arrives while the application decides.

use super::harness::{PyPeer, Server, SippUas, UdpUac, free_port, request, sipp_uac};
use super::jsonrpcs::rpc_doc;
use bytes::Bytes;
use serde_json::{Value, json};
use siphon_sip::{Method, SipMsg};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const W: Duration = Duration::from_secs(5);

/// Calls per test (at most 10 at once).
const CALLS: u32 = 10;

/// The routing every test shares. `@ASK@` suspends the call asking the
/// application where attempt `$avp(attempt)` goes (an AVP: it belongs to
/// the transaction, whatever `$var`s the resumed route gets); the answer ends
/// in route[RELAY] with `$var(dest)` set, or in route[NO_CALLEE].
/// `@MODULES@` loads and configures the module, `@ROUTES@` adds its routes.
const CFG: &str = r#"
loadmodule "tm.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
@MODULES@
request_route {
    if (is_method("CANCEL")) {
        if (t_check_trans()) { t_relay(); }
        exit;
    }
    if (has_totag()) {
        # The ACK and the BYE of the answered call, addressed to the callee's
        # Contact: relayed by their R-URI (the ACK statelessly).
        if (is_method("ACK")) { t_check_trans(); }
        t_relay();
        exit;
    }
    $avp(attempt) = 1;
    @ASK@
}
route[RELAY] {
    if ($var(dest) !~ "^sip:") {
        route(NO_CALLEE);
        exit;
    }
    xlog("L_INFO", "attempt $avp(attempt): relaying $ci to $var(dest)\n");
    $du = $var(dest);
    t_on_failure("BUSY");
    t_on_branch("ATTEMPT");
    t_on_reply("REPLY");
    if (!t_relay()) {
        xlog("L_INFO", "t_relay failed for $ci\n");
        t_reply("500", "Relay Failed");
    }
}
# The application knows no callee for this attempt: the first is answered
# 500; after a failure nothing is done, so the best reply (a 486) goes back
# (siphon's choice: Kamailio 5.6 answers a resumed failure route that
# neither relays nor replies with 500).
route[NO_CALLEE] {
    xlog("L_INFO", "attempt $avp(attempt): no callee for $ci\n");
    if ($avp(attempt) == 1) {
        t_reply("500", "No Callee");
    }
}
# Hooks armed in a resumed route: a header per branch, one on every reply.
branch_route[ATTEMPT] {
    append_hf("X-Attempt: $avp(attempt)\r\n");
}
onreply_route[REPLY] {
    append_hf("X-Relayed-By: siphon\r\n");
}
failure_route[BUSY] {
    if (t_is_canceled()) { exit; }
    if (t_check_status("486")) {
        $avp(attempt) = $avp(attempt) + 1;
        @ASK@
    }
}
@ROUTES@
"#;

fn cfg(modules: &str, ask: &str, routes: &str) -> String {
    CFG.replace("@MODULES@", modules)
        .replace("@ASK@", ask)
        .replace("@ROUTES@", routes)
}

/// Starts siphon and the application for one API; the application sends
/// attempt N to `sip:127.0.0.1:<callees[N-1]>` (a port, maybe with URI
/// parameters: `5060;transport=tcp`) and reports each question as a
/// document `{"attempt": N}`. Both are ready when it returns.
type Start = fn(&[String]) -> (Server, PyPeer);

/// `addr`'s port as a callee of the application, over `transport` (`u1`, `t1`).
fn callee(addr: SocketAddr, transport: &str) -> String {
    match transport {
        "t1" => format!("{};transport=tcp", addr.port()),
        _ => addr.port().to_string(),
    }
}

fn evapi_cfg() -> String {
    cfg(
        r#"loadmodule "evapi.so"
modparam("evapi", "bind_addr", "127.0.0.1:0")"#,
        r#"evapi_async_relay("route|$T(id_index)|$T(id_label)|$avp(attempt)");
    exit;"#,
        r#"
event_route[evapi:message-received] {
    if ($evapi(msg) == "hello") {
        xlog("L_INFO", "evapi router $evapi(conidx) ready\n");
        exit;
    }
    # answer|INDEX|LABEL|DEST: t_continue runs RELAY with these $vars.
    $var(dest) = $(evapi(msg){s.select,3,|});
    t_continue("$(evapi(msg){s.select,1,|})", "$(evapi(msg){s.select,2,|})", "RELAY");
}"#,
    )
}

fn evapi(callees: &[String]) -> (Server, PyPeer) {
    let srv = Server::start(&evapi_cfg());
    let mut args = vec![evapi_port(&srv).to_string()];
    args.extend_from_slice(callees);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = PyPeer::start("evapi_router.py", &args, "route ", "pynetstring");
    assert!(
        srv.log_soon("evapi router 0 ready"),
        "the evapi client never said hello"
    );
    (srv, app)
}

fn evapi_port(srv: &Server) -> u16 {
    let deadline = Instant::now() + W;
    loop {
        let found = srv.log.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("evapi listening on ")
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        });
        if let Some(a) = found {
            return a.port();
        }
        assert!(Instant::now() < deadline, "no evapi address in the log");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn jsonrpcc_cfg(app_port: u16) -> String {
    cfg(
        &format!(
            r#"loadmodule "jsonrpcc.so"
modparam("jsonrpcc", "servers", "127.0.0.1:{app_port},1")
modparam("jsonrpcc", "timeout", 5000)"#
        ),
        r#"jsonrpc_request("route", "{'attempt': $avp(attempt)}", "RELAY", "NO_CALLEE", "$var(dest)");"#,
        "",
    )
}

fn janssonrpcc_cfg(app_port: u16) -> String {
    cfg(
        &format!(
            r#"loadmodule "jansson.so"
loadmodule "janssonrpcc.so"
modparam("janssonrpcc", "server", "conn=router;addr=127.0.0.1;port={app_port};priority=0")
modparam("janssonrpcc", "result_pv", "$var(jsrpc_result)")"#
        ),
        r#"janssonrpc_request("router", "route", '{"attempt": $avp(attempt)}', "route=ROUTED;timeout=5000");"#,
        r#"
route[ROUTED] {
    if (!jansson_get("result", "$var(jsrpc_result)", "$var(dest)")) {
        route(NO_CALLEE);
        exit;
    }
    route(RELAY);
}"#,
    )
}

fn async_http_cfg(app_port: u16) -> String {
    cfg(
        r#"loadmodule "async_http.so"
modparam("async_http", "http_timeout", 5000)"#,
        &format!(
            r#"http_async_get("http://127.0.0.1:{app_port}/route?attempt=$avp(attempt)", "ROUTED");"#
        ),
        r#"
route[ROUTED] {
    if ($avp(http_rc) != 200) {
        route(NO_CALLEE);
        exit;
    }
    $var(dest) = $avp(http_rb);
    route(RELAY);
}"#,
    )
}

fn http_async_client_cfg(app_port: u16) -> String {
    cfg(
        r#"loadmodule "http_async_client.so"
modparam("http_async_client", "connection_timeout", 5000)"#,
        &format!(
            r#"http_async_query("http://127.0.0.1:{app_port}/route?attempt=$avp(attempt)", "ROUTED");"#
        ),
        r#"
route[ROUTED] {
    if ($http_rs != 200) {
        route(NO_CALLEE);
        exit;
    }
    $var(dest) = $http_rb;
    route(RELAY);
}"#,
    )
}

/// The jsonrpcserver app (netstrings), for jsonrpcc and janssonrpcc.
fn netstring_app(callees: &[String]) -> PyPeer {
    let mut args = vec!["0".to_string()];
    args.extend_from_slice(callees);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PyPeer::start(
        "netstring_app.py",
        &args,
        "route ",
        "jsonrpcserver pynetstring",
    )
}

/// siphon on `cfg`, once its JSON-RPC client is connected to the app on `app_port`.
fn connected(cfg: &str, app_port: u16) -> Server {
    let srv = Server::start(cfg);
    assert!(
        srv.log_soon(&format!("jsonrpcc: connected to 127.0.0.1:{app_port}")),
        "the JSON-RPC client never connected"
    );
    srv
}

fn jsonrpcc(callees: &[String]) -> (Server, PyPeer) {
    let app = netstring_app(callees);
    (connected(&jsonrpcc_cfg(app.port), app.port), app)
}

fn janssonrpcc(callees: &[String]) -> (Server, PyPeer) {
    let app = netstring_app(callees);
    (connected(&janssonrpcc_cfg(app.port), app.port), app)
}

/// The aiohttp app.
fn http_app(callees: &[String]) -> PyPeer {
    let list = callees.join(",");
    PyPeer::start(
        "http_app.py",
        &["0", "--callees", &list],
        "route ",
        "aiohttp",
    )
}

fn async_http(callees: &[String]) -> (Server, PyPeer) {
    let app = http_app(callees);
    (Server::start(&async_http_cfg(app.port)), app)
}

fn http_async_client(callees: &[String]) -> (Server, PyPeer) {
    let app = http_app(callees);
    (Server::start(&http_async_client_cfg(app.port)), app)
}

/// The attempts the application was asked about (`n` of them), sorted.
fn attempts(app: &PyPeer, n: u32) -> Vec<i64> {
    let mut v: Vec<i64> = (0..n)
        .map(|i| {
            let d = app
                .next()
                .unwrap_or_else(|| panic!("the application was asked {i} times, not {n}"));
            d["attempt"].as_i64().expect("an attempt number")
        })
        .collect();
    v.sort_unstable();
    v
}

/// Asserts the UAS ended with `calls` successful calls and none failed (it
/// saw every request its scenario expects: the ACK, and the BYE if it answered).
fn assert_uas_done(uas: SippUas, calls: u32, what: &str) {
    let run = uas.finish();
    assert!(
        run.successful == u64::from(calls) && run.failed == 0,
        "{what}: {} ok, {} failed of {calls}\n{}",
        run.successful,
        run.failed,
        run.tail()
    );
}

/// The application's answer names the callee; the call completes there.
fn the_answer_routes_the_call(start: Start) {
    let uas = SippUas::start("uas", "u1");
    // Nobody listens at the second destination: it is never asked for.
    let (srv, app) = start(&[callee(uas.addr, "u1"), callee(free_port("u1"), "u1")]);
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", CALLS, &[]);
    assert_eq!(attempts(&app, CALLS), vec![1; CALLS as usize]);
    assert_uas_done(uas, CALLS, "callee");
}

/// The same over TCP on both sides (`;transport=tcp` in the answer): the
/// resumed route opens the connection to the callee, the replies go back on
/// the caller's; the ACK and the BYE follow the callee's Contact.
fn the_answer_routes_the_call_over_tcp(start: Start) {
    let uas = SippUas::start("uas", "t1");
    let (srv, app) = start(&[callee(uas.addr, "t1"), callee(free_port("u1"), "u1")]);
    sipp_uac("uac_invite_bye.xml", srv.tcp, "t1", CALLS, &[]);
    assert_eq!(attempts(&app, CALLS), vec![1; CALLS as usize]);
    assert_uas_done(uas, CALLS, "TCP callee");
}

/// The first callee is busy: the failure route asks the application again
/// (suspending the transaction a second time) and the call completes at the
/// second callee.
fn the_failure_route_asks_again_after_486(start: Start) {
    let busy = SippUas::start("uas_busy.xml", "u1");
    let uas = SippUas::start("uas", "u1");
    let (srv, app) = start(&[callee(busy.addr, "u1"), callee(uas.addr, "u1")]);
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", CALLS, &[]);
    let mut want = vec![1; CALLS as usize];
    want.extend(vec![2; CALLS as usize]);
    assert_eq!(attempts(&app, 2 * CALLS), want);
    // The busy callee got siphon's ACK for each 486.
    assert_uas_done(busy, CALLS, "busy callee");
    assert_uas_done(uas, CALLS, "second callee");
}

/// Both callees are busy and the application knows no third: the resumed
/// route after the second 486 does nothing, and the caller gets that 486
/// (siphon's choice in siphon-tm's `route_done`; Kamailio 5.6 sends 500).
fn every_callee_busy_the_caller_gets_486(start: Start) {
    let busy = SippUas::start("uas_busy.xml", "u1");
    let busy2 = SippUas::start("uas_busy.xml", "u1");
    let (srv, app) = start(&[callee(busy.addr, "u1"), callee(busy2.addr, "u1")]);
    sipp_uac(
        "uac_expect.xml",
        srv.udp,
        "u1",
        CALLS,
        &["-key", "expect", "486"],
    );
    let mut want = vec![1; CALLS as usize];
    want.extend(vec![2; CALLS as usize]);
    want.extend(vec![3; CALLS as usize]);
    assert_eq!(attempts(&app, 3 * CALLS), want);
    assert_uas_done(busy, CALLS, "first busy callee");
    assert_uas_done(busy2, CALLS, "second busy callee");
}

/// The caller gives up while the callee the application chose rings: the
/// CANCEL goes on to it, 487 comes back, and the failure route (canceled)
/// asks nobody.
fn the_caller_cancels_while_the_callee_rings(start: Start) {
    let ringing = SippUas::start("uas_ring_cancel.xml", "u1");
    let (srv, app) = start(&[callee(ringing.addr, "u1"), callee(free_port("u1"), "u1")]);
    sipp_uac("uac_cancel.xml", srv.udp, "u1", CALLS, &[]);
    assert_eq!(attempts(&app, CALLS), vec![1; CALLS as usize]);
    assert_uas_done(ringing, CALLS, "ringing callee");
}

/// One question of an application the test answers for: the attempt it is
/// about, and how to answer it (with a SIP URI).
struct Question {
    attempt: u64,
    answer: Box<dyn FnOnce(&str) + Send>,
}

/// An application that answers only when the test says so (for each API:
/// `held::*`); its questions arrive here.
struct HeldApp(mpsc::Receiver<Question>);

impl HeldApp {
    /// The next question, which must be about `attempt`: its answer.
    fn question(&self, attempt: u64) -> Box<dyn FnOnce(&str) + Send> {
        let q = self
            .0
            .recv_timeout(W)
            .unwrap_or_else(|_| panic!("the application was not asked about attempt {attempt}"));
        assert_eq!(q.attempt, attempt);
        q.answer
    }
}

/// How many transactions wait suspended (`tm.stats`).
fn waiting(srv: &Server) -> u64 {
    let stats = rpc_doc(srv, "tm.stats", json!([]));
    stats["result"]["waiting"]
        .as_u64()
        .unwrap_or_else(|| panic!("tm.stats: {stats}"))
}

/// Reads one netstring; None at the end of the stream.
fn read_netstring(r: &mut impl Read) -> Option<String> {
    let mut len = 0usize;
    let mut b = [0u8; 1];
    loop {
        r.read_exact(&mut b).ok()?;
        match b[0] {
            b'0'..=b'9' => len = len * 10 + usize::from(b[0] - b'0'),
            b':' => break,
            _ => return None,
        }
    }
    let mut data = vec![0; len + 1];
    r.read_exact(&mut data).ok()?;
    data.pop();
    String::from_utf8(data).ok()
}

fn netstring(text: &str) -> Vec<u8> {
    format!("{}:{text},", text.len()).into_bytes()
}

/// The held applications, one per API, each with its siphon.
mod held {
    use super::*;

    /// The evapi client: `route|INDEX|LABEL|ATTEMPT` in, `answer|…` out.
    pub(super) fn evapi() -> (Server, HeldApp) {
        let srv = Server::start(&evapi_cfg());
        let mut s = TcpStream::connect(("127.0.0.1", evapi_port(&srv))).expect("connect to evapi");
        s.write_all(&netstring("hello")).unwrap();
        assert!(
            srv.log_soon("evapi router 0 ready"),
            "the evapi client never said hello"
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Some(frame) = read_netstring(&mut s) {
                let parts: Vec<String> = frame.split('|').map(String::from).collect();
                let [kind, index, label, attempt] = &parts[..] else {
                    continue;
                };
                if kind != "route" {
                    continue;
                }
                let mut w = s.try_clone().unwrap();
                let (index, label) = (index.clone(), label.clone());
                let answer = Box::new(move |dest: &str| {
                    let _ = w.write_all(&netstring(&format!("answer|{index}|{label}|{dest}")));
                });
                let attempt = attempt.parse().unwrap_or(0);
                if tx.send(Question { attempt, answer }).is_err() {
                    return;
                }
            }
        });
        (srv, HeldApp(rx))
    }

    /// A JSON-RPC server over netstrings: `route({"attempt": N})` answered
    /// with the URI as its result.
    fn netstring_server() -> (u16, HeldApp) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for mut s in l.incoming().map_while(Result::ok) {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    while let Some(frame) = read_netstring(&mut s) {
                        let doc: Value = serde_json::from_str(&frame).unwrap_or_default();
                        let (done, answered) = mpsc::channel::<String>();
                        let answer = Box::new(move |dest: &str| {
                            let _ = done.send(dest.to_string());
                        });
                        let attempt = doc["params"]["attempt"].as_u64().unwrap_or(0);
                        if tx.send(Question { attempt, answer }).is_err() {
                            return;
                        }
                        let Ok(dest) = answered.recv() else { return };
                        let reply = json!({"jsonrpc": "2.0", "result": dest, "id": doc["id"]});
                        let _ = s.write_all(&netstring(&reply.to_string()));
                    }
                });
            }
        });
        (port, HeldApp(rx))
    }

    pub(super) fn jsonrpcc() -> (Server, HeldApp) {
        let (port, app) = netstring_server();
        (connected(&jsonrpcc_cfg(port), port), app)
    }

    pub(super) fn janssonrpcc() -> (Server, HeldApp) {
        let (port, app) = netstring_server();
        (connected(&janssonrpcc_cfg(port), port), app)
    }

    /// An HTTP/1.1 server: `GET /route?attempt=N` answered 200 with the URI.
    fn http_server() -> (u16, HeldApp) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    loop {
                        // The request line, then headers up to the empty line (a GET has no body).
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let attempt = line
                            .split_once("attempt=")
                            .and_then(|(_, a)| a.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|a| a.parse().ok())
                            .unwrap_or(0);
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim().is_empty() {
                                break;
                            }
                        }
                        let (done, answered) = mpsc::channel::<String>();
                        let answer = Box::new(move |dest: &str| {
                            let _ = done.send(dest.to_string());
                        });
                        if tx.send(Question { attempt, answer }).is_err() {
                            return;
                        }
                        let Ok(dest) = answered.recv() else { return };
                        let _ = write!(
                            w,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{dest}",
                            dest.len()
                        );
                    }
                });
            }
        });
        (port, HeldApp(rx))
    }

    pub(super) fn async_http() -> (Server, HeldApp) {
        let (port, app) = http_server();
        (Server::start(&async_http_cfg(port)), app)
    }

    pub(super) fn http_async_client() -> (Server, HeldApp) {
        let (port, app) = http_server();
        (Server::start(&http_async_client_cfg(port)), app)
    }
}

/// The caller gives up (CANCEL) while the application decides — in the
/// request route, or (`busy_first`) in the failure route after a 486. The
/// caller gets 200 for the CANCEL and 487 for the INVITE at once (not the
/// 486); the answer that comes after it resumes the route, whose `t_relay()`
/// fails: the call is not sent on.
fn canceled_while_the_application_decides(start: fn() -> (Server, HeldApp), busy_first: bool) {
    let (srv, app) = start();
    let busy = busy_first.then(|| SippUas::start("uas_busy.xml", "u1"));
    // Where the late answer sends the call: nothing may arrive there.
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uac = UdpUac::new(srv.udp);
    let call_id = format!("canceled-while-asking-{busy_first}");
    let contact = "Contact: <sip:uac@127.0.0.1>\r\n";
    uac.send(&request("INVITE", uac.addr(), "cwa", &call_id, contact));
    let mut answer = app.question(1);
    if let Some(busy) = &busy {
        answer(&format!("sip:{}", busy.addr));
        // The 486 ran the failure route, which asks again.
        answer = app.question(2);
    }
    uac.send(&request("CANCEL", uac.addr(), "cwa", &call_id, ""));
    let (mut cancel_ok, mut invite_final) = (None, None);
    let deadline = Instant::now() + W;
    while cancel_ok.is_none() || invite_final.is_none() {
        let m = uac
            .recv(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("CANCEL answered {cancel_ok:?}, INVITE {invite_final:?}"));
        let code = m.status().expect("a reply");
        match m.cseq().expect("a CSeq").method {
            Method::Cancel => cancel_ok = Some(code),
            _ if code >= 200 => {
                assert!(invite_final.is_none(), "a second final reply: {code}");
                invite_final = Some(code);
                // The ACK for the final reply, with its To tag.
                let to = m.headers_named(b"to").next().map(|h| m.header_value(h));
                let to = String::from_utf8_lossy(&to.expect("a To")).into_owned();
                uac.send(&format!(
                    "ACK sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKcwa;rport\r\nFrom: <sip:uac@127.0.0.1>;tag=f{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                    uac.addr()
                ));
            }
            _ => {}
        }
    }
    assert_eq!((cancel_ok, invite_final), (Some(200), Some(487)));
    answer(&format!("sip:{}", callee.local_addr().unwrap()));
    assert!(
        srv.log_soon(&format!("t_relay failed for {call_id}")),
        "the late answer did not resume the route"
    );
    assert_eq!(waiting(&srv), 0, "a transaction is still suspended");
    // t_relay() sends before it returns: nothing went, nothing will.
    callee.set_nonblocking(true).unwrap();
    let mut b = [0u8; 2048];
    assert!(
        callee.recv_from(&mut b).is_err(),
        "a canceled call was relayed: {}",
        String::from_utf8_lossy(&b)
    );
    if let Some(busy) = busy {
        assert_uas_done(busy, 1, "busy callee");
    }
}

/// A callee the test plays itself on a UDP socket, to read what siphon sends.
struct RawCallee(UdpSocket);

impl RawCallee {
    fn new() -> RawCallee {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        RawCallee(s)
    }
    fn uri(&self) -> String {
        format!("sip:{}", self.0.local_addr().unwrap())
    }
    /// The next request with `method` (retransmissions of others skipped)
    /// and where it came from.
    fn request(&self, method: Method) -> (SipMsg, SocketAddr) {
        let deadline = Instant::now() + W;
        let mut b = vec![0u8; 65535];
        while Instant::now() < deadline {
            if let Ok((n, from)) = self.0.recv_from(&mut b) {
                let m = siphon_sip::parse(Bytes::copy_from_slice(&b[..n])).expect("parsable");
                if m.method() == method && m.is_request() {
                    return (m, from);
                }
            }
        }
        panic!("no {method:?} at the callee {}", self.uri());
    }
    /// Answers `req` (sent from `to`) with `code`; the To tag is `callee`.
    fn reply(&self, (req, to): &(SipMsg, SocketAddr), code: u16, reason: &str) {
        let h = |name: &[u8]| -> Vec<String> {
            req.headers_named(name)
                .map(|h| String::from_utf8_lossy(&req.header_value(h)).into_owned())
                .collect()
        };
        let vias: String = h(b"via").iter().map(|v| format!("Via: {v}\r\n")).collect();
        let text = format!(
            "SIP/2.0 {code} {reason}\r\n{vias}From: {}\r\nTo: {};tag=callee\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
            h(b"from")[0],
            h(b"to")[0],
            h(b"call-id")[0],
            h(b"cseq")[0],
            self.uri()
        );
        self.0.send_to(text.as_bytes(), to).unwrap();
    }
}

/// How many Via values `m` has, and the top one's branch.
fn vias(m: &SipMsg) -> (usize, String) {
    let n = m
        .headers_named(b"via")
        .map(|h| {
            String::from_utf8_lossy(&m.header_value(h))
                .matches("SIP/2.0/")
                .count()
        })
        .sum();
    let branch = m
        .top_via()
        .and_then(|v| v.branch.clone())
        .unwrap_or_default();
    (n, String::from_utf8_lossy(&branch).into_owned())
}

/// The values of `m`'s headers called `name`.
fn values(m: &SipMsg, name: &str) -> Vec<String> {
    m.headers_named(name.as_bytes())
        .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
        .collect()
}

/// Asserts what the INVITE of `attempt` looks like: the caller's request
/// with the R-URI it had, one Via of ours on top (a branch of its own),
/// Max-Forwards decremented once, and only its own branch_route's header;
/// its top branch.
fn assert_relayed(inv: &SipMsg, caller_branch: &str, attempt: u32) -> String {
    assert_eq!(inv.ruri().as_deref(), Some(&b"sip:service@127.0.0.1"[..]));
    assert_eq!(values(inv, "X-Attempt"), [attempt.to_string()]);
    let (n, branch) = vias(inv);
    assert_eq!(n, 2, "our Via and the caller's");
    assert!(
        branch.starts_with("z9hG4bK") && branch != caller_branch,
        "{branch}"
    );
    assert_eq!(inv.max_forwards(), Some(69));
    branch
}

/// The relayed requests on the wire, the callees played by the test: the
/// INVITE the first answer sends (branch_route and onreply_route armed in
/// the resumed route), the hop-by-hop ACK of its 486 (same
/// branch), the INVITE the failure route's answer sends (a new branch,
/// Max-Forwards still decremented once), the 180 and the 200 relayed to the
/// caller without our Via (the 486 never reaches it), and the caller's ACK
/// relayed to the callee's Contact.
fn serial_forking_on_the_wire(start: fn() -> (Server, HeldApp)) {
    let (srv, app) = start();
    let (first, second) = (RawCallee::new(), RawCallee::new());
    let uac = UdpUac::new(srv.udp);
    let call_id = "serial-forking-on-the-wire";
    let caller_branch = "z9hG4bKwire";
    let contact = "Contact: <sip:uac@127.0.0.1>\r\n";
    uac.send(&request("INVITE", uac.addr(), "wire", call_id, contact));
    app.question(1)(&first.uri());
    let inv = first.request(Method::Invite);
    let branch1 = assert_relayed(&inv.0, caller_branch, 1);
    first.reply(&inv, 486, "Busy Here");
    let (ack, _) = first.request(Method::Ack);
    assert_eq!(
        vias(&ack),
        (1, branch1.clone()),
        "the ACK of a non-2xx is hop by hop"
    );
    app.question(2)(&second.uri());
    let inv = second.request(Method::Invite);
    let branch2 = assert_relayed(&inv.0, caller_branch, 2);
    assert_ne!(branch1, branch2);
    second.reply(&inv, 180, "Ringing");
    second.reply(&inv, 200, "OK");
    let mut codes = Vec::new();
    let ok = loop {
        let m = uac.recv(W).expect("the replies to the caller");
        let code = m.status().expect("a reply");
        codes.push(code);
        if code > 100 {
            // onreply_route ran for it (our own 100 Trying is not a reply we relay).
            assert_eq!(values(&m, "X-Relayed-By"), ["siphon"], "{code}");
        }
        if code >= 200 {
            break m;
        }
    };
    assert_eq!(codes.last(), Some(&200), "{codes:?}");
    assert!(codes.contains(&180), "{codes:?}");
    assert_eq!(vias(&ok), (1, caller_branch.to_string()));
    // The ACK for the 200, to the callee's Contact, relayed by its R-URI.
    uac.send(&format!(
        "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKwireack;rport\r\nFrom: <sip:uac@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:service@127.0.0.1>;tag=callee\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        second.uri(),
        uac.addr()
    ));
    let (ack, _) = second.request(Method::Ack);
    assert_eq!(vias(&ack).0, 2, "the end-to-end ACK went through siphon");
    assert_eq!(waiting(&srv), 0, "a transaction is still suspended");
}

/// The scenarios for each API.
macro_rules! for_each_api {
    ($($api:ident),* $(,)?) => {
        $(mod $api {
            #[test]
            fn the_answer_routes_the_call() {
                super::the_answer_routes_the_call(super::$api)
            }
            #[test]
            fn the_answer_routes_the_call_over_tcp() {
                super::the_answer_routes_the_call_over_tcp(super::$api)
            }
            #[test]
            fn the_failure_route_asks_again_after_486() {
                super::the_failure_route_asks_again_after_486(super::$api)
            }
            #[test]
            fn every_callee_busy_the_caller_gets_486() {
                super::every_callee_busy_the_caller_gets_486(super::$api)
            }
            #[test]
            fn the_caller_cancels_while_the_callee_rings() {
                super::the_caller_cancels_while_the_callee_rings(super::$api)
            }
            #[test]
            fn serial_forking_on_the_wire() {
                super::serial_forking_on_the_wire(super::held::$api)
            }
            #[test]
            fn canceled_while_the_application_decides() {
                super::canceled_while_the_application_decides(super::held::$api, false)
            }
            #[test]
            fn canceled_while_the_failure_route_asks_again() {
                super::canceled_while_the_application_decides(super::held::$api, true)
            }
        })*
    };
}

for_each_api!(evapi, jsonrpcc, janssonrpcc, async_http, http_async_client);
