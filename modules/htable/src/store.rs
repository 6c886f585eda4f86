//! The pure store: one table's cells with their expiry, every operation
//! taking `now` (seconds on a monotonic clock) so expiry is unit-testable.

use bytes::Bytes;
use siphon_script::value::Value;
use std::collections::HashMap;

/// A table definition (`name=>size=8;autoexpire=300;initval=0;updateexpire=1`).
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    /// The table name.
    pub name: String,
    /// log2 of the number of slots (Kamailio's `size`, 2..31).
    pub size: u32,
    /// Seconds an item lives after it is set (0: forever).
    pub autoexpire: u64,
    /// The value a missing item reads as, and `$shtinc` starts from.
    pub initval: Option<i64>,
    /// Whether a write to an existing item restarts its expiry.
    pub updateexpire: bool,
    /// Accepted (DMQ replication is the next issue's): no effect yet.
    pub dmqreplicate: i64,
    /// The database (db_text file) table it is loaded from (`dbtable`).
    pub dbtable: Option<String>,
}

/// Parses a definition; the error says which attribute is wrong.
pub fn parse_def(s: &str) -> Result<TableDef, String> {
    let (name, rest) = s
        .split_once("=>")
        .ok_or_else(|| format!("`{s}`: expected `name=>attr=value;...`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}`: the table has no name"));
    }
    let mut d = TableDef {
        name: name.to_string(),
        size: 4,
        autoexpire: 0,
        initval: None,
        updateexpire: true,
        dmqreplicate: 0,
        dbtable: None,
    };
    for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected `attr=value`"))?;
        let (k, v) = (k.trim(), v.trim());
        let int = || {
            v.parse::<i64>()
                .map_err(|_| format!("`{k}={v}`: not an integer"))
        };
        match k {
            "size" => {
                let n = int()?;
                // Kamailio clamps to 2..31 bits.
                d.size = n.clamp(2, 31) as u32;
            }
            "autoexpire" => d.autoexpire = int()?.max(0) as u64,
            "initval" => d.initval = Some(int()?),
            "updateexpire" => d.updateexpire = int()? != 0,
            "dmqreplicate" => d.dmqreplicate = int()?,
            "dbtable" if !v.is_empty() => d.dbtable = Some(v.to_string()),
            "dbtable" => {}
            "dbmode" => {
                if int()? != 0 {
                    return Err(format!(
                        "`{k}={v}`: siphon's htable does not write a table back to its database (dbmode=0 only: loaded at start and by htable.reload)"
                    ));
                }
            }
            "cols" | "coldelim" | "colnull" => {
                return Err(format!(
                    "`{k}`: siphon's htable does not pack several database columns into one value (cols): the table is read from key_name/key_type/value_type/key_value/expires"
                ));
            }
            _ => return Err(format!("unknown htable attribute `{k}`")),
        }
    }
    Ok(d)
}

#[derive(Debug, Clone)]
struct Cell {
    value: Value,
    /// Absolute expiry (seconds), 0: never.
    expires: u64,
}

impl Cell {
    fn live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

/// How `$shtcn`/`$shtcv`, `sht_rm_name*`, `sht_rm_value*` match, as
/// Kamailio's: a value matches only when it is a string, except for
/// [`Matcher::IntEq`], which matches integer values only (and no name).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A regular expression (POSIX extended, case-insensitive, `^`/`$` at
    /// line ends: Kamailio's `REG_EXTENDED|REG_ICASE|REG_NEWLINE`).
    Re(regex::bytes::Regex),
    /// Starts with.
    Prefix(Bytes),
    /// Ends with.
    Suffix(Bytes),
    /// Equal.
    Eq(Bytes),
    /// An integer value equal to this one (`$shtcv(t=>eqN)`).
    IntEq(i64),
    /// Everything.
    All,
}

impl Matcher {
    /// `$shtcn`'s expression, as Kamailio reads it: `~~re`, `~%suffix`
    /// (the end of the text is it), `%~prefix`, `==text`, `eqN` (integer
    /// values equal to N; no name), `**` (all); anything else is a
    /// regular expression.
    pub fn parse_exp(e: &[u8]) -> Result<Matcher, String> {
        let rest = Bytes::copy_from_slice(e.get(2..).unwrap_or(b""));
        Ok(match e.get(..2) {
            Some(b"~~") => Matcher::re(&rest)?,
            Some(b"~%") => Matcher::Suffix(rest),
            Some(b"%~") => Matcher::Prefix(rest),
            Some(b"==") => Matcher::Eq(rest),
            Some(b"eq") => {
                Matcher::IntEq(String::from_utf8_lossy(&rest).trim().parse().unwrap_or(0))
            }
            Some(b"**") => Matcher::All,
            _ => Matcher::re(e)?,
        })
    }
    /// A regular expression.
    pub fn re(e: &[u8]) -> Result<Matcher, String> {
        let s = String::from_utf8_lossy(e);
        regex::bytes::RegexBuilder::new(&s)
            .case_insensitive(true)
            .multi_line(true)
            .build()
            .map(Matcher::Re)
            .map_err(|x| format!("bad regular expression `{s}`: {x}"))
    }
    /// Whether the text `b` matches.
    pub fn is_match(&self, b: &[u8]) -> bool {
        match self {
            Matcher::Re(r) => r.is_match(b),
            Matcher::Prefix(p) => b.starts_with(p),
            Matcher::Suffix(p) => b.ends_with(p),
            Matcher::Eq(p) => b == &p[..],
            Matcher::IntEq(_) => false,
            Matcher::All => true,
        }
    }
    /// Whether an item's value matches (a string, or an integer for
    /// [`Matcher::IntEq`]).
    pub fn value_matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Matcher::All, _) => true,
            (Matcher::IntEq(n), Value::Int(i)) => n == i,
            (Matcher::IntEq(_), _) | (_, Value::Int(_) | Value::Null) => false,
            (m, v) => m.is_match(&v.to_bytes()),
        }
    }
}

/// One table's items.
#[derive(Debug)]
pub struct Store {
    /// Its definition.
    pub def: TableDef,
    cells: HashMap<Bytes, Cell>,
}

impl Store {
    /// An empty table.
    pub fn new(def: TableDef) -> Self {
        Store {
            def,
            cells: HashMap::new(),
        }
    }
    fn live(&self, key: &[u8], now: u64) -> Option<&Cell> {
        self.cells.get(key).filter(|c| c.live(now))
    }
    /// The item's value (an expired item is gone; `initval` for a missing one).
    pub fn get(&self, key: &[u8], now: u64) -> Value {
        match self.live(key, now) {
            Some(c) => c.value.clone(),
            None => self.def.initval.map_or(Value::Null, Value::Int),
        }
    }
    /// The item's value, `None` when missing (RPC `htable.get`).
    pub fn lookup(&self, key: &[u8], now: u64) -> Option<Value> {
        self.live(key, now).map(|c| c.value.clone())
    }
    /// Sets an item (`$null` deletes it).
    pub fn set(&mut self, key: Bytes, value: Value, now: u64) {
        if value.is_null() {
            self.cells.remove(&key);
            return;
        }
        let fresh = self.expiry(now);
        match self.cells.get_mut(&key) {
            Some(c) if c.live(now) => {
                c.value = value;
                if self.def.updateexpire {
                    c.expires = fresh;
                }
            }
            _ => {
                self.cells.insert(
                    key,
                    Cell {
                        value,
                        expires: fresh,
                    },
                );
            }
        }
    }
    fn expiry(&self, now: u64) -> u64 {
        if self.def.autoexpire > 0 {
            now + self.def.autoexpire
        } else {
            0
        }
    }
    /// Removes an item; whether it was there.
    pub fn del(&mut self, key: &[u8]) -> bool {
        self.cells.remove(key).is_some()
    }
    /// Adds `delta` to an integer item (a missing one starts at `initval`
    /// or 0); the new value, `None` when the item holds a string.
    pub fn add(&mut self, key: Bytes, delta: i64, now: u64) -> Option<i64> {
        let fresh = self.expiry(now);
        let init = self.def.initval.unwrap_or(0);
        match self.cells.get_mut(&key) {
            Some(c) if c.live(now) => {
                let Value::Int(n) = c.value else {
                    return None;
                };
                let n = n.wrapping_add(delta);
                c.value = Value::Int(n);
                if self.def.updateexpire {
                    c.expires = fresh;
                }
                Some(n)
            }
            _ => {
                let n = init.wrapping_add(delta);
                self.cells.insert(
                    key,
                    Cell {
                        value: Value::Int(n),
                        expires: fresh,
                    },
                );
                Some(n)
            }
        }
    }
    /// Seconds left before the item expires (0: never); `None` when missing.
    pub fn expire_left(&self, key: &[u8], now: u64) -> Option<u64> {
        self.live(key, now)
            .map(|c| if c.expires == 0 { 0 } else { c.expires - now })
    }
    /// Makes the item expire `secs` from now (0: never); false when missing.
    pub fn set_expire(&mut self, key: &[u8], secs: u64, now: u64) -> bool {
        match self.cells.get_mut(key) {
            Some(c) if c.live(now) => {
                c.expires = if secs == 0 { 0 } else { now + secs };
                true
            }
            _ => false,
        }
    }
    /// Replaces a live item's value (`updateexpire` restarts its expiry);
    /// false when it is gone.
    pub fn replace(&mut self, key: &[u8], value: Value, now: u64) -> bool {
        let fresh = self.expiry(now);
        match self.cells.get_mut(key) {
            Some(c) if c.live(now) => {
                c.value = value;
                if self.def.updateexpire {
                    c.expires = fresh;
                }
                true
            }
            _ => false,
        }
    }
    /// Makes a live item expire `secs` from now (0: at once, as Kamailio's
    /// `sht_iterator_setex`); false when it is gone.
    pub fn expire_in(&mut self, key: &[u8], secs: u64, now: u64) -> bool {
        match self.cells.get_mut(key) {
            Some(c) if c.live(now) => {
                c.expires = now + secs;
                true
            }
            _ => false,
        }
    }
    /// How many live items' names match.
    pub fn count_names(&self, m: &Matcher, now: u64) -> usize {
        self.count_names_in(m, now, &|_| true)
    }
    /// How many live items among those `keep` takes (by name) have a
    /// matching name.
    pub fn count_names_in(&self, m: &Matcher, now: u64, keep: &dyn Fn(&[u8]) -> bool) -> usize {
        self.cells
            .iter()
            .filter(|(k, c)| c.live(now) && keep(k) && m.is_match(k))
            .count()
    }
    /// How many live items' values match.
    pub fn count_values(&self, m: &Matcher, now: u64) -> usize {
        self.count_values_in(m, now, &|_| true)
    }
    /// How many live items among those `keep` takes have a matching value.
    pub fn count_values_in(&self, m: &Matcher, now: u64, keep: &dyn Fn(&[u8]) -> bool) -> usize {
        self.cells
            .iter()
            .filter(|(k, c)| c.live(now) && keep(k) && m.value_matches(&c.value))
            .count()
    }
    /// Removes the items whose name matches; how many.
    pub fn rm_names(&mut self, m: &Matcher) -> usize {
        self.rm_names_in(m, &|_| true)
    }
    /// Removes the items `keep` takes whose name matches; how many.
    pub fn rm_names_in(&mut self, m: &Matcher, keep: &dyn Fn(&[u8]) -> bool) -> usize {
        let before = self.cells.len();
        self.cells.retain(|k, _| !(keep(k) && m.is_match(k)));
        before - self.cells.len()
    }
    /// Removes the items whose value matches; how many.
    pub fn rm_values(&mut self, m: &Matcher) -> usize {
        self.rm_values_in(m, &|_| true)
    }
    /// Removes the items `keep` takes whose value matches; how many.
    pub fn rm_values_in(&mut self, m: &Matcher, keep: &dyn Fn(&[u8]) -> bool) -> usize {
        let before = self.cells.len();
        self.cells
            .retain(|k, c| !(keep(k) && m.value_matches(&c.value)));
        before - self.cells.len()
    }
    /// Empties the table.
    pub fn reset(&mut self) {
        self.cells.clear();
    }
    /// Replaces the items `keep` takes with those of `items` it takes
    /// (`htable.reload`): each as set by the script, then its expiry when
    /// it has one.
    pub fn load_in(
        &mut self,
        items: &[crate::dbtext::Item],
        keep: &dyn Fn(&[u8]) -> bool,
        now: u64,
    ) {
        self.reset_in(keep);
        for (k, v, ex) in items.iter().filter(|i| keep(&i.0)) {
            self.set(k.clone(), v.clone(), now);
            if let Some(secs) = ex {
                self.set_expire(k, *secs, now);
            }
        }
    }
    /// Removes the items `keep` takes.
    pub fn reset_in(&mut self, keep: &dyn Fn(&[u8]) -> bool) {
        self.cells.retain(|k, _| !keep(k));
    }
    /// Drops the expired items and returns them (name, value).
    pub fn sweep(&mut self, now: u64) -> Vec<(Bytes, Value)> {
        let mut out = Vec::new();
        self.cells.retain(|k, c| {
            if c.live(now) {
                true
            } else {
                out.push((k.clone(), c.value.clone()));
                false
            }
        });
        out
    }
    /// The live items, sorted by name.
    pub fn items(&self, now: u64) -> Vec<(Bytes, Value)> {
        self.items_in(now, &|_| true)
    }
    /// The live items `keep` takes, sorted by name.
    pub fn items_in(&self, now: u64, keep: &dyn Fn(&[u8]) -> bool) -> Vec<(Bytes, Value)> {
        let mut v: Vec<_> = self
            .cells
            .iter()
            .filter(|(k, c)| c.live(now) && keep(k))
            .map(|(k, c)| (k.clone(), c.value.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    /// Number of items held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.cells.len()
    }
    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(def: &str) -> Store {
        Store::new(parse_def(def).unwrap())
    }
    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn parses_definitions() {
        let d = parse_def("ipban=>size=8;autoexpire=300;initval=0;updateexpire=1").unwrap();
        assert_eq!(d.name, "ipban");
        assert_eq!(d.size, 8);
        assert_eq!(d.autoexpire, 300);
        assert_eq!(d.initval, Some(0));
        assert!(d.updateexpire);
        assert_eq!(
            parse_def("a=>dbtable=x;dbmode=0")
                .unwrap()
                .dbtable
                .as_deref(),
            Some("x")
        );
        assert!(
            parse_def("a=>dbtable=x;dbmode=1")
                .unwrap_err()
                .contains("dbmode=0 only")
        );
        assert!(parse_def("a=>cols='a,b'").unwrap_err().contains("cols"));
        assert!(parse_def("a=>colour=1").unwrap_err().contains("unknown"));
        assert!(parse_def("a=>size=x").is_err());
        assert!(parse_def("nodef").is_err());
    }

    #[test]
    fn set_get_delete_and_initval() {
        let mut s = t("a=>size=4");
        assert_eq!(s.get(b"x", 0), Value::Null);
        s.set(k("x"), Value::Int(5), 0);
        s.set(k("y"), Value::str("v"), 0);
        assert_eq!(s.get(b"x", 0), Value::Int(5));
        s.set(k("x"), Value::Null, 0);
        assert_eq!(s.get(b"x", 0), Value::Null);
        let mut s = t("a=>initval=7");
        assert_eq!(s.get(b"x", 0), Value::Int(7));
        assert_eq!(s.add(k("x"), 1, 0), Some(8));
        s.set(k("s"), Value::str("txt"), 0);
        assert_eq!(s.add(k("s"), 1, 0), None);
    }

    #[test]
    fn autoexpire_on_a_simulated_clock() {
        let mut s = t("a=>autoexpire=10;updateexpire=1");
        s.set(k("x"), Value::Int(1), 100);
        assert_eq!(s.expire_left(b"x", 103), Some(7));
        assert_eq!(s.get(b"x", 109), Value::Int(1));
        // updateexpire: a write restarts the clock
        s.set(k("x"), Value::Int(2), 109);
        assert_eq!(s.get(b"x", 115), Value::Int(2));
        assert_eq!(s.get(b"x", 119), Value::Null);
        assert_eq!(s.sweep(119), vec![(k("x"), Value::Int(2))]);
        assert!(s.is_empty());
        // updateexpire=0: a write keeps the first expiry
        let mut s = t("a=>autoexpire=10;updateexpire=0");
        s.set(k("x"), Value::Int(1), 100);
        s.set(k("x"), Value::Int(2), 105);
        assert_eq!(s.get(b"x", 110), Value::Null);
        // an increment of an expired item starts again
        assert_eq!(s.add(k("x"), 1, 111), Some(1));
        // $shtex write
        assert!(s.set_expire(b"x", 0, 111));
        assert_eq!(s.get(b"x", 10_000), Value::Int(1));
        assert_eq!(s.expire_left(b"x", 10_000), Some(0));
    }

    #[test]
    fn replace_and_expire_in_touch_live_items_only() {
        let mut s = t("a=>autoexpire=10;updateexpire=0");
        s.set(k("x"), Value::Int(1), 100);
        assert!(s.replace(b"x", Value::str("v"), 105));
        assert_eq!(s.get(b"x", 109), Value::str("v"));
        assert_eq!(s.get(b"x", 110), Value::Null, "expiry kept");
        assert!(!s.replace(b"x", Value::Int(2), 110));
        assert!(!s.replace(b"y", Value::Int(2), 100));
        s.set(k("x"), Value::Int(1), 200);
        assert!(s.expire_in(b"x", 50, 200));
        assert_eq!(s.expire_left(b"x", 210), Some(40));
        assert!(s.expire_in(b"x", 0, 210));
        assert_eq!(s.get(b"x", 210), Value::Null, "0: gone at once");
        assert!(!s.expire_in(b"x", 5, 210));
    }

    #[test]
    fn matchers_count_and_remove() {
        let mut s = t("a=>size=4");
        for (n, v) in [("u:alice", "1"), ("u:bob", "2"), ("x:carol", "1")] {
            s.set(k(n), Value::str(v.to_string()), 0);
        }
        let m = |e: &str| Matcher::parse_exp(e.as_bytes()).unwrap();
        assert_eq!(s.count_names(&m("~~^u:"), 0), 2);
        // Kamailio's: `~%` is the end of the name, `%~` its start.
        assert_eq!(s.count_names(&m("%~u:"), 0), 2);
        assert_eq!(s.count_names(&m("~%ol"), 0), 1);
        assert_eq!(s.count_names(&m("~%u:"), 0), 0);
        assert_eq!(s.count_names(&m("==u:bob"), 0), 1);
        assert_eq!(s.count_names(&m("**"), 0), 3);
        assert_eq!(s.count_names(&m("bo"), 0), 1);
        // Case-insensitive regular expressions, as Kamailio's REG_ICASE.
        assert_eq!(s.count_names(&m("~~^U:B"), 0), 1);
        // `eq`: integer values only, never a name.
        assert_eq!(s.count_names(&m("eq1"), 0), 0);
        s.set(k("n"), Value::Int(1), 0);
        assert_eq!(s.count_values(&m("eq1"), 0), 1);
        // Integer values match nothing else.
        assert_eq!(s.count_values(&m("==1"), 0), 2);
        assert_eq!(s.count_values(&m("~~1"), 0), 2);
        assert_eq!(s.count_values(&m("**"), 0), 4);
        assert!(s.del(b"n"));
        assert_eq!(s.rm_values(&Matcher::re(b"^1$").unwrap()), 2);
        assert_eq!(s.items(0), vec![(k("u:bob"), Value::str("2"))]);
        assert!(Matcher::re(b"(").is_err());
    }
}
