//! JSON-RPC 2.0 over the RPC registry: one document in, the reply document
//! (or nothing, for notifications) out. Shared by every transport.
//!
//! Bounded: a batch holds at most [`Limits::max_batch`] items, and the reply
//! stops being built as soon as it would exceed [`Limits::max_reply`] bytes
//! (the caller gets one `-32603` error instead). In the asynchronous path the
//! dispatcher yields between batch items, so a big batch cannot starve SIP.

use crate::Counters;
use serde_json::Value;
use siphon_proto::jsonrpc::{self, Message, RpcError};
use siphon_script::Program;
use siphon_script::rpc::{RpcReply, call};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Why a dispatch runs: transports await commands that answer later; the
/// script (`jsonrpc_exec`) cannot wait and gets an error for those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A transport: awaits.
    Async,
    /// `jsonrpc_exec`: synchronous only.
    Sync,
}

/// The error code a read-only caller gets for a state-changing command.
pub const FORBIDDEN: i64 = -32001;

/// Bounds of one dispatch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items in a batch (`max_batch_items`).
    pub max_batch: usize,
    /// Most bytes of a rendered reply (`max_reply_size`, or the datagram limit).
    pub max_reply: usize,
    /// `pretty_format`.
    pub pretty: bool,
}

/// Who is calling: for the log line of state-changing commands and for
/// read-only credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `http`, `https`, `fifo`, `udp`, `unix`, `script`.
    pub transport: &'static str,
    /// The peer's address, socket path or reply FIFO.
    pub peer: String,
    /// The authenticated user (HTTP).
    pub user: Option<String>,
    /// Read-only credentials: state-changing commands are refused.
    pub read_only: bool,
}

impl Caller {
    /// A caller with full access and no user.
    pub fn new(transport: &'static str, peer: impl Into<String>) -> Caller {
        Caller {
            transport,
            peer: peer.into(),
            user: None,
            read_only: false,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.transport, self.peer)?;
        if let Some(u) = &self.user {
            write!(f, " user {u}")?;
        }
        Ok(())
    }
}

/// What one dispatch needs besides the document.
pub struct Ctx<'a> {
    /// The program (command registry).
    pub program: &'a Arc<Program>,
    /// Sync or async.
    pub mode: Mode,
    /// Who calls.
    pub caller: &'a Caller,
    /// Bounds.
    pub limits: Limits,
    /// Where refusals are counted.
    pub counters: &'a Counters,
}

/// A buffer that refuses to grow past its limit, so serialisation stops early.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `v` rendered when it takes at most `limit` bytes; `None` when it would
/// take more (found without rendering more than `limit` bytes).
fn render_within(v: &Value, pretty: bool, limit: usize) -> Option<Vec<u8>> {
    let mut b = Bounded {
        buf: Vec::new(),
        limit,
    };
    let r = if pretty {
        serde_json::to_writer_pretty(&mut b, v)
    } else {
        serde_json::to_writer(&mut b, v)
    };
    r.ok().map(|()| b.buf)
}

/// The number of items of a batch document, counted without building them;
/// `None` when `doc` is not an array.
fn batch_len(doc: &[u8]) -> Option<usize> {
    let first = doc.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'[' {
        return None;
    }
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(doc)
        .ok()
        .map(|v| v.len())
}

fn too_large(cx: &Ctx<'_>, id: Option<&Value>, what: &str) -> Value {
    cx.counters.reply_too_large.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        "jsonrpcs: reply to {} too large: {what}; answering -32603",
        cx.caller
    );
    jsonrpc::error(
        id,
        &RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            format!(
                "reply too large: {what} (max_reply_size {} bytes)",
                cx.limits.max_reply
            ),
        ),
    )
}

async fn one(cx: &Ctx<'_>, msg: Result<Message, jsonrpc::Rejected>) -> Option<Value> {
    let c = match msg {
        Err(rejected) => {
            let (id, e) = *rejected;
            return Some(jsonrpc::error(id.as_ref(), &e));
        }
        Ok(Message::Call(c)) => c,
        Ok(Message::Response(_)) => return None,
        Ok(Message::Batch(_)) => {
            return Some(jsonrpc::error(
                None,
                &RpcError::new(jsonrpc::INVALID_REQUEST, "Invalid Request: nested batch"),
            ));
        }
    };
    if cx.program.rpc(&c.method).is_some_and(|s| s.changes_state) {
        if cx.caller.read_only {
            cx.counters
                .read_only_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("jsonrpcs: refused {} to read-only {}", c.method, cx.caller);
            return c.id.map(|id| {
                jsonrpc::error(
                    Some(&id),
                    &RpcError::new(
                        FORBIDDEN,
                        format!(
                            "Forbidden: {} changes state and the credentials are read-only",
                            c.method
                        ),
                    ),
                )
            });
        }
        tracing::info!("jsonrpcs: {} (changes state) from {}", c.method, cx.caller);
    }
    let params = c.positional();
    let outcome = match call(cx.program, &c.method, params) {
        None => Err(RpcError::new(
            jsonrpc::METHOD_NOT_FOUND,
            format!("Method not found: {}", c.method),
        )),
        Some(RpcReply::Now(r)) => r.map_err(|f| RpcError::new(f.code, f.message)),
        Some(RpcReply::Later(fut)) => match cx.mode {
            Mode::Async => fut.await.map_err(|f| RpcError::new(f.code, f.message)),
            Mode::Sync => Err(RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                format!(
                    "{} answers asynchronously: not available from jsonrpc_exec",
                    c.method
                ),
            )),
        },
    };
    let id = c.id?;
    Some(match outcome {
        Ok(v) => jsonrpc::result(&id, v),
        Err(e) => jsonrpc::error(Some(&id), &e),
    })
}

/// Answers one document with the rendered reply; `None` when nothing is to
/// be sent back. The reply is at most `limits.max_reply` bytes: a larger one
/// is replaced by a `-32603` error as soon as the bound is crossed, and a
/// batch is rendered item by item, so no more than the bound is ever built.
pub async fn answer(cx: &Ctx<'_>, doc: &[u8]) -> Option<Vec<u8>> {
    let (pretty, max) = (cx.limits.pretty, cx.limits.max_reply);
    let error = |v: Value| Some(render(&v, false));
    if let Some(n) = batch_len(doc)
        && n > cx.limits.max_batch
    {
        cx.counters.batch_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "jsonrpcs: refused a batch of {n} items from {} (max_batch_items {})",
            cx.caller,
            cx.limits.max_batch
        );
        return error(jsonrpc::error(
            None,
            &RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!(
                    "Invalid Request: batch of {n} items, over the limit of {} (max_batch_items)",
                    cx.limits.max_batch
                ),
            ),
        ));
    }
    match jsonrpc::parse(doc) {
        Ok(Message::Batch(items)) => {
            let total = items.len();
            let (open, sep, close): (&[u8], &[u8], &[u8]) = if pretty {
                (b"[\n  ", b",\n  ", b"\n]\n")
            } else {
                (b"[", b",", b"]\n")
            };
            let mut out = open.to_vec();
            let mut any = false;
            for (i, m) in items.into_iter().enumerate() {
                if cx.mode == Mode::Async && i > 0 {
                    tokio::task::yield_now().await;
                }
                let Some(v) = one(cx, m).await else { continue };
                let room = max.saturating_sub(out.len() + sep.len() + close.len());
                let Some(item) = render_within(&v, pretty, room) else {
                    return error(too_large(
                        cx,
                        None,
                        &format!(
                            "the batch reply passed {max} bytes at item {} of {total}",
                            i + 1
                        ),
                    ));
                };
                if any {
                    out.extend_from_slice(sep);
                }
                any = true;
                if pretty {
                    // Nested one level: JSON text holds no raw newlines but these.
                    for (j, line) in item.split(|&b| b == b'\n').enumerate() {
                        if j > 0 {
                            out.extend_from_slice(b"\n  ");
                        }
                        out.extend_from_slice(line);
                    }
                } else {
                    out.extend_from_slice(&item);
                }
                if out.len() + close.len() > max {
                    return error(too_large(
                        cx,
                        None,
                        &format!(
                            "the batch reply passed {max} bytes at item {} of {total}",
                            i + 1
                        ),
                    ));
                }
            }
            if !any {
                return None;
            }
            out.extend_from_slice(close);
            Some(out)
        }
        other => {
            let v = one(cx, other).await?;
            match render_within(&v, pretty, max.saturating_sub(1)) {
                Some(mut out) => {
                    out.push(b'\n');
                    Some(out)
                }
                None => error(too_large(cx, v.get("id"), &format!("over {max} bytes"))),
            }
        }
    }
}

/// Runs a future that is ready at once (sync dispatch) without a runtime.
pub(crate) fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Serialises a reply, pretty or compact.
pub fn render(v: &Value, pretty: bool) -> Vec<u8> {
    let mut out = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    }
    .unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rendering_stops_at_the_limit() {
        let v = json!({"a": "x".repeat(100)});
        let exact = serde_json::to_vec(&v).unwrap();
        assert_eq!(render_within(&v, false, exact.len()), Some(exact.clone()));
        assert_eq!(render_within(&v, false, exact.len() - 1), None);
        assert_eq!(
            render_within(&v, true, 10_000),
            Some(serde_json::to_vec_pretty(&v).unwrap())
        );
    }

    fn program() -> Arc<Program> {
        let l = siphon_script::load_str(
            "t.cfg",
            "request_route { exit; }\n",
            &siphon_cfg::PreOptions::default(),
            &siphon_script::Registry::new(),
        );
        Arc::new(l.program.expect("compiles"))
    }

    fn run(cx: &Ctx<'_>, doc: &str) -> Option<Value> {
        let mut f = std::pin::pin!(answer(cx, doc.as_bytes()));
        // Polled until done, as a runtime would (the dispatcher yields between items).
        for _ in 0..1000 {
            if let Some(r) = now(f.as_mut()) {
                return r.map(|b| serde_json::from_slice(&b).unwrap());
            }
        }
        panic!("never finished");
    }

    fn limits(max_batch: usize, max_reply: usize) -> Limits {
        Limits {
            max_batch,
            max_reply,
            pretty: false,
        }
    }

    #[test]
    fn the_async_dispatcher_yields_between_batch_items() {
        let p = program();
        let counters = Counters::default();
        let caller = Caller::new("udp", "127.0.0.1:1");
        let doc = r#"[{"jsonrpc":"2.0","method":"core.echo","params":[1],"id":1},{"jsonrpc":"2.0","method":"core.echo","params":[2],"id":2}]"#;
        let mut cx = Ctx {
            program: &p,
            mode: Mode::Async,
            caller: &caller,
            limits: limits(100, 1 << 20),
            counters: &counters,
        };
        assert!(now(answer(&cx, doc.as_bytes())).is_none(), "no yield");
        assert_eq!(run(&cx, doc).unwrap().as_array().unwrap().len(), 2);
        cx.mode = Mode::Sync;
        assert!(now(answer(&cx, doc.as_bytes())).is_some());
    }

    #[test]
    fn read_only_callers_and_bounds() {
        let p = program();
        let counters = Counters::default();
        let mut caller = Caller::new("http", "127.0.0.1:1");
        caller.read_only = true;
        let cx = Ctx {
            program: &p,
            mode: Mode::Async,
            caller: &caller,
            limits: limits(2, 300),
            counters: &counters,
        };
        let r = run(
            &cx,
            r#"{"jsonrpc":"2.0","method":"stats.reset_statistics","params":["all"],"id":1}"#,
        )
        .unwrap();
        assert_eq!(r["error"]["code"], json!(FORBIDDEN), "{r}");
        let r = run(
            &cx,
            r#"{"jsonrpc":"2.0","method":"core.echo","params":[1],"id":1}"#,
        )
        .unwrap();
        assert_eq!(r["result"], json!([1]), "{r}");
        let echo = |n: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"core.echo","params":["{}"],"id":1}}"#,
                "x".repeat(n)
            )
        };
        let r = run(&cx, &format!("[{},{},{}]", echo(1), echo(1), echo(1))).unwrap();
        assert_eq!(r["error"]["code"], json!(-32600), "{r}");
        let r = run(&cx, &format!("[{},{}]", echo(100), echo(200))).unwrap();
        assert_eq!(r["error"]["code"], json!(-32603), "{r}");
        let r = run(&cx, &echo(400)).unwrap();
        assert_eq!(
            (r["error"]["code"].clone(), r["id"].clone()),
            (json!(-32603), json!(1))
        );
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (
                n(&counters.read_only_refused),
                n(&counters.batch_refused),
                n(&counters.reply_too_large)
            ),
            (1, 1, 2)
        );
    }

    #[test]
    fn batches_are_counted_without_building_them() {
        assert_eq!(batch_len(b" [1, {\"a\": [2, 3]}, \"x\"]"), Some(3));
        assert_eq!(batch_len(b"{\"a\": 1}"), None);
        assert_eq!(batch_len(b"[1,"), None);
    }
}
