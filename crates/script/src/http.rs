//! HTTP in the module API: the service the host hands HTTP connections of
//! the SIP TCP listeners to ([`HttpService`], registered through
//! [`crate::api::Host::set_http_service`]), and the request in a route:
//! what xhttp puts in the route's context ([`Exchange`]) and the modules
//! that answer it (jsonrpcs' `jsonrpc_dispatch`, xhttp_prom's
//! `prom_dispatch`) read and fill, so none of them depends on another.

use crate::net::Peer;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Serves HTTP on connections of the SIP TCP listeners (xhttp registers one).
pub trait HttpService: Send + Sync {
    /// Serves one connection until it closes or `shutdown` fires.
    fn serve(
        &self,
        io: PrefixedStream,
        peer: Peer,
        shutdown: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A byte stream a connection runs on (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TCP connection handed to an HTTP server (xhttp) after its first line
/// showed HTTP: the bytes already read come first, then the socket.
pub struct PrefixedStream {
    prefix: BytesMut,
    inner: Box<dyn Io>,
}

impl std::fmt::Debug for PrefixedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedStream")
            .field("prefix", &self.prefix.len())
            .finish()
    }
}

impl PrefixedStream {
    /// Bytes read before the hand-over, then `inner`.
    pub fn new(prefix: BytesMut, inner: Box<dyn Io>) -> Self {
        PrefixedStream { prefix, inner }
    }
}

impl AsyncRead for PrefixedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code (100–999).
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// `Content-Type`, none when empty.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
    /// More header fields (`WWW-Authenticate`, ...).
    pub headers: Vec<(&'static str, String)>,
}

/// An answer that is computed later (an asynchronous RPC command).
pub type ReplyFuture = Pin<Box<dyn Future<Output = HttpReply> + Send>>;

/// The answer given to an [`Exchange`].
pub enum Answer {
    /// Complete now.
    Now(HttpReply),
    /// Completes later, without the route's context.
    Later(ReplyFuture),
}

/// The HTTP request being handled, in the route's context (`ctx.ext`): what
/// modules read the request from and give their answer to.
pub struct Exchange {
    url: Bytes,
    body: Bytes,
    answer: Option<Answer>,
    peer: Peer,
    authorization: Option<Bytes>,
    /// `set_reply_close()`: the connection closes after the answer.
    close: bool,
}

impl Exchange {
    /// A request for `url` (path and query as sent) from `peer`, not answered yet.
    pub fn new(url: Bytes, body: Bytes, peer: Peer, authorization: Option<Bytes>) -> Self {
        Exchange {
            url,
            body,
            answer: None,
            peer,
            authorization,
            close: false,
        }
    }
    /// `set_reply_close()`: close the connection once the answer is sent.
    pub fn close_after_reply(&mut self) {
        self.close = true;
    }
    /// Whether the connection closes after the answer.
    pub fn closes_after_reply(&self) -> bool {
        self.close
    }
    /// The request URL as sent (`/RPC?x=1`): `$hu`.
    pub fn url(&self) -> &Bytes {
        &self.url
    }
    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Who sent the request (address, and whether over TLS).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
    /// The request's `Authorization` header value, if any.
    pub fn authorization(&self) -> Option<&[u8]> {
        self.authorization.as_deref()
    }
    /// Whether an answer was given already.
    pub fn answered(&self) -> bool {
        self.answer.is_some()
    }
    /// Gives the answer; `false` when one was given already.
    pub fn reply(&mut self, r: HttpReply) -> bool {
        self.set(Answer::Now(r))
    }
    /// Gives an answer that completes later; `false` when one was given already.
    pub fn reply_later(&mut self, f: ReplyFuture) -> bool {
        self.set(Answer::Later(f))
    }
    /// Takes the answer given (the HTTP server, once the route ran).
    pub fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }
    fn set(&mut self, a: Answer) -> bool {
        if self.answer.is_some() {
            return false;
        }
        self.answer = Some(a);
        true
    }
}
