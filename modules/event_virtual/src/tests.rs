//! The policies over a fake transport whose deliveries the test settles by
//! hand, on a clock the test moves.

use super::*;
use siphon_script::evi::EventParams;
use std::collections::HashMap;

/// Deliveries not settled yet, by subscriber, oldest first.
type Waiting = HashMap<String, Vec<(Arc<Event>, OnOutcome)>>;

/// `fake:NAME` subscribers: every delivery waits until the test settles it.
#[derive(Default)]
struct Fake {
    waiting: Mutex<Waiting>,
}

struct FakeSub(Arc<Fake>, String);

impl EventSubscriber for FakeSub {
    fn deliver(&self, event: &Arc<Event>) -> bool {
        self.deliver_then(event, Box::new(|_| {}))
    }
    fn deliver_then(&self, event: &Arc<Event>, done: OnOutcome) -> bool {
        let mut w = self.0.waiting.lock().unwrap();
        w.entry(self.1.clone())
            .or_default()
            .push((event.clone(), done));
        true
    }
}

struct FakeTransport(Arc<Fake>);

impl EventTransport for FakeTransport {
    fn proto(&self) -> &'static str {
        "fake"
    }
    fn subscriber(&self, target: &str, _: &Evi) -> Result<Arc<dyn EventSubscriber>, String> {
        Ok(Arc::new(FakeSub(self.0.clone(), target.to_string())))
    }
    fn admit(&self, target: &str, _: &Evi) -> Result<(), String> {
        if target.starts_with("far") {
            return Err("not allowed".into());
        }
        Ok(())
    }
}

impl Fake {
    /// Settles the oldest delivery waiting at `name`; the event's number.
    fn settle(&self, name: &str, o: Outcome) -> i64 {
        let (ev, done) = {
            let mut w = self.waiting.lock().unwrap();
            let q = w.get_mut(name).expect("deliveries to it");
            assert!(!q.is_empty(), "nothing waits at {name}");
            q.remove(0)
        };
        done(o);
        match &ev.params {
            EventParams::Values(v) => v[0].as_i64().unwrap(),
            _ => unreachable!(),
        }
    }
    fn waiting(&self, name: &str) -> usize {
        self.waiting.lock().unwrap().get(name).map_or(0, Vec::len)
    }
}

struct World {
    evi: Evi,
    fake: Arc<Fake>,
    now: Arc<Mutex<Instant>>,
    totals: Arc<Totals>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

fn world() -> World {
    let evi = Evi::new();
    let fake = Arc::new(Fake::default());
    evi.add_transport(Arc::new(FakeTransport(fake.clone())));
    let now = Arc::new(Mutex::new(Instant::now()));
    let n = now.clone();
    let totals = Arc::new(Totals::default());
    evi.add_transport(Arc::new(Transport {
        failover_timeout: Duration::from_secs(30),
        totals: totals.clone(),
        clock: Arc::new(move || *n.lock().unwrap()),
    }));
    World {
        evi,
        fake,
        now,
        totals,
        outcomes: Default::default(),
    }
}

impl World {
    fn sub(&self, socket: &str) -> Arc<dyn EventSubscriber> {
        let (t, rest) = self.evi.transport_for(socket).unwrap();
        t.subscriber(rest, &self.evi).unwrap()
    }
    fn raise(&self, s: &Arc<dyn EventSubscriber>, n: i64) {
        let ev = Arc::new(Event {
            name: Arc::from("E_V"),
            params: EventParams::Values(vec![json!(n)]),
        });
        let out = self.outcomes.clone();
        assert!(s.deliver_then(&ev, Box::new(move |o| out.lock().unwrap().push(o))));
    }
    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

const NO: Outcome = Outcome::Unconfirmed("timeout");
const OK: Outcome = Outcome::Confirmed;

#[test]
fn sockets() {
    assert_eq!(
        parse_target("FAILOVER jsonrpc:127.0.0.1:1 \t jsonrpc:127.0.0.1:2").unwrap(),
        (
            Policy::Failover,
            vec!["jsonrpc:127.0.0.1:1", "jsonrpc:127.0.0.1:2"]
        )
    );
    assert_eq!(
        parse_target("ROUND-ROBIN a:b").unwrap().0,
        Policy::RoundRobin
    );
    assert_eq!(parse_target("PARALLEL a:b").unwrap().0, Policy::Parallel);
    assert!(
        parse_target("failover a:b")
            .unwrap_err()
            .contains("in capitals")
    );
    assert!(parse_target("FAILOVER").unwrap_err().contains("no member"));
    assert!(parse_target("").is_err());
    assert!(
        parse_target("FAILOVER virtual:PARALLEL a:b")
            .unwrap_err()
            .contains("cannot be a member")
    );
    let w = world();
    let (t, _) = w.evi.transport_for("virtual:x").unwrap();
    assert!(t.subscriber("FAILOVER nope:1", &w.evi).is_err());
    assert!(t.admit("FAILOVER fake:a fake:b", &w.evi).is_ok());
    assert!(
        t.admit("FAILOVER fake:a fake:far", &w.evi)
            .unwrap_err()
            .contains("`fake:far`: not allowed")
    );
}

#[test]
fn failover_goes_on_until_a_member_confirms_and_skips_a_failed_one_for_a_while() {
    let w = world();
    let s = w.sub("virtual:FAILOVER fake:a fake:b");
    w.raise(&s, 1);
    assert_eq!((w.fake.waiting("a"), w.fake.waiting("b")), (1, 0));
    assert_eq!(w.fake.settle("a", NO), 1);
    // Passed on to b, which confirms.
    assert_eq!(w.fake.settle("b", OK), 1);
    assert_eq!(w.outcomes(), [OK]);
    // a failed: skipped (tried last) for failover_timeout.
    w.raise(&s, 2);
    assert_eq!((w.fake.waiting("a"), w.fake.waiting("b")), (0, 1));
    assert_eq!(w.fake.settle("b", OK), 2);
    *w.now.lock().unwrap() += Duration::from_secs(29);
    w.raise(&s, 3);
    assert_eq!(w.fake.waiting("b"), 1);
    assert_eq!(w.fake.settle("b", OK), 3);
    *w.now.lock().unwrap() += Duration::from_secs(1);
    w.raise(&s, 4);
    assert_eq!((w.fake.waiting("a"), w.fake.waiting("b")), (1, 0));
    assert_eq!(w.fake.settle("a", OK), 4);
    let st = s.stats();
    assert_eq!(st["members"][0]["unconfirmed"], json!(1));
    assert_eq!(st["members"][0]["confirmed"], json!(1));
    assert_eq!(st["members"][1]["confirmed"], json!(3));
    assert_eq!(
        (st["failovers"].clone(), st["lost"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(w.totals.unconfirmed.load(Ordering::Relaxed), 1);
}

#[test]
fn failover_loses_an_event_only_when_every_member_failed() {
    let w = world();
    let s = w.sub("virtual:FAILOVER fake:a fake:b");
    w.raise(&s, 1);
    w.fake.settle("a", NO);
    w.fake.settle("b", Outcome::Unconfirmed("failed"));
    assert_eq!(w.outcomes(), [Outcome::Unconfirmed("failed")]);
    assert_eq!(w.totals.lost.load(Ordering::Relaxed), 1);
    // Both are skipped now: still tried, in order.
    w.raise(&s, 2);
    assert_eq!(w.fake.settle("a", OK), 2);
    assert_eq!(w.outcomes()[1], OK);
}

#[test]
fn round_robin_alternates() {
    let w = world();
    let s = w.sub("virtual:ROUND-ROBIN fake:a fake:b");
    for n in 0..4 {
        w.raise(&s, n);
    }
    assert_eq!((w.fake.settle("a", OK), w.fake.settle("a", NO)), (0, 2));
    assert_eq!((w.fake.settle("b", OK), w.fake.settle("b", OK)), (1, 3));
    assert_eq!(w.outcomes(), [OK, NO, OK, OK]);
    // ROUND-ROBIN does not fail over: the unconfirmed one is lost.
    assert_eq!(w.totals.lost.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats()["members"][0]["unconfirmed"], json!(1));
}

#[test]
fn parallel_sends_to_all_and_answers_once_all_did() {
    let w = world();
    let s = w.sub("virtual:PARALLEL fake:a fake:b");
    w.raise(&s, 7);
    assert_eq!((w.fake.waiting("a"), w.fake.waiting("b")), (1, 1));
    w.fake.settle("a", NO);
    assert!(w.outcomes().is_empty(), "b has not answered yet");
    w.fake.settle("b", OK);
    assert_eq!(w.outcomes(), [OK]);
    w.raise(&s, 8);
    w.fake.settle("b", NO);
    w.fake.settle("a", NO);
    assert_eq!(w.outcomes(), [OK, NO]);
    assert_eq!(w.totals.unconfirmed.load(Ordering::Relaxed), 3);
    assert_eq!(w.totals.lost.load(Ordering::Relaxed), 1);
}
