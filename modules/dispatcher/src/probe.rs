//! Probing (`ds_ping_interval`): every interval each destination to probe
//! gets a request (`ds_ping_method`, From `ds_ping_from` or the
//! destination's `ping_from=`) from a socket of the module's own (the
//! module API has no way to send through the core's sockets yet): over UDP
//! from an ephemeral port, over TCP (`;transport=tcp`) on a connection
//! opened for the probe. A reply whose code is 2xx or in
//! `ds_ping_reply_codes` counts as alive; none within the timeout, another
//! code, or a connection refused, as a failure. TLS destinations (`sips:`,
//! `;transport=tls`) are not probed: their state is left alone (a warning
//! at load says so).
//!
//! Which destinations are probed and what an answer does to their state is
//! Kamailio's ([`update`]): `ds_probing_mode` 0 probes the ones flagged
//! probing (`P`) and clears the flag once answered (probed once), 1 all,
//! 2 only the inactive ones flagged probing, 3 the ones flagged probing,
//! keeping the flag. `ds_probing_threshold` failures in a row mark a
//! destination inactive (trying `T` until then) and run
//! `event_route[dispatcher:dst-down]`; `ds_inactive_threshold` answers in a
//! row mark an inactive one active and run `dispatcher:dst-up`. With
//! `ds_ping_latency_stats` each answered probe's round trip feeds the
//! destination's [`Latency`] (algorithm 13, congestion control).

use crate::latency::Latency;
use crate::list::{DS_DISABLED, DS_INACTIVE, DS_PROBING, DS_TRYING, Dest, Set};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Called when a probe changes a destination's state: the event route's
/// name, the destination and the probe's reply (code and reason; 408 and
/// no reason when none came, as Kamailio's local timeout).
pub type OnChange = Arc<dyn Fn(&'static str, &Dest, u16, &str) + Send + Sync>;

/// Which destinations are probed (`ds_probing_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0: those flagged probing, once (an answer clears the flag).
    Flagged,
    /// 1: all.
    All,
    /// 2: the inactive ones flagged probing.
    Inactive,
    /// 3: those flagged probing, continually (the flag is kept).
    OnlyFlagged,
}

impl Mode {
    /// The mode with Kamailio's number.
    pub fn from_num(n: i64) -> Option<Mode> {
        Some(match n {
            0 => Mode::Flagged,
            1 => Mode::All,
            2 => Mode::Inactive,
            3 => Mode::OnlyFlagged,
            _ => return None,
        })
    }
}

/// The probing settings.
#[derive(Debug, Clone)]
pub struct Probing {
    /// Seconds between rounds (0: off).
    pub interval: u64,
    /// Which destinations are probed.
    pub mode: Mode,
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
    /// `ds_ping_latency_stats`: keep the round trips.
    pub latency_stats: bool,
    /// `ds_latency_estimator_alpha` / 1000: the estimate's memory.
    pub alpha: f64,
    /// How long a probe waits for its final reply.
    pub timeout: Duration,
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
    /// Whether `d` is probed this round (never a disabled one).
    pub fn wants(&self, d: &Dest) -> bool {
        let f = d.flags.load(Ordering::Relaxed);
        if f & DS_DISABLED != 0 {
            return false;
        }
        match self.mode {
            Mode::All => true,
            Mode::Inactive => f & DS_PROBING != 0 && f & DS_INACTIVE != 0,
            Mode::Flagged | Mode::OnlyFlagged => f & DS_PROBING != 0,
        }
    }
}

/// Whether `d` can be probed: TLS is not (no TLS client in the module).
pub fn probeable(d: &Dest) -> bool {
    !(d.uri.starts_with("sips:") || d.proto.as_deref() == Some("tls"))
}

/// The probe request for `d` leaving from `me` over `transport` (`UDP`,
/// `TCP`); `n` makes its branch and Call-ID unique.
fn request(p: &Probing, d: &Dest, me: SocketAddr, transport: &str, n: u64) -> String {
    let from = if d.ping_from.is_empty() {
        &p.from
    } else {
        &d.ping_from
    };
    format!(
        "{m} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch=z9hG4bKds{n:x}{r:x};rport\r\nFrom: <{from}>;tag=ds{n:x}\r\nTo: <{uri}>\r\nCall-ID: ds-{n:x}-{r:x}@{ip}\r\nCSeq: 10 {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        m = p.method,
        uri = d.uri,
        ip = me.ip(),
        r = std::process::id(),
    )
}

/// The code and reason of a reply's status line; `None` for a request or
/// garbage.
fn status(msg: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(&msg[..msg.len().min(512)]).into_owned();
    let line = text.lines().next()?;
    let mut parts = line.splitn(3, ' ');
    if parts.next()? != "SIP/2.0" {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    Some((code, parts.next().unwrap_or_default().to_string()))
}

/// What a probe of one destination found: the final reply's code and
/// reason, or `None` (no answer in time, no connection).
pub async fn probe(p: &Probing, d: &Dest, n: u64) -> Option<(u16, String)> {
    let host = d.host.clone();
    let port = d.port_or_default();
    let to: SocketAddr =
        tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs().ok()?.next())
            .await
            .ok()??;
    let work = async {
        if d.proto.as_deref() == Some("tcp") {
            probe_tcp(p, d, to, n).await
        } else {
            probe_udp(p, d, to, n).await
        }
    };
    tokio::time::timeout(p.timeout, work).await.ok()?
}

async fn probe_udp(p: &Probing, d: &Dest, to: SocketAddr, n: u64) -> Option<(u16, String)> {
    if refused_off_machine(to) {
        return None;
    }
    let bind: SocketAddr = if to.ip().is_loopback() {
        SocketAddr::new(to.ip(), 0)
    } else if to.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    let msg = request(p, d, sock.local_addr().ok()?, "UDP", n);
    let mut buf = vec![0u8; 65_535];
    // RFC 3261 timer A: 0.5 s, doubled, until the caller's timeout.
    let mut wait = Duration::from_millis(500);
    loop {
        sock.send_to(msg.as_bytes(), to).await.ok()?;
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Ok(Ok((k, _))) => match status(&buf[..k]) {
                    Some((code, reason)) if code >= 200 => return Some((code, reason)),
                    _ => {}
                },
                Ok(Err(_)) => return None,
                Err(_) => break,
            }
        }
        wait *= 2;
    }
}

/// The probe sockets are the module's own: the core's loopback-only switch
/// (`SIPHON_SEND_ONLY_LOOPBACK`, set by the tests) is checked here. A refused
/// probe counts as unanswered.
fn refused_off_machine(to: SocketAddr) -> bool {
    let refused = siphon_script::api::off_machine(to);
    if refused {
        tracing::error!(
            "dispatcher: not probing {to}: {} is set",
            siphon_script::api::ONLY_LOOPBACK_ENV
        );
    }
    refused
}

/// Over TCP: a connection of its own, the request, replies framed by
/// Content-Length until the final one.
async fn probe_tcp(p: &Probing, d: &Dest, to: SocketAddr, n: u64) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if refused_off_machine(to) {
        return None;
    }
    let mut conn = tokio::net::TcpStream::connect(to).await.ok()?;
    let msg = request(p, d, conn.local_addr().ok()?, "TCP", n);
    conn.write_all(msg.as_bytes()).await.ok()?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(len)) = siphon_sip::tcp_frame_len(&buf, 65_536) {
            let frame: Vec<u8> = buf.drain(..len).collect();
            if let Some((code, reason)) = status(&frame)
                && code >= 200
            {
                return Some((code, reason));
            }
        }
        if siphon_sip::tcp_frame_len(&buf, 65_536).is_err() {
            return None;
        }
        let k = conn.read(&mut chunk).await.ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Applies a probe's outcome to `d` as Kamailio's dispatcher does (its
/// options callback and state update); the event route to run when the
/// destination went down or came up.
pub fn update(p: &Probing, d: &Dest, alive: bool) -> Option<&'static str> {
    let old = d.flags.load(Ordering::Relaxed);
    // Probing or the destination itself was turned off meanwhile.
    if old & DS_DISABLED != 0 || (p.mode == Mode::OnlyFlagged && old & DS_PROBING == 0) {
        return None;
    }
    let mut state = if alive {
        let keep = p.mode == Mode::All || (p.mode == Mode::OnlyFlagged && old & DS_PROBING != 0);
        if keep { DS_PROBING } else { 0 }
    } else {
        DS_TRYING
            | if p.mode == Mode::Flagged {
                0
            } else {
                DS_PROBING
            }
    };
    let asked = state;
    if state & DS_TRYING != 0 && old & DS_INACTIVE != 0 {
        // An inactive one stays inactive: it goes active before trying.
        state = (state & !DS_TRYING) | DS_INACTIVE;
    }
    let mut flags = (old & !(DS_INACTIVE | DS_TRYING | DS_DISABLED | DS_PROBING)) | state;
    if state & DS_TRYING != 0 {
        let n = d.probe_count.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= p.threshold {
            flags = (flags & !DS_TRYING) | DS_INACTIVE;
            d.probe_count.store(0, Ordering::Relaxed);
        }
    } else if asked & DS_TRYING == 0 && old & DS_INACTIVE != 0 {
        let n = d.probe_count.fetch_add(1, Ordering::Relaxed) + 1;
        if n < p.inactive_threshold {
            flags |= DS_INACTIVE | (old & DS_PROBING);
        } else {
            d.probe_count.store(0, Ordering::Relaxed);
        }
    } else {
        d.probe_count.store(0, Ordering::Relaxed);
    }
    d.flags.store(flags, Ordering::Relaxed);
    let skip = |f: u32| f & (DS_INACTIVE | DS_DISABLED) != 0;
    match (skip(old), skip(flags)) {
        (false, true) => Some("dispatcher:dst-down"),
        (true, false) => Some("dispatcher:dst-up"),
        _ => None,
    }
}

/// Feeds a probe's round trip into `d`'s statistics (a destination
/// flagged probing only, as Kamailio); `None`: no answer, a timeout. With
/// congestion control (`cc=1`) the set's relative weights follow: each
/// congested destination's weight drops by its ms above normal, and when
/// every one is congested they share by the inverse of their congestion.
pub fn record_latency(p: &Probing, set: &Set, d: &Dest, rtt_ms: Option<i32>) {
    if d.flags.load(Ordering::Relaxed) & DS_PROBING == 0 {
        return;
    }
    {
        let mut l = d.latency.lock().unwrap_or_else(|e| e.into_inner());
        match rtt_ms {
            Some(ms) => l.add(ms, p.alpha),
            None => l.timeout = l.timeout.saturating_add(1),
        }
    }
    let congestion = |l: &Latency| ((l.estimate - l.average) as i32).max(0);
    if d.cc && d.weight > 0 {
        // The probed one's weight, lowered by its congestion.
        let active = (d.weight as i32 - congestion(&d.latency())).max(0) as u32;
        d.rweight_live.store(active, Ordering::Relaxed);
    }
    if !set.dests.iter().all(|x| x.cc) {
        return;
    }
    let stats: Vec<Latency> = set.dests.iter().map(|x| x.latency()).collect();
    let weighed: Vec<(u32, i32)> = set
        .dests
        .iter()
        .zip(&stats)
        .filter(|(x, _)| x.weight > 0)
        .map(|(x, l)| (x.weight, congestion(l)))
        .collect();
    let congested = weighed.iter().filter(|(w, c)| *w as i32 - c <= 0).count();
    if congested > 1 && congested == weighed.len() {
        let total: i64 = weighed.iter().map(|(_, c)| i64::from(*c)).sum();
        for (x, l) in set.dests.iter().zip(&stats) {
            let cms = i64::from((l.estimate - l.average) as i32);
            let w = (total << 4) / if cms == 0 { 1 } else { cms };
            x.rweight_live
                .store(w.clamp(0, i64::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
    }
}

/// Probes every destination to probe once, applying the outcomes; calls
/// `event` with the route name and the destination on each change.
pub async fn round(p: Arc<Probing>, lists: Arc<crate::list::Lists>, n: u64, event: OnChange) {
    let mut tasks = Vec::new();
    let mut k = 0u64;
    for si in 0..lists.sets.len() {
        let count = lists.sets[si].dests.len();
        for di in 0..count {
            let d = lists.sets[si].dests[di].clone();
            k += 1;
            if !p.wants(&d) || !probeable(&d) {
                continue;
            }
            let (p, event, lists) = (p.clone(), event.clone(), lists.clone());
            tasks.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                let reply = probe(&p, &d, (n << 16) | k).await;
                let alive = reply.as_ref().is_some_and(|r| p.alive(r.0));
                if p.latency_stats {
                    let rtt = reply
                        .as_ref()
                        .map(|_| started.elapsed().as_millis().min(i32::MAX as u128) as i32);
                    record_latency(&p, &lists.sets[si], &d, rtt);
                }
                if let Some(name) = update(&p, &d, alive) {
                    let (code, reason) = reply.unwrap_or_else(|| (408, String::new()));
                    tracing::info!(target: "dispatcher", "{}: {name} ({code} {reason})", d.uri);
                    event(name, &d, code, &reason);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::dest;

    fn p(mode: i64, threshold: u32, inactive: u32) -> Probing {
        Probing {
            interval: 1,
            mode: Mode::from_num(mode).unwrap(),
            threshold,
            inactive_threshold: inactive,
            method: "OPTIONS".into(),
            from: "sip:d@l".into(),
            classes: vec![],
            codes: vec![],
            latency_stats: true,
            alpha: 0.9,
            timeout: Duration::from_secs(4),
        }
    }

    #[test]
    fn mode_1_thresholds_mark_down_and_up() {
        let pr = p(1, 2, 2);
        let d = dest("sip:127.0.0.1:5999", 0, 0, "").unwrap();
        assert!(pr.wants(&d));
        assert_eq!(update(&pr, &d, false), None);
        assert_eq!(d.state(), "TP", "trying until the threshold");
        // An answer in between starts the count again.
        assert_eq!(update(&pr, &d, true), None);
        assert_eq!(d.state(), "AP");
        assert_eq!(update(&pr, &d, false), None);
        assert_eq!(update(&pr, &d, false), Some("dispatcher:dst-down"));
        assert_eq!(d.state(), "IP");
        assert_eq!(update(&pr, &d, false), None);
        assert_eq!(update(&pr, &d, true), None);
        assert_eq!(d.state(), "IP", "one answer of the two needed");
        assert_eq!(update(&pr, &d, true), Some("dispatcher:dst-up"));
        assert_eq!(d.state(), "AP");
    }

    #[test]
    fn mode_0_probes_the_flagged_ones_once() {
        let pr = p(0, 1, 1);
        let plain = dest("sip:127.0.0.1:5999", 0, 0, "").unwrap();
        assert!(!pr.wants(&plain));
        let answers = dest("sip:127.0.0.1:5999", 8, 0, "").unwrap();
        assert!(pr.wants(&answers));
        assert_eq!(update(&pr, &answers, true), None);
        assert_eq!(answers.state(), "AX");
        assert!(!pr.wants(&answers));
        let silent = dest("sip:127.0.0.1:5999", 8, 0, "").unwrap();
        assert_eq!(update(&pr, &silent, false), Some("dispatcher:dst-down"));
        assert_eq!(silent.state(), "IX");
        assert!(!pr.wants(&silent));
    }

    #[test]
    fn mode_2_probes_only_inactive_flagged_ones() {
        let pr = p(2, 1, 1);
        let active = dest("sip:127.0.0.1:5999", 8, 0, "").unwrap();
        assert!(!pr.wants(&active), "active: traffic tells");
        // ds_mark_dst("ip") after a failed call.
        let down = dest("sip:127.0.0.1:5999", DS_INACTIVE | DS_PROBING, 0, "").unwrap();
        assert!(pr.wants(&down));
        assert_eq!(update(&pr, &down, false), None);
        assert_eq!(down.state(), "IP");
        assert_eq!(update(&pr, &down, true), Some("dispatcher:dst-up"));
        // Up again: no longer probed until marked down again.
        assert_eq!(down.state(), "AX");
        assert!(!pr.wants(&down));
    }

    #[test]
    fn mode_3_keeps_probing_the_flagged_ones() {
        let pr = p(3, 1, 1);
        let d = dest("sip:127.0.0.1:5999", 8, 0, "").unwrap();
        assert_eq!(update(&pr, &d, true), None);
        assert_eq!(d.state(), "AP");
        assert_eq!(update(&pr, &d, false), Some("dispatcher:dst-down"));
        assert_eq!(d.state(), "IP");
        assert!(pr.wants(&d));
        assert_eq!(update(&pr, &d, true), Some("dispatcher:dst-up"));
        assert_eq!(d.state(), "AP");
        // The flag taken away meanwhile (set_state a): the outcome is dropped.
        d.flags.store(0, Ordering::Relaxed);
        assert!(!pr.wants(&d));
        assert_eq!(update(&pr, &d, false), None);
        assert_eq!(d.state(), "AX");
        // A disabled one is left alone in every mode.
        let off = dest("sip:127.0.0.1:5999", DS_DISABLED | DS_PROBING, 0, "").unwrap();
        assert!(!p(1, 1, 1).wants(&off));
        assert_eq!(update(&p(1, 1, 1), &off, false), None);
        assert_eq!(off.state(), "DP");
    }

    #[test]
    fn reply_codes() {
        let mut pr = p(1, 1, 1);
        pr.reply_codes("class=4;code=503").unwrap();
        assert!(pr.alive(200) && pr.alive(404) && pr.alive(503) && !pr.alive(500));
        assert!(pr.reply_codes("klass=2").is_err());
    }

    #[test]
    fn tls_is_not_probed() {
        assert!(!probeable(&dest("sips:127.0.0.1:5061", 0, 0, "").unwrap()));
        assert!(!probeable(
            &dest("sip:127.0.0.1:5061;transport=tls", 0, 0, "").unwrap()
        ));
        assert!(probeable(
            &dest("sip:127.0.0.1:5060;transport=tcp", 0, 0, "").unwrap()
        ));
    }

    #[test]
    fn latency_follows_answers_and_congestion_lowers_relative_weights() {
        let pr = p(1, 1, 1);
        let l = crate::list::parse(
            "1 sip:127.0.0.1:5071 8 0 weight=50;rweight=50;cc=1\n1 sip:127.0.0.1:5072 8 0 weight=50;rweight=50;cc=1\n",
            "d",
        )
        .unwrap();
        let set = &l.sets[0];
        let (a, b) = (&set.dests[0], &set.dests[1]);
        for _ in 0..10 {
            record_latency(&pr, set, a, Some(10));
            record_latency(&pr, set, b, Some(10));
        }
        assert_eq!(a.latency().weighed(false), 10);
        assert_eq!(a.rweight(), 50, "no congestion");
        // `a` slows down: its estimate climbs above its mean.
        for _ in 0..5 {
            record_latency(&pr, set, a, Some(200));
        }
        let c = a.latency().weighed(true);
        assert!(c > 0, "{:?}", a.latency());
        assert_eq!(a.rweight(), (50 - c).max(0) as u32);
        assert_eq!(b.rweight(), 50);
        record_latency(&pr, set, a, None);
        assert_eq!(a.latency().timeout, 1);
        // Not flagged probing: nothing recorded.
        let plain = dest("sip:127.0.0.1:5073", 0, 0, "").unwrap();
        record_latency(&pr, set, &plain, Some(5));
        assert_eq!(plain.latency().count, 0);
    }

    /// A TCP destination: the probe opens a connection, sends OPTIONS with a
    /// TCP Via and reads the reply framed by Content-Length.
    #[tokio::test]
    async fn tcp_probe_reads_the_framed_reply() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "the probe closed early");
                got.extend_from_slice(&buf[..n]);
            }
            // A provisional first, the final split in two writes.
            c.write_all(b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\nSIP/2.0 486 Bu")
                .await
                .unwrap();
            c.write_all(b"sy Here\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let d = dest(&format!("sip:{at};transport=tcp"), 0, 0, "").unwrap();
        let got = probe(&p(1, 1, 1), &d, 7).await;
        assert_eq!(got, Some((486, "Busy Here".to_string())));
        let req = peer.await.unwrap();
        assert!(
            req.starts_with(&format!("OPTIONS sip:{at};transport=tcp SIP/2.0\r\n")),
            "{req}"
        );
        assert!(req.contains("Via: SIP/2.0/TCP 127.0.0.1:"), "{req}");
        // Nobody listening: no answer.
        drop(d);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let d = dest(&format!("sip:{closed};transport=tcp"), 0, 0, "").unwrap();
        assert_eq!(probe(&p(1, 1, 1), &d, 8).await, None);
    }
}
