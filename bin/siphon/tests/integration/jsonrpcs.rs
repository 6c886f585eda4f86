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
