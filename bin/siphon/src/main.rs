//! `siphon`: run a Kamailio-style routing configuration.
//!
//! Flags follow Kamailio's: `-f FILE`, `-c` (check and exit), `-A NAME[=VAL]`,
//! `-E`, `-D`, `-l ADDR`, `-V`, `-h`.

use clap::{ArgAction, Parser, Subcommand};
use siphon::{DEFAULT_CONFIG, add_listen, level_filter, load, parse_define, registry, render};
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
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
    if let Some(Cmd::Check { file, define }) = cli.cmd.take() {
        cli.file = Some(file);
        cli.define.extend(define);
        cli.check = true;
    }
    let opts = PreOptions {
        defines: cli.define.iter().map(|d| parse_define(d)).collect(),
    };
    let registry = registry();
    let loaded = load(cli.file.as_deref(), &opts, &registry);
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
    run(program)
}

fn run(program: siphon_script::Program) -> ExitCode {
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
    let program = Arc::new(program);
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let cx = StartCx::new(program.clone());
        for (name, m) in program.modules() {
            if let Err(e) = m.start(&cx) {
                tracing::error!("module {name} failed to start: {e}");
                return ExitCode::from(1);
            }
        }
        if !program.core.listen.is_empty() {
            tracing::warn!("listen addresses are configured, but this build has no SIP transport yet: nothing is listening");
        }
        if let Some(r) = program.startup_route() {
            let mut ctx = program.new_ctx(RouteType::STARTUP);
            if let Outcome::Suspended(_) = program.run(r, &mut ctx) {
                tracing::error!("startup_route cannot suspend: there is no transaction");
            }
        }
        tracing::info!(workers, "siphon started");
        wait_for_signal(shutdown.clone()).await;
        shutdown.cancel();
        tracing::info!("siphon stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return shutdown.cancelled().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = shutdown.cancelled() => {}
    }
}
