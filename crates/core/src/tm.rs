//! The transaction layer's shell: siphon-tm's shards behind one lock each,
//! a timer task per shard, and what the shards ask for performed — bytes
//! sent, failure and reply routes run, contexts handed back.
//!
//! All transaction logic (retransmissions, branches, the choice of the final
//! reply, CANCEL, what follows a route) is the sans-io `siphon_tm::TxShard`;
//! this file only locks, reads the clock and does I/O. A shard's lock is
//! never held while a route runs or bytes are sent: [`Tm::with`] collects the
//! actions under the lock and performs them after it.

use crate::dns::Target;
use crate::script::SipCtx;
use crate::{AfterRoute, Core, Peer, RouteRun};
use bytes::Bytes;
use siphon_script::api::{Resumer, Suspend};
use siphon_script::{Ctx, Outcome, RouteId, RouteType};
use siphon_sip::SipMsg;
use siphon_tm::{Action, NewTx, ReplyEdit, Resumed, RouteKind, Shell, TmStats, TxShard};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use siphon_tm::{TmConfig, TxId};

/// The shell's types, as siphon-tm stores and hands them back.
pub(crate) struct CoreShell;

impl Shell for CoreShell {
    type Peer = Upstream;
    type Dest = Hop;
    type Route = RouteId;
    type Ctx = Box<Ctx>;
    type Resume = Pending;
}

/// Where a branch goes and how: the address, and what the script fixed for
/// it (`$fs`, `set_forward_no_connect()`, the name TLS checks).
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    pub(crate) target: Target,
    pub(crate) send: crate::transport::SendOptions,
}

/// Where a transaction's replies go: the request's peer (its connection) and
/// the address RFC 3261 §18.2.2 / RFC 3581 name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstream {
    peer: Peer,
    dest: SocketAddr,
}

/// A resume's route and what it writes into the context first.
pub(crate) type Pending = (RouteId, Box<dyn FnOnce(&mut Ctx) + Send>);

/// Shards: transactions are spread by their hash index, so an INVITE, its
/// CANCEL, its ACK and the replies to its branches meet in one shard.
const SHARDS: usize = 64;

struct Shard {
    table: Mutex<TxShard<CoreShell>>,
    /// The table's next timer, in nanoseconds since [`Tm::epoch`]
    /// (`u64::MAX`: none), written under the lock after every change: the
    /// timer task reads it without taking the lock from the workers.
    next_due: AtomicU64,
}

/// How often the timer task looks for due timers: Kamailio ticks every
/// 62.5 ms; 10 ms keeps retransmissions within a hundredth of T1 without
/// waking a task for every transaction.
const TICK: Duration = Duration::from_millis(10);

/// Publishes a shard's next deadline for the timer task when dropped, so
/// also when the closure given to [`Tm::with`] panics (a timer it set must
/// not wait for the shard's next use).
struct NoteDeadline<'a, 'b> {
    tm: &'a Tm,
    shard: usize,
    table: &'b mut TxShard<CoreShell>,
}

impl Drop for NoteDeadline<'_, '_> {
    fn drop(&mut self) {
        let due = self
            .table
            .next_deadline()
            .map_or(u64::MAX, |d| self.tm.since_epoch(d));
        self.tm.shards[self.shard]
            .next_due
            .store(due, Ordering::Release);
    }
}

thread_local! {
    /// [`Tm::with`]'s buffer of actions, kept between calls on this thread.
    static SPARE_ACTIONS: std::cell::Cell<Vec<Action<CoreShell>>> =
        const { std::cell::Cell::new(Vec::new()) };
}

pub(crate) struct Tm {
    shards: Vec<Shard>,
    epoch: Instant,
    seed: u64,
    /// What modules asked to hear of finals sent upstream (acc).
    pub(crate) final_hooks: std::sync::RwLock<Vec<siphon_script::api::TxFinalHook>>,
}

impl Tm {
    pub(crate) fn new(seed: u64) -> Tm {
        let shards = (0..SHARDS)
            .map(|i| Shard {
                table: Mutex::new(TxShard::new(
                    TmConfig::default(),
                    (seed as u32).rotate_left(i as u32) ^ i as u32,
                )),
                next_due: AtomicU64::new(u64::MAX),
            })
            .collect();
        Tm {
            shards,
            epoch: Instant::now(),
            seed,
            final_hooks: Default::default(),
        }
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, TxShard<CoreShell>> {
        // A panic elsewhere must not take every later call down with it.
        self.shards[i]
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `at` in nanoseconds since the table's epoch (0 before it).
    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether shard `i` has a timer due at `now`, without its lock.
    fn due(&self, i: usize, now: Instant) -> bool {
        self.shards[i].next_due.load(Ordering::Acquire) <= self.since_epoch(now)
    }

    /// The parameters (the tm module sets them at load).
    pub(crate) fn config(&self) -> TmConfig {
        self.lock(0).config().clone()
    }

    pub(crate) fn set_config(&self, cfg: TmConfig) {
        for i in 0..SHARDS {
            self.lock(i).set_config(cfg.clone());
        }
    }

    /// A request's hash index (its shard and `$T(id_index)`).
    pub(crate) fn index_of(&self, msg: &SipMsg) -> Option<u32> {
        siphon_tm::id::request_index(msg, self.seed)
    }

    /// Runs `f` on the shard of `index` under its lock, then performs what it
    /// asked for, without the lock.
    pub(crate) fn with<R>(
        &self,
        core: &Arc<Core>,
        index: u32,
        f: impl FnOnce(&mut TxShard<CoreShell>, Instant) -> R,
    ) -> R {
        let i = index as usize % SHARDS;
        let now = Instant::now();
        // The actions' buffer is the thread's, reused: an action is large and
        // most calls have a few. A nested call (an action that runs a route
        // which calls back here) finds the slot empty and uses a fresh one.
        let mut actions = SPARE_ACTIONS.with(|s| s.take());
        let r = {
            let mut t = self.lock(i);
            let t = NoteDeadline {
                tm: self,
                shard: i,
                table: &mut t,
            };
            let r = f(t.table, now);
            while let Some(a) = t.table.poll_action() {
                actions.push(a);
            }
            r
        };
        for a in actions.drain(..) {
            core.perform(a);
        }
        // A burst (a timer visit with many retransmissions) does not keep
        // its room on the thread.
        if actions.capacity() <= 64 {
            SPARE_ACTIONS.with(|s| s.set(actions));
        }
        r
    }

    /// The counters of every shard, summed, with the transactions alive and suspended.
    fn totals(&self) -> (TmStats, usize, usize) {
        let mut sum = TmStats::default();
        let (mut current, mut suspended) = (0, 0);
        for i in 0..SHARDS {
            let t = self.lock(i);
            let s = t.stats();
            current += t.len();
            suspended += t.suspended();
            sum.created += s.created;
            sum.freed += s.freed;
            for (a, b) in sum.replies.iter_mut().zip(s.replies) {
                *a += b;
            }
            sum.rpl_received += s.rpl_received;
            sum.rpl_generated += s.rpl_generated;
            sum.rpl_relayed += s.rpl_relayed;
            sum.branches += s.branches;
            sum.branch_timeouts += s.branch_timeouts;
            sum.tx_timeouts += s.tx_timeouts;
            sum.retransmissions_absorbed += s.retransmissions_absorbed;
            sum.late_resumes += s.late_resumes;
            sum.cancels_sent += s.cancels_sent;
            sum.failovers += s.failovers;
        }
        (sum, current, suspended)
    }

    /// `tm:` statistics (siphon's names) and `tmx:` (Kamailio's tmx module's).
    pub(crate) fn snapshot(&self) -> Vec<(String, i64)> {
        let (s, current, suspended) = self.totals();
        let n = |v: u64| v as i64;
        let mut v = vec![
            ("tm:current".to_string(), current as i64),
            ("tm:created".into(), n(s.created)),
            ("tm:freed".into(), n(s.freed)),
            ("tm:suspended".into(), suspended as i64),
            ("tm:timeouts".into(), n(s.branch_timeouts + s.tx_timeouts)),
            ("tm:late_resume".into(), n(s.late_resumes)),
            (
                "tm:retransmissions_absorbed".into(),
                n(s.retransmissions_absorbed),
            ),
            ("tm:branches".into(), n(s.branches)),
            ("tm:cancels_sent".into(), n(s.cancels_sent)),
            ("tm:dns_failovers".into(), n(s.failovers)),
            ("tmx:UAS_transactions".into(), n(s.created)),
            ("tmx:inuse_transactions".into(), current as i64),
            ("tmx:rpl_received".into(), n(s.rpl_received)),
            ("tmx:rpl_generated".into(), n(s.rpl_generated)),
            ("tmx:rpl_relayed".into(), n(s.rpl_relayed)),
            (
                "tmx:rpl_absorbed".into(),
                n(s.rpl_received.saturating_sub(s.rpl_relayed)),
            ),
            ("tmx:rpl_sent".into(), n(s.rpl_generated + s.rpl_relayed)),
        ];
        for (i, c) in s.replies.iter().enumerate() {
            v.push((format!("tm:{}xx_replies", i + 1), n(*c)));
            if i > 0 {
                v.push((format!("tmx:{}xx_transactions", i + 1), n(*c)));
            }
        }
        v
    }

    /// `tm.stats`, with Kamailio's fields.
    pub(crate) fn rpc_stats(&self) -> serde_json::Value {
        let (s, current, suspended) = self.totals();
        serde_json::json!({
            "current": current,
            "waiting": suspended,
            "total": s.created,
            "total_local": 0,
            "rpl_received": s.rpl_received,
            "rpl_generated": s.rpl_generated,
            "rpl_sent": s.rpl_generated + s.rpl_relayed,
            "6xx": s.replies[5],
            "5xx": s.replies[4],
            "4xx": s.replies[3],
            "3xx": s.replies[2],
            "2xx": s.replies[1],
            "created": s.created,
            "freed": s.freed,
            "timeouts": s.branch_timeouts + s.tx_timeouts,
            "late_resume": s.late_resumes,
        })
    }
}

/// Runs the shards' timers: retransmissions, fr_timer, the end of completed
/// transactions. One task ticks and visits the shards that have something due.
pub(crate) fn start_timers(core: &Arc<Core>, shutdown: &CancellationToken) {
    tokio::spawn(timer_task(core.clone(), shutdown.clone()));
}

async fn timer_task(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Instant::now();
        for i in 0..SHARDS {
            if core.tm.due(i, now) {
                core.tm.with(&core, i as u32, |t, now| t.on_timer(now));
            }
        }
    }
}

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
    /// `t_newtran`: the transaction of the request in `sip`, created if needed
    /// (with the hooks the script armed before it existed).
    pub(crate) fn newtran(self: &Arc<Self>, sip: &mut SipCtx) -> Option<TxId> {
        if let Some(id) = sip.tx {
            return Some(id);
        }
        if !sip.msg.is_request() || sip.msg.method() == siphon_sip::Method::Ack {
            return None;
        }
        let index = self.tm.index_of(&sip.msg)?;
        let dest = crate::reply_destination(&sip.msg, &sip.peer)?;
        let top_via = self.reply_top_via(&sip.msg, &sip.peer).unwrap_or_default();
        let new = NewTx {
            msg: sip.msg.clone(),
            peer: Upstream {
                peer: sip.peer,
                dest,
            },
            reliable: sip.peer.transport.is_reliable(),
            to_tag: Bytes::from(self.to_tag(&sip.msg)),
            top_via,
        };
        let (failure, reply) = (sip.failure_route, sip.reply_route);
        let id = self.tm.with(self, index, |t, now| {
            let id = t.create(new, index, now)?;
            if failure.is_some() {
                t.set_on_failure(id, failure);
            }
            if reply.is_some() {
                t.set_on_reply(id, reply);
            }
            Some(id)
        })?;
        sip.tx = Some(id);
        Some(id)
    }

    /// Suspends the request's transaction (created if needed), runs the
    /// module's start, then parks the context — unless the answer came first,
    /// in which case the resumed route runs now.
    pub(crate) fn suspend(self: &Arc<Self>, mut ctx: Ctx, s: Option<Suspend>) {
        let Some(id) = ctx
            .ext
            .get_mut::<SipCtx>()
            .and_then(|sip| self.newtran(sip))
        else {
            tracing::error!("cannot suspend: no SIP request with a transaction in this route");
            return;
        };
        if !self
            .tm
            .with(self, id.index, |t, now| t.begin_suspend(id, now))
        {
            tracing::warn!(
                "t_suspend: transaction {}:{} already has a final reply",
                id.index,
                id.label
            );
            self.give_back(id, ctx, RouteKind::Request);
            return;
        }
        if let Some(s) = s {
            (s.start)(
                &mut ctx,
                Box::new(TxResumer {
                    core: self.clone(),
                    id,
                }),
            );
        }
        let early = self.tm.with(self, id.index, |t, now| {
            t.finish_suspend(id, Box::new(ctx), now)
        });
        if let Some((ctx, (route, fill))) = early {
            let mut ctx = *ctx;
            fill(&mut ctx);
            self.run_resumed(ctx, route);
        }
    }

    /// Resumes a suspended transaction in `route` after `fill` wrote into its
    /// context. Exactly once: false (and counted) when the transaction is gone,
    /// was never suspended, or was already resumed or timed out.
    pub fn resume(
        self: &Arc<Self>,
        id: TxId,
        route: RouteId,
        fill: Box<dyn FnOnce(&mut Ctx) + Send>,
    ) -> bool {
        match self
            .tm
            .with(self, id.index, |t, _| t.resume(id, (route, fill)))
        {
            Resumed::Run(ctx, (route, fill)) => {
                let mut ctx = *ctx;
                fill(&mut ctx);
                self.run_resumed(ctx, route);
                true
            }
            Resumed::Queued => true,
            Resumed::Late(_) => false,
        }
    }

    /// Runs `route` for a resumed transaction.
    pub(crate) fn run_resumed(self: &Arc<Self>, mut ctx: Ctx, route: RouteId) {
        let Some(program) = self.program().cloned() else {
            return;
        };
        ctx.route_type = RouteType::FAILURE;
        let outcome = program.run(route, &mut ctx);
        self.after_route(ctx, outcome, RouteRun::Resumed);
    }

    /// Hands a context back to its transaction after a route ran.
    pub(crate) fn give_back(self: &Arc<Self>, id: TxId, ctx: Ctx, kind: RouteKind) {
        self.tm.with(self, id.index, |t, now| {
            t.set_flags(id, ctx.flags);
            t.route_done(id, Box::new(ctx), kind, None, now)
        });
    }

    /// Performs what a shard asked for.
    fn perform(self: &Arc<Self>, a: Action<CoreShell>) {
        match a {
            Action::Upstream { peer, bytes, .. } => {
                self.out.send(self, &peer.peer, peer.dest, bytes);
            }
            Action::Downstream {
                tx,
                branch,
                dest,
                bytes,
            } => self.send_branch(tx, branch, dest, bytes),
            Action::RunFailure { tx, route, ctx } => self.run_failure(tx, route, ctx),
            Action::RunOnReply {
                tx,
                branch,
                route,
                reply,
                dest,
                ctx,
            } => self.run_onreply(tx, branch, route, reply, dest, ctx),
            Action::Ended { .. } => {}
            Action::Completed {
                request,
                peer,
                code,
                reply,
                flags,
                branch_ruri,
                ..
            } => self.transaction_final(request, peer.peer, code, reply, flags, branch_ruri),
        }
    }

    /// A flagged transaction's final went upstream: the modules that asked
    /// hear of it (acc).
    fn transaction_final(
        &self,
        request: SipMsg,
        peer: Peer,
        code: u16,
        reply: Bytes,
        flags: u64,
        branch_ruri: Option<Bytes>,
    ) {
        let hooks = self
            .tm
            .final_hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if hooks.is_empty() {
            return;
        }
        let parsed = siphon_sip::parse(reply.clone()).ok();
        let line_end = reply
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
            .unwrap_or(reply.len());
        // `SIP/2.0 200 OK`: the reason is what follows the code.
        let reason = reply[..line_end]
            .splitn(3, |&c| c == b' ')
            .nth(2)
            .map(|r| {
                let at = r.as_ptr() as usize - reply.as_ptr() as usize;
                reply.slice(at..at + r.len())
            })
            .unwrap_or_default();
        let fin = siphon_script::api::TxFinal {
            request,
            peer,
            branch_ruri,
            code,
            reason,
            to_tag: parsed.and_then(|m| m.to()).and_then(|t| t.tag),
            flags,
            time: std::time::SystemTime::now(),
        };
        for h in hooks {
            h(&fin);
        }
    }

    /// Sends a branch's request (or its CANCEL, ACK, a retransmission); a
    /// branch that cannot go out fails at once.
    pub(crate) fn send_branch(self: &Arc<Self>, tx: TxId, branch: u16, dest: Hop, bytes: Bytes) {
        let core = self.clone();
        let notice = Box::new(move |e: crate::transport::SendError| {
            tracing::info!("branch {branch} of {}:{}: {e}", tx.index, tx.label);
            let c = core.clone();
            c.tm.with(&core, tx.index, |t, now| t.branch_failed(tx, branch, now));
        });
        if let Err(e) = self
            .out
            .send_with(self, dest.target, &dest.send, bytes, Some(notice))
        {
            crate::stats::Stats::inc(&self.stats.send_failures);
            tracing::info!(
                "branch {branch} of {}:{} to {}: {e}",
                tx.index,
                tx.label,
                dest.target.addr
            );
            self.tm
                .with(self, tx.index, |t, now| t.branch_failed(tx, branch, now));
        }
    }

    /// Runs a failure route for the transaction, with its context.
    fn run_failure(self: &Arc<Self>, id: TxId, route: RouteId, ctx: Option<Box<Ctx>>) {
        let Some(program) = self.program().cloned() else {
            return;
        };
        let mut ctx = match ctx {
            Some(c) => *c,
            None => {
                let mut c = program.new_ctx(RouteType::FAILURE);
                let req = self.tm.with(self, id.index, |t, _| t.request(id).cloned());
                if let Some(req) = req {
                    let peer = Peer {
                        transport: crate::Transport::Udp,
                        src: SocketAddr::from(([0, 0, 0, 0], 0)),
                        local: SocketAddr::from(([0, 0, 0, 0], 0)),
                        conn: None,
                    };
                    let mut sip = SipCtx::new(req, peer);
                    sip.tx = Some(id);
                    c.ext.insert(sip);
                }
                c
            }
        };
        ctx.route_type = RouteType::FAILURE;
        ctx.may_suspend = true;
        if let Some(sip) = ctx.ext.get_mut::<SipCtx>() {
            // Armed for one run; the R-URI is "consumed": t_relay() needs a new
            // $ru, $du or branch (Kamailio).
            sip.failure_route = None;
            sip.ruri_consumed = true;
        }
        let outcome = program.run(route, &mut ctx);
        if self.after_route(ctx, outcome, RouteRun::Failure) == AfterRoute::Suspended {
            tracing::debug!("failure route of {}:{} suspended", id.index, id.label);
        }
    }

    /// Runs an `onreply_route` for a reply of `branch`, then hands the reply on.
    fn run_onreply(
        self: &Arc<Self>,
        id: TxId,
        branch: u16,
        route: RouteId,
        reply: SipMsg,
        dest: Hop,
        ctx: Option<Box<Ctx>>,
    ) {
        let dest = dest.target;
        let Some(program) = self.program().cloned() else {
            return;
        };
        let mut ctx = ctx.map_or_else(|| program.new_ctx(RouteType::ONREPLY), |c| *c);
        let request = ctx.ext.remove::<SipCtx>();
        let (route_type, may_suspend) = (ctx.route_type, ctx.may_suspend);
        ctx.route_type = RouteType::ONREPLY;
        ctx.may_suspend = false;
        let mut sip = SipCtx::new(
            reply.clone(),
            Peer {
                transport: dest.transport,
                src: dest.addr,
                local: self.local_for(dest).unwrap_or(dest.addr),
                conn: None,
            },
        );
        sip.tx = Some(id);
        sip.branch = Some(branch);
        // `$bf` and isbflagset() read the branch's flags (lookup()'s NAT flag…).
        sip.bflags = self
            .tm
            .with(self, id.index, |t, _| t.branch_flags(id, branch))
            .unwrap_or(0);
        ctx.ext.insert(sip);
        let outcome = program.run(route, &mut ctx);
        let drop = matches!(outcome, Outcome::Drop) || std::mem::take(&mut ctx.dropped);
        // The reply as the route left it: a module may have changed the
        // message itself (nathelper's set_contact_alias, msg_apply_changes).
        let (reply, edits) = match ctx.ext.remove::<SipCtx>() {
            Some(s) => (s.msg, s.edits),
            None => (reply, Default::default()),
        };
        if let Some(r) = request {
            ctx.ext.insert(r);
        }
        ctx.route_type = route_type;
        ctx.may_suspend = may_suspend;
        self.tm.with(self, id.index, |t, now| {
            t.route_done(
                id,
                Box::new(ctx),
                RouteKind::OnReply { branch },
                Some((reply, ReplyEdit { drop, edits })),
                now,
            )
        });
    }
}
