//! WebSocket over `ForwardingService.Stream`.
//!
//! The gateway terminates RFC 6455 with the client (handshake, framing,
//! masking, fragmentation, ping/pong, the closing handshake: tungstenite) and
//! relays whole messages as `message` / `close` frames on one `Stream` call.
//! Backpressure is end to end: a message is read from one side only once the
//! other side took the previous one (a bounded channel of a few frames
//! towards the backend, an awaited send towards the client).

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use proto::v1::{
    StreamRequest, StreamResponse, WebSocketClose, WebSocketMessage, stream_request,
    stream_response, web_socket_message,
};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balance::InFlight;
use crate::convert::has_token;
use crate::error::{ErrorKind, ForwardError};
use crate::stream::Exchange;

const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";

/// Header fields of the client's handshake that belong to the gateway's
/// connection, not to the backend (the gateway does the handshake and
/// offers no extensions).
pub(crate) fn is_handshake_field(name: &str) -> bool {
    name == SEC_WEBSOCKET_KEY || name == SEC_WEBSOCKET_VERSION || name == SEC_WEBSOCKET_EXTENSIONS
}

/// Whether the request asks for WebSocket: an HTTP/1.1 upgrade (RFC 6455
/// 4.1) or an HTTP/2 extended CONNECT (RFC 8441).
pub(crate) fn is_upgrade(parts: &request::Parts) -> bool {
    is_h2_connect(parts)
        || (parts.version == http::Version::HTTP_11
            && has_token(&parts.headers, header::UPGRADE, "websocket")
            && has_token(&parts.headers, header::CONNECTION, "upgrade"))
}

/// An HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441 4).
pub(crate) fn is_h2_connect(parts: &request::Parts) -> bool {
    parts.method == http::Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Checks the handshake and returns the `Sec-WebSocket-Accept` value (none
/// for HTTP/2, where the stream itself is the WebSocket).
pub(crate) fn accept_key(parts: &request::Parts) -> Result<Option<HeaderValue>, ForwardError> {
    let bad = |m: &'static str| ForwardError::new(ErrorKind::BadRequest, m);
    if is_h2_connect(parts) {
        if parts
            .headers
            .get(SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(bad("a WebSocket CONNECT needs sec-websocket-version: 13"));
        }
        return Ok(None);
    }
    if parts.method != http::Method::GET {
        return Err(bad("a WebSocket upgrade must be a GET"));
    }
    if parts
        .headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(bad("a WebSocket upgrade needs Sec-WebSocket-Version: 13"));
    }
    let key = parts
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("a WebSocket upgrade needs Sec-WebSocket-Key"))?;
    let k = key.as_bytes().trim_ascii();
    // 16 random bytes, base64: 24 characters ending in "==".
    if k.len() != 24 || !k.ends_with(b"==") {
        return Err(bad("Sec-WebSocket-Key is not 16 bytes of base64"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(k);
    HeaderValue::from_str(&accept)
        .map(Some)
        .map_err(|_| bad("Sec-WebSocket-Key is invalid"))
}

/// The answer that accepts the WebSocket, with the backend's head fields
/// (e.g. the chosen `sec-websocket-protocol`, cookies): 101 with the
/// handshake's fields on HTTP/1.1, 200 on HTTP/2 (RFC 8441 5).
pub(crate) fn switching_response(
    mut headers: HeaderMap,
    accept: Option<HeaderValue>,
) -> Response<Body> {
    headers.remove(header::CONTENT_LENGTH);
    let mut out = Response::new(Body::empty());
    match accept {
        Some(accept) => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        }
        None => *out.status_mut() = StatusCode::OK,
    }
    *out.headers_mut() = headers;
    out
}

/// The request frames of a WebSocket exchange after the head: whatever the
/// relay puts in the channel.
pub(crate) fn frames(
    head: StreamRequest,
    rx: mpsc::Receiver<StreamRequest>,
) -> impl futures_util::Stream<Item = StreamRequest> + Send + 'static {
    futures_util::stream::once(std::future::ready(head))
        .chain(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        }))
}

fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn client_frame(m: Message) -> Option<stream_request::Frame> {
    Some(match m {
        Message::Text(t) => stream_request::Frame::Message(WebSocketMessage {
            data: Some(web_socket_message::Data::Text(t.as_str().to_owned())),
        }),
        Message::Binary(b) => stream_request::Frame::Message(WebSocketMessage {
            data: Some(web_socket_message::Data::Binary(b)),
        }),
        Message::Close(c) => stream_request::Frame::Close(match c {
            Some(c) => WebSocketClose {
                code: u16::from(c.code) as u32,
                reason: c.reason.as_str().to_owned(),
            },
            None => WebSocketClose::default(),
        }),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    })
}

/// Everything one relay needs.
pub(crate) struct Relay {
    pub on_upgrade: OnUpgrade,
    pub to_backend: mpsc::Sender<StreamRequest>,
    pub from_backend: tonic::Streaming<StreamResponse>,
    pub ex: Arc<Exchange>,
    pub draining: CancellationToken,
    pub max_message: usize,
    pub service: Arc<str>,
    pub in_flight: InFlight,
    /// The upgraded connection's place under `limits.max_connections`,
    /// held until the relay ends.
    pub slot: Option<crate::server::ConnectionSlot>,
    /// Message bytes from the client (`gateway_request_body_bytes_total`).
    pub bytes_in: crate::metrics::ByteCount,
    /// Message bytes to the client (`gateway_response_body_bytes_total`).
    pub bytes_out: crate::metrics::ByteCount,
}

/// How the relay ended, for the close sent to the client.
fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut reason = reason.to_owned();
    // A close reason is at most 123 bytes (RFC 6455 5.5); cut on a char.
    while reason.len() > 123 {
        reason.pop();
    }
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

impl Relay {
    /// Runs until either side closes or the exchange times out.
    pub(crate) async fn run(self) {
        let Relay {
            on_upgrade,
            to_backend,
            mut from_backend,
            ex,
            draining,
            max_message,
            service,
            in_flight: _in_flight,
            slot: _slot,
            bytes_in,
            bytes_out,
        } = self;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(service = %service, error = %e, "WebSocket upgrade did not complete.");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let mut client_closed = false;
        let ended = ex.ended_after_head();
        tokio::pin!(ended);
        loop {
            tokio::select! {
                m = ws.next(), if !client_closed => match m {
                    Some(Ok(m)) => {
                        ex.touch();
                        let is_close = matches!(m, Message::Close(_));
                        if let Message::Text(_) | Message::Binary(_) = &m {
                            bytes_in.add(m.len());
                        }
                        if let Some(f) = client_frame(m) {
                            let f = StreamRequest { frame: Some(f) };
                            if to_backend.send(f).await.is_err() {
                                // The call is gone; its outcome arrives below.
                            }
                        }
                        if is_close {
                            // tungstenite queued the answer to the client's
                            // close; flush it. The backend got the close and
                            // should finish the call.
                            let _ = ws.flush().await;
                            client_closed = true;
                        }
                    }
                    Some(Err(e)) => {
                        debug!(service = %service, error = %e, "WebSocket client failed; cancelling the backend call.");
                        return;
                    }
                    None => {
                        debug!(service = %service, "WebSocket client went away; cancelling the backend call.");
                        return;
                    }
                },
                f = from_backend.message() => {
                    ex.touch();
                    let close = match f {
                        Ok(Some(StreamResponse { frame: Some(stream_response::Frame::Message(m)) })) => {
                            let m = match m.data {
                                Some(web_socket_message::Data::Text(t)) => Message::Text(t.into()),
                                Some(web_socket_message::Data::Binary(b)) => Message::Binary(b),
                                None => Message::Binary(Bytes::new()),
                            };
                            if client_closed {
                                continue;
                            }
                            bytes_out.add(m.len());
                            if ws.send(m).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Ok(Some(StreamResponse { frame: Some(stream_response::Frame::Close(c)) })) => {
                            let code = c.code as u16;
                            if c.code == 0 {
                                None
                            } else if c.code <= u16::MAX as u32 && close_code_valid(code) {
                                Some(close_frame(code, &c.reason))
                            } else {
                                warn!(service = %service, request_id = ex.rid(), code = c.code, "Backend sent an invalid WebSocket close code; closing with 1011.");
                                Some(close_frame(1011, "invalid close code from the backend"))
                            }
                        }
                        Ok(None) => Some(close_frame(1000, "")),
                        Ok(Some(other)) => {
                            warn!(service = %service, request_id = ex.rid(), frame = ?other.frame.as_ref().map(kind), "Malformed frame on a WebSocket exchange; closing with 1011.");
                            Some(close_frame(1011, "malformed frame from the backend"))
                        }
                        Err(status) => {
                            warn!(service = %service, request_id = ex.rid(), code = ?status.code(), message = status.message(), "Backend failed a WebSocket exchange; closing with 1011.");
                            Some(close_frame(1011, "backend failed"))
                        }
                    };
                    if !client_closed {
                        let _ = ws.close(close).await;
                        finish_close(&mut ws).await;
                    }
                    return;
                }
                e = &mut ended => {
                    debug!(service = %service, error = %e, "WebSocket exchange timed out.");
                    if !client_closed {
                        let _ = ws.close(Some(close_frame(1001, "idle or maximum duration reached"))).await;
                        finish_close(&mut ws).await;
                    }
                    return;
                }
                _ = draining.cancelled(), if !client_closed => {
                    let _ = ws.close(Some(close_frame(1001, "gateway shutting down"))).await;
                    let _ = to_backend.send(StreamRequest { frame: Some(stream_request::Frame::Close(WebSocketClose { code: 1001, reason: "gateway shutting down".into() })) }).await;
                    finish_close(&mut ws).await;
                    return;
                }
            }
        }
    }
}

fn kind(f: &stream_response::Frame) -> &'static str {
    match f {
        stream_response::Frame::Head(_) => "head",
        stream_response::Frame::Body(_) => "body",
        stream_response::Frame::End(_) => "end",
        stream_response::Frame::Message(_) => "message",
        stream_response::Frame::Close(_) => "close",
    }
}

/// Waits briefly for the client's answer to our close, so the closing
/// handshake completes as it would on a direct connection.
async fn finish_close<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
