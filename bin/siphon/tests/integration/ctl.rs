//! ctl end to end: Kamailio's own `kamcmd` against siphon over a unix stream
//! socket, TCP and unix datagrams; raw binrpc for what kamcmd never sends
//! (garbage, an oversized length, a client that sends nothing).

use super::harness::{Server, UdpUac, request};
use siphon_mod_ctl::binrpc::{self, Header, Kind, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cfg(dir: &str, extra: &str) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "unix:{dir}/ctl.sock")
modparam("ctl", "binrpc", "tcp:127.0.0.1:0")
modparam("ctl", "binrpc", "unixd:{dir}/ctld.sock")
{extra}
request_route {{ sl_send_reply("200", "OK"); exit; }}
"#
    )
}

fn scratch(name: &str) -> super::cli::Scratch {
    super::cli::Scratch::new(name)
}

/// The TCP address ctl bound (from its log line).
fn tcp_addr(srv: &Server) -> SocketAddr {
    assert!(srv.log_soon("ctl listening on tcp:"), "no ctl tcp listener");
    srv.log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let (_, a) = l.split_once("ctl listening on tcp:")?;
            a.trim().parse().ok()
        })
        .expect("ctl tcp address")
}

fn have_kamcmd() -> bool {
    let found = Command::new("kamcmd")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("note: kamcmd is not installed; the kamcmd part of this test is skipped");
    }
    found
}

/// Runs kamcmd: its stdout and exit code.
fn kamcmd(sock: &str, args: &[&str]) -> (String, i32) {
    let mut child = Command::new("kamcmd")
        .arg("-s")
        .arg(sock)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kamcmd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kamcmd {args:?} on {sock} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("kamcmd output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn kamcmd_runs_commands_over_unix_tcp_and_datagrams() {
    if !have_kamcmd() {
        return;
    }
    let dir = scratch("ctl-kamcmd");
    let d = dir.0.display().to_string();
    let srv = Server::start(&cfg(&d, ""));
    let tcp = format!("tcp:{}", tcp_addr(&srv));
    let unix = format!("unix:{d}/ctl.sock");
    let unixd = format!("unixd:{d}/ctld.sock");
    // Kamailio's default mode: rw for the owner only.
    let mode = std::fs::metadata(format!("{d}/ctl.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let version = format!("siphon {}\n", env!("CARGO_PKG_VERSION"));
    for sock in [&unix, &tcp, &unixd] {
        assert_eq!(
            kamcmd(sock, &["core.version"]),
            (version.clone(), 0),
            "{sock}"
        );

        // A struct: one member a line, tab-indented, as Kamailio's replies print.
        let (out, code) = kamcmd(sock, &["core.uptime"]);
        assert_eq!(code, 0);
        let l = lines(&out);
        assert_eq!((l[0], l[4]), ("{", "}"), "{out}");
        assert!(
            l[1].starts_with("\tnow: ") && l[2].starts_with("\tup_since: "),
            "{out}"
        );
        assert!(l[3].starts_with("\tuptime: "), "{out}");

        // Times as C's ctime writes them (`now: Tue Dec  1 16:05:02 2026`).
        let now = l[1].strip_prefix("\tnow: ").unwrap();
        assert_eq!(now.split_whitespace().count(), 5, "{out}");

        // core.ps: pid and description, one after the other.
        let (out, _) = kamcmd(sock, &["core.ps"]);
        let l = lines(&out);
        assert_eq!(l[0].parse::<u32>().ok(), Some(srv.pid()), "{out}");
        assert_eq!(l[1], "main process", "{out}");

        let (out, _) = kamcmd(sock, &["system.listMethods"]);
        for m in [
            "core.version",
            "stats.get_statistics",
            "tm.stats",
            "ctl.who",
        ] {
            assert!(lines(&out).contains(&m), "{m} in {out}");
        }

        // One statistic a line, `group:name = value`.
        let (out, _) = kamcmd(sock, &["stats.get_statistics", "all"]);
        assert!(
            lines(&out)
                .iter()
                .any(|l| l.starts_with("core:rcv_requests = ")),
            "{out}"
        );
        assert!(
            lines(&out).iter().any(|l| l.starts_with("ctl:requests = ")),
            "{out}"
        );
        let (out, _) = kamcmd(sock, &["stats.get_statistics", "core:"]);
        assert!(
            !out.is_empty() && lines(&out).iter().all(|l| l.starts_with("core:")),
            "{out}"
        );

        let (out, _) = kamcmd(sock, &["tm.stats"]);
        let l = lines(&out);
        assert_eq!((l[0], *l.last().unwrap()), ("{", "}"), "{out}");
        for m in ["\tcurrent: 0", "\ttotal: 0", "\t2xx: 0"] {
            assert!(l.contains(&m), "{m} in {out}");
        }

        // Params: a string, an int, a forced string, a double.
        let (out, _) = kamcmd(sock, &["core.echo", "a", "1", "s:7", "2.5"]);
        assert_eq!(out, "a\n1\n7\n2.500000\n");

        // An unknown command: Kamailio's fault text; kamcmd prints it and exits 0.
        assert_eq!(
            kamcmd(sock, &["no.such"]),
            ("error: 500 - command no.such not found\n".to_string(), 0)
        );
    }
    // A command's failure is a fault with an HTTP-like code.
    let (out, _) = kamcmd(&unix, &["stats.get_statistics"]);
    assert!(out.starts_with("error: 400 - "), "{out}");
}

#[test]
fn kamcmd_prints_ul_dump_as_from_kamailio() {
    if !have_kamcmd() {
        return;
    }
    let dir = scratch("ctl-ul");
    let d = dir.0.display().to_string();
    let srv = Server::start(&format!(
        r#"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "unix:{d}/ctl.sock")
request_route {{ if (is_method("REGISTER")) {{ save("location"); exit; }} }}
"#
    ));
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        "REGISTER",
        uac.addr(),
        "ul1",
        "ul-call",
        "Contact: <sip:alice@127.0.0.1:5099>\r\nExpires: 300\r\n",
    ));
    assert_eq!(uac.final_code(Duration::from_secs(5)), Some(200));
    let (out, code) = kamcmd(&format!("unix:{d}/ctl.sock"), &["ul.dump"]);
    assert_eq!(code, 0);
    // Kamailio 5.6.3's nesting: arrays of one-member objects are named members.
    let l = lines(&out);
    for (i, want) in [
        (0, "{"),
        (1, "\tDomains: {"),
        (2, "\t\tDomain: {"),
        (3, "\t\t\tDomain: location"),
    ] {
        assert_eq!(l[i], want, "{out}");
    }
    for want in [
        "\t\t\tAoRs: {",
        "\t\t\t\tInfo: {",
        "\t\t\t\t\tAoR: service",
        "\t\t\t\t\tContacts: {",
        "\t\t\t\t\t\tContact: {",
        "\t\t\t\t\t\t\tAddress: sip:alice@127.0.0.1:5099",
    ] {
        assert!(l.contains(&want), "{want:?} in {out}");
    }
    assert!(
        l.iter().any(|x| x.starts_with("\t\t\t\t\t\t\tExpires: ")),
        "{out}"
    );
}

/// A binrpc client connection: what was read past the last packet is kept.
struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Client<S> {
    fn new(io: S) -> Self {
        Client {
            io,
            buf: Vec::new(),
        }
    }

    /// One request; the answer's header and values.
    fn call(&mut self, cookie: u32, method: &str, params: &[Value]) -> (Header, Vec<Value>) {
        self.io
            .write_all(&binrpc::request(cookie, method, params))
            .unwrap();
        self.next().expect("an answer")
    }

    /// The next packet (`None` at EOF).
    fn next(&mut self) -> Option<(Header, Vec<Value>)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(h) = binrpc::header(&self.buf).expect("a binrpc header")
                && self.buf.len() >= h.total()
            {
                let v = binrpc::decode_body(&self.buf[h.len..h.total()]).expect("a body");
                self.buf.drain(..h.total());
                return Some((h, v));
            }
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Whether the server closed the connection (reads until EOF, discarding).
    fn closed(&mut self) -> bool {
        let mut sink = Vec::new();
        self.io.read_to_end(&mut sink).is_ok()
    }
}

fn fault(h: &Header, v: &[Value]) -> (i32, String) {
    assert_eq!(h.kind, Kind::Fault);
    match v {
        [Value::Int(code), Value::Str(msg)] => (*code, msg.clone()),
        _ => panic!("not a fault body: {v:?}"),
    }
}

fn unix(d: &str) -> Client<UnixStream> {
    let s = UnixStream::connect(format!("{d}/ctl.sock")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Client::new(s)
}

fn tcp(addr: SocketAddr) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Client::new(s)
}

#[test]
fn garbage_and_oversized_packets_get_a_fault_and_lose_only_their_connection() {
    let dir = scratch("ctl-raw");
    let d = dir.0.display().to_string();
    let srv = Server::start(&cfg(&d, ""));
    assert!(srv.log_soon("ctl listening on unix:"));

    // Not binrpc: Kamailio's 400, cookie 0, then the connection is closed.
    let mut s = unix(&d);
    s.io.write_all(b"hello world\n").unwrap();
    let (h, v) = s.next().expect("a fault");
    assert_eq!(h.cookie, 0);
    assert_eq!(fault(&h, &v), (400, "bad request: corrupted packet".into()));
    assert!(s.closed());

    // A length over the bound is refused from the header alone.
    let mut s = unix(&d);
    s.io.write_all(&binrpc::header_bytes(Kind::Request, 1 << 20, 77))
        .unwrap();
    let (h, v) = s.next().expect("a fault");
    assert_eq!(h.cookie, 77);
    let (code, msg) = fault(&h, &v);
    assert_eq!(code, 400);
    assert!(msg.starts_with("bad request: packet too big"), "{msg}");
    assert!(s.closed());

    // The method must be a string.
    let mut s = unix(&d);
    s.io.write_all(&binrpc::packet(Kind::Request, 6, &[0x10, 0x05]))
        .unwrap();
    let (h, v) = s.next().expect("a fault");
    assert_eq!(
        fault(&h, &v),
        (400, "bad request method: record doesn't match type".into())
    );
    assert!(s.closed());

    // Packets back to back in one write are answered in order, on one connection.
    let mut s = unix(&d);
    let mut two = binrpc::request(0x0102_0304, "core.echo", &[Value::Int(-5)]);
    two.extend(binrpc::request(9, "no.such", &[]));
    s.io.write_all(&two).unwrap();
    let (h, v) = s.next().expect("a reply");
    assert_eq!((h.kind, h.cookie), (Kind::Reply, 0x0102_0304));
    assert_eq!(v, [Value::Int(-5)]);
    let (h, v) = s.next().expect("a fault");
    assert_eq!(h.cookie, 9);
    assert_eq!(fault(&h, &v), (500, "command no.such not found".into()));
    // … and the connection stays open after an unknown command.
    let (h, v) = s.call(10, "core.version", &[]);
    assert_eq!(h.kind, Kind::Reply);
    assert_eq!(
        v,
        [Value::Str(format!("siphon {}", env!("CARGO_PKG_VERSION")))]
    );

    let (_, v) = s.call(
        11,
        "stats.get_statistics",
        &[Value::Str("ctl:bad_packets".into())],
    );
    assert_eq!(v, [Value::Str("ctl:bad_packets = 3".into())]);
}

#[test]
fn a_silent_client_costs_only_its_connection() {
    let dir = scratch("ctl-idle");
    let d = dir.0.display().to_string();
    let srv = Server::start(&cfg(&d, r#"modparam("ctl", "idle_timeout", 1)"#));
    let addr = tcp_addr(&srv);
    let mut silent = tcp(addr);
    // A half-sent packet: the header promises more than ever comes.
    let mut half = tcp(addr);
    half.io
        .write_all(&binrpc::request(3, "core.version", &[])[..6])
        .unwrap();

    // Others are served meanwhile.
    let (h, v) = tcp(addr).call(1, "core.version", &[]);
    assert_eq!(h.kind, Kind::Reply, "{v:?}");

    // The server closes the silent ones (EOF, no reply), not the client.
    assert!(silent.next().is_none());
    assert!(half.next().is_none());
    let (_, v) = tcp(addr).call(
        2,
        "stats.get_statistics",
        &[Value::Str("ctl:idle_closed".into())],
    );
    let Value::Str(s) = &v[0] else {
        panic!("{v:?}")
    };
    let n: i64 = s
        .strip_prefix("ctl:idle_closed = ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 2, "{s}");
}
