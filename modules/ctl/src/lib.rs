//! ctl: Kamailio's binrpc control socket, so Kamailio's own `kamcmd` (and
//! anything else speaking binrpc) runs siphon's management commands: the
//! same RPC registry jsonrpcs serves, params by position.
//!
//! Parameters (Kamailio's): `binrpc` (repeatable) — `unix:PATH` or
//! `unixs:PATH` (a unix stream socket), `unixd:PATH` (unix datagrams),
//! `tcp:HOST:PORT`, `udp:HOST:PORT` (no port: 2049; a port alone: every
//! interface); a relative path is in `run_dir`; without any, one unix
//! socket `kamailio_ctl` in `run_dir` (default `/run/siphon`, where
//! jsonrpcs puts its FIFO). `mode` (default 0600), `user`, `group`: the
//! unix socket files' permissions and owner. `binrpc_max_body_size`
//! (KiB): the largest reply body; default 128, what kamcmd reads (Kamailio
//! counts only the top level, default 32). Accepted with no effect:
//! `binrpc_struct_max_body_size`, `binrpc_buffer_size`; `autoconversion`
//! is accepted and always on (siphon's commands convert their params). The
//! FIFO transport (`fifo`) is refused: use jsonrpcs' `fifo_name`.
//! siphon's own: `idle_timeout` (seconds, default 120, Kamailio's): a
//! stream connection that sends nothing for that long is closed.
//!
//! Bounds: a request body of at most [`MAX_REQUEST`] bytes (larger: a 400
//! fault, then the connection is closed), [`MAX_CONNECTIONS`] connections
//! at once (more are closed at accept), a reply that the client does not
//! read within [`WRITE_WAIT`] closes its connection. Input that is not
//! binrpc gets a 400 fault and the connection is closed; an unknown
//! command gets Kamailio's 500 "command X not found" and the connection
//! stays.

pub mod binrpc;
pub mod json;
mod serve;

use siphon_script::api::*;
use siphon_script::rpc::{RpcSpec, StatSource};
use siphon_script::{ModuleDef, ParamSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Kamailio's port for `tcp:`/`udp:` sockets given without one.
pub const DEFAULT_PORT: u16 = 2049;
/// The default socket's file name (in `run_dir`), Kamailio's.
pub const DEFAULT_SOCKET: &str = "kamailio_ctl";
/// The largest request body (Kamailio's stream buffer).
pub const MAX_REQUEST: usize = 65_535;
/// The largest datagram, in and out.
pub const DGRAM_MAX: usize = 65_535;
/// Connections (and datagrams being answered) at once (Kamailio's `MAX_IO_READ_CONNECTIONS`).
pub const MAX_CONNECTIONS: usize = 128;
/// How long a reply may wait for its reader.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);
/// `binrpc_max_body_size`'s default, KiB.
pub const DEFAULT_MAX_BODY_KIB: usize = 128;
/// `idle_timeout`'s default, seconds.
pub const DEFAULT_IDLE_SECS: u64 = 120;

/// One `binrpc` socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `unix:`/`unixs:`: a unix stream socket.
    UnixStream(PathBuf),
    /// `unixd:`: a unix datagram socket.
    UnixDgram(PathBuf),
    /// `tcp:HOST:PORT` (`*` for every interface).
    Tcp(String, u16),
    /// `udp:HOST:PORT`.
    Udp(String, u16),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::UnixStream(p) => write!(f, "unix:{}", p.display()),
            Listen::UnixDgram(p) => write!(f, "unixd:{}", p.display()),
            Listen::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
            Listen::Udp(h, p) => write!(f, "udp:{h}:{p}"),
        }
    }
}

/// Parses a `binrpc` value as Kamailio's ctl does (a bare path is a unix
/// stream socket, a bare `HOST:PORT` UDP); relative paths are in `run_dir`.
pub fn parse_listen(spec: &str, run_dir: &std::path::Path) -> Result<Listen, String> {
    let path = |p: &str| -> Result<PathBuf, String> {
        if p.is_empty() {
            return Err(format!("binrpc `{spec}`: no socket path"));
        }
        let p = PathBuf::from(p);
        Ok(if p.is_absolute() { p } else { run_dir.join(p) })
    };
    let (proto, rest) = match spec.split_once(':') {
        Some((p, rest)) if !p.starts_with('[') => (p.to_ascii_lowercase(), rest),
        _ => (String::new(), spec),
    };
    match proto.as_str() {
        "unix" | "unixs" => return path(rest).map(Listen::UnixStream),
        "unixd" => return path(rest).map(Listen::UnixDgram),
        "fifo" => {
            return Err(format!(
                "binrpc `{spec}`: siphon's ctl has no FIFO transport; use jsonrpcs' fifo_name"
            ));
        }
        "tcp" | "udp" => {}
        "" if !spec.contains('/') && !spec.starts_with('[') => {
            return path(spec).map(Listen::UnixStream);
        }
        "" if spec.contains('/') => return path(spec).map(Listen::UnixStream),
        _ => {}
    }
    let (tcp, rest) = match proto.as_str() {
        "tcp" => (true, rest),
        "udp" => (false, rest),
        // `host:port` without a protocol: UDP, as Kamailio guesses.
        _ => (false, spec),
    };
    let bad = || {
        format!(
            "binrpc `{spec}`: expected unix:PATH, unixd:PATH, tcp:HOST[:PORT] or udp:HOST[:PORT]"
        )
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(bad()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let (host, port) = match port {
        Some(p) => (host, p.parse::<u16>().map_err(|_| bad())?),
        // `tcp:3012` is port 3012 on every interface.
        None => match host.parse::<u16>() {
            Ok(p) => ("*".to_string(), p),
            Err(_) => (host, DEFAULT_PORT),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(if tcp {
        Listen::Tcp(host, port)
    } else {
        Listen::Udp(host, port)
    })
}

/// The module's configuration, from its parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// The sockets to open.
    pub listen: Vec<Listen>,
    /// `mode` of the unix socket files.
    pub mode: u32,
    /// `user`, `group`.
    pub owner: (Option<String>, Option<String>),
    /// `binrpc_max_body_size`, bytes.
    pub max_reply: usize,
    /// `idle_timeout`.
    pub idle: Duration,
}

impl Config {
    /// Reads the parameters.
    pub fn from(cfg: &ModuleConfig) -> Result<Config, String> {
        let run_dir = PathBuf::from(
            cfg.core
                .run_dir
                .clone()
                .unwrap_or_else(|| "/run/siphon".into()),
        );
        if cfg.str("fifo").is_some() {
            return Err("ctl's fifo transport is not supported: use jsonrpcs (fifo_name)".into());
        }
        let mut listen = Vec::new();
        for v in cfg.all("binrpc") {
            let spec = match v {
                ParamValue::Str(s) => s.clone(),
                ParamValue::Int(n) => n.to_string(),
            };
            listen.push(parse_listen(spec.trim(), &run_dir)?);
        }
        if listen.is_empty() {
            listen.push(Listen::UnixStream(run_dir.join(DEFAULT_SOCKET)));
        }
        let positive = |name: &str, default: u64| match cfg.int(name) {
            None => Ok(default),
            Some(n) if n > 0 => Ok(n as u64),
            Some(n) => Err(format!("{name} must be positive, found {n}")),
        };
        Ok(Config {
            listen,
            // Written 0600 in configs, read as the number 600: its digits are octal.
            mode: cfg
                .int("mode")
                .map_or(Ok(0o600), |n| u32::from_str_radix(&n.to_string(), 8))
                .map_err(|_| "mode must be octal digits (0600)".to_string())?,
            owner: (cfg.str("user"), cfg.str("group")),
            max_reply: positive("binrpc_max_body_size", DEFAULT_MAX_BODY_KIB as u64)? as usize
                * 1024,
            idle: Duration::from_secs(positive("idle_timeout", DEFAULT_IDLE_SECS)?),
        })
    }
}

/// What is counted (`stats.get_statistics ctl:`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered (with values or a fault).
    pub requests: AtomicU64,
    /// Faults sent.
    pub faults: AtomicU64,
    /// Input that was not a binrpc request: faulted, connection closed.
    pub bad_packets: AtomicU64,
    /// Connections closed for sending nothing within `idle_timeout`.
    pub idle_closed: AtomicU64,
    /// Connections and datagrams refused over [`MAX_CONNECTIONS`].
    pub refused: AtomicU64,
    /// Replies over `binrpc_max_body_size`, replaced by a fault.
    pub reply_too_large: AtomicU64,
}

impl Counters {
    fn all(&self) -> [(&'static str, &AtomicU64); 6] {
        [
            ("ctl:requests", &self.requests),
            ("ctl:faults", &self.faults),
            ("ctl:bad_packets", &self.bad_packets),
            ("ctl:idle_closed", &self.idle_closed),
            ("ctl:refused", &self.refused),
            ("ctl:reply_too_large", &self.reply_too_large),
        ]
    }
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Stats(Arc<Live>);

impl StatSource for Stats {
    fn snapshot(&self) -> Vec<(String, i64)> {
        let c = &self.0.counters;
        let mut v: Vec<(String, i64)> = c
            .all()
            .iter()
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed) as i64))
            .collect();
        v.push((
            "ctl:connections".into(),
            self.0.conns.lock().map_or(0, |m| m.len()) as i64,
        ));
        v
    }
    fn reset(&self, name: &str) {
        if let Some((_, c)) = self.0.counters.all().iter().find(|(n, _)| *n == name) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A socket as `ctl.listen` and `ctl.who` print it: transport, address, port.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) transport: &'static str,
    pub(crate) name: String,
    pub(crate) port: String,
}

/// What the listeners and the RPC commands share.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) counters: Counters,
    /// The bound sockets, for `ctl.listen`.
    pub(crate) listening: Mutex<Vec<Endpoint>>,
    /// Open stream connections by id: (peer, the socket it came to), for `ctl.who`.
    pub(crate) conns: Mutex<BTreeMap<u64, (Endpoint, Endpoint)>>,
    pub(crate) next_id: AtomicU64,
}

/// The loaded module.
pub struct Ctl {
    cfg: Config,
    live: Arc<Live>,
}

impl Module for Ctl {
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let (l1, l2, l3) = (self.live.clone(), self.live.clone(), self.live.clone());
        vec![
            RpcSpec::new("ctl.listen", "list ctl listen sockets", move |_| {
                let v = l1
                    .listening
                    .lock()
                    .map_or_else(|_| Vec::new(), |l| l.clone());
                Ok(serde_json::Value::Array(
                    v.iter()
                        .flat_map(|e| {
                            ["binrpc", e.transport, &e.name, &e.port].map(serde_json::Value::from)
                        })
                        .collect(),
                ))
            }),
            RpcSpec::new(
                "ctl.connections",
                "returns number of open connections",
                move |_| {
                    Ok(serde_json::Value::from(
                        l2.conns.lock().map_or(0, |m| m.len()),
                    ))
                },
            ),
            RpcSpec::new("ctl.who", "list open connections", move |_| {
                let m = l3
                    .conns
                    .lock()
                    .map_or_else(|_| BTreeMap::new(), |m| m.clone());
                Ok(serde_json::Value::Array(
                    m.values()
                        .flat_map(|(from, to)| {
                            [
                                "binrpc",
                                from.transport,
                                &from.name,
                                &from.port,
                                &to.name,
                                &to.port,
                            ]
                            .map(serde_json::Value::from)
                        })
                        .collect(),
                ))
            }),
        ]
    }

    fn stats(&self) -> Option<Arc<dyn StatSource>> {
        Some(Arc::new(Stats(self.live.clone())))
    }

    fn start(&self, cx: &StartCx) -> Result<(), String> {
        serve::start(
            &self.cfg,
            cx.program.clone(),
            self.live.clone(),
            cx.host.shutdown(),
        )
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The module definition for the registry.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "ctl",
        params: vec![
            ParamSpec::str("binrpc").multi(),
            ParamSpec::int("mode"),
            ParamSpec::int_or_str("user"),
            ParamSpec::int_or_str("group"),
            ParamSpec::int("binrpc_max_body_size"),
            ParamSpec::int("binrpc_struct_max_body_size").no_effect(),
            ParamSpec::int("binrpc_buffer_size").no_effect(),
            ParamSpec::int("autoconversion"),
            ParamSpec::str("fifo"),
            ParamSpec::int("idle_timeout"),
        ],
        instantiate: Arc::new(|cfg| {
            Ok(Arc::new(Ctl {
                cfg: Config::from(cfg)?,
                live: Arc::new(Live::default()),
            }) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sockets_are_parsed_as_kamailio_parses_them() {
        let run = Path::new("/run/siphon");
        let p = |s: &str| parse_listen(s, run);
        assert_eq!(
            p("unix:/tmp/ctl"),
            Ok(Listen::UnixStream("/tmp/ctl".into()))
        );
        assert_eq!(
            p("unixs:/tmp/ctl"),
            Ok(Listen::UnixStream("/tmp/ctl".into()))
        );
        assert_eq!(
            p("unixd:/tmp/ctl"),
            Ok(Listen::UnixDgram("/tmp/ctl".into()))
        );
        assert_eq!(
            p("unix:ctl"),
            Ok(Listen::UnixStream("/run/siphon/ctl".into()))
        );
        assert_eq!(p("/tmp/ctl"), Ok(Listen::UnixStream("/tmp/ctl".into())));
        assert_eq!(
            p("kamailio_ctl"),
            Ok(Listen::UnixStream("/run/siphon/kamailio_ctl".into()))
        );
        assert_eq!(
            p("tcp:127.0.0.1:2046"),
            Ok(Listen::Tcp("127.0.0.1".into(), 2046))
        );
        assert_eq!(
            p("TCP:localhost"),
            Ok(Listen::Tcp("localhost".into(), DEFAULT_PORT))
        );
        assert_eq!(p("tcp:3012"), Ok(Listen::Tcp("*".into(), 3012)));
        assert_eq!(p("tcp:[::1]:2049"), Ok(Listen::Tcp("::1".into(), 2049)));
        assert_eq!(p("udp:[::1]"), Ok(Listen::Udp("::1".into(), DEFAULT_PORT)));
        assert_eq!(
            p("udp:127.0.0.1:2047"),
            Ok(Listen::Udp("127.0.0.1".into(), 2047))
        );
        assert_eq!(
            p("127.0.0.1:2047"),
            Ok(Listen::Udp("127.0.0.1".into(), 2047))
        );
        assert!(
            p("tcp:127.0.0.1:x")
                .unwrap_err()
                .contains("expected unix:PATH")
        );
        assert!(p("fifo:/tmp/f").unwrap_err().contains("jsonrpcs"));
        assert!(p("unix:").is_err());
    }

    fn config(params: &[(&str, ParamValue)]) -> Result<Config, String> {
        let mut cfg = ModuleConfig::default();
        cfg.core.run_dir = Some("/tmp/run".into());
        for (n, v) in params {
            cfg.params.entry(n.to_string()).or_default().push(v.clone());
        }
        Config::from(&cfg)
    }

    #[test]
    fn defaults_and_parameters() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.listen,
            [Listen::UnixStream("/tmp/run/kamailio_ctl".into())]
        );
        assert_eq!(c.mode, 0o600);
        assert_eq!(c.max_reply, 128 * 1024);
        assert_eq!(c.idle, Duration::from_secs(120));
        let c = config(&[
            ("binrpc", ParamValue::Str("unix:/tmp/a".into())),
            ("binrpc", ParamValue::Str("tcp:127.0.0.1:2049".into())),
            ("mode", ParamValue::Int(660)),
            ("binrpc_max_body_size", ParamValue::Int(64)),
            ("idle_timeout", ParamValue::Int(5)),
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.mode, 0o660);
        assert_eq!(c.max_reply, 64 * 1024);
        assert_eq!(c.idle, Duration::from_secs(5));
        assert!(config(&[("mode", ParamValue::Int(999))]).is_err());
        assert!(config(&[("idle_timeout", ParamValue::Int(0))]).is_err());
        assert!(config(&[("fifo", ParamValue::Str("/tmp/f".into()))]).is_err());
    }
}
