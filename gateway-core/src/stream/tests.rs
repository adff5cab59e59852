use super::*;
use futures_util::StreamExt;
use http_body_util::StreamBody as FrameStream;
use proptest::prelude::*;
use std::convert::Infallible;

fn limits() -> StreamLimits {
    StreamLimits {
        head_timeout: Duration::from_secs(30),
        idle: Duration::from_secs(300),
        max_deadline: Instant::now() + Duration::from_secs(3600),
    }
}

fn body_of(
    chunks: Vec<Vec<u8>>,
    trailers: Option<HeaderMap>,
) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static {
    let data = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
    let tail = trailers.map(|t| Ok(Frame::trailers(t)));
    FrameStream::new(futures_util::stream::iter(data.chain(tail)))
}

/// Runs the request side to its end: the frames an attempt sends upstream.
async fn frames_of<B>(body: B, max: u64) -> (Vec<StreamRequest>, Arc<Exchange>)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ex = Exchange::new(Instant::now(), limits(), None);
    let head = ForwardingReq {
        method: "POST".into(),
        ..Default::default()
    };
    let frames = RequestFrames::new(head, BodySlot::new(body), max, ex.clone());
    // A cut-off body leaves the stream pending forever: take what is ready.
    let mut out = Vec::new();
    let mut frames = Box::pin(frames);
    while let Some(Some(f)) = frames.next().now_or_never_ready().await {
        out.push(f);
    }
    (out, ex)
}

trait NowOrNever: futures_util::Future + Sized {
    /// Resolves to `Some` when the future completes within a few polls of
    /// yielding, `None` when it stays pending.
    fn now_or_never_ready(self) -> impl futures_util::Future<Output = Option<Self::Output>> {
        async move {
            tokio::time::timeout(Duration::from_millis(50), self)
                .await
                .ok()
        }
    }
}

impl<F: futures_util::Future> NowOrNever for F {}

proptest! {
    /// Any body, cut into any chunks, with or without trailers, goes up as
    /// head, the same bytes in order (no empty chunk), then one `end`
    /// carrying the trailers - and nothing after it.
    #[test]
    fn request_frames_carry_any_body_exactly(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        trailer in proptest::option::of("[a-z]{1,8}"),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let trailers = trailer.as_ref().map(|v| {
                let mut t = HeaderMap::new();
                t.insert("x-sum", v.parse().unwrap());
                t
            });
            let want: Vec<u8> = chunks.concat();
            let (frames, _) = frames_of(body_of(chunks.clone(), trailers), 0).await;
            prop_assert!(matches!(frames.first().and_then(|f| f.frame.as_ref()), Some(stream_request::Frame::Head(_))));
            let mut got = Vec::new();
            let mut ends = 0;
            for f in &frames[1..] {
                match f.frame.as_ref() {
                    Some(stream_request::Frame::Body(c)) => {
                        prop_assert!(ends == 0, "a chunk after end");
                        prop_assert!(!c.data.is_empty(), "an empty chunk");
                        got.extend_from_slice(&c.data);
                    }
                    Some(stream_request::Frame::End(e)) => {
                        ends += 1;
                        let names: Vec<&str> = e.trailers.iter().map(|h| h.name.as_str()).collect();
                        prop_assert_eq!(names.len(), usize::from(trailer.is_some()));
                    }
                    other => prop_assert!(false, "unexpected frame {:?}", other),
                }
            }
            prop_assert_eq!(ends, 1);
            prop_assert_eq!(got, want);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_cut_and_never_ended() {
    let (frames, ex) = frames_of(body_of(vec![vec![1; 600], vec![2; 600]], None), 1000).await;
    assert!(
        frames
            .iter()
            .all(|f| !matches!(f.frame, Some(stream_request::Frame::End(_)))),
        "no end for a cut body"
    );
    assert_eq!(
        ex.take_abort().map(|e| e.kind),
        Some(ErrorKind::BodyTooLarge)
    );
}

#[tokio::test]
async fn a_broken_client_body_aborts_and_never_ends() {
    let data = futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Err(std::io::Error::other("client went away")),
    ]);
    let (frames, ex) = frames_of(FrameStream::new(data), 0).await;
    assert_eq!(frames.len(), 2, "head and the one chunk");
    assert_eq!(ex.take_abort().map(|e| e.kind), Some(ErrorKind::ClientBody));
}

#[tokio::test]
async fn a_taken_body_is_not_retried() {
    let slot = BodySlot::new(body_of(vec![b"x".to_vec()], None));
    assert!(slot.untouched());
    let ex = Exchange::new(Instant::now(), limits(), None);
    let mut first = Box::pin(RequestFrames::new(
        ForwardingReq::default(),
        slot.clone(),
        0,
        ex.clone(),
    ));
    first.next().await; // head: the body is still there
    assert!(slot.untouched());
    first.next().await; // the first chunk: taken
    assert!(!slot.untouched());
    // A second attempt gets a head and nothing else.
    let second = RequestFrames::new(ForwardingReq::default(), slot, 0, ex);
    assert_eq!(second.collect::<Vec<_>>().await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn clocks_end_an_exchange_for_the_reason_that_comes_first() {
    let start = Instant::now();
    let ex = Exchange::new(
        start,
        StreamLimits {
            head_timeout: Duration::from_secs(2),
            idle: Duration::from_secs(10),
            max_deadline: start + Duration::from_secs(100),
        },
        None,
    );
    // Before the body is complete, only idle and the maximum count.
    let e = ex.ended_before_head().await;
    assert!(e.message.contains("nothing flowed"), "{e}");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    // Once it is, the head is due within head_timeout.
    ex.request_complete();
    let at = Instant::now();
    let e = ex.ended_before_head().await;
    assert!(e.message.contains("did not answer"), "{e}");
    assert_eq!(at.elapsed(), Duration::from_secs(2));
}

#[test]
fn response_heads_are_checked() {
    let t = ResponseTarget::default();
    let ok = ForwardingResp {
        status: 200,
        body: Bytes::from_static(b"first"),
        ..Default::default()
    };
    let (status, _, first) = response_head(ok, t).unwrap();
    assert_eq!((status.as_u16(), &first[..]), (200, &b"first"[..]));
    let with_trailers = ForwardingResp {
        status: 200,
        trailers: vec![proto::v1::Header {
            name: "x".into(),
            value: Bytes::from_static(b"y"),
        }],
        ..Default::default()
    };
    assert_eq!(
        response_head(with_trailers, t).unwrap_err().kind,
        ErrorKind::UpstreamInvalidResponse
    );
    let informational = ForwardingResp {
        status: 101,
        ..Default::default()
    };
    assert!(response_head(informational, t).is_err());
}

/// A backend's answer as the bytes of a gRPC response body: each frame
/// length-prefixed, then the status in the trailers.
fn grpc_answer(
    frames: Vec<StreamResponse>,
    status: tonic::Code,
) -> tonic::Streaming<StreamResponse> {
    use prost::Message as _;
    let mut data = Vec::new();
    for f in frames {
        let m = f.encode_to_vec();
        data.push(0u8);
        data.extend_from_slice(&(m.len() as u32).to_be_bytes());
        data.extend_from_slice(&m);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", (status as i32).to_string().parse().unwrap());
    let body = FrameStream::new(futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from(data))),
        Ok(Frame::trailers(trailers)),
    ]));
    tonic::Streaming::new_response(
        tonic_prost::ProstDecoder::<StreamResponse>::default(),
        body,
        http::StatusCode::OK,
        None,
        None,
    )
}

fn chunk_frame(data: Vec<u8>) -> StreamResponse {
    StreamResponse {
        frame: Some(stream_response::Frame::Body(BodyChunk {
            data: data.into(),
        })),
    }
}

async fn client_sees(
    frames: Vec<StreamResponse>,
    status: tonic::Code,
    trailers_ok: bool,
) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
    use http_body_util::BodyExt;
    let ex = Exchange::new(Instant::now(), limits(), None);
    let ep = crate::balance::Endpoint::for_tests();
    let target = ResponseTarget {
        head_request: false,
        trailers: trailers_ok,
    };
    let body = StreamBody::new(
        Bytes::new(),
        grpc_answer(frames, status),
        ex,
        target,
        None,
        "svc".into(),
        ep.start(),
    );
    let c = body.collect().await.map_err(|e| e.to_string())?;
    let t = c.trailers().cloned();
    Ok((c.to_bytes().to_vec(), t))
}

proptest! {
    /// Whatever chunks a backend sends, the client gets exactly those bytes
    /// in order, then the trailers of `end` if it can take trailers; a call
    /// that fails after them is an error, never a complete-looking body.
    #[test]
    fn the_response_body_is_exactly_what_the_backend_sent(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
        with_end in any::<bool>(),
        trailers_ok in any::<bool>(),
        fail in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let mut frames: Vec<StreamResponse> = chunks.iter().cloned().map(chunk_frame).collect();
            if with_end {
                frames.push(StreamResponse {
                    frame: Some(stream_response::Frame::End(StreamEnd {
                        trailers: vec![proto::v1::Header { name: "x-sum".into(), value: Bytes::from_static(b"7") }],
                    })),
                });
            }
            let status = if fail { tonic::Code::Internal } else { tonic::Code::Ok };
            let got = client_sees(frames, status, trailers_ok).await;
            if fail {
                prop_assert!(got.is_err(), "a failed call must abort: {:?}", got);
                return Ok(());
            }
            let (data, trailers) = got.map_err(TestCaseError::fail)?;
            prop_assert_eq!(data, chunks.concat());
            let expect_trailers = with_end && trailers_ok;
            prop_assert_eq!(trailers.is_some(), expect_trailers);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn malformed_answers_abort() {
    let head = StreamResponse {
        frame: Some(stream_response::Frame::Head(ForwardingResp::default())),
    };
    let end = StreamResponse {
        frame: Some(stream_response::Frame::End(StreamEnd::default())),
    };
    for (what, frames) in [
        ("a second head", vec![chunk_frame(b"a".to_vec()), head]),
        (
            "a chunk after end",
            vec![end.clone(), chunk_frame(b"a".to_vec())],
        ),
        ("a second end", vec![end.clone(), end]),
        ("an empty frame", vec![StreamResponse { frame: None }]),
    ] {
        let got = client_sees(frames, tonic::Code::Ok, true).await;
        let e = got.expect_err(what);
        assert!(e.contains("malformed"), "{what}: {e}");
    }
}

/// Streamed bodies are counted chunk by chunk, both ways
/// (`gateway_request_body_bytes_total`, `gateway_response_body_bytes_total`).
#[tokio::test]
async fn streamed_chunks_are_counted_in_the_body_byte_metrics() {
    use http_body_util::BodyExt;
    let metrics = crate::metrics::Metrics::new();
    let ex = Exchange::new(Instant::now(), limits(), None);
    let body = body_of(vec![b"abc".to_vec(), vec![], b"defgh".to_vec()], None);
    let frames = RequestFrames::new(ForwardingReq::default(), BodySlot::new(body), 0, ex)
        .counting(metrics.request_byte_count());
    assert_eq!(
        frames.collect::<Vec<_>>().await.len(),
        4,
        "head, 2 chunks, end"
    );
    assert_eq!(metrics.request_bytes.get(), 8);

    let ep = crate::balance::Endpoint::for_tests();
    let target = ResponseTarget {
        head_request: false,
        trailers: false,
    };
    let ex = Exchange::new(Instant::now(), limits(), None);
    let answer = grpc_answer(
        vec![
            chunk_frame(b"hello".to_vec()),
            chunk_frame(b" world".to_vec()),
        ],
        tonic::Code::Ok,
    );
    let body = StreamBody::new(
        Bytes::from_static(b">"),
        answer,
        ex,
        target,
        None,
        "svc".into(),
        ep.start(),
    )
    .counting(metrics.response_byte_count());
    assert_eq!(body.collect().await.unwrap().to_bytes(), ">hello world");
    assert_eq!(metrics.response_bytes.get(), 12);

    // Off: the counters are not touched.
    metrics.set_enabled(false);
    let ex = Exchange::new(Instant::now(), limits(), None);
    let frames = RequestFrames::new(
        ForwardingReq::default(),
        BodySlot::new(body_of(vec![b"xyz".to_vec()], None)),
        0,
        ex,
    )
    .counting(metrics.request_byte_count());
    frames.collect::<Vec<_>>().await;
    assert_eq!(metrics.request_bytes.get(), 8);
}
