//! The shipped kamailio.cfg's PSTN routing pieces: a custom setting
//! (`pstn.gw_ip = "" desc "…"`) read with `$sel(cfg_get.pstn.gw_ip)`,
//! `strempty`, `starts_with`, `strip`, `prefix`, and the setting changed at
//! run time with cfg_rpc's `cfg.sets` over jsonrpcs.

use super::harness::{Server, UdpUac, request};
use super::jsonrpcs::rpc_doc;
use serde_json::json;
use std::time::Duration;

const CFG: &str = r#"
loadmodule "jsonrpcs.so"
loadmodule "cfg_rpc.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")

pstn.gw_ip = "" desc "PSTN GW Address"
pstn.gw_port = "" desc "PSTN GW Port"

request_route {
    if (strempty($sel(cfg_get.pstn.gw_ip))) {
        sl_send_reply("500", "No PSTN");
        exit;
    }
    if (starts_with("$rU", "00")) {
        strip(2);
        prefix("+");
    }
    $ru = "sip:" + $rU + "@" + $sel(cfg_get.pstn.gw_ip);
    append_to_reply("X-Ru: $ru\r\n");
    sl_send_reply("200", "Routed");
}
"#;

fn call(uac: &UdpUac, n: u32) -> (u16, String) {
    let r = request(
        "INVITE",
        uac.addr(),
        &format!("p{n}"),
        &format!("pstn-{n}"),
        "",
    )
    .replace(
        "INVITE sip:service@127.0.0.1",
        "INVITE sip:004930123@127.0.0.1",
    );
    uac.send(&r);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Some(m) = uac.recv(deadline.saturating_duration_since(std::time::Instant::now())) {
        if m.status().is_some_and(|c| c >= 200) {
            let ru = m
                .headers_named(b"X-Ru")
                .next()
                .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
                .unwrap_or_default();
            return (m.status().unwrap(), ru);
        }
    }
    panic!("no final reply");
}

#[test]
fn pstn_routing_follows_cfg_sets() {
    let srv = Server::start(CFG);
    let uac = UdpUac::new(srv.udp);
    assert_eq!(call(&uac, 1).0, 500, "no gateway yet");
    let r = rpc_doc(&srv, "cfg.sets", json!(["pstn", "gw_ip", "127.0.10.101"]));
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        rpc_doc(&srv, "cfg.get", json!(["pstn", "gw_ip"]))["result"],
        json!("127.0.10.101")
    );
    assert_eq!(
        call(&uac, 2),
        (200, "sip:+4930123@127.0.10.101".to_string())
    );
    assert_eq!(
        rpc_doc(&srv, "cfg.help", json!(["pstn", "gw_port"]))["result"],
        json!("PSTN GW Port")
    );
}
