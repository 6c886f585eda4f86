//! The pure counter, Kamailio's pike tree re-done: every call takes `now`
//! (seconds). Per address family, a tree of address prefixes (one byte a
//! level). A request counts on the longest prefix the tree has; a prefix
//! that gets hot (a quarter of the density in the current or the previous
//! unit) grows a child for the next byte, which inherits its hits less one;
//! only a full address counts "leaf hits", and it is blocked (red) once they
//! reach the density in the current or the previous unit. So, as in
//! Kamailio, the first requests of a new source build its branch and do not
//! count towards blocking it (with a density of 10, the 14th request from a
//! new IPv4 source is the first blocked). Each unit the counts shift (the
//! timer task), and a red address that is no longer hot is unblocked; a
//! node idle for `remove_latency` is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;

/// What `pike_check_req` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the density (1).
    Ok,
    /// Blocked (-1).
    Blocked,
    /// Blocked by this request, the first over the density (-2).
    FirstBlocked,
}

impl Verdict {
    /// Kamailio's return code.
    pub fn code(self) -> i32 {
        match self {
            Verdict::Ok => 1,
            Verdict::Blocked => -1,
            Verdict::FirstBlocked => -2,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    hits: [u32; 2],
    leaf_hits: [u32; 2],
    /// The sampling unit `[1]` counts.
    unit: u64,
    red: bool,
    leaf: bool,
    kids: u32,
    /// When it is forgotten; `None`: not in the timer (it has kids).
    expires: Option<u64>,
}

const PREV: usize = 0;
const CURR: usize = 1;

/// One source in `pike.top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The address.
    pub ip: IpAddr,
    /// Leaf hits in the previous unit.
    pub prev: u32,
    /// Leaf hits in the current unit.
    pub curr: u32,
    /// Seconds before it is forgotten.
    pub expires: u64,
    /// "HOT", "WARM" or "".
    pub status: &'static str,
}

/// The trees of every source.
#[derive(Debug)]
pub struct Pike {
    unit: u64,
    limit: u32,
    latency: u64,
    /// Nodes by (IPv6?, prefix bytes).
    nodes: HashMap<(bool, Vec<u8>), Node>,
}

fn bytes(ip: IpAddr) -> (bool, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (false, a.octets().to_vec()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (false, v4.octets().to_vec()),
            None => (true, a.octets().to_vec()),
        },
    }
}

impl Pike {
    /// `sampling_time_unit` seconds, `reqs_density_per_unit`, `remove_latency` seconds.
    pub fn new(unit: u64, limit: u32, latency: u64) -> Self {
        Pike {
            unit: unit.max(1),
            limit: limit.max(1),
            latency,
            nodes: HashMap::new(),
        }
    }

    fn roll(n: &mut Node, unit: u64) {
        if n.unit == unit {
            return;
        }
        let next = n.unit + 1 == unit;
        n.hits = [if next { n.hits[CURR] } else { 0 }, 0];
        n.leaf_hits = [if next { n.leaf_hits[CURR] } else { 0 }, 0];
        n.unit = unit;
    }

    fn hot_leaf(&self, n: &Node) -> bool {
        let l = self.limit;
        n.leaf_hits[PREV] >= l
            || n.leaf_hits[CURR] >= l
            || (n.leaf_hits[PREV] + n.leaf_hits[CURR]) / 2 >= l
    }
    fn hot_prefix(&self, n: &Node) -> bool {
        let l = self.limit >> 2;
        n.hits[PREV] >= l || n.hits[CURR] >= l || (n.hits[PREV] + n.hits[CURR]) / 2 >= l
    }
    fn warm(&self, n: &Node) -> bool {
        n.hits[CURR] >= self.limit >> 2
    }

    /// Counts one request from `ip`.
    pub fn check(&mut self, ip: IpAddr, now: u64) -> Verdict {
        let unit = now / self.unit;
        let (v6, b) = bytes(ip);
        // The longest prefix present (expired nodes the timer has not swept yet still count, as in Kamailio).
        let mut depth = 0;
        while depth < b.len() && self.nodes.contains_key(&(v6, b[..=depth].to_vec())) {
            depth += 1;
        }
        let fresh = now + self.latency;
        if depth == 0 {
            let n = Node {
                hits: [0, 1],
                unit,
                expires: Some(fresh),
                ..Default::default()
            };
            self.nodes.insert((v6, b[..1].to_vec()), n);
            return Verdict::Ok;
        }
        let key = (v6, b[..depth].to_vec());
        let mut n = self.nodes.remove(&key).expect("present");
        Self::roll(&mut n, unit);
        let verdict = if depth == b.len() {
            n.leaf = true;
            n.leaf_hits[CURR] = n.leaf_hits[CURR].saturating_add(1);
            if n.expires.is_some() {
                n.expires = Some(fresh);
            }
            if n.red {
                Verdict::Blocked
            } else if self.hot_leaf(&n) {
                n.red = true;
                Verdict::FirstBlocked
            } else {
                Verdict::Ok
            }
        } else {
            n.hits[CURR] = n.hits[CURR].saturating_add(1);
            if self.hot_prefix(&n) {
                let kid = Node {
                    hits: [0, n.hits[CURR].saturating_sub(1)],
                    leaf_hits: [
                        n.leaf_hits[PREV].saturating_sub(1) * (n.leaf_hits[CURR] >= 1) as u32,
                        0,
                    ],
                    unit,
                    expires: Some(fresh),
                    ..Default::default()
                };
                // A tree leaf that is not an address leaves the timer once it has a kid.
                if n.kids == 0 && !n.leaf {
                    n.expires = None;
                }
                n.kids += 1;
                self.nodes.insert((v6, b[..=depth].to_vec()), kid);
            } else if n.expires.is_some() && self.warm(&n) {
                n.expires = Some(fresh);
            }
            Verdict::Ok
        };
        self.nodes.insert(key, n);
        verdict
    }

    /// The timer: shifts the units, unblocks the addresses no longer hot
    /// and forgets the idle nodes; returns the addresses unblocked.
    pub fn sweep(&mut self, now: u64) -> Vec<IpAddr> {
        let unit = now / self.unit;
        let mut unblocked = Vec::new();
        let limit = self.limit;
        for ((v6, k), n) in self.nodes.iter_mut() {
            Self::roll(n, unit);
            let hot = n.leaf_hits[PREV] >= limit
                || n.leaf_hits[CURR] >= limit
                || (n.leaf_hits[PREV] + n.leaf_hits[CURR]) / 2 >= limit;
            if n.red && !hot {
                n.red = false;
                unblocked.push(addr(*v6, k));
            }
        }
        // Forget expired tree leaves, deepest first; a parent left without kids enters the timer.
        let mut expired: Vec<(bool, Vec<u8>)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kids == 0 && n.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        expired.sort_by_key(|k| std::cmp::Reverse(k.1.len()));
        for k in expired {
            self.nodes.remove(&k);
            if k.1.len() > 1 {
                let pk = (k.0, k.1[..k.1.len() - 1].to_vec());
                if let Some(p) = self.nodes.get_mut(&pk) {
                    p.kids -= 1;
                    if p.kids == 0 && p.expires.is_none() {
                        p.expires = Some(now + self.latency);
                    }
                }
            }
        }
        unblocked
    }

    /// The addresses (`hot_only`: the blocked ones).
    pub fn top(&self, now: u64, hot_only: bool) -> Vec<TopEntry> {
        let unit = now / self.unit;
        let mut v: Vec<TopEntry> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.leaf)
            .map(|((v6, k), n)| {
                let mut n = n.clone();
                Self::roll(&mut n, unit);
                let status = if self.hot_leaf(&n) {
                    "HOT"
                } else if self.warm(&n) {
                    "WARM"
                } else {
                    ""
                };
                TopEntry {
                    ip: addr(*v6, k),
                    prev: n.leaf_hits[PREV],
                    curr: n.leaf_hits[CURR],
                    expires: n.expires.map_or(0, |e| e.saturating_sub(now)),
                    status,
                }
            })
            .filter(|e| !hot_only || e.status == "HOT")
            .collect();
        v.sort_by_key(|e| e.ip);
        v
    }

    /// The density.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

fn addr(v6: bool, k: &[u8]) -> IpAddr {
    if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(k);
        IpAddr::from(a)
    } else {
        let mut a = [0u8; 4];
        a.copy_from_slice(k);
        IpAddr::from(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The codes of `n` requests from `a` at `now`.
    fn run(p: &mut Pike, a: IpAddr, n: usize, now: u64) -> Vec<i32> {
        (0..n).map(|_| p.check(a, now).code()).collect()
    }

    #[test]
    fn the_14th_request_of_a_new_source_is_blocked_at_density_10() {
        // Kamailio 5.6.3 measured: 13 answered, then -2, then -1.
        let mut p = Pike::new(60, 10, 120);
        let a = ip("127.0.0.2");
        let codes = run(&mut p, a, 16, 100);
        assert_eq!(codes[..13], [1; 13]);
        assert_eq!(codes[13..], [-2, -1, -1]);
        // A neighbour's branch grows from the hot /24 at once: its first
        // request builds its leaf, the next 10 count.
        let b = ip("127.0.0.1");
        assert_eq!(run(&mut p, b, 10, 100), [1; 10]);
        assert_eq!(run(&mut p, b, 1, 100), [-2]);
        let top = p.top(100, true);
        assert_eq!(top.iter().map(|e| e.ip).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(top[1].curr, 12);
    }

    #[test]
    fn units_shift_unblock_and_latency_forgets() {
        let mut p = Pike::new(2, 4, 5);
        let a = ip("10.0.0.1");
        // limit>>2 = 1: each prefix splits on its first hit after creation.
        let codes = run(&mut p, a, 9, 10);
        assert_eq!(codes, [1, 1, 1, 1, 1, 1, 1, -2, -1]);
        // The next unit: the previous one still counts.
        assert!(p.sweep(12).is_empty());
        assert_eq!(p.check(a, 12), Verdict::Blocked);
        // Two units later, idle: unblocked by the timer.
        assert_eq!(p.sweep(16), vec![a]);
        assert_eq!(p.check(a, 16), Verdict::Ok);
        // remove_latency after the last request: the whole branch is gone.
        p.sweep(22);
        p.sweep(28);
        p.sweep(34);
        p.sweep(40);
        assert!(p.top(40, false).is_empty());
        assert!(p.nodes.is_empty(), "{:?}", p.nodes);
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let mut p = Pike::new(60, 4, 120);
        let v6 = ip("::1");
        let codes = run(&mut p, v6, 40, 0);
        assert!(codes.contains(&-2), "{codes:?}");
        let m = ip("::ffff:10.1.1.1");
        p.check(m, 0);
        assert!(p.nodes.contains_key(&(false, vec![10])));
    }
}
