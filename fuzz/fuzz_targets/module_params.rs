#![no_main]
//! Module parameter and small-syntax parsers: jsonrpcc `servers`, the
//! janssonrpcc `server` and request options, jansson paths (with lookups and
//! sets on a document from the input), and the HTTP/SIP sniffing of the
//! first line of a stream connection. None may panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = siphon_core::transport::sniff_http(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = siphon_mod_jsonrpcc::servers::parse_servers(text);
    let _ = siphon_mod_jsonrpcc::servers::parse_jansson_server(text);
    let _ = siphon_mod_jsonrpcc::janssonrpcc::parse_options(text);
    let (path, json) = text.split_once('\n').unwrap_or((text, "{}"));
    if let Some(steps) = siphon_script::jansson::parse_path(path) {
        if let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) {
            let _ = siphon_script::jansson::get(&doc, &steps).map(siphon_script::jansson::to_value);
        }
        let _ = siphon_script::jansson::typed("array", json);
    }
});
