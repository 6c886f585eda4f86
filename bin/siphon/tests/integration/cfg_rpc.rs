//! cfg_rpc end to end: `cfg.set maxfwd max_limit` changes what the next
//! request sees; tm's timers read and set; what siphon cannot change is an
//! error that says so.

use super::harness::{Server, UdpUac, request};
use super::jsonrpcs::rpc_doc;
use serde_json::json;
use std::time::Duration;

const CFG: &str = r#"
loadmodule "jsonrpcs.so"
loadmodule "tm.so"
loadmodule "maxfwd.so"
loadmodule "cfg_rpc.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
request_route {
    mf_process_maxfwd_header("10");
    if (is_maxfwd_lt("20")) {
        sl_send_reply("200", "Limited");
    } else {
        sl_send_reply("200", "Open");
    }
}
"#;

fn reason(uac: &UdpUac, n: u32) -> String {
    let r = request(
        "OPTIONS",
        uac.addr(),
        &format!("cfg{n}"),
        &format!("cfg-{n}"),
        "",
    )
    .replace("Max-Forwards: 70", "Max-Forwards: 200");
    uac.send(&r);
    let m = uac.recv(Duration::from_secs(5)).expect("a reply");
    match m.kind {
        siphon_sip::Kind::Response { reason, .. } => {
            String::from_utf8_lossy(m.get(reason)).into_owned()
        }
        _ => panic!("not a reply"),
    }
}

#[test]
fn cfg_set_changes_max_limit_and_tm_timers() {
    let srv = Server::start(CFG);
    let uac = UdpUac::new(srv.udp);
    // 200 counts as max_limit + 1 = 71, then 70: not below 20.
    assert_eq!(reason(&uac, 1), "Open");
    assert_eq!(
        rpc_doc(&srv, "cfg.get", json!(["maxfwd", "max_limit"]))["result"],
        json!(70)
    );
    let r = rpc_doc(&srv, "cfg.set", json!(["maxfwd", "max_limit", 16]));
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(reason(&uac, 2), "Limited");
    assert_eq!(
        rpc_doc(&srv, "cfg.get", json!(["tm", "fr_timer"]))["result"],
        json!(30000)
    );
    rpc_doc(&srv, "cfg.set_now_int", json!(["tm", "fr_timer", 5000]));
    assert_eq!(
        rpc_doc(&srv, "cfg.get", json!(["tm", "fr_timer"]))["result"],
        json!(5000)
    );
    let e = rpc_doc(&srv, "cfg.set", json!(["maxfwd", "max_limit", 300]));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("between 0 and 255"),
        "{e}"
    );
    let e = rpc_doc(&srv, "cfg.get", json!(["core", "debug"]));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read or change core.debug"),
        "{e}"
    );
}
