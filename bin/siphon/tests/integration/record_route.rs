//! rr end to end: a sipp caller, a record-routing proxy on
//! `bench/kamailio-rr.cfg` (record_route() on the INVITE, loose_route() and
//! t_relay() in the dialog) and a sipp callee. The callee's INVITE must
//! carry our Record-Route, the caller's ACK and the callee's BYE come back
//! with a Route to the proxy and must reach the other side
//! (`bench/sipp/uac_rr.xml`, `uas_rr.xml`). The same config runs on
//! Kamailio 5.6.3 when installed, and the Record-Route lines the callee got
//! from both must have the same shape; without `kamailio` that half says so
//! and passes.

use super::harness::{SippUas, free_port, sipp_uac, terminate, wait_bound};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A proxy on `bench/kamailio-rr.cfg` (UDP and TCP on one free port),
/// stopped with SIGTERM when dropped.
struct Proxy {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

#[derive(Clone, Copy)]
enum Server {
    Siphon,
    Kamailio,
}

/// The proxy relaying initial INVITEs to `uas` (over TCP when `uas_tcp`);
/// `None` (after a note) when it is Kamailio and Kamailio is not installed.
fn start(server: Server, uas: SocketAddr, uas_tcp: bool) -> Option<Proxy> {
    let cfg = format!("{}/../../bench/kamailio-rr.cfg", env!("CARGO_MANIFEST_DIR"));
    let program = match server {
        Server::Siphon => env!("CARGO_BIN_EXE_siphon"),
        Server::Kamailio => {
            if Command::new("kamailio").arg("-v").output().is_err() {
                eprintln!(
                    "kamailio is not installed (scripts/install-test-peers.sh): its half skipped"
                );
                return None;
            }
            "kamailio"
        }
    };
    for _ in 0..5 {
        let addr = free_port("u1");
        let mut cmd = Command::new(program);
        cmd.env(crate::harness::ONLY_LOOPBACK, "1");
        cmd.args(["-f", &cfg]);
        if let Server::Kamailio = server {
            cmd.args(["-DD", "-E", "-m", "64", "-M", "8"]);
        }
        let mut child = cmd
            .args(["-A", &format!("PROXY_PORT={}", addr.port())])
            .args(["-A", &format!("UAS_PORT={}", uas.port())])
            .args(["-A", &format!("UAS_TCP={}", u8::from(uas_tcp))])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the proxy");
        if wait_bound(addr, "u1", &mut child) && wait_bound(addr, "t1", &mut child) {
            return Some(Proxy { addr, child });
        }
        drop(Proxy { addr, child });
    }
    panic!("the proxy did not start on {cfg}");
}

/// A file sipp writes the messages of a run into (`-trace_msg`).
fn trace_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("siphon-rr-{}-{name}.log", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// The Record-Route lines of the first INVITE in a sipp message trace, with
/// the proxy's port and the From-tag written `PORT` and `TAG`.
fn record_routes(trace: &PathBuf, proxy: SocketAddr) -> Vec<String> {
    let text = std::fs::read_to_string(trace).expect("sipp wrote its message trace");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("INVITE "))
        .expect("the callee got an INVITE");
    let port = format!(":{}", proxy.port());
    lines[start..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("Record-Route:"))
        .map(|l| {
            let l = l.trim_end().replace(&port, ":PORT");
            match l.split_once(";ftag=") {
                Some((head, rest)) => {
                    let end = rest.find([';', '>']).unwrap_or(rest.len());
                    format!("{head};ftag=TAG{}", &rest[end..])
                }
                None => l,
            }
        })
        .collect()
}

/// The requests starting with `method` in a sipp message trace that still
/// carry a Route header (none should once the proxy took its own out).
fn with_route(trace: &PathBuf, method: &str) -> Vec<String> {
    let text = std::fs::read_to_string(trace).expect("sipp wrote its message trace");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if !l.starts_with(&format!("{method} ")) {
            continue;
        }
        let mut msg = vec![l];
        while let Some(h) = lines.next_if(|h| !h.trim().is_empty()) {
            msg.push(h);
        }
        if msg.iter().any(|h| h.starts_with("Route:")) {
            out.push(msg.join("\n"));
        }
    }
    out
}

/// `calls` calls from a UDP caller to a callee over `uas_transport`
/// through `server`; the Record-Route lines the callee saw (normalised).
/// The ACK reaching the callee and the BYE reaching the caller must carry
/// no Route: the proxy's own entries (both of a double pair) are removed.
fn call_through(server: Server, uas_transport: &str, calls: u32) -> Option<Vec<String>> {
    let name = format!(
        "{}-{uas_transport}",
        match server {
            Server::Siphon => "siphon",
            Server::Kamailio => "kamailio",
        }
    );
    let trace = trace_file(&name);
    let caller_trace = trace_file(&format!("{name}-caller"));
    let uas = SippUas::start_on(
        "127.0.0.1",
        "uas_rr.xml",
        uas_transport,
        &[
            "-trace_msg",
            "-message_file",
            trace.to_str().expect("utf-8 path"),
        ],
    );
    let proxy = start(server, uas.addr, uas_transport == "t1")?;
    // INVITE with Record-Route; the caller's ACK and the callee's BYE along
    // the route set, each through loose_route() on the proxy.
    sipp_uac(
        "uac_rr.xml",
        proxy.addr,
        "u1",
        calls,
        &[
            "-trace_msg",
            "-message_file",
            caller_trace.to_str().expect("utf-8 path"),
        ],
    );
    let run = uas.finish();
    assert!(
        run.successful == u64::from(calls) && run.failed == 0,
        "callee: {} ok, {} failed of {calls}\n{}",
        run.successful,
        run.failed,
        run.tail()
    );
    let rr = record_routes(&trace, proxy.addr);
    assert_eq!(with_route(&trace, "ACK"), Vec::<String>::new());
    assert_eq!(with_route(&caller_trace, "BYE"), Vec::<String>::new());
    let _ = std::fs::remove_file(&trace);
    let _ = std::fs::remove_file(&caller_trace);
    Some(rr)
}

/// One Record-Route: the socket the request came in on and left from.
const SINGLE: [&str; 1] = ["Record-Route: <sip:127.0.0.1:PORT;lr;ftag=TAG>"];

/// Double Record-Route when the callee is over TCP: the outbound socket's
/// first, both `;r2=on` (what Kamailio 5.6.3 writes).
const DOUBLE: [&str; 2] = [
    "Record-Route: <sip:127.0.0.1:PORT;transport=tcp;r2=on;lr;ftag=TAG>",
    "Record-Route: <sip:127.0.0.1:PORT;r2=on;lr;ftag=TAG>",
];

#[test]
fn siphon_record_routes_and_loose_routes_a_udp_dialog() {
    let rr = call_through(Server::Siphon, "u1", 3).expect("siphon runs");
    assert_eq!(rr, SINGLE);
}

#[test]
fn kamailio_record_routes_and_loose_routes_a_udp_dialog() {
    if let Some(rr) = call_through(Server::Kamailio, "u1", 3) {
        assert_eq!(rr, SINGLE);
    }
}

#[test]
fn siphon_double_record_routes_a_udp_caller_to_a_tcp_callee() {
    let rr = call_through(Server::Siphon, "t1", 3).expect("siphon runs");
    assert_eq!(rr, DOUBLE);
}

#[test]
fn kamailio_double_record_routes_a_udp_caller_to_a_tcp_callee() {
    if let Some(rr) = call_through(Server::Kamailio, "t1", 3) {
        assert_eq!(rr, DOUBLE);
    }
}

// --- Record-Route through serial forking and branch routes (raw UDP peers) ---

/// A UDP peer of our own, to read the Record-Route lines a callee gets.
struct Peer(std::net::UdpSocket);

impl Peer {
    fn new() -> Peer {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        Peer(s)
    }
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("addr")
    }
    /// The next message whose start line begins with `start`, and its sender.
    fn recv(&self, start: &str) -> (String, SocketAddr) {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = self
                .0
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no {start} came: {e}"));
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with(start) {
                return (m, from);
            }
        }
    }
    fn send(&self, to: SocketAddr, m: &str) {
        self.0.send_to(m.as_bytes(), to).expect("send");
    }
    /// Refuses `invite` with `486` and waits for the proxy's ACK.
    fn refuse(&self, invite: &str, proxy: SocketAddr) {
        let copied: String = invite
            .lines()
            .filter(|l| {
                ["Via:", "From:", "Call-ID:", "CSeq:"]
                    .iter()
                    .any(|h| l.starts_with(h))
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        let to = invite.lines().find(|l| l.starts_with("To:")).expect("To");
        self.send(
            proxy,
            &format!("SIP/2.0 486 Busy Here\r\n{copied}{to};tag=busy\r\nContent-Length: 0\r\n\r\n"),
        );
        self.recv("ACK ");
    }
}

/// The Record-Route lines of a message, in order.
fn rr_lines(m: &str) -> Vec<&str> {
    m.lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("Record-Route:"))
        .collect()
}

/// `record_route()` in the request route stays on the transaction's
/// request: the branch a failure route relays anew carries it too (Kamailio
/// saves the lumps with the transaction). One called in a `branch_route` is
/// that branch's only.
#[test]
fn record_route_in_failure_and_branch_routes() {
    let (a, b, caller) = (Peer::new(), Peer::new(), Peer::new());
    let srv = super::harness::Server::start(&format!(
        r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "rr.so"
request_route {{
    if (is_method("ACK")) {{
        t_check_trans();
        exit;
    }}
    if ($rU == "serial") {{
        record_route();
        t_on_failure("NEXT");
    }} else {{
        append_branch("sip:parallel@{b}");
        t_on_branch("BR");
    }}
    $du = "sip:{a}";
    t_relay();
}}
failure_route[NEXT] {{
    if (t_check_status("486") && $du == "sip:{a}") {{
        $du = "sip:{b}";
        t_relay();
    }}
}}
branch_route[BR] {{
    if ($ru == "sip:parallel@{b}") {{
        record_route(";b=1");
    }}
}}
"#,
        a = a.addr(),
        b = b.addr()
    ));
    let proxy = srv.udp;
    let invite = |user: &str, call: &str| {
        let me = caller.addr();
        format!(
            "INVITE sip:{user}@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call}\r\n\
             From: <sip:alice@{me}>;tag=ft-{call}\r\nTo: <sip:{user}@{proxy}>\r\nCall-ID: {call}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ours = format!("Record-Route: <sip:{proxy};lr;ftag=ft-");
    // Serial: a refuses, the failure route relays to b with the same Record-Route.
    caller.send(proxy, &invite("serial", "rr-serial"));
    let (to_a, from) = a.recv("INVITE ");
    assert_eq!(rr_lines(&to_a), [format!("{ours}rr-serial>")]);
    assert!(
        to_a.starts_with(&format!(
            "INVITE sip:serial@{proxy} SIP/2.0\r\nRecord-Route:"
        )),
        "{to_a}"
    );
    a.refuse(&to_a, from);
    let (to_b, from) = b.recv("INVITE ");
    assert_eq!(rr_lines(&to_b), [format!("{ours}rr-serial>")], "{to_b}");
    b.refuse(&to_b, from);
    caller.recv("SIP/2.0 486");
    // Parallel: only the branch whose branch_route asked gets it.
    caller.send(proxy, &invite("parallel", "rr-par"));
    let (to_a, from_a) = a.recv("INVITE ");
    let (to_b, from_b) = b.recv("INVITE ");
    assert!(rr_lines(&to_a).is_empty(), "{to_a}");
    assert_eq!(rr_lines(&to_b), [format!("{ours}rr-par;b=1>")], "{to_b}");
    a.refuse(&to_a, from_a);
    b.refuse(&to_b, from_b);
    caller.recv("SIP/2.0 486");
}
