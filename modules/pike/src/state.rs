//! The pure counter: hits per source IP in the current and the previous
//! sampling unit, every call taking `now` (seconds), as Kamailio's pike
//! counts them.

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

#[derive(Debug, Clone)]
struct Node {
    prev: u32,
    curr: u32,
    /// The sampling unit `curr` counts.
    unit: u64,
    red: bool,
    /// When it is forgotten (last hit + remove_latency).
    expires: u64,
}

/// One source in `pike.top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The address.
    pub ip: IpAddr,
    /// Hits in the previous unit.
    pub prev: u32,
    /// Hits in the current unit.
    pub curr: u32,
    /// Seconds before it is forgotten.
    pub expires: u64,
    /// Whether it is blocked.
    pub hot: bool,
}

/// The counters of every source.
#[derive(Debug)]
pub struct Pike {
    unit: u64,
    limit: u32,
    latency: u64,
    nodes: HashMap<IpAddr, Node>,
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
        if n.unit + 1 == unit {
            n.prev = n.curr;
        } else {
            n.prev = 0;
        }
        n.curr = 0;
        n.unit = unit;
    }

    fn hot(&self, n: &Node) -> bool {
        n.prev >= self.limit
            || n.curr >= self.limit
            || (n.prev + n.curr) / 2 >= self.limit
    }

    /// Counts one request from `ip`.
    pub fn check(&mut self, ip: IpAddr, now: u64) -> Verdict {
        let unit = now / self.unit;
        let expires = now + self.latency;
        let n = self.nodes.entry(ip).or_insert(Node {
            prev: 0,
            curr: 0,
            unit,
            red: false,
            expires,
        });
        if n.expires <= now {
            *n = Node {
                prev: 0,
                curr: 0,
                unit,
                red: false,
                expires,
            };
        }
        Self::roll(n, unit);
        n.curr = n.curr.saturating_add(1);
        n.expires = expires;
        let n = n.clone();
        let hot = self.hot(&n);
        let was_red = n.red;
        if let Some(m) = self.nodes.get_mut(&ip) {
            m.red = hot;
        }
        match (hot, was_red) {
            (false, _) => Verdict::Ok,
            (true, false) => Verdict::FirstBlocked,
            (true, true) => Verdict::Blocked,
        }
    }

    /// Forgets the sources idle for `remove_latency`; returns the blocked
    /// ones that were forgotten (unblocked).
    pub fn sweep(&mut self, now: u64) -> Vec<IpAddr> {
        let mut gone = Vec::new();
        let unit = now / self.unit;
        self.nodes.retain(|ip, n| {
            if n.expires <= now {
                if n.red {
                    gone.push(*ip);
                }
                false
            } else {
                Self::roll(n, unit);
                true
            }
        });
        let limit = self.limit;
        for n in self.nodes.values_mut() {
            if n.red && !(n.prev >= limit || n.curr >= limit || (n.prev + n.curr) / 2 >= limit) {
                n.red = false;
            }
        }
        gone
    }

    /// The sources (`hot_only`: the blocked ones), busiest first.
    pub fn top(&self, now: u64, hot_only: bool) -> Vec<TopEntry> {
        let unit = now / self.unit;
        let mut v: Vec<TopEntry> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.expires > now)
            .map(|(ip, n)| {
                let mut n = n.clone();
                Self::roll(&mut n, unit);
                TopEntry {
                    ip: *ip,
                    prev: n.prev,
                    curr: n.curr,
                    expires: n.expires - now,
                    hot: n.red && self.hot(&n),
                }
            })
            .filter(|e| !hot_only || e.hot)
            .collect();
        v.sort_by(|a, b| (b.prev + b.curr).cmp(&(a.prev + a.curr)).then(a.ip.cmp(&b.ip)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_over_the_density_per_source() {
        let mut p = Pike::new(2, 5, 10);
        let a = ip("127.0.0.2");
        let b = ip("127.0.0.1");
        for _ in 0..4 {
            assert_eq!(p.check(a, 100), Verdict::Ok);
        }
        assert_eq!(p.check(a, 100), Verdict::FirstBlocked);
        assert_eq!(p.check(a, 101), Verdict::Blocked);
        assert_eq!(p.check(b, 101), Verdict::Ok);
        assert_eq!(p.top(101, true).len(), 1);
        assert_eq!(p.top(101, false).len(), 2);
        // Next unit: the previous one still counts (6 >= 5).
        assert_eq!(p.check(a, 102), Verdict::Blocked);
        // Two units later, idle: both windows are cold again.
        assert_eq!(p.check(a, 106), Verdict::Ok);
    }

    #[test]
    fn latency_forgets_a_blocked_source() {
        let mut p = Pike::new(1, 4, 5);
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            p.check(a, 10);
        }
        for _ in 0..2 {
            assert_eq!(p.check(a, 11), Verdict::Ok);
        }
        assert_eq!(p.check(a, 11), Verdict::Ok);
        assert_eq!(p.check(a, 11), Verdict::FirstBlocked);
        assert_eq!(p.sweep(20), vec![a]);
        assert!(p.top(20, false).is_empty());
    }
}
