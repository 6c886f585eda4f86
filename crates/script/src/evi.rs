//! The event interface (OpenSIPS' EVI): named events that the core, modules
//! and the script raise, and subscribers that receive them through a
//! transport (`jsonrpc:host:port[/method]` is event_jsonrpc's).
//!
//! Events are declared before they can be subscribed to: the core and
//! modules declare theirs ([`crate::api::Module::events`]); an event the
//! script names in `raise_event`/`subscribe_event` is declared when the
//! configuration is compiled. Raising never blocks: a subscriber queues the
//! event and its transport delivers it from its own task.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// An event's parameters: values only (an array on the wire) or named (an object).
#[derive(Debug, Clone, PartialEq)]
pub enum EventParams {
    /// Unnamed values, in order.
    Values(Vec<Value>),
    /// Named values, in order.
    Named(Vec<(String, Value)>),
}

/// One raised event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its name (`E_CORE_START`).
    pub name: Arc<str>,
    /// Its parameters.
    pub params: EventParams,
}

/// Who asks for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration (`subscribe_event` in the script): trusted, as the
    /// configuration can do anything anyway.
    Config,
    /// A management command (`event_subscribe`): checked against the
    /// transport's allow-list. `source` says where it came from, for the log.
    Rpc {
        /// The transport and peer, when the caller knows them (jsonrpcs
        /// logs them itself with every state-changing command).
        source: Option<String>,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Config => f.write_str("the configuration"),
            Origin::Rpc { source: None } => f.write_str("RPC"),
            Origin::Rpc { source: Some(s) } => write!(f, "RPC from {s}"),
        }
    }
}

/// A kind of subscriber socket (`jsonrpc:`), provided by a module.
pub trait EventTransport: Send + Sync {
    /// The socket prefix before the first `:` (`jsonrpc`).
    fn proto(&self) -> &'static str;
    /// A subscriber for the rest of the socket text (`127.0.0.1:8080/method`).
    /// `evi` resolves sockets a transport is made of (event_virtual's members).
    fn subscriber(&self, target: &str, evi: &Evi) -> Result<Arc<dyn EventSubscriber>, String>;
    /// Whether a management command may subscribe `target`: `Err(why)` when
    /// the destination is not on the transport's allow-list. Subscriptions
    /// from the configuration are not checked.
    fn admit(&self, _target: &str, _evi: &Evi) -> Result<(), String> {
        Ok(())
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: the peer confirmed it (sync_mode) or, without
    /// confirmations, it was written to the peer.
    Confirmed,
    /// Not confirmed; why (`timeout`, `error reply`, `failed`, `dropped`).
    Unconfirmed(&'static str),
}

/// Told once how a delivery ended; called from the transport's task, so it
/// must not block.
pub type OnOutcome = Box<dyn FnOnce(Outcome) + Send>;

/// Where one subscription's events go.
pub trait EventSubscriber: Send + Sync {
    /// Queues an event for delivery; never blocks. `false` when it was dropped
    /// (a full queue, a peer that is down): the transport counts it.
    fn deliver(&self, event: &Arc<Event>) -> bool;
    /// Queues an event and reports how its delivery ends through `done`
    /// (exactly once, later). The default reports `Confirmed` once queued: a
    /// transport without confirmations.
    fn deliver_then(&self, event: &Arc<Event>, done: OnOutcome) -> bool {
        let ok = self.deliver(event);
        done(if ok {
            Outcome::Confirmed
        } else {
            Outcome::Unconfirmed("dropped")
        });
        ok
    }
    /// Its delivery counters, for `subscribers_list`.
    fn stats(&self) -> Value {
        Value::Null
    }
}

/// A module that is an event transport and its statistics, nothing else
/// (event_jsonrpc, event_virtual).
pub struct TransportModule {
    /// The transport it adds.
    pub transport: Arc<dyn EventTransport>,
    /// Its statistics.
    pub stats: Arc<dyn crate::rpc::StatSource>,
}

impl crate::api::Module for TransportModule {
    fn event_transports(&self) -> Vec<Arc<dyn EventTransport>> {
        vec![self.transport.clone()]
    }
    fn stats(&self) -> Option<Arc<dyn crate::rpc::StatSource>> {
        Some(self.stats.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Why a subscription or a raise failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EviError {
    /// No such event declared.
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
    /// The socket is not `proto:target`, or no transport has that prefix.
    #[error(
        "unknown subscriber socket `{0}` (expected e.g. jsonrpc:127.0.0.1:8080[/method]; transports loaded: {1})"
    )]
    UnknownTransport(String, String),
    /// The transport refused the target.
    #[error("bad subscriber socket `{0}`: {1}")]
    BadSocket(String, String),
    /// A management command asked for a destination off the allow-list.
    #[error("subscriber `{0}` refused: {1}")]
    Refused(String, String),
    /// An event name that cannot be one.
    #[error("bad event name `{0}`")]
    BadName(String),
}

struct Subscription {
    socket: String,
    sub: Arc<dyn EventSubscriber>,
    /// `None`: never expires (subscriptions from the script).
    expires: Option<(Instant, Duration)>,
    since: SystemTime,
}

/// The event registry: declared events, their subscribers, the transports.
pub struct Evi {
    events: RwLock<BTreeMap<String, Vec<Subscription>>>,
    transports: RwLock<HashMap<&'static str, Arc<dyn EventTransport>>>,
    raised: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Evi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evi")
            .field("events", &self.events.read().map(|e| e.len()).unwrap_or(0))
            .finish()
    }
}

impl Default for Evi {
    fn default() -> Self {
        Evi::new()
    }
}

/// How long an RPC subscription lasts without `expire` (OpenSIPS' default).
pub const DEFAULT_RPC_EXPIRE: u64 = 3600;

/// Events the core raises.
pub const E_CORE_START: &str = "E_CORE_START";

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl Evi {
    /// An empty registry with the core's events declared.
    pub fn new() -> Self {
        let evi = Evi {
            events: RwLock::new(BTreeMap::new()),
            transports: RwLock::new(HashMap::new()),
            raised: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        let _ = evi.declare(E_CORE_START);
        evi
    }

    /// Declares an event (again is fine).
    pub fn declare(&self, name: &str) -> Result<(), EviError> {
        if !valid_name(name) {
            return Err(EviError::BadName(name.to_string()));
        }
        if let Ok(mut e) = self.events.write() {
            e.entry(name.to_string()).or_default();
        }
        Ok(())
    }

    /// Whether an event is declared.
    pub fn is_declared(&self, name: &str) -> bool {
        self.events.read().is_ok_and(|e| e.contains_key(name))
    }

    /// Adds a transport (a module's `event_transports`).
    pub fn add_transport(&self, t: Arc<dyn EventTransport>) {
        if let Ok(mut m) = self.transports.write() {
            m.insert(t.proto(), t);
        }
    }

    /// The transport for a socket prefix (`jsonrpc`).
    pub fn transport(&self, proto: &str) -> Option<Arc<dyn EventTransport>> {
        self.transports.read().ok()?.get(proto).cloned()
    }

    /// The transport and the rest of `socket` (`jsonrpc:127.0.0.1:8080` →
    /// the jsonrpc transport and `127.0.0.1:8080`).
    pub fn transport_for<'a>(
        &self,
        socket: &'a str,
    ) -> Result<(Arc<dyn EventTransport>, &'a str), EviError> {
        let unknown = || EviError::UnknownTransport(socket.to_string(), self.transport_names());
        let (proto, target) = socket.trim().split_once(':').ok_or_else(unknown)?;
        let t = self.transport(proto).ok_or_else(unknown)?;
        Ok((t, target))
    }

    fn transport_names(&self) -> String {
        let mut v: Vec<&str> = self
            .transports
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Subscribes `socket` to `event` for the configuration. `expire`:
    /// seconds (`Some(0)` unsubscribes), `None` never expires. Subscribing the
    /// same socket again refreshes it.
    pub fn subscribe(
        &self,
        event: &str,
        socket: &str,
        expire: Option<u64>,
    ) -> Result<(), EviError> {
        self.subscribe_from(event, socket, expire, &Origin::Config)
    }

    /// [`Evi::subscribe`] for `origin`: a management command's destination
    /// must pass the transport's allow-list; a refusal is logged with its source.
    pub fn subscribe_from(
        &self,
        event: &str,
        socket: &str,
        expire: Option<u64>,
        origin: &Origin,
    ) -> Result<(), EviError> {
        let socket = socket.trim();
        if !self.is_declared(event) {
            return Err(EviError::UnknownEvent(event.to_string()));
        }
        if expire == Some(0) {
            self.unsubscribe(event, socket);
            return Ok(());
        }
        if matches!(origin, Origin::Rpc { .. }) {
            let (t, target) = self.transport_for(socket)?;
            if let Err(why) = t.admit(target, self) {
                tracing::warn!("event_subscribe {event} {socket} from {origin} refused: {why}");
                return Err(EviError::Refused(socket.to_string(), why));
            }
        }
        let expires = expire.map(|s| {
            (
                Instant::now() + Duration::from_secs(s),
                Duration::from_secs(s),
            )
        });
        // A refresh keeps the subscriber (and its connection and counters).
        if let Ok(mut e) = self.events.write()
            && let Some(s) = e
                .get_mut(event)
                .and_then(|subs| subs.iter_mut().find(|s| s.socket == socket))
        {
            s.expires = expires;
            s.since = SystemTime::now();
            return Ok(());
        }
        let (t, target) = self.transport_for(socket)?;
        let sub = t
            .subscriber(target, self)
            .map_err(|e| EviError::BadSocket(socket.to_string(), e))?;
        if let Ok(mut e) = self.events.write() {
            let subs = e.entry(event.to_string()).or_default();
            // Another caller may have subscribed it meanwhile.
            if !subs.iter().any(|s| s.socket == socket) {
                subs.push(Subscription {
                    socket: socket.to_string(),
                    sub,
                    expires,
                    since: SystemTime::now(),
                });
            }
        }
        Ok(())
    }

    /// Removes a subscription; whether there was one.
    pub fn unsubscribe(&self, event: &str, socket: &str) -> bool {
        let Ok(mut e) = self.events.write() else {
            return false;
        };
        let Some(subs) = e.get_mut(event) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.socket != socket.trim());
        subs.len() != before
    }

    fn prune(&self, event: Option<&str>) {
        let now = Instant::now();
        let expired = |s: &Subscription| s.expires.is_some_and(|(t, _)| t <= now);
        // Look first under the read lock: expiry is rare.
        let any = self.events.read().is_ok_and(|e| {
            e.iter()
                .filter(|(n, _)| event.is_none_or(|x| x == n.as_str()))
                .any(|(_, subs)| subs.iter().any(expired))
        });
        if any && let Ok(mut e) = self.events.write() {
            for (n, subs) in e.iter_mut() {
                if event.is_none_or(|x| x == n.as_str()) {
                    subs.retain(|s| !expired(s));
                }
            }
        }
    }

    /// Raises an event: every live subscriber gets it queued. Returns how
    /// many took it.
    pub fn raise(&self, name: &str, params: EventParams) -> Result<usize, EviError> {
        self.prune(Some(name));
        let e = self
            .events
            .read()
            .map_err(|_| EviError::UnknownEvent(name.to_string()))?;
        let subs = e
            .get(name)
            .ok_or_else(|| EviError::UnknownEvent(name.to_string()))?;
        self.raised.fetch_add(1, Ordering::Relaxed);
        if subs.is_empty() {
            return Ok(0);
        }
        let ev = Arc::new(Event {
            name: Arc::from(name),
            params,
        });
        let mut n = 0;
        for s in subs {
            if s.sub.deliver(&ev) {
                n += 1;
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Whether anyone is subscribed to `name` (so callers can skip building params).
    pub fn has_subscribers(&self, name: &str) -> bool {
        self.events
            .read()
            .is_ok_and(|e| e.get(name).is_some_and(|s| !s.is_empty()))
    }

    /// `events_list`: every declared event with its subscriber count.
    pub fn list(&self) -> Value {
        self.prune(None);
        let e = match self.events.read() {
            Ok(e) => e,
            Err(_) => return json!([]),
        };
        Value::Array(
            e.iter()
                .map(|(n, subs)| json!({"name": n, "subscribers": subs.len()}))
                .collect(),
        )
    }

    /// `subscribers_list [event [socket]]`.
    pub fn subscribers(
        &self,
        event: Option<&str>,
        socket: Option<&str>,
    ) -> Result<Value, EviError> {
        self.prune(event);
        let e = self
            .events
            .read()
            .map_err(|_| EviError::UnknownEvent(String::new()))?;
        if let Some(ev) = event
            && !e.contains_key(ev)
        {
            return Err(EviError::UnknownEvent(ev.to_string()));
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (n, subs) in e
            .iter()
            .filter(|(n, _)| event.is_none_or(|x| x == n.as_str()))
        {
            for s in subs
                .iter()
                .filter(|s| socket.is_none_or(|x| x.trim() == s.socket))
            {
                let since = s
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                out.push(json!({
                    "event": n,
                    "socket": s.socket,
                    "subscribed": since,
                    "expire": s.expires.map(|(_, d)| d.as_secs()),
                    "expires_in": s.expires.map(|(t, _)| t.saturating_duration_since(now).as_secs()),
                    "stats": s.sub.stats(),
                }));
            }
        }
        Ok(Value::Array(out))
    }

    /// (`raised`, `delivered`, `dropped`) counters.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.raised.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Zeroes a counter by its statistic name (`evi:raised`…).
    pub fn reset_counter(&self, name: &str) {
        let c = match name {
            "evi:raised" => &self.raised,
            "evi:delivered" => &self.delivered,
            "evi:dropped" => &self.dropped,
            _ => return,
        };
        c.store(0, Ordering::Relaxed);
    }
}

/// A script value as an event parameter: numbers stay numbers, `$null` is null.
pub fn param_value(v: &crate::Value) -> Value {
    match v {
        crate::Value::Null => Value::Null,
        crate::Value::Int(n) => json!(n),
        other => Value::String(other.to_text().into_owned()),
    }
}

// ---------- the script's functions ----------

/// Declares a constant event name at load (so it can be subscribed to before it is raised).
fn declare_const(evi: &Evi, args: &crate::api::Args) -> Result<(), String> {
    if let Some(v) = args.const_value(0) {
        let name = v.to_text();
        evi.declare(&name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `subscribe_event(event, socket[, expire])` and `raise_event(event[, values[, names]])`.
pub fn script_functions(evi: &Arc<Evi>) -> Vec<crate::api::FunctionSpec> {
    use crate::api::{ArgKind, Args, FunctionSpec};
    let (e, declare) = (evi.clone(), evi.clone());
    let subscribe = FunctionSpec::checked(
        "subscribe_event",
        &[ArgKind::Str, ArgKind::Str, ArgKind::Int],
        move |args| declare_const(&declare, args),
        move |ex: &mut crate::interp::Exec<'_>, args: &Args| {
            let event = args.text(0, ex);
            let socket = args.text(1, ex);
            // From the script, no expire means the subscription never expires.
            let expire = if args.len() > 2 {
                match args.int(2, ex) {
                    Some(n) if n >= 0 => Some(n as u64),
                    _ => {
                        tracing::error!("subscribe_event({event}, {socket}): bad expire");
                        return (-1).into();
                    }
                }
            } else {
                None
            };
            match e.subscribe(&event, &socket, expire) {
                Ok(()) => 1.into(),
                Err(err) => {
                    tracing::error!("subscribe_event: {err}");
                    (-1).into()
                }
            }
        },
    );
    let (e, declare) = (evi.clone(), evi.clone());
    let raise = FunctionSpec::checked(
        "raise_event",
        &[ArgKind::Str, ArgKind::Pv, ArgKind::Pv],
        move |args| declare_const(&declare, args),
        move |ex: &mut crate::interp::Exec<'_>, args: &Args| {
            let event = args.text(0, ex);
            if !e.has_subscribers(&event) {
                // Nobody listens: nothing to build. An unknown name is still an error.
                return if e.is_declared(&event) {
                    1.into()
                } else {
                    tracing::error!("raise_event: unknown event `{event}`");
                    (-1).into()
                };
            }
            let values: Vec<Value> = match args.pv(1) {
                Some(pv) => ex.get_pv_all(pv).iter().map(param_value).collect(),
                None => vec![],
            };
            let params = match args.pv(2) {
                Some(pv) => {
                    let names = ex.get_pv_all(pv);
                    if names.len() != values.len() {
                        tracing::error!(
                            "raise_event({event}): {} names for {} values",
                            names.len(),
                            values.len()
                        );
                        return (-1).into();
                    }
                    EventParams::Named(
                        names
                            .iter()
                            .map(|n| n.to_text().into_owned())
                            .zip(values)
                            .collect(),
                    )
                }
                None => EventParams::Values(values),
            };
            match e.raise(&event, params) {
                Ok(_) => 1.into(),
                Err(err) => {
                    tracing::error!("raise_event: {err}");
                    (-1).into()
                }
            }
        },
    );
    vec![subscribe.min_args(2), raise.min_args(1)]
}

/// The RPC commands: `event_subscribe`, `events_list`, `subscribers_list`, `raise_event`.
pub fn rpc_commands() -> Vec<crate::rpc::RpcSpec> {
    use crate::rpc::{RpcFailure, RpcSpec};
    let failed = |e: EviError| RpcFailure::failed(e.to_string());
    vec![
        RpcSpec::new(
            "event_subscribe",
            "Subscribes a socket to an event: event_subscribe EVENT SOCKET [EXPIRE] (seconds, default 3600; 0 unsubscribes).",
            move |c| {
                let event = c
                    .str(0)
                    .ok_or_else(|| RpcFailure::params("expected an event name"))?;
                let socket = c
                    .str(1)
                    .ok_or_else(|| RpcFailure::params("expected a subscriber socket"))?;
                let expire = match c.params.get(2) {
                    None => DEFAULT_RPC_EXPIRE,
                    Some(v) => match v
                        .as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    {
                        Some(n) if n >= 0 => n as u64,
                        _ => {
                            return Err(RpcFailure::params(
                                "expire must be a number of seconds, 0 or more",
                            ));
                        }
                    },
                };
                // The transport logged the caller with the command (it
                // changes state); the call itself does not carry it.
                let origin = Origin::Rpc { source: None };
                c.program
                    .evi()
                    .subscribe_from(&event, &socket, Some(expire), &origin)
                    .map_err(failed)?;
                Ok(json!("OK"))
            },
        ),
        RpcSpec::new(
            "events_list",
            "Lists the events and how many subscribers each has.",
            |c| Ok(c.program.evi().list()),
        ),
        RpcSpec::new(
            "subscribers_list",
            "Lists subscriptions: subscribers_list [EVENT [SOCKET]].",
            move |c| {
                c.program
                    .evi()
                    .subscribers(c.str(0).as_deref(), c.str(1).as_deref())
                    .map_err(failed)
            },
        ),
        RpcSpec::new(
            "raise_event",
            "Raises an event: raise_event EVENT [PARAMS…] (one object: named params; otherwise values).",
            move |c| {
                let event = c
                    .str(0)
                    .ok_or_else(|| RpcFailure::params("expected an event name"))?;
                let rest = &c.params[1.min(c.params.len())..];
                let params = match rest {
                    [Value::Object(o)] => {
                        EventParams::Named(o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    }
                    [Value::Array(a)] => EventParams::Values(a.clone()),
                    _ => EventParams::Values(rest.to_vec()),
                };
                let n = c.program.evi().raise(&event, params).map_err(failed)?;
                Ok(json!({"subscribers": n}))
            },
        ),
    ]
}

/// The `evi:` statistics.
pub(crate) struct EviStats(pub(crate) Arc<Evi>);

impl crate::rpc::StatSource for EviStats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let (r, d, x) = self.0.counters();
        vec![
            ("evi:raised".into(), r as i64),
            ("evi:delivered".into(), d as i64),
            ("evi:dropped".into(), x as i64),
        ]
    }
    fn reset(&self, name: &str) {
        self.0.reset_counter(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Arc<Event>>>);
    impl EventSubscriber for Collect {
        fn deliver(&self, e: &Arc<Event>) -> bool {
            self.0.lock().unwrap().push(e.clone());
            true
        }
    }
    struct T(Arc<Collect>);
    impl EventTransport for T {
        fn proto(&self) -> &'static str {
            "test"
        }
        fn subscriber(&self, target: &str, _: &Evi) -> Result<Arc<dyn EventSubscriber>, String> {
            if target == "bad" {
                return Err("bad target".into());
            }
            Ok(self.0.clone())
        }
        fn admit(&self, target: &str, _: &Evi) -> Result<(), String> {
            if target.starts_with("far") {
                return Err("not on the allow-list".into());
            }
            Ok(())
        }
    }

    /// A registry with the test transport and `event` declared.
    fn registry(event: &str) -> (Evi, Arc<Collect>) {
        let evi = Evi::new();
        let c = Arc::new(Collect::default());
        evi.add_transport(Arc::new(T(c.clone())));
        evi.declare(event).unwrap();
        (evi, c)
    }

    #[test]
    fn rpc_subscriptions_pass_the_allow_list_config_ones_do_not_need_to() {
        let (evi, _) = registry("E_X");
        let rpc = Origin::Rpc {
            source: Some("udp:127.0.0.1:9".into()),
        };
        assert_eq!(
            evi.subscribe_from("E_X", "test:far", Some(10), &rpc),
            Err(EviError::Refused(
                "test:far".into(),
                "not on the allow-list".into()
            ))
        );
        evi.subscribe_from("E_X", "test:near", Some(10), &rpc)
            .unwrap();
        evi.subscribe("E_X", "test:far", None).unwrap();
        assert_eq!(
            evi.subscribers(Some("E_X"), None)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Unsubscribing is never refused.
        evi.subscribe_from("E_X", "test:far", Some(0), &rpc)
            .unwrap();
        assert_eq!(
            evi.subscribers(Some("E_X"), None)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn subscribe_raise_refresh_unsubscribe() {
        let evi = Evi::new();
        let c = Arc::new(Collect::default());
        evi.add_transport(Arc::new(T(c.clone())));
        assert_eq!(
            evi.subscribe("E_X", "test:a", None),
            Err(EviError::UnknownEvent("E_X".into()))
        );
        evi.declare("E_X").unwrap();
        assert!(matches!(
            evi.subscribe("E_X", "nope:a", None),
            Err(EviError::UnknownTransport(..))
        ));
        assert!(matches!(
            evi.subscribe("E_X", "test:bad", None),
            Err(EviError::BadSocket(..))
        ));
        evi.subscribe("E_X", "test:a", None).unwrap();
        evi.subscribe("E_X", "test:a", Some(10)).unwrap();
        let list = evi.subscribers(Some("E_X"), None).unwrap();
        assert_eq!(
            list.as_array().unwrap().len(),
            1,
            "a refresh, not a second subscription"
        );
        assert_eq!(list[0]["expire"], json!(10));
        assert_eq!(
            evi.raise("E_X", EventParams::Values(vec![json!(3), json!(5)])),
            Ok(1)
        );
        assert_eq!(
            c.0.lock().unwrap()[0].params,
            EventParams::Values(vec![json!(3), json!(5)])
        );
        evi.subscribe("E_X", "test:a", Some(0)).unwrap();
        assert_eq!(evi.raise("E_X", EventParams::Values(vec![])), Ok(0));
        assert_eq!(evi.counters(), (2, 1, 0));
        assert!(matches!(
            evi.raise("E_NONE", EventParams::Values(vec![])),
            Err(EviError::UnknownEvent(_))
        ));
        assert!(evi.declare("bad name").is_err());
    }

    #[test]
    fn expired_subscriptions_are_pruned() {
        let (evi, _) = registry("E_Y");
        evi.subscribe("E_Y", "test:a", Some(1)).unwrap();
        {
            let mut e = evi.events.write().unwrap();
            e.get_mut("E_Y").unwrap()[0].expires = Some((Instant::now(), Duration::from_secs(1)));
        }
        assert_eq!(evi.raise("E_Y", EventParams::Named(vec![])), Ok(0));
        assert_eq!(
            evi.list(),
            json!([{"name": "E_CORE_START", "subscribers": 0}, {"name": "E_Y", "subscribers": 0}])
        );
    }
}
