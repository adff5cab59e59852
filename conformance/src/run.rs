//! Runs cases against a backend over gRPC, as a gateway would call it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use proto::v1::stream_request::Frame as In;
use proto::v1::stream_response::Frame as Out;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::case::{CallCheck, Case, Field, Planned, RequestSpec, Rpc};

/// The verdict on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything expected came back.
    Pass,
    /// What differed, one line each: `what: expected X, got Y`.
    Fail(Vec<String>),
    /// Not run, and why.
    Skip(String),
}

/// One case's name and verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case (with its RPC when it names several).
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
}

impl Outcome {
    /// The line(s) printed for this case: `PASS name`, `SKIP name: why`,
    /// or `FAIL name` and one indented line per difference.
    pub fn report(&self) -> String {
        match &self.verdict {
            Verdict::Pass => format!("PASS {}", self.name),
            Verdict::Skip(why) => format!("SKIP {}: {why}", self.name),
            Verdict::Fail(lines) => {
                let mut s = format!("FAIL {}", self.name);
                for l in lines {
                    let _ = write!(s, "\n       {l}");
                }
                s
            }
        }
    }
}

/// Counts of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Cases passed.
    pub passed: usize,
    /// Cases failed.
    pub failed: usize,
    /// Cases skipped.
    pub skipped: usize,
}

impl Summary {
    /// Counts the outcomes.
    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut s = Self::default();
        for o in outcomes {
            match o.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail(_) => s.failed += 1,
                Verdict::Skip(_) => s.skipped += 1,
            }
        }
        s
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// A backend to check.
#[derive(Clone)]
pub struct Target {
    channel: Channel,
    /// Makes `x-conformance-id`s unique per run, so runs against one
    /// long-lived backend do not read each other's calls.
    run_id: String,
}

impl Target {
    /// Connects lazily to `grpc://host:port` (or `http://host:port`).
    pub fn new(url: &str) -> Result<Self, String> {
        let http = match url.strip_prefix("grpc://") {
            Some(rest) => format!("http://{rest}"),
            None => url.to_owned(),
        };
        let channel = tonic::transport::Endpoint::from_shared(http)
            .map_err(|e| format!("target {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Self {
            channel,
            run_id: format!("{}-{nanos}", std::process::id()),
        })
    }

    /// Fails, saying why, when nothing accepts an HTTP/2 connection at the
    /// target: better one clear error than every case failing alike.
    pub async fn reachable(&self) -> Result<(), String> {
        let mut client = HealthClient::new(self.channel.clone());
        let req = tonic_health::pb::HealthCheckRequest::default();
        match tokio::time::timeout(Duration::from_secs(10), client.check(req)).await {
            Err(_) => Err("no answer within 10 s".into()),
            // A transport failure; any gRPC answer (even an error) will do.
            Ok(Err(s)) if s.code() == Code::Unavailable => Err(s.message().to_owned()),
            Ok(_) => Ok(()),
        }
    }

    /// The suffix that makes this run's call ids unique.
    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    fn forwarding(&self) -> ForwardingServiceClient<Channel> {
        ForwardingServiceClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Runs the cases one after the other (several measure time), calling
    /// `each` with every outcome as it is known.
    pub async fn run_all(&self, cases: &[Planned], mut each: impl FnMut(&Outcome)) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(cases.len());
        for p in cases {
            let verdict = self.run(p).await;
            let o = Outcome {
                name: p.name.clone(),
                verdict,
            };
            each(&o);
            out.push(o);
        }
        out
    }

    /// Runs one case.
    pub async fn run(&self, p: &Planned) -> Verdict {
        let case = &p.case;
        if p.rpc == Rpc::Health {
            return self.health(case).await;
        }
        let call_id = case
            .call
            .as_ref()
            .map(|c| format!("{}-{}", c.id, self.run_id));
        let sent = match Sent::build(&case.request, call_id.as_deref()) {
            Ok(s) => s,
            Err(e) => return Verdict::Fail(vec![format!("the case is invalid: {e}")]),
        };
        let mut got = Got::default();
        let mut fails = Vec::new();
        let stalled = match p.rpc {
            Rpc::Send => {
                self.send(&sent, &case.request, &mut got).await;
                None
            }
            _ => self.stream(&sent, case, call_id.as_deref(), &mut got).await,
        };
        if p.rpc == Rpc::Stream && got.code == Some(Code::Unimplemented) && got.head.is_none() {
            return Verdict::Skip("the backend does not implement Stream".into());
        }
        check(case, p.rpc, &sent, &got, &mut fails);
        if let Some(stalled) = stalled {
            fails.extend(stalled);
        } else if let (Some(check), Some(id)) = (&case.call, &call_id) {
            fails.extend(self.check_call(check, id).await);
        }
        if fails.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(fails)
        }
    }

    async fn health(&self, case: &Case) -> Verdict {
        let mut client = HealthClient::new(self.channel.clone());
        let req = tonic_health::pb::HealthCheckRequest {
            service: case.health_service.clone(),
        };
        let res = tokio::time::timeout(Duration::from_secs(5), client.check(req)).await;
        let mut got = Got::default();
        let status = match res {
            Err(_) => {
                got.code = Some(Code::DeadlineExceeded);
                got.message = "no answer within 5 s".into();
                None
            }
            Ok(Err(s)) => {
                got.code = Some(s.code());
                got.message = s.message().to_owned();
                None
            }
            Ok(Ok(r)) => {
                got.code = Some(Code::Ok);
                Some(r.into_inner().status())
            }
        };
        let mut fails = Vec::new();
        check_code(&case.expect.grpc, &got, &mut fails);
        if let Some(want) = &case.expect.health {
            let got = match status {
                Some(ServingStatus::Serving) => "serving",
                Some(ServingStatus::NotServing) => "not_serving",
                Some(ServingStatus::ServiceUnknown) => "service_unknown",
                Some(ServingStatus::Unknown) => "unknown",
                None => "no answer",
            };
            if want != got {
                fails.push(format!("health status: expected {want}, got {got}"));
            }
        }
        if fails.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(fails)
        }
    }

    async fn send(&self, sent: &Sent, spec: &RequestSpec, got: &mut Got) {
        let mut msg = sent.head.clone();
        msg.body = sent.body.clone();
        msg.trailers = sent.trailers.clone();
        let mut req = tonic::Request::new(msg);
        if let Some(d) = spec.deadline_ms {
            req.set_timeout(Duration::from_millis(d));
        }
        let started = Instant::now();
        let mut client = self.forwarding();
        let call = async {
            match client.send(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    got.code = Some(Code::Ok);
                    got.body = r.body.to_vec();
                    got.body_frames = usize::from(!r.body.is_empty());
                    got.trailers = Some(r.trailers.clone());
                    got.head = Some(pb::ForwardingResp {
                        body: Bytes::new(),
                        trailers: vec![],
                        ..r
                    });
                }
                Err(s) => {
                    got.code = Some(s.code());
                    got.message = s.message().to_owned();
                }
            }
        };
        let how = give_up_after(spec, call).await;
        got.gave_up(how);
        got.elapsed = started.elapsed();
    }

    /// Runs a `Stream` case. With `stall_after_head_ms`, returns what the
    /// call check found while the answer waited.
    async fn stream(
        &self,
        sent: &Sent,
        case: &Case,
        call_id: Option<&str>,
        got: &mut Got,
    ) -> Option<Vec<String>> {
        let spec = &case.request;
        let (tx, rx) = mpsc::channel::<pb::StreamRequest>(4);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(d) = spec.deadline_ms {
            req.set_timeout(Duration::from_millis(d));
        }
        let frames = sent.frames(spec);
        // The request frames go out beside the answer, as a gateway sends
        // them: the backend may answer before it has read them all.
        let sender = tokio::spawn(async move {
            for f in frames {
                if tx.send(pb::StreamRequest { frame: Some(f) }).await.is_err() {
                    return;
                }
            }
            // Dropping `tx` half-closes the request stream.
        });
        let started = Instant::now();
        let mut client = self.forwarding();
        let mut stalled = None;
        let call = async {
            let mut inbound = match client.stream(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    got.code = Some(s.code());
                    got.message = s.message().to_owned();
                    return;
                }
            };
            loop {
                let frame = match inbound.message().await {
                    Ok(Some(pb::StreamResponse { frame })) => frame,
                    Ok(None) => {
                        got.code = Some(Code::Ok);
                        return;
                    }
                    Err(s) => {
                        got.code = Some(s.code());
                        got.message = s.message().to_owned();
                        return;
                    }
                };
                match frame {
                    Some(Out::Head(mut h)) if got.head.is_none() => {
                        if !h.body.is_empty() {
                            got.body_piece(&h.body, started);
                        }
                        if !h.trailers.is_empty() {
                            got.protocol.push("trailers in the head".into());
                        }
                        h.body = Bytes::new();
                        got.head = Some(h);
                        if let Some(ms) = spec.stall_after_head_ms {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            if let (Some(check), Some(id)) = (&case.call, call_id) {
                                stalled = Some(self.check_call(check, id).await);
                            }
                            got.code = Some(Code::Cancelled);
                            got.message = "cancelled by the kit after stalling".into();
                            got.cancelled_by_kit = true;
                            return;
                        }
                    }
                    Some(Out::Head(_)) => got.protocol.push("a second head".into()),
                    Some(_) if got.head.is_none() => {
                        got.protocol.push("a frame before the head".into())
                    }
                    Some(Out::Body(c)) => {
                        if got.ended {
                            got.protocol.push("a body frame after end".into());
                        }
                        if !c.data.is_empty() {
                            got.body_piece(&c.data, started);
                        }
                    }
                    Some(Out::End(e)) => {
                        if got.ended {
                            got.protocol.push("a second end".into());
                        }
                        got.ended = true;
                        got.trailers = Some(e.trailers);
                    }
                    Some(Out::Message(_) | Out::Close(_)) => got
                        .protocol
                        .push("a WebSocket frame in a plain exchange".into()),
                    None => got.protocol.push("an empty frame".into()),
                }
            }
        };
        let how = give_up_after(spec, call).await;
        got.gave_up(how);
        got.elapsed = started.elapsed();
        sender.abort();
        stalled
    }

    /// Polls `GET /conformance/calls/{id}` until the state is the one
    /// expected or the time is up; then checks it and the bytes sent.
    pub(crate) async fn check_call(&self, check: &CallCheck, id: &str) -> Vec<String> {
        let within = Duration::from_millis(check.within_ms.unwrap_or(2000));
        let deadline = Instant::now() + within;
        let last = loop {
            let req = pb::ForwardingReq {
                protocol_version: proto::PROTOCOL_VERSION,
                method: "GET".into(),
                path: format!("/conformance/calls/{id}"),
                ..Default::default()
            };
            let mut client = self.forwarding();
            let answer = tokio::time::timeout(Duration::from_secs(2), client.send(req)).await;
            let parsed = match answer {
                Ok(Ok(r)) => serde_json::from_slice::<serde_json::Value>(&r.into_inner().body)
                    .map_err(|e| format!("not JSON: {e}")),
                Ok(Err(s)) => Err(format!("gRPC {:?}: {}", s.code(), s.message())),
                Err(_) => Err("no answer within 2 s".into()),
            };
            let reached = matches!(&parsed, Ok(v) if v["state"] == check.state.as_str());
            if reached || Instant::now() >= deadline {
                break parsed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut fails = Vec::new();
        match last {
            Ok(v) => {
                if v["state"] != check.state.as_str() {
                    fails.push(format!(
                        "call state within {} ms: expected {}, got {}",
                        within.as_millis(),
                        check.state,
                        v["state"]
                    ));
                }
                if let Some(max) = check.max_body_bytes_sent {
                    let sent = v["body_bytes_sent"].as_u64().unwrap_or(u64::MAX);
                    if sent > max {
                        fails.push(format!(
                            "body bytes produced while the client did not read: expected at most {max}, got {sent}"
                        ));
                    }
                }
            }
            Err(e) => fails.push(format!("GET /conformance/calls/{id}: {e}")),
        }
        fails
    }
}

/// Runs `call`, giving up (dropping it: the call is cancelled) at the
/// request's deadline or cancel time, as a gateway does. Returns when and
/// how it gave up.
pub(crate) async fn give_up_after(
    spec: &RequestSpec,
    call: impl Future<Output = ()>,
) -> Option<(u64, Code)> {
    let limits = [
        spec.deadline_ms.map(|d| (d, Code::DeadlineExceeded)),
        spec.cancel_after_ms.map(|c| (c, Code::Cancelled)),
    ];
    let Some((ms, code)) = limits.into_iter().flatten().min_by_key(|(ms, _)| *ms) else {
        call.await;
        return None;
    };
    match tokio::time::timeout(Duration::from_millis(ms), call).await {
        Ok(()) => None,
        Err(_) => Some((ms, code)),
    }
}

impl Got {
    pub(crate) fn gave_up(&mut self, how: Option<(u64, Code)>) {
        if let Some((ms, code)) = how {
            self.code = Some(code);
            self.message = format!("the kit gave up after {ms} ms");
            self.cancelled_by_kit = true;
        }
    }
}

/// What the kit sends: the head, the body, the trailers.
pub(crate) struct Sent {
    pub(crate) head: pb::ForwardingReq,
    pub(crate) body: Bytes,
    pub(crate) trailers: Vec<pb::Header>,
}

impl Sent {
    pub(crate) fn build(spec: &RequestSpec, call_id: Option<&str>) -> Result<Self, String> {
        let body = match (&spec.body, &spec.body_hex, spec.body_pattern) {
            (None, None, None) => Bytes::new(),
            (Some(t), None, None) => Bytes::from(t.clone()),
            (None, Some(h), None) => Bytes::from(crate::hex_decode(h)?),
            (None, None, Some(n)) => Bytes::from(crate::pattern(0, n)),
            _ => return Err("give one of body, body_hex, body_pattern".into()),
        };
        const KINDS: [&str; 6] = [
            "head",
            "head_with_trailers",
            "body",
            "end",
            "message",
            "close",
        ];
        if let Some(bad) = spec
            .frames
            .iter()
            .flatten()
            .find(|k| !KINDS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown frame kind {bad:?} (one of {})",
                KINDS.join(", ")
            ));
        }
        let mut headers = wire_fields(&spec.headers)?;
        if let Some(id) = call_id {
            headers.push(pb::Header {
                name: "x-conformance-id".into(),
                value: Bytes::from(id.to_owned()),
            });
        }
        let head = pb::ForwardingReq {
            protocol_version: proto::PROTOCOL_VERSION,
            method: spec.method.clone().unwrap_or_else(|| "GET".into()),
            scheme: "http".into(),
            authority: "conformance.test".into(),
            path: spec
                .path
                .clone()
                .unwrap_or_else(|| "/conformance/echo".into()),
            query: spec.query.clone(),
            has_query: spec.has_query.unwrap_or(!spec.query.is_empty()),
            version: pb::HttpVersion::Http11 as i32,
            headers,
            context: Some(pb::RequestContext {
                request_id: "conformance-request".into(),
                client_addresses: vec!["127.0.0.1:1".into()],
                deadline_ms: spec.deadline_ms.unwrap_or(0),
                gateway_node: "gateway-conformance".into(),
                service: "conformance".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Self {
            head,
            body,
            trailers: wire_fields(&spec.trailers)?,
        })
    }

    /// The `Stream` request frames: as listed by the case, or `head`, the
    /// body in `chunks` frames, `end` with the trailers.
    fn frames(&self, spec: &RequestSpec) -> Vec<In> {
        let end = || {
            In::End(pb::StreamEnd {
                trailers: self.trailers.clone(),
            })
        };
        if let Some(kinds) = &spec.frames {
            return kinds
                .iter()
                .map(|k| match k.as_str() {
                    "head" => In::Head(self.head.clone()),
                    "head_with_trailers" => In::Head(pb::ForwardingReq {
                        trailers: vec![pb::Header {
                            name: "x-t".into(),
                            value: Bytes::from_static(b"1"),
                        }],
                        ..self.head.clone()
                    }),
                    "body" => In::Body(pb::BodyChunk {
                        data: Bytes::from_static(b"x"),
                    }),
                    "end" => end(),
                    "message" => In::Message(pb::WebSocketMessage {
                        data: Some(pb::web_socket_message::Data::Text("x".into())),
                    }),
                    "close" => In::Close(pb::WebSocketClose {
                        code: 1000,
                        reason: String::new(),
                    }),
                    // `Sent::build` refused every other kind.
                    _ => In::Body(pb::BodyChunk { data: Bytes::new() }),
                })
                .collect();
        }
        let mut out = vec![In::Head(self.head.clone())];
        let n = spec.chunks.unwrap_or(1).max(1);
        let len = self.body.len();
        for i in 0..n {
            let (a, b) = (i * len / n, (i + 1) * len / n);
            if a < b {
                out.push(In::Body(pb::BodyChunk {
                    data: self.body.slice(a..b),
                }));
            }
        }
        out.push(end());
        out
    }
}

fn wire_fields(fields: &[Field]) -> Result<Vec<pb::Header>, String> {
    fields
        .iter()
        .map(|f| {
            Ok(pb::Header {
                name: f.name.clone(),
                value: Bytes::from(f.bytes()?),
            })
        })
        .collect()
}

/// What came back.
#[derive(Default)]
pub(crate) struct Got {
    /// The call's gRPC status (None: it never ended).
    pub(crate) code: Option<Code>,
    pub(crate) message: String,
    /// The answer's head (`Send`: the answer without body and trailers).
    pub(crate) head: Option<pb::ForwardingResp>,
    pub(crate) body: Vec<u8>,
    pub(crate) body_frames: usize,
    pub(crate) first_body_at: Option<Duration>,
    pub(crate) last_body_at: Option<Duration>,
    pub(crate) trailers: Option<Vec<pb::Header>>,
    pub(crate) ended: bool,
    pub(crate) elapsed: Duration,
    /// Breaches of the frame order of `Stream`.
    pub(crate) protocol: Vec<String>,
    pub(crate) cancelled_by_kit: bool,
}

impl Got {
    pub(crate) fn body_piece(&mut self, data: &[u8], started: Instant) {
        let at = started.elapsed();
        self.first_body_at.get_or_insert(at);
        self.last_body_at = Some(at);
        self.body_frames += 1;
        self.body.extend_from_slice(data);
    }
}

fn code_name(code: Code) -> String {
    // `Code`'s Debug is CamelCase (`InvalidArgument`); cases use snake case.
    let mut s = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn check_code(want: &Option<Vec<String>>, got: &Got, fails: &mut Vec<String>) {
    let want = want.clone().unwrap_or_else(|| vec!["ok".into()]);
    let got_name = got.code.map_or("none".into(), code_name);
    let ok = want
        .iter()
        .any(|w| *w == got_name || (w == "not_ok" && got.code.is_some_and(|c| c != Code::Ok)));
    if !ok {
        let mut line = format!(
            "gRPC status: expected {}, got {got_name}",
            want.join(" or ")
        );
        if !got.message.is_empty() {
            let _ = write!(line, " ({:?})", got.message);
        }
        fails.push(line);
    }
}

/// Compares every expectation of `case` with `got`.
pub(crate) fn check(case: &Case, rpc: Rpc, sent: &Sent, got: &Got, fails: &mut Vec<String>) {
    let e = &case.expect;
    check_code(&e.grpc, got, fails);
    for p in &got.protocol {
        fails.push(format!("Stream frames: {p}"));
    }
    if e.head_then_fail == Some(true) && got.head.is_none() {
        fails.push(format!(
            "head before the failure: expected a head, got none ({:?})",
            got.message
        ));
    }
    if let Some(ms) = e.within_ms
        && got.elapsed > Duration::from_millis(ms)
    {
        fails.push(format!(
            "time: expected the call to end within {ms} ms, got {} ms",
            got.elapsed.as_millis()
        ));
    }
    let wants_answer = e.status.is_some()
        || e.headers.is_some()
        || e.body.is_some()
        || e.body_pattern.is_some()
        || e.echo.is_some();
    let Some(head) = &got.head else {
        if wants_answer {
            fails.push("answer: expected one, got none".into());
        }
        return;
    };
    if let Some(status) = e.status {
        // 0 is read as 200 by the gateway (forwarding.proto).
        let got_status = if head.status == 0 { 200 } else { head.status };
        if got_status != status {
            fails.push(format!("HTTP status: expected {status}, got {got_status}"));
        }
    }
    if let Some(want) = &e.headers {
        compare_fields("response headers", want, &head.headers, fails);
    }
    if let Some(want) = &e.trailers {
        let got_trailers = got.trailers.clone().unwrap_or_default();
        compare_fields("response trailers", want, &got_trailers, fails);
    }
    if let Some(n) = e.body_pattern
        && (got.body.len() != n || !crate::is_pattern(0, &got.body))
    {
        let at = got
            .body
            .iter()
            .enumerate()
            .find(|(i, b)| usize::from(**b) != i % 251)
            .map_or(String::new(), |(i, _)| format!(", first wrong byte at {i}"));
        fails.push(format!(
            "body: expected the pattern of {n} bytes, got {} bytes{at}",
            got.body.len()
        ));
    }
    if let Some(text) = &e.body
        && got.body != text.as_bytes()
    {
        fails.push(format!(
            "body: expected {text:?}, got {:?}",
            shorten(&String::from_utf8_lossy(&got.body))
        ));
    }
    if rpc == Rpc::Stream {
        if let Some(n) = e.body_frames
            && got.body_frames != n
        {
            fails.push(format!(
                "body frames: expected {n}, got {}",
                got.body_frames
            ));
        }
        if let Some(ms) = e.first_body_within_ms {
            match got.first_body_at {
                Some(at) if at <= Duration::from_millis(ms) => {}
                at => fails.push(format!(
                    "first body byte: expected within {ms} ms, got {}",
                    at.map_or("none".into(), |a| format!("{} ms", a.as_millis()))
                )),
            }
        }
        if let Some(ms) = e.last_body_after_ms {
            match got.last_body_at {
                Some(at) if at >= Duration::from_millis(ms) => {}
                at => fails.push(format!(
                    "last body byte: expected after {ms} ms, got {}",
                    at.map_or("none".into(), |a| format!("{} ms", a.as_millis()))
                )),
            }
        }
    }
    if let Some(want) = &e.echo {
        check_echo(want, sent, &got.body, fails);
    }
}

fn check_echo(want: &toml::Table, sent: &Sent, body: &[u8], fails: &mut Vec<String>) {
    let echo: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            fails.push(format!(
                "echo: expected JSON, got {:?} ({e})",
                shorten(&String::from_utf8_lossy(body))
            ));
            return;
        }
    };
    let mut want = want.clone();
    // The body always: its length and digest must be what was sent.
    want.entry("body_length")
        .or_insert(toml::Value::Integer(sent.body.len() as i64));
    want.entry("body_sha256")
        .or_insert(toml::Value::String(crate::sha256_hex(&sent.body)));
    for (key, value) in &want {
        if key == "headers" || key == "trailers" {
            let fields: Vec<Field> = match value.clone().try_into() {
                Ok(f) => f,
                Err(e) => {
                    fails.push(format!("the case's echo.{key} is invalid: {e}"));
                    continue;
                }
            };
            let got = echo[key.as_str()]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|h| pb::Header {
                            name: h["name"].as_str().unwrap_or_default().to_owned(),
                            value: Bytes::from(
                                crate::hex_decode(h["value"].as_str().unwrap_or_default())
                                    .unwrap_or_default(),
                            ),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            compare_fields(&format!("echoed request {key}"), &fields, &got, fails);
            continue;
        }
        let want_json = match serde_json::to_value(value) {
            Ok(v) => v,
            Err(e) => {
                fails.push(format!("the case's echo.{key} is invalid: {e}"));
                continue;
            }
        };
        if echo[key.as_str()] != want_json {
            fails.push(format!(
                "echoed {key}: expected {want_json}, got {}",
                echo[key.as_str()]
            ));
        }
    }
}

/// Compares `got`, restricted to the names in `want`, with `want`: for
/// each name the values in order, duplicates included. The interleaving of
/// different names carries no meaning (forwarding.proto, `Header`: the
/// gateway groups fields by name), so it is not compared.
fn compare_fields(what: &str, want: &[Field], got: &[pb::Header], fails: &mut Vec<String>) {
    let names = dedup(
        &want
            .iter()
            .map(|f| f.name.to_ascii_lowercase())
            .collect::<Vec<_>>(),
    );
    let want: Vec<(String, Vec<u8>)> = want
        .iter()
        .map(|f| (f.name.to_ascii_lowercase(), f.bytes().unwrap_or_default()))
        .collect();
    let got: Vec<(String, Vec<u8>)> = got
        .iter()
        .filter(|h| names.contains(&h.name.to_ascii_lowercase()))
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let by_name = |list: &[(String, Vec<u8>)], name: &str| -> Vec<Vec<u8>> {
        list.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    if names.iter().any(|n| by_name(&want, n) != by_name(&got, n)) {
        fails.push(format!(
            "{what} named {}: expected {}, got {}",
            names.join(", "),
            show_fields(&want),
            show_fields(&got)
        ));
    }
}

fn dedup(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

fn show_fields(fields: &[(String, Vec<u8>)]) -> String {
    let shown: Vec<String> = fields
        .iter()
        .map(|(n, v)| match std::str::from_utf8(v) {
            Ok(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b)) => format!("{n}: {s}"),
            _ => format!("{n}: hex {}", crate::hex(v)),
        })
        .collect();
    format!("[{}]", shown.join("; "))
}

fn shorten(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_owned();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
