//! The management plane's own syntax: jsonrpcs' credentials file and the
//! Authorization header checked against it. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siphon_mod_jsonrpcs::auth::Credentials;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: a header to check; the rest: a credentials file.
    let (header, file) = text.split_once('\n').unwrap_or((text, "basic a:b rw\nbearer t ro\n"));
    if let Ok(creds) = Credentials::parse(file) {
        let _ = creds.check(Some(header.as_bytes()));
        let _ = creds.check(None);
    }
    if let Ok(creds) = Credentials::parse("basic user:pa:ss rw\nbearer tok ro\n") {
        let _ = creds.check(Some(data));
    }
});
