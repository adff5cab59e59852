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

fn listener_name(l: Listener) -> &'static str {
    match l {
        Listener::Public => "public",
        Listener::Internal => "internal",
        Listener::Admin => "admin",
    }
}

/// A JSON string (escaped by serde_json) or `null`.
fn string(out: &mut impl Write, v: Option<&str>) -> std::io::Result<()> {
    match v {
        Some(v) => serde_json::to_writer(&mut *out, v).map_err(std::io::Error::from),
        None => out.write_all(b"null"),
    }
}

/// An integer, through serde_json's `itoa` (`write!` costs several times
/// more per number).
fn number(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &n).map_err(std::io::Error::from)
}

/// Milliseconds with microsecond precision, as integers print.
fn millis(out: &mut impl Write, d: Duration) -> std::io::Result<()> {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    number(out, us / 1000)?;
    let frac = us % 1000;
    out.write_all(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ])
}

impl Entry {
    /// The line, written field by field: serde's map machinery and
    /// `write!` cost most of the writer's instructions per line
    /// (BENCHMARKS.md, issue 11).
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(
            out,
            "{{\"time\":\"{}\"",
            humantime::format_rfc3339_millis(self.at)
        )?;
        out.write_all(b",\"request_id\":")?;
        string(out, self.request_id.as_ref().map(RequestId::as_str))?;
        match self.client {
            Some(c) => write!(out, ",\"client\":\"{c}\"")?,
            None => out.write_all(b",\"client\":null")?,
        }
        out.write_all(b",\"listener\":\"")?;
        out.write_all(listener_name(self.listener).as_bytes())?;
        out.write_all(b"\",\"method\":")?;
        string(out, Some(self.method.as_str()))?;
        out.write_all(b",\"path\":")?;
        string(out, Some(self.uri.path()))?;
        out.write_all(b",\"route\":")?;
        string(out, self.route.as_ref().map(|(_, r)| &**r))?;
        out.write_all(b",\"service\":")?;
        string(out, self.route.as_ref().map(|(s, _)| &**s))?;
        out.write_all(b",\"instance\":")?;
        string(out, self.instance.as_deref())?;
        out.write_all(b",\"status\":")?;
        number(out, u64::from(self.status))?;
        for (name, v) in [
            (&b",\"bytes_in\":"[..], self.bytes_in),
            (&b",\"bytes_out\":"[..], self.bytes_out),
        ] {
            out.write_all(name)?;
            match v {
                Some(n) => number(out, n)?,
                None => out.write_all(b"null")?,
            }
        }
        out.write_all(b",\"duration_ms\":")?;
        millis(out, self.total)?;
        out.write_all(b",\"upstream_ms\":")?;
        match self.upstream {
            Some(d) => millis(out, d)?,
            None => out.write_all(b"null")?,
        }
        out.write_all(b"}\n")
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
            // Escaped as JSON strings are.
            instance: Some("svc-\"1\"\\".into()),
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
        assert_eq!(v["instance"], "svc-\"1\"\\");
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
