//! async_http and http_async_client end to end: the real binary calls an
//! aiohttp application (PyPI) and our own Rust server for the fault modes,
//! over HTTP and HTTPS (a self-signed certificate made by openssl).

use super::harness::{PyPeer, Server, UdpUac, request};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

const W: Duration = Duration::from_secs(5);

/// The aiohttp app (HTTPS with a certificate and key).
fn app(tls: Option<(&str, &str)>) -> PyPeer {
    let args = match tls {
        Some((cert, key)) => vec!["0", cert, key],
        None => vec!["0"],
    };
    PyPeer::start("http_app.py", &args, "-", "aiohttp")
}

/// Our own server: `silent` never answers, `close` closes without a reply,
/// `slow` sends the headers and the body 2 s later.
fn fault_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                if head.contains("/close") {
                    return;
                }
                if head.contains("/slow") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
                    std::thread::sleep(Duration::from_secs(2));
                    let _ = s.write_all(b"late");
                }
                // silent: keep the connection open, say nothing.
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    addr
}

const SEED_CFG: &str = r#"
loadmodule "tm.so"
loadmodule "async_http.so"
modparam("async_http", "workers", 2)
modparam("async_http", "http_timeout", 500)
modparam("async_http", "hash_size", 1024)
request_route {
    if (is_method("ACK")) { exit; }
    $var(kept) = "yes";
    if (is_method("MESSAGE")) {
        http_async_post("$hdr(X-Url)", "payload from $fU", "HTTP_REPLY");
    }
    # The seed's example 1.4, with a loopback URL.
    http_async_get("$hdr(X-Url)?r_uri=$rU&f_uri=$fU", "HTTP_REPLY");
}
route[HTTP_REPLY] {
    xlog("L_INFO", "route[HTTP_REPLY]: http_rc $avp(http_rc)\n");
    append_to_reply("X-Rc: $avp(http_rc)\r\nX-Rb: $avp(http_rb)\r\nX-Err: $avp(http_error)\r\nX-Kept: $var(kept)\r\n");
    t_reply("200", "OK");
}
"#;

/// Sends `method` with X-Url; the final reply's X-… headers as "name=value" lines.
fn ask(srv: &Server, method: &str, url: &str, n: u32) -> (u16, Vec<(String, String)>) {
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        method,
        uac.addr(),
        &format!("h{method}{n}"),
        &format!("ch{method}{n}"),
        &format!("X-Url: {url}\r\n"),
    ));
    let deadline = Instant::now() + W;
    while let Some(m) = uac.recv(deadline.saturating_duration_since(Instant::now())) {
        let code = m.status().unwrap();
        if code < 200 {
            continue;
        }
        let mut hs = Vec::new();
        for name in [
            "x-rc", "x-rb", "x-err", "x-kept", "x-ok", "x-rs", "x-hdr", "x-id", "x-bs",
        ] {
            if let Some(h) = m.headers_named(name.as_bytes()).next() {
                hs.push((
                    name.to_string(),
                    String::from_utf8_lossy(&m.header_value(h)).into_owned(),
                ));
            }
        }
        return (code, hs);
    }
    panic!("no final reply");
}

fn h<'a>(hs: &'a [(String, String)], n: &str) -> &'a str {
    hs.iter()
        .find(|(k, _)| k == n)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_seed_api_against_aiohttp_and_fault_modes() {
    let app = app(None);
    let faults = fault_server();
    let srv = Server::start(SEED_CFG);
    let base = format!("http://127.0.0.1:{}", app.port);
    // 200 with a body; the suspended request's $vars are kept.
    let (code, hs) = ask(&srv, "INVITE", &format!("{base}/user"), 1);
    assert_eq!(code, 200);
    assert_eq!(h(&hs, "x-rc"), "200");
    assert_eq!(h(&hs, "x-rb"), "sip:service@127.0.0.1:5099");
    assert_eq!(h(&hs, "x-kept"), "yes");
    assert!(srv.log_soon("route[HTTP_REPLY]: http_rc 200"));
    // POST with data.
    let (_, hs) = ask(&srv, "MESSAGE", &format!("{base}/echo"), 1);
    assert_eq!(
        (h(&hs, "x-rc"), h(&hs, "x-rb")),
        ("201", "POST payload from uac -")
    );
    // 404 and 500 are replies, not errors.
    let (_, hs) = ask(&srv, "INVITE", &format!("{base}/missing"), 2);
    assert_eq!((h(&hs, "x-rc"), h(&hs, "x-rb")), ("404", "no such thing"));
    let (_, hs) = ask(&srv, "INVITE", &format!("{base}/fail"), 3);
    assert_eq!(h(&hs, "x-rc"), "500");
    // Connection refused: an error at once.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // An error at once (not the 500 ms timeout): the error says connect.
    let (_, hs) = ask(&srv, "INVITE", &format!("http://{closed}/x"), 4);
    assert!(h(&hs, "x-err").to_lowercase().contains("connect"), "{hs:?}");
    // No answer, and a body that comes too late: timeout at http_timeout.
    let (_, hs) = ask(&srv, "INVITE", &format!("http://{faults}/silent"), 5);
    assert_eq!(h(&hs, "x-err"), "timeout");
    let (_, hs) = ask(&srv, "INVITE", &format!("http://{faults}/slow"), 6);
    assert_eq!(h(&hs, "x-err"), "timeout");
    // The server closes without a reply: an error.
    let (_, hs) = ask(&srv, "INVITE", &format!("http://{faults}/close"), 7);
    assert!(
        !h(&hs, "x-err").is_empty() && h(&hs, "x-err") != "timeout",
        "{hs:?}"
    );
    assert_eq!(h(&hs, "x-rc"), "<null>");
}

#[test]
fn http_async_client_api_and_https() {
    let dir = super::cli::Scratch::new("https");
    let (ca, cert, key) = super::harness::test_certs(&dir);
    let https = app(Some((cert.to_str().unwrap(), key.to_str().unwrap())));
    let plain = app(None);
    let cfg = |params: &str| {
        format!(
            r#"
loadmodule "tm.so"
loadmodule "http_async_client.so"
modparam("http_async_client", "connection_timeout", 1000)
{params}
request_route {{
    if (is_method("ACK")) {{ exit; }}
    if (is_method("MESSAGE")) {{
        $http_req(method) = "PUT";
        $http_req(body) = "a body";
        $http_req(hdr) = "X-Test: set";
    }}
    http_async_query("$hdr(X-Url)", "Q");
}}
route[Q] {{
    append_to_reply("X-Ok: $http_ok\r\nX-Rs: $http_rs\r\nX-Rb: $http_rb\r\nX-Bs: $http_bs\r\nX-Err: $http_err\r\nX-Hdr: $http_hdr(X-App)\r\nX-Id: $http_req_id\r\n");
    t_reply("200", "OK");
}}
"#
        )
    };
    // Setters apply to the next query, results in $http_*.
    let srv = Server::start(&cfg(""));
    let (_, hs) = ask(
        &srv,
        "MESSAGE",
        &format!("http://127.0.0.1:{}/echo", plain.port),
        1,
    );
    assert_eq!(
        (h(&hs, "x-ok"), h(&hs, "x-rs"), h(&hs, "x-rb")),
        ("1", "200", "PUT a body set")
    );
    assert_eq!(h(&hs, "x-bs"), "14");
    // $http_req_id is "<pid>-<counter>".
    let id: Vec<&str> = h(&hs, "x-id").split('-').collect();
    assert!(
        id.len() == 2 && id.iter().all(|p| p.parse::<u64>().is_ok()),
        "{hs:?}"
    );
    let (_, hs) = ask(
        &srv,
        "INVITE",
        &format!("http://127.0.0.1:{}/user?r_uri=bob", plain.port),
        2,
    );
    assert_eq!(
        (h(&hs, "x-rb"), h(&hs, "x-hdr")),
        ("sip:bob@127.0.0.1:5099", "aiohttp")
    );
    // HTTPS with a self-signed certificate: refused while peers are verified…
    let url = format!("https://127.0.0.1:{}/user?r_uri=tls", https.port);
    let (_, hs) = ask(&srv, "INVITE", &url, 3);
    assert_eq!(h(&hs, "x-ok"), "0");
    assert!(!h(&hs, "x-err").is_empty());
    drop(srv);
    // …accepted with tls_verify_peer off…
    let srv = Server::start(&cfg(
        "modparam(\"http_async_client\", \"tls_verify_peer\", 0)\nmodparam(\"http_async_client\", \"tls_verify_host\", 0)",
    ));
    let (_, hs) = ask(&srv, "INVITE", &url, 4);
    assert_eq!(
        (h(&hs, "x-ok"), h(&hs, "x-rb")),
        ("1", "sip:tls@127.0.0.1:5099")
    );
    drop(srv);
    // …and verified when the certificate is a trusted CA (tls_ca_path).
    let srv = Server::start(&cfg(&format!(
        "modparam(\"http_async_client\", \"tls_ca_path\", \"{}\")",
        ca.display()
    )));
    let (_, hs) = ask(&srv, "INVITE", &url, 5);
    assert_eq!((h(&hs, "x-ok"), h(&hs, "x-rs")), ("1", "200"), "{hs:?}");
}

/// `http_async_client` with `extra` params and jsonrpcs (for statistics and
/// `core.shmmem`); route Q reports the result in X- headers.
fn client_cfg(extra: &str) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "jsonrpcs.so"
loadmodule "http_async_client.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
modparam("http_async_client", "connection_timeout", 5000)
{extra}
request_route {{
    if (is_method("ACK")) {{ exit; }}
    if (is_method("MESSAGE")) {{
        $http_req(body) = "{{\"a\":1}}";
        $http_req(hdr) = "Content-Type: application/json";
    }} else if (is_method("INFO")) {{
        $http_req(body) = "a=1&b=2";
    }}
    http_async_query("$hdr(X-Url)", "Q");
}}
route[Q] {{
    # A long body would not fit the UDP reply.
    $var(rb) = "long";
    if ($http_ok == 1 && $http_bs < 1000) {{ $var(rb) = $http_rb; }}
    append_to_reply("X-Ok: $http_ok\r\nX-Rs: $http_rs\r\nX-Rb: $var(rb)\r\nX-Bs: $http_bs\r\nX-Err: $http_err\r\n");
    t_reply("200", "OK");
}}
"#
    )
}

/// Resident memory of the server (`core.shmmem`).
fn rss(srv: &Server) -> u64 {
    super::jsonrpcs::rpc_doc(srv, "core.shmmem", serde_json::json!([]))["result"]["used"]
        .as_u64()
        .expect("core.shmmem used")
}

#[test]
fn reply_bodies_over_max_body_size_fail_as_body_too_large() {
    let app = app(None);
    let srv = Server::start(&client_cfg(
        "modparam(\"http_async_client\", \"max_body_size\", 100000)",
    ));
    let base = format!("http://127.0.0.1:{}/big", app.port);
    // At the cap: taken, announced or chunked.
    for (n, url) in [
        (1, format!("{base}/100000")),
        (2, format!("{base}/100000?chunked=1")),
    ] {
        let (_, hs) = ask(&srv, "INVITE", &url, n);
        assert_eq!((h(&hs, "x-ok"), h(&hs, "x-bs")), ("1", "100000"), "{url}");
    }
    // One byte over: refused on the Content-Length, or as the chunks pass the cap.
    for (n, url) in [
        (3, format!("{base}/100001")),
        (4, format!("{base}/100001?chunked=1")),
        (5, format!("{base}/104857600?chunked=1")),
    ] {
        let (_, hs) = ask(&srv, "INVITE", &url, n);
        assert_eq!(
            (h(&hs, "x-ok"), h(&hs, "x-err"), h(&hs, "x-rs")),
            ("0", "body too large", "<null>"),
            "{url}"
        );
    }
    assert_eq!(
        super::jsonrpcs::stat(&srv, "http_async_client:too_large"),
        3
    );
    assert_eq!(super::jsonrpcs::stat(&srv, "http_async_client:errors"), 3);
    // The seed's API says so in $avp(http_error).
    let seed = Server::start(&SEED_CFG.replace(
        "modparam(\"async_http\", \"hash_size\", 1024)",
        "modparam(\"async_http\", \"http_timeout\", 5000)\nmodparam(\"async_http\", \"max_body_size\", 1000)",
    ));
    let (_, hs) = ask(&seed, "INVITE", &format!("{base}/1001?chunked=1"), 6);
    assert_eq!(
        (h(&hs, "x-err"), h(&hs, "x-rc")),
        ("body too large", "<null>")
    );
}

#[test]
fn a_100_mb_reply_costs_no_memory_with_the_default_cap() {
    let app = app(None);
    let srv = Server::start(&client_cfg(""));
    let base = format!("http://127.0.0.1:{}/big", app.port);
    // Warm up the client and its pool with one body at the cap (1 MiB).
    let (_, hs) = ask(&srv, "INVITE", &format!("{base}/1048576"), 1);
    assert_eq!((h(&hs, "x-ok"), h(&hs, "x-bs")), ("1", "1048576"));
    let before = rss(&srv);
    for (n, q) in [(2, ""), (3, "?chunked=1"), (4, ""), (5, "?chunked=1")] {
        let (_, hs) = ask(&srv, "INVITE", &format!("{base}/104857600{q}"), n);
        assert_eq!(h(&hs, "x-err"), "body too large", "{q}");
    }
    let after = rss(&srv);
    let grew = after.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB, after four 100 MB replies {} KiB (+{} KiB)",
        before / 1024,
        after / 1024,
        grew / 1024
    );
    // Without the cap one such reply costs +265 MB.
    assert!(grew < 32 << 20, "+{} KiB", grew / 1024);
}

#[test]
fn bodies_go_out_form_urlencoded_unless_the_script_sets_a_type() {
    let app = app(None);
    let url = format!("http://127.0.0.1:{}/ctype", app.port);
    let srv = Server::start(&client_cfg(""));
    let (_, hs) = ask(&srv, "INFO", &url, 1);
    assert_eq!(h(&hs, "x-rb"), "application/x-www-form-urlencoded");
    let (_, hs) = ask(&srv, "MESSAGE", &url, 2);
    assert_eq!(h(&hs, "x-rb"), "application/json");
    // A GET without a body has none.
    let (_, hs) = ask(&srv, "INVITE", &url, 3);
    assert_eq!(h(&hs, "x-rb"), "-");
    drop(srv);
    // The seed's http_async_post.
    let seed = Server::start(SEED_CFG);
    let (_, hs) = ask(&seed, "MESSAGE", &url, 4);
    assert_eq!(h(&hs, "x-rb"), "application/x-www-form-urlencoded");
}

#[test]
fn hash_size_is_a_table_size_not_a_limit_on_requests_in_flight() {
    let app = app(None);
    // hash_size 2; five requests held by the app until all five arrived.
    let srv = Server::start(
        &SEED_CFG
            .replace("\"hash_size\", 1024", "\"hash_size\", 2")
            .replace("\"http_timeout\", 500", "\"http_timeout\", 4000"),
    );
    let url = format!("http://127.0.0.1:{}/gather/5", app.port);
    let answers: Vec<(u16, Vec<(String, String)>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..5)
            .map(|n| {
                let (srv, url) = (&srv, &url);
                s.spawn(move || ask(srv, "INVITE", url, 100 + n))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, hs) in &answers {
        assert_eq!(
            (*code, h(hs, "x-rc"), h(hs, "x-rb")),
            (200, "200", "gathered 5"),
            "{hs:?}"
        );
    }
}

#[test]
fn max_in_flight_refuses_beyond_it_at_once() {
    let app = app(None);
    let srv = Server::start(&client_cfg(
        "modparam(\"http_async_client\", \"max_in_flight\", 1)",
    ));
    // One held by the app (it waits for a second that never comes within the
    // test), the next refused: -1, the script goes on and says so.
    let held = format!("http://127.0.0.1:{}/gather/2", app.port);
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "INVITE",
        uac.addr(),
        "held1",
        "cheld1",
        &format!("X-Url: {held}\r\n"),
    ));
    // Wait until it is in flight.
    let deadline = Instant::now() + W;
    while super::jsonrpcs::stat(&srv, "http_async_client:requests") < 1 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let uac2 = UdpUac::new(srv.udp);
    uac2.send(&request(
        "INVITE",
        uac2.addr(),
        "held2",
        "cheld2",
        &format!("X-Url: {held}\r\n"),
    ));
    assert!(srv.log_soon("max_in_flight requests are in flight"));
    assert_eq!(super::jsonrpcs::stat(&srv, "http_async_client:refused"), 1);
}
