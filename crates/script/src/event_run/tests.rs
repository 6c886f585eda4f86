//! The parking of event runs: answers during the start, a second
//! suspension after a resume, the limit.

use super::*;
use crate::api::{FnResult, Suspend, SuspensionId};
use crate::{ArgKind, FunctionSpec, Registry, Value, load_str};

/// What `wait()` does with its resumer.
type Starts = Arc<Mutex<Vec<(u64, Box<dyn Resumer>)>>>;

/// The runner `wait_answered()` answers through, once the test made it.
type RunnerSlot = Arc<Mutex<Option<Arc<EventRunner>>>>;

/// A program whose `wait()` suspends and hands its resumer (with the
/// number the run was parked as) to the test; `wait_answered()` answers
/// twice from its start, before the run is parked.
fn program(cfg: &str) -> (Arc<Program>, Starts, RunnerSlot) {
    let starts: Starts = Default::default();
    let runner: RunnerSlot = Default::default();
    let mut reg = Registry::new();
    let s = starts.clone();
    reg.core_functions
        .push(FunctionSpec::new("wait", &[], move |_, _| {
            let s = s.clone();
            FnResult::Suspend(Suspend {
                start: Box::new(move |ctx, resumer| {
                    let id = parked_as(ctx).expect("parked with a number");
                    s.lock().unwrap().push((id, resumer));
                }),
            })
        }));
    let r = runner.clone();
    reg.core_functions.push(FunctionSpec::new(
        "wait_answered",
        &[ArgKind::Str],
        move |ex, a| {
            let after = ex.prog.find_route(&a.text(0, ex)).expect("route");
            let r = r.clone();
            FnResult::Suspend(Suspend {
                start: Box::new(move |ctx, _resumer| {
                    let id = parked_as(ctx).expect("parked with a number");
                    let runner = r.lock().unwrap().clone().expect("runner");
                    let fill = |v: i64| -> ResumeFill {
                        Box::new(move |ctx: &mut Ctx| ctx.last_rc = v as i32)
                    };
                    assert!(
                        runner.resume(id, after, fill(7)),
                        "the first answer is taken"
                    );
                    assert!(!runner.resume(id, after, fill(8)), "a second one is late");
                }),
            })
        },
    ));
    let l = load_str("t.cfg", cfg, &Default::default(), &reg);
    let p = l
        .program
        .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
    (p.into_shared(), starts, runner)
}

fn var(p: &Program, ctx: &Ctx, name: &str) -> Value {
    ctx.vars[p.var_slot(name).expect("var")].clone()
}

fn nothing() -> BuildCtx<'static> {
    Box::new(|_| Ok(()))
}

#[test]
fn an_answer_during_the_start_goes_on_at_once_and_only_once() {
    let (p, _, slot) = program(
        "event_route[t:ev] { $var(a) = 1; wait_answered(\"route[AFTER]\"); $var(a) = 2; }\n\
         route[AFTER] { $var(b) = $rc; }\n",
    );
    let runner = EventRunner::new(p.clone());
    *slot.lock().unwrap() = Some(runner.clone());
    let run = runner.run("event_route[t:ev]".into(), EventSuspend::Park, nothing());
    let Ok(EventRun::Done(d)) = run else {
        panic!("ended before the call returned: {run:?}")
    };
    assert_eq!(
        var(&p, &d.ctx, "a"),
        Value::Int(1),
        "the rest of the route does not run"
    );
    assert_eq!(
        var(&p, &d.ctx, "b"),
        Value::Int(7),
        "the first answer's fill ran"
    );
    assert_eq!((runner.parked(), runner.late_resumes()), (0, 1));
    assert_eq!(SuspensionId::of(&d.ctx), None, "no longer parked");
}

#[test]
fn a_resumed_route_can_park_again_and_its_end_comes_once_it_ends() {
    let (p, starts, _) = program(
        "event_route[t:ev] { $var(a) = 1; wait(); }\n\
         route[AGAIN] { $var(a) = $var(a) + 1; if ($var(a) < 3) { wait(); } }\n",
    );
    let again = p.find_route("route[AGAIN]").unwrap();
    let runner = EventRunner::new(p.clone());
    let run = runner.run("event_route[t:ev]".into(), EventSuspend::Park, nothing());
    let Ok(EventRun::Pending(mut pending)) = run else {
        panic!("parked: {run:?}")
    };
    for round in 0..2 {
        assert!(
            pending.0.try_recv().is_err(),
            "still parked in round {round}"
        );
        let (id, resumer) = starts.lock().unwrap().pop().expect("a start");
        assert_eq!(runner.parked(), 1);
        assert!(resumer.resume(again, Box::new(|_| {})));
        assert!(!runner.resume(id, again, Box::new(|_| {})), "exactly once");
    }
    let d = pending.0.try_recv().expect("ended after the second resume");
    assert_eq!(var(&p, &d.ctx, "a"), Value::Int(3));
    assert_eq!(d.end, RouteEnd::Returned(1));
    assert_eq!((runner.parked(), runner.late_resumes()), (0, 2));
}

#[test]
fn beyond_the_limit_a_suspension_ends_its_run_and_the_start_never_runs() {
    let (p, starts, _) = program("event_route[t:ev] { wait(); $var(a) = 1; }\n");
    let runner = EventRunner::with_limit(p.clone(), 1);
    let first = runner.run("event_route[t:ev]".into(), EventSuspend::Park, nothing());
    assert!(matches!(first, Ok(EventRun::Pending(_))));
    let second = runner.run("event_route[t:ev]".into(), EventSuspend::Park, nothing());
    let Ok(EventRun::Done(d)) = second else {
        panic!("ended: {second:?}")
    };
    assert_eq!(d.end, RouteEnd::Exit);
    assert_eq!(var(&p, &d.ctx, "a"), Value::Int(0));
    assert_eq!((starts.lock().unwrap().len(), runner.refused()), (1, 1));
}

#[test]
fn refused_runs_do_not_suspend_and_names_are_kamailios() {
    let (p, starts, _) =
        program("event_route[t:ev] { wait(); $var(a) = $rc; }\nroute[\"Q\"] { $var(a) = 5; }\n");
    let runner = EventRunner::new(p.clone());
    let Ok(EventRun::Done(d)) =
        runner.run("event_route[t:ev]".into(), EventSuspend::Refuse, nothing())
    else {
        panic!("ran to its end")
    };
    assert_eq!(
        var(&p, &d.ctx, "a"),
        Value::Int(-1),
        "the async call failed"
    );
    assert!(starts.lock().unwrap().is_empty());
    for name in ["route[Q]", "route[\"Q\"]", " route [ Q ] "] {
        assert!(p.find_route(name).is_some(), "{name}");
    }
    for name in [
        "Q",
        "t:ev",
        "event_route[t:none]",
        "failure_route[Q]",
        "route[Q",
    ] {
        assert_eq!(p.find_route(name), None, "{name}");
    }
    assert!(!p.has_route(RouteId(1000)));
    let err = runner.run(RouteId(1000).into(), EventSuspend::Refuse, nothing());
    assert_eq!(err.unwrap_err(), RunError::NoRoute("route #1000".into()));
}
