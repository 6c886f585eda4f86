//! xhttp + jsonrpcs over HTTP end to end: the real binary, HTTP on its SIP
//! TCP listener, our own keep-alive client, curl, and Python's jsonrpcclient.

use super::harness::{Server, TcpUac, request};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The seed's xhttp example (jsonrpcs README), with a 403 for a header
/// instead of a non-local source address (tests only use loopback).
const CFG: &str = r#"
loadmodule "tm.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "transport", 1)
modparam("xhttp", "url_skip", "^/skipped")
tcp_accept_no_cl=yes
event_route[xhttp:request] {
    if ($hdr(X-Deny) != $null) {
        xhttp_reply("403", "Forbidden", "text/html", "<html><body>Not allowed from $si</body></html>");
        exit;
    }
    if ($hu =~ "^/RPC") {
        jsonrpc_dispatch();
    } else if ($hu =~ "^/silent") {
        xlog("L_INFO", "no reply for $hu\n");
    } else {
        xhttp_reply("200", "OK", "text/html", "<html><body>Wrong URL $hu from $si:$sp to port $Rp, $rm, body [$rb]</body></html>");
    }
    return;
}
request_route {
    sl_send_reply("200", "OK");
}
"#;

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpAnswer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A keep-alive HTTP/1.1 client (Content-Length bodies only: what siphon sends).
pub(crate) struct HttpConn {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl HttpConn {
    pub(crate) fn new(to: SocketAddr) -> HttpConn {
        let s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        HttpConn {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        }
    }
    pub(crate) fn send(&mut self, method: &str, path: &str, headers: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.wr.write_all(head.as_bytes()).unwrap();
        self.wr.write_all(body).unwrap();
    }
    pub(crate) fn recv(&mut self) -> Option<HttpAnswer> {
        let mut line = String::new();
        if self.rd.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut it = line.trim_end().splitn(3, ' ');
        let _version = it.next()?;
        let status = it.next()?.parse().ok()?;
        let reason = it.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.rd.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        self.rd.read_exact(&mut body).ok()?;
        Some(HttpAnswer {
            status,
            reason,
            headers,
            body,
        })
    }
    pub(crate) fn post(&mut self, path: &str, body: &str) -> HttpAnswer {
        self.send(
            "POST",
            path,
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
        self.recv().expect("an HTTP answer")
    }
}

#[test]
fn json_rpc_over_http_on_the_sip_tcp_listener() {
    let srv = Server::start(CFG);
    let mut c = HttpConn::new(srv.tcp);
    // Success, on one keep-alive connection for everything below.
    let a = c.post(
        "/RPC",
        r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#,
    );
    assert_eq!(
        (a.status, a.header("content-type")),
        (200, Some("application/json"))
    );
    assert!(
        a.json()["result"].as_str().unwrap().starts_with("siphon "),
        "{a:?}"
    );
    assert_eq!(a.json()["id"], json!(1));
    // Each JSON-RPC error, always answered (also a parse error).
    let code = |c: &mut HttpConn, doc: &str| c.post("/RPC", doc).json()["error"]["code"].clone();
    assert_eq!(code(&mut c, "{nope"), json!(-32700));
    assert_eq!(code(&mut c, r#"{"jsonrpc":"2.0","id":3}"#), json!(-32600));
    assert_eq!(
        code(&mut c, r#"{"jsonrpc":"2.0","method":"no.such","id":4}"#),
        json!(-32601)
    );
    assert_eq!(
        code(
            &mut c,
            r#"{"jsonrpc":"2.0","method":"system.methodHelp","id":5}"#
        ),
        json!(-32602)
    );
    assert_eq!(code(&mut c, ""), json!(-32700));
    // A batch, string ids echoed as strings; notifications in it are not answered.
    let a = c.post(
        "/RPC",
        r#"[{"jsonrpc":"2.0","method":"core.echo","params":["x"],"id":"a"},
            {"jsonrpc":"2.0","method":"core.echo","params":["quiet"]},
            {"jsonrpc":"2.0","method":"core.echo","params":{"n":7},"id":9}]"#,
    );
    assert_eq!(
        a.json(),
        json!([{"jsonrpc":"2.0","result":["x"],"id":"a"},{"jsonrpc":"2.0","result":[7],"id":9}])
    );
    // Only notifications: 204 No Content, and the connection goes on.
    let a = c.post(
        "/RPC",
        r#"{"jsonrpc":"2.0","method":"core.echo","params":[1]}"#,
    );
    assert_eq!((a.status, a.body.len()), (204, 0));
    // The script's own replies, with PVs of the HTTP request.
    c.send("PUT", "/other?q=1", "", b"payload");
    let a = c.recv().unwrap();
    assert_eq!((a.status, a.reason.as_str()), (200, "OK"));
    let text = String::from_utf8(a.body).unwrap();
    assert!(
        text.contains("Wrong URL /other?q=1 from 127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains(&format!("to port {}, PUT, body [payload]", srv.tcp.port())),
        "{text}"
    );
    c.send("GET", "/RPC", "X-Deny: 1\r\n", b"");
    let a = c.recv().unwrap();
    assert_eq!((a.status, a.reason.as_str()), (403, "Forbidden"));
    assert_eq!(a.header("server"), Some("siphon"));
    // url_skip: not given to the script.
    c.send("GET", "/skipped/x", "", b"");
    assert_eq!(c.recv().unwrap().status, 404);
    // No reply from the script: 500, not silence.
    c.send("GET", "/silent", "", b"");
    assert_eq!(c.recv().unwrap().status, 500);
    // Pipelined requests, answered in order.
    for id in 10..13 {
        c.send(
            "POST",
            "/RPC",
            "",
            format!(r#"{{"jsonrpc":"2.0","method":"core.echo","params":[{id}],"id":{id}}}"#)
                .as_bytes(),
        );
    }
    for id in 10..13 {
        assert_eq!(c.recv().unwrap().json()["result"], json!([id]));
    }
    // SIP still works on the same listener.
    let mut uac = TcpUac::new(srv.tcp);
    uac.send(&request("OPTIONS", uac.addr(), "h1", "c1", ""));
    assert_eq!(
        uac.recv(Duration::from_secs(3)).map(|m| m.status()),
        Some(Some(200))
    );
}

#[test]
fn oversized_bodies_and_broken_http_lose_only_their_connection() {
    let srv = Server::start(CFG);
    let mut big = HttpConn::new(srv.tcp);
    // The 413 comes from the announced length, before any body: sending the
    // body too would race the server's close (a reset can eat the answer).
    let head = format!(
        "POST /RPC HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    big.wr.write_all(head.as_bytes()).unwrap();
    let a = big.recv().unwrap();
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"]["code"], json!(-32600));
    // A garbage header line: 400 from hyper, the server goes on.
    let mut bad = TcpStream::connect(srv.tcp).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"GET /RPC HTTP/1.1\r\nno colon here\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    let _ = bad.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    // A client that stops half way through its headers does not hold anyone else.
    let mut slow = TcpStream::connect(srv.tcp).unwrap();
    slow.write_all(b"POST /RPC HTTP/1.1\r\nContent-Le").unwrap();
    let mut c = HttpConn::new(srv.tcp);
    let a = c.post("/RPC", r#"{"jsonrpc":"2.0","method":"core.uptime","id":1}"#);
    assert!(a.json()["result"]["uptime"].is_number(), "{a:?}");
    let stats = c.post(
        "/RPC",
        r#"{"jsonrpc":"2.0","method":"stats.get_statistics","params":["xhttp:"],"id":2}"#,
    );
    let list = stats.json()["result"].clone();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s == "xhttp:too_large = 1"),
        "{list}"
    );
    drop(slow);
}

#[test]
fn curl_posts_to_the_rpc_url() {
    let srv = Server::start(CFG);
    let url = format!("http://{}/RPC", srv.tcp);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(r#"{"jsonrpc":"2.0","method":"core.echo","params":["from curl"],"id":"c1"}"#)
        .arg(&url)
        .output()
        .expect("curl (apt-get install curl; .ci/run does it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"jsonrpc":"2.0","result":["from curl"],"id":"c1"}));
    // The seed's own curl example: GET with a body.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-X", "GET", "-d"])
        .arg(r#"{"jsonrpc": "2.0", "method": "core.psx", "id": 1}"#)
        .arg(&url)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["result"].is_array(), "{v}");
}

#[test]
fn python_jsonrpcclient_over_http() {
    let srv = Server::start(CFG);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/jsonrpcclient_http.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/RPC", srv.tcp))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "jsonrpcclient over HTTP failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_xhttp_http_connections_are_closed_and_sip_goes_on() {
    let srv = Server::start("request_route { sl_send_reply(\"200\", \"OK\"); }\n");
    let mut s = TcpStream::connect(srv.tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let mut uac = TcpUac::new(srv.tcp);
    uac.send(&request("OPTIONS", uac.addr(), "h2", "c2", ""));
    assert_eq!(
        uac.recv(Duration::from_secs(3)).map(|m| m.status()),
        Some(Some(200))
    );
}

#[test]
fn prometheus_metrics_parsed_by_prometheus_client() {
    let srv = Server::start(
        r#"
loadmodule "xhttp.so"
loadmodule "xhttp_prom.so"
modparam("xhttp_prom", "xhttp_prom_stats", "core: sl:")
modparam("xhttp_prom", "prom_counter", "name=calls; label=method:result")
modparam("xhttp_prom", "prom_gauge", "name=load")
event_route[xhttp:request] {
    if (prom_check_uri()) {
        prom_dispatch();
        exit;
    }
    xhttp_reply("404", "Not Found", "text/plain", "");
}
request_route {
    prom_counter_inc("calls", "1", "$rm", "ok");
    prom_gauge_set("load", "2.5");
    sl_send_reply("200", "OK");
}
"#,
    );
    let uac = super::harness::UdpUac::new(srv.udp);
    for i in 0..3 {
        uac.send(&request(
            "OPTIONS",
            uac.addr(),
            &format!("p{i}"),
            &format!("cp{i}"),
            "",
        ));
        assert_eq!(uac.final_code(Duration::from_secs(3)), Some(200));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/prom_scrape.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/metrics", srv.tcp))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client (pip install prometheus_client; .ci/run does it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    // (The parser names counter samples `_total`.)
    assert_eq!(
        m["kamailio_calls_total"],
        json!([[{"method": "OPTIONS", "result": "ok"}, 3.0]]),
        "{m}"
    );
    assert_eq!(m["kamailio_load"], json!([[{}, 2.5]]));
    assert_eq!(m["kamailio_core_rcv_requests"], json!([[{}, 3.0]]));
    assert_eq!(m["kamailio_sl_2xx_replies"], json!([[{}, 3.0]]));
    // Only the groups asked for.
    assert!(m.get("kamailio_tm_created").is_none(), "{m}");
}

/// What a raw HTTP client gets until the server closes (at most 15 s).
fn raw_exchange(to: SocketAddr, text: &[u8]) -> String {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(text).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn xhttp_stat(c: &mut HttpConn, name: &str) -> Value {
    let doc = json!({"jsonrpc":"2.0","method":"stats.get_statistics","params":[name],"id":1});
    let list = c.post("/RPC", &doc.to_string()).json()["result"].clone();
    list.as_array()
        .unwrap()
        .iter()
        .find_map(|s| {
            s.as_str()?
                .strip_prefix(&format!("{name} = "))?
                .parse::<i64>()
                .ok()
        })
        .map_or(Value::Null, |n| json!(n))
}

/// An announced body that never comes, a chunked body that never ends and a
/// huge Content-Length: answered (408, 408, 413) and closed, not held open.
/// Measured: each connection ends after `body_timeout` (300 ms here; the
/// default is 10 s); before, all three stayed open indefinitely.
#[test]
fn bodies_that_never_arrive_get_408_and_huge_lengths_413_at_once() {
    let srv = Server::start(&CFG.replace(
        "modparam(\"xhttp\", \"url_skip\"",
        "modparam(\"xhttp\", \"body_timeout\", 300)\nmodparam(\"xhttp\", \"url_skip\"",
    ));
    let got = raw_exchange(
        srv.tcp,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    let got = raw_exchange(
        srv.tcp,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"",
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    let got = raw_exchange(
        srv.tcp,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    let mut c = HttpConn::new(srv.tcp);
    assert_eq!(xhttp_stat(&mut c, "xhttp:body_timeouts"), json!(2));
    assert_eq!(xhttp_stat(&mut c, "xhttp:too_large"), json!(1));
}

fn batch(n: usize, method: &str, params: Value) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"jsonrpc":"2.0","method":method,"params":params,"id":i}))
        .collect();
    Value::Array(items).to_string()
}

/// A 1 MiB batch of `stats.fetch all` once produced a 34 MB reply. Now: at
/// most `max_batch_items` items (one -32600 error otherwise) and a reply of at
/// most `max_reply_size` bytes (one -32603 error otherwise), both counted.
#[test]
fn batches_and_replies_are_bounded() {
    let srv = Server::start(&CFG.replace(
        "modparam(\"jsonrpcs\", \"transport\", 1)",
        "modparam(\"jsonrpcs\", \"transport\", 1)\nmodparam(\"jsonrpcs\", \"max_reply_size\", 20000)",
    ));
    let mut c = HttpConn::new(srv.tcp);
    // 100 items (the default bound) are answered, 101 are not.
    let a = c.post("/RPC", &batch(100, "core.echo", json!([1])));
    assert_eq!(a.json().as_array().map(Vec::len), Some(100));
    let a = c.post("/RPC", &batch(101, "core.echo", json!([1])));
    let e = &a.json()["error"];
    assert_eq!(e["code"], json!(-32600), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("max_batch_items"),
        "{e}"
    );
    // 100 × every statistic is far over 20000 bytes: one error instead.
    let a = c.post("/RPC", &batch(100, "stats.fetch", json!(["all"])));
    assert!(a.body.len() < 1000, "{} bytes", a.body.len());
    let e = &a.json()["error"];
    assert_eq!(e["code"], json!(-32603), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("reply too large"),
        "{e}"
    );
    // A single reply over the bound keeps its id.
    let big =
        json!({"jsonrpc":"2.0","method":"core.echo","params":["x".repeat(30_000)],"id":"big"});
    let a = c.post("/RPC", &big.to_string());
    assert_eq!(
        (a.json()["error"]["code"].clone(), a.json()["id"].clone()),
        (json!(-32603), json!("big"))
    );
    assert_eq!(xhttp_stat(&mut c, "jsonrpcs:batch_refused"), json!(1));
    assert_eq!(xhttp_stat(&mut c, "jsonrpcs:reply_too_large"), json!(2));
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "-D", "-"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// `http_auth_file`: Basic and Bearer credentials, read-only ones refused
/// state-changing commands; each state-changing command logged with its source.
#[test]
fn http_management_requires_credentials() {
    let dir = super::cli::Scratch::new("jrpc-auth");
    let file = dir.write(
        "rpc.auth",
        "# who may manage\nbasic admin:adm1n:pw rw\nbasic viewer:look ro\nbearer t0ken-123 rw\n",
    );
    let srv = Server::start(&CFG.replace(
        "modparam(\"jsonrpcs\", \"transport\", 1)",
        &format!("modparam(\"jsonrpcs\", \"transport\", 1)\nmodparam(\"jsonrpcs\", \"http_auth_file\", \"{file}\")"),
    ));
    let url = format!("http://{}/RPC", srv.tcp);
    let doc = |m: &str| format!(r#"{{"jsonrpc":"2.0","method":"{m}","params":["all"],"id":1}}"#);
    let json_of = |body: &str| -> Value {
        serde_json::from_str(body.split("\r\n\r\n").last().unwrap()).unwrap()
    };
    // No credentials, then a wrong password: 401 with the challenge.
    let (code, text) = curl(&["-d", &doc("core.version"), &url]);
    assert_eq!(code, 401, "{text}");
    assert!(
        text.contains("www-authenticate: Basic realm=\"siphon\""),
        "{text}"
    );
    let (code, _) = curl(&["-u", "admin:adm1n:PW", "-d", &doc("core.version"), &url]);
    assert_eq!(code, 401);
    // Read-only: reading works, resetting does not.
    let (code, text) = curl(&[
        "-u",
        "viewer:look",
        "-d",
        &doc("stats.get_statistics"),
        &url,
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(json_of(&text)["result"].is_array(), "{text}");
    let (_, text) = curl(&[
        "-u",
        "viewer:look",
        "-d",
        &doc("stats.reset_statistics"),
        &url,
    ]);
    assert_eq!(json_of(&text)["error"]["code"], json!(-32001), "{text}");
    // Read-write, by token and by password.
    let (_, text) = curl(&[
        "-H",
        "Authorization: Bearer t0ken-123",
        "-d",
        r#"{"jsonrpc":"2.0","method":"stats.get_statistics","params":["jsonrpcs:"],"id":2}"#,
        &url,
    ]);
    let list = json_of(&text)["result"].clone();
    let has = |s: &str| list.as_array().unwrap().iter().any(|x| x == s);
    assert!(has("jsonrpcs:read_only_refused = 1"), "{list}");
    assert!(has("jsonrpcs:auth_failures = 2"), "{list}");
    let (_, text) = curl(&[
        "-u",
        "admin:adm1n:pw",
        "-d",
        &doc("stats.reset_statistics"),
        &url,
    ]);
    assert_eq!(json_of(&text)["result"], json!("ok"), "{text}");
    assert!(srv.log_soon("stats.reset_statistics (changes state) from http 127.0.0.1:"));
    assert!(srv.log_contains("user admin"));
    let (code, _) = curl(&[
        "-H",
        "Authorization: Bearer t0ken-12",
        "-d",
        &doc("core.version"),
        &url,
    ]);
    assert_eq!(code, 401);
}

/// README's locked-down management plane: HTTPS through the tls module,
/// credentials, TLS and local sources only; plain HTTP is refused.
#[test]
fn the_locked_down_configuration_of_the_readme() {
    let dir = super::cli::Scratch::new("jrpc-locked");
    let (ca, cert, key) = super::harness::test_certs(&dir);
    let auth = dir.write("rpc.auth", "basic admin:s3cret rw\n");
    let srv = Server::start(&format!(
        r#"
listen=tls:127.0.0.1:0
loadmodule "tls.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
modparam("tls", "certificate", "{}")
modparam("tls", "private_key", "{}")
modparam("jsonrpcs", "transport", 1)
modparam("jsonrpcs", "http_auth_file", "{auth}")
event_route[xhttp:request] {{
    if ($pr != "tls" || $si != "127.0.0.1") {{
        xhttp_reply("403", "Forbidden", "text/plain", "");
        exit;
    }}
    if ($hu =~ "^/RPC") {{ jsonrpc_dispatch(); exit; }}
    xhttp_reply("404", "Not Found", "text/plain", "");
}}
"#,
        cert.display(),
        key.display()
    ));
    let tls = srv
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("listening on tls:")
                .map(|a| a.trim().to_string())
        })
        .expect("a tls listener");
    assert!(
        !srv.log_contains("jsonrpcs listening on"),
        "no FIFO, no datagram socket"
    );
    let doc = r#"{"jsonrpc":"2.0","method":"core.uptime","id":1}"#;
    let https = format!("https://{tls}/RPC");
    let cacert = ca.display().to_string();
    let (code, text) = curl(&["--cacert", &cacert, "-u", "admin:s3cret", "-d", doc, &https]);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"uptime\""), "{text}");
    let (code, _) = curl(&["--cacert", &cacert, "-d", doc, &https]);
    assert_eq!(code, 401);
    let (code, _) = curl(&[
        "-u",
        "admin:s3cret",
        "-d",
        doc,
        &format!("http://{}/RPC", srv.tcp),
    ]);
    assert_eq!(code, 403);
}
