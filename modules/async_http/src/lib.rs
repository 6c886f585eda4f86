//! Asynchronous HTTP from the routing script, two APIs on one client:
//!
//! - **async_http** (seed 004): `http_async_get(url, route)`,
//!   `http_async_post(url, data, route)`; the route runs with
//!   `$avp(http_rc)`, `$avp(http_rb)`, `$avp(http_error)` (`timeout` after
//!   `http_timeout`). Params `workers`, `http_timeout` (ms, a total
//!   deadline), `hash_size` (Kamailio's table size: accepted, no limit).
//! - **http_async_client** (today's Kamailio): `http_async_query(url,
//!   route)`, `http_async_send(url, route)`, `http_async_send_xdata(url,
//!   route, xdata)`, `$http_req(key)` setters for the next query, results in
//!   `$http_ok`, `$http_err`, `$http_rs`, `$http_rr`, `$http_hdr(Name)`,
//!   `$http_mb`, `$http_ml`, `$http_rb`, `$http_bs`, `$http_time(total)`,
//!   `$http_req_id`, `$http_xdata`.
//!
//! Where the host says an async call may suspend ([`Host::may_suspend`]: a
//! request route, whose transaction is created if needed, or a resumed or
//! failure route), the call suspends and the reply resumes it in the
//! route. Elsewhere the host runs the route on its own context (with the
//! caller's `$var`s) when the reply comes ([`Host::run_event_route`]).
//!
//! Both modules also take `max_in_flight` (default 10,000: beyond it a call
//! returns -1 at once, counted; nothing waits) and `max_body_size` (default
//! 1 MiB: a longer reply body fails the request with "body too large"). A
//! body goes out as `application/x-www-form-urlencoded`, as libcurl sends it,
//! unless the script sets a Content-Type.

pub mod engine;

use bytes::Bytes;
use engine::{Engine, HttpJob, HttpResult, Settings};
use siphon_script::api::*;
use siphon_script::rpc::StatSource;
use siphon_script::{
    ArgKind, Exec, FunctionSpec, ModuleDef, ParamSpec, PvClassSpec, RouteId, RouteTable, Value,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `async_http`: results in AVPs.
    Seed,
    /// `http_async_client`: results in `$http_*`.
    Client,
}

/// The loaded module.
pub struct AsyncHttp {
    api: Api,
    name: &'static str,
    engine: Arc<Engine>,
    /// The host, from start on: what decides whether a call suspends, and
    /// runs the route of one that could not when its reply comes.
    host: Arc<OnceLock<Arc<dyn Host>>>,
}

/// `$http_req(...)` settings for the next query of this context.
#[derive(Debug, Clone, Default)]
struct NextRequest {
    method: Option<reqwest::Method>,
    body: Option<Bytes>,
    headers: Vec<String>,
    timeout: Option<Duration>,
    no_suspend: bool,
    username: Option<String>,
    password: Option<String>,
}

/// The id of the last query sent from this context.
#[derive(Debug, Clone)]
struct LastId(String);

/// `$http_xdata` for the callback.
#[derive(Debug, Clone)]
struct XData(Bytes);

fn fill(ctx: &mut siphon_script::Ctx, r: HttpResult, api: Api, xdata: Option<Bytes>) {
    if api == Api::Seed {
        for n in ["http_rc", "http_rb", "http_error"] {
            ctx.avps.remove_all(n);
        }
        if let Some(code) = r.status {
            ctx.avps
                .push(&Arc::from("http_rc"), Value::Int(code as i64));
            ctx.avps
                .push(&Arc::from("http_rb"), Value::Str(r.body.clone()));
        }
        if let Some(e) = &r.err {
            ctx.avps
                .push(&Arc::from("http_error"), Value::from(e.clone()));
        }
    }
    if let Some(x) = xdata {
        ctx.ext.insert(XData(x));
    }
    ctx.ext.insert(LastId(r.id.clone()));
    ctx.ext.insert(r);
}

struct Launch {
    engine: Arc<Engine>,
    host: Arc<dyn Host>,
    api: Api,
    route: RouteId,
    suspend: bool,
    xdata: Option<Bytes>,
}

fn launch(ex: &mut Exec<'_>, job: HttpJob, l: Launch) -> FnResult {
    let Some(slot) = l.engine.slot() else {
        tracing::warn!(
            "http: max_in_flight requests are in flight: refusing {}",
            job.url
        );
        return (-1).into();
    };
    ex.ctx.ext.insert(LastId(job.id.clone()));
    let Launch {
        engine,
        host,
        api,
        route,
        suspend,
        xdata,
    } = l;
    if suspend && host.may_suspend(ex.ctx) != SuspendHere::No {
        return FnResult::Suspend(Suspend {
            start: Box::new(move |_ctx, resumer| {
                tokio::spawn(async move {
                    let r = engine.perform(job).await;
                    drop(slot);
                    resumer.resume(route, Box::new(move |ctx| fill(ctx, r, api, xdata)));
                });
            }),
        });
    }
    // Nothing to suspend: the host runs the route on its own context later.
    let vars = ex.ctx.vars.clone();
    tokio::spawn(async move {
        let r = engine.perform(job).await;
        drop(slot);
        let run = host.run_event_route(
            route.into(),
            EventSuspend::Refuse,
            Box::new(move |ctx| {
                ctx.vars = vars;
                fill(ctx, r, api, xdata);
                Ok(())
            }),
        );
        if let Err(e) = run {
            tracing::error!("http: the reply's route does not run: {e}");
        }
    });
    1.into()
}

fn method_of(s: &str) -> Option<reqwest::Method> {
    let up = s.trim().to_ascii_uppercase();
    ["GET", "POST", "PUT", "DELETE", "PATCH"]
        .into_iter()
        .find(|m| up.starts_with(m))
        .and_then(|m| m.parse().ok())
}

// ---------- PVs ----------

#[derive(Clone, Copy)]
enum Res {
    Ok,
    Err,
    Rs,
    Rr,
    Mb,
    Ml,
    Rb,
    Bs,
    ReqId,
    XData,
}

struct ResultPv(Res);

impl PvAccess for ResultPv {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        match self.0 {
            Res::ReqId => {
                return ex
                    .ctx
                    .ext
                    .get::<LastId>()
                    .map_or(Value::Null, |i| Value::from(i.0.clone()));
            }
            Res::XData => {
                return ex
                    .ctx
                    .ext
                    .get::<XData>()
                    .map_or(Value::Null, |x| Value::Str(x.0.clone()));
            }
            _ => {}
        }
        let Some(r) = ex.ctx.ext.get::<HttpResult>() else {
            return Value::Null;
        };
        let replied = r.status.is_some();
        match self.0 {
            Res::Ok => Value::Int(r.ok as i64),
            Res::Err => r.err.clone().map_or(Value::Null, Value::from),
            Res::Rs if replied => Value::Int(r.status.unwrap_or(0) as i64),
            Res::Rr if replied => Value::from(r.reason.clone()),
            Res::Mb if replied => Value::Str(r.whole()),
            Res::Ml if replied => Value::Int(r.whole().len() as i64),
            Res::Rb if replied => Value::Str(r.body.clone()),
            Res::Bs if replied => Value::Int(r.body.len() as i64),
            _ => Value::Null,
        }
    }
}

struct HdrPv(String);

impl PvAccess for HdrPv {
    fn get(&self, ex: &mut Exec<'_>, idx: PvIdx) -> Value {
        let Some(r) = ex.ctx.ext.get::<HttpResult>() else {
            return Value::Null;
        };
        let mut it = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.0));
        let v = match idx {
            PvIdx::At(n) if n >= 0 => it.nth(n as usize),
            PvIdx::At(n) => {
                let all: Vec<_> = it.collect();
                all.len()
                    .checked_sub((-n) as usize)
                    .and_then(|i| all.get(i).copied())
            }
            _ => it.next(),
        };
        v.map_or(Value::Null, |(_, v)| Value::from(v.clone()))
    }
}

struct TimePv;

impl PvAccess for TimePv {
    fn get(&self, ex: &mut Exec<'_>, _: PvIdx) -> Value {
        ex.ctx
            .ext
            .get::<HttpResult>()
            .map_or(Value::Null, |r| Value::Int(r.total.as_micros() as i64))
    }
}

struct ReqPv(String);

impl PvAccess for ReqPv {
    fn get(&self, _: &mut Exec<'_>, _: PvIdx) -> Value {
        Value::Null
    }
    fn set(&self, ex: &mut Exec<'_>, _: PvIdx, v: Value) -> Result<(), String> {
        if ex.ctx.ext.get::<NextRequest>().is_none() {
            ex.ctx.ext.insert(NextRequest::default());
        }
        let Some(n) = ex.ctx.ext.get_mut::<NextRequest>() else {
            return Err("no context".into());
        };
        let null = matches!(v, Value::Null);
        let int = || {
            v.to_int()
                .ok_or_else(|| format!("{} takes a number", "this key"))
        };
        match self.0.as_str() {
            "all" if null => *n = NextRequest::default(),
            "all" => return Err("only $null can be assigned to $http_req(all)".into()),
            "hdr" if null => n.headers.clear(),
            "hdr" => n.headers.push(v.to_text().into_owned()),
            "body" => n.body = (!null).then(|| v.to_bytes()),
            "method" if null => n.method = None,
            "method" => {
                n.method = Some(
                    method_of(&v.to_text())
                        .ok_or("method must be GET, POST, PUT, DELETE or PATCH")?,
                )
            }
            "timeout" => {
                n.timeout = if null {
                    None
                } else {
                    Some(Duration::from_millis(int()?.max(1) as u64))
                }
            }
            "suspend" => n.no_suspend = !null && int()? == 0,
            "username" => n.username = (!null).then(|| v.to_text().into_owned()),
            "password" => n.password = (!null).then(|| v.to_text().into_owned()),
            // Connection-level settings: the module parameters apply (one pooled client).
            "authmethod" | "tls_client_cert" | "tls_client_key" | "tls_ca_path" | "keepalive"
            | "ka-idle" | "ka-interval" | "tcp_keepalive" | "tcp_ka_idle" | "tcp_ka_interval"
            | "follow_redirect" | "http_version" => {
                tracing::debug!(
                    "$http_req({}): per-query value ignored; the module parameter applies",
                    self.0
                );
            }
            _ => return Err(format!("unknown key {}", self.0)),
        }
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
}

const REQ_KEYS: [&str; 21] = [
    "all",
    "hdr",
    "body",
    "method",
    "timeout",
    "suspend",
    "username",
    "password",
    "authmethod",
    "tls_client_cert",
    "tls_client_key",
    "tls_ca_path",
    "keepalive",
    "ka-idle",
    "ka-interval",
    "tcp_keepalive",
    "tcp_ka_idle",
    "tcp_ka_interval",
    "follow_redirect",
    "http_version",
    "tls_verify_peer",
];

fn simple(name: &'static str, r: Res) -> PvClassSpec {
    PvClassSpec::new(
        name,
        PvInner::None,
        Arc::new(move |_| Ok(Arc::new(ResultPv(r)) as Arc<dyn PvAccess>)),
    )
}

// ---------- the module ----------

impl AsyncHttp {
    fn launcher(&self, name: &'static str, params: &[ArgKind], kind: Kind) -> FunctionSpec {
        let (engine, api, host) = (self.engine.clone(), self.api, self.host.clone());
        FunctionSpec::new(name, params, move |ex, a| {
            let Some(host) = host.get().cloned() else {
                tracing::error!("{name}: the module has not started");
                return (-1).into();
            };
            let url = a.text(0, ex);
            let route_idx = if kind == Kind::Post { 2 } else { 1 };
            let Some(route) = a.route(route_idx, ex) else {
                tracing::error!("{name}: no such route");
                return (-1).into();
            };
            let next = if api == Api::Client {
                ex.ctx.ext.remove::<NextRequest>().unwrap_or_default()
            } else {
                NextRequest::default()
            };
            let body = match kind {
                Kind::Post => Some(a.bytes(1, ex)),
                _ => next.body.clone(),
            };
            let method = match (kind, &next.method) {
                (Kind::Post, _) => reqwest::Method::POST,
                (_, Some(m)) => m.clone(),
                (_, None) if body.is_some() => reqwest::Method::POST,
                _ => reqwest::Method::GET,
            };
            let xdata = (kind == Kind::SendXdata).then(|| a.bytes(2, ex));
            let job = HttpJob {
                method,
                url,
                body,
                headers: next.headers,
                timeout: next.timeout,
                auth: next.username.map(|u| (u, next.password)),
                id: engine.next_id(),
            };
            let suspend = !matches!(kind, Kind::Send | Kind::SendXdata) && !next.no_suspend;
            launch(
                ex,
                job,
                Launch {
                    engine: engine.clone(),
                    host,
                    api,
                    route,
                    suspend,
                    xdata,
                },
            )
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Post,
    Query,
    Send,
    SendXdata,
}

impl Module for AsyncHttp {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::{Route, Str};
        let r = Route(RouteTable::Named);
        match self.api {
            Api::Seed => vec![
                self.launcher("http_async_get", &[Str, r], Kind::Get),
                self.launcher("http_async_post", &[Str, Str, r], Kind::Post),
            ],
            Api::Client => vec![
                self.launcher("http_async_query", &[Str, r], Kind::Query),
                self.launcher("http_async_send", &[Str, r], Kind::Send),
                self.launcher("http_async_send_xdata", &[Str, r, Str], Kind::SendXdata),
            ],
        }
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        if self.api == Api::Seed {
            return Vec::new();
        }
        vec![
            PvClassSpec::new(
                "http_req",
                PvInner::Required,
                Arc::new(|inner| {
                    let k = inner.unwrap_or_default();
                    if !REQ_KEYS.contains(&k) {
                        return Err(format!("unknown key `{k}` ({})", REQ_KEYS.join(", ")));
                    }
                    Ok(Arc::new(ReqPv(k.to_string())) as Arc<dyn PvAccess>)
                }),
            ),
            simple("http_ok", Res::Ok),
            simple("http_err", Res::Err),
            simple("http_rs", Res::Rs),
            simple("http_rr", Res::Rr),
            simple("http_mb", Res::Mb),
            simple("http_ml", Res::Ml),
            simple("http_rb", Res::Rb),
            simple("http_bs", Res::Bs),
            simple("http_req_id", Res::ReqId),
            simple("http_xdata", Res::XData),
            PvClassSpec::new(
                "http_hdr",
                PvInner::Required,
                Arc::new(|inner| {
                    Ok(Arc::new(HdrPv(inner.unwrap_or_default().to_string())) as Arc<dyn PvAccess>)
                }),
            ),
            PvClassSpec::new(
                "http_time",
                PvInner::Required,
                Arc::new(|inner| match inner.unwrap_or_default() {
                    "total" => Ok(Arc::new(TimePv) as Arc<dyn PvAccess>),
                    k @ ("lookup" | "connect" | "appconnect" | "pretransfer" | "starttransfer"
                    | "redirect") => Err(format!(
                        "$http_time({k}) is not measured by siphon's client; $http_time(total) is"
                    )),
                    k => Err(format!("unknown key `{k}` (total)")),
                }),
            ),
        ]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.engine.clone(), self.name)))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let _ = self.host.set(cx.host.clone());
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Stats(Arc<Engine>, &'static str);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let c = &self.0.counters;
        [
            ("requests", &c.requests),
            ("replies", &c.replies),
            ("errors", &c.errors),
            ("timeouts", &c.timeouts),
            ("refused", &c.refused),
            ("too_large", &c.too_large),
        ]
        .iter()
        .map(|(n, a)| (format!("{}:{n}", self.1), a.load(Ordering::Relaxed) as i64))
        .collect()
    }
    fn reset(&self, _name: &str) {
        // As Kamailio's: these counters are not resettable.
    }
}

/// The default of `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: i64 = 10_000;

/// `hash_size` is the size of Kamailio's table of requests (a power of two,
/// rounded down); it never limited them. Requests are kept by the runtime
/// here, so it only has to be valid.
fn hash_size(cfg: &ModuleConfig) -> usize {
    let n = cfg.int("hash_size").unwrap_or(2048).max(1) as usize;
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// `max_in_flight` and `max_body_size`, the bounds both modules share.
fn bounds(cfg: &ModuleConfig) -> Result<(usize, usize), String> {
    let _ = hash_size(cfg);
    Ok((
        positive(cfg, "max_in_flight", DEFAULT_MAX_IN_FLIGHT)? as usize,
        positive(cfg, "max_body_size", engine::DEFAULT_MAX_BODY as i64)? as usize,
    ))
}

fn positive(cfg: &ModuleConfig, name: &str, default: i64) -> Result<i64, String> {
    let v = cfg.int(name).unwrap_or(default);
    if v <= 0 {
        return Err(format!("{name} must be positive, found {v}"));
    }
    Ok(v)
}

fn module(api: Api, name: &'static str, settings: Settings) -> Result<Arc<dyn Module>, String> {
    Ok(Arc::new(AsyncHttp {
        api,
        name,
        engine: Arc::new(Engine::new(settings)?),
        host: Arc::default(),
    }) as Arc<dyn Module>)
}

/// The seed's module, `async_http`.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "async_http",
        params: vec![
            ParamSpec::int("workers"),
            ParamSpec::int("http_timeout"),
            ParamSpec::int("hash_size"),
            ParamSpec::int("max_in_flight"),
            ParamSpec::int("max_body_size"),
        ],
        instantiate: Arc::new(|cfg| {
            let (in_flight, max_body) = bounds(cfg)?;
            module(
                Api::Seed,
                "async_http",
                Settings {
                    workers: positive(cfg, "workers", 1)? as usize,
                    in_flight,
                    max_body,
                    timeout: Duration::from_millis(positive(cfg, "http_timeout", 500)? as u64),
                    verify_peer: true,
                    verify_host: true,
                    ca_file: None,
                    follow_redirect: false,
                    tcp_keepalive: None,
                    timeout_text: "timeout",
                },
            )
        }),
    }
}

/// Today's Kamailio module, `http_async_client`.
pub fn def_client() -> ModuleDef {
    ModuleDef {
        name: "http_async_client",
        params: vec![
            ParamSpec::int("workers"),
            ParamSpec::int("connection_timeout"),
            ParamSpec::int("hash_size"),
            ParamSpec::int("tls_version").no_effect(),
            ParamSpec::int("tls_verify_host"),
            ParamSpec::int("tls_verify_peer"),
            ParamSpec::str("tls_client_cert").no_effect(),
            ParamSpec::str("tls_client_key").no_effect(),
            ParamSpec::str("tls_ca_path"),
            ParamSpec::int("curl_follow_redirect"),
            ParamSpec::int("curl_verbose").no_effect(),
            ParamSpec::int("tcp_keepalive"),
            ParamSpec::int("tcp_ka_idle"),
            ParamSpec::int("tcp_ka_interval").no_effect(),
            ParamSpec::int("authmethod").no_effect(),
            ParamSpec::str("memory_manager").no_effect(),
            ParamSpec::int("max_in_flight"),
            ParamSpec::int("max_body_size"),
        ],
        instantiate: Arc::new(|cfg| {
            let (in_flight, max_body) = bounds(cfg)?;
            let keepalive = (cfg.int("tcp_keepalive").unwrap_or(0) != 0)
                .then(|| Duration::from_secs(cfg.int("tcp_ka_idle").unwrap_or(60).max(1) as u64));
            module(
                Api::Client,
                "http_async_client",
                Settings {
                    workers: positive(cfg, "workers", 1)? as usize,
                    in_flight,
                    max_body,
                    timeout: Duration::from_millis(positive(cfg, "connection_timeout", 500)? as u64),
                    verify_peer: cfg.int("tls_verify_peer").unwrap_or(1) != 0,
                    verify_host: cfg.int("tls_verify_host").unwrap_or(1) != 0,
                    ca_file: cfg.str("tls_ca_path").filter(|s| !s.is_empty()),
                    follow_redirect: cfg.int("curl_follow_redirect").unwrap_or(0) != 0,
                    tcp_keepalive: keepalive,
                    timeout_text: "TIMEOUT",
                },
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_size_rounds_down_to_a_power_of_two_and_limits_nothing() {
        let mut cfg = ModuleConfig::default();
        for (given, want) in [(1024, 1024), (1000, 512), (1, 1), (0, 1), (3000, 2048)] {
            cfg.params.insert(
                "hash_size".into(),
                vec![siphon_script::api::ParamValue::Int(given)],
            );
            assert_eq!(hash_size(&cfg), want, "{given}");
            assert_eq!(
                bounds(&cfg),
                Ok((DEFAULT_MAX_IN_FLIGHT as usize, 1 << 20)),
                "{given}"
            );
        }
        cfg.params.insert(
            "max_in_flight".into(),
            vec![siphon_script::api::ParamValue::Int(0)],
        );
        assert!(bounds(&cfg).unwrap_err().contains("max_in_flight"));
    }

    #[test]
    fn methods() {
        assert_eq!(method_of("post"), Some(reqwest::Method::POST));
        assert_eq!(method_of("PATCH"), Some(reqwest::Method::PATCH));
        assert_eq!(method_of("BREW"), None);
    }
}
