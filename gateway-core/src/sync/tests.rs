use super::*;

fn event(node: &str, inc: &str, seq: u64, schema: u32) -> Vec<u8> {
    pb::SyncEvent {
        schema_version: schema,
        node_id: node.into(),
        incarnation: inc.into(),
        sequence: seq,
        timestamp_ms: 1,
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
