//! `sht_iterator_start/next/end/rm/sets/seti/setex` and
//! `$shtitkey`/`$shtitval`: named iterators over a table, at most four at a
//! time (Kamailio's limit, names under 32 characters).
//!
//! An iterator belongs to the route run that started it and ends with it
//! (or with `sht_iterator_end`). It walks the names the table held at
//! `sht_iterator_start`, in Kamailio's order (slot by slot, by hash within
//! a slot), passing over those removed since; values are read and written
//! live. Unlike Kamailio's, it holds no slot lock between calls, so the
//! route may change the table while it iterates.

use bytes::Bytes;

/// How many iterators may be open at once.
pub const MAX_ITERATORS: usize = 4;
/// The longest iterator name.
pub const MAX_NAME: usize = 31;

/// One iterator.
#[derive(Debug)]
pub struct Iter {
    /// Its name.
    pub name: String,
    /// The table's index.
    pub table: usize,
    keys: Vec<Bytes>,
    /// The item it is on (an index in `keys`).
    pos: Option<usize>,
}

impl Iter {
    /// The name of the item it is on.
    pub fn current(&self) -> Option<&Bytes> {
        self.pos.map(|i| &self.keys[i])
    }

    /// Moves to the next name `live` says is still in the table; false at
    /// the end (a next call starts over, as Kamailio's).
    pub fn advance(&mut self, live: impl Fn(&[u8]) -> bool) -> bool {
        let from = self.pos.map_or(0, |i| i + 1);
        self.pos = (from..self.keys.len()).find(|&i| live(&self.keys[i]));
        self.pos.is_some()
    }
}

/// The iterators of a route run.
#[derive(Debug, Default)]
pub struct Iterators {
    its: Vec<Iter>,
}

impl Iterators {
    /// (Re)starts `name` over `keys` of table `table`, already in order.
    pub fn start(&mut self, name: &str, table: usize, keys: Vec<Bytes>) -> Result<(), String> {
        if name.len() > MAX_NAME {
            return Err(format!(
                "iterator name `{name}` is too long (at most {MAX_NAME} characters)"
            ));
        }
        let it = Iter {
            name: name.to_string(),
            table,
            keys,
            pos: None,
        };
        let full = self.its.len() >= MAX_ITERATORS;
        match self.its.iter_mut().find(|i| i.name == name) {
            Some(old) => *old = it,
            None if full => {
                return Err(format!(
                    "no iterator available: at most {MAX_ITERATORS} at once (sht_iterator_end frees one)"
                ));
            }
            None => self.its.push(it),
        }
        Ok(())
    }

    /// The iterator `name`.
    pub fn get(&self, name: &str) -> Option<&Iter> {
        self.its.iter().find(|i| i.name == name)
    }

    /// The iterator `name`, to move it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Iter> {
        self.its.iter_mut().find(|i| i.name == name)
    }

    /// Ends `name`; false when there is none.
    pub fn end(&mut self, name: &str) -> bool {
        let before = self.its.len();
        self.its.retain(|i| i.name != name);
        self.its.len() != before
    }
}

/// Sorts names as Kamailio's iterator meets them in a table of `1 << size`
/// slots: by slot, then by hash (the chain order), then by name.
pub fn kamailio_order(keys: &mut [Bytes], size: u32) {
    keys.sort_by_cached_key(|k| {
        let h = crate::core_hash(k);
        (h & ((1u32 << size) - 1), h, k.clone())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn walks_live_names_and_starts_over_after_the_end() {
        let mut its = Iterators::default();
        its.start("i1", 0, vec![b("a"), b("b"), b("c")]).unwrap();
        let it = its.get_mut("i1").unwrap();
        assert_eq!(it.current(), None);
        let gone = |k: &[u8]| k != b"b";
        assert!(it.advance(gone));
        assert_eq!(it.current(), Some(&b("a")));
        assert!(it.advance(gone));
        assert_eq!(it.current(), Some(&b("c")), "b was removed meanwhile");
        assert!(!it.advance(gone));
        assert_eq!(it.current(), None);
        assert!(it.advance(gone));
        assert_eq!(it.current(), Some(&b("a")));
    }

    #[test]
    fn at_most_four_with_short_names() {
        let mut its = Iterators::default();
        for n in ["a", "b", "c", "d"] {
            its.start(n, 0, vec![]).unwrap();
        }
        assert!(its.start("e", 0, vec![]).unwrap_err().contains("at most 4"));
        // Restarting one by name is no fifth.
        its.start("a", 1, vec![b("x")]).unwrap();
        assert_eq!(its.get("a").unwrap().table, 1);
        assert!(its.end("b"));
        assert!(!its.end("b"));
        its.start("e", 0, vec![]).unwrap();
        assert!(its.start(&"x".repeat(32), 0, vec![]).is_err());
    }

    #[test]
    fn kamailio_slot_order() {
        // Kamailio 5.6.3 dumps "boot" in slot 10 and "i" in slot 4 of 16.
        let mut keys = vec![b("boot"), b("i")];
        kamailio_order(&mut keys, 4);
        assert_eq!(keys, [b("i"), b("boot")]);
    }
}
