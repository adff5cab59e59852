//! Several gateway replicas kept in step over a real Kafka broker (Apache
//! Kafka in KRaft mode, `scripts/kafka-dev.sh`) with a real Consul as the
//! shared source of truth.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    ConsulProcess, GatewayProcess, KafkaProcess, admin_view, eventually, get_json, register_ttl,
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul.toml");

async fn replica(
    consul: &ConsulProcess,
    kafka: &KafkaProcess,
    node: &str,
    topic: &str,
) -> GatewayProcess {
    GatewayProcess::start(
        &[
            "--config",
            CONFIG,
            "--consul",
            &consul.url(),
            "--kafka-brokers",
            &kafka.bootstrap,
            "--kafka-topic",
            topic,
            "--node-id",
            node,
        ],
        &[],
    )
    .await
}

fn counter(v: &Value, name: &str) -> u64 {
    v["registry"]["sync"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_through_one_replica_reaches_the_others() {
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        KafkaProcess::start().await,
    );
    let gw1 = replica(&consul, &kafka, "gw1", "reg-a").await;
    let gw2 = replica(&consul, &kafka, "gw2", "reg-a").await;
    register_ttl(&gw1, "rep-a", "a-1", "127.0.0.1:9").await;
    gw2.wait_routable("rep-a", 1).await;
    // gw2 received gw1's event and confirmed it with Consul; gw1 skipped its own.
    eventually("gw2 applied gw1's event", || async {
        let v = admin_view(&gw2).await;
        (counter(&v, "applied") >= 1 && counter(&v, "contradicted") == 0).then_some(())
    })
    .await;
    eventually("gw1 skipped its own event", || async {
        (counter(&admin_view(&gw1).await, "skipped_own") >= 1).then_some(())
    })
    .await;

    // Deregistering through gw2 removes it everywhere (Consul decides).
    let resp = gw2
        .http
        .delete(format!(
            "{}/v1/registrations/rep-a/a-1",
            gw2.registration_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw1.wait_routable("rep-a", 0).await;

    // A late replica has every registration before it reports ready.
    for i in 0..20 {
        register_ttl(
            &gw1,
            "rep-late",
            &format!("late-{i}"),
            &format!("127.0.0.1:{}", 10000 + i),
        )
        .await;
    }
    // One registration the topic still announces but Consul no longer has
    // (removed with Consul's own tools): the late replica must side with
    // Consul when it reconciles the topic at start-up.
    register_ttl(&gw1, "rep-stale", "s-1", "127.0.0.1:9").await;
    let resp = gw1
        .http
        .put(format!(
            "{}/v1/agent/service/deregister/rep-stale:s-1",
            consul.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let gw3 = replica(&consul, &kafka, "gw3", "reg-a").await;
    let v = admin_view(&gw3).await;
    assert!(
        counter(&v, "contradicted") >= 1,
        "the stale registration was noticed: {v}"
    );
    assert_eq!(
        gw3.http
            .get(gw3.url("/rep-stale"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let late = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rep-late")
        .expect("rep-late known at ready");
    assert_eq!(late["routable_instances"], 20);
    assert!(
        counter(&v, "received") >= 20,
        "read the topic from the beginning: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_loses_nothing_and_replicas_converge() {
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        KafkaProcess::start().await,
    );
    let gw1 = replica(&consul, &kafka, "gw1", "reg-b").await;
    let gw2 = replica(&consul, &kafka, "gw2", "reg-b").await;
    kafka.stop().await;
    // Kafka down: the gateway keeps accepting registrations (Consul has them)
    // and every replica still learns of them through Consul.
    register_ttl(&gw1, "rep-b", "b-1", "127.0.0.1:9").await;
    gw2.wait_routable("rep-b", 1).await;
    let v = admin_view(&gw1).await;
    assert_eq!(
        counter(&v, "delivered"),
        0,
        "nothing delivered while Kafka is down: {v}"
    );
    // Kafka back: the queued event is delivered and applied by gw2.
    kafka.start_again().await;
    eventually("queued event delivered after Kafka returned", || async {
        (counter(&admin_view(&gw1).await, "delivered") >= 1).then_some(())
    })
    .await;
    eventually("gw2 applied it", || async {
        (counter(&admin_view(&gw2).await, "applied") >= 1).then_some(())
    })
    .await;
    // Nothing left behind: every replica is connected again and has
    // delivered everything it published, with nothing in flight.
    for gw in [&gw1, &gw2] {
        eventually("every replica delivered its queued events", || async {
            let v = admin_view(gw).await;
            let sync = &v["registry"]["sync"];
            (sync["connected"] == true
                && counter(&v, "delivered") == counter(&v, "published")
                && sync["in_flight"] == 0)
                .then_some(())
        })
        .await;
    }
    // Routed (not 404); the instance's address is closed, so 503 at once.
    assert_eq!(
        gw2.http
            .get(gw2.url("/rep-b"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_events_are_skipped_and_the_consumer_moves_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        KafkaProcess::start().await,
    );
    let gw1 = replica(&consul, &kafka, "gw1", "reg-c").await;
    let gw2 = replica(&consul, &kafka, "gw2", "reg-c").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    for payload in [&b"\xff\xfe not protobuf"[..], b"", b"\x08\x63"] {
        producer
            .send(
                FutureRecord::to("reg-c").key("x/y").payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // A registration event Consul does not confirm: skipped, not applied.
    let ghost = proto::v1::SyncEvent {
        schema_version: 1,
        node_id: "elsewhere".into(),
        incarnation: "i".into(),
        sequence: 1,
        timestamp_ms: 1,
        origin_time_ms: 1,
        change: Some(proto::v1::sync_event::Change::Registered(
            proto::v1::Registration {
                service: "ghost".into(),
                instance_id: "g-1".into(),
                address: "127.0.0.1:9".into(),
                ..Default::default()
            },
        )),
    };
    producer
        .send(
            FutureRecord::to("reg-c")
                .key("ghost/g-1")
                .payload(&prost::Message::encode_to_vec(&ghost)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    eventually("garbage skipped, ghost contradicted", || async {
        let v = admin_view(&gw2).await;
        (counter(&v, "skipped_invalid") >= 3 && counter(&v, "contradicted") >= 1).then_some(())
    })
    .await;
    // The consumer is not stuck: a real registration still arrives.
    register_ttl(&gw1, "rep-c", "c-1", "127.0.0.1:9").await;
    eventually("gw2 still applies events", || async {
        (counter(&admin_view(&gw2).await, "applied") >= 1).then_some(())
    })
    .await;
    assert_eq!(
        gw2.http
            .get(gw2.url("/ghost"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the ghost was never routed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_and_bad_settings_are_startup_errors() {
    let consul = ConsulProcess::start(None).await;
    let run = |extra: Vec<String>| async move {
        let mut args: Vec<String> = ["--public", "127.0.0.1:0", "--internal", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--registration", "127.0.0.1:0", "--admin", "127.0.0.1:0"].map(String::from));
        args.extend(extra);
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(&args)
                .env("RUST_LOG", "error")
                .output(),
        )
        .await
        .expect("gateway exits")
        .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(vec![
        "--consul".into(),
        consul.url(),
        "--kafka-brokers".into(),
        "127.0.0.1:1".into(),
        "--config".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka-fast-fail.toml").into(),
    ])
    .await;
    assert!(err.contains("kafka.brokers"), "{err}");
    let err = run(vec!["--kafka-brokers".into(), "127.0.0.1:1".into()]).await;
    assert!(err.contains("invalid configuration `kafka`"), "{err}");
    let err = run(vec![
        "--config".into(),
        CONFIG.into(),
        "--consul".into(),
        consul.url(),
        "--kafka-brokers".into(),
        "127.0.0.1:1".into(),
        "--kafka-topic".into(),
        "bad topic!".into(),
    ])
    .await;
    assert!(err.contains("kafka.topic"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_rechecked_everywhere_and_never_deleted() {
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        KafkaProcess::start().await,
    );
    let gw1 = replica(&consul, &kafka, "gw1", "reg-d").await;
    let gw2 = replica(&consul, &kafka, "gw2", "reg-d").await;
    // Consul says passing (TTL), but nothing listens at the address: gw1
    // finds every instance unreachable.
    register_ttl(&gw1, "rep-d", "d-1", "127.0.0.1:9").await;
    gw2.wait_routable("rep-d", 1).await;
    gw1.wait_routable("rep-d", 1).await;
    assert_eq!(
        gw1.http
            .get(gw1.url("/rep-d"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    eventually("gw2 applied gw1's unreachable event", || async {
        let v = admin_view(&gw2).await;
        (counter(&v, "applied") >= 2).then_some(())
    })
    .await;
    // Re-checked, not deleted: Consul and both replicas still have it.
    let list: Value = get_json(
        &gw2.http,
        &format!("{}/v1/registrations?service=rep-d", gw2.registration_url()),
    )
    .await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    let health: Value = get_json(
        &gw2.http,
        &format!("{}/v1/health/service/rep-d", consul.url()),
    )
    .await;
    assert_eq!(health.as_array().unwrap().len(), 1, "still in Consul");
}

/// After a Kafka outage long enough for librdkafka to queue up consumer
/// errors, a replica must read events published after the broker's return
/// at once, not work through the errors queued meanwhile first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kafka_outage_new_events_arrive_within_two_seconds() {
    use tokio::time::Instant;
    // How long the broker stays down before it is started again; the
    // restart itself adds a few seconds (about 15 s in all).
    const OUTAGE: Duration = Duration::from_secs(10);
    const BOUND: Duration = Duration::from_secs(2);
    let start = Instant::now();
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        KafkaProcess::start().await,
    );
    let gw1 = replica(&consul, &kafka, "gw1", "reg-e").await;
    let gw2 = replica(&consul, &kafka, "gw2", "reg-e").await;
    let applied = |gw: &GatewayProcess| {
        let url = format!("http://{}/admin/services", gw.admin);
        let http = gw.http.clone();
        async move {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            Some(counter(&v, "applied"))
        }
    };
    // Steady state first: an event goes through.
    register_ttl(&gw1, "rep-e", "e-0", "127.0.0.1:9").await;
    eventually("gw2 applied the first event", || async {
        (applied(&gw2).await? >= 1).then_some(())
    })
    .await;

    kafka.stop().await;
    let down = Instant::now();
    // Kafka down: Consul takes the registration, the event waits in gw1's
    // producer queue.
    register_ttl(&gw1, "rep-e", "e-1", "127.0.0.1:9").await;
    gw2.wait_routable("rep-e", 2).await;
    eventually("gw2 noticed the outage", || async {
        let v = admin_view(&gw2).await;
        (v["registry"]["sync"]["connected"] == false).then_some(())
    })
    .await;
    // The outage itself (not a synchronisation): librdkafka reports failed
    // reconnects on the consumer queue all along.
    tokio::time::sleep_until(down + OUTAGE).await;
    kafka.start_again().await;
    let back = Instant::now();
    println!("Kafka was down for {:?}", back - down);

    // A new event, published after the broker's return.
    register_ttl(&gw1, "rep-e", "e-2", "127.0.0.1:9").await;
    let took = loop {
        // e-1 (queued during the outage) and e-2 both applied.
        if applied(&gw2).await.unwrap_or(0) >= 3 {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < support::DEADLINE,
            "gw2 never applied the events after Kafka returned: {}",
            admin_view(&gw2).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("time to converge after the Kafka outage: {took:?}");
    let v = admin_view(&gw2).await;
    assert!(
        took < BOUND,
        "gw2 applied a new event {took:?} after Kafka returned (bound {BOUND:?}): {v}"
    );
    // The outage was reported once, and the errors queued during it do not
    // flip gw2 back to disconnected (a time-bounded watch, not a wait: the
    // state must hold throughout).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let v = admin_view(&gw2).await;
        let sync = &v["registry"]["sync"];
        assert_eq!(sync["connected"], true, "connected again and stays so: {v}");
        assert_eq!(
            counter(&v, "disconnects"),
            1,
            "one outage, one disconnect: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "gw2 read {} consumer errors; test took {:?}",
        counter(&admin_view(&gw2).await, "consumer_errors"),
        start.elapsed()
    );
}
