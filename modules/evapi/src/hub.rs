//! The connected clients and their tasks. Relaying only queues: every client
//! has its own writer task and a bounded queue; a client whose queue is full
//! is disconnected instead of slowing anyone down.

use bytes::{Bytes, BytesMut};
use serde_json::json;
use siphon_proto::netstring;
use siphon_script::evi::EventParams;
use siphon_script::{Outcome, Program, RouteType};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What may wait per client (frame bytes plus a per-frame cost); beyond
/// it the client is too slow and is disconnected. Large enough for a burst
/// of 100,000 small events from one route run.
pub const QUEUE_BYTES: usize = 8 << 20;
/// The bookkeeping cost counted per queued frame.
const FRAME_COST: usize = 32;
/// The largest incoming frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Longest tag.
pub const MAX_TAG: usize = 64;
/// The event raised when a client connects or goes.
pub const E_CONNECTION: &str = "E_EVAPI_CONNECTION";

/// Settings from the module parameters.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bind_addr`.
    pub bind: String,
    /// `netstring_format`.
    pub netstrings: bool,
    /// `max_clients`.
    pub max_clients: usize,
}

/// One connected client.
pub struct Client {
    /// `$evapi(conidx)`: its slot.
    pub conidx: usize,
    /// Its address.
    pub addr: SocketAddr,
    tag: Mutex<Option<String>>,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: AtomicUsize,
    closed: AtomicBool,
    stop: CancellationToken,
    /// Frames written to it.
    pub sent: AtomicU64,
    /// Messages received from it.
    pub received: AtomicU64,
}

impl Client {
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
    /// Bytes queued for it.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
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
    /// Clients disconnected because they did not read.
    pub slow: AtomicU64,
    /// Clients disconnected for a bad or oversized frame.
    pub bad_frames: AtomicU64,
    /// Frames queued to clients.
    pub relayed: AtomicU64,
    /// Frames not delivered (the client was too slow).
    pub dropped: AtomicU64,
    /// Messages received from clients.
    pub received: AtomicU64,
}

/// Who is connected, in connection order (oldest first).
pub struct Hub {
    pub(crate) settings: Settings,
    clients: RwLock<Vec<Arc<Client>>>,
    pub(crate) program: OnceLock<Arc<Program>>,
    /// Counters.
    pub counters: Counters,
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

impl Hub {
    /// A hub with no clients.
    pub fn new(settings: Settings) -> Arc<Hub> {
        Arc::new(Hub {
            settings,
            clients: RwLock::new(Vec::new()),
            program: OnceLock::new(),
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
            match target {
                Target::All => all.clone(),
                Target::Tag(t) => all.iter().filter(|c| c.has_tag(t)).cloned().collect(),
                Target::First(t) => all
                    .iter()
                    .find(|c| c.has_tag(t))
                    .cloned()
                    .into_iter()
                    .collect(),
            }
        };
        let mut n = 0;
        for c in targets {
            let len = frame.len() + FRAME_COST;
            if c.queued.load(Ordering::Relaxed) + len > QUEUE_BYTES {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                let queued = c.queued();
                if self.close(&c, true) {
                    self.counters.slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "evapi: client {} ({}) does not read: {queued} bytes waiting; disconnecting it",
                        c.conidx,
                        c.addr,
                    );
                }
            } else if c.tx.send(frame.clone()).is_ok() {
                c.queued.fetch_add(len, Ordering::Relaxed);
                self.counters.relayed.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            // A failed send: the client is closing; nothing to count.
        }
        n
    }

    /// Closes a client once: removes it, stops its tasks, runs
    /// `connection-closed` when `run_route`, raises the event.
    /// Whether this call closed it (false: it was closed already).
    pub fn close(self: &Arc<Self>, c: &Arc<Client>, run_route: bool) -> bool {
        if c.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Ok(mut all) = self.clients.write() {
            all.retain(|x| !Arc::ptr_eq(x, c));
        }
        c.stop.cancel();
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
        self.raise(c, "closed");
        if run_route {
            // Not inside the caller's route (a relay from a SIP route may close a client).
            let (hub, c) = (self.clone(), c.clone());
            tokio::spawn(async move {
                hub.run_route("evapi:connection-closed", &c, None);
            });
        }
        true
    }

    fn raise(&self, c: &Client, state: &str) {
        if let Some(p) = self.program.get() {
            let _ = p.evi().raise(
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

    /// Runs an evapi event route for `c`; whether it asked to close the client.
    pub(crate) fn run_route(&self, name: &str, c: &Arc<Client>, msg: Option<Bytes>) -> bool {
        let Some(p) = self.program.get() else {
            return false;
        };
        let Some(route) = p.event_route(name) else {
            return false;
        };
        let mut ctx = p.new_ctx(RouteType::EVENT);
        ctx.ext.insert(EvapiCtx {
            client: c.clone(),
            msg,
            close: false,
        });
        if let Outcome::Suspended(_) = p.run(route, &mut ctx) {
            tracing::error!("event_route[{name}]: cannot suspend, there is no transaction");
        }
        ctx.ext.get::<EvapiCtx>().is_some_and(|x| x.close)
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
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
                    let (tx, rx) = mpsc::unbounded_channel();
                    let c = Arc::new(Client {
                        conidx,
                        addr,
                        tag: Mutex::new(None),
                        tx,
                        queued: AtomicUsize::new(0),
                        closed: AtomicBool::new(false),
                        stop: shutdown.child_token(),
                        sent: AtomicU64::new(0),
                        received: AtomicU64::new(0),
                    });
                    all.push(c.clone());
                    Some((c, rx))
                }
            };
            let Some((c, rx)) = client else {
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
            if self.run_route("evapi:connection-new", &c, None) {
                // evapi_close() in connection-new: gone without connection-closed.
                let _ = self.close(&c, false);
                continue;
            }
            tokio::spawn(self.clone().client_task(c, stream, rx));
        }
    }

    async fn client_task(
        self: Arc<Self>,
        c: Arc<Client>,
        stream: TcpStream,
        mut rx: mpsc::UnboundedReceiver<Bytes>,
    ) {
        let (mut rd, mut wr) = stream.into_split();
        let writer = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut batch: Vec<Bytes> = Vec::with_capacity(1024);
                let mut out = BytesMut::new();
                loop {
                    let n = tokio::select! {
                        n = rx.recv_many(&mut batch, 1024) => n,
                        _ = c.stop.cancelled() => return,
                    };
                    if n == 0 {
                        return;
                    }
                    out.clear();
                    for b in batch.drain(..) {
                        out.extend_from_slice(&b);
                    }
                    let cost = out.len() + n * FRAME_COST;
                    let r = tokio::select! {
                        r = wr.write_all(&out) => r,
                        _ = c.stop.cancelled() => return,
                    };
                    if r.is_err() {
                        return;
                    }
                    c.queued.fetch_sub(cost.min(c.queued()), Ordering::Relaxed);
                    c.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        };
        let mut buf = BytesMut::with_capacity(8192);
        let mut decoder = netstring::Decoder::new(MAX_FRAME).skip_whitespace(true);
        let why = loop {
            let r = tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                _ = c.stop.cancelled() => break None,
            };
            match r {
                Ok(0) => break Some("closed by the client"),
                Err(_) => break Some("read error"),
                Ok(_) => {}
            }
            if !self.settings.netstrings {
                let msg = buf.split().freeze();
                if self.message(&c, msg) {
                    break None;
                }
                continue;
            }
            let mut stop = None;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(msg)) => {
                        if self.message(&c, msg) {
                            stop = Some(None);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("evapi: client {} ({}): {e}: closing it", c.conidx, c.addr);
                        self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        stop = Some(Some("bad frame"));
                        break;
                    }
                }
            }
            if let Some(s) = stop {
                break s;
            }
        };
        match why {
            Some(_) => self.close(&c, true),
            // Closed by evapi_close(), a slow-client disconnect or shutdown: already handled.
            None => self.close(&c, false),
        };
        writer.abort();
    }

    /// Runs `message-received`; whether the route closed the client.
    fn message(self: &Arc<Self>, c: &Arc<Client>, msg: Bytes) -> bool {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        c.received.fetch_add(1, Ordering::Relaxed);
        self.run_route("evapi:message-received", c, Some(msg))
    }
}
