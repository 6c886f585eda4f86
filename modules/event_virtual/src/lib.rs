//! event_virtual (OpenSIPS, named in seed 001): one subscriber made of
//! several, `virtual:POLICY socket1 socket2 …` (sockets of other transports,
//! such as `jsonrpc:`, separated by spaces or tabs; the policy in capitals):
//!
//! - `PARALLEL`: every member gets every event.
//! - `FAILOVER`: the members in order until one confirms the event; a member
//!   that did not is skipped for `failover_timeout` seconds (default 30),
//!   tried after the others rather than never, so an event is not lost
//!   while any member may take it.
//! - `ROUND-ROBIN`: each event to the next member in turn.
//!
//! A member confirms an event through [`EventSubscriber::deliver_then`]: an
//! event_jsonrpc subscriber in `sync_mode` when the reply comes, without
//! sync_mode once written (so failover needs `sync_mode`, as the seed says).
//! Nothing waits for a confirmation: the next member is tried from the
//! outcome's callback. Unconfirmed events are counted per member
//! (`subscribers_list`) and in statistics `event_virtual:confirmed`,
//! `unconfirmed`, `failovers`, `lost` (no member confirmed).

use serde_json::{Value, json};
use siphon_script::api::*;
use siphon_script::evi::{
    Event, EventSubscriber, EventTransport, Evi, OnOutcome, Outcome, TransportModule,
};
use siphon_script::rpc::StatSource;
use siphon_script::{ModuleDef, ParamSpec};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a virtual subscriber spreads events over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every member gets every event.
    Parallel,
    /// In order until one confirms.
    Failover,
    /// One member per event, in turn.
    RoundRobin,
}

impl Policy {
    fn parse(s: &str) -> Result<Policy, String> {
        match s {
            "PARALLEL" => Ok(Policy::Parallel),
            "FAILOVER" => Ok(Policy::Failover),
            "ROUND-ROBIN" => Ok(Policy::RoundRobin),
            other => Err(format!(
                "unknown policy `{other}` (PARALLEL, FAILOVER or ROUND-ROBIN, in capitals)"
            )),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Policy::Parallel => "PARALLEL",
            Policy::Failover => "FAILOVER",
            Policy::RoundRobin => "ROUND-ROBIN",
        }
    }
}

/// `POLICY socket1 socket2 …` → the policy and the member sockets.
pub fn parse_target(target: &str) -> Result<(Policy, Vec<&str>), String> {
    let mut words = target.split([' ', '\t']).filter(|w| !w.is_empty());
    let policy = Policy::parse(
        words
            .next()
            .ok_or("expected virtual:POLICY socket1 [socket2 …]")?,
    )?;
    let members: Vec<&str> = words.collect();
    if members.is_empty() {
        return Err(format!("{}: no member sockets", policy.name()));
    }
    if let Some(m) = members.iter().find(|m| m.starts_with("virtual:")) {
        return Err(format!("`{m}`: a virtual subscriber cannot be a member"));
    }
    Ok((policy, members))
}

/// The module's counters.
#[derive(Debug, Default)]
pub struct Totals {
    /// Events a member confirmed.
    pub confirmed: AtomicU64,
    /// Deliveries to a member that were not confirmed.
    pub unconfirmed: AtomicU64,
    /// Events passed on to the next member (FAILOVER).
    pub failovers: AtomicU64,
    /// Events no member confirmed.
    pub lost: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The time, replaceable in tests.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Member {
    socket: String,
    sub: Arc<dyn EventSubscriber>,
    confirmed: AtomicU64,
    unconfirmed: AtomicU64,
    /// When it last failed to confirm (FAILOVER skips it for a while).
    failed_at: Mutex<Option<Instant>>,
}

/// Shared by a virtual subscriber and the callbacks of its deliveries.
struct Set {
    policy: Policy,
    members: Vec<Member>,
    next: AtomicUsize,
    failover_timeout: Duration,
    totals: Arc<Totals>,
    /// The subscriber's own counters (same meaning as the totals).
    own: Totals,
    clock: Clock,
}

impl Set {
    /// Counts an outcome of member `i`; whether it confirmed.
    fn record(&self, i: usize, o: Outcome) -> bool {
        let m = &self.members[i];
        let ok = o == Outcome::Confirmed;
        if ok {
            inc(&m.confirmed);
        } else {
            inc(&m.unconfirmed);
            inc(&self.own.unconfirmed);
            inc(&self.totals.unconfirmed);
        }
        if self.policy == Policy::Failover
            && let Ok(mut f) = m.failed_at.lock()
        {
            *f = (!ok).then(|| (self.clock)());
        }
        ok
    }

    /// Counts how an event ended and says so.
    fn finish(&self, done: OnOutcome, o: Outcome) {
        if o == Outcome::Confirmed {
            inc(&self.own.confirmed);
            inc(&self.totals.confirmed);
        } else {
            inc(&self.own.lost);
            inc(&self.totals.lost);
        }
        done(o);
    }

    /// FAILOVER's order: members not failed within `failover_timeout`
    /// first, the others after them, each group in the configured order.
    fn failover_order(&self) -> Vec<usize> {
        let now = (self.clock)();
        let skipped = |m: &Member| {
            m.failed_at
                .lock()
                .ok()
                .and_then(|f| *f)
                .is_some_and(|t| now.saturating_duration_since(t) < self.failover_timeout)
        };
        let (mut fresh, late): (Vec<usize>, Vec<usize>) =
            (0..self.members.len()).partition(|&i| !skipped(&self.members[i]));
        fresh.extend(late);
        fresh
    }
}

/// Tries `order[k]`, then the rest on an unconfirmed outcome.
fn failover(set: Arc<Set>, event: Arc<Event>, order: Arc<[usize]>, k: usize, done: OnOutcome) {
    let i = order[k];
    let (s, ev, ord) = (set.clone(), event.clone(), order.clone());
    set.members[i].sub.deliver_then(
        &event,
        Box::new(move |o| {
            if s.record(i, o) {
                s.finish(done, o);
            } else if k + 1 < ord.len() {
                inc(&s.own.failovers);
                inc(&s.totals.failovers);
                tracing::debug!(
                    "event_virtual: {} did not confirm {} ({o:?}): trying {}",
                    s.members[i].socket,
                    ev.name,
                    s.members[ord[k + 1]].socket
                );
                failover(s, ev, ord, k + 1, done);
            } else {
                s.finish(done, o);
            }
        }),
    );
}

/// One `virtual:` subscription.
struct Virtual(Arc<Set>);

impl EventSubscriber for Virtual {
    fn deliver(&self, event: &Arc<Event>) -> bool {
        self.deliver_then(event, Box::new(|_| {}))
    }

    fn deliver_then(&self, event: &Arc<Event>, done: OnOutcome) -> bool {
        let set = &self.0;
        match set.policy {
            Policy::Failover => {
                let order: Arc<[usize]> = set.failover_order().into();
                failover(set.clone(), event.clone(), order, 0, done);
            }
            Policy::RoundRobin => {
                let i = set.next.fetch_add(1, Ordering::Relaxed) % set.members.len();
                let s = set.clone();
                set.members[i].sub.deliver_then(
                    event,
                    Box::new(move |o| {
                        s.record(i, o);
                        s.finish(done, o);
                    }),
                );
            }
            Policy::Parallel => {
                // The event is confirmed when any member confirms it; told
                // once all have answered.
                struct Join {
                    left: AtomicUsize,
                    any: std::sync::atomic::AtomicBool,
                    done: Mutex<Option<OnOutcome>>,
                }
                let join = Arc::new(Join {
                    left: AtomicUsize::new(set.members.len()),
                    any: Default::default(),
                    done: Mutex::new(Some(done)),
                });
                for i in 0..set.members.len() {
                    let (s, j) = (set.clone(), join.clone());
                    set.members[i].sub.deliver_then(
                        event,
                        Box::new(move |o| {
                            if s.record(i, o) {
                                j.any.store(true, Ordering::Relaxed);
                            }
                            if j.left.fetch_sub(1, Ordering::AcqRel) == 1
                                && let Some(done) = j.done.lock().ok().and_then(|mut d| d.take())
                            {
                                let o = if j.any.load(Ordering::Relaxed) {
                                    Outcome::Confirmed
                                } else {
                                    o
                                };
                                s.finish(done, o);
                            }
                        }),
                    );
                }
            }
        }
        true
    }

    fn stats(&self) -> Value {
        let s = &self.0;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let now = (s.clock)();
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| {
                let skipped = m.failed_at.lock().ok().and_then(|f| *f).map(|t| {
                    s.failover_timeout
                        .saturating_sub(now.saturating_duration_since(t))
                        .as_secs()
                });
                json!({
                    "socket": m.socket,
                    "confirmed": g(&m.confirmed),
                    "unconfirmed": g(&m.unconfirmed),
                    "skipped_for": skipped.filter(|_| s.policy == Policy::Failover),
                    "stats": m.sub.stats(),
                })
            })
            .collect();
        json!({
            "policy": s.policy.name(),
            "confirmed": g(&s.own.confirmed),
            "unconfirmed": g(&s.own.unconfirmed),
            "failovers": g(&s.own.failovers),
            "lost": g(&s.own.lost),
            "members": members,
        })
    }
}

struct Transport {
    failover_timeout: Duration,
    totals: Arc<Totals>,
    clock: Clock,
}

impl EventTransport for Transport {
    fn proto(&self) -> &'static str {
        "virtual"
    }

    fn subscriber(&self, target: &str, evi: &Evi) -> Result<Arc<dyn EventSubscriber>, String> {
        let (policy, sockets) = parse_target(target)?;
        let mut members = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let (t, rest) = evi.transport_for(socket).map_err(|e| e.to_string())?;
            let sub = t
                .subscriber(rest, evi)
                .map_err(|e| format!("`{socket}`: {e}"))?;
            members.push(Member {
                socket: socket.to_string(),
                sub,
                confirmed: AtomicU64::new(0),
                unconfirmed: AtomicU64::new(0),
                failed_at: Mutex::new(None),
            });
        }
        Ok(Arc::new(Virtual(Arc::new(Set {
            policy,
            members,
            next: AtomicUsize::new(0),
            failover_timeout: self.failover_timeout,
            totals: self.totals.clone(),
            own: Totals::default(),
            clock: self.clock.clone(),
        }))))
    }

    /// Every member must pass its own transport's allow-list.
    fn admit(&self, target: &str, evi: &Evi) -> Result<(), String> {
        let (_, sockets) = parse_target(target)?;
        for socket in sockets {
            let (t, rest) = evi.transport_for(socket).map_err(|e| e.to_string())?;
            t.admit(rest, evi).map_err(|e| format!("`{socket}`: {e}"))?;
        }
        Ok(())
    }
}

struct Stats(Arc<Totals>);

/// A counter of [`Totals`].
type Field = fn(&Totals) -> &AtomicU64;

const STATS: [(&str, Field); 4] = [
    ("event_virtual:confirmed", |t| &t.confirmed),
    ("event_virtual:unconfirmed", |t| &t.unconfirmed),
    ("event_virtual:failovers", |t| &t.failovers),
    ("event_virtual:lost", |t| &t.lost),
];

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        STATS
            .iter()
            .map(|(n, f)| (n.to_string(), f(&self.0).load(Ordering::Relaxed) as i64))
            .collect()
    }
    fn reset(&self, name: &str) {
        if let Some((_, f)) = STATS.iter().find(|(n, _)| *n == name) {
            f(&self.0).store(0, Ordering::Relaxed);
        }
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "event_virtual",
        params: vec![ParamSpec::int("failover_timeout")],
        instantiate: Arc::new(|cfg| {
            let t = cfg.int("failover_timeout").unwrap_or(30);
            if t < 0 {
                return Err(format!(
                    "failover_timeout must be 0 or more seconds, found {t}"
                ));
            }
            let totals = Arc::new(Totals::default());
            Ok(Arc::new(TransportModule {
                transport: Arc::new(Transport {
                    failover_timeout: Duration::from_secs(t as u64),
                    totals: totals.clone(),
                    clock: Arc::new(Instant::now),
                }),
                stats: Arc::new(Stats(totals)),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests;
