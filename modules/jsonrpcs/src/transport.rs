//! The FIFO and datagram transports: thin I/O around [`crate::dispatch`].

use crate::dispatch::{Caller, Ctx, Limits, Mode, answer, render};
use crate::{Config, Counters, DGRAM_MAX, FIFO_MAX};
use serde::de::IgnoredAny;
use siphon_proto::jsonrpc::{self, RpcError};
use siphon_script::Program;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a reply waits for its reader to open the reply FIFO.
const REPLY_OPEN_WAIT: Duration = Duration::from_secs(2);
/// How long a reply waits for its reader to read it all.
const REPLY_WRITE_WAIT: Duration = Duration::from_secs(3);

fn own(path: &Path, mode: u32, owner: &(Option<String>, Option<String>)) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    let uid = lookup(&owner.0, "user", nix::unistd::Uid::from_raw, |n| {
        nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| u.uid)
    })?;
    let gid = lookup(&owner.1, "group", nix::unistd::Gid::from_raw, |n| {
        nix::unistd::Group::from_name(n)
            .ok()
            .flatten()
            .map(|g| g.gid)
    })?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid).map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A user or group given as a number or a name.
fn lookup<T>(
    v: &Option<String>,
    what: &str,
    from_raw: fn(u32) -> T,
    by_name: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, String> {
    v.as_deref()
        .map(|s| {
            s.parse::<u32>()
                .map(from_raw)
                .ok()
                .or_else(|| by_name(s))
                .ok_or(format!("unknown {what} `{s}`"))
        })
        .transpose()
}

fn make_dir_for(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Resolves a user given by name or number (`fifo_user`).
fn uid_of(v: &Option<String>) -> Result<Option<nix::unistd::Uid>, String> {
    lookup(v, "user", nix::unistd::Uid::from_raw, |n| {
        nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| u.uid)
    })
}

/// What the FIFO transport's tasks share.
struct Fifo {
    program: Arc<Program>,
    reply_dir: PathBuf,
    /// Owners a reply FIFO may have: ours, and `fifo_user`'s.
    owners: Vec<u32>,
    limits: Limits,
    counters: Arc<Counters>,
    label: String,
}

/// Creates the FIFO and serves it.
pub(crate) fn start_fifo(
    cfg: &Config,
    program: Arc<Program>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let path = cfg.fifo.clone();
    make_dir_for(&path)?;
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::from_bits_truncate(cfg.fifo_mode),
    )
    .map_err(|e| format!("cannot create FIFO {}: {e}", path.display()))?;
    own(&path, cfg.fifo_mode, &cfg.fifo_owner)?;
    if !cfg.reply_dir.is_dir()
        && let Err(e) = std::fs::create_dir_all(&cfg.reply_dir)
    {
        tracing::warn!(
            "jsonrpcs: fifo_reply_dir {} does not exist and cannot be created: {e}",
            cfg.reply_dir.display()
        );
    }
    let mut owners = vec![nix::unistd::geteuid().as_raw()];
    owners.extend(uid_of(&cfg.fifo_owner.0)?.map(|u| u.as_raw()));
    // Read-write, so the reader never sees EOF between writers.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| format!("cannot open FIFO {}: {e}", path.display()))?;
    println!("jsonrpcs listening on fifo:{}", path.display());
    let fifo = Arc::new(Fifo {
        program,
        reply_dir: cfg.reply_dir.clone(),
        owners,
        limits: cfg.limits(usize::MAX),
        counters,
        label: path.display().to_string(),
    });
    tokio::spawn(fifo_loop(rx, fifo));
    Ok(())
}

/// What the FIFO reader found at the start of its buffer.
#[derive(Debug, PartialEq)]
enum Next {
    /// A whole document in `range`.
    Doc(std::ops::Range<usize>),
    /// Not JSON: skip to `resume` (the next `{` or `[`, or the end).
    Garbage { resume: usize },
    /// Only whitespace, or a document still arriving: wait for more.
    More { keep_from: usize },
}

/// Looks at `buf[from..]`: the next document, garbage to skip, or wait.
fn next_document(buf: &[u8], from: usize) -> Next {
    let mut stream = serde_json::Deserializer::from_slice(&buf[from..]).into_iter::<IgnoredAny>();
    match stream.next() {
        Some(Ok(_)) => {
            let end = from + stream.byte_offset();
            let start = buf[from..end]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .map_or(from, |i| from + i);
            Next::Doc(start..end)
        }
        Some(Err(e)) if e.is_eof() => {
            let start = buf[from..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .map_or(buf.len(), |i| from + i);
            Next::More { keep_from: start }
        }
        Some(Err(_)) => {
            // Resynchronise at the next thing that can start a document.
            let first = buf[from..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .map_or(buf.len(), |i| from + i);
            let resume = buf[first + 1..]
                .iter()
                .position(|b| matches!(b, b'{' | b'['))
                .map_or(buf.len(), |i| first + 1 + i);
            Next::Garbage { resume }
        }
        None => Next::More {
            keep_from: buf.len(),
        },
    }
}

async fn fifo_loop(mut rx: tokio::net::unix::pipe::Receiver, fifo: Arc<Fifo>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                tracing::error!("jsonrpcs FIFO read: {e}");
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        // Several documents may arrive back to back in one write: answer each;
        // input that is not JSON is skipped up to the next document.
        let mut pos = 0;
        loop {
            match next_document(&buf, pos) {
                Next::Doc(r) => {
                    pos = r.end;
                    tokio::spawn(fifo_request(fifo.clone(), buf[r].to_vec()));
                }
                Next::Garbage { resume } => {
                    fifo.counters.fifo_garbage.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "jsonrpcs FIFO: skipping {} bytes that are not JSON",
                        resume - pos
                    );
                    pos = resume;
                }
                Next::More { keep_from } => {
                    pos = keep_from;
                    break;
                }
            }
        }
        buf.drain(..pos);
        if buf.len() > FIFO_MAX {
            tracing::warn!("jsonrpcs FIFO: a document over {FIFO_MAX} bytes was discarded");
            fifo.counters.fifo_garbage.fetch_add(1, Ordering::Relaxed);
            buf.clear();
        }
    }
}

/// Why a reply FIFO was not written.
#[derive(Debug, thiserror::Error)]
enum ReplyFifoError {
    #[error("cannot open it: {0}")]
    Open(std::io::Error),
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a FIFO")]
    NotFifo,
    #[error("it is owned by uid {0}, not by this server's user or fifo_user")]
    Owner(u32),
}

/// Opens an existing reply FIFO for writing: never through a symbolic link,
/// never waiting for a reader (`ENXIO` when there is none), and only a FIFO
/// owned by one of `owners`.
fn open_reply_fifo(path: &Path, owners: &[u32]) -> Result<std::fs::File, ReplyFifoError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                ReplyFifoError::Symlink
            } else {
                ReplyFifoError::Open(e)
            }
        })?;
    let meta = file.metadata().map_err(ReplyFifoError::Open)?;
    if !meta.file_type().is_fifo() {
        return Err(ReplyFifoError::NotFifo);
    }
    if !owners.contains(&meta.uid()) {
        return Err(ReplyFifoError::Owner(meta.uid()));
    }
    Ok(file)
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC
}

async fn fifo_request(fifo: Arc<Fifo>, text: Vec<u8>) {
    #[derive(serde::Deserialize)]
    struct Name {
        reply_name: Option<String>,
    }
    // A batch's reply goes to the first reply_name among its items.
    let reply_name = if text.first() == Some(&b'[') {
        serde_json::from_slice::<Vec<Name>>(&text)
            .ok()
            .and_then(|v| v.into_iter().find_map(|n| n.reply_name))
    } else {
        serde_json::from_slice::<Name>(&text)
            .ok()
            .and_then(|n| n.reply_name)
    };
    let caller = Caller::new(
        "fifo",
        format!(
            "{} reply_name {}",
            fifo.label,
            reply_name.as_deref().unwrap_or("-")
        ),
    );
    let cx = Ctx {
        program: &fifo.program,
        mode: Mode::Async,
        caller: &caller,
        limits: fifo.limits,
        counters: &fifo.counters,
    };
    let reply = answer(&cx, &text).await;
    let Some(name) = reply_name else {
        tracing::warn!("jsonrpcs FIFO: a request without reply_name; its reply is dropped");
        return;
    };
    if name.is_empty() || name.contains('/') || name.contains("..") {
        tracing::error!("jsonrpcs FIFO: refusing reply_name `{name}`: it must be a bare file name");
        return;
    }
    let Some(body) = reply else { return };
    let path = fifo.reply_dir.join(&name);
    let deadline = tokio::time::Instant::now() + REPLY_OPEN_WAIT;
    let file = loop {
        match open_reply_fifo(&path, &fifo.owners) {
            Ok(f) => break f,
            Err(ReplyFifoError::Open(e))
                if tokio::time::Instant::now() < deadline
                    && matches!(
                        e.raw_os_error(),
                        Some(nix::libc::ENXIO) | Some(nix::libc::ENOENT)
                    ) =>
            {
                // ENXIO: no reader yet; ENOENT: not created yet. Try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(ReplyFifoError::Open(e)) => {
                let hint = if e.raw_os_error() == Some(nix::libc::ENOENT) {
                    " (does the client create its reply FIFO in this fifo_reply_dir?)"
                } else {
                    ""
                };
                tracing::warn!(
                    "jsonrpcs FIFO: cannot open reply FIFO {}: {e}{hint}",
                    path.display()
                );
                return;
            }
            Err(e) => {
                fifo.counters
                    .fifo_reply_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "jsonrpcs FIFO: refusing to write a reply to {}: {e}",
                    path.display()
                );
                return;
            }
        }
    };
    let mut tx = match tokio::net::unix::pipe::Sender::from_file(file) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!("jsonrpcs FIFO: reply FIFO {}: {e}", path.display());
            return;
        }
    };
    match tokio::time::timeout(REPLY_WRITE_WAIT, tx.write_all(&body)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            "jsonrpcs FIFO: writing the reply to {}: {e}",
            path.display()
        ),
        Err(_) => {
            fifo.counters
                .fifo_reply_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "jsonrpcs FIFO: the reader of {} did not take the reply within {} s: dropped",
                path.display(),
                REPLY_WRITE_WAIT.as_secs()
            );
        }
    }
}

/// A `udp:` datagram socket address: `udp:HOST:PORT` with a host name, an
/// IPv4 address, `[IPv6]` or bare IPv6 (the port is after the last colon).
fn udp_addr(spec: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let bad = || format!("dgram_socket `{spec}`: expected udp:HOST:PORT");
    let rest = spec
        .strip_prefix("udp:")
        .or_else(|| spec.strip_prefix("udp6:"))
        .ok_or_else(bad)?;
    if let Ok(a) = rest.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok((ip, port).into());
    }
    let want_v6 = spec.starts_with("udp6:");
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("dgram_socket `{spec}`: cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv6() == want_v6)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("dgram_socket `{spec}`: {host} has no address"))
}

/// Binds the datagram socket (unix path or `udp:host:port`) and serves it.
pub(crate) fn start_dgram(
    cfg: &Config,
    program: Arc<Program>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let workers = cfg.dgram_workers;
    let limits = cfg.limits(DGRAM_MAX);
    if cfg.dgram.starts_with("udp:") || cfg.dgram.starts_with("udp6:") {
        let addr = udp_addr(&cfg.dgram)?;
        let std_sock = std::net::UdpSocket::bind(addr)
            .map_err(|e| format!("cannot bind jsonrpcs datagram socket {addr}: {e}"))?;
        std_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sock = Arc::new(tokio::net::UdpSocket::from_std(std_sock).map_err(|e| e.to_string())?);
        println!(
            "jsonrpcs listening on udp:{}",
            sock.local_addr().map_err(|e| e.to_string())?
        );
        for _ in 0..workers {
            let (sock, program, counters) = (sock.clone(), program.clone(), counters.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; DGRAM_MAX + 1];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        continue;
                    };
                    let caller = Caller::new("udp", from.to_string());
                    let reply = dgram_answer(&program, &counters, limits, &caller, &buf[..n]).await;
                    if let Some(r) = reply {
                        let _ = sock.send_to(&r, from).await;
                    }
                }
            });
        }
        return Ok(());
    }
    let path = PathBuf::from(&cfg.dgram);
    make_dir_for(&path)?;
    let _ = std::fs::remove_file(&path);
    let sock = Arc::new(tokio::net::UnixDatagram::bind(&path).map_err(|e| {
        format!(
            "cannot bind jsonrpcs datagram socket {}: {e}",
            path.display()
        )
    })?);
    own(&path, cfg.dgram_mode, &cfg.dgram_owner)?;
    println!("jsonrpcs listening on unix:{}", path.display());
    for _ in 0..workers {
        let (sock, program, counters) = (sock.clone(), program.clone(), counters.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; DGRAM_MAX + 1];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let caller = Caller::new(
                    "unix",
                    from.as_pathname()
                        .map_or("(unbound)".into(), |p| p.display().to_string()),
                );
                let reply = dgram_answer(&program, &counters, limits, &caller, &buf[..n]).await;
                match (reply, from.as_pathname()) {
                    (Some(r), Some(p)) => {
                        let _ = sock.send_to(&r, p).await;
                    }
                    (Some(_), None) => tracing::warn!(
                        "jsonrpcs: a datagram from an unbound unix socket cannot be answered"
                    ),
                    (None, _) => {}
                }
            }
        });
    }
    Ok(())
}

/// One datagram in, one reply datagram out (bounded both ways: the reply is
/// never built past the datagram limit).
async fn dgram_answer(
    program: &Arc<Program>,
    counters: &Counters,
    limits: Limits,
    caller: &Caller,
    req: &[u8],
) -> Option<Vec<u8>> {
    if req.len() > DGRAM_MAX {
        return Some(render(
            &jsonrpc::error(
                None,
                &RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    format!("request larger than {DGRAM_MAX} bytes"),
                ),
            ),
            false,
        ));
    }
    let cx = Ctx {
        program,
        mode: Mode::Async,
        caller,
        limits,
        counters,
    };
    answer(&cx, req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn users_and_groups_by_number_or_name() {
        let by_name = |n: &str| {
            nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .map(|u| u.uid)
        };
        let user = |v: Option<&str>| {
            lookup(
                &v.map(String::from),
                "user",
                nix::unistd::Uid::from_raw,
                by_name,
            )
        };
        let root = Ok(Some(nix::unistd::Uid::from_raw(0)));
        assert_eq!(user(Some("0")), root);
        assert_eq!(user(Some("root")), root);
        assert_eq!(user(None), Ok(None));
        assert!(
            user(Some("no-such-user-here"))
                .unwrap_err()
                .contains("unknown user")
        );
    }

    #[test]
    fn garbage_is_skipped_up_to_the_next_document() {
        let buf = br#"nope{"a":1} garbage {"b":2} {"c":"#;
        let mut pos = 0;
        let mut docs = Vec::new();
        let mut skipped = 0;
        loop {
            match next_document(buf, pos) {
                Next::Doc(r) => {
                    docs.push(String::from_utf8(buf[r.clone()].to_vec()).unwrap());
                    pos = r.end;
                }
                Next::Garbage { resume } => {
                    skipped += 1;
                    pos = resume;
                }
                Next::More { keep_from } => {
                    pos = keep_from;
                    break;
                }
            }
        }
        assert_eq!(docs, [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(skipped, 2);
        // The incomplete document is kept for the next read.
        assert_eq!(&buf[pos..], br#"{"c":"#);
        // A broken document resumes at the next one inside or after it.
        assert_eq!(
            next_document(b"{bad}{\"x\":1}", 0),
            Next::Garbage { resume: 5 }
        );
        assert_eq!(next_document(b"  \n", 0), Next::More { keep_from: 3 });
    }

    #[test]
    fn udp_sockets_by_name_and_bare_ipv6() {
        let a = |s: &str| udp_addr(s).unwrap().to_string();
        assert_eq!(a("udp:127.0.0.1:5090"), "127.0.0.1:5090");
        assert_eq!(a("udp:[::1]:5090"), "[::1]:5090");
        assert_eq!(a("udp:::1:5090"), "[::1]:5090");
        assert_eq!(a("udp6:::1:5090"), "[::1]:5090");
        assert!(udp_addr("udp:localhost:5090").unwrap().ip().is_loopback());
        assert!(udp_addr("udp:localhost").is_err());
        assert!(udp_addr("udp:127.0.0.1:x").is_err());
    }

    #[test]
    fn reply_fifos_are_never_opened_through_links_or_when_not_fifos() {
        let dir = std::env::temp_dir().join(format!("jrpcs-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // A reader, so opening for writing does not fail with ENXIO.
        let _rd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert!(open_reply_fifo(&fifo, &[me]).is_ok());
        assert!(matches!(
            open_reply_fifo(&fifo, &[me + 1]),
            Err(ReplyFifoError::Owner(_))
        ));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(matches!(
            open_reply_fifo(&link, &[me]),
            Err(ReplyFifoError::Symlink)
        ));
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            open_reply_fifo(&file, &[me]),
            Err(ReplyFifoError::NotFifo)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn modes_are_written_in_octal() {
        assert_eq!(crate::mode_of(Some(660), 0), 0o660);
        assert_eq!(crate::mode_of(None, 0o600), 0o600);
    }
}
