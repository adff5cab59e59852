//! WebSocket through the gateway, with the shape of `axum::extract::ws`.
//!
//! The gateway terminates the WebSocket protocol with the client (handshake,
//! framing, masking, fragmentation, ping/pong, the closing handshake) and
//! forwards whole messages over `ForwardingService.Stream`. A handler takes
//! a [`WebSocketUpgrade`] and answers with [`WebSocketUpgrade::on_upgrade`];
//! once the SDK has sent the `101` head, the callback runs with a
//! [`WebSocket`]:
//!
//! ```no_run
//! use service_sdk::routing::get;
//! use service_sdk::ws::{Message, WebSocket, WebSocketUpgrade};
//!
//! async fn echo(mut socket: WebSocket) {
//!     while let Some(Ok(msg)) = socket.recv().await {
//!         match msg {
//!             Message::Text(_) | Message::Binary(_) => {
//!                 if socket.send(msg).await.is_err() {
//!                     return;
//!                 }
//!             }
//!             Message::Close(_) => return,
//!             Message::Ping(_) | Message::Pong(_) => {}
//!         }
//!     }
//! }
//!
//! let app: service_sdk::Router = service_sdk::Router::new().route(
//!     "/chat/ws",
//!     get(|ws: WebSocketUpgrade| async move { ws.protocols(["chat.v1"]).on_upgrade(echo) }),
//! );
//! ```
//!
//! Ending the exchange:
//! * the client closes: [`WebSocket::recv`] yields [`Message::Close`] (with
//!   the client's code, `None` when it sent none), then `None`; the exchange
//!   ends when the callback returns.
//! * the callback sends [`Message::Close`]: the gateway closes the client's
//!   socket with that code and the call ends at once (if the callback goes
//!   on after that, it runs on its own task; its `send`s fail and `recv`
//!   yields `None`).
//! * the callback returns: the gateway closes the client's socket with 1000.
//! * the client goes away: the callback is dropped.
//!
//! The gateway answers pings itself, so [`Message::Ping`] and
//! [`Message::Pong`] are never received, and sending them does nothing; they
//! exist so code written for axum compiles unchanged.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Sink, SinkExt, Stream};
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use proto::v1 as pb;
use proto::v1::stream_response::Frame as Out;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::Response;

/// Request extension set when the gateway's `head` asked for a WebSocket
/// upgrade (`upgrade == "websocket"`); only the SDK can set it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpgradeRequested;

type Callback = Box<dyn FnOnce(WebSocket) -> BoxFuture<'static, ()> + Send>;

/// Response extension carrying the `on_upgrade` callback to the SDK.
#[derive(Clone)]
pub(crate) struct OnUpgrade(Arc<Mutex<Option<Callback>>>);

impl OnUpgrade {
    fn take(&self) -> Option<Callback> {
        self.0.lock().map(|mut c| c.take()).unwrap_or(None)
    }
}

/// The reason of a close frame may be at most 123 bytes (RFC 6455 5.5).
const MAX_REASON: usize = 123;

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// Never received (the gateway answers pings); ignored when sent.
    Ping(Bytes),
    /// Never received; ignored when sent.
    Pong(Bytes),
    /// A close: received when the client closed (`None`: it sent no code);
    /// sent to close the client's socket.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<String>) -> Self {
        Self::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::Binary(b.into())
    }

    /// The payload as bytes (the reason of a close).
    pub fn into_data(self) -> Bytes {
        match self {
            Self::Text(s) => Bytes::from(s),
            Self::Binary(b) | Self::Ping(b) | Self::Pong(b) => b,
            Self::Close(None) => Bytes::new(),
            Self::Close(Some(f)) => Bytes::from(f.reason),
        }
    }

    /// The payload as text, if it is UTF-8.
    pub fn to_text(&self) -> Result<&str, std::str::Utf8Error> {
        match self {
            Self::Text(s) => Ok(s),
            Self::Binary(b) | Self::Ping(b) | Self::Pong(b) => std::str::from_utf8(b),
            Self::Close(None) => Ok(""),
            Self::Close(Some(f)) => Ok(&f.reason),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b.into())
    }
}

/// The code and reason of a close (RFC 6455 section 7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Close code, 1000-4999 (e.g. 1000 normal, 1001 going away, 4000-4999
    /// private use).
    pub code: u16,
    /// Reason; at most 123 bytes are sent (cut at a character boundary).
    pub reason: String,
}

/// A failed WebSocket operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket is closed: a close was sent or received, or the exchange
    /// ended (the client went away).
    #[error("the WebSocket is closed")]
    Closed,
}

/// Extractor for a WebSocket upgrade request; answer with
/// [`on_upgrade`](Self::on_upgrade).
///
/// Succeeds only on requests the gateway forwarded as a WebSocket upgrade
/// (over `Stream`, with `upgrade = "websocket"`); any other request is
/// rejected with [`WebSocketUpgradeRejection`] (426 Upgrade Required).
#[derive(Debug)]
pub struct WebSocketUpgrade {
    offered: Vec<String>,
    protocol: Option<HeaderValue>,
}

impl WebSocketUpgrade {
    /// Chooses the subprotocol: the first of `protocols` (in the order
    /// given) that the client offered in `sec-websocket-protocol`. None is
    /// chosen when the client offered none of them.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Cow<'static, str>>,
    {
        self.protocol = protocols
            .into_iter()
            .map(Into::into)
            .find(|p| self.offered.iter().any(|o| o == p))
            .and_then(|p| HeaderValue::from_str(&p).ok());
        self
    }

    /// The subprotocols the client offered, in its order.
    pub fn requested_protocols(&self) -> impl Iterator<Item = &str> {
        self.offered.iter().map(String::as_str)
    }

    /// The chosen subprotocol, if any.
    pub fn selected_protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// Accepts the upgrade: returns the `101 Switching Protocols` response
    /// (naming the chosen subprotocol, if any). After the SDK has sent it to
    /// the gateway, `callback` runs with the socket; the exchange ends when
    /// it returns or sends [`Message::Close`].
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let callback: Callback = Box::new(move |socket| Box::pin(callback(socket)));
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        if let Some(p) = self.protocol {
            resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
        }
        resp.extensions_mut()
            .insert(OnUpgrade(Arc::new(Mutex::new(Some(callback)))));
        resp
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        if parts.extensions.get::<UpgradeRequested>().is_none() {
            return Err(WebSocketUpgradeRejection);
        }
        let offered = parts
            .headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            offered,
            protocol: None,
        })
    }
}

/// The request is not a WebSocket upgrade: answered with 426 Upgrade
/// Required and a text message.
#[derive(Debug, Clone, Copy)]
pub struct WebSocketUpgradeRejection;

impl std::fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this endpoint speaks WebSocket only: send a WebSocket upgrade request")
    }
}

impl std::error::Error for WebSocketUpgradeRejection {}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> axum::response::Response {
        let mut resp = Response::new(Body::from(format!("{self}\n")));
        *resp.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        resp
    }
}

/// An accepted WebSocket: whole messages to and from the client.
///
/// Also a [`Stream`] of received messages and a [`Sink`] of messages to
/// send, so `futures_util::StreamExt::split` works.
pub struct WebSocket {
    incoming: mpsc::Receiver<Message>,
    outgoing: PollSender<pb::StreamResponse>,
    protocol: Option<HeaderValue>,
    /// Fired once a close has been sent: the call may end.
    on_close_sent: Option<oneshot::Sender<()>>,
    /// The client's close (or the end of its side) was received.
    received_close: bool,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("protocol", &self.protocol)
            .field("received_close", &self.received_close)
            .field("sent_close", &self.sent_close())
            .finish_non_exhaustive()
    }
}

impl WebSocket {
    /// The next message from the client: [`Message::Text`],
    /// [`Message::Binary`], or [`Message::Close`] when the client closed.
    /// `None` once the client has closed (after its `Close`), once a close
    /// has been sent, or when the exchange is over.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends a message. Waits while the gateway (or the client behind it)
    /// is slow to take messages: backpressure. Sending [`Message::Close`]
    /// closes the client's socket with its code (a close without code when
    /// `None`) and ends the exchange; after it every send fails with
    /// [`Error::Closed`].
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        SinkExt::send(self, msg).await
    }

    /// The subprotocol chosen with [`WebSocketUpgrade::protocols`], if any.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    fn sent_close(&self) -> bool {
        self.on_close_sent.is_none()
    }

    fn mark_close_sent(&mut self) {
        if let Some(tx) = self.on_close_sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Stream for WebSocket {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.received_close || self.sent_close() {
            return Poll::Ready(None);
        }
        match self.incoming.poll_recv(cx) {
            Poll::Ready(Some(msg)) => {
                if matches!(msg, Message::Close(_)) {
                    self.received_close = true;
                }
                Poll::Ready(Some(Ok(msg)))
            }
            Poll::Ready(None) => {
                self.received_close = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sink<Message> for WebSocket {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.sent_close() {
            return Poll::Ready(Err(Error::Closed));
        }
        self.outgoing.poll_reserve(cx).map_err(|_| Error::Closed)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        if self.sent_close() {
            self.outgoing.abort_send();
            return Err(Error::Closed);
        }
        let frame = match msg {
            Message::Ping(_) | Message::Pong(_) => {
                self.outgoing.abort_send();
                return Ok(());
            }
            Message::Close(frame) => {
                if self.received_close {
                    // The gateway has done the closing handshake with the
                    // client already; a reply close carries nothing.
                    self.outgoing.abort_send();
                    self.mark_close_sent();
                    return Ok(());
                }
                let (code, reason) = frame.map_or((0, String::new()), |f| (f.code, f.reason));
                Out::Close(pb::WebSocketClose {
                    code: u32::from(code),
                    reason: truncate(reason, MAX_REASON),
                })
            }
            _ if self.received_close => {
                self.outgoing.abort_send();
                return Err(Error::Closed);
            }
            Message::Text(s) => Out::Message(pb::WebSocketMessage {
                data: Some(pb::web_socket_message::Data::Text(s)),
            }),
            Message::Binary(b) => Out::Message(pb::WebSocketMessage {
                data: Some(pb::web_socket_message::Data::Binary(b)),
            }),
        };
        let is_close = matches!(frame, Out::Close(_));
        self.outgoing
            .send_item(pb::StreamResponse { frame: Some(frame) })
            .map_err(|_| Error::Closed)?;
        if is_close {
            self.mark_close_sent();
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    /// Does not send a close frame: send [`Message::Close`] for that, or
    /// return from the callback (the client then sees 1000).
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Runs an accepted upgrade after its `101` head went out: the callback with
/// its socket, until it returns or sends a close.
pub(crate) async fn run(
    callback: OnUpgrade,
    incoming: mpsc::Receiver<Message>,
    out: mpsc::Sender<pb::StreamResponse>,
    protocol: Option<HeaderValue>,
) -> Result<(), tonic::Status> {
    let Some(callback) = callback.take() else {
        return Ok(());
    };
    let (closed_tx, closed_rx) = oneshot::channel();
    let socket = WebSocket {
        incoming,
        outgoing: PollSender::new(out),
        protocol,
        on_close_sent: Some(closed_tx),
        received_close: false,
    };
    let mut session = callback(socket);
    let close_sent = async {
        if closed_rx.await.is_err() {
            // The socket was dropped without a close: wait for the callback.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        () = &mut session => {}
        () = close_sent => {
            // The exchange is over for the gateway; let the rest of the
            // callback (cleanup after its close) finish on its own.
            tokio::spawn(session);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate(long, MAX_REASON);
        assert!(cut.len() <= MAX_REASON);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate("bye".into(), MAX_REASON), "bye");
    }
}
