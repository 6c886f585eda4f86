//! registrar and usrloc against real peers: `bench/kamailio-registrar.cfg`
//! run unchanged by siphon and by Kamailio 5.6 (when installed), on free
//! loopback ports — sipp registering, querying and unregistering
//! (`bench/sipp/register.xml`), raw REGISTERs whose 200s must carry the same
//! Contact header on both, min_expires raised or refused with 423, lookup
//! relaying an INVITE to a registered sipp UAS and 404 for nobody, the `ul.*`
//! commands over jsonrpcs. siphon alone: the expiry timer running
//! `event_route[usrloc:contact-expired]`, db_mode refused.

use super::harness::{Server, SippUas, UdpUac, free_port, sipp_uac, wait_bound};
use super::jsonrpcs::{rpc_doc, stat};
use serde_json::{Value, json};
use siphon_sip::SipMsg;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Which {
    Siphon,
    Kamailio,
}

/// A registrar on `bench/kamailio-registrar.cfg`: SIP and jsonrpcs (UDP)
/// on free ports; stopped with SIGTERM when dropped.
struct Registrar {
    sip: SocketAddr,
    rpc: SocketAddr,
    child: Child,
    which: Which,
}

impl Registrar {
    /// None (after a note) for Kamailio when it is not installed.
    fn start(which: Which, defines: &[&str]) -> Option<Registrar> {
        let cfg = format!(
            "{}/../../bench/kamailio-registrar.cfg",
            env!("CARGO_MANIFEST_DIR")
        );
        if matches!(which, Which::Kamailio) && Command::new("kamailio").arg("-v").output().is_err()
        {
            eprintln!(
                "kamailio is not installed (scripts/install-test-peers.sh): its half skipped"
            );
            return None;
        }
        for _ in 0..5 {
            let (sip, rpc) = (free_port("u1"), free_port("u1"));
            let mut cmd = match which {
                Which::Siphon => crate::harness::siphon_command(),
                Which::Kamailio => {
                    let mut c = Command::new("kamailio");
                    c.args(["-DD", "-E", "-m", "64", "-M", "16"]);
                    c
                }
            };
            cmd.args(["-f", &cfg])
                .args(["-A", &format!("PROXY_PORT={}", sip.port())])
                .args(["-A", &format!("RPC_SOCKET=\"udp:{rpc}\"")]);
            for d in defines {
                cmd.args(["-A", d]);
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn the registrar");
            if wait_bound(sip, "u1", &mut child) && wait_bound(rpc, "u1", &mut child) {
                return Some(Registrar {
                    sip,
                    rpc,
                    child,
                    which,
                });
            }
            drop(Registrar {
                sip,
                rpc,
                child,
                which,
            });
        }
        panic!("{which:?} did not start on {cfg}");
    }

    /// One jsonrpcs command: the reply document.
    fn rpc(&self, method: &str, params: Value) -> Value {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let doc = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        sock.send_to(doc.to_string().as_bytes(), self.rpc).unwrap();
        let mut buf = vec![0u8; 70_000];
        let (n, _) = sock.recv_from(&mut buf).expect("a jsonrpcs reply");
        serde_json::from_slice(&buf[..n]).expect("a JSON reply")
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on siphon, then on Kamailio when it is installed.
fn on_both(defines: &[&str], f: impl Fn(&Registrar)) {
    for which in [Which::Siphon, Which::Kamailio] {
        if let Some(r) = Registrar::start(which, defines) {
            f(&r);
        }
    }
}

/// A header's values joined (`None` when absent).
fn header(m: &SipMsg, name: &str) -> Option<String> {
    let v: Vec<String> = m
        .headers_named(name.as_bytes())
        .map(|h| String::from_utf8_lossy(&m.header_value(h)).into_owned())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Sends a REGISTER for `user` and returns its final reply.
fn register(
    uac: &UdpUac,
    to: SocketAddr,
    user: &str,
    cseq: u32,
    call_id: &str,
    contacts: &[&str],
    extra: &str,
) -> SipMsg {
    let contact: String = contacts
        .iter()
        .map(|c| format!("Contact: {c}\r\n"))
        .collect();
    uac.send(&format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
         From: <sip:{user}@127.0.0.1>;tag=t{call_id}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n{contact}{extra}Content-Length: 0\r\n\r\n",
        uac.addr()
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(m) = uac.recv(deadline.saturating_duration_since(Instant::now())) {
        if m.status().is_some_and(|c| c >= 200) {
            return m;
        }
    }
    panic!("no final reply to REGISTER {cseq} of {user}");
}

fn sipp_register(r: &Registrar, scenario: &str, user: &str, expires: u32) {
    sipp_uac(
        scenario,
        r.sip,
        "u1",
        1,
        &["-s", user, "-key", "expires", &expires.to_string()],
    );
}

/// The contacts `ul.dump` shows for `aor` (none when it is absent).
fn dumped(r: &Registrar, aor: &str) -> Vec<Value> {
    let d = r.rpc("ul.dump", json!([]));
    let domains = d["result"]["Domains"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    domains
        .iter()
        .filter(|d| d["Domain"]["Domain"] == "location")
        .flat_map(|d| d["Domain"]["AoRs"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["Info"]["AoR"] == aor)
        .flat_map(|a| {
            a["Info"]["Contacts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn sipp_registers_queries_and_unregisters() {
    on_both(&[], |r| {
        // REGISTER -> 200 with the contact and ;expires=, query -> 200 with it, Contact: * -> 200.
        sipp_register(r, "register.xml", "alice", 300);
        assert!(
            dumped(r, "alice").is_empty(),
            "{:?}: alice unregistered",
            r.which
        );
        sipp_register(r, "register_only.xml", "alice", 300);
        let c = dumped(r, "alice");
        assert_eq!(c.len(), 1, "{:?}: {c:?}", r.which);
        let c = &c[0]["Contact"];
        assert!(
            c["Address"]
                .as_str()
                .unwrap()
                .starts_with("sip:alice@127.0.0.1:"),
            "{c}"
        );
        let e = c["Expires"].as_i64().unwrap();
        assert!((1..=300).contains(&e), "{c}");
        assert_eq!(c["User-Agent"], "sipp register.xml");
        assert_eq!(
            (c["Q"].as_i64(), c["CSeq"].as_i64(), &c["Received"]),
            (Some(-1), Some(1), &json!("[not set]"))
        );
        // Kamailio's shape, key for key.
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "Address",
                "CFlags",
                "CSeq",
                "Call-ID",
                "Expires",
                "Flags",
                "Instance",
                "KA-Roundtrip",
                "Keepalive",
                "Last-Keepalive",
                "Last-Modified",
                "Methods",
                "Path",
                "Q",
                "Received",
                "Reg-Id",
                "Ruid",
                "Server-Id",
                "Socket",
                "State",
                "Tcpconn-Id",
                "User-Agent"
            ]
        );
        assert_eq!(c["Socket"], format!("udp:{}", r.sip));
    });
}

#[test]
fn the_200_lists_every_binding_as_kamailio_does() {
    on_both(&[], |r| {
        let uac = UdpUac::new(r.sip);
        let to = r.sip;
        let contact = |m: &SipMsg| header(m, "Contact");
        let m = register(
            &uac,
            to,
            "bob",
            1,
            "c1",
            &[
                "<sip:bob@127.0.0.1:7001>;q=0.5",
                "<sip:bob@127.0.0.1:7002>;expires=30",
            ],
            "Expires: 300\r\n",
        );
        assert_eq!(m.status(), Some(200));
        assert_eq!(
            contact(&m).as_deref(),
            Some("<sip:bob@127.0.0.1:7001>;q=0.5;expires=300, <sip:bob@127.0.0.1:7002>;expires=60"),
            "{:?}",
            r.which
        );
        // a higher q goes first; a query lists everything
        let m = register(
            &uac,
            to,
            "bob",
            2,
            "c1",
            &["<sip:bob@127.0.0.1:7003>;q=1"],
            "Expires: 300\r\n",
        );
        let all = "<sip:bob@127.0.0.1:7003>;q=1;expires=300, <sip:bob@127.0.0.1:7001>;q=0.5;expires=300, <sip:bob@127.0.0.1:7002>;expires=60";
        assert_eq!(contact(&m).as_deref(), Some(all));
        let m = register(&uac, to, "bob", 3, "c1", &[], "");
        assert_eq!((m.status(), contact(&m).as_deref()), (Some(200), Some(all)));
        // the same Call-ID with a lower CSeq
        let m = register(
            &uac,
            to,
            "bob",
            1,
            "c1",
            &["<sip:bob@127.0.0.1:7003>"],
            "Expires: 300\r\n",
        );
        assert_eq!(m.status(), Some(400));
        assert_eq!(
            header(&m, "P-Registrar-Error").as_deref(),
            Some("Invalid CSeq number")
        );
        // Contact: * only with Expires: 0, and alone
        let m = register(&uac, to, "bob", 4, "c1", &["*"], "Expires: 300\r\n");
        assert_eq!(m.status(), Some(400));
        assert_eq!(
            header(&m, "P-Registrar-Error").as_deref(),
            Some("* used in contact and expires is not zero")
        );
        let m = register(
            &uac,
            to,
            "bob",
            4,
            "c1",
            &["*", "<sip:x@127.0.0.1>"],
            "Expires: 0\r\n",
        );
        assert_eq!(
            header(&m, "P-Registrar-Error").as_deref(),
            Some("* used in contact and more than 1 contact")
        );
        // expires=0 removes one binding
        let m = register(
            &uac,
            to,
            "bob",
            6,
            "c1",
            &["<sip:bob@127.0.0.1:7001>;expires=0"],
            "",
        );
        assert_eq!(
            contact(&m).as_deref(),
            Some("<sip:bob@127.0.0.1:7003>;q=1;expires=300, <sip:bob@127.0.0.1:7002>;expires=60")
        );
        let m = register(&uac, to, "bob", 7, "c1", &["*"], "Expires: 0\r\n");
        assert_eq!((m.status(), contact(&m)), (Some(200), None));
        // max_expires 3600 caps
        let m = register(
            &uac,
            to,
            "bob",
            8,
            "c1",
            &["<sip:bob@127.0.0.1:7005>;expires=5000"],
            "",
        );
        assert_eq!(
            contact(&m).as_deref(),
            Some("<sip:bob@127.0.0.1:7005>;expires=3600")
        );
        // an RFC 5626 instance is its own binding, printed back
        let m = register(
            &uac,
            to,
            "bob",
            9,
            "c2",
            &["<sip:bob@127.0.0.1:7005>;+sip.instance=\"<urn:uuid:1>\";reg-id=1"],
            "",
        );
        assert_eq!(
            contact(&m).as_deref(),
            Some(
                "<sip:bob@127.0.0.1:7005>;expires=3600, <sip:bob@127.0.0.1:7005>;expires=3600;+sip.instance=\"<urn:uuid:1>\";reg-id=1"
            )
        );
    });
}

#[test]
fn short_expires_are_raised_to_min_expires_or_refused_with_423() {
    on_both(&[], |r| {
        let uac = UdpUac::new(r.sip);
        let m = register(
            &uac,
            r.sip,
            "carol",
            1,
            "c1",
            &["<sip:carol@127.0.0.1:7001>;expires=10"],
            "",
        );
        assert_eq!(m.status(), Some(200), "{:?}", r.which);
        assert_eq!(
            header(&m, "Contact").as_deref(),
            Some("<sip:carol@127.0.0.1:7001>;expires=60")
        );
    });
    on_both(&["MIN_EXPIRES_MODE=1"], |r| {
        let uac = UdpUac::new(r.sip);
        let m = register(
            &uac,
            r.sip,
            "carol",
            1,
            "c1",
            &["<sip:carol@127.0.0.1:7001>;expires=10"],
            "",
        );
        assert_eq!(m.status(), Some(423), "{:?}", r.which);
        assert_eq!(header(&m, "Min-Expires").as_deref(), Some("60"));
        assert_eq!(
            header(&m, "P-Registrar-Error").as_deref(),
            Some("Interval too brief")
        );
        assert!(dumped(r, "carol").is_empty());
    });
}

#[test]
fn lookup_relays_an_invite_to_the_registered_uas_and_404_otherwise() {
    on_both(&[], |r| {
        let uas = SippUas::start("uas", "u1");
        let uac = UdpUac::new(r.sip);
        let m = register(
            &uac,
            r.sip,
            "dave",
            1,
            "c1",
            &[&format!("<sip:dave@{}>", uas.addr)],
            "",
        );
        assert_eq!(m.status(), Some(200));
        // INVITE sip:dave@proxy -> lookup -> the UAS; ACK and BYE too (sipp's
        // built-in uac sends them to the proxy with the same R-URI).
        sipp_uac("uac", r.sip, "u1", 1, &["-s", "dave"]);
        let run = uas.finish();
        assert_eq!(
            (run.successful, run.failed),
            (1, 0),
            "{:?}: {}",
            r.which,
            run.tail()
        );
        sipp_uac(
            "uac_expect.xml",
            r.sip,
            "u1",
            1,
            &["-s", "nobody", "-key", "expect", "404"],
        );
    });
}

#[test]
fn ul_commands_add_look_up_and_remove_bindings() {
    on_both(&[], |r| {
        // the table the script names exists from the start
        let empty = json!([{"Domain": {"Domain": "location", "Size": 1024, "AoRs": [], "Stats": {"Records": 0, "Max-Slots": 0}}}]);
        assert_eq!(
            r.rpc("ul.dump", json!([]))["result"]["Domains"],
            empty,
            "{:?}",
            r.which
        );
        let e = r.rpc("ul.lookup", json!(["nosuch", "erin"]));
        assert_eq!(
            e["error"],
            json!({"code": 500, "message": "Domain table not found"}),
            "{:?}",
            r.which
        );
        // expires 0: permanent; q below 0: none
        let add = r.rpc(
            "ul.add",
            json!([
                "location",
                "zed",
                "sip:zed@127.0.0.1:7000",
                0,
                -1,
                "0",
                0,
                0,
                4294967295u32
            ]),
        );
        assert_eq!(add["result"], json!({}), "{:?}: {add}", r.which);
        let brief = r.rpc("ul.dump", json!(["brief"]));
        assert_eq!(
            brief["result"]["Domains"][0]["Domain"]["AoRs"],
            json!([{"AoR": "zed"}]),
            "{brief}"
        );
        let c = &dumped(r, "zed")[0]["Contact"];
        assert_eq!(
            (&c["Expires"], &c["Q"]),
            (&json!("permanent"), &json!(-1)),
            "{c}"
        );
        assert_eq!(
            r.rpc("ul.rm", json!(["location", "zed"]))["result"],
            json!({})
        );
        let add = r.rpc(
            "ul.add",
            json!([
                "location",
                "erin",
                "sip:erin@127.0.0.1:7009",
                600,
                0.5,
                "",
                0,
                0,
                4294967295u32
            ]),
        );
        assert!(add.get("error").is_none(), "{:?}: {add}", r.which);
        let l = r.rpc("ul.lookup", json!(["location", "erin"]));
        let c = &l["result"]["Contacts"][0]["Contact"];
        assert_eq!(
            (&l["result"]["AoR"], &c["Address"], &c["Q"]),
            (
                &json!("erin"),
                &json!("sip:erin@127.0.0.1:7009"),
                &json!(0.5)
            ),
            "{l}"
        );
        let gone = r.rpc(
            "ul.rm_contact",
            json!(["location", "erin", "sip:erin@127.0.0.1:7009"]),
        );
        assert!(gone.get("error").is_none(), "{gone}");
        let l = r.rpc("ul.lookup", json!(["location", "erin"]));
        assert_eq!(
            l["error"]["message"], "AOR not found in location table",
            "{:?}: {l}",
            r.which
        );
        r.rpc(
            "ul.add",
            json!([
                "location",
                "erin",
                "sip:erin@127.0.0.1:7009",
                600,
                1,
                "",
                0,
                0,
                4294967295u32
            ]),
        );
        assert_eq!(dumped(r, "erin").len(), 1);
        let rm = r.rpc("ul.rm", json!(["location", "erin"]));
        assert!(rm.get("error").is_none(), "{rm}");
        assert!(dumped(r, "erin").is_empty());
    });
}

const EXPIRY_CFG: &str = r#"
loadmodule "jsonrpcs.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
modparam("usrloc", "timer_interval", 1)
modparam("registrar", "min_expires", 0)
request_route {
    if (is_method("REGISTER")) {
        save("location");
        exit;
    }
    sl_send_reply("404", "Not Found");
}
event_route[usrloc:contact-expired] {
    xlog("L_INFO", "expired $ulc(exp=>aor) $ulc(exp=>addr)\n");
}
"#;

#[test]
fn the_timer_removes_expired_contacts_and_runs_the_event_route() {
    let srv = Server::start(EXPIRY_CFG);
    let uac = UdpUac::new(srv.udp);
    let m = register(
        &uac,
        srv.udp,
        "frank",
        1,
        "c1",
        &[
            "<sip:frank@127.0.0.1:7010>;expires=1",
            "<sip:frank@127.0.0.1:7011>;expires=3600",
        ],
        "",
    );
    assert_eq!(
        header(&m, "Contact").as_deref(),
        Some("<sip:frank@127.0.0.1:7010>;expires=1, <sip:frank@127.0.0.1:7011>;expires=3600")
    );
    assert_eq!(stat(&srv, "usrloc:location-contacts"), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log_contains("expired frank sip:frank@127.0.0.1:7010") {
        assert!(Instant::now() < deadline, "no usrloc:contact-expired run");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stat(&srv, "usrloc:location-expires"), 1);
    assert_eq!(stat(&srv, "usrloc:location-contacts"), 1);
    assert_eq!(stat(&srv, "usrloc:registered_users"), 1);
    let d = rpc_doc(&srv, "ul.lookup", json!(["location", "frank"]));
    let contacts = d["result"]["Contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{d}");
    assert_eq!(
        contacts[0]["Contact"]["Address"],
        "sip:frank@127.0.0.1:7011"
    );
}

#[test]
fn usrloc_refuses_a_database_mode() {
    let dir = super::cli::Scratch::new("usrloc-dbmode");
    let f = dir.write(
        "db.cfg",
        "loadmodule \"usrloc.so\"\nmodparam(\"usrloc\", \"db_mode\", 2)\nrequest_route { exit; }\n",
    );
    let out = crate::harness::siphon_command()
        .args(["-c", "-f", &f])
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("db_mode 2") && err.contains("in memory"),
        "{err}"
    );
}

#[test]
fn lookup_forks_in_parallel_to_every_contact_highest_q_first() {
    on_both(&[], |r| {
        let answers = SippUas::start("uas_ack_bye.xml", "u1");
        let ringing = SippUas::start("uas_ring_cancel.xml", "u1");
        let uac = UdpUac::new(r.sip);
        let contacts = [
            format!("<sip:ring@{}>;q=0.5", ringing.addr),
            format!("<sip:grace@{}>;q=1", answers.addr),
        ];
        let m = register(
            &uac,
            r.sip,
            "grace",
            1,
            "c1",
            &[&contacts[0], &contacts[1]],
            "",
        );
        assert_eq!(
            header(&m, "Contact").as_deref(),
            Some(
                format!(
                    "<sip:grace@{}>;q=1;expires=3600, <sip:ring@{}>;q=0.5;expires=3600",
                    answers.addr, ringing.addr
                )
                .as_str()
            )
        );
        // Both ring at once; the answer wins, the ringing one is CANCELled.
        // The ACK and BYE follow the callee's Contact.
        sipp_uac("uac_invite_bye.xml", r.sip, "u1", 1, &["-s", "grace"]);
        for (name, uas) in [("ringing", ringing), ("answering", answers)] {
            let run = uas.finish();
            assert_eq!(
                (run.successful, run.failed),
                (1, 0),
                "{:?} {name}: {}",
                r.which,
                run.tail()
            );
        }
    });
}

const FLAGS_CFG: &str = r#"
loadmodule "jsonrpcs.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
modparam("usrloc", "nat_bflag", 6)
modparam("registrar", "max_contacts", 2)
modparam("registrar", "retry_after", 30)
modparam("registrar", "received_avp", "$avp(RECEIVED)")
request_route {
    if (is_method("REGISTER")) {
        if ($tU == "quiet") {
            $var(rc) = save("location", "0x02");
            xlog("L_INFO", "quiet save: $var(rc)\n");
            sl_send_reply("202", "Saved Quietly");
            exit;
        }
        if ($hdr(X-Nat) != $null) {
            setbflag(6);
            $avp(RECEIVED) = "sip:" + $si + ":" + $sp;
        }
        t_newtran();
        save("location");
        xlog("L_INFO", "save: $rc\n");
        exit;
    }
    if (!lookup("location")) {
        xlog("L_INFO", "lookup: $rc\n");
        sl_send_reply("404", "Not Found");
        exit;
    }
    if (isbflagset(6)) {
        xlog("L_INFO", "lookup: nat flag restored, du=$du ru=$ru\n");
    }
    sl_send_reply("299", "Found");
}
"#;

#[test]
fn save_replies_through_the_transaction_and_keeps_flags_received_and_limits() {
    let srv = Server::start(FLAGS_CFG);
    let uac = UdpUac::new(srv.udp);
    let to = srv.udp;
    // t_newtran() first: save() answers through the transaction
    let m = register(
        &uac,
        to,
        "henry",
        1,
        "c1",
        &["<sip:henry@127.0.10.1:5060>"],
        "X-Nat: yes\r\n",
    );
    let received = format!("sip:127.0.0.1:{}", uac.addr().port());
    assert_eq!(
        header(&m, "Contact").as_deref(),
        Some(format!("<sip:henry@127.0.10.1:5060>;expires=3600;received=\"{received}\"").as_str())
    );
    assert!(srv.log_soon("save: 1"));
    let d = rpc_doc(&srv, "ul.lookup", json!(["location", "henry"]));
    let c = &d["result"]["Contacts"][0]["Contact"];
    assert_eq!(
        (&c["CFlags"], &c["Received"]),
        (&json!(64), &json!(received)),
        "{d}"
    );
    // lookup restores the branch flags and sends to the received address
    uac.send(
        &super::harness::request("OPTIONS", uac.addr(), "opt1", "o1", "")
            .replace("sip:service@", "sip:henry@"),
    );
    assert_eq!(uac.final_code(Duration::from_secs(5)), Some(299));
    assert!(srv.log_soon(&format!(
        "lookup: nat flag restored, du={received} ru=sip:henry@127.0.10.1:5060"
    )));
    // max_contacts 2: a third binding is refused with 503 and Retry-After, nothing saved
    let m = register(
        &uac,
        to,
        "henry",
        2,
        "c1",
        &["<sip:henry@127.0.10.2>", "<sip:henry@127.0.10.3>"],
        "",
    );
    assert_eq!(m.status(), Some(503));
    assert_eq!(header(&m, "Retry-After").as_deref(), Some("30"));
    assert_eq!(
        header(&m, "P-Registrar-Error").as_deref(),
        Some("Too many registered contacts")
    );
    assert!(srv.log_soon("save: -2"));
    assert_eq!(stat(&srv, "usrloc:location-contacts"), 1);
    // an update is 2, a removal 3, a query 4
    let m = register(
        &uac,
        to,
        "henry",
        3,
        "c1",
        &["<sip:henry@127.0.10.1:5060>"],
        "",
    );
    assert_eq!(m.status(), Some(200));
    assert!(srv.log_soon("save: 2"));
    register(&uac, to, "henry", 4, "c1", &[], "");
    assert!(srv.log_soon("save: 4"));
    register(
        &uac,
        to,
        "henry",
        5,
        "c1",
        &["<sip:henry@127.0.10.1:5060>;expires=0"],
        "",
    );
    assert!(srv.log_soon("save: 3"));
    uac.send(
        &super::harness::request("OPTIONS", uac.addr(), "opt2", "o2", "")
            .replace("sip:service@", "sip:henry@"),
    );
    assert_eq!(uac.final_code(Duration::from_secs(5)), Some(404));
    assert!(srv.log_soon("lookup: -1"));
    // 0x02: saved without a reply (the script answers)
    let m = register(&uac, to, "quiet", 1, "q1", &["<sip:quiet@127.0.10.9>"], "");
    assert_eq!(m.status(), Some(202));
    assert!(srv.log_soon("quiet save: 1"));
    assert_eq!(stat(&srv, "registrar:accepted_regs"), 5);
    assert_eq!(stat(&srv, "registrar:rejected_regs"), 1);
}

const REGISTERED_CFG: &str = r#"
loadmodule "usrloc.so"
loadmodule "registrar.so"
request_route {
    if (is_method("REGISTER")) {
        save("location");
        exit;
    }
    if (is_method("MESSAGE")) {
        if (unregister("location", "sip:" + $rU + "@127.0.0.1")) {
            sl_send_reply("296", "Unregistered");
        } else {
            sl_send_reply("295", "Nothing To Unregister");
        }
        exit;
    }
    if (registered("location")) {
        sl_send_reply("298", "Registered");
    } else {
        sl_send_reply("297", "Not Registered");
    }
}
"#;

#[test]
fn registered_and_unregister_look_at_the_table() {
    let srv = Server::start(REGISTERED_CFG);
    let uac = UdpUac::new(srv.udp);
    let ask = |method: &str, user: &str, n: u32| {
        let req = super::harness::request(
            method,
            uac.addr(),
            &format!("{method}{n}"),
            &format!("{method}-{n}"),
            "",
        );
        uac.send(&req.replace("sip:service@", &format!("sip:{user}@")));
        uac.final_code(Duration::from_secs(5))
    };
    assert_eq!(ask("OPTIONS", "ivy", 1), Some(297));
    register(&uac, srv.udp, "ivy", 1, "c1", &["<sip:ivy@127.0.10.1>"], "");
    assert_eq!(ask("OPTIONS", "ivy", 2), Some(298));
    assert_eq!(ask("MESSAGE", "ivy", 3), Some(296));
    assert_eq!(ask("OPTIONS", "ivy", 4), Some(297));
    assert_eq!(ask("MESSAGE", "ivy", 5), Some(295));
}

#[test]
fn method_filtering_answers_405_for_a_method_no_contact_accepts() {
    on_both(&["METHOD_FILTERING=1"], |r| {
        let uac = UdpUac::new(r.sip);
        let m = register(
            &uac,
            r.sip,
            "jack",
            1,
            "c1",
            &["<sip:jack@127.0.0.1:7020>"],
            "Allow: INVITE, ACK, BYE, CANCEL\r\n",
        );
        assert_eq!(m.status(), Some(200));
        let req = super::harness::request("MESSAGE", uac.addr(), "msg1", "m1", "");
        uac.send(&req.replace("sip:service@", "sip:jack@"));
        assert_eq!(
            uac.final_code(Duration::from_secs(5)),
            Some(405),
            "{:?}",
            r.which
        );
    });
}

#[test]
fn a_saved_path_routes_the_request_through_its_first_hop() {
    on_both(&["USE_PATH=1"], |r| {
        let edge = UdpSocket::bind("127.0.0.1:0").unwrap();
        edge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hop = format!("<sip:edge@{};lr>", edge.local_addr().unwrap());
        let uac = UdpUac::new(r.sip);
        let m = register(
            &uac,
            r.sip,
            "kate",
            1,
            "c1",
            &["<sip:kate@127.0.10.7:5060>"],
            &format!("Path: {hop}\r\nSupported: path\r\n"),
        );
        assert_eq!(m.status(), Some(200));
        assert_eq!(
            header(&m, "Path").as_deref(),
            Some(hop.as_str()),
            "{:?}",
            r.which
        );
        let req = super::harness::request("OPTIONS", uac.addr(), "opt1", "o1", "");
        uac.send(&req.replace("sip:service@", "sip:kate@"));
        let mut buf = vec![0u8; 65535];
        let (n, _) = edge
            .recv_from(&mut buf)
            .expect("the request at the Path's first hop");
        let got = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
        assert_eq!(
            got.ruri().as_deref(),
            Some(&b"sip:kate@127.0.10.7:5060"[..]),
            "{:?}",
            r.which
        );
        assert_eq!(
            header(&got, "Route").as_deref(),
            Some(hop.as_str()),
            "{:?}",
            r.which
        );
        let d = r.rpc("ul.lookup", json!(["location", "kate"]));
        assert_eq!(
            d["result"]["Contacts"][0]["Contact"]["Path"],
            json!(hop),
            "{d}"
        );
    });
}
