//! Client transactions (RFC 3261 §17.1, RFC 6026) as a sans-io state
//! machine, with Kamailio tm's timers.
//!
//! One `ClientTx` is one branch of a proxied request: the request bytes as
//! sent, retransmitted over unreliable transports, and the timers that end
//! the wait. As [`crate::ServerTx`], no clock is read here: the caller feeds
//! replies and timer ticks with `now` and performs what comes back;
//! [`ClientTx::next_deadline`] says when to tick.
//!
//! Kamailio's timers replace RFC 3261's timer B/F: `fr_timer` bounds the wait
//! for a first reply, `fr_inv_timer` the wait for a final reply to an INVITE
//! once a provisional arrived, and `max_inv_lifetime`/`max_noninv_lifetime`
//! the whole life of the branch. Retransmission intervals start at T1 and
//! double up to T2 for INVITE too, as Kamailio's `retr_timer1`/`retr_timer2`
//! do (RFC 3261 does not cap timer A, but timer B ends it before it matters).

use bytes::Bytes;
use std::time::{Duration, Instant};

/// The timers of one client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimers {
    /// First retransmission interval (RFC 3261 T1, Kamailio `retr_timer1`).
    pub t1: Duration,
    /// Largest retransmission interval (RFC 3261 T2, Kamailio `retr_timer2`).
    pub t2: Duration,
    /// Kamailio `fr_timer`: how long to wait for a reply before the branch times out.
    pub fr: Duration,
    /// Kamailio `fr_inv_timer`: how long an INVITE waits for a final reply once
    /// a provisional arrived (restarted by each provisional).
    pub fr_inv: Duration,
    /// Kamailio `max_inv_lifetime` / `max_noninv_lifetime`: the longest the
    /// branch waits for a final reply, whatever provisionals say.
    pub lifetime: Duration,
    /// How long a completed transaction absorbs retransmitted finals (RFC 3261
    /// timers D and K, Kamailio `wait_timer`); zero over reliable transports
    /// except for INVITE 2xx, which stays to relay retransmitted 2xx.
    pub wait: Duration,
}

impl Default for ClientTimers {
    /// Kamailio 5.6's defaults for an INVITE.
    fn default() -> Self {
        ClientTimers {
            t1: crate::tx::T1,
            t2: crate::tx::T2,
            fr: Duration::from_secs(30),
            fr_inv: Duration::from_secs(120),
            lifetime: Duration::from_secs(180),
            wait: Duration::from_secs(5),
        }
    }
}

/// Where a client transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Sent, nothing heard (INVITE: Calling; non-INVITE: Trying).
    Calling,
    /// A provisional reply arrived.
    Proceeding,
    /// A final reply arrived (an INVITE's non-2xx was ACKed), or the branch
    /// timed out or failed; retransmitted finals are absorbed until `wait`.
    Completed,
    /// INVITE: a 2xx arrived (RFC 6026); later 2xx are passed on too.
    Accepted,
    /// Over: remove it.
    Terminated,
}

/// What to do with a reply that matched this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// Hand it to the proxy's reply processing.
    Pass,
    /// A first non-2xx final to an INVITE: build the hop-by-hop ACK from it,
    /// send it, give it to [`ClientTx::set_ack`], then hand the reply on.
    AckAndPass,
    /// A non-2xx final to an INVITE whose branch already ended (timed out, or
    /// canceled): build and send the ACK, do not hand the reply on.
    AckOnly,
    /// A retransmitted non-2xx final to an INVITE: send this ACK again.
    ResendAck(Bytes),
    /// Nothing to do: a retransmission, or a reply after the end.
    Absorb,
}

/// What the caller must do after a timer tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing.
    None,
    /// Send the request again (unreliable transports only).
    Retransmit(Bytes),
    /// No final reply in time: the branch ends with a local 408. `cancel`
    /// says a provisional arrived, so a CANCEL must go to this branch.
    TimedOut {
        /// A provisional arrived: CANCEL the branch.
        cancel: bool,
    },
    /// The transaction is over: remove it.
    Terminate,
}

/// One client transaction's protocol state.
#[derive(Debug, Clone)]
pub struct ClientTx {
    invite: bool,
    reliable: bool,
    state: ClientState,
    timers: ClientTimers,
    request: Bytes,
    ack: Option<Bytes>,
    last_code: u16,
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// When the wait for a (final) reply ends: fr, then fr_inv, capped by `lifetime_at`.
    reply_by: Option<Instant>,
    lifetime_at: Instant,
    end_at: Option<Instant>,
}

impl ClientTx {
    /// A transaction for `request`, sent at `now` (the caller sends it).
    pub fn new(
        invite: bool,
        reliable: bool,
        request: Bytes,
        timers: ClientTimers,
        now: Instant,
    ) -> Self {
        let lifetime_at = now + timers.lifetime;
        ClientTx {
            invite,
            reliable,
            state: ClientState::Calling,
            timers,
            request,
            ack: None,
            last_code: 0,
            retransmit_at: (!reliable).then(|| now + timers.t1),
            interval: timers.t1,
            reply_by: Some((now + timers.fr).min(lifetime_at)),
            lifetime_at,
            end_at: None,
        }
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The highest-priority reply code seen: the final one, else the last provisional (0: none).
    pub fn last_code(&self) -> u16 {
        self.last_code
    }

    /// The request as sent.
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Whether a provisional (and no final) reply arrived: a CANCEL can go to this branch.
    pub fn is_proceeding(&self) -> bool {
        self.state == ClientState::Proceeding
    }

    /// Whether the branch is over for the proxy (final reply, timeout or failure).
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            ClientState::Completed | ClientState::Accepted | ClientState::Terminated
        )
    }

    /// The ACK built for this INVITE's non-2xx final: resent when the final is.
    pub fn set_ack(&mut self, ack: Bytes) {
        self.ack = Some(ack);
    }

    /// A reply with `code` matched this transaction at `now`.
    pub fn on_reply(&mut self, code: u16, now: Instant) -> ReplyVerdict {
        match self.state {
            ClientState::Calling | ClientState::Proceeding if code < 200 => {
                self.state = ClientState::Proceeding;
                self.last_code = code;
                if self.invite {
                    // A provisional stops INVITE retransmissions and starts fr_inv_timer.
                    self.retransmit_at = None;
                    self.reply_by = Some((now + self.timers.fr_inv).min(self.lifetime_at));
                } else if !self.reliable {
                    // Timer E goes on at T2 (RFC 3261 §17.1.2.2).
                    self.retransmit_at = Some(now + self.timers.t2);
                }
                ReplyVerdict::Pass
            }
            ClientState::Calling | ClientState::Proceeding => {
                self.last_code = code;
                self.retransmit_at = None;
                self.reply_by = None;
                if self.invite && code < 300 {
                    self.state = ClientState::Accepted;
                    // RFC 6026 timer M (64·T1) in spirit; Kamailio keeps the
                    // branch wt_timer and relays later 2xx statelessly.
                    self.end_at = Some(now + self.timers.wait);
                    return ReplyVerdict::Pass;
                }
                self.state = ClientState::Completed;
                self.end_at = Some(now + self.wait());
                if self.invite {
                    ReplyVerdict::AckAndPass
                } else {
                    ReplyVerdict::Pass
                }
            }
            ClientState::Accepted if (200..300).contains(&code) => ReplyVerdict::Pass,
            ClientState::Completed | ClientState::Accepted | ClientState::Terminated
                if !self.invite || code < 300 =>
            {
                // A 2xx after the branch ended still goes on (RFC 3261 §16.7: a
                // proxy forwards every 2xx); other retransmissions are absorbed.
                if self.invite && (200..300).contains(&code) {
                    self.state = ClientState::Accepted;
                    self.end_at = Some(now + self.timers.wait);
                    ReplyVerdict::Pass
                } else {
                    ReplyVerdict::Absorb
                }
            }
            // An INVITE's non-2xx final after the end: ACK it (again).
            _ => match (&self.ack, self.last_code >= 300) {
                (Some(a), true) => ReplyVerdict::ResendAck(a.clone()),
                _ => {
                    // Timed out or failed before any final: this final is new.
                    if self.last_code < 200 {
                        self.last_code = code;
                    }
                    ReplyVerdict::AckOnly
                }
            },
        }
    }

    /// The branch could not be sent (connection refused or broken): it ends at
    /// once, as a local 503 for the reply selection.
    pub fn on_transport_error(&mut self) {
        self.state = ClientState::Terminated;
        self.retransmit_at = None;
        self.reply_by = None;
        self.end_at = None;
    }

    /// A CANCEL went to this branch (the caller canceled, or another branch
    /// won): keep waiting for the 487 — but no longer than `fr_timer`, as
    /// Kamailio does, then end it without a CANCEL of its own.
    pub fn on_cancel_sent(&mut self, now: Instant) {
        if !self.is_done() {
            self.reply_by = Some((now + self.timers.fr).min(self.lifetime_at));
        }
    }

    /// When [`ClientTx::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.reply_by, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the timers due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> ClientAction {
        if self.end_at.is_some_and(|e| now >= e) {
            self.state = ClientState::Terminated;
            self.end_at = None;
            return ClientAction::Terminate;
        }
        if self.reply_by.is_some_and(|d| now >= d) {
            let cancel = self.invite && self.state == ClientState::Proceeding;
            self.state = ClientState::Completed;
            self.retransmit_at = None;
            self.reply_by = None;
            // Stay to ACK the 487 a CANCEL brings (or a late final).
            self.end_at = Some(
                now + self.wait().max(if cancel {
                    self.timers.t1 * 64
                } else {
                    Duration::ZERO
                }),
            );
            return ClientAction::TimedOut { cancel };
        }
        if let Some(at) = self.retransmit_at
            && now >= at
        {
            self.interval = if self.state == ClientState::Proceeding {
                self.timers.t2
            } else {
                (self.interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(now + self.interval);
            return ClientAction::Retransmit(self.request.clone());
        }
        ClientAction::None
    }

    fn wait(&self) -> Duration {
        if self.reliable {
            Duration::ZERO
        } else {
            self.timers.wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tx(invite: bool, reliable: bool, t0: Instant) -> ClientTx {
        ClientTx::new(
            invite,
            reliable,
            Bytes::from_static(b"REQ"),
            ClientTimers {
                fr: ms(10_000),
                fr_inv: ms(20_000),
                lifetime: ms(60_000),
                ..Default::default()
            },
            t0,
        )
    }

    /// Ticks every deadline up to `until`; returns (ms since t0, action) for each non-None.
    fn run(tx: &mut ClientTx, t0: Instant, until: Duration) -> Vec<(u128, ClientAction)> {
        let mut out = Vec::new();
        while let Some(d) = tx.next_deadline() {
            if d > t0 + until {
                break;
            }
            match tx.on_timer(d) {
                ClientAction::None => {}
                a => {
                    let end = a == ClientAction::Terminate;
                    out.push(((d - t0).as_millis(), a));
                    if end {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn invite_over_udp_retransmits_doubling_to_t2_then_times_out_at_fr_timer() {
        let t0 = Instant::now();
        let mut t = tx(true, false, t0);
        let got = run(&mut t, t0, ms(10_000));
        let at: Vec<u128> = got
            .iter()
            .filter(|(_, a)| matches!(a, ClientAction::Retransmit(_)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(at, [500, 1500, 3500, 7500]);
        assert_eq!(
            got.last(),
            Some(&(10_000, ClientAction::TimedOut { cancel: false })),
            "no provisional: nothing to cancel"
        );
        assert_eq!(t.state(), ClientState::Completed);
        // A late 486 is ACKed, not passed on; a late 200 is passed on.
        assert_eq!(t.on_reply(486, t0 + ms(10_100)), ReplyVerdict::AckOnly);
        assert_eq!(t.on_reply(200, t0 + ms(10_200)), ReplyVerdict::Pass);
        assert_eq!(t.state(), ClientState::Accepted);
    }

    #[test]
    fn provisional_stops_invite_retransmissions_and_starts_fr_inv() {
        let t0 = Instant::now();
        let mut t = tx(true, false, t0);
        assert_eq!(
            t.on_timer(t0 + ms(500)),
            ClientAction::Retransmit(Bytes::from_static(b"REQ"))
        );
        assert_eq!(t.on_reply(180, t0 + ms(600)), ReplyVerdict::Pass);
        assert!(t.is_proceeding());
        let got = run(&mut t, t0, ms(30_000));
        assert_eq!(got, [(20_600, ClientAction::TimedOut { cancel: true })]);
        // The 487 the CANCEL brings is ACKed and absorbed.
        assert_eq!(t.on_reply(487, t0 + ms(20_700)), ReplyVerdict::AckOnly);
    }

    #[test]
    fn each_provisional_restarts_fr_inv_within_the_lifetime() {
        let t0 = Instant::now();
        let mut t = tx(true, true, t0);
        for s in [1u64, 19, 37, 55] {
            assert_eq!(
                t.on_reply(183, t0 + Duration::from_secs(s)),
                ReplyVerdict::Pass
            );
        }
        // fr_inv would end at 75 s; max_inv_lifetime (60 s) ends it first.
        assert_eq!(t.next_deadline(), Some(t0 + ms(60_000)));
        assert_eq!(
            t.on_timer(t0 + ms(60_000)),
            ClientAction::TimedOut { cancel: true }
        );
    }

    #[test]
    fn non_2xx_final_is_acked_once_and_the_ack_resent_for_retransmissions() {
        let t0 = Instant::now();
        let mut t = tx(true, false, t0);
        assert_eq!(t.on_reply(100, t0 + ms(50)), ReplyVerdict::Pass);
        assert_eq!(t.on_reply(486, t0 + ms(900)), ReplyVerdict::AckAndPass);
        t.set_ack(Bytes::from_static(b"ACK"));
        assert_eq!(
            t.on_reply(486, t0 + ms(1_400)),
            ReplyVerdict::ResendAck(Bytes::from_static(b"ACK"))
        );
        assert_eq!(t.last_code(), 486);
        // Timer D (Kamailio's wait_timer over UDP) ends it.
        assert_eq!(
            run(&mut t, t0, ms(60_000)),
            [(5_900, ClientAction::Terminate)]
        );
    }

    #[test]
    fn invite_2xx_and_its_retransmissions_are_passed_on() {
        let t0 = Instant::now();
        let mut t = tx(true, false, t0);
        assert_eq!(t.on_reply(200, t0 + ms(100)), ReplyVerdict::Pass);
        assert_eq!(t.state(), ClientState::Accepted);
        assert_eq!(t.on_reply(200, t0 + ms(600)), ReplyVerdict::Pass);
        assert_eq!(t.on_reply(180, t0 + ms(700)), ReplyVerdict::Absorb);
        assert_eq!(
            run(&mut t, t0, ms(60_000)),
            [(5_100, ClientAction::Terminate)],
            "wt_timer after the 2xx"
        );
    }

    #[test]
    fn non_invite_retransmits_at_t2_after_a_provisional_and_ends_after_timer_k() {
        let t0 = Instant::now();
        let mut t = tx(false, false, t0);
        assert!(matches!(
            t.on_timer(t0 + ms(500)),
            ClientAction::Retransmit(_)
        ));
        assert_eq!(t.on_reply(100, t0 + ms(700)), ReplyVerdict::Pass);
        assert_eq!(t.next_deadline(), Some(t0 + ms(4_700)));
        assert!(matches!(
            t.on_timer(t0 + ms(4_700)),
            ClientAction::Retransmit(_)
        ));
        assert_eq!(t.on_reply(200, t0 + ms(5_000)), ReplyVerdict::Pass);
        assert_eq!(t.on_reply(200, t0 + ms(5_100)), ReplyVerdict::Absorb);
        assert_eq!(
            run(&mut t, t0, ms(60_000)),
            [(10_000, ClientAction::Terminate)]
        );
    }

    #[test]
    fn non_invite_times_out_without_cancel() {
        let t0 = Instant::now();
        let mut t = tx(false, true, t0);
        assert_eq!(t.on_reply(100, t0 + ms(10)), ReplyVerdict::Pass);
        assert_eq!(
            run(&mut t, t0, ms(60_000)),
            [
                (10_000, ClientAction::TimedOut { cancel: false }),
                (10_000, ClientAction::Terminate)
            ]
        );
    }

    #[test]
    fn reliable_transports_never_retransmit_and_a_transport_error_ends_at_once() {
        let t0 = Instant::now();
        let mut t = tx(true, true, t0);
        assert_eq!(t.next_deadline(), Some(t0 + ms(10_000)));
        t.on_transport_error();
        assert!(t.is_done());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_canceled_branch_waits_for_its_487_no_longer_than_fr_timer() {
        let t0 = Instant::now();
        let mut t = tx(true, true, t0);
        t.on_reply(180, t0 + ms(100));
        t.on_cancel_sent(t0 + ms(1_000));
        assert_eq!(t.next_deadline(), Some(t0 + ms(11_000)));
        assert_eq!(t.on_reply(487, t0 + ms(1_050)), ReplyVerdict::AckAndPass);
    }
}
