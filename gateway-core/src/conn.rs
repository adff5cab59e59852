//! What one accepted connection is watched for, below hyper.
//!
//! [`Watched`] wraps any accepted stream (plain TCP today, a TLS stream
//! tomorrow) and looks at the bytes hyper reads, without changing them:
//!
//! - whether the client has said hello yet: a first byte on HTTP/1.1, the
//!   whole preface and first frame on h2c ([`ConnState::greeted`]). hyper's
//!   own `header_read_timeout` only starts once an HTTP/1.1 head begins, and
//!   nothing in hyper bounds the wait for an HTTP/2 preface.
//! - the framing of every HTTP/1.1 request, to find what hyper quietly
//!   resolves: hyper drops `Content-Length` when `Transfer-Encoding` is
//!   present, merges repeated equal lengths, accepts bare LF line ends and
//!   raw non-ASCII bytes in the target. The parsed request no longer shows
//!   any of it, so the raw head is scanned here, bounded by the header byte
//!   limit, and the offending request's number is recorded
//!   ([`ConnState::refusal`]); the server answers that request with a JSON
//!   400 instead of serving it.
//!
//! [`ConnState`] also counts requests in flight, so the server can tell an
//! idle connection from a busy one: hyper-util offers no idle timeout for
//! either protocol.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::error::{ErrorKind, ForwardError};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest chunk-size line (with extensions) followed; longer ones are
/// refused by hyper too.
const MAX_CHUNK_LINE: usize = 4096;

/// A request the scanner found malformed: its number on the connection
/// (0-based) and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Which request of the connection (HTTP/1.1 requests are served in order).
    pub request: u64,
    /// The answer.
    pub error: ForwardError,
}

/// Shared between the stream wrapper, the service and the connection's
/// driver.
#[derive(Debug)]
pub struct ConnState {
    started: Instant,
    greeted: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished.
    idle_since_ms: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
    refusal: OnceLock<Refusal>,
    /// Told when the last request in flight ends.
    idle: tokio::sync::Notify,
    /// An HTTP/2 stream was turned into a tunnel (WebSocket over extended
    /// CONNECT): it lives on past its response, where nothing here sees its
    /// end, so the connection is never called idle again.
    tunnelled: AtomicBool,
}

impl ConnState {
    /// State of a connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            greeted: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicU64::new(0),
            refusal: OnceLock::new(),
            idle: tokio::sync::Notify::new(),
            tunnelled: AtomicBool::new(false),
        })
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The client has sent its first byte (HTTP/1.1) or its preface and
    /// first frame (HTTP/2).
    pub fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// Requests being served (until their response body ends).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks the connection as carrying a tunnel (see `tunnelled`).
    pub fn tunnel_opened(&self) {
        self.tunnelled.store(true, Ordering::Release);
    }

    /// Whether a request or a tunnel is in progress: not idle.
    pub fn busy(&self) -> bool {
        self.in_flight() > 0 || self.tunnelled.load(Ordering::Acquire)
    }

    /// When the connection last became idle (its start if it never served).
    pub fn idle_since(&self) -> Instant {
        self.started + std::time::Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Resolves when the last request in flight has ended.
    pub async fn became_idle(&self) {
        self.idle.notified().await
    }

    /// Registers a request handed to the service: returns the refusal if
    /// the scanner found this request malformed, and a guard to hold until
    /// the response is done.
    pub fn begin_request(self: &Arc<Self>) -> (Option<ForwardError>, InFlight) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let n = self.served.fetch_add(1, Ordering::AcqRel);
        let refused = self
            .refusal
            .get()
            .filter(|r| n >= r.request)
            .map(|r| r.error.clone());
        (refused, InFlight(self.clone()))
    }

    fn refuse(&self, request: u64, kind: ErrorKind, message: &'static str) {
        let _ = self.refusal.set(Refusal {
            request,
            error: ForwardError::new(kind, message),
        });
    }
}

/// A request in flight; dropped when its response body ends (or the
/// connection goes).
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let ms = s.started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        s.idle_since_ms.store(ms, Ordering::Release);
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.idle.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// An accepted stream whose incoming bytes are watched (module docs).
    #[derive(Debug)]
    pub struct Watched<S> {
        #[pin]
        inner: S,
        scan: Scan,
        state: Arc<ConnState>,
    }
}

impl<S> Watched<S> {
    /// Watches `inner`; HTTP/1.1 heads longer than `max_head` are not
    /// scanned (hyper refuses them).
    pub fn new(inner: S, state: Arc<ConnState>, max_head: usize) -> Self {
        Self {
            inner,
            scan: Scan::new(max_head),
            state,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && !this.scan.is_off()
        {
            this.scan.feed(&buf.filled()[before..], this.state);
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The incremental scanner: protocol detection, then HTTP/1.1 framing.
#[derive(Debug)]
struct Scan {
    max_head: usize,
    /// Which request of the connection the bytes belong to.
    request: u64,
    /// Head, trailer or chunk-size line bytes collected so far.
    buf: Vec<u8>,
    at: At,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Matching the h2 preface; this many bytes matched.
    Detect(usize),
    /// h2: this many bytes of the first frame header read.
    H2Frame(usize),
    /// h2: this many payload bytes of the first frame still to come.
    H2Payload(u64),
    /// HTTP/1.1 head.
    Head,
    /// A body of known length: bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data: bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data: bytes of it seen.
    ChunkEnd(u8),
    /// Trailer section after the last chunk.
    Trailers,
    /// Nothing more to learn (h2 greeted, upgrade, or a refusal recorded).
    Off,
}

impl Scan {
    fn new(max_head: usize) -> Self {
        Self {
            max_head,
            request: 0,
            buf: Vec::new(),
            at: At::Detect(0),
        }
    }

    fn is_off(&self) -> bool {
        self.at == At::Off
    }

    fn feed(&mut self, mut bytes: &[u8], state: &ConnState) {
        while !bytes.is_empty() {
            match self.at {
                At::Detect(n) => {
                    let b = bytes[0];
                    if b == PREFACE[n] {
                        bytes = &bytes[1..];
                        self.at = if n + 1 == PREFACE.len() {
                            At::H2Frame(0)
                        } else {
                            At::Detect(n + 1)
                        };
                        continue;
                    }
                    // Not h2: an HTTP/1.1 client has spoken. Replay what
                    // looked like a preface to the head scanner.
                    state.greeted.store(true, Ordering::Release);
                    self.at = At::Head;
                    self.feed(&PREFACE[..n], state);
                }
                At::H2Frame(n) => {
                    let take = (9 - n).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if n + take < 9 {
                        self.at = At::H2Frame(n + take);
                        continue;
                    }
                    let len = u64::from(self.buf[0]) << 16
                        | u64::from(self.buf[1]) << 8
                        | u64::from(self.buf[2]);
                    self.buf = Vec::new();
                    self.at = At::H2Payload(len);
                    if len == 0 {
                        self.h2_greeted(state);
                    }
                }
                At::H2Payload(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    if take == left {
                        self.h2_greeted(state);
                    } else {
                        self.at = At::H2Payload(left - take);
                    }
                }
                At::Head | At::Trailers | At::ChunkSize => {
                    // Up to and including the next LF, one line at a time.
                    let end = bytes.iter().position(|&b| b == b'\n');
                    let take = end.map_or(bytes.len(), |i| i + 1);
                    let (line, rest) = bytes.split_at(take);
                    bytes = rest;
                    self.head_bytes(line, state);
                }
                At::Body(left) | At::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    let left = left - take;
                    self.at = match (self.at, left) {
                        (At::Body(_), 0) => self.next_request(),
                        (At::Body(_), l) => At::Body(l),
                        (_, 0) => At::ChunkEnd(0),
                        (_, l) => At::ChunkData(l),
                    };
                }
                At::ChunkEnd(n) => {
                    let want = if n == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != want {
                        self.lost(state);
                        return;
                    }
                    bytes = &bytes[1..];
                    self.at = if n == 0 {
                        At::ChunkEnd(1)
                    } else {
                        At::ChunkSize
                    };
                }
                At::Off => return,
            }
        }
    }

    fn h2_greeted(&mut self, state: &ConnState) {
        state.greeted.store(true, Ordering::Release);
        self.at = At::Off;
        self.buf = Vec::new();
    }

    fn next_request(&mut self) -> At {
        self.request += 1;
        At::Head
    }

    /// The framing could not be followed (hyper will most likely refuse
    /// the same bytes and close): nothing after this point is trusted.
    fn lost(&mut self, state: &ConnState) {
        state.refuse(
            self.request + 1,
            ErrorKind::BadRequestFraming,
            "the previous request's framing could not be followed",
        );
        self.off();
    }

    fn off(&mut self) {
        self.at = At::Off;
        self.buf = Vec::new();
    }

    /// Bytes of a head, trailer section or chunk-size line; `bytes` holds
    /// at most one LF, at its end.
    fn head_bytes(&mut self, bytes: &[u8], state: &ConnState) {
        if bytes.is_empty() {
            return;
        }
        let limit = if self.at == At::ChunkSize {
            MAX_CHUNK_LINE
        } else {
            self.max_head
        };
        if self.buf.len() + bytes.len() > limit {
            // hyper answers 431 (or refuses the chunk) and closes.
            self.lost(state);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if bytes.last() != Some(&b'\n') {
            return;
        }
        // Empty lines before a request line are skipped (RFC 9112 2.2),
        // as hyper does.
        if self.at == At::Head && (self.buf == b"\r\n" || self.buf == b"\n") {
            self.buf.clear();
            return;
        }
        match self.at {
            At::ChunkSize => self.chunk_line(state),
            At::Head | At::Trailers => {
                let b = &self.buf;
                let ended = b.ends_with(b"\n\n")
                    || b.ends_with(b"\n\r\n")
                    || (self.at == At::Trailers && (b == b"\r\n" || b == b"\n"));
                if !ended {
                    return;
                }
                if self.at == At::Trailers {
                    if has_bare_lf(b) {
                        return self.refuse(state, ErrorKind::BadRequestFraming, BARE_LF);
                    }
                    self.buf.clear();
                    self.at = self.next_request();
                    return;
                }
                let head = std::mem::take(&mut self.buf);
                match framing(&head) {
                    Err((kind, message)) => self.refuse(state, kind, message),
                    Ok(Framing::None) => self.at = self.next_request(),
                    Ok(Framing::Length(0)) => self.at = self.next_request(),
                    Ok(Framing::Length(n)) => self.at = At::Body(n),
                    Ok(Framing::Chunked) => self.at = At::ChunkSize,
                    // The protocol may change after this request; the server
                    // closes the connection unless it does (so no further
                    // HTTP/1.1 request follows unscanned).
                    Ok(Framing::Upgrade) => self.off(),
                }
                self.buf = head;
                self.buf.clear();
            }
            _ => {}
        }
    }

    fn refuse(&mut self, state: &ConnState, kind: ErrorKind, message: &'static str) {
        state.refuse(self.request, kind, message);
        self.off();
    }

    fn chunk_line(&mut self, state: &ConnState) {
        let line = std::mem::take(&mut self.buf);
        let Some(body) = line.strip_suffix(b"\r\n") else {
            return self.refuse(state, ErrorKind::BadRequestFraming, BARE_LF);
        };
        let digits = body
            .iter()
            .position(|b| !b.is_ascii_hexdigit())
            .unwrap_or(body.len());
        let rest = &body[digits..];
        let size = std::str::from_utf8(&body[..digits])
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        match size {
            Some(n) if rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t') => {
                self.buf = line;
                self.buf.clear();
                self.at = if n == 0 {
                    At::Trailers
                } else {
                    At::ChunkData(n)
                };
            }
            _ => self.lost(state),
        }
    }
}

const BARE_LF: &str = "a line of the request ends in a bare LF, not CRLF";

/// How a request's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Upgrade,
}

fn has_bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

/// Reads the framing of one complete HTTP/1.1 head, refusing what hyper
/// would resolve silently. Anything else malformed is left to hyper's
/// parser, which refuses it with its own 400.
fn framing(head: &[u8]) -> Result<Framing, (ErrorKind, &'static str)> {
    if has_bare_lf(head) {
        return Err((ErrorKind::BadRequestFraming, BARE_LF));
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.trim_ascii_end());
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    if !target.is_ascii() {
        return Err((
            ErrorKind::BadRequest,
            "the request target holds a byte that is not ASCII (percent-encode it)",
        ));
    }
    let mut lengths = 0;
    let mut length = None;
    let mut chunked = false;
    let mut upgrade = method == b"CONNECT";
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if chunked && lengths > 0 {
        return Err((
            ErrorKind::BadRequestFraming,
            "request has both Transfer-Encoding and Content-Length",
        ));
    }
    if lengths > 1 {
        return Err((
            ErrorKind::BadRequestFraming,
            "request has more than one Content-Length",
        ));
    }
    Ok(if upgrade {
        Framing::Upgrade
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    })
}

#[cfg(test)]
mod tests;
