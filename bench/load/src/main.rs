//! `siphon-load`: closed-loop load for siphon's benchmarks. N requests in
//! flight (one per connection or socket), each sent when the previous answer
//! arrived; stops after a number of requests or seconds, whichever comes
//! first; prints requests/s and latency percentiles. Only loopback targets
//! are accepted (the project's network rule).
//!
//! Modes:
//! - `http URL`: JSON-RPC POSTs on keep-alive connections (xhttp/jsonrpcs).
//! - `udp ADDR`: JSON-RPC datagrams (jsonrpcs' `dgram_socket=udp:…`).
//! - `sink BASE`: event subscribers for event_jsonrpc (counts documents,
//!   answers sync_mode requests), reporting events/s.
//!
//! Its own small HTTP/1.1 client (Content-Length answers only) rather than
//! hyper's: the tool must cost as little CPU as possible on a 2-core box
//! where it shares the machine with the server it measures.

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use siphon_proto::netstring;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(
    name = "siphon-load",
    about = "Closed-loop JSON-RPC load over HTTP or UDP (loopback only)"
)]
struct Cli {
    /// Requests in flight (connections or sockets).
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 100_000)]
    requests: i64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The JSON-RPC document to send.
    #[arg(
        long,
        default_value = r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#
    )]
    body: String,
    /// A label for the result line.
    #[arg(long, default_value = "")]
    label: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// POST to an http://127.0.0.x:PORT/PATH URL on keep-alive connections.
    Http { url: String },
    /// Datagrams to 127.0.0.x:PORT.
    Udp { addr: String },
    /// Event subscribers (event_jsonrpc): listen on 127.0.0.1:BASE.. (one per
    /// subscriber), count the JSON documents, answer requests when `--reply`;
    /// report events/s from the first to the last document.
    Sink {
        /// First port.
        base: u16,
        /// How many subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: u16,
        /// Stop after this many documents in all.
        #[arg(long)]
        expect: u64,
        /// Answer requests (sync_mode).
        #[arg(long)]
        reply: bool,
    },
    /// evapi clients: connect to ADDR, count the netstrings received; with
    /// `--answer`, answer `suspend|INDEX|LABEL` events with
    /// `answer|INDEX|LABEL|<sip:moved@127.0.0.1:5099>`. Runs until the
    /// time is up or `--expect` events arrived.
    Evapi {
        /// evapi's address.
        addr: String,
        /// How many clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Stop after this many events in all (0: run for --seconds).
        #[arg(long, default_value_t = 0)]
        expect: u64,
        /// Answer suspend events.
        #[arg(long)]
        answer: bool,
        /// Once connected, send a SIP MESSAGE to this UDP address and time
        /// from then (a burst raised by one request).
        #[arg(long)]
        trigger: Option<String>,
    },
}

/// What one worker measured.
#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: u64,
}

fn loopback(addr: &str) -> Result<SocketAddr, String> {
    let a = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{a}: not a loopback address (benchmarks only send to 127.0.0.0/8 or ::1)"
        ));
    }
    Ok(a)
}

fn take(budget: &AtomicI64) -> bool {
    budget.fetch_sub(1, Ordering::Relaxed) > 0
}

async fn http_worker(
    to: SocketAddr,
    request: Arc<Vec<u8>>,
    budget: Arc<AtomicI64>,
    deadline: Instant,
) -> Tally {
    let mut t = Tally::default();
    let Ok(mut s) = tokio::net::TcpStream::connect(to).await else {
        t.errors += 1;
        return t;
    };
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    while Instant::now() < deadline && take(&budget) {
        let start = Instant::now();
        if s.write_all(&request).await.is_err() {
            t.errors += 1;
            return t;
        }
        match read_http_answer(&mut s, &mut buf).await {
            Some(200) => t.lat_us.push(start.elapsed().as_micros() as u32),
            Some(_) => t.errors += 1,
            None => {
                t.errors += 1;
                return t;
            }
        }
    }
    t
}

/// Reads one answer; its status, or `None` when the connection broke.
async fn read_http_answer(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            if buf.len() >= total {
                buf.drain(..total);
                return Some(status);
            }
        }
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_buf(buf)).await;
        match r {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

async fn udp_worker(
    to: SocketAddr,
    request: Arc<Vec<u8>>,
    budget: Arc<AtomicI64>,
    deadline: Instant,
) -> Tally {
    let mut t = Tally::default();
    let bind: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let Ok(s) = tokio::net::UdpSocket::bind(bind).await else {
        t.errors += 1;
        return t;
    };
    if s.connect(to).await.is_err() {
        t.errors += 1;
        return t;
    }
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline && take(&budget) {
        let start = Instant::now();
        if s.send(&request).await.is_err() {
            t.errors += 1;
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf)).await {
            Ok(Ok(_)) => t.lat_us.push(start.elapsed().as_micros() as u32),
            _ => t.errors += 1,
        }
    }
    t
}

/// Counts what arrives on one connection until it closes: `split` takes the
/// complete frames off the front of the buffer, writes any answers to `out`
/// and says how many frames it took.
async fn count_frames(
    mut s: tokio::net::TcpStream,
    count: Arc<AtomicI64>,
    first: Arc<std::sync::OnceLock<Instant>>,
    mut split: impl FnMut(&mut BytesMut, &mut Vec<u8>) -> Option<i64>,
) {
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut out: Vec<u8> = Vec::new();
    loop {
        match s.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        let _ = first.set(Instant::now());
        let Some(n) = split(&mut buf, &mut out) else {
            eprintln!("unexpected bytes: closing");
            return;
        };
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        count.fetch_add(n, Ordering::Relaxed);
    }
}

/// event_jsonrpc documents (concatenated JSON): answers those with a numeric id.
fn split_json(reply: bool) -> impl FnMut(&mut BytesMut, &mut Vec<u8>) -> Option<i64> {
    move |buf, out| {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
        let (mut used, mut n) = (0, 0);
        while let Some(Ok(v)) = it.next() {
            used = it.byte_offset();
            n += 1;
            if reply && let Some(id) = v.get("id").and_then(serde_json::Value::as_u64) {
                out.extend_from_slice(
                    format!("{{\"jsonrpc\":\"2.0\",\"result\":8,\"id\":{id}}}").as_bytes(),
                );
            }
        }
        let _ = buf.split_to(used);
        Some(n)
    }
}

/// evapi netstrings: answers `suspend|INDEX|LABEL` with `answer|INDEX|LABEL|<contact>`.
fn split_netstrings(answer: bool) -> impl FnMut(&mut BytesMut, &mut Vec<u8>) -> Option<i64> {
    let mut decoder = netstring::Decoder::new(netstring::DEFAULT_MAX);
    move |buf, out| {
        let mut n = 0;
        loop {
            match decoder.decode(buf) {
                Ok(Some(frame)) => {
                    n += 1;
                    if answer && let Some(rest) = frame.strip_prefix(b"suspend|") {
                        let text = format!(
                            "answer|{}|<sip:moved@127.0.0.1:5099>",
                            String::from_utf8_lossy(rest)
                        );
                        let mut framed = BytesMut::new();
                        netstring::encode(text.as_bytes(), &mut framed);
                        out.extend_from_slice(&framed);
                    }
                }
                Ok(None) => return Some(n),
                Err(_) => return None,
            }
        }
    }
}

/// Waits until `expect` frames were counted (0: until the time is up);
/// returns how many and the seconds from the first to the last.
async fn wait_counted(
    count: &AtomicI64,
    first: &std::sync::OnceLock<Instant>,
    expect: u64,
    seconds: u64,
) -> (i64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut last = Instant::now();
    let mut seen = 0;
    while (expect == 0 || (seen as u64) < expect) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let n = count.load(Ordering::Relaxed);
        if n != seen {
            seen = n;
            last = Instant::now();
        }
    }
    let secs = first
        .get()
        .map_or(0.0, |f| last.duration_since(*f).as_secs_f64())
        .max(1e-6);
    (seen, secs)
}

fn evapi_clients(
    addr: &str,
    clients: usize,
    expect: u64,
    answer: bool,
    trigger: Option<&str>,
    seconds: u64,
) -> std::process::ExitCode {
    let trigger = match trigger.map(loopback).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let to = match loopback(addr) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let count = Arc::new(AtomicI64::new(0));
        let first = Arc::new(std::sync::OnceLock::new());
        for _ in 0..clients {
            match tokio::net::TcpStream::connect(to).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(count_frames(s, count.clone(), first.clone(), split_netstrings(answer)));
                }
                Err(e) => {
                    eprintln!("connect {to}: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        println!("ready");
        if let Some(t) = trigger {
            // Let the server register every client before the burst.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let msg = "MESSAGE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKburst\r\nFrom: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: burst\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
            let _ = first.set(Instant::now());
            let _ = sock.send_to(msg.as_bytes(), t);
        }
        let (seen, secs) = wait_counted(&count, &first, expect, seconds).await;
        println!(
            "evapi {clients} client(s): {seen} events in {secs:.3} s: {:.0} events/s",
            seen as f64 / secs
        );
        std::process::ExitCode::SUCCESS
    })
}

fn sink(
    base: u16,
    subscribers: u16,
    expect: u64,
    reply: bool,
    seconds: u64,
) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let count = Arc::new(AtomicI64::new(0));
        let first = Arc::new(std::sync::OnceLock::new());
        for i in 0..subscribers {
            let l = match tokio::net::TcpListener::bind(("127.0.0.1", base + i)).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("bind 127.0.0.1:{}: {e}", base + i);
                    return std::process::ExitCode::from(2);
                }
            };
            let (count, first) = (count.clone(), first.clone());
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(count_frames(
                        s,
                        count.clone(),
                        first.clone(),
                        split_json(reply),
                    ));
                }
            });
        }
        println!("ready");
        let (seen, secs) = wait_counted(&count, &first, expect.max(1), seconds).await;
        println!(
            "sink {subscribers} subscriber(s) {} {seen} documents in {secs:.3} s: {:.0} events/s",
            if reply { "sync_mode" } else { "notification" },
            seen as f64 / secs
        );
        if seen as u64 >= expect {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        }
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Mode::Sink {
        base,
        subscribers,
        expect,
        reply,
    } = cli.mode
    {
        return sink(base, subscribers, expect, reply, cli.seconds);
    }
    if let Mode::Evapi {
        addr,
        clients,
        expect,
        answer,
        trigger,
    } = &cli.mode
    {
        return evapi_clients(
            addr,
            *clients,
            *expect,
            *answer,
            trigger.as_deref(),
            cli.seconds,
        );
    }
    let (to, request, kind) = match &cli.mode {
        Mode::Http { url } => {
            let Some(rest) = url.strip_prefix("http://") else {
                eprintln!("{url}: only http:// URLs");
                return std::process::ExitCode::from(2);
            };
            let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            let to = match loopback(auth) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let mut req = format!(
                "POST {path} HTTP/1.1\r\nHost: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                cli.body.len()
            )
            .into_bytes();
            req.extend_from_slice(cli.body.as_bytes());
            (to, req, "http")
        }
        Mode::Udp { addr } => match loopback(addr) {
            Ok(a) => (a, cli.body.clone().into_bytes(), "udp"),
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
        Mode::Sink { .. } | Mode::Evapi { .. } => unreachable!("handled above"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = Arc::new(request);
    let budget = Arc::new(AtomicI64::new(cli.requests));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(cli.seconds);
    let tallies: Vec<Tally> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..cli.inflight.max(1) {
            let (request, budget) = (request.clone(), budget.clone());
            if kind == "http" {
                set.spawn(http_worker(to, request, budget, deadline));
            } else {
                set.spawn(udp_worker(to, request, budget, deadline));
            }
        }
        let mut out = Vec::new();
        while let Some(t) = set.join_next().await {
            out.extend(t.ok());
        }
        out
    });
    let secs = started.elapsed().as_secs_f64();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut lat: Vec<u32> = tallies.into_iter().flat_map(|t| t.lat_us).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
        }
    };
    println!(
        "{:<10} {:<5} {:>3} in flight {:>8} ok {:>5} errors {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us",
        cli.label,
        kind,
        cli.inflight,
        lat.len(),
        errors,
        lat.len() as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
    if lat.is_empty() {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
