//! The HTTP client shared by both APIs: pooled keep-alive connections
//! (reqwest on hyper, rustls with ring), a bound on requests in flight, a
//! total deadline per request, a cap on the reply body, counters. A request
//! is a plain value in, a [`HttpResult`] out.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client instances (each with its own connection pool), used in turn.
    pub workers: usize,
    /// Requests in flight at most (`max_in_flight`).
    pub in_flight: usize,
    /// The largest reply body read (`max_body_size`); a longer one fails
    /// the request with [`BODY_TOO_LARGE`].
    pub max_body: usize,
    /// Default deadline of a request.
    pub timeout: Duration,
    /// Verify the server's certificate.
    pub verify_peer: bool,
    /// Verify that the certificate names the host.
    pub verify_host: bool,
    /// Extra trusted CA certificates (a PEM file or a directory of them).
    pub ca_file: Option<String>,
    /// Follow redirects.
    pub follow_redirect: bool,
    /// TCP keep-alive idle time.
    pub tcp_keepalive: Option<Duration>,
    /// The text `http_error`/`$http_err` holds after a timeout.
    pub timeout_text: &'static str,
}

/// The error text of a reply whose body is over `max_body_size`.
pub const BODY_TOO_LARGE: &str = "body too large";

/// The Content-Type a body goes out with when the script sets none: what
/// libcurl sends for `CURLOPT_POSTFIELDS`, so what Kamailio's module sends.
pub const DEFAULT_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The default of `max_body_size`: 1 MiB, as jsonrpcc's frames and xhttp's bodies.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// One request.
#[derive(Debug, Clone)]
pub struct HttpJob {
    /// Method.
    pub method: reqwest::Method,
    /// URL.
    pub url: String,
    /// Body (POST data).
    pub body: Option<Bytes>,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<String>,
    /// Deadline (None: the default).
    pub timeout: Option<Duration>,
    /// Basic-auth credentials.
    pub auth: Option<(String, Option<String>)>,
    /// `$http_req_id`.
    pub id: String,
}

/// How a request ended: what the callback route reads.
#[derive(Debug, Clone, Default)]
pub struct HttpResult {
    /// A reply arrived (4xx/5xx included).
    pub ok: bool,
    /// Why not (`timeout`, a connection error).
    pub err: Option<String>,
    /// Status code.
    pub status: Option<u16>,
    /// Reason phrase.
    pub reason: String,
    /// `HTTP/1.1`.
    pub version: String,
    /// Response headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Time from start to the whole body.
    pub total: Duration,
    /// `$http_req_id`.
    pub id: String,
}

impl HttpResult {
    /// The whole reply as text: status line, headers, blank line, body (`$http_mb`).
    pub fn whole(&self) -> Bytes {
        let Some(code) = self.status else {
            return Bytes::new();
        };
        let mut s = format!("{} {code} {}\r\n", self.version, self.reason);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        let mut b = s.into_bytes();
        b.extend_from_slice(&self.body);
        Bytes::from(b)
    }
}

/// Counters (`requests`, `replies`, `errors`, `timeouts`, plus refusals).
#[derive(Debug, Default)]
pub struct Counters {
    /// Every request started.
    pub requests: AtomicU64,
    /// Replies received (any status).
    pub replies: AtomicU64,
    /// Connection and protocol errors.
    pub errors: AtomicU64,
    /// Deadlines reached.
    pub timeouts: AtomicU64,
    /// Refused at once: `max_in_flight` requests were in flight.
    pub refused: AtomicU64,
    /// Replies whose body was over `max_body_size` (also counted in `errors`).
    pub too_large: AtomicU64,
}

/// Why a reply was not taken.
#[derive(Debug)]
enum FetchError {
    Http(reqwest::Error),
    TooLarge,
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        FetchError::Http(e)
    }
}

/// Reads a body of at most `max` bytes, chunk by chunk: the first chunk
/// past the cap ends the read (the connection is then dropped, not pooled).
async fn read_capped(resp: &mut reqwest::Response, max: usize) -> Result<Bytes, FetchError> {
    // An announced length over the cap fails before a byte of it is read.
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(FetchError::TooLarge);
    }
    // Copied out of the connection's buffers into one of its own size, so a
    // kept `$http_rb` pins nothing else.
    let mut body = BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The client.
pub struct Engine {
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
    slots: Arc<Semaphore>,
    settings: Settings,
    /// Its counters.
    pub counters: Counters,
    ids: AtomicU64,
}

fn install_ring() {
    // Once per process; a second call fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Engine {
    /// Builds the client pool.
    pub fn new(settings: Settings) -> Result<Engine, String> {
        install_ring();
        let ca = match &settings.ca_file {
            Some(path) => {
                // A directory of PEM files (as curl's CAPATH) or one PEM bundle.
                let files: Vec<std::path::PathBuf> = match std::fs::read_dir(path) {
                    Ok(dir) => dir
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file())
                        .collect(),
                    Err(_) => vec![path.into()],
                };
                let mut certs = Vec::new();
                for f in files {
                    let pem = std::fs::read(&f)
                        .map_err(|e| format!("tls_ca_path {}: {e}", f.display()))?;
                    certs.extend(
                        reqwest::Certificate::from_pem_bundle(&pem)
                            .map_err(|e| format!("tls_ca_path {}: {e}", f.display()))?,
                    );
                }
                Some(certs)
            }
            None => None,
        };
        let mut clients = Vec::new();
        for _ in 0..settings.workers.max(1) {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .redirect(if settings.follow_redirect {
                    reqwest::redirect::Policy::limited(10)
                } else {
                    reqwest::redirect::Policy::none()
                })
                .tls_danger_accept_invalid_certs(!settings.verify_peer)
                .tls_danger_accept_invalid_hostnames(!settings.verify_host);
            if let Some(ka) = settings.tcp_keepalive {
                b = b.tcp_keepalive(ka);
            }
            if let Some(ca) = &ca {
                b = b.tls_certs_merge(ca.iter().cloned());
            }
            clients.push(
                b.build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            );
        }
        Ok(Engine {
            clients,
            next: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(settings.in_flight.max(1))),
            settings,
            counters: Counters::default(),
            ids: AtomicU64::new(0),
        })
    }

    /// A fresh `$http_req_id`: `<pid>-<counter>`.
    pub fn next_id(&self) -> String {
        format!(
            "{}-{}",
            std::process::id(),
            self.ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// A slot in the in-flight table, or `None` (counted) when it is full.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Performs a request.
    pub async fn perform(&self, job: HttpJob) -> HttpResult {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let client = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
        let started = Instant::now();
        let timeout = job.timeout.unwrap_or(self.settings.timeout);
        let mut rb = client.request(job.method.clone(), &job.url);
        let mut typed = false;
        for h in &job.headers {
            if let Some((n, v)) = h.split_once(':') {
                typed |= n.trim().eq_ignore_ascii_case("content-type");
                rb = rb.header(n.trim(), v.trim());
            }
        }
        if let Some((u, p)) = &job.auth {
            rb = rb.basic_auth(u, p.as_ref());
        }
        if let Some(b) = job.body.clone() {
            if !typed {
                rb = rb.header(reqwest::header::CONTENT_TYPE, DEFAULT_CONTENT_TYPE);
            }
            rb = rb.body(b);
        }
        let max_body = self.settings.max_body;
        let fetch = async {
            let mut resp = rb.send().await?;
            let status = resp.status();
            let version = format!("{:?}", resp.version());
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = read_capped(&mut resp, max_body).await?;
            Ok::<_, FetchError>((status, version, headers, body))
        };
        let mut r = HttpResult {
            id: job.id,
            ..Default::default()
        };
        match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok((status, version, headers, body))) => {
                self.counters.replies.fetch_add(1, Ordering::Relaxed);
                r.ok = true;
                r.status = Some(status.as_u16());
                r.reason = status.canonical_reason().unwrap_or("").to_string();
                r.version = version;
                r.headers = headers;
                r.body = body;
            }
            Ok(Err(FetchError::TooLarge)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let n = self.counters.too_large.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        "http: {}: the reply body is over max_body_size ({} bytes); {n} such replies so far",
                        job.url,
                        max_body
                    );
                }
                r.err = Some(BODY_TOO_LARGE.to_string());
            }
            Ok(Err(FetchError::Http(e))) if e.is_timeout() => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                r.err = Some(self.settings.timeout_text.to_string());
            }
            Ok(Err(FetchError::Http(e))) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                r.err = Some(error_text(&e));
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                r.err = Some(self.settings.timeout_text.to_string());
            }
        }
        r.total = started.elapsed();
        r
    }
}

/// An error with its causes ("error sending request: … Connection refused").
fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
