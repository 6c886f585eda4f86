//! The FIFO and datagram transports: thin I/O around [`crate::dispatch`].

use crate::dispatch::{Mode, dispatch, render};
use crate::{Config, DGRAM_MAX, FIFO_MAX};
use serde_json::Value;
use siphon_proto::jsonrpc::{self, RpcError};
use siphon_script::Program;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a reply waits for its reader to open the reply FIFO.
const REPLY_OPEN_WAIT: Duration = Duration::from_secs(2);

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

/// Creates the FIFO and serves it.
pub(crate) fn start_fifo(cfg: &Config, program: Arc<Program>) -> Result<(), String> {
    let path = cfg.fifo.clone();
    make_dir_for(&path)?;
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::from_bits_truncate(cfg.fifo_mode),
    )
    .map_err(|e| format!("cannot create FIFO {}: {e}", path.display()))?;
    own(&path, cfg.fifo_mode, &cfg.fifo_owner)?;
    // Read-write, so the reader never sees EOF between writers.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| format!("cannot open FIFO {}: {e}", path.display()))?;
    println!("jsonrpcs listening on fifo:{}", path.display());
    tokio::spawn(fifo_loop(rx, program, cfg.reply_dir.clone(), cfg.pretty));
    Ok(())
}

async fn fifo_loop(
    mut rx: tokio::net::unix::pipe::Receiver,
    program: Arc<Program>,
    reply_dir: PathBuf,
    pretty: bool,
) {
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
        // Several documents may arrive back to back in one write: answer each.
        let mut consumed = 0;
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        loop {
            let start = stream.byte_offset();
            match stream.next() {
                Some(Ok(doc)) => {
                    let end = stream.byte_offset();
                    consumed = end;
                    let text = buf[start..end].to_vec();
                    tokio::spawn(fifo_request(
                        program.clone(),
                        doc,
                        text,
                        reply_dir.clone(),
                        pretty,
                    ));
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::warn!("jsonrpcs FIFO: discarding input that is not JSON: {e}");
                    consumed = buf.len();
                    break;
                }
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if buf.len() > FIFO_MAX {
            tracing::warn!("jsonrpcs FIFO: a document over {FIFO_MAX} bytes was discarded");
            buf.clear();
        }
    }
}

async fn fifo_request(
    program: Arc<Program>,
    doc: Value,
    text: Vec<u8>,
    reply_dir: PathBuf,
    pretty: bool,
) {
    let reply_name = doc
        .get("reply_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let reply = dispatch(&program, &text, Mode::Async).await;
    let Some(name) = reply_name else {
        tracing::warn!("jsonrpcs FIFO: a request without reply_name; its reply is dropped");
        return;
    };
    if name.is_empty() || name.contains('/') || name.contains("..") {
        tracing::error!("jsonrpcs FIFO: refusing reply_name `{name}`: it must be a bare file name");
        return;
    }
    let Some(reply) = reply else { return };
    let path = reply_dir.join(&name);
    let body = render(&reply, pretty);
    let deadline = tokio::time::Instant::now() + REPLY_OPEN_WAIT;
    loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(&path) {
            Ok(mut tx) => {
                if let Err(e) = tx.write_all(&body).await {
                    tracing::warn!(
                        "jsonrpcs FIFO: writing the reply to {}: {e}",
                        path.display()
                    );
                }
                return;
            }
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && matches!(e.raw_os_error(), Some(6) | Some(2)) =>
            {
                // ENXIO: no reader yet; ENOENT: not created yet. Try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                tracing::warn!(
                    "jsonrpcs FIFO: cannot open reply FIFO {}: {e}",
                    path.display()
                );
                return;
            }
        }
    }
}

fn too_large(doc_id: Option<&Value>) -> Vec<u8> {
    render(
        &jsonrpc::error(
            doc_id,
            &RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                format!("reply larger than {DGRAM_MAX} bytes: use the FIFO or HTTP transport"),
            ),
        ),
        false,
    )
}

/// Binds the datagram socket (unix path or `udp:host:port`) and serves it.
pub(crate) fn start_dgram(cfg: &Config, program: Arc<Program>) -> Result<(), String> {
    let workers = cfg.dgram_workers;
    if let Some(addr) = cfg
        .dgram
        .strip_prefix("udp:")
        .or_else(|| cfg.dgram.strip_prefix("udp6:"))
    {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            format!(
                "dgram_socket `{}`: expected udp:ADDR:PORT (IPv6 in brackets)",
                cfg.dgram
            )
        })?;
        let std_sock = std::net::UdpSocket::bind(addr)
            .map_err(|e| format!("cannot bind jsonrpcs datagram socket {addr}: {e}"))?;
        std_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sock = Arc::new(tokio::net::UdpSocket::from_std(std_sock).map_err(|e| e.to_string())?);
        println!(
            "jsonrpcs listening on udp:{}",
            sock.local_addr().map_err(|e| e.to_string())?
        );
        for _ in 0..workers {
            let (sock, program, pretty) = (sock.clone(), program.clone(), cfg.pretty);
            tokio::spawn(async move {
                let mut buf = vec![0u8; DGRAM_MAX + 1];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        continue;
                    };
                    let reply = answer(&program, &buf[..n], pretty).await;
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
        let (sock, program, pretty) = (sock.clone(), program.clone(), cfg.pretty);
        tokio::spawn(async move {
            let mut buf = vec![0u8; DGRAM_MAX + 1];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = answer(&program, &buf[..n], pretty).await;
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

/// One datagram in, one reply datagram out (bounded both ways).
async fn answer(program: &Arc<Program>, req: &[u8], pretty: bool) -> Option<Vec<u8>> {
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
    let reply = dispatch(program, req, Mode::Async).await?;
    let out = render(&reply, pretty);
    if out.len() > DGRAM_MAX {
        return Some(too_large(reply.get("id")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn modes_are_written_in_octal() {
        assert_eq!(crate::mode_of(Some(660), 0), 0o660);
        assert_eq!(crate::mode_of(None, 0o600), 0o600);
    }
}
