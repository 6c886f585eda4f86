//! The `siphon` command line against the real binary.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn siphon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siphon"))
        .args(args)
        .output()
        .expect("run siphon")
}

/// A scratch directory for this test, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);
impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("siphon-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn default_config_checks_and_prints() {
    let out = siphon(&["-c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = siphon(&["--print-default-config"]);
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).expect("utf-8");
    assert!(text.contains("request_route"));
    let s = Scratch::new("default");
    let f = s.write("default.cfg", &text);
    assert!(siphon(&["check", "-f", &f]).status.success());
}

#[test]
fn defines_from_the_command_line() {
    let s = Scratch::new("defines");
    let f = s.write("d.cfg", "#!ifdef BROKEN\nthis is not a config\n#!endif\n#!ifdef LEVEL\ndebug=LEVEL\n#!endif\nrequest_route { exit; }\n");
    assert!(siphon(&["-c", "-f", &f]).status.success());
    assert!(siphon(&["-c", "-f", &f, "-A", "LEVEL=3"]).status.success());
    let out = siphon(&["-c", "-f", &f, "-A", "BROKEN"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("d.cfg:2:"), "{err}");
    let out = siphon(&["-c", "-f", &f, "-A", "LEVEL=9"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`debug` takes a log level from -5 to 3, found 9")
    );
}

#[test]
fn include_file_relative_to_the_including_file() {
    let s = Scratch::new("include");
    std::fs::create_dir_all(s.0.join("sub")).expect("mkdir");
    s.write("sub/routes.cfg", "route[FROM_INCLUDE] { exit; }\n");
    let main = s.write(
        "main.cfg",
        "include_file \"sub/routes.cfg\"\nrequest_route { route(FROM_INCLUDE); }\n",
    );
    let out = siphon(&["-c", "-f", &main]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.write("sub/routes.cfg", "route[FROM_INCLUDE] { nosuch(); }\n");
    let out = siphon(&["-c", "-f", &main]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sub/routes.cfg:1:23"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_listen_on_the_command_line() {
    let out = siphon(&["-c", "-l", "udp:127.0.0.1:notaport"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a port number"));
}

#[test]
fn runs_startup_route_and_stops_on_sigterm() {
    let s = Scratch::new("run");
    let f = s.write("run.cfg", "debug=2\nstartup_route { $shv(x) = 41; xinfo(\"startup ran, answer=$(shv(x){s.int})\\n\"); }\nrequest_route { exit; }\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .args(["-f", &f, "-E", "-DD"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("siphon started")) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("siphon did not start: {seen:#?}");
            }
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("startup ran, answer=41")),
        "{seen:#?}"
    );
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
}
