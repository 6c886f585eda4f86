//! OPTIONS probing (`ds_ping_interval`): every interval each destination to
//! probe gets a request (`ds_ping_method`, From `ds_ping_from`) over UDP
//! from an ephemeral loopback-or-any port of the module's own (the module
//! API has no way to send through the core's sockets yet). A reply whose
//! code is 2xx or in `ds_ping_reply_codes` counts as alive; none within
//! the timeout, or another code, as a failure. `ds_probing_threshold`
//! failures in a row mark the destination inactive (and probing) and run
//! `event_route[dispatcher:dst-down]`; `ds_inactive_threshold` successes
//! mark an inactive one active again and run `dispatcher:dst-up`.

use crate::list::{DS_DISABLED, DS_INACTIVE, DS_PROBING, Dest};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Called when a probe changes a destination's state: the event route's
/// name and the destination.
/// and the probe's reply (code and reason; 408 and no reason when none
/// came, as Kamailio's local timeout).
pub type OnChange = Arc<dyn Fn(&'static str, &Dest, u16, &str) + Send + Sync>;

/// The probing settings.
#[derive(Debug, Clone)]
pub struct Probing {
    /// Seconds between rounds (0: off).
    pub interval: u64,
    /// 0: destinations flagged probing; 1: all.
    pub mode: i64,
    /// Failures that mark a destination inactive.
    pub threshold: u32,
    /// Successes that mark an inactive destination active.
    pub inactive_threshold: u32,
    /// The request's method.
    pub method: String,
    /// Its From URI.
    pub from: String,
    /// Reply classes (2 = 2xx) and codes that count as alive.
    pub classes: Vec<u16>,
    /// Codes that count as alive.
    pub codes: Vec<u16>,
}

impl Probing {
    /// Parses `class=2;code=480;code=404`.
    pub fn reply_codes(&mut self, s: &str) -> Result<(), String> {
        for p in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("ds_ping_reply_codes: `{p}` is not class=N or code=N"))?;
            let n: u16 = v
                .trim()
                .parse()
                .map_err(|_| format!("ds_ping_reply_codes: `{v}` is no number"))?;
            match k.trim() {
                "class" => self.classes.push(n),
                "code" => self.codes.push(n),
                _ => return Err(format!("ds_ping_reply_codes: `{k}` is not class or code")),
            }
        }
        Ok(())
    }
    /// Whether a reply code counts as alive.
    pub fn alive(&self, code: u16) -> bool {
        (200..300).contains(&code)
            || self.classes.contains(&(code / 100))
            || self.codes.contains(&code)
    }
    /// Whether `d` is probed this round.
    pub fn wants(&self, d: &Dest) -> bool {
        let f = d.flags.load(Ordering::Relaxed);
        if f & DS_DISABLED != 0 {
            return false;
        }
        self.mode == 1 || f & DS_PROBING != 0
    }
}

/// What a probe of one destination found: the final reply's code and
/// reason, or `None`.
pub async fn probe(p: &Probing, d: &Dest, n: u64) -> Option<(u16, String)> {
    if d.proto.as_deref().is_some_and(|t| t != "udp") || d.uri.starts_with("sips:") {
        return None;
    }
    let host = d.host.clone();
    let port = d.port_or_default();
    let to: SocketAddr =
        tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs().ok()?.next())
            .await
            .ok()??;
    let bind: SocketAddr = if to.ip().is_loopback() {
        SocketAddr::new(to.ip(), 0)
    } else if to.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    let me = sock.local_addr().ok()?;
    let msg = format!(
        "{m} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKds{n:x}{r:x};rport\r\nFrom: <{from}>;tag=ds{n:x}\r\nTo: <{uri}>\r\nCall-ID: ds-{n:x}-{r:x}@{ip}\r\nCSeq: 10 {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        m = p.method,
        uri = d.uri,
        from = p.from,
        ip = me.ip(),
        r = std::process::id(),
    );
    let mut buf = vec![0u8; 65_535];
    // RFC 3261 timer A: 0.5 s, doubled; give up after 4 s (a short timer B).
    let mut wait = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        sock.send_to(msg.as_bytes(), to).await.ok()?;
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Ok(Ok((k, _))) => {
                    let text = String::from_utf8_lossy(&buf[..k.min(512)]).into_owned();
                    let line = text.lines().next().unwrap_or_default();
                    let mut parts = line.splitn(3, ' ');
                    let code: u16 = parts.nth(1)?.parse().ok()?;
                    if code >= 200 {
                        return Some((code, parts.next().unwrap_or_default().to_string()));
                    }
                }
                Ok(Err(_)) => return None,
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        wait *= 2;
    }
}

/// Applies a probe's outcome; the event route to run, if the state changed.
pub fn update(p: &Probing, d: &Dest, code: Option<u16>) -> Option<&'static str> {
    let f = d.flags.load(Ordering::Relaxed);
    if code.is_some_and(|c| p.alive(c)) {
        d.fails.store(0, Ordering::Relaxed);
        if f & DS_INACTIVE != 0 {
            let ok = d.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if ok >= p.inactive_threshold {
                d.oks.store(0, Ordering::Relaxed);
                let keep = if p.mode == 1 { DS_PROBING } else { 0 };
                d.flags.store(keep, Ordering::Relaxed);
                return Some("dispatcher:dst-up");
            }
        } else if p.mode == 1 && f & DS_PROBING == 0 {
            // Kamailio: an answered probe in mode 1 leaves the state `AP`.
            d.flags.fetch_or(DS_PROBING, Ordering::Relaxed);
        }
        None
    } else {
        d.oks.store(0, Ordering::Relaxed);
        let fails = d.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if f & DS_INACTIVE == 0 && fails >= p.threshold {
            d.flags.store(DS_INACTIVE | DS_PROBING, Ordering::Relaxed);
            return Some("dispatcher:dst-down");
        }
        None
    }
}

/// Probes every destination to probe once, applying the outcomes; calls
/// `event` with the route name and the destination on each change.
pub async fn round(p: Arc<Probing>, dests: Vec<Arc<Dest>>, n: u64, event: OnChange) {
    let mut tasks = Vec::new();
    for (i, d) in dests.into_iter().enumerate() {
        if !p.wants(&d) {
            continue;
        }
        let p = p.clone();
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            let reply = probe(&p, &d, (n << 16) | i as u64).await;
            if let Some(name) = update(&p, &d, reply.as_ref().map(|r| r.0)) {
                let (code, reason) = reply.unwrap_or_else(|| (408, String::new()));
                tracing::info!(target: "dispatcher", "{}: {name} ({code} {reason})", d.uri);
                event(name, &d, code, &reason);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mode: i64, threshold: u32, inactive: u32) -> Probing {
        Probing {
            interval: 1,
            mode,
            threshold,
            inactive_threshold: inactive,
            method: "OPTIONS".into(),
            from: "sip:d@l".into(),
            classes: vec![],
            codes: vec![],
        }
    }

    #[test]
    fn thresholds_mark_down_and_up() {
        let pr = p(1, 2, 2);
        let d = crate::list::dest("sip:127.0.0.1:5999", 0, 0, "").unwrap();
        assert_eq!(update(&pr, &d, None), None);
        assert_eq!(update(&pr, &d, Some(503)), Some("dispatcher:dst-down"));
        assert_eq!(d.state(), "IP");
        assert_eq!(update(&pr, &d, None), None);
        assert_eq!(update(&pr, &d, Some(200)), None);
        assert_eq!(update(&pr, &d, Some(200)), Some("dispatcher:dst-up"));
        assert_eq!(d.state(), "AP");
        // Mode 0 probes only destinations flagged probing (8).
        let pr0 = p(0, 1, 1);
        assert!(!pr0.wants(&d) || d.flags.load(Ordering::Relaxed) & DS_PROBING != 0);
        let plain = crate::list::dest("sip:127.0.0.1:5999", 0, 0, "").unwrap();
        assert!(!pr0.wants(&plain));
        let flagged = crate::list::dest("sip:127.0.0.1:5999", 8, 0, "").unwrap();
        assert!(pr0.wants(&flagged));
    }

    #[test]
    fn reply_codes() {
        let mut pr = p(1, 1, 1);
        pr.reply_codes("class=4;code=503").unwrap();
        assert!(pr.alive(200) && pr.alive(404) && pr.alive(503) && !pr.alive(500));
        assert!(pr.reply_codes("klass=2").is_err());
    }
}
