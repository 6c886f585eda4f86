//! The management (RPC) command registry: the core and every module register
//! commands under Kamailio's names; the jsonrpcs transports (FIFO, datagram,
//! HTTP), `jsonrpc_exec` and `siphon ctl` all dispatch through it.
//!
//! A command gets its params by position (JSON-RPC names are ignored, as
//! Kamailio's RPC interface does) and answers now or later: a command that
//! waits on I/O returns a future, so no worker ever blocks on it.

use crate::Program;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A command's failure: a JSON-RPC error code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcFailure {
    /// JSON-RPC error code (`-32602` for bad params, `-32000`…`-32099` for command errors).
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcFailure {
    /// Bad params (`-32602`).
    pub fn params(message: impl Into<String>) -> Self {
        RpcFailure {
            code: -32602,
            message: message.into(),
        }
    }
    /// The command failed (`-32000`).
    pub fn failed(message: impl Into<String>) -> Self {
        RpcFailure {
            code: -32000,
            message: message.into(),
        }
    }
}

/// A command's answer.
pub enum RpcReply {
    /// Ready now.
    Now(Result<Value, RpcFailure>),
    /// Ready when the future completes (the transport awaits it; the caller's worker does not block).
    Later(Pin<Box<dyn Future<Output = Result<Value, RpcFailure>> + Send>>),
}

impl From<Result<Value, RpcFailure>> for RpcReply {
    fn from(r: Result<Value, RpcFailure>) -> Self {
        RpcReply::Now(r)
    }
}

/// What a command is called with.
pub struct RpcCall {
    /// The program (modules, statistics, other commands).
    pub program: Arc<Program>,
    /// Params by position.
    pub params: Vec<Value>,
}

impl RpcCall {
    /// Param `i` as a string (numbers are turned into text).
    pub fn str(&self, i: usize) -> Option<String> {
        match self.params.get(i)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    /// Param `i` as an integer (numeric strings accepted).
    pub fn int(&self, i: usize) -> Option<i64> {
        match self.params.get(i)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Runs one command.
pub type RpcHandler = Arc<dyn Fn(RpcCall) -> RpcReply + Send + Sync>;

/// A registered command.
#[derive(Clone)]
pub struct RpcSpec {
    /// The name (`core.version`).
    pub name: &'static str,
    /// One line for `system.methodHelp`.
    pub help: &'static str,
    /// Its handler.
    pub handler: RpcHandler,
    /// Whether it changes the server's state: refused to read-only
    /// management credentials, and logged with its source when run.
    pub changes_state: bool,
}

/// Commands that change state, by name, for modules that do not mark their
/// own with [`RpcSpec::changes_state`]: Kamailio's names, so a command
/// registered later under one of them is marked too.
pub const STATE_CHANGING: &[&str] = &[
    "stats.reset_statistics",
    "stats.clear_statistics",
    "event_subscribe",
    "raise_event",
    "evapi.close",
    "dispatcher.set_state",
    "dispatcher.set_duid_state",
    "dispatcher.reload",
    "dispatcher.add",
    "dispatcher.remove",
    "dispatcher.ping_active",
    "htable.delete",
    "htable.flush",
    "htable.reload",
    "htable.seti",
    "htable.sets",
    "tm.cancel",
    "tm.reply",
    "tm.reply_callid",
    "tm.t_uac_start",
    "tm.t_uac_wait",
    "core.kill",
    "core.shutdown",
    "cfg.set",
    "cfg.set_now_int",
    "cfg.set_now_string",
    "cfg.set_delayed_int",
    "cfg.set_delayed_string",
    "cfg.commit",
    "debug.set_level",
    "corex.debug",
    "jsonrpcc.add_server",
    "jsonrpcc.remove_server",
];

impl RpcSpec {
    /// A command answered synchronously by `f`; it changes state when its
    /// name is in [`STATE_CHANGING`].
    pub fn new<F>(name: &'static str, help: &'static str, f: F) -> Self
    where
        F: Fn(&RpcCall) -> Result<Value, RpcFailure> + Send + Sync + 'static,
    {
        RpcSpec {
            name,
            help,
            handler: Arc::new(move |c| RpcReply::Now(f(&c))),
            changes_state: STATE_CHANGING.contains(&name),
        }
    }
    /// Marks the command as changing the server's state.
    pub fn changes_state(mut self) -> Self {
        self.changes_state = true;
        self
    }
}

impl std::fmt::Debug for RpcSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RpcSpec({})", self.name)
    }
}

/// Calls a command by name; `None` when there is none (`-32601`).
pub fn call(program: &Arc<Program>, method: &str, params: Vec<Value>) -> Option<RpcReply> {
    let spec = program.rpc(method)?;
    Some((spec.handler)(RpcCall {
        program: program.clone(),
        params,
    }))
}

/// Commands of the route engine itself.
pub fn builtin_commands() -> Vec<RpcSpec> {
    vec![
        RpcSpec::new("system.listMethods", "Lists the RPC commands.", |c| Ok(json!(c.program.rpc_names()))),
        RpcSpec::new("system.methodHelp", "Help text of a command: system.methodHelp NAME.", |c| {
            let name = c.str(0).ok_or_else(|| RpcFailure::params("expected a command name"))?;
            c.program.rpc(&name).map(|s| json!(s.help)).ok_or_else(|| RpcFailure::failed(format!("no command `{name}`")))
        }),
        RpcSpec::new("system.methodSignature", "Signature of a command (not tracked: always \"undef\").", |_| Ok(json!("undef"))),
        RpcSpec::new("core.version", "The server's version.", |_| Ok(json!(format!("siphon {}", env!("CARGO_PKG_VERSION"))))),
        RpcSpec::new("core.echo", "Returns its params.", |c| Ok(Value::Array(c.params.clone()))),
        RpcSpec::new("core.uptime", "Start time and seconds running.", |c| {
            let started = c.program.started();
            let up = started.elapsed().map_or(0, |d| d.as_secs());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            Ok(json!({"now": ctime(now), "up_since": ctime(now.saturating_sub(up)), "uptime": up}))
        }),
        RpcSpec::new("core.modules", "The loaded modules.", |c| Ok(json!(c.program.module_names()))),
        RpcSpec::new("core.info", "Version, workers and listen addresses.", |c| {
            let core = &c.program.core;
            let workers = core.children.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            Ok(json!({
                "version": format!("siphon {}", env!("CARGO_PKG_VERSION")),
                "workers": workers,
                "listen": core.listen.iter().map(|l| format!("{:?}:{}:{}", l.proto, l.host, l.port.unwrap_or(5060)).to_lowercase()).collect::<Vec<_>>(),
                "debug": core.debug,
            }))
        }),
        RpcSpec::new("core.ps", "The process's threads (siphon is one process): id and description, one after the other.", |c| {
            Ok(Value::Array(
                ps(&c.program)
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| [p["PID"].clone(), p["DSC"].clone()])
                    .collect(),
            ))
        }),
        RpcSpec::new("core.psx", "The process's threads (siphon is one process).", |c| Ok(ps(&c.program))),
        RpcSpec::new("core.shmmem", "Memory of the process (resident and virtual, bytes).", |_| Ok(memory())),
    ]
    .into_iter()
    .chain(stats_commands())
    .collect()
}

/// `secs` since the epoch as a UTC civil date: (year, month 1-12, day
/// 1-31, seconds into the day), for the dates Kamailio's RPCs write.
pub fn civil_utc(secs: u64) -> (i64, i64, i64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem)
}

/// `secs` since the epoch as C's `ctime` writes them, without its newline
/// (`Tue Dec  1 16:05:02 2026`), in UTC: what Kamailio's `core.uptime` shows.
fn ctime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (year, month, day, rem) = civil_utc(secs);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {day:>2} {:02}:{:02}:{:02} {year}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn ps(program: &Program) -> Value {
    let workers = program
        .core
        .children
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pid = std::process::id();
    let mut v = vec![json!({"IDX": 0, "PID": pid, "DSC": "main process"})];
    for i in 0..workers {
        v.push(json!({"IDX": i + 1, "PID": pid, "DSC": format!("worker thread {}", i + 1)}));
    }
    Value::Array(v)
}

fn memory() -> Value {
    let page = 4096u64;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut it = statm
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let (size, resident) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    json!({"total": size * page, "used": resident * page, "real_used": resident * page, "free": 0})
}

/// Something that has statistics (the core, a module).
pub trait StatSource: Send + Sync {
    /// `(group:name, value)` pairs.
    fn snapshot(&self) -> Vec<(String, i64)>;
    /// Sets counters to zero (`stats.reset_statistics`); gauges keep their value.
    fn reset(&self, name: &str);
}

/// Whether `group:name` is selected by `all`, `group:`, `group:name` or a
/// bare `name` (any group, as Kamailio's `stats.get_statistics rcv_requests`).
fn selected(name: &str, filter: &str) -> bool {
    filter == "all"
        || (filter.ends_with(':') && name.starts_with(filter))
        || name == filter
        || (!filter.contains(':') && name.split_once(':').is_some_and(|(_, n)| n == filter))
}

/// `stats.get_statistics`, `stats.reset_statistics`, `stats.clear_statistics` over every source.
pub fn stats_commands() -> Vec<RpcSpec> {
    let get = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let filters: Vec<String> = (0..c.params.len()).filter_map(|i| c.str(i)).collect();
        if filters.is_empty() {
            return Err(RpcFailure::params(
                "expected `all`, `group:` or `group:name`",
            ));
        }
        let mut out = Vec::new();
        for (name, value) in c.program.stat_snapshot() {
            if filters.iter().any(|f| selected(&name, f)) {
                out.push(json!(format!("{name} = {value}")));
            }
        }
        Ok(Value::Array(out))
    };
    let reset = |c: &RpcCall| -> Result<Value, RpcFailure> {
        let filters: Vec<String> = (0..c.params.len()).filter_map(|i| c.str(i)).collect();
        for (name, _) in c.program.stat_snapshot() {
            if filters.iter().any(|f| selected(&name, f)) {
                for s in c.program.stat_sources() {
                    s.reset(&name);
                }
            }
        }
        Ok(json!("ok"))
    };
    vec![
        RpcSpec::new(
            "stats.get_statistics",
            "Statistics: stats.get_statistics all | group: | group:name | name ...",
            get,
        ),
        RpcSpec::new(
            "stats.fetch",
            "Statistics: stats.fetch all | group: | group:name | name ...",
            get,
        ),
        RpcSpec::new(
            "stats.reset_statistics",
            "Resets counters: stats.reset_statistics all | group: | group:name ...",
            reset,
        ),
        RpcSpec::new(
            "stats.clear_statistics",
            "Returns then resets counters.",
            move |c| {
                let v = get(c)?;
                reset(c)?;
                Ok(v)
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_selected_by_group_full_name_or_bare_name() {
        for (filter, hit) in [
            ("all", true),
            ("core:", true),
            ("core:rcv_requests", true),
            ("rcv_requests", true),
            ("sl:", false),
            ("rcv", false),
            ("requests", false),
        ] {
            assert_eq!(selected("core:rcv_requests", filter), hit, "{filter}");
        }
    }

    #[test]
    fn times_are_written_as_ctime_writes_them() {
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        // What Kamailio's core.uptime printed (TZ UTC) at 1796141102.
        assert_eq!(ctime(1_796_141_102), "Tue Dec  1 16:05:02 2026");
        assert_eq!(ctime(951_782_400), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn known_state_changing_commands_are_marked() {
        let f = |_: &RpcCall| Ok(Value::Null);
        assert!(RpcSpec::new("stats.reset_statistics", "", f).changes_state);
        assert!(!RpcSpec::new("stats.get_statistics", "", f).changes_state);
        assert!(RpcSpec::new("x.y", "", f).changes_state().changes_state);
    }
}
