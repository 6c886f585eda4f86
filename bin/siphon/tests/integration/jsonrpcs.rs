//! jsonrpcs end to end: the real binary, over UDP, a unix datagram socket and
//! the FIFO; `jsonrpc_exec` from the script.

use super::harness::{Server, UdpUac, request};
use serde_json::{Value, json};
use std::net::UdpSocket;
use std::time::Duration;

fn cfg(dir: &str) -> String {
    format!(
        r#"
loadmodule "jsonrpcs.so"
loadmodule "tm.so"
modparam("jsonrpcs", "transport", 6)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
modparam("jsonrpcs", "fifo_name", "{dir}/siphon_rpc.fifo")
modparam("jsonrpcs", "fifo_reply_dir", "{dir}/")
request_route {{
    if (is_method("OPTIONS")) {{
        jsonrpc_exec('{{"jsonrpc": "2.0", "method": "core.echo", "params": ["$rm", 7], "id": 1}}');
        append_to_reply("X-Code: $jsonrpl(code)\r\nX-Body: $jsonrpl(body)");
        jsonrpc_exec('{{"jsonrpc": "2.0", "method": "no.such", "id": 2}}');
        append_to_reply("X-Code2: $jsonrpl(code) $jsonrpl(text)\r\n");
        sl_send_reply("200", "OK");
        exit;
    }}
}}
"#
    )
}

pub(crate) fn udp_addr(srv: &Server) -> std::net::SocketAddr {
    srv.log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("jsonrpcs listening on udp:")
                .map(|a| a.trim().parse().unwrap())
        })
        .expect("jsonrpcs udp address")
}

/// One command over the server's jsonrpcs UDP socket: the whole reply document.
pub(crate) fn rpc_doc(srv: &Server, method: &str, params: Value) -> Value {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let doc = json!({"jsonrpc":"2.0","method":method,"params":params,"id":1});
    rpc_udp(&sock, udp_addr(srv), &doc.to_string()).expect("a jsonrpcs reply")
}

/// A statistic's value (`stats.get_statistics NAME`).
pub(crate) fn stat(srv: &Server, name: &str) -> i64 {
    let r = rpc_doc(srv, "stats.get_statistics", json!([name]));
    r["result"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| {
            s.as_str()?
                .strip_prefix(&format!("{name} = "))?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {r}"))
}

pub(crate) fn rpc_udp(sock: &UdpSocket, to: std::net::SocketAddr, doc: &str) -> Option<Value> {
    sock.send_to(doc.as_bytes(), to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(serde_json::from_slice(&buf[..n]).expect("a JSON reply"))
}

#[test]
fn udp_transport_and_json_rpc_errors() {
    let dir = super::cli::Scratch::new("jrpc-udp");
    let srv = Server::start(&cfg(&dir.0.display().to_string()));
    let to = udp_addr(&srv);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = rpc_udp(
        &sock,
        to,
        r#"{"jsonrpc": "2.0", "method": "core.version", "id": 1}"#,
    )
    .unwrap();
    assert!(r["result"].as_str().unwrap().starts_with("siphon "), "{r}");
    // Names are ignored, order counts (the seed's example 1.16).
    let r = rpc_udp(
        &sock,
        to,
        r#"{"jsonrpc":"2.0","method":"core.echo","params":{"state":"ip","grpup":2},"id":"s"}"#,
    )
    .unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","result":["ip",2],"id":"s"}));
    assert_eq!(
        rpc_udp(&sock, to, "{nope").unwrap()["error"]["code"],
        -32700
    );
    assert_eq!(
        rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"1.0","method":"core.version","id":3}"#
        )
        .unwrap()["error"]["code"],
        -32600
    );
    let r = rpc_udp(&sock, to, r#"{"jsonrpc":"2.0","method":"nope","id":4}"#).unwrap();
    assert_eq!(
        (r["error"]["code"].clone(), r["id"].clone()),
        (json!(-32601), json!(4))
    );
    assert_eq!(
        rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"2.0","method":"system.methodHelp","params":[],"id":5}"#
        )
        .unwrap()["error"]["code"],
        -32602
    );
    // Batch with a notification: one reply element per request with an id.
    let r = rpc_udp(&sock, to, r#"[{"jsonrpc":"2.0","method":"core.echo","params":[1],"id":1},{"jsonrpc":"2.0","method":"core.echo","params":[2]},{"jsonrpc":"2.0","method":"x","id":3}]"#).unwrap();
    assert_eq!(r.as_array().unwrap().len(), 2);
    // A notification alone gets no reply.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"2.0","method":"core.echo","params":[1]}"#
        )
        .is_none()
    );
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // An oversized request gets an error reply; the server keeps serving.
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"core.echo","params":["{}"],"id":9}}"#,
        "x".repeat(66_000)
    );
    let _ = sock.send_to(big.as_bytes(), to);
    let r = rpc_udp(
        &sock,
        to,
        r#"{"jsonrpc":"2.0","method":"system.listMethods","id":6}"#,
    );
    let r = match r {
        Some(v) if v["id"] == json!(6) => v,
        _ => rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"2.0","method":"system.listMethods","id":6}"#,
        )
        .unwrap(),
    };
    let methods: Vec<String> = serde_json::from_value(r["result"].clone()).unwrap();
    for m in [
        "core.version",
        "core.uptime",
        "stats.get_statistics",
        "tm.stats",
        "jsonrpc.echo",
        "system.listMethods",
    ] {
        assert!(
            methods.iter().any(|x| x == m),
            "{m} missing from {methods:?}"
        );
    }
    // Statistics reflect SIP traffic.
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("OPTIONS", uac.addr(), "st1", "c-st1", ""));
    assert!(uac.recv(Duration::from_secs(3)).is_some());
    let r = rpc_udp(&sock, to, r#"{"jsonrpc":"2.0","method":"stats.get_statistics","params":["core:rcv_requests","sl:"],"id":7}"#).unwrap();
    let lines: Vec<String> = serde_json::from_value(r["result"].clone()).unwrap();
    assert!(
        lines.contains(&"core:rcv_requests = 1".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"sl:2xx_replies = 1".to_string()),
        "{lines:?}"
    );
    let r = rpc_udp(&sock, to, r#"{"jsonrpc":"2.0","method":"tm.stats","id":8}"#).unwrap();
    assert_eq!(r["result"]["current"], 0);
}

#[test]
fn jsonrpc_exec_from_the_script() {
    let dir = super::cli::Scratch::new("jrpc-exec");
    let srv = Server::start(&cfg(&dir.0.display().to_string()));
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("OPTIONS", uac.addr(), "e1", "c-e1", ""));
    let r = uac.recv(Duration::from_secs(3)).expect("reply");
    let h = |n: &[u8]| {
        String::from_utf8(
            r.headers_named(n)
                .next()
                .map(|h| r.header_value(h))
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(h(b"x-code"), "200");
    let body: Value = serde_json::from_str(&h(b"x-body")).unwrap();
    assert_eq!(body, json!({"jsonrpc":"2.0","result":["OPTIONS",7],"id":1}));
    assert_eq!(h(b"x-code2"), "-32601 Method not found: no.such");
}

#[test]
fn fifo_transport_with_reply_fifo() {
    let dir = super::cli::Scratch::new("jrpc-fifo");
    let d = dir.0.display().to_string();
    let srv = Server::start(&cfg(&d));
    let fifo = format!("{d}/siphon_rpc.fifo");
    assert!(srv.log_contains(&format!("jsonrpcs listening on fifo:{fifo}")));
    // As the seed's terminal example does it: mkfifo, cat the reply, echo the request.
    let reply = format!("{d}/reply_fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&reply)
            .status()
            .unwrap()
            .success()
    );
    let reader = std::thread::spawn({
        let reply = reply.clone();
        move || std::fs::read_to_string(&reply).unwrap()
    });
    // Two documents back to back in one write, then a bad reply_name (refused, no crash).
    let docs = r#"{"jsonrpc": "2.0", "method": "core.echo", "params": ["a"], "reply_name": "../escape", "id": 0}{"jsonrpc": "2.0", "method": "core.psx", "reply_name": "reply_fifo", "id": 1}"#;
    std::fs::write(&fifo, docs).unwrap();
    let text = reader.join().unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["id"], 1);
    assert!(v["result"].as_array().unwrap().len() >= 2, "{v}");
    // The server still serves after a reply FIFO nobody reads.
    std::fs::write(
        &fifo,
        r#"{"jsonrpc":"2.0","method":"core.echo","reply_name":"nobody_reads","id":2}"#,
    )
    .unwrap();
    let to = udp_addr(&srv);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(
        rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"2.0","method":"core.uptime","id":1}"#
        )
        .unwrap()["result"]["uptime"]
            .is_u64()
    );
}

#[test]
fn unix_datagram_transport() {
    let dir = super::cli::Scratch::new("jrpc-unix");
    let d = dir.0.display().to_string();
    let srv = Server::start(&format!(
        "loadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"{d}/rpc.sock\")\n"
    ));
    assert!(srv.log_contains("jsonrpcs listening on unix:"));
    let me = std::os::unix::net::UnixDatagram::bind(format!("{d}/client.sock")).unwrap();
    me.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    me.send_to(
        br#"{"jsonrpc":"2.0","method":"core.modules","id":1}"#,
        format!("{d}/rpc.sock"),
    )
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = me.recv(&mut buf).unwrap();
    let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(v["result"], json!(["jsonrpcs"]));
}

#[test]
fn python_jsonrpcclient_over_udp() {
    let dir = super::cli::Scratch::new("jrpc-py");
    let srv = Server::start(&cfg(&dir.0.display().to_string()));
    let to = udp_addr(&srv);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/jsonrpcclient_udp.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(to.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "jsonrpcclient (pip install jsonrpcclient; .ci/run does it) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (at most 10 s) until statistic `name` reaches `want`; its last value.
fn stat_reaches(srv: &Server, name: &str, want: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = stat(srv, name);
        if v >= want || std::time::Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkfifo(path: &str) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

/// Opens a FIFO for reading without blocking (and so without waiting for a writer).
fn open_reader(path: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// A batch whose reply is far over a pipe's 64 KiB: 100 × every statistic.
fn big_reply_request(reply_name: &str) -> String {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"jsonrpc":"2.0","method":"stats.fetch","params":["all"],"id":i,"reply_name":reply_name}))
        .collect();
    Value::Array(items).to_string()
}

/// The FIFO transport's hardening: a reader that never reads loses its reply
/// after the write deadline (3 s) instead of holding it forever; a symlink or
/// a FIFO of another owner planted in the reply directory is not written to;
/// garbage before a document does not lose the document.
#[test]
fn fifo_replies_are_bounded_and_go_only_to_real_fifos() {
    let dir = super::cli::Scratch::new("jrpc-fifo-hard");
    let d = dir.0.display().to_string();
    let srv = Server::start(&cfg(&d));
    let fifo = format!("{d}/siphon_rpc.fifo");
    let write = |text: &str| std::fs::write(&fifo, text).unwrap();
    // (a) A reader that opened its FIFO and never reads.
    let stuck = format!("{d}/stuck");
    mkfifo(&stuck);
    let _held = open_reader(&stuck);
    // A batch's reply goes to the first reply_name among its items.
    write(&big_reply_request("stuck"));
    // (b) A symlink to another FIFO, and a FIFO owned by someone else.
    let victim = format!("{d}/victim");
    mkfifo(&victim);
    let mut victim_rd = open_reader(&victim);
    std::os::unix::fs::symlink(&victim, format!("{d}/evil")).unwrap();
    write(r#"{"jsonrpc":"2.0","method":"core.version","reply_name":"evil","id":1}"#);
    assert_eq!(stat_reaches(&srv, "jsonrpcs:fifo_reply_refused", 1), 1);
    let mut got = Vec::new();
    let r = std::io::Read::read_to_end(&mut victim_rd, &mut got);
    assert!(got.is_empty(), "written through the link: {got:?} {r:?}");
    let foreign = format!("{d}/foreign");
    mkfifo(&foreign);
    let _foreign_rd = open_reader(&foreign);
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        write(r#"{"jsonrpc":"2.0","method":"core.version","reply_name":"foreign","id":1}"#);
        assert_eq!(stat_reaches(&srv, "jsonrpcs:fifo_reply_refused", 2), 2);
        assert!(srv.log_soon("owned by uid 65534"));
    }
    // (d) Garbage, then a valid document, in one write.
    let reply = format!("{d}/after_garbage");
    mkfifo(&reply);
    let reader = std::thread::spawn({
        let reply = reply.clone();
        move || std::fs::read_to_string(&reply).unwrap()
    });
    write(
        r#"this is not json {"jsonrpc":"2.0","method":"core.echo","params":["ok"],"reply_name":"after_garbage","id":7}"#,
    );
    let v: Value = serde_json::from_str(reader.join().unwrap().trim()).unwrap();
    assert_eq!(v, json!({"jsonrpc":"2.0","result":["ok"],"id":7}));
    assert_eq!(stat(&srv, "jsonrpcs:fifo_garbage"), 1);
    // (a) again: the stuck reply was given up, not kept.
    assert_eq!(stat_reaches(&srv, "jsonrpcs:fifo_reply_timeouts", 1), 1);
    assert!(srv.log_soon("did not take the reply within 3 s"));
}

/// Without fifo_reply_dir, replies go to the run directory, not /tmp/; and
/// `siphon ctl` says what to pass when its reply directory is not the server's.
#[test]
fn fifo_replies_default_to_the_run_dir_and_ctl_says_what_to_pass() {
    let dir = super::cli::Scratch::new("jrpc-rundir");
    let d = dir.0.display().to_string();
    let srv = Server::start(&format!(
        "run_dir=\"{d}/run\"\nloadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 2)\nmodparam(\"jsonrpcs\", \"fifo_name\", \"rpc.fifo\")\n"
    ));
    let fifo = format!("{d}/run/rpc.fifo");
    assert!(srv.log_contains(&format!("jsonrpcs listening on fifo:{fifo}")));
    let ctl = |reply_dir: &str| {
        crate::harness::siphon_command()
            .args([
                "ctl",
                "--fifo",
                &fifo,
                "--reply-dir",
                reply_dir,
                "core.version",
            ])
            .output()
            .unwrap()
    };
    let out = ctl(&format!("{d}/run"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("siphon"));
    let elsewhere = format!("{d}/elsewhere");
    let out = ctl(&elsewhere);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pass --reply-dir") && err.contains("fifo_reply_dir"),
        "{err}"
    );
}

/// `stats.get_statistics rcv_requests` (no group) as Kamailio answers it;
/// `dgram_socket` with a host name and with unbracketed IPv6.
#[test]
fn bare_statistic_names_and_datagram_sockets_by_name() {
    let srv = Server::start(
        "loadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:localhost:0\")\nrequest_route { sl_send_reply(\"200\", \"OK\"); }\n",
    );
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("OPTIONS", uac.addr(), "b1", "c-b1", ""));
    assert_eq!(uac.final_code(Duration::from_secs(3)), Some(200));
    let to = udp_addr(&srv);
    assert!(to.ip().is_loopback(), "{to}");
    let sock = UdpSocket::bind(if to.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    })
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = rpc_udp(
        &sock,
        to,
        r#"{"jsonrpc":"2.0","method":"stats.get_statistics","params":["rcv_requests"],"id":1}"#,
    )
    .unwrap();
    assert_eq!(r["result"], json!(["core:rcv_requests = 1"]), "{r}");
    // Unbracketed IPv6 (skipped where the host has no IPv6 loopback).
    if UdpSocket::bind("[::1]:0").is_ok() {
        let srv6 = Server::start(
            "loadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:::1:0\")\n",
        );
        assert!(srv6.log_contains("jsonrpcs listening on udp:[::1]:"));
        let to = udp_addr(&srv6);
        let sock = UdpSocket::bind("[::1]:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = rpc_udp(
            &sock,
            to,
            r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#,
        )
        .unwrap();
        assert!(r["result"].is_string(), "{r}");
    }
}

/// Over a datagram the reply is never built past the datagram limit: one
/// -32603 "reply too large", counted.
#[test]
fn datagram_replies_stop_at_the_datagram_limit() {
    let dir = super::cli::Scratch::new("jrpc-dgram-big");
    let srv = Server::start(&cfg(&dir.0.display().to_string()));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = rpc_udp(&sock, udp_addr(&srv), &big_reply_request("x")).unwrap();
    assert_eq!(r["error"]["code"], json!(-32603), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reply too large"),
        "{r}"
    );
    assert_eq!(stat(&srv, "jsonrpcs:reply_too_large"), 1);
}

/// A batch rendered item by item reads as `serde_json`'s pretty printer
/// writes the whole array.
#[test]
fn pretty_batches_are_rendered_as_one_document() {
    let srv = Server::start(
        "loadmodule \"jsonrpcs.so\"\nmodparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"pretty_format\", 1)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:127.0.0.1:0\")\n",
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(
        br#"[{"jsonrpc":"2.0","method":"core.echo","params":[1,{"a":[2,"x\ny"]}],"id":1},{"jsonrpc":"2.0","method":"core.echo"},{"jsonrpc":"2.0","method":"core.echo","params":[],"id":2}]"#,
        udp_addr(&srv),
    )
    .unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        text,
        format!("{}\n", serde_json::to_string_pretty(&v).unwrap())
    );
    assert_eq!(v.as_array().unwrap().len(), 2);
}
