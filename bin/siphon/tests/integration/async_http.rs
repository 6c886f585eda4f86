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
    let t = Instant::now();
    let (_, hs) = ask(&srv, "INVITE", &format!("http://{closed}/x"), 4);
    assert!(
        t.elapsed() < Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
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
