//! The gateway on the open internet: idle floods, connection limits and
//! malformed framing, against the real binary on the raw wire.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, DEADLINE, GatewayProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Starts the gateway with `toml` as its configuration file.
async fn gateway_with(name: &str, toml: &str) -> GatewayProcess {
    let path = std::env::temp_dir().join(format!("gw-edge-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let gw = GatewayProcess::start(&["--config", path.to_str().unwrap()], &[]).await;
    let _ = std::fs::remove_file(&path);
    gw
}

/// A `Send`-only backend counting the requests that reach it.
async fn counting_backend(gw: &GatewayProcess, name: &str) -> (BackendHandle, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let router = Router::new().fallback(any(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "reached" }
    }));
    let b = BackendHandle::start(name, router, Some(&gw.registration_url()), |b| {
        b.registration(|r| r.streaming = false)
    })
    .await;
    gw.wait_routable(name, 1).await;
    (b, seen)
}

/// Reads until the gateway closes the connection (EOF or reset); panics
/// if it stays open past `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Ok(_) => buf,
        Err(_) => panic!(
            "connection still open after {within:?}; read {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
}

async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Status and JSON error code of a raw HTTP/1.1 answer.
fn status_and_code(raw: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1).unwrap_or_default().to_owned();
    let code = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    (status, code)
}

const FLOOD: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_flood_does_not_stop_a_normal_client_and_is_closed() {
    let gw = gateway_with(
        "flood",
        "[timeouts]\nfirst_byte = \"1s\"\nheader_read = \"5s\"\nidle = \"2s\"\n",
    )
    .await;
    let (_b, seen) = counting_backend(&gw, "flood").await;

    // 2,000 connections in three kinds: silent, the h2 preface and then
    // nothing, a trickled partial HTTP/1.1 head.
    let flood_started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        match i % 4 {
            0 => s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap(),
            1 => s.write_all(b"GET /flood HTTP/1.1\r\nHo").await.unwrap(),
            _ => {}
        }
        flood.push(s);
    }

    // A normal client is served in the middle of it, promptly.
    let t = Instant::now();
    let resp = gw.http.get(gw.url("/flood/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Generous for a loaded CI machine; the flood itself costs nothing here.
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "served in {:?}",
        t.elapsed()
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // A keep-alive connection that served a request is closed once idle.
    let mut kept = TcpStream::connect(gw.public).await.unwrap();
    kept.write_all(b"GET /flood/y HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let served = Instant::now();

    // Every flood connection is closed by the gateway (first_byte, or
    // header_read for the trickled head), none later than a few seconds.
    let closing = futures_util::future::join_all(flood.iter_mut().map(|s| async move {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }));
    tokio::time::timeout(DEADLINE, closing)
        .await
        .expect("every idle connection closed");
    let flood_closed = flood_started.elapsed();
    assert!(
        flood_closed < Duration::from_secs(10),
        "flood closed after {flood_closed:?}"
    );

    let rest = read_until_closed(&mut kept, DEADLINE).await;
    let idle_for = served.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1500) && idle_for < Duration::from_secs(8),
        "idle keep-alive connection closed after {idle_for:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1"));

    // Still serving afterwards.
    let resp = gw.http.get(gw.url("/flood/z")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_get_503_and_are_closed() {
    let gw = gateway_with(
        "limits",
        "[limits]\nmax_connections = 20\nmax_connections_per_ip = 5\n[timeouts]\nfirst_byte = \"30s\"\n",
    )
    .await;
    let (_b, seen) = counting_backend(&gw, "limits").await;

    // Five from 127.0.0.1 are held; the sixth is refused at once.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from([127, 0, 0, 1], gw.public).await);
    }
    let mut sixth = connect_from([127, 0, 0, 1], gw.public).await;
    let raw = read_until_closed(&mut sixth, Duration::from_secs(5)).await;
    let (status, code) = status_and_code(&raw);
    assert_eq!(status, "503", "{}", String::from_utf8_lossy(&raw));
    assert_eq!(code.as_deref(), Some("too_many_connections"));

    // Other addresses have their own allowance, up to the listener's 20.
    for src in 2..=4u8 {
        for _ in 0..5 {
            held.push(connect_from([127, 0, 0, src], gw.public).await);
        }
    }
    let mut over = connect_from([127, 0, 0, 9], gw.public).await;
    let raw = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert_eq!(
        status_and_code(&raw).1.as_deref(),
        Some("too_many_connections")
    );

    // A slot given back is free again.
    held.truncate(19);
    let mut s = eventually_admitted(gw.public, [127, 0, 0, 9]).await;
    s.write_all(b"GET /limits HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_and_code(&raw).0, "200");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// An HTTP/1.1 connection upgraded to WebSocket leaves hyper for the
/// gateway's relay, and still holds its place under `max_connections`
/// until the relay ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_websocket_keeps_its_connection_slot() {
    use futures_util::{SinkExt, StreamExt};
    use service_sdk::routing::get as route_get;
    use service_sdk::ws::{WebSocket, WebSocketUpgrade};
    use tokio_tungstenite::tungstenite::Message;

    let gw = gateway_with(
        "wsslot",
        "[limits]\nmax_connections = 2\n[timeouts]\nfirst_byte = \"30s\"\n",
    )
    .await;
    let echo = Router::new().route(
        "/wsslot",
        route_get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket: WebSocket| async move {
                while let Some(Ok(m)) = socket.recv().await {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
            })
        }),
    );
    let _b = BackendHandle::start("wsslot", echo, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("wsslot", 1).await;
    // The readiness polls of the harness give their slots back first.
    let held = eventually_admitted(gw.public, [127, 0, 0, 1]).await;
    drop(held);
    let tcp = TcpStream::connect(gw.public).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/wsslot", gw.public), tcp)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    // One slot left: the next connection is admitted, the one after refused.
    let _second = eventually_admitted(gw.public, [127, 0, 0, 2]).await;
    let mut third = connect_from([127, 0, 0, 3], gw.public).await;
    let raw = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert_eq!(
        status_and_code(&raw).1.as_deref(),
        Some("too_many_connections"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // The WebSocket ends: its slot is free again.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let _again = eventually_admitted(gw.public, [127, 0, 0, 4]).await;
}

/// Connects from `src` until the gateway keeps the connection (a refused
/// one is answered and closed at once): slots are given back
/// asynchronously.
async fn eventually_admitted(to: SocketAddr, src: [u8; 4]) -> TcpStream {
    support::eventually("a connection slot is free", || async move {
        let s = connect_from(src, to).await;
        let mut b = [0u8; 1];
        // Admitted connections say nothing until asked.
        match tokio::time::timeout(Duration::from_millis(200), s.peek(&mut b)).await {
            Err(_) => Some(s),
            Ok(_) => None,
        }
    })
    .await
}

/// Requests hyper would serve with its framing quietly resolved, and the
/// JSON code the gateway answers them with (`None`: hyper's own 400).
fn malformed() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    const FRAMING: Option<&str> = Some("bad_request_framing");
    const HOST: Option<&str> = Some("invalid_host");
    const BAD: Option<&str> = Some("bad_request");
    // A broken chunk is found while the body is read, after routing.
    const BODY: Option<&str> = Some("client_body_error");
    let post = |headers: &str, body: &str| {
        format!("POST /edge HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}").into_bytes()
    };
    let get_host = |host: &[u8]| {
        [
            b"GET /edge HTTP/1.1\r\nHost: ".as_slice(),
            host,
            b"\r\n\r\n",
        ]
        .concat()
    };
    vec![
        (
            "TE then CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "CL then TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "CL + TE lower case",
            post(
                "content-length: 5\r\ntransfer-encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "CL + TE upper case",
            post(
                "CONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: CHUNKED\r\n",
                "0\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "CL 0 + TE",
            post(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "CL + TE smuggling a request",
            post(
                "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nGET /edge/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
            FRAMING,
        ),
        (
            "duplicate equal CL",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            FRAMING,
        ),
        (
            "duplicate equal CL, other case",
            post("Content-Length: 5\r\ncontent-length: 5\r\n", "hello"),
            FRAMING,
        ),
        (
            "duplicate differing CL",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            None,
        ),
        ("CL list", post("Content-Length: 5, 5\r\n", "hello"), None),
        (
            "bad chunk size",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            BODY,
        ),
        (
            "negative chunk size",
            post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
            BODY,
        ),
        (
            "overlong chunk size",
            post(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            ),
            BODY,
        ),
        (
            "chunk longer than its size",
            post("Transfer-Encoding: chunked\r\n", "1\r\nxx\r\n0\r\n\r\n"),
            BODY,
        ),
        (
            "chunk size bare LF",
            post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
            FRAMING,
        ),
        (
            "bare LF after request line",
            b"GET /edge HTTP/1.1\nHost: a\r\n\r\n".to_vec(),
            FRAMING,
        ),
        (
            "bare LF after a header",
            b"GET /edge HTTP/1.1\r\nHost: a\nX: y\r\n\r\n".to_vec(),
            FRAMING,
        ),
        (
            "bare LF ends the head",
            b"GET /edge HTTP/1.1\r\nHost: a\n\n".to_vec(),
            FRAMING,
        ),
        (
            "only bare LFs",
            b"GET /edge HTTP/1.1\nHost: a\n\n".to_vec(),
            FRAMING,
        ),
        (
            "NUL in a header value",
            b"GET /edge HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".to_vec(),
            None,
        ),
        (
            "CR in a header value",
            b"GET /edge HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n".to_vec(),
            None,
        ),
        (
            "empty header name",
            b"GET /edge HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n".to_vec(),
            None,
        ),
        (
            "space before colon",
            b"GET /edge HTTP/1.1\r\nHost: a\r\nX : v\r\n\r\n".to_vec(),
            None,
        ),
        (
            "obs-fold",
            b"GET /edge HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n".to_vec(),
            None,
        ),
        ("bad host with path", get_host(b"bad host/x"), HOST),
        ("host with slash", get_host(b"a/b"), HOST),
        ("host with user info", get_host(b"user@a"), HOST),
        ("host with bad port", get_host(b"a:http"), HOST),
        ("host port too long", get_host(b"a:123456"), HOST),
        ("host unclosed IPv6", get_host(b"[::1"), HOST),
        ("host with query", get_host(b"a?b"), HOST),
        (
            "host non-ASCII",
            get_host("caf\u{e9}.example".as_bytes()),
            HOST,
        ),
        (
            "two Host headers",
            b"GET /edge HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            BAD,
        ),
        (
            "non-ASCII target (UTF-8)",
            "GET /edge/caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"
                .as_bytes()
                .to_vec(),
            BAD,
        ),
        (
            "non-ASCII query (UTF-8)",
            "GET /edge?q=\u{fc} HTTP/1.1\r\nHost: a\r\n\r\n"
                .as_bytes()
                .to_vec(),
            BAD,
        ),
        // Not UTF-8: hyper's URI parser refuses these itself.
        (
            "non-ASCII target (Latin-1)",
            b"GET /edge/\xe9 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            None,
        ),
        (
            "non-ASCII query (Latin-1)",
            b"GET /edge?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            None,
        ),
        (
            "TE not chunked",
            post("Transfer-Encoding: gzip\r\n", "x"),
            None,
        ),
        (
            "TE chunked twice",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        (
            "HTTP/1.0 with TE",
            b"POST /edge HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_gets_400_closes_and_reaches_nothing() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let (_b, seen) = counting_backend(&gw, "edge").await;
    let cases = malformed();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, raw, want) in &cases {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        s.write_all(raw).await.unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
        let (status, code) = status_and_code(&answer);
        let text = String::from_utf8_lossy(&answer);
        if status != "400" || code.as_deref() != *want || text.matches("HTTP/1.1 ").count() != 1 {
            failures.push(format!("{name}: {text:?}"));
        }
        if want.is_some() && !text.to_ascii_lowercase().contains("connection: close") {
            failures.push(format!("{name}: no `Connection: close` in {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the backend received none of them"
    );

    // A request pipelined before a malformed one is served; the malformed
    // one and everything after it is not.
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    s.write_all(
        b"GET /edge/first HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /edge HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /edge/third HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert!(text.contains("bad_request_framing"), "{text}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_quiet_http2_connections_but_not_slow_requests() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let gw = gateway_with("h2idle", "[timeouts]\nidle = \"1s\"\n").await;
    let slow = Router::new().fallback(any(|| async {
        // Longer than `timeouts.idle`: a request in flight keeps its
        // connection.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        "slow"
    }));
    let _b = BackendHandle::start("h2idle", slow, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("h2idle", 1).await;

    for h2 in [false, true] {
        // The request senders are kept: dropping one closes the client side.
        let (mut keep_h1, mut keep_h2) = (None, None);
        let tcp = TcpStream::connect(gw.public).await.unwrap();
        let uri = format!("http://{}/h2idle/x", gw.public);
        let req = http::Request::get(&uri)
            .header("host", gw.public.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let (resp, conn) = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            let conn = tokio::spawn(async move { conn.await.ok() });
            let resp = send.send_request(req).await.unwrap();
            keep_h2 = Some(send);
            (resp, conn)
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            let conn = tokio::spawn(async move { conn.await.ok() });
            let resp = send.send_request(req).await.unwrap();
            keep_h1 = Some(send);
            (resp, conn)
        };
        assert_eq!(resp.status(), 200, "h2={h2}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"slow");
        // The client keeps the connection (and answers PINGs); the gateway
        // ends it once nothing is in flight for `idle`.
        let idle_from = Instant::now();
        tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("the gateway closed the idle connection")
            .unwrap();
        let after = idle_from.elapsed();
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_secs(5),
            "h2={h2}: closed {after:?} after the last response"
        );
        drop((keep_h1, keep_h2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_outlives_the_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use service_sdk::routing::get as route_get;
    use service_sdk::ws::{WebSocket, WebSocketUpgrade};
    use tokio_tungstenite::tungstenite::Message;

    let gw = gateway_with("h2ws", "[timeouts]\nidle = \"1s\"\n").await;
    let echo = Router::new().route(
        "/h2ws",
        route_get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket: WebSocket| async move {
                while let Some(Ok(m)) = socket.recv().await {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
            })
        }),
    );
    let _b = BackendHandle::start("h2ws", echo, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("h2ws", 1).await;

    let tcp = TcpStream::connect(gw.public).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::connect(format!("http://{}/h2ws", gw.public))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    // The tunnel's response ended long ago; its stream is still a request
    // in progress, so `timeouts.idle` must not end the connection under it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("after")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo after the idle timeout");
    assert_eq!(echoed.unwrap().unwrap(), Message::text("after"));
    drop(tx);
}
