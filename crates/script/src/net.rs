//! What a route knows of the peer a message came from: the transport and the
//! addresses. The core fills it in for every received message; modules read
//! it (jsonrpcs logs and checks the HTTP caller with it) without depending on
//! the core.

use std::net::SocketAddr;

/// The transport a message came over or goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Lower-case name (`$pr`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
    /// Connection-oriented: replies go back on the connection, no retransmissions.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a message came from, and so where its replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Transport.
    pub transport: Transport,
    /// The sender's address.
    pub src: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// The core's id of the TCP connection, for replies on the same connection.
    pub conn: Option<u64>,
}
