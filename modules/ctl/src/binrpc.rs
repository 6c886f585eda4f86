//! binrpc, the binary RPC encoding of Kamailio's ctl module and `kamcmd`:
//! pure, no I/O.
//!
//! A packet is a header and a body. The header is `0xA1` (magic 0xA,
//! version 1), then one byte `type << 4 | (LL - 1) << 2 | (CL - 1)` (type 0
//! request, 1 reply, 3 fault), then the body length big-endian on LL bytes
//! and the cookie on CL bytes (1–4 each, the fewest that hold the value when
//! we write). A reply echoes its request's cookie.
//!
//! The body is a sequence of records. A record starts with one byte
//! `S << 7 | size << 4 | type`: with S clear `size` is the value's length in
//! bytes, with S set it is the length of a big-endian length field that
//! follows (doubles read all four bits as the length). Types: 0 int (32
//! bits, the fewest bytes, 0 has none), 1 str (NUL-terminated, the length
//! counts the NUL), 2 double (a 64-bit integer holding the value × 1000),
//! 3 struct, 4 array, 5 a struct member's name (a str), 6 bytes (no NUL).
//! A struct or array is a start record (`0x03`, `0x04`), its items, and an
//! end record (S set, length 0: `0x83`, `0x84`); a struct's items are
//! name + value pairs, or bare values where Kamailio puts an array in a
//! struct. A request's body is the method name (a str) and its params; a
//! reply's, the values the command added; a fault's, an int code and a str
//! message.

/// The first byte of every packet: magic 0xA, version 1.
pub const MAGIC_VERSION: u8 = 0xA1;
/// The longest header: 2 fixed bytes, 4 of length, 4 of cookie.
pub const MAX_HEADER: usize = 10;
/// How deep structs and arrays may nest in what we decode.
pub const MAX_DEPTH: usize = 32;
/// Fault messages are cut to this many bytes (Kamailio's `MAX_FAULT_LEN` - 1).
pub const MAX_FAULT_MESSAGE: usize = 255;

const T_INT: u8 = 0;
const T_STR: u8 = 1;
const T_DOUBLE: u8 = 2;
const T_STRUCT: u8 = 3;
const T_ARRAY: u8 = 4;
const T_AVP: u8 = 5;
const T_BYTES: u8 = 6;

/// What a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call: method and params.
    Request,
    /// A command's values.
    Reply,
    /// A failure: code and message.
    Fault,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Reply => 1,
            Kind::Fault => 3,
        }
    }
}

/// A parsed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request, reply or fault.
    pub kind: Kind,
    /// Bytes of body after the header.
    pub body_len: usize,
    /// The caller's cookie, echoed in the answer.
    pub cookie: u32,
    /// Bytes of header.
    pub len: usize,
}

impl Header {
    /// Header and body.
    pub fn total(&self) -> usize {
        self.len + self.body_len
    }
}

/// Why bytes are not binrpc (the texts are Kamailio's, which kamcmd users know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a binrpc header: bad magic or version, unknown type, negative length.
    #[error("corrupted packet")]
    BadPacket,
    /// A record whose type is unknown or not allowed where it is.
    #[error("record doesn't match type")]
    Type,
    /// A record that breaks the structure: a stray end, a bad start.
    #[error("bad record")]
    Record,
    /// A record longer than what is left of the body.
    #[error("more data needed")]
    Truncated,
    /// Structs and arrays nested deeper than [`MAX_DEPTH`].
    #[error("nested too deep")]
    TooDeep,
    /// What is being encoded is over the limit given to the [`Encoder`].
    #[error("buffer too small (overflow)")]
    Overflow,
}

/// Reads the header at the start of `buf`: `Ok(None)` while it is incomplete.
/// A wrong first byte is an error at once, so garbage is told early.
pub fn header(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != MAGIC_VERSION {
        return Err(Error::BadPacket);
    }
    let Some(&flags) = buf.get(1) else {
        return Ok(None);
    };
    let kind = match flags >> 4 {
        0 => Kind::Request,
        1 => Kind::Reply,
        3 => Kind::Fault,
        _ => return Err(Error::BadPacket),
    };
    let ll = usize::from((flags >> 2) & 3) + 1;
    let cl = usize::from(flags & 3) + 1;
    let len = 2 + ll + cl;
    if buf.len() < len {
        return Ok(None);
    }
    let body_len = be(&buf[2..2 + ll]);
    // Kamailio reads the length into a signed int: a negative one is corrupt.
    if body_len > i32::MAX as u64 {
        return Err(Error::BadPacket);
    }
    Ok(Some(Header {
        kind,
        body_len: body_len as usize,
        cookie: be(&buf[2 + ll..len]) as u32,
        len,
    }))
}

/// Big-endian, keeping the low 64 bits of longer fields (as C's shifts do).
fn be(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |acc, &x| acc.wrapping_shl(8) | u64::from(x))
}

/// The fewest big-endian bytes holding `v` (none for 0).
fn min_be(v: u64) -> ([u8; 8], usize) {
    let bytes = v.to_be_bytes();
    let n = 8 - (v.leading_zeros() / 8) as usize;
    (bytes, n)
}

/// The header of a packet of `kind` with `body_len` bytes of body.
pub fn header_bytes(kind: Kind, body_len: usize, cookie: u32) -> Vec<u8> {
    let (lb, ll) = min_be(body_len as u64);
    let (cb, cl) = min_be(u64::from(cookie));
    let (ll, cl) = (ll.max(1), cl.max(1));
    let mut h = Vec::with_capacity(2 + ll + cl);
    h.push(MAGIC_VERSION);
    h.push(kind.code() << 4 | ((ll - 1) as u8) << 2 | (cl - 1) as u8);
    h.extend_from_slice(&lb[8 - ll..]);
    h.extend_from_slice(&cb[8 - cl..]);
    h
}

/// A whole packet: header then `body`.
pub fn packet(kind: Kind, cookie: u32, body: &[u8]) -> Vec<u8> {
    let mut p = header_bytes(kind, body.len(), cookie);
    p.extend_from_slice(body);
    p
}

/// A fault packet: `code` and `message` (cut to [`MAX_FAULT_MESSAGE`] bytes
/// at a character boundary).
pub fn fault(cookie: u32, code: i32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_FAULT_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut e = Encoder::new(usize::MAX);
    // Unbounded encoder: these cannot fail.
    let _ = e.int(code);
    let _ = e.str(&message[..end]);
    packet(Kind::Fault, cookie, &e.finish())
}

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 32-bit integer.
    Int(i32),
    /// Text (invalid UTF-8 is replaced).
    Str(String),
    /// A number with up to 3 decimals.
    Double(f64),
    /// Members in order.
    Struct(Vec<Member>),
    /// Items in order.
    Array(Vec<Value>),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// A struct's item: a named value, or a bare one (Kamailio's arrays inside structs).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The member's name; `None` for a bare value.
    pub name: Option<String>,
    /// Its value.
    pub value: Value,
}

/// Decodes a body: every record in order.
pub fn decode_body(body: &[u8]) -> Result<Vec<Value>, Error> {
    let mut r = Reader { buf: body, pos: 0 };
    let mut out = Vec::new();
    while r.pos < body.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

/// One record's first byte, decoded.
struct Head {
    ty: u8,
    /// The S bit (for structs and arrays: an end record).
    end: bool,
    len: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn peek(&self) -> Result<u8, Error> {
        self.buf.get(self.pos).copied().ok_or(Error::Truncated)
    }

    fn head(&mut self) -> Result<Head, Error> {
        let b = self.take(1)?[0];
        let (ty, size) = (b & 0xf, usize::from(b >> 4));
        if ty == T_DOUBLE {
            return Ok(Head {
                ty,
                end: false,
                len: size,
            });
        }
        if size & 8 == 0 {
            return Ok(Head {
                ty,
                end: false,
                len: size,
            });
        }
        let len = be(self.take(size & 7)?);
        if len > (self.buf.len() - self.pos) as u64 {
            return Err(Error::Truncated);
        }
        Ok(Head {
            ty,
            end: true,
            len: len as usize,
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let h = self.head()?;
        self.value_of(h, depth)
    }

    fn value_of(&mut self, h: Head, depth: usize) -> Result<Value, Error> {
        match h.ty {
            T_INT => Ok(Value::Int(be(self.take(h.len)?) as u32 as i32)),
            T_STR => {
                let s = self.take(h.len)?;
                let s = s.strip_suffix(&[0]).unwrap_or(s);
                Ok(Value::Str(String::from_utf8_lossy(s).into_owned()))
            }
            T_BYTES => Ok(Value::Bytes(self.take(h.len)?.to_vec())),
            T_DOUBLE => Ok(Value::Double(be(self.take(h.len)?) as i64 as f64 / 1000.0)),
            T_STRUCT | T_ARRAY => {
                if h.end || h.len != 0 {
                    return Err(Error::Record);
                }
                if depth >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                if h.ty == T_STRUCT {
                    self.members(depth + 1).map(Value::Struct)
                } else {
                    self.items(depth + 1).map(Value::Array)
                }
            }
            // A member's name outside a struct, or an unknown type.
            _ => Err(Error::Type),
        }
    }

    /// Whether the next record ends a struct or array of type `ty`.
    fn at_end(&mut self, ty: u8) -> Result<bool, Error> {
        let b = self.peek()?;
        if b & 0x80 == 0 || b & 0xf != ty {
            return Ok(false);
        }
        let h = self.head()?;
        if h.len != 0 {
            return Err(Error::Record);
        }
        Ok(true)
    }

    fn members(&mut self, depth: usize) -> Result<Vec<Member>, Error> {
        let mut out = Vec::new();
        while !self.at_end(T_STRUCT)? {
            let h = self.head()?;
            if h.ty == T_AVP {
                let name = self.take(h.len)?;
                let name = name.strip_suffix(&[0]).unwrap_or(name);
                let name = String::from_utf8_lossy(name).into_owned();
                let value = self.value(depth)?;
                out.push(Member {
                    name: Some(name),
                    value,
                });
            } else {
                let value = self.value_of(h, depth)?;
                out.push(Member { name: None, value });
            }
        }
        Ok(out)
    }

    fn items(&mut self, depth: usize) -> Result<Vec<Value>, Error> {
        let mut out = Vec::new();
        while !self.at_end(T_ARRAY)? {
            out.push(self.value(depth)?);
        }
        Ok(out)
    }
}

/// Writes records into a body that may not grow past a limit: every write
/// past it fails with [`Error::Overflow`], so a reply too large for the
/// client is found without building all of it.
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
    limit: usize,
}

impl Encoder {
    /// An empty body of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Encoder {
            buf: Vec::new(),
            limit,
        }
    }

    /// The body so far.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        if self.limit - self.buf.len() < b.len() {
            return Err(Error::Overflow);
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }

    /// An int: the fewest bytes.
    pub fn int(&mut self, i: i32) -> Result<(), Error> {
        let (b, n) = min_be(u64::from(i as u32));
        self.put(&[(n as u8) << 4 | T_INT])?;
        self.put(&b[8 - n..])
    }

    /// A double, sent as the integer `d × 1000` (3 decimals, rounded; saturating).
    pub fn double(&mut self, d: f64) -> Result<(), Error> {
        let (b, n) = min_be((d * 1000.0).round() as i64 as u64);
        self.put(&[(n as u8) << 4 | T_DOUBLE])?;
        self.put(&b[8 - n..])
    }

    fn text(&mut self, ty: u8, s: &[u8], nul: bool) -> Result<(), Error> {
        let l = s.len() + usize::from(nul);
        if l < 8 {
            self.put(&[(l as u8) << 4 | ty])?;
        } else {
            let (b, n) = min_be(l as u64);
            self.put(&[(8 | n as u8) << 4 | ty])?;
            self.put(&b[8 - n..])?;
        }
        self.put(s)?;
        if nul {
            self.put(&[0])?;
        }
        Ok(())
    }

    /// A str (NUL-terminated on the wire).
    pub fn str(&mut self, s: &str) -> Result<(), Error> {
        self.text(T_STR, s.as_bytes(), true)
    }

    /// Bytes (no NUL).
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.text(T_BYTES, b, false)
    }

    /// A struct member's name; its value is written next.
    pub fn name(&mut self, s: &str) -> Result<(), Error> {
        self.text(T_AVP, s.as_bytes(), true)
    }

    /// Starts a struct.
    pub fn start_struct(&mut self) -> Result<(), Error> {
        self.put(&[T_STRUCT])
    }

    /// Ends a struct.
    pub fn end_struct(&mut self) -> Result<(), Error> {
        self.put(&[0x80 | T_STRUCT])
    }

    /// Starts an array.
    pub fn start_array(&mut self) -> Result<(), Error> {
        self.put(&[T_ARRAY])
    }

    /// Ends an array.
    pub fn end_array(&mut self) -> Result<(), Error> {
        self.put(&[0x80 | T_ARRAY])
    }

    /// Any decoded value, as it was.
    pub fn value(&mut self, v: &Value) -> Result<(), Error> {
        match v {
            Value::Int(i) => self.int(*i),
            Value::Str(s) => self.str(s),
            Value::Double(d) => self.double(*d),
            Value::Bytes(b) => self.bytes(b),
            Value::Struct(members) => {
                self.start_struct()?;
                for m in members {
                    if let Some(n) = &m.name {
                        self.name(n)?;
                    }
                    self.value(&m.value)?;
                }
                self.end_struct()
            }
            Value::Array(items) => {
                self.start_array()?;
                for v in items {
                    self.value(v)?;
                }
                self.end_array()
            }
        }
    }
}

/// A request packet: `method` and `params` (what kamcmd sends).
pub fn request(cookie: u32, method: &str, params: &[Value]) -> Vec<u8> {
    let mut e = Encoder::new(usize::MAX);
    // Unbounded encoder: these cannot fail.
    let _ = e.str(method);
    for p in params {
        let _ = e.value(p);
    }
    packet(Kind::Request, cookie, &e.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(f: impl FnOnce(&mut Encoder) -> Result<(), Error>) -> Vec<u8> {
        let mut e = Encoder::new(usize::MAX);
        f(&mut e).unwrap();
        e.finish()
    }

    #[test]
    fn records_are_written_as_kamailio_writes_them() {
        // The examples of Kamailio's binrpc.h.
        assert_eq!(body(|e| e.int(0x1234)), [0x20, 0x12, 0x34]);
        assert_eq!(body(|e| e.int(7)), [0x10, 0x07]);
        assert_eq!(body(|e| e.int(0)), [0x00]);
        assert_eq!(body(|e| e.int(-1)), [0x40, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(body(|e| e.str("abcdef")), b"\x71abcdef\x00");
        assert_eq!(body(|e| e.str("abcdefhij")), b"\x91\x0aabcdefhij\x00");
        assert_eq!(body(|e| e.str("")), [0x11, 0x00]);
        assert_eq!(body(|e| e.bytes(b"abcdef")), b"\x66abcdef");
        assert_eq!(
            body(|e| {
                e.start_struct()?;
                e.name("intval")?;
                e.int(3)?;
                e.name("s")?;
                e.str("abc")?;
                e.end_struct()
            }),
            b"\x03\x75intval\x00\x10\x03\x25s\x00\x41abc\x00\x83"
        );
        // 1.5 is 1500 = 0x05dc; -1.5 takes all 8 bytes (the size nibble is 8).
        assert_eq!(body(|e| e.double(1.5)), [0x22, 0x05, 0xdc]);
        assert_eq!(body(|e| e.double(-1.5))[0], 0x82);
    }

    #[test]
    fn headers_use_the_fewest_bytes_and_echo_the_cookie() {
        // What Kamailio answered kamcmd's core.uptime (cookie 0x309976fe, 82 bytes).
        assert_eq!(
            header_bytes(Kind::Reply, 82, 0x309976fe),
            [0xa1, 0x13, 0x52, 0x30, 0x99, 0x76, 0xfe]
        );
        assert_eq!(header_bytes(Kind::Fault, 0, 0), [0xa1, 0x30, 0x00, 0x00]);
        let h = header(&header_bytes(Kind::Request, 70_000, 0x0102))
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Header {
                kind: Kind::Request,
                body_len: 70_000,
                cookie: 0x0102,
                len: 7
            }
        );
    }

    #[test]
    fn incomplete_headers_wait_and_garbage_is_told_at_once() {
        assert_eq!(header(b""), Ok(None));
        assert_eq!(header(&[0xa1]), Ok(None));
        assert_eq!(header(&[0xa1, 0x0f, 0x00]), Ok(None));
        assert_eq!(header(b"hello"), Err(Error::BadPacket));
        assert_eq!(header(&[0xa1, 0x20, 0, 0]), Err(Error::BadPacket));
        // A length Kamailio would read as negative.
        assert_eq!(
            header(&[0xa1, 0x0c, 0xff, 0xff, 0xff, 0x00, 0x07]),
            Err(Error::BadPacket)
        );
    }

    #[test]
    fn a_kamcmd_request_decodes() {
        // kamcmd core.echo a 1 2.5 s:7
        let p = request(
            9,
            "core.echo",
            &[
                Value::Str("a".into()),
                Value::Int(1),
                Value::Double(2.5),
                Value::Str("7".into()),
            ],
        );
        let h = header(&p).unwrap().unwrap();
        assert_eq!(h.total(), p.len());
        let v = decode_body(&p[h.len..]).unwrap();
        assert_eq!(
            v,
            [
                Value::Str("core.echo".into()),
                Value::Str("a".into()),
                Value::Int(1),
                Value::Double(2.5),
                Value::Str("7".into())
            ]
        );
    }

    #[test]
    fn longer_forms_and_nesting_decode() {
        // 0x1234 written with an explicit length, twice.
        assert_eq!(
            decode_body(&[0x90, 0x02, 0x12, 0x34]),
            Ok(vec![Value::Int(0x1234)])
        );
        assert_eq!(
            decode_body(&[0xa0, 0x00, 0x02, 0x12, 0x34]),
            Ok(vec![Value::Int(0x1234)])
        );
        // Kamailio's array in a struct: a named struct holding bare values.
        let v = Value::Struct(vec![Member {
            name: Some("Domains".into()),
            value: Value::Struct(vec![
                Member {
                    name: None,
                    value: Value::Int(1),
                },
                Member {
                    name: None,
                    value: Value::Array(vec![Value::Str("x".into()), Value::Bytes(vec![0, 1])]),
                },
            ]),
        }]);
        let b = body(|e| e.value(&v));
        assert_eq!(decode_body(&b), Ok(vec![v]));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(decode_body(&[0x83]), Err(Error::Record));
        assert_eq!(decode_body(&[0x03, 0x10]), Err(Error::Truncated));
        assert_eq!(decode_body(&[0x71, b'a']), Err(Error::Truncated));
        assert_eq!(decode_body(&[0x25, b'x', 0]), Err(Error::Type));
        assert_eq!(decode_body(&[0x0f]), Err(Error::Type));
        // The length field says more than there is.
        assert_eq!(
            decode_body(&[0xb1, 0xff, 0xff, b'a']),
            Err(Error::Truncated)
        );
        assert_eq!(decode_body(&[0x03; 40]), Err(Error::TooDeep));
    }

    #[test]
    fn the_encoder_stops_at_its_limit() {
        let mut e = Encoder::new(8);
        e.str("abc").unwrap();
        assert_eq!(e.str("defgh"), Err(Error::Overflow));
    }

    #[test]
    fn faults_carry_code_and_message() {
        let p = fault(0x2d39, 500, "command nope.x not found");
        let h = header(&p).unwrap().unwrap();
        assert_eq!(h.kind, Kind::Fault);
        assert_eq!(h.cookie, 0x2d39);
        assert_eq!(
            decode_body(&p[h.len..]).unwrap(),
            [
                Value::Int(500),
                Value::Str("command nope.x not found".into())
            ]
        );
        let long = "é".repeat(200);
        let p = fault(1, 400, &long);
        let h = header(&p).unwrap().unwrap();
        let Value::Str(m) = &decode_body(&p[h.len..]).unwrap()[1] else {
            panic!("a str")
        };
        assert_eq!(m.len(), 254);
    }
}
