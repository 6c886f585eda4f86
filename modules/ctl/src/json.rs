//! Between the RPC registry's JSON and binrpc values, the way Kamailio's RPC
//! API fills a binrpc reply.
//!
//! A reply's JSON array is the command's values one after another (as many
//! `rpc->add` calls: kamcmd prints one per line); anything else is one
//! value. An object is a struct of named members; an array inside a value
//! is a struct of bare values (Kamailio writes `[` as a struct, and its
//! decoder refuses arrays as struct members), except that an item that is
//! an object of one member is that member, named: that is what Kamailio's
//! jsonrpcs makes of `struct_add` on an array (`ul.dump`'s
//! `"Domains": [{"Domain": {…}}]` is `Domains: { Domain: { … } }` to
//! kamcmd, as from Kamailio). Integers that fit 32 bits are
//! ints; larger ones and fractions are doubles (Kamailio's `l`, `L`, `j`,
//! `f`: × 1000 on the wire, so 3 decimals). Booleans are ints, null is
//! Kamailio's `<null string>`.

use crate::binrpc::{Encoder, Error, Member, Value};
use serde_json::Value as Json;

/// What Kamailio writes for a missing string.
pub const NULL_STRING: &str = "<null string>";

/// Writes a command's result as a reply body.
pub fn reply(e: &mut Encoder, result: &Json) -> Result<(), Error> {
    match result {
        Json::Null => Ok(()),
        Json::Array(items) => items.iter().try_for_each(|v| value(e, v)),
        v => value(e, v),
    }
}

fn value(e: &mut Encoder, v: &Json) -> Result<(), Error> {
    match v {
        Json::Null => e.str(NULL_STRING),
        Json::Bool(b) => e.int(i32::from(*b)),
        Json::Number(n) => match n.as_i64().map(i32::try_from) {
            Some(Ok(i)) => e.int(i),
            _ => e.double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => e.str(s),
        Json::Array(items) => {
            e.start_struct()?;
            for item in items {
                match item {
                    Json::Object(m) if m.len() == 1 => {
                        for (name, v) in m {
                            e.name(name)?;
                            value(e, v)?;
                        }
                    }
                    v => value(e, v)?,
                }
            }
            e.end_struct()
        }
        Json::Object(members) => {
            e.start_struct()?;
            for (name, v) in members {
                e.name(name)?;
                value(e, v)?;
            }
            e.end_struct()
        }
    }
}

/// A request's param as JSON: ints and whole doubles are integers, other
/// doubles floats, str and bytes strings, a struct an object (an array when
/// its members have no names), an array an array.
pub fn param(v: &Value) -> Json {
    match v {
        Value::Int(i) => Json::from(*i),
        Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Json::from(*d as i64),
        Value::Double(d) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Array(items) => Json::Array(items.iter().map(param).collect()),
        Value::Struct(members) if members.iter().all(|m| m.name.is_none()) => {
            Json::Array(members.iter().map(|m| param(&m.value)).collect())
        }
        Value::Struct(members) => Json::Object(
            members
                .iter()
                .enumerate()
                .map(|(i, Member { name, value })| {
                    (name.clone().unwrap_or_else(|| i.to_string()), param(value))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binrpc::decode_body;
    use serde_json::json;

    fn encode(v: &Json) -> Vec<Value> {
        let mut e = Encoder::new(usize::MAX);
        reply(&mut e, v).unwrap();
        decode_body(&e.finish()).unwrap()
    }

    fn named(name: &str, value: Value) -> Member {
        Member {
            name: Some(name.into()),
            value,
        }
    }

    #[test]
    fn a_top_level_array_is_values_one_after_another() {
        assert_eq!(
            encode(&json!(["core:rcv_requests = 0", "core:fwd_requests = 2"])),
            [
                Value::Str("core:rcv_requests = 0".into()),
                Value::Str("core:fwd_requests = 2".into())
            ]
        );
        assert_eq!(
            encode(&json!("siphon 0.1.0")),
            [Value::Str("siphon 0.1.0".into())]
        );
        assert_eq!(encode(&Json::Null), []);
    }

    #[test]
    fn objects_are_structs_and_inner_arrays_structs_of_bare_values() {
        let v = json!({"uptime": 6, "big": 5_000_000_000u64, "ratio": 0.25, "ok": true,
                       "none": null, "listen": ["udp:1", "tcp:2"], "inner": {}});
        let bare = |s: &str| Member {
            name: None,
            value: Value::Str(s.into()),
        };
        assert_eq!(
            encode(&v),
            [Value::Struct(vec![
                named("uptime", Value::Int(6)),
                named("big", Value::Double(5.0e9)),
                named("ratio", Value::Double(0.25)),
                named("ok", Value::Int(1)),
                named("none", Value::Str(NULL_STRING.into())),
                named("listen", Value::Struct(vec![bare("udp:1"), bare("tcp:2")])),
                named("inner", Value::Struct(vec![])),
            ])]
        );
    }

    #[test]
    fn one_member_objects_in_arrays_are_named_members_as_kamailio_adds_them() {
        let v = json!({"Domains": [{"Domain": {"Size": 1024}}, {"a": 1, "b": 2}]});
        assert_eq!(
            encode(&v),
            [Value::Struct(vec![named(
                "Domains",
                Value::Struct(vec![
                    named(
                        "Domain",
                        Value::Struct(vec![named("Size", Value::Int(1024))])
                    ),
                    Member {
                        name: None,
                        value: Value::Struct(vec![
                            named("a", Value::Int(1)),
                            named("b", Value::Int(2))
                        ]),
                    },
                ])
            )])]
        );
    }

    #[test]
    fn params_become_json() {
        assert_eq!(param(&Value::Int(-3)), json!(-3));
        assert_eq!(param(&Value::Double(2.0)), json!(2));
        assert_eq!(param(&Value::Double(2.5)), json!(2.5));
        assert_eq!(param(&Value::Str("all".into())), json!("all"));
        assert_eq!(param(&Value::Bytes(b"ab".to_vec())), json!("ab"));
        assert_eq!(
            param(&Value::Struct(vec![named("a", Value::Int(1))])),
            json!({"a": 1})
        );
        assert_eq!(
            param(&Value::Array(vec![Value::Int(1), Value::Str("x".into())])),
            json!([1, "x"])
        );
    }
}
