//! dispatcher end to end, on siphon and (when installed) on Kamailio with the
//! same configuration: three sipp UAS on loopback ports, `ds_select_dst(1,
//! 4)` + `t_relay()` spreads 30 calls round robin; a destination nobody
//! listens on fails over in `failure_route` with `ds_next_dst()`;
//! `dispatcher.set_state` over jsonrpcs (the seed's array and named forms)
//! takes a destination out at once; `dispatcher.reload` and
//! `dispatcher.list` answer.

use super::harness::{Server, SippUas, free_port, sipp_uac, terminate, wait_bound};
use super::jsonrpcs::{rpc_udp, udp_addr};
use serde_json::{Value, json};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The routing, the same on both servers. A request for the proxy itself
/// is dispatched (user `fail`: set 2, whose first destination is down); an
/// in-dialog request that names a UAS (its Contact) goes there.
const ROUTES: &str = r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "jsonrpcs.so"
loadmodule "dispatcher.so"
modparam("tm", "fr_timer", 1000)
modparam("jsonrpcs", "transport", 4)
modparam("dispatcher", "list_file", "LIST_FILE")
modparam("dispatcher", "flags", 2)
request_route {
    if (is_method("CANCEL")) {
        if (t_check_trans()) { t_relay(); }
        exit;
    }
    if (is_method("ACK")) {
        t_check_trans();
        t_relay();
        exit;
    }
    if (uri == myself) {
        if ($rU == "fail") {
            if (!ds_select_dst("2", "8")) { sl_send_reply("503", "No Destination"); exit; }
        } else {
            if (!ds_select_dst("1", "4")) { sl_send_reply("503", "No Destination"); exit; }
        }
        t_on_failure("DS");
    }
    if (!t_relay()) { sl_reply_error(); }
}
failure_route[DS] {
    if (t_is_canceled()) { exit; }
    if (t_check_status("408|5[0-9][0-9]") || t_branch_timeout()) {
        if (ds_next_dst()) {
            xlog("L_INFO", "dispatcher failover to $du\n");
            t_on_failure("DS");
            t_relay();
        }
    }
}
"#;

/// A proxy under test: where it takes SIP and jsonrpcs datagrams.
struct Proxy {
    name: &'static str,
    sip: SocketAddr,
    rpc: SocketAddr,
    _srv: Option<Server>,
    kam: Option<Child>,
    _dir: super::cli::Scratch,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(c) = &mut self.kam {
            terminate(c);
        }
    }
}

fn siphon(cfg: &str, dir: super::cli::Scratch) -> Proxy {
    let cfg = cfg.replace(
        "modparam(\"jsonrpcs\", \"transport\", 4)",
        "modparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:127.0.0.1:0\")",
    );
    let srv = Server::start(&cfg);
    Proxy {
        name: "siphon",
        sip: srv.udp,
        rpc: udp_addr(&srv),
        _srv: Some(srv),
        kam: None,
        _dir: dir,
    }
}

fn kamailio(cfg: &str, dir: super::cli::Scratch) -> Option<Proxy> {
    if Command::new("kamailio").arg("-v").output().is_err() {
        eprintln!("kamailio is not installed: its half is skipped");
        return None;
    }
    for _ in 0..5 {
        let sip = free_port("u1");
        let rpc = free_port("u1");
        let text = format!(
            "debug=2\nlog_stderror=yes\nchildren=2\nlisten=udp:{sip}\nmpath=\"/usr/lib/x86_64-linux-gnu/kamailio/modules/\"\nloadmodule \"textops.so\"\n{}",
            cfg.replace(
                "modparam(\"jsonrpcs\", \"transport\", 4)",
                &format!("modparam(\"jsonrpcs\", \"transport\", 4)\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"udp:{rpc}\")"),
            )
        );
        let f = dir.write("kamailio.cfg", &text);
        let mut child = Command::new("kamailio")
            .args(["-f", &f, "-DD", "-E", "-m", "64", "-M", "8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kamailio");
        if wait_bound(sip, "u1", &mut child) && wait_bound(rpc, "u1", &mut child) {
            return Some(Proxy {
                name: "kamailio",
                sip,
                rpc,
                _srv: None,
                kam: Some(child),
                _dir: dir,
            });
        }
        terminate(&mut child);
    }
    panic!("kamailio did not start");
}

fn rpc(p: &Proxy, method: &str, params: Value) -> Value {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let doc = json!({"jsonrpc":"2.0","method":method,"params":params,"id":1});
    rpc_udp(&sock, p.rpc, &doc.to_string()).expect("a jsonrpcs reply")
}

/// The destinations of set `id` in a `dispatcher.list` answer.
fn targets(l: &Value, id: i64) -> Value {
    l["result"]["RECORDS"]
        .as_array()
        .and_then(|r| r.iter().find(|s| s["SET"]["ID"] == json!(id)))
        .map(|s| s["SET"]["TARGETS"].clone())
        .unwrap_or_else(|| panic!("no set {id} in {l}"))
}

fn scenario(server: &str) {
    let uas: Vec<SippUas> = (0..3)
        .map(|_| SippUas::start("uas_ack_bye.xml", "u1"))
        .collect();
    let spare = SippUas::start("uas_ack_bye.xml", "u1");
    let down = free_port("u1");
    let dir = super::cli::Scratch::new(&format!("ds-{server}"));
    let list = format!(
        "# set 1: round robin over three UAS\n1 sip:{}\n1 sip:{}\n1 sip:{}\n# set 2: nobody listens on the first\n2 sip:{down} 0 10\n2 sip:{} 0 5 duid=spare\n",
        uas[0].addr, uas[1].addr, uas[2].addr, spare.addr
    );
    let list_file = dir.write("dispatcher.list", &list);
    let cfg = ROUTES.replace("LIST_FILE", &list_file);
    let p = match server {
        "siphon" => siphon(&cfg, dir),
        _ => match kamailio(&cfg, dir) {
            Some(p) => p,
            None => return,
        },
    };
    let name = p.name;

    // The list as loaded.
    let l = rpc(&p, "dispatcher.list", json!([]));
    assert_eq!(l["result"]["NRSETS"], json!(2), "{name}: {l}");
    let t = targets(&l, 1);
    // Kamailio's order: equal priorities from the file's last line.
    assert_eq!(
        t[0]["DEST"]["URI"],
        json!(format!("sip:{}", uas[2].addr)),
        "{name}: {l}"
    );
    assert_eq!(t[0]["DEST"]["FLAGS"], json!("AX"), "{name}: {l}");

    // 30 calls, one at a time: 10 each.
    sipp_uac("uac_invite_bye.xml", p.sip, "u1", 30, &[]);

    // Failover: the first destination of set 2 is down (ICMP refused or
    // timeout), failure_route takes the next; every call completes.
    sipp_uac("uac_invite_bye.xml", p.sip, "u1", 3, &["-s", "fail"]);

    // The seed's examples: set_state with array params, then named params.
    let r = rpc(
        &p,
        "dispatcher.set_state",
        json!(["ip", 1, format!("sip:{}", uas[2].addr)]),
    );
    assert_eq!(
        r["result"],
        json!("Ok. Dispatcher state updated."),
        "{name}: {r}"
    );
    let l = rpc(&p, "dispatcher.list", json!([]));
    assert_eq!(
        targets(&l, 1)[0]["DEST"]["FLAGS"],
        json!("IP"),
        "{name}: {l}"
    );
    // 30 more calls: none reaches the third UAS; the other two take turns.
    sipp_uac("uac_invite_bye.xml", p.sip, "u1", 30, &[]);
    let r = rpc(
        &p,
        "dispatcher.set_state",
        json!({"state": "a", "grpup": 1, "address": format!("sip:{}", uas[2].addr)}),
    );
    assert!(r.get("error").is_none(), "{name}: {r}");
    let l = rpc(&p, "dispatcher.list", json!([]));
    assert_eq!(
        targets(&l, 1)[0]["DEST"]["FLAGS"],
        json!("AX"),
        "{name}: {l}"
    );
    let r = rpc(&p, "dispatcher.reload", json!([]));
    assert_eq!(
        r["result"],
        json!("Ok. Dispatcher successfully reloaded."),
        "{name}: {r}"
    );
    let r = rpc(&p, "dispatcher.ping_active", json!([]));
    assert_eq!(r["result"], json!({"OldPingState": 1}), "{name}: {r}");
    let r = rpc(
        &p,
        "dispatcher.set_state",
        json!(["a", 1, "sip:127.0.0.1:9"]),
    );
    assert_eq!(r["error"]["code"], json!(500), "{name}: {r}");

    let counts: Vec<u64> = uas
        .into_iter()
        .map(|u| {
            let run = u.finish();
            assert_eq!(run.failed, 0, "{name}: {}", run.tail());
            run.successful
        })
        .collect();
    let spare = spare.finish();
    eprintln!(
        "{name}: per UAS {counts:?}, failover UAS {}",
        spare.successful
    );
    // Round robin: 10 each; then the third is out and the other two take all.
    assert_eq!(counts[2], 10, "{name}: {counts:?}");
    assert_eq!(counts[0] + counts[1], 50, "{name}: {counts:?}");
    assert_eq!(counts[..2], [25, 25], "{name}: {counts:?}");
    assert_eq!(spare.successful, 3, "{name}: {}", spare.tail());
    drop(p);
}

#[test]
fn round_robin_failover_and_set_state_on_siphon() {
    scenario("siphon");
}

#[test]
fn round_robin_failover_and_set_state_on_kamailio() {
    scenario("kamailio");
}
