//! `sht_lock(t=>key)` / `sht_unlock(t=>key)`: the script's locks on table
//! slots, as Kamailio's — one lock per slot (`core_hash(key)` masked by the
//! table's size, so keys that share a slot share its lock), re-entrant for
//! the worker that holds it, and every `$sht…` access to a slot that
//! another worker holds waits for it, as Kamailio's slot locks make them.
//!
//! A route run is synchronous: it holds its worker thread from start to
//! end, so the owner of a lock is the thread (Kamailio's process), and a
//! lock is never held across anything that waits. What keeps a worker from
//! hanging:
//! - the route's locks are released when its run ends or suspends (the
//!   host calls [`release_at_run_end`]; a warning names each one the
//!   script left locked), and when the context is dropped (a panic);
//! - before waiting, the wait-for chain is followed (holder → the slot it
//!   waits for → that slot's holder …): a wait that would close a cycle
//!   (two routes locking two slots in opposite orders) is refused instead
//!   (`sht_lock` returns -1, a `$sht` access goes ahead unserialised), with
//!   an error;
//! - on the multi-threaded runtime the wait is `block_in_place`, so the
//!   worker's other tasks move to another thread meanwhile.
//!
//! A slot no route holds costs one atomic load per `$sht` access.
//!
//! The order between a lock and the table: an access reads whether the
//! table has held slots while it holds the table's mutex, and `sht_lock`,
//! once it has its slot, takes and gives back the table's mutex: an access
//! that saw no held slot has ended before the lock holder goes on. The lock
//! state is only ever taken inside a table's mutex, never the other way.

use siphon_script::{Ctx, RunEnd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

/// A slot of a table: (the table's index, the slot).
pub type SlotId = (usize, u32);

#[derive(Debug)]
struct Held {
    owner: ThreadId,
    /// How many times the owner locked it (re-entrant).
    depth: u32,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<SlotId, Held>,
    /// What each waiting thread waits for.
    waiting: HashMap<ThreadId, SlotId>,
}

impl State {
    /// Whether `me` waiting for a slot held by `holder` closes a cycle.
    fn closes_cycle(&self, me: ThreadId, mut holder: ThreadId) -> bool {
        for _ in 0..=self.waiting.len() {
            if holder == me {
                return true;
            }
            let Some(slot) = self.waiting.get(&holder) else {
                return false;
            };
            let Some(h) = self.held.get(slot) else {
                return false;
            };
            holder = h.owner;
        }
        false
    }
}

/// The wait was refused: it would never end (a lock-order cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlock;

/// The slot locks of every table of the module.
#[derive(Debug)]
pub struct SlotLocks {
    state: Mutex<State>,
    freed: Condvar,
    /// Slots held per table: 0 lets `$sht` accesses skip the lock table.
    held_in: Vec<AtomicUsize>,
}

impl SlotLocks {
    /// Locks for `tables` tables.
    pub fn new(tables: usize) -> Self {
        SlotLocks {
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
            held_in: (0..tables).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no other thread holds `slot`; then takes it (`take`)
    /// or not. `Err` instead of a wait that would never end.
    fn wait_then(&self, slot: SlotId, take: bool) -> Result<(), Deadlock> {
        let me = std::thread::current().id();
        let mut st = self.state();
        loop {
            match st.held.get_mut(&slot) {
                Some(h) if h.owner == me => {
                    if take {
                        h.depth += 1;
                    }
                    return Ok(());
                }
                Some(h) => {
                    let holder = h.owner;
                    if st.closes_cycle(me, holder) {
                        return Err(Deadlock);
                    }
                    st.waiting.insert(me, slot);
                    st = block(|| self.freed.wait(st).unwrap_or_else(|e| e.into_inner()));
                    st.waiting.remove(&me);
                }
                None => {
                    if take {
                        st.held.insert(
                            slot,
                            Held {
                                owner: me,
                                depth: 1,
                            },
                        );
                        self.held_in[slot.0].fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Takes `slot` for this thread (again, if it holds it already).
    pub fn lock(&self, slot: SlotId) -> Result<(), Deadlock> {
        self.wait_then(slot, true)
    }

    /// Before a `$sht` access: waits while another thread holds `slot`.
    pub fn pass(&self, slot: SlotId) -> Result<(), Deadlock> {
        if self.held_in[slot.0].load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.wait_then(slot, false)
    }

    /// Whether any slot of `table` is held (the `$sht` fast path).
    pub fn any_held(&self, table: usize) -> bool {
        self.held_in[table].load(Ordering::Relaxed) != 0
    }

    /// Gives `slot` back once, for `owner`; false when `owner` does not
    /// hold it.
    pub fn unlock_for(&self, owner: ThreadId, slot: SlotId) -> bool {
        let mut st = self.state();
        let Some(h) = st.held.get_mut(&slot).filter(|h| h.owner == owner) else {
            return false;
        };
        h.depth -= 1;
        if h.depth == 0 {
            st.held.remove(&slot);
            self.held_in[slot.0].fetch_sub(1, Ordering::Relaxed);
            self.freed.notify_all();
        }
        true
    }

    /// The slots of `table` other threads hold, sorted.
    pub fn held_by_others(&self, table: usize) -> Vec<u32> {
        let me = std::thread::current().id();
        let mut held: Vec<u32> = self
            .state()
            .held
            .iter()
            .filter(|(slot, h)| slot.0 == table && h.owner != me)
            .map(|(slot, _)| slot.1)
            .collect();
        held.sort_unstable();
        held
    }

    /// Whether another thread holds `slot`.
    pub fn held_by_other(&self, slot: SlotId) -> bool {
        let me = std::thread::current().id();
        self.state().held.get(&slot).is_some_and(|h| h.owner != me)
    }

    /// Threads waiting now (for tests: a wait is observed, not slept on).
    pub fn waiters(&self) -> usize {
        self.state().waiting.len()
    }
}

/// Runs a blocking wait; on the multi-threaded runtime the worker's other
/// tasks are handed to another thread first.
fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What a route run holds: each `sht_lock` not yet unlocked, with the key
/// as written for the warnings.
pub struct RunLocks {
    locks: Arc<SlotLocks>,
    owner: ThreadId,
    held: Vec<(SlotId, String)>,
}

impl RunLocks {
    /// This run's locks, taken on the current thread.
    pub fn new(locks: Arc<SlotLocks>) -> Self {
        RunLocks {
            locks,
            owner: std::thread::current().id(),
            held: Vec::new(),
        }
    }

    /// Records one `sht_lock` of `slot` (`what`: `t=>key`).
    pub fn push(&mut self, slot: SlotId, what: String) {
        self.held.push((slot, what));
    }

    /// Gives back this run's last lock of `slot`; false when it holds none.
    pub fn unlock(&mut self, slot: SlotId) -> bool {
        let Some(i) = self.held.iter().rposition(|(s, _)| *s == slot) else {
            return false;
        };
        self.held.remove(i);
        self.locks.unlock_for(self.owner, slot)
    }

    /// Gives back everything; the keys that were still locked.
    pub fn release_all(&mut self) -> Vec<String> {
        let held = std::mem::take(&mut self.held);
        held.into_iter()
            .rev()
            .map(|(slot, what)| {
                self.locks.unlock_for(self.owner, slot);
                what
            })
            .collect()
    }
}

impl Drop for RunLocks {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The host's call when a route run ends or suspends
/// ([`Ctx::at_run_end`]): the locks the script left are released, each
/// with a warning.
pub fn release_at_run_end(ctx: &mut Ctx, how: RunEnd) {
    // The next run (a failure route, a resumed one) starts with none, on
    // whichever thread it runs.
    let Some(mut run) = ctx.ext.remove::<RunLocks>() else {
        return;
    };
    for what in run.release_all() {
        match how {
            RunEnd::Suspended => tracing::warn!(
                target: "script",
                "sht_lock(\"{what}\") released: the route suspended (a lock never spans an asynchronous wait; lock again in the resumed route)"
            ),
            RunEnd::Finished => tracing::warn!(
                target: "script",
                "sht_lock(\"{what}\") released: the route ended without sht_unlock"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Waits (polling a state, not a clock) until `n` threads wait.
    fn until_waiting(l: &SlotLocks, n: usize) {
        while l.waiters() != n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn reentrant_per_thread_and_released_in_full() {
        let l = SlotLocks::new(2);
        assert!(!l.any_held(0));
        l.lock((0, 3)).unwrap();
        l.lock((0, 3)).unwrap();
        assert!(l.any_held(0) && !l.any_held(1));
        let me = std::thread::current().id();
        assert!(l.unlock_for(me, (0, 3)));
        assert!(l.any_held(0), "locked twice, unlocked once");
        assert!(l.unlock_for(me, (0, 3)));
        assert!(!l.any_held(0));
        assert!(!l.unlock_for(me, (0, 3)), "not held");
        // Holding a slot, this thread's own $sht accesses go through.
        l.lock((1, 0)).unwrap();
        l.pass((1, 0)).unwrap();
        assert!(l.unlock_for(me, (1, 0)));
    }

    #[test]
    fn another_thread_waits_until_the_holder_unlocks() {
        let l = Arc::new(SlotLocks::new(1));
        l.lock((0, 1)).unwrap();
        let (tx, rx) = mpsc::channel();
        let l2 = l.clone();
        let t = std::thread::spawn(move || {
            l2.pass((0, 1)).unwrap();
            tx.send("passed").unwrap();
            l2.lock((0, 1)).unwrap();
            l2.unlock_for(std::thread::current().id(), (0, 1))
        });
        until_waiting(&l, 1);
        // Still waiting: the holder has not unlocked.
        assert!(rx.try_recv().is_err());
        // Another slot of the table is free meanwhile.
        l.pass((0, 2)).unwrap();
        assert!(l.unlock_for(std::thread::current().id(), (0, 1)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("passed"));
        assert!(t.join().unwrap());
        assert!(!l.any_held(0));
    }

    #[test]
    fn opposite_lock_orders_are_refused_not_deadlocked() {
        let l = Arc::new(SlotLocks::new(1));
        l.lock((0, 1)).unwrap();
        let (tx, rx) = mpsc::channel();
        let l2 = l.clone();
        let t = std::thread::spawn(move || {
            l2.lock((0, 2)).unwrap();
            tx.send(()).unwrap();
            // Waits for slot 1, held by the test thread.
            let got = l2.lock((0, 1));
            let me = std::thread::current().id();
            if got.is_ok() {
                l2.unlock_for(me, (0, 1));
            }
            l2.unlock_for(me, (0, 2));
            got
        });
        rx.recv().unwrap();
        until_waiting(&l, 1);
        // Waiting for slot 2 would close the cycle: refused.
        assert_eq!(l.lock((0, 2)), Err(Deadlock));
        assert_eq!(l.pass((0, 2)), Err(Deadlock));
        // Our unlock lets the other one through.
        l.unlock_for(std::thread::current().id(), (0, 1));
        assert_eq!(t.join().unwrap(), Ok(()));
        assert!(!l.any_held(0));
    }

    #[test]
    fn a_runs_locks_go_at_its_end_and_on_drop() {
        let l = Arc::new(SlotLocks::new(1));
        let mut ctx = Ctx::new(siphon_script::RouteType::REQUEST, 0);
        let mut run = RunLocks::new(l.clone());
        l.lock((0, 1)).unwrap();
        run.push((0, 1), "t=>a".into());
        l.lock((0, 1)).unwrap();
        run.push((0, 1), "t=>a".into());
        assert!(run.unlock((0, 1)));
        ctx.ext.insert(run);
        assert!(l.any_held(0));
        release_at_run_end(&mut ctx, RunEnd::Suspended);
        assert!(!l.any_held(0));
        let mut run = RunLocks::new(l.clone());
        l.lock((0, 4)).unwrap();
        run.push((0, 4), "t=>b".into());
        drop(run);
        assert!(!l.any_held(0));
    }
}
