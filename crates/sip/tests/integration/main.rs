//! siphon-sip: parser, views, serialisation and framing over whole messages.

use bytes::Bytes;
use siphon_sip::*;

const INVITE: &str = "INVITE sip:bob@127.0.0.1:5060;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-a1;rport\r\n\
v: SIP/2.0/UDP 127.0.0.3:5080;branch=z9hG4bK-b2, SIP/2.0/TCP [::1]:5090;branch=z9hG4bK-c3\r\n\
Max-Forwards: 70\r\n\
f: \"Alice\" <sip:alice@127.0.0.2>;tag=ft1\r\n\
t: <sip:bob@127.0.0.1>\r\n\
i: call-1@127.0.0.2\r\n\
CSeq: 1 INVITE\r\n\
m: <sip:alice@127.0.0.2:5070>\r\n\
Subject: a folded\r\n  subject line\r\n\
Route: <sip:127.0.0.1;lr>, <sip:127.0.0.9;lr>\r\n\
c: application/sdp\r\n\
l: 5\r\n\
\r\n\
v=0\r\n";

fn msg(s: &str) -> SipMsg {
    parse(Bytes::copy_from_slice(s.as_bytes())).expect("parses")
}

#[test]
fn request_line_and_compact_headers() {
    let m = msg(INVITE);
    assert_eq!(m.method(), Method::Invite);
    assert_eq!(
        &m.ruri().unwrap()[..],
        b"sip:bob@127.0.0.1:5060;transport=udp"
    );
    assert_eq!(&m.call_id().unwrap()[..], b"call-1@127.0.0.2");
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.num, cseq.method), (1, Method::Invite));
    let via = m.top_via().unwrap();
    assert_eq!(&via.branch.clone().unwrap()[..], b"z9hG4bK-a1");
    assert_eq!(via.rport, Some(None));
    assert_eq!(&m.from().unwrap().tag.unwrap()[..], b"ft1");
    assert!(m.to().unwrap().tag.is_none());
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.headers_named(b"Via").count(), 2);
    assert_eq!(m.headers_named(b"v").count(), 2);
    assert_eq!(m.headers_named(b"contact").count(), 1);
    let subject = m.headers_named(b"subject").next().unwrap();
    assert_eq!(&m.header_value(subject)[..], b"a folded subject line");
    assert_eq!(&m.body_bytes()[..], b"v=0\r\n");
    m.check_required().unwrap();
    let vias = m.headers_named(b"via").nth(1).unwrap();
    let v = m.header_value(vias);
    assert_eq!(split_commas(&v).len(), 2);
    let third = parse_via(&v.slice(split_commas(&v)[1].range())).unwrap();
    assert_eq!((&third.host[..], third.port), (&b"::1"[..], Some(5090)));
}

#[test]
fn every_compact_form() {
    let m = msg(
        "OPTIONS sip:a@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\nt: <sip:b@h>\r\ni: cid\r\nm: <sip:a@h>\r\nk: timer\r\ns: hello\r\ne: gzip\r\nc: text/plain\r\nCSeq: 1 OPTIONS\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nl: 0\r\n\r\n",
    );
    m.check_required().unwrap();
    for (compact, full) in [
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("e", "Content-Encoding"),
        ("c", "Content-Type"),
        ("l", "Content-Length"),
    ] {
        assert_eq!(m.headers_named(compact.as_bytes()).count(), 1, "{compact}");
        assert_eq!(m.headers_named(full.as_bytes()).count(), 1, "{full}");
    }
    let rr = m.value(HeaderName::RecordRoute).unwrap();
    let routes: Vec<NameAddr> = split_commas(&rr)
        .into_iter()
        .map(|r| parse_name_addr(&rr.slice(r.range())).unwrap())
        .collect();
    assert_eq!(&routes[1].uri[..], b"sip:p2;lr");
    let contact = parse_name_addr(&m.value(HeaderName::Contact).unwrap()).unwrap();
    assert_eq!(&contact.uri[..], b"sip:a@h");
}

#[test]
fn response_line() {
    let m = msg(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.method(), Method::Invite);
    assert!(!m.is_request());
}

#[test]
fn unchanged_message_serialises_byte_identical() {
    let m = msg(INVITE);
    assert_eq!(&serialize(&m, &Edits::default())[..], INVITE.as_bytes());
}

#[test]
fn edits_are_applied_at_serialisation() {
    let m = msg(INVITE);
    let route = m
        .headers
        .iter()
        .position(|h| h.name == HeaderName::Route)
        .unwrap();
    let e = Edits {
        ruri: Some(Bytes::from_static(b"sip:carol@127.0.0.5")),
        remove: vec![route],
        append: vec![Bytes::from_static(b"X-Added: 1\r\n")],
        push_via: Some(Bytes::from_static(
            b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew",
        )),
        max_forwards: Some(69),
        ..Default::default()
    };
    let out = serialize(&m, &e);
    let m2 = parse(out.clone()).expect("re-parses");
    assert_eq!(&m2.ruri().unwrap()[..], b"sip:carol@127.0.0.5");
    assert_eq!(
        &m2.top_via().unwrap().branch.clone().unwrap()[..],
        b"z9hG4bKnew"
    );
    assert_eq!(m2.headers_named(b"via").count(), 3);
    assert_eq!(m2.max_forwards(), Some(69));
    assert!(m2.header(HeaderName::Route).is_none());
    assert_eq!(m2.headers_named(b"x-added").count(), 1);
    assert_eq!(&m2.body_bytes()[..], b"v=0\r\n");
    // Relaying a reply: pop our Via.
    let pop = serialize(
        &m2,
        &Edits {
            pop_via: true,
            ..Default::default()
        },
    );
    let m3 = parse(pop).unwrap();
    assert_eq!(
        &m3.top_via().unwrap().branch.clone().unwrap()[..],
        b"z9hG4bK-a1"
    );
}

#[test]
fn replies_copy_the_right_headers() {
    let m = msg(INVITE);
    let extra = [Bytes::from_static(b"Contact: <sip:x@127.0.0.9>\r\n")];
    let top = via_with_received(
        b"SIP/2.0/UDP 127.0.0.7:5070;branch=z9hG4bK-a1;rport",
        Some(b"127.0.0.2"),
        Some(5070),
    );
    assert_eq!(
        &top[..],
        b"SIP/2.0/UDP 127.0.0.7:5070;branch=z9hG4bK-a1;rport=5070;received=127.0.0.2"
    );
    let r = build_reply(
        &m,
        302,
        b"Moved Temporarily",
        &ReplyOptions {
            to_tag: Some(b"tt"),
            top_via: Some(&top),
            extra: &extra,
            ..Default::default()
        },
    );
    let rm = parse(r).expect("reply parses");
    assert_eq!(rm.status(), Some(302));
    assert_eq!(&rm.to().unwrap().tag.unwrap()[..], b"tt");
    assert_eq!(&rm.from().unwrap().tag.unwrap()[..], b"ft1");
    let top = rm.top_via().unwrap();
    assert_eq!(
        (top.rport, top.received.as_deref()),
        (Some(Some(5070)), Some(&b"127.0.0.2"[..]))
    );
    assert_eq!(rm.headers_named(b"via").count(), 2);
    assert_eq!(rm.headers_named(b"contact").count(), 1);
    assert_eq!(rm.call_id(), m.call_id());
    assert!(rm.body.is_empty());
    let trying = parse(build_reply(
        &m,
        100,
        b"Trying",
        &ReplyOptions {
            to_tag: Some(b"tt"),
            ..Default::default()
        },
    ))
    .unwrap();
    assert!(trying.to().unwrap().tag.is_none(), "no To-tag on 100");
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for bad in [
        "",
        "\r\n\r\n",
        "INVITE sip:a SIP/2.0\r\nVia: x\r\n",
        "HELLO\r\n\r\n",
        "INVITE  SIP/2.0\r\n\r\n",
        "SIP/2.0 99 Low\r\n\r\n",
        "SIP/2.0 2000 OK\r\n\r\n",
        "OPTIONS sip:a SIP/2.0\r\nno colon here\r\n\r\n",
        "OPTIONS sip:a SIP/2.0\r\n continuation first\r\n\r\n",
        "OPTIONS sip:a SIP/2.0\r\nContent-Length: x\r\n\r\n",
        "OPTIONS sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
    ] {
        assert!(
            parse(Bytes::copy_from_slice(bad.as_bytes())).is_err(),
            "{bad:?}"
        );
    }
    let m = msg("OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n");
    assert_eq!(m.check_required(), Err(ParseError::MissingHeader("From")));
}

#[test]
fn tcp_framing() {
    let one = INVITE.as_bytes();
    let mut two = b"\r\n\r\n".to_vec();
    two.extend_from_slice(one);
    two.extend_from_slice(one);
    let n = tcp_frame_len(&two, MAX_MESSAGE).unwrap().unwrap();
    assert_eq!(n, 4 + one.len());
    assert_eq!(
        tcp_frame_len(&two[n..], MAX_MESSAGE).unwrap(),
        Some(one.len())
    );
    for cut in 0..one.len() {
        let r = tcp_frame_len(&one[..cut], MAX_MESSAGE).unwrap();
        assert!(r.is_none() || cut == 0, "cut {cut}");
    }
    assert_eq!(tcp_frame_len(b"\r\n\r\n", MAX_MESSAGE), Ok(Some(4)));
    assert_eq!(
        tcp_frame_len(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n", MAX_MESSAGE),
        Err(FrameError::NoContentLength)
    );
    assert!(matches!(
        tcp_frame_len(&vec![b'a'; 70_000], MAX_MESSAGE),
        Err(FrameError::TooLarge(_))
    ));
    // Found by the fuzzer: a Content-Length near usize::MAX overflowed the frame end.
    assert!(matches!(
        tcp_frame_len(
            b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 18446744073709551615\r\n\r\n",
            MAX_MESSAGE
        ),
        Err(FrameError::TooLarge(_))
    ));
    assert!(matches!(
        tcp_frame_len(b"OPTIONS sip:a SIP/2.0\r\nl: 999999\r\n\r\n", MAX_MESSAGE),
        Err(FrameError::TooLarge(_))
    ));
}

#[test]
fn duplicate_content_length_is_refused_in_framing_and_parsing() {
    let head = "INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n";
    let inner = "BYE sip:a@h SIP/2.0\r\nContent-Length: 0\r\n\r\n";
    for (first, second) in [
        (
            "Content-Length: 0",
            format!("Content-Length: {}", inner.len()),
        ),
        (
            &*format!("l: {}", inner.len()),
            "Content-Length: 0".to_string(),
        ),
        // Equal values are refused too, as Kamailio does.
        ("Content-Length: 0", "content-length: 0".to_string()),
    ] {
        let raw = format!("{head}{first}\r\n{second}\r\n\r\n{inner}");
        assert_eq!(
            tcp_frame_len(raw.as_bytes(), MAX_MESSAGE),
            Err(FrameError::DuplicateContentLength),
            "{raw:?}"
        );
        assert_eq!(
            parse(Bytes::from(raw.clone())).unwrap_err(),
            ParseError::DuplicateContentLength
        );
        // The lenient parse (for the 400) reads the headers, the first length frames the body.
        let m = siphon_sip::parse_for_error_reply(Bytes::from(raw)).unwrap();
        assert!(m.check_required().is_ok());
    }
}

#[test]
fn framing_reads_headers_as_the_parser_does() {
    // A folded line is part of the header before it: not a Content-Length of its own.
    let folded =
        "OPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\nX-A: b\r\n Content-Length: 40\r\n\r\n";
    assert_eq!(
        tcp_frame_len(folded.as_bytes(), MAX_MESSAGE),
        Ok(Some(folded.len()))
    );
    assert_eq!(parse(Bytes::from(folded)).unwrap().body.len(), 0);
    // Headers end at the first empty line, LF or CRLF: a Content-Length after it is body.
    let lf = "OPTIONS sip:a SIP/2.0\nContent-Length: 4\n\nl: 9\r\n\r\n";
    assert_eq!(
        tcp_frame_len(lf.as_bytes(), MAX_MESSAGE),
        Ok(Some(lf.len() - 4))
    );
    assert_eq!(&parse(Bytes::from(lf)).unwrap().body_bytes()[..], b"l: 9");
    // The start line is not a header.
    assert_eq!(
        tcp_frame_len(b"l: 5 x SIP/2.0\r\nContent-Length: 0\r\n\r\n", MAX_MESSAGE),
        Ok(Some(37))
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9.!%*_+`'~-]{1,12}"
    }

    /// Header lines that move message boundaries: lengths in both spellings,
    /// folded lines, bare LF endings, empty lines.
    fn framing_line() -> impl Strategy<Value = String> {
        prop_oneof![
            (0usize..12).prop_map(|n| format!("Content-Length: {n}")),
            (0usize..12).prop_map(|n| format!("l: {n}")),
            (0usize..12).prop_map(|n| format!(" Content-Length: {n}")),
            Just("X-A: b".to_string()),
            Just(String::new()),
        ]
        .prop_flat_map(|l| prop_oneof![Just(format!("{l}\r\n")), Just(format!("{l}\n"))])
    }

    proptest! {
        /// Where the framer says a message ends is where the parser says its body ends.
        #[test]
        fn framing_and_parsing_agree_on_the_end(lines in proptest::collection::vec(framing_line(), 0..8), tail in "[a-z\r\n:]{0,30}") {
            let mut s = "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n".to_string();
            for l in &lines {
                s.push_str(l);
            }
            s.push_str("\r\n");
            s.push_str(&tail);
            if let Ok(Some(n)) = tcp_frame_len(s.as_bytes(), MAX_MESSAGE)
                && let Ok(m) = parse(Bytes::copy_from_slice(&s.as_bytes()[..n]))
            {
                prop_assert_eq!(m.body.end as usize, n, "{:?}", s);
            }
            if parse(Bytes::from(s.clone())).err() == Some(ParseError::DuplicateContentLength) {
                prop_assert_eq!(tcp_frame_len(s.as_bytes(), MAX_MESSAGE), Err(FrameError::DuplicateContentLength));
            }
        }

        #[test]
        fn parse_serialise_parse(user in token(), tag in token(), callid in token(), cseq in 1u32..1_000_000, extra in proptest::collection::vec((token(), "[ -~]{0,20}"), 0..6), body in "[ -~]{0,40}") {
            let mut s = format!("MESSAGE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK{tag}\r\nFrom: <sip:{user}@127.0.0.2>;tag={tag}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {callid}\r\nCSeq: {cseq} MESSAGE\r\n");
            for (n, v) in &extra {
                s.push_str(&format!("X-{n}: {}\r\n", v.trim()));
            }
            s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            let m = parse(Bytes::from(s.clone())).unwrap();
            prop_assert_eq!(&serialize(&m, &Edits::default())[..], s.as_bytes());
            prop_assert_eq!(m.cseq().unwrap().num, cseq);
            prop_assert_eq!(&m.from().unwrap().tag.unwrap()[..], tag.as_bytes());
            prop_assert_eq!(&m.call_id().unwrap()[..], callid.as_bytes());
            prop_assert_eq!(m.headers.len(), 6 + extra.len());
            let edited = serialize(&m, &Edits { append: vec![Bytes::from_static(b"X-New: y\r\n")], max_forwards: Some(9), ..Default::default() });
            let m2 = parse(edited).unwrap();
            prop_assert_eq!(m2.headers.len(), 7 + extra.len());
            prop_assert_eq!(&m2.body_bytes()[..], body.as_bytes());
        }
    }
}

#[test]
fn http_requests_parse_only_through_parse_http_request() {
    let raw = "POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    assert!(siphon_sip::parse(Bytes::from(raw)).is_err());
    let m = siphon_sip::parse_http_request(Bytes::from(raw)).unwrap();
    assert_eq!(&m.method_bytes()[..], b"POST");
    assert_eq!(m.ruri().as_deref(), Some(&b"/RPC"[..]));
    assert_eq!(&m.body_bytes()[..], b"{}");
    // A status line is not a request; a SIP request still parses.
    assert!(siphon_sip::parse_http_request(Bytes::from("HTTP/1.1 200 OK\r\n\r\n")).is_err());
    assert!(
        siphon_sip::parse_http_request(Bytes::from(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n"
        ))
        .is_ok()
    );
}
