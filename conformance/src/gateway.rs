//! Gateway mode: the same cases over HTTP through a gateway, to the
//! reference backend registered with it.
//!
//! Where [`run`](crate::run) plays the gateway against a backend, this
//! plays the HTTP client against a gateway: each case's request is sent as
//! HTTP/2 (h2c, so trailers travel both ways), the gateway forwards it to
//! the reference backend (whose routes are `stream = true`, so over
//! `Stream`), and the answer is checked against the same expectations.
//! What the backend saw comes back in the echo, and call checks ask the
//! backend directly over gRPC.
//!
//! Cases that HTTP cannot express are skipped, saying why: health (between
//! gateway and backend), raw `Stream` frames, input no HTTP message can
//! carry, and deadlines (HTTP has no deadline header). The gateway's own
//! framing is not the backend's, so `body_frames` is not checked, and a
//! failure after the head may reach the client as a reset without a head.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;

use crate::case::{Planned, Rpc, Rpcs};
use crate::run::{Got, Outcome, Sent, Target, Verdict, check};

/// A gateway to check, and the backend registered behind it.
pub struct GatewayTarget {
    /// `host:port` of the gateway's public listener.
    addr: String,
    backend: Target,
}

type RequestBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl GatewayTarget {
    /// `gateway_url` is `http://host:port` of the public listener; `backend`
    /// the reference backend registered with it.
    pub fn new(gateway_url: &str, backend: Target) -> Result<Self, String> {
        let addr = gateway_url
            .strip_prefix("http://")
            .ok_or_else(|| format!("gateway {gateway_url:?}: expected http://HOST:PORT"))?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self { addr, backend })
    }

    /// Waits until the gateway routes `/conformance` to the backend (its
    /// call record answers), polling for `within` at most.
    pub async fn wait_routable(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(2), self.get_probe()).await;
            let last = match probe {
                Ok(Ok(body)) if body.contains("\"state\"") => return Ok(()),
                Ok(Ok(body)) => format!("answered {body:?}"),
                Ok(Err(e)) => e,
                Err(_) => "no answer within 2 s".into(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "the gateway did not route /conformance to the backend within {} s: {last}",
                    within.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get_probe(&self) -> Result<String, String> {
        let mut sender = self.connect().await?;
        let req = http::Request::get(format!("http://{}/conformance/calls/probe", self.addr))
            .body(StreamBody::new(futures_util::stream::iter(Vec::new())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http2::SendRequest<RequestBody>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2c handshake with {}: {e}", self.addr))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// The runs of `cases` that go over HTTP: one per case, since a case
    /// written for `Send` and `Stream` is one HTTP request (the gateway
    /// picks the RPC).
    pub fn runs(cases: &[Planned]) -> impl Iterator<Item = &Planned> {
        cases.iter().filter(|p| match &p.case.rpc {
            Rpcs::Many(rpcs) => rpcs.first() == Some(&p.rpc),
            Rpcs::One(_) => true,
        })
    }

    /// Runs each case once (see [`GatewayTarget::runs`]), named
    /// `<case> [http]`.
    pub async fn run_all(&self, cases: &[Planned], mut each: impl FnMut(&Outcome)) -> Vec<Outcome> {
        let mut out = Vec::new();
        for p in Self::runs(cases) {
            let o = Outcome {
                name: format!("{} [http]", p.case.name),
                verdict: self.run(p).await,
            };
            each(&o);
            out.push(o);
        }
        out
    }

    async fn run(&self, p: &Planned) -> Verdict {
        let case = &p.case;
        let wants = case
            .expect
            .grpc
            .clone()
            .unwrap_or_else(|| vec!["ok".into()]);
        if p.rpc == Rpc::Health {
            return Verdict::Skip("health checks run between the gateway and the backend".into());
        }
        if case.request.frames.is_some() {
            return Verdict::Skip("raw Stream frames cannot be sent over HTTP".into());
        }
        if wants.iter().any(|w| w == "invalid_argument") {
            return Verdict::Skip("no HTTP request can carry this input".into());
        }
        if case.request.deadline_ms.is_some() {
            return Verdict::Skip("HTTP has no deadline header".into());
        }
        let call_id = case
            .call
            .as_ref()
            .map(|c| format!("{}-{}", c.id, self.backend.run_id()));
        let sent = match Sent::build(&case.request, call_id.as_deref()) {
            Ok(s) => s,
            Err(e) => return Verdict::Fail(vec![format!("the case is invalid: {e}")]),
        };
        let req = match http_request(&self.addr, &sent, case.request.chunks) {
            Ok(r) => r,
            Err(e) => return Verdict::Skip(format!("not an HTTP request: {e}")),
        };
        let mut got = Got::default();
        let started = Instant::now();
        let mut stalled = None;
        let spec = &case.request;
        let exchange = async {
            let mut sender = match self.connect().await {
                Ok(s) => s,
                Err(e) => {
                    got.code = Some(Code::Unavailable);
                    got.message = e;
                    return;
                }
            };
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) => {
                    got.code = Some(Code::Unavailable);
                    got.message = format!("the HTTP request failed: {e}");
                    return;
                }
            };
            let (parts, mut body) = resp.into_parts();
            if matches!(parts.status.as_u16(), 502..=504) {
                // The gateway's own answer: forwarding failed.
                let text = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                got.code = Some(Code::Unavailable);
                got.message = format!(
                    "the gateway answered {}: {}",
                    parts.status,
                    String::from_utf8_lossy(&text)
                );
                return;
            }
            got.head = Some(proto::v1::ForwardingResp {
                status: u32::from(parts.status.as_u16()),
                headers: proto::convert::headers_to_wire(&parts.headers),
                ..Default::default()
            });
            if let Some(ms) = spec.stall_after_head_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if let (Some(check), Some(id)) = (&case.call, &call_id) {
                    stalled = Some(self.backend.check_call(check, id).await);
                }
                got.code = Some(Code::Cancelled);
                got.message = "cancelled by the kit after stalling".into();
                return;
            }
            loop {
                match body.frame().await {
                    None => {
                        got.code = Some(Code::Ok);
                        got.ended = true;
                        return;
                    }
                    Some(Err(e)) => {
                        got.code = Some(Code::Aborted);
                        got.message = format!("the response body broke off: {e}");
                        return;
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            if !data.is_empty() {
                                got.body_piece(&data, started);
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                got.trailers = Some(proto::convert::headers_to_wire(&t));
                            }
                        }
                    },
                }
            }
        };
        let how = crate::run::give_up_after(spec, exchange).await;
        got.gave_up(how);
        got.elapsed = started.elapsed();

        let mut case = case.clone();
        // The gateway's framing of the HTTP body is not the backend's.
        case.expect.body_frames = None;
        // A gateway that sees the backend fail before it has sent the head
        // on may reset the client's stream without one: still an abort,
        // which is what the client must see (forwarding.proto, `Stream`).
        case.expect.head_then_fail = None;
        let mut fails = Vec::new();
        check(&case, Rpc::Stream, &sent, &got, &mut fails);
        if let Some(s) = stalled {
            fails.extend(s);
        } else if let (Some(check), Some(id)) = (&case.call, &call_id) {
            fails.extend(self.backend.check_call(check, id).await);
        }
        if fails.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(fails)
        }
    }
}

/// The case's request as HTTP/2: the body in `chunks` data frames, then
/// the trailers.
fn http_request(
    addr: &str,
    sent: &Sent,
    chunks: Option<usize>,
) -> Result<http::Request<RequestBody>, String> {
    let head = &sent.head;
    let target = if head.has_query {
        format!("{}?{}", head.path, head.query)
    } else {
        head.path.clone()
    };
    let mut req = http::Request::builder()
        .method(head.method.as_str())
        .uri(format!("http://{addr}{target}"))
        .version(http::Version::HTTP_2);
    for h in &head.headers {
        req = req.header(h.name.as_str(), h.value.as_ref());
    }
    let mut frames = Vec::new();
    let n = chunks.unwrap_or(1).max(1);
    let len = sent.body.len();
    for i in 0..n {
        let (a, b) = (i * len / n, (i + 1) * len / n);
        if a < b {
            frames.push(Ok(Frame::data(sent.body.slice(a..b))));
        }
    }
    if !sent.trailers.is_empty() {
        let t = proto::convert::headers_from_wire(&sent.trailers).map_err(|e| e.to_string())?;
        frames.push(Ok(Frame::trailers(t)));
    }
    req.body(StreamBody::new(futures_util::stream::iter(frames)))
        .map_err(|e| e.to_string())
}
