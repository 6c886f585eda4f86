//! The module API: how the core and each seed module plug into the route engine.
//!
//! A module is described by a [`ModuleDef`] (its name and typed parameters).
//! Once the configuration's `modparam`s are known, the definition's
//! `instantiate` builds the [`Module`], which lists its script functions
//! ([`FunctionSpec`]), pseudo-variable classes ([`PvClassSpec`]) and event
//! routes, and starts its I/O tasks after the program is compiled, with a
//! handle on its [`Host`] (the SIP core) in the [`StartCx`].
//!
//! Script functions are bound once at load ("fixup"): arguments are parsed,
//! PVs resolved, constant strings kept, route names checked. At run time a
//! function returns a Kamailio code (>0 true, <0 false, 0 stops the script)
//! or asks to suspend the transaction ([`FnResult::Suspend`]).
//!
//! A module asks its host to run its routes instead of keeping the program
//! to run them itself. [`Host::run_event_route`] runs a route found by its
//! Kamailio name (`event_route[evapi:message-received]`) or by id over a
//! context the module's builder fills, and answers how it ended
//! ([`EventRun`]: now, or later through a [`PendingRun`] when an async call
//! parked it). [`Host::may_suspend`] tells a function whether an async call
//! can suspend the route it runs in ([`SuspendHere`]: a transaction, a
//! parked event run, or nothing), and [`Host::resume`] resumes a suspension
//! by its [`SuspensionId`], so an answer that comes back by another path
//! than the [`Resumer`] (a reply to this node over NATS) finds it.

use crate::ctx::{Ctx, RouteType};
use crate::http::HttpService;
use crate::interp::Exec;
use crate::net::Peer;
use crate::pv::Pv;
use crate::value::Value;
use crate::{Program, RouteId};
use bytes::Bytes;
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;

// ---------- module definitions and parameters ----------

/// The type of a module parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// An integer (`yes`/`no` are 1/0).
    Int,
    /// A string.
    Str,
    /// Either (Kamailio's "int or str", e.g. `fifo_user`).
    IntOrStr,
}

/// One declared module parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// The name used in `modparam`.
    pub name: &'static str,
    /// Its type.
    pub kind: ParamKind,
    /// Whether it may be given several times (each value is kept).
    pub multi: bool,
    /// Accepted for compatibility but has no effect in siphon (a warning says so).
    pub no_effect: bool,
    /// Checks each value at its `modparam` (the error is reported there).
    pub check: Option<ParamCheck>,
}

/// Checks a [`ParamSpec`]'s value; the error says why it is refused.
pub type ParamCheck = fn(&ParamValue) -> Result<(), String>;

impl ParamSpec {
    /// An integer parameter.
    pub const fn int(name: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Int,
            multi: false,
            no_effect: false,
            check: None,
        }
    }
    /// A string parameter.
    pub const fn str(name: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Str,
            multi: false,
            no_effect: false,
            check: None,
        }
    }
    /// An int-or-string parameter.
    pub const fn int_or_str(name: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::IntOrStr,
            multi: false,
            no_effect: false,
            check: None,
        }
    }
    /// May be given several times.
    pub const fn multi(mut self) -> Self {
        self.multi = true;
        self
    }
    /// Accepted, with a warning that it has no effect.
    pub const fn no_effect(mut self) -> Self {
        self.no_effect = true;
        self
    }
    /// Each value is checked by `f` at its `modparam`.
    pub const fn check(mut self, f: ParamCheck) -> Self {
        self.check = Some(f);
        self
    }
}

/// A module parameter value as given in `modparam`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
}

/// The `modparam` values given for one module, plus the core parameters.
#[derive(Debug, Clone, Default)]
pub struct ModuleConfig {
    /// Values by parameter name, in the order given.
    pub params: HashMap<String, Vec<ParamValue>>,
    /// The core (global) parameters.
    pub core: crate::core::CoreParams,
}

impl ModuleConfig {
    /// The last value given for an integer parameter.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.params.get(name)?.last()? {
            ParamValue::Int(n) => Some(*n),
            ParamValue::Str(s) => s.trim().parse().ok(),
        }
    }
    /// The last value given for a string parameter.
    pub fn str(&self, name: &str) -> Option<String> {
        match self.params.get(name)?.last()? {
            ParamValue::Int(n) => Some(n.to_string()),
            ParamValue::Str(s) => Some(s.clone()),
        }
    }
    /// Every value given for a parameter.
    pub fn all(&self, name: &str) -> &[ParamValue] {
        self.params.get(name).map_or(&[], Vec::as_slice)
    }
}

/// Builds a module from its configuration; an error is reported at `loadmodule`.
pub type Instantiate = Arc<dyn Fn(&ModuleConfig) -> Result<Arc<dyn Module>, String> + Send + Sync>;

/// What `loadmodule "name"` finds.
#[derive(Clone)]
pub struct ModuleDef {
    /// The module name (`jsonrpcc`).
    pub name: &'static str,
    /// Its parameters.
    pub params: Vec<ParamSpec>,
    /// Builds the module.
    pub instantiate: Instantiate,
}

/// A Kamailio module siphon knows and does not have, with why: its
/// `loadmodule` is an error that says so (instead of "not available"), and
/// its `modparam`s and function calls are not reported again.
#[derive(Debug, Clone, Copy)]
pub struct RefusedModule {
    /// The module name (`rtpproxy`).
    pub name: &'static str,
    /// Why siphon does not have it, and what to do instead.
    pub reason: &'static str,
    /// Its script functions (`rtpproxy_manage` …).
    pub functions: &'static [&'static str],
}

impl std::fmt::Debug for ModuleDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleDef")
            .field("name", &self.name)
            .finish()
    }
}

/// Context handed to [`Module::start`] once the program exists.
#[non_exhaustive]
pub struct StartCx {
    /// The compiled program, to read at start (route ids to resume in,
    /// the event interface, other modules). Routes a module runs go
    /// through [`Host::run_event_route`], not through a copy of it; a
    /// script function has it as [`Exec::prog`], and
    /// [`Program::to_shared`] for the work it starts.
    pub program: Arc<Program>,
    /// The host: what the SIP core offers modules.
    pub host: Arc<dyn Host>,
}

impl StartCx {
    /// A start context for `program`, hosted by `host`.
    pub fn new(program: Arc<Program>, host: Arc<dyn Host>) -> Self {
        StartCx { program, host }
    }
}

/// What the host (the SIP core) offers a module from [`Module::start`] on
/// ([`StartCx::host`]), so that no module depends on the core. Suspension
/// goes through [`FnResult::Suspend`]; resumption through the [`Resumer`]
/// the host hands the suspension's start, or [`Host::resume`] by id. Event
/// routes run through [`Host::run_event_route`]: no module keeps the
/// program to run them itself.
pub trait Host: Send + Sync {
    /// Cancelled when siphon stops: the module's listeners and tasks end on it.
    fn shutdown(&self) -> CancellationToken;
    /// Hands the HTTP connections of the SIP TCP listeners to `service`
    /// (xhttp's). Only the first registration takes effect: false for a later one.
    fn set_http_service(&self, service: Arc<dyn HttpService>) -> bool;
    /// Makes `raw`, a request received from `peer` in SIP's shape (xhttp's
    /// HTTP requests: request line, headers, Content-Length, body), the
    /// message of `ctx`, so the SIP pseudo-variables (`$hdr`, `$rb`, `$rm`,
    /// `$si`…) read it. The error says why it does not parse.
    fn set_http_message(&self, ctx: &mut Ctx, raw: Bytes, peer: Peer) -> Result<(), String>;
    /// Answers the request of `ctx` (a route's SIP message) with `code` and
    /// `reason`; the reply carries the lines `append_to_reply` collected, then
    /// `extra` (whole header lines with CRLF: `Unsupported: foo\r\n`,
    /// `Contact: …\r\n`). The error says why nothing was sent (not a request,
    /// an ACK, no transaction for [`ReplyMode::Stateful`] …).
    fn reply(
        &self,
        _ctx: &mut Ctx,
        _code: u16,
        _reason: &str,
        _extra: &[Bytes],
        _mode: ReplyMode,
    ) -> Result<(), String> {
        Err("this host sends no SIP replies".into())
    }
    /// Calls `hook` each time a transaction whose request carries message
    /// flags (`setflag`) sends its final reply upstream (Kamailio's
    /// TMCB_RESPONSE_OUT for a final, as acc uses it). False when this host
    /// has no transactions.
    fn on_transaction_final(&self, _hook: TxFinalHook) -> bool {
        false
    }
    /// The UDP listener a datagram to `to` leaves from: `from` when it is one
    /// of ours, else the first UDP listener of `to`'s address family; with
    /// the sent-by of its Via. `None`: no UDP listener for that family.
    fn udp_listener(&self, _to: SocketAddr, _from: Option<SocketAddr>) -> Option<UdpListener> {
        None
    }
    /// Sends `data` as one datagram from our UDP listener `from` to `to`
    /// (stateless: nathelper's NAT keepalives). Never waits: a full socket
    /// buffer drops it. The error says why it was not sent.
    fn send_udp(&self, _from: SocketAddr, _to: SocketAddr, _data: Bytes) -> Result<(), String> {
        Err("this host sends no datagrams".into())
    }
    /// The id of a route by its Kamailio name (`event_route[xhttp:request]`,
    /// `route[NAME]`; see [`Program::find_route`]), for a module that runs it
    /// often to look it up once at start. `None`: the configuration has no
    /// such route.
    fn find_route(&self, _name: &str) -> Option<RouteId> {
        None
    }
    /// Runs `route` for a module (an `event_route[…]`, or the `route[…]` an
    /// async call names when there is nothing to suspend) over a fresh event
    /// context that `build` fills first (the module's extensions: an HTTP
    /// exchange, an evapi client, a result to read). `suspend` says whether
    /// an async call in it may park it ([`EventSuspend`]). The route runs on
    /// the calling thread; its end comes back now ([`EventRun::Done`]), or,
    /// parked, once it is resumed and ends ([`EventRun::Pending`]). Nothing
    /// runs when there is no such route or `build` refuses ([`RunError`]).
    fn run_event_route(
        &self,
        route: RouteRef<'_>,
        _suspend: EventSuspend,
        _build: BuildCtx<'_>,
    ) -> Result<EventRun, RunError> {
        Err(RunError::NoRoute(route.to_string()))
    }
    /// What an async call may do in the route `ctx` runs (Kamailio decides
    /// by the transaction, not by the route type): suspend the request's
    /// transaction, park an event run started with [`EventSuspend::Park`],
    /// or nothing (the call fails, or runs its route on a context of its
    /// own later).
    fn may_suspend(&self, ctx: &Ctx) -> SuspendHere {
        crate::event_run::suspend_here(ctx)
    }
    /// Resumes the suspension `id` in `route` after `fill` wrote into its
    /// context, as its [`Resumer`] would: exactly once, false (and counted)
    /// when it is gone, was already resumed, or is not this host's. For
    /// answers that come back by another path than the resumer (an id sent
    /// with a request, a reply to this node).
    fn resume(&self, _id: SuspensionId, _route: RouteId, _fill: ResumeFill) -> bool {
        false
    }
}

// ---------- routes run by the host ----------

/// A route a module asks its host to run ([`Host::run_event_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRef<'a> {
    /// By its Kamailio name: `event_route[evapi:connection-new]`, or
    /// `route[NAME]` for a route of the main table.
    Name(&'a str),
    /// By id: a route argument bound at load, or one [`Host::find_route`]
    /// found at start (a route run for every request).
    Id(RouteId),
}

impl<'a> From<&'a str> for RouteRef<'a> {
    fn from(name: &'a str) -> Self {
        RouteRef::Name(name)
    }
}

impl From<RouteId> for RouteRef<'_> {
    fn from(id: RouteId) -> Self {
        RouteRef::Id(id)
    }
}

impl std::fmt::Display for RouteRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRef::Name(n) => f.write_str(n),
            RouteRef::Id(id) => write!(f, "route #{}", id.0),
        }
    }
}

/// Fills the context of a route [`Host::run_event_route`] runs, before it
/// runs; an error means nothing runs ([`RunError::NotBuilt`]).
pub type BuildCtx<'a> = Box<dyn FnOnce(&mut Ctx) -> Result<(), String> + Send + 'a>;

/// Whether an async call may suspend a route [`Host::run_event_route`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSuspend {
    /// No: as in Kamailio, an event route has no transaction to suspend,
    /// so an async call in it fails, or runs its route on a context of its
    /// own later ([`SuspendHere::No`]).
    Refuse,
    /// Yes: when an async call suspends the route, the host parks its
    /// context ([`SuspendHere::Event`]) until the call's [`Resumer`] (or
    /// [`Host::resume`]) continues it in the call's route; the run answers
    /// [`EventRun::Pending`]. A parked run lives until it is resumed: a
    /// module that allows it resumes every suspension it starts (with an
    /// error when its I/O fails or times out).
    Park,
}

/// What an async call may do where it is called ([`Host::may_suspend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendHere {
    /// Nothing can wait here: a reply or branch route, an ACK, an event
    /// route run with [`EventSuspend::Refuse`].
    No,
    /// The request's transaction (created if needed) is suspended:
    /// `$T(id_index)`/`$T(id_label)` name it and `t_continue` resumes it.
    Transaction,
    /// The event run is parked by the host; its [`Resumer`], or
    /// [`Host::resume`] with its [`SuspensionId`], resumes it (there is no
    /// transaction for `t_continue`).
    Event,
}

/// One suspension, as [`Host::resume`] finds it: plain data, so it can
/// travel with a request and come back with its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SuspensionId {
    /// A suspended transaction (`$T(id_index)`, `$T(id_label)`).
    Transaction(siphon_sip::TxId),
    /// An event run the host parked, by the number it gave it.
    Event(u64),
}

impl SuspensionId {
    /// The suspension `ctx` is in, as [`Suspend::start`] sees it: an event
    /// run's while it is parked, else its transaction's. `None`: neither.
    pub fn of(ctx: &Ctx) -> Option<SuspensionId> {
        crate::event_run::parked_as(ctx)
            .map(SuspensionId::Event)
            .or_else(|| {
                let tx = ctx.ext.get::<crate::sip::SipCtx>()?.tx?;
                Some(SuspensionId::Transaction(tx))
            })
    }
}

/// Why [`Host::run_event_route`] ran nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration has no such route (or the host runs none).
    #[error("the configuration has no {0}")]
    NoRoute(String),
    /// The module's [`BuildCtx`] refused, with its reason.
    #[error("{0}")]
    NotBuilt(String),
}

/// How a route a module asked for ended ([`Host::run_event_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteEnd {
    /// It returned, or ran to its end, with this code.
    Returned(i32),
    /// `exit`, or a function returned 0 (also: it suspended and the host
    /// could not park it).
    Exit,
    /// `drop`.
    Drop,
}

/// A route run that ended: its context, with what the route left in it (an
/// HTTP answer, `evapi_close()`, `$var`s), and how it ended.
#[derive(Debug)]
pub struct RouteDone {
    /// The context, after the route (and every resumed part of it) ran.
    pub ctx: Ctx,
    /// How it ended.
    pub end: RouteEnd,
}

/// What [`Host::run_event_route`] answers once the route started.
#[derive(Debug)]
#[must_use = "the route's context comes back in it"]
pub enum EventRun {
    /// It ended before the call returned.
    Done(RouteDone),
    /// An async call parked it; this resolves when the resumed route ends.
    Pending(PendingRun),
}

impl EventRun {
    /// The route's end, now or once it is resumed and ends; `None` when the
    /// parked run was dropped unresumed (the host stopped).
    pub async fn finished(self) -> Option<RouteDone> {
        match self {
            EventRun::Done(d) => Some(d),
            EventRun::Pending(p) => p.await,
        }
    }
}

/// The end of a parked event run, to await (or to drop: the run still
/// goes on when it is resumed).
#[derive(Debug)]
pub struct PendingRun(pub(crate) tokio::sync::oneshot::Receiver<RouteDone>);

impl Future for PendingRun {
    type Output = Option<RouteDone>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// One of our UDP listeners, as [`Host::udp_listener`] picks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpListener {
    /// The address it is bound to (what [`Host::send_udp`] takes as `from`).
    pub addr: SocketAddr,
    /// `host:port` for the Via of a request sent from it: its `advertise`
    /// address if set, else its own (an IPv6 one bracketed).
    pub sent_by: String,
}

/// One binding of the location tables (usrloc's), as [`Location`] gives it
/// to modules that act on every registered contact (nathelper's NAT
/// keepalive) without importing usrloc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationContact {
    /// Its address of record (`alice`; `alice@example.com` with `use_domain`).
    pub aor: String,
    /// The contact URI as registered.
    pub uri: String,
    /// Where the contact is reached instead of its URI (registrar's
    /// `received_avp`: `sip:198.51.100.7:40312`).
    pub received: Option<String>,
    /// The Path of its REGISTER (`<sip:edge;lr>`), when stored.
    pub path: Option<String>,
    /// Our socket it registered through (`udp:127.0.0.1:5060`).
    pub socket: String,
    /// The branch flags it was saved with (usrloc's cflags; `nat_bflag` is one).
    pub cflags: u64,
    /// Its unique id (usrloc's ruid).
    pub ruid: String,
}

/// The location tables a module offers others ([`Module::location`]).
pub trait Location: Send + Sync {
    /// Every unexpired contact of every table whose branch flags include
    /// all of `flags` (0: every contact).
    fn contacts(&self, flags: u64) -> Vec<LocationContact>;
    /// The branch flag marking a contact as behind NAT (usrloc's `nat_bflag`).
    fn nat_bflag(&self) -> Option<u32>;
}

/// A transaction's final reply as it went upstream ([`Host::on_transaction_final`]).
#[derive(Debug, Clone)]
pub struct TxFinal {
    /// The request, as received.
    pub request: siphon_sip::SipMsg,
    /// Where the request came from.
    pub peer: Peer,
    /// The R-URI of the branch whose final it is, as sent (`None`: a final
    /// made here with no branch).
    pub branch_ruri: Option<Bytes>,
    /// The final's code.
    pub code: u16,
    /// Its reason phrase.
    pub reason: Bytes,
    /// The To-tag of the reply sent.
    pub to_tag: Option<Bytes>,
    /// The request's message flags when the final went out.
    pub flags: u64,
    /// When it went out.
    pub time: std::time::SystemTime,
}

/// What [`Host::on_transaction_final`] calls.
pub type TxFinalHook = Arc<dyn Fn(&TxFinal) + Send + Sync>;

/// How [`Host::reply`] answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Statelessly, as `sl_send_reply()` does (sanity's replies).
    Stateless,
    /// Through the request's transaction when it has one, else statelessly,
    /// as `send_reply()` does (registrar's replies).
    Stateful,
}

/// A loaded module.
pub trait Module: Send + Sync + Any {
    /// Script functions it exports.
    fn functions(&self) -> Vec<FunctionSpec> {
        Vec::new()
    }
    /// Pseudo-variable classes it exports.
    fn pv_classes(&self) -> Vec<PvClassSpec> {
        Vec::new()
    }
    /// Event routes it may run (`evapi:message-received`), to check `event_route[…]` names.
    fn event_routes(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Events it raises through the event interface (`E_EVAPI_CONNECTION`).
    fn events(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Subscriber transports it provides to the event interface (`jsonrpc:`).
    fn event_transports(&self) -> Vec<Arc<dyn crate::evi::EventTransport>> {
        Vec::new()
    }
    /// RPC commands it exports (`evapi.clients`, `jsonrpcc.servers`).
    fn rpc_commands(&self) -> Vec<crate::rpc::RpcSpec> {
        Vec::new()
    }
    /// Its statistics, if it keeps any.
    fn stats(&self) -> Option<Arc<dyn crate::rpc::StatSource>> {
        None
    }
    /// Settings it lets cfg_rpc's `cfg.get`/`cfg.set` read and change at run
    /// time, under Kamailio's cfg group and variable names.
    fn cfg_vars(&self) -> Vec<CfgVar> {
        Vec::new()
    }
    /// Format strings from its parameters (`$fU`, `$hdr(X)` … inside) that
    /// the compiler binds once every PV class is known (acc's `log_extra`);
    /// errors are reported at `loadmodule`. The module reads them back,
    /// compiled, with [`crate::Program::module_formats`].
    fn formats(&self) -> Vec<String> {
        Vec::new()
    }
    /// The location tables, when this module keeps them (usrloc), for
    /// modules that read every binding (nathelper's keepalive).
    fn location(&self) -> Option<Arc<dyn Location>> {
        None
    }
    /// Starts the module's tasks; called inside the runtime after compilation.
    fn start(&self, _cx: &StartCx) -> Result<(), String> {
        Ok(())
    }
    /// For downcasting by code that knows the module.
    fn as_any(&self) -> &dyn Any;
}

/// A setting changeable at run time ([`Module::cfg_vars`]): `cfg.get
/// group name`, `cfg.set group name value`.
#[derive(Clone)]
pub struct CfgVar {
    /// Kamailio's cfg group (`maxfwd`, `tm`).
    pub group: &'static str,
    /// The variable (`max_limit`).
    pub name: &'static str,
    /// What it does, for `cfg.help`.
    pub help: &'static str,
    /// Its current value.
    pub get: Arc<dyn Fn() -> ParamValue + Send + Sync>,
    /// Sets it; the error says why the value is refused.
    pub set: CfgSet,
}

/// Sets a [`CfgVar`].
pub type CfgSet = Arc<dyn Fn(&ParamValue) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for CfgVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CfgVar({}.{})", self.group, self.name)
    }
}

// ---------- functions ----------

/// Which routing table a route-name argument refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTable {
    /// `route[NAME]`.
    Named,
    /// `failure_route[NAME]`.
    Failure,
    /// `onreply_route[NAME]`.
    OnReply,
    /// `branch_route[NAME]`.
    Branch,
}

/// How a function argument is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A string; string literals are format strings (PVs expanded at run time).
    Str,
    /// An integer; a literal string must be a number.
    Int,
    /// Any value.
    Any,
    /// A pseudo-variable to read, written bare or as a string (`"$var(x)"`).
    Pv,
    /// A pseudo-variable to write (`result_var`).
    PvWritable,
    /// A route name; checked at load when constant.
    Route(RouteTable),
}

/// A compiled argument.
#[derive(Debug)]
pub enum Arg {
    /// An expression (kinds `Str`, `Int`, `Any`).
    Expr(crate::interp::CExpr),
    /// A pseudo-variable.
    Pv(Pv),
    /// A route resolved at load.
    Route(RouteId),
    /// A route name with PVs, resolved at run time.
    DynRoute(RouteTable, crate::pv::Fmt),
}

/// The compiled arguments of one call.
#[derive(Debug)]
pub struct Args {
    /// The arguments in order.
    pub items: Vec<Arg>,
}

impl Args {
    /// Number of arguments given.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether none were given.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Argument `i` as a value.
    pub fn value(&self, i: usize, ex: &mut Exec<'_>) -> Value {
        match self.items.get(i) {
            Some(Arg::Expr(e)) => ex.eval_value(e),
            Some(Arg::Pv(pv)) => ex.get_pv(pv),
            Some(Arg::Route(r)) => Value::from_str_copy(ex.prog.route_name(*r)),
            Some(Arg::DynRoute(_, f)) => Value::Str(ex.fmt(f)),
            None => Value::Null,
        }
    }
    /// Argument `i` as bytes.
    pub fn bytes(&self, i: usize, ex: &mut Exec<'_>) -> Bytes {
        self.value(i, ex).to_bytes()
    }
    /// Argument `i` as text.
    pub fn text(&self, i: usize, ex: &mut Exec<'_>) -> String {
        self.value(i, ex).to_text().into_owned()
    }
    /// Argument `i` as an integer.
    pub fn int(&self, i: usize, ex: &mut Exec<'_>) -> Option<i64> {
        self.value(i, ex).to_int()
    }
    /// Argument `i` if it is a constant (for checks at bind time).
    pub fn const_value(&self, i: usize) -> Option<&Value> {
        match self.items.get(i) {
            Some(Arg::Expr(crate::interp::CExpr::Const(v))) => Some(v),
            _ => None,
        }
    }
    /// Argument `i` as a pseudo-variable (kinds `Pv`, `PvWritable`).
    pub fn pv(&self, i: usize) -> Option<&Pv> {
        match self.items.get(i) {
            Some(Arg::Pv(p)) => Some(p),
            _ => None,
        }
    }
    /// Argument `i` as a route id (kind `Route`); dynamic names are looked up now.
    pub fn route(&self, i: usize, ex: &mut Exec<'_>) -> Option<RouteId> {
        match self.items.get(i) {
            Some(Arg::Route(r)) => Some(*r),
            Some(Arg::DynRoute(t, f)) => {
                let name = ex.fmt(f);
                ex.prog.route_by_name(*t, &String::from_utf8_lossy(&name))
            }
            _ => None,
        }
    }
}

/// What a function asks the engine to do.
pub enum FnResult {
    /// A Kamailio return code: >0 true, <0 false, 0 stops the script.
    Code(i32),
    /// Stop the script and suspend the transaction (see [`Suspend`]).
    Suspend(Suspend),
}

impl From<i32> for FnResult {
    fn from(c: i32) -> Self {
        FnResult::Code(c)
    }
}

impl std::fmt::Debug for FnResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FnResult::Code(c) => write!(f, "Code({c})"),
            FnResult::Suspend(_) => f.write_str("Suspend"),
        }
    }
}

/// A request to park the current transaction and resume it later.
///
/// The engine stops the script (as `exit` does) and returns
/// [`crate::Outcome::Suspended`]. The host (tm in the core) then creates or
/// finds the transaction, gives it its `(index, label)`, attaches what
/// `$T(id_index)`/`$T(id_label)` read, and calls `start` with the context and a
/// [`Resumer`]. `start` runs before the transaction is parked, so the module can
/// use `$T(...)` in what it sends; whatever it spawns resumes through the
/// resumer, exactly once, from any thread.
pub struct Suspend {
    /// Called by the host once the transaction is suspended.
    pub start: SuspendStart,
}

/// What a module runs once its transaction is suspended.
pub type SuspendStart = Box<dyn FnOnce(&mut Ctx, Box<dyn Resumer>) + Send>;

impl std::fmt::Debug for Suspend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Suspend")
    }
}

/// Continues a suspension: a transaction (implemented by the host's tm) or
/// an event run the host parked.
pub trait Resumer: Send + Sync {
    /// Runs `route` for the suspended transaction after `fill` has written the
    /// results into its context. Returns false when the transaction is gone or
    /// was already resumed (the host counts it).
    fn resume(self: Box<Self>, route: RouteId, fill: ResumeFill) -> bool;
}

/// Writes an answer into a suspended context before its route runs.
pub type ResumeFill = Box<dyn FnOnce(&mut Ctx) + Send>;

/// A bound call: the function with its fixed-up arguments.
pub trait Call: Send + Sync {
    /// Runs the function.
    fn call(&self, ex: &mut Exec<'_>) -> FnResult;
}

impl std::fmt::Debug for dyn Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Call")
    }
}

/// Binds a call's arguments at load; the error text is reported at the call.
pub type Bind = Arc<dyn Fn(Args) -> Result<Box<dyn Call>, String> + Send + Sync>;

/// A script function.
#[derive(Clone)]
pub struct FunctionSpec {
    /// The name used in the script.
    pub name: &'static str,
    /// Argument kinds; the number of arguments is at most their count.
    pub params: Vec<ArgKind>,
    /// The fewest arguments accepted.
    pub min_args: usize,
    /// Where the function may be used.
    pub routes: RouteType,
    /// Binds one call.
    pub bind: Bind,
}

impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish()
    }
}

struct SimpleCall<F> {
    args: Args,
    f: Arc<F>,
}

impl<F: Fn(&mut Exec<'_>, &Args) -> FnResult + Send + Sync> Call for SimpleCall<F> {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        (self.f)(ex, &self.args)
    }
}

impl FunctionSpec {
    /// A function taking exactly `params`, usable in any route, run by `f`.
    pub fn new<F>(name: &'static str, params: &[ArgKind], f: F) -> Self
    where
        F: Fn(&mut Exec<'_>, &Args) -> FnResult + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let bind: Bind =
            Arc::new(move |args| Ok(Box::new(SimpleCall { args, f: f.clone() }) as Box<dyn Call>));
        Self::with_bind(name, params, bind)
    }
    /// Like [`FunctionSpec::new`], with `check` run once on the arguments at
    /// load (its error is reported at the call).
    pub fn checked<C, F>(name: &'static str, params: &[ArgKind], check: C, f: F) -> Self
    where
        C: Fn(&Args) -> Result<(), String> + Send + Sync + 'static,
        F: Fn(&mut Exec<'_>, &Args) -> FnResult + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let bind: Bind = Arc::new(move |args| {
            check(&args)?;
            Ok(Box::new(SimpleCall { args, f: f.clone() }) as Box<dyn Call>)
        });
        Self::with_bind(name, params, bind)
    }
    /// A function with its own bind step (checks or precomputes at load).
    pub fn with_bind(name: &'static str, params: &[ArgKind], bind: Bind) -> Self {
        FunctionSpec {
            name,
            params: params.to_vec(),
            min_args: params.len(),
            routes: RouteType::ANY,
            bind,
        }
    }
    /// Accepts fewer arguments (the rest are optional).
    pub fn min_args(mut self, n: usize) -> Self {
        self.min_args = n;
        self
    }
    /// Restricts where the function may be used.
    pub fn routes(mut self, r: RouteType) -> Self {
        self.routes = r;
        self
    }
}

// ---------- pseudo-variables ----------

/// Whether a PV class takes a name in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvInner {
    /// `$ru`: none allowed.
    None,
    /// `$var(x)`: required.
    Required,
    /// Either.
    Optional,
}

/// Which value(s) of a PV with several values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvIdx {
    /// No index written: the default (usually the first/newest).
    Default,
    /// `[n]`.
    At(i64),
    /// `[*]`.
    All,
}

/// Reads and writes one bound PV (a class plus its inner name).
pub trait PvAccess: Send + Sync {
    /// Reads the value.
    fn get(&self, ex: &mut Exec<'_>, idx: PvIdx) -> Value;
    /// Writes the value; the default refuses (read-only).
    fn set(&self, _ex: &mut Exec<'_>, _idx: PvIdx, _v: Value) -> Result<(), String> {
        Err("is read-only".into())
    }
    /// Whether [`PvAccess::set`] works; checked at load for assignments.
    fn writable(&self) -> bool {
        false
    }
}

/// Binds a PV class with its inner name at load.
pub type PvBind = Arc<dyn Fn(Option<&str>) -> Result<Arc<dyn PvAccess>, String> + Send + Sync>;

/// Binds a PV class whose inner name holds PVs (`$sht(ipban=>$si)`): the
/// second argument compiles a piece of the name as a format string.
pub type PvBindFmt = Arc<
    dyn Fn(
            Option<&str>,
            &mut dyn FnMut(&str) -> Result<crate::pv::Fmt, String>,
        ) -> Result<Arc<dyn PvAccess>, String>
        + Send
        + Sync,
>;

/// A pseudo-variable class.
#[derive(Clone)]
pub struct PvClassSpec {
    /// The class name (`ru`, `hdr`, `evapi`, `T`).
    pub name: &'static str,
    /// Whether it takes `(name)`.
    pub inner: PvInner,
    /// Binds one use.
    pub bind: PvBind,
    /// When set, binds one use instead of `bind`, with a format compiler.
    pub bind_fmt: Option<PvBindFmt>,
}

impl PvClassSpec {
    /// A class bound by `bind`.
    pub fn new(name: &'static str, inner: PvInner, bind: PvBind) -> Self {
        PvClassSpec {
            name,
            inner,
            bind,
            bind_fmt: None,
        }
    }

    /// A class whose inner name may hold PVs, bound by `bind` with a format compiler.
    pub fn with_fmt(name: &'static str, inner: PvInner, bind: PvBindFmt) -> Self {
        PvClassSpec {
            name,
            inner,
            bind: Arc::new(|_| Err("needs a format compiler".into())),
            bind_fmt: Some(bind),
        }
    }

    /// A read-only class with no inner name, computed by `f`.
    pub fn read_only<F>(name: &'static str, f: F) -> Self
    where
        F: Fn(&mut Exec<'_>) -> Value + Send + Sync + 'static,
    {
        struct R<F>(F);
        impl<F: Fn(&mut Exec<'_>) -> Value + Send + Sync> PvAccess for R<F> {
            fn get(&self, ex: &mut Exec<'_>, _idx: PvIdx) -> Value {
                (self.0)(ex)
            }
        }
        let acc: Arc<dyn PvAccess> = Arc::new(R(f));
        PvClassSpec {
            name,
            inner: PvInner::None,
            bind: Arc::new(move |_| Ok(acc.clone())),
            bind_fmt: None,
        }
    }
}

impl std::fmt::Debug for PvClassSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvClassSpec")
            .field("name", &self.name)
            .finish()
    }
}

/// The environment variable that keeps every SIP message on this machine:
/// when it is set (to anything but `0`), a destination outside 127.0.0.0/8
/// and `::1` is refused, logged and counted (the core's `core:send_failures`;
/// a module's own way). The test suite sets it for every server it starts,
/// so a bug that picks a private or public address (a NATed Contact, a Via,
/// a dispatcher list) fails a test instead of sending there. The core checks
/// every SIP send; a module that sends on sockets of its own (dispatcher's
/// probes, event_jsonrpc's subscribers, jsonrpcc's servers) asks
/// [`off_machine`] first.
pub const ONLY_LOOPBACK_ENV: &str = "SIPHON_SEND_ONLY_LOOPBACK";

/// Whether [`ONLY_LOOPBACK_ENV`] refuses sending to `to`.
pub fn off_machine(to: std::net::SocketAddr) -> bool {
    static ONLY_LOOPBACK: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| only_loopback(std::env::var_os(ONLY_LOOPBACK_ENV).as_deref()));
    *ONLY_LOOPBACK && !on_machine(to)
}

/// [`ONLY_LOOPBACK_ENV`]'s value switches the check on unless empty or `0`.
fn only_loopback(v: Option<&std::ffi::OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0")
}

/// 127.0.0.0/8, `::1`, or an IPv4 loopback address mapped into IPv6.
fn on_machine(to: std::net::SocketAddr) -> bool {
    to.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod only_loopback_tests {
    use super::*;

    #[test]
    fn only_loopback_keeps_every_destination_on_the_machine() {
        use std::ffi::OsStr;
        assert!(!only_loopback(None));
        assert!(!only_loopback(Some(OsStr::new(""))));
        assert!(!only_loopback(Some(OsStr::new("0"))));
        assert!(only_loopback(Some(OsStr::new("1"))));
        for ok in [
            "127.0.0.1:5060",
            "127.0.0.3:5060",
            "[::1]:5060",
            "[::ffff:127.0.0.2]:5060",
        ] {
            assert!(on_machine(ok.parse().unwrap()), "{ok}");
        }
        // Parsed only, never sent to.
        for off in [
            "192.168.1.10:5062",
            "10.0.0.1:5060",
            "[2001:db8::1]:5060",
            "[::ffff:10.0.0.1]:5060",
        ] {
            assert!(!on_machine(off.parse().unwrap()), "{off}");
        }
    }
}
