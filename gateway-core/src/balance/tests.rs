use super::*;
use crate::config::RetryConfig;
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
                strip_prefix: false,
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
    Balancer::new(config, RetryConfig::default(), TimeoutConfig::default())
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
        .map(|_| b.select(svc).unwrap().first().instance_id.to_string())
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(
        b.select(svc).unwrap().count(),
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
        assert_eq!(&*b.select(svc).unwrap().first().instance_id, "b");
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
    assert_eq!(&*b.select(svc).unwrap().first().instance_id, "a");
}

/// The endpoint of `svc` with this instance id.
fn by(svc: &ServiceEndpoints, id: &str) -> Arc<Endpoint> {
    svc.endpoints
        .iter()
        .find(|e| &*e.instance_id == id)
        .unwrap()
        .clone()
}

fn fail(b: &Balancer, ep: &Endpoint, times: u32) {
    for _ in 0..times {
        b.record(ep, false);
    }
}

// This test used to assert that beyond the cap even instances that refused
// connections are picked again. Panic mode now ignores only ejections for
// failed calls: a refused connection is unambiguous, and sending to it only
// spends the retry budget the live instances need (see balance.rs).
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
    fail(&b, &by(svc, "a"), 5);
    for _ in 0..8 {
        assert_ne!(&*b.select(svc).unwrap().first().instance_id, "a");
    }
    fail(&b, &by(svc, "b"), 5);
    assert!(!b.health(svc).panic, "50% ejected is within the cap");
    fail(&b, &by(svc, "c"), 5);
    // 75% ejected > 50% cap: everyone is tried again.
    assert!(b.health(svc).panic);
    let picks: std::collections::HashSet<String> = (0..8)
        .map(|_| b.select(svc).unwrap().first().instance_id.to_string())
        .collect();
    assert_eq!(picks.len(), 4);
    // Instances that refused connections stay out, even in panic mode.
    b.eject(&by(svc, "a"));
    let picks: std::collections::HashSet<String> = (0..8)
        .map(|_| b.select(svc).unwrap().first().instance_id.to_string())
        .collect();
    assert_eq!(picks.len(), 3);
    assert!(!picks.contains("a"));
    for id in ["b", "c", "d"] {
        b.eject(&by(svc, id));
    }
    assert_eq!(b.select(svc).unwrap_err(), NoEndpoint::AllEjected);
}

#[tokio::test]
async fn a_single_instance_failing_calls_is_still_served() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![inst("only", 1, Health::Passing, 100)]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let only = by(svc, "only");
    fail(&b, &only, 5);
    assert!(b.is_ejected(&only), "ejected, as the admin view shows");
    let h = b.health(svc);
    assert!(h.panic && h.failing == 1, "{h:?}");
    assert_eq!(&*b.select(svc).unwrap().first().instance_id, "only");
    // An answer readmits it.
    b.record(&only, true);
    assert!(!b.is_ejected(&only));
    assert!(!b.health(svc).panic);
}

#[tokio::test(start_paused = true)]
async fn ejection_for_failed_calls_backs_off_and_a_success_resets_it() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let a = by(&snap.services["svc"], "a");
    let ejected_for = |b: &Balancer| b.stats(&a).ejected_for_ms;
    fail(&b, &a, 5);
    assert_eq!(ejected_for(&b), 5_000, "base ejection time");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!b.is_ejected(&a), "readmitted after its time");
    fail(&b, &a, 5);
    assert_eq!(ejected_for(&b), 10_000, "second ejection in a row: x2");
    tokio::time::advance(Duration::from_secs(10)).await;
    fail(&b, &a, 5);
    assert_eq!(ejected_for(&b), 15_000, "x3");
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(60)).await;
        fail(&b, &a, 5);
    }
    assert_eq!(ejected_for(&b), 60_000, "at most max_ejection_time");
    tokio::time::advance(Duration::from_secs(60)).await;
    b.record(&a, true);
    fail(&b, &a, 5);
    assert_eq!(ejected_for(&b), 5_000, "a success resets the backoff");
    let st = b.stats(&a);
    assert_eq!((st.failures, st.connect_failures), (120, 0));
}

#[tokio::test(start_paused = true)]
async fn refused_connections_eject_for_the_base_time_and_count_apart() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let a = by(&snap.services["svc"], "a");
    for _ in 0..3 {
        b.eject(&a);
        let st = b.stats(&a);
        assert_eq!(st.ejection, Some(Ejection::Unreachable));
        assert_eq!(
            st.ejected_for_ms, 5_000,
            "no backoff: a re-dial costs nothing"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.is_ejected(&a));
    }
    let st = b.stats(&a);
    assert_eq!((st.connect_failures, st.failures), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_sends_nothing_to_a_slow_instance() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
        inst("slow", 3, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    b.observe(&by(svc, "a"), Duration::from_millis(2));
    b.observe(&by(svc, "b"), Duration::from_millis(2));
    b.observe(&by(svc, "slow"), Duration::from_millis(502));
    let mut slow = 0;
    let mut guards = Vec::new();
    for _ in 0..1000 {
        let pick = b.select(svc).unwrap().first().clone();
        slow += usize::from(&*pick.instance_id == "slow");
        // Load builds up on the fast ones: cost grows with in-flight.
        guards.push(pick.start());
        guards.truncate(8);
    }
    assert_eq!(slow, 0, "502 ms vs 30 ms x 9 at most");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_jumps_up_decays_down_and_penalises_new_instances() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("new", 2, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    let (a, new) = (by(svc, "a"), by(svc, "new"));
    let ms = |e: &Endpoint| b.stats(e).latency_ms.unwrap();
    assert_eq!(b.stats(&new).latency_ms, None, "no data yet");
    b.observe(&a, Duration::from_millis(40));
    // Without data and idle, a new instance is probed at once...
    assert_eq!(&*b.select(svc).unwrap().first().instance_id, "new");
    // ...but with a request in flight it costs the default latency twice:
    // it does not take every request before it has answered one.
    {
        let _g = new.start();
        for _ in 0..20 {
            assert_eq!(&*b.select(svc).unwrap().first().instance_id, "a");
        }
    }
    b.observe(&a, Duration::from_millis(500));
    assert!(
        (ms(&a) - 500.0).abs() < 1e-6,
        "a slower answer counts at once"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    // One time constant later, idle: 500 x e^-1.
    let e1 = (-1f64).exp();
    assert!((ms(&a) - 500.0 * e1).abs() < 0.01, "{}", ms(&a));
    b.observe(&a, Duration::from_millis(10));
    // A faster answer after 10 s weighs 1 - e^-1.
    assert!((ms(&a) - (500.0 * e1 + 10.0 * (1.0 - e1))).abs() < 0.01);
}

#[tokio::test]
async fn budgets_survive_snapshot_rebuilds() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 100)]));
    let before = b.snapshot().services["svc"].budget.clone();
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    assert!(Arc::ptr_eq(&before, &b.snapshot().services["svc"].budget));
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
        assert_eq!(&*b.select(svc).unwrap().first().instance_id, "b");
    }
}

#[tokio::test]
async fn candidates_skip_the_ejected_and_yield_each_usable_once() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
        inst("c", 3, Health::Passing, 100),
        inst("d", 4, Health::Passing, 100),
    ]));
    let snap = b.snapshot();
    let svc = &snap.services["svc"];
    b.eject(&by(svc, "b"));
    for _ in 0..50 {
        let c = b.select(svc).unwrap();
        let first = c.first().instance_id.to_string();
        let ids: Vec<String> = c.map(|e| e.instance_id.to_string()).collect();
        // The pick plus two fall-backs (connect_retries), never the ejected.
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids[0], first);
        assert!(!ids.contains(&"b".to_string()), "{ids:?}");
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 3, "{ids:?}");
    }
    // Candidates outlive the snapshot guard (they hold the endpoint list).
    let c = b.select(svc).unwrap();
    drop(snap);
    b.apply(&catalog(vec![inst("z", 9, Health::Passing, 100)]));
    assert_eq!(c.count(), 3);
}

/// A service that is down reaches the registry twice a second at most,
/// however many requests find it down, and catalogue changes do not reset
/// the clock.
#[tokio::test(start_paused = true)]
async fn an_unreachable_service_is_reported_at_most_once_per_interval() {
    let b = balancer(BalanceStrategy::PeakEwma);
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 100)]));
    assert!(b.report_unreachable("svc"), "the first report goes out");
    for _ in 0..1000 {
        assert!(!b.report_unreachable("svc"));
    }
    let mut again = catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]);
    again.version = 2;
    b.apply(&again);
    assert!(
        !b.report_unreachable("svc"),
        "a new snapshot keeps the clock"
    );
    tokio::time::advance(UNREACHABLE_REPORT_INTERVAL).await;
    assert!(b.report_unreachable("svc"));
    assert!(!b.report_unreachable("svc"));
    assert!(!b.report_unreachable("unknown"), "no such service");
}

#[tokio::test]
async fn routable_since_is_kept_across_rebuilds_and_waited_for() {
    let b = balancer(BalanceStrategy::RoundRobin);
    b.apply(&catalog(vec![inst("a", 1, Health::Failing, 100)]));
    assert_eq!(b.routable_since("svc", "a"), None, "failing: not routable");
    assert_eq!(
        b.wait_routable("svc", "a", Duration::from_millis(20)).await,
        None
    );
    // Routable once a later snapshot has it; the wait sees that snapshot.
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait_routable("svc", "a", Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    b.apply(&Catalog {
        instances: vec![inst("a", 1, Health::Passing, 100)],
        version: 2,
    });
    let since = waiter.await.unwrap().expect("routable");
    assert_eq!(b.routable_since("svc", "a"), Some(since));
    // A rebuild that keeps the endpoint keeps the time it became routable.
    b.apply(&Catalog {
        instances: vec![
            inst("a", 1, Health::Passing, 100),
            inst("b", 2, Health::Passing, 100),
        ],
        version: 3,
    });
    assert_eq!(b.routable_since("svc", "a"), Some(since));
    assert_eq!(b.routable_since("other", "a"), None);
}

#[tokio::test]
async fn the_generation_follows_registrations_not_health() {
    let b = balancer(BalanceStrategy::RoundRobin);
    let generation = |b: &Balancer| b.snapshot().services["svc"].generation;
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 100)]));
    let first = generation(&b);
    // Health changes and equal registrations rebuilt (Consul) keep it.
    b.apply(&catalog(vec![inst("a", 1, Health::Failing, 100)]));
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 100)]));
    assert_eq!(generation(&b), first);
    // A joining instance, changed settings, a leaving instance: new ones.
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 100),
        inst("b", 2, Health::Passing, 100),
    ]));
    let joined = generation(&b);
    assert_ne!(joined, first);
    b.apply(&catalog(vec![
        inst("a", 1, Health::Passing, 50),
        inst("b", 2, Health::Passing, 100),
    ]));
    let changed = generation(&b);
    assert_ne!(changed, joined);
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 50)]));
    assert_ne!(generation(&b), changed);
    let snap = b.snapshot();
    let picked = b.select(&snap.services["svc"]).unwrap();
    assert_eq!(picked.generation(), snap.services["svc"].generation);
    // Gone and back is never an old generation.
    b.apply(&catalog(vec![]));
    b.apply(&catalog(vec![inst("a", 1, Health::Passing, 100)]));
    assert!(![first, joined, changed].contains(&generation(&b)));
}
