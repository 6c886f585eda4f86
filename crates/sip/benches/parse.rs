//! The SIP hot path: parse a typical INVITE, read what a proxy reads, build a
//! reply, serialise with edits.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use siphon_sip::{Edits, ReplyOptions, build_reply, parse, serialize, via_with_received};
use std::hint::black_box;

const INVITE: &[u8] = b"INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-524287-1---77ba4c4ca6b1d2e8;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@127.0.0.2:5070;transport=udp>\r\n\
To: <sip:bob@127.0.0.1>\r\n\
From: \"Alice\" <sip:alice@127.0.0.2>;tag=4f2a9c1b\r\n\
Call-ID: 5b3c1f0e2d9a8b7c6d5e4f3a2b1c0d9e@127.0.0.2\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
Content-Type: application/sdp\r\n\
User-Agent: bench\r\n\
Allow-Events: presence, kpml, talk\r\n\
Content-Length: 128\r\n\
\r\n\
v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn bench(c: &mut Criterion) {
    let buf = Bytes::from_static(INVITE);
    c.bench_function("parse_invite_and_read_views", |b| {
        b.iter(|| {
            let m = parse(black_box(buf.clone())).unwrap();
            black_box((m.top_via(), m.from(), m.to(), m.cseq(), m.call_id()));
        })
    });
    let m = parse(buf.clone()).unwrap();
    c.bench_function("build_302_reply", |b| {
        let extra = [Bytes::from_static(
            b"Contact: <sip:moved@127.0.0.1:5099>\r\n",
        )];
        b.iter(|| {
            let v = m.value(siphon_sip::HeaderName::Via).unwrap();
            let top = via_with_received(&v, None, Some(5070));
            black_box(build_reply(
                &m,
                302,
                b"Moved Temporarily",
                &ReplyOptions {
                    to_tag: Some(b"abcdef0123456789"),
                    top_via: Some(&top),
                    extra: &extra,
                    ..Default::default()
                },
            ))
        })
    });
    c.bench_function("serialise_with_edits", |b| {
        let e = Edits {
            push_via: Some(Bytes::from_static(
                b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsph0123456789abcdef;rport",
            )),
            max_forwards: Some(69),
            append: vec![Bytes::from_static(b"X-Relayed: yes\r\n")],
            ..Default::default()
        };
        b.iter(|| black_box(serialize(&m, &e)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
