use super::*;

fn policy() -> RegistrationPolicy {
    RegistrationPolicy {
        check_interval: Duration::from_secs(5),
        check_timeout: Duration::from_secs(1),
        lease: Duration::from_secs(30),
        allowed_networks: vec![],
        upstream_tls: true,
    }
}

fn reg() -> pb::Registration {
    pb::Registration {
        service: "orders".into(),
        address: "127.0.0.1:5000".into(),
        ..Default::default()
    }
}

fn field(p: pb::Registration, pol: &RegistrationPolicy) -> String {
    Registration::from_proto(p, pol).unwrap_err().field
}

#[test]
fn tls_without_upstream_tls_is_refused() {
    let mut p = reg();
    p.tls = true;
    let no_tls = RegistrationPolicy {
        upstream_tls: false,
        ..policy()
    };
    assert_eq!(field(p.clone(), &no_tls), "registration.tls");
    assert!(Registration::from_proto(p, &policy()).unwrap().tls);
}

#[test]
fn defaults_are_filled() {
    let r = Registration::from_proto(reg(), &policy()).unwrap();
    assert_eq!(r.instance_id, "orders-127.0.0.1:5000");
    assert_eq!(r.routes[0].path_prefix, "/orders");
    assert_eq!(r.visibility, Visibility::Public);
    assert_eq!(r.weight, 100);
    assert_eq!(
        r.health.kind,
        CheckKind::Grpc {
            service: String::new()
        }
    );
    assert_eq!(r.lease, Duration::from_secs(30));
    // And the wire form round-trips.
    assert_eq!(
        Registration::from_proto(r.to_proto(), &policy()).unwrap(),
        r
    );
}

#[test]
fn each_invalid_field_is_named() {
    let p = policy();
    assert_eq!(
        field(
            pb::Registration {
                service: String::new(),
                ..reg()
            },
            &p
        ),
        "registration.service"
    );
    assert_eq!(
        field(
            pb::Registration {
                service: "Bad_Name".into(),
                ..reg()
            },
            &p
        ),
        "registration.service"
    );
    assert_eq!(
        field(
            pb::Registration {
                address: String::new(),
                ..reg()
            },
            &p
        ),
        "registration.address"
    );
    assert_eq!(
        field(
            pb::Registration {
                address: "nohost".into(),
                ..reg()
            },
            &p
        ),
        "registration.address"
    );
    assert_eq!(
        field(
            pb::Registration {
                address: "h:0".into(),
                ..reg()
            },
            &p
        ),
        "registration.address"
    );
    assert_eq!(
        field(
            pb::Registration {
                address: "h:99999".into(),
                ..reg()
            },
            &p
        ),
        "registration.address"
    );
    assert_eq!(
        field(
            pb::Registration {
                instance_id: "a b".into(),
                ..reg()
            },
            &p
        ),
        "registration.instance_id"
    );
    assert_eq!(
        field(
            pb::Registration {
                weight: 5000,
                ..reg()
            },
            &p
        ),
        "registration.weight"
    );
    assert_eq!(
        field(
            pb::Registration {
                visibility: 42,
                ..reg()
            },
            &p
        ),
        "registration.visibility"
    );
    let routes = vec![pb::Route {
        path_prefix: "orders".into(),
        ..Default::default()
    }];
    assert_eq!(
        field(pb::Registration { routes, ..reg() }, &p),
        "registration.routes[0].path_prefix"
    );
    let routes = vec![pb::Route {
        path_prefix: "/o".into(),
        hosts: vec!["a b".into()],
        ..Default::default()
    }];
    assert_eq!(
        field(pb::Registration { routes, ..reg() }, &p),
        "registration.routes[0].hosts[0]"
    );
    let health = Some(pb::HealthCheck {
        kind: 2,
        http_path: "health".into(),
        ..Default::default()
    });
    assert_eq!(
        field(pb::Registration { health, ..reg() }, &p),
        "registration.health.http_path"
    );
    let metadata = [("gw-x".to_string(), "1".to_string())].into();
    assert_eq!(
        field(pb::Registration { metadata, ..reg() }, &p),
        "registration.metadata.gw-x"
    );
    assert_eq!(
        field(
            pb::Registration {
                lease_ms: 5,
                ..reg()
            },
            &p
        ),
        "registration.lease_ms"
    );
}

#[test]
fn allowed_networks_restrict_addresses() {
    let mut p = policy();
    p.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
    assert_eq!(field(reg(), &p), "registration.address");
    assert_eq!(
        field(
            pb::Registration {
                address: "svc.local:80".into(),
                ..reg()
            },
            &p
        ),
        "registration.address"
    );
    Registration::from_proto(
        pb::Registration {
            address: "10.1.2.3:80".into(),
            ..reg()
        },
        &p,
    )
    .unwrap();
    Registration::from_proto(
        pb::Registration {
            address: "[::1]:80".into(),
            ..reg()
        },
        &policy(),
    )
    .unwrap();
}

proptest::proptest! {
    /// Any wire registration either validates or names a field; never a panic.
    #[test]
    fn any_registration_validates_or_names_a_field(
        service in "\\PC{0,20}",
        instance_id in "\\PC{0,20}",
        address in "\\PC{0,30}",
        prefix in "\\PC{0,20}",
        visibility in proptest::prelude::any::<i32>(),
        weight in proptest::prelude::any::<u32>(),
        kind in proptest::prelude::any::<i32>(),
        lease_ms in proptest::prelude::any::<u64>(),
    ) {
        let p = pb::Registration {
            service,
            instance_id,
            address,
            routes: vec![pb::Route { path_prefix: prefix, ..Default::default() }],
            visibility,
            weight,
            health: Some(pb::HealthCheck { kind, ..Default::default() }),
            lease_ms,
            ..Default::default()
        };
        match Registration::from_proto(p, &policy()) {
            Ok(r) => proptest::prop_assert!(!r.routes.is_empty()),
            Err(e) => proptest::prop_assert!(e.field.starts_with("registration")),
        }
    }
}

#[test]
fn tls_fields_are_validated_and_round_trip() {
    let p = policy();
    let wire = pb::Registration {
        tls: true,
        tls_server_name: "orders.internal".into(),
        ..reg()
    };
    let r = Registration::from_proto(wire.clone(), &p).unwrap();
    assert!(r.tls);
    assert_eq!(r.tls_server_name.as_deref(), Some("orders.internal"));
    let back = r.to_proto();
    assert!(back.tls);
    assert_eq!(back.tls_server_name, "orders.internal");
    // An IP address is a valid name (checked against IP SANs).
    let ip = pb::Registration {
        tls_server_name: "10.0.0.5".into(),
        ..wire.clone()
    };
    assert!(Registration::from_proto(ip, &p).is_ok());
    assert_eq!(
        field(
            pb::Registration {
                tls_server_name: "not a name!".into(),
                ..wire
            },
            &p
        ),
        "registration.tls_server_name"
    );
}

/// The `strip_prefix` hint survives validation and the wire form Kafka
/// sync carries (`to_proto`), and is off unless asked for.
#[test]
fn the_strip_prefix_hint_round_trips() {
    let routes = vec![
        pb::Route {
            path_prefix: "/product".into(),
            strip_prefix: true,
            ..Default::default()
        },
        pb::Route {
            path_prefix: "/other".into(),
            ..Default::default()
        },
    ];
    let r = Registration::from_proto(pb::Registration { routes, ..reg() }, &policy()).unwrap();
    assert!(r.routes[0].strip_prefix);
    assert!(!r.routes[1].strip_prefix);
    let wire = r.to_proto();
    assert!(wire.routes[0].strip_prefix && !wire.routes[1].strip_prefix);
    assert_eq!(Registration::from_proto(wire, &policy()).unwrap(), r);
}
