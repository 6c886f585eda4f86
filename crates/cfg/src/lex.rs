//! Lexer and preprocessor in one pass.
//!
//! Kamailio's preprocessor is not textual: `#!define` names are replaced where
//! they appear as identifiers, `#!subst` rewrites string literals, and
//! `include_file` splices another file's tokens. Doing this while lexing keeps
//! every token's span pointing at the file and line the user wrote, so errors
//! in included files and in `#!define` uses are reported where they are.

use crate::diag::Diagnostic;
use crate::pv::{PvSyntax, parse_pv};
use crate::source::{FileId, Loader, SourceMap, Span};
use std::collections::HashMap;
use std::path::PathBuf;

/// Punctuation and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Punct {
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Colon,
    Assign,
    ColonAssign,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Match,
    NoMatch,
    And,
    Or,
    Not,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    BitAnd,
    BitOr,
    Dot,
    At,
}

impl Punct {
    /// The symbol as written.
    pub fn as_str(self) -> &'static str {
        use Punct::*;
        match self {
            LParen => "(",
            RParen => ")",
            LBrace => "{",
            RBrace => "}",
            LBracket => "[",
            RBracket => "]",
            Comma => ",",
            Semi => ";",
            Colon => ":",
            Assign => "=",
            ColonAssign => ":=",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Gt => ">",
            Le => "<=",
            Ge => ">=",
            Match => "=~",
            NoMatch => "!~",
            And => "&&",
            Or => "||",
            Not => "!",
            Plus => "+",
            Minus => "-",
            Star => "*",
            Slash => "/",
            Percent => "%",
            BitAnd => "&",
            BitOr => "|",
            Dot => ".",
            At => "@",
        }
    }
}

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A name: keyword, function, module parameter word, define use.
    Ident(String),
    /// A decimal or hex integer.
    Int(i64),
    /// A string literal with escapes processed.
    Str(String),
    /// A pseudo-variable.
    Pv(PvSyntax),
    /// A dotted IPv4 address (`src_ip == 127.0.0.1`).
    Ip(String),
    /// An operator or bracket.
    Punct(Punct),
    /// End of input.
    Eof,
}

/// A token with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Where it was written (the use site for tokens produced by a `#!define`).
    pub span: Span,
    /// The source text of the token (the define's text for expansions).
    pub raw: String,
    /// A line break separates it from the previous token.
    pub newline_before: bool,
    /// White space separates it from the previous token.
    pub space_before: bool,
}

impl Token {
    /// True for the given punctuation.
    pub fn is(&self, p: Punct) -> bool {
        self.tok == Tok::Punct(p)
    }
    /// The identifier text, if an identifier.
    pub fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.tok {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(_) => format!("number `{}`", self.raw),
            Tok::Str(_) => "a string".into(),
            Tok::Pv(p) => format!("`{}`", p.text),
            Tok::Ip(s) => format!("address `{s}`"),
            Tok::Punct(p) => format!("`{}`", p.as_str()),
            Tok::Eof => "the end of the file".into(),
        }
    }
}

/// Options that shape preprocessing.
#[derive(Debug, Clone, Default)]
pub struct PreOptions {
    /// Names defined before the file is read (`-A NAME[=VALUE]`).
    pub defines: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
struct Define {
    value: String,
}

#[derive(Debug)]
struct Subst {
    re: regex::Regex,
    repl: String,
    global: bool,
}

struct Cond {
    /// This branch's tokens are used.
    active: bool,
    /// Any enclosing branch was inactive.
    parent_active: bool,
    seen_else: bool,
    span: Span,
    /// The name tested and whether the directive was `#!ifndef`.
    name: String,
    ifndef: bool,
}

/// The innermost `#!ifdef`/`#!ifndef` branch a token was read under.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// The name the directive tests.
    pub name: String,
    /// The `#!ifdef`/`#!ifndef` directive.
    pub directive: Span,
    /// The directive was `#!ifndef`.
    pub ifndef: bool,
    /// The token lies in the `#!else` branch.
    pub in_else: bool,
    /// `file:line` of the directive.
    pub at: String,
}

impl Guard {
    /// Why the guarded branch was taken, e.g. `WITH_AUTH is defined (#!ifdef WITH_AUTH at f.cfg:12)`.
    pub fn reason(&self) -> String {
        format!("{} ({})", self.condition(), self.directive_text())
    }

    /// What the branch needs: `WITH_AUTH is defined`.
    pub fn condition(&self) -> String {
        let defined = self.ifndef == self.in_else;
        format!(
            "{} is {}",
            self.name,
            if defined { "defined" } else { "not defined" }
        )
    }

    /// `#!ifdef WITH_AUTH at f.cfg:12`, or `the #!else of …`.
    pub fn directive_text(&self) -> String {
        format!(
            "{}#!{} {} at {}",
            if self.in_else { "the #!else of " } else { "" },
            if self.ifndef { "ifndef" } else { "ifdef" },
            self.name,
            self.at
        )
    }
}

/// For tokens read inside a taken `#!ifdef`/`#!ifndef` branch, the innermost
/// such branch (included files inherit the branch their `include_file` is in).
#[derive(Debug, Clone, Default)]
pub struct Guards {
    guards: Vec<Guard>,
    by_start: HashMap<(FileId, u32), usize>,
    /// Names `#!define`d only in branches not taken, with the first such branch.
    skipped_defines: HashMap<String, Guard>,
}

impl Guards {
    /// Where `name` is `#!define`d in a branch not taken, if it is not defined anywhere else.
    pub fn skipped_define(&self, name: &str) -> Option<&Guard> {
        self.skipped_defines.get(name)
    }

    /// The innermost branch the token starting where `span` starts was read under.
    pub fn of(&self, span: Span) -> Option<&Guard> {
        self.by_start
            .get(&(span.file, span.lo))
            .map(|&i| &self.guards[i])
    }
}

const MAX_INCLUDE_DEPTH: usize = 32;
const MAX_DEFINE_DEPTH: usize = 16;

/// The result of lexing a configuration with its includes.
#[derive(Debug)]
pub struct Lexed {
    /// All tokens, ending in [`Tok::Eof`].
    pub tokens: Vec<Token>,
    /// Errors and warnings found while lexing.
    pub diags: Vec<Diagnostic>,
    /// The `#!ifdef` branch each guarded token was read under.
    pub guards: Guards,
}

/// Lexes and preprocesses `root` and everything it includes.
pub fn lex_config(
    root: PathBuf,
    loader: &dyn Loader,
    sources: &mut SourceMap,
    opts: &PreOptions,
) -> Lexed {
    let mut pre = Pre {
        loader,
        sources,
        defines: HashMap::new(),
        substs: vec![],
        subst_budget: MAX_SUBST_TOTAL,
        diags: vec![],
        stack: vec![],
        names: vec![],
        guards: Guards::default(),
        enclosing: None,
    };
    for (name, value) in &opts.defines {
        pre.defines.insert(
            name.clone(),
            Define {
                value: value.clone().unwrap_or_default(),
            },
        );
    }
    let mut tokens = Vec::new();
    match loader.read(&root) {
        Ok(text) => {
            let id = loader.identity(&root);
            pre.names.push(root.clone());
            let file = pre.sources.add(root, text);
            pre.stack.push(id);
            pre.lex_file(file, &mut tokens);
        }
        Err(e) => pre.diags.push(Diagnostic::global(format!(
            "cannot read {}: {e}",
            root.display()
        ))),
    }
    let end = tokens
        .last()
        .map(|t: &Token| Span {
            lo: t.span.hi,
            ..t.span
        })
        .unwrap_or_default();
    tokens.push(Token {
        tok: Tok::Eof,
        span: end,
        raw: String::new(),
        newline_before: true,
        space_before: true,
    });
    let defined = &pre.defines;
    pre.guards
        .skipped_defines
        .retain(|name, _| !defined.contains_key(name));
    Lexed {
        tokens,
        diags: pre.diags,
        guards: pre.guards,
    }
}

struct Pre<'a> {
    loader: &'a dyn Loader,
    sources: &'a mut SourceMap,
    defines: HashMap<String, Define>,
    substs: Vec<Subst>,
    /// Bytes `#!subst` rules may still produce in this configuration
    /// ([`MAX_SUBST_TOTAL`] in all).
    subst_budget: usize,
    diags: Vec<Diagnostic>,
    /// Identities of the files being read, for cycle detection.
    stack: Vec<PathBuf>,
    /// The same files as named, for messages.
    names: Vec<PathBuf>,
    guards: Guards,
    /// The guard (index in `guards`) of the `include_file` being read.
    enclosing: Option<usize>,
}

impl Pre<'_> {
    fn lex_file(&mut self, file: FileId, out: &mut Vec<Token>) {
        let text = self.sources.file(file).text.clone();
        let b = text.as_bytes();
        let mut pos = 0usize;
        let mut conds: Vec<Cond> = Vec::new();
        let mut at_line_start = true;
        let mut newline_before = true;
        let mut space_before = true;
        let span = |lo: usize, hi: usize| Span {
            file,
            lo: lo as u32,
            hi: hi as u32,
        };
        let active = |conds: &Vec<Cond>| conds.last().is_none_or(|c| c.active);
        // The innermost taken branch's index in `self.guards`, made on first use.
        let enclosing = self.enclosing;
        let mut guard: Option<usize> = None;
        // Tokens of this file, before include splicing and define expansion.
        while pos < b.len() {
            let c = b[pos];
            if c == b'\n' {
                pos += 1;
                at_line_start = true;
                newline_before = true;
                space_before = true;
                continue;
            }
            if c == b' ' || c == b'\t' || c == b'\r' {
                pos += 1;
                space_before = true;
                continue;
            }
            // Directives: `#!name` or `!!name` first on a line.
            if at_line_start
                && (b[pos..].starts_with(b"#!") || b[pos..].starts_with(b"!!"))
                && b.get(pos + 2).is_some_and(|c| c.is_ascii_alphabetic())
            {
                let line_end = memchr_nl(b, pos);
                let name_end = (pos + 2..line_end)
                    .find(|&i| !(b[i].is_ascii_alphanumeric() || b[i] == b'_'))
                    .unwrap_or(line_end);
                let name = &text[pos + 2..name_end];
                let dspan = span(pos, name_end);
                match name {
                    "KAMAILIO" | "OPENSIPS" | "SER" | "MAXCOMPAT" | "ALL" => {
                        // Dialect markers: the rest of the line is ordinary config.
                        pos = name_end;
                        at_line_start = false;
                        continue;
                    }
                    "ifdef" | "ifndef" => {
                        let arg = text[name_end..line_end].trim();
                        let parent_active = active(&conds);
                        let defined = self.defines.contains_key(arg);
                        if arg.is_empty() {
                            self.diags.push(Diagnostic::error(
                                dspan,
                                format!("expected a name after `#!{name}`"),
                            ));
                        }
                        conds.push(Cond {
                            active: parent_active && (defined == (name == "ifdef")),
                            parent_active,
                            seen_else: false,
                            span: dspan,
                            name: arg.to_string(),
                            ifndef: name == "ifndef",
                        });
                        guard = None;
                    }
                    "else" => match conds.last_mut() {
                        Some(c) if !c.seen_else => {
                            c.seen_else = true;
                            c.active = c.parent_active && !c.active;
                            guard = None;
                        }
                        Some(_) => self.diags.push(Diagnostic::error(
                            dspan,
                            "`#!else` after `#!else` in the same `#!ifdef`",
                        )),
                        None => self.diags.push(Diagnostic::error(
                            dspan,
                            "`#!else` without `#!ifdef` or `#!ifndef`",
                        )),
                    },
                    "endif" => {
                        guard = None;
                        if conds.pop().is_none() {
                            self.diags.push(Diagnostic::error(
                                dspan,
                                "`#!endif` without `#!ifdef` or `#!ifndef`",
                            ));
                        }
                    }
                    "define" | "trydef" | "redefine" if !active(&conds) => {
                        // Remembered to explain a later use of the name (`DBURL` under WITH_MYSQL).
                        let dname = text[name_end..line_end].split_whitespace().next();
                        if let (Some(dname), Some(c)) = (dname, conds.last()) {
                            let f = self.sources.file(c.span.file);
                            let at = format!("{}:{}", f.path.display(), f.line_col(c.span.lo).0);
                            self.guards
                                .skipped_defines
                                .entry(dname.to_string())
                                .or_insert(Guard {
                                    name: c.name.clone(),
                                    directive: c.span,
                                    ifndef: c.ifndef,
                                    in_else: c.seen_else,
                                    at,
                                });
                        }
                    }
                    _ if !active(&conds) => {}
                    "define" | "trydef" | "redefine" => {
                        let (line_end2, rest) = continued_line(&text, name_end, line_end);
                        let rest = rest.trim();
                        let (dname, value) = match rest.find(|c: char| c.is_whitespace()) {
                            Some(i) => (&rest[..i], rest[i..].trim().to_string()),
                            None => (rest, String::new()),
                        };
                        if dname.is_empty()
                            || !dname
                                .bytes()
                                .all(|c| c.is_ascii_alphanumeric() || c == b'_')
                        {
                            self.diags.push(Diagnostic::error(
                                dspan,
                                format!("expected a name after `#!{name}`"),
                            ));
                        } else if name == "define" && self.defines.contains_key(dname) {
                            self.diags.push(
                                Diagnostic::error(span(name_end, line_end), format!("`{dname}` is already defined"))
                                    .help("use `#!redefine` to change it, or `#!trydef` to define it only if it is not"),
                            );
                        } else if !(name == "trydef" && self.defines.contains_key(dname)) {
                            self.defines.insert(dname.to_string(), Define { value });
                        }
                        pos = line_end2;
                        continue;
                    }
                    "undef" => {
                        self.defines.remove(text[name_end..line_end].trim());
                    }
                    "subst" | "substdef" | "substdefs" => {
                        let arg = text[name_end..line_end].trim();
                        let arg = arg.trim_matches('"');
                        match parse_subst(arg) {
                            Ok((re, repl, global)) => {
                                if name != "subst" {
                                    let value = if name == "substdefs" {
                                        format!("\"{repl}\"")
                                    } else {
                                        repl.clone()
                                    };
                                    self.defines.insert(re_literal(&re), Define { value });
                                }
                                match regex::RegexBuilder::new(&re)
                                    .case_insensitive(global.1)
                                    .build()
                                {
                                    Ok(re) => self.substs.push(Subst {
                                        re,
                                        repl: backrefs(&repl),
                                        global: global.0,
                                    }),
                                    Err(e) => self.diags.push(Diagnostic::error(
                                        span(name_end, line_end),
                                        format!("bad regular expression in `#!{name}`: {e}"),
                                    )),
                                }
                            }
                            Err(m) => self
                                .diags
                                .push(Diagnostic::error(span(name_end, line_end), m)),
                        }
                    }
                    "include_file" | "import_file" => {
                        let arg = text[name_end..line_end]
                            .trim()
                            .trim_matches('"')
                            .to_string();
                        let outer = self.enclosing;
                        self.enclosing = self.current_guard(&mut guard, &conds, enclosing);
                        self.include(
                            &arg,
                            name == "import_file",
                            span(name_end, line_end),
                            file,
                            out,
                        );
                        self.enclosing = outer;
                    }
                    _ => {
                        self.diags.push(
                            Diagnostic::error(dspan, format!("unknown preprocessor directive `#!{name}`"))
                                .help("known: define, trydef, redefine, undef, ifdef, ifndef, else, endif, subst, substdef, substdefs, include_file, import_file"),
                        );
                    }
                }
                pos = line_end;
                continue;
            }
            if !active(&conds) {
                pos = memchr_nl(b, pos);
                continue;
            }
            at_line_start = false;
            // Comments.
            if c == b'#' || b[pos..].starts_with(b"//") {
                pos = memchr_nl(b, pos);
                continue;
            }
            if b[pos..].starts_with(b"/*") {
                match text[pos + 2..].find("*/") {
                    Some(i) => {
                        let end = pos + 2 + i + 2;
                        if text[pos..end].contains('\n') {
                            newline_before = true;
                        }
                        pos = end;
                    }
                    None => {
                        self.diags.push(Diagnostic::error(
                            span(pos, pos + 2),
                            "unterminated comment: expected `*/`",
                        ));
                        pos = b.len();
                    }
                }
                space_before = true;
                continue;
            }
            let start = pos;
            let tok = match c {
                b'"' | b'\'' => {
                    let (s, end, ok) = lex_string(&text, pos);
                    pos = end;
                    if !ok {
                        self.diags.push(Diagnostic::error(
                            span(start, start + 1),
                            "unterminated string: expected a closing quote",
                        ));
                    }
                    Tok::Str(self.apply_substs(s, span(start, pos)))
                }
                b'$' => match parse_pv(&text[pos..], true) {
                    Ok((pv, n)) => {
                        pos += n;
                        Tok::Pv(pv)
                    }
                    Err(e) => {
                        self.diags.push(Diagnostic::error(
                            span(pos + e.offset, pos + e.offset + 1),
                            e.message,
                        ));
                        // Skip the rest of the PV-looking text.
                        pos += 1;
                        while pos < b.len() && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
                            pos += 1;
                        }
                        continue;
                    }
                },
                b'0'..=b'9' => {
                    let (tok, end) = lex_number(&text, pos);
                    pos = end;
                    match tok {
                        Some(t) => t,
                        None => {
                            self.diags.push(Diagnostic::error(
                                span(start, end),
                                format!("number `{}` is too large", &text[start..end]),
                            ));
                            Tok::Int(0)
                        }
                    }
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    while pos < b.len() && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
                        pos += 1;
                    }
                    Tok::Ident(text[start..pos].to_string())
                }
                _ => {
                    let two = b.get(pos + 1).copied().unwrap_or(0);
                    let (p, n) = match (c, two) {
                        (b'=', b'=') => (Punct::Eq, 2),
                        (b'!', b'=') => (Punct::Ne, 2),
                        (b'<', b'=') => (Punct::Le, 2),
                        (b'>', b'=') => (Punct::Ge, 2),
                        (b'=', b'~') => (Punct::Match, 2),
                        (b'!', b'~') => (Punct::NoMatch, 2),
                        (b'&', b'&') => (Punct::And, 2),
                        (b'|', b'|') => (Punct::Or, 2),
                        (b':', b'=') => (Punct::ColonAssign, 2),
                        (b'(', _) => (Punct::LParen, 1),
                        (b')', _) => (Punct::RParen, 1),
                        (b'{', _) => (Punct::LBrace, 1),
                        (b'}', _) => (Punct::RBrace, 1),
                        (b'[', _) => (Punct::LBracket, 1),
                        (b']', _) => (Punct::RBracket, 1),
                        (b',', _) => (Punct::Comma, 1),
                        (b';', _) => (Punct::Semi, 1),
                        (b':', _) => (Punct::Colon, 1),
                        (b'=', _) => (Punct::Assign, 1),
                        (b'<', _) => (Punct::Lt, 1),
                        (b'>', _) => (Punct::Gt, 1),
                        (b'!', _) => (Punct::Not, 1),
                        (b'+', _) => (Punct::Plus, 1),
                        (b'-', _) => (Punct::Minus, 1),
                        (b'*', _) => (Punct::Star, 1),
                        (b'/', _) => (Punct::Slash, 1),
                        (b'%', _) => (Punct::Percent, 1),
                        (b'&', _) => (Punct::BitAnd, 1),
                        (b'|', _) => (Punct::BitOr, 1),
                        (b'.', _) => (Punct::Dot, 1),
                        (b'@', _) => (Punct::At, 1),
                        _ => {
                            let ch = text[pos..].chars().next().unwrap_or('?');
                            self.diags.push(Diagnostic::error(
                                span(pos, pos + ch.len_utf8()),
                                format!("unexpected character `{ch}`"),
                            ));
                            pos += ch.len_utf8();
                            continue;
                        }
                    };
                    pos += n;
                    Tok::Punct(p)
                }
            };
            let token = Token {
                tok,
                span: span(start, pos),
                raw: text[start..pos].to_string(),
                newline_before,
                space_before,
            };
            newline_before = false;
            space_before = false;
            if let Some(g) = self.current_guard(&mut guard, &conds, enclosing) {
                self.guards.by_start.insert((file, token.span.lo), g);
            }
            // include_file "x" / import_file "x" as statements.
            if let Some(prev) = out.last()
                && let (Some(kw @ ("include_file" | "import_file")), Tok::Str(name)) =
                    (prev.ident(), &token.tok)
            {
                let optional = kw == "import_file";
                let name = name.clone();
                let sp = prev.span.to(token.span);
                out.pop();
                let outer = self.enclosing;
                self.enclosing = self.current_guard(&mut guard, &conds, enclosing);
                self.include(&name, optional, sp, file, out);
                self.enclosing = outer;
                continue;
            }
            self.push_expanded(token, out, 0);
        }
        for c in conds {
            self.diags.push(Diagnostic::error(
                c.span,
                "this `#!ifdef`/`#!ifndef` has no `#!endif`",
            ));
        }
    }

    /// The innermost taken `#!ifdef` branch (index in `self.guards`), recorded on first use.
    fn current_guard(
        &mut self,
        guard: &mut Option<usize>,
        conds: &[Cond],
        enclosing: Option<usize>,
    ) -> Option<usize> {
        match (*guard, conds.last()) {
            (Some(g), _) => Some(g),
            (None, Some(c)) => {
                let f = self.sources.file(c.span.file);
                let at = format!("{}:{}", f.path.display(), f.line_col(c.span.lo).0);
                self.guards.guards.push(Guard {
                    at,
                    name: c.name.clone(),
                    directive: c.span,
                    ifndef: c.ifndef,
                    in_else: c.seen_else,
                });
                *guard = Some(self.guards.guards.len() - 1);
                *guard
            }
            (None, None) => enclosing,
        }
    }

    /// Pushes a token, replacing a defined identifier by its value's tokens.
    fn push_expanded(&mut self, token: Token, out: &mut Vec<Token>, depth: usize) {
        let Some(name) = token.ident() else {
            out.push(token);
            return;
        };
        let Some(def) = self.defines.get(name).cloned() else {
            out.push(token);
            return;
        };
        if depth >= MAX_DEFINE_DEPTH {
            self.diags.push(Diagnostic::error(
                token.span,
                format!("`#!define` of `{name}` expands into itself"),
            ));
            return;
        }
        let toks = self.lex_snippet(&def.value, token.span);
        for (i, mut t) in toks.into_iter().enumerate() {
            if i == 0 {
                t.newline_before = token.newline_before;
                t.space_before = token.space_before;
            }
            self.push_expanded(t, out, depth + 1);
        }
    }

    /// Lexes a define's value; every token gets the span of the use site.
    fn lex_snippet(&mut self, text: &str, at: Span) -> Vec<Token> {
        let mut sm = SourceMap::default();
        let loader = crate::source::MemLoader::new().with("<define>", text);
        let mut inner = Pre {
            loader: &loader,
            sources: &mut sm,
            defines: HashMap::new(),
            substs: vec![],
            subst_budget: MAX_SUBST_TOTAL,
            diags: vec![],
            stack: vec![],
            names: vec![],
            guards: Guards::default(),
            enclosing: None,
        };
        let id = inner.sources.add("<define>".into(), text.to_string());
        let mut toks = Vec::new();
        inner.lex_file(id, &mut toks);
        if let Some(d) = inner.diags.into_iter().next() {
            self.diags.push(Diagnostic::error(
                at,
                format!("in the value of this define: {}", d.message),
            ));
        }
        for t in &mut toks {
            t.span = at;
            if let Tok::Str(s) = &t.tok {
                t.tok = Tok::Str(self.apply_substs(s.clone(), at));
            }
        }
        toks
    }

    fn include(
        &mut self,
        name: &str,
        optional: bool,
        at: Span,
        from: FileId,
        out: &mut Vec<Token>,
    ) {
        let from_path = self.sources.file(from).path.clone();
        let path = self.loader.resolve(name, Some(&from_path));
        let id = self.loader.identity(&path);
        if self.stack.contains(&id) {
            let chain: Vec<String> = self
                .names
                .iter()
                .chain(std::iter::once(&path))
                .map(|p| p.display().to_string())
                .collect();
            self.diags.push(Diagnostic::error(
                at,
                format!("include cycle: {}", chain.join(" -> ")),
            ));
            return;
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.diags.push(Diagnostic::error(
                at,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
            ));
            return;
        }
        match self.loader.read(&path) {
            Ok(text) => {
                self.names.push(path.clone());
                let fid = self.sources.add(path, text);
                self.stack.push(id);
                self.lex_file(fid, out);
                self.stack.pop();
                self.names.pop();
            }
            Err(_) if optional => {}
            Err(e) => self.diags.push(Diagnostic::error(
                at,
                format!("cannot include `{}`: {e}", path.display()),
            )),
        }
    }

    /// The string literal after every `#!subst` rule. Rules can grow a
    /// string (a pattern that matches the empty string inserts at every
    /// position; several such rules multiply): past [`MAX_SUBST_LEN`] the
    /// rewriting stops with an error instead of eating memory and time.
    /// Over the whole configuration the rules may produce [`MAX_SUBST_TOTAL`]
    /// bytes: many strings each grown to just under the limit would
    /// otherwise take minutes; past it the strings are left as written.
    fn apply_substs(&mut self, s: String, at: Span) -> String {
        if self.substs.is_empty() || self.subst_budget == 0 {
            return s;
        }
        let mut s = s;
        for sub in &self.substs {
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for caps in sub.re.captures_iter(&s) {
                let m = caps.get(0).expect("group 0");
                out.push_str(&s[last..m.start()]);
                caps.expand(&sub.repl, &mut out);
                last = m.end();
                if out.len() > self.subst_budget {
                    self.subst_budget = 0;
                    self.diags.push(Diagnostic::error(
                        at,
                        format!(
                            "`#!subst` rules produce more than {MAX_SUBST_TOTAL} bytes in this configuration"
                        ),
                    ));
                    return s;
                }
                if out.len() > MAX_SUBST_LEN {
                    self.diags.push(Diagnostic::error(
                        at,
                        format!(
                            "`#!subst` rules make this string longer than {MAX_SUBST_LEN} bytes"
                        ),
                    ));
                    return s;
                }
                if !sub.global {
                    break;
                }
            }
            out.push_str(&s[last..]);
            self.subst_budget = self.subst_budget.saturating_sub(out.len());
            s = out;
        }
        s
    }
}

/// The longest string literal `#!subst` rules may produce.
const MAX_SUBST_LEN: usize = 1 << 20;

/// What `#!subst` rules may produce over a whole configuration.
const MAX_SUBST_TOTAL: usize = 4 << 20;

fn memchr_nl(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |i| from + i)
}

/// The text of a directive line with `\` continuations joined; returns the end offset too.
fn continued_line(text: &str, from: usize, mut line_end: usize) -> (usize, String) {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut start = from;
    loop {
        let line = text[start..line_end].trim_end_matches('\r');
        if let Some(stripped) = line.strip_suffix('\\') {
            out.push_str(stripped);
            out.push(' ');
            if line_end >= b.len() {
                return (line_end, out);
            }
            start = line_end + 1;
            line_end = memchr_nl(b, start);
        } else {
            out.push_str(line);
            return (line_end, out);
        }
    }
}

/// `/re/repl/flags` with any delimiter; flags `g` (all), `i` (ignore case).
fn parse_subst(arg: &str) -> Result<(String, String, (bool, bool)), String> {
    let mut chars = arg.chars();
    let delim = chars
        .next()
        .ok_or("expected `/regex/replacement/` after the directive")?;
    let parts: Vec<&str> = arg[delim.len_utf8()..].split(delim).collect();
    if parts.len() < 3 {
        return Err(format!(
            "expected `{delim}regex{delim}replacement{delim}[flags]`"
        ));
    }
    let flags = parts[2];
    Ok((
        parts[0].to_string(),
        parts[1].to_string(),
        (flags.contains('g'), flags.contains('i')),
    ))
}

fn re_literal(re: &str) -> String {
    re.trim_start_matches('^').trim_end_matches('$').to_string()
}

fn backrefs(repl: &str) -> String {
    let mut out = String::new();
    let mut it = repl.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' if it.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                out.push(it.next().unwrap_or('0'));
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// Reads a quoted string at `pos`; returns the value, the end offset and whether it was closed.
fn lex_string(text: &str, pos: usize) -> (String, usize, bool) {
    let b = text.as_bytes();
    let quote = b[pos];
    let mut out = String::new();
    let mut i = pos + 1;
    let mut lit_start = i;
    while i < b.len() {
        match b[i] {
            c if c == quote => {
                out.push_str(&text[lit_start..i]);
                return (out, i + 1, true);
            }
            b'\\' if i + 1 < b.len() => {
                out.push_str(&text[lit_start..i]);
                match b[i + 1] {
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'\\' => out.push('\\'),
                    b'"' => out.push('"'),
                    b'\'' => out.push('\''),
                    // Unknown escapes keep the backslash, so regexes like "\+1" survive.
                    _ => {
                        out.push('\\');
                        lit_start = i + 1;
                        i += 1;
                        continue;
                    }
                }
                i += 2;
                lit_start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[lit_start..]);
    (out, b.len(), false)
}

/// A number or a dotted IPv4 address at `pos`.
fn lex_number(text: &str, pos: usize) -> (Option<Tok>, usize) {
    let b = text.as_bytes();
    if b[pos..].starts_with(b"0x") || b[pos..].starts_with(b"0X") {
        let mut end = pos + 2;
        while end < b.len() && b[end].is_ascii_hexdigit() {
            end += 1;
        }
        return (
            i64::from_str_radix(&text[pos + 2..end], 16)
                .ok()
                .map(Tok::Int),
            end,
        );
    }
    let mut end = pos;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    // a.b.c.d
    let mut e = end;
    let mut dots = 0;
    while dots < 3 && e + 1 < b.len() && b[e] == b'.' && b[e + 1].is_ascii_digit() {
        e += 1;
        while e < b.len() && b[e].is_ascii_digit() {
            e += 1;
        }
        dots += 1;
    }
    if dots == 3 {
        return (Some(Tok::Ip(text[pos..e].to_string())), e);
    }
    (text[pos..end].parse::<i64>().ok().map(Tok::Int), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemLoader;

    fn lex(
        files: &[(&str, &str)],
        defines: &[(&str, Option<&str>)],
    ) -> (Vec<Tok>, Vec<Diagnostic>) {
        let mut l = MemLoader::new();
        for (p, t) in files {
            l = l.with(*p, *t);
        }
        let mut sm = SourceMap::default();
        let opts = PreOptions {
            defines: defines
                .iter()
                .map(|(a, b)| (a.to_string(), b.map(str::to_string)))
                .collect(),
        };
        let r = lex_config(files[0].0.into(), &l, &mut sm, &opts);
        (
            r.tokens
                .into_iter()
                .map(|t| t.tok)
                .filter(|t| *t != Tok::Eof)
                .collect(),
            r.diags,
        )
    }

    fn idents(t: &[Tok]) -> Vec<String> {
        t.iter()
            .filter_map(|t| {
                if let Tok::Ident(s) = t {
                    Some(s.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn guards_name_the_innermost_taken_branch_and_cross_includes() {
        let files = [
            (
                "m.cfg",
                "#!define A\nfree\n#!ifdef A\na1\n#!ifndef B\nnb\n#!else\nx\n#!endif\na2\ninclude_file \"i.cfg\"\n#!endif\nend\n",
            ),
            ("i.cfg", "inc\n"),
        ];
        let mut loader = crate::source::MemLoader::new();
        for (n, t) in files {
            loader = loader.with(n, t);
        }
        let mut sm = SourceMap::default();
        let l = lex_config("m.cfg".into(), &loader, &mut sm, &PreOptions::default());
        assert!(l.diags.is_empty(), "{:?}", l.diags);
        let why = |w: &str| {
            let t = l.tokens.iter().find(|t| t.ident() == Some(w)).expect(w);
            l.guards.of(t.span).map(Guard::reason)
        };
        assert_eq!(why("free"), None);
        assert_eq!(why("end"), None);
        assert_eq!(
            why("a1").as_deref(),
            Some("A is defined (#!ifdef A at m.cfg:3)")
        );
        assert_eq!(
            why("nb").as_deref(),
            Some("B is not defined (#!ifndef B at m.cfg:5)")
        );
        assert_eq!(
            why("a2").as_deref(),
            Some("A is defined (#!ifdef A at m.cfg:3)")
        );
        assert_eq!(
            why("inc").as_deref(),
            Some("A is defined (#!ifdef A at m.cfg:3)")
        );
    }

    #[test]
    fn nested_ifdef_else() {
        let cfg = "#!define A\n#!ifdef A\na1\n#!ifdef B\nb1\n#!else\nnb\n#!endif\n#!else\nna\n#!endif\nend\n";
        let (t, d) = lex(&[("m.cfg", cfg)], &[]);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(idents(&t), ["a1", "nb", "end"]);
        let (t, _) = lex(&[("m.cfg", cfg)], &[("B", None)]);
        assert_eq!(idents(&t), ["a1", "b1", "end"]);
    }

    #[test]
    fn define_values_and_command_line_defines() {
        let (t, d) = lex(
            &[(
                "m.cfg",
                "#!define PORT 5060\n#!define WITH_X\nx = PORT\n#!ifndef WITH_X\nno\n#!endif\ny=V\n",
            )],
            &[("V", Some("\"v\""))],
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(t[2], Tok::Int(5060));
        assert_eq!(t[5], Tok::Str("v".into()));
    }

    #[test]
    fn include_relative_and_cycle() {
        let (t, d) = lex(
            &[
                ("dir/a.cfg", "include_file \"b.cfg\"\nafter\n"),
                ("dir/b.cfg", "inb\n"),
            ],
            &[],
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(idents(&t), ["inb", "after"]);
        let (_, d) = lex(
            &[
                ("a.cfg", "include_file \"b.cfg\"\n"),
                ("b.cfg", "#!include_file \"a.cfg\"\n"),
            ],
            &[],
        );
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message
                .contains("include cycle: a.cfg -> b.cfg -> a.cfg"),
            "{}",
            d[0].message
        );
        let (_, d) = lex(&[("a.cfg", "import_file \"missing.cfg\"\n")], &[]);
        assert!(d.is_empty());
    }

    #[test]
    fn strings_ips_comments_and_subst() {
        let (t, d) = lex(
            &[(
                "m.cfg",
                "#!substdef \"!MYIP!127.0.0.2!g\"\n/* c\n */ \"a\\n\\+\" 'b' 127.0.0.1 // x\n# y\n\"ip=MYIP\" MYIP\n",
            )],
            &[],
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(t[0], Tok::Str("a\n\\+".into()));
        assert_eq!(t[1], Tok::Str("b".into()));
        assert_eq!(t[2], Tok::Ip("127.0.0.1".into()));
        assert_eq!(t[3], Tok::Str("ip=127.0.0.2".into()));
        assert_eq!(t[4], Tok::Ip("127.0.0.2".into()));
    }

    #[test]
    fn errors_are_reported_and_lexing_goes_on() {
        let (t, d) = lex(&[("m.cfg", "#!ifdef X\n#!bogus\nx ` y\n\"open\n")], &[]);
        assert!(d.iter().any(|d| d.message.contains("no `#!endif`")));
        assert!(t.is_empty());
        let (t, d) = lex(&[("m.cfg", "#!bogus\nx ` y\n")], &[]);
        assert_eq!(d.len(), 2);
        assert_eq!(idents(&t), ["x", "y"]);
    }
}
