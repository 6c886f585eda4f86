//! jsonrpcs (seed 002): Kamailio's JSON-RPC 2.0 management interface.
//!
//! Transports: a FIFO (requests carry `reply_name`, replies go to a FIFO of
//! that name in `fifo_reply_dir`) and datagrams (a unix socket path or
//! `udp:ADDR:PORT`, replies to the sender). `jsonrpc_exec(json)` runs a
//! command from the script with the result in `$jsonrpl(code|text|body)`.
//! Over HTTP, `jsonrpc_dispatch()` in `event_route[xhttp:request]` answers
//! the request body through the route's HTTP [`Exchange`] (the module API's,
//! which xhttp fills): 200 with the reply document (errors included, as
//! JSON-RPC 2.0 servers do), 204 when the body held only notifications; an
//! asynchronous command answers when it completes and holds no worker
//! meanwhile.
//!
//! siphon's own parameters: `max_batch_items` (default 100), `max_reply_size`
//! (bytes, default 4 MiB; datagrams are capped at [`DGRAM_MAX`] anyway) and
//! `http_auth_file` (credentials `jsonrpc_dispatch` requires, see [`auth`]).
//! State-changing commands are logged with their source on every transport.

pub mod auth;
mod dispatch;
mod transport;

pub use dispatch::{Caller, Ctx, FORBIDDEN, Limits, Mode, answer, render};

use bytes::Bytes;
use serde_json::Value;
use siphon_script::api::*;
use siphon_script::http::{Exchange, HttpReply};
use siphon_script::net::Transport;
use siphon_script::rpc::RpcSpec;
use siphon_script::{ArgKind, FunctionSpec, ModuleDef, ParamSpec, PvClassSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The HTTP answer for a rendered reply.
fn http_answer(reply: Option<Vec<u8>>) -> HttpReply {
    match reply {
        None => HttpReply {
            status: 204,
            reason: "No Content".into(),
            content_type: String::new(),
            body: Bytes::new(),
            headers: Vec::new(),
        },
        Some(v) => HttpReply {
            status: 200,
            reason: "OK".into(),
            content_type: "application/json".into(),
            body: Bytes::from(v),
            headers: Vec::new(),
        },
    }
}

/// What is counted (`stats.get_statistics jsonrpcs:`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches over `max_batch_items`, refused.
    pub batch_refused: AtomicU64,
    /// Replies over `max_reply_size` (or a datagram), replaced by -32603.
    pub reply_too_large: AtomicU64,
    /// FIFO replies whose reader did not read in time.
    pub fifo_reply_timeouts: AtomicU64,
    /// Reply FIFOs refused: a symlink, not a FIFO, or not owned as expected.
    pub fifo_reply_refused: AtomicU64,
    /// FIFO input that was not JSON, skipped up to the next document.
    pub fifo_garbage: AtomicU64,
    /// HTTP requests without valid credentials (401).
    pub auth_failures: AtomicU64,
    /// State-changing commands refused to read-only credentials.
    pub read_only_refused: AtomicU64,
}

impl Counters {
    fn all(&self) -> [(&'static str, &AtomicU64); 7] {
        [
            ("jsonrpcs:batch_refused", &self.batch_refused),
            ("jsonrpcs:reply_too_large", &self.reply_too_large),
            ("jsonrpcs:fifo_reply_timeouts", &self.fifo_reply_timeouts),
            ("jsonrpcs:fifo_reply_refused", &self.fifo_reply_refused),
            ("jsonrpcs:fifo_garbage", &self.fifo_garbage),
            ("jsonrpcs:auth_failures", &self.auth_failures),
            ("jsonrpcs:read_only_refused", &self.read_only_refused),
        ]
    }
}

struct Stats(Arc<Counters>);

impl siphon_script::rpc::StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        self.0
            .all()
            .iter()
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed) as i64))
            .collect()
    }
    fn reset(&self, name: &str) {
        if let Some((_, c)) = self.0.all().iter().find(|(n, _)| *n == name) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// 401 with the challenges the configured credentials answer.
fn unauthorized(bearer: bool) -> HttpReply {
    let mut headers = vec![("www-authenticate", "Basic realm=\"siphon\"".to_string())];
    if bearer {
        headers.push(("www-authenticate", "Bearer realm=\"siphon\"".to_string()));
    }
    HttpReply {
        status: 401,
        reason: "Unauthorized".into(),
        content_type: "text/plain".into(),
        body: Bytes::from_static(b"authentication required\n"),
        headers,
    }
}

/// The module's configuration, from its parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// `pretty_format`.
    pub pretty: bool,
    /// `transport`: 0 all, 1 HTTP, 2 FIFO, 4 datagram (a sum).
    pub transport: i64,
    /// `fifo_name`, resolved against the run directory.
    pub fifo: PathBuf,
    /// `fifo_mode`.
    pub fifo_mode: u32,
    /// `fifo_user`, `fifo_group`.
    pub fifo_owner: (Option<String>, Option<String>),
    /// `fifo_reply_dir`.
    pub reply_dir: PathBuf,
    /// `dgram_socket`: a unix path (resolved) or `udp:host:port`.
    pub dgram: String,
    /// `dgram_workers`.
    pub dgram_workers: usize,
    /// `dgram_mode`.
    pub dgram_mode: u32,
    /// `dgram_user`, `dgram_group`.
    pub dgram_owner: (Option<String>, Option<String>),
    /// Where relative paths go.
    pub run_dir: PathBuf,
    /// `max_batch_items`.
    pub max_batch: usize,
    /// `max_reply_size`.
    pub max_reply: usize,
    /// `http_auth_file`, read.
    pub auth: Option<Arc<auth::Credentials>>,
}

/// `max_batch_items`' default.
pub const DEFAULT_MAX_BATCH: usize = 100;
/// `max_reply_size`'s default.
pub const DEFAULT_MAX_REPLY: usize = 4 << 20;

/// Largest FIFO document.
pub const FIFO_MAX: usize = 64 * 1024;
/// Largest datagram request and reply.
pub const DGRAM_MAX: usize = 65_000;

fn mode_of(v: Option<i64>, default: u32) -> u32 {
    // Written as 0660 in configs: the lexer reads 660 decimal; treat its digits as octal.
    match v {
        None => default,
        Some(n) => u32::from_str_radix(&n.to_string(), 8).unwrap_or(default),
    }
}

impl Config {
    fn from(cfg: &ModuleConfig) -> Result<Config, String> {
        let run_dir = PathBuf::from(
            cfg.core
                .run_dir
                .clone()
                .unwrap_or_else(|| "/run/siphon".into()),
        );
        let resolve = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { run_dir.join(p) }
        };
        let dgram = cfg
            .str("dgram_socket")
            .unwrap_or_else(|| "kamailio_rpc.sock".into());
        let dgram = if dgram.starts_with("udp:") || dgram.starts_with("udp6:") {
            dgram
        } else {
            resolve(dgram).display().to_string()
        };
        let transport = cfg.int("transport").unwrap_or(6);
        if !(0..=7).contains(&transport) {
            return Err(format!(
                "transport must be 0-7 (a sum of 1 HTTP, 2 FIFO, 4 datagram), found {transport}"
            ));
        }
        Ok(Config {
            pretty: cfg.int("pretty_format").unwrap_or(0) != 0,
            transport,
            fifo: resolve(
                cfg.str("fifo_name")
                    .unwrap_or_else(|| "kamailio_rpc.fifo".into()),
            ),
            fifo_mode: mode_of(cfg.int("fifo_mode"), 0o660),
            fifo_owner: (cfg.str("fifo_user"), cfg.str("fifo_group")),
            // Kamailio's default is the world-writable /tmp/; siphon's is its run directory.
            reply_dir: cfg
                .str("fifo_reply_dir")
                .map_or_else(|| run_dir.clone(), PathBuf::from),
            dgram,
            dgram_workers: cfg.int("dgram_workers").unwrap_or(1).clamp(1, 64) as usize,
            dgram_mode: mode_of(cfg.int("dgram_mode"), 0o660),
            dgram_owner: (cfg.str("dgram_user"), cfg.str("dgram_group")),
            max_batch: positive(cfg, "max_batch_items", DEFAULT_MAX_BATCH)?,
            max_reply: positive(cfg, "max_reply_size", DEFAULT_MAX_REPLY)?,
            auth: cfg
                .str("http_auth_file")
                .filter(|s| !s.is_empty())
                .map(|p| auth::Credentials::load(&p).map(Arc::new))
                .transpose()?,
            run_dir,
        })
    }
    fn wants(&self, bit: i64) -> bool {
        self.transport == 0 || self.transport & bit != 0
    }
    /// The bounds for a transport whose replies may be at most `cap` bytes.
    fn limits(&self, cap: usize) -> Limits {
        Limits {
            max_batch: self.max_batch,
            max_reply: self.max_reply.min(cap),
            pretty: self.pretty,
        }
    }
}

fn positive(cfg: &ModuleConfig, name: &str, default: usize) -> Result<usize, String> {
    match cfg.int(name) {
        None => Ok(default),
        Some(n) if n > 0 => Ok(n as usize),
        Some(n) => Err(format!("{name} must be positive, found {n}")),
    }
}

/// The loaded module.
pub struct Jsonrpcs {
    cfg: Config,
    counters: Arc<Counters>,
}

/// What `jsonrpc_exec` left for `$jsonrpl(...)`.
#[derive(Debug, Clone, Default)]
struct Jsonrpl {
    code: i64,
    text: String,
    body: Bytes,
}

impl Module for Jsonrpcs {
    fn functions(&self) -> Vec<FunctionSpec> {
        let (limits, exec_limits) = (self.cfg.limits(usize::MAX), self.cfg.limits(usize::MAX));
        let creds = self.cfg.auth.clone();
        let (counters, exec_counters) = (self.counters.clone(), self.counters.clone());
        let http_dispatch = FunctionSpec::new("jsonrpc_dispatch", &[], move |ex, _| {
            let Some(p) = ex.prog.to_shared() else {
                return (-1).into();
            };
            let Some(x) = ex.ctx.ext.get_mut::<Exchange>() else {
                tracing::warn!("jsonrpc_dispatch: not handling an HTTP request (use it in event_route[xhttp:request])");
                return (-1).into();
            };
            if x.answered() {
                tracing::warn!("jsonrpc_dispatch: the request was answered already");
                return (-1).into();
            }
            let peer = *x.peer();
            let transport = if peer.transport == Transport::Tls {
                "https"
            } else {
                "http"
            };
            let mut caller = Caller::new(transport, peer.src.to_string());
            if let Some(c) = &creds {
                match c.check(x.authorization()) {
                    Ok((user, access)) => {
                        caller.user = Some(user);
                        caller.read_only = access == auth::Access::ReadOnly;
                    }
                    Err(e) => {
                        counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("jsonrpc_dispatch: {e} from {transport} {}: 401", peer.src);
                        return if x.reply(unauthorized(c.has_bearer())) { 1.into() } else { (-1).into() };
                    }
                }
            }
            let body = x.body().clone();
            let counters = counters.clone();
            let mut answer = Box::pin(async move {
                let cx = Ctx {
                    program: &p,
                    mode: Mode::Async,
                    caller: &caller,
                    limits,
                    counters: &counters,
                };
                http_answer(dispatch::answer(&cx, &body).await)
            });
            // Commands that answer at once are answered at once; the others later.
            let ok = match dispatch::now(answer.as_mut()) {
                Some(r) => x.reply(r),
                None => x.reply_later(answer),
            };
            if ok { 1.into() } else { (-1).into() }
        })
        .routes(siphon_script::RouteType::REQUEST.or(siphon_script::RouteType::EVENT));
        vec![
            http_dispatch,
            FunctionSpec::new("jsonrpc_exec", &[ArgKind::Str], move |ex, args| {
                let doc = args.bytes(0, ex);
                let Some(p) = ex.prog.to_shared() else {
                    return (-1).into();
                };
                let caller = Caller::new("script", "jsonrpc_exec");
                let cx = Ctx {
                    program: &p,
                    mode: Mode::Sync,
                    caller: &caller,
                    limits: exec_limits,
                    counters: &exec_counters,
                };
                let reply = dispatch::now(dispatch::answer(&cx, &doc)).flatten();
                let state = match reply {
                    None => Jsonrpl {
                        code: 200,
                        text: "OK".into(),
                        body: Bytes::new(),
                    },
                    Some(body) => {
                        // The error, when the reply is one (a batch's are its items').
                        #[derive(serde::Deserialize)]
                        struct Top {
                            error: Option<Value>,
                        }
                        let top = (body.first() == Some(&b'{'))
                            .then(|| serde_json::from_slice::<Top>(&body).ok())
                            .flatten()
                            .and_then(|t| t.error);
                        let body = Bytes::from(body);
                        match top.as_ref() {
                            Some(e) => Jsonrpl {
                                code: e.get("code").and_then(Value::as_i64).unwrap_or(500),
                                text: e
                                    .get("message")
                                    .and_then(Value::as_str)
                                    .unwrap_or("error")
                                    .to_string(),
                                body,
                            },
                            None => Jsonrpl {
                                code: 200,
                                text: "OK".into(),
                                body,
                            },
                        }
                    }
                };
                let ok = state.code == 200;
                ex.ctx.ext.insert(state);
                if ok { 1.into() } else { (-1).into() }
            }),
        ]
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        struct Jpv(u8);
        impl PvAccess for Jpv {
            fn get(&self, ex: &mut siphon_script::Exec<'_>, _: PvIdx) -> siphon_script::Value {
                let Some(s) = ex.ctx.ext.get::<Jsonrpl>() else {
                    return siphon_script::Value::Null;
                };
                match self.0 {
                    0 => siphon_script::Value::Int(s.code),
                    1 => siphon_script::Value::from(s.text.clone()),
                    _ => siphon_script::Value::Str(s.body.clone()),
                }
            }
        }
        vec![PvClassSpec::new(
            "jsonrpl",
            PvInner::Required,
            Arc::new(|inner| {
                let k = match inner.unwrap_or_default() {
                    "code" => 0,
                    "text" => 1,
                    "body" => 2,
                    other => return Err(format!("unknown key `{other}` (code, text, body)")),
                };
                Ok(Arc::new(Jpv(k)) as Arc<dyn PvAccess>)
            }),
        )]
    }

    fn rpc_commands(&self) -> Vec<RpcSpec> {
        vec![RpcSpec::new("jsonrpc.echo", "Returns its params.", |c| {
            Ok(Value::Array(c.params.clone()))
        })]
    }

    fn stats(&self) -> Option<Arc<dyn siphon_script::rpc::StatSource>> {
        Some(Arc::new(Stats(self.counters.clone())))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        if self.cfg.wants(2) {
            transport::start_fifo(&self.cfg, cx.program.clone(), self.counters.clone())?;
        }
        if self.cfg.wants(4) {
            transport::start_dgram(&self.cfg, cx.program.clone(), self.counters.clone())?;
        }
        if self.cfg.wants(1) {
            if !cx.program.modules().iter().any(|(n, _)| n == "xhttp") {
                tracing::warn!(
                    "jsonrpcs: transport includes HTTP (1) but xhttp is not loaded: no HTTP transport"
                );
            } else if self.cfg.auth.is_none() {
                tracing::warn!(
                    "jsonrpcs: HTTP management without authentication: set http_auth_file \
                     (and check $si in event_route[xhttp:request])"
                );
            }
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
        name: "jsonrpcs",
        params: vec![
            ParamSpec::int("pretty_format"),
            ParamSpec::int("transport"),
            ParamSpec::str("fifo_name"),
            ParamSpec::int("fifo_mode"),
            ParamSpec::int_or_str("fifo_group"),
            ParamSpec::int_or_str("fifo_user"),
            ParamSpec::str("fifo_reply_dir"),
            ParamSpec::str("dgram_socket"),
            ParamSpec::int("dgram_workers"),
            ParamSpec::int("dgram_mode"),
            ParamSpec::int_or_str("dgram_group"),
            ParamSpec::int_or_str("dgram_user"),
            ParamSpec::int("dgram_timeout").no_effect(),
            ParamSpec::int("max_batch_items"),
            ParamSpec::int("max_reply_size"),
            ParamSpec::str("http_auth_file"),
        ],
        instantiate: Arc::new(|cfg| {
            Ok(Arc::new(Jsonrpcs {
                cfg: Config::from(cfg)?,
                counters: Arc::new(Counters::default()),
            }) as Arc<dyn Module>)
        }),
    }
}
