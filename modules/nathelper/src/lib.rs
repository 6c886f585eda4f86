//! nathelper (Kamailio), signalling only: finding user agents behind NAT
//! and reaching them at the address their requests came from.
//!
//! - `nat_uac_test(flags)` with Kamailio 5.6's bits: 1 the Contact host is
//!   private (RFC 1918, RFC 6598, RFC 7335), 2 the top Via's host is not the
//!   source address, 4 the top Via's host is private, 8 an SDP media address
//!   is private, 16 the source port is not the Via's (5060 when it has
//!   none), 32 the source address is private, 64 WebSocket (siphon has
//!   none: never), 128 the Contact's port is not the source port, 256 an
//!   SDP session's `c=` is not the source address, 512 the destination
//!   differs from the R-URI (`$du` against the R-URI; for a reply, the
//!   second Via's `received`/`rport` against its host and port).
//! - `fix_nated_contact()`: the first Contact's host and port become the
//!   source's (its `maddr` goes). `set_contact_alias([trim])` appends
//!   `;alias=ip~port~proto` of the source instead; `add_contact_alias()`
//!   inserts it after the host and port unless the Contact already is the
//!   source, `add_contact_alias(ip, port, proto)` with the given values.
//!   `handle_ruri_alias([mode])` reads the first (mode 0) or last alias
//!   parameter of the R-URI into `$du` and removes it.
//! - `fix_nated_register()`: `received_avp` (shared with the registrar) gets
//!   `sip:ip:port[;transport=…]` of the source; `save()` stores it as the
//!   contact's `received`, and `lookup()` sends there.
//! - `add_rcv_param([uri_param])`: `;received="sip:ip:port"` of the source
//!   after every contact (or, with `uri_param`, `;received=sip:ip:port` in
//!   each contact URI, UDP only), for a REGISTER relayed to a registrar.
//!   `set_alias_to_pv(pv)`: `sip:host:port;transport=proto` from the only
//!   contact's `;alias=host~port~proto`.
//! - `is_rfc1918(ip)`.
//! - NAT keepalives ([`keepalive`]): `natping_interval`, `ping_nated_only`,
//!   `sipping_bflag`, `sipping_from`, `sipping_method`,
//!   `natping_disable_bflag`, `force_socket`; RPC `nathelper.enable_ping`.
//!
//! The Contact rewrites change the route's message itself in request,
//! failure and reply routes (so `save()` stores a contact
//! `fix_nated_contact()` fixed, and a relayed reply carries the change), and
//! the branch's header edits in a branch route (the request is shared by
//! every branch). A second rewrite of the same message is refused, as
//! Kamailio's "you can't call fix_nated_contact twice".
//!
//! siphon relays no media: `fix_nated_sdp` is refused at load, and so are
//! the media relay modules ([`media_relays`]: rtpproxy, rtpengine).

pub mod contact;
pub mod keepalive;
pub mod nat;

use bytes::Bytes;
use contact::{ContactAt, first_contact, splice, uri_parts};
use keepalive::{PingConfig, Pinger};
use siphon_script::api::*;
use siphon_script::rpc::{RpcFailure, RpcSpec, StatSource};
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType, Value};
use siphon_sip::HeaderName;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// nathelper's parameters that shape its functions.
#[derive(Debug, Clone)]
pub struct NhConfig {
    /// `received_avp`: the AVP `fix_nated_register` fills (its name).
    pub received_avp: Option<Arc<str>>,
    /// `alias_name` (default `alias`).
    pub alias: String,
    /// `nat_addr_mode` 1 (the default): 192.0.0.0/24 counts as private too.
    pub reserved: bool,
}

/// The loaded module.
pub struct Nathelper {
    cfg: Arc<NhConfig>,
    /// The keepalives, when `natping_interval` is set.
    pinger: Option<Arc<Pinger>>,
}

/// The media relays siphon refuses: `loadmodule "rtpproxy.so"` is an error
/// saying siphon relays no media (registered by the binary with
/// [`siphon_script::Registry::refuse`]).
pub fn media_relays() -> Vec<RefusedModule> {
    const WHY: &str =
        "siphon does not relay media (RTP); its NAT traversal is signalling only (nathelper)";
    vec![
        RefusedModule {
            name: "rtpproxy",
            reason: WHY,
            functions: &[
                "rtpproxy_manage",
                "rtpproxy_offer",
                "rtpproxy_answer",
                "rtpproxy_destroy",
                "rtpproxy_stop_stream2uac",
                "rtpproxy_stop_stream2uas",
                "rtpproxy_stream2uac",
                "rtpproxy_stream2uas",
                "set_rtp_proxy_set",
                "start_recording",
                "unforce_rtp_proxy",
            ],
        },
        RefusedModule {
            name: "rtpengine",
            reason: WHY,
            functions: &[
                "rtpengine_manage",
                "rtpengine_offer",
                "rtpengine_answer",
                "rtpengine_delete",
                "rtpengine_info",
                "block_dtmf",
                "block_media",
                "play_dtmf",
                "play_media",
                "rtpengine_query",
                "rtpengine_query_v",
                "set_rtpengine_set",
                "silence_media",
                "start_forwarding",
                "start_recording",
                "stop_forwarding",
                "stop_media",
                "stop_recording",
                "unblock_dtmf",
                "unblock_media",
                "unsilence_media",
            ],
        },
    ]
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("natping_interval"),
    ParamSpec::int("ping_nated_only"),
    ParamSpec::int("sipping_bflag"),
    ParamSpec::str("sipping_from"),
    ParamSpec::str("sipping_method"),
    ParamSpec::int("natping_disable_bflag"),
    ParamSpec::str("force_socket"),
    ParamSpec::str("received_avp"),
    ParamSpec::int("nat_addr_mode"),
    ParamSpec::str("alias_name"),
    ParamSpec::int("keepalive_timeout"),
    ParamSpec::str("natping_socket"),
    ParamSpec::int("udpping_from_path"),
    ParamSpec::int("filter_server_id"),
    // One task sends every keepalive; Kamailio's timer processes.
    ParamSpec::int("natping_processes").no_effect(),
    // They shape fix_nated_sdp, which siphon refuses.
    ParamSpec::str("nortpproxy_str").no_effect(),
    ParamSpec::int("append_sdp_oldmediaip").no_effect(),
];

/// What `loadmodule "nathelper.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "nathelper",
        params: PARAMS.to_vec(),
        instantiate: Arc::new(|cfg: &ModuleConfig| {
            let (nh, ping) = config(cfg)?;
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5eed, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 40;
            Ok(Arc::new(Nathelper {
                cfg: Arc::new(nh),
                pinger: ping.map(|p| Arc::new(Pinger::new(p, seed))),
            }) as Arc<dyn Module>)
        }),
    }
}

/// `$avp(name)` / `$avp(s:name)` → `name` (as the registrar reads its own).
fn avp_name(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix("$avp(")?.strip_suffix(')')?;
    let inner = inner.strip_prefix("s:").unwrap_or(inner);
    (!inner.is_empty()).then(|| inner.to_string())
}

/// A branch flag parameter (-1: none) as a mask.
fn bflag_mask(cfg: &ModuleConfig, name: &str) -> Result<u64, String> {
    match cfg.int(name).unwrap_or(-1) {
        -1 => Ok(0),
        f @ 0..=63 => Ok(1 << f),
        f => Err(format!(
            "{name} must be a branch flag 0..63 (or -1), not {f}"
        )),
    }
}

/// `force_socket`: `127.0.0.1:5060` or `udp:127.0.0.1:5060`.
fn socket_param(s: &str) -> Result<SocketAddr, String> {
    let addr = s.strip_prefix("udp:").unwrap_or(s);
    addr.parse().map_err(|_| {
        format!("force_socket must be a UDP listener's address (127.0.0.1:5060), not `{s}`")
    })
}

fn config(cfg: &ModuleConfig) -> Result<(NhConfig, Option<PingConfig>), String> {
    for (name, why) in [
        (
            "keepalive_timeout",
            "siphon's keepalives do not expire contacts that stop answering",
        ),
        (
            "udpping_from_path",
            "siphon sends no raw-socket pings from the Path's address",
        ),
        (
            "filter_server_id",
            "siphon has no server_id (one node per location table)",
        ),
    ] {
        if cfg.int(name).unwrap_or(0) != 0 {
            return Err(format!("{name}: {why}; set it to 0 or leave it out"));
        }
    }
    if cfg.str("natping_socket").is_some_and(|s| !s.is_empty()) {
        return Err(
            "natping_socket: siphon sends no raw-socket pings with a spoofed source; use \
             force_socket to choose the listener they leave from"
                .into(),
        );
    }
    let received_avp = match cfg.str("received_avp").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Arc::from(avp_name(&s).ok_or_else(|| {
            format!("received_avp must name an AVP ($avp(name)), not `{s}`")
        })?)),
    };
    let reserved = match cfg.int("nat_addr_mode").unwrap_or(1) {
        0 => false,
        1 => true,
        m => return Err(format!("nat_addr_mode must be 0 or 1, not {m}")),
    };
    let alias = cfg
        .str("alias_name")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "alias".into());
    if !alias
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(format!(
            "alias_name must be a URI parameter name, not `{alias}`"
        ));
    }
    let nh = NhConfig {
        received_avp,
        alias,
        reserved,
    };
    let force_socket = cfg
        .str("force_socket")
        .filter(|s| !s.is_empty())
        .map(|s| socket_param(&s))
        .transpose()?;
    let interval = cfg.int("natping_interval").unwrap_or(0);
    if interval < 0 {
        return Err(format!(
            "natping_interval must not be negative, not {interval}"
        ));
    }
    if interval == 0 {
        return Ok((nh, None));
    }
    let sipping = bflag_mask(cfg, "sipping_bflag")?;
    let from = cfg.str("sipping_from").filter(|s| !s.is_empty());
    let method = cfg
        .str("sipping_method")
        .unwrap_or_else(|| "OPTIONS".into());
    if sipping != 0 {
        if from.is_none() {
            return Err(
                "sipping_bflag is set, but sipping_from is empty: SIP pings need a From URI".into(),
            );
        }
        if method.is_empty() || !method.bytes().all(|c| c.is_ascii_alphabetic()) {
            return Err(format!(
                "sipping_method must be a SIP method, not `{method}`"
            ));
        }
    }
    let ping = PingConfig {
        interval: interval as u64,
        nated_only: cfg.int("ping_nated_only").unwrap_or(0) != 0,
        sipping,
        disable: bflag_mask(cfg, "natping_disable_bflag")?,
        from,
        method,
        force_socket,
    };
    Ok((nh, Some(ping)))
}

fn sip<'a>(ex: &'a mut Exec<'_>) -> Option<&'a mut SipCtx> {
    ex.ctx.ext.get_mut::<SipCtx>()
}

fn code(b: bool) -> FnResult {
    if b { 1.into() } else { (-1).into() }
}

/// The message whose Contact nathelper rewrote (its buffer after the
/// change): a second rewrite of it is refused.
struct ContactChanged(Bytes);

/// Whether the message's Contact was already rewritten (here, or by the
/// branch's edits).
fn contact_changed(ex: &Exec<'_>, at: &ContactAt) -> bool {
    let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
        return false;
    };
    ex.ctx
        .ext
        .get::<ContactChanged>()
        .is_some_and(|c| c.0.as_ptr() == s.msg.buf().as_ptr() && c.0.len() == s.msg.buf().len())
        || s.edits.remove.contains(&at.header)
}

/// Applies `splices` (ranges of the message buffer, in order, all inside
/// the Contact header `at`) to the route's message: the message itself,
/// or in a branch route the branch's header edits. Returns 1, or -1 when
/// the result does not parse.
fn change_contact(ex: &mut Exec<'_>, at: &ContactAt, splices: &[(Range<usize>, Vec<u8>)]) -> i32 {
    let branch = ex.ctx.route_type == RouteType::BRANCH;
    let Some(s) = sip(ex) else { return -1 };
    if branch {
        let line = s.msg.headers[at.header].line.range();
        let rel: Vec<(Range<usize>, Vec<u8>)> = splices
            .iter()
            .map(|(r, b)| (r.start - line.start..r.end - line.start, b.clone()))
            .collect();
        let new_line = splice(&s.msg.buf()[line], &rel);
        s.edits.remove.push(at.header);
        s.edits
            .insert
            .push((siphon_sip::At::After(at.header), Bytes::from(new_line)));
        return 1;
    }
    let out = Bytes::from(splice(s.msg.buf(), splices));
    match siphon_sip::parse(out) {
        Ok(m) => {
            s.msg = m;
            let buf = s.msg.buf().clone();
            ex.ctx.ext.insert(ContactChanged(buf));
            1
        }
        Err(e) => {
            tracing::error!(target: "script", "nathelper: the message with the new Contact does not parse: {e}");
            -1
        }
    }
}

/// The first contact, unless it was rewritten already (logged as Kamailio does).
fn contact_to_change(ex: &mut Exec<'_>, func: &str) -> Option<ContactAt> {
    let at = first_contact(&sip(ex)?.msg)?;
    if contact_changed(ex, &at) {
        tracing::error!(target: "script", "{func}: you can't update the Contact twice, check your config!");
        return None;
    }
    Some(at)
}

/// `fix_nated_contact()`.
fn fix_nated_contact(ex: &mut Exec<'_>) -> i32 {
    let Some(at) = contact_to_change(ex, "fix_nated_contact") else {
        return -1;
    };
    let Some(s) = sip(ex) else { return -1 };
    let Some(new) = contact::fixed_contact(&s.msg.buf()[at.uri.clone()], s.peer.src) else {
        return -1;
    };
    change_contact(ex, &at, &[(at.uri.clone(), new)])
}

/// `set_contact_alias([trim])`.
fn set_contact_alias(ex: &mut Exec<'_>, cfg: &NhConfig, trim: bool) -> i32 {
    let Some(at) = contact_to_change(ex, "set_contact_alias") else {
        return -1;
    };
    let Some(s) = sip(ex) else { return -1 };
    let uri = &s.msg.buf()[at.uri.clone()];
    let mut new = match trim.then(|| contact::trim_rcv_alias(uri, &cfg.alias)) {
        Some(Some(t)) => t,
        _ => uri.to_vec(),
    };
    let proto = contact::transport_number(s.peer.transport);
    new.extend_from_slice(contact::rcv_alias(&cfg.alias, s.peer.src, proto).as_bytes());
    if !at.bracketed {
        new.insert(0, b'<');
        new.push(b'>');
    }
    change_contact(ex, &at, &[(at.uri.clone(), new)])
}

/// `add_contact_alias()` (`given`: None) or `add_contact_alias(ip, port, proto)`.
fn add_contact_alias(ex: &mut Exec<'_>, cfg: &NhConfig, given: Option<[String; 3]>) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    if s.msg.header(HeaderName::Contact).is_none() {
        return 2;
    }
    let (src, proto) = (s.peer.src, contact::transport_number(s.peer.transport));
    let Some(at) = first_contact(&s.msg) else {
        tracing::error!(target: "script", "add_contact_alias: failed to get the contact URI");
        return -1;
    };
    let Some(parts) = uri_parts(&s.msg.buf()[at.uri.clone()]) else {
        return -1;
    };
    let param = match given {
        None => {
            let same_port =
                parts.port == Some(src.port()) || (parts.port.is_none() && src.port() == 5060);
            if parts.ip == Some(src.ip()) && same_port && parts.proto == proto {
                return 2;
            }
            contact::rcv_alias(&cfg.alias, src, proto)
        }
        Some([ip, port, p]) => {
            if nat::parse_ip(ip.as_bytes()).is_none() {
                tracing::error!(target: "script", "add_contact_alias: `{ip}` is not an IP address");
                return -1;
            }
            if !matches!(port.parse::<u32>(), Ok(1..=65535)) {
                tracing::error!(target: "script", "add_contact_alias: `{port}` is not a port");
                return -1;
            }
            let Some(n) = contact::proto_number(p.as_bytes()) else {
                tracing::error!(target: "script", "add_contact_alias: `{p}` is not a known protocol");
                return -1;
            };
            format!(";{}={ip}~{port}~{n}", cfg.alias)
        }
    };
    if contact_changed(ex, &at) {
        tracing::error!(target: "script", "add_contact_alias: you can't call add_contact_alias twice, check your config!");
        return -1;
    }
    let Some(s) = sip(ex) else { return -1 };
    let value = &s.msg.buf()[at.value.clone()];
    let bare = !value.contains(&b'<');
    let mut splices = Vec::new();
    if bare {
        let body = at.value.start + (value.len() - value.trim_ascii_start().len());
        splices.push((body..body, b"<".to_vec()));
    }
    let after = at.uri.start + parts.host_port.end;
    let mut text = param.into_bytes();
    if bare {
        text.push(b'>');
    }
    splices.push((after..after, text));
    change_contact(ex, &at, &splices)
}

/// `handle_ruri_alias([mode])`: 1 done, 2 no alias parameter, -1 error.
fn handle_ruri_alias(ex: &mut Exec<'_>, cfg: &NhConfig, last: bool) -> i32 {
    let Some(s) = sip(ex).filter(|s| s.msg.is_request()) else {
        return -1;
    };
    match contact::handle_alias(&s.ruri(), &cfg.alias, last) {
        Ok(Some(a)) => {
            s.du = Some(Bytes::from(a.dst));
            s.edits.ruri = Some(Bytes::from(a.ruri));
            s.ruri_consumed = false;
            1
        }
        Ok(None) => 2,
        Err(e) => {
            tracing::error!(target: "script", "handle_ruri_alias: {e}");
            -1
        }
    }
}

/// `sip:ip:port` of where a message came from (`;transport=` unless UDP):
/// Kamailio's `get_src_uri`.
fn source_uri(s: &SipCtx) -> String {
    let mut u = format!("sip:{}", contact::host_port(s.peer.src));
    if s.peer.transport != siphon_script::net::Transport::Udp {
        u.push_str(";transport=");
        u.push_str(s.peer.transport.name());
    }
    u
}

/// `add_rcv_param([uri_param])`: `;received="sip:ip:port"` (the source,
/// Kamailio's `get_src_uri`) after every contact of every Contact header,
/// or with `uri_param` `;received=sip:ip:port` at the end of each contact
/// URI (UDP only, as Kamailio). 1, also without a Contact or for `*`.
fn add_rcv_param(ex: &mut Exec<'_>, uri_param: bool) -> i32 {
    let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
        return -1;
    };
    // A Contact nathelper rewrote stays rewritten for its checks.
    let was_changed =
        ex.ctx.ext.get::<ContactChanged>().is_some_and(|c| {
            c.0.as_ptr() == s.msg.buf().as_ptr() && c.0.len() == s.msg.buf().len()
        });
    let Some(s) = sip(ex) else { return -1 };
    if uri_param && s.peer.transport != siphon_script::net::Transport::Udp {
        tracing::error!(target: "script", "add_rcv_param: adding received parameter to Contact URI works only for UDP");
        return -1;
    }
    let Some(contacts) = contact::all_contacts(&s.msg) else {
        tracing::error!(target: "script", "add_rcv_param: error while parsing Contact");
        return -1;
    };
    if contacts.is_empty() {
        return 1;
    }
    let uri = source_uri(s);
    let splices: Vec<(Range<usize>, Vec<u8>)> = contacts
        .iter()
        .map(|c| {
            if uri_param {
                (
                    c.uri.end..c.uri.end,
                    format!(";received={uri}").into_bytes(),
                )
            } else {
                (
                    c.whole.end..c.whole.end,
                    format!(";received=\"{uri}\"").into_bytes(),
                )
            }
        })
        .collect();
    let out = Bytes::from(splice(s.msg.buf(), &splices));
    match siphon_sip::parse(out) {
        Ok(m) => {
            s.msg = m;
            if was_changed {
                let buf = s.msg.buf().clone();
                ex.ctx.ext.insert(ContactChanged(buf));
            }
            1
        }
        Err(e) => {
            tracing::error!(target: "script", "add_rcv_param: the message with the received parameters does not parse: {e}");
            -1
        }
    }
}

/// `set_alias_to_pv(pv)`: `pv` gets `sip:host:port;transport=proto` from
/// the `;alias=host~port~proto` of the message's only contact (-1 without
/// one, with several, or without an alias).
fn set_alias_to_pv(ex: &mut Exec<'_>, cfg: &NhConfig, pv: &siphon_script::pv::Pv) -> i32 {
    let Some(s) = sip(ex) else { return -1 };
    let Some(c) = contact::only_contact(&s.msg) else {
        tracing::error!(target: "script", "set_alias_to_pv: no Contact header with one contact");
        return -1;
    };
    let uri = match contact::alias_to_uri(&s.msg.buf()[c.whole], &cfg.alias) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(target: "script", "set_alias_to_pv: {e}");
            return -1;
        }
    };
    match ex.set_pv(pv, Value::from(uri), false) {
        Ok(()) => 1,
        Err(e) => {
            tracing::error!(target: "script", "set_alias_to_pv: {}: {e}", pv.text());
            -1
        }
    }
}

/// `fix_nated_register()`.
fn fix_nated_register(ex: &mut Exec<'_>, cfg: &NhConfig) -> i32 {
    let Some(name) = &cfg.received_avp else {
        return 1;
    };
    let Some(s) = sip(ex) else { return -1 };
    let uri = source_uri(s);
    ex.ctx.avps.push(name, Value::from(uri));
    1
}

/// Whether the Via's host is not `src` (Kamailio's `received_via_test`,
/// without DNS: a name never matches).
fn via_host_differs(host: &[u8], src: IpAddr) -> bool {
    nat::parse_ip(host) != Some(src)
}

/// The SDP sessions of the message's body, when it is SDP.
fn sdp(s: &SipCtx) -> Option<Vec<nat::Session>> {
    let ct = s.msg.value(HeaderName::ContentType)?;
    let ct = String::from_utf8_lossy(&ct).to_ascii_lowercase();
    if !ct.trim_start().starts_with("application/sdp") {
        return None;
    }
    nat::sdp_sessions(&s.msg.body_bytes())
}

/// The Via values of a message, in order.
fn vias(s: &SipCtx) -> Vec<siphon_sip::Via> {
    s.msg
        .headers
        .iter()
        .filter(|h| h.name == HeaderName::Via)
        .flat_map(|h| {
            let v = s.msg.header_value(h);
            siphon_sip::split_commas(&v)
                .into_iter()
                .filter_map(|r| siphon_sip::parse_via(&v.slice(r.range())))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Port a URI or Via means when it writes none (5061 for TLS).
fn default_port(port: Option<u16>, tls: bool) -> u16 {
    port.unwrap_or(if tls { 5061 } else { 5060 })
}

/// Two hosts name different places: names compared as text, addresses as
/// addresses, a name and an address always differ.
fn hosts_differ(a: &[u8], b: &[u8]) -> bool {
    match (nat::parse_ip(a), nat::parse_ip(b)) {
        (Some(x), Some(y)) => x != y,
        (None, None) => a != b,
        _ => true,
    }
}

/// `nat_uac_test` 512: where the message goes is not what its R-URI (a
/// request) or second Via (a reply) says.
fn destination_differs(s: &SipCtx) -> bool {
    let is_ws = |t: Option<&[u8]>| {
        t.is_some_and(|t| t.eq_ignore_ascii_case(b"ws") || t.eq_ignore_ascii_case(b"wss"))
    };
    if !s.msg.is_request() {
        let Some(v2) = vias(s).into_iter().nth(1) else {
            return false;
        };
        if is_ws(Some(&v2.transport)) {
            return true;
        }
        let tls = v2.transport.eq_ignore_ascii_case(b"tls");
        if let Some(Some(rport)) = v2.rport
            && rport != 0
            && rport != default_port(v2.port, tls)
        {
            return true;
        }
        return match &v2.received {
            Some(r) => hosts_differ(&v2.host, r),
            None => false,
        };
    }
    let ruri = s.ruri();
    let Ok(r) = siphon_sip::parse_uri(&ruri) else {
        return false;
    };
    let Some(du) = &s.du else {
        return is_ws(r.param(b"transport"));
    };
    let Ok(d) = siphon_sip::parse_uri(du) else {
        return false;
    };
    if is_ws(d.param(b"transport")) {
        return true;
    }
    let tls = |u: &siphon_sip::Uri<'_>| {
        u.param(b"transport")
            .is_some_and(|t| t.eq_ignore_ascii_case(b"tls"))
    };
    if default_port(d.port, tls(&d)) != default_port(r.port, tls(&r)) {
        return true;
    }
    hosts_differ(r.host, d.host)
}

/// `nat_uac_test(tests)`: whether any of the tests says NAT.
pub fn nat_uac_test(s: &SipCtx, tests: i64, reserved: bool) -> bool {
    let src = s.peer.src;
    let via = s.msg.top_via();
    if tests & 16 != 0 && via.is_some_and(|v| src.port() != v.port.unwrap_or(5060)) {
        return true;
    }
    if tests & 2 != 0 && via.is_some_and(|v| via_host_differs(&v.host, src.ip())) {
        return true;
    }
    let contact = || {
        let at = first_contact(&s.msg)?;
        let uri = &s.msg.buf()[at.uri];
        let u = siphon_sip::parse_uri(uri).ok()?;
        Some((u.host.to_vec(), u.port))
    };
    if tests & 1 != 0
        && contact().is_some_and(|(h, _)| nat::is_private_text(&h, reserved) == Some(true))
    {
        return true;
    }
    if tests & 8 != 0 && sdp(s).is_some_and(|ss| nat::sdp_has_private(&ss, reserved)) {
        return true;
    }
    if tests & 4 != 0 && via.is_some_and(|v| nat::is_private_text(&v.host, reserved) == Some(true))
    {
        return true;
    }
    if tests & 32 != 0
        && let IpAddr::V4(ip) = src.ip()
        && nat::is_private(ip, reserved)
    {
        return true;
    }
    // 64 (WebSocket): siphon has no WebSocket transport.
    if tests & 128 != 0 && contact().is_some_and(|(_, p)| p.unwrap_or(5060) != src.port()) {
        return true;
    }
    if tests & 256 != 0
        && sdp(s)
            .and_then(|ss| nat::sdp_cline_mismatches(&ss, src.ip()))
            .is_some_and(|n| n > 0)
    {
        return true;
    }
    tests & 512 != 0 && destination_differs(s)
}

/// `fix_nated_sdp` is refused at load: siphon rewrites no SDP.
fn fix_nated_sdp_refused(_: Args) -> Result<Box<dyn Call>, String> {
    Err(
        "siphon does not rewrite SDP bodies (it relays no media): fix_nated_sdp is not \
         available; the user agents' own addresses stay in the SDP"
            .into(),
    )
}

impl Module for Nathelper {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::*;
        let req_reply_branch = RouteType::REQUEST
            .or(RouteType::ONREPLY)
            .or(RouteType::BRANCH);
        let c = self.cfg.clone();
        let reserved = self.cfg.reserved;
        let nat_uac = FunctionSpec::new("nat_uac_test", &[Int], move |ex, a| {
            let Some(tests) = a.int(0, ex) else {
                tracing::error!(target: "script", "nat_uac_test: the flags are not a number");
                return (-1).into();
            };
            code(sip(ex).is_some_and(|s| nat_uac_test(s, tests, reserved)))
        })
        .routes(req_reply_branch.or(RouteType::FAILURE));
        let fix_contact = FunctionSpec::new("fix_nated_contact", &[], |ex, _| {
            fix_nated_contact(ex).into()
        })
        .routes(req_reply_branch);
        let set_alias = FunctionSpec::new("set_contact_alias", &[Int], move |ex, a| {
            let trim = !a.is_empty() && a.int(0, ex).unwrap_or(0) > 0;
            set_contact_alias(ex, &c, trim).into()
        })
        .min_args(0)
        .routes(req_reply_branch);
        let c = self.cfg.clone();
        let add_alias = FunctionSpec::checked(
            "add_contact_alias",
            &[Str, Str, Str],
            |a| match a.len() {
                0 | 3 => Ok(()),
                n => Err(format!(
                    "takes no argument or three (ip, port, proto), not {n}"
                )),
            },
            move |ex, a| {
                let given = (a.len() == 3).then(|| [a.text(0, ex), a.text(1, ex), a.text(2, ex)]);
                add_contact_alias(ex, &c, given).into()
            },
        )
        .min_args(0)
        .routes(req_reply_branch.or(RouteType::FAILURE));
        let c = self.cfg.clone();
        let handle_alias = FunctionSpec::new("handle_ruri_alias", &[Int], move |ex, a| {
            let last = !a.is_empty() && a.int(0, ex).unwrap_or(0) != 0;
            handle_ruri_alias(ex, &c, last).into()
        })
        .min_args(0)
        .routes(RouteType::REQUEST.or(RouteType::BRANCH));
        let c = self.cfg.clone();
        let fix_register = FunctionSpec::new("fix_nated_register", &[], move |ex, _| {
            fix_nated_register(ex, &c).into()
        })
        .routes(RouteType::REQUEST);
        let is_rfc1918 = FunctionSpec::new("is_rfc1918", &[Str], move |ex, a| {
            let ip = a.bytes(0, ex);
            if ip.is_empty() {
                tracing::error!(target: "script", "is_rfc1918: invalid address parameter");
                return (-2).into();
            }
            code(nat::is_private_text(&ip, reserved) == Some(true))
        });
        let rcv_param = FunctionSpec::new("add_rcv_param", &[Int], |ex, a| {
            let uri_param = !a.is_empty() && a.int(0, ex).unwrap_or(0) != 0;
            add_rcv_param(ex, uri_param).into()
        })
        .min_args(0)
        .routes(RouteType::REQUEST);
        let c = self.cfg.clone();
        let alias_to_pv = FunctionSpec::new("set_alias_to_pv", &[PvWritable], move |ex, a| {
            let Some(pv) = a.pv(0).cloned() else {
                return (-1).into();
            };
            set_alias_to_pv(ex, &c, &pv).into()
        });
        let fix_sdp = FunctionSpec::with_bind(
            "fix_nated_sdp",
            &[Int, Str],
            Arc::new(fix_nated_sdp_refused),
        )
        .min_args(1);
        vec![
            nat_uac,
            fix_contact,
            set_alias,
            add_alias,
            handle_alias,
            fix_register,
            is_rfc1918,
            rcv_param,
            alias_to_pv,
            fix_sdp,
        ]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let pinger = self.pinger.clone();
        let spec = RpcSpec::new(
            "nathelper.enable_ping",
            "nathelper.enable_ping 0|1 Stop or resume the NAT keepalives",
            move |c| {
                let Some(p) = &pinger else {
                    return Err(RpcFailure {
                        code: 500,
                        message: "NATping disabled".into(),
                    });
                };
                let Some(v) = c.int(0) else {
                    return Err(RpcFailure {
                        code: 500,
                        message: "No parameter".into(),
                    });
                };
                p.enabled.store(v != 0, Ordering::Relaxed);
                Ok(serde_json::Value::Null)
            },
        )
        .changes_state();
        vec![spec]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        self.pinger
            .clone()
            .map(|p| Arc::new(Stats(p)) as Arc<dyn StatSource>)
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let Some(p) = self.pinger.clone() else {
            return Ok(());
        };
        let loc = cx
            .program
            .modules()
            .iter()
            .find_map(|(_, m)| m.location())
            .ok_or("natping_interval needs the location tables: add loadmodule \"usrloc.so\"")?;
        if p.cfg.nated_only && loc.nat_bflag().is_none() {
            return Err("ping_nated_only is set, but usrloc has no nat_bflag: set \
                 modparam(\"usrloc\", \"nat_bflag\", N)"
                .into());
        }
        let host = cx.host.clone();
        let shutdown = host.shutdown();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut part = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                p.round(&*loc, &*host, part);
                part = (part + 1) % p.cfg.interval;
            }
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `nathelper:` statistics (siphon's; Kamailio's nathelper keeps none).
struct Stats(Arc<Pinger>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let p = &self.0;
        vec![
            (
                "nathelper:natping_sent".into(),
                p.sent.load(Ordering::Relaxed) as i64,
            ),
            (
                "nathelper:natping_failed".into(),
                p.failed.load(Ordering::Relaxed) as i64,
            ),
            (
                "nathelper:natping_skipped".into(),
                p.skipped.load(Ordering::Relaxed) as i64,
            ),
        ]
    }
    fn reset(&self, name: &str) {
        let p = &self.0;
        match name {
            "nathelper:natping_sent" => p.sent.store(0, Ordering::Relaxed),
            "nathelper:natping_failed" => p.failed.store(0, Ordering::Relaxed),
            "nathelper:natping_skipped" => p.skipped.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
