//! The client core: servers in priority groups, one task per server that
//! owns its connection (netstring frames, many requests in flight matched
//! by id, timeouts in send order), reconnects with backoff, and the choice
//! of a server for each message (highest priority group first, round robin
//! inside it, failover when a server is down, full or its send fails).

use crate::servers::ServerSpec;
use bytes::BytesMut;
use serde_json::{Value, json};
use siphon_proto::netstring;
use siphon_script::Program;
use siphon_script::evi::EventParams;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The event raised when a server connects or disconnects.
pub const E_SERVER_STATE: &str = "E_JSONRPCC_SERVER_STATE";
/// The largest reply frame.
pub const MAX_FRAME: usize = 1 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const BATCH: usize = 64;

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The `result` member.
    Result(Value),
    /// The `error` member.
    Error(Value),
    /// No reply within the timeout.
    Timeout,
    /// No server could take it.
    Failure,
    /// Its connection was lost before the reply.
    Dropped,
    /// The reply had both or neither of `result` and `error`.
    BadResponse(Value),
}

/// How a client picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// jsonrpcc: the highest priority number first, round robin inside.
    HighFirstRoundRobin,
    /// janssonrpcc: the lowest priority number first, weighted random inside.
    LowFirstWeighted,
}

/// No server could take the message (all down, given up or full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoServer;

impl std::fmt::Display for NoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no server available")
    }
}

impl std::error::Error for NoServer {}

/// Client settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Requests in flight per server before the next server is tried.
    pub max_pending: usize,
    /// -1 forever, 0 never reconnect, N attempts.
    pub max_conn_attempts: i64,
}

/// A message for a server's task.
pub(crate) struct Cmd {
    method: Arc<str>,
    params: Option<Value>,
    reply: Option<oneshot::Sender<Outcome>>,
    timeout: Option<Duration>,
}

const DOWN: u8 = 0;
const UP: u8 = 1;
const GAVE_UP: u8 = 2;

/// Per-server counters (also summed for the module's statistics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests and notifications written.
    pub sent: AtomicU64,
    /// Replies with `result`.
    pub replies: AtomicU64,
    /// Replies with `error`.
    pub errors: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Requests failed (connection lost, nowhere to go).
    pub failures: AtomicU64,
    /// Connection attempts after the first.
    pub reconnects: AtomicU64,
}

/// One server.
pub struct Server {
    /// Its configuration.
    pub spec: ServerSpec,
    state: AtomicU8,
    in_flight: AtomicUsize,
    tx: mpsc::Sender<Cmd>,
    rx: Mutex<Option<mpsc::Receiver<Cmd>>>,
    /// Its counters.
    pub counters: Counters,
}

struct Group {
    servers: Vec<Arc<Server>>,
    next: AtomicUsize,
}

/// The client: every server, grouped by priority.
pub struct Client {
    groups: Vec<Group>,
    policy: Policy,
    seed: AtomicU64,
    settings: Settings,
    /// Messages no server could take.
    pub no_server: AtomicU64,
    me: Weak<Client>,
}

impl Client {
    /// A client for `servers` (not connected until [`Client::start`]).
    pub fn new(servers: Vec<ServerSpec>, settings: Settings) -> Arc<Client> {
        Self::with_policy(servers, settings, Policy::HighFirstRoundRobin)
    }

    /// A client choosing servers by `policy`.
    pub fn with_policy(
        servers: Vec<ServerSpec>,
        settings: Settings,
        policy: Policy,
    ) -> Arc<Client> {
        let mut prios: Vec<i64> = servers.iter().map(|s| s.priority).collect();
        match policy {
            Policy::HighFirstRoundRobin => prios.sort_unstable_by(|a, b| b.cmp(a)),
            Policy::LowFirstWeighted => prios.sort_unstable(),
        }
        prios.dedup();
        let groups = prios
            .iter()
            .map(|p| Group {
                servers: servers
                    .iter()
                    .filter(|s| s.priority == *p)
                    .map(|spec| {
                        let (tx, rx) = mpsc::channel(settings.max_pending.max(1));
                        Arc::new(Server {
                            spec: spec.clone(),
                            state: AtomicU8::new(DOWN),
                            in_flight: AtomicUsize::new(0),
                            tx,
                            rx: Mutex::new(Some(rx)),
                            counters: Counters::default(),
                        })
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Arc::new_cyclic(|me| Client {
            groups,
            policy,
            seed: AtomicU64::new(seed),
            settings,
            no_server: AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// Every server, highest priority first.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<Server>> {
        self.groups.iter().flat_map(|g| g.servers.iter())
    }

    /// Starts one connection task per server (inside the runtime); they
    /// raise `E_SERVER_STATE` through `program`'s event interface.
    pub fn start(&self, program: Arc<Program>) {
        for s in self.servers() {
            if let Some(rx) = s.rx.lock().ok().and_then(|mut r| r.take()) {
                let settings = self.settings.clone();
                tokio::spawn(run(
                    s.clone(),
                    rx,
                    self.me.clone(),
                    settings,
                    program.clone(),
                ));
            }
        }
    }

    /// Sends a request; the receiver gets its outcome. `Err` when no server
    /// can take it now.
    pub fn request(
        &self,
        method: &str,
        params: Value,
    ) -> Result<oneshot::Receiver<Outcome>, NoServer> {
        self.request_with(method, Some(params), None)
    }

    /// A request with its own timeout and possibly no `params` member.
    pub fn request_with(
        &self,
        method: &str,
        params: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<Outcome>, NoServer> {
        let (tx, rx) = oneshot::channel();
        self.route(
            Cmd {
                method: Arc::from(method),
                params,
                reply: Some(tx),
                timeout,
            },
            None,
        )
        .map(|()| rx)
        .map_err(|_| NoServer)
    }

    /// Sends a notification; `Err` when no server can take it now.
    pub fn notify(&self, method: &str, params: Value) -> Result<(), NoServer> {
        self.notify_with(method, Some(params))
    }

    /// A notification, possibly without `params`.
    pub fn notify_with(&self, method: &str, params: Option<Value>) -> Result<(), NoServer> {
        self.route(
            Cmd {
                method: Arc::from(method),
                params,
                reply: None,
                timeout: None,
            },
            None,
        )
        .map_err(|_| NoServer)
    }

    /// Gives a message to the first server that takes it: groups by
    /// priority, round robin inside a group, skipping `except`.
    fn route(&self, mut cmd: Cmd, except: Option<&Server>) -> Result<(), Cmd> {
        for g in &self.groups {
            let n = g.servers.len();
            // The order to try this group's servers in.
            let order: Vec<usize> = match self.policy {
                Policy::HighFirstRoundRobin => {
                    let start = g.next.fetch_add(1, Ordering::Relaxed);
                    (0..n).map(|k| (start + k) % n).collect()
                }
                Policy::LowFirstWeighted => self.weighted_order(&g.servers),
            };
            for i in order {
                let s = &g.servers[i];
                let limit = if s.spec.hwm > 0 {
                    s.spec.hwm
                } else {
                    self.settings.max_pending
                };
                if except.is_some_and(|e| std::ptr::eq(e, &**s))
                    || s.state.load(Ordering::Relaxed) != UP
                    || s.in_flight.load(Ordering::Relaxed) >= limit
                {
                    continue;
                }
                let is_request = cmd.reply.is_some();
                if is_request {
                    s.in_flight.fetch_add(1, Ordering::Relaxed);
                }
                match s.tx.try_send(cmd) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        if is_request {
                            s.in_flight.fetch_sub(1, Ordering::Relaxed);
                        }
                        cmd = e.into_inner();
                    }
                }
            }
        }
        self.no_server.fetch_add(1, Ordering::Relaxed);
        Err(cmd)
    }

    /// A weighted random order of the servers that are up (weight 0 only
    /// when every weight is 0), as janssonrpcc picks.
    fn weighted_order(&self, servers: &[Arc<Server>]) -> Vec<usize> {
        let mut left: Vec<usize> = (0..servers.len())
            .filter(|i| servers[*i].state.load(Ordering::Relaxed) == UP)
            .collect();
        let all_zero = left.iter().all(|i| servers[*i].spec.weight == 0);
        let weight = |i: usize| {
            if all_zero {
                1
            } else {
                servers[i].spec.weight as u64
            }
        };
        let mut out = Vec::with_capacity(left.len());
        while !left.is_empty() {
            let total: u64 = left.iter().map(|i| weight(*i)).sum();
            if total == 0 {
                break;
            }
            let mut r = self.random() % total;
            let pos = left
                .iter()
                .position(|i| {
                    let w = weight(*i);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
                .unwrap_or(0);
            out.push(left.remove(pos));
        }
        out
    }

    fn random(&self) -> u64 {
        // xorshift64*: a cheap spread for server choice, not for secrets.
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Re-sends a message its server could not send, or fails it.
    fn reroute(&self, cmd: Cmd, from: &Server) {
        if let Err(cmd) = self.route(cmd, Some(from))
            && let Some(r) = cmd.reply
        {
            from.counters.failures.fetch_add(1, Ordering::Relaxed);
            let _ = r.send(Outcome::Failure);
        }
    }
}

/// Raises `E_SERVER_STATE` for `s`.
fn state_changed(program: &Program, s: &Server, up: bool) {
    let _ = program.evi().raise(
        E_SERVER_STATE,
        EventParams::Named(vec![
            ("server".into(), json!(s.spec.addr_text())),
            ("priority".into(), json!(s.spec.priority)),
            (
                "state".into(),
                json!(if up { "connected" } else { "disconnected" }),
            ),
        ]),
    );
}

impl Server {
    /// `connected`, `disconnected` or `gave up`.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            UP => "connected",
            GAVE_UP => "gave up",
            _ => "disconnected",
        }
    }
    /// Requests waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    // ±20 %.
    d.mul_f64(0.8 + (n % 400) as f64 / 1000.0)
}

/// The server's task: connect, serve, reconnect as `max_conn_attempts` allows.
async fn run(
    server: Arc<Server>,
    mut rx: mpsc::Receiver<Cmd>,
    client: Weak<Client>,
    settings: Settings,
    program: Arc<Program>,
) {
    let name = server.spec.addr_text();
    let mut attempts_left = settings.max_conn_attempts;
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        if !first {
            server.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let target = (server.spec.host.clone(), server.spec.port);
        let connect = tokio::time::timeout(
            settings.timeout.max(Duration::from_secs(1)),
            connect_to(target),
        )
        .await;
        match connect {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                server.state.store(UP, Ordering::Relaxed);
                tracing::info!("jsonrpcc: connected to {name}");
                state_changed(&program, &server, true);
                attempts_left = settings.max_conn_attempts;
                backoff = MIN_BACKOFF;
                let why = serve(&server, stream, &mut rx, &client, &settings).await;
                server.state.store(DOWN, Ordering::Relaxed);
                let Some(why) = why else { return };
                tracing::warn!("jsonrpcc: {name}: {why}; reconnecting");
                state_changed(&program, &server, false);
            }
            r => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".into(),
                };
                tracing::warn!("jsonrpcc: cannot connect to {name}: {why}");
            }
        }
        if attempts_left == 0 {
            server.state.store(GAVE_UP, Ordering::Relaxed);
            tracing::error!("jsonrpcc: {name}: no more connection attempts (max_conn_attempts)");
            // Whatever still arrives goes elsewhere.
            while let Some(cmd) = rx.recv().await {
                forward(&client, &server, cmd);
            }
            return;
        }
        if attempts_left > 0 {
            attempts_left -= 1;
        }
        let wake = tokio::time::Instant::now() + jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => forward(&client, &server, cmd),
                    None => return,
                },
            }
        }
    }
}

fn forward(client: &Weak<Client>, server: &Server, cmd: Cmd) {
    if cmd.reply.is_some() {
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    match client.upgrade() {
        Some(c) => c.reroute(cmd, server),
        None => {
            if let Some(r) = cmd.reply {
                let _ = r.send(Outcome::Failure);
            }
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Outcome>,
}

fn resolve(server: &Server, pending: &mut HashMap<u64, Pending>, id: u64, o: Outcome) {
    if let Some(p) = pending.remove(&id) {
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
        let c = &server.counters;
        match &o {
            Outcome::Result(_) => &c.replies,
            Outcome::Error(_) => &c.errors,
            Outcome::Timeout => &c.timeouts,
            Outcome::Failure | Outcome::Dropped | Outcome::BadResponse(_) => &c.failures,
        }
        .fetch_add(1, Ordering::Relaxed);
        let _ = p.reply.send(o);
    }
}

/// Serves one connection. `None`: the client is gone; `Some(why)`: the connection failed.
async fn serve(
    server: &Arc<Server>,
    stream: tokio::net::TcpStream,
    rx: &mut mpsc::Receiver<Cmd>,
    client: &Weak<Client>,
    settings: &Settings,
) -> Option<String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Requests may carry their own timeouts: the earliest deadline first.
    let mut deadlines: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
    let mut next_id: u64 = 0;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = netstring::Decoder::new(MAX_FRAME);
    let mut batch: Vec<Cmd> = Vec::with_capacity(BATCH);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut doc: Vec<u8> = Vec::with_capacity(256);
    let why = loop {
        // Expired entries at the front (answered ones are skipped lazily).
        while let Some(Reverse((_, id))) = deadlines.peek() {
            if pending.contains_key(id) {
                break;
            }
            deadlines.pop();
        }
        let next_deadline = deadlines.peek().map(|Reverse(d)| d.0);
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break None;
                }
                out.clear();
                let mut ids = Vec::with_capacity(batch.len());
                for cmd in &batch {
                    let id = cmd.reply.as_ref().map(|_| {
                        next_id = next_id.wrapping_add(1).max(1);
                        next_id
                    });
                    doc.clear();
                    siphon_proto::jsonrpc::write_request(&mut doc, id.map(Value::from).as_ref(), &cmd.method, cmd.params.as_ref());
                    netstring::encode(&doc, &mut out);
                    ids.push(id);
                }
                match tokio::time::timeout(settings.timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => {
                        let now = tokio::time::Instant::now();
                        for (cmd, id) in batch.drain(..).zip(ids) {
                            server.counters.sent.fetch_add(1, Ordering::Relaxed);
                            if let (Some(id), Some(reply)) = (id, cmd.reply) {
                                pending.insert(id, Pending { reply });
                                deadlines.push(Reverse((now + cmd.timeout.unwrap_or(settings.timeout), id)));
                            }
                        }
                    }
                    r => {
                        // Not sent (or not all of it): the next server gets these.
                        server.state.store(DOWN, Ordering::Relaxed);
                        for cmd in batch.drain(..) {
                            forward(client, server, cmd);
                        }
                        break Some(match r {
                            Ok(Err(e)) => format!("send failed: {e}"),
                            _ => "send timed out".into(),
                        });
                    }
                }
            }
            r = rd.read_buf(&mut buf) => {
                match r {
                    Ok(0) => break Some("connection closed by the server".into()),
                    Err(e) => break Some(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                let mut bad = None;
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => {
                            let v: Value = match serde_json::from_slice(&frame) {
                                Ok(v) => v,
                                Err(e) => {
                                    bad = Some(format!("a reply that is not JSON ({e})"));
                                    break;
                                }
                            };
                            let Some(id) = v.get("id").and_then(Value::as_u64) else {
                                tracing::debug!("jsonrpcc: {}: reply without a known id: {v}", server.spec.addr_text());
                                continue;
                            };
                            // `error: null` is no error; both or neither is a bad response.
                            let o = match (v.get("result"), v.get("error").filter(|e| !e.is_null())) {
                                (Some(r), None) => Outcome::Result(r.clone()),
                                (None, Some(e)) => Outcome::Error(e.clone()),
                                _ => {
                                    tracing::warn!("jsonrpcc: {}: reply {id} has both or neither of result and error", server.spec.addr_text());
                                    Outcome::BadResponse(v.clone())
                                }
                            };
                            resolve(server, &mut pending, id, o);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            bad = Some(format!("bad netstring ({e})"));
                            break;
                        }
                    }
                }
                if let Some(why) = bad {
                    break Some(why);
                }
            }
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(tokio::time::Instant::now)), if next_deadline.is_some() => {
                let now = tokio::time::Instant::now();
                while let Some(&Reverse((d, id))) = deadlines.peek() {
                    if d > now {
                        break;
                    }
                    deadlines.pop();
                    resolve(server, &mut pending, id, Outcome::Timeout);
                }
            }
        }
    };
    // The connection is gone: its requests fail now, not at their timeouts.
    server.state.store(DOWN, Ordering::Relaxed);
    let ids: Vec<u64> = pending.keys().copied().collect();
    for id in ids {
        resolve(server, &mut pending, id, Outcome::Dropped);
    }
    why
}

/// A connection to a server's first address the loopback-only switch the
/// tests set (`siphon_script::api::ONLY_LOOPBACK_ENV`) allows.
async fn connect_to(target: (String, u16)) -> std::io::Result<tokio::net::TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(target)
        .await?
        .filter(|a| !siphon_script::api::off_machine(*a))
        .collect();
    if addrs.is_empty() {
        return Err(std::io::Error::other(format!(
            "no address to connect to ({} refuses addresses off this machine when set)",
            siphon_script::api::ONLY_LOOPBACK_ENV
        )));
    }
    tokio::net::TcpStream::connect(&addrs[..]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_seed_field_order() {
        // What the server task writes for one message.
        let document = |id: Option<u64>, method: &str, params: Option<&Value>| {
            let mut out = Vec::new();
            siphon_proto::jsonrpc::write_request(
                &mut out,
                id.map(Value::from).as_ref(),
                method,
                params,
            );
            out
        };
        let p = json!({"id": 1234, "name": "Petros"});
        assert_eq!(
            String::from_utf8(document(Some(2), "get_user", Some(&p))).unwrap(),
            r#"{"id":2,"jsonrpc":"2.0","method":"get_user","params":{"id":1234,"name":"Petros"}}"#
        );
        assert_eq!(
            String::from_utf8(document(None, "update_user", Some(&p))).unwrap(),
            r#"{"jsonrpc":"2.0","method":"update_user","params":{"id":1234,"name":"Petros"}}"#
        );
    }

    #[test]
    fn round_robin_inside_the_highest_group_then_failover() {
        let specs =
            crate::servers::parse_servers("127.0.0.1:1,2 127.0.0.2:1,2 127.0.0.3:1,1").unwrap();
        let c = Client::new(
            specs,
            Settings {
                timeout: Duration::from_millis(500),
                max_pending: 1000,
                max_conn_attempts: -1,
            },
        );
        let servers: Vec<_> = c.servers().cloned().collect();
        for s in &servers {
            s.state.store(UP, Ordering::Relaxed);
        }
        for _ in 0..4 {
            c.notify("m", json!([])).unwrap();
        }
        let queued = |s: &Server| s.tx.max_capacity() - s.tx.capacity();
        assert_eq!(
            (
                queued(&servers[0]),
                queued(&servers[1]),
                queued(&servers[2])
            ),
            (2, 2, 0)
        );
        // The whole first group down: the next group takes it.
        servers[0].state.store(DOWN, Ordering::Relaxed);
        servers[1].state.store(DOWN, Ordering::Relaxed);
        c.notify("m", json!([])).unwrap();
        assert_eq!(queued(&servers[2]), 1);
        servers[2].state.store(DOWN, Ordering::Relaxed);
        assert!(c.notify("m", json!([])).is_err());
        assert_eq!(c.no_server.load(Ordering::Relaxed), 1);
    }
}
