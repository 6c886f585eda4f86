//! `siphon`: run a Kamailio-style routing configuration.
//!
//! Flags follow Kamailio's: `-f FILE`, `-c` (check and exit), `-A NAME[=VAL]`,
//! `-E`, `-e`, `-D`, `-l ADDR`, `-Y DIR`, `-w DIR`, `-P FILE`, `-u USER`,
//! `-g GROUP`, `-n N`, `-T`, `-L DIR`, `-m`/`-M`, `-a`, `-K`, `-V`, `-h`.
//! An unknown option exits with 255, as Kamailio's `-1`.

use clap::{ArgAction, Parser, Subcommand};
use siphon::{
    DEFAULT_CONFIG, add_listen, level_filter, load_with_run_dir, parse_define, registry_with_core,
    render,
};
use siphon_cfg::PreOptions;
use siphon_script::api::StartCx;
use siphon_script::{Outcome, RouteType};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "siphon",
    version,
    about = "A SIP routing server that runs Kamailio-style configurations"
)]
struct Cli {
    /// Configuration file (default: the embedded default configuration).
    #[arg(short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Check the configuration and exit (0: fine, 1: errors).
    #[arg(short = 'c')]
    check: bool,
    /// Define a preprocessor name, as `#!define NAME VALUE` would.
    #[arg(short = 'A', value_name = "NAME[=VALUE]")]
    define: Vec<String>,
    /// Log to stderr (siphon always does).
    #[arg(short = 'E')]
    log_stderr: bool,
    /// Stay in the foreground (siphon always does).
    #[arg(short = 'D', action = ArgAction::Count)]
    foreground: u8,
    /// Add a listen address (`udp:127.0.0.1:5060`).
    #[arg(short = 'l', value_name = "ADDR")]
    listen: Vec<String>,
    /// Run directory for FIFOs and control sockets (overrides the file's `run_dir`).
    #[arg(short = 'Y', value_name = "DIR")]
    run_dir: Option<String>,
    /// Working directory: entered once the configuration is read (as Kamailio, `-f` and
    /// includes resolve from where siphon was started), before modules start.
    #[arg(short = 'w', value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Write the process id to FILE once listening; removed at stop.
    #[arg(short = 'P', value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Run as USER (name or uid) once every socket is bound.
    #[arg(short = 'u', value_name = "USER")]
    user: Option<String>,
    /// Run as GROUP (name or gid) once every socket is bound (default: USER's group).
    #[arg(short = 'g', value_name = "GROUP")]
    group: Option<String>,
    /// Worker threads (Kamailio: children per interface; overrides `children`).
    #[arg(short = 'n', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Disable TCP: TCP and TLS listeners are dropped (`-l tcp:…` too), as `disable_tcp=yes`.
    #[arg(short = 'T')]
    no_tcp: bool,
    /// Log in terminal colors (with -E), even when stderr is not a terminal.
    #[arg(short = 'e')]
    color: bool,
    /// Module search path: accepted (modules are built in), as `mpath`.
    #[arg(short = 'L', value_name = "DIR")]
    mpath: Option<String>,
    /// Shared memory size in MB: accepted; siphon has no fixed pools.
    #[arg(short = 'm', value_name = "MB")]
    shm: Option<u64>,
    /// Private memory size in MB: accepted; siphon has no fixed pools.
    #[arg(short = 'M', value_name = "MB")]
    pkg: Option<u64>,
    /// Auto aliases (yes/no): accepted; siphon has no aliases (as `auto_aliases`).
    #[arg(short = 'a', value_name = "yes|no", value_parser = ["yes", "on", "no", "off"])]
    auto_aliases: Option<String>,
    /// Via host checking when forwarding replies: accepted, not done (as `check_via`).
    #[arg(short = 'K')]
    check_via: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a management command over jsonrpcs (as kamcmd/kamcli do).
    Ctl {
        /// The server's FIFO.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["udp", "unix", "http"])]
        fifo: Option<PathBuf>,
        /// Directory for the reply FIFO (the server's fifo_reply_dir; jsonrpcs' default is the server's run_dir).
        #[arg(long, value_name = "DIR", default_value = siphon::ctl::DEFAULT_REPLY_DIR)]
        reply_dir: PathBuf,
        /// The server's UDP datagram socket (default: 127.0.0.1:5090, what the default configuration opens).
        #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["unix", "http"])]
        udp: Option<String>,
        /// The server's unix datagram socket.
        #[arg(long, value_name = "PATH", conflicts_with = "http")]
        unix: Option<PathBuf>,
        /// The server's HTTP JSON-RPC URL (the default configuration's is http://127.0.0.1:5060/RPC).
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        /// The command, e.g. core.version, stats.get_statistics.
        method: String,
        /// Params: numbers when they read as numbers; `s:` forces a string.
        params: Vec<String>,
    },
    /// Check a configuration file (as `siphon -c -f FILE`).
    Check {
        /// The configuration file.
        #[arg(short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Define a preprocessor name.
        #[arg(short = 'A', value_name = "NAME[=VALUE]")]
        define: Vec<String>,
    },
}

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            let _ = e.print();
            // Kamailio exits with -1 (255) on an unknown or malformed option.
            return if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(255)
            };
        }
    };
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let cmd = cli.cmd.take();
    if let Some(Cmd::Ctl {
        fifo,
        reply_dir,
        udp,
        unix,
        http,
        method,
        params,
    }) = cmd
    {
        use siphon::ctl::{DEFAULT_UDP, Target, call};
        let target = match (fifo, unix, http, udp) {
            (Some(f), _, _, _) => Target::Fifo(f, reply_dir),
            (_, Some(u), _, _) => Target::Unix(u),
            (_, _, Some(h), _) => Target::Http(h),
            (_, _, _, u) => Target::Udp(u.unwrap_or_else(|| DEFAULT_UDP.to_string())),
        };
        return match call(&target, &method, &params) {
            Ok(reply) => match reply.get("error") {
                Some(e) => {
                    eprintln!(
                        "error: {} ({})",
                        e.get("message").and_then(|m| m.as_str()).unwrap_or("?"),
                        e.get("code").cloned().unwrap_or_default()
                    );
                    ExitCode::from(1)
                }
                None => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(reply.get("result").unwrap_or(&reply))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Cmd::Check { file, define }) = cmd {
        cli.file = Some(file);
        cli.define.extend(define);
        cli.check = true;
    }
    let opts = PreOptions {
        defines: cli.define.iter().map(|d| parse_define(d)).collect(),
    };
    for n in notices(&cli) {
        eprintln!("notice: {n}");
    }
    // Resolved before anything is bound: an unknown user or group stops here.
    let ids = match resolve_ids(cli.user.as_deref(), cli.group.as_deref()) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (registry, core) = registry_with_core();
    if let Some(d) = cli
        .run_dir
        .as_ref()
        .filter(|d| d.contains(['"', '\n', '\r']))
    {
        eprintln!("error: -Y {d:?}: a directory name without quotes or line breaks");
        return ExitCode::from(1);
    }
    let loaded = load_with_run_dir(
        cli.file.as_deref(),
        &opts,
        &registry,
        cli.run_dir.as_deref(),
    );
    if !loaded.diags.is_empty() {
        eprint!("{}", render(&loaded.diags, &loaded.sources));
    }
    let Some(mut program) = loaded.program else {
        return ExitCode::from(1);
    };
    if let Err(e) = add_listen(&mut program, &cli.listen) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    if cli.no_tcp {
        use siphon_script::core::Proto;
        program.core.listen.retain(|l| match l.proto {
            Proto::Tcp | Proto::Tls => {
                eprintln!(
                    "notice: -T: not listening on {}:{}",
                    format!("{:?}", l.proto).to_lowercase(),
                    l.host
                );
                false
            }
            _ => true,
        });
        for l in &mut program.core.listen {
            if l.proto == Proto::Any {
                l.proto = Proto::Udp;
            }
        }
    }
    if let Some(n) = cli.workers {
        program.core.children = Some(usize::from(n));
    }
    if let Some(p) = &cli.mpath {
        program.core.mpath = Some(p.clone());
    }
    if cli.check {
        let name = cli
            .file
            .as_ref()
            .map_or("the default configuration".to_string(), |f| {
                f.display().to_string()
            });
        eprintln!("{name}: configuration OK");
        return ExitCode::SUCCESS;
    }
    if let Some(d) = &cli.work_dir
        && let Err(e) = std::env::set_current_dir(d)
    {
        eprintln!("error: -w {}: {e}", d.display());
        return ExitCode::from(1);
    }
    let opts = RunOpts {
        color: cli.color,
        pid_file: cli.pid_file.clone(),
        ids,
    };
    run(program, core, opts)
}

/// What `run` does besides serving.
struct RunOpts {
    color: bool,
    pid_file: Option<PathBuf>,
    ids: Option<Ids>,
}

/// The ids `-u`/`-g` ask for.
struct Ids {
    /// The user's name (for its supplementary groups) and uid.
    user: Option<(std::ffi::CString, nix::unistd::Uid)>,
    gid: Option<nix::unistd::Gid>,
}

/// Looks up `-u` and `-g` (names or numbers), as Kamailio's user2uid/group2gid:
/// `-u` alone also takes the user's group.
fn resolve_ids(user: Option<&str>, group: Option<&str>) -> Result<Option<Ids>, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let mut ids = Ids {
        user: None,
        gid: None,
    };
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(u),
        }
        .map_err(|e| format!("-u {u}: cannot look the user up: {e}"))?
        .ok_or_else(|| format!("-u {u}: no such user"))?;
        let name = std::ffi::CString::new(found.name.as_bytes())
            .map_err(|_| format!("-u {u}: bad user name"))?;
        ids.user = Some((name, found.uid));
        ids.gid = Some(found.gid);
    }
    if let Some(g) = group {
        let found = match g.parse::<u32>() {
            Ok(n) => Group::from_gid(Gid::from_raw(n)),
            Err(_) => Group::from_name(g),
        }
        .map_err(|e| format!("-g {g}: cannot look the group up: {e}"))?
        .ok_or_else(|| format!("-g {g}: no such group"))?;
        ids.gid = Some(found.gid);
    }
    Ok(Some(ids))
}

/// Drops privileges as Kamailio's do_suid: group, supplementary groups, then user.
fn drop_privileges(ids: &Ids) -> Result<(), String> {
    use nix::unistd::{getgid, getuid, initgroups, setgid, setgroups, setuid};
    if let Some(gid) = ids.gid
        && gid != getgid()
    {
        setgid(gid).map_err(|e| format!("cannot change the group to {gid}: {e}"))?;
    }
    if let Some((name, uid)) = &ids.user {
        if *uid != getuid() {
            let gid = ids.gid.unwrap_or_else(getgid);
            initgroups(name, gid).map_err(|e| format!("cannot set the groups of {name:?}: {e}"))?;
            setuid(*uid).map_err(|e| format!("cannot change the user to {uid}: {e}"))?;
        }
    } else if let Some(gid) = ids.gid
        && getuid().is_root()
    {
        // Group only: leave no supplementary group of root's behind.
        setgroups(&[gid]).map_err(|e| format!("cannot set the groups: {e}"))?;
    }
    Ok(())
}

/// One line for each Kamailio option that is accepted but changes nothing here.
fn notices(cli: &Cli) -> Vec<String> {
    let mut n = Vec::new();
    if let Some(m) = cli.shm {
        n.push(format!("-m {m}: siphon has no fixed memory pools; ignored"));
    }
    if let Some(m) = cli.pkg {
        n.push(format!("-M {m}: siphon has no fixed memory pools; ignored"));
    }
    if let Some(a) = &cli.auto_aliases {
        n.push(format!(
            "-a {a}: siphon does not add aliases for its listeners; ignored"
        ));
    }
    if cli.check_via {
        n.push("-K: replies are not checked against the Via host; ignored".into());
    }
    n
}

fn run(program: siphon_script::Program, core: Arc<siphon_core::Core>, opts: RunOpts) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level_filter(program.core.debug))
        .with_target(true)
        .with_ansi(opts.color || std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let workers = program
        .core
        .children
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("siphon-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let program = program.into_shared();
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        // Signal handlers first: a SIGTERM right after "siphon started" must stop us cleanly.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        let cx = StartCx::new(
            program.clone(),
            core.host(program.clone(), shutdown.clone()),
        );
        for (name, m) in program.modules() {
            if let Err(e) = m.start(&cx) {
                tracing::error!("module {name} failed to start: {e}");
                return ExitCode::from(1);
            }
        }
        match core.start(program.clone(), shutdown.clone()).await {
            Ok(bound) => {
                // Always on stdout too, whatever the log level: scripts and tests read the ports here.
                for b in bound {
                    tracing::info!("listening on {b}");
                    println!("listening on {b}");
                }
            }
            Err(e) => {
                tracing::error!("cannot listen: {e}");
                return ExitCode::from(1);
            }
        }
        // Every listener and module socket is bound: write the pid file, then drop privileges.
        if let Some(p) = &opts.pid_file
            && let Err(e) = std::fs::write(p, format!("{}\n", std::process::id()))
        {
            tracing::error!("-P {}: cannot write the pid file: {e}", p.display());
            return ExitCode::from(1);
        }
        let pid_file = PidFile(opts.pid_file.clone());
        if let Some(ids) = &opts.ids {
            // As Kamailio: the pid file belongs to the user siphon runs as.
            if let Some(p) = &opts.pid_file
                && let Err(e) = nix::unistd::chown(p, ids.user.as_ref().map(|u| u.1), ids.gid)
            {
                tracing::error!("-P {}: cannot give the pid file to -u/-g: {e}", p.display());
                return ExitCode::from(1);
            }
            if let Err(e) = drop_privileges(ids) {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
            tracing::info!(
                uid = nix::unistd::getuid().as_raw(),
                gid = nix::unistd::getgid().as_raw(),
                "privileges dropped"
            );
        }
        if let Some(r) = program.startup_route() {
            let mut ctx = program.new_ctx(RouteType::STARTUP);
            if let Outcome::Suspended(_) = program.run(r, &mut ctx) {
                tracing::error!("startup_route cannot suspend: there is no transaction");
            }
        }
        let _ = program.evi().raise(
            siphon_script::evi::E_CORE_START,
            siphon_script::evi::EventParams::Named(vec![
                ("version".into(), env!("CARGO_PKG_VERSION").into()),
                ("pid".into(), std::process::id().into()),
            ]),
        );
        tracing::info!(workers, "siphon started");
        println!("siphon started");
        signals.wait(&shutdown).await;
        shutdown.cancel();
        drop(pid_file);
        tracing::info!("siphon stopped");
        ExitCode::SUCCESS
    })
}

/// The `-P` file, removed when siphon stops.
struct PidFile(Option<PathBuf>);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0
            && let Err(e) = std::fs::remove_file(p)
        {
            tracing::warn!("-P {}: cannot remove the pid file: {e}", p.display());
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = shutdown.cancelled() => {}
        }
    }
}
