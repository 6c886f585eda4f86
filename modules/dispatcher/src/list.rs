//! The list file (Kamailio's `dispatcher.list`): one destination a line,
//! `setid destination [flags [priority [attrs]]]`, and the selection
//! algorithms over a set.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The destination is inactive (`I`).
pub const DS_INACTIVE: u32 = 1;
/// The destination was disabled by the operator (`D`).
pub const DS_DISABLED: u32 = 4;
/// The destination is probed (`P`).
pub const DS_PROBING: u32 = 8;
/// The destination is being tried (`T`): still selected.
pub const DS_TRYING: u32 = 2;

/// One destination of a set.
#[derive(Debug)]
pub struct Dest {
    /// The URI as written (`sip:10.0.0.1:5060`).
    pub uri: String,
    /// Its state flags (`DS_INACTIVE` …); changed at run time.
    pub flags: AtomicU32,
    /// The priority (higher first).
    pub priority: i32,
    /// The attributes as written (`weight=50;duid=gw1`).
    pub attrs: String,
    /// `weight=` (0..100).
    pub weight: u32,
    /// `rweight=` (1..100; 0: none), for algorithm 11.
    pub rweight: u32,
    /// `duid=`.
    pub duid: String,
    /// `socket=`.
    pub socket: String,
    /// `maxload=`.
    pub maxload: u32,
    /// The host of the URI.
    pub host: String,
    /// The port of the URI, if written.
    pub port: Option<u16>,
    /// The addresses the host resolved to at load (for `ds_is_from_list`).
    pub addrs: Vec<IpAddr>,
    /// The transport (`transport=` of the URI; `None`: any).
    pub proto: Option<String>,
    /// Probes failed in a row.
    pub fails: AtomicU32,
    /// Probes answered in a row while inactive.
    pub oks: AtomicU32,
}

impl Dest {
    /// Whether selection skips it (inactive or disabled).
    pub fn skip(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & (DS_INACTIVE | DS_DISABLED) != 0
    }
    /// Kamailio's two-letter state (`AP`, `IX`, `DX`, `TP`).
    pub fn state(&self) -> String {
        let f = self.flags.load(Ordering::Relaxed);
        let a = if f & DS_DISABLED != 0 {
            'D'
        } else if f & DS_INACTIVE != 0 {
            'I'
        } else if f & DS_TRYING != 0 {
            'T'
        } else {
            'A'
        };
        let p = if f & DS_PROBING != 0 { 'P' } else { 'X' };
        format!("{a}{p}")
    }
    /// The port to compare with a source port (5061 for sips, else 5060).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.uri.starts_with("sips:") {
            5061
        } else {
            5060
        })
    }
}

/// One set: its destinations sorted by priority (highest first) and the
/// round-robin and weight counters.
#[derive(Debug)]
pub struct Set {
    /// The set id.
    pub id: i64,
    /// Destinations, highest priority first (reverse file order among equals).
    pub dests: Vec<Arc<Dest>>,
    /// The next round-robin index.
    pub last: AtomicUsize,
    /// The next weight slot.
    pub wlast: AtomicUsize,
    /// The next relative-weight slot.
    pub rwlast: AtomicUsize,
    /// 100 slots of destination indexes by weight (Kamailio's `wlist`).
    pub wlist: Vec<usize>,
}

/// All sets, as loaded from the file.
#[derive(Debug, Default)]
pub struct Lists {
    /// Sets, the last to appear in the file first (Kamailio's order).
    pub sets: Vec<Set>,
}

impl Lists {
    /// The set `id`.
    pub fn set(&self, id: i64) -> Option<&Set> {
        self.sets.iter().find(|s| s.id == id)
    }
}

/// Parses the list file text; errors name the line.
pub fn parse(text: &str, file: &str) -> Result<Lists, String> {
    let mut sets: Vec<(i64, Vec<Dest>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{file}:{}", n + 1);
        let mut f = line.split_whitespace();
        let set: i64 = f
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{}: the set id must be a number", at()))?;
        let uri = f
            .next()
            .ok_or_else(|| format!("{}: a destination URI is missing", at()))?;
        let flags: u32 = match f.next() {
            Some(s) => s
                .parse()
                .map_err(|_| format!("{}: flags `{s}` must be a number", at()))?,
            None => 0,
        };
        let priority: i32 = match f.next() {
            Some(s) => s
                .parse()
                .map_err(|_| format!("{}: priority `{s}` must be a number", at()))?,
            None => 0,
        };
        let attrs: String = f.collect::<Vec<_>>().join(" ");
        let d = dest(uri, flags, priority, &attrs).map_err(|e| format!("{}: {e}", at()))?;
        match sets.iter_mut().find(|(id, _)| *id == set) {
            Some((_, v)) => v.push(d),
            None => sets.push((set, vec![d])),
        }
    }
    sets.reverse();
    Ok(Lists {
        sets: sets
            .into_iter()
            .map(|(id, mut v)| {
                // Kamailio's order: equal priorities the last line first
                // (its list is built by prepending), higher priorities first.
                v.reverse();
                v.sort_by_key(|d| std::cmp::Reverse(d.priority));
                let wlist = weights(&v);
                Set {
                    id,
                    dests: v.into_iter().map(Arc::new).collect(),
                    last: AtomicUsize::new(0),
                    wlast: AtomicUsize::new(0),
                    rwlast: AtomicUsize::new(0),
                    wlist,
                }
            })
            .collect(),
    })
}

/// One destination.
pub fn dest(uri: &str, flags: u32, priority: i32, attrs: &str) -> Result<Dest, String> {
    let u = siphon_sip::parse_uri(uri.as_bytes())
        .map_err(|e| format!("`{uri}` is no SIP URI ({e})"))?;
    if u.host.is_empty() {
        return Err(format!("`{uri}` has no host"));
    }
    let host = String::from_utf8_lossy(u.host).into_owned();
    let port = u.port;
    let proto = String::from_utf8_lossy(u.params).split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("transport")
            .then(|| v.trim().to_ascii_lowercase())
    });
    let mut d = Dest {
        uri: uri.to_string(),
        flags: AtomicU32::new(flags & (DS_INACTIVE | DS_DISABLED | DS_PROBING | DS_TRYING)),
        priority,
        attrs: attrs.to_string(),
        weight: 0,
        rweight: 0,
        duid: String::new(),
        socket: String::new(),
        maxload: 0,
        addrs: Vec::new(),
        host,
        port,
        proto,
        fails: AtomicU32::new(0),
        oks: AtomicU32::new(0),
    };
    for a in attrs.split(';').map(str::trim).filter(|a| !a.is_empty()) {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "weight" => {
                d.weight = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("weight `{v}` must be a number"))?;
            }
            "rweight" => {
                let w: u32 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("rweight `{v}` must be a number"))?;
                if !(1..=100).contains(&w) {
                    return Err(format!("rweight must be 1..100, not {w}"));
                }
                d.rweight = w;
            }
            "duid" => d.duid = v.trim().to_string(),
            "socket" => {
                d.socket = v.trim().to_string();
                tracing::warn!(target: "dispatcher", "{uri}: socket={} is shown by dispatcher.list but has no effect: siphon chooses the sending socket", d.socket);
            }
            "maxload" => {
                d.maxload = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("maxload `{v}` must be a number"))?;
                tracing::warn!(target: "dispatcher", "{uri}: maxload= has no effect (algorithm 10, call load, is not implemented)");
            }
            // Other keys (ping_from, obproxy, …) are kept as text only
            // (`dispatcher.list` shows them in BODY).
            _ => {}
        }
    }
    d.addrs = match d.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (d.host.as_str(), d.port_or_default())
            .to_socket_addrs()
            .map(|it| it.map(|a: SocketAddr| a.ip()).collect())
            .unwrap_or_default(),
    };
    Ok(d)
}

/// Kamailio's weight list: each destination gets `weight` of 100 slots (in
/// order); slots left over go to the last destination; no weights at all:
/// none (algorithm 9 then falls back to the first destination). Kamailio
/// shuffles the slots at random; siphon interleaves them deterministically
/// (the same split, reproducible).
pub fn weights(dests: &[Dest]) -> Vec<usize> {
    if dests.is_empty() || dests.iter().all(|d| d.weight == 0) {
        return Vec::new();
    }
    let mut counts: Vec<u32> = Vec::new();
    let mut total = 0u32;
    for d in dests {
        let w = d.weight.min(100 - total);
        counts.push(w);
        total += w;
    }
    if let Some(last) = counts.last_mut() {
        *last += 100 - total;
    }
    interleave(&counts)
}

/// Kamailio's relative weights (algorithm 11): among the active
/// destinations, `rweight * 100 / sum` slots each (truncated), the rest to
/// the last one given slots. Empty when no active one has an `rweight`.
pub fn rweights(dests: &[Arc<Dest>]) -> Vec<usize> {
    let sum: u32 = dests.iter().filter(|d| !d.skip()).map(|d| d.rweight).sum();
    if sum == 0 {
        return Vec::new();
    }
    let mut counts: Vec<u32> = dests
        .iter()
        .map(|d| if d.skip() { 0 } else { d.rweight * 100 / sum })
        .collect();
    let total: u32 = counts.iter().sum();
    let last = counts
        .iter()
        .rposition(|c| *c > 0)
        .unwrap_or(dests.len() - 1);
    counts[last] += 100 - total;
    interleave(&counts)
}

/// 100 slots, destination `i` in `counts[i]` of them (the counts sum to
/// 100), spread evenly: slot k goes to the destination most behind its share.
fn interleave(counts: &[u32]) -> Vec<usize> {
    let mut given = vec![0u32; counts.len()];
    let mut out = Vec::with_capacity(100);
    for k in 1..=100u32 {
        let Some((i, _)) = counts
            .iter()
            .enumerate()
            .filter(|(i, c)| given[*i] < **c)
            .map(|(i, c)| (i, i64::from(*c) * i64::from(k) - 100 * i64::from(given[i])))
            .max_by_key(|(i, deficit)| (*deficit, std::cmp::Reverse(*i)))
        else {
            break;
        };
        given[i] += 1;
        out.push(i);
    }
    out
}

/// Kamailio's `ds_get_hash`.
pub fn ds_hash(x: Option<&[u8]>, y: Option<&[u8]>) -> u32 {
    if x.is_none() && y.is_none() {
        return 0;
    }
    let mut h: u32 = 0;
    for s in [x, y].into_iter().flatten() {
        let mut chunks = s.chunks_exact(4);
        for c in &mut chunks {
            let v = (sc(c[0]) << 24)
                .wrapping_add(sc(c[1]) << 16)
                .wrapping_add(sc(c[2]) << 8)
                .wrapping_add(sc(c[3]));
            h = h.wrapping_add(v ^ (v >> 3));
        }
        let mut v: u32 = 0;
        for &b in chunks.remainder() {
            v = (v << 8).wrapping_add(sc(b));
        }
        h = h.wrapping_add(v ^ (v >> 3));
    }
    h = h
        .wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23));
    if h == 0 { 1 } else { h }
}

/// A C `char` (signed) widened as Kamailio's hash does.
fn sc(b: u8) -> u32 {
    b as i8 as i32 as u32
}

/// The selection algorithms siphon implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// 0: hash over the Call-ID.
    CallId,
    /// 1: hash over the From URI.
    From,
    /// 2: hash over the To URI.
    To,
    /// 3: hash over the R-URI.
    Ruri,
    /// 4: round robin.
    RoundRobin,
    /// 8: the first by priority.
    Priority,
    /// 9: by weight.
    Weight,
    /// 11: by relative weight among the active destinations.
    RelWeight,
}

impl Alg {
    /// The algorithm with Kamailio's number.
    pub fn from_num(n: i64) -> Option<Alg> {
        Some(match n {
            0 => Alg::CallId,
            1 => Alg::From,
            2 => Alg::To,
            3 => Alg::Ruri,
            4 => Alg::RoundRobin,
            8 => Alg::Priority,
            9 => Alg::Weight,
            11 => Alg::RelWeight,
            _ => return None,
        })
    }
}

/// Picks from `set`: the chosen destination first, then the others to fail
/// over to (active ones, in the set's order after the chosen), at most
/// `limit` in all (`0`: no limit). `hash` is the key's hash for the hash
/// algorithms. Empty when every destination is down.
pub fn select(set: &Set, alg: Alg, hash: u32, limit: usize) -> Vec<Arc<Dest>> {
    let n = set.dests.len();
    if n == 0 {
        return Vec::new();
    }
    let start = match alg {
        Alg::CallId | Alg::From | Alg::To | Alg::Ruri => hash as usize % n,
        Alg::RoundRobin => {
            // The next turn goes to the one after the destination chosen
            // (Kamailio 5.6: a skipped one does not give its turn to the next).
            let mut cur = set.last.load(Ordering::Relaxed);
            loop {
                let start = cur % n;
                let chosen = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| !set.dests[i].skip())
                    .unwrap_or(start);
                match set.last.compare_exchange_weak(
                    cur,
                    (chosen + 1) % n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break start,
                    Err(now) => cur = now,
                }
            }
        }
        Alg::Priority => 0,
        Alg::RelWeight => {
            let rw = rweights(&set.dests);
            if rw.is_empty() {
                0
            } else {
                rw[set.rwlast.fetch_add(1, Ordering::Relaxed) % rw.len()]
            }
        }
        Alg::Weight => {
            if set.wlist.is_empty() {
                0
            } else {
                set.wlist[set.wlast.fetch_add(1, Ordering::Relaxed) % set.wlist.len()]
            }
        }
    };
    // A skipped destination passes to the next active one.
    let mut out: Vec<Arc<Dest>> = (0..n)
        .map(|k| &set.dests[(start + k) % n])
        .filter(|d| !d.skip())
        .cloned()
        .collect();
    if limit > 0 {
        out.truncate(limit);
    }
    out
}
