//! Netstrings (D. J. Bernstein): `<decimal length>:<payload>,`.
//!
//! [`Decoder`] is streaming (feed any split of the input, get the same frames)
//! and bounded (a length over the limit is an error as soon as its digits are
//! read, before any payload is buffered). Peers differ in what they tolerate
//! (module-behaviour.md §0), so leading white space and leading zeros are
//! options; each module chooses its error policy (drop the connection, or
//! discard the buffer).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The default largest payload: 1 MiB.
pub const DEFAULT_MAX: usize = 1 << 20;

/// Why the input is not a netstring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetstringError {
    /// A byte that is neither a digit nor `:` in the length.
    #[error("expected a digit or `:` in the netstring length, found byte {0:#04x}")]
    BadLength(u8),
    /// `:` with no digits before it.
    #[error("netstring length is empty")]
    EmptyLength,
    /// `01:` (when not allowed).
    #[error("netstring length has a leading zero")]
    LeadingZero,
    /// The announced length is over the limit.
    #[error("netstring of {len} bytes is over the {max}-byte limit")]
    TooLong {
        /// Announced (or, while reading digits, at least) this many bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not followed by `,`.
    #[error("netstring payload not followed by `,` (found byte {0:#04x})")]
    MissingComma(u8),
}

/// A streaming netstring decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    max: usize,
    skip_whitespace: bool,
    allow_leading_zero: bool,
    /// The payload length once its `:` was read.
    pending: Option<usize>,
}

impl Decoder {
    /// A strict decoder (jsonrpcc's rules) for payloads up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Decoder {
            max,
            skip_whitespace: false,
            allow_leading_zero: false,
            pending: None,
        }
    }
    /// Skip white space before a length (evapi accepts it).
    pub fn skip_whitespace(mut self, yes: bool) -> Self {
        self.skip_whitespace = yes;
        self
    }
    /// Accept `01:` (evapi does).
    pub fn allow_leading_zero(mut self, yes: bool) -> Self {
        self.allow_leading_zero = yes;
        self
    }

    /// Takes one frame off the front of `buf`: `Ok(None)` means more bytes are
    /// needed (nothing consumed but a parsed length). After an error the
    /// decoder is reset; the caller drops the buffer or the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, NetstringError> {
        if self.pending.is_none() {
            if self.skip_whitespace {
                let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                buf.advance(n);
            }
            let mut len: usize = 0;
            let mut digits = 0;
            let mut colon = None;
            for (i, &b) in buf.iter().enumerate() {
                match b {
                    b'0'..=b'9' => {
                        if digits == 1 && len == 0 && !self.allow_leading_zero {
                            self.reset();
                            return Err(NetstringError::LeadingZero);
                        }
                        len = len.saturating_mul(10).saturating_add((b - b'0') as usize);
                        digits += 1;
                        if len > self.max {
                            self.reset();
                            return Err(NetstringError::TooLong { len, max: self.max });
                        }
                    }
                    b':' => {
                        colon = Some(i);
                        break;
                    }
                    other => {
                        self.reset();
                        return Err(NetstringError::BadLength(other));
                    }
                }
            }
            let Some(colon) = colon else { return Ok(None) };
            if digits == 0 {
                self.reset();
                return Err(NetstringError::EmptyLength);
            }
            buf.advance(colon + 1);
            self.pending = Some(len);
        }
        let len = self.pending.unwrap_or(0);
        if buf.len() < len + 1 {
            // Reserve once for the rest of the frame; never more than the limit allows.
            buf.reserve(len + 1 - buf.len());
            return Ok(None);
        }
        if buf[len] != b',' {
            let found = buf[len];
            self.reset();
            return Err(NetstringError::MissingComma(found));
        }
        let frame = buf.split_to(len).freeze();
        buf.advance(1);
        self.pending = None;
        Ok(Some(frame))
    }

    /// Forgets a partly read frame.
    pub fn reset(&mut self) {
        self.pending = None;
    }
}

/// Appends `payload` as a netstring.
pub fn encode(payload: &[u8], out: &mut BytesMut) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = payload.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.reserve(digits.len() - i + payload.len() + 2);
    out.put_slice(&digits[i..]);
    out.put_u8(b':');
    out.put_slice(payload);
    out.put_u8(b',');
}

/// `payload` as a netstring.
pub fn encode_to_bytes(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    encode(payload, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut Decoder, input: &[u8]) -> Result<Vec<Vec<u8>>, NetstringError> {
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn frames_partial_and_coalesced() {
        let mut d = Decoder::new(DEFAULT_MAX);
        assert_eq!(
            all(&mut d, b"5:hello,0:,3:abc,").unwrap(),
            vec![b"hello".to_vec(), vec![], b"abc".to_vec()]
        );
        let mut buf = BytesMut::from(&b"13:hello"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.put_slice(b", world!,2:x");
        assert_eq!(
            d.decode(&mut buf).unwrap().as_deref(),
            Some(&b"hello, world!"[..])
        );
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.put_slice(b"y,");
        assert_eq!(d.decode(&mut buf).unwrap().as_deref(), Some(&b"xy"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn the_seed_example_frame() {
        // evapi seed, example 1.7: the relayed event as it goes on the wire.
        let payload = b"{\n \"event\": \"test\",\n \"data\": { \"fU\": \"test\" }\n}";
        assert_eq!(&encode_to_bytes(payload)[..3], b"47:");
        let mut d = Decoder::new(DEFAULT_MAX);
        assert_eq!(
            all(&mut d, &encode_to_bytes(payload)).unwrap(),
            vec![payload.to_vec()]
        );
    }

    #[test]
    fn errors() {
        let mut d = Decoder::new(10);
        assert_eq!(all(&mut d, b"x:"), Err(NetstringError::BadLength(b'x')));
        assert_eq!(all(&mut d, b":a,"), Err(NetstringError::EmptyLength));
        assert_eq!(all(&mut d, b"01:a,"), Err(NetstringError::LeadingZero));
        assert_eq!(
            all(&mut d, b"11:"),
            Err(NetstringError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(
            all(&mut d, b"99999999999999999999999999:"),
            Err(NetstringError::TooLong { len: 99, max: 10 })
        );
        assert_eq!(
            all(&mut d, b"2:ab;"),
            Err(NetstringError::MissingComma(b';'))
        );
        let mut lenient = Decoder::new(10)
            .skip_whitespace(true)
            .allow_leading_zero(true);
        assert_eq!(
            all(&mut lenient, b" \r\n02:ab,\n1:c,").unwrap(),
            vec![b"ab".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn a_long_announced_length_is_refused_before_buffering() {
        let mut d = Decoder::new(DEFAULT_MAX);
        let mut buf = BytesMut::from(&b"2000000"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(NetstringError::TooLong { .. })
        ));
    }
}
