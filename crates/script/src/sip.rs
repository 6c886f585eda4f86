//! The SIP message a route runs for, as modules see it: the message, where
//! it came from, what the script changed (applied when it is relayed), and
//! its transaction. The core puts it in the context's extensions; modules
//! (rr, registrar, sanity …) read and edit it without importing the core.

use crate::net::{Peer, Transport};
use bytes::Bytes;
use siphon_sip::{Edits, SipMsg};

mod record_route;
pub use record_route::{DoubleRr, RecordRoute, RrAddresses, RrSocket};

/// The SIP side of a route run: the message, where it came from, what the
/// script changed, and its transaction.
#[derive(Debug)]
pub struct SipCtx {
    /// The request (or reply, in reply routes).
    pub msg: SipMsg,
    /// Where it came from.
    pub peer: Peer,
    /// Changes made by the script (applied when relaying).
    pub edits: Edits,
    /// Header lines for the next reply (`append_to_reply`).
    pub reply_hdrs: Vec<Bytes>,
    /// `$du`.
    pub du: Option<Bytes>,
    /// The transaction, once created.
    pub tx: Option<siphon_sip::TxId>,
    /// `t_on_failure`, kept until the transaction exists.
    pub failure_route: Option<crate::RouteId>,
    /// `t_on_reply`, kept until the transaction exists.
    pub reply_route: Option<crate::RouteId>,
    /// `t_on_branch`: runs for each branch of the next `t_relay`.
    pub branch_route: Option<crate::RouteId>,
    /// `append_branch`: destinations forked in parallel with the R-URI.
    pub branches: Vec<BranchEntry>,
    /// In a failure route the R-URI was already used (Kamailio's "consumed"):
    /// `t_relay()` needs a new `$ru`, `$du` or branch.
    pub ruri_consumed: bool,
    /// In a reply route: the branch whose reply it is (`$T_branch_idx`).
    pub branch: Option<u16>,
    /// Branch flags of the R-URI's branch, or of the branch being built (`$bf`).
    pub bflags: u64,
    /// Max-Forwards was checked and decremented (by `t_relay`, or the maxfwd module).
    pub max_forwards_done: bool,
    /// `$fs` / `force_send_socket()`: the local socket requests go out from.
    pub send_socket: Option<(Transport, std::net::SocketAddr)>,
    /// `set_forward_no_connect()`: requests only over connections already open.
    pub forward_no_connect: bool,
    /// `t_suspend()` was called: park the transaction when the route ends.
    pub suspend_requested: bool,
    /// `record_route()` / `record_route_preset()` (rr): the Record-Route the
    /// core writes on top of each relayed branch.
    pub record_route: Option<RecordRoute>,
}

impl SipCtx {
    /// The context of a received message.
    pub fn new(msg: SipMsg, peer: Peer) -> Self {
        SipCtx {
            msg,
            peer,
            edits: Edits::default(),
            reply_hdrs: vec![],
            du: None,
            tx: None,
            failure_route: None,
            reply_route: None,
            branch_route: None,
            branches: Vec::new(),
            ruri_consumed: false,
            branch: None,
            bflags: 0,
            max_forwards_done: false,
            send_socket: None,
            forward_no_connect: false,
            suspend_requested: false,
            record_route: None,
        }
    }

    /// The request URI as the script sees it (after `$ru` changes).
    pub fn ruri(&self) -> Bytes {
        self.edits
            .ruri
            .clone()
            .or_else(|| self.msg.ruri())
            .unwrap_or_default()
    }
}

/// One `append_branch` entry.
#[derive(Debug, Clone)]
pub struct BranchEntry {
    /// The branch's request URI.
    pub uri: Bytes,
    /// Where it is sent, if not to `uri`.
    pub du: Option<Bytes>,
    /// `q` × 1000 (Kamailio's scale), if given.
    pub q: Option<i32>,
    /// Branch flags.
    pub flags: u64,
}
