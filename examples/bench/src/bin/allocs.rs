//! `allocs`: heap allocations per forwarded unary request on the gateway's
//! `Send` path, before and after the borrowing encoder and its codec
//! (`gateway_core::convert::wire`).
//!
//! ```sh
//! cargo run --release -p bench --bin allocs -- [--requests N] [--mode convert|grpc|both] [--path old|new|both]
//! ```
//!
//! * `convert`: the conversion alone, in one thread. Old: `request_to_wire`,
//!   prost-encode into an 8 KiB buffer (what `tonic_prost::ProstCodec`
//!   does), decode a `ForwardingResp` from an 8 KiB buffer,
//!   `response_from_wire`. New: `EncodedRequest::encode`, one attempt
//!   written into a buffer of its exact size, `wire::decode_response` from
//!   a 1 KiB buffer (names and values sliced from it), `response_from_wire`.
//! * `grpc`: the whole client side of one `Send` over a real tonic
//!   `Channel` (HTTP/2 on loopback) to an in-process backend: old through
//!   the generated `ForwardingServiceClient::send`, new through
//!   `convert::wire::send`, both followed by `response_from_wire`. Only the
//!   client's thread is counted (the channel's tasks run there too, as in
//!   the gateway); the backend runs on its own, uncounted thread.
//!
//! The request is a typical small GET: `host`, `user-agent`, `accept`,
//! `accept-encoding`, an `x-request-id`, no body; the answer is the
//! benchmark backend's (200, `content-type: text/plain`, 64-byte body).
//! Prints one JSON line per mode and path: allocations (and reallocations)
//! and bytes allocated per request.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use gateway_core::convert::wire::{self, EncodedRequest};
use gateway_core::convert::{RequestMeta, ResponseTarget, request_to_wire, response_from_wire};
use http::Request;
use prost::Message;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};

/// Counts the allocations of threads that asked to be counted.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are atomics and the flag a const thread-local (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(
                new_size.saturating_sub(layout.size()) as u64,
                Ordering::Relaxed,
            );
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Convert,
    Grpc,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Old,
    New,
    Both,
}

#[derive(Debug, Parser)]
#[command(about = "Allocations per forwarded unary request, old and new Send path")]
struct Args {
    /// Requests measured per path (after as many warm-up requests).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    #[arg(long = "path", value_enum, default_value_t = Which::Both)]
    which: Which,
}

/// Counts what `f` allocates on this thread, per call, over `n` calls.
fn measure(n: u64, mut f: impl FnMut()) -> (f64, f64, f64) {
    COUNTED.with(|c| c.set(true));
    let (a, r, b) = (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        f();
    }
    COUNTED.with(|c| c.set(false));
    let per = |now: u64, then: u64| (now - then) as f64 / n.max(1) as f64;
    (
        per(ALLOCS.load(Ordering::Relaxed), a),
        per(REALLOCS.load(Ordering::Relaxed), r),
        per(BYTES.load(Ordering::Relaxed), b),
    )
}

fn report(mode: &str, path: &str, n: u64, (allocs, reallocs, bytes): (f64, f64, f64)) {
    println!(
        "{{\"mode\":\"{mode}\",\"path\":\"{path}\",\"requests\":{n},\"allocs_per_req\":{allocs:.2},\"reallocs_per_req\":{reallocs:.2},\"bytes_per_req\":{bytes:.0}}}"
    );
}

fn request() -> http::request::Parts {
    Request::builder()
        .method("GET")
        .uri("/bench/x")
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "loadgen/0.1")
        .header("accept", "*/*")
        .header("accept-encoding", "gzip")
        .header("x-request-id", "0b7f4d1e-5c2a-4f8e-9a61-3d2c7e5b9f10")
        .body(())
        .expect("valid request")
        .into_parts()
        .0
}

fn meta() -> RequestMeta<'static> {
    RequestMeta {
        request_id: "0b7f4d1e-5c2a-4f8e-9a61-3d2c7e5b9f10",
        peer: "127.0.0.1:40000".parse().expect("address"),
        trusted_peer: false,
        node_id: "gw-bench",
        service: "bench",
        matched_prefix: "",
        deadline: Some(Duration::from_secs(30)),
        trace: None,
    }
}

fn answer() -> pb::ForwardingResp {
    pb::ForwardingResp {
        status: 200,
        headers: vec![pb::Header {
            name: "content-type".into(),
            value: Bytes::from_static(b"text/plain"),
        }],
        body: Bytes::from(vec![b'x'; 64]),
        trailers: vec![],
    }
}

/// A gRPC frame as tonic reads it: copied out of the DATA frame into a
/// buffer of the decoder's size, the message split off it.
fn decode_like_tonic(frame: &[u8], buffer: usize) -> pb::ForwardingResp {
    let mut buf = BytesMut::with_capacity(buffer);
    buf.put_slice(frame);
    let _header = buf.split_to(tonic::codec::HEADER_SIZE);
    pb::ForwardingResp::decode(&mut buf).expect("decodes")
}

fn convert_mode(n: u64, which: Which) {
    let parts = request();
    let meta = meta();
    let target = ResponseTarget::of(&parts);
    let mut frame = vec![0u8; tonic::codec::HEADER_SIZE];
    answer().encode(&mut frame).expect("encodes");
    let old = || {
        let msg = request_to_wire(&parts, Bytes::new(), None, &meta).expect("converts");
        let mut buf = BytesMut::with_capacity(8 * 1024);
        buf.put_slice(&[0; tonic::codec::HEADER_SIZE]);
        msg.encode(&mut buf).expect("encodes");
        std::hint::black_box(buf.split().freeze());
        let resp = decode_like_tonic(&frame, 8 * 1024);
        std::hint::black_box(response_from_wire(resp, target).expect("valid"));
    };
    let new = || {
        let enc = EncodedRequest::encode(&parts, Bytes::new(), None, &meta).expect("converts");
        std::hint::black_box(enc.to_bytes(29_999));
        // tonic's decode buffer of DECODE_BUFFER bytes, the message split off.
        let mut buf = BytesMut::with_capacity(wire::DECODE_BUFFER);
        buf.put_slice(&frame);
        let _header = buf.split_to(tonic::codec::HEADER_SIZE);
        let resp = wire::decode_response(buf.freeze()).expect("decodes");
        std::hint::black_box(response_from_wire(resp, target).expect("valid"));
    };
    if which != Which::New {
        measure(n, old);
        report("convert", "old", n, measure(n, old));
    }
    if which != Which::Old {
        measure(n, new);
        report("convert", "new", n, measure(n, new));
    }
}

struct Backend(pb::ForwardingResp);

#[tonic::async_trait]
impl ForwardingService for Backend {
    async fn send(
        &self,
        _req: tonic::Request<pb::ForwardingReq>,
    ) -> Result<tonic::Response<pb::ForwardingResp>, tonic::Status> {
        Ok(tonic::Response::new(self.0.clone()))
    }
}

/// Serves the backend on its own thread and runtime; returns its address.
fn start_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("non-blocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            tonic::transport::Server::builder()
                .add_service(ForwardingServiceServer::new(Backend(answer())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("serves");
        });
    });
    addr
}

fn grpc_mode(n: u64, which: Which) {
    let addr = start_backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        let parts = request();
        let meta = meta();
        let target = ResponseTarget::of(&parts);
        let timeout = Duration::from_secs(30);
        let client = ForwardingServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        // One request at a time; each awaited to completion inside the count.
        async fn count<F: std::future::Future<Output = ()>>(
            n: u64,
            mut f: impl FnMut() -> F,
        ) -> (f64, f64, f64) {
            for _ in 0..n {
                f().await;
            }
            COUNTED.with(|c| c.set(true));
            let (a, r, b) = (
                ALLOCS.load(Ordering::Relaxed),
                REALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            for _ in 0..n {
                f().await;
            }
            COUNTED.with(|c| c.set(false));
            let per = |now: u64, then: u64| (now - then) as f64 / n.max(1) as f64;
            (
                per(ALLOCS.load(Ordering::Relaxed), a),
                per(REALLOCS.load(Ordering::Relaxed), r),
                per(BYTES.load(Ordering::Relaxed), b),
            )
        }
        if which != Which::New {
            let old = || {
                let mut client = client.clone();
                let (parts, meta) = (&parts, &meta);
                async move {
                    let mut msg =
                        request_to_wire(parts, Bytes::new(), None, meta).expect("converts");
                    if let Some(ctx) = msg.context.as_mut() {
                        ctx.deadline_ms = 29_999;
                    }
                    let mut call = tonic::Request::new(msg);
                    call.set_timeout(timeout);
                    let resp = client.send(call).await.expect("answered");
                    std::hint::black_box(
                        response_from_wire(resp.into_inner(), target).expect("valid"),
                    );
                }
            };
            report("grpc", "old", n, count(n, old).await);
        }
        if which != Which::Old {
            let new = || {
                let channel = channel.clone();
                let (parts, meta) = (&parts, &meta);
                async move {
                    let enc =
                        EncodedRequest::encode(parts, Bytes::new(), None, meta).expect("converts");
                    let resp = wire::send(channel, enc.attempt(29_999), timeout)
                        .await
                        .expect("answered");
                    std::hint::black_box(
                        response_from_wire(resp.into_inner(), target).expect("valid"),
                    );
                }
            };
            report("grpc", "new", n, count(n, new).await);
        }
    });
}

fn main() {
    let args = Args::parse();
    if matches!(args.mode, Mode::Convert | Mode::Both) {
        convert_mode(args.requests, args.which);
    }
    if matches!(args.mode, Mode::Grpc | Mode::Both) {
        grpc_mode(args.requests, args.which);
    }
}
