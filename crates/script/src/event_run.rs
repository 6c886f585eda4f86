//! Routes a host runs for modules ([`crate::api::Host::run_event_route`]),
//! and the event runs it parks when an async call suspends them.
//!
//! A host keeps one [`EventRunner`] over the shared program and hands its
//! module API methods to it, so no module keeps the program to run routes
//! itself. A run started with [`EventSuspend::Park`] that an async call
//! suspends is parked here under a number
//! ([`crate::api::SuspensionId::Event`]) until its [`Resumer`] or
//! [`crate::api::Host::resume`] continues it: exactly once, like a
//! suspended transaction, including an answer that comes while the call's
//! start still runs (it waits until the start returns, then the route goes
//! on at once). No clock is read and no task spawned: a resumed route runs
//! on the resuming thread, and a parked run's waiter gets its end through
//! a [`PendingRun`]. At most [`MAX_PARKED`] runs wait; a suspension beyond
//! that ends its run ([`RouteEnd::Exit`]) without starting its I/O.

use crate::api::{
    BuildCtx, EventRun, EventSuspend, PendingRun, ResumeFill, Resumer, RouteDone, RouteEnd,
    RouteRef, RunError, SuspendHere,
};
use crate::{Ctx, Outcome, Program, RouteId, RouteType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// How many event runs may wait parked at once ([`EventRunner::new`]);
/// beyond it a suspension ends its run instead ([`RouteEnd::Exit`]).
pub const MAX_PARKED: usize = 65_536;

/// Marks a context run with [`EventSuspend::Park`]; `id` while it is parked.
#[derive(Debug, Clone, Copy)]
struct EventPark {
    id: Option<u64>,
}

/// What an async call may do in `ctx` ([`crate::api::Host::may_suspend`]'s
/// answer for any host): `Ctx::may_suspend` is set by whoever made the
/// context, the host's core for a SIP request, [`EventRunner`] for an event
/// run that may park.
pub(crate) fn suspend_here(ctx: &Ctx) -> SuspendHere {
    if !ctx.may_suspend {
        SuspendHere::No
    } else if ctx.ext.get::<EventPark>().is_some() {
        SuspendHere::Event
    } else {
        SuspendHere::Transaction
    }
}

/// The number of the parked run `ctx` is, if it is one.
pub(crate) fn parked_as(ctx: &Ctx) -> Option<u64> {
    ctx.ext.get::<EventPark>()?.id
}

/// Who gets a run's end.
enum Waiter {
    /// The module's call to [`EventRunner::run`], still on the stack.
    Caller,
    /// A [`PendingRun`] (the run was parked once).
    Channel(oneshot::Sender<RouteDone>),
}

/// A suspended event run.
enum Waiting {
    /// The async call's start runs; an answer that comes meanwhile waits here.
    Starting {
        early: Option<(RouteId, ResumeFill)>,
        waiter: Waiter,
    },
    /// Parked until resumed.
    Parked {
        ctx: Box<Ctx>,
        done: oneshot::Sender<RouteDone>,
    },
}

/// Runs routes for modules over one program and keeps the event runs that
/// async calls suspended.
pub struct EventRunner {
    program: Arc<Program>,
    parked: Mutex<HashMap<u64, Waiting>>,
    next: AtomicU64,
    limit: usize,
    /// Resumes that found nothing (late, repeated, or not ours).
    late: AtomicU64,
    /// Suspensions ended because [`EventRunner::limit`] runs were parked.
    refused: AtomicU64,
}

impl std::fmt::Debug for EventRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRunner")
            .field("parked", &self.parked())
            .finish()
    }
}

/// The [`Resumer`] of a parked event run.
struct EventResumer {
    runner: Arc<EventRunner>,
    id: u64,
}

impl Resumer for EventResumer {
    fn resume(self: Box<Self>, route: RouteId, fill: ResumeFill) -> bool {
        self.runner.resume(self.id, route, fill)
    }
}

impl EventRunner {
    /// A runner over `program`, parking at most [`MAX_PARKED`] runs.
    pub fn new(program: Arc<Program>) -> Arc<EventRunner> {
        Self::with_limit(program, MAX_PARKED)
    }

    /// A runner over `program`, parking at most `limit` runs.
    pub fn with_limit(program: Arc<Program>, limit: usize) -> Arc<EventRunner> {
        Arc::new(EventRunner {
            program,
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            limit,
            late: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A route by its Kamailio name ([`Program::find_route`]).
    pub fn find(&self, name: &str) -> Option<RouteId> {
        self.program.find_route(name)
    }

    /// Event runs parked now.
    pub fn parked(&self) -> usize {
        self.lock().len()
    }

    /// Resumes that found no parked run: late, repeated, or not ours.
    pub fn late_resumes(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Suspensions that ended their run because the limit of parked runs was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Waiting>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`crate::api::Host::run_event_route`].
    pub fn run(
        self: &Arc<Self>,
        route: RouteRef<'_>,
        suspend: EventSuspend,
        build: BuildCtx<'_>,
    ) -> Result<EventRun, RunError> {
        let id = match route {
            RouteRef::Name(name) => self.find(name),
            RouteRef::Id(id) => self.program.has_route(id).then_some(id),
        }
        .ok_or_else(|| RunError::NoRoute(route.to_string()))?;
        let mut ctx = self.program.new_ctx(RouteType::EVENT);
        if suspend == EventSuspend::Park {
            ctx.may_suspend = true;
            ctx.ext.insert(EventPark { id: None });
        }
        build(&mut ctx).map_err(RunError::NotBuilt)?;
        Ok(match self.drive(id, ctx, Waiter::Caller) {
            Driven::Done(d) => EventRun::Done(d),
            // A run parked with its caller waiting always has a new channel.
            Driven::Parked(p) => {
                EventRun::Pending(p.unwrap_or_else(|| PendingRun(oneshot::channel().1)))
            }
        })
    }

    /// [`crate::api::Host::resume`] for [`crate::api::SuspensionId::Event`]`(id)`.
    pub fn resume(self: &Arc<Self>, id: u64, route: RouteId, fill: ResumeFill) -> bool {
        let mut parked = self.lock();
        let (ctx, done) = match parked.remove(&id) {
            Some(Waiting::Parked { ctx, done }) => (ctx, done),
            Some(Waiting::Starting {
                early: None,
                waiter,
            }) => {
                // The start still runs: the route goes on when it returns.
                parked.insert(
                    id,
                    Waiting::Starting {
                        early: Some((route, fill)),
                        waiter,
                    },
                );
                return true;
            }
            Some(starting @ Waiting::Starting { .. }) => {
                parked.insert(id, starting);
                drop(parked);
                self.late.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            None => {
                drop(parked);
                self.late.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("event run {id}: resumed late or twice, or never parked");
                return false;
            }
        };
        drop(parked);
        let mut ctx = *ctx;
        ctx.ext.insert(EventPark { id: None });
        fill(&mut ctx);
        self.drive(route, ctx, Waiter::Channel(done));
        true
    }

    /// Runs `route`, then every route a suspension resumed at once, until
    /// the run ends or parks.
    fn drive(self: &Arc<Self>, mut route: RouteId, mut ctx: Ctx, mut waiter: Waiter) -> Driven {
        let mut pending = None;
        loop {
            let end = match self.program.run(route, &mut ctx) {
                Outcome::Suspended(s) => match self.reserve(waiter) {
                    Ok(id) => {
                        ctx.ext.insert(EventPark { id: Some(id) });
                        let resumer = EventResumer {
                            runner: self.clone(),
                            id,
                        };
                        (s.start)(&mut ctx, Box::new(resumer));
                        match self.park(id, ctx, &mut pending) {
                            Parked::Yes => return Driven::Parked(pending),
                            Parked::Early(c, (r, fill), w) => {
                                (ctx, route, waiter) = (c, r, w);
                                ctx.ext.insert(EventPark { id: None });
                                fill(&mut ctx);
                                continue;
                            }
                        }
                    }
                    Err(w) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "{}: {} event runs are parked already: this one ends instead of waiting",
                            self.program.route_name(route),
                            self.limit
                        );
                        waiter = w;
                        RouteEnd::Exit
                    }
                },
                Outcome::Returned(n) => RouteEnd::Returned(n),
                Outcome::Exit => RouteEnd::Exit,
                Outcome::Drop => RouteEnd::Drop,
            };
            let done = RouteDone { ctx, end };
            return match waiter {
                Waiter::Caller => Driven::Done(done),
                Waiter::Channel(tx) => {
                    // Nobody may wait any more: the run went on regardless.
                    let _ = tx.send(done);
                    Driven::Parked(pending)
                }
            };
        }
    }

    /// A number for a suspension, its start about to run; the waiter back
    /// when the limit is reached.
    fn reserve(&self, waiter: Waiter) -> Result<u64, Waiter> {
        let mut parked = self.lock();
        if parked.len() >= self.limit {
            return Err(waiter);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        parked.insert(
            id,
            Waiting::Starting {
                early: None,
                waiter,
            },
        );
        Ok(id)
    }

    /// Parks `ctx` once its start returned, unless an answer came meanwhile.
    /// Parking a run its caller still waits for makes its [`PendingRun`].
    fn park(&self, id: u64, ctx: Ctx, pending: &mut Option<PendingRun>) -> Parked {
        let mut parked = self.lock();
        let Some(Waiting::Starting { early, waiter }) = parked.remove(&id) else {
            unreachable!("only a resume takes a parked run, and it leaves a starting one")
        };
        if let Some(answer) = early {
            return Parked::Early(ctx, answer, waiter);
        }
        let done = match waiter {
            Waiter::Channel(tx) => tx,
            Waiter::Caller => {
                let (tx, rx) = oneshot::channel();
                *pending = Some(PendingRun(rx));
                tx
            }
        };
        parked.insert(
            id,
            Waiting::Parked {
                ctx: Box::new(ctx),
                done,
            },
        );
        Parked::Yes
    }
}

/// What [`EventRunner::drive`] did.
enum Driven {
    /// The run ended with its caller waiting.
    Done(RouteDone),
    /// The run is parked (with its new [`PendingRun`] if its caller waits),
    /// or ended and its end went to the [`PendingRun`].
    Parked(Option<PendingRun>),
}

/// What [`EventRunner::park`] did.
enum Parked {
    Yes,
    /// An answer came while the start ran: the context, the answer, the waiter.
    Early(Ctx, (RouteId, ResumeFill), Waiter),
}

#[cfg(test)]
mod tests;
