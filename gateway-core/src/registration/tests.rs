use super::*;
use crate::registry::memory::MemoryRegistry;
use axum::body::Body;
use http_body_util::BodyExt;
use pb::registry_service_server::RegistryService;
use tower::ServiceExt;

fn policy() -> RegistrationPolicy {
    RegistrationPolicy {
        check_interval: std::time::Duration::from_secs(5),
        check_timeout: std::time::Duration::from_secs(1),
        lease: std::time::Duration::from_secs(30),
        allowed_networks: vec![],
        upstream_tls: true,
    }
}

fn api(token: Option<&str>) -> RegistrationApi {
    RegistrationApi::new(
        Arc::new(MemoryRegistry::new()),
        policy(),
        token.map(String::from),
    )
}

/// A shared token "all", one for `orders` and `orders-*`, one for `payments`.
fn scoped_api() -> RegistrationApi {
    api(Some("all")).scoped_tokens([
        "orders,orders-*=o-tok".parse::<ScopedToken>().unwrap(),
        "payments=p-tok".parse().unwrap(),
    ])
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
}

async fn send(router: &Router, req: http::Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

async fn call_full(
    router: &Router,
    method: &str,
    uri: &str,
    body: &str,
    auth: Option<&str>,
) -> Answer {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    send(router, b.body(Body::from(body.to_owned())).unwrap()).await
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: &str,
    auth: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let a = call_full(router, method, uri, body, auth).await;
    (a.status, a.json)
}

async fn listed(router: &Router) -> usize {
    let (_, v) = call(router, "GET", "/v1/registrations", "", None).await;
    v["instances"].as_array().unwrap().len()
}

#[tokio::test]
async fn json_register_list_renew_deregister() {
    let r = router(api(None));
    let body = r#"{"service":"orders","address":"127.0.0.1:7001","health":{"kind":"ttl"}}"#;
    let (s, v) = call(&r, "PUT", "/v1/registrations", body, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["instance_id"], "orders-127.0.0.1:7001");
    let (s, _) = call(&r, "PUT", "/v1/registrations", body, None).await;
    assert_eq!(s, StatusCode::OK, "registering twice is harmless");
    let (_, v) = call(&r, "GET", "/v1/registrations?service=orders", "", None).await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["instances"][0]["registration"]["routes"][0]["path_prefix"],
        "/orders"
    );
    let (s, _) = call(
        &r,
        "POST",
        "/v1/registrations/orders/orders-127.0.0.1:7001/renew",
        "",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &r,
        "DELETE",
        "/v1/registrations/orders/orders-127.0.0.1:7001",
        "",
        None,
    )
    .await;
    assert_eq!((s, v["existed"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, v) = call(
        &r,
        "POST",
        "/v1/registrations/orders/orders-127.0.0.1:7001/renew",
        "",
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn bad_registrations_name_the_problem_and_change_nothing() {
    let r = router(api(None));
    for (body, code, field) in [
        ("{", "invalid_json", None),
        // An unknown field is named (it used to be a bare invalid_json).
        (
            r#"{"service":"orders","adress":"x"}"#,
            "invalid_field",
            Some("registration.adress"),
        ),
        (
            r#"{"address":"127.0.0.1:1"}"#,
            "invalid_field",
            Some("registration.service"),
        ),
        (
            r#"{"service":"orders","address":"nope"}"#,
            "invalid_field",
            Some("registration.address"),
        ),
        (
            r#"{"service":"orders","address":"127.0.0.1:1","visibility":"secret"}"#,
            "invalid_field",
            Some("registration.visibility"),
        ),
        // A wrong type is named too.
        (
            r#"{"service":"orders","address":"127.0.0.1:1","weight":"heavy"}"#,
            "invalid_field",
            Some("registration.weight"),
        ),
    ] {
        let (s, v) = call(&r, "PUT", "/v1/registrations", body, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{body}");
        }
    }
    let (_, v) = call(&r, "PUT", "/v1/registrations", "{", None).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("EOF"),
        "{v}"
    );
    let (_, v) = call(&r, "GET", "/v1/registrations", "", None).await;
    assert!(v["instances"].as_array().unwrap().is_empty());
}

/// Every shape a registration must not take is refused with 400 naming the
/// field (`None` = malformed JSON, no field), and nothing is registered.
#[tokio::test]
async fn malformed_registrations_are_refused_naming_the_field() {
    const OK: &str = r#""service":"orders","address":"127.0.0.1:1""#;
    let with = |extra: &str| format!("{{{OK},{extra}}}");
    let cases: Vec<(String, Option<&str>)> = vec![
        // Not an object where an object belongs.
        (
            r#"["svc","svc-1","127.0.0.1:9000"]"#.into(),
            Some("registration"),
        ),
        (
            r#"["orders","","127.0.0.1:1",[],"public",[],{},0,null,0,false]"#.into(),
            Some("registration"),
        ),
        (r#""orders""#.into(), Some("registration")),
        ("42".into(), Some("registration")),
        ("null".into(), Some("registration")),
        ("true".into(), Some("registration")),
        (with(r#""health":[1]"#), Some("registration.health")),
        (
            with(r#""health":["grpc","",""]"#),
            Some("registration.health"),
        ),
        (with(r#""health":"grpc""#), Some("registration.health")),
        (
            with(r#""routes":{"path_prefix":"/a"}"#),
            Some("registration.routes"),
        ),
        (with(r#""routes":[["/a"]]"#), Some("registration.routes[0]")),
        (with(r#""routes":["/a"]"#), Some("registration.routes[0]")),
        (
            with(r#""routes":[{"path_prefix":"/a"},null]"#),
            Some("registration.routes[1]"),
        ),
        (with(r#""routes":null"#), Some("registration.routes")),
        (with(r#""metadata":[]"#), Some("registration.metadata")),
        (with(r#""metadata":null"#), Some("registration.metadata")),
        (with(r#""tags":"v1""#), Some("registration.tags")),
        // Wrong types.
        (with(r#""weight":"5""#), Some("registration.weight")),
        (with(r#""weight":null"#), Some("registration.weight")),
        (with(r#""weight":true"#), Some("registration.weight")),
        (with(r#""service2":"x""#), Some("registration.service2")),
        (
            r#"{"service":null,"address":"127.0.0.1:1"}"#.into(),
            Some("registration.service"),
        ),
        (
            r#"{"service":5,"address":"127.0.0.1:1"}"#.into(),
            Some("registration.service"),
        ),
        (
            r#"{"service":"orders","address":["127.0.0.1",1]}"#.into(),
            Some("registration.address"),
        ),
        (with(r#""tags":[1]"#), Some("registration.tags[0]")),
        (
            with(r#""metadata":{"team":1}"#),
            Some("registration.metadata.team"),
        ),
        (with(r#""streaming":"yes""#), Some("registration.streaming")),
        (with(r#""visibility":1"#), Some("registration.visibility")),
        (with(r#""instance_id":7"#), Some("registration.instance_id")),
        (
            with(r#""health":{"kind":5}"#),
            Some("registration.health.kind"),
        ),
        (
            with(r#""health":{"interval_ms":"5"}"#),
            Some("registration.health.interval_ms"),
        ),
        (
            with(r#""health":{"grpc_service":null}"#),
            Some("registration.health.grpc_service"),
        ),
        (
            with(r#""routes":[{"path_prefix":"/a","hosts":"x"}]"#),
            Some("registration.routes[0].hosts"),
        ),
        (
            with(r#""routes":[{"path_prefix":"/a","stream":1}]"#),
            Some("registration.routes[0].stream"),
        ),
        (
            with(r#""routes":[{"path_prefix":5}]"#),
            Some("registration.routes[0].path_prefix"),
        ),
        // Negative, fractional and overflowing numbers.
        (with(r#""weight":-1"#), Some("registration.weight")),
        (with(r#""weight":1.5"#), Some("registration.weight")),
        (with(r#""weight":4294967296"#), Some("registration.weight")),
        (with(r#""weight":2000"#), Some("registration.weight")),
        (with(r#""lease_ms":-1"#), Some("registration.lease_ms")),
        (
            with(r#""lease_ms":18446744073709551616"#),
            Some("registration.lease_ms"),
        ),
        (with(r#""lease_ms":1e3"#), Some("registration.lease_ms")),
        (
            with(r#""lease_ms":18446744073709551615"#),
            Some("registration.lease_ms"),
        ),
        (
            with(r#""health":{"interval_ms":-5}"#),
            Some("registration.health.interval_ms"),
        ),
        (
            with(r#""health":{"timeout_ms":0.5}"#),
            Some("registration.health.timeout_ms"),
        ),
        (
            with(r#""health":{"deregister_critical_after_ms":-1}"#),
            Some("registration.health.deregister_critical_after_ms"),
        ),
        (
            with(r#""health":{"interval_ms":99999999999999}"#),
            Some("registration.health.interval_ms"),
        ),
        (
            with(r#""routes":[{"path_prefix":"/a","timeout_ms":-1}]"#),
            Some("registration.routes[0].timeout_ms"),
        ),
        (
            with(r#""routes":[{"path_prefix":"/a","max_duration_ms":18446744073709551615}]"#),
            Some("registration.routes[0].max_duration_ms"),
        ),
        // Unknown and duplicate fields.
        (with(r#""adress":"x""#), Some("registration.adress")),
        (
            with(r#""routes":[{"prefix":"/a"}]"#),
            Some("registration.routes[0].prefix"),
        ),
        (
            with(r#""health":{"interval":5}"#),
            Some("registration.health.interval"),
        ),
        (with(r#""service":"again""#), Some("registration")),
        // Enum strings and reserved keys.
        (
            with(r#""health":{"kind":"tcp"}"#),
            Some("registration.health.kind"),
        ),
        (
            with(r#""metadata":{"gw-x":"1"}"#),
            Some("registration.metadata.gw-x"),
        ),
        // Malformed JSON.
        ("".into(), None),
        ("{".into(), None),
        (r#"{"service":}"#.into(), None),
        (format!("{{{OK}}} {{}}"), None),
        (format!("{{{OK}}}x"), None),
        ("{'service':'orders'}".into(), None),
    ];
    let r = router(api(None));
    for (body, field) in &cases {
        let (s, v) = call(&r, "PUT", "/v1/registrations", body, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        match field {
            Some(f) => {
                assert_eq!(v["error"]["code"], "invalid_field", "{body}: {v}");
                assert_eq!(v["error"]["field"], *f, "{body}: {v}");
            }
            None => {
                assert_eq!(v["error"]["code"], "invalid_json", "{body}: {v}");
                assert!(v["error"]["field"].is_null(), "{body}: {v}");
            }
        }
        // The message speaks JSON, not Rust.
        for internal in ["Json", "struct", "u32", "u64", "sequence", " map"] {
            assert!(!message.contains(internal), "{body}: {message}");
        }
    }
    assert_eq!(listed(&r).await, 0, "nothing was registered");
}

#[tokio::test]
async fn wrong_types_say_what_was_expected() {
    let r = router(api(None));
    let body = r#"{"service":"orders","address":"127.0.0.1:1","weight":"5"}"#;
    let (_, v) = call(&r, "PUT", "/v1/registrations", body, None).await;
    assert_eq!(
        v["error"]["message"],
        "invalid field `registration.weight`: invalid type: string \"5\", expected an integer from 0 to 4294967295"
    );
    let body = r#"{"service":"orders","address":"127.0.0.1:1","health":[1]}"#;
    let (_, v) = call(&r, "PUT", "/v1/registrations", body, None).await;
    assert_eq!(
        v["error"]["message"],
        "invalid field `registration.health`: invalid type: array, expected an object"
    );
}

/// Routing matches a prefix's normalised form, so any other spelling would
/// be listed as one path and route another: refused.
#[tokio::test]
async fn prefixes_must_be_normalised() {
    let r = router(api(None));
    for prefix in [
        "/a/../b",
        "/x/..",
        "/..",
        "/a/./b",
        "/.",
        "//a",
        "/a//b",
        "/a/",
        "/a%2Fb",
        "/%61",
        "/a/%2e%2e",
        "/a/%2E",
        "a",
        "",
        "/a%00",
    ] {
        let body = serde_json::json!({"service": "orders", "address": "127.0.0.1:1",
            "routes": [{"path_prefix": "/fine"}, {"path_prefix": prefix}]});
        let (s, v) = call(&r, "PUT", "/v1/registrations", &body.to_string(), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{prefix:?}: {v}");
        assert_eq!(
            v["error"]["field"], "registration.routes[1].path_prefix",
            "{prefix:?}: {v}"
        );
    }
    assert_eq!(listed(&r).await, 0);
    for (i, prefix) in ["/", "/a", "/a/b-c", "/v1/a.b", "/a..b", "/.well-known"]
        .into_iter()
        .enumerate()
    {
        let body = serde_json::json!({"service": "orders", "instance_id": format!("o{i}"),
            "address": "127.0.0.1:1", "routes": [{"path_prefix": prefix}]});
        let (s, v) = call(&r, "PUT", "/v1/registrations", &body.to_string(), None).await;
        assert_eq!(s, StatusCode::CREATED, "{prefix:?}: {v}");
    }
}

#[tokio::test]
async fn oversize_bodies_get_a_json_413() {
    let r = router(api(None));
    let big = vec![b' '; 10 * 1024 * 1024];
    // With a Content-Length: refused before reading.
    let req = http::Request::builder()
        .method("PUT")
        .uri("/v1/registrations")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let a = send(&r, req).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["error"]["code"], "body_too_large", "{}", a.json);
    assert_eq!(a.headers["content-type"], "application/json");
    // Streamed without a length: cut at the limit.
    let chunks = big
        .chunks(64 * 1024)
        .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
        .collect::<Vec<_>>();
    let req = http::Request::builder()
        .method("PUT")
        .uri("/v1/registrations")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let a = send(&r, req).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["error"]["code"], "body_too_large");
    // Exactly at the limit is read (and here valid).
    let reg = r#"{"service":"orders","address":"127.0.0.1:1"}"#;
    let padded = reg.to_owned() + &" ".repeat(MAX_HTTP_BODY_BYTES - reg.len());
    let (s, v) = call(&r, "PUT", "/v1/registrations", &padded, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = call(&r, "PUT", "/v1/registrations", &format!("{padded} "), None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A gRPC message over the limit is RESOURCE_EXHAUSTED, as gRPC's
/// status-code guide says, not tonic's OUT_OF_RANGE.
#[tokio::test]
async fn oversize_grpc_messages_are_resource_exhausted() {
    let r = router(api(None));
    let len = (MAX_GRPC_MESSAGE_BYTES + 1) as u32;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend(std::iter::repeat_n(0u8, 1024));
    let req = http::Request::builder()
        .method("POST")
        .uri("/forwarding.v1.RegistryService/Register")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(frame))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "8", "{:?}", resp.headers());
    // A message within the limit still decodes (and is validated).
    let req = http::Request::builder()
        .method("POST")
        .uri("/forwarding.v1.RegistryService/Register")
        .header("content-type", "application/grpc")
        .body(Body::from(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3", "{:?}", resp.headers());
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let api = api(Some("s3cret"));
    let r = router(api.clone());
    let body = r#"{"service":"orders","address":"127.0.0.1:7001"}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("Bearers3cret"),
        Some("Basic s3cret"),
        Some("Bearer "),
    ] {
        let a = call_full(&r, "PUT", "/v1/registrations", body, auth).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(a.json["error"]["code"], "unauthenticated");
        assert_eq!(
            a.headers["www-authenticate"], "Bearer realm=\"registration\"",
            "{auth:?}"
        );
    }
    let (s, _) = call(&r, "PUT", "/v1/registrations", body, Some("Bearer s3cret")).await;
    assert_eq!(s, StatusCode::CREATED);
    // The scheme is case-insensitive (RFC 9110 11.1).
    for auth in ["bearer s3cret", "BEARER s3cret", "BeArEr  s3cret"] {
        let (s, v) = call(&r, "PUT", "/v1/registrations", body, Some(auth)).await;
        assert_eq!(s, StatusCode::OK, "{auth}: {v}");
    }
    let rej = api.rejections();
    assert_eq!(rej.unauthenticated.load(Ordering::Relaxed), 8);
    // An empty secret (a configuration that skipped validation) is never
    // matched by a missing or empty token.
    let r = router(self::api(Some("")));
    for auth in [None, Some("Bearer "), Some("Bearer")] {
        let (s, _) = call(&r, "PUT", "/v1/registrations", body, auth).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    assert_eq!(rej.forbidden.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn scoped_tokens_cover_their_services_only() {
    let api = scoped_api();
    let r = router(api.clone());
    let reg = |service: &str| {
        format!(r#"{{"service":"{service}","address":"127.0.0.1:7001","health":{{"kind":"ttl"}}}}"#)
    };
    for (token, service, status) in [
        ("o-tok", "orders", StatusCode::CREATED),
        ("o-tok", "orders-eu", StatusCode::CREATED),
        ("o-tok", "ordersx", StatusCode::FORBIDDEN),
        ("o-tok", "payments", StatusCode::FORBIDDEN),
        ("p-tok", "payments", StatusCode::CREATED),
        ("p-tok", "orders", StatusCode::FORBIDDEN),
        ("all", "anything", StatusCode::CREATED),
        ("nope", "orders", StatusCode::UNAUTHORIZED),
    ] {
        let auth = format!("Bearer {token}");
        let (s, v) = call(&r, "PUT", "/v1/registrations", &reg(service), Some(&auth)).await;
        assert_eq!(s, status, "{token} registering {service}: {v}");
        if s == StatusCode::FORBIDDEN {
            assert_eq!(v["error"]["code"], "forbidden");
            assert!(v["error"]["field"].is_null());
        }
    }
    assert_eq!(listed(&r).await, 4);
    // Renewal and deregistration need the same scope: the service in the
    // path is the instance's own (the registry's key).
    let orders = "/v1/registrations/orders/orders-127.0.0.1:7001";
    for (method, uri) in [
        ("POST", format!("{orders}/renew")),
        ("DELETE", orders.into()),
    ] {
        let (s, v) = call(&r, method, &uri, "", Some("Bearer p-tok")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
        let a = call_full(&r, method, &uri, "", None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        listed(&r).await,
        4,
        "a refused deregistration removed nothing"
    );
    let (s, _) = call(
        &r,
        "POST",
        &format!("{orders}/renew"),
        "",
        Some("Bearer o-tok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&r, "DELETE", orders, "", Some("Bearer o-tok")).await;
    assert_eq!((s, v["existed"].as_bool()), (StatusCode::OK, Some(true)));
    let rej = api.rejections();
    assert_eq!(rej.forbidden.load(Ordering::Relaxed), 5);
    assert_eq!(rej.unauthenticated.load(Ordering::Relaxed), 3);
}

fn code<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Code> {
    r.map(|_| ()).map_err(|s| s.code())
}

#[tokio::test]
async fn grpc_scopes_answer_permission_denied_and_unauthenticated() {
    let api = scoped_api();
    let request = |service: &str, token: Option<&str>| {
        let mut req = tonic::Request::new(pb::RegisterRequest {
            registration: Some(pb::Registration {
                service: service.into(),
                address: "127.0.0.1:7001".into(),
                ..Default::default()
            }),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    assert_eq!(
        code(RegistryService::register(&api, request("payments", Some("o-tok"))).await),
        Err(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        code(RegistryService::register(&api, request("orders", Some("bad"))).await),
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        code(RegistryService::register(&api, request("orders", None)).await),
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        code(RegistryService::register(&api, request("orders", Some("o-tok"))).await),
        Ok(())
    );
    let key = |token: &str| {
        let mut req = tonic::Request::new(pb::DeregisterRequest {
            service: "orders".into(),
            instance_id: "orders-127.0.0.1:7001".into(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    assert_eq!(
        code(RegistryService::deregister(&api, key("p-tok")).await),
        Err(tonic::Code::PermissionDenied)
    );
    let renew = tonic::Request::from_parts(
        key("p-tok").metadata().clone(),
        Default::default(),
        pb::RenewRequest {
            service: "orders".into(),
            instance_id: "orders-127.0.0.1:7001".into(),
        },
    );
    assert_eq!(
        code(RegistryService::renew(&api, renew).await),
        Err(tonic::Code::PermissionDenied)
    );
    assert_eq!(api.list("orders").instances.len(), 1);
}

#[tokio::test]
async fn openapi_is_served_as_it_describes_itself() {
    let r = router(api(None));
    let resp = r
        .clone()
        .oneshot(
            http::Request::get("/openapi.yaml")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let served_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, OPENAPI.as_bytes());
    // The document's own entry for this path: the served media type, and a
    // schema of an object (a YAML mapping), not a string scalar.
    let entry = OPENAPI
        .split("\n  /openapi.yaml:\n")
        .nth(1)
        .and_then(|rest| rest.split("\ncomponents:").next())
        .unwrap();
    assert!(
        entry.contains(&format!("\n            {served_type}:\n")),
        "{entry}"
    );
    assert!(
        entry.contains(&format!(
            "\n            {served_type}:\n              schema:\n                type: object\n"
        )),
        "{entry}"
    );
    assert!(OPENAPI.starts_with("openapi: 3."), "the body is a mapping");
}

/// The document's integer formats hold the values the code takes: every
/// int64 is at least 0, and the millisecond fields a registration sends are
/// bounded by [`crate::registry::MAX_MS`], which fits an int64.
#[test]
fn openapi_integer_formats_match_the_code() {
    let lines: Vec<&str> = OPENAPI.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bounded = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.trim() != "format: int64" {
            continue;
        }
        // The sibling keys of this `format`: the contiguous lines at its
        // indentation.
        let at = indent(l);
        let start = (0..i).rev().find(|&j| indent(lines[j]) < at).unwrap() + 1;
        let end = (i..lines.len()).find(|&j| indent(lines[j]) < at).unwrap();
        let siblings: Vec<&str> = lines[start..end]
            .iter()
            .filter(|x| indent(x) == at)
            .map(|x| x.trim())
            .collect();
        assert!(
            siblings.contains(&"minimum: 0"),
            "line {}: {siblings:?}",
            i + 1
        );
        if siblings.contains(&format!("maximum: {}", crate::registry::MAX_MS).as_str()) {
            bounded += 1;
        }
        assert!(
            !siblings.iter().any(|s| s.starts_with("maximum: ")
                && *s != format!("maximum: {}", crate::registry::MAX_MS)),
            "line {}: {siblings:?}",
            i + 1
        );
    }
    // lease_ms, routes[].timeout_ms / max_duration_ms, health.interval_ms /
    // timeout_ms / deregister_critical_after_ms.
    assert_eq!(bounded, 6);
    assert!(!OPENAPI.contains("format: uint64"));
}

/// Every millisecond field takes up to a year and names itself above it
/// (near `u64::MAX` a deadline computed from it would overflow the clock).
#[tokio::test]
async fn millisecond_fields_are_bounded() {
    let r = router(api(None));
    let max = crate::registry::MAX_MS;
    for (i, (template, field)) in [
        (r#""lease_ms":N"#, "registration.lease_ms"),
        (
            r#""health":{"interval_ms":N}"#,
            "registration.health.interval_ms",
        ),
        (
            r#""health":{"timeout_ms":N}"#,
            "registration.health.timeout_ms",
        ),
        (
            r#""health":{"deregister_critical_after_ms":N}"#,
            "registration.health.deregister_critical_after_ms",
        ),
        (
            r#""routes":[{"path_prefix":"/a","timeout_ms":N}]"#,
            "registration.routes[0].timeout_ms",
        ),
        (
            r#""routes":[{"path_prefix":"/a","max_duration_ms":N}]"#,
            "registration.routes[0].max_duration_ms",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let body = |v: u64| {
            let extra = template.replace('N', &v.to_string());
            format!(
                r#"{{"service":"orders","instance_id":"o{i}","address":"127.0.0.1:1",{extra}}}"#
            )
        };
        let (s, v) = call(&r, "PUT", "/v1/registrations", &body(max), None).await;
        assert_eq!(s, StatusCode::CREATED, "{field}: {v}");
        let (s, v) = call(&r, "PUT", "/v1/registrations", &body(max + 1), None).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{v}"
        );
    }
}

/// The statuses `registry.proto` promises are the ones the API answers:
/// PERMISSION_DENIED is a known token out of scope, a missing or unknown
/// token is UNAUTHENTICATED (the proto once said PERMISSION_DENIED for it).
#[tokio::test]
async fn registry_proto_names_the_statuses_the_api_answers() {
    let proto = include_str!("../../../proto/proto/forwarding/v1/registry.proto");
    let service = &proto[..proto.find("\nenum Visibility").unwrap()];
    let sentence_with = |word: &str| {
        service
            .replace("//", " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .split(". ")
            .find(|s| s.contains(word))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        sentence_with("UNAUTHENTICATED:").contains("no token, or one the gateway does not know")
    );
    assert!(sentence_with("PERMISSION_DENIED:").contains("a known token"));
    assert!(sentence_with("RESOURCE_EXHAUSTED").contains("4 MiB"));
    let produced = [
        ApiError::Unauthenticated,
        ApiError::Forbidden {
            service: "x".into(),
        },
        ApiError::Json(String::new()),
        ApiError::TooLarge { limit: 1 },
    ]
    .map(|e| tonic::Status::from(e).code());
    assert_eq!(
        produced,
        [
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::ResourceExhausted
        ]
    );
    // An address outside the allowed networks is a field error.
    let api = RegistrationApi::new(
        Arc::new(MemoryRegistry::new()),
        RegistrationPolicy {
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
            upstream_tls: true,
            ..policy()
        },
        None,
    );
    let req = tonic::Request::new(pb::RegisterRequest {
        registration: Some(pb::Registration {
            service: "orders".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }),
    });
    assert_eq!(
        code(RegistryService::register(&api, req).await),
        Err(tonic::Code::InvalidArgument)
    );
    assert!(sentence_with("outside the ranges").contains("INVALID_ARGUMENT"));
}

/// The values the document's schemas exclude with `not: {minimum, maximum}`
/// (a lease under 100 ms, a check interval under 10 ms; 0 is the default)
/// are the ones the code refuses, and the values just outside are taken.
/// schemathesis found the document allowing them: it said so in prose only.
#[tokio::test]
async fn openapi_excluded_ranges_match_the_code() {
    // The `not` range under a property key of the document.
    let excluded = |key: &str| -> (u64, u64) {
        let rest = OPENAPI
            .split(&format!("\n        {key}:\n"))
            .nth(1)
            .unwrap();
        let block = rest.split("\n        default:").next().unwrap();
        let not = block.split("\n          not:\n").nth(1).expect(key);
        let num = |k: &str| -> u64 {
            not.lines()
                .find_map(|l| l.trim().strip_prefix(k))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        (num("minimum:"), num("maximum:"))
    };
    let r = router(api(None));
    for (i, (key, template, field)) in [
        ("lease_ms", r#""lease_ms":N"#, "registration.lease_ms"),
        (
            "interval_ms",
            r#""health":{"interval_ms":N}"#,
            "registration.health.interval_ms",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (lo, hi) = excluded(key);
        assert_eq!(lo, 1, "{key}: 0 is the default, not excluded");
        let body = |v: u64| {
            let extra = template.replace('N', &v.to_string());
            format!(
                r#"{{"service":"orders","instance_id":"x{i}-{v}","address":"127.0.0.1:1",{extra}}}"#
            )
        };
        for v in [lo, hi] {
            let (s, j) = call(&r, "PUT", "/v1/registrations", &body(v), None).await;
            assert_eq!(
                (s, j["error"]["field"].as_str()),
                (StatusCode::BAD_REQUEST, Some(field)),
                "{key}={v}: {j}"
            );
        }
        for v in [0, hi + 1] {
            let (s, j) = call(&r, "PUT", "/v1/registrations", &body(v), None).await;
            assert_eq!(s, StatusCode::CREATED, "{key}={v}: {j}");
        }
    }
}

/// `address` is what the document's pattern says: host or `[ipv6]`, a
/// colon, a port of 1-65535 in digits. schemathesis found the document
/// without a pattern (any string was schema-valid), and the code taking
/// `h:+80` (`u16`'s parser allows a '+'), which the pattern refuses.
#[tokio::test]
async fn address_is_what_the_openapi_pattern_says() {
    assert!(OPENAPI.contains(":0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$'"));
    let r = router(api(None));
    let put = |i: usize, a: &str| {
        format!(r#"{{"service":"orders","instance_id":"a{i}","address":"{a}"}}"#)
    };
    for (i, a) in [
        "127.0.0.1:1",
        "[::1]:65535",
        "orders.internal:0080",
        "h-1:80",
    ]
    .into_iter()
    .enumerate()
    {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(i, a), None).await;
        assert_eq!(s, StatusCode::CREATED, "{a}: {j}");
    }
    for a in [
        "00", "h:+80", "h:0", "h:65536", "h:", ":80", "h_1:80", "h:8 0", "[a]:1",
    ] {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(99, a), None).await;
        assert_eq!(
            (s, j["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("registration.address")),
            "{a}: {j}"
        );
    }
}

/// `routes[].path_prefix` is what the document's pattern says: "/" or
/// segments that are not empty, "." or "..", with no '%' at all, and at most
/// 1024 characters (the document's maxLength counts characters). schemathesis
/// found the document taking any string starting with '/', and the code
/// taking "/a%zz" (a '%' that escapes nothing) and refusing 1024 characters
/// of more than 1024 bytes.
#[tokio::test]
async fn path_prefix_is_what_the_openapi_pattern_says() {
    assert!(OPENAPI.contains(r#"pattern: '^(/|(/([^/%.\u0000][^/%\u0000]*|\.[^/%.\u0000][^/%\u0000]*|\.\.[^/%\u0000]+))+)$'"#));
    let r = router(api(None));
    let put = |i: usize, p: &str| {
        serde_json::json!({"service": "orders", "instance_id": format!("p{i}"),
            "address": "127.0.0.1:1", "routes": [{"path_prefix": p, "hosts": ["a.b", "[::1]"]}]})
        .to_string()
    };
    let long = format!("/{}", "\u{e4}".repeat(1023));
    for (i, p) in ["/", "/a", "/a/b", "/...", "/.a", "/\u{e4}", long.as_str()]
        .into_iter()
        .enumerate()
    {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(i, p), None).await;
        assert_eq!(s, StatusCode::CREATED, "{p}: {j}");
    }
    let too_long = format!("/{}", "a".repeat(1024));
    for p in [
        "//",
        "/a/",
        "/.",
        "/..",
        "/a%20",
        "/a%zz",
        "/%",
        too_long.as_str(),
    ] {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(99, p), None).await;
        assert_eq!(
            (s, j["error"]["field"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("registration.routes[0].path_prefix")
            ),
            "{p}: {j}"
        );
    }
}

/// `health.http_path` is what the document says: required for kind `http`
/// (its `anyOf`), and empty or starting with '/' for every kind (its
/// pattern). schemathesis found the document taking kind `http` with an
/// empty or relative path, and the code took a relative path for the other
/// kinds.
#[tokio::test]
async fn http_path_is_what_the_openapi_schema_says() {
    assert!(OPENAPI.contains("pattern: '^(/[\\s\\S]*)?$'"));
    assert!(OPENAPI.contains("        - required: [http_path]\n"));
    let r = router(api(None));
    let put = |i: usize, health: serde_json::Value| {
        serde_json::json!({"service": "orders", "instance_id": format!("h{i}"),
            "address": "127.0.0.1:1", "health": health})
        .to_string()
    };
    let ok = [
        serde_json::json!({"kind": "http", "http_path": "/healthz"}),
        serde_json::json!({"kind": "grpc", "http_path": ""}),
        serde_json::json!({"kind": "ttl", "http_path": "/x"}),
        serde_json::json!({"kind": null}),
    ];
    for (i, h) in ok.into_iter().enumerate() {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(i, h.clone()), None).await;
        assert_eq!(s, StatusCode::CREATED, "{h}: {j}");
    }
    let bad = [
        serde_json::json!({"kind": "http"}),
        serde_json::json!({"kind": "http", "http_path": ""}),
        serde_json::json!({"kind": "http", "http_path": "healthz"}),
        serde_json::json!({"kind": "grpc", "http_path": "healthz"}),
        serde_json::json!({"http_path": "x"}),
    ];
    for h in bad {
        let (s, j) = call(&r, "PUT", "/v1/registrations", &put(99, h.clone()), None).await;
        assert_eq!(
            (s, j["error"]["field"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("registration.health.http_path")
            ),
            "{h}: {j}"
        );
    }
}
