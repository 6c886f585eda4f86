//! One task per destination: takes events from its queue in order, writes
//! them (several per write when they pile up) on its connection, and in
//! sync_mode matches the replies a reader task parses from the stream of
//! concatenated JSON values.

use crate::{Config, Counters, Job, settle};
use bytes::BytesMut;
use serde_json::Value;
use siphon_script::evi::{Event, EventParams, OnOutcome, Outcome};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Events written in one go at most.
const BATCH: usize = 256;
/// The largest reply accepted (sync_mode); more without a complete value closes the connection.
const MAX_REPLY: usize = 1 << 20;
/// Longest wait between connection attempts while a destination refuses.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An event's params as the wire shows them, serialised in place: an
/// object for named values (with `event_param` first), an array otherwise
/// (with the event name first, as seed 001's `timeout` note says); no
/// params at all is an object, `{}` (or just `event_param`), as OpenSIPS
/// sends it. A name given twice keeps its first place and its last value,
/// as a JSON object would.
struct Params<'a> {
    ev: &'a Event,
    event_param: Option<&'a str>,
}

impl serde::Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let name = &*self.ev.name;
        match &self.ev.params {
            EventParams::Values(vs) if vs.is_empty() => {
                let mut m = ser.serialize_map(None)?;
                if let Some(k) = self.event_param {
                    m.serialize_entry(k, name)?;
                }
                m.end()
            }
            EventParams::Named(kv) => {
                let last = |k: &str| kv.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
                let mut m = ser.serialize_map(None)?;
                if let Some(k) = self.event_param {
                    match last(k) {
                        Some(v) => m.serialize_entry(k, v)?,
                        None => m.serialize_entry(k, name)?,
                    }
                }
                for (i, (k, _)) in kv.iter().enumerate() {
                    let seen =
                        Some(k.as_str()) == self.event_param || kv[..i].iter().any(|(n, _)| n == k);
                    if !seen && let Some(v) = last(k) {
                        m.serialize_entry(k, v)?;
                    }
                }
                m.end()
            }
            EventParams::Values(vs) => {
                let mut a = ser.serialize_seq(None)?;
                if self.event_param.is_some() {
                    a.serialize_element(name)?;
                }
                for v in vs {
                    a.serialize_element(v)?;
                }
                a.end()
            }
        }
    }
}

/// The document for one event, as the seed shows it: `id`, `jsonrpc`,
/// `method`, `params` in that order, compact.
pub(crate) fn document(
    ev: &Event,
    method: Option<&str>,
    id: Option<u64>,
    event_param: Option<&str>,
    out: &mut Vec<u8>,
) {
    let id = id.map_or(Value::Null, Value::from);
    let params = Params { ev, event_param };
    siphon_proto::jsonrpc::write_request(out, Some(&id), method.unwrap_or(&ev.name), Some(&params));
}

struct Pending {
    deadline: Instant,
    event: Arc<str>,
    counters: [Arc<Counters>; 2],
    done: Option<OnOutcome>,
}

const FAILED: Outcome = Outcome::Unconfirmed("failed");

/// Fails a job that never made it to the wire.
fn fail(j: &mut Job) {
    settle(&j.counters, |c| &c.failed, j.done.take(), FAILED);
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

struct Conn {
    wr: tokio::net::tcp::OwnedWriteHalf,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    // Unique per process, positive, not starting at 1 (so ids of two runs rarely collide).
    if NEXT_ID.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64)
            & 0x3fff_ffff;
        let _ = NEXT_ID.compare_exchange(0, seed.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn fail_all(pending: &PendingMap, why: &str, addr: SocketAddr) {
    let drained: Vec<Pending> = pending
        .lock()
        .map(|mut p| p.drain().map(|(_, v)| v).collect())
        .unwrap_or_default();
    if !drained.is_empty() {
        tracing::warn!(
            "event_jsonrpc: {addr}: {why}: {} events without reply",
            drained.len()
        );
    }
    for p in drained {
        settle(&p.counters, |c| &c.failed, p.done, FAILED);
    }
}

/// Reads replies (sync_mode) or discards whatever the peer sends.
async fn read_replies(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    pending: PendingMap,
    closed: Arc<AtomicBool>,
    addr: SocketAddr,
) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut used = 0;
        let mut bad = false;
        {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        used = it.byte_offset();
                        let id = v.get("id").and_then(Value::as_u64);
                        let p = id.and_then(|id| pending.lock().ok()?.remove(&id));
                        match p {
                            Some(p) if v.get("error").is_some() => {
                                settle(
                                    &p.counters,
                                    |c| &c.errors,
                                    p.done,
                                    Outcome::Unconfirmed("error reply"),
                                );
                                tracing::info!(
                                    "event_jsonrpc: {addr} answered {} with an error: {}",
                                    p.event,
                                    v["error"]
                                );
                            }
                            Some(p) => {
                                settle(&p.counters, |c| &c.replied, p.done, Outcome::Confirmed)
                            }
                            None => {}
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::warn!(
                            "event_jsonrpc: {addr} sent something that is not JSON ({e}): closing"
                        );
                        bad = true;
                        break;
                    }
                    None => {
                        used = buf.len();
                        break;
                    }
                }
            }
        }
        if bad {
            break;
        }
        let _ = buf.split_to(used);
        if buf.len() > MAX_REPLY {
            tracing::warn!(
                "event_jsonrpc: {addr} sent over {MAX_REPLY} bytes without a complete reply: closing"
            );
            break;
        }
    }
    closed.store(true, Ordering::Relaxed);
    fail_all(&pending, "connection closed", addr);
}

/// The destination's task; ends when every subscriber using it is gone.
/// A connection to a subscriber, unless the loopback-only switch the tests
/// set (`siphon_script::api::ONLY_LOOPBACK_ENV`) refuses its address.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    if siphon_script::api::off_machine(addr) {
        return Err(std::io::Error::other(format!(
            "{} is set",
            siphon_script::api::ONLY_LOOPBACK_ENV
        )));
    }
    TcpStream::connect(addr).await
}

pub(crate) async fn run(addr: SocketAddr, mut rx: mpsc::Receiver<Job>, cfg: Arc<Config>) {
    let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
    let mut conn: Option<Conn> = None;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut sweep = tokio::time::interval((cfg.timeout / 4).max(Duration::from_millis(10)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        jobs.clear();
        tokio::select! {
            n = rx.recv_many(&mut jobs, BATCH) => if n == 0 { break },
            _ = sweep.tick() => {
                if cfg.sync {
                    expire(&pending, addr);
                }
                continue;
            }
        }
        // Too old to be worth sending (the peer was unreachable for a while).
        let now = Instant::now();
        jobs.retain_mut(|j| {
            let fresh = now.duration_since(j.queued) <= cfg.timeout;
            if !fresh {
                fail(j);
            }
            fresh
        });
        if jobs.is_empty() {
            continue;
        }
        if conn
            .as_ref()
            .is_some_and(|c| c.closed.load(Ordering::Relaxed))
        {
            conn = None;
        }
        if conn.is_none() {
            if retry_at.is_some_and(|t| now < t) {
                jobs.iter_mut().for_each(fail);
                continue;
            }
            match tokio::time::timeout(cfg.timeout, connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    if retry_at.take().is_some() {
                        tracing::info!("event_jsonrpc: {addr} is reachable again");
                    }
                    backoff = Duration::from_millis(100);
                    let (rd, wr) = s.into_split();
                    let closed = Arc::new(AtomicBool::new(false));
                    let reader =
                        tokio::spawn(read_replies(rd, pending.clone(), closed.clone(), addr));
                    conn = Some(Conn { wr, closed, reader });
                }
                r => {
                    let why = match r {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".into(),
                    };
                    if retry_at.is_none() {
                        tracing::warn!(
                            "event_jsonrpc: cannot connect to {addr}: {why}; events to it fail until it is back"
                        );
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    jobs.iter_mut().for_each(fail);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        out.clear();
        for j in jobs.iter_mut() {
            let id = cfg.sync.then(next_id);
            document(
                &j.event,
                j.method.as_deref(),
                id,
                cfg.event_param.as_deref(),
                &mut out,
            );
            if let (Some(id), Ok(mut p)) = (id, pending.lock()) {
                p.insert(
                    id,
                    Pending {
                        deadline: j.queued + cfg.timeout,
                        event: j.event.name.clone(),
                        counters: j.counters.clone(),
                        done: j.done.take(),
                    },
                );
            }
        }
        match tokio::time::timeout(cfg.timeout, c.wr.write_all(&out)).await {
            Ok(Ok(())) => {
                // Without sync_mode, written is delivered (in sync_mode the
                // outcome waits for the reply: `done` went to `pending`).
                for j in jobs.iter_mut() {
                    settle(&j.counters, |c| &c.sent, j.done.take(), Outcome::Confirmed);
                }
            }
            r => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => "write timed out (the peer does not read)".into(),
                };
                tracing::warn!("event_jsonrpc: {addr}: {why}: closing the connection");
                if !cfg.sync {
                    jobs.iter_mut().for_each(fail);
                }
                conn = None;
                fail_all(&pending, "write failed", addr);
            }
        }
    }
    fail_all(&pending, "no subscribers left", addr);
}

fn expire(pending: &PendingMap, addr: SocketAddr) {
    let now = Instant::now();
    // Taken out under the lock, settled after it (an outcome may deliver anew).
    let late: Vec<Pending> = {
        let Ok(mut p) = pending.lock() else { return };
        let ids: Vec<u64> = p
            .iter()
            .filter(|(_, v)| v.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        ids.iter().filter_map(|id| p.remove(id)).collect()
    };
    if !late.is_empty() {
        tracing::info!(
            "event_jsonrpc: {addr}: {} events got no reply in time",
            late.len()
        );
    }
    for v in late {
        settle(
            &v.counters,
            |c| &c.timeouts,
            v.done,
            Outcome::Unconfirmed("timeout"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, params: EventParams) -> Event {
        Event {
            name: Arc::from(name),
            params,
        }
    }

    fn doc(e: &Event, m: Option<&str>, id: Option<u64>, p: Option<&str>) -> String {
        let mut out = Vec::new();
        document(e, m, id, p, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_seed_documents() {
        let pike = ev(
            "E_PIKE_BLOCKED",
            EventParams::Named(vec![("ip".into(), json!("127.0.0.11"))]),
        );
        assert_eq!(
            doc(&pike, None, None, None),
            r#"{"id":null,"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"127.0.0.11"}}"#
        );
        assert_eq!(
            doc(&pike, None, Some(915243442), None),
            r#"{"id":915243442,"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"127.0.0.11"}}"#
        );
        assert_eq!(
            doc(&pike, Some("handle_cmd"), None, Some("opensips_event")),
            r#"{"id":null,"jsonrpc":"2.0","method":"handle_cmd","params":{"opensips_event":"E_PIKE_BLOCKED","ip":"127.0.0.11"}}"#
        );
        let mine = ev("E_MY_EVENT", EventParams::Values(vec![json!(3), json!(5)]));
        assert_eq!(
            doc(&mine, None, None, None),
            r#"{"id":null,"jsonrpc":"2.0","method":"E_MY_EVENT","params":[3,5]}"#
        );
        assert_eq!(
            doc(&mine, None, None, Some("ev")),
            r#"{"id":null,"jsonrpc":"2.0","method":"E_MY_EVENT","params":["E_MY_EVENT",3,5]}"#
        );
    }

    #[test]
    fn an_event_without_params_is_an_empty_object() {
        for empty in [EventParams::Values(vec![]), EventParams::Named(vec![])] {
            let e = ev("E_EMPTY", empty);
            assert_eq!(
                doc(&e, None, None, None),
                r#"{"id":null,"jsonrpc":"2.0","method":"E_EMPTY","params":{}}"#
            );
            assert_eq!(
                doc(&e, None, None, Some("ev")),
                r#"{"id":null,"jsonrpc":"2.0","method":"E_EMPTY","params":{"ev":"E_EMPTY"}}"#
            );
        }
    }

    #[test]
    fn repeated_names_keep_their_first_place_and_last_value() {
        let ev = ev(
            "E",
            EventParams::Named(vec![
                ("a".into(), json!(1)),
                ("ev".into(), json!(2)),
                ("a".into(), json!(3)),
            ]),
        );
        assert_eq!(
            doc(&ev, None, None, Some("ev")),
            r#"{"id":null,"jsonrpc":"2.0","method":"E","params":{"ev":2,"a":3}}"#
        );
    }

    #[test]
    fn ids_are_unique_and_positive() {
        let a = next_id();
        let b = next_id();
        assert!(a > 0 && b > a);
    }
}
