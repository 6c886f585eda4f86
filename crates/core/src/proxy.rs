//! The proxy's script functions: `t_relay` and its variants, `append_branch`
//! and `$branch`, `t_on_reply` / `t_on_branch`, branch flags, and what the
//! script reads about a transaction (`t_check_status`, `t_is_canceled`,
//! `$T_branch_idx`, …), as Kamailio's tm and tmx modules have them.
//!
//! `t_relay` builds the branches — the R-URI (or `$du`) unless a failure route
//! already used it, then every `append_branch` — runs `branch_route` for each,
//! and hands them to the transaction table. A destination named by an IP
//! address goes out at once; a name is resolved (RFC 3263) without blocking
//! the route, the transaction waiting for it as for a sent branch.

use crate::dns::{Destination, Plan, Target};
use crate::script::SipCtx;
use crate::{Core, Transport};
use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::{
    ArgKind, Exec, FunctionSpec, PvClassSpec, Registry, RouteTable, RouteType, Value,
};
use siphon_sip::{Method, SipMsg};
use siphon_tm::{BranchSpec, RelayError, TxId};
use std::sync::Arc;
use std::time::Duration;

use siphon_script::sip::{BranchEntry, RecordRoute, RrSocket};

/// What a `t_relay` variant fixes.
#[derive(Debug, Clone, Default)]
struct RelayTo {
    /// `t_relay_to_udp/tcp/tls`.
    transport: Option<Transport>,
    /// `t_relay(host, port)`, `t_relay_to_*(host, port)`.
    host_port: Option<(String, Option<u16>)>,
}

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

/// One branch before it goes out: its URI, where to, its flags.
struct Planned {
    uri: Bytes,
    dest: Bytes,
    flags: u64,
    /// `record_route()` (rr): its own when the branch route asked for it.
    record_route: Option<RecordRoute>,
}

/// `t_relay` and its variants. Returns 1 when the branches went (or are on
/// their way) to the transaction, -1 otherwise (Kamailio's `-1`/`E_*`).
fn t_relay(core: &Arc<Core>, ex: &mut Exec<'_>, to: RelayTo) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    if !s.msg.is_request() {
        return -1;
    }
    match s.msg.method() {
        // The ACK of a 2xx is end to end: forwarded statelessly, as Kamailio does.
        Method::Ack => return relay_ack(core, ex, &to),
        // A CANCEL never reaches the script: the transaction layer handled it.
        Method::Cancel => return 1,
        _ => {}
    }
    // RFC 3261 §16.6 step 3 (Kamailio leaves it to the maxfwd module; a
    // config without it would loop).
    if !s.max_forwards_done {
        match s.msg.max_forwards() {
            Some(0) => {
                core.sl_reply(&s.msg, &s.peer, 483, b"Too Many Hops", &[]);
                return -1;
            }
            Some(n) => s.edits.max_forwards = Some(n - 1),
            None => s
                .edits
                .append
                .push(Bytes::from_static(b"Max-Forwards: 70\r\n")),
        }
        s.max_forwards_done = true;
    }
    // Also after the maxfwd module did the Max-Forwards part.
    if s.edits.top_via.is_none() {
        s.edits.top_via = core.received_via(&s.msg, &s.peer);
    }
    let Some(id) = core.newtran(s) else {
        tracing::error!(target: "script", "t_relay: no transaction could be created");
        return -1;
    };
    // Most requests go to one destination: room for one, not the default four.
    let mut planned = Vec::with_capacity(1 + s.branches.len());
    if let Some((host, port)) = &to.host_port {
        planned.push(Planned {
            uri: s.ruri(),
            dest: host_port_uri(host, *port),
            flags: s.bflags,
            record_route: s.record_route.clone(),
        });
    } else if !s.ruri_consumed {
        let uri = s.ruri();
        planned.push(Planned {
            dest: s.du.clone().unwrap_or_else(|| uri.clone()),
            uri,
            flags: s.bflags,
            record_route: s.record_route.clone(),
        });
    }
    for b in std::mem::take(&mut s.branches) {
        planned.push(Planned {
            dest: b.du.clone().unwrap_or_else(|| b.uri.clone()),
            uri: b.uri,
            flags: b.flags,
            record_route: s.record_route.clone(),
        });
    }
    if planned.is_empty() {
        tracing::error!(target: "script", "t_relay: no branches for forwarding (in a failure route: set $ru or $du, or append_branch())");
        return -1;
    }
    s.ruri_consumed = true;
    let force = to.transport.or(match (&to.host_port, s.peer.transport) {
        // t_relay(host, port) keeps the protocol the request came over.
        (Some(_), t) => Some(t),
        (None, _) => None,
    });
    let branch_route = s.branch_route.take();
    let already = core
        .tm
        .with(core, id.index, |t, now| t.info(id, now))
        .map_or(0, |i| i.branches);
    let mut specs = Vec::with_capacity(planned.len());
    let mut resolving = Vec::new();
    let mut bad_uri = 0;
    for (n, p) in planned.into_iter().enumerate() {
        let Some((p, branch_edits)) = run_branch_route(ex, branch_route, p, already + n as u16)
        else {
            continue;
        };
        let Some(s) = sip(ex) else { return -1 };
        let d = match Destination::from_uri(&p.dest, force) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(target: "script", "t_relay: {e}");
                bad_uri += 1;
                continue;
            }
        };
        let mut edits = branch_edits.unwrap_or_else(|| s.edits.clone());
        edits.ruri = Some(p.uri.clone());
        let send = send_options(s, &d);
        match d.plan() {
            Plan::Literal(target) => {
                record_route(
                    core,
                    &mut edits,
                    p.record_route.as_ref(),
                    &s.peer,
                    target,
                    send.from,
                );
                match branch_spec(core, &s.msg, edits, hop(target, &send), p.flags) {
                    Some(b) => specs.push(b),
                    None => bad_uri += 1,
                }
            }
            _ => resolving.push((
                d,
                s.msg.clone(),
                edits,
                p.flags,
                send,
                p.record_route,
                s.peer,
            )),
        }
    }
    if specs.is_empty() && resolving.is_empty() {
        if bad_uri > 0 {
            // Kamailio's delayed 479: answered when the route ends, unless the script does.
            core.tm.with(core, id.index, |t, now| {
                if t.hold(id) {
                    t.unhold(id, Some(479), now);
                }
            });
        }
        return -1;
    }
    if !specs.is_empty() {
        match core
            .tm
            .with(core, id.index, |t, now| t.relay(id, specs, now))
        {
            Ok(_) => {}
            Err(RelayError::Canceled) => return -1,
            Err(e) => {
                tracing::warn!(target: "script", "t_relay: {e:?}");
                return -1;
            }
        }
    }
    for (d, msg, edits, flags, send, rr, peer) in resolving {
        if !core.tm.with(core, id.index, |t, _| t.hold(id)) {
            return -1;
        }
        let core = core.clone();
        tokio::spawn(async move {
            let result = match core.resolver() {
                Some(r) => r.resolve_destination(&d).await,
                None => Err(crate::dns::DnsError::Config("no resolver".into())),
            };
            let spec = match result {
                Ok(targets) => {
                    // The first address we can send to; the others for use_dns_failover.
                    let mut usable = targets.into_iter().filter_map(|t| {
                        core.sent_by(t, send.from)
                            .map(|sent_by| siphon_tm::Alternate {
                                dest: hop(t, &send),
                                sent_by,
                                reliable: t.transport.is_reliable(),
                            })
                    });
                    usable
                        .next()
                        .map(
                            |first: siphon_tm::Alternate<crate::tm::CoreShell>| BranchSpec {
                                msg: msg.clone(),
                                edits: {
                                    let mut e = edits.clone();
                                    record_route(
                                        &core,
                                        &mut e,
                                        rr.as_ref(),
                                        &peer,
                                        first.dest.target,
                                        send.from,
                                    );
                                    e
                                },
                                sent_by: first.sent_by,
                                dest: first.dest,
                                reliable: first.reliable,
                                flags,
                                failover: usable.collect(),
                            },
                        )
                }
                Err(e) => {
                    tracing::info!("t_relay: {e}");
                    None
                }
            };
            core.tm.with(&core, id.index, |t, now| match spec {
                Some(spec) => {
                    let _ = t.relay(id, vec![spec], now);
                    t.unhold(id, None, now);
                }
                None => t.unhold(id, Some(478), now),
            });
        });
    }
    1
}

/// `t_relay(host, port)`'s destination as a URI (an IPv6 address bracketed).
fn host_port_uri(host: &str, port: Option<u16>) -> Bytes {
    let h = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Bytes::from(match port {
        Some(p) => format!("sip:{h}:{p}"),
        None => format!("sip:{h}"),
    })
}

/// The ACK of a 2xx, relayed statelessly to `$du` (else the R-URI) or the
/// variant's host and port, over the URI's `;transport=` or the variant's
/// protocol (Kamailio's `forward_request`).
fn relay_ack(core: &Arc<Core>, ex: &mut Exec<'_>, to: &RelayTo) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    let uri = to.host_port.as_ref().map(|(h, p)| host_port_uri(h, *p));
    let force = to
        .transport
        .or(to.host_port.as_ref().map(|_| s.peer.transport));
    forward_stateless(core, ex, uri, force)
}

/// A stateless relay (`forward()`, the ACK of a 2xx): to `uri`, else `$du`,
/// else the R-URI, resolved per RFC 3263 (a name without holding the route:
/// the request goes when the name resolves), with our Via on top,
/// Max-Forwards decremented (483 at 0) and the sender's Via completed with
/// `received`/`rport`. Its replies come back by the Via.
pub(crate) fn forward_stateless(
    core: &Arc<Core>,
    ex: &mut Exec<'_>,
    uri: Option<Bytes>,
    force: Option<Transport>,
) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    if !s.msg.is_request() {
        return -1;
    }
    let uri = uri.or_else(|| s.du.clone()).unwrap_or_else(|| s.ruri());
    let d = match Destination::from_uri(&uri, force) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(target: "script", "forward: {e}");
            return -1;
        }
    };
    let mut edits = s.edits.clone();
    match s.msg.max_forwards() {
        Some(0) => {
            core.sl_reply(&s.msg, &s.peer, 483, b"Too Many Hops", &[]);
            return -1;
        }
        Some(n) => edits.max_forwards = Some(n - 1),
        None => edits
            .append
            .push(Bytes::from_static(b"Max-Forwards: 70\r\n")),
    }
    edits.top_via = core.received_via(&s.msg, &s.peer);
    let mut branch = crate::script::BRANCH_PREFIX.to_vec();
    branch.extend_from_slice(&core.to_tag(&s.msg));
    let send = send_options(s, &d);
    let msg = s.msg.clone();
    let (rr, peer) = (s.record_route.clone(), s.peer);
    let go = move |core: &Arc<Core>, target: Target| -> bool {
        let Some(sent_by) = core.sent_by(target, send.from) else {
            tracing::info!(
                "forward: no listener of {} to send to {}",
                target.transport.name(),
                target.addr
            );
            return false;
        };
        let mut edits = edits.clone();
        record_route(core, &mut edits, rr.as_ref(), &peer, target, send.from);
        let mut via = sent_by.to_vec();
        via.extend_from_slice(b";branch=");
        via.extend_from_slice(&branch);
        edits.push_via = Some(Bytes::from(via));
        let out = siphon_sip::serialize(&msg, &edits);
        match core.out.send_with(core, target, &send, out, None) {
            Ok(()) => {
                crate::stats::Stats::inc(&core.stats.fwd_requests);
                true
            }
            Err(e) => {
                crate::stats::Stats::inc(&core.stats.send_failures);
                tracing::info!("forward to {}: {e}", target.addr);
                false
            }
        }
    };
    match d.plan() {
        Plan::Literal(target) => {
            if go(core, target) {
                1
            } else {
                -1
            }
        }
        _ => {
            let core = core.clone();
            tokio::spawn(async move {
                let targets = match core.resolver() {
                    Some(r) => r.resolve_destination(&d).await,
                    None => Err(crate::dns::DnsError::Config("no resolver".into())),
                };
                match targets {
                    Ok(t) => {
                        let _ = t.into_iter().any(|t| go(&core, t));
                    }
                    Err(e) => {
                        crate::stats::Stats::inc(&core.stats.send_failures);
                        tracing::info!("forward: {e}");
                    }
                }
            });
            1
        }
    }
}

/// How a request leaves for `d`: `$fs`, `set_forward_no_connect()`, and
/// the name TLS checks the certificate for.
fn send_options(s: &SipCtx, d: &Destination) -> crate::transport::SendOptions {
    crate::transport::SendOptions {
        from: s.send_socket.map(|(_, a)| a),
        no_connect: s.forward_no_connect,
        server_name: match &d.host {
            crate::dns::Host::Name(n) => Some(n.clone()),
            _ => None,
        },
    }
}

fn hop(target: Target, send: &crate::transport::SendOptions) -> crate::tm::Hop {
    crate::tm::Hop {
        target,
        send: send.clone(),
    }
}

/// Runs `branch_route` for one branch (its R-URI and `$du` in place, its
/// header edits its own, returned with it); `None` when the route dropped it.
fn run_branch_route(
    ex: &mut Exec<'_>,
    route: Option<siphon_script::RouteId>,
    p: Planned,
    index: u16,
) -> Option<(Planned, Option<siphon_sip::Edits>)> {
    let Some(route) = route else {
        return Some((p, None));
    };
    let s = sip(ex)?;
    let saved = (s.edits.clone(), s.du.clone(), s.bflags, s.branch);
    let saved_rr = std::mem::replace(&mut s.record_route, p.record_route.clone());
    s.edits.ruri = Some(p.uri.clone());
    s.du = (p.dest != p.uri).then(|| p.dest.clone());
    s.bflags = p.flags;
    s.branch = Some(index);
    let (route_type, may_suspend) = (ex.ctx.route_type, ex.ctx.may_suspend);
    ex.ctx.route_type = RouteType::BRANCH;
    ex.ctx.may_suspend = false;
    let _ = ex.call_route(route);
    let dropped = std::mem::take(&mut ex.ctx.dropped);
    ex.ctx.route_type = route_type;
    ex.ctx.may_suspend = may_suspend;
    let s = sip(ex)?;
    let uri = s.ruri();
    let out = Planned {
        dest: s.du.clone().unwrap_or_else(|| uri.clone()),
        uri,
        flags: s.bflags,
        // A record_route() in the branch route is this branch's only (Kamailio).
        record_route: std::mem::replace(&mut s.record_route, saved_rr),
    };
    // This branch's edits stay with it: the request goes out with them.
    let branch_edits = std::mem::replace(&mut s.edits, saved.0);
    (s.du, s.bflags, s.branch) = (saved.1, saved.2, saved.3);
    if dropped {
        tracing::debug!(target: "script", "branch_route dropped branch {index}");
        return None;
    }
    Some((out, Some(branch_edits)))
}

/// `record_route()` (rr): the Record-Route line(s) on top of a request
/// that came in from `peer` and leaves for `target` (from `from`, `$fs`):
/// the inbound listener's address, and with double record-routing the
/// outbound one's first (Kamailio's lumps substituted at printing).
fn record_route(
    core: &Core,
    edits: &mut siphon_sip::Edits,
    rr: Option<&RecordRoute>,
    peer: &siphon_script::net::Peer,
    target: Target,
    from: Option<std::net::SocketAddr>,
) {
    let Some(rr) = rr else { return };
    let socket = |transport: Transport, host_port: Option<String>| {
        host_port.map(|host_port| RrSocket {
            host_port,
            transport: transport.name(),
        })
    };
    let inbound = socket(
        peer.transport,
        core.out.via_sent_by(
            Target {
                transport: peer.transport,
                addr: peer.src,
            },
            Some(peer.local),
        ),
    );
    let outbound = socket(target.transport, core.out.via_sent_by(target, from));
    let (Some(inbound), Some(outbound)) = (inbound, outbound) else {
        tracing::warn!(target: "script", "record_route: no listener for the Record-Route of a request to {}", target.addr);
        return;
    };
    for (n, line) in rr.lines(&inbound, &outbound).into_iter().enumerate() {
        edits.insert.insert(n, (siphon_sip::At::Top, line));
    }
}

/// The branch for `target`: our Via's sent-by for that transport and family.
fn branch_spec(
    core: &Core,
    msg: &SipMsg,
    mut edits: siphon_sip::Edits,
    dest: crate::tm::Hop,
    flags: u64,
) -> Option<BranchSpec<crate::tm::CoreShell>> {
    let sent_by = core.sent_by(dest.target, dest.send.from)?;
    edits.push_via = None;
    let reliable = dest.target.transport.is_reliable();
    Some(BranchSpec {
        msg: msg.clone(),
        edits,
        sent_by,
        dest,
        reliable,
        flags,
        failover: Vec::new(),
    })
}

/// What the script asks about the current transaction.
fn info(core: &Arc<Core>, ex: &mut Exec<'_>) -> Option<(TxId, siphon_tm::TxInfo)> {
    let id = sip(ex)?.tx?;
    let i = core.tm.with(core, id.index, |t, now| t.info(id, now))?;
    Some((id, i))
}

fn truth(b: bool) -> FnResult {
    if b { 1.into() } else { (-1).into() }
}

pub(crate) fn register(core: &Arc<Core>, reg: &mut Registry) {
    use ArgKind::*;
    let relay_routes = RouteType::REQUEST.or(RouteType::FAILURE);
    let mut f = |spec: FunctionSpec| reg.core_functions.push(spec);
    for (name, transport) in [
        ("t_relay", None),
        ("t_relay_to_udp", Some(Transport::Udp)),
        ("t_relay_to_tcp", Some(Transport::Tcp)),
        ("t_relay_to_tls", Some(Transport::Tls)),
    ] {
        let c = core.clone();
        f(FunctionSpec::new(name, &[Str, Int], move |ex, a| {
            let host_port = (!a.is_empty()).then(|| {
                let host = a.text(0, ex);
                let port = if a.len() > 1 {
                    a.int(1, ex).and_then(|p| u16::try_from(p).ok())
                } else {
                    None
                };
                (host, port)
            });
            t_relay(
                &c,
                ex,
                RelayTo {
                    transport,
                    host_port,
                },
            )
            .into()
        })
        .min_args(0)
        .routes(relay_routes));
    }
    f(FunctionSpec::new("append_branch", &[Str, Str], |ex, a| {
        let uri = (!a.is_empty()).then(|| a.bytes(0, ex));
        let q = if a.len() > 1 {
            let t = a.text(1, ex);
            t.trim()
                .parse::<f64>()
                .ok()
                .map(|q| (q * 1000.0).round() as i32)
        } else {
            None
        };
        let Some(s) = sip(ex) else { return (-1).into() };
        let entry = match uri {
            Some(uri) => {
                if siphon_sip::parse_uri(&uri).is_err() {
                    tracing::error!(target: "script", "append_branch: `{}` is not a SIP URI", String::from_utf8_lossy(&uri));
                    return (-1).into();
                }
                BranchEntry {
                    uri,
                    du: None,
                    q,
                    flags: 0,
                }
            }
            // The current R-URI, $du and flags become a branch.
            None => BranchEntry {
                uri: s.ruri(),
                du: s.du.clone(),
                q,
                flags: s.bflags,
            },
        };
        if s.branches.len() >= 12 {
            tracing::error!(target: "script", "append_branch: too many branches (12)");
            return (-1).into();
        }
        s.branches.push(entry);
        1.into()
    })
    .min_args(0)
    .routes(relay_routes));
    let c = core.clone();
    f(FunctionSpec::new(
        "t_on_reply",
        &[Route(RouteTable::OnReply)],
        move |ex, a| {
            let r = a.route(0, ex);
            let Some(s) = sip(ex) else { return (-1).into() };
            s.reply_route = r;
            if let Some(id) = s.tx {
                c.tm.with(&c, id.index, |t, _| t.set_on_reply(id, r));
            }
            1.into()
        },
    ));
    f(
        FunctionSpec::new("t_on_branch", &[Route(RouteTable::Branch)], |ex, a| {
            let r = a.route(0, ex);
            match sip(ex) {
                Some(s) => {
                    s.branch_route = r;
                    1.into()
                }
                None => (-1).into(),
            }
        })
        .routes(relay_routes),
    );
    for (name, test) in [
        (
            "t_is_canceled",
            (|i: &siphon_tm::TxInfo| i.canceled) as fn(&siphon_tm::TxInfo) -> bool,
        ),
        ("t_branch_timeout", |i| i.branch_timeout),
        ("t_branch_replied", |i| i.branch_replied),
        ("t_any_timeout", |i| i.any_timeout),
        ("t_any_replied", |i| i.any_replied),
        ("t_is_expired", |i| i.expired),
    ] {
        let c = core.clone();
        f(FunctionSpec::new(name, &[], move |ex, _| {
            truth(info(&c, ex).is_some_and(|(_, i)| test(&i)))
        }));
    }
    let c = core.clone();
    f(FunctionSpec::with_bind(
        "t_check_status",
        &[Str],
        Arc::new(move |args: Args| {
            let fixed = match args.const_value(0) {
                Some(v) => Some(
                    regex::Regex::new(&String::from_utf8_lossy(&v.to_bytes()))
                        .map_err(|e| format!("t_check_status: bad regular expression: {e}"))?,
                ),
                None => None,
            };
            Ok(Box::new(CheckStatus {
                core: c.clone(),
                fixed,
                args,
            }) as Box<dyn Call>)
        }),
    ));
    let c = core.clone();
    f(FunctionSpec::new("t_set_fr", &[Int, Int], move |ex, a| {
        let inv = a
            .int(0, ex)
            .filter(|v| *v > 0)
            .map(|v| Duration::from_millis(v as u64));
        let fr = if a.len() > 1 {
            a.int(1, ex)
                .filter(|v| *v > 0)
                .map(|v| Duration::from_millis(v as u64))
        } else {
            None
        };
        let Some(id) = sip(ex).and_then(|s| c.newtran(s)) else {
            return (-1).into();
        };
        c.tm.with(&c, id.index, |t, _| t.set_fr(id, inv, fr));
        1.into()
    })
    .min_args(1));
    let c = core.clone();
    f(FunctionSpec::new("t_reset_fr", &[], move |ex, _| {
        let Some(id) = sip(ex).and_then(|s| s.tx) else {
            return (-1).into();
        };
        let cfg = c.tm.config();
        c.tm.with(&c, id.index, |t, _| {
            t.set_fr(id, Some(cfg.fr_inv_timer), Some(cfg.fr_timer))
        });
        1.into()
    }));
    f(FunctionSpec::new("t_is_set", &[Str], |ex, a| {
        let what = a.text(0, ex);
        let Some(s) = sip(ex) else { return (-1).into() };
        truth(match what.as_str() {
            "failure_route" => s.failure_route.is_some(),
            "onreply_route" => s.reply_route.is_some(),
            "branch_route" => s.branch_route.is_some(),
            _ => false,
        })
    }));
    for (name, op) in [("setbflag", 0u8), ("resetbflag", 1), ("isbflagset", 2)] {
        f(FunctionSpec::new(name, &[Int, Int], move |ex, a| {
            let Some(flag) = a.int(0, ex).filter(|f| (0..64).contains(f)) else {
                return (-1).into();
            };
            let Some(s) = sip(ex) else { return (-1).into() };
            let bit = 1u64 << flag;
            match op {
                0 => s.bflags |= bit,
                1 => s.bflags &= !bit,
                _ => return truth(s.bflags & bit != 0),
            }
            1.into()
        })
        .min_args(1));
    }
    // `force_send_socket(proto:addr:port)` and `$fs`: requests leave from one
    // of our listeners.
    let c = core.clone();
    f(FunctionSpec::new(
        "force_send_socket",
        &[Str],
        move |ex, a| {
            let text = a.text(0, ex);
            match parse_socket(&c, &text) {
                Some(sock) => {
                    let Some(s) = sip(ex) else { return (-1).into() };
                    s.send_socket = Some(sock);
                    1.into()
                }
                None => {
                    tracing::error!(target: "script", "force_send_socket: `{text}` is not one of our listening sockets");
                    (-1).into()
                }
            }
        },
    ));
    f(FunctionSpec::new("set_forward_no_connect", &[], |ex, _| {
        let Some(s) = sip(ex) else { return (-1).into() };
        s.forward_no_connect = true;
        1.into()
    }));
    // siphon never opens a connection to send a reply (a reply whose
    // connection closed is dropped and counted), which is what this asks.
    f(FunctionSpec::new("set_reply_no_connect", &[], |_, _| {
        1.into()
    }));
    let c = core.clone();
    f(FunctionSpec::new("t_precheck_trans", &[], move |ex, _| {
        // True when the request already has a transaction (a retransmission
        // racing its first copy); siphon absorbs the later ones before the script.
        let Some(s) = sip(ex) else { return (-1).into() };
        let msg = s.msg.clone();
        let Some(index) = c.tm.index_of(&msg) else {
            return (-1).into();
        };
        truth(c.tm.with(&c, index, |t, _| t.lookup(&msg).is_some()))
    }));
    let c = core.clone();
    reg.core_pvs.push(PvClassSpec::new(
        "fs",
        PvInner::None,
        Arc::new(move |_| Ok(Arc::new(ForcedSocket(c.clone())) as Arc<dyn PvAccess>)),
    ));
    let c = core.clone();
    reg.core_pvs.push(PvClassSpec::new(
        "T_reply_reason",
        PvInner::None,
        Arc::new(move |_| Ok(Arc::new(ReplyReason(c.clone())) as Arc<dyn PvAccess>)),
    ));
    let mut f = |spec: FunctionSpec| reg.core_functions.push(spec);
    for name in ["sl_reply_error", "send_reply_error"] {
        let c = core.clone();
        f(FunctionSpec::new(name, &[], move |ex, _| {
            // Kamailio answers the last internal error; siphon's t_relay
            // errors are answered by the transaction, so this is the 500.
            crate::script::send_reply(&c, ex, 500, b"Server Internal Error").into()
        })
        .routes(relay_routes));
    }
    let c = core.clone();
    reg.core_pvs.push(PvClassSpec::new(
        "T_branch_idx",
        PvInner::None,
        Arc::new(move |_| Ok(Arc::new(BranchIdx(c.clone())) as Arc<dyn PvAccess>)),
    ));
    reg.core_pvs.push(PvClassSpec::new(
        "bf",
        PvInner::None,
        Arc::new(|_| Ok(Arc::new(BranchFlags) as Arc<dyn PvAccess>)),
    ));
    reg.core_pvs.push(PvClassSpec::new(
        "branch",
        PvInner::Required,
        Arc::new(|inner| {
            let key = match inner.unwrap_or_default().trim() {
                "uri" => BranchKey::Uri,
                "dst_uri" => BranchKey::DstUri,
                "q" => BranchKey::Q,
                "count" => BranchKey::Count,
                "flags" => BranchKey::Flags,
                other => {
                    return Err(format!(
                        "unknown key `{other}` (siphon has uri, dst_uri, q, flags, count)"
                    ));
                }
            };
            Ok(Arc::new(BranchPv(key)) as Arc<dyn PvAccess>)
        }),
    ));
}

/// `udp:127.0.0.1:5060` (or `127.0.0.1:5060`, or `tcp:[::1]:5060`) when it
/// is one of our listeners.
fn parse_socket(core: &Core, text: &str) -> Option<(Transport, std::net::SocketAddr)> {
    let t = text.trim();
    let (proto, rest) = match t.split_once(':') {
        Some((p, r)) if ["udp", "tcp", "tls"].contains(&p.to_ascii_lowercase().as_str()) => {
            (Some(p.to_ascii_lowercase()), r)
        }
        _ => (None, t),
    };
    let addr: std::net::SocketAddr = rest.parse().ok()?;
    core.bound()
        .iter()
        .find(|b| b.addr == addr && proto.as_deref().is_none_or(|p| p == b.transport.name()))
        .map(|b| (b.transport, b.addr))
}

struct ForcedSocket(Arc<Core>);

impl PvAccess for ForcedSocket {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        match sip(ex).and_then(|s| s.send_socket) {
            Some((t, a)) => Value::from(format!("{}:{a}", t.name())),
            None => Value::Null,
        }
    }
    fn set(&self, ex: &mut Exec<'_>, _: PvIdx, v: Value) -> Result<(), String> {
        let s = sip(ex).ok_or("needs a SIP message")?;
        if v.is_null() {
            s.send_socket = None;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&v.to_bytes()).into_owned();
        s.send_socket = Some(
            parse_socket(&self.0, &text)
                .ok_or_else(|| format!("`{text}` is not one of our listening sockets"))?,
        );
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
}

/// `$T_reply_reason`: the reason phrase of the reply a reply route runs for,
/// or of the picked branch's reply in a failure route.
struct ReplyReason(Arc<Core>);

impl PvAccess for ReplyReason {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        let Some(s) = sip(ex) else { return Value::Null };
        if !s.msg.is_request() {
            return reason_of(&s.msg);
        }
        let Some(id) = s.tx else { return Value::Null };
        self.0
            .tm
            .with(&self.0, id.index, |t, _| t.picked_reply(id).map(reason_of))
            .unwrap_or(Value::Null)
    }
}

fn reason_of(m: &SipMsg) -> Value {
    match m.kind {
        siphon_sip::Kind::Response { reason, .. } => Value::Str(m.slice(reason)),
        _ => Value::Null,
    }
}

struct CheckStatus {
    core: Arc<Core>,
    fixed: Option<regex::Regex>,
    args: Args,
}

impl Call for CheckStatus {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        let re = match &self.fixed {
            Some(r) => r.clone(),
            None => match regex::Regex::new(&self.args.text(0, ex)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(target: "script", "t_check_status: {e}");
                    return (-1).into();
                }
            },
        };
        // A reply route checks its reply; elsewhere the transaction's code
        // (the picked branch's in a failure route), as Kamailio.
        let code = match sip(ex) {
            Some(s) if !s.msg.is_request() => s.msg.status().unwrap_or(0),
            _ => info(&self.core, ex).map_or(0, |(_, i)| i.reply_code),
        };
        truth(code != 0 && re.is_match(&code.to_string()))
    }
}

struct BranchIdx(Arc<Core>);

impl PvAccess for BranchIdx {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        let Some(s) = sip(ex) else { return Value::Null };
        if let Some(b) = s.branch {
            return Value::Int(b as i64);
        }
        let appended = s.branches.len() as i64;
        let created = info(&self.0, ex).map_or(0, |(_, i)| i.branches as i64);
        Value::Int(created + appended)
    }
}

struct BranchFlags;

impl PvAccess for BranchFlags {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        sip(ex).map_or(Value::Null, |s| Value::Int(s.bflags as i64))
    }
    fn set(&self, ex: &mut Exec<'_>, _: PvIdx, v: Value) -> Result<(), String> {
        let s = sip(ex).ok_or("needs a SIP message")?;
        s.bflags = match v {
            Value::Int(i) => i as u64,
            other => String::from_utf8_lossy(&other.to_bytes())
                .trim()
                .parse()
                .map_err(|_| "expects a number")?,
        };
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
}

#[derive(Clone, Copy)]
enum BranchKey {
    Uri,
    DstUri,
    Q,
    Count,
    Flags,
}

struct BranchPv(BranchKey);

impl PvAccess for BranchPv {
    fn get(&self, ex: &mut Exec<'_>, idx: PvIdx) -> Value {
        let Some(s) = sip(ex) else { return Value::Null };
        if let BranchKey::Count = self.0 {
            return Value::Int(s.branches.len() as i64);
        }
        let i = match idx {
            PvIdx::At(i) if i < 0 => s.branches.len() as i64 + i,
            PvIdx::At(i) => i,
            _ => 0,
        };
        let Some(b) = usize::try_from(i).ok().and_then(|i| s.branches.get(i)) else {
            return Value::Null;
        };
        match self.0 {
            BranchKey::Uri => Value::Str(b.uri.clone()),
            BranchKey::DstUri => b.du.clone().map_or(Value::Null, Value::Str),
            BranchKey::Q => b.q.map_or(Value::Int(-1), |q| Value::Int(q as i64)),
            BranchKey::Flags => Value::Int(b.flags as i64),
            BranchKey::Count => Value::Int(s.branches.len() as i64),
        }
    }
}
