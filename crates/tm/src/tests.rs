//! The transaction layer on a simulated clock and a simulated network: the
//! tests feed requests, replies and ticks, and read what would go out.

use crate::id;
use crate::*;
use bytes::Bytes;
use siphon_sip::{Edits, ReplyOptions, SipMsg, parse};
use std::time::{Duration, Instant};

struct T;
impl Shell for T {
    type Peer = &'static str;
    type Dest = u8;
    type Route = u8;
    type Ctx = Vec<&'static str>;
    type Resume = u32;
}

const SEED: u64 = 7;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn request(method: &str, branch: &str, call: &str, extra: &str) -> SipMsg {
    let text = format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK{branch};rport\r\nFrom: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: {call}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    parse(Bytes::from(text)).unwrap()
}

fn cfg() -> TmConfig {
    TmConfig {
        fr_timer: ms(2_000),
        fr_inv_timer: ms(10_000),
        ..Default::default()
    }
}

struct World {
    shard: TxShard<T>,
    t0: Instant,
    now: Instant,
    /// What a branch was sent, by branch number (the last INVITE sent).
    sent: Vec<Bytes>,
    ctx_out: Option<Vec<&'static str>>,
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        World {
            shard: TxShard::new(cfg(), 0xabcd),
            t0,
            now: t0,
            sent: Vec::new(),
            ctx_out: None,
        }
    }

    fn at(&mut self, n: u64) -> Instant {
        self.now = self.t0 + ms(n);
        self.now
    }

    /// A new INVITE transaction, created during its request route.
    fn invite(&mut self, call: &str) -> (TxId, SipMsg) {
        self.tx("INVITE", call, true)
    }

    fn tx(&mut self, method: &str, call: &str, reliable: bool) -> (TxId, SipMsg) {
        let msg = request(method, &format!("c{call}"), call, "");
        assert_eq!(self.shard.receive_request(&msg, self.now), Received::New);
        let index = id::request_index(&msg, SEED).unwrap();
        let tx = self
            .shard
            .create(
                NewTx {
                    msg: msg.clone(),
                    peer: "caller",
                    reliable,
                    to_tag: Bytes::from_static(b"proxytag"),
                    top_via: Bytes::from_static(
                        b"SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKc;rport=5062",
                    ),
                },
                index,
                self.now,
            )
            .unwrap();
        (tx, msg)
    }

    fn relay(&mut self, tx: TxId, msg: &SipMsg, dests: &[u8], reliable: bool) -> usize {
        let specs = dests
            .iter()
            .map(|&d| BranchSpec {
                msg: msg.clone(),
                edits: Edits {
                    ruri: Some(Bytes::from(format!("sip:bob@127.0.0.{d}"))),
                    max_forwards: Some(69),
                    ..Default::default()
                },
                sent_by: Bytes::from_static(b"SIP/2.0/UDP 127.0.0.1:5060"),
                dest: d,
                reliable,
                flags: 0,
                failover: vec![],
            })
            .collect();
        self.shard.relay(tx, specs, self.now).unwrap()
    }

    fn done(&mut self, tx: TxId, kind: RouteKind) {
        let ctx = self.ctx_out.take().unwrap_or_else(|| vec!["request"]);
        self.shard.route_done(tx, ctx, kind, None, self.now);
    }

    /// The callee's reply on `branch` (with a To-tag, 100 without).
    fn reply(&self, branch: usize, code: u16, extra: &[&str]) -> SipMsg {
        let req = parse(self.sent[branch].clone()).unwrap();
        let extra: Vec<Bytes> = extra
            .iter()
            .map(|e| Bytes::from(format!("{e}\r\n")))
            .collect();
        let bytes = siphon_sip::build_reply(
            &req,
            code,
            b"Reason",
            &ReplyOptions {
                to_tag: Some(format!("callee{branch}").as_bytes()),
                extra: &extra,
                ..Default::default()
            },
        );
        parse(bytes).unwrap()
    }

    fn receive(&mut self, branch: usize, code: u16) -> Vec<String> {
        let r = self.reply(branch, code, &[]);
        assert!(self.shard.receive_reply(r, self.now).is_ok());
        self.out()
    }

    fn tick(&mut self, n: u64) -> Vec<String> {
        let now = self.at(n);
        self.shard.on_timer(now);
        self.out()
    }

    /// What came out, described: `up 180`, `b0 INVITE`, `failure 1`, …
    fn out(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(a) = self.shard.poll_action() {
            v.push(match a {
                Action::Upstream { bytes, .. } => {
                    format!("up {}", parse(bytes).unwrap().status().unwrap())
                }
                Action::Downstream { branch, bytes, .. } => {
                    let m = parse(bytes.clone()).unwrap();
                    if !matches!(
                        m.method(),
                        siphon_sip::Method::Cancel | siphon_sip::Method::Ack
                    ) {
                        while self.sent.len() <= branch as usize {
                            self.sent.push(Bytes::new());
                        }
                        self.sent[branch as usize] = bytes;
                    }
                    format!("b{branch} {}", String::from_utf8_lossy(&m.method_bytes()))
                }
                Action::RunOnReply {
                    branch, reply, ctx, ..
                } => {
                    // (dest is the branch's: tested where the shell uses it)
                    self.ctx_out = ctx;
                    format!("onreply b{branch} {}", reply.status().unwrap())
                }
                Action::RunFailure { route, ctx, .. } => {
                    self.ctx_out = ctx;
                    format!("failure {route}")
                }
                Action::Ended { .. } => "ended".to_string(),
                Action::Completed {
                    code,
                    flags,
                    reply,
                    at,
                    branch_ruri,
                    ..
                } => {
                    let r = parse(reply).unwrap();
                    format!(
                        "completed {code} {} flags {flags} at {} ruri {}",
                        r.status().unwrap(),
                        (at - self.t0).as_millis(),
                        String::from_utf8_lossy(&branch_ruri.unwrap_or_default())
                    )
                }
            });
        }
        v
    }
}

#[test]
fn one_branch_rings_and_answers() {
    let mut w = World::new();
    let (tx, msg) = w.invite("one");
    assert_eq!(w.relay(tx, &msg, &[3], false), 1);
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 100", "b0 INVITE"]);
    // Our Via on top, the caller's below, the script's R-URI and Max-Forwards.
    let sent = parse(w.sent[0].clone()).unwrap();
    let via = sent.top_via().unwrap();
    let (id, _, b) = id::parse_branch(&via.branch.clone().unwrap()).unwrap();
    assert_eq!((id, b), (tx, 0));
    assert_eq!(sent.headers_named(b"Via").count(), 2);
    assert_eq!(sent.ruri().unwrap(), &b"sip:bob@127.0.0.3"[..]);
    assert_eq!(sent.max_forwards(), Some(69));
    assert!(w.receive(0, 100).is_empty(), "100 is hop by hop");
    assert_eq!(w.receive(0, 180), ["up 180"]);
    assert_eq!(w.receive(0, 200), ["up 200"]);
    assert_eq!(
        w.receive(0, 200),
        ["up 200"],
        "a 2xx retransmission goes on too"
    );
    // The caller's ACK for the 2xx is end to end: the script routes it.
    let ack = request("ACK", "cone", "one", "");
    assert_eq!(w.shard.receive_request(&ack, w.now), Received::AckOf2xx(tx));
    assert_eq!(w.tick(10_000), ["ended"]);
    assert!(w.shard.is_empty());
    let s = w.shard.stats();
    assert_eq!(
        (s.created, s.freed, s.rpl_received, s.rpl_relayed),
        (1, 1, 4, 3)
    );
    assert_eq!(s.replies, [2, 1, 0, 0, 0, 0], "100 and 180, then the 200");
    assert_eq!(s.rpl_generated, 1);
}

#[test]
fn parallel_fork_a_200_cancels_the_other_branch_completed_elsewhere() {
    let mut w = World::new();
    let (tx, msg) = w.invite("fork");
    w.relay(tx, &msg, &[3, 4], true);
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 100", "b0 INVITE", "b1 INVITE"]);
    assert_eq!(w.receive(0, 180), ["up 180"]);
    assert_eq!(w.receive(1, 183), ["up 183"]);
    assert_eq!(w.receive(1, 200), ["up 200", "b0 CANCEL"]);
    assert_eq!(w.receive(0, 487), ["b0 ACK"], "the 487 stays here");
    assert_eq!(w.shard.stats().cancels_sent, 1);
}

#[test]
fn the_cancel_for_a_2xx_elsewhere_carries_reason_cause_200() {
    let mut w = World::new();
    let (tx, msg) = w.invite("reason");
    w.relay(tx, &msg, &[3, 4], true);
    w.done(tx, RouteKind::Request);
    w.out();
    w.receive(0, 180);
    let r = w.reply(1, 200, &[]);
    let _ = w.shard.receive_reply(r, w.now);
    let mut cancel = None;
    while let Some(a) = w.shard.poll_action() {
        if let Action::Downstream { bytes, .. } = a {
            cancel = Some(parse(bytes).unwrap());
        }
    }
    let c = cancel.unwrap();
    let reason = c.headers_named(b"Reason").next().map(|h| c.header_value(h));
    assert_eq!(
        reason.unwrap(),
        &b"SIP;cause=200;text=\"Call completed elsewhere\""[..]
    );
    // Same branch as the INVITE sent on branch 0: the callee matches it.
    let inv = parse(w.sent[0].clone()).unwrap();
    assert_eq!(c.top_via().unwrap().branch, inv.top_via().unwrap().branch);
}

#[test]
fn busy_without_a_failure_route_is_relayed_and_the_acks_absorbed() {
    let mut w = World::new();
    let (tx, msg) = w.invite("busy");
    w.relay(tx, &msg, &[3], false);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 486), ["b0 ACK", "up 486"]);
    assert_eq!(
        w.receive(0, 486),
        ["b0 ACK"],
        "a retransmitted final: the ACK again"
    );
    // The caller's INVITE retransmission gets the 486 again, until its ACK.
    let again = request("INVITE", "cbusy", "busy", "");
    assert_eq!(w.shard.receive_request(&again, w.now), Received::Absorbed);
    assert_eq!(w.out(), ["up 486"]);
    let ack = request("ACK", "cbusy", "busy", "");
    assert_eq!(w.shard.receive_request(&ack, w.now), Received::Absorbed);
    assert_eq!(w.shard.receive_request(&again, w.now), Received::Absorbed);
    assert!(w.out().is_empty(), "confirmed: absorbed silently");
}

#[test]
fn serial_forking_from_the_failure_route() {
    let mut w = World::new();
    let (tx, msg) = w.invite("serial");
    w.shard.set_on_failure(tx, Some(1));
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 486), ["b0 ACK", "failure 1"]);
    assert_eq!(
        w.ctx_out.as_deref(),
        Some(&["request"][..]),
        "the transaction's context"
    );
    assert_eq!(w.shard.info(tx, w.now).unwrap().reply_code, 486);
    assert_eq!(w.shard.info(tx, w.now).unwrap().picked, Some(0));
    // The failure route relays to a second destination.
    assert_eq!(w.relay(tx, &msg, &[4], true), 1);
    w.done(tx, RouteKind::Failure);
    assert_eq!(w.out(), ["b1 INVITE"]);
    assert_eq!(w.receive(1, 180), ["up 180"]);
    assert_eq!(w.receive(1, 200), ["up 200"]);
}

#[test]
fn a_failure_route_that_does_nothing_relays_the_picked_final() {
    let mut w = World::new();
    let (tx, msg) = w.invite("nothing");
    w.shard.set_on_failure(tx, Some(1));
    w.relay(tx, &msg, &[3, 4], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 404), ["b0 ACK"], "branch 1 still pending");
    assert_eq!(w.receive(1, 486), ["b1 ACK", "failure 1"]);
    assert_eq!(w.shard.info(tx, w.now).unwrap().reply_code, 404);
    w.done(tx, RouteKind::Failure);
    assert_eq!(w.out(), ["up 404"]);
}

#[test]
fn a_branch_that_never_answers_times_out_with_408() {
    let mut w = World::new();
    let (tx, msg) = w.invite("silent");
    w.relay(tx, &msg, &[3], false);
    w.done(tx, RouteKind::Request);
    w.out();
    let mut all = Vec::new();
    for t in (100..=2_000).step_by(100) {
        all.extend(w.tick(t));
    }
    // UDP: retransmissions at 0.5, 1.5 s; fr_timer (2 s) ends it, nothing to cancel.
    assert_eq!(all, ["b0 INVITE", "b0 INVITE", "up 408"]);
    let info = w.shard.info(tx, w.now).unwrap();
    assert!(info.any_timeout && info.branch_timeout && !info.any_replied);
    assert_eq!(w.shard.stats().branch_timeouts, 1);
}

#[test]
fn a_ringing_branch_that_never_answers_is_canceled_at_fr_inv_timer() {
    let mut w = World::new();
    let (tx, msg) = w.invite("ringing");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    w.at(500);
    assert_eq!(w.receive(0, 180), ["up 180"]);
    assert!(
        w.tick(10_000).is_empty(),
        "fr_inv_timer counts from the 180"
    );
    assert_eq!(w.tick(10_500), ["b0 CANCEL", "up 408"]);
    assert_eq!(w.receive(0, 487), ["b0 ACK"]);
}

#[test]
fn the_callers_cancel_goes_to_ringing_branches_and_the_487_comes_back() {
    let mut w = World::new();
    let (tx, msg) = w.invite("cancel");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    w.receive(0, 180);
    let cancel = request(
        "CANCEL",
        "ccancel",
        "cancel",
        "Reason: Q.850;cause=16;text=\"Normal\"\r\n",
    );
    assert_eq!(
        w.shard.receive_request(&cancel, w.now),
        Received::Canceled(tx)
    );
    let acts: Vec<_> = std::iter::from_fn(|| w.shard.poll_action()).collect();
    assert_eq!(acts.len(), 1);
    let Action::Downstream { bytes, .. } = &acts[0] else {
        panic!("a CANCEL downstream")
    };
    let c = parse(bytes.clone()).unwrap();
    let reason = c.headers_named(b"Reason").next().map(|h| c.header_value(h));
    assert_eq!(
        reason.unwrap(),
        &b"Q.850;cause=16;text=\"Normal\""[..],
        "RFC 3326: copied"
    );
    assert!(w.shard.info(tx, w.now).unwrap().canceled);
    assert_eq!(w.receive(0, 487), ["b0 ACK", "up 487"]);
    let again = request("CANCEL", "ccancel", "cancel", "");
    assert_eq!(
        w.shard.receive_request(&again, w.now),
        Received::Canceled(tx)
    );
    assert!(w.out().is_empty());
    assert_eq!(
        w.shard
            .receive_request(&request("CANCEL", "cnone", "none", ""), w.now),
        Received::UnknownCancel
    );
}

#[test]
fn a_cancel_before_any_provisional_waits_for_one() {
    let mut w = World::new();
    let (tx, msg) = w.invite("early");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    let cancel = request("CANCEL", "cearly", "early", "");
    assert_eq!(
        w.shard.receive_request(&cancel, w.now),
        Received::Canceled(tx)
    );
    assert!(
        w.out().is_empty(),
        "nothing to cancel yet (cancel_b_method 1)"
    );
    assert_eq!(w.receive(0, 180), ["b0 CANCEL"], "the 180 is not relayed");
    assert_eq!(w.receive(0, 487), ["b0 ACK", "up 487"]);
}

#[test]
fn a_canceled_branch_that_stays_silent_ends_487_at_fr_timer() {
    let mut w = World::new();
    let (tx, msg) = w.invite("mute");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    let cancel = request("CANCEL", "cmute", "mute", "");
    w.shard.receive_request(&cancel, w.now);
    assert_eq!(w.tick(2_000), ["up 487"]);
}

#[test]
fn a_cancel_while_suspended_answers_487_at_once() {
    let mut w = World::new();
    let (tx, _) = w.invite("susp");
    assert!(w.shard.begin_suspend(tx, w.now));
    assert!(w.shard.finish_suspend(tx, vec!["parked"], w.now).is_none());
    w.out();
    let cancel = request("CANCEL", "csusp", "susp", "");
    assert_eq!(
        w.shard.receive_request(&cancel, w.now),
        Received::Canceled(tx)
    );
    assert_eq!(w.out(), ["up 487"]);
    // The application answers later: the route runs, but relaying is refused.
    let Resumed::Run(ctx, _) = w.shard.resume(tx, 1) else {
        panic!("resumable")
    };
    assert_eq!(ctx, ["parked"]);
    let msg = w.shard.request(tx).unwrap().clone();
    let r = w.shard.relay(
        tx,
        vec![BranchSpec {
            msg,
            edits: Edits::default(),
            sent_by: Bytes::from_static(b"SIP/2.0/UDP 127.0.0.1:5060"),
            dest: 3,
            reliable: true,
            flags: 0,
            failover: vec![],
        }],
        w.now,
    );
    assert_eq!(r, Err(RelayError::Canceled));
}

#[test]
fn a_503_goes_up_as_500() {
    let mut w = World::new();
    let (tx, msg) = w.invite("s503");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 503), ["b0 ACK", "up 500"]);
}

#[test]
fn challenges_of_several_branches_are_merged() {
    let mut w = World::new();
    let (tx, msg) = w.invite("auth");
    w.relay(tx, &msg, &[3, 4], true);
    w.done(tx, RouteKind::Request);
    w.out();
    let r = w.reply(
        0,
        401,
        &["WWW-Authenticate: Digest realm=\"a\", nonce=\"1\""],
    );
    let _ = w.shard.receive_reply(r, w.now);
    assert_eq!(w.out(), ["b0 ACK"]);
    let r = w.reply(
        1,
        407,
        &["Proxy-Authenticate: Digest realm=\"b\", nonce=\"2\""],
    );
    let _ = w.shard.receive_reply(r, w.now);
    let mut up = None;
    while let Some(a) = w.shard.poll_action() {
        if let Action::Upstream { bytes, .. } = a {
            up = Some(parse(bytes).unwrap());
        }
    }
    let up = up.unwrap();
    assert_eq!(up.status(), Some(401));
    assert_eq!(up.headers_named(b"WWW-Authenticate").count(), 1);
    assert_eq!(up.headers_named(b"Proxy-Authenticate").count(), 1);
    assert_eq!(up.to().unwrap().tag.unwrap(), &b"proxytag"[..]);
    assert_eq!(up.headers_named(b"Via").count(), 1, "built for the caller");
}

#[test]
fn a_6xx_cancels_the_pending_branches_and_wins() {
    let mut w = World::new();
    let (tx, msg) = w.invite("six");
    w.relay(tx, &msg, &[3, 4, 5], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 180), ["up 180"]);
    assert_eq!(w.receive(1, 486), ["b1 ACK"]);
    assert_eq!(w.receive(2, 603), ["b2 ACK", "b0 CANCEL"]);
    assert_eq!(w.receive(0, 487), ["b0 ACK", "up 603"]);
}

#[test]
fn replies_during_the_route_wait_for_it() {
    let mut w = World::new();
    let (tx, msg) = w.invite("race");
    w.relay(tx, &msg, &[3], true);
    assert_eq!(w.out(), ["up 100", "b0 INVITE"]);
    // A fast callee answers before the request route has ended.
    assert!(w.receive(0, 180).is_empty());
    assert!(w.receive(0, 200).is_empty());
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 180", "up 200"]);
}

#[test]
fn onreply_route_runs_per_reply_and_drop_discards_only_provisionals() {
    let mut w = World::new();
    let (tx, msg) = w.invite("onreply");
    w.shard.set_on_reply(tx, Some(7));
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 180), ["onreply b0 180"]);
    let ctx = w.ctx_out.take().unwrap();
    let reply = w.reply(0, 180, &[]);
    let drop = ReplyEdit {
        drop: true,
        ..Default::default()
    };
    w.shard.route_done(
        tx,
        ctx,
        RouteKind::OnReply { branch: 0 },
        Some((reply, drop.clone())),
        w.now,
    );
    assert!(w.out().is_empty(), "the 180 was dropped");
    assert_eq!(w.receive(0, 200), ["onreply b0 200"]);
    let ctx = w.ctx_out.take().unwrap();
    let reply = w.reply(0, 200, &[]);
    let edit = ReplyEdit {
        drop: true,
        edits: Edits {
            append: vec![Bytes::from_static(b"X-Seen: yes\r\n")],
            ..Default::default()
        },
    };
    w.shard.route_done(
        tx,
        ctx,
        RouteKind::OnReply { branch: 0 },
        Some((reply, edit)),
        w.now,
    );
    let mut up = None;
    while let Some(a) = w.shard.poll_action() {
        if let Action::Upstream { bytes, .. } = a {
            up = Some(parse(bytes).unwrap());
        }
    }
    let up = up.expect("a drop on a final is ignored");
    assert_eq!(up.status(), Some(200));
    assert!(up.headers_named(b"X-Seen").next().is_some());
    assert_eq!(up.headers_named(b"Via").count(), 1, "our Via taken off");
}

#[test]
fn suspend_and_resume_exactly_once() {
    let mut w = World::new();
    let (tx, _) = w.tx("MESSAGE", "sus", false);
    assert!(w.shard.begin_suspend(tx, w.now));
    assert!(w.shard.finish_suspend(tx, vec!["v"], w.now).is_none());
    assert!(w.shard.is_suspended(tx));
    let Resumed::Run(ctx, _) = w.shard.resume(tx, 1) else {
        panic!("first resume runs")
    };
    assert!(matches!(w.shard.resume(tx, 2), Resumed::Late(2)));
    assert!(w.shard.reply(tx, 200, b"OK", &[], w.now));
    w.shard.route_done(tx, ctx, RouteKind::Resumed, None, w.now);
    assert_eq!(w.out(), ["up 200"]);
    assert_eq!(w.shard.stats().late_resumes, 1);
}

#[test]
fn a_resume_before_the_suspension_is_set_up_is_run_by_the_suspender() {
    let mut w = World::new();
    let (tx, _) = w.tx("MESSAGE", "fast", false);
    assert!(w.shard.begin_suspend(tx, w.now));
    assert!(matches!(w.shard.resume(tx, 9), Resumed::Queued));
    let (ctx, r) = w.shard.finish_suspend(tx, vec!["v"], w.now).unwrap();
    assert_eq!((ctx, r), (vec!["v"], 9));
    assert!(matches!(w.shard.resume(tx, 10), Resumed::Late(10)));
}

#[test]
fn a_suspended_transaction_times_out_into_its_failure_route() {
    let mut w = World::new();
    let (tx, _) = w.invite("late");
    w.shard.set_on_failure(tx, Some(2));
    assert!(w.shard.begin_suspend(tx, w.now));
    assert!(w.shard.finish_suspend(tx, vec!["parked"], w.now).is_none());
    assert_eq!(w.out(), ["up 100"]);
    assert!(w.tick(1_999).is_empty());
    assert_eq!(w.tick(2_000), ["failure 2"]);
    assert_eq!(w.ctx_out.as_deref(), Some(&["parked"][..]));
    let info = w.shard.info(tx, w.now).unwrap();
    assert_eq!(info.reply_code, 408);
    assert!(info.branch_timeout);
    assert!(
        matches!(w.shard.resume(tx, 1), Resumed::Late(1)),
        "too late"
    );
    w.done(tx, RouteKind::Failure);
    assert_eq!(w.out(), ["up 408"]);
}

#[test]
fn a_failure_route_may_suspend_and_its_resumed_route_relays() {
    let mut w = World::new();
    let (tx, msg) = w.invite("ask");
    w.shard.set_on_failure(tx, Some(1));
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.receive(0, 486), ["b0 ACK", "failure 1"]);
    let ctx = w.ctx_out.take().unwrap();
    // The failure route asks an application where to go next.
    assert!(w.shard.begin_suspend(tx, w.now));
    assert!(w.shard.finish_suspend(tx, ctx, w.now).is_none());
    let Resumed::Run(ctx, _) = w.shard.resume(tx, 1) else {
        panic!("resumes")
    };
    w.relay(tx, &msg, &[4], true);
    w.shard.route_done(tx, ctx, RouteKind::Resumed, None, w.now);
    assert_eq!(w.out(), ["b1 INVITE"]);
    assert_eq!(w.receive(1, 200), ["up 200"]);
}

#[test]
fn a_resumed_route_that_answers_nothing_gets_500() {
    let mut w = World::new();
    let (tx, _) = w.tx("MESSAGE", "quiet", false);
    w.shard.begin_suspend(tx, w.now);
    w.shard.finish_suspend(tx, vec![], w.now);
    let Resumed::Run(ctx, _) = w.shard.resume(tx, 1) else {
        panic!()
    };
    w.shard.route_done(tx, ctx, RouteKind::Resumed, None, w.now);
    assert_eq!(w.out(), ["up 500"]);
}

#[test]
fn a_branch_that_could_not_be_sent_is_never_picked() {
    let mut w = World::new();
    let (tx, msg) = w.invite("conn");
    w.relay(tx, &msg, &[3, 4], true);
    w.done(tx, RouteKind::Request);
    w.out();
    w.shard.branch_failed(tx, 0, w.now);
    assert!(w.out().is_empty());
    assert_eq!(w.receive(1, 486), ["b1 ACK", "up 486"]);
    // One branch only, failed: the caller gets 500 (503 remapped) at once.
    let (tx, msg) = w.invite("conn2");
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    w.shard.branch_failed(tx, 0, w.now);
    assert_eq!(w.out(), ["up 500"]);
}

#[test]
fn non_invite_relay_and_timeout() {
    let mut w = World::new();
    let (tx, msg) = w.tx("MESSAGE", "msg", false);
    w.relay(tx, &msg, &[3], false);
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["b0 MESSAGE"], "no 100 for a non-INVITE");
    assert_eq!(w.receive(0, 202), ["up 202"]);
    let (tx, msg) = w.tx("OPTIONS", "opt", true);
    w.relay(tx, &msg, &[3], true);
    w.done(tx, RouteKind::Request);
    w.out();
    // Reliable both ways: nothing to absorb after the 408, so it ends at once.
    assert_eq!(w.tick(2_000), ["up 408", "ended"]);
    assert!(!w.shard.contains(tx));
}

#[test]
fn a_transaction_without_branch_or_reply_times_out_408() {
    let mut w = World::new();
    let (tx, _) = w.tx("MESSAGE", "lonely", false);
    w.done(tx, RouteKind::Request);
    assert!(w.out().is_empty());
    assert_eq!(w.tick(2_000), ["up 408"]);
    // fr_timer of the upstream 408 over UDP, then the end.
    let later = w.tick(60_000);
    assert_eq!(later, ["ended"]);
    assert_eq!(w.shard.stats().tx_timeouts, 1);
}

#[test]
fn the_same_request_makes_one_transaction() {
    let mut w = World::new();
    let (tx, msg) = w.invite("dup");
    let again = w
        .shard
        .create(
            NewTx {
                msg,
                peer: "caller",
                reliable: true,
                to_tag: Bytes::new(),
                top_via: Bytes::new(),
            },
            tx.index,
            w.now,
        )
        .unwrap();
    assert_eq!(again, tx);
    assert_eq!(w.shard.len(), 1);
}

#[test]
fn a_branch_prepared_outside_holds_the_transaction_and_may_fail_478() {
    let mut w = World::new();
    let (tx, _) = w.invite("dns");
    assert!(w.shard.hold(tx));
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 100"]);
    assert!(
        w.tick(5_000).is_empty(),
        "no fr_timer while the name resolves"
    );
    w.shard.unhold(tx, Some(478), w.now);
    assert_eq!(w.out(), ["up 478"]);
    // Resolved: the branch goes out, the hold ends.
    let (tx, msg) = w.invite("dns2");
    assert!(w.shard.hold(tx));
    w.done(tx, RouteKind::Request);
    w.out();
    w.relay(tx, &msg, &[3], true);
    w.shard.unhold(tx, None, w.now);
    assert_eq!(w.out(), ["b0 INVITE"]);
    assert_eq!(w.receive(0, 486), ["b0 ACK", "up 486"]);
}

#[test]
fn replies_that_are_not_ours_are_refused() {
    let mut w = World::new();
    let stranger = parse(Bytes::from_static(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKother\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    assert!(w.shard.receive_reply(stranger, w.now).is_err());
    // Our shape but no such transaction (a stale or forged one).
    let forged = parse(Bytes::from(format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch={}\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        id::branch_param(TxId { index: 1, label: 5 }, 0xabcd, 0)
    )))
    .unwrap();
    assert!(w.shard.receive_reply(forged, w.now).is_err());
}

#[test]
fn dns_failover_tries_the_next_address_on_silence_503_and_a_broken_connection() {
    let mut w = World::new();
    w.shard.set_config(TmConfig {
        use_dns_failover: true,
        ..cfg()
    });
    let (tx, msg) = w.invite("failover");
    let alt = |d: u8| Alternate {
        dest: d,
        sent_by: Bytes::from_static(b"SIP/2.0/TCP 127.0.0.1:5060"),
        reliable: true,
    };
    let spec = BranchSpec {
        msg: msg.clone(),
        edits: Edits::default(),
        sent_by: Bytes::from_static(b"SIP/2.0/TCP 127.0.0.1:5060"),
        dest: 3,
        reliable: true,
        flags: 0,
        failover: vec![alt(4), alt(5), alt(6)],
    };
    w.shard.relay(tx, vec![spec], w.now).unwrap();
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 100", "b0 INVITE"]);
    // Silence until fr_timer: the next address, not a 408.
    assert_eq!(w.tick(2_000), ["b1 INVITE"]);
    // A 503 there: ACKed, and the one after.
    assert_eq!(w.receive(1, 503), ["b1 ACK", "b2 INVITE"]);
    // That connection breaks: the last address.
    w.shard.branch_failed(tx, 2, w.now);
    assert_eq!(w.out(), ["b3 INVITE"]);
    assert_eq!(w.receive(3, 200), ["up 200"]);
    assert_eq!(w.shard.stats().failovers, 3);
    // The request went out the same each time, with its own branch number.
    let b0 = parse(w.sent[0].clone()).unwrap();
    let b3 = parse(w.sent[3].clone()).unwrap();
    assert_eq!(b0.ruri(), b3.ruri());
    assert_ne!(b0.top_via().unwrap().branch, b3.top_via().unwrap().branch);
}

#[test]
fn without_use_dns_failover_a_silent_branch_times_out() {
    let mut w = World::new();
    let (tx, msg) = w.invite("nofailover");
    let spec = BranchSpec {
        msg: msg.clone(),
        edits: Edits::default(),
        sent_by: Bytes::from_static(b"SIP/2.0/TCP 127.0.0.1:5060"),
        dest: 3,
        reliable: true,
        flags: 0,
        failover: vec![Alternate {
            dest: 4,
            sent_by: Bytes::from_static(b"SIP/2.0/TCP 127.0.0.1:5060"),
            reliable: true,
        }],
    };
    w.shard.relay(tx, vec![spec], w.now).unwrap();
    w.done(tx, RouteKind::Request);
    w.out();
    assert_eq!(w.tick(2_000), ["up 408"]);
}

#[test]
fn our_cancel_is_resent_over_udp_until_its_200() {
    let mut w = World::new();
    let (tx, msg) = w.invite("cancel-udp");
    w.relay(tx, &msg, &[3], false);
    w.done(tx, RouteKind::Request);
    w.out();
    w.at(100);
    assert_eq!(w.receive(0, 180), ["up 180"]);
    let cancel = request("CANCEL", "ccancel-udp", "cancel-udp", "");
    assert_eq!(
        w.shard.receive_request(&cancel, w.now),
        Received::Canceled(tx)
    );
    let mut ours = None;
    while let Some(a) = w.shard.poll_action() {
        if let Action::Downstream { bytes, .. } = a {
            ours = Some(parse(bytes).unwrap());
        }
    }
    let ours = ours.expect("a CANCEL to the branch");
    // Lost: it goes again at T1, then 2·T1.
    assert_eq!(w.tick(600), ["b0 CANCEL"]);
    assert_eq!(w.tick(1_700), ["b0 CANCEL"]);
    // Its 200 stops it.
    let ok = siphon_sip::build_reply(&ours, 200, b"OK", &ReplyOptions::default());
    assert!(w.shard.receive_reply(parse(ok).unwrap(), w.now).is_ok());
    assert!(
        w.tick(2_000).is_empty(),
        "no more CANCELs (fr_timer is 2 s here)"
    );
    assert_eq!(w.receive(0, 487), ["b0 ACK", "up 487"]);
}

#[test]
fn a_flagged_transaction_reports_its_final_once_when_it_goes_upstream() {
    let mut w = World::new();
    let (tx, msg) = w.invite("acc");
    w.relay(tx, &msg, &[3], false);
    w.shard.set_flags(tx, 0b10);
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["up 100", "b0 INVITE"]);
    assert_eq!(w.receive(0, 180), ["up 180"], "no report for a provisional");
    w.at(1_500);
    assert_eq!(
        w.receive(0, 200),
        [
            "up 200",
            "completed 200 200 flags 2 at 1500 ruri sip:bob@127.0.0.3"
        ]
    );
    assert_eq!(
        w.receive(0, 200),
        ["up 200"],
        "a retransmitted 2xx is not reported again"
    );
}

#[test]
fn a_timeout_reports_the_local_408_and_an_unflagged_transaction_reports_nothing() {
    let mut w = World::new();
    let (tx, msg) = w.tx("OPTIONS", "acc408", false);
    w.relay(tx, &msg, &[3], false);
    w.shard.set_flags(tx, 1 << 3);
    w.done(tx, RouteKind::Request);
    assert_eq!(w.out(), ["b0 OPTIONS"]);
    let out = w.tick(2_000);
    assert!(
        out.contains(&"completed 408 408 flags 8 at 2000 ruri sip:bob@127.0.0.3".to_string()),
        "{out:?}"
    );

    let (tx, msg) = w.invite("noacc");
    w.relay(tx, &msg, &[3], false);
    w.done(tx, RouteKind::Request);
    w.out();
    let out = w.receive(0, 486);
    assert!(out.contains(&"up 486".to_string()), "{out:?}");
    assert!(!out.iter().any(|l| l.starts_with("completed")), "{out:?}");
}
