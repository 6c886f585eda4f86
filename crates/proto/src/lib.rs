//! Small protocols shared by the modules, with no I/O (bytes in, values out).
//!
//! - [`netstring`]: `LEN:payload,` framing (jsonrpcc, evapi, event_jsonrpc's
//!   peers). Written here because the crates that exist were last released in
//!   2017 and 2021 and none bounds the length a peer may announce.
//! - [`jsonrpc`]: JSON-RPC 2.0 requests, notifications, responses, batches and
//!   the specification's error codes.
//! - [`lenient`]: the params text of `jsonrpc_request("m", "{'id': 1234}", …)`:
//!   JSON, or JSON written with single quotes as the seed does.

#![warn(missing_docs)]

pub mod jsonrpc;
pub mod lenient;
pub mod netstring;
