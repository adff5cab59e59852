use super::*;

fn event(node: &str, inc: &str, seq: u64, schema: u32) -> Vec<u8> {
    pb::SyncEvent {
        schema_version: schema,
        node_id: node.into(),
        incarnation: inc.into(),
        sequence: seq,
        timestamp_ms: 1,
        origin_time_ms: 0,
        change: Some(pb::sync_event::Change::ServiceUnreachable(
            pb::InstanceKey {
                service: "s".into(),
                instance_id: String::new(),
            },
        )),
    }
    .encode_to_vec()
}

#[test]
fn own_duplicate_replayed_and_invalid_events_are_not_applied() {
    let mut d = Dedup::default();
    assert_eq!(d.judge("me", &event("me", "i1", 1, 1)).0, Verdict::Own);
    assert_eq!(d.judge("me", &event("b", "i1", 1, 1)).0, Verdict::Apply);
    assert_eq!(d.judge("me", &event("b", "i1", 2, 1)).0, Verdict::Apply);
    assert_eq!(d.judge("me", &event("b", "i1", 2, 1)).0, Verdict::Duplicate);
    assert_eq!(
        d.judge("me", &event("b", "i1", 1, 1)).0,
        Verdict::Duplicate,
        "a replay"
    );
    // A restarted replica is a new incarnation, not its earlier self.
    assert_eq!(d.judge("me", &event("b", "i2", 1, 1)).0, Verdict::Apply);
    assert!(
        matches!(
            d.judge("me", &event("b", "i3", 1, 2)).0,
            Verdict::Invalid(_)
        ),
        "unknown schema"
    );
    assert!(matches!(
        d.judge("me", b"\xff\xff\xff garbage").0,
        Verdict::Invalid(_)
    ));
    assert!(
        matches!(d.judge("me", &[]).0, Verdict::Invalid(_)),
        "empty payload"
    );
}

#[test]
fn keys_compact_per_instance() {
    let r = pb::Registration {
        service: "orders".into(),
        instance_id: "o-1".into(),
        ..Default::default()
    };
    assert_eq!(event_key(&Change::Registered(Box::new(r))), "orders/o-1");
    let d = Change::Deregistered {
        service: "orders".into(),
        instance_id: "o-1".into(),
    };
    assert_eq!(
        event_key(&d),
        "orders/o-1",
        "a deregistration replaces the registration on compaction"
    );
}

proptest::proptest! {
    /// Whatever lands on the topic, judging it never panics.
    #[test]
    fn any_payload_is_judged_without_panicking(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let mut d = Dedup::default();
        let _ = d.judge("me", &payload);
    }
}

/// An outage as the consumer sees it: errors while the broker is down, the
/// broker answers again, then the errors librdkafka queued meanwhile are
/// read. One transition each way, whatever the number of errors.
#[test]
fn connected_changes_once_per_outage_not_once_per_error() {
    let t0 = Instant::now();
    let link = Link::new(t0);
    assert!(link.connected());
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // The first error long after the last answer starts the outage; the
    // others do not start it again.
    assert!(link.failed(at(5_000), true), "the outage starts");
    assert!(!link.connected());
    for i in 0..200 {
        assert!(!link.failed(at(5_000 + i * 50), true));
    }
    // The broker answers: back up, once.
    assert!(link.answered(at(20_000)), "the outage ends");
    assert!(!link.answered(at(20_001)), "already up");
    // Errors queued before the return and read just after it do not flip
    // the state back (that flapping logged "reachable again" every 2 s).
    for i in 0..200 {
        assert!(!link.failed(at(20_001 + i), true));
    }
    assert!(link.connected());
    // Messages keep coming: still up, and an error read then is stale.
    assert!(!link.answered(at(30_000)));
    assert!(!link.failed(at(30_500), true));
    assert!(link.connected());
    // A later outage is noticed again.
    assert!(link.failed(at(30_000) + STALE_ERROR_GRACE, true));
    assert!(!link.connected());
    assert!(link.answered(at(40_000)));
}

#[test]
fn a_failed_delivery_is_never_taken_for_a_stale_error() {
    let t0 = Instant::now();
    let link = Link::new(t0);
    assert!(!link.answered(t0), "up from the start");
    // A delivery that failed just after a broker answered is current news.
    assert!(link.failed(t0 + Duration::from_millis(1), false));
    assert!(!link.connected());
}

#[test]
fn queued_errors_are_drained_without_a_pause() {
    let t0 = Instant::now();
    let mut p = ErrorPacing::default();
    // 10,000 errors queued during an outage, read back to back in 500 ms
    // once the broker is back: never a pause.
    for i in 0..10_000u64 {
        assert_eq!(p.error(t0 + Duration::from_micros(i * 50), false), None);
    }
    // Errors librdkafka reports one by one while the broker is down (the
    // consumer waited for each): never a pause either, however long.
    for s in 0..600u64 {
        assert_eq!(p.error(t0 + Duration::from_secs(s), true), None);
    }
}

#[test]
fn only_an_uninterrupted_stream_of_errors_pauses_and_briefly() {
    let t0 = Instant::now();
    let mut p = ErrorPacing::default();
    let mut pauses = Vec::new();
    // Errors ready back to back for 5 s (librdkafka spinning).
    for ms in 0..5_000u64 {
        if let Some(d) = p.error(t0 + Duration::from_millis(ms), false) {
            pauses.push((ms, d));
        }
    }
    assert_eq!(
        pauses.len(),
        4,
        "one pause per second of errors: {pauses:?}"
    );
    assert!(pauses.iter().all(|(_, d)| *d == ERROR_SPIN_PAUSE));
    assert!(
        ERROR_SPIN_PAUSE * 5 <= ERROR_SPIN,
        "reads at least 80% of the time"
    );
    // A message in between resets it.
    let mut p = ErrorPacing::default();
    for ms in 0..5_000u64 {
        if ms % 900 == 0 {
            p.progress();
        }
        assert_eq!(p.error(t0 + Duration::from_millis(ms), false), None);
    }
}

/// The freshness test of a `ServiceUnreachable` event is arithmetic on a
/// timestamp any producer on the topic chooses: a far-future one must not
/// overflow (a panic in the consumer task would stop all event handling).
#[test]
fn unreachable_events_from_the_far_future_do_not_overflow() {
    use super::unreachable_is_stale;
    assert!(!unreachable_is_stale(u64::MAX, 1_700_000_000_000));
    assert!(!unreachable_is_stale(u64::MAX - 5, u64::MAX));
    assert!(unreachable_is_stale(0, 10_001));
    assert!(!unreachable_is_stale(0, 10_000));
}

#[test]
fn consumer_lag_sums_partitions_from_what_was_read() {
    // (after the last message read, last EOF, low, high); -1 = unknown.
    let none = std::iter::empty();
    assert_eq!(consumer_lag(none), -1);
    // Nothing known yet (no fetch answered): unknown, not 0.
    assert_eq!(consumer_lag([(-1, -1, -1, -1)].into_iter()), -1);
    // Read up to 7 of 10; at the end of another; a third from its low
    // watermark (nothing read yet, compacted below 4).
    assert_eq!(
        consumer_lag([(7, -1, 0, 10), (-1, 5, 0, 5), (-1, -1, 4, 6)].into_iter()),
        5
    );
    // A watermark older than the position never makes the lag negative.
    assert_eq!(consumer_lag([(12, 12, 0, 10)].into_iter()), 0);
}
