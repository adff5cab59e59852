//! `ForwardingService.Stream`: the request body goes upstream as the client
//! sends it, the response body comes back as the backend produces it.
//!
//! Memory is bounded by flow control, never by body size: the request frames
//! are a [`Stream`] that hyper's HTTP/2 client polls only when the backend's
//! window has room, and each poll reads one frame of the client's body; the
//! response body (`StreamBody`) asks the backend for the next frame only
//! when hyper asks for the next chunk, i.e. when the client took the last.
//! Nothing is queued in between.
//!
//! Both halves share one `Exchange`: its activity clock (idle timeout), when
//! the request body finished (the response head is due within the route's
//! timeout after that), and the reason to abort if the client's body breaks.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::task::AtomicWaker;
use http::{HeaderMap, Response, StatusCode, header};
use http_body::Frame;
use proto::v1::{
    BodyChunk, ForwardingReq, ForwardingResp, StreamEnd, StreamRequest, StreamResponse,
    stream_request, stream_response,
};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::warn;

use crate::balance::InFlight;
use crate::convert::{ResponseTarget, response_headers, response_status};
use crate::error::{ErrorKind, ForwardError};
use crate::metrics::ByteCount;
use crate::request_id::RequestId;

/// Shared by the request and response halves of one `Stream` exchange.
pub(crate) struct Exchange {
    started: Instant,
    /// Milliseconds after `started` of the last frame either way.
    last_activity_ms: AtomicU64,
    /// Milliseconds after `started` when the request body was complete;
    /// `u64::MAX` while it is still flowing.
    body_done_ms: AtomicU64,
    /// Why the exchange must end (client body broke, body over the limit).
    abort: Mutex<Option<ForwardError>>,
    /// The response half, woken on abort and when the body completes.
    waker: AtomicWaker,
    /// Timing rules.
    pub(crate) limits: StreamLimits,
    /// The request's id, for the warnings logged about the exchange.
    pub(crate) request_id: Option<RequestId>,
}

/// The clocks of one `Stream` exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// The response head is due this long after the request body is complete.
    pub head_timeout: Duration,
    /// Ended when nothing flows either way for this long.
    pub idle: Duration,
    /// Ended at this instant whatever flows.
    pub max_deadline: Instant,
}

impl Exchange {
    pub(crate) fn new(
        started: Instant,
        limits: StreamLimits,
        request_id: Option<RequestId>,
    ) -> Arc<Self> {
        Arc::new(Self {
            started,
            last_activity_ms: AtomicU64::new(0),
            body_done_ms: AtomicU64::new(u64::MAX),
            abort: Mutex::new(None),
            waker: AtomicWaker::new(),
            limits,
            request_id,
        })
    }

    /// The request id as a log field.
    pub(crate) fn rid(&self) -> Option<&str> {
        self.request_id.as_ref().map(RequestId::as_str)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records that a frame went one way or the other.
    pub(crate) fn touch(&self) {
        self.last_activity_ms
            .fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// When the request body was complete, if it is.
    pub(crate) fn body_done_at(&self) -> Option<Instant> {
        match self.body_done_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(self.started + Duration::from_millis(ms)),
        }
    }

    /// Marks the request as complete (no body to stream).
    pub(crate) fn request_complete(&self) {
        self.body_done();
    }

    fn body_done(&self) {
        self.body_done_ms.store(self.now_ms(), Ordering::Relaxed);
        self.touch();
        self.waker.wake();
    }

    /// Ends the exchange early; the response half reports `e`.
    pub(crate) fn fail(&self, e: ForwardError) {
        if let Ok(mut a) = self.abort.lock()
            && a.is_none()
        {
            *a = Some(e);
        }
        self.waker.wake();
    }

    pub(crate) fn take_abort(&self) -> Option<ForwardError> {
        self.abort.lock().ok().and_then(|mut a| a.take())
    }

    /// The next instant a clock runs out, and the error it means.
    fn next_deadline(&self, head_due: bool) -> (Instant, ForwardError) {
        let l = &self.limits;
        let mut at = l.max_deadline;
        let mut why = ForwardError::new(
            ErrorKind::UpstreamTimeout,
            "the stream reached the route's maximum duration",
        );
        let idle_at = self.started
            + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
            + l.idle;
        if idle_at < at {
            at = idle_at;
            why = ForwardError::new(
                ErrorKind::UpstreamTimeout,
                format!("nothing flowed on the stream for {:?}", l.idle),
            );
        }
        let done = self.body_done_ms.load(Ordering::Relaxed);
        if head_due && done != u64::MAX {
            let head_at = self.started + Duration::from_millis(done) + l.head_timeout;
            if head_at < at {
                at = head_at;
                why = ForwardError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "the backend did not answer within {:?} of the request body",
                        l.head_timeout
                    ),
                );
            }
        }
        (at, why)
    }

    /// Polls the clocks and the abort flag; `Ready(err)` ends the exchange.
    fn poll_end(
        &self,
        timer: &mut Pin<Box<Sleep>>,
        head_due: bool,
        cx: &mut Context<'_>,
    ) -> Poll<ForwardError> {
        self.waker.register(cx.waker());
        if let Some(e) = self.take_abort() {
            return Poll::Ready(e);
        }
        loop {
            let (at, why) = self.next_deadline(head_due);
            if Instant::now() >= at {
                return Poll::Ready(why);
            }
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Resolves when the exchange must end before the response head came.
    pub(crate) async fn ended_before_head(&self) -> ForwardError {
        self.ended(true).await
    }

    /// Resolves when the exchange must end once the head was answered.
    pub(crate) async fn ended_after_head(&self) -> ForwardError {
        self.ended(false).await
    }

    async fn ended(&self, head_due: bool) -> ForwardError {
        let mut timer = Box::pin(tokio::time::sleep_until(self.limits.max_deadline));
        std::future::poll_fn(|cx| self.poll_end(&mut timer, head_due, cx)).await
    }
}

/// The client's body, handed to whichever attempt reads it first. A
/// connection refused before anything was read leaves it here, so the next
/// instance can be tried; once taken, the request is never retried.
pub(crate) struct BodySlot<B>(Mutex<Option<B>>);

impl<B> BodySlot<B> {
    pub(crate) fn new(body: B) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Some(body))))
    }

    fn take(&self) -> Option<B> {
        self.0.lock().ok().and_then(|mut b| b.take())
    }

    /// Whether no attempt has started reading the body.
    pub(crate) fn untouched(&self) -> bool {
        self.0.lock().map(|b| b.is_some()).unwrap_or(false)
    }
}

/// The request frames of one attempt: head, body chunks, end.
pub(crate) struct RequestFrames<B> {
    head: Option<ForwardingReq>,
    slot: Arc<BodySlot<B>>,
    body: Option<Pin<Box<B>>>,
    ended: bool,
    /// The body broke or grew too large: the call must be cancelled, so
    /// this stream never ends (ending would half-close, which a backend
    /// could take for a complete body).
    aborted: bool,
    sent: u64,
    /// Most body bytes streamed; 0 = no limit.
    max: u64,
    ex: Arc<Exchange>,
    /// `gateway_request_body_bytes_total` (a no-op when metrics are off).
    bytes: ByteCount,
}

impl<B> RequestFrames<B> {
    pub(crate) fn new(
        head: ForwardingReq,
        slot: Arc<BodySlot<B>>,
        max: u64,
        ex: Arc<Exchange>,
    ) -> Self {
        Self {
            head: Some(head),
            slot,
            body: None,
            ended: false,
            aborted: false,
            sent: 0,
            max,
            ex,
            bytes: ByteCount::default(),
        }
    }

    /// Counts the body's chunks in `bytes` as they go upstream.
    pub(crate) fn counting(mut self, bytes: ByteCount) -> Self {
        self.bytes = bytes;
        self
    }
}

fn frame(f: stream_request::Frame) -> StreamRequest {
    StreamRequest { frame: Some(f) }
}

impl<B> Stream for RequestFrames<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = StreamRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        let this = &mut *self;
        if let Some(h) = this.head.take() {
            return Poll::Ready(Some(frame(stream_request::Frame::Head(h))));
        }
        if this.aborted {
            return Poll::Pending;
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if this.body.is_none() {
            match this.slot.take() {
                Some(b) => this.body = Some(Box::pin(b)),
                None => {
                    // Another attempt has it: this one must not send a body.
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    this.ex.body_done();
                    let end = StreamEnd { trailers: vec![] };
                    return Poll::Ready(Some(frame(stream_request::Frame::End(end))));
                }
                Poll::Ready(Some(Err(e))) => {
                    // The client's body broke (it went away, or sent bad
                    // chunking): the backend must not take a truncated body
                    // for a whole one, so the call is cancelled, never ended.
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    this.ex.fail(ForwardError::new(
                        ErrorKind::ClientBody,
                        format!("request body could not be read: {e}"),
                    ));
                    this.aborted = true;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(f))) => {
                    let f = match f.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => {
                            this.sent += data.len() as u64;
                            if this.max > 0 && this.sent > this.max {
                                this.ex.fail(ForwardError::new(
                                    ErrorKind::BodyTooLarge,
                                    format!("request body is larger than {} bytes", this.max),
                                ));
                                this.aborted = true;
                                return Poll::Pending;
                            }
                            this.ex.touch();
                            this.bytes.add(data.len());
                            return Poll::Ready(Some(frame(stream_request::Frame::Body(
                                BodyChunk { data },
                            ))));
                        }
                        Err(f) => f,
                    };
                    if let Ok(trailers) = f.into_trailers() {
                        this.ended = true;
                        this.ex.body_done();
                        let end = StreamEnd {
                            trailers: proto::convert::headers_to_wire(&trailers),
                        };
                        return Poll::Ready(Some(frame(stream_request::Frame::End(end))));
                    }
                }
            }
        }
    }
}

/// Checks a response head and turns it into the HTTP response head. The
/// status must be final (101 only for an accepted WebSocket, handled by the
/// caller); trailers belong in `end`.
pub(crate) fn response_head(
    head: ForwardingResp,
    target: ResponseTarget,
) -> Result<(StatusCode, HeaderMap, Bytes), ForwardError> {
    let invalid = |m: String| ForwardError::new(ErrorKind::UpstreamInvalidResponse, m);
    if !head.trailers.is_empty() {
        return Err(invalid(
            "response head carries trailers; send them in the end frame".into(),
        ));
    }
    let status = response_status(head.status)?;
    let mut headers =
        response_headers(&head.headers).map_err(|e| invalid(format!("response {e}")))?;
    // hyper sends HTTP/1.1 trailers only for names announced in `Trailer`:
    // the backend announces them (it knows them before the body); a client
    // that cannot take trailers gets neither.
    if target.trailers
        && let Some(t) = header_trailer(&head.headers)
    {
        headers.insert(header::TRAILER, t);
    }
    Ok((status, headers, head.body))
}

fn header_trailer(list: &[proto::v1::Header]) -> Option<http::HeaderValue> {
    let names: Vec<&str> = list
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("trailer"))
        .filter_map(|h| std::str::from_utf8(&h.value).ok())
        .collect();
    if names.is_empty() {
        return None;
    }
    http::HeaderValue::from_str(&names.join(", ")).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Body chunks flow.
    Body,
    /// `end` came; waiting for the call's status before the trailers go out.
    Closing,
    Done,
}

/// The response body of a `Stream` exchange (see the module docs).
pub(crate) struct StreamBody {
    first: Option<Bytes>,
    inner: tonic::Streaming<StreamResponse>,
    ex: Arc<Exchange>,
    timer: Pin<Box<Sleep>>,
    trailers: Option<HeaderMap>,
    send_trailers: bool,
    phase: Phase,
    /// Server-sent events end cleanly when the gateway drains (clients
    /// reconnect elsewhere, which is what `EventSource` does anyway); other
    /// bodies run until the drain grace is over.
    drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    service: Arc<str>,
    _in_flight: InFlight,
    /// `gateway_response_body_bytes_total` (a no-op when metrics are off).
    bytes: ByteCount,
}

impl StreamBody {
    pub(crate) fn new(
        first: Bytes,
        inner: tonic::Streaming<StreamResponse>,
        ex: Arc<Exchange>,
        target: ResponseTarget,
        drain: Option<WaitForCancellationFutureOwned>,
        service: Arc<str>,
        in_flight: InFlight,
    ) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            inner,
            timer: Box::pin(tokio::time::sleep_until(ex.limits.max_deadline)),
            ex,
            trailers: None,
            send_trailers: target.trailers && !target.head_request,
            phase: Phase::Body,
            drain: drain.map(Box::pin),
            service,
            _in_flight: in_flight,
            bytes: ByteCount::default(),
        }
    }

    /// Counts the body's chunks in `bytes` as they go to the client.
    pub(crate) fn counting(mut self, bytes: ByteCount) -> Self {
        self.bytes = bytes;
        self
    }

    fn fail(&mut self, e: ForwardError) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(StreamAborted(e))))
    }
}

/// Why a streamed response was cut: hyper then closes the HTTP/1.1
/// connection without the last chunk, or resets the HTTP/2 stream.
#[derive(Debug, thiserror::Error)]
#[error("response stream aborted: {0}")]
pub struct StreamAborted(ForwardError);

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        let this = &mut *self;
        if this.phase == Phase::Done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(e) = this.ex.poll_end(&mut this.timer, false, cx) {
            warn!(service = %this.service, request_id = this.ex.rid(), error = %e, "Streamed response aborted.");
            return this.fail(e);
        }
        if let Some(b) = this.first.take() {
            this.bytes.add(b.len());
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(d) = this.drain.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.phase = Phase::Done;
            return Poll::Ready(None);
        }
        loop {
            let next = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(n) => n,
            };
            let f = match next {
                None => {
                    // The call finished OK: the body is complete.
                    this.phase = Phase::Done;
                    return match this.trailers.take() {
                        Some(t) if this.send_trailers && !t.is_empty() => {
                            Poll::Ready(Some(Ok(Frame::trailers(t))))
                        }
                        _ => Poll::Ready(None),
                    };
                }
                Some(Err(status)) => {
                    let e = ForwardError::new(
                        ErrorKind::UpstreamFailed,
                        format!(
                            "service {} failed mid-stream: gRPC {:?}: {}",
                            this.service,
                            status.code(),
                            status.message()
                        ),
                    );
                    warn!(service = %this.service, request_id = this.ex.rid(), code = ?status.code(), message = status.message(), "Backend failed mid-stream; aborting the response.");
                    return this.fail(e);
                }
                Some(Ok(f)) => f,
            };
            this.ex.touch();
            let invalid = |what: &str| {
                ForwardError::new(
                    ErrorKind::UpstreamInvalidResponse,
                    format!("malformed stream from the backend: {what}"),
                )
            };
            match (this.phase, f.frame) {
                (Phase::Body, Some(stream_response::Frame::Body(c))) => {
                    if !c.data.is_empty() {
                        this.bytes.add(c.data.len());
                        return Poll::Ready(Some(Ok(Frame::data(c.data))));
                    }
                }
                (Phase::Body, Some(stream_response::Frame::End(end))) => {
                    match crate::convert::response_trailers(&end.trailers) {
                        Ok(t) => this.trailers = Some(t),
                        Err(e) => {
                            let e = invalid(&format!("response trailer {e}"));
                            warn!(service = %this.service, request_id = this.ex.rid(), error = %e, "Streamed response aborted.");
                            return this.fail(e);
                        }
                    }
                    this.phase = Phase::Closing;
                }
                (_, other) => {
                    let what = match other {
                        Some(stream_response::Frame::Head(_)) => "a second head",
                        Some(stream_response::Frame::Body(_)) => "a body chunk after end",
                        Some(stream_response::Frame::End(_)) => "a second end",
                        Some(stream_response::Frame::Message(_))
                        | Some(stream_response::Frame::Close(_)) => {
                            "a WebSocket frame on an HTTP exchange"
                        }
                        None => "a frame of unknown kind",
                    };
                    let e = invalid(what);
                    warn!(service = %this.service, request_id = this.ex.rid(), error = %e, "Streamed response aborted.");
                    return this.fail(e);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// Builds the client's response for a streamed answer.
pub(crate) fn build_response(
    status: StatusCode,
    headers: HeaderMap,
    body: StreamBody,
) -> Response<Body> {
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Whether a response is a server-sent event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    crate::convert::has_token(headers, header::CONTENT_TYPE, "text/event-stream")
}

#[cfg(test)]
mod tests;
