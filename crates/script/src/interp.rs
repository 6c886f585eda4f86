//! The interpreter: runs compiled routes over a [`Ctx`].
//!
//! Synchronous and non-blocking by construction: functions that need I/O
//! suspend the transaction instead of waiting.

use crate::api::{Call, FnResult};
use crate::ctx::{Ctx, RunEnd};
use crate::pv::{Fmt, Pv};
use crate::value::Value;
use crate::{Program, RouteId};
use bytes::Bytes;
use siphon_cfg::ast::BinOp;
use std::sync::Arc;

/// Kamailio's limit on nested `route()` calls.
pub const MAX_ROUTE_DEPTH: u32 = 100;

/// A compiled expression.
pub enum CExpr {
    /// A constant (folded at load).
    Const(Value),
    /// A pseudo-variable read.
    Pv(Pv),
    /// A format string (string literals with PVs).
    Fmt(Fmt),
    /// A function call.
    Call(CallSite),
    /// `route(NAME)`.
    Route(RouteId),
    /// `!e`.
    Not(Box<CExpr>),
    /// `-e`.
    Neg(Box<CExpr>),
    /// `defined $pv`.
    Defined(Box<CExpr>),
    /// A binary operation.
    Bin(BinOp, Box<CExpr>, Box<CExpr>),
    /// `e =~ "literal"` (negated for `!~`).
    Match(Box<CExpr>, Arc<regex::bytes::Regex>, bool),
    /// `e =~ $pv` with a pattern known only at run time.
    DynMatch(Box<CExpr>, Box<CExpr>, bool),
    /// `e == myself` (negated for `!=`).
    Myself(Box<CExpr>, bool),
}

impl std::fmt::Debug for CExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CExpr::Const(v) => write!(f, "Const({v:?})"),
            CExpr::Pv(p) => write!(f, "{p:?}"),
            CExpr::Fmt(x) => write!(f, "{x:?}"),
            CExpr::Call(c) => write!(f, "Call({})", c.name),
            _ => f.write_str("CExpr"),
        }
    }
}

/// A bound function call.
pub struct CallSite {
    /// The function name, for logs.
    pub name: &'static str,
    /// The bound call.
    pub call: Box<dyn Call>,
}

/// A compiled statement.
pub(crate) enum Stmt {
    Expr(CExpr),
    Assign {
        pv: Pv,
        replace: bool,
        value: CExpr,
    },
    If {
        cond: CExpr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    While {
        cond: CExpr,
        body: Vec<Stmt>,
    },
    Switch {
        subject: CExpr,
        labels: Vec<(Value, usize)>,
        default: Option<usize>,
        body: Vec<Stmt>,
    },
    Return(Option<CExpr>),
    Exit,
    Drop,
    Break,
    Block(Vec<Stmt>),
}

/// Control flow out of a statement.
enum Flow {
    Next,
    Break,
    /// `return(n)` from the current route.
    Return(i32),
    /// Stop the whole script (`exit`, `drop`, a function returning 0, a suspension).
    Exit,
}

/// How a run of the script ended.
#[derive(Debug)]
pub enum Outcome {
    /// The route returned (or ran to its end) with this code.
    Returned(i32),
    /// `exit`, or a function returned 0.
    Exit,
    /// `drop`.
    Drop,
    /// A function asked to suspend the transaction; the host must call `start`.
    Suspended(crate::api::Suspend),
}

/// A running script: the program and the context it works on.
pub struct Exec<'a> {
    /// The program.
    pub prog: &'a Program,
    /// The context.
    pub ctx: &'a mut Ctx,
    depth: u32,
}

impl<'a> Exec<'a> {
    /// Starts an execution over `ctx`.
    pub fn new(prog: &'a Program, ctx: &'a mut Ctx) -> Self {
        Exec {
            prog,
            ctx,
            depth: 0,
        }
    }

    /// Runs a route as the top of a script run.
    pub fn run_top(&mut self, route: RouteId) -> Outcome {
        let flow = self.exec_block(&self.prog.routes[route.0 as usize].body);
        self.ctx.run_ended(if self.ctx.suspend.is_some() {
            RunEnd::Suspended
        } else {
            RunEnd::Finished
        });
        if let Some(s) = self.ctx.suspend.take() {
            return Outcome::Suspended(s);
        }
        if self.ctx.dropped {
            return Outcome::Drop;
        }
        match flow {
            Flow::Exit => Outcome::Exit,
            Flow::Return(n) => Outcome::Returned(n),
            Flow::Next | Flow::Break => Outcome::Returned(1),
        }
    }

    /// Calls a route as `route(NAME)` does; returns its code, or `None` when the
    /// script must stop.
    pub fn call_route(&mut self, route: RouteId) -> Option<i32> {
        if self.depth >= MAX_ROUTE_DEPTH {
            tracing::error!(target: "script", route = self.prog.route_name(route), "route() calls nested deeper than {MAX_ROUTE_DEPTH}: stopping the script");
            return None;
        }
        self.depth += 1;
        let flow = self.exec_block(&self.prog.routes[route.0 as usize].body);
        self.depth -= 1;
        match flow {
            Flow::Exit => None,
            Flow::Return(0) => None,
            Flow::Return(n) => Some(n),
            Flow::Next | Flow::Break => Some(1),
        }
    }

    fn exec_block(&mut self, stmts: &[Stmt]) -> Flow {
        for s in stmts {
            match self.exec(s) {
                Flow::Next => {}
                other => return other,
            }
        }
        Flow::Next
    }

    fn exec(&mut self, s: &Stmt) -> Flow {
        match s {
            Stmt::Expr(e) => match self.eval(e) {
                Some(_) => Flow::Next,
                None => Flow::Exit,
            },
            Stmt::Assign { pv, replace, value } => {
                let Some(v) = self.eval(value) else {
                    return Flow::Exit;
                };
                if let Err(e) = self.set_pv(pv, v, *replace) {
                    tracing::error!(target: "script", "assignment failed: {e}");
                }
                Flow::Next
            }
            Stmt::If { cond, then, els } => match self.eval(cond) {
                None => Flow::Exit,
                Some(v) if v.is_true() => self.exec_block(then),
                Some(_) => self.exec_block(els),
            },
            Stmt::While { cond, body } => {
                let max = self.prog.core.max_while_loops;
                let mut n = 0u64;
                loop {
                    match self.eval(cond) {
                        None => return Flow::Exit,
                        Some(v) if !v.is_true() => return Flow::Next,
                        Some(_) => {}
                    }
                    if n >= max {
                        self.prog
                            .stats
                            .while_limit_hits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(target: "script", "while loop stopped after max_while_loops={max} iterations");
                        return Flow::Next;
                    }
                    n += 1;
                    match self.exec_block(body) {
                        Flow::Next => {}
                        Flow::Break => return Flow::Next,
                        other => return other,
                    }
                }
            }
            Stmt::Switch {
                subject,
                labels,
                default,
                body,
            } => {
                let Some(v) = self.eval(subject) else {
                    return Flow::Exit;
                };
                let start = labels
                    .iter()
                    .find(|(l, _)| values_equal(&v, l))
                    .map(|(_, i)| *i)
                    .or(*default);
                let Some(start) = start else {
                    return Flow::Next;
                };
                match self.exec_block(&body[start..]) {
                    Flow::Break | Flow::Next => Flow::Next,
                    other => other,
                }
            }
            Stmt::Return(e) => {
                let code = match e {
                    None => 1,
                    Some(e) => match self.eval(e) {
                        None => return Flow::Exit,
                        Some(v) => v
                            .to_int()
                            .unwrap_or(0)
                            .clamp(i32::MIN as i64, i32::MAX as i64)
                            as i32,
                    },
                };
                self.ctx.last_rc = code;
                Flow::Return(code)
            }
            Stmt::Exit => Flow::Exit,
            Stmt::Drop => {
                self.ctx.dropped = true;
                Flow::Exit
            }
            Stmt::Break => Flow::Break,
            Stmt::Block(b) => self.exec_block(b),
        }
    }

    /// Evaluates an expression for a function argument (a script stop reads as `$null`).
    pub fn eval_value(&mut self, e: &CExpr) -> Value {
        self.eval(e).unwrap_or(Value::Null)
    }

    /// Evaluates; `None` means the script must stop (a function returned 0 or suspended).
    fn eval(&mut self, e: &CExpr) -> Option<Value> {
        Some(match e {
            CExpr::Const(v) => v.clone(),
            CExpr::Pv(p) => self.get_pv(p),
            CExpr::Fmt(f) => Value::Str(self.fmt(f)),
            CExpr::Call(c) => {
                let code = match c.call.call(self) {
                    FnResult::Code(c) => c,
                    FnResult::Suspend(s) if self.ctx.may_suspend => {
                        self.ctx.suspend = Some(s);
                        return None;
                    }
                    // Nothing to suspend (an event or reply route, no SIP
                    // request): the call fails instead of vanishing.
                    FnResult::Suspend(_) => {
                        tracing::error!(
                            "{}: cannot suspend here: no SIP request with a transaction in this route",
                            c.name
                        );
                        -1
                    }
                };
                self.ctx.last_rc = code;
                if code == 0 {
                    return None;
                }
                Value::Int(code as i64)
            }
            CExpr::Route(r) => {
                let code = self.call_route(*r)?;
                self.ctx.last_rc = code;
                Value::Int(code as i64)
            }
            CExpr::Not(x) => Value::Int(i64::from(!self.eval(x)?.is_true())),
            CExpr::Neg(x) => Value::Int(self.eval(x)?.to_int().unwrap_or(0).wrapping_neg()),
            CExpr::Defined(x) => Value::Int(i64::from(!self.eval(x)?.is_null())),
            CExpr::Bin(BinOp::And, a, b) => {
                if !self.eval(a)?.is_true() {
                    return Some(Value::Int(0));
                }
                Value::Int(i64::from(self.eval(b)?.is_true()))
            }
            CExpr::Bin(BinOp::Or, a, b) => {
                if self.eval(a)?.is_true() {
                    return Some(Value::Int(1));
                }
                Value::Int(i64::from(self.eval(b)?.is_true()))
            }
            CExpr::Bin(op, a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                binary(*op, a, b)
            }
            CExpr::Match(x, re, neg) => {
                let v = self.eval(x)?.to_bytes();
                Value::Int(i64::from(re.is_match(&v) != *neg))
            }
            CExpr::DynMatch(x, pat, neg) => {
                let v = self.eval(x)?.to_bytes();
                let p = self.eval(pat)?.to_text().into_owned();
                match self.prog.dynamic_regex(&p) {
                    Some(re) => Value::Int(i64::from(re.is_match(&v) != *neg)),
                    None => {
                        tracing::error!(target: "script", "bad regular expression `{p}`");
                        Value::Int(0)
                    }
                }
            }
            CExpr::Myself(x, neg) => {
                let v = self.eval(x)?.to_bytes();
                let mine = self.prog.hooks.myself.as_ref().is_some_and(|f| f(&v));
                Value::Int(i64::from(mine != *neg))
            }
        })
    }
}

/// Kamailio equality: `$null` equals only `$null`; an integer on the left
/// compares numerically, a string on the left compares as strings.
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Int(x), y) => y.to_int() == Some(*x),
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Str(x), y) => *x == y.to_bytes(),
    }
}

fn binary(op: BinOp, a: Value, b: Value) -> Value {
    use std::cmp::Ordering;
    let int = |v: &Value| v.to_int().unwrap_or(0);
    match op {
        BinOp::Eq => Value::Int(i64::from(values_equal(&a, &b))),
        BinOp::Ne => Value::Int(i64::from(!values_equal(&a, &b))),
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let ord = match (&a, b.to_int()) {
                (Value::Int(x), Some(y)) => x.cmp(&y),
                _ => match (a.to_int(), b.to_int()) {
                    (Some(x), Some(y))
                        if !matches!(a, Value::Str(_)) || !matches!(b, Value::Str(_)) =>
                    {
                        x.cmp(&y)
                    }
                    _ => a.to_bytes().cmp(&b.to_bytes()),
                },
            };
            let r = match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Gt => ord == Ordering::Greater,
                BinOp::Le => ord != Ordering::Greater,
                _ => ord != Ordering::Less,
            };
            Value::Int(i64::from(r))
        }
        BinOp::Add => match (&a, &b) {
            (Value::Int(x), _) => Value::Int(x.wrapping_add(int(&b))),
            (Value::Null, Value::Int(y)) => Value::Int(*y),
            _ => {
                let (x, y) = (a.to_bytes(), b.to_bytes());
                if y.is_empty() {
                    return Value::Str(x);
                }
                let mut v = Vec::with_capacity(x.len() + y.len());
                v.extend_from_slice(&x);
                v.extend_from_slice(&y);
                Value::Str(Bytes::from(v))
            }
        },
        BinOp::Sub => Value::Int(int(&a).wrapping_sub(int(&b))),
        BinOp::Mul => Value::Int(int(&a).wrapping_mul(int(&b))),
        BinOp::Div | BinOp::Mod => {
            let d = int(&b);
            if d == 0 {
                tracing::error!(target: "script", "division by zero");
                return Value::Int(0);
            }
            Value::Int(if op == BinOp::Div {
                int(&a).wrapping_div(d)
            } else {
                int(&a).wrapping_rem(d)
            })
        }
        BinOp::BitAnd => Value::Int(int(&a) & int(&b)),
        BinOp::BitOr => Value::Int(int(&a) | int(&b)),
        BinOp::And | BinOp::Or | BinOp::Match | BinOp::NoMatch => {
            unreachable!("handled by the caller")
        }
    }
}

/// Folds an operation on two constants at load.
pub(crate) fn fold(op: BinOp, a: &Value, b: &Value) -> Option<Value> {
    match op {
        BinOp::And => Some(Value::Int(i64::from(a.is_true() && b.is_true()))),
        BinOp::Or => Some(Value::Int(i64::from(a.is_true() || b.is_true()))),
        BinOp::Match | BinOp::NoMatch => None,
        _ => Some(binary(op, a.clone(), b.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kamailio_operator_rules() {
        assert_eq!(
            binary(BinOp::Add, Value::Int(1), Value::from("2")),
            Value::Int(3)
        );
        assert_eq!(
            binary(BinOp::Add, Value::from("1"), Value::Int(2)),
            Value::from("12")
        );
        assert_eq!(
            binary(BinOp::Eq, Value::Int(5), Value::from("5")),
            Value::Int(1)
        );
        assert_eq!(
            binary(BinOp::Eq, Value::from("a"), Value::Null),
            Value::Int(0)
        );
        assert_eq!(binary(BinOp::Eq, Value::Null, Value::Null), Value::Int(1));
        assert_eq!(
            binary(BinOp::Lt, Value::Int(9), Value::Int(10)),
            Value::Int(1)
        );
        assert_eq!(
            binary(BinOp::Lt, Value::from("b"), Value::from("a")),
            Value::Int(0)
        );
        assert_eq!(
            binary(BinOp::Mod, Value::Int(7), Value::Int(0)),
            Value::Int(0)
        );
        assert_eq!(
            binary(BinOp::BitOr, Value::Int(5), Value::Int(2)),
            Value::Int(7)
        );
    }
}
