//! siphon's SIP runtime.
//!
//! [`Core`] receives messages from the transports, keeps the transaction
//! table, runs the routing script for each request and sends replies. It
//! registers sl, tm and textops functions and the SIP pseudo-variables into a
//! [`Registry`] before the configuration is compiled, and is started with the
//! compiled [`Program`] afterwards. A suspended transaction keeps its whole
//! script context and is resumed through the same path whether a module's
//! I/O or the script's `t_continue` resumes it. Modules never name the core:
//! they reach it through the host handle ([`Core::host`], the module API's
//! `Host`) they get at start.

#![warn(missing_docs)]

pub mod dns;
mod proxy;
mod script;
pub mod stats;
mod textops;
pub mod tls;
mod tm;
pub mod transport;

pub use script::SipCtx;
pub use tm::{TmConfig, TxId};
pub use transport::{Bound, HttpService, Peer, PrefixedStream, Transport};

use bytes::Bytes;
use siphon_script::api::Host;
use siphon_script::{Outcome, Program, Registry, RouteType};
use siphon_sip::{Method, SipMsg};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// Which kind of run [`Core::after_route`] decides for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteRun {
    /// `request_route` for a new request.
    Request,
    /// A route run when a suspended transaction was resumed.
    Resumed,
    /// A failure route run when `fr_timer` expired.
    Failure,
}

/// What [`Core::after_route`] did with the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterRoute {
    /// Parked in its transaction until a module or `t_continue` resumes it.
    Suspended,
    /// The run is over.
    Done,
}

/// The SIP core: shared by every worker.
pub struct Core {
    program: OnceLock<Arc<Program>>,
    pub(crate) tm: tm::Tm,
    pub(crate) out: transport::Outbound,
    /// Counters.
    pub stats: stats::Stats,
    bound: OnceLock<Vec<Bound>>,
    /// RFC 3263 resolution for `t_relay` and `forward` (built at start).
    resolver: OnceLock<dns::Resolver>,
    pub(crate) http: OnceLock<Arc<dyn HttpService>>,
    to_tag_seed: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("bound", &self.bound.get())
            .finish()
    }
}

impl Core {
    /// A core with nothing bound yet.
    pub fn new() -> Arc<Core> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32;
        Arc::new(Core {
            program: OnceLock::new(),
            tm: tm::Tm::new(seed),
            out: Default::default(),
            stats: Default::default(),
            bound: OnceLock::new(),
            resolver: OnceLock::new(),
            http: OnceLock::new(),
            to_tag_seed: seed,
        })
    }

    /// Adds the core's functions, PVs and the `tm`/`sl` modules to a registry.
    pub fn register(self: &Arc<Self>, reg: &mut Registry) {
        script::register(self, reg);
        reg.add(tls::def());
    }

    /// The host handle modules get in their [`StartCx`](siphon_script::api::StartCx),
    /// running event routes of `program` (the one [`Core::start`] gets) for
    /// them; `shutdown` is the token [`Core::start`] gets.
    pub fn host(
        self: &Arc<Self>,
        program: Arc<Program>,
        shutdown: CancellationToken,
    ) -> Arc<dyn Host> {
        Arc::new(CoreHost {
            core: self.clone(),
            shutdown,
            events: siphon_script::event_run::EventRunner::new(program),
        })
    }

    /// The compiled program.
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.get()
    }

    /// Every statistic of the core and the transaction layer, `group:name`.
    pub fn statistics(&self) -> Vec<(String, i64)> {
        let mut v = self.stats.snapshot();
        v.extend(self.tm.snapshot());
        v
    }

    /// The resolver (after [`Core::start`]).
    pub(crate) fn resolver(&self) -> Option<&dns::Resolver> {
        self.resolver.get()
    }

    /// The addresses bound by [`Core::start`].
    pub fn bound(&self) -> &[Bound] {
        self.bound.get().map_or(&[], Vec::as_slice)
    }

    /// Binds the program's listen addresses, starts the receive loops and the
    /// timer task. Returns what was bound.
    pub async fn start(
        self: &Arc<Self>,
        program: Arc<Program>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Vec<Bound>> {
        let _ = self.program.set(program.clone());
        let workers = program
            .core
            .children
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let bound = transport::start(self, &program.core.listen, workers, &shutdown).await?;
        let _ = self.bound.set(bound.clone());
        let ipv6 = bound.iter().any(|b| b.addr.is_ipv6());
        match dns::Resolver::new(dns::DnsConfig::from_params(&program.core, ipv6)) {
            Ok(r) => {
                let mut cfg = self.tm.config();
                cfg.use_dns_failover = r.config().failover;
                self.tm.set_config(cfg);
                let _ = self.resolver.set(r);
            }
            Err(e) => tracing::error!("DNS resolver: {e}; names will not resolve"),
        }
        tm::start_timers(self, &shutdown);
        Ok(bound)
    }

    /// Whether an address or URI host is one of ours (`myself`).
    /// A URI's explicit port must be one we listen on with that address (as
    /// Kamailio's `check_self`): `sip:127.0.0.1:5096` is another process on
    /// our host, not us.
    pub fn is_myself(&self, v: &[u8]) -> bool {
        let (host, port) = match siphon_sip::parse_uri(v) {
            Ok(u) => (u.host, u.port),
            Err(_) => (v, None),
        };
        let Ok(h) = std::str::from_utf8(host) else {
            return false;
        };
        let Ok(ip) = h.trim_matches(['[', ']']).parse::<std::net::IpAddr>() else {
            return false;
        };
        self.bound().iter().any(|b| {
            (b.addr.ip() == ip || (b.addr.ip().is_unspecified() && ip.is_loopback()))
                && port.is_none_or(|p| p == b.addr.port())
        })
    }

    /// Handles one received message.
    pub fn on_message(self: &Arc<Self>, buf: Bytes, peer: Peer) {
        let Some(program) = self.program.get().cloned() else {
            return;
        };
        let msg = match siphon_sip::parse(buf.clone()) {
            Ok(m) => m,
            Err(e @ siphon_sip::ParseError::DuplicateContentLength) => {
                // Which length frames the body is ambiguous: refused, answered when possible.
                stats::Stats::inc(&self.stats.bad_msgs);
                stats::Stats::inc(&self.stats.duplicate_content_length);
                tracing::info!(
                    "refusing a message with two Content-Lengths from {}",
                    peer.src
                );
                if let Ok(m) = siphon_sip::parse_for_error_reply(buf)
                    && m.check_required().is_ok()
                {
                    self.bad_request(&m, &peer, &e);
                }
                return;
            }
            Err(e) => {
                stats::Stats::inc(&self.stats.bad_msgs);
                tracing::debug!("dropping unparsable message from {}: {e}", peer.src);
                return;
            }
        };
        if let Err(e) = msg.check_required() {
            stats::Stats::inc(&self.stats.bad_msgs);
            self.bad_request(&msg, &peer, &e);
            return;
        }
        if msg.is_request() {
            stats::Stats::inc(&self.stats.rcv_requests);
            self.on_request(&program, msg, peer);
        } else {
            stats::Stats::inc(&self.stats.rcv_replies);
            self.on_reply(&program, msg, peer);
        }
    }

    /// A 400 to a malformed request (not to an ACK, nor without a Via to answer to).
    fn bad_request(&self, msg: &SipMsg, peer: &Peer, e: &siphon_sip::ParseError) {
        if msg.is_request() && msg.method() != Method::Ack && msg.top_via().is_some() {
            stats::Stats::inc(&self.stats.err_requests);
            let reason = format!("Bad Request - {e}");
            self.sl_reply(msg, peer, 400, reason.as_bytes(), &[]);
        }
    }

    fn on_request(self: &Arc<Self>, program: &Arc<Program>, msg: SipMsg, peer: Peer) {
        // Retransmissions, the ACK of a non-2xx and CANCELs are the transactions'.
        if let Some(index) = self.tm.index_of(&msg) {
            match self
                .tm
                .with(self, index, |t, now| t.receive_request(&msg, now))
            {
                siphon_tm::Received::Absorbed => return,
                siphon_tm::Received::Canceled(_) => {
                    self.sl_reply(&msg, &peer, 200, b"OK", &[]);
                    return;
                }
                siphon_tm::Received::UnknownCancel => {
                    self.sl_reply(&msg, &peer, 481, b"Call/Transaction Does Not Exist", &[]);
                    return;
                }
                siphon_tm::Received::New | siphon_tm::Received::AckOf2xx(_) => {}
            }
        }
        // The ACK of a stateless non-2xx reply carries the To-tag we made for
        // its INVITE (same Call-ID, From-tag and Via branch): it ends there,
        // as Kamailio's sl module filters it.
        if msg.method() == Method::Ack
            && msg
                .to()
                .and_then(|t| t.tag)
                .is_some_and(|tag| tag[..] == self.to_tag(&msg)[..])
        {
            stats::Stats::inc(&self.stats.sl_filtered_acks);
            return;
        }
        let Some(route) = program.request_route() else {
            return;
        };
        let mut ctx = program.new_ctx(RouteType::REQUEST);
        // An ACK has no transaction of its own to suspend.
        ctx.may_suspend = msg.method() != Method::Ack;
        ctx.ext.insert(SipCtx::new(msg, peer));
        let outcome = program.run(route, &mut ctx);
        if matches!(outcome, Outcome::Drop) {
            stats::Stats::inc(&self.stats.drop_requests);
        }
        self.after_route(ctx, outcome, RouteRun::Request);
    }

    /// The one decision after any route ran for a request: a suspension (a
    /// module's, or `t_suspend()`) parks the context in the transaction,
    /// whatever kind of route asked; otherwise the context goes back to its
    /// transaction, whose table decides what follows (siphon-tm's
    /// `route_done`). Returns whether the context was parked.
    pub(crate) fn after_route(
        self: &Arc<Self>,
        mut ctx: siphon_script::Ctx,
        outcome: Outcome,
        run: RouteRun,
    ) -> AfterRoute {
        if let Outcome::Suspended(s) = outcome {
            self.suspend(ctx, Some(s));
            return AfterRoute::Suspended;
        }
        let wants = ctx
            .ext
            .get_mut::<SipCtx>()
            .is_some_and(|s| std::mem::take(&mut s.suspend_requested));
        if wants && !matches!(outcome, Outcome::Drop) {
            self.suspend(ctx, None);
            return AfterRoute::Suspended;
        }
        let Some(id) = ctx.ext.get::<SipCtx>().and_then(|s| s.tx) else {
            return AfterRoute::Done;
        };
        let kind = match run {
            RouteRun::Request => siphon_tm::RouteKind::Request,
            RouteRun::Resumed => siphon_tm::RouteKind::Resumed,
            RouteRun::Failure => siphon_tm::RouteKind::Failure,
        };
        self.give_back(id, ctx, kind);
        AfterRoute::Done
    }

    fn on_reply(self: &Arc<Self>, program: &Arc<Program>, msg: SipMsg, peer: Peer) {
        // Our Via must be on top: a stateless forward's or a branch's.
        let ours = msg.top_via().is_some_and(|v| {
            v.branch.as_ref().is_some_and(|b| {
                b.starts_with(script::BRANCH_PREFIX) || siphon_tm::id::parse_branch(b).is_some()
            })
        });
        if !ours {
            stats::Stats::inc(&self.stats.drop_replies);
            return;
        }
        // The core reply_route sees every reply first; `drop` ends it there.
        if let Some(route) = program.reply_route() {
            let mut ctx = program.new_ctx(RouteType::ONREPLY);
            ctx.ext.insert(SipCtx::new(msg.clone(), peer));
            if let Outcome::Drop = program.run(route, &mut ctx) {
                stats::Stats::inc(&self.stats.drop_replies);
                return;
            }
        }
        // A branch's reply goes to its transaction; anything else (a late 2xx
        // after the transaction ended, a stateless forward's) by the next Via.
        let msg = match siphon_tm::TxShard::<tm::CoreShell>::reply_index(&msg) {
            #[allow(
                clippy::result_large_err,
                reason = "the reply is handed back, not copied"
            )]
            Some(index) => match self
                .tm
                .with(self, index, |t, now| t.receive_reply(msg, now))
            {
                Ok(()) => return,
                Err(msg) => msg,
            },
            None => msg,
        };
        let out = siphon_sip::serialize(
            &msg,
            &siphon_sip::Edits {
                pop_via: true,
                ..Default::default()
            },
        );
        let Ok(next) = siphon_sip::parse(out.clone()) else {
            return;
        };
        let Some(dest) = next.top_via().and_then(via_destination) else {
            stats::Stats::inc(&self.stats.drop_replies);
            return;
        };
        if self.out.send_udp(None, dest, out) {
            stats::Stats::inc(&self.stats.fwd_replies);
        } else {
            stats::Stats::inc(&self.stats.send_failures);
        }
    }

    /// Sends a stateless reply to a request.
    pub(crate) fn sl_reply(
        &self,
        msg: &SipMsg,
        peer: &Peer,
        code: u16,
        reason: &[u8],
        extra: &[Bytes],
    ) -> bool {
        let tag = self.to_tag(msg);
        let (code, bytes) = self.sendable_reply(msg, peer, code, reason, &tag, extra);
        let Some(dest) = reply_destination(msg, peer) else {
            return false;
        };
        // Counted before it leaves: whoever got it may ask for the statistics at once.
        stats::Stats::class(&self.stats.sl_replies, code);
        self.out.send(self, peer, dest, bytes);
        true
    }

    /// [`Core::build_reply`], unless the reply is too large for a UDP datagram
    /// (65,507 bytes over IPv4, 65,527 over IPv6): then it is counted
    /// (`core:oversized_replies`), logged and replaced by a short `500`, so the
    /// caller gets a final answer instead of retransmitting until timer H.
    /// Returns the code actually sent with the bytes.
    pub(crate) fn sendable_reply(
        &self,
        msg: &SipMsg,
        peer: &Peer,
        code: u16,
        reason: &[u8],
        to_tag: &[u8],
        extra: &[Bytes],
    ) -> (u16, Bytes) {
        let bytes = self.build_reply(msg, peer, code, reason, to_tag, extra);
        let max = transport::max_datagram(peer.src);
        if peer.transport.is_reliable() || bytes.len() <= max {
            return (code, bytes);
        }
        stats::Stats::inc(&self.stats.oversized_replies);
        tracing::warn!(
            "reply {code} to {} is {} bytes, more than a UDP datagram holds ({max}): sending 500 instead",
            peer.src,
            bytes.len()
        );
        let reason = b"Server Internal Error - Reply Too Large";
        (500, self.build_reply(msg, peer, 500, reason, to_tag, &[]))
    }

    /// Builds a reply with `received`/`rport` filled into the top Via.
    pub(crate) fn build_reply(
        &self,
        msg: &SipMsg,
        peer: &Peer,
        code: u16,
        reason: &[u8],
        to_tag: &[u8],
        extra: &[Bytes],
    ) -> Bytes {
        let top = self.reply_top_via(msg, peer);
        siphon_sip::build_reply(
            msg,
            code,
            reason,
            &siphon_sip::ReplyOptions {
                to_tag: Some(to_tag),
                top_via: top.as_deref(),
                extra,
                server: Some(b"siphon"),
                body: None,
            },
        )
    }

    /// The top Via of a reply to `msg`: `received` when the sent-by is not
    /// where it came from or the Via asks for `rport` (RFC 3581 §4: even when
    /// equal; Kamailio's `received_test`), `rport` filled (RFC 3261 §18.2.1).
    pub(crate) fn reply_top_via(&self, msg: &SipMsg, peer: &Peer) -> Option<Bytes> {
        let (first, filled) = self.fill_top_via(msg, peer)?;
        Some(filled.unwrap_or(first))
    }

    /// The sender's Via as a relayed request carries it: `received` and
    /// `rport` filled in (RFC 3261 §18.2.1, RFC 3581), so a reply relayed by
    /// that Via (statelessly, after the transaction) reaches it; `None` when
    /// nothing changes.
    pub(crate) fn received_via(&self, msg: &SipMsg, peer: &Peer) -> Option<Bytes> {
        let (first, filled) = self.fill_top_via(msg, peer)?;
        filled.filter(|f| *f != first)
    }

    /// The first Via value as it came, and the same with `received`/`rport`
    /// written in when the rules ask for either (`None`: nothing to fill in,
    /// so no copy is made).
    fn fill_top_via(&self, msg: &SipMsg, peer: &Peer) -> Option<(Bytes, Option<Bytes>)> {
        let v = msg.value(siphon_sip::HeaderName::Via)?;
        let first = v.slice(siphon_sip::first_and_rest(&v).0.range());
        let Some(via) = msg.top_via() else {
            return Some((first, None));
        };
        let src = peer.src.ip();
        let received =
            !via_host_is(&via.host, src) || via.rport.is_some() || via.received.is_some();
        let rport = via.rport.map(|_| peer.src.port());
        if !received && rport.is_none() {
            return Some((first, None));
        }
        let src = src.to_string();
        let filled = Bytes::from(siphon_sip::via_with_received(
            &first,
            received.then_some(src.as_bytes()),
            rport,
        ));
        Some((first, Some(filled)))
    }

    /// Our listening address for a request going to `to`: the same transport
    /// and address family if we listen so, else any listener of the family.
    pub(crate) fn local_for(&self, to: dns::Target) -> Option<SocketAddr> {
        let bound = self.bound();
        let family = |a: &SocketAddr| a.is_ipv4() == to.addr.is_ipv4();
        bound
            .iter()
            .find(|b| b.transport == to.transport && family(&b.addr))
            .or_else(|| bound.iter().find(|b| family(&b.addr)))
            .map(|b| b.addr)
    }

    /// Our Via for a request going to `to`, without its branch:
    /// `SIP/2.0/UDP 127.0.0.1:5060` (the listener's advertised address if set).
    pub(crate) fn sent_by(&self, to: dns::Target, from: Option<SocketAddr>) -> Option<Bytes> {
        self.out.via_value(to, from)
    }

    /// A To-tag stable for one request (the same for its retransmissions).
    pub(crate) fn to_tag(&self, msg: &SipMsg) -> Vec<u8> {
        // FNV-style over Call-ID, From-tag and branch, keyed by a per-process seed.
        let mut x = self.to_tag_seed;
        let (call_id, from_tag) = (
            msg.call_id().unwrap_or_default(),
            msg.from().and_then(|f| f.tag).unwrap_or_default(),
        );
        let branch = msg
            .top_via()
            .and_then(|v| v.branch.as_deref())
            .unwrap_or_default();
        for part in [&call_id[..], &from_tag[..], branch] {
            for &b in part.iter() {
                x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
            x = x.rotate_left(17);
        }
        // 16 hex digits, written without `fmt` (one per request).
        (0..16)
            .rev()
            .map(|i| b"0123456789abcdef"[((x >> (i * 4)) & 0xf) as usize])
            .collect()
    }
}

/// Whether a Via's sent-by host names `src` as Kamailio's
/// `check_via_address` decides it: the address as text, IPv4 exactly,
/// IPv6 (without brackets) in either case; another spelling of the same
/// address counts as different. IPv4 is formatted without `fmt` (every
/// request asks).
fn via_host_is(host: &[u8], src: IpAddr) -> bool {
    match src {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                let mut buf = itoa::Buffer::new();
                let digits = buf.format(octet).as_bytes();
                text[n..n + digits.len()].copy_from_slice(digits);
                n += digits.len();
            }
            host == &text[..n]
        }
        IpAddr::V6(v6) => host.eq_ignore_ascii_case(v6.to_string().as_bytes()),
    }
}

/// What modules reach the core through ([`Core::host`]).
struct CoreHost {
    core: Arc<Core>,
    shutdown: CancellationToken,
    /// Runs the modules' event routes and keeps those parked on an async call.
    events: Arc<siphon_script::event_run::EventRunner>,
}

impl Host for CoreHost {
    fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn set_http_service(&self, service: Arc<dyn HttpService>) -> bool {
        self.core.http.set(service).is_ok()
    }

    fn set_http_message(
        &self,
        ctx: &mut siphon_script::Ctx,
        raw: Bytes,
        peer: Peer,
    ) -> Result<(), String> {
        let msg = siphon_sip::parse_http_request(raw).map_err(|e| e.to_string())?;
        ctx.ext.insert(SipCtx::new(msg, peer));
        Ok(())
    }

    fn reply(
        &self,
        ctx: &mut siphon_script::Ctx,
        code: u16,
        reason: &str,
        extra: &[Bytes],
        mode: siphon_script::api::ReplyMode,
    ) -> Result<(), String> {
        script::module_reply(&self.core, ctx, code, reason, extra, mode)
    }

    fn on_transaction_final(&self, hook: siphon_script::api::TxFinalHook) -> bool {
        let mut hooks = self
            .core
            .tm
            .final_hooks
            .write()
            .unwrap_or_else(|e| e.into_inner());
        hooks.push(hook);
        true
    }

    fn udp_listener(
        &self,
        to: SocketAddr,
        from: Option<SocketAddr>,
    ) -> Option<siphon_script::api::UdpListener> {
        let addr = self.core.out.udp_local(from, to)?;
        let target = dns::Target {
            transport: Transport::Udp,
            addr: to,
        };
        let sent_by = self.core.out.via_sent_by(target, Some(addr))?;
        Some(siphon_script::api::UdpListener { addr, sent_by })
    }

    fn send_udp(&self, from: SocketAddr, to: SocketAddr, data: Bytes) -> Result<(), String> {
        if self.core.out.send_udp(Some(from), to, data) {
            Ok(())
        } else {
            stats::Stats::inc(&self.core.stats.send_failures);
            Err(format!(
                "the datagram to {to} could not be sent from {from}"
            ))
        }
    }

    fn find_route(&self, name: &str) -> Option<siphon_script::RouteId> {
        self.events.find(name)
    }

    fn run_event_route(
        &self,
        route: siphon_script::api::RouteRef<'_>,
        suspend: siphon_script::api::EventSuspend,
        build: siphon_script::api::BuildCtx<'_>,
    ) -> Result<siphon_script::api::EventRun, siphon_script::api::RunError> {
        self.events.run(route, suspend, build)
    }

    fn resume(
        &self,
        id: siphon_script::api::SuspensionId,
        route: siphon_script::RouteId,
        fill: siphon_script::api::ResumeFill,
    ) -> bool {
        use siphon_script::api::SuspensionId;
        match id {
            SuspensionId::Transaction(tx) => self.core.resume(tx, route, fill),
            SuspensionId::Event(n) => self.events.resume(n, route, fill),
            _ => false,
        }
    }
}

#[cfg(test)]
mod host_tests;

/// Where replies to a request go (RFC 3261 §18.2.2, RFC 3581): the source
/// address when `rport` is present, else the source IP and the Via port.
pub(crate) fn reply_destination(msg: &SipMsg, peer: &Peer) -> Option<SocketAddr> {
    if peer.transport.is_reliable() {
        return Some(peer.src);
    }
    let via = msg.top_via()?;
    if via.rport.is_some() {
        return Some(peer.src);
    }
    Some(SocketAddr::new(peer.src.ip(), via.port.unwrap_or(5060)))
}

/// Where a reply goes by its (new) top Via: received or sent-by, rport or port.
pub(crate) fn via_destination(v: &siphon_sip::Via) -> Option<SocketAddr> {
    let host = v.received.as_ref().unwrap_or(&v.host);
    let ip: std::net::IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    let port = v.rport.flatten().or(v.port).unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod via_host_tests {
    use super::via_host_is;

    #[test]
    fn a_via_host_names_the_source_as_kamailio_compares_it() {
        let v4 = "127.0.0.1".parse().unwrap();
        assert!(via_host_is(b"127.0.0.1", v4));
        assert!(!via_host_is(b"127.0.0.2", v4));
        assert!(!via_host_is(b"127.0.0.10", v4));
        assert!(!via_host_is(b"localhost", v4));
        let v4 = "10.200.3.45".parse().unwrap();
        assert!(via_host_is(b"10.200.3.45", v4));
        let v6 = "::1".parse().unwrap();
        assert!(via_host_is(b"::1", v6));
        let v6 = "2001:db8::a".parse().unwrap();
        assert!(via_host_is(b"2001:DB8::A", v6));
        // Another spelling of the same address is another host to Kamailio.
        assert!(!via_host_is(b"2001:db8:0:0::a", v6));
    }
}
