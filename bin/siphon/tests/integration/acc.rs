//! acc with the log backend against the real binary, and Kamailio 5.6 on the
//! same configuration (`-E`: its log on stderr): a relayed INVITE answered
//! 200 by a sipp UAS logs one "transaction answered" line, one answered 486
//! with `failed_transaction_flag` (and `log_missed_flag`) logs "call missed"
//! then "transaction answered", `acc_log_request("200 Ok")` logs "request
//! accounted"; the fields (names, order, values but the times and tags the
//! UAS makes up) are compared between the two servers.

use super::cli::Scratch;
use super::harness::{SippUas, free_port, wait_bound};
use super::sanity_maxfwd::{KAMAILIO_ARGS, have_kamailio};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CFG: &str = r#"#!KAMAILIO
debug=2
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "acc.so"
modparam("acc", "early_media", 0)
modparam("acc", "report_ack", 0)
modparam("acc", "report_cancels", 0)
modparam("acc", "detect_direction", 0)
modparam("acc", "log_flag", 1)
modparam("acc", "log_missed_flag", 2)
modparam("acc", "log_extra",
	"src_user=$fU;src_domain=$fd;src_ip=$si;"
	"dst_ouser=$tU;dst_user=$rU;dst_domain=$rd")
modparam("acc", "failed_transaction_flag", 3)

request_route {
    if (is_method("OPTIONS")) {
        acc_log_request("200 Ok");
        sl_send_reply("200", "OK");
        exit;
    }
    if (is_method("INVITE")) {
        setflag(1);
        if ($rU == "busy") {
            setflag(2);
            setflag(3);
        }
    }
    $du = "sip:" + $hdr(X-Uas);
    t_relay();
}
"#;

/// A server with its log lines.
struct Proc {
    addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Scratch,
}

impl Drop for Proc {
    fn drop(&mut self) {
        super::harness::terminate(&mut self.child);
    }
}

fn start(bin: &str, extra: &[&str]) -> Proc {
    let name = bin.rsplit('/').next().unwrap_or(bin);
    let dir = Scratch::new(&format!("acc-{name}"));
    let cfg = dir.write("acc.cfg", CFG);
    for _ in 0..5 {
        let addr = free_port("u1");
        let mut child = Command::new(bin)
            .env(crate::harness::ONLY_LOOPBACK, "1")
            .args(["-f", &cfg, "-l", &format!("udp:{addr}")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let log = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for s in streams {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        if wait_bound(addr, "u1", &mut child) {
            return Proc {
                addr,
                child,
                log,
                _dir: dir,
            };
        }
        super::harness::terminate(&mut child);
    }
    panic!("{bin} did not start");
}

impl Proc {
    /// The `ACC: ` lines so far, from `ACC:` on.
    fn acc_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.find("ACC: ").map(|i| l[i..].trim_end().to_string()))
            .collect()
    }
    /// Waits (10 s at most) for `n` ACC lines mentioning `call_id`.
    fn wait_acc(&self, call_id: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: Vec<String> = self
                .acc_lines()
                .into_iter()
                .filter(|l| l.contains(&format!("call_id={call_id};")))
                .collect();
            if v.len() >= n || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn recv_final(sock: &UdpSocket, call_id: &str) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let Ok(m) = siphon_sip::parse(bytes::Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            if m.call_id().is_some_and(|c| &c[..] == call_id.as_bytes())
                && m.status().is_some_and(|c| c >= 200)
            {
                return m.status();
            }
        }
    }
    None
}

fn request(
    method: &str,
    user: &str,
    call_id: &str,
    uac: SocketAddr,
    uas: Option<SocketAddr>,
) -> String {
    let x = uas.map(|a| format!("X-Uas: {a}\r\n")).unwrap_or_default();
    format!(
        "{method} sip:{user}@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {uac};branch=z9hG4bK{call_id};rport\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=ft{call_id}\r\nTo: <sip:bob@example.org>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:alice@{uac}>\r\nMax-Forwards: 70\r\n{x}Content-Length: 0\r\n\r\n"
    )
}

/// The scenario on one server: (the 200's lines, the 486's, the OPTIONS').
fn scenario(p: &Proc, tag: &str) -> [Vec<String>; 3] {
    let uac = UdpSocket::bind("127.0.0.1:0").unwrap();
    uac.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = uac.local_addr().unwrap();
    let send = |t: String| {
        uac.send_to(t.as_bytes(), p.addr).unwrap();
    };
    // 200 from sipp's built-in UAS.
    let ok = SippUas::start("uas", "u1");
    let cid = format!("acc-ok-{tag}");
    send(request("INVITE", "bob", &cid, me, Some(ok.addr)));
    assert_eq!(recv_final(&uac, &cid), Some(200), "{tag}: the 200");
    let answered = p.wait_acc(&cid, 1);
    // 486 from a busy UAS: missed and failed.
    let busy = SippUas::start("uas_busy.xml", "u1");
    let cid_b = format!("acc-busy-{tag}");
    send(request("INVITE", "busy", &cid_b, me, Some(busy.addr)));
    assert_eq!(recv_final(&uac, &cid_b), Some(486), "{tag}: the 486");
    let failed = p.wait_acc(&cid_b, 2);
    // acc_log_request for an OPTIONS.
    let cid_o = format!("acc-opt-{tag}");
    send(request("OPTIONS", "bob", &cid_o, me, None));
    assert_eq!(recv_final(&uac, &cid_o), Some(200), "{tag}: the OPTIONS");
    let requested = p.wait_acc(&cid_o, 1);
    [answered, failed, requested]
}

/// `ACC: text: a=1;b=2` → ("ACC: text: ", [(a, 1), (b, 2)]).
fn fields(line: &str) -> (String, Vec<(String, String)>) {
    let at = line.find("timestamp=").expect("a timestamp");
    let pairs = line[at..]
        .split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (line[..at].to_string(), pairs)
}

/// The fields with what differs between runs blanked: the time, the tags
/// the UAS makes up, the Call-ID's server suffix.
fn comparable(line: &str, tag: &str) -> (String, Vec<(String, String)>) {
    let (text, mut f) = fields(line);
    for (k, v) in &mut f {
        match k.as_str() {
            "timestamp" => {
                assert!(v.parse::<u64>().is_ok_and(|t| t > 1_600_000_000), "{line}");
                *v = "T".into();
            }
            "to_tag" if !v.is_empty() => *v = "TAG".into(),
            _ => *v = v.replace(tag, "X"),
        }
    }
    (text, f)
}

#[test]
fn acc_log_lines_as_kamailio_writes_them() {
    let siphon = start(env!("CARGO_BIN_EXE_siphon"), &[]);
    let [answered, failed, requested] = scenario(&siphon, "siphon");
    assert_eq!(answered.len(), 1, "{:#?}", siphon.log.lock().unwrap());
    let (text, f) = fields(&answered[0]);
    assert_eq!(text, "ACC: transaction answered: ");
    let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "timestamp",
            "method",
            "from_tag",
            "to_tag",
            "call_id",
            "code",
            "reason",
            "src_user",
            "src_domain",
            "src_ip",
            "dst_ouser",
            "dst_user",
            "dst_domain"
        ]
    );
    let get = |f: &[(String, String)], k: &str| {
        f.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get(&f, "method"), "INVITE");
    assert_eq!(get(&f, "from_tag"), "ftacc-ok-siphon");
    assert!(get(&f, "to_tag").contains("SIPpTag"), "{}", answered[0]);
    assert_eq!(
        (get(&f, "code"), get(&f, "reason")),
        ("200".into(), "OK".into())
    );
    assert_eq!(get(&f, "src_user"), "alice");
    assert_eq!(get(&f, "src_ip"), "127.0.0.1");
    assert_eq!(get(&f, "dst_ouser"), "bob");
    assert_eq!(get(&f, "dst_domain"), "example.net");
    // The 486: missed first, then answered (failed_transaction_flag).
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0].starts_with("ACC: call missed: "), "{}", failed[0]);
    assert!(
        failed[1].starts_with("ACC: transaction answered: "),
        "{}",
        failed[1]
    );
    assert!(
        failed[1].contains(";code=486;reason=Busy Here;"),
        "{}",
        failed[1]
    );
    assert_eq!(requested.len(), 1);
    assert!(
        requested[0].starts_with("ACC: request accounted: ")
            && requested[0].contains(";method=OPTIONS;")
            && requested[0].contains(";to_tag=;")
            && requested[0].contains(";code=200;reason=Ok;"),
        "{}",
        requested[0]
    );

    if !have_kamailio() {
        return;
    }
    let kam = start("kamailio", &KAMAILIO_ARGS);
    let theirs = scenario(&kam, "kamailio");
    let ours = [answered, failed, requested];
    for (o, t) in ours.iter().zip(theirs.iter()) {
        assert_eq!(o.len(), t.len(), "siphon {o:#?}\nkamailio {t:#?}");
        for (a, b) in o.iter().zip(t) {
            assert_eq!(
                comparable(a, "siphon"),
                comparable(b, "kamailio"),
                "\nsiphon:   {a}\nkamailio: {b}"
            );
        }
    }
}
