//! The `siphon` command line against the real binary.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn siphon(args: &[&str]) -> Output {
    crate::harness::siphon_command()
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
    let mut child = crate::harness::siphon_command()
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

/// A siphon started with Kamailio-style options, its output collected.
struct Started {
    child: std::process::Child,
    log: super::harness::Log,
    udp: Option<std::net::SocketAddr>,
    tcp: Option<std::net::SocketAddr>,
}

impl Started {
    /// Starts siphon with `args` and waits for "siphon started" (panics if it exits first).
    fn new(args: &[&str]) -> Started {
        let (child, log, udp, tcp) = super::harness::spawn_started(args);
        Started {
            child,
            log,
            udp,
            tcp,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line matching `f`, waiting up to 5 s: stderr's lines may trail stdout's.
    fn wait_line(&self, f: impl Fn(&str) -> bool) -> Option<String> {
        for _ in 0..500 {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| f(l)) {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn log_has(&self, s: &str) -> bool {
        self.wait_line(|l| l.contains(s)).is_some()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const UDP_200: &str = "listen=udp:127.0.0.1:0\nloadmodule \"sl.so\"\nrequest_route { sl_send_reply(\"200\", \"OK\"); }\n";

fn answers_options(udp: std::net::SocketAddr) -> bool {
    let uac = super::harness::UdpUac::new(udp);
    uac.send(&super::harness::request(
        "OPTIONS",
        uac.addr(),
        "cli1",
        "cli-call-1",
        "",
    ));
    uac.final_code(Duration::from_secs(5)) == Some(200)
}

#[test]
fn work_dir_and_pid_file() {
    let s = Scratch::new("wdpid");
    let f = s.write("w.cfg", UDP_200);
    let dir = s.0.display().to_string();
    // -f is read before -w is entered (as Kamailio); -P's relative name lands in -w.
    let run = Started::new(&["-f", &f, "-w", &dir, "-P", "siphon.pid", "-E", "-DD"]);
    let pid_path = s.0.join("siphon.pid");
    let text = std::fs::read_to_string(&pid_path).expect("pid file in the -w directory");
    assert_eq!(text.trim(), run.pid().to_string());
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", run.pid())).expect("cwd");
    assert_eq!(cwd, std::fs::canonicalize(&s.0).expect("canonical"));
    assert!(answers_options(run.udp.expect("udp")));
    let status = run.stop();
    assert!(status.success(), "{status:?}");
    assert!(!pid_path.exists(), "the pid file is removed at SIGTERM");
}

#[test]
fn kamailio_options_without_effect_are_accepted_with_a_notice() {
    let s = Scratch::new("compat");
    let f = s.write("c.cfg", UDP_200);
    let run = Started::new(&[
        "-f", &f, "-m", "64", "-M", "16", "-DD", "-E", "-e", "-L", "/x", "-a", "no", "-K", "-n",
        "2",
    ]);
    for n in [
        "notice: -m 64: siphon has no fixed memory pools",
        "notice: -M 16: siphon has no fixed memory pools",
        "notice: -a no:",
        "notice: -K:",
    ] {
        assert!(run.log_has(n), "{n}: {:#?}", run.log.lock().unwrap());
    }
    // -e: colored even though stderr is a pipe; -n 2: two workers.
    let started = run
        .wait_line(|l| l.contains("siphon started") && l.contains('\u{1b}'))
        .expect("a colored log line");
    let plain: String = started
        .split('\u{1b}')
        .map(|p| p.split_once('m').map_or(p, |(_, r)| r))
        .collect();
    assert!(plain.ends_with("siphon started workers=2"), "{plain}");
    assert!(answers_options(run.udp.expect("udp")));
    assert!(run.stop().success());
}

#[test]
fn no_tcp_drops_tcp_listeners() {
    let s = Scratch::new("notcp");
    let f = s.write("t.cfg", UDP_200);
    let run = Started::new(&[
        "-f",
        &f,
        "-T",
        "-l",
        "tcp:127.0.0.1:0",
        "-l",
        "udp:127.0.0.1:0",
    ]);
    assert!(run.tcp.is_none(), "{:#?}", run.log.lock().unwrap());
    assert!(run.log_has("notice: -T: not listening on tcp:127.0.0.1"));
    assert!(answers_options(run.udp.expect("udp")));
}

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new(args[0]).args(&args[1..]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .nth(2)
        .or(Some(text.trim()))?
        .trim()
        .parse()
        .ok()
}

/// The real and effective ids from a /proc status line (`Uid:\t0\t0\t0\t0`).
fn proc_ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .expect(key)
        .split_whitespace()
        .map(|n| n.parse().expect("id"))
        .collect()
}

#[test]
fn user_and_group_are_dropped_after_binding() {
    if !nix_is_root() {
        eprintln!("skipped: dropping privileges needs root (CI runs this as root)");
        return;
    }
    let (Some(uid), Some(gid)) = (
        id_of(&["id", "-u", "nobody"]),
        id_of(&["getent", "group", "nogroup"]),
    ) else {
        eprintln!("skipped: no user nobody or group nogroup here");
        return;
    };
    let s = Scratch::new("suid");
    let f = s.write("u.cfg", UDP_200);
    let dir = s.0.display().to_string();
    let run = Started::new(&[
        "-f",
        &f,
        "-u",
        "nobody",
        "-g",
        "nogroup",
        "-E",
        "-P",
        "siphon.pid",
        "-w",
        &dir,
    ]);
    // As Kamailio 5.6 (checked: kamailio -u nobody -g nogroup -P …): the pid file is theirs.
    let meta = std::fs::metadata(s.0.join("siphon.pid")).expect("pid file");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (uid, gid)
    );
    // Every thread, not only the one that changed its ids.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", run.pid())).expect("tasks");
    let mut n = 0;
    for t in tasks {
        let st = std::fs::read_to_string(t.expect("task").path().join("status")).expect("status");
        assert_eq!(proc_ids(&st, "Uid:"), [uid; 4], "{st}");
        assert_eq!(proc_ids(&st, "Gid:"), [gid; 4], "{st}");
        // initgroups: the user's groups and the group given, none of root's.
        assert!(!proc_ids(&st, "Groups:").contains(&0), "{st}");
        n += 1;
    }
    assert!(n > 1, "a multi-threaded server");
    assert!(answers_options(run.udp.expect("udp")));
    assert!(run.stop().success());
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| proc_ids(&s, "Uid:").get(1) == Some(&0))
        .unwrap_or(false)
}

#[test]
fn unknown_user_or_group_is_refused_before_starting() {
    let out = siphon(&["-c", "-u", "siphon-no-such-user"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: -u siphon-no-such-user: no such user"),
        "{err}"
    );
    let out = siphon(&["-c", "-g", "siphon-no-such-group"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: -g siphon-no-such-group: no such group"),
        "{err}"
    );
}

#[test]
fn unknown_option_exits_as_kamailio() {
    let out = siphon(&["-Z"]);
    // Kamailio 5.6: "Unknown option '-Z'. Use -h for help." and exit(-1).
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'-Z'"));
    if let Ok(k) = Command::new("kamailio").arg("-Z").output() {
        assert_eq!(k.status.code(), out.status.code(), "same as Kamailio's");
    }
}

/// The same command line, Kamailio's and siphon's: `-u nobody -g nogroup -P -w -m -M -DD -E`
/// on a config both read; both answer SIP as nobody:nogroup and own their pid file alike.
#[test]
fn drops_privileges_like_kamailio() {
    if !nix_is_root() {
        eprintln!("skipped: dropping privileges needs root (CI runs this as root)");
        return;
    }
    let (Some(uid), Some(gid)) = (
        id_of(&["id", "-u", "nobody"]),
        id_of(&["getent", "group", "nogroup"]),
    ) else {
        eprintln!("skipped: no user nobody or group nogroup here");
        return;
    };
    let mut servers = vec![env!("CARGO_BIN_EXE_siphon")];
    if Command::new("kamailio").arg("-v").output().is_ok() {
        servers.push("kamailio");
    } else {
        eprintln!("kamailio is not installed: siphon only");
    }
    for server in servers {
        let s = Scratch::new(&format!("suid-{}", servers_name(server)));
        let f = s.write(
            "k.cfg",
            "loadmodule \"sl.so\"\nrequest_route { sl_send_reply(\"200\", \"OK\"); }\n",
        );
        let dir = s.0.display().to_string();
        let addr = super::harness::free_port("u1");
        let listen = format!("udp:127.0.0.1:{}", addr.port());
        let mut child = Command::new(server)
            .env(crate::harness::ONLY_LOOPBACK, "1")
            .args(["-f", &f, "-l", &listen, "-u", "nobody", "-g", "nogroup"])
            .args([
                "-P", "srv.pid", "-w", &dir, "-m", "16", "-M", "4", "-DD", "-E",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let bound = super::harness::wait_bound(addr, "u1", &mut child);
        // Bound first, then the ids change: the first 200 comes once the workers run.
        let answered = bound && (0..5).any(|_| answers_options(addr));
        let pid = std::fs::read_to_string(s.0.join("srv.pid")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()));
        let meta = std::fs::metadata(s.0.join("srv.pid"));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        assert!(answered, "{server} answers SIP as nobody");
        eprintln!("{server}: pid {} answered as {uid}:{gid}", pid.trim());
        assert_eq!(pid.trim(), child.id().to_string(), "{server}: pid file");
        let status = status.expect("status");
        assert_eq!(proc_ids(&status, "Uid:"), [uid; 4], "{server}: {status}");
        assert_eq!(proc_ids(&status, "Gid:"), [gid; 4], "{server}: {status}");
        let meta = meta.expect("pid file");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{server}: pid file owner"
        );
    }
}

fn servers_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
