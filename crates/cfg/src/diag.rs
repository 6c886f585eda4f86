//! Diagnostics: what went wrong, where, and what was expected.
//!
//! Rendering is plain text in the rustc style: `error: message`, then
//! `--> file:line:col`, the line itself and a caret under the span.

use crate::source::{SourceMap, Span};
use std::fmt::Write;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration still loads.
    Warning,
    /// The configuration does not load.
    Error,
}

/// One finding about a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One sentence: what is wrong, what was expected.
    pub message: String,
    /// Where; `None` for findings about the whole configuration.
    pub span: Option<Span>,
    /// Extra lines (`help: …`, `note: …`).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at a span.
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: Some(span),
            notes: vec![],
        }
    }
    /// A warning at a span.
    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span: Some(span),
            notes: vec![],
        }
    }
    /// An error with no location.
    pub fn global(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            notes: vec![],
        }
    }
    /// Adds a `help:` line.
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.notes.push(format!("help: {}", text.into()));
        self
    }
    /// Adds a `note:` line.
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(format!("note: {}", text.into()));
        self
    }
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic with its source line and a caret.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{sev}: {}", self.message);
        if let Some(span) = self.span {
            let file = sources.file(span.file);
            let (line, col) = file.line_col(span.lo);
            let text = file.line_text(line);
            let width = line.to_string().len();
            let _ = writeln!(
                out,
                "{:width$}--> {}:{}:{}",
                "",
                file.path.display(),
                line,
                col
            );
            let _ = writeln!(out, "{:width$} |", "");
            let _ = writeln!(out, "{line} | {}", text.replace('\t', "    "));
            // Caret under the span, clipped to the line; tabs count as 4 columns as printed.
            let prefix: String = text.chars().take(col - 1).collect();
            let pad = prefix
                .chars()
                .map(|c| if c == '\t' { 4 } else { 1 })
                .sum::<usize>();
            let (end_line, end_col) = file.line_col(span.hi.max(span.lo + 1));
            let carets = if end_line == line {
                (end_col - col).max(1)
            } else {
                1
            };
            let _ = writeln!(
                out,
                "{:width$} | {}{}",
                "",
                " ".repeat(pad),
                "^".repeat(carets)
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  = {n}");
        }
        out
    }
}

/// Renders many diagnostics, errors and warnings in order, with a summary line.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        let _ = writeln!(out, "{errors} error(s), {warnings} warning(s)");
    }
    out
}

/// The closest candidate to `word` by edit distance, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(word, c);
        let limit = (word.len().max(c.len()) / 3).max(1);
        // Ties go to the smaller name: the suggestion must not depend on map order.
        if d <= limit && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Damerau-style edit distance (insert, delete, substitute, swap adjacent).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestion_for_swapped_letters() {
        let c = ["jsonrpc_request", "jsonrpc_notification", "xlog"];
        assert_eq!(did_you_mean("jsonrpc_requets", c), Some("jsonrpc_request"));
        assert_eq!(did_you_mean("zzz", c), None);
    }

    #[test]
    fn renders_caret_under_span() {
        let mut sm = SourceMap::default();
        let f = sm.add("a.cfg".into(), "x = 1\n  foo(bar;\n".into());
        let d = Diagnostic::error(
            Span {
                file: f,
                lo: 12,
                hi: 13,
            },
            "expected `)`",
        );
        let r = d.render(&sm);
        assert!(r.contains("--> a.cfg:2:7"), "{r}");
        assert!(r.contains("2 |   foo(bar;\n  |       ^"), "{r}");
    }
}
