//! Core parameters (`name = value` lines), core script functions (xlog, flags)
//! and the modules whose functions siphon keeps in its core.

use crate::api::*;
use crate::interp::Exec;
use siphon_cfg::ast::GlobalValue;
use siphon_cfg::diag::did_you_mean;
use siphon_cfg::{Diagnostic, Span, Spanned};
use std::net::SocketAddr;
use std::sync::Arc;

/// Transport of a listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// Not given: UDP and TCP.
    Any,
}

/// One `listen=` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// Transport.
    pub proto: Proto,
    /// Address or name; IPv6 without brackets.
    pub host: String,
    /// Port; `None` means 5060 (5061 for TLS). 0 asks the system for a free port.
    pub port: Option<u16>,
    /// `advertise host:port`, if given.
    pub advertise: Option<String>,
}

impl ListenSpec {
    /// Parses `[proto:]host[:port] [advertise host[:port]]`.
    pub fn parse(s: &str) -> Result<ListenSpec, String> {
        let mut words = s.split_whitespace();
        let addr = words
            .next()
            .ok_or("expected an address such as udp:127.0.0.1:5060")?;
        let mut advertise = None;
        while let Some(w) = words.next() {
            match w {
                "advertise" | "ADVERTISE" => {
                    advertise = Some(
                        words
                            .next()
                            .ok_or("expected host:port after `advertise`")?
                            .to_string(),
                    )
                }
                "name" | "NAME" => {
                    words.next();
                }
                other => {
                    return Err(format!(
                        "unexpected `{other}` after the address (expected `advertise host:port`)"
                    ));
                }
            }
        }
        let (proto, rest) = match addr.split_once(':') {
            Some((p, rest)) if ["udp", "tcp", "tls", "UDP", "TCP", "TLS"].contains(&p) => {
                let proto = match p.to_ascii_lowercase().as_str() {
                    "udp" => Proto::Udp,
                    "tcp" => Proto::Tcp,
                    _ => Proto::Tls,
                };
                (proto, rest)
            }
            Some((p, _)) if ["sctp", "ws", "wss", "SCTP", "WS", "WSS"].contains(&p) => {
                return Err(format!(
                    "transport `{p}` is not supported by siphon (udp, tcp, tls are)"
                ));
            }
            _ => (Proto::Any, addr),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("expected `]` after an IPv6 address")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                Some(_) => return Err("write IPv6 addresses in brackets: tcp:[::1]:5060".into()),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("expected a host before the port".into());
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number (0-65535)"))?,
            ),
        };
        Ok(ListenSpec {
            proto,
            host,
            port,
            advertise,
        })
    }
}

/// Core parameters that take effect in siphon.
#[derive(Debug, Clone)]
pub struct CoreParams {
    /// `listen=` addresses (and `-l` from the command line).
    pub listen: Vec<ListenSpec>,
    /// Worker threads (`children`; default: the number of cores).
    pub children: Option<usize>,
    /// `tcp_children` (siphon serves TCP on the same workers; kept for `core.info`).
    pub tcp_children: Option<usize>,
    /// Log level, Kamailio's scale: -5 (alert) … 3 (debug). Default 2 (info).
    pub debug: i32,
    /// `log_stderror`: siphon always logs to stderr; kept for `core.info`.
    pub log_stderror: bool,
    /// `log_prefix`: a format string put before every xlog message.
    pub log_prefix: Option<String>,
    pub(crate) log_prefix_span: Span,
    /// `fork`: siphon never forks; kept for `core.info`.
    pub fork: bool,
    /// Iterations after which a `while` loop is stopped (default 100).
    pub max_while_loops: u64,
    /// Accept TCP (HTTP) messages without Content-Length.
    pub tcp_accept_no_cl: bool,
    /// `mpath`: accepted; modules are built in.
    pub mpath: Option<String>,
    /// `run_dir`/`rundir`: where relative FIFO and socket paths go.
    pub run_dir: Option<String>,
    /// `tcp_max_connections`: TCP connections open at once (default 2048); more are closed at accept.
    pub tcp_max_connections: usize,
    /// `tcp_connection_lifetime` (seconds, default 120): a TCP/TLS connection
    /// with no bytes read or written for this long is closed; 0: never.
    pub tcp_connection_lifetime: u64,
    /// `tcp_msg_read_timeout` (seconds, default 20): a message whose first byte
    /// arrived must be whole within this; else the connection is closed. 0: no limit.
    pub tcp_msg_read_timeout: u64,
    /// `tcp_max_connections_per_ip` (siphon's own; default 0, unlimited): TCP
    /// connections open at once from one source address.
    pub tcp_max_connections_per_ip: usize,
    /// `tcp_connect_timeout` (seconds, default 10, Kamailio's): a TCP
    /// connection siphon opens (and its TLS handshake) must be up within this,
    /// else what was queued on it fails.
    pub tcp_connect_timeout: u64,
    /// `tcp_send_timeout` (seconds, default 10, Kamailio's): a connection
    /// that takes longer to accept one message's bytes is closed. 0: no limit.
    pub tcp_send_timeout: u64,
    /// `dns_server` (siphon's own): DNS servers asked instead of those in
    /// `/etc/resolv.conf`, in order; empty: the system's.
    pub dns_server: Vec<SocketAddr>,
    /// `dns_try_ipv6` (default on, as Kamailio): AAAA records are used after A.
    pub dns_try_ipv6: bool,
    /// `use_dns_failover` (default off): a branch that fails tries the next
    /// address the destination resolved to.
    pub use_dns_failover: bool,
    /// `dns_srv_lb` (default off): SRV records of one priority in RFC 2782
    /// weighted random order instead of by weight, heaviest first.
    pub dns_srv_lb: bool,
    /// Parameters accepted without effect (warned about once each).
    pub(crate) ignored: Vec<(String, Span)>,
}

impl Default for CoreParams {
    fn default() -> Self {
        CoreParams {
            listen: vec![],
            children: None,
            tcp_children: None,
            debug: 2,
            log_stderror: true,
            log_prefix: None,
            log_prefix_span: Span::default(),
            fork: true,
            max_while_loops: 100,
            tcp_accept_no_cl: false,
            mpath: None,
            run_dir: None,
            tcp_max_connections: 2048,
            tcp_connection_lifetime: 120,
            tcp_msg_read_timeout: 20,
            tcp_max_connections_per_ip: 0,
            tcp_connect_timeout: 10,
            tcp_send_timeout: 10,
            dns_server: vec![],
            dns_try_ipv6: true,
            use_dns_failover: false,
            dns_srv_lb: false,
            ignored: vec![],
        }
    }
}

/// Core parameters siphon uses.
pub const EFFECTIVE_GLOBALS: &[&str] = &[
    "listen",
    "socket",
    "children",
    "udp_workers",
    "tcp_children",
    "tcp_workers",
    "debug",
    "log_level",
    "log_stderror",
    "log_prefix",
    "fork",
    "max_while_loops",
    "tcp_accept_no_cl",
    "mpath",
    "run_dir",
    "rundir",
    "tcp_max_connections",
    "tcp_connection_lifetime",
    "tcp_msg_read_timeout",
    "tcp_max_connections_per_ip",
    "tcp_connect_timeout",
    "tcp_send_timeout",
    "dns_server",
    "dns_try_ipv6",
    "use_dns_failover",
    "dns_srv_lb",
];

/// Kamailio/OpenSIPS core parameters that mean nothing in siphon: accepted with a warning.
pub const IGNORED_GLOBALS: &[&str] = &[
    "memdbg",
    "memlog",
    "mem_join",
    "mem_safety",
    "dns",
    "rev_dns",
    "use_dns_cache",
    "dns_cache_init",
    "dst_blocklist_init",
    "auto_aliases",
    "http_reply_parse",
    "mhomed",
    "tls_max_connections",
    "enable_tls",
    "enable_sctp",
    "tcp_keepalive",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_keepcnt",
    "sip_warning",
    "server_header",
    "server_signature",
    "user_agent_header",
    "alias",
    "port",
    "disable_tcp",
    "log_facility",
    "log_name",
    "corelog",
    "maxbuffer",
    "pv_buffer_size",
    "pv_buffer_slots",
    "tcp_async",
    "tcp_rd_buf_size",
    "tcp_conn_wq_max",
    "tcp_wq_max",
    "latency_log",
    "latency_limit_action",
    "latency_limit_db",
    "open_files_limit",
    "async_workers",
    "force_rport",
    "max_recursive_level",
    "stderror_enabled",
    "syslog_enabled",
    "log_color",
    "shm_force_alloc",
    "real_time",
    "rt_prio",
    "tcp_crlf_ping",
    "tcp_reuse_port",
    "udp_mtu",
    "reply_to_via",
    "check_via",
    "dns_retr_time",
    "dns_retr_no",
    "dns_servers_no",
    "dns_use_search_list",
];

fn truthy(v: &GlobalValue) -> Option<bool> {
    match v {
        GlobalValue::Int(n) => Some(*n != 0),
        GlobalValue::Str(s) | GlobalValue::Word(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" | "enable" | "1" => Some(true),
            "no" | "off" | "false" | "disable" | "0" => Some(false),
            _ => None,
        },
    }
}

impl CoreParams {
    /// Applies one `name = value` line.
    pub fn apply(
        &mut self,
        name: &Spanned<String>,
        value: &Spanned<GlobalValue>,
    ) -> Result<(), Diagnostic> {
        let n = name.node.as_str();
        let v = &value.node;
        let vspan = value.span;
        let int = |what: &str| -> Result<i64, Diagnostic> {
            match v {
                GlobalValue::Int(i) => Ok(*i),
                GlobalValue::Str(s) | GlobalValue::Word(s) => s.trim().parse().map_err(|_| {
                    Diagnostic::error(vspan, format!("`{n}` takes {what}, found `{s}`"))
                }),
            }
        };
        let boolean =
            || truthy(v).ok_or_else(|| Diagnostic::error(vspan, format!("`{n}` takes yes or no")));
        let text = || match v {
            GlobalValue::Int(i) => i.to_string(),
            GlobalValue::Str(s) | GlobalValue::Word(s) => s.clone(),
        };
        let positive = |x: i64| -> Result<usize, Diagnostic> {
            if (1..=1024).contains(&x) {
                Ok(x as usize)
            } else {
                Err(Diagnostic::error(
                    vspan,
                    format!("`{n}` must be between 1 and 1024, found {x}"),
                ))
            }
        };
        match n {
            "listen" | "socket" => {
                let spec = ListenSpec::parse(&text())
                    .map_err(|e| Diagnostic::error(vspan, format!("bad listen address: {e}")))?;
                self.listen.push(spec);
            }
            "children" | "udp_workers" => {
                self.children = Some(positive(int("a number of workers")?)?)
            }
            "tcp_children" | "tcp_workers" => {
                self.tcp_children = Some(positive(int("a number of workers")?)?)
            }
            "debug" | "log_level" => {
                let d = int("a log level from -5 to 3")?;
                if !(-5..=4).contains(&d) {
                    return Err(Diagnostic::error(
                        vspan,
                        format!("`{n}` takes a log level from -5 to 3, found {d}"),
                    ));
                }
                self.debug = d as i32;
            }
            "log_stderror" => self.log_stderror = boolean()?,
            "fork" => self.fork = boolean()?,
            "tcp_accept_no_cl" => self.tcp_accept_no_cl = boolean()?,
            "log_prefix" => {
                self.log_prefix = Some(text());
                self.log_prefix_span = vspan;
            }
            "max_while_loops" => {
                let m = int("a number of iterations")?;
                if m < 0 {
                    return Err(Diagnostic::error(
                        vspan,
                        "`max_while_loops` cannot be negative",
                    ));
                }
                self.max_while_loops = m as u64;
            }
            "mpath" => self.mpath = Some(text()),
            "run_dir" | "rundir" => self.run_dir = Some(text()),
            "tcp_max_connections" => {
                let m = int("a number of connections")?;
                if m < 1 {
                    return Err(Diagnostic::error(
                        vspan,
                        "`tcp_max_connections` must be at least 1",
                    ));
                }
                self.tcp_max_connections = m as usize;
            }
            "tcp_connect_timeout" => {
                let m = int("a number of seconds")?;
                if m < 1 {
                    return Err(Diagnostic::error(
                        vspan,
                        "`tcp_connect_timeout` must be at least 1 (seconds)",
                    ));
                }
                self.tcp_connect_timeout = m as u64;
            }
            "tcp_connection_lifetime"
            | "tcp_msg_read_timeout"
            | "tcp_max_connections_per_ip"
            | "tcp_send_timeout" => {
                let m = int("a number (0: no limit)")?;
                if m < 0 {
                    return Err(Diagnostic::error(
                        vspan,
                        format!("`{n}` cannot be negative (0: no limit)"),
                    ));
                }
                match n {
                    "tcp_connection_lifetime" => self.tcp_connection_lifetime = m as u64,
                    "tcp_msg_read_timeout" => self.tcp_msg_read_timeout = m as u64,
                    "tcp_send_timeout" => self.tcp_send_timeout = m as u64,
                    _ => self.tcp_max_connections_per_ip = m as usize,
                }
            }
            "dns_server" => {
                self.dns_server = parse_dns_servers(&text())
                    .map_err(|e| Diagnostic::error(vspan, format!("bad `dns_server`: {e}")))?;
            }
            "dns_try_ipv6" => self.dns_try_ipv6 = boolean()?,
            "use_dns_failover" => self.use_dns_failover = boolean()?,
            "dns_srv_lb" => self.dns_srv_lb = boolean()?,
            _ if IGNORED_GLOBALS.contains(&n) => self.ignored.push((n.to_string(), name.span)),
            _ => {
                let mut d = Diagnostic::error(name.span, format!("unknown core parameter `{n}`"));
                if let Some(s) =
                    did_you_mean(n, EFFECTIVE_GLOBALS.iter().chain(IGNORED_GLOBALS).copied())
                {
                    d = d.help(format!("did you mean `{s}`?"));
                }
                return Err(d);
            }
        }
        Ok(())
    }
}

/// `dns_server`: `ip[:port]` or `[ipv6]:port`, comma-separated; port 53 by default.
fn parse_dns_servers(v: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = vec![];
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = if let Ok(a) = item.parse::<SocketAddr>() {
            a
        } else if let Ok(ip) = item.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            SocketAddr::new(ip, 53)
        } else {
            return Err(format!(
                "`{item}` is not an IP address with an optional port"
            ));
        };
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no server given".into());
    }
    Ok(out)
}

// ---------- logging ----------

/// Kamailio log levels by name.
pub const LOG_LEVELS: &[(&str, i32)] = &[
    ("L_ALERT", -5),
    ("L_BUG", -4),
    ("L_CRIT2", -3),
    ("L_CRIT", -2),
    ("L_ERR", -1),
    ("L_WARN", 0),
    ("L_NOTICE", 1),
    ("L_INFO", 2),
    ("L_DBG", 3),
];

fn level_of(s: &str) -> Option<i32> {
    LOG_LEVELS
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, l)| *l)
        .or_else(|| s.trim().parse().ok())
}

/// Writes a script log line at a Kamailio level.
pub fn emit(level: i32, msg: &str) {
    let msg = msg.strip_suffix('\n').unwrap_or(msg);
    match level {
        l if l <= -1 => tracing::error!(target: "script", "{msg}"),
        0 => tracing::warn!(target: "script", "{msg}"),
        1 | 2 => tracing::info!(target: "script", "{msg}"),
        _ => tracing::debug!(target: "script", "{msg}"),
    }
}

fn log_line(ex: &mut Exec<'_>, level: i32, body: &[u8]) {
    let mut line = match ex.prog.log_prefix.as_ref() {
        Some(p) => {
            let p = ex.fmt(p);
            String::from_utf8_lossy(&p).into_owned()
        }
        None => String::new(),
    };
    line.push_str(&String::from_utf8_lossy(body));
    emit(level, &line);
}

struct XlogCall {
    /// Fixed level, or the argument holding it.
    level: Result<i32, ()>,
    args: Args,
}

impl Call for XlogCall {
    fn call(&self, ex: &mut Exec<'_>) -> FnResult {
        let (level, msg_idx) = match (self.level, self.args.len()) {
            (Ok(l), 1) => (l, 0),
            (Ok(l), _) => (l, 1),
            (Err(()), _) => {
                let t = self.args.text(0, ex);
                (level_of(&t).unwrap_or(-1), 1)
            }
        };
        let body = self.args.bytes(msg_idx, ex);
        log_line(ex, level, &body);
        1.into()
    }
}

fn xlog_spec(name: &'static str, fixed: Option<i32>) -> FunctionSpec {
    let params: &[ArgKind] = if fixed.is_some() {
        &[ArgKind::Str]
    } else {
        &[ArgKind::Str, ArgKind::Str]
    };
    let bind: Bind = Arc::new(move |args: Args| {
        let level = match (fixed, args.len()) {
            (Some(l), _) => Ok(l),
            (None, 1) => Ok(-1),
            (None, _) => match args.const_value(0) {
                Some(v) => {
                    let t = v.to_text();
                    Ok(level_of(&t).ok_or_else(|| {
                        format!("unknown log level `{t}` (expected L_ALERT … L_DBG)")
                    })?)
                }
                None => Err(()),
            },
        };
        Ok(Box::new(XlogCall { level, args }) as Box<dyn Call>)
    });
    let spec = FunctionSpec::with_bind(name, params, bind);
    if fixed.is_some() {
        spec
    } else {
        spec.min_args(1)
    }
}

fn flag_arg(args: &Args, ex: &mut Exec<'_>) -> Option<u32> {
    let n = args.int(0, ex)?;
    if (0..64).contains(&n) {
        Some(n as u32)
    } else {
        None
    }
}

/// Functions every configuration has.
pub fn core_functions() -> Vec<FunctionSpec> {
    let mut v = vec![
        xlog_spec("xlog", None),
        xlog_spec("xerr", Some(-1)),
        xlog_spec("xwarn", Some(0)),
        xlog_spec("xnotice", Some(1)),
        xlog_spec("xinfo", Some(2)),
        xlog_spec("xdbg", Some(3)),
        xlog_spec("xalert", Some(-5)),
        xlog_spec("xcrit", Some(-2)),
    ];
    // log([level,] text): Kamailio's plain log, level as a number.
    v.push(
        FunctionSpec::new("log", &[ArgKind::Any, ArgKind::Str], |ex, args| {
            let (level, idx) = if args.len() == 2 {
                (args.int(0, ex).unwrap_or(-1) as i32, 1)
            } else {
                (-1, 0)
            };
            let body = args.bytes(idx, ex);
            log_line(ex, level, &body);
            1.into()
        })
        .min_args(1),
    );
    v.push(FunctionSpec::new(
        "setflag",
        &[ArgKind::Int],
        |ex, args| match flag_arg(args, ex) {
            Some(f) => {
                ex.ctx.flags |= 1 << f;
                1.into()
            }
            None => (-1).into(),
        },
    ));
    v.push(FunctionSpec::new(
        "resetflag",
        &[ArgKind::Int],
        |ex, args| match flag_arg(args, ex) {
            Some(f) => {
                ex.ctx.flags &= !(1 << f);
                1.into()
            }
            None => (-1).into(),
        },
    ));
    v.push(FunctionSpec::new(
        "isflagset",
        &[ArgKind::Int],
        |ex, args| match flag_arg(args, ex) {
            Some(f) if ex.ctx.flags & (1 << f) != 0 => 1.into(),
            _ => (-1).into(),
        },
    ));
    v
}

struct Builtin;
impl Module for Builtin {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A module whose functions live in siphon's core: loading it is allowed and does nothing more.
pub fn core_module(name: &'static str, params: Vec<ParamSpec>) -> ModuleDef {
    ModuleDef {
        name,
        params,
        instantiate: Arc::new(|_| Ok(Arc::new(Builtin) as Arc<dyn Module>)),
    }
}

/// The modules Kamailio configs load for functions siphon keeps in its core.
pub fn core_modules() -> Vec<ModuleDef> {
    let ne = |n: &'static str| ParamSpec::str(n).no_effect();
    let nei = |n: &'static str| ParamSpec::int(n).no_effect();
    vec![
        core_module("kex", vec![]),
        core_module(
            "corex",
            vec![
                ne("alias_subdomains").multi(),
                ne("network_io_intercept"),
                ne("min_msg_len"),
            ],
        ),
        core_module(
            "pv",
            vec![
                ParamSpec::str("shvset").multi(),
                ParamSpec::str("varset").multi(),
                nei("avp_aliases"),
            ],
        ),
        core_module(
            "xlog",
            vec![
                nei("buf_size"),
                nei("force_color"),
                nei("long_format"),
                ne("prefix"),
                ne("log_facility"),
                ne("log_colors").multi(),
                ne("methods_filter"),
            ],
        ),
        core_module("textops", vec![]),
        core_module("textopsx", vec![]),
        core_module(
            "siputils",
            vec![
                ne("options_accept"),
                ne("options_support"),
                nei("rpid_prefix"),
            ],
        ),
        core_module(
            "sl",
            vec![nei("bind_tm"), nei("default_code"), ne("default_reason")],
        ),
        core_module(
            "tm",
            vec![
                ParamSpec::int("fr_timer"),
                ParamSpec::int("fr_inv_timer"),
                ParamSpec::int("auto_inv_100"),
                ne("auto_inv_100_reason"),
                ParamSpec::int("wt_timer"),
                ParamSpec::int("retr_timer1"),
                ParamSpec::int("retr_timer2"),
                nei("failure_reply_mode"),
                nei("restart_fr_on_each_reply"),
                nei("noisy_ctimer"),
                ne("contacts_avp"),
                ne("contact_flows_avp"),
                nei("cancel_b_method"),
                nei("reparse_on_dns_failover"),
                nei("e2e_cancel_reason"),
                nei("unix_tx_timeout"),
                ParamSpec::int("aggregate_challenges"),
                nei("reparse_invite"),
                ne("ac_extra_hdrs"),
                nei("blst_503"),
                ParamSpec::int("max_inv_lifetime"),
                ParamSpec::int("max_noninv_lifetime"),
            ],
        ),
        core_module("tmx", vec![]),
        core_module("jansson", vec![]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let l = ListenSpec::parse("udp:127.0.0.1:5060").unwrap();
        assert_eq!(
            (l.proto, l.host.as_str(), l.port),
            (Proto::Udp, "127.0.0.1", Some(5060))
        );
        let l = ListenSpec::parse("tcp:[::1]:0").unwrap();
        assert_eq!(
            (l.proto, l.host.as_str(), l.port),
            (Proto::Tcp, "::1", Some(0))
        );
        let l = ListenSpec::parse("127.0.0.2 advertise 1.2.3.4:5060").unwrap();
        assert_eq!(
            (l.proto, l.port, l.advertise.as_deref()),
            (Proto::Any, None, Some("1.2.3.4:5060"))
        );
        assert!(ListenSpec::parse("udp:127.0.0.1:99999").is_err());
        assert!(ListenSpec::parse("ws:127.0.0.1:80").is_err());
        assert!(ListenSpec::parse("::1:5060").is_err());
    }

    #[test]
    fn dns_server_forms() {
        let v = parse_dns_servers("127.0.0.1:5353, 10.0.0.1 ,[::1]:5300,::1").unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:5353", "10.0.0.1:53", "[::1]:5300", "[::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(v, want);
        assert!(parse_dns_servers("ns.example.com").is_err());
        assert!(parse_dns_servers(" , ").is_err());
    }
}
