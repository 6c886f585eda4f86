//! Kamailio tm's transaction layer as a sans-io state machine.
//!
//! [`TxShard`] holds the transactions whose hash index maps to it: the
//! server transaction toward the caller ([`siphon_sip::ServerTx`]), one
//! client transaction per branch ([`siphon_sip::ClientTx`]), the choice of
//! the final reply (RFC 3261 §16.7, in Kamailio's order), CANCEL, and the
//! routes the script runs for a transaction (failure and reply routes) as
//! actions. No clock is read, no socket touched and no script run here: the
//! shell (`siphon-core`) feeds requests, replies and timer ticks with `now`,
//! performs the [`Action`]s, runs the routes and gives the context back with
//! [`TxShard::route_done`] — the one place that decides what follows a route.
//!
//! Why our own: transaction handling is the proxy itself; no crate implements
//! Kamailio's semantics (fr_inv_timer, failure routes, suspension), and a
//! sans-io core is what lets it be tested on a simulated clock and sharded
//! without locks across workers or nodes.

#![warn(missing_docs)]

pub mod id;
mod select;
mod shard;

pub use id::TxId;
pub use shard::{
    Action, Alternate, BranchSpec, NewTx, Received, RelayError, ReplyEdit, Resumed, RouteKind,
    Shell, TmConfig, TmStats, TxInfo, TxShard,
};

#[cfg(test)]
mod tests;
