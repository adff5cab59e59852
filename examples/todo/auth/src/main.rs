//! The TODO demo's auth service (examples/todo/README.md): it registers
//! users, logs them in and hands out tokens the *gateway* verifies, so the
//! todos service never sees a password or a signature - only the
//! `x-auth-subject` header the gateway sets from a verified token.
//!
//! Routes (under the registered prefix `/auth`, public in the gateway's
//! `[[auth]]`; `/auth/login` is the demo's rate-limited route):
//! * `POST /auth/register` `{"username","password"}` - 201 `{"id","username"}`,
//!   409 `username_taken`, 400 `invalid_request`.
//! * `POST /auth/login` `{"username","password"}` - 200 with an access token
//!   (an EdDSA JWT: `iss`, `aud`, `sub` = user id, `scope` = "todos", `exp`
//!   after `--access-ttl`) and an opaque refresh token; 401
//!   `invalid_credentials`.
//! * `POST /auth/refresh` `{"refresh_token"}` - a new access token and a new
//!   refresh token; the old one is spent (rotation). 401 `invalid_refresh_token`.
//! * `POST /auth/logout` `{"refresh_token"}` - 204; the refresh token is
//!   revoked, so a later refresh is refused. (Access tokens live until their
//!   short `exp`: that is the price of verifying them without a call here.)
//! * `GET /auth/.well-known/jwks.json` - the public key (`kty` OKP, `crv`
//!   Ed25519, `kid` its RFC 7638 thumbprint), fetched by the gateway's
//!   `[auth_providers.users] jwks_url` through its own public listener.
//!
//! Users and refresh tokens live in memory; passwords are Argon2id hashes.
//! The signing key is made at start: a restart invalidates every token,
//! which the gateway notices at its next JWKS refresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use service_sdk::{Backend, Router};
use sha2::{Digest, Sha256};

#[derive(Parser)]
struct Args {
    /// Address to serve ForwardingService on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address the gateway dials (default: the bound one; set it in a
    /// container, where the bound address is 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// Gateway registration API; empty = do not register.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    gateway: String,
    /// Registration token, if the gateway requires one.
    #[arg(long, env = "GATEWAY_REGISTRATION_TOKEN")]
    token: Option<String>,
    /// `iss` of the access tokens (the gateway's `issuer`).
    #[arg(long, default_value = "todo-auth")]
    issuer: String,
    /// `aud` of the access tokens (one of the gateway's `audiences`).
    #[arg(long, default_value = "todo-api")]
    audience: String,
    /// Lifetime of an access token, in seconds.
    #[arg(long, default_value_t = 900)]
    access_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    refresh_ttl_secs: u64,
}

struct User {
    id: String,
    password_hash: String,
}

struct Session {
    user_id: String,
    expires: Instant,
}

struct Keys {
    encoding: EncodingKey,
    kid: String,
    jwks: Value,
}

#[derive(Default)]
struct Store {
    /// By user name.
    users: HashMap<String, User>,
    /// Live refresh tokens, by the SHA-256 of the token (a leaked dump of
    /// this map holds no usable token).
    sessions: HashMap<[u8; 32], Session>,
}

#[derive(Clone)]
struct App {
    store: Arc<Mutex<Store>>,
    keys: Arc<Keys>,
    issuer: Arc<str>,
    audience: Arc<str>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Verified against when the user name is unknown, so a login for a
    /// missing user costs what a wrong password costs (no user enumeration
    /// by timing).
    dummy_hash: Arc<str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    scope: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// A refusal in the gateway's error shape, so a client handles one format.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

type Answer = Result<Response, ApiError>;

/// Parses a JSON body into `T`, answering 400 `invalid_request` naming the
/// problem (axum's own rejection is plain text).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body: {e}"),
        )
    })
}

fn random_token() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

impl App {
    /// A fresh access token and refresh token for `user_id`.
    fn issue(&self, user_id: &str) -> Answer {
        let iat = now_secs();
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: user_id,
            scope: "todos",
            iat,
            exp: iat + self.access_ttl.as_secs(),
            jti: random_token(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.kid.clone());
        let access = jsonwebtoken::encode(&header, &claims, &self.keys.encoding).map_err(|e| {
            tracing::error!(error = %e, "Signing an access token failed.");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not sign",
            )
        })?;
        let refresh = random_token();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Forget spent sessions as new ones are made: the map stays bounded
        // by the live ones.
        store.sessions.retain(|_, s| s.expires > now);
        store.sessions.insert(
            Sha256::digest(refresh.as_bytes()).into(),
            Session {
                user_id: user_id.to_owned(),
                expires: now + self.refresh_ttl,
            },
        );
        Ok(axum::Json(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl.as_secs(),
            "refresh_token": refresh,
            "refresh_expires_in": self.refresh_ttl.as_secs(),
            "user_id": user_id,
        }))
        .into_response())
    }

    /// Removes a refresh token, answering whose it was if it was live.
    fn take_session(&self, refresh: &str) -> Option<String> {
        let key: [u8; 32] = Sha256::digest(refresh.as_bytes()).into();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store
            .sessions
            .remove(&key)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.user_id)
    }
}

async fn register(State(app): State<App>, body: Bytes) -> Answer {
    let c: Credentials = parse(&body)?;
    if !valid_username(&c.username) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "username: 3-32 characters of a-z, 0-9, '_', '.', '-'",
        ));
    }
    if !(8..=256).contains(&c.password.chars().count()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "password: 8-256 characters",
        ));
    }
    if app
        .store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .users
        .contains_key(&c.username)
    {
        return Err(error(
            StatusCode::CONFLICT,
            "username_taken",
            "that username is taken",
        ));
    }
    // Argon2 takes tens of milliseconds of CPU: off the async workers.
    let password = c.password;
    let hash = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(h)) => h,
        _ => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not hash",
            ));
        }
    };
    let id = format!("u-{}", &random_token()[..16]);
    let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
    // Checked again: another registration of the name may have won meanwhile.
    if store.users.contains_key(&c.username) {
        return Err(error(
            StatusCode::CONFLICT,
            "username_taken",
            "that username is taken",
        ));
    }
    store.users.insert(
        c.username.clone(),
        User {
            id: id.clone(),
            password_hash: hash,
        },
    );
    tracing::info!(user = %c.username, id = %id, "User registered.");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "username": c.username})),
    )
        .into_response())
}

async fn login(State(app): State<App>, body: Bytes) -> Answer {
    let c: Credentials = parse(&body)?;
    let (id, hash) = {
        let store = app.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.users.get(&c.username) {
            Some(u) => (Some(u.id.clone()), u.password_hash.clone()),
            None => (None, app.dummy_hash.to_string()),
        }
    };
    let password = c.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    match id {
        Some(id) if ok => app.issue(&id),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )),
    }
}

async fn refresh(State(app): State<App>, body: Bytes) -> Answer {
    let b: RefreshBody = parse(&body)?;
    match app.take_session(&b.refresh_token) {
        Some(user_id) => app.issue(&user_id),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "the refresh token is unknown, expired or revoked",
        )),
    }
}

async fn logout(State(app): State<App>, body: Bytes) -> Answer {
    let b: RefreshBody = parse(&body)?;
    // Idempotent: logging out twice is not an error worth telling.
    app.take_session(&b.refresh_token);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn jwks(State(app): State<App>) -> Response {
    (
        [("cache-control", "public, max-age=60")],
        axum::Json(app.keys.jwks.clone()),
    )
        .into_response()
}

/// A fresh Ed25519 key: the PKCS#8 document jsonwebtoken signs with, and
/// the JWKS that publishes its public half.
fn make_keys() -> anyhow::Result<Keys> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness for a key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("the key just made: {e}"))?;
    let x = B64.encode(pair.public_key().as_ref());
    // RFC 7638 thumbprint: SHA-256 of the required members, sorted, no spaces.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = B64.encode(Sha256::digest(canonical.as_bytes()));
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
    }]});
    Ok(Keys {
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        kid,
        jwks,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let app = App {
        store: Arc::default(),
        keys: Arc::new(make_keys()?),
        issuer: args.issuer.into(),
        audience: args.audience.into(),
        access_ttl: Duration::from_secs(args.access_ttl_secs),
        refresh_ttl: Duration::from_secs(args.refresh_ttl_secs),
        dummy_hash: hash_password("not a password of anyone")
            .map_err(anyhow::Error::msg)?
            .into(),
    };
    tracing::info!(kid = %app.keys.kid, "Signing key made.");
    let router = Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/.well-known/jwks.json", get(jwks))
        .with_state(app);
    // Every answer is small and prompt: unary `Send` is enough.
    let mut builder = Backend::builder("auth")
        .listen(args.listen)
        .route("/auth")
        .prefer_unary();
    if !args.gateway.is_empty() {
        builder = builder.gateway(args.gateway);
    }
    if let Some(a) = args.advertise {
        builder = builder.advertise(a);
    }
    if let Some(t) = args.token {
        builder = builder.token(t);
    }
    let backend = builder.bind(router).await?;
    println!("READY {}", backend.local_addr());
    backend.serve(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_verify_with_the_published_key() {
        let keys = make_keys().unwrap();
        let claims = Claims {
            iss: "todo-auth",
            aud: "todo-api",
            sub: "u-1",
            scope: "todos",
            iat: now_secs(),
            exp: now_secs() + 60,
            jti: random_token(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &keys.encoding).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(keys.jwks["keys"][0].clone()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&["todo-auth"]);
        v.set_audience(&["todo-api"]);
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
            .unwrap();
        assert_eq!(data.claims["sub"], "u-1");
        assert_eq!(data.header.kid.as_deref(), Some(keys.kid.as_str()));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
