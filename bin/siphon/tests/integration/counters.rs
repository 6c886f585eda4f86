//! counters end to end: script counters counted by requests, read and reset
//! with the `cnt.*` commands over jsonrpcs, beside the core's statistics.

use super::harness::{Server, UdpUac, request};
use super::jsonrpcs::rpc_doc;
use serde_json::json;
use std::time::Duration;

const CFG: &str = r#"
loadmodule "jsonrpcs.so"
loadmodule "counters.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
modparam("counters", "script_counter", "options OPTIONS seen")
modparam("counters", "script_counter", "app.bytes")
request_route {
    cnt_inc("options");
    cnt_add("app.bytes", $ml);
    sl_send_reply("200", "OK");
}
"#;

#[test]
fn script_counters_over_cnt_rpcs() {
    let srv = Server::start(CFG);
    let uac = UdpUac::new(srv.udp);
    let mut sent = 0;
    for i in 0..3 {
        let r = request(
            "OPTIONS",
            uac.addr(),
            &format!("cnt{i}"),
            &format!("cnt-{i}"),
            "",
        );
        sent += r.len() as i64;
        uac.send(&r);
        assert_eq!(uac.final_code(Duration::from_secs(5)), Some(200));
    }
    assert_eq!(
        rpc_doc(&srv, "cnt.get", json!(["script", "options"]))["result"],
        json!(3)
    );
    assert_eq!(
        rpc_doc(&srv, "cnt.get", json!(["app", "bytes"]))["result"],
        json!(sent)
    );
    assert_eq!(
        rpc_doc(&srv, "cnt.help", json!(["script", "options"]))["result"],
        json!("OPTIONS seen")
    );
    // The core's statistics are counters too.
    let core = rpc_doc(&srv, "cnt.get", json!(["core"]))["result"].clone();
    assert!(core["rcv_requests"].as_i64().unwrap() >= 3, "{core}");
    rpc_doc(&srv, "cnt.reset", json!(["script", "options"]));
    assert_eq!(
        rpc_doc(&srv, "cnt.get", json!(["script", "options"]))["result"],
        json!(0)
    );
    let err = rpc_doc(&srv, "cnt.get", json!(["script", "nope"]));
    assert_eq!(err["error"]["code"], json!(400), "{err}");
}
