//! Transactions: the table keyed by `(index, label)` and by the RFC 3261
//! matching key, the timer task, and suspend/continue.
//!
//! Protocol state (retransmissions, timers G/H/I/J) is the sans-io
//! `siphon_sip::ServerTx`; this file owns the table, the deadlines and the
//! script context of suspended transactions.

use crate::script::SipCtx;
use crate::stats::Stats;
use crate::{AfterRoute, Core, Peer, RouteRun};
use bytes::Bytes;
use siphon_script::api::{Resumer, Suspend};
use siphon_script::{Ctx, RouteId, RouteType};
use siphon_sip::{Method, ServerTx, SipMsg, TxAction};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// `$T(id_index)` and `$T(id_label)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId {
    /// Bucket (0..65535), from the transaction key's hash.
    pub index: u32,
    /// Unique label within the process.
    pub label: u32,
}

/// tm parameters.
#[derive(Debug, Clone, Copy)]
pub struct TmConfig {
    /// `fr_timer`: how long a transaction waits for a final reply (ms).
    pub fr_timer: Duration,
    /// `fr_inv_timer` (ms); siphon has no outgoing branches yet, so it bounds nothing more than fr_timer.
    pub fr_inv_timer: Duration,
    /// `auto_inv_100`: send 100 Trying when an INVITE transaction is created.
    pub auto_inv_100: bool,
}

impl Default for TmConfig {
    fn default() -> Self {
        TmConfig {
            fr_timer: Duration::from_millis(30_000),
            fr_inv_timer: Duration::from_millis(120_000),
            auto_inv_100: true,
        }
    }
}

const SHARDS: usize = 64;

/// What a transaction is doing with its script context.
enum Park {
    /// Not suspended.
    None,
    /// `start` of a suspension is running; a resume that arrives now waits here.
    Suspending(Option<Pending>),
    /// Suspended with its context.
    Parked(Box<Ctx>),
    /// Resumed (or timed out): later resumes are late.
    Done,
}

pub(crate) struct TxEntry {
    key: Bytes,
    pub(crate) req: SipMsg,
    pub(crate) peer: Peer,
    pub(crate) st: ServerTx,
    to_tag: Vec<u8>,
    park: Park,
    fr_deadline: Option<Instant>,
    pub(crate) failure_route: Option<RouteId>,
    canceled: bool,
}

struct Shard {
    by_label: HashMap<u32, Arc<Mutex<TxEntry>>>,
    by_key: HashMap<Bytes, TxId>,
}

pub(crate) struct Tm {
    shards: Vec<Mutex<Shard>>,
    next_label: AtomicU32,
    pub(crate) cfg: Mutex<TmConfig>,
    timers: Mutex<BinaryHeap<Reverse<(Instant, TxId)>>>,
    wake: Notify,
    seed: u64,
}

/// The RFC 3261 §17.2.3 key: branch + sent-by + method (ACK and CANCEL look up the INVITE),
/// or for pre-RFC 3261 branches Call-ID, CSeq number, From-tag and the Via.
fn tx_key(msg: &SipMsg, method: Method) -> Option<Bytes> {
    let via = msg.top_via()?;
    let m: &[u8] = match method {
        Method::Invite | Method::Ack => b"INVITE",
        Method::Cancel => b"CANCEL",
        _ => {
            return Some(key_join(&[
                &via.branch.clone().unwrap_or_default(),
                &via.host,
                &msg.method_bytes(),
                &msg.call_id().unwrap_or_default(),
            ]));
        }
    };
    match via.branch.as_ref().filter(|b| b.starts_with(b"z9hG4bK")) {
        Some(b) => Some(key_join(&[
            b,
            &via.host,
            &via.port.unwrap_or(0).to_string().into_bytes(),
            m,
        ])),
        None => {
            let cseq = msg.cseq()?.num.to_string();
            let ftag = msg.from().and_then(|f| f.tag).unwrap_or_default();
            Some(key_join(&[
                &msg.call_id()?,
                cseq.as_bytes(),
                &ftag,
                &via.host,
                m,
            ]))
        }
    }
}

fn key_join(parts: &[&[u8]]) -> Bytes {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        v.extend_from_slice(p);
        v.push(b'|');
    }
    Bytes::from(v)
}

impl Tm {
    pub(crate) fn new(seed: u64) -> Tm {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    by_label: HashMap::new(),
                    by_key: HashMap::new(),
                })
            })
            .collect();
        Tm {
            shards,
            next_label: AtomicU32::new((seed as u32) | 1),
            cfg: Mutex::new(TmConfig::default()),
            timers: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            seed,
        }
    }

    fn index_of(&self, key: &[u8]) -> u32 {
        let mut x = self.seed;
        for &b in key {
            x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        (x >> 17) as u32 & 0xffff
    }

    fn shard(&self, index: u32) -> &Mutex<Shard> {
        &self.shards[index as usize % SHARDS]
    }

    pub(crate) fn get(&self, id: TxId) -> Option<Arc<Mutex<TxEntry>>> {
        self.shard(id.index)
            .lock()
            .ok()?
            .by_label
            .get(&id.label)
            .cloned()
    }

    fn lookup(&self, key: &Bytes) -> Option<(TxId, Arc<Mutex<TxEntry>>)> {
        let idx = self.index_of(key);
        let sh = self.shard(idx).lock().ok()?;
        let id = *sh.by_key.get(key)?;
        Some((id, sh.by_label.get(&id.label)?.clone()))
    }

    fn schedule(&self, id: TxId, at: Option<Instant>) {
        let Some(at) = at else { return };
        let earliest = {
            let Ok(mut t) = self.timers.lock() else {
                return;
            };
            let earlier = t.peek().is_none_or(|Reverse((first, _))| at < *first);
            t.push(Reverse((at, id)));
            earlier
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    fn reschedule(&self, id: TxId, e: &TxEntry) {
        let d = match (e.st.next_deadline(), e.fr_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.schedule(id, d);
    }

    fn remove(&self, core: &Core, id: TxId) {
        if let Ok(mut sh) = self.shard(id.index).lock()
            && let Some(e) = sh.by_label.remove(&id.label)
        {
            if let Ok(e) = e.lock() {
                sh.by_key.remove(&e.key);
                if matches!(e.park, Park::Parked(_) | Park::Suspending(_)) {
                    core.stats.tm_suspended.fetch_sub(1, Ordering::Relaxed);
                }
            }
            core.stats.tm_current.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A retransmission or an ACK of a known transaction: handled here, the script does not run.
    pub(crate) fn absorb(&self, core: &Core, msg: &SipMsg) -> bool {
        let Some(key) = tx_key(msg, msg.method()) else {
            return false;
        };
        let Some((id, entry)) = self.lookup(&key) else {
            return false;
        };
        let Ok(mut e) = entry.lock() else {
            return false;
        };
        if msg.method() == Method::Ack {
            if e.st.is_final() && e.st.last_code() >= 300 {
                e.st.on_ack(Instant::now());
                self.reschedule(id, &e);
                return true;
            }
            // ACK to a 2xx is end to end: stop resending the 2xx, and let the script see it.
            e.st.on_ack(Instant::now());
            return false;
        }
        if msg.method() == Method::Cancel {
            return false;
        }
        Stats::inc(&core.stats.tm_retransmissions_absorbed);
        if let TxAction::Send(b) = e.st.on_request_retransmission() {
            let dest = crate::reply_destination(&e.req, &e.peer);
            if let Some(d) = dest {
                core.out.send(core, &e.peer, d, b);
            }
        }
        true
    }

    /// CANCEL of a pending INVITE: 200 to the CANCEL, 487 to the INVITE.
    pub(crate) fn cancel(&self, core: &Core, msg: &SipMsg, peer: &Peer) -> bool {
        let Some(key) = tx_key(msg, Method::Invite) else {
            return false;
        };
        let Some((id, entry)) = self.lookup(&key) else {
            core.sl_reply(msg, peer, 481, b"Call/Transaction Does Not Exist", &[]);
            return true;
        };
        core.sl_reply(msg, peer, 200, b"OK", &[]);
        if let Ok(mut e) = entry.lock() {
            e.canceled = true;
            if !e.st.is_final() {
                self.reply_locked(core, id, &mut e, 487, b"Request Terminated", &[]);
            }
        }
        true
    }

    /// `t_newtran`: the transaction of the request in `sip`, created if needed.
    pub(crate) fn newtran(&self, core: &Core, sip: &mut SipCtx) -> Option<TxId> {
        if let Some(id) = sip.tx {
            return Some(id);
        }
        let key = tx_key(&sip.msg, sip.msg.method())?;
        let idx = self.index_of(&key);
        let label = self.next_label.fetch_add(1, Ordering::Relaxed);
        let id = TxId { index: idx, label };
        let invite = sip.msg.method() == Method::Invite;
        let reliable = sip.peer.transport.is_reliable();
        let entry = TxEntry {
            key: key.clone(),
            req: sip.msg.clone(),
            peer: sip.peer,
            st: ServerTx::new(invite, reliable),
            to_tag: core.to_tag(&sip.msg),
            park: Park::None,
            fr_deadline: None,
            failure_route: None,
            canceled: false,
        };
        let entry = Arc::new(Mutex::new(entry));
        {
            let mut sh = self.shard(idx).lock().ok()?;
            if let Some(existing) = sh.by_key.get(&key) {
                sip.tx = Some(*existing);
                return Some(*existing);
            }
            sh.by_key.insert(key, id);
            sh.by_label.insert(label, entry.clone());
        }
        core.stats.tm_current.fetch_add(1, Ordering::Relaxed);
        Stats::inc(&core.stats.tm_created);
        sip.tx = Some(id);
        let auto100 = self.cfg.lock().map(|c| c.auto_inv_100).unwrap_or(true);
        if invite
            && auto100
            && let Ok(mut e) = entry.lock()
        {
            self.reply_locked(core, id, &mut e, 100, b"Trying", &[]);
        }
        Some(id)
    }

    /// `t_reply`: a reply on the transaction; false when it is gone or already has a final reply.
    pub(crate) fn reply(
        &self,
        core: &Core,
        id: TxId,
        code: u16,
        reason: &[u8],
        extra: &[Bytes],
    ) -> bool {
        let Some(entry) = self.get(id) else {
            return false;
        };
        let Ok(mut e) = entry.lock() else {
            return false;
        };
        self.reply_locked(core, id, &mut e, code, reason, extra)
    }

    fn reply_locked(
        &self,
        core: &Core,
        id: TxId,
        e: &mut TxEntry,
        code: u16,
        reason: &[u8],
        extra: &[Bytes],
    ) -> bool {
        let (code, bytes) = core.sendable_reply(&e.req, &e.peer, code, reason, &e.to_tag, extra);
        match e.st.on_reply(code, bytes, Instant::now()) {
            Some(TxAction::Send(b)) => {
                if let Some(d) = crate::reply_destination(&e.req, &e.peer) {
                    core.out.send(core, &e.peer, d, b);
                }
                Stats::class(&core.stats.tm_replies, code);
                if code >= 200 {
                    e.fr_deadline = None;
                }
                self.reschedule(id, e);
                true
            }
            _ => false,
        }
    }

    /// `t_release`: forget the transaction.
    pub(crate) fn release(&self, core: &Core, id: TxId) {
        self.remove(core, id);
    }

    /// The last reply code of a transaction.
    pub(crate) fn reply_code(&self, id: TxId) -> Option<u16> {
        let e = self.get(id)?;
        let code = e.lock().ok()?.st.last_code();
        Some(code)
    }

    /// The route ended without suspending: a transaction left without a final
    /// reply gets one when fr_timer fires.
    pub(crate) fn route_done(&self, ctx: &Ctx) {
        let Some(sip) = ctx.ext.get::<SipCtx>() else {
            return;
        };
        let Some(id) = sip.tx else { return };
        let Some(entry) = self.get(id) else { return };
        let Ok(mut e) = entry.lock() else { return };
        if sip.failure_route.is_some() {
            e.failure_route = sip.failure_route;
        }
        if !e.st.is_final() && e.fr_deadline.is_none() {
            e.fr_deadline = Some(Instant::now() + self.fr(&e));
            self.reschedule(id, &e);
        }
    }

    fn fr(&self, _e: &TxEntry) -> Duration {
        self.cfg
            .lock()
            .map(|c| c.fr_timer)
            .unwrap_or(Duration::from_secs(30))
    }

    /// Suspends the request's transaction (created if needed), runs the
    /// module's start, then parks the context — unless a resume came first.
    pub(crate) fn suspend(self: &Tm, core: &Arc<Core>, mut ctx: Ctx, s: Option<Suspend>) {
        let id = {
            let Some(sip) = ctx.ext.get_mut::<SipCtx>() else {
                tracing::error!("cannot suspend: no SIP request in this route");
                return;
            };
            match self.newtran(core, sip) {
                Some(id) => id,
                None => {
                    tracing::error!("cannot suspend: no transaction could be created");
                    return;
                }
            }
        };
        let Some(entry) = self.get(id) else { return };
        {
            let Ok(mut e) = entry.lock() else { return };
            if e.st.is_final() {
                tracing::warn!(
                    "t_suspend: transaction {}:{} already has a final reply",
                    id.index,
                    id.label
                );
                return;
            }
            if let Some(sip) = ctx.ext.get::<SipCtx>()
                && sip.failure_route.is_some()
            {
                e.failure_route = sip.failure_route;
            }
            e.park = Park::Suspending(None);
            core.stats.tm_suspended.fetch_add(1, Ordering::Relaxed);
            // Kamailio sends 100 Trying when an INVITE is suspended (if none went yet).
            if e.req.method() == Method::Invite && e.st.last_code() == 0 {
                self.reply_locked(core, id, &mut e, 100, b"Trying", &[]);
            }
        }
        if let Some(s) = s {
            (s.start)(
                &mut ctx,
                Box::new(TxResumer {
                    core: core.clone(),
                    id,
                }),
            );
        }
        let pending = {
            let Ok(mut e) = entry.lock() else { return };
            match std::mem::replace(&mut e.park, Park::None) {
                Park::Suspending(Some(p)) => {
                    e.park = Park::Done;
                    core.stats.tm_suspended.fetch_sub(1, Ordering::Relaxed);
                    Some(p)
                }
                Park::Suspending(None) => {
                    e.park = Park::Parked(Box::new(ctx));
                    if e.fr_deadline.is_none() {
                        e.fr_deadline = Some(Instant::now() + self.fr(&e));
                    }
                    self.reschedule(id, &e);
                    return;
                }
                other => {
                    e.park = other;
                    return;
                }
            }
        };
        if let Some((route, fill)) = pending {
            fill(&mut ctx);
            core.run_resumed(ctx, route);
        }
    }
}

/// A resume's route and what it writes into the context first.
type Pending = (RouteId, Box<dyn FnOnce(&mut Ctx) + Send>);

/// The resume handle a module gets with a suspension.
struct TxResumer {
    core: Arc<Core>,
    id: TxId,
}

impl Resumer for TxResumer {
    fn resume(self: Box<Self>, route: RouteId, fill: Box<dyn FnOnce(&mut Ctx) + Send>) -> bool {
        self.core.resume(self.id, route, fill)
    }
}

impl Core {
    /// Resumes a suspended transaction in `route` after `fill` wrote into its
    /// context. Exactly once: false (and counted) when the transaction is gone,
    /// was never suspended, or was already resumed or timed out.
    pub fn resume(
        self: &Arc<Self>,
        id: TxId,
        route: RouteId,
        fill: Box<dyn FnOnce(&mut Ctx) + Send>,
    ) -> bool {
        let pending: Pending = (route, fill);
        let ctx = {
            let Some(entry) = self.tm.get(id) else {
                Stats::inc(&self.stats.tm_late_resume);
                return false;
            };
            let Ok(mut e) = entry.lock() else {
                return false;
            };
            match std::mem::replace(&mut e.park, Park::Done) {
                Park::Parked(ctx) => {
                    self.stats.tm_suspended.fetch_sub(1, Ordering::Relaxed);
                    ctx
                }
                Park::Suspending(None) => {
                    // The module answered before the suspension finished: the suspending side runs it.
                    e.park = Park::Suspending(Some(pending));
                    return true;
                }
                other => {
                    e.park = other;
                    Stats::inc(&self.stats.tm_late_resume);
                    return false;
                }
            }
        };
        let (route, fill) = pending;
        let mut ctx = *ctx;
        fill(&mut ctx);
        self.run_resumed(ctx, route);
        true
    }

    /// Runs `route` for a resumed transaction; answers 500 if it sends no final reply.
    pub(crate) fn run_resumed(self: &Arc<Self>, mut ctx: Ctx, route: RouteId) {
        let Some(program) = self.program().cloned() else {
            return;
        };
        ctx.route_type = RouteType::FAILURE;
        let outcome = program.run(route, &mut ctx);
        self.after_route(ctx, outcome, RouteRun::Resumed);
    }
}

/// Runs transaction timers: retransmissions, terminations, fr_timer expiry.
pub(crate) async fn timer_task(core: Arc<Core>, shutdown: CancellationToken) {
    loop {
        let next = core
            .tm
            .timers
            .lock()
            .ok()
            .and_then(|t| t.peek().map(|Reverse((at, _))| *at));
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(at.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = core.tm.wake.notified() => continue,
            _ = shutdown.cancelled() => return,
        }
        let now = Instant::now();
        loop {
            let due = {
                let Ok(mut t) = core.tm.timers.lock() else {
                    break;
                };
                match t.peek() {
                    Some(Reverse((at, _))) if *at <= now => t.pop().map(|Reverse((_, id))| id),
                    _ => None,
                }
            };
            let Some(id) = due else { break };
            on_timer(&core, id, now);
        }
    }
}

fn on_timer(core: &Arc<Core>, id: TxId, now: Instant) {
    let Some(entry) = core.tm.get(id) else { return };
    let mut timed_out_ctx = None;
    let mut failure = None;
    let mut fr_fired = false;
    {
        let Ok(mut e) = entry.lock() else { return };
        if e.fr_deadline.is_some_and(|d| d <= now) && !e.st.is_final() {
            e.fr_deadline = None;
            fr_fired = true;
            if let Park::Parked(ctx) = std::mem::replace(&mut e.park, Park::Done) {
                core.stats.tm_suspended.fetch_sub(1, Ordering::Relaxed);
                timed_out_ctx = Some(ctx);
            }
            Stats::inc(&core.stats.tm_timeouts);
            // A failure route is armed for one run: the route re-arms it with t_on_failure.
            failure = e.failure_route.take();
        }
        match e.st.on_timer(now) {
            TxAction::Send(b) => {
                if let Some(d) = crate::reply_destination(&e.req, &e.peer) {
                    core.out.send(core, &e.peer, d, b);
                }
            }
            TxAction::Terminate => {
                drop(e);
                core.tm.remove(core, id);
                return;
            }
            // Nothing was due (a deadline that moved): its current one is queued already.
            TxAction::None if !fr_fired => return,
            TxAction::None => {}
        }
        core.tm.reschedule(id, &e);
    }
    if !fr_fired {
        return;
    }
    if timed_out_ctx.is_some() || failure.is_some() {
        // fr_timer fired with no final reply: the armed failure route runs, then 408.
        if let (Some(route), Some(program)) = (failure, core.program().cloned()) {
            let mut ctx = match timed_out_ctx {
                Some(c) => *c,
                None => {
                    let mut c = program.new_ctx(RouteType::FAILURE);
                    if let Ok(e) = entry.lock() {
                        let mut sip = SipCtx::new(e.req.clone(), e.peer);
                        sip.tx = Some(id);
                        c.ext.insert(sip);
                    }
                    c
                }
            };
            ctx.route_type = RouteType::FAILURE;
            ctx.may_suspend = true;
            if let Some(sip) = ctx.ext.get_mut::<SipCtx>() {
                sip.timed_out = true;
                sip.failure_route = None;
            }
            let outcome = program.run(route, &mut ctx);
            // A failure route may suspend (ask an application where to go next).
            if core.after_route(ctx, outcome, RouteRun::Failure) == AfterRoute::Suspended {
                return;
            }
        }
    }
    if core.tm.reply_code(id).is_some_and(|c| c < 200) {
        core.tm.reply(core, id, 408, b"Request Timeout", &[]);
    }
}
