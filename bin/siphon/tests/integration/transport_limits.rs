//! SIP transport hardening end to end: a kept message owns only its bytes
//! (memory per parked transaction, with and without junk datagrams between
//! the INVITEs), TCP connections that end (`tcp_connection_lifetime`,
//! `tcp_msg_read_timeout`, `tcp_max_connections_per_ip`), no request
//! smuggling with two Content-Lengths, and a reply too large for UDP
//! replaced by a 500 the transaction keeps.

use super::harness::{Server, TcpUac, UdpUac, request};
use super::jsonrpcs::stat;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const W: Duration = Duration::from_secs(3);

/// jsonrpcs over UDP only, for the statistics.
const RPC: &str = r#"
loadmodule "tm.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
"#;

/// Waits (at most 10 s) until statistic `name` reaches `want`; its last value.
fn stat_reaches(srv: &Server, name: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stat(srv, name);
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Parks `n` INVITE transactions (each answered 100 Trying, so the sender is
/// paced by the server); `junk` bytes of garbage go in a datagram before
/// each INVITE. Returns the RSS growth per transaction in bytes.
fn memory_per_parked_invite(n: usize, junk: usize) -> u64 {
    let srv = Server::start(&format!(
        "{RPC}modparam(\"tm\", \"fr_timer\", 300000)\n\
         request_route {{ if (is_method(\"INVITE\")) {{ t_newtran(); t_suspend(); exit; }} sl_send_reply(\"200\", \"OK\"); }}\n"
    ));
    let uac = UdpUac::new(srv.udp);
    let garbage = vec![b'x'; junk];
    // Warm up the paths (and the allocator) before the baseline.
    for i in 0..50 {
        uac.send(&request(
            "OPTIONS",
            uac.addr(),
            &format!("w{i}"),
            &format!("w{i}"),
            "",
        ));
        assert_eq!(uac.final_code(W), Some(200));
    }
    let before = rss_kib(srv.pid());
    for i in 0..n {
        if junk > 0 {
            uac.sock.send_to(&garbage, srv.udp).expect("send junk");
        }
        let inv = request("INVITE", uac.addr(), &format!("m{i}"), &format!("m{i}"), "");
        let mut tries = 0;
        loop {
            uac.send(&inv);
            match uac.recv(Duration::from_millis(500)) {
                Some(m) if m.status() == Some(100) => break,
                _ => {
                    tries += 1;
                    assert!(tries < 10, "no 100 Trying to INVITE {i}");
                }
            }
        }
    }
    assert_eq!(stat_reaches(&srv, "tm:suspended", n as i64), n as i64);
    let after = rss_kib(srv.pid());
    after.saturating_sub(before) * 1024 / n as u64
}

#[test]
fn parked_transactions_cost_their_message_not_the_receive_buffer() {
    const N: usize = 2000;
    let plain = memory_per_parked_invite(N, 0);
    let junk = memory_per_parked_invite(N, 60_000);
    eprintln!(
        "RSS per parked INVITE transaction: {plain} B without junk, {junk} B with 60 KB junk datagrams between"
    );
    // The old receive path pinned a 256 KiB block per few messages: ~170 KB each with junk.
    assert!(plain < 20_000, "{plain} B per transaction without junk");
    assert!(junk < 20_000, "{junk} B per transaction with junk between");
}

/// Whether the server closes `s` within 10 s (EOF or reset); bytes it sends first are skipped.
fn closed_by_server(s: &mut TcpStream) -> bool {
    read_until_closed(s).0
}

/// Reads `s` until the server closes it (at most 10 s): whether it did, and what it sent.
fn read_until_closed(s: &mut TcpStream) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut buf, mut got) = ([0u8; 4096], Vec::new());
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, got),
        }
    }
    (false, got)
}

const ANSWER: &str =
    "request_route { xlog(\"L_INFO\", \"routed $rm $ci\\n\"); sl_send_reply(\"200\", \"OK\"); }\n";

#[test]
fn a_silent_tcp_connection_is_closed_after_its_lifetime() {
    let srv = Server::start(&format!("{RPC}tcp_connection_lifetime=1\n{ANSWER}"));
    // One that never sends a byte (still sniffing), one idle after a message.
    let mut silent = TcpStream::connect(srv.tcp).unwrap();
    let mut uac = TcpUac::new(srv.tcp);
    uac.send(&request("OPTIONS", uac.addr(), "l1", "l1", ""));
    assert_eq!(uac.recv(W).and_then(|m| m.status()), Some(200));
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stays open"
    );
    assert_eq!(stat_reaches(&srv, "core:tcp_idle_closed", 2), 2);
}

#[test]
fn a_message_trickled_past_the_read_timeout_closes_the_connection() {
    let srv = Server::start(&format!(
        "{RPC}tcp_connection_lifetime=60\ntcp_msg_read_timeout=1\n{ANSWER}"
    ));
    let mut s = TcpStream::connect(srv.tcp).unwrap();
    let msg = request("OPTIONS", srv.tcp, "slow", "slow", "");
    // A byte every 100 ms keeps the connection from idling; the message never ends in time.
    let mut closed = false;
    for b in msg.as_bytes().iter().take(100) {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        if stat(&srv, "core:tcp_read_timeouts") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stat_reaches(&srv, "core:tcp_read_timeouts", 1), 1);
    assert!(closed || closed_by_server(&mut s));
    assert!(!srv.log_contains("routed OPTIONS slow"));
    // A message sent whole is served.
    let mut uac = TcpUac::new(srv.tcp);
    uac.send(&request("OPTIONS", uac.addr(), "fast", "fast", ""));
    assert_eq!(uac.recv(W).and_then(|m| m.status()), Some(200));
}

#[test]
fn tcp_connections_per_ip_are_limited() {
    let srv = Server::start(&format!("{RPC}tcp_max_connections_per_ip=2\n{ANSWER}"));
    let mut first = TcpUac::new(srv.tcp);
    let _second = TcpStream::connect(srv.tcp).unwrap();
    let mut third = TcpStream::connect(srv.tcp).unwrap();
    assert!(
        closed_by_server(&mut third),
        "the third connection from one address stays open"
    );
    assert_eq!(stat_reaches(&srv, "core:tcp_refused_per_ip", 1), 1);
    // SIP on a connection within the limit still works.
    first.send(&request("OPTIONS", first.addr(), "ip1", "ip1", ""));
    assert_eq!(first.recv(W).and_then(|m| m.status()), Some(200));
    // A closed connection gives its slot back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpUac::new(srv.tcp);
        again.send(&request("OPTIONS", again.addr(), "ip2", "ip2", ""));
        if again.recv(W).and_then(|m| m.status()) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot after a connection closed"
        );
    }
}

/// An INVITE whose first Content-Length covers a BYE in its body and whose
/// second says 0: a framer that reads the last and a parser that reads the
/// first would run the BYE as a request of its own.
fn smuggling_invite(from: SocketAddr) -> String {
    let inner = request("BYE", from, "inner", "smuggled", "");
    let outer = request("INVITE", from, "outer", "outer", "");
    let outer = outer.replace(
        "Content-Length: 0\r\n",
        &format!("Content-Length: {}\r\nContent-Length: 0\r\n", inner.len()),
    );
    format!("{outer}{inner}")
}

#[test]
fn two_content_lengths_never_smuggle_a_request() {
    let srv = Server::start(&format!("{RPC}{ANSWER}"));
    // Over TCP: framing refuses it, the connection closes, nothing is routed.
    let mut s = TcpStream::connect(srv.tcp).unwrap();
    s.write_all(smuggling_invite(srv.tcp).as_bytes()).unwrap();
    let (closed, answered) = read_until_closed(&mut s);
    let answered = String::from_utf8_lossy(&answered);
    assert!(!answered.contains("SIP/2.0"), "answered: {answered}");
    assert!(closed, "the connection stays open");
    assert_eq!(stat_reaches(&srv, "core:duplicate_content_length", 1), 1);
    let mut uac = TcpUac::new(srv.tcp);
    uac.send(&request("OPTIONS", uac.addr(), "after", "after", ""));
    assert_eq!(uac.recv(W).and_then(|m| m.status()), Some(200));
    assert!(srv.log_soon("routed OPTIONS after"));
    assert!(!srv.log_contains("smuggled"), "the smuggled BYE was routed");
    assert!(!srv.log_contains("routed INVITE outer"));
    // Over UDP: a 400 that says why, counted as a bad message.
    let bad_before = stat(&srv, "core:bad_msg_hdr");
    let udp = UdpUac::new(srv.udp);
    udp.send(&smuggling_invite(udp.addr()));
    let r = udp.recv(W).expect("a reply");
    assert_eq!(r.status(), Some(400));
    assert_eq!(
        r.get(match r.kind {
            siphon_sip::Kind::Response { reason, .. } => reason,
            _ => unreachable!(),
        }),
        b"Bad Request - duplicate Content-Length"
    );
    assert_eq!(stat(&srv, "core:bad_msg_hdr"), bad_before + 1);
    assert!(!srv.log_contains("smuggled"));
}

#[test]
fn a_reply_too_large_for_udp_becomes_a_500_the_transaction_keeps() {
    let srv = Server::start(&format!(
        "{RPC}request_route {{\n\
         append_to_reply(\"X-A: $hdr(X-Big)\\r\\nX-B: $hdr(X-Big)\\r\\n\");\n\
         if (is_method(\"INVITE\")) {{ t_newtran(); t_reply(\"200\", \"OK\"); exit; }}\n\
         sl_send_reply(\"200\", \"OK\");\n}}\n"
    ));
    let big = format!("X-Big: {}\r\n", "b".repeat(35_000));
    let uac = UdpUac::new(srv.udp);
    // Stateful: 100 Trying, then a 500 instead of a 70 KB 200.
    let inv = request("INVITE", uac.addr(), "big", "big", &big);
    uac.send(&inv);
    let r = uac.recv(W).expect("100 Trying");
    assert_eq!(r.status(), Some(100));
    let r = uac
        .recv(W)
        .expect("a final reply, not silence until timer H");
    assert_eq!(r.status(), Some(500));
    let reason = match r.kind {
        siphon_sip::Kind::Response { reason, .. } => r.get(reason).to_vec(),
        _ => unreachable!(),
    };
    assert_eq!(reason, b"Server Internal Error - Reply Too Large");
    // The transaction kept the 500: a retransmission of the INVITE is answered with it.
    uac.send(&inv);
    assert_eq!(uac.final_code(W), Some(500));
    assert_eq!(stat(&srv, "tm:5xx_replies"), 1);
    assert_eq!(stat(&srv, "tm:2xx_replies"), 0);
    // Stateless too.
    uac.send(&request("OPTIONS", uac.addr(), "bigo", "bigo", &big));
    assert_eq!(uac.final_code(W), Some(500));
    assert_eq!(stat_reaches(&srv, "core:oversized_replies", 2), 2);
    assert!(srv.log_soon("more than a UDP datagram holds"));
}

#[test]
fn a_silent_tls_connection_is_closed_after_its_lifetime() {
    let dir = super::cli::Scratch::new("tls-idle");
    let (ca, cert, key) = super::harness::test_certs(&dir);
    let srv = Server::start(&format!(
        "{RPC}listen=tls:127.0.0.1:0\ntcp_connection_lifetime=1\nloadmodule \"tls.so\"\n\
         modparam(\"tls\", \"certificate\", \"{}\")\nmodparam(\"tls\", \"private_key\", \"{}\")\n{ANSWER}",
        cert.display(),
        key.display()
    ));
    // openssl's client finishes the handshake, then says nothing; it exits when the server closes.
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(super::tls::tls_addr(&srv).to_string())
        .arg("-CAfile")
        .arg(&ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = false;
    while !exited && Instant::now() < deadline {
        exited = matches!(client.try_wait(), Ok(Some(_)));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = client.kill();
    let _ = client.wait();
    assert!(exited, "the silent TLS connection stays open");
    assert_eq!(stat_reaches(&srv, "core:tcp_idle_closed", 1), 1);
    assert_eq!(stat(&srv, "core:tls_handshake_failures"), 0);
}
