use std::time::Duration;

use super::*;
use crate::config::{BalancerConfig, RetryConfig, TimeoutConfig};
use crate::registry::{
    Catalog, CheckKind, Health, HealthCheck, InstanceView, Registration, RouteSpec, Visibility,
};

/// An instance of service `svc`; `version` as metadata (`Ok`) or a tag (`Err`).
fn inst(id: &str, port: u16, version: Option<Result<&str, &str>>) -> InstanceView {
    let (mut metadata, mut tags) = (BTreeMap::new(), vec!["other".to_owned()]);
    match version {
        Some(Ok(v)) => {
            metadata.insert("version".to_owned(), v.to_owned());
        }
        Some(Err(v)) => tags.push(format!("version={v}")),
        None => {}
    }
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
            tags,
            metadata,
            weight: 100,
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
        health: Health::Passing,
        detail: "".into(),
        lease_deadline: None,
    }
}

fn policy(weights: &[(&str, i64)]) -> CanaryPolicy {
    CanaryPolicy {
        service: "svc".into(),
        version_key: "version".into(),
        weights: weights.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
        header: Some("x-canary".into()),
        cookie: Some("canary".into()),
        sticky_cookie: Some("gw-sticky".into()),
        sticky_ttl: Duration::from_secs(3600),
    }
}

/// Two v1 instances (one by tag), one v2, one without a version.
fn balancer() -> Arc<Balancer> {
    let b = Balancer::new(
        BalancerConfig::default(),
        RetryConfig::default(),
        TimeoutConfig::default(),
    );
    b.apply(&Catalog {
        instances: vec![
            inst("a1", 1, Some(Ok("v1"))),
            inst("a2", 2, Some(Err("v1"))),
            inst("b1", 3, Some(Ok("v2"))),
            inst("x", 4, None),
        ],
        version: 1,
    });
    b
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

/// The instance id and the Set-Cookie of one pick.
fn pick(c: &Canary, b: &Balancer, h: &HeaderMap) -> (String, Option<String>) {
    let snap = b.snapshot();
    let (cands, cookie) = c.pick(b, &snap.services["svc"], h).expect("a pick");
    (
        cands.first().instance_id.to_string(),
        cookie.map(|v| v.to_str().unwrap().to_owned()),
    )
}

fn version(id: &str) -> &'static str {
    match id {
        "a1" | "a2" => "v1",
        "b1" => "v2",
        _ => "none",
    }
}

#[test]
fn version_comes_from_metadata_then_a_tag() {
    let b = balancer();
    let mut both = inst("m", 9, Some(Err("tagged")));
    let r = Arc::get_mut(&mut both.registration).unwrap();
    r.metadata.insert("version".into(), "meta".into());
    // A tag must be `key=value` exactly: `versionx=1` is not `version`.
    let mut near = inst("n", 10, None);
    let r = Arc::get_mut(&mut near.registration).unwrap();
    r.tags = vec!["versionx=1".into(), "version".into()];
    let mut instances = b.snapshot().services["svc"].endpoints.len();
    b.apply(&Catalog {
        instances: vec![
            inst("a1", 1, Some(Ok("v1"))),
            inst("a2", 2, Some(Err("v1"))),
            both,
            near,
            inst("x", 4, None),
        ],
        version: 2,
    });
    instances += 1;
    let snap = b.snapshot();
    assert_eq!(snap.services["svc"].endpoints.len(), instances);
    let by_id = |id: &str| {
        let e = snap.services["svc"]
            .endpoints
            .iter()
            .find(|e| &*e.instance_id == id)
            .unwrap();
        version_of(e, "version").map(str::to_owned)
    };
    assert_eq!(by_id("a1").as_deref(), Some("v1"));
    assert_eq!(by_id("a2").as_deref(), Some("v1"));
    assert_eq!(by_id("m").as_deref(), Some("meta"));
    assert_eq!(by_id("n"), None);
    assert_eq!(by_id("x"), None);
}

#[test]
fn weights_are_checked_naming_the_problem() {
    let w = |pairs: &[(&str, i64)]| {
        check_weights(&pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect())
    };
    assert!(w(&[("v1", 90), ("v2", 10)]).is_ok());
    assert!(w(&[("v1", 0), ("v2", 1)]).is_ok());
    assert!(w(&[("v1", -1), ("v2", 10)]).unwrap_err().contains("\"v1\""));
    assert!(w(&[("v1", 0), ("v2", 0)]).unwrap_err().contains("all 0"));
    assert!(w(&[]).is_err());
    assert!(w(&[("v 1", 1)]).unwrap_err().contains("not a version name"));
    assert!(valid_cookie_name("gw-sticky"));
    assert!(!valid_cookie_name("a b") && !valid_cookie_name("a=b") && !valid_cookie_name(""));
}

#[test]
fn cookies_are_found_in_any_cookie_header() {
    let mut h = headers(&[
        ("cookie", "a=1; canary=v2"),
        ("cookie", "gw-sticky=\"00ff\""),
    ]);
    assert_eq!(cookie(&h, "canary"), Some("v2"));
    assert_eq!(cookie(&h, "gw-sticky"), Some("00ff"));
    assert_eq!(cookie(&h, "can"), None);
    h.clear();
    assert_eq!(cookie(&h, "canary"), None);
}

/// 20,000 draws at 90/10: the v2 share within 5 standard deviations
/// (0.0106; a false failure about once in 1.7 million runs).
#[test]
fn the_draw_follows_the_weights_and_never_picks_unlisted_versions() {
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 90), ("v2", 10)]));
    let n = 20_000;
    let mut v2 = 0;
    for _ in 0..n {
        let (id, _) = pick(&c, &b, &HeaderMap::new());
        assert_ne!(version(&id), "none", "an unversioned instance got traffic");
        v2 += usize::from(version(&id) == "v2");
    }
    let share = v2 as f64 / n as f64;
    let bound = 5.0 * (0.1f64 * 0.9 / n as f64).sqrt();
    assert!((share - 0.10).abs() <= bound, "v2 share {share}");

    // 0/100: everything on v2 (blue-green switch).
    c.weights.store(Arc::new(Weights::of(
        &[("v1".to_owned(), 0), ("v2".to_owned(), 100)].into(),
    )));
    for _ in 0..200 {
        assert_eq!(version(&pick(&c, &b, &HeaderMap::new()).0), "v2");
    }
}

#[test]
fn a_version_without_a_usable_instance_gives_its_share_to_the_others() {
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 10), ("v2", 90)]));
    let snap = b.snapshot();
    let v2 = snap.services["svc"]
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "b1")
        .unwrap()
        .clone();
    drop(snap);
    b.eject(&v2);
    for _ in 0..200 {
        assert_eq!(version(&pick(&c, &b, &HeaderMap::new()).0), "v1");
    }
    // A version listed but never registered is skipped the same way.
    let c = Canary::new(&policy(&[("v1", 1), ("v9", 1000)]));
    for _ in 0..50 {
        assert_eq!(version(&pick(&c, &b, &HeaderMap::new()).0), "v1");
    }
    // Nothing left: 503 material.
    let c = Canary::new(&policy(&[("v2", 1)]));
    let snap = b.snapshot();
    assert!(
        c.pick(&b, &snap.services["svc"], &HeaderMap::new())
            .is_err()
    );
}

#[test]
fn header_and_cookie_choose_the_version() {
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 100), ("v2", 0)]));
    for _ in 0..50 {
        let h = headers(&[("x-canary", "v2")]);
        assert_eq!(version(&pick(&c, &b, &h).0), "v2");
        // "1" / "true": the smallest weight.
        let h = headers(&[("x-canary", "true")]);
        assert_eq!(version(&pick(&c, &b, &h).0), "v2");
        let h = headers(&[("cookie", "canary=1")]);
        assert_eq!(version(&pick(&c, &b, &h).0), "v2");
        // The header wins over the cookie.
        let h = headers(&[("x-canary", "v1"), ("cookie", "canary=v2")]);
        assert_eq!(version(&pick(&c, &b, &h).0), "v1");
        // An unknown version is ignored: the weights decide.
        let h = headers(&[("x-canary", "v7")]);
        assert_eq!(version(&pick(&c, &b, &h).0), "v1");
    }
}

#[test]
fn the_sticky_cookie_pins_an_instance_until_it_cannot_serve() {
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 50), ("v2", 50)]));
    let (first, set) = pick(&c, &b, &HeaderMap::new());
    let set = set.expect("the first answer sets the cookie");
    assert!(set.starts_with("gw-sticky="), "{set}");
    assert!(set.ends_with("; Path=/; Max-Age=3600; HttpOnly"), "{set}");
    let value = set.split(';').next().unwrap().to_owned();
    let h = headers(&[("cookie", &value)]);
    for _ in 0..50 {
        let (id, again) = pick(&c, &b, &h);
        assert_eq!(id, first);
        assert_eq!(again, None, "a held pin is not set again");
    }
    // Ejected: picked anew and the cookie set to the new instance.
    let ep = b.snapshot().services["svc"]
        .endpoints
        .iter()
        .find(|e| *e.instance_id == *first)
        .unwrap()
        .clone();
    b.eject(&ep);
    let (id, set) = pick(&c, &b, &h);
    assert_ne!(id, first);
    assert_ne!(set.expect("re-pinned").split(';').next().unwrap(), value);

    // A version taken out of the weights moves its pinned clients.
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 0), ("v2", 1)]));
    let (id, set) = pick(&c, &b, &HeaderMap::new());
    assert_eq!(id, "b1");
    let on_v2 = headers(&[("cookie", set.unwrap().split(';').next().unwrap())]);
    c.weights.store(Arc::new(Weights::of(
        &[("v1".to_owned(), 1), ("v2".to_owned(), 0)].into(),
    )));
    let (id, set) = pick(&c, &b, &on_v2);
    assert_eq!(version(&id), "v1");
    assert!(set.is_some());
    // A forged or stale value is just a first visit.
    let h = headers(&[("cookie", "gw-sticky=zz; gw-sticky=0123")]);
    assert!(pick(&c, &b, &h).1.is_some());
}

#[test]
fn sticky_without_weights_pins_among_every_instance() {
    let b = balancer();
    let mut p = policy(&[]);
    p.header = None;
    let c = Canary::new(&p);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        seen.insert(pick(&c, &b, &HeaderMap::new()).0);
    }
    assert!(seen.contains("x"), "no split: every instance takes traffic");
    let (first, set) = pick(&c, &b, &HeaderMap::new());
    let h = headers(&[("cookie", set.unwrap().split(';').next().unwrap())]);
    for _ in 0..20 {
        assert_eq!(pick(&c, &b, &h).0, first);
    }
}

#[test]
fn admin_put_validates_and_swaps() {
    let canaries = Canaries::new(&[policy(&[("v1", 90), ("v2", 10)])]).unwrap();
    let ok = canaries
        .put_weights("svc", br#"{"weights":{"v1":50,"v2":50}}"#)
        .unwrap();
    assert_eq!(ok["weights"]["v2"], 50);
    assert_eq!(canaries.get("svc").unwrap().weights.load().weight("v2"), 50);
    let (status, _, msg) = canaries
        .put_weights("svc", br#"{"weights":{"v1":-5}}"#)
        .unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("\"v1\""), "{msg}");
    let (status, ..) = canaries.put_weights("svc", b"{").unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, ..) = canaries
        .put_weights("svc", br#"{"weight":{"v1":1}}"#)
        .unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, ..) = canaries
        .put_weights("other", br#"{"weights":{"v1":1}}"#)
        .unwrap_err();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Unchanged by the refusals.
    assert_eq!(canaries.get("svc").unwrap().weights.load().weight("v1"), 50);
}

/// Re-registering an instance with another `weight` or version takes
/// effect with the next snapshot: the endpoint is rebuilt (its weight
/// divides its cost in `peak_ewma` / `power_of_two`), and the version
/// groups follow.
#[test]
fn re_registering_changes_an_instances_weight_and_version() {
    let b = balancer();
    let c = Canary::new(&policy(&[("v1", 0), ("v2", 1)]));
    assert_eq!(pick(&c, &b, &HeaderMap::new()).0, "b1");
    let mut a1 = inst("a1", 1, Some(Ok("v2")));
    Arc::get_mut(&mut a1.registration).unwrap().weight = 7;
    b.apply(&Catalog {
        instances: vec![a1, inst("b1", 3, Some(Ok("v2")))],
        version: 2,
    });
    let snap = b.snapshot();
    let a1 = snap.services["svc"]
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "a1")
        .unwrap()
        .clone();
    assert_eq!(a1.weight, 7);
    assert_eq!(version_of(&a1, "version"), Some("v2"));
    let seen: std::collections::HashSet<_> = (0..200)
        .map(|_| pick(&c, &b, &HeaderMap::new()).0)
        .collect();
    assert!(seen.contains("a1") && seen.contains("b1"), "{seen:?}");
}
