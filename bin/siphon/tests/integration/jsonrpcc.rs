//! jsonrpcc end to end: the real binary asks application servers over TCP
//! netstrings while the call waits — a Python app (jsonrpcserver +
//! pynetstring) and our own Rust server for the fault modes. "Other hosts"
//! are 127.0.0.2 and 127.0.0.3.

use super::harness::{PyPeer, Server, UdpUac, request};
use super::jsonrpcs::rpc_doc;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const W: Duration = Duration::from_secs(5);

fn cfg(servers: &str, extra: &str) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "jsonrpcc.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcc", "servers", "{servers}")
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
{extra}
request_route {{
    if (is_method("MESSAGE")) {{
        jsonrpc_notification("update_user", "{{'id': 1234, 'name': 'Petros'}}");
        sl_send_reply("200", "OK");
        exit;
    }}
    $var(kept) = "yes";
    if ($hdr(X-Method) == "badparams") {{
        # Params that are no JSON at all: the function returns -1, routing goes on.
        jsonrpc_request("m", "not json at all", "RESPONSE", "ERROR", "$var(result)");
        sl_send_reply("488", "Not Acceptable Here");
        exit;
    }}
    jsonrpc_request("$hdr(X-Method)", "{{'id': 1234}}", "RESPONSE", "ERROR", "$var(result)");
}}
route[RESPONSE] {{
    append_to_reply("X-Result: $var(result)\r\nX-Kept: $var(kept)\r\n");
    t_reply("200", "OK");
}}
route[ERROR] {{
    append_to_reply("X-Error: $var(result)\r\n");
    t_reply("500", "Error");
}}
"#
    )
}

/// Sends an INVITE asking `method`; the final reply's code and X-Result/X-Error.
fn ask(srv: &Server, method: &str, n: &str) -> (u16, String) {
    ask_with(srv, method, n, "")
}

/// [`ask`] with extra header lines.
fn ask_with(srv: &Server, method: &str, n: &str, extra: &str) -> (u16, String) {
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "INVITE",
        uac.addr(),
        &format!("{method}{n}"),
        &format!("c{method}{n}"),
        &format!("X-Method: {method}\r\n{extra}"),
    ));
    let deadline = std::time::Instant::now() + W;
    while let Some(m) = uac.recv(deadline.saturating_duration_since(std::time::Instant::now())) {
        let code = m.status().unwrap();
        if code >= 200 {
            let h = m
                .headers_named(b"x-result")
                .chain(m.headers_named(b"x-error"))
                .next()
                .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
                .unwrap_or_default();
            return (code, h);
        }
    }
    panic!("no final reply for {method}");
}

/// X-Kept of a get_user answer: the $var set before the suspension.
fn ask_kept(srv: &Server) -> String {
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "INVITE",
        uac.addr(),
        "kept",
        "ckept",
        "X-Method: get_user\r\n",
    ));
    loop {
        let m = uac.recv(W).expect("a reply");
        if m.status().unwrap() >= 200 {
            return m
                .headers_named(b"x-kept")
                .next()
                .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
                .unwrap_or_default();
        }
    }
}

/// Our own application server, answering by method name: `ok` → "fine",
/// `err` → an error object, `garbage` → a frame that is not JSON, `silent`
/// → nothing, `close` → closes the connection, `slow` → "fine" after 20 ms.
struct RustApp {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl RustApp {
    fn start(ip: &str) -> RustApp {
        Self::on(TcpListener::bind((ip, 0)).unwrap())
    }
    fn on(l: TcpListener) -> RustApp {
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let count = count.clone();
                std::thread::spawn(move || serve_rust(s, count));
            }
        });
        RustApp { addr, requests }
    }
}

fn read_netstring(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = 0usize;
    let mut b = [0u8; 1];
    loop {
        r.read_exact(&mut b).ok()?;
        match b[0] {
            b'0'..=b'9' => len = len * 10 + (b[0] - b'0') as usize,
            b':' => break,
            _ => return None,
        }
    }
    let mut data = vec![0; len + 1];
    r.read_exact(&mut data).ok()?;
    data.pop();
    Some(data)
}

fn serve_rust(mut s: TcpStream, count: Arc<AtomicUsize>) {
    let mut w = s.try_clone().unwrap();
    while let Some(frame) = read_netstring(&mut s) {
        count.fetch_add(1, Ordering::Relaxed);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        let id = v["id"].clone();
        let reply = match v["method"].as_str().unwrap_or("") {
            "ok" => json!({"jsonrpc":"2.0","result":"fine","id":id}).to_string(),
            "slow" => {
                std::thread::sleep(Duration::from_millis(20));
                json!({"jsonrpc":"2.0","result":"fine","id":id}).to_string()
            }
            "err" => json!({"jsonrpc":"2.0","error":{"code":-32000,"message":"nope"},"id":id}).to_string(),
            "garbage" => "{not json".to_string(),
            "silent" => continue,
            "close" => return,
            _ => json!({"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":id}).to_string(),
        };
        let _ = w.write_all(format!("{}:{},", reply.len(), reply).as_bytes());
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_state(srv: &Server, server: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = rpc_doc(srv, "jsonrpcc.servers", json!([]))["result"].clone();
        if list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server"] == json!(server) && s["state"] == json!(state))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{server} never {state}: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python app (jsonrpcserver + pynetstring); its docs are the notifications it got.
fn python_app() -> PyPeer {
    PyPeer::start(
        "netstring_app.py",
        &["0"],
        "notify ",
        "jsonrpcserver pynetstring",
    )
}

#[test]
fn python_app_results_errors_and_notifications() {
    let app = python_app();
    let srv = Server::start(&cfg(&format!("127.0.0.1:{},1", app.port), ""));
    wait_state(&srv, &format!("127.0.0.1:{}", app.port), "connected");
    // An object result as compact JSON, the suspended request's $vars kept.
    assert_eq!(
        ask(&srv, "get_user", "1"),
        (200, r#"{"id":1234,"name":"Petros"}"#.into())
    );
    assert_eq!(ask_kept(&srv), "yes");
    // A string result without quotes.
    assert_eq!(ask(&srv, "get_name", "1"), (200, "Petros".into()));
    // A JSON-RPC error: the error object.
    assert_eq!(
        ask(&srv, "fail", "1"),
        (500, r#"{"code":7,"message":"no such user"}"#.into())
    );
    // The seed's notification, single-quoted params and all.
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("MESSAGE", uac.addr(), "n1", "cn1", ""));
    assert_eq!(uac.final_code(W), Some(200));
    assert_eq!(
        app.next().unwrap(),
        json!({"jsonrpc":"2.0","method":"update_user","params":{"id":1234,"name":"Petros"}})
    );
}

#[test]
fn fault_modes_reach_the_error_route() {
    let app = RustApp::start("127.0.0.2");
    let srv = Server::start(&cfg(
        &format!("{},1", app.addr),
        "modparam(\"jsonrpcc\", \"timeout\", 3000)",
    ));
    wait_state(&srv, &app.addr.to_string(), "connected");
    assert_eq!(ask(&srv, "ok", "1"), (200, "fine".into()));
    assert_eq!(
        ask(&srv, "err", "1"),
        (500, r#"{"code":-32000,"message":"nope"}"#.into())
    );
    // The connection closes mid-request: failure at once (well before the 3 s timeout).
    let t = std::time::Instant::now();
    assert_eq!(ask(&srv, "close", "1"), (500, "failure".into()));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // Reconnected by itself.
    wait_state(&srv, &app.addr.to_string(), "connected");
    // A reply that is not JSON: that connection is dropped, its request fails.
    assert_eq!(ask(&srv, "garbage", "1"), (500, "failure".into()));
    wait_state(&srv, &app.addr.to_string(), "connected");
    // Many in flight on one connection, matched by id.
    let uacs: Vec<UdpUac> = (0..20).map(|_| UdpUac::new(srv.udp)).collect();
    for (i, u) in uacs.iter().enumerate() {
        u.send(&request(
            "INVITE",
            u.addr(),
            &format!("p{i}"),
            &format!("cp{i}"),
            "X-Method: slow\r\n",
        ));
    }
    for u in &uacs {
        assert_eq!(u.final_code(W), Some(200));
    }
    let stats = rpc_doc(&srv, "jsonrpcc.servers", json!([]))["result"].clone();
    assert!(stats[0]["reconnects"].as_u64().unwrap() >= 2, "{stats}");
}

#[test]
fn no_reply_is_a_timeout() {
    let app = RustApp::start("127.0.0.1");
    let srv = Server::start(&cfg(
        &format!("{},1", app.addr),
        "modparam(\"jsonrpcc\", \"timeout\", 200)",
    ));
    wait_state(&srv, &app.addr.to_string(), "connected");
    assert_eq!(ask(&srv, "silent", "1"), (500, "timeout".into()));
    assert_eq!(ask(&srv, "ok", "2"), (200, "fine".into()));
    assert_eq!(ask(&srv, "badparams", "1"), (488, String::new()));
}

#[test]
fn round_robin_in_a_group_and_failover_to_the_next() {
    let a = RustApp::start("127.0.0.2");
    let b = RustApp::start("127.0.0.3");
    let low = RustApp::start("127.0.0.1");
    let down = free_port("127.0.0.1");
    let servers = format!(
        "{},2 {},2 {},1 127.0.0.1:{down},3",
        a.addr, b.addr, low.addr
    );
    let srv = Server::start(&cfg(&servers, ""));
    wait_state(&srv, &a.addr.to_string(), "connected");
    wait_state(&srv, &b.addr.to_string(), "connected");
    wait_state(&srv, &low.addr.to_string(), "connected");
    // The priority-3 server is down: group 2 serves, both of its servers.
    for i in 0..10 {
        assert_eq!(ask(&srv, "ok", &format!("rr{i}")), (200, "fine".into()));
    }
    assert_eq!(a.requests.load(Ordering::Relaxed), 5);
    assert_eq!(b.requests.load(Ordering::Relaxed), 5);
    assert_eq!(low.requests.load(Ordering::Relaxed), 0);
    // Group 2 goes away: the next group takes over.
    let stats_before = low.requests.load(Ordering::Relaxed);
    drop(srv);
    let srv = Server::start(&cfg(&format!("127.0.0.2:{down},2 {},1", low.addr), ""));
    wait_state(&srv, &low.addr.to_string(), "connected");
    assert_eq!(ask(&srv, "ok", "fo"), (200, "fine".into()));
    assert_eq!(low.requests.load(Ordering::Relaxed), stats_before + 1);
}

#[test]
fn reconnects_after_the_server_comes_back_and_max_conn_attempts() {
    let port = free_port("127.0.0.2");
    let port0 = free_port("127.0.0.3");
    let srv = Server::start(&cfg(
        &format!("127.0.0.2:{port},2 127.0.0.3:{port0},1"),
        "modparam(\"jsonrpcc\", \"max_conn_attempts\", -1)",
    ));
    // Both down at start: failure.
    assert_eq!(ask(&srv, "ok", "d1"), (500, "failure".into()));
    let app = RustApp::on(TcpListener::bind(("127.0.0.2", port)).unwrap());
    wait_state(&srv, &format!("127.0.0.2:{port}"), "connected");
    assert_eq!(ask(&srv, "ok", "d2"), (200, "fine".into()));
    assert_eq!(app.requests.load(Ordering::Relaxed), 1);
    drop(srv);
    // max_conn_attempts 0: down at start, never tried again.
    let srv = Server::start(&cfg(
        &format!("127.0.0.3:{port0},1"),
        "modparam(\"jsonrpcc\", \"max_conn_attempts\", 0)",
    ));
    wait_state(&srv, &format!("127.0.0.3:{port0}"), "gave up");
    let _late = RustApp::on(TcpListener::bind(("127.0.0.3", port0)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&srv, "ok", "d3"), (500, "failure".into()));
    drop(srv);
    // max_conn_attempts 2: two more tries, then it gives up.
    let port2 = free_port("127.0.0.1");
    let srv = Server::start(&cfg(
        &format!("127.0.0.1:{port2},1"),
        "modparam(\"jsonrpcc\", \"max_conn_attempts\", 2)",
    ));
    wait_state(&srv, &format!("127.0.0.1:{port2}"), "gave up");
    let s = rpc_doc(&srv, "jsonrpcc.servers", json!([]))["result"].clone();
    assert_eq!(s[0]["reconnects"], json!(2), "{s}");
}

fn jansson_cfg(servers: &[&str]) -> String {
    let params: String = servers
        .iter()
        .map(|s| format!("modparam(\"janssonrpcc\", \"server\", \"{s}\")\n"))
        .collect();
    format!(
        r#"
loadmodule "tm.so"
loadmodule "jansson.so"
loadmodule "janssonrpcc.so"
{params}
modparam("janssonrpcc", "result_pv", "$var(jsrpc_result)")
request_route {{
    if (is_method("ACK")) {{ exit; }}
    if (is_method("MESSAGE")) {{
        janssonrpc_notification("users", "update_user", '{{"id": 1234, "name": "Petros"}}');
        sl_send_reply("200", "OK");
        exit;
    }}
    janssonrpc_request("users", "$hdr(X-Method)", '{{"id": 1234}}', "route=RESULT;retry=$hdr(X-Retry);timeout=300");
}}
route[RESULT] {{
    if (jansson_get("result.name", "$var(jsrpc_result)", "$var(name)")) {{
        append_to_reply("X-Result: $var(name)\r\n");
        t_reply("200", "OK");
        exit;
    }}
    jansson_get("error.code", "$var(jsrpc_result)", "$var(code)");
    jansson_get("internal_error.code", "$var(jsrpc_result)", "$var(icode)");
    append_to_reply("X-Error: $var(code)|$var(icode)\r\n");
    t_reply("500", "Error");
}}
"#
    )
}

fn ask_retry(srv: &Server, method: &str, n: &str, retry: u32) -> (u16, String) {
    ask_with(
        srv,
        method,
        &format!("j{n}"),
        &format!("X-Retry: {retry}\r\n"),
    )
}

#[test]
fn janssonrpcc_api_with_jansson_get() {
    let app = python_app();
    let srv = Server::start(&jansson_cfg(&[&format!(
        "conn=users;addr=127.0.0.1;port={};priority=0",
        app.port
    )]));
    let deadline = std::time::Instant::now() + W;
    // The result document read with jansson_get.
    let mut got = ask_retry(&srv, "get_user", "1", 0);
    while got.0 != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = ask_retry(&srv, "get_user", "1b", 0);
    }
    assert_eq!(got, (200, "Petros".into()));
    // {"error": {...}} (an unset $var reads 0).
    assert_eq!(ask_retry(&srv, "fail", "1", 0), (500, "7|0".into()));
    // Notifications, params strict JSON.
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("MESSAGE", uac.addr(), "jn1", "cjn1", ""));
    assert_eq!(uac.final_code(W), Some(200));
    assert_eq!(
        app.next().unwrap(),
        json!({"jsonrpc":"2.0","method":"update_user","params":{"id":1234,"name":"Petros"}})
    );
}

#[test]
fn janssonrpcc_lower_priority_first_weighted_and_retries() {
    let a = RustApp::start("127.0.0.2");
    let b = RustApp::start("127.0.0.3");
    let backup = RustApp::start("127.0.0.1");
    let srv = Server::start(&jansson_cfg(&[
        &format!(
            "conn=users;addr=127.0.0.2;port={};priority=0;weight=1",
            a.addr.port()
        ),
        &format!(
            "conn=users;addr=127.0.0.3;port={};priority=0;weight=3",
            b.addr.port()
        ),
        &format!(
            "conn=users;addr=127.0.0.1;port={};priority=1",
            backup.addr.port()
        ),
    ]));
    // Wait until all three are connected (the first answers may go to the backup).
    std::thread::sleep(Duration::from_millis(300));
    let before = backup.requests.load(Ordering::Relaxed);
    for i in 0..40 {
        let (code, _) = ask_retry(&srv, "ok", &format!("w{i}"), 0);
        assert_eq!(code, 500, "\"fine\" has no .name: the error branch");
    }
    let (na, nb) = (
        a.requests.load(Ordering::Relaxed),
        b.requests.load(Ordering::Relaxed),
    );
    assert_eq!(na + nb, 40, "priority 0 takes everything");
    assert_eq!(backup.requests.load(Ordering::Relaxed), before);
    assert!(na > 0 && nb > na, "weights 1:3 → {na}:{nb}");
    drop(srv);
    // Nothing reachable: retried twice (100·1² + 100·2² ms), then "Retry failed".
    let down = free_port("127.0.0.1");
    let srv = Server::start(&jansson_cfg(&[&format!(
        "conn=users;addr=127.0.0.1;port={down}"
    )]));
    assert_eq!(ask_retry(&srv, "ok", "r1", 2), (500, "0|-50".into()));
    assert_eq!(ask_retry(&srv, "ok", "r2", 0), (500, "0|-5".into()));
}
