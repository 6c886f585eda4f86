//! Call load (algorithm 10), as Kamailio's dispatcher tracks it: no dialog
//! module, a table of calls by Call-ID. The INVITE that `ds_select_dst`
//! dispatches adds its call to the destination picked (by `duid`); a
//! failover with `ds_next_dst` moves it; `ds_load_update()` confirms it on
//! a 2xx to the INVITE and ends it on BYE or CANCEL; `ds_load_unset()` ends
//! it (a failed call). A call that never got its 2xx ends after
//! `ds_hash_initexpire` s, any call after `ds_hash_expire` s
//! (`ds_hash_check_interval` sweeps). Pure: `now` (seconds) is passed in.
//!
//! The load is kept by set and `duid`, so a `dispatcher.reload` keeps the
//! calls in progress counted against the destinations that carry them.

use bytes::Bytes;
use std::collections::HashMap;

/// One call in progress.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    set: i64,
    /// The destination's `duid`, lower case (Kamailio compares without case).
    duid: String,
    /// A 2xx to the INVITE was seen (`ds_load_update`).
    confirmed: bool,
    /// When it ends whatever happens.
    expires: u64,
    /// When it ends if still unconfirmed.
    init_expires: u64,
}

/// Why a call was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// The Call-ID is counted already (a second selection for the call).
    Known,
}

/// The calls in progress and each destination's count.
#[derive(Debug)]
pub struct CallLoad {
    calls: HashMap<Bytes, Call>,
    load: HashMap<(i64, String), u32>,
    /// `ds_hash_expire`.
    expire: u64,
    /// `ds_hash_initexpire`.
    init_expire: u64,
}

fn key(set: i64, duid: &str) -> (i64, String) {
    (set, duid.to_ascii_lowercase())
}

impl CallLoad {
    /// An empty table; calls live `expire` s, unconfirmed ones `init_expire` s.
    pub fn new(expire: u64, init_expire: u64) -> Self {
        CallLoad {
            calls: HashMap::new(),
            load: HashMap::new(),
            expire,
            init_expire,
        }
    }

    /// Calls in progress on `duid` of `set`.
    pub fn load(&self, set: i64, duid: &str) -> u32 {
        self.load.get(&key(set, duid)).copied().unwrap_or(0)
    }

    fn inc(&mut self, set: i64, duid: &str) {
        *self.load.entry(key(set, duid)).or_insert(0) += 1;
    }

    fn dec(&mut self, set: i64, duid: &str) {
        let k = key(set, duid);
        if let Some(n) = self.load.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.load.remove(&k);
            }
        }
    }

    /// Counts the call `call_id` on `duid` of `set`.
    pub fn add(&mut self, call_id: &[u8], set: i64, duid: &str, now: u64) -> Result<(), AddError> {
        if self.calls.contains_key(call_id) {
            return Err(AddError::Known);
        }
        let call = Call {
            set,
            duid: duid.to_ascii_lowercase(),
            confirmed: false,
            expires: now + self.expire,
            init_expires: now + self.init_expire,
        };
        self.inc(set, duid);
        self.calls.insert(Bytes::copy_from_slice(call_id), call);
        Ok(())
    }

    /// Moves the call to `duid` (failover); false when it is not counted.
    pub fn replace(&mut self, call_id: &[u8], duid: &str) -> bool {
        let Some(c) = self.calls.get(call_id) else {
            return false;
        };
        let (set, old) = (c.set, c.duid.clone());
        self.dec(set, &old);
        self.inc(set, duid);
        if let Some(c) = self.calls.get_mut(call_id) {
            c.duid = duid.to_ascii_lowercase();
        }
        true
    }

    /// The set the call is counted in.
    pub fn set_of(&self, call_id: &[u8]) -> Option<i64> {
        self.calls.get(call_id).map(|c| c.set)
    }

    /// Ends the call; false when it is not counted.
    pub fn remove(&mut self, call_id: &[u8]) -> bool {
        match self.calls.remove(call_id) {
            Some(c) => {
                self.dec(c.set, &c.duid);
                true
            }
            None => false,
        }
    }

    /// The call was answered (2xx to its INVITE); false when not counted.
    pub fn confirm(&mut self, call_id: &[u8]) -> bool {
        match self.calls.get_mut(call_id) {
            Some(c) => {
                c.confirmed = true;
                true
            }
            None => false,
        }
    }

    /// Ends the calls that expired by `now`; how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let gone: Vec<Bytes> = self
            .calls
            .iter()
            .filter(|(_, c)| c.expires < now || (!c.confirmed && c.init_expires < now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone.len()
    }

    /// Calls counted.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call is counted.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_count_move_and_end() {
        let mut l = CallLoad::new(100, 10);
        l.add(b"c1", 1, "GW1", 0).unwrap();
        l.add(b"c2", 1, "gw1", 0).unwrap();
        assert_eq!(l.add(b"c2", 1, "gw2", 0), Err(AddError::Known));
        assert_eq!(l.load(1, "gw1"), 2);
        assert_eq!(l.load(2, "gw1"), 0, "per set");
        assert!(l.replace(b"c2", "gw2"));
        assert_eq!((l.load(1, "gw1"), l.load(1, "GW2")), (1, 1));
        assert!(l.remove(b"c1"));
        assert!(!l.remove(b"c1"));
        assert!(!l.replace(b"c9", "gw1"));
        assert_eq!((l.load(1, "gw1"), l.load(1, "gw2")), (0, 1));
        assert_eq!(l.set_of(b"c2"), Some(1));
    }

    #[test]
    fn unconfirmed_calls_expire_first_on_a_simulated_clock() {
        let mut l = CallLoad::new(100, 10);
        l.add(b"answered", 1, "a", 0).unwrap();
        l.add(b"ringing", 1, "a", 0).unwrap();
        assert!(l.confirm(b"answered"));
        assert!(!l.confirm(b"nope"));
        assert_eq!(l.sweep(10), 0, "not before the second has passed");
        assert_eq!(l.sweep(11), 1);
        assert_eq!(l.load(1, "a"), 1);
        assert_eq!(l.sweep(100), 0);
        assert_eq!(l.sweep(101), 1);
        assert!(l.is_empty());
        assert_eq!(l.load(1, "a"), 0);
    }
}
