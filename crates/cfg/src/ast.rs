//! The syntax tree of a configuration. Every node keeps the span it was read from.

use crate::pv::PvSyntax;
use crate::source::{Span, Spanned};

/// A whole configuration, with includes spliced in.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Top-level items in file order.
    pub items: Vec<Item>,
    /// The `#!ifdef` branch each guarded token was read under.
    pub guards: crate::lex::Guards,
}

/// A top-level item.
#[derive(Debug, Clone)]
pub enum Item {
    /// `name = value` (core parameter).
    Global(Global),
    /// `loadmodule "name.so"`.
    LoadModule(Spanned<String>),
    /// `modparam("module", "param", value)`.
    ModParam(ModParam),
    /// A routing block.
    Route(RouteBlock),
    /// `group.name = value [desc "text"]`: a custom setting, read with
    /// `$sel(cfg_get.group.name)` and changed at run time through cfg_rpc.
    CustomCfg(CustomCfg),
}

/// A custom setting (Kamailio's "custom parameters").
#[derive(Debug, Clone)]
pub struct CustomCfg {
    /// The group (`pstn`).
    pub group: Spanned<String>,
    /// The name (`gw_ip`).
    pub name: Spanned<String>,
    /// The value: an integer or a string.
    pub value: Spanned<ParamValue>,
    /// The `desc "…"` text.
    pub desc: Option<String>,
}

/// A core parameter line.
#[derive(Debug, Clone)]
pub struct Global {
    /// The parameter name.
    pub name: Spanned<String>,
    /// The value as written (tokens joined), or the string literal's content.
    pub value: Spanned<GlobalValue>,
}

/// The value of a core parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalValue {
    /// A single integer (`children=4`, `debug=-1`).
    Int(i64),
    /// A quoted string.
    Str(String),
    /// Anything else, as written: `yes`, `udp:127.0.0.1:5060`, `[::1]:5060`.
    Word(String),
}

/// `modparam("module", "param", value)`.
#[derive(Debug, Clone)]
pub struct ModParam {
    /// Module name.
    pub module: Spanned<String>,
    /// Parameter name.
    pub param: Spanned<String>,
    /// The value.
    pub value: Spanned<ParamValue>,
}

/// A module parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// An integer (also `yes`/`no`/`on`/`off`/`true`/`false` as 1/0).
    Int(i64),
    /// A string.
    Str(String),
}

/// Which kind of routing block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `request_route` or OpenSIPS' main `route { }`.
    Request,
    /// `route[NAME]`.
    Named,
    /// `failure_route[NAME]`.
    Failure,
    /// `onreply_route[NAME]` (or the unnamed `onreply_route { }`).
    OnReply,
    /// `reply_route { }`.
    Reply,
    /// `branch_route[NAME]`.
    Branch,
    /// `event_route[module:event]`.
    Event,
    /// `startup_route { }`.
    Startup,
}

impl RouteKind {
    /// The keyword as written.
    pub fn keyword(self) -> &'static str {
        match self {
            RouteKind::Request => "request_route",
            RouteKind::Named => "route",
            RouteKind::Failure => "failure_route",
            RouteKind::OnReply => "onreply_route",
            RouteKind::Reply => "reply_route",
            RouteKind::Branch => "branch_route",
            RouteKind::Event => "event_route",
            RouteKind::Startup => "startup_route",
        }
    }
}

/// A routing block.
#[derive(Debug, Clone)]
pub struct RouteBlock {
    /// The kind.
    pub kind: RouteKind,
    /// The name in brackets, if any.
    pub name: Option<Spanned<String>>,
    /// The statements.
    pub body: Block,
    /// The block header.
    pub span: Span,
}

/// `{ … }`.
#[derive(Debug, Clone, Default)]
pub struct Block {
    /// Statements in order.
    pub stmts: Vec<Stmt>,
}

/// A statement.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// What it is.
    pub kind: StmtKind,
    /// Where.
    pub span: Span,
}

/// Assignment operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOp {
    /// `=`: set (pushes another value for `$avp`).
    Set,
    /// `:=`: replace all values.
    Replace,
}

/// Statement kinds.
#[derive(Debug, Clone)]
pub enum StmtKind {
    /// An expression evaluated for its effect (a function call).
    Expr(Expr),
    /// `$pv = expr;`
    Assign {
        /// The PV written.
        target: Spanned<PvSyntax>,
        /// `=` or `:=`.
        op: AssignOp,
        /// The value.
        value: Expr,
    },
    /// `if (c) … else …`
    If {
        /// Condition.
        cond: Expr,
        /// Taken branch.
        then: Block,
        /// Else branch.
        els: Option<Block>,
    },
    /// `while (c) { … }`
    While {
        /// Condition.
        cond: Expr,
        /// Body.
        body: Block,
    },
    /// `switch (e) { case …: … }`
    Switch {
        /// The value switched on.
        subject: Expr,
        /// Cases in order; `label == None` is `default`.
        cases: Vec<Case>,
    },
    /// `return`, `return(e)`, `return e`.
    Return(Option<Expr>),
    /// `exit`.
    Exit,
    /// `drop`.
    Drop,
    /// `break`.
    Break,
    /// A nested `{ … }`.
    Block(Block),
}

/// A `case` or `default` arm of a switch.
#[derive(Debug, Clone)]
pub struct Case {
    /// The value, or `None` for `default`.
    pub label: Option<Expr>,
    /// Statements until the next arm.
    pub body: Vec<Stmt>,
    /// The `case`/`default` keyword.
    pub span: Span,
}

/// An expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`
    Neg,
    /// `defined`
    Defined,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Or,
    And,
    BitOr,
    BitAnd,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Match,
    NoMatch,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        use BinOp::*;
        match self {
            Or => "||",
            And => "&&",
            BitOr => "|",
            BitAnd => "&",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Gt => ">",
            Le => "<=",
            Ge => ">=",
            Match => "=~",
            NoMatch => "!~",
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
        }
    }
}

/// Expression kinds.
#[derive(Debug, Clone)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// String literal (adjacent literals joined).
    Str(String),
    /// A pseudo-variable (`$null` included).
    Pv(PvSyntax),
    /// A bare word: a core keyword (`method`, `src_ip`, `myself`), a route name
    /// in `route(NAME)`, a log level, a protocol name.
    Word(String),
    /// A dotted IPv4 address.
    Ip(String),
    /// `name(args…)`.
    Call {
        /// The function name.
        name: Spanned<String>,
        /// Its arguments.
        args: Vec<Expr>,
    },
    /// `!e`, `-e`, `defined e`.
    Unary(UnOp, Box<Expr>),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}
