//! The access log (`[access_log]`): one JSON line per answered request.
//!
//! The request path only fills an [`Entry`] (owned values that are cheap to
//! take: `Arc` clones, the `Uri`, numbers) and hands it to a bounded channel
//! with `try_send`: a request never waits for the log. A line that does not
//! fit is dropped and counted (`gateway_access_log_dropped_total`). The
//! JSON is formatted and written by a dedicated thread, so neither the
//! formatting nor a slow disk runs on the runtime's workers. Disabled, none
//! of this exists: `Shared::access_log` is `None` and the request path
//! takes one branch.
//!
//! A line is written when the response head is known (status, and the
//! body's length if it has one). Bodies of unknown length - streamed
//! answers, server-sent events, WebSocket - are still flowing then: their
//! `bytes_out` is `null` (and `bytes_in` of a streamed request too), and
//! their totals are in the metrics' body byte counters.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AccessLogConfig;
use crate::request_id::RequestId;
use crate::routing::Listener;

/// What one request did, as the log line says it.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub at: SystemTime,
    /// `X-Request-Id` (given or made by the gateway).
    pub request_id: Option<RequestId>,
    /// The TCP peer.
    pub client: Option<SocketAddr>,
    /// The listener that took the request.
    pub listener: Listener,
    /// The HTTP method.
    pub method: http::Method,
    /// The request target (only its path is written: queries can carry
    /// secrets).
    pub uri: http::Uri,
    /// The matched route prefix and its service; `None` if nothing matched.
    pub route: Option<(Arc<str>, Arc<str>)>,
    /// The instance that answered (the last one tried).
    pub instance: Option<Arc<str>>,
    /// The response status.
    pub status: u16,
    /// Request body bytes, when read whole.
    pub bytes_in: Option<u64>,
    /// Response body bytes, when the length is known.
    pub bytes_out: Option<u64>,
    /// From arrival to the response head.
    pub total: Duration,
    /// The last upstream call, until its answer (head).
    pub upstream: Option<Duration>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "rfc3339_millis")]
    time: SystemTime,
    request_id: Option<&'a str>,
    client: Option<SocketAddr>,
    listener: &'static str,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    service: Option<&'a str>,
    instance: Option<&'a str>,
    status: u16,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
}

/// The time as RFC 3339 in UTC with milliseconds, formatted straight into
/// the output (no intermediate `String`).
fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn listener_name(l: Listener) -> &'static str {
    match l {
        Listener::Public => "public",
        Listener::Internal => "internal",
        Listener::Admin => "admin",
    }
}

fn ms(d: Duration) -> f64 {
    // Microsecond precision is what a log reader can use.
    (d.as_micros() as f64) / 1000.0
}

impl Entry {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let line = Line {
            time: self.at,
            request_id: self.request_id.as_ref().map(RequestId::as_str),
            client: self.client,
            listener: listener_name(self.listener),
            method: self.method.as_str(),
            path: self.uri.path(),
            route: self.route.as_ref().map(|(_, r)| &**r),
            service: self.route.as_ref().map(|(s, _)| &**s),
            instance: self.instance.as_deref(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: ms(self.total),
            upstream_ms: self.upstream.map(ms),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }
}

/// The request path's end of the access log.
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens the destination (`path`, appended to, or standard output) and
    /// starts the writer thread; `dropped` counts lines that did not fit.
    /// The thread ends when the last [`AccessLog`] is dropped, after
    /// writing what it holds.
    pub fn start(config: &AccessLogConfig, dropped: Counter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match &config.path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Self { tx, dropped })
    }

    /// Queues one line; never waits (a full queue drops it, counted).
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }
}

/// How long the writer lets lines gather while they keep coming.
const GATHER: Duration = Duration::from_millis(10);

/// The writer thread. Idle, it blocks on the channel, so the first line
/// wakes it; then, while lines keep coming, it drains the queue every
/// [`GATHER`] and flushes (a line reaches the file within ~10 ms), so under load a request's `try_send` is a push that wakes
/// nobody, and the file gets one write per batch rather than per line.
fn write_lines(mut rx: mpsc::Receiver<Entry>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let write = |out: &mut std::io::BufWriter<_>, e: Entry| {
        if let Err(err) = e.write_to(out) {
            tracing::warn!(error = %err, "Access log write failed.");
        }
    };
    while let Some(first) = rx.blocking_recv() {
        write(&mut out, first);
        loop {
            std::thread::sleep(GATHER);
            let mut n = 0;
            while let Ok(e) = rx.try_recv() {
                write(&mut out, e);
                n += 1;
            }
            if let Err(err) = out.flush() {
                tracing::warn!(error = %err, "Access log flush failed.");
            }
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_every_field() {
        let e = Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
            request_id: None,
            client: Some(SocketAddr::from(([127, 0, 0, 1], 4000))),
            listener: Listener::Internal,
            method: http::Method::POST,
            uri: "/svc/a?secret=1".parse().unwrap(),
            route: Some(("svc".into(), "/svc".into())),
            instance: Some("svc-1".into()),
            status: 201,
            bytes_in: Some(10),
            bytes_out: None,
            total: Duration::from_micros(2_345),
            upstream: Some(Duration::from_micros(1_000)),
        };
        let mut out = Vec::new();
        e.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && !text.contains("secret"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["listener"], "internal");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/svc/a");
        assert_eq!(
            (v["service"].as_str(), v["route"].as_str()),
            (Some("svc"), Some("/svc"))
        );
        assert_eq!(v["instance"], "svc-1");
        assert_eq!(v["status"], 201);
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(10), None)
        );
        assert_eq!(v["duration_ms"], 2.345);
        assert_eq!(v["upstream_ms"], 1.0);
        assert!(v["request_id"].is_null());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let dropped = Counter::default();
        let (tx, _rx) = mpsc::channel(1);
        let log = AccessLog {
            tx,
            dropped: dropped.clone(),
        };
        let entry = || Entry {
            at: SystemTime::now(),
            request_id: None,
            client: None,
            listener: Listener::Public,
            method: http::Method::GET,
            uri: "/".parse().unwrap(),
            route: None,
            instance: None,
            status: 404,
            bytes_in: None,
            bytes_out: None,
            total: Duration::ZERO,
            upstream: None,
        };
        log.log(entry());
        log.log(entry());
        assert_eq!(dropped.get(), 1);
    }
}
