//! NAT keepalives (`natping_interval`): every second one slice of the
//! registered contacts gets a datagram, so each is pinged once per interval
//! (Kamailio's slices of usrloc's hash table, with one timer process).
//! Contacts flagged `sipping_bflag` get a stateless SIP request
//! (`sipping_method`, default OPTIONS, from `sipping_from`); the others 4
//! zero bytes. A contact is reached where lookup() would send to it: its
//! `received` address (`fix_nated_register`), else its URI; over UDP only.
//!
//! A round ([`Pinger::round`]) reads the contacts through the module API's
//! [`Location`] and sends through the [`Host`]: no clock, no socket of its
//! own, so tests run it against a recording host that never sends.

use bytes::Bytes;
use siphon_script::api::{Host, Location, LocationContact};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The keepalive parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingConfig {
    /// `natping_interval` (s): each contact is pinged once per interval.
    pub interval: u64,
    /// `ping_nated_only`: only contacts with usrloc's `nat_bflag`.
    pub nated_only: bool,
    /// `sipping_bflag` as a mask (0: none): these contacts get a SIP request.
    pub sipping: u64,
    /// `natping_disable_bflag` as a mask (0: none): these get nothing.
    pub disable: u64,
    /// `sipping_from`: the From URI of the SIP pings.
    pub from: Option<String>,
    /// `sipping_method`.
    pub method: String,
    /// `force_socket`: the listener pings leave from.
    pub force_socket: Option<SocketAddr>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Datagrams sent.
    pub sent: u64,
    /// Contacts that could not be pinged: no UDP listener, or the send failed.
    pub failed: u64,
    /// Contacts not pinged: not UDP, a host name (siphon resolves no names
    /// for pings), or a URI that does not parse.
    pub skipped: u64,
}

/// The keepalive state: configuration, counters, the on/off switch of
/// `nathelper.enable_ping`.
#[derive(Debug)]
pub struct Pinger {
    /// The parameters.
    pub cfg: PingConfig,
    /// `nathelper.enable_ping`.
    pub enabled: AtomicBool,
    /// Counts SIP pings (From-tag and Call-ID counters).
    seq: AtomicU64,
    /// Per-process randomness for the Call-ID and Via branch.
    seed: u64,
    /// Totals, for the statistics.
    pub sent: AtomicU64,
    /// Totals of [`Round::failed`].
    pub failed: AtomicU64,
    /// Totals of [`Round::skipped`].
    pub skipped: AtomicU64,
}

/// FNV-1a of an address of record: which slice it is pinged in, and the
/// hash in the ping's From-tag (Kamailio's `aorhash`).
pub fn aor_hash(aor: &str) -> u32 {
    aor.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b.to_ascii_lowercase() as u32).wrapping_mul(0x0100_0193)
    })
}

/// Where a contact's ping goes and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address.
    pub to: SocketAddr,
    /// Our listener it should leave from (the contact's socket, or `force_socket`).
    pub from: Option<SocketAddr>,
    /// A SIP request (else 4 zero bytes).
    pub sip: bool,
    /// The Path to put in a Route header (SIP pings of contacts with a Path).
    pub route: Option<String>,
}

/// `udp:127.0.0.1:5060` (usrloc's socket) → the address, when it is UDP.
fn udp_socket(s: &str) -> Option<SocketAddr> {
    let rest = s.strip_prefix("udp:")?;
    rest.parse().ok()
}

/// The first URI of a Path value (`<sip:edge;lr>, <sip:core;lr>`).
fn first_path_uri(path: &str) -> Option<&str> {
    let a = path.find('<')? + 1;
    let z = a + path[a..].find('>')?;
    Some(&path[a..z])
}

impl Pinger {
    /// A pinger for `cfg`, seeded with `seed`.
    pub fn new(cfg: PingConfig, seed: u64) -> Self {
        Pinger {
            cfg,
            enabled: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            seed,
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// The branch flags a contact needs to be pinged at all (`ping_nated_only`).
    pub fn wanted_flags(&self, loc: &dyn Location) -> u64 {
        match (self.cfg.nated_only, loc.nat_bflag()) {
            (true, Some(f)) => 1 << f,
            _ => 0,
        }
    }

    /// Where and how `c` is pinged; `None` when it cannot be (not UDP, a
    /// host name, an unreadable URI).
    pub fn target(&self, c: &LocationContact) -> Option<Target> {
        let sip =
            c.cflags & self.cfg.sipping != 0 || (!self.cfg.nated_only && self.cfg.sipping != 0);
        // A SIP ping to a contact with a Path goes to the Path's first hop.
        let (uri, route) = match &c.path {
            Some(p) if c.cflags & self.cfg.sipping != 0 => (first_path_uri(p)?, Some(p.clone())),
            _ => (c.received.as_deref().unwrap_or(&c.uri), None),
        };
        let u = siphon_sip::parse_uri(uri.as_bytes()).ok()?;
        if u.param(b"transport")
            .is_some_and(|t| !t.eq_ignore_ascii_case(b"udp"))
        {
            return None;
        }
        let ip = crate::nat::parse_ip(u.host)?;
        Some(Target {
            to: SocketAddr::new(ip, u.port.unwrap_or(5060)),
            from: self.cfg.force_socket.or_else(|| udp_socket(&c.socket)),
            sip,
            route,
        })
    }

    /// Pings the contacts of slice `part` (0 ≤ part < interval).
    pub fn round(&self, loc: &dyn Location, host: &dyn Host, part: u64) -> Round {
        let mut r = Round::default();
        if !self.enabled.load(Ordering::Relaxed) || self.cfg.interval == 0 {
            return r;
        }
        for c in loc.contacts(self.wanted_flags(loc)) {
            let hash = aor_hash(&c.aor);
            if u64::from(hash) % self.cfg.interval != part {
                continue;
            }
            // natping_disable_bflag: no ping at all.
            if c.cflags & self.cfg.disable != 0 {
                continue;
            }
            let Some(t) = self.target(&c) else {
                tracing::debug!(
                    "nathelper: contact {} of {} is not pinged (not UDP to an address)",
                    c.uri,
                    c.aor
                );
                r.skipped += 1;
                continue;
            };
            let Some(l) = host.udp_listener(t.to, t.from) else {
                tracing::info!("nathelper: no UDP listener to ping {} from", t.to);
                r.failed += 1;
                continue;
            };
            let data = if t.sip {
                self.sip_ping(&c, hash, &l, t.route.as_deref())
            } else {
                Bytes::from_static(&[0, 0, 0, 0])
            };
            match host.send_udp(l.addr, t.to, data) {
                Ok(()) => r.sent += 1,
                Err(e) => {
                    tracing::info!("nathelper: keepalive to {}: {e}", t.to);
                    r.failed += 1;
                }
            }
        }
        self.sent.fetch_add(r.sent, Ordering::Relaxed);
        self.failed.fetch_add(r.failed, Ordering::Relaxed);
        self.skipped.fetch_add(r.skipped, Ordering::Relaxed);
        r
    }

    /// The stateless SIP ping of `c` (Kamailio's `build_sipping`): R-URI and
    /// To the contact, From `sipping_from` tagged `ruid-aorhash-counter`,
    /// one Via of `l`'s, CSeq 1.
    pub fn sip_ping(
        &self,
        c: &LocationContact,
        hash: u32,
        l: &siphon_script::api::UdpListener,
        route: Option<&str>,
    ) -> Bytes {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mix = splitmix(self.seed ^ n);
        let method = &self.cfg.method;
        let from = self.cfg.from.as_deref().unwrap_or_default();
        let route = route.map_or(String::new(), |p| format!("Route: {p}\r\n"));
        Bytes::from(format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {sent_by};branch=z9hG4bK{branch}\r\n{route}From: {from};tag={ruid}-{hash:x}-{n:x}\r\nTo: {uri}\r\nCall-ID: {callid:x}-{n:x}-{mix:x}@{ip}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
            uri = c.uri,
            sent_by = l.sent_by,
            branch = 1_000_000 + mix % 9_000_000,
            ruid = c.ruid,
            callid = (self.seed >> 32) as u32,
            ip = l.addr.ip(),
        ))
    }
}

/// A well-mixed 64-bit value from `x` (SplitMix64).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
