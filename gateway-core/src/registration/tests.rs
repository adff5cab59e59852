use super::*;
use crate::registry::memory::MemoryRegistry;
use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn api(token: Option<&str>) -> RegistrationApi {
    let policy = RegistrationPolicy {
        check_interval: std::time::Duration::from_secs(5),
        check_timeout: std::time::Duration::from_secs(1),
        lease: std::time::Duration::from_secs(30),
        allowed_networks: vec![],
    };
    RegistrationApi::new(
        Arc::new(MemoryRegistry::new()),
        policy,
        token.map(String::from),
    )
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: &str,
    auth: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let resp = router
        .clone()
        .oneshot(b.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
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
        (r#"{"service":"orders","adress":"x"}"#, "invalid_json", None),
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
        (
            r#"{"service":"orders","address":"127.0.0.1:1","weight":"heavy"}"#,
            "invalid_json",
            None,
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

#[tokio::test]
async fn token_is_required_when_configured() {
    let r = router(api(Some("s3cret")));
    let body = r#"{"service":"orders","address":"127.0.0.1:7001"}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
    ] {
        let (s, v) = call(&r, "PUT", "/v1/registrations", body, auth).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(v["error"]["code"], "unauthenticated");
    }
    let (s, _) = call(&r, "PUT", "/v1/registrations", body, Some("Bearer s3cret")).await;
    assert_eq!(s, StatusCode::CREATED);
}
