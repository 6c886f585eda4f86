//! JSON-RPC 2.0 over the RPC registry: one document in, the reply document
//! (or nothing, for notifications) out. Shared by every transport.

use serde_json::Value;
use siphon_proto::jsonrpc::{self, Message, RpcError};
use siphon_script::Program;
use siphon_script::rpc::{RpcReply, call};
use std::sync::Arc;

/// Why a dispatch runs: transports await commands that answer later; the
/// script (`jsonrpc_exec`) cannot wait and gets an error for those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A transport: awaits.
    Async,
    /// `jsonrpc_exec`: synchronous only.
    Sync,
}

async fn one(
    program: &Arc<Program>,
    msg: Result<Message, jsonrpc::Rejected>,
    mode: Mode,
) -> Option<Value> {
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
    let params = c.positional();
    let outcome = match call(program, &c.method, params) {
        None => Err(RpcError::new(
            jsonrpc::METHOD_NOT_FOUND,
            format!("Method not found: {}", c.method),
        )),
        Some(RpcReply::Now(r)) => r.map_err(|f| RpcError::new(f.code, f.message)),
        Some(RpcReply::Later(fut)) => match mode {
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

/// Answers one document; `None` when nothing is to be sent back.
pub async fn dispatch(program: &Arc<Program>, doc: &[u8], mode: Mode) -> Option<Value> {
    match jsonrpc::parse(doc) {
        Ok(Message::Batch(items)) => {
            let mut out = Vec::new();
            for m in items {
                if let Some(v) = one(program, m, mode).await {
                    out.push(v);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => one(program, other, mode).await,
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
