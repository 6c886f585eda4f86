//! Transaction identities: Kamailio's hash index, `$T(id_index)`/`$T(id_label)`,
//! the Via branch parameter of our branches, and the RFC 3261 §17.2.3 key
//! that matches a caller's retransmissions, ACKs and CANCELs.

use bytes::Bytes;
use siphon_sip::{Method, SipMsg};

pub use siphon_sip::TxId;

/// The magic cookie every RFC 3261 branch starts with.
pub const MAGIC: &[u8] = b"z9hG4bK";

/// Kamailio's hash index of a request: Call-ID and CSeq number (not the
/// method), into 65536 buckets. `seed` keys it per process.
pub fn hash_index(call_id: &[u8], cseq: u32, seed: u64) -> u32 {
    let mut x = seed ^ 0xcbf2_9ce4_8422_2325;
    for &b in call_id.iter().chain(cseq.to_be_bytes().iter()) {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    ((x >> 32) ^ x) as u32 & 0xffff
}

/// The hash index of a request, from its Call-ID and CSeq number.
pub fn request_index(msg: &SipMsg, seed: u64) -> Option<u32> {
    Some(hash_index(&msg.call_id()?, msg.cseq()?.num, seed))
}

/// Our branch parameter: `z9hG4bK` + the index in reversed hex + `.` +
/// label and salt in hex + `.` + the branch number in reversed hex — the
/// shape of Kamailio's, so traces look alike and a reply names its shard,
/// transaction and branch without a lookup table.
pub fn branch_param(id: TxId, salt: u32, branch: u16) -> String {
    let mut s = String::with_capacity(40);
    s.push_str("z9hG4bK");
    rev_hex(&mut s, id.index);
    s.push('.');
    s.push_str(&format!("{:08x}{salt:08x}", id.label));
    s.push('.');
    rev_hex(&mut s, branch as u32);
    s
}

/// What [`branch_param`] encoded: (id, salt, branch), or `None` when the
/// branch is not one of ours (a stateless forward's, another proxy's).
pub fn parse_branch(b: &[u8]) -> Option<(TxId, u32, u16)> {
    let rest = b.strip_prefix(MAGIC)?;
    let mut parts = rest.split(|&c| c == b'.');
    let index = from_rev_hex(parts.next()?)?;
    let mid = parts.next()?;
    let branch = from_rev_hex(parts.next()?)?;
    if parts.next().is_some() || mid.len() != 16 || index > 0xffff || branch > u16::MAX as u32 {
        return None;
    }
    let label = from_hex(&mid[..8])?;
    let salt = from_hex(&mid[8..])?;
    Some((TxId { index, label }, salt, branch as u16))
}

/// Hex digits, least significant first, no leading zeros ("0" for 0).
fn rev_hex(out: &mut String, mut v: u32) {
    loop {
        out.push(char::from_digit(v & 0xf, 16).unwrap_or('0'));
        v >>= 4;
        if v == 0 {
            break;
        }
    }
}

/// Eight hex digits, most significant first.
fn from_hex(s: &[u8]) -> Option<u32> {
    s.iter()
        .try_fold(0u32, |v, &c| Some((v << 4) | (c as char).to_digit(16)?))
}

fn from_rev_hex(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    let mut v = 0u32;
    for (i, &c) in s.iter().enumerate() {
        let d = (c as char).to_digit(16)?;
        v |= d << (4 * i);
    }
    Some(v)
}

/// The RFC 3261 §17.2.3 key of a received request: top-Via branch + sent-by +
/// method, where an ACK looks up its INVITE and `as_method` lets a CANCEL
/// look up the INVITE it cancels; for pre-RFC 3261 branches Call-ID, CSeq
/// number, From-tag and the Via host.
pub fn server_key(msg: &SipMsg, as_method: Method) -> Option<Bytes> {
    let via = msg.top_via()?;
    let m: &[u8] = match as_method {
        Method::Invite | Method::Ack => b"INVITE",
        Method::Cancel => b"CANCEL",
        _ => {
            return Some(key_join(&[
                &via.branch.clone().unwrap_or_default(),
                &via.host,
                &msg.method_bytes(),
                &msg.call_id().unwrap_or_default(),
            ]));
        }
    };
    match via.branch.as_ref().filter(|b| b.starts_with(MAGIC)) {
        Some(b) => Some(key_join(&[
            b,
            &via.host,
            &via.port.unwrap_or(0).to_string().into_bytes(),
            m,
        ])),
        None => {
            let cseq = msg.cseq()?.num.to_string();
            let ftag = msg.from().and_then(|f| f.tag).unwrap_or_default();
            Some(key_join(&[
                &msg.call_id()?,
                cseq.as_bytes(),
                &ftag,
                &via.host,
                m,
            ]))
        }
    }
}

fn key_join(parts: &[&[u8]]) -> Bytes {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        v.extend_from_slice(p);
        v.push(b'|');
    }
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trips_and_looks_like_kamailios() {
        let id = TxId {
            index: 0xa3d9,
            label: 7,
        };
        let b = branch_param(id, 0xdead_beef, 2);
        assert_eq!(b, "z9hG4bK9d3a.00000007deadbeef.2");
        assert_eq!(parse_branch(b.as_bytes()), Some((id, 0xdead_beef, 2)));
        let z = TxId { index: 0, label: 0 };
        assert_eq!(
            parse_branch(branch_param(z, 0, 0).as_bytes()),
            Some((z, 0, 0))
        );
    }

    #[test]
    fn foreign_branches_are_not_ours() {
        for b in [
            &b"z9hG4bKabc"[..],
            b"z9hG4bK1.2.3",
            b"z9hG4bKsiphon1234",
            b"9d3a.00000007deadbeef.2",
            b"z9hG4bKfffff.00000007deadbeef.2",
            b"z9hG4bK9d3a.00000007deadbeef.2.1",
            b"z9hG4bK9d3a.0000000xdeadbeef.2",
        ] {
            assert_eq!(parse_branch(b), None, "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn invite_cancel_and_ack_share_the_index() {
        let a = hash_index(b"call-1@h", 7, 42);
        assert_eq!(a, hash_index(b"call-1@h", 7, 42));
        assert!(a <= 0xffff);
        assert_ne!(a, hash_index(b"call-1@h", 8, 42));
    }
}
