//! evapi end to end: the real binary, our own netstring clients in Rust, a
//! Python client on PyPI's pynetstring, and sipp traffic next to a client
//! that never reads.

use super::harness::{Server, UdpUac, request};
use super::jsonrpcs::{rpc_doc, stat};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const W: Duration = Duration::from_secs(5);

fn cfg(extra: &str) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "evapi.so"
loadmodule "jsonrpcs.so"
modparam("evapi", "bind_addr", "127.0.0.1:0")
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
{extra}
event_route[evapi:connection-new] {{
    xlog("L_INFO", "evapi new $evapi(conidx) from $evapi(srcaddr)\n");
}}
event_route[evapi:connection-closed] {{
    xlog("L_INFO", "evapi closed $evapi(conidx)\n");
}}
event_route[evapi:message-received] {{
    $var(kind) = $(evapi(msg){{s.select,0,|}});
    if ($var(kind) == "tag") {{
        evapi_set_tag("$(evapi(msg){{s.select,1,|}})");
    }} else if ($var(kind) == "close") {{
        evapi_close();
    }} else if ($var(kind) == "answer") {{
        $var(contact) = $(evapi(msg){{s.select,3,|}});
        t_continue("$(evapi(msg){{s.select,1,|}})", "$(evapi(msg){{s.select,2,|}})", "ANSWER");
    }} else {{
        xlog("L_INFO", "evapi msg [$evapi(msg)] from $evapi(conidx)\n");
    }}
}}
request_route {{
    if (is_method("ACK")) {{ exit; }}
    if (is_method("MESSAGE")) {{
        evapi_relay("relay $hdr(X-N)");
    }} else if (is_method("INFO")) {{
        evapi_multicast("multi $hdr(X-N)", "$hdr(X-Tag)");
    }} else if (is_method("NOTIFY")) {{
        evapi_unicast("uni $hdr(X-N)", "$hdr(X-Tag)");
    }} else if (is_method("OPTIONS")) {{
        # 64 KiB per event: a client that does not read fills up fast.
        $var(big) = "0123456789abcdef";
        $var(i) = 0;
        while ($var(i) < 12) {{ $var(big) = $var(big) + $var(big); $var(i) = $var(i) + 1; }}
        evapi_relay("$var(big)");
    }} else if (is_method("PUBLISH")) {{
        # One route run, $hdr(X-N) small events.
        $var(i) = 0;
        while ($var(i) < $(hdr(X-N){{s.int}})) {{ evapi_relay("burst $var(i) $hdr(X-Pad)"); $var(i) = $var(i) + 1; }}
    }} else if (is_method("INVITE")) {{
        evapi_async_relay("suspend|$T(id_index)|$T(id_label)");
        exit;
    }}
    sl_send_reply("200", "OK");
}}
route[ANSWER] {{
    append_to_reply("Contact: $var(contact)\r\n");
    t_reply("302", "Moved Temporarily");
}}
"#
    )
}

fn evapi_addr(srv: &Server) -> SocketAddr {
    let deadline = Instant::now() + W;
    loop {
        if let Some(a) = srv.log.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("evapi listening on ")
                .map(|a| a.trim().parse().unwrap())
        }) {
            return a;
        }
        assert!(Instant::now() < deadline, "no evapi address");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the server lists `n` clients (and returns them).
fn clients(srv: &Server, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + W;
    loop {
        let c = rpc_doc(srv, "evapi.clients", json!([]))["result"].clone();
        if c.as_array().unwrap().len() == n {
            return c.as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "expected {n} clients: {c}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Our netstring client.
struct Ev {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ev {
    fn connect(a: SocketAddr) -> Ev {
        let s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Ev { s, buf: Vec::new() }
    }
    fn frame(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(colon) = self.buf.iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() > colon + len + 1 {
                    assert_eq!(self.buf[colon + 1 + len], b',');
                    let f =
                        String::from_utf8(self.buf[colon + 1..colon + 1 + len].to_vec()).unwrap();
                    self.buf.drain(..colon + len + 2);
                    return Some(f);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
        }
    }
    fn send(&mut self, payload: &str) {
        self.s
            .write_all(format!("{}:{payload},", payload.len()).as_bytes())
            .unwrap();
    }
    /// Whether the server closed this connection within `wait`.
    fn closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut b = [0u8; 65536];
        while Instant::now() < deadline {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                _ => {}
            }
        }
        false
    }
}

fn sip(srv: &Server, method: &str, n: u32, extra: &str) -> u16 {
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        method,
        uac.addr(),
        &format!("{method}{n}"),
        &format!("c{method}{n}"),
        &format!("X-N: {n}\r\n{extra}"),
    ));
    uac.final_code(W).expect("a final reply")
}

#[test]
fn relay_multicast_unicast_tags_and_max_clients() {
    let srv = Server::start(&cfg(""));
    let a = evapi_addr(&srv);
    let mut cs: Vec<Ev> = (0..4).map(|_| Ev::connect(a)).collect();
    clients(&srv, 4);
    // Relay: every client.
    assert_eq!(sip(&srv, "MESSAGE", 1, ""), 200);
    for c in &mut cs {
        assert_eq!(c.frame(W).as_deref(), Some("relay 1"));
    }
    // Tags: clients 0 and 2 are "blue" (0 connected first).
    cs[0].send("tag|blue");
    cs[2].send("tag|blue");
    cs[1].send("tag|red");
    let deadline = Instant::now() + W;
    while clients(&srv, 4)
        .iter()
        .filter(|c| c["tag"] == json!("blue"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline);
    }
    assert_eq!(sip(&srv, "INFO", 2, "X-Tag: blue\r\n"), 200);
    assert_eq!(cs[0].frame(W).as_deref(), Some("multi 2"));
    assert_eq!(cs[2].frame(W).as_deref(), Some("multi 2"));
    assert_eq!(cs[1].frame(Duration::from_millis(200)), None);
    assert_eq!(cs[3].frame(Duration::from_millis(50)), None);
    // Unicast: the oldest client with the tag only.
    assert_eq!(sip(&srv, "NOTIFY", 3, "X-Tag: blue\r\n"), 200);
    assert_eq!(cs[0].frame(W).as_deref(), Some("uni 3"));
    assert_eq!(cs[2].frame(Duration::from_millis(200)), None);
    // A tag does not survive its connection: the slot's next client starts untagged.
    drop(cs.remove(1));
    clients(&srv, 3);
    let mut again = Ev::connect(a);
    let list = clients(&srv, 4);
    assert!(list.iter().all(|c| c["tag"] != json!("red")), "{list:?}");
    assert_eq!(sip(&srv, "INFO", 4, "X-Tag: red\r\n"), 200);
    assert_eq!(again.frame(Duration::from_millis(300)), None);
    // Up to max_clients (8): the 9th is accepted and closed at once.
    let mut more: Vec<Ev> = (0..4).map(|_| Ev::connect(a)).collect();
    clients(&srv, 8);
    let mut ninth = Ev::connect(a);
    assert!(ninth.closed(W));
    assert_eq!(stat(&srv, "evapi:connections_refused"), 1);
    assert_eq!(clients(&srv, 8).len(), 8);
    // evapi_close() from the message route.
    more[0].send("close");
    assert!(more[0].closed(W));
    clients(&srv, 7);
    // Messages run the message route with $evapi(msg) and $evapi(conidx).
    more[1].send("hello");
    let deadline = Instant::now() + W;
    while !srv.log_contains("evapi msg [hello] from ") {
        assert!(Instant::now() < deadline, "message route did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        srv.log_soon("evapi closed 1"),
        "connection-closed ran for the dropped client"
    );
}

#[test]
fn partial_coalesced_garbage_and_oversized_frames() {
    let srv = Server::start(&cfg(""));
    let a = evapi_addr(&srv);
    // A frame split across writes, then two frames in one write.
    let mut c = Ev::connect(a);
    clients(&srv, 1);
    c.s.write_all(b"11:hel").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.s.write_all(b"lo world,5:one|1,5:two|2,").unwrap();
    let deadline = Instant::now() + W;
    while !(srv.log_contains("evapi msg [hello world]")
        && srv.log_contains("evapi msg [one|1]")
        && srv.log_contains("evapi msg [two|2]"))
    {
        assert!(Instant::now() < deadline, "frames not all received");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Garbage closes that client only.
    let mut bad = Ev::connect(a);
    clients(&srv, 2);
    bad.s.write_all(b"hello, this is not a netstring").unwrap();
    assert!(bad.closed(W));
    // So does a frame over 1 MiB (refused from its length, nothing buffered).
    let mut big = Ev::connect(a);
    clients(&srv, 2);
    big.s.write_all(b"2000000:xxxx").unwrap();
    assert!(big.closed(W));
    assert_eq!(stat(&srv, "evapi:bad_frames"), 2);
    // The first client is still served.
    assert_eq!(sip(&srv, "MESSAGE", 1, ""), 200);
    assert_eq!(c.frame(W).as_deref(), Some("relay 1"));
}

#[test]
fn raw_mode() {
    let srv = Server::start(&cfg("modparam(\"evapi\", \"netstring_format\", 0)"));
    let a = evapi_addr(&srv);
    let mut c = TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(W)).unwrap();
    clients(&srv, 1);
    assert_eq!(sip(&srv, "MESSAGE", 7, ""), 200);
    let mut b = [0u8; 64];
    let n = c.read(&mut b).unwrap();
    assert_eq!(&b[..n], b"relay 7");
    c.write_all(b"raw text").unwrap();
    let deadline = Instant::now() + W;
    while !srv.log_contains("evapi msg [raw text]") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn async_relay_then_t_continue_and_a_late_answer() {
    let srv = Server::start(&cfg("modparam(\"tm\", \"fr_timer\", 1000)"));
    let a = evapi_addr(&srv);
    let mut app = Ev::connect(a);
    clients(&srv, 1);
    // INVITE → the event names the suspended transaction → the answer resumes it → 302.
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "inv1", "cinv1", ""));
    let ev = app.frame(W).expect("the suspend event");
    let parts: Vec<&str> = ev.split('|').collect();
    assert_eq!(parts[0], "suspend");
    app.send(&format!(
        "answer|{}|{}|<sip:moved@127.0.0.1:5099>",
        parts[1], parts[2]
    ));
    let deadline = Instant::now() + W;
    let reply = loop {
        let m = uac
            .recv(deadline.saturating_duration_since(Instant::now()))
            .expect("a reply");
        if m.status().unwrap() >= 200 {
            break m;
        }
    };
    assert_eq!(reply.status(), Some(302));
    let contact = reply
        .headers_named(b"contact")
        .next()
        .map(|h| reply.header_value(h))
        .unwrap();
    assert_eq!(&contact[..], b"<sip:moved@127.0.0.1:5099>");
    // An answer after fr_timer: the caller got 408, the answer is ignored and counted.
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("INVITE", uac.addr(), "inv2", "cinv2", ""));
    let ev = app.frame(W).expect("the suspend event");
    let parts: Vec<&str> = ev.split('|').collect();
    assert_eq!(uac.final_code(W), Some(408));
    app.send(&format!(
        "answer|{}|{}|<sip:late@127.0.0.1>",
        parts[1], parts[2]
    ));
    let deadline = Instant::now() + W;
    while stat(&srv, "tm:late_resume") < 1 {
        assert!(Instant::now() < deadline, "late answer not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_never_reads_stalls_nothing() {
    let srv = Server::start(&cfg(""));
    let a = evapi_addr(&srv);
    let stuck = TcpStream::connect(a).unwrap();
    let mut reader = Ev::connect(a);
    clients(&srv, 2);
    // Count what the reading client gets, in a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0;
        while reader.frame(Duration::from_secs(3)).is_some() {
            n += 1;
        }
        let _ = tx.send(n);
    });
    // 600 OPTIONS, each relaying 64 KiB: the stuck client's queue fills and it is dropped.
    super::harness::sipp("options.xml", srv.udp, "u1", 600, 300, 20);
    let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(got, 600, "the reading client got every event");
    assert_eq!(stat(&srv, "evapi:slow_clients_closed"), 1);
    assert!(srv.log_soon("does not read"));
    drop(stuck);
}

/// What a Python client printed, once it ended.
fn output(mut child: std::process::Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    out
}

#[test]
fn python_pynetstring_client() {
    let srv = Server::start(&cfg(""));
    let a = evapi_addr(&srv);
    let script = r#"
import socket, sys, time
import pynetstring
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("connected", flush=True)
d = pynetstring.Decoder()
got = []
while len(got) < 3:
    got += d.feed(s.recv(65536))
s.sendall(pynetstring.encode("from python"))
print(" ".join(g.decode() for g in got), flush=True)
time.sleep(0.3)
"#;
    let child = std::process::Command::new("python3")
        .args(["-c", script, &a.ip().to_string(), &a.port().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    clients(&srv, 1);
    for n in 1..=3 {
        assert_eq!(sip(&srv, "MESSAGE", n, ""), 200);
    }
    let out = output(child);
    assert_eq!(out, "connected\nrelay 1 relay 2 relay 3\n");
    assert!(srv.log_soon("evapi msg [from python]"));
}

/// Waits until statistic `name` reaches `n` (it is counted as the connection goes).
fn stat_reaches(srv: &Server, name: &str, n: i64) {
    let deadline = Instant::now() + W;
    while stat(srv, name) < n {
        assert!(Instant::now() < deadline, "{name} did not reach {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stat(srv, name), n);
}

/// Reads netstrings until `want` arrived, EOF, or `wait`; checks they are
/// `burst 0 …`, `burst 1 …`, … in order; how many arrived in order.
fn count_burst(s: &mut TcpStream, want: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut buf, mut at, mut n) = (Vec::new(), 0usize, 0usize);
    let mut b = vec![0u8; 1 << 16];
    while n < want && Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&b[..k]),
            Err(_) => continue,
        }
        while let Some(colon) = buf[at..].iter().position(|c| *c == b':') {
            let len: usize = std::str::from_utf8(&buf[at..at + colon])
                .unwrap()
                .parse()
                .unwrap();
            let start = at + colon + 1;
            if buf.len() <= start + len {
                break;
            }
            assert!(buf[start..start + len].starts_with(format!("burst {n} ").as_bytes()));
            n += 1;
            at = start + len + 1;
        }
        buf.drain(..at);
        at = 0;
    }
    n
}

#[test]
fn a_burst_of_200k_events_reaches_fast_readers_and_a_stuck_client_is_cut_after_send_data_timeout() {
    // Measured (bench/evapi-burst.sh, CHILDREN=1): before, the writers did not
    // run while the route held the only SIP worker, every queue passed its
    // bound and every client was disconnected with 0 of 200,000 delivered; now
    // the readers get all and only the client that never reads goes.
    let srv = Server::start(&cfg(
        // One SIP worker: the route run holds it for the whole burst.
        "children=1\nmax_while_loops=300000\nmodparam(\"evapi\", \"send_data_timeout\", 1000000)",
    ));
    assert!(srv.log_soon("siphon started workers=1"));
    let a = evapi_addr(&srv);
    let stuck = TcpStream::connect(a).unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            std::thread::spawn(move || (count_burst(&mut s, 200_000, Duration::from_secs(60)), s))
        })
        .collect();
    clients(&srv, 3);
    // 50 bytes each: 10 MB per client, more than the kernel holds for one that does not read.
    assert_eq!(
        sip(
            &srv,
            "PUBLISH",
            200_000,
            &format!("X-Pad: {}\r\n", "p".repeat(36))
        ),
        200
    );
    let mut keep = Vec::new();
    for r in readers {
        let (n, s) = r.join().unwrap();
        assert_eq!(n, 200_000, "a fast reader got the whole burst");
        keep.push(s);
    }
    // The stuck client: cut for taking nothing, its queue counted as dropped.
    stat_reaches(&srv, "evapi:slow_clients_closed", 1);
    assert!(srv.log_soon("took no data for send_data_timeout (1000 ms)"));
    assert!(stat(&srv, "evapi:events_dropped") > 0);
    let deadline = Instant::now() + W;
    loop {
        let left = clients(&srv, 2);
        if left
            .iter()
            .all(|c| c["sent"] == json!(200_000) && c["dropped"] == json!(0))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stuck);
}

#[test]
fn a_disconnected_client_still_gets_what_was_queued_before() {
    // Before, closing a client discarded its queue: it got only what the kernel held.
    let srv = Server::start(&cfg(
        "modparam(\"evapi\", \"max_queue_bytes\", 67108864)\nmodparam(\"evapi\", \"send_data_timeout\", 60000000)",
    ));
    let a = evapi_addr(&srv);
    let mut c = TcpStream::connect(a).unwrap();
    clients(&srv, 1);
    // 400 events of 64 KiB while the client reads nothing: most wait in its queue.
    for n in 0..400 {
        assert_eq!(sip(&srv, "OPTIONS", n, ""), 200);
    }
    let listed = clients(&srv, 1);
    assert!(listed[0]["queued"].as_u64().unwrap() > 0, "{listed:?}");
    let r = rpc_doc(&srv, "evapi.close", json!([listed[0]["conidx"]]));
    assert_eq!(r["result"], json!("OK"), "{r}");
    // Everything arrives, then the connection ends.
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let frame = 65536 + "65536:,".len();
    assert_eq!(all.len(), 400 * frame);
    assert_eq!(stat(&srv, "evapi:events_dropped"), 0);
}

#[test]
fn auth_token_and_first_message_timeout() {
    let srv = Server::start(&cfg(
        "modparam(\"evapi\", \"auth_token\", \"s3cret\")\nmodparam(\"evapi\", \"first_message_timeout\", 3000)",
    ));
    let a = evapi_addr(&srv);
    let mut good = Ev::connect(a);
    good.send("s3cret");
    let mut silent = Ev::connect(a);
    let mut wrong = Ev::connect(a);
    wrong.send("s3creT");
    // Wrong token: closed at once, its message never reaches the route.
    assert!(wrong.closed(W));
    stat_reaches(&srv, "evapi:auth_failures", 1);
    // Nothing sent: closed at the deadline.
    assert!(silent.closed(W));
    stat_reaches(&srv, "evapi:first_message_timeouts", 1);
    // A client that has not authenticated yet gets no events; once it has, it does and may send.
    let mut late = Ev::connect(a);
    let listed = clients(&srv, 2);
    assert_eq!(listed[0]["ready"], json!(true), "{listed:?}");
    assert_eq!(listed[1]["ready"], json!(false), "{listed:?}");
    assert_eq!(sip(&srv, "MESSAGE", 1, ""), 200);
    assert_eq!(good.frame(W).as_deref(), Some("relay 1"));
    late.send("s3cret");
    late.send("hello after auth");
    assert!(srv.log_soon("evapi msg [hello after auth]"));
    assert_eq!(sip(&srv, "MESSAGE", 2, ""), 200);
    assert_eq!(
        late.frame(W).as_deref(),
        Some("relay 2"),
        "the first event it gets"
    );
    assert_eq!(good.frame(W).as_deref(), Some("relay 2"));
    good.send("hello");
    assert!(srv.log_soon("evapi msg [hello]"));
    assert!(
        !srv.log_contains("s3cre"),
        "tokens are neither routed nor logged"
    );
}

#[test]
fn first_message_timeout_without_a_token_closes_only_the_silent_client() {
    let srv = Server::start(&cfg("modparam(\"evapi\", \"first_message_timeout\", 1000)"));
    let a = evapi_addr(&srv);
    let mut talker = Ev::connect(a);
    talker.send("hi");
    let mut silent = Ev::connect(a);
    assert!(
        srv.log_soon("evapi msg [hi]"),
        "no token: the first message is routed"
    );
    assert!(silent.closed(W));
    stat_reaches(&srv, "evapi:first_message_timeouts", 1);
    assert!(srv.log_soon("sent nothing within first_message_timeout (1000 ms)"));
    // The one that spoke stays and gets events.
    clients(&srv, 1);
    assert_eq!(sip(&srv, "MESSAGE", 3, ""), 200);
    assert_eq!(talker.frame(W).as_deref(), Some("relay 3"));
}

#[test]
fn tls_with_python_ssl_and_a_plain_client_refused() {
    let dir = super::cli::Scratch::new("evapi-tls");
    let (ca, cert, key) = super::harness::test_certs(&dir);
    let srv = Server::start(&cfg(&format!(
        "modparam(\"evapi\", \"tls_certificate\", \"{}\")\nmodparam(\"evapi\", \"tls_private_key\", \"{}\")\nmodparam(\"evapi\", \"workers\", 2)\nmodparam(\"evapi\", \"send_task_timeout\", 200000)",
        cert.display(),
        key.display()
    )));
    assert!(srv.log_soon("evapi: workers=2, send_task_timeout=200000 has no effect"));
    let a = evapi_addr(&srv);
    // A client that does not speak TLS is closed and counted.
    let mut plain = Ev::connect(a);
    plain.send("hello");
    assert!(plain.closed(W));
    stat_reaches(&srv, "evapi:tls_failures", 1);
    let script = r#"
import socket, ssl, sys
import pynetstring
ctx = ssl.create_default_context(cafile=sys.argv[3])
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname="127.0.0.1")
s.settimeout(5)
print("connected", s.version(), flush=True)
d = pynetstring.Decoder()
got = []
while not got:
    got += d.feed(s.recv(65536))
s.sendall(pynetstring.encode("over tls"))
print(got[0].decode(), flush=True)
s.close()
"#;
    let child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &a.ip().to_string(),
            &a.port().to_string(),
            &ca.display().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    clients(&srv, 1);
    assert_eq!(sip(&srv, "MESSAGE", 5, ""), 200);
    let out = output(child);
    assert!(out.starts_with("connected TLSv1."), "{out}");
    assert!(out.ends_with("\nrelay 5\n"), "{out}");
    assert!(srv.log_soon("evapi msg [over tls]"));
}
