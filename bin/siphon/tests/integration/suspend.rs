//! Where an async call suspends: whenever the request has a transaction, as
//! Kamailio decides — from a resumed route (a chained call) and from a
//! failure route too, not only from `request_route`.

use super::harness::{Server, UdpUac, request};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// An HTTP server answering every request `200` with the path as the body.
fn echo_path_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{path}",
                    path.len()
                );
            });
        }
    });
    addr
}

/// The final reply to one request: its code and the named header's value.
fn final_reply(uac: &UdpUac, header: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(m) = uac.recv(deadline.saturating_duration_since(Instant::now())) {
        let code = m.status().unwrap();
        if code >= 200 {
            let v = m
                .headers_named(header.as_bytes())
                .next()
                .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
                .unwrap_or_default();
            return (code, v);
        }
    }
    panic!("no final reply");
}

#[test]
fn a_resumed_route_suspends_again_for_a_chained_call() {
    let http = echo_path_server();
    let srv = Server::start(&format!(
        r#"
loadmodule "tm.so"
loadmodule "async_http.so"
request_route {{
    if (is_method("ACK")) {{ exit; }}
    $var(kept) = "k";
    http_async_get("http://{http}/first", "FIRST");
}}
route[FIRST] {{
    $var(first) = $avp(http_rb);
    http_async_get("http://{http}/second", "SECOND");
}}
route[SECOND] {{
    append_to_reply("X-Chain: $var(kept) $var(first) $avp(http_rb)\r\n");
    t_reply("200", "OK");
}}
"#
    ));
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("MESSAGE", uac.addr(), "chain1", "chain-1", ""));
    assert_eq!(
        final_reply(&uac, "X-Chain"),
        (200, "k /first /second".to_string())
    );
}

#[test]
fn a_failure_route_suspends_and_its_resumed_route_answers() {
    let http = echo_path_server();
    let srv = Server::start(&format!(
        r#"
loadmodule "tm.so"
loadmodule "async_http.so"
modparam("tm", "fr_timer", 1000)
request_route {{
    if (is_method("ACK")) {{ exit; }}
    t_on_failure("ASK");
    t_newtran();
}}
failure_route[ASK] {{
    xlog("L_INFO", "failure route asks, T_reply_code=$T_reply_code\n");
    http_async_get("http://{http}/where", "ANSWER");
}}
route[ANSWER] {{
    append_to_reply("X-Where: $avp(http_rb)\r\n");
    t_reply("302", "Moved Temporarily");
}}
"#
    ));
    let uac = UdpUac::new(srv.udp);
    uac.send(&request("MESSAGE", uac.addr(), "fail1", "fail-1", ""));
    assert_eq!(final_reply(&uac, "X-Where"), (302, "/where".to_string()));
    assert!(srv.log_contains("failure route asks, T_reply_code=408"));
}
