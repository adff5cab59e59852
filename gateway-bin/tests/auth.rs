//! `[[auth]]` on a real gateway process: JWTs verified against a JWK Set
//! served over HTTP (an Ed25519 key made here), the claims a backend sees
//! and the ones a client cannot forge, scopes, a key rotation picked up on
//! an unknown `kid`, forward-auth over the gateway's own `Send` path
//! (allow, the auth service's refusal passed through, unavailable -> 503),
//! a rate limit keyed by a verified claim, and the metric.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::any;
use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess};

/// An Ed25519 key: its signer and its JWK.
struct SigningKey {
    kid: &'static str,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn ed25519(kid: &'static str) -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    SigningKey {
        kid,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(key: &SigningKey, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(key.kid.into());
    jsonwebtoken::encode(&h, &claims, &key.encoding).unwrap()
}

fn claims(sub: &str, scope: &str) -> serde_json::Value {
    json!({"sub": sub, "iss": "itest", "aud": "itest-api", "exp": now() + 600, "scope": scope})
}

/// A JWK Set on 127.0.0.1:0 whose keys the test can change.
async fn jwks_server(keys: Arc<Mutex<Vec<serde_json::Value>>>) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(json!({"keys": *keys.lock().unwrap()})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What the backend saw of the auth headers.
async fn echo(headers: HeaderMap) -> axum::Json<serde_json::Value> {
    let all = |n: &str| -> Vec<String> {
        headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    axum::Json(json!({"subject": all("x-auth-subject"), "user": all("x-auth-user")}))
}

/// The forward-auth service: `Bearer letmein` is bob, anything else is
/// refused with its own answer.
async fn authz(headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ok = headers
        .get("authorization")
        .is_some_and(|v| v == "Bearer letmein")
        && headers
            .get("x-forwarded-uri")
            .is_some_and(|v| v.to_str().unwrap().starts_with("/fwd/"))
        && headers
            .get("x-forwarded-method")
            .is_some_and(|v| v == "POST");
    if ok {
        ([("x-auth-user", "bob")], "").into_response()
    } else {
        (
            http::StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", "Session realm=\"authz\""),
                ("x-denied-by", "authz"),
            ],
            "login first",
        )
            .into_response()
    }
}

fn config(jwks: std::net::SocketAddr) -> String {
    format!(
        r#"
[auth_providers.users]
kind = "jwt"
issuer = "itest"
audiences = ["itest-api"]
jwks_url = "http://{jwks}/jwks.json"
jwks_refresh = "5m"
algorithms = ["EdDSA"]
claims_to_headers = {{ sub = "x-auth-subject" }}
cookie = "token"

[auth_providers.session]
kind = "forward"
service = "authz-check"
path = "/authz-check/verify"
copy_headers = ["x-auth-user"]
timeout = "2s"

[auth_providers.gone]
kind = "forward"
service = "authz-nowhere"
path = "/verify"
timeout = "500ms"

[[auth]]
service = "secured"
provider = "users"

[[auth]]
service = "secured"
prefix = "/secured/admin"
provider = "users"
scopes = ["admin"]

[[auth]]
service = "secured"
prefix = "/secured/public"
access = "public"

[[auth]]
service = "fwd"
provider = "session"

[[auth]]
service = "fwd"
prefix = "/fwd/gone"
provider = "gone"

[auth_providers.gone-open]
kind = "forward"
service = "authz-nowhere"
path = "/verify"
copy_headers = ["x-auth-user"]
timeout = "500ms"
on_unavailable = "allow"

[[auth]]
service = "fwd"
prefix = "/fwd/open"
provider = "gone-open"

[[auth]]
service = "secured"
prefix = "/secured/optional"
access = "public"
provider = "users"

[[rate_limits]]
service = "secured"
prefix = "/secured/limited"
rate = 2
per = "1h"
key = "claim"
claim = "sub"
"#
    )
}

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        www,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_forward_auth_and_claim_keyed_limits() {
    let k1 = ed25519("k1");
    let keys = Arc::new(Mutex::new(vec![k1.jwk.clone()]));
    let jwks = jwks_server(keys.clone()).await;
    let dir = std::env::temp_dir().join(format!("auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config(jwks)).unwrap();
    let gw = GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await;
    let reg = gw.registration_url();
    let unary = |b: service_sdk::BackendBuilder| b.registration(|r| r.streaming = false);
    let _secured = BackendHandle::start(
        "secured",
        Router::new().fallback(any(echo)),
        Some(&reg),
        unary,
    )
    .await;
    let _fwd =
        BackendHandle::start("fwd", Router::new().fallback(any(echo)), Some(&reg), unary).await;
    let _authz = BackendHandle::start(
        "authz-check",
        Router::new().fallback(any(authz)),
        Some(&reg),
        unary,
    )
    .await;
    for s in ["secured", "fwd", "authz-check"] {
        gw.wait_routable(s, 1).await;
    }
    let get = |path: &str, bearer: Option<&str>| {
        let mut r = gw.http.get(gw.url(path));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let alice = sign(&k1, claims("alice", "todos:read"));

    // The key set loads in the background: poll until a good token passes.
    support::eventually("the JWK Set is loaded", || async {
        let r = get("/secured/x", Some(&alice)).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // No token: 401 with a bare challenge (RFC 6750 3.1).
    let (status, code, www) = error_of(get("/secured/x", None).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert_eq!(www, "Bearer realm=\"gateway\"");

    // A token signed by another key under the same kid: bad signature.
    let forged = sign(&ed25519("k1"), claims("alice", "todos:read"));
    let (status, code, www) = error_of(get("/secured/x", Some(&forged)).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert_eq!(
        www,
        "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"bad signature\""
    );
    let mut old = claims("alice", "todos:read");
    old["exp"] = json!(now() - 3600);
    let (status, _, www) = error_of(get("/secured/x", Some(&sign(&k1, old))).await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(www.contains("token expired"), "{www}");
    let (status, _, www) = error_of(get("/secured/x", Some("garbage")).await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(www.contains("malformed token"), "{www}");

    // A good token: the backend sees the verified subject, not the forged one.
    let r = gw
        .http
        .get(gw.url("/secured/x"))
        .bearer_auth(&alice)
        .header("x-auth-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["subject"], json!(["alice"]));
    // A public route checks nothing, and the forged header still goes.
    let r = gw
        .http
        .get(gw.url("/secured/public/x"))
        .header("x-auth-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["subject"], json!([]));

    // Public with a provider: no token passes, a bad one does not, a good
    // one's claims become headers.
    assert_eq!(
        get("/secured/optional/x", None).await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/secured/optional/x", Some("garbage"))
            .await
            .unwrap()
            .status(),
        401
    );
    let r = get("/secured/optional/x", Some(&alice)).await.unwrap();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["subject"], json!(["alice"]));
    // The token may come in the configured cookie.
    let r = gw
        .http
        .get(gw.url("/secured/x"))
        .header("cookie", format!("theme=dark; token={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A scope the token lacks: 403 insufficient_scope.
    let (status, code, www) = error_of(get("/secured/admin/x", Some(&alice)).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    let admin = sign(&k1, claims("alice", "todos:read admin"));
    assert_eq!(
        get("/secured/admin/x", Some(&admin))
            .await
            .unwrap()
            .status(),
        200
    );

    // A key rotation: a token with a new kid makes the gateway fetch the set again.
    let k2 = ed25519("k2");
    keys.lock().unwrap().push(k2.jwk.clone());
    let carol = sign(&k2, claims("carol", ""));
    let r = get("/secured/x", Some(&carol)).await.unwrap();
    assert_eq!(r.status(), 200);

    // A limit keyed by the verified `sub`: alice's two, then 429; bob still passes.
    for _ in 0..2 {
        assert_eq!(
            get("/secured/limited/a", Some(&alice))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = get("/secured/limited/a", Some(&alice)).await.unwrap();
    assert_eq!(r.status(), 429);
    // Same sub with a different token (another scope): the same bucket.
    let alice2 = sign(&k1, claims("alice", "other"));
    assert_eq!(
        get("/secured/limited/a", Some(&alice2))
            .await
            .unwrap()
            .status(),
        429
    );
    let bob = sign(&k1, claims("bob", ""));
    assert_eq!(
        get("/secured/limited/a", Some(&bob))
            .await
            .unwrap()
            .status(),
        200
    );

    // Forward-auth: allowed, the copied header replaces the client's.
    let post = |path: &str, auth: &str| {
        gw.http
            .post(gw.url(path))
            .header("authorization", auth)
            .header("x-auth-user", "mallory")
            .body("a body the auth service never sees")
            .send()
    };
    let r = post("/fwd/items?x=1", "Bearer letmein").await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["user"], json!(["bob"]));
    // Refused: the auth service's own answer, as it gave it.
    let r = post("/fwd/items", "Bearer nope").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Session realm=\"authz\"");
    assert_eq!(r.headers()["x-denied-by"], "authz");
    assert_eq!(r.text().await.unwrap(), "login first");
    // Unreachable auth service: 503 auth_unavailable.
    let (status, code, _) = error_of(post("/fwd/gone/x", "Bearer letmein").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (503, "auth_unavailable"));
    // ... unless the provider says on_unavailable = "allow" (then without
    // the copied headers, the client's copies still removed).
    let r = post("/fwd/open/x", "Bearer whatever").await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["user"], json!([]));

    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "gateway_auth_decisions_total{provider=\"users\",result=\"allowed\"}",
        "gateway_auth_decisions_total{provider=\"users\",result=\"unauthorized\"}",
        "gateway_auth_decisions_total{provider=\"users\",result=\"forbidden\"} 1",
        "gateway_auth_decisions_total{provider=\"session\",result=\"denied\"} 1",
        "gateway_auth_decisions_total{provider=\"gone\",result=\"unavailable\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_no_provider_stops_start_up() {
    let dir = std::env::temp_dir().join(format!("auth-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, "[[auth]]\nservice = \"a\"\nprovider = \"x\"\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.provider"), "{err}");
    assert!(
        err.contains("no provider \\\"x\\\" in [auth_providers]")
            || err.contains("no provider \"x\" in [auth_providers]"),
        "{err}"
    );
}
