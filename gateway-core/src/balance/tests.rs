use super::*;
use crate::registry::{CheckKind, HealthCheck, InstanceView, Registration, RouteSpec};

fn inst(id: &str, port: u16, health: Health, weight: u32) -> InstanceView {
    InstanceView {
        registration: Arc::new(Registration {
            service: "svc".into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            routes: vec![RouteSpec {
                path_prefix: "/svc".into(),
                hosts: vec![],
                timeout: None,
                stream: false,
                max_duration: None,
            }],
            visibility: Visibility::Public,
            tags: vec![],
            metadata: Default::default(),
            weight,
            health: HealthCheck {
                kind: CheckKind::Ttl,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                deregister_critical_after: None,
            },
            lease: Duration::from_secs(30),
            streaming: false,
            tls: false,
            tls_server_name: None,
        }),
        health,
        detail: "".into(),
        lease_deadline: None,
    }
}

fn balancer(strategy: BalanceStrategy) -> Arc<Balancer> {
    let config = BalancerConfig {
        strategy,
        ..Default::default()
    };
    Balancer::new(config, TimeoutConfig::default())
}

fn catalog(instances: Vec<InstanceView>) -> Catalog {
    Catalog {
        instances,
        version: 1,
    }
}

#[tokio::test]
async fn failing_instances_are_not_routed_and_endpoints_are_reused() {
    let b = balancer(BalanceStrategy::RoundRobin);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Failing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    assert_eq!(svc.registered, 2);
    assert_eq!(svc.endpoints.len(), 1);
    let a1 = svc.endpoints[0].clone();
    drop(snap);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let a2 = snap.services["svc"]
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "a")
        .unwrap();
    assert!(
        Arc::ptr_eq(&a1, a2),
        "channel and counters survive a snapshot rebuild"
    );
}

#[tokio::test]
async fn round_robin_cycles() {
    let b = balancer(BalanceStrategy::RoundRobin);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
        inst("c", 3, Health::Unknown, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let picks: Vec<String> = (0..6)
        .map(|_| b.select(svc).unwrap()[0].instance_id.to_string())
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(
        b.select(svc).unwrap().len(),
        3,
        "the pick plus two fall-backs"
    );
}

#[tokio::test]
async fn power_of_two_avoids_the_busy_instance() {
    let b = balancer(BalanceStrategy::PowerOfTwo);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let busy = svc
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "a")
        .unwrap();
    let _guards: Vec<_> = (0..10).map(|_| busy.start()).collect();
    for _ in 0..50 {
        assert_eq!(&*b.select(svc).unwrap()[0].instance_id, "b");
    }
}

#[tokio::test]
async fn weights_shift_power_of_two() {
    let b = balancer(BalanceStrategy::PowerOfTwo);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 1000),
        inst("b", 2, Health::Passing, 10),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let heavy = svc
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "a")
        .unwrap();
    let _g: Vec<_> = (0..5).map(|_| heavy.start()).collect();
    // 6/1000 < 1/10: the heavy instance still wins.
    assert_eq!(&*b.select(svc).unwrap()[0].instance_id, "a");
}

#[tokio::test]
async fn ejection_is_capped_and_all_ejected_is_reported() {
    let b = balancer(BalanceStrategy::RoundRobin);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
        inst("c", 3, Health::Passing, 100),
        inst("d", 4, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let by = |id: &str| {
        svc.endpoints
            .iter()
            .find(|e| &*e.instance_id == id)
            .unwrap()
            .clone()
    };
    b.eject(&by("a"));
    for _ in 0..8 {
        assert_ne!(&*b.select(svc).unwrap()[0].instance_id, "a");
    }
    b.eject(&by("b"));
    b.eject(&by("c"));
    // 75% ejected > 50% cap: everyone is tried again.
    let picks: std::collections::HashSet<String> = (0..8)
        .map(|_| b.select(svc).unwrap()[0].instance_id.to_string())
        .collect();
    assert_eq!(picks.len(), 4);
    b.eject(&by("d"));
    assert_eq!(b.select(svc).unwrap_err(), NoEndpoint::AllEjected);
}

#[tokio::test]
async fn consecutive_failures_eject_and_successes_reset_the_streak() {
    let b = balancer(BalanceStrategy::RoundRobin);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let a = svc
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "a")
        .unwrap();
    for _ in 0..4 {
        b.record(a, false);
    }
    b.record(a, true);
    for _ in 0..4 {
        b.record(a, false);
    }
    assert!(!b.is_ejected(a), "a success in between resets the streak");
    b.record(a, false);
    assert!(b.is_ejected(a), "five failures in a row eject");
    for _ in 0..6 {
        assert_eq!(&*b.select(svc).unwrap()[0].instance_id, "b");
    }
}
