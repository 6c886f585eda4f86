//! Syntax of pseudo-variables: `$ru`, `$var(x)`, `$avp(x)[1]`, `$(hdr(Via)[0])`,
//! `$(var(x){s.substr,1,2}{s.len})`.
//!
//! Shared by the lexer (PVs in expressions) and by format strings (PVs inside
//! string literals), so both accept exactly the same forms. Only syntax here:
//! which classes exist is the script compiler's business.

/// A parsed pseudo-variable reference.
#[derive(Debug, Clone, PartialEq)]
pub struct PvSyntax {
    /// The class: `var`, `avp`, `ru`, `hdr`, `T`, …
    pub class: String,
    /// What is inside the parentheses after the class, if any: `x` in `$var(x)`.
    pub inner: Option<String>,
    /// `[n]`, `[*]` or `[$var(i)]`.
    pub index: Option<PvIndex>,
    /// Transformations applied in order.
    pub trans: Vec<Transform>,
    /// The text as written.
    pub text: String,
}

/// The index of a PV with several values.
#[derive(Debug, Clone, PartialEq)]
pub enum PvIndex {
    /// A fixed position; negative counts from the end.
    Int(i64),
    /// All values: `[*]`.
    All,
    /// A position read from another PV.
    Pv(Box<PvSyntax>),
}

/// One transformation: `{s.substr,1,2}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// `s.substr`.
    pub name: String,
    /// The parameters after the name.
    pub params: Vec<TrParam>,
}

/// A transformation parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum TrParam {
    /// An integer literal.
    Int(i64),
    /// Any other text.
    Str(String),
    /// A PV read at run time.
    Pv(PvSyntax),
}

/// Why a `$…` could not be read as a PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvError {
    /// Byte offset inside the text where the problem is.
    pub offset: usize,
    /// What was expected.
    pub message: String,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether a `$` at `s[0]` starts a PV (as opposed to a literal dollar in text).
pub fn starts_pv(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 1 && b[0] == b'$' && (b[1] == b'(' || b[1].is_ascii_alphabetic() || b[1] == b'_')
}

/// Parses the PV that starts at `s[0] == '$'`; returns it and the number of bytes read.
///
/// `strict` is for expressions: a malformed index is an error. In format strings
/// (`strict == false`) a `[` that does not form an index is left as text.
pub fn parse_pv(s: &str, strict: bool) -> Result<(PvSyntax, usize), PvError> {
    let b = s.as_bytes();
    if b.first() != Some(&b'$') {
        return Err(PvError {
            offset: 0,
            message: "expected `$`".into(),
        });
    }
    if b.get(1) == Some(&b'(') {
        // $( name(inner)[idx]{tr}... )
        let mut pos = 2;
        let (class, inner, index, n) = parse_body(s, pos, true)?;
        pos = n;
        let mut trans = Vec::new();
        while b.get(pos) == Some(&b'{') {
            let end = matching(s, pos, b'{', b'}').ok_or(PvError {
                offset: pos,
                message: "expected `}` to close the transformation".into(),
            })?;
            trans.push(parse_transform(&s[pos + 1..end], pos + 1)?);
            pos = end + 1;
        }
        if b.get(pos) != Some(&b')') {
            return Err(PvError {
                offset: pos,
                message: format!("expected `)` to close `$({class}…`"),
            });
        }
        pos += 1;
        let text = s[..pos].to_string();
        return Ok((
            PvSyntax {
                class,
                inner,
                index,
                trans,
                text,
            },
            pos,
        ));
    }
    let (class, inner, index, n) = parse_body(s, 1, strict)?;
    Ok((
        PvSyntax {
            class,
            inner,
            index,
            trans: vec![],
            text: s[..n].to_string(),
        },
        n,
    ))
}

type Body = (String, Option<String>, Option<PvIndex>, usize);

fn parse_body(s: &str, start: usize, strict: bool) -> Result<Body, PvError> {
    let b = s.as_bytes();
    let mut pos = start;
    while pos < b.len() && is_name_byte(b[pos]) {
        pos += 1;
    }
    if pos == start || b[start].is_ascii_digit() {
        return Err(PvError {
            offset: start,
            message: "expected a pseudo-variable name after `$`".into(),
        });
    }
    let class = s[start..pos].to_string();
    let mut inner = None;
    if b.get(pos) == Some(&b'(') {
        let end = matching(s, pos, b'(', b')').ok_or(PvError {
            offset: pos,
            message: format!("expected `)` to close `${class}(`"),
        })?;
        inner = Some(s[pos + 1..end].to_string());
        pos = end + 1;
    }
    let mut index = None;
    if b.get(pos) == Some(&b'[') {
        match parse_index(s, pos) {
            Ok((idx, n)) => {
                index = Some(idx);
                pos = n;
            }
            Err(e) if strict => return Err(e),
            Err(_) => {}
        }
    }
    Ok((class, inner, index, pos))
}

fn parse_index(s: &str, pos: usize) -> Result<(PvIndex, usize), PvError> {
    let end = matching(s, pos, b'[', b']').ok_or(PvError {
        offset: pos,
        message: "expected `]` to close the index".into(),
    })?;
    let text = &s[pos + 1..end];
    let idx = if text == "*" {
        PvIndex::All
    } else if let Ok(n) = text.trim().parse::<i64>() {
        PvIndex::Int(n)
    } else if starts_pv(text) {
        let (pv, n) = parse_pv(text, true)?;
        if n != text.len() {
            return Err(PvError {
                offset: pos + 1 + n,
                message: "expected `]` after the index".into(),
            });
        }
        PvIndex::Pv(Box::new(pv))
    } else {
        return Err(PvError {
            offset: pos + 1,
            message: "expected an integer, `*` or a pseudo-variable as index".into(),
        });
    };
    Ok((idx, end + 1))
}

fn parse_transform(body: &str, base: usize) -> Result<Transform, PvError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut last = 0;
    for (i, c) in body.bytes().enumerate() {
        match c {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                parts.push(&body[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[last..]);
    let name = parts[0].trim().to_string();
    if name.is_empty() || !name.bytes().all(|b| is_name_byte(b) || b == b'.') {
        return Err(PvError {
            offset: base,
            message: "expected a transformation name such as `s.len`".into(),
        });
    }
    let params = parts[1..]
        .iter()
        .map(|p| {
            if let Ok(n) = p.trim().parse::<i64>() {
                Ok(TrParam::Int(n))
            } else if starts_pv(p) {
                match parse_pv(p, true) {
                    Ok((pv, n)) if n == p.len() => Ok(TrParam::Pv(pv)),
                    _ => Ok(TrParam::Str(p.to_string())),
                }
            } else {
                Ok(TrParam::Str(p.to_string()))
            }
        })
        .collect::<Result<_, PvError>>()?;
    Ok(Transform { name, params })
}

/// Offset of the bracket closing the one at `open_at`, counting nesting.
fn matching(s: &str, open_at: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in s.as_bytes().iter().enumerate().skip(open_at) {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// A piece of a format string.
#[derive(Debug, Clone, PartialEq)]
pub enum FmtPart {
    /// Text copied as is.
    Lit(String),
    /// A PV expanded at run time; the offset is where it starts in the string.
    Pv(PvSyntax, usize),
}

/// Splits a string into literal text and PVs, as xlog does. A `$` that starts no PV
/// is literal text.
pub fn parse_format(s: &str) -> Result<Vec<FmtPart>, PvError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if starts_pv(rest) {
            let (pv, n) = parse_pv(rest, false).map_err(|e| PvError {
                offset: i + e.offset,
                ..e
            })?;
            if !lit.is_empty() {
                parts.push(FmtPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(FmtPart::Pv(pv, i));
            i += n;
        } else {
            let c = rest.chars().next().unwrap_or('\0');
            lit.push(c);
            i += c.len_utf8();
        }
    }
    if !lit.is_empty() {
        parts.push(FmtPart::Lit(lit));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_inner() {
        let (p, n) = parse_pv("$ru;", true).unwrap();
        assert_eq!((p.class.as_str(), p.inner, n), ("ru", None, 3));
        let (p, _) = parse_pv("$avp(attr-val)", true).unwrap();
        assert_eq!(p.inner.as_deref(), Some("attr-val"));
        let (p, _) = parse_pv("$T_reply_code", true).unwrap();
        assert_eq!(p.class, "T_reply_code");
    }

    #[test]
    fn index_and_transforms() {
        let (p, n) = parse_pv("$(avp(x)[-1]{s.substr,1,$var(n)}{s.len}) tail", true).unwrap();
        assert_eq!(
            &"$(avp(x)[-1]{s.substr,1,$var(n)}{s.len}) tail"[..n],
            "$(avp(x)[-1]{s.substr,1,$var(n)}{s.len})"
        );
        assert_eq!(p.index, Some(PvIndex::Int(-1)));
        assert_eq!(p.trans.len(), 2);
        assert_eq!(p.trans[0].params[0], TrParam::Int(1));
        assert!(matches!(p.trans[0].params[1], TrParam::Pv(_)));
        let (p, _) = parse_pv("$(hdr(Via)[*])", true).unwrap();
        assert_eq!(p.index, Some(PvIndex::All));
        let (p, _) = parse_pv("$(var(x){s.select,1, })", true).unwrap();
        assert_eq!(p.trans[0].params[1], TrParam::Str(" ".into()));
    }

    #[test]
    fn format_strings_keep_literal_dollars_and_brackets() {
        let parts = parse_format("received [$evapi(msg)] from $si cost $5").unwrap();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[0], FmtPart::Lit("received [".into()));
        assert!(matches!(&parts[1], FmtPart::Pv(p, 10) if p.class == "evapi"));
        assert_eq!(parts[4], FmtPart::Lit(" cost $5".into()));
    }

    #[test]
    fn errors() {
        assert!(parse_pv("$(var(x)", true).is_err());
        assert!(parse_pv("$var(x", true).is_err());
        assert!(parse_pv("$(var(x){s.len)", true).is_err());
    }
}
