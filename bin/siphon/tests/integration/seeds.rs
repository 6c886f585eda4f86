//! Every configuration example in the seed manuals compiles as written
//! (addresses made loopback), each wrapped in the minimal configuration it
//! needs. The fixtures are in `tests/seeds/`; their first comment says which
//! example each one is.

use siphon_cfg::{FsLoader, PreOptions};
use std::path::PathBuf;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/seeds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_seed_example_compiles() {
    let registry = siphon::registry();
    let files = fixtures();
    assert!(files.len() >= 17, "fixtures missing: {files:?}");
    let mut failures = String::new();
    for f in &files {
        let loaded = siphon_script::load(f, &FsLoader, &PreOptions::default(), &registry);
        let text = std::fs::read_to_string(f).unwrap();
        // A fixture may say the example is refused, and why (KEMI-only parameters).
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect error: "));
        let diags = siphon::render(&loaded.diags, &loaded.sources);
        match (expected, loaded.program.is_some()) {
            (None, false) => failures.push_str(&diags),
            (Some(e), true) => {
                failures.push_str(&format!("{}: loaded, expected `{e}`\n", f.display()))
            }
            (Some(e), false) if !diags.contains(e) => failures.push_str(&diags),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn seed_examples_resolve_what_they_name() {
    let registry = siphon::registry();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
    let load = |name: &str| {
        siphon_script::load(dir.join(name), &FsLoader, &PreOptions::default(), &registry)
            .program
            .expect(name)
    };

    // jsonrpc_request's return and error routes exist and are named routes.
    let p = load("000_jsonrpcc_1.4_request.cfg");
    assert!(
        p.route_by_name(siphon_script::RouteTable::Named, "RESPONSE")
            .is_some()
    );
    assert!(p.var_slot("result").is_some());

    // The flattened jsonrpcs example keeps its core parameters.
    let p = load("002_jsonrpcs_1.14_dispatch.cfg");
    assert_eq!(p.core.debug, 3);
    assert_eq!(p.core.children, Some(2));
    assert!(p.core.tcp_accept_no_cl);
    assert!(p.event_route("xhttp:request").is_some());
    assert_eq!(p.module_names(), ["sl", "pv", "xhttp", "jsonrpcs"]);

    // OpenSIPS' main `route { }` is the request route.
    let p = load("001_event_jsonrpc_1.8_raise_event.cfg");
    assert!(p.request_route().is_some() && p.startup_route().is_some());
}

#[test]
fn misspelled_seed_function_is_caught() {
    let registry = siphon::registry();
    let l = siphon_script::load_str(
        "x.cfg",
        "loadmodule \"jsonrpcc\"\nrequest_route { jsonrpc_requets(\"m\", \"{}\", \"R\", \"R\", \"$var(r)\"); }\nroute[R] { }",
        &PreOptions::default(),
        &registry,
    );
    let msg = siphon::render(&l.diags, &l.sources);
    assert!(
        msg.contains("unknown function `jsonrpc_requets` — did you mean `jsonrpc_request`?"),
        "{msg}"
    );
}

#[test]
fn every_seed_example_starts() {
    // Beyond compiling: the real binary starts on each (the harness adds
    // loopback listeners), one after another since some bind fixed ports.
    for f in fixtures() {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("# expect error: ") {
            continue;
        }
        let srv = super::harness::Server::start(&text);
        assert!(srv.log_contains("siphon started"), "{}", f.display());
    }
}
