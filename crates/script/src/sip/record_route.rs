//! What `record_route()` / `record_route_preset()` (the rr module) asked for,
//! rendered into Record-Route lines by the core when it builds each branch:
//! only then are the sockets known that `record_route()` puts in (the one
//! the request came in on, and with double record-routing the one it leaves
//! from), as Kamailio's rr substitutes them when the branch is printed.

use bytes::Bytes;

/// The Record-Route a request gets when it is relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRoute {
    /// The URI up to the address: `sip:` or `sips:`, with `user@` when
    /// `add_username` is set.
    pub uri_start: Bytes,
    /// The URI parameters after the address (and after `;r2=on`), each with
    /// its `;`: `;lr;ftag=abc;p=1` (`;ftag=abc;lr` for a preset, as Kamailio
    /// writes them).
    pub params: Vec<u8>,
    /// Whose addresses the URIs carry.
    pub addresses: RrAddresses,
}

/// The address part of the Record-Route URI(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RrAddresses {
    /// `record_route()`: our socket's, filled in per branch.
    Ours(DoubleRr),
    /// `record_route_preset(addr[, addr2])`: as written, one line each.
    Preset(Vec<Bytes>),
}

/// `enable_double_rr`: when two Record-Route lines (`;r2=on`) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoubleRr {
    /// 0: one line, the inbound socket's.
    Never,
    /// 1: two when the request leaves from another socket than it came in
    /// on (address, port or transport differ).
    WhenSocketsDiffer,
    /// 2: always two.
    Always,
}

/// One of our sockets as a Record-Route URI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSocket {
    /// `host:port` of the listener (its advertised address when it has one;
    /// IPv6 in brackets).
    pub host_port: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: &'static str,
}

impl RrSocket {
    /// The address part of the URI: `127.0.0.1:5070;transport=tcp`. The
    /// port is left out when it is 5060, `;transport=` for UDP (Kamailio).
    pub fn uri_part(&self) -> String {
        let hp = self
            .host_port
            .strip_suffix(":5060")
            .unwrap_or(&self.host_port);
        match self.transport {
            "udp" => hp.to_string(),
            t => format!("{hp};transport={t}"),
        }
    }
}

impl RecordRoute {
    /// The header lines (each with CRLF) for a branch that came in on
    /// `inbound` and leaves from `outbound`: with double record-routing the
    /// outbound socket's line first, then the inbound one's, both `;r2=on`.
    pub fn lines(&self, inbound: &RrSocket, outbound: &RrSocket) -> Vec<Bytes> {
        let line = |addr: &str, r2: bool| {
            let mut l = Vec::with_capacity(64 + addr.len() + self.params.len());
            l.extend_from_slice(b"Record-Route: <");
            l.extend_from_slice(&self.uri_start);
            l.extend_from_slice(addr.as_bytes());
            if r2 {
                l.extend_from_slice(b";r2=on");
            }
            l.extend_from_slice(&self.params);
            l.extend_from_slice(b">\r\n");
            Bytes::from(l)
        };
        match &self.addresses {
            RrAddresses::Preset(addrs) => addrs
                .iter()
                .map(|a| line(&String::from_utf8_lossy(a), false))
                .collect(),
            RrAddresses::Ours(double) => {
                let (inb, outb) = (inbound.uri_part(), outbound.uri_part());
                let two = match double {
                    DoubleRr::Never => false,
                    DoubleRr::WhenSocketsDiffer => inb != outb,
                    DoubleRr::Always => true,
                };
                if two {
                    vec![line(&outb, true), line(&inb, true)]
                } else {
                    vec![line(&inb, false)]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(hp: &str, t: &'static str) -> RrSocket {
        RrSocket {
            host_port: hp.into(),
            transport: t,
        }
    }

    fn ours(double: DoubleRr) -> RecordRoute {
        RecordRoute {
            uri_start: Bytes::from_static(b"sip:"),
            params: b";lr;ftag=abc".to_vec(),
            addresses: RrAddresses::Ours(double),
        }
    }

    fn text(lines: Vec<Bytes>) -> String {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn one_line_when_the_request_leaves_where_it_came_in() {
        let udp = sock("127.0.0.1:5301", "udp");
        assert_eq!(
            text(ours(DoubleRr::WhenSocketsDiffer).lines(&udp, &udp)),
            "Record-Route: <sip:127.0.0.1:5301;lr;ftag=abc>\r\n"
        );
        // Port 5060 is left out.
        let std = sock("127.0.0.1:5060", "udp");
        assert_eq!(
            text(ours(DoubleRr::WhenSocketsDiffer).lines(&std, &std)),
            "Record-Route: <sip:127.0.0.1;lr;ftag=abc>\r\n"
        );
    }

    #[test]
    fn two_lines_outbound_first_when_the_transport_changes() {
        // What Kamailio 5.6.3 writes for a UDP caller and a TCP callee.
        let (udp, tcp) = (sock("127.0.0.1:5301", "udp"), sock("127.0.0.1:5301", "tcp"));
        assert_eq!(
            text(ours(DoubleRr::WhenSocketsDiffer).lines(&udp, &tcp)),
            "Record-Route: <sip:127.0.0.1:5301;transport=tcp;r2=on;lr;ftag=abc>\r\n\
             Record-Route: <sip:127.0.0.1:5301;r2=on;lr;ftag=abc>\r\n"
        );
        // Another port of the same transport differs too.
        let udp2 = sock("127.0.0.1:5302", "udp");
        assert_eq!(
            ours(DoubleRr::WhenSocketsDiffer).lines(&udp, &udp2).len(),
            2
        );
        assert_eq!(ours(DoubleRr::Never).lines(&udp, &tcp).len(), 1);
        assert_eq!(ours(DoubleRr::Always).lines(&udp, &udp).len(), 2);
        let v6 = sock("[::1]:5061", "tls");
        assert_eq!(
            text(ours(DoubleRr::Never).lines(&v6, &v6)),
            "Record-Route: <sip:[::1]:5061;transport=tls;lr;ftag=abc>\r\n"
        );
    }

    #[test]
    fn presets_as_written_in_order() {
        let rr = RecordRoute {
            uri_start: Bytes::from_static(b"sip:"),
            params: b";ftag=abc;lr".to_vec(),
            addresses: RrAddresses::Preset(vec![
                Bytes::from_static(b"1.2.3.4:5555;foo=1"),
                Bytes::from_static(b"5.6.7.8;r2=on"),
            ]),
        };
        let s = sock("127.0.0.1:5301", "udp");
        assert_eq!(
            text(rr.lines(&s, &s)),
            "Record-Route: <sip:1.2.3.4:5555;foo=1;ftag=abc;lr>\r\n\
             Record-Route: <sip:5.6.7.8;r2=on;ftag=abc;lr>\r\n"
        );
    }
}
