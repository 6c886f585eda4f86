//! Self-validating nonces (as Kamailio's: times plus a keyed MD5, so any
//! nonce this process made can be checked without storing it) and replay
//! protection (Kamailio's `nonce_count`: each nonce+nc is accepted once).

use crate::digest::{md5_raw, to_hex};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of ours (bad form or MAC: another secret, a forgery).
    Invalid,
    /// Ours but expired.
    Stale,
}

/// Makes and checks nonces; remembers which nonce+nc were used.
pub struct Nonces {
    secret: Vec<u8>,
    expire: u32,
    next_id: AtomicU32,
    /// Nonce id → (its expiry, the nc values used with it).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    map: HashMap<u32, (u32, Vec<u32>)>,
    inserts: u32,
}

const RAW: usize = 12;

impl Nonces {
    /// Nonces keyed by `secret`, valid `expire` seconds.
    pub fn new(secret: Vec<u8>, expire: u32) -> Self {
        let mut seed = [0u8; 4];
        let _ = getrandom::getrandom(&mut seed);
        Nonces {
            secret,
            expire,
            next_id: AtomicU32::new(u32::from_be_bytes(seed)),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn mac(&self, raw: &[u8]) -> [u8; 16] {
        md5_raw(&[raw, &self.secret])
    }

    /// A new nonce, made at `now` (seconds since the epoch): 56 hex digits
    /// of expiry, creation time, id and MAC.
    pub fn make(&self, now: u32) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut raw = Vec::with_capacity(RAW + 16);
        raw.extend_from_slice(&now.wrapping_add(self.expire).to_be_bytes());
        raw.extend_from_slice(&now.to_be_bytes());
        raw.extend_from_slice(&id.to_be_bytes());
        let mac = self.mac(&raw);
        raw.extend_from_slice(&mac);
        to_hex(&raw)
    }

    /// Checks `nonce` at `now`; returns its id and expiry.
    pub fn check(&self, nonce: &str, now: u32) -> Result<(u32, u32), NonceError> {
        let raw = from_hex(nonce).ok_or(NonceError::Invalid)?;
        if raw.len() != RAW + 16 || self.mac(&raw[..RAW]) != raw[RAW..] {
            return Err(NonceError::Invalid);
        }
        let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let (expires, since, id) = (word(0), word(4), word(8));
        if since > now.saturating_add(1) {
            return Err(NonceError::Invalid);
        }
        if now > expires {
            return Err(NonceError::Stale);
        }
        Ok((id, expires))
    }

    /// Whether nonce `id` was already used with `nc`.
    pub fn was_used(&self, id: u32, nc: u32) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.map.get(&id).is_some_and(|(_, ncs)| ncs.contains(&nc))
    }

    /// Whether nonce `id` was used at all.
    pub fn any_used(&self, id: u32) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.map.contains_key(&id)
    }

    /// Records nonce `id` (expiring at `expires`) as used with `nc`; false
    /// if it already was. Expired entries are dropped now and then: once a
    /// nonce expired it is refused as stale anyway.
    pub fn mark_used(&self, id: u32, expires: u32, nc: u32, now: u32) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.inserts = seen.inserts.wrapping_add(1);
        if seen.inserts.is_multiple_of(1024) {
            seen.map.retain(|_, (exp, _)| *exp >= now);
        }
        let e = seen.map.entry(id).or_insert((expires, Vec::new()));
        if e.1.contains(&nc) {
            return false;
        }
        e.1.push(nc);
        true
    }

    /// How many nonces are remembered (for tests).
    pub fn remembered(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    b.chunks(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_stale_invalid() {
        let n = Nonces::new(b"k".to_vec(), 30);
        let a = n.make(1000);
        let b = n.make(1000);
        assert_ne!(a, b, "two nonces in the same second differ");
        let (id, exp) = n.check(&a, 1010).unwrap();
        assert_eq!(exp, 1030);
        assert_eq!(n.check(&a, 1031), Err(NonceError::Stale));
        let other = Nonces::new(b"other".to_vec(), 30);
        assert_eq!(other.check(&a, 1010), Err(NonceError::Invalid));
        let mut forged = a.clone().into_bytes();
        forged[7] = if forged[7] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            n.check(std::str::from_utf8(&forged).unwrap(), 1010),
            Err(NonceError::Invalid)
        );
        assert_eq!(n.check("zz", 1010), Err(NonceError::Invalid));
        assert!(n.mark_used(id, exp, 1, 1010));
        assert!(n.was_used(id, 1));
        assert!(n.any_used(id));
        assert!(!n.was_used(id, 2));
        assert!(!n.mark_used(id, exp, 1, 1010));
        assert!(n.mark_used(id, exp, 2, 1010));
    }
}
