//! The `jansson` module's functions, kept in the core: read and build JSON
//! documents held in PVs. Paths are Kamailio's: `a.b.c`, `list[2]`,
//! `a.list[0].name` (a key may contain anything but `.` and `[`).
//!
//! - `jansson_get(path, json, dst)`: 1 and the value in `dst` (strings
//!   without quotes, integers as integers, anything else as compact JSON);
//!   -1 when the path is not there or the text is not JSON.
//! - `jansson_set(type, path, value, result)`: sets the value at `path` in
//!   the document held in `result` (empty: a new object) — types `string`,
//!   `str`, `integer`, `int`, `real`, `float`, `true`, `false`, `null`,
//!   `object`/`obj`, `array` (the last two take JSON text).
//! - `jansson_append(type, path, value, result)`: appends to the array at `path`.
//! - `jansson_array_size(path, json, dst)`, `jansson_get_field(json, field, dst)`.

use crate::api::{ArgKind, Args, FunctionSpec};
use crate::interp::Exec;
use crate::value::Value;
use serde_json::Value as Json;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// Parses `a.b[2].c`; `None` for a malformed path.
pub fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_string()));
        } else if rest.is_empty() && !path.is_empty() {
            return None;
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            steps.push(Step::Index(r[..end].trim().parse().ok()?));
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

/// The value at `path`.
pub fn get<'a>(doc: &'a Json, path: &[Step]) -> Option<&'a Json> {
    path.iter().try_fold(doc, |v, s| match s {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// The slot at `path`, creating objects on the way; arrays must have the index.
fn slot<'a>(doc: &'a mut Json, path: &[Step]) -> Option<&'a mut Json> {
    let mut v = doc;
    for s in path {
        v = match s {
            Step::Key(k) => {
                if v.is_null() {
                    *v = Json::Object(Default::default());
                }
                v.as_object_mut()?.entry(k.clone()).or_insert(Json::Null)
            }
            Step::Index(i) => v.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(v)
}

/// A script value for a JSON value: strings unquoted, integers as integers.
pub fn to_value(v: &Json) -> Value {
    match v {
        Json::String(s) => Value::from(s.clone()),
        Json::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or(0)),
        Json::Bool(b) => Value::Int(*b as i64),
        Json::Null => Value::Null,
        other => Value::from(other.to_string()),
    }
}

/// A typed value as `jansson_set` builds it.
pub fn typed(kind: &str, text: &str) -> Result<Json, String> {
    Ok(match kind {
        "string" | "str" => Json::String(text.to_string()),
        "integer" | "int" => Json::from(
            text.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{text}` is not an integer"))?,
        ),
        "real" | "float" => {
            let f: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            serde_json::Number::from_f64(f)
                .map(Json::Number)
                .ok_or("not a finite number")?
        }
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        "null" => Json::Null,
        "object" | "obj" | "array" => {
            let v: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            let ok = if kind == "array" {
                v.is_array()
            } else {
                v.is_object()
            };
            if !ok {
                return Err(format!("`{text}` is not an {kind}"));
            }
            v
        }
        other => return Err(format!("unknown type `{other}`")),
    })
}

fn doc_of(text: &str) -> Option<Json> {
    if text.trim().is_empty() {
        return Some(Json::Object(Default::default()));
    }
    serde_json::from_str(text).ok()
}

fn store(ex: &mut Exec<'_>, a: &Args, i: usize, v: Value) -> bool {
    match a.pv(i).cloned() {
        Some(pv) => ex.set_pv(&pv, v, false).is_ok(),
        None => false,
    }
}

fn set_or_append(ex: &mut Exec<'_>, a: &Args, append: bool) -> i32 {
    let (kind, path, text) = (a.text(0, ex), a.text(1, ex), a.text(2, ex));
    let current = a
        .pv(3)
        .cloned()
        .map(|pv| ex.get_pv(&pv).to_text().into_owned())
        .unwrap_or_default();
    let (Some(mut doc), Some(steps)) = (doc_of(&current), parse_path(&path)) else {
        tracing::warn!("jansson: `{current}` is not JSON or `{path}` is not a path");
        return -1;
    };
    let v = match typed(&kind, &text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("jansson: {e}");
            return -1;
        }
    };
    let Some(target) = slot(&mut doc, &steps) else {
        tracing::warn!("jansson: cannot reach `{path}`");
        return -1;
    };
    if append {
        if target.is_null() {
            *target = Json::Array(vec![]);
        }
        match target.as_array_mut() {
            Some(arr) => arr.push(v),
            None => {
                tracing::warn!("jansson_append: `{path}` is not an array");
                return -1;
            }
        }
    } else {
        *target = v;
    }
    if store(ex, a, 3, Value::from(doc.to_string())) {
        1
    } else {
        -1
    }
}

/// The functions, for the core's list.
pub fn functions() -> Vec<FunctionSpec> {
    use ArgKind::{PvWritable, Str};
    vec![
        FunctionSpec::new("jansson_get", &[Str, Str, PvWritable], |ex, a| {
            let (path, text) = (a.text(0, ex), a.text(1, ex));
            let found = match (serde_json::from_str::<Json>(&text), parse_path(&path)) {
                (Ok(doc), Some(steps)) => get(&doc, &steps).map(to_value),
                _ => None,
            };
            match found {
                Some(v) if store(ex, a, 2, v.clone()) => 1.into(),
                _ => (-1).into(),
            }
        }),
        FunctionSpec::new("jansson_get_field", &[Str, Str, PvWritable], |ex, a| {
            let (text, field) = (a.text(0, ex), a.text(1, ex));
            let found = serde_json::from_str::<Json>(&text)
                .ok()
                .and_then(|d| d.get(field.as_str()).map(to_value));
            match found {
                Some(v) if store(ex, a, 2, v.clone()) => 1.into(),
                _ => (-1).into(),
            }
        }),
        FunctionSpec::new("jansson_array_size", &[Str, Str, PvWritable], |ex, a| {
            let (path, text) = (a.text(0, ex), a.text(1, ex));
            let n = match (serde_json::from_str::<Json>(&text), parse_path(&path)) {
                (Ok(doc), Some(steps)) => get(&doc, &steps).and_then(Json::as_array).map(Vec::len),
                _ => None,
            };
            match n {
                Some(n) if store(ex, a, 2, Value::Int(n as i64)) => 1.into(),
                _ => (-1).into(),
            }
        }),
        FunctionSpec::new("jansson_set", &[Str, Str, Str, PvWritable], |ex, a| {
            set_or_append(ex, a, false).into()
        }),
        FunctionSpec::new("jansson_append", &[Str, Str, Str, PvWritable], |ex, a| {
            set_or_append(ex, a, true).into()
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("a.list[2].b"),
            Some(vec![
                Step::Key("a".into()),
                Step::Key("list".into()),
                Step::Index(2),
                Step::Key("b".into())
            ])
        );
        assert_eq!(
            parse_path("[0][1]"),
            Some(vec![Step::Index(0), Step::Index(1)])
        );
        assert_eq!(parse_path("a..b"), None);
        assert_eq!(parse_path("a[x]"), None);
        assert_eq!(parse_path("a[1"), None);
        let doc = json!({"result": {"users": [{"name": "Petros"}, {"name": "Ana"}]}});
        let p = parse_path("result.users[1].name").unwrap();
        assert_eq!(get(&doc, &p), Some(&json!("Ana")));
        assert_eq!(get(&doc, &parse_path("result.nope").unwrap()), None);
    }

    #[test]
    fn values_and_types() {
        assert_eq!(to_value(&json!("x")), Value::from("x".to_string()));
        assert_eq!(to_value(&json!(7)), Value::Int(7));
        assert_eq!(
            to_value(&json!({"a": 1})),
            Value::from("{\"a\":1}".to_string())
        );
        assert_eq!(typed("int", "12"), Ok(json!(12)));
        assert_eq!(typed("array", "[1]"), Ok(json!([1])));
        assert!(typed("int", "x").is_err());
        assert!(typed("obj", "[1]").is_err());
        let mut d = json!({});
        *slot(&mut d, &parse_path("a.b").unwrap()).unwrap() = json!(1);
        assert_eq!(d, json!({"a": {"b": 1}}));
    }
}
