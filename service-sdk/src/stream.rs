//! `ForwardingService.Stream`: one HTTP exchange (or one WebSocket) as a
//! stream of frames.
//!
//! Everything of one call - the handler's future, its response body, a
//! WebSocket callback and the reader of the gateway's frames - is driven from
//! inside the response stream handed to tonic ([`CallStream`]), never from a
//! spawned task. So when the gateway cancels the call, tonic drops that
//! stream and with it the handler, at once; and the handler only runs while
//! tonic asks for frames, so a slow gateway slows it (HTTP/2 flow control,
//! plus channels of [`CHANNEL_FRAMES`] frames in between).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use proto::convert::{headers_from_wire, headers_to_wire};
use proto::v1 as pb;
use proto::v1::stream_request::Frame as In;
use proto::v1::stream_response::Frame as Out;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::ws;
use crate::{Handler, Request, Response};

/// Frames buffered between the gateway's stream and the handler, each way.
/// Small on purpose: backpressure, not buffering.
pub(crate) const CHANNEL_FRAMES: usize = 2;

fn invalid(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed Stream: {what}"))
}

fn kind(frame: &In) -> &'static str {
    match frame {
        In::Head(_) => "head",
        In::Body(_) => "body",
        In::End(_) => "end",
        In::Message(_) => "message",
        In::Close(_) => "close",
    }
}

// ---------------------------------------------------------------------------
// Request bodies.

/// A complete request body (from `Send`): the bytes, then the trailers.
pub(crate) struct BufferedBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl BufferedBody {
    pub(crate) fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl http_body::Body for BufferedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// What the reader hands to a streamed request body.
enum Piece {
    Data(Bytes),
    /// The `end` frame arrived; its trailers (possibly none).
    End(HeaderMap),
}

/// A request body fed by the `body` frames of a `Stream` call and finished by
/// its `end` frame. If the call goes away before `end`, reading fails: a
/// truncated body never looks complete.
pub(crate) struct StreamedBody {
    rx: mpsc::Receiver<Piece>,
    done: bool,
}

/// Why a streamed request body could not be read to its end.
#[derive(Debug)]
pub(crate) struct BodyCutOff;

impl std::fmt::Display for BodyCutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was cut off: the exchange ended before its `end` frame")
    }
}

impl std::error::Error for BodyCutOff {}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = BodyCutOff;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCutOff>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Piece::Data(d))) => Poll::Ready(Some(Ok(Frame::data(d)))),
            Poll::Ready(Some(Piece::End(trailers))) => {
                self.done = true;
                if trailers.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(BodyCutOff)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

// ---------------------------------------------------------------------------
// The response stream handed to tonic.

type Driver = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// The response of one `Stream` call: polls the call's driver, then yields
/// the frames it produced, then its final status.
pub(crate) struct CallStream {
    driver: Option<Driver>,
    rx: mpsc::Receiver<pb::StreamResponse>,
    status: Option<Status>,
}

impl CallStream {
    pub(crate) fn new<H: Handler>(handler: Arc<H>, inbound: Streaming<pb::StreamRequest>) -> Self {
        let (out, rx) = mpsc::channel(CHANNEL_FRAMES);
        Self {
            driver: Some(Box::pin(drive(handler, inbound, out))),
            rx,
            status: None,
        }
    }
}

impl Stream for CallStream {
    type Item = Result<pb::StreamResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(driver) = this.driver.as_mut()
            && let Poll::Ready(result) = driver.as_mut().poll(cx)
        {
            // Drops the handler, the reader and every sender they held; a
            // WebSocket callback still running (after it sent a close) can
            // no longer send.
            this.driver = None;
            this.status = result.err();
            this.rx.close();
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(this.status.take().map(Err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sends one frame to the gateway; fails when the call is over.
pub(crate) async fn send_frame(
    out: &mpsc::Sender<pb::StreamResponse>,
    frame: Out,
) -> Result<(), Status> {
    out.send(pb::StreamResponse { frame: Some(frame) })
        .await
        .map_err(|_| Status::cancelled("the call ended"))
}

async fn drive<H: Handler>(
    handler: Arc<H>,
    mut inbound: Streaming<pb::StreamRequest>,
    out: mpsc::Sender<pb::StreamResponse>,
) -> Result<(), Status> {
    let head = match inbound.message().await? {
        None => return Err(invalid("the request stream ended before its `head` frame")),
        Some(pb::StreamRequest {
            frame: Some(In::Head(head)),
        }) => head,
        Some(pb::StreamRequest { frame: Some(other) }) => {
            return Err(invalid(format!(
                "the first frame must be `head`, got `{}`",
                kind(&other)
            )));
        }
        Some(pb::StreamRequest { frame: None }) => {
            return Err(invalid(
                "the first frame must be `head`, got a frame of an unknown kind",
            ));
        }
    };
    let websocket = match head.upgrade.as_str() {
        "" => false,
        "websocket" => true,
        other => return Err(invalid(format!("unsupported upgrade {other:?} in `head`"))),
    };
    if !head.trailers.is_empty() {
        return Err(invalid("trailers in `head` (they belong in `end`)"));
    }
    let (mut req, first_bytes, _) = crate::split_wire_request(head).map_err(invalid)?;

    if websocket {
        if !first_bytes.is_empty() {
            return Err(invalid("a body in the `head` of a WebSocket upgrade"));
        }
        req.extensions_mut().insert(ws::UpgradeRequested);
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let req = req.map(|()| axum::body::Body::empty());
        both(
            read_websocket(inbound, tx),
            respond(handler, req, out, Some(rx)),
        )
        .await
    } else {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        if !first_bytes.is_empty() {
            // A fresh channel has room; the head's body is the first chunk.
            let _ = tx.try_send(Piece::Data(first_bytes));
        }
        let req = req.map(|()| axum::body::Body::new(StreamedBody { rx, done: false }));
        both(read_body(inbound, tx), respond(handler, req, out, None)).await
    }
}

/// Runs the reader of the gateway's frames next to the responder. The call
/// ends when the responder is done, or at once when the reader finds the
/// stream malformed (or broken).
async fn both(
    reader: impl Future<Output = Result<(), Status>>,
    responder: impl Future<Output = Result<(), Status>>,
) -> Result<(), Status> {
    tokio::pin!(reader, responder);
    let mut reader_done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut reader, if !reader_done => match r {
                Ok(()) => reader_done = true,
                Err(status) => return Err(status),
            },
            r = &mut responder => return r,
        }
    }
}

/// Reads `body` chunks and `end` into the request body, then waits for the
/// half-close, checking the order of frames all along. Chunks the handler
/// no longer wants (it dropped the body) are read and discarded.
async fn read_body(
    mut inbound: Streaming<pb::StreamRequest>,
    tx: mpsc::Sender<Piece>,
) -> Result<(), Status> {
    let mut tx = Some(tx);
    loop {
        let frame = match inbound.message().await? {
            Some(pb::StreamRequest { frame }) => frame,
            None if tx.is_some() => {
                return Err(invalid(
                    "the request stream was half-closed before its `end` frame",
                ));
            }
            None => return Ok(()),
        };
        match frame {
            Some(In::Body(chunk)) => {
                let Some(t) = &tx else {
                    return Err(invalid("a `body` frame after `end`"));
                };
                if !chunk.data.is_empty() {
                    // Err: the handler dropped the body; keep draining.
                    let _ = t.send(Piece::Data(chunk.data)).await;
                }
            }
            Some(In::End(end)) => {
                let Some(t) = tx.take() else {
                    return Err(invalid("a second `end` frame"));
                };
                let trailers = headers_from_wire(&end.trailers)
                    .map_err(|e| invalid(format!("request trailers: {e}")))?;
                let _ = t.send(Piece::End(trailers)).await;
            }
            Some(In::Head(_)) => return Err(invalid("a second `head` frame")),
            Some(other @ (In::Message(_) | In::Close(_))) => {
                return Err(invalid(format!(
                    "a `{}` frame in an exchange that is not a WebSocket",
                    kind(&other)
                )));
            }
            None => return Err(invalid("a frame of an unknown kind")),
        }
    }
}

/// Reads `message` frames and the `close` frame of a WebSocket exchange into
/// the socket. After `close` (or the half-close) the socket's `recv` ends.
async fn read_websocket(
    mut inbound: Streaming<pb::StreamRequest>,
    tx: mpsc::Sender<ws::Message>,
) -> Result<(), Status> {
    let mut tx = Some(tx);
    loop {
        let frame = match inbound.message().await? {
            Some(pb::StreamRequest { frame }) => frame,
            None => return Ok(()),
        };
        match frame {
            Some(In::Message(m)) => {
                let Some(t) = &tx else {
                    return Err(invalid("a WebSocket `message` frame after `close`"));
                };
                let msg = match m.data {
                    Some(pb::web_socket_message::Data::Text(s)) => ws::Message::Text(s),
                    Some(pb::web_socket_message::Data::Binary(b)) => ws::Message::Binary(b),
                    None => return Err(invalid("a WebSocket message of an unknown kind")),
                };
                // Err: the upgrade was refused or the socket dropped; discard.
                let _ = t.send(msg).await;
            }
            Some(In::Close(c)) => {
                let Some(t) = tx.take() else {
                    return Err(invalid("a second WebSocket `close` frame"));
                };
                let frame = (c.code != 0).then(|| ws::CloseFrame {
                    code: u16::try_from(c.code).unwrap_or(u16::MAX),
                    reason: c.reason,
                });
                let _ = t.send(ws::Message::Close(frame)).await;
            }
            Some(In::Head(_)) => return Err(invalid("a second `head` frame")),
            Some(other @ (In::Body(_) | In::End(_))) => {
                return Err(invalid(format!(
                    "a `{}` frame in a WebSocket exchange",
                    kind(&other)
                )));
            }
            None => return Err(invalid("a frame of an unknown kind")),
        }
    }
}

/// Runs the handler and sends its answer: `head`, then the body chunks as
/// they are produced, then `end` with the trailers; or, for an accepted
/// WebSocket upgrade, `head` (101) and the socket's messages.
async fn respond<H: Handler>(
    handler: Arc<H>,
    req: Request,
    out: mpsc::Sender<pb::StreamResponse>,
    websocket: Option<mpsc::Receiver<ws::Message>>,
) -> Result<(), Status> {
    let resp: Response = crate::handle(&*handler, req).await;
    let (mut parts, body) = resp.into_parts();
    let accepted = websocket.is_some() && parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let callback = if accepted {
        parts.extensions.remove::<ws::OnUpgrade>()
    } else {
        None
    };
    send_frame(
        &out,
        Out::Head(pb::ForwardingResp {
            status: u32::from(parts.status.as_u16()),
            headers: headers_to_wire(&parts.headers),
            body: Bytes::new(),
            trailers: vec![],
        }),
    )
    .await?;
    if accepted {
        let (Some(callback), Some(incoming)) = (callback, websocket) else {
            // A 101 not made by `WebSocketUpgrade::on_upgrade`: nobody to
            // talk to; finishing OK closes the socket with 1000.
            return Ok(());
        };
        let protocol = parts
            .headers
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .cloned();
        return ws::run(callback, incoming, out, protocol).await;
    }

    let mut body = std::pin::pin!(body);
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Status::internal(format!("the response body failed: {e}")))?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send_frame(&out, Out::Body(pb::BodyChunk { data })).await?;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    // `extend` would replace same-name fields; keep them all.
                    for (name, value) in t.iter() {
                        trailers.append(name.clone(), value.clone());
                    }
                }
            }
        }
    }
    send_frame(
        &out,
        Out::End(pb::StreamEnd {
            trailers: headers_to_wire(&trailers),
        }),
    )
    .await
}
