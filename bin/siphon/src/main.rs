//! `siphon`: run a Kamailio-style routing configuration.
//!
//! Flags follow Kamailio's: `-f FILE`, `-c` (check and exit), `-A NAME[=VAL]`,
//! `-E`, `-D`, `-l ADDR`, `-Y DIR`, `-V`, `-h`.

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
    let mut cli = Cli::parse();
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
    run(program, core)
}

fn run(program: siphon_script::Program, core: Arc<siphon_core::Core>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level_filter(program.core.debug))
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        let cx = StartCx::new(program.clone(), core.host(shutdown.clone()));
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
        tracing::info!("siphon stopped");
        ExitCode::SUCCESS
    })
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
