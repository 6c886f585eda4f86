//! Locating SIP servers (RFC 3263 §4) as Kamailio's core does with its
//! defaults: NAPTR off, so the transport comes from the URI, never from DNS.
//!
//! The decisions are pure and tested here: which transport a URI asks for
//! ([`Destination::from_uri`]), what to look up ([`Destination::plan`]), the
//! order of SRV records ([`order_srv`]) and of the addresses of one name
//! ([`addresses`]). [`Resolver`] performs the lookups over hickory-resolver
//! (async, on the tokio runtime, with hickory's cache) and returns every
//! candidate in order, so `use_dns_failover` can walk the list.
//!
//! Kamailio's rules (`core/dns_cache.c` `dns_srv_sip_resolvehost`,
//! `dns_ip_resolve`, `dns_srv_get_nxt_rr`; `core/forward.h` `uri2dst`):
//! - an IP literal is used as it is, on the URI's port or 5060 (5061 for TLS);
//! - a name with a port: its A records, then its AAAA records when
//!   `dns_try_ipv6` is on;
//! - a name without a port: SRV `_sip._udp.`, `_sip._tcp.` or `_sips._tcp.`
//!   (TLS) by the transport; each target's A then AAAA records on the SRV
//!   port; when there is no SRV record (or none of its targets resolves), the
//!   name's own A/AAAA records on 5060 (5061 for TLS);
//! - SRV records by priority ascending; inside a priority by weight, heaviest
//!   first (deterministic), or RFC 2782 weighted random with `dns_srv_lb`.

use crate::transport::Transport;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ServerOrderingStrategy};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The port of a name without SRV records, or of an IP literal without port.
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => 5061,
        Transport::Udp | Transport::Tcp => 5060,
    }
}

/// One place a request can be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The transport to send it over.
    pub transport: Transport,
    /// Where.
    pub addr: SocketAddr,
}

/// Why a destination could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The URI could not be read (Kamailio: `E_BAD_ADDRESS`, 478 from t_relay).
    #[error("bad URI: {0}")]
    BadUri(String),
    /// `transport=` names what siphon does not speak (`sctp`, `ws`, …), or a
    /// `sips:` URI asks for UDP.
    #[error("unsupported transport: {0}")]
    BadTransport(String),
    /// The name does not exist (NXDOMAIN).
    #[error("no such name: {0}")]
    NoSuchName(String),
    /// The name exists but has no usable address.
    #[error("no address records for {0}")]
    NoRecords(String),
    /// No answer in time.
    #[error("DNS timeout resolving {0}")]
    Timeout(String),
    /// Any other failure of the lookup (server failure, refused, I/O).
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        reason: String,
    },
    /// The resolver could not be built (no `dns_server` and no usable
    /// `/etc/resolv.conf`).
    #[error("DNS resolver configuration: {0}")]
    Config(String),
}

/// The host of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal: no lookup.
    Ip(IpAddr),
    /// A DNS name, as written (a trailing dot makes it absolute).
    Name(String),
}

/// What a request is sent to before resolution: host, port, transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Name or address.
    pub host: Host,
    /// The explicit port; `None` (or 0, as Kamailio reads it) asks for SRV.
    pub port: Option<u16>,
    /// The transport, from `transport=`, the scheme or a forcing function.
    pub transport: Transport,
}

impl Destination {
    /// A destination from its parts (`t_relay(host, port)`, `$du` set by a
    /// module). `host` may be a bracketed IPv6 literal.
    pub fn new(host: &str, port: Option<u16>, transport: Transport) -> Result<Self, DnsError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = if let Ok(ip) = bare.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if bare.is_empty() || bare.contains([':', '[', ']', '/', ' ', '@']) {
            return Err(DnsError::BadUri(format!("`{host}` is not a host")));
        } else {
            Host::Name(bare.to_string())
        };
        Ok(Destination {
            host,
            port: port.filter(|&p| p != 0),
            transport,
        })
    }

    /// Reads a `sip:`/`sips:` URI. The transport is `force` when given (the
    /// `t_relay_to_*` functions), else `;transport=`, else TLS for `sips:`,
    /// else UDP. `sips:` with `transport=tcp` is TLS; with `transport=udp` it
    /// is refused, as Kamailio does.
    pub fn from_uri(uri: &[u8], force: Option<Transport>) -> Result<Self, DnsError> {
        let bad = |e: &dyn std::fmt::Display| {
            DnsError::BadUri(format!("{e}: {}", String::from_utf8_lossy(uri)))
        };
        let u = siphon_sip::parse_uri(uri).map_err(|e| bad(&e))?;
        if u.host.is_empty() {
            return Err(bad(&"no host"));
        }
        let sips = u.scheme.eq_ignore_ascii_case(b"sips");
        let param = match u.param(b"transport") {
            None => None,
            Some(t) if t.eq_ignore_ascii_case(b"udp") => Some(Transport::Udp),
            Some(t) if t.eq_ignore_ascii_case(b"tcp") => Some(Transport::Tcp),
            Some(t) if t.eq_ignore_ascii_case(b"tls") => Some(Transport::Tls),
            Some(t) => {
                return Err(DnsError::BadTransport(
                    String::from_utf8_lossy(t).into_owned(),
                ));
            }
        };
        let transport = match (force, sips, param) {
            (Some(f), _, _) => f,
            (None, true, Some(Transport::Udp)) => {
                return Err(DnsError::BadTransport("udp in a sips: URI".into()));
            }
            (None, true, _) => Transport::Tls,
            (None, false, p) => p.unwrap_or(Transport::Udp),
        };
        let host = std::str::from_utf8(u.host).map_err(|_| bad(&"host is not UTF-8"))?;
        Destination::new(host, u.port, transport)
    }

    /// What to look up (RFC 3263 §4.2 without NAPTR).
    pub fn plan(&self) -> Plan {
        let transport = self.transport;
        match (&self.host, self.port) {
            (Host::Ip(ip), port) => Plan::Literal(Target {
                transport,
                addr: SocketAddr::new(*ip, port.unwrap_or(default_port(transport))),
            }),
            (Host::Name(name), Some(port)) => Plan::Address {
                name: name.clone(),
                port,
                transport,
            },
            (Host::Name(name), None) => Plan::Srv {
                srv_name: format!("{}{name}", srv_prefix(transport)),
                name: name.clone(),
                fallback_port: default_port(transport),
                transport,
            },
        }
    }
}

/// The SRV service and protocol labels for a transport.
pub fn srv_prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "_sip._udp.",
        Transport::Tcp => "_sip._tcp.",
        Transport::Tls => "_sips._tcp.",
    }
}

/// The lookups a destination needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// An IP literal: nothing to look up.
    Literal(Target),
    /// A name with a port: its A (then AAAA) records.
    Address {
        /// The name.
        name: String,
        /// The port every address gets.
        port: u16,
        /// The transport every target gets.
        transport: Transport,
    },
    /// A name without a port: SRV first, the name's own addresses if that
    /// gives nothing.
    Srv {
        /// `_sip._udp.<name>` and so on.
        srv_name: String,
        /// The name itself, for the fallback.
        name: String,
        /// The fallback's port: 5060, 5061 for TLS.
        fallback_port: u16,
        /// The transport every target gets.
        transport: Transport,
    },
}

/// One SRV record, as far as SIP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Share inside a priority.
    pub weight: u16,
    /// The port of the target.
    pub port: u16,
    /// The target's name.
    pub target: String,
}

/// Orders SRV records for trying: priority ascending; inside a priority by
/// weight, heaviest first, ties in answer order (Kamailio's default), or, when
/// `weighted_random` (`dns_srv_lb`), by RFC 2782's selection: zero-weight
/// records first, a running sum, a random number `r` in `0..=sum` from
/// `random(sum)`, the first record whose running sum reaches `r`; repeated
/// without it until the priority is exhausted.
pub fn order_srv(
    mut records: Vec<SrvRecord>,
    weighted_random: bool,
    random: &mut dyn FnMut(u32) -> u32,
) -> Vec<SrvRecord> {
    if !weighted_random {
        records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        return records;
    }
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let mut group = vec![first];
        while let Some(r) = rest.next_if(|r| r.priority == group[0].priority) {
            group.push(r);
        }
        // Zero weights first, the others in answer order (a stable sort).
        group.sort_by_key(|r| r.weight != 0);
        while group.len() > 1 {
            let sum: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(sum).min(sum);
            let mut running = 0u32;
            let i = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
        out.append(&mut group);
    }
    out
}

/// The targets of one name's addresses: every A record, then every AAAA
/// record when `try_ipv6` (Kamailio walks A first, then AAAA, on failover).
pub fn addresses(
    v4: &[Ipv4Addr],
    v6: &[Ipv6Addr],
    port: u16,
    transport: Transport,
    try_ipv6: bool,
) -> Vec<Target> {
    let v6 = if try_ipv6 { v6 } else { &[] };
    v4.iter()
        .map(|&ip| IpAddr::V4(ip))
        .chain(v6.iter().map(|&ip| IpAddr::V6(ip)))
        .map(|ip| Target {
            transport,
            addr: SocketAddr::new(ip, port),
        })
        .collect()
}

/// The resolver's settings, from the core parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// `dns_server`: servers asked in this order; empty: `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// `dns_try_ipv6`: AAAA records are used (after the A records).
    pub try_ipv6: bool,
    /// `use_dns_failover`: the transaction layer tries the next target on
    /// timeout, 503 or connection failure. Only carried here.
    pub failover: bool,
    /// `dns_srv_lb`: RFC 2782 weighted random order inside an SRV priority.
    pub srv_lb: bool,
    /// The longest one [`Resolver::resolve`] may take, all its queries
    /// together; each query gets half of it, so one retry fits.
    pub timeout: Duration,
    /// Answers kept by hickory's cache (within their TTL).
    pub cache_size: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: vec![],
            try_ipv6: true,
            failover: false,
            srv_lb: false,
            timeout: Duration::from_secs(5),
            cache_size: 1024,
        }
    }
}

impl DnsConfig {
    /// From the core parameters. `ipv6_listener`: whether siphon listens on
    /// an IPv6 address; without one Kamailio turns `dns_try_ipv6` off at
    /// start (an IPv6 peer could not be reached), and so does this.
    pub fn from_params(p: &siphon_script::core::CoreParams, ipv6_listener: bool) -> Self {
        DnsConfig {
            servers: p.dns_server.clone(),
            try_ipv6: p.dns_try_ipv6 && ipv6_listener,
            failover: p.use_dns_failover,
            srv_lb: p.dns_srv_lb,
            ..DnsConfig::default()
        }
    }
}

/// Resolves SIP destinations to ordered targets; cheap to clone (shared
/// cache and connections).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    config: std::sync::Arc<DnsConfig>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How one query ended, for choosing the error when nothing resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    /// Answered, no record of the type.
    Empty,
    /// Failed otherwise.
    Failed,
    /// No answer in time.
    Timeout,
    /// NXDOMAIN: the name does not exist, whatever the type.
    NoName,
}

/// The addresses of one name, or why there are none.
struct Addrs {
    name: String,
    targets: Vec<Target>,
    /// The most telling failure of its queries, and what the resolver said.
    miss: Option<(Miss, String)>,
}

impl Resolver {
    /// Builds the resolver. Needs no runtime; lookups run on the caller's.
    pub fn new(config: DnsConfig) -> Result<Self, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| DnsError::Config(format!("reading /etc/resolv.conf: {e}")))?
        } else {
            let mut rc = ResolverConfig::default();
            for s in &config.servers {
                let mut ns = hickory_resolver::config::NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                rc.add_name_server(ns);
            }
            TokioResolver::builder_with_config(rc, provider)
        };
        let opts = builder.options_mut();
        opts.timeout = (config.timeout / 2).max(Duration::from_millis(10));
        opts.cache_size = config.cache_size;
        opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        let inner = builder
            .build()
            .map_err(|e| DnsError::Config(e.to_string()))?;
        Ok(Resolver {
            inner,
            config: std::sync::Arc::new(config),
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Every target for a URI, in the order to try them.
    pub async fn resolve(&self, uri: &[u8]) -> Result<Vec<Target>, DnsError> {
        self.resolve_destination(&Destination::from_uri(uri, None)?)
            .await
    }

    /// Every target for a destination, in the order to try them; never
    /// empty on success.
    pub async fn resolve_destination(&self, d: &Destination) -> Result<Vec<Target>, DnsError> {
        let plan = d.plan();
        let shown = match &plan {
            Plan::Literal(t) => return Ok(vec![*t]),
            Plan::Address { name, .. } | Plan::Srv { name, .. } => name.clone(),
        };
        match tokio::time::timeout(self.config.timeout, self.run(plan)).await {
            Ok(r) => r,
            Err(_) => Err(DnsError::Timeout(shown)),
        }
    }

    async fn run(&self, plan: Plan) -> Result<Vec<Target>, DnsError> {
        match plan {
            Plan::Literal(t) => Ok(vec![t]),
            Plan::Address {
                name,
                port,
                transport,
            } => finish(self.addresses(name, port, transport).await),
            Plan::Srv {
                srv_name,
                name,
                fallback_port,
                transport,
            } => {
                let found = self.srv_targets(&srv_name, transport).await;
                if !found.is_empty() {
                    return Ok(found);
                }
                tracing::debug!(%srv_name, "no usable SRV record, A/AAAA of {name}");
                finish(self.addresses(name, fallback_port, transport).await)
            }
        }
    }

    /// SRV records of `srv_name`, ordered, each target's addresses in turn;
    /// empty when there is none or nothing resolved.
    async fn srv_targets(&self, srv_name: &str, transport: Transport) -> Vec<Target> {
        let records: Vec<SrvRecord> = match self.inner.srv_lookup(srv_name).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(SrvRecord {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii(),
                    }),
                    _ => None,
                })
                // RFC 2782: a target of "." means no service here.
                .filter(|r| r.target != "." && !r.target.is_empty())
                .collect(),
            Err(e) => {
                tracing::debug!(%srv_name, "SRV lookup: {e}");
                return vec![];
            }
        };
        let ordered = order_srv(records, self.config.srv_lb, &mut random_upto);
        // Every target's addresses at once; the order is the SRV order.
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in ordered.into_iter().enumerate() {
            let me = self.clone();
            set.spawn(async move { (i, me.addresses(r.target, r.port, transport).await) });
        }
        let mut per_target: Vec<(usize, Vec<Target>)> = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok((i, a)) = done {
                if let (true, Some((_, why))) = (a.targets.is_empty(), &a.miss) {
                    tracing::debug!(%srv_name, target = %a.name, "SRV target: {why}");
                }
                per_target.push((i, a.targets));
            }
        }
        per_target.sort_by_key(|(i, _)| *i);
        per_target.into_iter().flat_map(|(_, t)| t).collect()
    }

    /// A (and AAAA when `try_ipv6`) records of `name` on `port`.
    async fn addresses(&self, name: String, port: u16, transport: Transport) -> Addrs {
        let v4 = self.inner.ipv4_lookup(name.as_str());
        let (v4, v6) = if self.config.try_ipv6 {
            let (a, b) = tokio::join!(v4, self.inner.ipv6_lookup(name.as_str()));
            (a, Some(b))
        } else {
            (v4.await, None)
        };
        let mut miss: Option<(Miss, String)> = None;
        let mut note = |e: &NetError, rtype: RecordType| {
            let m = if e.is_nx_domain() {
                Miss::NoName
            } else if e.is_no_records_found() {
                Miss::Empty
            } else if matches!(e, NetError::Timeout) {
                Miss::Timeout
            } else {
                Miss::Failed
            };
            if miss.as_ref().is_none_or(|(old, _)| m > *old) {
                miss = Some((m, format!("{rtype}: {e}")));
            }
        };
        let mut a4 = vec![];
        match v4 {
            Ok(l) => a4.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })),
            Err(e) => note(&e, RecordType::A),
        }
        let mut a6 = vec![];
        match v6 {
            Some(Ok(l)) => a6.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })),
            Some(Err(e)) => note(&e, RecordType::AAAA),
            None => {}
        }
        let targets = addresses(&a4, &a6, port, transport, self.config.try_ipv6);
        Addrs {
            name,
            targets,
            miss,
        }
    }
}

/// The targets, or the error that says most about why there are none.
fn finish(a: Addrs) -> Result<Vec<Target>, DnsError> {
    if !a.targets.is_empty() {
        return Ok(a.targets);
    }
    let name = a.name;
    Err(match a.miss {
        None | Some((Miss::Empty, _)) => DnsError::NoRecords(name),
        Some((Miss::NoName, _)) => DnsError::NoSuchName(name),
        Some((Miss::Timeout, _)) => DnsError::Timeout(name),
        Some((Miss::Failed, reason)) => DnsError::Lookup { name, reason },
    })
}

/// A random number in `0..=max` for RFC 2782 selection; load balancing needs
/// no cryptographic quality, std's per-process random hash keys are enough.
fn random_upto(max: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() % (u64::from(max) + 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(uri: &str) -> Destination {
        Destination::from_uri(uri.as_bytes(), None).unwrap()
    }

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    fn names(v: &[SrvRecord]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn transport_from_param_scheme_or_force() {
        assert_eq!(dest("sip:a@example.com").transport, Transport::Udp);
        assert_eq!(
            dest("sip:example.com;transport=TCP").transport,
            Transport::Tcp
        );
        assert_eq!(
            dest("sip:example.com;lr;transport=tls").transport,
            Transport::Tls
        );
        assert_eq!(dest("sips:example.com").transport, Transport::Tls);
        assert_eq!(
            dest("sips:example.com;transport=tcp").transport,
            Transport::Tls
        );
        assert!(matches!(
            Destination::from_uri(b"sips:example.com;transport=udp", None),
            Err(DnsError::BadTransport(_))
        ));
        assert!(matches!(
            Destination::from_uri(b"sip:example.com;transport=sctp", None),
            Err(DnsError::BadTransport(t)) if t == "sctp"
        ));
        let forced = Destination::from_uri(b"sip:example.com;transport=udp", Some(Transport::Tcp));
        assert_eq!(forced.unwrap().transport, Transport::Tcp);
        assert!(matches!(
            Destination::from_uri(b"http://x", None),
            Err(DnsError::BadUri(_))
        ));
        assert!(matches!(
            Destination::from_uri(b"tel:+123", None),
            Err(DnsError::BadUri(_))
        ));
    }

    #[test]
    fn ip_literal_is_used_as_is() {
        let t = |uri: &str| match dest(uri).plan() {
            Plan::Literal(t) => (t.transport, t.addr.to_string()),
            p => panic!("{uri}: {p:?}"),
        };
        assert_eq!(
            t("sip:bob@127.0.0.2"),
            (Transport::Udp, "127.0.0.2:5060".into())
        );
        assert_eq!(
            t("sip:127.0.0.2:5070;transport=tcp"),
            (Transport::Tcp, "127.0.0.2:5070".into())
        );
        assert_eq!(t("sips:[::1]"), (Transport::Tls, "[::1]:5061".into()));
        assert_eq!(t("sip:[::1]:5080"), (Transport::Udp, "[::1]:5080".into()));
        let d = Destination::new("[::1]", Some(5090), Transport::Tcp).unwrap();
        assert_eq!(d.host, Host::Ip("::1".parse().unwrap()));
    }

    #[test]
    fn name_with_port_is_a_and_aaaa_only() {
        assert_eq!(
            dest("sip:bob@sip.test:5070;transport=tcp").plan(),
            Plan::Address {
                name: "sip.test".into(),
                port: 5070,
                transport: Transport::Tcp
            }
        );
    }

    #[test]
    fn name_without_port_is_srv_by_transport() {
        let p = |uri: &str| match dest(uri).plan() {
            Plan::Srv {
                srv_name,
                fallback_port,
                ..
            } => (srv_name, fallback_port),
            p => panic!("{uri}: {p:?}"),
        };
        assert_eq!(p("sip:sip.test"), ("_sip._udp.sip.test".into(), 5060));
        assert_eq!(
            p("sip:sip.test;transport=tcp"),
            ("_sip._tcp.sip.test".into(), 5060)
        );
        assert_eq!(
            p("sip:sip.test;transport=tls"),
            ("_sips._tcp.sip.test".into(), 5061)
        );
        assert_eq!(
            p("sips:bob@sip.test."),
            ("_sips._tcp.sip.test.".into(), 5061)
        );
        // Port 0 reads as no port, as in Kamailio.
        assert_eq!(p("sip:sip.test:0"), ("_sip._udp.sip.test".into(), 5060));
    }

    #[test]
    fn srv_default_order_is_priority_then_heaviest() {
        let recs = vec![
            srv(20, 100, "p20"),
            srv(10, 5, "light"),
            srv(10, 50, "heavy"),
            srv(10, 5, "light2"),
            srv(5, 0, "first"),
        ];
        let mut never = |_: u32| -> u32 { panic!("no random number in the default order") };
        let o = order_srv(recs, false, &mut never);
        assert_eq!(names(&o), ["first", "heavy", "light", "light2", "p20"]);
    }

    #[test]
    fn srv_weighted_random_follows_rfc_2782() {
        // One priority, weights 0, 10, 30 (zero weight placed first):
        // running sums 0, 10, 40.
        let recs = || {
            vec![
                srv(10, 10, "w10"),
                srv(10, 30, "w30"),
                srv(10, 0, "w0"),
                srv(1, 0, "top"),
            ]
        };
        // The numbers drawn, and the sum each was drawn against.
        let run = |draws: &[u32]| {
            let mut it = draws.iter().copied();
            let mut sums = vec![];
            let o = order_srv(recs(), true, &mut |max| {
                sums.push(max);
                it.next().unwrap()
            });
            (names(&o).join(","), sums)
        };
        // A record alone in its priority needs no draw. r = 0 picks the
        // zero-weight record; then r = 11 over sums (10, 40) → w30.
        assert_eq!(run(&[0, 11]), ("top,w0,w30,w10".into(), vec![40, 40]));
        // r = 10 reaches w10's running sum exactly; then 0 over (0, 30) → w0.
        assert_eq!(run(&[10, 0]), ("top,w10,w0,w30".into(), vec![40, 30]));
        // r = 40 → w30; then 1 over (0, 10) → w10; w0 last.
        assert_eq!(run(&[40, 1]), ("top,w30,w10,w0".into(), vec![40, 10]));
        // A random source above the sum is clamped, not a panic.
        assert_eq!(run(&[99, 99]).0, "top,w30,w10,w0");
    }

    #[test]
    fn ipv4_first_ipv6_only_when_on() {
        let v4 = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let v6 = ["::1".parse().unwrap()];
        let on = addresses(&v4, &v6, 5070, Transport::Tcp, true);
        let shown: Vec<String> = on.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(shown, ["127.0.0.2:5070", "127.0.0.3:5070", "[::1]:5070"]);
        assert!(on.iter().all(|t| t.transport == Transport::Tcp));
        let off = addresses(&v4, &v6, 5070, Transport::Tcp, false);
        assert_eq!(off.len(), 2);
        assert!(addresses(&[], &v6, 5060, Transport::Udp, false).is_empty());
        assert_eq!(addresses(&[], &v6, 5060, Transport::Udp, true).len(), 1);
    }

    #[test]
    fn config_from_params() {
        let mut p = siphon_script::core::CoreParams::default();
        let d = DnsConfig::from_params(&p, true);
        assert!(d.try_ipv6 && !d.failover && !d.srv_lb && d.servers.is_empty());
        // Kamailio turns dns_try_ipv6 off when nothing listens on IPv6.
        assert!(!DnsConfig::from_params(&p, false).try_ipv6);
        p.dns_server = vec!["127.0.0.1:5353".parse().unwrap()];
        p.use_dns_failover = true;
        p.dns_srv_lb = true;
        let d = DnsConfig::from_params(&p, true);
        assert_eq!(d.servers, p.dns_server);
        assert!(d.failover && d.srv_lb);
    }

    #[test]
    fn resolver_builds_outside_a_runtime() {
        let cfg = DnsConfig {
            servers: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ],
            ..DnsConfig::default()
        };
        let r = Resolver::new(cfg.clone()).unwrap();
        assert_eq!(r.config(), &cfg);
    }

    #[test]
    fn random_stays_in_range() {
        assert_eq!(random_upto(0), 0);
        assert!((0..200).all(|_| random_upto(3) <= 3));
    }
}
