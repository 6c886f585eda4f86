//! binrpc (ctl) on arbitrary bytes: the header parser and body decoder never
//! panic; a header that parses re-encodes to the same kind, length and
//! cookie; decoded values re-encode and decode to themselves; JSON results
//! map to bodies that decode, within the encoder's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siphon_mod_ctl::binrpc::{self, Encoder};
use siphon_mod_ctl::binrpc::{Member, Value};
use siphon_mod_ctl::json;

/// Equal, doubles within their 3 decimals (a ×1000 integer past 2^53 is not exact as f64).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => (x - y).abs() <= 0.001_f64.max(x.abs() * 1e-12),
        (Value::Struct(x), Value::Struct(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(
                    |(
                        Member {
                            name: n1,
                            value: v1,
                        },
                        Member {
                            name: n2,
                            value: v2,
                        },
                    )| { n1 == n2 && same(v1, v2) },
                )
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = binrpc::header(data) {
        let again = binrpc::header_bytes(h.kind, h.body_len, h.cookie);
        let h2 = binrpc::header(&again).unwrap().unwrap();
        assert_eq!(
            (h2.kind, h2.body_len, h2.cookie),
            (h.kind, h.body_len, h.cookie)
        );
    }
    if let Ok(values) = binrpc::decode_body(data) {
        let mut e = Encoder::new(usize::MAX);
        for v in &values {
            e.value(v).unwrap();
        }
        let back = binrpc::decode_body(&e.finish()).unwrap();
        assert_eq!(back.len(), values.len());
        for (a, b) in back.iter().zip(&values) {
            assert!(same(a, b), "{a:?} != {b:?}");
        }
        let params: Vec<_> = values.iter().map(json::param).collect();
        let result = serde_json::Value::Array(params);
        let mut e = Encoder::new(4096);
        if json::reply(&mut e, &result).is_ok() {
            let body = e.finish();
            assert!(body.len() <= 4096);
            binrpc::decode_body(&body).unwrap();
        }
    }
});
