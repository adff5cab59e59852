//! A call's bodies on an h2 stream: the request body handed to h2 as it
//! comes (inline while it is ready, then by one pump task for a streaming
//! call), and h2's `RecvStream` as the `http_body::Body` tonic decodes.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::FutureExt;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body as _, Frame};
use tokio::sync::oneshot;
use tonic::body::Body;

/// Headers HTTP/2 forbids (RFC 9113 8.2.2); h2 refuses a request with any.
pub(super) fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        if headers.contains_key(&name) {
            headers.remove(&name);
        }
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

/// Hands h2 every frame of `body` that is ready now (h2 buffers what the
/// flow-control window does not take yet). `Ok(true)`: the body is
/// complete and the stream's send side ended; `Ok(false)`: more is to
/// come. A data frame is held back one poll, so that the last one carries
/// `END_STREAM` (no empty frame after it).
pub(super) async fn send_ready(
    body: &mut Body,
    stream: &mut SendStream<Bytes>,
) -> Result<bool, SendError> {
    std::future::poll_fn(|cx| {
        let mut held: Option<Bytes> = None;
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(prev) = held.replace(data) {
                            stream.send_data(prev, false)?;
                        }
                    }
                    Err(frame) => {
                        if let Some(prev) = held.take() {
                            stream.send_data(prev, false)?;
                        }
                        if let Ok(trailers) = frame.into_trailers() {
                            stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(true));
                        }
                    }
                },
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Err(SendError::Body(status))),
                Poll::Ready(None) => {
                    stream.send_data(held.take().unwrap_or_default(), true)?;
                    return Poll::Ready(Ok(true));
                }
                Poll::Pending => {
                    if let Some(prev) = held.take() {
                        stream.send_data(prev, false)?;
                    }
                    return Poll::Ready(Ok(false));
                }
            }
        }
    })
    .await
}

/// Why a request body could not be handed to h2.
pub(super) enum SendError {
    /// The body failed: the call fails with its error.
    Body(tonic::Status),
    /// The stream would not take it (reset, connection gone): the response
    /// future says why.
    Stream,
}

impl From<h2::Error> for SendError {
    fn from(_: h2::Error) -> Self {
        SendError::Stream
    }
}

/// The rest of a streaming request body, on a task of its own, with h2's
/// flow control as back-pressure. Dropping the returned sender (the
/// response future or body went away) resets the stream with `CANCEL`.
pub(super) fn spawn_pump(body: Body, stream: SendStream<Bytes>) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(Pump {
        body,
        stream,
        cancel: rx,
    });
    tx
}

struct Pump {
    body: Body,
    stream: SendStream<Bytes>,
    cancel: oneshot::Receiver<()>,
}

impl Pump {
    /// `Ok(())`: the body is sent in full; `Err(reason)`: reset with it
    /// (`None`: the stream is gone already).
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Option<h2::Reason>>> {
        if self.cancel.poll_unpin(cx).is_ready() {
            return Poll::Ready(Err(Some(h2::Reason::CANCEL)));
        }
        loop {
            self.stream.reserve_capacity(1);
            if self.stream.capacity() == 0 {
                loop {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(Err(None)),
                    }
                }
            } else if self.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(None));
            }
            let sent = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        self.stream.send_data(data, end).map(|()| end)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => self.stream.send_trailers(trailers).map(|()| true),
                        Err(_) => Ok(false),
                    },
                },
                Some(Err(_)) => return Poll::Ready(Err(Some(h2::Reason::CANCEL))),
                None => self.stream.send_data(Bytes::new(), true).map(|()| true),
            };
            match sent {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(_) => return Poll::Ready(Err(None)),
            }
        }
    }
}

impl std::future::Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Err(Some(reason)) = ready!(this.poll_pump(cx)) {
            this.stream.send_reset(reason);
        }
        Poll::Ready(())
    }
}

/// h2's response body as an `http_body::Body`: data (its flow-control
/// capacity released as each chunk is taken), then the trailers. Dropped
/// before its end, it resets the stream with `CANCEL` (h2 does when the
/// last handle of an open stream goes; the pump's is dropped with it).
#[derive(Debug)]
pub struct UpstreamBody {
    recv: RecvStream,
    data_done: bool,
    /// Keeps the request body's pump going; dropped, it cancels it.
    _pump: Option<oneshot::Sender<()>>,
}

impl UpstreamBody {
    pub(super) fn new(recv: RecvStream, pump: Option<oneshot::Sender<()>>) -> Self {
        Self {
            recv,
            data_done: false,
            _pump: pump,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
