//! `Outbound::send_to` end to end over loopback: a started core, peers
//! written here (TCP listeners, a rustls server, a listener that never
//! accepts). In the crate because the send side is not public API; the
//! script-level paths (t_relay over TCP/TLS) are tested from the binary.

use super::*;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

/// Long enough for anything on loopback; a test failing waits this at most.
const PATIENCE: Duration = Duration::from_secs(5);

const CFG: &str = r#"
listen=udp:127.0.0.1:0
listen=tcp:127.0.0.1:0
tcp_connect_timeout=1
request_route {
    sl_send_reply("200", "OK");
}
"#;

async fn start_core(cfg: &str) -> (Arc<Core>, CancellationToken) {
    let core = Core::new();
    let mut reg = siphon_script::Registry::new();
    core.register(&mut reg);
    let loaded = siphon_script::load_str("t.cfg", cfg, &siphon_cfg::PreOptions::default(), &reg);
    let program = Arc::new(loaded.program.unwrap_or_else(|| {
        panic!(
            "{}",
            siphon_cfg::diag::render_all(&loaded.diags, &loaded.sources)
        )
    }));
    let shutdown = CancellationToken::new();
    core.start(program, shutdown.clone()).await.expect("start");
    (core, shutdown)
}

fn tcp(addr: SocketAddr) -> Target {
    Target {
        transport: Transport::Tcp,
        addr,
    }
}

fn options(n: u32) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:peer@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKtest{n}\r\nFrom: <sip:a@127.0.0.1>;tag={n}\r\nTo: <sip:peer@127.0.0.1>\r\nCall-ID: out-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn reply_to(n: u32) -> Vec<u8> {
    format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKtest{n}\r\nFrom: <sip:a@127.0.0.1>;tag={n}\r\nTo: <sip:peer@127.0.0.1>;tag=p\r\nCall-ID: out-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A notice that forwards the error, and where it arrives.
fn notice() -> (FailNotice, UnboundedReceiver<SendError>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

async fn next_failure(rx: &mut UnboundedReceiver<SendError>) -> SendError {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a failure notice in time")
        .expect("the notice was dropped without being called")
}

/// Notices that record what they were told, for the test body to check.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<SendError>>>);

impl Recorder {
    fn notice(&self) -> FailNotice {
        let r = self.0.clone();
        Box::new(move |e| r.lock().unwrap().push(e))
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn all(&self) -> Vec<SendError> {
        self.0.lock().unwrap().clone()
    }
}

/// Reads from `s` until `buf` holds `n` whole bodiless messages; returns them.
async fn read_messages<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> Vec<String> {
    let ends = |b: &[u8]| b.windows(4).filter(|w| *w == b"\r\n\r\n").count();
    while ends(buf) < n {
        let mut chunk = [0u8; 4096];
        let k = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("messages in time")
            .expect("read");
        assert!(
            k > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..k]);
    }
    let text = String::from_utf8(std::mem::take(buf)).unwrap();
    text.split_inclusive("\r\n\r\n")
        .map(str::to_string)
        .collect()
}

async fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    tokio::time::timeout(PATIENCE, l.accept())
        .await
        .expect("a connection in time")
        .expect("accept")
}

/// Once the connection to `to` has left the table, the next send opens a
/// second one, which `peer` accepts.
async fn sends_over_a_new_connection(core: &Arc<Core>, peer: &TcpListener, to: Target) {
    wait_for("the old connection to leave the table", || {
        core.out
            .conns
            .lock()
            .unwrap()
            .open_to((to.transport, to.addr))
            .is_none()
    })
    .await;
    core.out.send_to(core, to, None, options(77), None).unwrap();
    let (mut fresh, _) = accept(peer).await;
    let got = read_messages(&mut fresh, &mut Vec::new(), 1).await;
    assert!(got[0].contains("CSeq: 77 OPTIONS"));
    assert_eq!(count(&core.stats.tcp_connects), 2);
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < PATIENCE, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_opened_once_reused_and_served_both_ways() {
    let (core, shutdown) = start_core(CFG).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tcp(peer.local_addr().unwrap());

    // Two sends before the connection is up: both queue on the one connection.
    core.out.send_to(&core, to, None, options(1), None).unwrap();
    core.out.send_to(&core, to, None, options(2), None).unwrap();
    let (mut conn, _) = accept(&peer).await;
    let mut buf = Vec::new();
    let got = read_messages(&mut conn, &mut buf, 2).await;
    assert!(got[0].contains("CSeq: 1 OPTIONS") && got[1].contains("CSeq: 2 OPTIONS"));
    assert_eq!(count(&core.stats.tcp_connects), 1);

    // Once up, a third send goes over it too.
    core.out.send_to(&core, to, None, options(3), None).unwrap();
    let got = read_messages(&mut conn, &mut buf, 1).await;
    assert!(got[0].contains("CSeq: 3 OPTIONS"));

    // A reply on it reaches Core::on_message.
    let replies = count(&core.stats.rcv_replies);
    conn.write_all(&reply_to(1)).await.unwrap();
    wait_for("the reply to reach on_message", || {
        count(&core.stats.rcv_replies) > replies
    })
    .await;

    // A request on it is answered on it (Peer.conn is set).
    conn.write_all(&options(9)).await.unwrap();
    let got = read_messages(&mut conn, &mut buf, 1).await;
    assert!(got[0].starts_with("SIP/2.0 200 OK"), "{}", got[0]);
    assert!(got[0].contains("CSeq: 9 OPTIONS"));
    assert_eq!(count(&core.stats.tcp_connects), 1);

    // When the peer closes it, the next send opens a new one.
    drop(conn);
    sends_over_a_new_connection(&core, &peer, to).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_peer_opened_carries_our_requests() {
    let (core, shutdown) = start_core(CFG).await;
    let listener = core
        .bound()
        .iter()
        .find(|b| b.transport == Transport::Tcp)
        .unwrap()
        .addr;
    let mut client = TcpStream::connect(listener).await.unwrap();
    let me = client.local_addr().unwrap();
    client.write_all(&options(1)).await.unwrap();
    let mut buf = Vec::new();
    let got = read_messages(&mut client, &mut buf, 1).await;
    assert!(got[0].starts_with("SIP/2.0 200 OK"));

    // A request to the client's source address goes over its connection.
    core.out
        .send_to(&core, tcp(me), None, options(2), None)
        .unwrap();
    let got = read_messages(&mut client, &mut buf, 1).await;
    assert!(
        got[0].starts_with("OPTIONS sip:peer@127.0.0.1"),
        "{}",
        got[0]
    );
    assert_eq!(count(&core.stats.tcp_connects), 0);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_fails_its_bytes_at_once() {
    let (core, shutdown) = start_core(CFG).await;
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (n1, mut rx1) = notice();
    let (n2, mut rx2) = notice();
    core.out
        .send_to(&core, tcp(addr), None, options(1), Some(n1))
        .unwrap();
    core.out
        .send_to(&core, tcp(addr), None, options(2), Some(n2))
        .unwrap();
    // Refused, not timed out (tcp_connect_timeout is 1 s here).
    assert_eq!(
        next_failure(&mut rx1).await,
        SendError::ConnectRefused(addr)
    );
    assert_eq!(
        next_failure(&mut rx2).await,
        SendError::ConnectRefused(addr)
    );
    // One connect for both, or two when the first was refused before the
    // second send looked for it: either way, never a timeout.
    assert!((1..=2).contains(&count(&core.stats.tcp_connect_failures)));
    assert_eq!(count(&core.stats.tcp_connect_timeouts), 0);
    assert_eq!(count(&core.stats.tcp_connects), 0);
    shutdown.cancel();
}

/// A listener whose accept queue is full and never drained: the system
/// drops further SYNs, so a connect to it neither succeeds nor fails.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fill.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (l, fill, addr),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the system kept accepting connections to a listener with backlog 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_times_out_and_fails_everything_queued() {
    let (core, shutdown) = start_core(CFG).await;
    let (_listener, _fill, addr) = blackhole();
    let (first, mut rx) = notice();
    let start = Instant::now();
    core.out
        .send_to(&core, tcp(addr), None, options(0), Some(first))
        .unwrap();
    // The queue fills while it connects; one more is refused, not notified.
    let queued = Recorder::default();
    for n in 1..TCP_QUEUE {
        core.out
            .send_to(
                &core,
                tcp(addr),
                None,
                options(n as u32),
                Some(queued.notice()),
            )
            .unwrap();
    }
    let refused = Recorder::default();
    assert_eq!(
        core.out.send_to(
            &core,
            tcp(addr),
            None,
            options(9999),
            Some(refused.notice())
        ),
        Err(SendError::QueueFull(addr))
    );
    let e = next_failure(&mut rx).await;
    let waited = start.elapsed();
    assert_eq!(
        e,
        SendError::ConnectTimeout {
            to: addr,
            after: Duration::from_secs(1)
        }
    );
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(2500)).contains(&waited),
        "tcp_connect_timeout is 1 s, failed after {waited:?}"
    );
    wait_for("every queued message to fail", || {
        queued.len() == TCP_QUEUE - 1
    })
    .await;
    assert!(queued.all().iter().all(|q| *q == e));
    assert_eq!(refused.len(), 0, "an error returned is not also notified");
    assert_eq!(count(&core.stats.tcp_connect_failures), 1);
    assert_eq!(count(&core.stats.tcp_connect_timeouts), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_after_tcp_send_timeout() {
    let (core, shutdown) = start_core(&CFG.replace(
        "tcp_connect_timeout=1",
        "tcp_connect_timeout=1\ntcp_send_timeout=1",
    ))
    .await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tcp(peer.local_addr().unwrap());
    // 64 MB queued toward a peer that reads nothing: the socket buffers take a
    // few MB, then a write blocks for tcp_send_timeout.
    let big = Bytes::from(vec![b'x'; 64 * 1024]);
    let lost = Recorder::default();
    for _ in 0..TCP_QUEUE {
        core.out
            .send_to(&core, to, None, big.clone(), Some(lost.notice()))
            .unwrap();
    }
    let (_deaf, _) = accept(&peer).await;
    wait_for("tcp_send_timeout to close the connection", || {
        count(&core.stats.tcp_send_timeouts) == 1
    })
    .await;
    // The messages the socket did not take are reported (the system buffers
    // far less than half of 64 MB), the ones it took are not.
    wait_for("the unwritten messages to fail", || {
        lost.len() > TCP_QUEUE / 2
    })
    .await;
    let all = lost.all();
    assert!(all.len() < TCP_QUEUE);
    assert!(
        all.iter()
            .all(|e| *e == SendError::ConnectionClosed(to.addr))
    );
    // The broken connection is not reused.
    sends_over_a_new_connection(&core, &peer, to).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_sends_only_over_an_open_connection() {
    let (core, shutdown) = start_core(CFG).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tcp(peer.local_addr().unwrap());
    let only_open = SendOptions {
        no_connect: true,
        ..Default::default()
    };
    assert_eq!(
        core.out.send_with(&core, to, &only_open, options(1), None),
        Err(SendError::NoConnection(to.addr))
    );
    core.out.send_to(&core, to, None, options(2), None).unwrap();
    let (mut conn, _) = accept(&peer).await;
    core.out
        .send_with(&core, to, &only_open, options(3), None)
        .unwrap();
    let got = read_messages(&mut conn, &mut Vec::new(), 2).await;
    assert!(got[0].contains("CSeq: 2 ") && got[1].contains("CSeq: 3 "));
    assert_eq!(count(&core.stats.tcp_connects), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_goes_from_our_socket_of_the_family() {
    let (core, shutdown) = start_core(CFG).await;
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = Target {
        transport: Transport::Udp,
        addr: peer.local_addr().unwrap(),
    };
    core.out.send_to(&core, to, None, options(1), None).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(PATIENCE, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"OPTIONS "));
    assert_eq!(Some(from), core.out.udp_addrs().first().copied());
    // No IPv6 socket: refused at once.
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5060));
    assert_eq!(
        core.out.send_to(
            &core,
            Target {
                transport: Transport::Udp,
                addr: v6
            },
            None,
            options(2),
            None
        ),
        Err(SendError::NoUdpSocket(v6))
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_picks_the_local_address_and_ipv6_works_too() {
    let (core, shutdown) = start_core(&format!(
        "{CFG}\nlisten=udp:127.0.0.2:0\nlisten=udp:[::1]:0\nlisten=tcp:[::1]:0\n"
    ))
    .await;
    let second = core
        .bound()
        .iter()
        .find(|b| b.addr.ip() == IpAddr::from([127, 0, 0, 2]))
        .unwrap()
        .addr;
    // UDP from the socket `from` names (`$fs`), not the first one.
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = Target {
        transport: Transport::Udp,
        addr: peer.local_addr().unwrap(),
    };
    core.out
        .send_to(&core, to, Some(second), options(1), None)
        .unwrap();
    let mut buf = [0u8; 2048];
    let (_, src) = tokio::time::timeout(PATIENCE, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src, second);
    // A new TCP connection binds its source to `from`'s address.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tcp(listener.local_addr().unwrap());
    core.out
        .send_to(&core, to, Some(second), options(2), None)
        .unwrap();
    let (_conn, src) = accept(&listener).await;
    assert_eq!(src.ip(), second.ip());
    // TCP over IPv6, and the Via for it.
    let listener6 = TcpListener::bind("[::1]:0").await.unwrap();
    let to6 = tcp(listener6.local_addr().unwrap());
    core.out
        .send_to(&core, to6, None, options(3), None)
        .unwrap();
    let (mut conn6, _) = accept(&listener6).await;
    let got = read_messages(&mut conn6, &mut Vec::new(), 1).await;
    assert!(got[0].contains("CSeq: 3 "));
    let tcp6 = core
        .bound()
        .iter()
        .find(|b| b.transport == Transport::Tcp && b.addr.is_ipv6())
        .unwrap()
        .addr;
    assert_eq!(
        core.out.via_sent_by(to6, None),
        Some(format!("[::1]:{}", tcp6.port()))
    );
    shutdown.cancel();
}

/// A CA, a leaf for IP 127.0.0.1 signed by it, and an unrelated CA.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    fn make() -> Certs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "siphon-outbound-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let run = |args: &str| {
            let ok = std::process::Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl (scripts/install-test-peers.sh installs it)");
            assert!(ok.success(), "openssl {args}");
        };
        for ca in ["ca", "other"] {
            run(&format!(
                "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN={ca} -keyout {ca}.key -out {ca}.pem"
            ));
        }
        run("req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr");
        run(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem",
        );
        Certs { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
    /// A core whose tls module trusts `ca` (a file name here) for the servers it connects to.
    fn cfg(&self, ca: &str) -> String {
        format!(
            "{CFG}\nloadmodule \"tls.so\"\nmodparam(\"tls\", \"certificate\", \"{}\")\nmodparam(\"tls\", \"private_key\", \"{}\")\nmodparam(\"tls\", \"ca_list\", \"{}\")\n",
            self.path("cert.pem"),
            self.path("key.pem"),
            self.path(ca)
        )
    }
    /// A rustls server with the leaf certificate.
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(self.path("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.path("key.pem")).unwrap();
        let sc = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(sc))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls(addr: SocketAddr) -> Target {
    Target {
        transport: Transport::Tls,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_server_the_ca_list_vouches_for() {
    let certs = Certs::make();
    let (core, shutdown) = start_core(&certs.cfg("ca.pem")).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tls(peer.local_addr().unwrap());
    core.out.send_to(&core, to, None, options(1), None).unwrap();
    core.out.send_to(&core, to, None, options(2), None).unwrap();
    let (raw, _) = accept(&peer).await;
    let mut conn = certs.acceptor().accept(raw).await.expect("handshake");
    let mut buf = Vec::new();
    let got = read_messages(&mut conn, &mut buf, 2).await;
    assert!(got[0].contains("CSeq: 1 ") && got[1].contains("CSeq: 2 "));
    let replies = count(&core.stats.rcv_replies);
    conn.write_all(&reply_to(1)).await.unwrap();
    conn.flush().await.unwrap();
    wait_for("the reply over TLS to reach on_message", || {
        count(&core.stats.rcv_replies) > replies
    })
    .await;
    assert_eq!(count(&core.stats.tcp_connects), 1);
    shutdown.cancel();
}

/// A core trusting `ca` that sent one message over TLS to a listener here,
/// with its failure notice.
struct TlsAttempt {
    certs: Certs,
    core: Arc<Core>,
    shutdown: CancellationToken,
    peer: TcpListener,
    to: Target,
    failure: UnboundedReceiver<SendError>,
}

async fn tls_attempt(ca: &str) -> TlsAttempt {
    let certs = Certs::make();
    let (core, shutdown) = start_core(&certs.cfg(ca)).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tls(peer.local_addr().unwrap());
    let (n, failure) = notice();
    core.out
        .send_to(&core, to, None, options(1), Some(n))
        .unwrap();
    TlsAttempt {
        certs,
        core,
        shutdown,
        peer,
        to,
        failure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_server_of_another_ca_fails() {
    let TlsAttempt {
        certs,
        core,
        shutdown,
        peer,
        to,
        failure: mut rx,
    } = tls_attempt("other.pem").await;
    let (raw, _) = accept(&peer).await;
    assert!(certs.acceptor().accept(raw).await.is_err());
    let e = next_failure(&mut rx).await;
    assert!(
        matches!(&e, SendError::TlsHandshake { to: a, reason } if *a == to.addr && reason.contains("certificate")),
        "{e}"
    );
    assert_eq!(count(&core.stats.tcp_connect_failures), 1);
    assert_eq!(count(&core.stats.tls_failed), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_that_never_answers_times_out() {
    let TlsAttempt {
        core,
        shutdown,
        peer,
        failure: mut rx,
        ..
    } = tls_attempt("ca.pem").await;
    // Accepts TCP, never speaks TLS.
    let (_silent, _) = accept(&peer).await;
    assert!(matches!(
        next_failure(&mut rx).await,
        SendError::ConnectTimeout { after, .. } if after == Duration::from_secs(1)
    ));
    assert_eq!(count(&core.stats.tcp_connect_timeouts), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_ca_list_is_refused_unless_verification_is_off() {
    let certs = Certs::make();
    let base = format!(
        "{CFG}\nloadmodule \"tls.so\"\nmodparam(\"tls\", \"certificate\", \"{}\")\nmodparam(\"tls\", \"private_key\", \"{}\")\n",
        certs.path("cert.pem"),
        certs.path("key.pem")
    );
    let (core, shutdown) = start_core(&base).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = tls(peer.local_addr().unwrap());
    let e = core
        .out
        .send_to(&core, to, None, options(1), None)
        .unwrap_err();
    assert!(
        matches!(&e, SendError::NoTlsClient { reason, .. } if reason.contains("client_verify_certificate")),
        "{e}"
    );
    shutdown.cancel();

    // Turned off explicitly: any certificate is taken (here one no CA we know signed).
    let off = format!("{base}modparam(\"tls\", \"client_verify_certificate\", 0)\n");
    let (core, shutdown) = start_core(&off).await;
    core.out.send_to(&core, to, None, options(2), None).unwrap();
    let (raw, _) = accept(&peer).await;
    let mut conn = certs.acceptor().accept(raw).await.expect("handshake");
    let got = read_messages(&mut conn, &mut Vec::new(), 1).await;
    assert!(got[0].contains("CSeq: 2 "));
    shutdown.cancel();
}

#[test]
fn via_names_the_listener_of_the_transport_and_family() {
    let out = Outbound::default();
    let l = |transport, addr: &str, advertise: Option<&str>| {
        Listener::new(
            transport,
            addr.parse().unwrap(),
            advertise.map(str::to_string),
        )
    };
    out.listeners.lock().unwrap().extend([
        l(Transport::Udp, "127.0.0.1:5060", None),
        l(Transport::Udp, "127.0.0.2:5080", None),
        l(Transport::Udp, "[::1]:5062", None),
        l(Transport::Tcp, "0.0.0.0:5070", None),
        l(
            Transport::Tls,
            "127.0.0.1:5061",
            Some("sip.example.com:5061"),
        ),
    ]);
    let t = |transport, addr: &str| Target {
        transport,
        addr: addr.parse().unwrap(),
    };
    let via = |to, from: Option<&str>| out.via_sent_by(to, from.map(|f| f.parse().unwrap()));
    assert_eq!(
        via(t(Transport::Udp, "127.0.0.9:5060"), None).as_deref(),
        Some("127.0.0.1:5060")
    );
    assert_eq!(
        via(t(Transport::Udp, "127.0.0.9:5060"), Some("127.0.0.2:5080")).as_deref(),
        Some("127.0.0.2:5080")
    );
    assert_eq!(
        via(t(Transport::Udp, "[::1]:5060"), None).as_deref(),
        Some("[::1]:5062")
    );
    // A wildcard listener names the address the system sends from.
    assert_eq!(
        via(t(Transport::Tcp, "127.0.0.1:5060"), None).as_deref(),
        Some("127.0.0.1:5070")
    );
    assert_eq!(
        via(t(Transport::Tls, "127.0.0.1:5061"), None).as_deref(),
        Some("sip.example.com:5061")
    );
    // No TCP listener of the family, none for TLS over IPv6.
    assert_eq!(via(t(Transport::Tcp, "[::1]:5060"), None), None);
    assert_eq!(via(t(Transport::Tls, "[::1]:5061"), None), None);
    // The whole Via value: made once for a fixed address, per request for a wildcard.
    let value = |to, from: Option<&str>| out.via_value(to, from.map(|f| f.parse().unwrap()));
    assert_eq!(
        value(t(Transport::Udp, "127.0.0.9:5060"), Some("127.0.0.2:5080")).as_deref(),
        Some(&b"SIP/2.0/UDP 127.0.0.2:5080"[..])
    );
    assert_eq!(
        value(t(Transport::Udp, "[::1]:5060"), None).as_deref(),
        Some(&b"SIP/2.0/UDP [::1]:5062"[..])
    );
    assert_eq!(
        value(t(Transport::Tcp, "127.0.0.1:5060"), None).as_deref(),
        Some(&b"SIP/2.0/TCP 127.0.0.1:5070"[..])
    );
    assert_eq!(
        value(t(Transport::Tls, "127.0.0.1:5061"), None).as_deref(),
        Some(&b"SIP/2.0/TLS sip.example.com:5061"[..])
    );
    assert_eq!(value(t(Transport::Tcp, "[::1]:5060"), None), None);
}

#[test]
fn the_table_forgets_only_its_own_address() {
    let mut t = ConnTable::default();
    let key = (Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], 5060)));
    let (a, _ra) = mpsc::channel(1);
    let (b, _rb) = mpsc::channel(1);
    t.insert(1, key, a);
    // A newer connection to the same address takes over the look-up.
    t.insert(2, key, b);
    t.remove(1);
    assert!(t.open_to(key).is_some());
    assert!(t.by_id.contains_key(&2));
    t.remove(2);
    assert!(t.open_to(key).is_none());
    // A connection whose writer ended is not offered.
    let (c, rc) = mpsc::channel(1);
    t.insert(3, key, c);
    drop(rc);
    assert!(t.open_to(key).is_none());
}

#[test]
fn a_queued_message_reports_once_and_only_when_lost() {
    let to = SocketAddr::from(([127, 0, 0, 1], 5060));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let on = |seen: &Arc<Mutex<Vec<SendError>>>| -> Option<FailNotice> {
        let s = seen.clone();
        Some(Box::new(move |e| s.lock().unwrap().push(e)))
    };
    Queued::new(Bytes::new(), to, on(&seen)).delivered();
    let _ = Queued::new(Bytes::new(), to, on(&seen)).refuse(SendError::QueueFull(to));
    assert!(seen.lock().unwrap().is_empty());
    Queued::new(Bytes::new(), to, on(&seen)).fail(SendError::ConnectRefused(to));
    drop(Queued::new(Bytes::new(), to, on(&seen)));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            SendError::ConnectRefused(to),
            SendError::ConnectionClosed(to)
        ]
    );
}
