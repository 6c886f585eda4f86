//! Compiled pseudo-variables, format strings and transformations.

use crate::api::{PvAccess, PvIdx};
use crate::interp::Exec;
use crate::value::Value;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// A pseudo-variable resolved at load: its storage, index and transformations.
#[derive(Clone)]
pub struct Pv {
    pub(crate) kind: PvKind,
    pub(crate) index: PvIndexC,
    pub(crate) trans: Vec<Trans>,
    pub(crate) text: Arc<str>,
}

impl std::fmt::Debug for Pv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pv({})", self.text)
    }
}

impl Pv {
    /// The PV as written.
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The AVP name, when this is `$avp(name)`.
    pub fn avp_name(&self) -> Option<&str> {
        match &self.kind {
            PvKind::Avp(n) => Some(n),
            _ => None,
        }
    }
    /// Whether assignments to it are possible.
    pub fn writable(&self) -> bool {
        self.trans.is_empty()
            && match &self.kind {
                PvKind::Var(_) | PvKind::Avp(_) | PvKind::Shv(_) => true,
                PvKind::Null | PvKind::Rc => false,
                PvKind::Dyn(a) => a.writable(),
            }
    }
}

#[derive(Clone)]
pub(crate) enum PvKind {
    /// `$null`.
    Null,
    /// `$var(name)`: a slot of the context.
    Var(usize),
    /// `$avp(name)`.
    Avp(Arc<str>),
    /// `$shv(name)`: a slot of the program's shared table.
    Shv(usize),
    /// `$rc`, `$retcode`.
    Rc,
    /// A class from the core or a module.
    Dyn(Arc<dyn PvAccess>),
}

#[derive(Clone, Debug)]
pub(crate) enum PvIndexC {
    Default,
    At(i64),
    All,
    Pv(Box<Pv>),
}

/// A string with PVs expanded at run time, parsed once at load.
#[derive(Clone, Debug, Default)]
pub struct Fmt {
    pub(crate) parts: Vec<FmtPart>,
}

#[derive(Clone, Debug)]
pub(crate) enum FmtPart {
    Lit(Bytes),
    Pv(Pv),
}

impl Fmt {
    /// A constant format.
    pub fn constant(b: Bytes) -> Fmt {
        Fmt {
            parts: vec![FmtPart::Lit(b)],
        }
    }
    /// The text when the format has no PV.
    pub fn as_const(&self) -> Option<Bytes> {
        match self.parts.as_slice() {
            [] => Some(Bytes::new()),
            [FmtPart::Lit(b)] => Some(b.clone()),
            _ => None,
        }
    }
    /// The pseudo-variable when the format is exactly one (`"$avp(x)"`):
    /// a module parameter naming a PV to write (dispatcher's `setid_pvname`).
    pub fn as_pv(&self) -> Option<&Pv> {
        match self.parts.as_slice() {
            [FmtPart::Pv(p)] => Some(p),
            _ => None,
        }
    }
}

/// A transformation step.
#[derive(Clone, Debug)]
pub(crate) struct Trans {
    pub(crate) op: TrOp,
    pub(crate) params: Vec<TrArg>,
}

#[derive(Clone, Debug)]
pub(crate) enum TrArg {
    Int(i64),
    Str(Bytes),
    Pv(Pv),
}

/// The transformations siphon knows, with their parameter counts.
pub(crate) const TRANSFORMS: &[(&str, TrOp, usize)] = &[
    ("s.len", TrOp::Len, 0),
    ("s.int", TrOp::Int, 0),
    ("s.substr", TrOp::Substr, 2),
    ("s.select", TrOp::Select, 2),
    ("s.tolower", TrOp::ToLower, 0),
    ("s.toupper", TrOp::ToUpper, 0),
    ("s.strip", TrOp::Strip, 1),
    ("s.striptail", TrOp::StripTail, 1),
    ("s.trim", TrOp::Trim, 0),
    ("s.ltrim", TrOp::LTrim, 0),
    ("s.rtrim", TrOp::RTrim, 0),
    ("s.escape.param", TrOp::EscapeParam, 0),
    ("s.unescape.param", TrOp::UnescapeParam, 0),
    ("s.md5", TrOp::Md5, 0),
    ("s.numeric", TrOp::Numeric, 0),
    ("s.encode.hexa", TrOp::EncodeHexa, 0),
    ("s.decode.hexa", TrOp::DecodeHexa, 0),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrOp {
    Len,
    Int,
    Substr,
    Select,
    ToLower,
    ToUpper,
    Strip,
    StripTail,
    Trim,
    LTrim,
    RTrim,
    EscapeParam,
    UnescapeParam,
    Md5,
    Numeric,
    EncodeHexa,
    DecodeHexa,
}

impl TrArg {
    fn int(&self, ex: &mut Exec<'_>) -> Option<i64> {
        match self {
            TrArg::Int(n) => Some(*n),
            TrArg::Str(s) => crate::value::parse_int(s),
            TrArg::Pv(p) => ex.get_pv(p).to_int(),
        }
    }
    fn bytes(&self, ex: &mut Exec<'_>) -> Bytes {
        match self {
            TrArg::Int(n) => Bytes::from(n.to_string()),
            TrArg::Str(s) => s.clone(),
            TrArg::Pv(p) => ex.get_pv(p).to_bytes(),
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 `param-unreserved` and `unreserved`: what a URI parameter may hold unescaped.
fn param_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:&+$".contains(&b)
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl Trans {
    /// Applies the transformation; `Null` means it failed (as in Kamailio, the PV reads as `$null`).
    pub(crate) fn apply(&self, v: Value, ex: &mut Exec<'_>) -> Value {
        let s = v.to_bytes();
        let b: &[u8] = &s;
        match self.op {
            TrOp::Len => Value::Int(b.len() as i64),
            TrOp::Int => match v {
                Value::Int(n) => Value::Int(n),
                _ => crate::value::parse_int(b).map_or(Value::Null, Value::Int),
            },
            TrOp::Substr => {
                let (Some(off), Some(len)) = (self.params[0].int(ex), self.params[1].int(ex))
                else {
                    return Value::Null;
                };
                let n = b.len() as i64;
                let start = if off < 0 { n + off } else { off };
                if start < 0 || start > n {
                    return Value::Null;
                }
                let end = match len {
                    0 => n,
                    l if l < 0 => n + l,
                    l => (start + l).min(n),
                };
                if end < start {
                    return Value::Null;
                }
                Value::Str(s.slice(start as usize..end as usize))
            }
            TrOp::Select => {
                let Some(idx) = self.params[0].int(ex) else {
                    return Value::Null;
                };
                let sep = self.params[1].bytes(ex);
                let Some(&sep) = sep.first() else {
                    return Value::Null;
                };
                let fields: Vec<(usize, usize)> = {
                    let mut v = Vec::new();
                    let mut start = 0;
                    for (i, &c) in b.iter().enumerate() {
                        if c == sep {
                            v.push((start, i));
                            start = i + 1;
                        }
                    }
                    v.push((start, b.len()));
                    v
                };
                let i = if idx < 0 {
                    fields.len() as i64 + idx
                } else {
                    idx
                };
                match usize::try_from(i).ok().and_then(|i| fields.get(i)) {
                    Some(&(a, z)) => Value::Str(s.slice(a..z)),
                    None => Value::Null,
                }
            }
            TrOp::ToLower => Value::Str(Bytes::from(b.to_ascii_lowercase())),
            TrOp::ToUpper => Value::Str(Bytes::from(b.to_ascii_uppercase())),
            TrOp::Strip | TrOp::StripTail => {
                let Some(n) = self.params[0].int(ex) else {
                    return Value::Null;
                };
                let n = (n.max(0) as usize).min(b.len());
                if self.op == TrOp::Strip {
                    Value::Str(s.slice(n..))
                } else {
                    Value::Str(s.slice(..b.len() - n))
                }
            }
            TrOp::Trim | TrOp::LTrim | TrOp::RTrim => {
                let mut a = 0;
                let mut z = b.len();
                if self.op != TrOp::RTrim {
                    while a < z && is_ws(b[a]) {
                        a += 1;
                    }
                }
                if self.op != TrOp::LTrim {
                    while z > a && is_ws(b[z - 1]) {
                        z -= 1;
                    }
                }
                Value::Str(s.slice(a..z))
            }
            TrOp::EscapeParam => {
                if b.iter().all(|&c| param_safe(c)) {
                    return Value::Str(s);
                }
                let mut out = BytesMut::with_capacity(b.len() * 3);
                for &c in b {
                    if param_safe(c) {
                        out.put_u8(c);
                    } else {
                        out.put_slice(format!("%{c:02X}").as_bytes());
                    }
                }
                Value::Str(out.freeze())
            }
            TrOp::UnescapeParam => {
                let mut out = Vec::with_capacity(b.len());
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%'
                        && i + 2 < b.len()
                        && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
                    {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    out.push(b[i]);
                    i += 1;
                }
                Value::Str(Bytes::from(out))
            }
            TrOp::Md5 => {
                use md5::{Digest, Md5};
                let d = Md5::digest(b);
                Value::Str(Bytes::from(hex(&d)))
            }
            TrOp::Numeric => Value::Str(Bytes::from(
                b.iter()
                    .copied()
                    .filter(u8::is_ascii_digit)
                    .collect::<Vec<u8>>(),
            )),
            TrOp::EncodeHexa => Value::Str(Bytes::from(hex(b))),
            TrOp::DecodeHexa => {
                if !b.len().is_multiple_of(2) {
                    return Value::Null;
                }
                let mut out = Vec::with_capacity(b.len() / 2);
                for pair in b.chunks(2) {
                    match (hexval(pair[0]), hexval(pair[1])) {
                        (Some(h), Some(l)) => out.push(h << 4 | l),
                        _ => return Value::Null,
                    }
                }
                Value::Str(Bytes::from(out))
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &c in b {
        s.push(H[(c >> 4) as usize] as char);
        s.push(H[(c & 15) as usize] as char);
    }
    s
}

impl Exec<'_> {
    /// Reads a PV (with its index and transformations).
    pub fn get_pv(&mut self, pv: &Pv) -> Value {
        let idx = match &pv.index {
            PvIndexC::Default => PvIdx::Default,
            PvIndexC::At(n) => PvIdx::At(*n),
            PvIndexC::All => PvIdx::All,
            PvIndexC::Pv(p) => match self.get_pv(p).to_int() {
                Some(n) => PvIdx::At(n),
                None => PvIdx::Default,
            },
        };
        let mut v = match &pv.kind {
            PvKind::Null => Value::Null,
            PvKind::Var(slot) => self.ctx.vars[*slot].clone(),
            PvKind::Avp(name) => {
                let i = match idx {
                    PvIdx::At(n) => n,
                    _ => 0,
                };
                self.ctx.avps.get(name, i).cloned().unwrap_or(Value::Null)
            }
            PvKind::Shv(slot) => self.prog.shared.get(*slot),
            PvKind::Rc => Value::Int(self.ctx.last_rc as i64),
            PvKind::Dyn(acc) => acc.get(self, idx),
        };
        for t in &pv.trans {
            v = t.apply(v, self);
        }
        v
    }

    /// Every value of a PV with several (AVPs oldest first); one value for others.
    pub fn get_pv_all(&mut self, pv: &Pv) -> Vec<Value> {
        match (&pv.kind, &pv.index) {
            (PvKind::Avp(name), PvIndexC::Default | PvIndexC::All) if pv.trans.is_empty() => {
                self.ctx.avps.all(name)
            }
            _ => vec![self.get_pv(pv)],
        }
    }

    /// Writes a PV. `replace` is `:=` (all values of an AVP replaced).
    pub fn set_pv(&mut self, pv: &Pv, v: Value, replace: bool) -> Result<(), String> {
        match &pv.kind {
            PvKind::Var(slot) => {
                self.ctx.vars[*slot] = v;
                Ok(())
            }
            PvKind::Avp(name) => {
                match (&pv.index, v) {
                    (_, Value::Null) => self.ctx.avps.remove_all(name),
                    (PvIndexC::At(i), v) => {
                        if !self.ctx.avps.set_at(name, *i, v) {
                            return Err(format!("{} has no value at index {i}", pv.text));
                        }
                    }
                    (_, v) if replace => self.ctx.avps.replace(name, v),
                    (_, v) => self.ctx.avps.push(name, v),
                }
                Ok(())
            }
            PvKind::Shv(slot) => {
                self.prog.shared.set(*slot, v);
                Ok(())
            }
            PvKind::Null | PvKind::Rc => Err(format!("{} is read-only", pv.text)),
            PvKind::Dyn(acc) => {
                let idx = match &pv.index {
                    PvIndexC::At(n) => PvIdx::At(*n),
                    PvIndexC::All => PvIdx::All,
                    _ => PvIdx::Default,
                };
                let acc = acc.clone();
                acc.set(self, idx, v)
                    .map_err(|e| format!("{} {e}", pv.text))
            }
        }
    }

    /// Expands a format string.
    pub fn fmt(&mut self, f: &Fmt) -> Bytes {
        if let [FmtPart::Lit(b)] = f.parts.as_slice() {
            return b.clone();
        }
        let mut out = BytesMut::with_capacity(64);
        for p in &f.parts {
            match p {
                FmtPart::Lit(b) => out.put_slice(b),
                FmtPart::Pv(pv) => match self.get_pv(pv) {
                    Value::Null => out.put_slice(b"<null>"),
                    Value::Int(n) => {
                        let mut buf = itoa_buf(n);
                        out.put_slice(buf.as_bytes_mut())
                    }
                    Value::Str(s) => out.put_slice(&s),
                },
            }
        }
        out.freeze()
    }
}

struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Formats an integer without allocating.
fn itoa_buf(n: i64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = n < 0;
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    ItoaBuf { buf, start: i }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa() {
        for n in [0i64, 7, -7, 1234567890, i64::MIN, i64::MAX] {
            assert_eq!(
                std::str::from_utf8(itoa_buf(n).as_bytes_mut()).unwrap(),
                n.to_string()
            );
        }
    }
}
