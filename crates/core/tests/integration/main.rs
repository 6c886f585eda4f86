//! siphon-core in process: the module-facing suspension API. A test function
//! suspends the transaction the way jsonrpcc/evapi/async_http will, and
//! resumes it from elsewhere — immediately (before the context is parked),
//! later from another task, or twice (the second is late and counted).

mod dns;

use bytes::Bytes;
use siphon_cfg::PreOptions;
use siphon_core::Core;
use siphon_script::api::{Args, FnResult, Suspend};
use siphon_script::{ArgKind, Exec, FunctionSpec, Registry, RouteTable, Value};
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

/// `async_answer(route, delay_ms, answer)`: suspends; after `delay_ms` (0: at
/// once, from inside `start`) resumes in `route` with `$var(answer)` set.
fn async_answer() -> FunctionSpec {
    FunctionSpec::new(
        "async_answer",
        &[
            ArgKind::Route(RouteTable::Named),
            ArgKind::Int,
            ArgKind::Str,
        ],
        move |ex: &mut Exec<'_>, a: &Args| {
            let route = a.route(0, ex).expect("route");
            let delay = a.int(1, ex).unwrap_or(0);
            let answer = a.text(2, ex);
            let slot = ex.prog.var_slot("answer").expect("$var(answer) is used");
            FnResult::Suspend(Suspend {
                start: Box::new(move |ctx, resumer| {
                    // $T(id_index) is usable here, before anything is sent.
                    assert!(
                        ctx.ext
                            .get::<siphon_core::SipCtx>()
                            .and_then(|s| s.tx)
                            .is_some()
                    );
                    let fill = move |c: &mut siphon_script::Ctx| c.vars[slot] = Value::from(answer);
                    if delay == 0 {
                        assert!(resumer.resume(route, Box::new(fill)));
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                            resumer.resume(route, Box::new(fill));
                        });
                    }
                }),
            })
        },
    )
}

const CFG: &str = r#"
listen=udp:127.0.0.1:0
loadmodule "tm.so"
request_route {
    $var(answer) = "none";
    $var(before) = "kept";
    if ($hdr(X-Delay) == "0") { async_answer("RESUMED", 0, "now"); }
    async_answer("RESUMED", 50, "later");
}
route[RESUMED] {
    append_to_reply("X-Answer: $var(answer)\r\nX-Before: $var(before)\r\nX-Tx: $T(id_index):$T(id_label)\r\n");
    t_reply("302", "Moved");
}
"#;

fn invite(from: std::net::SocketAddr, branch: &str, delay: &str) -> String {
    format!(
        "INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\nFrom: <sip:a@127.0.0.1>;tag=1{branch}\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: {branch}\r\nCSeq: 1 INVITE\r\nX-Delay: {delay}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn final_reply(sock: &UdpSocket) -> siphon_sip::SipMsg {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("a reply");
        let m = siphon_sip::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
        if m.status().unwrap() >= 200 {
            return m;
        }
    }
}

fn header(m: &siphon_sip::SipMsg, name: &[u8]) -> String {
    String::from_utf8(
        m.headers_named(name)
            .next()
            .map(|h| m.header_value(h))
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

#[test]
fn module_suspend_and_resume() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let core = Core::new();
    let mut reg = Registry::new();
    core.register(&mut reg);
    reg.core_functions.push(async_answer());
    let loaded = siphon_script::load_str("t.cfg", CFG, &PreOptions::default(), &reg);
    let program = Arc::new(loaded.program.unwrap_or_else(|| {
        panic!(
            "{}",
            siphon_cfg::diag::render_all(&loaded.diags, &loaded.sources)
        )
    }));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bound = rt.block_on(core.start(program, shutdown.clone())).unwrap();
    let to = bound[0].addr;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = sock.local_addr().unwrap();

    // Resumed from inside `start`, before the context was parked.
    sock.send_to(invite(me, "now", "0").as_bytes(), to).unwrap();
    let r = final_reply(&sock);
    assert_eq!(
        (
            r.status(),
            header(&r, b"x-answer").as_str(),
            header(&r, b"x-before").as_str()
        ),
        (Some(302), "now", "kept")
    );

    // Resumed later from another task: the suspended request's $vars are kept.
    sock.send_to(invite(me, "later", "50").as_bytes(), to)
        .unwrap();
    let r = final_reply(&sock);
    assert_eq!(
        (
            r.status(),
            header(&r, b"x-answer").as_str(),
            header(&r, b"x-before").as_str()
        ),
        (Some(302), "later", "kept")
    );
    let tx = header(&r, b"x-tx");
    let (index, label) = tx.split_once(':').unwrap();

    // A second answer for the same transaction is late: refused and counted.
    let id = siphon_core::TxId {
        index: index.parse().unwrap(),
        label: label.parse().unwrap(),
    };
    let route = core
        .program()
        .unwrap()
        .route_by_name(RouteTable::Named, "RESUMED")
        .unwrap();
    let stat = |name: &str| {
        core.statistics()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let late_before = stat("tm:late_resume");
    assert!(!core.resume(id, route, Box::new(|_| {})));
    assert_eq!(stat("tm:late_resume"), late_before + 1);
    assert_eq!(stat("tm:suspended"), 0);
    shutdown.cancel();
}
