//! Credentials for `jsonrpc_dispatch` (HTTP): the `http_auth_file` parameter.
//!
//! One credential a line; `#` starts a comment; blank lines are skipped:
//!
//! ```text
//! basic  USER:PASSWORD  [rw|ro]
//! bearer TOKEN          [rw|ro]
//! ```
//!
//! `basic` lines answer `Authorization: Basic base64(USER:PASSWORD)`,
//! `bearer` lines `Authorization: Bearer TOKEN`. The access is `ro` when not
//! given: read-only credentials may call any command that does not change
//! state. Whitespace separates the fields, so secrets hold none. Presented
//! credentials are compared with every line in constant time.

use base64::Engine;

/// Access a credential gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every command.
    ReadWrite,
    /// Only commands that do not change state.
    ReadOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Basic,
    Bearer,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    /// `USER:PASSWORD` or the token.
    secret: Vec<u8>,
    /// For the log: the user, or `token@LINE`.
    name: String,
    access: Access,
}

/// The credentials of `http_auth_file`.
#[derive(Debug, Clone)]
pub struct Credentials {
    entries: Vec<Entry>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no credentials")]
    Missing,
    /// A scheme other than Basic or Bearer, or undecodable.
    #[error("unreadable Authorization header")]
    Malformed,
    /// Not one of the file's credentials.
    #[error("wrong credentials")]
    Wrong,
}

/// Equality whose time depends on the length of `presented` only, not on
/// where the first difference is or on the secret.
fn ct_eq(presented: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != secret.len());
    for (i, &b) in presented.iter().enumerate() {
        let s = if secret.is_empty() {
            0
        } else {
            secret[i % secret.len()]
        };
        diff |= b ^ s;
    }
    std::hint::black_box(diff) == 0
}

impl Credentials {
    /// Reads `path`; errors name the file and line.
    pub fn load(path: &str) -> Result<Credentials, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("http_auth_file {path}: {e}"))?;
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o007 != 0 {
                tracing::warn!(
                    "jsonrpcs: http_auth_file {path} can be read by anyone: chmod o-rwx it"
                );
            }
        }
        Self::parse(&text).map_err(|(line, e)| format!("{path}:{line}: {e}"))
    }

    /// Parses the file's text; an error carries its line number.
    pub fn parse(text: &str) -> Result<Credentials, (usize, String)> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut f = line.split_whitespace();
            let (kind, secret) = (f.next().unwrap_or(""), f.next());
            let access = match f.next() {
                None | Some("ro") => Access::ReadOnly,
                Some("rw") => Access::ReadWrite,
                Some(x) => return Err((n, format!("access `{x}`: expected rw or ro"))),
            };
            if let Some(x) = f.next() {
                return Err((n, format!("unexpected `{x}` after the access")));
            }
            let secret = secret.ok_or((n, "missing the credential".to_string()))?;
            let (kind, name) = match kind.to_ascii_lowercase().as_str() {
                "basic" => match secret.split_once(':') {
                    Some((u, p)) if !u.is_empty() && !p.is_empty() => (Kind::Basic, u.to_string()),
                    _ => return Err((n, "basic: expected USER:PASSWORD".into())),
                },
                "bearer" => (Kind::Bearer, format!("token@{n}")),
                other => return Err((n, format!("`{other}`: expected basic or bearer"))),
            };
            entries.push(Entry {
                kind,
                secret: secret.as_bytes().to_vec(),
                name,
                access,
            });
        }
        if entries.is_empty() {
            return Err((0, "no credentials in the file".into()));
        }
        Ok(Credentials { entries })
    }

    /// Whether any `bearer` line exists (for `WWW-Authenticate`).
    pub fn has_bearer(&self) -> bool {
        self.entries.iter().any(|e| e.kind == Kind::Bearer)
    }

    /// Checks an `Authorization` header value: the user (or token name) and its access.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(String, Access), AuthError> {
        let h = header.ok_or(AuthError::Missing)?;
        let h = std::str::from_utf8(h)
            .map_err(|_| AuthError::Malformed)?
            .trim();
        let (scheme, value) = h.split_once(' ').ok_or(AuthError::Malformed)?;
        let (kind, presented) = if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| AuthError::Malformed)?;
            (Kind::Basic, raw)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            (Kind::Bearer, value.trim().as_bytes().to_vec())
        } else {
            return Err(AuthError::Malformed);
        };
        // Every line is compared, whatever matched before.
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&presented, &e.secret) && e.kind == kind && found.is_none() {
                found = Some((e.name.clone(), e.access));
            }
        }
        found.ok_or(AuthError::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn basic_and_bearer_with_access() {
        let c = Credentials::parse(
            "# admins\nbasic admin:s3cr:et rw\nbasic viewer:look\n\nbearer T0K3N rw # automation\n",
        )
        .unwrap();
        assert_eq!(
            c.check(Some(&basic("admin:s3cr:et"))),
            Ok(("admin".into(), Access::ReadWrite))
        );
        assert_eq!(
            c.check(Some(&basic("viewer:look"))),
            Ok(("viewer".into(), Access::ReadOnly))
        );
        assert_eq!(
            c.check(Some(b"Bearer T0K3N")),
            Ok(("token@5".into(), Access::ReadWrite))
        );
        assert_eq!(
            c.check(Some(&basic("admin:s3cr:eT"))),
            Err(AuthError::Wrong)
        );
        assert_eq!(c.check(Some(&basic("admin:s3cr"))), Err(AuthError::Wrong));
        // A token is not a Basic credential, nor the other way round.
        assert_eq!(c.check(Some(b"Bearer viewer:look")), Err(AuthError::Wrong));
        assert_eq!(c.check(None), Err(AuthError::Missing));
        assert_eq!(c.check(Some(b"Digest x")), Err(AuthError::Malformed));
        assert!(c.has_bearer());
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            Credentials::parse("basic a:b\nbasic nocolon\n")
                .unwrap_err()
                .0,
            2
        );
        assert_eq!(Credentials::parse("basic a:b xx\n").unwrap_err().0, 1);
        assert_eq!(Credentials::parse("digest a:b\n").unwrap_err().0, 1);
        assert!(Credentials::parse("# nothing\n").is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abcabc", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(!ct_eq(b"abc", b""));
        assert!(ct_eq(b"", b""));
    }
}
