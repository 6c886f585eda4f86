//! Spawns the real `siphon` binary on a configuration with loopback listeners
//! on port 0, learns the bound ports from its log, and stops it when dropped.
//! Plus a small SIP UAC over UDP and TCP.

use bytes::Bytes;
use siphon_sip::SipMsg;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub(crate) struct Server {
    child: Child,
    pub(crate) udp: SocketAddr,
    pub(crate) tcp: SocketAddr,
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    _dir: super::cli::Scratch,
}

static N: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// Starts siphon on `cfg` (listen lines are added).
    pub(crate) fn start(cfg: &str) -> Server {
        let dir = super::cli::Scratch::new(&format!("srv{}", N.fetch_add(1, Ordering::Relaxed)));
        let text = format!("listen=udp:127.0.0.1:0\nlisten=tcp:127.0.0.1:0\nchildren=2\n{cfg}");
        let f = dir.write("s.cfg", &text);
        let (child, log, udp, tcp) = spawn_started(&["-f", &f]);
        Server {
            child,
            udp: udp.expect("udp port"),
            tcp: tcp.expect("tcp port"),
            log,
            _dir: dir,
        }
    }

    /// Whether the log has a line containing `s` within 5 s: log lines are
    /// read by other threads and may trail the reply that follows them.
    pub(crate) fn log_soon(&self, s: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log_contains(s) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The server's process id (to read its memory from /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_contains(&self, s: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(s))
    }
}

/// Lines siphon printed (stdout and stderr), shared with the threads reading them.
pub(crate) type Log = Arc<Mutex<Vec<String>>>;

/// Spawns siphon with `args` and waits for "siphon started" (panics if it exits
/// or 20 s pass first); the UDP and TCP addresses it printed, if any.
/// The server binary with `SIPHON_SEND_ONLY_LOOPBACK` set: a bug that
/// picks an address off this machine (a NATed Contact, a Via) fails the test
/// instead of sending there. Every test starts siphon through this or sets
/// the variable itself ([`ONLY_LOOPBACK`]).
pub(crate) fn siphon_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siphon"));
    c.env(ONLY_LOOPBACK, "1");
    c
}

/// The variable that keeps a server's sends on loopback (set for Kamailio
/// too, which ignores it).
pub(crate) const ONLY_LOOPBACK: &str = "SIPHON_SEND_ONLY_LOOPBACK";

pub(crate) fn spawn_started(args: &[&str]) -> (Child, Log, Option<SocketAddr>, Option<SocketAddr>) {
    let mut child = crate::harness::siphon_command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn siphon");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    for stream in streams {
        let (log2, tx) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let (mut udp, mut tcp) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A server that exited (a bind error) says so at once, not after the deadline.
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        let line = if exited {
            rx.recv_timeout(Duration::from_millis(200))
        } else {
            rx.recv_timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            )
        };
        let Ok(line) = line.or_else(|e| {
            if exited || Instant::now() >= deadline {
                Err(e)
            } else {
                Ok(String::new())
            }
        }) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("siphon did not start: {:#?}", log.lock().unwrap());
        };
        if let Some(a) = line.strip_prefix("listening on udp:") {
            udp = udp.or(a.trim().parse().ok());
        }
        if let Some(a) = line.strip_prefix("listening on tcp:") {
            tcp = tcp.or(a.trim().parse().ok());
        }
        // The stdout line (not the log line): stdout's earlier lines are in by then.
        if line == "siphon started" {
            break;
        }
    }
    (child, log, udp, tcp)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request with the usual headers; `branch` and `call_id` identify it.
pub(crate) fn request(
    method: &str,
    from: SocketAddr,
    branch: &str,
    call_id: &str,
    extra: &str,
) -> String {
    format!(
        "{method} sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\nFrom: <sip:uac@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

pub(crate) struct UdpUac {
    pub(crate) sock: UdpSocket,
    to: SocketAddr,
}

impl UdpUac {
    pub(crate) fn new(to: SocketAddr) -> UdpUac {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        UdpUac { sock, to }
    }
    pub(crate) fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }
    pub(crate) fn send(&self, text: &str) {
        self.sock.send_to(text.as_bytes(), self.to).expect("send");
    }
    /// The next message within `wait`.
    pub(crate) fn recv(&self, wait: Duration) -> Option<SipMsg> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65535];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                return Some(
                    siphon_sip::parse(Bytes::copy_from_slice(&buf[..n]))
                        .expect("siphon sent a parsable message"),
                );
            }
        }
        None
    }
    /// The status of the next reply, skipping provisional ones unless `keep_1xx`.
    pub(crate) fn final_code(&self, wait: Duration) -> Option<u16> {
        let deadline = Instant::now() + wait;
        while let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            let c = m.status()?;
            if c >= 200 {
                return Some(c);
            }
        }
        None
    }
}

pub(crate) struct TcpUac {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpUac {
    pub(crate) fn new(to: SocketAddr) -> TcpUac {
        let stream = TcpStream::connect(to).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        TcpUac {
            stream,
            buf: vec![],
        }
    }
    pub(crate) fn addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("addr")
    }
    pub(crate) fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).expect("write");
    }
    pub(crate) fn recv(&mut self, wait: Duration) -> Option<SipMsg> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(n)) = siphon_sip::tcp_frame_len(&self.buf, 65536) {
                let frame: Vec<u8> = self.buf.drain(..n).collect();
                return Some(siphon_sip::parse(Bytes::from(frame)).expect("parsable"));
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => {}
            }
        }
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1, made by
/// openssl in `dir`: (ca.pem, cert.pem, key.pem).
pub(crate) fn test_certs(
    dir: &super::cli::Scratch,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (ca, ca_key) = (dir.0.join("ca.pem"), dir.0.join("ca.key"));
    let (cert, key, csr) = (
        dir.0.join("cert.pem"),
        dir.0.join("key.pem"),
        dir.0.join("leaf.csr"),
    );
    let ext = dir.write(
        "ext.cnf",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt-get install openssl; .ci/run does it)");
        assert!(ok.success(), "openssl {args:?}");
    };
    let o = |s: &'static str| std::ffi::OsStr::new(s);
    run(&[
        o("req"),
        o("-x509"),
        o("-newkey"),
        o("rsa:2048"),
        o("-nodes"),
        o("-days"),
        o("1"),
        o("-subj"),
        o("/CN=siphon test CA"),
        o("-keyout"),
        ca_key.as_os_str(),
        o("-out"),
        ca.as_os_str(),
    ]);
    run(&[
        o("req"),
        o("-newkey"),
        o("rsa:2048"),
        o("-nodes"),
        o("-subj"),
        o("/CN=localhost"),
        o("-keyout"),
        key.as_os_str(),
        o("-out"),
        csr.as_os_str(),
    ]);
    run(&[
        o("x509"),
        o("-req"),
        o("-in"),
        csr.as_os_str(),
        o("-CA"),
        ca.as_os_str(),
        o("-CAkey"),
        ca_key.as_os_str(),
        o("-CAcreateserial"),
        o("-days"),
        o("1"),
        o("-extfile"),
        std::ffi::OsStr::new(&ext),
        o("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

/// Runs a sipp scenario of `bench/sipp` against `target` (`u1` UDP, `t1`
/// TCP): `calls` calls at `rate`/s, at most `inflight` at once; asserts it
/// ended with zero failed calls.
pub(crate) fn sipp(
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    calls: u32,
    rate: u32,
    inflight: u32,
) {
    let path = format!("{}/../../bench/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let n = |v: u32| v.to_string();
    let out = Command::new("sipp")
        .args(["-sf", &path, &target.to_string(), "-t", transport])
        .args(["-m", &n(calls), "-r", &n(rate), "-l", &n(inflight)])
        .args([
            "-nostdin",
            "-timeout",
            "30",
            "-timeout_error",
            "-i",
            "127.0.0.1",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("sipp is installed (apt-get install sip-tester; .ci/run does it)");
    assert!(
        out.status.success(),
        "sipp {scenario} over {transport} failed: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A Python peer from `tests/interop`, killed when dropped. It prints
/// `port N` first; later lines that start with `prefix` carry one JSON
/// document each (what the peer received), in order.
pub(crate) struct PyPeer {
    child: Child,
    pub(crate) port: u16,
    pub(crate) docs: mpsc::Receiver<serde_json::Value>,
}

impl PyPeer {
    /// Starts `tests/interop/SCRIPT ARGS…`; `needs` names what to install when it does not start.
    pub(crate) fn start(script: &str, args: &[&str], prefix: &'static str, needs: &str) -> PyPeer {
        let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("{script} did not start (pip install {needs}; .ci/run does it): {first:?}")
            });
        let (tx, docs) = mpsc::channel();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if let Some(d) = l.strip_prefix(prefix) {
                    let _ = tx.send(serde_json::from_str(d).expect("a JSON line"));
                }
            }
        });
        PyPeer { child, port, docs }
    }
    /// The next document within 5 s.
    pub(crate) fn next(&self) -> Option<serde_json::Value> {
        self.docs.recv_timeout(Duration::from_secs(5)).ok()
    }
    /// Whether nothing arrives within `d`.
    pub(crate) fn nothing_within(&self, d: Duration) -> bool {
        self.docs.recv_timeout(d).is_err()
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `-sf bench/sipp/FILE` for a scenario file (`uas_busy.xml`), `-sn NAME` for
/// one of sipp's built-in scenarios (`uac`, `uas`).
fn sipp_scenario(scenario: &str) -> [String; 2] {
    if scenario.ends_with(".xml") {
        let path = format!("{}/../../bench/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
        ["-sf".into(), path]
    } else {
        ["-sn".into(), scenario.into()]
    }
}

/// A loopback port nobody uses right now (`u1`: UDP, `t1`: TCP).
pub(crate) fn free_port(transport: &str) -> SocketAddr {
    free_port_on("127.0.0.1", transport)
}

/// A port nobody uses right now on the local address `ip` (`::1` for IPv6).
pub(crate) fn free_port_on(ip: &str, transport: &str) -> SocketAddr {
    let any = SocketAddr::new(ip.parse().expect("an IP address"), 0);
    if transport == "t1" {
        std::net::TcpListener::bind(any)
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        UdpSocket::bind(any).unwrap().local_addr().unwrap()
    }
}

/// Waits until some process has bound `addr` (binding it ourselves fails):
/// true then, false when `child` exited first or 10 s passed.
pub(crate) fn wait_bound(addr: SocketAddr, transport: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let taken = if transport == "t1" {
            std::net::TcpListener::bind(addr).is_err()
        } else {
            UdpSocket::bind(addr).is_err()
        };
        if taken {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A sipp UAS on a free 127.0.0.1 port running `scenario` (a file of
/// `bench/sipp` or a built-in name, see `sipp_scenario`) over `transport`
/// (`u1`, `t1`); killed when dropped. `finish` ends it gently and tells
/// how its calls went (whether it saw every ACK, CANCEL, BYE it expects).
pub(crate) struct SippUas {
    pub(crate) addr: SocketAddr,
    pub(crate) child: Child,
    /// stdout and stderr, read as they come (sipp redraws its screen every
    /// second: a full pipe would stop it).
    output: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

/// What a sipp run ended with: its counters and its output.
pub(crate) struct SippRun {
    pub(crate) successful: u64,
    pub(crate) failed: u64,
    pub(crate) output: String,
}

impl SippRun {
    fn of(out: &std::process::Output) -> SippRun {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // "  Successful call  |  <periodic>  |  <cumulative>": the last such line.
        let count = |what: &str| {
            output
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with(what))
                .and_then(|l| l.rsplit('|').next()?.trim().parse().ok())
                .unwrap_or(0)
        };
        SippRun {
            successful: count("Successful call"),
            failed: count("Failed call"),
            output,
        }
    }
    /// The output's last lines, for a failure message.
    pub(crate) fn tail(&self) -> String {
        let lines: Vec<_> = self.output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl SippUas {
    pub(crate) fn start(scenario: &str, transport: &str) -> SippUas {
        SippUas::start_on("127.0.0.1", scenario, transport, &[])
    }

    /// [`SippUas::start`] on the local address `ip` (`::1`), with `args` added (`-nr`).
    pub(crate) fn start_on(ip: &str, scenario: &str, transport: &str, args: &[&str]) -> SippUas {
        // Another process may take the free port before sipp binds it: try again then.
        for _ in 0..5 {
            let addr = free_port_on(ip, transport);
            let mut child = Command::new("sipp")
                .args(sipp_scenario(scenario))
                .args(["-i", ip, "-p", &addr.port().to_string()])
                .args(["-t", transport, "-nostdin"])
                .args(args)
                .current_dir(std::env::temp_dir())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sipp is installed (apt-get install sip-tester; .ci/run does it)");
            let streams: [Box<dyn Read + Send>; 2] = [
                Box::new(child.stdout.take().expect("stdout")),
                Box::new(child.stderr.take().expect("stderr")),
            ];
            let output = streams
                .into_iter()
                .map(|mut s| {
                    std::thread::spawn(move || {
                        let mut v = Vec::new();
                        let _ = s.read_to_end(&mut v);
                        v
                    })
                })
                .collect();
            let mut uas = SippUas {
                addr,
                child,
                output,
            };
            if wait_bound(addr, transport, &mut uas.child) {
                return uas;
            }
            eprintln!(
                "sipp UAS {scenario} on {addr} did not start: {}",
                uas.stop().tail()
            );
        }
        panic!("sipp UAS {scenario} did not start");
    }

    /// Stops it (SIGUSR1: no new calls, sipp exits once the current ones
    /// ended) and returns its counters; killed after 10 s.
    pub(crate) fn finish(mut self) -> SippRun {
        let _ = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop()
    }

    /// Kills it (if still running) and returns what it printed.
    fn stop(&mut self) -> SippRun {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait sipp");
        let mut text = self.output.drain(..).map(|h| h.join().unwrap_or_default());
        SippRun::of(&std::process::Output {
            status,
            stdout: text.next().unwrap_or_default(),
            stderr: text.next().unwrap_or_default(),
        })
    }
}

impl Drop for SippUas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs sipp as a UAC: `scenario` (file of `bench/sipp` or built-in name)
/// against `target` over `transport`, `calls` calls at most 10 at once,
/// `args` added (`-key expect 486`); asserts every call succeeded and
/// returns its output.
pub(crate) fn sipp_uac(
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    calls: u32,
    args: &[&str],
) -> String {
    sipp_uac_on("127.0.0.1", scenario, target, transport, calls, args)
}

/// [`sipp_uac`] from the local address `ip` (`::1`).
pub(crate) fn sipp_uac_on(
    ip: &str,
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    calls: u32,
    args: &[&str],
) -> String {
    let out = Command::new("sipp")
        .args(sipp_scenario(scenario))
        .args([&target.to_string(), "-t", transport, "-i", ip])
        .args(["-p", &free_port_on(ip, transport).port().to_string()])
        .args(["-m", &calls.to_string(), "-l", "10", "-r", "100"])
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("sipp is installed (apt-get install sip-tester; .ci/run does it)");
    let run = SippRun::of(&out);
    assert!(
        out.status.success() && run.successful == u64::from(calls),
        "sipp {scenario} {args:?} against {target} over {transport}: {} of {calls} calls ok\n{}",
        run.successful,
        run.tail()
    );
    run.output
}

/// Stops a server the test started (siphon, Kamailio): SIGTERM (Kamailio
/// then stops the workers it forked), 5 s to exit, then SIGKILL.
pub(crate) fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
