//! The per-execution context: what a route run reads and writes.

use crate::value::Value;
use std::any::{Any, TypeId};
use std::sync::Arc;

/// Kinds of route a context runs in; a function declares where it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteType(pub u16);

impl RouteType {
    /// `request_route` (and OpenSIPS' main `route`).
    pub const REQUEST: RouteType = RouteType(1);
    /// `failure_route[X]`, and routes resumed after a suspension.
    pub const FAILURE: RouteType = RouteType(2);
    /// `onreply_route`, `reply_route`.
    pub const ONREPLY: RouteType = RouteType(4);
    /// `branch_route[X]`.
    pub const BRANCH: RouteType = RouteType(8);
    /// `event_route[…]`.
    pub const EVENT: RouteType = RouteType(16);
    /// `startup_route`.
    pub const STARTUP: RouteType = RouteType(32);
    /// Every kind.
    pub const ANY: RouteType = RouteType(0xffff);

    /// Union.
    pub const fn or(self, o: RouteType) -> RouteType {
        RouteType(self.0 | o.0)
    }
    /// Whether any kind in `o` is in `self`.
    pub const fn intersects(self, o: RouteType) -> bool {
        self.0 & o.0 != 0
    }
    /// Names of the kinds in the set, for messages.
    pub fn names(self) -> Vec<&'static str> {
        let all = [
            (Self::REQUEST, "request_route"),
            (Self::FAILURE, "failure_route"),
            (Self::ONREPLY, "onreply_route"),
            (Self::BRANCH, "branch_route"),
            (Self::EVENT, "event_route"),
            (Self::STARTUP, "startup_route"),
        ];
        all.iter()
            .filter(|(t, _)| self.intersects(*t))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// Typed slots that the core and modules attach to a context: the SIP message,
/// the transaction, the evapi connection of an event route, an HTTP request…
///
/// A short vector, not a map: a context carries one to three of them.
#[derive(Default)]
pub struct Extensions {
    items: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl Extensions {
    /// Attaches a value, replacing one of the same type.
    pub fn insert<T: Any + Send>(&mut self, v: T) {
        let id = TypeId::of::<T>();
        if let Some(slot) = self.items.iter_mut().find(|(t, _)| *t == id) {
            slot.1 = Box::new(v);
        } else {
            self.items.push((id, Box::new(v)));
        }
    }
    /// The attached value of type `T`.
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.items
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, b)| b.downcast_ref())
    }
    /// The attached value of type `T`, mutable.
    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.items
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, b)| b.downcast_mut())
    }
    /// Detaches the value of type `T`.
    pub fn remove<T: Any + Send>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let i = self.items.iter().position(|(t, _)| *t == id)?;
        self.items.swap_remove(i).1.downcast().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} items)", self.items.len())
    }
}

/// AVPs: named values, several per name, newest first when indexed
/// (`$avp(x)` and `$avp(x)[0]` are the last one added). They belong to the
/// transaction and survive suspension.
#[derive(Debug, Default, Clone)]
pub struct Avps {
    /// (name, value) in insertion order.
    items: Vec<(Arc<str>, Value)>,
}

impl Avps {
    /// Adds a value under `name` (becomes index 0).
    pub fn push(&mut self, name: &Arc<str>, v: Value) {
        self.items.push((name.clone(), v));
    }
    /// Removes every value of `name`.
    pub fn remove_all(&mut self, name: &str) {
        self.items.retain(|(n, _)| &**n != name);
    }
    /// Replaces every value of `name` by `v`.
    pub fn replace(&mut self, name: &Arc<str>, v: Value) {
        self.remove_all(name);
        self.push(name, v);
    }
    /// The value at `idx` (0 = newest; negative counts from the oldest).
    pub fn get(&self, name: &str, idx: i64) -> Option<&Value> {
        let mut it = self.items.iter().filter(|(n, _)| &**n == name);
        if idx >= 0 {
            it.rev().nth(idx as usize).map(|(_, v)| v)
        } else {
            it.nth((-idx - 1) as usize).map(|(_, v)| v)
        }
    }
    /// Every value of `name`, oldest first (the order they were added).
    pub fn all(&self, name: &str) -> Vec<Value> {
        self.items
            .iter()
            .filter(|(n, _)| &**n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// Sets the value at `idx` (0 = newest) in place; false if there is none.
    pub fn set_at(&mut self, name: &str, idx: i64, v: Value) -> bool {
        let positions: Vec<usize> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| &**n == name)
            .map(|(i, _)| i)
            .collect();
        let pos = if idx >= 0 {
            positions.iter().rev().nth(idx as usize)
        } else {
            positions.get((-idx - 1) as usize)
        };
        match pos {
            Some(&p) => {
                self.items[p].1 = v;
                true
            }
            None => false,
        }
    }
    /// Number of values in all.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Everything one run of the script works on. Owned, so the core can park it
/// with a suspended transaction and hand it back when the transaction resumes.
#[derive(Debug)]
pub struct Ctx {
    /// The kind of route being run.
    pub route_type: RouteType,
    /// `$var(…)` values by slot (slots are assigned when the script is compiled).
    pub vars: Vec<Value>,
    /// `$avp(…)`.
    pub avps: Avps,
    /// Message flags (`setflag`), 0..63.
    pub flags: u64,
    /// `$rc`: the code of the last function or route.
    pub last_rc: i32,
    /// Set by `drop`.
    pub dropped: bool,
    /// What the core and modules attach.
    pub ext: Extensions,
    /// Whether an async function may suspend this execution: the context
    /// carries a SIP request that has or can get a transaction. Kamailio
    /// decides by the transaction, not by the route type, so a resumed route
    /// or a failure route can suspend again; the core sets it.
    pub may_suspend: bool,
    pub(crate) suspend: Option<crate::api::Suspend>,
    /// What to call when the current script run ends ([`Ctx::at_run_end`]).
    run_end: Vec<RunEndHook>,
}

/// How a script run ended, for what a function holds until then
/// ([`Ctx::at_run_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The route returned, exited, dropped or ran to its end.
    Finished,
    /// A function suspended the transaction: the script goes on in another
    /// run, later, maybe on another thread.
    Suspended,
}

/// Called once when the script run that registered it ends.
pub type RunEndHook = fn(&mut Ctx, RunEnd);

impl Ctx {
    /// A fresh context with `n_vars` unset variables.
    pub fn new(route_type: RouteType, n_vars: usize) -> Ctx {
        Ctx {
            route_type,
            vars: vec![Value::Int(0); n_vars],
            avps: Avps::default(),
            flags: 0,
            last_rc: 1,
            dropped: false,
            ext: Extensions::default(),
            may_suspend: false,
            suspend: None,
            run_end: Vec::new(),
        }
    }

    /// Calls `hook` when the current script run ends or suspends, once
    /// however often it is asked. What a function holds for the rest of the
    /// run (htable's `sht_lock`) is given back there, whichever way the
    /// route ends: a run holds its worker thread, and nothing it holds may
    /// outlive that.
    pub fn at_run_end(&mut self, hook: RunEndHook) {
        if !self.run_end.iter().any(|h| std::ptr::fn_addr_eq(*h, hook)) {
            self.run_end.push(hook);
        }
    }

    /// The run ended: its hooks are called (and forgotten).
    pub(crate) fn run_ended(&mut self, how: RunEnd) {
        for hook in std::mem::take(&mut self.run_end) {
            hook(self, how);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avps_are_a_stack_per_name() {
        let mut a = Avps::default();
        let x: Arc<str> = "x".into();
        let y: Arc<str> = "y".into();
        a.push(&x, Value::Int(3));
        a.push(&y, Value::Int(9));
        a.push(&x, Value::Int(5));
        assert_eq!(a.get("x", 0), Some(&Value::Int(5)));
        assert_eq!(a.get("x", 1), Some(&Value::Int(3)));
        assert_eq!(a.get("x", -1), Some(&Value::Int(3)));
        assert_eq!(a.all("x"), vec![Value::Int(3), Value::Int(5)]);
        assert!(a.set_at("x", 1, Value::Int(4)));
        assert_eq!(a.all("x"), vec![Value::Int(4), Value::Int(5)]);
        a.remove_all("x");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn run_end_hooks_run_once_per_run() {
        fn count(ctx: &mut Ctx, how: RunEnd) {
            ctx.last_rc += if how == RunEnd::Suspended { 100 } else { 1 };
        }
        let mut c = Ctx::new(RouteType::REQUEST, 0);
        c.last_rc = 0;
        c.at_run_end(count);
        c.at_run_end(count);
        c.run_ended(RunEnd::Finished);
        c.run_ended(RunEnd::Finished);
        assert_eq!(c.last_rc, 1, "once, and forgotten after the run");
        c.at_run_end(count);
        c.run_ended(RunEnd::Suspended);
        assert_eq!(c.last_rc, 101);
    }

    #[test]
    fn extensions_by_type() {
        let mut e = Extensions::default();
        e.insert(5u32);
        e.insert("s".to_string());
        e.insert(6u32);
        assert_eq!(e.get::<u32>(), Some(&6));
        *e.get_mut::<String>().unwrap() += "t";
        assert_eq!(e.remove::<String>().as_deref(), Some("st"));
        assert!(e.get::<String>().is_none());
    }
}
