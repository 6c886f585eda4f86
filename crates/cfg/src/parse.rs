//! Recursive-descent parser with precedence climbing for expressions.
//!
//! It reports every error it can in one run: after an error inside a block it
//! skips to the next `;` or `}`, after an error at the top level to the next
//! line that starts an item.

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::lex::{Punct, Tok, Token};
use crate::source::{Span, Spanned};

const ROUTE_KEYWORDS: &[&str] = &[
    "request_route",
    "route",
    "failure_route",
    "onreply_route",
    "reply_route",
    "branch_route",
    "event_route",
    "startup_route",
];
const UNSUPPORTED_ROUTES: &[&str] = &[
    "onsend_route",
    "local_route",
    "error_route",
    "timer_route",
    "event_route_x",
];
const MAX_NESTING: usize = 200;

/// Parses tokens (ending in `Eof`) into a configuration.
pub fn parse_tokens(tokens: &[Token]) -> (Config, Vec<Diagnostic>) {
    let mut p = Parser {
        t: tokens,
        pos: 0,
        diags: vec![],
        depth: 0,
    };
    let cfg = p.config();
    (cfg, p.diags)
}

struct Parser<'a> {
    t: &'a [Token],
    pos: usize,
    diags: Vec<Diagnostic>,
    depth: usize,
}

/// Marker: an error was recorded, the caller recovers.
struct Failed;
type PResult<T> = Result<T, Failed>;

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        &self.t[self.pos.min(self.t.len() - 1)]
    }
    fn peek_at(&self, n: usize) -> &'a Token {
        &self.t[(self.pos + n).min(self.t.len() - 1)]
    }
    fn bump(&mut self) -> &'a Token {
        let t = self.peek();
        if self.pos < self.t.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn at_eof(&self) -> bool {
        self.peek().tok == Tok::Eof
    }
    fn eat(&mut self, p: Punct) -> bool {
        if self.peek().is(p) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn prev_span(&self) -> Span {
        self.t[self.pos.saturating_sub(1)].span
    }
    fn error(&mut self, span: Span, msg: impl Into<String>) -> Failed {
        self.diags.push(Diagnostic::error(span, msg));
        Failed
    }
    /// An error at the current token: "expected X, found Y".
    fn expected(&mut self, what: &str) -> Failed {
        let t = self.peek();
        let msg = format!("expected {what}, found {}", t.describe());
        self.error(t.span, msg)
    }
    fn expect(&mut self, p: Punct, context: &str) -> PResult<&'a Token> {
        if self.peek().is(p) {
            Ok(self.bump())
        } else {
            Err(self.expected(&format!("`{}` {context}", p.as_str())))
        }
    }

    // ---- top level ----

    fn config(&mut self) -> Config {
        let mut items = Vec::new();
        while !self.at_eof() {
            if self.eat(Punct::Semi) {
                continue;
            }
            match self.item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                Err(Failed) => self.recover_top(),
            }
        }
        Config {
            items,
            ..Config::default()
        }
    }

    /// Skips to the next line that starts with a word (the start of an item).
    fn recover_top(&mut self) {
        let start = self.pos;
        let mut depth = 0i32;
        while !self.at_eof() {
            let t = self.peek();
            if self.pos > start && depth <= 0 && t.newline_before && t.ident().is_some() {
                return;
            }
            match t.tok {
                Tok::Punct(Punct::LBrace) => depth += 1,
                Tok::Punct(Punct::RBrace) => {
                    depth -= 1;
                    if depth <= 0 && self.pos > start {
                        self.bump();
                        return;
                    }
                }
                _ => {}
            }
            self.bump();
        }
    }

    fn item(&mut self) -> PResult<Option<Item>> {
        let t = self.peek();
        let Some(word) = t.ident() else {
            return Err(self.expected(
                "a core parameter (`name = value`), `loadmodule`, `modparam` or a route block",
            ));
        };
        if ROUTE_KEYWORDS.contains(&word) {
            return self.route_block().map(|r| Some(Item::Route(r)));
        }
        if UNSUPPORTED_ROUTES.contains(&word) {
            let span = t.span;
            self.diags.push(Diagnostic::error(span, format!("`{word}` blocks are not supported by siphon")).help(
                "supported blocks: request_route, route[NAME], failure_route[NAME], onreply_route[NAME], reply_route, branch_route[NAME], event_route[module:event], startup_route",
            ));
            return Err(Failed);
        }
        match word {
            "loadmodule" | "loadmodulex" => {
                self.bump();
                let name = self.string_value("the module name as a string after `loadmodule`")?;
                Ok(Some(Item::LoadModule(name)))
            }
            "modparam" => self.modparam().map(|m| Some(Item::ModParam(m))),
            _ if self.peek_at(1).is(Punct::Assign) => self.global().map(|g| Some(Item::Global(g))),
            _ if self.peek_at(1).is(Punct::Dot)
                && self.peek_at(2).ident().is_some()
                && self.peek_at(3).is(Punct::Assign) =>
            {
                self.custom_cfg().map(|c| Some(Item::CustomCfg(c)))
            }
            _ => {
                let span = t.span;
                let msg = if self.peek_at(1).is(Punct::LParen) {
                    format!(
                        "`{word}(…)` is a function call outside of any route; expected a core parameter, `loadmodule`, `modparam` or a route block"
                    )
                } else {
                    format!(
                        "expected `=` after the core parameter `{word}`, found {}",
                        self.peek_at(1).describe()
                    )
                };
                Err(self.error(span, msg))
            }
        }
    }

    /// One or more adjacent string literals, joined.
    fn string_value(&mut self, what: &str) -> PResult<Spanned<String>> {
        let t = self.peek();
        let Tok::Str(s) = &t.tok else {
            return Err(self.expected(what));
        };
        let mut s = s.clone();
        let mut span = t.span;
        self.bump();
        while let Tok::Str(more) = &self.peek().tok {
            s.push_str(more);
            span = span.to(self.peek().span);
            self.bump();
        }
        Ok(Spanned::new(s, span))
    }

    /// `group.name = value [desc "text"]` (value: a string or an integer).
    fn custom_cfg(&mut self) -> PResult<CustomCfg> {
        let g = self.bump();
        let group = Spanned::new(g.ident().unwrap_or_default().to_string(), g.span);
        self.bump(); // .
        let n = self.bump();
        let name = Spanned::new(n.ident().unwrap_or_default().to_string(), n.span);
        self.bump(); // =
        let t = self.peek();
        let value = match &t.tok {
            Tok::Str(_) => {
                let v = self.string_value("a string")?;
                Spanned::new(ParamValue::Str(v.node), v.span)
            }
            Tok::Int(n) => {
                let v = Spanned::new(ParamValue::Int(*n), t.span);
                self.bump();
                v
            }
            Tok::Punct(Punct::Minus) if matches!(self.peek_at(1).tok, Tok::Int(_)) => {
                let Tok::Int(n) = self.peek_at(1).tok else {
                    unreachable!()
                };
                let span = t.span.to(self.peek_at(1).span);
                self.bump();
                self.bump();
                Spanned::new(ParamValue::Int(-n), span)
            }
            _ => {
                return Err(self.expected(&format!(
                    "a string or an integer as the value of `{}.{}`",
                    group.node, name.node
                )));
            }
        };
        let mut desc = None;
        if self.peek().ident() == Some("desc") && !self.peek().newline_before {
            self.bump();
            desc = Some(
                self.string_value("the description as a string after `desc`")?
                    .node,
            );
        }
        Ok(CustomCfg {
            group,
            name,
            value,
            desc,
        })
    }

    fn global(&mut self) -> PResult<Global> {
        let name_tok = self.bump();
        let name = Spanned::new(
            name_tok.ident().unwrap_or_default().to_string(),
            name_tok.span,
        );
        self.bump(); // =
        let first = self.pos;
        // The value runs to the end of the line, or to the next `word =` / item keyword
        // (configs flattened onto one line still parse).
        while !self.at_eof() {
            let t = self.peek();
            if self.pos > first && t.newline_before {
                break;
            }
            if t.is(Punct::Semi) {
                break;
            }
            if self.pos > first
                && let Some(w) = t.ident()
                && (self.peek_at(1).is(Punct::Assign)
                    || ["loadmodule", "modparam"].contains(&w)
                    || ROUTE_KEYWORDS.contains(&w))
            {
                break;
            }
            self.bump();
        }
        let toks = &self.t[first..self.pos];
        if toks.is_empty() {
            return Err(self.error(
                name.span,
                format!("expected a value after `{} =`", name.node),
            ));
        }
        let span = toks[0].span.to(toks[toks.len() - 1].span);
        let value = match toks {
            [
                Token {
                    tok: Tok::Int(n), ..
                },
            ] => GlobalValue::Int(*n),
            [
                Token {
                    tok: Tok::Punct(Punct::Minus),
                    ..
                },
                Token {
                    tok: Tok::Int(n), ..
                },
            ] => GlobalValue::Int(-n),
            [
                Token {
                    tok: Tok::Str(s), ..
                },
            ] => GlobalValue::Str(s.clone()),
            _ if toks.iter().all(|t| matches!(t.tok, Tok::Str(_))) => GlobalValue::Str(
                toks.iter()
                    .map(|t| {
                        if let Tok::Str(s) = &t.tok {
                            s.as_str()
                        } else {
                            ""
                        }
                    })
                    .collect(),
            ),
            _ => {
                let mut s = String::new();
                for (i, t) in toks.iter().enumerate() {
                    if i > 0 && t.space_before {
                        s.push(' ');
                    }
                    s.push_str(&t.raw);
                }
                GlobalValue::Word(s)
            }
        };
        Ok(Global {
            name,
            value: Spanned::new(value, span),
        })
    }

    fn modparam(&mut self) -> PResult<ModParam> {
        self.bump();
        self.expect(Punct::LParen, "after `modparam`")?;
        let module = self.string_value("the module name as a string")?;
        self.expect(Punct::Comma, "after the module name")?;
        let param = self.string_value("the parameter name as a string")?;
        self.expect(Punct::Comma, "after the parameter name")?;
        let t = self.peek();
        let value = match &t.tok {
            Tok::Str(_) => {
                let s = self.string_value("a value")?;
                Spanned::new(ParamValue::Str(s.node), s.span)
            }
            Tok::Int(n) => {
                self.bump();
                Spanned::new(ParamValue::Int(*n), t.span)
            }
            Tok::Punct(Punct::Minus) if matches!(self.peek_at(1).tok, Tok::Int(_)) => {
                self.bump();
                let n = self.bump();
                let Tok::Int(v) = n.tok else { unreachable!() };
                Spanned::new(ParamValue::Int(-v), t.span.to(n.span))
            }
            Tok::Ident(w) => {
                let v = match w.to_ascii_lowercase().as_str() {
                    "yes" | "on" | "true" | "enable" => 1,
                    "no" | "off" | "false" | "disable" => 0,
                    _ => {
                        let msg = format!(
                            "expected a string, a number or yes/no as the value of `{}`, found `{w}`",
                            param.node
                        );
                        return Err(self.error(t.span, msg));
                    }
                };
                self.bump();
                Spanned::new(ParamValue::Int(v), t.span)
            }
            _ => return Err(self.expected(&format!("a value for `{}`", param.node))),
        };
        self.expect(Punct::RParen, "to close `modparam(`")?;
        Ok(ModParam {
            module,
            param,
            value,
        })
    }

    fn route_block(&mut self) -> PResult<RouteBlock> {
        let kw = self.bump();
        let word = kw.ident().unwrap_or_default();
        let mut name = None;
        if self.peek().is(Punct::LBracket) {
            let open = self.bump();
            let first = self.pos;
            while !self.at_eof()
                && !self.peek().is(Punct::RBracket)
                && !self.peek().is(Punct::LBrace)
            {
                self.bump();
            }
            let toks = &self.t[first..self.pos];
            if !self.peek().is(Punct::RBracket) {
                return Err(self.expected(&format!("`]` to close the name of `{word}[`")));
            }
            self.bump();
            let text: String = toks
                .iter()
                .map(|t| match &t.tok {
                    Tok::Str(s) => s.clone(),
                    _ => t.raw.clone(),
                })
                .collect();
            if text.is_empty() {
                return Err(self.error(
                    open.span,
                    format!("expected a route name inside `{word}[…]`"),
                ));
            }
            name = Some(Spanned::new(
                text,
                toks[0].span.to(toks[toks.len() - 1].span),
            ));
        }
        let kind = match (word, &name) {
            ("request_route", None) => RouteKind::Request,
            ("route", None) => RouteKind::Request,
            ("route", Some(n))
                if n.node == "0" || n.node == "main" || n.node == "DEFAULT_ROUTE" =>
            {
                name = None;
                RouteKind::Request
            }
            ("route", Some(_)) => RouteKind::Named,
            ("failure_route", Some(_)) => RouteKind::Failure,
            ("onreply_route", _) => RouteKind::OnReply,
            ("reply_route", None) => RouteKind::Reply,
            ("branch_route", Some(_)) => RouteKind::Branch,
            ("event_route", Some(_)) => RouteKind::Event,
            ("startup_route", None) => RouteKind::Startup,
            (_, None) => {
                return Err(self.error(kw.span, format!("expected `[NAME]` after `{word}`")));
            }
            (_, Some(n)) => return Err(self.error(n.span, format!("`{word}` takes no name"))),
        };
        if !self.peek().is(Punct::LBrace) {
            return Err(self.expected(&format!("`{{` to open the body of `{word}`")));
        }
        let body = self.block()?;
        Ok(RouteBlock {
            kind,
            name,
            body,
            span: kw.span,
        })
    }

    // ---- statements ----

    /// `{ stmts }`; the current token is `{`.
    fn block(&mut self) -> PResult<Block> {
        let open = self.bump();
        self.depth += 1;
        if self.depth > MAX_NESTING {
            self.depth -= 1;
            return Err(self.error(
                open.span,
                format!("blocks nested deeper than {MAX_NESTING}"),
            ));
        }
        let mut stmts = Vec::new();
        loop {
            if self.eat(Punct::RBrace) {
                break;
            }
            if self.at_eof() {
                self.depth -= 1;
                let e = self.error(open.span, "this `{` is never closed: expected `}`");
                return Err(e);
            }
            match self.stmt() {
                Ok(Some(s)) => stmts.push(s),
                Ok(None) => {}
                Err(Failed) => self.recover_stmt(),
            }
        }
        self.depth -= 1;
        Ok(Block { stmts })
    }

    /// Skips to just after the next `;`, or to a `}` that closes the current block.
    fn recover_stmt(&mut self) {
        let mut depth = 0i32;
        let start = self.pos;
        while !self.at_eof() {
            let t = self.peek();
            match t.tok {
                Tok::Punct(Punct::Semi) if depth == 0 => {
                    self.bump();
                    return;
                }
                Tok::Punct(Punct::LBrace) => depth += 1,
                Tok::Punct(Punct::RBrace) => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                    if depth == 0 {
                        self.bump();
                        return;
                    }
                }
                _ if depth == 0 && self.pos > start && t.newline_before && self.starts_stmt() => {
                    return;
                }
                _ => {}
            }
            self.bump();
        }
    }

    fn starts_stmt(&self) -> bool {
        match &self.peek().tok {
            Tok::Ident(w) => {
                matches!(
                    w.as_str(),
                    "if" | "while" | "switch" | "return" | "exit" | "drop" | "break"
                ) || self.peek_at(1).is(Punct::LParen)
            }
            Tok::Pv(_) => self.peek_at(1).is(Punct::Assign),
            _ => false,
        }
    }

    /// A statement or a braced block, as the body of `if`/`else`.
    fn body(&mut self) -> PResult<Block> {
        if self.peek().is(Punct::LBrace) {
            return self.block();
        }
        match self.stmt()? {
            Some(s) => Ok(Block { stmts: vec![s] }),
            None => Ok(Block::default()),
        }
    }

    fn end_stmt(&mut self, what: &str) -> PResult<()> {
        if self.eat(Punct::Semi) {
            return Ok(());
        }
        let t = self.peek();
        // Point just after the previous token, where the `;` belongs.
        let prev = self.prev_span();
        let at = Span {
            lo: prev.hi,
            hi: prev.hi + 1,
            file: prev.file,
        };
        let msg = format!("expected `;` after {what}, found {}", t.describe());
        self.diags.push(Diagnostic::error(at, msg));
        // Missing `;` at the end of a line: report and go on as if it were there.
        if t.newline_before || t.is(Punct::RBrace) {
            return Ok(());
        }
        Err(Failed)
    }

    fn stmt(&mut self) -> PResult<Option<Stmt>> {
        let t = self.peek();
        let start = t.span;
        let kind = match &t.tok {
            Tok::Punct(Punct::Semi) => {
                self.bump();
                return Ok(None);
            }
            Tok::Punct(Punct::LBrace) => StmtKind::Block(self.block()?),
            Tok::Ident(w) => match w.as_str() {
                "if" => {
                    self.bump();
                    self.expect(Punct::LParen, "after `if`")?;
                    let cond = self.expr()?;
                    self.expect(Punct::RParen, "to close the condition of `if`")?;
                    let then = self.body()?;
                    let els = if self.peek().ident() == Some("else") {
                        self.bump();
                        Some(self.body()?)
                    } else {
                        None
                    };
                    StmtKind::If { cond, then, els }
                }
                "else" => return Err(self.error(t.span, "`else` without `if`")),
                "while" => {
                    self.bump();
                    self.expect(Punct::LParen, "after `while`")?;
                    let cond = self.expr()?;
                    self.expect(Punct::RParen, "to close the condition of `while`")?;
                    let body = self.body()?;
                    StmtKind::While { cond, body }
                }
                "switch" => self.switch()?,
                "return" => {
                    self.bump();
                    let value = if self.peek().is(Punct::Semi) || self.peek().is(Punct::RBrace) {
                        None
                    } else {
                        Some(self.expr()?)
                    };
                    self.end_stmt("`return`")?;
                    StmtKind::Return(value)
                }
                "exit" | "drop" | "break" => {
                    self.bump();
                    if self.peek().is(Punct::LParen) && self.peek_at(1).is(Punct::RParen) {
                        self.bump();
                        self.bump();
                    }
                    self.end_stmt(&format!("`{w}`"))?;
                    match w.as_str() {
                        "exit" => StmtKind::Exit,
                        "drop" => StmtKind::Drop,
                        _ => StmtKind::Break,
                    }
                }
                "case" | "default" => {
                    return Err(self.error(t.span, format!("`{w}` outside of `switch`")));
                }
                _ => {
                    let e = self.expr()?;
                    let what = match &e.kind {
                        ExprKind::Call { name, .. } => format!("the call to `{}`", name.node),
                        _ => "the expression".to_string(),
                    };
                    self.end_stmt(&what)?;
                    StmtKind::Expr(e)
                }
            },
            Tok::Pv(pv)
                if matches!(
                    self.peek_at(1).tok,
                    Tok::Punct(Punct::Assign | Punct::ColonAssign)
                ) =>
            {
                self.bump();
                let op = if self.bump().is(Punct::Assign) {
                    AssignOp::Set
                } else {
                    AssignOp::Replace
                };
                let value = self.expr()?;
                self.end_stmt(&format!("the assignment to `{}`", pv.text))?;
                StmtKind::Assign {
                    target: Spanned::new(pv.clone(), t.span),
                    op,
                    value,
                }
            }
            Tok::Pv(pv) if self.peek_at(1).is(Punct::Eq) => {
                let s = self.peek_at(1).span;
                return Err(self.error(
                    s,
                    format!("`==` compares; to assign to `{}` write `=`", pv.text),
                ));
            }
            Tok::Eof => return Err(self.expected("a statement")),
            _ => {
                let e = self.expr()?;
                self.end_stmt("the expression")?;
                StmtKind::Expr(e)
            }
        };
        Ok(Some(Stmt {
            kind,
            span: start.to(self.prev_span()),
        }))
    }

    fn switch(&mut self) -> PResult<StmtKind> {
        self.bump();
        self.expect(Punct::LParen, "after `switch`")?;
        let subject = self.expr()?;
        self.expect(Punct::RParen, "to close the value of `switch`")?;
        if !self.peek().is(Punct::LBrace) {
            return Err(self.expected("`{` to open the body of `switch`"));
        }
        let open = self.bump();
        let mut cases: Vec<Case> = Vec::new();
        loop {
            let t = self.peek();
            match t.ident() {
                _ if t.is(Punct::RBrace) => {
                    self.bump();
                    break;
                }
                _ if self.at_eof() => {
                    return Err(
                        self.error(open.span, "this `switch {` is never closed: expected `}`")
                    );
                }
                Some("case") => {
                    self.bump();
                    let label = self.expr()?;
                    self.expect(Punct::Colon, "after the `case` value")?;
                    cases.push(Case {
                        label: Some(label),
                        body: vec![],
                        span: t.span,
                    });
                }
                Some("default") => {
                    self.bump();
                    self.expect(Punct::Colon, "after `default`")?;
                    cases.push(Case {
                        label: None,
                        body: vec![],
                        span: t.span,
                    });
                }
                _ => {
                    if cases.is_empty() {
                        return Err(self.expected("`case` or `default`"));
                    }
                    match self.stmt() {
                        Ok(Some(s)) => {
                            if let Some(c) = cases.last_mut() {
                                c.body.push(s);
                            }
                        }
                        Ok(None) => {}
                        Err(Failed) => self.recover_stmt(),
                    }
                }
            }
        }
        Ok(StmtKind::Switch { subject, cases })
    }

    // ---- expressions ----

    fn expr(&mut self) -> PResult<Expr> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            self.depth -= 1;
            let s = self.peek().span;
            return Err(self.error(s, format!("expression nested deeper than {MAX_NESTING}")));
        }
        let r = self.binary(1);
        self.depth -= 1;
        r
    }

    fn binop(&self) -> Option<(BinOp, u8)> {
        let Tok::Punct(p) = self.peek().tok else {
            return None;
        };
        Some(match p {
            Punct::Or => (BinOp::Or, 1),
            Punct::And => (BinOp::And, 2),
            Punct::BitOr => (BinOp::BitOr, 3),
            Punct::BitAnd => (BinOp::BitAnd, 4),
            Punct::Eq => (BinOp::Eq, 5),
            Punct::Ne => (BinOp::Ne, 5),
            Punct::Lt => (BinOp::Lt, 5),
            Punct::Gt => (BinOp::Gt, 5),
            Punct::Le => (BinOp::Le, 5),
            Punct::Ge => (BinOp::Ge, 5),
            Punct::Match => (BinOp::Match, 5),
            Punct::NoMatch => (BinOp::NoMatch, 5),
            Punct::Plus => (BinOp::Add, 6),
            Punct::Minus => (BinOp::Sub, 6),
            Punct::Star => (BinOp::Mul, 7),
            Punct::Slash => (BinOp::Div, 7),
            Punct::Percent => (BinOp::Mod, 7),
            _ => return None,
        })
    }

    fn binary(&mut self, min: u8) -> PResult<Expr> {
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.binop() {
            if prec < min {
                break;
            }
            let op_tok = self.bump();
            if self.peek().is(Punct::RParen) || self.peek().is(Punct::Semi) || self.at_eof() {
                return Err(self.expected(&format!("an operand after `{}`", op_tok.raw)));
            }
            let rhs = self.binary(prec + 1)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        let t = self.peek();
        let op = match &t.tok {
            Tok::Punct(Punct::Not) => Some(UnOp::Not),
            Tok::Punct(Punct::Minus) => Some(UnOp::Neg),
            Tok::Ident(w) if w == "defined" => Some(UnOp::Defined),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let e = self.unary()?;
            let span = t.span.to(e.span);
            if let (UnOp::Neg, ExprKind::Int(n)) = (op, &e.kind) {
                return Ok(Expr {
                    kind: ExprKind::Int(-n),
                    span,
                });
            }
            return Ok(Expr {
                kind: ExprKind::Unary(op, Box::new(e)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.peek();
        let kind = match &t.tok {
            Tok::Int(n) => {
                self.bump();
                ExprKind::Int(*n)
            }
            Tok::Str(_) => {
                let s = self.string_value("a string")?;
                return Ok(Expr {
                    kind: ExprKind::Str(s.node),
                    span: s.span,
                });
            }
            Tok::Pv(pv) => {
                self.bump();
                ExprKind::Pv(pv.clone())
            }
            Tok::Ip(ip) => {
                self.bump();
                ExprKind::Ip(ip.clone())
            }
            Tok::Punct(Punct::LParen) => {
                self.bump();
                let e = self.expr()?;
                self.expect(Punct::RParen, "to close `(`")?;
                return Ok(Expr {
                    kind: e.kind,
                    span: t.span.to(self.prev_span()),
                });
            }
            Tok::Ident(name) => {
                self.bump();
                if self.peek().is(Punct::LParen) {
                    return self.call(Spanned::new(name.clone(), t.span));
                }
                ExprKind::Word(name.clone())
            }
            _ => return Err(self.expected("a value, a pseudo-variable or a function call")),
        };
        Ok(Expr { kind, span: t.span })
    }

    fn call(&mut self, name: Spanned<String>) -> PResult<Expr> {
        self.bump(); // (
        let mut args = Vec::new();
        if !self.eat(Punct::RParen) {
            loop {
                if self.peek().is(Punct::Semi) || self.at_eof() {
                    return Err(
                        self.expected(&format!("`)` after the arguments of `{}`", name.node))
                    );
                }
                args.push(self.expr()?);
                if self.eat(Punct::Comma) {
                    continue;
                }
                if self.eat(Punct::RParen) {
                    break;
                }
                return Err(self.expected(&format!(
                    "`,` or `)` after the arguments of `{}`",
                    name.node
                )));
            }
        }
        let span = name.span.to(self.prev_span());
        Ok(Expr {
            kind: ExprKind::Call { name, args },
            span,
        })
    }
}
