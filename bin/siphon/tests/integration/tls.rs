//! TLS listeners: SIP over TLS (openssl s_client as the client) and HTTPS
//! JSON-RPC through xhttp on the same listener (curl), with certificates a
//! test CA made by openssl signed.

use super::harness::{Server, test_certs};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cfg(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        r#"
listen=tls:127.0.0.1:0
loadmodule "tls.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
modparam("tls", "certificate", "{}")
modparam("tls", "private_key", "{}")
modparam("jsonrpcs", "transport", 1)
event_route[xhttp:request] {{
    if ($hu =~ "^/RPC") {{ jsonrpc_dispatch(); exit; }}
    xhttp_reply("404", "Not Found", "text/plain", "");
}}
request_route {{
    append_to_reply("X-Proto: $pr\r\n");
    sl_send_reply("200", "OK");
}}
"#,
        cert.display(),
        key.display()
    )
}

pub(crate) fn tls_addr(srv: &Server) -> SocketAddr {
    srv.log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("listening on tls:")
                .map(|a| a.trim().parse().unwrap())
        })
        .expect("a tls listener")
}

#[test]
fn sip_over_tls_and_https_json_rpc_on_one_listener() {
    let dir = super::cli::Scratch::new("tls");
    let (ca, cert, key) = test_certs(&dir);
    let srv = Server::start(&cfg(&cert, &key));
    let addr = tls_addr(&srv);
    // SIP over TLS with openssl's own client.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-connect",
            &addr.to_string(),
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let opts = "OPTIONS sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: tls1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".to_string();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(opts.as_bytes())
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("X-Proto")) && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.trim() == "SIP/2.0 200 OK"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.trim() == "X-Proto: tls"),
        "{lines:?}"
    );
    // HTTPS on the same listener, the certificate verified by curl.
    let url = format!("https://{addr}/RPC");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .args(extra)
            .args([
                "-d",
                r#"{"jsonrpc":"2.0","method":"core.echo","params":["tls"],"id":1}"#,
                &url,
            ])
            .output()
            .expect("curl")
    };
    let out = curl(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], serde_json::json!(["tls"]));
    // A client that speaks no TLS costs only its own connection.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n").unwrap();
    drop(plain);
    let out = curl(&[]);
    assert!(out.status.success());
}

#[test]
fn tls_listener_without_the_tls_module_is_an_error() {
    let dir = super::cli::Scratch::new("tls-missing");
    let f = dir.write("t.cfg", "listen=tls:127.0.0.1:0\nrequest_route { drop; }\n");
    let out = crate::harness::siphon_command()
        .args(["-f", &f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.so"), "{err}");
    // A missing certificate is a configuration error at loadmodule.
    let f = dir.write("u.cfg", "loadmodule \"tls.so\"\nmodparam(\"tls\", \"certificate\", \"/nonexistent.pem\")\nmodparam(\"tls\", \"private_key\", \"/nonexistent.key\")\nrequest_route { drop; }\n");
    let out = crate::harness::siphon_command()
        .args(["-c", "-f", &f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
