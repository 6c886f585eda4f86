//! The stateful proxy against peers nobody here wrote: the sipp scenarios of
//! `bench/sipp` through the same routing on Kamailio (`bench/kamailio-proxy.cfg`)
//! and on siphon (`bench/siphon-proxy.cfg`) — t_relay, failure_route after a
//! 486, CANCEL, fr_timer — on free loopback ports. Each scenario runs on both
//! servers; without `kamailio` installed (scripts/install-test-peers.sh) its
//! half says so and passes.

use super::harness::{SippUas, free_port, sipp_uac, wait_bound};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A proxy in the foreground on its `bench/*-proxy.cfg`, listening on a free
/// UDP port and relaying to `uas` (and to `uas2` after a 486); stopped with
/// SIGTERM (Kamailio then stops the workers it forked) when dropped.
struct Kamailio {
    addr: SocketAddr,
    child: Child,
}

type Start = fn(SocketAddr, SocketAddr) -> Option<Kamailio>;

/// siphon on `bench/siphon-proxy.cfg`.
fn siphon(uas: SocketAddr, uas2: SocketAddr) -> Option<Kamailio> {
    let cfg = format!(
        "{}/../../bench/siphon-proxy.cfg",
        env!("CARGO_MANIFEST_DIR")
    );
    for _ in 0..5 {
        let addr = free_port("u1");
        let define = |name: &str, port: u16| ["-A".to_string(), format!("{name}={port}")];
        let mut child = crate::harness::siphon_command()
            .args(["-f", &cfg])
            .args(define("PROXY_PORT", addr.port()))
            .args(define("UAS_PORT", uas.port()))
            .args(define("UAS2_PORT", uas2.port()))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn siphon");
        if wait_bound(addr, "u1", &mut child) {
            return Some(Kamailio { addr, child });
        }
        drop(Kamailio { addr, child });
    }
    panic!("siphon did not start on {cfg}");
}

impl Kamailio {
    /// None (after a note) when Kamailio is not installed.
    fn start(uas: SocketAddr, uas2: SocketAddr) -> Option<Kamailio> {
        if Command::new("kamailio").arg("-v").output().is_err() {
            eprintln!("kamailio is not installed (scripts/install-test-peers.sh): test skipped");
            return None;
        }
        let cfg = format!(
            "{}/../../bench/kamailio-proxy.cfg",
            env!("CARGO_MANIFEST_DIR")
        );
        for _ in 0..5 {
            let addr = free_port("u1");
            let define = |name: &str, port: u16| ["-A".to_string(), format!("{name}={port}")];
            let mut child = Command::new("kamailio")
                .args(["-f", &cfg, "-DD", "-E", "-m", "64", "-M", "8"])
                .args(define("PROXY_PORT", addr.port()))
                .args(define("UAS_PORT", uas.port()))
                .args(define("UAS2_PORT", uas2.port()))
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn kamailio");
            if wait_bound(addr, "u1", &mut child) {
                return Some(Kamailio { addr, child });
            }
            // The port was taken meanwhile (or the config broke: its errors are on stderr).
            drop(Kamailio { addr, child });
        }
        panic!("kamailio did not start on {cfg}");
    }
}

impl Drop for Kamailio {
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

/// Asserts the UAS ended with `calls` successful calls and none failed
/// (it saw every request its scenario expects: ACK, CANCEL, BYE).
fn assert_uas_done(uas: SippUas, calls: u64) {
    let run = uas.finish();
    assert!(
        run.successful == calls && run.failed == 0,
        "UAS: {} ok, {} failed of {calls}\n{}",
        run.successful,
        run.failed,
        run.tail()
    );
}

fn relays_builtin_uac_to_builtin_uas(start: Start) {
    let uas = SippUas::start("uas", "u1");
    let Some(kam) = start(uas.addr, free_port("u1")) else {
        return;
    };
    // INVITE/100/180/200, the ACK for the 200 relayed statelessly, BYE/200.
    sipp_uac("uac", kam.addr, "u1", 5, &[]);
}

fn serial_forks_after_486_to_the_second_uas(start: Start) {
    let busy = SippUas::start("uas_busy.xml", "u1");
    let uas = SippUas::start("uas", "u1");
    let Some(kam) = start(busy.addr, uas.addr) else {
        return;
    };
    // The ACK and the BYE follow the second UAS's Contact through the proxy.
    sipp_uac("uac_invite_bye.xml", kam.addr, "u1", 3, &[]);
    // The busy UAS got the proxy's ACK for each 486.
    assert_uas_done(busy, 3);
}

/// `bench/sipp/uac_expect.xml` through `kam`: `calls` calls, each ending
/// with `code` (and the caller's ACK for it).
fn expect_final(kam: &Kamailio, calls: u32, code: &str) {
    sipp_uac(
        "uac_expect.xml",
        kam.addr,
        "u1",
        calls,
        &["-key", "expect", code],
    );
}

fn relays_486_when_both_are_busy(start: Start) {
    let busy = SippUas::start("uas_busy.xml", "u1");
    let busy2 = SippUas::start("uas_busy.xml", "u1");
    let Some(kam) = start(busy.addr, busy2.addr) else {
        return;
    };
    expect_final(&kam, 2, "486");
    // uac_expect.xml does check the code: told 408, it fails on the 486.
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        expect_final(&kam, 1, "408");
    }));
    assert!(wrong.is_err(), "uac_expect.xml accepted a 486 for a 408");
    assert_uas_done(busy, 3);
    assert_uas_done(busy2, 3);
}

fn relays_cancel_to_a_ringing_uas(start: Start) {
    let ringing = SippUas::start("uas_ring_cancel.xml", "u1");
    let Some(kam) = start(ringing.addr, free_port("u1")) else {
        return;
    };
    // 180, CANCEL -> 200, 487 -> ACK, on both sides of the proxy.
    sipp_uac("uac_cancel.xml", kam.addr, "u1", 3, &[]);
    assert_uas_done(ringing, 3);
}

fn answers_408_after_fr_timer_when_nobody_answers(start: Start) {
    // Nobody listens on either UAS port (fr_timer is 2 s; the failure route
    // retries only after a 486).
    let Some(kam) = start(free_port("u1"), free_port("u1")) else {
        return;
    };
    expect_final(&kam, 1, "408");
}

/// Each scenario on Kamailio and on siphon.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod kamailio {
            $(#[test] fn $scenario() { super::$scenario(super::Kamailio::start) })*
        }
        mod siphon {
            $(#[test] fn $scenario() { super::$scenario(super::siphon) })*
        }
    };
}

on_both!(
    relays_builtin_uac_to_builtin_uas,
    serial_forks_after_486_to_the_second_uas,
    relays_486_when_both_are_busy,
    relays_cancel_to_a_ringing_uas,
    answers_408_after_fr_timer_when_nobody_answers,
);
