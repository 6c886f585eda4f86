//! `siphon ctl`: a kamcmd/kamcli for siphon over the jsonrpcs transports.

use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Target {
    /// `udp:ADDR:PORT` datagrams.
    Udp(String),
    /// A unix datagram socket.
    Unix(PathBuf),
    /// The FIFO, with replies in `reply_dir`.
    Fifo(PathBuf, PathBuf),
    /// HTTP (`http://127.0.0.1:5060/RPC`): a POST to the xhttp route.
    Http(String),
}

/// The default target: what the embedded default configuration opens.
pub const DEFAULT_UDP: &str = "127.0.0.1:5090";
/// Where the reply FIFO goes by default: jsonrpcs' default `fifo_reply_dir`
/// (the server's `run_dir`).
pub const DEFAULT_REPLY_DIR: &str = "/run/siphon";

const WAIT: Duration = Duration::from_secs(5);

/// A param as typed on the command line: a number when it reads as one, a
/// string otherwise; `s:` forces a string.
pub fn typed_param(p: &str) -> Value {
    if let Some(s) = p.strip_prefix("s:") {
        return json!(s);
    }
    if let Ok(n) = p.parse::<i64>() {
        return json!(n);
    }
    if let Ok(f) = p.parse::<f64>()
        && f.is_finite()
    {
        return json!(f);
    }
    json!(p)
}

/// Sends one request and returns the reply document.
pub fn call(target: &Target, method: &str, params: &[String]) -> Result<Value, String> {
    let id = std::process::id();
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
    if !params.is_empty() {
        req["params"] = Value::Array(params.iter().map(|p| typed_param(p)).collect());
    }
    let text = match target {
        Target::Udp(addr) => {
            let sock = std::net::UdpSocket::bind(if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(WAIT))
                .map_err(|e| e.to_string())?;
            sock.send_to(req.to_string().as_bytes(), addr)
                .map_err(|e| format!("cannot send to {addr}: {e}"))?;
            let mut buf = vec![0u8; 70_000];
            let (n, _) = sock
                .recv_from(&mut buf)
                .map_err(|e| format!("no reply from udp:{addr}: {e}"))?;
            buf.truncate(n);
            buf
        }
        Target::Unix(path) => {
            let me = std::env::temp_dir().join(format!("siphon-ctl-{id}.sock"));
            let _ = std::fs::remove_file(&me);
            let sock = std::os::unix::net::UnixDatagram::bind(&me).map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(WAIT))
                .map_err(|e| e.to_string())?;
            let r = sock
                .send_to(req.to_string().as_bytes(), path)
                .map_err(|e| format!("cannot send to {}: {e}", path.display()))
                .and_then(|_| {
                    let mut buf = vec![0u8; 70_000];
                    let n = sock
                        .recv(&mut buf)
                        .map_err(|e| format!("no reply from {}: {e}", path.display()))?;
                    buf.truncate(n);
                    Ok(buf)
                });
            let _ = std::fs::remove_file(&me);
            r?
        }
        Target::Http(url) => http_post(url, req.to_string().as_bytes())?,
        Target::Fifo(fifo, reply_dir) => {
            let name = format!("siphon_ctl_reply_{id}");
            let reply = reply_dir.join(&name);
            if !reply_dir.is_dir() {
                std::fs::create_dir_all(reply_dir).map_err(|e| {
                    format!(
                        "reply directory {}: {e} (pass --reply-dir with the server's fifo_reply_dir)",
                        reply_dir.display()
                    )
                })?;
            }
            let _ = std::fs::remove_file(&reply);
            nix::unistd::mkfifo(&reply, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("mkfifo {}: {e}", reply.display()))?;
            req["reply_name"] = json!(name);
            let r = (|| {
                // Open the reply side first (read-write, so opening does not wait for the server).
                let mut rd = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&reply)
                    .map_err(|e| e.to_string())?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(fifo)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, req.to_string().as_bytes()))
                    .map_err(|e| format!("cannot write to {}: {e}", fifo.display()))?;
                read_document(&mut rd).map_err(|e| {
                    format!(
                        "{e} within {} s: the server writes its replies into its fifo_reply_dir \
                         (jsonrpcs' default: the server's run_dir, {DEFAULT_REPLY_DIR}; Kamailio's: /tmp/); \
                         if that is not {}, pass --reply-dir with it (its log says \
                         \"cannot open reply FIFO DIR/{name}\")",
                        WAIT.as_secs(),
                        reply_dir.display()
                    )
                })
            })();
            let _ = std::fs::remove_file(&reply);
            r?
        }
    };
    serde_json::from_slice(&text).map_err(|e| format!("the reply is not JSON: {e}"))
}

/// POSTs `body` to an `http://host:port/path` URL and returns the reply
/// body. A few lines of HTTP/1.1 (one request, `Connection: close`) rather
/// than an HTTP client crate: `ctl` is synchronous and needs nothing more.
fn http_post(url: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/RPC"),
    };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    use std::net::ToSocketAddrs;
    let to = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&to, WAIT)
        .map_err(|e| format!("cannot connect to {to}: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("cannot send to {to}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("no reply from {url}: {e}"))?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP reply"))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "204" {
        return Ok(b"{\"result\": null}".to_vec());
    }
    if !status.starts_with('2') {
        let line = head.lines().next().unwrap_or_default().to_string();
        return Err(format!("{url}: {line}"));
    }
    Ok(out.split_off(split + 4))
}

/// Reads one JSON document from a FIFO within the wait time.
fn read_document(rd: &mut std::fs::File) -> Result<Vec<u8>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut rd = rd.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if serde_json::from_slice::<Value>(&buf).is_ok() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(buf);
    });
    rx.recv_timeout(WAIT)
        .map_err(|_| "no reply on the FIFO".to_string())
}
