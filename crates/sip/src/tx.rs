//! Server transactions (RFC 3261 §17.2, RFC 6026) as a sans-io state machine.
//!
//! The caller feeds events with the current time and sends what comes back;
//! [`ServerTx::next_deadline`] says when to call [`ServerTx::on_timer`]. No
//! clock is read here, so timers are tested with a simulated one.

use bytes::Bytes;
use std::time::{Duration, Instant};

/// A transaction's identity: `$T(id_index)` and `$T(id_label)`. Here, below
/// the transaction table and the module API, so both can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId {
    /// Bucket (0..65535): Call-ID and CSeq number hashed, as Kamailio does, so
    /// an INVITE, its CANCEL and its ACK share it; it picks the shard.
    pub index: u32,
    /// Unique within the shard.
    pub label: u32,
}

/// RFC 3261 timer T1 (RTT estimate).
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 timer T2 (maximum retransmit interval).
pub const T2: Duration = Duration::from_secs(4);
/// RFC 3261 timer T4 (how long a message stays in the network).
pub const T4: Duration = Duration::from_secs(5);

/// Where a server transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// No final reply yet (INVITE: Proceeding; non-INVITE: Trying/Proceeding).
    Proceeding,
    /// A final non-2xx (or any final for non-INVITE) was sent.
    Completed,
    /// INVITE: the ACK to a non-2xx arrived.
    Confirmed,
    /// INVITE: a 2xx was sent (RFC 6026), retransmitted until ACK.
    Accepted,
    /// Done; remove it.
    Terminated,
}

/// Who made a reply a server transaction sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOrigin {
    /// Built here (`t_reply`, a timeout's 408, …).
    Local,
    /// Received on a branch and relayed.
    Relayed,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAction {
    /// Nothing.
    None,
    /// Send these bytes to the transaction's peer.
    Send(Bytes),
    /// The transaction is over: remove it.
    Terminate,
}

/// One server transaction's protocol state.
#[derive(Debug, Clone)]
pub struct ServerTx {
    invite: bool,
    reliable: bool,
    state: TxState,
    last_reply: Option<Bytes>,
    last_code: u16,
    retransmit_at: Option<Instant>,
    interval: Duration,
    end_at: Option<Instant>,
    /// How long a completed transaction absorbs retransmissions: RFC 3261's
    /// timer J (64·T1) unless set (Kamailio's `wt_timer`, 5 s).
    wait: Option<Duration>,
}

impl ServerTx {
    /// A new transaction for a request (INVITE or not) over a reliable transport or not.
    pub fn new(invite: bool, reliable: bool) -> Self {
        ServerTx {
            invite,
            reliable,
            state: TxState::Proceeding,
            last_reply: None,
            last_code: 0,
            retransmit_at: None,
            interval: T1,
            end_at: None,
            wait: None,
        }
    }

    /// Kamailio's `wt_timer`: a completed transaction (a non-INVITE's final,
    /// a relayed 2xx, an INVITE after its ACK) is kept this long instead of
    /// RFC 3261's 64·T1 / T4.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }
    /// The state.
    pub fn state(&self) -> TxState {
        self.state
    }
    /// The last reply code sent (0 if none).
    pub fn last_code(&self) -> u16 {
        self.last_code
    }
    /// Whether a final reply was sent.
    pub fn is_final(&self) -> bool {
        self.last_code >= 200
    }

    /// The transport layer got a retransmission of the request: resend the last reply.
    pub fn on_request_retransmission(&mut self) -> TxAction {
        match (&self.last_reply, self.state) {
            (Some(r), TxState::Proceeding | TxState::Completed | TxState::Accepted) => {
                TxAction::Send(r.clone())
            }
            _ => TxAction::None,
        }
    }

    /// The TU sends a reply. Returns what to send, or `None` when a final reply was already sent.
    pub fn on_reply(&mut self, code: u16, bytes: Bytes, now: Instant) -> Option<TxAction> {
        self.on_reply_from(code, bytes, ReplyOrigin::Local, now)
    }

    /// As [`ServerTx::on_reply`], for a reply generated here or relayed from
    /// a branch: a proxy never retransmits a 2xx it relays (the UAS that sent
    /// it does), but keeps it to answer retransmitted INVITEs.
    pub fn on_reply_from(
        &mut self,
        code: u16,
        bytes: Bytes,
        origin: ReplyOrigin,
        now: Instant,
    ) -> Option<TxAction> {
        if self.state != TxState::Proceeding {
            return None;
        }
        if origin == ReplyOrigin::Relayed && self.invite && (200..300).contains(&code) {
            self.last_reply = Some(bytes.clone());
            self.last_code = code;
            self.state = TxState::Accepted;
            // Kamailio keeps a completed transaction wt_timer (5 s, = T4) to
            // absorb retransmissions; the UAS resends its own 2xx.
            self.end_at = Some(now + self.wait.unwrap_or(T4));
            self.retransmit_at = None;
            return Some(TxAction::Send(bytes));
        }
        self.last_reply = Some(bytes.clone());
        self.last_code = code;
        if code < 200 {
            return Some(TxAction::Send(bytes));
        }
        let wait = if self.reliable {
            Duration::ZERO
        } else {
            self.wait.unwrap_or(64 * T1)
        };
        if self.invite && code < 300 {
            // RFC 6026 Accepted: absorb INVITE retransmissions; resend the 2xx until ACK.
            self.state = TxState::Accepted;
            self.end_at = Some(now + 64 * T1);
            self.retransmit_at = (!self.reliable).then(|| now + T1);
        } else if self.invite {
            // Timer G (retransmit over UDP) and H (give up waiting for the ACK).
            self.state = TxState::Completed;
            self.retransmit_at = (!self.reliable).then(|| now + T1);
            self.end_at = Some(now + 64 * T1);
        } else {
            // Timer J.
            self.state = TxState::Completed;
            self.end_at = Some(now + wait);
        }
        Some(TxAction::Send(bytes))
    }

    /// An ACK for this INVITE transaction arrived.
    pub fn on_ack(&mut self, now: Instant) -> TxAction {
        match self.state {
            TxState::Completed if self.invite => {
                // Timer I.
                self.state = TxState::Confirmed;
                self.retransmit_at = None;
                self.end_at = Some(
                    now + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.wait.unwrap_or(T4)
                    },
                );
                TxAction::None
            }
            TxState::Accepted => {
                self.retransmit_at = None;
                TxAction::None
            }
            _ => TxAction::None,
        }
    }

    /// When [`ServerTx::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> TxAction {
        if self.end_at.is_some_and(|e| now >= e) {
            self.state = TxState::Terminated;
            self.retransmit_at = None;
            self.end_at = None;
            return TxAction::Terminate;
        }
        if let Some(at) = self.retransmit_at
            && now >= at
        {
            self.interval = (self.interval * 2).min(T2);
            self.retransmit_at = Some(now + self.interval);
            if let Some(r) = &self.last_reply {
                return TxAction::Send(r.clone());
            }
        }
        TxAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// Drives timers until `until`, collecting retransmission times (ms from t0).
    fn run(tx: &mut ServerTx, t0: Instant, until: Duration) -> (Vec<u128>, bool) {
        let mut sent = Vec::new();
        while let Some(d) = tx.next_deadline() {
            if d > t0 + until {
                break;
            }
            match tx.on_timer(d) {
                TxAction::Send(_) => sent.push((d - t0).as_millis()),
                TxAction::Terminate => return (sent, true),
                TxAction::None => {}
            }
        }
        (sent, false)
    }

    #[test]
    fn invite_non2xx_over_udp_retransmits_g_until_h() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false);
        assert_eq!(
            tx.on_reply(100, b("100"), t0),
            Some(TxAction::Send(b("100")))
        );
        assert_eq!(tx.on_request_retransmission(), TxAction::Send(b("100")));
        assert!(tx.on_reply(486, b("486"), t0).is_some());
        assert!(
            tx.on_reply(200, b("200"), t0).is_none(),
            "one final reply only"
        );
        let (sent, ended) = run(&mut tx, t0, Duration::from_secs(40));
        assert_eq!(&sent[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert!(ended, "timer H ends it at 64*T1");
    }

    #[test]
    fn ack_stops_retransmissions_and_timer_i_ends() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false);
        tx.on_reply(404, b("404"), t0);
        assert_eq!(tx.on_ack(t0 + Duration::from_millis(700)), TxAction::None);
        assert_eq!(tx.state(), TxState::Confirmed);
        assert_eq!(tx.on_request_retransmission(), TxAction::None, "absorbed");
        let (sent, ended) = run(&mut tx, t0, Duration::from_secs(10));
        assert!(sent.is_empty());
        assert!(ended);
    }

    #[test]
    fn reliable_transports_do_not_retransmit() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, true);
        tx.on_reply(302, b("302"), t0);
        assert_eq!(tx.next_deadline(), Some(t0 + 64 * T1));
        let mut nt = ServerTx::new(false, true);
        nt.on_reply(200, b("200"), t0);
        assert_eq!(nt.on_timer(t0), TxAction::Terminate);
    }

    #[test]
    fn non_invite_completed_absorbs_then_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(false, false);
        tx.on_reply(200, b("200"), t0);
        assert_eq!(tx.on_request_retransmission(), TxAction::Send(b("200")));
        let (sent, ended) = run(&mut tx, t0, Duration::from_secs(40));
        assert!(sent.is_empty());
        assert!(ended);
    }

    #[test]
    fn a_relayed_2xx_is_not_resent_but_answers_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false);
        tx.on_reply_from(200, b("200"), ReplyOrigin::Relayed, t0);
        assert_eq!(tx.state(), TxState::Accepted);
        assert_eq!(tx.on_request_retransmission(), TxAction::Send(b("200")));
        let (sent, ended) = run(&mut tx, t0, Duration::from_secs(40));
        assert!(sent.is_empty());
        assert!(ended);
    }

    #[test]
    fn invite_2xx_is_resent_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false);
        tx.on_reply(200, b("200"), t0);
        assert_eq!(tx.state(), TxState::Accepted);
        assert_eq!(tx.on_timer(t0 + T1), TxAction::Send(b("200")));
        tx.on_ack(t0 + T1);
        let (sent, ended) = run(&mut tx, t0, Duration::from_secs(40));
        assert!(sent.is_empty());
        assert!(ended);
    }
}
