//! `siphon_core::dns::Resolver` against a real DNS server on loopback: the
//! PyPI package dnslib serving a small zone (scripts/install-test-peers.sh
//! installs it), siphon pointed at it with the `dns_server` core parameter.

use siphon_cfg::PreOptions;
use siphon_core::Transport;
use siphon_core::dns::{DnsConfig, DnsError, Resolver, Target};
use siphon_script::Registry;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Answers from the zone: NXDOMAIN for a name it does not hold, an empty
/// NOERROR for a type the name lacks. Prints its port, serves until stdin
/// closes (when the test process ends).
const SERVER: &str = r#"
import sys
from dnslib import RR, RCODE
from dnslib.server import DNSServer, BaseResolver, DNSLogger

class Zone(BaseResolver):
    def __init__(self, text):
        self.rrs = RR.fromZone(text)
    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        known = False
        for rr in self.rrs:
            if rr.rname == q.qname:
                known = True
                if rr.rtype == q.qtype:
                    reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

server = DNSServer(Zone(sys.argv[1]), address="127.0.0.1", port=0,
                   logger=DNSLogger(logf=lambda s: None))
server.start_thread()
print(server.server.server_address[1], flush=True)
sys.stdin.read()
"#;

/// `_sip._udp.sip.test`: priority 5 (an IPv6-only target) before priority
/// 10, where weight 60 goes before weight 10 by default.
const ZONE: &str = "
_sip._udp.sip.test.  60 IN SRV 10 10 5070 b.sip.test.
_sip._udp.sip.test.  60 IN SRV 10 60 5080 c.sip.test.
_sip._udp.sip.test.  60 IN SRV 5 0 5090 six.sip.test.
_sip._tcp.sip.test.  60 IN SRV 0 0 5072 b.sip.test.
_sips._tcp.sip.test. 60 IN SRV 0 0 5061 c.sip.test.
sip.test.            60 IN A 127.0.0.4
b.sip.test.          60 IN A 127.0.0.2
c.sip.test.          60 IN A 127.0.0.3
c.sip.test.          60 IN AAAA ::1
six.sip.test.        60 IN AAAA ::1
plain.test.          60 IN A 127.0.0.2
plain.test.          60 IN AAAA ::1
noaddr.test.         60 IN TXT \"no address here\"
";

/// The dnslib server; killed when dropped.
struct DnsServer {
    child: Child,
    addr: SocketAddr,
}

impl DnsServer {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["-c", SERVER, ZONE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/install-test-peers.sh installs the test peers)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the dnslib server did not start (is dnslib installed? scripts/install-test-peers.sh)")
        });
        DnsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resolver a configuration with these core parameters builds.
fn resolver_from_cfg(globals: &str) -> Resolver {
    let cfg = format!("{globals}\nrequest_route {{ exit; }}\n");
    let loaded = siphon_script::load_str("dns.cfg", &cfg, &PreOptions::default(), &Registry::new());
    let program = loaded.program.unwrap_or_else(|| {
        panic!(
            "{}",
            siphon_cfg::diag::render_all(&loaded.diags, &loaded.sources)
        )
    });
    Resolver::new(DnsConfig::from_params(&program.core, true)).unwrap()
}

fn shown(targets: &[Target]) -> Vec<String> {
    targets
        .iter()
        .map(|t| format!("{}:{}", t.transport.name(), t.addr))
        .collect()
}

#[tokio::test]
async fn srv_then_addresses_in_order() {
    let dns = DnsServer::start();
    let r = resolver_from_cfg(&format!("dns_server = \"{}\"", dns.addr));
    assert!(r.config().try_ipv6 && !r.config().srv_lb);
    let t = r.resolve(b"sip:bob@sip.test").await.unwrap();
    assert_eq!(
        shown(&t),
        [
            "udp:[::1]:5090",
            "udp:127.0.0.3:5080",
            "udp:[::1]:5080",
            "udp:127.0.0.2:5070"
        ]
    );
    // The transport picks the SRV name and travels with every target.
    let t = r.resolve(b"sip:sip.test;transport=tcp").await.unwrap();
    assert_eq!(shown(&t), ["tcp:127.0.0.2:5072"]);
    let t = r.resolve(b"sips:alice@sip.test").await.unwrap();
    assert_eq!(shown(&t), ["tls:127.0.0.3:5061", "tls:[::1]:5061"]);
    // An explicit port skips SRV: the name's own A record.
    let t = r.resolve(b"sip:bob@sip.test:5099").await.unwrap();
    assert_eq!(shown(&t), ["udp:127.0.0.4:5099"]);
    // An IP literal needs no lookup.
    let t = r.resolve(b"sip:127.0.0.9;transport=tcp").await.unwrap();
    assert_eq!(
        t,
        [Target {
            transport: Transport::Tcp,
            addr: "127.0.0.9:5060".parse().unwrap()
        }]
    );
}

#[tokio::test]
async fn ipv6_off_skips_aaaa() {
    let dns = DnsServer::start();
    let r = resolver_from_cfg(&format!("dns_server = \"{}\"\ndns_try_ipv6 = 0", dns.addr));
    let t = r.resolve(b"sip:bob@sip.test").await.unwrap();
    // six.sip.test has only AAAA: skipped.
    assert_eq!(shown(&t), ["udp:127.0.0.3:5080", "udp:127.0.0.2:5070"]);
    // dns_srv_lb: weighted random inside the priority, the same targets.
    let r = resolver_from_cfg(&format!(
        "dns_server = \"{}\"\ndns_try_ipv6 = 0\ndns_srv_lb = 1",
        dns.addr
    ));
    assert!(r.config().srv_lb);
    let mut t = shown(&r.resolve(b"sip:bob@sip.test").await.unwrap());
    t.sort();
    assert_eq!(t, ["udp:127.0.0.2:5070", "udp:127.0.0.3:5080"]);
}

#[tokio::test]
async fn no_srv_falls_back_to_the_name() {
    let dns = DnsServer::start();
    let r = resolver_from_cfg(&format!("dns_server = \"{}\"", dns.addr));
    let t = r.resolve(b"sip:plain.test;transport=tcp").await.unwrap();
    assert_eq!(shown(&t), ["tcp:127.0.0.2:5060", "tcp:[::1]:5060"]);
    let t = r.resolve(b"sip:plain.test;transport=tls").await.unwrap();
    assert_eq!(shown(&t), ["tls:127.0.0.2:5061", "tls:[::1]:5061"]);
}

#[tokio::test]
async fn errors_are_typed() {
    let dns = DnsServer::start();
    let r = resolver_from_cfg(&format!("dns_server = \"{}\"", dns.addr));
    assert_eq!(
        r.resolve(b"sip:bob@nope.test").await,
        Err(DnsError::NoSuchName("nope.test".into()))
    );
    assert_eq!(
        r.resolve(b"sip:noaddr.test:5060").await,
        Err(DnsError::NoRecords("noaddr.test".into()))
    );
    assert!(matches!(r.resolve(b"sip:").await, Err(DnsError::BadUri(_))));
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_next_one_answers() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = DnsConfig {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(400),
        ..DnsConfig::default()
    };
    let r = Resolver::new(cfg).unwrap();
    let started = Instant::now();
    assert_eq!(
        r.resolve(b"sip:sip.test").await,
        Err(DnsError::Timeout("sip.test".into()))
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Several servers, comma-separated: the silent one first.
    let dns = DnsServer::start();
    let r = resolver_from_cfg(&format!(
        "dns_server = \"{}, {}\"",
        silent.local_addr().unwrap(),
        dns.addr
    ));
    assert_eq!(r.config().servers.len(), 2);
    let t = r.resolve(b"sip:plain.test:5080").await.unwrap();
    assert_eq!(shown(&t), ["udp:127.0.0.2:5080", "udp:[::1]:5080"]);
}
