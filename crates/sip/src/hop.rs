//! Requests a proxy generates itself, hop by hop, for a branch it sent: the
//! CANCEL of a pending INVITE (RFC 3261 §9.1) and the ACK for a non-2xx final
//! reply (§17.1.1.3). Both are built from the INVITE *as it was sent on the
//! branch* (our Via on top, the branch's Request-URI and Route set), so the
//! next hop matches them to its server transaction.

use crate::msg::{HeaderName, SipMsg};
use bytes::{BufMut, Bytes, BytesMut};

/// A reason for a CANCEL (RFC 3326 `Reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason<'a> {
    /// No Reason header (the caller canceled, or a timeout).
    None,
    /// Another branch answered 200: `Reason: SIP;cause=200;text="Call completed elsewhere"`.
    CompletedElsewhere,
    /// Copy this `Reason` header value (the caller's CANCEL carried it).
    Copy(&'a [u8]),
    /// A final reply elsewhere ended the search (a 6xx): `Reason: SIP;cause=<code>`.
    Cause(u16),
}

/// The CANCEL for `invite`, the INVITE as sent on one branch (RFC 3261 §9.1):
/// its Request-URI, top Via only, Route set, Call-ID, From, To and CSeq
/// number, with Max-Forwards 70 and no body.
pub fn build_cancel(invite: &SipMsg, reason: CancelReason<'_>) -> Option<Bytes> {
    let ruri = invite.ruri()?;
    let mut out = BytesMut::with_capacity(invite.body.start as usize + 64);
    out.put_slice(b"CANCEL ");
    out.put_slice(&ruri);
    out.put_slice(b" SIP/2.0\r\n");
    top_via_line(&mut out, invite)?;
    copy_lines(&mut out, invite, &[HeaderName::Route]);
    copy_lines(
        &mut out,
        invite,
        &[HeaderName::From, HeaderName::To, HeaderName::CallId],
    );
    cseq_line(&mut out, invite, b"CANCEL")?;
    match reason {
        CancelReason::None => {}
        CancelReason::CompletedElsewhere => {
            out.put_slice(b"Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n")
        }
        CancelReason::Cause(code) => {
            out.put_slice(format!("Reason: SIP;cause={code}\r\n").as_bytes())
        }
        CancelReason::Copy(v) => {
            out.put_slice(b"Reason: ");
            out.put_slice(v);
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    Some(out.freeze())
}

/// The ACK for a non-2xx final `reply` to `invite`, the INVITE as sent on one
/// branch (RFC 3261 §17.1.1.3): the INVITE's Request-URI, top Via, Route
/// set, Call-ID, From and CSeq number; the reply's To (with its tag).
pub fn build_ack(invite: &SipMsg, reply: &SipMsg) -> Option<Bytes> {
    let ruri = invite.ruri()?;
    let mut out = BytesMut::with_capacity(invite.body.start as usize + 64);
    out.put_slice(b"ACK ");
    out.put_slice(&ruri);
    out.put_slice(b" SIP/2.0\r\n");
    top_via_line(&mut out, invite)?;
    copy_lines(&mut out, invite, &[HeaderName::Route]);
    copy_lines(&mut out, invite, &[HeaderName::From, HeaderName::CallId]);
    copy_lines(&mut out, reply, &[HeaderName::To]);
    cseq_line(&mut out, invite, b"ACK")?;
    out.put_slice(b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    Some(out.freeze())
}

/// `Via: <the first value of the first Via header>`.
fn top_via_line(out: &mut BytesMut, m: &SipMsg) -> Option<()> {
    let v = m.value(HeaderName::Via)?;
    let first = crate::split_commas(&v).into_iter().next()?;
    out.put_slice(b"Via: ");
    out.put_slice(&v[first.range()]);
    out.put_slice(b"\r\n");
    Some(())
}

/// Every header line of `m` with one of `names`, in message order, as received.
fn copy_lines(out: &mut BytesMut, m: &SipMsg, names: &[HeaderName]) {
    let b = m.buf();
    for h in m.headers.iter().filter(|h| names.contains(&h.name)) {
        out.put_slice(&b[h.line.range()]);
    }
}

/// `CSeq: <the request's number> <method>`.
fn cseq_line(out: &mut BytesMut, m: &SipMsg, method: &[u8]) -> Option<()> {
    let num = m.cseq()?.num;
    out.put_slice(format!("CSeq: {num} ").as_bytes());
    out.put_slice(method);
    out.put_slice(b"\r\n");
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    const INVITE: &str = "INVITE sip:bob@127.0.0.3:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsiphon1.0, SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKcaller\r\n\
Route: <sip:127.0.0.4;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Alice\" <sip:alice@127.0.0.2>;tag=a1\r\n\
To: <sip:bob@127.0.0.3>\r\n\
Call-ID: c1@127.0.0.2\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:alice@127.0.0.2:5062>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    fn invite() -> SipMsg {
        parse(Bytes::from_static(INVITE.as_bytes())).unwrap()
    }

    #[test]
    fn cancel_matches_the_branch_and_parses() {
        let c = build_cancel(&invite(), CancelReason::None).unwrap();
        let m = parse(c.clone()).unwrap();
        assert_eq!(m.method_bytes(), &b"CANCEL"[..]);
        assert_eq!(m.ruri().unwrap(), &b"sip:bob@127.0.0.3:5070"[..]);
        let via = m.top_via().unwrap();
        assert_eq!(via.branch.clone().unwrap(), &b"z9hG4bKsiphon1.0"[..]);
        assert_eq!(m.headers_named(b"Via").count(), 1, "only our Via");
        assert_eq!(
            m.value(HeaderName::Route).unwrap(),
            &b"<sip:127.0.0.4;lr>"[..]
        );
        assert_eq!(m.cseq().unwrap().num, 7);
        assert_eq!(m.value(HeaderName::CSeq).unwrap(), &b"7 CANCEL"[..]);
        assert!(m.to().unwrap().tag.is_none());
        assert!(m.check_required().is_ok());
        assert!(m.body_bytes().is_empty());
        assert!(m.headers_named(b"Reason").next().is_none());
    }

    #[test]
    fn cancel_reasons() {
        let c = build_cancel(&invite(), CancelReason::CompletedElsewhere).unwrap();
        let m = parse(c).unwrap();
        let r = m.headers_named(b"Reason").next().map(|h| m.header_value(h));
        assert_eq!(
            r.unwrap(),
            &b"SIP;cause=200;text=\"Call completed elsewhere\""[..]
        );
        let c = build_cancel(&invite(), CancelReason::Copy(b"Q.850;cause=16")).unwrap();
        let m = parse(c).unwrap();
        let r = m.headers_named(b"Reason").next().map(|h| m.header_value(h));
        assert_eq!(r.unwrap(), &b"Q.850;cause=16"[..]);
    }

    #[test]
    fn ack_takes_the_to_tag_from_the_reply() {
        let reply = parse(Bytes::from_static(
            b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsiphon1.0, SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKcaller\r\nFrom: \"Alice\" <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:bob@127.0.0.3>;tag=b9\r\nCall-ID: c1@127.0.0.2\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let a = build_ack(&invite(), &reply).unwrap();
        let m = parse(a).unwrap();
        assert_eq!(m.method_bytes(), &b"ACK"[..]);
        assert_eq!(m.ruri().unwrap(), &b"sip:bob@127.0.0.3:5070"[..]);
        assert_eq!(m.to().unwrap().tag.unwrap(), &b"b9"[..]);
        assert_eq!(m.from().unwrap().tag.unwrap(), &b"a1"[..]);
        assert_eq!(m.value(HeaderName::CSeq).unwrap(), &b"7 ACK"[..]);
        assert_eq!(m.headers_named(b"Via").count(), 1);
        assert_eq!(
            m.top_via().unwrap().branch.clone().unwrap(),
            &b"z9hG4bKsiphon1.0"[..]
        );
        assert_eq!(m.headers_named(b"Route").count(), 1);
        assert!(m.check_required().is_ok());
    }
}
