//! The HTTP client shared by both APIs: pooled keep-alive connections
//! (reqwest on hyper, rustls with ring), a bounded in-flight table, a total
//! deadline per request, counters. A request is a plain value in, a
//! [`HttpResult`] out.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client instances (each with its own connection pool), used in turn.
    pub workers: usize,
    /// Requests in flight at most (`hash_size`, a power of two).
    pub in_flight: usize,
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
    /// Refused at once: the in-flight table was full.
    pub refused: AtomicU64,
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
        for h in &job.headers {
            if let Some((n, v)) = h.split_once(':') {
                rb = rb.header(n.trim(), v.trim());
            }
        }
        if let Some((u, p)) = &job.auth {
            rb = rb.basic_auth(u, p.as_ref());
        }
        if let Some(b) = job.body.clone() {
            rb = rb.body(b);
        }
        let fetch = async {
            let resp = rb.send().await?;
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
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, version, headers, body))
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
            Ok(Err(e)) if e.is_timeout() => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                r.err = Some(self.settings.timeout_text.to_string());
            }
            Ok(Err(e)) => {
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
