//! The location store, pure: tables of address-of-record records, each with
//! its contacts in Kamailio usrloc's order. No clock is read and no I/O is
//! done here: every call that depends on time takes `now` (Unix seconds), so
//! expiry, CSeq ordering and q ordering are tested on a simulated clock.

use std::collections::HashMap;

/// `q` when the contact gave none (Kamailio's `Q_UNSPECIFIED`): below every given q.
pub const Q_UNSPECIFIED: i32 = -1;
/// Every method allowed (Kamailio's `ALL_METHODS`).
pub const ALL_METHODS: u32 = u32::MAX;
/// `Flags` of a contact saved with save()'s 0x01 (memory only; Kamailio's `FL_MEM`).
pub const FL_MEM: u32 = 1;

/// How a REGISTER's contact finds the binding it refreshes (usrloc's `matching_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// 0: the contact URI.
    Contact,
    /// 1: the contact URI and the Call-ID.
    ContactCallId,
    /// 2: the contact URI and the Path.
    ContactPath,
    /// 3: the Call-ID.
    CallId,
}

impl Matching {
    /// From usrloc's `matching_mode` value.
    pub fn from_mode(m: i64) -> Option<Matching> {
        Some(match m {
            0 => Matching::Contact,
            1 => Matching::ContactCallId,
            2 => Matching::ContactPath,
            3 => Matching::CallId,
            _ => return None,
        })
    }
}

/// One binding of an address of record.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// The contact URI.
    pub uri: String,
    /// When it expires (Unix seconds).
    pub expires: u64,
    /// q × 1000, or [`Q_UNSPECIFIED`].
    pub q: i32,
    /// Call-ID of the REGISTER that saved it.
    pub callid: String,
    /// Its CSeq number.
    pub cseq: u32,
    /// Where requests for it are sent instead of the URI (NAT: `received_avp`).
    pub received: Option<String>,
    /// The Path header values of the REGISTER (`use_path`).
    pub path: Option<String>,
    /// User-Agent of the REGISTER.
    pub user_agent: String,
    /// usrloc flags ([`FL_MEM`]).
    pub flags: u32,
    /// Branch flags of the REGISTER, restored by lookup (`nat_bflag` is one of them).
    pub cflags: u64,
    /// Our socket it registered through (`udp:127.0.0.1:5060`).
    pub socket: String,
    /// Methods it accepts (Kamailio's bit values), for `method_filtering`.
    pub methods: u32,
    /// Unique id of the binding.
    pub ruid: String,
    /// `+sip.instance` (RFC 5626), if given.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626), 0 when none.
    pub reg_id: u32,
    /// When it was saved or refreshed last (Unix seconds).
    pub last_modified: u64,
}

impl Contact {
    /// Whether it has not expired at `now`.
    pub fn valid(&self, now: u64) -> bool {
        self.expires > now
    }
    /// Seconds left at `now`.
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }
}

/// What a REGISTER's contact is matched on.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Contact URI.
    pub uri: &'a str,
    /// Call-ID.
    pub callid: &'a str,
    /// Path, if stored.
    pub path: Option<&'a str>,
    /// `+sip.instance`.
    pub instance: Option<&'a str>,
    /// `reg-id`.
    pub reg_id: u32,
}

/// Whether a REGISTER's contact may change the binding it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// None matches.
    No,
    /// The binding at this index.
    At(usize),
    /// The same Call-ID with a lower CSeq (or an equal one later than
    /// `cseq_delay`): Kamailio answers 400 "Invalid CSeq number".
    OldCseq,
    /// The same Call-ID and CSeq within `cseq_delay`: a retransmission, ignored.
    Retransmission,
}

/// The bindings of one address of record, in lookup order.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The address of record as saved (`alice`, or `alice@example.com` with `use_domain`).
    pub aor: String,
    /// Contacts in Kamailio's order: by q (highest first, unspecified last),
    /// older first within a q; newest first with `desc_time_order`.
    pub contacts: Vec<Contact>,
}

impl Record {
    /// The contacts valid at `now`.
    pub fn valid(&self, now: u64) -> impl Iterator<Item = &Contact> {
        self.contacts.iter().filter(move |c| c.valid(now))
    }

    /// Finds the binding a REGISTER's contact refreshes (usrloc's `get_ucontact`).
    pub fn find(
        &self,
        key: &Key<'_>,
        cseq: u32,
        now: u64,
        mode: Matching,
        cseq_delay: u64,
    ) -> Found {
        let pos = self
            .contacts
            .iter()
            .position(|c| match (key.instance, &c.instance) {
                // RFC 5626: a binding with an instance is matched on it (and reg-id).
                (Some(i), Some(ci)) => i == ci && key.reg_id == c.reg_id,
                (Some(_), None) | (None, Some(_)) => false,
                (None, None) => match mode {
                    Matching::Contact => uri_eq(&c.uri, key.uri),
                    Matching::ContactCallId => uri_eq(&c.uri, key.uri) && c.callid == key.callid,
                    Matching::ContactPath => {
                        uri_eq(&c.uri, key.uri) && c.path.as_deref() == key.path
                    }
                    Matching::CallId => c.callid == key.callid,
                },
            });
        let Some(i) = pos else { return Found::No };
        let c = &self.contacts[i];
        if c.callid == key.callid {
            if cseq < c.cseq {
                return Found::OldCseq;
            }
            if cseq == c.cseq {
                return if c.last_modified + cseq_delay > now {
                    Found::Retransmission
                } else {
                    Found::OldCseq
                };
            }
        }
        Found::At(i)
    }

    /// Inserts a binding at its place (usrloc's `mem_insert_ucontact`).
    pub fn insert(&mut self, c: Contact, desc_time_order: bool) {
        let at = if desc_time_order {
            0
        } else {
            self.contacts
                .iter()
                .position(|x| x.q < c.q)
                .unwrap_or(self.contacts.len())
        };
        self.contacts.insert(at, c);
    }

    /// Replaces the binding at `i`, moving it when its q changed (or to the
    /// front with `desc_time_order`), as usrloc's `update_contact_pos`.
    pub fn update(&mut self, i: usize, c: Contact, desc_time_order: bool) {
        let q_changed = self.contacts[i].q != c.q;
        if desc_time_order || q_changed {
            self.contacts.remove(i);
            self.insert(c, desc_time_order);
        } else {
            self.contacts[i] = c;
        }
    }

    /// Removes the bindings expired at `now`, returning them.
    pub fn expire(&mut self, now: u64) -> Vec<Contact> {
        let (gone, keep) = std::mem::take(&mut self.contacts)
            .into_iter()
            .partition(|c| !c.valid(now));
        self.contacts = keep;
        gone
    }
}

/// Contact URIs compare as Kamailio's usrloc compares them: byte for byte.
fn uri_eq(a: &str, b: &str) -> bool {
    a == b
}

/// One usrloc table (`location`): records by address of record.
#[derive(Debug, Default)]
pub struct Table {
    /// The table's name.
    pub name: String,
    records: HashMap<String, Record>,
    /// Contacts removed because they expired (`usrloc:<table>-expires`).
    pub expired_total: u64,
}

/// The key a record is kept under: address-of-record comparison ignores case.
fn key(aor: &str) -> String {
    aor.to_ascii_lowercase()
}

impl Table {
    /// An empty table.
    pub fn new(name: &str) -> Self {
        Table {
            name: name.to_string(),
            ..Default::default()
        }
    }
    /// The record of `aor`, if any.
    pub fn get(&self, aor: &str) -> Option<&Record> {
        self.records.get(&key(aor))
    }
    /// The record of `aor`, created empty when missing.
    pub fn get_or_create(&mut self, aor: &str) -> &mut Record {
        self.records.entry(key(aor)).or_insert_with(|| Record {
            aor: aor.to_string(),
            contacts: Vec::new(),
        })
    }
    /// The record of `aor` to change, if any.
    pub fn get_mut(&mut self, aor: &str) -> Option<&mut Record> {
        self.records.get_mut(&key(aor))
    }
    /// Drops the record of `aor` when it holds no binding.
    pub fn drop_if_empty(&mut self, aor: &str) {
        if self
            .records
            .get(&key(aor))
            .is_some_and(|r| r.contacts.is_empty())
        {
            self.records.remove(&key(aor));
        }
    }
    /// Removes the record of `aor`; false when there was none.
    pub fn remove(&mut self, aor: &str) -> bool {
        self.records.remove(&key(aor)).is_some()
    }
    /// Removes the binding `uri` of `aor`: `None` without such record, `Some(false)` without such contact.
    pub fn remove_contact(&mut self, aor: &str, uri: &str) -> Option<bool> {
        let r = self.records.get_mut(&key(aor))?;
        let before = r.contacts.len();
        r.contacts.retain(|c| !uri_eq(&c.uri, uri));
        let removed = r.contacts.len() != before;
        self.drop_if_empty(aor);
        Some(removed)
    }
    /// Removes the binding with this ruid of `aor`; false when none.
    pub fn remove_ruid(&mut self, aor: &str, ruid: &str) -> bool {
        let Some(r) = self.records.get_mut(&key(aor)) else {
            return false;
        };
        let before = r.contacts.len();
        r.contacts.retain(|c| c.ruid != ruid);
        let removed = r.contacts.len() != before;
        self.drop_if_empty(aor);
        removed
    }
    /// The records, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }
    /// Removes every binding expired at `now` (and records left empty):
    /// `(aor, contact)` for each, to run `usrloc:contact-expired` with.
    pub fn expire(&mut self, now: u64) -> Vec<(String, Contact)> {
        let mut out = Vec::new();
        self.records.retain(|_, r| {
            for c in r.expire(now) {
                out.push((r.aor.clone(), c));
            }
            !r.contacts.is_empty()
        });
        self.expired_total += out.len() as u64;
        out
    }
    /// Records with at least one binding valid at `now`.
    pub fn users(&self, now: u64) -> usize {
        self.records
            .values()
            .filter(|r| r.valid(now).next().is_some())
            .count()
    }
    /// Bindings valid at `now`.
    pub fn contacts(&self, now: u64) -> usize {
        self.records.values().map(|r| r.valid(now).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(uri: &str, q: i32, callid: &str, cseq: u32, expires: u64, now: u64) -> Contact {
        Contact {
            uri: uri.into(),
            expires,
            q,
            callid: callid.into(),
            cseq,
            received: None,
            path: None,
            user_agent: String::new(),
            flags: 0,
            cflags: 0,
            socket: "udp:127.0.0.1:5060".into(),
            methods: ALL_METHODS,
            ruid: format!("r-{uri}"),
            instance: None,
            reg_id: 0,
            last_modified: now,
        }
    }

    fn key<'a>(uri: &'a str, callid: &'a str) -> Key<'a> {
        Key {
            uri,
            callid,
            path: None,
            instance: None,
            reg_id: 0,
        }
    }

    fn uris(r: &Record) -> Vec<&str> {
        r.contacts.iter().map(|c| c.uri.as_str()).collect()
    }

    #[test]
    fn contacts_are_ordered_by_q_then_age_and_unspecified_q_last() {
        let mut r = Record::default();
        r.insert(contact("sip:a@h", Q_UNSPECIFIED, "c", 1, 100, 0), false);
        r.insert(contact("sip:b@h", 500, "c", 1, 100, 0), false);
        r.insert(contact("sip:c@h", 1000, "c", 1, 100, 0), false);
        r.insert(contact("sip:d@h", 500, "c", 1, 100, 0), false);
        r.insert(contact("sip:e@h", 0, "c", 1, 100, 0), false);
        assert_eq!(
            uris(&r),
            ["sip:c@h", "sip:b@h", "sip:d@h", "sip:e@h", "sip:a@h"]
        );
        // a changed q moves the binding
        r.update(1, contact("sip:b@h", 100, "c", 2, 100, 0), false);
        assert_eq!(
            uris(&r),
            ["sip:c@h", "sip:d@h", "sip:b@h", "sip:e@h", "sip:a@h"]
        );
    }

    #[test]
    fn desc_time_order_puts_the_newest_first() {
        let mut r = Record::default();
        r.insert(contact("sip:a@h", 1000, "c", 1, 100, 0), true);
        r.insert(contact("sip:b@h", 100, "c", 1, 100, 0), true);
        assert_eq!(uris(&r), ["sip:b@h", "sip:a@h"]);
        r.update(1, contact("sip:a@h", 1000, "c", 2, 100, 0), true);
        assert_eq!(uris(&r), ["sip:a@h", "sip:b@h"]);
    }

    #[test]
    fn the_same_call_id_with_a_lower_cseq_is_refused_and_an_equal_one_is_a_retransmission() {
        let mut r = Record::default();
        r.insert(
            contact("sip:a@h", Q_UNSPECIFIED, "call1", 5, 1100, 1000),
            false,
        );
        let k = key("sip:a@h", "call1");
        assert_eq!(r.find(&k, 4, 1001, Matching::Contact, 20), Found::OldCseq);
        assert_eq!(
            r.find(&k, 5, 1001, Matching::Contact, 20),
            Found::Retransmission
        );
        assert_eq!(r.find(&k, 5, 1021, Matching::Contact, 20), Found::OldCseq);
        assert_eq!(r.find(&k, 6, 1001, Matching::Contact, 20), Found::At(0));
        // another Call-ID may use any CSeq
        assert_eq!(
            r.find(&key("sip:a@h", "call2"), 1, 1001, Matching::Contact, 20),
            Found::At(0)
        );
        // matched on the Call-ID too
        assert_eq!(
            r.find(
                &key("sip:a@h", "call2"),
                1,
                1001,
                Matching::ContactCallId,
                20
            ),
            Found::No
        );
        assert_eq!(
            r.find(&key("sip:other@h", "call1"), 9, 1001, Matching::CallId, 20),
            Found::At(0)
        );
    }

    #[test]
    fn an_instance_matches_only_the_binding_with_that_instance() {
        let mut r = Record::default();
        r.insert(contact("sip:a@h", Q_UNSPECIFIED, "c", 1, 100, 0), false);
        let mut k = key("sip:a@h", "c");
        k.instance = Some("<urn:uuid:1>");
        assert_eq!(r.find(&k, 2, 0, Matching::Contact, 20), Found::No);
        let mut c = contact("sip:b@h", Q_UNSPECIFIED, "c", 1, 100, 0);
        c.instance = Some("<urn:uuid:1>".into());
        r.insert(c, false);
        assert_eq!(r.find(&k, 2, 0, Matching::Contact, 20), Found::At(1));
    }

    #[test]
    fn bindings_expire_on_the_simulated_clock() {
        let mut t = Table::new("location");
        let r = t.get_or_create("Alice");
        r.insert(contact("sip:a@h", Q_UNSPECIFIED, "c", 1, 1060, 1000), false);
        r.insert(contact("sip:b@h", Q_UNSPECIFIED, "c", 1, 2000, 1000), false);
        assert_eq!((t.users(1000), t.contacts(1000)), (1, 2));
        // expired but not yet removed: not counted, not valid
        assert_eq!(t.contacts(1060), 1);
        assert!(t.expire(1059).is_empty());
        let gone = t.expire(1060);
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].0.as_str(), gone[0].1.uri.as_str()),
            ("Alice", "sip:a@h")
        );
        // case-insensitive address of record
        assert_eq!(t.get("alice").map(|r| r.contacts.len()), Some(1));
        assert_eq!(t.expire(2000).len(), 1);
        assert!(t.get("alice").is_none(), "an empty record is dropped");
        assert_eq!(t.expired_total, 2);
    }

    #[test]
    fn contacts_are_removed_by_uri_or_ruid() {
        let mut t = Table::new("location");
        let r = t.get_or_create("bob");
        r.insert(contact("sip:a@h", Q_UNSPECIFIED, "c", 1, 100, 0), false);
        r.insert(contact("sip:b@h", Q_UNSPECIFIED, "c", 1, 100, 0), false);
        assert_eq!(t.remove_contact("bob", "sip:x@h"), Some(false));
        assert_eq!(t.remove_contact("bob", "sip:a@h"), Some(true));
        assert_eq!(t.remove_contact("nobody", "sip:a@h"), None);
        assert!(t.remove_ruid("bob", "r-sip:b@h"));
        assert!(t.get("bob").is_none());
    }
}
