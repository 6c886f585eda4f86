//! One shard of the transaction table: every transaction whose hash index
//! maps here, their branches, and their timers.
//!
//! Events come in as method calls with `now`; what must happen outside —
//! bytes to send, a route to run, a transaction's end — comes out of
//! [`TxShard::poll_action`]. While a route runs for a transaction (its
//! script context is out), replies and timeouts that would need a decision
//! wait in the transaction's mailbox and are handled when the route is done,
//! as Kamailio's reply lock makes them wait: a failure route that relays
//! anew never races a reply.

use crate::id::{self, TxId};
use crate::select::{self, Final};
use bytes::Bytes;
use siphon_sip::{
    CancelReason, ClientAction, ClientState, ClientTimers, ClientTx, Edits, Method, ReplyOptions,
    ReplyOrigin, ReplyVerdict, ServerTx, SipMsg, TxAction, TxState,
};
use std::collections::{BTreeSet, VecDeque};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::time::{Duration, Instant};

/// What the shell's types are: the table stores them and hands them back.
pub trait Shell {
    /// Where a request came from (replies go back there).
    type Peer: Clone;
    /// Where a branch goes.
    type Dest: Clone;
    /// A route of the script.
    type Route: Copy + PartialEq + std::fmt::Debug;
    /// The script context a transaction keeps between route runs (AVPs, flags…).
    type Ctx;
    /// A module's answer that arrived before its suspension finished.
    type Resume;
}

/// tm's parameters.
#[derive(Debug, Clone)]
pub struct TmConfig {
    /// `fr_timer`: the wait for a reply on a branch, and for a final reply on
    /// a transaction with no branch (suspended, or `t_newtran` only).
    pub fr_timer: Duration,
    /// `fr_inv_timer`: an INVITE branch's wait for a final after a provisional.
    pub fr_inv_timer: Duration,
    /// `max_inv_lifetime`.
    pub max_inv_lifetime: Duration,
    /// `max_noninv_lifetime`.
    pub max_noninv_lifetime: Duration,
    /// `wt_timer`: how long a completed branch absorbs retransmitted finals.
    pub wait: Duration,
    /// `retr_timer1` (T1).
    pub t1: Duration,
    /// `retr_timer2` (T2).
    pub t2: Duration,
    /// `auto_inv_100`: `100 Trying` when an INVITE transaction is created.
    pub auto_inv_100: bool,
    /// A 503 picked for the caller goes as 500 (RFC 3261 §16.7 step 6).
    pub remap_503_500: bool,
    /// `aggregate_challenges`: several 401/407 become one reply with every challenge.
    pub aggregate_challenges: bool,
    /// `Server:` of local replies.
    pub server: Option<Bytes>,
    /// `use_dns_failover`: a branch that never answers, cannot be reached or
    /// answers 503 is tried again at the next address of its destination.
    pub use_dns_failover: bool,
}

impl Default for TmConfig {
    fn default() -> Self {
        TmConfig {
            fr_timer: Duration::from_secs(30),
            fr_inv_timer: Duration::from_secs(120),
            max_inv_lifetime: Duration::from_secs(180),
            max_noninv_lifetime: Duration::from_secs(32),
            wait: Duration::from_secs(5),
            t1: siphon_sip::tx::T1,
            t2: siphon_sip::tx::T2,
            auto_inv_100: true,
            remap_503_500: true,
            aggregate_challenges: true,
            server: Some(Bytes::from_static(b"siphon")),
            use_dns_failover: false,
        }
    }
}

/// A request the script made a transaction for (`t_newtran`, `t_relay`, an async call).
pub struct NewTx<S: Shell> {
    /// The request as received.
    pub msg: SipMsg,
    /// Where it came from.
    pub peer: S::Peer,
    /// Whether it came over TCP/TLS (no retransmissions upstream).
    pub reliable: bool,
    /// The To-tag of local replies.
    pub to_tag: Bytes,
    /// The top Via of local replies (`received`/`rport` filled in).
    pub top_via: Bytes,
}

/// One branch to send.
pub struct BranchSpec<S: Shell> {
    /// The request to send, with `edits` (R-URI, headers) applied; tm adds its Via on top.
    pub msg: SipMsg,
    /// The script's edits for this branch.
    pub edits: Edits,
    /// Our Via without its branch: `SIP/2.0/UDP 127.0.0.1:5060`.
    pub sent_by: Bytes,
    /// Where it goes.
    pub dest: S::Dest,
    /// Whether it goes over TCP/TLS (no retransmissions).
    pub reliable: bool,
    /// Branch flags (`$bf`).
    pub flags: u64,
    /// Further addresses of the same destination (RFC 3263's other SRV and
    /// A/AAAA targets), tried in order with `use_dns_failover` when this one
    /// never answers, cannot be reached or answers 503.
    pub failover: Vec<Alternate<S>>,
}

/// Another address for a branch's destination.
pub struct Alternate<S: Shell> {
    /// Where.
    pub dest: S::Dest,
    /// Our Via for it, without the branch.
    pub sent_by: Bytes,
    /// TCP/TLS.
    pub reliable: bool,
}

impl<S: Shell> Clone for Alternate<S> {
    fn clone(&self) -> Self {
        Alternate {
            dest: self.dest.clone(),
            sent_by: self.sent_by.clone(),
            reliable: self.reliable,
        }
    }
}

/// Why a relay was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayError {
    /// No such transaction.
    NoTransaction,
    /// The caller canceled it: no new branch may go out.
    Canceled,
    /// It already has a final reply.
    Replied,
    /// No branch to send.
    NoBranches,
}

/// What a received request is to the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not a transaction's: the script routes it.
    New,
    /// A retransmission or the ACK of a non-2xx: handled here.
    Absorbed,
    /// The ACK of a 2xx of this transaction: end to end, the script routes it too.
    AckOf2xx(TxId),
    /// A CANCEL of this pending INVITE: branches are being canceled; answer the CANCEL 200.
    Canceled(TxId),
    /// A CANCEL of an INVITE this shard does not know (481), or one already answered.
    UnknownCancel,
}

/// Which route run [`TxShard::route_done`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `request_route` (the transaction was made during it).
    Request,
    /// A route resumed after a suspension.
    Resumed,
    /// A failure route.
    Failure,
    /// An `onreply_route` for a reply of `branch`.
    OnReply {
        /// The branch whose reply it was.
        branch: u16,
    },
}

/// What a route asked of a reply it ran for.
#[derive(Debug, Clone, Default)]
pub struct ReplyEdit {
    /// `drop`: a provisional is discarded (ignored for finals, as Kamailio).
    pub drop: bool,
    /// Header edits for the relayed reply.
    pub edits: Edits,
}

/// What the shell must do.
#[allow(
    clippy::large_enum_variant,
    reason = "actions live between a shard's lock and their execution; boxing the reply would allocate per reply"
)]
pub enum Action<S: Shell> {
    /// Send to the caller.
    Upstream {
        /// The transaction.
        tx: TxId,
        /// Where the request came from.
        peer: S::Peer,
        /// The reply.
        bytes: Bytes,
    },
    /// Send on a branch (the request, a retransmission, its CANCEL or ACK).
    Downstream {
        /// The transaction.
        tx: TxId,
        /// The branch.
        branch: u16,
        /// Where the branch goes.
        dest: S::Dest,
        /// What to send.
        bytes: Bytes,
    },
    /// Run `onreply_route[route]` for a reply, then call [`TxShard::route_done`]
    /// with [`RouteKind::OnReply`] and the [`ReplyEdit`].
    RunOnReply {
        /// The transaction.
        tx: TxId,
        /// The branch.
        branch: u16,
        /// The route.
        route: S::Route,
        /// The reply.
        reply: SipMsg,
        /// Where the branch went (the reply came from there).
        dest: S::Dest,
        /// The transaction's context (`None` when it has none yet).
        ctx: Option<S::Ctx>,
    },
    /// Run `failure_route[route]`, then call [`TxShard::route_done`] with
    /// [`RouteKind::Failure`].
    RunFailure {
        /// The transaction.
        tx: TxId,
        /// The route.
        route: S::Route,
        /// The context.
        ctx: Option<S::Ctx>,
    },
    /// A final reply went upstream for a transaction whose request carries
    /// message flags (`setflag`, given by [`TxShard::set_flags`]): what
    /// accounting (acc) reports. Only flagged transactions report it: with no
    /// flag set there is nothing to account.
    Completed {
        /// The transaction.
        tx: TxId,
        /// The request, as received.
        request: SipMsg,
        /// Where it came from.
        peer: S::Peer,
        /// The final's code.
        code: u16,
        /// The reply as sent upstream.
        reply: Bytes,
        /// The request's message flags when the final went out.
        flags: u64,
        /// The R-URI of the branch whose final it is (the 2xx's, or the one the
        /// selection picked), as sent; `None` for a final made here with no branch.
        branch_ruri: Option<Bytes>,
        /// When it went out.
        at: Instant,
    },
    /// The transaction is over: its context goes with it.
    Ended {
        /// The transaction.
        tx: TxId,
        /// What it kept.
        ctx: Option<S::Ctx>,
    },
}

/// What [`TxShard::resume`] found.
pub enum Resumed<S: Shell> {
    /// Run the resumed route on this context now, then `route_done(Resumed)`.
    Run(S::Ctx, S::Resume),
    /// The suspension is still being set up: the answer waits and
    /// [`TxShard::finish_suspend`] hands it back.
    Queued,
    /// Gone, never suspended, or already resumed or timed out (counted).
    Late(S::Resume),
}

/// Counters of one shard (the shell sums the shards).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmStats {
    /// Transactions created.
    pub created: u64,
    /// Transactions removed.
    pub freed: u64,
    /// Replies sent upstream, by class: 1xx … 6xx.
    pub replies: [u64; 6],
    /// Replies received that matched a branch.
    pub rpl_received: u64,
    /// Replies built here and sent upstream (t_reply, 100, 408, 487, 500, merged challenges).
    pub rpl_generated: u64,
    /// Received replies relayed upstream.
    pub rpl_relayed: u64,
    /// Branches sent.
    pub branches: u64,
    /// Branches that timed out (fr_timer / fr_inv_timer).
    pub branch_timeouts: u64,
    /// Transactions without a branch that timed out (fr_timer).
    pub tx_timeouts: u64,
    /// Retransmitted requests absorbed.
    pub retransmissions_absorbed: u64,
    /// Resumes that came too late (or twice).
    pub late_resumes: u64,
    /// CANCELs sent to branches.
    pub cancels_sent: u64,
    /// Branches tried again at another address (`use_dns_failover`).
    pub failovers: u64,
}

/// When a CANCEL goes again.
struct CancelRetx {
    bytes: Bytes,
    at: Instant,
    interval: Duration,
    until: Instant,
}

impl CancelRetx {
    /// The resend schedule of a CANCEL just sent: none over TCP/TLS.
    fn over_udp(reliable: bool, cancel: &Bytes, now: Instant, cfg: &TmConfig) -> Option<Self> {
        (!reliable).then(|| CancelRetx {
            bytes: cancel.clone(),
            at: now + cfg.t1,
            interval: cfg.t1,
            until: now + 64 * cfg.t1,
        })
    }
}

/// A branch's CANCEL: none yet, waiting for a provisional, or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CancelState {
    None,
    Pending(OwnedReason),
    Sent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedReason {
    None,
    Elsewhere,
    Cause(u16),
    Copy(Bytes),
}

impl OwnedReason {
    fn as_reason(&self) -> CancelReason<'_> {
        match self {
            OwnedReason::None => CancelReason::None,
            OwnedReason::Elsewhere => CancelReason::CompletedElsewhere,
            OwnedReason::Cause(c) => CancelReason::Cause(*c),
            OwnedReason::Copy(b) => CancelReason::Copy(b),
        }
    }
}

/// What a branch keeps to try its destination's next address: the request,
/// its edits and the addresses left.
type Failover<S> = (SipMsg, Edits, Vec<Alternate<S>>);

struct Branch<S: Shell> {
    client: ClientTx,
    /// Where it went (`None`: it never went, e.g. its name did not resolve).
    dest: Option<S::Dest>,
    /// The request as sent (parsed when a CANCEL or an ACK is built from it).
    sent: Bytes,
    on_reply: Option<S::Route>,
    flags: u64,
    /// The request and edits it was built from, and where else it may go
    /// (kept only when there is somewhere else).
    /// Boxed: rare, and a request with its edits is large (every branch
    /// of every transaction would carry the room for it).
    failover: Option<Box<Failover<S>>>,
    /// The final this branch contributes: received (`reply`) or made up here.
    code: u16,
    reply: Option<(SipMsg, Edits)>,
    /// The branch never got out (the selection may not pick it).
    send_failed: bool,
    /// Over TCP/TLS: nothing is retransmitted.
    reliable: bool,
    /// Our CANCEL, resent over UDP (T1 doubling to T2) until its 200, the
    /// branch's final, or 64·T1 (RFC 3261 §9.1: a CANCEL is a non-INVITE
    /// client transaction of its own).
    cancel_retx: Option<CancelRetx>,
    timed_out: bool,
    replied: bool,
    cancel: CancelState,
}

/// Where a transaction's script context is.
enum Park<S: Shell> {
    /// With the transaction, or out in a route run (`busy`).
    None,
    /// A module's suspension is being set up; an early answer waits here.
    Suspending(Option<S::Resume>),
    /// Suspended: the context waits for a resume or fr_timer.
    Parked,
    /// Resumed or timed out: later resumes are late.
    Done,
}

struct Tx<S: Shell> {
    id: TxId,
    key: Bytes,
    req: SipMsg,
    peer: S::Peer,
    uas: ServerTx,
    to_tag: Bytes,
    top_via: Bytes,
    invite: bool,
    branches: Vec<Branch<S>>,
    ctx: Option<S::Ctx>,
    /// A route runs for the transaction: its context is out.
    busy: bool,
    park: Park<S>,
    mailbox: VecDeque<(u16, SipMsg)>,
    /// A branch ended while busy: the selection runs when the route is done.
    selection_due: bool,
    canceled: bool,
    /// The caller's CANCEL's Reason headers, copied to ours (RFC 3326).
    cancel_reason: Option<Bytes>,
    on_failure: Option<S::Route>,
    on_reply: Option<S::Route>,
    /// The branch the last selection picked (`$T_reply_code`, `t_check_status`).
    picked: Option<u16>,
    /// The wait for a final with no branch out (t_newtran only, suspended).
    fr_at: Option<Instant>,
    timed_out: bool,
    end_of_life: Instant,
    /// fr_timer / fr_inv_timer for this transaction's new branches (`t_set_fr`).
    fr: Duration,
    fr_inv: Duration,
    /// Branches the shell is still preparing (a name being resolved): the
    /// transaction waits for them as for sent ones.
    holds: u32,
    scheduled: Option<Instant>,
    /// The request's message flags, as the shell last gave them ([`TxShard::set_flags`]).
    flags: u64,
    /// The branch whose 2xx went upstream.
    answered_by: Option<u16>,
}

impl<S: Shell> Tx<S> {
    /// Whether a branch may still bring a final.
    fn pending(&self) -> bool {
        self.holds > 0 || self.branches.iter().any(|b| !b.client.is_done())
    }
}

/// What the script reads about a transaction (`$T_reply_code`, `t_check_status`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxInfo {
    /// `$T_reply_code`: the picked branch's final in a failure route, else the
    /// last code sent upstream (408 after a timeout without a branch).
    pub reply_code: u16,
    /// `t_is_canceled()`.
    pub canceled: bool,
    /// Branches created so far.
    pub branches: u16,
    /// The branch the last selection picked (`$T_branch_idx` in a failure route).
    pub picked: Option<u16>,
    /// `t_branch_timeout()`: the picked branch hit its fr timer.
    pub branch_timeout: bool,
    /// `t_branch_replied()`: the picked branch received a reply.
    pub branch_replied: bool,
    /// `t_any_timeout()`.
    pub any_timeout: bool,
    /// `t_any_replied()`.
    pub any_replied: bool,
    /// A final went upstream.
    pub replied: bool,
    /// `t_is_expired()`: past max_inv_lifetime / max_noninv_lifetime.
    pub expired: bool,
}

/// One shard of the transaction table.
pub struct TxShard<S: Shell> {
    cfg: TmConfig,
    salt: u32,
    next_label: u32,
    txs: HashMap<u32, Tx<S>>,
    by_key: HashMap<Bytes, u32>,
    timers: BTreeSet<(Instant, u32)>,
    out: VecDeque<Action<S>>,
    stats: TmStats,
}

impl<S: Shell> TxShard<S> {
    /// An empty shard. `salt` (random per process and shard) makes our branch
    /// parameters unique across restarts.
    pub fn new(cfg: TmConfig, salt: u32) -> Self {
        TxShard {
            cfg,
            salt,
            next_label: salt | 1,
            txs: HashMap::default(),
            by_key: HashMap::default(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            stats: TmStats::default(),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &TmConfig {
        &self.cfg
    }

    /// Changes the parameters for transactions created from now on.
    pub fn set_config(&mut self, cfg: TmConfig) {
        self.cfg = cfg;
    }

    /// The counters.
    pub fn stats(&self) -> &TmStats {
        &self.stats
    }

    /// Transactions in the table.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action<S>> {
        self.out.pop_front()
    }

    /// When [`TxShard::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ---------- requests from the caller ----------

    /// A request arrived: a retransmission, an ACK or a CANCEL of a known
    /// transaction is handled here; anything else is for the script.
    pub fn receive_request(&mut self, msg: &SipMsg, now: Instant) -> Received {
        let method = msg.method();
        if method == Method::Cancel {
            return self.receive_cancel(msg, now);
        }
        let Some(key) = id::server_key(msg, method) else {
            return Received::New;
        };
        let Some(&label) = self.by_key.get(&key) else {
            return Received::New;
        };
        let Some(tx) = self.txs.get_mut(&label) else {
            return Received::New;
        };
        if method == Method::Ack {
            let code = tx.uas.last_code();
            tx.uas.on_ack(now);
            let id = tx.id;
            self.schedule(label);
            return if (200..300).contains(&code) {
                Received::AckOf2xx(id)
            } else if code >= 300 {
                Received::Absorbed
            } else {
                Received::New
            };
        }
        self.stats.retransmissions_absorbed += 1;
        if let TxAction::Send(bytes) = tx.uas.on_request_retransmission() {
            self.out.push_back(Action::Upstream {
                tx: tx.id,
                peer: tx.peer.clone(),
                bytes,
            });
        }
        Received::Absorbed
    }

    fn receive_cancel(&mut self, msg: &SipMsg, now: Instant) -> Received {
        let Some(key) = id::server_key(msg, Method::Invite) else {
            return Received::UnknownCancel;
        };
        let Some(&label) = self.by_key.get(&key) else {
            return Received::UnknownCancel;
        };
        let Some(tx) = self.txs.get_mut(&label) else {
            return Received::UnknownCancel;
        };
        let id = tx.id;
        if tx.uas.is_final() {
            // Too late to cancel; RFC 3261 §9.2 still answers the CANCEL 200.
            return Received::Canceled(id);
        }
        tx.canceled = true;
        let reasons: Vec<Bytes> = msg
            .headers_named(b"Reason")
            .map(|h| msg.header_value(h))
            .collect();
        if !reasons.is_empty() {
            tx.cancel_reason = Some(Bytes::from(reasons.join(&b", "[..])));
        }
        let reason = tx
            .cancel_reason
            .clone()
            .map_or(OwnedReason::None, OwnedReason::Copy);
        if tx.branches.iter().all(|b| b.client.is_done()) {
            // Nothing out (suspended, or no relay yet): 487 now.
            self.local_reply(label, 487, b"Request Terminated", &[], now);
        } else {
            for i in 0..self.txs[&label].branches.len() {
                self.cancel_branch(label, i, reason.clone(), now);
            }
        }
        self.schedule(label);
        Received::Canceled(id)
    }

    /// `t_newtran`: the transaction for a request the script is routing
    /// (created busy: its route is running). An INVITE gets `100 Trying`
    /// when `auto_inv_100` is on. The same request twice gives the same id.
    pub fn create(&mut self, new: NewTx<S>, index: u32, now: Instant) -> Option<TxId> {
        let key = id::server_key(&new.msg, new.msg.method())?;
        if let Some(label) = self.by_key.get(&key) {
            return self.txs.get(label).map(|t| t.id);
        }
        let label = self.fresh_label();
        let id = TxId { index, label };
        let invite = new.msg.method() == Method::Invite;
        let lifetime = if invite {
            self.cfg.max_inv_lifetime
        } else {
            self.cfg.max_noninv_lifetime
        };
        let tx = Tx {
            id,
            key: key.clone(),
            uas: ServerTx::new(invite, new.reliable).with_wait(self.cfg.wait),
            req: new.msg,
            peer: new.peer,
            to_tag: new.to_tag,
            top_via: new.top_via,
            invite,
            // One branch is the common case (a Branch is large).
            branches: Vec::with_capacity(1),
            ctx: None,
            busy: true,
            park: Park::None,
            mailbox: VecDeque::new(),
            selection_due: false,
            canceled: false,
            cancel_reason: None,
            on_failure: None,
            on_reply: None,
            picked: None,
            fr_at: None,
            timed_out: false,
            end_of_life: now + lifetime,
            fr: self.cfg.fr_timer,
            fr_inv: self.cfg.fr_inv_timer,
            holds: 0,
            scheduled: None,
            flags: 0,
            answered_by: None,
        };
        self.by_key.insert(key, label);
        self.txs.insert(label, tx);
        self.stats.created += 1;
        if invite && self.cfg.auto_inv_100 {
            self.local_reply(label, 100, b"Trying", &[], now);
        }
        Some(id)
    }

    fn fresh_label(&mut self) -> u32 {
        loop {
            let l = self.next_label;
            self.next_label = self.next_label.wrapping_add(1);
            if !self.txs.contains_key(&l) {
                return l;
            }
        }
    }

    fn label(&self, id: TxId) -> Option<u32> {
        self.txs
            .get(&id.label)
            .filter(|t| t.id.index == id.index)
            .map(|t| t.id.label)
    }

    /// The transaction a request belongs to (RFC 3261 §17.2.3), if any.
    pub fn lookup(&self, msg: &SipMsg) -> Option<TxId> {
        let key = id::server_key(msg, msg.method())?;
        self.txs.get(self.by_key.get(&key)?).map(|t| t.id)
    }

    /// Whether the transaction exists.
    pub fn contains(&self, id: TxId) -> bool {
        self.label(id).is_some()
    }

    /// The request the transaction was created for.
    pub fn request(&self, id: TxId) -> Option<&SipMsg> {
        self.txs.get(&self.label(id)?).map(|t| &t.req)
    }

    /// The request's message flags (the shell gives them when a route ends
    /// and before a reply it sends): [`Action::Completed`] carries them.
    pub fn set_flags(&mut self, id: TxId, flags: u64) {
        if let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) {
            t.flags = flags;
        }
    }

    /// `t_on_failure`: the failure route for the next failure (one run).
    pub fn set_on_failure(&mut self, id: TxId, route: Option<S::Route>) {
        if let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) {
            t.on_failure = route;
        }
    }

    /// `t_on_reply`: the reply route of branches created from now on.
    pub fn set_on_reply(&mut self, id: TxId, route: Option<S::Route>) {
        if let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) {
            t.on_reply = route;
        }
    }

    /// `t_set_fr(fr_inv, fr)`: timers of this transaction's branches from now
    /// on (`None` keeps a value); `t_reset_fr` passes the module's.
    pub fn set_fr(&mut self, id: TxId, fr_inv: Option<Duration>, fr: Option<Duration>) {
        if let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) {
            if let Some(v) = fr_inv {
                t.fr_inv = v;
            }
            if let Some(v) = fr {
                t.fr = v;
            }
        }
    }

    /// What the script reads about the transaction.
    pub fn info(&self, id: TxId, now: Instant) -> Option<TxInfo> {
        let t = self.txs.get(&self.label(id)?)?;
        let picked = t.picked.and_then(|p| t.branches.get(p as usize));
        let reply_code = match picked {
            Some(b) if !t.uas.is_final() => b.code,
            _ if t.timed_out && !t.uas.is_final() => 408,
            _ => t.uas.last_code(),
        };
        Some(TxInfo {
            reply_code,
            canceled: t.canceled,
            branches: t.branches.len() as u16,
            picked: t.picked,
            branch_timeout: picked.is_some_and(|b| b.timed_out)
                || (picked.is_none() && t.timed_out),
            branch_replied: picked.is_some_and(|b| b.replied),
            any_timeout: t.timed_out || t.branches.iter().any(|b| b.timed_out),
            any_replied: t.branches.iter().any(|b| b.replied),
            replied: t.uas.is_final(),
            expired: now >= t.end_of_life,
        })
    }

    /// The reply the picked branch received (`$T_rpl(...)`); `None` for a
    /// final made up here (a timeout).
    pub fn picked_reply(&self, id: TxId) -> Option<&SipMsg> {
        let t = self.txs.get(&self.label(id)?)?;
        let b = t.branches.get(t.picked? as usize)?;
        b.reply.as_ref().map(|(m, _)| m)
    }

    // ---------- local replies and relaying ----------

    /// `t_reply`: a reply built here. False when the transaction is gone or
    /// already has a final reply.
    pub fn reply(
        &mut self,
        id: TxId,
        code: u16,
        reason: &[u8],
        extra: &[Bytes],
        now: Instant,
    ) -> bool {
        let Some(label) = self.label(id) else {
            return false;
        };
        let sent = self.local_reply(label, code, reason, extra, now);
        self.schedule(label);
        sent
    }

    /// `t_reply` with bytes the shell built (an oversized reply replaced, a
    /// body): false when a final was already sent.
    pub fn reply_bytes(&mut self, id: TxId, code: u16, bytes: Bytes, now: Instant) -> bool {
        let Some(label) = self.label(id) else {
            return false;
        };
        let sent = self.send_upstream(label, code, bytes, ReplyOrigin::Local, now);
        if sent {
            self.stats.rpl_generated += 1;
        }
        self.schedule(label);
        sent
    }

    fn local_reply(
        &mut self,
        label: u32,
        code: u16,
        reason: &[u8],
        extra: &[Bytes],
        now: Instant,
    ) -> bool {
        let Some(t) = self.txs.get(&label) else {
            return false;
        };
        if t.uas.is_final() {
            return false;
        }
        let bytes = siphon_sip::build_reply(
            &t.req,
            code,
            reason,
            &ReplyOptions {
                to_tag: Some(&t.to_tag),
                top_via: Some(&t.top_via),
                extra,
                server: self.cfg.server.as_deref(),
                body: None,
            },
        );
        let sent = self.send_upstream(label, code, bytes, ReplyOrigin::Local, now);
        if sent {
            self.stats.rpl_generated += 1;
        }
        sent
    }

    /// Sends a reply upstream through the server transaction; a final ends
    /// the waits of the transaction and cancels what is still pending.
    fn send_upstream(
        &mut self,
        label: u32,
        code: u16,
        bytes: Bytes,
        origin: ReplyOrigin,
        now: Instant,
    ) -> bool {
        let Some(t) = self.txs.get_mut(&label) else {
            return false;
        };
        let first_final = code >= 200 && !t.uas.is_final();
        let Some(TxAction::Send(b)) = t.uas.on_reply_from(code, bytes, origin, now) else {
            return false;
        };
        let completed = (first_final && t.flags != 0).then(|| Action::Completed {
            branch_ruri: t
                .answered_by
                .or(t.picked)
                .and_then(|b| t.branches.get(b as usize))
                .and_then(|b| request_uri(&b.sent)),
            tx: t.id,
            request: t.req.clone(),
            peer: t.peer.clone(),
            code,
            reply: b.clone(),
            flags: t.flags,
            at: now,
        });
        self.out.push_back(Action::Upstream {
            tx: t.id,
            peer: t.peer.clone(),
            bytes: b,
        });
        self.out.extend(completed);
        self.stats.replies[((code / 100).clamp(1, 6) - 1) as usize] += 1;
        if code >= 200 {
            t.fr_at = None;
            let reason = if code < 300 {
                OwnedReason::Elsewhere
            } else {
                OwnedReason::None
            };
            for i in 0..t.branches.len() {
                self.cancel_branch(label, i, reason.clone(), now);
            }
        }
        true
    }

    /// `t_relay`: sends `branches` (after those already out: serial forking
    /// continues the numbering). Returns how many went out.
    pub fn relay(
        &mut self,
        id: TxId,
        branches: Vec<BranchSpec<S>>,
        now: Instant,
    ) -> Result<usize, RelayError> {
        let label = self.label(id).ok_or(RelayError::NoTransaction)?;
        let t = self.txs.get_mut(&label).ok_or(RelayError::NoTransaction)?;
        if t.canceled {
            return Err(RelayError::Canceled);
        }
        if t.uas.is_final() {
            return Err(RelayError::Replied);
        }
        if branches.is_empty() {
            return Err(RelayError::NoBranches);
        }
        // A branchless wait (suspended, t_newtran) ends: the branches wait now.
        t.fr_at = None;
        let n = branches.len();
        for spec in branches {
            self.add_branch(label, spec, now);
        }
        self.schedule(label);
        Ok(n)
    }

    /// Builds a branch (our Via with its branch parameter on top), starts its
    /// client transaction and sends it.
    fn add_branch(&mut self, label: u32, spec: BranchSpec<S>, now: Instant) {
        let t = self.txs.get_mut(&label).expect("caller checked");
        let timers = ClientTimers {
            t1: self.cfg.t1,
            t2: self.cfg.t2,
            fr: t.fr,
            fr_inv: t.fr_inv,
            lifetime: t.end_of_life.saturating_duration_since(now),
            wait: self.cfg.wait,
        };
        let idx = t.branches.len() as u16;
        let mut edits = spec.edits;
        let param = id::branch_param(t.id, self.salt, idx);
        let mut via = Vec::with_capacity(spec.sent_by.len() + param.len() + 8);
        via.extend_from_slice(&spec.sent_by);
        via.extend_from_slice(b";branch=");
        via.extend_from_slice(param.as_bytes());
        edits.push_via = Some(Bytes::from(via));
        let bytes = siphon_sip::serialize(&spec.msg, &edits);
        let client = ClientTx::new(t.invite, spec.reliable, bytes.clone(), timers, now);
        self.out.push_back(Action::Downstream {
            tx: t.id,
            branch: idx,
            dest: spec.dest.clone(),
            bytes: bytes.clone(),
        });
        let failover = (self.cfg.use_dns_failover && !spec.failover.is_empty()).then(|| {
            edits.push_via = None;
            Box::new((spec.msg, edits, spec.failover))
        });
        t.branches.push(Branch {
            client,
            dest: Some(spec.dest),
            sent: bytes,
            on_reply: t.on_reply,
            flags: spec.flags,
            failover,
            code: 0,
            reply: None,
            send_failed: false,
            reliable: spec.reliable,
            cancel_retx: None,
            timed_out: false,
            replied: false,
            cancel: CancelState::None,
        });
        self.stats.branches += 1;
    }

    /// `use_dns_failover`: branch `i` failed (no answer, unreachable, 503);
    /// its request goes to the next address of its destination as a new
    /// branch. False when there is none left (or the transaction is done).
    fn fail_over(&mut self, label: u32, i: usize, now: Instant) -> bool {
        let Some(t) = self.txs.get_mut(&label) else {
            return false;
        };
        if t.canceled || t.uas.is_final() || now >= t.end_of_life {
            return false;
        }
        let Some(kept) = t.branches.get_mut(i).and_then(|b| b.failover.take()) else {
            return false;
        };
        let (msg, edits, mut rest) = *kept;
        if rest.is_empty() {
            return false;
        }
        let next = rest.remove(0);
        let flags = t.branches[i].flags;
        self.stats.failovers += 1;
        self.add_branch(
            label,
            BranchSpec {
                msg,
                edits,
                sent_by: next.sent_by,
                dest: next.dest,
                reliable: next.reliable,
                flags,
                failover: rest,
            },
            now,
        );
        true
    }

    /// A branch could not be sent, or its connection broke before a final
    /// arrived: it ends at once as a 503 (Kamailio waits for fr_timer; a
    /// failover does not need to).
    pub fn branch_failed(&mut self, id: TxId, branch: u16, now: Instant) {
        let Some(label) = self.label(id) else { return };
        let Some(b) = self
            .txs
            .get_mut(&label)
            .and_then(|t| t.branches.get_mut(branch as usize))
        else {
            return;
        };
        if b.client.is_done() {
            return;
        }
        b.client.on_transport_error();
        b.code = 503;
        b.send_failed = !b.replied;
        self.fail_over(label, branch as usize, now);
        self.branch_ended(label, now);
        self.schedule(label);
    }

    /// A branch is being prepared outside (its destination's name is being
    /// resolved): the transaction waits for it as for a sent branch.
    pub fn hold(&mut self, id: TxId) -> bool {
        let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) else {
            return false;
        };
        if t.canceled || t.uas.is_final() {
            return false;
        }
        t.holds += 1;
        t.fr_at = None;
        true
    }

    /// The branch prepared outside is sent (`relay` was called) or could not
    /// be: `failed` is the final it stands for (Kamailio: 478 for a name that
    /// does not resolve, 477 for a send error), chosen as any other final.
    pub fn unhold(&mut self, id: TxId, failed: Option<u16>, now: Instant) {
        let Some(label) = self.label(id) else { return };
        let t = self.txs.get_mut(&label).expect("present");
        t.holds = t.holds.saturating_sub(1);
        if let Some(code) = failed {
            let timers = ClientTimers::default();
            let mut client = ClientTx::new(t.invite, true, Bytes::new(), timers, now);
            client.on_transport_error();
            t.branches.push(Branch {
                client,
                dest: None,
                sent: Bytes::new(),
                on_reply: None,
                flags: 0,
                failover: None,
                code,
                reply: None,
                send_failed: false,
                reliable: true,
                cancel_retx: None,
                timed_out: false,
                replied: false,
                cancel: CancelState::None,
            });
        }
        self.branch_ended(label, now);
        self.schedule(label);
    }

    /// The flags of a branch (`$bf` in its reply routes).
    pub fn branch_flags(&self, id: TxId, branch: u16) -> Option<u64> {
        let t = self.txs.get(&self.label(id)?)?;
        t.branches.get(branch as usize).map(|b| b.flags)
    }

    // ---------- replies from branches ----------

    /// Which shard a reply belongs to: the index our branch parameter carries.
    pub fn reply_index(msg: &SipMsg) -> Option<u32> {
        let b = msg.top_via()?.branch.as_ref()?;
        id::parse_branch(b).map(|(id, _, _)| id.index)
    }

    /// A reply arrived: handled here, or handed back when it matches no
    /// branch of ours (the shell forwards it statelessly by its Via).
    #[allow(
        clippy::result_large_err,
        reason = "the message handed back is the caller's own, moved in and out without a copy"
    )]
    pub fn receive_reply(&mut self, msg: SipMsg, now: Instant) -> Result<(), SipMsg> {
        let Some((label, branch, cancel)) = self.match_reply(&msg) else {
            return Err(msg);
        };
        self.stats.rpl_received += 1;
        if cancel {
            // The reply to our own CANCEL: it stops resending; nothing more.
            if let Some(b) = self
                .txs
                .get_mut(&label)
                .and_then(|t| t.branches.get_mut(branch as usize))
            {
                b.cancel_retx = None;
            }
            self.schedule(label);
            return Ok(());
        }
        let t = self.txs.get_mut(&label).expect("matched");
        if t.busy || !matches!(t.park, Park::None | Park::Done) {
            // A route runs for it, or it is suspended: handled when the context is back.
            t.mailbox.push_back((branch, msg));
            return Ok(());
        }
        self.process_reply(label, branch, msg, now);
        self.schedule(label);
        Ok(())
    }

    /// The transaction (label), branch and "is the reply to our CANCEL" of a reply.
    fn match_reply(&self, msg: &SipMsg) -> Option<(u32, u16, bool)> {
        let b = msg.top_via()?.branch.as_ref()?;
        let (id, salt, branch) = id::parse_branch(b)?;
        let label = self.label(id).filter(|_| salt == self.salt)?;
        let cseq = msg.cseq()?;
        let t = &self.txs[&label];
        if branch as usize >= t.branches.len() {
            return None;
        }
        match cseq.method {
            Method::Cancel if t.invite => Some((label, branch, true)),
            m if m == t.req.method() => Some((label, branch, false)),
            _ => None,
        }
    }

    fn process_reply(&mut self, label: u32, branch: u16, msg: SipMsg, now: Instant) {
        let Some(code) = msg.status() else { return };
        let t = self.txs.get_mut(&label).expect("caller checked");
        let id = t.id;
        let b = &mut t.branches[branch as usize];
        let verdict = b.client.on_reply(code, now);
        let ack_only = verdict == ReplyVerdict::AckOnly;
        match verdict {
            ReplyVerdict::Absorb => return,
            ReplyVerdict::ResendAck(a) => {
                if let Some(dest) = b.dest.clone() {
                    self.out.push_back(Action::Downstream {
                        tx: id,
                        branch,
                        dest,
                        bytes: a,
                    });
                }
                return;
            }
            ReplyVerdict::AckOnly | ReplyVerdict::AckAndPass => {
                if let Some(ack) = siphon_sip::parse(b.sent.clone())
                    .ok()
                    .and_then(|inv| siphon_sip::build_ack(&inv, &msg))
                    && let Some(dest) = b.dest.clone()
                {
                    b.client.set_ack(ack.clone());
                    self.out.push_back(Action::Downstream {
                        tx: id,
                        branch,
                        dest,
                        bytes: ack,
                    });
                }
                if ack_only {
                    return;
                }
            }
            ReplyVerdict::Pass => {}
        }
        b.replied = true;
        if code < 200
            && let CancelState::Pending(reason) = &b.cancel
        {
            // A branch canceled before it answered: the CANCEL goes now, the
            // provisional goes nowhere.
            let reason = reason.clone();
            b.cancel = CancelState::None;
            self.cancel_branch(label, branch as usize, reason, now);
            return;
        }
        if let (Some(route), Some(dest)) = (b.on_reply, b.dest.clone()) {
            let t = self.txs.get_mut(&label).expect("present");
            t.busy = true;
            let ctx = t.ctx.take();
            self.out.push_back(Action::RunOnReply {
                tx: id,
                branch,
                route,
                reply: msg,
                dest,
                ctx,
            });
            return;
        }
        self.decide(label, branch, msg, Edits::default(), now);
    }

    /// Kamailio's `t_should_relay_response`, then what follows from it.
    fn decide(&mut self, label: u32, branch: u16, msg: SipMsg, edits: Edits, now: Instant) {
        let Some(code) = msg.status() else { return };
        let t = self.txs.get_mut(&label).expect("caller checked");
        if t.uas.is_final() {
            // Only 2xx to an INVITE go on after the final (every one of them).
            if t.invite && (200..300).contains(&code) {
                let bytes = relayed(&msg, &edits);
                self.out.push_back(Action::Upstream {
                    tx: t.id,
                    peer: t.peer.clone(),
                    bytes,
                });
                self.stats.rpl_relayed += 1;
            }
            return;
        }
        if code < 200 {
            t.branches[branch as usize].code = t.branches[branch as usize].code.max(code);
            if code == 100 {
                return; // hop by hop: never relayed
            }
            let bytes = relayed(&msg, &edits);
            if self.send_upstream(label, code, bytes, ReplyOrigin::Relayed, now) {
                self.stats.rpl_relayed += 1;
            }
            return;
        }
        t.branches[branch as usize].code = code;
        if code < 300 {
            t.answered_by = Some(branch);
            let bytes = relayed(&msg, &edits);
            if self.send_upstream(label, code, bytes, ReplyOrigin::Relayed, now) {
                self.stats.rpl_relayed += 1;
            }
            return;
        }
        t.branches[branch as usize].reply = Some((msg, edits));
        if code == 503 {
            self.fail_over(label, branch as usize, now);
        }
        let t = self.txs.get_mut(&label).expect("present");
        if code >= 600 {
            // A 6xx ends the search: the others are canceled.
            for i in 0..t.branches.len() {
                if i != branch as usize {
                    self.cancel_branch(label, i, OwnedReason::Cause(code), now);
                }
            }
        }
        self.branch_ended(label, now);
    }

    /// A branch has its final: when none is pending any more, pick.
    fn branch_ended(&mut self, label: u32, now: Instant) {
        let Some(t) = self.txs.get_mut(&label) else {
            return;
        };
        if t.busy || !matches!(t.park, Park::None | Park::Done) {
            t.selection_due = true;
            return;
        }
        if t.uas.is_final() || t.pending() {
            return;
        }
        let finals = t.branches.iter().map(|b| Final {
            code: b.code,
            eligible: !b.send_failed,
        });
        t.picked = select::pick(finals).map(|i| i as u16);
        if let Some(route) = t.on_failure.take() {
            t.busy = true;
            let ctx = t.ctx.take();
            self.out.push_back(Action::RunFailure {
                tx: t.id,
                route,
                ctx,
            });
            return;
        }
        self.relay_picked(label, now);
    }

    /// Sends the picked branch's final upstream (RFC 3261 §16.7 steps 6–7).
    fn relay_picked(&mut self, label: u32, now: Instant) {
        let Some(t) = self.txs.get(&label) else {
            return;
        };
        if t.uas.is_final() {
            return;
        }
        let decision = self.picked_final(t);
        match decision {
            Upstream::Local(code, reason, extra) => {
                self.local_reply(label, code, reason, &extra, now);
            }
            Upstream::Relay(code, bytes) => {
                if self.send_upstream(label, code, bytes, ReplyOrigin::Relayed, now) {
                    self.stats.rpl_relayed += 1;
                }
            }
        }
    }

    /// What goes upstream for the picked branch: the received final (our Via
    /// off), or one built here — 487 once canceled, 500 for a 503, one reply
    /// with every challenge when several branches asked for credentials, the
    /// timeout's 408.
    fn picked_final(&self, t: &Tx<S>) -> Upstream {
        let Some(b) = t.picked.and_then(|p| t.branches.get(p as usize)) else {
            return match (t.timed_out, t.canceled) {
                (true, true) => Upstream::Local(487, b"Request Terminated", vec![]),
                (true, false) => Upstream::Local(408, b"Request Timeout", vec![]),
                _ => Upstream::Local(500, b"Server Internal Error", vec![]),
            };
        };
        let code = b.code;
        let remap = code == 503 && self.cfg.remap_503_500;
        let Some((m, edits)) = &b.reply else {
            return match code {
                _ if t.canceled => Upstream::Local(487, b"Request Terminated", vec![]),
                503 if remap => Upstream::Local(500, b"Server Internal Error", vec![]),
                _ => Upstream::Local(code, local_reason(code), vec![]),
            };
        };
        if remap {
            return Upstream::Local(500, b"Server Internal Error", vec![]);
        }
        let challenged = |b: &&Branch<S>| b.reply.is_some() && matches!(b.code, 401 | 407);
        if matches!(code, 401 | 407)
            && self.cfg.aggregate_challenges
            && t.branches.iter().filter(challenged).count() > 1
        {
            let mut extra = Vec::new();
            for (m, _) in t
                .branches
                .iter()
                .filter(challenged)
                .filter_map(|b| b.reply.as_ref())
            {
                for h in m.headers.iter() {
                    let name = m.get(h.name_rng);
                    if name.eq_ignore_ascii_case(b"WWW-Authenticate")
                        || name.eq_ignore_ascii_case(b"Proxy-Authenticate")
                    {
                        extra.push(m.slice(h.line));
                    }
                }
            }
            let reason: &'static [u8] = if code == 401 {
                b"Unauthorized"
            } else {
                b"Proxy Authentication Required"
            };
            return Upstream::Local(code, reason, extra);
        }
        Upstream::Relay(code, relayed(m, edits))
    }

    /// CANCELs branch `i` if it has no final: at once when it sent a
    /// provisional, else when it does (Kamailio's `cancel_b_method` 1).
    fn cancel_branch(&mut self, label: u32, i: usize, reason: OwnedReason, now: Instant) {
        let Some(t) = self.txs.get_mut(&label) else {
            return;
        };
        let id = t.id;
        let Some(b) = t.branches.get_mut(i) else {
            return;
        };
        if b.client.is_done() || b.cancel != CancelState::None {
            return;
        }
        if !b.client.is_proceeding() {
            b.cancel = CancelState::Pending(reason);
            return;
        }
        let Some(cancel) = siphon_sip::parse(b.sent.clone())
            .ok()
            .and_then(|inv| siphon_sip::build_cancel(&inv, reason.as_reason()))
        else {
            return;
        };
        let Some(dest) = b.dest.clone() else { return };
        b.cancel = CancelState::Sent;
        b.client.on_cancel_sent(now);
        b.cancel_retx = CancelRetx::over_udp(b.reliable, &cancel, now, &self.cfg);
        self.stats.cancels_sent += 1;
        self.out.push_back(Action::Downstream {
            tx: id,
            branch: i as u16,
            dest,
            bytes: cancel,
        });
    }

    // ---------- route runs ----------

    /// Gives the script context back after a route ran for the transaction,
    /// and decides what follows — the one place that does:
    /// - after `request_route` or a resumed route: branches out → they are
    ///   waited for; a final sent → done; neither → fr_timer (request) or a
    ///   500 (a resumed route that answered nothing);
    /// - after a failure route: a reply or new branches, else the picked
    ///   final goes upstream;
    /// - after an `onreply_route`: the reply goes on (or is dropped).
    ///
    /// Replies that waited meanwhile are then handled in order.
    pub fn route_done(
        &mut self,
        id: TxId,
        ctx: S::Ctx,
        kind: RouteKind,
        reply_edit: Option<(SipMsg, ReplyEdit)>,
        now: Instant,
    ) {
        let Some(label) = self.label(id) else {
            self.out.push_back(Action::Ended {
                tx: id,
                ctx: Some(ctx),
            });
            return;
        };
        let t = self.txs.get_mut(&label).expect("present");
        t.busy = false;
        t.ctx = Some(ctx);
        if matches!(t.park, Park::Done) {
            t.park = Park::None;
        }
        let pending = t.pending();
        match kind {
            RouteKind::OnReply { branch } => {
                if let Some((msg, edit)) = reply_edit {
                    let provisional = msg.status().is_some_and(|c| c < 200);
                    if !(edit.drop && provisional) {
                        self.decide(label, branch, msg, edit.edits, now);
                    }
                }
            }
            RouteKind::Request => {
                if !t.uas.is_final() && !pending && t.branches.is_empty() && t.fr_at.is_none() {
                    // Nothing sent and nothing answered: fr_timer bounds the wait.
                    t.fr_at = Some((now + t.fr).min(t.end_of_life));
                }
            }
            RouteKind::Resumed | RouteKind::Failure => {
                if !t.uas.is_final() && !pending {
                    if t.branches.is_empty() && kind == RouteKind::Resumed {
                        self.local_reply(label, 500, b"Server Internal Error", &[], now);
                    } else {
                        // Nothing new went out: the best final so far goes up
                        // (Kamailio answers 500 after a resumed failure route; we
                        // relay what the callee said).
                        let t = self.txs.get_mut(&label).expect("present");
                        if t.picked.is_none() {
                            let finals = t.branches.iter().map(|b| Final {
                                code: b.code,
                                eligible: !b.send_failed,
                            });
                            t.picked = select::pick(finals).map(|i| i as u16);
                        }
                        self.relay_picked(label, now);
                    }
                }
            }
        }
        self.drain(label, now);
        self.schedule(label);
    }

    /// Handles what waited while a route ran, until another route takes the context.
    fn drain(&mut self, label: u32, now: Instant) {
        loop {
            let Some(t) = self.txs.get_mut(&label) else {
                return;
            };
            if t.busy || !matches!(t.park, Park::None | Park::Done) {
                return;
            }
            if let Some((branch, msg)) = t.mailbox.pop_front() {
                self.process_reply(label, branch, msg, now);
                continue;
            }
            if std::mem::take(&mut t.selection_due) {
                self.branch_ended(label, now);
                continue;
            }
            return;
        }
    }

    // ---------- suspension ----------

    /// A module suspends the transaction: its route is ending and the
    /// module's I/O starts. An INVITE gets `100 Trying` if nothing was sent.
    /// A resume that arrives before [`TxShard::finish_suspend`] waits.
    pub fn begin_suspend(&mut self, id: TxId, now: Instant) -> bool {
        let Some(label) = self.label(id) else {
            return false;
        };
        let t = self.txs.get_mut(&label).expect("present");
        if t.uas.is_final() {
            return false;
        }
        t.park = Park::Suspending(None);
        if t.invite && t.uas.last_code() == 0 {
            self.local_reply(label, 100, b"Trying", &[], now);
        }
        true
    }

    /// The suspension is set up: the context is parked until a resume or
    /// fr_timer — unless the answer came already, which is handed back to
    /// run the resumed route now.
    pub fn finish_suspend(
        &mut self,
        id: TxId,
        ctx: S::Ctx,
        now: Instant,
    ) -> Option<(S::Ctx, S::Resume)> {
        let Some(label) = self.label(id) else {
            self.out.push_back(Action::Ended {
                tx: id,
                ctx: Some(ctx),
            });
            return None;
        };
        let t = self.txs.get_mut(&label).expect("present");
        match std::mem::replace(&mut t.park, Park::None) {
            Park::Suspending(Some(r)) => {
                t.park = Park::Done;
                t.busy = true;
                Some((ctx, r))
            }
            _ => {
                t.park = Park::Parked;
                t.busy = false;
                t.ctx = Some(ctx);
                if t.fr_at.is_none() && !t.pending() {
                    t.fr_at = Some((now + t.fr).min(t.end_of_life));
                }
                self.schedule(label);
                None
            }
        }
    }

    /// A module answered, or `t_continue` was called: exactly once.
    pub fn resume(&mut self, id: TxId, r: S::Resume) -> Resumed<S> {
        let Some(t) = self.label(id).and_then(|l| self.txs.get_mut(&l)) else {
            self.stats.late_resumes += 1;
            return Resumed::Late(r);
        };
        match &mut t.park {
            Park::Suspending(slot @ None) => {
                *slot = Some(r);
                Resumed::Queued
            }
            Park::Parked => match t.ctx.take() {
                Some(ctx) => {
                    t.park = Park::Done;
                    t.busy = true;
                    t.fr_at = None;
                    Resumed::Run(ctx, r)
                }
                None => {
                    self.stats.late_resumes += 1;
                    Resumed::Late(r)
                }
            },
            _ => {
                self.stats.late_resumes += 1;
                Resumed::Late(r)
            }
        }
    }

    /// How many transactions wait suspended now.
    pub fn suspended(&self) -> usize {
        self.txs
            .values()
            .filter(|t| matches!(t.park, Park::Parked | Park::Suspending(_)))
            .count()
    }

    /// Whether the transaction is suspended, waiting for a resume.
    pub fn is_suspended(&self, id: TxId) -> bool {
        self.label(id)
            .and_then(|l| self.txs.get(&l))
            .is_some_and(|t| matches!(t.park, Park::Parked | Park::Suspending(_)))
    }

    /// `t_release`: forget the transaction now.
    pub fn release(&mut self, id: TxId) {
        if let Some(label) = self.label(id) {
            self.remove(label);
        }
    }

    // ---------- timers ----------

    /// Runs everything due at `now`: retransmissions, branch timeouts (408,
    /// CANCEL after a provisional), a branchless transaction's fr_timer
    /// (failure route or 408), and the end of completed transactions.
    pub fn on_timer(&mut self, now: Instant) {
        while let Some(&(at, label)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(t) = self.txs.get_mut(&label) else {
                continue;
            };
            if t.scheduled != Some(at) {
                continue;
            }
            t.scheduled = None;
            self.tick(label, now);
            if self.txs.contains_key(&label) {
                self.schedule(label);
            }
        }
    }

    fn tick(&mut self, label: u32, now: Instant) {
        let t = self.txs.get_mut(&label).expect("present");
        let id = t.id;
        if t.uas.next_deadline().is_some_and(|d| d <= now) {
            match t.uas.on_timer(now) {
                TxAction::Send(bytes) => self.out.push_back(Action::Upstream {
                    tx: id,
                    peer: t.peer.clone(),
                    bytes,
                }),
                TxAction::Terminate | TxAction::None => {}
            }
        }
        let mut ended = false;
        let mut failovers = Vec::new();
        for i in 0..t.branches.len() {
            let b = &mut t.branches[i];
            if b.client.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            match b.client.on_timer(now) {
                ClientAction::Retransmit(bytes) => {
                    if let Some(dest) = b.dest.clone() {
                        self.out.push_back(Action::Downstream {
                            tx: id,
                            branch: i as u16,
                            dest,
                            bytes,
                        });
                    }
                }
                ClientAction::TimedOut { cancel } => {
                    self.stats.branch_timeouts += 1;
                    b.timed_out = true;
                    b.code = 408;
                    b.cancel = CancelState::None;
                    if !b.replied && b.failover.is_some() {
                        failovers.push(i);
                    }
                    if cancel && let Ok(inv) = siphon_sip::parse(b.sent.clone()) {
                        if let (Some(c), Some(dest)) = (
                            siphon_sip::build_cancel(&inv, CancelReason::None),
                            b.dest.clone(),
                        ) {
                            b.cancel_retx = CancelRetx::over_udp(b.reliable, &c, now, &self.cfg);
                            self.stats.cancels_sent += 1;
                            self.out.push_back(Action::Downstream {
                                tx: id,
                                branch: i as u16,
                                dest,
                                bytes: c,
                            });
                        }
                        b.cancel = CancelState::Sent;
                    }
                    ended = true;
                }
                ClientAction::Terminate | ClientAction::None => {}
            }
        }
        let t = self.txs.get_mut(&label).expect("present");
        for (i, b) in t.branches.iter_mut().enumerate() {
            let Some(r) = b.cancel_retx.as_mut() else {
                continue;
            };
            if now >= r.until
                || b.client.state() == ClientState::Terminated
                || b.replied && b.code >= 200
            {
                b.cancel_retx = None;
                continue;
            }
            if now < r.at {
                continue;
            }
            r.interval = (r.interval * 2).min(self.cfg.t2);
            r.at = now + r.interval;
            if let Some(dest) = b.dest.clone() {
                self.out.push_back(Action::Downstream {
                    tx: t.id,
                    branch: i as u16,
                    dest,
                    bytes: r.bytes.clone(),
                });
            }
        }
        for i in failovers {
            self.fail_over(label, i, now);
        }
        if ended {
            self.branch_ended(label, now);
        }
        let t = self.txs.get_mut(&label).expect("present");
        if t.fr_at.is_some_and(|d| d <= now) && !t.uas.is_final() && !t.busy {
            t.fr_at = None;
            t.timed_out = true;
            self.stats.tx_timeouts += 1;
            if matches!(t.park, Park::Parked) {
                t.park = Park::Done;
            }
            t.picked = None;
            if let Some(route) = t.on_failure.take() {
                t.busy = true;
                let ctx = t.ctx.take();
                self.out
                    .push_back(Action::RunFailure { tx: id, route, ctx });
            } else {
                self.relay_picked(label, now);
            }
        }
        let t = self.txs.get(&label).expect("present");
        let over = t.uas.state() == TxState::Terminated
            && !t.busy
            && t.branches.iter().all(|b| {
                b.client.state() == ClientState::Terminated || b.client.next_deadline().is_none()
            });
        if over {
            self.remove(label);
        }
    }

    fn remove(&mut self, label: u32) {
        if let Some(mut t) = self.txs.remove(&label) {
            self.by_key.remove(&t.key);
            if let Some(at) = t.scheduled {
                self.timers.remove(&(at, label));
            }
            self.stats.freed += 1;
            self.out.push_back(Action::Ended {
                tx: t.id,
                ctx: t.ctx.take(),
            });
        }
    }

    /// Keeps the transaction's entry in the timer set at its next deadline.
    fn schedule(&mut self, label: u32) {
        let Some(t) = self.txs.get_mut(&label) else {
            return;
        };
        let next = [t.uas.next_deadline(), t.fr_at]
            .into_iter()
            .chain(t.branches.iter().map(|b| b.client.next_deadline()))
            .chain(
                t.branches
                    .iter()
                    .map(|b| b.cancel_retx.as_ref().map(|r| r.at)),
            )
            .flatten()
            .min();
        if next == t.scheduled {
            return;
        }
        if let Some(old) = t.scheduled {
            self.timers.remove(&(old, label));
        }
        t.scheduled = next;
        if let Some(at) = next {
            self.timers.insert((at, label));
        }
    }
}

/// The reason phrase of a final made up here.
fn local_reason(code: u16) -> &'static [u8] {
    match code {
        408 => b"Request Timeout",
        // Kamailio's codes for a branch that could not go out (its wording).
        477 => b"Unfortunately error on sending to next hop occurred",
        478 => b"Unresolvable destination",
        479 => b"Bad URI",
        487 => b"Request Terminated",
        503 => b"Service Unavailable",
        _ => b"Server Internal Error",
    }
}

/// What [`TxShard::picked_final`] decided.
enum Upstream {
    /// Build a reply here: code, reason, extra header lines.
    Local(u16, &'static [u8], Vec<Bytes>),
    /// Relay this received reply.
    Relay(u16, Bytes),
}

/// A received reply as relayed: our Via off, the reply route's edits on.
/// The request URI of a request as sent (its request line's second word).
fn request_uri(sent: &Bytes) -> Option<Bytes> {
    let line_end = sent.iter().position(|&c| c == b'\r' || c == b'\n')?;
    let mut words = sent[..line_end].split(|&c| c == b' ');
    words.next()?;
    let uri = words.next()?;
    let start = uri.as_ptr() as usize - sent.as_ptr() as usize;
    Some(sent.slice(start..start + uri.len()))
}

fn relayed(msg: &SipMsg, edits: &Edits) -> Bytes {
    let mut e = edits.clone();
    e.pop_via = true;
    siphon_sip::serialize(msg, &e)
}
