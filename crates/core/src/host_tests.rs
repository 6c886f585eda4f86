//! The host handle's routes and suspensions: event routes run by their
//! Kamailio name over a module's context, what an async call may do where,
//! and resumes by id of a parked event run and of a suspended transaction.

use super::*;
use siphon_script::api::{
    EventRun, EventSuspend, FnResult, RouteEnd, RunError, Suspend, SuspendHere, SuspensionId,
};
use siphon_script::{ArgKind, FunctionSpec, Value};
use std::sync::Mutex;

/// A core and its host over `cfg`, whose script can call `out(v)` (recorded),
/// `here()` (records what the host says an async call may do there) and
/// `wait()` (suspends; its start records the suspension's id).
struct World {
    core: Arc<Core>,
    host: Arc<dyn Host>,
    program: Arc<Program>,
    out: Arc<Mutex<Vec<String>>>,
    ids: Arc<Mutex<Vec<Option<SuspensionId>>>>,
}

fn world(cfg: &str) -> World {
    let out: Arc<Mutex<Vec<String>>> = Default::default();
    let ids: Arc<Mutex<Vec<Option<SuspensionId>>>> = Default::default();
    let host_slot: Arc<OnceLock<Arc<dyn Host>>> = Default::default();
    let mut reg = Registry::new();
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out", &[ArgKind::Any], move |ex, a| {
            o.lock().unwrap().push(a.value(0, ex).to_string());
            1.into()
        }));
    let (o, h) = (out.clone(), host_slot.clone());
    reg.core_functions
        .push(FunctionSpec::new("here", &[], move |ex, _| {
            let here = h.get().expect("started").may_suspend(ex.ctx);
            o.lock().unwrap().push(format!("{here:?}"));
            1.into()
        }));
    let i = ids.clone();
    reg.core_functions
        .push(FunctionSpec::new("wait", &[], move |_, _| {
            let i = i.clone();
            FnResult::Suspend(Suspend {
                start: Box::new(move |ctx, _resumer| {
                    i.lock().unwrap().push(SuspensionId::of(ctx));
                }),
            })
        }));
    let l = siphon_script::load_str("t.cfg", cfg, &Default::default(), &reg);
    let program = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)))
        .into_shared();
    let core = Core::new();
    let _ = core.program.set(program.clone());
    let host = core.host(program.clone(), CancellationToken::new());
    let _ = host_slot.set(host.clone());
    World {
        core,
        host,
        program,
        out,
        ids,
    }
}

impl World {
    fn out(&self) -> Vec<String> {
        std::mem::take(&mut *self.out.lock().unwrap())
    }
    fn id(&self) -> SuspensionId {
        self.ids
            .lock()
            .unwrap()
            .pop()
            .flatten()
            .expect("a suspension id")
    }
    /// A request from 127.0.0.1:5070 over UDP, through the core as received.
    fn receive(&self, method: &str, cseq: u32) {
        let raw = format!(
            "{method} sip:bob@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-host-{cseq}\r\n\
             From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\n\
             Call-ID: host-test\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let peer = Peer {
            transport: Transport::Udp,
            src: "127.0.0.1:5070".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        };
        self.core.on_message(Bytes::from(raw), peer);
    }
    fn late_tx_resumes(&self) -> i64 {
        self.core
            .statistics()
            .into_iter()
            .find(|(n, _)| n == "tm:late_resume")
            .map_or(-1, |(_, v)| v)
    }
}

#[test]
fn event_routes_run_by_their_kamailio_name_or_id_over_the_module_context() {
    let w = world(
        "event_route[test:ev] { out(\"ev $var(x)\"); $var(x) = 2; }\n\
         route[CALLBACK] { out(\"cb $var(x)\"); drop; }\n",
    );
    let slot = w.program.var_slot("x").unwrap();
    let set_x = |v: i64| -> siphon_script::api::BuildCtx<'static> {
        Box::new(move |ctx| {
            ctx.vars[slot] = Value::Int(v);
            Ok(())
        })
    };
    let run = w.host.run_event_route(
        "event_route[test:ev]".into(),
        EventSuspend::Refuse,
        set_x(1),
    );
    let Ok(EventRun::Done(d)) = run else {
        panic!("ran to its end: {run:?}")
    };
    assert_eq!(
        (d.end, &d.ctx.vars[slot]),
        (RouteEnd::Returned(1), &Value::Int(2))
    );
    assert_eq!(d.ctx.route_type, RouteType::EVENT);
    let cb = w.host.find_route("route[CALLBACK]").expect("found once");
    let run = w
        .host
        .run_event_route(cb.into(), EventSuspend::Refuse, set_x(5));
    assert!(matches!(run, Ok(EventRun::Done(d)) if d.end == RouteEnd::Drop));
    assert_eq!(w.out(), ["ev 1", "cb 5"]);
    // No such route: nothing is built, nothing runs.
    let run = w.host.run_event_route(
        "event_route[test:none]".into(),
        EventSuspend::Refuse,
        Box::new(|_| panic!("built for no route")),
    );
    assert_eq!(
        run.unwrap_err(),
        RunError::NoRoute("event_route[test:none]".into())
    );
    assert_eq!(w.host.find_route("event_route[test:none]"), None);
    // A builder that refuses: the route does not run.
    let run = w.host.run_event_route(
        "event_route[test:ev]".into(),
        EventSuspend::Refuse,
        Box::new(|_| Err("unparsable".into())),
    );
    assert_eq!(run.unwrap_err(), RunError::NotBuilt("unparsable".into()));
    assert!(w.out().is_empty());
}

#[test]
fn what_an_async_call_may_do_is_decided_by_the_transaction_not_the_route_type() {
    let w = world("request_route { here(); }\nevent_route[test:ev] { here(); }\n");
    w.receive("INVITE", 1);
    w.receive("ACK", 1);
    for suspend in [EventSuspend::Refuse, EventSuspend::Park] {
        let run =
            w.host
                .run_event_route("event_route[test:ev]".into(), suspend, Box::new(|_| Ok(())));
        assert!(matches!(run, Ok(EventRun::Done(_))));
    }
    assert_eq!(w.out(), ["Transaction", "No", "No", "Event"]);
    assert_eq!(
        w.host.may_suspend(&w.program.new_ctx(RouteType::REQUEST)),
        SuspendHere::No
    );
}

#[tokio::test]
async fn a_parked_event_run_resumes_once_through_the_host_by_its_id() {
    let w = world(
        "event_route[test:ev] { $var(a) = 1; wait(); $var(a) = 2; }\n\
         route[AFTER] { out(\"after $var(a) $rc\"); $var(a) = 3; }\n",
    );
    let after = w.host.find_route("route[AFTER]").unwrap();
    let run = w.host.run_event_route(
        "event_route[test:ev]".into(),
        EventSuspend::Park,
        Box::new(|_| Ok(())),
    );
    let Ok(EventRun::Pending(pending)) = run else {
        panic!("parked: {run:?}")
    };
    let id = w.id();
    assert!(matches!(id, SuspensionId::Event(_)), "{id:?}");
    let fill =
        |rc: i32| -> siphon_script::api::ResumeFill { Box::new(move |ctx| ctx.last_rc = rc) };
    assert!(w.host.resume(id, after, fill(7)));
    assert!(!w.host.resume(id, after, fill(8)), "exactly once");
    let d = pending.await.expect("ended");
    let a = w.program.var_slot("a").unwrap();
    assert_eq!(d.ctx.vars[a], Value::Int(3));
    assert_eq!(w.out(), ["after 1 7"]);
    assert_eq!(SuspensionId::of(&d.ctx), None, "no longer parked");
    // The repeated resume was the event runs', not tm's.
    assert_eq!(w.late_tx_resumes(), 0);
}

#[test]
fn a_suspended_transaction_resumes_once_through_the_host_by_its_id() {
    let w = world(
        "request_route { wait(); out(\"not reached\"); }\n\
         route[AFTER] { out(\"resumed $rc $var(x)\"); }\n",
    );
    let after = w.host.find_route("route[AFTER]").unwrap();
    w.receive("MESSAGE", 2);
    let id = w.id();
    assert!(matches!(id, SuspensionId::Transaction(_)), "{id:?}");
    let fill = |ctx: &mut siphon_script::Ctx| ctx.last_rc = 9;
    assert!(w.host.resume(id, after, Box::new(fill)));
    assert_eq!(w.out(), ["resumed 9 0"]);
    assert!(!w.host.resume(id, after, Box::new(fill)), "exactly once");
    assert_eq!(w.late_tx_resumes(), 1);
    // A number no event run was parked as.
    assert!(
        !w.host
            .resume(SuspensionId::Event(u64::MAX), after, Box::new(fill))
    );
    assert!(w.out().is_empty());
    assert_eq!(w.late_tx_resumes(), 1);
}
