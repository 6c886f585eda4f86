//! The sockets: unix and TCP streams (packets back to back, framed by their
//! length), unix and UDP datagrams (a packet each), all answered through
//! [`answer`].

use crate::binrpc::{self, Encoder, Header, Kind, Value};
use crate::{
    Config, Counters, DGRAM_MAX, Endpoint, Listen, Live, MAX_CONNECTIONS, MAX_REQUEST, WRITE_WAIT,
};
use bytes::BytesMut;
use siphon_script::Program;
use siphon_script::rpc::{RpcFailure, RpcReply, call};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What every socket's tasks share.
struct Shared {
    program: Arc<Program>,
    live: Arc<Live>,
    max_reply: usize,
    idle: Duration,
    /// Connections, and datagrams being answered, at once.
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// After an answer: keep reading the connection, or close it.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    Keep,
    Close,
}

/// A fault for a request that is not binrpc; the connection is closed after it.
fn bad(sh: &Shared, cookie: u32, message: String) -> (Vec<u8>, Then) {
    Counters::bump(&sh.live.counters.bad_packets);
    Counters::bump(&sh.live.counters.faults);
    tracing::debug!("ctl: {message}");
    (binrpc::fault(cookie, 400, &message), Then::Close)
}

/// binrpc fault codes are HTTP-like (kamcmd prints `error: 500 - …`);
/// the registry's are JSON-RPC's.
fn fault_code(f: &RpcFailure) -> i32 {
    match f.code {
        -32602 | -32600 | -32700 => 400,
        -32001 => 403,
        c if c <= 0 => 500,
        c => i32::try_from(c).unwrap_or(500),
    }
}

/// Answers one whole packet (`h` its header, `frame` header and body).
/// The reply's body may take at most `max_reply` bytes.
async fn answer(
    sh: &Shared,
    caller: &str,
    h: Header,
    frame: &[u8],
    max_reply: usize,
) -> (Vec<u8>, Then) {
    if h.kind != Kind::Request {
        return bad(sh, h.cookie, "bad request: corrupted packet".into());
    }
    let mut values = match binrpc::decode_body(&frame[h.len..]) {
        Ok(v) => v.into_iter(),
        Err(e) => return bad(sh, h.cookie, format!("bad request: {e}")),
    };
    let method = match values.next() {
        Some(Value::Str(m)) => m,
        Some(_) => {
            return bad(
                sh,
                h.cookie,
                "bad request method: record doesn't match type".into(),
            );
        }
        None => {
            return bad(
                sh,
                h.cookie,
                "bad request method: end of packet encountered".into(),
            );
        }
    };
    let counters = &sh.live.counters;
    Counters::bump(&counters.requests);
    if sh.program.rpc(&method).is_some_and(|s| s.changes_state) {
        tracing::info!("ctl: {method} (changes state) from {caller}");
    }
    let params = values.map(|v| crate::json::param(&v)).collect();
    let result = match call(&sh.program, &method, params) {
        None => {
            Counters::bump(&counters.faults);
            return (
                binrpc::fault(h.cookie, 500, &format!("command {method} not found")),
                Then::Keep,
            );
        }
        Some(RpcReply::Now(r)) => r,
        Some(RpcReply::Later(f)) => f.await,
    };
    let result = match result {
        Ok(v) => v,
        Err(f) => {
            Counters::bump(&counters.faults);
            return (
                binrpc::fault(h.cookie, fault_code(&f), &f.message),
                Then::Keep,
            );
        }
    };
    let mut e = Encoder::new(max_reply);
    match crate::json::reply(&mut e, &result) {
        Ok(()) => (
            binrpc::packet(Kind::Reply, h.cookie, &e.finish()),
            Then::Keep,
        ),
        Err(_) => {
            Counters::bump(&counters.reply_too_large);
            Counters::bump(&counters.faults);
            tracing::warn!(
                "ctl: the reply to {method} from {caller} is over {} bytes (binrpc_max_body_size)",
                max_reply
            );
            let msg = format!("reply too large: over {max_reply} bytes (binrpc_max_body_size)");
            (binrpc::fault(h.cookie, 500, &msg), Then::Keep)
        }
    }
}

/// What the next bytes of a stream hold.
enum Next {
    /// A whole packet of `total` bytes.
    Packet(Header),
    /// Not yet a whole packet.
    More,
    /// Not binrpc, or too large: this fault, then close.
    Refuse(Vec<u8>),
}

fn next(sh: &Shared, buf: &[u8]) -> Next {
    match binrpc::header(buf) {
        Err(e) => Next::Refuse(bad(sh, 0, format!("bad request: {e}")).0),
        Ok(None) => Next::More,
        Ok(Some(h)) if h.body_len > MAX_REQUEST => Next::Refuse(
            bad(
                sh,
                h.cookie,
                format!(
                    "bad request: packet too big ({} bytes, at most {MAX_REQUEST})",
                    h.body_len
                ),
            )
            .0,
        ),
        Ok(Some(h)) if buf.len() < h.total() => Next::More,
        Ok(Some(h)) => Next::Packet(h),
    }
}

/// Serves one stream connection until it closes, idles out, sends garbage
/// or siphon stops.
async fn stream<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, sh: Arc<Shared>, caller: String) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Every whole packet already read, in order.
        loop {
            let (reply, then) = match next(&sh, &buf) {
                Next::More => break,
                Next::Refuse(fault) => (fault, Then::Close),
                Next::Packet(h) => {
                    let frame = buf.split_to(h.total());
                    answer(&sh, &caller, h, &frame, sh.max_reply).await
                }
            };
            match tokio::time::timeout(WRITE_WAIT, io.write_all(&reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        "ctl: {caller} did not read its reply within {} s: closed",
                        WRITE_WAIT.as_secs()
                    );
                    return;
                }
            }
            if then == Then::Close {
                let _ = io.shutdown().await;
                return;
            }
        }
        buf.reserve(4096);
        let read = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            r = tokio::time::timeout(sh.idle, io.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                Counters::bump(&sh.live.counters.idle_closed);
                tracing::debug!(
                    "ctl: {caller} sent nothing for {} s: closed",
                    sh.idle.as_secs()
                );
                return;
            }
        }
    }
}

/// One datagram in, its answer out (a reply fits one datagram).
async fn datagram(sh: &Shared, caller: &str, pkt: &[u8]) -> Vec<u8> {
    match next(sh, pkt) {
        Next::Refuse(fault) => fault,
        Next::More => {
            let cookie = binrpc::header(pkt).ok().flatten().map_or(0, |h| h.cookie);
            bad(sh, cookie, "bad request: truncated packet".into()).0
        }
        Next::Packet(h) => {
            let max = sh.max_reply.min(DGRAM_MAX - binrpc::MAX_HEADER);
            answer(sh, caller, h, &pkt[..h.total()], max).await.0
        }
    }
}

/// Tracks a stream connection for `ctl.who` while it lives.
struct Registered {
    live: Arc<Live>,
    id: u64,
}

impl Registered {
    fn new(live: &Arc<Live>, from: Endpoint, to: Endpoint) -> Registered {
        let id = live
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = live.conns.lock() {
            m.insert(id, (from, to));
        }
        Registered {
            live: live.clone(),
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.live.conns.lock() {
            m.remove(&self.id);
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host == "*" {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("ctl: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("ctl: {host} has no address"))
}

/// Binds `proto:host:port` with `bind`.
fn bind_ip<S>(
    proto: &str,
    host: &str,
    port: u16,
    bind: impl FnOnce(SocketAddr) -> std::io::Result<S>,
) -> Result<S, String> {
    let addr = resolve(host, port)?;
    bind(addr).map_err(|e| format!("ctl: cannot bind {proto}:{addr}: {e}"))
}

/// The bound address; a warning when other hosts can reach it.
fn exposed(proto: &str, bound: std::io::Result<SocketAddr>) -> Result<SocketAddr, String> {
    let bound = bound.map_err(|e| e.to_string())?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "ctl: binrpc on {proto}:{bound} is reachable from other hosts and has no authentication"
        );
    }
    Ok(bound)
}

/// A user or group given as a number or a name.
fn id_of<T>(
    v: &Option<String>,
    what: &str,
    raw: fn(u32) -> T,
    by_name: fn(&str) -> Option<T>,
) -> Result<Option<T>, String> {
    let Some(s) = v.as_deref() else {
        return Ok(None);
    };
    s.parse()
        .ok()
        .map(raw)
        .or_else(|| by_name(s))
        .map(Some)
        .ok_or(format!("ctl: unknown {what} `{s}`"))
}

/// Prepares a unix socket's path: its directory exists, a stale socket is
/// removed; anything else there is an error.
fn unix_path(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("ctl: cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("ctl: cannot remove {}: {e}", path.display())),
        Ok(_) => Err(format!(
            "ctl: {} exists and is not a socket",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Sets the socket file's mode and owner (`mode`, `user`, `group`).
fn own(path: &Path, cfg: &Config) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.mode))
        .map_err(|e| format!("ctl: chmod {}: {e}", path.display()))?;
    let uid = id_of(&cfg.owner.0, "user", nix::unistd::Uid::from_raw, |n| {
        nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| u.uid)
    })?;
    let gid = id_of(&cfg.owner.1, "group", nix::unistd::Gid::from_raw, |n| {
        nix::unistd::Group::from_name(n)
            .ok()
            .flatten()
            .map(|g| g.gid)
    })?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid)
            .map_err(|e| format!("ctl: chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Removes the socket file when dropped: its serving task ends with siphon
/// (the runtime drops the task when it shuts down).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn endpoint(transport: &'static str, addr: &SocketAddr) -> Endpoint {
    Endpoint {
        transport,
        name: addr.ip().to_string(),
        port: addr.port().to_string(),
    }
}

fn unix_endpoint(transport: &'static str, path: &Path) -> Endpoint {
    Endpoint {
        transport,
        name: path.display().to_string(),
        port: String::new(),
    }
}

/// Binds every configured socket and serves it until `shutdown`.
pub(crate) fn start(
    cfg: &Config,
    program: Arc<Program>,
    live: Arc<Live>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let sh = Arc::new(Shared {
        program,
        live: live.clone(),
        max_reply: cfg.max_reply,
        idle: cfg.idle,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        shutdown: shutdown.clone(),
    });
    for l in &cfg.listen {
        let local = match l {
            Listen::UnixStream(path) => {
                unix_path(path)?;
                let sock = tokio::net::UnixListener::bind(path)
                    .map_err(|e| format!("ctl: cannot bind {}: {e}", path.display()))?;
                own(path, cfg)?;
                let local = unix_endpoint("unix_stream", path);
                tokio::spawn(accept_unix(
                    sock,
                    SocketFile(path.clone()),
                    sh.clone(),
                    local.clone(),
                ));
                local
            }
            Listen::UnixDgram(path) => {
                unix_path(path)?;
                let sock = tokio::net::UnixDatagram::bind(path)
                    .map_err(|e| format!("ctl: cannot bind {}: {e}", path.display()))?;
                own(path, cfg)?;
                tokio::spawn(serve_unix_dgram(
                    Arc::new(sock),
                    SocketFile(path.clone()),
                    sh.clone(),
                ));
                unix_endpoint("unix_dgram", path)
            }
            Listen::Tcp(host, port) => {
                let sock = bind_ip("tcp", host, *port, |a| {
                    let s = std::net::TcpListener::bind(a)?;
                    s.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(s)
                })?;
                let local = endpoint("tcp", &exposed("tcp", sock.local_addr())?);
                tokio::spawn(accept_tcp(sock, sh.clone(), local.clone()));
                local
            }
            Listen::Udp(host, port) => {
                let sock = bind_ip("udp", host, *port, |a| {
                    let s = std::net::UdpSocket::bind(a)?;
                    s.set_nonblocking(true)?;
                    tokio::net::UdpSocket::from_std(s)
                })?;
                let local = endpoint("udp", &exposed("udp", sock.local_addr())?);
                tokio::spawn(serve_udp(Arc::new(sock), sh.clone()));
                local
            }
        };
        let shown = match local.transport {
            "unix_stream" => format!("unix:{}", local.name),
            "unix_dgram" => format!("unixd:{}", local.name),
            t if local.name.contains(':') => format!("{t}:[{}]:{}", local.name, local.port),
            t => format!("{t}:{}:{}", local.name, local.port),
        };
        tracing::info!("ctl listening on {shown}");
        if let Ok(mut v) = live.listening.lock() {
            v.push(local);
        }
    }
    Ok(())
}

/// A slot for one more connection, or `None` (counted) when all are taken.
fn slot(sh: &Shared, caller: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let p = sh.slots.clone().try_acquire_owned().ok();
    if p.is_none() {
        Counters::bump(&sh.live.counters.refused);
        tracing::warn!("ctl: {MAX_CONNECTIONS} connections open already: {caller} refused");
    }
    p
}

/// Serves an accepted stream connection in its own task, while a slot is free.
fn spawn_stream<S>(sh: &Arc<Shared>, io: S, caller: String, from: Endpoint, local: &Endpoint)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(permit) = slot(sh, &caller) else {
        return;
    };
    let reg = Registered::new(&sh.live, from, local.clone());
    let sh = sh.clone();
    tokio::spawn(async move {
        stream(io, sh, caller).await;
        drop((reg, permit));
    });
}

async fn accept_unix(
    sock: tokio::net::UnixListener,
    _file: SocketFile,
    sh: Arc<Shared>,
    local: Endpoint,
) {
    loop {
        let conn = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            c = sock.accept() => c,
        };
        let Ok((io, _)) = conn else { continue };
        let from = Endpoint {
            transport: "unix_stream",
            name: "<anonymous unix socket>".into(),
            port: String::new(),
        };
        spawn_stream(&sh, io, format!("unix {}", local.name), from, &local);
    }
}

async fn accept_tcp(sock: tokio::net::TcpListener, sh: Arc<Shared>, local: Endpoint) {
    loop {
        let conn = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            c = sock.accept() => c,
        };
        let Ok((io, peer)) = conn else { continue };
        let _ = io.set_nodelay(true);
        spawn_stream(
            &sh,
            io,
            format!("tcp {peer}"),
            endpoint("tcp", &peer),
            &local,
        );
    }
}

/// Where a datagram's answer goes.
trait Sender: Send + 'static {
    fn send(self, reply: Vec<u8>) -> impl std::future::Future<Output = ()> + Send;
}

impl Sender for (Arc<tokio::net::UdpSocket>, SocketAddr) {
    async fn send(self, reply: Vec<u8>) {
        let _ = self.0.send_to(&reply, self.1).await;
    }
}

impl Sender for (Arc<tokio::net::UnixDatagram>, PathBuf) {
    async fn send(self, reply: Vec<u8>) {
        let _ = self.0.send_to(&reply, &self.1).await;
    }
}

/// Answers a datagram in its own task, while a slot is free.
fn spawn_datagram(sh: &Arc<Shared>, pkt: &[u8], caller: String, to: impl Sender) {
    let Some(permit) = slot(sh, &caller) else {
        return;
    };
    let (pkt, sh) = (pkt.to_vec(), sh.clone());
    tokio::spawn(async move {
        let reply = datagram(&sh, &caller, &pkt).await;
        to.send(reply).await;
        drop(permit);
    });
}

async fn serve_udp(sock: Arc<tokio::net::UdpSocket>, sh: Arc<Shared>) {
    let mut buf = vec![0u8; DGRAM_MAX];
    loop {
        let got = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = got else { continue };
        spawn_datagram(&sh, &buf[..n], format!("udp {from}"), (sock.clone(), from));
    }
}

async fn serve_unix_dgram(sock: Arc<tokio::net::UnixDatagram>, _file: SocketFile, sh: Arc<Shared>) {
    let mut buf = vec![0u8; DGRAM_MAX];
    loop {
        let got = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = got else { continue };
        let Some(path) = from.as_pathname().map(Path::to_path_buf) else {
            tracing::warn!("ctl: a datagram from an unbound unix socket cannot be answered");
            continue;
        };
        let caller = format!("unixd {}", path.display());
        spawn_datagram(&sh, &buf[..n], caller, (sock.clone(), path));
    }
}
