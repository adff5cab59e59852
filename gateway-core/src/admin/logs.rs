//! The admin UI's live log pane: [`LogFeed`] is a `tracing` layer that
//! copies WARN and ERROR events (and INFO from the registration and
//! registry modules, where registrations and Consul/Kafka state changes are
//! told) into a bounded ring and a broadcast channel that `/admin/events`
//! streams follow.
//!
//! An event about a request carries that request's id: the request path's
//! warnings have a `request_id` field of their own, and an event inside the
//! OpenTelemetry `request` span (when tracing is on) takes the span's. The
//! proxy's DEBUG [`REQUEST_SPAN_TARGET`] span is not enabled by this layer:
//! a span per request cost ~7% CPU per request.
//!
//! Never blocking: an event costs a short critical section (a push on a
//! `VecDeque`) and a `broadcast::send`, which does not wait for readers; a
//! slow or absent UI only loses the oldest lines.
//!
//! Why the core implements a `tracing_subscriber::Layer` although it never
//! installs a subscriber: the binary decides what is installed, but the
//! feed's format is the admin UI's and belongs beside it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Log lines kept for a UI that opens later.
pub const KEPT: usize = 500;

/// Target of the proxy's per-request DEBUG span (method, URI, request id),
/// seen by the log lines when `RUST_LOG` enables it.
pub const REQUEST_SPAN_TARGET: &str = "gateway_core::request";

/// Targets whose INFO events are copied too (registrations, registry and
/// sync state); everything else only from WARN up.
const INFO_TARGETS: [&str; 2] = ["gateway_core::registration", "gateway_core::registry"];

/// Copies log events into a ring and a channel; clone it freely (one ring).
#[derive(Clone)]
pub struct LogFeed {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<VecDeque<Arc<Value>>>,
    tx: broadcast::Sender<Arc<Value>>,
}

impl Default for LogFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LogFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogFeed").finish_non_exhaustive()
    }
}

/// Whether the feed wants `meta`: the request span, WARN and ERROR events,
/// INFO events of [`INFO_TARGETS`]. Nothing else is even created for it
/// (h2's many spans stay disabled).
fn wanted(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        // Not the proxy's DEBUG request span: enabling it for every request
        // cost ~7% CPU per request (scripts/profile.sh). The request path's
        // warnings carry a `request_id` field instead; the OpenTelemetry
        // request span exists anyway when tracing is on.
        return meta.target() == "gateway_core::otel" && meta.name() == "request";
    }
    let level = *meta.level();
    level <= Level::WARN
        || (level == Level::INFO
            && INFO_TARGETS.iter().any(|t| {
                meta.target()
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            }))
}

impl LogFeed {
    /// An empty feed.
    pub fn new() -> Self {
        LogFeed {
            inner: Arc::new(Inner {
                ring: Mutex::new(VecDeque::with_capacity(KEPT)),
                tx: broadcast::channel(1024).0,
            }),
        }
    }

    /// The layer to install (with its own filter, so it never widens what
    /// other layers see).
    pub fn layer<S>(&self) -> Filtered<FeedLayer, FeedFilter, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        FeedLayer { feed: self.clone() }
            .with_filter(FilterFn::new(wanted as fn(&Metadata<'_>) -> bool))
    }

    /// The kept lines, oldest first.
    pub fn recent(&self) -> Vec<Value> {
        let r = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(|v| (**v).clone()).collect()
    }

    /// New lines as they come.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.inner.tx.subscribe()
    }

    fn push(&self, line: Value) {
        let line = Arc::new(line);
        {
            let mut r = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == KEPT {
                r.pop_front();
            }
            r.push_back(line.clone());
        }
        let _ = self.inner.tx.send(line);
    }
}

/// The filter of [`LogFeed::layer`]: the request span, WARN and up, INFO of
/// the registration and registry modules.
pub type FeedFilter = FilterFn<fn(&Metadata<'_>) -> bool>;

/// The layer of a [`LogFeed`] (see [`LogFeed::layer`]).
pub struct FeedLayer {
    feed: LogFeed,
}

/// The request id of a request span, kept in its extensions.
struct SpanRequestId(String);

#[derive(Default)]
struct RequestIdVisitor(Option<String>);

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "request_id" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "request_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().into(), json!(value));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().into(), json!(format!("{value:?}")));
        }
    }
}

impl<S> Layer<S> for FeedLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut v = RequestIdVisitor::default();
        attrs.record(&mut v);
        if let (Some(rid), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanRequestId(rid));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let mut v = RequestIdVisitor::default();
        values.record(&mut v);
        if let (Some(rid), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().replace(SpanRequestId(rid));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let own = match f.fields.remove("request_id") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let request_id = own.or_else(|| {
            ctx.event_scope(event).and_then(|scope| {
                scope.into_iter().find_map(|span| {
                    span.extensions()
                        .get::<SpanRequestId>()
                        .map(|r| r.0.clone())
                })
            })
        });
        self.feed.push(json!({
            "kind": "log",
            "at_ms": super::events::now_ms(),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "message": f.message,
            "fields": f.fields,
            "request_id": request_id,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn copies_warnings_with_their_fields_and_request_id() {
        let feed = LogFeed::new();
        let subscriber = tracing_subscriber::registry().with(feed.layer());
        tracing::subscriber::with_default(subscriber, || {
            // The request path's warnings name their request themselves.
            tracing::warn!(
                request_id = "r-7",
                service = "orders",
                "Invalid stream head."
            );
            let span =
                tracing::info_span!(target: "gateway_core::otel", "request", request_id = "r-42");
            span.in_scope(|| {
                // A nested span of another target does not hide the request's.
                let inner = tracing::info_span!("attempt");
                inner.in_scope(|| {
                    tracing::warn!(
                        service = "orders",
                        failures = 3_u64,
                        "Forwarded call failed."
                    );
                });
                tracing::info!("Not copied: INFO of another target.");
                tracing::debug!("Not copied: DEBUG.");
            });
            // The proxy's DEBUG span is not enabled for the feed (its cost).
            let debug_span =
                tracing::debug_span!(target: REQUEST_SPAN_TARGET, "request", request_id = "r-9");
            debug_span.in_scope(|| tracing::warn!("Inside the proxy's span."));
            tracing::error!(error = %"boom", "Outside any request.");
            tracing::info!(target: "gateway_core::registration", service = "web", "Registered.");
            tracing::info!(target: "gateway_core::registrationx", "Not copied: another module.");
            tracing::info!(target: "gateway_core::registry::kafka", "Kafka sync connected.");
        });
        let lines = feed.recent();
        let msgs: Vec<&str> = lines
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            msgs,
            [
                "Invalid stream head.",
                "Forwarded call failed.",
                "Inside the proxy's span.",
                "Outside any request.",
                "Registered.",
                "Kafka sync connected."
            ]
        );
        assert_eq!(lines[0]["request_id"], "r-7");
        assert_eq!(lines[0]["fields"].get("request_id"), None);
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["request_id"], "r-42");
        assert_eq!(lines[1]["fields"]["service"], "orders");
        assert_eq!(lines[1]["fields"]["failures"], 3);
        assert_eq!(lines[2]["request_id"], Value::Null);
        assert_eq!(lines[3]["request_id"], Value::Null);
        assert_eq!(lines[3]["fields"]["error"], "boom");
        assert_eq!(lines[4]["fields"]["service"], "web");
        assert!(lines[0]["at_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn keeps_the_newest_lines_and_tells_subscribers() {
        let feed = LogFeed::new();
        let mut rx = feed.subscribe();
        let subscriber = tracing_subscriber::registry().with(feed.layer());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..KEPT + 10 {
                tracing::warn!(i, "Line.");
            }
        });
        let lines = feed.recent();
        assert_eq!(lines.len(), KEPT);
        assert_eq!(lines[0]["fields"]["i"], 10);
        assert_eq!(rx.try_recv().unwrap()["fields"]["i"], 0);
    }
}
