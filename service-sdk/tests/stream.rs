//! `ForwardingService.Stream` (and `Send`) against a bound SDK backend,
//! spoken with the generated client exactly as a gateway would.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Request as AxumRequest;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use proto::v1::stream_request::Frame as In;
use proto::v1::stream_response::Frame as Out;
use service_sdk::routing::{get, post};
use service_sdk::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use service_sdk::{Backend, Body, Router};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

/// Upper bound for anything that should happen "now".
const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(router: Router) -> Server {
    let bound = Backend::builder("t")
        .drain(Duration::ZERO)
        .bind(router)
        .await
        .expect("bind");
    let addr = bound.local_addr();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    Server { addr, _stop: stop }
}

async fn client_with(
    server: &Server,
    edit: impl FnOnce(Endpoint) -> Endpoint,
) -> ForwardingServiceClient<Channel> {
    let endpoint = edit(Endpoint::from_shared(format!("http://{}", server.addr)).unwrap());
    let channel = tokio::time::timeout(DEADLINE, endpoint.connect())
        .await
        .expect("connect in time")
        .expect("connect");
    ForwardingServiceClient::new(channel)
}

async fn client(server: &Server) -> ForwardingServiceClient<Channel> {
    client_with(server, |e| e).await
}

/// One `Stream` call: frames go out through `tx`, come back from `rx`.
struct Call {
    tx: Option<mpsc::Sender<pb::StreamRequest>>,
    rx: tonic::Streaming<pb::StreamResponse>,
}

impl Call {
    async fn open(client: &mut ForwardingServiceClient<Channel>) -> Call {
        let (tx, rx) = mpsc::channel::<pb::StreamRequest>(16);
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let resp = tokio::time::timeout(DEADLINE, client.stream(frames))
            .await
            .expect("call opened in time")
            .expect("call opened");
        Call {
            tx: Some(tx),
            rx: resp.into_inner(),
        }
    }

    /// Ends the request side, as the gateway does after `end` or `close`.
    fn half_close(&mut self) {
        self.tx = None;
    }

    async fn send(&self, frame: In) {
        self.send_raw(Some(frame)).await
    }

    async fn send_raw(&self, frame: Option<In>) {
        self.tx
            .as_ref()
            .expect("not half-closed")
            .send(pb::StreamRequest { frame })
            .await
            .expect("request stream open");
    }

    /// The next frame; `None` when the call ended OK. Panics on a status.
    async fn next(&mut self) -> Option<Out> {
        let msg = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a frame in time")
            .expect("no error status");
        msg.map(|m| m.frame.expect("a frame with a kind"))
    }

    /// Reads frames until the call fails; returns that status.
    async fn status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(DEADLINE, self.rx.message())
                .await
                .expect("the call to end in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended OK, expected an error"),
                Err(status) => return status,
            }
        }
    }

    async fn head(&mut self) -> pb::ForwardingResp {
        match self.next().await {
            Some(Out::Head(h)) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    /// Reads body chunks until `end`, then expects the call to end OK.
    async fn body_and_end(&mut self) -> (Vec<Bytes>, Vec<pb::Header>) {
        let mut chunks = vec![];
        loop {
            match self.next().await {
                Some(Out::Body(c)) => chunks.push(c.data),
                Some(Out::End(e)) => {
                    assert!(self.next().await.is_none(), "nothing after `end`");
                    return (chunks, e.trailers);
                }
                other => panic!("expected body or end, got {other:?}"),
            }
        }
    }
}

fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> In {
    In::Head(pb::ForwardingReq {
        protocol_version: 1,
        method: method.into(),
        path: path.into(),
        version: pb::HttpVersion::Http11 as i32,
        headers: headers
            .iter()
            .map(|(n, v)| pb::Header {
                name: (*n).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
        ..Default::default()
    })
}

fn ws_head(path: &str, headers: &[(&str, &str)]) -> In {
    let In::Head(mut h) = head("GET", path, headers) else {
        unreachable!()
    };
    h.upgrade = "websocket".into();
    In::Head(h)
}

fn chunk(data: &'static str) -> In {
    In::Body(pb::BodyChunk {
        data: Bytes::from_static(data.as_bytes()),
    })
}

fn end(trailers: &[(&str, &str)]) -> In {
    In::End(pb::StreamEnd {
        trailers: trailers
            .iter()
            .map(|(n, v)| pb::Header {
                name: (*n).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
    })
}

fn header<'a>(headers: &'a [pb::Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_ref())
}

fn concat(chunks: &[Bytes]) -> String {
    String::from_utf8(chunks.concat()).unwrap()
}

/// Sends a value on a oneshot when dropped.
struct DropGuard(Option<oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn unary_send_still_works_with_streaming_bodies() {
    let app = Router::new().route(
        "/echo",
        post(|body: Bytes| async move { format!("got {}", String::from_utf8_lossy(&body)) }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let resp = c
        .send(pb::ForwardingReq {
            protocol_version: 1,
            method: "POST".into(),
            path: "/echo".into(),
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "got hello");
}

#[tokio::test]
async fn a_chunked_upload_reaches_the_handler_with_its_trailers() {
    let app = Router::new()
        .route(
            "/concat",
            post(|body: Bytes| async move {
                format!("{}:{}", body.len(), String::from_utf8_lossy(&body))
            }),
        )
        .route(
            "/trailers",
            post(|req: AxumRequest| async move {
                let collected = req.into_body().collect().await.unwrap();
                let trailer = collected
                    .trailers()
                    .and_then(|t| t.get("x-checksum"))
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "none".into());
                format!(
                    "{}|{trailer}",
                    String::from_utf8_lossy(&collected.to_bytes())
                )
            }),
        );
    let server = serve(app).await;
    let mut c = client(&server).await;

    let mut call = Call::open(&mut c).await;
    call.send(head("POST", "/concat", &[])).await;
    for part in ["one-", "two-", "three"] {
        call.send(chunk(part)).await;
    }
    call.send(end(&[])).await;
    call.half_close();
    let h = call.head().await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty() && h.trailers.is_empty());
    let (chunks, trailers) = call.body_and_end().await;
    assert_eq!(concat(&chunks), "13:one-two-three");
    assert!(trailers.is_empty());

    let mut call = Call::open(&mut c).await;
    call.send(head("POST", "/trailers", &[])).await;
    call.send(chunk("abc")).await;
    call.send(chunk("def")).await;
    call.send(end(&[("x-checksum", "c0ffee")])).await;
    call.half_close();
    assert_eq!(call.head().await.status, 200);
    let (chunks, _) = call.body_and_end().await;
    assert_eq!(concat(&chunks), "abcdef|c0ffee");
}

#[tokio::test]
async fn the_request_body_streams_into_the_handler() {
    // The handler reports each chunk as it reads it; the test sends the next
    // chunk only after the previous one was seen, so nothing is buffered
    // until `end`.
    let (seen_tx, mut seen) = mpsc::channel::<Bytes>(4);
    let app = Router::new().route(
        "/progressive",
        post(move |body: Body| async move {
            let mut stream = body.into_data_stream();
            let mut n = 0;
            while let Some(Ok(data)) = stream.next().await {
                n += data.len();
                seen_tx.send(data).await.unwrap();
            }
            n.to_string()
        }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("POST", "/progressive", &[])).await;
    call.send(chunk("first")).await;
    let got = tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap();
    assert_eq!(got.unwrap(), "first");
    call.send(chunk("second")).await;
    let got = tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap();
    assert_eq!(got.unwrap(), "second");
    call.send(end(&[])).await;
    call.half_close();
    assert_eq!(call.head().await.status, 200);
    let (chunks, _) = call.body_and_end().await;
    assert_eq!(concat(&chunks), "11");
}

#[tokio::test]
async fn server_sent_events_leave_as_they_are_produced() {
    let go_on = Arc::new(Notify::new());
    let app = {
        let go_on = go_on.clone();
        Router::new().route(
            "/events",
            get(move || {
                let go_on = go_on.clone();
                async move {
                    let events = futures_util::stream::unfold(0, move |i| {
                        let go_on = go_on.clone();
                        async move {
                            match i {
                                0 => {}
                                // The test releases the later events only
                                // after it has received the first one.
                                1 => go_on.notified().await,
                                3 => return None,
                                _ => {}
                            }
                            let event = Event::default().data(format!("event-{i}"));
                            Some((Ok::<_, Infallible>(event), i + 1))
                        }
                    });
                    Sse::new(events)
                }
            }),
        )
    };
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/events", &[("accept", "text/event-stream")]))
        .await;
    call.send(end(&[])).await;
    let h = call.head().await;
    assert_eq!(h.status, 200);
    assert_eq!(
        header(&h.headers, "content-type"),
        Some(&b"text/event-stream"[..])
    );
    // The first event arrives while the handler is still waiting to produce
    // the next ones: nothing is buffered.
    match call.next().await {
        Some(Out::Body(c)) => assert_eq!(c.data, "data: event-0\n\n"),
        other => panic!("expected the first event, got {other:?}"),
    }
    go_on.notify_one();
    let (chunks, trailers) = call.body_and_end().await;
    assert_eq!(
        chunks,
        [
            Bytes::from_static(b"data: event-1\n\n"),
            Bytes::from_static(b"data: event-2\n\n")
        ]
    );
    assert!(trailers.is_empty());
}

#[tokio::test]
async fn response_trailers_travel_in_end() {
    let app = Router::new().route(
        "/with-trailers",
        get(|| async {
            let mut trailers = http::HeaderMap::new();
            trailers.append("x-sum", http::HeaderValue::from_static("1"));
            trailers.append("x-sum", http::HeaderValue::from_static("2"));
            let frames = vec![
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"x"))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))
        }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/with-trailers", &[])).await;
    call.send(end(&[])).await;
    assert_eq!(call.head().await.status, 200);
    let (chunks, trailers) = call.body_and_end().await;
    assert_eq!(concat(&chunks), "x");
    let sums: Vec<_> = trailers
        .iter()
        .filter(|t| t.name == "x-sum")
        .map(|t| t.value.clone())
        .collect();
    assert_eq!(sums, ["1", "2"]);

    // On `Send` the same trailers come in the `ForwardingResp`.
    let resp = c
        .send(pb::ForwardingReq {
            method: "GET".into(),
            path: "/with-trailers".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.body, "x");
    assert_eq!(resp.trailers.len(), 2);
}

/// Answers only after `std::future::pending`: the call stays open, so a
/// malformed frame is what ends it.
fn hanging_app() -> Router {
    Router::new().route(
        "/hang",
        post(|body: Bytes| async move {
            let _ = body;
            std::future::pending::<()>().await;
        }),
    )
}

async fn expect_invalid(frames: Vec<Option<In>>, needle: &str) {
    let server = serve(hanging_app()).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    for f in frames {
        call.send_raw(f).await;
    }
    let status = call.status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
}

#[tokio::test]
async fn a_body_before_the_head_is_invalid() {
    expect_invalid(vec![Some(chunk("early"))], "first frame must be `head`").await;
}

#[tokio::test]
async fn two_heads_are_invalid() {
    expect_invalid(
        vec![
            Some(head("POST", "/hang", &[])),
            Some(head("POST", "/hang", &[])),
        ],
        "second `head`",
    )
    .await;
}

#[tokio::test]
async fn a_body_after_end_is_invalid() {
    expect_invalid(
        vec![
            Some(head("POST", "/hang", &[])),
            Some(chunk("a")),
            Some(end(&[])),
            Some(chunk("late")),
        ],
        "`body` frame after `end`",
    )
    .await;
}

#[tokio::test]
async fn a_frame_of_unknown_kind_is_invalid() {
    expect_invalid(vec![Some(head("POST", "/hang", &[])), None], "unknown kind").await;
    expect_invalid(vec![None], "unknown kind").await;
}

#[tokio::test]
async fn websocket_frames_on_a_plain_exchange_are_invalid() {
    expect_invalid(
        vec![
            Some(head("POST", "/hang", &[])),
            Some(In::Close(pb::WebSocketClose::default())),
        ],
        "not a WebSocket",
    )
    .await;
}

#[tokio::test]
async fn a_half_close_before_end_is_invalid_and_cuts_the_body() {
    let server = serve(hanging_app()).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("POST", "/hang", &[])).await;
    call.send(chunk("partial")).await;
    call.half_close();
    let status = call.status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("before its `end`"), "{status:?}");
}

#[tokio::test]
async fn a_cancelled_call_drops_the_handlers_stream() {
    // A body that yields one chunk, then waits forever, holding the guard.
    struct Forever {
        sent: bool,
        _guard: DropGuard,
    }
    impl http_body::Body for Forever {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if self.sent {
                return std::task::Poll::Pending;
            }
            self.sent = true;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"tick",
            )))))
        }
    }
    let (dropped_tx, dropped) = oneshot::channel();
    let slot = Arc::new(std::sync::Mutex::new(Some(DropGuard(Some(dropped_tx)))));
    let app = Router::new().route(
        "/forever",
        get(move || {
            let guard = slot.lock().unwrap().take().expect("one request");
            async move {
                Body::new(Forever {
                    sent: false,
                    _guard: guard,
                })
            }
        }),
    );

    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/forever", &[])).await;
    call.send(end(&[])).await;
    assert_eq!(call.head().await.status, 200);
    match call.next().await {
        Some(Out::Body(c)) => assert_eq!(c.data, "tick"),
        other => panic!("expected a chunk, got {other:?}"),
    }
    // The gateway gives up on the call (its client went away).
    drop(call);
    tokio::time::timeout(DEADLINE, dropped)
        .await
        .expect("the handler's body was dropped in time")
        .expect("the guard fired");
}

#[tokio::test]
async fn a_failing_response_body_ends_the_call_with_internal() {
    let app = Router::new().route(
        "/broken",
        get(|| async {
            let parts = futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"part")),
                Err(std::io::Error::other("disk on fire")),
            ]);
            Body::from_stream(parts)
        }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/broken", &[])).await;
    call.send(end(&[])).await;
    assert_eq!(call.head().await.status, 200);
    match call.next().await {
        Some(Out::Body(c)) => assert_eq!(c.data, "part"),
        other => panic!("expected a chunk, got {other:?}"),
    }
    let status = call.status().await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains("disk on fire"), "{status:?}");

    // On `Send` it is a forwarding failure too, not a truncated 200.
    let err = c
        .send(pb::ForwardingReq {
            method: "GET".into(),
            path: "/broken".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
}

#[tokio::test]
async fn a_slow_reader_slows_the_handler() {
    let produced = Arc::new(AtomicUsize::new(0));
    let app = {
        let produced = produced.clone();
        Router::new().route(
            "/firehose",
            get(move || {
                let produced = produced.clone();
                async move {
                    let chunks = futures_util::stream::repeat_with(move || {
                        produced.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Bytes::from(vec![b'x'; 16 * 1024]))
                    });
                    Body::from_stream(chunks)
                }
            }),
        )
    };
    let server = serve(app).await;
    let mut c = client_with(&server, |e| {
        e.initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
    })
    .await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/firehose", &[])).await;
    call.send(end(&[])).await;
    assert_eq!(call.head().await.status, 200);
    // Not reading: the handler must stall after the HTTP/2 window and the
    // few frames of buffering in between, not run ahead (unbounded it would
    // produce thousands of chunks in this time). Observing that something
    // does *not* happen needs a window of time; it cannot give a false
    // failure on a slow machine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = produced.load(Ordering::SeqCst);
    assert!(
        (1..64).contains(&stalled_at),
        "produced {stalled_at} chunks of 16 KiB for a reader that took none"
    );
    // Reading lets it go on.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while produced.load(Ordering::SeqCst) < stalled_at + 64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler resumes"
        );
        match call.next().await {
            Some(Out::Body(_)) => {}
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket.

fn ws_app(closes: mpsc::Sender<Message>) -> Router {
    async fn session(mut socket: WebSocket, closes: mpsc::Sender<Message>) {
        let protocol = socket
            .protocol()
            .map(|p| p.to_str().unwrap().to_owned())
            .unwrap_or_default();
        while let Some(msg) = socket.recv().await {
            match msg.unwrap() {
                Message::Text(t) if t == "protocol?" => {
                    socket.send(Message::text(protocol.clone())).await.unwrap();
                }
                Message::Text(t) if t == "close-me" => {
                    socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 4002,
                            reason: "asked to".into(),
                        })))
                        .await
                        .unwrap();
                    // After a close, nothing more goes out or comes in.
                    // (This part runs after the call has ended.)
                    let send_failed = socket.send(Message::text("late")).await.is_err();
                    let recv_ended = socket.recv().await.is_none();
                    let report = format!("send_failed={send_failed} recv_ended={recv_ended}");
                    closes.send(Message::text(report)).await.unwrap();
                    return;
                }
                m @ Message::Close(_) => {
                    closes.send(m).await.unwrap();
                    assert!(socket.recv().await.is_none(), "nothing after a close");
                    return;
                }
                m => socket.send(m).await.unwrap(),
            }
        }
    }
    Router::new()
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| async move {
                ws.protocols(["chat.v2", "chat.v1"])
                    .on_upgrade(move |socket| session(socket, closes))
            }),
        )
        .route("/plain", get(|| async { "plain" }))
}

#[tokio::test]
async fn websocket_echo_and_client_close() {
    let (closes_tx, mut closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head(
        "/ws",
        &[("sec-websocket-protocol", "chat.v1, chat.v2")],
    ))
    .await;
    let h = call.head().await;
    assert_eq!(h.status, 101);
    assert_eq!(
        header(&h.headers, "sec-websocket-protocol"),
        Some(&b"chat.v2"[..])
    );

    call.send(In::Message(pb::WebSocketMessage {
        data: Some(pb::web_socket_message::Data::Text("hi".into())),
    }))
    .await;
    match call.next().await {
        Some(Out::Message(m)) => assert_eq!(
            m.data,
            Some(pb::web_socket_message::Data::Text("hi".into()))
        ),
        other => panic!("expected a message, got {other:?}"),
    }
    call.send(In::Message(pb::WebSocketMessage {
        data: Some(pb::web_socket_message::Data::Binary(Bytes::from_static(&[
            0, 1, 2, 255,
        ]))),
    }))
    .await;
    match call.next().await {
        Some(Out::Message(m)) => assert_eq!(
            m.data,
            Some(pb::web_socket_message::Data::Binary(Bytes::from_static(&[
                0, 1, 2, 255
            ])))
        ),
        other => panic!("expected a message, got {other:?}"),
    }
    call.send(In::Message(pb::WebSocketMessage {
        data: Some(pb::web_socket_message::Data::Text("protocol?".into())),
    }))
    .await;
    match call.next().await {
        Some(Out::Message(m)) => assert_eq!(
            m.data,
            Some(pb::web_socket_message::Data::Text("chat.v2".into()))
        ),
        other => panic!("expected a message, got {other:?}"),
    }

    // The client closes: the gateway sends `close` and half-closes.
    call.send(In::Close(pb::WebSocketClose {
        code: 4001,
        reason: "done".into(),
    }))
    .await;
    call.half_close();
    let got = tokio::time::timeout(DEADLINE, closes.recv()).await.unwrap();
    assert_eq!(
        got,
        Some(Message::Close(Some(CloseFrame {
            code: 4001,
            reason: "done".into()
        })))
    );
    // The callback returned: the call ends OK, without a close of its own.
    assert!(call.next().await.is_none());
}

#[tokio::test]
async fn websocket_close_without_code_is_none() {
    let (closes_tx, mut closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/ws", &[])).await;
    let h = call.head().await;
    assert_eq!(h.status, 101);
    assert_eq!(header(&h.headers, "sec-websocket-protocol"), None);
    call.send(In::Close(pb::WebSocketClose::default())).await;
    let got = tokio::time::timeout(DEADLINE, closes.recv()).await.unwrap();
    assert_eq!(got, Some(Message::Close(None)));
    assert!(call.next().await.is_none());
}

#[tokio::test]
async fn websocket_closed_by_the_handler() {
    let (closes_tx, mut closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/ws", &[])).await;
    assert_eq!(call.head().await.status, 101);
    call.send(In::Message(pb::WebSocketMessage {
        data: Some(pb::web_socket_message::Data::Text("close-me".into())),
    }))
    .await;
    match call.next().await {
        Some(Out::Close(c)) => {
            assert_eq!(c.code, 4002);
            assert_eq!(c.reason, "asked to");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // The call ends OK right after the close, though the gateway has not
    // half-closed.
    assert!(call.next().await.is_none());
    let report = tokio::time::timeout(DEADLINE, closes.recv()).await.unwrap();
    assert_eq!(
        report,
        Some(Message::text("send_failed=true recv_ended=true"))
    );
}

#[tokio::test]
async fn a_cancelled_websocket_drops_the_callback() {
    let (dropped_tx, dropped) = oneshot::channel();
    let slot = Arc::new(std::sync::Mutex::new(Some(DropGuard(Some(dropped_tx)))));
    let app = Router::new().route(
        "/hold",
        get(move |ws: WebSocketUpgrade| {
            let guard = slot.lock().unwrap().take().expect("one request");
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    let _guard = guard;
                    socket.send(Message::text("ready")).await.unwrap();
                    std::future::pending::<()>().await;
                })
            }
        }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/hold", &[])).await;
    assert_eq!(call.head().await.status, 101);
    assert!(matches!(call.next().await, Some(Out::Message(_))));
    drop(call);
    tokio::time::timeout(DEADLINE, dropped)
        .await
        .expect("the callback was dropped in time")
        .expect("the guard fired");
}

#[tokio::test]
async fn a_plain_request_to_a_websocket_route_is_refused() {
    let (closes_tx, _closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(head("GET", "/ws", &[])).await;
    call.send(end(&[])).await;
    let h = call.head().await;
    assert_eq!(h.status, 426);
    let (chunks, _) = call.body_and_end().await;
    assert!(concat(&chunks).contains("WebSocket"), "{chunks:?}");

    // Over `Send` as well (an upgrade never comes over `Send`).
    let resp = c
        .send(pb::ForwardingReq {
            method: "GET".into(),
            path: "/ws".into(),
            upgrade: "websocket".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, 426);
}

#[tokio::test]
async fn an_upgrade_to_a_plain_route_gets_a_plain_answer() {
    let (closes_tx, _closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/plain", &[])).await;
    let h = call.head().await;
    assert_eq!(h.status, 200);
    let (chunks, _) = call.body_and_end().await;
    assert_eq!(concat(&chunks), "plain");
}

#[tokio::test]
async fn body_frames_in_a_websocket_exchange_are_invalid() {
    let (closes_tx, _closes) = mpsc::channel(1);
    let server = serve(ws_app(closes_tx)).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/ws", &[])).await;
    assert_eq!(call.head().await.status, 101);
    call.send(chunk("not a message")).await;
    let status = call.status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("WebSocket"), "{status:?}");
}

#[tokio::test]
async fn websocket_split_into_stream_and_sink() {
    let app = Router::new().route(
        "/shout",
        get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|socket| async move {
                use futures_util::SinkExt;
                let (mut tx, mut rx) = socket.split();
                while let Some(Ok(Message::Text(t))) = rx.next().await {
                    if tx.send(Message::text(t.to_uppercase())).await.is_err() {
                        return;
                    }
                }
            })
        }),
    );
    let server = serve(app).await;
    let mut c = client(&server).await;
    let mut call = Call::open(&mut c).await;
    call.send(ws_head("/shout", &[])).await;
    assert_eq!(call.head().await.status, 101);
    for word in ["a", "b"] {
        call.send(In::Message(pb::WebSocketMessage {
            data: Some(pb::web_socket_message::Data::Text(word.into())),
        }))
        .await;
        match call.next().await {
            Some(Out::Message(m)) => assert_eq!(
                m.data,
                Some(pb::web_socket_message::Data::Text(word.to_uppercase()))
            ),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    // The gateway half-closes without a close frame: `recv` ends, the
    // callback returns, the call ends OK.
    call.half_close();
    assert!(call.next().await.is_none());
}

#[tokio::test]
async fn rejection_is_a_response() {
    // The rejection renders as 426 with a text body, for any handler shape.
    let resp = service_sdk::ws::WebSocketUpgradeRejection.into_response();
    assert_eq!(resp.status(), 426);
}
