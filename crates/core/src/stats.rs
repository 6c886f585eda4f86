//! Core statistics (Kamailio's `core:`, `sl:` and `tm:` groups).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the SIP core; read by `stats.get_statistics` (later issue) and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received.
    pub rcv_requests: AtomicU64,
    /// Replies received.
    pub rcv_replies: AtomicU64,
    /// Requests relayed statelessly.
    pub fwd_requests: AtomicU64,
    /// Replies relayed.
    pub fwd_replies: AtomicU64,
    /// Requests dropped by the script or unroutable.
    pub drop_requests: AtomicU64,
    /// Replies dropped (not for us, no Via left, script drop).
    pub drop_replies: AtomicU64,
    /// Messages that could not be parsed.
    pub bad_msgs: AtomicU64,
    /// Malformed requests answered with 400.
    pub err_requests: AtomicU64,
    /// Stateless replies sent, by class 1xx..6xx.
    pub sl_replies: [AtomicU64; 6],
    /// ACKs of stateless non-2xx replies, ended before the script (Kamailio's sl).
    pub sl_filtered_acks: AtomicU64,
    /// Messages that could not be sent (connection gone, queue full, socket error).
    pub send_failures: AtomicU64,
    /// Messages whose handling panicked (a bug): dropped, the reader goes on.
    pub panics: AtomicU64,
    /// TCP connections closed for bad framing or oversized messages.
    pub tcp_bad_frames: AtomicU64,
    /// TCP connections refused over `tcp_max_connections`.
    pub tcp_refused: AtomicU64,
    /// TCP connections handed to the HTTP server (xhttp).
    pub http_conns: AtomicU64,
    /// TLS handshakes that failed or timed out (accepted connections and ours).
    pub tls_failed: AtomicU64,
    /// TCP/TLS connections closed after `tcp_connection_lifetime` without traffic.
    pub tcp_idle_closed: AtomicU64,
    /// TCP/TLS connections closed because a message did not arrive whole within `tcp_msg_read_timeout`.
    pub tcp_read_timeouts: AtomicU64,
    /// TCP connections refused over `tcp_max_connections_per_ip`.
    pub tcp_refused_per_ip: AtomicU64,
    /// Messages refused for carrying more than one Content-Length (TCP framing and parsing).
    pub duplicate_content_length: AtomicU64,
    /// Replies too large for a UDP datagram, replaced by a 500.
    pub oversized_replies: AtomicU64,
    /// TCP/TLS connections siphon opened (TLS: handshake done).
    pub tcp_connects: AtomicU64,
    /// Connections siphon tried to open and could not (refused, unreachable,
    /// timed out, TLS handshake failed); what was queued on them failed.
    pub tcp_connect_failures: AtomicU64,
    /// Of `tcp_connect_failures`, those not up within `tcp_connect_timeout`.
    pub tcp_connect_timeouts: AtomicU64,
    /// Connections closed because a write took longer than `tcp_send_timeout`.
    pub tcp_send_timeouts: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn class(arr: &[AtomicU64; 6], code: u16) {
        let i = ((code / 100).clamp(1, 6) - 1) as usize;
        arr[i].fetch_add(1, Ordering::Relaxed);
    }
    /// `(name, value)` pairs, Kamailio-style group:name.
    pub fn snapshot(&self) -> Vec<(String, i64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        let mut v = vec![
            ("core:rcv_requests".into(), g(&self.rcv_requests)),
            ("core:rcv_replies".into(), g(&self.rcv_replies)),
            ("core:fwd_requests".into(), g(&self.fwd_requests)),
            ("core:fwd_replies".into(), g(&self.fwd_replies)),
            ("core:drop_requests".into(), g(&self.drop_requests)),
            ("core:drop_replies".into(), g(&self.drop_replies)),
            ("core:bad_msg_hdr".into(), g(&self.bad_msgs)),
            ("core:err_requests".into(), g(&self.err_requests)),
            ("core:send_failures".into(), g(&self.send_failures)),
            ("core:panics".into(), g(&self.panics)),
            ("core:tcp_bad_frames".into(), g(&self.tcp_bad_frames)),
            ("core:tcp_refused".into(), g(&self.tcp_refused)),
            ("core:http_connections".into(), g(&self.http_conns)),
            ("core:tls_handshake_failures".into(), g(&self.tls_failed)),
            ("core:tcp_idle_closed".into(), g(&self.tcp_idle_closed)),
            ("core:tcp_read_timeouts".into(), g(&self.tcp_read_timeouts)),
            (
                "core:tcp_refused_per_ip".into(),
                g(&self.tcp_refused_per_ip),
            ),
            (
                "core:duplicate_content_length".into(),
                g(&self.duplicate_content_length),
            ),
            ("core:oversized_replies".into(), g(&self.oversized_replies)),
            ("core:tcp_connects".into(), g(&self.tcp_connects)),
            (
                "core:tcp_connect_failures".into(),
                g(&self.tcp_connect_failures),
            ),
            (
                "core:tcp_connect_timeouts".into(),
                g(&self.tcp_connect_timeouts),
            ),
            ("core:tcp_send_timeouts".into(), g(&self.tcp_send_timeouts)),
        ];
        v.push(("sl:filtered_acks".into(), g(&self.sl_filtered_acks)));
        for (i, c) in self.sl_replies.iter().enumerate() {
            v.push((format!("sl:{}xx_replies", i + 1), g(c)));
        }
        v
    }
}

impl Stats {
    /// Sets a counter to zero by its `group:name`; gauges (`tm:current`, `tm:suspended`) keep their value.
    pub fn reset(&self, name: &str) {
        let z = |c: &AtomicU64| c.store(0, Ordering::Relaxed);
        match name {
            "core:rcv_requests" => z(&self.rcv_requests),
            "core:rcv_replies" => z(&self.rcv_replies),
            "core:fwd_requests" => z(&self.fwd_requests),
            "core:fwd_replies" => z(&self.fwd_replies),
            "core:drop_requests" => z(&self.drop_requests),
            "core:drop_replies" => z(&self.drop_replies),
            "core:bad_msg_hdr" => z(&self.bad_msgs),
            "core:err_requests" => z(&self.err_requests),
            "core:send_failures" => z(&self.send_failures),
            "core:panics" => z(&self.panics),
            "core:tcp_bad_frames" => z(&self.tcp_bad_frames),
            "core:tcp_refused" => z(&self.tcp_refused),
            "core:http_connections" => z(&self.http_conns),
            "core:tls_handshake_failures" => z(&self.tls_failed),
            "core:tcp_idle_closed" => z(&self.tcp_idle_closed),
            "core:tcp_read_timeouts" => z(&self.tcp_read_timeouts),
            "core:tcp_refused_per_ip" => z(&self.tcp_refused_per_ip),
            "core:duplicate_content_length" => z(&self.duplicate_content_length),
            "core:oversized_replies" => z(&self.oversized_replies),
            "sl:filtered_acks" => z(&self.sl_filtered_acks),
            "core:tcp_connects" => z(&self.tcp_connects),
            "core:tcp_connect_failures" => z(&self.tcp_connect_failures),
            "core:tcp_connect_timeouts" => z(&self.tcp_connect_timeouts),
            "core:tcp_send_timeouts" => z(&self.tcp_send_timeouts),
            n => {
                for (group, arr) in [("sl", &self.sl_replies)] {
                    for (i, c) in arr.iter().enumerate() {
                        if n == format!("{group}:{}xx_replies", i + 1) {
                            z(c);
                        }
                    }
                }
            }
        }
    }
}
