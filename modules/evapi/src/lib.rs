//! evapi (seed 003): a TCP event socket for external applications.
//!
//! Clients connect to `bind_addr` (default `127.0.0.1:8448`, `[::1]:port`
//! too) and receive what the script relays (`evapi_relay`, `evapi_multicast`
//! to a tag, `evapi_unicast` to the oldest client with a tag), as netstrings
//! or raw (`netstring_format=0`). What they send runs
//! `event_route[evapi:message-received]` with `$evapi(msg)`; connects and
//! disconnects run `evapi:connection-new` / `evapi:connection-closed`. The
//! async variants suspend the transaction first, so the event can carry
//! `$T(id_index)`/`$T(id_label)` and the client's answer can `t_continue` it.
//!
//! Unlike Kamailio, a relay never waits for a client: each has a queue
//! bounded in bytes (`max_queue_bytes`) that its writer drains on evapi's
//! I/O thread while the route goes on; a client is disconnected only when
//! the bound would be passed or its socket takes nothing for
//! `send_data_timeout` (µs, as Kamailio's; default 5 s), and what was queued before is flushed for a
//! bounded time. Every lost event is counted per client. siphon's
//! additions: `first_message_timeout`, `auth_token` (a shared token the
//! client sends first) and TLS (`tls_certificate`, `tls_private_key`).
//! Beyond `max_clients` a connection is accepted and closed. Tags (≤ 64
//! bytes) start empty on every connection. `workers`, `wait_idle`,
//! `wait_increase`, `send_task_timeout` and `context_mlimit` have no effect.

pub mod hub;

use hub::{EvapiCtx, Hub, Settings, Target};
use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcFailure, RpcSpec, StatSource};
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, PvClassSpec, RouteType};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The loaded module.
pub struct Evapi {
    hub: Arc<Hub>,
    /// Kamailio parameters given that do nothing here (`name=value`).
    no_effect: Vec<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    Relay,
    Multicast,
    Unicast,
}

fn relay(hub: &Arc<Hub>, kind: Kind, data: &[u8], tag: &str) -> FnResult {
    if data.is_empty() {
        tracing::warn!("evapi: empty event data");
        return (-1).into();
    }
    let target = match kind {
        Kind::Relay => Target::All,
        _ if tag.is_empty() => {
            tracing::warn!("evapi: empty tag");
            return (-1).into();
        }
        Kind::Multicast => Target::Tag(tag),
        Kind::Unicast => Target::First(tag),
    };
    // As Kamailio: handed over is success, even with nobody listening.
    hub.relay(data, target);
    1.into()
}

struct AsyncCall {
    args: Arc<Args>,
    kind: Kind,
    hub: Arc<Hub>,
}

impl Call for AsyncCall {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        let here = self.hub.started.get().map(|s| s.host.may_suspend(ex.ctx));
        if here == Some(SuspendHere::Event) {
            // A parked event run has no $T(id_index)/$T(id_label) for the client's t_continue.
            tracing::error!(
                "evapi async relay: the client's answer resumes a transaction, and this route has none"
            );
            return (-1).into();
        }
        let Some(program) = ex.prog.to_shared() else {
            return (-1).into();
        };
        let (args, hub, kind) = (self.args.clone(), self.hub.clone(), self.kind);
        FnResult::Suspend(Suspend {
            // The data is formatted once the transaction exists, so
            // $T(id_index)/$T(id_label) name it.
            start: Box::new(move |ctx, _resumer| {
                let mut ex = Exec::new(&program, ctx);
                let data = args.bytes(0, &mut ex);
                let tag = if args.len() > 1 {
                    args.text(1, &mut ex)
                } else {
                    String::new()
                };
                if data.is_empty() || (!matches!(kind, Kind::Relay) && tag.is_empty()) {
                    tracing::error!(
                        "evapi async relay: empty data or tag; the transaction stays suspended until its timer"
                    );
                    return;
                }
                let target = match kind {
                    Kind::Relay => Target::All,
                    Kind::Multicast => Target::Tag(&tag),
                    Kind::Unicast => Target::First(&tag),
                };
                if hub.relay(&data, target) == 0 {
                    tracing::warn!(
                        "evapi async relay: no client took the event; the transaction waits for its timer"
                    );
                }
                // The client's answer resumes it (t_continue); the resumer is not needed.
            }),
        })
    }
}

fn async_fn(name: &'static str, kind: Kind, params: &[ArgKind], hub: &Arc<Hub>) -> FunctionSpec {
    let hub = hub.clone();
    FunctionSpec::with_bind(
        name,
        params,
        Arc::new(move |args| {
            Ok(Box::new(AsyncCall {
                args: Arc::new(args),
                kind,
                hub: hub.clone(),
            }) as Box<dyn Call>)
        }),
    )
    .routes(RouteType::REQUEST)
}

struct EvapiPv(u8);

impl PvAccess for EvapiPv {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> siphon_script::Value {
        let Some(x) = ex.ctx.ext.get::<EvapiCtx>() else {
            return siphon_script::Value::Null;
        };
        match self.0 {
            0 => siphon_script::Value::from(x.client.addr.ip().to_string()),
            1 => siphon_script::Value::Int(x.client.addr.port() as i64),
            2 => x
                .msg
                .clone()
                .map_or(siphon_script::Value::Null, siphon_script::Value::Str),
            _ => siphon_script::Value::Int(x.client.conidx as i64),
        }
    }
}

impl Module for Evapi {
    fn functions(&self) -> Vec<FunctionSpec> {
        let mut v = Vec::new();
        for (name, kind, params) in [
            ("evapi_relay", Kind::Relay, &[ArgKind::Str][..]),
            (
                "evapi_multicast",
                Kind::Multicast,
                &[ArgKind::Str, ArgKind::Str][..],
            ),
            (
                "evapi_unicast",
                Kind::Unicast,
                &[ArgKind::Str, ArgKind::Str][..],
            ),
        ] {
            let hub = self.hub.clone();
            v.push(FunctionSpec::new(name, params, move |ex, a| {
                let data = a.bytes(0, ex);
                let tag = if a.len() > 1 {
                    a.text(1, ex)
                } else {
                    String::new()
                };
                relay(&hub, kind, &data, &tag)
            }));
        }
        v.push(async_fn(
            "evapi_async_relay",
            Kind::Relay,
            &[ArgKind::Str],
            &self.hub,
        ));
        v.push(async_fn(
            "evapi_async_multicast",
            Kind::Multicast,
            &[ArgKind::Str, ArgKind::Str],
            &self.hub,
        ));
        v.push(async_fn(
            "evapi_async_unicast",
            Kind::Unicast,
            &[ArgKind::Str, ArgKind::Str],
            &self.hub,
        ));
        v.push(FunctionSpec::new("evapi_close", &[], |ex, _| {
            match ex.ctx.ext.get_mut::<EvapiCtx>() {
                Some(x) => {
                    x.close = true;
                    1.into()
                }
                None => {
                    tracing::warn!("evapi_close: not in an evapi event route");
                    (-1).into()
                }
            }
        }));
        v.push(FunctionSpec::new(
            "evapi_set_tag",
            &[ArgKind::Str],
            |ex, a| {
                let tag = a.text(0, ex);
                if tag.is_empty() || tag.len() > hub::MAX_TAG {
                    tracing::warn!(
                        "evapi_set_tag: a tag is 1 to {} bytes, got {}",
                        hub::MAX_TAG,
                        tag.len()
                    );
                    return (-1).into();
                }
                match ex.ctx.ext.get::<EvapiCtx>() {
                    Some(x) => {
                        x.client.set_tag(&tag);
                        1.into()
                    }
                    None => {
                        tracing::warn!("evapi_set_tag: not in an evapi event route");
                        (-1).into()
                    }
                }
            },
        ));
        v
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        vec![PvClassSpec::new(
            "evapi",
            PvInner::Required,
            Arc::new(|inner| {
                let k = match inner.unwrap_or_default() {
                    "srcaddr" => 0,
                    "srcport" => 1,
                    "msg" => 2,
                    "conidx" => 3,
                    other => {
                        return Err(format!(
                            "unknown key `{other}` (srcaddr, srcport, msg, conidx)"
                        ));
                    }
                };
                Ok(Arc::new(EvapiPv(k)) as Arc<dyn PvAccess>)
            }),
        )]
    }

    fn event_routes(&self) -> Vec<&'static str> {
        vec![
            "evapi:connection-new",
            "evapi:connection-closed",
            "evapi:message-received",
        ]
    }

    fn events(&self) -> Vec<&'static str> {
        vec![hub::E_CONNECTION]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let hub = self.hub.clone();
        let hub2 = self.hub.clone();
        vec![
            RpcSpec::new(
                "evapi.clients",
                "The connected clients: conidx, address, port, tag, ready (authenticated when auth_token is set), queued bytes, events sent and dropped, messages received.",
                move |_| {
                    Ok(Value::Array(
                    hub.clients()
                        .iter()
                        .map(|c| {
                            json!({
                                "conidx": c.conidx, "srcaddr": c.addr.ip().to_string(), "srcport": c.addr.port(),
                                "tag": c.tag(), "ready": c.is_ready(), "queued": c.queued(),
                                "sent": c.sent.load(Ordering::Relaxed), "dropped": c.dropped.load(Ordering::Relaxed),
                                "received": c.received.load(Ordering::Relaxed),
                            })
                        })
                        .collect(),
                ))
                },
            ),
            RpcSpec::new(
                "evapi.close",
                "Closes a client: evapi.close CONIDX.",
                move |c| {
                    let idx = c
                        .params
                        .first()
                        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                        .ok_or_else(|| RpcFailure::params("expected a conidx"))?;
                    let client = hub2
                        .clients()
                        .into_iter()
                        .find(|x| x.conidx as u64 == idx)
                        .ok_or_else(|| RpcFailure::failed(format!("no client {idx}")))?;
                    let _ = hub2.close(&client, true);
                    Ok(json!("OK"))
                },
            ),
        ]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.hub.clone())))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        if !self.no_effect.is_empty() {
            tracing::warn!(
                "evapi: {} has no effect in siphon: there are no evapi worker processes (messages from \
                 clients run event_route[evapi:message-received] on the SIP workers, one client's in \
                 order) and a relay never waits (see max_queue_bytes and send_data_timeout)",
                self.no_effect.join(", ")
            );
        }
        let _ = self.hub.started.set(hub::Started {
            host: cx.host.clone(),
            evi: cx.program.evi().clone(),
            main: tokio::runtime::Handle::current(),
            io: hub::io_thread()?,
        });
        let bind = &self.hub.settings.bind;
        let l = std::net::TcpListener::bind(bind.as_str())
            .map_err(|e| format!("bind_addr {bind}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tokio::spawn(self.hub.clone().serve(l, cx.host.shutdown()));
        tracing::info!(
            "evapi listening on {addr}{}",
            if self.hub.settings.tls.is_some() {
                " (TLS)"
            } else {
                ""
            }
        );
        // On stdout whatever the log level: tests and scripts read the port here.
        println!("evapi listening on {addr}");
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Stats(Arc<Hub>);

impl Stats {
    fn all(&self) -> [(&'static str, &std::sync::atomic::AtomicU64); 11] {
        let c = &self.0.counters;
        [
            ("evapi:connections_accepted", &c.accepted),
            ("evapi:connections_refused", &c.refused),
            ("evapi:connections_closed", &c.closed),
            ("evapi:slow_clients_closed", &c.slow),
            ("evapi:bad_frames", &c.bad_frames),
            ("evapi:events_relayed", &c.relayed),
            ("evapi:events_dropped", &c.dropped),
            ("evapi:messages_received", &c.received),
            ("evapi:first_message_timeouts", &c.first_message_timeouts),
            ("evapi:auth_failures", &c.auth_failures),
            ("evapi:tls_failures", &c.tls_failures),
        ]
    }
}

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        self.all()
            .iter()
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed) as i64))
            .collect()
    }
    fn reset(&self, name: &str) {
        for (n, c) in self.all() {
            if n == name {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Kamailio's parameters for its worker processes and their socketpair: accepted, no effect.
const NO_EFFECT: [&str; 5] = [
    "workers",
    "wait_idle",
    "wait_increase",
    "send_task_timeout",
    "context_mlimit",
];

/// A duration parameter in `unit` (0 = off); `default` when not set.
fn duration(
    cfg: &ModuleConfig,
    name: &str,
    default: Option<Duration>,
    unit: fn(u64) -> Duration,
    unit_name: &str,
) -> Result<Option<Duration>, String> {
    match cfg.int(name) {
        Some(v) if v < 0 => Err(format!(
            "{name} must be 0 (off) or a number of {unit_name}, found {v}"
        )),
        Some(0) => Ok(None),
        Some(v) => Ok(Some(unit(v as u64))),
        None => Ok(default),
    }
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_certificate {cert}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_certificate {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("tls_certificate {cert}: no certificate in it"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_private_key {key}: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("tls_certificate {cert} with tls_private_key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "evapi",
        params: vec![
            ParamSpec::str("bind_addr"),
            ParamSpec::int("netstring_format"),
            ParamSpec::int("workers"),
            ParamSpec::str("event_callback"),
            ParamSpec::int("max_clients"),
            ParamSpec::int("max_queue_bytes"),
            ParamSpec::int("send_data_timeout"),
            ParamSpec::int("first_message_timeout"),
            ParamSpec::str("auth_token"),
            ParamSpec::str("tls_certificate"),
            ParamSpec::str("tls_private_key"),
            ParamSpec::int("wait_idle"),
            ParamSpec::int("wait_increase"),
            ParamSpec::int("send_task_timeout"),
            ParamSpec::int("context_mlimit"),
        ],
        instantiate: Arc::new(|cfg| {
            if let Some(cb) = cfg.str("event_callback").filter(|s| !s.is_empty()) {
                return Err(format!(
                    "event_callback \"{cb}\" names a KEMI function; siphon runs native configuration \
                     scripts: use event_route[evapi:connection-new], event_route[evapi:connection-closed] \
                     and event_route[evapi:message-received] instead"
                ));
            }
            let max_clients = cfg.int("max_clients").unwrap_or(8);
            if max_clients <= 0 {
                return Err(format!("max_clients must be positive, found {max_clients}"));
            }
            if cfg.int("workers").is_some_and(|w| w < 0) {
                return Err("workers must be 0 or more".into());
            }
            let max_queue = cfg
                .int("max_queue_bytes")
                .unwrap_or(hub::DEFAULT_QUEUE_BYTES as i64);
            if max_queue < 1024 {
                return Err(format!(
                    "max_queue_bytes must be 1024 or more, found {max_queue}"
                ));
            }
            let token = cfg
                .str("auth_token")
                .filter(|t| !t.is_empty())
                .map(String::into_bytes);
            let first_message = duration(
                cfg,
                "first_message_timeout",
                None,
                Duration::from_millis,
                "milliseconds",
            )?
            .or_else(|| {
                token
                    .is_some()
                    .then(|| Duration::from_millis(hub::DEFAULT_AUTH_TIMEOUT_MS))
            });
            let tls = match (
                cfg.str("tls_certificate").filter(|s| !s.is_empty()),
                cfg.str("tls_private_key").filter(|s| !s.is_empty()),
            ) {
                (Some(c), Some(k)) => Some(tls_acceptor(&c, &k)?),
                (None, None) => None,
                _ => return Err("tls_certificate and tls_private_key go together".into()),
            };
            let mut settings = Settings::new(
                &cfg.str("bind_addr")
                    .unwrap_or_else(|| "127.0.0.1:8448".into()),
            );
            settings.netstrings = cfg.int("netstring_format").unwrap_or(1) != 0;
            settings.max_clients = max_clients as usize;
            settings.max_queue = max_queue as usize;
            // Microseconds, as Kamailio's (SO_SNDTIMEO there).
            settings.send_timeout = duration(
                cfg,
                "send_data_timeout",
                Some(hub::DEFAULT_SEND_TIMEOUT),
                Duration::from_micros,
                "microseconds",
            )?;
            settings.first_message = first_message;
            settings.token = token;
            settings.tls = tls;
            let hub = Hub::new(settings);
            Ok(Arc::new(Evapi {
                hub,
                no_effect: NO_EFFECT
                    .iter()
                    .filter_map(|n| cfg.int(n).map(|v| format!("{n}={v}")))
                    .collect(),
            }) as Arc<dyn Module>)
        }),
    }
}
