//! SIP parser on arbitrary bytes: never panics; what parses serialises back
//! byte-identical, re-parses after edits, and yields a reply that parses.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use siphon_sip::{build_reply, parse, serialize, tcp_frame_len, Edits, ReplyOptions};

fuzz_target!(|data: &[u8]| {
    let _ = tcp_frame_len(data, 65_536);
    let Ok(m) = parse(Bytes::copy_from_slice(data)) else { return };
    let same = serialize(&m, &Edits::default());
    assert_eq!(&same[..], &data[..m.body.end as usize]);
    let _ = (m.top_via(), m.from(), m.to(), m.cseq(), m.call_id(), m.max_forwards());
    if let Some(u) = m.ruri() {
        let _ = siphon_sip::parse_uri(&u);
    }
    let edited = serialize(&m, &Edits { append: vec![Bytes::from_static(b"X-F: 1\r\n")], max_forwards: Some(1), ..Default::default() });
    parse(edited).expect("an edited message re-parses");
    if m.is_request() && m.check_required().is_ok() {
        let r = build_reply(&m, 404, b"Not Found", &ReplyOptions { to_tag: Some(b"t"), top_via: Some(b"SIP/2.0/UDP h;rport=1"), ..Default::default() });
        parse(r).expect("a reply parses");
    }
});
