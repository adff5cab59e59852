//! The conformance behaviour (`proto/proto/forwarding/v1/CONFORMANCE.md`)
//! as a [`service_sdk::Handler`]: the reference backend.
//!
//! It is written as an ordinary SDK handler (plain `http` request in,
//! response out, the body a stream), so a case that fails against it is a
//! fault of the SDK or of the kit, never of a special path around them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;
use service_sdk::{Body, ForwardContext, Handler, Request, Response};

/// The states of `GET /conformance/calls/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Completed,
    Cancelled,
    Aborted,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Completed => "completed",
            State::Cancelled => "cancelled",
            State::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CallRecord {
    state: State,
    body_bytes_sent: u64,
}

/// Calls recorded under `x-conformance-id`. A test backend sees a few
/// hundred; the oldest are forgotten past [`MAX_CALLS`] so a long run does
/// not grow without bound.
#[derive(Default)]
struct Calls {
    records: HashMap<String, CallRecord>,
    order: VecDeque<String>,
}

const MAX_CALLS: usize = 10_000;

type SharedCalls = Arc<Mutex<Calls>>;

fn with_calls<T>(calls: &SharedCalls, f: impl FnOnce(&mut Calls) -> T) -> T {
    // A panic elsewhere cannot leave the map half-updated: every update is
    // one insert or one field write.
    f(&mut calls.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Follows one call. Dropped before [`Tracker::finish`] - the SDK dropped
/// the handler or its response body because the call was cancelled or its
/// deadline passed - it records `cancelled`.
struct Tracker {
    calls: SharedCalls,
    id: Option<String>,
    finished: bool,
}

impl Tracker {
    fn new(calls: SharedCalls, id: Option<String>) -> Self {
        if let Some(id) = &id {
            with_calls(&calls, |c| {
                if c.records.len() >= MAX_CALLS
                    && let Some(old) = c.order.pop_front()
                {
                    c.records.remove(&old);
                }
                c.order.push_back(id.clone());
                c.records.insert(
                    id.clone(),
                    CallRecord {
                        state: State::Running,
                        body_bytes_sent: 0,
                    },
                );
            });
        }
        Self {
            calls,
            id,
            finished: false,
        }
    }

    fn update(&self, f: impl FnOnce(&mut CallRecord)) {
        if let Some(id) = &self.id {
            with_calls(&self.calls, |c| {
                if let Some(r) = c.records.get_mut(id) {
                    f(r);
                }
            });
        }
    }

    fn sent(&self, n: usize) {
        self.update(|r| r.body_bytes_sent += n as u64);
    }

    fn finish(&mut self, state: State) {
        self.finished = true;
        self.update(|r| r.state = state);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            self.update(|r| r.state = State::Cancelled);
        }
    }
}

/// The conformance behaviour. Cloning shares the record of calls.
#[derive(Clone, Default)]
pub struct Conformance {
    calls: SharedCalls,
}

impl Conformance {
    /// A behaviour with no calls recorded.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Handler for Conformance {
    async fn handle(&self, req: Request) -> Response {
        let path = req.uri().path();
        if !path.starts_with("/conformance") {
            return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
        }
        if let Some(id) = path.strip_prefix("/conformance/calls/")
            && req.method() == http::Method::GET
        {
            return self.call_state(id);
        }
        match Controls::parse(req.headers()) {
            Ok(controls) => self.echo(req, controls).await,
            Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e})),
        }
    }
}

impl Conformance {
    fn call_state(&self, id: &str) -> Response {
        let record = with_calls(&self.calls, |c| c.records.get(id).copied());
        match record {
            Some(r) => json_response(
                StatusCode::OK,
                &json!({"id": id, "state": r.state.as_str(), "body_bytes_sent": r.body_bytes_sent}),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"id": id, "state": "unknown", "body_bytes_sent": 0}),
            ),
        }
    }

    async fn echo(&self, req: Request, controls: Controls) -> Response {
        let mut tracker = Tracker::new(self.calls.clone(), controls.id.clone());
        let (parts, body) = req.into_parts();
        let collected = match body.collect().await {
            Ok(c) => c,
            // On `Stream` the call is gone; on `Send` this cannot happen.
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("request body: {e}")}),
                );
            }
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let body = collected.to_bytes();
        let ctx = parts
            .extensions
            .get::<ForwardContext>()
            .cloned()
            .unwrap_or_default();

        if let Some(delay) = controls.delay {
            // The SDK drops this future when the caller cancels (and on
            // `Send` when `grpc-timeout` passes); on `Stream` nobody
            // enforces `deadline_ms` for us, so stop at it.
            let deadline = ctx.deadline.unwrap_or(Duration::MAX);
            if delay >= deadline {
                tokio::time::sleep(deadline).await;
                tracker.finish(State::Cancelled);
                return json_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &json!({"error": "the deadline passed"}),
                );
            }
            tokio::time::sleep(delay).await;
        }

        let (content, content_type) = match controls.body_size {
            Some(n) => (Content::Pattern(n), None),
            None => {
                let echo = json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query().unwrap_or(""),
                    "has_query": parts.uri.query().is_some(),
                    "headers": fields_json(&parts.headers),
                    "trailers": fields_json(&trailers),
                    "body_length": body.len(),
                    "body_sha256": crate::sha256_hex(&body),
                    "deadline_ms": ctx.deadline.map_or(0, |d| d.as_millis() as u64),
                    "request_id": ctx.request_id,
                });
                (
                    Content::Bytes(Bytes::from(echo.to_string())),
                    Some(HeaderValue::from_static("application/json")),
                )
            }
        };

        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = controls.status;
        let headers = resp.headers_mut();
        if let Some(ct) = content_type {
            headers.append(http::header::CONTENT_TYPE, ct);
        }
        for (name, value) in controls.headers {
            headers.append(name, value);
        }
        let mut response_trailers = HeaderMap::new();
        for (name, value) in controls.trailers {
            response_trailers.append(name, value);
        }
        let emit = Emit {
            content,
            parts: controls.chunks,
            next: 0,
            chunk_delay: controls.chunk_delay,
            trailers: (!response_trailers.is_empty()).then_some(response_trailers),
            abort: controls.abort,
            tracker,
        };
        *resp.body_mut() = Body::new(StreamBody::new(futures_util::stream::unfold(
            emit,
            Emit::next_frame,
        )));
        resp
    }
}

/// The answer's body before it is cut into parts; the pattern is made part
/// by part so a large answer is never held whole.
enum Content {
    Bytes(Bytes),
    Pattern(usize),
}

impl Content {
    fn len(&self) -> usize {
        match self {
            Content::Bytes(b) => b.len(),
            Content::Pattern(n) => *n,
        }
    }

    fn slice(&self, start: usize, end: usize) -> Bytes {
        match self {
            Content::Bytes(b) => b.slice(start..end),
            Content::Pattern(_) => Bytes::from(crate::pattern(start, end - start)),
        }
    }
}

/// The state of a response body: its parts, then its trailers, then the
/// end (or the failure asked for). The tracker travels with it, so the
/// call counts as finished only once the last frame is taken.
struct Emit {
    content: Content,
    parts: usize,
    next: usize,
    chunk_delay: Option<Duration>,
    trailers: Option<HeaderMap>,
    abort: bool,
    tracker: Tracker,
}

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

impl Emit {
    async fn next_frame(mut self) -> Option<(FrameResult, Self)> {
        let len = self.content.len();
        while self.next < self.parts {
            let i = self.next;
            self.next += 1;
            if i > 0
                && let Some(d) = self.chunk_delay
            {
                tokio::time::sleep(d).await;
            }
            let (start, end) = (i * len / self.parts, (i + 1) * len / self.parts);
            if start < end {
                let data = self.content.slice(start, end);
                self.tracker.sent(data.len());
                return Some((Ok(Frame::data(data)), self));
            }
        }
        if let Some(t) = self.trailers.take() {
            return Some((Ok(Frame::trailers(t)), self));
        }
        if self.tracker.finished {
            return None;
        }
        if self.abort {
            self.tracker.finish(State::Aborted);
            let e = std::io::Error::other("aborted as asked (x-conformance-abort)");
            return Some((Err(e), self));
        }
        self.tracker.finish(State::Completed);
        None
    }
}

/// The control headers of one request.
struct Controls {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    trailers: Vec<(HeaderName, HeaderValue)>,
    body_size: Option<usize>,
    delay: Option<Duration>,
    chunks: usize,
    chunk_delay: Option<Duration>,
    id: Option<String>,
    abort: bool,
}

impl Controls {
    fn parse(h: &HeaderMap) -> Result<Self, String> {
        let number = |name: &str| -> Result<Option<u64>, String> {
            h.get(name)
                .map(|v| {
                    v.to_str()
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .ok_or_else(|| format!("{name}: not a number"))
                })
                .transpose()
        };
        let fields = |name: &str| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
            h.get_all(name).iter().map(|v| field(name, v)).collect()
        };
        let status = match number("x-conformance-status")? {
            None => StatusCode::OK,
            Some(n) => u16::try_from(n)
                .ok()
                .filter(|n| (200..=599).contains(n))
                .and_then(|n| StatusCode::from_u16(n).ok())
                .ok_or("x-conformance-status: not 200-599")?,
        };
        let chunks = match number("x-conformance-chunks")? {
            None => 1,
            Some(n @ 1..=65_536) => n as usize,
            Some(_) => return Err("x-conformance-chunks: not 1-65536".into()),
        };
        let id = match h.get("x-conformance-id") {
            None => None,
            Some(v) => {
                let ok = (1..=64).contains(&v.len())
                    && v.as_bytes()
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
                if !ok {
                    return Err("x-conformance-id: not 1-64 of [A-Za-z0-9._-]".into());
                }
                v.to_str().ok().map(str::to_owned)
            }
        };
        Ok(Self {
            status,
            headers: fields("x-conformance-header")?,
            trailers: fields("x-conformance-trailer")?,
            body_size: number("x-conformance-body-size")?
                .map(|n| usize::try_from(n).map_err(|_| "x-conformance-body-size: too large"))
                .transpose()?,
            delay: number("x-conformance-delay-ms")?.map(Duration::from_millis),
            chunks,
            chunk_delay: number("x-conformance-chunk-delay-ms")?.map(Duration::from_millis),
            id,
            abort: h.get("x-conformance-abort").is_some_and(|v| v == "1"),
        })
    }
}

/// `name: value` of `x-conformance-header` / `-trailer`.
fn field(control: &str, v: &HeaderValue) -> Result<(HeaderName, HeaderValue), String> {
    let bytes = v.as_bytes();
    let colon = bytes
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| format!("{control}: no ':'"))?;
    let name = HeaderName::from_bytes(&bytes[..colon])
        .map_err(|_| format!("{control}: invalid field name"))?;
    let rest = &bytes[colon + 1..];
    let start = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len());
    let value = HeaderValue::from_bytes(&rest[start..])
        .map_err(|_| format!("{control}: invalid field value"))?;
    Ok((name, value))
}

fn fields_json(map: &HeaderMap) -> serde_json::Value {
    map.iter()
        .map(|(n, v)| json!({"name": n.as_str(), "value": crate::hex(v.as_bytes())}))
        .collect()
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in list {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn controls_parse_and_refuse_with_the_header_named() {
        let c = Controls::parse(&headers(&[
            ("x-conformance-status", b"404"),
            ("x-conformance-header", b"set-cookie: a=1"),
            ("x-conformance-header", b"set-cookie:\tb=\xe9"),
            ("x-conformance-chunks", b"3"),
        ]))
        .unwrap();
        assert_eq!(c.status, 404);
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.headers[1].1.as_bytes(), b"b=\xe9");
        assert_eq!(c.chunks, 3);
        for (h, v) in [
            ("x-conformance-status", &b"99"[..]),
            ("x-conformance-chunks", b"0"),
            ("x-conformance-header", b"no colon"),
            ("x-conformance-id", b"a/b"),
        ] {
            let e = Controls::parse(&headers(&[(h, v)])).err().unwrap();
            assert!(e.starts_with(h), "{e}");
        }
    }

    #[tokio::test]
    async fn parts_cover_the_body_and_a_dropped_body_is_cancelled() {
        let calls = SharedCalls::default();
        let emit = Emit {
            content: Content::Pattern(10),
            parts: 3,
            next: 0,
            chunk_delay: None,
            trailers: None,
            abort: false,
            tracker: Tracker::new(calls.clone(), Some("a".into())),
        };
        let body = Body::new(StreamBody::new(futures_util::stream::unfold(
            emit,
            Emit::next_frame,
        )));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, crate::pattern(0, 10));
        let state = |id: &str| with_calls(&calls, |c| c.records[id].state);
        assert_eq!(state("a"), State::Completed);

        drop(Tracker::new(calls.clone(), Some("b".into())));
        assert_eq!(state("b"), State::Cancelled);
    }
}
