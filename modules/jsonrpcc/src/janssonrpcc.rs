//! janssonrpcc: Kamailio's successor API on the same client core.
//!
//! `modparam("janssonrpcc", "server", "conn=NAME;addr=HOST;port=N;priority=P;weight=W")`
//! (repeatable) builds one client per connection group: the **lowest**
//! priority number first, a weighted random pick inside a priority, `hwm`
//! requests in flight per server. `janssonrpc_request(conn, method, params[,
//! "route=R;retry=N;timeout=MS"])` and `janssonrpc_notification(conn, method,
//! params)`. With a route the transaction is suspended and resumed in it with
//! `result_pv` (default `$var(jsrpc_result)`) holding a JSON document:
//! `{"result":…}`, `{"error":…}` or `{"internal_error":{"code","message","data"}}`
//! (read it with `jansson_get`). Without a route the call returns at once
//! and the result is only logged; `retry_codes` then decide which error codes
//! are retried. Retries wait `tries² × timeout` (at most 60 s). Params are
//! strict JSON; empty means no `params` member.

use crate::client::{Client, Outcome, Policy, Settings};
use crate::servers::{ServerSpec, parse_jansson_server};
use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::rpc::StatSource;
use siphon_script::{ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteTable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Where results go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResultPv {
    Var(String),
    Avp(String),
}

fn parse_result_pv(text: &str) -> Result<ResultPv, String> {
    let t = text.trim();
    let inner = |p: &str| {
        t.strip_prefix(p)
            .and_then(|r| r.strip_suffix(')'))
            .filter(|n| !n.is_empty())
    };
    if let Some(n) = inner("$var(") {
        return Ok(ResultPv::Var(n.to_string()));
    }
    if let Some(n) = inner("$avp(") {
        return Ok(ResultPv::Avp(n.to_string()));
    }
    Err(format!("result_pv `{t}` must be $var(name) or $avp(name)"))
}

/// `route=R;retry=N;timeout=MS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The route to resume in.
    pub route: Option<String>,
    /// Retries: -1 forever.
    pub retry: i64,
    /// The request's timeout.
    pub timeout: Duration,
}

/// Parses the options string (`;` separated, a trailing `;` allowed).
pub fn parse_options(text: &str) -> Result<Options, String> {
    let mut o = Options {
        route: None,
        retry: 0,
        timeout: Duration::from_millis(500),
    };
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        match k {
            "route" if !v.is_empty() => o.route = Some(v.to_string()),
            "retry" => {
                o.retry = v
                    .parse()
                    .map_err(|_| format!("retry `{v}` is not a number"))?;
                if o.retry < -1 {
                    return Err(format!(
                        "retry must be -1 (forever) or more, found {}",
                        o.retry
                    ));
                }
            }
            "timeout" => {
                let ms: i64 = v
                    .parse()
                    .map_err(|_| format!("timeout `{v}` is not a number"))?;
                if ms < 1 {
                    return Err(format!("timeout must be at least 1 ms, found {ms}"));
                }
                o.timeout = Duration::from_millis(ms as u64);
            }
            other => return Err(format!("unknown option `{other}` (route, retry, timeout)")),
        }
    }
    Ok(o)
}

/// `retry_codes`: `a,b,c..d` (ranges in either order).
fn parse_codes(text: &str) -> Result<Vec<(i64, i64)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let num = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("retry_codes: `{s}` is not a number"))
            };
            match item.split_once("..") {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    Ok((a.min(b), a.max(b)))
                }
                None => num(item).map(|n| (n, n)),
            }
        })
        .collect()
}

fn internal(code: i64, message: &str, data: &Value) -> Value {
    json!({"internal_error": {"code": code, "message": message, "data": data}})
}

/// The result document for an outcome.
fn document(o: Outcome, retried: bool, request: &Value) -> Value {
    match o {
        Outcome::Result(r) => json!({ "result": r }),
        Outcome::Error(e) => json!({ "error": e }),
        Outcome::Timeout => internal(-100, "Message timeout", request),
        Outcome::Failure if retried => internal(-50, "Retry failed", request),
        Outcome::Failure => internal(-5, "Failed to send", request),
        Outcome::Dropped => internal(-75, "Server disconnected", request),
        Outcome::BadResponse(v) => {
            json!({"internal_error": {"code": -20, "message": "Bad response result", "data": request}, "data": v})
        }
    }
}

struct Call {
    client: Arc<Client>,
    method: String,
    params: Option<Value>,
    opts: Options,
    codes: Vec<(i64, i64)>,
}

impl Call {
    /// Sends, retrying as the options say; the result document.
    async fn run(self) -> Value {
        let request = siphon_proto::jsonrpc::request(None, &self.method, self.params.as_ref());
        let mut tries: i64 = 0;
        loop {
            let o = match self.client.request_with(
                &self.method,
                self.params.clone(),
                Some(self.opts.timeout),
            ) {
                Ok(rx) => rx.await.unwrap_or(Outcome::Dropped),
                Err(_) => Outcome::Failure,
            };
            let retryable = match &o {
                Outcome::Timeout | Outcome::Failure | Outcome::Dropped => true,
                // retry_codes only count without a route (as Kamailio's).
                Outcome::Error(e) if self.opts.route.is_none() => e
                    .get("code")
                    .and_then(Value::as_i64)
                    .is_some_and(|c| self.codes.iter().any(|(a, b)| (*a..=*b).contains(&c))),
                _ => false,
            };
            if retryable && (self.opts.retry == -1 || tries < self.opts.retry) {
                tries += 1;
                let wait = self
                    .opts
                    .timeout
                    .saturating_mul((tries * tries).min(1 << 20) as u32);
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                continue;
            }
            return document(o, tries > 0, &request);
        }
    }
}

/// The loaded module.
pub struct Janssonrpcc {
    conns: HashMap<String, Arc<Client>>,
    result: ResultPv,
    codes: Vec<(i64, i64)>,
}

impl Janssonrpcc {
    fn request_fn(&self, name: &'static str, with_options: bool) -> FunctionSpec {
        let (conns, codes, result) = (self.conns.clone(), self.codes.clone(), self.result.clone());
        let params: &[ArgKind] = if with_options {
            &[ArgKind::Str, ArgKind::Str, ArgKind::Str, ArgKind::Str]
        } else {
            &[ArgKind::Str, ArgKind::Str, ArgKind::Str]
        };
        FunctionSpec::new(name, params, move |ex: &mut Exec<'_>, a: &Args| {
            let (conn, method, text) = (a.text(0, ex), a.text(1, ex), a.text(2, ex));
            let opts = if a.len() > 3 {
                parse_options(&a.text(3, ex))
            } else {
                parse_options("")
            };
            let opts = match opts {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("{name}: {e}");
                    return (-1).into();
                }
            };
            let Some(client) = conns.get(&conn).cloned() else {
                tracing::error!("{name}: no connection group `{conn}`");
                return (-1).into();
            };
            let params = match params_strict(&text) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("{name}({method}): params: {e}");
                    return (-1).into();
                }
            };
            let Some(prog) = ex.prog.to_shared() else {
                return (-1).into();
            };
            let call = Call {
                client,
                method,
                params,
                opts,
                codes: codes.clone(),
            };
            let Some(route_name) = call.opts.route.clone() else {
                tokio::spawn(async move {
                    let m = call.method.clone();
                    let doc = call.run().await;
                    if doc.get("result").is_none() {
                        tracing::info!("janssonrpc_request({m}) without a route: {doc}");
                    }
                });
                return 1.into();
            };
            let Some(route) = prog.route_by_name(RouteTable::Named, &route_name) else {
                tracing::error!("{name}: no route[{route_name}]");
                return (-1).into();
            };
            let result = result.clone();
            FnResult::Suspend(Suspend {
                start: Box::new(move |_ctx, resumer| {
                    tokio::spawn(async move {
                        let text = call.run().await.to_string();
                        resumer.resume(
                            route,
                            Box::new(move |ctx| match &result {
                                ResultPv::Var(n) => {
                                    if let Some(slot) = prog.var_slot(n) {
                                        ctx.vars[slot] = siphon_script::Value::from(text);
                                    }
                                }
                                ResultPv::Avp(n) => ctx
                                    .avps
                                    .push(&Arc::from(n.as_str()), siphon_script::Value::from(text)),
                            }),
                        );
                    });
                }),
            })
        })
    }
}

/// Strict JSON params; empty (or `$null`, which formats empty) means none.
fn params_strict(text: &str) -> Result<Option<Value>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl Module for Janssonrpcc {
    fn functions(&self) -> Vec<FunctionSpec> {
        let conns = self.conns.clone();
        vec![
            self.request_fn("janssonrpc_request", true).min_args(3),
            // The misspelt alias Kamailio exports.
            self.request_fn("jsansonrpc_request", false),
            FunctionSpec::new(
                "janssonrpc_notification",
                &[ArgKind::Str, ArgKind::Str, ArgKind::Str],
                move |ex, a| {
                    let (conn, method, text) = (a.text(0, ex), a.text(1, ex), a.text(2, ex));
                    let Some(client) = conns.get(&conn) else {
                        tracing::error!("janssonrpc_notification: no connection group `{conn}`");
                        return (-1).into();
                    };
                    match params_strict(&text) {
                        Ok(p) => {
                            if client.notify_with(&method, p).is_err() {
                                tracing::warn!(
                                    "janssonrpc_notification({method}): no server available"
                                );
                            }
                            1.into()
                        }
                        Err(e) => {
                            tracing::error!("janssonrpc_notification({method}): params: {e}");
                            (-1).into()
                        }
                    }
                },
            ),
        ]
    }

    fn events(&self) -> Vec<&'static str> {
        vec![crate::client::E_SERVER_STATE]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(crate::Stats(
            self.conns.values().cloned().collect(),
            "janssonrpcc",
        )))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        for c in self.conns.values() {
            c.start(cx.program.clone());
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "janssonrpcc",
        params: vec![
            ParamSpec::str("server").multi(),
            ParamSpec::str("result_pv"),
            ParamSpec::str("retry_codes"),
            ParamSpec::int("keep_alive").no_effect(),
            ParamSpec::int("min_srv_ttl").no_effect(),
        ],
        instantiate: Arc::new(|cfg| {
            let mut groups: HashMap<String, Vec<ServerSpec>> = HashMap::new();
            for v in cfg.all("server") {
                let text = match v {
                    ParamValue::Str(s) => s.clone(),
                    ParamValue::Int(n) => n.to_string(),
                };
                let (conn, spec) =
                    parse_jansson_server(&text).map_err(|e| format!("server \"{text}\": {e}"))?;
                groups.entry(conn).or_default().push(spec);
            }
            if groups.is_empty() {
                tracing::warn!("janssonrpcc: no server parameter: every request will fail");
            }
            let conns = groups
                .into_iter()
                .map(|(conn, specs)| {
                    let c = Client::with_policy(
                        specs,
                        Settings {
                            timeout: Duration::from_millis(500),
                            max_pending: 1000,
                            max_conn_attempts: -1,
                        },
                        Policy::LowFirstWeighted,
                    );
                    (conn, c)
                })
                .collect();
            Ok(Arc::new(Janssonrpcc {
                conns,
                result: parse_result_pv(
                    &cfg.str("result_pv")
                        .unwrap_or_else(|| "$var(jsrpc_result)".into()),
                )?,
                codes: parse_codes(&cfg.str("retry_codes").unwrap_or_default())?,
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_codes_and_result_pv() {
        let o = parse_options("route=RESULT;retry=2;timeout=300;").unwrap();
        assert_eq!(
            (o.route.as_deref(), o.retry, o.timeout),
            (Some("RESULT"), 2, Duration::from_millis(300))
        );
        assert_eq!(
            parse_options("").unwrap().timeout,
            Duration::from_millis(500)
        );
        for bad in ["retry=-2", "timeout=0", "x=1", "route"] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_codes("-32000, 500..400,7").unwrap(),
            vec![(-32000, -32000), (400, 500), (7, 7)]
        );
        assert!(parse_codes("a").is_err());
        assert_eq!(
            parse_result_pv("$var(jsrpc_result)"),
            Ok(ResultPv::Var("jsrpc_result".into()))
        );
        assert_eq!(parse_result_pv("$avp(r)"), Ok(ResultPv::Avp("r".into())));
        assert!(parse_result_pv("$ru").is_err());
    }

    #[test]
    fn result_documents() {
        let req = json!({"jsonrpc": "2.0", "method": "m"});
        assert_eq!(
            document(Outcome::Result(json!(1)), false, &req),
            json!({"result": 1})
        );
        assert_eq!(
            document(Outcome::Error(json!({"code": 1})), false, &req),
            json!({"error": {"code": 1}})
        );
        assert_eq!(
            document(Outcome::Timeout, false, &req)["internal_error"]["code"],
            json!(-100)
        );
        assert_eq!(
            document(Outcome::Failure, true, &req)["internal_error"]["code"],
            json!(-50)
        );
        assert_eq!(
            document(Outcome::Failure, false, &req)["internal_error"]["data"],
            req
        );
        assert_eq!(
            document(Outcome::Dropped, false, &req)["internal_error"]["message"],
            json!("Server disconnected")
        );
    }
}
