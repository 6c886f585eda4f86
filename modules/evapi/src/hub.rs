//! The connected clients and their tasks. Relaying only appends to a
//! per-client byte buffer (never waits): the client's writer drains it in
//! batches. A client is disconnected only when its buffer would pass
//! `max_queue_bytes` or its socket takes no byte for `send_data_timeout`;
//! what it had queued before is then flushed for a bounded time.
//!
//! Client I/O (TLS, reads, writes) runs on evapi's own I/O thread, so a
//! route that relays 100k events in one run (it holds a SIP worker until
//! it ends) does not keep the writers from draining meanwhile: a wake from
//! a SIP worker reaches that thread at once instead of waiting in the
//! worker's local run queue. Event routes still run on the SIP workers,
//! one client's messages in order, through the host the module got at
//! start ([`Host::run_event_route`]).

use bytes::{Bytes, BytesMut};
use serde_json::json;
use siphon_proto::netstring;
use siphon_script::api::{EventSuspend, Host, RouteDone};
use siphon_script::evi::{EventParams, Evi};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default `max_queue_bytes`: what may wait per client.
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// Default `send_data_timeout` (Kamailio's default, 0, would let a dead client hold its queue).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a disconnected client's queue is flushed when `send_data_timeout` is 0.
const FLUSH_WITHOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// The TLS handshake deadline when `first_message_timeout` is 0.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// `first_message_timeout` when `auth_token` is set and the parameter is 0.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 5000;
/// The largest incoming frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Longest tag.
pub const MAX_TAG: usize = 64;
/// Received messages waiting for their route, per client (then reading pauses).
const ROUTE_BACKLOG: usize = 64;
/// The event raised when a client connects or goes.
pub const E_CONNECTION: &str = "E_EVAPI_CONNECTION";
/// The route a new client runs.
pub const ROUTE_CONNECTION_NEW: &str = "event_route[evapi:connection-new]";
/// The route a client's message runs (`$evapi(msg)`).
pub const ROUTE_MESSAGE: &str = "event_route[evapi:message-received]";
/// The route a client that went runs.
pub const ROUTE_CONNECTION_CLOSED: &str = "event_route[evapi:connection-closed]";

/// Settings from the module parameters.
#[derive(Clone)]
pub struct Settings {
    /// `bind_addr`.
    pub bind: String,
    /// `netstring_format`.
    pub netstrings: bool,
    /// `max_clients`.
    pub max_clients: usize,
    /// `max_queue_bytes`.
    pub max_queue: usize,
    /// `send_data_timeout` (None: 0, never for lack of progress).
    pub send_timeout: Option<Duration>,
    /// `first_message_timeout` (the auth default applied when `auth_token` is set).
    pub first_message: Option<Duration>,
    /// `auth_token`.
    pub token: Option<Vec<u8>>,
    /// `tls_certificate` + `tls_private_key`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Settings {
    /// Defaults for `bind` (tests and the module's parameters start here).
    pub fn new(bind: &str) -> Settings {
        Settings {
            bind: bind.to_string(),
            netstrings: true,
            max_clients: 8,
            max_queue: DEFAULT_QUEUE_BYTES,
            send_timeout: Some(DEFAULT_SEND_TIMEOUT),
            first_message: None,
            token: None,
            tls: None,
        }
    }
    /// How long a disconnected client's queue may still be written.
    pub fn flush_for(&self) -> Duration {
        self.send_timeout.unwrap_or(FLUSH_WITHOUT_TIMEOUT)
    }
}

#[derive(Default)]
struct Outq {
    buf: BytesMut,
    frames: u64,
    /// The writer has ended: nothing is taken any more.
    done: bool,
}

/// What [`Client::enqueue`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued.
    Yes,
    /// Refused: it would pass the byte bound.
    OverBound,
    /// The client is going or has not authenticated.
    NotReady,
}

/// One connected client.
pub struct Client {
    /// `$evapi(conidx)`: its slot.
    pub conidx: usize,
    /// Its address.
    pub addr: SocketAddr,
    tag: Mutex<Option<String>>,
    out: Mutex<Outq>,
    wake: Notify,
    queued: AtomicUsize,
    /// Receives events (authenticated when `auth_token` is set).
    ready: AtomicBool,
    closed: AtomicBool,
    closed_route: AtomicBool,
    stop: CancellationToken,
    /// Frames written to it.
    pub sent: AtomicU64,
    /// Frames it did not get (over the bound, or queued when it stalled or went).
    pub dropped: AtomicU64,
    /// Messages received from it.
    pub received: AtomicU64,
}

impl Client {
    /// A client in slot `conidx`; `ready`: receives events from the start.
    pub fn new(conidx: usize, addr: SocketAddr, ready: bool) -> Client {
        Client {
            conidx,
            addr,
            tag: Mutex::new(None),
            out: Mutex::new(Outq::default()),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            ready: AtomicBool::new(ready),
            closed: AtomicBool::new(false),
            closed_route: AtomicBool::new(false),
            stop: CancellationToken::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }
    /// Its tag.
    pub fn tag(&self) -> Option<String> {
        self.tag.lock().ok().and_then(|t| t.clone())
    }
    /// Whether its tag is `t` (no copy: relays ask this for every client).
    pub fn has_tag(&self, t: &str) -> bool {
        self.tag.lock().is_ok_and(|g| g.as_deref() == Some(t))
    }
    /// Sets its tag.
    pub fn set_tag(&self, t: &str) {
        if let Ok(mut g) = self.tag.lock() {
            *g = Some(t.to_string());
        }
    }
    /// Bytes queued for it (written ones leave as the socket takes them).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
    /// Whether it receives events.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.closed.load(Ordering::Relaxed)
    }

    /// Appends one frame to its queue, unless that passes `max` bytes. Never waits.
    pub fn enqueue(&self, frame: &[u8], max: usize) -> Enqueued {
        if !self.is_ready() {
            return Enqueued::NotReady;
        }
        let Ok(mut q) = self.out.lock() else {
            return Enqueued::NotReady;
        };
        if q.done {
            return Enqueued::NotReady;
        }
        if self.queued.load(Ordering::Relaxed) + frame.len() > max {
            return Enqueued::OverBound;
        }
        let was_empty = q.buf.is_empty();
        q.buf.extend_from_slice(frame);
        q.frames += 1;
        self.queued.fetch_add(frame.len(), Ordering::Relaxed);
        drop(q);
        if was_empty {
            // The writer takes everything queued once it runs; one wake is enough.
            self.wake.notify_one();
        }
        Enqueued::Yes
    }

    /// Everything queued, and how many frames it holds.
    fn take(&self) -> (Bytes, u64) {
        match self.out.lock() {
            Ok(mut q) => (
                std::mem::take(&mut q.buf).freeze(),
                std::mem::take(&mut q.frames),
            ),
            Err(_) => (Bytes::new(), 0),
        }
    }

    /// Ends the queue if it is empty (a relay racing the writer's end is refused, not lost).
    fn finish_if_empty(&self) -> bool {
        self.out.lock().map_or(true, |mut q| {
            q.done |= q.buf.is_empty();
            q.done
        })
    }

    /// Counts `frames` (with `bytes` of them unwritten) and everything still queued as dropped.
    fn lose(&self, frames: u64, bytes: usize) -> u64 {
        let (rest, more) = match self.out.lock() {
            Ok(mut q) => {
                q.done = true;
                (
                    std::mem::take(&mut q.buf).freeze(),
                    std::mem::take(&mut q.frames),
                )
            }
            Err(_) => (Bytes::new(), 0),
        };
        self.queued
            .fetch_sub((bytes + rest.len()).min(self.queued()), Ordering::Relaxed);
        self.dropped.fetch_add(frames + more, Ordering::Relaxed);
        frames + more
    }
}

/// How a client's writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Stopped with nothing left to write.
    Drained,
    /// The socket took nothing for `send_data_timeout`.
    Stalled {
        /// Frames not delivered.
        lost: u64,
    },
    /// Stopped, and the flush of what was queued ran out of time.
    FlushCut {
        /// Frames not delivered.
        lost: u64,
    },
    /// A write failed (the peer went).
    Failed {
        /// Frames not delivered.
        lost: u64,
    },
}

/// Writes `c`'s queue to `w` in batches until `c.stop`; then flushes what is
/// queued for at most `flush_for`. Ends early when one write waits longer
/// than `stall` (no progress).
pub async fn write_loop<W: AsyncWrite + Unpin>(
    c: &Client,
    w: &mut W,
    stall: Option<Duration>,
    flush_for: Duration,
) -> WriterEnd {
    let mut flush_until: Option<Instant> = None;
    loop {
        let (batch, frames) = c.take();
        if batch.is_empty() {
            if c.stop.is_cancelled() {
                if c.finish_if_empty() {
                    return WriterEnd::Drained;
                }
                continue;
            }
            tokio::select! {
                _ = c.wake.notified() => {}
                _ = c.stop.cancelled() => {}
            }
            continue;
        }
        let mut pos = 0;
        let mut flushed = false;
        while !flushed {
            if flush_until.is_none() && c.stop.is_cancelled() {
                flush_until = Some(Instant::now() + flush_for);
            }
            let stall_at = stall.map(|d| Instant::now() + d);
            let limit = match (stall_at, flush_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match limit {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let writing = pos < batch.len();
            tokio::select! {
                r = async {
                    if writing { w.write(&batch[pos..]).await } else { w.flush().await.map(|_| 1) }
                } => match r {
                    Ok(0) | Err(_) => {
                        return WriterEnd::Failed { lost: c.lose(frames, batch.len() - pos) };
                    }
                    Ok(n) if writing => {
                        pos += n;
                        c.queued.fetch_sub(n.min(c.queued()), Ordering::Relaxed);
                    }
                    Ok(_) => flushed = true,
                },
                _ = c.stop.cancelled(), if flush_until.is_none() => {}
                _ = timer => {
                    let lost = c.lose(frames, batch.len() - pos);
                    return if flush_until.is_some_and(|f| Instant::now() >= f) {
                        WriterEnd::FlushCut { lost }
                    } else {
                        WriterEnd::Stalled { lost }
                    };
                }
            }
        }
        c.sent.fetch_add(frames, Ordering::Relaxed);
    }
}

/// Compares a received token with the configured one in time that does not
/// depend on where they differ.
pub fn token_matches(got: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(got.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ got.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// Counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused over `max_clients`.
    pub refused: AtomicU64,
    /// Connections closed (any reason).
    pub closed: AtomicU64,
    /// Clients disconnected for passing the byte bound or making no write progress.
    pub slow: AtomicU64,
    /// Clients disconnected for a bad or oversized frame.
    pub bad_frames: AtomicU64,
    /// Frames queued to clients.
    pub relayed: AtomicU64,
    /// Frames not delivered (over the bound, or queued to a client that stalled or went).
    pub dropped: AtomicU64,
    /// Messages received from clients.
    pub received: AtomicU64,
    /// Clients closed for sending nothing within `first_message_timeout`.
    pub first_message_timeouts: AtomicU64,
    /// Clients closed for a first message that is not `auth_token`.
    pub auth_failures: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
}

/// Who is connected, in connection order (oldest first).
pub struct Hub {
    pub(crate) settings: Settings,
    clients: RwLock<Vec<Arc<Client>>>,
    /// What the module got at start (no clients come before).
    pub(crate) started: OnceLock<Started>,
    /// Counters.
    pub counters: Counters,
}

/// What the hub runs its routes and raises its events through, from the
/// module's start on.
pub(crate) struct Started {
    /// Runs `event_route[evapi:*]`.
    pub(crate) host: Arc<dyn Host>,
    /// Where [`E_CONNECTION`] is raised.
    pub(crate) evi: Arc<Evi>,
    /// The runtime event routes run on (the SIP workers').
    pub(crate) main: Handle,
    /// evapi's I/O thread.
    pub(crate) io: Handle,
}

/// The client an evapi event route runs for (in the route's context).
#[derive(Clone)]
pub struct EvapiCtx {
    /// The client.
    pub client: Arc<Client>,
    /// `$evapi(msg)`.
    pub msg: Option<Bytes>,
    /// `evapi_close()` was called.
    pub close: bool,
}

/// Which clients a relay goes to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every client.
    All,
    /// Every client with the tag.
    Tag(&'a str),
    /// The oldest client with the tag.
    First(&'a str),
}

/// Starts evapi's I/O thread (lives as long as the process) and returns its runtime.
pub fn io_thread() -> Result<Handle, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("evapi-io".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("evapi I/O runtime: {e}")));
                }
            }
        })
        .map_err(|e| format!("evapi I/O thread: {e}"))?;
    rx.recv().map_err(|e| e.to_string())?
}

impl Hub {
    /// A hub with no clients.
    pub fn new(settings: Settings) -> Arc<Hub> {
        Arc::new(Hub {
            settings,
            clients: RwLock::new(Vec::new()),
            started: OnceLock::new(),
            counters: Counters::default(),
        })
    }

    /// The connected clients, oldest first.
    pub fn clients(&self) -> Vec<Arc<Client>> {
        self.clients.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Frames `data` once and queues it to the targets; how many took it.
    pub fn relay(self: &Arc<Self>, data: &[u8], target: Target<'_>) -> usize {
        let frame = if self.settings.netstrings {
            netstring::encode_to_bytes(data)
        } else {
            Bytes::copy_from_slice(data)
        };
        let targets: Vec<Arc<Client>> = {
            let Ok(all) = self.clients.read() else {
                return 0;
            };
            let mut ready = all.iter().filter(|c| c.is_ready());
            match target {
                Target::All => ready.cloned().collect(),
                Target::Tag(t) => ready.filter(|c| c.has_tag(t)).cloned().collect(),
                Target::First(t) => ready.find(|c| c.has_tag(t)).cloned().into_iter().collect(),
            }
        };
        let mut n = 0;
        for c in targets {
            match c.enqueue(&frame, self.settings.max_queue) {
                Enqueued::Yes => {
                    self.counters.relayed.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Enqueued::OverBound => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    let queued = c.queued();
                    if self.close(&c, true) {
                        self.counters.slow.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "evapi: client {} ({}) does not read: {queued} bytes waiting, max_queue_bytes is {}; \
                             disconnecting it after a flush of what is queued",
                            c.conidx,
                            c.addr,
                            self.settings.max_queue,
                        );
                    }
                }
                // Going (its loss is counted by its writer) or not authenticated yet.
                Enqueued::NotReady => {}
            }
        }
        n
    }

    fn on_main(&self, f: impl FnOnce() + Send + 'static) {
        match self.started.get() {
            Some(s) => {
                s.main.spawn(async move { f() });
            }
            None => f(),
        }
    }

    /// Closes a client once: removes it, stops its reader, lets its writer
    /// flush, runs `connection-closed` (after its pending messages) when
    /// `run_route`, raises the event. Whether this call closed it.
    pub fn close(self: &Arc<Self>, c: &Arc<Client>, run_route: bool) -> bool {
        if c.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        c.closed_route.store(run_route, Ordering::Release);
        if let Ok(mut all) = self.clients.write() {
            all.retain(|x| !Arc::ptr_eq(x, c));
        }
        c.stop.cancel();
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
        let (hub, c) = (self.clone(), c.clone());
        self.on_main(move || hub.raise(&c, "closed"));
        true
    }

    fn raise(&self, c: &Client, state: &str) {
        if let Some(s) = self.started.get() {
            let _ = s.evi.raise(
                E_CONNECTION,
                EventParams::Named(vec![
                    ("conidx".into(), json!(c.conidx)),
                    ("srcaddr".into(), json!(c.addr.ip().to_string())),
                    ("srcport".into(), json!(c.addr.port())),
                    ("state".into(), json!(state)),
                ]),
            );
        }
    }

    /// Runs an evapi event route (`event_route[evapi:message-received]`) for
    /// `c` through the host; whether it asked to close the client. An async
    /// call in it cannot suspend: there is no transaction, as in Kamailio.
    pub(crate) async fn run_route(&self, name: &str, c: &Arc<Client>, msg: Option<Bytes>) -> bool {
        let Some(s) = self.started.get() else {
            return false;
        };
        let client = c.clone();
        let run = s.host.run_event_route(
            name.into(),
            EventSuspend::Refuse,
            Box::new(move |ctx| {
                ctx.ext.insert(EvapiCtx {
                    client,
                    msg,
                    close: false,
                });
                Ok(())
            }),
        );
        let Ok(run) = run else {
            // No such route in the configuration.
            return false;
        };
        run.finished()
            .await
            .is_some_and(|RouteDone { ctx, .. }| ctx.ext.get::<EvapiCtx>().is_some_and(|x| x.close))
    }

    /// Accepts clients until `shutdown`.
    pub async fn serve(self: Arc<Self>, l: TcpListener, shutdown: CancellationToken) {
        loop {
            let r = tokio::select! {
                r = l.accept() => r,
                _ = shutdown.cancelled() => return,
            };
            let (stream, addr) = match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("evapi accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let client = {
                let Ok(mut all) = self.clients.write() else {
                    continue;
                };
                if all.len() >= self.settings.max_clients {
                    None
                } else {
                    // The lowest free slot, as Kamailio numbers them.
                    let conidx = (0..)
                        .find(|i| !all.iter().any(|c| c.conidx == *i))
                        .unwrap_or(0);
                    let c = Arc::new(Client::new(conidx, addr, self.settings.token.is_none()));
                    all.push(c.clone());
                    Some(c)
                }
            };
            let Some(c) = client else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "evapi: too many clients ({}): refusing {addr}",
                    self.settings.max_clients
                );
                drop(stream);
                continue;
            };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            self.raise(&c, "connected");
            if self.run_route(ROUTE_CONNECTION_NEW, &c, None).await {
                // evapi_close() in connection-new: gone without connection-closed.
                let _ = self.close(&c, false);
                continue;
            }
            // Messages run their route here, in order; the socket moves to the I/O thread.
            let (tx, rx) = mpsc::channel(ROUTE_BACKLOG);
            tokio::spawn(self.clone().route_task(c.clone(), rx));
            let std = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("evapi: client {addr}: {e}");
                    self.close(&c, true);
                    continue;
                }
            };
            let hub = self.clone();
            let task = async move {
                match TcpStream::from_std(std) {
                    Ok(s) => hub.client_task(c, s, tx).await,
                    Err(e) => {
                        tracing::warn!("evapi: client {addr}: {e}");
                        hub.close(&c, true);
                    }
                }
            };
            match self.started.get() {
                Some(s) => drop(s.io.spawn(task)),
                None => drop(tokio::spawn(task)),
            }
        }
    }

    /// Runs `message-received` for each message, then `connection-closed`.
    async fn route_task(self: Arc<Self>, c: Arc<Client>, mut rx: mpsc::Receiver<Bytes>) {
        while let Some(msg) = rx.recv().await {
            if c.closed.load(Ordering::Acquire) && !c.closed_route.load(Ordering::Acquire) {
                break;
            }
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            c.received.fetch_add(1, Ordering::Relaxed);
            if self.run_route(ROUTE_MESSAGE, &c, Some(msg)).await {
                // evapi_close(): gone without connection-closed, as Kamailio.
                self.close(&c, false);
                return;
            }
        }
        if c.closed_route.load(Ordering::Acquire) {
            self.run_route(ROUTE_CONNECTION_CLOSED, &c, None).await;
        }
    }

    async fn client_task(self: Arc<Self>, c: Arc<Client>, s: TcpStream, tx: mpsc::Sender<Bytes>) {
        let Some(tls) = self.settings.tls.clone() else {
            return self.serve_client(c, s, tx).await;
        };
        let limit = self.settings.first_message.unwrap_or(TLS_HANDSHAKE);
        let r = tokio::select! {
            r = tokio::time::timeout(limit, tls.accept(s)) => r,
            _ = c.stop.cancelled() => return,
        };
        match r {
            Ok(Ok(s)) => self.serve_client(c, s, tx).await,
            Ok(Err(e)) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("evapi: client {} ({}): TLS: {e}", c.conidx, c.addr);
                self.close(&c, true);
            }
            Err(_) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "evapi: client {} ({}): no TLS handshake within {} ms",
                    c.conidx,
                    c.addr,
                    limit.as_millis()
                );
                self.close(&c, true);
            }
        }
    }

    async fn serve_client<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        c: Arc<Client>,
        s: S,
        tx: mpsc::Sender<Bytes>,
    ) {
        let (rd, mut wr) = tokio::io::split(s);
        let writer = async {
            let end = write_loop(
                &c,
                &mut wr,
                self.settings.send_timeout,
                self.settings.flush_for(),
            )
            .await;
            let lost = match end {
                WriterEnd::Drained => 0,
                WriterEnd::Stalled { lost } => {
                    if self.close(&c, true) {
                        self.counters.slow.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(
                        "evapi: client {} ({}) took no data for send_data_timeout ({} ms): disconnecting it, {lost} events lost",
                        c.conidx,
                        c.addr,
                        self.settings.send_timeout.unwrap_or_default().as_millis()
                    );
                    lost
                }
                WriterEnd::FlushCut { lost } => {
                    tracing::warn!(
                        "evapi: client {} ({}) did not take what was queued before it was disconnected: {lost} events lost",
                        c.conidx,
                        c.addr
                    );
                    lost
                }
                WriterEnd::Failed { lost } => {
                    self.close(&c, true);
                    lost
                }
            };
            self.counters.dropped.fetch_add(lost, Ordering::Relaxed);
            if matches!(end, WriterEnd::Drained) {
                // TLS: close_notify; TCP: FIN after the flushed data.
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            }
        };
        let reader = self.read_loop(&c, rd, tx);
        tokio::join!(writer, reader);
        tracing::info!(
            "evapi: client {} ({}) gone: {} events sent, {} dropped",
            c.conidx,
            c.addr,
            c.sent.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed)
        );
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        c: &Arc<Client>,
        mut rd: R,
        tx: mpsc::Sender<Bytes>,
    ) {
        let token = self.settings.token.as_deref();
        let mut first_pending = true;
        let first_deadline = self.settings.first_message.map(|d| Instant::now() + d);
        let mut buf = BytesMut::with_capacity(8192);
        let mut decoder = netstring::Decoder::new(MAX_FRAME).skip_whitespace(true);
        let mut msgs: Vec<Bytes> = Vec::new();
        let why: Option<&str> = 'outer: loop {
            let r = tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                _ = c.stop.cancelled() => break None,
                _ = async {
                    match first_deadline {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                }, if first_pending => {
                    self.counters.first_message_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "evapi: client {} ({}) sent {} within first_message_timeout ({} ms): closing it",
                        c.conidx,
                        c.addr,
                        if token.is_some() { "no token" } else { "nothing" },
                        self.settings.first_message.unwrap_or_default().as_millis()
                    );
                    break Some("first message timeout");
                }
            };
            match r {
                Ok(0) => break Some("closed by the client"),
                Err(_) => break Some("read error"),
                Ok(_) => {}
            }
            if !self.settings.netstrings {
                msgs.push(buf.split().freeze());
            } else {
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(msg)) => msgs.push(msg),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(
                                "evapi: client {} ({}): {e}: closing it",
                                c.conidx,
                                c.addr
                            );
                            self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                            msgs.clear();
                            break 'outer Some("bad frame");
                        }
                    }
                }
            }
            for msg in msgs.drain(..) {
                if std::mem::take(&mut first_pending)
                    && let Some(t) = token
                {
                    if token_matches(&msg, t) {
                        c.ready.store(true, Ordering::Release);
                        continue;
                    }
                    self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "evapi: client {} ({}): its first message is not the auth_token: closing it",
                        c.conidx,
                        c.addr
                    );
                    break 'outer Some("bad token");
                }
                let sent = tokio::select! {
                    r = tx.send(msg) => r.is_ok(),
                    _ = c.stop.cancelled() => false,
                };
                if !sent {
                    break 'outer None;
                }
            }
        };
        if why.is_some() {
            self.close(c, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn client() -> Client {
        Client::new(0, "127.0.0.1:1".parse().unwrap(), true)
    }

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| netstring::encode_to_bytes(format!("burst {i}").as_bytes()))
            .collect()
    }

    /// The writer of `c` on `a`, with 5 s for progress and for the flush.
    fn spawn_writer(
        c: &Arc<Client>,
        mut a: tokio::io::DuplexStream,
    ) -> tokio::task::JoinHandle<WriterEnd> {
        let c = c.clone();
        tokio::spawn(async move {
            let five = Duration::from_secs(5);
            write_loop(&c, &mut a, Some(five), five).await
        })
    }

    /// Runs the writer of a stopped `c` to a reader; how it ended and what the reader got.
    async fn flush_to_a_reader(c: &Client, buf: usize) -> (WriterEnd, usize) {
        let (mut a, b) = tokio::io::duplex(buf);
        let r = tokio::spawn(count(b, usize::MAX));
        let five = Duration::from_secs(5);
        let end = write_loop(c, &mut a, Some(five), five).await;
        drop(a);
        (end, r.await.unwrap())
    }

    /// Reads netstrings from `r` until `want` arrived or EOF; how many.
    async fn count<R: AsyncRead + Unpin>(mut r: R, want: usize) -> usize {
        let mut buf = BytesMut::new();
        let mut d = netstring::Decoder::new(MAX_FRAME);
        let mut n = 0;
        while n < want {
            if r.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
            while let Ok(Some(_)) = d.decode(&mut buf) {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_refuses_when_not_ready() {
        let c = client();
        let f = netstring::encode_to_bytes(b"0123456789"); // 14 bytes
        for _ in 0..7 {
            assert_eq!(c.enqueue(&f, 100), Enqueued::Yes);
        }
        assert_eq!(c.queued(), 98);
        assert_eq!(c.enqueue(&f, 100), Enqueued::OverBound);
        let (b, n) = c.take();
        assert_eq!((b.len(), n), (98, 7));
        let waiting = Client::new(1, "127.0.0.1:1".parse().unwrap(), false);
        assert_eq!(waiting.enqueue(&f, 100), Enqueued::NotReady);
        c.closed.store(true, Ordering::Relaxed);
        assert_eq!(c.enqueue(&f, 100), Enqueued::NotReady);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_larger_than_the_socket_reaches_a_reader() {
        let c = Arc::new(client());
        let (a, b) = tokio::io::duplex(4096);
        let w = spawn_writer(&c, a);
        let r = tokio::spawn(count(b, 100_000));
        for f in frames(100_000) {
            assert_eq!(c.enqueue(&f, DEFAULT_QUEUE_BYTES), Enqueued::Yes);
        }
        assert_eq!(r.await.unwrap(), 100_000);
        c.stop.cancel();
        assert_eq!(w.await.unwrap(), WriterEnd::Drained);
        assert_eq!(c.sent.load(Ordering::Relaxed), 100_000);
        assert_eq!(c.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_cut_after_the_timeout_and_its_queue_counted() {
        let c = client();
        let (mut a, _b) = tokio::io::duplex(1024);
        for f in frames(1000) {
            c.enqueue(&f, DEFAULT_QUEUE_BYTES);
        }
        let t0 = Instant::now();
        let end = write_loop(
            &c,
            &mut a,
            Some(Duration::from_millis(5000)),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(end, WriterEnd::Stalled { lost: 1000 });
        assert_eq!(t0.elapsed(), Duration::from_millis(5000));
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1000);
        assert_eq!(c.queued(), 0);
        // Frames queued after the cut batch count too.
        let c = client();
        let (mut a, _b) = tokio::io::duplex(64);
        let fs = frames(10);
        c.enqueue(&fs[0], DEFAULT_QUEUE_BYTES);
        let w = write_loop(
            &c,
            &mut a,
            Some(Duration::from_millis(100)),
            Duration::from_secs(5),
        );
        tokio::pin!(w);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut w)
                .await
                .is_err()
        );
        for f in &fs[1..] {
            c.enqueue(f, DEFAULT_QUEUE_BYTES);
        }
        // The first frame was written; the batch the socket stopped in counts whole.
        assert_eq!(w.await, WriterEnd::Stalled { lost: 9 });
        assert_eq!(c.sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        let c = Arc::new(client());
        let (a, mut b) = tokio::io::duplex(256);
        for f in frames(200) {
            c.enqueue(&f, DEFAULT_QUEUE_BYTES);
        }
        let total = c.queued();
        let w = spawn_writer(&c, a);
        // 128 bytes every 4 s: far slower than the burst, never 5 s without progress.
        let mut got = 0;
        let mut chunk = [0u8; 128];
        while got < total {
            tokio::time::sleep(Duration::from_secs(4)).await;
            got += b.read(&mut chunk).await.unwrap();
        }
        c.stop.cancel();
        assert_eq!(w.await.unwrap(), WriterEnd::Drained);
        assert_eq!(c.sent.load(Ordering::Relaxed), 200);
        assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_disconnect_the_queue_is_flushed_and_a_dead_client_is_bounded() {
        // A reading client gets everything queued before the disconnect.
        let c = client();
        for f in frames(5000) {
            c.enqueue(&f, DEFAULT_QUEUE_BYTES);
        }
        c.stop.cancel();
        assert_eq!(
            flush_to_a_reader(&c, 1024).await,
            (WriterEnd::Drained, 5000)
        );
        // A relay racing the writer's end is refused, not left in a queue nobody writes.
        assert_eq!(
            c.enqueue(&frames(1)[0], DEFAULT_QUEUE_BYTES),
            Enqueued::NotReady
        );
        // One that never reads holds the writer for at most flush_for, even with no send_data_timeout.
        let c = client();
        let (mut a, _b) = tokio::io::duplex(1024);
        for f in frames(5000) {
            c.enqueue(&f, DEFAULT_QUEUE_BYTES);
        }
        c.stop.cancel();
        let t0 = Instant::now();
        let end = write_loop(&c, &mut a, None, Duration::from_secs(2)).await;
        assert_eq!(end, WriterEnd::FlushCut { lost: 5000 });
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_over_the_bound_is_dropped_and_counted_and_the_queue_before_it_still_flushed() {
        let mut settings = Settings::new("127.0.0.1:0");
        settings.max_queue = 11 * 100; // 100 × "8:burst NN,"
        let hub = Hub::new(settings);
        let c = Arc::new(client());
        hub.clients.write().unwrap().push(c.clone());
        for i in 0..100 {
            assert_eq!(
                hub.relay(format!("burst {i:02}").as_bytes(), Target::All),
                1
            );
        }
        // The 101st passes the bound: dropped, counted for the client, the client closed.
        assert_eq!(hub.relay(b"burst 100", Target::All), 0);
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(hub.counters.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(hub.counters.slow.load(Ordering::Relaxed), 1);
        assert!(hub.clients().is_empty() && c.stop.is_cancelled());
        // What was queued before is written, not discarded.
        assert_eq!(flush_to_a_reader(&c, 64).await, (WriterEnd::Drained, 100));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cretX", b"s3cret"));
        assert!(!token_matches(b"s3creT", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
        assert!(!token_matches(b"\0\0\0\0\0\0", b"\0\0\0\0\0\0\0"));
    }
}
