//! xhttp: HTTP on the SIP TCP listeners, as Kamailio's xhttp module.
//!
//! The SIP transport looks at the first line of every TCP connection; when it
//! ends in `HTTP/1.x` the connection comes here (the [`HttpService`] xhttp
//! registers with its [`Host`] at start) and hyper speaks HTTP/1.1 on it
//! (keep-alive, pipelining, chunked bodies). Each request becomes a
//! SIP-shaped message (the request line with its `HTTP/1.x` version, the
//! headers and the body, as Kamailio fakes it), which the host makes the
//! route's message ([`Host::set_http_message`]) so the script's
//! `$hdr(...)`, `$rb`, `$rm`, `$si`, `$sp`, `$Rp` work unchanged, and the
//! host runs `event_route[xhttp:request]` over it
//! ([`Host::run_event_route`]; an async call in it cannot suspend, there
//! is no transaction, as in Kamailio). The route answers with
//! `xhttp_reply(code, reason, content_type, body)` or a module that fills the
//! [`Exchange`] (the module API's: jsonrpcs' `jsonrpc_dispatch()`,
//! xhttp_prom's `prom_dispatch()`); an answer may come later (an
//! asynchronous RPC command) without holding a worker. xhttp depends on the
//! module API only, not on the core.
//!
//! Parameters: `url_match`, `url_skip` (regular expressions on the URL; skip
//! wins; a filtered URL gets 404 without running the route),
//! `event_callback` (KEMI only: refused with an explanation), and siphon's
//! own `body_timeout` (ms, default 10000): how long a request's body may take
//! to arrive once its headers are in; later gets 408 and the connection is
//! closed. A `Content-Length` over [`MAX_BODY`] gets 413 at once, without
//! waiting for the body.

pub mod prom;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use siphon_script::api::*;
use siphon_script::http::{Answer, Exchange, HttpReply, HttpService, PrefixedStream};
use siphon_script::net::Peer;
use siphon_script::{ArgKind, FunctionSpec, ModuleDef, ParamSpec, PvClassSpec, RouteId, Value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The largest request body accepted; larger gets 413 (with a JSON-RPC error body).
pub const MAX_BODY: usize = 1 << 20;
/// The event route HTTP requests run.
pub const EVENT_ROUTE: &str = "xhttp:request";
/// [`EVENT_ROUTE`] as the configuration names it.
const EVENT_ROUTE_NAME: &str = "event_route[xhttp:request]";
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `body_timeout`'s default: how long a request body may take to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The module's settings and counters.
struct Inner {
    url_match: Option<regex::Regex>,
    url_skip: Option<regex::Regex>,
    body_timeout: Duration,
    requests: AtomicU64,
    unanswered: AtomicU64,
    too_large: AtomicU64,
    body_timeouts: AtomicU64,
}

/// The loaded module.
pub struct Xhttp {
    inner: Arc<Inner>,
}

fn reply(status: u16, reason: &str, ctype: &str, body: impl Into<Bytes>) -> HttpReply {
    HttpReply {
        status,
        reason: reason.into(),
        content_type: ctype.into(),
        body: body.into(),
        headers: Vec::new(),
    }
}

fn to_response(r: HttpReply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if resp.status().canonical_reason() != Some(r.reason.as_str())
        && !r.reason.is_empty()
        && let Ok(p) = hyper::ext::ReasonPhrase::try_from(r.reason.into_bytes())
    {
        resp.extensions_mut().insert(p);
    }
    let h = resp.headers_mut();
    if !r.content_type.is_empty()
        && let Ok(v) = hyper::header::HeaderValue::from_str(&r.content_type)
    {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    h.insert(
        hyper::header::SERVER,
        hyper::header::HeaderValue::from_static("siphon"),
    );
    for (name, value) in r.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            h.append(name, v);
        }
    }
    resp
}

/// A request in SIP's shape, with views of its URL and body (what the
/// route's modules read: no second copy).
struct Faked {
    raw: Bytes,
    url: Bytes,
    body: Bytes,
}

/// The request as the SIP parser reads it: request line, headers (without
/// the framing ones, which hyper consumed), our Content-Length, body.
fn as_message(parts: &hyper::http::request::Parts, url: &str, body: &Bytes) -> Faked {
    let mut b = BytesMut::with_capacity(256 + body.len());
    let version = match parts.version {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    b.put_slice(parts.method.as_str().as_bytes());
    b.put_u8(b' ');
    let url_at = b.len();
    b.put_slice(url.as_bytes());
    let url_end = b.len();
    b.put_u8(b' ');
    b.put_slice(version.as_bytes());
    b.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            continue;
        }
        b.put_slice(name.as_str().as_bytes());
        b.put_slice(b": ");
        b.put_slice(value.as_bytes());
        b.put_slice(b"\r\n");
    }
    b.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    let body_at = b.len();
    b.put_slice(body);
    let raw = b.freeze();
    Faked {
        url: raw.slice(url_at..url_end),
        body: raw.slice(body_at..),
        raw,
    }
}

impl Inner {
    /// 413, with a JSON-RPC error body; the connection is closed (hyper does
    /// not read the rest of a body nobody consumed).
    fn too_large(&self) -> HttpReply {
        self.too_large.fetch_add(1, Ordering::Relaxed);
        let err = siphon_proto::jsonrpc::error(
            None,
            &siphon_proto::jsonrpc::RpcError::new(
                siphon_proto::jsonrpc::INVALID_REQUEST,
                format!("Invalid Request: body over {MAX_BODY} bytes"),
            ),
        );
        let mut r = reply(
            413,
            "Payload Too Large",
            "application/json",
            format!("{err}\n"),
        );
        r.headers.push(("connection", "close".into()));
        r
    }
}

/// What serves the requests once the module started: its settings, and
/// the host that makes them route messages and runs their route.
struct Server {
    inner: Arc<Inner>,
    /// `event_route[xhttp:request]`; without it every request gets 404.
    route: Option<RouteId>,
    host: Arc<dyn Host>,
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> HttpReply {
        let inner = &self.inner;
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let url = match req.uri().path_and_query() {
            Some(pq) if req.uri().scheme().is_none() => pq.as_str().to_string(),
            _ => req.uri().to_string(),
        };
        let filtered = inner.url_skip.as_ref().is_some_and(|r| r.is_match(&url))
            || inner.url_match.as_ref().is_some_and(|r| !r.is_match(&url));
        let Some(route) = self.route.filter(|_| !filtered) else {
            return reply(404, "Not Found", "text/plain", "Not Found\n");
        };
        let (parts, body) = req.into_parts();
        // An announced length over the limit is refused before any of the body is read.
        let announced = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY as u64) {
            return inner.too_large();
        }
        let body =
            match tokio::time::timeout(inner.body_timeout, Limited::new(body, MAX_BODY).collect())
                .await
            {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return inner.too_large();
                }
                Ok(Err(_)) => return reply(400, "Bad Request", "text/plain", "unreadable body\n"),
                Err(_) => {
                    inner.body_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "xhttp: the body of {url} from {} did not arrive within {} ms: 408",
                        peer.src,
                        inner.body_timeout.as_millis()
                    );
                    let mut r = reply(
                        408,
                        "Request Timeout",
                        "text/plain",
                        "the request body did not arrive in time\n",
                    );
                    r.headers.push(("connection", "close".into()));
                    return r;
                }
            };
        let msg = as_message(&parts, &url, &body);
        let authorization = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let host = &self.host;
        let run = host.run_event_route(
            route.into(),
            EventSuspend::Refuse,
            Box::new(move |ctx| {
                // The SIP pseudo-variables ($hdr, $rb, $rm, $si…) read the request.
                host.set_http_message(ctx, msg.raw, peer)?;
                ctx.ext
                    .insert(Exchange::new(msg.url, msg.body, peer, authorization));
                Ok(())
            }),
        );
        let mut ctx = match run {
            Ok(run) => run.finished().await.map(|d| d.ctx),
            Err(RunError::NotBuilt(e)) => {
                return reply(
                    400,
                    "Bad Request",
                    "text/plain",
                    format!("bad request: {e}\n"),
                );
            }
            Err(e) => {
                tracing::error!("xhttp: {e}");
                None
            }
        };
        let exchange = ctx.as_mut().and_then(|c| c.ext.get_mut::<Exchange>());
        let close = exchange
            .as_deref()
            .is_some_and(Exchange::closes_after_reply);
        let closing = |mut r: HttpReply| {
            if close {
                r.headers.push(("connection", "close".into()));
            }
            r
        };
        match exchange.and_then(Exchange::take_answer) {
            Some(Answer::Now(r)) => closing(r),
            Some(Answer::Later(f)) => {
                // The context is not needed while the answer is computed.
                drop(ctx);
                closing(f.await)
            }
            None => {
                inner.unanswered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("event_route[{EVENT_ROUTE}] gave no reply to {url}: answering 500");
                reply(
                    500,
                    "Server Internal Error",
                    "text/plain",
                    "no reply from the routing script\n",
                )
            }
        }
    }
}

struct Service(Arc<Server>);

impl HttpService for Service {
    fn serve(
        &self,
        io: PrefixedStream,
        peer: Peer,
        shutdown: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let server = self.0.clone();
        Box::pin(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(to_response(server.handle(req, peer).await)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("http connection from {}: {e}", peer.src);
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
        })
    }
}

struct Hu;

impl PvAccess for Hu {
    fn get(&self, ex: &mut siphon_script::Exec<'_>, _: PvIdx) -> Value {
        ex.ctx
            .ext
            .get::<Exchange>()
            .map_or(Value::Null, |x| Value::Str(x.url().clone()))
    }
}

struct XhttpStats(Arc<Inner>);

impl siphon_script::rpc::StatSource for XhttpStats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        vec![
            ("xhttp:requests".into(), g(&self.0.requests)),
            ("xhttp:unanswered".into(), g(&self.0.unanswered)),
            ("xhttp:too_large".into(), g(&self.0.too_large)),
            ("xhttp:body_timeouts".into(), g(&self.0.body_timeouts)),
        ]
    }
    fn reset(&self, name: &str) {
        let c = match name {
            "xhttp:requests" => &self.0.requests,
            "xhttp:unanswered" => &self.0.unanswered,
            "xhttp:too_large" => &self.0.too_large,
            "xhttp:body_timeouts" => &self.0.body_timeouts,
            _ => return,
        };
        c.store(0, Ordering::Relaxed);
    }
}

impl Module for Xhttp {
    fn functions(&self) -> Vec<FunctionSpec> {
        vec![FunctionSpec::new(
            "xhttp_reply",
            &[ArgKind::Any, ArgKind::Str, ArgKind::Str, ArgKind::Str],
            |ex, args| {
                let code = args.int(0, ex).unwrap_or(0);
                let reason = args.text(1, ex);
                let ctype = args.text(2, ex);
                let body = args.bytes(3, ex);
                let Some(x) = ex.ctx.ext.get_mut::<Exchange>() else {
                    tracing::warn!("xhttp_reply: not handling an HTTP request");
                    return (-1).into();
                };
                if !(100..=999).contains(&code) {
                    tracing::warn!("xhttp_reply: bad status code {code}");
                    return (-1).into();
                }
                if x.reply(reply(code as u16, &reason, &ctype, body)) {
                    1.into()
                } else {
                    tracing::warn!("xhttp_reply: the request was answered already");
                    (-1).into()
                }
            },
        )]
    }

    fn pv_classes(&self) -> Vec<PvClassSpec> {
        vec![PvClassSpec::new(
            "hu",
            PvInner::None,
            Arc::new(|_| Ok(Arc::new(Hu) as Arc<dyn PvAccess>)),
        )]
    }

    fn event_routes(&self) -> Vec<&'static str> {
        vec![EVENT_ROUTE]
    }

    fn stats(&self) -> Option<Arc<dyn siphon_script::rpc::StatSource>> {
        Some(Arc::new(XhttpStats(self.inner.clone())))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let route = cx.host.find_route(EVENT_ROUTE_NAME);
        if route.is_none() {
            tracing::warn!(
                "xhttp: no event_route[{EVENT_ROUTE}]: HTTP requests will get 404 Not Found"
            );
        }
        let server = Server {
            inner: self.inner.clone(),
            route,
            host: cx.host.clone(),
        };
        if !cx
            .host
            .set_http_service(Arc::new(Service(Arc::new(server))))
        {
            return Err("another HTTP service is registered already".into());
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn regex_param(cfg: &ModuleConfig, name: &str) -> Result<Option<regex::Regex>, String> {
    cfg.str(name)
        .filter(|s| !s.is_empty())
        .map(|s| regex::Regex::new(&s).map_err(|e| format!("{name}: bad regular expression: {e}")))
        .transpose()
}

/// The module definition; HTTP connections of the host's SIP TCP listeners come here.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "xhttp",
        params: vec![
            ParamSpec::str("url_match"),
            ParamSpec::str("url_skip"),
            ParamSpec::str("event_callback"),
            ParamSpec::int("body_timeout"),
        ],
        instantiate: Arc::new(|cfg| {
            if let Some(cb) = cfg.str("event_callback").filter(|s| !s.is_empty()) {
                return Err(format!(
                    "event_callback \"{cb}\" names a KEMI function; siphon runs native \
                     configuration scripts: use event_route[{EVENT_ROUTE}] instead"
                ));
            }
            let body_timeout = match cfg.int("body_timeout") {
                None => DEFAULT_BODY_TIMEOUT,
                Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
                Some(ms) => {
                    return Err(format!(
                        "body_timeout must be a positive number of milliseconds, found {ms}"
                    ));
                }
            };
            Ok(Arc::new(Xhttp {
                inner: Arc::new(Inner {
                    url_match: regex_param(cfg, "url_match")?,
                    url_skip: regex_param(cfg, "url_skip")?,
                    body_timeout,
                    requests: AtomicU64::new(0),
                    unanswered: AtomicU64::new(0),
                    too_large: AtomicU64::new(0),
                    body_timeouts: AtomicU64::new(0),
                }),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faked_message_parses_with_headers_and_body() {
        let req = Request::builder()
            .method("POST")
            .uri("/RPC?x=1")
            .header("Content-Type", "application/json")
            .header("Transfer-Encoding", "chunked")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let body = Bytes::from_static(b"{\"a\":1}");
        let faked = as_message(&parts, "/RPC?x=1", &body);
        let m = siphon_sip::parse_http_request(faked.raw).unwrap();
        assert_eq!(m.ruri().as_deref(), Some(&b"/RPC?x=1"[..]));
        assert_eq!(&m.body_bytes()[..], &body[..]);
        // The views the route's modules read are the parser's.
        assert_eq!(&faked.url[..], b"/RPC?x=1");
        assert_eq!(faked.body, m.body_bytes());
        assert_eq!(m.headers_named(b"transfer-encoding").count(), 0);
        assert_eq!(m.headers_named(b"content-type").count(), 1);
    }

    #[test]
    fn custom_reasons_are_kept_and_bad_codes_become_500() {
        let r = to_response(reply(403, "Not Allowed Here", "text/html", "x"));
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|p| p.as_bytes().to_vec()),
            Some(b"Not Allowed Here".to_vec())
        );
        assert_eq!(to_response(reply(1000, "x", "", "")).status(), 500);
    }
}
