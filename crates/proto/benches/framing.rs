//! Framing hot paths: netstring decode and encode of JSON-RPC documents,
//! JSON-RPC parse, lenient params. Numbers go in the issue notes; nothing
//! here is pass/fail.

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use siphon_proto::{jsonrpc, lenient, netstring};
use std::hint::black_box;

const DOC: &[u8] = br#"{"id":915243442,"jsonrpc":"2.0","method":"get_user","params":{"id":1234,"name":"Petros","uri":"sip:alice@127.0.0.1:5060","tags":["a","b","c"]}}"#;

fn framing(c: &mut Criterion) {
    let mut framed = BytesMut::new();
    for _ in 0..64 {
        netstring::encode(DOC, &mut framed);
    }
    let framed = framed.freeze();
    c.bench_function("netstring decode 64 frames (169 B each)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&framed[..]);
            let mut d = netstring::Decoder::new(netstring::DEFAULT_MAX);
            let mut n = 0;
            while let Ok(Some(f)) = d.decode(&mut buf) {
                n += f.len();
            }
            black_box(n)
        })
    });
    c.bench_function("netstring encode one frame", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            netstring::encode(black_box(DOC), &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("jsonrpc parse one request", |b| {
        b.iter(|| black_box(jsonrpc::parse(black_box(DOC)).is_ok()))
    });
    c.bench_function("lenient params (single quotes)", |b| {
        b.iter(|| black_box(lenient::parse(black_box("{'id': 1234, 'name': 'Petros'}")).is_ok()))
    });
}

criterion_group!(benches, framing);
criterion_main!(benches);
