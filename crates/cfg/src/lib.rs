//! siphon's configuration language: the Kamailio dialect (with what the
//! OpenSIPS seed uses), read into a syntax tree with spans.
//!
//! Pure: text in, [`Config`] or [`Diagnostic`]s out. Files are read through a
//! [`Loader`], so tests and the embedded default config need no filesystem.
//!
//! Why our own parser rather than a parser generator: the language is modal
//! (preprocessor directives are lines, `#!define` replaces identifiers, PVs
//! have their own sub-grammar, core parameter values like
//! `udp:127.0.0.1:5060` are not expressions), and users need errors that say
//! what was expected where. A hand-written lexer and recursive descent give
//! both with no build cost.

#![warn(missing_docs)]

pub mod ast;
pub mod diag;
pub mod lex;
pub mod parse;
pub mod pv;
pub mod source;

pub use ast::Config;
pub use diag::{Diagnostic, Severity};
pub use lex::{Guard, Guards, PreOptions};
pub use source::{FileId, FsLoader, Loader, MemLoader, SourceMap, Span, Spanned};

use std::path::PathBuf;

/// A parsed configuration with its sources and every diagnostic found.
#[derive(Debug)]
pub struct Parsed {
    /// The syntax tree (partial when there were errors).
    pub config: Config,
    /// The files read, for rendering diagnostics.
    pub sources: SourceMap,
    /// Errors and warnings.
    pub diags: Vec<Diagnostic>,
}

impl Parsed {
    /// Whether any error was found.
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }
}

/// Reads, preprocesses and parses the configuration rooted at `root`.
pub fn parse_config(root: impl Into<PathBuf>, loader: &dyn Loader, opts: &PreOptions) -> Parsed {
    let mut sources = SourceMap::default();
    let lexed = lex::lex_config(root.into(), loader, &mut sources, opts);
    let (mut config, mut diags) = parse::parse_tokens(&lexed.tokens);
    config.guards = lexed.guards;
    let mut all = lexed.diags;
    // `modparam("auth_db", "db_url", DBURL)` with DBURL defined only under an #!ifdef that is off.
    for d in &mut diags {
        if let Some(g) = d
            .span
            .and_then(|sp| config.guards.skipped_define(sources.snippet(sp)))
        {
            let name = sources.snippet(d.span.unwrap_or_default());
            d.notes.push(format!(
                "note: `{name}` is #!define'd only where {} ({}), which is not the case here",
                g.condition(),
                g.directive_text()
            ));
        }
    }
    all.append(&mut diags);
    Parsed {
        config,
        sources,
        diags: all,
    }
}

/// Parses a configuration held in a string (named `name` in diagnostics).
pub fn parse_str(name: &str, text: &str, opts: &PreOptions) -> Parsed {
    let loader = MemLoader::new().with(name, text);
    parse_config(name, &loader, opts)
}

#[cfg(test)]
mod tests;
