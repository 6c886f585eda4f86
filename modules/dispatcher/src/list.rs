//! The list file (Kamailio's `dispatcher.list`): one destination a line,
//! `setid destination [flags [priority [attrs]]]`, and the selection
//! algorithms over a set.

use crate::latency::Latency;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The relative weight in use: `rweight`, or what congestion control
    /// (`cc=1`) made of it from the probes' latency.
    pub rweight_live: AtomicU32,
    /// `cc=1`: congestion control (algorithms 11 and 13 read the latency
    /// above normal instead of the latency).
    pub cc: bool,
    /// `ping_from=`: the From of this destination's probes.
    pub ping_from: String,
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
    /// Kamailio's `message_count`: probes failed in a row (towards
    /// `ds_probing_threshold`), or answered in a row while inactive
    /// (towards `ds_inactive_threshold`).
    pub probe_count: AtomicU32,
    /// The probes' round-trip times (`ds_ping_latency_stats`); `latency=`
    /// starts it.
    pub latency: Mutex<Latency>,
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
    /// The relative weight algorithm 11 uses now.
    pub fn rweight(&self) -> u32 {
        self.rweight_live.load(Ordering::Relaxed)
    }
    /// A copy of its latency statistics.
    pub fn latency(&self) -> Latency {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// The order `ds_is_from_list` searches every set in (indexes into
    /// `sets`): Kamailio keeps the sets in an AVL tree by id, built in the
    /// order they first appear in the file, and walks it children first
    /// (left, right, then the node) — which set a source in several sets
    /// is reported in (`setid_pvname`).
    pub search: Vec<usize>,
}

impl Lists {
    /// The set `id`.
    pub fn set(&self, id: i64) -> Option<&Set> {
        self.sets.iter().find(|s| s.id == id)
    }
    /// Every set, in the order "any set" is searched ([`Lists::search`]).
    pub fn searched(&self) -> impl Iterator<Item = &Set> {
        self.search.iter().map(|&i| &self.sets[i])
    }
}

/// The ids of an AVL tree built by inserting `ids` in order, children
/// first (left subtree, right subtree, node).
pub fn avl_postorder(ids: &[i64]) -> Vec<i64> {
    struct Node {
        id: i64,
        height: i32,
        kids: [Option<Box<Node>>; 2],
    }
    fn height(n: &Option<Box<Node>>) -> i32 {
        n.as_ref().map_or(0, |n| n.height)
    }
    fn fix(n: &mut Node) {
        n.height = 1 + height(&n.kids[0]).max(height(&n.kids[1]));
    }
    /// Rotates `n` so that its child on side `dir` becomes the root.
    fn rotate(mut n: Box<Node>, dir: usize) -> Box<Node> {
        let mut up = n.kids[dir].take().expect("a child to rotate up");
        n.kids[dir] = up.kids[1 - dir].take();
        fix(&mut n);
        up.kids[1 - dir] = Some(n);
        fix(&mut up);
        up
    }
    fn insert(n: Option<Box<Node>>, id: i64) -> Box<Node> {
        let Some(mut n) = n else {
            return Box::new(Node {
                id,
                height: 1,
                kids: [None, None],
            });
        };
        if id == n.id {
            return n;
        }
        let dir = usize::from(id > n.id);
        n.kids[dir] = Some(insert(n.kids[dir].take(), id));
        fix(&mut n);
        if height(&n.kids[dir]) - height(&n.kids[1 - dir]) > 1 {
            let kid = n.kids[dir].as_mut().expect("the taller child");
            if height(&kid.kids[1 - dir]) > height(&kid.kids[dir]) {
                // The inner grandchild is taller: a double rotation.
                let k = n.kids[dir].take().expect("the taller child");
                n.kids[dir] = Some(rotate(k, 1 - dir));
            }
            n = rotate(n, dir);
        }
        n
    }
    fn walk(n: &Option<Box<Node>>, out: &mut Vec<i64>) {
        if let Some(n) = n {
            walk(&n.kids[0], out);
            walk(&n.kids[1], out);
            out.push(n.id);
        }
    }
    let mut root = None;
    for &id in ids {
        root = Some(insert(root, id));
    }
    let mut out = Vec::with_capacity(ids.len());
    walk(&root, &mut out);
    out
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
    let first_seen: Vec<i64> = sets.iter().map(|(id, _)| *id).collect();
    sets.reverse();
    let search = avl_postorder(&first_seen)
        .into_iter()
        .filter_map(|id| sets.iter().position(|(x, _)| *x == id))
        .collect();
    Ok(Lists {
        search,
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
        rweight_live: AtomicU32::new(0),
        cc: false,
        ping_from: String::new(),
        duid: String::new(),
        socket: String::new(),
        maxload: 0,
        addrs: Vec::new(),
        host,
        port,
        proto,
        probe_count: AtomicU32::new(0),
        latency: Mutex::new(Latency::default()),
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
                d.rweight_live.store(w, Ordering::Relaxed);
            }
            "cc" => d.cc = v.trim() == "1",
            "ping_from" => d.ping_from = v.trim().to_string(),
            "latency" => {
                let ms: i32 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("latency `{v}` must be a number (ms)"))?;
                // Kamailio: a starting value counts as a trained estimator.
                d.latency = Mutex::new(Latency::starting_at(ms, 10_000));
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
    let sum: u64 = dests
        .iter()
        .filter(|d| !d.skip())
        .map(|d| u64::from(d.rweight()))
        .sum();
    if sum == 0 {
        return Vec::new();
    }
    let mut counts: Vec<u32> = dests
        .iter()
        .map(|d| {
            if d.skip() {
                0
            } else {
                (u64::from(d.rweight()) * 100 / sum) as u32
            }
        })
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

/// The selection algorithms (Kamailio's numbers).
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
    /// 5: hash over the credentials' user name (round robin without).
    AuthUser,
    /// 6: random.
    Random,
    /// 7: hash over `hash_pvar` expanded.
    HashPv,
    /// 8: the first by priority.
    Priority,
    /// 9: by weight.
    Weight,
    /// 10: the destination with the fewest calls in progress.
    CallLoad,
    /// 11: by relative weight among the active destinations.
    RelWeight,
    /// 12: every destination at once (parallel forking).
    Parallel,
    /// 13: round robin among the highest priorities, lowered by latency.
    Latency,
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
            5 => Alg::AuthUser,
            6 => Alg::Random,
            7 => Alg::HashPv,
            8 => Alg::Priority,
            9 => Alg::Weight,
            10 => Alg::CallLoad,
            11 => Alg::RelWeight,
            12 => Alg::Parallel,
            13 => Alg::Latency,
            _ => return None,
        })
    }
}

/// Where a selection starts, as the caller worked it out from the request.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// A hash or random number: index `key % n`, or the next active one
    /// (algorithms 0-3, 5 with credentials, 6, 7; 8 and 12 start at 0).
    Key(u32),
    /// The set's round-robin turn (4, and 5 without credentials).
    RoundRobin,
    /// The set's weight slots (9).
    Weight,
    /// The relative weight slots among the active destinations (11).
    RelWeight,
    /// The active destination with the fewest calls, among those under
    /// their `maxload` (10); the failover list leaves out the full ones too.
    LeastLoaded(&'a dyn Fn(&Dest) -> u32),
    /// Highest priority lowered by latency, round robin among equals (13).
    Latency,
}

/// What a selection picked.
#[derive(Debug)]
pub struct Selection {
    /// The chosen destination's index in the set.
    pub index: usize,
    /// The chosen destination first, then the ones to fail over to.
    pub dests: Vec<Arc<Dest>>,
    /// The last of `dests` is the set's default destination (`use_default`),
    /// tried last whatever its state, as Kamailio.
    pub default_last: bool,
}

/// Picks from `set`: the chosen destination first, then the others to fail
/// over to (active ones, in the set's order after the chosen, then those
/// before it; by adjusted priority for [`Start::Latency`]), at most `limit`
/// in all (`0`: no limit). `None` when every destination is down (or full).
///
/// `use_default` (Kamailio's `use_default`): the set's last destination is
/// its default: the algorithms choose among the others (a hash or slot
/// modulo their number), the default is chosen only when every other is
/// down, and it ends the failover list, whatever its state.
pub fn select(set: &Set, start: Start<'_>, limit: usize, use_default: bool) -> Option<Selection> {
    let n = set.dests.len();
    if n == 0 {
        return None;
    }
    // The destinations the algorithms choose among: 0..pool.
    let pool = if use_default && n > 1 { n - 1 } else { n };
    let default = (use_default && n > 1).then_some(n - 1);
    let full = |d: &Dest| match start {
        Start::LeastLoaded(load) => d.maxload != 0 && load(d) >= d.maxload,
        _ => false,
    };
    let usable = |i: usize| !set.dests[i].skip() && !full(&set.dests[i]);
    let fallback = || default.filter(|&d| usable(d));
    let first_active = |from: usize| {
        (0..pool)
            .map(|k| (from % pool + k) % pool)
            .find(|&i| !set.dests[i].skip())
            .or_else(fallback)
    };
    let index = match start {
        Start::Key(k) => first_active(k as usize)?,
        Start::RoundRobin => {
            // The next turn goes to the one after the destination chosen
            // (Kamailio 5.6: a skipped one does not give its turn to the next).
            let mut cur = set.last.load(Ordering::Relaxed);
            loop {
                let chosen = first_active(cur)?;
                match set.last.compare_exchange_weak(
                    cur,
                    (chosen + 1) % n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break chosen,
                    Err(now) => cur = now,
                }
            }
        }
        Start::Weight => {
            let slot = if set.wlist.is_empty() {
                0
            } else {
                set.wlist[set.wlast.fetch_add(1, Ordering::Relaxed) % set.wlist.len()]
            };
            first_active(slot)?
        }
        Start::RelWeight => {
            let rw = rweights(&set.dests);
            let slot = if rw.is_empty() {
                0
            } else {
                rw[set.rwlast.fetch_add(1, Ordering::Relaxed) % rw.len()]
            };
            first_active(slot)?
        }
        Start::LeastLoaded(load) => {
            // The first of the least loaded, in the set's order.
            let mut best: Option<(usize, u32)> = None;
            for i in (0..pool).filter(|&i| usable(i)) {
                let l = load(&set.dests[i]);
                if best.is_none_or(|(_, b)| l < b) {
                    best = Some((i, l));
                }
            }
            best.map(|(i, _)| i).or_else(fallback)?
        }
        Start::Latency => return by_latency(set, limit, pool, default),
    };
    let mut dests = vec![set.dests[index].clone()];
    dests.extend(
        (index + 1..pool)
            .chain(0..index.min(pool))
            .filter(|&i| usable(i))
            .map(|i| set.dests[i].clone()),
    );
    Some(with_default(set, index, dests, limit, default))
}

/// The selection of `index` with the failover list `dests` cut to
/// `limit`, then the default destination (when there is one, not chosen,
/// and the limit leaves room).
fn with_default(
    set: &Set,
    index: usize,
    mut dests: Vec<Arc<Dest>>,
    limit: usize,
    default: Option<usize>,
) -> Selection {
    if limit > 0 {
        dests.truncate(limit);
    }
    let default = default.filter(|&d| d != index && (limit == 0 || dests.len() < limit));
    if let Some(d) = default {
        dests.push(set.dests[d].clone());
    }
    Selection {
        index,
        dests,
        default_last: default.is_some(),
    }
}

/// Algorithm 13: from the set's round-robin turn on, each active
/// destination of the first `pool` (all but the default) has its priority
/// lowered by one point per `priority` ms of latency (not below 1), sorted
/// by it (stable: the turn order among equals); the first is chosen and
/// the next turn starts after it. With every one down, the default.
fn by_latency(set: &Set, limit: usize, pool: usize, default: Option<usize>) -> Option<Selection> {
    let n = set.dests.len();
    let from = set.last.load(Ordering::Relaxed) % pool;
    // (index, adjusted priority); an inactive one sorts as priority -1.
    let mut order: Vec<(Option<usize>, i32)> = (0..pool)
        .map(|k| (from + k) % pool)
        .map(|i| {
            let d = &set.dests[i];
            if d.skip() {
                return (None, -1);
            }
            let p = d.priority;
            let latency = d.latency().weighed(d.cc);
            let mut adjusted = p;
            if latency > p && p > 0 {
                adjusted = p - latency / p;
            }
            if adjusted < 1 && p > 0 {
                adjusted = 1;
            }
            (Some(i), adjusted)
        })
        .collect();
    order.sort_by_key(|(_, p)| std::cmp::Reverse(*p));
    let index = match order[0].0 {
        Some(i) => i,
        None => default.filter(|&d| !set.dests[d].skip())?,
    };
    set.last.store((index + 1) % n, Ordering::Relaxed);
    let mut dests: Vec<Arc<Dest>> = order
        .iter()
        .filter_map(|(i, _)| *i)
        .map(|i| set.dests[i].clone())
        .collect();
    if dests.is_empty() {
        dests.push(set.dests[index].clone());
    }
    Some(with_default(set, index, dests, limit, default))
}
