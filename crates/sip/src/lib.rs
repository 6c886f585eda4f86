//! sans-io SIP for siphon: bytes in, values out.
//!
//! A received message is one [`Bytes`] buffer; [`SipMsg`] indexes its start
//! line and headers as byte ranges and decodes typed views (Via, From/To,
//! CSeq, URIs) only when asked. Changes a route makes (headers added or
//! removed, a new request URI, a Via on top) are recorded as [`Edits`] and
//! applied when the message is serialised, so an unchanged message goes out
//! byte for byte as it came in.
//!
//! Why our own parser: no SIP crate is both maintained and zero-copy, and none
//! is built for a proxy's in-place editing (Kamailio's "lumps"); a proxy reads
//! a handful of headers and forwards the rest untouched, which is exactly what
//! a span index gives.

#![warn(missing_docs)]

pub mod client_tx;
mod hop;
mod msg;
pub mod tx;
mod uri;
mod views;
mod write;

pub use client_tx::{ClientAction, ClientState, ClientTimers, ClientTx, ReplyVerdict};
pub use hop::{CancelReason, build_ack, build_cancel};
pub use msg::{
    FrameError, Header, HeaderName, Headers, Kind, Method, ParseError, Rng, SipMsg, parse,
    parse_for_error_reply, parse_http_request, tcp_frame_len,
};
pub use tx::{ReplyOrigin, ServerTx, TxAction, TxId, TxState};
pub use uri::{Uri, UriError, parse_uri};
pub use views::{
    CSeq, NameAddr, Via, first_and_rest, parse_cseq, parse_name_addr, parse_via, split_commas,
};
pub use write::{At, Edits, ReplyOptions, build_reply, serialize, via_with_received};

/// The largest message siphon accepts over TCP (and builds).
pub const MAX_MESSAGE: usize = 65_536;
