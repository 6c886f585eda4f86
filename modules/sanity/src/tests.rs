use super::*;
use bytes::Bytes;
use siphon_script::net::{Peer, Transport};
use siphon_script::{Registry, Value, load_str};
use std::sync::Mutex;

/// Records the replies a module asks for.
#[derive(Default)]
struct FakeHost(Mutex<Vec<String>>);

impl Host for FakeHost {
    fn shutdown(&self) -> tokio_util::sync::CancellationToken {
        Default::default()
    }
    fn set_http_service(&self, _: Arc<dyn siphon_script::http::HttpService>) -> bool {
        false
    }
    fn set_http_message(&self, _: &mut Ctx, _: Bytes, _: Peer) -> Result<(), String> {
        Err("no".into())
    }
    fn reply(
        &self,
        _: &mut Ctx,
        code: u16,
        reason: &str,
        extra: &[Bytes],
        mode: ReplyMode,
    ) -> Result<(), String> {
        let extra: String = extra
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        self.0.lock().unwrap().push(
            format!("{code} {reason} {extra}{mode:?}")
                .trim()
                .to_string(),
        );
        Ok(())
    }
}

/// Runs `body` for `raw` with `params`; (what out() saw, replies sent).
fn run(params: &str, raw: &str, body: &str) -> (Vec<String>, Vec<String>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut reg = Registry::new();
    reg.add(def());
    let o = out.clone();
    reg.core_functions
        .push(FunctionSpec::new("out", &[ArgKind::Any], move |ex, a| {
            let v: Value = a.value(0, ex);
            o.lock().unwrap().push(v.to_string());
            1.into()
        }));
    let cfg = format!(
        "loadmodule \"sanity.so\"\n{params}\nrequest_route {{\n{body}\nout(\"end\");\n}}\n"
    );
    let l = load_str("t.cfg", &cfg, &Default::default(), &reg);
    let p = Arc::new(
        l.program
            .unwrap_or_else(|| panic!("{}", siphon_cfg::diag::render_all(&l.diags, &l.sources))),
    );
    let host = Arc::new(FakeHost::default());
    p.module::<Sanity>()
        .unwrap()
        .start(&StartCx::new(p.clone(), host.clone()))
        .unwrap();
    let msg = siphon_sip::parse(Bytes::from(raw.to_string())).unwrap();
    let addr = "127.0.0.1:5060".parse().unwrap();
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    ctx.ext.insert(SipCtx::new(
        msg,
        Peer {
            transport: Transport::Udp,
            src: addr,
            local: addr,
            conn: None,
        },
    ));
    p.run(p.request_route().unwrap(), &mut ctx);
    let v = out.lock().unwrap().clone();
    let r = host.0.lock().unwrap().clone();
    (v, r)
}

fn req(method: &str, extra: &str) -> String {
    format!(
        "{method} sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn passing_returns_1() {
    let (o, r) = run(
        "",
        &req("INVITE", ""),
        "sanity_check(); out($rc); sanity_check(\"17895\", \"7\"); out($rc);",
    );
    assert_eq!(o, ["1", "1", "end"]);
    assert!(r.is_empty());
}

#[test]
fn autodrop_stops_the_script_after_the_reply() {
    let (o, r) = run(
        "",
        &req("INVITE", "Proxy-Require: foo\r\n"),
        "sanity_check(); out($rc);",
    );
    assert_eq!(o, Vec::<String>::new(), "the script stopped");
    assert_eq!(
        r,
        ["420 Bad Proxy Require Extension Unsupported: foo\r\nStateless"]
    );
}

#[test]
fn autodrop_0_returns_minus_1() {
    let (o, r) = run(
        "modparam(\"sanity\", \"autodrop\", 0)",
        &req("INVITE", "Expires: never\r\n"),
        "sanity_check(\"17895\", \"7\"); out($rc); if (!sanity_check(\"17895\", \"7\")) out(\"failed\");",
    );
    assert_eq!(o, ["-1", "failed", "end"]);
    assert_eq!(r, ["400 Expires value is illegal Stateless"; 2]);
}

#[test]
fn proxy_require_param_accepts_extensions() {
    let (o, r) = run(
        "modparam(\"sanity\", \"proxy_require\", \"foo, bar\")",
        &req("OPTIONS", "Proxy-Require: bar\r\n"),
        "sanity_check(); out($rc);",
    );
    assert_eq!(o, ["1", "end"]);
    assert!(r.is_empty());
}

#[test]
fn an_ack_is_never_answered() {
    let (o, r) = run(
        "modparam(\"sanity\", \"autodrop\", 0)",
        &req("ACK", "Proxy-Require: foo\r\n"),
        "sanity_check(); out($rc);",
    );
    assert_eq!(o, ["-1", "end"]);
    assert!(r.is_empty());
}

#[test]
fn noreply_keeps_the_reply_for_sanity_reply() {
    let p = "modparam(\"sanity\", \"autodrop\", 0)\nmodparam(\"sanity\", \"noreply\", 1)";
    let (o, r) = run(
        p,
        &req("INVITE", "Proxy-Require: foo\r\n"),
        "if (!sanity_check()) { out(\"failed\"); sanity_reply(); }",
    );
    assert_eq!(o, ["failed", "end"]);
    assert_eq!(
        r,
        ["420 Bad Proxy Require Extension Unsupported: foo\r\nStateless"]
    );
    // A failure without a reply of its own: 500.
    let (_, r) = run(
        p,
        &req("INVITE", "Call-ID: twice\r\n"),
        "if (!sanity_check()) sanity_reply();",
    );
    assert_eq!(r, ["500 Server Sanity Failure Stateless"]);
    // Without noreply, sanity_reply() sends nothing.
    let (_, r) = run(
        "modparam(\"sanity\", \"autodrop\", 0)",
        &req("INVITE", "Call-ID: twice\r\n"),
        "if (!sanity_check()) sanity_reply();",
    );
    assert!(r.is_empty());
}

#[test]
fn default_checks_param_is_used_without_arguments() {
    // 512: Proxy-Require only.
    let p = "modparam(\"sanity\", \"default_checks\", 512)\nmodparam(\"sanity\", \"autodrop\", 0)";
    let (o, _) = run(
        p,
        &req("INVITE", "Expires: never\r\n"),
        "sanity_check(); out($rc);",
    );
    assert_eq!(o, ["1", "end"]);
}

#[test]
fn out_of_range_checks_are_config_errors() {
    let mut reg = Registry::new();
    reg.add(def());
    for bad in [
        "sanity_check(\"32768\")",
        "sanity_check(\"0\")",
        "sanity_check(\"1\", \"16\")",
    ] {
        let l = load_str(
            "t.cfg",
            &format!("loadmodule \"sanity\"\nrequest_route {{ {bad}; }}\n"),
            &Default::default(),
            &reg,
        );
        assert!(l.program.is_none(), "{bad}");
    }
    let l = load_str(
        "t.cfg",
        "loadmodule \"sanity\"\nmodparam(\"sanity\", \"default_checks\", 40000)\nrequest_route { }\n",
        &Default::default(),
        &reg,
    );
    assert!(l.program.is_none());
}
