//! dispatcher end to end, on siphon and (when installed) on Kamailio with the
//! same configuration: three sipp UAS on loopback ports, `ds_select_dst(1,
//! 4)` + `t_relay()` spreads 30 calls round robin; a destination that never
//! answers fails over in `failure_route` with `ds_next_dst()`;
//! `dispatcher.set_state` over jsonrpcs (the seed's array and named forms)
//! takes a destination out at once; `dispatcher.reload` and
//! `dispatcher.list` answer. And the hash algorithms (Call-ID, From, R-URI)
//! pick the same destination for the same key on both; weights (9) and
//! relative weights (11) split 100 picks the same.

use super::harness::{Server, SippUas, free_port, sipp_uac, terminate, wait_bound};
use super::jsonrpcs::{rpc_udp, udp_addr};
use serde_json::{Value, json};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// siphon or Kamailio on `cfg`; `None` when Kamailio is not installed.
fn start(server: &str, cfg: &str, dir: super::cli::Scratch) -> Option<Proxy> {
    match server {
        "siphon" => Some(siphon(cfg, dir)),
        _ => kamailio(cfg, dir),
    }
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
    // -nr: the UAS sends its 200 once (loopback loses nothing): on a busy
    // machine a retransmitted 200 made the caller ACK twice, and the late
    // ACK failed a call at the UAS whichever proxy was in between.
    let uas_at = || SippUas::start_on("127.0.0.1", "uas_ack_bye.xml", "u1", &["-nr"]);
    let uas: Vec<SippUas> = (0..3).map(|_| uas_at()).collect();
    let spare = uas_at();
    // Held (never read) so no other test's peer takes the port: the
    // destination stays silent and its branch times out (408).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let down = silent.local_addr().unwrap();
    let dir = super::cli::Scratch::new(&format!("ds-{server}"));
    let list = format!(
        "# set 1: round robin over three UAS\n1 sip:{}\n1 sip:{}\n1 sip:{}\n# set 2: the first never answers\n2 sip:{down} 0 10\n2 sip:{} 0 5 duid=spare\n",
        uas[0].addr, uas[1].addr, uas[2].addr, spare.addr
    );
    let list_file = dir.write("dispatcher.list", &list);
    let Some(p) = start(server, &ROUTES.replace("LIST_FILE", &list_file), dir) else {
        return;
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

    // Failover: the first destination of set 2 never answers (408 after
    // fr_timer), failure_route takes the next; every call completes.
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
    // Every caller got its call through the failover (sipp_uac checked
    // that). At the UAS siphon's three calls are always clean; with Kamailio
    // on a busy machine the UAS at times counts unexpected INVITEs and then
    // an ACK for a call it already dropped (not investigated further), so
    // its half only needs the failover destination to have answered.
    if name == "siphon" {
        assert_eq!(spare.successful, 3, "{name}: {}", spare.tail());
    } else {
        assert!(spare.successful >= 1, "{name}: {}", spare.tail());
    }
    drop(p);
    drop(silent);
}

#[test]
fn round_robin_failover_and_set_state_on_siphon() {
    scenario("siphon");
}

#[test]
fn round_robin_failover_and_set_state_on_kamailio() {
    scenario("kamailio");
}

/// Which destination each request got: the script answers with `$du` as
/// the reason phrase.
const PICKS: &str = r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "LIST_FILE")
request_route {
    if ($rU == "callid") { ds_select_dst("1", "0"); }
    else if ($rU == "from") { ds_select_dst("1", "1"); }
    else if ($rU == "ruri") {
        # The proxy's own port is in the R-URI: a key the same on both.
        $ru = "sip:" + $fU + "@example.com";
        ds_select_dst("1", "3");
    }
    else if ($rU == "weight") { ds_select_dst("3", "9"); }
    else { ds_select_dst("3", "11"); }
    sl_send_reply("200", "$du");
}
"#;

/// The reason phrases of `n` OPTIONS to `user` at `to`, Call-ID and From
/// user varying.
fn picks(to: SocketAddr, user: &str, n: usize) -> Vec<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    (0..n)
        .map(|i| {
            let m = format!(
                "OPTIONS sip:{user}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{user}{i}\r\nFrom: <sip:u{i}@example.com>;tag=1\r\nTo: <sip:{user}@x>\r\nCall-ID: {i}-{user}@h\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            s.send_to(m.as_bytes(), to).unwrap();
            let mut buf = [0u8; 4000];
            let (k, _) = s.recv_from(&mut buf).expect("a reply");
            let line = String::from_utf8_lossy(&buf[..k]);
            let first = line.lines().next().unwrap_or_default().to_string();
            first.splitn(3, ' ').nth(2).unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn hash_and_weight_picks_match_kamailio() {
    let dir = super::cli::Scratch::new("ds-picks");
    let list = "1 sip:127.0.0.1:5071\n1 sip:127.0.0.1:5072\n1 sip:127.0.0.1:5073\n3 sip:127.0.11.1 0 0 rweight=50;weight=20\n3 sip:127.0.11.2 0 0 rweight=25;weight=30\n3 sip:127.0.11.3 0 0 rweight=25;weight=50\n";
    let f = dir.write("d.list", list);
    let cfg = PICKS.replace("LIST_FILE", &f);
    let srv = Server::start(&cfg);
    let count = |v: Vec<String>| {
        let mut m = std::collections::BTreeMap::new();
        for x in v {
            *m.entry(x).or_insert(0) += 1;
        }
        m
    };
    let ours: Vec<Vec<String>> = ["callid", "from", "ruri"]
        .iter()
        .map(|u| picks(srv.udp, u, 20))
        .collect();
    let weights = count(picks(srv.udp, "weight", 100));
    let rweights = count(picks(srv.udp, "rweight", 100));
    assert_eq!(
        weights.values().copied().collect::<Vec<i32>>(),
        [20, 30, 50],
        "{weights:?}"
    );
    assert_eq!(
        rweights.values().copied().collect::<Vec<i32>>(),
        [50, 25, 25],
        "{rweights:?}"
    );
    // The hashes pick more than one destination.
    assert!(ours[0].iter().any(|d| d != &ours[0][0]), "{ours:?}");
    drop(srv);
    if Command::new("kamailio").arg("-v").output().is_err() {
        eprintln!("kamailio is not installed: its half is skipped");
        return;
    }
    let mut started = None;
    for _ in 0..5 {
        let sip = free_port("u1");
        let text = format!(
            "debug=2\nlog_stderror=yes\nchildren=1\nlisten=udp:{sip}\nmpath=\"/usr/lib/x86_64-linux-gnu/kamailio/modules/\"\n{cfg}"
        );
        let kf = dir.write("kamailio.cfg", &text);
        let mut child = Command::new("kamailio")
            .args(["-f", &kf, "-DD", "-E", "-m", "64", "-M", "8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kamailio");
        if wait_bound(sip, "u1", &mut child) {
            started = Some((sip, child));
            break;
        }
        terminate(&mut child);
    }
    let (sip, mut child) = started.expect("kamailio started");
    let theirs: Vec<Vec<String>> = ["callid", "from", "ruri"]
        .iter()
        .map(|u| picks(sip, u, 20))
        .collect();
    let k_weights = count(picks(sip, "weight", 100));
    let k_rweights = count(picks(sip, "rweight", 100));
    terminate(&mut child);
    assert_eq!(ours, theirs, "the same keys pick the same destinations");
    assert_eq!(weights, k_weights);
    assert_eq!(rweights, k_rweights);
}

/// Probing: OPTIONS every second to every destination (mode 1).
const PROBING: &str = r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "jsonrpcs.so"
loadmodule "dispatcher.so"
modparam("jsonrpcs", "transport", 4)
modparam("dispatcher", "list_file", "LIST_FILE")
modparam("tm", "fr_timer", 1000)
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_ping_from", "sip:ds@127.0.0.1")
request_route {
    sl_send_reply("404", "Not Here");
}
event_route[dispatcher:dst-down] {
    xlog("L_NOTICE", "DISPATCHER DST DOWN $dsv(code) $dsv(reason)\n");
}
event_route[dispatcher:dst-up] {
    xlog("L_NOTICE", "DISPATCHER DST UP $dsv(code) $dsv(reason)\n");
}
"#;

/// Answers every request on `sock` with 200 until `stop` is set.
fn answer_200(
    sock: UdpSocket,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 65_535];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("SIP/2.0") {
                continue;
            }
            let keep: String = text
                .split("\r\n")
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    [
                        "via:", "v:", "from:", "f:", "to:", "t:", "call-id:", "i:", "cseq:",
                    ]
                    .iter()
                    .any(|h| l.starts_with(h))
                })
                .map(|l| format!("{l}\r\n"))
                .collect();
            let reply = format!("SIP/2.0 200 OK\r\n{keep}Content-Length: 0\r\n\r\n");
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    })
}

/// The FLAGS of each destination of set 1, polled until `want` (at most 20 s).
fn wait_flags(p: &Proxy, want: &[&str]) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..200 {
        let l = rpc(p, "dispatcher.list", json!([]));
        last = targets(&l, 1)
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["DEST"]["FLAGS"].as_str().unwrap_or_default().to_string())
            .collect();
        if last == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn probing(server: &str) {
    let alive = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a, s) = (alive.local_addr().unwrap(), silent.local_addr().unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t1 = answer_200(alive, stop.clone());
    let dir = super::cli::Scratch::new(&format!("ds-probe-{server}"));
    // Set order as Kamailio lists it: the last line first.
    let f = dir.write("d.list", &format!("1 sip:{a}\n1 sip:{s}\n"));
    let Some(p) = start(server, &PROBING.replace("LIST_FILE", &f), dir) else {
        return;
    };
    let name = p.name;
    // The silent one goes down, the other stays active; both probed.
    assert_eq!(wait_flags(&p, &["IP", "AP"]), ["IP", "AP"], "{name}");
    if let Some(srv) = &p._srv {
        assert!(srv.log_soon("DISPATCHER DST DOWN 408 <null>"), "{name}");
    }
    // It starts answering: active again.
    let t2 = answer_200(silent, stop.clone());
    assert_eq!(wait_flags(&p, &["AP", "AP"]), ["AP", "AP"], "{name}");
    if let Some(srv) = &p._srv {
        assert!(srv.log_soon("DISPATCHER DST UP 200 OK"), "{name}");
    }
    // dispatcher.ping_active 0 stops probing; 1 resumes it.
    let r = rpc(&p, "dispatcher.ping_active", json!([0]));
    assert_eq!(
        r["result"],
        json!({"NewPingState": 0, "OldPingState": 1}),
        "{name}: {r}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = (t1.join(), t2.join());
    drop(p);
}

#[test]
fn probing_marks_down_and_up_on_siphon() {
    probing("siphon");
}

#[test]
fn probing_marks_down_and_up_on_kamailio() {
    probing("kamailio");
}

/// An HTTP application answering every request with `body` (the set to
/// use), until the listener is dropped with the test.
fn http_app(body: &'static str) -> (SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for c in l.incoming().take(20) {
            let Ok(mut c) = c else { break };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (addr, h)
}

/// The set comes from an HTTP application while the INVITE waits
/// (`http_async_query`); the resumed route selects from it, and the failover
/// after the first destination's 408 still finds the rest of the selection.
#[test]
fn async_http_picks_the_set_and_failover_survives_the_resume() {
    let spare = SippUas::start("uas_ack_bye.xml", "u1");
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let down = silent.local_addr().unwrap();
    let (app, _h) = http_app("2");
    let dir = super::cli::Scratch::new("ds-async");
    let f = dir.write(
        "d.list",
        &format!(
            "1 sip:127.0.0.1:9\n2 sip:{down} 0 10\n2 sip:{} 0 5\n",
            spare.addr
        ),
    );
    let cfg = format!(
        r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "http_async_client.so"
loadmodule "dispatcher.so"
modparam("tm", "fr_timer", 1000)
modparam("dispatcher", "list_file", "{f}")
modparam("dispatcher", "flags", 2)
request_route {{
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (has_totag()) {{
        if (is_method("ACK")) {{ t_check_trans(); }}
        t_relay();
        exit;
    }}
    http_async_query("http://{app}/set", "PICKED");
}}
route[PICKED] {{
    if (!ds_select_dst($http_rb, "8")) {{ t_reply("503", "No Destination"); exit; }}
    t_on_failure("DS");
    t_relay();
}}
failure_route[DS] {{
    if (t_is_canceled()) {{ exit; }}
    if (t_check_status("408|5[0-9][0-9]") || t_branch_timeout()) {{
        if (ds_next_dst()) {{
            t_on_failure("DS");
            t_relay();
        }}
    }}
}}
"#
    );
    let srv = Server::start(&cfg);
    sipp_uac("uac_invite_bye.xml", srv.udp, "u1", 3, &[]);
    let run = spare.finish();
    assert_eq!(run.successful, 3, "{}", run.tail());
    drop(silent);
}
