//! Kamailio's `db_text` files, as htable loads a table from them
//! (`db_url` `text:///dir`, the table `dir/<dbtable>`).
//!
//! [`parse`] reads a file as `db_text`'s `dbt_load_file`: a header line of
//! `name(type[,flag])` columns separated by spaces (the type by its first
//! letter: `s`tr (`string` when an `i` follows), `i`nt, `d`ouble, `b`lob,
//! `t`ime; the flag `null` or `auto` (one int column)), then one row a line,
//! fields separated by `:`, strings escaped with `\:`, `\\`, `\n`, `\r`,
//! `\t`, `\0`. An empty field is NULL, refused unless the column has `null`
//! (an `auto` column numbers it). Any other escape, a row with too few or
//! too many fields, a bad number: the whole file is refused, as `db_text`.
//!
//! [`items`] turns the rows into htable items as `ht_db_load_table` does:
//! rows ordered by name (case-insensitive, as `db_text`'s ORDER BY), a
//! `key_type` 1 row is the next entry of an array (`name[0]`, `name[1]`, …,
//! then `name::size`), a `value_type` 1 value an integer.

use bytes::Bytes;
use siphon_script::value::Value;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColType {
    /// `int` (and `time`, stored as an integer).
    Int,
    /// `double`.
    Double,
    /// `str`, `string`, `blob`.
    Str,
}

/// A column of the header.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: ColType,
    /// Whether an empty field (NULL) is allowed.
    pub null: bool,
    /// Whether an empty field is numbered (`auto`, one int column).
    pub auto: bool,
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// Empty.
    Null,
    /// An int column's.
    Int(i64),
    /// A double column's.
    Double(f64),
    /// A string column's (unescaped).
    Str(Bytes),
}

/// A parsed file.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The header.
    pub cols: Vec<Column>,
    /// The rows, each one field per column.
    pub rows: Vec<Vec<Field>>,
}

impl Table {
    fn col(&self, name: &str) -> Result<usize, String> {
        self.cols
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| format!("no column `{name}`"))
    }
}

/// Parses a `db_text` file; the error says where it is wrong.
pub fn parse(data: &[u8]) -> Result<Table, String> {
    let mut lines = data.split(|&c| c == b'\n');
    let header = lines.next().unwrap_or_default();
    let cols = parse_header(header)?;
    let mut auto_val = 0i64;
    let auto = cols.iter().position(|c| c.auto);
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        // Empty lines between rows are skipped.
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("row {} (line {}): {e}", rows.len() + 1, n + 2);
        let mut row = parse_row(line, &cols).map_err(at)?;
        for (i, (f, c)) in row.iter_mut().zip(&cols).enumerate() {
            if *f == Field::Null && !c.null {
                if auto == Some(i) {
                    auto_val += 1;
                    *f = Field::Int(auto_val);
                } else {
                    return Err(at(format!(
                        "NULL (empty) `{}`, a column without `null`",
                        c.name
                    )));
                }
            }
        }
        if let Some(a) = auto
            && let Field::Int(v) = row[a]
        {
            auto_val = auto_val.max(v);
        }
        rows.push(row);
    }
    Ok(Table { cols, rows })
}

fn parse_header(h: &[u8]) -> Result<Vec<Column>, String> {
    let h = std::str::from_utf8(h).map_err(|_| "the header is not UTF-8".to_string())?;
    let mut cols = Vec::new();
    let mut rest = h.trim_start_matches(' ');
    while !rest.is_empty() {
        let open = rest
            .find(['(', ' '])
            .ok_or_else(|| format!("header: `{rest}`: expected `name(type)`"))?;
        let name = &rest[..open];
        let after = rest[open..].trim_start_matches(' ');
        let Some(inner) = after.strip_prefix('(') else {
            return Err(format!(
                "header: `{name}`: expected `(type)` after the name"
            ));
        };
        let close = inner
            .find(')')
            .ok_or_else(|| format!("header: `{name}`: no `)`"))?;
        let spec = inner[..close].trim_start_matches(' ');
        let (ty, flag) = match spec.split_once(',') {
            Some((t, f)) => (t, Some(f.trim_start_matches(' '))),
            None => (spec, None),
        };
        let ty = match ty.chars().next().map(|c| c.to_ascii_lowercase()) {
            Some('s' | 'b') => ColType::Str,
            Some('i' | 't') => ColType::Int,
            Some('d') => ColType::Double,
            _ => return Err(format!("header: `{name}`: unknown type `{ty}`")),
        };
        let has_auto = cols.iter().any(|c: &Column| c.auto);
        let (null, auto) = match flag.and_then(|f| f.chars().next()) {
            None => (false, false),
            Some('n' | 'N') => (true, false),
            Some('a' | 'A') if ty == ColType::Int && !has_auto => (false, true),
            Some(_) => {
                return Err(format!(
                    "header: `{name}`: unknown flag `{}`",
                    flag.unwrap_or_default()
                ));
            }
        };
        if name.is_empty() {
            return Err("header: a column without a name".into());
        }
        cols.push(Column {
            name: name.to_string(),
            ty,
            null,
            auto,
        });
        rest = inner[close + 1..].trim_start_matches(' ');
    }
    if cols.is_empty() {
        return Err("no header (the first line lists the columns)".into());
    }
    Ok(cols)
}

fn parse_row(line: &[u8], cols: &[Column]) -> Result<Vec<Field>, String> {
    let mut out = Vec::with_capacity(cols.len());
    let mut i = 0;
    for (n, c) in cols.iter().enumerate() {
        if n > 0 {
            if line.get(i) != Some(&b':') {
                return Err(format!("too few fields (no `{}`)", c.name));
            }
            i += 1;
        }
        let start = i;
        let mut buf = Vec::new();
        while let Some(&b) = line.get(i) {
            match b {
                b':' => break,
                b'\\' => {
                    i += 1;
                    buf.push(match line.get(i) {
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'\\') => b'\\',
                        Some(b'0') => 0,
                        Some(b':') => b':',
                        _ => return Err(format!("`{}`: a bad escape", c.name)),
                    });
                }
                _ => buf.push(b),
            }
            i += 1;
        }
        if i == start {
            out.push(Field::Null);
            continue;
        }
        let text = || String::from_utf8_lossy(&buf).into_owned();
        out.push(match c.ty {
            ColType::Str => Field::Str(Bytes::from(buf)),
            ColType::Int => Field::Int(
                text()
                    .parse()
                    .map_err(|_| format!("`{}`: `{}` is not an integer", c.name, text()))?,
            ),
            ColType::Double => Field::Double(
                text()
                    .parse()
                    .map_err(|_| format!("`{}`: `{}` is not a number", c.name, text()))?,
            ),
        });
    }
    if i < line.len() {
        return Err(format!("more fields than the {} columns", cols.len()));
    }
    Ok(out)
}

/// htable's database column names (the `*_column` modparams).
#[derive(Debug, Clone)]
pub struct Columns {
    /// `key_name_column`.
    pub name: String,
    /// `key_type_column`.
    pub key_type: String,
    /// `value_type_column`.
    pub value_type: String,
    /// `key_value_column`.
    pub value: String,
    /// `expires_column`.
    pub expires: String,
    /// `array_size_suffix`.
    pub size_suffix: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            name: "key_name".into(),
            key_type: "key_type".into(),
            value_type: "value_type".into(),
            value: "key_value".into(),
            expires: "expires".into(),
            size_suffix: "::size".into(),
        }
    }
}

/// One item to load: name, value, seconds left (`None`: the table's own).
pub type Item = (Bytes, Value, Option<u64>);

/// The items of `t` as htable loads them. `now_unix`: with `Some`, the
/// expires column is read (absolute Unix time; a past one skips the row, a
/// future one is the item's expiry) — htable does so only for a table with
/// `autoexpire` and `db_expires` set.
pub fn items(t: &Table, c: &Columns, now_unix: Option<i64>) -> Result<Vec<Item>, String> {
    let (kn, kt, vt, kv) = (
        t.col(&c.name)?,
        t.col(&c.key_type)?,
        t.col(&c.value_type)?,
        t.col(&c.value)?,
    );
    let ex = match now_unix {
        Some(_) => Some(t.col(&c.expires)?),
        None => None,
    };
    let mut rows: Vec<&Vec<Field>> = t.rows.iter().collect();
    let name_of = |r: &Vec<Field>, i: usize| -> Result<Bytes, String> {
        match &r[i] {
            Field::Str(s) => Ok(s.clone()),
            Field::Int(n) => Ok(Bytes::from(n.to_string())),
            Field::Null => Err("a row has a NULL key name".into()),
            Field::Double(_) => Err(format!("`{}`: a double column", c.name)),
        }
    };
    for r in &rows {
        name_of(r, kn)?;
    }
    rows.sort_by(|a, b| {
        let (a, b) = (
            name_of(a, kn).unwrap_or_default(),
            name_of(b, kn).unwrap_or_default(),
        );
        a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase())
    });
    let int_of = |r: &Vec<Field>, i: usize, what: &str| -> Result<i64, String> {
        match &r[i] {
            Field::Int(n) => Ok(*n),
            Field::Null => Ok(0),
            _ => Err(format!("`{what}`: not an int column")),
        }
    };
    let mut out = Vec::new();
    let mut prev: Option<Bytes> = None;
    let mut last_array = false;
    let mut n = 0i64;
    for r in rows {
        let name = name_of(r, kn)?;
        let mut expires = None;
        if let (Some(now), Some(ex)) = (now_unix, ex) {
            let e = int_of(r, ex, &c.expires)?;
            if e > 0 && e < now {
                continue;
            }
            if e > 0 {
                expires = Some((e - now) as u64);
            }
        }
        let ktype = int_of(r, kt, &c.key_type)?;
        if last_array && let Some(p) = prev.take_if(|p| *p != name) {
            out.push((size_name(&p, &c.size_suffix), Value::Int(n), None));
            n = 0;
        }
        last_array = ktype == 1;
        prev = Some(name.clone());
        let hname = if ktype == 1 {
            let h = Bytes::from(format!("{}[{n}]", String::from_utf8_lossy(&name)));
            n += 1;
            h
        } else {
            name
        };
        let vtype = int_of(r, vt, &c.value_type)?;
        let value = match (&r[kv], vtype == 1) {
            (Field::Null, _) => return Err("a row has a NULL value".into()),
            (Field::Double(_), _) => return Err(format!("`{}`: a double column", c.value)),
            (Field::Int(i), true) => Value::Int(*i),
            (Field::Int(i), false) => Value::Str(Bytes::from(i.to_string())),
            (Field::Str(s), true) => Value::Int(str2slong(s)),
            (Field::Str(s), false) => Value::Str(s.clone()),
        };
        out.push((hname, value, expires));
    }
    if last_array && let Some(p) = prev {
        out.push((size_name(&p, &c.size_suffix), Value::Int(n), None));
    }
    Ok(out)
}

fn size_name(name: &[u8], suffix: &str) -> Bytes {
    let mut v = name.to_vec();
    v.extend_from_slice(suffix.as_bytes());
    Bytes::from(v)
}

/// Kamailio's `str2slong`: an optional sign and digits; anything else 0.
fn str2slong(s: &[u8]) -> i64 {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "id(int,auto) key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n";

    fn load(rows: &str, now: Option<i64>) -> Vec<(String, Value, Option<u64>)> {
        let t = parse(format!("{HEAD}{rows}").as_bytes()).unwrap();
        items(&t, &Columns::default(), now)
            .unwrap()
            .into_iter()
            .map(|(k, v, e)| (String::from_utf8_lossy(&k).into_owned(), v, e))
            .collect()
    }

    fn s(v: &str) -> Value {
        Value::Str(Bytes::from(v.to_string()))
    }

    #[test]
    fn header_types_and_flags() {
        let t = parse(b"a(int,auto) b(string) c(str,null) d(double) e(blob) f(time) g(datetime)\n")
            .unwrap();
        let tys: Vec<_> = t
            .cols
            .iter()
            .map(|c| (c.name.as_str(), c.ty, c.null))
            .collect();
        assert!(t.cols[0].auto && !t.cols[1].auto);
        assert_eq!(
            tys,
            [
                ("a", ColType::Int, false),
                ("b", ColType::Str, false),
                ("c", ColType::Str, true),
                ("d", ColType::Double, false),
                ("e", ColType::Str, false),
                ("f", ColType::Int, false),
                // As db_text: by the first letter.
                ("g", ColType::Double, false),
            ]
        );
        assert!(t.rows.is_empty());
        assert!(parse(b"a(x)\n").unwrap_err().contains("unknown type"));
        assert!(parse(b"a(str,q)\n").unwrap_err().contains("unknown flag"));
        assert!(parse(b"a str\n").is_err());
        assert!(parse(b"\n").is_err());
    }

    #[test]
    fn rows_escapes_nulls_and_auto() {
        let t = parse(b"id(int,auto) k(str) v(str,null)\n:a\\:b\\\\c\\n:\n7:x:y\n\n:z:w").unwrap();
        assert_eq!(
            t.rows[0],
            [
                Field::Int(1),
                Field::Str(Bytes::from_static(b"a:b\\c\n")),
                Field::Null
            ]
        );
        assert_eq!(t.rows[1][0], Field::Int(7));
        // The auto column goes on from the largest number seen.
        assert_eq!(t.rows[2][0], Field::Int(8));
        let e = parse(b"k(str) v(str)\nx:\n").unwrap_err();
        assert!(e.contains("NULL") && e.contains("`v`"), "{e}");
        assert!(
            parse(b"k(str) v(str)\nx\n")
                .unwrap_err()
                .contains("too few")
        );
        assert!(
            parse(b"k(str) v(str)\nx:y:z\n")
                .unwrap_err()
                .contains("more fields")
        );
        assert!(parse(b"k(str)\na\\qb\n").unwrap_err().contains("escape"));
        assert!(
            parse(b"k(int)\n1x\n")
                .unwrap_err()
                .contains("not an integer")
        );
    }

    #[test]
    fn htable_items_with_arrays_and_integers() {
        let got = load(
            ":b:0:0:two:0\n:a:1:0:x:0\n:n:0:1:42:0\n:a:1:0:y:0\n:s:0:0:12:0\n:A2:0:1:junk:0\n",
            None,
        );
        assert_eq!(
            got,
            [
                ("a[0]".to_string(), s("x"), None),
                ("a[1]".to_string(), s("y"), None),
                ("a::size".to_string(), Value::Int(2), None),
                ("A2".to_string(), Value::Int(0), None),
                ("b".to_string(), s("two"), None),
                ("n".to_string(), Value::Int(42), None),
                ("s".to_string(), s("12"), None),
            ]
        );
        // An array last in the file gets its size too.
        let got = load(":z:1:1:5:0\n", None);
        assert_eq!(got[1], ("z::size".to_string(), Value::Int(1), None));
    }

    #[test]
    fn expires_read_only_when_asked() {
        let rows = ":old:0:0:v:100\n:new:0:0:v:1300\n:keep:0:0:v:0\n";
        assert_eq!(load(rows, None).len(), 3);
        let got = load(rows, Some(1000));
        assert_eq!(
            got,
            [
                ("keep".to_string(), s("v"), None),
                ("new".to_string(), s("v"), Some(300)),
            ]
        );
    }

    #[test]
    fn other_column_names() {
        let t = parse(b"name(str) kt(int) vt(int) val(int)\nk:0:1:9\n").unwrap();
        let c = Columns {
            name: "name".into(),
            key_type: "kt".into(),
            value_type: "vt".into(),
            value: "val".into(),
            ..Columns::default()
        };
        let got = items(&t, &c, None).unwrap();
        assert_eq!(got, [(Bytes::from_static(b"k"), Value::Int(9), None)]);
        let e = items(&t, &Columns::default(), None).unwrap_err();
        assert!(e.contains("key_name"), "{e}");
    }
}
