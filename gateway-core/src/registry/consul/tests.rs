use super::*;
use crate::registry::consul::client::{CatalogService, Check, Node};

fn reg() -> Registration {
    Registration {
        service: "orders".into(),
        instance_id: "o-1".into(),
        address: "10.0.0.5:7000".into(),
        routes: vec![
            RouteSpec {
                path_prefix: "/orders".into(),
                hosts: vec![],
                timeout: Some(Duration::from_millis(250)),
                stream: false,
                max_duration: None,
                strip_prefix: false,
            },
            RouteSpec {
                path_prefix: "/o".into(),
                hosts: vec!["shop.example".into()],
                timeout: None,
                stream: false,
                max_duration: None,
                strip_prefix: true,
            },
        ],
        visibility: Visibility::Internal,
        tags: vec!["v2".into()],
        metadata: [("team".to_string(), "core".to_string())].into(),
        weight: 40,
        health: HealthCheck {
            kind: CheckKind::Grpc {
                service: "orders".into(),
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            deregister_critical_after: None,
        },
        lease: Duration::from_secs(30),
        streaming: true,
        tls: false,
        tls_server_name: None,
    }
}

fn entry(agent: &AgentServiceRegistration, statuses: &[&str]) -> ServiceEntry {
    ServiceEntry {
        node: Node {
            node: "n1".into(),
            address: "10.0.0.1".into(),
        },
        service: CatalogService {
            id: agent.id.clone(),
            service: agent.name.clone(),
            tags: Some(agent.tags.clone()),
            address: agent.address.clone(),
            port: agent.port,
            meta: Some(agent.meta.clone()),
            weights: Some(agent.weights.clone()),
        },
        checks: statuses
            .iter()
            .enumerate()
            .map(|(i, s)| Check {
                check_id: format!("c{i}"),
                status: s.to_string(),
                output: String::new(),
            })
            .collect(),
    }
}

#[test]
fn registration_round_trips_through_consul_metadata() {
    let config = ConsulConfig::default();
    let r = reg();
    let agent = to_agent_registration(&r, &config).unwrap();
    assert_eq!(agent.id, "orders:o-1");
    assert_eq!(agent.check.grpc.as_deref(), Some("10.0.0.5:7000/orders"));
    assert_eq!(agent.check.deregister_critical_service_after, "60000ms");
    let view = entry_to_view(&entry(&agent, &["passing", "passing"]));
    let back = &view.registration;
    assert_eq!(view.health, Health::Passing);
    assert_eq!(back.instance_id, r.instance_id);
    assert_eq!(back.address, r.address);
    assert_eq!(back.routes, r.routes);
    assert_eq!(back.visibility, r.visibility);
    assert_eq!(back.weight, r.weight);
    assert_eq!(back.tags, r.tags);
    assert_eq!(back.metadata, r.metadata);
}

/// `gw-route-10` sorts before `gw-route-2` as text: found by the
/// registration fuzz target, which reads every accepted registration back
/// through Consul metadata.
#[test]
fn more_than_ten_routes_read_back_in_their_order() {
    let mut r = reg();
    r.routes = (0..12)
        .map(|i| RouteSpec {
            path_prefix: format!("/r{i}"),
            hosts: vec![],
            timeout: None,
            stream: false,
            max_duration: None,
            strip_prefix: false,
        })
        .collect();
    let agent = to_agent_registration(&r, &ConsulConfig::default()).unwrap();
    let back = entry_to_view(&entry(&agent, &[])).registration;
    assert_eq!(back.routes, r.routes);
}

#[test]
fn only_all_passing_is_routable() {
    let agent = to_agent_registration(&reg(), &ConsulConfig::default()).unwrap();
    for s in [&["passing", "critical"][..], &["warning"], &["critical"]] {
        assert_eq!(
            entry_to_view(&entry(&agent, s)).health,
            Health::Failing,
            "{s:?}"
        );
    }
    assert_eq!(entry_to_view(&entry(&agent, &[])).health, Health::Passing);
}

#[test]
fn foreign_and_malformed_metadata_fall_back_to_defaults() {
    let mut agent = to_agent_registration(&reg(), &ConsulConfig::default()).unwrap();
    agent.meta.clear();
    agent.meta.insert("gw-route-0".into(), "{not json".into());
    agent.meta.insert("gw-weight".into(), "-3".into());
    let v = entry_to_view(&entry(&agent, &["passing"]));
    assert_eq!(v.registration.routes[0].path_prefix, "/orders");
    assert_eq!(v.registration.weight, 100);
    assert_eq!(v.registration.instance_id, "orders:o-1");
    assert_eq!(v.registration.visibility, Visibility::Public);
}

#[test]
fn ipv6_and_oversized_metadata() {
    let mut r = reg();
    r.address = "[fd00::5]:7000".into();
    let agent = to_agent_registration(&r, &ConsulConfig::default()).unwrap();
    assert_eq!(agent.address, "fd00::5");
    assert_eq!(
        entry_to_view(&entry(&agent, &[])).registration.address,
        "[fd00::5]:7000"
    );
    r.metadata.insert("big".into(), "x".repeat(600));
    assert!(matches!(
        to_agent_registration(&r, &ConsulConfig::default()),
        Err(RegistryError::Rejected(_))
    ));
}

#[test]
fn listings_show_the_timings_and_lease_in_force() {
    let config = ConsulConfig::default();
    // gRPC check: interval and timeout as registered, the clamped
    // DeregisterCriticalServiceAfter, and no lease (Consul keeps none).
    let mut r = reg();
    r.health.interval = Duration::from_millis(1000);
    r.lease = Duration::from_millis(2000);
    let agent = to_agent_registration(&r, &config).unwrap();
    let back = entry_to_view(&entry(&agent, &["passing"])).registration;
    assert_eq!(back.health.interval, Duration::from_millis(1000));
    assert_eq!(back.health.timeout, Duration::from_millis(500));
    assert_eq!(
        back.health.deregister_critical_after,
        Some(Duration::from_secs(60))
    );
    assert_eq!(back.lease, Duration::ZERO);
    assert_eq!(*back, in_force(&r, &config), "local and Consul views agree");
    // TTL check: the TTL is the lease in force.
    r.health.kind = CheckKind::Ttl;
    let agent = to_agent_registration(&r, &config).unwrap();
    assert_eq!(agent.check.ttl.as_deref(), Some("2000ms"));
    let back = entry_to_view(&entry(&agent, &["passing"])).registration;
    assert_eq!(back.lease, Duration::from_millis(2000));
    assert_eq!(*back, in_force(&r, &config));
}

fn state(node: &str, check: &str, service: &str, status: &str, modify: u64) -> StateCheck {
    StateCheck {
        node: node.into(),
        check_id: check.into(),
        status: status.into(),
        service_id: if service.is_empty() {
            String::new()
        } else {
            format!("{service}:1")
        },
        service_name: service.into(),
        modify_index: modify,
    }
}

#[test]
fn fingerprints_tell_which_services_changed() {
    let base = vec![
        state("n1", "serfHealth", "", "passing", 1),
        state("n2", "serfHealth", "", "passing", 1),
        state("n1", "service:a:1", "a", "passing", 5),
        state("n2", "service:b:1", "b", "passing", 6),
    ];
    let fp = fingerprints(&base);
    assert_eq!(fp.len(), 2, "node checks are no service");
    // Order does not matter.
    let mut rev = base.clone();
    rev.reverse();
    assert_eq!(fingerprints(&rev), fp);
    // A status change moves that service only.
    let mut s = base.clone();
    s[2].status = "critical".into();
    let f = fingerprints(&s);
    assert_ne!(f["a"], fp["a"]);
    assert_eq!(f["b"], fp["b"]);
    // A rewritten check (a gateway write stamps its notes) moves it too.
    let mut s = base.clone();
    s[3].modify_index = 9;
    let f = fingerprints(&s);
    assert_eq!(f["a"], fp["a"]);
    assert_ne!(f["b"], fp["b"]);
    // A node check moves every service on that node.
    let mut s = base.clone();
    s[1].status = "critical".into();
    let f = fingerprints(&s);
    assert_eq!(f["a"], fp["a"]);
    assert_ne!(f["b"], fp["b"]);
}

/// Found by the consul_answer fuzz target: with one check listed twice the
/// fingerprint followed the listing order (Consul itself never lists a
/// check twice; a proxy or a bad snapshot might).
#[test]
fn fingerprints_ignore_the_listing_order() {
    let mut checks = vec![
        state("n1", "c", "s:1", "passing", 10),
        state("n1", "c", "s:1", "critical", 10),
        state("n1", "serfHealth", "", "passing", 3),
    ];
    let first = fingerprints(&checks);
    checks.reverse();
    assert_eq!(fingerprints(&checks), first);
}

#[test]
fn every_write_changes_the_check() {
    let config = ConsulConfig::default();
    let a = to_agent_write(&reg(), &config, "w1").unwrap();
    let b = to_agent_write(&reg(), &config, "w2").unwrap();
    assert_ne!(a.check.notes, b.check.notes);
}

#[test]
fn tls_travels_in_metadata_and_turns_on_tls_checks() {
    let config = ConsulConfig::default();
    let plain = to_agent_registration(&reg(), &config).unwrap();
    assert!(!plain.meta.contains_key(META_TLS));
    assert_eq!(plain.check.grpc_use_tls, Some(false));
    assert_eq!(plain.check.tls_server_name, None);
    let back = entry_to_view(&entry(&plain, &["passing"])).registration;
    assert!(!back.tls);

    let r = Registration {
        tls: true,
        tls_server_name: Some("orders.internal".into()),
        ..reg()
    };
    let agent = to_agent_registration(&r, &config).unwrap();
    assert_eq!(agent.meta[META_TLS], "orders.internal");
    assert_eq!(agent.check.grpc_use_tls, Some(true));
    assert_eq!(
        agent.check.tls_server_name.as_deref(),
        Some("orders.internal")
    );
    let back = entry_to_view(&entry(&agent, &["passing"])).registration;
    assert!(back.tls);
    assert_eq!(back.tls_server_name.as_deref(), Some("orders.internal"));

    // TLS without a name; an HTTP check becomes an https URL.
    let r = Registration {
        tls: true,
        health: HealthCheck {
            kind: CheckKind::Http {
                path: "/health".into(),
            },
            ..reg().health
        },
        ..reg()
    };
    let agent = to_agent_registration(&r, &config).unwrap();
    assert_eq!(agent.meta[META_TLS], "");
    assert_eq!(
        agent.check.http.as_deref(),
        Some("https://10.0.0.5:7000/health")
    );
    let back = entry_to_view(&entry(&agent, &["passing"])).registration;
    assert!(back.tls);
    assert_eq!(back.tls_server_name, None);
}
