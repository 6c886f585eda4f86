//! auth (Kamailio): digest authentication (RFC 2617, RFC 7616 with MD5 and
//! SHA-256) against passwords the script supplies (`$sht(users=>$fU)`, an
//! AVP, a constant): `pv_www_authenticate`, `pv_proxy_authenticate`,
//! `pv_auth_check`, the challenges `www_challenge`, `proxy_challenge`,
//! `auth_challenge` (401/407 sent through the transaction when there is one,
//! else statelessly, as Kamailio's), `consume_credentials`,
//! `has_credentials`.
//!
//! Nonces are self-validating (expiry, creation time and a per-process id
//! under a keyed MD5 with `secret`). Replay protection: `nonce_count` (on by
//! default in siphon, off in Kamailio) accepts each nonce+nc of qop
//! credentials once, a repeated nc being -4 as in Kamailio 5.6;
//! `one_time_nonce` accepts each nonce once (-6). Return codes are
//! Kamailio's: 1 ok, -1 error, -2 wrong password, -4 stale nonce (expired,
//! not ours, or an nc already seen), -5 no credentials for the realm, -6
//! nonce reused (`one_time_nonce`), -8 auth user mismatch (`pv_auth_check`,
//! once the credentials are good). As Kamailio 5.6.3, a realm or password
//! that reads nothing (a PV that is `$null` or empty) is an error (-1)
//! before the credentials are looked at, and `pv_auth_check` lets ACK and
//! CANCEL through (1).

pub mod digest;
pub mod nonce;

use digest::{Alg, Credentials, parse_credentials};
use nonce::{NonceError, Nonces};
use siphon_script::api::*;
use siphon_script::sip::SipCtx;
use siphon_script::{ArgKind, Ctx, Exec, FunctionSpec, ModuleDef, ParamSpec, RouteType};
use std::sync::{Arc, OnceLock};

/// Kamailio's return codes.
pub mod rc {
    /// Authenticated.
    pub const OK: i32 = 1;
    /// Error, or a nonce that is not ours.
    pub const ERROR: i32 = -1;
    /// Wrong password.
    pub const INVALID_PASSWORD: i32 = -2;
    /// The nonce expired.
    pub const STALE_NONCE: i32 = -4;
    /// No credentials for the realm.
    pub const NO_CREDENTIALS: i32 = -5;
    /// The nonce (with this nc) was used already.
    pub const NONCE_REUSED: i32 = -6;
    /// The auth user is not the From/To user (`pv_auth_check`).
    pub const USER_MISMATCH: i32 = -8;
}

/// Which header carries the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HdrType {
    /// `Authorization` / `WWW-Authenticate`, 401.
    Www,
    /// `Proxy-Authorization` / `Proxy-Authenticate`, 407.
    Proxy,
}

impl HdrType {
    fn credentials(self) -> &'static str {
        match self {
            HdrType::Www => "Authorization",
            HdrType::Proxy => "Proxy-Authorization",
        }
    }
    fn challenge(self) -> &'static str {
        match self {
            HdrType::Www => "WWW-Authenticate",
            HdrType::Proxy => "Proxy-Authenticate",
        }
    }
    fn reply(self) -> (u16, &'static str) {
        match self {
            HdrType::Www => (401, "Unauthorized"),
            HdrType::Proxy => (407, "Proxy Authentication Required"),
        }
    }
}

/// Left in the context: the credentials that authenticated (for
/// `consume_credentials`).
#[derive(Debug, Clone, Copy)]
struct Authorized(usize);

/// Left in the context: the credentials carried a stale nonce (the next
/// challenge says `stale=true`).
#[derive(Debug, Clone, Copy)]
struct Stale;

/// The module.
pub struct Auth(Arc<Inner>);

struct Inner {
    nonces: Nonces,
    /// `algorithm` named in challenges (`None`: none named, MD5).
    algorithm: Option<Alg>,
    /// `challenge_avp`: the AVP the pv_* functions' flags 2/4/8 fill.
    challenge_avp: Arc<str>,
    /// `nonce_count`: each nonce+nc once (qop credentials).
    nonce_count: bool,
    /// `one_time_nonce`: each nonce once.
    one_time_nonce: bool,
    host: OnceLock<Arc<dyn Host>>,
}

const REQ: RouteType = RouteType::REQUEST
    .or(RouteType::FAILURE)
    .or(RouteType::BRANCH);

/// pv_*_authenticate flags.
const F_HA1: i64 = 1;
const A_NO_QOP: i64 = 2;
const A_QOP_AUTH: i64 = 4;
const A_QOP_AUTH_INT: i64 = 8;
const A_STALE: i64 = 16;
const F_KEEP_NC: i64 = 32;
/// challenge flags.
const C_QOP_AUTH: i64 = 1;
const C_QOP_AUTH_INT: i64 = 2;
const C_NO_500: i64 = 4;
const C_STALE: i64 = 16;

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

fn check_auth_flags(a: &Args) -> Result<(), String> {
    if let Some(v) = a.const_value(2) {
        match v.to_int() {
            Some(f) if !(0..64).contains(&f) => {
                return Err(format!("flags {f} out of range (0..63)"));
            }
            Some(f) if f & A_STALE != 0 => tracing::warn!(
                "flags {f}: 16 (stale=true) has no effect on the challenge the pv_* functions build (as in Kamailio 5.6); www_challenge/proxy_challenge take it"
            ),
            Some(_) => {}
            None => return Err(format!("flags must be a number, not `{}`", v.to_text())),
        }
    }
    Ok(())
}

fn check_challenge_flags(a: &Args) -> Result<(), String> {
    // Kamailio 5.6 refuses a constant empty realm at load too.
    if a.const_value(0).is_some_and(|v| v.to_text().is_empty()) {
        return Err("empty realm not allowed".into());
    }
    if let Some(v) = a.const_value(1) {
        match v.to_int() {
            Some(f) if f & !(C_QOP_AUTH | C_QOP_AUTH_INT | C_NO_500 | C_STALE) != 0 => {
                return Err(format!(
                    "flags {f}: siphon supports flags 1 (qop=auth), 2 (qop=auth-int), 4 (no 500 on failure) and 16 (stale=true); 32 (challenge only in an AVP) is not supported"
                ));
            }
            Some(_) => {}
            None => return Err(format!("flags must be a number, not `{}`", v.to_text())),
        }
    }
    Ok(())
}

impl Module for Auth {
    fn functions(&self) -> Vec<FunctionSpec> {
        let m = || self.0.clone();
        let (m1, m2, m3, m4, m5, m6) = (m(), m(), m(), m(), m(), m());
        vec![
            FunctionSpec::checked(
                "pv_www_authenticate",
                &[ArgKind::Str, ArgKind::Str, ArgKind::Int, ArgKind::Str],
                check_auth_flags,
                move |ex, a| {
                    let method = (a.len() > 3).then(|| a.text(3, ex));
                    m1.authenticate_call(ex, a, HdrType::Www, method, 0).into()
                },
            )
            .min_args(3)
            .routes(REQ),
            FunctionSpec::checked(
                "pv_proxy_authenticate",
                &[ArgKind::Str, ArgKind::Str, ArgKind::Int],
                check_auth_flags,
                move |ex, a| m2.authenticate_call(ex, a, HdrType::Proxy, None, 0).into(),
            )
            .routes(REQ),
            FunctionSpec::checked(
                "pv_auth_check",
                &[ArgKind::Str, ArgKind::Str, ArgKind::Int, ArgKind::Int],
                check_auth_flags,
                move |ex, a| {
                    let method = ex.ctx.ext.get::<SipCtx>().map(|s| s.msg.method());
                    // Kamailio lets ACK and CANCEL through unchecked.
                    if matches!(
                        method,
                        Some(siphon_sip::Method::Ack | siphon_sip::Method::Cancel)
                    ) {
                        return rc::OK.into();
                    }
                    let is_reg = method == Some(siphon_sip::Method::Register);
                    let hdr = if is_reg { HdrType::Www } else { HdrType::Proxy };
                    let checks = a.int(3, ex).unwrap_or(0);
                    m3.authenticate_call(ex, a, hdr, None, checks).into()
                },
            )
            .routes(REQ),
            FunctionSpec::checked(
                "www_challenge",
                &[ArgKind::Str, ArgKind::Int],
                check_challenge_flags,
                move |ex, a| m4.challenge_call(ex, a, Some(HdrType::Www)).into(),
            )
            .routes(REQ),
            FunctionSpec::checked(
                "proxy_challenge",
                &[ArgKind::Str, ArgKind::Int],
                check_challenge_flags,
                move |ex, a| m5.challenge_call(ex, a, Some(HdrType::Proxy)).into(),
            )
            .routes(REQ),
            FunctionSpec::checked(
                "auth_challenge",
                &[ArgKind::Str, ArgKind::Int],
                check_challenge_flags,
                move |ex, a| m6.challenge_call(ex, a, None).into(),
            )
            .routes(REQ),
            FunctionSpec::new("consume_credentials", &[], move |ex, _| {
                consume_credentials(ex.ctx).into()
            })
            .routes(REQ),
            FunctionSpec::new("has_credentials", &[ArgKind::Str], move |ex, a| {
                let realm = a.text(0, ex);
                has_credentials(ex.ctx, &realm).into()
            })
            .routes(REQ),
        ]
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let _ = self.0.host.set(cx.host.clone());
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Argument `i`: a PV alone (`"$sht(users=>$fU)"`, `$avp(pw)`) is read as
/// the PV, so that `$null` shows (Kamailio's parameter of PV type); else
/// the expanded value.
fn param_value(a: &Args, i: usize, ex: &mut Exec<'_>) -> siphon_script::Value {
    use siphon_script::interp::CExpr;
    let pv = match a.items.get(i) {
        Some(Arg::Expr(CExpr::Pv(p))) | Some(Arg::Pv(p)) => Some(p),
        Some(Arg::Expr(CExpr::Fmt(f))) => f.as_pv(),
        _ => None,
    };
    match pv {
        Some(p) => ex.get_pv(p),
        None => a.value(i, ex),
    }
}

/// `pv_auth_check`'s checks flag 1, once the credentials are good (as
/// Kamailio): the credentials' user (before any `@`) is the To user for
/// REGISTER and PUBLISH, the From user otherwise; for REGISTER and PUBLISH
/// the From user is the To user too, and for PUBLISH the R-URI user.
fn identity_matches(s: &SipCtx, username: &str) -> bool {
    let user_of = |uri: Option<bytes::Bytes>| {
        uri.and_then(|u| {
            siphon_sip::parse_uri(&u)
                .ok()
                .map(|p| p.user.unwrap_or_default().to_vec())
        })
    };
    let auth_user = username.split('@').next().unwrap_or_default().as_bytes();
    let method = s.msg.method();
    let from = user_of(s.msg.from().map(|n| n.uri));
    let (Some(from), reg_or_pub) = (
        from,
        matches!(
            method,
            siphon_sip::Method::Register | siphon_sip::Method::Publish
        ),
    ) else {
        return false;
    };
    if !reg_or_pub {
        return from == auth_user;
    }
    let Some(to) = user_of(s.msg.to().map(|n| n.uri)) else {
        return false;
    };
    if to != auth_user || from != to {
        return false;
    }
    method != siphon_sip::Method::Publish || user_of(Some(s.ruri())).is_some_and(|r| r == from)
}

/// The realm to use: the one given, or the From host when empty (the To
/// host for REGISTER), as Kamailio.
fn realm_or_default(s: &SipCtx, realm: String) -> String {
    if !realm.is_empty() {
        return realm;
    }
    let na = if s.msg.method() == siphon_sip::Method::Register {
        s.msg.to()
    } else {
        s.msg.from()
    };
    na.and_then(|n| {
        siphon_sip::parse_uri(&n.uri)
            .ok()
            .map(|u| String::from_utf8_lossy(u.host).into_owned())
    })
    .unwrap_or_default()
}

/// The first credentials of `hdr` type for `realm`: header index and values.
fn find_credentials(s: &SipCtx, hdr: HdrType, realm: &str) -> Option<(usize, Credentials)> {
    s.msg.headers.iter().enumerate().find_map(|(i, h)| {
        if !s
            .msg
            .get(h.name_rng)
            .eq_ignore_ascii_case(hdr.credentials().as_bytes())
            || s.edits.remove.contains(&i)
        {
            return None;
        }
        let c = parse_credentials(&s.msg.header_value(h))?;
        (c.realm == realm).then_some((i, c))
    })
}

fn consume_credentials(ctx: &mut Ctx) -> i32 {
    let Some(Authorized(i)) = ctx.ext.get::<Authorized>().copied() else {
        tracing::info!(target: "script", "consume_credentials: no authorized credentials found (error in scripts)");
        return rc::ERROR;
    };
    let Some(s) = ctx.ext.get_mut::<SipCtx>() else {
        return rc::ERROR;
    };
    if !s.edits.remove.contains(&i) {
        s.edits.remove.push(i);
    }
    rc::OK
}

fn has_credentials(ctx: &mut Ctx, realm: &str) -> i32 {
    let Some(s) = ctx.ext.get::<SipCtx>() else {
        return rc::ERROR;
    };
    let found = [HdrType::Www, HdrType::Proxy]
        .into_iter()
        .any(|h| find_credentials(s, h, realm).is_some());
    if found { rc::OK } else { rc::ERROR }
}

impl Inner {
    fn authenticate_call(
        &self,
        ex: &mut Exec<'_>,
        a: &Args,
        hdr: HdrType,
        method: Option<String>,
        checks: i64,
    ) -> i32 {
        let realm = param_value(a, 0, ex);
        let passwd = param_value(a, 1, ex);
        // As Kamailio 5.6.3 (checked): an empty realm or password — a PV
        // that reads nothing, `$null` — is an error, credentials or not.
        for (what, v) in [("realm", &realm), ("password", &passwd)] {
            if v.is_null() || v.to_bytes().is_empty() {
                tracing::error!(target: "script", "auth: invalid {what} value - empty content");
                return rc::ERROR;
            }
        }
        let (realm, passwd) = (realm.to_text().into_owned(), passwd.to_text().into_owned());
        let flags = a.int(2, ex).unwrap_or(0);
        let code = self.authenticate(
            ex.ctx,
            hdr,
            &realm,
            &passwd,
            flags,
            method.as_deref(),
            checks,
        );
        if code < 0 && flags & (A_NO_QOP | A_QOP_AUTH | A_QOP_AUTH_INT) != 0 {
            // Kamailio: the challenge for a failed check, in `challenge_avp`
            // (a whole header line, for append_to_reply).
            let qop = if flags & A_QOP_AUTH_INT != 0 {
                C_QOP_AUTH_INT
            } else if flags & A_QOP_AUTH != 0 {
                C_QOP_AUTH
            } else {
                0
            };
            let realm = match ex.ctx.ext.get::<SipCtx>() {
                Some(s) => realm_or_default(s, realm),
                None => realm,
            };
            // Flag 16 (stale=true) has no effect here in Kamailio 5.6
            // (checked on the wire): only a stale nonce makes it stale.
            let stale = ex.ctx.ext.get::<Stale>().is_some();
            let line = self.challenge_line(hdr, &realm, qop, stale);
            ex.ctx
                .avps
                .replace(&self.challenge_avp, siphon_script::Value::from(line));
        }
        code
    }

    /// Checks the credentials of `hdr` type for `realm` against `passwd`.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &self,
        ctx: &mut Ctx,
        hdr: HdrType,
        realm: &str,
        passwd: &str,
        flags: i64,
        method: Option<&str>,
        checks: i64,
    ) -> i32 {
        ctx.ext.remove::<Authorized>();
        let Some(s) = ctx.ext.get::<SipCtx>() else {
            return rc::ERROR;
        };
        if !s.msg.is_request() {
            return rc::ERROR;
        }
        let realm = realm_or_default(s, realm.to_string());
        let Some((idx, c)) = find_credentials(s, hdr, &realm) else {
            return rc::NO_CREDENTIALS;
        };
        if c.username.is_empty() || c.nonce.is_empty() || c.response.is_empty() || c.uri.is_empty()
        {
            tracing::info!(target: "script", "auth: malformed {} credentials", hdr.credentials());
            return rc::ERROR;
        }
        let (alg, sess) = if c.algorithm.is_empty() {
            (Alg::Md5, false)
        } else {
            match Alg::parse(&c.algorithm) {
                Some(x) => x,
                None => {
                    tracing::info!(target: "script", "auth: unsupported algorithm {}", c.algorithm);
                    return rc::ERROR;
                }
            }
        };
        if !c.qop.is_empty() && (c.nc.is_empty() || c.cnonce.is_empty()) {
            return rc::ERROR;
        }
        let t = now();
        let (nid, expires) = match self.nonces.check(&c.nonce, t) {
            Ok(x) => x,
            Err(NonceError::Stale) => {
                ctx.ext.insert(Stale);
                return rc::STALE_NONCE;
            }
            Err(NonceError::Invalid) => {
                // As Kamailio 5.6 (checked on the wire): a nonce this process
                // did not make (another secret, a restart, a forgery) is -4.
                tracing::info!(target: "script", "auth: invalid nonce value received");
                return rc::STALE_NONCE;
            }
        };
        let qop = !c.qop.is_empty();
        let nc = if qop {
            match u32::from_str_radix(&c.nc, 16) {
                Ok(n) if c.nc.len() == 8 => n,
                _ => return rc::ERROR,
            }
        } else {
            0
        };
        if self.one_time_nonce && self.nonces.any_used(nid) {
            tracing::info!(target: "script", "auth: one-time nonce reused");
            return rc::NONCE_REUSED;
        }
        // As Kamailio 5.6: an nc already seen makes the nonce stale (-4),
        // so that the client asks for a new one.
        if self.nonce_count && qop && self.nonces.was_used(nid, nc) {
            tracing::info!(target: "script", "auth: nonce reused (nc {})", c.nc);
            return rc::STALE_NONCE;
        }
        let method = method.map_or_else(
            || String::from_utf8_lossy(&s.msg.method_bytes()).into_owned(),
            str::to_string,
        );
        let ha1 = if flags & F_HA1 != 0 {
            passwd.to_ascii_lowercase()
        } else {
            digest::ha1(alg, &c.username, &c.realm, passwd)
        };
        let body = s.msg.get(s.msg.body);
        let expected = digest::response(alg, sess, &ha1, &c, &method, body);
        let ok = ha1.len() == alg.hex_len() && expected.eq_ignore_ascii_case(c.response.trim());
        let track = self.one_time_nonce || (self.nonce_count && qop);
        if track && (ok || flags & F_KEEP_NC == 0) && !self.nonces.mark_used(nid, expires, nc, t) {
            // Used by a concurrent request since the check above.
            return if self.one_time_nonce {
                rc::NONCE_REUSED
            } else {
                rc::STALE_NONCE
            };
        }
        if !ok {
            return rc::INVALID_PASSWORD;
        }
        let mismatch = checks & 1 != 0 && !identity_matches(s, &c.username);
        ctx.ext.insert(Authorized(idx));
        if mismatch {
            return rc::USER_MISMATCH;
        }
        rc::OK
    }

    fn challenge_call(&self, ex: &mut Exec<'_>, a: &Args, hdr: Option<HdrType>) -> i32 {
        let realm = a.text(0, ex);
        let flags = a.int(1, ex).unwrap_or(0);
        self.challenge(ex.ctx, hdr, realm, flags)
    }

    /// The challenge header line for `realm`.
    fn challenge_line(&self, hdr: HdrType, realm: &str, flags: i64, stale: bool) -> String {
        let mut v = format!(
            "{}: Digest realm=\"{}\", nonce=\"{}\"",
            hdr.challenge(),
            realm,
            self.nonces.make(now())
        );
        if flags & C_QOP_AUTH_INT != 0 {
            v.push_str(", qop=\"auth-int\"");
        } else if flags & C_QOP_AUTH != 0 {
            v.push_str(", qop=\"auth\"");
        }
        if stale {
            v.push_str(", stale=true");
        }
        if let Some(alg) = self.algorithm {
            v.push_str(", algorithm=");
            v.push_str(alg.name());
        }
        v.push_str("\r\n");
        v
    }

    /// Sends 401/407 with a challenge (`hdr` None: by method, as `auth_challenge`).
    fn challenge(&self, ctx: &mut Ctx, hdr: Option<HdrType>, realm: String, flags: i64) -> i32 {
        let Some(s) = ctx.ext.get::<SipCtx>() else {
            return rc::ERROR;
        };
        if !s.msg.is_request() || s.msg.method() == siphon_sip::Method::Ack {
            return rc::ERROR;
        }
        let hdr = hdr.unwrap_or(if s.msg.method() == siphon_sip::Method::Register {
            HdrType::Www
        } else {
            HdrType::Proxy
        });
        let realm = realm_or_default(s, realm);
        let stale = flags & C_STALE != 0 || ctx.ext.get::<Stale>().is_some();
        let line = self.challenge_line(hdr, &realm, flags, stale);
        let (code, reason) = hdr.reply();
        let Some(host) = self.host.get() else {
            return rc::ERROR;
        };
        match host.reply(
            ctx,
            code,
            reason,
            &[bytes::Bytes::from(line)],
            ReplyMode::Stateful,
        ) {
            Ok(()) => rc::OK,
            Err(e) => {
                tracing::error!(target: "script", "auth: failed to send {code} {reason}: {e}");
                if flags & C_NO_500 == 0 {
                    let _ = host.reply(ctx, 500, "Internal Server Error", &[], ReplyMode::Stateful);
                }
                rc::ERROR
            }
        }
    }
}

/// The name in `$avp(name)` (or `$avp(s:name)`).
fn avp_name(s: &str) -> Result<String, String> {
    s.trim()
        .strip_prefix("$avp(")
        .and_then(|r| r.strip_suffix(')'))
        .map(|n| n.strip_prefix("s:").unwrap_or(n))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .ok_or_else(|| format!("challenge_avp must be $avp(name), not `{s}`"))
}

fn check_algorithm(v: &ParamValue) -> Result<(), String> {
    match v {
        ParamValue::Str(s) if s.is_empty() || matches!(Alg::parse(s), Some((_, false))) => Ok(()),
        _ => Err("algorithm must be MD5 or SHA-256".into()),
    }
}

/// What `loadmodule "auth.so"` finds.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "auth",
        params: vec![
            ParamSpec::str("secret"),
            ParamSpec::int("nonce_expire"),
            ParamSpec::int("nonce_count"),
            ParamSpec::int("one_time_nonce"),
            ParamSpec::str("challenge_avp").check(|v| match v {
                ParamValue::Str(s) => avp_name(s).map(|_| ()),
                ParamValue::Int(_) => Err("challenge_avp must be $avp(name)".into()),
            }),
            ParamSpec::str("algorithm").check(check_algorithm),
            // Kamailio 5.6's challenges take qop from the functions' flags
            // only (checked on the wire): accepted, with a warning.
            ParamSpec::str("qop").no_effect(),
        ],
        instantiate: Arc::new(|cfg| {
            let secret = match cfg.str("secret") {
                Some(s) if !s.is_empty() => s.into_bytes(),
                _ => {
                    let mut b = vec![0u8; 32];
                    getrandom::getrandom(&mut b).map_err(|e| format!("no random secret: {e}"))?;
                    b
                }
            };
            let expire = cfg.int("nonce_expire").unwrap_or(300);
            if !(1..=86400 * 365).contains(&expire) {
                return Err(format!(
                    "nonce_expire must be a positive number of seconds, not {expire}"
                ));
            }
            let algorithm = cfg
                .str("algorithm")
                .filter(|s| !s.is_empty())
                .and_then(|s| Alg::parse(&s))
                .map(|(a, _)| a);
            Ok(Arc::new(Auth(Arc::new(Inner {
                nonces: Nonces::new(secret, expire as u32),
                algorithm,
                nonce_count: cfg.int("nonce_count").unwrap_or(1) != 0,
                one_time_nonce: cfg.int("one_time_nonce").unwrap_or(0) != 0,
                challenge_avp: avp_name(
                    &cfg.str("challenge_avp")
                        .unwrap_or_else(|| "$avp(digest_challenge)".into()),
                )?
                .into(),
                host: OnceLock::new(),
            }))) as Arc<dyn Module>)
        }),
    }
}

/// What `loadmodule "auth_db.so"` finds: a clear refusal.
pub fn def_auth_db() -> ModuleDef {
    ModuleDef {
        name: "auth_db",
        params: vec![],
        instantiate: Arc::new(|_| {
            Err("auth_db is not available in siphon (there is no database layer): load auth and check passwords with pv_www_authenticate/pv_proxy_authenticate/pv_auth_check, taking the password from $sht(...) or an AVP".into())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphon_script::net::{Peer, Transport};
    use siphon_script::{Registry, Value, load_str};

    fn msg(start: &str, from: &str, to: &str) -> SipCtx {
        let raw = format!(
            "{start} SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:{from}@h>;tag=1\r\nTo: <sip:{to}@h>\r\nCall-ID: c\r\nCSeq: 1 X\r\nContent-Length: 0\r\n\r\n"
        );
        SipCtx::new(
            siphon_sip::parse(bytes::Bytes::from(raw)).unwrap(),
            Peer {
                transport: Transport::Udp,
                src: "127.0.0.1:5999".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                conn: None,
            },
        )
    }

    /// Checks flag 1 as Kamailio 5.6.3's `pv_auth_check`.
    #[test]
    fn identity_checks_by_method() {
        let m = |s: &str, f: &str, t: &str, u: &str| identity_matches(&msg(s, f, t), u);
        // REGISTER: the To user, and From = To.
        assert!(m("REGISTER sip:h", "alice", "alice", "alice"));
        assert!(m("REGISTER sip:h", "alice", "alice", "alice@h"));
        assert!(!m("REGISTER sip:h", "bob", "alice", "alice"));
        assert!(!m("REGISTER sip:h", "alice", "bob", "alice"));
        // Other requests: the From user.
        assert!(m("INVITE sip:carol@h", "alice", "carol", "alice"));
        assert!(!m("INVITE sip:carol@h", "carol", "alice", "alice"));
        // PUBLISH: as REGISTER, and the R-URI user is the From user.
        assert!(m("PUBLISH sip:alice@h", "alice", "alice", "alice"));
        assert!(!m("PUBLISH sip:bob@h", "alice", "alice", "alice"));
    }

    /// A PV alone is read as the PV: `$null` is no password (-1), as is an
    /// empty one; a format around it expands as text.
    #[test]
    fn a_password_pv_that_reads_nothing_is_an_error() {
        let mut reg = Registry::new();
        reg.add(def());
        let cfg = "loadmodule \"auth.so\"\nrequest_route {\n\
                   pv_auth_check(\"r\", \"$avp(none)\", \"0\", \"0\"); $var(a) = $rc;\n\
                   $var(e) = \"\"; pv_www_authenticate(\"r\", $var(e), \"0\"); $var(b) = $rc;\n\
                   pv_proxy_authenticate(\"$var(e)\", \"pw\", \"0\"); $var(c) = $rc;\n\
                   pv_www_authenticate(\"r\", \"x$avp(none)\", \"0\"); $var(d) = $rc;\n\
                   }\n";
        let l = load_str("t.cfg", cfg, &Default::default(), &reg);
        let p = l
            .program
            .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources)));
        let mut ctx = p.new_ctx(RouteType::REQUEST);
        ctx.ext.insert(msg("REGISTER sip:h", "alice", "alice"));
        p.run(p.request_route().unwrap(), &mut ctx);
        let v = |n: &str| ctx.vars[p.var_slot(n).unwrap()].clone();
        assert_eq!(
            [v("a"), v("b"), v("c"), v("d")],
            // The last has a password ("x<null>"), but no credentials: -5.
            [
                Value::Int(-1),
                Value::Int(-1),
                Value::Int(-1),
                Value::Int(-5)
            ]
        );
    }
}
