//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>) envelopes.
//!
//! [`parse`] classifies one document: a request, a notification, a response,
//! or a batch of those, and says precisely what is wrong otherwise, so a
//! server can answer `-32700`/`-32600` as the specification requires and a
//! client can match responses to its pending ids.

use serde_json::{Map, Value, json};

/// `-32700`: the text is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// `-32600`: JSON, but not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// `-32601`: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// `-32602`: wrong parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// `-32603`: the server failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Anything more.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    /// As a JSON object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), json!(self.code));
        m.insert("message".into(), json!(self.message));
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        Value::Object(m)
    }
}

/// One call: a request (with an id) or a notification (without).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `None` for a notification; otherwise the id as sent (number, string or null).
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The params: an array or an object (absent is `None`).
    pub params: Option<Value>,
}

impl Call {
    /// The params by position: an array as is, an object's values in order
    /// (the names are ignored, as Kamailio's RPC interface does), none as empty.
    pub fn positional(&self) -> Vec<Value> {
        match &self.params {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Object(o)) => o.values().cloned().collect(),
            _ => vec![],
        }
    }
}

/// A response to one of our requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id it answers.
    pub id: Value,
    /// The result, or the error object.
    pub outcome: Result<Value, RpcError>,
}

/// A document that is not valid JSON-RPC: the id when one could be read (the
/// error response echoes it; `null` otherwise) and the error. Boxed: rejections
/// are the rare path and should not widen every `Result`.
pub type Rejected = Box<(Option<Value>, RpcError)>;

/// What one JSON-RPC document is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request or notification.
    Call(Call),
    /// A response.
    Response(Response),
    /// A batch; each element is checked on its own.
    Batch(Vec<Result<Message, Rejected>>),
}

/// Parses one document. The error carries the id when one could be read, so
/// the error response can echo it (the specification says `null` otherwise).
pub fn parse(text: &[u8]) -> Result<Message, Rejected> {
    let v: Value = serde_json::from_slice(text).map_err(|e| {
        Box::new((
            None,
            RpcError::new(PARSE_ERROR, format!("Parse error: {e}")),
        ))
    })?;
    match v {
        Value::Array(items) if items.is_empty() => Err(Box::new((
            None,
            RpcError::new(INVALID_REQUEST, "Invalid Request: empty batch"),
        ))),
        Value::Array(items) => Ok(Message::Batch(items.into_iter().map(classify).collect())),
        other => classify(other),
    }
}

fn classify(v: Value) -> Result<Message, Rejected> {
    let Value::Object(mut o) = v else {
        return Err(Box::new((
            None,
            RpcError::new(INVALID_REQUEST, "Invalid Request: not an object"),
        )));
    };
    let id = o.remove("id");
    let bad_id = id
        .as_ref()
        .is_some_and(|i| !(i.is_null() || i.is_number() || i.is_string()));
    if bad_id {
        return Err(Box::new((
            None,
            RpcError::new(
                INVALID_REQUEST,
                "Invalid Request: id must be a number, a string or null",
            ),
        )));
    }
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Box::new((
            id,
            RpcError::new(
                INVALID_REQUEST,
                "Invalid Request: \"jsonrpc\" must be \"2.0\"",
            ),
        )));
    }
    if let Some(m) = o.remove("method") {
        let Value::String(method) = m else {
            return Err(Box::new((
                id,
                RpcError::new(INVALID_REQUEST, "Invalid Request: method must be a string"),
            )));
        };
        let params = o.remove("params");
        if params
            .as_ref()
            .is_some_and(|p| !(p.is_array() || p.is_object()))
        {
            return Err(Box::new((
                id,
                RpcError::new(
                    INVALID_REQUEST,
                    "Invalid Request: params must be an array or an object",
                ),
            )));
        }
        return Ok(Message::Call(Call { id, method, params }));
    }
    let id = id.unwrap_or(Value::Null);
    match (o.remove("result"), o.remove("error")) {
        (Some(r), None) => Ok(Message::Response(Response { id, outcome: Ok(r) })),
        (None, Some(e)) => {
            let code = e.get("code").and_then(Value::as_i64);
            let message = e.get("message").and_then(Value::as_str).map(str::to_string);
            match (code, message) {
                (Some(code), Some(message)) => Ok(Message::Response(Response {
                    id,
                    outcome: Err(RpcError {
                        code,
                        message,
                        data: e.get("data").cloned(),
                    }),
                })),
                _ => Err(Box::new((
                    Some(id),
                    RpcError::new(
                        INVALID_REQUEST,
                        "Invalid Response: error needs a numeric code and a message",
                    ),
                ))),
            }
        }
        _ => Err(Box::new((
            Some(id),
            RpcError::new(
                INVALID_REQUEST,
                "Invalid Request: no method, and not exactly one of result or error",
            ),
        ))),
    }
}

/// Writes a request document, compact, with its members in the order
/// Kamailio and OpenSIPS send them: `id` (when given; `Some(Null)` writes
/// `"id":null`), `jsonrpc`, `method`, `params` (when given). Nothing is
/// copied: `params` is serialised where it is.
pub fn write_request<P: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: Option<&Value>,
    method: &str,
    params: Option<&P>,
) {
    use serde::ser::{SerializeMap, Serializer};
    let mut ser = serde_json::Serializer::new(out);
    let Ok(mut m) = ser.serialize_map(None) else {
        return;
    };
    let _ = id.map(|id| m.serialize_entry("id", id));
    let _ = m.serialize_entry("jsonrpc", "2.0");
    let _ = m.serialize_entry("method", method);
    let _ = params.map(|p| m.serialize_entry("params", p));
    let _ = m.end();
}

/// [`write_request`]'s document as a value (`id: None`: a notification).
pub fn request(id: Option<&Value>, method: &str, params: Option<&Value>) -> Value {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("method".into(), json!(method));
    if let Some(p) = params {
        m.insert("params".into(), p.clone());
    }
    Value::Object(m)
}

/// A success response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "result": result, "id": id})
}

/// An error response (`id` null when it could not be read).
pub fn error(id: Option<&Value>, err: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": err.to_value(), "id": id.cloned().unwrap_or(Value::Null)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_requests_keep_the_seed_order() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            Some(&json!(2)),
            "get_user",
            Some(&json!({"id": 1234})),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":2,"jsonrpc":"2.0","method":"get_user","params":{"id":1234}}"#
        );
        let mut out = Vec::new();
        write_request::<Value>(&mut out, Some(&Value::Null), "E", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":null,"jsonrpc":"2.0","method":"E"}"#
        );
        assert_eq!(
            request(None, "m", Some(&json!([1]))).to_string(),
            r#"{"jsonrpc":"2.0","method":"m","params":[1]}"#
        );
    }

    #[test]
    fn requests_notifications_responses() {
        let m = parse(br#"{"jsonrpc": "2.0", "method": "core.psx", "id": 1}"#).unwrap();
        assert_eq!(
            m,
            Message::Call(Call {
                id: Some(json!(1)),
                method: "core.psx".into(),
                params: None
            })
        );
        // The seed's example: names are ignored, order counts.
        let Message::Call(c) = parse(br#"{"jsonrpc":"2.0","method":"dispatcher.set_state","params":{"state":"ip","grpup":2,"address":"sip:127.0.0.1:5080"},"id":1}"#).unwrap() else { panic!() };
        assert_eq!(
            c.positional(),
            vec![json!("ip"), json!(2), json!("sip:127.0.0.1:5080")]
        );
        let Message::Call(n) = parse(br#"{"jsonrpc":"2.0","method":"x","params":[1]}"#).unwrap()
        else {
            panic!()
        };
        assert!(n.id.is_none());
        let Message::Response(r) =
            parse(br#"{"jsonrpc": "2.0", "result": 8, "id": 915243442}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((r.id, r.outcome), (json!(915243442), Ok(json!(8))));
        let Message::Response(r) = parse(
            br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"a"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.outcome.unwrap_err().code, METHOD_NOT_FOUND);
    }

    #[test]
    fn errors_as_the_specification_says() {
        assert_eq!(parse(b"{bad").unwrap_err().1.code, PARSE_ERROR);
        assert_eq!(parse(b"[]").unwrap_err().1.code, INVALID_REQUEST);
        assert_eq!(parse(b"1").unwrap_err().1.code, INVALID_REQUEST);
        let (id, e) = *parse(br#"{"jsonrpc":"1.0","method":"m","id":7}"#).unwrap_err();
        assert_eq!((id, e.code), (Some(json!(7)), INVALID_REQUEST));
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":1,"id":7}"#)
                .unwrap_err()
                .1
                .code,
            INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"m","params":"x","id":7}"#)
                .unwrap_err()
                .1
                .code,
            INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"m","id":{}}"#)
                .unwrap_err()
                .1
                .code,
            INVALID_REQUEST
        );
        let Message::Batch(b) = parse(br#"[1, {"jsonrpc":"2.0","method":"m","id":1}]"#).unwrap()
        else {
            panic!()
        };
        assert!(b[0].is_err() && b[1].is_ok());
    }

    #[test]
    fn documents_we_write() {
        assert_eq!(
            request(Some(&json!(3)), "get_user", Some(&json!({"id": 1234}))),
            json!({"jsonrpc":"2.0","method":"get_user","params":{"id":1234},"id":3})
        );
        assert!(request(None, "update_user", None).get("id").is_none());
        assert_eq!(
            error(None, &RpcError::new(PARSE_ERROR, "Parse error")),
            json!({"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null})
        );
        assert_eq!(
            result(&json!("x"), json!([1])),
            json!({"jsonrpc":"2.0","result":[1],"id":"x"})
        );
    }
}
