//! The `siphon` binary's library part: the registry of built-in modules and
//! the steps of a run (load, check, start), so integration tests can use the
//! same registry the shipped binary has.

pub mod ctl;

use siphon_cfg::{Diagnostic, FsLoader, MemLoader, PreOptions, SourceMap};
use siphon_core::Core;
use siphon_script::{Loaded, Program, Registry};
use std::path::Path;
use std::sync::Arc;

/// The configuration `siphon` runs without `-f`.
pub const DEFAULT_CONFIG: &str = include_str!("default.cfg");
/// The name the default configuration has in diagnostics.
pub const DEFAULT_CONFIG_NAME: &str = "<default config>";

/// Every module built into this binary (for checking a configuration).
pub fn registry() -> Registry {
    registry_with_core().0
}

/// The registry and the SIP core whose functions it holds.
pub fn registry_with_core() -> (Registry, Arc<Core>) {
    let mut reg = Registry::new();
    let core = Core::new();
    core.register(&mut reg);
    reg.add(siphon_mod_jsonrpcs::def());
    reg.add(siphon_mod_xhttp::def());
    reg.add(siphon_mod_xhttp::prom::def());
    reg.add(siphon_mod_event_jsonrpc::def());
    reg.add(siphon_mod_event_virtual::def());
    reg.add(siphon_mod_jsonrpcc::def());
    reg.add(siphon_mod_jsonrpcc::janssonrpcc::def());
    reg.add(siphon_mod_evapi::def());
    reg.add(siphon_mod_async_http::def());
    reg.add(siphon_mod_async_http::def_client());
    reg.add(siphon_mod_ctl::def());
    reg.add(siphon_mod_siputils::def());
    reg.add(siphon_mod_cfg_rpc::def());
    reg.add(siphon_mod_counters::def());
    reg.add(siphon_mod_rr::def());
    reg.add(siphon_mod_registrar::def_usrloc());
    reg.add(siphon_mod_registrar::def());
    reg.add(siphon_mod_acc::def());
    reg.add(siphon_mod_maxfwd::def());
    reg.add(siphon_mod_sanity::def());
    reg.add(siphon_mod_dispatcher::def());
    reg.add(siphon_mod_htable::def());
    reg.add(siphon_mod_htable::db_text_def());
    reg.add(siphon_mod_pike::def());
    reg.add(siphon_mod_auth::def());
    reg.add(siphon_mod_auth::def_auth_db());
    reg.add(siphon_mod_nathelper::def());
    for relay in siphon_mod_nathelper::media_relays() {
        reg.refuse(relay);
    }
    (reg, core)
}

/// Reads and compiles the configuration (the embedded default when `file` is `None`).
pub fn load(file: Option<&Path>, opts: &PreOptions, registry: &Registry) -> Loaded {
    load_with_run_dir(file, opts, registry, None)
}

/// [`load`] with `-Y DIR`: the run directory (FIFOs, control sockets) is
/// `DIR`, whatever the file's `run_dir` says — Kamailio applies its command
/// line after the file. Done as a `run_dir` line after the root file's end,
/// so the modules see it when they are built and line numbers stay right.
pub fn load_with_run_dir(
    file: Option<&Path>,
    opts: &PreOptions,
    registry: &Registry,
    run_dir: Option<&str>,
) -> Loaded {
    let tail = run_dir.map(|d| format!("\nrun_dir=\"{d}\"\n"));
    match file {
        Some(f) => {
            let loader = RootTail {
                root: f.to_path_buf(),
                tail,
            };
            siphon_script::load(f, &loader, opts, registry)
        }
        None => {
            let text = format!("{DEFAULT_CONFIG}{}", tail.unwrap_or_default());
            let loader = MemLoader::new().with(DEFAULT_CONFIG_NAME, &text);
            siphon_script::load(DEFAULT_CONFIG_NAME, &loader, opts, registry)
        }
    }
}

/// The filesystem, with `tail` added to the root file's text.
struct RootTail {
    root: std::path::PathBuf,
    tail: Option<String>,
}

impl siphon_cfg::Loader for RootTail {
    fn resolve(&self, name: &str, from: Option<&Path>) -> std::path::PathBuf {
        FsLoader.resolve(name, from)
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        let mut text = FsLoader.read(path)?;
        if let Some(tail) = self.tail.as_ref().filter(|_| path == self.root) {
            text.push_str(tail);
        }
        Ok(text)
    }
    fn identity(&self, path: &Path) -> std::path::PathBuf {
        FsLoader.identity(path)
    }
}

/// Parses `-A NAME` / `-A NAME=VALUE`.
pub fn parse_define(s: &str) -> (String, Option<String>) {
    match s.split_once('=') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (s.to_string(), None),
    }
}

/// Renders diagnostics as `siphon -c` prints them.
pub fn render(diags: &[Diagnostic], sources: &SourceMap) -> String {
    siphon_cfg::diag::render_all(diags, sources)
}

/// The tracing level for Kamailio's `debug` value.
pub fn level_filter(debug: i32) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match debug {
        d if d <= -1 => LevelFilter::ERROR,
        0 => LevelFilter::WARN,
        1 | 2 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    }
}

/// Adds `-l` addresses to the program's listen list.
pub fn add_listen(program: &mut Program, addrs: &[String]) -> Result<(), String> {
    for a in addrs {
        let spec = siphon_script::core::ListenSpec::parse(a).map_err(|e| format!("-l {a}: {e}"))?;
        program.core.listen.push(spec);
    }
    Ok(())
}
