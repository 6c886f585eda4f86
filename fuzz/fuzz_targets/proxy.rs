//! What the stateful proxy reads from the wire and from the script: our Via
//! branch parameter, the transaction matching key, the CANCEL and ACK built
//! from a request (and a reply), and a destination URI's RFC 3263 plan.
//! None may panic; what is built must parse.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use siphon_sip::{build_ack, build_cancel, parse, CancelReason, Method};

fuzz_target!(|data: &[u8]| {
    if let Some((id, salt, b)) = siphon_tm::id::parse_branch(data) {
        let again = siphon_tm::id::branch_param(id, salt, b);
        assert_eq!(siphon_tm::id::parse_branch(again.as_bytes()), Some((id, salt, b)));
    }
    let _ = siphon_core::dns::Destination::from_uri(data, None).map(|d| d.plan());
    let Ok(m) = parse(Bytes::copy_from_slice(data)) else { return };
    let _ = siphon_tm::id::server_key(&m, m.method());
    let _ = siphon_tm::id::request_index(&m, 7);
    if m.is_request() && m.check_required().is_ok() && m.method() == Method::Invite {
        if let Some(c) = build_cancel(&m, CancelReason::Copy(b"SIP;cause=200")) {
            parse(c).expect("a CANCEL we build parses");
        }
        let reply = siphon_sip::build_reply(&m, 486, b"Busy", &Default::default());
        if let Ok(r) = parse(reply) {
            if let Some(a) = build_ack(&m, &r) {
                parse(a).expect("an ACK we build parses");
            }
        }
    }
});
