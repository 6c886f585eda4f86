//! Script values: Kamailio's `$null`, integers and strings.
//!
//! Strings are [`Bytes`]: SIP values can be any bytes, a constant is shared
//! without copying, and a PV read from a SIP message can be a slice of the
//! received buffer.

use bytes::Bytes;
use std::borrow::Cow;
use std::fmt;

/// A value in the routing script.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Value {
    /// `$null`: unset.
    #[default]
    Null,
    /// A signed integer.
    Int(i64),
    /// A byte string.
    Str(Bytes),
}

impl Value {
    /// A string value from anything that becomes `Bytes`.
    pub fn str(s: impl Into<Bytes>) -> Value {
        Value::Str(s.into())
    }

    /// A string value copied from a `&str`.
    pub fn from_str_copy(s: &str) -> Value {
        Value::Str(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The value as an integer: strings are parsed (surrounding blanks allowed).
    pub fn to_int(&self) -> Option<i64> {
        match self {
            Value::Null => None,
            Value::Int(n) => Some(*n),
            Value::Str(b) => parse_int(b),
        }
    }

    /// The value as bytes: integers in decimal, `$null` empty.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Value::Null => Bytes::new(),
            Value::Int(n) => Bytes::from(n.to_string()),
            Value::Str(b) => b.clone(),
        }
    }

    /// The value as text (lossy for non-UTF-8 bytes); `$null` is empty.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Value::Null => Cow::Borrowed(""),
            Value::Int(n) => Cow::Owned(n.to_string()),
            Value::Str(b) => String::from_utf8_lossy(b),
        }
    }

    /// Kamailio truth: a positive integer, or a non-empty string that is not a
    /// non-positive number.
    pub fn is_true(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Int(n) => *n > 0,
            Value::Str(b) => match parse_int(b) {
                Some(n) => n > 0,
                None => !b.is_empty(),
            },
        }
    }

    /// Whether this is `$null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value {
    /// As xlog prints it: `$null` is `<null>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("<null>"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Str(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}
impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Bytes::from_static(s.as_bytes()))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Bytes::from(s))
    }
}

/// Parses a decimal integer with optional sign and surrounding blanks.
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_and_truth() {
        assert_eq!(Value::from(" 42 ".to_string()).to_int(), Some(42));
        assert_eq!(Value::from("x").to_int(), None);
        assert!(Value::Int(1).is_true());
        assert!(!Value::Int(-1).is_true());
        assert!(!Value::Int(0).is_true());
        assert!(Value::from("abc").is_true());
        assert!(!Value::from("0").is_true());
        assert!(!Value::from("").is_true());
        assert!(!Value::Null.is_true());
        assert_eq!(Value::Null.to_string(), "<null>");
        assert_eq!(&Value::Int(-3).to_bytes()[..], b"-3");
    }
}
