//! The I/O shell: UDP sockets (one per worker, SO_REUSEPORT), TCP listeners
//! with Content-Length framing, and the send paths. Everything protocol-ish
//! is in `siphon-sip`; this file only moves bytes.

use crate::Core;
use bytes::{Buf, Bytes, BytesMut};
use siphon_script::core::{ListenSpec, Proto};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The transport a message came over or goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Lower-case name (`$pr`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
    /// Connection-oriented: replies go back on the connection, no retransmissions.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a message came from, and so where its replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Transport.
    pub transport: Transport,
    /// The sender's address.
    pub src: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// The TCP connection, for replies on the same connection.
    pub conn: Option<u64>,
}

/// A bound listener, as reported at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Transport.
    pub transport: Transport,
    /// The address, with the port the system chose for port 0.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.name(), self.addr)
    }
}

/// Bytes waiting per TCP connection before it is considered stuck.
const TCP_QUEUE: usize = 1024;
const UDP_RECV_BUF: usize = 65_535;

/// The largest UDP payload towards `to`: 65,507 bytes over IPv4, 65,527 over IPv6.
pub(crate) fn max_datagram(to: SocketAddr) -> usize {
    if to.is_ipv4() { 65_507 } else { 65_527 }
}

/// The send side of every listener.
#[derive(Default)]
pub(crate) struct Outbound {
    udp: Mutex<Vec<(SocketAddr, Arc<UdpSocket>)>>,
    conns: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    next_conn: AtomicU64,
}

impl Outbound {
    /// Sends to a peer: over the connection it came on, or from the UDP socket it arrived on.
    pub(crate) fn send(&self, core: &Core, peer: &Peer, to: SocketAddr, bytes: Bytes) {
        let ok = match (peer.transport, peer.conn) {
            (Transport::Tcp | Transport::Tls, Some(id)) => {
                let tx = self.conns.lock().ok().and_then(|c| c.get(&id).cloned());
                match tx {
                    Some(tx) => tx.try_send(bytes).is_ok(),
                    None => false,
                }
            }
            // A TCP peer without a SIP connection (an HTTP request in xhttp): nowhere to send.
            (Transport::Tcp | Transport::Tls, None) => false,
            _ => self.send_udp(Some(peer.local), to, bytes),
        };
        if !ok {
            crate::stats::Stats::inc(&core.stats.send_failures);
        }
    }

    /// Sends a datagram from the socket bound to `from`, or any socket of the right family.
    pub(crate) fn send_udp(&self, from: Option<SocketAddr>, to: SocketAddr, bytes: Bytes) -> bool {
        let sock = {
            let Ok(socks) = self.udp.lock() else {
                return false;
            };
            socks
                .iter()
                .find(|(a, _)| Some(*a) == from)
                .or_else(|| socks.iter().find(|(a, _)| a.is_ipv4() == to.is_ipv4()))
                .map(|(_, s)| s.clone())
        };
        match sock {
            // Never wait on the SIP path: a full kernel buffer drops the datagram (the
            // caller counts it) and SIP's retransmissions recover.
            Some(s) => s.try_send_to(&bytes, to).is_ok(),
            None => false,
        }
    }

    /// Our UDP addresses.
    pub(crate) fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .lock()
            .map(|s| s.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }
}

fn resolve(spec: &ListenSpec) -> std::io::Result<SocketAddr> {
    let ip: IpAddr = match spec.host.as_str() {
        "*" | "0.0.0.0" => IpAddr::from([0, 0, 0, 0]),
        h => h.parse().or_else(|_| {
            use std::net::ToSocketAddrs;
            (h, 0)
                .to_socket_addrs()?
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| std::io::Error::other(format!("cannot resolve {h}")))
        })?,
    };
    let port = spec
        .port
        .unwrap_or(if spec.proto == Proto::Tls { 5061 } else { 5060 });
    Ok(SocketAddr::new(ip, port))
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds every listen address and starts the receive loops.
pub(crate) async fn start(
    core: &Arc<Core>,
    specs: &[ListenSpec],
    workers: usize,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    // One limit for all TCP listeners together, as Kamailio's tcp_max_connections.
    let tcp_limit = Arc::new(TcpShared::new(core.program().map(|p| &p.core)));
    for spec in specs {
        let addr = resolve(spec)?;
        if matches!(spec.proto, Proto::Udp | Proto::Any) {
            let first = reuseport_udp(addr)?;
            let actual = first.local_addr()?;
            let mut socks = vec![first];
            for _ in 1..workers.max(1) {
                socks.push(reuseport_udp(actual)?);
            }
            for (i, s) in socks.into_iter().enumerate() {
                let sock = Arc::new(UdpSocket::from_std(s)?);
                if i == 0 {
                    core.out
                        .udp
                        .lock()
                        .map_err(|_| std::io::Error::other("poisoned"))?
                        .push((actual, sock.clone()));
                }
                tokio::spawn(udp_loop(core.clone(), sock, actual, shutdown.clone()));
            }
            bound.push(Bound {
                transport: Transport::Udp,
                addr: actual,
            });
        }
        if matches!(spec.proto, Proto::Tcp | Proto::Any) {
            // Same port as the UDP socket when the system chose it.
            let tcp_addr = match bound.last() {
                Some(b)
                    if b.transport == Transport::Udp
                        && addr.port() == 0
                        && b.addr.ip() == addr.ip() =>
                {
                    b.addr
                }
                _ => addr,
            };
            let l = match TcpListener::bind(tcp_addr).await {
                Ok(l) => l,
                // The UDP port the system chose may be taken for TCP: any port will do then.
                Err(e) if tcp_addr != addr && e.kind() == std::io::ErrorKind::AddrInUse => {
                    TcpListener::bind(addr).await?
                }
                Err(e) => return Err(e),
            };
            let actual = l.local_addr()?;
            tokio::spawn(accept_loop(
                core.clone(),
                l,
                None,
                tcp_limit.clone(),
                shutdown.clone(),
            ));
            bound.push(Bound {
                transport: Transport::Tcp,
                addr: actual,
            });
        }
        if spec.proto == Proto::Tls {
            let Some(tls) = core
                .program()
                .and_then(|p| p.module::<crate::tls::TlsModule>())
            else {
                return Err(std::io::Error::other(format!(
                    "listen=tls:{}: TLS listeners need loadmodule \"tls.so\" with its certificate and private_key",
                    spec.host
                )));
            };
            let l = TcpListener::bind(addr).await?;
            let actual = l.local_addr()?;
            tokio::spawn(accept_loop(
                core.clone(),
                l,
                Some(tls.acceptor.clone()),
                tcp_limit.clone(),
                shutdown.clone(),
            ));
            bound.push(Bound {
                transport: Transport::Tls,
                addr: actual,
            });
        }
    }
    Ok(bound)
}

async fn udp_loop(
    core: Arc<Core>,
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    shutdown: CancellationToken,
) {
    // One reusable receive buffer; each message is copied out to exactly its
    // own bytes, so what a transaction keeps does not pin the datagrams around it.
    let mut buf = vec![0u8; UDP_RECV_BUF];
    loop {
        let r = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => return,
        };
        match r {
            Ok((n, src)) => {
                let data = &buf[..n];
                if data.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                    continue; // keep-alive
                }
                core.on_message(
                    Bytes::copy_from_slice(data),
                    Peer {
                        transport: Transport::Udp,
                        src,
                        local,
                        conn: None,
                    },
                );
            }
            Err(e) => {
                tracing::debug!("udp recv on {local}: {e}");
            }
        }
    }
}

/// A TCP connection handed to an HTTP server (xhttp) after its first line
/// showed HTTP: the bytes already read come first, then the socket.
pub struct PrefixedStream {
    prefix: BytesMut,
    inner: Box<dyn Io>,
}

/// A byte stream a connection runs on (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl std::fmt::Debug for PrefixedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedStream")
            .field("prefix", &self.prefix.len())
            .finish()
    }
}

impl PrefixedStream {
    /// Bytes read before the hand-over, then `inner`.
    pub fn new(prefix: BytesMut, inner: Box<dyn Io>) -> Self {
        PrefixedStream { prefix, inner }
    }
}

impl tokio::io::AsyncRead for PrefixedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PrefixedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP on connections of the SIP TCP listeners (xhttp registers one).
pub trait HttpService: Send + Sync {
    /// Serves one connection until it closes or `shutdown` fires.
    fn serve(
        &self,
        io: PrefixedStream,
        peer: Peer,
        shutdown: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// The longest first line looked at to tell HTTP from SIP.
const SNIFF_MAX: usize = 8192;

/// Whether a connection's first bytes are HTTP: `Some(true)` for a request
/// line ending in `HTTP/1.x`, `Some(false)` for anything else, `None` while
/// the first line is incomplete. Leading CRLFs (SIP keep-alives) are skipped.
pub fn sniff_http(buf: &[u8]) -> Option<bool> {
    let Some(start) = buf.iter().position(|b| *b != b'\r' && *b != b'\n') else {
        // Only keep-alives so far: SIP's framing takes them (and bounds them).
        return (buf.len() >= SNIFF_MAX).then_some(false);
    };
    let b = &buf[start..];
    match b.iter().position(|c| *c == b'\n') {
        Some(eol) => {
            let line = b[..eol].strip_suffix(b"\r").unwrap_or(&b[..eol]);
            Some(line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        }
        None if b.len() >= SNIFF_MAX => Some(false),
        None => None,
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a connection's clock closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No byte read or written for `tcp_connection_lifetime`.
    Idle,
    /// A message begun and not finished within `tcp_msg_read_timeout`.
    SlowMessage,
}

/// The deadlines of one TCP/TLS connection, with `now` passed in: idle for
/// `lifetime` since the last byte read or written, or a message begun and
/// not whole within `msg_timeout`. `None` disables either.
#[derive(Debug, Clone)]
pub(crate) struct ConnClock {
    lifetime: Option<Duration>,
    msg_timeout: Option<Duration>,
    last_io: Instant,
    msg_start: Option<Instant>,
}

impl ConnClock {
    pub(crate) fn new(
        now: Instant,
        lifetime: Option<Duration>,
        msg_timeout: Option<Duration>,
    ) -> Self {
        ConnClock {
            lifetime,
            msg_timeout,
            last_io: now,
            msg_start: None,
        }
    }

    /// Bytes went in or out at `at` (a write reported late is fine: earlier times are ignored).
    pub(crate) fn activity(&mut self, at: Instant) {
        self.last_io = self.last_io.max(at);
    }

    /// Bytes were read at `now`; `finished`: a whole message was taken from
    /// the buffer; `pending`: part of a message waits for more. The message
    /// clock starts with a message's first byte and stops when none is partial.
    pub(crate) fn read(&mut self, now: Instant, finished: bool, pending: bool) {
        self.activity(now);
        self.msg_start = match (pending, self.msg_start) {
            (false, _) => None,
            (true, Some(t)) if !finished => Some(t),
            (true, _) => Some(now),
        };
    }

    /// The next moment something may expire.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let idle = self.lifetime.map(|l| self.last_io + l);
        let msg = self.msg_start.zip(self.msg_timeout).map(|(s, t)| s + t);
        match (idle, msg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What has expired at `now`, if anything.
    pub(crate) fn expired(&self, now: Instant) -> Option<Expiry> {
        if let (Some(s), Some(t)) = (self.msg_start, self.msg_timeout)
            && s + t <= now
        {
            return Some(Expiry::SlowMessage);
        }
        match self.lifetime {
            Some(l) if self.last_io + l <= now => Some(Expiry::Idle),
            _ => None,
        }
    }
}

/// The last write on a connection, for its reader's idle clock.
#[derive(Debug)]
struct WriteMark {
    base: Instant,
    /// Milliseconds after `base`.
    at: AtomicU64,
}

impl WriteMark {
    fn new(base: Instant) -> Self {
        WriteMark {
            base,
            at: AtomicU64::new(0),
        }
    }
    fn mark(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.at.fetch_max(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.at.load(Ordering::Relaxed))
    }
}

/// Connections open per source address, bounded by `tcp_max_connections_per_ip`.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerIp`]; given back when dropped.
pub(crate) struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub(crate) fn new(max: usize) -> Self {
        PerIp {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }
    /// A slot for one more connection from `ip`, or `None` over the limit (0: no limit).
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max == 0 {
            return Some(IpSlot {
                table: self.clone(),
                ip,
            });
        }
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
    fn open(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .map_or(0, |o| o.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if self.table.max == 0 {
            return;
        }
        if let Ok(mut open) = self.table.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What every TCP/TLS listener shares: the connection limits and deadlines.
pub(crate) struct TcpShared {
    limit: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<PerIp>,
    lifetime: Option<Duration>,
    msg_timeout: Option<Duration>,
}

impl TcpShared {
    fn new(p: Option<&siphon_script::core::CoreParams>) -> Self {
        let d = siphon_script::core::CoreParams::default();
        let p = p.unwrap_or(&d);
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        TcpShared {
            limit: Arc::new(tokio::sync::Semaphore::new(p.tcp_max_connections)),
            per_ip: Arc::new(PerIp::new(p.tcp_max_connections_per_ip)),
            lifetime: secs(p.tcp_connection_lifetime),
            msg_timeout: secs(p.tcp_msg_read_timeout),
        }
    }
    fn clock(&self) -> ConnClock {
        ConnClock::new(Instant::now(), self.lifetime, self.msg_timeout)
    }
}

/// Accepts TCP connections (`tls`: and does the TLS handshake first) up to
/// the shared `tcp_max_connections` limit and `tcp_max_connections_per_ip`;
/// each connection runs on its own task.
async fn accept_loop(
    core: Arc<Core>,
    l: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<TcpShared>,
    shutdown: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            r = l.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        match r {
            Ok((stream, src)) => {
                // Over tcp_max_connections_per_ip: closed at once, counted.
                let Some(slot) = shared.per_ip.take(src.ip()) else {
                    crate::stats::Stats::inc(&core.stats.tcp_refused_per_ip);
                    tracing::debug!(
                        "refusing tcp connection from {src}: {} open from it",
                        shared.per_ip.open(src.ip())
                    );
                    drop(stream);
                    continue;
                };
                // Over tcp_max_connections: accepted and closed at once, counted.
                let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
                    crate::stats::Stats::inc(&core.stats.tcp_refused);
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(src);
                let (core, shutdown, tls) = (core.clone(), shutdown.clone(), tls.clone());
                let shared = shared.clone();
                tokio::spawn(async move {
                    let clock = shared.clock();
                    match tls {
                        None => {
                            stream_conn(core, stream, src, local, Transport::Tcp, clock, shutdown)
                                .await
                        }
                        // The handshake runs on this connection's task, bounded in time.
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await
                            {
                                Ok(Ok(s)) => {
                                    let clock = shared.clock();
                                    stream_conn(
                                        core,
                                        s,
                                        src,
                                        local,
                                        Transport::Tls,
                                        clock,
                                        shutdown,
                                    )
                                    .await
                                }
                                r => {
                                    crate::stats::Stats::inc(&core.stats.tls_failed);
                                    let why = r.map_or("timed out".to_string(), |e| {
                                        e.err().map(|e| e.to_string()).unwrap_or_default()
                                    });
                                    tracing::debug!("tls handshake with {src}: {why}");
                                }
                            }
                        }
                    }
                    drop((permit, slot));
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}
/// Reads into `buf` until bytes come (`Some(n)`), or `None`: the connection
/// ended, the server stops, or `clock` closed it (counted, logged).
async fn read_timed<R: AsyncRead + Unpin>(
    core: &Core,
    rd: &mut R,
    buf: &mut BytesMut,
    clock: &mut ConnClock,
    written: Option<&WriteMark>,
    src: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<usize> {
    loop {
        let deadline = clock.deadline();
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rd.read_buf(buf) => return match r {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(n),
            },
            _ = shutdown.cancelled() => return None,
            _ = expiry => {}
        }
        if let Some(w) = written {
            clock.activity(w.last());
        }
        match clock.expired(Instant::now()) {
            Some(Expiry::Idle) => {
                crate::stats::Stats::inc(&core.stats.tcp_idle_closed);
                tracing::debug!("closing idle tcp connection from {src} (tcp_connection_lifetime)");
                return None;
            }
            Some(Expiry::SlowMessage) => {
                crate::stats::Stats::inc(&core.stats.tcp_read_timeouts);
                tracing::info!(
                    "closing tcp connection from {src}: a message not whole within tcp_msg_read_timeout"
                );
                return None;
            }
            None => {}
        }
    }
}

/// Whether `buf` holds the start of a message (not only CRLF keep-alives).
fn has_partial(buf: &[u8]) -> bool {
    buf.iter().any(|b| *b != b'\r' && *b != b'\n')
}

/// A TCP or TLS connection: HTTP (to xhttp) or SIP, by its first line.
async fn stream_conn<S: Io + 'static>(
    core: Arc<Core>,
    mut stream: S,
    src: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    mut clock: ConnClock,
    shutdown: CancellationToken,
) {
    let peer = Peer {
        transport,
        src,
        local,
        conn: None,
    };
    // Read the first line: HTTP goes to xhttp (when loaded), the rest is SIP.
    // A connection that sends nothing is closed after tcp_connection_lifetime,
    // a first line that trickles after tcp_msg_read_timeout.
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match sniff_http(&buf) {
            Some(true) => match core.http.get() {
                Some(http) => {
                    crate::stats::Stats::inc(&core.stats.http_conns);
                    http.serve(PrefixedStream::new(buf, Box::new(stream)), peer, shutdown)
                        .await;
                    return;
                }
                None => {
                    tracing::debug!("HTTP request from {src} and xhttp is not loaded: closing");
                    crate::stats::Stats::inc(&core.stats.tcp_bad_frames);
                    return;
                }
            },
            Some(false) => break,
            None => {}
        }
        let read = read_timed(
            &core,
            &mut stream,
            &mut buf,
            &mut clock,
            None,
            src,
            &shutdown,
        );
        if read.await.is_none() {
            return;
        }
        clock.read(Instant::now(), false, has_partial(&buf));
    }
    tcp_sip(core, stream, buf, peer, clock, shutdown).await;
}

async fn tcp_sip<S: Io + 'static>(
    core: Arc<Core>,
    stream: S,
    mut buf: BytesMut,
    peer: Peer,
    mut clock: ConnClock,
    shutdown: CancellationToken,
) {
    let src = peer.src;
    let id = core.out.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(TCP_QUEUE);
    if let Ok(mut c) = core.out.conns.lock() {
        c.insert(id, tx);
    }
    let written = Arc::new(WriteMark::new(Instant::now()));
    let mark = written.clone();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            // TLS keeps records until flushed; for TCP the flush is free.
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            mark.mark();
        }
    });
    let peer = Peer {
        conn: Some(id),
        ..peer
    };
    // The first read happened while sniffing: frame what it brought first.
    let mut have_data = true;
    'conn: loop {
        if !have_data {
            let read = read_timed(
                &core,
                &mut rd,
                &mut buf,
                &mut clock,
                Some(&written),
                src,
                &shutdown,
            );
            if read.await.is_none() {
                break;
            }
        }
        have_data = false;
        let mut finished = false;
        loop {
            match siphon_sip::tcp_frame_len(&buf, siphon_sip::MAX_MESSAGE) {
                Ok(Some(n)) => {
                    // Copied out to exactly its bytes: a message kept by a
                    // transaction does not pin the connection's buffer.
                    let keepalive = buf[..n].iter().all(|b| *b == b'\r' || *b == b'\n');
                    let frame = (!keepalive).then(|| Bytes::copy_from_slice(&buf[..n]));
                    buf.advance(n);
                    if let Some(frame) = frame {
                        finished = true;
                        core.on_message(frame, peer);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!("closing tcp connection from {src}: {e}");
                    crate::stats::Stats::inc(&core.stats.tcp_bad_frames);
                    if e == siphon_sip::FrameError::DuplicateContentLength {
                        crate::stats::Stats::inc(&core.stats.duplicate_content_length);
                    }
                    break 'conn;
                }
            }
        }
        clock.read(Instant::now(), finished, has_partial(&buf));
    }
    if let Ok(mut c) = core.out.conns.lock() {
        c.remove(&id);
    }
    // Let queued replies go out before the writer ends with the channel; a
    // peer that does not read gets a little while, then the connection goes.
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        abort.abort();
    }
}

/// How long replies still queued may take to go out once a connection is closing.
const WRITER_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_silent_connection_expires_after_its_lifetime() {
        let t0 = Instant::now();
        let c = ConnClock::new(t0, Some(120 * S), Some(20 * S));
        assert_eq!(c.deadline(), Some(t0 + 120 * S));
        assert_eq!(c.expired(t0 + 119 * S), None);
        assert_eq!(c.expired(t0 + 120 * S), Some(Expiry::Idle));
        // 0 (None) disables both.
        let never = ConnClock::new(t0, None, None);
        assert_eq!(never.deadline(), None);
        assert_eq!(never.expired(t0 + 100_000 * S), None);
    }

    #[test]
    fn reads_and_writes_push_the_idle_deadline() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0, Some(10 * S), Some(3 * S));
        c.read(t0 + 5 * S, true, false);
        assert_eq!(c.deadline(), Some(t0 + 15 * S));
        // A reply written later keeps the connection too; an older mark changes nothing.
        c.activity(t0 + 12 * S);
        c.activity(t0 + 7 * S);
        assert_eq!(c.expired(t0 + 21 * S), None);
        assert_eq!(c.expired(t0 + 22 * S), Some(Expiry::Idle));
    }

    #[test]
    fn a_message_must_be_whole_within_the_read_timeout() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0, Some(120 * S), Some(20 * S));
        // First bytes of a message at 1 s, more trickling every 5 s: the message clock
        // runs from the first byte, though each read keeps the connection from idling.
        c.read(t0 + S, false, true);
        for i in 1..4 {
            c.read(t0 + S + i * 5 * S, false, true);
        }
        assert_eq!(c.deadline(), Some(t0 + 21 * S));
        assert_eq!(c.expired(t0 + 20 * S), None);
        assert_eq!(c.expired(t0 + 21 * S), Some(Expiry::SlowMessage));
        // A message that completes stops the clock; the next one starts its own.
        c.read(t0 + 18 * S, true, true);
        assert_eq!(c.expired(t0 + 21 * S), None);
        assert_eq!(c.deadline(), Some(t0 + 38 * S));
        c.read(t0 + 19 * S, true, false);
        assert_eq!(c.deadline(), Some(t0 + 139 * S));
    }

    #[test]
    fn per_ip_slots_are_bounded_and_given_back() {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let t = Arc::new(PerIp::new(2));
        let a = t.take(ip).expect("first");
        let b = t.take(ip).expect("second");
        assert!(t.take(ip).is_none());
        let c = t.take(other).expect("another address has its own count");
        drop(a);
        assert_eq!(t.open(ip), 1);
        let a2 = t.take(ip).expect("a slot given back is free again");
        drop((a2, b, c));
        assert!(t.open.lock().unwrap().is_empty());
        // 0: unlimited, nothing kept.
        let free = Arc::new(PerIp::new(0));
        let all: Vec<_> = (0..100).filter_map(|_| free.take(ip)).collect();
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn has_partial_ignores_keepalives() {
        assert!(!has_partial(b"\r\n\r\n"));
        assert!(has_partial(b"\r\nOPT"));
    }

    #[test]
    fn http_is_told_from_sip_by_the_first_line() {
        assert_eq!(sniff_http(b"GET /RPC HTTP/1.1\r\nHost: x\r\n"), Some(true));
        assert_eq!(sniff_http(b"\r\n\r\nPOST /RPC HTTP/1.0\n"), Some(true));
        assert_eq!(sniff_http(b"OPTIONS sip:a@b SIP/2.0\r\n"), Some(false));
        assert_eq!(sniff_http(b"GET /RPC HTT"), None);
        assert_eq!(sniff_http(&[b'x'; SNIFF_MAX]), Some(false));
        // Keep-alives alone are bounded too.
        assert_eq!(sniff_http(b"\r\n\r\n"), None);
        assert_eq!(sniff_http(&b"\r\n".repeat(SNIFF_MAX)), Some(false));
    }
}
