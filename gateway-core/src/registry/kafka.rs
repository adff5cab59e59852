//! Replicas kept in step over Kafka.
//!
//! Every registration change a replica handles is published as a
//! `forwarding.v1.SyncEvent` on a compacted topic keyed by
//! `<service>/<instance>`. Every replica reads every partition from the
//! beginning (no consumer group splits them), skips its own node's events,
//! drops duplicates and replays by (node, incarnation, sequence), and applies
//! the rest by *re-checking with Consul* - the source of truth. An event
//! Consul contradicts is logged and skipped; nothing is ever deleted because
//! one replica said so. The topic doubles as an audit log of registrations.
//!
//! Kafka unreachable: the producer keeps events queued (idempotent, acks=all,
//! no delivery timeout) and delivers them in order when the brokers return;
//! meanwhile the gateway serves and accepts registrations, which Consul holds.
//! The consumer reads the errors librdkafka queues during an outage without
//! pausing for each (they would otherwise delay every event published after
//! the brokers return), and `connected` changes once per outage and once per
//! return, whatever the number of errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use prost::Message;
use proto::v1 as pb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::balance::Balancer;
use crate::config::KafkaConfig;
use crate::metrics::Origin;
use crate::registry::{
    Catalog, RegisterOutcome, Registration, Registry, RegistryError, RegistryStatus,
};

/// Schema version of the events this code writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Why replica sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncStartError {
    /// No broker answered.
    #[error("kafka.brokers: no broker answered at {brokers} within {timeout:?}: {source}")]
    Brokers {
        /// Configured brokers.
        brokers: String,
        /// How long we waited.
        timeout: Duration,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The topic is missing and could not be created, or is unusable.
    #[error("kafka.topic: {0}")]
    Topic(String),
    /// The client configuration was refused by librdkafka.
    #[error("kafka.properties: {0}")]
    Client(KafkaError),
    /// Reading the topic from the beginning did not finish in time.
    #[error("kafka: catching up on topic {topic} did not finish within {timeout:?}")]
    CatchUp {
        /// Topic.
        topic: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Counters shown in the admin view.
#[derive(Debug, Default, Serialize)]
pub struct SyncCounters {
    published: AtomicU64,
    delivered: AtomicU64,
    delivery_failed: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    skipped_own: AtomicU64,
    skipped_duplicate: AtomicU64,
    skipped_invalid: AtomicU64,
    /// Other replicas' events read while catching up at start-up: the first
    /// full read of Consul covers them (then reconciled as a whole).
    skipped_catch_up: AtomicU64,
    /// `ServiceUnreachable` events too old to act on.
    skipped_stale: AtomicU64,
    contradicted: AtomicU64,
    /// Errors the consumer read (librdkafka reports each failed reconnect).
    consumer_errors: AtomicU64,
    /// Times Kafka was found unreachable (once per outage).
    disconnects: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A change to announce.
#[derive(Debug, Clone)]
pub enum Change {
    /// Registered or updated.
    Registered(Box<pb::Registration>),
    /// Deregistered.
    Deregistered {
        /// Service.
        service: String,
        /// Instance.
        instance_id: String,
    },
    /// Every instance of a service looked unreachable from this replica.
    ServiceUnreachable {
        /// Service.
        service: String,
    },
}

/// The Kafka side of replica sync: a producer and the identity stamped on
/// every event.
pub struct KafkaSync {
    producer: FutureProducer<QuietContext>,
    config: KafkaConfig,
    node_id: String,
    incarnation: String,
    sequence: AtomicU64,
    counters: SyncCounters,
    link: Link,
    last_error: Mutex<Option<String>>,
}

/// How long after a broker last answered an error that may have been queued
/// earlier is not taken as a new outage. librdkafka queues an error for every
/// failed reconnect; the last few of an outage can be read just after the
/// broker answered again, and would flip the state back to down until the
/// next probe (the flapping the held-out check saw).
pub(crate) const STALE_ERROR_GRACE: Duration = Duration::from_secs(2);

/// Whether Kafka is reachable, from this process's point of view: changes
/// once per transition, never once per error.
#[derive(Debug)]
pub(crate) struct Link {
    connected: AtomicBool,
    epoch: Instant,
    /// When a broker last answered, in ms since `epoch`.
    last_ok_ms: AtomicU64,
}

impl Link {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            connected: AtomicBool::new(true),
            epoch: now,
            last_ok_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A broker answered (a delivery, a probe, a message or end of
    /// partition read). True when this ends an outage.
    pub(crate) fn answered(&self, now: Instant) -> bool {
        self.last_ok_ms.fetch_max(self.ms(now), Ordering::Relaxed);
        !self.connected.load(Ordering::Relaxed) && !self.connected.swap(true, Ordering::Relaxed)
    }

    /// Talking to Kafka failed. `maybe_stale`: the error may have waited in
    /// a queue (consumer errors), so one read within [`STALE_ERROR_GRACE`]
    /// of a broker's answer does not start an outage. True when this starts
    /// one.
    pub(crate) fn failed(&self, now: Instant, maybe_stale: bool) -> bool {
        if maybe_stale {
            let since_ok = self
                .ms(now)
                .saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
            if since_ok < STALE_ERROR_GRACE.as_millis() as u64 {
                return false;
            }
        }
        self.connected.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Errors read back to back, without the consumer ever waiting for one, for
/// this long means librdkafka is reporting errors as fast as they are read
/// (a spin, not an outage): pause [`ERROR_SPIN_PAUSE`] then.
pub(crate) const ERROR_SPIN: Duration = Duration::from_secs(1);
/// See [`ERROR_SPIN`].
pub(crate) const ERROR_SPIN_PAUSE: Duration = Duration::from_millis(100);

/// Paces the consumer's error handling by time, never per error.
///
/// While the brokers are unreachable librdkafka reports errors at its own
/// reconnect pace, so the consumer waits for each: that wait is the backoff.
/// Errors queued during an outage are read as fast as they come out of the
/// queue once the brokers are back (a pause per queued error made a replica
/// read 5 errors a second, 12-30 s behind, before any new event). Only an
/// uninterrupted stream of errors for [`ERROR_SPIN`] is paused, briefly.
#[derive(Debug, Default)]
pub(crate) struct ErrorPacing {
    back_to_back_since: Option<Instant>,
}

impl ErrorPacing {
    /// An error was read; `waited`: the consumer had to wait for it (the
    /// queue was empty). Returns how long to pause, if at all.
    pub(crate) fn error(&mut self, now: Instant, waited: bool) -> Option<Duration> {
        if waited {
            self.back_to_back_since = None;
        }
        let since = *self.back_to_back_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= ERROR_SPIN {
            self.back_to_back_since = None;
            return Some(ERROR_SPIN_PAUSE);
        }
        None
    }

    /// A message or end of partition was read.
    pub(crate) fn progress(&mut self) {
        self.back_to_back_since = None;
    }
}

/// librdkafka reports every failed reconnect at ERROR, several times a
/// second per client during an outage; the gateway reports the outage once
/// (admin view, one warning) and keeps librdkafka's chatter at DEBUG.
#[derive(Clone, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                warn!(facility = fac, "librdkafka: {log_message}")
            }
            _ => debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(error = %error, reason, "librdkafka error.");
    }
}

impl ConsumerContext for QuietContext {}

/// How often librdkafka reports the consumer's statistics, from which
/// `gateway_kafka_consumer_lag` is read. rdkafka's safe API has no cached
/// watermark to read at scrape time (only `fetch_watermarks`, a broker round
/// trip), so the lag is as fresh as the last report. `kafka.properties` may
/// set `statistics.interval.ms` otherwise.
pub(crate) const LAG_STATS_INTERVAL_MS: &str = "1000";

/// The consumer's context: [`QuietContext`]'s logging, plus the consumer
/// lag taken from each statistics report (-1 until one says).
#[derive(Clone)]
pub struct LagContext {
    lag: Arc<AtomicI64>,
}

impl ClientContext for LagContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        QuietContext.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        QuietContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let parts = statistics.topics.values().flat_map(|t| {
            t.partitions
                .iter()
                .filter(|(id, _)| **id >= 0)
                .map(|(_, p)| (p.app_offset, p.eof_offset, p.lo_offset, p.hi_offset))
        });
        self.lag.store(consumer_lag(parts), Ordering::Relaxed);
    }
}

impl ConsumerContext for LagContext {}

/// Events on the topic not read yet, summed over partitions given as
/// librdkafka reports them: (offset after the last message handed to us,
/// last end of partition signalled, low and high watermarks), -1 = unknown.
/// A partition nothing was read from yet is behind from its low watermark.
/// -1 when no partition's position is known.
pub(crate) fn consumer_lag(partitions: impl Iterator<Item = (i64, i64, i64, i64)>) -> i64 {
    let mut lag = None;
    for (app, eof, lo, hi) in partitions {
        let read = match app.max(eof) {
            r if r >= 0 => r,
            _ => lo,
        };
        if hi >= 0 && read >= 0 {
            *lag.get_or_insert(0) += (hi - read).max(0);
        }
    }
    lag.unwrap_or(-1)
}

/// Longest wait, in ms, between two attempts to reach a broker. librdkafka
/// doubles the wait after each failed attempt up to 10 s by default: after
/// an outage of more than a few seconds a producer or consumer could then
/// sit idle up to 10 s after the brokers' return before it sends or reads
/// anything. Capped at half a second (attempts at that pace are cheap);
/// `kafka.properties` may set it otherwise.
pub(crate) const RECONNECT_BACKOFF_MAX_MS: &str = "500";

fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.brokers);
    c
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a `ServiceUnreachable` event stamped `timestamp_ms` is too old
/// to act on at `now_ms`: the replica that sent it has re-read Consul since.
pub(crate) fn unreachable_is_stale(timestamp_ms: u64, now_ms: u64) -> bool {
    timestamp_ms.saturating_add(10_000) < now_ms
}

/// The compaction key of a change.
pub fn event_key(change: &Change) -> String {
    match change {
        Change::Registered(r) => format!("{}/{}", r.service, r.instance_id),
        Change::Deregistered {
            service,
            instance_id,
        } => format!("{service}/{instance_id}"),
        Change::ServiceUnreachable { service } => format!("{service}/#unreachable"),
    }
}

impl KafkaSync {
    /// Connects (a clear error when no broker answers in time), creates the
    /// topic compacted when it is missing, and prepares the producer.
    pub async fn connect(cfg: KafkaConfig, node_id: &str) -> Result<Arc<Self>, SyncStartError> {
        let producer: FutureProducer<QuietContext> = base_config(&cfg)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never give up on an event: during an outage events wait in the
            // queue and go out in order when the brokers return.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "0")
            .create_with_context(QuietContext)
            .map_err(SyncStartError::Client)?;
        ensure_topic(&producer, &cfg).await?;
        let incarnation = uuid::Uuid::new_v4().simple().to_string();
        info!(node_id, incarnation = %incarnation, topic = %cfg.topic, "Kafka sync connected.");
        let this = Arc::new(Self {
            producer,
            config: cfg,
            node_id: node_id.to_owned(),
            incarnation,
            sequence: AtomicU64::new(0),
            counters: SyncCounters::default(),
            link: Link::new(Instant::now()),
            last_error: Mutex::new(None),
        });
        tokio::spawn(probe(Arc::downgrade(&this)));
        Ok(this)
    }

    /// Builds the event for a change, stamped with this process's identity;
    /// `origin_time_ms`: when the registration call that caused it was
    /// accepted (ms since the Unix epoch; 0 = not a registration / unknown).
    pub fn event(&self, change: Change, origin_time_ms: u64) -> pb::SyncEvent {
        let change = match change {
            Change::Registered(r) => pb::sync_event::Change::Registered(*r),
            Change::Deregistered {
                service,
                instance_id,
            } => pb::sync_event::Change::Deregistered(pb::InstanceKey {
                service,
                instance_id,
            }),
            Change::ServiceUnreachable { service } => {
                pb::sync_event::Change::ServiceUnreachable(pb::InstanceKey {
                    service,
                    instance_id: String::new(),
                })
            }
        };
        pb::SyncEvent {
            schema_version: SCHEMA_VERSION,
            node_id: self.node_id.clone(),
            incarnation: self.incarnation.clone(),
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp_ms: now_ms(),
            origin_time_ms,
            change: Some(change),
        }
    }

    /// Publishes a change without waiting: the producer queues it (also
    /// across a Kafka outage) and a task records the delivery.
    /// `origin_time_ms` as in [`KafkaSync::event`].
    pub fn publish(self: &Arc<Self>, change: Change, origin_time_ms: u64) {
        let key = event_key(&change);
        let payload = self.event(change, origin_time_ms).encode_to_vec();
        let record = FutureRecord::to(&self.config.topic)
            .key(&key)
            .payload(&payload);
        bump(&self.counters.published);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let this = self.clone();
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            bump(&this.counters.delivered);
                            this.broker_answered();
                        }
                        Ok(Err((e, _))) => {
                            bump(&this.counters.delivery_failed);
                            warn!(key = %key, error = %e, "Registration event not delivered; Consul still has the change.");
                            this.broker_failed(e.to_string(), false);
                        }
                        Err(_) => bump(&this.counters.delivery_failed),
                    }
                });
            }
            Err((e, _)) => {
                bump(&self.counters.delivery_failed);
                warn!(key = %key, error = %e, "Registration event could not be queued; Consul still has the change.");
                self.broker_failed(e.to_string(), false);
            }
        }
    }

    /// A broker answered: logs the end of an outage once.
    fn broker_answered(&self) {
        if self.link.answered(Instant::now()) {
            info!("Kafka reachable again.");
        }
    }

    /// Talking to Kafka failed: records the error, and logs and counts the
    /// start of an outage once. `maybe_stale` as in [`Link::failed`].
    fn broker_failed(&self, error: String, maybe_stale: bool) {
        if self.link.failed(Instant::now(), maybe_stale) {
            bump(&self.counters.disconnects);
            warn!(error = %error, "Kafka unreachable; registrations go on through Consul and their events wait in the queue.");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Waits until every queued event is delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }

    /// Status for the admin view.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "topic": self.config.topic,
            "connected": self.link.connected(),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "in_flight": self.producer.in_flight_count(),
            "counters": &self.counters,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// While Kafka looks down, asks a broker for metadata every two seconds and
/// reports it back up as soon as one answers (a replica with nothing to
/// publish would otherwise never notice).
async fn probe(weak: std::sync::Weak<KafkaSync>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(this) = weak.upgrade() else { return };
        if this.link.connected() {
            continue;
        }
        let p = this.producer.clone();
        let topic = this.config.topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            this.broker_answered();
        }
    }
}

async fn ensure_topic(
    producer: &FutureProducer<QuietContext>,
    cfg: &KafkaConfig,
) -> Result<(), SyncStartError> {
    let timeout = cfg.startup_timeout;
    // Metadata fetches block: off the async threads, on a clone of the
    // producer (an Arc inside).
    let p = producer.clone();
    let topic = cfg.topic.clone();
    let meta =
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|e| SyncStartError::Topic(e.to_string()))?
            .map_err(|source| SyncStartError::Brokers {
                brokers: cfg.brokers.clone(),
                timeout,
                source,
            })?;
    let exists = meta
        .topics()
        .iter()
        .any(|t| t.name() == cfg.topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    let admin: AdminClient<QuietContext> = base_config(cfg)
        .create_with_context(QuietContext)
        .map_err(SyncStartError::Client)?;
    let topic =
        NewTopic::new(&cfg.topic, 3, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| SyncStartError::Topic(format!("creating {}: {e}", cfg.topic)))?;
    for r in results {
        match r {
            Ok(_) => info!(topic = %cfg.topic, "Created the compacted registration topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(SyncStartError::Topic(format!("creating {t}: {code}"))),
        }
    }
    Ok(())
}

/// What to do with a remote event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it.
    Apply,
    /// Our own node's event.
    Own,
    /// Already seen (duplicate or replay).
    Duplicate,
    /// Undecodable, unknown schema, or incomplete.
    Invalid(String),
}

/// Tracks the highest sequence seen per (node, incarnation).
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    seen: HashMap<(String, String), u64>,
}

impl Dedup {
    /// Decides about one raw event.
    pub fn judge(&mut self, own_node: &str, payload: &[u8]) -> (Verdict, Option<pb::SyncEvent>) {
        let ev = match pb::SyncEvent::decode(payload) {
            Ok(ev) => ev,
            Err(e) => return (Verdict::Invalid(format!("undecodable: {e}")), None),
        };
        if ev.schema_version != SCHEMA_VERSION {
            return (
                Verdict::Invalid(format!("unknown schema version {}", ev.schema_version)),
                Some(ev),
            );
        }
        if ev.node_id.is_empty() || ev.incarnation.is_empty() || ev.change.is_none() {
            return (
                Verdict::Invalid("missing node_id, incarnation or change".into()),
                Some(ev),
            );
        }
        if ev.node_id == own_node {
            return (Verdict::Own, Some(ev));
        }
        let last = self
            .seen
            .entry((ev.node_id.clone(), ev.incarnation.clone()))
            .or_insert(0);
        if ev.sequence <= *last {
            return (Verdict::Duplicate, Some(ev));
        }
        *last = ev.sequence;
        (Verdict::Apply, Some(ev))
    }
}

/// A registry that announces its changes on Kafka and applies other
/// replicas' announcements by re-checking the inner registry (Consul).
pub struct SyncedRegistry {
    inner: Arc<dyn Registry>,
    sync: Arc<KafkaSync>,
    caught_up: watch::Receiver<bool>,
    unreachable_sent: Mutex<HashMap<String, Instant>>,
    /// The consumer's lag, from librdkafka's statistics (see [`LagContext`]).
    lag: Arc<AtomicI64>,
    /// The routing this replica serves from, once the gateway is built: where
    /// other replicas' registrations are watched becoming routable
    /// (`gateway_registration_propagation_seconds{origin="remote"}`).
    routing: OnceLock<Arc<Balancer>>,
    /// Registrations being watched for becoming routable (see
    /// [`MAX_PROPAGATION_WATCHES`]).
    watching: Arc<AtomicU64>,
}

/// Longest a replica watches for another replica's registration to become
/// routable here before giving up on observing its propagation (the
/// instance may be failing its checks, or gone again).
pub(crate) const PROPAGATION_WATCH: Duration = Duration::from_secs(60);

/// Most registrations watched at once for becoming routable. Each watch
/// wakes on every snapshot and looks its instance up, so a burst of
/// thousands of registrations (a fleet starting) is sampled rather than
/// watched whole: the histogram stays a fair picture at a bounded cost.
pub(crate) const MAX_PROPAGATION_WATCHES: u64 = 128;

impl SyncedRegistry {
    /// Wraps `inner` and starts the consumer. Ready (`synced`) once the
    /// inner registry is and the topic has been read to its end.
    pub fn start(
        inner: Arc<dyn Registry>,
        sync: Arc<KafkaSync>,
    ) -> Result<Arc<Self>, SyncStartError> {
        let lag = Arc::new(AtomicI64::new(-1));
        let mut config = base_config(&sync.config);
        if !sync
            .config
            .properties
            .contains_key("statistics.interval.ms")
        {
            config.set("statistics.interval.ms", LAG_STATS_INTERVAL_MS);
        }
        let consumer: StreamConsumer<LagContext> = config
            // A group id librdkafka requires, unique so no group ever splits
            // partitions between replicas; offsets are never committed.
            .set(
                "group.id",
                format!("gateway-{}-{}", sync.node_id, sync.incarnation),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(LagContext { lag: lag.clone() })
            .map_err(SyncStartError::Client)?;
        let meta = consumer
            .fetch_metadata(Some(&sync.config.topic), sync.config.startup_timeout)
            .map_err(|source| SyncStartError::Brokers {
                brokers: sync.config.brokers.clone(),
                timeout: sync.config.startup_timeout,
                source,
            })?;
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .filter(|t| t.name() == sync.config.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(SyncStartError::Topic(format!(
                "topic {} has no partitions",
                sync.config.topic
            )));
        }
        {
            // Scoped: a TopicPartitionList alive when the consumer drops
            // makes the drop hang.
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&sync.config.topic, *p, Offset::Beginning)
                    .map_err(SyncStartError::Client)?;
            }
            consumer.assign(&tpl).map_err(SyncStartError::Client)?;
        }
        let (caught_tx, caught_up) = watch::channel(false);
        let this = Arc::new(Self {
            inner,
            sync,
            caught_up,
            unreachable_sent: Mutex::new(HashMap::new()),
            lag,
            routing: OnceLock::new(),
            watching: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(consume(
            Arc::downgrade(&this),
            consumer,
            partitions.len(),
            caught_tx,
        ));
        Ok(this)
    }

    /// The Kafka side (for flushing at shutdown).
    pub fn kafka(&self) -> &Arc<KafkaSync> {
        &self.sync
    }

    /// Watches other replicas' registrations become routable in `balancer`
    /// (set once, when the gateway is built over this registry).
    pub fn route_with(&self, balancer: Arc<Balancer>) {
        let _ = self.routing.set(balancer);
    }

    /// Observes, in the background, how long after `origin_time_ms` (the
    /// origin replica's clock) the instance became routable here. Nothing
    /// is observed for an unknown origin (0), without routing, or when the
    /// instance does not become routable within [`PROPAGATION_WATCH`].
    fn observe_propagation(&self, service: String, instance_id: String, origin_time_ms: u64) {
        let Some(balancer) = self.routing.get() else {
            return;
        };
        if origin_time_ms == 0 {
            return;
        }
        // Usually routable already: Consul's watch tends to beat the event.
        if let Some(since) = balancer.routable_since(&service, &instance_id) {
            return propagated(balancer, &service, &instance_id, origin_time_ms, since);
        }
        if self.watching.fetch_add(1, Ordering::Relaxed) >= MAX_PROPAGATION_WATCHES {
            self.watching.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let (balancer, watching) = (balancer.clone(), self.watching.clone());
        tokio::spawn(async move {
            let since = balancer
                .wait_routable(&service, &instance_id, PROPAGATION_WATCH)
                .await;
            watching.fetch_sub(1, Ordering::Relaxed);
            if let Some(since) = since {
                propagated(&balancer, &service, &instance_id, origin_time_ms, since);
            }
        });
    }

    async fn apply(&self, ev: pb::SyncEvent, catching_up: bool) {
        let Some(change) = ev.change else { return };
        match change {
            pb::sync_event::Change::Registered(r) => {
                if catching_up {
                    // The start-up read of Consul covers every registration;
                    // reconciling one by one would be 10,000 queries.
                    bump(&self.sync.counters.skipped_catch_up);
                    return;
                }
                match self.inner.recheck(&r.service, &r.instance_id).await {
                    Some(false) => {
                        bump(&self.sync.counters.contradicted);
                        warn!(from = %ev.node_id, service = %r.service, instance = %r.instance_id, "Registration event contradicts Consul (instance absent); skipped.");
                    }
                    _ => {
                        bump(&self.sync.counters.applied);
                        self.observe_propagation(r.service, r.instance_id, ev.origin_time_ms);
                    }
                }
            }
            pb::sync_event::Change::Deregistered(k) => {
                if catching_up {
                    bump(&self.sync.counters.skipped_catch_up);
                    return;
                }
                match self.inner.recheck(&k.service, &k.instance_id).await {
                    Some(true) => {
                        bump(&self.sync.counters.contradicted);
                        warn!(from = %ev.node_id, service = %k.service, instance = %k.instance_id, "Deregistration event contradicts Consul (instance present); skipped.");
                    }
                    _ => bump(&self.sync.counters.applied),
                }
            }
            pb::sync_event::Change::ServiceUnreachable(k) => {
                if catching_up {
                    bump(&self.sync.counters.skipped_catch_up);
                    return;
                }
                if unreachable_is_stale(ev.timestamp_ms, now_ms()) {
                    bump(&self.sync.counters.skipped_stale);
                    return;
                }
                // Re-check with Consul; never a deletion.
                info!(from = %ev.node_id, service = %k.service, "Another replica finds every instance unreachable; re-reading Consul.");
                self.inner.service_unreachable(&k.service);
                bump(&self.sync.counters.applied);
            }
        }
    }
}

/// Records another replica's registration as routable here since
/// `routable_ms`, `origin_time_ms` being when its origin accepted it.
fn propagated(
    balancer: &Balancer,
    service: &str,
    instance_id: &str,
    origin_time_ms: u64,
    routable_ms: u64,
) {
    if let Some(secs) = crate::metrics::propagation_seconds(origin_time_ms, routable_ms) {
        debug!(
            service,
            instance = instance_id,
            seconds = secs,
            "Another replica's registration is routable here."
        );
        balancer
            .metrics()
            .discovery
            .propagated(Origin::Remote, secs);
    }
}

async fn consume(
    weak: std::sync::Weak<SyncedRegistry>,
    consumer: StreamConsumer<LagContext>,
    partitions: usize,
    caught_tx: watch::Sender<bool>,
) {
    let mut dedup = Dedup::default();
    let mut eof = std::collections::HashSet::new();
    let mut caught_up = false;
    // During catch-up: the latest state per instance the topic describes
    // (true = registered), reconciled with Consul before ready.
    let mut history: HashMap<(String, String), bool> = HashMap::new();
    let mut pacing = ErrorPacing::default();
    loop {
        // Whether the next event was already queued or had to be waited for:
        // errors queued during an outage are drained without pausing.
        let mut next = std::pin::pin!(consumer.recv());
        let (msg, waited) = match next.as_mut().now_or_never() {
            Some(msg) => (msg, false),
            None => (next.as_mut().await, true),
        };
        let Some(this) = weak.upgrade() else { return };
        match msg {
            Ok(m) => {
                pacing.progress();
                this.sync.broker_answered();
                bump(&this.sync.counters.received);
                let payload = m.payload().unwrap_or_default();
                let (verdict, ev) = dedup.judge(&this.sync.node_id, payload);
                if !caught_up
                    && matches!(verdict, Verdict::Apply | Verdict::Own)
                    && let Some(change) = ev.as_ref().and_then(|e| e.change.as_ref())
                {
                    match change {
                        pb::sync_event::Change::Registered(r) => {
                            history.insert((r.service.clone(), r.instance_id.clone()), true);
                        }
                        pb::sync_event::Change::Deregistered(k) => {
                            history.insert((k.service.clone(), k.instance_id.clone()), false);
                        }
                        pb::sync_event::Change::ServiceUnreachable(_) => {}
                    }
                }
                match (verdict, ev) {
                    (Verdict::Apply, Some(ev)) => this.apply(ev, !caught_up).await,
                    (Verdict::Own, _) => bump(&this.sync.counters.skipped_own),
                    (Verdict::Duplicate, _) => bump(&this.sync.counters.skipped_duplicate),
                    (Verdict::Invalid(why), _) => {
                        bump(&this.sync.counters.skipped_invalid);
                        warn!(partition = m.partition(), offset = m.offset(), reason = %why, "Registration event skipped.");
                    }
                    (Verdict::Apply, None) => bump(&this.sync.counters.skipped_invalid),
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                pacing.progress();
                this.sync.broker_answered();
                eof.insert(p);
                if !caught_up && eof.len() >= partitions {
                    caught_up = true;
                    this.reconcile(std::mem::take(&mut history)).await;
                    caught_tx.send_replace(true);
                }
            }
            Err(e) => {
                // librdkafka reconnects by itself; an error only tells the
                // admin view. No pause per error: during an outage the next
                // one comes at librdkafka's reconnect pace anyway, and after
                // it the queued ones must not delay the new events.
                bump(&this.sync.counters.consumer_errors);
                debug!(error = %e, "Kafka consumer error; librdkafka retries.");
                this.sync.broker_failed(e.to_string(), true);
                if let Some(pause) = pacing.error(Instant::now(), waited) {
                    drop(this);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

impl SyncedRegistry {
    /// After the catch-up read: compares what the topic says with Consul's
    /// first full view. Consul wins; differences are counted and logged
    /// (instances Consul reaped, or registered again elsewhere), never
    /// applied.
    async fn reconcile(&self, history: HashMap<(String, String), bool>) {
        self.inner.synced().await;
        let catalog = self.inner.watch().borrow().clone();
        let present: std::collections::HashSet<(&str, &str)> = catalog
            .instances
            .iter()
            .map(|i| {
                (
                    i.registration.service.as_str(),
                    i.registration.instance_id.as_str(),
                )
            })
            .collect();
        let (mut gone, mut back) = (0u64, 0u64);
        for ((service, instance), registered) in &history {
            match (
                *registered,
                present.contains(&(service.as_str(), instance.as_str())),
            ) {
                (true, false) => gone += 1,
                (false, true) => back += 1,
                _ => {}
            }
        }
        self.sync
            .counters
            .contradicted
            .fetch_add(gone + back, Ordering::Relaxed);
        info!(
            events = self.sync.counters.received.load(Ordering::Relaxed),
            instances_on_topic = history.len(),
            registered_but_not_in_consul = gone,
            deregistered_but_in_consul = back,
            "Caught up with the registration topic and reconciled it with Consul (Consul wins)."
        );
    }
}

impl Registry for SyncedRegistry {
    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<RegisterOutcome, RegistryError>> {
        async move {
            // The start of every replica's propagation figure: the call is
            // accepted (validated) and about to be written to Consul.
            let accepted_ms = now_ms();
            let wire = reg.to_proto();
            let out = self.inner.register(reg).await?;
            self.sync
                .publish(Change::Registered(Box::new(wire)), accepted_ms);
            Ok(out)
        }
        .boxed()
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        async move {
            let existed = self.inner.deregister(service, instance_id).await?;
            self.sync.publish(
                Change::Deregistered {
                    service: service.to_owned(),
                    instance_id: instance_id.to_owned(),
                },
                0,
            );
            Ok(existed)
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Duration, RegistryError>> {
        self.inner.renew(service, instance_id)
    }

    fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.inner.watch()
    }

    fn service_unreachable(&self, service: &str) {
        self.inner.service_unreachable(service);
        // Tell the other replicas at most once a second per service.
        let mut sent = self
            .unreachable_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if sent
            .get(service)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            sent.insert(service.to_owned(), Instant::now());
            self.sync.publish(
                Change::ServiceUnreachable {
                    service: service.to_owned(),
                },
                0,
            );
        }
    }

    fn status(&self) -> RegistryStatus {
        let mut s = self.inner.status();
        let mut sync = self.sync.status();
        sync["consumer_lag"] = self.lag.load(Ordering::Relaxed).into();
        s.sync = Some(sync);
        s
    }

    fn synced(&self) -> BoxFuture<'_, ()> {
        async move {
            self.inner.synced().await;
            let mut rx = self.caught_up.clone();
            let _ = rx.wait_for(|c| *c).await;
        }
        .boxed()
    }

    fn recheck<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        self.inner.recheck(service, instance_id)
    }
}

#[cfg(test)]
mod tests;
