//! The event interface and event_jsonrpc end to end: the real binary raising
//! events to a Python subscriber built on PyPI's jsonrpcserver.

use super::harness::{PyPeer, Server, UdpUac, request};
use super::jsonrpcs::{rpc_doc as rpc, stat};
use serde_json::json;
use std::time::Duration;

const W: Duration = Duration::from_secs(5);

/// The Python subscriber (jsonrpcserver): every document it received, in order.
fn subscriber(port: u16, mode: &str) -> PyPeer {
    PyPeer::start(
        "jsonrpc_subscriber.py",
        &[&port.to_string(), mode],
        "recv ",
        "jsonrpcserver",
    )
}

fn cfg(modparams: &str, socket: &str) -> String {
    format!(
        r#"
loadmodule "event_jsonrpc.so"
loadmodule "jsonrpcs.so"
{modparams}
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
max_while_loops=20000
startup_route {{
    subscribe_event("E_MY_EVENT", "{socket}");
    subscribe_event("E_PIKE_BLOCKED", "{socket}");
    subscribe_event("E_EMPTY", "{socket}");
}}
request_route {{
    if (is_method("MESSAGE")) {{
        # The seed's script example.
        $avp(attr-val) = 3;
        $avp(attr-val) = 5;
        raise_event("E_MY_EVENT", $avp(attr-val));
    }} else if (is_method("INFO")) {{
        # What the pike module raises in the seed's examples.
        $avp(names) = "ip";
        $avp(values) = $si;
        raise_event("E_PIKE_BLOCKED", $avp(values), $avp(names));
    }} else if (is_method("OPTIONS")) {{
        raise_event("E_EMPTY");
    }} else if (is_method("PUBLISH")) {{
        $var(i) = 0;
        while ($var(i) < 10000) {{
            raise_event("E_SEQ", $var(i));
            $var(i) = $var(i) + 1;
        }}
    }}
    sl_send_reply("200", "OK");
}}
"#
    )
}

fn send(srv: &Server, method: &str, n: u32) {
    let uac = UdpUac::new(srv.udp);
    uac.send(&request(
        method,
        uac.addr(),
        &format!("{method}{n}"),
        &format!("c{method}{n}"),
        "",
    ));
    assert_eq!(uac.recv(W).and_then(|r| r.status()), Some(200));
}

#[test]
fn the_seed_examples_as_notifications() {
    let sub = subscriber(0, "reply");
    let srv = Server::start(&cfg("", &format!("jsonrpc:127.0.0.1:{}", sub.port)));
    send(&srv, "MESSAGE", 1);
    assert_eq!(
        sub.next().unwrap(),
        json!({"id": null, "jsonrpc": "2.0", "method": "E_MY_EVENT", "params": [3, 5]})
    );
    send(&srv, "INFO", 1);
    assert_eq!(
        sub.next().unwrap(),
        json!({"id": null, "jsonrpc": "2.0", "method": "E_PIKE_BLOCKED", "params": {"ip": "127.0.0.1"}})
    );
    // No params: an empty object, as OpenSIPS sends it.
    send(&srv, "OPTIONS", 1);
    assert_eq!(
        sub.next().unwrap(),
        json!({"id": null, "jsonrpc": "2.0", "method": "E_EMPTY", "params": {}})
    );
    // 10,000 events from one request arrive complete and in order (E_SEQ is
    // declared by the script's raise_event, subscribed over RPC).
    let socket = format!("jsonrpc:127.0.0.1:{}", sub.port);
    assert_eq!(
        rpc(&srv, "event_subscribe", json!(["E_SEQ", socket]))["result"],
        json!("OK")
    );
    send(&srv, "PUBLISH", 1);
    for i in 0..10_000 {
        let d = sub.next().unwrap_or_else(|| panic!("event {i} missing"));
        assert_eq!(d["params"], json!([i]), "event {i}");
        assert_eq!(d["method"], json!("E_SEQ"));
    }
    assert_eq!(stat(&srv, "event_jsonrpc:sent"), 10_003);
    assert_eq!(stat(&srv, "event_jsonrpc:dropped"), 0);
}

#[test]
fn method_and_event_param_and_sync_mode_replies() {
    let sub = subscriber(0, "reply");
    let srv = Server::start(&cfg(
        "modparam(\"event_jsonrpc\", \"event_param\", \"opensips_event\")\nmodparam(\"event_jsonrpc\", \"sync_mode\", yes)\nmodparam(\"event_jsonrpc\", \"timeout\", 200)",
        &format!("jsonrpc:127.0.0.1:{}/handle_cmd", sub.port),
    ));
    send(&srv, "INFO", 2);
    let d = sub.next().unwrap();
    let id = d["id"].as_u64().expect("sync_mode: a numeric id");
    assert_eq!(
        d,
        json!({"id": id, "jsonrpc": "2.0", "method": "handle_cmd",
               "params": {"opensips_event": "E_PIKE_BLOCKED", "ip": "127.0.0.1"}})
    );
    // The key order is the seed's too.
    let keys: Vec<&str> = d["params"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["opensips_event", "ip"]);
    send(&srv, "MESSAGE", 2);
    let d2 = sub.next().unwrap();
    // Unnamed params: the event name is the first one (seed 001's note).
    assert_eq!(d2["params"], json!(["E_MY_EVENT", 3, 5]));
    assert_ne!(d2["id"], d["id"], "ids are unique");
    // No params: an object holding only the event name.
    send(&srv, "OPTIONS", 2);
    assert_eq!(
        sub.next().unwrap()["params"],
        json!({"opensips_event": "E_EMPTY"})
    );
    // The three replies (result 8) were matched to their requests.
    let deadline = std::time::Instant::now() + W;
    while stat(&srv, "event_jsonrpc:replied") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&srv, "event_jsonrpc:replied"), 3);
    assert_eq!(stat(&srv, "event_jsonrpc:timeouts"), 0);
}

#[test]
fn a_subscriber_that_never_replies_costs_only_its_own_events() {
    let sub = subscriber(0, "silent");
    let srv = Server::start(&cfg(
        "modparam(\"event_jsonrpc\", \"sync_mode\", 1)\nmodparam(\"event_jsonrpc\", \"timeout\", 3000)",
        &format!("jsonrpc:127.0.0.1:{}", sub.port),
    ));
    // Five events, each waiting 3 s for a reply that never comes: the raiser
    // is not held (each SIP reply comes within the UAC's 5 s, 15 s would be
    // needed otherwise).
    for n in 0..5 {
        send(&srv, "MESSAGE", 10 + n);
    }
    for _ in 0..5 {
        assert!(sub.next().is_some());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stat(&srv, "event_jsonrpc:timeouts") < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stat(&srv, "event_jsonrpc:timeouts"), 5);
    assert_eq!(stat(&srv, "event_jsonrpc:replied"), 0);
}

#[test]
fn a_subscriber_that_is_down_then_up() {
    // A port nothing listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = Server::start(&cfg("", &format!("jsonrpc:127.0.0.1:{port}")));
    for n in 0..3 {
        send(&srv, "MESSAGE", 20 + n);
    }
    let deadline = std::time::Instant::now() + W;
    while stat(&srv, "event_jsonrpc:failed") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&srv, "event_jsonrpc:failed"), 3);
    // It comes up: after the backoff the next event reconnects.
    let sub = subscriber(port, "reply");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut got = None;
    while got.is_none() && std::time::Instant::now() < deadline {
        send(&srv, "INFO", 30);
        got = sub.docs.recv_timeout(Duration::from_millis(300)).ok();
    }
    assert_eq!(got.unwrap()["method"], json!("E_PIKE_BLOCKED"));
}

#[test]
fn subscriptions_over_rpc_with_expiry() {
    let sub = subscriber(0, "reply");
    let socket = format!("jsonrpc:127.0.0.1:{}/rpc_events", sub.port);
    let srv = Server::start(&cfg("", &format!("jsonrpc:127.0.0.1:{}", sub.port)));
    // Unknown events and sockets are errors.
    let r = rpc(&srv, "event_subscribe", json!(["E_NOPE", socket]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown event"),
        "{r}"
    );
    let r = rpc(&srv, "event_subscribe", json!(["E_SEQ", "udp:127.0.0.1:9"]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown subscriber socket"),
        "{r}"
    );
    let r = rpc(&srv, "event_subscribe", json!(["E_SEQ", socket, -1]));
    assert_eq!(r["error"]["code"], json!(-32602));
    // Subscribe for 1 s; raise over RPC (named params from an object).
    assert_eq!(
        rpc(&srv, "event_subscribe", json!(["E_SEQ", socket, 1]))["result"],
        json!("OK")
    );
    let list = rpc(&srv, "subscribers_list", json!(["E_SEQ"]))["result"].clone();
    assert_eq!(list[0]["socket"], json!(socket));
    assert_eq!(list[0]["expire"], json!(1));
    let r = rpc(&srv, "raise_event", json!(["E_SEQ", {"a": 1, "b": "x"}]));
    assert_eq!(r["result"], json!({"subscribers": 1}));
    assert_eq!(
        sub.next().unwrap(),
        json!({"id": null, "jsonrpc": "2.0", "method": "rpc_events", "params": {"a": 1, "b": "x"}})
    );
    let events = rpc(&srv, "events_list", json!([]))["result"].clone();
    for e in ["E_CORE_START", "E_MY_EVENT", "E_PIKE_BLOCKED", "E_SEQ"] {
        assert!(
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == json!(e)),
            "{e} in {events}"
        );
    }
    // Expired: no longer delivered.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        rpc(&srv, "raise_event", json!(["E_SEQ", 1, 2]))["result"],
        json!({"subscribers": 0})
    );
    // Re-subscribe (default expiry 3600 s), then unsubscribe with 0.
    rpc(&srv, "event_subscribe", json!(["E_SEQ", socket]));
    let list = rpc(&srv, "subscribers_list", json!(["E_SEQ", socket]))["result"].clone();
    assert_eq!(list[0]["expire"], json!(3600));
    rpc(&srv, "raise_event", json!(["E_SEQ", 1, 2]));
    assert_eq!(sub.next().unwrap()["params"], json!([1, 2]));
    rpc(&srv, "event_subscribe", json!(["E_SEQ", socket, 0]));
    assert_eq!(
        rpc(&srv, "subscribers_list", json!(["E_SEQ"]))["result"],
        json!([])
    );
    assert!(sub.nothing_within(Duration::from_millis(200)));
}

#[test]
fn core_start_reaches_subscribers_from_the_startup_route() {
    let sub = subscriber(0, "reply");
    let srv = Server::start(&format!(
        "loadmodule \"event_jsonrpc.so\"\nstartup_route {{ subscribe_event(\"E_CORE_START\", \"jsonrpc:127.0.0.1:{}\"); }}\nrequest_route {{ drop; }}\n",
        sub.port
    ));
    let d = sub.next().unwrap();
    assert_eq!(d["method"], json!("E_CORE_START"));
    assert!(d["params"]["pid"].is_number(), "{d}");
    drop(srv);
}

#[test]
fn evapi_and_jsonrpcc_raise_their_events() {
    let sub = subscriber(0, "reply");
    // A JSON-RPC "server" that accepts and later hangs up.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let srv = Server::start(&format!(
        r#"
loadmodule "tm.so"
loadmodule "event_jsonrpc.so"
loadmodule "evapi.so"
loadmodule "jsonrpcc.so"
modparam("evapi", "bind_addr", "127.0.0.1:0")
modparam("jsonrpcc", "servers", "{app_addr},1")
startup_route {{
    subscribe_event("E_EVAPI_CONNECTION", "jsonrpc:127.0.0.1:{p}");
    subscribe_event("E_JSONRPCC_SERVER_STATE", "jsonrpc:127.0.0.1:{p}");
}}
request_route {{ drop; }}
"#,
        p = sub.port
    ));
    // jsonrpcc connects as modules start, which may be before the startup
    // route subscribed: the state changes after "siphon started" are the ones
    // to check. The server hangs up: "disconnected"; it comes back: "connected".
    let (conn, _) = app.accept().unwrap();
    drop(conn);
    let state = |want: &str| loop {
        let d = sub.next().expect("a server state event");
        assert_eq!(d["method"], json!("E_JSONRPCC_SERVER_STATE"));
        if d["params"]["state"] == json!(want) {
            return d;
        }
    };
    state("disconnected");
    let (_conn, _) = app.accept().unwrap();
    let d = state("connected");
    assert_eq!(
        d["params"],
        json!({"server": app_addr.to_string(), "priority": 1, "state": "connected"})
    );
    // An evapi client connects and leaves.
    let ev = srv
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("evapi listening on ")
                .map(|a| a.trim().to_string())
        })
        .unwrap();
    let c = std::net::TcpStream::connect(&ev).unwrap();
    let local = c.local_addr().unwrap();
    let mut seen = Vec::new();
    // (jsonrpcc keeps reconnecting; skip its events.)
    while seen.len() < 2 {
        let d = sub.next().expect("evapi events");
        if d["method"] == json!("E_EVAPI_CONNECTION") {
            seen.push(d["params"].clone());
        }
        if seen.len() == 1 && seen[0]["state"] == json!("connected") {
            // Leave once the connection was reported.
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
    assert_eq!(
        seen[0],
        json!({"conidx": 0, "srcaddr": "127.0.0.1", "srcport": local.port(), "state": "connected"})
    );
    assert_eq!(seen[1]["state"], json!("closed"));
}

#[test]
fn rpc_subscriptions_only_to_allowed_subscribers() {
    let sub = subscriber(0, "reply");
    let here = format!("jsonrpc:127.0.0.1:{}", sub.port);
    // Default: loopback only. A documentation address is refused before
    // siphon connects anywhere.
    let srv = Server::start(&cfg("", &here));
    let r = rpc(
        &srv,
        "event_subscribe",
        json!(["E_SEQ", "jsonrpc:192.0.2.1:8080"]),
    );
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("192.0.2.1 is not in event_jsonrpc's allowed_subscribers"),
        "{r}"
    );
    assert!(srv.log_soon("event_subscribe E_SEQ jsonrpc:192.0.2.1:8080 from RPC"));
    // Its source: the caller, as jsonrpcs logs every state-changing command.
    assert!(srv.log_soon("event_subscribe (changes state) from"));
    assert_eq!(
        rpc(&srv, "event_subscribe", json!(["E_SEQ", here]))["result"],
        json!("OK")
    );
    drop(srv);
    // An allow-list without 127.0.0.1: the configuration's own subscription
    // (trusted) still works, the same destination over RPC is refused.
    let srv = Server::start(&cfg(
        "modparam(\"event_jsonrpc\", \"allowed_subscribers\", \"127.0.0.2, 127.16.0.0/12\")",
        &here,
    ));
    send(&srv, "MESSAGE", 40);
    assert_eq!(sub.next().unwrap()["method"], json!("E_MY_EVENT"));
    let r = rpc(&srv, "event_subscribe", json!(["E_SEQ", here]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{r}"
    );
    assert_eq!(
        rpc(&srv, "subscribers_list", json!(["E_SEQ"]))["result"],
        json!([])
    );
}

/// Waits until `f` holds (or 5 s passed); whether it did.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + W;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The next document of `peer` for `method`: its params.
fn next_of(peer: &PyPeer, method: &str) -> serde_json::Value {
    loop {
        let d = peer.next().unwrap_or_else(|| panic!("no {method} event"));
        if d["method"] == json!(method) {
            return d["params"].clone();
        }
    }
}

#[test]
fn event_virtual_failover_round_robin_and_parallel_over_jsonrpc() {
    let (a, b) = (subscriber(0, "reply"), subscriber(0, "reply"));
    let silent = subscriber(0, "silent");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let j = |p: u16| format!("jsonrpc:127.0.0.1:{p}");
    let srv = Server::start(&format!(
        r#"
loadmodule "event_jsonrpc.so"
loadmodule "event_virtual.so"
loadmodule "jsonrpcs.so"
modparam("event_jsonrpc", "sync_mode", 1)
modparam("event_jsonrpc", "timeout", 300)
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:0")
startup_route {{
    subscribe_event("E_FO", "virtual:FAILOVER {dead} {a}");
    subscribe_event("E_FO2", "virtual:FAILOVER {silent}	{b}");
    subscribe_event("E_RR", "virtual:ROUND-ROBIN {a} {b}");
    subscribe_event("E_PAR", "virtual:PARALLEL {a} {b}");
}}
request_route {{ drop; }}
"#,
        dead = j(dead),
        a = j(a.port),
        b = j(b.port),
        silent = j(silent.port),
    ));
    let raise = |ev: &str, n: i64| {
        assert_eq!(
            rpc(&srv, "raise_event", json!([ev, n]))["result"],
            json!({"subscribers": 1})
        );
    };
    let member = |ev: &str, i: usize| {
        rpc(&srv, "subscribers_list", json!([ev]))["result"][0]["stats"]["members"][i].clone()
    };
    // FAILOVER: the first member is down (connection refused): the second gets it.
    raise("E_FO", 1);
    assert_eq!(next_of(&a, "E_FO"), json!([1]));
    assert!(eventually(|| member("E_FO", 0)["unconfirmed"] == json!(1)));
    // FAILOVER: the first member takes the event and never confirms it; after
    // the 300 ms timeout the second gets it.
    raise("E_FO2", 1);
    assert_eq!(next_of(&silent, "E_FO2"), json!([1]));
    assert_eq!(next_of(&b, "E_FO2"), json!([1]));
    assert!(eventually(|| member("E_FO2", 1)["confirmed"] == json!(1)));
    assert_eq!(member("E_FO2", 0)["unconfirmed"], json!(1));
    // The failed member is skipped for failover_timeout (30 s): the next
    // event goes to the second at once, the first sent nothing more.
    raise("E_FO2", 2);
    assert_eq!(next_of(&b, "E_FO2"), json!([2]));
    assert!(eventually(|| member("E_FO2", 1)["confirmed"] == json!(2)));
    assert_eq!(member("E_FO2", 0)["stats"]["sent"], json!(1));
    assert_eq!(stat(&srv, "event_virtual:failovers"), 2);
    assert_eq!(stat(&srv, "event_virtual:lost"), 0);
    assert!(stat(&srv, "event_virtual:unconfirmed") >= 2);
    // ROUND-ROBIN alternates.
    for n in 0..4 {
        raise("E_RR", n);
    }
    assert_eq!(
        [next_of(&a, "E_RR"), next_of(&a, "E_RR")],
        [json!([0]), json!([2])]
    );
    assert_eq!(
        [next_of(&b, "E_RR"), next_of(&b, "E_RR")],
        [json!([1]), json!([3])]
    );
    // PARALLEL: both.
    raise("E_PAR", 9);
    assert_eq!(next_of(&a, "E_PAR"), json!([9]));
    assert_eq!(next_of(&b, "E_PAR"), json!([9]));
    assert!(eventually(|| stat(&srv, "event_virtual:confirmed") == 8));
    // Over RPC every member must be on the allow-list.
    let r = rpc(
        &srv,
        "event_subscribe",
        json!([
            "E_PAR",
            format!("virtual:PARALLEL {} jsonrpc:192.0.2.1:8080", j(a.port))
        ]),
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`jsonrpc:192.0.2.1:8080`: 192.0.2.1 is not in"),
        "{r}"
    );
}
