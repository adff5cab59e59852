use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, EncodingKey, Header, encode};
use serde_json::json;

use super::jwt::{Family, Jwt, Key, Keys, Reject};
use super::*;
use crate::config::{
    AuthPolicy, AuthProviderJwt, BalancerConfig, LimitsConfig, RetryConfig, TimeoutConfig,
};

const SECRET: &[u8] = b"unit-test-secret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn provider() -> AuthProviderJwt {
    toml::from_str(
        r#"
issuer = "todo-auth"
audiences = ["todo-api"]
secret_env = "UNUSED_IN_UNIT_TESTS"
leeway = "30s"
claims_to_headers = { sub = "x-auth-subject", scope = "x-auth-scope" }
cookie = "token"
"#,
    )
    .unwrap()
}

fn hs_keys(secret: &[u8]) -> Keys {
    Keys {
        loaded: true,
        keys: vec![Key {
            kid: None,
            family: Family::Hmac,
            alg: None,
            key: DecodingKey::from_secret(secret),
        }],
    }
}

fn jwt() -> Jwt {
    let mut c = provider();
    c.secret_env = None;
    c.public_key = None;
    Jwt::with_keys(&c, hs_keys(SECRET))
}

fn token(claims: serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn good(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sub": "alice", "iss": "todo-auth", "aud": "todo-api", "exp": now() + 600, "scope": "todos:read todos:write"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn a_good_token_verifies_and_yields_its_headers() {
    let j = jwt();
    let claims = j.verify(&token(good(json!({})), SECRET)).unwrap();
    assert_eq!(claims["sub"], "alice");
    let h = j.headers_of(&claims);
    let names: Vec<_> = h
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert!(names.contains(&("x-auth-subject", "alice")), "{names:?}");
    assert!(
        names.contains(&("x-auth-scope", "todos:read todos:write")),
        "{names:?}"
    );
}

#[test]
fn expired_within_and_beyond_the_leeway() {
    let j = jwt();
    // 10 s past exp: inside the 30 s leeway.
    assert!(
        j.verify(&token(good(json!({"exp": now() - 10})), SECRET))
            .is_ok()
    );
    assert_eq!(
        j.verify(&token(good(json!({"exp": now() - 120})), SECRET)),
        Err(Reject::Expired)
    );
    assert_eq!(
        j.verify(&token(good(json!({"nbf": now() + 300})), SECRET)),
        Err(Reject::NotYetValid)
    );
}

#[test]
fn wrong_signature_issuer_audience_and_garbage() {
    let j = jwt();
    assert_eq!(
        j.verify(&token(good(json!({})), b"another-secret")),
        Err(Reject::BadSignature)
    );
    assert_eq!(
        j.verify(&token(good(json!({"iss": "evil"})), SECRET)),
        Err(Reject::WrongIssuer)
    );
    assert_eq!(
        j.verify(&token(good(json!({"aud": "other-api"})), SECRET)),
        Err(Reject::WrongAudience)
    );
    let mut no_aud = good(json!({}));
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(j.verify(&token(no_aud, SECRET)), Err(Reject::MissingClaim));
    assert_eq!(j.verify("not.a.jwt"), Err(Reject::Malformed));
    assert_eq!(j.verify("garbage"), Err(Reject::Malformed));
}

#[test]
fn an_algorithm_outside_the_list_or_the_key_family_is_refused() {
    let mut c = provider();
    c.secret_env = None;
    c.algorithms = vec!["HS512".into()];
    let j = Jwt::with_keys(&c, hs_keys(SECRET));
    assert_eq!(
        j.verify(&token(good(json!({})), SECRET)),
        Err(Reject::Algorithm)
    );
    // An HMAC key never verifies an RS256 header (algorithm confusion).
    let j = jwt();
    let forged = {
        let t = token(good(json!({})), SECRET);
        let mut parts = t.splitn(2, '.');
        let _ = parts.next();
        format!(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}",
            parts.next().unwrap()
        )
    };
    assert_eq!(j.verify(&forged), Err(Reject::Algorithm));
}

#[test]
fn keys_not_loaded_mean_unavailable_not_unauthorized() {
    let mut c = provider();
    c.secret_env = None;
    let j = Jwt::with_keys(&c, Keys::default());
    let e = j
        .verify(&token(good(json!({})), SECRET))
        .unwrap_err()
        .into_error();
    assert_eq!(e.kind, ErrorKind::AuthUnavailable);
}

#[test]
fn the_token_comes_from_bearer_then_the_cookie() {
    let j = jwt();
    let mut h = HeaderMap::new();
    assert_eq!(j.token(&h), Err(Reject::Missing));
    h.insert(header::COOKIE, HeaderValue::from_static("a=b; token=abc"));
    assert_eq!(j.token(&h), Ok("abc"));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer xyz"),
    );
    assert_eq!(j.token(&h), Ok("xyz"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer   "));
    assert_eq!(j.token(&h), Err(Reject::Malformed));
}

fn policy(toml_text: &str) -> Policy {
    let p: AuthPolicy = toml::from_str(toml_text).unwrap();
    Policy {
        scope: Scope::new(&p.service, p.prefix.as_deref()),
        access: p.access,
        provider: Some(0),
        scopes: p.scopes.iter().map(|s| s.as_str().into()).collect(),
        claims: p
            .claims
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.clone()))
            .collect(),
    }
}

#[test]
fn scopes_and_claims_are_required() {
    let p = policy(
        "service = \"todos\"\nprovider = \"users\"\nscopes = [\"todos:write\"]\nclaims = { role = \"admin\" }\n",
    );
    let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
    assert!(
        p.permits(Some(&claims(
            json!({"scope": "todos:write", "role": "admin"})
        )))
        .is_ok()
    );
    assert!(
        p.permits(Some(&claims(
            json!({"scp": ["a", "todos:write"], "role": ["user", "admin"]})
        )))
        .is_ok()
    );
    let e = p
        .permits(Some(&claims(
            json!({"scope": "todos:read", "role": "admin"}),
        )))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert_eq!(e.message, "missing scope todos:write");
    let www = e.headers.as_ref().unwrap()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    let e = p
        .permits(Some(&claims(
            json!({"scope": "todos:write", "role": "user"}),
        )))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(p.permits(None).is_err());
}

#[test]
fn refusals_carry_rfc_6750_challenges_without_key_material() {
    let e = Reject::Expired.into_error();
    assert_eq!(e.kind.status().as_u16(), 401);
    assert_eq!(
        e.headers.as_ref().unwrap()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"token expired\""
    );
    // No credential at all: no error code (RFC 6750 3.1).
    let e = Reject::Missing.into_error();
    assert_eq!(
        e.headers.as_ref().unwrap()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"gateway\""
    );
}

#[test]
fn the_cache_is_bounded_and_honours_each_entrys_ttl() {
    let c = cache::DecisionCache::new(16, Duration::from_secs(30));
    let v = || {
        Arc::new(Verified {
            claims: None,
            headers: Box::new([]),
        })
    };
    for i in 0..100u8 {
        c.insert(cache_key(&[&[i]]), v(), Duration::from_secs(60));
    }
    assert!(c.len() <= 16, "{}", c.len());
    // Capped by the token's exp.
    c.insert(cache_key(&[b"short"]), v(), Duration::ZERO);
    assert!(c.get(&cache_key(&[b"short"])).is_none());
    c.insert(cache_key(&[b"kept"]), v(), Duration::from_secs(60));
    assert!(c.get(&cache_key(&[b"kept"])).is_some());
}

fn shared() -> Shared {
    let balancer = crate::balance::Balancer::new(
        BalancerConfig::default(),
        RetryConfig::default(),
        TimeoutConfig::default(),
    );
    Shared {
        node_id: "test".into(),
        balancer,
        registry: Arc::new(crate::registry::memory::MemoryRegistry::new()),
        limits: LimitsConfig::default(),
        timeouts: TimeoutConfig::default(),
        trusted_proxies: vec![],
        draining: Default::default(),
        relays: Default::default(),
        access_log: None,
        rate_limits: None,
        auth: None,
        canary: None,
        route_rules: None,
        cache: None,
    }
}

fn target() -> Target {
    Target {
        service: "todos".into(),
        prefix: "/todos".into(),
        timeout: Duration::from_secs(1),
        stream: false,
        max_duration: Duration::from_secs(1),
        strip_prefix: false,
        max_body_bytes: 1 << 20,
        max_stream_body_bytes: 0,
    }
}

fn auth() -> Auth {
    let p = policy("service = \"todos\"\nprovider = \"users\"\nscopes = [\"todos:read\"]\n");
    let metrics = crate::metrics::Metrics::default();
    let j = jwt();
    let strip = j.header_names().collect::<Vec<_>>().into();
    Auth {
        policies: Box::new([p]),
        providers: Box::new([Provider {
            name: "users".into(),
            kind: Kind::Jwt(j),
            strip,
            decisions: Decisions {
                allowed: metrics.auth_decision("users", "allowed"),
                unauthorized: metrics.auth_decision("users", "unauthorized"),
                forbidden: metrics.auth_decision("users", "forbidden"),
                denied: metrics.auth_decision("users", "denied"),
                unavailable: metrics.auth_decision("users", "unavailable"),
            },
        }]),
        strip_all: Box::new([]),
        cache: Some(cache::DecisionCache::new(100, Duration::from_secs(30))),
    }
}

fn request(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get("/todos/1");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn forged_headers_are_stripped_and_the_verified_ones_set() {
    let (a, s, t) = (auth(), shared(), target());
    let bearer = format!("Bearer {}", token(good(json!({})), SECRET));
    let mut p = request(&[
        ("authorization", &bearer),
        ("x-auth-subject", "mallory"),
        ("x-auth-scope", "admin"),
    ]);
    let out = a.check(&s, &mut p, &t).await.unwrap();
    assert!(matches!(out, Outcome::Allow(Some(_))));
    let subjects: Vec<_> = p.headers.get_all("x-auth-subject").iter().collect();
    assert_eq!(subjects, ["alice"]);
    assert_eq!(p.headers["x-auth-scope"], "todos:read todos:write");
    // The second time comes from the cache, with the same result.
    let mut p = request(&[("authorization", &bearer), ("x-auth-subject", "mallory")]);
    a.check(&s, &mut p, &t).await.unwrap();
    assert_eq!(p.headers["x-auth-subject"], "alice");
    assert_eq!(a.cache.as_ref().unwrap().len(), 1);

    // Without a token the forged header does not survive either way.
    let mut p = request(&[("x-auth-subject", "mallory")]);
    let e = match a.check(&s, &mut p, &t).await {
        Err(e) => e,
        Ok(_) => panic!("no token must be refused"),
    };
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(!p.headers.contains_key("x-auth-subject"));
}

#[tokio::test]
async fn a_routes_outside_every_policy_pass_untouched() {
    let (a, s) = (auth(), shared());
    let mut t = target();
    t.service = "other".into();
    let mut p = request(&[("x-auth-subject", "someone")]);
    assert!(matches!(
        a.check(&s, &mut p, &t).await.unwrap(),
        Outcome::Allow(None)
    ));
    assert_eq!(p.headers["x-auth-subject"], "someone");
}
