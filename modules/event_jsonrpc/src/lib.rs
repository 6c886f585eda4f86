//! event_jsonrpc (seed 001, OpenSIPS): the event interface's `jsonrpc:`
//! transport. A subscriber `jsonrpc:host:port[/method]` receives every event
//! it subscribed to as a JSON-RPC 2.0 document, written back to back (no
//! framing) on one persistent TCP connection per destination, exactly as
//! the seed shows: `{"id":null,"jsonrpc":"2.0","method":M,"params":P}`.
//!
//! Parameters: `sync_mode` (each event is a request with a unique id whose
//! reply is awaited — by the destination's task, never by the code that
//! raised the event), `timeout` (ms, default 1000: how old an event may get
//! before it is sent, and in sync_mode how long its reply may take),
//! `event_param` (adds the event name under that key, or as the first array
//! element); an event without params is sent with `"params":{}`.
//!
//! Each destination has a bounded queue and its own task: a subscriber that
//! is down or slow loses only its own events (dropped, counted, logged);
//! a broken connection is reopened by the next event, with a backoff while
//! the peer refuses.
//!
//! `allowed_subscribers` (CIDRs, addresses or host names; default loopback
//! only) limits where `event_subscribe` over RPC may make siphon connect;
//! `subscribe_event` in the configuration is trusted and not checked.

mod sender;

use ipnet::IpNet;
use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::evi::{
    Event, EventSubscriber, EventTransport, Evi, OnOutcome, Outcome, TransportModule,
};
use siphon_script::rpc::StatSource;
use siphon_script::{ModuleDef, ParamSpec};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events waiting per destination before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// The module's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sync_mode`.
    pub sync: bool,
    /// `timeout`.
    pub timeout: Duration,
    /// `event_param`.
    pub event_param: Option<String>,
    /// `allowed_subscribers`: where RPC subscriptions may point.
    pub allowed: Vec<IpNet>,
}

/// The default of `allowed_subscribers`: this machine only.
pub const DEFAULT_ALLOWED: &str = "127.0.0.0/8, ::1";

/// `allowed_subscribers` values: CIDRs, addresses, host names (every address
/// they resolve to now) or `any`, separated by commas or spaces.
pub fn parse_allowed<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in values
        .into_iter()
        .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
    {
        if item.eq_ignore_ascii_case("any") {
            out.push("0.0.0.0/0".parse().map_err(|e| format!("{e}"))?);
            out.push("::/0".parse().map_err(|e| format!("{e}"))?);
        } else if let Ok(n) = item.parse::<IpNet>() {
            out.push(n.trunc());
        } else if let Ok(ip) = item.trim_matches(['[', ']']).parse::<IpAddr>() {
            out.push(IpNet::from(ip));
        } else {
            let addrs = (item, 0).to_socket_addrs().map_err(|e| {
                format!("allowed_subscribers: `{item}` is no CIDR, address or known host: {e}")
            })?;
            out.extend(addrs.map(|a| IpNet::from(a.ip())));
        }
    }
    Ok(out)
}

/// Whether `ip` is inside the allow-list (IPv4-mapped IPv6 as IPv4).
fn allowed(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    list.iter().any(|n| n.contains(&ip))
}

/// Delivery counters (per subscriber and for the module).
#[derive(Debug, Default)]
pub struct Counters {
    /// Events written to the connection.
    pub sent: AtomicU64,
    /// sync_mode: replies received (success).
    pub replied: AtomicU64,
    /// sync_mode: replies carrying an `error`.
    pub errors: AtomicU64,
    /// sync_mode: no reply within `timeout`.
    pub timeouts: AtomicU64,
    /// Could not be sent: connection refused or broken, or too old to send.
    pub failed: AtomicU64,
    /// Dropped because the destination's queue was full.
    pub dropped: AtomicU64,
    /// Not confirmed, whatever the reason (errors, timeouts, failed,
    /// dropped): what event_virtual fails over on.
    pub unconfirmed: AtomicU64,
}

impl Counters {
    fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "sent": g(&self.sent), "replied": g(&self.replied), "errors": g(&self.errors),
            "timeouts": g(&self.timeouts), "failed": g(&self.failed), "dropped": g(&self.dropped),
            "unconfirmed": g(&self.unconfirmed),
        })
    }
}

/// Bumps a counter of the subscriber and of the module.
pub(crate) fn bump(pair: &[Arc<Counters>; 2], f: fn(&Counters) -> &AtomicU64) {
    for c in pair {
        f(c).fetch_add(1, Ordering::Relaxed);
    }
}

/// Ends a delivery: bumps `f` (and `unconfirmed` for anything but a
/// confirmation) and tells whoever waits for the outcome.
pub(crate) fn settle(
    pair: &[Arc<Counters>; 2],
    f: fn(&Counters) -> &AtomicU64,
    done: Option<OnOutcome>,
    outcome: Outcome,
) {
    bump(pair, f);
    if outcome != Outcome::Confirmed {
        bump(pair, |c| &c.unconfirmed);
    }
    if let Some(done) = done {
        done(outcome);
    }
}

/// One event on its way to a destination.
pub(crate) struct Job {
    pub(crate) event: Arc<Event>,
    pub(crate) method: Option<Arc<str>>,
    pub(crate) counters: [Arc<Counters>; 2],
    pub(crate) queued: Instant,
    /// Told how the delivery ended (event_virtual).
    pub(crate) done: Option<OnOutcome>,
}

/// `jsonrpc:host:port[/method]` → address and method.
pub fn parse_target(target: &str) -> Result<(SocketAddr, Option<String>), String> {
    let (hostport, method) = match target.split_once('/') {
        Some((h, m)) if !m.is_empty() => (h, Some(m.to_string())),
        Some((h, _)) => (h, None),
        None => (target, None),
    };
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("`{target}`: expected host:port[/method]"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{target}`: bad port `{port}`"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{target}`: no host"));
    }
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{host}`: {e}"))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| format!("`{host}`: no address"))?;
    Ok((addr, method))
}

struct Subscriber {
    queue: tokio::sync::mpsc::Sender<Job>,
    method: Option<Arc<str>>,
    counters: [Arc<Counters>; 2],
}

impl Subscriber {
    fn queue(&self, event: &Arc<Event>, done: Option<OnOutcome>) -> bool {
        let job = Job {
            event: event.clone(),
            method: self.method.clone(),
            counters: self.counters.clone(),
            queued: Instant::now(),
            done,
        };
        match self.queue.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                let mut job = e.into_inner();
                let done = job.done.take();
                settle(
                    &job.counters,
                    |c| &c.dropped,
                    done,
                    Outcome::Unconfirmed("dropped"),
                );
                let n = job.counters[0].dropped.load(Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        "event_jsonrpc: queue full, {} dropped for this subscriber so far",
                        n
                    );
                }
                false
            }
        }
    }
}

impl EventSubscriber for Subscriber {
    fn deliver(&self, event: &Arc<Event>) -> bool {
        self.queue(event, None)
    }
    /// Confirmed by the reply in sync_mode, by the write otherwise.
    fn deliver_then(&self, event: &Arc<Event>, done: OnOutcome) -> bool {
        self.queue(event, Some(done))
    }
    fn stats(&self) -> Value {
        self.counters[0].json()
    }
}

struct Transport {
    cfg: Arc<Config>,
    dests: Mutex<HashMap<SocketAddr, tokio::sync::mpsc::Sender<Job>>>,
    totals: Arc<Counters>,
}

impl EventTransport for Transport {
    fn proto(&self) -> &'static str {
        "jsonrpc"
    }
    fn admit(&self, target: &str, _: &Evi) -> Result<(), String> {
        let (addr, _) = parse_target(target)?;
        if allowed(&self.cfg.allowed, addr.ip()) {
            return Ok(());
        }
        Err(format!(
            "{} is not in event_jsonrpc's allowed_subscribers",
            addr.ip()
        ))
    }
    fn subscriber(&self, target: &str, _: &Evi) -> Result<Arc<dyn EventSubscriber>, String> {
        let (addr, method) = parse_target(target)?;
        let queue = {
            let mut dests = self.dests.lock().map_err(|_| "poisoned".to_string())?;
            match dests.get(&addr).filter(|q| !q.is_closed()) {
                Some(q) => q.clone(),
                None => {
                    let handle = tokio::runtime::Handle::try_current()
                        .map_err(|_| "subscriptions start once the server runs".to_string())?;
                    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
                    handle.spawn(sender::run(addr, rx, self.cfg.clone()));
                    dests.insert(addr, tx.clone());
                    tx
                }
            }
        };
        Ok(Arc::new(Subscriber {
            queue,
            method: method.map(Arc::from),
            counters: [Arc::new(Counters::default()), self.totals.clone()],
        }))
    }
}

struct Stats(Arc<Counters>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        let c = &self.0;
        vec![
            ("event_jsonrpc:sent".into(), g(&c.sent)),
            ("event_jsonrpc:replied".into(), g(&c.replied)),
            ("event_jsonrpc:errors".into(), g(&c.errors)),
            ("event_jsonrpc:timeouts".into(), g(&c.timeouts)),
            ("event_jsonrpc:failed".into(), g(&c.failed)),
            ("event_jsonrpc:dropped".into(), g(&c.dropped)),
            ("event_jsonrpc:unconfirmed".into(), g(&c.unconfirmed)),
        ]
    }
    fn reset(&self, name: &str) {
        let c = &self.0;
        let f = match name {
            "event_jsonrpc:sent" => &c.sent,
            "event_jsonrpc:replied" => &c.replied,
            "event_jsonrpc:errors" => &c.errors,
            "event_jsonrpc:timeouts" => &c.timeouts,
            "event_jsonrpc:failed" => &c.failed,
            "event_jsonrpc:dropped" => &c.dropped,
            "event_jsonrpc:unconfirmed" => &c.unconfirmed,
            _ => return,
        };
        f.store(0, Ordering::Relaxed);
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "event_jsonrpc",
        params: vec![
            ParamSpec::int("sync_mode"),
            ParamSpec::int("timeout"),
            ParamSpec::str("event_param"),
            ParamSpec::str("allowed_subscribers").multi(),
        ],
        instantiate: Arc::new(|cfg| {
            let timeout = cfg.int("timeout").unwrap_or(1000);
            if timeout <= 0 {
                return Err(format!(
                    "timeout must be a positive number of milliseconds, found {timeout}"
                ));
            }
            let given: Vec<String> = cfg
                .all("allowed_subscribers")
                .iter()
                .map(|v| match v {
                    siphon_script::api::ParamValue::Str(s) => s.clone(),
                    siphon_script::api::ParamValue::Int(n) => n.to_string(),
                })
                .collect();
            let allowed = if given.is_empty() {
                parse_allowed([DEFAULT_ALLOWED])?
            } else {
                parse_allowed(given.iter().map(String::as_str))?
            };
            let cfg = Config {
                allowed,
                sync: cfg.int("sync_mode").unwrap_or(0) != 0,
                timeout: Duration::from_millis(timeout as u64),
                event_param: cfg.str("event_param").filter(|s| !s.is_empty()),
            };
            let totals = Arc::new(Counters::default());
            Ok(Arc::new(TransportModule {
                transport: Arc::new(Transport {
                    cfg: Arc::new(cfg),
                    dests: Mutex::new(HashMap::new()),
                    totals: totals.clone(),
                }),
                stats: Arc::new(Stats(totals)),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let (a, m) = parse_target("127.0.0.1:8080/block_ip").unwrap();
        assert_eq!(
            (a.to_string().as_str(), m.as_deref()),
            ("127.0.0.1:8080", Some("block_ip"))
        );
        let (a, m) = parse_target("127.0.0.1:8080").unwrap();
        assert_eq!((a.port(), m), (8080, None));
        let (a, _) = parse_target("[::1]:9").unwrap();
        assert!(a.is_ipv6());
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target("127.0.0.1:0").is_err());
        assert!(parse_target(":80").is_err());
        assert!(parse_target("127.0.0.1:x").is_err());
    }

    #[test]
    fn allow_lists() {
        let def = parse_allowed([DEFAULT_ALLOWED]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allowed(&def, ip("127.0.0.1")));
        assert!(allowed(&def, ip("127.9.9.9")));
        assert!(allowed(&def, ip("::1")));
        assert!(allowed(&def, ip("::ffff:127.0.0.1")));
        assert!(!allowed(&def, ip("10.0.0.1")));
        assert!(!allowed(&def, ip("169.254.169.254")));
        let l = parse_allowed(["10.1.0.0/16 192.0.2.7,[2001:db8::1]", "localhost"]).unwrap();
        assert!(allowed(&l, ip("10.1.200.3")));
        assert!(!allowed(&l, ip("10.2.0.1")));
        assert!(allowed(&l, ip("192.0.2.7")));
        assert!(allowed(&l, ip("2001:db8::1")));
        assert!(allowed(&l, ip("127.0.0.1")), "localhost resolved");
        let any = parse_allowed(["any"]).unwrap();
        assert!(allowed(&any, ip("203.0.113.9")) && allowed(&any, ip("2001:db8::9")));
        assert!(parse_allowed(["10.0.0.0/99"]).is_err());
        assert!(parse_allowed(["no-such-host.invalid"]).is_err());
    }
}
