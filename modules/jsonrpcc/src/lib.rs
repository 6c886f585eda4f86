//! jsonrpcc (seed 000): JSON-RPC 2.0 client over TCP with netstring framing.
//!
//! `servers` = `"host:port,priority …"`: groups by priority (the highest
//! number first), real round robin inside a group (the seed promises it),
//! failover to the next server and group. `jsonrpc_notification(method,
//! params)` returns at once; `jsonrpc_request(method, params, return_route,
//! error_route, result_var)` suspends the transaction (creating it if
//! needed) and resumes it in `route[return_route]` with the result, or in
//! `route[error_route]` with `timeout`, `failure` or the error object. Params
//! text is read leniently (the seed's single-quoted `{'id': 1234}`).
//!
//! Beyond the seed: `timeout` (ms, default 500), `max_pending` per server
//! (default 1000), reconnects with exponential backoff, a lost connection
//! fails its requests at once, `E_JSONRPCC_SERVER_STATE` events, RPC
//! `jsonrpcc.servers`, statistics.

pub mod client;
pub mod janssonrpcc;
pub mod servers;

use client::{Client, Outcome, Settings};
use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::rpc::{RpcSpec, StatSource};
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteTable};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The loaded module.
pub struct Jsonrpcc {
    client: Arc<Client>,
}

/// Params text → JSON (lenient: single quotes allowed). `None` when it is no JSON at all.
pub(crate) fn params_of(text: &str) -> Option<Value> {
    siphon_proto::lenient::parse(text).ok()
}

/// What `result_var` receives.
pub fn result_text(o: &Outcome) -> String {
    match o {
        Outcome::Result(Value::String(s)) => s.clone(),
        Outcome::Result(v) | Outcome::Error(v) => v.to_string(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Failure | Outcome::Dropped | Outcome::BadResponse(_) => "failure".into(),
    }
}

impl Module for Jsonrpcc {
    fn functions(&self) -> Vec<FunctionSpec> {
        let client = self.client.clone();
        let notification = FunctionSpec::new(
            "jsonrpc_notification",
            &[ArgKind::Str, ArgKind::Str],
            move |ex, a| {
                let method = a.text(0, ex);
                let text = a.text(1, ex);
                let Some(params) = params_of(&text) else {
                    tracing::error!("jsonrpc_notification({method}): params are not JSON: {text}");
                    return (-1).into();
                };
                if client.notify(&method, params).is_err() {
                    tracing::warn!("jsonrpc_notification({method}): no server available");
                }
                1.into()
            },
        );
        let client = self.client.clone();
        let request = FunctionSpec::new(
            "jsonrpc_request",
            &[
                ArgKind::Str,
                ArgKind::Str,
                ArgKind::Route(RouteTable::Named),
                ArgKind::Route(RouteTable::Named),
                ArgKind::PvWritable,
            ],
            move |ex: &mut Exec<'_>, a: &Args| {
                let method = a.text(0, ex);
                let text = a.text(1, ex);
                let Some(params) = params_of(&text) else {
                    tracing::error!("jsonrpc_request({method}): params are not JSON: {text}");
                    return (-1).into();
                };
                let (Some(ok_route), Some(err_route)) = (a.route(2, ex), a.route(3, ex)) else {
                    tracing::error!("jsonrpc_request({method}): no such return or error route");
                    return (-1).into();
                };
                let Some(pv) = a.pv(4).cloned() else {
                    return (-1).into();
                };
                let Some(program) = ex.prog.to_shared() else {
                    return (-1).into();
                };
                let client = client.clone();
                FnResult::Suspend(Suspend {
                    start: Box::new(move |_ctx, resumer| {
                        let finish = move |o: Outcome| {
                            let route = if matches!(o, Outcome::Result(_)) {
                                ok_route
                            } else {
                                err_route
                            };
                            let text = result_text(&o);
                            resumer.resume(
                                route,
                                Box::new(move |ctx| {
                                    let mut ex = Exec::new(&program, ctx);
                                    if let Err(e) =
                                        ex.set_pv(&pv, siphon_script::Value::from(text), false)
                                    {
                                        tracing::error!("jsonrpc_request: result_var: {e}");
                                    }
                                }),
                            );
                        };
                        match client.request(&method, params) {
                            Ok(rx) => {
                                tokio::spawn(async move {
                                    finish(rx.await.unwrap_or(Outcome::Failure));
                                });
                            }
                            Err(client::NoServer) => {
                                tracing::warn!("jsonrpc_request({method}): no server available");
                                finish(Outcome::Failure);
                            }
                        }
                    }),
                })
            },
        );
        vec![notification, request]
    }

    fn events(&self) -> Vec<&'static str> {
        vec![client::E_SERVER_STATE]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let client = self.client.clone();
        vec![RpcSpec::new(
            "jsonrpcc.servers",
            "The JSON-RPC servers: address, priority, state, requests in flight and counters.",
            move |_| {
                Ok(Value::Array(
                    client
                        .servers()
                        .map(|s| {
                            let c = &s.counters;
                            let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                            json!({
                                "server": s.spec.addr_text(), "priority": s.spec.priority,
                                "state": s.state_name(), "in_flight": s.in_flight(),
                                "sent": g(&c.sent), "replies": g(&c.replies), "errors": g(&c.errors),
                                "timeouts": g(&c.timeouts), "failed": g(&c.failures),
                                "reconnects": g(&c.reconnects),
                            })
                        })
                        .collect(),
                ))
            },
        )]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(vec![self.client.clone()], "jsonrpcc")))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        self.client.start(cx.program.clone());
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Counters of a module's clients, as `GROUP:name`.
pub(crate) struct Stats(pub(crate) Vec<Arc<Client>>, pub(crate) &'static str);

const STAT_NAMES: [&str; 7] = [
    "sent",
    "replies",
    "errors",
    "timeouts",
    "failures",
    "reconnects",
    "no_server",
];

fn counter<'a>(c: &'a client::Counters, name: &str) -> Option<&'a std::sync::atomic::AtomicU64> {
    Some(match name {
        "sent" => &c.sent,
        "replies" => &c.replies,
        "errors" => &c.errors,
        "timeouts" => &c.timeouts,
        "failures" => &c.failures,
        "reconnects" => &c.reconnects,
        _ => return None,
    })
}

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        STAT_NAMES
            .iter()
            .map(|n| {
                let v: u64 = self
                    .0
                    .iter()
                    .map(|client| match *n {
                        "no_server" => client.no_server.load(Ordering::Relaxed),
                        _ => client
                            .servers()
                            .filter_map(|s| counter(&s.counters, n))
                            .map(|a| a.load(Ordering::Relaxed))
                            .sum(),
                    })
                    .sum();
                (format!("{}:{n}", self.1), v as i64)
            })
            .collect()
    }
    fn reset(&self, name: &str) {
        let Some(n) = name.strip_prefix(self.1).and_then(|r| r.strip_prefix(':')) else {
            return;
        };
        for client in &self.0 {
            if n == "no_server" {
                client.no_server.store(0, Ordering::Relaxed);
            }
            for s in client.servers() {
                if let Some(a) = counter(&s.counters, n) {
                    a.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "jsonrpcc",
        params: vec![
            ParamSpec::str("servers"),
            ParamSpec::int("max_conn_attempts"),
            ParamSpec::int("timeout"),
            ParamSpec::int("max_pending"),
        ],
        instantiate: Arc::new(|cfg| {
            // Without servers (a configuration fragment such as the seed's
            // example 1.2) the module loads and every message fails.
            let servers = match cfg.str("servers") {
                Some(text) => servers::parse_servers(&text).map_err(|e| format!("servers: {e}"))?,
                None => {
                    tracing::warn!("jsonrpcc: no servers parameter: every request will fail");
                    Vec::new()
                }
            };
            let timeout = cfg.int("timeout").unwrap_or(500);
            if timeout <= 0 {
                return Err(format!(
                    "timeout must be a positive number of milliseconds, found {timeout}"
                ));
            }
            let max_pending = cfg.int("max_pending").unwrap_or(1000);
            if max_pending <= 0 {
                return Err(format!("max_pending must be positive, found {max_pending}"));
            }
            let attempts = cfg.int("max_conn_attempts").unwrap_or(-1);
            if attempts < -1 {
                return Err(format!(
                    "max_conn_attempts must be -1 (forever), 0 or more, found {attempts}"
                ));
            }
            Ok(Arc::new(Jsonrpcc {
                client: Client::new(
                    servers,
                    Settings {
                        timeout: Duration::from_millis(timeout as u64),
                        max_pending: max_pending as usize,
                        max_conn_attempts: attempts,
                    },
                ),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_var_texts() {
        assert_eq!(result_text(&Outcome::Result(json!("Petros"))), "Petros");
        assert_eq!(
            result_text(&Outcome::Result(json!({"a": [1, 2]}))),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(result_text(&Outcome::Result(json!(7))), "7");
        assert_eq!(
            result_text(&Outcome::Error(json!({"code": -1, "message": "x"}))),
            r#"{"code":-1,"message":"x"}"#
        );
        assert_eq!(result_text(&Outcome::Timeout), "timeout");
        assert_eq!(result_text(&Outcome::Failure), "failure");
    }

    #[test]
    fn params_are_read_leniently() {
        assert_eq!(
            params_of("{'id': 1234, 'name': 'Petros'}"),
            Some(json!({"id": 1234, "name": "Petros"}))
        );
        assert_eq!(params_of("[1, \"a\"]"), Some(json!([1, "a"])));
        assert_eq!(params_of("not json"), None);
    }
}
