//! Lexer + preprocessor + parser + compiler on arbitrary text: must never
//! panic or hang, and every diagnostic must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siphon_cfg::PreOptions;
use std::sync::LazyLock;

static REGISTRY: LazyLock<siphon_script::Registry> = LazyLock::new(siphon_script::Registry::new);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = siphon_script::load_str("fuzz.cfg", text, &PreOptions::default(), &REGISTRY);
    for d in &loaded.diags {
        let _ = d.render(&loaded.sources);
    }
});
