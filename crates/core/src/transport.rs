//! The I/O shell: UDP sockets (one per worker, SO_REUSEPORT), TCP listeners
//! with Content-Length framing, and the send paths. Everything protocol-ish
//! is in `siphon-sip`; this file only moves bytes.
//!
//! Sending toward other servers ([`Outbound::send_to`]) never waits: UDP is
//! one datagram sent with `MSG_DONTWAIT`; TCP and TLS go over a connection to that
//! address — one siphon opened, or one the peer opened to us (found by its
//! source address, as Kamailio's connection aliases do) — else a new one,
//! registered at once so every later send queues on it while it connects in
//! the background. A connection siphon opens is a full SIP connection: the
//! same reader, framing, deadlines and limits as an accepted one. Bytes that
//! never reach the socket (connect refused or timed out, TLS handshake
//! failed, connection broken) are reported once through their [`FailNotice`].

use crate::Core;
use crate::dns::Target;
use bytes::{Buf, Bytes, BytesMut};
use siphon_script::core::{ListenSpec, Proto};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

// The transport, the peer and the HTTP hand-over are the module API's:
// modules use them without the core.
pub use siphon_script::http::{HttpService, Io, PrefixedStream};
pub use siphon_script::net::{Peer, Transport};

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

/// Messages waiting per TCP/TLS connection (also while it connects) before
/// it is considered stuck: a send over it is refused with [`SendError::QueueFull`].
const TCP_QUEUE: usize = 1024;
const UDP_RECV_BUF: usize = 65_535;

/// The largest UDP payload towards `to`: 65,507 bytes over IPv4, 65,527 over IPv6.
pub(crate) fn max_datagram(to: SocketAddr) -> usize {
    if to.is_ipv4() { 65_507 } else { 65_527 }
}

use siphon_script::api::{ONLY_LOOPBACK_ENV, off_machine};

/// Why bytes could not be sent. The first group is returned by
/// [`Outbound::send_to`] at once; the second reaches the sender later
/// through its [`FailNotice`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No UDP socket of the destination's address family (nor the one `from` names).
    #[error("no UDP socket to send to {0} from")]
    NoUdpSocket(SocketAddr),
    /// The datagram was refused by the system (full buffer, too large, unreachable).
    #[error("UDP send to {to} failed: {reason}")]
    Udp {
        /// Destination.
        to: SocketAddr,
        /// What the system said.
        reason: String,
    },
    /// Sending off the machine is switched off ([`ONLY_LOOPBACK_ENV`]).
    #[error("{0} is not a loopback address and {ONLY_LOOPBACK_ENV} is set")]
    NotLoopback(SocketAddr),
    /// The connection's queue holds [`TCP_QUEUE`] messages already.
    #[error("the queue of the connection to {0} is full")]
    QueueFull(SocketAddr),
    /// No open connection and opening one was not allowed
    /// (`set_forward_no_connect`, [`SendOptions::no_connect`]).
    #[error("no open connection to {0} and opening one is not allowed")]
    NoConnection(SocketAddr),
    /// `tcp_max_connections` connections are open.
    #[error("tcp_max_connections reached: no new connection to {0}")]
    TooManyConnections(SocketAddr),
    /// TLS without a usable client profile: the tls module is not loaded, or
    /// verification is on without `ca_list`.
    #[error("TLS to {to}: {reason}")]
    NoTlsClient {
        /// Destination.
        to: SocketAddr,
        /// What is missing.
        reason: String,
    },
    /// The transports were not started.
    #[error("no transports started")]
    NotStarted,
    /// The peer refused the connection (RST).
    #[error("connect to {0} refused")]
    ConnectRefused(SocketAddr),
    /// The connect failed otherwise (unreachable, no route, address in use).
    #[error("connect to {to} failed: {reason}")]
    ConnectFailed {
        /// Destination.
        to: SocketAddr,
        /// What the system said.
        reason: String,
    },
    /// Not connected (and, for TLS, handshake done) within `tcp_connect_timeout`.
    #[error("connect to {to} timed out after {after:?}")]
    ConnectTimeout {
        /// Destination.
        to: SocketAddr,
        /// `tcp_connect_timeout`.
        after: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    #[error("TLS handshake with {to} failed: {reason}")]
    TlsHandshake {
        /// Destination.
        to: SocketAddr,
        /// What rustls said.
        reason: String,
    },
    /// The connection broke (write error, `tcp_send_timeout`, closed) before
    /// these bytes were written.
    #[error("connection to {0} closed before the message was written")]
    ConnectionClosed(SocketAddr),
}

/// Called at most once, from any task, when bytes handed to
/// [`Outbound::send_to`] could not be delivered to the transport. Never
/// called for UDP (a datagram the system took is delivered as far as siphon
/// can tell), nor for an error `send_to` returned.
pub(crate) type FailNotice = Box<dyn FnOnce(SendError) + Send>;

/// How [`Outbound::send_with`] sends besides the target.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendOptions {
    /// The local socket to use (`$fs`, a forced send socket): for UDP the
    /// socket bound there (when there is one, else any of the family); a new
    /// TCP/TLS connection binds its source to this IP (ephemeral port).
    pub(crate) from: Option<SocketAddr>,
    /// Kamailio's `set_forward_no_connect()`: only an open connection may
    /// carry the bytes; without one the send fails with [`SendError::NoConnection`].
    pub(crate) no_connect: bool,
    /// The target's host name when it came from one: TLS sends it as SNI and
    /// checks the server's certificate for it; without it the certificate
    /// must name the IP address (no SNI is sent for an IP, RFC 6066 §3).
    pub(crate) server_name: Option<String>,
}

/// Bytes queued on a connection with their sender's notice. Dropped unwritten
/// (the writer ended, the queue was dropped), it reports
/// [`SendError::ConnectionClosed`]; written, it reports nothing.
struct Queued {
    bytes: Bytes,
    to: SocketAddr,
    on_fail: Option<FailNotice>,
}

impl Queued {
    fn new(bytes: Bytes, to: SocketAddr, on_fail: Option<FailNotice>) -> Self {
        Queued { bytes, to, on_fail }
    }
    /// Written to the socket: nothing to report.
    fn delivered(mut self) {
        self.on_fail = None;
    }
    /// Never written: the sender hears `e`.
    fn fail(mut self, e: SendError) {
        if let Some(f) = self.on_fail.take() {
            f(e);
        }
    }
    /// Refused at once: the error is returned to the sender, not notified.
    fn refuse(mut self, e: SendError) -> SendError {
        self.on_fail = None;
        e
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(f) = self.on_fail.take() {
            f(SendError::ConnectionClosed(self.to));
        }
    }
}

/// The open (and opening) TCP/TLS connections: by id for replies on the
/// connection a request came on, by remote address for reuse.
#[derive(Default)]
struct ConnTable {
    by_id: HashMap<u64, Conn>,
    /// The newest connection per (transport, remote address): accepted ones by
    /// the peer's source address, ours by the address we connected to.
    by_addr: HashMap<(Transport, SocketAddr), u64>,
}

struct Conn {
    tx: mpsc::Sender<Queued>,
    key: (Transport, SocketAddr),
}

impl ConnTable {
    fn insert(&mut self, id: u64, key: (Transport, SocketAddr), tx: mpsc::Sender<Queued>) {
        self.by_id.insert(id, Conn { tx, key });
        self.by_addr.insert(key, id);
    }
    /// An open connection to `key`: one whose writer still takes bytes.
    fn open_to(&self, key: (Transport, SocketAddr)) -> Option<mpsc::Sender<Queued>> {
        let id = self.by_addr.get(&key)?;
        self.by_id
            .get(id)
            .map(|c| c.tx.clone())
            .filter(|tx| !tx.is_closed())
    }
    fn remove(&mut self, id: u64) {
        if let Some(c) = self.by_id.remove(&id)
            && self.by_addr.get(&c.key) == Some(&id)
        {
            self.by_addr.remove(&c.key);
        }
    }
}

/// A listener as our Via names it.
#[derive(Debug, Clone)]
struct Listener {
    transport: Transport,
    addr: SocketAddr,
    /// `listen=… advertise host:port`.
    advertise: Option<String>,
    /// Our Via value without its branch (`SIP/2.0/UDP 127.0.0.1:5060`) when
    /// it does not depend on the destination (not a wildcard address), made
    /// once instead of for every branch.
    via: Option<Bytes>,
}

impl Listener {
    fn new(transport: Transport, addr: SocketAddr, advertise: Option<String>) -> Listener {
        let host_port = match &advertise {
            Some(a) => Some(a.clone()),
            None => (!addr.ip().is_unspecified()).then(|| addr.to_string()),
        };
        let via = host_port.map(|hp| Bytes::from(format!("SIP/2.0/{} {hp}", via_proto(transport))));
        Listener {
            transport,
            addr,
            advertise,
            via,
        }
    }
}

/// A transport as a Via names it.
pub(crate) fn via_proto(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

/// What opening connections needs, set once the listeners are bound.
struct Connecting {
    /// `tcp_connect_timeout`: connect and TLS handshake together.
    connect_timeout: Duration,
    /// `tcp_send_timeout`: one message's write; `None`: no limit.
    send_timeout: Option<Duration>,
    /// The connection limit and deadlines shared with the listeners.
    shared: Arc<TcpShared>,
    /// The tls module's client profile (`None`: the module is not loaded).
    tls: Option<Result<tokio_rustls::TlsConnector, String>>,
    shutdown: CancellationToken,
}

/// The send side of every listener.
#[derive(Default)]
pub(crate) struct Outbound {
    /// One sending handle per UDP listener: a duplicate of its first
    /// socket, used directly with `MSG_DONTWAIT` ([`udp_send`]).
    udp: Mutex<Vec<(SocketAddr, Arc<std::net::UdpSocket>)>>,
    conns: Mutex<ConnTable>,
    next_conn: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
    setup: OnceLock<Connecting>,
}

impl Outbound {
    /// Sends to a peer: over the connection it came on, or from the UDP socket it arrived on.
    pub(crate) fn send(&self, core: &Core, peer: &Peer, to: SocketAddr, bytes: Bytes) {
        if off_machine(to) {
            tracing::error!("refusing to send to {to}: {ONLY_LOOPBACK_ENV} is set");
            crate::stats::Stats::inc(&core.stats.send_failures);
            return;
        }
        let ok = match (peer.transport, peer.conn) {
            (Transport::Tcp | Transport::Tls, Some(id)) => {
                let tx = self
                    .conns
                    .lock()
                    .ok()
                    .and_then(|c| c.by_id.get(&id).map(|c| c.tx.clone()));
                match tx {
                    Some(tx) => tx.try_send(Queued::new(bytes, to, None)).is_ok(),
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

    /// Sends a request (a branch, its CANCEL or ACK, a stateless forward) to
    /// `to` without ever waiting: UDP from one of our sockets (`from` when
    /// given and bound, else one of the address family); TCP/TLS over an open
    /// connection to that address (ours or the peer's), else a new one
    /// connected in the background within `tcp_connect_timeout`, the bytes
    /// queued meanwhile. Errors returned here are not notified; `on_fail`
    /// runs (once, from any task) when the connect fails or times out, the
    /// TLS handshake fails, or the connection breaks before these bytes were
    /// written. [`Outbound::send_with`] adds `no_connect` and the TLS name
    /// (what the proxy uses); this short form is the tests'.
    #[cfg(test)]
    pub(crate) fn send_to(
        &self,
        core: &Arc<Core>,
        to: Target,
        from: Option<SocketAddr>,
        bytes: Bytes,
        on_fail: Option<FailNotice>,
    ) -> Result<(), SendError> {
        let opts = SendOptions {
            from,
            ..Default::default()
        };
        self.send_with(core, to, &opts, bytes, on_fail)
    }

    /// [`Outbound::send_to`] with every option. Errors are not counted here
    /// (the caller counts `core:send_failures`). `on_fail` is never called
    /// from inside this call, so it may take locks its caller holds.
    pub(crate) fn send_with(
        &self,
        core: &Arc<Core>,
        to: Target,
        opts: &SendOptions,
        bytes: Bytes,
        on_fail: Option<FailNotice>,
    ) -> Result<(), SendError> {
        if off_machine(to.addr) {
            tracing::error!(
                "refusing to send to {}: {ONLY_LOOPBACK_ENV} is set",
                to.addr
            );
            return Err(SendError::NotLoopback(to.addr));
        }
        match to.transport {
            Transport::Udp => self.udp_socket(opts.from, to.addr).and_then(|s| {
                udp_send(&s, &bytes, to.addr)
                    .map(drop)
                    .map_err(|e| SendError::Udp {
                        to: to.addr,
                        reason: e.to_string(),
                    })
            }),
            Transport::Tcp | Transport::Tls => {
                self.send_stream(core, to, opts, Queued::new(bytes, to.addr, on_fail))
            }
        }
    }

    fn send_stream(
        &self,
        core: &Arc<Core>,
        to: Target,
        opts: &SendOptions,
        item: Queued,
    ) -> Result<(), SendError> {
        let key = (to.transport, to.addr);
        let Some(setup) = self.setup.get() else {
            return Err(item.refuse(SendError::NotStarted));
        };
        let tx = {
            let Ok(mut table) = self.conns.lock() else {
                return Err(item.refuse(SendError::NotStarted));
            };
            match table.open_to(key) {
                Some(tx) => tx,
                None => {
                    let permit = match self.may_open(setup, to, opts) {
                        Ok(p) => p,
                        Err(e) => {
                            drop(table);
                            return Err(item.refuse(e));
                        }
                    };
                    let (tx, rx) = mpsc::channel(TCP_QUEUE);
                    if let Err(e) = tx.try_send(item) {
                        // A fresh queue has room; were it not so, say so without notifying.
                        drop(table);
                        return Err(e.into_inner().refuse(SendError::QueueFull(to.addr)));
                    }
                    // Registered before it connects: later sends queue behind this one.
                    let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
                    table.insert(id, key, tx);
                    drop(table);
                    let job = Dial {
                        id,
                        to,
                        from: opts.from,
                        server_name: opts.server_name.clone(),
                        tls: match (&setup.tls, to.transport) {
                            (Some(Ok(c)), Transport::Tls) => Some(c.clone()),
                            _ => None,
                        },
                    };
                    tokio::spawn(dial(core.clone(), job, rx, permit));
                    return Ok(());
                }
            }
        };
        match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(q)) => Err(q.refuse(SendError::QueueFull(to.addr))),
            // Closed between the look-up and now: the caller may send again.
            Err(TrySendError::Closed(q)) => Err(q.refuse(SendError::ConnectionClosed(to.addr))),
        }
    }

    /// Whether a new connection to `to` may be opened: allowed, TLS usable, under the limit.
    fn may_open(
        &self,
        setup: &Connecting,
        to: Target,
        opts: &SendOptions,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, SendError> {
        if opts.no_connect {
            return Err(SendError::NoConnection(to.addr));
        }
        if to.transport == Transport::Tls {
            match &setup.tls {
                Some(Ok(_)) => {}
                Some(Err(reason)) => {
                    return Err(SendError::NoTlsClient {
                        to: to.addr,
                        reason: reason.clone(),
                    });
                }
                None => {
                    return Err(SendError::NoTlsClient {
                        to: to.addr,
                        reason: "loadmodule \"tls.so\" to send over TLS".into(),
                    });
                }
            }
        }
        setup
            .shared
            .limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| SendError::TooManyConnections(to.addr))
    }

    /// The UDP socket bound to `from`, or the first of `to`'s address family.
    fn udp_socket(
        &self,
        from: Option<SocketAddr>,
        to: SocketAddr,
    ) -> Result<Arc<std::net::UdpSocket>, SendError> {
        let socks = self.udp.lock().map_err(|_| SendError::NoUdpSocket(to))?;
        socks
            .iter()
            .find(|(a, _)| Some(*a) == from)
            .or_else(|| socks.iter().find(|(a, _)| a.is_ipv4() == to.is_ipv4()))
            .map(|(_, s)| s.clone())
            .ok_or(SendError::NoUdpSocket(to))
    }

    /// The address of the UDP socket [`Outbound::send_udp`] would use.
    pub(crate) fn udp_local(&self, from: Option<SocketAddr>, to: SocketAddr) -> Option<SocketAddr> {
        let socks = self.udp.lock().ok()?;
        socks
            .iter()
            .find(|(a, _)| Some(*a) == from)
            .or_else(|| socks.iter().find(|(a, _)| a.is_ipv4() == to.is_ipv4()))
            .map(|(a, _)| *a)
    }

    /// Sends a datagram from the socket bound to `from`, or any socket of the right family.
    pub(crate) fn send_udp(&self, from: Option<SocketAddr>, to: SocketAddr, bytes: Bytes) -> bool {
        if off_machine(to) {
            tracing::error!("refusing to send to {to}: {ONLY_LOOPBACK_ENV} is set");
            return false;
        }
        // Never wait on the SIP path: a full kernel buffer drops the datagram (the
        // caller counts it) and SIP's retransmissions recover.
        self.udp_socket(from, to)
            .is_ok_and(|s| udp_send(&s, &bytes, to).is_ok())
    }

    /// Our UDP addresses.
    #[cfg(test)]
    pub(crate) fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .lock()
            .map(|s| s.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }

    /// The sent-by (`host:port`) of our Via on a request sent to `to`: the
    /// `advertise` address of the listener of that transport — the one bound
    /// to `from` when given, else the first of `to`'s address family — or
    /// its address (an IPv6 one bracketed). The port is always written, 5060
    /// too (RFC 3261 allows either; Kamailio omits only 5060 for UDP/TCP and
    /// 5061 for TLS — an explicit port says the same and never depends on
    /// the peer's default). A wildcard listener (`0.0.0.0`, `::`) gives the
    /// address the system routes `to` from. `None`: no listener of that
    /// transport and family — Kamailio would not send there either.
    pub(crate) fn via_sent_by(&self, to: Target, from: Option<SocketAddr>) -> Option<String> {
        let listeners = self.listeners.lock().ok()?;
        let l = Self::listener_for(&listeners, to, from)?;
        if let Some(a) = &l.advertise {
            return Some(a.clone());
        }
        let ip = if l.addr.ip().is_unspecified() {
            route_source(l.addr, to.addr)?
        } else {
            l.addr.ip()
        };
        Some(SocketAddr::new(ip, l.addr.port()).to_string())
    }

    /// Our Via value without its branch for a request going to `to`
    /// (`SIP/2.0/UDP host:port`, [`Outbound::via_sent_by`] for the host).
    pub(crate) fn via_value(&self, to: Target, from: Option<SocketAddr>) -> Option<Bytes> {
        {
            let listeners = self.listeners.lock().ok()?;
            if let Some(v) = Self::listener_for(&listeners, to, from)?.via.clone() {
                return Some(v);
            }
        }
        let host_port = self.via_sent_by(to, from)?;
        Some(Bytes::from(format!(
            "SIP/2.0/{} {host_port}",
            via_proto(to.transport)
        )))
    }

    /// The listener a request to `to` leaves from: `from` when it is ours,
    /// else the first of the transport and address family.
    fn listener_for(
        listeners: &[Listener],
        to: Target,
        from: Option<SocketAddr>,
    ) -> Option<&Listener> {
        listeners
            .iter()
            .filter(|l| l.transport == to.transport)
            .find(|l| Some(l.addr) == from)
            .or_else(|| {
                listeners
                    .iter()
                    .find(|l| l.transport == to.transport && l.addr.is_ipv4() == to.addr.is_ipv4())
            })
    }

    fn register(&self, id: u64, key: (Transport, SocketAddr), tx: mpsc::Sender<Queued>) {
        if let Ok(mut t) = self.conns.lock() {
            t.insert(id, key, tx);
        }
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut t) = self.conns.lock() {
            t.remove(id);
        }
    }
}

/// The local address the system would send from to reach `to` through a
/// socket bound to the wildcard `wild` (no packet is sent).
fn route_source(wild: SocketAddr, to: SocketAddr) -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind(SocketAddr::new(wild.ip(), 0)).ok()?;
    probe.connect(to).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// A connection to open.
struct Dial {
    id: u64,
    to: Target,
    from: Option<SocketAddr>,
    server_name: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Connects (and for TLS shakes hands) within `tcp_connect_timeout`, then
/// serves the connection as any other; a failure fails everything queued.
async fn dial(
    core: Arc<Core>,
    job: Dial,
    mut rx: mpsc::Receiver<Queued>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let id = job.id;
    let Some(setup) = core.out.setup.get() else {
        return;
    };
    let to = job.to.addr;
    let after = setup.connect_timeout;
    let shutdown = setup.shutdown.clone();
    let r = tokio::select! {
        r = tokio::time::timeout(after, connect(&job)) => {
            r.unwrap_or(Err(SendError::ConnectTimeout { to, after }))
        }
        _ = shutdown.cancelled() => Err(SendError::ConnectionClosed(to)),
    };
    match r {
        Ok((stream, local)) => {
            crate::stats::Stats::inc(&core.stats.tcp_connects);
            tracing::debug!("connected to {}:{to} from {local}", job.to.transport.name());
            let peer = Peer {
                transport: job.to.transport,
                src: to,
                local,
                conn: Some(id),
            };
            let clock = setup.shared.clock();
            serve_sip(
                core.clone(),
                stream,
                BytesMut::new(),
                peer,
                rx,
                clock,
                shutdown,
            )
            .await;
        }
        Err(e) => {
            // Stopping siphon is not a failure of the peer: not counted.
            if !shutdown.is_cancelled() {
                crate::stats::Stats::inc(&core.stats.tcp_connect_failures);
                match &e {
                    SendError::ConnectTimeout { .. } => {
                        crate::stats::Stats::inc(&core.stats.tcp_connect_timeouts)
                    }
                    SendError::TlsHandshake { .. } => {
                        crate::stats::Stats::inc(&core.stats.tls_failed)
                    }
                    _ => {}
                }
                tracing::info!("{e}");
            }
            core.out.unregister(id);
            rx.close();
            while let Ok(q) = rx.try_recv() {
                q.fail(e.clone());
            }
        }
    }
    drop(permit);
}

/// TCP connect (from `job.from`'s IP when given), then the TLS handshake.
async fn connect(job: &Dial) -> Result<(Box<dyn Io>, SocketAddr), SendError> {
    let to = job.to.addr;
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => SendError::ConnectRefused(to),
        _ => SendError::ConnectFailed {
            to,
            reason: e.to_string(),
        },
    };
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    if let Some(f) = job
        .from
        .filter(|f| f.is_ipv4() == to.is_ipv4() && !f.ip().is_unspecified())
    {
        sock.bind(SocketAddr::new(f.ip(), 0)).map_err(failed)?;
    }
    let stream = sock.connect(to).await.map_err(failed)?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(failed)?;
    let Some(tls) = &job.tls else {
        return Ok((Box::new(stream), local));
    };
    let name = match &job.server_name {
        Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| {
            SendError::TlsHandshake {
                to,
                reason: format!("`{n}`: {e}"),
            }
        })?,
        None => rustls::pki_types::ServerName::IpAddress(to.ip().into()),
    };
    let s = tls
        .connect(name, stream)
        .await
        .map_err(|e| SendError::TlsHandshake {
            to,
            reason: e.to_string(),
        })?;
    Ok((Box::new(s), local))
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
    let d = siphon_script::core::CoreParams::default();
    let params = core.program().map_or(&d, |p| &p.core);
    let _ = core.out.setup.set(Connecting {
        connect_timeout: Duration::from_secs(params.tcp_connect_timeout.max(1)),
        send_timeout: (params.tcp_send_timeout > 0)
            .then(|| Duration::from_secs(params.tcp_send_timeout)),
        shared: tcp_limit.clone(),
        tls: core
            .program()
            .and_then(|p| p.module::<crate::tls::TlsModule>())
            .map(|t| t.connector.clone()),
        shutdown: shutdown.clone(),
    });
    for spec in specs {
        let addr = resolve(spec)?;
        let before = bound.len();
        if matches!(spec.proto, Proto::Udp | Proto::Any) {
            let first = reuseport_udp(addr)?;
            let actual = first.local_addr()?;
            let mut socks = vec![first];
            for _ in 1..workers.max(1) {
                socks.push(reuseport_udp(actual)?);
            }
            let sender = Arc::new(socks[0].try_clone()?);
            core.out
                .udp
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .push((actual, sender));
            for (i, s) in socks.into_iter().enumerate() {
                spawn_udp_receiver(core, s, actual, i, shutdown)?;
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
        if let Ok(mut l) = core.out.listeners.lock() {
            l.extend(
                bound[before..]
                    .iter()
                    .map(|b| Listener::new(b.transport, b.addr, spec.advertise.clone())),
            );
        }
    }
    Ok(bound)
}

/// How often an idle UDP receiver looks whether the server is shutting down.
const UDP_SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// Starts one receiving thread for a UDP socket, as a Kamailio UDP worker is
/// one process blocked in `recvfrom`: the thread waits in the kernel and runs
/// each message's route itself. A tokio task would pay an `epoll_wait`, a
/// failed `recvfrom` and a cross-thread wake-up for most datagrams on a lightly
/// loaded socket — about a third more system calls per proxied call. The
/// thread enters the runtime, so what a route starts (timers, DNS, module
/// tasks, resumptions) runs on the runtime's workers as before. The socket is
/// blocking for reads only; every send passes `MSG_DONTWAIT` ([`udp_send`]).
fn spawn_udp_receiver(
    core: &Arc<Core>,
    sock: std::net::UdpSocket,
    local: SocketAddr,
    index: usize,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(UDP_SHUTDOWN_POLL))?;
    let runtime = tokio::runtime::Handle::current();
    let (core, shutdown) = (core.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name(format!("udp-{}-{index}", local.port()))
        .spawn(move || {
            let _entered = runtime.enter();
            udp_receive(&core, &sock, local, &shutdown);
        })?;
    Ok(())
}

/// The receive loop of one UDP socket, until shutdown.
fn udp_receive(
    core: &Arc<Core>,
    sock: &std::net::UdpSocket,
    local: SocketAddr,
    shutdown: &CancellationToken,
) {
    // One reusable receive buffer; each message is copied out to exactly its
    // own bytes, so what a transaction keeps does not pin the datagrams around it.
    let mut buf = vec![0u8; UDP_RECV_BUF];
    while !shutdown.is_cancelled() {
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                let data = &buf[..n];
                if data.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                    continue; // keep-alive
                }
                let peer = Peer {
                    transport: Transport::Udp,
                    src,
                    local,
                    conn: None,
                };
                let bytes = Bytes::copy_from_slice(data);
                // A bug that panics on one message must not stop this socket's
                // reader: the kernel keeps giving it its share of the peers.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    core.on_message(bytes, peer);
                }));
                if handled.is_err() {
                    crate::stats::Stats::inc(&core.stats.panics);
                    tracing::error!(
                        "handling a message from {src} on {local} panicked; it is dropped"
                    );
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // An ICMP error queued on the socket (port unreachable after a
                // send) is reported by the next receive: note it, go on.
                tracing::debug!("udp recv on {local}: {e}");
            }
        }
    }
}

/// Sends one datagram without ever waiting: the sockets are blocking for
/// their receiving thread, so each send asks for non-blocking behaviour
/// itself. A full kernel buffer is an error (the caller counts it; SIP's
/// retransmissions recover).
fn udp_send(sock: &std::net::UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(sock).send_to_with_flags(bytes, &to.into(), libc::MSG_DONTWAIT)
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

/// An accepted connection that turned out to speak SIP: registered (by id,
/// and by the peer's source address for requests we send it), then served.
async fn tcp_sip<S: Io + 'static>(
    core: Arc<Core>,
    stream: S,
    buf: BytesMut,
    peer: Peer,
    clock: ConnClock,
    shutdown: CancellationToken,
) {
    let id = core.out.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, rx) = mpsc::channel::<Queued>(TCP_QUEUE);
    core.out.register(id, (peer.transport, peer.src), tx);
    let peer = Peer {
        conn: Some(id),
        ..peer
    };
    serve_sip(core, stream, buf, peer, rx, clock, shutdown).await;
}

/// Writes what is queued for a connection, each message within
/// `tcp_send_timeout`. A write that fails or times out ends the connection
/// (`closing` stops its reader); what is still queued then fails.
async fn write_queue<W: AsyncWrite + Unpin>(
    core: Arc<Core>,
    mut wr: W,
    mut rx: mpsc::Receiver<Queued>,
    mark: Arc<WriteMark>,
    closing: CancellationToken,
) {
    let limit = core.out.setup.get().and_then(|s| s.send_timeout);
    while let Some(q) = rx.recv().await {
        // TLS keeps records until flushed; for TCP the flush is free.
        let write = async {
            wr.write_all(&q.bytes).await?;
            wr.flush().await
        };
        let written = match limit {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    crate::stats::Stats::inc(&core.stats.tcp_send_timeouts);
                    tracing::info!(
                        "closing the connection to {}: a write took longer than tcp_send_timeout",
                        q.to
                    );
                    false
                }
            },
            None => write.await.is_ok(),
        };
        if !written {
            let to = q.to;
            q.fail(SendError::ConnectionClosed(to));
            break;
        }
        q.delivered();
        mark.mark();
    }
    closing.cancel();
    // Nothing more is taken; what waits is failed (dropping a Queued reports it).
    rx.close();
    while rx.try_recv().is_ok() {}
}

/// Serves a SIP connection, accepted or opened by us: frames what `buf` and
/// the stream bring to `Core::on_message` as from `peer` (its `conn` set, so
/// replies go back on it), writes what `rx` queues, and unregisters it at the
/// end.
async fn serve_sip<S: Io + 'static>(
    core: Arc<Core>,
    stream: S,
    mut buf: BytesMut,
    peer: Peer,
    rx: mpsc::Receiver<Queued>,
    mut clock: ConnClock,
    shutdown: CancellationToken,
) {
    let src = peer.src;
    let id = peer.conn.unwrap_or_default();
    let (mut rd, wr) = tokio::io::split(stream);
    let written = Arc::new(WriteMark::new(Instant::now()));
    // Cancelled by the server's shutdown, or by the writer when the connection broke.
    let closing = shutdown.child_token();
    let writer = tokio::spawn(write_queue(
        core.clone(),
        wr,
        rx,
        written.clone(),
        closing.clone(),
    ));
    // An accepted connection's first read happened while sniffing: frame it first.
    let mut have_data = !buf.is_empty();
    'conn: loop {
        if !have_data {
            let read = read_timed(
                &core,
                &mut rd,
                &mut buf,
                &mut clock,
                Some(&written),
                src,
                &closing,
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
    core.out.unregister(id);
    // Let queued messages go out before the writer ends with the queue; a
    // peer that does not read gets a little while, then the connection goes
    // (what is still queued then fails).
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

#[cfg(test)]
mod outbound_tests;
