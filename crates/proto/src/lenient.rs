//! The params text of the seeds' examples: JSON, or JSON with single-quoted
//! strings (`"{'id': 1234, 'name': 'Petros'}"`, which json-c accepts and
//! Kamailio users write). Text that is neither is an error, never `null`.

use serde_json::Value;

/// Why params text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("params are not JSON: {0}")]
pub struct LenientError(pub String);

/// Parses JSON, accepting single-quoted strings.
pub fn parse(text: &str) -> Result<Value, LenientError> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(strict) => {
            if !text.contains('\'') {
                return Err(LenientError(strict.to_string()));
            }
            serde_json::from_str(&requote(text)).map_err(|e| LenientError(e.to_string()))
        }
    }
}

/// Rewrites single-quoted strings as double-quoted ones, outside double-quoted strings.
fn requote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Copy a double-quoted string verbatim.
                out.push('"');
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == '"' {
                        break;
                    }
                }
            }
            '\'' => {
                out.push('"');
                while let Some(d) = chars.next() {
                    match d {
                        '\'' => break,
                        '"' => out.push_str("\\\""),
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(e) => {
                                out.push('\\');
                                out.push(e);
                            }
                            None => out.push_str("\\\\"),
                        },
                        d => out.push(d),
                    }
                }
                out.push('"');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_seeds_params() {
        assert_eq!(
            parse("{'id': 1234, 'name': 'Petros'}").unwrap(),
            json!({"id": 1234, "name": "Petros"})
        );
        assert_eq!(parse("{'id': 1234}").unwrap(), json!({"id": 1234}));
        assert_eq!(
            parse("{'r_uri':'100', 'f_uri':'alice'}").unwrap(),
            json!({"r_uri": "100", "f_uri": "alice"})
        );
        assert_eq!(
            parse(r#"{"strict": ["json", 1]}"#).unwrap(),
            json!({"strict": ["json", 1]})
        );
    }

    #[test]
    fn quotes_inside_strings() {
        assert_eq!(
            parse(r#"{'say': 'he said "hi"', "it's": 'o\'k'}"#).unwrap(),
            json!({"say": "he said \"hi\"", "it's": "o'k"})
        );
        assert_eq!(parse(r#"['a\\b']"#).unwrap(), json!(["a\\b"]));
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(parse("get me a user").is_err());
        assert!(parse("{'unclosed': 1").is_err());
        assert!(parse("").is_err());
    }
}
